//! Plan files: a TOML description of a run — the tests, their requirements and the run's
//! settings.
//!
//! ```toml
//! name = "smoke"
//!
//! [run]
//! parallelism = 4
//! timeout = "30m"
//!
//! [defaults]
//! timeout = "30s"
//! tags = ["smoke"]
//!
//! [[test]]
//! id = "hello"
//! command = ["echo", "hello"]
//!
//! [[test]]
//! id = "boot-arm64"
//! script = "uname -m"
//! arch = "aarch64"
//! memory = "512MiB"
//! kernel = "images/Image"
//! ```
//!
//! A test with several architectures (`arch = ["x86_64", "aarch64"]`) runs once on each, as
//! `<id>@<arch>`. The `[store]` and `[monitor]` tables configure the artifact store and its
//! retention ([`StorePlan`], [`RetentionPlan`]) and the resource monitor ([`MonitorPlan`]);
//! they are data in [`PlanSettings`] for the program running the plan to apply.
//!
//! A runner with settings of its own reads its table through a [`Section`]: the QEMU runner's
//! `[qemu]` table is `qemu_runner::QemuPlan`, read when the plan is loaded with
//! `Loader::new().section::<QemuPlan>()` and found with [`Plan::section`]. The core knows
//! nothing of those tables: [`load`] and [`parse`] read plans with no section, and a table that
//! no registered section reads is an unknown table. Every table, the core's and a section's,
//! is declared key by key with [`plan_table!`](crate::plan_table) (a serde-derived struct
//! whose fields are the keys, with their value types ([`Count`], [`Seconds`], [`Size`],
//! [`Flag`], [`Text`]), example lines and default notes) and read with [`Table::read_with`],
//! so that every table words its messages alike.
//!
//! [`DEFAULT_PLAN`] is a commented reference of every key. Every table rejects keys it does not
//! know, and every value is checked before anything runs: [`load`] returns either a whole,
//! valid [`Plan`] or a [`PlanError`] that names the file, line, column and key, and says how to
//! fix the problem:
//!
//! ```text
//! plans/smoke.toml:12:1: unknown key `timout` in test `hello`
//!   help: did you mean `timeout`?
//! ```
//!
//! # Examples
//!
//! ```
//! use std::path::Path;
//! use orchestrator_core::plan;
//!
//! let text = r#"
//!     [defaults]
//!     timeout = "10s"
//!
//!     [[test]]
//!     id = "hello"
//!     command = ["echo", "hello"]
//! "#;
//! let plan = plan::parse(text, Path::new("smoke.toml"), Path::new("."))?;
//! assert_eq!(plan.cases[0].id.as_str(), "hello");
//! assert_eq!(plan.cases[0].timeout.as_secs(), 10);
//!
//! let err = plan::parse("[run]\nparallelism = 0\n", Path::new("smoke.toml"), Path::new("."))
//!     .unwrap_err();
//! assert!(err.to_string().starts_with("smoke.toml:2:15: `parallelism` in [run] must be at least 1"));
//! # Ok::<(), plan::PlanError>(())
//! ```

mod error;
mod parse;
mod section;
mod settings;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::case::TestCase;

pub use error::{Location, PlanError};
pub use parse::{ByHand, Count, Diag, Field, Flag, Seconds, Size, Table, Text, U32_MAX, arch_help};
pub use section::{Key, Section, Sections};
#[cfg(feature = "monitor")]
pub use settings::MonitorPlan;
#[cfg(feature = "store")]
pub use settings::{RetentionPlan, StorePlan};

/// A commented reference plan listing every key with its default; it parses into a valid plan
/// of a few tests that run anywhere with the host-process runner.
pub const DEFAULT_PLAN: &str = include_str!("../../default-plan.toml");

/// A checked plan file: the tests to run and how to run them.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The plan's name (the top-level `name` key).
    pub name: Option<String>,
    /// The run's settings: `[run]`, `[store]` and `[monitor]`.
    pub settings: PlanSettings,
    /// The tables read by the [`Section`]s the plan was loaded with; see [`Plan::section`].
    pub sections: Sections,
    /// The tests, in file order, with `[defaults]` applied. A test with several
    /// architectures (`arch = ["x86_64", "aarch64"]`) is one case per architecture, in the
    /// order given, with the id `<id>@<arch>`.
    pub cases: Vec<TestCase>,
    /// The file the plan was read from, as given.
    pub source: PathBuf,
}

impl Plan {
    /// The settings of section `S` (`[qemu]` for `qemu_runner::QemuPlan`), if the plan has its
    /// table. The plan must have been loaded with the section registered ([`Loader::section`]).
    pub fn section<S: Section>(&self) -> Option<&S> {
        self.sections.get::<S>()
    }
}

