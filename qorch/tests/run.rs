//! End-to-end tests of `qorch run` and `qorch merge`: the binary a user runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::junit_case;

mod support;
use support::{QORCH, json, qorch};

/// `qorch run PLAN`.
fn run_cmd(plan: &Path) -> Command {
    let mut c = qorch();
    c.arg("run").arg(plan);
    c
}

fn write_plan(dir: &Path, text: &str) -> PathBuf {
    support::write_plan(dir, "plan.toml", text)
}

/// Runs the bundled demo plan with its store in `store` (and its KCIDB file in
/// `<out>/kcidb.json`).
fn run_demo(out: &Path, store: &Path) -> (String, serde_json::Value) {
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans/demo.toml");
    let output = run_cmd(&plan)
        .arg("--kcidb")
        .arg(out.join("kcidb.json"))
        .arg("--out")
        .arg(out)
        .arg("--store")
        .arg(store)
        .arg("--progress")
        .arg("lines")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    (stdout, json(&out.join("latest/report.json")))
}

#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn the_bundled_demo_runs_on_four_architectures_and_a_second_run_dedups() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let (stdout, report) = run_demo(&dir.path().join("first"), &store);
    let results = report["results"].as_array().unwrap();
    // Six tests on each of four architectures, all as expected.
    assert_eq!(results.len(), 24, "{stdout}");
    assert_eq!(report["summary"]["failed"], 0, "{stdout}");
    assert_eq!(report["summary"]["expected_failures"], 4, "{stdout}");
    for arch in ["x86_64", "aarch64", "armv7", "riscv64"] {
        assert!(
            stdout.contains(&format!("kernel-selftest@{arch}")),
            "{stdout}"
        );
        let r = results
            .iter()
            .find(|r| r["test_id"] == format!("kernel-selftest@{arch}"))
            .unwrap();
        // test_bpf's cases, one subtest each.
        let subtests = r["subtests"].as_array().unwrap();
        assert_eq!(subtests.len(), 40, "{r:#}");
        assert!(subtests.iter().all(|t| t["status"] == "passed"), "{r:#}");
        // Monitored: peak CPU and memory of the QEMU process.
        assert!(
            r["resources"]["peak_rss_bytes"].as_u64().unwrap() > 10 << 20,
            "{r:#}"
        );
    }
    // The summary table has the monitor's columns and the store's line.
    for want in ["peak CPU", "peak memory", "XFAIL", "artifacts stored"] {
        assert!(stdout.contains(want), "`{want}` missing:\n{stdout}");
    }
    let first = dir.path().join("first");
    for f in ["junit.xml", "report.json", "report.html"] {
        assert!(first.join("latest").join(f).is_file(), "{f} missing");
    }
    // The demo's KCIDB file validates with kcidb-io and holds every test, suite and subtest.
    let python = std::env::var_os("KCIDB_PYTHON")
        .expect("KCIDB_PYTHON is not set: run this test through `cargo xtask test`");
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../orchestrator-core/tests/validate_kcidb.py");
    let v = Command::new(python)
        .arg(&script)
        .arg(first.join("kcidb.json"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "kcidb-io refused the demo's KCIDB file: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let tests = seen["tests"].as_array().unwrap();
    let want: usize = results
        .iter()
        .map(|r| {
            1 + r["suites"].as_array().map_or(0, Vec::len)
                + r["subtests"].as_array().map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(tests.len(), want, "{seen:#}");
    // Per result (KCIDB ids `<origin>:<run>:<index>`, its suites and cases below it): the
    // test at its path, and as many entries under it as it has suites and subtests.
    for (i, r) in results.iter().enumerate() {
        let id = r["test_id"].as_str().unwrap();
        let path = orchestrator_core::report::kcidb::test_path(id);
        let mine: Vec<&serde_json::Value> = tests
            .iter()
            .filter(|t| {
                let tail = t["id"].as_str().unwrap().rsplit(':').next().unwrap();
                tail.split('.').next() == Some(i.to_string().as_str())
            })
            .collect();
        let own = r["suites"].as_array().map_or(0, Vec::len)
            + r["subtests"].as_array().map_or(0, Vec::len);
        assert_eq!(mine.len(), 1 + own, "{id}: {mine:#?}");
        assert!(
            mine.iter().all(|t| {
                let p = t["path"].as_str().unwrap();
                p == path || p.starts_with(&format!("{path}."))
            }),
            "{id} at {path}: {mine:#?}"
        );
    }
    let stats = &report["storage"]["stats"];
    let (logical1, unique1) = (
        stats["logical_bytes"].as_u64().unwrap(),
        stats["unique_bytes"].as_u64().unwrap(),
    );

    // A second run into the same store: what did not change (kernel logs of identical boots,
    // uname output, ...) is stored once, so the store grows by less than it is given.
    let (_, second) = run_demo(&dir.path().join("second"), &store);
    let stats = &second["storage"]["stats"];
    let (logical2, unique2) = (
        stats["logical_bytes"].as_u64().unwrap(),
        stats["unique_bytes"].as_u64().unwrap(),
    );
    assert!(logical2 > logical1, "{stats:#}");
    assert!(
        unique2 - unique1 < logical2 - logical1,
        "no dedup: {unique1} -> {unique2} unique bytes for {logical1} -> {logical2} logical"
    );
}

#[test]
fn a_bad_plan_exits_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        "[[test]]\nid = \"a\"\nscript = \"true\"\ntimout = \"1s\"\n",
    );
    let output = run_cmd(&plan)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:4:1", plan.display())),
        "{stderr}"
    );
    assert!(stderr.contains("timout"), "{stderr}");
    assert!(
        !dir.path().join("out/latest/junit.xml").exists(),
        "nothing runs half-configured"
    );
}

