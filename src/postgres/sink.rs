//! Writes batches of events exactly once: one statement claims each event's inbox row and, for
//! the events it claimed, inserts the event and its domain rows; one transaction per batch.
//!
//! A batch the database rejects for one event's data is written again event by event, each
//! under a savepoint, so only the events whose own data fails are rejected and their neighbours
//! commit.

use deadpool_postgres::Pool;
use tokio_postgres::types::ToSql;

use super::error::Fault;
use super::{DbError, DbSettings, quote_ident, schema};
use crate::envelope::Envelope;

/// One event as the sink stores it.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The eventId.
    pub event_id: String,
    /// The event type.
    pub event_type: String,
    /// The agentId.
    pub agent_id: String,
    /// Milliseconds since the epoch.
    pub ts_ms: i64,
    /// The payload, as JSON text.
    pub payload: String,
}

impl From<&Envelope> for EventRow {
    fn from(e: &Envelope) -> Self {
        Self {
            event_id: e.event_id.clone(),
            event_type: e.event_type.clone(),
            agent_id: e.agent_id.clone(),
            ts_ms: i64::try_from(e.ts).unwrap_or(i64::MAX),
            payload: e.payload.get().to_string(),
        }
    }
}

/// What became of one event of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Its rows were committed now.
    Inserted,
    /// Its inbox row already existed: committed earlier (a redelivery, replay or duplicate).
    Duplicate,
    /// Its own data cannot be stored: the database's error, with SQLSTATE.
    Rejected(String),
}

/// What a committed batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Per event, in the order given.
    pub events: Vec<Written>,
    /// Domain rows inserted.
    pub rows_inserted: u64,
    /// Domain rows skipped because a row with the same natural key existed (distinct events
    /// describing the same thing, like a candle sent twice).
    pub rows_skipped: u64,
}

impl BatchOutcome {
    /// Events committed now.
    pub fn inserted(&self) -> usize {
        self.count(|w| *w == Written::Inserted)
    }

    /// Events skipped as already committed.
    pub fn duplicates(&self) -> usize {
        self.count(|w| *w == Written::Duplicate)
    }

    /// Events rejected for their data.
    pub fn rejected(&self) -> usize {
        self.count(|w| matches!(w, Written::Rejected(_)))
    }

    fn count(&self, f: impl Fn(&Written) -> bool) -> usize {
        self.events.iter().filter(|w| f(w)).count()
    }
}

/// Writes batches into warren's tables under one handler name (the inbox's second column).
#[derive(Debug, Clone)]
pub struct Sink {
    settings: DbSettings,
    pool: Pool,
    handler: String,
    sql: String,
}

impl Sink {
    /// A sink over `pool` for `handler`; checks that the schema is applied.
    pub async fn connect(settings: DbSettings, pool: Pool, handler: &str) -> Result<Self, DbError> {
        schema::check(&settings, &pool).await?;
        let sql = batch_sql(&quote_ident(settings.schema()));
        Ok(Self {
            settings,
            pool,
            handler: handler.to_string(),
            sql,
        })
    }

    /// The redacted database URL.
    pub fn database(&self) -> &str {
        self.settings.shown()
    }

