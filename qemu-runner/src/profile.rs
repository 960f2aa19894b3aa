//! Machine profiles: how to start QEMU for each architecture, as serde data users can override.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use orchestrator_core::Arch;
use serde::{Deserialize, Serialize};

use crate::accel::{Accel, AccelMode};

/// How to boot one architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[non_exhaustive]
pub struct MachineProfile {
    /// The guest architecture.
    pub arch: Arch,
    /// The QEMU binary: a name looked up in `PATH`, or a path.
    pub qemu: String,
    /// `-M` value.
    pub machine: String,
    /// `-cpu` value under TCG.
    pub cpu_tcg: String,
    /// `-cpu` value under KVM.
    pub cpu_kvm: String,
    /// The kernel's name for the console device (`ttyS0`, `ttyAMA0`).
    pub console: String,
    /// Firmware (`-bios`) candidates; the first that exists is used. Empty: none needed.
    #[serde(default)]
    pub firmware: Vec<PathBuf>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Guest CPUs.
    pub cpus: u32,
    /// Extra QEMU arguments.
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// A display device (`VGA`, `bochs-display`, `ramfb`, `virtio-gpu-device`...): when set,
    /// the runner takes a PNG screenshot through QMP at the end of each test (and when it fails
    /// with the machine still up). Default: none (no display, a little faster).
    #[serde(default)]
    pub display: Option<String>,
    /// The virtio-serial controller for the artifact channel (`virtio-serial-pci` on PCI
    /// machines, `virtio-serial-device` on virtio-mmio ones).
    #[serde(default)]
    pub virtio_serial: String,
    /// Kernel modules the guest needs for that channel (built-in ones are skipped).
    #[serde(default)]
    pub channel_modules: Vec<String>,
    /// QEMU devices added when a test keeps a vmcore on panic: a panic device (`pvpanic` on
    /// x86_64; QEMU then pauses the guest at the panic) and `vmcoreinfo` (the kernel's
    /// VMCOREINFO note in the dump, which crash and drgn use).
    #[serde(default)]
    pub vmcore_devices: Vec<String>,
    /// Kernel modules loaded at boot for those devices (`pvpanic_mmio`, `qemu_fw_cfg`); left
    /// out when the kernel has no module tree (a kernel of its own may have them built in).
    #[serde(default)]
    pub vmcore_modules: Vec<String>,
    /// Extra kernel command-line arguments.
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// x86_64: boot a `bzImage` through its PVH entry point, its `vmlinux` unpacked once on
    /// the host ([`crate::pvh`]), instead of letting the guest decompress it (seconds under
    /// TCG). A kernel without a PVH entry, or compressed otherwise than xz, gzip or zstd,
    /// boots as it is. Default: off (on in the built-in x86_64 profile).
    #[serde(default)]
    pub unpack_kernel: bool,
    /// Boot deadline with KVM; under TCG it is multiplied by `tcg_multiplier`.
    #[serde(with = "secs")]
    pub boot_timeout: Duration,
    /// How much slower everything is under emulation; applied to boot deadlines (test timeouts
    /// are the test author's and are not scaled).
    pub tcg_multiplier: f64,
    /// The accelerator choice for this architecture; `None` leaves it to
    /// [`crate::QemuConfig::accel`]. The `ORCH_ACCEL` environment variable wins over both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<AccelMode>,
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

impl MachineProfile {
    /// The built-in profile for `arch`.
    ///
    /// Chosen from what was measured on a 2-core TCG host with stock Debian kernels: x86_64
    /// `q35` booting the kernel's vmlinux through its PVH entry ([`crate::pvh`]: the guest's
    /// own decompression of the bzImage was most of the boot), trusting its TSC (the host's
    /// under TCG). Every architecture boots without the crypto self-tests
    /// (`cryptomgr.notests`: a fifth to a quarter of the boot on the others).
    /// Not `microvm`: it has no HPET or PM timer, so the kernel can only calibrate its TSC
    /// against the PIT, which fails under TCG when the host is loaded; the TSC is then marked
    /// unstable, the clock is jiffies alone and the boot stalls with time standing still.
    /// aarch64 and armv7 `virt` with cortex-a57 / cortex-a15 (matching KUnit and TuxRun),
    /// riscv64 `virt` with OpenSBI. One CPU by default so that several guests share a small host well.
    pub fn builtin(arch: Arch) -> Self {
        let base = |qemu: &str, machine: &str, cpu_tcg: &str, console: &str| MachineProfile {
            arch,
            qemu: qemu.to_owned(),
            machine: machine.to_owned(),
            cpu_tcg: cpu_tcg.to_owned(),
            cpu_kvm: "host".to_owned(),
            console: console.to_owned(),
            firmware: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            extra_args: Vec::new(),
            display: None,
            virtio_serial: "virtio-serial-device".to_owned(),
            channel_modules: vec!["virtio_mmio".to_owned(), "virtio_console".to_owned()],
            vmcore_devices: Vec::new(),
            vmcore_modules: Vec::new(),
            // The crypto self-tests are a large share of the kernel's own boot under TCG
            // (the boot phase, QEMU start to the agent ready, medians of 5: aarch64
            // 1.75 → 1.43 s, armv7 4.80 → 3.57 s, riscv64 2.71 → 2.15 s; on x86_64 half of
            // the kernel's own work).
            kernel_args: vec!["quiet".to_owned(), "cryptomgr.notests".to_owned()],
            unpack_kernel: false,
            boot_timeout: Duration::from_secs(20),
            tcg_multiplier: 5.0,
            accel: None,
        };
        match arch {
            Arch::X86_64 => {
                let mut p = base("qemu-system-x86_64", "q35", "max", "ttyS0");
                p.virtio_serial = "virtio-serial-pci".to_owned();
                p.channel_modules = vec!["virtio_pci".to_owned(), "virtio_console".to_owned()];
                p.vmcore_devices = vec!["pvpanic".to_owned(), "vmcoreinfo".to_owned()];
                p.vmcore_modules = vec!["pvpanic_mmio".to_owned(), "qemu_fw_cfg".to_owned()];
                p.unpack_kernel = true;
                p.kernel_args
                    .extend(["tsc=reliable", "no_timer_check"].map(str::to_owned));
                p
            }
            Arch::Aarch64 => {
                // Debian's arm64 kernel has no pvpanic driver: the kernel waits at the panic
                // (`panic=0`) and the runner stops the guest when the console shows it.
                let mut p = base("qemu-system-aarch64", "virt", "cortex-a57", "ttyAMA0");
                p.vmcore_devices = vec!["vmcoreinfo".to_owned()];
                p.vmcore_modules = vec!["qemu_fw_cfg".to_owned()];
                p
            }
            Arch::Armv7 => base("qemu-system-arm", "virt", "cortex-a15", "ttyAMA0"),
            Arch::Riscv64 => {
                let mut p = base("qemu-system-riscv64", "virt", "rv64", "ttyS0");
                p.firmware = vec![
                    "/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin".into(),
                    "/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin".into(),
                ];
                p
            }
            _ => base("qemu-system-unknown", "none", "max", "ttyS0"),
        }
    }

