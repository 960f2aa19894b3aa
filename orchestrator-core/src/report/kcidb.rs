//! A run in the KernelCI common reporting schema (KCIDB I/O), version
//! [`KCIDB_MAJOR`].[`KCIDB_MINOR`]: what `kcidb-io`'s `LATEST` validates, the newest major
//! version it knows.
//!
//! [`RunReport::kcidb`] gives the JSON, [`RunReport::write_kcidb`] writes it. Every object's id
//! starts with the origin ([`KcidbOptions::origin`], `qorch` by default) and a colon.
//!
//! # Checkouts and builds
//!
//! Each result's kernel is a build, found in the result's environment (the QEMU runner records
//! it):
//! - a **stock kernel** (a provisioned Debian kernel: `kernel-package` and
//!   `kernel-package-version`) is the build `ORIGIN:PACKAGE_VERSION`
//!   (`qorch:linux-image-6.1.0-57-arm64_6.1.192-3`) of the checkout `ORIGIN:debian-linux-VERSION`
//!   (Debian's `linux` source at that version, shared by the architectures);
//! - a **kernel of the user's** (`kernel`, a path) is the build `ORIGIN:kernel-DIGEST`, DIGEST
//!   being the image's BLAKE3 (`kernel-blake3`; a report without it: the BLAKE3 of the path),
//!   of the checkout [`KcidbOptions::git_commit_hash`] names (`ORIGIN:git-HASH`), else of
//!   `ORIGIN:local-DIGEST`;
//! - a **host test** (no kernel recorded: the process runner) ran on the host's kernel: the
//!   build `ORIGIN:host-HOSTNAME-ARCH` of the checkout `ORIGIN:host-HOSTNAME`.
//!
//! # Tests
//!
//! A result is the test `ORIGIN:RUN_ID:N` (N its index in the report) at the path of its test
//! id: `@ARCH` dropped (the build says the architecture), `:` as a separator like `.`, and
//! every other character the schema does not allow in a path part (`+`, `@`) as `_`. Its KTAP
//! subtests are child paths (`ORIGIN:RUN_ID:N.M`): the test's path, the suite path
//! ([`Subtest::suite`](crate::Subtest::suite)), the case's name; the suites with results of
//! their own ([`SubtestSuite`](crate::SubtestSuite)) are tests too (`ORIGIN:RUN_ID:N.sK`). Parts
//! are made of letters, digits, `_` and `-`: any other character (a space, a `.` inside a
//! case's name) becomes `_`.
//!
//! # Statuses
//!
//! | outcome | KCIDB status | why |
//! |---|---|---|
//! | `passed` | `PASS` | |
//! | `failed`, `subtests-failed` | `FAIL` | the tested code was judged faulty |
//! | `crashed` (panic, oops, lockup, boot failure...) | `FAIL` | the kernel under test crashed |
//! | `timed-out` in boot or test | `FAIL` | the kernel or the test hung (judged a failure by every report) |
//! | `timed-out` in setup or teardown | `MISS` | the harness was too slow: nothing was judged |
//! | `infra-error` (infrastructure, internal) | `MISS` | the harness failed: neither the test nor the code were judged |
//! | `infra-error` (configuration) | `ERROR` | the test is set up wrongly (a missing kernel, a bad module name) |
//! | `cancelled` | `ERROR` | stopped before it completed: the code's status is unknown |
//! | `skipped` | `SKIP` | |
//!
//! Subtests: passed `PASS`, failed `FAIL`, skipped `SKIP`, todo/xfail `DONE` (it ran to its end
//! and says nothing of the code). The schema has no expected failure: a test expected to fail
//! keeps its outcome's status, and `misc.verdict` says `XFAIL` (or `XPASS`).
//!
//! # Logs
//!
//! `log_excerpt` is the outcome, the message, the end of stderr and stdout (their last 4096
//! characters, saying so) and the console excerpt, at most [`KcidbOptions::log_excerpt_limit`]
//! characters (the schema allows [`LOG_EXCERPT_MAX`]): when longer, the head and the tail are
//! kept around a `[... N characters cut ...]` line. Collected files are `output_files` (`file://` URLs on the
//! host that ran the test). `start_time`, `duration`, the environment (`environment.misc`: the
//! result's environment record and the host), the runner, attempt, verdict, tags and resource
//! figures (`misc`) come from the result.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::{ReportError, RunReport, write_atomic};
use crate::case::{Arch, Expectation};
use crate::result::{Outcome, Phase, SubtestStatus, TestResult};
use crate::runner::ErrorKind;

