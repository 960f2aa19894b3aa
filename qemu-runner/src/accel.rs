//! Choosing the accelerator: KVM only when it really works for the kernel a test boots, TCG
//! otherwise, always with a reason.
//!
//! Opening `/dev/kvm` is not enough. With broken nested virtualisation the device opens and
//! then QEMU aborts under `-cpu host` ("failed to set MSR"), or, with a paravirtual KVM module
//! (`kvm-pvm`), real-mode code runs fine but the kernel hangs as soon as it leaves real mode.
//! So KVM is trusted for a kernel only after that kernel, booted alone under KVM with an early
//! console, printed its `Linux version` banner within a bounded time ([`check_kernel`]):
//! the banner comes from `start_kernel`, long after the real-mode setup code (whose
//! `Probing EDD` line proves nothing). The answer is remembered on disk per host kernel,
//! QEMU, CPU model and guest kernel digest ([`check_kernel_cached`]).
//!
//! What the user asks for ([`AccelMode`]) comes, strongest first, from the `ORCH_ACCEL`
//! environment variable ([`ACCEL_ENV`]), the architecture's profile, the runner's settings
//! (a plan's `[qemu]` table) and the default, `auto` ([`resolve_mode`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use orchestrator_core::Arch;
use serde::{Deserialize, Serialize};

use crate::profile::MachineProfile;

/// The environment variable that overrides every configured accelerator choice: `auto`, `kvm`
/// or `tcg` (empty: not set).
pub const ACCEL_ENV: &str = "ORCH_ACCEL";

/// The text the kernel check waits for: the first line `start_kernel` prints.
pub const BANNER: &str = "Linux version ";

/// An accelerator QEMU runs a guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Emulation (multi-threaded TCG).
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the user asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelMode {
    /// KVM when it works for this guest, TCG otherwise.
    #[default]
    Auto,
    /// KVM or an error.
    Kvm,
    /// Always TCG.
    Tcg,
}

impl AccelMode {
    /// The accepted spellings, for messages.
    pub const VALUES: &'static str = "\"auto\", \"kvm\" or \"tcg\"";
}

impl fmt::Display for AccelMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AccelMode::Auto => "auto",
            AccelMode::Kvm => "kvm",
            AccelMode::Tcg => "tcg",
        })
    }
}

/// Why an accelerator choice cannot be honoured, or the KVM check could not run; each message
/// names who made the choice and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccelError {
    /// A value that is not `auto`, `kvm` or `tcg`.
    #[error("`{}` is not an accelerator choice: use {}", value.escape_debug(), AccelMode::VALUES)]
    BadMode {
        /// The value given.
        value: String,
    },
    /// KVM was forced but cannot be used.
    #[error(
        "KVM was forced by {forced_by} but cannot be used: {why}; use accel = \"auto\" (KVM when it \
         works, TCG otherwise) or accel = \"tcg\" in the plan's [qemu] table or \
         [qemu.profile.{guest}], or set {ACCEL_ENV}=auto or {ACCEL_ENV}=tcg"
    )]
    KvmForced {
        /// Who forced it ("ORCH_ACCEL=kvm", ...).
        forced_by: String,
        /// Why KVM cannot be used.
        why: String,
        /// The guest's architecture.
        guest: Arch,
    },
    /// The `ORCH_ACCEL` variable holds a value that is not an accelerator choice.
    #[error(
        "{ACCEL_ENV}={} is not valid: set it to {} (or unset it to use the plan's `accel`)",
        value.escape_debug(),
        AccelMode::VALUES
    )]
    BadEnv {
        /// The variable's value.
        value: String,
    },
    /// QEMU could not be started for the KVM kernel check.
    #[error("cannot start {}: {source}", qemu.display())]
    Start {
        /// The QEMU binary.
        qemu: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl FromStr for AccelMode {
    type Err = AccelError;

    /// `auto`, `kvm` or `tcg`, in any case, surrounding blanks ignored.
    fn from_str(s: &str) -> Result<Self, AccelError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            _ => Err(AccelError::BadMode {
                value: s.to_owned(),
            }),
        }
    }
}

