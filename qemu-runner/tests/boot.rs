//! Real boots of the provisioned Debian kernels on all four architectures.
//!
//! They need QEMU and the provisioned images, which `cargo xtask test` installs before running
//! them; plain `cargo test` skips them as ignored.

use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, CancellationToken, CrashKind, Orchestrator, Outcome, Phase, Requirements, RunConfig,
    RunReport, TestCase,
};
use qemu_runner::{MachineProfile, QemuConfig, QemuRunner};

mod support;
use support::by;

fn case(arch: Arch, id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    TestCase::script(&format!("{id}@{arch}"), script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(60))
}

fn with_modules(mut case: TestCase, modules: &[&str]) -> TestCase {
    let mut req = case.requirements.clone();
    req.modules = modules.iter().map(|m| (*m).to_owned()).collect();
    case = case.with_requirements(req);
    case
}

/// Runs `cases` (see [`support::run_cases`]).
async fn run_with(
    config: QemuConfig,
    cases: Vec<TestCase>,
    cancel: CancellationToken,
) -> (RunReport, Option<tempfile::TempDir>) {
    support::run_cases(config, cases, cancel, &[]).await
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn assert_no_qemu_left(report: &RunReport) {
    for r in &report.results {
        if let Some(pid) = r.environment.get("qemu-pid") {
            let pid: u32 = pid.parse().unwrap();
            assert!(!alive(pid), "QEMU {pid} of {} is still running", r.test_id);
        }
    }
}

/// Every scenario the boot issue asks for, on one architecture.
async fn boot_suite(arch: Arch) {
    let started = Instant::now();
    // 16 MiB of random data goes in with the test and must come back byte-exact.
    let data_dir = tempfile::tempdir().unwrap();
    let big = data_dir.path().join("random.bin");
    let mut bytes = vec![0u8; 16 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ arch as u64;
    for chunk in bytes.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&big, &bytes).unwrap();
    let cases = vec![
        case(
            arch,
            "artifacts",
            "mkdir -p out && cp random.bin out/copy.bin && echo 'a small note' > note.txt",
        )
        .with_file(&big, "random.bin")
        .with_artifact("out/*.bin")
        .with_artifact("note.txt")
        .with_artifact("nothing-*.log"),
        case(arch, "trace", "ls / > /dev/null; sleep 0.2")
            .with_trace("sched:sched_switch syscalls:sys_enter_openat"),
        case(arch, "coredump", "sh -c 'kill -SEGV $$' || echo survived"),
        case(
            arch,
            "artifacts-then-panic",
            "echo kept > note.txt; echo c > /proc/sysrq-trigger",
        )
        .with_artifact("note.txt"),
        case(arch, "uname", "uname -m"),
        case(
            arch,
            "ktap",
            "echo 'TAP version 13'; echo '1..3'; echo 'ok 1 - boots'\n\
             echo 'not ok 2 - frobnicates # TODO not yet'; echo 'ok 3 - dma # SKIP no device'",
        ),
        case(arch, "exit3", "echo about to fail; exit 3"),
        case(arch, "hang", "sleep 100000").with_timeout(Duration::from_secs(3)),
        case(arch, "panic", "echo c > /proc/sysrq-trigger; sleep 30"),
        // Look-alike records, on stdout and straight onto the console, with a wrong exit code.
        case(
            arch,
            "forged",
            "echo 'ORCH1 0123456789abcdef0123456789abcdef EXIT 0'\n\
             echo 'ORCH1 0123456789abcdef0123456789abcdef DONE'\n\
             for n in $(seq 1 3); do echo \"ORCH1 $(od -An -tx1 -N16 /dev/urandom | tr -d ' \\n') EXIT 0\" > /dev/console; done\n\
             exit 7",
        ),
        // 9p needs 9pnet, netfs (and fscache on 6.1): the dependency chain comes from .modinfo.
        with_modules(
            case(
                arch,
                "module",
                "grep -E '^(9p|9pnet|netfs) ' /proc/modules | cut -d' ' -f1 | sort",
            ),
            &["9p"],
        ),
    ];
    let (report, _scratch) = run_with(QemuConfig::new(), cases, CancellationToken::new()).await;

    let art = by(&report, "artifacts");
    assert_eq!(art.outcome, Outcome::Passed, "{art:#?}");
    assert_eq!(
        art.environment["artifact-channel"], "virtio-serial",
        "{art:#?}"
    );
    let copy = art
        .artifacts
        .iter()
        .find(|a| a.name == "files/out/copy.bin")
        .expect("copy.bin");
    assert_eq!(
        blake3::hash(&std::fs::read(&copy.path).unwrap()),
        blake3::hash(&bytes),
        "16 MiB came back byte-exact"
    );
    let note = art
        .artifacts
        .iter()
        .find(|a| a.name == "files/note.txt")
        .expect("note.txt");
    assert_eq!(
        std::fs::read_to_string(&note.path).unwrap(),
        "a small note\n"
    );
    let message = art.message.as_deref().unwrap_or("");
    assert!(
        message.contains("artifacts missing: nothing-*.log (no match in the guest)"),
        "{message}"
    );

    let trace = by(&report, "trace");
    assert_eq!(trace.outcome, Outcome::Passed, "{trace:#?}");
    let file = trace
        .artifacts
        .iter()
        .find(|a| a.name == "files/.orch-trace/trace.txt")
        .expect("the trace is an artifact");
    let text = std::fs::read_to_string(&file.path).unwrap();
    assert!(
        text.contains("sched_switch"),
        "{}",
        &text[..text.len().min(2000)]
    );

    let core = by(&report, "coredump");
    assert_eq!(core.outcome, Outcome::Passed, "{core:#?}");
    assert!(
        core.environment["core-dumps"].starts_with("sh (signal 11"),
        "{core:#?}"
    );
    let dump = core
        .artifacts
        .iter()
        .find(|a| a.name.starts_with("files/.orch-cores/core.sh.11."))
        .expect("the core dump is an artifact");
    assert!(dump.size > 0);

    let panicked = by(&report, "artifacts-then-panic");
    assert_eq!(
        panicked.outcome,
        Outcome::Crashed {
            crash: CrashKind::KernelPanic
        },
        "{panicked:#?}"
    );
    assert!(panicked.artifacts.iter().any(|a| a.name == "console.log"));
    let message = panicked.message.as_deref().unwrap();
    assert!(message.contains("artifacts missing: note.txt"), "{message}");

    let uname = by(&report, "uname");
    assert_eq!(uname.outcome, Outcome::Passed, "{uname:#?}");
    let expected_machine = match arch {
        Arch::X86_64 => "x86_64\n",
        Arch::Aarch64 => "aarch64\n",
        Arch::Armv7 => "armv7l\n",
        _ => "riscv64\n",
    };
    assert_eq!(uname.stdout.text, expected_machine);
    let names: Vec<&str> = uname.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["console.log", "dmesg.txt"]);
    // The kernel log since boot: the agent never clears it (`quiet` kept it off the console).
    let log = std::fs::read_to_string(&uname.artifacts[1].path).unwrap();
    assert!(log.contains("Linux version"), "{log}");
    let reason = &uname.environment["accelerator-reason"];
    if arch != Arch::host().unwrap() {
        assert_eq!(uname.environment["accelerator"], "tcg");
        assert!(reason.contains("differs from the host"), "{reason}");
    } else if uname.environment["accelerator"] == "tcg" {
        // This machine: /dev/kvm exists but nested virtualisation is broken.
        assert!(reason.contains("/dev/kvm"), "{reason}");
    }

    let ktap = by(&report, "ktap");
    let statuses: Vec<(&str, orchestrator_core::SubtestStatus)> = ktap
        .subtests
        .iter()
        .map(|s| (s.name.as_str(), s.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("boots", orchestrator_core::SubtestStatus::Passed),
            ("frobnicates", orchestrator_core::SubtestStatus::Todo),
            ("dma", orchestrator_core::SubtestStatus::Skipped)
        ],
        "{ktap:#?}"
    );

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
            .contains("Kernel panic - not syncing")
    );
    assert!(panic.artifacts.iter().any(|a| a.name == "console.log"));

    let forged = by(&report, "forged");
    assert_eq!(
        forged.outcome,
        Outcome::Failed {
            exit_code: Some(7),
            signal: None
        },
        "{forged:#?}"
    );
    assert!(
        forged.stdout.text.contains("EXIT 0"),
        "the forged lines are the test's output"
    );

    let module = by(&report, "module");
    assert_eq!(module.outcome, Outcome::Passed, "{module:#?}");
    assert!(
        module.stdout.text.contains("9p\n") && module.stdout.text.contains("9pnet\n"),
        "{}",
        module.stdout.text
    );

    assert_no_qemu_left(&report);

    // A guest that never becomes ready: no init to run. The kernel panics, QEMU exits, and the
    // result says boot failure well within the boot deadline.
    let mut profile = MachineProfile::builtin(arch);
    profile.kernel_args.push("rdinit=/nonexistent".into());
    profile.kernel_args.push("init=/nonexistent".into());
    let deadline = profile.boot_timeout_for(qemu_runner::Accel::Tcg);
    let (report, _scratch) = run_with(
        QemuConfig::new().with_profile(profile),
        vec![case(arch, "noinit", "true")],
        CancellationToken::new(),
    )
    .await;
    let noinit = by(&report, "noinit");
    assert_eq!(
        noinit.outcome,
        Outcome::Crashed {
            crash: CrashKind::BootFailure
        },
        "{noinit:#?}"
    );
    assert!(
        noinit.duration() < deadline,
        "{:?} >= {deadline:?}",
        noinit.duration()
    );
    assert!(
        noinit
            .message
            .as_deref()
            .unwrap()
            .contains("before the guest was ready")
    );
    assert!(
        noinit
            .console_excerpt
            .as_deref()
            .unwrap()
            .contains("Kernel panic"),
        "{noinit:#?}"
    );
    assert_no_qemu_left(&report);

    eprintln!(
        "{arch}: 10 boots in {:.1}s",
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

/// 100 MB on stdout stays 100 MB in the guest: the host gets the head and tail, and memory on
/// the host stays bounded. A console flood is cut at the console log limit and stopped by the
/// test's timeout.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn floods_are_bounded() {
    let arch = Arch::Aarch64;
    let mut config = QemuConfig::new();
    config.console_log_limit = 256 * 1024;
    config.output_limit = Some(256 * 1024);
    let cases = vec![
        // 50 MB takes about 17 s alone here and several times that beside other guests in
        // the full run: the point is the bound, so the timeout leaves room for a loaded host.
        case(
            arch,
            "stdout-flood",
            "head -c 50000000 /dev/zero | tr '\\0' y; echo; echo END",
        )
        .with_timeout(Duration::from_secs(240)),
        case(
            arch,
            "console-flood",
            "yes 'flooding the console' > /dev/console",
        )
        .with_timeout(Duration::from_secs(8)),
    ];
    let (report, _scratch) = run_with(config, cases, CancellationToken::new()).await;
    let out = by(&report, "stdout-flood");
    assert_eq!(out.outcome, Outcome::Passed, "{out:#?}");
    assert_eq!(out.stdout.total_bytes, 50_000_005);
    assert!(out.stdout.is_truncated());
    assert!(out.stdout.text.len() < 300 * 1024);
    assert!(out.stdout.text.contains("bytes truncated ...]"));
    assert!(out.stdout.text.ends_with("\nEND\n"));

    let flood = by(&report, "console-flood");
    assert!(
        matches!(
            flood.outcome,
            Outcome::TimedOut {
                phase: Phase::Test,
                ..
            }
        ),
        "{flood:#?}"
    );
    let log = flood
        .artifacts
        .iter()
        .find(|a| a.name == "console.log")
        .unwrap();
    assert!(
        log.size <= 256 * 1024 + 100,
        "console.log is {} bytes",
        log.size
    );
    assert!(
        flood
            .message
            .as_deref()
            .unwrap()
            .contains("console.log keeps the first")
    );
    assert_no_qemu_left(&report);

    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(hwm_kib < 200 * 1024, "peak RSS {hwm_kib} KiB");
}

