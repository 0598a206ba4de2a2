//! The baseline: each scenario as a minimal loop over lapin's own API, with no warren code on
//! the message path. It is the one place outside `amqp/` that calls lapin, on purpose: it is
//! what warren is measured against. It does the same work per message as warren: parse the
//! JSON, dispatch on the type, check every confirm, ack every delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::scenarios::{count_depth, pace, properties, upstream_settings};
use super::{RUN_LIMIT, RunSpec, Scenario, Side, SideResult, Stamp, Tally, message_body, stats};
use warren::amqp::{AmqpUrl, hdr, identity, is_broker_death_header};
use warren::error::Error;
use warren::topology::Topology;

/// The error the raw retry loop records, as long as the one warren's failing bench handler
/// returns.
const ERROR_TEXT: &str = "bench: this scenario fails every call";

/// What the raw consumer reads of each body.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(rename = "type", borrow)]
    event_type: &'a str,
    #[serde(default)]
    payload: Option<Stamp>,
}

fn fail(what: &str) -> impl Fn(lapin::Error) -> Error + '_ {
    move |e| Error::Other(format!("raw {what}: {e}"))
}

/// Closes a connection, giving up after 5 s: lapin's close has no deadline of its own, and a
/// bench run once hung on one after its connection's I/O thread had gone.
async fn close(conn: &Connection) {
    let _ =
        tokio::time::timeout(Duration::from_secs(5), conn.close(200, "bench done".into())).await;
}

