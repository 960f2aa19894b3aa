//! What a test is: [`TestCase`] and the pieces it is made of.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::serde_duration;

/// Default per-test timeout when a case does not set one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A test's identifier: unique within a run, stable across runs, and safe to use as a path
/// component (letters, digits and `. _ - : @ +`, at most 128 characters, not starting with a
/// punctuation character).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TestId(String);

impl TestId {
    /// Longest identifier accepted.
    pub const MAX_LEN: usize = 128;

    /// Checks and wraps an identifier.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidTestId> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("it is empty")
        } else if id.len() > Self::MAX_LEN {
            Some("it is longer than 128 characters")
        } else if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            Some("it must start with a letter or digit")
        } else if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:@+".contains(c))
        {
            Some("only letters, digits and `. _ - : @ +` are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidTestId { id, reason }),
            None => Ok(Self(id)),
        }
    }

    /// The identifier as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for TestId {
    type Error = InvalidTestId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TestId> for String {
    fn from(value: TestId) -> Self {
        value.0
    }
}

impl FromStr for TestId {
    type Err = InvalidTestId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A rejected test identifier.
#[derive(Clone, Debug, thiserror::Error)]
#[error("invalid test id `{id}`: {reason}")]
pub struct InvalidTestId {
    id: String,
    reason: &'static str,
}

/// A CPU architecture a test can require.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Arch {
    /// 64-bit x86 (Debian `amd64`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (Debian `arm64`).
    #[serde(rename = "aarch64")]
    Aarch64,
    /// 32-bit ARMv7 with hardware floating point (Debian `armhf`).
    #[serde(rename = "armv7")]
    Armv7,
    /// 64-bit RISC-V (Debian `riscv64`).
    #[serde(rename = "riscv64")]
    Riscv64,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 4] = [Arch::X86_64, Arch::Aarch64, Arch::Armv7, Arch::Riscv64];

    /// The canonical name (`x86_64`, `aarch64`, `armv7`, `riscv64`).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "armv7",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The architecture this program was built for, if it is one of the supported ones.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Aarch64),
            "arm" => Some(Arch::Armv7),
            "riscv64" => Some(Arch::Riscv64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = UnknownArch;
    /// Accepts the canonical names and the Debian and QEMU aliases (`amd64`, `arm64`, `armhf`,
    /// `arm`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            "armv7" | "armhf" | "arm" | "armv7l" => Ok(Arch::Armv7),
            "riscv64" => Ok(Arch::Riscv64),
            other => Err(UnknownArch(other.to_owned())),
        }
    }
}

/// An architecture name that is not supported.
#[derive(Clone, Debug, thiserror::Error)]
#[error("unknown architecture `{0}`: expected one of x86_64, aarch64, armv7, riscv64")]
pub struct UnknownArch(String);

/// What a test runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Command {
    /// A program with arguments, run directly (no shell).
    Exec {
        /// The program: a path, or a name looked up in `PATH`.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A shell script, written to a file in the test's working directory and run by `shell`.
    Script {
        /// The interpreter and its arguments; the script's path is appended.
        shell: Vec<String>,
        /// The script text.
        body: String,
    },
}

impl Command {
    /// The interpreter scripts use unless told otherwise: `sh -e` (stop at the first failing
    /// command).
    pub fn default_shell() -> Vec<String> {
        vec!["sh".to_owned(), "-e".to_owned()]
    }

    /// A program with arguments.
    pub fn exec<I, S>(argv: I) -> Result<Self, EmptyCommand>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut argv = argv.into_iter().map(Into::into);
        match argv.next() {
            Some(program) if !program.trim().is_empty() => Ok(Command::Exec {
                program,
                args: argv.collect(),
            }),
            _ => Err(EmptyCommand),
        }
    }

    /// A shell script run by [`Command::default_shell`].
    pub fn script(body: impl Into<String>) -> Self {
        Command::Script {
            shell: Self::default_shell(),
            body: body.into(),
        }
    }

    /// A one-line description for logs and reports.
    pub fn describe(&self) -> String {
        match self {
            Command::Exec { program, args } => {
                let mut s = program.clone();
                for a in args {
                    s.push(' ');
                    s.push_str(a);
                }
                s
            }
            Command::Script { body, .. } => {
                let first = body.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                format!("script: {}", first.trim())
            }
        }
    }
}