/// A profile with a display gives a PNG screenshot of it at the end of each test.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn screenshots_of_a_display() {
    for (arch, device) in [(Arch::X86_64, "VGA"), (Arch::Aarch64, "ramfb")] {
        let mut profile = MachineProfile::builtin(arch);
        profile.display = Some(device.to_owned());
        let (report, _scratch) = run_with(
            QemuConfig::new().with_profile(profile),
            vec![case(arch, "screen", "echo on screen > /dev/tty0 || true")],
            CancellationToken::new(),
        )
        .await;
        let r = by(&report, "screen");
        assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
        let shot = r
            .artifacts
            .iter()
            .find(|a| a.name == "screenshot.png")
            .expect("a screenshot");
        let decoder = png::Decoder::new(std::io::BufReader::new(
            std::fs::File::open(&shot.path).unwrap(),
        ));
        let reader = decoder.read_info().expect("the PNG decodes");
        let info = reader.info();
        assert!(
            info.width >= 320 && info.height >= 200,
            "{arch}: {}x{}",
            info.width,
            info.height
        );
    }
}

/// Ctrl-C during boot: the test is cancelled and QEMU does not survive.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn cancellation_stops_qemu() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        trigger.cancel();
    });
    let (report, _scratch) = run_with(
        QemuConfig::new(),
        vec![case(Arch::Riscv64, "cancelled", "sleep 100")],
        cancel,
    )
    .await;
    let r = by(&report, "cancelled");
    assert_eq!(r.outcome, Outcome::Cancelled, "{r:#?}");
    assert_no_qemu_left(&report);
}

