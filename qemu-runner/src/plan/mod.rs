//! The `[qemu]` table of a plan file: read as a plan section (`table.rs`) and applied to a
//! [`QemuConfig`].

mod table;

pub use table::{AccelChoice, ProfileOverride, QemuPlan};

use crate::accel::AccelMode;
use crate::profile::MachineProfile;
use crate::runner::QemuConfig;

impl QemuConfig {
    /// The default settings ([`QemuConfig::new`]) with a plan's `[qemu]` table applied (see
    /// [`QemuConfig::with_plan`]).
    ///
    /// ```
    /// use std::path::Path;
    /// use orchestrator_core::{Arch, plan};
    /// use qemu_runner::{QemuConfig, QemuPlan};
    ///
    /// let text = r#"
    ///     [qemu]
    ///     pool = 2
    ///     [qemu.profile.arm64]
    ///     memory = "1GiB"
    ///
    ///     [[test]]
    ///     id = "uname"
    ///     script = "uname -m"
    /// "#;
    /// let plan = plan::Loader::new()
    ///     .section::<QemuPlan>()
    ///     .parse(text, Path::new("vm.toml"), Path::new("."))?;
    /// let qemu = plan.section::<QemuPlan>().expect("the plan has [qemu]");
    /// let config = QemuConfig::from_plan(qemu);
    /// assert_eq!(config.pool, Some(2));
    /// assert_eq!(config.profiles[&Arch::Aarch64].memory_mib, 1024);
    /// # Ok::<(), plan::PlanError>(())
    /// ```
    pub fn from_plan(plan: &QemuPlan) -> QemuConfig {
        QemuConfig::new().with_plan(plan)
    }

    /// Applies a plan's `[qemu]` table: `session`, `snapshot-reset`, `planning`, `pool` and
    /// `virtio-artifacts` (and `vmcore`) replace the current values; `max-artifact-bytes`,
    /// `max-artifact-files` and `serial-artifact-limit` replace them when the plan sets them;
    /// `modules` are added to [`QemuConfig::modules`]; `accel` replaces [`QemuConfig::accel`]
    /// when set; and each `[qemu.profile.<arch>]` replaces the fields it sets in that
    /// architecture's profile (the built-in one if the configuration has none), `cpu` being the
    /// CPU model with and without KVM. The `ORCH_ACCEL` value ([`QemuConfig::accel_env`]) still
    /// wins over the plan's `accel`.
    #[must_use]
    pub fn with_plan(mut self, plan: &QemuPlan) -> Self {
        use crate::runner::ExecutionMode::{Alone, Session, SnapshotReset};
        self.mode = match (plan.snapshot_reset, plan.session) {
            (true, _) => SnapshotReset,
            (false, true) => Session,
            (false, false) => Alone,
        };
        self.planning = plan.planning;
        self.pool = plan.pool;
        self.virtio_artifacts = plan.virtio_artifacts;
        self.vmcore = plan.vmcore;
        if let Some(bytes) = plan.max_artifact_bytes {
            self.artifact_limits.max_bytes = bytes;
        }
        if let Some(files) = plan.max_artifact_files {
            self.artifact_limits.max_files = files;
        }
        if let Some(bytes) = plan.serial_artifact_limit {
            self.serial_artifact_limit = bytes;
        }
        if let Some(choice) = plan.accel {
            self.accel = mode(choice);
        }
        for module in &plan.modules {
            if !self.modules.contains(module) {
                self.modules.push(module.clone());
            }
        }
        for (&arch, changes) in &plan.profiles {
            let profile = self
                .profiles
                .entry(arch)
                .or_insert_with(|| MachineProfile::builtin(arch));
            apply(profile, changes);
        }
        self
    }
}

/// The runner's accelerator mode for a plan's `accel`.
fn mode(choice: AccelChoice) -> AccelMode {
    match choice {
        AccelChoice::Kvm => AccelMode::Kvm,
        AccelChoice::Tcg => AccelMode::Tcg,
        _ => AccelMode::Auto,
    }
}

