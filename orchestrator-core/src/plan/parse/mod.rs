//! Turns the TOML tree of a plan into test cases, checking every key and value on the way.
//!
//! The document is read with [`DeTable`], which keeps the byte span of every key and value.
//! Each table is declared with [`plan_table!`](crate::plan_table): a serde-derived struct
//! whose fields are its keys, each with its value type, example line and default note in one
//! place. A table is read one key at a time, in file order ([`Table::read_with`]): an unknown
//! key gets the did-you-mean advice, a value is deserialized into its value type
//! ([`Count`], [`Seconds`], [`Size`], [`Flag`], [`Text`]) whose [`value::Problem`] is worded
//! for its key and table ("`timeout` in test `boot` must be greater than zero"), and keys
//! whose values need more than a value type ([`ByHand`]: commands, files, env, sub-tables)
//! are read by hand with the [`Field`] getters as they are met. So the first problem reported
//! is the first one in the file, and the messages are those of the hand walk this replaced.
//!
//! - `schema.rs`: [`plan_table!`](crate::plan_table);
//! - `field.rs`: the located-table reader ([`Field`], [`Table`]) with the typed getters and
//!   the unknown-key advice, which sections of runner crates use too;
//! - `value.rs`: the value checks shared by the getters and the value types, and reading a
//!   derived table;
//! - `tables.rs`: `[run]`, `[store]` (with `[store.retention]`) and `[monitor]`;
//! - `test.rs`: the values of `[[test]]` and `[defaults]` (commands, files, env, arch...);
//! - `syntax.rs`: TOML syntax errors in the words of a plan.

mod field;
mod schema;
mod syntax;
mod tables;
mod test;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::PlanSettings;
use super::section::{Registered, Sections};
use crate::case::{
    Arch, Command, DEFAULT_TIMEOUT, Expectation, FileSpec, Requirements, TestCase, TestId,
};
pub use field::{Diag, Field, Table, arch_help};
use field::{Kind, Res, Scope, entries, found, toml_str};
#[cfg(test)]
use field::{parse_size, suggest};
pub use value::{ByHand, Count, Flag, Seconds, Size, Text, U32_MAX};

/// What a valid plan document holds, before it is wrapped in a [`super::Plan`].
#[derive(Debug)]
pub(super) struct Parsed {
    pub(super) name: Option<String>,
    pub(super) settings: PlanSettings,
    pub(super) sections: Sections,
    pub(super) cases: Vec<TestCase>,
}

/// Reads a whole plan document, with the tables of `sections`.
pub(super) fn document(text: &str, base_dir: &Path, sections: &[Registered]) -> Res<Parsed> {
    let root = DeTable::parse(text).map_err(|e| syntax::syntax_error(text, &e))?;
    let scope = Scope::top(Arc::from(sections));
    fn find<'a, 'i>(table: &'a DeTable<'i>, key: &str) -> Option<&'a DeValue<'i>> {
        table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v.get_ref())
    }
    let defaults_kunit = match find(root.get_ref(), "defaults") {
        Some(DeValue::Table(defaults)) => {
            matches!(find(defaults, "kunit"), Some(DeValue::Boolean(true)))
        }
        _ => false,
    };
    let parser = Parser {
        text,
        base_dir,
        top: &scope,
        defaults_kunit,
    };
    let mut name = None;
    let mut settings = PlanSettings::default();
    let mut read = Sections::default();
    let mut defaults = Common::default();
    let mut tests = None;
    for (key, value) in entries(root.get_ref()) {
        let f = Field::new(key, value, &scope);
        match f.key {
            "name" => name = Some(f.text()?.to_owned()),
            "run" => f.run(&mut settings)?,
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
            key => match sections.iter().find(|s| s.name == key) {
                Some(section) => {
                    let table = f.table(&format!("[{key}]"), &format!("{key}."), section.keys)?;
                    read.insert(section.name, (section.read)(&table)?);
                }
                None => return Err(f.unknown_key()),
            },
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
        sections: read,
        cases,
    })
}