/// A caller that drops the runner's future (a panic, an aborted task) does not leak QEMU: the
/// child is killed on drop.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn dropping_a_running_execution_kills_qemu() {
    use orchestrator_core::{ExecutionContext, TestRunner};
    let dir = tempfile::tempdir().unwrap();
    let runner = QemuRunner::new(QemuConfig::new());
    let case = case(Arch::Aarch64, "dropped", "sleep 100");
    let ctx = ExecutionContext::new(&case, dir.path());
    let _ = tokio::time::timeout(Duration::from_secs(3), runner.execute(&case, &ctx)).await;
    let started = ctx.processes();
    assert_eq!(started.len(), 1, "QEMU was started and reported");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(started[0].pid) {
        assert!(
            Instant::now() < deadline,
            "QEMU {} survived its dropped execution",
            started[0].pid
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// QEMU rejecting its arguments is an infrastructure error quoting QEMU.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn qemu_that_fails_to_start_is_an_infrastructure_error() {
    let mut profile = MachineProfile::builtin(Arch::Aarch64);
    profile.extra_args = vec!["-no-such-option".into()];
    let (report, _scratch) = run_with(
        QemuConfig::new().with_profile(profile),
        vec![case(Arch::Aarch64, "badargs", "true")],
        CancellationToken::new(),
    )
    .await;
    let r = by(&report, "badargs");
    let Outcome::InfraError { message, .. } = &r.outcome else {
        panic!("{r:#?}")
    };
    assert!(
        message.contains("QEMU failed to start") && message.contains("no-such-option"),
        "{message}"
    );
}

/// Who ended the guest: QEMU killed from outside is an infrastructure error (quoting how it
/// ended) within 2 s and is retried; the guest's own `poweroff -f` and `reboot -f` are crashes
/// with labels of their own, never retried.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_killed_qemu_is_an_infrastructure_error_and_a_poweroff_is_not() {
    let arch = Arch::Aarch64;
    let scratch = tempfile::tempdir().unwrap();
    let marker = "ready-to-be-killed";
    let cases = vec![
        case(
            arch,
            "killed",
            &format!("echo {marker} >/dev/console; sleep 4; echo survived"),
        ),
        case(arch, "poweroff", "poweroff -f; sleep 30"),
        case(arch, "reboot", "reboot -f; sleep 30"),
    ];
    // Kills, once, the QEMU whose console shows the marker (its test is running).
    let root = scratch.path().to_owned();
    let killer = std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            if let Some(pid) = qemu_showing(&root, marker) {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    });
    let orch = Orchestrator::new(
        RunConfig::new(scratch.path())
            .with_parallelism(1)
            .with_infra_retries(1),
    )
    .with_runner(QemuRunner::new(QemuConfig::new()));
    let retried_at = std::sync::Mutex::new(None);
    let report = orch
        .run_with(cases, CancellationToken::new(), |e| {
            if let orchestrator_core::RunEvent::TestRetrying { .. } = e {
                *retried_at.lock().unwrap() = Some(Instant::now());
            }
        })
        .await
        .unwrap();
    let killed_at = killer
        .join()
        .unwrap()
        .expect("the test's QEMU was found and killed");
    let retried_at = retried_at
        .into_inner()
        .unwrap()
        .expect("the killed test was retried");
    let latency = retried_at - killed_at;
    eprintln!("killed QEMU -> infrastructure error in {latency:?}");
    assert!(latency < Duration::from_secs(2), "{latency:?}");

    let killed = by(&report, "killed");
    assert_eq!(killed.outcome, Outcome::Passed, "{killed:#?}");
    assert_eq!(killed.attempt, 2);
    let first = &killed.earlier_attempts[0];
    assert!(first.outcome.is_retryable(), "{first:#?}");
    let Outcome::InfraError { message, .. } = &first.outcome else {
        panic!("{first:#?}")
    };
    assert!(
        message.contains("QEMU was killed by SIGKILL before the test finished"),
        "{message}"
    );

    let poweroff = by(&report, "poweroff");
    assert_eq!(
        poweroff.outcome,
        Outcome::Crashed {
            crash: CrashKind::PowerOff
        },
        "{poweroff:#?}"
    );
    assert_eq!(poweroff.attempt, 1, "a crash is not retried");
    let reboot = by(&report, "reboot");
    assert_eq!(
        reboot.outcome,
        Outcome::Crashed {
            crash: CrashKind::Reboot
        },
        "{reboot:#?}"
    );
    assert_eq!(reboot.attempt, 1);
    assert_no_qemu_left(&report);
}