    /// Whether the event's inbox row exists: its rows were committed.
    pub async fn is_done(&self, event_id: &str) -> Result<bool, DbError> {
        let client = schema::get(&self.settings, &self.pool).await?;
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.inbox WHERE event_id = $1 AND handler = $2)",
            quote_ident(self.settings.schema())
        );
        let row = client
            .query_one(&sql, &[&event_id, &self.handler])
            .await
            .map_err(|e| DbError::sql(self.settings.shown(), e))?;
        Ok(row.get(0))
    }

    /// Writes `events` (distinct eventIds) in one transaction; `Err` means nothing committed
    /// (or, for a lost connection during commit, nothing known: a retry is safe either way).
    pub async fn write(&self, events: &[EventRow]) -> Result<BatchOutcome, DbError> {
        let db = self.settings.shown();
        let sql = |e| DbError::sql(db, e);
        let mut client = schema::get(&self.settings, &self.pool).await?;
        let statement = client.prepare_cached(&self.sql).await.map_err(sql)?;
        // Rows locked in one order by every writer: two batches never wait on each other in a cycle.
        let mut order: Vec<usize> = (0..events.len()).collect();
        order.sort_by(|&a, &b| events[a].event_id.cmp(&events[b].event_id));
        let sorted: Vec<&EventRow> = order.iter().map(|&i| &events[i]).collect();

        let tx = client.transaction().await.map_err(sql)?;
        match run(&tx, &statement, &sorted, &self.handler).await {
            Ok(out) => {
                tx.commit().await.map_err(sql)?;
                Ok(in_callers_order(out, events))
            }
            Err(e) if super::error::classify(&e) == Fault::Permanent && events.len() > 1 => {
                drop(tx);
                self.write_one_by_one(&mut client, &statement, &sorted, events)
                    .await
            }
            Err(e) => Err(sql(e)),
        }
    }

    /// The fallback after a data error: each event under its own savepoint.
    async fn write_one_by_one(
        &self,
        client: &mut deadpool_postgres::Object,
        statement: &tokio_postgres::Statement,
        sorted: &[&EventRow],
        events: &[EventRow],
    ) -> Result<BatchOutcome, DbError> {
        let db = self.settings.shown();
        let sql = |e| DbError::sql(db, e);
        let mut tx = client.transaction().await.map_err(sql)?;
        let mut total = RunOutput::default();
        for event in sorted {
            let sp = tx.savepoint("warren_event").await.map_err(sql)?;
            match run(&sp, statement, &[event], &self.handler).await {
                Ok(out) => {
                    sp.commit().await.map_err(sql)?;
                    total.claimed.extend(out.claimed);
                    total.rows_inserted += out.rows_inserted;
                    total.rows_expected += out.rows_expected;
                }
                Err(e) if super::error::classify(&e) == Fault::Permanent => {
                    sp.rollback().await.map_err(sql)?;
                    let message = DbError::sql(db, e).sql_message();
                    total.rejected.push((event.event_id.clone(), message));
                }
                Err(e) => return Err(sql(e)),
            }
        }
        tx.commit().await.map_err(sql)?;
        Ok(in_callers_order(total, events))
    }
}

#[derive(Debug, Default)]
struct RunOutput {
    claimed: Vec<String>,
    rejected: Vec<(String, String)>,
    rows_inserted: i64,
    rows_expected: i64,
}

async fn run<C: deadpool_postgres::GenericClient>(
    client: &C,
    statement: &tokio_postgres::Statement,
    events: &[&EventRow],
    handler: &str,
) -> Result<RunOutput, tokio_postgres::Error> {
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let agents: Vec<&str> = events.iter().map(|e| e.agent_id.as_str()).collect();
    let ts: Vec<i64> = events.iter().map(|e| e.ts_ms).collect();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    let params: [&(dyn ToSql + Sync); 6] = [&ids, &types, &agents, &ts, &payloads, &handler];
    let row = client.query_one(statement, &params).await?;
    Ok(RunOutput {
        claimed: row.get(0),
        rejected: Vec::new(),
        rows_inserted: row.get(1),
        rows_expected: row.get(2),
    })
}

