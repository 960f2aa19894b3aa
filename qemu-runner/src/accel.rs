//! Choosing the accelerator: KVM only when it really works, TCG otherwise, always with a reason.
//!
//! Opening `/dev/kvm` is not enough: with broken nested virtualisation the device opens, and
//! then QEMU aborts under `-cpu host` ("failed to set MSR") or the guest hangs. So the runner
//! probes: a tiny guest (16 bytes of real-mode code at the x86 reset vector that writes one
//! byte to the serial port) must run under KVM within a bounded time. The answer is cached per
//! host, QEMU version and host kernel.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use orchestrator_core::Arch;
use serde::{Deserialize, Serialize};

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

/// The state of `/dev/kvm`.
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
    /// Looks at this host's `/dev/kvm`.
    pub fn detect() -> Self {
        let path = Path::new("/dev/kvm");
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

/// The result of a probe boot under KVM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeOutcome {
    /// A guest ran under KVM.
    Works,
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

/// The decision table. `probe` is called only when everything else allows KVM.
///
/// Errors only when KVM is forced and cannot work.
pub fn decide(
    mode: AccelMode,
    guest: Arch,
    host: Option<Arch>,
    device: &KvmDevice,
    probe: impl FnOnce() -> ProbeOutcome,
) -> Result<AccelDecision, String> {
    let tcg = |reason: String| AccelDecision {
        accel: Accel::Tcg,
        reason,
    };
    if mode == AccelMode::Tcg {
        return Ok(tcg("TCG forced by configuration".into()));
    }
    let blocker = if host != Some(guest) {
        Some(format!(
            "guest architecture {guest} differs from the host's ({})",
            host.map_or_else(|| std::env::consts::ARCH.to_owned(), |h| h.to_string())
        ))
    } else {
        match device {
            KvmDevice::Missing => Some("/dev/kvm does not exist".to_owned()),
            KvmDevice::Inaccessible(e) => Some(format!("/dev/kvm cannot be opened: {e}")),
            KvmDevice::Usable => match probe() {
                ProbeOutcome::Works => None,
                ProbeOutcome::Fails(why) => Some(format!(
                    "/dev/kvm opens but a probe guest did not run: {why}"
                )),
            },
        }
    };
    match (blocker, mode) {
        (None, _) => Ok(AccelDecision {
            accel: Accel::Kvm,
            reason: "KVM probe guest ran".into(),
        }),
        (Some(why), AccelMode::Kvm) => Err(format!(
            "KVM was forced but cannot be used: {why}; use accel = \"auto\" or \"tcg\""
        )),
        (Some(why), _) => Ok(tcg(format!("{why}; using TCG"))),
    }
}

/// The probe guest: 64 KiB of firmware whose reset vector writes `K` to the first serial port
/// and halts.
fn probe_firmware() -> Vec<u8> {
    let mut image = vec![0xF4u8; 64 * 1024]; // hlt everywhere
    let code = [
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'K', // mov al, 'K'
        0xEE, // out dx, al
        0xF4, // hlt
        0xEB, 0xFD, // jmp back to hlt
    ];
    image[0xFFF0..0xFFF0 + code.len()].copy_from_slice(&code);
    image
}

/// Runs the probe guest with `accel` (`kvm` or `tcg`, the latter as a control) and the given
/// CPU model, within `limit`.
pub async fn probe_x86(qemu: &Path, accel: &str, cpu: &str, limit: Duration) -> ProbeOutcome {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return ProbeOutcome::Fails(format!("cannot create a temporary directory: {e}")),
    };
    let fw = dir.path().join("probe.bin");
    if let Err(e) = std::fs::write(&fw, probe_firmware()) {
        return ProbeOutcome::Fails(format!("cannot write {}: {e}", fw.display()));
    }
    let mut cmd = tokio::process::Command::new(qemu);
    cmd.args([
        "-M",
        "q35",
        "-accel",
        accel,
        "-cpu",
        cpu,
        "-m",
        "16",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-bios")
    .arg(&fw)
    .args(["-serial", "stdio", "-monitor", "none"])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return ProbeOutcome::Fails(format!("cannot start {}: {e}", qemu.display())),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let result = tokio::time::timeout(limit, async {
        use tokio::io::AsyncReadExt;
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) if buf[..n].contains(&b'K') => return true,
                Ok(_) => {}
            }
        }
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    match result {
        Ok(true) => ProbeOutcome::Works,
        Ok(false) => {
            use tokio::io::AsyncReadExt;
            let mut err = Vec::new();
            let _ = (&mut stderr).take(4096).read_to_end(&mut err).await;
            let err = String::from_utf8_lossy(&err);
            let err = err.trim();
            ProbeOutcome::Fails(format!(
                "QEMU exited without running the guest{}",
                if err.is_empty() {
                    String::new()
                } else {
                    format!(": {err}")
                }
            ))
        }
        Err(_) => ProbeOutcome::Fails(format!(
            "the guest did not run within {:.1} s (a hung vCPU: nested virtualisation is probably unavailable)",
            started.elapsed().as_secs_f64()
        )),
    }
}

/// A cached probe result.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProbeCache {
    key: String,
    outcome: ProbeOutcome,
}