/// A command with no program.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("the command is empty: give at least a program name")]
pub struct EmptyCommand;

/// A file placed beside the test before it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Where the file is on the host.
    pub source: PathBuf,
    /// Where it goes, relative to the test's working directory.
    pub dest: PathBuf,
}

/// The environment a test needs. The host-process runner only accepts tests that need nothing
/// it cannot give (no kernel, the host's architecture); the QEMU runner reads all of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Requirements {
    /// The architecture the test must run on.
    pub arch: Option<Arch>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u32>,
    /// Guest CPU count.
    pub cpus: Option<u32>,
    /// The kernel image to boot.
    pub kernel: Option<PathBuf>,
    /// Kernel modules (from the kernel's package) the guest must have loaded, dependencies
    /// resolved by the runner.
    #[serde(default)]
    pub modules: Vec<String>,
    /// Whether a kernel panic leaves the guest's memory as a `vmcore` artifact (a VM runner
    /// keeps the guest from exiting at the panic and dumps its memory).
    #[serde(default)]
    pub vmcore: bool,
    /// The kernel's own module tree (`make modules_install INSTALL_MOD_PATH=DIR`: `DIR`,
    /// `DIR/lib/modules` or `DIR/lib/modules/<version>`), where `modules` and the artifact
    /// channel's modules come from instead of the kernel's package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modules_dir: Option<PathBuf>,
    /// A root file system for the test (a directory or a file system image): the guest mounts
    /// it read-only under a writable overlay and runs the test inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<PathBuf>,
    /// The test is judged by the KTAP the kernel printed in its log (`kunit = true`): the KUnit
    /// suites built into the kernel ran at boot, those of modules the test loads as they load;
    /// each case is a subtest, and a kernel log without KTAP, or with KTAP cut short, fails the
    /// test.
    #[serde(default)]
    pub kunit: bool,
    /// Kernel command-line arguments added after the machine profile's (`kernel-args`), such
    /// as `kunit.filter_glob=list*`.
    #[serde(default)]
    pub kernel_args: Vec<String>,
    /// The test runs in a guest of its own (`isolated = true`): a VM runner that plans a
    /// campaign (tests sharing one booted state) never puts it with other tests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub isolated: bool,
}

impl Requirements {
    /// Whether the test needs anything beyond a host process on any architecture.
    pub fn is_empty(&self) -> bool {
        *self == Requirements::default()
    }
}

/// What the test's author expects to happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Expectation {
    /// The test should pass.
    #[default]
    Pass,
    /// The test is known to fail: a failure counts as success, a pass is reported as an
    /// unexpected pass.
    Fail,
}

/// One test: what to run, where, for how long, and what to keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TestCase {
    /// Unique identifier.
    pub id: TestId,
    /// Human-readable name (defaults to the id).
    pub name: String,
    /// What to run.
    pub command: Command,
    /// Files placed in the working directory before the test starts.
    pub files: Vec<FileSpec>,
    /// Environment variables set for the test.
    pub env: BTreeMap<String, String>,
    /// How long the test itself may run.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// The environment the test needs.
    pub requirements: Requirements,
    /// Glob patterns, relative to the working directory, of files collected as artifacts.
    pub artifacts: Vec<String>,
    /// Free-form tags for selection and reporting.
    pub tags: Vec<String>,
    /// Whether the test is expected to pass or fail.
    pub expect: Expectation,
    /// The runner that must execute it; `None` means the orchestrator's default runner.
    pub runner: Option<String>,
    /// Kernel tracing while the test runs: a tracer (`function`, `function_graph`) or
    /// space-separated trace events (`sched:sched_switch irq:*`). The trace comes back as an
    /// artifact.
    #[serde(default)]
    pub trace: Option<String>,
}

