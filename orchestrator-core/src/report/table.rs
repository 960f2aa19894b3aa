//! The human summary table.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Color, ContentArrangement, Table};

use super::RunReport;
use crate::result::Verdict;

/// Renders a table with a row per test (verdict, outcome, duration, attempts, artifacts) and a
/// totals line. `color` adds terminal colours to the verdict column.
pub fn summary_table(report: &RunReport, color: bool) -> String {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(vec![
            "test",
            "runner",
            "verdict",
            "outcome",
            "duration",
            "attempts",
            "artifacts",
        ]);
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
        table.add_row(vec![
            Cell::new(r.test_id.as_str()),
            Cell::new(r.runner.as_str()),
            verdict_cell,
            Cell::new(r.outcome.to_string()),
            Cell::new(format!("{:.2}s", r.duration().as_secs_f64()))
                .set_alignment(CellAlignment::Right),
            Cell::new(r.attempt).set_alignment(CellAlignment::Right),
            Cell::new(r.artifacts.len()).set_alignment(CellAlignment::Right),
        ]);
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
    if let Some(i) = report.interrupted {
        out.push_str(match i {
            crate::Interruption::Cancelled => "\nthe run was cancelled",
            crate::Interruption::DeadlineReached => "\nthe run's deadline was reached",
        });
    }
    out.push('\n');
    out
}
