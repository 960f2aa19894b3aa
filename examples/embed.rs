//! A harness using the library directly: two tests, one expected to fail, and a summary.
use orchestrator_core::{Expectation, Orchestrator, ProcessRunner, RunConfig, TestCase, report};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cases = vec![
        TestCase::script("kernel-version", "uname -r"),
        TestCase::script("known-bug", "exit 1").with_expect(Expectation::Fail),
    ];
    let orchestrator =
        Orchestrator::new(RunConfig::new(std::env::temp_dir().join("embed-example")))
            .with_runner(ProcessRunner::default());
    let report = orchestrator.run(cases).await?;
    print!("{}", report::summary_table(&report, false));
    std::process::exit(if report.is_success() { 0 } else { 1 });
}
