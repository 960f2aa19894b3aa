//! One test in an aarch64 guest with the composed orchestrator: monitored, its console log,
//! kernel log and metrics kept in an artifact store, and a summary.
use orchestrator_core::artifact_store::ArtifactStore;
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{Arch, Orchestrator, RunConfig, TestCase, report};
use qemu_runner::{QemuConfig, QemuRunner};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hello = TestCase::script("hello", "uname -a").with_arch(Arch::Aarch64);
    let report = Orchestrator::new(RunConfig::new("/tmp/embed-example/scratch"))
        .with_runner(QemuRunner::new(QemuConfig::new()))
        .with_store(ArtifactStore::open("/tmp/embed-example/store")?)
        .with_monitor(Monitor::new(MonitorConfig::default()))
        .run(vec![hello])
        .await?;
    print!("{}", report::summary_table(&report, false));
    std::process::exit(if report.is_success() { 0 } else { 1 });
}
