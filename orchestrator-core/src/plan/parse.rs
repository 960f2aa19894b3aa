//! Turns the TOML tree of a plan into test cases, checking every key and value on the way.
//!
//! The document is read with [`DeTable`], which keeps the byte span of every key and value, and
//! walked by hand rather than through serde: that way every message can name the table it is
//! about ("in test `boot`", "in [run]"), point at the key or the value as fits, and say how to
//! fix the problem. Keys are visited in file order, so the first problem reported is the first
//! one in the file.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

#[cfg(feature = "store")]
use artifact_store::{ArtifactKind, Durability};
use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

#[cfg(feature = "monitor")]
use super::MonitorPlan;
use super::{AccelChoice, PlanSettings, ProfileOverride, QemuPlan};
#[cfg(feature = "store")]
use super::{RetentionPlan, StorePlan};
use crate::case::{
    Arch, Command, DEFAULT_TIMEOUT, Expectation, FileSpec, Requirements, TestCase, TestId,
};

/// A problem found at a byte range of the plan text.
#[derive(Debug)]
pub(super) struct Diag {
    pub(super) span: Range<usize>,
    /// Whether the text is not even valid TOML.
    pub(super) syntax: bool,
    pub(super) key: Option<String>,
    pub(super) message: String,
    pub(super) help: Option<String>,
}

impl Diag {
    fn new(span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Diag {
            span,
            syntax: false,
            key: Some(key.into()),
            message: message.into(),
            help: None,
        }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn maybe_help(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
}

type Res<T> = Result<T, Diag>;

/// What a valid plan document holds, before it is wrapped in a [`super::Plan`].
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) name: Option<String>,
    pub(super) settings: PlanSettings,
    pub(super) cases: Vec<TestCase>,
}

/// Reads a whole plan document.
pub(super) fn document(text: &str, base_dir: &Path) -> Res<Parsed> {
    let root = DeTable::parse(text).map_err(|e| syntax_error(text, &e))?;
    let parser = Parser { text, base_dir };
    let scope = Scope::top();
    let mut name = None;
    let mut settings = PlanSettings::default();
    let mut defaults = Common::default();
    let mut tests = None;
    for (key, value) in entries(root.get_ref()) {
        let f = Field::new(key, value, &scope);
        match f.key {
            "name" => name = Some(f.text()?.to_owned()),
            "run" => f.run(&mut settings)?,
            "qemu" => settings.qemu = Some(f.qemu()?),
            #[cfg(feature = "store")]
            "store" => settings.store = Some(f.store(base_dir)?),
            #[cfg(feature = "monitor")]
            "monitor" => settings.monitor = Some(f.monitor()?),
            #[cfg(not(feature = "store"))]
            "store" => return Err(f.feature_off("store")),
            #[cfg(not(feature = "monitor"))]
            "monitor" => return Err(f.feature_off("monitor")),
            "defaults" => defaults = parser.defaults(&f)?,
            "test" => tests = Some(parser.tests(&f)?),
            _ => return Err(unknown_key(&scope, &f)),
        }
    }
    let Some(tests) = tests else {
        return Err(Diag::new(0..0, "test", "the plan defines no tests")
            .help("add at least one `[[test]]` table with an `id` and a `command` or `script`"));
    };
    let cases = parser.expand(tests, &defaults)?;
    Ok(Parsed {
        name,
        settings,
        cases,
    })
}

/// The keys of each kind of table.
const TOP_KEYS: &[&str] = &[
    "name", "run", "defaults", "qemu", "store", "monitor", "test",
];
const RUN_KEYS: &[&str] = &[
    "parallelism",
    "timeout",
    "retries",
    "kill-grace",
    "output-limit",
];
const DEFAULTS_KEYS: &[&str] = &[
    "timeout",
    "env",
    "tags",
    "runner",
    "shell",
    "arch",
    "memory",
    "cpus",
    "kernel",
    "modules",
    "artifacts",
    "expect",
    "trace",
];
const TEST_KEYS: &[&str] = &[
    "id",
    "name",
    "command",
    "script",
    "shell",
    "files",
    "env",
    "timeout",
    "arch",
    "memory",
    "cpus",
    "kernel",
    "modules",
    "artifacts",
    "tags",
    "expect",
    "runner",
    "trace",
];
/// Keys of `[[test]]` that `[defaults]` does not take.
const TEST_ONLY_KEYS: &[&str] = &["id", "name", "command", "script", "files"];
const FILE_KEYS: &[&str] = &["source", "dest"];
const QEMU_KEYS: &[&str] = &[
    "session",
    "snapshot-reset",
    "pool",
    "virtio-artifacts",
    "max-artifact-bytes",
    "max-artifact-files",
    "serial-artifact-limit",
    "modules",
    "accel",
    "profile",
];
const PROFILE_KEYS: &[&str] = &[
    "qemu",
    "machine",
    "cpu",
    "memory",
    "cpus",
    "display",
    "extra-args",
    "kernel-args",
    "boot-timeout",
    "accel",
];
const STORE_KEYS: &[&str] = &["path", "durability", "remote", "retention"];
/// Keys that would hold credentials: refused with a pointer to the environment.
#[cfg(feature = "store")]
const CREDENTIAL_KEYS: &[&str] = &[
    "access-key",
    "access-key-id",
    "aws-access-key-id",
    "secret",
    "secret-key",
    "secret-access-key",
    "aws-secret-access-key",
    "session-token",
    "aws-session-token",
    "token",
    "password",
    "credentials",
];
const RETENTION_KEYS: &[&str] = &[
    "max-age",
    "keep-last-runs",
    "max-total-size",
    "kind-max-age",
    "kind-budgets",
    "keep-failures-for",
    "keep-passes-for",
    "first-failure-after-pass",
    "last-passing-run",
    "pin-runs",
    "pin-tags",
];
const MONITOR_KEYS: &[&str] = &["enabled", "interval"];
/// The names of the kinds of artifact, as in [`ArtifactKind::as_str`].
const KIND_NAMES: &[&str] = &[
    "log",
    "console",
    "core-dump",
    "trace",
    "screenshot",
    "metrics",
    "other",
];

const MIB: u64 = 1 << 20;

/// Every key of every table.
#[cfg(test)]
pub(super) fn all_keys() -> impl Iterator<Item = &'static str> {
    [
        TOP_KEYS,
        RUN_KEYS,
        DEFAULTS_KEYS,
        TEST_KEYS,
        FILE_KEYS,
        QEMU_KEYS,
        PROFILE_KEYS,
        STORE_KEYS,
        RETENTION_KEYS,
        MONITOR_KEYS,
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// The kinds of table in a plan. (Without the `store` or `monitor` feature, their tables are
/// refused before they are read, yet their keys still serve the did-you-mean advice.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(all(feature = "store", feature = "monitor")), allow(dead_code))]
enum Kind {
    Top,
    Run,
    Defaults,
    Test,
    File,
    Qemu,
    /// `[qemu.profile]`, whose keys are architectures.
    Profiles,
    /// `[qemu.profile.<arch>]`.
    Profile,
    Store,
    Retention,
    /// `kind-max-age` in `[store.retention]`, whose keys are kinds of artifact.
    MaxAges,
    /// `kind-budgets` in `[store.retention]`, whose keys are kinds of artifact.
    Budgets,
    Monitor,
}

impl Kind {
    fn accepted(self) -> &'static [&'static str] {
        match self {
            Kind::Top => TOP_KEYS,
            Kind::Run => RUN_KEYS,
            Kind::Defaults => DEFAULTS_KEYS,
            Kind::Test => TEST_KEYS,
            Kind::File => FILE_KEYS,
            Kind::Qemu => QEMU_KEYS,
            Kind::Profiles => ARCH_NAMES,
            Kind::Profile => PROFILE_KEYS,
            Kind::Store => STORE_KEYS,
            Kind::Retention => RETENTION_KEYS,
            Kind::MaxAges | Kind::Budgets => KIND_NAMES,
            Kind::Monitor => MONITOR_KEYS,
        }
    }

    /// The start of the dotted path of this table's keys (a profile's names its architecture
    /// too, see [`Scope::profile`]).
    fn prefix(self) -> &'static str {
        match self {
            Kind::Top => "",
            Kind::Run => "run.",
            Kind::Defaults => "defaults.",
            Kind::Test => "test.",
            Kind::File => "test.files.",
            Kind::Qemu => "qemu.",
            Kind::Profiles | Kind::Profile => "qemu.profile.",
            Kind::Store => "store.",
            Kind::Retention => "store.retention.",
            Kind::MaxAges => "store.retention.kind-max-age.",
            Kind::Budgets => "store.retention.kind-budgets.",
            Kind::Monitor => "monitor.",
        }
    }
}

/// The table a key is in, for messages.
#[derive(Debug)]
struct Scope {
    kind: Kind,
    /// What the table is called: "[run]", "test `boot`", "test #3".
    name: String,
    /// Where a key of it is: "in [run]", "at the top level of the plan".
    place: String,
    /// The start of the dotted path of its keys: "run.", "qemu.profile.arm64.".
    prefix: String,
}

impl Scope {
    fn top() -> Self {
        Scope {
            kind: Kind::Top,
            name: "the top level".to_owned(),
            place: "at the top level of the plan".to_owned(),
            prefix: String::new(),
        }
    }

    fn table(kind: Kind, name: &str) -> Self {
        Scope {
            kind,
            name: name.to_owned(),
            place: format!("in {name}"),
            prefix: kind.prefix().to_owned(),
        }
    }

    /// `[qemu.profile.<arch>]`, with the architecture as written.
    fn profile(arch: &str) -> Self {
        Scope {
            prefix: format!("qemu.profile.{arch}."),
            ..Self::table(Kind::Profile, &format!("[qemu.profile.{arch}]"))
        }
    }

