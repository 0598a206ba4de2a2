//! Logging to stderr, human-readable or JSON, filtered by `RUST_LOG`. lapin is kept at warn.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "info";

/// Forced whatever `RUST_LOG` says: lapin's debug output can carry frames (and credentials), and
/// its channel-close errors repeat broker replies that warren reports itself, in plain words.
const FORCED: [&str; 4] = [
    "lapin=warn",
    "amq_protocol=warn",
    "lapin::channel=off",
    "lapin::channels=off",
];

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    for directive in FORCED {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
