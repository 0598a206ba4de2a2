//! The sim upstream's ledger file, read as it grows: what was emitted, for progress and for
//! the reconciliation.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use super::report::Emitted;
use crate::error::{Error, Result};

/// Reads the upstream's ledger file as it grows: `<eventId> <type>` lines, `#` comments.
pub(super) struct LedgerTail {
    path: PathBuf,
    offset: u64,
    partial: String,
    events: Vec<Emitted>,
}

impl LedgerTail {
    /// Starts at the beginning of the file, which need not exist yet.
    pub(super) fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
            events: vec![],
        }
    }

    /// Every event so far.
    pub(super) fn read(&mut self) -> Result<&[Emitted]> {
        let io = |source| Error::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(&self.events),
            Err(e) => return Err(io(e)),
        };
        file.seek(SeekFrom::Start(self.offset)).map_err(io)?;
        let mut text = String::new();
        let n = file.read_to_string(&mut text).map_err(io)?;
        self.offset += n as u64;
        self.partial.push_str(&text);
        let complete = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..complete).collect();
        for line in lines.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split_whitespace();
            if let (Some(id), Some(event_type)) = (parts.next(), parts.next()) {
                let ts_ms = ulid::Ulid::from_string(id).map_or(0, |u| u.timestamp_ms());
                self.events.push(Emitted {
                    id: id.to_string(),
                    event_type: event_type.to_string(),
                    ts_ms,
                });
            }
        }
        Ok(&self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_tail_reads_complete_lines_only() {
        let dir = std::env::temp_dir().join(format!("warren-tail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ledger");
        let id = ulid::Ulid::from_parts(1_700_000_000_000, 7).to_string();
        std::fs::write(
            &path,
            format!("{id} job.completed\n# malformed binary\n01AB"),
        )
        .unwrap();
        let mut tail = LedgerTail::new(path.clone());
        let got = tail.read().unwrap().to_vec();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ts_ms, 1_700_000_000_000);
        std::fs::write(
            &path,
            format!("{id} job.completed\n# malformed binary\n01AB job.failed\n"),
        )
        .unwrap();
        assert_eq!(tail.read().unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