// The tables of tests, declared key by key (the top level's keys are in `Scope::accepted`).
crate::plan_table! {
    /// The `[defaults]` table: the keys every test may set, which apply to every test that
    /// does not. The values are read by hand ([`Common::read`]), as they are met.
    struct DefaultsTable {
        "timeout" timeout: Seconds = "timeout = \"30s\"" ("to use the default of 60s"),
        "env" env: ByHand = "env = { RUST_LOG = \"debug\" }",
        "tags" tags: ByHand = "tags = [\"smoke\"]",
        "runner" runner: Text = "runner = \"process\"",
        "shell" shell: ByHand = "shell = [\"bash\", \"-e\"]",
        "arch" arch: ByHand = "arch = \"aarch64\"",
        "memory" memory: ByHand = "memory = \"512MiB\"",
        "cpus" cpus: Count<1, U32_MAX> = "cpus = 2",
        "kernel" kernel: Text = "kernel = \"images/bzImage\"",
        "modules-dir" modules_dir: Text = "modules-dir = \"build/modules\"",
        "modules" modules: ByHand = "modules = [\"virtio_console\"]",
        "artifacts" artifacts: ByHand = "artifacts = [\"*.log\"]",
        "expect" expect: ByHand = "expect = \"fail\"",
        "trace" trace: ByHand,
        "vmcore" vmcore: Flag = "vmcore = true",
        "rootfs" rootfs: Text = "rootfs = \"rootfs/bookworm-arm64\"",
        "kunit" kunit: Flag = "kunit = true",
        "kernel-args" kernel_args: ByHand = "kernel-args = [\"kunit.filter_glob=list*\"]",
        "isolated" isolated: Flag = "isolated = true",
    }
}

crate::plan_table! {
    /// A `[[test]]` table: the keys of `[defaults]` and those of one test only (`id`, `name`,
    /// `command`, `script`, `files`).
    struct TestTable {
        "id" id: ByHand = "id = \"boot-smoke\"",
        "name" name: Text = "name = \"Boots to a shell\"",
        "command" command: ByHand = "command = [\"echo\", \"hi\"]",
        "script" script: ByHand = "script = \"echo hi\"",
        "shell" shell: ByHand = "shell = [\"bash\", \"-e\"]",
        "files" files: ByHand = "files = [\"data/input.txt\", { source = \"data/x\", dest = \"sub/x\" }]",
        "env" env: ByHand = "env = { RUST_LOG = \"debug\" }",
        "timeout" timeout: Seconds = "timeout = \"30s\"" ("to use the default of 60s"),
        "arch" arch: ByHand = "arch = \"aarch64\"",
        "memory" memory: ByHand = "memory = \"512MiB\"",
        "cpus" cpus: Count<1, U32_MAX> = "cpus = 2",
        "kernel" kernel: Text = "kernel = \"images/bzImage\"",
        "modules-dir" modules_dir: Text = "modules-dir = \"build/modules\"",
        "modules" modules: ByHand = "modules = [\"virtio_console\"]",
        "artifacts" artifacts: ByHand = "artifacts = [\"*.log\"]",
        "tags" tags: ByHand = "tags = [\"smoke\"]",
        "expect" expect: ByHand = "expect = \"fail\"",
        "runner" runner: Text = "runner = \"process\"",
        "trace" trace: ByHand,
        "vmcore" vmcore: Flag = "vmcore = true",
        "rootfs" rootfs: Text = "rootfs = \"rootfs/bookworm-arm64\"",
        "kunit" kunit: Flag = "kunit = true",
        "kernel-args" kernel_args: ByHand = "kernel-args = [\"kunit.filter_glob=list*\"]",
        "isolated" isolated: Flag = "isolated = true",
    }
}

crate::plan_table! {
    /// A `{ source, dest }` entry of `files`.
    struct FileTable {
        "source" source: ByHand = "source = \"data/input.txt\"",
        "dest" dest: ByHand = "dest = \"input.txt\"",
    }
}

