//! Progress on the terminal: a live bar when stderr is a terminal, one plain line per event
//! otherwise (CI logs), nothing at all when quiet.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::orchestrator::{Interruption, RunEvent};
use crate::result::TestResult;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// A live bar when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines on stderr, one per test start and end.
    Lines,
    /// Nothing.
    Quiet,
}

/// Turns [`RunEvent`]s into progress output on stderr. Feed it every event.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: bool,
    running: Vec<String>,
}

impl Progress {
    /// A progress display in the given mode.
    pub fn new(mode: ProgressMode) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let (bar, lines) = match mode {
            ProgressMode::Auto if terminal => (Some(new_bar()), false),
            ProgressMode::Auto | ProgressMode::Lines => (None, true),
            ProgressMode::Quiet => (None, false),
        };
        Progress {
            bar,
            lines,
            running: Vec::new(),
        }
    }

    /// Shows one event.
    pub fn event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted { run_id, total } => {
                if let Some(bar) = &self.bar {
                    bar.set_length(*total as u64);
                }
                self.line(&format!("    Starting {total} tests (run {run_id})"));
            }
            RunEvent::TestStarted { test, attempt } => {
                self.running.push(test.id.to_string());
                let retry = if *attempt > 1 {
                    format!(" (attempt {attempt})")
                } else {
                    String::new()
                };
                self.line(&format!("       START {}{retry}", test.id));
                self.update_message();
            }
            RunEvent::TestRetrying { result } => {
                self.finished_running(result);
                self.line(&format!(
                    "       RETRY [{:>7.2}s] {}: {}",
                    result.duration().as_secs_f64(),
                    result.test_id,
                    result.outcome
                ));
            }
            RunEvent::TestFinished { result } => {
                self.finished_running(result);
                let line = format!(
                    "{:>12} [{:>7.2}s] {}{}",
                    result.verdict().label(),
                    result.duration().as_secs_f64(),
                    result.test_id,
                    if result.verdict().is_success() {
                        String::new()
                    } else {
                        format!(": {}", result.outcome)
                    }
                );
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                }
                self.line(&line);
            }
            RunEvent::Interrupted { reason } => {
                self.line(match reason {
                    Interruption::Cancelled => {
                        "   CANCELLED stopping running tests and writing the reports"
                    }
                    Interruption::DeadlineReached => {
                        "    DEADLINE the run's deadline passed: stopping running tests"
                    }
                });
            }
            RunEvent::CleanupFailed { runner, message } => {
                self.line(&format!(
                    "     WARNING cleanup of the {runner} runner failed: {message}"
                ));
            }
        }
    }

    /// Removes the bar (call before printing the summary).
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn finished_running(&mut self, result: &TestResult) {
        if let Some(i) = self
            .running
            .iter()
            .position(|r| r == result.test_id.as_str())
        {
            self.running.remove(i);
        }
        self.update_message();
    }

    fn update_message(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.running.join(", "));
        }
    }

    fn line(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.println(text);
        } else if self.lines {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{text}");
        }
    }
}

fn new_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner:.green} [{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
