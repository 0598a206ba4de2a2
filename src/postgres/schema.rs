//! Schema as code: warren's tables, created and migrated idempotently by `warren db apply`.
//!
//! Migrations are numbered and only ever appended. `apply` takes a session advisory lock, so two
//! processes applying at once run each migration once, then records each version it ran in
//! `schema_version`. A worker checks the version at start and refuses to run against tables
//! older than it needs.

use deadpool_postgres::Pool;
use serde::Serialize;

use super::{DbError, DbSettings, quote_ident};

/// Every table warren owns, in the order `db status` lists them.
pub const TABLES: [&str; 6] = [
    "events",
    "inbox",
    "candles",
    "balance_changes",
    "escrow_events",
    "job_results",
];

/// The advisory lock key `apply` holds while it migrates ("warren" in ASCII).
const APPLY_LOCK: i64 = 0x7761_7272_656e;

/// The migrations, in order; `{s}` is the quoted schema. Version N is `MIGRATIONS[N - 1]`.
const MIGRATIONS: [&str; 1] = [r#"
-- Every event once: the audit trail and a queryable history.
CREATE TABLE {s}.events (
    event_id    text PRIMARY KEY,
    type        text NOT NULL,
    agent_id    text NOT NULL,
    ts          timestamptz NOT NULL,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_type_ts ON {s}.events (type, ts);
-- The inbox: one row per event and handler, written in the transaction of the event's rows.
CREATE TABLE {s}.inbox (
    event_id     text NOT NULL,
    handler      text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_id, handler)
);
-- Domain tables, each keyed by the natural key of what it records.
CREATE TABLE {s}.candles (
    pair      text NOT NULL,
    interval  text NOT NULL,
    open_time timestamptz NOT NULL,
    open      numeric NOT NULL,
    high      numeric NOT NULL,
    low       numeric NOT NULL,
    close     numeric NOT NULL,
    volume    numeric,
    event_id  text NOT NULL,
    PRIMARY KEY (pair, interval, open_time)
);
CREATE TABLE {s}.balance_changes (
    event_id        text PRIMARY KEY,
    agent_id        text NOT NULL,
    ts              timestamptz NOT NULL,
    new_balance_usdc numeric NOT NULL,
    delta_usdc      numeric NOT NULL,
    reason          text
);
CREATE TABLE {s}.escrow_events (
    escrow_id    text NOT NULL,
    type         text NOT NULL,
    agent_id     text NOT NULL,
    ts           timestamptz NOT NULL,
    amount_usdc  numeric,
    counterparty text,
    reason       text,
    event_id     text NOT NULL,
    PRIMARY KEY (escrow_id, type)
);
CREATE TABLE {s}.job_results (
    job_id       text NOT NULL,
    type         text NOT NULL,
    agent_id     text NOT NULL,
    ts           timestamptz NOT NULL,
    result_hash  text,
    delivery_uri text,
    error        text,
    event_id     text NOT NULL,
    PRIMARY KEY (job_id, type)
);
"#];

/// The schema version this build writes.
pub const LATEST: i32 = MIGRATIONS.len() as i32;

/// What `db apply` did.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The schema.
    pub schema: String,
    /// The version before.
    pub from: i32,
    /// The version now.
    pub to: i32,
}

/// One table's row count.
#[derive(Debug, Clone, Serialize)]
pub struct TableCount {
    /// The table, without the schema.
    pub table: String,
    /// Its rows.
    pub rows: i64,
}

/// What `db status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct SchemaStatus {
    /// The redacted database URL.
    pub database: String,
    /// The schema.
    pub schema: String,
    /// The applied version (0: nothing applied).
    pub version: i32,
    /// The version this build needs.
    pub latest: i32,
    /// Row counts (empty when nothing is applied).
    pub tables: Vec<TableCount>,
}

/// Creates the schema and runs every migration it has not run yet.
pub async fn apply(settings: &DbSettings, pool: &Pool) -> Result<Applied, DbError> {
    let db = settings.shown();
    let sql = |e| DbError::sql(db, e);
    let mut client = get(settings, pool).await?;
    // A session lock, released before the client goes back to the pool: a transaction-level
    // lock would be taken after the transaction's snapshot of the catalog.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&APPLY_LOCK])
        .await
        .map_err(sql)?;
    let result = async {
        let s = quote_ident(settings.schema());
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.schema_version (
                     version    integer PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 );"
            ))
            .await
            .map_err(sql)?;
        let from = current_version(settings, &client).await?;
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(from as usize) {
            let version = i as i32 + 1;
            let tx = client.transaction().await.map_err(sql)?;
            tx.batch_execute(&migration.replace("{s}", &s))
                .await
                .map_err(sql)?;
            tx.execute(
                &format!("INSERT INTO {s}.schema_version (version) VALUES ($1)"),
                &[&version],
            )
            .await
            .map_err(sql)?;
            tx.commit().await.map_err(sql)?;
        }
        Ok(Applied {
            schema: settings.schema().to_string(),
            from,
            to: LATEST.max(from),
        })
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&APPLY_LOCK])
        .await;
    let applied = result?;
    unlock.map_err(sql)?;
    Ok(applied)
}

/// Fails unless the schema is at the version this build writes.
pub async fn check(settings: &DbSettings, pool: &Pool) -> Result<(), DbError> {
    let client = get(settings, pool).await?;
    let version = current_version(settings, &client).await?;
    if version < LATEST {
        return Err(DbError::Schema(format!(
            "database {}: schema '{}' is at version {version}, this warren needs {LATEST}: run `warren db apply`",
            settings.shown(),
            settings.schema()
        )));
    }
    Ok(())
}

/// The version, and each table's rows.
pub async fn status(settings: &DbSettings, pool: &Pool) -> Result<SchemaStatus, DbError> {
    let client = get(settings, pool).await?;
    let version = current_version(settings, &client).await?;
    let mut tables = Vec::new();
    if version > 0 {
        let s = quote_ident(settings.schema());
        for table in TABLES {
            let row = client
                .query_one(&format!("SELECT count(*) FROM {s}.{table}"), &[])
                .await
                .map_err(|e| DbError::sql(settings.shown(), e))?;
            tables.push(TableCount {
                table: table.to_string(),
                rows: row.get(0),
            });
        }
    }
    Ok(SchemaStatus {
        database: settings.shown().to_string(),
        schema: settings.schema().to_string(),
        version,
        latest: LATEST,
        tables,
    })
}

/// 0 when the schema or its version table does not exist.
async fn current_version(
    settings: &DbSettings,
    client: &tokio_postgres::Client,
) -> Result<i32, DbError> {
    let table = format!("{}.schema_version", quote_ident(settings.schema()));
    let row = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(|e| DbError::sql(settings.shown(), e))?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {table}"),
            &[],
        )
        .await
        .map_err(|e| DbError::sql(settings.shown(), e))?;
    Ok(row.get(0))
}

/// A pooled connection, or the pool's failure phrased for the operator.
pub async fn get(settings: &DbSettings, pool: &Pool) -> Result<deadpool_postgres::Object, DbError> {
    pool.get().await.map_err(|e| DbError::Pool {
        database: settings.shown().to_string(),
        reason: pool_reason(&e),
    })
}

fn pool_reason(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Timeout(_) => {
            "no connection within the pool's wait (pool exhausted or the database does not answer)"
                .to_string()
        }
        PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => format!("SQLSTATE {}: {}", db.code().code(), db.message()),
            None => format!("cannot connect: {e}"),
        },
        other => other.to_string(),
    }
}
