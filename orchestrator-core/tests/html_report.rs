//! The HTML report of a real run, opened in Debian's headless Chromium: the dumped DOM holds the
//! summary, every test and the plots, and the screenshot is a rendered page, not a blank one.
//!
//! The page and the screenshot stay in `target/html-report-check/` for a human to look at.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use orchestrator_core::artifact_store::ArtifactStore;
use orchestrator_core::perf_monitor::{Monitor, MonitorConfig};
use orchestrator_core::{
    Orchestrator, ProcessRunner, RunConfig, RunReport, Subtest, SubtestStatus, TestCase, Verdict,
};
use testkit::chromium::headless;

/// What a hostile guest could print; must stay text.
const HOSTILE: &str = "</pre><script>alert(1)</script><img src=x onerror=alert(2)>";

/// About a second of CPU in a child shell, stopped by `timeout` (scripts run with `sh -e`).
const BURN: &str = "timeout 1 sh -c 'while :; do :; done' || true";

/// Memory growing to about 48 MiB in steps of 1 MiB.
const GROW: &str = "awk 'BEGIN { s = \"xxxxxxxxxxxxxxxx\"; for (i = 0; i < 16; i++) s = s s; \
                    while (length(a) < 48 * 1048576) a = a s; print length(a) }'";

fn cases() -> Vec<TestCase> {
    vec![
        TestCase::script(
            "busy@x86_64",
            &format!("{BURN}; {GROW}; echo done > out.log"),
        )
        .with_artifact("*.log")
        .with_timeout(Duration::from_secs(60)),
        TestCase::script(
            "fails@aarch64",
            &format!(
                "{BURN}; echo 'assertion failed: expected 4, got 5' > why.txt; \
                 echo 'mm/slub.c:42: assertion failed' >&2; exit 3"
            ),
        )
        .with_artifact("why.txt")
        .with_timeout(Duration::from_secs(60)),
        // Lives long enough to be sampled a few times.
        TestCase::script(
            "quick@riscv64",
            "sleep 0.3; echo '# KTAP version 1'; echo ok 1 - case",
        )
        .with_timeout(Duration::from_secs(60)),
    ]
}

/// Where the page and the screenshot are kept: `<target dir>/html-report-check`.
fn check_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir is inside the target dir")
        .join("html-report-check")
}

async fn run_campaign(dir: &Path) -> RunReport {
    let mut report = Orchestrator::new(RunConfig::new(dir.join("scratch")))
        .with_runner(ProcessRunner::default())
        .with_store(ArtifactStore::open(dir.join("store")).unwrap())
        .with_monitor(Monitor::new(
            MonitorConfig::default().with_interval(Duration::from_millis(20)),
        ))
        .run(cases())
        .await
        .unwrap();
    // What the QEMU runner adds that the host-process runner does not: the guest's
    // architecture, its console and the KTAP cases it reported.
    for r in &mut report.results {
        let arch = r.test_id.as_str().split_once('@').unwrap().1.to_owned();
        r.environment.insert("arch".into(), arch);
    }
    let quick = &mut report.results[2];
    quick.console_excerpt = Some(format!(
        "[    0.000000] Linux version 6.1.0-28-riscv64\n\u{1b}[1;31m{HOSTILE}\u{1b}[0m\r\n\
         [    1.234567] KTAP version 1\n[    1.234600] ok 1 - example.case\n"
    ));
    quick.subtests = vec![
        Subtest {
            name: "example.case".into(),
            status: SubtestStatus::Passed,
            message: None,
            suite: Vec::new(),
            duration: None,
        },
        Subtest {
            name: "example.skipped".into(),
            status: SubtestStatus::Skipped,
            message: Some("no hardware".into()),
            suite: Vec::new(),
            duration: None,
        },
    ];
    report
}

/// The decoded screenshot: width, height and RGB pixels.
fn decode_png(path: &Path) -> (usize, usize, Vec<[u8; 3]>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{info:?}");
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let pixels = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    (info.width as usize, info.height as usize, pixels)
}

fn near(p: [u8; 3], c: [u8; 3]) -> bool {
    p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 12)
}