/// The major version of the KCIDB I/O schema written.
pub const KCIDB_MAJOR: u32 = 5;
/// The minor version of the KCIDB I/O schema written.
pub const KCIDB_MINOR: u32 = 3;
/// The schema's limit on a `log_excerpt`, in characters.
pub const LOG_EXCERPT_MAX: usize = 16384;
/// The default origin.
pub const DEFAULT_ORIGIN: &str = "qorch";

/// How a run is written in KCIDB.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KcidbOptions {
    /// The name of the submitting CI system (`[a-z0-9_]+`), the prefix of every id.
    pub origin: String,
    /// Most characters of a `log_excerpt` (at most [`LOG_EXCERPT_MAX`]).
    pub log_excerpt_limit: usize,
    /// The commit the user's kernels were built from (40 hex digits), when known.
    pub git_commit_hash: Option<String>,
    /// The repository of that commit (an `https://` URL).
    pub git_repository_url: Option<String>,
    /// Its branch.
    pub git_repository_branch: Option<String>,
    /// The widely known name of the tree (`mainline`, `net-next`).
    pub tree_name: Option<String>,
}

impl Default for KcidbOptions {
    fn default() -> Self {
        KcidbOptions {
            origin: DEFAULT_ORIGIN.to_owned(),
            log_excerpt_limit: LOG_EXCERPT_MAX,
            git_commit_hash: None,
            git_repository_url: None,
            git_repository_branch: None,
            tree_name: None,
        }
    }
}

impl KcidbOptions {
    /// The defaults with another origin: lowercase letters, digits and `_` only (what KCIDB
    /// allows), else an error naming it.
    pub fn with_origin(origin: impl Into<String>) -> Result<Self, ReportError> {
        let o = KcidbOptions {
            origin: origin.into(),
            ..KcidbOptions::default()
        };
        o.check()?;
        Ok(o)
    }

    /// The same, with the user's kernels built from `hash` (40 hex digits) of `repository`
    /// (`https://...`, when given).
    #[must_use]
    pub fn with_git(mut self, hash: impl Into<String>, repository: Option<String>) -> Self {
        self.git_commit_hash = Some(hash.into());
        self.git_repository_url = repository;
        self
    }

    fn check(&self) -> Result<(), ReportError> {
        let bad = |why: String| Err(ReportError::Kcidb(why));
        if self.origin.is_empty()
            || !self
                .origin
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return bad(format!(
                "KCIDB origin `{}` is invalid: use lowercase letters, digits and `_` only, e.g. `{DEFAULT_ORIGIN}`",
                self.origin
            ));
        }
        if let Some(h) = &self.git_commit_hash
            && !(h.len() == 40
                && h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
        {
            return bad(format!(
                "git commit `{h}` is not a full commit hash: give the 40 lowercase hex digits of `git rev-parse HEAD`"
            ));
        }
        if let Some(u) = &self.git_repository_url
            && !u.starts_with("https://")
        {
            return bad(format!(
                "git repository URL `{u}` is not accepted by KCIDB: give its https:// URL"
            ));
        }
        if self.log_excerpt_limit < 64 {
            return bad(format!(
                "a log excerpt limit of {} characters is too small: give at least 64 (at most {LOG_EXCERPT_MAX})",
                self.log_excerpt_limit
            ));
        }
        Ok(())
    }
}

