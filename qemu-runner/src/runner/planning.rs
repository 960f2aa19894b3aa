//! Campaign planning ([`QemuConfig::planning`](super::QemuConfig::planning)): before a run,
//! the runner groups the tests that can share a booted state (same architecture, kernel,
//! module tree, machine profile, memory and CPUs, and no kernel arguments of their own); each
//! test of a group of two or more runs in a guest restored from one snapshot of the group's
//! booted guest, so it starts as pristine as after a boot of its own. A test that needs a
//! guest of its own gets one ([`own_guest_reason`](QemuRunner::own_guest_reason)).
//!
//! A group's guest boots as a guest of its own would (the artifact channel's modules at boot)
//! with every module its tests load in its initramfs; each test loads its own modules in its
//! test phase, on its clock, as it would after a boot of its own, and its kernel log is what
//! the kernel printed while it ran.

use std::collections::HashMap;
use std::sync::Arc;

use orchestrator_core::{ExecutionContext, RunnerError, TestCase, TestResult};

use super::lifecycle::Run;
use super::session::{Payload, SESSION_PART_LIMIT};
use super::{ExecutionMode, QemuRunner};
use crate::image::{self, TestPart};

/// What planning decided for one test.
#[derive(Clone, Debug)]
pub(super) enum Planned {
    /// A guest restored from its group's snapshot.
    Group(Arc<Group>),
    /// A guest of its own, and why.
    Own(String),
}

/// Tests that share one booted state.
#[derive(Debug)]
pub(super) struct Group {
    /// What the group's guest is booted with (the key of its snapshot).
    pub(super) key: String,
    /// How many tests the group has.
    pub(super) tests: usize,
    /// Every module the group's tests load (their own `modules`), put in the guest's
    /// initramfs; each test loads its own in its test phase.
    pub(super) modules: Vec<String>,
}

impl Planned {
    /// What a result's `planning` entry says.
    pub(super) fn describe(&self) -> String {
        match self {
            Planned::Group(g) => format!(
                "restored from the snapshot its group of {} tests shares (same architecture, \
                 kernel, modules, memory, CPUs and kernel arguments)",
                g.tests
            ),
            Planned::Own(why) => format!("a guest of its own: {why}"),
        }
    }
}

impl QemuRunner {
    /// Plans the batch: groups its tests (see the module's documentation) when planning is on
    /// and the mode is [`ExecutionMode::Alone`]; forgets any earlier plan otherwise.
    pub(super) fn plan_campaign(&self, batch: &[&TestCase]) {
        let mut planned = self.planned.lock().unwrap_or_else(|e| e.into_inner());
        planned.clear();
        if !self.config.planning || self.config.mode != ExecutionMode::Alone {
            return;
        }
        let mut groups: HashMap<String, Vec<&TestCase>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for case in batch {
            if let Some(why) = self.own_guest_reason(case) {
                planned.insert(case.id.to_string(), Planned::Own(why));
                continue;
            }
            match self.group_key(case) {
                Ok(key) => {
                    let members = groups.entry(key.clone()).or_default();
                    if members.is_empty() {
                        order.push(key);
                    }
                    members.push(case);
                }
                // Its setup is wrong: the execution says how, as for a guest of its own.
                Err(e) => {
                    planned.insert(
                        case.id.to_string(),
                        Planned::Own(format!("its setup has a problem ({e})")),
                    );
                }
            }
        }
        for key in order {
            let members = &groups[&key];
            if members.len() < 2 {
                // A snapshot of one test's guest costs a boot, a save and a restore.
                planned.insert(
                    members[0].id.to_string(),
                    Planned::Own(
                        "no other test boots the same way (a snapshot would cost more than \
                         its boot)"
                            .into(),
                    ),
                );
                continue;
            }
            let mut modules: Vec<String> = Vec::new();
            for m in members.iter().flat_map(|c| &c.requirements.modules) {
                if !modules.contains(m) {
                    modules.push(m.clone());
                }
            }
            let group = Arc::new(Group {
                key: key.clone(),
                tests: members.len(),
                modules,
            });
            for case in members {
                planned.insert(case.id.to_string(), Planned::Group(Arc::clone(&group)));
            }
        }
        let shared = planned
            .values()
            .filter(|p| matches!(p, Planned::Group(_)))
            .count();
        tracing::info!(
            tests = batch.len(),
            restored = shared,
            own = batch.len() - shared,
            "campaign planned"
        );
    }

