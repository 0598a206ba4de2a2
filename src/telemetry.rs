//! Logging to stderr, human-readable or JSON, filtered by `RUST_LOG`. lapin is kept at warn.

use std::io::IsTerminal;

use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Caps applied whatever `RUST_LOG` says: lapin's debug output carries frames (the login frame
/// holds the password), its returned-message warning dumps whole messages, and its channel-close
/// errors repeat broker replies that warren reports itself, in plain words, and its I/O loop's
/// errors (a refused login's "Exponential backoff attempts exhausted") describe a connection
/// failure that reaches warren as an error it reports in one line.
fn library_caps() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("lapin", LevelFilter::WARN)
        .with_target("amq_protocol", LevelFilter::WARN)
        .with_target("lapin::channel", LevelFilter::OFF)
        .with_target("lapin::channels", LevelFilter::OFF)
        .with_target("lapin::io_loop", LevelFilter::OFF)
        .with_target("lapin::returned_messages", LevelFilter::OFF)
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Both filters must pass, so RUST_LOG can lower warren's level but never raise lapin's.
    let filter = env.and(library_caps());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let layer = match format {
        LogFormat::Text => fmt.with_filter(filter).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_filter(filter).boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}
