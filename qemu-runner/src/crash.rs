//! Recognising kernel crashes and warnings in console output.

use orchestrator_core::CrashKind;

/// What a console line says about the kernel's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The kernel crashed or is about to: the test cannot finish.
    Fatal(CrashKind),
    /// Something went wrong but the kernel goes on (an oops in process context, a WARN, an OOM
    /// kill, a lockup report): recorded, and turned into the outcome if the test then dies.
    Serious(CrashKind),
    /// A kernel `WARNING:`.
    Warning,
    /// The kernel is rebooting ([`CrashKind::Reboot`]) or powering off or halting
    /// ([`CrashKind::PowerOff`]).
    Shutdown(CrashKind),
}

/// Classifies one console line (kernel timestamps and prefixes are fine).
pub fn classify(line: &str) -> Option<Signal> {
    // Order matters: "Kernel panic" lines can mention other words below.
    const FATAL: &[(&str, CrashKind)] = &[("Kernel panic - not syncing", CrashKind::KernelPanic)];
    const SERIOUS: &[(&str, CrashKind)] = &[
        ("BUG: soft lockup", CrashKind::Lockup),
        ("Watchdog detected hard LOCKUP", CrashKind::Lockup),
        ("detected stall", CrashKind::RcuStall),
        ("self-detected stall", CrashKind::RcuStall),
        ("blocked for more than", CrashKind::HungTask),
        ("invoked oom-killer", CrashKind::OutOfMemory),
        ("Out of memory: Killed process", CrashKind::OutOfMemory),
        ("Internal error: Oops", CrashKind::Oops),
        ("Oops:", CrashKind::Oops),
        ("BUG: ", CrashKind::Bug),
        ("kernel BUG at", CrashKind::Bug),
    ];
    for (needle, kind) in FATAL {
        if line.contains(needle) {
            return Some(Signal::Fatal(*kind));
        }
    }
    for (needle, kind) in SERIOUS {
        if line.contains(needle) {
            return Some(Signal::Serious(*kind));
        }
    }
    if line.contains("WARNING: CPU:") || line.contains("------------[ cut here ]") {
        return Some(Signal::Warning);
    }
    if line.contains("reboot: Restarting system") {
        return Some(Signal::Shutdown(CrashKind::Reboot));
    }
    if line.contains("reboot: Power down") || line.contains("reboot: System halted") {
        return Some(Signal::Shutdown(CrashKind::PowerOff));
    }
    None
}

/// A piece of kernel configuration that the console shows missing while the guest boots: the
/// boot then fails with an error naming the option rather than a bare crash or boot timeout.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// The kernel found no `/init` and tried to mount a root device ("VFS: Unable to mount root
    /// fs"): it has no initramfs support (`CONFIG_BLK_DEV_INITRD`).
    Initramfs,
    /// The kernel could not unpack the initramfs, for the reason it gave (a missing
    /// decompressor: `CONFIG_RD_GZIP`).
    InitramfsUnpacking(String),
    /// The kernel could not execute `/init`, with this error number (`-8`: no
    /// `CONFIG_BINFMT_SCRIPT` or `CONFIG_BINFMT_ELF`).
    InitExecution(i32),
    /// No init program could run ("No working init found").
    NoInit,
    /// The kernel could not open `/dev/console` for init (`CONFIG_TTY`).
    InitialConsole,
}

impl Missing {
    /// What one console line (timestamps and prefixes are fine) says is missing.
    pub fn recognise(line: &str) -> Option<Missing> {
        if let Some(at) = line.find("Initramfs unpacking failed:") {
            let reason = line[at + "Initramfs unpacking failed:".len()..].trim();
            return Some(Missing::InitramfsUnpacking(reason.to_owned()));
        }
        if line.contains("VFS: Unable to mount root fs")
            || line.contains("VFS: Cannot open root device")
        {
            return Some(Missing::Initramfs);
        }
        // "Failed to execute /init (error -8)"; "Starting init: /init exists but couldn't execute
        // it (error -8)" on newer kernels.
        if line.contains("/init")
            && (line.contains("Failed to execute") || line.contains("couldn't execute"))
        {
            let code = line
                .rsplit_once("(error ")
                .and_then(|(_, rest)| rest.split(')').next())
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            return Some(Missing::InitExecution(code));
        }
        if line.contains("No working init found") {
            return Some(Missing::NoInit);
        }
        if line.contains("unable to open an initial console") {
            return Some(Missing::InitialConsole);
        }
        None
    }

