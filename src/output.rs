//! How commands print data: tables for people, JSON for scripts. Data goes to stdout (or a file
//! named by `--out`) through one writer, [`Output`]; logs and progress go to stderr.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tabled::settings::Style;

use crate::error::{Error, Result};

/// `-o table|json|ndjson`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    style(&mut t);
    t.to_string()
}

/// Borders for every table: sharp lines, and a closed box when only the header is there
/// (tabled would draw the header's separator where the bottom border belongs).
pub fn style(t: &mut tabled::Table) {
    if t.count_rows() <= 1 {
        t.with(Style::sharp().remove_horizontals());
    } else {
        t.with(Style::sharp());
    }
}

/// The width tables must fit: `COLUMNS` when set (as shells export it), else stdout's
/// terminal; `None` when stdout is not a terminal (a file or a pipe takes whole lines).
pub fn terminal_width() -> Option<usize> {
    if let Some(n) = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        return Some(n);
    }
    console::Term::stdout()
        .size_checked()
        .map(|(_, cols)| usize::from(cols))
}

/// The one writer for a command's data. A reader that goes away (`warren … | head`) ends the
/// output quietly: the write that meets the closed pipe succeeds, [`Output::is_closed`] turns
/// true, and later writes are dropped, so the command finishes as if it had printed everything.
/// Any other write error names the destination (`<stdout>` or the file).
pub struct Output {
    writer: BufWriter<Box<dyn Write + Send>>,
    name: PathBuf,
    closed: bool,
}

impl Output {
    /// Writes to stdout.
    pub fn stdout() -> Self {
        Self::new(Box::new(std::io::stdout()), "<stdout>".into())
    }

    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::new(Box::new(file), path.to_path_buf()))
    }

    fn new(writer: Box<dyn Write + Send>, name: PathBuf) -> Self {
        Self {
            writer: BufWriter::new(writer),
            name,
            closed: false,
        }
    }

    /// True once the reader has gone away; producers may stop early.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Writes `text` and a newline, then flushes (so `listening on ADDR` is seen at once).
    pub fn text(&mut self, text: &str) -> Result<()> {
        self.write(|w| writeln!(w, "{text}"))?;
        self.flush()
    }

    /// Writes one value as pretty JSON, then flushes.
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.write(|w| {
            serde_json::to_writer_pretty(&mut *w, value)?;
            writeln!(w)
        })?;
        self.flush()
    }

    /// Writes each value as one JSON line, then flushes.
    pub fn ndjson<'a, T: Serialize + 'a>(
        &mut self,
        values: impl IntoIterator<Item = &'a T>,
    ) -> Result<()> {
        for v in values {
            self.line(v)?;
        }
        self.flush()
    }

    /// Writes one value as a JSON line, buffered: call [`Output::finish`] at the end.
    pub fn line<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<()> {
        self.write(|w| {
            serde_json::to_writer(&mut *w, value)?;
            writeln!(w)
        })
    }

    /// Flushes what is buffered.
    pub fn finish(mut self) -> Result<()> {
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.write(|w| w.flush())
    }

    /// Runs one write; the only place a write error is judged.
    fn write(
        &mut self,
        f: impl FnOnce(&mut BufWriter<Box<dyn Write + Send>>) -> std::io::Result<()>,
    ) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        match f(&mut self.writer) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(source) => Err(Error::Io {
                path: self.name.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that went away after `room` bytes.
    struct ClosedAfter {
        room: usize,
    }

    impl Write for ClosedAfter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::ErrorKind::BrokenPipe.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_the_output_quietly() {
        let mut out = Output::new(Box::new(ClosedAfter { room: 4 }), "<stdout>".into());
        assert!(out.text("longer than four bytes").is_ok());
        assert!(out.is_closed());
        assert!(out.line(&[1, 2, 3]).is_ok());
        assert!(out.finish().is_ok());
    }

    #[test]
    fn other_write_errors_name_the_destination() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("no space left"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::new(Box::new(Full), "out.ndjson".into());
        let err = out.text("x").unwrap_err().to_string();
        assert_eq!(err, "out.ndjson: no space left");
        assert!(!out.is_closed());
    }
}