/// An accelerator choice and who made it, for reasons and errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedMode {
    /// The choice.
    pub mode: AccelMode,
    /// Who made it, as words: "ORCH_ACCEL=kvm", "accel = \"tcg\" in the x86_64 profile".
    pub source: String,
}

/// Applies the precedence: the `ORCH_ACCEL` value `env` (when set and not blank), then the
/// profile's choice, then the runner's (the plan's `[qemu]` table, or [`AccelMode::Auto`] by
/// default). A bad `env` is an error naming the variable and the valid values.
pub fn resolve_mode(
    env: Option<&str>,
    arch: Arch,
    profile: Option<AccelMode>,
    config: AccelMode,
) -> Result<ResolvedMode, AccelError> {
    if let Some(value) = env.filter(|v| !v.trim().is_empty()) {
        let mode = value.parse::<AccelMode>().map_err(|_| AccelError::BadEnv {
            value: value.to_owned(),
        })?;
        return Ok(ResolvedMode {
            mode,
            source: format!("{ACCEL_ENV}={mode}"),
        });
    }
    Ok(match profile {
        Some(mode) => ResolvedMode {
            mode,
            source: format!("accel = \"{mode}\" in the {arch} profile"),
        },
        None => ResolvedMode {
            mode: config,
            source: format!("accel = \"{config}\" in the runner's settings"),
        },
    })
}

/// The state of the KVM device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmDevice {
    /// It does not exist.
    Missing,
    /// It exists but cannot be opened read-write.
    Inaccessible(String),
    /// It opens.
    Usable,
}

impl KvmDevice {
    /// Looks at the KVM device at `path` (`/dev/kvm` on a real host).
    pub fn detect(path: &Path) -> Self {
        if !path.exists() {
            return KvmDevice::Missing;
        }
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(_) => KvmDevice::Usable,
            Err(e) => KvmDevice::Inaccessible(e.to_string()),
        }
    }
}

/// The result of booting the guest's kernel under KVM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvmCheck {
    /// The kernel printed its banner under KVM; how, in words.
    Works(String),
    /// It did not, and why.
    Fails(String),
}

/// The accelerator chosen and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccelDecision {
    /// The accelerator.
    pub accel: Accel,
    /// Why, in words for logs and the result's environment record.
    pub reason: String,
}

/// The decision table. `check` (the kernel under KVM) is called only when everything else
/// allows KVM; `device_path` is where `device` was looked at.
///
/// Errors only when KVM is forced and cannot work; the error names the fix.
pub fn decide(
    mode: &ResolvedMode,
    guest: Arch,
    host: Option<Arch>,
    device_path: &Path,
    device: &KvmDevice,
    check: impl FnOnce() -> KvmCheck,
) -> Result<AccelDecision, AccelError> {
    let tcg = |reason: String| AccelDecision {
        accel: Accel::Tcg,
        reason,
    };
    if mode.mode == AccelMode::Tcg {
        return Ok(tcg(format!("TCG forced by {}", mode.source)));
    }
    let device_path = device_path.display();
    let verdict = if host != Some(guest) {
        Err(format!(
            "guest architecture {guest} differs from the host's ({})",
            host.map_or_else(|| std::env::consts::ARCH.to_owned(), |h| h.to_string())
        ))
    } else {
        match device {
            KvmDevice::Missing => Err(format!("{device_path} does not exist")),
            KvmDevice::Inaccessible(e) => Err(format!("{device_path} cannot be opened: {e}")),
            KvmDevice::Usable => match check() {
                KvmCheck::Works(how) => Ok(how),
                KvmCheck::Fails(why) => Err(format!("{device_path} opens, but {why}")),
            },
        }
    };
    match (verdict, mode.mode) {
        (Ok(how), AccelMode::Kvm) => Ok(AccelDecision {
            accel: Accel::Kvm,
            reason: format!("KVM forced by {} and {how}", mode.source),
        }),
        (Ok(how), _) => Ok(AccelDecision {
            accel: Accel::Kvm,
            reason: format!("KVM: {how}"),
        }),
        (Err(why), AccelMode::Kvm) => Err(AccelError::KvmForced {
            forced_by: mode.source.clone(),
            why,
            guest,
        }),
        (Err(why), _) => Ok(tcg(format!("{why}; using TCG"))),
    }
}

