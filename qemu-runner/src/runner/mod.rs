//! [`QemuRunner`]: boots a guest per test and runs the test inside it.
//!
//! The execution modes ([`ExecutionMode`]) are `alone.rs`, `session.rs` and `snapshot.rs`, on
//! the guest lifecycle of `lifecycle.rs`; `console.rs` is the console state machine and
//! `gather.rs` puts what the guest sent into the result.
//!
//! Diagnostics are `tracing` events, never printed: each execution runs in a `qemu` span (the
//! test's id, architecture, attempt and mode), each of its phases in a span of its own
//! (`prepare`, `boot`, `test`, `stop`, `gather`; see [`phase`]).

mod alone;
mod console;
mod gather;
mod lifecycle;
mod planning;
mod port;
mod session;
mod snapshot;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use orchestrator_core::{
    Arch, DEFAULT_OUTPUT_LIMIT, ExecutionContext, Outcome, RunnerError, TestCase, TestResult,
    TestRunner,
};
use tracing::Instrument as _;

use crate::accel::{self, AccelDecision, AccelError, AccelMode, KvmDevice};
use crate::image::{self, GuestParts, TestPart};
use crate::kernel;
use crate::modules::ModuleIndex;
use crate::profile::MachineProfile;
use crate::provision;
use crate::vm::VmSpec;
use lifecycle::Guest;
use planning::Planned;
use snapshot::Snapshot;

/// Where guest kernels and busybox come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ImageSource {
    /// Stock Debian images provisioned into this cache directory (see [`crate::provision`]).
    Provisioned(PathBuf),
    /// Images the user supplies, per architecture.
    Custom(BTreeMap<Arch, GuestParts>),
}

/// How [`QemuRunner`] runs tests ([`QemuConfig::mode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExecutionMode {
    /// One boot per test.
    #[default]
    Alone,
    /// Session mode: a booted guest runs test after test (each with its own timeout, output,
    /// exit code and artifacts) instead of one boot per test. A guest that hangs, crashes or
    /// loses its results is thrown away and the next test boots a fresh one. Tests are sent
    /// over the console, so a test whose files are larger than a few kilobytes still gets a
    /// guest of its own; artifacts come back over the guest's virtio artifact port (one
    /// connection for the guest's life, an archive per test), or over the console when the
    /// kernel has no virtio-serial (bounded by [`QemuConfig::serial_artifact_limit`]).
    Session,
    /// Snapshot reset: the first test of a kind boots a guest, which is saved (QEMU migration
    /// to a file) once its agent is ready; every test then runs in a guest restored from that
    /// file, pristine, in a fraction of a boot's time. Tests are sent and results come back
    /// as in session mode (each restored QEMU's artifact port connects to a listener of its
    /// own).
    SnapshotReset,
}

/// Settings of [`QemuRunner`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct QemuConfig {
    /// Machine profiles per architecture (the built-ins unless replaced).
    pub profiles: BTreeMap<Arch, MachineProfile>,
    /// Accelerator choice for every architecture whose profile makes none
    /// ([`MachineProfile::accel`]); [`QemuConfig::accel_env`] wins over both.
    pub accel: AccelMode,
    /// The value of the `ORCH_ACCEL` environment variable ([`accel::ACCEL_ENV`]), read by
    /// [`QemuConfig::new`]: `auto`, `kvm` or `tcg`, winning over every configured choice (a
    /// bad value fails every test's check, naming the variable). `None` (or blank): not set.
    pub accel_env: Option<String>,
    /// The KVM device (`/dev/kvm`).
    pub kvm_device: PathBuf,
    /// Where kernels and busybox come from.
    pub images: ImageSource,
    /// Where built base initramfs archives and the KVM kernel checks
    /// ([`accel::check_kernel_cached`]) are cached.
    pub build_cache: PathBuf,
    /// Where each VM's private directory (QMP and artifact sockets) and saved snapshots go,
    /// removed when done; the system's temporary directory by default. Keep it short: Unix
    /// socket paths are limited to 107 bytes.
    pub temp_dir: PathBuf,
    /// The architecture of tests that do not name one.
    pub default_arch: Arch,
    /// Bytes of each of stdout, stderr and the kernel log the guest sends back and the result
    /// keeps (head and tail are kept when a stream is longer). `None` (the default): the run's
    /// limit ([`ExecutionContext::output_limit`], the plan's `[run] output-limit`, 1 MiB unless
    /// set), as for every runner; `Some` overrides it for this runner's tests.
    pub output_limit: Option<u64>,
    /// Bytes of console output kept in `console.log`.
    pub console_log_limit: u64,
    /// Kernel modules loaded in every guest.
    pub modules: Vec<String>,
    /// How often a damaged transfer is asked for again before giving up.
    pub max_resends: u32,
    /// Limits on the artifacts a guest may send back.
    pub artifact_limits: crate::artifacts::ArtifactLimits,
    /// Largest artifact archive sent over the serial console, when the guest has no virtio
    /// port (a kernel without the modules); the console carries about 85 KB/s under TCG.
    pub serial_artifact_limit: u64,
    /// How long the guest may take to send results and artifacts after the test exits.
    pub transfer_timeout: std::time::Duration,
    /// Whether every guest gets the virtio artifact channel, so that core dumps of crashing
    /// programs come back even from tests that name no artifacts (costs loading two modules at
    /// boot).
    pub core_dumps: bool,
    /// Whether artifacts travel over a virtio-serial port (fast); `false` forces the serial
    /// console (slow, for kernels without virtio, and for comparison).
    pub virtio_artifacts: bool,
    /// How tests run: a boot each (the default), in session guests, or in guests restored
    /// from a snapshot.
    pub mode: ExecutionMode,
    /// Campaign planning, in [`ExecutionMode::Alone`]: before a run ([`TestRunner::plan`]),
    /// tests that can share a booted state (same architecture, kernel, module tree, machine
    /// profile, memory and CPUs) are grouped, and each test of a group of two or more runs in a
    /// guest restored from one snapshot of the group's booted guest, pristine; a test that
    /// needs a guest of its own (KUnit at boot, a `vmcore`, a root file system, a display, its
    /// own kernel arguments, `isolated`) boots one. Each result's environment
    /// records its `mode` and why (`planning`). Off (`false`) here by default, so a runner
    /// built in code boots a guest per test; a plan's `[qemu] planning` turns it on unless it
    /// says `false` ([`QemuConfig::with_plan`]).
    pub planning: bool,
    /// Most QEMU VMs running at once, at least 1: a test waits for a free slot before its VM
    /// starts, and holds it until its result is ready (a session guest or a restored snapshot
    /// counts as one VM while it runs a test; idle session guests do not count). `None`: the
    /// number of CPUs.
    pub pool: Option<usize>,
    /// Whether a kernel panic in any test leaves the guest's memory as its `vmcore` artifact
    /// (a test's [`Requirements::vmcore`](orchestrator_core::Requirements::vmcore) does it for
    /// that test): see `vmcore.rs`.
    pub vmcore: bool,
}

