//! Tests in a root file system (`rootfs`): a Debian bookworm arm64 tree made with `mmdebstrap
//! --variant=extract` (no emulation) and an ext4 image of it, which `cargo xtask test` builds
//! once and names in `ORCH_TEST_ROOTFS` and `ORCH_TEST_ROOTFS_IMAGE`.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, Command, Orchestrator, OrchestratorError, Outcome, Phase, RunConfig, TestCase, TestId,
};
use qemu_runner::image::GuestParts;
use qemu_runner::{ImageSource, MachineProfile, QemuConfig, QemuRunner};

/// A path from the environment `cargo xtask test` sets; a clear failure without it.
fn from_env(var: &str) -> PathBuf {
    let Some(p) = std::env::var_os(var) else {
        panic!(
            "{var} is not set: run `cargo xtask test`, which builds the Debian arm64 root file \
             system once (mmdebstrap --variant=extract) and sets ORCH_TEST_ROOTFS and \
             ORCH_TEST_ROOTFS_IMAGE"
        );
    };
    let p = PathBuf::from(p);
    assert!(
        p.exists(),
        "{var} names {}, which does not exist",
        p.display()
    );
    p
}

/// A BLAKE3 digest of a tree: every entry's relative path, type, mode, owner, size, modification
/// time and contents (a link's target).
fn tree_digest(root: &Path) -> String {
    fn walk(root: &Path, rel: &Path, h: &mut blake3::Hasher) {
        let path = root.join(rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(
            format!(
                "\0{:o} {} {} {} {}.{}\0",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                meta.len(),
                meta.mtime(),
                meta.mtime_nsec()
            )
            .as_bytes(),
        );
        if meta.file_type().is_symlink() {
            h.update(
                std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if meta.is_file() {
            let mut f = std::fs::File::open(&path).unwrap();
            std::io::copy(&mut f, h).unwrap();
        } else if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for name in names {
                walk(root, &rel.join(name), h);
            }
        }
    }
    let mut h = blake3::Hasher::new();
    walk(root, Path::new(""), &mut h);
    h.finalize().to_hex().to_string()
}

fn file_digest(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut h).unwrap();
    h.finalize().to_hex().to_string()
}

/// Uses bash and coreutils of the root file system, shows where they come from, then tries to
/// change the root: writes, deletes, and a write to the raw disk (the image's case).
const SCRIPT: &str = r#"
echo "bash-version=$BASH_VERSION"
echo "bash-exe=$(readlink /proc/$$/exe)"
echo "readlink-exe=$(readlink -f /proc/self/exe)"
ls --version | head -n 1
echo "stat-type=$(stat --printf='%F' /)"
echo "debian=$(cat /etc/debian_version)"
echo "machine=$(uname -m)"
while read -r dev mnt type rest; do
    if [ "$mnt" = / ]; then echo "root-fs=$type"; fi
done </proc/mounts
echo "cwd=$(pwd)"
# Changes to the root: all of them land in the overlay.
echo changed >/etc/debian_version
rm /bin/ls
rm -r /usr/share/doc
mkdir /new-dir && echo new >/new-dir/file
chmod 700 /usr/bin
echo "after=$(cat /etc/debian_version)"
[ -e /bin/ls ] || echo "ls-deleted=yes"
[ -e /usr/share/doc ] || echo "doc-deleted=yes"
# The disk itself, if there is one, is read-only.
for s in /sys/block/vd*; do
    [ -e "$s" ] || continue
    if dd if=/dev/zero of="/dev/${s##*/}" bs=4096 count=1 conv=notrunc 2>/dev/null; then
        echo "disk-write=accepted"
    else
        echo "disk-write=refused"
    fi
done
echo result >result.txt
"#;

fn case(id: &str, rootfs: &Path) -> TestCase {
    TestCase::new(
        TestId::new(id).unwrap(),
        Command::Script {
            shell: vec!["bash".into(), "-e".into()],
            body: SCRIPT.into(),
        },
    )
    .with_arch(Arch::Aarch64)
    .with_rootfs(rootfs)
    .with_artifact("result.txt")
    .with_timeout(Duration::from_secs(120))
}

#[tokio::test]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn bash_and_coreutils_from_a_debian_root_that_stays_unchanged() {
    let dir = from_env("ORCH_TEST_ROOTFS");
    let image = from_env("ORCH_TEST_ROOTFS_IMAGE");
    let dir_before = tree_digest(&dir);
    let image_before = file_digest(&image);

    let started = Instant::now();
    let scratch = tempfile::tempdir().unwrap();
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(2))
        .with_runner(QemuRunner::new(QemuConfig::new()));
    let report = orch
        .run(vec![case("in-dir", &dir), case("in-image", &image)])
        .await
        .expect("valid run");
    let elapsed = started.elapsed();

    let mut by_id = BTreeMap::new();
    for r in &report.results {
        eprintln!(
            "{}: {} [{:.1}s; boot {:.1}s, test {:.1}s] {}",
            r.test_id,
            r.outcome,
            r.duration().as_secs_f64(),
            r.phase(Phase::Boot)
                .map_or(0.0, |p| p.duration().as_secs_f64()),
            r.phase(Phase::Test)
                .map_or(0.0, |p| p.duration().as_secs_f64()),
            r.message.as_deref().unwrap_or("")
        );
        by_id.insert(r.test_id.to_string(), r);
    }
    eprintln!("both in {:.1}s", elapsed.as_secs_f64());
    for (id, disk) in [("in-dir", false), ("in-image", true)] {
        let r = by_id[id];
        let stdout = r.stdout.text.as_str();
        let stderr = r.stderr.text.as_str();
        assert_eq!(r.outcome, Outcome::Passed, "{id}:\n{stdout}\n{stderr}");
        let value = |key: &str| {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{id}: no {key}= in\n{stdout}\n{stderr}"))
        };
        // bash and coreutils are the root file system's (Debian 12: bash 5.2, coreutils 9.1),
        // not busybox.
        assert!(value("bash-version").starts_with("5.2."), "{id}: {stdout}");
        assert!(value("bash-exe").ends_with("bin/bash"), "{id}: {stdout}");
        assert!(
            value("readlink-exe").ends_with("bin/readlink"),
            "{id}: {stdout}"
        );
        assert!(stdout.contains("ls (GNU coreutils) 9.1"), "{id}: {stdout}");
        assert_eq!(value("stat-type"), "directory", "{id}");
        assert!(value("debian").starts_with("12."), "{id}: {stdout}");
        assert_eq!(value("machine"), "aarch64", "{id}");
        assert_eq!(value("root-fs"), "overlay", "{id}");
        assert_eq!(value("cwd"), "/work", "{id}");
        // Its changes held inside the guest.
        assert_eq!(value("after"), "changed", "{id}");
        assert_eq!(value("ls-deleted"), "yes", "{id}");
        assert_eq!(value("doc-deleted"), "yes", "{id}");
        if disk {
            assert_eq!(value("disk-write"), "refused", "{id}");
        }
        assert!(
            r.artifacts.iter().any(|a| a.name.ends_with("result.txt")),
            "{id}: the working directory's files come back: {:?}",
            r.artifacts
        );
        assert!(
            r.environment.contains_key("rootfs"),
            "{id}: {:?}",
            r.environment
        );
    }
    // The user's root file system is as it was.
    assert_eq!(tree_digest(&dir), dir_before, "the directory changed");
    assert_eq!(file_digest(&image), image_before, "the image changed");
}

