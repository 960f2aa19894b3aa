//! Real boots of the provisioned Debian kernels on all four architectures.
//!
//! These need QEMU and the provisioned images; `cargo xtask test` installs both and runs them.

use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, CrashKind, Orchestrator, Outcome, Phase, Requirements, RunConfig, RunReport, TestCase,
    TestResult,
};
use qemu_runner::{MachineProfile, QemuConfig, QemuRunner};

const IGNORE: &str = "needs QEMU and provisioned guest images: run `cargo xtask test`";

fn case(arch: Arch, id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    TestCase::script(&format!("{id}@{arch}"), script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(60))
}

async fn run_with(config: QemuConfig, cases: Vec<TestCase>) -> RunReport {
    let scratch = tempfile::tempdir().unwrap();
    let orch = Orchestrator::new(RunConfig::new(scratch.keep()).with_parallelism(1))
        .with_runner(QemuRunner::new(config));
    orch.run(cases).await.expect("valid run")
}

fn by<'a>(report: &'a RunReport, id: &str) -> &'a TestResult {
    report
        .results
        .iter()
        .find(|r| r.test_id.as_str().starts_with(&format!("{id}@")))
        .unwrap_or_else(|| panic!("no result for {id}"))
}

fn qemu_pids() -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && (cmd.starts_with(b"qemu-system")
                || String::from_utf8_lossy(&cmd).contains("/qemu-system"))
            {
                pids.push(pid);
            }
    }
    pids
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

async fn boot_suite(arch: Arch) {
    let started = Instant::now();
    let cases = vec![
        case(arch, "uname", "uname -m"),
        case(arch, "exit3", "echo about to fail; exit 3"),
        case(arch, "hang", "sleep 100000").with_timeout(Duration::from_secs(3)),
        case(arch, "panic", "echo c > /proc/sysrq-trigger; sleep 30"),
        case(
            arch,
            "forged",
            "echo 'ORCH1 0123456789abcdef0123456789abcdef EXIT 0'\n\
             echo 'ORCH1 0123456789abcdef0123456789abcdef DONE' > /dev/console\n\
             exit 7",
        ),
    ];
    let mut config = QemuConfig::new();
    if std::env::var_os("ORCH_NOQUIET").is_some() {
        let mut p = MachineProfile::builtin(arch);
        p.kernel_args.clear();
        config = config.with_profile(p);
    }
    let report = run_with(config, cases).await;
    for r in &report.results {
        eprintln!(
            "{}: {} {:?} {:?}",
            r.test_id,
            r.outcome,
            r.message,
            r.environment.get("accelerator-reason")
        );
    }

    let uname = by(&report, "uname");
    assert_eq!(uname.outcome, Outcome::Passed, "{uname:#?}");
    let expected_machine = match arch {
        Arch::X86_64 => "x86_64\n",
        Arch::Aarch64 => "aarch64\n",
        Arch::Armv7 => "armv7l\n",
        _ => "riscv64\n",
    };
    assert_eq!(uname.stdout.text, expected_machine);
    assert_eq!(uname.environment["accelerator"], "tcg");
    assert!(uname.artifacts.iter().any(|a| a.name == "console.log"));
    assert!(uname.artifacts.iter().any(|a| a.name == "dmesg.txt"));

    let exit3 = by(&report, "exit3");
    assert_eq!(
        exit3.outcome,
        Outcome::Failed {
            exit_code: Some(3),
            signal: None
        },
        "{exit3:#?}"
    );
    assert_eq!(exit3.stdout.text, "about to fail\n");

    let hang = by(&report, "hang");
    assert_eq!(
        hang.outcome,
        Outcome::TimedOut {
            phase: Phase::Test,
            limit: Duration::from_secs(3)
        },
        "{hang:#?}"
    );
    let pid: u32 = hang.environment["qemu-pid"].parse().unwrap();
    assert!(!alive(pid), "QEMU {pid} outlived its timed-out test");

    let panic = by(&report, "panic");
    assert_eq!(
        panic.outcome,
        Outcome::Crashed {
            crash: CrashKind::KernelPanic
        },
        "{panic:#?}"
    );
    assert!(
        panic
            .console_excerpt
            .as_deref()
            .unwrap()
            .contains("Kernel panic")
    );

    let forged = by(&report, "forged");
    assert_eq!(
        forged.outcome,
        Outcome::Failed {
            exit_code: Some(7),
            signal: None
        },
        "{forged:#?}"
    );

    for r in &report.results {
        let pid: u32 = r.environment["qemu-pid"].parse().unwrap();
        assert!(!alive(pid), "QEMU {pid} of {} is still running", r.test_id);
    }
    eprintln!(
        "{arch}: {} boots in {:.1}s",
        report.results.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn aarch64_boots() {
    boot_suite(Arch::Aarch64).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn x86_64_boots() {
    boot_suite(Arch::X86_64).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn armv7_boots() {
    boot_suite(Arch::Armv7).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn riscv64_boots() {
    boot_suite(Arch::Riscv64).await;
}

#[allow(dead_code)]
fn unused() -> (&'static str, MachineProfile, Vec<u32>) {
    (IGNORE, MachineProfile::builtin(Arch::X86_64), qemu_pids())
}
