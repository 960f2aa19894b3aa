//! Loading, verifying and writing the manifest; the cache lock.

use super::*;

// ---------------------------------------------------------------------------------------------
// Loading and verifying

/// Reads `<cache_dir>/manifest.json` and checks it: every image's kernel and busybox must match
/// their digests, and the `.deb` files and module directories must be present (with the
/// recorded sizes). This is fast (no network, well under a second for all architectures).
///
/// Fails with [`ProvisionError::NotProvisioned`] (naming `cargo xtask test`) when nothing is
/// provisioned; use [`Manifest::image`] to get one architecture's image.
pub fn load(cache_dir: &Path) -> Result<Manifest, ProvisionError> {
    let cache_dir = absolute(cache_dir)?;
    let _lock = lock_shared(&cache_dir)?;
    let manifest = match read_manifest(&cache_dir)? {
        Some(manifest) => manifest,
        None => {
            return Err(ProvisionError::NotProvisioned {
                cache_dir,
                reason: format!("there is no {MANIFEST_FILE}"),
            });
        }
    };
    if manifest.images.is_empty() {
        return Err(ProvisionError::NotProvisioned {
            cache_dir,
            reason: format!("{MANIFEST_FILE} lists no images"),
        });
    }
    for image in manifest.images.values() {
        verify_image(&cache_dir, image, false)?;
    }
    Ok(manifest)
}

/// Reads the manifest; `Ok(None)` when there is none. A manifest of another version is an error.
pub(super) fn read_manifest(cache_dir: &Path) -> Result<Option<Manifest>, ProvisionError> {
    let path = cache_dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("reading", &path)(e)),
    };
    let mut manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| ProvisionError::Corrupt {
            path: path.clone(),
            reason: format!("it is not a valid manifest ({e})"),
        })?;
    if manifest.version != MANIFEST_VERSION {
        return Err(ProvisionError::Corrupt {
            path,
            reason: format!(
                "it has format version {}, this program uses {MANIFEST_VERSION}",
                manifest.version
            ),
        });
    }
    manifest.cache_dir = cache_dir.to_owned();
    for image in manifest.images.values_mut() {
        image.map_paths(|p| cache_dir.join(p));
    }
    Ok(Some(manifest))
}

