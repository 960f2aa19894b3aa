//! The Debian root file system of the `rootfs` tests: bookworm for arm64 with bash and coreutils,
//! made once with `mmdebstrap --variant=extract` (packages are only unpacked: nothing runs for
//! the foreign architecture, no emulation on the host), from the system's own apt sources, plus
//! an ext4 image of it (`mkfs.ext4 -d`). Cached in the tools cache
//! (`$ORCH_TOOLS_CACHE/rootfs-arm64-bookworm`, default `~/.cache/qemu-orchestrator/tools`); the
//! tests find them through `ORCH_TEST_ROOTFS` (the directory) and `ORCH_TEST_ROOTFS_IMAGE`.

use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The release and architecture of the test root file system.
const SUITE: &str = "bookworm";
const ARCH: &str = "arm64";
/// The packages asked for; apt adds their dependencies.
const PACKAGES: &str = "bash,coreutils";

/// The directory and the ext4 image.
pub(crate) struct TestRootfs {
    pub(crate) dir: PathBuf,
    pub(crate) image: PathBuf,
}

/// The test root file system, made if it is not in the cache yet.
pub(crate) fn ensure_test_rootfs() -> Result<TestRootfs> {
    let cache = super::tools_cache()?.join(format!("rootfs-{ARCH}-{SUITE}"));
    let done = TestRootfs {
        dir: cache.join("root"),
        image: cache.join("root.ext4"),
    };
    if cache.join("READY").is_file() && done.dir.is_dir() && done.image.is_file() {
        return Ok(done);
    }
    let started = Instant::now();
    super::ensure_apt_tool("mmdebstrap", "mmdebstrap")?;
    ensure_mkfs()?;
    let sources = system_sources()?;

    // Built beside the cache entry, moved in place when complete.
    let work = cache.with_extension("partial");
    if work.exists() {
        std::fs::remove_dir_all(&work)
            .with_context(|| format!("failed to remove {}", work.display()))?;
    }
    std::fs::create_dir_all(&work)
        .with_context(|| format!("failed to create {}", work.display()))?;
    let root = work.join("root");
    let mut mm = Command::new("mmdebstrap");
    mm.args([
        "--variant=extract",
        &format!("--architectures={ARCH}"),
        &format!("--include={PACKAGES}"),
        "--quiet",
        SUITE,
    ])
    .arg(&root)
    .args(&sources);
    super::step("mmdebstrap (once; cached)", mm)?;
    check_bash(&root)?;
    let bytes = tree_size(&root)?;

    // The image: the tree with room to spare (ext4's own metadata, a journal).
    let image = work.join("root.ext4");
    let size = (bytes + bytes / 2 + (64 << 20)).next_multiple_of(1 << 20);
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("failed to create {}", image.display()))?;
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-F", "-L", "orch-rootfs", "-d"])
        .arg(&root)
        .arg(&image);
    super::step("mkfs.ext4 -d (once; cached)", mkfs)?;

    if cache.exists() {
        std::fs::remove_dir_all(&cache)
            .with_context(|| format!("failed to remove {}", cache.display()))?;
    }
    std::fs::rename(&work, &cache)
        .with_context(|| format!("failed to move {} to {}", work.display(), cache.display()))?;
    let note = format!(
        "{SUITE} {ARCH} with {PACKAGES}: {:.1} MiB in the tree, a {:.0} MiB ext4 image, made in {:.1} s\n",
        bytes as f64 / (1 << 20) as f64,
        size as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    eprint!("xtask:    test root file system: {note}");
    std::fs::write(cache.join("READY"), note)
        .with_context(|| format!("failed to write {}", cache.join("READY").display()))?;
    Ok(done)
}

/// `cargo xtask test-rootfs`: the test root file system, made if needed, as shell settings.
pub(crate) fn print_test_rootfs() -> Result<()> {
    let rootfs = ensure_test_rootfs()?;
    println!("ORCH_TEST_ROOTFS={}", rootfs.dir.display());
    println!("ORCH_TEST_ROOTFS_IMAGE={}", rootfs.image.display());
    Ok(())
}

/// e2fsprogs' `mkfs.ext4` (in /sbin, often outside a user's PATH).
fn ensure_mkfs() -> Result<()> {
    let found = Command::new("mkfs.ext4")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    let mut apt = Command::new("apt-get");
    apt.args([
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "e2fsprogs",
    ]);
    super::step("apt-get install e2fsprogs", apt)
}