impl QemuConfig {
    /// Built-in profiles, automatic accelerator choice, the provisioned Debian images in
    /// [`provision::default_cache_dir`].
    pub fn new() -> Self {
        let cache = provision::default_cache_dir();
        QemuConfig {
            profiles: MachineProfile::builtins(),
            accel: AccelMode::Auto,
            accel_env: std::env::var_os(accel::ACCEL_ENV).map(|v| v.to_string_lossy().into_owned()),
            kvm_device: PathBuf::from("/dev/kvm"),
            build_cache: cache.join("build"),
            temp_dir: std::env::temp_dir(),
            images: ImageSource::Provisioned(cache),
            default_arch: Arch::host().unwrap_or(Arch::X86_64),
            output_limit: None,
            console_log_limit: 16 << 20,
            modules: Vec::new(),
            max_resends: 3,
            artifact_limits: crate::artifacts::ArtifactLimits::default(),
            serial_artifact_limit: 4 << 20,
            transfer_timeout: std::time::Duration::from_secs(120),
            core_dumps: true,
            virtio_artifacts: true,
            mode: ExecutionMode::Alone,
            planning: false,
            pool: None,
            vmcore: false,
        }
    }

    /// Uses these images.
    #[must_use]
    pub fn with_images(mut self, images: ImageSource) -> Self {
        self.images = images;
        self
    }

    /// Sets the accelerator choice.
    #[must_use]
    pub fn with_accel(mut self, accel: AccelMode) -> Self {
        self.accel = accel;
        self
    }

    /// Sets (or, with `None`, clears) the `ORCH_ACCEL` value (see [`QemuConfig::accel_env`]).
    #[must_use]
    pub fn with_accel_env(mut self, value: Option<&str>) -> Self {
        self.accel_env = value.map(str::to_owned);
        self
    }

    /// Looks for the KVM device at `path` instead of `/dev/kvm`.
    #[must_use]
    pub fn with_kvm_device(mut self, path: impl Into<PathBuf>) -> Self {
        self.kvm_device = path.into();
        self
    }

    /// Replaces the profile of one architecture.
    #[must_use]
    pub fn with_profile(mut self, profile: MachineProfile) -> Self {
        self.profiles.insert(profile.arch, profile);
        self
    }

    /// Sets how tests run.
    #[must_use]
    pub fn with_mode(mut self, mode: ExecutionMode) -> Self {
        self.mode = mode;
        self
    }

    /// Turns campaign planning on or off (see [`QemuConfig::planning`]).
    #[must_use]
    pub fn with_planning(mut self, on: bool) -> Self {
        self.planning = on;
        self
    }

    /// Turns session mode on (see [`ExecutionMode::Session`]) or, if it was on, off.
    #[must_use]
    pub fn with_session(self, session: bool) -> Self {
        self.with_mode_switched(ExecutionMode::Session, session)
    }

    /// Turns snapshot reset on (see [`ExecutionMode::SnapshotReset`]) or, if it was on, off.
    #[must_use]
    pub fn with_snapshot_reset(self, on: bool) -> Self {
        self.with_mode_switched(ExecutionMode::SnapshotReset, on)
    }

    /// `mode` on, or off (back to [`ExecutionMode::Alone`]) if it was the mode.
    fn with_mode_switched(mut self, mode: ExecutionMode, on: bool) -> Self {
        if on {
            self.mode = mode;
        } else if self.mode == mode {
            self.mode = ExecutionMode::Alone;
        }
        self
    }

    /// Sets where built archives are cached.
    #[must_use]
    pub fn with_build_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.build_cache = dir.into();
        self
    }
}

impl ExecutionMode {
    /// The mode's name for logs: `alone`, `session`, `snapshot-reset`.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionMode::Alone => "alone",
            ExecutionMode::Session => "session",
            ExecutionMode::SnapshotReset => "snapshot-reset",
        }
    }
}

impl Default for QemuConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// An accelerator decision, made once by whichever test needs it first.
type DecisionCell = std::sync::Arc<tokio::sync::OnceCell<AccelDecision>>;