/// The pid of a QEMU started for a test under `root` whose console log (under `root`) shows
/// `marker`.
fn qemu_showing(root: &std::path::Path, marker: &str) -> Option<u32> {
    fn logs(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                logs(&p, out);
            } else if p.file_name().is_some_and(|n| n == "console.log") {
                out.push(p);
            }
        }
    }
    let mut found = Vec::new();
    logs(root, &mut found);
    let showing = found
        .iter()
        .any(|l| std::fs::read_to_string(l).is_ok_and(|t| t.contains(marker)));
    if !showing {
        return None;
    }
    let root = root.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&root)
            })
        })
}

/// A test stopped by its timeout still returns what it printed: the first and the last lines
/// before the timeout, with the count of what was cut, although it printed far more than the
/// guest keeps (the guest's copy is bounded too); a test that ignores SIGTERM is killed.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_timed_out_test_returns_its_first_and_last_lines() {
    let arch = Arch::Aarch64;
    let mut config = QemuConfig::new();
    config.output_limit = Some(64 * 1024);
    let cases = vec![
        case(arch, "numbered", "seq 1 1000000000").with_timeout(Duration::from_secs(8)),
        case(
            arch,
            "ignores-term",
            "trap '' TERM; echo started; echo oops >&2; while :; do sleep 1; done",
        )
        .with_timeout(Duration::from_secs(3)),
    ];
    let (report, _scratch) = run_with(config, cases, CancellationToken::new()).await;

    let numbered = by(&report, "numbered");
    assert_eq!(
        numbered.outcome,
        Outcome::TimedOut {
            phase: Phase::Test,
            limit: Duration::from_secs(8)
        },
        "{numbered:#?}"
    );
    let out = &numbered.stdout;
    let (head, tail) = out
        .text
        .split_once(" bytes truncated ...]\n")
        .expect("a truncation marker");
    assert!(head.starts_with("1\n2\n3\n"), "{}", &head[..40]);
    // `seq` writes whole stdio buffers, so the output may end inside a line: the part after the
    // last newline must begin the next number.
    let (lines, partial) = tail.rsplit_once('\n').expect("whole lines in the tail");
    let tail_numbers: Vec<u64> = lines
        .lines()
        .skip(1)
        .map(|l| l.parse().unwrap_or_else(|_| panic!("a number: {l:?}")))
        .collect();
    let last = *tail_numbers.last().expect("the last lines");
    let gap = tail_numbers.windows(2).position(|w| w[1] != w[0] + 1);
    assert!(
        gap.is_none(),
        "the tail is consecutive: {:?}",
        gap.map(|i| &tail_numbers[i.saturating_sub(2)..(i + 3).min(tail_numbers.len())])
    );
    assert!(
        (last + 1).to_string().starts_with(partial),
        "after line {last} comes {partial:?}"
    );
    // Every byte the test wrote is counted: 1..=last, each with its newline, and the partial
    // line.
    let written: u64 = (1..=last)
        .map(|n| n.to_string().len() as u64 + 1)
        .sum::<u64>()
        + partial.len() as u64;
    assert_eq!(
        out.total_bytes, written,
        "last line {last}, then {partial:?}"
    );
    assert_eq!(out.truncated_bytes, written - 64 * 1024);
    // The guest keeps at most 1 MiB (4x the limit, at least 1 MiB) before it cuts.
    assert!(
        written > 2 << 20,
        "the test printed more than the guest keeps ({written} bytes)"
    );
    eprintln!(
        "numbered: {written} bytes printed, last line {last}, {} kept",
        written - out.truncated_bytes
    );

    let stubborn = by(&report, "ignores-term");
    assert!(
        matches!(stubborn.outcome, Outcome::TimedOut { .. }),
        "{stubborn:#?}"
    );
    assert_eq!(stubborn.stdout.text, "started\n");
    assert_eq!(stubborn.stderr.text, "oops\n");
    let message = stubborn.message.as_deref().unwrap();
    assert!(message.contains("exited with 137"), "{message}");
    assert!(stubborn.artifacts.iter().any(|a| a.name == "dmesg.txt"));
    assert_no_qemu_left(&report);
}

