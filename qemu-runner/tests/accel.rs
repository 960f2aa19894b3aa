//! The accelerator choice, pinned down on any x86_64 host: QEMU wrappers stand in for a host
//! whose KVM runs the real-mode setup code and then hangs the kernel (a paravirtual or broken
//! nested KVM), and for one whose KVM works. Under `-accel kvm` both run the real
//! qemu-system-x86_64 under TCG (`-cpu host` becomes `-cpu max`); the hanging one hides the
//! guest's console from the kernel's `Linux version` banner on, while QEMU keeps running. The
//! KVM device is a file the test creates, so `/dev/kvm` does not matter.
//!
//! They need QEMU and the provisioned x86_64 image, which `cargo xtask test` installs before
//! running them; plain `cargo test` skips them as ignored.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, CancellationToken, Orchestrator, Outcome, Requirements, RunConfig, RunReport, TestCase,
    TestResult, plan,
};
use qemu_runner::accel::{self, KernelCheckSpec, KvmCheck};
use qemu_runner::{AccelMode, MachineProfile, QemuConfig, QemuPlan, QemuRunner, provision};

mod support;

/// What a wrapper does with the guest's console under `-accel kvm`.
#[derive(Clone, Copy, PartialEq)]
enum Kvm {
    /// Passes it through: a KVM that works.
    Works,
    /// Swallows it from the `Linux version` line on: a KVM that hangs the kernel.
    HangsTheKernel,
}

