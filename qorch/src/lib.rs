//! `qorch`, the qemu-orchestrator command line, as a library: [`cli::main`] is the binary, and
//! [`cli::main_from`] runs the same code on any argument list (tests, the examples crate).
//!
//! One module per group of subcommands: [`run`] (`run`, `merge`), [`provision`], [`store`],
//! [`history`] (`runs`, `history`, `compare`, `export-kcidb`, `import-report`), [`serve`].
#![deny(missing_docs)]

pub mod cli;
pub mod history;
pub mod provision;
pub mod run;
pub mod serve;
pub mod store;
mod util;
