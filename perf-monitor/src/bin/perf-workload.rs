//! Known workloads for perf-monitor's accuracy tests and benchmark (not part of the API).
//!
//! ```text
//! perf-workload burn SECONDS          busy-loop until this process used SECONDS of CPU
//! perf-workload touch MIB HOLD_MS     allocate and touch MIB MiB, hold them HOLD_MS, exit
//! perf-workload write PATH MIB        write MIB MiB to PATH, fsync, exit
//! perf-workload fork N LIFE_MS        run N children one after another, each burning LIFE_MS
//! perf-workload tree N SECONDS        keep N-1 sleeping children for SECONDS, then exit
//! ```

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

fn cpu_now() -> Duration {
    clock_gettime(ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

fn burn(d: Duration) {
    let start = cpu_now();
    let mut x = 0u64;
    while cpu_now() - start < d {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    match args.get(i).and_then(|a| a.parse().ok()) {
        Some(v) => v,
        None => {
            eprintln!("perf-workload: bad or missing argument {i}");
            std::process::exit(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let me = std::env::current_exe().unwrap_or_else(|_| "perf-workload".into());
    match args.get(1).map(String::as_str) {
        Some("burn") => burn(Duration::from_secs_f64(arg(&args, 2))),
        Some("touch") => {
            let mib: usize = arg(&args, 2);
            let hold: u64 = arg(&args, 3);
            let mut v = vec![0u8; mib << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            std::hint::black_box(&v);
            std::thread::sleep(Duration::from_millis(hold));
            std::hint::black_box(&v);
        }
        Some("write") => {
            let path: String = arg(&args, 2);
            let mib: usize = arg(&args, 3);
            let chunk = vec![0xa5u8; 1 << 20];
            let Ok(mut f) = std::fs::File::create(&path) else {
                return ExitCode::from(3);
            };
            for _ in 0..mib {
                if f.write_all(&chunk).is_err() {
                    return ExitCode::from(3);
                }
            }
            if f.sync_all().is_err() {
                return ExitCode::from(3);
            }
        }
        Some("fork") => {
            let n: usize = arg(&args, 2);
            let life: f64 = arg::<f64>(&args, 3) / 1000.0;
            for _ in 0..n {
                match Command::new(&me).args(["burn", &life.to_string()]).status() {
                    Ok(s) if s.success() => {}
                    _ => return ExitCode::from(4),
                }
            }
        }
        Some("tree") => {
            let n: usize = arg(&args, 2);
            let secs: f64 = arg(&args, 3);
            let mut kids = Vec::new();
            for _ in 1..n {
                match Command::new("sleep").arg(secs.to_string()).spawn() {
                    Ok(c) => kids.push(c),
                    Err(_) => return ExitCode::from(4),
                }
            }
            for mut k in kids {
                let _ = k.wait();
            }
        }
        _ => {
            eprintln!("usage: perf-workload burn|touch|write|fork|tree ...");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