/// Whether `key` is a key of `[[test]]` that `[defaults]` does not take.
fn test_only(key: &str) -> bool {
    Kind::Test.keys().contains(&key) && !Kind::Defaults.keys().contains(&key)
}
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
/// The names of the kinds of artifact, as in [`ArtifactKind::as_str`].
const KIND_NAMES: &[&str] = &[
    "log",
    "console",
    "core-dump",
    "trace",
    "screenshot",
    "metrics",
    "other",
    "result",
    "report",
];

const MIB: u64 = 1 << 20;

/// Every key of every table of the core.
#[cfg(test)]
pub(super) fn all_keys() -> impl Iterator<Item = &'static str> {
    [
        &["name", "run", "defaults", "store", "monitor", "test"][..],
        Kind::Run.keys(),
        Kind::Defaults.keys(),
        Kind::Test.keys(),
        Kind::File.keys(),
        Kind::Store.keys(),
        Kind::Retention.keys(),
        Kind::Monitor.keys(),
    ]
    .into_iter()
    .flatten()
    .copied()
}

/// Context shared while reading one document.
#[derive(Debug)]
struct Parser<'t> {
    text: &'t str,
    base_dir: &'t Path,
    /// The top level, whose tables' scopes are made from it.
    top: &'t Scope,
    /// Whether `[defaults]` says `kunit = true` (wherever it is in the file).
    defaults_kunit: bool,
}

impl Parser<'_> {
    fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .matches('\n')
            .count()
            + 1
    }

    fn defaults(&self, f: &Field<'_, '_>) -> Res<Common> {
        let table = f.child(Kind::Defaults, "[defaults]")?;
        let mut common = Common::default();
        let read = table.read_with(|f, known: Option<&DefaultsTable>| {
            if known.is_some() {
                common.read(f)?;
            }
            Ok(())
        })?;
        common.typed(
            read.timeout,
            read.runner,
            read.cpus,
            read.kernel,
            self.base_dir,
        );
        common.vmcore = read.vmcore.map(|Flag(on)| on);
        common.modules_dir = read.modules_dir.map(|Text(dir)| self.base_dir.join(dir));
        common.rootfs = read.rootfs.map(|Text(p)| self.base_dir.join(p));
        common.kunit = read.kunit.map(|Flag(on)| on);
        common.isolated = read.isolated.map(|Flag(on)| on);
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
        let scope = self.top.test(number, id_hint);

        let mut id = None;
        let mut id_span = header.clone();
        let mut command = None;
        let mut script = None;
        let mut shell_span = None;
        let mut files = Vec::new();
        let mut common = Common::default();
        let read = Table::new(table, header.clone(), scope.clone()).read_with(
            |f, known: Option<&TestTable>| {
                if known.is_none() {
                    return Ok(());
                }
                match f.key {
                    "id" => {
                        id = Some(self.test_id(f, seen)?);
                        id_span = f.span();
                    }
                    "command" => command = Some((f.command()?, f.key_span.clone())),
                    "script" => script = Some((f.script()?, f.key_span.clone())),
                    "files" => files = f.files(self.base_dir)?,
                    _ => {
                        if f.key == "shell" {
                            shell_span = Some(f.key_span.clone());
                        }
                        common.read(f)?;
                    }
                }
                Ok(())
            },
        )?;

        common.typed(
            read.timeout,
            read.runner,
            read.cpus,
            read.kernel,
            self.base_dir,
        );
        common.vmcore = read.vmcore.map(|Flag(on)| on);
        common.modules_dir = read.modules_dir.map(|Text(dir)| self.base_dir.join(dir));
        common.rootfs = read.rootfs.map(|Text(p)| self.base_dir.join(p));
        common.kunit = read.kunit.map(|Flag(on)| on);
        common.isolated = read.isolated.map(|Flag(on)| on);
        let name = read.name.map(|Text(name)| name);
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
                let missing = Diag::new(
                    header,
                    "test.command",
                    format!("{} has neither `command` nor `script`", scope.name),
                )
                .help(
                    "add `command = [\"program\", \"argument\"]` to run a program, \
                     or `script = \"...\"` to run shell code",
                );
                // A test of the kernel's own tests needs none (`kunit`, its own or from
                // [defaults], which may come later in the file).
                if !common.kunit.unwrap_or(self.defaults_kunit) {
                    return Err(missing);
                }
                Body::Nothing
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
    /// `modules-dir`, resolved against the plan's directory.
    modules_dir: Option<PathBuf>,
    modules: Vec<String>,
    artifacts: Vec<String>,
    expect: Option<Expectation>,
    trace: Option<String>,
    vmcore: Option<bool>,
    rootfs: Option<PathBuf>,
    kunit: Option<bool>,
    kernel_args: Vec<String>,
    isolated: Option<bool>,
}

