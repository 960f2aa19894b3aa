//! End-to-end tests of `qorch store ...` and `qorch provision`, on stores that real campaigns
//! (`qorch run`) made: host processes here, an aarch64 QEMU guest in the heavy test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

mod support;
use support::{qorch, text};

/// `qorch store --store STORE ARGS...`.
fn store_cmd(store: &Path, args: &[&str]) -> Output {
    qorch()
        .arg("store")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .unwrap()
}

/// Runs `args` on `store`; asserts the exit code; returns stdout.
fn ok(store: &Path, args: &[&str]) -> String {
    let out = store_cmd(store, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "qorch store {args:?}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs `args` on `store`, expecting exit code `code`; returns stderr.
fn fails(store: &Path, args: &[&str], code: i32) -> String {
    let out = store_cmd(store, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "qorch store {args:?}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

/// Runs `plan` with `qorch run` into `out` (its store in `<out>/store`); returns the run id.
fn campaign(plan: &Path, out: &Path, want: i32) -> String {
    let output = qorch()
        .arg("run")
        .arg(plan)
        .arg("--out")
        .arg(out)
        .args(["--progress", "quiet"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(want),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let report = json(&std::fs::read_to_string(out.join("latest/report.json")).unwrap());
    report["run_id"].as_str().unwrap().to_owned()
}

/// Every file below `dir` with the BLAKE3 digest of its content; SQLite's WAL index and an
/// empty WAL, which any reader of a WAL database may leave, aside.
fn digests(dir: &Path) -> BTreeMap<PathBuf, String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .map(Result::unwrap)
        .filter(|e| e.file_type().is_file())
        .filter(|e| {
            let name = e.file_name().to_string_lossy();
            !(name.ends_with("-shm") || name.ends_with("-wal") && e.metadata().unwrap().len() == 0)
        })
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            (
                e.path().strip_prefix(dir).unwrap().to_owned(),
                blake3::hash(&bytes).to_hex().to_string(),
            )
        })
        .collect()
}

/// The ids of `ls --json` output.
fn ids(listing: &str) -> Vec<String> {
    json(listing)
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_store_subcommand_on_the_store_of_a_host_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"store-cli\"\n\
         [[test]]\nid = \"pass\"\nscript = \"echo hello-pass > $ORCH_ARTIFACT_DIR/out.log; \
         head -c 100000 /dev/urandom > $ORCH_ARTIFACT_DIR/blob.bin\"\n\
         [[test]]\nid = \"fail\"\nscript = \"echo hello-fail > $ORCH_ARTIFACT_DIR/out.log; exit 3\"\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let first = campaign(&plan, &out, 1);
    let second = campaign(&plan, &out, 1);
    let store = out.join("store");

    // Read commands change nothing: every file of the store digests the same afterwards.
    let before = digests(&store);
    let all = ok(&store, &["ls", "--json"]);
    // out.log, metrics and result of each test, pass's blob.bin and the run's report, in each
    // of two runs.
    assert_eq!(ids(&all).len(), 16, "{all}");
    let table = ok(&store, &["ls"]);
    for want in [
        "id", "test", "run", "kind", &first, &second, "out.log", "blob.bin",
    ] {
        assert!(table.contains(want), "`{want}` missing:\n{table}");
    }
    // Filters.
    let logs = ok(
        &store,
        &["query", "--test", "pass", "--kind", "log", "--json"],
    );
    assert_eq!(ids(&logs).len(), 2, "{logs}");
    let of_first = json(&ok(&store, &["ls", "--run", &first, "--json"]));
    assert_eq!(of_first.as_array().unwrap().len(), 8);
    assert!(
        of_first
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["run_id"] == *first)
    );
    let failed = json(&ok(&store, &["ls", "--outcome", "failed", "--json"]));
    assert_eq!(failed.as_array().unwrap().len(), 6, "{failed:#}");
    assert!(
        failed
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["test_id"] == "fail")
    );
    assert_eq!(
        ids(&ok(&store, &["ls", "--since", "1h", "--json"])).len(),
        16
    );
    assert_eq!(
        ids(&ok(&store, &["ls", "--until", "1h", "--json"])).len(),
        0
    );
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        ids(&ok(&store, &["ls", "--until", &future, "--json"])).len(),
        16
    );
    // Every test's records say their runner; the run's report does not.
    assert_eq!(
        ids(&ok(&store, &["ls", "--meta", "runner=process", "--json"])).len(),
        14
    );
    assert_eq!(
        ids(&ok(&store, &["ls", "--meta", "runner=qemu", "--json"])).len(),
        0
    );
    let newest = json(&ok(&store, &["ls", "--newest", "--limit", "1", "--json"]));
    assert_eq!(newest[0]["run_id"], *second, "{newest:#}");
    let limited = ok(&store, &["ls", "--limit", "3"]);
    assert_eq!(limited.lines().count(), 5, "{limited}");
    assert!(limited.contains("first 3 records"), "{limited}");
    // Bad filters are clear errors.
    let e = fails(&store, &["ls", "--kind", "nonsense"], 2);
    assert!(e.contains("unknown kind `nonsense`"), "{e}");
    let e = fails(&store, &["ls", "--since", "yesterday-ish"], 2);
    assert!(e.contains("--since `yesterday-ish`"), "{e}");

    // cat and get: the verified content.
    let log_id = &ids(&logs)[0];
    let cat = store_cmd(&store, &["cat", log_id]);
    assert_eq!(cat.stdout, b"hello-pass\n");
    let blob = json(&ok(
        &store,
        &[
            "ls", "--test", "pass", "--run", &second, "--json", "--limit", "10",
        ],
    ));
    let blob = blob
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "blob.bin")
        .unwrap()
        .clone();
    let blob_id = blob["id"].as_str().unwrap();
    let saved = dir.path().join("saved.bin");
    let said = ok(&store, &["get", blob_id, "-o", saved.to_str().unwrap()]);
    assert!(said.contains("verified"), "{said}");
    let content = std::fs::read(&saved).unwrap();
    assert_eq!(content.len(), 100_000);
    assert_eq!(
        blake3::hash(&content).to_hex().as_str(),
        blob["digest"].as_str().unwrap()
    );
    // Unknown ids.
    let e = fails(&store, &["cat", "no-such-id"], 2);
    assert!(e.contains("artifact no-such-id not found"), "{e}");
    assert!(e.contains("qorch store ls"), "{e}");
    fails(&store, &["get", "no-such-id", "-o", "/dev/null"], 2);

    // verify, gc --dry-run, stats.
    assert!(ok(&store, &["verify"]).contains("the store is intact"));
    let gc = ok(&store, &["gc", "--dry-run"]);
    assert!(gc.contains("would remove 0 blobs"), "{gc}");
    let stats = json(&ok(&store, &["stats", "--json"]));
    assert_eq!(stats["live_records"], 16, "{stats:#}");
    let stats = ok(&store, &["stats"]);
    for want in [
        "records: 16 live",
        "dedup",
        "by kind:",
        "by test:",
        "metrics",
    ] {
        assert!(stats.contains(want), "`{want}` missing:\n{stats}");
    }

    // retention --dry-run: every artifact, keep or remove, with its reason; from flags...
    let dry = ok(&store, &["retention", "--dry-run", "--keep-last-runs", "1"]);
    let rows: Vec<&str> = dry
        .lines()
        .filter(|l| l.starts_with("keep") || l.starts_with("remove"))
        .collect();
    assert_eq!(rows.len(), 16, "{dry}");
    for row in &rows {
        if row.contains(&first) {
            assert!(row.starts_with("remove"), "{row}");
            assert!(row.contains("not among the last 1 runs"), "{row}");
        } else {
            assert!(row.starts_with("keep"), "{row}");
            assert!(row.contains("among the last 1 runs"), "{row}");
        }
    }
    assert!(dry.contains("8 would be removed"), "{dry}");
    // ...or from the plan's [store.retention].
    let retention_plan = dir.path().join("retention.toml");
    std::fs::write(
        &retention_plan,
        format!(
            "[store]\npath = \"{}\"\n[store.retention]\nkeep-last-runs = 1\npin-runs = [\"{first}\"]\n\
             [[test]]\nid = \"x\"\nscript = \"true\"\n",
            store.display()
        ),
    )
    .unwrap();
    let pinned = qorch()
        .args(["store", "retention", "--dry-run", "--json", "--plan"])
        .arg(&retention_plan)
        .output()
        .unwrap();
    assert!(pinned.status.success(), "{}", text(&pinned.stderr));
    let pinned = json(&text(&pinned.stdout));
    let decisions = pinned["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 16);
    assert!(decisions.iter().all(|d| d["keep"] == true), "{pinned:#}");
    assert!(
        decisions
            .iter()
            .any(|d| d["reason"].as_str().unwrap().contains("pinned")),
        "{pinned:#}"
    );
    let e = fails(&store, &["retention", "--dry-run"], 2);
    assert!(e.contains("no retention rules"), "{e}");

    // export: a bundle of pass's artifacts.
    let bundle = dir.path().join("pass.tar.zst");
    let said = ok(
        &store,
        &[
            "export",
            "test=pass",
            "kind=log",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(said.contains("exported 2 records"), "{said}");
    let e = fails(&store, &["export", "colour=blue", "-o", "/dev/null"], 2);
    assert!(e.contains("unknown key `colour`"), "{e}");

    assert_eq!(before, digests(&store), "a read command changed the store");

    // import into a new store.
    let imported = dir.path().join("imported");
    let said = ok(&imported, &["import", bundle.to_str().unwrap()]);
    assert!(said.contains("2 records added"), "{said}");
    let listing = ok(&imported, &["ls", "--json"]);
    assert_eq!(ids(&listing).len(), 2);
    assert_eq!(
        store_cmd(&imported, &["cat", log_id]).stdout,
        b"hello-pass\n"
    );

    // push to a remote, pull into a fresh store, read through it.
    let remote = format!("file://{}", dir.path().join("remote").display());
    let said = ok(&store, &["push", "--remote", &remote]);
    assert!(said.contains("pushed 2 runs"), "{said}");
    let pulled = dir.path().join("pulled");
    let said = ok(&pulled, &["pull", "--remote", &remote]);
    assert!(said.contains("16 records added"), "{said}");
    assert_eq!(ids(&ok(&pulled, &["ls", "--json"])).len(), 16);
    let e = fails(&pulled, &["cat", log_id], 2);
    assert!(e.contains("give --remote URL"), "{e}");
    assert_eq!(
        store_cmd(&pulled, &["cat", log_id, "--remote", &remote]).stdout,
        b"hello-pass\n"
    );
    let e = fails(&store, &["push"], 2);
    assert!(e.contains("no remote"), "{e}");

    // A directory that is not a store: a clear error, and nothing is created in it.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for args in [&["ls"][..], &["stats"], &["verify"], &["cat", log_id]] {
        let e = fails(&empty, args, 2);
        assert!(e.contains("is not an artifact store"), "{e}");
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    let missing = dir.path().join("missing");
    let e = fails(&missing, &["ls"], 2);
    assert!(e.contains("does not exist"), "{e}");
    assert!(!missing.exists());

    // A corrupt blob: reading it names the artifact and the repair; verify finds it.
    let blob_file = walkdir::WalkDir::new(store.join("content-v1"))
        .into_iter()
        .map(Result::unwrap)
        .find(|e| {
            e.file_type().is_file()
                && e.file_name().to_str() == Some(blob["digest"].as_str().unwrap())
        })
        .expect("blob.bin is a blob file")
        .into_path();
    let mut bytes = std::fs::read(&blob_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob_file, &bytes).unwrap();
    let e = fails(&store, &["cat", blob_id], 2);
    assert!(e.contains(blob_id), "{e}");
    assert!(e.contains("corrupt"), "{e}");
    assert!(e.contains("qorch store verify --repair"), "{e}");
    let out = store_cmd(&store, &["get", blob_id, "-o", "/tmp/never-written"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new("/tmp/never-written").exists());
    let verify = store_cmd(&store, &["verify"]);
    assert_eq!(verify.status.code(), Some(1));
    let said = text(&verify.stdout);
    assert!(
        said.contains("corrupt blob") && said.contains(blob_id),
        "{said}"
    );
    assert!(said.contains("qorch store verify --repair"), "{said}");
    let repaired = store_cmd(&store, &["verify", "--repair"]);
    assert!(text(&repaired.stdout).contains("repaired"));
    assert!(!blob_file.exists(), "the corrupt blob is quarantined");
    assert!(ok(&store, &["verify"]).contains("the store is intact"));
    let e = fails(&store, &["cat", blob_id], 2);
    assert!(e.contains("blob corrupt"), "{e}");

    // Applying retention evicts the first run's blobs; their records stay. (The repaired
    // blob.bin of the second run is evicted already.)
    let applied = ok(&store, &["retention", "--keep-last-runs", "1"]);
    assert!(applied.contains("8 records evicted"), "{applied}");
    assert_eq!(ids(&ok(&store, &["ls", "--json"])).len(), 7);
    let evicted = ok(&store, &["ls", "--evicted", "--run", &first]);
    assert!(evicted.contains("(evicted)"), "{evicted}");
    assert!(ok(&store, &["gc"]).contains("removed"));
}

#[test]
fn provision_dry_run_says_what_and_where_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = qorch()
        .args([
            "provision",
            "--dry-run",
            "--no-qemu",
            "--arch",
            "aarch64,riscv64",
            "--cache",
        ])
        .arg(&cache)
        .output()
        .unwrap();
    let said = text(&out.stdout);
    assert!(out.status.success(), "{said}{}", text(&out.stderr));
    assert!(
        said.contains(&format!("guest image cache: {}", cache.display())),
        "{said}"
    );
    for arch in ["aarch64", "riscv64"] {
        assert!(said.contains(&format!("{arch}: would download")), "{said}");
    }
    assert!(!said.contains("x86_64"), "{said}");
    assert!(!cache.exists(), "a dry run created {}", cache.display());
    // A bad architecture is a clear error.
    let out = qorch()
        .args(["provision", "--dry-run", "--arch", "sparc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("sparc"), "{}", text(&out.stderr));
}

/// One small aarch64 campaign (two tests, one boot each) and every store subcommand on its
/// store; `provision` finds the provisioned image up to date.
#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn every_store_subcommand_on_the_store_of_an_aarch64_campaign() {
    let said = qorch()
        .args(["provision", "--arch", "aarch64"])
        .output()
        .unwrap();
    assert!(said.status.success(), "{}", text(&said.stderr));
    assert!(
        text(&said.stdout).contains("aarch64: up to date"),
        "{}",
        text(&said.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"store-qemu\"\n[defaults]\nrunner = \"qemu\"\narch = \"aarch64\"\ntimeout = \"180s\"\n\
         [[test]]\nid = \"uname\"\nscript = \"uname -m > out.log\"\nartifacts = [\"out.log\"]\n\
         [[test]]\nid = \"fails\"\nscript = \"echo guest-failure > /dev/console; exit 1\"\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = campaign(&plan, &out, 1);
    let store = out.join("store");
    let before = digests(&store);

    let consoles = ok(
        &store,
        &["ls", "--arch", "aarch64", "--kind", "console", "--json"],
    );
    let consoles = json(&consoles);
    let consoles = consoles.as_array().unwrap();
    assert!(consoles.len() >= 2, "{consoles:#?}");
    let failing = consoles
        .iter()
        .find(|r| r["test_id"] == "fails" && r["outcome"] == "failed")
        .unwrap_or_else(|| panic!("no console log of fails: {consoles:#?}"));
    let console = store_cmd(&store, &["cat", failing["id"].as_str().unwrap()]);
    assert!(text(&console.stdout).contains("guest-failure"));
    let outlog = json(&ok(
        &store,
        &["ls", "--test", "uname", "--run", &run, "--json"],
    ));
    let outlog = outlog
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "files/out.log")
        .unwrap()
        .clone();
    assert_eq!(
        store_cmd(&store, &["cat", outlog["id"].as_str().unwrap()]).stdout,
        b"aarch64\n"
    );
    let saved = dir.path().join("out.log");
    ok(
        &store,
        &[
            "get",
            outlog["id"].as_str().unwrap(),
            "-o",
            saved.to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(&saved).unwrap(), b"aarch64\n");
    assert!(ok(&store, &["verify"]).contains("intact"));
    assert!(ok(&store, &["gc", "--dry-run"]).contains("would remove"));
    assert!(ok(&store, &["stats"]).contains("uname"));
    // Every artifact older than the 1 s max age below.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let dry = ok(
        &store,
        &[
            "retention",
            "--dry-run",
            "--max-age",
            "1s",
            "--keep-failures-for",
            "7d",
        ],
    );
    let rows: Vec<&str> = dry
        .lines()
        .filter(|l| l.starts_with("keep") || l.starts_with("remove"))
        .collect();
    assert!(!rows.is_empty(), "{dry}");
    for row in rows {
        if row.contains("fails") {
            assert!(row.starts_with("keep"), "failures are kept: {row}");
        } else {
            assert!(row.starts_with("remove"), "older than 1s: {row}");
        }
    }
    let bundle = dir.path().join("b.tar.zst");
    ok(
        &store,
        &[
            "export",
            "arch=aarch64",
            "kind=console",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert_eq!(before, digests(&store), "a read command changed the store");

    let imported = dir.path().join("imported");
    ok(&imported, &["import", bundle.to_str().unwrap()]);
    assert_eq!(ids(&ok(&imported, &["ls", "--json"])).len(), consoles.len());
    let remote = format!("file://{}", dir.path().join("remote").display());
    ok(&store, &["push", "--remote", &remote, "--run", &run]);
    let pulled = dir.path().join("pulled");
    ok(&pulled, &["pull", "--remote", &remote]);
    let id = failing["id"].as_str().unwrap();
    let e = fails(&pulled, &["cat", id], 2);
    assert!(e.contains("give --remote URL"), "{e}");
    let through = store_cmd(&pulled, &["--remote", &remote, "cat", id]);
    assert!(through.status.success(), "{}", text(&through.stderr));
    assert!(
        text(&through.stdout) == text(&console.stdout),
        "not the same console log"
    );
}

/// `cat` of content with a tree: written piece by piece, each verified first; a damaged piece
/// stops the output before any of its bytes, naming the artifact and the repair.
#[test]
fn cat_streams_large_content_verified_piece_by_piece() {
    use orchestrator_core::artifact_store::{ArtifactKind, ArtifactStore, NewArtifact};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let data = testkit::noise(2 << 20, 5);
    let s = ArtifactStore::open(&root).unwrap();
    let r = s
        .add_bytes(
            NewArtifact::new("t", "run-1", ArtifactKind::Other, "big.bin"),
            &data,
        )
        .unwrap();
    let blob = s.blob_path(&r.digest);
    drop(s);
    let out = store_cmd(&root, &["cat", &r.id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout == data, "cat gave {} bytes", out.stdout.len());

    // Without its tree (as an earlier version wrote it), the blob is no damage; `verify
    // --repair` makes the tree, so `cat` streams again (below).
    std::fs::remove_dir_all(root.join("trees-v1")).unwrap();
    let said = ok(&root, &["verify"]);
    assert!(
        said.contains("1 blobs of 256 KiB or more have no tree"),
        "{said}"
    );
    assert!(said.contains("the store is intact"), "{said}");
    assert!(!root.join("trees-v1").exists(), "a check writes nothing");
    let said = ok(&root, &["verify", "--repair"]);
    assert!(said.contains("trees written for 1 blobs"), "{said}");
    assert!(!said.contains("have no tree"), "{said}");
    let said = ok(&root, &["verify"]);
    assert!(!said.contains("tree"), "{said}");

    let mut bytes = std::fs::read(&blob).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 0x01;
    std::fs::write(&blob, &bytes).unwrap();
    let out = store_cmd(&root, &["cat", &r.id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !out.stdout.is_empty() && out.stdout.len() < data.len() && data.starts_with(&out.stdout),
        "what was written before the damage is the content ({} bytes)",
        out.stdout.len()
    );
    let e = text(&out.stderr);
    assert!(e.contains(&r.id) && e.contains("corrupt"), "{e}");
    assert!(e.contains("qorch store verify --repair"), "{e}");
}
