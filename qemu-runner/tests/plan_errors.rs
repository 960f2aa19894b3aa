//! Every malformed `[qemu]` table in `tests/plans/bad/` is rejected with an error that names
//! the file, line, column and key and says how to fix it, when the plan is loaded with the
//! [`QemuPlan`] section. The rendered errors are snapshots in `tests/snapshots/`; review them as
//! prose when they change.

use std::path::Path;

use orchestrator_core::plan::{self, Plan, PlanError};
use qemu_runner::QemuPlan;

/// Loads a plan with the QEMU runner's table.
fn load(path: &Path) -> Result<Plan, PlanError> {
    plan::Loader::new().section::<QemuPlan>().load(path)
}

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
        let err = load(path).expect_err("a bad plan must be rejected");
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
fn good_vm_plan_loads() {
    use std::time::Duration;

    use orchestrator_core::Arch;
    use orchestrator_core::artifact_store::{ArtifactKind, Durability};

    const DAY: Duration = Duration::from_secs(86_400);
    let plan = load(Path::new("tests/plans/good/vm.toml")).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<&str> = plan.cases.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["uname@x86_64", "uname@aarch64", "riscv-only"]);
    let archs: Vec<Option<Arch>> = plan.cases.iter().map(|c| c.requirements.arch).collect();
    assert_eq!(
        archs,
        [Some(Arch::X86_64), Some(Arch::Aarch64), Some(Arch::Riscv64)]
    );

    let qemu = plan.section::<QemuPlan>().expect("[qemu]");
    assert!(!qemu.session && qemu.snapshot_reset && !qemu.virtio_artifacts);
    assert_eq!(qemu.pool, Some(3));
    assert_eq!(qemu.max_artifact_bytes, Some(256 << 20));
    assert_eq!(qemu.max_artifact_files, Some(500));
    assert_eq!(qemu.serial_artifact_limit, Some(2 << 20));
    assert_eq!(qemu.modules, ["virtio_rng"]);
    assert_eq!(
        qemu.profiles.keys().copied().collect::<Vec<_>>(),
        [Arch::X86_64, Arch::Aarch64]
    );
    let arm = &qemu.profiles[&Arch::Aarch64];
    assert_eq!(
        arm.qemu.as_deref(),
        Some("/opt/qemu/bin/qemu-system-aarch64")
    );
    assert_eq!(arm.machine.as_deref(), Some("virt,gic-version=3"));
    assert_eq!(arm.cpu.as_deref(), Some("cortex-a72"));
    assert_eq!(arm.memory_mib, Some(1024));
    assert_eq!(arm.cpus, Some(2));
    assert_eq!(arm.display.as_deref(), Some("ramfb"));
    assert_eq!(
        arm.extra_args.as_deref(),
        Some(&["-device".to_owned(), "virtio-rng-device".to_owned()][..])
    );
    assert_eq!(
        arm.kernel_args.as_deref(),
        Some(&["quiet".to_owned(), "loglevel=4".to_owned()][..])
    );
    assert_eq!(arm.boot_timeout, Some(Duration::from_secs(60)));
    assert_eq!(qemu.profiles[&Arch::X86_64].memory_mib, Some(768));
    assert_eq!(qemu.profiles[&Arch::X86_64].cpu, None);

    let store = plan.settings.store.expect("[store]");
    assert_eq!(store.path, Path::new("tests/plans/good/../artifacts"));
    assert_eq!(store.durability, Durability::Relaxed);
    let rules = store.retention.expect("[store.retention]");
    assert_eq!(rules.max_age, Some(30 * DAY));
    assert_eq!(rules.keep_last_runs, Some(5));
    assert_eq!(rules.max_total_size, Some(20 << 30));
    assert_eq!(rules.kind_max_age[&ArtifactKind::CoreDump], 7 * DAY);
    assert_eq!(rules.kind_max_age[&ArtifactKind::Screenshot], 14 * DAY);
    assert_eq!(rules.kind_budgets[&ArtifactKind::CoreDump], 1 << 30);
    assert_eq!(rules.kind_budgets[&ArtifactKind::Trace], 512 << 20);
    assert_eq!(rules.keep_failures_for, Some(90 * DAY));
    assert_eq!(rules.keep_passes_for, Some(DAY + DAY / 2));
    assert!(rules.first_failure_after_pass && rules.last_passing_run);
    assert_eq!(rules.pin_runs, ["nightly-2024-06-01"]);
    assert_eq!(rules.pin_tags, ["release"]);

    let monitor = plan.settings.monitor.expect("[monitor]");
    assert!(!monitor.enabled);
    assert_eq!(monitor.interval, Duration::from_millis(50));
}
