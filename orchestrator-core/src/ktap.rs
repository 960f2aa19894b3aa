//! KTAP (Kernel TAP) and TAP 13/14 parsing: per-test results of kernel self-tests.
//!
//! KUnit and kselftest print their results as KTAP (`Documentation/dev-tools/ktap.rst`) or TAP
//! 13/14, on the console — interleaved with unrelated kernel messages, behind `[    1.234567] `
//! timestamps — or into a file. [`parse`] turns such text into a tree of [`KtapTest`]s, with
//! skip and todo directives, diagnostic lines, and a list of problems (plan mismatches, results
//! cut short by a crash, `Bail out!`).
//!
//! What is understood:
//!
//! - version lines: `KTAP version 1`, `TAP version 13`, `TAP version 14`; a later version line at
//!   the top level starts another run (for example a test module loaded later) whose tests are
//!   appended;
//! - plans `1..N`, before or after the tests (`1..0 # SKIP reason` too);
//! - result lines `ok`/`not ok`, with or without a number, with or without the ` - ` separator,
//!   with a directive (`SKIP`, `TODO`, `XFAIL`, `TIMEOUT`, `ERROR`, any case) and its reason, or
//!   other data after `#`;
//! - nesting by indentation, whatever the width (KTAP's two spaces, KUnit's four, TAP 14's
//!   four), with KUnit's and TAP 14's `# Subtest: name` headers before or inside the block;
//!   output that starts nested (KUnit's debugfs `results`) gets a top level around it;
//! - kselftest's nested output, whose lines the runner prefixes with `# `;
//! - diagnostic lines `# ...`, and unknown lines inside an indented block (KUnit's assertion
//!   details); unknown lines at the top level (other kernel messages) are ignored;
//! - TAP 13 YAML blocks (`  ---` ... `  ...`), kept as diagnostics of the test before them;
//! - `Bail out!`;
//! - console decoration: a `<6>` log level, a `[    1.234567]` timestamp and a `[    T1]`
//!   caller id are stripped, and a constant prefix before the first version line (such as
//!   `kunit: `) is stripped from every line (lines without it are not test output); the
//!   timestamps give each test its [`duration`](KtapTest::duration);
//! - output that stops in the middle (a crash): open blocks become [`KtapResult::Incomplete`]
//!   tests, and tests promised by a plan but never reported are counted as missing.
//!
//! [`parse`] never panics, whatever its input. [`parse_with_crash_check`] also notes, among the
//! problems, the first kernel crash line (as a runner that knows the kernel's messages
//! recognises it) printed while tests ran; `qemu_runner::ktap::parse` is that with the QEMU
//! runner's crash labels.
//!
//! [`subtests_of`] turns such output into a result's [`Subtest`]s: every runner can use it (the
//! host-process runner reads its tests' stdout, the QEMU runner also the guest's kernel log).
//! [`subtests`] and [`suites`] do it for a parsed report: each counted test with its suite path
//! and time, and each test with subtests (a KUnit suite, a parameterised case) with its own
//! result; [`kernel_log_problem`] says why a kernel log cannot judge a test of the kernel's own
//! tests (no KTAP, `1..0`, output cut short). A suite of a module loaded after boot (printed
//! without a new plan on 6.1, with its own version line and plan on later kernels) joins the
//! boot's suites.
//!
//! # Examples
//!
//! ```
//! use orchestrator_core::ktap::{self, KtapResult};
//!
//! let report = ktap::parse(
//!     "[    0.371205] KTAP version 1\n\
//!      [    0.371419] 1..1\n\
//!      [    0.372015]     KTAP version 1\n\
//!      [    0.372234]     # Subtest: example\n\
//!      [    0.372660]     1..2\n\
//!      [    0.373617]     ok 1 example_simple_test\n\
//!      [    0.374442]     ok 2 example_skip_test # SKIP this test should be skipped\n\
//!      [    0.378500] ok 1 example\n",
//! );
//! assert!(report.complete);
//! let cases = report.flatten();
//! assert_eq!(cases[0].0, "example.example_simple_test");
//! assert_eq!(cases[1].1.result, KtapResult::Skip);
//! let counts = report.counts();
//! assert_eq!((counts.passed, counts.skipped), (1, 1));
//! ```

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::result::{Subtest, SubtestStatus, SubtestSuite};

/// Nesting deeper than this is folded into the deepest level (keeps recursion bounded).
const MAX_DEPTH: usize = 64;
/// How many times a less indented line may wrap everything so far into a new top level.
const MAX_REROOTS: usize = 8;
/// How deep kselftest's `# `-prefixed nested output is parsed.
const MAX_PREFIXED_DEPTH: usize = 4;

/// The version a (K)TAP stream declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtapVersion {
    /// `KTAP version N`.
    Ktap(u32),
    /// `TAP version N`.
    Tap(u32),
}

impl fmt::Display for KtapVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KtapVersion::Ktap(n) => write!(f, "KTAP version {n}"),
            KtapVersion::Tap(n) => write!(f, "TAP version {n}"),
        }
    }
}

/// A directive after `#` on a result line, with its reason (the rest of the line), if any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "lowercase")]
pub enum Directive {
    /// `# SKIP reason`: the test did not run (whether the line says `ok` or `not ok`).
    Skip(Option<String>),
    /// `# TODO reason`: the test is known not to pass yet; a failure is expected.
    Todo(Option<String>),
    /// `# XFAIL reason`: the test failed, as expected (kselftest).
    Xfail(Option<String>),
    /// `# TIMEOUT reason`: the test timed out.
    Timeout(Option<String>),
    /// `# ERROR reason`: the test could not be run properly.
    Error(Option<String>),
}

impl Directive {
    /// The reason given after the directive's keyword, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Directive::Skip(r)
            | Directive::Todo(r)
            | Directive::Xfail(r)
            | Directive::Timeout(r)
            | Directive::Error(r) => r.as_deref(),
        }
    }
}

/// What a test's outcome counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KtapResult {
    /// `ok`, without a directive that says otherwise.
    Pass,
    /// `not ok`, or any result with `TIMEOUT` or `ERROR`.
    Fail,
    /// Any result with `SKIP`.
    Skip,
    /// Any result with `TODO` or `XFAIL`: an expected failure, not counted as a failure (an
    /// `ok # TODO` is an unexpected pass; [`KtapTest::ok`] tells them apart).
    Todo,
    /// No result line: the output stopped (or moved on) while the test's subtests were running.
    Incomplete,
}

impl KtapResult {
    /// Whether this outcome is a failure ([`Fail`](Self::Fail) or
    /// [`Incomplete`](Self::Incomplete)).
    pub fn is_failure(self) -> bool {
        matches!(self, KtapResult::Fail | KtapResult::Incomplete)
    }
}

/// One test (or test suite: a test with subtests).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KtapTest {
    /// Its number on the result line (its position among its siblings when the line has none).
    pub number: u32,
    /// Its description on the result line (or its `# Subtest:` name); may be empty.
    pub name: String,
    /// Whether the result line said `ok` (false for [`KtapResult::Incomplete`]).
    pub ok: bool,
    /// What the outcome counts as.
    pub result: KtapResult,
    /// The directive on the result line, if any.
    pub directive: Option<Directive>,
    /// Diagnostic lines belonging to the test, without their `# `: those printed before its
    /// result line, unknown lines inside its block, its YAML block, and data after `#` on the
    /// result line that is not a directive.
    pub diagnostics: Vec<String>,
    /// Its subtests, in order.
    pub subtests: Vec<KtapTest>,
    /// How many subtests its plan (`1..N`) announced, if it had one.
    pub expected_subtests: Option<u32>,
    /// How long it ran, when the output has timestamps (a kernel log's `[    1.234567]`): from
    /// the line that started it (its block's first line; for a test without subtests, the
    /// previous result or plan at its level) to its result line.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::serde_duration::option"
    )]
    pub duration: Option<Duration>,
}

