//! The located-table reader: one key of a plan table with its value ([`Field`]), the typed
//! getters every table shares (strings, durations, sizes, counts, booleans...), and the
//! messages they give. Runner crates read their own tables with it through
//! [`Section`](crate::plan::Section), so that every plan table checks its values alike.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeString, DeTable, DeValue};

use super::tables::{MonitorTable, RetentionTable, RunTable, StoreTable};
use super::value::{self, keys_of};
use super::{DefaultsTable, FileTable, KIND_NAMES, MIB, TestTable, test_only};
use crate::plan::section::{Key, Registered};

/// A problem found at a byte range of the plan text: what [`Section::read`] returns when its
/// table is wrong. [`load`](crate::plan::load) turns it into a [`PlanError`] with the file,
/// line and column of the span.
///
/// [`Section::read`]: crate::plan::Section::read
/// [`PlanError`]: crate::plan::PlanError
#[derive(Debug)]
pub struct Diag {
    pub(in crate::plan) span: Range<usize>,
    /// Whether the text is not even valid TOML.
    pub(in crate::plan) syntax: bool,
    pub(in crate::plan) key: Option<String>,
    pub(in crate::plan) message: String,
    pub(in crate::plan) help: Option<String>,
}

impl Diag {
    /// A problem at byte range `span` of the plan, about `key` (a dotted path such as
    /// `qemu.pool`, see [`Field::path`]).
    pub fn new(span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Diag {
            span,
            syntax: false,
            key: Some(key.into()),
            message: message.into(),
            help: None,
        }
    }

    /// The same problem, with advice on how to fix it.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// What is wrong.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(super) fn maybe_help(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
}

pub(super) type Res<T> = Result<T, Diag>;

/// The kinds of table in a plan. (Without the `store` or `monitor` feature, their tables are
/// refused before they are read, yet their keys still serve the did-you-mean advice.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(all(feature = "store", feature = "monitor")), allow(dead_code))]
pub(super) enum Kind {
    Top,
    Run,
    Defaults,
    Test,
    File,
    Store,
    Retention,
    /// `kind-max-age` in `[store.retention]`, whose keys are kinds of artifact.
    MaxAges,
    /// `kind-budgets` in `[store.retention]`, whose keys are kinds of artifact.
    Budgets,
    Monitor,
    /// A table read by a [`Section`](crate::plan::Section), or one of its sub-tables.
    Section,
}

impl Kind {
    /// The keys of a table of the core.
    pub(super) fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Top | Kind::Section => &[],
            Kind::Run => keys_of::<RunTable>(),
            Kind::Defaults => keys_of::<DefaultsTable>(),
            Kind::Test => keys_of::<TestTable>(),
            Kind::File => keys_of::<FileTable>(),
            Kind::Store => keys_of::<StoreTable>(),
            Kind::Retention => keys_of::<RetentionTable>(),
            Kind::MaxAges | Kind::Budgets => KIND_NAMES,
            Kind::Monitor => keys_of::<MonitorTable>(),
        }
    }

    /// What help messages say about `key` of a derived table of the core.
    fn doc(self, key: &str) -> Option<&'static Key> {
        let keys: &[Key] = match self {
            Kind::Top | Kind::Section | Kind::MaxAges | Kind::Budgets => &[],
            Kind::Run => RunTable::KEYS,
            Kind::Defaults => DefaultsTable::KEYS,
            Kind::Test => TestTable::KEYS,
            Kind::File => FileTable::KEYS,
            Kind::Store => StoreTable::KEYS,
            Kind::Retention => RetentionTable::KEYS,
            Kind::Monitor => MonitorTable::KEYS,
        };
        keys.iter().find(|k| k.name == key)
    }

    /// The start of the dotted path of this table's keys.
    fn prefix(self) -> &'static str {
        match self {
            Kind::Top | Kind::Section => "",
            Kind::Run => "run.",
            Kind::Defaults => "defaults.",
            Kind::Test => "test.",
            Kind::File => "test.files.",
            Kind::Store => "store.",
            Kind::Retention => "store.retention.",
            Kind::MaxAges => "store.retention.kind-max-age.",
            Kind::Budgets => "store.retention.kind-budgets.",
            Kind::Monitor => "monitor.",
        }
    }
}

/// The tables of the core written as a `[header]`.
const CORE_TABLES: &[&str] = &["run", "defaults", "store", "monitor"];