    fn test(number: usize, id: Option<&str>) -> Self {
        let name = match id {
            Some(id) => format!("test `{id}`"),
            None => format!("test #{number}"),
        };
        Self::table(Kind::Test, &name)
    }

    fn file_entry(test: &Scope) -> Self {
        Self::table(Kind::File, &format!("a `files` entry of {}", test.name))
    }
}

/// The entries of a table in the order they appear in the file.
fn entries<'a, 'i>(
    table: &'a DeTable<'i>,
) -> Vec<(&'a Spanned<DeString<'i>>, &'a Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// Context shared while reading one document.
#[derive(Debug)]
struct Parser<'t> {
    text: &'t str,
    base_dir: &'t Path,
}

impl Parser<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn defaults(&self, f: &Field<'_, '_>) -> Res<Common> {
        let table = f.table()?;
        let scope = Scope::table(Kind::Defaults, "[defaults]");
        let mut common = Common::default();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            if !common.read(&f, self.base_dir)? {
                return Err(unknown_key(&scope, &f));
            }
        }
        Ok(common)
    }

    fn tests(&self, f: &Field<'_, '_>) -> Res<Vec<RawTest>> {
        let array = match f.get() {
            DeValue::Array(array) => array,
            DeValue::Table(_) => {
                return Err(f
                    .error("`test` must be an array of tables, but `[test]` defines a single table")
                    .help("write `[[test]]`, with double brackets, above the keys of each test"));
            }
            _ => {
                return Err(f
                    .wrong_type("an array of tables")
                    .help("write `[[test]]` above the keys of each test"));
            }
        };
        if array.is_empty() {
            return Err(f.error("`test` is empty: the plan defines no tests").help(
                "add at least one `[[test]]` table with an `id` and a `command` or `script`",
            ));
        }
        let mut seen = HashMap::new();
        array
            .iter()
            .enumerate()
            .map(|(i, entry)| self.test(i + 1, entry, &mut seen))
            .collect()
    }

    /// Reads the `number`th `[[test]]`; `seen` maps the ids read so far to their offsets.
    fn test(
        &self,
        number: usize,
        entry: &Spanned<DeValue<'_>>,
        seen: &mut HashMap<String, usize>,
    ) -> Res<RawTest> {
        let header = entry.span();
        let DeValue::Table(table) = entry.get_ref() else {
            return Err(Diag::new(
                header,
                "test",
                format!(
                    "each entry of `test` must be a table, not {}",
                    found(entry.get_ref())
                ),
            )
            .help("write each test as a `[[test]]` table"));
        };
        // Name the test by its id in messages about its other keys, if the id is usable.
        let id_hint = table
            .iter()
            .find(|(key, _)| key.get_ref() == "id")
            .and_then(|(_, value)| value.get_ref().as_str())
            .filter(|id| TestId::new(*id).is_ok());
        let scope = Scope::test(number, id_hint);

        let mut id = None;
        let mut id_span = header.clone();
        let mut name = None;
        let mut command = None;
        let mut script = None;
        let mut shell_span = None;
        let mut files = Vec::new();
        let mut common = Common::default();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "id" => {
                    id = Some(self.test_id(&f, seen)?);
                    id_span = f.span();
                }
                "name" => name = Some(f.text()?.to_owned()),
                "command" => command = Some((f.command()?, f.key_span.clone())),
                "script" => script = Some((f.script()?, f.key_span.clone())),
                "files" => files = f.files(self.base_dir)?,
                _ => {
                    if f.key == "shell" {
                        shell_span = Some(f.key_span.clone());
                    }
                    if !common.read(&f, self.base_dir)? {
                        return Err(unknown_key(&scope, &f));
                    }
                }
            }
        }

        let Some(id) = id else {
            return Err(
                Diag::new(header, "test.id", format!("{} has no `id`", scope.name)).help(
                    "add a unique id made of letters, digits and `. _ - : @ +`, \
                 for example `id = \"boot-smoke\"`",
                ),
            );
        };
        let body = match (command, script) {
            (Some((_, command_span)), Some((_, script_span))) => {
                let (second, span) = if command_span.start > script_span.start {
                    ("command", command_span)
                } else {
                    ("script", script_span)
                };
                return Err(Diag::new(
                    span,
                    format!("test.{second}"),
                    format!("{} sets both `command` and `script`", scope.name),
                )
                .help(
                    "keep only one: `command` runs a program directly, \
                     `script` runs shell code",
                ));
            }
            (None, None) => {
                return Err(Diag::new(
                    header,
                    "test.command",
                    format!("{} has neither `command` nor `script`", scope.name),
                )
                .help(
                    "add `command = [\"program\", \"argument\"]` to run a program, \
                     or `script = \"...\"` to run shell code",
                ));
            }
            (Some((command, _)), None) => {
                if let Some(span) = shell_span {
                    return Err(Diag::new(
                        span,
                        "test.shell",
                        format!(
                            "`shell` {} only applies to `script`, but this test uses `command`",
                            scope.place
                        ),
                    )
                    .help("remove `shell`, or replace `command` with a `script`"));
                }
                Body::Exec(command)
            }
            (None, Some((script, _))) => Body::Script(script),
        };
        Ok(RawTest {
            id,
            id_span,
            name,
            body,
            files,
            common,
        })
    }

    fn test_id(&self, f: &Field<'_, '_>, seen: &mut HashMap<String, usize>) -> Res<TestId> {
        let text = f.string()?;
        let id = TestId::new(text).map_err(|e| {
            let full = e.to_string();
            let prefix = format!("invalid test id `{text}`: ");
            let reason = full.strip_prefix(&prefix).unwrap_or(&full);
            f.error(format!(
                "`id` {} is not a valid test id: {reason}",
                f.scope.place
            ))
            .help(format!("try `id = {}`", toml_str(&suggest_id(text))))
        })?;
        let offset = f.span().start;
        if let Some(&first) = seen.get(text) {
            return Err(f
                .error(format!(
                    "duplicate test id `{text}`: the test on line {} already uses it",
                    self.line_of(first)
                ))
                .help("give every test a unique `id`"));
        }
        seen.insert(text.to_owned(), offset);
        Ok(id)
    }

    /// Applies `defaults` to the tests and gives every architecture of a test with several its
    /// own case, checking that the ids of all the cases are still unique.
    fn expand(&self, tests: Vec<RawTest>, defaults: &Common) -> Res<Vec<TestCase>> {
        /// Which test first used an id, and for which of its architectures.
        struct First {
            line: usize,
            test: TestId,
            arch: Option<Arch>,
        }
        const HELP: &str = "give every test a unique `id`; a test with several architectures \
                            runs once on each, as `<id>@<arch>`";
        let mut seen: HashMap<TestId, First> = HashMap::new();
        let mut cases = Vec::new();
        for test in tests {
            let span = test.id_span.clone();
            let line = self.line_of(span.start);
            let raw = test.id.clone();
            for (case, arch) in test.build(defaults)? {
                if let Some(first) = seen.get(&case.id) {
                    let message = match (arch, first.arch) {
                        (Some(arch), _) => format!(
                            "test `{raw}` on {arch} gets the id `{}`, which the test on line {} \
                             already uses",
                            case.id, first.line
                        ),
                        (None, Some(first_arch)) => format!(
                            "duplicate test id `{}`: test `{}` on line {} already uses it on \
                             {first_arch}",
                            case.id, first.test, first.line
                        ),
                        (None, None) => format!(
                            "duplicate test id `{}`: the test on line {} already uses it",
                            case.id, first.line
                        ),
                    };
                    return Err(Diag::new(span, "test.id", message).help(HELP));
                }
                seen.insert(
                    case.id.clone(),
                    First {
                        line,
                        test: raw.clone(),
                        arch,
                    },
                );
                cases.push(case);
            }
        }
        Ok(cases)
    }
}

