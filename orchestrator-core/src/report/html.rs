//! The self-contained HTML report: one file with inline CSS and inline SVG plots, no scripts and
//! no external references, readable offline and safe to open whatever the guests printed.

use std::fmt::{self, Write as _};
use std::io;
use std::path::Path;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::table::human_bytes;
use super::{ReportError, RunReport};
use crate::orchestrator::Interruption;
use crate::result::{ResourceUsage, SubtestStatus, TestResult, Verdict};

/// How much of each console, stdout and stderr text a test's details keep: the last 4 KiB (so a
/// report of a thousand tests stays a few megabytes; the full texts are artifacts).
const EXCERPT_BYTES: usize = 4096;
/// How long a message may be in the one-line preview of a test's details.
const PREVIEW_CHARS: usize = 160;
/// Failing tests' details are open from the start when at most this many tests failed.
const OPEN_FAILURES_MAX: usize = 10;
/// The most tests in the run-level overview bars (those that used the most memory).
const OVERVIEW_MAX: usize = 40;

/// CPU line and bar colour.
const CPU_COLOR: RGBColor = RGBColor(31, 119, 180);
/// Memory line and bar colour.
const MEM_COLOR: RGBColor = RGBColor(230, 120, 20);

const STYLE: &str = r#"
:root{color-scheme:light}
*{box-sizing:border-box}
body{margin:0;background:#f3f4f7;color:#1d2330;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Liberation Sans","DejaVu Sans",sans-serif}
main{max-width:1440px;margin:0 auto;padding:16px 20px 48px}
.card{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:14px 18px;margin-bottom:14px}
h1{font-size:22px;margin:0 0 6px;display:flex;align-items:center;gap:12px;flex-wrap:wrap}
h2{font-size:16px;margin:0 0 8px}
h4{font-size:13px;margin:12px 0 4px}
h4 small,.dim{color:#5c6573;font-weight:400}
.status{font-size:13px;padding:3px 12px;border-radius:999px;color:#fff;font-weight:700;letter-spacing:.05em}
.ok{background:#1a7f37}.bad{background:#cf222e}.warn{background:#9a6700}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:1px 16px;margin:6px 0}
dl.meta dt{color:#5c6573}dl.meta dd{margin:0;overflow-wrap:anywhere}
.summary{font-size:15px;margin:10px 0 4px}
ul.counts{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:8px 0 0}
ul.counts li{border:1px solid #d8dce3;border-radius:6px;padding:3px 10px;background:#fafbfc}
ul.counts li b{font-size:17px;margin-right:5px}
ul.counts li.zero{opacity:.45}
ul.counts li.c-bad{border-color:#cf222e;background:#fff1f0}
ul.counts li.c-ok{border-color:#1a7f37;background:#effaf1}
ul.errors{color:#cf222e;margin:6px 0;padding-left:20px}
table{border-collapse:collapse}
table.results{width:100%}
table.results th{position:sticky;top:0;background:#e9edf2;text-align:left;padding:6px 8px;font-size:13px;border-bottom:1px solid #c9ced6}
table.results td{padding:5px 8px;vertical-align:top}
table.results tbody{border-bottom:1px solid #e1e4e9}
table.results tbody.failing{background:#fff8f7}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.id{font-weight:600;overflow-wrap:anywhere}
td.id small{display:block;font-weight:400;color:#5c6573}
td.outcome{max-width:340px;overflow-wrap:anywhere}
.v{display:inline-block;min-width:52px;text-align:center;font-weight:700;font-size:12px;padding:1px 6px;border-radius:4px;color:#fff}
.v-pass{background:#1a7f37}.v-xfail{background:#2b8a7e}.v-fail{background:#cf222e}.v-xpass{background:#bc4c00}.v-error{background:#8250df}.v-skip{background:#6e7781}.v-cancel{background:#9a6700}
.s-passed{color:#1a7f37}.s-failed{color:#cf222e}.s-skipped{color:#6e7781}.s-todo{color:#2b8a7e}
tr.more td{padding:0 8px 6px}
summary{cursor:pointer;color:#0b5cad;font-size:13px}
summary .msg{color:#5c6573}
tbody.failing summary .msg{color:#a40e26}
.detail{padding:6px 0 4px 14px;border-left:3px solid #d8dce3;margin:4px 0 6px}
.cols{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.cols>div{min-width:280px;flex:1 1 320px}
table.kv td,table.list td,table.list th{padding:2px 10px 2px 0;font-size:13px;text-align:left;vertical-align:top}
table.kv td:first-child{color:#5c6573;white-space:nowrap}
table.list th{color:#5c6573;font-weight:600;border-bottom:1px solid #e1e4e9}
table.procs td.cmd{overflow-wrap:anywhere;max-width:640px}
code,pre,.mono{font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",Menlo,Consolas,monospace;font-size:12px}
pre{background:#11151c;color:#e6edf3;padding:8px 10px;border-radius:6px;margin:0;max-height:380px;overflow:auto;white-space:pre-wrap;overflow-wrap:anywhere}
.message{white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0}
svg.plot{max-width:100%;height:auto;display:block}
.legend{font-size:12px;color:#5c6573;margin:8px 0 2px}
.key{display:inline-block;width:18px;height:3px;vertical-align:middle;margin:0 6px 0 14px}
.key:first-child{margin-left:0}
.key.cpu{background:#1f77b4}.key.mem{background:#e67814}
.overview{display:flex;flex-wrap:wrap;gap:12px}
footer{color:#5c6573;font-size:12px;text-align:center}
"#;

/// Renders a run's report as one self-contained HTML page.
///
/// The page has a header (the run's name and id, start, duration, host, an overall status and
/// the counts per verdict), the artifact store's summary when the run had a store, an overview
/// of peak memory and CPU time per test when tests were monitored, and a table with a row per
/// test: test id, runner, architecture (`environment["arch"]`), verdict, outcome, duration, peak
/// CPU and memory, and the number of artifacts. Below each row, a `<details>` element expands to
/// the message, the environment, the resource usage with a plot of CPU and memory over time
/// (inline SVG drawn with `plotters`; every figure the monitor measured, the network's labelled
/// as its namespace's), the top processes by CPU and by peak memory, the KTAP subtests, the last 4 KiB of the console, stdout
/// and stderr, and the artifacts with their sizes, kinds, store ids and digests. The details of
/// failing tests are open from the start when no more than ten tests failed.
///
/// The page is safe to open whatever the tests printed: every text is escaped (control
/// characters shown as symbols, terminal colour sequences dropped), it contains no script, and
/// a `Content-Security-Policy` forbids scripts and every load anyway. It references nothing
/// outside itself (no fonts, stylesheets, images or scripts) except the links to artifacts.
///
/// Artifacts link to their host files with absolute `file://` URLs, not with paths relative to
/// the report: this function does not know where the page will be written, the artifacts live in
/// the run's scratch directory rather than beside the report, and an absolute URL keeps working
/// wherever the page is moved or copied on the host that ran the tests (on another machine the
/// store id and digest still identify the content).
pub fn html_report(report: &RunReport) -> String {
    let mut h = Html(String::with_capacity(
        16 * 1024 + report.results.len() * 12 * 1024,
    ));
    let status = Status::of(report);
    let title = report.name.as_deref().unwrap_or("Test run");
    h.w(format_args!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} \u{2013} {} \u{2013} {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        Esc(title),
        status.label,
        Esc(&report.run_id),
    ));
    header(&mut h, report, &status, title);
    if let Some(storage) = &report.storage {
        store_section(&mut h, storage);
    }
    overview(&mut h, report);
    results_table(&mut h, report);
    // No time of rendering: the same report renders to the same page.
    h.w(format_args!(
        "<footer>Run {} finished {}; report by orchestrator-core {}.</footer>\n\
         </main>\n</body>\n</html>\n",
        Esc(&report.run_id),
        report.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        env!("CARGO_PKG_VERSION")
    ));
    h.0
}

/// Writes [`html_report`] atomically for [`RunReport::write_html`].
pub(super) fn write(report: &RunReport, path: &Path) -> io::Result<()> {
    super::write_atomic(path, html_report(report).as_bytes()).map_err(|e| match e {
        ReportError::Io { path, source } => io::Error::new(
            source.kind(),
            format!("failed to write HTML report {}: {source}", path.display()),
        ),
        other => io::Error::other(other),
    })
}

/// The page being built.
struct Html(String);

impl Html {
    fn w(&mut self, args: fmt::Arguments<'_>) {
        // Writing to a String cannot fail.
        let _ = self.0.write_fmt(args);
    }

    fn s(&mut self, text: &str) {
        self.0.push_str(text);
    }
}

/// Text escaped for HTML element content and quoted attribute values: `& < > " '` become
/// entities, control characters other than newline and tab become visible symbols (`␛` for
/// ESC, `�` for the C1 range).
struct Esc<'a>(&'a str);

impl fmt::Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        let mut plain = 0;
        for (i, c) in text.char_indices() {
            let replacement: Option<&str> = match c {
                '&' => Some("&amp;"),
                '<' => Some("&lt;"),
                '>' => Some("&gt;"),
                '"' => Some("&quot;"),
                '\'' => Some("&#39;"),
                '\n' | '\t' => None,
                c if c.is_control() => Some(""),
                _ => None,
            };
            if let Some(rep) = replacement {
                f.write_str(&text[plain..i])?;
                if rep.is_empty() {
                    f.write_char(control_picture(c))?;
                } else {
                    f.write_str(rep)?;
                }
                plain = i + c.len_utf8();
            }
        }
        f.write_str(&text[plain..])
    }
}

/// The visible stand-in for a control character: its Unicode control picture (`␀`...`␟`,
/// `␡`), or the replacement character for the C1 controls.
fn control_picture(c: char) -> char {
    match u32::from(c) {
        n @ 0..=0x1f => char::from_u32(0x2400 + n).unwrap_or('\u{fffd}'),
        0x7f => '\u{2421}',
        _ => '\u{fffd}',
    }
}

/// `text` escaped for HTML text and quoted attributes (see [`Esc`]).
#[cfg(test)]
fn escape(text: &str) -> String {
    Esc(text).to_string()
}

/// The overall status of a run.
struct Status {
    label: &'static str,
    class: &'static str,
}

impl Status {
    fn of(report: &RunReport) -> Status {
        let (label, class) = match report.interrupted {
            Some(Interruption::Cancelled) => ("CANCELLED", "bad"),
            Some(Interruption::DeadlineReached) => ("DEADLINE REACHED", "bad"),
            None if report.summary.total == 0 => ("NO TESTS", "warn"),
            None if report.is_success() => ("PASSED", "ok"),
            None => ("FAILED", "bad"),
        };
        Status { label, class }
    }
}

fn header(h: &mut Html, report: &RunReport, status: &Status, title: &str) {
    let elapsed = (report.finished_at - report.started_at)
        .to_std()
        .unwrap_or_default();
    h.w(format_args!(
        "<header class=\"card\">\n<h1>{} <span class=\"status {}\">{}</span></h1>\n<dl class=\"meta\">\n\
         <dt>run id</dt><dd class=\"mono\">{}</dd>\n\
         <dt>started</dt><dd>{}</dd>\n<dt>duration</dt><dd>{}</dd>\n",
        Esc(title),
        status.class,
        status.label,
        Esc(&report.run_id),
        report.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
        duration(elapsed.as_secs_f64()),
    ));
    let host = &report.host;
    h.w(format_args!(
        "<dt>host</dt><dd>{} ({} {}, {} CPU{})</dd>\n",
        Esc(if host.hostname.is_empty() {
            "unknown"
        } else {
            &host.hostname
        }),
        Esc(&host.os),
        Esc(&host.arch),
        host.cpus,
        if host.cpus == 1 { "" } else { "s" },
    ));
    if let Some(i) = report.interrupted {
        h.s(match i {
            Interruption::Cancelled => "<dt>interrupted</dt><dd>the run was cancelled</dd>\n",
            Interruption::DeadlineReached => {
                "<dt>interrupted</dt><dd>the run's deadline was reached</dd>\n"
            }
        });
    }
    h.s("</dl>\n");

    let s = &report.summary;
    let counts = [
        (s.passed, "passed", "c-ok"),
        (s.failed, "failed", "c-bad"),
        (s.expected_failures, "expected failures", "c-ok"),
        (s.unexpected_passes, "unexpected passes", "c-bad"),
        (s.errors, "errors", "c-bad"),
        (s.skipped, "skipped", ""),
        (s.cancelled, "cancelled", "c-bad"),
        (s.retries, "retries", ""),
    ];
    let parts: Vec<String> = counts
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, what, _)| format!("{n} {what}"))
        .collect();
    h.w(format_args!(
        "<p class=\"summary\"><b>{} test{}</b> in {}: {}</p>\n<ul class=\"counts\">\n\
         <li><b>{}</b>total</li>\n",
        s.total,
        if s.total == 1 { "" } else { "s" },
        duration(elapsed.as_secs_f64()),
        if parts.is_empty() {
            "nothing ran".to_owned()
        } else {
            parts.join(", ")
        },
        s.total,
    ));
    for (n, what, class) in counts {
        let class = if n == 0 { "zero" } else { class };
        h.w(format_args!(
            "<li class=\"{class}\"><b>{n}</b>{what}</li>\n"
        ));
    }
    h.s("</ul>\n");
    if let Some(subtests) = s.subtests.describe() {
        h.w(format_args!(
            "<p class=\"summary subtests\">{}</p>\n",
            Esc(&subtests)
        ));
    }
    h.s("</header>\n");
}

fn store_section(h: &mut Html, st: &super::StorageSummary) {
    h.w(format_args!(
        "<section class=\"card store\">\n<h2>Artifact store</h2>\n<dl class=\"meta\">\n\
         <dt>store</dt><dd class=\"mono\">{}</dd>\n\
         <dt>this run</dt><dd>{} artifact{} stored ({})</dd>\n",
        Esc(&st.root.display().to_string()),
        st.artifacts_stored,
        if st.artifacts_stored == 1 { "" } else { "s" },
        human_bytes(st.bytes_stored),
    ));
    #[cfg(feature = "store")]
    if let Some(stats) = &st.stats {
        h.w(format_args!(
            "<dt>store holds</dt><dd>{} records ({} evicted) in {} blobs: {} of content, \
             {} distinct, {} on disk</dd>\n\
             <dt>dedup ratio</dt><dd>{:.2}\u{d7}</dd>\n<dt>compression ratio</dt><dd>{:.2}\u{d7}</dd>\n",
            stats.live_records,
            stats.evicted_records,
            stats.blobs,
            human_bytes(stats.logical_bytes),
            human_bytes(stats.unique_bytes),
            human_bytes(stats.stored_bytes),
            stats.dedup_ratio(),
            stats.compression_ratio(),
        ));
    }
    #[cfg(feature = "store")]
    match &st.retention {
        Some(ret) => h.w(format_args!(
            "<dt>retention</dt><dd>evicted {} record{}, removed {} blob{} ({} freed), kept {} blob{}</dd>\n",
            ret.records_evicted,
            if ret.records_evicted == 1 { "" } else { "s" },
            ret.gc.blobs_removed,
            if ret.gc.blobs_removed == 1 { "" } else { "s" },
            human_bytes(ret.gc.bytes_removed),
            ret.gc.blobs_kept,
            if ret.gc.blobs_kept == 1 { "" } else { "s" },
        )),
        None => h.s("<dt>retention</dt><dd class=\"dim\">no retention policy</dd>\n"),
    }
    h.s("</dl>\n");
    if !st.errors.is_empty() {
        h.w(format_args!(
            "<h4>{} store error{}</h4>\n<ul class=\"errors\">\n",
            st.errors.len(),
            if st.errors.len() == 1 { "" } else { "s" }
        ));
        for e in &st.errors {
            h.w(format_args!("<li>{}</li>\n", Esc(e)));
        }
        h.s("</ul>\n");
    }
    h.s("</section>\n");
}

/// Bars of peak memory and CPU time per monitored test (the [`OVERVIEW_MAX`] largest), when at
/// least two tests were monitored.
fn overview(h: &mut Html, report: &RunReport) {
    let mut monitored: Vec<(&str, &ResourceUsage)> = report
        .results
        .iter()
        .filter_map(|r| r.resources.as_ref().map(|u| (r.test_id.as_str(), u)))
        .collect();
    if monitored.len() < 2 {
        return;
    }
    let all = monitored.len();
    monitored.sort_by_key(|(_, u)| std::cmp::Reverse(u.peak_rss_bytes));
    monitored.truncate(OVERVIEW_MAX);
    let (unit, div) = byte_unit(monitored.iter().map(|(_, u)| u.peak_rss_bytes).max());
    let mem: Vec<(&str, f64)> = monitored
        .iter()
        .map(|(id, u)| (*id, u.peak_rss_bytes as f64 / div))
        .collect();
    let cpu: Vec<(&str, f64)> = monitored
        .iter()
        .map(|(id, u)| (*id, finite(u.cpu_seconds)))
        .collect();
    h.s("<section class=\"card\">\n<h2>Resources per test");
    if all > monitored.len() {
        h.w(format_args!(
            " <span class=\"dim\">(the {} of {all} monitored tests that used the most memory)</span>",
            monitored.len()
        ));
    }
    h.s("</h2>\n<div class=\"overview\">\n");
    for (bars, what, color) in [
        (&mem, format!("peak memory ({unit})"), MEM_COLOR),
        (&cpu, "CPU time (s)".to_owned(), CPU_COLOR),
    ] {
        match bar_chart(bars, &what, color) {
            Ok(svg) => h.s(&inline_svg(&svg, &what)),
            Err(e) => h.w(format_args!(
                "<p class=\"dim\">could not draw {}: {}</p>",
                Esc(&what),
                Esc(&e.to_string())
            )),
        }
    }
    h.s("</div>\n</section>\n");
}

fn results_table(h: &mut Html, report: &RunReport) {
    h.w(format_args!(
        "<section class=\"card\">\n<h2>Tests</h2>\n<table class=\"results\">\n<thead><tr>\
         <th>test</th><th>runner</th><th>arch</th><th>verdict</th><th>outcome</th>\
         <th class=\"num\">duration</th><th class=\"num\">peak CPU</th>\
         <th class=\"num\">peak memory</th><th class=\"num\">artifacts</th></tr></thead>\n"
    ));
    let failing = report.results.iter().filter(|r| is_failing(r)).count();
    for (i, r) in report.results.iter().enumerate() {
        test_rows(h, i, r, failing <= OPEN_FAILURES_MAX);
    }
    h.s("</table>\n</section>\n");
}

fn verdict_class(v: Verdict) -> &'static str {
    match v {
        Verdict::Passed => "v-pass",
        Verdict::ExpectedFailure => "v-xfail",
        Verdict::Failed => "v-fail",
        Verdict::UnexpectedPass => "v-xpass",
        Verdict::Error => "v-error",
        Verdict::Skipped => "v-skip",
        Verdict::Cancelled => "v-cancel",
    }
}

/// Whether a test's verdict is a problem (skipped tests are not).
fn is_failing(r: &TestResult) -> bool {
    let verdict = r.verdict();
    !verdict.is_success() && verdict != Verdict::Skipped
}

/// A test's row and the row below it with its expandable details, open when the test failed
/// and `open_failures`.
fn test_rows(h: &mut Html, i: usize, r: &TestResult, open_failures: bool) {
    let verdict = r.verdict();
    let failing = is_failing(r);
    let (cpu, mem) = match &r.resources {
        Some(u) => (
            u.peak_cpu_percent
                .map_or_else(|| "-".to_owned(), |p| format!("{:.0}%", finite(p))),
            human_bytes(u.peak_rss_bytes),
        ),
        None => ("-".to_owned(), "-".to_owned()),
    };
    let outcome = r.outcome.to_string();
    h.w(format_args!(
        "<tbody class=\"test{}\" id=\"test-{i}\">\n<tr class=\"test\">\
         <td class=\"id\">{}{}</td><td>{}</td><td>{}</td>\
         <td><span class=\"v {}\">{}</span></td><td class=\"outcome\">{}</td>\
         <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
         <td class=\"num\">{}</td></tr>\n",
        if failing { " failing" } else { "" },
        Esc(r.test_id.as_str()),
        if r.name != r.test_id.as_str() && !r.name.is_empty() {
            format!("<small>{}</small>", Esc(&r.name))
        } else {
            String::new()
        },
        Esc(&r.runner),
        Esc(r.environment.get("arch").map_or("-", String::as_str)),
        verdict_class(verdict),
        verdict.label(),
        Esc(&preview(&outcome, 120)),
        duration(r.duration().as_secs_f64()),
        cpu,
        mem,
        r.artifacts.len(),
    ));
    let mut what = Vec::new();
    if r.resources.is_some() {
        what.push("plot".to_owned());
    }
    if r.console_excerpt.as_deref().is_some_and(|c| !c.is_empty()) {
        what.push("console".to_owned());
    }
    if r.stdout.total_bytes > 0 || !r.stdout.text.is_empty() {
        what.push("stdout".to_owned());
    }
    if r.stderr.total_bytes > 0 || !r.stderr.text.is_empty() {
        what.push("stderr".to_owned());
    }
    if !r.subtests.is_empty() {
        what.push(plural(r.subtests.len(), "subtest"));
    }
    if !r.artifacts.is_empty() {
        what.push(plural(r.artifacts.len(), "artifact"));
    }
    h.w(format_args!(
        "<tr class=\"more\"><td colspan=\"9\"><details{}><summary>details{}{}</summary>\n<div class=\"detail\">\n",
        if failing && open_failures { " open" } else { "" },
        if what.is_empty() {
            String::new()
        } else {
            format!(" ({})", what.join(", "))
        },
        match r.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!(" \u{2014} <span class=\"msg\">{}</span>", Esc(&preview(m, PREVIEW_CHARS))),
            None => String::new(),
        },
    ));
    details(h, r);
    h.s("</div>\n</details></td></tr>\n</tbody>\n");
}

/// The inside of a test's `<details>`.
fn details(h: &mut Html, r: &TestResult) {
    if let Some(m) = r.message.as_deref().filter(|m| !m.is_empty()) {
        h.w(format_args!("<p class=\"message\">{}</p>\n", Esc(m)));
    }
    h.s("<div class=\"cols\">\n<div>\n<h4>Test</h4>\n<table class=\"kv\">\n");
    let kv = |h: &mut Html, k: &str, v: &str| {
        h.w(format_args!(
            "<tr><td>{}</td><td>{}</td></tr>\n",
            Esc(k),
            Esc(v)
        ));
    };
    kv(h, "outcome", &r.outcome.to_string());
    kv(
        h,
        "expected",
        &serde_json::to_value(r.expect)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    );
    kv(
        h,
        "started",
        &r.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    );
    let phases: Vec<String> = r
        .phases
        .iter()
        .map(|p| format!("{} {}", p.phase, duration(p.duration().as_secs_f64())))
        .collect();
    if !phases.is_empty() {
        kv(h, "phases", &phases.join(", "));
    }
    if !r.tags.is_empty() {
        kv(h, "tags", &r.tags.join(", "));
    }
    if r.attempt > 1 || !r.earlier_attempts.is_empty() {
        kv(h, "attempt", &r.attempt.to_string());
        for a in &r.earlier_attempts {
            kv(
                h,
                &format!("attempt {}", a.attempt),
                &match &a.message {
                    Some(m) => format!("{}: {m}", a.outcome),
                    None => a.outcome.to_string(),
                },
            );
        }
    }
    for (k, v) in &r.environment {
        kv(h, k, v);
    }
    h.s("</table>\n</div>\n");
    if let Some(u) = &r.resources {
        resources(h, r, u);
    }
    h.s("</div>\n");
    if let Some(u) = &r.resources {
        top_processes(h, u);
    }

    if !r.subtests.is_empty() {
        subtests(h, r);
    }
    if let Some(console) = r.console_excerpt.as_deref().filter(|c| !c.is_empty()) {
        excerpt(h, "Console", console, None);
    }
    for (name, out) in [("stdout", &r.stdout), ("stderr", &r.stderr)] {
        if out.total_bytes > 0 || !out.text.is_empty() {
            excerpt(h, name, &out.text, Some(out));
        }
    }
    if !r.artifacts.is_empty() {
        artifacts(h, r);
    }
}

fn resources(h: &mut Html, r: &TestResult, u: &ResourceUsage) {
    h.s("<div>\n<h4>Resources</h4>\n<table class=\"kv\">\n");
    let mut kv = |k: &str, v: String| {
        h.w(format_args!("<tr><td>{k}</td><td>{}</td></tr>\n", Esc(&v)));
    };
    kv("CPU time", format!("{:.2} s", finite(u.cpu_seconds)));
    let pct = |p: Option<f64>| p.map_or_else(|| "-".to_owned(), |p| format!("{:.0}%", finite(p)));
    kv(
        "CPU (avg / peak)",
        format!("{} / {}", pct(u.avg_cpu_percent), pct(u.peak_cpu_percent)),
    );
    kv("peak memory", human_bytes(u.peak_rss_bytes));
    let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), human_bytes);
    kv(
        "I/O (read / written)",
        format!("{} / {}", bytes(u.read_bytes), bytes(u.write_bytes)),
    );
    kv("peak processes", u.peak_processes.to_string());
    kv("bottleneck", u.bottleneck.clone());
    for (k, v) in more_figures(u) {
        kv(k, v);
    }
    h.s("</table>\n");
    if u.series.is_empty() {
        h.s("<p class=\"dim\">no samples to plot</p>\n");
    } else {
        let label = format!("CPU and memory of {} over time", r.test_id);
        match usage_plot(u) {
            // The legend is HTML, above the plot, where it hides no line.
            Ok(svg) => {
                h.s(
                    "<div class=\"legend\"><span class=\"key cpu\"></span>CPU (left axis)\
                     <span class=\"key mem\"></span>memory, resident (right axis)</div>\n",
                );
                h.s(&inline_svg(&svg, &label));
            }
            Err(e) => h.w(format_args!(
                "<p class=\"dim\">could not draw the plot: {}</p>\n",
                Esc(&e.to_string())
            )),
        }
    }
    h.s("</div>\n");
}

/// The figures of a [`ResourceUsage`] beyond the headline ones, as label and value rows (only
/// those the report has: a report written before schema 5 has none of them). `-` marks a
/// figure the monitor could not read.
fn more_figures(u: &ResourceUsage) -> Vec<(&'static str, String)> {
    let bytes = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), human_bytes);
    let num = |n: Option<u64>| n.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let pct = |p: Option<f64>| p.map_or_else(|| "-".to_owned(), |p| format!("{:.1}%", finite(p)));
    let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{:.2} s", finite(s)));
    let mut rows = Vec::new();
    if u.cpu_user_seconds.is_some() || u.cpu_system_seconds.is_some() {
        rows.push((
            "CPU (user / system)",
            format!(
                "{} / {}",
                secs(u.cpu_user_seconds),
                secs(u.cpu_system_seconds)
            ),
        ));
    }
    if u.read_chars.is_some() || u.write_chars.is_some() {
        rows.push((
            "I/O calls (read / written)",
            format!("{} / {}", bytes(u.read_chars), bytes(u.write_chars)),
        ));
    }
    if let Some(p) = &u.processes {
        rows.push((
            "processes (seen / peak threads)",
            format!("{} / {}", p.seen, p.peak_threads),
        ));
        rows.push(("open files (peak)", num(p.peak_open_files)));
        rows.push((
            "context switches (voluntary / not)",
            format!(
                "{} / {}",
                num(p.voluntary_context_switches),
                num(p.involuntary_context_switches)
            ),
        ));
        rows.push((
            "page faults (minor / major)",
            format!("{} / {}", p.minor_faults, p.major_faults),
        ));
    }
    if let Some(n) = &u.network {
        rows.push((
            n.label(),
            format!(
                "{} received / {} sent{}",
                human_bytes(n.rx_bytes),
                human_bytes(n.tx_bytes),
                n.namespace
                    .as_deref()
                    .map(|ns| format!(" ({ns})"))
                    .unwrap_or_default()
            ),
        ));
    }
    if let Some(l) = &u.host {
        let load =
            |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{:.2}", finite(x)));
        rows.push((
            "host load (1-min peak / at end)",
            format!(
                "{} / {} on {} CPUs",
                load(l.load1_peak),
                l.load_end.map_or_else(
                    || "-".to_owned(),
                    |e| format!("{:.2} {:.2} {:.2}", e[0], e[1], e[2])
                ),
                l.cpus
            ),
        ));
        rows.push((
            "host pressure (CPU / memory / I/O)",
            format!(
                "{} / {} / {}",
                pct(l.cpu_pressure),
                pct(l.memory_pressure),
                pct(l.io_pressure)
            ),
        ));
        rows.push((
            "host CPU (busy / steal / iowait)",
            format!(
                "{} / {} / {}",
                pct(l.busy_percent),
                pct(l.steal_percent),
                pct(l.iowait_percent)
            ),
        ));
        if let Some(score) = l.validity_score {
            rows.push(("host validity score", format!("{:.0} / 100", finite(score))));
        }
    }
    if !u.unavailable.is_empty() {
        rows.push(("not available", u.unavailable.join(", ")));
    }
    rows
}

/// The per-process breakdown of a monitored test: its top processes by CPU and by peak memory.
fn top_processes(h: &mut Html, u: &ResourceUsage) {
    for (title, list) in [
        ("Top processes by CPU", &u.top_cpu),
        ("Top processes by peak memory", &u.top_memory),
    ] {
        if list.is_empty() {
            continue;
        }
        h.w(format_args!(
            "<h4>{title} <small>({} shown)</small></h4>\n<table class=\"list procs\">\n\
             <tr><th>pid</th><th>name</th><th class=\"num\">CPU</th>\
             <th class=\"num\">children's CPU</th><th class=\"num\">peak memory</th>\
             <th class=\"num\">seen</th><th>command</th></tr>\n",
            list.len()
        ));
        for p in list {
            h.w(format_args!(
                "<tr><td class=\"num\">{}</td><td class=\"mono\">{}</td>\
                 <td class=\"num\">{:.2} s</td><td class=\"num\">{:.2} s</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{:.1}\u{2013}{:.1} s{}</td>\
                 <td class=\"mono cmd\">{}</td></tr>\n",
                p.pid,
                Esc(&p.name),
                finite(p.cpu_seconds),
                finite(p.children_cpu_seconds),
                human_bytes(p.peak_rss_bytes),
                finite(p.first_seen),
                finite(p.last_seen),
                if p.exited { ", exited" } else { "" },
                Esc(&p.command),
            ));
        }
        h.s("</table>\n");
    }
}

/// The subtests of a test, counted by verdict as the summary counts them, each with its status,
/// time (when known) and message; then the suites they are nested in, with their own results.
fn subtests(h: &mut Html, r: &TestResult) {
    let count = |v: Verdict| {
        r.subtests
            .iter()
            .filter(|t| t.verdict(r.expect) == v)
            .count()
    };
    let timed = r.subtests.iter().any(|t| t.duration.is_some());
    h.w(format_args!(
        "<h4>Subtests <small>({} passed, {} failed, {} skipped, {} todo)</small></h4>\n\
         <table class=\"list\">\n<tr><th>case</th><th>status</th>{}<th>message</th></tr>\n",
        count(Verdict::Passed),
        count(Verdict::Failed),
        count(Verdict::Skipped),
        count(Verdict::ExpectedFailure),
        if timed { "<th>time</th>" } else { "" },
    ));
    for t in &r.subtests {
        let (label, class) = status_label(t.status, t.verdict(r.expect));
        h.w(format_args!(
            "<tr><td class=\"mono\">{}</td><td class=\"{class}\"><b>{label}</b></td>{}<td>{}</td></tr>\n",
            Esc(&t.name),
            if timed {
                format!("<td>{}</td>", t.duration.map(case_time).unwrap_or_default())
            } else {
                String::new()
            },
            Esc(t.message.as_deref().unwrap_or("")),
        ));
    }
    h.s("</table>\n");
    if r.suites.is_empty() {
        return;
    }
    h.w(format_args!(
        "<h4>Suites <small>({})</small></h4>\n<table class=\"list\">\n\
         <tr><th>suite</th><th>status</th><th>cases</th><th>time</th><th>message</th></tr>\n",
        r.suites.len()
    ));
    for s in &r.suites {
        let verdict = match (s.status, r.expect) {
            (SubtestStatus::Failed, crate::Expectation::Fail) => Verdict::ExpectedFailure,
            (SubtestStatus::Failed, _) => Verdict::Failed,
            _ => Verdict::Passed,
        };
        let (label, class) = status_label(s.status, verdict);
        h.w(format_args!(
            "<tr><td class=\"mono\">{}</td><td class=\"{class}\"><b>{label}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            Esc(&s.name),
            s.cases,
            s.duration.map(case_time).unwrap_or_default(),
            Esc(s.message.as_deref().unwrap_or("")),
        ));
    }
    h.s("</table>\n");
}

/// The label and CSS class of a subtest's (or suite's) status.
fn status_label(status: SubtestStatus, verdict: Verdict) -> (&'static str, &'static str) {
    match (status, verdict) {
        (SubtestStatus::Passed, _) => ("ok", "s-passed"),
        (SubtestStatus::Failed, Verdict::ExpectedFailure) => ("not ok (expected)", "s-todo"),
        (SubtestStatus::Failed, _) => ("not ok", "s-failed"),
        (SubtestStatus::Skipped, _) => ("skip", "s-skipped"),
        (SubtestStatus::Todo, _) => ("todo", "s-todo"),
    }
}

/// A case's time: `0.004 s`, or as [`duration`] from a minute on.
fn case_time(d: std::time::Duration) -> String {
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.3} s")
    } else {
        duration(secs)
    }
}

/// A console or output excerpt: its last [`EXCERPT_BYTES`], cleaned of terminal sequences.
fn excerpt(h: &mut Html, title: &str, text: &str, captured: Option<&crate::CapturedOutput>) {
    let (tail, skipped) = tail(text);
    let mut notes = Vec::new();
    if let Some(c) = captured {
        notes.push(format!("{} in all", human_bytes(c.total_bytes)));
        if c.truncated_bytes > 0 {
            notes.push(format!(
                "{} dropped when captured",
                human_bytes(c.truncated_bytes)
            ));
        }
    }
    if skipped > 0 {
        notes.push(format!(
            "last {} shown, {} before it left out",
            human_bytes((text.len() - skipped) as u64),
            human_bytes(skipped as u64)
        ));
    }
    h.w(format_args!("<h4>{}", Esc(title)));
    if !notes.is_empty() {
        h.w(format_args!(" <small>({})</small>", Esc(&notes.join("; "))));
    }
    h.w(format_args!(
        "</h4>\n<pre>{}</pre>\n",
        Esc(&terminal_text(tail))
    ));
}

fn artifacts(h: &mut Html, r: &TestResult) {
    h.s(
        "<h4>Artifacts</h4>\n<table class=\"list\">\n<tr><th>file</th><th class=\"num\">size</th>\
         <th>kind</th><th>store id</th><th>digest</th></tr>\n",
    );
    for a in &r.artifacts {
        let (kind, id, digest) = match &a.stored {
            Some(s) => (
                s.kind.as_str(),
                s.id.as_str(),
                format!(
                    "<span class=\"mono\" title=\"{}\">{}</span>",
                    Esc(&s.digest),
                    Esc(s.digest.get(..12).unwrap_or(&s.digest))
                ),
            ),
            None => ("-", "not stored", "-".to_owned()),
        };
        h.w(format_args!(
            "<tr><td><a class=\"mono\" href=\"{}\" title=\"{}\">{}</a></td><td class=\"num\">{}</td>\
             <td>{}</td><td class=\"mono\">{}</td><td>{}</td></tr>\n",
            Esc(&file_url(&a.path)),
            Esc(&a.path.display().to_string()),
            Esc(&a.name),
            human_bytes(a.size),
            Esc(kind),
            Esc(id),
            digest,
        ));
    }
    h.s("</table>\n");
}

/// The absolute `file://` URL of a host path, percent-encoded (everything but unreserved
/// characters and `/`), so no character of a file name can end the attribute or the URL.
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut url = String::from("file://");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    url
}

/// The last [`EXCERPT_BYTES`] of `text` (starting at a line when one starts soon after the
/// cut), and how many bytes before it were left out.
fn tail(text: &str) -> (&str, usize) {
    if text.len() <= EXCERPT_BYTES {
        return (text, 0);
    }
    let mut start = text.len() - EXCERPT_BYTES;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if let Some(nl) = text[start..].find('\n').filter(|&n| n < 200) {
        start += nl + 1;
    }
    (&text[start..], start)
}

/// Console text as a terminal would show it: ANSI escape sequences (colours, cursor moves) and
/// carriage returns before newlines dropped. Other control characters stay, for [`Esc`] to show.
fn terminal_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.peek() {
                // CSI: parameters and intermediates up to a final byte in @..~.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' {
                            if chars.peek() == Some(&'\\') {
                                chars.next();
                            }
                            break;
                        }
                    }
                }
                // A two-character sequence (ESC c, ESC 7...).
                Some(n) if ('@'..='~').contains(n) => {
                    chars.next();
                }
                _ => out.push(c),
            },
            '\r' if chars.peek().is_none_or(|&n| n == '\n' || n == '\r') => {}
            c => out.push(c),
        }
    }
    out
}

/// The first line of `text`, at most `max` characters (an ellipsis marks a cut).
fn preview(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let mut out: String = line.chars().take(max).collect();
    if out.len() < text.trim_end().len() {
        out.push('\u{2026}');
    }
    out
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `0.42 s`, `12.3 s`, `4 min 05 s`, `2 h 03 min`.
fn duration(secs: f64) -> String {
    let secs = finite(secs).max(0.0);
    if secs < 60.0 {
        format!("{secs:.2} s")
    } else if secs < 3600.0 {
        let s = secs.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = (secs / 60.0).round() as u64;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// `x`, or 0 when it is not a finite number.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

/// The unit to show up to `max` bytes in, and its size.
fn byte_unit(max: Option<u64>) -> (&'static str, f64) {
    let max = max.unwrap_or(0);
    if max >= 2 << 30 {
        ("GiB", f64::from(1u32 << 30))
    } else if max >= 2 << 20 {
        ("MiB", f64::from(1u32 << 20))
    } else {
        ("KiB", 1024.0)
    }
}

/// A plotters SVG document made fit for inlining in the page: a class for the stylesheet, an
/// accessible label, and without the `xmlns` attribute (HTML puts `<svg>` in the SVG namespace
/// itself; leaving the attribute out keeps the page free of URLs).
fn inline_svg(svg: &str, label: &str) -> String {
    // `opacity="1"` is the default: dropping it saves a sixth of the bytes.
    let svg = svg
        .replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
        .replace(" opacity=\"1\"", "");
    match svg.find("<svg ") {
        Some(at) => format!(
            "{}<svg class=\"plot\" role=\"img\" aria-label=\"{}\" {}\n",
            &svg[..at],
            Esc(label),
            &svg[at + "<svg ".len()..]
        ),
        None => svg,
    }
}

type PlotResult = Result<String, Box<dyn std::error::Error + Send + Sync>>;

/// CPU (left axis) and memory (right axis) of a test over time.
fn usage_plot(u: &ResourceUsage) -> PlotResult {
    let points: Vec<(f64, Option<f64>, u64)> = u
        .series
        .iter()
        .filter(|p| p.t.is_finite())
        .map(|p| (p.t, p.cpu_percent.filter(|c| c.is_finite()), p.rss_bytes))
        .collect();
    let cpu_line = flat_runs_dropped(points.iter().filter_map(|p| p.1.map(|c| (p.0, c))));
    let mem_line = flat_runs_dropped(points.iter().map(|p| (p.0, p.2 as f64)));
    let t_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(0.1);
    let cpu_peak = points.iter().filter_map(|p| p.1).fold(0.0, f64::max);
    let cpu_max = (cpu_peak * 1.1).max(100.0);
    let rss_peak = points.iter().map(|p| p.2).max().unwrap_or(0);
    let (unit, div) = byte_unit(Some(rss_peak.max(u.peak_rss_bytes)));
    let mem_max = (rss_peak.max(u.peak_rss_bytes) as f64 / div * 1.15).max(1.0);

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (620, 250)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..cpu_max)?
            .set_secondary_coord(0f64..t_max, 0f64..mem_max);
        chart
            .configure_mesh()
            .max_light_lines(0)
            .bold_line_style(RGBColor(225, 228, 233))
            .x_labels(8)
            .y_labels(6)
            .x_desc("time (s)")
            .y_desc("CPU (% of a core)")
            .y_label_formatter(&|v| tick(*v, cpu_max))
            .x_label_formatter(&|v| tick(*v, t_max))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_labels(6)
            .y_desc(format!("memory ({unit})"))
            .y_label_formatter(&|v| tick(*v, mem_max))
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 15))
            .draw()?;
        chart.draw_secondary_series(LineSeries::new(
            mem_line.iter().map(|&(t, b)| (t, b / div)),
            MEM_COLOR.stroke_width(2),
        ))?;
        chart.draw_series(LineSeries::new(cpu_line, CPU_COLOR.stroke_width(2)))?;
        root.present()?;
    }
    Ok(svg)
}

/// An axis label: whole numbers when the axis goes past 10, else one or two decimals.
fn tick(v: f64, max: f64) -> String {
    if max >= 10.0 {
        format!("{v:.0}")
    } else if max >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The points of a line without the inner points of runs of equal values, which draw nothing
/// (memory often stays flat): the same line in fewer bytes.
fn flat_runs_dropped(points: impl Iterator<Item = (f64, f64)>) -> Vec<(f64, f64)> {
    let points: Vec<(f64, f64)> = points.collect();
    let mut kept = Vec::with_capacity(points.len());
    for (i, &p) in points.iter().enumerate() {
        let flat_before = i > 0 && points[i - 1].1 == p.1;
        let flat_after = points.get(i + 1).is_some_and(|n| n.1 == p.1);
        if !(flat_before && flat_after) {
            kept.push(p);
        }
    }
    kept
}

/// Horizontal bars, one per test, the first at the top. Needs at least two bars.
fn bar_chart(bars: &[(&str, f64)], what: &str, color: RGBColor) -> PlotResult {
    let n = bars.len();
    if n < 2 {
        return Err("fewer than two bars".into());
    }
    let max = (bars.iter().map(|b| finite(b.1)).fold(0.0, f64::max) * 1.1).max(1e-3);
    let label = |i: usize| -> String {
        let id = bars.get(n - 1 - i).map_or("", |b| b.0);
        if id.chars().count() > 28 {
            format!("{}\u{2026}", id.chars().take(27).collect::<String>())
        } else {
            id.to_owned()
        }
    };
    let longest = (0..n).map(|i| label(i).chars().count()).max().unwrap_or(0);
    let height = 70
        + 22 * u32::try_from(n)
            .unwrap_or(u32::MAX / 64)
            .min(OVERVIEW_MAX as u32);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .caption(what, ("sans-serif", 17))
            .x_label_area_size(30)
            .y_label_area_size(u32::try_from(longest * 7 + 14).unwrap_or(220).min(220))
            .build_cartesian_2d(0f64..max, (0..n - 1).into_segmented())?;
        let formatter = |v: &SegmentValue<usize>| match v {
            SegmentValue::Exact(i) | SegmentValue::CenterOf(i) => label(*i),
            SegmentValue::Last => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            // Not `max_light_lines(0)`: plotters 0.3.7 overflows computing no key points of an
            // integer axis.
            .x_max_light_lines(0)
            .bold_line_style(RGBColor(225, 228, 233))
            .y_labels(n)
            .x_labels(6)
            .y_label_formatter(&formatter)
            .x_label_formatter(&|v| tick(*v, max))
            .label_style(("sans-serif", 14))
            .draw()?;
        chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
            let row = n - 1 - i;
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(row)),
                    (finite(b.1), SegmentValue::Exact(row + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))?;
        root.present()?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use chrono::Utc;

    use super::*;
    use crate::report::{HostInfo, StorageSummary};
    use crate::result::{ArtifactFile, Outcome, StoredArtifact, Subtest, UsagePoint};
    use crate::{Expectation, TestCase};

    fn usage(points: usize) -> ResourceUsage {
        ResourceUsage {
            cpu_seconds: 1.25,
            avg_cpu_percent: Some(60.0),
            peak_cpu_percent: Some(99.5),
            peak_rss_bytes: 48 << 20,
            read_bytes: Some(4096),
            write_bytes: None,
            peak_processes: 3,
            bottleneck: "cpu".into(),
            series: (0..points)
                .map(|i| UsagePoint {
                    t: i as f64 * 0.02,
                    cpu_percent: (i > 0).then_some((i % 100) as f64),
                    rss_bytes: (40 << 20) + (i as u64) * 4096,
                })
                .collect(),
            ..ResourceUsage::default()
        }
    }

    fn result(id: &str, outcome: Outcome) -> TestResult {
        let case = TestCase::script(id, "true");
        let mut r = TestResult::new(&case, "process", outcome);
        if let Some((_, arch)) = id.split_once('@') {
            r.environment.insert("arch".into(), arch.into());
        }
        r
    }

    fn report(results: Vec<TestResult>) -> RunReport {
        let now = Utc::now();
        let host = HostInfo {
            hostname: "builder".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
        };
        let end = now + chrono::Duration::milliseconds(2500);
        let mut report = RunReport::new("run-1234", results, now, end, host);
        report.name = Some("nightly".into());
        report
    }

    fn sample() -> RunReport {
        let mut pass = result("boot@aarch64", Outcome::Passed);
        pass.resources = Some(usage(300));
        pass.subtests = vec![
            Subtest {
                name: "kunit.ok_case".into(),
                status: SubtestStatus::Passed,
                message: None,
                suite: Vec::new(),
                duration: None,
            },
            // A failed case would fail the test: this one is a known failure (`# TODO`).
            Subtest {
                name: "kunit.bad_case".into(),
                status: SubtestStatus::Todo,
                message: Some("expected 1 == 2".into()),
                suite: Vec::new(),
                duration: None,
            },
        ];
        let mut artifact = ArtifactFile::new("console.log", "/tmp/run/console.log", 2048);
        artifact.stored = Some(StoredArtifact {
            id: "rec-1".into(),
            digest: "0123456789abcdef0123456789abcdef".into(),
            kind: "console".into(),
        });
        pass.artifacts.push(artifact);
        let mut fail = result(
            "fs@x86_64",
            Outcome::Failed {
                exit_code: Some(3),
                signal: None,
            },
        );
        fail.resources = Some(usage(40));
        fail.message = Some("the test failed\nsecond line".into());
        fail.console_excerpt = Some("[    0.000000] Linux version 6.1\n".into());
        fail.stdout.text = "hello\n".into();
        fail.stdout.total_bytes = 6;
        let skipped = result(
            "skipped@riscv64",
            Outcome::Skipped {
                reason: "no KVM".into(),
            },
        );
        let mut r = report(vec![pass, fail, skipped]);
        r.storage = Some(StorageSummary {
            root: PathBuf::from("/var/store"),
            artifacts_stored: 4,
            bytes_stored: 10_000,
            errors: vec!["fs@x86_64: core.1: disk <full>".into()],
            #[cfg(feature = "store")]
            retention: Some(crate::artifact_store::RetentionOutcome::default()),
            #[cfg(feature = "store")]
            stats: Some(crate::artifact_store::Stats::default()),
        });
        r
    }

    /// No scripts, no event handlers, nothing loaded from elsewhere, and only `file://` or
    /// in-page links: checks every tag of the page (all text is escaped, so every `<` opens one).
    fn assert_self_contained(html: &str) {
        const BAD_TAGS: [&str; 16] = [
            "script",
            "link",
            "iframe",
            "frame",
            "img",
            "image",
            "object",
            "embed",
            "use",
            "foreignobject",
            "base",
            "form",
            "audio",
            "video",
            "source",
            "import",
        ];
        const BAD_ATTRS: [&str; 9] = [
            "src",
            "srcset",
            "xlink:href",
            "action",
            "formaction",
            "background",
            "poster",
            "data",
            "ping",
        ];
        let lower = html.to_ascii_lowercase();
        assert!(
            !lower.contains("http://") && !lower.contains("https://"),
            "a URL in the page"
        );
        let mut styles = 0;
        let mut rest = lower.as_str();
        while let Some(open) = rest.find('<') {
            let tag = &rest[open + 1..];
            let close = tag.find('>').expect("unclosed tag");
            let (tag, after) = (&tag[..close], &tag[close + 1..]);
            rest = after;
            if tag.starts_with('!') || tag.starts_with('/') {
                continue;
            }
            let name_end = tag
                .find(|c: char| c.is_whitespace() || c == '/')
                .unwrap_or(tag.len());
            let name = &tag[..name_end];
            assert!(!BAD_TAGS.contains(&name), "<{name}> in the page");
            if name == "style" {
                styles += 1;
                let css = &after[..after.find("</style>").unwrap()];
                assert!(!css.contains("url(") && !css.contains("@import"), "{css}");
            }
            // Attributes: name="value" pairs (values never hold a quote: they are escaped).
            let mut attrs = &tag[name_end..];
            while let Some(eq) = attrs.find("=\"") {
                let attr = attrs[..eq].trim().trim_end_matches('/');
                let value_end = attrs[eq + 2..].find('"').expect("unterminated attribute");
                let value = &attrs[eq + 2..eq + 2 + value_end];
                assert!(
                    !attr.contains(char::is_whitespace),
                    "unquoted attribute in <{tag}>"
                );
                assert!(!attr.starts_with("on"), "event handler {attr} in <{tag}>");
                assert!(!BAD_ATTRS.contains(&attr), "{attr} in <{tag}>");
                if attr == "href" {
                    assert!(
                        value.starts_with("file:///") || value.starts_with('#'),
                        "{value}"
                    );
                }
                assert!(
                    !value.contains("javascript:") && !value.contains("url("),
                    "{value}"
                );
                attrs = &attrs[eq + 3 + value_end..];
            }
            // Only boolean attribute: `<details open>`.
            let stray = attrs.trim().trim_end_matches('/').trim();
            assert!(
                stray.is_empty() || stray == "open",
                "stray attribute text in <{tag}>"
            );
        }
        assert_eq!(styles, 1);
    }

    #[test]
    fn escape_neutralises_markup_quotes_and_ampersands() {
        assert_eq!(
            escape("<script>alert('x')</script>"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
        );
        assert_eq!(escape("a & b \"c\""), "a &amp; b &quot;c&quot;");
        assert_eq!(escape("&amp;"), "&amp;amp;");
        assert_eq!(escape("\" onmouseover=\"x"), "&quot; onmouseover=&quot;x");
        assert_eq!(escape("plain text, é ✓"), "plain text, é ✓");
        assert_eq!(escape("line\n\tindented"), "line\n\tindented");
        assert_eq!(
            escape("nul\0 esc\u{1b} del\u{7f} c1\u{85}"),
            "nul␀ esc␛ del␡ c1\u{fffd}"
        );
        assert_eq!(escape(""), "");
    }

    #[test]
    fn terminal_sequences_are_dropped_from_excerpts() {
        assert_eq!(
            terminal_text("\u{1b}[1;31mFAIL\u{1b}[0m done\r\n\u{1b}]0;title\u{7}next\r"),
            "FAIL done\nnext"
        );
        assert_eq!(terminal_text("progress\r50%"), "progress\r50%");
    }

    #[test]
    fn tails_keep_the_end_on_a_character_boundary() {
        let long = format!("{}\nlast line é\n", "é".repeat(5000));
        let (t, skipped) = tail(&long);
        assert!(t.len() <= EXCERPT_BYTES);
        assert!(t.ends_with("last line é\n"));
        assert_eq!(skipped + t.len(), long.len());
        assert_eq!(tail("short"), ("short", 0));
    }

    #[test]
    fn file_urls_are_absolute_and_percent_encoded() {
        assert_eq!(
            file_url(Path::new("/tmp/a b/\"x\"<y>&.log")),
            "file:///tmp/a%20b/%22x%22%3Cy%3E%26.log"
        );
        assert!(file_url(Path::new("rel/x")).starts_with("file:///"));
    }

    #[test]
    fn a_hostile_console_cannot_inject_markup() {
        let mut r = result("evil", Outcome::Passed);
        r.console_excerpt = Some("</pre><script>alert(1)</script>".into());
        r.stdout.text = "<SCRIPT src=//evil></SCRIPT> \" ' &".into();
        r.stdout.total_bytes = r.stdout.text.len() as u64;
        r.stderr.text = "<img src=x onerror=alert(1)>".into();
        r.stderr.total_bytes = 1;
        r.message = Some("<b>bold</b>".into());
        r.name = "<i>name</i>".into();
        r.environment.insert("<k>".into(), "<v>".into());
        r.tags = vec!["<tag>".into()];
        r.subtests.push(Subtest {
            name: "<sub>".into(),
            status: SubtestStatus::Failed,
            message: Some("</td><script>".into()),
            suite: Vec::new(),
            duration: None,
        });
        r.artifacts
            .push(ArtifactFile::new("\"><script>x</script>", "/tmp/\"><x>", 1));
        let mut rep = report(vec![r]);
        rep.name = Some("<script>alert(2)</script>".into());
        rep.run_id = "\"><script>".into();
        let html = html_report(&rep);
        assert_self_contained(&html);
        assert!(
            html.contains("&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<b>bold"));
        assert!(!html.contains("<i>name"));
        assert!(!html.contains("<img"));
        assert!(!html.to_ascii_lowercase().contains("<script"));
    }

    #[test]
    fn every_figure_and_the_top_processes_are_shown_and_escaped() {
        use crate::result::{HostLoad, NamespaceNetwork, ProcessCounts, ProcessUsage};
        let mut r = result("figures", Outcome::Passed);
        let mut u = usage(5);
        u.cpu_user_seconds = Some(1.0);
        u.cpu_system_seconds = Some(0.25);
        u.processes = Some(ProcessCounts {
            seen: 7,
            peak_threads: 9,
            peak_open_files: Some(42),
            ..ProcessCounts::default()
        });
        u.network = Some(NamespaceNetwork {
            rx_bytes: 2048,
            tx_bytes: 1024,
            namespace: Some("net:[4026531840]".into()),
            shared_with_orchestrator: Some(true),
        });
        u.host = Some(HostLoad {
            cpus: 2,
            load1_peak: Some(1.5),
            cpu_pressure: Some(12.5),
            ..HostLoad::default()
        });
        u.unavailable = vec!["psi_io".into()];
        let process = |pid: u32, name: &str, cpu_seconds: f64, peak_rss_bytes: u64| ProcessUsage {
            pid,
            ppid: 1,
            name: name.into(),
            command: format!("{name} --arg '<script>alert(3)</script>'"),
            cpu_seconds,
            peak_rss_bytes,
            exited: pid == 4242,
            ..ProcessUsage::default()
        };
        u.top_cpu = vec![
            process(4242, "<burner>", 2.5, 1 << 20),
            process(17, "sh", 0.1, 2 << 20),
        ];
        u.top_memory = vec![process(99, "holder&co", 0.2, 96 << 20)];
        r.resources = Some(u);
        let html = html_report(&report(vec![r]));
        assert_self_contained(&html);
        assert!(!html.to_ascii_lowercase().contains("<script"), "{html}");
        assert!(
            html.contains("network (host namespace, not the test's alone)"),
            "{html}"
        );
        assert!(
            html.contains("2.0 KiB received / 1.0 KiB sent (net:[4026531840])"),
            "{html}"
        );
        assert!(html.contains("open files (peak)</td><td>42<"), "{html}");
        assert!(html.contains("7 / 9"));
        assert!(html.contains("1.00 s / 0.25 s"));
        assert!(html.contains("12.5% / - / -"));
        assert!(html.contains("not available</td><td>psi_io<"));
        assert!(html.contains("Top processes by CPU <small>(2 shown)</small>"));
        assert!(html.contains("Top processes by peak memory <small>(1 shown)</small>"));
        assert!(html.contains(">4242<") && html.contains("&lt;burner&gt;"));
        assert!(
            html.contains("holder&amp;co") && html.contains(">96.0 MiB<"),
            "{html}"
        );
        assert!(html.contains(", exited<"));
        assert!(html.contains("&lt;script&gt;alert(3)&lt;/script&gt;"));
        // A report from before schema 5: no extra rows, no process tables.
        let mut old = result("old", Outcome::Passed);
        old.resources = Some(usage(5));
        let html = html_report(&report(vec![old]));
        assert!(!html.contains("Top processes") && !html.contains("network ("));
    }

    #[test]
    fn structure_one_row_per_result_and_a_plot_per_monitored_test() {
        let rep = sample();
        let html = html_report(&rep);
        assert_self_contained(&html);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(
            html.matches("<tr class=\"test\">").count(),
            rep.results.len()
        );
        // The failing test's details are open.
        assert_eq!(html.matches("<details>").count(), rep.results.len() - 1);
        assert_eq!(html.matches("<details open>").count(), 1);
        // Two monitored tests: a plot each, plus the two overview charts.
        assert_eq!(html.matches("<svg class=\"plot\"").count(), 2 + 2, "{html}");
        assert_eq!(html.matches("<svg").count(), 4);
        assert_eq!(html.matches("</svg>").count(), 4);
        // Plot text is SVG text, no font files.
        assert!(html.contains("<text"));
        assert!(html.contains("time (s)"));
        assert!(html.contains("memory (MiB)"));
        for r in &rep.results {
            assert!(html.contains(r.test_id.as_str()));
        }
        assert!(html.contains(">aarch64<") && html.contains(">riscv64<"));
        assert!(html.contains("class=\"v v-fail\">FAIL<"));
        assert!(html.contains("class=\"v v-pass\">PASS<"));
        assert!(html.contains("class=\"v v-skip\">SKIP<"));
        assert!(html.contains("status bad\">FAILED<"));
        assert!(html.contains("3 tests</b> in 2.50 s: 1 passed, 1 failed, 1 skipped"));
        assert!(html.contains("kunit.bad_case") && html.contains("expected 1 == 2"));
        assert!(html.contains("href=\"file:///tmp/run/console.log\""));
        assert!(html.contains(">0123456789ab<"));
        assert!(html.contains("rec-1"));
        assert!(html.contains("Artifact store"));
        assert!(html.contains("disk &lt;full&gt;"));
        assert!(html.contains("Linux version 6.1"));
        assert!(html.contains("the test failed"));
    }

    #[test]
    fn statuses() {
        let ok = report(vec![result("a", Outcome::Passed)]);
        assert!(html_report(&ok).contains("status ok\">PASSED<"));
        let empty = report(Vec::new());
        assert!(html_report(&empty).contains(">NO TESTS<"));
        let mut cancelled = report(vec![result("a", Outcome::Cancelled)]);
        cancelled.interrupted = Some(Interruption::Cancelled);
        let html = html_report(&cancelled);
        assert!(html.contains(">CANCELLED<") && html.contains("the run was cancelled"));
        let mut xfail = result(
            "b",
            Outcome::Failed {
                exit_code: Some(1),
                signal: None,
            },
        );
        xfail.expect = Expectation::Fail;
        let html = html_report(&report(vec![xfail]));
        assert!(html.contains("v-xfail") && html.contains(">PASSED<"));
    }

    #[test]
    fn a_thousand_tests_stay_bounded() {
        // The worst case: every test with a full series and long console and stdout. Each costs
        // its two 4 KiB excerpts, about 10 KB of plot and 2 KB of row and details.
        let big = "console line with some text in it\n".repeat(2000);
        let results = (0..1000)
            .map(|i| {
                let mut r = result(&format!("t{i}@x86_64"), Outcome::Passed);
                r.resources = Some(usage(ResourceUsage::MAX_POINTS));
                r.console_excerpt = Some(big.clone());
                r.stdout.text = big.clone();
                r.stdout.total_bytes = big.len() as u64;
                r
            })
            .collect();
        let html = html_report(&report(results));
        assert!(html.len() < 22_000_000, "{} bytes", html.len());
        assert_eq!(html.matches("<tr class=\"test\">").count(), 1000);
        assert!(!html.contains(&big[..EXCERPT_BYTES + 100]));
        assert_self_contained(&html);
        // Without output, the plots dominate.
        let quiet = (0..1000)
            .map(|i| {
                let mut r = result(&format!("t{i}@x86_64"), Outcome::Passed);
                r.resources = Some(usage(ResourceUsage::MAX_POINTS));
                r
            })
            .collect();
        let html = html_report(&report(quiet));
        assert!(html.len() < 13_000_000, "{} bytes", html.len());
    }

    #[test]
    fn write_html_writes_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/report.html");
        let rep = sample();
        rep.write_html(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            html_report(&rep),
            "the same report renders the same page"
        );
        let err = rep
            .write_html(&dir.path().join("sub/report.html/x"))
            .unwrap_err();
        assert!(err.to_string().contains("report.html"), "{err}");
    }
}