/// The plan's `[run] output-limit` bounds a QEMU test's output like a host test's: a test
/// printing far more than the limit gets head and tail at exactly the plan's limit, with the
/// exact count of what was cut, on stdout and stderr.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn the_plans_output_limit_bounds_a_guest_tests_output() {
    let plan = orchestrator_core::plan::Loader::new()
        .section::<qemu_runner::QemuPlan>()
        .parse(
            "[run]\noutput-limit = \"8KiB\"\n[[test]]\nid = \"chatty\"\narch = \"aarch64\"\n\
             script = \"seq 1 30000; seq 1 5000 >&2\"\n",
            std::path::Path::new("limit.toml"),
            std::path::Path::new("."),
        )
        .unwrap();
    let limit = 8 * 1024;
    assert_eq!(plan.settings.output_limit, Some(limit));
    let scratch = tempfile::tempdir().unwrap();
    let config = RunConfig::new(scratch.path())
        .with_parallelism(1)
        .with_plan_settings(&plan.settings);
    let report = Orchestrator::new(config)
        .with_runner(QemuRunner::new(QemuConfig::new()))
        .run(plan.cases.clone())
        .await
        .expect("valid run");
    let r = &report.results[0];
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    let printed = |n: u64| -> u64 { (1..=n).map(|i| i.to_string().len() as u64 + 1).sum() };
    for (out, last) in [(&r.stdout, 30000u64), (&r.stderr, 5000)] {
        let total = printed(last);
        assert_eq!(out.total_bytes, total);
        assert_eq!(
            out.truncated_bytes,
            total - limit as u64,
            "{}",
            out.text.len()
        );
        let marker = format!("[... {} bytes truncated ...]\n", total - limit as u64);
        let (head, tail) = out.text.split_once(&marker).expect("the truncation marker");
        assert!(head.starts_with("1\n2\n3\n"), "{head:.40}");
        assert!(tail.ends_with(&format!("{}\n{last}\n", last - 1)), "{tail}");
        // Head and tail are the limit's bytes (a newline may be added before the marker).
        let extra = out.text.len() - marker.len() - limit;
        assert!(
            extra <= 1,
            "{} bytes kept for a limit of {limit}",
            out.text.len()
        );
    }
    // The stock kernel is recorded as its Debian package, what the KCIDB export names its
    // build by.
    let package = &r.environment["kernel-package"];
    let version = &r.environment["kernel-package-version"];
    assert!(package.starts_with("linux-image-"), "{:?}", r.environment);
    let kcidb = report.kcidb(&Default::default()).unwrap();
    assert_eq!(
        kcidb["builds"][0]["id"],
        format!("qorch:{package}_{version}").as_str()
    );
    assert_eq!(kcidb["builds"][0]["architecture"], "aarch64");
    assert_eq!(kcidb["tests"][0]["path"], "chatty");
    assert_no_qemu_left(&report);
}

