//! The crate's error type. Messages name what the operator controls: the file, the queue, the
//! URL (without its password), the flag. Which exit code an error means is the command line's
//! decision (`cli::Outcome`), not the error's.

use std::path::PathBuf;

use crate::amqp::AmqpError;
use crate::postgres::DbError;
use crate::topology::TopologyError;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A broker operation failed.
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    /// The topology file is invalid or disagrees with the broker.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// The database (PostgreSQL sink) failed or is not set up.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A simulator (`warren sim`, `warren demo`) could not start or run.
    #[error(transparent)]
    Simulator(#[from] warren_sim::SimError),
    /// A file (or `<stdout>`, `<stdin>`) could not be read or written.
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
    /// The HTTP client for a downstream could not be built (TLS, the bearer token).
    #[error("{0}")]
    HttpClient(String),
    /// A DLQ of the topology is not on the broker.
    #[error(
        "DLQ '{dlq}' does not exist on the broker; run `warren topology apply` with the same -f/--prefix"
    )]
    DlqMissing {
        /// The DLQ.
        dlq: String,
    },
    /// `dlq show`: no dead letter has the id. When some DLQ could not be read whole the id may
    /// be among the messages another consumer holds, so the answer is only partial.
    #[error("no dead letter '{id}' in {}{}", .dlqs.join(", "), incomplete_note(.incomplete))]
    DeadLetterNotFound {
        /// The id (or `#N`) asked for.
        id: String,
        /// The DLQs searched.
        dlqs: Vec<String>,
        /// The DLQs that could not be read whole.
        incomplete: Vec<String>,
    },
    /// The operator answered no to a confirmation prompt.
    #[error("not confirmed; nothing was changed")]
    NotConfirmed,
    /// Anything else, already phrased for the operator.
    #[error("{0}")]
    Other(String),
}

fn incomplete_note(incomplete: &[String]) -> String {
    if incomplete.is_empty() {
        String::new()
    } else {
        format!(
            " (DLQ read incomplete): another consumer holds messages of {}; run it again",
            incomplete.join(", ")
        )
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