/// A scratch directory with a fake KVM device, a build cache and a QEMU wrapper that logs the
/// pid of every guest it starts (it `exec`s QEMU, so the pid is QEMU's; `--version` queries
/// are not logged).
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new(kvm: Kvm) -> Host {
        let dir = tempfile::tempdir().unwrap();
        let real = MachineProfile::builtin(Arch::X86_64)
            .find_qemu()
            .expect("qemu-system-x86_64 is installed");
        std::fs::write(dir.path().join("kvm"), b"").unwrap();
        // The console is QEMU's stdout (`-chardev stdio`); awk hides it from the banner on.
        // Without `-no-reboot` a guest that panics or powers off starts again, unseen, instead
        // of ending QEMU: it looks hung, not dead.
        let run = match kvm {
            Kvm::Works => "exec \"$qemu\" \"${args[@]}\"",
            Kvm::HangsTheKernel => {
                "hidden=()\n    for a in \"${args[@]}\"; do [ \"$a\" = -no-reboot ] || hidden+=(\"$a\"); done\n    \
                 exec \"$qemu\" \"${hidden[@]}\" > >(awk '/Linux version/ { hung = 1 } !hung { print; fflush() }')"
            }
        };
        let script = format!(
            r#"#!/bin/bash
qemu={real}
[ "$1" = --version ] || echo $$ >> {pids}
args=()
kvm=0
prev=
for a in "$@"; do
    if [ "$prev" = -accel ] && [ "$a" = kvm ]; then a=tcg; kvm=1; fi
    if [ "$prev" = -cpu ] && [ "$a" = host ]; then a=max; fi
    args+=("$a")
    prev=$a
done
if [ $kvm = 1 ]; then
    {run}
fi
exec "$qemu" "${{args[@]}}"
"#,
            real = shell_quote(&real),
            pids = shell_quote(&dir.path().join("pids")),
        );
        let wrapper = dir.path().join("qemu-wrapper");
        std::fs::write(&wrapper, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        Host { dir }
    }

    fn wrapper(&self) -> PathBuf {
        self.dir.path().join("qemu-wrapper")
    }

    fn kvm_device(&self) -> PathBuf {
        self.dir.path().join("kvm")
    }

    fn build_cache(&self) -> PathBuf {
        self.dir.path().join("build")
    }

    /// The x86_64 profile with the wrapper as its QEMU.
    fn profile(&self, boot_timeout: Duration) -> MachineProfile {
        let mut p = MachineProfile::builtin(Arch::X86_64);
        p.qemu = self.wrapper().display().to_string();
        p.boot_timeout = boot_timeout;
        p
    }

    /// A runner configuration for this host: the wrapper, the fake KVM device, a private build
    /// cache, and no `ORCH_ACCEL` from the environment the tests run in.
    fn config(&self, boot_timeout: Duration) -> QemuConfig {
        QemuConfig::new()
            .with_profile(self.profile(boot_timeout))
            .with_kvm_device(self.kvm_device())
            .with_build_cache(self.build_cache())
            .with_accel_env(None)
    }

    /// Every QEMU the wrapper started must be gone.
    fn assert_no_qemu_left(&self) {
        let pids = std::fs::read_to_string(self.dir.path().join("pids")).unwrap_or_default();
        for pid in pids.lines() {
            let pid: u32 = pid.parse().unwrap();
            let stopped = Instant::now();
            while alive(pid) && stopped.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(!alive(pid), "QEMU {pid} is still running");
        }
    }

    fn qemu_runs(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("pids"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// The tests need an x86_64 host (the guest must match it for KVM to be considered).
fn x86_64_host() -> bool {
    if Arch::host() == Some(Arch::X86_64) {
        return true;
    }
    eprintln!("skipped: KVM is only considered for a guest of the host's architecture (x86_64)");
    false
}

fn case(id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(Arch::X86_64);
    TestCase::script(id, script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(60))
}

async fn run(config: QemuConfig, cases: Vec<TestCase>) -> RunReport {
    let keys = ["accelerator", "accelerator-reason"];
    support::run_cases(config, cases, CancellationToken::new(), &keys)
        .await
        .0
}

fn env<'a>(r: &'a TestResult, key: &str) -> &'a str {
    r.environment
        .get(key)
        .unwrap_or_else(|| panic!("no `{key}` in the environment of {}", r.test_id))
}

fn x86_64_kernel() -> PathBuf {
    provision::load(&provision::default_cache_dir())
        .expect("the guest images are provisioned: run `cargo xtask test`")
        .images[&Arch::X86_64]
        .kernel
        .clone()
}

/// KVM that runs the setup code and then hangs the kernel: refused after the check's limit,
/// the test runs and passes under TCG, the reason is in the result, the answer is remembered.
#[tokio::test]
#[ignore = "boots QEMU guests: run by `cargo xtask test`"]
async fn kvm_that_hangs_the_kernel_is_refused_and_the_test_runs_under_tcg() {
    if !x86_64_host() {
        return;
    }
    let host = Host::new(Kvm::HangsTheKernel);
    let limit = Duration::from_secs(10);
    let started = Instant::now();
    let report = run(host.config(limit), vec![case("uname", "uname -m")]).await;
    let r = &report.results[0];
    assert!(matches!(r.outcome, Outcome::Passed), "{r:#?}");
    assert_eq!(env(r, "accelerator"), "tcg");
    let reason = env(r, "accelerator-reason");
    for part in [
        &format!("{} opens, but", host.kvm_device().display()),
        "the kernel did not print its `Linux version` banner under KVM within 10 s",
        // Real-mode text was seen, and proved nothing.
        "last console line: `Probing EDD",
        "using TCG",
    ] {
        assert!(reason.contains(part), "`{part}` missing from: {reason}");
    }
    assert!(env(r, "qemu-command").contains("-accel tcg"));
    assert_eq!(r.stdout.text.trim(), "x86_64");
    assert!(
        started.elapsed() >= limit,
        "the check must have waited for the banner"
    );
    // The check and the test: two QEMUs, both gone.
    assert_eq!(host.qemu_runs(), 2);
    host.assert_no_qemu_left();

    // The answer is on disk: a new runner does not boot the kernel under KVM again.
    let spec = check_spec(&host, limit);
    let remembered = accel::check_kernel_cached(&spec, &host.build_cache()).await;
    assert!(
        matches!(&remembered, KvmCheck::Fails(why) if why.contains("remembered in")),
        "{remembered:?}"
    );
    assert_eq!(host.qemu_runs(), 2);
}

/// The check the runner makes for the provisioned x86_64 kernel on this host's profile.
fn check_spec(host: &Host, limit: Duration) -> KernelCheckSpec {
    let profile = host.profile(limit);
    KernelCheckSpec::new(
        &profile,
        profile.find_qemu().unwrap(),
        None,
        x86_64_kernel(),
    )
}

/// KVM forced (by the plan, then by `ORCH_ACCEL`) where the kernel hangs under it: the test
/// fails as an infrastructure error that names the fix, and nothing falls back to TCG.
#[tokio::test]
#[ignore = "boots QEMU guests: run by `cargo xtask test`"]
async fn forced_kvm_that_hangs_the_kernel_fails_naming_the_fix() {
    if !x86_64_host() {
        return;
    }
    let host = Host::new(Kvm::HangsTheKernel);
    let text = format!(
        "[qemu]\naccel = \"tcg\"\n[qemu.profile.x86_64]\nqemu = \"{}\"\naccel = \"kvm\"\n\
         boot-timeout = \"5s\"\n[[test]]\nid = \"t\"\nscript = \"true\"\n",
        host.wrapper().display()
    );
    let plan = plan::Loader::new()
        .section::<QemuPlan>()
        .parse(&text, Path::new("accel.toml"), Path::new("."))
        .unwrap();
    let config = QemuConfig::new()
        .with_kvm_device(host.kvm_device())
        .with_build_cache(host.build_cache())
        .with_accel_env(None)
        .with_plan(plan.section::<QemuPlan>().unwrap());
    assert_eq!(config.accel, AccelMode::Tcg);
    assert_eq!(config.profiles[&Arch::X86_64].accel, Some(AccelMode::Kvm));
    let report = run(config.clone(), vec![case("forced", "true")]).await;
    let r = &report.results[0];
    let Outcome::InfraError { message, cause } = &r.outcome else {
        panic!("forced KVM must not fall back: {r:#?}")
    };
    assert_eq!(
        *cause,
        orchestrator_core::ErrorKind::Configuration,
        "retrying a forced KVM cannot help"
    );
    for part in [
        "KVM was forced by accel = \"kvm\" in the x86_64 profile but cannot be used",
        "did not print its `Linux version` banner under KVM within 5 s",
        "accel = \"auto\"",
        "accel = \"tcg\"",
        "ORCH_ACCEL=tcg",
    ] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    // Only the check ran.
    assert_eq!(host.qemu_runs(), 1);

    // ORCH_ACCEL=kvm wins over a plan that says tcg, and fails the same way (remembered: no
    // second check).
    let mut config = config.with_accel_env(Some("kvm"));
    config.profiles.get_mut(&Arch::X86_64).unwrap().accel = Some(AccelMode::Tcg);
    let report = run(config.clone(), vec![case("forced-by-env", "true")]).await;
    let Outcome::InfraError { message, .. } = &report.results[0].outcome else {
        panic!("{:#?}", report.results[0])
    };
    assert!(
        message.contains("KVM was forced by ORCH_ACCEL=kvm") && message.contains("remembered"),
        "{message}"
    );
    assert_eq!(host.qemu_runs(), 1);

    // A bad ORCH_ACCEL stops the run before anything boots, naming the variable.
    let scratch = tempfile::tempdir().unwrap();
    let err = Orchestrator::new(RunConfig::new(scratch.path()))
        .with_runner(QemuRunner::new(config.with_accel_env(Some("fast"))))
        .run_with(
            vec![case("bad-env", "true")],
            CancellationToken::new(),
            |_| {},
        )
        .await
        .expect_err("a bad ORCH_ACCEL is a configuration error");
    let err = err.to_string();
    assert!(
        err.contains("ORCH_ACCEL=fast is not valid")
            && err.contains("\"auto\", \"kvm\" or \"tcg\""),
        "{err}"
    );
    assert_eq!(host.qemu_runs(), 1);
    host.assert_no_qemu_left();
}

/// KVM that works: accepted once the kernel's banner appeared, and the test runs under it.
#[tokio::test]
#[ignore = "boots QEMU guests: run by `cargo xtask test`"]
async fn kvm_is_accepted_once_the_kernel_printed_its_banner() {
    if !x86_64_host() {
        return;
    }
    let host = Host::new(Kvm::Works);
    // Under the wrapper "KVM" is emulation: give the check and the boot time for it.
    let limit = Duration::from_secs(90);
    let report = run(
        host.config(limit),
        vec![case("uname", "uname -m"), case("again", "true")],
    )
    .await;
    for r in &report.results {
        assert!(matches!(r.outcome, Outcome::Passed), "{r:#?}");
        assert_eq!(env(r, "accelerator"), "kvm");
        let reason = env(r, "accelerator-reason");
        assert!(
            reason
                .starts_with("KVM: the kernel printed its `Linux version` banner under KVM after"),
            "{reason}"
        );
        assert!(env(r, "qemu-command").contains("-accel kvm -cpu host"));
    }
    // One check for both tests (same architecture and kernel), then one boot each.
    assert_eq!(host.qemu_runs(), 3);
    host.assert_no_qemu_left();
    let remembered =
        accel::check_kernel_cached(&check_spec(&host, limit), &host.build_cache()).await;
    assert!(
        matches!(&remembered, KvmCheck::Works(how) if how.contains("remembered in")),
        "{remembered:?}"
    );
    assert_eq!(host.qemu_runs(), 3);
}
