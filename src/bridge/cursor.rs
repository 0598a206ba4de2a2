//! The resume cursor file: the last eventId whose publish, and every earlier one's, is
//! confirmed. Written atomically (temp file, fsync, rename, fsync the directory), so a crash
//! leaves either the old cursor or the new one, never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use ulid::Ulid;

use crate::error::Error;

/// A cursor file on disk.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The cursor kept at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored cursor; `None` when the file does not exist or is empty.
    pub fn load(&self) -> Result<Option<Ulid>, Error> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        Ulid::from_string(text).map(Some).map_err(|_| {
            Error::Usage(format!(
                "{}: '{}' is not an eventId (ULID); fix or delete the cursor file",
                self.path.display(),
                text.chars().take(40).collect::<String>()
            ))
        })
    }

    /// Replaces the cursor atomically and durably. Blocking: call from a blocking thread.
    pub fn store(&self, id: Ulid) -> std::io::Result<()> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            writeln!(f, "{id}")?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        // The rename is only durable once the directory entry is.
        File::open(&dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_atomically_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = CursorFile::new(dir.path().join("cursor"));
        assert_eq!(c.load().unwrap(), None);
        let a = Ulid::from_parts(1000, 1);
        let b = Ulid::from_parts(1000, 2);
        c.store(a).unwrap();
        assert_eq!(c.load().unwrap(), Some(a));
        c.store(b).unwrap();
        assert_eq!(c.load().unwrap(), Some(b));
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["cursor"], "no temp file is left behind");
    }

    #[test]
    fn a_corrupt_cursor_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursor");
        fs::write(&path, "garbage\n").unwrap();
        let err = CursorFile::new(&path).load().unwrap_err().to_string();
        assert!(err.contains("cursor") && err.contains("garbage"), "{err}");
        fs::write(&path, "\n").unwrap();
        assert_eq!(CursorFile::new(&path).load().unwrap(), None);
    }
}
