//! Live progress on stderr: a redrawn line on a terminal, a log line every few seconds
//! otherwise. The line fits 100 columns for the default demo.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Pipeline counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Events the upstream emitted.
    pub emitted: u64,
    /// Publishes the bridge had confirmed (read before `emitted`, so never ahead of it).
    pub published: u64,
    /// Effects in the downstream's ledger.
    pub processed: u64,
    /// Messages ready in the work queues (lanes included): the broker's backlog.
    pub queued: u64,
    /// Handlers running in the workers now.
    pub in_flight: u64,
    /// Messages waiting in retry tiers now.
    pub retrying: u64,
    /// Messages in the dead-letter queues (an event can be more than one: a duplicate, or an
    /// event two queues bind; the report counts events).
    pub dead: u64,
}

/// How often the non-terminal form logs.
const LOG_EVERY: Duration = Duration::from_secs(3);

/// The progress line for `s`, with rates over the `secs` since `prev`:
/// `emitted 2000 (500/s)  published 2000  processed 1990 (497/s)  backlog 6+4  retry 0  DLQ 0 msgs`.
/// The backlog is messages queued in the broker + handlers running in the workers.
pub fn line(s: &Sample, prev: &Sample, secs: f64) -> String {
    let rate = |now: u64, before: u64| {
        if secs > 0.0 {
            format!(" ({:.0}/s)", now.saturating_sub(before) as f64 / secs)
        } else {
            String::new()
        }
    };
    format!(
        "emitted {}{}  published {}  processed {}{}  backlog {}+{}  retry {}  DLQ {} msgs",
        s.emitted,
        rate(s.emitted, prev.emitted),
        // A republish (a reconnect's replay) is no new event: never more published than emitted.
        s.published.min(s.emitted),
        s.processed,
        rate(s.processed, prev.processed),
        s.queued,
        s.in_flight,
        s.retrying,
        s.dead,
    )
}

/// The progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// The last sample shown and when; the start and zeros before the first.
    last: (Instant, Sample),
    latest: Option<Sample>,
    logged: Option<Instant>,
}

impl Progress {
    /// A line redrawn in place when stderr is a terminal, log lines otherwise.
    pub fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Self {
            bar,
            last: (Instant::now(), Sample::default()),
            latest: None,
            logged: None,
        }
    }

    /// Shows `s`, with rates since the previous line shown (the first: since the start).
    pub fn show(&mut self, s: Sample) {
        let now = Instant::now();
        self.latest = Some(s);
        let log_due = self
            .logged
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY);
        if self.bar.is_none() && !log_due {
            return;
        }
        let (at, prev) = self.last;
        let text = line(&s, &prev, now.duration_since(at).as_secs_f64());
        self.last = (now, s);
        match &self.bar {
            Some(bar) => bar.set_message(text),
            None => {
                self.logged = Some(now);
                tracing::info!("Demo: {text}");
            }
        }
    }

    /// Clears the line, leaving the last numbers in the log, labelled by unit.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(s) = self.latest {
            tracing::info!(
                emitted_events = s.emitted,
                published_messages = s.published,
                processed_events = s.processed,
                backlog_messages = s.queued + s.in_flight,
                dead_letter_messages = s.dead,
                "Demo: final counts."
            );
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: u64) -> Sample {
        Sample {
            emitted: n,
            published: n,
            processed: n - n / 10,
            queued: n / 20,
            in_flight: 40,
            retrying: n / 50,
            dead: n / 30,
        }
    }

    #[test]
    fn the_line_fits_100_columns_for_the_default_demo_and_120_for_a_large_one() {
        // The default demo: 2,000 events at 500/s; the README's large one: 20,000 at 2,000/s.
        let default = line(&sample(2000), &sample(1750), 0.5);
        assert!(
            default.chars().count() <= 100,
            "{} columns: {default}",
            default.len()
        );
        let large = line(&sample(20000), &sample(19000), 0.5);
        assert!(
            large.chars().count() <= 120,
            "{} columns: {large}",
            large.len()
        );
        assert!(large.contains("backlog 1000+40"), "{large}");
        assert!(large.contains("DLQ 666 msgs"), "the unit is named: {large}");
    }

    #[test]
    fn the_first_line_has_real_rates_and_never_more_published_than_emitted() {
        let first = Sample {
            emitted: 250,
            published: 260,
            processed: 200,
            ..Sample::default()
        };
        // The first line's rates run from the start (zeros) over the time since.
        let l = line(&first, &Sample::default(), 0.5);
        assert!(
            l.starts_with("emitted 250 (500/s)  published 250  processed 200 (400/s)"),
            "{l}"
        );
        assert!(!l.contains("(0/s)"), "{l}");
        // No time elapsed: no rate rather than a made-up one.
        let l = line(&first, &first, 0.0);
        assert!(!l.contains("/s"), "{l}");
    }
}