/// Replaces the fields of `profile` that `changes` sets.
fn apply(profile: &mut MachineProfile, changes: &ProfileOverride) {
    if let Some(qemu) = &changes.qemu {
        profile.qemu = qemu.clone();
    }
    if let Some(machine) = &changes.machine {
        profile.machine = machine.clone();
    }
    if let Some(cpu) = &changes.cpu {
        profile.cpu_tcg = cpu.clone();
        profile.cpu_kvm = cpu.clone();
    }
    if let Some(mib) = changes.memory_mib {
        profile.memory_mib = mib;
    }
    if let Some(cpus) = changes.cpus {
        profile.cpus = cpus;
    }
    if let Some(display) = &changes.display {
        profile.display = Some(display.clone());
    }
    if let Some(args) = &changes.extra_args {
        profile.extra_args = args.clone();
    }
    if let Some(args) = &changes.kernel_args {
        profile.kernel_args = args.clone();
    }
    if let Some(timeout) = changes.boot_timeout {
        profile.boot_timeout = timeout;
    }
    if let Some(choice) = changes.accel {
        profile.accel = Some(mode(choice));
    }
    if let Some(on) = changes.unpack_kernel {
        profile.unpack_kernel = on;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use orchestrator_core::Arch;
    use orchestrator_core::plan;

    use super::*;

    fn qemu_plan(table: &str) -> QemuPlan {
        let text = format!("{table}\n[[test]]\nid = \"t\"\nscript = \"true\"\n");
        plan::Loader::new()
            .section::<QemuPlan>()
            .parse(&text, Path::new("vm.toml"), Path::new("."))
            .unwrap_or_else(|e| panic!("{e}"))
            .section::<QemuPlan>()
            .expect("the plan has [qemu]")
            .clone()
    }

    #[test]
    fn an_empty_table_changes_nothing() {
        let config = QemuConfig::from_plan(&qemu_plan("[qemu]"));
        let default = QemuConfig::new();
        assert!(config.mode == crate::runner::ExecutionMode::Alone && config.virtio_artifacts);
        assert_eq!(config.pool, None);
        assert_eq!(config.artifact_limits, default.artifact_limits);
        assert_eq!(config.serial_artifact_limit, default.serial_artifact_limit);
        assert!(config.modules.is_empty());
        assert_eq!(config.accel, AccelMode::Auto);
        assert_eq!(config.profiles, MachineProfile::builtins());
    }

    #[test]
    fn a_plan_plans_its_campaign_unless_it_says_planning_false() {
        // A runner built in code boots a guest per test; a plan plans.
        assert!(!QemuConfig::new().planning);
        assert!(QemuConfig::from_plan(&qemu_plan("[qemu]")).planning);
        assert!(QemuConfig::from_plan(&QemuPlan::default()).planning);
        let off = QemuConfig::from_plan(&qemu_plan("[qemu]\nplanning = false"));
        assert!(!off.planning);
        assert!(off.mode == crate::runner::ExecutionMode::Alone);
    }

    #[test]
    fn every_key_is_applied() {
        let config = QemuConfig::from_plan(&qemu_plan(
            r#"
            [qemu]
            session = true
            pool = 3
            virtio-artifacts = false
            max-artifact-bytes = "256MiB"
            max-artifact-files = 12
            serial-artifact-limit = "1MiB"
            modules = ["virtio-rng", "zram"]
            accel = "tcg"
            [qemu.profile.arm64]
            qemu = "/opt/qemu/bin/qemu-system-aarch64"
            machine = "virt,gic-version=3"
            cpu = "cortex-a72"
            memory = "2GiB"
            cpus = 4
            display = "ramfb"
            extra-args = ["-device", "virtio-rng-device"]
            kernel-args = []
            boot-timeout = "45s"
            accel = "kvm"
            "#,
        ));
        assert_eq!(config.accel, AccelMode::Tcg);
        assert!(config.mode == crate::runner::ExecutionMode::Session && !config.virtio_artifacts);
        assert_eq!(config.pool, Some(3));
        assert_eq!(config.artifact_limits.max_bytes, 256 << 20);
        assert_eq!(config.artifact_limits.max_files, 12);
        assert_eq!(config.serial_artifact_limit, 1 << 20);
        assert_eq!(config.modules, ["virtio_rng", "zram"]);

        let arm = &config.profiles[&Arch::Aarch64];
        let mut expected = MachineProfile::builtin(Arch::Aarch64);
        expected.qemu = "/opt/qemu/bin/qemu-system-aarch64".into();
        expected.machine = "virt,gic-version=3".into();
        expected.cpu_tcg = "cortex-a72".into();
        expected.cpu_kvm = "cortex-a72".into();
        expected.memory_mib = 2048;
        expected.cpus = 4;
        expected.display = Some("ramfb".into());
        expected.extra_args = vec!["-device".into(), "virtio-rng-device".into()];
        expected.kernel_args = Vec::new();
        expected.boot_timeout = Duration::from_secs(45);
        expected.accel = Some(AccelMode::Kvm);
        assert_eq!(arm, &expected);
        // Other architectures keep their built-in profiles.
        for arch in [Arch::X86_64, Arch::Armv7, Arch::Riscv64] {
            assert_eq!(config.profiles[&arch], MachineProfile::builtin(arch));
        }
    }

    #[test]
    fn accel_precedence_variable_then_profile_then_qemu_table_then_default() {
        use crate::accel::resolve_mode;
        let plan = qemu_plan(
            r#"
            [qemu]
            accel = "tcg"
            [qemu.profile.x86_64]
            accel = "kvm"
            "#,
        );
        let mode = |config: &QemuConfig, arch: Arch| {
            resolve_mode(
                config.accel_env.as_deref(),
                arch,
                config.profiles[&arch].accel,
                config.accel,
            )
        };
        let config = QemuConfig::new().with_accel_env(None).with_plan(&plan);
        assert_eq!(mode(&config, Arch::X86_64).unwrap().mode, AccelMode::Kvm);
        assert_eq!(mode(&config, Arch::Aarch64).unwrap().mode, AccelMode::Tcg);
        let config = config.with_accel_env(Some("auto"));
        for arch in [Arch::X86_64, Arch::Aarch64] {
            let m = mode(&config, arch).unwrap();
            assert_eq!(
                (m.mode, m.source.as_str()),
                (AccelMode::Auto, "ORCH_ACCEL=auto")
            );
        }
        let config = config.with_accel_env(Some("on"));
        assert!(
            mode(&config, Arch::X86_64)
                .unwrap_err()
                .to_string()
                .contains("ORCH_ACCEL=on")
        );
        // A plan without `accel` keeps what the configuration had.
        let config = QemuConfig::new()
            .with_accel(AccelMode::Tcg)
            .with_plan(&qemu_plan("[qemu]"));
        assert_eq!(config.accel, AccelMode::Tcg);
    }

    #[test]
    fn plans_change_what_they_set_and_keep_the_rest() {
        let mut custom = MachineProfile::builtin(Arch::X86_64);
        custom.machine = "microvm".into();
        custom.memory_mib = 256;
        let mut base = QemuConfig::new().with_profile(custom);
        base.profiles.remove(&Arch::Riscv64);
        base.modules = vec!["zram".into()];
        base.serial_artifact_limit = 123;
        let config = base.with_plan(&qemu_plan(
            r#"
            [qemu]
            snapshot-reset = true
            modules = ["zram", "virtio_rng"]
            [qemu.profile.x86_64]
            cpus = 2
            [qemu.profile.riscv64]
            memory = 1024
            "#,
        ));
        assert!(config.mode == crate::runner::ExecutionMode::SnapshotReset);
        assert_eq!(config.serial_artifact_limit, 123);
        assert_eq!(config.modules, ["zram", "virtio_rng"]);
        let x86 = &config.profiles[&Arch::X86_64];
        assert_eq!(
            (x86.machine.as_str(), x86.memory_mib, x86.cpus),
            ("microvm", 256, 2)
        );
        // A profile the configuration lacked starts from the built-in one.
        let mut riscv = MachineProfile::builtin(Arch::Riscv64);
        riscv.memory_mib = 1024;
        assert_eq!(config.profiles[&Arch::Riscv64], riscv);
    }
}
