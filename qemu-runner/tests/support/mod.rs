//! What the heavy QEMU tests share: running cases through an orchestrator with one QEMU
//! runner, and finding a result.
#![allow(dead_code, unreachable_pub)]

use orchestrator_core::{
    CancellationToken, Orchestrator, RunConfig, RunReport, TestCase, TestResult,
};
use qemu_runner::{QemuConfig, QemuRunner};

/// Runs `cases` one at a time through an orchestrator with a [`QemuRunner`] of `config`, in a
/// fresh scratch directory, and prints each result (with the environment's `keys`). The
/// directory is returned to keep the result's files; with `ORCH_KEEP_SCRATCH` set it is kept
/// on disk, named on stderr, and `None` is returned.
pub async fn run_cases(
    config: QemuConfig,
    cases: Vec<TestCase>,
    cancel: CancellationToken,
    keys: &[&str],
) -> (RunReport, Option<tempfile::TempDir>) {
    let scratch = tempfile::tempdir().unwrap();
    let report = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(1))
        .with_runner(QemuRunner::new(config))
        .run_with(cases, cancel, |_| {})
        .await
        .expect("valid run");
    for r in &report.results {
        let env: Vec<String> = keys
            .iter()
            .map(|k| format!("{k}={}", r.environment.get(*k).map_or("-", String::as_str)))
            .collect();
        eprintln!(
            "{}: {} [{:.1}s] {} {}",
            r.test_id,
            r.outcome,
            r.duration().as_secs_f64(),
            r.message.as_deref().unwrap_or(""),
            env.join(" ")
        );
    }
    if std::env::var_os("ORCH_KEEP_SCRATCH").is_some() {
        eprintln!("scratch kept: {}", scratch.keep().display());
        return (report, None);
    }
    (report, Some(scratch))
}

/// The result of test `id`: that whole id, else `id@<arch>`.
pub fn by<'a>(report: &'a RunReport, id: &str) -> &'a TestResult {
    report
        .result(id)
        .or_else(|| {
            report
                .results
                .iter()
                .find(|r| r.test_id.as_str().starts_with(&format!("{id}@")))
        })
        .unwrap_or_else(|| panic!("no result for {id}"))
}
