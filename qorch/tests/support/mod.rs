//! What the `qorch` end-to-end tests share: the built binary and reading what it wrote.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The `qorch` binary cargo built for these tests.
pub(crate) const QORCH: &str = env!("CARGO_BIN_EXE_qorch");

/// A command running the built `qorch`.
pub(crate) fn qorch() -> Command {
    Command::new(QORCH)
}

/// Output bytes as text (lossy).
pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A JSON file's value.
pub(crate) fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Writes `text` to `dir/name`; returns the path.
pub(crate) fn write_plan(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
