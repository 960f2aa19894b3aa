//! Artifacts over the virtio artifact port in session guests and restored snapshots: byte-exact,
//! each test's archive in its own directory, a port a test scribbled on given up (and the guest
//! with it), and the serial console still the fallback.
//!
//! They need QEMU and the provisioned images, which `cargo xtask test` installs before running
//! them; plain `cargo test` skips them as ignored.

use std::time::Duration;

use orchestrator_core::{
    Arch, CancellationToken, Outcome, Requirements, RunReport, TestCase, TestResult,
};
use qemu_runner::QemuConfig;

use testkit::{MAKE_BLOB, blob};

mod support;
use support::by;

fn case(arch: Arch, id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    TestCase::script(&format!("{id}@{arch}"), script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(240))
}

/// A test writing a blob of `bytes` and a small nested file naming the test, both artifacts.
fn with_blob(arch: Arch, id: &str, bytes: usize) -> TestCase {
    let script = format!(
        "BYTES={bytes} OUT=blob.bin\n{MAKE_BLOB}\nmkdir -p sub/dir\necho {id} >sub/dir/who.txt\n"
    );
    case(arch, id, &script)
        .with_artifact("blob.bin")
        .with_artifact("sub")
}

async fn run(config: QemuConfig, cases: Vec<TestCase>) -> (RunReport, Option<tempfile::TempDir>) {
    let keys = ["transfer-seconds", "artifacts-seconds"];
    support::run_cases(config, cases, CancellationToken::new(), &keys).await
}

/// The test's blob and nested file arrived byte for byte over `channel`, and nothing else.
fn check_blob(r: &TestResult, id: &str, bytes: usize, channel: &str) {
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    assert_eq!(r.environment["artifact-channel"], channel, "{r:#?}");
    let files: Vec<&str> = r
        .artifacts
        .iter()
        .map(|a| a.name.as_str())
        .filter(|n| n.starts_with("files/"))
        .collect();
    assert_eq!(files, ["files/blob.bin", "files/sub/dir/who.txt"], "{r:#?}");
    let read = |name: &str| {
        let a = r.artifacts.iter().find(|a| a.name == name).unwrap();
        std::fs::read(&a.path).unwrap()
    };
    assert!(
        read("files/blob.bin") == blob(bytes),
        "{id}: the blob differs"
    );
    assert_eq!(
        read("files/sub/dir/who.txt"),
        format!("{id}\n").into_bytes()
    );
    let message = r.message.as_deref().unwrap_or("");
    assert!(!message.contains("artifact"), "{message}");
    // Over the port, the files' own time is recorded: never after the whole transfer's.
    if channel == "virtio-serial" {
        let secs = |key: &str| -> f64 {
            r.environment
                .get(key)
                .unwrap_or_else(|| panic!("{id}: no {key}: {r:#?}"))
                .parse()
                .unwrap()
        };
        assert!(
            secs("artifacts-seconds") <= secs("transfer-seconds"),
            "{id}: {r:#?}"
        );
    }
}

/// A session guest sends test after test's archive over one port connection; a test that
/// writes to the port itself costs its guest (the stream cannot be followed), not the next
/// test's artifacts.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn session_guests_send_artifacts_over_the_virtio_port() {
    let arch = Arch::Aarch64;
    // More than the serial console's limit (4 MiB): only the port can carry it.
    let big = 6 << 20;
    let scribble = r#"for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name")" = org.orch.artifacts ] && echo not-an-archive >/dev/${p##*/}
done
echo scribbled"#;
    let cases = vec![
        with_blob(arch, "first", big),
        case(arch, "none", "echo no artifacts"),
        with_blob(arch, "third", 100_000),
        case(arch, "scribble", scribble).with_artifact("nothing"),
        with_blob(arch, "after", big),
    ];
    let (report, _scratch) = run(QemuConfig::new().with_session(true), cases).await;
    check_blob(by(&report, "first"), "first", big, "virtio-serial");
    assert_eq!(by(&report, "none").outcome, Outcome::Passed);
    check_blob(by(&report, "third"), "third", 100_000, "virtio-serial");
    let guest = |id: &str| by(&report, id).environment["session"].clone();
    assert!(
        guest("third").starts_with("guest 1, test 3"),
        "{}",
        guest("third")
    );
    let scribbled = by(&report, "scribble");
    assert_eq!(scribbled.outcome, Outcome::Passed, "{scribbled:#?}");
    let message = scribbled.message.as_deref().unwrap_or("");
    assert!(
        message.contains("the artifact port was given up")
            && message.contains("session guest 1 was stopped"),
        "{message}"
    );
    check_blob(by(&report, "after"), "after", big, "virtio-serial");
    assert!(
        guest("after").starts_with("guest 2, test 1"),
        "{}",
        guest("after")
    );
}

/// Every guest restored from a snapshot reconnects the saved guest's port.
async fn snapshot_artifacts(arch: Arch) {
    let big = 6 << 20;
    let cases = vec![
        case(arch, "warm", "true"),
        with_blob(arch, "one", big),
        with_blob(arch, "two", 200_000),
    ];
    let (report, _scratch) = run(QemuConfig::new().with_snapshot_reset(true), cases).await;
    for id in ["one", "two"] {
        let r = by(&report, id);
        assert!(r.environment.contains_key("snapshot-restore"), "{r:#?}");
    }
    check_blob(by(&report, "one"), "one", big, "virtio-serial");
    check_blob(by(&report, "two"), "two", 200_000, "virtio-serial");
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn restored_aarch64_guests_send_artifacts_over_the_virtio_port() {
    snapshot_artifacts(Arch::Aarch64).await;
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn restored_x86_64_guests_send_artifacts_over_the_virtio_port() {
    snapshot_artifacts(Arch::X86_64).await;
}

/// Without the port (`virtio_artifacts = false`), session and restored guests send their
/// artifacts over the serial console, byte for byte.
#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn the_serial_console_stays_the_fallback() {
    let arch = Arch::Aarch64;
    let mut session = QemuConfig::new().with_session(true);
    session.virtio_artifacts = false;
    let mut snapshot = QemuConfig::new().with_snapshot_reset(true);
    snapshot.virtio_artifacts = false;
    for config in [session, snapshot] {
        let cases = vec![
            with_blob(arch, "serial1", 60_000),
            with_blob(arch, "serial2", 30_000),
        ];
        let (report, _scratch) = run(config, cases).await;
        check_blob(by(&report, "serial1"), "serial1", 60_000, "serial-console");
        check_blob(by(&report, "serial2"), "serial2", 30_000, "serial-console");
    }
}
