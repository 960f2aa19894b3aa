use std::time::{Duration, Instant};

use orchestrator_core::{
    Arch, CancellationToken, Command, ExecutionContext, Outcome, Phase, ProcessRunner,
    ProcessRunnerConfig, Requirements, TestCase, TestId, TestRunner,
};

use crate::{is_alive, read_pid};

fn runner(grace_ms: u64) -> ProcessRunner {
    let mut config = ProcessRunnerConfig::default();
    config.kill_grace = Duration::from_millis(grace_ms);
    ProcessRunner::new(config)
}

async fn run(case: &TestCase, ctx: ExecutionContext) -> orchestrator_core::TestResult {
    std::fs::create_dir_all(ctx.scratch_dir()).unwrap();
    runner(300).execute(case, &ctx).await.expect("runner works")
}

#[tokio::test]
async fn exit_codes_and_output_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let case = TestCase::script("fails", "echo out; echo err >&2; exit 3");
    let r = run(&case, ExecutionContext::new(&case, dir.path())).await;
    assert_eq!(
        r.outcome,
        Outcome::Failed {
            exit_code: Some(3),
            signal: None
        }
    );
    assert_eq!(r.stdout.text, "out\n");
    assert_eq!(r.stderr.text, "err\n");
    assert!(r.phase(Phase::Setup).is_some() && r.phase(Phase::Test).is_some());

    let case = TestCase::new(
        TestId::new("exec").unwrap(),
        Command::exec(["printf", "%s-%s", "a", "b"]).unwrap(),
    );
    let r = run(&case, ExecutionContext::new(&case, dir.path().join("x"))).await;
    assert_eq!(r.outcome, Outcome::Passed);
    assert_eq!(r.stdout.text, "a-b");
}

#[tokio::test]
async fn timeout_kills_a_grandchild_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!(
        "(trap '' TERM; exec sleep 1000) &\necho $! > {}\nsleep 1000\n",
        pidfile.display()
    );
    let case = TestCase::script("hang", &script).with_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let r = run(&case, ExecutionContext::new(&case, dir.path().join("s"))).await;
    let elapsed = started.elapsed();
    assert_eq!(
        r.outcome,
        Outcome::TimedOut {
            phase: Phase::Test,
            limit: Duration::from_secs(1)
        }
    );
    let grandchild = read_pid(&pidfile);
    assert!(!is_alive(grandchild), "grandchild {grandchild} survived");
    let message = r.message.unwrap();
    assert!(
        message.contains("ignored SIGTERM") && message.contains("SIGKILL"),
        "{message}"
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}

#[tokio::test]
async fn processes_left_behind_after_exit_are_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    let script = format!("sleep 1000 &\necho $! > {}\nexit 0\n", pidfile.display());
    let case = TestCase::script("leaks", &script);
    let r = run(&case, ExecutionContext::new(&case, dir.path().join("s"))).await;
    assert_eq!(r.outcome, Outcome::Passed);
    assert!(!is_alive(read_pid(&pidfile)));
    assert!(r.message.unwrap().contains("left processes running"));
}

#[tokio::test]
async fn cancellation_stops_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("t.pid");
    let case = TestCase::script(
        "long",
        &format!("echo $$ > {}\nsleep 1000", pidfile.display()),
    );
    let cancel = CancellationToken::new();
    let ctx = ExecutionContext::new(&case, dir.path().join("s")).with_cancel(cancel.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
    });
    let r = run(&case, ctx).await;
    assert_eq!(r.outcome, Outcome::Cancelled);
    assert!(!is_alive(read_pid(&pidfile)));
}

#[tokio::test]
async fn huge_output_is_bounded_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    // One GiB on stdout; the capture keeps 64 KiB.
    let case = TestCase::script(
        "loud",
        "head -c 1073741824 /dev/zero | tr '\\0' 'a'; echo; echo END",
    )
    .with_timeout(Duration::from_secs(120));
    let ctx = ExecutionContext::new(&case, dir.path()).with_output_limit(64 * 1024);
    let r = run(&case, ctx).await;
    assert_eq!(r.outcome, Outcome::Passed);
    assert_eq!(r.stdout.total_bytes, 1_073_741_824 + 5);
    assert!(r.stdout.is_truncated());
    assert!(r.stdout.text.len() < 64 * 1024 + 100);
    assert!(r.stdout.text.contains("bytes truncated ...]"));
    assert!(r.stdout.text.ends_with("\nEND\n"));
    assert!(r.message.unwrap().contains("output truncated"));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap();
    assert!(hwm_kib < 512 * 1024, "peak RSS {hwm_kib} KiB");
}

#[tokio::test]
async fn files_are_placed_and_artifacts_collected() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "payload").unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/deep.txt"), "deep").unwrap();
    let case = TestCase::script(
        "files",
        "test \"$(cat fixtures/sub/deep.txt)\" = deep\ncat data/in.txt > copy.log\necho direct > \"$ORCH_ARTIFACT_DIR/direct.txt\"\necho no > skip.tmp",
    )
    .with_file(&input, "data/in.txt")
    .with_file(&tree, "fixtures")
    .with_artifact("*.log");
    let r = run(&case, ExecutionContext::new(&case, dir.path().join("s"))).await;
    assert_eq!(r.outcome, Outcome::Passed, "{:?}", r.stderr);
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["copy.log", "direct.txt"]);
    assert_eq!(
        std::fs::read_to_string(&r.artifacts[0].path).unwrap(),
        "payload"
    );
    assert_eq!(r.artifacts[0].size, 7);
}

#[test]
fn check_rejects_what_the_host_cannot_give() {
    let r = ProcessRunner::default();
    let mut req = Requirements::default();
    req.kernel = Some("bzImage".into());
    let case = TestCase::script("k", "true").with_requirements(req);
    assert!(
        r.check(&case)
            .unwrap_err()
            .to_string()
            .contains("needs kernel bzImage")
    );
    let mut req = Requirements::default();
    req.modules_dir = Some("build/modules".into());
    let case = TestCase::script("m", "true").with_requirements(req);
    assert!(
        r.check(&case)
            .unwrap_err()
            .to_string()
            .contains("remove `modules-dir`")
    );

    let foreign = Arch::ALL
        .into_iter()
        .find(|a| Some(*a) != Arch::host())
        .unwrap();
    let mut req = Requirements::default();
    req.arch = Some(foreign);
    let case = TestCase::script("a", "true").with_requirements(req);
    assert!(
        r.check(&case)
            .unwrap_err()
            .to_string()
            .contains("needs architecture")
    );

    let case = TestCase::new(
        TestId::new("p").unwrap(),
        Command::exec(["no-such-program-xyz"]).unwrap(),
    );
    assert!(
        r.check(&case)
            .unwrap_err()
            .to_string()
            .contains("not in PATH")
    );
    assert!(r.check(&TestCase::script("ok", "true")).is_ok());
}
