//! Integration tests of `artifact-store` (one binary; see the modules).

mod bundles;
mod concurrency;
mod crash;
mod enospc;
mod garage;
mod props;
mod remote;
mod retention;
mod store;
mod support;