impl RunReport {
    /// The run in the KCIDB I/O schema (see [the module docs](crate::report::kcidb)); an
    /// error only for invalid options.
    pub fn kcidb(&self, options: &KcidbOptions) -> Result<Value, ReportError> {
        options.check()?;
        Ok(Export::new(self, options).run())
    }

    /// Writes [`kcidb`](Self::kcidb) atomically as pretty JSON.
    pub fn write_kcidb(&self, path: &Path, options: &KcidbOptions) -> Result<(), ReportError> {
        let value = self.kcidb(options)?;
        let json = serde_json::to_vec_pretty(&value).map_err(|source| ReportError::Json {
            path: path.to_owned(),
            source,
        })?;
        write_atomic(path, &json)
    }
}

/// The kernel a result ran on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kernel {
    Stock {
        package: String,
        version: String,
        distribution: Option<String>,
        release: Option<String>,
    },
    Own {
        path: String,
        digest: String,
        digest_of_path: bool,
        release: Option<String>,
    },
    Host,
}

impl Kernel {
    fn of(r: &TestResult) -> Kernel {
        let env = &r.environment;
        let release = env.get("kernel-release").cloned();
        if let (Some(package), Some(version)) =
            (env.get("kernel-package"), env.get("kernel-package-version"))
        {
            return Kernel::Stock {
                package: package.clone(),
                version: version.clone(),
                distribution: env.get("kernel-distribution").cloned(),
                release,
            };
        }
        match env.get("kernel") {
            Some(path) => {
                let (digest, digest_of_path) = match env.get("kernel-blake3") {
                    Some(d) => (d.clone(), false),
                    None => (blake3::hash(path.as_bytes()).to_hex().to_string(), true),
                };
                Kernel::Own {
                    path: path.clone(),
                    digest,
                    digest_of_path,
                    release,
                }
            }
            None => Kernel::Host,
        }
    }
}

struct Export<'a> {
    report: &'a RunReport,
    o: &'a KcidbOptions,
    checkouts: BTreeMap<String, Value>,
    builds: BTreeMap<String, Value>,
    tests: Vec<Value>,
}

impl<'a> Export<'a> {
    fn new(report: &'a RunReport, o: &'a KcidbOptions) -> Self {
        Export {
            report,
            o,
            checkouts: BTreeMap::new(),
            builds: BTreeMap::new(),
            tests: Vec::new(),
        }
    }

    fn id(&self, rest: &str) -> String {
        format!("{}:{rest}", self.o.origin)
    }

    fn run(mut self) -> Value {
        for (i, r) in self.report.results.iter().enumerate() {
            let build = self.build_of(r);
            self.test(i, r, &build);
        }
        json!({
            "version": {"major": KCIDB_MAJOR, "minor": KCIDB_MINOR},
            "checkouts": self.checkouts.into_values().collect::<Vec<_>>(),
            "builds": self.builds.into_values().collect::<Vec<_>>(),
            "tests": self.tests,
        })
    }

