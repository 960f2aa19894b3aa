//! A kernel of one's own with its own modules (`modules-dir`): real boots.
//!
//! - The provisioned riscv64 Debian trixie kernel, with its package's modules (compressed
//!   `.ko.xz`) laid out as `make modules_install INSTALL_MOD_PATH=DIR` would: the channel's
//!   `virtio_mmio` comes from that tree (its `virtio_console` is built in), a test module
//!   loads in the test phase, and 16 MiB come back over virtio byte-exact.
//! - The KUnit kernel built by `cargo xtask test` (`ORCH_KUNIT_KERNELS`, see below): its
//!   `virtio_console` is a module of its `modules_install` tree and carries 16 MiB back, and
//!   its KUnit suite module, loaded as the test's `modules`, prints its KTAP during the test.
//!
//! They need QEMU and the provisioned images, which `cargo xtask test` installs before running
//! them; plain `cargo test` skips them as ignored.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::Digest as _;
use object::Object as _;
use orchestrator_core::{
    Arch, Orchestrator, Outcome, Requirements, RunConfig, TestCase, TestResult,
};
use qemu_runner::modules::ModuleIndex;
use qemu_runner::{QemuConfig, QemuRunner};

/// The test script's part that makes 16 MiB of random data and prints its MD5.
const BIG_ARTIFACT: &str = "head -c 16777216 /dev/urandom > out.bin\nmd5sum out.bin\n";

fn case(arch: Arch, id: &str, script: &str, kernel: &Path, modules_dir: &Path) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(arch);
    req.kernel = Some(kernel.to_owned());
    req.modules_dir = Some(modules_dir.to_owned());
    TestCase::script(id, script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(180))
}

/// Runs `cases`, two at a time; the scratch directory lives as long as the returned guard.
async fn run(cases: Vec<TestCase>) -> (Vec<TestResult>, tempfile::TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_parallelism(2))
        .with_runner(QemuRunner::new(QemuConfig::new()));
    let report = orch.run(cases).await.expect("valid run");
    for r in &report.results {
        let phases: Vec<String> = r
            .phases
            .iter()
            .map(|p| {
                let took = (p.finished_at - p.started_at).num_milliseconds() as f64 / 1000.0;
                format!("{} {took:.1}s", p.phase)
            })
            .collect();
        eprintln!(
            "{}: {} [{:.1}s: {}] {} ({}, channel {}, transfer {} s)",
            r.test_id,
            r.outcome,
            r.duration().as_secs_f64(),
            phases.join(", "),
            r.message.as_deref().unwrap_or(""),
            r.environment.get("accelerator").map_or("-", String::as_str),
            r.environment
                .get("artifact-channel")
                .map_or("-", String::as_str),
            r.environment
                .get("transfer-seconds")
                .map_or("-", String::as_str),
        );
    }
    (report.results, scratch)
}

/// `out.bin` came back over the virtio port, with the MD5 the guest printed for it.
fn assert_big_artifact(result: &TestResult) {
    assert_eq!(
        result
            .environment
            .get("artifact-channel")
            .map(String::as_str),
        Some("virtio-serial"),
        "{result:#?}"
    );
    let file = result
        .artifacts
        .iter()
        .find(|a| a.name == "files/out.bin")
        .unwrap_or_else(|| panic!("out.bin did not come back: {result:#?}"));
    let bytes = std::fs::read(&file.path).unwrap();
    assert_eq!(bytes.len(), 16 << 20);
    let md5: String = md5::Md5::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        result.stdout.text.contains(&format!("{md5}  out.bin")),
        "the host's MD5 {md5} is not the guest's: {}",
        result.stdout.text
    );
    eprintln!(
        "16 MiB over virtio-serial: transfer {} s",
        result
            .environment
            .get("transfer-seconds")
            .map_or("?", String::as_str)
    );
}

