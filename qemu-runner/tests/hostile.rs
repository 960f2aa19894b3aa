//! The guest is hostile: its test runs as root, can read the agent's nonce from the agent's
//! memory and write any record on the console, and can give its artifacts any name. These
//! tests boot aarch64 guests that do both, run the runner in a child process under `strace`,
//! and check from outside that the host opened nothing outside the test's own directories,
//! stayed within twice the memory of a plain test, and named every refused record.
//!
//! They need QEMU, the provisioned images and `strace` (`cargo xtask test` installs all three);
//! plain `cargo test` skips them as ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use orchestrator_core::{Arch, Orchestrator, Requirements, RunConfig, TestCase};
use qemu_runner::{QemuConfig, QemuRunner};

/// Set in the child process: which cases it runs.
const MODE: &str = "ORCH_HOSTILE_MODE";
/// Set in the child process: where it writes its results.
const OUT: &str = "ORCH_HOSTILE_OUT";
/// Set in the child process: a directory outside the scratch holding a secret and a FIFO.
const OUTSIDE: &str = "ORCH_HOSTILE_OUTSIDE";

fn case(id: &str, script: &str) -> TestCase {
    let mut req = Requirements::default();
    req.arch = Some(Arch::Aarch64);
    TestCase::script(&format!("{id}@aarch64"), script)
        .with_requirements(req)
        .with_timeout(Duration::from_secs(120))
}

