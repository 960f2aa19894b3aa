//! Headless Chromium for the tests that render an HTML report (written to a file or served by
//! the API) and look at what the browser built: its DOM or a screenshot.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `chromium` (Debian) or `chromium-browser` (some other distributions); panics naming the
/// package to install when neither is on `PATH`.
pub fn chromium() -> PathBuf {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find_map(|name| which::which(name).ok())
        .expect(
            "Chromium is not installed: `apt-get install --no-install-recommends chromium` \
             (`cargo xtask test` does it)",
        )
}

/// Runs headless Chromium on `url` (`file://...` or `http://...`) with `args` (such as
/// `--dump-dom` or `--screenshot=FILE`) and a fresh profile in `profile`, killing it after two
/// minutes; returns its stdout, and panics with its stderr when it fails.
pub fn headless(browser: &Path, profile: &Path, args: &[String], url: &str) -> Vec<u8> {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {}: {e}", browser.display()));
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let out = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut { stdout }, &mut bytes).map(|_| bytes)
    });
    let err = std::thread::spawn(move || std::io::read_to_string(stderr));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish in two minutes",
                browser.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().expect("stdout reader").expect("read stdout");
    let stderr = err.join().expect("stderr reader").expect("read stderr");
    assert!(
        status.success(),
        "{} {args:?} failed ({status}):\n{stderr}",
        browser.display()
    );
    stdout
}
