//! A run's HTML report, served by the API and loaded from it by Debian's headless Chromium: the
//! page Chromium built holds the run and its tests, and its screenshot is a rendered page.
//! The DOM and the screenshot stay in `target/api-html-check/` for a human to look at.

mod support;

use std::path::{Path, PathBuf};

fn check_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir is inside the target dir")
        .join("api-html-check")
}

/// Headless Chromium on `url` with `args`; returns stdout.
fn headless(profile: &Path, args: &[String], url: &str) -> Vec<u8> {
    testkit::chromium::headless(&testkit::chromium::chromium(), profile, args, url)
}

#[test]
#[ignore = "needs Debian's chromium: run `cargo xtask test`, which installs it"]
fn the_served_report_renders_in_headless_chromium() {
    let dir = check_dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // No reports directory: the page is rendered from the report the run stored.
    let s = rt.block_on(support::serve_campaign(|c| c));
    let run = s.report.run_id.clone();
    let url = s.url(&format!("/api/v1/runs/{run}/report.html"));
    let r = rt.block_on(reqwest::get(&url)).unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");

    let profile = tempfile::tempdir().unwrap();
    let served_url = url.clone();
    // Chromium runs while the server answers on the runtime's threads.
    let dom = rt.block_on(async move {
        tokio::task::spawn_blocking(move || {
            headless(profile.path(), &["--dump-dom".to_owned()], &served_url)
        })
        .await
        .unwrap()
    });
    let dom = String::from_utf8(dom).unwrap();
    std::fs::write(dir.join("dom.html"), &dom).unwrap();
    assert!(dom.contains(&run), "{dom}");
    assert!(dom.contains("3 tests</b> in "), "{dom}");
    assert!(dom.contains(">FAILED<"), "{dom}");
    for t in ["logs@x86_64", "bulk@aarch64", "fails@x86_64"] {
        assert!(dom.contains(t), "{t} missing");
    }
    assert_eq!(dom.matches("<tr class=\"test\">").count(), 3);
    assert!(dom.contains("<svg class=\"plot\""), "plots: {dom}");

    let png = dir.join("report.png");
    let profile = tempfile::tempdir().unwrap();
    let args = vec![
        format!("--screenshot={}", png.display()),
        "--window-size=1280,1600".to_owned(),
    ];
    rt.block_on(async move {
        tokio::task::spawn_blocking(move || headless(profile.path(), &args, &url))
            .await
            .unwrap()
    });
    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 1600));
    let channels = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks_exact(channels).collect();
    let colours: std::collections::BTreeSet<[u8; 3]> =
        pixels.iter().map(|p| [p[0], p[1], p[2]]).collect();
    assert!(
        colours.len() > 100,
        "{} colours: a blank page?",
        colours.len()
    );
    let dark = pixels
        .iter()
        .filter(|p| p[..3].iter().all(|&c| c < 90))
        .count();
    assert!(dark > 3_000, "{dark} dark pixels: no text?");
    // The failure's red badge.
    let red = pixels
        .iter()
        .filter(|p| {
            p[0].abs_diff(0xcf) <= 12 && p[1].abs_diff(0x22) <= 12 && p[2].abs_diff(0x2e) <= 12
        })
        .count();
    assert!(red > 200, "red {red} pixels");
    rt.block_on(s.stop());
    eprintln!("the DOM and the screenshot: {}", dir.display());
}