/// Turns a rejected id into one that would be accepted.
fn suggest_id(id: &str) -> String {
    let mut out = String::new();
    for c in id.chars() {
        if c.is_ascii_alphanumeric() || "._:@+".contains(c) {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
    let out: String = out.chars().take(TestId::MAX_LEN).collect();
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "my-test".to_owned()
    } else {
        out.to_owned()
    }
}

/// The keys `[defaults]` and `[[test]]` share.
#[derive(Debug, Default)]
struct Common {
    timeout: Option<Duration>,
    env: BTreeMap<String, String>,
    tags: Vec<String>,
    runner: Option<String>,
    shell: Option<Vec<String>>,
    arch: Option<Archs>,
    memory_mib: Option<u32>,
    cpus: Option<u32>,
    kernel: Option<PathBuf>,
    modules: Vec<String>,
    artifacts: Vec<String>,
    expect: Option<Expectation>,
    trace: Option<String>,
}

impl Common {
    /// Reads `f` if it is one of the shared keys; returns whether it was.
    fn read(&mut self, f: &Field<'_, '_>, base_dir: &Path) -> Res<bool> {
        match f.key {
            "timeout" => self.timeout = Some(f.duration()?),
            "env" => self.env = f.env()?,
            "tags" => self.tags = f.tags()?,
            "runner" => self.runner = Some(f.text()?.to_owned()),
            "shell" => self.shell = Some(f.argv("the interpreter and its arguments")?),
            "arch" => self.arch = Some(f.archs()?),
            "memory" => self.memory_mib = Some(f.memory_mib()?),
            "cpus" => {
                let cpus = f.integer(1, u32::MAX.into(), "a positive integer")?;
                self.cpus = Some(u32::try_from(cpus).expect("range was checked"));
            }
            "kernel" => self.kernel = Some(base_dir.join(f.text()?)),
            "modules" => self.modules = f.modules()?,
            "artifacts" => self.artifacts = f.artifacts()?,
            "expect" => self.expect = Some(f.expect()?),
            "trace" => {
                let t = f.text()?.trim().to_owned();
                if t.is_empty() {
                    return Err(f.error(format!("`trace` {} is empty", f.scope.place)).help(
                        "name a tracer (\"function\") or events (\"sched:sched_switch irq:*\")",
                    ));
                }
                self.trace = Some(t);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// What a test runs, before the shell from `[defaults]` is known.
#[derive(Debug)]
enum Body {
    Exec(Command),
    Script(String),
}

/// The `arch` of a test or of `[defaults]`.
#[derive(Clone, Debug)]
enum Archs {
    /// `arch = "aarch64"`: the test runs there, under its own id.
    One(Arch),
    /// `arch = ["x86_64", "aarch64"]`: the test runs on each, as `<id>@<arch>`.
    Each(Vec<Arch>),
}

/// A checked `[[test]]`, before `[defaults]` are applied.
#[derive(Debug)]
struct RawTest {
    id: TestId,
    /// Where the `id` value is (the `[[test]]` header if there is none).
    id_span: Range<usize>,
    name: Option<String>,
    body: Body,
    files: Vec<FileSpec>,
    common: Common,
}

impl RawTest {
    /// The test's cases with `defaults` applied: one, or one per architecture when `arch` is
    /// an array, each with the architecture it was made for.
    fn build(self, defaults: &Common) -> Res<Vec<(TestCase, Option<Arch>)>> {
        let own = self.common;
        let command = match self.body {
            Body::Exec(command) => command,
            Body::Script(body) => Command::Script {
                shell: own
                    .shell
                    .or_else(|| defaults.shell.clone())
                    .unwrap_or_else(Command::default_shell),
                body,
            },
        };
        let mut env = defaults.env.clone();
        env.extend(own.env);
        let archs = own.arch.or_else(|| defaults.arch.clone());
        let case = TestCase {
            name: self.name.clone().unwrap_or_else(|| self.id.to_string()),
            id: self.id.clone(),
            command,
            files: self.files,
            env,
            timeout: own.timeout.or(defaults.timeout).unwrap_or(DEFAULT_TIMEOUT),
            requirements: Requirements {
                arch: None,
                memory_mib: own.memory_mib.or(defaults.memory_mib),
                cpus: own.cpus.or(defaults.cpus),
                kernel: own.kernel.or_else(|| defaults.kernel.clone()),
                modules: appended(&defaults.modules, own.modules),
            },
            artifacts: appended(&defaults.artifacts, own.artifacts),
            tags: appended(&defaults.tags, own.tags),
            expect: own.expect.or(defaults.expect).unwrap_or_default(),
            runner: own.runner.or_else(|| defaults.runner.clone()),
            trace: own.trace.or_else(|| defaults.trace.clone()),
        };
        let archs = match archs {
            None => return Ok(vec![(case, None)]),
            Some(Archs::One(arch)) => {
                let mut case = case;
                case.requirements.arch = Some(arch);
                return Ok(vec![(case, None)]);
            }
            Some(Archs::Each(archs)) => archs,
        };
        // The longest id the test may have so that every architecture's fits.
        let longest = archs.iter().map(|a| a.as_str().len()).max().unwrap_or(0);
        let room = TestId::MAX_LEN - 1 - longest;
        archs
            .into_iter()
            .map(|arch| {
                let id = format!("{}@{arch}", self.id);
                let id = TestId::new(&id).map_err(|_| {
                    Diag::new(
                        self.id_span.clone(),
                        "test.id",
                        format!(
                            "test `{}` runs on several architectures, and its id on {arch}, \
                             `{id}`, is longer than {} characters",
                            self.id,
                            TestId::MAX_LEN
                        ),
                    )
                    .help(format!("shorten the id to at most {room} characters"))
                })?;
                let mut case = case.clone();
                if self.name.is_none() {
                    case.name = id.to_string();
                }
                case.id = id;
                case.requirements.arch = Some(arch);
                Ok((case, Some(arch)))
            })
            .collect()
    }
}

/// `first` followed by the entries of `then` it does not already have.
fn appended(first: &[String], then: Vec<String>) -> Vec<String> {
    let mut out = first.to_vec();
    for item in then {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// One key of a table with its value.
#[derive(Debug)]
struct Field<'a, 'i> {
    key: &'a str,
    key_span: Range<usize>,
    value: &'a Spanned<DeValue<'i>>,
    scope: &'a Scope,
}

impl<'a, 'i> Field<'a, 'i> {
    fn new(
        key: &'a Spanned<DeString<'i>>,
        value: &'a Spanned<DeValue<'i>>,
        scope: &'a Scope,
    ) -> Self {
        Field {
            key: key.get_ref(),
            key_span: key.span(),
            value,
            scope,
        }
    }

    fn get(&self) -> &'a DeValue<'i> {
        self.value.get_ref()
    }

    fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// The dotted path of the key, such as `run.parallelism`.
    fn path(&self) -> String {
        format!("{}{}", self.scope.prefix, self.key)
    }

    /// "`key` in [run]".
    fn what(&self) -> String {
        format!("`{}` {}", self.key, self.scope.place)
    }

    /// A problem with the value.
    fn error(&self, message: impl Into<String>) -> Diag {
        Diag::new(self.span(), self.path(), message)
    }

    /// A table this build of orchestrator-core leaves out: `feature` is the cargo feature that
    /// reads it.
    #[cfg(any(not(feature = "store"), not(feature = "monitor")))]
    fn feature_off(&self, feature: &str) -> Diag {
        Diag::new(
            self.key_span.clone(),
            self.path(),
            format!(
                "[{}] needs the `{feature}` feature of orchestrator-core, which this build \
                 leaves out",
                self.key
            ),
        )
        .help(format!(
            "build with the `{feature}` feature of orchestrator-core turned on (it is a \
             default feature), or remove the [{}] table",
            self.key
        ))
    }

    /// A problem with part of the value.
    fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Diag {
        Diag::new(span, self.path(), message)
    }

    fn example(&self) -> Option<&'static str> {
        example(self.scope.kind, self.key)
    }

    fn example_help(&self) -> Option<String> {
        self.example().map(|e| format!("for example: `{e}`"))
    }

    /// The value has the wrong type.
    fn wrong_type(&self, expected: &str) -> Diag {
        self.error(format!(
            "{} must be {expected}, not {}",
            self.what(),
            found(self.get())
        ))
        .maybe_help(self.example_help())
    }

    fn string(&self) -> Res<&'a str> {
        match self.get() {
            DeValue::String(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    /// A string that is not blank.
    fn text(&self) -> Res<&'a str> {
        let s = self.string()?;
        if s.trim().is_empty() {
            return Err(self
                .error(format!("{} is empty", self.what()))
                .maybe_help(self.example_help()));
        }
        Ok(s)
    }

    fn table(&self) -> Res<&'a DeTable<'i>> {
        match self.get() {
            DeValue::Table(table) => Ok(table),
            _ => Err(self.wrong_type("a table").help(match self.scope.kind {
                Kind::Top => format!(
                    "start the table with a `[{}]` line and put its keys below it",
                    self.key
                ),
                _ => self
                    .example_help()
                    .unwrap_or_else(|| "write it as `{ key = \"value\" }`".to_owned()),
            })),
        }
    }

    fn array(&self, expected: &str) -> Res<&'a DeArray<'i>> {
        match self.get() {
            DeValue::Array(array) => Ok(array),
            _ => Err(self.wrong_type(expected)),
        }
    }

    /// An array of strings, each with its span.
    fn strings(&self, expected: &str) -> Res<Vec<(&'a str, Range<usize>)>> {
        self.array(expected)?
            .iter()
            .map(|entry| match entry.get_ref() {
                DeValue::String(s) => Ok((&**s, entry.span())),
                other => Err(self
                    .error_at(
                        entry.span(),
                        format!(
                            "each entry of {} must be a string, not {}",
                            self.what(),
                            found(other)
                        ),
                    )
                    .maybe_help(self.example_help())),
            })
            .collect()
    }

    /// An integer in `min..=max`.
    fn integer(&self, min: i128, max: i128, expected: &str) -> Res<i128> {
        let n = match self.get() {
            DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| self.error(format!("{} is too large", self.what())))?,
            DeValue::String(s) if s.trim().parse::<i128>().is_ok() => {
                return Err(self.wrong_type(expected).help(format!(
                    "remove the quotes: `{} = {}`",
                    self.key,
                    s.trim()
                )));
            }
            _ => return Err(self.wrong_type(expected)),
        };
        if n < min {
            return Err(self
                .error(format!("{} must be at least {min}, not {n}", self.what()))
                .maybe_help(self.range_help()));
        }
        if n > max {
            return Err(self
                .error(format!("{} must be at most {max}, not {n}", self.what()))
                .maybe_help(self.range_help()));
        }
        Ok(n)
    }

    fn range_help(&self) -> Option<String> {
        match self.key {
            "retries" => Some(
                "retries only repeat tests that end in an infrastructure error, \
                 such as a VM that failed to start; use a number from 0 to 10"
                    .to_owned(),
            ),
            _ => self.default_help(),
        }
    }

    /// Advice to drop the key or use the example.
    fn default_help(&self) -> Option<String> {
        let example = self.example()?;
        Some(match default_note(self.scope.kind, self.key) {
            Some(note) => format!("remove the key {note}, or use for example `{example}`"),
            None => format!("for example: `{example}`"),
        })
    }

    /// A positive duration: a humantime string (`"1m 30s"`) or a number of seconds.
    fn duration(&self) -> Res<Duration> {
        const EXPECTED: &str = "a duration such as \"30s\" or a number of seconds";
        let not_positive = || {
            let value = match self.get() {
                DeValue::String(s) => toml_str(s),
                DeValue::Integer(i) => i.to_string(),
                DeValue::Float(f) => f.to_string(),
                other => found(other),
            };
            self.error(format!(
                "{} must be greater than zero, not {value}",
                self.what()
            ))
            .maybe_help(self.default_help())
        };
        let duration = match self.get() {
            DeValue::String(s) => {
                let s = s.trim();
                if s.starts_with('-') {
                    return Err(not_positive());
                }
                humantime::parse_duration(s).map_err(|e| {
                    self.error(format!("{} is not a valid duration: {e}", self.what()))
                        .help(format!(
                            "write a number followed by a unit, such as \"90s\", \"5m\", \
                             \"1h 30m\" or \"7d\", or a plain number of seconds; for example \
                             `{}`",
                            self.example().unwrap_or("timeout = \"30s\"")
                        ))
                })?
            }
            DeValue::Integer(_) => {
                let secs = self.integer(i128::MIN, u64::MAX.into(), EXPECTED)?;
                if secs <= 0 {
                    return Err(not_positive());
                }
                Duration::from_secs(u64::try_from(secs).expect("range was checked"))
            }
            DeValue::Float(f) => {
                let secs: f64 = f.as_str().parse().unwrap_or(f64::NAN);
                if secs.is_nan() || secs <= 0.0 {
                    return Err(not_positive());
                }
                Duration::try_from_secs_f64(secs)
                    .map_err(|_| self.error(format!("{} is too large", self.what())))?
            }
            _ => return Err(self.wrong_type(EXPECTED)),
        };
        if duration.is_zero() {
            return Err(not_positive());
        }
        Ok(duration)
    }

    /// A byte count: a string with a unit (`"64KiB"`) or an integer, in bytes.
    fn byte_size(&self) -> Res<usize> {
        let bytes = self.bytes()?;
        usize::try_from(bytes).map_err(|_| self.error(format!("{} is too large", self.what())))
    }

    /// A byte count of at least 1KiB: a string with a unit (`"64KiB"`) or an integer, in
    /// bytes.
    fn bytes(&self) -> Res<u64> {
        const EXPECTED: &str = "a size such as \"64KiB\" or a number of bytes";
        let bytes = match self.get() {
            DeValue::Integer(_) => u64::try_from(self.integer(0, u64::MAX.into(), EXPECTED)?)
                .expect("range was checked"),
            DeValue::String(s) => parse_size(s).map_err(|reason| {
                self.error(format!("{} is not a valid size: {reason}", self.what()))
                    .help(
                        "write a whole number with a binary unit, such as \"64KiB\" or \
                         \"1MiB\", or an integer number of bytes",
                    )
            })?,
            _ => return Err(self.wrong_type(EXPECTED)),
        };
        if bytes < 1024 {
            return Err(self
                .error(format!(
                    "{} must be at least 1KiB (1024 bytes), not {bytes} bytes",
                    self.what()
                ))
                .maybe_help(self.default_help()));
        }
        Ok(bytes)
    }

    /// `true` or `false`.
    fn boolean(&self) -> Res<bool> {
        match self.get() {
            DeValue::Boolean(b) => Ok(*b),
            DeValue::String(s) if matches!(s.trim(), "true" | "false") => Err(self
                .wrong_type("`true` or `false`")
                .help(format!("remove the quotes: `{} = {}`", self.key, s.trim()))),
            _ => Err(self.wrong_type("`true` or `false`")),
        }
    }

    /// A positive integer that fits in a `u32`.
    fn count(&self) -> Res<u32> {
        let n = self.integer(1, u32::MAX.into(), "a positive integer")?;
        Ok(u32::try_from(n).expect("range was checked"))
    }

    /// Guest memory in MiB: a string with a unit (`"512MiB"`, `"2GiB"`) or an integer, in MiB.
    fn memory_mib(&self) -> Res<u32> {
        const EXPECTED: &str = "a size such as \"512MiB\" or a number of MiB";
        let mib = match self.get() {
            DeValue::Integer(_) => self.integer(1, u32::MAX.into(), EXPECTED)?,
            DeValue::String(s) => {
                let bytes = parse_size(s).map_err(|reason| {
                    self.error(format!("{} is not a valid size: {reason}", self.what()))
                        .help(
                            "write a whole number with a binary unit, such as \"512MiB\" or \
                             \"2GiB\", or an integer number of MiB",
                        )
                })?;
                if bytes % MIB != 0 {
                    return Err(self
                        .error(format!(
                            "{} must be a whole number of MiB, not {}",
                            self.what(),
                            toml_str(s)
                        ))
                        .help("for example: `memory = \"512MiB\"`"));
                }
                i128::from(bytes / MIB)
            }
            _ => return Err(self.wrong_type(EXPECTED)),
        };
        if mib == 0 {
            return Err(self
                .error(format!("{} must be greater than zero", self.what()))
                .maybe_help(self.example_help()));
        }
        u32::try_from(mib).map_err(|_| self.error(format!("{} is too large", self.what())))
    }

    /// The settings of `[run]`.
    fn run(&self, settings: &mut PlanSettings) -> Res<()> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Run, "[run]");
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "parallelism" => {
                    let n = f.integer(1, u32::MAX.into(), "a positive integer")?;
                    settings.parallelism = Some(usize::try_from(n).expect("range was checked"));
                }
                "timeout" => settings.timeout = Some(f.duration()?),
                "retries" => {
                    let n = f.integer(0, 10, "an integer from 0 to 10")?;
                    settings.retries = u32::try_from(n).expect("range was checked");
                }
                "kill-grace" => settings.kill_grace = Some(f.duration()?),
                "output-limit" => settings.output_limit = Some(f.byte_size()?),
                _ => return Err(unknown_key(&scope, &f)),
            }
        }
        Ok(())
    }

    /// The `[qemu]` table.
    fn qemu(&self) -> Res<QemuPlan> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Qemu, "[qemu]");
        let mut qemu = QemuPlan::default();
        // Where `session` and `snapshot-reset` were turned on.
        let mut session = None;
        let mut snapshot_reset = None;
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "session" => {
                    qemu.session = f.boolean()?;
                    session = qemu.session.then(|| f.key_span.clone());
                }
                "snapshot-reset" => {
                    qemu.snapshot_reset = f.boolean()?;
                    snapshot_reset = qemu.snapshot_reset.then(|| f.key_span.clone());
                }
                "pool" => qemu.pool = Some(f.count()? as usize),
                "virtio-artifacts" => qemu.virtio_artifacts = f.boolean()?,
                "max-artifact-bytes" => qemu.max_artifact_bytes = Some(f.bytes()?),
                "max-artifact-files" => qemu.max_artifact_files = Some(f.count()? as usize),
                "serial-artifact-limit" => qemu.serial_artifact_limit = Some(f.bytes()?),
                "modules" => qemu.modules = f.modules()?,
                "accel" => qemu.accel = Some(f.accel()?),
                "profile" => qemu.profiles = f.profiles()?,
                _ => return Err(unknown_key(&scope, &f)),
            }
        }
        if let (Some(session), Some(snapshot)) = (session, snapshot_reset) {
            let (key, span) = if session.start > snapshot.start {
                ("session", session)
            } else {
                ("snapshot-reset", snapshot)
            };
            return Err(Diag::new(
                span,
                format!("qemu.{key}"),
                "`session` and `snapshot-reset` in [qemu] cannot both be on",
            )
            .help(
                "keep one: `session` runs many tests in one booted guest, `snapshot-reset` \
                 gives every test a fresh guest restored from a snapshot",
            ));
        }
        Ok(qemu)
    }

    /// The `[qemu.profile]` table: one table per architecture.
    fn profiles(&self) -> Res<BTreeMap<Arch, ProfileOverride>> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Profiles, "[qemu.profile]");
        let mut profiles = BTreeMap::new();
        // The spelling each architecture was given in, for messages.
        let mut written: BTreeMap<Arch, String> = BTreeMap::new();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            let Ok(arch) = f.key.parse::<Arch>() else {
                return Err(Diag::new(
                    f.key_span.clone(),
                    f.path(),
                    format!(
                        "`{}` in [qemu.profile.{}] is not a supported architecture",
                        f.key, f.key
                    ),
                )
                .help(arch_help(f.key)));
            };
            if let Some(first) = written.get(&arch) {
                return Err(Diag::new(
                    f.key_span.clone(),
                    f.path(),
                    format!(
                        "[qemu.profile.{}] and [qemu.profile.{first}] are both the profile \
                         of {arch}",
                        f.key
                    ),
                )
                .help("merge the two tables into one"));
            }
            let DeValue::Table(table) = f.get() else {
                return Err(f.wrong_type("a table").help(format!(
                    "put the {arch} settings under a `[qemu.profile.{}]` line, for example \
                     `memory = \"1GiB\"`",
                    f.key
                )));
            };
            written.insert(arch, f.key.to_owned());
            profiles.insert(arch, profile(table, f.key)?);
        }
        Ok(profiles)
    }

    /// The `[store]` table; `path` is resolved against `base_dir`.
    #[cfg(feature = "store")]
    fn store(&self, base_dir: &Path) -> Res<StorePlan> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Store, "[store]");
        let mut path = None;
        let mut store = StorePlan::default();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "path" => path = Some(base_dir.join(f.text()?)),
                "durability" => store.durability = f.durability()?,
                "retention" => store.retention = Some(f.retention()?),
                "remote" => store.remote = Some(f.remote_url()?),
                k if CREDENTIAL_KEYS
                    .contains(&k.to_ascii_lowercase().replace('_', "-").as_str()) =>
                {
                    return Err(f
                        .error(format!(
                            "`{k}` {}: credentials never go in a plan file",
                            scope.place
                        ))
                        .help(
                            "plans are shared and committed; give the remote store its \
                             credentials through the environment of the workers \
                             (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or \
                             their instance or container role, and remove this key",
                        ));
                }
                _ => return Err(unknown_key(&scope, &f)),
            }
        }
        let Some(path) = path else {
            return Err(
                Diag::new(self.span(), "store.path", "[store] has no `path`").help(
                    "name the directory the artifacts are kept in, relative to this plan \
                     file, for example `path = \"artifacts\"`",
                ),
            );
        };
        store.path = path;
        Ok(store)
    }

    /// `remote = "s3://bucket/prefix"`.
    #[cfg(feature = "store")]
    fn remote_url(&self) -> Res<String> {
        let text = self.string()?;
        let Some(rest) = text.strip_prefix("s3://") else {
            return Err(self
                .error(format!(
                    "`remote` {} must be an s3:// URL, not {}",
                    self.scope.place,
                    toml_str(text)
                ))
                .help(
                    "name the bucket and a prefix, for example `remote = \"s3://artifacts/ci\"`; \
                     set AWS_ENDPOINT for S3-compatible servers (Garage, MinIO, Ceph)",
                ));
        };
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.contains('@') || bucket.contains(':') {
            return Err(self
                .error(format!(
                    "`remote` {} carries credentials or a port: credentials never go in a plan file",
                    self.scope.place
                ))
                .help(
                    "write only `s3://bucket/prefix`; credentials come from the workers' \
                     environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the server from \
                     AWS_ENDPOINT",
                ));
        }
        if bucket.is_empty() {
            return Err(self
                .error(format!("`remote` {} names no bucket", self.scope.place))
                .help("for example `remote = \"s3://artifacts/ci\"`"));
        }
        Ok(text.to_owned())
    }

    fn accel(&self) -> Res<AccelChoice> {
        let text = self.string()?;
        match text {
            "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => {
                let help =
                    match suggest(&other.trim().to_ascii_lowercase(), &["auto", "kvm", "tcg"]) {
                        Some(guess) => format!("did you mean \"{guess}\"?"),
                        None => {
                            "use \"auto\" (the default: KVM when the guest's kernel runs under \
                             it on this host, TCG otherwise), \"kvm\" (KVM or an error) or \
                             \"tcg\" (emulation only)"
                                .to_owned()
                        }
                    };
                Err(self
                    .error(format!(
                        "`accel` {} must be \"auto\", \"kvm\" or \"tcg\", not {}",
                        self.scope.place,
                        toml_str(other)
                    ))
                    .help(help))
            }
        }
    }

    #[cfg(feature = "store")]
    fn durability(&self) -> Res<Durability> {
        let text = self.string()?;
        match text {
            "fsync" => Ok(Durability::Fsync),
            "relaxed" => Ok(Durability::Relaxed),
            other => {
                let help = match suggest(&other.trim().to_ascii_lowercase(), &["fsync", "relaxed"])
                {
                    Some(guess) => format!("did you mean \"{guess}\"?"),
                    None => "use \"fsync\" (the default) to sync every write to disk, or \
                             \"relaxed\" for a faster store that may lose its newest \
                             artifacts if the machine loses power"
                        .to_owned(),
                };
                Err(self
                    .error(format!(
                        "`durability` {} must be \"fsync\" or \"relaxed\", not {}",
                        self.scope.place,
                        toml_str(other)
                    ))
                    .help(help))
            }
        }
    }

    /// The `[store.retention]` table.
    #[cfg(feature = "store")]
    fn retention(&self) -> Res<RetentionPlan> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Retention, "[store.retention]");
        let mut rules = RetentionPlan::default();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "max-age" => rules.max_age = Some(f.duration()?),
                "keep-last-runs" => rules.keep_last_runs = Some(f.count()? as usize),
                "max-total-size" => rules.max_total_size = Some(f.bytes()?),
                "kind-max-age" => {
                    let scope = Scope::table(Kind::MaxAges, "`kind-max-age` of [store.retention]");
                    rules.kind_max_age = f.per_kind(&scope, |f| f.duration())?;
                }
                "kind-budgets" => {
                    let scope = Scope::table(Kind::Budgets, "`kind-budgets` of [store.retention]");
                    rules.kind_budgets = f.per_kind(&scope, |f| f.bytes())?;
                }
                "keep-failures-for" => rules.keep_failures_for = Some(f.duration()?),
                "keep-passes-for" => rules.keep_passes_for = Some(f.duration()?),
                "first-failure-after-pass" => rules.first_failure_after_pass = f.boolean()?,
                "last-passing-run" => rules.last_passing_run = f.boolean()?,
                "pin-runs" => rules.pin_runs = f.names()?,
                "pin-tags" => rules.pin_tags = f.names()?,
                _ => return Err(unknown_key(&scope, &f)),
            }
        }
        Ok(rules)
    }

    /// A table from kinds of artifact to values read by `read`, such as
    /// `{ core-dump = "7d" }`.
    #[cfg(feature = "store")]
    fn per_kind<T>(
        &self,
        scope: &Scope,
        read: impl Fn(&Field<'_, '_>) -> Res<T>,
    ) -> Res<BTreeMap<ArtifactKind, T>> {
        let table = self.table()?;
        let mut map = BTreeMap::new();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, scope);
            let Ok(kind) = f.key.parse::<ArtifactKind>() else {
                let help = match suggest(&f.key.to_ascii_lowercase().replace('_', "-"), KIND_NAMES)
                {
                    Some(kind) => format!("did you mean `{kind}`?"),
                    None => {
                        let mut list: Vec<String> =
                            KIND_NAMES.iter().map(|k| format!("`{k}`")).collect();
                        let last = list.pop().unwrap_or_default();
                        format!("the kinds are {} and {last}", list.join(", "))
                    }
                };
                return Err(Diag::new(
                    f.key_span.clone(),
                    f.path(),
                    format!("unknown kind of artifact `{}` {}", f.key, scope.place),
                )
                .help(help));
            };
            map.insert(kind, read(&f)?);
        }
        Ok(map)
    }

    /// The `[monitor]` table.
    #[cfg(feature = "monitor")]
    fn monitor(&self) -> Res<MonitorPlan> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Monitor, "[monitor]");
        let mut monitor = MonitorPlan::default();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "enabled" => monitor.enabled = f.boolean()?,
                "interval" => {
                    let interval = f.duration()?;
                    if interval < MonitorPlan::MIN_INTERVAL {
                        return Err(f
                            .error(format!(
                                "{} must be at least {}, not {}",
                                f.what(),
                                humantime::format_duration(MonitorPlan::MIN_INTERVAL),
                                humantime::format_duration(interval)
                            ))
                            .help(
                                "sampling more often costs more than it tells; remove the key \
                                 to sample every 100ms, or use for example \
                                 `interval = \"50ms\"`",
                            ));
                    }
                    monitor.interval = interval;
                }
                _ => return Err(unknown_key(&scope, &f)),
            }
        }
        Ok(monitor)
    }

    /// An array of names that are not blank (`pin-runs`, `pin-tags`).
    #[cfg(feature = "store")]
    fn names(&self) -> Res<Vec<String>> {
        let mut names = Vec::new();
        for (name, span) in self.strings("an array of strings")? {
            if name.trim().is_empty() {
                return Err(self
                    .error_at(span, format!("an entry of {} is empty", self.what()))
                    .help(format!("remove the empty entry from `{}`", self.key)));
            }
            names.push(name.to_owned());
        }
        Ok(names)
    }

    /// An array of command-line arguments, none of them blank; it may be empty.
    fn args(&self) -> Res<Vec<String>> {
        let mut args = Vec::new();
        for (arg, span) in self.strings("an array of strings")? {
            if arg.trim().is_empty() {
                return Err(self
                    .error_at(span, format!("an entry of {} is blank", self.what()))
                    .help(format!("remove the blank entry from `{}`", self.key)));
            }
            args.push(arg.to_owned());
        }
        Ok(args)
    }

    /// A program or interpreter with its arguments: a non-empty array of strings whose first
    /// entry is not blank.
    fn argv(&self, what: &str) -> Res<Vec<String>> {
        let expected = format!("an array of strings ({what})");
        let parts = match self.get() {
            DeValue::String(s) if self.key == "command" => {
                let words: Vec<String> = s.split_whitespace().map(toml_str).collect();
                return Err(self.wrong_type(&expected).help(format!(
                    "to run the program directly, write `command = [{}]`; to run the text \
                     through the shell, write `script = {}` instead",
                    words.join(", "),
                    toml_str(s)
                )));
            }
            _ => self.strings(&expected)?,
        };
        let Some((program, span)) = parts.first() else {
            return Err(self
                .error(format!("{} is empty", self.what()))
                .help(format!(
                    "give {what}, for example `{}`",
                    self.example().unwrap_or("command = [\"echo\", \"hi\"]")
                )));
        };
        if program.trim().is_empty() {
            return Err(self
                .error_at(
                    span.clone(),
                    format!(
                        "the program name (the first entry of `{}`) {} is blank",
                        self.key, self.scope.place
                    ),
                )
                .maybe_help(self.example_help()));
        }
        Ok(parts.into_iter().map(|(s, _)| s.to_owned()).collect())
    }

    fn command(&self) -> Res<Command> {
        let argv = self.argv("the program and its arguments")?;
        Ok(Command::exec(argv).expect("the program name was checked"))
    }

    fn script(&self) -> Res<String> {
        Ok(self.text()?.to_owned())
    }

    fn env(&self) -> Res<BTreeMap<String, String>> {
        let table = self.table()?;
        let mut env = BTreeMap::new();
        for (key, value) in entries(table) {
            let name: &str = key.get_ref();
            let path = format!("{}env.{name}", self.scope.prefix);
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(Diag::new(
                    key.span(),
                    path,
                    format!(
                        "`{name}` {} is not a valid environment variable name",
                        self.scope.place
                    ),
                )
                .help("names must not be empty and must not contain `=`"));
            }
            let text = match value.get_ref() {
                DeValue::String(s) => s,
                other => {
                    let diag = Diag::new(
                        value.span(),
                        path,
                        format!(
                            "environment variable `{name}` {} must be a string, not {}",
                            self.scope.place,
                            found(other)
                        ),
                    );
                    let raw = match other {
                        DeValue::Integer(i) => Some(i.to_string()),
                        DeValue::Float(f) => Some(f.to_string()),
                        DeValue::Boolean(b) => Some(b.to_string()),
                        _ => None,
                    };
                    return Err(match raw {
                        Some(raw) => diag.help(format!("quote the value: `{name} = \"{raw}\"`")),
                        None => diag.help(format!("for example: `{name} = \"value\"`")),
                    });
                }
            };
            if text.contains('\0') {
                return Err(Diag::new(
                    value.span(),
                    path,
                    format!(
                        "environment variable `{name}` {} contains a NUL character",
                        self.scope.place
                    ),
                ));
            }
            env.insert(name.to_owned(), text.to_string());
        }
        Ok(env)
    }

    fn tags(&self) -> Res<Vec<String>> {
        let mut tags = Vec::new();
        for (tag, span) in self.strings("an array of strings")? {
            if tag.trim().is_empty() {
                return Err(self
                    .error_at(
                        span,
                        format!("an entry of `tags` {} is empty", self.scope.place),
                    )
                    .help("remove the empty entry from `tags`"));
            }
            tags.push(tag.to_owned());
        }
        Ok(tags)
    }

    fn modules(&self) -> Res<Vec<String>> {
        let mut modules = Vec::new();
        for (name, span) in self.strings("an array of kernel module names")? {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return Err(self
                    .error_at(
                        span,
                        format!(
                            "`modules` entry {name:?} {} is not a kernel module name",
                            self.scope.place
                        ),
                    )
                    .help("give module names as `modprobe` takes them, for example \"virtio_console\""));
            }
            modules.push(name.replace('-', "_"));
        }
        Ok(modules)
    }

    fn artifacts(&self) -> Res<Vec<String>> {
        let mut globs = Vec::new();
        for (glob, span) in self.strings("an array of glob patterns")? {
            let problem = if glob.trim().is_empty() {
                Some(("is empty".to_owned(), "remove the empty entry".to_owned()))
            } else if glob.starts_with('/') {
                Some((
                    "is an absolute path".to_owned(),
                    "artifacts are collected from the test's working directory only: use a \
                     relative pattern such as \"*.log\", and have the test copy files from \
                     elsewhere into its working directory"
                        .to_owned(),
                ))
            } else if glob.split(['/', '\\']).any(|part| part == "..") {
                Some((
                    "reaches outside the test's working directory with `..`".to_owned(),
                    "artifacts are collected from the test's working directory only".to_owned(),
                ))
            } else {
                globset::Glob::new(glob).err().map(|e| {
                    (
                        format!("is not a valid glob pattern: {}", e.kind()),
                        "patterns use `*`, `**`, `?`, `[abc]` and `{a,b}`, \
                         for example \"*.log\" or \"logs/**/*.txt\""
                            .to_owned(),
                    )
                })
            };
            if let Some((problem, help)) = problem {
                return Err(self
                    .error_at(
                        span,
                        format!(
                            "`artifacts` entry {} {} {problem}",
                            toml_str(glob),
                            self.scope.place
                        ),
                    )
                    .help(help));
            }
            globs.push(glob.to_owned());
        }
        Ok(globs)
    }

    /// `arch`: one architecture, or an array of different ones.
    fn archs(&self) -> Res<Archs> {
        let array = match self.get() {
            DeValue::String(text) => return Ok(Archs::One(self.arch(text, self.span())?)),
            DeValue::Array(array) => array,
            _ => return Err(self.wrong_type("an architecture name or an array of them")),
        };
        if array.is_empty() {
            return Err(self
                .error(format!("{} is an empty array", self.what()))
                .help(
                    "list at least one architecture, for example \
                     `arch = [\"x86_64\", \"aarch64\"]`, or remove `arch` to run anywhere",
                ));
        }
        let mut archs: Vec<Arch> = Vec::new();
        for (text, span) in self.strings("an architecture name or an array of them")? {
            let arch = self.arch(text, span.clone())?;
            if archs.contains(&arch) {
                let alias = if text.trim() == arch.as_str() {
                    String::new()
                } else {
                    format!(" ({} is another name for it)", toml_str(text))
                };
                return Err(self
                    .error_at(span, format!("{} lists {arch} twice{alias}", self.what()))
                    .help("remove the repeated entry"));
            }
            archs.push(arch);
        }
        Ok(Archs::Each(archs))
    }

    /// One architecture name, at `span`.
    fn arch(&self, text: &str, span: Range<usize>) -> Res<Arch> {
        text.trim().parse().map_err(|_| {
            self.error_at(
                span,
                format!(
                    "`arch` {} is not a supported architecture: {}",
                    self.scope.place,
                    toml_str(text)
                ),
            )
            .help(arch_help(text))
        })
    }

    fn expect(&self) -> Res<Expectation> {
        let text = self.string()?;
        match text {
            "pass" => Ok(Expectation::Pass),
            "fail" => Ok(Expectation::Fail),
            other => {
                let lower = other.trim().to_ascii_lowercase();
                let guess = if lower.starts_with("pass") {
                    Some("pass")
                } else if lower.starts_with("fail") || lower.contains("fail") {
                    Some("fail")
                } else {
                    suggest(&lower, &["pass", "fail"])
                };
                let help = match guess {
                    Some(guess) => format!("did you mean \"{guess}\"?"),
                    None => "use \"pass\" (the default) or \"fail\" for a test that is known \
                             to fail"
                        .to_owned(),
                };
                Err(self
                    .error(format!(
                        "`expect` {} must be \"pass\" or \"fail\", not {}",
                        self.scope.place,
                        toml_str(other)
                    ))
                    .help(help))
            }
        }
    }

    /// The `files` of a test: paths, or `{ source, dest }` tables.
    fn files(&self, base_dir: &Path) -> Res<Vec<FileSpec>> {
        let array = self.array("an array of paths or `{ source, dest }` tables")?;
        let entry_scope = Scope::file_entry(self.scope);
        let mut files: Vec<FileSpec> = Vec::new();
        for entry in array.iter() {
            let (source, source_span, dest, dest_span) = match entry.get_ref() {
                DeValue::String(source) => (&**source, entry.span(), None, entry.span()),
                DeValue::Table(table) => {
                    let mut source = None;
                    let mut dest = None;
                    for (key, value) in entries(table) {
                        let f = Field::new(key, value, &entry_scope);
                        match f.key {
                            "source" => source = Some((f.text()?, f.span())),
                            "dest" => dest = Some((f.text()?, f.span())),
                            _ => return Err(unknown_key(&entry_scope, &f)),
                        }
                    }
                    let Some((source, source_span)) = source else {
                        return Err(Diag::new(
                            entry.span(),
                            "test.files.source",
                            format!("a `files` entry {} has no `source`", self.scope.place),
                        )
                        .help(
                            "name the file to copy, for example \
                             `{ source = \"data/input.txt\", dest = \"input.txt\" }`",
                        ));
                    };
                    let (dest, dest_span) = match dest {
                        Some((dest, span)) => (Some(dest), span),
                        None => (None, source_span.clone()),
                    };
                    (source, source_span, dest, dest_span)
                }
                other => {
                    return Err(self
                        .error_at(
                            entry.span(),
                            format!(
                                "each entry of `files` {} must be a path or a \
                                 `{{ source, dest }}` table, not {}",
                                self.scope.place,
                                found(other)
                            ),
                        )
                        .maybe_help(self.example_help()));
                }
            };

            if source.trim().is_empty() {
                return Err(self
                    .error_at(
                        source_span,
                        format!("a `files` source {} is empty", self.scope.place),
                    )
                    .maybe_help(self.example_help()));
            }
            let resolved = base_dir.join(source);
            if let Err(e) = fs::metadata(&resolved) {
                let diag = if e.kind() == io::ErrorKind::NotFound {
                    self.error_at(
                        source_span,
                        format!(
                            "`files` source {} {} does not exist",
                            toml_str(source),
                            self.scope.place
                        ),
                    )
                    .help(format!(
                        "looked for `{}`; relative sources are resolved against the \
                         directory of the plan file",
                        resolved.display()
                    ))
                } else {
                    self.error_at(
                        source_span,
                        format!(
                            "`files` source {} {} cannot be read: {e}",
                            toml_str(source),
                            self.scope.place
                        ),
                    )
                };
                return Err(diag);
            }

            let dest = match dest {
                Some(dest) => PathBuf::from(dest),
                None => match Path::new(source).file_name() {
                    Some(name) => PathBuf::from(name),
                    None => {
                        return Err(self
                            .error_at(
                                source_span,
                                format!(
                                    "cannot tell the file name of `files` source {} {}",
                                    toml_str(source),
                                    self.scope.place
                                ),
                            )
                            .help(format!(
                                "name the destination: `{{ source = {}, dest = \"name\" }}`",
                                toml_str(source)
                            )));
                    }
                },
            };
            let dest = self.check_dest(&dest, dest_span.clone())?;
            if files.iter().any(|f| f.dest == dest) {
                return Err(self
                    .error_at(
                        dest_span,
                        format!(
                            "two `files` entries {} are copied to `{}`",
                            self.scope.place,
                            dest.display()
                        ),
                    )
                    .help("give one of them a different `dest`"));
            }
            files.push(FileSpec {
                source: resolved,
                dest,
            });
        }
        Ok(files)
    }

    /// Checks that a `files` destination stays inside the working directory, and drops `.`
    /// components.
    fn check_dest(&self, dest: &Path, span: Range<usize>) -> Res<PathBuf> {
        let shown = toml_str(&dest.to_string_lossy());
        let mut clean = PathBuf::new();
        for component in dest.components() {
            match component {
                Component::Normal(part) => clean.push(part),
                Component::CurDir => {}
                Component::ParentDir => {
                    let inside: PathBuf = dest
                        .components()
                        .filter(|c| matches!(c, Component::Normal(_)))
                        .collect();
                    let inside = match inside.to_str() {
                        Some(name) if !name.is_empty() => name.to_owned(),
                        _ => "input.txt".to_owned(),
                    };
                    return Err(self
                        .error_at(
                            span,
                            format!(
                                "`files` destination {shown} {} leaves the test's working \
                                 directory",
                                self.scope.place
                            ),
                        )
                        .help(format!(
                            "destinations are relative to the test's working directory and \
                             must not contain `..`; for example `dest = {}`",
                            toml_str(&inside)
                        )));
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(self
                        .error_at(
                            span,
                            format!(
                                "`files` destination {shown} {} is an absolute path",
                                self.scope.place
                            ),
                        )
                        .help(format!(
                            "destinations are relative to the test's working directory, \
                             for example `dest = {}`",
                            toml_str(dest.to_string_lossy().trim_start_matches('/'))
                        )));
                }
            }
        }
        if clean.as_os_str().is_empty() {
            return Err(self
                .error_at(
                    span,
                    format!(
                        "`files` destination {shown} {} names no file",
                        self.scope.place
                    ),
                )
                .help("for example: `dest = \"input.txt\"`"));
        }
        Ok(clean)
    }
}

