//! `warren sim upstream` on a real socket: the bearer handshake, topic filtering, replay after
//! `resumeFrom`, and a stream that is the same for the same seed and start time.

use std::time::Duration;

use crate::support::bridge::{AGENT_KEY, Sim};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use warren::envelope::Envelope;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(sim: &Sim, topics: &[&str], resume_from: &str) -> Ws {
    let mut req = sim.url().into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {AGENT_KEY}").parse().unwrap(),
    );
    req.headers_mut()
        .insert("x-agent-id", "pf_agent_test".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("handshake");
    let sub =
        serde_json::json!({"action": "subscribe", "resumeFrom": resume_from, "topics": topics});
    ws.send(Message::text(sub.to_string())).await.unwrap();
    ws
}

/// Text frames until none arrives for `quiet`.
async fn frames(ws: &mut Ws, quiet: Duration) -> Vec<String> {
    let mut out = vec![];
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(quiet, ws.next()).await {
        if let Message::Text(t) = msg {
            out.push(t.to_string());
        }
    }
    out
}

fn field(frame: &str, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    v[name].as_str().unwrap().to_string()
}

#[tokio::test]
async fn handshake_topics_replay_and_determinism() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--events",
        "60",
        "--rate",
        "2000",
        "--seed",
        "4",
        "--start-ms",
        "1741344000000",
    ];
    let a = Sim::spawn(dir.path(), "a", &args);

    // No bearer key: 401.
    match tokio_tungstenite::connect_async(a.url()).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }

    // The first subscriber starts the stream and sees all of it, in eventId order.
    let mut ws = subscribe(&a, &["market.*", "wallet.*", "escrow.*", "job.*"], "").await;
    let all = frames(&mut ws, Duration::from_millis(700)).await;
    assert_eq!(all.len(), 60);
    let ids: Vec<String> = all.iter().map(|f| field(f, "eventId")).collect();
    assert_eq!(
        ids,
        a.ledger().ids,
        "the ledger lists what was emitted, in order"
    );
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    // Resume after the 20th event, two topics only: exactly the rest of those types.
    let mut ws = subscribe(&a, &["market.*", "job.failed"], &ids[19]).await;
    let replay = frames(&mut ws, Duration::from_millis(500)).await;
    let want: Vec<&String> = all[20..]
        .iter()
        .filter(|f| {
            let t = field(f, "type");
            t.starts_with("market.") || t == "job.failed"
        })
        .collect();
    assert!(!want.is_empty());
    assert_eq!(replay.iter().collect::<Vec<_>>(), want);

    // A bad subscribe is refused with a reason naming the field.
    let mut ws = subscribe(&a, &["market.#"], "").await;
    match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => {
            assert!(frame.reason.contains("topics"), "{frame:?}")
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // Same seed and start: the same stream byte for byte; another seed: another stream.
    let b = Sim::spawn(dir.path(), "b", &args);
    let mut ws = subscribe(&b, &["market.*", "wallet.*", "escrow.*", "job.*"], "").await;
    assert_eq!(frames(&mut ws, Duration::from_millis(700)).await, all);
    let other = [
        "--events",
        "60",
        "--rate",
        "2000",
        "--seed",
        "5",
        "--start-ms",
        "1741344000000",
    ];
    let c = Sim::spawn(dir.path(), "c", &other);
    let mut ws = subscribe(&c, &["market.*", "wallet.*", "escrow.*", "job.*"], "").await;
    assert_ne!(frames(&mut ws, Duration::from_millis(700)).await, all);
}

/// The sim's malformed frames are what they claim, as warren's own parser sees them.
#[test]
fn malformed_frames_are_what_they_claim() {
    for kind in warren_sim::upstream::MalformedKind::ALL {
        match kind.frame(1) {
            Message::Text(t) => assert!(Envelope::parse(t.as_bytes()).is_err(), "{kind:?}"),
            Message::Binary(_) => assert_eq!(kind, warren_sim::upstream::MalformedKind::Binary),
            Message::Frame(f) => {
                assert_eq!(kind, warren_sim::upstream::MalformedKind::InvalidUtf8);
                assert!(std::str::from_utf8(f.payload()).is_err());
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Every catalog event parses as a warren envelope and carries its type's payload fields.
#[test]
fn every_type_appears_with_the_seeds_payload_fields() {
    let fields: &[(&str, &[&str])] = &[
        ("market.tick", &["pair", "price", "timestamp_ms"]),
        (
            "market.candle",
            &["pair", "open", "high", "low", "close", "volume", "interval"],
        ),
        (
            "wallet.balance_changed",
            &["new_balance_usdc", "delta_usdc", "reason"],
        ),
        ("wallet.low_balance", &["balance_usdc", "threshold_usdc"]),
        (
            "escrow.released",
            &["escrow_id", "amount_usdc", "counterparty"],
        ),
        ("escrow.disputed", &["escrow_id", "reason"]),
        ("job.completed", &["job_id", "result_hash", "delivery_uri"]),
        ("job.failed", &["job_id", "error"]),
    ];
    let mut cat = warren_sim::catalog::Catalog::new(1, 1_741_344_000_000, 0, "pf_agent_sim");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        let e = cat.next_event();
        let env = Envelope::parse(&e.frame).expect("the sim emits valid envelopes");
        assert_eq!(env.event_type, e.event_type);
        assert_eq!(env.event_id, e.id.to_string());
        let payload: serde_json::Value = env.payload_as().unwrap();
        let (_, want) = fields.iter().find(|(t, _)| *t == e.event_type).unwrap();
        for f in *want {
            assert!(
                payload.get(f).is_some(),
                "{} lacks {f}: {payload}",
                e.event_type
            );
        }
        seen.insert(e.event_type);
    }
    assert_eq!(seen.len(), warren_sim::catalog::EVENT_TYPES.len());
}