/// How to boot a kernel alone under KVM for [`check_kernel`]: the profile's machine, CPU
/// model, memory and firmware, the console on stdio, no initramfs.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelCheckSpec {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// The guest architecture (chooses the early console).
    pub arch: Arch,
    /// `-M` value.
    pub machine: String,
    /// `-cpu` value under KVM.
    pub cpu: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// `-bios`, when the profile needs one.
    pub firmware: Option<PathBuf>,
    /// The kernel's name for the console device (`ttyS0`).
    pub console: String,
    /// The kernel to boot.
    pub kernel: PathBuf,
    /// How long the banner may take.
    pub limit: Duration,
}

impl KernelCheckSpec {
    /// The check the runner makes for `kernel` on `profile`'s machine: its `-M`, KVM CPU
    /// model, memory and console, `qemu` and `firmware` as found for the profile, and the
    /// profile's KVM boot deadline as the limit.
    pub fn new(
        profile: &MachineProfile,
        qemu: PathBuf,
        firmware: Option<PathBuf>,
        kernel: PathBuf,
    ) -> Self {
        KernelCheckSpec {
            qemu,
            arch: profile.arch,
            machine: profile.machine.clone(),
            cpu: profile.cpu_kvm.clone(),
            memory_mib: profile.memory_mib,
            firmware,
            console: profile.console.clone(),
            kernel,
            limit: profile.boot_timeout,
        }
    }

    /// The QEMU arguments (without the binary).
    pub fn args(&self) -> Vec<String> {
        let early = match self.arch {
            Arch::X86_64 => format!("earlyprintk=serial,{},115200", self.console),
            _ => "earlycon".to_owned(),
        };
        let mut a: Vec<String> = [
            "-M",
            &self.machine,
            "-accel",
            "kvm",
            "-cpu",
            &self.cpu,
            "-m",
            &self.memory_mib.to_string(),
            "-smp",
            "1",
        ]
        .iter()
        .chain(&crate::vm::HEADLESS_STDIO_CONSOLE)
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(fw) = &self.firmware {
            a.extend(["-bios".to_owned(), fw.to_string_lossy().into_owned()]);
        }
        a.extend([
            "-kernel".to_owned(),
            self.kernel.to_string_lossy().into_owned(),
            "-append".to_owned(),
            format!("console={} {early} loglevel=8 panic=-1", self.console),
        ]);
        a
    }
}

/// Boots `spec.kernel` alone under KVM and waits, at most `spec.limit`, for its `Linux
/// version` banner on the early console; QEMU (its whole process group) is killed as soon as
/// the banner is seen, or at the limit.
///
/// `Err` when the check could not even start (QEMU not found, ...): nothing was learnt about
/// KVM, so such an answer is never remembered.
pub async fn check_kernel(spec: &KernelCheckSpec) -> Result<KvmCheck, AccelError> {
    use tokio::io::AsyncReadExt;

    let mut cmd = tokio::process::Command::new(&spec.qemu);
    cmd.args(spec.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| AccelError::Start {
        qemu: spec.qemu.clone(),
        source,
    })?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_task = tokio::spawn(async move {
        // Keep the first 4 KiB, drain the rest so that QEMU never blocks on it.
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let room = 4096usize.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    });
    let started = Instant::now();
    let mut tail: Vec<u8> = Vec::new();
    let seen = tokio::time::timeout(spec.limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    if tail.windows(BANNER.len()).any(|w| w == BANNER.as_bytes()) {
                        return true;
                    }
                    if tail.len() > 16 * 1024 {
                        tail.drain(..tail.len() - 4096);
                    }
                }
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // QEMU leads its own process group: a wrapper's children go too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.start_kill();
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    let last = last_line(&tail);
    Ok(match seen {
        Ok(true) => KvmCheck::Works(format!(
            "the kernel printed its `Linux version` banner under KVM after {:.1} s",
            elapsed.as_secs_f64()
        )),
        Ok(false) => {
            let err = tokio::time::timeout(Duration::from_secs(2), stderr_task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            let err = String::from_utf8_lossy(&err);
            let err = err.trim();
            let status = match status {
                Ok(Ok(s)) => format!(" ({s})"),
                _ => String::new(),
            };
            KvmCheck::Fails(format!(
                "QEMU exited{status} before the kernel printed its `Linux version` banner under \
                 KVM{}{}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                },
                last.map_or_else(String::new, |l| format!(" (last console line: `{l}`)")),
            ))
        }
        Err(_) => KvmCheck::Fails(format!(
            "the kernel did not print its `Linux version` banner under KVM within {:.0} s ({}): \
             the guest hangs under this host's KVM (nested or paravirtual KVM that cannot run it)",
            spec.limit.as_secs_f64(),
            last.map_or_else(
                || "no console output at all".to_owned(),
                |l| format!("last console line: `{l}`")
            ),
        )),
    })
}

/// The last non-blank line of `bytes`, at most 200 characters.
fn last_line(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())?
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>();
    Some(line)
}