/// The table a key is in, for messages.
#[derive(Clone, Debug)]
pub(super) struct Scope {
    pub(super) kind: Kind,
    /// What the table is called: "[run]", "test `boot`", "test #3".
    pub(super) name: String,
    /// Where a key of it is: "in [run]", "at the top level of the plan".
    pub(super) place: String,
    /// The start of the dotted path of its keys: "run.", "qemu.profile.arm64.".
    pub(super) prefix: String,
    /// The keys of a section's table.
    keys: &'static [Key],
    /// The sections the plan is read with.
    sections: Arc<[Registered]>,
}

impl Scope {
    pub(super) fn top(sections: Arc<[Registered]>) -> Self {
        Scope {
            kind: Kind::Top,
            name: "the top level".to_owned(),
            place: "at the top level of the plan".to_owned(),
            prefix: String::new(),
            keys: &[],
            sections,
        }
    }

    /// A table of the core in this one.
    pub(super) fn child(&self, kind: Kind, name: &str) -> Self {
        Scope {
            kind,
            name: name.to_owned(),
            place: format!("in {name}"),
            prefix: kind.prefix().to_owned(),
            keys: &[],
            sections: self.sections.clone(),
        }
    }

    /// A section's table (or a table in it) named `name`, its keys' paths starting with
    /// `prefix`.
    fn section(&self, name: &str, prefix: &str, keys: &'static [Key]) -> Self {
        Scope {
            prefix: prefix.to_owned(),
            keys,
            ..self.child(Kind::Section, name)
        }
    }

    pub(super) fn test(&self, number: usize, id: Option<&str>) -> Self {
        let name = match id {
            Some(id) => format!("test `{id}`"),
            None => format!("test #{number}"),
        };
        self.child(Kind::Test, &name)
    }

    pub(super) fn file_entry(&self) -> Self {
        self.child(Kind::File, &format!("a `files` entry of {}", self.name))
    }

    /// The keys the table takes, in the order messages list them.
    fn accepted(&self) -> Vec<&'static str> {
        match self.kind {
            Kind::Top => {
                let mut keys = vec!["name", "run", "defaults"];
                keys.extend(self.sections.iter().map(|s| s.name));
                keys.extend(["store", "monitor", "test"]);
                keys
            }
            Kind::Section => self.keys.iter().map(|k| k.name).collect(),
            kind => kind.keys().to_vec(),
        }
    }

    /// Whether `key` names a table at the top level (written as `[key]`).
    fn is_table(&self, key: &str) -> bool {
        CORE_TABLES.contains(&key) || self.sections.iter().any(|s| s.name == key)
    }

    /// The declaration of `key` in a section's table.
    fn key(&self, key: &str) -> Option<&'static Key> {
        self.keys.iter().find(|k| k.name == key)
    }
}