#[test]
fn sigint_stops_tests_and_still_writes_both_reports() {
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    let mut plan = String::from("[run]\nparallelism = 2\n");
    for i in 0..3 {
        plan.push_str(&format!(
            "[[test]]\nid = \"slow-{i}\"\nscript = \"echo $$ > {}/{i}; sleep 60\"\n",
            pids.display()
        ));
    }
    let plan = write_plan(dir.path(), &plan);
    let out = dir.path().join("out");
    let mut child = run_cmd(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--progress", "lines"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut started = 0;
    let mut line = String::new();
    while started < 2 {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "campaign ended early"
        );
        if line.contains("START") {
            started += 1;
        }
    }
    // Both tests have written their pid once the files exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&pids).unwrap().count() < 2 {
        assert!(Instant::now() < deadline, "tests did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "campaign did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(130));

    let report = json(&out.join("latest/report.json"));
    assert_eq!(report["interrupted"], "cancelled");
    assert_eq!(report["summary"]["cancelled"], 2);
    assert_eq!(report["summary"]["skipped"], 1);
    let xml = std::fs::read_to_string(out.join("latest/junit.xml")).unwrap();
    assert!(xml.contains("<testcase name=\"slow-2\""), "{xml}");
    for entry in std::fs::read_dir(&pids).unwrap() {
        let pid: i32 = std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.contains(") Z "));
        assert!(gone, "test process {pid} survived the interrupt");
    }
}