/// What identifies the host for caching: QEMU's version, the host kernel, the CPU model.
async fn host_key(qemu: &Path) -> String {
    let qemu_version = tokio::process::Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    format!("{}|{}|{}", qemu_version.trim(), kernel.trim(), cpu.trim())
}

/// Probes KVM on this host with `qemu` (an x86_64 system emulator), reusing a cached answer in
/// `cache_file` when the host key matches.
pub async fn probe_kvm_cached(qemu: &Path, cache_file: Option<&PathBuf>) -> ProbeOutcome {
    if Arch::host() != Some(Arch::X86_64) {
        return ProbeOutcome::Fails(format!(
            "no KVM probe guest for {} hosts yet",
            std::env::consts::ARCH
        ));
    }
    let key = host_key(qemu).await;
    if let Some(file) = cache_file
        && let Ok(text) = std::fs::read_to_string(file)
        && let Ok(cached) = serde_json::from_str::<ProbeCache>(&text)
        && cached.key == key
    {
        return cached.outcome;
    }
    let outcome = probe_x86(qemu, "kvm", "host", Duration::from_secs(5)).await;
    if let Some(file) = cache_file {
        if let Some(parent) = file.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::write(
            file,
            serde_json::to_string(&ProbeCache {
                key,
                outcome: outcome.clone(),
            })
            .unwrap_or_default(),
        );
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn works() -> ProbeOutcome {
        ProbeOutcome::Works
    }

    #[test]
    fn decision_table() {
        let x86 = Some(Arch::X86_64);
        let fails = || ProbeOutcome::Fails("hung".into());
        let never = || -> ProbeOutcome { panic!("the probe must not run") };
        // (mode, guest, host, device, probe) -> accel or error
        let d = |m, g, h, dev: &KvmDevice, p: &dyn Fn() -> ProbeOutcome| decide(m, g, h, dev, p);
        assert_eq!(
            d(
                AccelMode::Auto,
                Arch::X86_64,
                x86,
                &KvmDevice::Usable,
                &works
            )
            .unwrap()
            .accel,
            Accel::Kvm
        );
        let r = d(
            AccelMode::Auto,
            Arch::X86_64,
            x86,
            &KvmDevice::Usable,
            &fails,
        )
        .unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert!(
            r.reason.contains("probe guest did not run: hung"),
            "{}",
            r.reason
        );
        let r = d(
            AccelMode::Auto,
            Arch::Aarch64,
            x86,
            &KvmDevice::Usable,
            &never,
        )
        .unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert!(r.reason.contains("differs"));
        let r = d(
            AccelMode::Auto,
            Arch::X86_64,
            x86,
            &KvmDevice::Missing,
            &never,
        )
        .unwrap();
        assert!(r.reason.contains("does not exist"));
        let r = d(
            AccelMode::Auto,
            Arch::X86_64,
            x86,
            &KvmDevice::Inaccessible("EACCES".into()),
            &never,
        )
        .unwrap();
        assert!(r.reason.contains("EACCES"));
        let r = d(
            AccelMode::Tcg,
            Arch::X86_64,
            x86,
            &KvmDevice::Usable,
            &never,
        )
        .unwrap();
        assert_eq!(r.accel, Accel::Tcg);
        assert!(r.reason.contains("forced"));
        let e = d(
            AccelMode::Kvm,
            Arch::X86_64,
            x86,
            &KvmDevice::Usable,
            &fails,
        )
        .unwrap_err();
        assert!(e.contains("forced") && e.contains("hung"));
        assert_eq!(
            d(
                AccelMode::Kvm,
                Arch::X86_64,
                x86,
                &KvmDevice::Usable,
                &works
            )
            .unwrap()
            .accel,
            Accel::Kvm
        );
        assert!(
            d(
                AccelMode::Kvm,
                Arch::Riscv64,
                x86,
                &KvmDevice::Usable,
                &never
            )
            .is_err()
        );
    }

    #[test]
    fn the_probe_firmware_has_its_code_at_the_reset_vector() {
        let fw = probe_firmware();
        assert_eq!(fw.len(), 65536);
        assert_eq!(&fw[0xFFF0..0xFFF3], &[0xBA, 0xF8, 0x03]);
    }
}
