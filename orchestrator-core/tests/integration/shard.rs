//! A campaign split into shards run separately, then merged.

use std::time::Duration;

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

/// A shard written by a schema-2 worker (its results' subtests never judged) merges with a
/// schema-3 shard; the merge judges them, so a failed KTAP case fails its test.
#[tokio::test]
async fn a_schema_2_shard_with_a_failed_subtest_merges_as_a_failure() {
    use orchestrator_core::{Outcome, Subtest, SubtestStatus};
    let dir = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for k in 1..=2 {
        let p: Partition = format!("{k}/2").parse().unwrap();
        let report = run_shard(dir.path(), "ci-7", p).await;
        let path = dir.path().join(format!("shard{k}.json"));
        report.write_json(&path).unwrap();
        paths.push(path);
    }
    // Shard 1 as an older worker wrote it: schema 2, a passed test beside a failed case.
    let mut old: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&paths[0]).unwrap()).unwrap();
    old["schema_version"] = 2.into();
    old["summary"].as_object_mut().unwrap().remove("subtests");
    let first = &mut old["results"][0];
    let id = first["test_id"].as_str().unwrap().to_owned();
    assert_eq!(first["outcome"]["kind"], "passed");
    first["subtests"] = serde_json::to_value(vec![
        Subtest {
            name: "suite.good".into(),
            status: SubtestStatus::Passed,
            message: None,
            suite: Vec::new(),
            duration: None,
        },
        Subtest {
            name: "suite.bad".into(),
            status: SubtestStatus::Failed,
            message: Some("Expected 1 == 2".into()),
            suite: Vec::new(),
            duration: None,
        },
    ])
    .unwrap();
    std::fs::write(&paths[0], old.to_string()).unwrap();

    let reports: Vec<RunReport> = paths
        .iter()
        .map(|p| RunReport::read_json(p).unwrap())
        .collect();
    assert_eq!(reports[0].schema_version, 2);
    let merged = merge(reports).unwrap();
    assert!(merged.is_complete(), "{merged:#?}");
    let report = &merged.report;
    assert_eq!(report.schema_version, 5);
    let r = report.result(&id).unwrap();
    assert_eq!(
        r.outcome,
        Outcome::SubtestsFailed {
            failed: 1,
            total: 2
        }
    );
    assert!(
        r.message
            .as_deref()
            .unwrap()
            .contains("1 of 2 subtests failed: suite.bad")
    );
    assert_eq!((report.summary.failed, report.summary.passed), (1, 8));
    assert_eq!(report.summary.subtests.failed, 1);
    assert!(!report.is_success());
}

/// Balanced by the durations of an earlier run: every worker computes the same split from the
/// same report, the long tests land on different shards, and the shards merge.
#[tokio::test]
async fn balanced_shards_split_by_an_earlier_runs_durations() {
    use orchestrator_core::shard::{ShardBy, durations_of};
    let dir = tempfile::tempdir().unwrap();
    // Two long tests and four short ones.
    let all: Vec<TestCase> = [("long1", "0.6"), ("long2", "0.6")]
        .into_iter()
        .chain((0..4).map(|_| ("", "0")))
        .enumerate()
        .map(|(i, (name, secs))| {
            let id = if name.is_empty() {
                format!("short{i}")
            } else {
                name.to_owned()
            };
            TestCase::script(&id, &format!("sleep {secs}"))
        })
        .collect();
    let earlier = Orchestrator::new(RunConfig::new(dir.path()))
        .with_runner(ProcessRunner::default())
        .run(all.clone())
        .await
        .unwrap();
    let durations = durations_of(&earlier);
    assert!(durations["long1"] > durations["short2"]);
    let longest_short = durations
        .iter()
        .filter(|(id, _)| id.starts_with("short"))
        .map(|(_, d)| *d)
        .max()
        .unwrap();
    let mut loads = Vec::new();
    let mut reports = Vec::new();
    for k in 1..=2 {
        let p: Partition = format!("{k}/2:balanced").parse().unwrap();
        let share = p.select_balanced(all.clone(), &durations);
        // The same again, as another worker computes it.
        assert_eq!(share, p.select_balanced(all.clone(), &durations));
        let ids: Vec<String> = share.iter().map(|c| c.id.to_string()).collect();
        assert_eq!(
            ids.iter().filter(|id| id.starts_with("long")).count(),
            1,
            "one long test per shard: {ids:?}"
        );
        // Longest first to the least loaded shard: the loads differ by at most the last test
        // the fuller shard got, a short one or (when every short one went to the other) the
        // gap between the long ones. How long `sleep 0` took depends on the host's load, so
        // the counts per shard may differ.
        loads.push(
            ids.iter()
                .map(|id| durations[id.as_str()])
                .sum::<Duration>(),
        );
        let info = p
            .info("ci-7", &all)
            .with_balanced_from(earlier.run_id.clone());
        let config = RunConfig::new(dir.path()).with_shard(info);
        let report = Orchestrator::new(config)
            .with_runner(ProcessRunner::default())
            .run(share)
            .await
            .unwrap();
        let shard = report.shard.as_ref().unwrap();
        assert_eq!(shard.partition.by, ShardBy::Balanced);
        assert_eq!(
            shard.balanced_from.as_deref(),
            Some(earlier.run_id.as_str())
        );
        reports.push(report);
    }
    let gap = loads[0].abs_diff(loads[1]);
    let bound = longest_short.max(durations["long1"].abs_diff(durations["long2"]));
    assert!(gap <= bound, "{loads:?}, {durations:?}");
    let merged = merge(reports.clone()).unwrap();
    assert!(merged.is_complete(), "{merged:#?}");
    assert_eq!(merged.report.summary.passed, 6);
    // A missing balanced shard says how the campaign was split.
    let partial = merge(reports[..1].to_vec()).unwrap();
    let skipped = partial
        .report
        .results
        .iter()
        .find(|r| partial.missing.contains(&r.test_id.to_string()))
        .unwrap();
    assert!(
        skipped.outcome.to_string().contains("2 shards by balanced"),
        "{}",
        skipped.outcome
    );
}
