//! KUnit end to end (`kunit = true`): kernels built by the kernel's own `kunit.py` from Debian's
//! `linux-source-6.1` (`cargo xtask test` builds them once into
//! `~/.cache/qemu-orchestrator/tools/kunit-6.1` and points `ORCH_KUNIT_KERNELS` there):
//!
//! - `a/bzImage`: the core, example and list suites built in, with what the runner needs;
//!   `a/kunit-run.json` is what `kunit.py run` reported for it;
//! - `b/bzImage`: the same with one example case edited to fail;
//! - `src/`: the source tree, whose `tools/testing/kunit/kunit.py parse` reads the kernel log
//!   the runner stored.
//!
//! One campaign (`qorch run`, as a user runs it) boots (a), (a) with a KUnit filter
//! on its command line, and (b), two at a time, with the profile's default kernel arguments
//! (`quiet` among them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use testkit::junit_case;

/// The directory of the KUnit kernels: `ORCH_KUNIT_KERNELS`, which must be set (a heavy test
/// that cannot find its kernels fails; it never passes without having run).
fn kernels() -> PathBuf {
    let dir = std::env::var_os("ORCH_KUNIT_KERNELS").unwrap_or_else(|| {
        panic!(
            "ORCH_KUNIT_KERNELS is not set: these tests need the KUnit kernels that `cargo xtask \
             test` builds into ~/.cache/qemu-orchestrator/tools/kunit-6.1 and names in this \
             variable (run `cargo xtask test`, or set it to such a directory)"
        )
    });
    let dir = PathBuf::from(dir);
    for file in ["READY", "a/bzImage", "a/kunit-run.json", "b/bzImage"] {
        assert!(
            dir.join(file).is_file(),
            "ORCH_KUNIT_KERNELS={}: no {file} there (the KUnit kernels are not built, or not \
             completely: run `cargo xtask test`)",
            dir.display()
        );
    }
    dir
}

fn qorch_bin() -> PathBuf {
    escargot::CargoBuild::new()
        .package("qorch")
        .bin("qorch")
        .manifest_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .run()
        .expect("qorch builds")
        .path()
        .to_owned()
}

fn json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// A case: its suite path (`example`, `example.example_params_test`), its name, its status
/// (`PASS`, `SKIP`, `FAIL`).
type Case = (String, String, String);

/// The cases of a `kunit.py --json` document: `test_cases` of every group below the root, the
/// path of group names to them.
fn kunit_json_cases(doc: &serde_json::Value) -> Vec<Case> {
    fn walk(path: &[String], group: &serde_json::Value, out: &mut Vec<Case>) {
        for case in group["test_cases"].as_array().into_iter().flatten() {
            let status = match case["status"].as_str().unwrap() {
                "PASS" => "PASS",
                "SKIP" => "SKIP",
                _ => "FAIL",
            };
            out.push((
                path.join("."),
                case["name"].as_str().unwrap().to_owned(),
                status.to_owned(),
            ));
        }
        for sub in group["sub_groups"].as_array().into_iter().flatten() {
            let mut here = path.to_vec();
            here.push(sub["name"].as_str().unwrap().to_owned());
            walk(&here, sub, out);
        }
    }
    let mut out = Vec::new();
    walk(&[], doc, &mut out);
    out
}

/// The subtests of a result in report.json as cases.
fn report_cases(result: &serde_json::Value) -> Vec<Case> {
    result["subtests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let suite: Vec<&str> = t["suite"]
                .as_array()
                .map(|s| s.iter().map(|p| p.as_str().unwrap()).collect())
                .unwrap_or_default();
            let name = t["name"].as_str().unwrap();
            let prefix = suite.join(".");
            let case = name
                .strip_prefix(&format!("{prefix}."))
                .unwrap_or(name)
                .to_owned();
            let status = match t["status"].as_str().unwrap() {
                "passed" => "PASS",
                "skipped" => "SKIP",
                other => panic!("{name}: {other}"),
            };
            (prefix, case, status.to_owned())
        })
        .collect()
}

/// `(passed, skipped, other)` of some cases.
fn tally(cases: &[Case]) -> (usize, usize, usize) {
    let n = |s: &str| cases.iter().filter(|c| c.2 == s).count();
    (n("PASS"), n("SKIP"), cases.len() - n("PASS") - n("SKIP"))
}