/// Boots a QEMU guest per test: the test runs inside, under the guest agent, and comes back
/// with its exit code, output, kernel log and console log; crashes, hangs and boot failures
/// are labelled from the console.
#[derive(Debug)]
pub struct QemuRunner {
    config: QemuConfig,
    /// Accelerator decisions by architecture and kernel.
    /// Accelerator decisions per architecture and kernel, each made once (tests of other
    /// kernels do not wait for a kernel's KVM check).
    accel: Mutex<HashMap<(Arch, PathBuf), DecisionCell>>,
    manifest: Mutex<Option<provision::Manifest>>,
    /// Idle session guests, by what they were booted with.
    sessions: Mutex<HashMap<String, Vec<Guest>>>,
    /// What campaign planning decided for each test of the run, by test id.
    planned: Mutex<HashMap<String, Planned>>,
    /// Saved guests for snapshot reset, by what they were booted with.
    snapshots: Mutex<HashMap<String, std::sync::Arc<tokio::sync::OnceCell<Snapshot>>>>,
    boots: std::sync::atomic::AtomicU32,
    /// One permit per VM that may run at once ([`QemuConfig::pool`]).
    pool: tokio::sync::Semaphore,
    /// Module trees indexed so far, by directory (`lib/modules/<version>`).
    module_trees: Mutex<HashMap<PathBuf, Arc<ModuleIndex>>>,
    /// Kernel releases read from kernel images so far ([`kernel::release`]), by image.
    releases: Mutex<HashMap<PathBuf, Option<String>>>,
    /// BLAKE3 digests of the tests' own kernel images so far, by image.
    digests: Mutex<HashMap<PathBuf, Option<String>>>,
    /// `bzImage`s unpacked for a direct (PVH) boot, by image: each done once, `None` when the
    /// image boots as it is ([`MachineProfile::unpack_kernel`]).
    unpacked: Mutex<HashMap<PathBuf, Arc<tokio::sync::OnceCell<Option<PathBuf>>>>>,
}

const NAME: &str = "qemu";