const ARCH_NAMES: &[&str] = &[
    "x86_64", "aarch64", "armv7", "riscv64", "amd64", "arm64", "armhf",
];

/// How to name an architecture, for a name that is not one.
fn arch_help(text: &str) -> String {
    match suggest(text.trim(), ARCH_NAMES) {
        Some(name) => format!("did you mean `{name}`?"),
        None => "use one of x86_64, aarch64, armv7 or riscv64 \
                 (the Debian names amd64, arm64 and armhf work too)"
            .to_owned(),
    }
}

/// A `[qemu.profile.<arch>]` table, `arch` as written.
fn profile(table: &DeTable<'_>, arch: &str) -> Res<ProfileOverride> {
    let scope = Scope::profile(arch);
    let mut profile = ProfileOverride::default();
    for (key, value) in entries(table) {
        let f = Field::new(key, value, &scope);
        match f.key {
            "qemu" => profile.qemu = Some(f.text()?.trim().to_owned()),
            "machine" => profile.machine = Some(f.text()?.trim().to_owned()),
            "cpu" => profile.cpu = Some(f.text()?.trim().to_owned()),
            "memory" => profile.memory_mib = Some(f.memory_mib()?),
            "cpus" => profile.cpus = Some(f.count()?),
            "display" => profile.display = Some(f.text()?.trim().to_owned()),
            "extra-args" => profile.extra_args = Some(f.args()?),
            "kernel-args" => profile.kernel_args = Some(f.args()?),
            "boot-timeout" => profile.boot_timeout = Some(f.duration()?),
            "accel" => profile.accel = Some(f.accel()?),
            _ => return Err(unknown_key(&scope, &f)),
        }
    }
    Ok(profile)
}

