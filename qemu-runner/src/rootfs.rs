//! A test's root file system (`rootfs`): checked on the host before anything boots, given to
//! the guest as a read-only 9p share (a directory) or a read-only virtio disk (an image), and
//! mounted by the agent under an overlay whose upper layer is in memory: the test can change
//! anything in it, and the user's files stay as they are.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use crate::profile::MachineProfile;

/// The 9p mount tag, the disk's serial and the QEMU ids of the root file system's devices.
pub const TAG: &str = "orchroot";

/// Where the agent mounts the merged root (the test's `/`) in the guest.
pub const GUEST_ROOT: &str = "/rootfs/merged";

/// The `PATH` of a test in a root file system unless its `env` sets one (Debian's for root).
pub const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the root file system is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RootfsKind {
    /// A directory, shared over 9p.
    Dir,
    /// An ext2, ext3 or ext4 image (mounted as ext4).
    Ext4,
    /// A squashfs image.
    Squashfs,
}

/// A checked root file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rootfs {
    /// The directory or image (absolute).
    pub path: PathBuf,
    /// What it is.
    pub kind: RootfsKind,
}

/// Why a root file system cannot be used; each message names the path and the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootfsError {
    /// Nothing is at the path.
    #[error(
        "root file system {} does not exist: fix `rootfs`, or make one (a directory or an ext4 image; for example `mmdebstrap --variant=extract --architectures=arm64 --include=bash,coreutils bookworm DIR`, see the README, \"Root filesystem\")",
        path.display()
    )]
    Missing {
        /// The path.
        path: PathBuf,
    },
    /// The path cannot be read.
    #[error("root file system {} cannot be read: {source}: make it readable by the user running the tests", path.display())]
    Unreadable {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The directory is empty.
    #[error("root file system directory {} is empty: give a directory holding a root file system (with /bin, /lib, /usr ...)", path.display())]
    EmptyDir {
        /// The path.
        path: PathBuf,
    },
    /// The file is not an image of a file system the guest can mount.
    #[error(
        "root file system {} is not a file system image the guest can mount ({found}): give a directory, or an ext2/3/4 image (`mkfs.ext4 -d DIR IMAGE 1G`) or a squashfs one (`mksquashfs DIR IMAGE`)",
        path.display()
    )]
    NotAnImage {
        /// The path.
        path: PathBuf,
        /// What it looks like instead.
        found: String,
    },
    /// Neither a directory nor a regular file.
    #[error("root file system {} is neither a directory nor a file system image: give a directory or an ext4 or squashfs image", path.display())]
    NotUsable {
        /// The path.
        path: PathBuf,
    },
}

