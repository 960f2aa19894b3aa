//! Runs a command under the monitor and prints its summary as JSON.
//!
//! `cargo run -p perf-monitor --example watch -- [--interval-ms N] [--out FILE.jsonl.zst] CMD [ARGS...]`

use std::process::{Command, ExitCode};
use std::time::Duration;

use perf_monitor::{Monitor, MonitorConfig};

fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut interval = 100;
    let mut out = None;
    loop {
        match args.first().map(String::as_str) {
            Some("--interval-ms") if args.len() > 1 => {
                interval = args[1].parse()?;
                args.drain(..2);
            }
            Some("--out") if args.len() > 1 => {
                out = Some(args[1].clone());
                args.drain(..2);
            }
            _ => break,
        }
    }
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: watch [--interval-ms N] [--out FILE.jsonl.zst] CMD [ARGS...]");
        return Ok(ExitCode::from(2));
    };
    let monitor =
        Monitor::new(MonitorConfig::default().with_interval(Duration::from_millis(interval)));
    let child = Command::new(cmd).args(rest).spawn()?;
    let guard = monitor.watch_child(child, cmd.clone())?;
    while !guard.wait_exit(Duration::from_secs(3600)) {}
    let rec = guard.finish()?;
    println!("{}", serde_json::to_string_pretty(&rec.summary)?);
    if let Some(path) = out {
        std::fs::write(&path, rec.to_zstd(3)?)?;
        eprintln!("{} samples written to {path}", rec.series.len());
    }
    let code = rec.summary.exact.and_then(|e| e.exit_code).unwrap_or(1);
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