/// Cross-checks the JUnit XML with an independent parser, Python's `junitparser`.
#[test]
#[ignore = "needs Python's junitparser: run `cargo xtask test`, which installs it and sets JUNITPARSER_PYTHON"]
fn junit_xml_reads_back_with_junitparser() {
    let python = std::env::var_os("JUNITPARSER_PYTHON")
        .expect("JUNITPARSER_PYTHON is not set: run this test through `cargo xtask test`");
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        r#"
name = "junit-check"
[run]
timeout = "60s"
[[test]]
id = "passes"
script = "echo 'out <&> \"quoted\"'"
[[test]]
id = "fails"
script = "echo boom >&2; exit 4"
[[test]]
id = "xfail"
expect = "fail"
script = "exit 1"
[[test]]
id = "xpass"
expect = "fail"
script = "true"
[[test]]
id = "hangs"
timeout = "300ms"
script = "sleep 30"
"#,
    );
    let out = dir.path().join("out");
    let status = run_cmd(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--progress", "quiet"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "three tests fail");

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_junit.py");
    let output = Command::new(python)
        .arg(script)
        .arg(out.join("latest/junit.xml"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report = json(&out.join("latest/report.json"));

    assert_eq!(parsed["tests"], 5);
    assert_eq!(parsed["failures"], 3);
    assert_eq!(parsed["errors"], 0);
    assert_eq!(parsed["skipped"], 0);
    let cases = parsed["cases"].as_array().unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(cases.len(), results.len());
    for (case, result) in cases.iter().zip(results) {
        assert_eq!(case["name"], result["test_id"]);
        assert_eq!(case["classname"], "process");
        let expected = match result["test_id"].as_str().unwrap() {
            "passes" | "xfail" => "passed",
            _ => "failure",
        };
        assert_eq!(case["result"], expected, "{case}");
        let json_secs = result_duration(result);
        let xml_secs = case["time"].as_f64().unwrap();
        assert!(
            (json_secs - xml_secs).abs() < 0.01,
            "{json_secs} vs {xml_secs}"
        );
    }
    let passes = &cases[0];
    assert_eq!(passes["system_out"], "out <&> \"quoted\"\n");
    let hangs = &cases[4];
    assert!(
        hangs["message"]
            .as_str()
            .unwrap()
            .contains("timed out in test after 300ms")
    );
    let xpass = &cases[3];
    assert!(
        xpass["message"]
            .as_str()
            .unwrap()
            .contains("expected to fail")
    );
}

fn result_duration(result: &serde_json::Value) -> f64 {
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(result[k].as_str().unwrap()).unwrap();
    (at("finished_at") - at("started_at")).as_seconds_f64()
}

#[test]
fn three_workers_run_their_shards_and_the_merge_holds_the_whole_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("name = \"sharded\"\n");
    for i in 0..8 {
        text.push_str(&format!("[[test]]\nid = \"t{i}\"\nscript = \"echo {i}\"\n"));
    }
    let plan = write_plan(dir.path(), &text);
    // Three workers at once, as a CI system's parallel jobs would.
    let workers: Vec<_> = (1..=3)
        .map(|k| {
            run_cmd(&plan)
                .args(["--partition", &format!("{k}/3"), "--campaign", "pipeline-7"])
                .args(["--progress", "quiet", "--no-store", "--out"])
                .arg(dir.path().join(format!("w{k}")))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success());
    }
    let shard = |k: usize| dir.path().join(format!("w{k}/latest/report.json"));
    let ran: usize = (1..=3)
        .map(|k| json(&shard(k))["results"].as_array().unwrap().len())
        .sum();
    assert_eq!(ran, 8, "every test ran on exactly one worker");

    let merged_dir = dir.path().join("merged");
    let out = qorch()
        .arg("merge")
        .args((1..=3).map(shard))
        .arg("--out")
        .arg(&merged_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&merged_dir.join("latest/report.json"));
    let ids: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, (0..8).map(|i| format!("t{i}")).collect::<Vec<_>>());
    for f in ["junit.xml", "report.html"] {
        assert!(merged_dir.join("latest").join(f).is_file(), "{f}");
    }

    // Without the third shard: the merge fails and names what is missing.
    let out = qorch()
        .arg("merge")
        .args([shard(1), shard(2)])
        .arg("--out")
        .arg(dir.path().join("partial"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("missing (no shard reported them)"),
        "{stdout}"
    );
    assert!(stdout.contains("shards without a report: 3"), "{stdout}");
}

/// The scale-out path end to end: three worker processes, each running one shard of a QEMU
/// campaign, write through to one Garage bucket; the merge holds exactly the unsharded
/// campaign's tests, pulls every worker's records into a fresh store, and a query finds each
/// test's console log, whose content is fetched from the bucket and verified.
#[test]
#[ignore = "needs QEMU, provisioned guest images and Garage: run `cargo xtask test`"]
fn three_qemu_workers_share_a_garage_bucket_and_the_merge_finds_every_console_log() {
    use orchestrator_core::artifact_store::{
        ArtifactKind, ArtifactStore, ObjectStoreBackend, Query, RemoteOptions,
    };
    let node = testkit::GarageNode::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/pipeline-9", node.bucket());
    let mut text = format!(
        "name = \"scale-out\"\n[qemu]\npool = 1\n[store]\npath = \"unused\"\nremote = \"{url}\"\n\
         [defaults]\nrunner = \"qemu\"\narch = [\"aarch64\", \"riscv64\"]\ntimeout = \"120s\"\n"
    );
    for i in 0..3 {
        text.push_str(&format!(
            "[[test]]\nid = \"t{i}\"\nscript = \"echo marker-{i}-$(uname -m) > /dev/console; uname -m\"\n"
        ));
    }
    let plan = write_plan(dir.path(), &text);
    // The unsharded campaign: every test of the plan, in plan order.
    let expected: Vec<String> = orchestrator_core::plan::Loader::new()
        .section::<qemu_runner::QemuPlan>()
        .load(&plan)
        .unwrap()
        .cases
        .iter()
        .map(|c| c.id.to_string())
        .collect();
    assert_eq!(expected.len(), 6, "{expected:?}");
    let workers: Vec<_> = (1..=3)
        .map(|k| {
            run_cmd(&plan)
                .args(["--partition", &format!("{k}/3"), "--campaign", "pipeline-9"])
                .args(["--progress", "quiet", "-j", "1", "--store"])
                .arg(dir.path().join(format!("w{k}/store")))
                .arg("--out")
                .arg(dir.path().join(format!("w{k}")))
                .envs(node.env())
                .output_async()
        })
        .collect();
    for (k, w) in workers.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker {}: {}{}",
            k + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let shard = |k: usize| dir.path().join(format!("w{k}/latest/report.json"));
    let merged_dir = dir.path().join("merged");
    let merged_store = dir.path().join("merged-store");
    let out = qorch()
        .arg("merge")
        .args((1..=3).map(shard))
        .arg("--out")
        .arg(&merged_dir)
        .arg("--store")
        .arg(&merged_store)
        .args(["--remote", &url])
        .envs(node.env())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("console logs for 6 of 6 tests"), "{stdout}");
    let report = json(&merged_dir.join("latest/report.json"));
    let ids: Vec<String> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected, "exactly the unsharded campaign's tests");

    // A query on the merged store finds each test's console log; its content comes from the
    // bucket (the merged store never ran anything) and is verified on the way.
    let remote =
        ObjectStoreBackend::connect_with(&url, node.env(), &RemoteOptions::default()).unwrap();
    let store = ArtifactStore::open(&merged_store)
        .unwrap()
        .with_remote(std::sync::Arc::new(remote));
    for id in &expected {
        let logs = store
            .query(&Query::new().test(id.as_str()).kind(ArtifactKind::Console))
            .unwrap();
        assert_eq!(logs.len(), 1, "{id}: {logs:?}");
        let text = String::from_utf8(store.get(&logs[0].id).unwrap()).unwrap();
        let (t, arch) = id.split_once('@').unwrap();
        let marker = format!("marker-{}-{arch}", &t[1..]);
        assert!(
            text.contains(&marker),
            "{id}: console log without `{marker}`:\n{text}"
        );
    }
}