    /// What planning decided for `case`, if it planned it.
    pub(super) fn planned(&self, case: &TestCase) -> Option<Planned> {
        self.planned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(case.id.as_str())
            .cloned()
    }

    /// The group `case` was planned into, if any.
    pub(super) fn group_of(&self, case: &TestCase) -> Option<Arc<Group>> {
        match self.planned(case)? {
            Planned::Group(g) => Some(g),
            Planned::Own(_) => None,
        }
    }

    /// Why `case` needs a guest of its own, if it does.
    pub(super) fn own_guest_reason(&self, case: &TestCase) -> Option<String> {
        let req = &case.requirements;
        let why = if req.isolated {
            "`isolated = true`"
        } else if req.kunit {
            "`kunit`: the kernel's own tests run at boot"
        } else if !req.kernel_args.is_empty() {
            "its own `kernel-args`"
        } else if self.vmcore_for(case) {
            "`vmcore`: a panic leaves the guest for its dump"
        } else if req.rootfs.is_some() {
            "a root file system is a device of its guest"
        } else if self
            .profile(self.arch_of(case))
            .is_ok_and(|p| p.display.is_some())
        {
            "a display: the screenshot is taken at the end of its own guest"
        } else {
            return None;
        };
        Some(why.to_owned())
    }

    /// What a planned group's guest is booted with: tests with the same key share it. The
    /// test's own modules are not in it (they load in its test phase).
    pub(super) fn group_key(&self, case: &TestCase) -> Result<String, RunnerError> {
        // A restored test loads its own modules in its phase: the guest boots with the
        // runner's.
        let boot = self.boot_key(case, |_| &self.config.modules)?;
        Ok(format!("planned|{boot}|{}", self.config.virtio_artifacts))
    }

    /// A test of a planned group, in a guest restored from the group's snapshot.
    pub(super) async fn execute_planned(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
        group: &Group,
    ) -> Result<TestResult, RunnerError> {
        let run = Run::new(case, ctx);
        let payload = match self.planned_payload(case, ctx).await? {
            Ok(payload) => payload,
            Err(bytes) => return self.execute_alone_too_large(case, ctx, bytes).await,
        };
        run.artifact_dir()?;
        self.execute_from_snapshot(run, payload, group.key.clone())
            .await
    }