impl QemuRunner {
    /// A runner with these settings.
    pub fn new(config: QemuConfig) -> Self {
        let pool = config
            .pool
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        QemuRunner {
            pool: tokio::sync::Semaphore::new(pool),
            config,
            accel: Mutex::new(HashMap::new()),
            manifest: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            planned: Mutex::new(HashMap::new()),
            boots: std::sync::atomic::AtomicU32::new(0),
            module_trees: Mutex::new(HashMap::new()),
            releases: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
            unpacked: Mutex::new(HashMap::new()),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    fn arch_of(&self, case: &TestCase) -> Arch {
        case.requirements.arch.unwrap_or(self.config.default_arch)
    }

    /// The machine profile of `arch` (a configuration error when there is none).
    fn profile(&self, arch: Arch) -> Result<&MachineProfile, RunnerError> {
        self.config.profiles.get(&arch).ok_or_else(|| {
            RunnerError::config(format!(
                "no machine profile for {arch}: add one to the runner's profiles"
            ))
        })
    }

    /// The kernel, busybox and modules for a test.
    /// (Configuration errors: what is missing is the setup's to fix.)
    fn parts(&self, case: &TestCase, arch: Arch) -> Result<GuestParts, RunnerError> {
        let mut parts = match &self.config.images {
            ImageSource::Custom(map) => map.get(&arch).cloned().ok_or_else(|| {
                RunnerError::config(format!(
                    "no guest image configured for {arch}: add one to the runner's images"
                ))
            })?,
            ImageSource::Provisioned(dir) => {
                let mut guard = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
                if guard.is_none() {
                    *guard = Some(provision::load(dir).map_err(RunnerError::config)?);
                }
                let manifest = guard.as_ref().expect("just loaded");
                let image = manifest.images.get(&arch).ok_or_else(|| {
                    RunnerError::config(format!(
                        "no provisioned {arch} image in {}: run `cargo xtask test` (or qemu_runner::provision::provision) to fetch it",
                        dir.display()
                    ))
                })?;
                GuestParts {
                    arch,
                    kernel: image.kernel.clone(),
                    busybox: image.busybox.clone(),
                    modules_dir: Some(image.modules_dir.clone()),
                    kernel_version: Some(image.kernel_version.clone()),
                }
            }
        };
        if let Some(kernel) = &case.requirements.kernel {
            // The test's own kernel: its modules are not known, unless it names their tree.
            parts.kernel = kernel.clone();
            parts.modules_dir = None;
            parts.kernel_version = None;
        }
        if let Some(given) = &case.requirements.modules_dir {
            let (dir, version) = ModuleIndex::find_install_tree(given)
                .map_err(|e| RunnerError::config(format!("`modules-dir`: {e}")))?;
            parts.modules_dir = Some(dir);
            parts.kernel_version = Some(version);
        }
        Ok(parts)
    }

    /// Whether a kernel panic in `case` leaves the guest's memory as its `vmcore` artifact.
    pub(super) fn vmcore_for(&self, case: &TestCase) -> bool {
        self.config.vmcore || case.requirements.vmcore
    }

    /// The index of module tree `dir`, scanned once per runner.
    fn module_index(&self, dir: &Path) -> Result<Arc<ModuleIndex>, crate::modules::ModuleError> {
        let mut trees = self.module_trees.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = trees.get(dir) {
            return Ok(Arc::clone(index));
        }
        let index = Arc::new(ModuleIndex::scan(dir)?);
        trees.insert(dir.to_owned(), Arc::clone(&index));
        Ok(index)
    }

    /// The release of the kernel image at `kernel`, read once per runner.
    fn kernel_release(&self, kernel: &Path) -> Option<String> {
        let mut releases = self.releases.lock().unwrap_or_else(|e| e.into_inner());
        releases
            .entry(kernel.to_owned())
            .or_insert_with(|| kernel::release(kernel))
            .clone()
    }

    /// The BLAKE3 digest (hex) of the kernel image at `kernel`, read once per runner.
    fn kernel_digest(&self, kernel: &Path) -> Option<String> {
        let mut digests = self.digests.lock().unwrap_or_else(|e| e.into_inner());
        digests
            .entry(kernel.to_owned())
            .or_insert_with(|| {
                let mut hasher = blake3::Hasher::new();
                let mut file = std::fs::File::open(kernel).ok()?;
                std::io::copy(&mut file, &mut hasher).ok()?;
                Some(hasher.finalize().to_hex().to_string())
            })
            .clone()
    }

    /// The unpacked `vmlinux` QEMU boots instead of the `bzImage` at `kernel`, when the
    /// profile asks for it and the kernel allows it ([`crate::pvh`]); made once per image
    /// and kept in the build cache. `None`: boot the image as it is (the reason is logged).
    async fn unpacked_kernel(&self, profile: &MachineProfile, kernel: &Path) -> Option<PathBuf> {
        if !profile.unpack_kernel {
            return None;
        }
        let cell = {
            let mut cells = self.unpacked.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(cells.entry(kernel.to_owned()).or_default())
        };
        // (The image is identified once, with the rest: not at every boot.)
        cell.get_or_init(|| async {
            if kernel::identify(kernel).ok()?.format != kernel::KernelFormat::BzImage {
                return None;
            }
            let digest = self.kernel_digest(kernel)?;
            let (image, cache) = (kernel.to_owned(), self.config.build_cache.clone());
            let made =
                tokio::task::spawn_blocking(move || crate::pvh::unpacked(&image, &digest, &cache))
                    .await;
            match made {
                Ok(Ok(file)) => {
                    tracing::debug!(kernel = %kernel.display(), vmlinux = %file.display(), "booting the unpacked kernel through its PVH entry");
                    Some(file)
                }
                Ok(Err(why)) => {
                    tracing::info!(kernel = %kernel.display(), "booting the kernel as it is, not unpacked: {why}");
                    None
                }
                Err(e) => {
                    tracing::warn!(kernel = %kernel.display(), "unpacking the kernel panicked: {e}");
                    None
                }
            }
        })
        .await
        .clone()
    }

    /// For a test with its own `modules-dir`: the tree's index, with every module the guest
    /// will load (the test's, the runner's and the artifact channel's found in the tree)
    /// resolved and built for the kernel that boots (its release as its image shows it, else
    /// the tree's version). `None` for other tests. (Configuration errors: the tree is the
    /// user's to fix.)
    fn own_tree(
        &self,
        case: &TestCase,
        parts: &GuestParts,
        profile: &MachineProfile,
    ) -> Result<Option<Arc<ModuleIndex>>, RunnerError> {
        let (Some(_), Some(dir), Some(version)) = (
            &case.requirements.modules_dir,
            &parts.modules_dir,
            &parts.kernel_version,
        ) else {
            return Ok(None);
        };
        let index = self.module_index(dir).map_err(|e| {
            RunnerError::config(format!(
                "`modules-dir`: {e}; run `make modules` and `make modules_install INSTALL_MOD_PATH=<dir>` for the kernel"
            ))
        })?;
        let modules = self.modules_for(case, profile, Some(&index));
        let names: Vec<&str> = modules.iter().map(String::as_str).collect();
        let in_tree = |e: crate::modules::ModuleError| {
            let fix = match e {
                crate::modules::ModuleError::UnknownModule { .. } => {
                    "; fix the name, or configure the kernel with it (`=m` or `=y`), rebuild it and run `make modules_install` again"
                }
                _ => "",
            };
            RunnerError::config(format!("`modules-dir` {}: {e}{fix}", dir.display()))
        };
        let resolved = index.resolve(&names).map_err(in_tree)?;
        let release = self
            .kernel_release(&parts.kernel)
            .unwrap_or_else(|| version.clone());
        index.check_vermagic(&resolved, &release).map_err(in_tree)?;
        Ok(Some(index))
    }

    fn wants_channel(&self, case: &TestCase) -> bool {
        self.config.virtio_artifacts
            && (self.config.core_dumps || !case.artifacts.is_empty() || case.trace.is_some())
    }

    /// The modules a guest for `case` loads: with `channel` (its kernel's module tree), the
    /// artifact channel's that are modules or built into the kernel there (one that is neither
    /// is left out: the guest then finds no virtio port, unless the kernel has it anyway, and
    /// uses the serial console); then the runner's and the test's own.
    fn modules_for(
        &self,
        case: &TestCase,
        profile: &MachineProfile,
        channel: Option<&ModuleIndex>,
    ) -> Vec<String> {
        self.modules_with(case, profile, channel.filter(|_| self.wants_channel(case)))
    }

    /// [`modules_for`](Self::modules_for), the channel's modules from `channel` whatever the
    /// test collects.
    fn modules_with(
        &self,
        case: &TestCase,
        profile: &MachineProfile,
        channel: Option<&ModuleIndex>,
    ) -> Vec<String> {
        let mut m = Vec::new();
        if let Some(index) = channel {
            m.extend(
                profile
                    .channel_modules
                    .iter()
                    .filter(|c| index.contains(c) || index.is_builtin(c))
                    .cloned(),
            );
        }
        for x in &self.config.modules {
            if !m.contains(x) {
                m.push(x.clone());
            }
        }
        for x in &case.requirements.modules {
            if !m.contains(x) {
                m.push(x.clone());
            }
        }
        m
    }

    /// Does everything up to starting QEMU for `case`: picks the profile, kernel and
    /// accelerator, and writes the initramfs to `dir/initrd.img`. With `wait_for_ack` false the
    /// guest powers off right after reporting, so [`crate::vm::qemu_args`] of the returned spec is
    /// a plain QEMU command line that boots, runs the test and exits (what the boot benchmark
    /// compares the runner with).
    pub async fn prepare(
        &self,
        case: &TestCase,
        dir: &Path,
        wait_for_ack: bool,
    ) -> Result<Prepared, RunnerError> {
        let limit = self.output_limit_of(DEFAULT_OUTPUT_LIMIT);
        self.prepare_inner(case, dir, wait_for_ack, false, limit)
            .await
    }

    /// The bytes of each stream kept for a test: [`QemuConfig::output_limit`] when set, else
    /// the run's `limit` ([`ExecutionContext::output_limit`]).
    pub(super) fn output_limit_of(&self, limit: usize) -> u64 {
        self.config
            .output_limit
            .unwrap_or(u64::try_from(limit).unwrap_or(u64::MAX))
    }

    /// [`output_limit_of`](Self::output_limit_of) the test's context.
    pub(super) fn output_limit(&self, ctx: &ExecutionContext) -> u64 {
        self.output_limit_of(ctx.output_limit())
    }

    async fn prepare_inner(
        &self,
        case: &TestCase,
        dir: &Path,
        wait_for_ack: bool,
        session: bool,
        output_limit: u64,
    ) -> Result<Prepared, RunnerError> {
        phase(
            tracing::debug_span!("prepare"),
            self.prepare_steps(case, dir, wait_for_ack, session, output_limit),
        )
        .await
    }

    /// [`prepare_inner`](Self::prepare_inner), in its phase's span.
    async fn prepare_steps(
        &self,
        case: &TestCase,
        dir: &Path,
        wait_for_ack: bool,
        session: bool,
        output_limit: u64,
    ) -> Result<Prepared, RunnerError> {
        let arch = self.arch_of(case);
        // What is missing or wrong here is the setup's fault: another attempt cannot help.
        // (Tiny file work, left on this thread: looking up QEMU and the firmware, the
        // provisioned manifest read once, the kernel's header.)
        let profile = self.profile(arch)?.clone();
        let qemu = profile.find_qemu().map_err(RunnerError::config)?;
        let firmware = profile.find_firmware().map_err(RunnerError::config)?;
        let parts = self.parts(case, arch)?;
        kernel::check(&parts.kernel, arch).map_err(RunnerError::config)?;
        let rootfs = self.rootfs_of(case)?;
        // A forced KVM that does not work: the configuration's to change.
        let decision = self
            .accel_for(&profile, &qemu, firmware.as_deref(), &parts.kernel)
            .await
            .map_err(RunnerError::config)?;
        tracing::debug!(
            accel = %decision.accel,
            reason = %decision.reason,
            kernel = %parts.kernel.display(),
            "accelerator"
        );

        // The initramfs: cached base plus this test's part.
        let own_tree = self.own_tree(case, &parts, &profile)?;
        // A vmcore guest (never a session guest: such tests boot alone) pauses at a panic.
        let vmcore = self.vmcore_for(case) && !session;
        // A planned group's guest (a session guest, restored for each test of the group) boots
        // as a guest of its own would, with every module of its tests in its initramfs: each
        // test loads its own in its phase.
        let group = if session { self.group_of(case) } else { None };
        // A session guest (which a snapshot saves) gets the artifact channel whatever its
        // first test collects: the tests after it may.
        let wants_channel = if session {
            self.config.virtio_artifacts
        } else {
            self.wants_channel(case)
        };
        let needs_modules = wants_channel
            || vmcore
            || rootfs.is_some()
            || !self.modules_for(case, &profile, None).is_empty()
            || group.as_ref().is_some_and(|g| !g.modules.is_empty());
        let index = match (&own_tree, &parts.modules_dir) {
            (Some(index), _) => Some(Arc::clone(index)),
            (None, Some(dir)) if needs_modules => {
                Some(self.module_index(dir).map_err(RunnerError::new)?)
            }
            _ => None,
        };
        let channel = index.as_deref().filter(|_| wants_channel);
        let mut modules = self.modules_with(case, &profile, channel);
        for m in group.iter().flat_map(|g| &g.modules) {
            if !modules.contains(m) {
                modules.push(m.clone());
            }
        }
        // The channel's modules load at boot; the test's own in its phase, on its clock.
        let mut boot: Vec<String> = profile
            .channel_modules
            .iter()
            .filter(|m| modules.contains(m))
            .cloned()
            .collect();
        // The vmcore devices' drivers load at boot, those the kernel's tree has.
        if let (true, Some(index)) = (vmcore, index.as_deref()) {
            for m in &profile.vmcore_modules {
                if index.contains(m) || index.is_builtin(m) {
                    if !modules.contains(m) {
                        modules.push(m.clone());
                    }
                    boot.push(m.clone());
                }
            }
        }
        // The root file system's modules load at boot too, those the kernel has as files.
        if let (Some(r), Some(index)) = (&rootfs, index.as_deref()) {
            for m in r.modules(&profile).iter().filter(|m| index.contains(m)) {
                for list in [&mut modules, &mut boot] {
                    if !list.contains(m) {
                        list.push(m.clone());
                    }
                }
            }
        }
        let cache = self.config.build_cache.clone();
        let parts2 = parts.clone();
        let base = tokio::task::spawn_blocking(move || {
            image::base_image_indexed(&parts2, index.as_deref(), &modules, &boot, &cache)
        })
        .await
        .map_err(|e| RunnerError::with_source("building the base initramfs panicked", e))?
        .map_err(RunnerError::new)?;
        // This test's part, and the initramfs written: on a blocking thread.
        let test_case = case.clone();
        let dir = dir.to_owned();
        let serial_artifact_limit = self.config.serial_artifact_limit;
        let kernel_version = parts.kernel_version.clone();
        let planned_group = group.is_some();
        let initrd = tokio::task::spawn_blocking(move || {
            let test_part = if session {
                // A planned group's guest loads the boot's modules only.
                let order = if planned_group {
                    &base.boot_order
                } else {
                    &base.load_order
                };
                image::session_archive(
                    output_limit,
                    serial_artifact_limit,
                    order,
                    kernel_version.as_deref(),
                )
            } else {
                image::test_archive(&TestPart {
                    case: &test_case,
                    output_limit,
                    load_order: &base.test_order(),
                    boot_order: &base.boot_order,
                    kernel_version: kernel_version.as_deref(),
                    serial_artifact_limit,
                    wait_for_ack,
                })
            }
            .map_err(RunnerError::new)?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                RunnerError::with_source(format!("failed to create {}", dir.display()), e)
            })?;
            let initrd = dir.join("initrd.img");
            image::assemble(&base.path, &test_part, &initrd).map_err(RunnerError::new)?;
            Ok::<_, RunnerError>(initrd)
        })
        .await
        .map_err(|e| RunnerError::with_source("building the test's initramfs panicked", e))??;
        tracing::debug!(initrd = %initrd.display(), "initramfs written");

        // `panic=-1` reboots at once, which `-no-reboot` turns into QEMU's exit; a vmcore guest
        // waits at the panic (`panic=0`) for the runner to dump it.
        let panic = if vmcore { 0 } else { -1 };
        let mut append = format!("console={} panic={panic} rdinit=/init", profile.console);
        for a in &profile.kernel_args {
            append.push(' ');
            append.push_str(a);
        }
        // The test's own (`kernel-args`), after the profile's: the kernel takes the last.
        for a in &case.requirements.kernel_args {
            append.push(' ');
            append.push_str(a);
        }
        // Sockets live in a short private directory: Unix socket paths are limited to 107 bytes.
        let sockets = tempfile::Builder::new()
            .prefix("orch-vm-")
            .tempdir_in(&self.config.temp_dir)
            .map_err(|e| RunnerError::with_source("failed to create a socket directory", e))?;
        let artifact_listener = if !wants_channel {
            None
        } else {
            let path = sockets.path().join("artifacts.sock");
            Some(tokio::net::UnixListener::bind(&path).map_err(|e| {
                RunnerError::with_source(format!("failed to listen on {}", path.display()), e)
            })?)
        };
        let unpacked_kernel = self.unpacked_kernel(&profile, &parts.kernel).await;
        let spec = VmSpec {
            qemu: qemu.clone(),
            accel: decision.accel,
            kernel: parts.kernel.clone(),
            unpacked_kernel,
            initrd,
            firmware,
            append,
            qmp_socket: sockets.path().join("qmp.sock"),
            artifact_socket: artifact_listener
                .as_ref()
                .map(|_| sockets.path().join("artifacts.sock")),
            incoming: false,
            vmcore,
            rootfs,
            ram_file: None,
            memory_mib: case.requirements.memory_mib.unwrap_or(profile.memory_mib),
            cpus: case.requirements.cpus.unwrap_or(profile.cpus),
            profile: profile.clone(),
        };
        Ok(Prepared {
            spec,
            decision,
            profile,
            qemu,
            artifact_listener,
            sockets,
        })
    }