/// The entries of a table in the order they appear in the file.
pub(super) fn entries<'a, 'i>(
    table: &'a DeTable<'i>,
) -> Vec<(&'a Spanned<DeString<'i>>, &'a Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// A table of a plan with the location of every key and value, as handed to
/// [`Section::read`](crate::plan::Section::read).
#[derive(Debug)]
pub struct Table<'a, 'i> {
    table: &'a DeTable<'i>,
    span: Range<usize>,
    scope: Scope,
}

impl<'a, 'i> Table<'a, 'i> {
    pub(super) fn new(table: &'a DeTable<'i>, span: Range<usize>, scope: Scope) -> Self {
        Table { table, span, scope }
    }

    pub(super) fn de_table(&self) -> &'a DeTable<'i> {
        self.table
    }

    pub(super) fn scope(&self) -> &Scope {
        &self.scope
    }
}

impl<'a, 'i> Table<'a, 'i> {
    /// What the table is called in messages: `[qemu]`, `[qemu.profile.arm64]`.
    pub fn name(&self) -> &str {
        &self.scope.name
    }

    /// Where the table is: its `[header]`, or its value.
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The table's keys with their values, in the order they appear in the file (so that the
    /// first problem reported is the first one in the file).
    pub fn fields(&self) -> Vec<Field<'_, 'i>> {
        entries(self.table)
            .into_iter()
            .map(|(key, value)| Field::new(key, value, &self.scope))
            .collect()
    }

    /// The field of `key`, if the table has it.
    pub fn field(&self, key: &str) -> Option<Field<'_, 'i>> {
        let (key, value) = self.table.get_key_value(key)?;
        Some(Field::new(key, value, &self.scope))
    }
}

/// One key of a table with its value and where both are; its getters check the value and
/// return it typed, or a [`Diag`] that points at the value and says how to fix it.
#[derive(Debug)]
pub struct Field<'a, 'i> {
    pub(super) key: &'a str,
    pub(super) key_span: Range<usize>,
    pub(super) value: &'a Spanned<DeValue<'i>>,
    pub(super) scope: &'a Scope,
}

impl<'a, 'i> Field<'a, 'i> {
    pub(super) fn new(
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

    /// The key, as written.
    pub fn key(&self) -> &'a str {
        self.key
    }

    /// Where the key is.
    pub fn key_span(&self) -> Range<usize> {
        self.key_span.clone()
    }

    /// The key in lowercase with dashes, as tables spell their keys.
    pub fn normalized_key(&self) -> String {
        self.key.to_ascii_lowercase().replace('_', "-")
    }

    /// Whether the key (in lowercase, with dashes) is one of `[[test]]` and `[defaults]`.
    pub fn is_test_key(&self) -> bool {
        Kind::Defaults
            .keys()
            .contains(&self.normalized_key().as_str())
    }

    pub(super) fn get(&self) -> &'a DeValue<'i> {
        self.value.get_ref()
    }

    /// Where the value is.
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }

    /// The dotted path of the key, such as `run.parallelism` or `qemu.profile.arm64.cpus`.
    pub fn path(&self) -> String {
        format!("{}{}", self.scope.prefix, self.key)
    }

    /// Where the key is, in words: `in [run]`, ``in test `boot` ``.
    pub fn place(&self) -> &str {
        &self.scope.place
    }

    /// ``"`key` in [run]"``.
    pub fn what(&self) -> String {
        format!("`{}` {}", self.key, self.scope.place)
    }

    /// A problem with the value.
    pub fn error(&self, message: impl Into<String>) -> Diag {
        Diag::new(self.span(), self.path(), message)
    }

    /// A problem with the key.
    pub fn key_error(&self, message: impl Into<String>) -> Diag {
        Diag::new(self.key_span(), self.path(), message)
    }

    /// A table this build of orchestrator-core leaves out: `feature` is the cargo feature that
    /// reads it.
    #[cfg(any(not(feature = "store"), not(feature = "monitor")))]
    pub(super) fn feature_off(&self, feature: &str) -> Diag {
        self.key_error(format!(
            "[{}] needs the `{feature}` feature of orchestrator-core, which this build \
             leaves out",
            self.key
        ))
        .help(format!(
            "build with the `{feature}` feature of orchestrator-core turned on (it is a \
             default feature), or remove the [{}] table",
            self.key
        ))
    }

    /// A problem with part of the value, at `span`.
    pub fn error_at(&self, span: Range<usize>, message: impl Into<String>) -> Diag {
        Diag::new(span, self.path(), message)
    }

    pub(super) fn example(&self) -> Option<&'static str> {
        match self.scope.kind {
            Kind::Section => self.scope.key(self.key).and_then(|k| k.example),
            Kind::Top => (self.key == "name").then_some("name = \"nightly\""),
            Kind::MaxAges => Some("core-dump = \"7d\""),
            Kind::Budgets => Some("core-dump = \"1GiB\""),
            kind => kind.doc(self.key)?.example,
        }
    }

    pub(super) fn example_help(&self) -> Option<String> {
        self.example().map(|e| format!("for example: `{e}`"))
    }

    /// The value has the wrong type: ``"`key` in [table] must be {expected}, not the string
    /// "x""``, with the key's example as help.
    pub fn wrong_type(&self, expected: &str) -> Diag {
        self.error(format!(
            "{} must be {expected}, not {}",
            self.what(),
            found(self.get())
        ))
        .maybe_help(self.example_help())
    }

    /// A string.
    pub fn string(&self) -> Res<&'a str> {
        match self.get() {
            DeValue::String(s) => Ok(s),
            _ => Err(self.wrong_type("a string")),
        }
    }

    /// A string that is not blank.
    pub fn text(&self) -> Res<&'a str> {
        let s = self.string()?;
        if value::is_blank(s) {
            return Err(self.problem(value::Problem::Empty));
        }
        Ok(s)
    }

    /// Whether the value is a table.
    pub fn is_table(&self) -> bool {
        matches!(self.get(), DeValue::Table(_))
    }

    pub(super) fn de_table(&self) -> Res<&'a DeTable<'i>> {
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

    /// A table of the core.
    pub(super) fn child(&self, kind: Kind, name: &str) -> Res<Table<'a, 'i>> {
        Ok(Table {
            table: self.de_table()?,
            span: self.span(),
            scope: self.scope.child(kind, name),
        })
    }

    /// A table, called `name` in messages ("[qemu.profile.arm64]"), whose keys' paths start
    /// with `prefix` ("qemu.profile.arm64.") and which takes `keys`.
    pub fn table(&self, name: &str, prefix: &str, keys: &'static [Key]) -> Res<Table<'a, 'i>> {
        Ok(Table {
            table: self.de_table()?,
            span: self.span(),
            scope: self.scope.section(name, prefix, keys),
        })
    }

    pub(super) fn array(&self, expected: &str) -> Res<&'a DeArray<'i>> {
        match self.get() {
            DeValue::Array(array) => Ok(array),
            _ => Err(self.wrong_type(expected)),
        }
    }

    /// An array of strings, each with its span.
    pub fn strings(&self, expected: &str) -> Res<Vec<(&'a str, Range<usize>)>> {
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
    pub fn integer(&self, min: i128, max: i128, expected: &str) -> Res<i128> {
        value::integer(&self.raw(), min, max, expected).map_err(|p| self.problem(p))
    }

    pub(super) fn range_help(&self) -> Option<String> {
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
    pub(super) fn default_help(&self) -> Option<String> {
        let example = self.example()?;
        let note = match self.scope.kind {
            Kind::Section => self.scope.key(self.key).and_then(|k| k.unset),
            kind => kind.doc(self.key).and_then(|d| d.unset),
        };
        Some(match note {
            Some(note) => format!("remove the key {note}, or use for example `{example}`"),
            None => format!("for example: `{example}`"),
        })
    }

    /// A positive duration: a humantime string (`"1m 30s"`) or a number of seconds.
    pub fn duration(&self) -> Res<Duration> {
        value::duration(&self.raw()).map_err(|p| self.problem(p))
    }

    /// A byte count of at least 1KiB: a string with a unit (`"64KiB"`) or an integer, in
    /// bytes.
    pub fn bytes(&self) -> Res<u64> {
        value::bytes(&self.raw()).map_err(|p| self.problem(p))
    }

    /// `true` or `false`.
    pub fn boolean(&self) -> Res<bool> {
        value::boolean(&self.raw()).map_err(|p| self.problem(p))
    }

    /// A positive integer that fits in a `u32`.
    pub fn count(&self) -> Res<u32> {
        let n = self.integer(1, u32::MAX.into(), "a positive integer")?;
        Ok(u32::try_from(n).expect("range was checked"))
    }

    /// Guest memory in MiB: a string with a unit (`"512MiB"`, `"2GiB"`) or an integer, in MiB.
    pub fn memory_mib(&self) -> Res<u32> {
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

    /// An array of command-line arguments, none of them blank; it may be empty.
    pub fn args(&self) -> Res<Vec<String>> {
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

    /// Kernel module names as `modprobe` takes them, with `-` written as `_`.
    pub fn modules(&self) -> Res<Vec<String>> {
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

    /// One of the strings of `choices`, as the value it stands for. Another string is
    /// ``"`key` in [table] must be "a", "b" or "c", not "x""``, with a did-you-mean when it is
    /// close to one of them, or `otherwise` as help.
    pub fn one_of<T: Copy>(&self, choices: &[(&str, T)], otherwise: &str) -> Res<T> {
        let text = self.string()?;
        if let Some((_, value)) = choices.iter().find(|(name, _)| *name == text) {
            return Ok(*value);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let help = match suggest(&text.trim().to_ascii_lowercase(), &names) {
            Some(guess) => format!("did you mean \"{guess}\"?"),
            None => otherwise.to_owned(),
        };
        let mut quoted: Vec<String> = names.iter().map(|name| toml_str(name)).collect();
        let last = quoted.pop().unwrap_or_default();
        let list = if quoted.is_empty() {
            last
        } else {
            format!("{} or {last}", quoted.join(", "))
        };
        Err(self
            .error(format!(
                "{} must be {list}, not {}",
                self.what(),
                toml_str(text)
            ))
            .help(help))
    }

    /// A key the table does not take: ``"unknown key `x` in [table]"``, with advice on where it
    /// belongs or which key was meant.
    pub fn unknown_key(&self) -> Diag {
        unknown_key(self.scope, self, None)
    }

    /// A key the table does not take, with `advice` on where it belongs (unless the key is
    /// one of the table's own spelt differently, which the advice then says).
    pub fn unknown_key_with(&self, advice: String) -> Diag {
        unknown_key(self.scope, self, Some(advice))
    }
}

const ARCH_NAMES: &[&str] = &[
    "x86_64", "aarch64", "armv7", "riscv64", "amd64", "arm64", "armhf",
];

/// How to name an architecture, for a name that is not one.
pub fn arch_help(text: &str) -> String {
    match suggest(text.trim(), ARCH_NAMES) {
        Some(name) => format!("did you mean `{name}`?"),
        None => "use one of x86_64, aarch64, armv7 or riscv64 \
                 (the Debian names amd64, arm64 and armhf work too)"
            .to_owned(),
    }
}

/// How to describe a value of the wrong type.
pub(super) fn found(value: &DeValue<'_>) -> String {
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
pub(super) fn toml_str(s: &str) -> String {
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

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(super) fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// A key `scope` does not take.
fn unknown_key(scope: &Scope, f: &Field<'_, '_>, advice: Option<String>) -> Diag {
    let key = f.key;
    let accepted = scope.accepted();
    let diag = |message: String| Diag::new(f.key_span.clone(), f.path(), message);
    // A table written as a `[header]` (its span is the header, which starts before the key).
    let header = f.span().start < f.key_span.start && scope.kind == Kind::Top;
    // How to show a suggested key: as the header of its table, if the user wrote a header.
    let shown = |right: &str| match right {
        "test" if header => "`[[test]]`".to_owned(),
        table if header && scope.is_table(table) => format!("`[{right}]`"),
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
    let normalized = f.normalized_key();
    if let Some(right) = accepted.iter().find(|k| **k == normalized) {
        let why = if key.contains('_') {
            " (keys are written with dashes, not underscores)"
        } else {
            " (keys are lowercase)"
        };
        return diag(unknown()).help(format!("did you mean {}?{why}", shown(right)));
    }
    if let Some(help) = advice {
        return diag(unknown()).help(help);
    }

    // Right key, wrong table.
    let in_run = Kind::Run.keys().contains(&normalized.as_str());
    let per_test = Kind::Defaults.keys().contains(&normalized.as_str());
    let test_only = test_only(&normalized);
    // Advice for a key of a runner's, the store's or the monitor's table.
    let sections = scope.sections.iter().map(|s| {
        let keys: Vec<&str> = s.keys.iter().map(|k| k.name).collect();
        (keys, format!("[{}]", s.name), s.about)
    });
    let core = [
        (
            Kind::Store.keys(),
            "[store]",
            "a setting of the artifact store",
        ),
        (
            Kind::Retention.keys(),
            "[store.retention]",
            "a retention rule",
        ),
        (
            Kind::Monitor.keys(),
            "[monitor]",
            "a setting of the monitor",
        ),
    ]
    .map(|(keys, table, what)| (keys.to_vec(), table.to_owned(), what));
    let owner = sections
        .chain(core)
        .find(|(keys, _, _)| keys.contains(&normalized.as_str()))
        .map(|(_, table, what)| {
            format!("`{normalized}` is {what}: move it into the {table} table")
        });
    // Advice of a section for a key at the top level.
    let section_advice = || {
        scope
            .sections
            .iter()
            .find_map(|s| (s.advice)(normalized.as_str()))
    };
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
        Kind::Top => section_advice().or(owner),
        Kind::Run | Kind::Section | Kind::Store | Kind::Retention | Kind::Monitor
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
    if let Some(right) = suggest(&normalized, &accepted) {
        return diag(unknown()).help(format!("did you mean {}?", shown(right)));
    }
    let mut list: Vec<String> = accepted
        .iter()
        .map(|k| match (scope.kind, *k) {
            (Kind::Top, "test") => "`[[test]]`".to_owned(),
            (Kind::Top, table) if scope.is_table(table) => format!("`[{k}]`"),
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
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
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