/// Lays out `modules` (a packaged kernel's `lib/modules/<version>`) in `at` as `make
/// modules_install INSTALL_MOD_PATH=<at>` would, with hard links (copies across file systems),
/// made afresh. The place stays the same from run to run, and the links keep the files' times:
/// the runner's cached base archive for the tree is found again next time.
fn modules_install_like(modules: &Path, at: &Path) {
    fn link_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let (src, dst) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                link_tree(&src, &dst);
            } else if kind.is_file() && std::fs::hard_link(&src, &dst).is_err() {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    }
    if at.exists() {
        std::fs::remove_dir_all(at).unwrap();
    }
    let dir = at.join("lib/modules").join(modules.file_name().unwrap());
    link_tree(modules, &dir);
    // What `make modules_install` adds: the links to the build tree.
    std::os::unix::fs::symlink("/nonexistent/linux-build", dir.join("build")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_packaged_kernel_with_its_modules_as_a_modules_dir() {
    let started = Instant::now();
    let cache = qemu_runner::provision::default_cache_dir();
    let manifest = qemu_runner::provision::load(&cache).expect("provisioned images");
    let image = manifest
        .image(Arch::Riscv64)
        .expect("riscv64 is provisioned");
    // In the runner's build cache: on the same file system as the package, for hard links.
    let trees = QemuConfig::new().build_cache.join("modules-dir-test");
    let tree = trees.join("riscv64");
    modules_install_like(&image.modules_dir, &tree);
    let index = ModuleIndex::scan(
        &ModuleIndex::find_install_tree(&tree)
            .expect("the tree is found")
            .0,
    )
    .unwrap();
    let read = Instant::now();
    assert_eq!(
        qemu_runner::kernel::release(&image.kernel).as_deref(),
        Some(image.kernel_version.as_str())
    );
    eprintln!(
        "the kernel's release read from its {} MB image in {:?}",
        std::fs::metadata(&image.kernel).unwrap().len() >> 20,
        read.elapsed()
    );
    // What this test relies on: compressed modules, virtio_mmio a module, virtio_console in.
    assert!(
        index
            .relative_path("9p")
            .is_some_and(|p| p.to_string_lossy().ends_with(".ko.xz")),
        "9p is no .ko.xz module"
    );
    assert!(index.contains("virtio_mmio") && index.is_builtin("virtio_console"));

    let case = case(
        Arch::Riscv64,
        "own-modules@riscv64",
        &format!(
            "grep -E '^(9p|virtio_mmio) ' /proc/modules | cut -d' ' -f1 | sort\n{BIG_ARTIFACT}"
        ),
        &image.kernel,
        &tree,
    )
    .with_modules(["9p"])
    .with_artifact("out.bin");
    // The same tree without virtio_mmio: no virtio transport, so no port shows up in the guest
    // (the host offers it all the same), and the artifacts take the serial console.
    let no_transport = trees.join("riscv64-without-virtio-mmio");
    modules_install_like(&image.modules_dir, &no_transport);
    let (dir, _) = ModuleIndex::find_install_tree(&no_transport).unwrap();
    std::fs::remove_file(dir.join(index.relative_path("virtio_mmio").unwrap())).unwrap();
    let serial = self::case(
        Arch::Riscv64,
        "no-virtio-port@riscv64",
        "echo 'a small note' > note.txt",
        &image.kernel,
        &no_transport,
    )
    .with_artifact("note.txt");
    let (results, _scratch) = run(vec![case, serial]).await;
    let serial = results
        .iter()
        .find(|r| r.test_id.as_str() == "no-virtio-port@riscv64")
        .unwrap();
    assert_eq!(serial.outcome, Outcome::Passed, "{serial:#?}");
    assert_eq!(
        serial
            .environment
            .get("artifact-channel")
            .map(String::as_str),
        Some("serial-console"),
        "{serial:#?}"
    );
    let note = serial
        .artifacts
        .iter()
        .find(|a| a.name == "files/note.txt")
        .expect("note.txt came back");
    assert_eq!(
        std::fs::read_to_string(&note.path).unwrap(),
        "a small note\n"
    );
    assert!(serial.environment["qemu-command"].contains("name=org.orch.artifacts"));

    let r = results
        .iter()
        .find(|r| r.test_id.as_str() == "own-modules@riscv64")
        .unwrap();
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    // The channel's module at boot and the test's at its start, both from the tree.
    assert!(
        r.stdout.text.starts_with("9p\nvirtio_mmio\n"),
        "{}",
        r.stdout.text
    );
    assert_big_artifact(r);
    eprintln!(
        "riscv64 modules-dir test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The KUnit kernels `cargo xtask test` builds (`kunit-6.1`, holding `a/bzImage` and its
/// `a/modules`), from `ORCH_KUNIT_KERNELS`.
fn kunit_kernels() -> PathBuf {
    let Some(dir) = std::env::var_os("ORCH_KUNIT_KERNELS") else {
        panic!(
            "ORCH_KUNIT_KERNELS is not set: `cargo xtask test` builds the KUnit kernels (cached in \
             ~/.cache/qemu-orchestrator/tools/kunit-6.1) and sets it; to run this test alone, set \
             it to that directory"
        );
    };
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("a/bzImage").is_file() && dir.join("a/modules").is_dir(),
        "ORCH_KUNIT_KERNELS={} holds no a/bzImage and a/modules: run `cargo xtask test` to build them",
        dir.display()
    );
    dir
}

/// The kernel timestamp (seconds) of a `[   12.345678] ...` kernel log line.
fn timestamp(line: &str) -> Option<f64> {
    let rest = line.trim_start().strip_prefix('[')?;
    rest[..rest.find(']')?].trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs QEMU and provisioned guest images: run `cargo xtask test`"]
async fn a_kunit_kernel_with_its_modules_dir() {
    let started = Instant::now();
    let kernels = kunit_kernels();
    let kernel = kernels.join("a/bzImage");
    let modules = kernels.join("a/modules");
    let (dir, _) = ModuleIndex::find_install_tree(&modules).unwrap();
    let index = ModuleIndex::scan(&dir).unwrap();
    assert!(
        index.contains("virtio_console"),
        "virtio_console is no module of {}",
        dir.display()
    );
    // The KUnit suite built as a module: the one with a `.kunit_test_suites` section.
    let suites: Vec<String> = index
        .names()
        .filter(|n| {
            let path = index.dir().join(index.relative_path(n).unwrap());
            let data = qemu_runner::modules::read_module(&path).unwrap();
            object::File::parse(data.as_slice())
                .is_ok_and(|elf| elf.section_by_name(".kunit_test_suites").is_some())
        })
        .map(str::to_owned)
        .collect();
    assert_eq!(
        suites.len(),
        1,
        "KUnit suite modules in {}: {suites:?}",
        dir.display()
    );
    let suite = &suites[0];

    let script = format!(
        "grep -E '^(virtio_console|{suite}) ' /proc/modules | cut -d' ' -f1 | sort\n{BIG_ARTIFACT}"
    );
    let case = case(
        Arch::X86_64,
        "kunit-module@x86_64",
        &script,
        &kernel,
        &modules,
    )
    .with_modules([suite.as_str()])
    .with_artifact("out.bin");
    // Judged by the kernel's KTAP: the suites built in (at boot) and the module's (in the test).
    let mut req = case.requirements.clone();
    req.kunit = true;
    let case = case.with_requirements(req);
    let (results, _scratch) = run(vec![case]).await;
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Passed, "{r:#?}");
    assert_big_artifact(r);
    // The module's suite (`bitfields`, two cases) became subtests beside the boot's 81.
    let of_module: Vec<&str> = r
        .subtests
        .iter()
        .filter(|t| t.suite.first().map(String::as_str) == Some("bitfields"))
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(
        of_module,
        [
            "bitfields.test_bitfields_constants",
            "bitfields.test_bitfields_variables"
        ],
        "{:#?}",
        r.subtests
    );
    assert_eq!(r.subtests.len(), 81 + 2, "{:#?}", r.subtests);
    // Both modules loaded from the tree: virtio_console is no built-in here.
    let loaded: Vec<&str> = r
        .stdout
        .text
        .lines()
        .filter(|l| *l == "virtio_console" || *l == suite)
        .collect();
    assert_eq!(loaded.len(), 2, "{}", r.stdout.text);

    // The agent marks the kernel log as the test's modules start to load, in the test phase:
    // the suite's KTAP comes after the mark.
    let dmesg = r
        .artifacts
        .iter()
        .find(|a| a.name == "dmesg.txt")
        .expect("dmesg.txt");
    let log = std::fs::read_to_string(&dmesg.path).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    let mark = lines
        .iter()
        .rposition(|l| l.contains("qemu-runner: loading the test's modules"))
        .unwrap_or_else(|| panic!("no mark of the test phase in its kernel log:\n{log}"));
    let test_start = timestamp(lines[mark]).expect("timestamps (CONFIG_PRINTK_TIME)");
    // (Suites built in may have printed at boot too, if the log keeps the boot's lines.)
    let subtest = lines[mark..]
        .iter()
        .find(|l| l.contains("# Subtest: "))
        .unwrap_or_else(|| panic!("no KTAP suite after the mark:\n{log}"));
    let ran_at = timestamp(subtest).expect("a timestamp");
    assert!(ran_at >= test_start, "{subtest}");
    let log = lines[mark..].join("\n");
    let ends = log.lines().filter(|l| {
        let text = l.split_once("] ").map_or(*l, |(_, t)| t).trim_start();
        text.starts_with("ok ") || text.starts_with("not ok ")
    });
    assert!(ends.count() >= 1, "no KTAP result lines:\n{log}");
    eprintln!(
        "KUnit module `{suite}`: its suite ran at {ran_at:.3} s (its load began at \
         {test_start:.3} s); whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