    /// What a restored guest of a planned group is sent for `case`: the session payload, or,
    /// when the test loads modules in its phase (its own and the runner's), an archive whose
    /// `/orch/modules` lists them as a guest of its own would have them. `Err(bytes)`: too
    /// large for the console.
    async fn planned_payload(
        &self,
        case: &TestCase,
        ctx: &ExecutionContext,
    ) -> Result<Result<Payload, usize>, RunnerError> {
        let output_limit = self.output_limit(ctx);
        let arch = self.arch_of(case);
        let profile = self.profile(arch)?.clone();
        let parts = self.parts(case, arch)?;
        let modules_plain = self.modules_for(case, &profile, None);
        if modules_plain.is_empty() || parts.modules_dir.is_none() {
            return self.session_payload(case, output_limit).await;
        }
        // The order a guest of its own loads them in: the base image (cached) knows it.
        let dir = parts.modules_dir.clone().expect("checked above");
        let index = self.module_index(&dir).map_err(RunnerError::new)?;
        // The group's guest, a session guest, has the artifact channel's modules whatever the
        // test collects.
        let channel = Some(&*index).filter(|_| self.config.virtio_artifacts);
        let modules = self.modules_with(case, &profile, channel);
        let boot: Vec<String> = profile
            .channel_modules
            .iter()
            .filter(|m| modules.contains(m))
            .cloned()
            .collect();
        let cache = self.config.build_cache.clone();
        let serial_artifact_limit = self.config.serial_artifact_limit;
        let case = case.clone();
        super::blocking(move || {
            let base = image::base_image_indexed(&parts, Some(&index), &modules, &boot, &cache)
                .map_err(RunnerError::new)?;
            let part = image::test_archive(&TestPart {
                case: &case,
                output_limit,
                load_order: &base.test_order(),
                boot_order: &base.boot_order,
                kernel_version: parts.kernel_version.as_deref(),
                serial_artifact_limit,
                wait_for_ack: true,
            })
            .map_err(RunnerError::new)?;
            Ok(if part.len() > SESSION_PART_LIMIT {
                Err(part.len())
            } else {
                Ok(Payload::Archive(part))
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use orchestrator_core::{Arch, Requirements};

    use super::*;
    use crate::runner::{ImageSource, QemuConfig};

    fn case(id: &str, arch: Arch) -> TestCase {
        let mut req = Requirements::default();
        req.arch = Some(arch);
        TestCase::script(id, "true").with_requirements(req)
    }

    /// A runner with made-up images (planning reads paths only).
    fn runner(planning: bool) -> QemuRunner {
        let mut images = BTreeMap::new();
        for arch in [Arch::Aarch64, Arch::X86_64] {
            images.insert(
                arch,
                crate::image::GuestParts {
                    arch,
                    kernel: format!("/k/{arch}").into(),
                    busybox: "/bb".into(),
                    modules_dir: None,
                    kernel_version: None,
                },
            );
        }
        QemuRunner::new(
            QemuConfig::new()
                .with_images(ImageSource::Custom(images))
                .with_planning(planning),
        )
    }

    fn plan(runner: &QemuRunner, cases: &[TestCase]) -> Vec<String> {
        let batch: Vec<&TestCase> = cases.iter().collect();
        runner.plan_campaign(&batch);
        cases
            .iter()
            .map(|c| match runner.planned(c) {
                Some(Planned::Group(g)) => format!("group of {}", g.tests),
                Some(Planned::Own(why)) => format!("own: {why}"),
                None => "unplanned".into(),
            })
            .collect()
    }

    #[test]
    fn tests_that_boot_alike_share_a_snapshot_and_the_others_get_a_guest_of_their_own() {
        let r = runner(true);
        let mut kunit = case("kunit", Arch::Aarch64);
        kunit.requirements.kunit = true;
        let mut args = case("args", Arch::Aarch64);
        args.requirements.kernel_args = vec!["loglevel=7".into()];
        let mut isolated = case("isolated", Arch::Aarch64);
        isolated.requirements.isolated = true;
        let mut vmcore = case("vmcore", Arch::Aarch64);
        vmcore.requirements.vmcore = true;
        let mut big = case("big", Arch::Aarch64);
        big.requirements.memory_mib = Some(2048);
        let mut module = case("module", Arch::Aarch64);
        module.requirements.modules = vec!["test_bpf".into()];
        let artifacts = case("artifacts", Arch::Aarch64).with_artifact("*.log");
        let cases = [
            case("a", Arch::Aarch64),
            case("b", Arch::Aarch64),
            module,
            case("x", Arch::X86_64),
            kunit,
            args,
            isolated,
            vmcore,
            big,
            artifacts,
        ];
        let got = plan(&r, &cases);
        let own = |s: &str| format!("own: {s}");
        assert_eq!(
            got,
            [
                "group of 4".to_owned(),
                "group of 4".to_owned(),
                // Its module loads in its test phase: the same booted state.
                "group of 4".to_owned(),
                own("no other test boots the same way (a snapshot would cost more than its boot)"),
                own("`kunit`: the kernel's own tests run at boot"),
                own("its own `kernel-args`"),
                own("`isolated = true`"),
                own("`vmcore`: a panic leaves the guest for its dump"),
                own("no other test boots the same way (a snapshot would cost more than its boot)"),
                // Restored guests send artifacts over the virtio port too.
                "group of 4".to_owned(),
            ]
        );
        let Some(Planned::Group(g)) = r.planned(&cases[0]) else {
            panic!("a group")
        };
        assert_eq!(g.modules, ["test_bpf"]);
    }

    #[test]
    fn planning_off_or_another_mode_plans_nothing() {
        let cases = [case("a", Arch::Aarch64), case("b", Arch::Aarch64)];
        assert_eq!(plan(&runner(false), &cases), ["unplanned", "unplanned"]);
        let mut config = runner(true).config.clone();
        config.mode = ExecutionMode::SnapshotReset;
        assert_eq!(
            plan(&QemuRunner::new(config), &cases),
            ["unplanned", "unplanned"]
        );
        // A second batch replaces the first one's plan.
        let r = runner(true);
        plan(&r, &cases);
        plan(&r, &cases[..1]);
        assert!(matches!(r.planned(&cases[0]), Some(Planned::Own(_))));
        assert!(r.planned(&cases[1]).is_none());
    }

    #[test]
    fn a_display_puts_every_test_of_its_architecture_in_a_guest_of_its_own() {
        let mut config = runner(true).config.clone();
        config.profiles.get_mut(&Arch::Aarch64).unwrap().display = Some("ramfb".into());
        let r = QemuRunner::new(config);
        let got = plan(&r, &[case("a", Arch::Aarch64), case("b", Arch::Aarch64)]);
        assert!(got.iter().all(|g| g.contains("a display")), "{got:?}");
    }
}