/// A remembered kernel check.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct CachedCheck {
    key: String,
    outcome: KvmCheck,
    checked_at: String,
}

/// What the answer of a kernel check depends on: the host kernel, the QEMU binary and its
/// version, the host CPU model, the machine and `-cpu` model, and the guest kernel's BLAKE3.
async fn check_key(spec: &KernelCheckSpec) -> Result<String, String> {
    let qemu_version = tokio::process::Command::new(&spec.qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default();
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = spec.kernel.clone();
    let digest = tokio::task::spawn_blocking(move || -> Result<String, String> {
        let file = std::fs::File::open(&kernel)
            .map_err(|e| format!("cannot read {}: {e}", kernel.display()))?;
        let mut hasher = blake3::Hasher::new();
        hasher
            .update_reader(file)
            .map_err(|e| format!("cannot read {}: {e}", kernel.display()))?;
        Ok(hasher.finalize().to_hex().to_string())
    })
    .await
    .map_err(|e| format!("hashing the kernel failed: {e}"))??;
    let qemu = std::fs::canonicalize(&spec.qemu).unwrap_or_else(|_| spec.qemu.clone());
    Ok(format!(
        "host-kernel={}|qemu={}|qemu-version={qemu_version}|cpu-model={cpu_model}|arch={}|machine={}|cpu={}|guest-kernel-blake3={digest}",
        host_kernel.trim(),
        qemu.display(),
        spec.arch,
        spec.machine,
        spec.cpu,
    ))
}

/// Where the answer for `key` is kept in `cache_dir`.
pub fn cache_file(cache_dir: &Path, key: &str) -> PathBuf {
    let name = blake3::hash(key.as_bytes()).to_hex();
    cache_dir
        .join("kvm-check")
        .join(format!("{}.json", &name.as_str()[..32]))
}

/// [`check_kernel`], remembered: an answer kept in `cache_dir` (the runner's build cache) for
/// the same host kernel, QEMU, CPU model, machine and guest kernel digest is reused, and a new
/// answer is kept there. A check that could not start is a failure that is not kept.
pub async fn check_kernel_cached(spec: &KernelCheckSpec, cache_dir: &Path) -> KvmCheck {
    let key = match check_key(spec).await {
        Ok(key) => key,
        Err(e) => return KvmCheck::Fails(format!("the kernel could not be checked: {e}")),
    };
    let file = cache_file(cache_dir, &key);
    if let Ok(text) = std::fs::read_to_string(&file)
        && let Ok(cached) = serde_json::from_str::<CachedCheck>(&text)
        && cached.key == key
    {
        let remembered = format!(
            " (checked {}, remembered in {}: delete it to check again)",
            cached.checked_at,
            file.display()
        );
        tracing::debug!(
            kernel = %spec.kernel.display(),
            file = %file.display(),
            outcome = ?cached.outcome,
            "KVM kernel check remembered"
        );
        return match cached.outcome {
            KvmCheck::Works(how) => KvmCheck::Works(how + &remembered),
            KvmCheck::Fails(why) => KvmCheck::Fails(why + &remembered),
        };
    }
    tracing::debug!(kernel = %spec.kernel.display(), "checking the kernel under KVM");
    let outcome = match check_kernel(spec).await {
        Ok(outcome) => outcome,
        Err(e) => return KvmCheck::Fails(format!("the kernel could not be checked: {e}")),
    };
    tracing::debug!(kernel = %spec.kernel.display(), outcome = ?outcome, "KVM kernel check done");
    let record = CachedCheck {
        key,
        outcome: outcome.clone(),
        checked_at: chrono::Utc::now()
            .format("%Y-%m-%d %H:%M:%S UTC")
            .to_string(),
    };
    // Best effort: a cache that cannot be written only costs a check next time.
    if let Some(dir) = file.parent()
        && std::fs::create_dir_all(dir).is_ok()
        && let Ok(json) = serde_json::to_string_pretty(&record)
    {
        let tmp = dir.join(format!(".tmp-{}", std::process::id()));
        if std::fs::write(&tmp, json).is_ok() && std::fs::rename(&tmp, &file).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn source(mode: AccelMode) -> ResolvedMode {
        ResolvedMode {
            mode,
            source: format!("accel = \"{mode}\" in the runner's settings"),
        }
    }

    #[test]
    fn decision_table() {
        let x86 = Some(Arch::X86_64);
        let dev = Path::new("/dev/kvm");
        let works = || KvmCheck::Works("the kernel printed its `Linux version` banner".into());
        let hangs = || KvmCheck::Fails("the kernel did not print its banner".into());
        let never = || -> KvmCheck { panic!("the kernel check must not run") };
        let d = |m, g, h, device: &KvmDevice, c: &dyn Fn() -> KvmCheck| {
            decide(&source(m), g, h, dev, device, c)
        };
        use AccelMode::{Auto, Kvm, Tcg};
        use KvmDevice::{Missing, Usable};

        // auto: KVM only once the kernel printed its banner, and the reason says so.
        let r = d(Auto, Arch::X86_64, x86, &Usable, &works).unwrap();
        assert_eq!(r.accel, Accel::Kvm);
        assert!(r.reason.contains("banner"), "{}", r.reason);
        // A guest that hangs under KVM falls back, with the reason.
        let r = d(Auto, Arch::X86_64, x86, &Usable, &hangs).unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert!(
            r.reason
                .contains("/dev/kvm opens, but the kernel did not print its banner")
                && r.reason.ends_with("using TCG"),
            "{}",
            r.reason
        );
        // Nothing to check when KVM cannot apply.
        let r = d(Auto, Arch::Aarch64, x86, &Usable, &never).unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert!(r.reason.contains("differs"), "{}", r.reason);
        let r = d(Auto, Arch::X86_64, None, &Usable, &never).unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        let r = d(Auto, Arch::X86_64, x86, &Missing, &never).unwrap();
        assert!(r.reason.contains("/dev/kvm does not exist"), "{}", r.reason);
        let r = d(
            Auto,
            Arch::X86_64,
            x86,
            &KvmDevice::Inaccessible("EACCES".into()),
            &never,
        )
        .unwrap();
        assert!(r.reason.contains("EACCES"), "{}", r.reason);
        // tcg: no check, whoever forced it is named.
        let r = d(Tcg, Arch::X86_64, x86, &Usable, &never).unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert_eq!(
            r.reason,
            "TCG forced by accel = \"tcg\" in the runner's settings"
        );
        // kvm: the kernel check still decides, and a failure is an error naming the fix.
        let e = d(Kvm, Arch::X86_64, x86, &Usable, &hangs)
            .unwrap_err()
            .to_string();
        for part in [
            "KVM was forced by accel = \"kvm\"",
            "did not print its banner",
            "accel = \"auto\"",
            "accel = \"tcg\"",
            "ORCH_ACCEL=tcg",
        ] {
            assert!(e.contains(part), "`{part}` missing from: {e}");
        }
        let r = d(Kvm, Arch::X86_64, x86, &Usable, &works).unwrap();
        assert_eq!(r.accel, Accel::Kvm);
        assert!(r.reason.contains("forced") && r.reason.contains("banner"));
        let e = d(Kvm, Arch::Riscv64, x86, &Usable, &never)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("differs") && e.contains("[qemu.profile.riscv64]"),
            "{e}"
        );
        let e = d(Kvm, Arch::X86_64, x86, &Missing, &never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        // The device path in messages is the one looked at.
        let r = decide(
            &source(Auto),
            Arch::X86_64,
            x86,
            Path::new("/tmp/fake-kvm"),
            &Missing,
            never,
        )
        .unwrap();
        assert!(r.reason.starts_with("/tmp/fake-kvm does not exist"));
    }

    #[test]
    fn the_variable_wins_over_the_profile_which_wins_over_the_runner() {
        use AccelMode::{Auto, Kvm, Tcg};
        let r = |env, profile, config| resolve_mode(env, Arch::X86_64, profile, config);
        // Default.
        let m = r(None, None, Auto).unwrap();
        assert_eq!(m.mode, Auto);
        // [qemu] over the default.
        assert_eq!(r(None, None, Tcg).unwrap().mode, Tcg);
        // The profile over [qemu].
        let m = r(None, Some(Kvm), Tcg).unwrap();
        assert_eq!(m.mode, Kvm);
        assert_eq!(m.source, "accel = \"kvm\" in the x86_64 profile");
        // The variable over everything, in any case; blank means unset.
        let m = r(Some(" TCG "), Some(Kvm), Kvm).unwrap();
        assert_eq!(m.mode, Tcg);
        assert_eq!(m.source, "ORCH_ACCEL=tcg");
        assert_eq!(r(Some("auto"), Some(Tcg), Tcg).unwrap().mode, Auto);
        assert_eq!(r(Some(""), Some(Kvm), Tcg).unwrap().mode, Kvm);
        assert_eq!(r(Some("  "), None, Tcg).unwrap().mode, Tcg);
        // A bad value names the variable and the valid values.
        let e = r(Some("kvmm"), None, Auto).unwrap_err().to_string();
        assert!(
            e.contains("ORCH_ACCEL=kvmm") && e.contains("\"auto\", \"kvm\" or \"tcg\""),
            "{e}"
        );
    }

    #[test]
    fn modes_parse_and_print() {
        for mode in [AccelMode::Auto, AccelMode::Kvm, AccelMode::Tcg] {
            assert_eq!(mode.to_string().parse::<AccelMode>().ok(), Some(mode));
        }
        assert_eq!("KVM".parse::<AccelMode>().ok(), Some(AccelMode::Kvm));
        assert!(
            "hvf"
                .parse::<AccelMode>()
                .unwrap_err()
                .to_string()
                .contains("\"tcg\"")
        );
    }

    #[test]
    fn the_kvm_device_is_looked_at_where_the_config_says() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("kvm");
        assert_eq!(KvmDevice::detect(&missing), KvmDevice::Missing);
        std::fs::write(&missing, b"").unwrap();
        assert_eq!(KvmDevice::detect(&missing), KvmDevice::Usable);
        // A directory exists but does not open read-write.
        assert!(matches!(
            KvmDevice::detect(dir.path()),
            KvmDevice::Inaccessible(_)
        ));
    }

    fn spec(qemu: &Path, kernel: &Path, limit: Duration) -> KernelCheckSpec {
        KernelCheckSpec {
            qemu: qemu.to_owned(),
            arch: Arch::X86_64,
            machine: "q35".into(),
            cpu: "host".into(),
            memory_mib: 256,
            firmware: None,
            console: "ttyS0".into(),
            kernel: kernel.to_owned(),
            limit,
        }
    }

    #[test]
    fn the_check_boots_the_kernel_alone_under_kvm_with_an_early_console() {
        let s = spec(Path::new("qemu"), Path::new("/k"), Duration::from_secs(1));
        let args = s.args().join(" ");
        assert!(
            args.starts_with("-M q35 -accel kvm -cpu host -m 256 "),
            "{args}"
        );
        assert!(args.contains("-chardev stdio,id=con,signal=off -serial chardev:con"));
        assert!(args.ends_with(
            "-kernel /k -append console=ttyS0 earlyprintk=serial,ttyS0,115200 loglevel=8 panic=-1"
        ));
        assert!(!args.contains("quiet") && !args.contains("-initrd"));
        let mut arm = s.clone();
        arm.arch = Arch::Aarch64;
        arm.firmware = Some("/fw.bin".into());
        assert!(
            arm.args()
                .join(" ")
                .contains("-bios /fw.bin -kernel /k -append console=ttyS0 earlycon ")
        );
    }

    /// A stand-in for QEMU: a shell script.
    fn fake_qemu(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-qemu");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
    }

    #[tokio::test]
    async fn a_banner_is_trusted_and_real_mode_text_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, b"kernel").unwrap();
        let pids = dir.path().join("pids");
        // Real-mode text, then the banner; a child of the "QEMU" must die with it.
        let qemu = fake_qemu(
            dir.path(),
            &format!(
                "sleep 300 & echo $! > {}\necho 'Probing EDD (edd=off to disable)... ok'\n\
                 printf '[    0.000000] Linux version 6.1.0 (gcc)\\n'\nwait",
                pids.display()
            ),
        );
        let started = Instant::now();
        let out = check_kernel(&spec(&qemu, &kernel, Duration::from_secs(30)))
            .await
            .unwrap();
        assert!(
            matches!(&out, KvmCheck::Works(how) if how.contains("`Linux version` banner")),
            "{out:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the check waited for nothing"
        );
        let child: u32 = std::fs::read_to_string(&pids)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is delivered asynchronously: give it a moment.
        let killed = Instant::now();
        while alive(child) && killed.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!alive(child), "the check left {child} behind");

        // Real-mode text only, then silence: refused at the limit, the last line quoted.
        let qemu = fake_qemu(
            dir.path(),
            "echo 'Probing EDD (edd=off to disable)... ok'\nexec sleep 300",
        );
        let started = Instant::now();
        let out = check_kernel(&spec(&qemu, &kernel, Duration::from_secs(2)))
            .await
            .unwrap();
        let KvmCheck::Fails(why) = out else {
            panic!("{out:?}")
        };
        assert!(
            why.contains("did not print its `Linux version` banner under KVM within 2 s")
                && why.contains("last console line: `Probing EDD (edd=off to disable)... ok`"),
            "{why}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));

        // QEMU aborting is quoted.
        let qemu = fake_qemu(
            dir.path(),
            "echo 'qemu-system-x86_64: error: failed to set MSR 0x48b to 0x1' >&2\nexit 1",
        );
        let out = check_kernel(&spec(&qemu, &kernel, Duration::from_secs(30)))
            .await
            .unwrap();
        let KvmCheck::Fails(why) = out else {
            panic!("{out:?}")
        };
        assert!(
            why.starts_with("QEMU exited (exit status: 1)") && why.contains("failed to set MSR"),
            "{why}"
        );

        // No QEMU at all: the check could not run.
        let e = check_kernel(&spec(
            &dir.path().join("none"),
            &kernel,
            Duration::from_secs(1),
        ))
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot start"), "{e}");
    }

    #[tokio::test]
    async fn answers_are_remembered_per_kernel_digest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let kernel = dir.path().join("bzImage");
        std::fs::write(&kernel, b"kernel one").unwrap();
        let runs = dir.path().join("runs");
        let qemu = fake_qemu(
            dir.path(),
            &format!(
                "if [ \"$1\" = --version ]; then echo 'QEMU emulator version 9.9.9'; exit 0; fi\n\
                 echo run >> {}\necho 'Linux version 6.1.0'\nexec sleep 300",
                runs.display()
            ),
        );
        let s = spec(&qemu, &kernel, Duration::from_secs(30));
        let count = || {
            std::fs::read_to_string(&runs)
                .unwrap_or_default()
                .lines()
                .count()
        };
        let first = check_kernel_cached(&s, &cache).await;
        assert!(
            matches!(&first, KvmCheck::Works(h) if !h.contains("remembered")),
            "{first:?}"
        );
        assert_eq!(count(), 1);
        let again = check_kernel_cached(&s, &cache).await;
        assert!(
            matches!(&again, KvmCheck::Works(h) if h.contains("remembered in")),
            "{again:?}"
        );
        assert_eq!(count(), 1, "a remembered answer boots nothing");
        // Another kernel (another digest) is checked again.
        std::fs::write(&kernel, b"kernel two").unwrap();
        check_kernel_cached(&s, &cache).await;
        assert_eq!(count(), 2);
        // So is another machine.
        let mut other = s.clone();
        other.machine = "pc".into();
        check_kernel_cached(&other, &cache).await;
        assert_eq!(count(), 3);
        assert_eq!(
            std::fs::read_dir(cache.join("kvm-check")).unwrap().count(),
            3
        );
    }
}
