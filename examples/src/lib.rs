//! Runnable examples of the workspace; see `campaign.rs` and `embed.rs`.
//!
//! `cargo run -p examples --example campaign -- examples/plans/demo.toml` runs the bundled plan;
//! `cargo run -p examples --example embed` shows the library used directly.
#![deny(missing_docs)]