/// Writes the manifest atomically (temporary file, fsync, rename).
pub(super) fn write_manifest(manifest: &Manifest) -> Result<(), ProvisionError> {
    let cache_dir = &manifest.cache_dir;
    let mut on_disk = manifest.clone();
    for image in on_disk.images.values_mut() {
        image.map_paths(|p| p.strip_prefix(cache_dir).unwrap_or(p).to_owned());
    }
    let mut json = serde_json::to_string_pretty(&on_disk).expect("a manifest serializes");
    json.push('\n');
    let path = cache_dir.join(MANIFEST_FILE);
    let tmp = cache_dir.join(format!("{MANIFEST_FILE}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    file.write_all(json.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err("writing", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("renaming into place", &path))?;
    Ok(())
}

pub(super) fn relative_key(cache_dir: &Path, path: &Path) -> String {
    path.strip_prefix(cache_dir)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}

/// Checks an image against its recorded digests. `full` hashes every file; otherwise only the
/// kernel and busybox are hashed and the other files' sizes are compared.
pub(super) fn verify_image(
    cache_dir: &Path,
    image: &GuestImage,
    full: bool,
) -> Result<(), ProvisionError> {
    let corrupt = |path: &Path, reason: String| ProvisionError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if !image.modules_dir.join("modules.order").is_file() {
        return Err(corrupt(
            &image.modules_dir,
            format!("the {} kernel modules are missing", image.arch),
        ));
    }
    let kernel = relative_key(cache_dir, &image.kernel);
    let busybox = relative_key(cache_dir, &image.busybox);
    for key in [&kernel, &busybox] {
        if !image.files.contains_key(key) {
            return Err(corrupt(
                &cache_dir.join(MANIFEST_FILE),
                format!("it records no digest for {key}"),
            ));
        }
    }
    for (key, digest) in &image.files {
        let path = cache_dir.join(key);
        let meta = fs::metadata(&path).map_err(|e| corrupt(&path, e.to_string()))?;
        if meta.len() != digest.size {
            return Err(corrupt(
                &path,
                format!("it has {} bytes, {} were recorded", meta.len(), digest.size),
            ));
        }
        if full || *key == kernel || *key == busybox {
            let actual = hash_file(&path)?;
            if actual != digest.blake3 {
                return Err(corrupt(
                    &path,
                    format!(
                        "its BLAKE3 digest is {actual}, {} was recorded",
                        digest.blake3
                    ),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn hash_file(path: &Path) -> Result<String, ProvisionError> {
    let file = File::open(path).map_err(io_err("opening", path))?;
    let mut hasher = blake3::Hasher::new();
    hasher
        .update_reader(file)
        .map_err(io_err("reading", path))?;
    Ok(hasher.finalize().to_hex().to_string())
}

pub(super) fn digest(path: &Path) -> Result<FileDigest, ProvisionError> {
    let size = fs::metadata(path).map_err(io_err("reading", path))?.len();
    Ok(FileDigest {
        size,
        blake3: hash_file(path)?,
    })
}

pub(super) fn absolute(path: &Path) -> Result<PathBuf, ProvisionError> {
    std::path::absolute(path).map_err(io_err("resolving", path))
}

// ---------------------------------------------------------------------------------------------
// Locking

pub(super) fn lock_exclusive(cache_dir: &Path) -> Result<Flock<File>, ProvisionError> {
    let path = cache_dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err("creating the lock file", &path))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| io_err("locking", &path)(io::Error::from(errno)))
}

/// A shared lock, so that loading waits for a running [`provision`]. A cache without a lock
/// file (never provisioned, or read-only and copied from elsewhere) is read unlocked.
pub(super) fn lock_shared(cache_dir: &Path) -> Result<Option<Flock<File>>, ProvisionError> {
    let path = cache_dir.join(LOCK_FILE);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    Flock::lock(file, FlockArg::LockShared)
        .map(Some)
        .map_err(|(_, errno)| io_err("locking", &path)(io::Error::from(errno)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path();
        let arch_dir = cache.join("armv7");
        let modules = arch_dir.join("root/lib/modules/6.1.0-1-armmp");
        fs::create_dir_all(&modules).unwrap();
        fs::write(modules.join("modules.order"), "").unwrap();
        fs::create_dir_all(arch_dir.join("root/boot")).unwrap();
        fs::create_dir_all(arch_dir.join("root/bin")).unwrap();
        let kernel = arch_dir.join("root/boot/vmlinuz-6.1.0-1-armmp");
        let busybox = arch_dir.join("root/bin/busybox");
        fs::write(&kernel, b"kernel").unwrap();
        fs::write(&busybox, b"busybox").unwrap();
        let mut files = BTreeMap::new();
        for p in [&kernel, &busybox] {
            files.insert(relative_key(cache, p), digest(p).unwrap());
        }
        let image = GuestImage {
            arch: Arch::Armv7,
            debian_arch: "armhf".into(),
            debian_suite: "bookworm".into(),
            apt_suites: vec!["bookworm".into()],
            kernel_package: "linux-image-6.1.0-1-armmp".into(),
            kernel_package_version: "6.1.1-1".into(),
            kernel_version: "6.1.0-1-armmp".into(),
            kernel: kernel.clone(),
            kernel_config: arch_dir.join("root/boot/config-6.1.0-1-armmp"),
            root: arch_dir.join("root"),
            modules_dir: modules,
            busybox: busybox.clone(),
            busybox_version: "1:1.35.0-4".into(),
            files,
            notes: vec![],
        };
        let mut manifest = Manifest::empty(cache);
        manifest.images.insert(Arch::Armv7, image);
        write_manifest(&manifest).unwrap();

        let text = fs::read_to_string(cache.join(MANIFEST_FILE)).unwrap();
        assert!(text.contains("\"armv7/root/boot/vmlinuz-6.1.0-1-armmp\""));
        assert!(!text.contains(&*cache.to_string_lossy()));

        let loaded = load(cache).unwrap();
        assert_eq!(loaded, manifest);
        assert_eq!(loaded.image(Arch::Armv7).unwrap().kernel, kernel);
        let err = loaded.image(Arch::Riscv64).unwrap_err().to_string();
        assert!(err.contains(PROVISION_COMMAND), "{err}");

        // A modified kernel is caught, and so is a missing manifest.
        fs::write(&kernel, b"kernel!").unwrap();
        let err = load(cache).unwrap_err();
        assert!(matches!(err, ProvisionError::Corrupt { .. }), "{err}");
        fs::write(&kernel, b"kernal").unwrap();
        assert!(load(cache).unwrap_err().to_string().contains("BLAKE3"));
        let empty = tempfile::tempdir().unwrap();
        let err = load(empty.path()).unwrap_err().to_string();
        assert!(err.contains(PROVISION_COMMAND), "{err}");
    }
}