/// Session mode: 50 tests in one boot, with a hang and a panic in the middle; the guest is
/// replaced twice and every test gets its own correct result.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_session_of_fifty_tests_survives_a_hang_and_a_panic() {
    let arch = Arch::Aarch64;
    let fixtures = tempfile::tempdir().unwrap();
    let data = fixtures.path().join("data.txt");
    std::fs::write(&data, "from the host\n").unwrap();
    // Tests in the middle of the session that check what a session must keep apart or carry:
    // the kernel log of each test (taken from the console), a test with files of its own (sent
    // as an archive) between tests sent as text, a script that is not plain ASCII, the agent's
    // variables hidden from the test, artifacts, and /work emptied between tests.
    let special: [(u32, &str); 7] = [
        (5, "echo test 5; echo orch-kmsg-5 > /dev/kmsg; exit 1"),
        (7, "cat data.txt; echo test 7; exit 3"),
        (9, "echo 'test 9 \u{e9}' >/dev/null; echo test 9; exit 1"),
        (
            10,
            "if [ -n \"$nonce$limit$t$session\" ] || [ \"$ORCH_TEST_ID\" != s10@aarch64 ] || command -v say; then exit 10; fi; echo test 10; exit 2",
        ),
        (
            11,
            "echo kept > out.txt; touch .hidden; echo test 11; exit 3",
        ),
        (12, "[ -z \"$(ls -A /work)\" ] || exit 12; echo test 12"),
        (13, "echo test 13; exit 1"),
    ];
    let mut cases = Vec::new();
    for n in 0..50u32 {
        if let Some((_, script)) = special.iter().find(|(k, _)| *k == n) {
            let mut c = case(arch, &format!("s{n:02}"), script);
            if n == 7 {
                c = c.with_file(&data, "data.txt");
            }
            if n == 11 {
                c = c.with_artifact("out.txt");
            }
            cases.push(c);
            continue;
        }
        let c = match n {
            20 => {
                case(arch, &format!("s{n:02}"), "sleep 1000").with_timeout(Duration::from_secs(3))
            }
            35 => case(arch, &format!("s{n:02}"), "echo c > /proc/sysrq-trigger"),
            _ => case(
                arch,
                &format!("s{n:02}"),
                &format!("echo test {n}; exit {}", n % 4),
            ),
        };
        cases.push(c);
    }
    let started = Instant::now();
    let (report, _scratch) = run_with(
        QemuConfig::new().with_session(true),
        cases,
        CancellationToken::new(),
    )
    .await;
    let elapsed = started.elapsed();
    let mut guests = std::collections::BTreeSet::new();
    let mut durations = Vec::new();
    for (n, r) in report.results.iter().enumerate() {
        let n = n as u32;
        match n {
            20 => assert!(
                matches!(
                    r.outcome,
                    Outcome::TimedOut {
                        phase: Phase::Test,
                        ..
                    }
                ),
                "{r:#?}"
            ),
            35 => assert_eq!(
                r.outcome,
                Outcome::Crashed {
                    crash: CrashKind::KernelPanic
                },
                "{r:#?}"
            ),
            _ => {
                let expected = if n.is_multiple_of(4) {
                    Outcome::Passed
                } else {
                    Outcome::Failed {
                        exit_code: Some((n % 4) as i32),
                        signal: None,
                    }
                };
                assert_eq!(r.outcome, expected, "{r:#?}");
                let stdout = match n {
                    7 => "from the host\ntest 7\n".to_owned(),
                    _ => format!("test {n}\n"),
                };
                assert_eq!(r.stdout.text, stdout, "{r:#?}");
                let dmesg = r.artifacts.iter().find(|a| a.name == "dmesg.txt");
                let dmesg = std::fs::read_to_string(&dmesg.expect("a kernel log").path).unwrap();
                // Each test's kernel log holds its own messages and no other test's.
                assert_eq!(dmesg.contains("orch-kmsg-5"), n == 5, "{n}: {dmesg}");
                if n == 11 {
                    let out = r.artifacts.iter().find(|a| a.name == "files/out.txt");
                    let out = std::fs::read_to_string(&out.expect("out.txt").path).unwrap();
                    assert_eq!(out, "kept\n");
                }
                if let Some(t) = r.phase(Phase::Test) {
                    durations.push(
                        t.duration()
                            + r.phase(Phase::Teardown)
                                .map_or(Duration::ZERO, |p| p.duration()),
                    );
                }
            }
        }
        let session = &r.environment["session"];
        guests.insert(session.split(',').next().unwrap().to_owned());
    }
    assert_eq!(guests.len(), 3, "one boot plus two restarts: {guests:?}");
    for r in &report.results[5..8] {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|p| format!("{} {:.0} ms", p.phase, p.duration().as_secs_f64() * 1000.0))
            .collect();
        eprintln!("{}: {}", r.test_id, phases.join(", "));
    }
    durations.sort();
    eprintln!(
        "session: 50 tests in {:.1}s on {} guests; median per-test time in a booted guest {:.0} ms",
        elapsed.as_secs_f64(),
        guests.len(),
        durations[durations.len() / 2].as_secs_f64() * 1000.0
    );
    assert_no_qemu_left(&report);
}