    /// What went wrong and the option that fixes it.
    pub fn explain(&self) -> String {
        const BINFMT: &str = "the agent's /init is a `#!/bin/busybox sh` script and busybox a static ELF program: build the kernel with CONFIG_BINFMT_SCRIPT=y and CONFIG_BINFMT_ELF=y";
        match self {
            Missing::Initramfs => "the kernel has no initramfs support: it found no /init and tried to mount a root device (\"VFS: Unable to mount root fs\"); the runner boots from an initramfs: build the kernel with CONFIG_BLK_DEV_INITRD=y (and CONFIG_RD_GZIP=y)".to_owned(),
            Missing::InitramfsUnpacking(reason) if reason.contains("not configured") => format!(
                "the kernel could not unpack the initramfs (\"{reason}\"): the runner's initramfs is gzip-compressed: build the kernel with CONFIG_RD_GZIP=y"
            ),
            Missing::InitramfsUnpacking(reason) => format!(
                "the kernel could not unpack the initramfs (\"{reason}\"): the runner's initramfs is gzip-compressed (CONFIG_RD_GZIP=y); with that option, give the guest more memory"
            ),
            Missing::InitExecution(-8) => format!("the kernel could not execute /init (error -8, exec format error): {BINFMT}"),
            Missing::InitExecution(code) => format!("the kernel could not execute /init (error {code}): {BINFMT}"),
            Missing::NoInit => format!("no init program could run (\"No working init found\"): {BINFMT}"),
            Missing::InitialConsole => "the kernel could not open /dev/console for init (\"unable to open an initial console\"), which the agent speaks over: build the kernel with CONFIG_TTY=y and the console's driver".to_owned(),
        }
    }
}

/// The kernel options a console device needs, by its kernel name (`ttyS0`, `ttyAMA0`).
pub fn console_options(console: &str) -> Option<&'static str> {
    if console.starts_with("ttyS") {
        Some(
            "CONFIG_SERIAL_8250=y and CONFIG_SERIAL_8250_CONSOLE=y (and CONFIG_SERIAL_OF_PLATFORM=y where the UART is found in the device tree, as on riscv64)",
        )
    } else if console.starts_with("ttyAMA") {
        Some("CONFIG_SERIAL_AMBA_PL011=y and CONFIG_SERIAL_AMBA_PL011_CONSOLE=y")
    } else if console.starts_with("hvc") {
        Some("CONFIG_HVC_DRIVER=y with the hypervisor console's driver built in")
    } else {
        None
    }
}

/// Console lines kept around the lines that triggered a label, for the result's excerpt.
#[derive(Debug, Default)]
pub struct Excerpt {
    recent: std::collections::VecDeque<String>,
    kept: Vec<String>,
    after: usize,
}

impl Excerpt {
    const BEFORE: usize = 5;
    const AFTER: usize = 30;
    const MAX_KEPT: usize = 400;

    /// Feeds a line; `trigger` says whether it triggered a label.
    pub fn line(&mut self, line: &str, trigger: bool) {
        let line: String = line.chars().take(512).collect();
        if trigger && self.kept.len() < Self::MAX_KEPT {
            if self.after == 0 && !self.kept.is_empty() {
                self.kept.push("...".to_owned());
            }
            self.kept.extend(self.recent.drain(..));
            self.kept.push(line);
            self.after = Self::AFTER;
            return;
        }
        if self.after > 0 && self.kept.len() < Self::MAX_KEPT {
            self.kept.push(line);
            self.after -= 1;
            return;
        }
        self.recent.push_back(line);
        if self.recent.len() > Self::BEFORE {
            self.recent.pop_front();
        }
    }

    /// The excerpt, or the last lines seen when nothing triggered.
    pub fn text(&self, fallback_tail: &[String]) -> Option<String> {
        if self.kept.is_empty() {
            if fallback_tail.is_empty() {
                None
            } else {
                Some(fallback_tail.join("\n"))
            }
        } else {
            Some(self.kept.join("\n"))
        }
    }

