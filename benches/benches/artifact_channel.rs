//! Artifacts at channel speed, per architecture, in one run: the raw virtio-serial speed
//! (64 MiB written to the guest's artifact port with nothing around it, timed in the guest)
//! against 64 MiB of artifacts from the test's exit to the files unpacked and checked on the
//! host (the result's `artifacts-seconds`; the artifact store is not involved) in a guest of
//! its own, in a session guest and in a guest restored from a snapshot. Rounds alternate the
//! four so that all see the same machine load; every artifact is compared byte for byte with
//! what the guest wrote. Prints a table of medians (MB = 10^6 bytes) and the ratios to raw.
//!
//! `ORCH_BENCH_ARCHS` (a comma list; aarch64 and x86_64 by default), `ORCH_BENCH_ROUNDS` (3),
//! `ORCH_BENCH_MIB` (64).

use std::path::Path;
use std::time::Duration;

use orchestrator_core::{
    Arch, ExecutionContext, Outcome, Requirements, TestCase, TestResult, TestRunner,
};
use qemu_runner::{QemuConfig, QemuRunner};

use testkit::{MAKE_BLOB, blob as expected};

fn case(arch: Arch, id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    TestCase::script(&format!("{id}@{arch}"), script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(300))
}

async fn run(runner: &QemuRunner, case: &TestCase, dir: &Path) -> TestResult {
    std::fs::create_dir_all(dir).unwrap();
    let ctx = ExecutionContext::new(case, dir);
    let r = runner.execute(case, &ctx).await.expect("runner works");
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    r
}

/// 64 MiB written to the port by `cat` from a file in the guest's memory, timed in the guest
/// (`/proc/uptime`, 10 ms steps). The host reads it as bytes that are no archive (and drops
/// them): nothing is unpacked.
async fn raw(runner: &QemuRunner, arch: Arch, bytes: usize, dir: &Path) -> f64 {
    let script = format!(
        r#"BYTES={bytes} OUT=/tmp/blob
{MAKE_BLOB}
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name")" = org.orch.artifacts ] && port=/dev/${{p##*/}}
done
[ -c "$port" ] || {{ echo "no artifact port" >&2; exit 1; }}
read a rest </proc/uptime
cat /tmp/blob >"$port"
read b rest </proc/uptime
echo "raw $a $b""#
    );
    // An artifact pattern that matches nothing: the guest gets the port.
    let c = case(arch, "raw", &script).with_artifact("nothing-here");
    let r = run(runner, &c, dir).await;
    let line = r
        .stdout
        .text
        .lines()
        .find_map(|l| l.strip_prefix("raw "))
        .unwrap_or_else(|| panic!("no timing: {r:#?}"))
        .to_owned();
    let (a, b) = line.split_once(' ').unwrap();
    let secs: f64 = b.parse::<f64>().unwrap() - a.parse::<f64>().unwrap();
    bytes as f64 / secs.max(0.01) / 1e6
}

/// 64 MiB of artifacts: MB/s from the test's exit to the file unpacked on the host, checked
/// byte for byte here.
async fn artifacts(runner: &QemuRunner, arch: Arch, bytes: usize, dir: &Path, want: &[u8]) -> f64 {
    let script = format!("BYTES={bytes} OUT=blob.bin\n{MAKE_BLOB}\n");
    let c = case(arch, "blob", &script).with_artifact("blob.bin");
    let r = run(runner, &c, dir).await;
    assert_eq!(
        r.environment.get("artifact-channel").map(String::as_str),
        Some("virtio-serial"),
        "{r:#?}"
    );
    let file = r
        .artifacts
        .iter()
        .find(|a| a.name == "files/blob.bin")
        .unwrap_or_else(|| panic!("no blob: {r:#?}"));
    assert_eq!(file.size, bytes as u64);
    assert!(
        std::fs::read(&file.path).unwrap() == want,
        "the blob differs"
    );
    // The files' time (the streams sent after them over the console, the whole log since boot
    // in a guest of its own, are in `transfer-seconds`).
    let secs: f64 = r.environment["artifacts-seconds"].parse().unwrap();
    // The next round's files go in the same scratch: this one's are no longer needed.
    let _ = std::fs::remove_dir_all(dir);
    bytes as f64 / secs / 1e6
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[tokio::main]
async fn main() {
    if !benches::under_cargo_bench("artifact_channel") {
        return;
    }
    let archs = benches::archs(&[Arch::Aarch64, Arch::X86_64]);
    let rounds = benches::env_num("ORCH_BENCH_ROUNDS", 3);
    let mib = benches::env_num("ORCH_BENCH_MIB", 64);
    let bytes = mib << 20;
    let want = expected(bytes);
    let scratch = tempfile::tempdir().unwrap();
    println!(
        "| arch | raw virtio-serial, {mib} MiB | own guest | ÷ raw | session | ÷ raw | restored snapshot | ÷ raw |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for arch in archs {
        let alone = QemuRunner::new(QemuConfig::new());
        let session = QemuRunner::new(QemuConfig::new().with_session(true));
        let snapshot = QemuRunner::new(QemuConfig::new().with_snapshot_reset(true));
        let d = |tag: &str, i: usize| scratch.path().join(format!("{arch}-{tag}-{i}"));
        // Warm-up: the base initramfs built, the session guest booted, the snapshot taken.
        for (tag, runner) in [
            ("alone", &alone),
            ("session", &session),
            ("snapshot", &snapshot),
        ] {
            run(runner, &case(arch, "warm", "true"), &d(tag, 99)).await;
        }
        let (mut r, mut a, mut s, mut n) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..rounds {
            r.push(raw(&alone, arch, bytes, &d("raw", i)).await);
            a.push(artifacts(&alone, arch, bytes, &d("alone", i), &want).await);
            s.push(artifacts(&session, arch, bytes, &d("session", i), &want).await);
            n.push(artifacts(&snapshot, arch, bytes, &d("snapshot", i), &want).await);
            eprintln!(
                "{arch} round {}: raw {:.1}, own guest {:.1}, session {:.1}, snapshot {:.1} MB/s",
                i + 1,
                r[i],
                a[i],
                s[i],
                n[i]
            );
        }
        session.cleanup().await.unwrap();
        snapshot.cleanup().await.unwrap();
        let raw_m = median(&mut r);
        let mut row = vec![
            arch.to_string(),
            format!("{:.1} MB/s ({:.1}–{:.1})", raw_m.1, raw_m.0, raw_m.2),
        ];
        for v in [&mut a, &mut s, &mut n] {
            let (lo, mid, hi) = median(v);
            row.push(format!("{mid:.1} MB/s ({lo:.1}–{hi:.1})"));
            row.push(format!("{:.2}", mid / raw_m.1));
        }
        println!("| {} |", row.join(" | "));
    }
}
