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