/// How to describe a value of the wrong type.
fn found(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => {
            let short: String = s.chars().take(40).collect();
            if short.len() < s.len() {
                format!("the string {}…", toml_str(&short))
            } else {
                format!("the string {}", toml_str(s))
            }
        }
        DeValue::Integer(i) => format!("the integer {i}"),
        DeValue::Float(f) => format!("the number {f}"),
        DeValue::Boolean(b) => format!("the boolean `{b}`"),
        DeValue::Datetime(_) => "a date-time".to_owned(),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

/// `s` as a TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A sample line for a key, used in help messages.
fn example(kind: Kind, key: &str) -> Option<&'static str> {
    Some(match (kind, key) {
        (Kind::Top, "name") => "name = \"nightly\"",
        (Kind::Run, "timeout") => "timeout = \"2h\"",
        (Kind::File, "source") => "source = \"data/input.txt\"",
        (Kind::File, "dest") => "dest = \"input.txt\"",
        (Kind::MaxAges, _) => "core-dump = \"7d\"",
        (Kind::Budgets, _) => "core-dump = \"1GiB\"",
        (Kind::Profile, "qemu") => "qemu = \"/opt/qemu/bin/qemu-system-aarch64\"",
        (Kind::Monitor, "interval") => "interval = \"100ms\"",
        (_, "name") => "name = \"Boots to a shell\"",
        (_, "parallelism") => "parallelism = 4",
        (_, "timeout") => "timeout = \"30s\"",
        (_, "retries") => "retries = 2",
        (_, "kill-grace") => "kill-grace = \"5s\"",
        (_, "output-limit") => "output-limit = \"1MiB\"",
        (_, "id") => "id = \"boot-smoke\"",
        (_, "command") => "command = [\"echo\", \"hi\"]",
        (_, "script") => "script = \"echo hi\"",
        (_, "shell") => "shell = [\"bash\", \"-e\"]",
        (_, "files") => "files = [\"data/input.txt\", { source = \"data/x\", dest = \"sub/x\" }]",
        (_, "env") => "env = { RUST_LOG = \"debug\" }",
        (_, "arch") => "arch = \"aarch64\"",
        (_, "memory") => "memory = \"512MiB\"",
        (_, "cpus") => "cpus = 2",
        (_, "kernel") => "kernel = \"images/bzImage\"",
        (_, "modules") => "modules = [\"virtio_console\"]",
        (_, "artifacts") => "artifacts = [\"*.log\"]",
        (_, "tags") => "tags = [\"smoke\"]",
        (_, "expect") => "expect = \"fail\"",
        (_, "runner") => "runner = \"process\"",
        (_, "session") => "session = true",
        (_, "snapshot-reset") => "snapshot-reset = true",
        (_, "pool") => "pool = 2",
        (_, "virtio-artifacts") => "virtio-artifacts = false",
        (_, "max-artifact-bytes") => "max-artifact-bytes = \"256MiB\"",
        (_, "max-artifact-files") => "max-artifact-files = 1000",
        (_, "serial-artifact-limit") => "serial-artifact-limit = \"4MiB\"",
        (_, "machine") => "machine = \"virt\"",
        (_, "cpu") => "cpu = \"cortex-a72\"",
        (_, "display") => "display = \"ramfb\"",
        (_, "extra-args") => "extra-args = [\"-device\", \"virtio-rng-pci\"]",
        (_, "kernel-args") => "kernel-args = [\"quiet\", \"loglevel=4\"]",
        (_, "boot-timeout") => "boot-timeout = \"60s\"",
        (_, "accel") => "accel = \"tcg\"",
        (_, "path") => "path = \"artifacts\"",
        (_, "durability") => "durability = \"relaxed\"",
        (_, "remote") => "remote = \"s3://artifacts/ci\"",
        (_, "max-age") => "max-age = \"30d\"",
        (_, "keep-last-runs") => "keep-last-runs = 10",
        (_, "max-total-size") => "max-total-size = \"20GiB\"",
        (_, "kind-max-age") => "kind-max-age = { core-dump = \"7d\" }",
        (_, "kind-budgets") => "kind-budgets = { core-dump = \"1GiB\" }",
        (_, "keep-failures-for") => "keep-failures-for = \"90d\"",
        (_, "keep-passes-for") => "keep-passes-for = \"7d\"",
        (_, "first-failure-after-pass") => "first-failure-after-pass = true",
        (_, "last-passing-run") => "last-passing-run = true",
        (_, "pin-runs") => "pin-runs = [\"nightly-2024-06-01\"]",
        (_, "pin-tags") => "pin-tags = [\"release\"]",
        (_, "enabled") => "enabled = false",
        _ => return None,
    })
}

