//! Fixtures shared by the workspace's tests.
//!
//! [`plan`]: the checks of plan-file tests (located errors, the reference plan's commented
//! tables). [`junit_case`]: one test case of a JUnit document. [`chromium`]: headless Chromium
//! on a report page. [`MAKE_BLOB`] and [`blob`]: a guest-written blob the host can predict; [`noise`]: incompressible bytes.
//!
//! Real S3 servers on loopback: [`GarageNode`], one Garage node, and [`GarageCluster`], several
//! Garage nodes replicating one bucket, each with a bucket and a key ready when `start`
//! returns, killed and their files removed on drop. [`S3Access`] carries what a client needs
//! to reach one node: an `object_store` handle, or the `AWS_*` environment of a worker process.
//!
//! `cargo xtask test` builds Garage once and passes its path as `ORCH_GARAGE`; without it the
//! fixtures use the tools cache xtask fills (see [`garage_binary`]). Likewise the KUnit kernels
//! ([`kunit_kernels`], `ORCH_KUNIT_KERNELS`).
//!
//! ```no_run
//! use object_store::ObjectStoreExt;
//!
//! # async fn demo() {
//! let garage = testkit::GarageNode::start();
//! let s3 = garage.store();
//! s3.put(&"a/b".into(), vec![1u8, 2, 3].into()).await.unwrap();
//! # }
//! ```
#![deny(missing_docs)]

mod blob;
pub mod chromium;
mod garage;
mod junit;
mod kunit;
pub mod plan;

pub use blob::{MAKE_BLOB, blob, noise};
pub use garage::{GarageCluster, GarageNode, REGION, S3Access, garage_binary, list_keys};
pub use junit::junit_case;
pub use kunit::kunit_kernels;
