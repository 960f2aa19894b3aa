//! [`QemuRunner`]: boots a guest per test and runs the test inside it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use base64::Engine as _;
use chrono::Utc;
use orchestrator_core::{
    Arch, ArtifactFile, CapturedOutput, CrashKind, ExecutionContext, Outcome, Phase, PhaseTiming,
    RunnerError, TestCase, TestResult, TestRunner,
};
use tokio_util::sync::CancellationToken;

use crate::accel::{self, Accel, AccelDecision, AccelMode, KvmDevice};
use crate::crash::{self, Excerpt, Signal};
use crate::image::{self, GuestParts, TestPart};
use crate::kernel;
use crate::profile::MachineProfile;
use crate::protocol::{Parser, Record, Stream};
use crate::provision;
use crate::vm::{ConsoleEvent, Vm, VmSpec};

/// Where guest kernels and busybox come from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ImageSource {
    /// Stock Debian images provisioned into this cache directory (see [`crate::provision`]).
    Provisioned(PathBuf),
    /// Images the user supplies, per architecture.
    Custom(BTreeMap<Arch, GuestParts>),
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
    /// Bytes of each of stdout, stderr and the kernel log the guest sends back (head and tail
    /// are kept when a stream is longer).
    pub output_limit: u64,
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
    /// Session mode: a booted guest runs test after test (each with its own timeout, output,
    /// exit code and artifacts) instead of one boot per test. A guest that hangs, crashes or
    /// loses its results is thrown away and the next test boots a fresh one. Tests are sent
    /// over the console, so a test whose files are larger than a few kilobytes still gets a
    /// guest of its own; artifacts come back over the console (bounded by
    /// `serial_artifact_limit`).
    pub session: bool,
    /// Snapshot reset: the first test of a kind boots a guest, which is saved (QEMU migration
    /// to a file) once its agent is ready; every test then runs in a guest restored from that
    /// file, pristine, in a fraction of a boot's time. Tests are sent and results come back
    /// as in session mode.
    pub snapshot_reset: bool,
    /// Most QEMU VMs running at once, at least 1: a test waits for a free slot before its VM
    /// starts, and holds it until its result is ready (a session guest or a restored snapshot
    /// counts as one VM while it runs a test; idle session guests do not count). `None`: the
    /// number of CPUs.
    pub pool: Option<usize>,
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
            output_limit: 256 * 1024,
            console_log_limit: 16 << 20,
            modules: Vec::new(),
            max_resends: 3,
            artifact_limits: crate::artifacts::ArtifactLimits::default(),
            serial_artifact_limit: 4 << 20,
            transfer_timeout: std::time::Duration::from_secs(120),
            core_dumps: true,
            virtio_artifacts: true,
            session: false,
            snapshot_reset: false,
            pool: None,
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

    /// Turns session mode on or off (see [`QemuConfig::session`]).
    #[must_use]
    pub fn with_session(mut self, session: bool) -> Self {
        self.session = session;
        self
    }

    /// Turns snapshot reset on or off (see [`QemuConfig::snapshot_reset`]).
    #[must_use]
    pub fn with_snapshot_reset(mut self, on: bool) -> Self {
        self.snapshot_reset = on;
        self
    }

    /// Sets where built archives are cached.
    #[must_use]
    pub fn with_build_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.build_cache = dir.into();
        self
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
    /// Saved guests for snapshot reset, by what they were booted with.
    snapshots: Mutex<HashMap<String, std::sync::Arc<tokio::sync::OnceCell<Snapshot>>>>,
    boots: std::sync::atomic::AtomicU32,
    /// One permit per VM that may run at once ([`QemuConfig::pool`]).
    pool: tokio::sync::Semaphore,
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
            boots: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &QemuConfig {
        &self.config
    }

    fn arch_of(&self, case: &TestCase) -> Arch {
        case.requirements.arch.unwrap_or(self.config.default_arch)
    }

    fn profile(&self, arch: Arch) -> Result<&MachineProfile, String> {
        self.config.profiles.get(&arch).ok_or_else(|| {
            format!("no machine profile for {arch}: add one to the runner's profiles")
        })
    }

    /// The kernel, busybox and modules for a test.
    fn parts(&self, case: &TestCase, arch: Arch) -> Result<GuestParts, String> {
        let mut parts = match &self.config.images {
            ImageSource::Custom(map) => map.get(&arch).cloned().ok_or_else(|| {
                format!("no guest image configured for {arch}: add one to the runner's images")
            })?,
            ImageSource::Provisioned(dir) => {
                let mut guard = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
                if guard.is_none() {
                    *guard = Some(provision::load(dir).map_err(|e| e.to_string())?);
                }
                let manifest = guard.as_ref().expect("just loaded");
                let image = manifest.images.get(&arch).ok_or_else(|| {
                    format!(
                        "no provisioned {arch} image in {}: run `cargo xtask test` (or qemu_runner::provision::provision) to fetch it",
                        dir.display()
                    )
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
            // The test's own kernel: its modules are not known.
            parts.kernel = kernel.clone();
            parts.modules_dir = None;
            parts.kernel_version = None;
        }
        Ok(parts)
    }

    fn wants_channel(&self, case: &TestCase) -> bool {
        self.config.virtio_artifacts
            && (self.config.core_dumps || !case.artifacts.is_empty() || case.trace.is_some())
    }

    fn modules_for(
        &self,
        case: &TestCase,
        profile: &MachineProfile,
        has_tree: bool,
    ) -> Vec<String> {
        let mut m = Vec::new();
        if has_tree && self.wants_channel(case) {
            m.extend(profile.channel_modules.iter().cloned());
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
        self.prepare_inner(case, dir, wait_for_ack, false).await
    }

    async fn prepare_inner(
        &self,
        case: &TestCase,
        dir: &Path,
        wait_for_ack: bool,
        session: bool,
    ) -> Result<Prepared, RunnerError> {
        let arch = self.arch_of(case);
        // What is missing or wrong here is the setup's fault: another attempt cannot help.
        let profile = self.profile(arch).map_err(RunnerError::config)?.clone();
        let qemu = profile.find_qemu().map_err(RunnerError::config)?;
        let firmware = profile.find_firmware().map_err(RunnerError::config)?;
        let parts = self.parts(case, arch).map_err(RunnerError::config)?;
        kernel::check(&parts.kernel, arch).map_err(RunnerError::config)?;
        // A forced KVM that does not work: the configuration's to change.
        let decision = self
            .accel_for(&profile, &qemu, firmware.as_deref(), &parts.kernel)
            .await
            .map_err(RunnerError::config)?;

        // The initramfs: cached base plus this test's part.
        let modules = self.modules_for(case, &profile, parts.modules_dir.is_some() && !session);
        // The channel's modules load at boot; the test's own in its phase, on its clock.
        let boot: Vec<String> = profile
            .channel_modules
            .iter()
            .filter(|m| modules.contains(m))
            .cloned()
            .collect();
        let cache = self.config.build_cache.clone();
        let parts2 = parts.clone();
        let base = tokio::task::spawn_blocking(move || {
            image::base_image(&parts2, &modules, &boot, &cache)
        })
        .await
        .map_err(|e| RunnerError::with_source("building the base initramfs panicked", e))?
        .map_err(RunnerError::new)?;
        let test_part = if session {
            image::session_archive(
                self.config.output_limit,
                self.config.serial_artifact_limit,
                &base.load_order,
                parts.kernel_version.as_deref(),
            )
        } else {
            image::test_archive(&TestPart {
                case,
                output_limit: self.config.output_limit,
                load_order: &base.test_order(),
                boot_order: &base.boot_order,
                kernel_version: parts.kernel_version.as_deref(),
                serial_artifact_limit: self.config.serial_artifact_limit,
                wait_for_ack,
            })
        }
        .map_err(RunnerError::new)?;
        std::fs::create_dir_all(dir).map_err(|e| {
            RunnerError::with_source(format!("failed to create {}", dir.display()), e)
        })?;
        let initrd = dir.join("initrd.img");
        image::assemble(&base.path, &test_part, &initrd).map_err(RunnerError::new)?;

        let mut append = format!("console={} panic=-1 rdinit=/init", profile.console);
        for a in &profile.kernel_args {
            append.push(' ');
            append.push_str(a);
        }
        // Sockets live in a short private directory: Unix socket paths are limited to 107 bytes.
        let sockets = tempfile::Builder::new()
            .prefix("orch-vm-")
            .tempdir_in(&self.config.temp_dir)
            .map_err(|e| RunnerError::with_source("failed to create a socket directory", e))?;
        let artifact_listener = if session || !self.wants_channel(case) {
            None
        } else {
            let path = sockets.path().join("artifacts.sock");
            Some(tokio::net::UnixListener::bind(&path).map_err(|e| {
                RunnerError::with_source(format!("failed to listen on {}", path.display()), e)
            })?)
        };
        let spec = VmSpec {
            qemu: qemu.clone(),
            accel: decision.accel,
            kernel: parts.kernel.clone(),
            initrd,
            firmware,
            append,
            qmp_socket: sockets.path().join("qmp.sock"),
            artifact_socket: artifact_listener
                .as_ref()
                .map(|_| sockets.path().join("artifacts.sock")),
            incoming: false,
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

    /// The test phase (until the agent reports the exit code) and the transfer of its
    /// results, with `ACK`/`RESEND`; sets the outcome.
    async fn run_phases(
        &self,
        vm: &mut Vm,
        watch: &mut Watch,
        case: &TestCase,
        ctx: &ExecutionContext,
        result: &mut TestResult,
        notes: &mut Vec<String>,
    ) -> Phases {
        let cancel = ctx.cancel_token().clone();
        let started = Utc::now();
        let (deadline, by_run) = ctx.deadline_after(case.timeout);
        let test_started = Instant::now();
        // The test runs until the agent reports its exit code.
        let mut exit_code = None;
        // A test stopped at its deadline keeps that outcome, whatever its exit code then.
        let mut stopped: Option<Outcome> = None;
        loop {
            match wait(vm, watch, deadline, &cancel).await {
                Wait::TestExit | Wait::Done => {
                    exit_code = watch.parser.exit();
                    break;
                }
                Wait::BadRun => {
                    result.outcome =
                        Outcome::infra("the test sent to the session guest arrived damaged");
                    break;
                }
                Wait::Fatal(kind) => {
                    drain_after_crash(vm, watch).await;
                    result.outcome = Outcome::Crashed { crash: kind };
                    break;
                }
                Wait::Exited => {
                    let (outcome, note) = exit_outcome(vm, watch, "before the test finished").await;
                    result.outcome = outcome;
                    notes.push(note);
                    break;
                }
                Wait::Deadline => {
                    let (outcome, why) =
                        Outcome::test_timed_out(case.timeout, test_started.elapsed(), by_run);
                    result.outcome = outcome.clone();
                    notes.push(why);
                    // Ask the agent to stop the test and send what it wrote so far.
                    match stop_test(vm, watch, &cancel).await {
                        Ok(code) => {
                            exit_code = Some(code);
                            stopped = Some(outcome);
                        }
                        Err(why) => notes.push(why),
                    }
                    break;
                }
                Wait::Cancelled => {
                    result.outcome = Outcome::Cancelled;
                    notes.push("the run was cancelled during the test".into());
                    break;
                }
                Wait::Ready => {}
            }
        }
        let test_end = Utc::now();
        let transfer_started = Some(Instant::now());
        if let Some(code) = exit_code {
            // Then the agent sends the results; a damaged transfer is asked for again.
            let (deadline, _) = ctx.deadline_after(self.config.transfer_timeout);
            let mut resends = 0;
            loop {
                match wait(vm, watch, deadline, &cancel).await {
                    Wait::Done => {
                        if watch.transfer_complete() {
                            // A session guest takes its next test (or QUIT) as the ACK.
                            if !watch.session_guest {
                                let _ = vm.send_line("ACK").await;
                            }
                            watch.delivered = true;
                            result.outcome = match watch.serious {
                                _ if stopped.is_some() => {
                                    notes.push(format!(
                                        "the test was stopped (it then exited with {code}); its output so far was collected"
                                    ));
                                    stopped.take().expect("checked")
                                }
                                Some(kind) => {
                                    notes.push(format!(
                                        "the kernel reported a problem during the test ({kind}); the test exited with {code}"
                                    ));
                                    Outcome::Crashed { crash: kind }
                                }
                                None if code == 0 => Outcome::Passed,
                                None => Outcome::Failed {
                                    exit_code: Some(code),
                                    signal: None,
                                },
                            };
                            break;
                        }
                        if resends >= self.config.max_resends {
                            result.outcome = Outcome::infra(format!(
                                "the guest's results arrived damaged {} times",
                                resends + 1
                            ));
                            break;
                        }
                        resends += 1;
                        watch.parser.reset_transfer();
                        let _ = vm.send_line("RESEND").await;
                    }
                    Wait::TestExit | Wait::Ready | Wait::BadRun => {}
                    Wait::Fatal(kind) => {
                        drain_after_crash(vm, watch).await;
                        result.outcome = Outcome::Crashed { crash: kind };
                        notes.push(format!(
                            "the kernel crashed after the test exited with {code}, while results were sent"
                        ));
                        break;
                    }
                    Wait::Exited => {
                        let when =
                            format!("after the test exited with {code}, while results were sent");
                        let (outcome, note) = exit_outcome(vm, watch, &when).await;
                        result.outcome = outcome;
                        notes.push(note);
                        break;
                    }
                    Wait::Deadline => {
                        result.outcome = Outcome::TimedOut {
                            phase: Phase::Teardown,
                            limit: self.config.transfer_timeout,
                        };
                        notes.push(format!(
                            "the test exited with {code} but its results did not arrive within {}",
                            humantime_secs(self.config.transfer_timeout)
                        ));
                        break;
                    }
                    Wait::Cancelled => {
                        result.outcome = Outcome::Cancelled;
                        notes.push("the run was cancelled while results were sent".into());
                        break;
                    }
                }
            }
            if resends > 0 {
                result
                    .environment
                    .insert("resends".into(), resends.to_string());
            }
        }
        Phases {
            test_start: started,
            test_end,
            transfer_started,
        }
    }

    /// Puts what the guest sent into the result: output, subtests, the kernel log, artifacts
    /// (checked against the guest's manifest; what is missing named), the console excerpt.
    #[allow(clippy::too_many_arguments)]
    fn gather(
        &self,
        watch: &Watch,
        case: &TestCase,
        artifacts: &Path,
        mut extracted: Option<crate::artifacts::Extracted>,
        transfer_ok: bool,
        result: &mut TestResult,
        notes: &mut Vec<String>,
    ) {
        let streams = watch.parser.streams().clone();
        let mut rejections = watch.parser.rejections().clone();
        if let Some(s) = streams.get("stdout") {
            result.stdout = captured(s, self.config.output_limit);
        }
        if let Some(s) = streams.get("stderr") {
            result.stderr = captured(s, self.config.output_limit);
        }
        // Tests that report their own cases (kselftest TAP on stdout, KUnit KTAP in the kernel
        // log) get them as subtests.
        // A session guest's kernel log is what the kernel printed on the console during the
        // test (see the agent); a guest of its own sends `dmesg`.
        // Without the agent's `dmesg` (it did not answer), what the console carried.
        let from_console = watch.session_guest || !streams.contains_key("dmesg");
        let kernel_log: Option<Vec<u8>> = if watch.session_guest {
            Some(watch.slice.clone().unwrap_or_default())
        } else {
            streams
                .get("dmesg")
                .map(|s| s.data.clone())
                .or_else(|| watch.slice.clone())
        };
        let ktap = crate::ktap::subtests_of(&result.stdout.text).or_else(|| {
            kernel_log
                .as_ref()
                .and_then(|d| crate::ktap::subtests_of(&String::from_utf8_lossy(d)))
        });
        if let Some((subtests, summary)) = ktap {
            result.subtests = subtests;
            notes.push(summary);
        }
        if let Some(data) = &kernel_log {
            let path = artifacts.join("dmesg.txt");
            if std::fs::write(&path, data).is_ok() {
                // Console lines were counted as they arrived; a log of its own is counted here.
                let logged = if from_console {
                    0
                } else {
                    String::from_utf8_lossy(data)
                        .lines()
                        .filter(|l| crash::classify(l) == Some(Signal::Warning))
                        .count()
                };
                let warnings = logged + watch.warnings;
                if warnings > 0 {
                    result
                        .environment
                        .insert("kernel-warnings".into(), warnings.to_string());
                    notes.push(format!("the kernel logged {warnings} WARNING(s)"));
                }
            }
        } else if !matches!(result.outcome, Outcome::Passed | Outcome::Failed { .. }) {
            notes.push("the kernel log (dmesg) could not be collected; see console.log".into());
        }
        let files_dir = artifacts.join("files");
        // An empty channel stream: nothing was sent.
        let channel = watch.stream_text("channel").filter(|c| !c.is_empty());
        if channel.as_deref() == Some("serial-console")
            && let Some(s) = streams.get("artifacts")
            && s.verified()
        {
            extracted = Some(crate::artifacts::extract(
                &s.data[..],
                &files_dir,
                self.config.artifact_limits,
            ));
        }
        let cores: Vec<String> = std::fs::read_dir(files_dir.join(".orch-cores"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| describe_core(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        if case.trace.is_some() {
            match std::fs::metadata(files_dir.join(".orch-trace/trace.txt")) {
                Ok(m) => {
                    result.environment.insert(
                        "trace".into(),
                        format!("files/.orch-trace/trace.txt ({} bytes)", m.len()),
                    );
                }
                Err(_) => notes.push("the kernel trace did not come back".into()),
            }
        }
        if !cores.is_empty() {
            notes.push(format!("core dumps: {}", cores.join(", ")));
            result
                .environment
                .insert("core-dumps".into(), cores.join(", "));
        }
        if !case.artifacts.is_empty() || extracted.as_ref().is_some_and(|e| !e.files.is_empty()) {
            result.environment.insert(
                "artifact-channel".into(),
                channel.clone().unwrap_or_else(|| "none".into()),
            );
            // The manifest as sent (names may end in spaces), not trimmed text.
            let manifest = streams
                .get("manifest")
                .filter(|s| s.verified())
                .map(|s| s.data.as_slice());
            notes.extend(check_artifacts(
                &case.artifacts,
                extracted.as_ref(),
                &files_dir,
                manifest,
                watch.stream_text("missing").as_deref(),
                transfer_ok,
                self.config.artifact_limits.max_files,
                &mut rejections,
            ));
        }
        // Records the guest sent that the host refused (a test may forge records: see
        // ARCHITECTURE.md, "Threat model").
        if let Some(summary) = rejections.summary() {
            let summary: String = summary.chars().take(REJECTIONS_SHOWN).collect();
            result
                .environment
                .insert("rejected-guest-records".into(), summary.clone());
            notes.push(format!("rejected guest records: {summary}"));
        }
        result.artifacts = list_artifacts(artifacts);
        let failed = !matches!(result.outcome, Outcome::Passed);
        result.console_excerpt = if watch.excerpt.triggered() || failed {
            watch
                .excerpt
                .text(&watch.tail.iter().cloned().collect::<Vec<_>>())
        } else {
            // A pass: the last lines the console showed (the whole log is an artifact).
            (!watch.tail.is_empty())
                .then(|| watch.tail.iter().cloned().collect::<Vec<_>>().join("\n"))
        };
    }

    /// The accelerator for `kernel` on `profile`'s machine: decided once per architecture and
    /// kernel, KVM only after the kernel printed its banner under KVM (remembered on disk).
    async fn accel_for(
        &self,
        profile: &MachineProfile,
        qemu: &Path,
        firmware: Option<&Path>,
        kernel: &Path,
    ) -> Result<AccelDecision, String> {
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
    ) -> Result<AccelDecision, String> {
        let arch = profile.arch;
        let device = KvmDevice::detect(&self.config.kvm_device);
        let host = Arch::host();
        // The check is async; run it first when it can matter, then decide synchronously.
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
        accel::decide(mode, arch, host, &self.config.kvm_device, &device, || {
            check.unwrap_or(accel::KvmCheck::Fails("the kernel was not checked".into()))
        })
        .map_err(String::from)
    }
}

#[async_trait]
impl TestRunner for QemuRunner {
    fn name(&self) -> &str {
        NAME
    }

    fn check(&self, case: &TestCase) -> Result<(), String> {
        let arch = self.arch_of(case);
        let profile = self.profile(arch)?;
        accel::resolve_mode(
            self.config.accel_env.as_deref(),
            arch,
            profile.accel,
            self.config.accel,
        )?;
        profile.find_qemu()?;
        profile.find_firmware()?;
        let parts = self.parts(case, arch)?;
        kernel::check(&parts.kernel, arch)?;
        if !parts.busybox.is_file() {
            return Err(format!(
                "busybox for {arch} not found at {}: run `cargo xtask test` to provision it",
                parts.busybox.display()
            ));
        }
        let modules = self.modules_for(case, profile, false);
        if !modules.is_empty() && parts.modules_dir.is_none() {
            return Err(format!(
                "kernel modules ({}) need a module tree, but this {arch} kernel comes without one (the test or the runner gives its own kernel): drop `modules`, or use the provisioned kernel",
                modules.join(", ")
            ));
        }
        for key in case.env.keys() {
            if !crate::agent::valid_env_name(key) {
                return Err(format!(
                    "environment variable `{key}` is not a valid shell variable name in the guest"
                ));
            }
        }
        Ok(())
    }

    async fn execute(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
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
        if self.config.snapshot_reset {
            return self.execute_from_snapshot(case, ctx).await;
        }
        if self.config.session {
            return self.execute_in_session(case, ctx).await;
        }
        self.execute_alone(case, ctx).await
    }

    async fn cleanup(&self) -> Result<(), RunnerError> {
        let idle: Vec<Guest> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.drain().flat_map(|(_, v)| v).collect()
        };
        for mut guest in idle {
            let _ = guest.vm.send_line("QUIT").await;
            guest.vm.stop().await;
            let _ = guest.vm.finish().await;
        }
        // Saved guests go with their files.
        self.snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

impl QemuRunner {
    /// One boot for one test.
    async fn execute_alone(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let mut result = TestResult::new(case, NAME, Outcome::Passed);
        let setup_start = Utc::now();
        let prepared = self.prepare(case, ctx.scratch_dir(), true).await?;
        let Prepared {
            spec,
            decision,
            profile,
            qemu,
            artifact_listener,
            sockets: _sockets,
        } = prepared;
        describe_guest(&mut result, &profile, &decision, &spec);
        let artifacts = ctx.artifact_dir();
        std::fs::create_dir_all(&artifacts).map_err(|e| {
            RunnerError::with_source(format!("failed to create {}", artifacts.display()), e)
        })?;
        result.end_phase(Phase::Setup, setup_start);

        // Boot.
        let boot_start = Utc::now();
        let console_log = artifacts.join("console.log");
        let mut vm =
            Vm::start(&spec, &console_log, self.config.console_log_limit).map_err(|e| {
                RunnerError::with_source(format!("failed to start {}", qemu.display()), e)
            })?;
        ctx.process_started(vm.pid(), profile.qemu.clone());
        let mut artifact_task = artifact_listener.map(|listener| {
            let dest = artifacts.join("files");
            let limits = self.config.artifact_limits;
            tokio::spawn(async move {
                let (stream, _) =
                    tokio::time::timeout(std::time::Duration::from_secs(30), listener.accept())
                        .await
                        .ok()?
                        .ok()?;
                let stream = stream.into_std().ok()?;
                stream.set_nonblocking(false).ok()?;
                tokio::task::spawn_blocking(move || {
                    crate::artifacts::extract(stream, &dest, limits)
                })
                .await
                .ok()
            })
        });
        result
            .environment
            .insert("qemu-pid".into(), vm.pid().to_string());

        let mut watch = Watch::new(self.config.output_limit, self.config.serial_artifact_limit);
        let cancel = ctx.cancel_token().clone();
        let boot_limit = profile.boot_timeout_for(decision.accel);
        let (boot_deadline, _) = ctx.deadline_after(boot_limit);
        let mut notes: Vec<String> = Vec::new();
        let booted = wait(&mut vm, &mut watch, boot_deadline, &cancel).await;
        let boot_end = Utc::now();
        result.phases.push(PhaseTiming {
            phase: Phase::Boot,
            started_at: boot_start,
            finished_at: boot_end,
        });

        let mut test_start = None;
        let mut test_end = None;
        let mut transfer_started: Option<Instant> = None;
        if let Some((outcome, note)) = boot_outcome(&mut vm, &mut watch, booted, boot_limit).await {
            result.outcome = outcome;
            notes.push(note);
        }

        if booted == Wait::Ready {
            watch.keep_console();
            if let Some(Record::Ready {
                kernel_release,
                machine,
                ..
            }) = &watch.ready
            {
                result
                    .environment
                    .insert("kernel-release".into(), kernel_release.clone());
                result
                    .environment
                    .insert("guest-machine".into(), machine.clone());
            }
            let phases = self
                .run_phases(&mut vm, &mut watch, case, ctx, &mut result, &mut notes)
                .await;
            test_start = Some(phases.test_start);
            test_end = Some(phases.test_end);
            transfer_started = phases.transfer_started;
        }
        let test_end = test_end.unwrap_or_else(Utc::now);
        if let Some(started) = test_start {
            result.phases.push(PhaseTiming {
                phase: Phase::Test,
                started_at: started,
                finished_at: test_end,
            });
        }

        // Teardown (from the test's exit, so it includes the transfer of its results): let the
        // artifact archive finish arriving, stop QEMU, keep the logs.
        let teardown_start = if test_start.is_some() {
            test_end
        } else {
            Utc::now()
        };
        let transfer_ok = watch.delivered;
        let mut extracted = None;
        if let Some(task) = artifact_task.as_mut()
            && transfer_ok
            && watch.stream_text("channel").as_deref() == Some("virtio-serial")
            && let Ok(done) = tokio::time::timeout(self.config.transfer_timeout, &mut *task).await
        {
            extracted = done.ok().flatten();
            artifact_task = None;
        }
        if profile.display.is_some() && vm.exited().is_none() {
            let shot = artifacts.join("screenshot.png");
            if let Err(e) = vm.screenshot(&shot).await {
                notes.push(format!("no screenshot: {e}"));
            }
        }
        if let Some(t) = transfer_started
            && transfer_ok
        {
            result.environment.insert(
                "transfer-seconds".into(),
                format!("{:.3}", t.elapsed().as_secs_f64()),
            );
        }
        let stop = vm.stop().await;
        if stop.steps.len() > 1 || !stop.stopped {
            notes.push(format!(
                "QEMU was stopped with {}{}",
                stop.steps.join(", then "),
                if stop.stopped {
                    ""
                } else {
                    " and is still running"
                }
            ));
        }
        let (qemu_stderr, console) = vm.finish().await;
        quote_qemu_stderr(&mut result.outcome, &watch, &qemu_stderr);
        if console.total > console.logged {
            notes.push(format!(
                "the console produced {} bytes; console.log keeps the first {}",
                console.total, console.logged
            ));
        }
        if !qemu_stderr.trim().is_empty() {
            result.environment.insert(
                "qemu-stderr".into(),
                qemu_stderr.trim().chars().take(2000).collect(),
            );
        }
        // Artifacts: what arrived over virtio, once QEMU is gone (the socket closed, the
        // task ends).
        if let Some(task) = artifact_task {
            extracted = tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
        }
        self.gather(
            &watch,
            case,
            &artifacts,
            extracted,
            transfer_ok,
            &mut result,
            &mut notes,
        );
        result.end_phase(Phase::Teardown, teardown_start);
        result.finish(setup_start, &notes);
        Ok(result)
    }

    /// What a session guest is sent for `case`: text when it can (no process to start in the
    /// guest), else an archive, or `Err(bytes)` when even the archive is too large for the
    /// console.
    fn session_payload(&self, case: &TestCase) -> Result<Result<Payload, usize>, RunnerError> {
        let test_part = TestPart {
            case,
            output_limit: self.config.output_limit,
            load_order: &[],
            boot_order: &[],
            kernel_version: None,
            serial_artifact_limit: self.config.serial_artifact_limit,
            wait_for_ack: true,
        };
        let text = image::text_files(&test_part)
            .map_err(RunnerError::new)?
            .filter(|files| {
                let all: Vec<(&str, &str)> = files.iter().map(|(n, t)| (*n, t.as_str())).collect();
                image::text_message(case.id.as_str(), &all).len() <= SESSION_PART_LIMIT
            });
        if let Some(files) = text {
            return Ok(Ok(Payload::Text(files)));
        }
        let part = image::test_archive(&test_part).map_err(RunnerError::new)?;
        if part.len() > SESSION_PART_LIMIT {
            return Ok(Err(part.len()));
        }
        Ok(Ok(Payload::Archive(part)))
    }

    /// Runs `case` in a guest of its own because it is too large to send to a session guest.
    async fn execute_alone_too_large(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
        bytes: usize,
    ) -> Result<TestResult, RunnerError> {
        let mut r = self.execute_alone(case, ctx).await?;
        let note = format!(
            "booted alone: its files ({bytes} bytes compressed) are too large to send to a session guest"
        );
        r.message = Some(match r.message.take() {
            Some(m) => format!("{note}; {m}"),
            None => note,
        });
        Ok(r)
    }

    /// What session guests for `case` are booted with: tests with the same key share them.
    fn session_key(&self, case: &TestCase) -> Result<String, RunnerError> {
        let arch = self.arch_of(case);
        let profile = self.profile(arch).map_err(RunnerError::config)?;
        let parts = self.parts(case, arch).map_err(RunnerError::config)?;
        Ok(format!(
            "{arch}|{}|{:?}|{}|{:?}|{:?}",
            parts.kernel.display(),
            self.modules_for(case, profile, parts.modules_dir.is_some()),
            serde_json::to_string(profile).unwrap_or_default(),
            case.requirements.memory_mib,
            case.requirements.cpus
        ))
    }

    /// Boots a session guest for `case` in `dir` and waits for its agent. A guest that does not
    /// come up yields the test's finished result instead.
    async fn boot_session_guest(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
        dir: &Path,
        result: &mut TestResult,
        setup_start: chrono::DateTime<Utc>,
    ) -> Result<Result<Guest, ()>, RunnerError> {
        let prepared = self.prepare_inner(case, dir, true, true).await?;
        result.end_phase(Phase::Setup, setup_start);
        let boot_start = Utc::now();
        let id = self
            .boots
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let mut vm = Vm::start(
            &prepared.spec,
            &dir.join("console.log"),
            self.config.console_log_limit,
        )
        .map_err(|e| {
            RunnerError::with_source(format!("failed to start {}", prepared.qemu.display()), e)
        })?;
        let mut watch = Watch::new(self.config.output_limit, self.config.serial_artifact_limit);
        let boot_limit = prepared.profile.boot_timeout_for(prepared.decision.accel);
        let (deadline, _) = ctx.deadline_after(boot_limit);
        let booted = wait(&mut vm, &mut watch, deadline, ctx.cancel_token()).await;
        result.phases.push(PhaseTiming {
            phase: Phase::Boot,
            started_at: boot_start,
            finished_at: Utc::now(),
        });
        if let Some((outcome, note)) = boot_outcome(&mut vm, &mut watch, booted, boot_limit).await {
            describe_guest(
                result,
                &prepared.profile,
                &prepared.decision,
                &prepared.spec,
            );
            result.outcome = outcome;
            let mut notes = vec![note];
            vm.stop().await;
            let (stderr, _) = vm.finish().await;
            quote_qemu_stderr(&mut result.outcome, &watch, &stderr);
            let artifacts = ctx.artifact_dir();
            let _ = std::fs::copy(dir.join("console.log"), artifacts.join("console.log"));
            result.artifacts = list_artifacts(&artifacts);
            result.console_excerpt = watch
                .excerpt
                .text(&watch.tail.iter().cloned().collect::<Vec<_>>());
            result.started_at = setup_start;
            result.finished_at = Utc::now();
            result.message = Some(std::mem::take(&mut notes).join("; "));
            return Ok(Err(()));
        }
        watch.session_guest = true;
        Ok(Ok(Guest {
            id,
            vm,
            watch,
            prepared,
            tests: 0,
            known: BTreeMap::new(),
            stop_report: None,
        }))
    }

    /// Sends `case` to a booted guest and takes its results. Returns whether the guest can
    /// take another test.
    #[allow(clippy::too_many_arguments)]
    async fn run_in_guest(
        &self,
        guest: &mut Guest,
        payload: Payload,
        case: &TestCase,
        ctx: &ExecutionContext,
        result: &mut TestResult,
        notes: &mut Vec<String>,
    ) -> bool {
        let artifacts = ctx.artifact_dir();
        describe_guest(
            result,
            &guest.prepared.profile,
            &guest.prepared.decision,
            &guest.prepared.spec,
        );
        result
            .environment
            .insert("qemu-pid".into(), guest.vm.pid().to_string());
        ctx.process_started(guest.vm.pid(), guest.prepared.profile.qemu.clone());
        guest.watch.start_test();
        let message = payload.message(case.id.as_str(), &mut guest.known);
        if let Err(e) = guest.vm.send_line(message.trim_end()).await {
            notes.push(format!("the guest's console input failed: {e}"));
        }
        let phases = self
            .run_phases(&mut guest.vm, &mut guest.watch, case, ctx, result, notes)
            .await;
        result.phases.push(PhaseTiming {
            phase: Phase::Test,
            started_at: phases.test_start,
            finished_at: phases.test_end,
        });
        let transfer_ok = guest.watch.delivered;
        if let Some(t) = phases.transfer_started
            && transfer_ok
        {
            result.environment.insert(
                "transfer-seconds".into(),
                format!("{:.3}", t.elapsed().as_secs_f64()),
            );
        }
        if let Some(slice) = &guest.watch.slice {
            let _ = std::fs::write(artifacts.join("console.log"), slice);
        }
        // A guest whose test was stopped or crashed is not trusted with another.
        let reusable = transfer_ok
            && matches!(result.outcome, Outcome::Passed | Outcome::Failed { .. })
            && guest.vm.exited().is_none();
        if !reusable {
            guest.stop_report = Some(guest.vm.stop().await);
        }
        self.gather(
            &guest.watch,
            case,
            &artifacts,
            None,
            transfer_ok,
            result,
            notes,
        );
        guest.tests += 1;
        reusable
    }

    /// A test in a session guest: reuse an idle guest booted the same way, or boot one.
    async fn execute_in_session(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let mut result = TestResult::new(case, NAME, Outcome::Passed);
        let mut notes: Vec<String> = Vec::new();
        let setup_start = Utc::now();
        // The test goes over the console; what does not fit gets a guest of its own.
        let payload = match self.session_payload(case)? {
            Ok(payload) => payload,
            Err(bytes) => return self.execute_alone_too_large(case, ctx, bytes).await,
        };
        let key = self.session_key(case)?;
        let artifacts = ctx.artifact_dir();
        std::fs::create_dir_all(&artifacts).map_err(|e| {
            RunnerError::with_source(format!("failed to create {}", artifacts.display()), e)
        })?;
        let idle = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&key)
            .and_then(Vec::pop);
        let mut guest = match idle {
            Some(guest) => {
                result.end_phase(Phase::Setup, setup_start);
                guest
            }
            None => {
                let dir = ctx.scratch_dir().join("session");
                match self
                    .boot_session_guest(case, ctx, &dir, &mut result, setup_start)
                    .await?
                {
                    Ok(guest) => guest,
                    Err(()) => return Ok(result),
                }
            }
        };
        result.environment.insert(
            "session".into(),
            format!("guest {}, test {}", guest.id, guest.tests + 1),
        );
        let reusable = self
            .run_in_guest(&mut guest, payload, case, ctx, &mut result, &mut notes)
            .await;
        let teardown_start = result
            .phase(Phase::Test)
            .map_or_else(Utc::now, |p| p.finished_at);
        if reusable {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .push(guest);
        } else {
            let _ = guest.vm.finish().await;
            let steps = guest
                .stop_report
                .as_ref()
                .map(|r| r.steps.join(", then "))
                .unwrap_or_default();
            notes.push(format!(
                "session guest {} was stopped ({steps}) after {} test(s); the next test boots a new one",
                guest.id, guest.tests
            ));
        }
        // Teardown counts from the test's exit: it includes the transfer of the results.
        result.end_phase(Phase::Teardown, teardown_start);
        result.finish(setup_start, &notes);
        Ok(result)
    }

    /// A test in a guest restored from a snapshot of a booted guest: every test starts from
    /// the same pristine state, without a boot. The first test of a kind boots the guest and
    /// takes the snapshot.
    async fn execute_from_snapshot(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<TestResult, RunnerError> {
        let mut result = TestResult::new(case, NAME, Outcome::Passed);
        let mut notes: Vec<String> = Vec::new();
        let setup_start = Utc::now();
        let payload = match self.session_payload(case)? {
            Ok(payload) => payload,
            Err(bytes) => return self.execute_alone_too_large(case, ctx, bytes).await,
        };
        let key = self.session_key(case)?;
        let artifacts = ctx.artifact_dir();
        std::fs::create_dir_all(&artifacts).map_err(|e| {
            RunnerError::with_source(format!("failed to create {}", artifacts.display()), e)
        })?;
        let cell = self
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key)
            .or_default()
            .clone();
        let mut taken_now = false;
        let snapshot = cell
            .get_or_try_init(|| async {
                taken_now = true;
                self.take_snapshot(case, ctx, &mut result, setup_start)
                    .await
            })
            .await;
        let snapshot = match snapshot {
            Ok(s) => s,
            // The boot for the snapshot failed: this test's result says how.
            Err(SnapshotError::Boot) => return Ok(result),
            Err(SnapshotError::Runner(e)) => return Err(e),
        };
        if !taken_now {
            result.end_phase(Phase::Setup, setup_start);
        }
        let restore_start = Utc::now();
        let started = Instant::now();
        let mut guest = match snapshot.restore(self, ctx).await {
            Ok(guest) => guest,
            Err(e) => {
                result.outcome =
                    Outcome::infra(format!("restoring the guest from its snapshot failed: {e}"));
                result.finish(setup_start, &notes);
                return Ok(result);
            }
        };
        result.phases.push(PhaseTiming {
            phase: Phase::Boot,
            started_at: restore_start,
            finished_at: Utc::now(),
        });
        result.environment.insert(
            "snapshot-restore".into(),
            format!(
                "{:.0} ms (the boot it replaces took {:.0} ms)",
                started.elapsed().as_secs_f64() * 1e3,
                snapshot.boot.as_secs_f64() * 1e3
            ),
        );
        let reusable = self
            .run_in_guest(&mut guest, payload, case, ctx, &mut result, &mut notes)
            .await;
        let teardown_start = result
            .phase(Phase::Test)
            .map_or_else(Utc::now, |p| p.finished_at);
        if reusable {
            // A pristine guest per test: this one is done.
            guest.vm.stop().await;
        }
        let _ = guest.vm.finish().await;
        result.end_phase(Phase::Teardown, teardown_start);
        result.finish(setup_start, &notes);
        Ok(result)
    }

    /// Boots a session guest and saves it, waiting for its first test, to a migration file.
    async fn take_snapshot(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
        result: &mut TestResult,
        setup_start: chrono::DateTime<Utc>,
    ) -> Result<Snapshot, SnapshotError> {
        let dir = tempfile::Builder::new()
            .prefix("qemu-runner-snapshot-")
            .tempdir_in(&self.config.temp_dir)
            .map_err(|e| {
                SnapshotError::Runner(RunnerError::with_source(
                    "failed to create a directory for a guest snapshot",
                    e,
                ))
            })?;
        let started = Instant::now();
        let mut guest = match self
            .boot_session_guest(case, ctx, dir.path(), result, setup_start)
            .await
            .map_err(SnapshotError::Runner)?
        {
            Ok(guest) => guest,
            Err(()) => return Err(SnapshotError::Boot),
        };
        let boot = started.elapsed();
        let file = dir.path().join("guest.state");
        let saved = crate::vm::save_state(&guest.prepared.spec.qmp_socket, &file).await;
        guest.vm.stop().await;
        let _ = guest.vm.finish().await;
        saved.map_err(|e| {
            SnapshotError::Runner(RunnerError::new(format!(
                "saving the booted {} guest to {} failed: {e}",
                guest.prepared.profile.arch,
                file.display()
            )))
        })?;
        let ready = guest.watch.ready.clone();
        Ok(Snapshot {
            dir,
            file,
            prepared: guest.prepared,
            ready,
            boot,
            restores: std::sync::atomic::AtomicU32::new(0),
        })
    }
}

/// How a session guest is sent a test.
#[derive(Debug)]
enum Payload {
    /// The `/orch` files as text.
    Text(Vec<(&'static str, String)>),
    /// A gzip'd cpio archive of `/orch` and `/work`.
    Archive(Vec<u8>),
}

impl Payload {
    /// The console message, given what the guest already has (updated).
    fn message(self, id: &str, known: &mut BTreeMap<&'static str, String>) -> String {
        match self {
            Payload::Text(files) => {
                // Only what changed since the last test.
                let changed: Vec<(&str, &str)> = files
                    .iter()
                    .filter(|(n, t)| known.get(n) != Some(t))
                    .map(|(n, t)| (*n, t.as_str()))
                    .collect();
                let message = image::text_message(id, &changed);
                *known = files.into_iter().collect();
                message
            }
            Payload::Archive(part) => {
                // `RUN <lines> <md5>`, then base64 lines; the archive replaces every file.
                known.clear();
                let b64 = base64::engine::general_purpose::STANDARD.encode(&part);
                let sum: String = {
                    use md5::Digest;
                    md5::Md5::digest(&part)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect()
                };
                let lines: Vec<&[u8]> = b64.as_bytes().chunks(76).collect();
                let mut message = format!("RUN {} {sum}\n", lines.len());
                for l in lines {
                    message.push_str(std::str::from_utf8(l).unwrap_or_default());
                    message.push('\n');
                }
                message
            }
        }
    }
}

/// A booted guest saved to a file, restored for each test.
#[derive(Debug)]
struct Snapshot {
    /// Holds the state file; removed with the snapshot.
    #[allow(dead_code)]
    dir: tempfile::TempDir,
    file: PathBuf,
    prepared: Prepared,
    /// The agent's `READY`, which fixes the nonce every restored guest speaks with.
    ready: Option<Record>,
    /// How long the boot took.
    boot: std::time::Duration,
    restores: std::sync::atomic::AtomicU32,
}

#[derive(Debug)]
enum SnapshotError {
    /// The guest did not boot; the test's result says why.
    Boot,
    Runner(RunnerError),
}

impl Snapshot {
    /// Starts a QEMU that takes its state from the snapshot and lets it run.
    async fn restore(&self, runner: &QemuRunner, ctx: &ExecutionContext) -> Result<Guest, String> {
        let n = self
            .restores
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let sockets = tempfile::Builder::new()
            .prefix("qemu-runner-")
            .tempdir_in(&runner.config.temp_dir)
            .map_err(|e| format!("cannot create a socket directory: {e}"))?;
        let mut spec = self.prepared.spec.clone();
        spec.qmp_socket = sockets.path().join("qmp.sock");
        spec.incoming = true;
        let dir = ctx.scratch_dir().join("restored");
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut vm = Vm::start(
            &spec,
            &dir.join("console.log"),
            runner.config.console_log_limit,
        )
        .map_err(|e| format!("failed to start {}: {e}", spec.qemu.display()))?;
        if let Err(e) = crate::vm::load_state(&spec.qmp_socket, &self.file).await {
            vm.stop().await;
            let (stderr, _) = vm.finish().await;
            return Err(match first_lines(&stderr, 3) {
                Some(qemu) => format!("{e} (QEMU: {qemu})"),
                None => e.to_string(),
            });
        }
        let mut watch = Watch::new(
            runner.config.output_limit,
            runner.config.serial_artifact_limit,
        );
        if let Some(Record::Ready {
            nonce,
            kernel_release,
            machine,
        }) = &self.ready
        {
            watch.line(&format!(
                "{} {nonce} READY {kernel_release} {machine}",
                crate::protocol::PREFIX
            ));
        }
        watch.session_guest = true;
        Ok(Guest {
            id: n,
            vm,
            watch,
            prepared: Prepared {
                artifact_listener: None,
                sockets,
                spec,
                decision: self.prepared.decision.clone(),
                profile: self.prepared.profile.clone(),
                qemu: self.prepared.qemu.clone(),
            },
            tests: 0,
            known: BTreeMap::new(),
            stop_report: None,
        })
    }
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn first_lines(text: &str, n: usize) -> Option<String> {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect();
    (!lines.is_empty()).then(|| lines.join(" | "))
}

/// A stream as bounded captured output, with the truncation marker where the agent cut it.
fn captured(s: &Stream, limit: u64) -> CapturedOutput {
    let dropped = s.total.saturating_sub(s.sent);
    if dropped == 0 || !s.verified() {
        return CapturedOutput {
            text: String::from_utf8_lossy(&s.data).into_owned(),
            total_bytes: s.total,
            truncated_bytes: dropped,
        };
    }
    let half = ((limit / 2) as usize).min(s.data.len());
    let (head, tail) = s.data.split_at(half);
    let mut text = String::from_utf8_lossy(head).into_owned();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("[... {dropped} bytes truncated ...]\n"));
    text.push_str(&String::from_utf8_lossy(tail));
    CapturedOutput {
        text,
        total_bytes: s.total,
        truncated_bytes: dropped,
    }
}

fn list_artifacts(dir: &Path) -> Vec<ArtifactFile> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<ArtifactFile>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                walk(root, &e.path(), out);
            } else if meta.is_file() {
                let rel = e.path().strip_prefix(root).map(Path::to_path_buf);
                if let Ok(rel) = rel {
                    out.push(ArtifactFile::new(
                        rel.to_string_lossy(),
                        e.path(),
                        meta.len(),
                    ));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

/// `core.<program>.<signal>.<pid>` as "program (signal N, pid P)".
fn describe_core(name: &str) -> Option<String> {
    let rest = name.strip_prefix("core.")?;
    let mut parts = rest.rsplitn(3, '.');
    let pid = parts.next()?;
    let signal = parts.next()?;
    let program = parts.next()?;
    Some(format!("{program} (signal {signal}, pid {pid})"))
}

/// Characters of the rejected-records summary kept in a result.
const REJECTIONS_SHOWN: usize = 2000;

/// Names listed per kind in an artifact note before "and N more".
const NAMES_SHOWN: usize = 20;

/// `names` joined for a note, at most [`NAMES_SHOWN`] of them.
fn some_names(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(NAMES_SHOWN)
        .map(|n| crate::protocol::shown_name(n))
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > NAMES_SHOWN {
        s.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
    }
    s
}

/// Compares what arrived with what the guest said it sent (see
/// [`crate::artifacts::check_manifest`]: no name from the guest reaches the file system unless
/// it is one of the extracted files); returns notes for the result and adds refused manifest
/// lines to `rejections`.
#[allow(clippy::too_many_arguments)]
fn check_artifacts(
    globs: &[String],
    extracted: Option<&crate::artifacts::Extracted>,
    files_dir: &Path,
    manifest: Option<&[u8]>,
    missing: Option<&str>,
    transfer_ok: bool,
    max_lines: usize,
    rejections: &mut crate::protocol::Rejections,
) -> Vec<String> {
    let mut notes = Vec::new();
    let extracted = extracted.filter(|e| transfer_ok || !e.files.is_empty());
    let Some(extracted) = extracted else {
        notes.push(format!(
            "artifacts missing: {} ({})",
            globs.join(", "),
            if transfer_ok {
                "the guest sent none"
            } else {
                "the test did not finish, so the guest never sent them"
            }
        ));
        return notes;
    };
    for (name, why) in extracted.rejected.iter().take(NAMES_SHOWN) {
        notes.push(format!(
            "artifact {} rejected: {why}",
            crate::protocol::shown_name(name)
        ));
    }
    let more = extracted.rejected_count() - extracted.rejected.len().min(NAMES_SHOWN) as u64;
    if more > 0 {
        notes.push(format!(
            "{} more artifacts rejected",
            crate::protocol::thousands(more)
        ));
    }
    if let Some(e) = &extracted.error {
        notes.push(format!("the artifact archive is incomplete: {e}"));
    }
    if !transfer_ok {
        let received: Vec<String> = extracted.files.keys().cloned().collect();
        notes.push(format!(
            "the test did not finish: artifacts received before it stopped: {}",
            some_names(&received)
        ));
    }
    if let Some(missing) = missing {
        let gone: Vec<&str> = missing
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(NAMES_SHOWN)
            .collect();
        if !gone.is_empty() {
            notes.push(format!(
                "artifacts missing: {} (no match in the guest)",
                gone.join(", ")
            ));
        }
    }
    let check = crate::artifacts::check_manifest(
        manifest.unwrap_or_default(),
        extracted,
        files_dir,
        max_lines,
    );
    for (name, why) in &check.rejected {
        rejections.add("manifest names refused", || {
            format!("{}: {why}", crate::protocol::shown_name(name))
        });
    }
    rejections.add_count("manifest names refused", check.rejected_more);
    if !check.damaged.is_empty() {
        notes.push(format!(
            "artifacts damaged in transfer (checksum mismatch): {}",
            some_names(&check.damaged)
        ));
    }
    if !check.lost.is_empty() {
        notes.push(format!(
            "artifacts missing: {} (listed by the guest, not received)",
            some_names(&check.lost)
        ));
    }
    if manifest.is_some() && !check.unlisted.is_empty() {
        notes.push(format!(
            "artifacts not in the guest's manifest (received, not verified): {}",
            some_names(&check.unlisted)
        ));
    }
    notes
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

/// When the test and its transfer ran.
#[derive(Debug)]
struct Phases {
    test_start: chrono::DateTime<Utc>,
    test_end: chrono::DateTime<Utc>,
    transfer_started: Option<Instant>,
}

/// Console bytes kept per test in session mode.
const SLICE_LIMIT: usize = 1 << 20;

/// Largest gzip'd test part sent to a session guest over the console (its base64 must fit the
/// guest's terminal input buffer, 4 KiB, so nothing is dropped).
const SESSION_PART_LIMIT: usize = 2800;

/// A booted session guest between tests.
#[derive(Debug)]
struct Guest {
    id: u32,
    vm: Vm,
    watch: Watch,
    prepared: Prepared,
    tests: u32,
    /// The `/orch` files the agent has from the last test sent as text (empty after an
    /// archive): a `TEXT` message sends only the ones that differ.
    known: BTreeMap<&'static str, String>,
    /// How the guest was stopped, once it was.
    stop_report: Option<crate::vm::StopReport>,
}

/// Why waiting on the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Ready,
    BadRun,
    TestExit,
    Done,
    Exited,
    Fatal(CrashKind),
    Deadline,
    Cancelled,
}

/// What the runner has learnt from the console.
#[derive(Debug)]
struct Watch {
    parser: Parser,
    excerpt: Excerpt,
    tail: VecDeque<String>,
    ready: Option<Record>,
    serious: Option<CrashKind>,
    warnings: usize,
    /// A guest poweroff or reboot the console announced.
    shutdown: Option<CrashKind>,
    /// QEMU itself failed (it exited by a signal or with an error): the outcome is an
    /// infrastructure error that quotes its stderr once it is read.
    qemu_failed: bool,
    /// The agent's results (streams and exit code) arrived intact and were acknowledged.
    delivered: bool,
    closed: bool,
    lines_seen: u64,
    /// Console lines of the current test (session mode), bounded.
    slice: Option<Vec<u8>>,
    /// A session guest: a test's kernel log is its console lines rather than the agent's
    /// `dmesg` stream, and the next test (or `QUIT`) acknowledges a test's results.
    session_guest: bool,
}

impl Watch {
    fn new(limit: u64, serial_artifact_limit: u64) -> Self {
        Watch {
            parser: Parser::new(limit).with_stream_limit("artifacts", serial_artifact_limit),
            excerpt: Excerpt::default(),
            tail: VecDeque::new(),
            ready: None,
            serious: None,
            warnings: 0,
            shutdown: None,
            qemu_failed: false,
            delivered: false,
            closed: false,
            lines_seen: 0,
            slice: None,
            session_guest: false,
        }
    }

    /// Forgets what belonged to the previous test of a session and starts keeping this
    /// test's console lines.
    fn start_test(&mut self) {
        self.parser.reset_transfer();
        self.parser.clear_rejections();
        self.excerpt = Excerpt::default();
        self.tail.clear();
        self.serious = None;
        self.warnings = 0;
        self.shutdown = None;
        self.delivered = false;
        self.slice = Some(Vec::new());
    }

    fn line(&mut self, line: &str) -> Option<Wait> {
        self.lines_seen += 1;
        if let Some(record) = self.parser.line(line) {
            return match record {
                r @ Record::Ready { .. } => {
                    self.ready = Some(r);
                    Some(Wait::Ready)
                }
                Record::Done => Some(Wait::Done),
                Record::Exit(_) => Some(Wait::TestExit),
                Record::BadRun => Some(Wait::BadRun),
                _ => None,
            };
        }
        if let Some(slice) = &mut self.slice
            && slice.len() < SLICE_LIMIT
        {
            slice.extend_from_slice(line.as_bytes());
            slice.push(b'\n');
        }
        let signal = crash::classify(line);
        self.excerpt.line(
            line,
            matches!(signal, Some(Signal::Fatal(_) | Signal::Serious(_))),
        );
        self.tail.push_back(line.chars().take(512).collect());
        if self.tail.len() > 20 {
            self.tail.pop_front();
        }
        match signal {
            Some(Signal::Fatal(kind)) => return Some(Wait::Fatal(kind)),
            Some(Signal::Serious(kind)) if self.ready.is_some() && self.serious.is_none() => {
                self.serious = Some(kind);
            }
            Some(Signal::Warning) => self.warnings += 1,
            Some(Signal::Shutdown(kind)) => self.shutdown = Some(kind),
            Some(Signal::Serious(_)) | None => {}
        }
        None
    }

    /// Keeps the console lines from now on (a guest of its own: the kernel log if the agent
    /// cannot send one).
    fn keep_console(&mut self) {
        if self.slice.is_none() {
            self.slice = Some(Vec::new());
        }
    }

    /// Whether every stream arrived intact, with the exit code.
    fn transfer_complete(&self) -> bool {
        let s = self.parser.streams();
        let serial_artifacts = self.stream_text("channel").as_deref() == Some("serial-console");
        self.parser.exit().is_some()
            && [
                "stdout", "stderr", "dmesg", "manifest", "missing", "channel",
            ]
            .iter()
            .all(|n| s.get(*n).is_some_and(Stream::verified))
            && (!serial_artifacts || s.get("artifacts").is_some_and(Stream::verified))
    }

    /// A small verified stream as trimmed text.
    fn stream_text(&self, name: &str) -> Option<String> {
        self.parser
            .streams()
            .get(name)
            .filter(|s| s.verified())
            .map(|s| String::from_utf8_lossy(&s.data).trim().to_owned())
    }
}

async fn wait(
    vm: &mut Vm,
    watch: &mut Watch,
    deadline: Instant,
    cancel: &CancellationToken,
) -> Wait {
    loop {
        if watch.closed {
            // The console is gone; QEMU is exiting or has exited.
            return Wait::Exited;
        }
        tokio::select! {
            event = vm.next_console() => match event {
                Some(ConsoleEvent::Line(line)) => {
                    if let Some(w) = watch.line(&line) {
                        return w;
                    }
                }
                Some(ConsoleEvent::Closed) | None => {
                    watch.closed = true;
                }
            },
            () = tokio::time::sleep_until(deadline.into()) => return Wait::Deadline,
            () = cancel.cancelled() => return Wait::Cancelled,
        }
    }
}

/// Records how the guest was set up in the result's environment.
fn describe_guest(
    result: &mut TestResult,
    profile: &MachineProfile,
    decision: &AccelDecision,
    spec: &VmSpec,
) {
    let env = &mut result.environment;
    env.insert("arch".into(), profile.arch.to_string());
    env.insert("accelerator".into(), decision.accel.to_string());
    env.insert("accelerator-reason".into(), decision.reason.clone());
    env.insert("machine".into(), profile.machine.clone());
    env.insert(
        "cpu".into(),
        match decision.accel {
            Accel::Kvm => profile.cpu_kvm.clone(),
            Accel::Tcg => profile.cpu_tcg.clone(),
        },
    );
    env.insert("kernel".into(), spec.kernel.display().to_string());
    env.insert("channel".into(), "serial console".into());
    env.insert("qemu-command".into(), command_line(spec));
}

/// The outcome of a boot that did not reach `READY` (`None` when it did).
async fn boot_outcome(
    vm: &mut Vm,
    watch: &mut Watch,
    booted: Wait,
    boot_limit: std::time::Duration,
) -> Option<(Outcome, String)> {
    Some(match booted {
        Wait::Ready => return None,
        Wait::Fatal(kind) => {
            drain_after_crash(vm, watch).await;
            (
                Outcome::Crashed {
                    crash: CrashKind::BootFailure,
                },
                format!("the kernel crashed before the guest was ready ({kind})"),
            )
        }
        Wait::Exited => {
            let (outcome, note) = exit_outcome(vm, watch, "before the guest was ready").await;
            if watch.qemu_failed || watch.lines_seen == 0 {
                // QEMU's own failure: quoted with its stderr once that is read.
                watch.qemu_failed = true;
                (outcome, note)
            } else {
                (
                    Outcome::Crashed {
                        crash: CrashKind::BootFailure,
                    },
                    note,
                )
            }
        }
        Wait::Deadline => (
            Outcome::TimedOut {
                phase: Phase::Boot,
                limit: boot_limit,
            },
            format!(
                "boot failure: the guest did not become ready within {}",
                humantime_secs(boot_limit)
            ),
        ),
        Wait::Cancelled => (
            Outcome::Cancelled,
            "the run was cancelled during boot".into(),
        ),
        Wait::Done | Wait::TestExit | Wait::BadRun => {
            unreachable!("no record comes before READY")
        }
    })
}

/// How long the agent has to report a stopped test's exit: its SIGTERM grace (2 s) and the
/// start of its report, under emulation.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(8);

/// Stops a test past its deadline: `STOP` on the console makes the agent send SIGTERM, then
/// SIGKILL, to the test's processes, and report as usual; returns the exit code it reports.
/// `Err` says why nothing will come (the guest does not answer, it crashed, it exited): what
/// the console carried is all there is.
async fn stop_test(
    vm: &mut Vm,
    watch: &mut Watch,
    cancel: &CancellationToken,
) -> Result<i32, String> {
    if let Err(e) = vm.send_line("STOP").await {
        return Err(format!(
            "the test could not be stopped ({e}): its output is lost"
        ));
    }
    let grace = Instant::now() + STOP_GRACE;
    loop {
        return match wait(vm, watch, grace, cancel).await {
            Wait::TestExit | Wait::Done => watch
                .parser
                .exit()
                .ok_or_else(|| "the agent reported no exit code".to_owned()),
            Wait::Ready | Wait::BadRun => continue,
            Wait::Fatal(kind) => {
                drain_after_crash(vm, watch).await;
                Err(format!(
                    "the kernel crashed ({kind}) while the test was stopped: its output is lost; see console.log"
                ))
            }
            Wait::Exited => Err("QEMU exited while the test was stopped".into()),
            Wait::Deadline => Err(format!(
                "the guest did not answer within {} of being asked to stop the test: its output is lost; the kernel log is what the console carried",
                humantime_secs(STOP_GRACE)
            )),
            Wait::Cancelled => Err("the run was cancelled while the test was stopped".into()),
        };
    }
}

/// Why QEMU exited while the runner still needed the guest (`when` says at what point): QEMU
/// killed by a signal or ending with an error of its own is an infrastructure error (retried
/// under `retries`; its stderr is quoted later by [`quote_qemu_stderr`]); a clean exit is the
/// guest's doing: the crash the kernel reported, a poweroff or a reboot the console announced
/// (`-no-reboot` turns a reboot into an exit), or an unexplained exit.
async fn exit_outcome(vm: &mut Vm, watch: &mut Watch, when: &str) -> (Outcome, String) {
    // The console closed: QEMU is exiting or gone; its status comes within moments.
    let status = tokio::time::timeout(std::time::Duration::from_secs(1), vm.wait())
        .await
        .ok()
        .and_then(Result::ok);
    let clean = status.is_some_and(|s| s.success());
    if !clean {
        watch.qemu_failed = true;
        let how = match status {
            Some(s) => describe_exit(s),
            None => "stopped answering".to_owned(),
        };
        let text = format!("QEMU {how} {when}");
        return (Outcome::infra(text.clone()), text);
    }
    let (crash, why) = match (watch.serious, watch.shutdown) {
        (Some(kind), _) => (kind, format!("the kernel reported {kind}")),
        (None, Some(CrashKind::Reboot)) => (CrashKind::Reboot, "the guest rebooted".to_owned()),
        (None, Some(kind)) => (kind, "the guest powered off".to_owned()),
        (None, None) => (
            CrashKind::UnexpectedExit,
            "QEMU exited cleanly without a reason on the console".to_owned(),
        ),
    };
    (Outcome::Crashed { crash }, format!("{why} {when}"))
}

/// How a process ended, in words: `was killed by SIGKILL`, `exited with status 1`.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
        format!("was killed by {name}")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

/// Completes an infrastructure error caused by QEMU itself with the first lines of its stderr.
fn quote_qemu_stderr(outcome: &mut Outcome, watch: &Watch, stderr: &str) {
    let Outcome::InfraError { message, .. } = outcome else {
        return;
    };
    if !watch.qemu_failed {
        return;
    }
    let quoted = first_lines(stderr, 5).unwrap_or_else(|| "no error output".into());
    *message = if message.is_empty() || watch.lines_seen == 0 {
        format!("QEMU failed to start the guest: {quoted}")
    } else {
        format!("{message}; QEMU's stderr: {quoted}")
    };
}

/// After a fatal crash: read what the kernel still prints (the backtrace) until QEMU exits
/// (`panic=-1` with `-no-reboot`) or a few seconds pass.
async fn drain_after_crash(vm: &mut Vm, watch: &mut Watch) {
    let until = Instant::now() + std::time::Duration::from_secs(3);
    let never = CancellationToken::new();
    while !watch.closed && Instant::now() < until {
        if wait(vm, watch, until, &never).await == Wait::Deadline {
            break;
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use std::time::Duration;

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