/// What leaving a key out means, as "to ..." advice, where that is worth saying.
fn default_note(kind: Kind, key: &str) -> Option<&'static str> {
    Some(match (kind, key) {
        (Kind::Run, "timeout") => "to run without a deadline",
        (Kind::Run, "parallelism") => "to use the default",
        (Kind::Run, "kill-grace") => "to use the runner's default grace period",
        (Kind::Run, "output-limit") => "to keep the default of 1MiB per stream",
        (Kind::Defaults | Kind::Test, "timeout") => "to use the default of 60s",
        (Kind::Qemu, "pool") => "to run as many VMs at once as there are CPUs",
        (Kind::Qemu, "max-artifact-bytes") => "to keep the runner's default of 1GiB",
        (Kind::Qemu, "max-artifact-files") => "to keep the runner's default of 10000 files",
        (Kind::Qemu, "serial-artifact-limit") => "to keep the runner's default of 4MiB",
        (Kind::Profile, "boot-timeout") => "to keep the built-in boot timeout",
        _ => return None,
    })
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A key `scope` does not take.
fn unknown_key(scope: &Scope, f: &Field<'_, '_>) -> Diag {
    let key = f.key;
    let accepted = scope.kind.accepted();
    let diag = |message: String| Diag::new(f.key_span.clone(), f.path(), message);
    // A table written as a `[header]` (its span is the header, which starts before the key).
    let header = f.span().start < f.key_span.start && scope.kind == Kind::Top;
    // How to show a suggested key: as the header of its table, if the user wrote a header.
    let shown = |right: &str| match right {
        "test" if header => "`[[test]]`".to_owned(),
        "run" | "defaults" | "qemu" | "store" | "monitor" if header => format!("`[{right}]`"),
        _ => format!("`{right}`"),
    };
    let unknown = || {
        if !header {
            format!("unknown key `{key}` {}", scope.place)
        } else if matches!(f.get(), DeValue::Array(_)) {
            format!("unknown table `[[{key}]]`")
        } else {
            format!("unknown table `[{key}]`")
        }
    };

    // Right key, wrong spelling convention.
    let normalized = key.to_ascii_lowercase().replace('_', "-");
    if let Some(right) = accepted.iter().find(|k| **k == normalized) {
        let why = if key.contains('_') {
            " (keys are written with dashes, not underscores)"
        } else {
            " (keys are lowercase)"
        };
        return diag(unknown()).help(format!("did you mean {}?{why}", shown(right)));
    }

    // Right key, wrong table.
    let in_run = RUN_KEYS.contains(&normalized.as_str());
    let per_test = DEFAULTS_KEYS.contains(&normalized.as_str());
    let test_only = TEST_ONLY_KEYS.contains(&normalized.as_str());
    // Advice for a key of the runner's, the store's or the monitor's table.
    let owner = [
        (QEMU_KEYS, "[qemu]", "a setting of the QEMU runner"),
        (STORE_KEYS, "[store]", "a setting of the artifact store"),
        (RETENTION_KEYS, "[store.retention]", "a retention rule"),
        (MONITOR_KEYS, "[monitor]", "a setting of the monitor"),
    ]
    .into_iter()
    .find(|(keys, _, _)| keys.contains(&normalized.as_str()))
    .map(|(_, table, what)| format!("`{normalized}` is {what}: move it into the {table} table"));
    let machine = PROFILE_KEYS.contains(&normalized.as_str())
        && !per_test
        && !QEMU_KEYS.contains(&normalized.as_str());
    let in_profile = "a [qemu.profile.<arch>] table, such as [qemu.profile.x86_64]";
    let moved = match scope.kind {
        Kind::Top if in_run && per_test => Some(format!(
            "put `{normalized}` in [run] for a deadline on the whole run, or in [defaults] \
             to give every test its own timeout"
        )),
        Kind::Top if in_run => Some(format!(
            "`{normalized}` is a setting of the whole run: move it into the [run] table"
        )),
        Kind::Top if per_test => Some(format!(
            "`{normalized}` is a per-test setting: move it into [defaults] to apply it to \
             every test, or into a [[test]]"
        )),
        Kind::Top if test_only => Some(format!(
            "`{normalized}` belongs to a test: put a `[[test]]` line above the test's keys"
        )),
        Kind::Run if per_test => Some(format!(
            "`{normalized}` is a per-test setting: move it into [defaults] to apply it to \
             every test"
        )),
        Kind::Defaults | Kind::Test if in_run => Some(format!(
            "`{normalized}` is a setting of the whole run: move it into the [run] table"
        )),
        Kind::Top | Kind::Qemu if machine => Some(format!(
            "`{normalized}` is a setting of one architecture's virtual machine: put it in \
             {in_profile}"
        )),
        Kind::Qemu if per_test => Some(format!(
            "`{normalized}` is a per-test setting: move it into [defaults] to apply it to \
             every test, or into {in_profile} to change the machine of an architecture"
        )),
        Kind::Top
        | Kind::Run
        | Kind::Qemu
        | Kind::Profile
        | Kind::Store
        | Kind::Retention
        | Kind::Monitor
            if owner.is_some() =>
        {
            owner
        }
        Kind::Defaults if test_only => {
            return diag(format!(
                "`{key}` cannot be set in [defaults]: it is different for every test"
            ))
            .help(format!("set `{normalized}` in each [[test]] instead"));
        }
        _ => None,
    };
    if let Some(help) = moved {
        return diag(unknown()).help(help);
    }

    // A typo.
    if let Some(right) = suggest(&normalized, accepted) {
        return diag(unknown()).help(format!("did you mean {}?", shown(right)));
    }
    let mut list: Vec<String> = accepted
        .iter()
        .map(|k| match (scope.kind, *k) {
            (Kind::Top, "test") => "`[[test]]`".to_owned(),
            (Kind::Top, "run" | "defaults" | "qemu" | "store" | "monitor") => format!("`[{k}]`"),
            _ => format!("`{k}`"),
        })
        .collect();
    let last = list.pop().unwrap_or_default();
    diag(unknown()).help(format!(
        "the keys accepted {} are {} and {last}",
        scope.place,
        list.join(", ")
    ))
}

