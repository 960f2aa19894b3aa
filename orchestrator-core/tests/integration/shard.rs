//! A campaign split into shards run separately, then merged.

use orchestrator_core::shard::{MergeError, Partition, merge};
use orchestrator_core::{Orchestrator, ProcessRunner, RunConfig, RunReport, TestCase};

fn campaign() -> Vec<TestCase> {
    (0..9)
        .map(|i| TestCase::script(&format!("t{i}"), &format!("echo {i}")))
        .collect()
}

async fn run_shard(dir: &std::path::Path, campaign_id: &str, p: Partition) -> RunReport {
    let all = campaign();
    let config = RunConfig::new(dir).with_shard(p.info(campaign_id, &all));
    Orchestrator::new(config)
        .with_runner(ProcessRunner::default())
        .run(p.select(all))
        .await
        .unwrap()
}

#[tokio::test]
async fn three_shards_merge_into_exactly_the_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let mut reports = Vec::new();
    for k in 1..=3 {
        let p: Partition = format!("{k}/3").parse().unwrap();
        reports.push(run_shard(dir.path(), "ci-42", p).await);
    }
    // Written and read back, as workers hand them over.
    let mut read = Vec::new();
    for (i, r) in reports.iter().enumerate() {
        let path = dir.path().join(format!("shard{i}.json"));
        r.write_json(&path).unwrap();
        read.push(RunReport::read_json(&path).unwrap());
    }
    let merged = merge(read).unwrap();
    assert!(merged.is_complete(), "{merged:#?}");
    let ids: Vec<&str> = merged
        .report
        .results
        .iter()
        .map(|r| r.test_id.as_str())
        .collect();
    let want: Vec<String> = campaign().iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, want, "the campaign's order");
    assert_eq!(merged.report.summary.passed, 9);
    for (i, r) in merged.report.results.iter().enumerate() {
        assert_eq!(r.stdout.text, format!("{i}\n"));
    }

    // A shard missing: its tests are flagged (and reported as skipped, saying why).
    let partial = merge(reports[..2].to_vec()).unwrap();
    assert!(!partial.is_complete());
    assert_eq!(partial.missing_shards, vec![3]);
    assert_eq!(partial.missing.len(), reports[2].results.len());
    assert_eq!(partial.report.results.len(), 9);
    assert!(!partial.report.is_success() || partial.report.summary.skipped > 0);

    // The same shard twice, another campaign, an unsharded report: refused.
    let twice = merge(vec![reports[0].clone(), reports[0].clone()]).unwrap_err();
    assert!(matches!(twice, MergeError::ShardTwice { .. }), "{twice}");
    let other = run_shard(dir.path(), "ci-43", "3/3".parse().unwrap()).await;
    let e = merge(vec![reports[0].clone(), other])
        .unwrap_err()
        .to_string();
    assert!(e.contains("ci-43") && e.contains("ci-42"), "{e}");
    let plain = Orchestrator::new(RunConfig::new(dir.path()))
        .with_runner(ProcessRunner::default())
        .run(campaign())
        .await
        .unwrap();
    let e = merge(vec![plain]).unwrap_err();
    assert!(matches!(e, MergeError::NotSharded { .. }), "{e}");

    // Duplicated: a shard that ran a test that was not its own is flagged.
    let mut dup = reports[1].clone();
    dup.results.push(reports[0].results[0].clone());
    let merged = merge(vec![reports[0].clone(), dup, reports[2].clone()]).unwrap();
    assert_eq!(
        merged.duplicated,
        vec![reports[0].results[0].test_id.to_string()]
    );
}
