//! Campaign planning: the demo plan (`examples/plans/demo.toml`, six tests on four
//! architectures) with planning on (tests that boot alike restored from one snapshot per group)
//! and off (a boot per test), alternated on the same machine, at least three rounds; prints
//! each round's wall times, the medians and their ratio, how each test ran, and any test whose
//! verdict or subtests differ between the two. Needs QEMU and the provisioned images (`cargo
//! xtask test` installs both). `ORCH_BENCH_ROUNDS` sets the rounds (default 3, at least 1).
//! The plan runs as `qorch run` would, without its store and monitor.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use orchestrator_core::{Orchestrator, RunConfig, RunReport, plan};
use qemu_runner::{QemuConfig, QemuPlan, QemuRunner};

async fn run(plan: &plan::Plan, planning: bool) -> (f64, RunReport) {
    let scratch = tempfile::tempdir().unwrap();
    let qemu = QemuConfig::from_plan(plan.section::<QemuPlan>().expect("the demo has [qemu]"))
        .with_planning(planning);
    let orch = Orchestrator::new(RunConfig::new(scratch.path()).with_plan_settings(&plan.settings))
        .with_runner(QemuRunner::new(qemu));
    let started = Instant::now();
    let report = orch.run(plan.cases.clone()).await.unwrap();
    (started.elapsed().as_secs_f64(), report)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per test: its verdict and subtests (what must not depend on planning).
fn verdicts(report: &RunReport) -> BTreeMap<String, String> {
    report
        .results
        .iter()
        .map(|r| {
            let subtests: Vec<String> = r
                .subtests
                .iter()
                .map(|s| format!("{}={:?}", s.name, s.status))
                .collect();
            (
                r.test_id.to_string(),
                format!("{:?} {}", r.verdict(), subtests.join(",")),
            )
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !benches::under_cargo_bench("planning") {
        return;
    }
    let rounds = benches::env_num("ORCH_BENCH_ROUNDS", 3);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/plans/demo.toml");
    let plan = plan::Loader::new()
        .section::<QemuPlan>()
        .load(&path)
        .unwrap_or_else(|e| panic!("{e}"));
    println!(
        "demo plan: {} tests, parallelism {}, {rounds} rounds alternating (on first in odd rounds)",
        plan.cases.len(),
        plan.settings.parallelism.unwrap_or(1),
    );
    println!();
    println!("| round | planning on | planning off | on ÷ off |");
    println!("|---|---|---|---|");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut last_on = None;
    let mut differ: BTreeMap<String, (String, String)> = BTreeMap::new();
    for round in 1..=rounds {
        let order = if round % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        let mut times = [0.0; 2];
        let mut reports: [Option<RunReport>; 2] = [None, None];
        for planning in order {
            let (secs, report) = run(&plan, planning).await;
            let i = usize::from(!planning);
            times[i] = secs;
            reports[i] = Some(report);
        }
        let [Some(p), Some(a)] = reports else {
            unreachable!()
        };
        let (vp, va) = (verdicts(&p), verdicts(&a));
        for (id, want) in &va {
            let got = vp.get(id).cloned().unwrap_or_default();
            if &got != want {
                differ.insert(format!("{id} (round {round})"), (got, want.clone()));
            }
        }
        println!(
            "| {round} | {:.1} s | {:.1} s | {:.2} |",
            times[0],
            times[1],
            times[0] / times[1]
        );
        on.push(times[0]);
        off.push(times[1]);
        last_on = Some(p);
    }
    let (m_on, m_off) = (median(on), median(off));
    println!(
        "| median | {m_on:.1} s | {m_off:.1} s | {:.2} |",
        m_on / m_off
    );
    println!();
    println!("How each test ran with planning on (last round):");
    if let Some(report) = last_on {
        let mut restored = 0;
        for r in &report.results {
            let mode = r.environment.get("mode").map_or("?", String::as_str);
            if mode == "snapshot-reset" {
                restored += 1;
            } else {
                println!(
                    "  {}: {mode} ({})",
                    r.test_id,
                    r.environment
                        .get("planning")
                        .map_or("not planned", String::as_str)
                );
            }
        }
        println!(
            "  the other {restored} of {} tests: restored from their group's snapshot",
            report.results.len()
        );
    }
    if differ.is_empty() {
        println!("Verdicts and subtests: the same with planning on and off in every round.");
    } else {
        println!("Verdicts or subtests that differ (on / off):");
        for (id, (p, a)) in differ {
            println!("  {id}: {p} / {a}");
        }
    }
}