#[test]
#[ignore = "needs Debian's chromium: run `cargo xtask test`, which installs it"]
fn the_report_renders_in_headless_chromium() {
    let browser = testkit::chromium::chromium();
    let dir = check_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run_campaign(&dir));
    let verdicts: Vec<Verdict> = report.results.iter().map(|r| r.verdict()).collect();
    assert_eq!(
        verdicts,
        [Verdict::Passed, Verdict::Failed, Verdict::Passed],
        "{report:#?}"
    );
    for r in &report.results[..2] {
        let usage = r.resources.as_ref().unwrap_or_else(|| panic!("{r:#?}"));
        assert!(usage.series.len() > 10, "{usage:#?}");
        // A loaded 2-core host may give the burner well under its second.
        assert!(usage.cpu_seconds > 0.1, "{usage:#?}");
    }
    assert!(report.storage.as_ref().unwrap().artifacts_stored >= 4);

    let page = dir.join("report.html");
    report.write_html(&page).unwrap();
    let url = format!("file://{}", page.display());
    report.write_json(&dir.join("report.json")).unwrap();
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(!html.to_ascii_lowercase().contains("<script"));
    assert!(!html.contains("http://") && !html.contains("https://"));
    let profile = tempfile::tempdir().unwrap();

    // The DOM as Chromium built it.
    let dom = headless(&browser, profile.path(), &["--dump-dom".to_owned()], &url);
    let dom = String::from_utf8(dom).unwrap();
    std::fs::write(dir.join("dom.html"), &dom).unwrap();
    assert!(dom.contains("3 tests</b> in "), "{dom}");
    assert!(dom.contains("2 passed, 1 failed"), "{dom}");
    assert!(dom.contains(">FAILED<"), "{dom}");
    assert!(dom.contains(&report.run_id));
    for r in &report.results {
        assert!(dom.contains(r.test_id.as_str()), "{} missing", r.test_id);
    }
    for arch in ["x86_64", "aarch64", "riscv64"] {
        assert!(dom.contains(&format!("<td>{arch}</td>")), "{arch} column");
    }
    assert_eq!(dom.matches("<tr class=\"test\">").count(), 3);
    // A plot per monitored test (all three were) and the two overview charts, with axes text.
    assert_eq!(dom.matches("<svg class=\"plot\"").count(), 3 + 2, "{dom}");
    assert!(dom.matches("<polyline").count() > 10);
    assert!(dom.contains("time (s)") && dom.contains("CPU (% of a core)"));
    // Every monitored figure and the per-process breakdown of each monitored test.
    assert_eq!(dom.matches("Top processes by CPU").count(), 3, "{dom}");
    assert_eq!(dom.matches("Top processes by peak memory").count(), 3);
    assert_eq!(
        dom.matches("network (host namespace, not the test's alone)")
            .count(),
        3
    );
    assert!(dom.contains("open files (peak)") && dom.contains("host pressure"));
    assert!(dom.contains("<td class=\"mono\">awk</td>"), "{dom}");
    // The hostile console is text, not markup.
    assert!(!dom.to_ascii_lowercase().contains("<script"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(dom.contains("example.skipped") && dom.contains("no hardware"));
    assert!(dom.contains("assertion failed: expected 4, got 5") || dom.contains("why.txt"));
    assert!(
        dom.contains("mm/slub.c:42: assertion failed"),
        "stderr of the failure"
    );

    // The picture.
    let png = dir.join("report.png");
    headless(
        &browser,
        profile.path(),
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2000".to_owned(),
        ],
        &url,
    );
    let (width, height, pixels) = decode_png(&png);
    assert_eq!((width, height), (1280, 2000));
    let colours: BTreeSet<[u8; 3]> = pixels.iter().copied().collect();
    assert!(colours.len() > 200, "{} colours", colours.len());
    let background = [0xf3, 0xf4, 0xf7];
    let busy = pixels.iter().filter(|&&p| p != background).count();
    assert!(
        busy > pixels.len() / 3,
        "{busy} of {} pixels drawn",
        pixels.len()
    );
    // Text: dark pixels.
    let dark = pixels.iter().filter(|p| p.iter().all(|&c| c < 90)).count();
    assert!(dark > 5_000, "{dark} dark pixels");
    // Plots: the CPU and memory colours, in bars and lines.
    let cpu = pixels.iter().filter(|&&p| near(p, [31, 119, 180])).count();
    let mem = pixels.iter().filter(|&&p| near(p, [230, 120, 20])).count();
    assert!(cpu > 2_000 && mem > 2_000, "cpu {cpu}, memory {mem} pixels");
    // Verdict badges: the failure's red and the passes' green.
    let red = pixels
        .iter()
        .filter(|&&p| near(p, [0xcf, 0x22, 0x2e]))
        .count();
    let green = pixels
        .iter()
        .filter(|&&p| near(p, [0x1a, 0x7f, 0x37]))
        .count();
    assert!(red > 300 && green > 300, "red {red}, green {green} pixels");
    eprintln!(
        "the page and its screenshot: {} and {}",
        page.display(),
        png.display()
    );
}