    /// Every built-in profile.
    pub fn builtins() -> BTreeMap<Arch, MachineProfile> {
        Arch::ALL
            .into_iter()
            .map(|a| (a, Self::builtin(a)))
            .collect()
    }

    /// The boot deadline for the accelerator the guest actually runs with: `boot_timeout`
    /// under KVM, `tcg_multiplier` times as long under TCG (also when KVM was asked for but
    /// refused).
    pub fn boot_timeout_for(&self, accel: Accel) -> Duration {
        match accel {
            Accel::Kvm => self.boot_timeout,
            Accel::Tcg => self.boot_timeout.mul_f64(self.tcg_multiplier.max(1.0)),
        }
    }

    /// Finds the QEMU binary, or says how to get it.
    pub fn find_qemu(&self) -> Result<PathBuf, ProfileError> {
        find_program(&self.qemu).ok_or_else(|| ProfileError::QemuNotFound {
            qemu: self.qemu.clone(),
            arch: self.arch,
        })
    }

    /// Finds the firmware, if the profile needs one, or says how to get it.
    pub fn find_firmware(&self) -> Result<Option<PathBuf>, ProfileError> {
        if self.firmware.is_empty() {
            return Ok(None);
        }
        match self.firmware.iter().find(|p| p.is_file()) {
            Some(p) => Ok(Some(p.clone())),
            None => Err(ProfileError::FirmwareNotFound {
                arch: self.arch,
                looked_for: self.firmware.clone(),
            }),
        }
    }
}

/// Why a profile's QEMU binary or firmware cannot be used; each message names the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    /// The QEMU binary is not installed (or not executable).
    #[error(
        "QEMU binary `{qemu}` for {arch} was not found: install it (`cargo xtask test` installs qemu-system-x86, qemu-system-arm and qemu-system-misc) or set `qemu` in the {arch} profile"
    )]
    QemuNotFound {
        /// The binary, as the profile names it.
        qemu: String,
        /// The profile's architecture.
        arch: Arch,
    },
    /// None of the profile's firmware files exists.
    #[error(
        "firmware for {arch} not found (looked for {}): install qemu-system-misc or opensbi, or set `firmware` in the {arch} profile",
        looked_for.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    FirmwareNotFound {
        /// The profile's architecture.
        arch: Arch,
        /// The files looked for.
        looked_for: Vec<PathBuf>,
    },
}

