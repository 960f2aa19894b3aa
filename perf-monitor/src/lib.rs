//! Resource monitoring for test runs.
//!
//! Planned shape: an RAII guard that samples a process tree through procfs and reports CPU,
//! memory, disk and network I/O, process and fd counts, load and pressure, with exact totals
//! beside the sampled series where the kernel provides them.
//!
//! The crate is a placeholder until the perf-monitor issue lands: it exposes nothing yet.
#![deny(missing_docs)]
