//! How commands print data: tables for people, JSON for scripts. Data goes to stdout; logs and
//! progress go to stderr.

use std::io::Write;

use serde::Serialize;
use tabled::settings::Style;

/// `-o table|json|ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table.
    #[default]
    Table,
    /// One JSON document.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Renders rows as a table with rounded borders.
pub fn table<T: tabled::Tabled>(rows: impl IntoIterator<Item = T>) -> String {
    let mut t = tabled::Table::new(rows);
    t.with(Style::sharp());
    t.to_string()
}

/// Writes one value as pretty JSON to stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)
}

/// Writes each value as one JSON line to stdout.
pub fn print_ndjson<'a, T: Serialize + 'a>(values: impl IntoIterator<Item = &'a T>) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for v in values {
        serde_json::to_writer(&mut out, v)?;
        writeln!(out)?;
    }
    out.flush()
}

/// Writes text to stdout.
pub fn print_text(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")
}
