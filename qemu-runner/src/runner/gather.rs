//! Artifact gathering: what the guest sent (output, subtests, the kernel log, artifacts checked
//! against its manifest, the console excerpt) put into the test's result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orchestrator_core::{ArtifactFile, CapturedOutput, Outcome, TestCase, TestResult};

use super::QemuRunner;
use super::console::Watch;
use crate::artifacts::{ArtifactLimits, Extracted};
use crate::crash::{self, Signal};
use crate::protocol::{Rejections, Stream};

/// What a test's guest sent, for [`QemuRunner::gather`].
pub(super) struct Delivery<'a> {
    /// The bytes of each stream the result keeps (the guest sent at most as many).
    pub(super) output_limit: u64,
    /// What the console carried.
    pub(super) watch: &'a Watch,
    pub(super) case: &'a TestCase,
    /// The test's artifact directory.
    pub(super) artifacts: &'a Path,
    /// What arrived over the virtio artifact port, if anything did.
    pub(super) extracted: Option<Extracted>,
    /// Whether the guest's results arrived intact and were acknowledged.
    pub(super) transfer_ok: bool,
}

impl QemuRunner {
    /// Puts what the guest sent into the result: output, subtests, the kernel log, artifacts
    /// (checked against the guest's manifest; what is missing named), the console excerpt.
    /// The file work (the kernel log written, a serial archive extracted, the manifest's
    /// checksums, the artifact listing) runs on a blocking thread.
    pub(super) async fn gather(
        &self,
        delivery: Delivery<'_>,
        result: &mut TestResult,
        notes: &mut Vec<String>,
    ) {
        let Delivery {
            output_limit,
            watch,
            case,
            artifacts,
            extracted,
            transfer_ok,
        } = delivery;
        let streams = watch.parser.streams().clone();
        if let Some(s) = streams.get("stdout") {
            result.stdout = captured(s, output_limit);
        }
        if let Some(s) = streams.get("stderr") {
            result.stderr = captured(s, output_limit);
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
                .map(|s| kernel_log_text(&s.data))
                .or_else(|| watch.slice.clone())
        };
        if case.requirements.kunit {
            // The kernel's own tests: judged by the KTAP of the kernel log, since boot.
            let cut = streams
                .get("dmesg")
                .filter(|s| s.total > s.sent)
                .map(|s| (s.sent, s.total));
            judge_kernel_log(kernel_log.as_deref(), cut, result, notes);
        } else {
            let ktap = crate::ktap::cases_of(&result.stdout.text).or_else(|| {
                kernel_log
                    .as_ref()
                    .and_then(|d| crate::ktap::cases_of(&String::from_utf8_lossy(d)))
            });
            if let Some((subtests, suites, summary)) = ktap {
                result.subtests = subtests;
                result.suites = suites;
                notes.push(summary);
            }
        }
        let files = FileWork {
            artifacts: artifacts.to_owned(),
            kernel_log,
            from_console,
            console_warnings: watch.warnings,
            ran_to_exit: matches!(result.outcome, Outcome::Passed | Outcome::Failed { .. }),
            // An empty channel stream: nothing was sent.
            channel: watch.stream_text("channel").filter(|c| !c.is_empty()),
            missing: watch.stream_text("missing"),
            // The manifest as sent (names may end in spaces), not trimmed text.
            manifest: streams
                .get("manifest")
                .filter(|s| s.verified())
                .map(|s| s.data.clone()),
            streams,
            extracted,
            limits: self.config.artifact_limits,
            trace: case.trace.is_some(),
            globs: case.artifacts.clone(),
            transfer_ok,
            rejections: watch.parser.rejections().clone(),
            environment: std::mem::take(&mut result.environment),
        };
        let done = super::blocking(move || files.run()).await;
        result.environment = done.environment;
        notes.extend(done.notes);
        // Records the guest sent that the host refused (a test may forge records: see
        // ARCHITECTURE.md, "Threat model").
        if let Some(summary) = done.rejections.summary() {
            let summary: String = summary.chars().take(REJECTIONS_SHOWN).collect();
            result
                .environment
                .insert("rejected-guest-records".into(), summary.clone());
            notes.push(format!("rejected guest records: {summary}"));
        }
        result.artifacts = done.artifacts;
        tracing::debug!(
            files = result.artifacts.len(),
            bytes = result.artifacts.iter().map(|a| a.size).sum::<u64>(),
            "artifacts gathered"
        );
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
}

/// The most bytes a compressed kernel log may expand to.
const KERNEL_LOG_LIMIT: u64 = 64 << 20;

/// The kernel log a guest of its own sent: gzip'd (the whole log since boot, a few times
/// smaller over the console), or as it is. A compressed log cut short (the agent's output limit)
/// gives what decompresses; at most [`KERNEL_LOG_LIMIT`] bytes.
fn kernel_log_text(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    if !data.starts_with(&[0x1f, 0x8b]) {
        return data.to_vec();
    }
    let mut out = Vec::new();
    // An error (a cut or damaged stream) leaves what came before it.
    let _ = flate2::read::GzDecoder::new(data)
        .take(KERNEL_LOG_LIMIT)
        .read_to_end(&mut out);
    out
}

/// Judges a test of the kernel's own tests (`kunit = true`) by the KTAP of `log`, the kernel
/// log since boot (`None` when it could not be collected; `cut`: the bytes sent and the log's
/// size, when the agent sent only its head and tail): every counted case a subtest (a failed one
/// fails the test, see `TestResult::judge_subtests`), every suite with its own result, and the
/// summary among the notes. A log without KTAP, or whose KTAP is cut short (a crash, a log cut
/// by the output limit), fails a test that passed, with the reason.
pub(super) fn judge_kernel_log(
    log: Option<&[u8]>,
    cut: Option<(u64, u64)>,
    result: &mut TestResult,
    notes: &mut Vec<String>,
) {
    let Some(log) = log else {
        if result.outcome == Outcome::Passed {
            result.outcome = Outcome::Failed {
                exit_code: None,
                signal: None,
            };
            notes.push("`kunit`: the kernel log could not be collected: no KTAP to judge".into());
        }
        return;
    };
    let report = crate::ktap::parse(&String::from_utf8_lossy(log));
    if !report.tests.is_empty() {
        result.subtests = crate::ktap::subtests(&report);
        result.suites = crate::ktap::suites(&report);
        notes.push(crate::ktap::summary(&report));
    }
    if let Some(problem) = crate::ktap::kernel_log_problem(&report) {
        notes.push(problem);
        if let Some((sent, total)) = cut {
            notes.push(format!(
                "the kernel log was cut to {sent} of {total} bytes: raise the output limit"
            ));
        }
        // A failed case fails the test already (and says so).
        if result.outcome == Outcome::Passed && result.failed_subtests().next().is_none() {
            result.outcome = Outcome::Failed {
                exit_code: None,
                signal: None,
            };
        }
    }
}

/// The part of [`QemuRunner::gather`] that reads and writes files, owned so that it can run on
/// a blocking thread.
struct FileWork {
    artifacts: PathBuf,
    kernel_log: Option<Vec<u8>>,
    /// The kernel log is the console's (its warnings were counted as they arrived).
    from_console: bool,
    /// Kernel warnings the console showed.
    console_warnings: usize,
    /// The test passed or failed on its own (the kernel log is not missed otherwise).
    ran_to_exit: bool,
    channel: Option<String>,
    missing: Option<String>,
    manifest: Option<Vec<u8>>,
    streams: BTreeMap<String, Stream>,
    extracted: Option<Extracted>,
    limits: ArtifactLimits,
    trace: bool,
    /// The test's artifact patterns.
    globs: Vec<String>,
    transfer_ok: bool,
    rejections: Rejections,
    environment: BTreeMap<String, String>,
}

/// What [`FileWork::run`] found.
struct FilesDone {
    environment: BTreeMap<String, String>,
    notes: Vec<String>,
    rejections: Rejections,
    artifacts: Vec<ArtifactFile>,
}

impl FileWork {
    fn run(mut self) -> FilesDone {
        let mut notes = Vec::new();
        let mut rejections = std::mem::take(&mut self.rejections);
        let artifacts = self.artifacts.as_path();
        if let Some(data) = &self.kernel_log {
            let path = artifacts.join("dmesg.txt");
            if std::fs::write(&path, data).is_ok() {
                // Console lines were counted as they arrived; a log of its own is counted here.
                let logged = if self.from_console {
                    0
                } else {
                    String::from_utf8_lossy(data)
                        .lines()
                        .filter(|l| crash::classify(l) == Some(Signal::Warning))
                        .count()
                };
                let warnings = logged + self.console_warnings;
                if warnings > 0 {
                    self.environment
                        .insert("kernel-warnings".into(), warnings.to_string());
                    notes.push(format!("the kernel logged {warnings} WARNING(s)"));
                }
            }
        } else if !self.ran_to_exit {
            notes.push("the kernel log (dmesg) could not be collected; see console.log".into());
        }
        let files_dir = artifacts.join("files");
        let mut extracted = self.extracted.take();
        if self.channel.as_deref() == Some("serial-console")
            && let Some(s) = self.streams.get("artifacts")
            && s.verified()
        {
            let started = std::time::Instant::now();
            let e = crate::artifacts::extract(&s.data[..], &files_dir, self.limits);
            tracing::debug!(
                channel = "serial-console",
                archive_bytes = s.data.len(),
                files = e.files.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "artifact archive extracted"
            );
            extracted = Some(e);
        }
        let cores: Vec<String> = std::fs::read_dir(files_dir.join(".orch-cores"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| describe_core(&e.file_name().to_string_lossy()))
                    .collect()
            })
            .unwrap_or_default();
        if self.trace {
            match std::fs::metadata(files_dir.join(".orch-trace/trace.txt")) {
                Ok(m) => {
                    self.environment.insert(
                        "trace".into(),
                        format!("files/.orch-trace/trace.txt ({} bytes)", m.len()),
                    );
                }
                Err(_) => notes.push("the kernel trace did not come back".into()),
            }
        }
        if !cores.is_empty() {
            notes.push(format!("core dumps: {}", cores.join(", ")));
            self.environment
                .insert("core-dumps".into(), cores.join(", "));
        }
        match &extracted {
            Some(e) => tracing::debug!(
                channel = self.channel.as_deref().unwrap_or("none"),
                files = e.files.len(),
                bytes = e.files.values().sum::<u64>(),
                rejected = e.rejected_count(),
                complete = e.complete,
                patterns = %self.globs.join(" "),
                "artifacts transferred"
            ),
            None => tracing::debug!(
                channel = self.channel.as_deref().unwrap_or("none"),
                patterns = %self.globs.join(" "),
                "no artifacts transferred"
            ),
        }
        if !self.globs.is_empty() || extracted.as_ref().is_some_and(|e| !e.files.is_empty()) {
            self.environment.insert(
                "artifact-channel".into(),
                self.channel.clone().unwrap_or_else(|| "none".into()),
            );
            notes.extend(self.check_artifacts(extracted.as_ref(), &files_dir, &mut rejections));
        }
        FilesDone {
            artifacts: list_artifacts(artifacts),
            environment: self.environment,
            notes,
            rejections,
        }
    }

