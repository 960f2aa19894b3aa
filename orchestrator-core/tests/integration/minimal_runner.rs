//! A runner crate built against orchestrator-core without its default features
//! (`tests/fixtures/minimal-runner`): it compiles, implements `TestRunner`, runs a test through
//! the orchestrator, and gets located errors for the tables of the features it left out.

use std::path::Path;
use std::process::Command;

#[test]
#[ignore = "builds a crate: run by `cargo xtask test`"]
fn a_runner_builds_without_the_default_features() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = core.join("tests/fixtures/minimal-runner");
    let dir = tempfile::tempdir().unwrap();
    // A copy outside the source tree, so the build writes nothing there: the path dependency
    // made absolute, and the workspace's lock file so the same versions build without a
    // registry look-up.
    let manifest = std::fs::read_to_string(fixture.join("Cargo.toml")).unwrap();
    let relative = "path = \"../../..\"";
    assert!(
        manifest.contains(relative),
        "the fixture depends on the core by path"
    );
    let manifest = manifest.replace(
        relative,
        &format!("path = {:?}", core.display().to_string()),
    );
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::copy(fixture.join("src/main.rs"), dir.path().join("src/main.rs")).unwrap();
    std::fs::copy(core.join("../Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "--offline", "--quiet", "--manifest-path"])
        .arg(dir.path().join("Cargo.toml"))
        .arg("--target-dir")
        .arg(dir.path().join("target"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "building the fixture failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let tree = Command::new(&cargo)
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(dir.path().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8(tree.stdout).unwrap();
    for heavy in ["rusqlite", "object_store", "plotters", "indicatif"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{heavy} "))),
            "{heavy} is compiled without the default features:\n{tree}"
        );
    }

    let run = Command::new(dir.path().join("target/debug/minimal-runner"))
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "the fixture failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
}
