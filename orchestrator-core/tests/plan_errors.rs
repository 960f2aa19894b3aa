//! Every malformed plan in `tests/plans/bad/` is rejected with an error that names the file,
//! line, column and key and says how to fix it. The rendered errors are snapshots in
//! `tests/snapshots/`; review them as prose when they change. (The plans with a `[qemu]`
//! table are the QEMU runner's: `qemu-runner/tests/plan_errors.rs`.)

use std::path::Path;

use orchestrator_core::plan::{self, PlanError};

// The snapshots include plans whose [store] and [monitor] tables need those features.
#[cfg(all(feature = "store", feature = "monitor"))]
#[test]
fn bad_plans_are_rejected_with_located_errors() {
    let mut count = 0;
    insta::glob!("plans/bad/*.toml", |absolute| {
        count += 1;
        // A relative path keeps the messages, and so the snapshots, machine-independent
        // (`cargo test` runs integration tests in the package directory).
        let path = absolute
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .expect("fixtures are inside the package");
        let err = plan::load(path).expect_err("a bad plan must be rejected");
        let rendered = err.to_string();
        let location = err.location().expect("errors in a file have a location");
        testkit::plan::assert_located(
            &rendered,
            "tests/plans/bad/",
            (location.line, location.column),
            err.key().is_some(),
            err.help().is_some(),
        );
        insta::assert_snapshot!(rendered);
    });
    assert!(count >= 12, "expected at least 12 bad plans, found {count}");
}

#[test]
fn good_plans_load() {
    let plan =
        plan::load(Path::new("tests/plans/good/files.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.name.as_deref(), Some("good"));
    assert_eq!(plan.settings.parallelism, Some(2));
    let case = &plan.cases[0];
    assert_eq!(case.tags, ["fixture"]);
    assert_eq!(case.files.len(), 2);
    for file in &case.files {
        assert!(
            file.source.is_file(),
            "{} should exist",
            file.source.display()
        );
    }
    assert_eq!(case.files[0].dest, Path::new("input.txt"));
    assert_eq!(case.files[1].dest, Path::new("copy/input.txt"));
}

#[test]
fn unreadable_plan_names_the_path_and_the_os_error() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.toml");
    let err = plan::load(&missing).expect_err("a missing plan must be rejected");
    assert!(matches!(err, PlanError::Read { .. }), "{err:?}");
    assert!(err.location().is_none());
    let rendered = err.to_string();
    assert!(
        rendered.starts_with(&format!(
            "{}: cannot read the plan file: ",
            missing.display()
        )),
        "{rendered}"
    );
    assert!(rendered.contains("No such file or directory"), "{rendered}");

    // A directory is not a plan either.
    let err = plan::load(dir.path()).expect_err("a directory must be rejected");
    assert!(matches!(err, PlanError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&dir.path().display().to_string())
    );
}