    /// What keeps this runner from executing `case` (its setup, not the test), with the fix.
    /// (Configuration errors, all of them.)
    fn unsupported(&self, case: &TestCase) -> Result<(), RunnerError> {
        let arch = self.arch_of(case);
        let profile = self.profile(arch)?;
        accel::resolve_mode(
            self.config.accel_env.as_deref(),
            arch,
            profile.accel,
            self.config.accel,
        )
        .map_err(RunnerError::config)?;
        profile.find_qemu().map_err(RunnerError::config)?;
        profile.find_firmware().map_err(RunnerError::config)?;
        let parts = self.parts(case, arch)?;
        kernel::check(&parts.kernel, arch).map_err(RunnerError::config)?;
        self.rootfs_of(case)?;
        if !parts.busybox.is_file() {
            return Err(RunnerError::config(format!(
                "busybox for {arch} not found at {}: run `cargo xtask test` to provision it",
                parts.busybox.display()
            )));
        }
        let modules = self.modules_for(case, profile, None);
        if !modules.is_empty() && parts.modules_dir.is_none() {
            return Err(RunnerError::config(format!(
                "kernel modules ({}) need a module tree, but this {arch} kernel comes without one (the test or the runner gives its own kernel): give its `modules-dir` (what `make modules_install INSTALL_MOD_PATH=DIR` made), drop `modules`, or use the provisioned kernel",
                modules.join(", ")
            )));
        }
        self.own_tree(case, &parts, profile)?;
        for key in case.env.keys() {
            if !crate::agent::valid_env_name(key) {
                return Err(RunnerError::config(format!(
                    "environment variable `{key}` is not a valid shell variable name in the guest"
                )));
            }
        }
        Ok(())
    }

