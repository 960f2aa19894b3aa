//! [`QemuRunner`]: boots a guest per test and runs the test inside it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
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
    /// Accelerator choice.
    pub accel: AccelMode,
    /// Where kernels and busybox come from.
    pub images: ImageSource,
    /// Where built base initramfs archives and the KVM probe result are cached.
    pub build_cache: PathBuf,
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
}

impl QemuConfig {
    /// Built-in profiles, automatic accelerator choice, the provisioned Debian images in
    /// [`provision::default_cache_dir`].
    pub fn new() -> Self {
        let cache = provision::default_cache_dir();
        QemuConfig {
            profiles: MachineProfile::builtins(),
            accel: AccelMode::Auto,
            build_cache: cache.join("build"),
            images: ImageSource::Provisioned(cache),
            default_arch: Arch::host().unwrap_or(Arch::X86_64),
            output_limit: 256 * 1024,
            console_log_limit: 16 << 20,
            modules: Vec::new(),
            max_resends: 3,
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

    /// Replaces the profile of one architecture.
    #[must_use]
    pub fn with_profile(mut self, profile: MachineProfile) -> Self {
        self.profiles.insert(profile.arch, profile);
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

/// Boots a QEMU guest per test: the test runs inside, under the guest agent, and comes back
/// with its exit code, output, kernel log and console log; crashes, hangs and boot failures
/// are labelled from the console.
#[derive(Debug)]
pub struct QemuRunner {
    config: QemuConfig,
    accel: tokio::sync::Mutex<HashMap<Arch, AccelDecision>>,
    manifest: Mutex<Option<provision::Manifest>>,
}

const NAME: &str = "qemu";

impl QemuRunner {
    /// A runner with these settings.
    pub fn new(config: QemuConfig) -> Self {
        QemuRunner {
            config,
            accel: tokio::sync::Mutex::new(HashMap::new()),
            manifest: Mutex::new(None),
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

    fn modules_for(&self, case: &TestCase) -> Vec<String> {
        let mut m = self.config.modules.clone();
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
        let arch = self.arch_of(case);
        let profile = self.profile(arch).map_err(RunnerError::new)?.clone();
        let qemu = profile.find_qemu().map_err(RunnerError::new)?;
        let firmware = profile.find_firmware().map_err(RunnerError::new)?;
        let parts = self.parts(case, arch).map_err(RunnerError::new)?;
        kernel::check(&parts.kernel, arch).map_err(RunnerError::new)?;
        let decision = self.accel_for(arch).await.map_err(RunnerError::new)?;

        // The initramfs: cached base plus this test's part.
        let modules = self.modules_for(case);
        let cache = self.config.build_cache.clone();
        let parts2 = parts.clone();
        let base =
            tokio::task::spawn_blocking(move || image::base_image(&parts2, &modules, &cache))
                .await
                .map_err(|e| RunnerError::with_source("building the base initramfs panicked", e))?
                .map_err(RunnerError::new)?;
        let test_part = image::test_archive(&TestPart {
            case,
            output_limit: self.config.output_limit,
            load_order: &base.load_order,
            kernel_version: parts.kernel_version.as_deref(),
            wait_for_ack,
        })
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
        let spec = VmSpec {
            qemu: qemu.clone(),
            accel: decision.accel,
            kernel: parts.kernel.clone(),
            initrd,
            firmware,
            append,
            qmp_socket: dir.join("qmp.sock"),
            memory_mib: case.requirements.memory_mib.unwrap_or(profile.memory_mib),
            cpus: case.requirements.cpus.unwrap_or(profile.cpus),
            profile: profile.clone(),
        };
        Ok(Prepared {
            spec,
            decision,
            profile,
            qemu,
        })
    }

    async fn accel_for(&self, arch: Arch) -> Result<AccelDecision, String> {
        let mut cache = self.accel.lock().await;
        if let Some(d) = cache.get(&arch) {
            return Ok(d.clone());
        }
        let device = KvmDevice::detect();
        let host = Arch::host();
        let mode = self.config.accel;
        // The probe is async; run it first when it can matter, then decide synchronously.
        let probe = if mode != AccelMode::Tcg && host == Some(arch) && device == KvmDevice::Usable {
            let qemu = self
                .config
                .profiles
                .get(&Arch::X86_64)
                .and_then(|p| p.find_qemu().ok())
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64"));
            let cache_file = self.config.build_cache.join("kvm-probe.json");
            Some(accel::probe_kvm_cached(&qemu, Some(&cache_file)).await)
        } else {
            None
        };
        let decision = accel::decide(mode, arch, host, &device, || {
            probe.unwrap_or(accel::ProbeOutcome::Fails("not probed".into()))
        })?;
        cache.insert(arch, decision.clone());
        Ok(decision)
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
        let modules = self.modules_for(case);
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
        let mut result = TestResult::new(case, NAME, Outcome::Passed);
        let setup_start = Utc::now();
        let prepared = self.prepare(case, ctx.scratch_dir(), true).await?;
        let Prepared {
            spec,
            decision,
            profile,
            qemu,
        } = prepared;
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
        env.insert("qemu-command".into(), command_line(&spec));
        let artifacts = ctx.artifact_dir();
        std::fs::create_dir_all(&artifacts).map_err(|e| {
            RunnerError::with_source(format!("failed to create {}", artifacts.display()), e)
        })?;
        result.phases.push(PhaseTiming {
            phase: Phase::Setup,
            started_at: setup_start,
            finished_at: Utc::now(),
        });

        // Boot.
        let boot_start = Utc::now();
        let console_log = artifacts.join("console.log");
        let mut vm =
            Vm::start(&spec, &console_log, self.config.console_log_limit).map_err(|e| {
                RunnerError::with_source(format!("failed to start {}", qemu.display()), e)
            })?;
        ctx.process_started(vm.pid(), profile.qemu.clone());
        result
            .environment
            .insert("qemu-pid".into(), vm.pid().to_string());

        let mut watch = Watch::new(self.config.output_limit);
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
        match booted {
            Wait::Ready => {}
            Wait::Fatal(kind) => {
                drain_after_crash(&mut vm, &mut watch).await;
                result.outcome = Outcome::Crashed {
                    crash: CrashKind::BootFailure,
                };
                notes.push(format!(
                    "the kernel crashed before the guest was ready ({kind})"
                ));
            }
            Wait::Exited => {
                result.outcome = if watch.lines_seen == 0 {
                    Outcome::InfraError {
                        message: String::new(),
                    }
                } else {
                    Outcome::Crashed {
                        crash: CrashKind::BootFailure,
                    }
                };
                notes.push("QEMU exited before the guest was ready".into());
            }
            Wait::Deadline => {
                result.outcome = Outcome::TimedOut {
                    phase: Phase::Boot,
                    limit: boot_limit,
                };
                notes.push(format!(
                    "boot failure: the guest did not become ready within {}",
                    humantime_secs(boot_limit)
                ));
            }
            Wait::Cancelled => {
                result.outcome = Outcome::Cancelled;
                notes.push("the run was cancelled during boot".into());
            }
            Wait::Done => unreachable!("DONE cannot come before READY"),
        }

        if booted == Wait::Ready {
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
            let started = Utc::now();
            test_start = Some(started);
            let (deadline, by_run) = ctx.deadline_after(case.timeout);
            let test_started = Instant::now();
            let mut resends = 0;
            loop {
                match wait(&mut vm, &mut watch, deadline, &cancel).await {
                    Wait::Done => {
                        if watch.transfer_complete() {
                            let _ = vm.send_line("ACK").await;
                            let code = watch.parser.exit().unwrap_or(-1);
                            result.outcome = match watch.serious {
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
                            result.outcome = Outcome::InfraError {
                                message: format!(
                                    "the guest's results arrived damaged {} times",
                                    resends + 1
                                ),
                            };
                            break;
                        }
                        resends += 1;
                        watch.parser.reset_transfer();
                        let _ = vm.send_line("RESEND").await;
                    }
                    Wait::Fatal(kind) => {
                        drain_after_crash(&mut vm, &mut watch).await;
                        result.outcome = Outcome::Crashed { crash: kind };
                        break;
                    }
                    Wait::Exited => {
                        let kind = watch.serious.unwrap_or(CrashKind::UnexpectedExit);
                        result.outcome = Outcome::Crashed { crash: kind };
                        notes.push(if watch.shutdown_seen {
                            "the guest rebooted or powered off before the test finished".into()
                        } else {
                            "QEMU exited before the test finished".into()
                        });
                        break;
                    }
                    Wait::Deadline => {
                        let limit = if by_run {
                            test_started.elapsed()
                        } else {
                            case.timeout
                        };
                        result.outcome = Outcome::TimedOut {
                            phase: Phase::Test,
                            limit,
                        };
                        notes.push(format!(
                            "{} after {}",
                            if by_run {
                                "the run's deadline passed"
                            } else {
                                "the test exceeded its timeout"
                            },
                            humantime_secs(limit)
                        ));
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
            if resends > 0 {
                result
                    .environment
                    .insert("resends".into(), resends.to_string());
            }
        }
        let test_end = Utc::now();
        if let Some(started) = test_start {
            result.phases.push(PhaseTiming {
                phase: Phase::Test,
                started_at: started,
                finished_at: test_end,
            });
        }

        // Teardown: stop QEMU, keep the logs.
        let teardown_start = Utc::now();
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
        if let Outcome::InfraError { message } = &mut result.outcome
            && message.is_empty()
        {
            *message = format!(
                "QEMU failed to start the guest: {}",
                first_lines(&qemu_stderr, 5).unwrap_or_else(|| "no error output".into())
            );
        }
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
        let streams = watch.parser.streams().clone();
        if let Some(s) = streams.get("stdout") {
            result.stdout = captured(s, self.config.output_limit);
        }
        if let Some(s) = streams.get("stderr") {
            result.stderr = captured(s, self.config.output_limit);
        }
        if let Some(s) = streams.get("dmesg") {
            let path = artifacts.join("dmesg.txt");
            if std::fs::write(&path, &s.data).is_ok() {
                let text = String::from_utf8_lossy(&s.data);
                let warnings = text
                    .lines()
                    .filter(|l| crash::classify(l) == Some(Signal::Warning))
                    .count()
                    + watch.warnings;
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
        result.artifacts = list_artifacts(&artifacts);
        let failed = !matches!(result.outcome, Outcome::Passed);
        result.console_excerpt = if watch.excerpt.triggered() || failed {
            watch
                .excerpt
                .text(&watch.tail.iter().cloned().collect::<Vec<_>>())
        } else {
            None
        };
        result.phases.push(PhaseTiming {
            phase: Phase::Teardown,
            started_at: teardown_start,
            finished_at: Utc::now(),
        });
        result.started_at = setup_start;
        result.finished_at = Utc::now();
        if !notes.is_empty() {
            result.message = Some(notes.join("; "));
        }
        Ok(result)
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
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if let Ok(meta) = e.metadata()
            && meta.is_file()
        {
            out.push(ArtifactFile::new(
                e.file_name().to_string_lossy(),
                e.path(),
                meta.len(),
            ));
        }
    }
    out
}

/// A guest ready to start: see [`QemuRunner::prepare`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Prepared {
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

/// Why waiting on the guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    Ready,
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
    shutdown_seen: bool,
    closed: bool,
    lines_seen: u64,
}

impl Watch {
    fn new(limit: u64) -> Self {
        Watch {
            parser: Parser::new(limit),
            excerpt: Excerpt::default(),
            tail: VecDeque::new(),
            ready: None,
            serious: None,
            warnings: 0,
            shutdown_seen: false,
            closed: false,
            lines_seen: 0,
        }
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
                _ => None,
            };
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
            Some(Signal::Shutdown) => self.shutdown_seen = true,
            Some(Signal::Serious(_)) | None => {}
        }
        None
    }

    /// Whether every stream arrived intact, with the exit code.
    fn transfer_complete(&self) -> bool {
        let s = self.parser.streams();
        self.parser.exit().is_some()
            && ["stdout", "stderr", "dmesg"]
                .iter()
                .all(|n| s.get(*n).is_some_and(Stream::verified))
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
