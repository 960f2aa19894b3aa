//! QEMU implementation of [`orchestrator_core::TestRunner`]: boots real kernels on x86_64,
//! aarch64, armv7 and riscv64 and runs tests inside them.
//!
//! - [`profile`]: per-architecture machine profiles as serde data (binary, machine, CPU, console,
//!   firmware, memory, CPUs, extra arguments, emulation timeout multiplier).
//! - [`accel`]: KVM only once the test's kernel printed its banner under it; TCG otherwise, with the reason.
//! - [`provision`]: stock Debian kernels and busybox fetched with the system's own `apt-get`.
//! - [`initramfs`], [`modules`], [`image`]: the guest's initramfs, built in Rust, with kernel
//!   modules and their dependencies resolved from the package.
//! - [`agent`] and [`protocol`]: the guest's `/init` and its nonce-framed console records.
//! - [`vm`], [`qmp`], [`crash`]: the QEMU process, staged stopping, crash labels.
//! - [`pvh`]: an x86 `bzImage` unpacked on the host and booted through its PVH entry.
//! - [`QemuRunner`]: the runner itself.
//!
//! # Examples
//!
//! ```no_run
//! use orchestrator_core::{Arch, Orchestrator, RunConfig, Requirements, TestCase};
//! use qemu_runner::{QemuConfig, QemuRunner};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut needs = Requirements::default();
//! needs.arch = Some(Arch::Aarch64);
//! let case = TestCase::script("uname", "uname -m").with_requirements(needs);
//! let orchestrator = Orchestrator::new(RunConfig::new("target/scratch"))
//!     .with_runner(QemuRunner::new(QemuConfig::new()));
//! let report = orchestrator.run(vec![case]).await?;
//! assert_eq!(report.results[0].stdout.text, "aarch64\n");
//! # Ok(())
//! # }
//! ```
//!
//! A kernel test's KTAP output becomes one subtest per case, no guest needed:
//!
//! ```
//! use orchestrator_core::SubtestStatus;
//!
//! let out = "KTAP version 1\n1..2\nok 1 alloc\nok 2 free # SKIP no memory\n";
//! let (cases, _) = qemu_runner::ktap::subtests_of(out).expect("KTAP output");
//! assert_eq!(cases[0].name, "alloc");
//! assert_eq!(cases[1].status, SubtestStatus::Skipped);
//! ```
#![deny(missing_docs)]

pub mod accel;
pub mod agent;
pub mod artifacts;
pub mod crash;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod ktap;
pub mod modules;
mod plan;
pub mod profile;
pub mod protocol;
pub mod provision;
pub mod pvh;
pub mod qmp;
pub mod rootfs;
mod runner;
pub mod vm;
mod vmcore;

pub use accel::{Accel, AccelMode};
pub use orchestrator_core::TestRunner;
pub use plan::{AccelChoice, ProfileOverride, QemuPlan};
pub use profile::MachineProfile;
pub use runner::{ExecutionMode, ImageSource, Prepared, QemuConfig, QemuRunner, command_line};
