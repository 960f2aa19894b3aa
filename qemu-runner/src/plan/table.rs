//! The `[qemu]` table of a plan: its settings ([`QemuPlan`], [`ProfileOverride`],
//! [`AccelChoice`]) and how they are read, as a [`Section`] of the plan.
//!
//! ```toml
//! [qemu]
//! pool = 2
//! accel = "tcg"
//! [qemu.profile.arm64]
//! memory = "1GiB"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrator_core::Arch;
use orchestrator_core::plan::{
    ByHand, Count, Diag, Field, Flag, Key, Seconds, Section, Size, Table, Text, U32_MAX, arch_help,
};

/// An `accel` value: which accelerator the QEMU runner boots guests with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AccelChoice {
    /// KVM when the guest's kernel was seen running under it on this host, TCG otherwise
    /// (`"auto"`, the default).
    Auto,
    /// KVM, and an error when it does not work (`"kvm"`).
    Kvm,
    /// Emulation only (`"tcg"`).
    Tcg,
}

/// The `[qemu]` table: how the QEMU runner boots guests.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QemuPlan {
    /// Run many tests in one booted guest instead of booting a guest per test (`session`,
    /// default `false`).
    pub session: bool,
    /// Restore every test's guest from a snapshot saved once it had booted (`snapshot-reset`,
    /// default `false`). Never set together with [`QemuPlan::session`].
    pub snapshot_reset: bool,
    /// Campaign planning (`planning`, default `true`): tests that can share a booted state run
    /// in guests restored from one snapshot per group, the others in a guest of their own
    /// (see [`QemuConfig::planning`](crate::QemuConfig::planning)); `false` boots a guest per
    /// test. Without effect when `session` or `snapshot-reset` is on.
    pub planning: bool,
    /// Most QEMU VMs running at once (`pool`, at least 1). `None`: one per host CPU.
    pub pool: Option<usize>,
    /// Whether artifacts come back over a virtio-serial port rather than the serial console
    /// (`virtio-artifacts`, default `true`).
    pub virtio_artifacts: bool,
    /// Most bytes of artifacts one test may send back (`max-artifact-bytes`). `None`: the
    /// runner's default.
    pub max_artifact_bytes: Option<u64>,
    /// Most artifact files one test may send back (`max-artifact-files`, at least 1). `None`:
    /// the runner's default.
    pub max_artifact_files: Option<usize>,
    /// Largest artifact archive sent over the serial console (`serial-artifact-limit`).
    /// `None`: the runner's default.
    pub serial_artifact_limit: Option<u64>,
    /// Kernel modules every guest loads (`modules`), with `-` written as `_`.
    pub modules: Vec<String>,
    /// The accelerator of every architecture whose profile does not choose one (`accel`).
    /// `None`: the runner's default, `auto`. The `ORCH_ACCEL` environment variable wins.
    pub accel: Option<AccelChoice>,
    /// Changes to the built-in machine profile of an architecture (`[qemu.profile.<arch>]`).
    pub profiles: BTreeMap<Arch, ProfileOverride>,
    /// Whether a kernel panic leaves the guest's memory as a `vmcore` artifact in every test
    /// (`vmcore`, default `false`; a test's own `vmcore = true` does it for that test).
    pub vmcore: bool,
}

impl Default for QemuPlan {
    fn default() -> Self {
        QemuPlan {
            session: false,
            snapshot_reset: false,
            planning: true,
            pool: None,
            virtio_artifacts: true,
            max_artifact_bytes: None,
            max_artifact_files: None,
            serial_artifact_limit: None,
            modules: Vec::new(),
            accel: None,
            profiles: BTreeMap::new(),
            vmcore: false,
        }
    }
}

