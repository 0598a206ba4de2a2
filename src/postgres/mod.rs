//! PostgreSQL as a sink: exactly once into the database.
//!
//! Each event's rows and its inbox row `(event_id, handler)` are written in one transaction, so a
//! redelivered, replayed or duplicated event commits nothing twice: its inbox row already exists,
//! so its rows are skipped and the message is acked. warren owns its tables ([`schema`]) and
//! writes batches of events in one statement ([`sink`]).
//!
//! The connection comes from `DATABASE_URL` (a `postgres://` URL or `key=value` pairs); the
//! password is never printed: [`DbSettings::shown`] is the form every log and error uses.

mod error;
pub mod schema;
pub mod sink;

pub use error::{DbError, Fault};
pub use schema::{SchemaStatus, TableCount};
pub use sink::{BatchOutcome, EventRow, Sink};

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::config::Host;

/// The environment variable holding the connection string.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";
/// The schema warren's tables live in unless `--db-schema` says otherwise.
pub const DEFAULT_SCHEMA: &str = "warren";
/// How long a batch waits for a pooled connection before the pool counts as exhausted.
const POOL_WAIT: Duration = Duration::from_secs(5);
/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the database is and which schema warren owns there.
#[derive(Clone)]
pub struct DbSettings {
    config: tokio_postgres::Config,
    shown: String,
    schema: String,
}

/// Never shows the password: only the redacted form.
impl std::fmt::Debug for DbSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSettings")
            .field("database", &self.shown)
            .field("schema", &self.schema)
            .finish()
    }
}

impl DbSettings {
    /// Parses a connection string and checks the schema name.
    pub fn parse(url: &str, schema: &str) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| {
                // The parser's message names the bad part, never the password.
                DbError::Config(format!("DATABASE_URL: {e}"))
            })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("warren");
        }
        check_identifier(schema)?;
        let shown = shown(&config);
        Ok(Self {
            config,
            shown,
            schema: schema.to_string(),
        })
    }

    /// `user@host:port/dbname`: what logs and errors name, never the password.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The schema warren's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A pool of at most `size` connections; opens none until asked.
    pub fn pool(&self, size: usize) -> Result<Pool, DbError> {
        let manager = Manager::from_config(
            self.config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DbError::Config(format!("connection pool for {}: {e}", self.shown)))
    }
}

fn shown(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("");
    let db = config.get_dbname().unwrap_or(user);
    let at = if user.is_empty() {
        String::new()
    } else {
        format!("{user}@")
    };
    format!("postgres://{at}{host}:{port}/{db}")
}

/// A schema name warren accepts: a lowercase SQL identifier, so it never needs escaping tricks.
fn check_identifier(name: &str) -> Result<(), DbError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(DbError::Config(format!(
            "--db-schema '{name}': use lowercase letters, digits and _ (at most 63), starting with a letter or _"
        )))
    }
}

/// `"name"`: an identifier quoted for SQL (names were checked by [`check_identifier`]).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows() {
        for url in [
            "postgres://bob:s3cr3t-canary@db.example:6543/books",
            "host=db.example port=6543 user=bob password=s3cr3t-canary dbname=books",
        ] {
            let s = DbSettings::parse(url, "warren").unwrap();
            for shown in [s.shown().to_string(), format!("{s:?}")] {
                assert!(!shown.contains("s3cr3t-canary"), "{shown}");
                assert!(shown.contains("bob@db.example:6543/books"), "{shown}");
            }
        }
    }

    #[test]
    fn a_bad_url_or_schema_is_a_config_error_without_the_password() {
        let e = DbSettings::parse("postgres://bob:s3cr3t-canary@db:notaport/x", "warren")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("DATABASE_URL: "), "{e}");
        assert!(!e.contains("s3cr3t-canary"), "{e}");
        for bad in ["", "Warren", "1x", "a-b", "x;drop"] {
            let e = DbSettings::parse("postgres://db/x", bad).unwrap_err();
            assert!(matches!(e, DbError::Config(_)), "{bad}: {e}");
        }
        assert!(DbSettings::parse("postgres://db/x", "warren_test_01").is_ok());
    }
}