impl Common {
    /// Takes the shared keys with value types, as read into `[defaults]` or a `[[test]]`.
    fn typed(
        &mut self,
        timeout: Option<Seconds>,
        runner: Option<Text>,
        cpus: Option<Count<1, U32_MAX>>,
        kernel: Option<Text>,
        base_dir: &Path,
    ) {
        self.timeout = timeout.map(|Seconds(timeout)| timeout);
        self.runner = runner.map(|Text(runner)| runner);
        self.cpus = cpus.map(|Count(n)| u32::try_from(n).expect("range was checked"));
        self.kernel = kernel.map(|Text(kernel)| base_dir.join(kernel));
    }

    /// Reads `f`, one of the shared keys read by hand.
    fn read(&mut self, f: &Field<'_, '_>) -> Res<()> {
        match f.key {
            "env" => self.env = f.env()?,
            "tags" => self.tags = f.tags()?,
            "shell" => self.shell = Some(f.argv("the interpreter and its arguments")?),
            "arch" => self.arch = Some(f.archs()?),
            "memory" => self.memory_mib = Some(f.memory_mib()?),
            "modules" => self.modules = f.modules()?,
            "kernel-args" => self.kernel_args = f.args()?,
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
            // The other keys have value types: see `Common::typed`.
            _ => {}
        }
        Ok(())
    }
}

/// What a test runs, before the shell from `[defaults]` is known.
#[derive(Debug)]
enum Body {
    Exec(Command),
    Script(String),
    /// Neither `command` nor `script`: a test of the kernel's own tests (`kunit = true`) runs
    /// nothing but its modules.
    Nothing,
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
        let kunit = own.kunit.or(defaults.kunit).unwrap_or(false);
        let command = match self.body {
            // Nothing to run: the modules load, the kernel log is judged.
            Body::Nothing => Command::script(""),
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
                modules_dir: own.modules_dir.or_else(|| defaults.modules_dir.clone()),
                modules: appended(&defaults.modules, own.modules),
                vmcore: own.vmcore.or(defaults.vmcore).unwrap_or(false),
                rootfs: own.rootfs.or_else(|| defaults.rootfs.clone()),
                kunit,
                kernel_args: [defaults.kernel_args.clone(), own.kernel_args].concat(),
                isolated: own.isolated.or(defaults.isolated).unwrap_or(false),
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

#[cfg(test)]
mod tests {
    #[cfg(feature = "store")]
    use artifact_store::ArtifactKind;

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
        assert_eq!(suggest("timout", Kind::Test.keys()), Some("timeout"));
        assert_eq!(suggest("paralelism", Kind::Run.keys()), Some("parallelism"));
        assert_eq!(suggest("zzz", Kind::Test.keys()), None);
    }

    #[test]
    #[cfg(feature = "store")]
    fn kind_names_are_those_of_the_store() {
        let names: Vec<&str> = ArtifactKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, KIND_NAMES);
    }

    #[test]
    fn toml_strings() {
        assert_eq!(toml_str("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
    }
}