/// Snapshot reset: one boot, then every test in a guest restored from the saved state, each
/// starting pristine (what one test leaves in the guest, the next does not see).
async fn snapshot_suite(arch: Arch) {
    let mut cases = Vec::new();
    for n in 0..4 {
        cases.push(case(
            arch,
            &format!("snap{n}"),
            &format!(
                "[ ! -e /tmp/left-behind ] || exit 9; echo {n} > /tmp/left-behind; uname -m; exit {}",
                n % 2
            ),
        ));
    }
    cases.push(case(arch, "snap-panic", "echo c > /proc/sysrq-trigger"));
    cases.push(case(
        arch,
        "snap-after",
        "[ ! -e /tmp/left-behind ] && echo fine",
    ));
    let (report, _scratch) = run_with(
        QemuConfig::new().with_snapshot_reset(true),
        cases,
        CancellationToken::new(),
    )
    .await;
    let machine = match arch {
        Arch::Armv7 => "armv7l",
        other => other.as_str(),
    };
    let mut pids = std::collections::BTreeSet::new();
    for n in 0..4 {
        let r = by(&report, &format!("snap{n}"));
        let expected = if n % 2 == 0 {
            Outcome::Passed
        } else {
            Outcome::Failed {
                exit_code: Some(1),
                signal: None,
            }
        };
        assert_eq!(r.outcome, expected, "{r:#?}");
        assert_eq!(r.stdout.text, format!("{machine}\n"), "{r:#?}");
        assert!(r.environment["snapshot-restore"].ends_with("ms)"), "{r:#?}");
        pids.insert(r.environment["qemu-pid"].clone());
    }
    assert_eq!(pids.len(), 4, "a QEMU of its own per test: {pids:?}");
    let panic = by(&report, "snap-panic");
    assert_eq!(
        panic.outcome,
        Outcome::Crashed {
            crash: CrashKind::KernelPanic
        },
        "{panic:#?}"
    );
    let after = by(&report, "snap-after");
    assert_eq!(after.outcome, Outcome::Passed, "{after:#?}");
    assert_eq!(after.stdout.text, "fine\n");
    assert_no_qemu_left(&report);
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn snapshot_reset_aarch64() {
    snapshot_suite(Arch::Aarch64).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn snapshot_reset_x86_64() {
    snapshot_suite(Arch::X86_64).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn snapshot_reset_armv7() {
    snapshot_suite(Arch::Armv7).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn snapshot_reset_riscv64() {
    snapshot_suite(Arch::Riscv64).await;
}

/// 100 consecutive tests that time out (snapshot reset keeps each short): every one is stopped
/// and reported, and no QEMU process, socket or temporary directory of the runner is left.
/// (A 2 s timeout: with 0.5 s or 1 s, a host loaded 3-4x over its cores could reach the
/// deadline before the restored guest's test had run its first `echo`.)
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_hundred_timed_out_tests_leave_nothing_behind() {
    // The runner's sockets and snapshot files go to a private directory, to count what is left.
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut config = QemuConfig::new().with_snapshot_reset(true);
    config.temp_dir = tmp.path().to_owned();
    let arch = Arch::Aarch64;
    let cases: Vec<TestCase> = (0..100)
        .map(|i| {
            case(arch, &format!("t{i:03}"), &format!("echo {i}; sleep 1000"))
                .with_timeout(Duration::from_secs(2))
        })
        .collect();
    let started = Instant::now();
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(2))
        .with_runner(QemuRunner::new(config));
    let report = orch.run(cases).await.unwrap();
    eprintln!(
        "100 timed-out tests in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(report.results.len(), 100);
    for (i, r) in report.results.iter().enumerate() {
        assert!(
            matches!(
                r.outcome,
                Outcome::TimedOut {
                    phase: Phase::Test,
                    ..
                }
            ),
            "{r:#?}"
        );
        assert_eq!(r.stdout.text, format!("{i}\n"), "{r:#?}");
    }
    // Nothing of the runner's is left: no QEMU, no socket, no temporary directory.
    let tmp_path = tmp.path().to_string_lossy().into_owned();
    let qemus: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&tmp_path)
            })
        })
        .collect();
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut sockets = Vec::new();
    let mut stack = vec![scratch.path().to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if std::os::unix::fs::FileTypeExt::is_socket(&ft) {
                sockets.push(e.path());
            }
        }
    }
    eprintln!(
        "left: {} QEMU processes, {} entries in the temporary directory, {} sockets in the scratch directory",
        qemus.len(),
        left.len(),
        sockets.len()
    );
    assert!(qemus.is_empty(), "QEMU still running: {qemus:?}");
    assert!(
        left.is_empty(),
        "left in {}: {left:?}",
        tmp.path().display()
    );
    assert!(sockets.is_empty(), "{sockets:?}");
    assert_no_qemu_left(&report);
}

