//! The human summary table.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Color, ContentArrangement, Table};

use super::RunReport;
use crate::result::Verdict;

/// Renders a table with a row per test (architecture, verdict, outcome, duration, attempts,
/// peak CPU and memory when monitored, artifacts) and a totals line, then what went into the
/// artifact store. `color` adds terminal colours to the verdict column.
pub fn summary_table(report: &RunReport, color: bool) -> String {
    let monitored = report.results.iter().any(|r| r.resources.is_some());
    let mut header = vec![
        "test", "runner", "arch", "verdict", "outcome", "duration", "attempts",
    ];
    if monitored {
        header.extend(["peak CPU", "peak memory"]);
    }
    header.push("artifacts");
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    if !color {
        table.force_no_tty();
    }
    for r in &report.results {
        let verdict = r.verdict();
        let mut verdict_cell = Cell::new(verdict.label());
        if color {
            verdict_cell = verdict_cell.fg(match verdict {
                Verdict::Passed | Verdict::ExpectedFailure => Color::Green,
                Verdict::Skipped | Verdict::Cancelled => Color::Yellow,
                _ => Color::Red,
            });
        }
        let right = |c: Cell| c.set_alignment(CellAlignment::Right);
        let mut row = vec![
            Cell::new(r.test_id.as_str()),
            Cell::new(r.runner.as_str()),
            Cell::new(r.environment.get("arch").map_or("-", String::as_str)),
            verdict_cell,
            Cell::new(r.outcome.to_string()),
            right(Cell::new(format!("{:.2}s", r.duration().as_secs_f64()))),
            right(Cell::new(r.attempt)),
        ];
        if monitored {
            let (cpu, mem) = match &r.resources {
                Some(u) => (
                    u.peak_cpu_percent
                        .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}%")),
                    human_bytes(u.peak_rss_bytes),
                ),
                None => ("-".to_owned(), "-".to_owned()),
            };
            row.push(right(Cell::new(cpu)));
            row.push(right(Cell::new(mem)));
        }
        row.push(right(Cell::new(r.artifacts.len())));
        table.add_row(row);
    }
    let s = &report.summary;
    let elapsed = (report.finished_at - report.started_at)
        .to_std()
        .unwrap_or_default();
    let mut out = table.to_string();
    out.push('\n');
    let counts = [
        (s.passed, "passed"),
        (s.expected_failures, "failed as expected"),
        (s.failed, "failed"),
        (s.unexpected_passes, "passed unexpectedly"),
        (s.errors, "infrastructure errors"),
        (s.skipped, "skipped"),
        (s.cancelled, "cancelled"),
        (s.retries, "retries"),
    ];
    let parts: Vec<String> = counts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    out.push_str(&format!(
        "{} tests in {:.2}s: {}",
        s.total,
        elapsed.as_secs_f64(),
        if parts.is_empty() {
            "nothing ran".to_owned()
        } else {
            parts.join(", ")
        }
    ));
    if let Some(subtests) = s.subtests.describe() {
        out.push_str(&format!("\n{subtests}"));
    }
    if let Some(i) = report.interrupted {
        out.push_str(match i {
            crate::Interruption::Cancelled => "\nthe run was cancelled",
            crate::Interruption::DeadlineReached => "\nthe run's deadline was reached",
        });
    }
    out.push('\n');
    if let Some(st) = &report.storage {
        out.push_str(&format!(
            "store {}: {} artifacts stored ({})",
            st.root.display(),
            st.artifacts_stored,
            human_bytes(st.bytes_stored)
        ));
        #[cfg(feature = "store")]
        if let Some(stats) = &st.stats {
            out.push_str(&format!(
                "; it holds {} records in {} blobs, {} on disk (dedup {:.2}x, compression {:.2}x)",
                stats.live_records,
                stats.blobs,
                human_bytes(stats.stored_bytes),
                stats.dedup_ratio(),
                stats.compression_ratio()
            ));
        }
        #[cfg(feature = "store")]
        if let Some(ret) = &st.retention {
            out.push_str(&format!(
                "; retention evicted {} records and freed {}",
                ret.records_evicted,
                human_bytes(ret.gc.bytes_removed)
            ));
        }
        out.push('\n');
        for e in &st.errors {
            out.push_str(&format!("store error: {e}\n"));
        }
    }
    out
}

/// `1.5 MiB`-style sizes.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