/// How the plan wants to be run: the `[run]` table, and the `[store]` and `[monitor]` tables.
/// `None` leaves a setting, or a whole table, to the program running the plan.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanSettings {
    /// How many tests run at once (`parallelism`, at least 1).
    pub parallelism: Option<usize>,
    /// Deadline of the whole run (`timeout`, greater than zero).
    pub timeout: Option<Duration>,
    /// How many times a test ending in an infrastructure error is retried (`retries`, 0 to 10,
    /// default 0). Test failures are never retried.
    pub retries: u32,
    /// How long a test gets between SIGTERM and SIGKILL when it is stopped (`kill-grace`,
    /// greater than zero).
    pub kill_grace: Option<Duration>,
    /// How many bytes of each output stream are kept per test (`output-limit`, at least 1024).
    pub output_limit: Option<usize>,
    /// Where artifacts are stored and how long they are kept: the `[store]` table.
    #[cfg(feature = "store")]
    pub store: Option<StorePlan>,
    /// How the host processes of each test are monitored: the `[monitor]` table.
    #[cfg(feature = "monitor")]
    pub monitor: Option<MonitorPlan>,
}

/// Reads plans with the tables of some [`Section`]s besides the core's.
///
/// ```
/// use std::path::Path;
/// use orchestrator_core::plan::Loader;
///
/// let plan = Loader::new().parse(
///     "[[test]]\nid = \"a\"\nscript = \"true\"\n",
///     Path::new("p.toml"),
///     Path::new("."),
/// )?;
/// assert!(plan.sections.names().next().is_none());
/// # Ok::<(), orchestrator_core::plan::PlanError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Loader {
    sections: Vec<section::Registered>,
}

impl Loader {
    /// A loader of the core's tables only, as [`load`] and [`parse`].
    pub fn new() -> Self {
        Loader::default()
    }

    /// Also reads section `S`'s table.
    ///
    /// # Panics
    ///
    /// If `S`'s table has the name of a table of the core or of a section already registered.
    #[must_use]
    pub fn section<S: Section>(mut self) -> Self {
        const CORE: &[&str] = &["name", "run", "defaults", "test", "store", "monitor"];
        assert!(
            !CORE.contains(&S::NAME) && !self.sections.iter().any(|s| s.name == S::NAME),
            "the plan already has a `{}` table",
            S::NAME
        );
        self.sections.push(section::Registered::of::<S>());
        self
    }

    /// Reads and checks a plan file. Relative paths in it (`files` sources, `kernel`) are
    /// resolved against the directory of `path`, as given: a relative `path` yields paths
    /// relative to the current directory.
    pub fn load(&self, path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|error| PlanError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base_dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        self.parse(&text, path, base_dir)
    }

    /// Checks a plan held in memory. `path` names the plan in messages and becomes
    /// [`Plan::source`]; relative paths in the plan are resolved against `base_dir`, and
    /// `files` sources must exist there.
    pub fn parse(&self, text: &str, path: &Path, base_dir: &Path) -> Result<Plan, PlanError> {
        match parse::document(text, base_dir, &self.sections) {
            Ok(parsed) => Ok(Plan {
                name: parsed.name,
                settings: parsed.settings,
                sections: parsed.sections,
                cases: parsed.cases,
                source: path.to_path_buf(),
            }),
            Err(diag) => Err(located(diag, text, path)),
        }
    }
}

/// `diag` with the file, line and column of its span.
fn located(diag: Diag, text: &str, path: &Path) -> PlanError {
    let location = Location::from_offset(path, text, diag.span.start);
    if diag.syntax {
        PlanError::Syntax {
            location,
            key: diag.key,
            message: diag.message,
            help: diag.help,
        }
    } else {
        PlanError::Invalid {
            location,
            key: diag.key.unwrap_or_default(),
            message: diag.message,
            help: diag.help,
        }
    }
}

/// Reads and checks a plan file with the core's tables only (see [`Loader`] for the tables
/// of runners). Relative paths in it (`files` sources, `kernel`) are resolved against the
/// directory of `path`, as given: a relative `path` yields paths relative to the current
/// directory.
pub fn load(path: &Path) -> Result<Plan, PlanError> {
    Loader::new().load(path)
}

