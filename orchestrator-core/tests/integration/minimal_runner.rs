//! A runner crate built against orchestrator-core without its default features
//! (`tests/fixtures/minimal-runner`): it compiles, implements `TestRunner`, runs a test through
//! the orchestrator, and gets located errors for the tables of the features it left out.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "builds a crate: run by `cargo xtask test`"]
fn a_runner_builds_without_the_default_features() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = core.join("tests/fixtures/minimal-runner");
    let dir = tempfile::tempdir().unwrap();
    // A copy outside the source tree, so the build writes nothing there: the path dependency
    // made absolute, and the workspace's lock file so the same versions build without a
    // registry look-up.
    let manifest = std::fs::read_to_string(fixture.join("Cargo.toml")).unwrap();
    let relative = "path = \"../../..\"";
    assert!(
        manifest.contains(relative),
        "the fixture depends on the core by path"
    );
    let manifest = manifest.replace(
        relative,
        &format!("path = {:?}", core.display().to_string()),
    );
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::copy(fixture.join("src/main.rs"), dir.path().join("src/main.rs")).unwrap();
    std::fs::copy(core.join("../Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = dir.path().join("Cargo.toml");
    succeed(
        Command::new(&cargo)
            .args(["build", "--offline", "--quiet", "--manifest-path"])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(dir.path().join("target"))
            .env_remove("CARGO_TARGET_DIR"),
        "building the fixture",
    );

    let tree = succeed(
        Command::new(&cargo)
            .args(["tree", "--offline", "-e", "normal", "--prefix", "none"])
            .arg("--manifest-path")
            .arg(&manifest),
        "listing the fixture's dependencies",
    );
    for heavy in ["rusqlite", "object_store", "plotters", "indicatif"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{heavy} "))),
            "{heavy} is compiled without the default features:\n{tree}"
        );
    }

    succeed(
        &mut Command::new(dir.path().join("target/debug/minimal-runner")),
        "running the fixture",
    );
}

/// Runs `command` to its end and returns its stdout; anything but success fails the test,
/// showing both streams.
fn succeed(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
