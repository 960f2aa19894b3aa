//! Content-addressed artifact store for test runs.
//!
//! Planned shape: blobs addressed by BLAKE3 in a versioned, sharded layout with zstd compression,
//! a queryable catalog (test, run, kind, outcome, architecture, time, metadata), pluggable
//! retention policies, garbage collection that is safe with concurrent writers, and verifiable
//! `.tar.zst` bundles.
//!
//! The crate is a placeholder until the artifact-store issue lands: it exposes nothing yet.
#![deny(missing_docs)]
