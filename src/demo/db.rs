//! `warren demo --sink postgres`: a schema of the run's own, the progress count and the
//! reconciliation's rows, computed in SQL against the upstream's ledger.

use deadpool_postgres::Pool;

use super::report::{Effect, Emitted, TypeRows};
use crate::postgres::{DbError, DbSettings, quote_ident, schema};

/// The handler name the demo's workers write their inbox rows under.
const HANDLER: &str = "postgres";

/// The run's database: its own schema, created at the start and dropped at the end.
pub struct DemoDb {
    settings: DbSettings,
    /// The URL as given, for the workers' environment (never on a command line, never printed).
    url: String,
    pool: Pool,
}

impl std::fmt::Debug for DemoDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoDb")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl DemoDb {
    /// Creates the schema `demo_<hex>` of the run whose AMQP prefix is `demo-<hex>.`.
    pub async fn create(url: &str, prefix: &str) -> Result<Self, DbError> {
        let name = format!(
            "demo_{}",
            prefix
                .trim_start_matches("demo-")
                .trim_end_matches('.')
                .to_ascii_lowercase()
        );
        let settings = DbSettings::parse(url, &name)?;
        let pool = settings.pool(2)?;
        schema::apply(&settings, &pool).await?;
        Ok(Self {
            settings,
            url: url.to_string(),
            pool,
        })
    }

    /// The schema's name.
    pub fn schema(&self) -> &str {
        self.settings.schema()
    }

    /// `user@host:port/dbname`, never the password.
    pub fn shown(&self) -> &str {
        self.settings.shown()
    }

    /// The URL for the workers' environment.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        schema::get(&self.settings, &self.pool).await
    }

    fn sql(&self) -> impl Fn(tokio_postgres::Error) -> DbError + '_ {
        |e| DbError::sql(self.settings.shown(), e)
    }

    /// Events committed so far (inbox rows of the demo's handler).
    pub async fn processed(&self) -> Result<u64, DbError> {
        let s = quote_ident(self.schema());
        let row = self
            .client()
            .await?
            .query_one(
                &format!("SELECT count(*) FROM {s}.inbox WHERE handler = $1"),
                &[&HANDLER],
            )
            .await
            .map_err(self.sql())?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    /// Inbox rows per event, with the first commit time: the reconciliation's effects.
    pub async fn effects(&self) -> Result<Vec<Effect>, DbError> {
        let s = quote_ident(self.schema());
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "SELECT event_id, count(*)::int4,
                            (extract(epoch FROM min(processed_at)) * 1000)::int8
                     FROM {s}.inbox GROUP BY event_id"
                ),
                &[],
            )
            .await
            .map_err(self.sql())?;
        Ok(rows
            .iter()
            .map(|r| Effect {
                event_id: Some(r.get(0)),
                effects: r.get::<_, i32>(1).max(0) as u32,
                committed_at_ms: Some(r.get::<_, i64>(2).max(0) as u64),
            })
            .collect())
    }

    /// Per event type: distinct events emitted, their rows in the events table and in the
    /// domain tables, joined in SQL against the upstream's ledger; and the events stored that
    /// the upstream never emitted.
    pub async fn rows_per_type(
        &self,
        emitted: &[Emitted],
    ) -> Result<(Vec<TypeRows>, u64), DbError> {
        let s = quote_ident(self.schema());
        let ids: Vec<&str> = emitted.iter().map(|e| e.id.as_str()).collect();
        let types: Vec<&str> = emitted.iter().map(|e| e.event_type.as_str()).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "WITH emitted AS (
                         SELECT DISTINCT event_id, type
                         FROM unnest($1::text[], $2::text[]) AS t(event_id, type)
                     )
                     SELECT m.type, count(*), count(e.event_id),
                            count(c.event_id) + count(b.event_id) + count(x.event_id)
                                + count(j.event_id)
                     FROM emitted m
                     LEFT JOIN {s}.events e ON e.event_id = m.event_id
                     LEFT JOIN {s}.candles c ON c.event_id = m.event_id
                     LEFT JOIN {s}.balance_changes b ON b.event_id = m.event_id
                     LEFT JOIN {s}.escrow_events x ON x.event_id = m.event_id
                     LEFT JOIN {s}.job_results j ON j.event_id = m.event_id
                     GROUP BY m.type ORDER BY m.type"
                ),
                &[&ids, &types],
            )
            .await
            .map_err(self.sql())?;
        let count = |r: &tokio_postgres::Row, i| r.get::<_, i64>(i).max(0) as u64;
        let per_type = rows
            .iter()
            .map(|r| TypeRows {
                event_type: r.get(0),
                emitted: count(r, 1),
                stored: count(r, 2),
                domain_rows: count(r, 3),
            })
            .collect();
        let phantom = client
            .query_one(
                &format!("SELECT count(*) FROM {s}.events WHERE NOT (event_id = ANY($1::text[]))"),
                &[&ids],
            )
            .await
            .map_err(self.sql())?;
        Ok((per_type, count(&phantom, 0)))
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(&self) -> Result<(), DbError> {
        let s = quote_ident(self.schema());
        self.client()
            .await?
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
            .await
            .map_err(self.sql())
    }
}
