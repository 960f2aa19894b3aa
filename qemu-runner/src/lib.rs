//! QEMU implementation of [`orchestrator_core::TestRunner`].
//!
//! This crate will boot real kernels under QEMU on four architectures (x86_64, aarch64, armv7 and
//! riscv64), with per-architecture machine profiles, accelerator detection (a KVM probe with a TCG
//! fallback), guest images built from stock distribution kernels, a host↔guest channel, layered
//! timeouts and crash detection.
//!
//! It depends on `orchestrator-core` for the domain model and the runner trait; the core never
//! depends on it. The runner itself arrives with the QEMU boot issue; today the crate only
//! re-exports the trait it will implement.
#![deny(missing_docs)]

pub use orchestrator_core::TestRunner;
