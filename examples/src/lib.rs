//! Runnable examples of the workspace; see `embed.rs`.
//!
//! `cargo run -p examples --example embed` shows the library used directly; plan files run
//! with the `qorch` binary (`qorch run examples/plans/demo.toml`).
#![deny(missing_docs)]