    /// Adds the checkout and the build of `r`'s kernel (once each); returns the build's id.
    fn build_of(&mut self, r: &TestResult) -> String {
        let arch = r
            .environment
            .get("arch")
            .cloned()
            .or_else(|| arch_suffix(r.test_id.as_str()).map(|a| a.to_string()))
            .unwrap_or_else(|| self.report.host.arch.clone());
        let arch = arch_name(&arch);
        let origin = self.o.origin.clone();
        // Each kind of kernel gives its checkout, and its build's id, comment, misc and
        // configuration name.
        let (checkout_id, checkout, build_id, comment, misc, config_name) = match Kernel::of(r) {
            Kernel::Stock {
                package,
                version,
                distribution,
                release,
            } => {
                let checkout_id = self.id(&format!("debian-linux-{version}"));
                let dist = distribution.unwrap_or_else(|| "debian".to_owned());
                let checkout = json!({
                    "id": checkout_id,
                    "origin": origin,
                    "tree_name": dist,
                    "comment": format!("Debian's linux source {version} ({dist})"),
                    "valid": true,
                    "misc": {"source_package": "linux", "source_version": version},
                });
                let build_id = self.id(&format!("{package}_{version}"));
                let mut misc =
                    json!({"package": package, "package_version": version, "stock": true});
                if let Some(rel) = release {
                    misc["kernel_release"] = json!(rel);
                }
                let comment = format!("stock kernel: Debian package {package} {version}");
                (
                    checkout_id,
                    checkout,
                    build_id,
                    comment,
                    misc,
                    Some(package),
                )
            }
            Kernel::Own {
                path,
                digest,
                digest_of_path,
                release,
            } => {
                let mut checkout = json!({"origin": origin, "valid": true});
                let checkout_id = match &self.o.git_commit_hash {
                    Some(hash) => {
                        checkout["git_commit_hash"] = json!(hash);
                        if let Some(u) = &self.o.git_repository_url {
                            checkout["git_repository_url"] = json!(u);
                        }
                        if let Some(b) = &self.o.git_repository_branch {
                            checkout["git_repository_branch"] = json!(b);
                        }
                        self.id(&format!("git-{hash}"))
                    }
                    None => {
                        checkout["comment"] = json!(format!("the source of the kernel {path}"));
                        self.id(&format!("local-{digest}"))
                    }
                };
                if let Some(t) = &self.o.tree_name {
                    checkout["tree_name"] = json!(t);
                }
                checkout["id"] = json!(checkout_id);
                let build_id = self.id(&format!("kernel-{digest}"));
                let mut misc = json!({"path": path, "stock": false});
                misc[if digest_of_path {
                    "path_blake3"
                } else {
                    "blake3"
                }] = json!(digest);
                if let Some(rel) = release {
                    misc["kernel_release"] = json!(rel);
                }
                let comment = format!("the user's kernel {path}");
                (checkout_id, checkout, build_id, comment, misc, None)
            }
            Kernel::Host => {
                let host = &self.report.host;
                let name = part(if host.hostname.is_empty() {
                    "localhost"
                } else {
                    &host.hostname
                });
                let checkout_id = self.id(&format!("host-{name}"));
                let checkout = json!({
                    "id": checkout_id,
                    "origin": origin,
                    "comment": format!("the running kernel of host {}", host.hostname),
                    "valid": true,
                });
                let build_id = self.id(&format!("host-{name}-{arch}"));
                let comment = format!(
                    "the host's kernel ({} {}): tests run as host processes",
                    host.os, host.arch
                );
                let misc = json!({"hostname": host.hostname, "os": host.os, "cpus": host.cpus});
                (checkout_id, checkout, build_id, comment, misc, None)
            }
        };
        let mut build = json!({
            "id": build_id,
            "origin": origin,
            "checkout_id": checkout_id,
            "comment": comment,
            "status": "PASS",
            "misc": misc,
        });
        if let Some(name) = config_name {
            build["config_name"] = json!(name);
        }
        if !arch.is_empty() {
            build["architecture"] = json!(arch);
        }
        self.checkouts.entry(checkout_id).or_insert(checkout);
        // A kernel booted on several architectures (an ELF of another arch is refused, so
        // this is one build per arch in practice): the first one's.
        self.builds.entry(build_id.clone()).or_insert(build);
        build_id
    }

