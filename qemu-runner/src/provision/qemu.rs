//! Installing the QEMU system emulators.

use super::*;

// ---------------------------------------------------------------------------------------------
// QEMU

/// Makes sure the QEMU system emulators of [`QEMU_BINARIES`] are in PATH, installing the
/// missing Debian packages with `apt-get install --no-install-recommends --no-remove` (which
/// needs root; it never uninstalls anything, a conflict is an error). `apt-get update` runs only
/// when the first installation attempt fails (no or stale package lists), then the installation
/// is tried once more.
///
/// On Debian, riscv64 `-M virt` guests need no `-bios` argument: QEMU's default firmware,
/// OpenSBI `fw_dynamic`, comes with `qemu-system-data`
/// (`/usr/share/qemu/opensbi-riscv64-generic-fw_dynamic.bin`).
pub fn ensure_qemu() -> Result<(), ProvisionError> {
    ensure_qemu_with(false)
}

/// [`ensure_qemu`], optionally letting apt replace packages that conflict with Debian's QEMU
/// (for example a `qemu-utils` from backports, whose `qemu-img` is then reinstalled at Debian's
/// version). `cargo xtask test` allows it: it is the project's documented setup,
/// `apt-get install qemu-system-x86 qemu-system-arm qemu-system-misc`.
pub fn ensure_qemu_with(allow_removals: bool) -> Result<(), ProvisionError> {
    let had_qemu_img = find_program("qemu-img").is_some();
    let missing = || -> BTreeSet<&'static str> {
        QEMU_BINARIES
            .iter()
            .filter(|(binary, _)| find_program(binary).is_none())
            .map(|&(_, package)| package)
            .collect()
    };
    let packages = missing();
    if packages.is_empty() {
        return Ok(());
    }
    let list = packages.iter().copied().collect::<Vec<_>>().join(" ");
    if find_program("apt-get").is_none() {
        return Err(ProvisionError::ToolMissing {
            program: "qemu-system-*".to_owned(),
            fix: format!(
                "install QEMU ({}) with the system's package manager",
                QEMU_BINARIES.map(|(b, _)| b).join(", ")
            ),
        });
    }
    let fix = format!("run `sudo apt-get install {list}` (installing QEMU needs root)");
    let apt_get = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C");
        command
    };
    // `--no-remove`: never uninstall anything (a conflicting QEMU from elsewhere, say) to make
    // room; fail and let the user decide instead.
    let mut install = apt_get(&["install", "-y", "-q", "--no-install-recommends"]);
    if !allow_removals {
        install.arg("--no-remove");
    }
    install.args(&packages);
    let explain = |error: ProvisionError| match error {
        ProvisionError::CommandFailed {
            command,
            status,
            output,
            ..
        } if output.contains("remove is disabled") => ProvisionError::CommandFailed {
            command,
            status,
            output,
            fix: format!(
                "installing QEMU would remove installed packages (conflicts); resolve them and \
                 run `sudo apt-get install {list}`"
            ),
        },
        other => other,
    };
    if let Err(first) = run(&mut install, &fix) {
        let text = first.to_string();
        if text.contains("are you root")
            || text.contains("Permission denied")
            || text.contains("remove is disabled")
        {
            return Err(explain(first));
        }
        run(&mut apt_get(&["update", "-q"]), &fix)?;
        run(&mut install, &fix).map_err(explain)?;
    }
    if had_qemu_img && find_program("qemu-img").is_none() {
        // A conflicting qemu-utils was replaced: put Debian's back so qemu-img stays.
        run(
            &mut apt_get(&[
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
                "qemu-utils",
            ]),
            &fix,
        )?;
    }
    let still = missing();
    if still.is_empty() {
        Ok(())
    } else {
        Err(ProvisionError::ToolMissing {
            program: QEMU_BINARIES
                .iter()
                .filter(|(_, p)| still.contains(p))
                .map(|(b, _)| *b)
                .collect::<Vec<_>>()
                .join(", "),
            fix: format!("`apt-get install {list}` succeeded but did not provide it"),
        })
    }
}