/// A test that reads the agent's nonce from `/proc/1/mem` and forges a whole transfer on the
/// console: a manifest naming host paths, an archive, 10,000 streams, an exit code.
fn forger(outside: &Path) -> TestCase {
    let outside = outside.display();
    let script = format!(
        r#"
# ash keeps variables as `name=value`: look for the agent's in its writable memory.
n=
for r in $(awk '$2 ~ /^rw/ && (NF == 5 || $6 == "[heap]") {{ print $1 }}' /proc/1/maps); do
    s=$((0x${{r%-*}}))
    e=$((0x${{r#*-}}))
    n=$(dd if=/proc/1/mem bs=4096 skip=$((s / 4096)) count=$(((e - s) / 4096)) 2>/dev/null |
        tr '\0' '\n' | grep -o 'nonce=[0-9a-f]\{{32\}}' | head -n 1)
    [ -n "$n" ] && break
done
n=${{n#nonce=}}
[ -n "$n" ] || {{ echo 'the nonce was not found' >&2; exit 99; }}
echo "nonce: $n"
send() {{
    sum=$(md5sum <"$2")
    c=$(wc -c <"$2")
    echo "ORCH1 $n SEND $1 $c $c ${{sum%% *}}"
    base64 "$2" | sed "s/^/ORCH1 $n DATA $1 /"
    echo "ORCH1 $n END $1"
}}
mkdir -p /tmp/forged/out
echo forged >/tmp/forged/out/ok.txt
(cd /tmp/forged && tar -cf /tmp/forged.tar out/ok.txt)
ok=$(md5sum </tmp/forged/out/ok.txt)
z=00000000000000000000000000000000
{{
    echo "${{ok%% *}}  out/ok.txt"
    echo "$z  /etc/hostname"
    echo "$z  /dev/zero"
    echo "$z  {outside}/fifo"
    echo "$z  {outside}/secret.txt"
    echo "$z  ../x"
    echo "$z  ../../../../../../../../../../../../../../..{outside}/secret.txt"
    echo "$z  out/never-sent.txt"
}} >/tmp/forged/manifest
echo serial-console >/tmp/forged/channel
{{
    echo "ORCH1 $n EMPTY stdout stderr dmesg missing"
    send channel /tmp/forged/channel
    send manifest /tmp/forged/manifest
    send artifacts /tmp/forged.tar
    awk -v n="$n" 'BEGIN {{ for (i = 0; i < 10000; i++) printf "ORCH1 %s SEND s%d 0 0 d41d8cd98f00b204e9800998ecf8427e\n", n, i }}'
    echo "ORCH1 $n EXIT 0"
    echo "ORCH1 $n EXIT 7"
    echo "ORCH1 $n DONE"
}} >/dev/console
sleep 60
"#
    );
    case("forger", &script).with_artifact("out/*")
}

/// A 200-byte file name.
fn long_name() -> String {
    "n".repeat(200)
}

/// A path of more than 255 bytes (a GNU long name in the archive).
fn long_path() -> String {
    format!("out/deep/{}/{}.txt", "d".repeat(150), "f".repeat(150))
}

/// A test whose artifact globs match awkward names: newlines (one forging a manifest line),
/// tabs, spaces, a backslash, long names, and a glob with `..`.
fn awkward(outside: &Path) -> TestCase {
    let outside = outside.display();
    let long = long_name();
    let deep = long_path();
    let script = format!(
        r#"
z=00000000000000000000000000000000
mkdir -p out sub "$(dirname {deep})"
printf 1 >"out/tab	name.txt"
printf 2 >"out/space name.txt"
printf 3 >out/{long}
printf 4 >{deep}
printf 5 >'out/back\slash'
# Names with a newline that would put a line of their own in a manifest written a name
# per line: `<md5>  /etc/hostname`, `<md5>  ../secret.txt`, `<md5>  {outside}/secret.txt`.
mkdir -p "out/nl
$z  /etc"
printf 6 >"out/nl
$z  /etc/hostname"
mkdir -p "out/up
$z  .."
printf 7 >"out/up
$z  ../secret.txt"
mkdir -p "out/abs
$z  {outside}"
printf 8 >"out/abs
$z  {outside}/secret.txt"
printf 9 >x.txt
"#
    );
    case("awkward", &script)
        .with_artifact("out/*")
        .with_artifact("sub/../x.txt")
}

/// The child: runs the cases of its mode and writes what came back, and its peak memory.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "boots QEMU guests: run by `cargo xtask test`"]
async fn hostile_child_process() {
    // Only meaningful as the child of the tests below.
    let (Ok(mode), Ok(out), Ok(outside)) = (
        std::env::var(MODE),
        std::env::var(OUT),
        std::env::var(OUTSIDE),
    ) else {
        return;
    };
    let outside = PathBuf::from(outside);
    let cases = match mode.as_str() {
        "plain" => vec![case("plain", "echo hello; echo hi >out.txt").with_artifact("out.txt")],
        "hostile" => vec![forger(&outside), awkward(&outside)],
        other => panic!("unknown mode {other}"),
    };
    let scratch = PathBuf::from(&out).join("scratch");
    let orch = Orchestrator::new(RunConfig::new(&scratch).with_parallelism(1))
        .with_runner(QemuRunner::new(QemuConfig::new()));
    let report = orch.run(cases).await.expect("valid run");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status");
    let results: Vec<serde_json::Value> = report
        .results
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.test_id.as_str(),
                "outcome": r.outcome.to_string(),
                "message": r.message.clone().unwrap_or_default(),
                "environment": r.environment,
                "artifacts": r.artifacts.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json = serde_json::json!({ "vm_hwm_kib": hwm, "results": results });
    std::fs::write(
        PathBuf::from(out).join("result.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
}

/// What one child run left: its results, its peak memory and every path its threads named.
struct Traced {
    json: serde_json::Value,
    vm_hwm_kib: u64,
    /// The runner's process id.
    pid: u32,
    paths: BTreeSet<(String, PathBuf)>,
}

/// Runs the child in `mode` under `strace -f`, in `dir`.
fn run_traced(mode: &str, dir: &Path, outside: &Path) -> Traced {
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let log = dir.join("strace.log");
    let exe = std::env::current_exe().unwrap();
    let status = std::process::Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "4096", "--seccomp-bpf"])
        .args(["-e", "trace=%file,%process"])
        .arg("-o")
        .arg(&log)
        .arg(&exe)
        .args([
            "--exact",
            "hostile_child_process",
            "--ignored",
            "--nocapture",
        ])
        .env(MODE, mode)
        .env(OUT, dir)
        .env(OUTSIDE, outside)
        // Temporary files (the VM's socket directory) inside the run's own directory.
        .env("TMPDIR", dir.join("tmp"))
        .current_dir(dir)
        .status()
        .expect("strace runs (apt-get install strace; `cargo xtask test` does)");
    assert!(status.success(), "the {mode} child failed: {status}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("result.json")).unwrap()).unwrap();
    let vm_hwm_kib = json["vm_hwm_kib"].as_u64().unwrap();
    let (pid, paths) = runner_paths(&std::fs::read_to_string(&log).unwrap(), dir);
    Traced {
        json,
        vm_hwm_kib,
        pid,
        paths,
    }
}

/// `strace` string contents with C escapes undone.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 1 < b.len() {
            i += 1;
            match b[i] {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'v' => out.push(0x0b),
                b'f' => out.push(0x0c),
                b'x' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                b'0'..=b'7' => {
                    let end = (i..(i + 3).min(b.len()))
                        .take_while(|&j| (b'0'..=b'7').contains(&b[j]))
                        .last()
                        .unwrap();
                    out.push(u8::from_str_radix(&s[i..=end], 8).unwrap());
                    i = end;
                }
                c => out.push(c),
            }
        } else {
            out.push(b[i]);
        }
        i += 1;
    }
    out
}

/// The first quoted string of `args` (strace's rendering of a syscall's arguments) and the
/// `<path>` of a directory descriptor before it (`-y`), if any.
fn first_path(args: &str) -> Option<(Option<String>, String)> {
    let start = args.find('"')?;
    let mut end = start + 1;
    let b = args.as_bytes();
    while end < b.len() && b[end] != b'"' {
        if b[end] == b'\\' {
            end += 1;
        }
        end += 1;
    }
    let before = &args[..start];
    let dir = before.find('<').and_then(|a| {
        before[a + 1..]
            .find('>')
            .map(|z| before[a + 1..a + 1 + z].to_owned())
    });
    use std::os::unix::ffi::OsStrExt as _;
    let raw = unescape(&args[start + 1..end.min(b.len())]);
    Some((
        dir,
        std::ffi::OsStr::from_bytes(&raw)
            .to_string_lossy()
            .into_owned(),
    ))
}

/// Lexically normal: `.` dropped, `..` applied.
fn normal(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Every (syscall, path) of the runner's threads in an `strace -f` log: processes that
/// `execve`d another program (QEMU, `qemu --version`) are left out from that exec on, and
/// so are their children. Relative paths are taken from `cwd` or the descriptor's path.
fn runner_paths(log: &str, cwd: &Path) -> (u32, BTreeSet<(String, PathBuf)>) {
    let mut out = BTreeSet::new();
    let mut other: BTreeSet<u32> = BTreeSet::new();
    let mut root: Option<u32> = None;
    for line in log.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        if root.is_none() {
            root = Some(pid);
        }
        // `<... clone3 resumed>, ...) = 456`: the end of a call split by another thread's.
        let (call, args) = if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((call, args)) = resumed.split_once(" resumed>") else {
                continue;
            };
            (call, args)
        } else {
            let Some(open) = rest.find('(') else {
                continue;
            };
            (&rest[..open], &rest[open + 1..])
        };
        if matches!(call, "clone" | "clone3" | "fork" | "vfork") {
            // A child or thread of an excluded process is excluded too.
            if other.contains(&pid)
                && let Some(child) = rest.rsplit("= ").next().and_then(|c| c.parse().ok())
            {
                other.insert(child);
            }
            continue;
        }
        if call == "execve" && rest.ends_with("= 0") {
            // The first exec is the runner's; any later one starts another program (QEMU).
            if Some(pid) != root || !out.is_empty() {
                other.insert(pid);
            }
            continue;
        }
        if other.contains(&pid) || rest.starts_with("<...") || rest.starts_with("+++") {
            continue;
        }
        if let Some((dir, path)) = first_path(args) {
            let p = Path::new(&path);
            let full = if p.is_absolute() {
                p.to_path_buf()
            } else {
                match dir {
                    Some(d) => Path::new(&d).join(p),
                    None => cwd.join(p),
                }
            };
            out.insert((call.to_owned(), normal(&full)));
        }
    }
    (root.expect("an strace log"), out)
}

/// Why a path named by the runner's threads is allowed, or `None`. The allowed set:
/// - the run's own directory (the orchestrator's scratch with the artifacts, and `TMPDIR` with
///   the VM's socket directory), the image and build caches, the test binary;
/// - the QEMU binary looked up in `PATH` (`execve`, `access`, `stat` of `qemu-system-*`);
/// - what the dynamic loader, glibc and the Rust runtime read at start-up: `ld.so.cache`,
///   `ld.so.preload`, shared libraries (also in `LD_LIBRARY_PATH`, which cargo sets), the process's own `/proc/<pid>/` (stack guard, cgroup,
///   status), the cgroup CPU quota and the CPU list (available parallelism),
///   `/proc/sys/vm/overcommit_memory` (glibc malloc);
/// - the report's host name (`/proc/sys/kernel/hostname`), `/dev/kvm` (the accelerator
///   choice), `/dev/null` (stdin of the child processes) and terminfo (the test harness's
///   colour detection).
fn allowed(
    call: &str,
    path: &Path,
    dir: &Path,
    images: &Path,
    exe: &Path,
    pid: u32,
) -> Option<&'static str> {
    let s = path.to_string_lossy();
    if path.starts_with(dir) {
        return Some("the run's directory: scratch, artifacts, the VM socket directory");
    }
    if path.starts_with(images) {
        return Some("the image cache and build cache");
    }
    if path == exe {
        return Some("the test binary itself");
    }
    if call == "execve" || call == "access" || call.contains("stat") {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("qemu-system-")) {
            return Some("QEMU looked up in PATH before it is started");
        }
    }
    if path.starts_with(format!("/proc/{pid}")) || path.starts_with("/proc/self") {
        return Some("the process's own state (stack, cgroup, status)");
    }
    // cargo and nextest put the toolchain's and the target's library directories there; the
    // loader looks for shared libraries in them at start-up.
    let search = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    if search
        .split(':')
        .any(|d| !d.is_empty() && path.starts_with(d))
    {
        return Some("the dynamic loader's LD_LIBRARY_PATH");
    }
    let exact: [(&str, &'static str); 6] = [
        ("/etc/ld.so.cache", "the dynamic loader"),
        ("/etc/ld.so.preload", "the dynamic loader"),
        ("/proc/sys/vm/overcommit_memory", "glibc malloc"),
        ("/proc/sys/kernel/hostname", "the report's host name"),
        ("/dev/kvm", "whether KVM exists (the accelerator choice)"),
        ("/dev/null", "stdin of the child processes"),
    ];
    if let Some((_, why)) = exact.iter().find(|(p, _)| *p == s) {
        return Some(why);
    }
    let prefixes: [(&str, &'static str); 8] = [
        ("/lib/", "shared libraries"),
        ("/lib64/", "shared libraries"),
        ("/usr/lib/", "shared libraries"),
        ("/sys/fs/cgroup/", "the CPU quota (available parallelism)"),
        ("/sys/devices/system/cpu/", "the CPU count"),
        (
            "/etc/terminfo",
            "terminfo (the test harness's colour detection)",
        ),
        (
            "/usr/share/terminfo",
            "terminfo (the test harness's colour detection)",
        ),
        (
            "/root/.terminfo",
            "terminfo (the test harness's colour detection)",
        ),
    ];
    prefixes
        .iter()
        .find(|(p, _)| s.starts_with(p))
        .map(|(_, why)| *why)
}

fn check_paths(traced: &Traced, dir: &Path, outside: &Path) {
    let images = qemu_runner::provision::default_cache_dir();
    let exe = std::env::current_exe().unwrap();
    let mut bad = Vec::new();
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    for (call, path) in &traced.paths {
        assert!(
            !path.starts_with(outside),
            "the runner named {} ({call})",
            path.display()
        );
        match allowed(call, path, dir, &images, &exe, traced.pid) {
            Some(w) => *why.entry(w).or_default() += 1,
            None => bad.push(format!("{call} {}", path.display())),
        }
    }
    eprintln!("paths named by the runner, by reason: {why:#?}");
    assert!(
        bad.is_empty(),
        "the runner named paths outside the allowed set:\n{}",
        bad.join("\n")
    );
}

fn result<'a>(json: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    json["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"].as_str().unwrap().starts_with(id))
        .unwrap_or_else(|| panic!("no result for {id}"))
}

#[test]
#[ignore = "boots QEMU guests: run by `cargo xtask test`"]
fn hostile_guests_make_the_host_open_nothing_outside_its_scratch() {
    let root = tempfile::tempdir().unwrap();
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "secret").unwrap();
    nix::unistd::mkfifo(&outside.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();

    let plain_dir = root.path().join("plain");
    let plain = run_traced("plain", &plain_dir, &outside);
    let hostile_dir = root.path().join("hostile");
    let hostile = run_traced("hostile", &hostile_dir, &outside);
    eprintln!("{}", serde_json::to_string_pretty(&hostile.json).unwrap());

    check_paths(&plain, &plain_dir, &outside);
    check_paths(&hostile, &hostile_dir, &outside);
    let p = result(&plain.json, "plain");
    assert_eq!(p["outcome"], "passed", "{p}");

    // The forger: it did find the nonce (its forged exit code and transfer were taken), and
    // every forged name and stream beyond the limit is named in its result.
    let forger = result(&hostile.json, "forger");
    let message = forger["message"].as_str().unwrap();
    let rejected = forger["environment"]["rejected-guest-records"]
        .as_str()
        .unwrap_or_else(|| panic!("no rejected records named: {forger}"));
    assert!(message.contains("rejected guest records: "), "{message}");
    for expected in [
        "`/etc/hostname`: the path is absolute",
        "`/dev/zero`: the path is absolute",
        "9,991 SEND streams beyond the limit of 16",
        "EXIT 7 after EXIT 0",
    ] {
        assert!(rejected.contains(expected), "{expected} in {rejected}");
    }
    // Six refused manifest names: three shown, the rest counted.
    assert!(rejected.contains("6 manifest names refused"), "{rejected}");
    assert!(
        message.contains("artifacts missing: `out/never-sent.txt`"),
        "{message}"
    );
    assert!(rejected.len() <= 2000, "{}", rejected.len());
    let arts: Vec<&str> = forger["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(arts.contains(&"files/out/ok.txt"), "{arts:?}");

    // The awkward names: legal ones back under their exact names, the others refused by name.
    let awk = result(&hostile.json, "awkward");
    let message = awk["message"].as_str().unwrap();
    let arts: BTreeSet<&str> = awk["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let long = format!("files/out/{}", long_name());
    let deep = format!("files/{}", long_path());
    for name in [
        "files/out/tab\tname.txt",
        "files/out/space name.txt",
        "files/out/back\\slash",
        long.as_str(),
        deep.as_str(),
    ] {
        assert!(arts.contains(name), "{name:?} not in {arts:?}");
    }
    let scratch = hostile_dir.join("scratch");
    let found: Vec<PathBuf> = walk(&scratch)
        .into_iter()
        .filter(|p| p.ends_with("tab\tname.txt"))
        .collect();
    assert_eq!(std::fs::read(&found[0]).unwrap(), b"1");
    assert!(
        message.contains("artifact `out/nl\\n00000000000000000000000000000000  /etc/hostname` rejected: the name contains a newline"),
        "{message}"
    );
    assert!(message.contains("artifact `out/up\\n"), "{message}");
    assert!(message.contains("artifact `out/abs\\n"), "{message}");
    assert!(
        message.contains("`sub/../x.txt`: the path contains `..`"),
        "{message}"
    );
    assert!(!message.contains("damaged"), "{message}");
    assert_eq!(awk["outcome"], "passed", "{awk}");

    // Memory: the runner process's peak, against a plain test's.
    eprintln!(
        "peak RSS of the runner: plain test {} KiB, hostile tests {} KiB ({:.2}x)",
        plain.vm_hwm_kib,
        hostile.vm_hwm_kib,
        hostile.vm_hwm_kib as f64 / plain.vm_hwm_kib as f64
    );
    assert!(
        hostile.vm_hwm_kib < 2 * plain.vm_hwm_kib,
        "peak memory {} KiB against {} KiB for a plain test",
        hostile.vm_hwm_kib,
        plain.vm_hwm_kib
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