/// A confirm-mode channel on `conn`.
async fn publish_channel(conn: &Connection) -> Result<Channel, Error> {
    let ch = conn.create_channel().await.map_err(fail("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail("confirm.select"))?;
    Ok(ch)
}

/// Runs the raw side of `spec`.
pub async fn run(spec: &RunSpec, url: &AmqpUrl) -> Result<SideResult, Error> {
    let t = Topology::load(&spec.topology_file, &spec.prefix)?;
    let queue = t.queues[0].name.clone();
    let scenario = spec.scenario;
    let tally = Tally::new(spec.messages, scenario.has_latency());
    let cpu_before = stats::cpu_time();
    let name = format!("warren bench raw {}", std::process::id());
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = Connection::connect_uri(url.uri(), props)
        .await
        .map_err(fail("connect"))?;
    // The load generator of the pipeline scenarios publishes on a connection of its own, as
    // warren's side does: the driver costs the same on both sides, and only the consuming
    // loop under test differs.
    let driver = || async {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("warren bench raw driver {}", std::process::id()).into());
        Connection::connect_uri(url.uri(), props)
            .await
            .map_err(fail("connect"))
    };
    let outcome = match scenario {
        Scenario::Publish { window } => {
            let ch = publish_channel(&conn).await?;
            let cpu_before = stats::cpu_time();
            tally.start();
            publish_all(&ch, &t.events_exchange, spec, window, Some(&tally), None).await?;
            Ok(tally.result(Side::Raw, cpu_before))
        }
        Scenario::Consume { prefetch } => {
            let mut consumer = consume(&conn, &queue, prefetch, tally.clone(), None).await?;
            let waited = until_done(tally.wait(RUN_LIMIT, "raw consume"), &mut consumer).await;
            waited.map(|()| tally.result(Side::Raw, cpu_before))
        }
        Scenario::Saturation { .. } | Scenario::Latency { .. } => {
            let mut consumer =
                consume(&conn, &queue, scenario.prefetch(), tally.clone(), None).await?;
            let driver = driver().await?;
            let ch = publish_channel(&driver).await?;
            tally.start();
            let run = async {
                let window = scenario.window();
                publish_all(&ch, &t.events_exchange, spec, window, None, Some(&tally)).await?;
                tally.published();
                tally.wait(RUN_LIMIT, "raw pipeline").await
            };
            let waited = until_done(run, &mut consumer).await;
            close(&driver).await;
            waited.map(|()| tally.result(Side::Raw, cpu_before))
        }
        Scenario::Retry { .. } => {
            let spec0 = &t.queues[0];
            let delay = spec0.retry_delays.first().copied().unwrap_or_default();
            // Republishes go out on a connection of their own, as warren's do and as RabbitMQ
            // advises: a resource alarm blocks a connection that publishes, and acks sharing it
            // would stall with it. (Measured: it moves the raw loop's CPU per message by under
            // 5%.) The dead-letter count is watched on the driver's connection, as warren's is.
            let republisher = driver().await?;
            let retry = Retry {
                channel: publish_channel(&republisher).await?,
                retry_queue: spec0.retry_queue(delay),
                dead_letter_exchange: t.dead_letter_exchange.clone(),
                queue: queue.clone(),
            };
            let mut consumer = consume(
                &conn,
                &queue,
                scenario.prefetch(),
                tally.clone(),
                Some(Arc::new(retry)),
            )
            .await?;
            let driver = driver().await?;
            let ch = publish_channel(&driver).await?;
            tally.start();
            let run = async {
                let window = scenario.window();
                publish_all(&ch, &t.events_exchange, spec, window, None, None).await?;
                count_depth(&driver, &spec0.dlq(), &tally).await
            };
            let waited = until_done(run, &mut consumer).await;
            close(&driver).await;
            close(&republisher).await;
            waited.map(|()| tally.result(Side::Raw, cpu_before))
        }
        Scenario::EndToEnd => {
            let mut consumer =
                consume(&conn, &queue, scenario.prefetch(), tally.clone(), None).await?;
            let driver = driver().await?;
            let ch = publish_channel(&driver).await?;
            tally.start();
            let forwarder = forward(spec, ch, t.events_exchange.clone());
            let run = async {
                tokio::select! {
                    w = tally.wait(RUN_LIMIT, "raw e2e") => w,
                    f = forwarder => f.and_then(|()| Err(Error::Other("raw e2e: the upstream ended early".into()))),
                }
            };
            let waited = until_done(run, &mut consumer).await;
            close(&driver).await;
            waited.map(|()| tally.result(Side::Raw, cpu_before))
        }
        Scenario::Lanes { .. } => Err(crate::lanes_in_parent()),
    };
    close(&conn).await;
    outcome
}

/// The retry loop's publish targets: the queue's first retry tier, then its dead letters.
struct Retry {
    channel: Channel,
    retry_queue: String,
    dead_letter_exchange: String,
    queue: String,
}

/// Publishes with confirms, at most `window` unconfirmed; counts confirms into `confirms`.
/// With `handled`, each publish first waits for the scenario's in-flight bound.
async fn publish_all(
    ch: &Channel,
    exchange: &str,
    spec: &RunSpec,
    window: usize,
    confirms: Option<&Tally>,
    handled: Option<&Tally>,
) -> Result<(), Error> {
    let mut pending = FuturesOrdered::new();
    let settle = |(sent, r): (u64, lapin::Result<Confirmation>)| -> Result<(), Error> {
        match r.map_err(fail("confirm"))? {
            Confirmation::Ack(None) => {}
            other => return Err(Error::Other(format!("raw publish: {other:?}"))),
        }
        if let Some(t) = confirms {
            t.hit(sent);
        }
        Ok(())
    };
    let start = Instant::now();
    let max_in_flight = spec.scenario.max_in_flight();
    for i in 0..spec.messages {
        pace(start, i, spec.rate).await;
        if let Some(t) = handled {
            t.admit(i, max_in_flight).await;
        }
        while let Some(Some(done)) = pending.next().now_or_never() {
            settle(done)?;
        }
        if pending.len() >= window.max(1)
            && let Some(done) = pending.next().await
        {
            settle(done)?;
        }
        let sent = stats::now_us();
        let body = message_body(spec.size, sent);
        let confirm = ch
            .basic_publish(
                exchange.into(),
                super::EVENT_TYPE.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &body,
                properties(),
            )
            .await
            .map_err(fail("publish"))?;
        pending.push_back(confirm.map(move |r| (sent, r)));
    }
    while let Some(done) = pending.next().await {
        settle(done)?;
    }
    Ok(())
}

/// Consumes `queue` on a task: parse, dispatch, count, ack. With `retry`, each message is
/// instead republished (retry tier, then dead letters) with a confirm, then acked.
async fn consume(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    tally: Arc<Tally>,
    retry: Option<Arc<Retry>>,
) -> Result<tokio::task::JoinHandle<String>, Error> {
    let ch = conn.create_channel().await.map_err(fail("channel"))?;
    ch.basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(fail("qos"))?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(fail("consume"))?;
    Ok(tokio::spawn(async move {
        let _channel = ch;
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => return format!("raw consumer: {e}"),
            };
            let Ok(event) = serde_json::from_slice::<Event<'_>>(&delivery.data) else {
                let _ = delivery.ack(BasicAckOptions::default()).await;
                continue;
            };
            let sent = dispatch(&event);
            match &retry {
                None => {
                    tally.hit(sent);
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Some(retry) => {
                    let retry = retry.clone();
                    let tally = tally.clone();
                    tokio::spawn(async move {
                        let started = Instant::now();
                        republish(&retry, delivery).await;
                        tally.settled(started.elapsed(), 1);
                    });
                }
            }
        }
        "raw consumer: the consumer was cancelled".to_string()
    }))
}