/// Finds an executable the way a shell does: a name with a `/` as given, any other in `PATH`;
/// only executable files count. The one program lookup of this crate (QEMU, apt, dpkg-deb).
/// A name with a `/` comes back as given (relative stays relative), as the command line shows it.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let found = which::which(name).ok()?;
    Some(if name.contains('/') {
        PathBuf::from(name)
    } else {
        found
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_cover_every_arch_and_round_trip_through_serde() {
        let all = MachineProfile::builtins();
        assert_eq!(all.len(), 4);
        for p in all.values() {
            let json = serde_json::to_string(p).unwrap();
            let back: MachineProfile = serde_json::from_str(&json).unwrap();
            assert_eq!(&back, p);
        }
        assert_eq!(all[&Arch::Aarch64].console, "ttyAMA0");
        assert!(!all[&Arch::Riscv64].firmware.is_empty());
    }

    #[test]
    fn users_can_override_fields() {
        let mut v = serde_json::to_value(MachineProfile::builtin(Arch::Armv7)).unwrap();
        v["memory-mib"] = 1024.into();
        v["extra-args"] = serde_json::json!(["-device", "virtio-rng-device"]);
        let p: MachineProfile = serde_json::from_value(v).unwrap();
        assert_eq!(p.memory_mib, 1024);
        assert_eq!(p.extra_args.len(), 2);
        let mut bad = serde_json::to_value(MachineProfile::builtin(Arch::Armv7)).unwrap();
        bad["memroy-mib"] = 1.into();
        let err = serde_json::from_value::<MachineProfile>(bad).unwrap_err();
        assert!(err.to_string().contains("memroy-mib"));
    }

    #[test]
    fn boot_deadlines_follow_the_accelerator_used() {
        let mut p = MachineProfile::builtin(Arch::X86_64);
        p.boot_timeout = Duration::from_secs(20);
        p.tcg_multiplier = 5.0;
        assert_eq!(p.boot_timeout_for(Accel::Kvm), Duration::from_secs(20));
        assert_eq!(p.boot_timeout_for(Accel::Tcg), Duration::from_secs(100));
        // A multiplier below 1 never shortens emulation's deadline.
        p.tcg_multiplier = 0.5;
        assert_eq!(p.boot_timeout_for(Accel::Tcg), Duration::from_secs(20));
        // A profile's accel round-trips, and is left out when unset.
        p.accel = Some(AccelMode::Tcg);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["accel"], "tcg");
        assert_eq!(serde_json::from_value::<MachineProfile>(json).unwrap(), p);
        let builtin = serde_json::to_value(MachineProfile::builtin(Arch::X86_64)).unwrap();
        assert!(builtin.get("accel").is_none());
    }

    #[test]
    fn programs_are_found_in_path_or_as_given() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute()));
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, b"").unwrap();
        assert_eq!(find_program(plain.to_str().unwrap()), None);
    }

    #[test]
    fn missing_binaries_and_firmware_name_the_fix() {
        let mut p = MachineProfile::builtin(Arch::Riscv64);
        p.qemu = "qemu-system-nonexistent".into();
        assert!(p.find_qemu().unwrap_err().to_string().contains("install"));
        p.firmware = vec!["/nonexistent/fw.bin".into()];
        let err = p.find_firmware().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/fw.bin") && err.contains("opensbi"));
    }
}