    fn test(&mut self, i: usize, r: &TestResult, build_id: &str) {
        let path = test_path(r.test_id.as_str());
        let base_id = self.id(&format!("{}:{i}", self.report.run_id));
        let mut misc = Map::new();
        misc.insert("test_id".into(), json!(r.test_id.as_str()));
        misc.insert("name".into(), json!(r.name));
        misc.insert("runner".into(), json!(r.runner));
        misc.insert("outcome".into(), json!(r.outcome.label()));
        misc.insert("verdict".into(), json!(r.verdict().label()));
        misc.insert(
            "expect".into(),
            json!(match r.expect {
                Expectation::Pass => "pass",
                Expectation::Fail => "fail",
            }),
        );
        misc.insert("attempt".into(), json!(r.attempt));
        misc.insert("run_id".into(), json!(self.report.run_id));
        if let Some(name) = &self.report.name {
            misc.insert("plan".into(), json!(name));
        }
        if !r.tags.is_empty() {
            misc.insert("tags".into(), json!(r.tags));
        }
        if let Some(m) = &r.message {
            misc.insert("message".into(), json!(m));
        }
        for (name, s) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
            misc.insert(
                format!("{name}_bytes"),
                json!({"total": s.total_bytes, "truncated": s.truncated_bytes}),
            );
        }
        for p in &r.phases {
            misc.insert(
                format!("{}_seconds", p.phase),
                json!(p.duration().as_secs_f64()),
            );
        }
        if let Some(res) = &r.resources
            && let Ok(mut v) = serde_json::to_value(res)
        {
            if let Some(o) = v.as_object_mut() {
                o.remove("series");
            }
            misc.insert("resources".into(), v);
        }
        if !r.metrics.is_empty() {
            misc.insert("metrics".into(), json!(r.metrics));
        }
        let mut env_misc: Map<String, Value> = r
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let host = &self.report.host;
        env_misc.insert(
            "host".into(),
            json!({"hostname": host.hostname, "os": host.os, "arch": host.arch, "cpus": host.cpus}),
        );
        let mut comment = r.runner.clone();
        for k in ["arch", "machine", "accelerator"] {
            if let Some(v) = r.environment.get(k) {
                let _ = write!(comment, " {v}");
            }
        }
        let _ = write!(
            comment,
            " on {}",
            if host.hostname.is_empty() {
                "the host"
            } else {
                &host.hostname
            }
        );
        let mut t = json!({
            "id": base_id,
            "origin": self.o.origin,
            "build_id": build_id,
            "path": path,
            "comment": r.name,
            "status": outcome_status(&r.outcome),
            "start_time": r.started_at.to_rfc3339(),
            "duration": r.duration().as_secs_f64(),
            "environment": {"comment": comment, "misc": env_misc},
            "log_excerpt": bounded(&log_of(r), self.o.log_excerpt_limit),
            "misc": misc,
        });
        let files: Vec<Value> = r
            .artifacts
            .iter()
            .filter_map(|a| {
                let url = file_url(&a.path)?;
                Some(json!({"name": resource_name(&a.name), "url": url}))
            })
            .collect();
        if !files.is_empty() {
            t["output_files"] = json!(files);
        }
        self.tests.push(t);

        // The suites with their own results, then the cases.
        for (k, s) in r.suites.iter().enumerate() {
            let parts: Vec<String> = r
                .subtests
                .iter()
                .find(|c| c.suite_path() == s.name)
                .map(|c| c.suite.iter().map(|p| part(p)).collect())
                .unwrap_or_else(|| s.name.split('.').map(part).collect());
            let mut st = json!({
                "id": format!("{base_id}.s{k}"),
                "origin": self.o.origin,
                "build_id": build_id,
                "path": join_path(&path, &parts),
                "comment": s.name,
                "status": subtest_status(s.status),
                "start_time": r.started_at.to_rfc3339(),
                "misc": {"parent": base_id, "kind": "suite", "cases": s.cases, "name": s.name},
            });
            if let Some(d) = s.duration {
                st["duration"] = json!(d.as_secs_f64());
            }
            if let Some(m) = &s.message {
                st["log_excerpt"] = json!(bounded(m, self.o.log_excerpt_limit));
            }
            self.tests.push(st);
        }
        for (m, c) in r.subtests.iter().enumerate() {
            let mut parts: Vec<String> = c.suite.iter().map(|p| part(p)).collect();
            parts.push(part(c.case()));
            let mut st = json!({
                "id": format!("{base_id}.{m}"),
                "origin": self.o.origin,
                "build_id": build_id,
                "path": join_path(&path, &parts),
                "comment": c.name,
                "status": subtest_status(c.status),
                "start_time": r.started_at.to_rfc3339(),
                "misc": {
                    "parent": base_id,
                    "kind": "case",
                    "name": c.name,
                    "verdict": c.verdict(r.expect).label(),
                },
            });
            if let Some(d) = c.duration {
                st["duration"] = json!(d.as_secs_f64());
            }
            if let Some(msg) = &c.message {
                st["log_excerpt"] = json!(bounded(msg, self.o.log_excerpt_limit));
            }
            self.tests.push(st);
        }
    }
}

