//! End-to-end tests of `qorch runs`, `history`, `compare`, `export-kcidb`, `run --kcidb` and
//! balanced partitions, on the store of real host-process campaigns.

use std::path::Path;
use std::process::Output;

mod support;
use support::{json, qorch, text, write_plan};

/// `qorch run PLAN --out OUT ...`: the run id.
fn run(plan: &Path, out: &Path, extra: &[&str]) -> String {
    let output = qorch()
        .arg("run")
        .arg(plan)
        .arg("--out")
        .arg(out)
        .args(["--progress", "quiet"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    json(&out.join("latest/report.json"))["run_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn qorch_out(args: &[&str]) -> Output {
    qorch().args(args).output().unwrap()
}

/// A test burning `loops` iterations of a shell loop and holding `mib` MiB (twice over, in a
/// shell variable: long enough for the monitor to see it) at its peak.
fn burn_plan(loops: u32, mib: u32) -> String {
    format!(
        "name = \"burn\"\n[[test]]\nid = \"burn\"\nscript = '''\n\
         i=0; while [ $i -lt {loops} ]; do i=$((i+1)); done\n\
         x=$(head -c {mib}M /dev/zero | tr '\\0' a); sleep 0.3; echo ${{#x}}\n'''\n"
    )
}

/// `compare` exits 1 when a test burns twice the CPU time and memory (three runs per side),
/// 0 for three and three runs of the same work; `history` shows the test's six results and
/// `runs` the six runs.
#[test]
fn compare_flags_a_doubled_cost_and_passes_the_same_work() {
    let dir = tempfile::tempdir().unwrap();
    let base = write_plan(dir.path(), "base.toml", &burn_plan(200_000, 32));
    let doubled = write_plan(dir.path(), "doubled.toml", &burn_plan(400_000, 64));
    let out = dir.path().join("out");
    let store = out.join("store");
    // The runs of the same work alternate, so that the host's load (other tests running beside
    // this one) weighs on both sides alike.
    let (mut before, mut same) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        before.push(run(&base, &out, &[]));
        same.push(run(&base, &out, &[]));
    }
    let after: Vec<String> = (0..3).map(|_| run(&doubled, &out, &[])).collect();
    let store_arg = store.to_str().unwrap();

    let compare = |a: &[String], b: &[String]| {
        let o = qorch_out(&[
            "compare",
            &a.join(","),
            &b.join(","),
            "--store",
            store_arg,
            // Run ids of the store only: no `<out>/runs` to find them in.
            "--out",
            "/nonexistent",
        ]);
        (o.status.code(), text(&o.stdout), text(&o.stderr))
    };
    let (code, stdout, stderr) = compare(&before, &after);
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("Noise band:"), "{stdout}");
    assert!(stdout.contains("REGRESSION"), "{stdout}");
    let (code, stdout, stderr) = compare(&before, &same);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("no regression"), "{stdout}");
    // A run directory and a report.json name runs too.
    let o = qorch_out(&[
        "compare",
        out.join("runs").join(&before[0]).to_str().unwrap(),
        out.join("runs")
            .join(&after[0])
            .join("report.json")
            .to_str()
            .unwrap(),
        "--json",
    ]);
    let c: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(c.is_object(), "{c}");
    // An unknown run is a clear error.
    let o = qorch_out(&["compare", "nope", &after[0], "--store", store_arg]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("no such run `nope`"),
        "{}",
        text(&o.stderr)
    );

    let o = qorch_out(&["history", "burn", "--store", store_arg, "--limit", "0"]);
    let said = text(&o.stdout);
    assert!(o.status.success(), "{said}{}", text(&o.stderr));
    for id in before.iter().chain(&same).chain(&after) {
        assert!(said.contains(id.as_str()), "{id} missing:\n{said}");
    }
    // The newest run's per-process breakdown: the test's shell leads by CPU.
    let by_cpu = format!("Top processes by CPU in run {}:", after[2]);
    assert!(said.contains(&by_cpu), "{said}");
    assert!(
        said.contains("Top processes by peak memory in run"),
        "{said}"
    );
    let first = said.split(&by_cpu).nth(1).unwrap().lines().nth(2).unwrap();
    assert!(first.contains("sh") || first.contains("bash"), "{said}");
    let o = qorch_out(&["history", "brun", "--store", store_arg]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("burn"), "{}", text(&o.stderr));

    let o = qorch_out(&["runs", "--store", store_arg, "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 9);
    assert_eq!(runs[0]["run_id"], *after[2], "newest first: {runs:#}");
}

/// `run --kcidb FILE` and `export-kcidb RUN` write the run in KCIDB's schema; balanced shards
/// split by a stored run's durations and merge into the whole campaign.
#[test]
fn kcidb_files_and_balanced_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut text_plan = String::from("name = \"balanced\"\n");
    for (i, ms) in [400, 300, 200, 100].iter().enumerate() {
        text_plan.push_str(&format!(
            "[[test]]\nid = \"t{i}\"\nscript = \"sleep {}\"\n",
            *ms as f64 / 1000.0
        ));
    }
    let plan = write_plan(dir.path(), "plan.toml", &text_plan);
    let out = dir.path().join("out");
    let kcidb = dir.path().join("run.kcidb.json");
    let first = run(&plan, &out, &["--kcidb", kcidb.to_str().unwrap()]);
    let doc = json(&kcidb);
    let tests = doc["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 4, "{doc:#}");
    assert!(tests.iter().all(|t| t["status"] == "PASS"), "{doc:#}");
    let o = qorch_out(&[
        "export-kcidb",
        &first,
        "--store",
        out.join("store").to_str().unwrap(),
        "--origin",
        "my_ci",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let exported: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(exported["tests"].as_array().unwrap().len(), 4);
    assert!(
        exported["tests"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("my_ci:"),
        "{exported:#}"
    );
    let o = qorch_out(&["export-kcidb", &first, "--origin", "Bad-Origin"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("Bad-Origin"),
        "{}",
        text(&o.stderr)
    );

    // Two balanced shards by the first run's durations: the longest with the shortest.
    let mut reports = Vec::new();
    for k in 1..=2 {
        let w = dir.path().join(format!("w{k}"));
        run(
            &plan,
            &w,
            &[
                "--partition",
                &format!("{k}/2:balanced"),
                "--balance-from",
                &first,
                "--store",
                out.join("store").to_str().unwrap(),
                "--campaign",
                "c1",
            ],
        );
        let report = json(&w.join("latest/report.json"));
        assert_eq!(report["shard"]["balanced_from"], *first, "{report:#}");
        let ids: Vec<String> = report["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["test_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        reports.push(w.join("latest"));
    }
    let o = qorch()
        .arg("merge")
        .args(&reports)
        .arg("--out")
        .arg(dir.path().join("merged"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    // --balance-from needs a balanced partition.
    let o = qorch()
        .arg("run")
        .arg(&plan)
        .args(["--partition", "1/2", "--balance-from", &first])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--partition 1/2:balanced"),
        "{}",
        text(&o.stderr)
    );
    // --balance-from needs a partition.
    let o = qorch()
        .arg("run")
        .arg(&plan)
        .args(["--balance-from", &first])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

/// A report of a run whose store kept no records of it (written by an earlier version, or on
/// another machine) becomes history with `import-report`, once.
#[test]
fn import_report_makes_an_unrecorded_run_history() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        "plan.toml",
        "[[test]]\nid = \"a\"\nscript = \"true\"\n",
    );
    let out = dir.path().join("out");
    let id = run(&plan, &out, &["--no-store"]);
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let o = qorch_out(&["history", "a", "--store", store_arg]);
    assert_eq!(o.status.code(), Some(2));
    let latest = out.join("latest");
    for (i, want) in [(0, "1 results added, report added"), (1, "0 results added")] {
        let o = qorch()
            .arg("import-report")
            .arg(&latest)
            .args(["--store", store_arg])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains(want),
            "import {i}: {}",
            text(&o.stdout)
        );
    }
    let o = qorch_out(&["history", "a", "--store", store_arg]);
    assert!(text(&o.stdout).contains(&id), "{}", text(&o.stdout));
}

/// A store and a report written by the previous version (before results were recorded): `runs`
/// says how to import the report, and once imported `runs`, `history` and `compare` see it.
#[test]
fn a_store_and_report_of_the_previous_version_open_once_imported() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../orchestrator-core/tests/fixtures/previous-version");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    for f in ["LAYOUT", "catalog-v1.sqlite"] {
        std::fs::copy(fixture.join("store").join(f), store.join(f)).unwrap();
    }
    let store_arg = store.to_str().unwrap();
    let o = qorch_out(&["runs", "--store", store_arg]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("qorch import-report"),
        "{}",
        text(&o.stdout)
    );
    let report = fixture.join("report.json");
    let run_id = json(&report)["run_id"].as_str().unwrap().to_owned();
    let o = qorch()
        .arg("import-report")
        .arg(&report)
        .args(["--store", store_arg])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = qorch_out(&["runs", "--store", store_arg]);
    assert!(text(&o.stdout).contains(&run_id), "{}", text(&o.stdout));
    let o = qorch_out(&["history", "passes", "--store", store_arg]);
    assert!(text(&o.stdout).contains(&run_id), "{}", text(&o.stdout));
    let o = qorch_out(&["compare", &run_id, &run_id, "--store", store_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
}