/// Per-event results in the caller's order.
fn in_callers_order(out: RunOutput, events: &[EventRow]) -> BatchOutcome {
    let claimed: std::collections::HashSet<&str> = out.claimed.iter().map(String::as_str).collect();
    let rejected: std::collections::HashMap<&str, &str> = out
        .rejected
        .iter()
        .map(|(id, m)| (id.as_str(), m.as_str()))
        .collect();
    let events = events
        .iter()
        .map(|e| {
            if let Some(m) = rejected.get(e.event_id.as_str()) {
                Written::Rejected((*m).to_string())
            } else if claimed.contains(e.event_id.as_str()) {
                Written::Inserted
            } else {
                Written::Duplicate
            }
        })
        .collect();
    BatchOutcome {
        events,
        rows_inserted: out.rows_inserted.max(0) as u64,
        rows_skipped: (out.rows_expected - out.rows_inserted).max(0) as u64,
    }
}

/// The one statement a batch runs, for the schema `s` (quoted). `$1..$5` are the events' columns
/// as arrays (eventId, type, agentId, ts in ms, payload JSON), `$6` the handler. Public for the
/// benchmark's raw baseline, which runs the same statement.
/// Data-modifying CTEs all run, in one snapshot; only events whose inbox row is new get rows.
pub fn batch_sql(s: &str) -> String {
    format!(
        r#"WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
        AS t(event_id, type, agent_id, ts_ms, payload)
), claimed AS (
    INSERT INTO {s}.inbox (event_id, handler)
    SELECT event_id, $6::text FROM input
    ON CONFLICT DO NOTHING
    RETURNING event_id
), fresh AS (
    SELECT i.event_id, i.type, i.agent_id, i.ts_ms, to_timestamp(i.ts_ms / 1000.0) AS ts,
           i.payload::jsonb AS p
    FROM input i JOIN claimed c USING (event_id)
), ev AS (
    INSERT INTO {s}.events (event_id, type, agent_id, ts, payload)
    SELECT event_id, type, agent_id, ts, p FROM fresh
    ON CONFLICT DO NOTHING
    RETURNING 1
), candles AS (
    INSERT INTO {s}.candles (pair, interval, open_time, open, high, low, close, volume, event_id)
    SELECT p->>'pair', coalesce(p->>'interval', ''),
           to_timestamp(coalesce((p->>'open_time_ms')::bigint, ts_ms) / 1000.0),
           (p->>'open')::numeric, (p->>'high')::numeric, (p->>'low')::numeric,
           (p->>'close')::numeric, (p->>'volume')::numeric, event_id
    FROM fresh WHERE type = 'market.candle'
    ON CONFLICT DO NOTHING
    RETURNING 1
), balances AS (
    INSERT INTO {s}.balance_changes (event_id, agent_id, ts, new_balance_usdc, delta_usdc, reason)
    SELECT event_id, agent_id, ts, (p->>'new_balance_usdc')::numeric, (p->>'delta_usdc')::numeric,
           p->>'reason'
    FROM fresh WHERE type = 'wallet.balance_changed'
    ON CONFLICT DO NOTHING
    RETURNING 1
), escrows AS (
    INSERT INTO {s}.escrow_events (escrow_id, type, agent_id, ts, amount_usdc, counterparty, reason, event_id)
    SELECT p->>'escrow_id', type, agent_id, ts, (p->>'amount_usdc')::numeric, p->>'counterparty',
           p->>'reason', event_id
    FROM fresh WHERE type LIKE 'escrow.%'
    ON CONFLICT DO NOTHING
    RETURNING 1
), jobs AS (
    INSERT INTO {s}.job_results (job_id, type, agent_id, ts, result_hash, delivery_uri, error, event_id)
    SELECT p->>'job_id', type, agent_id, ts, p->>'result_hash', p->>'delivery_uri', p->>'error',
           event_id
    FROM fresh WHERE type LIKE 'job.%'
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT array(SELECT event_id FROM claimed),
       (SELECT count(*) FROM candles) + (SELECT count(*) FROM balances)
           + (SELECT count(*) FROM escrows) + (SELECT count(*) FROM jobs),
       (SELECT count(*) FROM fresh WHERE type IN ('market.candle', 'wallet.balance_changed')
           OR type LIKE 'escrow.%' OR type LIKE 'job.%')"#
    )
}