/// A `[qemu.profile.<arch>]` table: the fields of the architecture's machine profile it
/// replaces. `None` keeps the built-in value.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ProfileOverride {
    /// The QEMU binary, a name looked up in `PATH` or a path (`qemu`).
    pub qemu: Option<String>,
    /// The `-M` machine type (`machine`).
    pub machine: Option<String>,
    /// The `-cpu` model, under emulation and under KVM alike (`cpu`).
    pub cpu: Option<String>,
    /// Guest memory in MiB (`memory`).
    pub memory_mib: Option<u32>,
    /// Guest CPU count (`cpus`, at least 1).
    pub cpus: Option<u32>,
    /// A display device, which makes the runner take a screenshot at the end of each test
    /// (`display`).
    pub display: Option<String>,
    /// Extra QEMU arguments, replacing the built-in ones (`extra-args`).
    pub extra_args: Option<Vec<String>>,
    /// Extra kernel command-line arguments, replacing the built-in ones (`kernel-args`).
    pub kernel_args: Option<Vec<String>>,
    /// How long the guest may take to boot with KVM; emulation multiplies it
    /// (`boot-timeout`).
    pub boot_timeout: Option<Duration>,
    /// The accelerator of this architecture, over `[qemu]`'s (`accel`).
    pub accel: Option<AccelChoice>,
    /// Whether an x86 `bzImage` boots through its PVH entry, unpacked on the host
    /// (`unpack-kernel`).
    pub unpack_kernel: Option<bool>,
}

orchestrator_core::plan_table! {
    /// The keys of `[qemu]`, with their value types, sample lines and what leaving them out
    /// means.
    struct QemuTable {
        "session" session: Flag = "session = true",
        "snapshot-reset" snapshot_reset: Flag = "snapshot-reset = true",
        "planning" planning: Flag = "planning = false",
        "pool" pool: Count<1, U32_MAX> = "pool = 2" ("to run as many VMs at once as there are CPUs"),
        "virtio-artifacts" virtio_artifacts: Flag = "virtio-artifacts = false",
        "max-artifact-bytes" max_artifact_bytes: Size = "max-artifact-bytes = \"256MiB\"" ("to keep the runner's default of 1GiB"),
        "max-artifact-files" max_artifact_files: Count<1, U32_MAX> = "max-artifact-files = 1000" ("to keep the runner's default of 10000 files"),
        "serial-artifact-limit" serial_artifact_limit: Size = "serial-artifact-limit = \"4MiB\"" ("to keep the runner's default of 4MiB"),
        "modules" modules: ByHand = "modules = [\"virtio_console\"]",
        "accel" accel: ByHand = "accel = \"tcg\"",
        "profile" profile: ByHand,
        "vmcore" vmcore: Flag = "vmcore = true",
    }
}

orchestrator_core::plan_table! {
    /// The keys of a `[qemu.profile.<arch>]` table.
    pub(crate) struct ProfileTable {
        "qemu" qemu: Text = "qemu = \"/opt/qemu/bin/qemu-system-aarch64\"",
        "machine" machine: Text = "machine = \"virt\"",
        "cpu" cpu: Text = "cpu = \"cortex-a72\"",
        "memory" memory: ByHand = "memory = \"512MiB\"",
        "cpus" cpus: Count<1, U32_MAX> = "cpus = 2",
        "display" display: Text = "display = \"ramfb\"",
        "extra-args" extra_args: ByHand = "extra-args = [\"-device\", \"virtio-rng-pci\"]",
        "kernel-args" kernel_args: ByHand = "kernel-args = [\"quiet\", \"loglevel=4\"]",
        "boot-timeout" boot_timeout: Seconds = "boot-timeout = \"60s\"" ("to keep the built-in boot timeout"),
        "accel" accel: ByHand = "accel = \"tcg\"",
        "unpack-kernel" unpack_kernel: Flag = "unpack-kernel = false",
    }
}

const QEMU_KEYS: &[Key] = QemuTable::KEYS;
const PROFILE_KEYS: &[Key] = ProfileTable::KEYS;

/// Where the settings of one architecture's machine go.
const IN_PROFILE: &str = "a [qemu.profile.<arch>] table, such as [qemu.profile.x86_64]";

