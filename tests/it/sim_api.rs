//! `warren sim api` over real sockets: idempotency semantics (replay, mismatch, in flight),
//! status checks, the ledger, seeded faults and their per-key cap, auth, and the CLI.

use crate::support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::downstream::Sim;
use serde_json::{Value, json};

use warren_sim::api::{ApiSettings, FaultRates};

fn client() -> reqwest::Client {
    support::downstream::http_client(Duration::from_secs(10))
}

async fn post(sim: &Sim, path: &str, key: Option<&str>, body: &Value) -> (u16, Value, bool) {
    let mut req = sim.http().post(sim.url(path)).json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let r = req.send().await.expect("sim reachable");
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    (status, r.json().await.unwrap_or(Value::Null), replayed)
}

async fn operation(sim: &Sim, key: &str) -> (u16, Value) {
    let r = sim
        .http()
        .get(sim.url(&format!("/operations/{key}")))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn open_body(pair: &str) -> Value {
    json!({"pair": pair, "direction": "long", "size_usdc": 50.0, "leverage": 3})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_same_body_replays_the_stored_response() {
    let sim = Sim::start(ApiSettings::default()).await;
    let (s1, b1, r1) = post(&sim, "/trade/open", Some("k-open"), &open_body("BTC-USD")).await;
    let (s2, b2, r2) = post(&sim, "/trade/open", Some("k-open"), &open_body("BTC-USD")).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(b1, b2, "the replay returns the stored body");
    assert!(!r1 && r2, "only the second answer is a replay");
    assert!(b1["position_id"].as_str().unwrap().starts_with("pos_"));

    let ledger = sim.ledger().await;
    assert_eq!(ledger.effects, 1);
    assert_eq!(sim.effects().await, 1, "/stats agrees");
    let k = &ledger.keys[0];
    assert_eq!((k.effects, k.posts, k.path.as_str()), (1, 2, "/trade/open"));

    let (status, op) = operation(&sim, "k-open").await;
    assert_eq!(status, 200);
    assert_eq!(op["state"], "committed");
    assert_eq!(op["body"], b1);
    assert_eq!(operation(&sim, "never-used").await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_different_body_is_422_and_changes_nothing() {
    let sim = Sim::start(ApiSettings::default()).await;
    assert_eq!(
        post(&sim, "/trade/open", Some("k"), &open_body("BTC-USD"))
            .await
            .0,
        200
    );
    let (status, body, _) = post(&sim, "/trade/open", Some("k"), &open_body("ETH-USD")).await;
    assert_eq!(status, 422, "{body}");
    // The same key on another endpoint is a different request too.
    assert_eq!(
        post(&sim, "/events", Some("k"), &json!({"a": 1})).await.0,
        422
    );
    assert_eq!(sim.ledger().await.effects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_flight_gets_409_and_its_status_says_in_flight() {
    let sim = Sim::start(ApiSettings {
        latency: Duration::from_millis(600),
        ..Default::default()
    })
    .await;
    let body = open_body("BTC-USD");
    let first = tokio::spawn({
        let url = sim.url("/trade/open");
        let body = body.clone();
        async move {
            client()
                .post(url)
                .header("Idempotency-Key", "k")
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (second, _, _) = post(&sim, "/trade/open", Some("k"), &body).await;
    assert_eq!(second, 409);
    let (status, op) = operation(&sim, "k").await;
    assert_eq!((status, op["state"].as_str()), (409, Some("in_flight")));
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(operation(&sim, "k").await.0, 200);
    assert_eq!(sim.ledger().await.effects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_and_name_what_is_wrong() {
    let sim = Sim::start(ApiSettings::default()).await;
    let (status, body, _) = post(&sim, "/trade/open", None, &open_body("BTC-USD")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{body}"
    );
    let (status, body, _) = post(
        &sim,
        "/trade/open",
        Some("k"),
        &json!({"pair": "X", "direction": "up", "size_usdc": 1, "leverage": 2}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("direction"),
        "{body}"
    );
    // A failed request stores nothing: the key is still free.
    assert_eq!(
        post(&sim, "/trade/open", Some("k"), &open_body("X"))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_close_and_a_second_close_of_the_same_position() {
    let sim = Sim::start(ApiSettings::default()).await;
    let (_, opened, _) = post(&sim, "/trade/open", Some("o"), &open_body("BTC-USD")).await;
    let close = json!({"position_id": opened["position_id"]});
    let (s, closed, _) = post(&sim, "/trade/close", Some("c1"), &close).await;
    assert_eq!(s, 200);
    assert!(closed["realised_pnl_usdc"].is_number());
    // The same close again is a replay; a new close of a closed position is refused.
    assert_eq!(
        post(&sim, "/trade/close", Some("c1"), &close).await.1,
        closed
    );
    let (s, err, _) = post(&sim, "/trade/close", Some("c2"), &close).await;
    assert_eq!(s, 422);
    assert!(err["error"].as_str().unwrap().contains("not open"));
    let (s, esc, _) = post(
        &sim,
        "/escrow/create",
        Some("e"),
        &json!({"amount_usdc": 10}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(esc["escrow_id"].is_string());
    assert_eq!(sim.ledger().await.effects, 3);
}

/// Statuses of `keys × tries` POSTs to /events on a sim with `seed`.
async fn fault_run(seed: u64, keys: usize, tries: usize) -> Vec<u16> {
    let sim = Sim::start(ApiSettings {
        seed,
        rates: FaultRates {
            fail: 0.25,
            throttle: 0.25,
            ambiguous: 0.25,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let mut out = vec![];
    for k in 0..keys {
        for _ in 0..tries {
            out.push(
                post(&sim, "/events", Some(&format!("key-{k}")), &json!({"k": k}))
                    .await
                    .0,
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_repeat_with_the_seed_and_stop_after_the_cap() {
    let a = fault_run(11, 30, 4).await;
    assert_eq!(a, fault_run(11, 30, 4).await, "same seed, same faults");
    assert_ne!(a, fault_run(12, 30, 4).await, "another seed, other faults");
    for s in [500, 429, 504, 200] {
        assert!(a.contains(&s), "{s} in {a:?}");
    }
    // The 4th request of every key is past the cap of 3: never faulted.
    for k in a.chunks(4) {
        assert_eq!(k[3], 200, "{k:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_carry_retry_after_and_do_nothing() {
    let sim = Sim::start(ApiSettings {
        rates: FaultRates {
            throttle: 1.0,
            ..Default::default()
        },
        retry_after: Duration::from_secs(2),
        max_faults_per_key: 1,
        ..Default::default()
    })
    .await;
    let r = client()
        .post(sim.url("/events"))
        .header("Idempotency-Key", "k")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(sim.ledger().await.effects, 0);
    assert_eq!(post(&sim, "/events", Some("k"), &json!({})).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_faults_commit_before_answering_504_or_hanging() {
    let sim = Sim::start(ApiSettings {
        rates: FaultRates {
            ambiguous: 1.0,
            ..Default::default()
        },
        hang: Duration::from_secs(5),
        max_faults_per_key: 1,
        ..Default::default()
    })
    .await;
    let impatient = support::downstream::http_client(Duration::from_millis(300));
    let (mut answered, mut hung) = (0, 0);
    for k in 0..12 {
        let key = format!("k{k}");
        let r = impatient
            .post(sim.url("/events"))
            .header("Idempotency-Key", &key)
            .json(&json!({"k": k}))
            .send()
            .await;
        match r {
            Ok(r) => {
                assert_eq!(r.status().as_u16(), 504);
                answered += 1;
            }
            Err(e) => {
                assert!(e.is_timeout(), "{e}");
                hung += 1;
            }
        }
        // Either way the effect is committed, and the status check says so.
        assert_eq!(operation(&sim, &key).await.0, 200, "{key}");
    }
    assert!(
        answered > 0 && hung > 0,
        "both kinds: {answered} answered, {hung} hung"
    );
    let ledger = sim.ledger().await;
    assert_eq!(ledger.effects, 12);
    assert!(ledger.keys.iter().all(|k| k.effects == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_fault_commits_the_duplicate_in_the_background() {
    let sim = Sim::start(ApiSettings {
        rates: FaultRates {
            conflict: 1.0,
            ..Default::default()
        },
        max_faults_per_key: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(
        post(&sim, "/events", Some("k"), &json!({"a": 1})).await.0,
        409
    );
    assert_eq!(operation(&sim, "k").await.0, 409, "in flight right after");
    support::eventually(Duration::from_secs(3), "the duplicate commits", || async {
        operation(&sim, "k").await.0 == 200
    })
    .await;
    let (status, _, replayed) = post(&sim, "/events", Some("k"), &json!({"a": 1})).await;
    assert_eq!((status, replayed), (200, true));
    assert_eq!(sim.ledger().await.effects, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_keys_are_always_422() {
    let sim = Sim::start(ApiSettings {
        rates: FaultRates {
            reject: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    for _ in 0..5 {
        assert_eq!(post(&sim, "/events", Some("k"), &json!({})).await.0, 422);
    }
    assert_eq!(sim.ledger().await.effects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_when_configured() {
    let sim = Sim::start(ApiSettings {
        token: Some(warren_sim::Token::new("s3cret")),
        ..Default::default()
    })
    .await;
    assert_eq!(post(&sim, "/events", Some("k"), &json!({})).await.0, 401);
    let ok = client()
        .post(sim.url("/events"))
        .header("Idempotency-Key", "k")
        .bearer_auth("s3cret")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let wrong = client()
        .get(sim.url("/operations/k"))
        .bearer_auth("s3creT")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_log_has_every_call_with_its_time() {
    let sim = Sim::start(ApiSettings::default()).await;
    let before = support::now_ms();
    post(&sim, "/events", Some("a"), &json!({})).await;
    post(&sim, "/events", Some("a"), &json!({})).await;
    operation(&sim, "a").await;
    post(&sim, "/events", Some("b"), &json!({})).await;
    let log = sim.requests(Some("a")).await;
    let seen: Vec<_> = log.iter().map(|r| (r.method.as_str(), r.status)).collect();
    assert_eq!(seen, [("POST", 200), ("POST", 200), ("GET", 200)]);
    assert!(log.iter().all(|r| r.at_ms >= before && r.key == "a"));
    assert_eq!(sim.requests(None).await.len(), 4);
}

#[tokio::test]
async fn the_cli_prints_its_address_and_serves() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["sim", "api", "--listen", "127.0.0.1:0", "--seed", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"));
    let body = client().get(format!("http://{addr}/health")).send().await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(body.unwrap().text().await.unwrap(), "ok");
}

#[test]
fn the_cli_rejects_impossible_rates_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "sim",
            "api",
            "--listen",
            "127.0.0.1:0",
            "--fail-rate",
            "0.7",
            "--throttle-rate",
            "0.7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--fail-rate") && err.contains("more than 1"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args([
            "sim",
            "api",
            "--listen",
            "127.0.0.1:0",
            "--reject-rate",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--reject-rate"));
}