/// `Command::spawn` with piped output, for workers run side by side.
trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// A three-node Garage cluster (replication factor 3) loses a node while a campaign's workers
/// upload: every artifact the reports list as stored (a put that returned success) is readable
/// afterwards, through another node, and verifies.
#[test]
#[ignore = "needs Garage, which `cargo xtask test` builds once: run `cargo xtask test`"]
fn a_garage_node_killed_during_a_campaigns_uploads_loses_no_stored_artifact() {
    use orchestrator_core::artifact_store::{ArtifactStore, ObjectStoreBackend, RemoteOptions};
    let mut cluster = testkit::GarageCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("s3://{}/ha", cluster.bucket());
    let mut text = String::from("name = \"ha\"\n");
    for i in 0..16 {
        text.push_str(&format!(
            "[[test]]\nid = \"t{i}\"\nscript = \"head -c 3145728 /dev/urandom > $ORCH_ARTIFACT_DIR/blob.bin; echo {i} > $ORCH_ARTIFACT_DIR/out.log\"\n"
        ));
    }
    let plan = write_plan(dir.path(), &text);
    let workers: Vec<_> = (1..=2)
        .map(|k| {
            run_cmd(&plan)
                .args(["--partition", &format!("{k}/2"), "--campaign", "ha"])
                .args([
                    "--progress",
                    "quiet",
                    "-j",
                    "2",
                    "--remote",
                    &url,
                    "--store",
                ])
                .arg(dir.path().join(format!("w{k}/store")))
                .arg("--out")
                .arg(dir.path().join(format!("w{k}")))
                // Both through node 0; node 1 goes away.
                .envs(cluster.env(0))
                .output_async()
        })
        .collect();
    // Kill node 1 once a few tests' artifacts are in the bucket.
    let s3 = cluster.store(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let at_kill = loop {
        let records = rt
            .block_on(testkit::list_keys(&s3, Some(&"ha/records-v1".into())))
            .unwrap_or_default();
        if records.len() >= 3 || t.elapsed() > Duration::from_secs(120) {
            break records.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    cluster.kill(1);
    // One record object per test: the kill came with most of the campaign still to upload.
    assert!(
        (3..10).contains(&at_kill),
        "{at_kill} tests stored when node 1 was killed"
    );
    let mut stored = Vec::new();
    for (k, w) in workers.into_iter().enumerate() {
        let out = w.wait_with_output().unwrap();
        eprintln!(
            "worker {}: {}{}",
            k + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = json(&dir.path().join(format!("w{}/latest/report.json", k + 1)));
        for r in report["results"].as_array().unwrap() {
            for a in r["artifacts"].as_array().unwrap() {
                if let Some(id) = a["stored"]["id"].as_str() {
                    stored.push((r["test_id"].as_str().unwrap().to_owned(), id.to_owned()));
                }
            }
        }
    }
    // blob.bin, out.log and the metrics of each of the 16 tests.
    assert!(
        stored.len() >= 40,
        "most puts succeed with one node of three down: {stored:?}"
    );
    let remote =
        ObjectStoreBackend::connect_with(&url, cluster.env(2), &RemoteOptions::default()).unwrap();
    let fresh = ArtifactStore::open(dir.path().join("fresh"))
        .unwrap()
        .with_remote(std::sync::Arc::new(remote));
    fresh.pull_records().unwrap();
    for (test, id) in &stored {
        let record = fresh.record_of(id).unwrap();
        let content = fresh
            .get(id)
            .unwrap_or_else(|e| panic!("{test}: stored artifact {id} lost: {e}"));
        assert_eq!(content.len() as u64, record.raw_size, "{test} {id}");
    }
    eprintln!(
        "{} stored artifacts read back and verified after the kill",
        stored.len()
    );
}

/// `ORCH_ACCEL` wins over the plan's `accel` (here `kvm`, which on most hosts could not work),
/// and a bad value stops the campaign before anything boots, naming the variable.
#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn orch_accel_wins_over_the_plan_and_a_bad_value_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        "[qemu]\naccel = \"kvm\"\n[qemu.profile.x86_64]\naccel = \"kvm\"\n\
         [defaults]\nrunner = \"qemu\"\narch = \"x86_64\"\n\
         [[test]]\nid = \"uname\"\nscript = \"uname -m\"\n",
    );
    let output = run_cmd(&plan)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("ORCH_ACCEL", "tcg")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = json(&dir.path().join("out/latest/report.json"));
    let env = &report["results"][0]["environment"];
    assert_eq!(env["accelerator"], "tcg", "{env:#}");
    assert_eq!(env["accelerator-reason"], "TCG forced by ORCH_ACCEL=tcg");

    let output = run_cmd(&plan)
        .arg("--out")
        .arg(dir.path().join("bad"))
        .env("ORCH_ACCEL", "kvm-please")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ORCH_ACCEL=kvm-please is not valid")
            && stderr.contains("\"auto\", \"kvm\" or \"tcg\""),
        "{stderr}"
    );
    assert!(
        !dir.path().join("bad/latest/junit.xml").exists(),
        "nothing runs half-configured"
    );
}

/// A test that exits 0 but prints KTAP with a `not ok` case fails the campaign, and says so in
/// all four reports; `not ok` cases marked `# SKIP`, `# TODO` or `# XFAIL` fail nothing.
#[test]
fn a_failed_ktap_case_fails_the_campaign_in_every_report() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        r#"
name = "ktap"
[[test]]
id = "ktap-fails"
script = '''
printf 'KTAP version 1\n1..3\nok 1 alloc\n# Expected 1 == 2\nnot ok 2 free\nnot ok 3 map # SKIP no MMU\n'
'''
[[test]]
id = "ktap-directives"
script = '''
printf 'TAP version 13\n1..4\nok 1 a\nnot ok 2 b # skip\nnot ok 3 c # Todo later\nnot ok 4 d # XFAIL known\n'
'''
"#,
    );
    let out = dir.path().join("out");
    let output = run_cmd(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--progress", "quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");

    // The summary table.
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.contains(&format!(" {id} ")))
            .unwrap_or_else(|| panic!("no row for {id}:\n{stdout}"))
    };
    assert!(row("ktap-fails").contains("FAIL"), "{stdout}");
    assert!(
        row("ktap-fails").contains("1 of 3 subtests failed"),
        "{stdout}"
    );
    assert!(row("ktap-directives").contains("PASS"), "{stdout}");
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");

    // report.json: the summary and the results.
    let report = json(&out.join("latest/report.json"));
    assert_eq!(report["schema_version"], 5);
    assert_eq!(report["summary"]["failed"], 1, "{report:#}");
    assert_eq!(report["summary"]["passed"], 1, "{report:#}");
    assert_eq!(report["summary"]["subtests"]["failed"], 1, "{report:#}");
    let results = report["results"].as_array().unwrap();
    assert_eq!(
        results[0]["outcome"],
        serde_json::json!({"kind": "subtests-failed", "failed": 1, "total": 3})
    );
    assert!(
        results[0]["message"]
            .as_str()
            .unwrap()
            .contains("1 of 3 subtests failed: free")
    );
    let statuses: Vec<&str> = results[1]["subtests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["passed", "skipped", "todo", "todo"]);
    assert_eq!(results[1]["outcome"]["kind"], "passed");

    // junit.xml: the test and its failed case are failures; nothing else is.
    let xml = std::fs::read_to_string(out.join("latest/junit.xml")).unwrap();
    assert!(
        xml.contains(r#"tests="9" skipped="2" errors="0" failures="2""#),
        "{xml}"
    );
    assert!(junit_case(&xml, "ktap-fails").contains("<failure"));
    assert!(junit_case(&xml, "ktap-fails/free").contains(r#"<failure message="Expected 1 == 2""#));
    assert!(junit_case(&xml, "ktap-fails/map").contains("<skipped"));
    assert!(junit_case(&xml, "ktap-directives/b").contains("<skipped"));
    for name in [
        "ktap-fails/alloc",
        "ktap-directives",
        "ktap-directives/a",
        "ktap-directives/c",
        "ktap-directives/d",
    ] {
        let case = junit_case(&xml, name);
        assert!(
            !case.contains("<failure") && !case.contains("<skipped"),
            "{case}"
        );
    }
    // An independent parser reads the same, when there is one (`cargo xtask test` sets it).
    if let Some(python) = std::env::var_os("JUNITPARSER_PYTHON") {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_junit.py");
        let output = Command::new(python)
            .arg(script)
            .arg(out.join("latest/junit.xml"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            (parsed["failures"].as_u64(), parsed["skipped"].as_u64()),
            (Some(2), Some(2))
        );
        let failed: Vec<&str> = parsed["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["result"] == "failure")
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(failed, ["ktap-fails", "ktap-fails/free"]);
    } else {
        eprintln!("JUNITPARSER_PYTHON is not set: the junitparser cross-check is skipped");
    }

    // report.html: the test's row says FAIL, the run FAILED.
    let html = std::fs::read_to_string(out.join("latest/report.html")).unwrap();
    let row = &html[html.find("id=\"test-0\"").unwrap()..];
    let row = &row[..row.find("</tbody>").unwrap()];
    assert!(
        row.contains("ktap-fails") && row.contains(">FAIL<"),
        "{row}"
    );
    assert!(row.contains("<b>not ok</b>"), "{row}");
    assert!(html.contains(">FAILED<"));
}

/// The same rule in QEMU guests: KTAP on a guest test's stdout, and KUnit-style KTAP in the
/// guest's kernel log.
#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn a_failed_ktap_case_in_a_guest_fails_the_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        r#"
name = "ktap-guest"
[defaults]
runner = "qemu"
arch = "aarch64"
timeout = "60s"
[[test]]
id = "stdout"
script = '''
printf 'KTAP version 1\n1..2\nok 1 alloc\nnot ok 2 free\n'
'''
[[test]]
id = "kernel-log"
script = '''
for l in 'KTAP version 1' '1..1' '    KTAP version 1' '    # Subtest: example' '    1..2' \
         '    ok 1 example_simple_test' '    not ok 2 example_bad_test' 'not ok 1 example'; do
  echo "$l" > /dev/kmsg
done
'''
[[test]]
id = "directives"
script = '''
printf 'TAP version 13\n1..3\nok 1 a\nnot ok 2 b # SKIP\nnot ok 3 c # TODO later\n'
'''
"#,
    );
    let out = dir.path().join("out");
    let output = run_cmd(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--progress", "quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let report = json(&out.join("latest/report.json"));
    assert_eq!(report["summary"]["failed"], 2, "{report:#}");
    assert_eq!(report["summary"]["passed"], 1, "{report:#}");
    let results = report["results"].as_array().unwrap();
    let result = |id: &str| {
        results
            .iter()
            .find(|r| r["test_id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {report:#}"))
    };
    assert_eq!(
        result("stdout")["outcome"],
        serde_json::json!({"kind": "subtests-failed", "failed": 1, "total": 2})
    );
    let kernel = result("kernel-log");
    assert_eq!(kernel["outcome"]["kind"], "subtests-failed", "{kernel:#}");
    assert!(
        kernel["message"]
            .as_str()
            .unwrap()
            .contains("subtests failed: example.example_bad_test"),
        "{kernel:#}"
    );
    assert_eq!(result("directives")["outcome"]["kind"], "passed");
    let xml = std::fs::read_to_string(out.join("latest/junit.xml")).unwrap();
    assert!(
        junit_case(&xml, "kernel-log/example.example_bad_test").contains("<failure"),
        "{xml}"
    );
    assert!(xml.contains(r#"failures="4""#), "{xml}");
}

/// With `RUST_LOG=qemu_runner=debug` the campaign's stderr carries, for each test (each line
/// names it in the `qemu` span's `test` field), the QEMU command line, the accelerator decision,
/// every phase's start and end, the transfer of the results and of the artifacts; without
/// `RUST_LOG` it carries none of that.
#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn rust_log_shows_each_tests_command_line_accelerator_phases_and_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let tests = "[defaults]\nrunner = \"qemu\"\narch = [\"aarch64\", \"riscv64\"]\ntimeout = \"120s\"\n\
         [[test]]\nid = \"uname\"\nscript = \"uname -m\"\n\
         [[test]]\nid = \"collect\"\nscript = \"echo collected > out.txt\"\nartifacts = [\"out.txt\"]\n";
    // A boot per test: the story of one guest's life is what the log must tell (planned
    // campaigns log their restores in the same spans).
    let plan = write_plan(dir.path(), &format!("[qemu]\nplanning = false\n{tests}"));
    let session_plan = dir.path().join("session.toml");
    std::fs::write(&session_plan, format!("[qemu]\nsession = true\n{tests}")).unwrap();
    let run = |plan: &Path, out: &str, rust_log: Option<&str>| {
        let mut command = run_cmd(plan);
        command
            .arg("--out")
            .arg(dir.path().join(out))
            .args(["--progress", "quiet", "--no-store"])
            .env_remove("RUST_LOG");
        if let Some(filter) = rust_log {
            command.env("RUST_LOG", filter);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        );
        stderr
    };

    // The lines of test `id`'s execution in `log`: its span names it.
    fn lines_of<'a>(log: &'a str, id: &str) -> Vec<&'a str> {
        log.lines()
            .filter(|l| l.contains(&format!("qemu{{test={id} ")))
            .collect()
    }

    let log = run(&plan, "traced", Some("qemu_runner=debug"));
    for arch in ["aarch64", "riscv64"] {
        for test in ["uname", "collect"] {
            let id = format!("{test}@{arch}");
            let lines = lines_of(&log, &id);
            let has = |what: &[&str]| lines.iter().any(|l| what.iter().all(|w| l.contains(w)));
            let qemu = format!("qemu-system-{arch} -M virt ");
            assert!(
                has(&[
                    ":boot:",
                    "QEMU started pid=",
                    " command=/",
                    &qemu,
                    " -kernel ",
                    " -initrd "
                ]),
                "{id}: no QEMU command line in\n{log}"
            );
            assert!(
                has(&[":prepare:", "accelerator accel=tcg reason="]),
                "{id}: no accelerator decision in\n{log}"
            );
            for phase in ["prepare", "boot", "test", "stop", "gather"] {
                for edge in ["phase started", "phase finished elapsed_ms="] {
                    assert!(
                        has(&[&format!(":{phase}: "), edge]),
                        "{id}: no `{edge}` for the {phase} phase in\n{log}"
                    );
                }
            }
            assert!(
                has(&[":test:", "results transfer ended", "delivered=true"]),
                "{id}: no transfer of the results in\n{log}"
            );
            // A guest with something to send sends an archive over its virtio port; only
            // `collect` names a file, and `uname` leaves nothing (no core dump either).
            if test == "collect" {
                assert!(
                    has(&[
                        "artifact archive received",
                        "channel=\"virtio-serial\"",
                        "files=1 "
                    ]),
                    "{id}: the artifact archive's arrival is not in\n{log}"
                );
                assert!(
                    has(&[
                        ":gather:",
                        "artifacts transferred channel=\"virtio-serial\" files=1 bytes=10 "
                    ]),
                    "{id}: the artifact's channel and size are not in\n{log}"
                );
            } else {
                assert!(
                    has(&[":gather:", "no artifacts transferred"]),
                    "{id}: no word on its artifacts in\n{log}"
                );
            }
        }
    }

    // In session mode a guest boots once and takes test after test: each test's lines still
    // name its accelerator, its phases and its transfers; each architecture's first test boots
    // (its guest's QEMU command line).
    let log = run(&session_plan, "session", Some("qemu_runner=debug"));
    for arch in ["aarch64", "riscv64"] {
        let qemu = format!("qemu-system-{arch} -M virt ");
        assert!(
            log.lines().any(|l| l.contains("mode=session")
                && l.contains(":boot{")
                && l.contains("QEMU started pid=")
                && l.contains(&qemu)),
            "no {arch} session guest's QEMU command line in\n{log}"
        );
        for test in ["uname", "collect"] {
            let id = format!("{test}@{arch}");
            let lines = lines_of(&log, &id);
            let has = |what: &[&str]| lines.iter().any(|l| what.iter().all(|w| l.contains(w)));
            assert!(
                has(&["mode=session", "accelerator", "accel=tcg reason="]),
                "{id}: no accelerator in\n{log}"
            );
            for phase in [":test{guest=", ":gather: "] {
                assert!(
                    has(&[phase, "phase finished elapsed_ms="]),
                    "{id}: no `{phase}` phase in\n{log}"
                );
            }
            assert!(
                has(&["results transfer ended", "delivered=true"]),
                "{id}: no transfer of the results in\n{log}"
            );
            // Artifacts come back over the session guest's virtio port too (`no artifacts
            // transferred` when none do).
            assert!(
                has(&[":gather: ", "artifacts transferred"]),
                "{id}: no artifact transfer in\n{log}"
            );
            if test == "collect" {
                assert!(
                    has(&["artifacts transferred channel=\"virtio-serial\" files=1 bytes=10 "]),
                    "{id}: the artifact's channel and size are not in\n{log}"
                );
            }
        }
    }

    // By default only warnings are logged: this campaign's stderr stays empty.
    let quiet = run(&plan, "quiet", None);
    assert!(
        !quiet.contains("qemu_runner") && !quiet.contains("DEBUG"),
        "{quiet}"
    );
}

/// `git bisect run campaign plan.toml` over a repository whose commits select plans: the stock
/// kernel passing (good), a kernel argument that makes the boot fail (bad, from the third
/// commit on), and one commit whose test cannot run for a reason outside the kernel (a QEMU
/// wrapper that fails as it starts: exit 125, skipped). Bisect visits the untestable commit
/// first (the middle of seven), skips it and still names the first bad commit.
#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn git_bisect_run_finds_the_first_bad_commit_and_skips_the_untestable_one() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // A QEMU that starts for any question but a boot (a profile's wrapper gone wrong).
    let wrapper = dir.path().join("broken-qemu");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\ncase \" $* \" in *\" -kernel \"*) \
         echo 'broken-qemu: cannot open /dev/fake: No such device' >&2; exit 1 ;; esac\n\
         exec qemu-system-aarch64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let test = "name = \"bisect\"\n[[test]]\nid = \"boots\"\nrunner = \"qemu\"\n\
                arch = \"aarch64\"\ntimeout = \"60s\"\nscript = \"uname -r\"\n";
    let good = test.to_owned();
    // The kernel runs busybox as its init, which prints its help and exits: a kernel panic.
    let bad = format!(
        "{test}[qemu.profile.aarch64]\nkernel-args = [\"quiet\", \"rdinit=/bin/busybox\"]\n"
    );
    let untestable = format!(
        "{test}[qemu.profile.aarch64]\nqemu = \"{}\"\n",
        wrapper.display()
    );
    git(&["init", "-q", "-b", "main"]);
    git(&["config", "user.email", "bisect@example.invalid"]);
    git(&["config", "user.name", "bisect"]);
    let plans = [&good, &good, &bad, &untestable, &bad, &bad, &bad];
    for (i, plan) in plans.iter().enumerate() {
        std::fs::write(repo.join("plan.toml"), plan).unwrap();
        git(&["add", "plan.toml"]);
        git(&[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            &format!("c{}", i + 1),
        ]);
    }
    let subject = |rev: &str| git(&["show", "-s", "--format=%s", rev]).trim().to_owned();

    // Each step's exit code on its own first: what bisect sees.
    let out = dir.path().join("out");
    let step = || {
        let output = run_cmd(&repo.join("plan.toml"))
            .arg("--out")
            .arg(&out)
            .args(["--progress", "quiet", "--no-store"])
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    git(&["checkout", "-q", "HEAD~3"]);
    assert_eq!(subject("HEAD"), "c4");
    let (code, stdout) = step();
    assert_eq!(code, Some(125), "{stdout}");
    let report = json(&out.join("latest/report.json"));
    assert_eq!(report["summary"]["errors"], 1, "{report:#}");
    git(&["checkout", "-q", "HEAD~1"]);
    let (code, stdout) = step();
    assert_eq!(code, Some(1), "{stdout}");
    let report = json(&out.join("latest/report.json"));
    let outcome = &report["results"][0]["outcome"];
    assert_eq!(
        (&outcome["kind"], &outcome["crash"]),
        (&"crashed".into(), &"boot-failure".into()),
        "{report:#}"
    );
    git(&["checkout", "-q", "main"]);

    git(&["bisect", "start", "HEAD", "HEAD~6"]);
    let bisect = Command::new("git")
        .arg("bisect")
        .arg("run")
        .arg(QORCH)
        .args(["run", "plan.toml"])
        .arg("--out")
        .arg(&out)
        .args(["--progress", "quiet", "--no-store"])
        .current_dir(&repo)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&bisect.stdout);
    assert!(bisect.status.success(), "{said}");
    assert!(said.contains("is the first bad commit"), "{said}");
    assert_eq!(subject("refs/bisect/bad"), "c3", "{said}");
    let log = git(&["bisect", "log"]);
    let skipped: Vec<String> = log
        .lines()
        .filter_map(|l| l.strip_prefix("git bisect skip "))
        .map(subject)
        .collect();
    assert_eq!(skipped, ["c4"], "{log}");
    git(&["bisect", "reset"]);
}

/// Each run gets its own directory under `<out>/runs` and `latest` follows the newest; the
/// scratch of tests that succeeded goes, a failed test's stays (and `--keep-scratch` keeps
/// all); `--rerun-failed` runs only what did not succeed (or is missing), from a run id, a run
/// directory or a report.json.
#[test]
fn runs_get_their_own_directories_scratch_is_tidied_and_failures_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("fixed");
    let plan = write_plan(
        dir.path(),
        &format!(
            "name = \"rerun\"\n\
             [[test]]\nid = \"ok\"\nscript = \"echo ok > leftover.txt\"\n\
             [[test]]\nid = \"flaky\"\nscript = \"echo was-here > leftover.txt; test -e {}\"\n",
            flag.display()
        ),
    );
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let output = run_cmd(&plan)
            .arg("--out")
            .arg(&out)
            .args(["--progress", "quiet"])
            .args(extra)
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (code, stdout) = run(&[]);
    assert_eq!(code, Some(1), "{stdout}");
    let first = json(&out.join("latest/report.json"));
    let first_id = first["run_id"].as_str().unwrap().to_owned();
    let first_dir = out.join("runs").join(&first_id);
    for f in ["junit.xml", "report.json", "report.html"] {
        assert!(first_dir.join(f).is_file(), "{f} missing");
    }
    assert_eq!(
        std::fs::read_link(out.join("latest")).unwrap(),
        Path::new("runs").join(&first_id)
    );
    // The failed test's scratch stays, named in the summary; the passing test's is gone.
    let scratch = out.join("scratch").join(&first_id);
    assert!(
        scratch.join("flaky/attempt-1/work/leftover.txt").is_file(),
        "{stdout}"
    );
    assert!(!scratch.join("ok").exists(), "{stdout}");
    assert!(
        stdout.contains("kept for inspection") && stdout.contains(&format!("{first_id}/flaky")),
        "{stdout}"
    );

    // Rerun by run id: only `flaky`, which now passes; its scratch goes too.
    std::fs::write(&flag, "").unwrap();
    let (code, stdout) = run(&["--rerun-failed", &first_id]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("rerunning 1 of 2 tests"), "{stdout}");
    let second = json(&out.join("latest/report.json"));
    let second_id = second["run_id"].as_str().unwrap().to_owned();
    assert_ne!(second_id, first_id);
    let ids: Vec<&str> = second["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["test_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["flaky"]);
    assert!(!out.join("scratch").join(&second_id).exists());
    // The first run's directory is untouched.
    assert_eq!(json(&first_dir.join("report.json")), first);

    // From a run directory: the second run had only `flaky`, so `ok` is missing from it and
    // runs again.
    let (code, stdout) = run(&["--rerun-failed", out.join("latest").to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("rerunning 1 of 2 tests") && stdout.trim_start().contains(": ok\n"),
        "{stdout}"
    );

    // --keep-scratch keeps everything; a report.json where everything succeeded leaves
    // nothing to rerun.
    let (code, stdout) = run(&["--keep-scratch"]);
    assert_eq!(code, Some(0), "{stdout}");
    let kept_id = json(&out.join("latest/report.json"))["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        out.join("scratch")
            .join(&kept_id)
            .join("ok/attempt-1/work/leftover.txt")
            .is_file(),
        "{stdout}"
    );
    let report = out.join("runs").join(&kept_id).join("report.json");
    let (code, stdout) = run(&["--rerun-failed", report.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("nothing to rerun"), "{stdout}");

    // A run id the store knows (its report record), from another output directory.
    let output = run_cmd(&plan)
        .arg("--out")
        .arg(dir.path().join("elsewhere"))
        .arg("--store")
        .arg(out.join("store"))
        .args(["--progress", "quiet", "--rerun-failed", &first_id])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("rerunning 1 of 2 tests"), "{stdout}");

    // An unknown run is a clear error, before anything runs.
    let (code, _) = run(&["--rerun-failed", "no-such-run"]);
    assert_eq!(code, Some(2));
    let output = run_cmd(&plan)
        .arg("--out")
        .arg(&out)
        .args(["--rerun-failed", "no-such-run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--rerun-failed no-such-run: no such run"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(out.join("runs")).unwrap().count(), 4);
}

/// The scratch kept for failed tests stays for the five newest runs that kept some; older
/// runs' kept scratch goes, but never a run's scratch kept with `--keep-scratch`.
#[test]
fn kept_scratch_is_bounded_to_the_newest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        "[[test]]\nid = \"fails\"\nscript = \"exit 1\"\n",
    );
    let out = dir.path().join("out");
    let run = |extra: &[&str]| {
        let status = run_cmd(&plan)
            .arg("--out")
            .arg(&out)
            .args(["--progress", "quiet", "--no-store"])
            .args(extra)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1));
        json(&out.join("latest/report.json"))["run_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let pinned = run(&["--keep-scratch"]);
    let ids: Vec<String> = (0..7).map(|_| run(&[])).collect();
    let mut kept: Vec<String> = std::fs::read_dir(out.join("scratch"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    let mut want = vec![pinned];
    want.extend(ids[2..].iter().cloned());
    want.sort();
    assert_eq!(kept, want);
    assert_eq!(std::fs::read_dir(out.join("runs")).unwrap().count(), 8);
}