fn has(keys: &[Key], key: &str) -> bool {
    keys.iter().any(|k| k.name == key)
}

/// Advice for a key of a machine profile written in [qemu] or at the top level.
fn machine_advice(key: &str, per_test: bool) -> Option<String> {
    (has(PROFILE_KEYS, key) && !per_test && !has(QEMU_KEYS, key)).then(|| {
        format!(
            "`{key}` is a setting of one architecture's virtual machine: put it in {IN_PROFILE}"
        )
    })
}

impl Section for QemuPlan {
    const NAME: &'static str = "qemu";
    const ABOUT: &'static str = "a setting of the QEMU runner";
    const KEYS: &'static [Key] = QEMU_KEYS;

    fn advice(key: &str) -> Option<String> {
        // At the top level, the keys of [[test]] get the core's advice first.
        machine_advice(key, false)
    }

    fn read(table: &Table<'_, '_>) -> Result<Self, Diag> {
        let mut qemu = QemuPlan::default();
        let read: QemuTable = table.read_with(|f, known| {
            if known.is_none() {
                let key = f.normalized_key();
                let per_test = f.is_test_key();
                let advice = machine_advice(&key, per_test).or_else(|| {
                    per_test.then(|| {
                        format!(
                            "`{key}` is a per-test setting: move it into [defaults] to apply it \
                             to every test, or into {IN_PROFILE} to change the machine of an \
                             architecture"
                        )
                    })
                });
                return match advice {
                    Some(advice) if !has(QEMU_KEYS, &key) => Err(f.unknown_key_with(advice)),
                    _ => Ok(()),
                };
            }
            match f.key() {
                "modules" => qemu.modules = f.modules()?,
                "accel" => qemu.accel = Some(accel(f)?),
                "profile" => qemu.profiles = profiles(f)?,
                _ => {}
            }
            Ok(())
        })?;
        let count = |Count(n)| usize::try_from(n).expect("range was checked");
        qemu.session = read.session.is_some_and(|Flag(on)| on);
        qemu.snapshot_reset = read.snapshot_reset.is_some_and(|Flag(on)| on);
        if let Some(Flag(on)) = read.planning {
            qemu.planning = on;
        }
        qemu.pool = read.pool.map(count);
        if let Some(Flag(on)) = read.virtio_artifacts {
            qemu.virtio_artifacts = on;
        }
        qemu.max_artifact_bytes = read.max_artifact_bytes.map(|Size(bytes)| bytes);
        qemu.max_artifact_files = read.max_artifact_files.map(count);
        qemu.serial_artifact_limit = read.serial_artifact_limit.map(|Size(bytes)| bytes);
        qemu.vmcore = read.vmcore.is_some_and(|Flag(on)| on);
        // Where `session` and `snapshot-reset` were turned on.
        let turned_on = |key: &str, on: bool| on.then(|| table.field(key).map(|f| f.key_span()))?;
        let session = turned_on("session", qemu.session);
        let snapshot_reset = turned_on("snapshot-reset", qemu.snapshot_reset);
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
}

/// An `accel` value.
fn accel(f: &Field<'_, '_>) -> Result<AccelChoice, Diag> {
    f.one_of(
        &[
            ("auto", AccelChoice::Auto),
            ("kvm", AccelChoice::Kvm),
            ("tcg", AccelChoice::Tcg),
        ],
        "use \"auto\" (the default: KVM when the guest's kernel runs under it on this host, TCG \
         otherwise), \"kvm\" (KVM or an error) or \"tcg\" (emulation only)",
    )
}

/// The `[qemu.profile]` table: one table per architecture.
fn profiles(f: &Field<'_, '_>) -> Result<BTreeMap<Arch, ProfileOverride>, Diag> {
    let table = f.table("[qemu.profile]", "qemu.profile.", &[])?;
    let mut profiles = BTreeMap::new();
    // The spelling each architecture was given in, for messages.
    let mut written: BTreeMap<Arch, String> = BTreeMap::new();
    for f in table.fields() {
        let key = f.key();
        let Ok(arch) = key.parse::<Arch>() else {
            return Err(f
                .key_error(format!(
                    "`{key}` in [qemu.profile.{key}] is not a supported architecture"
                ))
                .help(arch_help(key)));
        };
        if let Some(first) = written.get(&arch) {
            return Err(f
                .key_error(format!(
                    "[qemu.profile.{key}] and [qemu.profile.{first}] are both the profile of \
                     {arch}"
                ))
                .help("merge the two tables into one"));
        }
        if !f.is_table() {
            return Err(f.wrong_type("a table").help(format!(
                "put the {arch} settings under a `[qemu.profile.{key}]` line, for example \
                 `memory = \"1GiB\"`"
            )));
        }
        let table = f.table(
            &format!("[qemu.profile.{key}]"),
            &format!("qemu.profile.{key}."),
            PROFILE_KEYS,
        )?;
        written.insert(arch, key.to_owned());
        profiles.insert(arch, profile(&table)?);
    }
    Ok(profiles)
}

/// A `[qemu.profile.<arch>]` table.
fn profile(table: &Table<'_, '_>) -> Result<ProfileOverride, Diag> {
    let mut profile = ProfileOverride::default();
    let read: ProfileTable = table.read_with(|f, known| {
        if known.is_some() {
            match f.key() {
                "memory" => profile.memory_mib = Some(f.memory_mib()?),
                "extra-args" => profile.extra_args = Some(f.args()?),
                "kernel-args" => profile.kernel_args = Some(f.args()?),
                "accel" => profile.accel = Some(accel(f)?),
                _ => {}
            }
        }
        Ok(())
    })?;
    let text = |value: Option<Text>| value.map(|Text(text)| text.trim().to_owned());
    profile.qemu = text(read.qemu);
    profile.machine = text(read.machine);
    profile.cpu = text(read.cpu);
    profile.cpus = read
        .cpus
        .map(|Count(n)| u32::try_from(n).expect("range was checked"));
    profile.display = text(read.display);
    profile.boot_timeout = read.boot_timeout.map(|Seconds(d)| d);
    profile.unpack_kernel = read.unpack_kernel.map(|Flag(on)| on);
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use orchestrator_core::plan::{self, DEFAULT_PLAN, MonitorPlan, Plan, PlanError};

    use super::*;

    const TEST: &str = "[[test]]\nid = \"t\"\nscript = \"true\"\n";

    fn parse(text: &str, path: &Path, base_dir: &Path) -> Result<Plan, PlanError> {
        plan::Loader::new()
            .section::<QemuPlan>()
            .parse(text, path, base_dir)
    }

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
    fn qemu_table() {
        let plan = parse_ok(&format!(
            r#"
            [qemu]
            session = true
            pool = 1
            virtio-artifacts = true
            max-artifact-bytes = 1048576
            max-artifact-files = 1
            serial-artifact-limit = "1KiB"
            modules = ["virtio_rng", "zram"]
            [qemu.profile.amd64]
            boot-timeout = 90
            extra-args = []
            unpack-kernel = false
            [qemu.profile.riscv64]
            cpus = 4
            {TEST}"#
        ));
        let qemu = plan.section::<QemuPlan>().unwrap().clone();
        assert!(qemu.session && !qemu.snapshot_reset && qemu.virtio_artifacts);
        assert_eq!(qemu.pool, Some(1));
        assert_eq!(qemu.max_artifact_bytes, Some(1 << 20));
        assert_eq!(qemu.max_artifact_files, Some(1));
        assert_eq!(qemu.serial_artifact_limit, Some(1024));
        assert_eq!(qemu.modules, ["virtio_rng", "zram"]);
        let x86 = ProfileOverride {
            boot_timeout: Some(Duration::from_secs(90)),
            extra_args: Some(Vec::new()),
            unpack_kernel: Some(false),
            ..ProfileOverride::default()
        };
        let riscv = ProfileOverride {
            cpus: Some(4),
            ..ProfileOverride::default()
        };
        assert_eq!(
            qemu.profiles,
            BTreeMap::from([(Arch::X86_64, x86), (Arch::Riscv64, riscv)])
        );

        // An empty table is the defaults; the tables may come in any order.
        let plan = parse_ok(&format!(
            "[qemu]\n[run]\nparallelism = 2\n[monitor]\n{TEST}"
        ));
        assert_eq!(plan.section::<QemuPlan>(), Some(&QemuPlan::default()));
        assert_eq!(plan.settings.parallelism, Some(2));
        assert_eq!(plan.settings.monitor, Some(MonitorPlan::default()));
        // Both modes may be written down as long as one is off.
        let plan = parse_ok(&format!(
            "[qemu]\nsession = false\nsnapshot-reset = true\n{TEST}"
        ));
        assert!(plan.section::<QemuPlan>().unwrap().clone().snapshot_reset);
    }

    #[test]
    fn qemu_errors() {
        for (table, says) in [
            (
                "[qemu]\npool = 0\n",
                "test.toml:2:8: `pool` in [qemu] must be at least 1, not 0",
            ),
            (
                "[qemu]\nmax-artifact-files = 0\n",
                "test.toml:2:22: `max-artifact-files` in [qemu] must be at least 1, not 0",
            ),
            (
                "[qemu]\nmax-artifact-bytes = 10\n",
                "test.toml:2:22: `max-artifact-bytes` in [qemu] must be at least 1KiB (1024 bytes), not 10 bytes",
            ),
            (
                "[qemu]\nsnapshot-reset = \"true\"\n",
                "test.toml:2:18: `snapshot-reset` in [qemu] must be `true` or `false`, not the string \"true\"\n  help: remove the quotes: `snapshot-reset = true`",
            ),
            (
                "[qemu]\nsnapshot-reset = true\nsession = true\n",
                "test.toml:3:1: `session` and `snapshot-reset` in [qemu] cannot both be on",
            ),
            (
                "[qemu]\nmodules = [\"virtio rng\"]\n",
                "test.toml:2:12: `modules` entry \"virtio rng\" in [qemu] is not a kernel module name",
            ),
            (
                "qemu = 1\n",
                "test.toml:1:8: `qemu` at the top level of the plan must be a table",
            ),
            (
                "[qemu]\nprofile = 1\n",
                "test.toml:2:11: `profile` in [qemu] must be a table, not the integer 1",
            ),
            (
                "[qemu.profile]\nx86_64 = \"q35\"\n",
                "test.toml:2:10: `x86_64` in [qemu.profile] must be a table, not the string \"q35\"\n  help: put the x86_64 settings under a `[qemu.profile.x86_64]` line",
            ),
            (
                "[qemu.profile.mips]\n",
                "test.toml:1:15: `mips` in [qemu.profile.mips] is not a supported architecture\n  help: use one of",
            ),
            (
                "[qemu.profile.x86_64]\nmemory = \"1536KiB\"\n",
                "test.toml:2:10: `memory` in [qemu.profile.x86_64] must be a whole number of MiB",
            ),
            (
                "[qemu.profile.x86_64]\ncpus = 0\n",
                "test.toml:2:8: `cpus` in [qemu.profile.x86_64] must be at least 1, not 0",
            ),
            (
                "[qemu.profile.x86_64]\nmachine = \"\"\n",
                "test.toml:2:11: `machine` in [qemu.profile.x86_64] is empty",
            ),
            (
                "[qemu.profile.x86_64]\nkernel-args = [\"quiet\", \" \"]\n",
                "test.toml:2:25: an entry of `kernel-args` in [qemu.profile.x86_64] is blank",
            ),
            (
                "[qemu.profile.x86_64]\nboot-timeout = \"0s\"\n",
                "test.toml:2:16: `boot-timeout` in [qemu.profile.x86_64] must be greater than zero",
            ),
            (
                "[qemu]\nmemory = 512\n",
                "test.toml:2:1: unknown key `memory` in [qemu]\n  help: `memory` is a per-test setting",
            ),
            (
                "[qemu]\nsesion = true\n",
                "test.toml:2:1: unknown key `sesion` in [qemu]\n  help: did you mean `session`?",
            ),
            (
                "[run]\npool = 2\n",
                "test.toml:2:1: unknown key `pool` in [run]\n  help: `pool` is a setting of the QEMU runner: move it into the [qemu] table",
            ),
        ] {
            let err = parse_err(&format!("{table}{TEST}"));
            assert!(err.starts_with(says), "{table}:\n{err}");
        }
        let err = parse_err(&format!(
            "[qemu.profile.x86_64]\ncpus = 2\n[qemu.profile.amd64]\n{TEST}"
        ));
        assert!(
            err.starts_with("test.toml:3:15: [qemu.profile.amd64] and [qemu.profile.x86_64] are both the profile of x86_64"),
            "{err}"
        );
        let err = parse(
            &format!("[qemu.profile.arm64]\nmemroy = 1\n{TEST}"),
            Path::new("test.toml"),
            Path::new("."),
        )
        .unwrap_err();
        assert_eq!(err.key(), Some("qemu.profile.arm64.memroy"));
    }

    #[test]
    fn without_the_section_qemu_is_an_unknown_table() {
        let err = plan::parse(
            &format!("[qemu]\npool = 2\n{TEST}"),
            Path::new("test.toml"),
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("test.toml:1:2: unknown table `[qemu]`"),
            "{err}"
        );
        assert!(!err.contains("[qemu]`,"), "{err}");
    }

    #[test]
    fn default_plan_commented_qemu_table_is_valid() {
        // Uncomment the key and header lines of the [qemu] section.
        let section = testkit::plan::uncommented(DEFAULT_PLAN, "[qemu]", "# [store]");
        let text = format!("{section}{TEST}");
        let plan = parse(&text, Path::new("default-plan.toml"), Path::new("base"))
            .unwrap_or_else(|e| panic!("the commented tables should parse:\n{e}\n\n{text}"));
        let qemu = plan.section::<QemuPlan>().unwrap();
        assert!(!qemu.session && !qemu.snapshot_reset && qemu.virtio_artifacts);
        assert!(!qemu.vmcore);
        assert_eq!(qemu.max_artifact_bytes, Some(1 << 30));
        assert_eq!(qemu.max_artifact_files, Some(10_000));
        assert_eq!(qemu.serial_artifact_limit, Some(4 << 20));
        let arm = &qemu.profiles[&Arch::Aarch64];
        assert_eq!(arm.memory_mib, Some(512));
        assert_eq!(arm.boot_timeout, Some(Duration::from_secs(20)));
    }

    #[test]
    fn default_plan_has_no_qemu_table() {
        let plan = parse(
            DEFAULT_PLAN,
            Path::new("default-plan.toml"),
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../orchestrator-core")),
        )
        .unwrap_or_else(|e| panic!("default-plan.toml should parse:\n{e}"));
        assert_eq!(plan.section::<QemuPlan>(), None);
        assert_eq!(plan.settings.monitor, Some(MonitorPlan::default()));
    }

    #[test]
    fn default_plan_documents_every_qemu_key() {
        for table in ["[qemu]", "[qemu.profile."] {
            assert!(DEFAULT_PLAN.contains(table), "{table} is not documented");
        }
        // `qemu` is a table and a key of a profile: the key must be documented.
        for key in QEMU_KEYS.iter().chain(PROFILE_KEYS).map(|k| k.name) {
            if key == "profile" {
                continue;
            }
            assert!(
                DEFAULT_PLAN.contains(&format!("{key} = ")),
                "default-plan.toml does not document `{key}`"
            );
        }
    }

    #[test]
    fn defaults() {
        assert!(QemuPlan::default().virtio_artifacts);
    }
}