/// The kernel's own `test_bpf` module with every case, as one test per architecture: its
/// cases run while it loads, in the test phase, on the test's clock (600 s), not on the boot
/// deadline. Architectures run two at a time.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn full_test_bpf_on_four_architectures() {
    let cases: Vec<TestCase> = [Arch::X86_64, Arch::Aarch64, Arch::Armv7, Arch::Riscv64]
        .into_iter()
        .map(|arch| {
            with_modules(
                case(
                    arch,
                    "test_bpf",
                    "grep 'test_bpf: Summary:' /tmp/modules-kmsg.log\n\
                     grep -q 'test_bpf: Summary: [0-9]* PASSED, 0 FAILED' /tmp/modules-kmsg.log\n\
                     grep -q '^test_bpf ' /proc/modules",
                ),
                &["test_bpf"],
            )
            .with_timeout(Duration::from_secs(600))
        })
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(2))
        .with_runner(QemuRunner::new(QemuConfig::new()));
    let report = orch.run(cases).await.unwrap();
    for r in &report.results {
        let test = r.phase(Phase::Test).map(|p| p.duration());
        eprintln!(
            "{}: {} in {:.1}s (boot {:.1}s, test {:.1}s): {}",
            r.test_id,
            r.outcome,
            r.duration().as_secs_f64(),
            r.phase(Phase::Boot)
                .map_or(0.0, |p| p.duration().as_secs_f64()),
            test.map_or(0.0, |d| d.as_secs_f64()),
            r.stdout.text.trim()
        );
        assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
        assert!(
            r.stdout.text.contains("0 FAILED"),
            "{}: {}",
            r.test_id,
            r.stdout.text
        );
        // What the module printed while loading is in the test's kernel log too.
        let dmesg = r
            .artifacts
            .iter()
            .find(|a| a.name == "dmesg.txt")
            .expect("dmesg.txt");
        let log = std::fs::read_to_string(&dmesg.path).unwrap();
        assert!(log.contains("test_bpf: Summary:"), "{}", r.test_id);
    }
    assert_no_qemu_left(&report);
}