/// A runner with fake parts that passes every check before the root file system's.
fn fake_runner(dir: &Path) -> QemuRunner {
    let kernel = dir.join("Image");
    let mut bytes = vec![0u8; 4096];
    bytes[0x38..0x3c].copy_from_slice(b"ARM\x64");
    std::fs::write(&kernel, bytes).unwrap();
    let busybox = dir.join("busybox");
    std::fs::write(&busybox, b"").unwrap();
    let mut profile = MachineProfile::builtin(Arch::Aarch64);
    profile.qemu = "/bin/true".into();
    let parts = GuestParts {
        arch: Arch::Aarch64,
        kernel,
        busybox,
        modules_dir: None,
        kernel_version: None,
    };
    QemuRunner::new(
        QemuConfig::new()
            .with_profile(profile)
            .with_images(ImageSource::Custom(BTreeMap::from([(
                Arch::Aarch64,
                parts,
            )]))),
    )
}

#[test]
fn unusable_root_file_systems_are_refused_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let runner = fake_runner(dir.path());
    let orch = Orchestrator::new(RunConfig::new(dir.path().join("scratch"))).with_runner(runner);
    let not_an_image = dir.path().join("notes.txt");
    std::fs::write(&not_an_image, "just text\n").unwrap();
    for (path, says) in [
        (dir.path().join("missing"), "does not exist"),
        (not_an_image, "is not a file system image"),
    ] {
        let case = TestCase::script("t", "true")
            .with_arch(Arch::Aarch64)
            .with_rootfs(&path);
        let msg = match orch.validate(&[case]) {
            Err(OrchestratorError::Invalid { problems }) => problems.join("\n"),
            other => panic!("expected a validation error, got {other:?}"),
        };
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains(says),
            "{msg}"
        );
    }
}
