//! The crate's error type. Messages name what the operator controls: the file, the queue, the
//! URL (without its password), the flag.

use std::path::PathBuf;

use crate::amqp::AmqpError;
use crate::topology::TopologyError;

/// Exit code for a command that partly failed (some items of a bulk operation).
pub const EXIT_PARTIAL: u8 = 3;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A broker operation failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The topology file is invalid or disagrees with the broker.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A simulator (`warren sim`, `warren demo`) could not start or run.
    #[error(transparent)]
    Simulator(#[from] warren_sim::SimError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A flag or environment variable has a value that cannot work.
    #[error("{0}")]
    Usage(String),
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
    /// The command could not see everything it had to (a DLQ read incomplete), so its answer
    /// may be wrong; phrased for the operator. Exit code [`EXIT_PARTIAL`].
    #[error("{0}")]
    Partial(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Partial(_) => EXIT_PARTIAL,
            _ => 1,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