/// The system's apt source files that name the suite, given to mmdebstrap as they are (it
/// pastes a file's contents, one-line or deb822, into the new tree's sources).
fn system_sources() -> Result<Vec<PathBuf>> {
    let etc = Path::new("/etc/apt");
    let mut files = vec![etc.join("sources.list")];
    if let Ok(entries) = std::fs::read_dir(etc.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources"))
            .collect();
        more.sort();
        files.extend(more);
    }
    let named: Vec<PathBuf> = files
        .into_iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|text| {
                text.lines()
                    .map(|l| l.split('#').next().unwrap_or_default())
                    .any(|l| l.split_whitespace().any(|w| w == SUITE))
            })
        })
        .collect();
    if named.is_empty() {
        bail!(
            "no apt source in /etc/apt/sources.list or /etc/apt/sources.list.d names the suite `{SUITE}`: \
             the rootfs tests need a Debian {SUITE} mirror for {ARCH}; add one, or set \
             ORCH_TOOLS_CACHE to a cache holding rootfs-{ARCH}-{SUITE}"
        );
    }
    Ok(named)
}

/// Checks, without running it, that the tree's bash can start: its ELF interpreter (the
/// dynamic loader) resolves inside the tree, through the merged-/usr links if there are any.
fn check_bash(root: &Path) -> Result<()> {
    let bash = resolve_in(root, "/bin/bash")
        .with_context(|| format!("{} has no /bin/bash", root.display()))?;
    let elf = std::fs::read(&bash).with_context(|| format!("failed to read {}", bash.display()))?;
    let interp = elf_interpreter(&elf)
        .with_context(|| format!("{} is not a dynamic 64-bit ELF program", bash.display()))?;
    resolve_in(root, &interp).with_context(|| {
        format!(
            "bash's dynamic loader {interp} is missing from {}",
            root.display()
        )
    })?;
    for program in ["/usr/bin/ls", "/usr/bin/readlink"] {
        if resolve_in(root, program).is_none() && resolve_in(root, &program[4..]).is_none() {
            bail!("{} has no {program}", root.display());
        }
    }
    Ok(())
}

/// The `PT_INTERP` path of a little-endian ELF64 program.
fn elf_interpreter(elf: &[u8]) -> Option<String> {
    if elf.get(..4)? != b"\x7fELF" || elf.get(4)? != &2 || elf.get(5)? != &1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at =
        |o: usize| usize::try_from(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?)).ok();
    let phoff = u64_at(0x20)?;
    let phentsize = usize::from(u16_at(0x36)?);
    for i in 0..usize::from(u16_at(0x38)?) {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == 3 {
            let (offset, size) = (u64_at(ph + 8)?, u64_at(ph + 32)?);
            let bytes = elf.get(offset..offset + size)?;
            let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
            return String::from_utf8(bytes.to_vec()).ok();
        }
    }
    None
}

/// Where the absolute `path` of the tree at `root` is on the host, following symbolic links
/// as the tree's own programs would see them (absolute targets start again at `root`); `None`
/// if it does not exist.
fn resolve_in(root: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_owned)
        .collect();
    let mut at = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                at.pop();
                continue;
            }
            _ => {}
        }
        let next = at.join(&part);
        let meta = std::fs::symlink_metadata(root.join(&next)).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(root.join(&next)).ok()?;
            if target.is_absolute() {
                at = PathBuf::new();
            }
            let parts: Vec<String> = target
                .components()
                .filter_map(|c| match c {
                    Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
                    Component::ParentDir => Some("..".to_owned()),
                    _ => None,
                })
                .collect();
            pending.extend(parts.into_iter().rev());
        } else {
            at = next;
        }
    }
    let full = root.join(at);
    full.exists().then_some(full)
}

/// Bytes of the regular files under `dir`.
fn tree_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?
    {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            total += tree_size(&entry.path())?;
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_inside_the_tree() {
        let dir = std::env::temp_dir().join(format!("xtask-rootfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.as_path();
        std::fs::create_dir_all(root.join("usr/lib/aarch64-linux-gnu")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(
            root.join("usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"),
            "",
        )
        .unwrap();
        std::fs::write(root.join("usr/bin/bash"), "").unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1",
            root.join("usr/lib/ld-linux-aarch64.so.1"),
        )
        .unwrap();
        assert_eq!(
            resolve_in(root, "/bin/bash"),
            Some(root.join("usr/bin/bash"))
        );
        assert_eq!(
            resolve_in(root, "/lib/ld-linux-aarch64.so.1"),
            Some(root.join("usr/lib/aarch64-linux-gnu/ld-linux-aarch64.so.1"))
        );
        assert_eq!(resolve_in(root, "/bin/../../../etc/passwd"), None);
        assert_eq!(resolve_in(root, "/bin/zsh"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_interpreter_of_this_program() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if cfg!(all(
            target_os = "linux",
            target_pointer_width = "64",
            target_endian = "little"
        )) {
            let interp = elf_interpreter(&me);
            assert!(
                interp.as_deref().is_none_or(|i| i.contains("ld-")),
                "{interp:?}"
            );
        }
        assert_eq!(elf_interpreter(b"#!/bin/sh\n"), None);
    }
}