    /// Compares what arrived with what the guest said it sent (see
    /// [`crate::artifacts::check_manifest`]: no name from the guest reaches the file system
    /// unless it is one of the extracted files); returns notes for the result and adds refused
    /// manifest lines to `rejections`.
    fn check_artifacts(
        &self,
        extracted: Option<&Extracted>,
        files_dir: &Path,
        rejections: &mut Rejections,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        let extracted = extracted.filter(|e| self.transfer_ok || !e.files.is_empty());
        let Some(extracted) = extracted else {
            notes.push(format!(
                "artifacts missing: {} ({})",
                self.globs.join(", "),
                if self.transfer_ok {
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
        if !self.transfer_ok {
            let received: Vec<String> = extracted.files.keys().cloned().collect();
            notes.push(format!(
                "the test did not finish: artifacts received before it stopped: {}",
                some_names(&received)
            ));
        }
        if let Some(missing) = &self.missing {
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
            self.manifest.as_deref().unwrap_or_default(),
            extracted,
            files_dir,
            self.limits.max_files,
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
        if !check.wrong_size.is_empty() {
            notes.push(format!(
                "artifacts cut short or damaged in transfer (size differs from the guest's): {}",
                some_names(&check.wrong_size)
            ));
        }
        if !check.lost.is_empty() {
            notes.push(format!(
                "artifacts missing: {} (listed by the guest, not received)",
                some_names(&check.lost)
            ));
        }
        if self.manifest.is_some() && !check.unlisted.is_empty() {
            notes.push(format!(
                "artifacts not in the guest's manifest (received, not verified): {}",
                some_names(&check.unlisted)
            ));
        }
        notes
    }
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

pub(super) fn list_artifacts(dir: &Path) -> Vec<ArtifactFile> {
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

#[cfg(test)]
mod tests {
    use orchestrator_core::{SubtestStatus, Verdict};

    use super::*;

    const LOG: &str = "[    0.1] Linux version 6.1\n[    0.3] KTAP version 1\n[    0.3] 1..1\n\
                       [    0.3]     KTAP version 1\n[    0.3]     # Subtest: s\n\
                       [    0.3]     1..2\n[    0.4]     ok 1 a\n";

    /// A `kunit` test that ran to exit 0, judged by `log` as the runner and the orchestrator
    /// do.
    fn judged(log: Option<&str>, cut: Option<(u64, u64)>) -> (TestResult, Vec<String>) {
        let case = TestCase::script("k", "");
        let mut result = TestResult::new(&case, "qemu", Outcome::Passed);
        let mut notes = Vec::new();
        judge_kernel_log(log.map(str::as_bytes), cut, &mut result, &mut notes);
        result.judge_subtests();
        (result, notes)
    }

    #[test]
    fn a_compressed_kernel_log_is_expanded() {
        use std::io::Write as _;
        let log = LOG.repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(log.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        assert!(gz.len() < log.len() / 10);
        assert_eq!(kernel_log_text(&gz), log.as_bytes());
        // Cut short: what decompresses.
        let cut = kernel_log_text(&gz[..gz.len() / 2]);
        assert!(!cut.is_empty() && log.as_bytes().starts_with(&cut));
        // Plain text stays as it is.
        assert_eq!(kernel_log_text(LOG.as_bytes()), LOG.as_bytes());
        assert!(kernel_log_text(&[0x1f, 0x8b]).is_empty());
    }

    #[test]
    fn kunit_tests_are_judged_by_the_kernel_log() {
        let whole = format!("{LOG}[    0.5]     ok 2 b # SKIP no\n[    0.5] ok 1 s\n");
        let (r, notes) = judged(Some(&whole), None);
        assert_eq!(r.outcome, Outcome::Passed, "{notes:?}");
        assert_eq!(notes, ["KTAP: 1 passed, 0 failed, 1 skipped, 0 todo"]);
        assert_eq!(r.subtests[1].suite, ["s"]);
        assert_eq!(r.suites.len(), 1);

        let failing = format!("{LOG}[    0.5]     not ok 2 b\n[    0.5] not ok 1 s\n");
        let (r, _) = judged(Some(&failing), None);
        assert_eq!(r.failed_subtests().count(), 1);
        assert_eq!(r.verdict(), Verdict::Failed);
        assert!(matches!(
            r.outcome,
            Outcome::SubtestsFailed {
                failed: 1,
                total: 2
            }
        ));

        // Cut short (a crash, or a log cut by the output limit): the suite fails, cut short.
        let (r, notes) = judged(Some(LOG), Some((100, 300_000)));
        assert_eq!(r.verdict(), Verdict::Failed);
        assert_eq!(r.subtests[0].status, SubtestStatus::Failed);
        assert!(notes[1].contains("KTAP output is incomplete"), "{notes:?}");
        assert!(
            notes[2].contains("the kernel log was cut to 100 of 300000 bytes"),
            "{notes:?}"
        );

        // No KTAP at all, or no kernel log: a failure that says why.
        let (r, notes) = judged(Some("[    0.1] Linux version 6.1\n"), None);
        assert_eq!(
            r.outcome,
            Outcome::Failed {
                exit_code: None,
                signal: None
            }
        );
        assert!(r.subtests.is_empty());
        assert!(notes[0].contains("no KTAP"), "{notes:?}");
        let (r, notes) = judged(None, None);
        assert_eq!(r.verdict(), Verdict::Failed);
        assert!(notes[0].contains("could not be collected"), "{notes:?}");
    }
}