    /// The test's root file system, checked (a configuration error names the path and the fix).
    fn rootfs_of(&self, case: &TestCase) -> Result<Option<crate::rootfs::Rootfs>, RunnerError> {
        case.requirements
            .rootfs
            .as_deref()
            .map(crate::rootfs::Rootfs::check)
            .transpose()
            .map_err(RunnerError::config)
    }

    /// The accelerator for `kernel` on `profile`'s machine: decided once per architecture and
    /// kernel, KVM only after the kernel printed its banner under KVM (remembered on disk).
    async fn accel_for(
        &self,
        profile: &MachineProfile,
        qemu: &Path,
        firmware: Option<&Path>,
        kernel: &Path,
    ) -> Result<AccelDecision, AccelError> {
        let arch = profile.arch;
        let mode = accel::resolve_mode(
            self.config.accel_env.as_deref(),
            arch,
            profile.accel,
            self.config.accel,
        )?;
        let cell = self
            .accel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((arch, kernel.to_owned()))
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.decide_accel(&mode, profile, qemu, firmware, kernel))
            .await
            .cloned()
    }

    /// Makes the accelerator decision for a kernel: the KVM check when it can matter.
    async fn decide_accel(
        &self,
        mode: &accel::ResolvedMode,
        profile: &MachineProfile,
        qemu: &Path,
        firmware: Option<&Path>,
        kernel: &Path,
    ) -> Result<AccelDecision, AccelError> {
        let arch = profile.arch;
        let device = KvmDevice::detect(&self.config.kvm_device);
        let host = Arch::host();
        // The check is async; run it first when it can matter, then decide synchronously.
        tracing::debug!(
            %arch,
            kernel = %kernel.display(),
            mode = %mode.mode,
            chosen_by = %mode.source,
            device = %self.config.kvm_device.display(),
            state = ?device,
            "deciding the accelerator"
        );
        let check =
            if mode.mode != AccelMode::Tcg && host == Some(arch) && device == KvmDevice::Usable {
                let spec = accel::KernelCheckSpec::new(
                    profile,
                    qemu.to_owned(),
                    firmware.map(Path::to_owned),
                    kernel.to_owned(),
                );
                Some(accel::check_kernel_cached(&spec, &self.config.build_cache).await)
            } else {
                None
            };
        let decision = accel::decide(mode, arch, host, &self.config.kvm_device, &device, || {
            check.unwrap_or(accel::KvmCheck::Fails("the kernel was not checked".into()))
        });
        match &decision {
            Ok(d) => {
                tracing::info!(%arch, accel = %d.accel, reason = %d.reason, "accelerator decided")
            }
            Err(e) => tracing::info!(%arch, error = %e, "no accelerator"),
        }
        decision
    }
}

