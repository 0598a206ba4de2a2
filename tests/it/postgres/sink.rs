//! The sink as a library: batches, duplicates, bad data, concurrency, natural keys.

use warren::postgres::sink::Written;
use warren::postgres::{DbSettings, EventRow, Fault, Sink};

use super::catalog;
use crate::support::pg::{CANARY, TestDb};

fn rows(events: &[warren_sim::catalog::SimEvent]) -> Vec<EventRow> {
    events
        .iter()
        .map(|e| EventRow::from(&warren::envelope::Envelope::parse(&e.frame).expect("valid")))
        .collect()
}

async fn sink(db: &TestDb, pool_size: usize) -> Sink {
    let settings = db.settings();
    let pool = settings.pool(pool_size).expect("pool");
    Sink::connect(settings, pool, "postgres")
        .await
        .expect("sink")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_each_event_once_and_a_second_write_skips_them() {
    let db = TestDb::new("sink_once").await;
    let sink = sink(&db, 1).await;
    let events = catalog(1, 60);
    let first = rows(&events[..50]);
    let out = sink.write(&first).await.expect("write");
    assert_eq!(
        (out.inserted(), out.duplicates(), out.rejected()),
        (50, 0, 0)
    );

    // A redelivery of the 50 with 10 new ones: only the new ones commit.
    let all = rows(&events);
    let out = sink.write(&all).await.expect("write again");
    assert_eq!(
        (out.inserted(), out.duplicates(), out.rejected()),
        (10, 50, 0)
    );
    assert_eq!(out.events[..50], vec![Written::Duplicate; 50][..]);
    assert_eq!(db.counts().await, super::expected_rows(&events));
    // The status check a stale redelivery gets: the inbox row says done.
    assert!(sink.is_done(&all[0].event_id).await.unwrap());
    assert!(
        !sink
            .is_done(&ulid::Ulid::generate().to_string())
            .await
            .unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_event_is_rejected_with_its_sql_error_and_its_neighbours_commit() {
    let db = TestDb::new("sink_bad").await;
    let sink = sink(&db, 1).await;
    let events = catalog(2, 40);
    let mut batch = rows(&events);
    // A candle whose open is not a number, and one with no pair (a NOT NULL column).
    let mut bad_type = batch[0].clone();
    bad_type.event_id = ulid::Ulid::generate().to_string();
    bad_type.event_type = "market.candle".into();
    bad_type.payload =
        r#"{"pair":"BTC-USD","open":"lots","high":1,"low":1,"close":1,"interval":"1m"}"#.into();
    let mut missing = bad_type.clone();
    missing.event_id = ulid::Ulid::generate().to_string();
    missing.payload = r#"{"open":1,"high":1,"low":1,"close":1,"interval":"1m"}"#.into();
    batch.insert(7, bad_type);
    batch.insert(20, missing);

    let out = sink
        .write(&batch)
        .await
        .expect("the batch commits without the bad events");
    assert_eq!((out.inserted(), out.rejected()), (40, 2));
    match (&out.events[7], &out.events[20]) {
        (Written::Rejected(a), Written::Rejected(b)) => {
            assert!(a.contains("SQLSTATE 22P02") && a.contains("lots"), "{a}");
            assert!(b.contains("SQLSTATE 23502") && b.contains("pair"), "{b}");
        }
        other => panic!("bad events not rejected: {other:?}"),
    }
    // Neither bad event left an inbox or events row: a fixed replay can still write it.
    assert_eq!(db.counts().await, super::expected_rows(&events));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_written_at_once_commit_each_event_once() {
    let db = TestDb::new("sink_race").await;
    let sink = sink(&db, 8).await;
    let events = catalog(3, 400);
    let all = rows(&events);
    // Eight writers, each a different overlapping slice in a different order.
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let sink = sink.clone();
        let mut batch: Vec<EventRow> = all.iter().skip(w * 25).take(200).cloned().collect();
        if w % 2 == 1 {
            batch.reverse();
        }
        tasks.push(tokio::spawn(async move { sink.write(&batch).await }));
    }
    let mut inserted = 0;
    for t in tasks {
        let out = t.await.unwrap().expect("no deadlock, no error");
        inserted += out.inserted();
    }
    let written = 175 + 200; // slices cover events 0..375
    assert_eq!(
        inserted, written,
        "each event inserted by exactly one writer"
    );
    assert_eq!(db.count("events").await, written as i64);
    assert_eq!(db.count("inbox").await, written as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_events_with_one_natural_key_keep_one_domain_row() {
    let db = TestDb::new("sink_natural").await;
    let sink = sink(&db, 1).await;
    let candle = |id: &str| {
        EventRow {
        event_id: id.to_string(),
        event_type: "market.candle".into(),
        agent_id: "pf_agent_books".into(),
        ts_ms: 1_760_000_060_000,
        payload: r#"{"pair":"ETH-USD","interval":"1m","open_time_ms":1760000000000,"open":1,"high":2,"low":0.5,"close":1.5,"volume":10}"#.into(),
    }
    };
    let (a, b) = (
        ulid::Ulid::generate().to_string(),
        ulid::Ulid::generate().to_string(),
    );
    let out = sink.write(&[candle(&a), candle(&b)]).await.expect("write");
    // Both events are recorded; the candle they both describe once.
    assert_eq!(
        (out.inserted(), out.rows_inserted, out.rows_skipped),
        (2, 1, 1)
    );
    assert_eq!(db.count("events").await, 2);
    assert_eq!(db.count("candles").await, 1);
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_and_never_shows_the_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://postgres:{CANARY}@127.0.0.1:{port}/postgres");
    let settings = DbSettings::parse(&url, "warren").unwrap();
    let pool = settings.pool(1).unwrap();
    let e = Sink::connect(settings, pool, "postgres").await.unwrap_err();
    assert_eq!(e.fault(), Fault::Unavailable, "{e}");
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains(CANARY), "{shown}");
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");
}
