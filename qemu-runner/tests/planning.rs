//! Campaign planning with real guests: the same small plan run with planning on (tests that
//! boot alike restored from one snapshot) and off (a boot per test) gives the same verdicts,
//! outputs, subtests and crash labels; each result records the mode it ran in.
//!
//! Needs QEMU and the provisioned images, which `cargo xtask test` installs.

use std::collections::BTreeMap;
use std::path::Path;

use orchestrator_core::{Orchestrator, Outcome, RunConfig, RunReport, TestResult, plan};
use qemu_runner::{QemuConfig, QemuPlan, QemuRunner};

mod support;
use support::by;

/// Passing, failing, TAP subtests, a test module run in the test phase, a kernel panic, a
/// timeout, and one test that asks for a guest of its own; on aarch64 (the fastest boot).
const PLAN: &str = r#"
[run]
parallelism = 2

[qemu]
pool = 2
[qemu.profile.aarch64]
kernel-args = ["quiet", "test_bpf.test_range=0,4"]

[defaults]
runner = "qemu"
arch = "aarch64"
timeout = "240s"

[[test]]
id = "pass"
script = "echo out; echo err >&2; echo orch-mark-pass >/dev/kmsg"

[[test]]
id = "fail"
script = "echo orch-mark-fail >/dev/kmsg; echo failing >&2; exit 3"

[[test]]
id = "tap"
script = """
echo 'TAP version 13'
echo '1..3'
echo 'ok 1 - first'
echo 'not ok 2 - second # TODO not yet'
echo 'ok 3 - third # SKIP no device'
"""

[[test]]
id = "module"
modules = ["test_bpf"]
script = """
cut -d' ' -f1,2 /proc/modules
grep -c 'test_bpf: #[0-9]' /tmp/modules-kmsg.log
grep -q 'test_bpf: Summary' /tmp/modules-kmsg.log
"""

[[test]]
id = "panic"
script = "echo before; echo c > /proc/sysrq-trigger"

[[test]]
id = "timeout"
timeout = "6s"
script = "echo waiting; sleep 1000"

[[test]]
id = "alone"
isolated = true
script = "echo isolated; [ ! -e /tmp/left ] && touch /tmp/left"
"#;

async fn run(planning: bool) -> (RunReport, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let plan = plan::Loader::new()
        .section::<QemuPlan>()
        .parse(PLAN, Path::new("planning.toml"), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"));
    let qemu = QemuConfig::from_plan(plan.section::<QemuPlan>().unwrap()).with_planning(planning);
    let report = Orchestrator::new(RunConfig::new(dir.path()).with_plan_settings(&plan.settings))
        .with_runner(QemuRunner::new(qemu))
        .run(plan.cases.clone())
        .await
        .unwrap();
    (report, dir)
}

/// The kernel log a result brought back.
fn kernel_log(r: &TestResult) -> String {
    let log = r.artifacts.iter().find(|a| a.name == "dmesg.txt");
    std::fs::read_to_string(&log.unwrap_or_else(|| panic!("no kernel log: {r:#?}")).path).unwrap()
}

/// What must not depend on planning: verdict, outcome (crash labels and timeouts among them),
/// outputs and subtests.
fn observable(r: &TestResult) -> String {
    let subtests: Vec<String> = r
        .subtests
        .iter()
        .map(|s| format!("{} {:?} {:?}", s.name, s.status, s.message))
        .collect();
    format!(
        "verdict {:?}\noutcome {:?}\nstdout {:?}\nstderr {:?}\nsubtests {subtests:?}",
        r.verdict(),
        r.outcome,
        r.stdout.text,
        r.stderr.text
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn planning_on_and_off_give_the_same_results() {
    let started = std::time::Instant::now();
    let (planned, _a) = run(true).await;
    let planned_secs = started.elapsed().as_secs_f64();
    let started = std::time::Instant::now();
    let (alone, _b) = run(false).await;
    let alone_secs = started.elapsed().as_secs_f64();
    eprintln!("planning on: {planned_secs:.1}s, off: {alone_secs:.1}s");
    assert_eq!(planned.results.len(), 7);
    assert_eq!(alone.results.len(), 7);

    let modes = |report: &RunReport| -> BTreeMap<String, String> {
        report
            .results
            .iter()
            .map(|r| (r.test_id.to_string(), r.environment["mode"].clone()))
            .collect()
    };
    for (id, mode) in modes(&alone) {
        assert_eq!(mode, "alone", "{id}");
    }
    for (id, mode) in modes(&planned) {
        let want = if id == "alone" {
            "alone"
        } else {
            "snapshot-reset"
        };
        assert_eq!(mode, want, "{id}: {:#?}", planned.results);
    }
    assert!(
        by(&planned, "alone").environment["planning"].contains("`isolated = true`"),
        "{:#?}",
        by(&planned, "alone")
    );
    assert!(by(&planned, "pass").environment["planning"].contains("group of 6 tests"));
    assert!(!by(&alone, "pass").environment.contains_key("planning"));

    for r in &alone.results {
        let id = r.test_id.as_str();
        let p = by(&planned, id);
        assert_eq!(
            observable(p),
            observable(r),
            "{id}: planned {p:#?}\nalone {r:#?}"
        );
    }

    // What the cases are, so that "the same" means something.
    assert_eq!(by(&alone, "pass").outcome, Outcome::Passed);
    assert_eq!(by(&alone, "pass").stdout.text, "out\n");
    assert!(matches!(
        by(&alone, "fail").outcome,
        Outcome::Failed {
            exit_code: Some(3),
            ..
        }
    ));
    assert_eq!(by(&alone, "tap").subtests.len(), 3);
    assert!(
        matches!(by(&alone, "panic").outcome, Outcome::Crashed { .. }),
        "{:#?}",
        by(&alone, "panic")
    );
    assert!(matches!(
        by(&alone, "timeout").outcome,
        Outcome::TimedOut { .. }
    ));
    let module = &by(&alone, "module").stdout.text;
    assert!(module.starts_with("test_bpf "), "{module}");

    // Kernel logs: each test's holds what the kernel printed during it (a test module's cases
    // among them), and in a restored guest nothing of another test's.
    for report in [&planned, &alone] {
        let pass = kernel_log(by(report, "pass"));
        let fail = kernel_log(by(report, "fail"));
        let module = kernel_log(by(report, "module"));
        assert!(pass.contains("orch-mark-pass"), "{pass}");
        assert!(fail.contains("orch-mark-fail"), "{fail}");
        assert!(module.contains("test_bpf: Summary"), "{module}");
        for log in [&pass, &fail, &module] {
            let marks = ["orch-mark-pass", "orch-mark-fail"]
                .iter()
                .filter(|m| log.contains(*m))
                .count();
            assert!(marks <= 1, "{log}");
        }
    }
    // A restored test's kernel log starts with the test: no boot messages.
    let restored = kernel_log(by(&planned, "pass"));
    assert!(!restored.contains("Booting Linux"), "{restored}");
}