/// Waits for `done`, unless the consumer stops first (its connection or channel died): then
/// fails at once with the reason instead of waiting out the run limit.
async fn until_done(
    done: impl std::future::Future<Output = Result<(), Error>>,
    consumer: &mut tokio::task::JoinHandle<String>,
) -> Result<(), Error> {
    let result = tokio::select! {
        r = done => r,
        ended = &mut *consumer => Err(Error::Other(ended.unwrap_or_else(|e| e.to_string()))),
    };
    consumer.abort();
    result
}

/// The same trivial dispatch on type the warren handler and the Python peer do.
fn dispatch(event: &Event<'_>) -> u64 {
    let stamp = event.payload.as_ref().map(|s| s.sent_us).unwrap_or(0);
    match event.event_type.split_once('.') {
        Some(("market" | "bench", _)) => stamp,
        Some((_, _)) => stamp,
        None => 0,
    }
}

/// First failure: to the retry tier. Second: to the dead-letter exchange. Then ack. A failed
/// republish leaves the delivery unacked; the broker redelivers it when the channel closes
/// (the bench run has failed by then).
///
/// Each copy carries the failure headers of the wire contract, as warren's do (attempt, origin
/// queue, error kind and text, first and last failure time, worker), over the delivery's own
/// headers minus the broker's `x-death` family: the broker stores, routes and redelivers
/// those bytes on both sides, so only the client code differs. The values are built here
/// with lapin's types alone.
async fn republish(retry: &Retry, delivery: lapin::message::Delivery) {
    let mut headers: std::collections::BTreeMap<lapin::types::ShortString, AMQPValue> = delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter(|(k, _)| !is_broker_death_header(k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let first = !headers.contains_key(hdr::ATTEMPT);
    let (exchange, key, kind, attempt, error) = if first {
        (
            "",
            retry.retry_queue.as_str(),
            "transient",
            1,
            ERROR_TEXT.into(),
        )
    } else {
        (
            retry.dead_letter_exchange.as_str(),
            retry.queue.as_str(),
            "exhausted",
            2,
            format!("{ERROR_TEXT} (after 2 attempts)"),
        )
    };
    let now = AMQPValue::LongString(
        humantime::format_rfc3339_millis(std::time::SystemTime::now())
            .to_string()
            .into(),
    );
    let text = |s: &str| AMQPValue::LongString(s.into());
    headers
        .entry(hdr::FIRST_FAILED_AT.into())
        .or_insert_with(|| now.clone());
    headers.insert(hdr::LAST_FAILED_AT.into(), now);
    headers.insert(hdr::ATTEMPT.into(), AMQPValue::LongLongInt(attempt));
    headers.insert(hdr::ORIGIN_QUEUE.into(), text(&retry.queue));
    headers.insert(hdr::ERROR_KIND.into(), text(kind));
    headers.insert(hdr::ERROR.into(), text(&error));
    headers.insert(hdr::WORKER.into(), text(identity()));
    let confirm = retry
        .channel
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &delivery.data,
            properties().with_headers(FieldTable::from(headers)),
        )
        .await;
    if let Ok(confirm) = confirm
        && let Ok(Confirmation::Ack(None)) = confirm.await
    {
        let _ = delivery.ack(BasicAckOptions::default()).await;
    }
}

/// Reads the simulated upstream and publishes each event with confirms, window 256.
async fn forward(spec: &RunSpec, ch: Channel, exchange: String) -> Result<(), Error> {
    let (Some(ws), Some(resume)) = (&spec.upstream, &spec.resume_from) else {
        return Err(Error::Usage("raw e2e: no upstream given".into()));
    };
    let resume = ulid::Ulid::from_string(resume)
        .map_err(|e| Error::Usage(format!("raw e2e: resume cursor: {e}")))?;
    let mut stream = warren::bridge::upstream::connect(
        &upstream_settings(ws),
        Some(resume),
        Duration::from_secs(10),
    )
    .await
    .map_err(|e| Error::Other(format!("raw e2e: {e}")))?;
    let mut pending = FuturesOrdered::new();
    while let Some(frame) = stream.next().await {
        let frame = frame.map_err(|e| Error::Other(format!("raw e2e: upstream: {e}")))?;
        let WsMessage::Text(text) = frame else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Event<'_>>(text.as_str()) else {
            continue;
        };
        if pending.len() >= super::PIPELINE_WINDOW
            && let Some(r) = pending.next().await
        {
            check(r)?;
        }
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                event.event_type.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                text.as_bytes(),
                properties(),
            )
            .await
            .map_err(fail("publish"))?;
        pending.push_back(confirm);
    }
    while let Some(r) = pending.next().await {
        check(r)?;
    }
    Ok(())
}