impl Rootfs {
    /// Checks `path`: an existing, non-empty directory, or an ext2/3/4 or squashfs image.
    pub fn check(path: &Path) -> Result<Rootfs, RootfsError> {
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RootfsError::Missing {
                    path: path.to_owned(),
                });
            }
            Err(source) => {
                return Err(RootfsError::Unreadable {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let unreadable = |source| RootfsError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let kind = if meta.is_dir() {
            let mut entries = std::fs::read_dir(path).map_err(unreadable)?;
            if entries.next().is_none() {
                return Err(RootfsError::EmptyDir {
                    path: path.to_owned(),
                });
            }
            RootfsKind::Dir
        } else if meta.is_file() {
            let mut head = Vec::with_capacity(4096);
            std::fs::File::open(path)
                .and_then(|f| f.take(4096).read_to_end(&mut head))
                .map_err(unreadable)?;
            image_kind(&head).map_err(|found| RootfsError::NotAnImage {
                path: path.to_owned(),
                found,
            })?
        } else {
            return Err(RootfsError::NotUsable {
                path: path.to_owned(),
            });
        };
        let path = std::fs::canonicalize(path).map_err(unreadable)?;
        Ok(Rootfs { path, kind })
    }

    /// The kernel modules the guest needs for it (built-in ones and those the kernel does not
    /// have are left out by the runner): the virtio transport, the device's driver, the file
    /// system and overlayfs.
    pub fn modules(&self, profile: &MachineProfile) -> Vec<String> {
        let transport = if pci(profile) {
            "virtio_pci"
        } else {
            "virtio_mmio"
        };
        let own: &[&str] = match self.kind {
            RootfsKind::Dir => &["9pnet_virtio", "9p"],
            // ext4 asks the crypto API for crc32c as it mounts (no dependency says so).
            RootfsKind::Ext4 => &["virtio_blk", "crc32c_generic", "ext4"],
            RootfsKind::Squashfs => &["virtio_blk", "squashfs"],
        };
        std::iter::once(transport)
            .chain(own.iter().copied())
            .chain(["overlay"])
            .map(str::to_owned)
            .collect()
    }

    /// The QEMU arguments of its device on `profile`'s machine (PCI on x86_64's q35, virtio-mmio
    /// on the `virt` machines, as the profile's virtio-serial controller).
    pub fn qemu_args(&self, profile: &MachineProfile) -> Vec<String> {
        let bus = if pci(profile) { "pci" } else { "device" };
        // QEMU's option syntax: a comma in a value is written twice.
        let path = self.path.to_string_lossy().replace(',', ",,");
        match self.kind {
            RootfsKind::Dir => vec![
                "-fsdev".to_owned(),
                format!("local,id={TAG},path={path},security_model=none,readonly=on"),
                "-device".to_owned(),
                format!("virtio-9p-{bus},fsdev={TAG},mount_tag={TAG}"),
            ],
            RootfsKind::Ext4 | RootfsKind::Squashfs => vec![
                "-drive".to_owned(),
                format!("file={path},format=raw,if=none,id={TAG},readonly=on"),
                "-device".to_owned(),
                format!("virtio-blk-{bus},drive={TAG},serial={TAG}"),
            ],
        }
    }

    /// The agent's `/orch/rootfs` line: `9p`, or `blk <type> <mount options>`.
    pub fn agent_line(&self) -> String {
        match self.kind {
            RootfsKind::Dir => "9p\n".to_owned(),
            // `noload`: no journal replay on a read-only disk.
            RootfsKind::Ext4 => "blk ext4 ro,noload\n".to_owned(),
            RootfsKind::Squashfs => "blk squashfs ro\n".to_owned(),
        }
    }
}

/// Whether the profile's virtio devices are PCI ones (else virtio-mmio).
fn pci(profile: &MachineProfile) -> bool {
    if profile.virtio_serial.is_empty() {
        profile.arch == orchestrator_core::Arch::X86_64
    } else {
        profile.virtio_serial.ends_with("-pci")
    }
}

/// The file system of an image from its first 4 KiB, or what it looks like instead.
fn image_kind(head: &[u8]) -> Result<RootfsKind, String> {
    if head.is_empty() {
        return Err("the file is empty".to_owned());
    }
    if head.len() >= 1082 && head[1080..1082] == [0x53, 0xef] {
        return Ok(RootfsKind::Ext4);
    }
    if head.starts_with(b"hsqs") {
        return Ok(RootfsKind::Squashfs);
    }
    if head.starts_with(b"QFI\xfb") {
        return Err(
            "a qcow2 image: convert it with `qemu-img convert -O raw IMAGE IMAGE.raw`".to_owned(),
        );
    }
    if head.len() >= 512 && head[510..512] == [0x55, 0xaa] {
        return Err(
            "a partitioned disk: give the file system of one partition, not the whole disk"
                .to_owned(),
        );
    }
    Err("no ext2/3/4 or squashfs signature".to_owned())
}

#[cfg(test)]
mod tests {
    use orchestrator_core::Arch;

    use super::*;

    #[test]
    fn directories_and_images_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = Rootfs::check(&missing).unwrap_err().to_string();
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("does not exist"),
            "{err}"
        );

        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let err = Rootfs::check(&empty).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");

        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("bin")).unwrap();
        assert_eq!(Rootfs::check(&tree).unwrap().kind, RootfsKind::Dir);

        let mut ext = vec![0u8; 4096];
        ext[1080] = 0x53;
        ext[1081] = 0xef;
        let img = dir.path().join("root.ext4");
        std::fs::write(&img, &ext).unwrap();
        let checked = Rootfs::check(&img).unwrap();
        assert_eq!(checked.kind, RootfsKind::Ext4);
        assert!(checked.path.is_absolute());

        let sq = dir.path().join("root.sqfs");
        std::fs::write(&sq, b"hsqs and more").unwrap();
        assert_eq!(Rootfs::check(&sq).unwrap().kind, RootfsKind::Squashfs);

        for (bytes, says) in [
            (b"".to_vec(), "the file is empty"),
            (b"QFI\xfb\0\0\0\x03".to_vec(), "qemu-img convert"),
            (
                {
                    let mut mbr = vec![0u8; 512];
                    mbr[510] = 0x55;
                    mbr[511] = 0xaa;
                    mbr
                },
                "partitioned disk",
            ),
            (b"just text\n".to_vec(), "no ext2/3/4 or squashfs signature"),
        ] {
            let f = dir.path().join("bad.img");
            std::fs::write(&f, &bytes).unwrap();
            let err = Rootfs::check(&f).unwrap_err().to_string();
            assert!(
                err.contains(says) && err.contains(&f.display().to_string()),
                "{err}"
            );
            assert!(err.contains("mkfs.ext4 -d"), "{err}");
        }
    }

    #[test]
    fn devices_follow_the_machine() {
        let dir = Rootfs {
            path: "/r/a,b".into(),
            kind: RootfsKind::Dir,
        };
        let x86 = MachineProfile::builtin(Arch::X86_64);
        let arm = MachineProfile::builtin(Arch::Aarch64);
        assert_eq!(
            dir.qemu_args(&x86).join(" "),
            "-fsdev local,id=orchroot,path=/r/a,,b,security_model=none,readonly=on \
             -device virtio-9p-pci,fsdev=orchroot,mount_tag=orchroot"
        );
        assert!(
            dir.qemu_args(&arm)
                .join(" ")
                .contains("-device virtio-9p-device,")
        );
        assert_eq!(
            dir.modules(&arm),
            ["virtio_mmio", "9pnet_virtio", "9p", "overlay"]
        );
        let img = Rootfs {
            path: "/r/root.ext4".into(),
            kind: RootfsKind::Ext4,
        };
        assert_eq!(
            img.qemu_args(&arm).join(" "),
            "-drive file=/r/root.ext4,format=raw,if=none,id=orchroot,readonly=on \
             -device virtio-blk-device,drive=orchroot,serial=orchroot"
        );
        assert_eq!(
            img.modules(&x86),
            [
                "virtio_pci",
                "virtio_blk",
                "crc32c_generic",
                "ext4",
                "overlay"
            ]
        );
        assert_eq!(img.agent_line(), "blk ext4 ro,noload\n");
    }

    #[test]
    fn the_agent_uses_the_same_names() {
        let init = crate::agent::INIT_SCRIPT;
        assert!(
            init.contains(&format!(" {TAG} /rootfs/lower")),
            "the 9p tag"
        );
        assert!(init.contains(&format!("= {TAG} ]")), "the disk's serial");
        assert!(
            init.contains(&format!("overlay {GUEST_ROOT} ")),
            "the merged root"
        );
    }
}
