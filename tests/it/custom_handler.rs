//! A handler written outside the crate, as a library user would, run by the library's
//! `worker::run` against the real broker: it is called for every event, its successes are
//! acked, and its permanent error is dead-lettered after one call.

use crate::support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{TestTopology, connect, eventually, queue_len};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use warren::amqp::{self, hdr};
use warren::envelope::Envelope;
use warren::worker::{
    self, Context, Handler, HandlerError, HandlerResult, WorkerMetrics, WorkerSettings,
};

/// Counts calls per event id; rejects events of type `test.reject`.
#[derive(Clone, Default)]
struct Tally {
    calls: Arc<Mutex<BTreeMap<String, u32>>>,
}

impl Tally {
    fn calls(&self) -> BTreeMap<String, u32> {
        self.calls.lock().unwrap().clone()
    }
}

impl Handler for Tally {
    fn name(&self) -> &str {
        "tally"
    }

    async fn handle(&self, event: &Envelope, _ctx: &Context) -> HandlerResult {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(event.event_id.clone())
            .or_default() += 1;
        if event.event_type == "test.reject" {
            return Err(HandlerError::permanent(format!(
                "tally: {} is not accepted",
                event.event_id
            )));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_handler_implemented_outside_the_crate_processes_events_and_dead_letters_rejections() {
    let t = TestTopology::fast("custom-handler");
    let conn = connect().await;
    t.apply(&conn).await;
    let fine = support::publish_events(&conn, &t, "test.fine", json!({"n": 1}), 5).await;
    let rejected = support::publish_events(&conn, &t, "test.reject", json!({}), 1).await;

    let tally = Tally::default();
    let shutdown = CancellationToken::new();
    let settings = WorkerSettings {
        url: support::url(),
        topology: t.topology.clone(),
        queues: vec!["work".into()],
        prefetch: None,
        concurrency: 4,
        drain_timeout: Duration::from_secs(5),
        handler_timeout: Duration::from_secs(10),
    };
    let worker = tokio::spawn(worker::run(
        settings,
        tally.clone(),
        Arc::new(WorkerMetrics::default()),
        shutdown.clone(),
    ));

    let dlq = format!("{}.dlq", t.queue("work"));
    eventually(
        Duration::from_secs(15),
        "every event handled, the rejection dead-lettered",
        || {
            let (conn, dlq, tally, want) = (&conn, &dlq, &tally, fine.len() + rejected.len());
            async move { tally.calls().len() == want && queue_len(conn, dlq).await == 1 }
        },
    )
    .await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(15), worker)
        .await
        .expect("the worker stops after shutdown")
        .expect("the worker task does not panic")
        .expect("the worker ends cleanly");

    let calls = tally.calls();
    for id in fine.iter().chain(&rejected) {
        assert_eq!(calls.get(id), Some(&1), "{id}: {calls:?}");
    }
    // The worker's connections are closed: anything it had not acked would be back here.
    assert_eq!(
        queue_len(&conn, &t.queue("work")).await,
        0,
        "every success was acked"
    );
    let dead = support::drain(&conn, &dlq).await;
    assert_eq!(dead.len(), 1);
    let p = &dead[0].properties;
    assert_eq!(p.message_id().as_ref().unwrap().as_str(), rejected[0]);
    assert_eq!(amqp::header_str(p, hdr::ERROR_KIND), Some("permanent"));
    assert_eq!(amqp::header_u32(p, hdr::ATTEMPT), 1);
    assert_eq!(
        amqp::header_str(p, hdr::ERROR),
        Some(format!("tally: {} is not accepted", rejected[0]).as_str())
    );
    assert_eq!(
        amqp::header_str(p, hdr::ORIGIN_QUEUE),
        Some(t.queue("work").as_str())
    );
    t.cleanup(&conn).await;
}