/// What `kunit.py parse --json` of the kernel's source tree makes of a kernel log.
fn kunit_py_parse(src: &Path, log: &Path, scratch: &Path) -> serde_json::Value {
    let out = scratch.join(format!(
        "{}.kunit.json",
        log.file_name().unwrap().to_string_lossy()
    ));
    let run = Command::new("python3")
        .arg(src.join("tools/testing/kunit/kunit.py"))
        .arg("parse")
        .arg(format!("--json={}", out.display()))
        .arg(log)
        .current_dir(src)
        .output()
        .expect("python3 runs");
    assert!(
        out.is_file(),
        "kunit.py parse wrote no JSON ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    json(&out)
}

/// `name="value"` of the `<testsuites>` element, as a number.
fn testsuites_attr(xml: &str, name: &str) -> u64 {
    let start = xml.find("<testsuites ").unwrap();
    let element = &xml[start..start + xml[start..].find('>').unwrap()];
    let at = element.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
    element[at..at + element[at..].find('"').unwrap()]
        .parse()
        .unwrap()
}

/// The stored kernel log (`dmesg.txt`) of a result in report.json.
fn kernel_log(result: &serde_json::Value) -> PathBuf {
    let artifact = result["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "dmesg.txt")
        .unwrap_or_else(|| panic!("no dmesg.txt: {result:#}"));
    PathBuf::from(artifact["path"].as_str().unwrap())
}

#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn kunit_kernels_are_judged_case_by_case_in_every_report() {
    let kernels = kernels();
    let expected = kunit_json_cases(&json(&kernels.join("a/kunit-run.json")));
    let (passed, skipped, failed) = tally(&expected);
    eprintln!(
        "kunit.py run reported {} cases for (a): {passed} passed, {skipped} skipped, {failed} \
         other",
        expected.len()
    );
    assert!(expected.len() > 40 && failed == 0, "{expected:?}");
    let list: Vec<Case> = expected
        .iter()
        .filter(|c| c.0 == "list-kunit-test")
        .cloned()
        .collect();
    assert!(!list.is_empty(), "{expected:?}");

    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("kunit.toml");
    std::fs::write(
        &plan,
        format!(
            r#"name = "kunit"

[run]
parallelism = 2

[defaults]
arch = "x86_64"
kunit = true
runner = "qemu"
timeout = "300s"

[[test]]
id = "kunit-a"
kernel = "{a}"

[[test]]
id = "kunit-list"
kernel = "{a}"
kernel-args = ["kunit.filter_glob=list-kunit-test"]

[[test]]
id = "kunit-b"
kernel = "{b}"
"#,
            a = kernels.join("a/bzImage").display(),
            b = kernels.join("b/bzImage").display(),
        ),
    )
    .unwrap();
    let out = dir.path().join("out");
    let bin = qorch_bin();
    let started = Instant::now();
    let output = Command::new(bin)
        .arg("run")
        .arg(&plan)
        .arg("--out")
        .arg(&out)
        // The kernel logs are read from the scratch directories the report names.
        .arg("--keep-scratch")
        .args(["--progress", "lines"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "campaign: {:.1} s\n{stdout}\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&output.stderr)
    );
    // (b) fails the run.
    assert_eq!(output.status.code(), Some(1), "{stdout}");

    let report = json(&out.join("latest/report.json"));
    let results = report["results"].as_array().unwrap();
    let by_id: BTreeMap<&str, &serde_json::Value> = results
        .iter()
        .map(|r| (r["test_id"].as_str().unwrap(), r))
        .collect();
    for (id, r) in &by_id {
        let phase = |name: &str| {
            r["phases"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["phase"] == name)
                .map(|p| {
                    let t = |k: &str| {
                        chrono::DateTime::parse_from_rfc3339(p[k].as_str().unwrap()).unwrap()
                    };
                    (t("finished_at") - t("started_at")).num_milliseconds() as f64 / 1000.0
                })
        };
        eprintln!(
            "{id}: {} ({}), boot {:?} s, test {:?} s, {} subtests, accelerator {}",
            r["outcome"]["kind"],
            r["message"],
            phase("boot"),
            phase("test"),
            r["subtests"].as_array().unwrap().len(),
            r["environment"]["accelerator"]
        );
    }

    // (a): the cases, their suite paths and statuses are kunit.py's, in the same order...
    let a = by_id["kunit-a"];
    assert_eq!(a["outcome"]["kind"], "passed", "{a:#}");
    let cmdline = a["environment"].to_string();
    assert!(
        cmdline.contains(" quiet"),
        "the default arguments: {cmdline}"
    );
    assert_eq!(report_cases(a), expected);
    // ... with times from the timestamps, and the suites' own results.
    assert!(
        a["subtests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["duration"].as_f64().is_some()),
        "{a:#}"
    );
    let suites: Vec<&str> = a["suites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for suite in ["example", "list-kunit-test"] {
        assert!(suites.contains(&suite), "{suites:?}");
    }
    assert!(
        a["suites"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "passed"),
        "{a:#}"
    );
    // ... and what kunit.py makes of the kernel log the runner stored.
    let src = kernels.join("src");
    let a_log = kernel_log(a);
    let parsed = kunit_json_cases(&kunit_py_parse(&src, &a_log, dir.path()));
    assert_eq!(parsed, expected, "kunit.py parse of {}", a_log.display());

    // The filter on the test's command line: the list suite alone.
    let filtered = by_id["kunit-list"];
    assert_eq!(filtered["outcome"]["kind"], "passed", "{filtered:#}");
    assert_eq!(report_cases(filtered), list);

    // (b): exactly one failed case, which fails its test and the run, in every report.
    let b = by_id["kunit-b"];
    assert_eq!(b["outcome"]["kind"], "subtests-failed", "{b:#}");
    let failed: Vec<&serde_json::Value> = b["subtests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1, "{b:#}");
    let failed_name = failed[0]["name"].as_str().unwrap();
    assert!(failed_name.starts_with("example."), "{failed_name}");
    assert_eq!(
        b["subtests"].as_array().unwrap().len(),
        expected.len(),
        "{b:#}"
    );
    assert!(
        b["message"].as_str().unwrap().contains(&format!(
            "1 of {} subtests failed: {failed_name}",
            expected.len()
        )),
        "{b:#}"
    );
    let b_parsed = kunit_json_cases(&kunit_py_parse(&src, &kernel_log(b), dir.path()));
    let b_failed: Vec<&Case> = b_parsed.iter().filter(|c| c.2 == "FAIL").collect();
    assert_eq!(b_failed.len(), 1, "{b_parsed:?}");
    assert_eq!(format!("{}.{}", b_failed[0].0, b_failed[0].1), failed_name);

    // report.json's summary.
    let summary = &report["summary"];
    assert_eq!(
        (&summary["total"], &summary["passed"], &summary["failed"]),
        (&3.into(), &2.into(), &1.into()),
        "{summary:#}"
    );
    let all = 2 * expected.len() + list.len();
    let all_skipped = 2 * skipped + list.iter().filter(|c| c.2 == "SKIP").count();
    assert_eq!(
        summary["subtests"],
        serde_json::json!({
            "total": all,
            "passed": all - all_skipped - 1,
            "failed": 1,
            "expected_failures": 0,
            "skipped": all_skipped,
        })
    );

    // junit.xml: the same counts, the failed case and its test as the only failures.
    let xml = std::fs::read_to_string(out.join("latest/junit.xml")).unwrap();
    assert_eq!(testsuites_attr(&xml, "tests"), 3 + all as u64);
    assert_eq!(testsuites_attr(&xml, "failures"), 2);
    assert_eq!(testsuites_attr(&xml, "errors"), 0);
    assert_eq!(testsuites_attr(&xml, "skipped"), all_skipped as u64);
    assert!(junit_case(&xml, "kunit-b").contains("<failure"));
    let case = junit_case(&xml, &format!("kunit-b/{failed_name}"));
    assert!(
        case.contains("<failure") && case.contains("classname=\"qemu.kunit-b.example\""),
        "{case}"
    );
    assert!(!junit_case(&xml, "kunit-a").contains("<failure"));

    // report.html: the run failed, (b) fails by its case, (a) passes with its cases.
    let html = std::fs::read_to_string(out.join("latest/report.html")).unwrap();
    assert!(html.contains("status bad\">FAILED<"));
    assert!(html.contains("2 passed, 1 failed"), "{html}");
    let described = format!(
        "{all} subtests: {} passed, 1 failed, {all_skipped} skipped",
        all - all_skipped - 1
    );
    assert!(html.contains(&described), "{described}");
    assert!(stdout.contains(&described), "{stdout}");
    assert!(html.contains(&format!(
        "Subtests <small>({} passed, 0 failed, {skipped} skipped, 0 todo)",
        expected.len() - skipped
    )));
    assert!(html.contains(&format!(
        "Subtests <small>({} passed, 1 failed, {skipped} skipped, 0 todo)",
        expected.len() - skipped - 1
    )));
}