/// Parses `"64KiB"`, `"1 MiB"` or `"2G"` into bytes. Units are binary; a unit is required.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(format!("{} does not start with a number", toml_str(text)));
    }
    let unit = unit.trim();
    if unit.starts_with(['.', ',']) {
        return Err("only whole numbers are accepted".to_owned());
    }
    let number: u64 = number
        .parse()
        .map_err(|_| "the number is too large".to_owned())?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => return Err(format!("{} has no unit", toml_str(text))),
        "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "`{unit}` is ambiguous (powers of 1000 or of 1024?)"
            ));
        }
        _ => return Err(format!("`{unit}` is not a unit of size")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| "the number is too large".to_owned())
}

/// Describes a TOML syntax error in the words of a plan.
fn syntax_error(text: &str, err: &toml::de::Error) -> Diag {
    let span = err.span().unwrap_or(0..0);
    let start = span.start.min(text.len());
    let message = err.message().lines().next().unwrap_or("").trim();
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let header = line.trim_start().starts_with('[');
    // The key whose value is malformed: the error is right of `key =` on its line.
    let key = line.split_once('=').and_then(|(lhs, _)| {
        let lhs = lhs.trim();
        let is_key = !header
            && !lhs.is_empty()
            && lhs
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.\"' ".contains(c));
        (is_key && start > line_start + line.find('=')?).then(|| lhs.to_owned())
    });

    let mut diag = Diag {
        span: span.clone(),
        syntax: true,
        key: key.clone(),
        message: String::new(),
        help: None,
    };
    if message == "duplicate key" {
        let dup = text
            .get(span.clone())
            .unwrap_or("")
            .trim_matches(['"', '\''])
            .to_owned();
        diag.key = Some(dup.clone());
        let table = line
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim();
        if header && line.trim_start().starts_with("[[") {
            diag.message =
                format!("`[[{table}]]` cannot add to `{dup}`, which is already defined as a value");
            diag.help = Some(format!(
                "write every entry as a `[[{table}]]` table, or every entry in the array value, \
                 not both"
            ));
        } else if header {
            diag.message = format!("table `[{table}]` is defined more than once");
            diag.help = Some("merge the two tables into one".to_owned());
        } else {
            diag.message = format!("duplicate key `{dup}`: a key may appear only once per table");
            let in_test = text[..line_start]
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('['))
                .is_some_and(|l| l.trim() == "[[test]]");
            diag.help = Some(if in_test {
                "remove one of them; if it belongs to another test, start that test with its own \
                 `[[test]]` line"
                    .to_owned()
            } else {
                "remove one of them".to_owned()
            });
        }
        return diag;
    }

    diag.message = match &key {
        Some(key) => format!("invalid TOML in the value of `{key}`: {message}"),
        None => format!("invalid TOML: {message}"),
    };
    let example_key = key.as_deref().unwrap_or("key");
    diag.help = if message.contains("must be quoted") {
        Some(format!(
            "put text in double quotes, for example `{example_key} = \"value\"`"
        ))
    } else if message.contains("basic string") || message.contains("literal string") {
        Some(
            "end the string with a matching quote on the same line; for text over several \
             lines use triple quotes (\"\"\")"
                .to_owned(),
        )
    } else if message.contains("unclosed array") {
        Some("end the array with `]`, and separate its entries with commas".to_owned())
    } else if message.contains("unclosed table") || message.contains("table header") {
        Some("table headers look like `[run]`, `[defaults]` or `[[test]]`".to_owned())
    } else {
        None
    };
    diag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("10b"), Ok(10));
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("512MB").unwrap_err().contains("ambiguous"));
        assert!(parse_size("512").unwrap_err().contains("no unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert!(parse_size("20000000TiB").is_err());
    }

    #[test]
    fn suggested_ids_are_valid() {
        for bad in ["my test", "-lead", "a/b/c", "??", "é", &"x y".repeat(100)] {
            let id = suggest_id(bad);
            assert!(TestId::new(&id).is_ok(), "{bad:?} -> {id:?}");
        }
        assert_eq!(suggest_id("my test"), "my-test");
        assert_eq!(suggest_id("../boot"), "boot");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("timout", TEST_KEYS), Some("timeout"));
        assert_eq!(suggest("paralelism", RUN_KEYS), Some("parallelism"));
        assert_eq!(suggest("zzz", TEST_KEYS), None);
    }

    #[test]
    fn kind_names_are_those_of_the_store() {
        let names: Vec<&str> = ArtifactKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, KIND_NAMES);
    }

    #[test]
    fn toml_strings() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
