//! `warren db`: the PostgreSQL sink's tables (`apply`, `status`), and the flags every command
//! that talks to the database shares.

use clap::{Args, Subcommand};

use super::{Outcome, OutputArg};
use crate::error::Result;
use crate::output::{Output, OutputFormat};
use crate::postgres::{self, DATABASE_URL_ENV, DEFAULT_SCHEMA, DbSettings, schema};

/// Where the database is.
#[derive(Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL connection string: postgres://user:password@host:5432/dbname, or
    /// `host=… user=… dbname=…`. The password is never printed.
    #[arg(long, env = DATABASE_URL_ENV, hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// The schema warren's tables live in (created by `warren db apply`).
    #[arg(long, env = "WARREN_DB_SCHEMA", default_value = DEFAULT_SCHEMA, value_name = "NAME")]
    pub db_schema: String,
}

/// Never shows the connection string, which may hold a password.
impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &self.database_url.as_ref().map(|_| "<set>"))
            .field("db_schema", &self.db_schema)
            .finish()
    }
}

impl DbArgs {
    /// The parsed settings; a usage error when no URL is given.
    pub fn settings(&self, who: &str) -> Result<DbSettings> {
        let Some(url) = &self.database_url else {
            return Err(crate::error::Error::Usage(format!(
                "{who} needs a database: set {DATABASE_URL_ENV} or --database-url"
            )));
        };
        Ok(DbSettings::parse(url, &self.db_schema)?)
    }
}

/// `warren db …`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create warren's schema and tables, or migrate them to this build's version. Safe to run
    /// again, and from several processes at once.
    Apply(DbVerbArgs),
    /// The schema's version and each table's rows.
    Status(DbVerbArgs),
}

/// `warren db apply|status`
#[derive(Debug, Args)]
pub struct DbVerbArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

pub(super) async fn db_command(cmd: DbCommand) -> Result<Outcome> {
    match cmd {
        DbCommand::Apply(args) => {
            let settings = args.db.settings("warren db apply")?;
            let pool = settings.pool(1)?;
            let applied = schema::apply(&settings, &pool).await?;
            let mut out = Output::stdout();
            match OutputFormat::from(args.output) {
                OutputFormat::Table => {
                    let line = if applied.from == applied.to {
                        format!(
                            "{}: schema '{}' is at version {}; nothing to do\n",
                            settings.shown(),
                            applied.schema,
                            applied.to
                        )
                    } else {
                        format!(
                            "{}: schema '{}' migrated from version {} to {}\n",
                            settings.shown(),
                            applied.schema,
                            applied.from,
                            applied.to
                        )
                    };
                    out.text(&line)?;
                }
                _ => out.json(&applied)?,
            }
            out.finish()?;
            Ok(Outcome::Success)
        }
        DbCommand::Status(args) => {
            let settings = args.db.settings("warren db status")?;
            let pool = settings.pool(1)?;
            let status = schema::status(&settings, &pool).await?;
            let mut out = Output::stdout();
            match OutputFormat::from(args.output) {
                OutputFormat::Table => out.text(&status_text(&status))?,
                _ => out.json(&status)?,
            }
            out.finish()?;
            Ok(Outcome::Success)
        }
    }
}

fn status_text(status: &postgres::SchemaStatus) -> String {
    let mut text = format!(
        "{} schema '{}': version {} (this warren writes {})\n",
        status.database, status.schema, status.version, status.latest
    );
    if status.version == 0 {
        text.push_str("nothing applied: run `warren db apply`\n");
    } else {
        #[derive(tabled::Tabled)]
        struct Row<'a> {
            table: &'a str,
            rows: i64,
        }
        text.push_str(&crate::output::table(status.tables.iter().map(|t| Row {
            table: &t.table,
            rows: t.rows,
        })));
        text.push('\n');
    }
    text
}
