//! KTAP (Kernel TAP) and TAP 13/14 parsing: per-test results of kernel self-tests.
//!
//! The parser lives in [`orchestrator_core::ktap`], so that every runner (the host-process
//! runner too) turns a test's KTAP output into subtests; this module re-exports it, with
//! [`parse`] noting the kernel crashes the QEMU runner recognises on the console ([`crate::crash`])
//! among a report's problems.
//!
//! # Examples
//!
//! ```
//! use qemu_runner::ktap::{self, KtapResult};
//!
//! let report = ktap::parse(
//!     "[    0.371205] KTAP version 1\n\
//!      [    0.371419] 1..1\n\
//!      [    0.372015]     KTAP version 1\n\
//!      [    0.372234]     # Subtest: example\n\
//!      [    0.372660]     1..2\n\
//!      [    0.373617]     ok 1 example_simple_test\n\
//!      [    0.374442]     ok 2 example_skip_test # SKIP this test should be skipped\n\
//!      [    0.375001] Kernel panic - not syncing: Fatal exception\n",
//! );
//! assert!(!report.complete);
//! assert!(report.problems.iter().any(|p| p.contains("kernel crash while tests ran")));
//! // The suite, cut short by the panic, counts as a failure before its cases.
//! let cases = report.flatten();
//! assert_eq!((cases[0].0.as_str(), cases[0].1.result), ("example", KtapResult::Incomplete));
//! assert_eq!(cases[1].0, "example.example_simple_test");
//! assert_eq!(cases[2].1.result, KtapResult::Skip);
//! ```

pub use orchestrator_core::ktap::{
    Counts, Directive, KtapReport, KtapResult, KtapTest, KtapVersion, cases_of, has_version_line,
    kernel_log_problem, subtests, subtests_of, suites, summary,
};

use crate::crash::{self, Signal};

/// Parses (K)TAP output, from a console log or a file, noting the first kernel crash (panic,
/// oops, BUG, lockup, ...) printed while tests ran among the problems. Never panics.
pub fn parse(text: &str) -> KtapReport {
    orchestrator_core::ktap::parse_with_crash_check(text, is_crash)
}

fn is_crash(line: &str) -> bool {
    matches!(
        crash::classify(line),
        Some(Signal::Fatal(_) | Signal::Serious(_))
    )
}
