//! Checks the initramfs writer against GNU cpio, an independent reader of the `newc` format.
//!
//! These tests need the `cpio` tool (Debian package `cpio`), which `cargo xtask test` installs;
//! without it they fail saying so.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

use qemu_runner::initramfs::{Compression, InitramfsBuilder};

fn have_cpio() -> bool {
    let found = Command::new("cpio")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the `cpio` tool is not installed: run `cargo xtask test` (it installs it) or `apt-get install cpio`"
    );
    found
}

/// Runs `cpio` with `args` in `dir`, feeding it `archive`; returns stdout and stderr.
fn cpio(dir: &Path, args: &[&str], archive: &[u8]) -> (String, String) {
    let mut child = Command::new("cpio")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cpio");
    child.stdin.take().unwrap().write_all(archive).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cpio {args:?} failed: {stderr}");
    (stdout, stderr)
}

fn sample(payload: &Path) -> InitramfsBuilder {
    let mut b = InitramfsBuilder::new();
    b.dir("dev", 0o755)
        .char_device("dev/console", 0o600, 5, 1)
        .char_device("dev/null", 0o666, 1, 3)
        .file_from_bytes("init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
        .file_from_path("bin/busybox", 0o755, payload)
        .symlink("bin/sh", "busybox")
        .dir("tmp", 0o1777)
        .file_from_bytes("etc/hostname", 0o644, b"guest\n".to_vec());
    b
}

#[test]
fn gnu_cpio_lists_and_extracts_the_archive() {
    if !have_cpio() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let payload = work.path().join("payload");
    let payload_bytes: Vec<u8> = (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&payload, &payload_bytes).unwrap();

    let mut archive = Vec::new();
    sample(&payload)
        .write_to(&mut archive, Compression::None)
        .unwrap();

    // `-t -v` shows types, modes, owners and device numbers.
    let (listing, _) = cpio(work.path(), &["-t", "-v", "--quiet"], &archive);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 10, "{listing}");
    let line = |name: &str| {
        *lines
            .iter()
            .find(|l| l.ends_with(&format!(" {name}")) || l.contains(&format!(" {name} -> ")))
            .unwrap_or_else(|| panic!("{name} not listed in:\n{listing}"))
    };
    assert!(line("dev/console").starts_with("crw-------"), "{listing}");
    assert!(line("dev/console").contains(" 5,   1 ") || line("dev/console").contains(" 5, 1 "));
    assert!(line("dev/null").starts_with("crw-rw-rw-"), "{listing}");
    assert!(line("init").starts_with("-rwxr-xr-x"), "{listing}");
    assert!(line("bin/sh").starts_with("lrwxrwxrwx"), "{listing}");
    assert!(line("bin/sh").ends_with("bin/sh -> busybox"), "{listing}");
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{listing}");
    assert!(line("bin").starts_with("drwxr-xr-x"), "{listing}");
    for l in &lines {
        assert!(l.contains(" root "), "not owned by root: {l}");
    }

    // Extract (as root, device nodes are created too where the sandbox allows mknod).
    let root = work.path().join("root");
    fs::create_dir(&root).unwrap();
    cpio(
        &root,
        &["-i", "-d", "-m", "--no-absolute-filenames", "--quiet"],
        &archive,
    );
    assert_eq!(fs::read(root.join("bin/busybox")).unwrap(), payload_bytes);
    assert_eq!(fs::read(root.join("etc/hostname")).unwrap(), b"guest\n");
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let init = fs::metadata(root.join("init")).unwrap();
    assert_eq!(init.permissions().mode() & 0o7777, 0o755);
    assert_eq!(init.mtime(), 0);
    if let Ok(console) = fs::symlink_metadata(root.join("dev/console")) {
        assert!(console.file_type().is_char_device());
        assert_eq!(console.rdev(), (5 << 8) | 1);
    }
}

#[test]
fn compressed_archives_match_the_plain_one() {
    let work = tempfile::tempdir().unwrap();
    let payload = work.path().join("payload");
    fs::write(&payload, b"payload").unwrap();
    let b = sample(&payload);
    let mut plain = Vec::new();
    b.write_to(&mut plain, Compression::None).unwrap();

    // Written to a file, as the runner will.
    let gz_path = work
        .path()
        .join(format!("initrd{}", Compression::Gzip.extension()));
    let written = b
        .write_to(fs::File::create(&gz_path).unwrap(), Compression::Gzip)
        .unwrap();
    assert_eq!(written, fs::metadata(&gz_path).unwrap().len());
    let gz = fs::read(&gz_path).unwrap();
    let mut unzipped = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(gz.as_slice()),
        &mut unzipped,
    )
    .unwrap();
    assert_eq!(unzipped, plain);

    let mut zst = Vec::new();
    b.write_to(&mut zst, Compression::Zstd).unwrap();
    assert_eq!(zstd::stream::decode_all(zst.as_slice()).unwrap(), plain);

    if have_cpio() {
        let (listing, _) = cpio(work.path(), &["-t", "--quiet"], &unzipped);
        assert!(listing.lines().any(|l| l == "dev/console"), "{listing}");
    }
}