#[async_trait]
impl TestRunner for QemuRunner {
    fn name(&self) -> &str {
        NAME
    }

    fn check(&self, case: &TestCase) -> Result<(), RunnerError> {
        self.unsupported(case)
    }

    async fn plan(&self, batch: &[&TestCase]) -> Result<(), RunnerError> {
        self.plan_campaign(batch);
        Ok(())
    }

    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        // A planned test restored from its group's snapshot runs in snapshot reset.
        let mode = match (self.config.mode, self.planned(case)) {
            (ExecutionMode::Alone, Some(Planned::Group(_))) => ExecutionMode::SnapshotReset,
            (mode, _) => mode,
        };
        let span = tracing::info_span!(
            "qemu",
            test = %case.id,
            arch = %self.arch_of(case),
            attempt = ctx.attempt(),
            mode = %mode.name(),
        );
        self.execute_in_span(case, ctx).instrument(span).await
    }

    async fn cleanup(&self) -> Result<(), RunnerError> {
        self.cleanup_guests().await;
        Ok(())
    }
}

impl QemuRunner {
    /// [`TestRunner::execute`] in the execution's span.
    async fn execute_in_span(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let waited = std::time::Instant::now();
        // One VM slot for the whole execution; the semaphore is never closed.
        let _slot = tokio::select! {
            biased;
            permit = self.pool.acquire() => permit
                .map_err(|e| RunnerError::with_source("the VM pool is closed", e))?,
            () = ctx.cancel_token().cancelled() => {
                let mut result = TestResult::new(case, NAME, Outcome::Cancelled);
                result.message =
                    Some("the run was cancelled while the test waited for a free VM slot".into());
                return Ok(result);
            }
        };
        tracing::debug!(
            waited_ms = waited.elapsed().as_millis() as u64,
            "VM slot taken"
        );
        let planned = self.planned(case);
        let mut result = match self.config.mode {
            ExecutionMode::Alone => match &planned {
                Some(Planned::Group(group)) => self.execute_planned(case, ctx, group).await,
                _ => self.execute_alone(case, ctx).await,
            },
            // The kernel's own tests run at boot, and kernel arguments are the boot's: a guest
            // of its own.
            _ if needs_own_boot(case) => self.execute_alone(case, ctx).await,
            mode => self.execute_in_guest(case, ctx, mode).await,
        };
        if let (Ok(r), Some(planned)) = (&mut result, &planned) {
            r.environment.insert("planning".into(), planned.describe());
        }
        match &result {
            Ok(r) => tracing::debug!(
                outcome = %r.outcome.label(),
                message = r.message.as_deref().unwrap_or_default(),
                "execution finished"
            ),
            Err(e) => tracing::debug!(kind = ?e.kind(), error = %e.chain(), "execution failed"),
        }
        result
    }