/// Checks a plan held in memory, with the core's tables only (see [`Loader`]). `path` names
/// the plan in messages and becomes [`Plan::source`]; relative paths in the plan are resolved
/// against `base_dir`, and `files` sources must exist there.
pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Plan, PlanError> {
    Loader::new().parse(text, path, base_dir)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    #[cfg(feature = "store")]
    use crate::artifact_store;
    use crate::case::{Arch, Command, DEFAULT_TIMEOUT, Expectation, FileSpec, Requirements};

    fn parse_ok(text: &str) -> Plan {
        parse(text, Path::new("test.toml"), Path::new("."))
            .unwrap_or_else(|e| panic!("plan should parse:\n{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("test.toml"), Path::new("."))
            .expect_err("plan should be rejected")
            .to_string()
    }

    #[test]
    fn minimal_plan_uses_defaults() {
        let plan = parse_ok("[[test]]\nid = \"a\"\ncommand = [\"echo\", \"hi\"]\n");
        assert_eq!(plan.name, None);
        assert_eq!(plan.settings, PlanSettings::default());
        assert_eq!(plan.source, Path::new("test.toml"));
        let case = &plan.cases[0];
        assert_eq!(case.id.as_str(), "a");
        assert_eq!(case.name, "a");
        assert_eq!(case.command, Command::exec(["echo", "hi"]).unwrap());
        assert_eq!(case.timeout, DEFAULT_TIMEOUT);
        assert_eq!(case.expect, Expectation::Pass);
        assert!(case.requirements.is_empty());
        assert!(case.files.is_empty() && case.env.is_empty() && case.tags.is_empty());
        assert_eq!(case.runner, None);
    }

    #[test]
    // Without `store` and `monitor`, these are all of the settings.
    #[cfg_attr(
        not(all(feature = "store", feature = "monitor")),
        allow(clippy::needless_update)
    )]
    fn run_settings() {
        let plan = parse_ok(
            r#"
            name = "nightly"
            [run]
            parallelism = 3
            timeout = "1h 30m"
            retries = 2
            kill-grace = 2.5
            output-limit = "64KiB"
            [[test]]
            id = "a"
            script = "true"
            "#,
        );
        assert_eq!(plan.name.as_deref(), Some("nightly"));
        assert_eq!(
            plan.settings,
            PlanSettings {
                parallelism: Some(3),
                timeout: Some(Duration::from_secs(90 * 60)),
                retries: 2,
                kill_grace: Some(Duration::from_millis(2500)),
                output_limit: Some(64 * 1024),
                ..PlanSettings::default()
            }
        );
        let plan = parse_ok("run.output-limit = 4096\n[[test]]\nid = \"a\"\nscript = \"true\"\n");
        assert_eq!(plan.settings.output_limit, Some(4096));
    }

    #[test]
    fn defaults_are_merged_into_tests() {
        let plan = parse_ok(
            r#"
            [defaults]
            timeout = "5s"
            env = { A = "from-defaults", B = "from-defaults" }
            tags = ["nightly", "shared"]
            runner = "qemu"
            shell = ["bash", "-eu"]
            arch = "arm64"
            memory = "1GiB"
            cpus = 2
            kernel = "images/Image"
            modules = ["virtio_console"]
            artifacts = ["*.log"]
            expect = "fail"

            [[test]]
            id = "inherits"
            script = "echo hi"

            [[test]]
            id = "overrides"
            name = "Overrides everything"
            script = "echo hi"
            timeout = 7
            env = { B = "from-test", C = "from-test" }
            tags = ["shared", "own"]
            runner = "process"
            shell = ["sh"]
            arch = "x86_64"
            memory = 256
            cpus = 1
            kernel = "/abs/bzImage"
            modules = ["test-bpf"]
            artifacts = ["out/**"]
            expect = "pass"

            [[test]]
            id = "exec"
            command = ["true"]
            "#,
        );
        let [inherits, overrides, exec] = &plan.cases[..] else {
            panic!("expected three tests");
        };

        assert_eq!(inherits.timeout, Duration::from_secs(5));
        assert_eq!(
            inherits.env,
            BTreeMap::from([
                ("A".to_owned(), "from-defaults".to_owned()),
                ("B".to_owned(), "from-defaults".to_owned()),
            ])
        );
        assert_eq!(inherits.tags, ["nightly", "shared"]);
        assert_eq!(inherits.runner.as_deref(), Some("qemu"));
        assert_eq!(
            inherits.command,
            Command::Script {
                shell: vec!["bash".into(), "-eu".into()],
                body: "echo hi".into()
            }
        );
        assert_eq!(
            inherits.requirements,
            Requirements {
                arch: Some(Arch::Aarch64),
                memory_mib: Some(1024),
                cpus: Some(2),
                kernel: Some(PathBuf::from("./images/Image")),
                modules: vec!["virtio_console".to_owned()],
                vmcore: false,
                modules_dir: None,
                rootfs: None,
                kunit: false,
                kernel_args: Vec::new(),
                isolated: false,
            }
        );
        assert_eq!(inherits.artifacts, ["*.log"]);
        assert_eq!(inherits.expect, Expectation::Fail);

        assert_eq!(overrides.name, "Overrides everything");
        assert_eq!(overrides.timeout, Duration::from_secs(7));
        assert_eq!(
            overrides.env,
            BTreeMap::from([
                ("A".to_owned(), "from-defaults".to_owned()),
                ("B".to_owned(), "from-test".to_owned()),
                ("C".to_owned(), "from-test".to_owned()),
            ])
        );
        assert_eq!(overrides.tags, ["nightly", "shared", "own"]);
        assert_eq!(overrides.runner.as_deref(), Some("process"));
        assert_eq!(
            overrides.command,
            Command::Script {
                shell: vec!["sh".into()],
                body: "echo hi".into()
            }
        );
        assert_eq!(
            overrides.requirements,
            Requirements {
                arch: Some(Arch::X86_64),
                memory_mib: Some(256),
                cpus: Some(1),
                kernel: Some(PathBuf::from("/abs/bzImage")),
                modules: vec!["virtio_console".to_owned(), "test_bpf".to_owned()],
                vmcore: false,
                modules_dir: None,
                rootfs: None,
                kunit: false,
                kernel_args: Vec::new(),
                isolated: false,
            }
        );
        assert_eq!(overrides.artifacts, ["*.log", "out/**"]);
        assert_eq!(overrides.expect, Expectation::Pass);

        // A `shell` in [defaults] does not stop a test from using `command`.
        assert_eq!(exec.command, Command::exec(["true"]).unwrap());
    }

    #[test]
    fn vmcore_comes_from_defaults_unless_a_test_sets_it() {
        let plan = parse_ok(
            "[defaults]\nvmcore = true\n[[test]]\nid = \"a\"\nscript = \"true\"\n\
             [[test]]\nid = \"b\"\nscript = \"true\"\nvmcore = false\n",
        );
        let vmcore: Vec<bool> = plan.cases.iter().map(|c| c.requirements.vmcore).collect();
        assert_eq!(vmcore, [true, false]);
        let plan = parse_ok("[[test]]\nid = \"a\"\nscript = \"true\"\n");
        assert!(!plan.cases[0].requirements.vmcore);
    }

    #[test]
    fn rootfs_is_relative_to_the_plan_and_inherited() {
        let text = "[defaults]\nrootfs = \"roots/bookworm\"\n\
                    [[test]]\nid = \"a\"\nscript = \"true\"\n\
                    [[test]]\nid = \"b\"\nscript = \"true\"\nrootfs = \"/abs/root.ext4\"\n";
        let plan = parse(text, Path::new("plan.toml"), Path::new("base")).unwrap();
        assert_eq!(
            plan.cases[0].requirements.rootfs.as_deref(),
            Some(Path::new("base/roots/bookworm"))
        );
        assert_eq!(
            plan.cases[1].requirements.rootfs.as_deref(),
            Some(Path::new("/abs/root.ext4"))
        );
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\nrootfs = \" \"\n");
        assert!(err.contains("rootfs"), "{err}");
    }

    #[test]
    fn kunit_tests_need_no_command_and_take_kernel_args() {
        let plan = parse_ok(
            r#"
            [[test]]
            id = "kunit"
            kernel = "kunit/bzImage"
            kunit = true
            kernel-args = ["kunit.filter_glob=list*"]

            [[test]]
            id = "module"
            kunit = true
            modules = ["list_test"]
            script = "cat /proc/modules"

            [[test]]
            id = "plain"
            script = "true"
            "#,
        );
        let [kunit, module, plain] = &plan.cases[..] else {
            panic!("expected three tests");
        };
        assert!(kunit.requirements.kunit && module.requirements.kunit);
        assert!(!plain.requirements.kunit && plain.requirements.is_empty());
        // Nothing to run but the kernel's own tests.
        assert_eq!(kunit.command, Command::script(""));
        assert_eq!(kunit.requirements.kernel_args, ["kunit.filter_glob=list*"]);
        assert_eq!(module.command, Command::script("cat /proc/modules"));
        assert!(module.requirements.kernel_args.is_empty());

        // From [defaults], wherever it is in the file; a test's own arguments come after.
        let plan = parse_ok(
            r#"
            [[test]]
            id = "a"
            kernel-args = ["kunit.filter_glob=example*"]

            [defaults]
            kunit = true
            kernel-args = ["kunit.enable=1"]
            "#,
        );
        let a = &plan.cases[0];
        assert!(a.requirements.kunit);
        assert_eq!(
            a.requirements.kernel_args,
            ["kunit.enable=1", "kunit.filter_glob=example*"]
        );

        // Without `kunit`, a test still needs something to run.
        for text in [
            "[[test]]\nid = \"a\"\n",
            "[[test]]\nid = \"a\"\nkunit = false\n",
            "[defaults]\nkunit = false\n[[test]]\nid = \"a\"\n",
        ] {
            let err = parse_err(text);
            assert!(err.contains("has neither `command` nor `script`"), "{err}");
        }
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\nkunit = \"yes\"\n");
        assert!(err.contains("`kunit`"), "{err}");
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\nkernel-args = [\" \"]\n");
        assert!(err.contains("an entry of `kernel-args`"), "{err}");
        assert!(err.contains("is blank"), "{err}");
    }

    #[test]
    fn script_uses_default_shell() {
        let plan = parse_ok("[[test]]\nid = \"s\"\nscript = \"\"\"\necho one\necho two\n\"\"\"\n");
        assert_eq!(
            plan.cases[0].command,
            Command::Script {
                shell: Command::default_shell(),
                body: "echo one\necho two\n".into()
            }
        );
    }

    #[test]
    fn durations() {
        let timeout = |value: &str| {
            let plan = parse_ok(&format!(
                "[[test]]\nid = \"a\"\nscript = \"true\"\ntimeout = {value}\n"
            ));
            plan.cases[0].timeout
        };
        assert_eq!(timeout("\"30s\""), Duration::from_secs(30));
        assert_eq!(timeout("\"1m 30s\""), Duration::from_secs(90));
        assert_eq!(timeout("\"250ms\""), Duration::from_millis(250));
        assert_eq!(timeout("\"2h\""), Duration::from_secs(7200));
        assert_eq!(timeout("45"), Duration::from_secs(45));
        assert_eq!(timeout("0.5"), Duration::from_millis(500));

        for bad in ["0", "-3", "0.0", "-0.5", "\"0s\"", "\"-5s\"", "nan"] {
            let err = parse_err(&format!(
                "[[test]]\nid = \"a\"\nscript = \"true\"\ntimeout = {bad}\n"
            ));
            assert!(
                err.starts_with("test.toml:4:11: `timeout` in test `a` must be greater than zero"),
                "{bad}: {err}"
            );
        }
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\ntimeout = \"5 parsecs\"\n");
        assert!(err.contains("is not a valid duration"), "{err}");
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\ntimeout = true\n");
        assert!(
            err.contains(
                "must be a duration such as \"30s\" or a number of seconds, not the boolean `true`"
            ),
            "{err}"
        );
    }

    #[test]
    fn memory_units() {
        let memory = |value: &str| {
            let plan = parse_ok(&format!(
                "[[test]]\nid = \"a\"\nscript = \"true\"\nmemory = {value}\n"
            ));
            plan.cases[0].requirements.memory_mib
        };
        assert_eq!(memory("512"), Some(512));
        assert_eq!(memory("\"512MiB\""), Some(512));
        assert_eq!(memory("\"512M\""), Some(512));
        assert_eq!(memory("\"2GiB\""), Some(2048));
        assert_eq!(memory("\"2 G\""), Some(2048));
        assert_eq!(memory("\"1048576KiB\""), Some(1024));

        for (bad, says) in [
            ("0", "must be at least 1"),
            ("\"0MiB\"", "must be greater than zero"),
            ("\"1536KiB\"", "must be a whole number of MiB"),
            ("\"512MB\"", "is ambiguous"),
            ("\"1.5GiB\"", "only whole numbers"),
            ("\"512\"", "has no unit"),
            ("\"4096TiB\"", "is too large"),
            (
                "true",
                "must be a size such as \"512MiB\" or a number of MiB",
            ),
        ] {
            let err = parse_err(&format!(
                "[[test]]\nid = \"a\"\nscript = \"true\"\nmemory = {bad}\n"
            ));
            assert!(err.starts_with("test.toml:4:10: "), "{bad}: {err}");
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn output_limit_units() {
        let limit = |value: &str| {
            parse_ok(&format!(
                "[run]\noutput-limit = {value}\n[[test]]\nid = \"a\"\nscript = \"true\"\n"
            ))
            .settings
            .output_limit
        };
        assert_eq!(limit("\"1MiB\""), Some(1 << 20));
        assert_eq!(limit("\"64KiB\""), Some(64 << 10));
        assert_eq!(limit("1024"), Some(1024));
        let err =
            parse_err("[run]\noutput-limit = 1000\n[[test]]\nid = \"a\"\nscript = \"true\"\n");
        assert!(
            err.contains("must be at least 1KiB (1024 bytes), not 1000 bytes"),
            "{err}"
        );
    }

    #[test]
    fn both_forms_of_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(dir.path().join("data/in.txt"), "x").unwrap();
        std::fs::write(dir.path().join("data/x"), "x").unwrap();
        let text = r#"
            [[test]]
            id = "files"
            command = ["cat", "in.txt"]
            files = [
                "data/in.txt",
                { source = "data/x", dest = "./sub/x" },
                { source = "data/x" },
            ]

            [[test]]
            id = "table-files"
            command = ["true"]
            [[test.files]]
            source = "data/in.txt"
            dest = "again.txt"
        "#;
        let plan = parse(text, Path::new("plan.toml"), dir.path()).unwrap();
        assert_eq!(
            plan.cases[0].files,
            [
                FileSpec {
                    source: dir.path().join("data/in.txt"),
                    dest: "in.txt".into()
                },
                FileSpec {
                    source: dir.path().join("data/x"),
                    dest: "sub/x".into()
                },
                FileSpec {
                    source: dir.path().join("data/x"),
                    dest: "x".into()
                },
            ]
        );
        assert_eq!(
            plan.cases[1].files,
            [FileSpec {
                source: dir.path().join("data/in.txt"),
                dest: "again.txt".into()
            }]
        );

        let err = parse(
            "[[test]]\nid = \"a\"\nscript = \"true\"\nfiles = [\"data/x\", { source = \"data/in.txt\", dest = \"x\" }]\n",
            Path::new("plan.toml"),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("plan.toml:4:53: two `files` entries in test `a` are copied to `x`"),
            "{err}"
        );
    }

    #[test]
    fn load_resolves_against_the_plan_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("plans")).unwrap();
        std::fs::write(dir.path().join("plans/input.txt"), "x").unwrap();
        let path = dir.path().join("plans/p.toml");
        std::fs::write(
            &path,
            "[[test]]\nid = \"a\"\ncommand = [\"true\"]\nfiles = [\"input.txt\"]\nkernel = \"bzImage\"\n",
        )
        .unwrap();
        let plan = load(&path).unwrap();
        assert_eq!(plan.source, path);
        assert_eq!(
            plan.cases[0].files[0].source,
            dir.path().join("plans/input.txt")
        );
        assert_eq!(
            plan.cases[0].requirements.kernel.as_deref(),
            Some(dir.path().join("plans/bzImage").as_path())
        );
    }

    #[test]
    fn modules_dir_is_inherited_and_resolved_against_the_plan_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[defaults]\nkernel = \"a/bzImage\"\nmodules-dir = \"a/modules\"\n\
             [[test]]\nid = \"inherits\"\nscript = \"true\"\nmodules = [\"kunit-example-test\"]\n\
             [[test]]\nid = \"own\"\nscript = \"true\"\nmodules-dir = \"/abs/lib/modules/6.1.0\"\n",
        )
        .unwrap();
        let plan = load(&path).unwrap();
        let req = &plan.cases[0].requirements;
        assert_eq!(
            req.modules_dir.as_deref(),
            Some(dir.path().join("a/modules").as_path())
        );
        assert_eq!(req.modules, ["kunit_example_test"]);
        assert_eq!(
            plan.cases[1].requirements.modules_dir.as_deref(),
            Some(Path::new("/abs/lib/modules/6.1.0"))
        );
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\nmodules-dir = 3\n");
        assert!(err.contains("`modules-dir`"), "{err}");
    }

    #[test]
    fn errors_expose_their_parts() {
        let err = parse(
            "[[test]]\nid = \"a\"\nscript = \"true\"\ntimout = \"5s\"\n",
            Path::new("p.toml"),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(
            err.location(),
            Some(&Location {
                path: "p.toml".into(),
                line: 4,
                column: 1
            })
        );
        assert_eq!(err.key(), Some("test.timout"));
        assert_eq!(err.help(), Some("did you mean `timeout`?"));
        assert_eq!(
            err.to_string(),
            "p.toml:4:1: unknown key `timout` in test `a`\n  help: did you mean `timeout`?"
        );
    }

    #[test]
    fn the_first_problem_in_the_file_is_reported() {
        let err = parse_err(
            "[[test]]\nid = \"a\"\nscript = \"true\"\ncpus = 0\n[run]\nparallelism = 0\n",
        );
        assert!(
            err.starts_with("test.toml:4:8: `cpus` in test `a`"),
            "{err}"
        );
    }

    #[cfg(any(feature = "store", feature = "monitor"))]
    const TEST: &str = "[[test]]\nid = \"t\"\nscript = \"true\"\n";

    #[test]
    fn arch_arrays_fan_out() {
        let plan = parse_ok(
            r#"
            [defaults]
            arch = ["x86_64", "arm64"]

            [[test]]
            id = "inherits"
            script = "uname -m"

            [[test]]
            id = "single"
            name = "One architecture"
            script = "uname -m"
            arch = "riscv64"

            [[test]]
            id = "named"
            name = "Several architectures"
            script = "uname -m"
            arch = ["riscv64", "armhf", "x86_64"]

            [[test]]
            id = "one-of-one"
            script = "uname -m"
            arch = ["aarch64"]
            "#,
        );
        let summary: Vec<(&str, &str, Option<Arch>)> = plan
            .cases
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.requirements.arch))
            .collect();
        assert_eq!(
            summary,
            [
                ("inherits@x86_64", "inherits@x86_64", Some(Arch::X86_64)),
                ("inherits@aarch64", "inherits@aarch64", Some(Arch::Aarch64)),
                ("single", "One architecture", Some(Arch::Riscv64)),
                (
                    "named@riscv64",
                    "Several architectures",
                    Some(Arch::Riscv64)
                ),
                ("named@armv7", "Several architectures", Some(Arch::Armv7)),
                ("named@x86_64", "Several architectures", Some(Arch::X86_64)),
                (
                    "one-of-one@aarch64",
                    "one-of-one@aarch64",
                    Some(Arch::Aarch64)
                ),
            ]
        );
        // Everything else is the same in every copy.
        assert_eq!(plan.cases[3].command, plan.cases[4].command);

        // [defaults] after the tests still applies.
        let plan = parse_ok(
            "[[test]]\nid = \"a\"\nscript = \"true\"\n[defaults]\narch = [\"armv7\", \"riscv64\"]\n",
        );
        let ids: Vec<&str> = plan.cases.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a@armv7", "a@riscv64"]);
    }

    #[test]
    fn arch_array_errors() {
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\narch = []\n");
        assert!(
            err.starts_with("test.toml:4:8: `arch` in test `a` is an empty array"),
            "{err}"
        );
        let err = parse_err(
            "[defaults]\narch = [\"x86_64\", \"x86_64\"]\n[[test]]\nid = \"a\"\nscript = \"true\"\n",
        );
        assert!(
            err.starts_with("test.toml:2:19: `arch` in [defaults] lists x86_64 twice\n"),
            "{err}"
        );
        let err =
            parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\narch = [\"x86_64\", \"mips\"]\n");
        assert!(
            err.starts_with(
                "test.toml:4:19: `arch` in test `a` is not a supported architecture: \"mips\""
            ),
            "{err}"
        );
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\narch = [\"x86_64\", 64]\n");
        assert!(
            err.starts_with("test.toml:4:19: each entry of `arch` in test `a` must be a string, not the integer 64"),
            "{err}"
        );
        let err = parse_err("[[test]]\nid = \"a\"\nscript = \"true\"\narch = 64\n");
        assert!(
            err.contains("must be an architecture name or an array of them, not the integer 64"),
            "{err}"
        );

        // Expanded ids are unique too, whichever comes first.
        let err = parse_err(
            "[[test]]\nid = \"a\"\nscript = \"true\"\narch = [\"x86_64\", \"aarch64\"]\n\
             [[test]]\nid = \"a@aarch64\"\nscript = \"true\"\n",
        );
        assert!(
            err.starts_with(
                "test.toml:6:6: duplicate test id `a@aarch64`: test `a` on line 2 already uses \
                 it on aarch64"
            ),
            "{err}"
        );
        let err = parse_err(
            "[defaults]\narch = [\"amd64\"]\n[[test]]\nid = \"a@x86_64\"\nscript = \"true\"\narch = \"x86_64\"\n\
             [[test]]\nid = \"a\"\nscript = \"true\"\n",
        );
        assert!(
            err.starts_with(
                "test.toml:8:6: test `a` on x86_64 gets the id `a@x86_64`, which the test on \
                 line 4 already uses"
            ),
            "{err}"
        );

        // An id that becomes too long.
        let long = "x".repeat(125);
        let err = parse_err(&format!(
            "[[test]]\nid = \"{long}\"\nscript = \"true\"\narch = [\"armv7\", \"aarch64\"]\n"
        ));
        assert!(err.starts_with("test.toml:2:6: "), "{err}");
        assert!(err.contains("is longer than 128 characters"), "{err}");
        assert!(
            err.contains("shorten the id to at most 120 characters"),
            "{err}"
        );
    }

    #[cfg(feature = "store")]
    #[test]
    fn durations_accept_days_and_weeks() {
        let plan = parse_ok(&format!(
            "[store]\npath = \"s\"\n[store.retention]\nmax-age = \"7d\"\nkeep-passes-for = \"2w\"\n\
             keep-failures-for = \"1day 12h\"\n{TEST}"
        ));
        let rules = plan.settings.store.unwrap().retention.unwrap();
        assert_eq!(rules.max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            rules.keep_passes_for,
            Some(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(
            rules.keep_failures_for,
            Some(Duration::from_secs(36 * 3_600))
        );
    }

    #[cfg(feature = "store")]
    #[test]
    fn store_table() {
        let plan = parse(
            &format!("[store]\npath = \"store\"\n{TEST}"),
            Path::new("plans/p.toml"),
            Path::new("plans"),
        )
        .unwrap();
        assert_eq!(plan.settings.store, Some(StorePlan::new("plans/store")));
        let plan = parse_ok(&format!(
            "[store]\npath = \"/var/lib/store\"\ndurability = \"fsync\"\n[store.retention]\n{TEST}"
        ));
        let store = plan.settings.store.unwrap();
        assert_eq!(store.path, Path::new("/var/lib/store"));
        assert_eq!(store.durability, artifact_store::Durability::Fsync);
        assert_eq!(store.retention, Some(RetentionPlan::default()));
        // Dotted keys work as well as tables.
        let plan = parse_ok(&format!(
            "store.path = \"s\"\nstore.retention.kind-max-age.log = \"1h\"\n{TEST}"
        ));
        let rules = plan.settings.store.unwrap().retention.unwrap();
        assert_eq!(
            rules.kind_max_age,
            BTreeMap::from([(artifact_store::ArtifactKind::Log, Duration::from_secs(3600))])
        );
    }

    #[cfg(feature = "store")]
    #[test]
    fn store_errors() {
        for (table, says) in [
            (
                "[store.retention]\nmax-age = \"1d\"\n",
                "test.toml:1:2: [store] has no `path`",
            ),
            (
                "[store]\npath = \"\"\n",
                "test.toml:2:8: `path` in [store] is empty",
            ),
            (
                "[store]\npath = \"s\"\ndurability = \"sync\"\n",
                "test.toml:3:14: `durability` in [store] must be \"fsync\" or \"relaxed\", not \"sync\"\n  help: did you mean \"fsync\"?",
            ),
            (
                "[store]\npath = \"s\"\nretention = []\n",
                "test.toml:3:13: `retention` in [store] must be a table, not an array",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nkeep-last-runs = 0\n",
                "test.toml:4:18: `keep-last-runs` in [store.retention] must be at least 1, not 0",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nmax-total-size = \"1GB\"\n",
                "test.toml:4:18: `max-total-size` in [store.retention] is not a valid size: `GB` is ambiguous",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nkind-max-age = { log = \"forever\" }\n",
                "test.toml:4:24: `log` in `kind-max-age` of [store.retention] is not a valid duration",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nkind-max-age = { blob = \"1d\" }\n",
                "test.toml:4:18: unknown kind of artifact `blob` in `kind-max-age` of [store.retention]\n  help: the kinds are `log`, `console`, `core-dump`, `trace`, `screenshot`, `metrics`, `other`, `result` and `report`",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nkind-budgets = { core_dump = 10 }\n",
                "test.toml:4:18: unknown kind of artifact `core_dump` in `kind-budgets` of [store.retention]\n  help: did you mean `core-dump`?",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nkind-budgets = \"1GiB\"\n",
                "test.toml:4:16: `kind-budgets` in [store.retention] must be a table, not the string \"1GiB\"\n  help: for example: `kind-budgets = { core-dump = \"1GiB\" }`",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nlast-passing-run = 1\n",
                "test.toml:4:20: `last-passing-run` in [store.retention] must be `true` or `false`, not the integer 1",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\npin-tags = [\"release\", \"\"]\n",
                "test.toml:4:24: an entry of `pin-tags` in [store.retention] is empty",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\nmax-age = \"7d\"\nmaxage = 1\n",
                "test.toml:5:1: unknown key `maxage` in [store.retention]\n  help: did you mean `max-age`?",
            ),
            (
                "[store]\npath = \"s\"\n[store.retention]\ndurability = \"fsync\"\n",
                "test.toml:4:1: unknown key `durability` in [store.retention]\n  help: `durability` is a setting of the artifact store: move it into the [store] table",
            ),
        ] {
            let err = parse_err(&format!("{table}{TEST}"));
            assert!(err.starts_with(says), "{table}:\n{err}");
        }
    }

    #[cfg(feature = "monitor")]
    #[test]
    fn monitor_table() {
        let plan = parse_ok(&format!(
            "[monitor]\nenabled = false\ninterval = 0.01\ntop-processes = 0\n{TEST}"
        ));
        let monitor = plan.settings.monitor.unwrap();
        assert!(!monitor.enabled);
        assert_eq!(monitor.interval, Duration::from_millis(10));
        assert_eq!(monitor.top_processes, 0);
        assert_eq!(monitor.config().top_processes, 0);
        for (table, says) in [
            (
                "[monitor]\ninterval = 0.005\n",
                "test.toml:2:12: `interval` in [monitor] must be at least 10ms, not 5ms",
            ),
            (
                "[monitor]\nenabled = \"false\"\n",
                "test.toml:2:11: `enabled` in [monitor] must be `true` or `false`, not the string \"false\"\n  help: remove the quotes: `enabled = false`",
            ),
            (
                "[monitor]\nintervall = \"1s\"\n",
                "test.toml:2:1: unknown key `intervall` in [monitor]\n  help: did you mean `interval`?",
            ),
            (
                "[monitor]\ntop-processes = 101\n",
                "test.toml:2:17: `top-processes` in [monitor]",
            ),
            (
                "interval = \"1s\"\n",
                "test.toml:1:1: unknown key `interval` at the top level of the plan\n  help: `interval` is a setting of the monitor: move it into the [monitor] table",
            ),
        ] {
            let err = parse_err(&format!("{table}{TEST}"));
            assert!(err.starts_with(says), "{table}:\n{err}");
        }
    }

    #[cfg(all(feature = "store", feature = "monitor"))]
    #[test]
    fn default_plan_commented_tables_are_valid() {
        // Uncomment the key and header lines of the [store] section (the [qemu] section is
        // the QEMU runner's: its crate checks it).
        let section = testkit::plan::uncommented(DEFAULT_PLAN, "[store]", "[monitor]");
        let text = format!("{section}{TEST}");
        let plan = parse(&text, Path::new("default-plan.toml"), Path::new("base"))
            .unwrap_or_else(|e| panic!("the commented tables should parse:\n{e}\n\n{text}"));
        let store = plan.settings.store.unwrap();
        assert_eq!(store.path, Path::new("base/artifacts"));
        let rules = store.retention.unwrap();
        assert!(!rules.first_failure_after_pass && !rules.last_passing_run);
        assert_eq!(rules.pin_tags, ["release"]);
    }

    #[cfg(all(feature = "store", feature = "monitor"))]
    #[test]
    fn default_plan_is_valid() {
        let plan = parse(
            DEFAULT_PLAN,
            Path::new("default-plan.toml"),
            Path::new(env!("CARGO_MANIFEST_DIR")),
        )
        .unwrap_or_else(|e| panic!("default-plan.toml should parse:\n{e}"));
        assert!(plan.cases.len() >= 2);
        assert_eq!(plan.settings.monitor, Some(MonitorPlan::default()));
        assert!(plan.sections.names().next().is_none());
        assert_eq!(plan.settings.store, None);
        for case in &plan.cases {
            assert!(
                case.requirements.is_empty(),
                "{} must run with the host-process runner",
                case.id
            );
        }
    }

    #[test]
    fn default_plan_documents_every_key() {
        for table in [
            "[run]",
            "[defaults]",
            "[[test]]",
            "[store]",
            "[store.retention]",
            "[monitor]",
        ] {
            assert!(DEFAULT_PLAN.contains(table), "{table} is not documented");
        }
        // The keys of [qemu] are checked by the QEMU runner's crate.
        let tables = ["run", "defaults", "test", "store", "monitor", "retention"];
        for key in parse::all_keys().filter(|key| !tables.contains(key)) {
            assert!(
                DEFAULT_PLAN.contains(&format!("{key} = ")),
                "default-plan.toml does not document `{key}`"
            );
        }
    }
}
