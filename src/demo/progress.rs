//! Live progress on stderr: a redrawn line on a terminal, a log line every few seconds
//! otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Pipeline counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Events the upstream emitted.
    pub emitted: u64,
    /// Publishes the bridge had confirmed.
    pub published: u64,
    /// Effects in the downstream's ledger.
    pub processed: u64,
    /// Messages waiting in retry tiers now.
    pub retrying: u64,
    /// Deliveries sent to a retry tier so far.
    pub retries: u64,
    /// Messages in the dead-letter queues.
    pub dead: u64,
}

/// How often the non-terminal form logs.
const LOG_EVERY: Duration = Duration::from_secs(3);

/// The progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    last: Option<(Instant, Sample)>,
    latest: Sample,
    logged: Option<Instant>,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn new(events: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(events), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:24} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            last: None,
            latest: Sample::default(),
            logged: None,
        }
    }

    /// Shows `s`, with rates since the previous sample.
    pub fn show(&mut self, s: Sample) {
        let now = Instant::now();
        self.latest = s;
        let rate = |f: fn(&Sample) -> u64| match self.last {
            Some((at, prev)) if now > at => {
                f(&s).saturating_sub(f(&prev)) as f64 / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        };
        let line = format!(
            "emitted {} ({:.0}/s)  published {} ({:.0}/s)  processed {} ({:.0}/s)  retrying {} ({:.0}/s)  dead-lettered {} ({:.0}/s)",
            s.emitted,
            rate(|s| s.emitted),
            s.published,
            rate(|s| s.published),
            s.processed,
            rate(|s| s.processed),
            s.retrying,
            rate(|s| s.retries),
            s.dead,
            rate(|s| s.dead),
        );
        let bar_due = self.bar.is_some();
        let log_due = self
            .logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if !bar_due && !log_due {
            return;
        }
        // Rates are since the last sample shown.
        self.last = Some((now, s));
        match &self.bar {
            Some(bar) => {
                bar.set_position(s.processed);
                bar.set_message(line);
            }
            None => {
                self.logged = Some(now);
                tracing::info!("Demo: {line}");
            }
        }
    }

    /// Clears the bar, leaving the last numbers in the log.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.last.is_some() {
            let s = self.latest;
            tracing::info!(
                emitted = s.emitted,
                published = s.published,
                processed = s.processed,
                dead = s.dead,
                "Demo: final counts."
            );
        }
    }
}