    /// Stops the idle session guests and removes the saved snapshots.
    async fn cleanup_guests(&self) {
        let idle: Vec<Guest> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.drain().flat_map(|(_, v)| v).collect()
        };
        for mut guest in idle {
            tracing::debug!(
                guest = guest.id,
                tests = guest.tests,
                "stopping an idle session guest"
            );
            let _ = guest.vm.send_line("QUIT").await;
            guest.vm.stop().await;
            let _ = guest.vm.finish().await;
        }
        // Saved guests go with their files, removed on a blocking thread (a state file can be
        // large).
        let saved: Vec<_> = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        for (_, snapshot) in &saved {
            if let Some(snapshot) = snapshot.get() {
                snapshot.discard_standby().await;
            }
        }
        blocking(move || drop(saved)).await;
    }
}

/// Whether `case` needs a boot of its own whatever the execution mode: it judges what the
/// kernel printed at boot (`kunit`), or gives the kernel arguments (`kernel-args`).
fn needs_own_boot(case: &TestCase) -> bool {
    case.requirements.kunit || !case.requirements.kernel_args.is_empty()
}

/// A guest ready to start: see [`QemuRunner::prepare`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Prepared {
    /// Where the guest's artifact port connects, when the test collects artifacts.
    pub artifact_listener: Option<tokio::net::UnixListener>,
    /// The private directory holding the sockets (removed when dropped).
    pub sockets: tempfile::TempDir,
    /// What to start.
    pub spec: VmSpec,
    /// The accelerator and why.
    pub decision: AccelDecision,
    /// The machine profile used.
    pub profile: MachineProfile,
    /// The QEMU binary.
    pub qemu: PathBuf,
}

/// The QEMU command line of a spec, quoted for a shell, for reproducing a run by hand.
pub fn command_line(spec: &VmSpec) -> String {
    let mut s = crate::agent::shell_quote(&spec.qemu.to_string_lossy());
    for a in crate::vm::qemu_args(spec) {
        s.push(' ');
        s.push_str(&crate::agent::shell_quote(&a));
    }
    s
}

/// Runs `work`, a phase of an execution, in `span` (a `debug` span named after the phase),
/// with its start and end, and how long it took, as `debug` events.
async fn phase<T>(span: tracing::Span, work: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    span.in_scope(|| tracing::debug!("phase started"));
    let out = work.instrument(span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "phase finished"
        );
    });
    out
}

/// Runs `f` on a blocking thread, in the caller's span, and waits for it; a panic there goes
/// on here.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let span = tracing::Span::current();
    match tokio::task::spawn_blocking(move || span.in_scope(f)).await {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod pool_tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A runner whose executions fail before anything boots: its QEMU binary does not exist.
    fn runner(pool: Option<usize>) -> QemuRunner {
        let mut config = QemuConfig::new().with_images(ImageSource::Custom(BTreeMap::new()));
        config.pool = pool;
        for profile in config.profiles.values_mut() {
            profile.qemu = "/nonexistent/qemu-system".into();
        }
        QemuRunner::new(config)
    }

    #[test]
    fn the_runs_output_limit_reaches_the_guest_unless_the_runner_sets_its_own() {
        let case = TestCase::script("t", "yes");
        let dir = tempfile::tempdir().unwrap();
        let plain = ExecutionContext::new(&case, dir.path());
        let ctx = ExecutionContext::new(&case, dir.path()).with_output_limit(8192);
        let r = runner(None);
        assert_eq!(r.output_limit(&plain), DEFAULT_OUTPUT_LIMIT as u64);
        assert_eq!(r.output_limit(&ctx), 8192);
        // What the guest's agent bounds the test's output by: the `limit` file of its files.
        let files = crate::image::test_files(&crate::image::TestPart {
            case: &case,
            output_limit: r.output_limit(&ctx),
            load_order: &[],
            boot_order: &[],
            kernel_version: None,
            serial_artifact_limit: 1 << 20,
            wait_for_ack: true,
        })
        .unwrap();
        let limit = files.iter().find(|(name, _, _)| *name == "limit").unwrap();
        assert_eq!(limit.2, b"8192\n");
        // A runner's own limit wins over the run's.
        let mut config = QemuConfig::new().with_images(ImageSource::Custom(BTreeMap::new()));
        config.output_limit = Some(4096);
        assert_eq!(QemuRunner::new(config).output_limit(&ctx), 4096);
    }

    #[test]
    fn the_pool_defaults_to_the_cpu_count() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(runner(None).pool.available_permits(), cpus);
        assert_eq!(runner(Some(3)).pool.available_permits(), 3);
        assert_eq!(runner(Some(0)).pool.available_permits(), 1);
    }

    #[tokio::test]
    async fn executions_wait_for_a_free_slot() {
        let runner = runner(Some(1));
        let case = TestCase::script("t", "true");
        let dir = tempfile::tempdir().unwrap();
        let ctx = ExecutionContext::new(&case, dir.path());

        let held = runner.pool.acquire().await.unwrap();
        let waiting =
            tokio::time::timeout(Duration::from_millis(100), runner.execute(&case, &ctx)).await;
        assert!(waiting.is_err(), "the execution must wait for the slot");
        drop(held);
        let err = runner.execute(&case, &ctx).await.unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/qemu-system"),
            "{err}"
        );
        assert_eq!(runner.pool.available_permits(), 1, "the slot is given back");

        // A run cancelled while the test waits ends the wait.
        let _held = runner.pool.acquire().await.unwrap();
        let cancel = CancellationToken::new();
        let ctx = ExecutionContext::new(&case, dir.path()).with_cancel(cancel.clone());
        cancel.cancel();
        let result = runner.execute(&case, &ctx).await.unwrap();
        assert_eq!(result.outcome, Outcome::Cancelled);
    }
}

#[cfg(test)]
mod modules_dir_tests;
