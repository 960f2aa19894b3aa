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

use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use super::PlanSettings;
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
            "run" => settings = f.run()?,
            "defaults" => defaults = parser.defaults(&f)?,
            "test" => tests = Some(parser.tests(&f)?),
            _ => return Err(unknown_key(&scope, &f)),
        }
    }
    let Some(tests) = tests else {
        return Err(Diag::new(0..0, "test", "the plan defines no tests")
            .help("add at least one `[[test]]` table with an `id` and a `command` or `script`"));
    };
    Ok(Parsed {
        name,
        settings,
        cases: tests.into_iter().map(|t| t.build(&defaults)).collect(),
    })
}

/// The keys of each kind of table.
const TOP_KEYS: &[&str] = &["name", "run", "defaults", "test"];
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

const MIB: u64 = 1 << 20;

/// Every key of every table.
#[cfg(test)]
pub(super) fn all_keys() -> impl Iterator<Item = &'static str> {
    [TOP_KEYS, RUN_KEYS, DEFAULTS_KEYS, TEST_KEYS, FILE_KEYS]
        .into_iter()
        .flatten()
        .copied()
}

/// The kinds of table in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Top,
    Run,
    Defaults,
    Test,
    File,
}

impl Kind {
    fn accepted(self) -> &'static [&'static str] {
        match self {
            Kind::Top => TOP_KEYS,
            Kind::Run => RUN_KEYS,
            Kind::Defaults => DEFAULTS_KEYS,
            Kind::Test => TEST_KEYS,
            Kind::File => FILE_KEYS,
        }
    }

    /// The start of the dotted path of this table's keys.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Top => "",
            Kind::Run => "run.",
            Kind::Defaults => "defaults.",
            Kind::Test => "test.",
            Kind::File => "test.files.",
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
}

impl Scope {
    fn top() -> Self {
        Scope {
            kind: Kind::Top,
            name: "the top level".to_owned(),
            place: "at the top level of the plan".to_owned(),
        }
    }

    fn table(kind: Kind, name: &str) -> Self {
        Scope {
            kind,
            name: name.to_owned(),
            place: format!("in {name}"),
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
        let mut name = None;
        let mut command = None;
        let mut script = None;
        let mut shell_span = None;
        let mut files = Vec::new();
        let mut common = Common::default();
        for (key, value) in entries(table) {
            let f = Field::new(key, value, &scope);
            match f.key {
                "id" => id = Some(self.test_id(&f, seen)?),
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
    arch: Option<Arch>,
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
            "arch" => self.arch = Some(f.arch()?),
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

/// A checked `[[test]]`, before `[defaults]` are applied.
#[derive(Debug)]
struct RawTest {
    id: TestId,
    name: Option<String>,
    body: Body,
    files: Vec<FileSpec>,
    common: Common,
}

impl RawTest {
    fn build(self, defaults: &Common) -> TestCase {
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
        TestCase {
            name: self.name.unwrap_or_else(|| self.id.to_string()),
            id: self.id,
            command,
            files: self.files,
            env,
            timeout: own.timeout.or(defaults.timeout).unwrap_or(DEFAULT_TIMEOUT),
            requirements: Requirements {
                arch: own.arch.or(defaults.arch),
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
        }
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
        format!("{}{}", self.scope.kind.prefix(), self.key)
    }

    /// "`key` in [run]".
    fn what(&self) -> String {
        format!("`{}` {}", self.key, self.scope.place)
    }

    /// A problem with the value.
    fn error(&self, message: impl Into<String>) -> Diag {
        Diag::new(self.span(), self.path(), message)
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
                            "write a number followed by a unit, such as \"90s\", \"5m\" \
                             or \"1h 30m\", or a plain number of seconds; for example `{}`",
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
        const EXPECTED: &str = "a size such as \"64KiB\" or a number of bytes";
        let bytes = match self.get() {
            DeValue::Integer(_) => u64::try_from(self.integer(0, usize::MAX as i128, EXPECTED)?)
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
        usize::try_from(bytes).map_err(|_| self.error(format!("{} is too large", self.what())))
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
    fn run(&self) -> Res<PlanSettings> {
        let table = self.table()?;
        let scope = Scope::table(Kind::Run, "[run]");
        let mut settings = PlanSettings::default();
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
        Ok(settings)
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
            let path = format!("{}env.{name}", self.scope.kind.prefix());
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

    fn arch(&self) -> Res<Arch> {
        let text = self.string()?;
        text.trim().parse().map_err(|_| {
            let help = match suggest(text.trim(), ARCH_NAMES) {
                Some(name) => format!("did you mean `{name}`?"),
                None => "use one of x86_64, aarch64, armv7 or riscv64 \
                         (the Debian names amd64, arm64 and armhf work too)"
                    .to_owned(),
            };
            self.error(format!(
                "`arch` {} is not a supported architecture: {}",
                self.scope.place,
                toml_str(text)
            ))
            .help(help)
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
        "run" | "defaults" if header => format!("`[{right}]`"),
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
            (Kind::Top, "run" | "defaults") => format!("`[{k}]`"),
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
    fn toml_strings() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