impl KtapTest {
    /// The name used in paths: the name, or the number when the name is empty.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            self.number.to_string()
        } else {
            self.name.clone()
        }
    }

    /// How many subtests the plan announced but the output never reported.
    pub fn missing_subtests(&self) -> u32 {
        let reported = u32::try_from(self.subtests.len()).unwrap_or(u32::MAX);
        self.expected_subtests
            .map_or(0, |n| n.saturating_sub(reported))
    }

    fn has_failure_below(&self) -> bool {
        self.subtests
            .iter()
            .any(|t| t.result.is_failure() || t.has_failure_below())
    }
}

/// Counts of a report's counted tests (see [`KtapReport::flatten`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// [`KtapResult::Pass`].
    pub passed: u64,
    /// [`KtapResult::Fail`] and [`KtapResult::Incomplete`].
    pub failed: u64,
    /// [`KtapResult::Skip`].
    pub skipped: u64,
    /// [`KtapResult::Todo`] (expected failures).
    pub todo: u64,
    /// Tests that plans announced but that were never reported (not part of [`total`]).
    ///
    /// [`total`]: Counts::total
    pub missing: u64,
}

impl Counts {
    /// `passed + failed + skipped + todo`: the number of counted tests.
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped + self.todo
    }
}

/// The parsed results of one (K)TAP output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KtapReport {
    /// The top-level version line, if there was one.
    pub version: Option<KtapVersion>,
    /// The number of top-level tests the plan announced (summed over several top-level runs).
    pub plan: Option<u32>,
    /// The top-level tests, in order.
    pub tests: Vec<KtapTest>,
    /// Top-level diagnostic lines that belong to no test (such as KUnit's `# Totals:` line).
    pub diagnostics: Vec<String>,
    /// What was wrong with the output, one sentence each: plan mismatches, tests without a
    /// result, a kernel crash while tests ran, `Bail out!`, no top-level plan.
    pub problems: Vec<String>,
    /// The reason given by `Bail out!`, if the output bailed out (parsing stops there).
    pub bail_out: Option<String>,
    /// Whether the output is whole: some test output was found, a top-level plan was given,
    /// every plan was met, every test has its result line, and it did not bail out.
    pub complete: bool,
}

impl KtapReport {
    /// The counted tests with their dotted paths (`suite.case`; a name that is empty is
    /// replaced by the test's number), parents before their subtests.
    ///
    /// Counted are all leaf tests, and also any parent whose own result is a failure that no
    /// failing descendant explains (a suite whose exit failed, or one cut short by a crash), so
    /// that such failures are not lost.
    pub fn flatten(&self) -> Vec<(String, &KtapTest)> {
        self.cases()
            .into_iter()
            .map(|(path, test)| (path.join("."), test))
            .collect()
    }

    /// The counted tests ([`flatten`](Self::flatten)) with their paths as parts: the names of
    /// the tests they are nested in, outermost first, then their own.
    pub fn cases(&self) -> Vec<(Vec<String>, &KtapTest)> {
        let mut out = Vec::new();
        self.walk(&mut |path, test| {
            if test.subtests.is_empty() || (test.result.is_failure() && !test.has_failure_below()) {
                out.push((path.to_vec(), test));
            }
        });
        out
    }

    /// The tests that have subtests (KUnit suites, parameterised cases), with their paths as
    /// parts, parents before their subtests.
    pub fn suites(&self) -> Vec<(Vec<String>, &KtapTest)> {
        let mut out = Vec::new();
        self.walk(&mut |path, test| {
            if !test.subtests.is_empty() {
                out.push((path.to_vec(), test));
            }
        });
        out
    }

    /// Calls `f` with every test and its path, parents before their subtests.
    fn walk<'a>(&'a self, f: &mut dyn FnMut(&[String], &'a KtapTest)) {
        fn go<'a>(
            path: &mut Vec<String>,
            tests: &'a [KtapTest],
            f: &mut dyn FnMut(&[String], &'a KtapTest),
        ) {
            for test in tests {
                path.push(test.display_name());
                f(path, test);
                go(path, &test.subtests, f);
                path.pop();
            }
        }
        go(&mut Vec::new(), &self.tests, f);
    }

    /// Counts of the counted tests ([`flatten`](Self::flatten)) by outcome, and of the missing
    /// ones.
    pub fn counts(&self) -> Counts {
        fn missing(tests: &[KtapTest]) -> u64 {
            tests
                .iter()
                .map(|t| u64::from(t.missing_subtests()) + missing(&t.subtests))
                .sum()
        }
        let mut counts = Counts::default();
        for (_, test) in self.flatten() {
            match test.result {
                KtapResult::Pass => counts.passed += 1,
                KtapResult::Fail | KtapResult::Incomplete => counts.failed += 1,
                KtapResult::Skip => counts.skipped += 1,
                KtapResult::Todo => counts.todo += 1,
            }
        }
        let reported = u64::try_from(self.tests.len()).unwrap_or(u64::MAX);
        counts.missing = self
            .plan
            .map_or(0, |n| u64::from(n).saturating_sub(reported))
            + missing(&self.tests);
        counts
    }
}

/// Parses (K)TAP output, from a console log or a file. Never panics.
pub fn parse(text: &str) -> KtapReport {
    Parser::new(0, None).run(text)
}

/// Like [`parse`], and a line of the output for which `is_crash` returns true (a kernel panic,
/// an oops...) while tests are running is noted among the report's problems (the first one).
pub fn parse_with_crash_check(text: &str, is_crash: fn(&str) -> bool) -> KtapReport {
    Parser::new(0, Some(is_crash)).run(text)
}

// ---------------------------------------------------------------------------------------------
// Lines

#[derive(Debug, PartialEq, Eq)]
struct ResultLine {
    ok: bool,
    number: Option<u32>,
    name: String,
    directive: Option<Directive>,
    data: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    Version(KtapVersion),
    Plan(u32, Option<String>),
    Result(ResultLine),
    Subtest(String),
    Diagnostic(String),
    YamlStart,
    BailOut(String),
    Other,
}

/// Strips a `<6>` log level, a `[    1.234567]` timestamp and a `[    T1]` caller id.
#[cfg(test)]
fn strip_console_decoration(line: &str) -> &str {
    split_console_decoration(line).1
}

/// The timestamp of a kernel log line, if it has one, and the line without its decoration (see
/// [`strip_console_decoration`]).
fn split_console_decoration(line: &str) -> (Option<Duration>, &str) {
    let mut time = None;
    let mut s = line.trim_end_matches(['\r', '\n']);
    if let Some(rest) = s.strip_prefix('<')
        && let Some(end) = rest.find('>')
        && (1..=3).contains(&end)
        && rest.as_bytes()[..end].iter().all(u8::is_ascii_digit)
    {
        s = &rest[end + 1..];
    }
    if let Some((stamp, rest)) = strip_bracketed(s, is_timestamp) {
        time = timestamp(stamp);
        s = rest;
        if let Some((_, rest)) = strip_bracketed(s, is_caller_id) {
            s = rest;
        }
        s = s.strip_prefix(' ').unwrap_or(s);
    }
    (time, s)
}

/// `1.234567` (checked by [`is_timestamp`]) as a duration since boot.
fn timestamp(s: &str) -> Option<Duration> {
    let (secs, frac) = s.split_once('.')?;
    let secs: u64 = secs.parse().ok()?;
    let digits = frac.len().min(9);
    let nanos: u32 = frac[..digits].parse().ok()?;
    let nanos = nanos.checked_mul(10u32.pow(u32::try_from(9 - digits).ok()?))?;
    Some(Duration::new(secs, nanos))
}

