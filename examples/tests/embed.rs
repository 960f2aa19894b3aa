//! The `embed` example, built and run as a user would, and quoted verbatim in the README.

use std::path::Path;

#[test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
fn the_embed_example_runs_a_monitored_stored_qemu_test() {
    let run = escargot::CargoBuild::new()
        .package("examples")
        .example("embed")
        .manifest_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
        .run()
        .expect("the embed example builds");
    let out = run.command().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The summary names the architecture, the monitor's figures and what the store kept.
    for want in [
        "hello",
        "aarch64",
        "PASS",
        "peak memory",
        "artifacts stored",
    ] {
        assert!(stdout.contains(want), "`{want}` missing from:\n{stdout}");
    }
}

#[test]
fn readme_quotes_the_embed_example_and_its_body_is_about_ten_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(root.join("examples/embed.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let code: String = example
        .lines()
        .filter(|l| !l.starts_with("//!"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        readme.contains(&format!("```rust\n{code}```")),
        "README.md must quote examples/embed.rs (without its //! lines) in a rust block"
    );
    let body = code
        .split_once("async fn main() -> anyhow::Result<()> {\n")
        .unwrap()
        .1
        .lines()
        .filter(|l| *l != "}")
        .count();
    assert!(body <= 10, "main's body is {body} lines");
}
