//! `qorch provision`: QEMU's system emulators and the stock Debian guest images (kernel and
//! busybox per architecture) that the QEMU runner boots, through `qemu_runner::provision`.
//!
//! It first says what is there and what it will install (QEMU packages with `apt-get`, which
//! needs root; guest images downloaded with the system's apt sources into the image cache),
//! then, unless `--dry-run`, installs it with progress on stderr. What is present and verifies
//! is left alone: a second run does nothing.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use orchestrator_core::Arch;
use qemu_runner::provision::{self, ProvisionError, ProvisionOptions, QEMU_BINARIES};

/// `qorch provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Only these architectures (x86_64, aarch64, armv7, riscv64; repeat or separate with
    /// commas). Default: all four.
    #[arg(long, value_delimiter = ',')]
    pub arch: Vec<Arch>,
    /// Say what would be installed, and where, without installing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// The image cache (default `$ORCH_IMAGE_CACHE`, else
    /// `$XDG_CACHE_HOME/qemu-orchestrator/images`, else `~/.cache/qemu-orchestrator/images`).
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Download and unpack the images again even when they verify.
    #[arg(long)]
    pub force: bool,
    /// Leave QEMU alone (only the guest images).
    #[arg(long)]
    pub no_qemu: bool,
}

/// `qorch provision`.
pub fn provision(args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(provision::default_cache_dir);
    let archs: Vec<Arch> = if args.arch.is_empty() {
        Arch::ALL.to_vec()
    } else {
        args.arch.clone()
    };

    // What is there.
    let missing_packages: Vec<&str> = if args.no_qemu {
        Vec::new()
    } else {
        let mut p: Vec<&str> = QEMU_BINARIES
            .iter()
            .filter(|(binary, _)| which::which(binary).is_err())
            .map(|&(_, package)| package)
            .collect();
        p.dedup();
        p
    };
    if !args.no_qemu {
        if missing_packages.is_empty() {
            println!(
                "QEMU: present ({})",
                QEMU_BINARIES.map(|(b, _)| b).join(", ")
            );
        } else {
            println!(
                "QEMU: {} `apt-get install --no-install-recommends {}` (needs root)",
                if args.dry_run {
                    "would run"
                } else {
                    "will run"
                },
                missing_packages.join(" ")
            );
        }
    }
    println!("guest image cache: {}", cache.display());
    let present = match provision::load(&cache) {
        Ok(m) => Some(m),
        Err(ProvisionError::NotProvisioned { .. }) => None,
        Err(e) => {
            println!("  the cache does not verify ({e}): damaged images are fetched again");
            None
        }
    };
    let mut todo = Vec::new();
    for &arch in &archs {
        match present.as_ref().and_then(|m| m.images.get(&arch)) {
            Some(image) if !args.force => println!(
                "  {arch}: up to date: {} {} ({}), busybox {}",
                image.kernel_package,
                image.kernel_package_version,
                image.debian_suite,
                image.busybox_version
            ),
            _ => {
                println!(
                    "  {arch}: {} the Debian kernel package and busybox-static with apt-get \
                     (the system's apt sources; tens of MB)",
                    if args.dry_run {
                        "would download"
                    } else {
                        "will download"
                    }
                );
                todo.push(arch);
            }
        }
    }
    if args.dry_run {
        if todo.is_empty() && missing_packages.is_empty() {
            println!("nothing to do");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if todo.is_empty() && missing_packages.is_empty() {
        println!("nothing to do: QEMU and the guest images are ready");
        return Ok(ExitCode::SUCCESS);
    }

    let started = Instant::now();
    if !missing_packages.is_empty() {
        eprintln!("installing QEMU: {}", missing_packages.join(" "));
        provision::ensure_qemu().context("installing QEMU")?;
    }
    let mut options = ProvisionOptions::new(&cache)
        .with_archs(archs.iter().copied())
        .with_progress(|event| eprintln!("  {event}"));
    options.force = args.force;
    let manifest = provision::provision(&options)
        .with_context(|| format!("provisioning guest images into {}", cache.display()))?;
    for arch in &archs {
        if let Some(image) = manifest.images.get(arch) {
            println!(
                "  {arch}: {} {} ({}), busybox {}",
                image.kernel_package,
                image.kernel_package_version,
                image.debian_suite,
                image.busybox_version
            );
        }
    }
    println!(
        "QEMU and guest images ready in {:.1} s; cache: {}",
        started.elapsed().as_secs_f64(),
        manifest.cache_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
