//! What can go wrong with the database, and what each failure means for a message.

use tokio_postgres::error::SqlState;

/// A database failure, phrased for the operator (never with the password).
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// `DATABASE_URL` or `--db-schema` cannot work.
    #[error("{0}")]
    Config(String),
    /// No connection could be had (refused, timed out, pool exhausted).
    #[error("database {database}: {reason}")]
    Pool {
        /// The redacted database URL.
        database: String,
        /// Why.
        reason: String,
    },
    /// A statement failed.
    #[error("database {database}: {source}")]
    Sql {
        /// The redacted database URL.
        database: String,
        /// The driver's error, with the server's SQLSTATE and message.
        #[source]
        source: tokio_postgres::Error,
    },
    /// warren's tables are missing or older than this build needs.
    #[error("{0}")]
    Schema(String),
}

/// What a failure means for the events of a batch (the handler's error taxonomy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The database cannot take work now (down, refusing, restarting, pool exhausted, tables
    /// missing): park without counting an attempt.
    Unavailable,
    /// Worth another attempt (serialization failure, deadlock, anything unexplained).
    Transient,
    /// The event's own data cannot be stored (a type, format or constraint error): dead-letter.
    Permanent,
}

impl DbError {
    /// The taxonomy class of this failure.
    pub fn fault(&self) -> Fault {
        match self {
            DbError::Config(_) | DbError::Pool { .. } | DbError::Schema(_) => Fault::Unavailable,
            DbError::Sql { source, .. } => classify(source),
        }
    }

    pub(crate) fn sql(database: &str, source: tokio_postgres::Error) -> Self {
        DbError::Sql {
            database: database.to_string(),
            source,
        }
    }

    /// The server's message and SQLSTATE alone: what a dead letter records.
    pub fn sql_message(&self) -> String {
        match self {
            DbError::Sql { source, .. } => match source.as_db_error() {
                Some(db) => {
                    let detail = db.detail().map(|d| format!(" ({d})")).unwrap_or_default();
                    format!("SQLSTATE {}: {}{detail}", db.code().code(), db.message())
                }
                None => source.to_string(),
            },
            other => other.to_string(),
        }
    }
}

/// Classifies a driver error by SQLSTATE; no server answer at all means the connection is gone.
pub(crate) fn classify(e: &tokio_postgres::Error) -> Fault {
    let Some(code) = e.code() else {
        // I/O, a closed connection, a timeout: nothing the event did.
        return Fault::Unavailable;
    };
    classify_code(code)
}

pub(crate) fn classify_code(code: &SqlState) -> Fault {
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return Fault::Transient;
    }
    match &code.code()[..2] {
        // Connection exception, insufficient resources, operator intervention (shutdown,
        // cannot connect now), system error; undefined table/schema (42P01, 3F000): tables
        // missing until `warren db apply`.
        "08" | "53" | "57" | "58" | "3F" => Fault::Unavailable,
        _ if *code == SqlState::UNDEFINED_TABLE => Fault::Unavailable,
        // Data exception (bad number, text in a numeric column, out of range), integrity
        // constraint violation (a NOT NULL field missing): the event's data.
        "22" | "23" => Fault::Permanent,
        _ => Fault::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_the_taxonomy() {
        let cases = [
            ("40001", Fault::Transient),
            ("40P01", Fault::Transient),
            ("08006", Fault::Unavailable),
            ("57P01", Fault::Unavailable),
            ("57P03", Fault::Unavailable),
            ("53300", Fault::Unavailable),
            ("42P01", Fault::Unavailable),
            ("3F000", Fault::Unavailable),
            ("22P02", Fault::Permanent),
            ("22003", Fault::Permanent),
            ("23502", Fault::Permanent),
            ("42601", Fault::Transient),
        ];
        for (code, want) in cases {
            assert_eq!(classify_code(&SqlState::from_code(code)), want, "{code}");
        }
    }
}