/// The KCIDB status of an outcome (the table in the module docs).
pub fn outcome_status(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Passed => "PASS",
        Outcome::Failed { .. } | Outcome::SubtestsFailed { .. } | Outcome::Crashed { .. } => "FAIL",
        Outcome::TimedOut {
            phase: Phase::Boot | Phase::Test,
            ..
        } => "FAIL",
        Outcome::TimedOut { .. } => "MISS",
        Outcome::InfraError {
            cause: ErrorKind::Configuration,
            ..
        } => "ERROR",
        Outcome::InfraError { .. } => "MISS",
        Outcome::Cancelled => "ERROR",
        Outcome::Skipped { .. } => "SKIP",
    }
}

/// The KCIDB status of a subtest or suite.
pub fn subtest_status(status: SubtestStatus) -> &'static str {
    match status {
        SubtestStatus::Passed => "PASS",
        SubtestStatus::Failed => "FAIL",
        SubtestStatus::Skipped => "SKIP",
        SubtestStatus::Todo => "DONE",
    }
}

fn arch_suffix(id: &str) -> Option<Arch> {
    id.rsplit_once('@').and_then(|(_, a)| a.parse().ok())
}

/// An architecture name as KCIDB allows (`[a-z0-9_]*`).
fn arch_name(a: &str) -> String {
    a.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One path part: letters, digits, `_` and `-`; anything else `_` (never empty).
fn part(s: &str) -> String {
    let p: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if p.is_empty() { "_".to_owned() } else { p }
}

/// The path of a test id (see the module docs).
pub fn test_path(id: &str) -> String {
    let base = match id.rsplit_once('@') {
        Some((b, a)) if a.parse::<Arch>().is_ok() => b,
        _ => id,
    };
    let parts: Vec<String> = base
        .split(['.', ':'])
        .filter(|p| !p.is_empty())
        .map(part)
        .collect();
    if parts.is_empty() {
        "_".to_owned()
    } else {
        parts.join(".")
    }
}

fn join_path(base: &str, parts: &[String]) -> String {
    let mut p = base.to_owned();
    for x in parts {
        p.push('.');
        p.push_str(x);
    }
    p
}

/// A resource name: no `/` (no directories) and no NUL.
fn resource_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if n.is_empty() { "_".to_owned() } else { n }
}

/// A `file://` URL of an absolute path, percent-encoded.
fn file_url(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    if !path.is_absolute() {
        return None;
    }
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    Some(url)
}

/// What the test's `log_excerpt` is made of (before bounding).
fn log_of(r: &TestResult) -> String {
    let mut s = format!("{}: {}\n", r.test_id, r.outcome);
    if let Some(m) = &r.message {
        let _ = writeln!(s, "{m}");
    }
    // The ends of the streams are what tells (the whole streams are in the JSON report).
    let section = |s: &mut String, name: &str, t: &str| {
        let chars: Vec<char> = t.chars().collect();
        let keep = LOG_EXCERPT_MAX / 4;
        if chars.len() > keep {
            let _ = writeln!(
                s,
                "--- {name} (the last {keep} of {} characters) ---",
                chars.len()
            );
            s.extend(&chars[chars.len() - keep..]);
        } else {
            let _ = writeln!(s, "--- {name} ---");
            s.push_str(t);
        }
        if !s.ends_with('\n') {
            s.push('\n');
        }
    };
    for (name, text) in [("stderr", &r.stderr.text), ("stdout", &r.stdout.text)] {
        if !text.is_empty() {
            section(&mut s, name, text);
        }
    }
    if let Some(c) = &r.console_excerpt {
        section(&mut s, "console", c);
    }
    s
}