    /// Whether anything triggered.
    pub fn triggered(&self) -> bool {
        !self.kept.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_usual_suspects() {
        let cases = [
            (
                "[   12.0] Kernel panic - not syncing: sysrq triggered crash",
                Some(Signal::Fatal(CrashKind::KernelPanic)),
            ),
            (
                "[    3.1] Kernel panic - not syncing: Requested init /nope failed (error -2).",
                Some(Signal::Fatal(CrashKind::KernelPanic)),
            ),
            (
                "[    5.0] Internal error: Oops: 96000045 [#1] SMP",
                Some(Signal::Serious(CrashKind::Oops)),
            ),
            (
                "[    5.0] BUG: kernel NULL pointer dereference, address: 0000000000000000",
                Some(Signal::Serious(CrashKind::Bug)),
            ),
            (
                "[   40.0] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]",
                Some(Signal::Serious(CrashKind::Lockup)),
            ),
            (
                "[   60.0] rcu: INFO: rcu_sched self-detected stall on CPU",
                Some(Signal::Serious(CrashKind::RcuStall)),
            ),
            (
                "[    9.0] sh invoked oom-killer: gfp_mask=0x140cca",
                Some(Signal::Serious(CrashKind::OutOfMemory)),
            ),
            (
                "[  120.0] INFO: task sh:55 blocked for more than 120 seconds.",
                Some(Signal::Serious(CrashKind::HungTask)),
            ),
            (
                "[    1.0] WARNING: CPU: 0 PID: 1 at lib/foo.c:12 bar+0x1/0x2",
                Some(Signal::Warning),
            ),
            (
                "[    8.0] reboot: Restarting system",
                Some(Signal::Shutdown(CrashKind::Reboot)),
            ),
            (
                "[    8.0] reboot: Power down",
                Some(Signal::Shutdown(CrashKind::PowerOff)),
            ),
            ("[    0.0] Linux version 6.1.0", None),
        ];
        for (line, expected) in cases {
            assert_eq!(classify(line), expected, "{line}");
        }
    }

    /// Console lines of kernel (a) of the KUnit kernels `cargo xtask test` builds (x86_64,
    /// Debian's linux-source-6.1 6.1.172, see xtask/src/kunit.rs), captured booting it in
    /// QEMU (`-M q35`, `console=ttyS0 quiet panic=-1`) with an initramfs whose `/init` is a text
    /// file (error -8, then no init), and with 4 KiB of random bytes as the initramfs (unpacking
    /// fails, then no root). The initial-console warning is init/main.c's text: a kernel with
    /// initramfs support always has its built-in `/dev/console`, so only a kernel without
    /// `CONFIG_TTY` prints it. Kernel (c) (no initramfs support) gives the same VFS panic
    /// through the runner: see tests/kunit_kernels.rs.
    #[test]
    fn missing_options_are_recognised_from_real_consoles() {
        let cases = [
            (
                "[    1.765316] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
                Some(Missing::Initramfs),
            ),
            (
                "[    0.794448] Initramfs unpacking failed: invalid magic at start of compressed archive",
                Some(Missing::InitramfsUnpacking(
                    "invalid magic at start of compressed archive".into(),
                )),
            ),
            (
                "[    2.388743] Failed to execute /init (error -8)",
                Some(Missing::InitExecution(-8)),
            ),
            (
                "[    2.417776] Kernel panic - not syncing: No working init found.  Try passing init= option to kernel. See Linux Documentation/admin-guide/init.rst for guidance.",
                Some(Missing::NoInit),
            ),
            (
                "[    1.180071] Warning: unable to open an initial console.",
                Some(Missing::InitialConsole),
            ),
            ("[    0.000000] Linux version 6.1.172 (root@host) #1", None),
        ];
        for (line, expected) in cases {
            assert_eq!(Missing::recognise(line), expected, "{line}");
        }
        // Each explanation names the option that fixes it.
        let named = [
            (Missing::Initramfs, "CONFIG_BLK_DEV_INITRD=y"),
            (
                Missing::InitramfsUnpacking("compression method gzip not configured".into()),
                "CONFIG_RD_GZIP=y",
            ),
            (Missing::InitExecution(-8), "CONFIG_BINFMT_SCRIPT=y"),
            (Missing::InitExecution(-13), "CONFIG_BINFMT_ELF=y"),
            (Missing::NoInit, "CONFIG_BINFMT_SCRIPT=y"),
            (Missing::InitialConsole, "CONFIG_TTY=y"),
        ];
        for (missing, option) in named {
            assert!(missing.explain().contains(option), "{missing:?}");
        }
        assert!(
            console_options("ttyS0")
                .unwrap()
                .contains("CONFIG_SERIAL_8250_CONSOLE")
        );
        assert!(
            console_options("ttyAMA0")
                .unwrap()
                .contains("CONFIG_SERIAL_AMBA_PL011_CONSOLE")
        );
        assert_eq!(console_options("ttyXYZ0"), None);
    }

    #[test]
    fn excerpts_keep_context_around_triggers() {
        let mut e = Excerpt::default();
        for i in 0..10 {
            e.line(&format!("line {i}"), false);
        }
        e.line("Kernel panic", true);
        e.line("after 1", false);
        let text = e.text(&[]).unwrap();
        assert!(text.starts_with("line 5\n"), "{text}");
        assert!(text.ends_with("Kernel panic\nafter 1"));
    }
}