fn check(r: lapin::Result<Confirmation>) -> Result<(), Error> {
    match r.map_err(fail("confirm"))? {
        Confirmation::Ack(None) => Ok(()),
        other => Err(Error::Other(format!("raw publish: {other:?}"))),
    }
}

/// The bridge benchmark's baseline ([`crate::bridge::bench`]): publishes prepared messages
/// (routing key, body, properties) to `exchange`, `mandatory`, on a fresh connection and
/// channel with confirms, at most `window` unconfirmed, through lapin's API alone. Every
/// confirm must be a plain ack. Returns the time from the first publish to the last confirm.
pub async fn publish_prepared(
    url: &AmqpUrl,
    exchange: &str,
    messages: &[(String, Vec<u8>, lapin::BasicProperties)],
    window: usize,
) -> Result<Duration, Error> {
    let name = format!("warren bench raw {}", std::process::id());
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = Connection::connect_uri(url.uri(), props)
        .await
        .map_err(fail("connect"))?;
    let ch = conn.create_channel().await.map_err(fail("channel"))?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(fail("confirm.select"))?;
    let mut pending = FuturesOrdered::new();
    let started = Instant::now();
    for (routing_key, body, properties) in messages {
        while let Some(Some(r)) = pending.next().now_or_never() {
            check(r)?;
        }
        if pending.len() >= window.max(1)
            && let Some(r) = pending.next().await
        {
            check(r)?;
        }
        let confirm = ch
            .basic_publish(
                exchange.into(),
                routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties.clone(),
            )
            .await
            .map_err(fail("publish"))?;
        pending.push_back(confirm);
    }
    while let Some(r) = pending.next().await {
        check(r)?;
    }
    let took = started.elapsed();
    close(&conn).await;
    Ok(took)
}