/// A bracketed word that `accept` takes, trimmed, and what follows it.
fn strip_bracketed(s: &str, accept: fn(&str) -> bool) -> Option<(&str, &str)> {
    let rest = s.strip_prefix('[')?;
    let end = rest.find(']')?;
    let word = rest[..end].trim();
    accept(word).then(|| (word, &rest[end + 1..]))
}

fn is_timestamp(s: &str) -> bool {
    match s.split_once('.') {
        Some((secs, frac)) => {
            !secs.is_empty()
                && !frac.is_empty()
                && secs.bytes().all(|b| b.is_ascii_digit())
                && frac.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn is_caller_id(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'T' | b'C')) && s.len() > 1 && bytes.all(|b| b.is_ascii_digit())
}

/// The indentation width (tabs to the next multiple of 8) and the rest of the line.
fn split_indent(s: &str) -> (usize, &str) {
    let mut width = 0usize;
    for (i, b) in s.bytes().enumerate() {
        match b {
            b' ' => width += 1,
            b'\t' => width = (width / 8 + 1) * 8,
            _ => return (width, &s[i..]),
        }
    }
    (width, "")
}

/// Case-insensitively strips an ASCII `prefix`.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Leading ASCII digits as a saturated `u32`, and the rest.
fn leading_number(s: &str) -> Option<(u32, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let value = s[..end].bytes().fold(0u32, |acc, b| {
        acc.saturating_mul(10).saturating_add(u32::from(b - b'0'))
    });
    Some((value, &s[end..]))
}

fn parse_version(c: &str) -> Option<KtapVersion> {
    let (make, rest): (fn(u32) -> KtapVersion, &str) =
        if let Some(rest) = strip_prefix_ci(c, "KTAP version ") {
            (KtapVersion::Ktap, rest)
        } else {
            (KtapVersion::Tap, strip_prefix_ci(c, "TAP version ")?)
        };
    let (n, rest) = leading_number(rest.trim_start())?;
    rest.trim().is_empty().then(|| make(n))
}

fn parse_plan(c: &str) -> Option<(u32, Option<String>)> {
    let (n, rest) = leading_number(c.strip_prefix("1..")?)?;
    let rest = rest.trim_start();
    if rest.is_empty() {
        return Some((n, None));
    }
    let comment = rest.strip_prefix('#')?;
    let skip = match parse_directive(comment) {
        (Some(Directive::Skip(reason)), _) => Some(reason.unwrap_or_default()),
        _ => None,
    };
    Some((n, skip))
}

/// A directive keyword and its reason, or else the text as plain data.
fn parse_directive(text: &str) -> (Option<Directive>, Option<String>) {
    let text = text.trim();
    let word_end = text.find(char::is_whitespace).unwrap_or(text.len());
    let word = text[..word_end].trim_end_matches(':').to_ascii_uppercase();
    let reason = text[word_end..].trim();
    let reason = (!reason.is_empty()).then(|| reason.to_owned());
    let directive = if word.starts_with("SKIP") {
        Directive::Skip(reason)
    } else if word.starts_with("TODO") {
        Directive::Todo(reason)
    } else if word == "XFAIL" {
        Directive::Xfail(reason)
    } else if word == "TIMEOUT" {
        Directive::Timeout(reason)
    } else if word == "ERROR" {
        Directive::Error(reason)
    } else {
        return (None, (!text.is_empty()).then(|| text.to_owned()));
    };
    (Some(directive), None)
}

fn parse_result(c: &str) -> Option<ResultLine> {
    let (ok, rest) = match c.strip_prefix("not ok") {
        Some(rest) => (false, rest),
        None => (true, c.strip_prefix("ok")?),
    };
    if !(rest.is_empty() || rest.starts_with([' ', '\t', '#'])) {
        return None;
    }
    let mut rest = rest.trim_start();
    let mut number = None;
    if let Some((n, after)) = leading_number(rest)
        && (after.is_empty() || after.starts_with([' ', '\t', '#']))
    {
        number = Some(n);
        rest = after.trim_start();
    }
    if let Some(after) = rest.strip_prefix('-')
        && (after.is_empty() || after.starts_with([' ', '\t']))
    {
        rest = after.trim_start();
    }
    // The description ends at the first `#` not escaped as `\#`.
    let mut name = String::new();
    let mut comment = None;
    let mut chars = rest.char_indices();
    while let Some((i, ch)) = chars.next() {
        match ch {
            '\\' if rest[i + 1..].starts_with('#') => {
                name.push('#');
                chars.next();
            }
            '#' => {
                comment = Some(&rest[i + 1..]);
                break;
            }
            _ => name.push(ch),
        }
    }
    let (directive, data) = comment.map_or((None, None), parse_directive);
    Some(ResultLine {
        ok,
        number,
        name: name.trim().to_owned(),
        directive,
        data,
    })
}

fn classify(c: &str) -> Line {
    if let Some(v) = parse_version(c) {
        return Line::Version(v);
    }
    if let Some((n, skip)) = parse_plan(c) {
        return Line::Plan(n, skip);
    }
    if let Some(r) = parse_result(c) {
        return Line::Result(r);
    }
    if let Some(comment) = c.strip_prefix('#') {
        if let Some(name) = strip_prefix_ci(comment.trim_start(), "Subtest:") {
            return Line::Subtest(name.trim().to_owned());
        }
        let text = comment.strip_prefix(' ').unwrap_or(comment);
        return Line::Diagnostic(text.trim_end().to_owned());
    }
    if c == "---" {
        return Line::YamlStart;
    }
    if let Some(reason) = strip_prefix_ci(c, "Bail out!") {
        return Line::BailOut(reason.trim().to_owned());
    }
    Line::Other
}

/// A constant prefix before the first version line, such as `kunit: `, and the rest.
fn find_prefixed_version(s: &str) -> Option<(&str, &str)> {
    let at = s.find("KTAP version ").or_else(|| s.find("TAP version "))?;
    let (prefix, rest) = s.split_at(at);
    let plausible = !prefix.trim().is_empty()
        && prefix.len() <= 40
        && !prefix.trim_start().starts_with('#')
        && prefix.ends_with([' ', '\t', ':', '|', ']'])
        && parse_version(rest.trim_end()).is_some();
    plausible.then_some((prefix, rest))
}

// ---------------------------------------------------------------------------------------------
// Parser

/// A finished block of subtests waiting for its parent's result line.
#[derive(Debug, Default)]
struct Block {
    name: Option<String>,
    tests: Vec<KtapTest>,
    plan: Option<u32>,
    diagnostics: Vec<String>,
    /// When it started (see [`Frame::opened`]).
    opened: Option<Duration>,
}

/// One level of nesting being parsed.
#[derive(Debug, Default)]
struct Frame {
    indent: usize,
    /// From `# Subtest:` inside the block.
    name: Option<String>,
    /// From `# Subtest:` at this level: the name of the next nested block.
    announced: Option<String>,
    plan: Option<u32>,
    /// Plans of earlier runs at this level (several version lines).
    earlier_plans: Option<u32>,
    tests: Vec<KtapTest>,
    /// Where the current run's tests start in `tests`.
    segment_start: usize,
    /// Diagnostics before the plan and the first test: they describe the block itself.
    header: Vec<String>,
    /// Diagnostics waiting for the next result line.
    pending: Vec<String>,
    block: Option<Block>,
    last_was_result: bool,
    /// When the block started: the time of its first line when that is a header (a version
    /// line, a plan, `# Subtest:`), else when its parent's level last moved.
    opened: Option<Duration>,
    /// When this level last moved (a header or a result line at this level): where the next
    /// test without subtests starts.
    mark: Option<Duration>,
}

impl Frame {
    fn new(indent: usize) -> Self {
        Frame {
            indent,
            ..Frame::default()
        }
    }

    fn is_fresh(&self) -> bool {
        self.tests.len() == self.segment_start && self.plan.is_none() && self.block.is_none()
    }

    fn segment_len(&self) -> usize {
        self.tests.len() - self.segment_start
    }

    fn total_plan(&self) -> Option<u32> {
        match (self.earlier_plans, self.plan) {
            (Some(a), Some(b)) => Some(a.saturating_add(b)),
            (a, b) => a.or(b),
        }
    }

    fn label(&self) -> String {
        self.name
            .as_ref()
            .map_or_else(String::new, |n| format!("'{n}': "))
    }
}

#[derive(Debug)]
struct Parser {
    /// Depth of kselftest `# `-prefixed nesting this parser handles.
    prefixed_depth: usize,
    /// Recognises a kernel crash line, when the caller knows how.
    is_crash: Option<fn(&str) -> bool>,
    stack: Vec<Frame>,
    prefix: Option<String>,
    version: Option<KtapVersion>,
    problems: Vec<String>,
    incomplete: bool,
    bail_out: Option<String>,
    crash_noted: bool,
    reroots: usize,
    /// Indentation of the `---` of the YAML block being read.
    yaml: Option<usize>,
    /// The timestamp of the latest line that had one.
    now: Option<Duration>,
}

impl Parser {
    fn new(prefixed_depth: usize, is_crash: Option<fn(&str) -> bool>) -> Self {
        Parser {
            prefixed_depth,
            is_crash,
            stack: Vec::new(),
            prefix: None,
            version: None,
            problems: Vec::new(),
            incomplete: false,
            bail_out: None,
            crash_noted: false,
            reroots: 0,
            yaml: None,
            now: None,
        }
    }

    fn started(&self) -> bool {
        !self.stack.is_empty()
    }

    fn run(mut self, text: &str) -> KtapReport {
        for raw in text.lines() {
            let (time, s) = split_console_decoration(raw);
            if time.is_some() {
                self.now = time;
            }
            let s = if let Some(prefix) = &self.prefix {
                match s.strip_prefix(prefix.as_str()) {
                    Some(rest) => rest,
                    None => {
                        self.note_crash(s);
                        continue;
                    }
                }
            } else if !self.started() {
                match find_prefixed_version(s) {
                    Some((prefix, rest)) => {
                        self.prefix = Some(prefix.to_owned());
                        rest
                    }
                    None => s,
                }
            } else {
                s
            };
            if !self.line(s) {
                break;
            }
        }
        self.finish()
    }

    /// Handles one line; false to stop (bail out).
    fn line(&mut self, s: &str) -> bool {
        let (indent, content) = split_indent(s);
        let content = content.trim_end();
        if let Some(yaml_indent) = self.yaml {
            if content == "..." {
                self.yaml = None;
                return true;
            }
            if content.is_empty() {
                return true;
            }
            if indent >= yaml_indent {
                let text = format!(
                    "{}{content}",
                    " ".repeat(indent.saturating_sub(yaml_indent))
                );
                if let Some(test) = self.stack.last_mut().and_then(|f| f.tests.last_mut()) {
                    test.diagnostics.push(text);
                }
                return true;
            }
            self.yaml = None;
        }
        if content.is_empty() {
            return true;
        }
        match classify(content) {
            Line::Version(v) => self.on_version(indent, v),
            Line::Plan(n, skip) => self.on_plan(indent, n, skip),
            Line::Result(r) => self.on_result(indent, r),
            Line::Subtest(name) => self.on_subtest(indent, name),
            Line::Diagnostic(text) => {
                let depth = self.stack.len();
                if let Some(frame) = self.stack.last_mut() {
                    frame.last_was_result = false;
                    if depth > 1 && frame.is_fresh() {
                        frame.header.push(text);
                    } else {
                        frame.pending.push(text);
                    }
                }
            }
            Line::YamlStart => {
                if self.stack.last().is_some_and(|f| f.last_was_result) {
                    self.yaml = Some(indent);
                }
            }
            Line::BailOut(reason) => {
                self.problems.push(if reason.is_empty() {
                    "bail out".to_owned()
                } else {
                    format!("bail out: {reason}")
                });
                self.bail_out = Some(reason);
                self.incomplete = true;
                return false;
            }
            Line::Other => {
                self.note_crash(content);
                let depth = self.stack.len();
                if let Some(frame) = self.stack.last_mut()
                    && depth > 1
                    && frame.indent > 0
                    && indent >= frame.indent
                {
                    let text = format!("{}{content}", " ".repeat(indent - frame.indent));
                    if frame.is_fresh() {
                        frame.header.push(text);
                    } else {
                        frame.pending.push(text);
                    }
                }
            }
        }
        true
    }

    fn note_crash(&mut self, line: &str) {
        if self.crash_noted || !self.started() {
            return;
        }
        if self.is_crash.is_some_and(|is_crash| is_crash(line)) {
            self.crash_noted = true;
            self.problems
                .push(format!("kernel crash while tests ran: {}", line.trim()));
        }
    }

    /// Moves to the level of a structural line at `indent`: closes deeper blocks, or opens a
    /// new one (started now when the line is a `header`, else when its parent's level last
    /// moved). Returns whether a new block was opened.
    fn enter(&mut self, indent: usize, header: bool) -> bool {
        let now = self.now;
        let Some(top) = self.stack.last() else {
            let mut frame = Frame::new(indent);
            frame.opened = now;
            frame.mark = now;
            self.stack.push(frame);
            return true;
        };
        if self.stack.len() == 1 && indent < top.indent && self.reroots < MAX_REROOTS {
            // What came so far was nested (KUnit's debugfs results start with the suite's
            // indented lines): it becomes a block of a new, less indented top level.
            self.reroots += 1;
            let nested = self.stack.pop();
            let mut frame = Frame::new(indent);
            frame.opened = nested.as_ref().and_then(|f| f.opened);
            frame.mark = now;
            self.stack.push(frame);
            self.stack.extend(nested);
            self.close_top(false);
            return false;
        }
        while self.stack.len() > 1 {
            let n = self.stack.len();
            if self.stack[n - 1].indent > indent && self.stack[n - 2].indent >= indent {
                self.close_top(false);
            } else {
                break;
            }
        }
        let depth = self.stack.len();
        let Some(top) = self.stack.last_mut() else {
            return false;
        };
        if indent > top.indent && depth < MAX_DEPTH {
            let name = top.announced.take();
            if let Some(block) = top.block.take() {
                Self::synthesize(
                    top,
                    block,
                    "another block started",
                    &mut self.problems,
                    &mut self.incomplete,
                );
            }
            top.last_was_result = false;
            let mut frame = Frame::new(indent);
            frame.name = name;
            frame.opened = if header { now } else { top.mark.or(now) };
            frame.mark = frame.opened;
            self.stack.push(frame);
            return true;
        }
        false
    }

    /// Closes the innermost block; its tests wait for the parent's result line (or, at the end
    /// of the output, become an incomplete test).
    fn close_top(&mut self, at_end: bool) {
        let Some(mut frame) = self.stack.pop() else {
            return;
        };
        if let Some(block) = frame.block.take() {
            Self::synthesize(
                &mut frame,
                block,
                "output ended",
                &mut self.problems,
                &mut self.incomplete,
            );
        }
        self.end_segment(&mut frame);
        let mut diagnostics = std::mem::take(&mut frame.header);
        let plan = frame.total_plan();
        let Some(parent) = self.stack.last_mut() else {
            return;
        };
        if at_end {
            diagnostics.append(&mut frame.pending);
        } else {
            parent.pending.append(&mut frame.pending);
        }
        if let Some(block) = parent.block.take() {
            Self::synthesize(
                parent,
                block,
                "another block ended",
                &mut self.problems,
                &mut self.incomplete,
            );
        }
        parent.block = Some(Block {
            name: frame.name,
            tests: frame.tests,
            plan,
            diagnostics,
            opened: frame.opened,
        });
        parent.last_was_result = false;
        if at_end && let Some(block) = parent.block.take() {
            Self::synthesize(
                parent,
                block,
                "output ended",
                &mut self.problems,
                &mut self.incomplete,
            );
        }
    }

    /// Turns a block whose result line never came into an incomplete test.
    fn synthesize(
        frame: &mut Frame,
        block: Block,
        why: &str,
        problems: &mut Vec<String>,
        incomplete: &mut bool,
    ) {
        let name = block.name.unwrap_or_default();
        problems.push(format!(
            "{}no result line for '{name}' ({why})",
            frame.label()
        ));
        *incomplete = true;
        let number = u32::try_from(frame.segment_len() + 1).unwrap_or(u32::MAX);
        frame.tests.push(KtapTest {
            number,
            name,
            ok: false,
            result: KtapResult::Incomplete,
            directive: None,
            diagnostics: block.diagnostics,
            subtests: block.tests,
            expected_subtests: block.plan,
            duration: None,
        });
    }

    /// Checks the current run at this level against its plan.
    fn end_segment(&mut self, frame: &mut Frame) {
        let reported = frame.segment_len();
        if let Some(plan) = frame.plan {
            let plan_usize = usize::try_from(plan).unwrap_or(usize::MAX);
            if plan_usize != reported {
                self.problems.push(format!(
                    "{}plan says {plan} tests, {reported} reported",
                    frame.label()
                ));
                if plan_usize > reported {
                    self.incomplete = true;
                }
            }
        }
    }

    /// Starts another run at the innermost level (another version line or plan).
    fn new_segment(&mut self) {
        let Some(mut frame) = self.stack.pop() else {
            return;
        };
        if let Some(block) = frame.block.take() {
            Self::synthesize(
                &mut frame,
                block,
                "another run started",
                &mut self.problems,
                &mut self.incomplete,
            );
        }
        self.end_segment(&mut frame);
        frame.earlier_plans = frame.total_plan();
        frame.plan = None;
        frame.segment_start = frame.tests.len();
        self.stack.push(frame);
    }

    fn on_version(&mut self, indent: usize, version: KtapVersion) {
        let opened = self.enter(indent, true);
        self.moved();
        if self.stack.len() == 1 && self.version.is_none() {
            self.version = Some(version);
        }
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        frame.last_was_result = false;
        // A version line where tests or a plan already are starts another run at that level.
        if !opened && !frame.is_fresh() {
            self.new_segment();
        }
    }

    fn on_plan(&mut self, indent: usize, n: u32, skip: Option<String>) {
        self.enter(indent, true);
        self.moved();
        if self.stack.last().is_some_and(|f| f.plan.is_some()) {
            self.new_segment();
        }
        let depth = self.stack.len();
        if let Some(frame) = self.stack.last_mut() {
            let fresh = frame.is_fresh();
            frame.plan = Some(n);
            frame.last_was_result = false;
            if let Some(reason) = skip {
                // `1..0 # SKIP reason`: why the block has no tests.
                let text = format!("SKIP {reason}").trim_end().to_owned();
                if depth > 1 && fresh {
                    frame.header.push(text);
                } else {
                    frame.pending.push(text);
                }
            }
        }
    }

    fn on_subtest(&mut self, indent: usize, name: String) {
        let opened = self.enter(indent, true);
        self.moved();
        let depth = self.stack.len();
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        frame.last_was_result = false;
        if opened || (depth > 1 && frame.name.is_none() && frame.is_fresh()) {
            frame.name = Some(name);
        } else {
            frame.announced = Some(name);
        }
    }

    /// Notes that the innermost level moved now (a header line).
    fn moved(&mut self) {
        let now = self.now;
        if let Some(frame) = self.stack.last_mut()
            && now.is_some()
        {
            frame.mark = now;
        }
    }

    fn on_result(&mut self, indent: usize, line: ResultLine) {
        self.enter(indent, false);
        let now = self.now;
        let Some(frame) = self.stack.last_mut() else {
            return;
        };
        frame.announced = None;
        let block = frame.block.take();
        let started = block.as_ref().map_or(frame.mark, |b| b.opened);
        let duration = match (started, now) {
            (Some(started), Some(now)) => now.checked_sub(started),
            _ => None,
        };
        if now.is_some() {
            frame.mark = now;
        }
        let mut diagnostics = std::mem::take(&mut frame.pending);
        let expected_number = u32::try_from(frame.segment_len() + 1).unwrap_or(u32::MAX);
        let label = frame.label();
        let number = line.number.unwrap_or(expected_number);
        let result = match &line.directive {
            Some(Directive::Skip(_)) => KtapResult::Skip,
            Some(Directive::Todo(_) | Directive::Xfail(_)) => KtapResult::Todo,
            Some(Directive::Timeout(_) | Directive::Error(_)) => KtapResult::Fail,
            None if line.ok => KtapResult::Pass,
            None => KtapResult::Fail,
        };
        let mut test = KtapTest {
            number,
            name: line.name,
            ok: line.ok,
            result,
            directive: line.directive,
            diagnostics: Vec::new(),
            subtests: Vec::new(),
            expected_subtests: None,
            duration,
        };
        if let Some(block) = block {
            test.subtests = block.tests;
            test.expected_subtests = block.plan;
            if test.name.is_empty() {
                test.name = block.name.unwrap_or_default();
            }
            test.diagnostics = block.diagnostics;
        }
        if line.number.is_some() && number != expected_number {
            self.problems.push(format!(
                "{label}test '{}' is numbered {number}, expected {expected_number}",
                test.name
            ));
        }
        if test.subtests.is_empty() && self.prefixed_depth < MAX_PREFIXED_DEPTH {
            self.nested_prefixed(&mut test, &diagnostics);
        }
        test.diagnostics.append(&mut diagnostics);
        test.diagnostics.extend(line.data);
        if let Some(frame) = self.stack.last_mut() {
            frame.tests.push(test);
            frame.last_was_result = true;
        }
    }

    /// kselftest prints each program's own TAP output with a `# ` prefix before the program's
    /// result line: parse it as the test's subtests.
    fn nested_prefixed(&mut self, test: &mut KtapTest, diagnostics: &[String]) {
        let Some(start) = diagnostics
            .iter()
            .position(|d| parse_version(d.trim()).is_some())
        else {
            return;
        };
        let text = diagnostics[start..].join("\n");
        let nested = Parser::new(self.prefixed_depth + 1, self.is_crash).run(&text);
        if nested.tests.is_empty() && nested.plan.is_none() {
            return;
        }
        fn cut_short(tests: &[KtapTest]) -> bool {
            tests.iter().any(|t| {
                t.result == KtapResult::Incomplete
                    || t.missing_subtests() > 0
                    || cut_short(&t.subtests)
            })
        }
        if nested.counts().missing > 0 || cut_short(&nested.tests) || nested.bail_out.is_some() {
            self.incomplete = true;
        }
        let name = test.display_name();
        self.problems.extend(
            nested
                .problems
                .into_iter()
                .filter(|p| !p.starts_with("no top-level plan"))
                .map(|p| format!("in '{name}': {p}")),
        );
        test.subtests = nested.tests;
        test.expected_subtests = nested.plan;
    }

    fn finish(mut self) -> KtapReport {
        while self.stack.len() > 1 {
            self.close_top(true);
        }
        let Some(mut root) = self.stack.pop() else {
            let mut problems = self.problems;
            problems.push("no KTAP or TAP output found".to_owned());
            return KtapReport {
                problems,
                bail_out: self.bail_out,
                ..KtapReport::default()
            };
        };
        if let Some(block) = root.block.take() {
            Self::synthesize(
                &mut root,
                block,
                "output ended",
                &mut self.problems,
                &mut self.incomplete,
            );
        }
        self.end_segment(&mut root);
        let plan = root.total_plan();
        if plan.is_none() {
            self.problems
                .push("no top-level plan: cannot tell whether all tests ran".to_owned());
            self.incomplete = true;
        }
        KtapReport {
            version: self.version,
            plan,
            tests: root.tests,
            diagnostics: root.pending,
            problems: self.problems,
            bail_out: self.bail_out,
            complete: !self.incomplete,
        }
    }
}

/// The cases of `text` as the domain's subtests, and a one-line summary, when `text` holds
/// KTAP or TAP output (a version line is required, so that ordinary output is never read as
/// results).
pub fn subtests_of(text: &str) -> Option<(Vec<Subtest>, String)> {
    if !has_version_line(text) {
        return None;
    }
    let report = parse(text);
    if report.tests.is_empty() {
        return None;
    }
    Some((subtests(&report), summary(&report)))
}

/// [`subtests_of`], with the suites the subtests are nested in ([`suites`]).
pub fn cases_of(text: &str) -> Option<(Vec<Subtest>, Vec<SubtestSuite>, String)> {
    if !has_version_line(text) {
        return None;
    }
    let report = parse(text);
    if report.tests.is_empty() {
        return None;
    }
    Some((subtests(&report), suites(&report), summary(&report)))
}

/// Whether `text` may hold (K)TAP output: it has a version line somewhere.
pub fn has_version_line(text: &str) -> bool {
    text.contains("KTAP version") || text.contains("TAP version")
}

/// What a counted test's outcome is as a subtest's status.
fn status_of(result: KtapResult) -> SubtestStatus {
    match result {
        KtapResult::Pass => SubtestStatus::Passed,
        KtapResult::Fail | KtapResult::Incomplete => SubtestStatus::Failed,
        KtapResult::Skip => SubtestStatus::Skipped,
        KtapResult::Todo => SubtestStatus::Todo,
    }
}

/// The message of a test: its directive's reason; for a failure, the first diagnostic that
/// says what failed (KUnit's `EXPECTATION FAILED at ...` and the line after it), else its first
/// diagnostic; for a test cut short, that it was.
fn message_of(t: &KtapTest) -> Option<String> {
    if let Some(reason) = t.directive.as_ref().and_then(Directive::reason) {
        return Some(reason.to_owned());
    }
    match t.result {
        KtapResult::Incomplete => Some(
            "cut short: no result line (the output stopped, or moved on, while it ran)".to_owned(),
        ),
        KtapResult::Fail => {
            let failed = t.diagnostics.iter().position(|d| d.contains("FAILED"));
            match failed {
                Some(i) => {
                    let mut m = t.diagnostics[i].trim().to_owned();
                    if let Some(next) = t.diagnostics.get(i + 1) {
                        m.push_str(": ");
                        m.push_str(next.trim());
                    }
                    Some(m)
                }
                None => t.diagnostics.first().cloned(),
            }
        }
        _ => None,
    }
}

/// The counted tests of `report` ([`KtapReport::cases`]) as the domain's subtests: each with
/// its suite path, status, message and duration.
pub fn subtests(report: &KtapReport) -> Vec<Subtest> {
    report
        .cases()
        .into_iter()
        .map(|(mut path, t)| {
            let name = path.join(".");
            path.pop();
            Subtest {
                name,
                status: status_of(t.result),
                message: message_of(t),
                suite: path,
                duration: t.duration,
            }
        })
        .collect()
}

/// The tests of `report` that have subtests ([`KtapReport::suites`]: KUnit suites,
/// parameterised cases) as the domain's suites, with their own results.
pub fn suites(report: &KtapReport) -> Vec<SubtestSuite> {
    fn leaves(t: &KtapTest) -> u32 {
        t.subtests
            .iter()
            .map(|s| {
                let own = u32::from(
                    s.subtests.is_empty() || (s.result.is_failure() && !s.has_failure_below()),
                );
                own + leaves(s)
            })
            .sum()
    }
    report
        .suites()
        .into_iter()
        .map(|(path, t)| SubtestSuite {
            name: path.join("."),
            status: status_of(t.result),
            message: message_of(t),
            cases: leaves(t),
            duration: t.duration,
        })
        .collect()
}

/// A one-line summary of `report`'s counts: `KTAP: 79 passed, 0 failed, 2 skipped, 0 todo`,
/// with the missing tests and `(incomplete)` when the output was cut short.
pub fn summary(report: &KtapReport) -> String {
    let c = report.counts();
    let mut summary = format!(
        "KTAP: {} passed, {} failed, {} skipped, {} todo",
        c.passed, c.failed, c.skipped, c.todo
    );
    if c.missing > 0 {
        summary.push_str(&format!(", {} missing", c.missing));
    }
    if !report.complete {
        summary.push_str(" (incomplete)");
    }
    summary
}

/// What keeps `report`, the KTAP of a kernel log, from judging a test that runs the kernel's
/// own tests (`kunit = true`) by its cases alone, if anything: no KTAP at all, no case at all,
/// or output cut short (a crash, a truncated log), with the problems found. A test with such a
/// problem fails, whatever its cases say.
pub fn kernel_log_problem(report: &KtapReport) -> Option<String> {
    if report.tests.is_empty() && report.plan.is_none() {
        return Some(
            "the kernel log holds no KTAP: the kernel ran no KUnit suite (is it built with \
             CONFIG_KUNIT and the suites' options, and did `kunit.enable`, \
             `kunit.filter_glob` or `kunit.action` keep them from running?)"
                .to_owned(),
        );
    }
    if report.tests.is_empty() && report.complete {
        return Some(
            "the kernel's KTAP announces no suite (`1..0`): no KUnit case ran (does \
             `kunit.filter_glob` match any suite?)"
                .to_owned(),
        );
    }
    if report.complete {
        return None;
    }
    const SHOWN: usize = 3;
    let mut problems: Vec<&str> = report
        .problems
        .iter()
        .map(String::as_str)
        .take(SHOWN)
        .collect();
    let more = report.problems.len().saturating_sub(SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    if problems.is_empty() {
        problems.push("cut short");
    }
    Some(format!(
        "the kernel's KTAP output is incomplete: {}{more}",
        problems.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ktap_strips_console_decoration() {
        assert_eq!(
            strip_console_decoration("[    1.234567]     ok 1 x"),
            "    ok 1 x"
        );
        assert_eq!(
            strip_console_decoration("<6>[    1.234567][    T1] KTAP version 1\r"),
            "KTAP version 1"
        );
        assert_eq!(strip_console_decoration("[1.5]x"), "x");
        assert_eq!(strip_console_decoration("[ cut here ] x"), "[ cut here ] x");
        assert_eq!(strip_console_decoration("<<>[."), "<<>[.");
    }

    #[test]
    fn ktap_classifies_lines() {
        assert_eq!(
            classify("KTAP version 1"),
            Line::Version(KtapVersion::Ktap(1))
        );
        assert_eq!(
            classify("TAP version 14"),
            Line::Version(KtapVersion::Tap(14))
        );
        assert_eq!(classify("TAP version 13 extra"), Line::Other);
        assert_eq!(classify("1..10"), Line::Plan(10, None));
        assert_eq!(
            classify("1..0 # SKIP no devices"),
            Line::Plan(0, Some("no devices".into()))
        );
        assert_eq!(classify("1..3 tests"), Line::Other);
        assert_eq!(classify("okay then"), Line::Other);
        assert_eq!(
            classify("# Subtest: example"),
            Line::Subtest("example".into())
        );
        assert_eq!(classify("#  note"), Line::Diagnostic(" note".into()));
        assert_eq!(
            classify("Bail out! no disk"),
            Line::BailOut("no disk".into())
        );
        assert_eq!(classify("---"), Line::YamlStart);
    }

    #[test]
    fn ktap_result_lines() {
        let r = parse_result("ok 3 foo bar # SKIP not here").unwrap();
        assert_eq!(r.number, Some(3));
        assert_eq!(r.name, "foo bar");
        assert_eq!(r.directive, Some(Directive::Skip(Some("not here".into()))));
        let r = parse_result("not ok 4 - bar # todo").unwrap();
        assert!(!r.ok);
        assert_eq!(r.name, "bar");
        assert_eq!(r.directive, Some(Directive::Todo(None)));
        let r = parse_result("ok - baz \\# qux # rcode=0").unwrap();
        assert_eq!(r.number, None);
        assert_eq!(r.name, "baz # qux");
        assert_eq!(r.directive, None);
        assert_eq!(r.data.as_deref(), Some("rcode=0"));
        let r = parse_result("not ok 1 t # TIMEOUT 45 seconds").unwrap();
        assert_eq!(
            r.directive,
            Some(Directive::Timeout(Some("45 seconds".into())))
        );
        let r = parse_result("ok 99999999999999999999 big").unwrap();
        assert_eq!(r.number, Some(u32::MAX));
        let r = parse_result("ok 2nd").unwrap();
        assert_eq!((r.number, r.name.as_str()), (None, "2nd"));
        assert!(parse_result("ok").is_some());
        assert!(parse_result("not okay").is_none());
    }

    #[test]
    fn ktap_skip_todo_semantics() {
        let report = parse(
            "TAP version 13\n1..5\nok 1 a\nnot ok 2 b\nok 3 c # SKIP later\n\
             not ok 4 d # TODO broken\nok 5 e # XFAIL\n",
        );
        assert!(report.complete, "{:?}", report.problems);
        let results: Vec<_> = report.tests.iter().map(|t| t.result).collect();
        use KtapResult::*;
        assert_eq!(results, [Pass, Fail, Skip, Todo, Todo]);
        let c = report.counts();
        assert_eq!(
            (c.passed, c.failed, c.skipped, c.todo, c.missing),
            (1, 1, 1, 2, 0)
        );
    }

    #[test]
    fn ktap_crash_marks_parent_incomplete() {
        let report = parse(
            "KTAP version 1\n1..1\n    KTAP version 1\n    # Subtest: s\n    1..3\n    ok 1 a\n",
        );
        assert!(!report.complete);
        assert_eq!(report.tests.len(), 1);
        assert_eq!(report.tests[0].result, KtapResult::Incomplete);
        assert_eq!(report.tests[0].name, "s");
        let c = report.counts();
        assert_eq!((c.passed, c.failed, c.missing), (1, 1, 2));
    }

    #[test]
    fn ktap_kunit_debugfs_results_start_nested() {
        let report = parse(
            "    KTAP version 1\n    # Subtest: example\n    1..2\n    ok 1 a\n    \
             not ok 2 b\nnot ok 1 example\n",
        );
        assert_eq!(report.tests.len(), 1);
        assert_eq!(report.tests[0].name, "example");
        assert_eq!(report.tests[0].subtests.len(), 2);
        let c = report.counts();
        assert_eq!((c.passed, c.failed), (1, 1));
    }

    #[test]
    fn ktap_empty_and_garbage() {
        let report = parse("");
        assert!(!report.complete);
        assert!(report.tests.is_empty());
        let report = parse("\u{0}\u{fffd}[\n<9999>\n[1.]\n1..\nnot\n#\n---\n...\n");
        assert!(report.tests.is_empty());
    }

    #[test]
    fn ktap_deep_nesting_is_bounded() {
        let text: String = (0..5000)
            .map(|i| format!("{}ok 1 x\n", " ".repeat(i)))
            .collect();
        let report = parse(&text);
        fn depth(t: &[KtapTest]) -> usize {
            t.iter().map(|t| 1 + depth(&t.subtests)).max().unwrap_or(0)
        }
        assert!(depth(&report.tests) <= MAX_DEPTH);
        let text: String = (0..5000)
            .rev()
            .map(|i| format!("{}ok 1 x\n", " ".repeat(i)))
            .collect();
        let report = parse(&text);
        assert!(depth(&report.tests) <= MAX_DEPTH + MAX_REROOTS);
        let text: String = (0..200)
            .map(|i| format!("{}TAP version 13\n", "# ".repeat(i)))
            .collect::<String>()
            + "ok 1 x\n";
        let _ = parse(&text);
    }

    #[test]
    fn ktap_subtests_directives_in_any_case() {
        let text = "TAP version 14\n1..8\nok 1 a\nnot ok 2 b\nnot ok 3 c # skip no disk\n\
                    not ok 4 d # SKIP\nnot ok 5 e # todo later\nnot ok 6 f # Todo\n\
                    not ok 7 g # XFail known\nnot ok 8 h # timeout 45 seconds\n";
        let (subtests, summary) = subtests_of(text).unwrap();
        use SubtestStatus::*;
        let got: Vec<(&str, SubtestStatus, Option<&str>)> = subtests
            .iter()
            .map(|t| (t.name.as_str(), t.status, t.message.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Passed, None),
                ("b", Failed, None),
                ("c", Skipped, Some("no disk")),
                ("d", Skipped, None),
                ("e", Todo, Some("later")),
                ("f", Todo, None),
                ("g", Todo, Some("known")),
                ("h", Failed, Some("45 seconds")),
            ]
        );
        assert_eq!(summary, "KTAP: 1 passed, 2 failed, 2 skipped, 3 todo");
        // Without a version line, output is never read as results.
        assert!(subtests_of("1..1\nnot ok 1 x\n").is_none());
    }

    /// A kernel log as busybox `dmesg` prints it: KUnit's suites, a parameterised case, skips,
    /// an expected failure, timestamps, and other kernel messages between them.
    const KERNEL_LOG: &str = "\
[    0.000000] Linux version 6.1.0 (builder@host) #1 SMP
[    0.310000] KTAP version 1
[    0.310100] 1..2
[    0.310200]     KTAP version 1
[    0.310300]     # Subtest: example
[    0.310400]     1..4
[    0.312400]     ok 1 example_simple_test
[    0.312500] random: crng init done
[    0.313000]     # example_skip_test: You should not see a line below.
[    0.313400]     ok 2 example_skip_test # SKIP this test should be skipped
[    0.313500]         KTAP version 1
[    0.313600]         # Subtest: example_params_test
[    0.314600]         ok 1 example value 3 # SKIP unsupported param value 3
[    0.315600]         ok 2 example value 2
[    0.315700]     # example_params_test: pass:1 fail:0 skip:1 total:2
[    0.315800]     ok 3 example_params_test
[    0.316800]     not ok 4 example_known_bug # XFAIL known
[    0.316900] # example: pass:2 fail:0 skip:2 total:4
[    0.317000] ok 1 example
[    0.317100]     KTAP version 1
[    0.317200]     # Subtest: list-kunit-test
[    0.317300]     1..1
[    0.319300]     ok 1 list_test_list_init
[    0.319400] ok 2 list-kunit-test
[    0.400000] Run /init as init process
";

    #[test]
    fn ktap_kernel_log_keeps_nesting_and_times() {
        let report = parse(KERNEL_LOG);
        assert!(report.complete, "{:?}", report.problems);
        let ms = |n: u64| Some(Duration::from_micros(n * 100));
        let cases: Vec<(Vec<String>, KtapResult, Option<Duration>)> = report
            .cases()
            .into_iter()
            .map(|(path, t)| (path, t.result, t.duration))
            .collect();
        let p = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        use KtapResult::*;
        assert_eq!(
            cases,
            [
                // From the suite's plan to the result line.
                (p(&["example", "example_simple_test"]), Pass, ms(20)),
                // From the previous result line: diagnostics do not move the start.
                (p(&["example", "example_skip_test"]), Skip, ms(10)),
                // A parameterised case's parameters, timed from the block's header.
                (
                    p(&["example", "example_params_test", "example value 3"]),
                    Skip,
                    ms(10)
                ),
                (
                    p(&["example", "example_params_test", "example value 2"]),
                    Pass,
                    ms(10)
                ),
                (p(&["example", "example_known_bug"]), Todo, ms(10)),
                (p(&["list-kunit-test", "list_test_list_init"]), Pass, ms(20)),
            ]
        );
        let suites: Vec<(String, KtapResult, Option<Duration>)> = report
            .suites()
            .into_iter()
            .map(|(path, t)| (path.join("."), t.result, t.duration))
            .collect();
        assert_eq!(
            suites,
            [
                ("example".to_owned(), Pass, ms(68)),
                ("example.example_params_test".to_owned(), Pass, ms(23)),
                ("list-kunit-test".to_owned(), Pass, ms(23)),
            ]
        );

        // As the domain's subtests and suites.
        let subtests = super::subtests(&report);
        assert_eq!(subtests.len(), 6);
        let param = &subtests[2];
        assert_eq!(param.name, "example.example_params_test.example value 3");
        assert_eq!(param.suite, ["example", "example_params_test"]);
        assert_eq!(param.case(), "example value 3");
        assert_eq!(param.status, SubtestStatus::Skipped);
        assert_eq!(param.message.as_deref(), Some("unsupported param value 3"));
        assert_eq!(subtests[4].status, SubtestStatus::Todo);
        assert_eq!(subtests[4].message.as_deref(), Some("known"));
        assert_eq!(subtests[5].suite, ["list-kunit-test"]);
        let suites = super::suites(&report);
        assert_eq!(
            suites
                .iter()
                .map(|s| (s.name.as_str(), s.status, s.cases))
                .collect::<Vec<_>>(),
            [
                ("example", SubtestStatus::Passed, 5),
                ("example.example_params_test", SubtestStatus::Passed, 2),
                ("list-kunit-test", SubtestStatus::Passed, 1),
            ]
        );
        assert_eq!(
            summary(&report),
            "KTAP: 3 passed, 0 failed, 2 skipped, 1 todo"
        );
        assert_eq!(kernel_log_problem(&report), None);
    }

    #[test]
    fn ktap_log_levels_and_timestamps_are_stripped_and_read() {
        assert_eq!(
            split_console_decoration("<6>[   12.000345][    T1]     ok 1 x"),
            (Some(Duration::new(12, 345_000)), "    ok 1 x")
        );
        assert_eq!(
            split_console_decoration("[1.5] x"),
            (Some(Duration::from_millis(1500)), "x")
        );
        assert_eq!(split_console_decoration("ok 1 x"), (None, "ok 1 x"));
        assert_eq!(timestamp("99999999999999999999.1"), None);
        assert_eq!(
            timestamp("1.1234567891234"),
            Some(Duration::new(1, 123_456_789))
        );
        // Without timestamps, no times.
        let report = parse("KTAP version 1\n1..1\nok 1 a\n");
        assert_eq!(report.tests[0].duration, None);
        // With a `kunit: ` prefix and log levels, as some consoles show them.
        let text: String = KERNEL_LOG
            .lines()
            .map(|l| match l.split_once("] ") {
                Some((ts, rest)) => format!("<6>{ts}] kunit: {rest}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        let prefixed = parse(&text);
        assert_eq!(prefixed.cases().len(), 6);
        assert_eq!(prefixed.counts(), parse(KERNEL_LOG).counts());
    }

    #[test]
    fn ktap_kernel_log_problems() {
        // No KTAP at all.
        let none =
            parse("[    0.000000] Linux version 6.1.0\n[    0.4] Run /init as init process\n");
        let problem = kernel_log_problem(&none).unwrap();
        assert!(problem.contains("no KTAP"), "{problem}");
        // A filter that matched nothing.
        let empty = parse("[    0.3] KTAP version 1\n[    0.3] 1..0\n");
        assert!(kernel_log_problem(&empty).unwrap().contains("1..0"));
        // Cut short in the middle of a suite (a crash): the suite fails, cut short, before
        // its cases; the missing cases are counted.
        let cut: String = KERNEL_LOG
            .lines()
            .take(9)
            .map(|l| format!("{l}\n"))
            .collect();
        let report = parse(&cut);
        assert!(!report.complete);
        let problem = kernel_log_problem(&report).unwrap();
        assert!(
            problem.starts_with("the kernel's KTAP output is incomplete: "),
            "{problem}"
        );
        assert!(
            problem.contains("no result line for 'example'"),
            "{problem}"
        );
        let subtests = super::subtests(&report);
        assert_eq!(subtests[0].name, "example");
        assert_eq!(subtests[0].status, SubtestStatus::Failed);
        assert!(
            subtests[0]
                .message
                .as_deref()
                .unwrap()
                .starts_with("cut short")
        );
        let c = report.counts();
        assert_eq!((c.passed, c.failed, c.missing), (1, 1, 3 + 1));
        // Every suite reported, but the plan announced more: incomplete, nothing failed.
        let missing = parse(
            "[ 0.1] KTAP version 1\n[ 0.1] 1..3\n[ 0.2]     KTAP version 1\n\
             [ 0.2]     # Subtest: s\n[ 0.2]     1..1\n[ 0.3]     ok 1 a\n[ 0.3] ok 1 s\n",
        );
        assert!(
            super::subtests(&missing)
                .iter()
                .all(|t| t.status == SubtestStatus::Passed)
        );
        assert!(
            kernel_log_problem(&missing)
                .unwrap()
                .contains("plan says 3 tests, 1 reported")
        );
        // A suite of a module loaded later joins the boot's, numbered on.
        let later = format!(
            "{KERNEL_LOG}[   30.000000]     KTAP version 1\n[   30.000100]     # Subtest: m\n\
             [   30.000200]     1..1\n[   30.500200]     not ok 1 c\n[   30.500300] not ok 3 m\n"
        );
        let report = parse(&later);
        assert!(report.complete, "{:?}", report.problems);
        assert_eq!(kernel_log_problem(&report), None);
        let subtests = super::subtests(&report);
        let last = subtests.last().unwrap();
        assert_eq!(
            (last.name.as_str(), last.status),
            ("m.c", SubtestStatus::Failed)
        );
        assert_eq!(last.duration, Some(Duration::from_millis(500)));
        assert_eq!(
            suites(&report)[3].duration,
            Some(Duration::from_micros(500_300))
        );
        // Later kernels print a module's suites as a run of their own (version line, plan).
        let later = format!(
            "{KERNEL_LOG}[   30.0] KTAP version 1\n[   30.0] 1..1\n[   30.0]     KTAP version 1\n\
             [   30.0]     # Subtest: m\n[   30.0]     1..1\n[   30.2]     ok 1 c\n\
             [   30.2] ok 1 m\n"
        );
        let report = parse(&later);
        assert!(
            report.complete && report.problems.is_empty(),
            "{:?}",
            report.problems
        );
        assert_eq!(report.plan, Some(3));
        let last = super::subtests(&report).pop().unwrap();
        assert_eq!(
            (last.name.as_str(), last.status),
            ("m.c", SubtestStatus::Passed)
        );
    }
}
