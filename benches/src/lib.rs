//! Criterion benchmarks of the workspace's hot paths, run with `cargo bench -p benches`.
//!
//! - `capture`: bounded output capture (`orchestrator_core::BoundedCapture`) against
//!   collecting everything into a `Vec`, for a test that prints a lot.
#![deny(missing_docs)]
