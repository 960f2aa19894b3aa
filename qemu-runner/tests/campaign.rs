//! The composed orchestrator with real guests: a two-architecture campaign monitored and stored,
//! queried afterwards, then retention ("keep the last run") across a second campaign.
//!
//! Needs QEMU and the provisioned images, which `cargo xtask test` installs.

use std::collections::BTreeSet;
use std::time::Duration;

use orchestrator_core::artifact_store::retention::KeepLastRuns;
use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, Query, TestOutcome};
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{
    Arch, Expectation, Orchestrator, Requirements, RunConfig, RunReport, TestCase,
};
use qemu_runner::{QemuConfig, QemuRunner};

const ARCHS: [Arch; 2] = [Arch::Aarch64, Arch::Riscv64];

fn cases() -> Vec<TestCase> {
    let mut out = Vec::new();
    for arch in ARCHS {
        let mut req = Requirements::default();
        req.arch = Some(arch);
        out.push(
            TestCase::script(
                &format!("files@{arch}"),
                "uname -m > uname.txt; head -c 4096 /dev/urandom > noise.bin",
            )
            .with_requirements(req.clone())
            .with_artifact("uname.txt")
            .with_artifact("noise.bin")
            .with_timeout(Duration::from_secs(120)),
        );
        out.push(
            TestCase::script(&format!("broken@{arch}"), "echo broken >&2; exit 4")
                .with_requirements(req)
                .with_expect(Expectation::Fail)
                .with_timeout(Duration::from_secs(120)),
        );
    }
    out
}

async fn campaign(dir: &std::path::Path) -> RunReport {
    Orchestrator::new(RunConfig::new(dir.join("scratch")).with_parallelism(2))
        .with_runner(QemuRunner::new(QemuConfig::new()))
        .with_store(ArtifactStore::open(dir.join("store")).unwrap())
        .with_monitor(Monitor::new(MonitorConfig::default()))
        .with_retention(KeepLastRuns(1))
        .run(cases())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_stored_two_architecture_campaign_and_keep_last_run_retention() {
    let dir = tempfile::tempdir().unwrap();
    let first = campaign(dir.path()).await;
    assert!(first.is_success(), "{first:#?}");
    let store = ArtifactStore::open(dir.path().join("store")).unwrap();

    // Every test's console log and metrics are in the store, with its outcome and arch.
    for r in &first.results {
        let arch = r.environment["arch"].clone();
        let want = if r.test_id.as_str().starts_with("broken") {
            TestOutcome::Failed
        } else {
            TestOutcome::Passed
        };
        let recs = store
            .query(&Query::new().run(&first.run_id).test(r.test_id.as_str()))
            .unwrap();
        let kinds: BTreeSet<ArtifactKind> = recs.iter().map(|x| x.kind).collect();
        assert!(
            kinds.contains(&ArtifactKind::Console) && kinds.contains(&ArtifactKind::Metrics),
            "{}: {recs:#?}",
            r.test_id
        );
        for x in &recs {
            assert_eq!(x.outcome, Some(want), "{x:#?}");
            assert_eq!(x.arch.as_deref(), Some(arch.as_str()), "{x:#?}");
        }
        // The result links each of its files to its record; the result itself is one more.
        assert_eq!(recs.len(), r.artifacts.len() + 1, "{:#?}", r.artifacts);
        let usage = r
            .resources
            .as_ref()
            .expect("the QEMU process was monitored");
        assert!(
            usage.cpu_seconds > 0.1 && usage.peak_rss_bytes > 10 << 20,
            "{usage:#?}"
        );
        // The per-process breakdown names the QEMU process (its comm, cut to 15 bytes), and
        // the network figures are labelled as the namespace's.
        let qemu = &usage.top_cpu[0];
        assert!(qemu.name.starts_with("qemu-system"), "{:#?}", usage.top_cpu);
        assert!(qemu.command.contains("qemu-system"), "{qemu:#?}");
        assert!(
            usage.top_memory.iter().any(|p| p.pid == qemu.pid),
            "{usage:#?}"
        );
        let net = usage.network.as_ref().expect("network figures");
        assert!(net.label().contains("not the test's alone"), "{net:#?}");
    }
    // The collected files are byte-exact in the store.
    let files = first.result("files@aarch64").unwrap();
    let uname = files
        .artifacts
        .iter()
        .find(|a| a.name == "files/uname.txt")
        .unwrap();
    let content = store.get(&uname.stored.as_ref().unwrap().id).unwrap();
    assert_eq!(content, b"aarch64\n");

    // A second campaign with "keep the last run": the first run's records are evicted and its
    // blobs gone, except those the second run shares (identical content); the second's remain.
    let second = campaign(dir.path()).await;
    assert!(second.is_success(), "{second:#?}");
    let retention = second.storage.as_ref().unwrap().retention.as_ref().unwrap();
    assert!(retention.records_evicted > 0, "{retention:#?}");
    let live: BTreeSet<String> = store
        .query(&Query::new().run(&second.run_id))
        .unwrap()
        .iter()
        .map(|r| r.digest.to_hex())
        .collect();
    let mut gone = 0;
    for r in &first.results {
        for a in &r.artifacts {
            let s = a.stored.as_ref().unwrap();
            assert!(store.record_of(&s.id).unwrap().evicted.is_some(), "{a:#?}");
            let on_disk = store.has_blob(&s.digest.parse().unwrap()).unwrap();
            assert_eq!(on_disk, live.contains(&s.digest), "{a:#?}");
            gone += usize::from(!on_disk);
        }
    }
    // Console logs and random files differ between runs, so most of the first run is gone.
    assert!(gone >= first.results.len() * 2, "only {gone} blobs removed");
    for r in &second.results {
        for a in &r.artifacts {
            store.get(&a.stored.as_ref().unwrap().id).unwrap();
        }
    }
    assert!(store.verify(Default::default()).unwrap().is_clean());
}