impl TestCase {
    /// A test with the given id and command and default settings for the rest.
    pub fn new(id: TestId, command: Command) -> Self {
        TestCase {
            name: id.to_string(),
            id,
            command,
            files: Vec::new(),
            env: BTreeMap::new(),
            timeout: DEFAULT_TIMEOUT,
            requirements: Requirements::default(),
            artifacts: Vec::new(),
            tags: Vec::new(),
            expect: Expectation::Pass,
            runner: None,
            trace: None,
        }
    }

    /// A test running a shell script (`sh -e`); panics on an invalid id, so use
    /// [`TestCase::new`] for ids that come from input.
    pub fn script(id: &str, body: &str) -> Self {
        Self::new(
            TestId::new(id).expect("a literal test id must be valid"),
            Command::script(body),
        )
    }

    /// Sets the timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the display name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    /// Adds a tag.
    #[must_use]
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds an artifact glob.
    #[must_use]
    pub fn with_artifact(mut self, glob: impl Into<String>) -> Self {
        self.artifacts.push(glob.into());
        self
    }

    /// Adds a file placed beside the test.
    #[must_use]
    pub fn with_file(mut self, source: impl Into<PathBuf>, dest: impl Into<PathBuf>) -> Self {
        self.files.push(FileSpec {
            source: source.into(),
            dest: dest.into(),
        });
        self
    }

    /// Sets the expected outcome.
    #[must_use]
    pub fn with_expect(mut self, expect: Expectation) -> Self {
        self.expect = expect;
        self
    }

    /// Sets the requirements.
    #[must_use]
    pub fn with_requirements(mut self, requirements: Requirements) -> Self {
        self.requirements = requirements;
        self
    }

    /// Requires a guest of `arch` (shorthand for setting [`Requirements::arch`]).
    #[must_use]
    pub fn with_arch(mut self, arch: Arch) -> Self {
        self.requirements.arch = Some(arch);
        self
    }

    /// Adds kernel modules the guest must load (shorthand for [`Requirements::modules`]).
    #[must_use]
    pub fn with_modules<S: Into<String>>(mut self, modules: impl IntoIterator<Item = S>) -> Self {
        self.requirements
            .modules
            .extend(modules.into_iter().map(Into::into));
        self
    }

    /// Runs the test inside a root file system, a directory or an image (shorthand for
    /// [`Requirements::rootfs`]).
    #[must_use]
    pub fn with_rootfs(mut self, rootfs: impl Into<PathBuf>) -> Self {
        self.requirements.rootfs = Some(rootfs.into());
        self
    }

    /// Turns on kernel tracing (a tracer or trace events) while the test runs.
    #[must_use]
    pub fn with_trace(mut self, trace: impl Into<String>) -> Self {
        self.trace = Some(trace.into());
        self
    }

    /// Pins the test to a runner by name.
    #[must_use]
    pub fn with_runner(mut self, runner: impl Into<String>) -> Self {
        self.runner = Some(runner.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_safe() {
        assert!(TestId::new("boot.smoke-1@aarch64").is_ok());
        for bad in ["", "../x", "a/b", "-lead", "sp ace", &"x".repeat(129)] {
            assert!(TestId::new(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn arch_aliases() {
        assert_eq!("arm64".parse::<Arch>().unwrap(), Arch::Aarch64);
        assert_eq!("armhf".parse::<Arch>().unwrap(), Arch::Armv7);
        assert!("mips".parse::<Arch>().is_err());
        for a in Arch::ALL {
            assert_eq!(a.as_str().parse::<Arch>().unwrap(), a);
        }
    }

    #[test]
    fn empty_commands_are_rejected() {
        assert!(Command::exec(Vec::<String>::new()).is_err());
        assert!(Command::exec(["  "]).is_err());
        assert_eq!(Command::exec(["echo", "hi"]).unwrap().describe(), "echo hi");
    }
}