/// `text` in at most `limit` characters, no NUL: head and tail around a line saying how many
/// characters were cut.
fn bounded(text: &str, limit: usize) -> String {
    let limit = limit.min(LOG_EXCERPT_MAX);
    let clean: Vec<char> = text
        .chars()
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect();
    if clean.len() <= limit {
        return clean.into_iter().collect();
    }
    // The marker's length depends on the count: leave room for the longest.
    let room = limit.saturating_sub(48);
    let head = room / 3;
    let tail = room - head;
    let cut = clean.len() - head - tail;
    let mut s: String = clean[..head].iter().collect();
    let _ = write!(s, "\n[... {cut} characters cut ...]\n");
    s.extend(&clean[clean.len() - tail..]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_dot_separated_parts_of_allowed_characters() {
        assert_eq!(test_path("boot@aarch64"), "boot");
        assert_eq!(test_path("net.ipv4:route+x@riscv64"), "net.ipv4.route_x");
        assert_eq!(test_path("a@b"), "a_b");
        assert_eq!(test_path("kunit..x."), "kunit.x");
        assert_eq!(part("value 1.5"), "value_1_5");
        assert_eq!(part(""), "_");
        assert_eq!(arch_name("x86_64"), "x86_64");
    }

    #[test]
    fn excerpts_stay_within_the_limit_and_say_what_was_cut() {
        let long: String = "é".repeat(20_000) + "\0end";
        let b = bounded(&long, LOG_EXCERPT_MAX);
        assert!(
            b.chars().count() <= LOG_EXCERPT_MAX,
            "{}",
            b.chars().count()
        );
        assert!(!b.contains('\0'));
        assert!(b.ends_with("\u{fffd}end"));
        let kept = b.chars().filter(|&c| c == 'é').count();
        let cut: usize = b
            .split("[... ")
            .nth(1)
            .and_then(|x| x.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert_eq!(kept + cut + 4, long.chars().count());
        assert_eq!(bounded("short", 100), "short");
        assert_eq!(
            file_url(Path::new("/a b/c%.log")).as_deref(),
            Some("file:///a%20b/c%25.log")
        );
    }

    #[test]
    fn every_outcome_has_a_status() {
        for (o, s) in [
            (Outcome::Passed, "PASS"),
            (
                Outcome::Failed {
                    exit_code: Some(1),
                    signal: None,
                },
                "FAIL",
            ),
            (
                Outcome::SubtestsFailed {
                    failed: 1,
                    total: 2,
                },
                "FAIL",
            ),
            (
                Outcome::Crashed {
                    crash: crate::CrashKind::KernelPanic,
                },
                "FAIL",
            ),
            (
                Outcome::TimedOut {
                    phase: Phase::Test,
                    limit: std::time::Duration::from_secs(1),
                },
                "FAIL",
            ),
            (
                Outcome::TimedOut {
                    phase: Phase::Setup,
                    limit: std::time::Duration::from_secs(1),
                },
                "MISS",
            ),
            (Outcome::infra("qemu died"), "MISS"),
            (
                Outcome::from_error(&crate::RunnerError::config("no kernel")),
                "ERROR",
            ),
            (Outcome::Cancelled, "ERROR"),
            (
                Outcome::Skipped {
                    reason: "no time".into(),
                },
                "SKIP",
            ),
        ] {
            assert_eq!(outcome_status(&o), s, "{o}");
        }
    }
}
