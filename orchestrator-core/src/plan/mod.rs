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

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::case::TestCase;

pub use error::{Location, PlanError};

/// A commented reference plan listing every key with its default; it parses into a valid plan
/// of a few tests that run anywhere with the host-process runner.
pub const DEFAULT_PLAN: &str = include_str!("../../default-plan.toml");

/// A checked plan file: the tests to run and how to run them.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The plan's name (the top-level `name` key).
    pub name: Option<String>,
    /// The `[run]` settings.
    pub settings: PlanSettings,
    /// The tests, in file order, with `[defaults]` applied.
    pub cases: Vec<TestCase>,
    /// The file the plan was read from, as given.
    pub source: PathBuf,
}

/// How the plan wants to be run: the `[run]` table. `None` leaves a setting to the program
/// running the plan.
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
}

/// Reads and checks a plan file. Relative paths in it (`files` sources, `kernel`) are resolved
/// against the directory of `path`, as given: a relative `path` yields paths relative to the
/// current directory.
pub fn load(path: &Path) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|error| PlanError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let base_dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    parse(&text, path, base_dir)
}

/// Checks a plan held in memory. `path` names the plan in messages and becomes
/// [`Plan::source`]; relative paths in the plan are resolved against `base_dir`, and `files`
/// sources must exist there.
pub fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Plan, PlanError> {
    match parse::document(text, base_dir) {
        Ok(parsed) => Ok(Plan {
            name: parsed.name,
            settings: parsed.settings,
            cases: parsed.cases,
            source: path.to_path_buf(),
        }),
        Err(diag) => {
            let location = Location::from_offset(path, text, diag.span.start);
            Err(if diag.syntax {
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
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
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
            }
        );
        assert_eq!(overrides.artifacts, ["*.log", "out/**"]);
        assert_eq!(overrides.expect, Expectation::Pass);

        // A `shell` in [defaults] does not stop a test from using `command`.
        assert_eq!(exec.command, Command::exec(["true"]).unwrap());
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

    #[test]
    fn default_plan_is_valid() {
        let plan = parse(
            DEFAULT_PLAN,
            Path::new("default-plan.toml"),
            Path::new(env!("CARGO_MANIFEST_DIR")),
        )
        .unwrap_or_else(|e| panic!("default-plan.toml should parse:\n{e}"));
        assert!(plan.cases.len() >= 2);
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
        for table in ["[run]", "[defaults]", "[[test]]"] {
            assert!(DEFAULT_PLAN.contains(table), "{table} is not documented");
        }
        let tables = ["run", "defaults", "test"];
        for key in parse::all_keys().filter(|key| !tables.contains(key)) {
            assert!(
                DEFAULT_PLAN.contains(&format!("{key} = ")),
                "default-plan.toml does not document `{key}`"
            );
        }
    }
}
