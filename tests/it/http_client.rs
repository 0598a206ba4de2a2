//! The downstream client against real servers on port 0: the taxonomy's verdicts, in-process
//! retries, Retry-After, status checks after 409 / 504 / timeouts / resets, and the same key on
//! every retry.

use crate::support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::downstream::Sim;
use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::json;
use url::Url;
use warren::http::{ClientSettings, HttpClient, StatusUrl, Token};
use warren::worker::HandlerError;
use warren_sim::api::{ApiSettings, FaultRates};

fn settings() -> ClientSettings {
    ClientSettings {
        request_timeout: Duration::from_millis(500),
        ..ClientSettings::default()
    }
}

fn client_for(base: &str, settings: ClientSettings) -> HttpClient {
    let base = Url::parse(base).unwrap();
    HttpClient::new(settings, StatusUrl::for_api(&base), None).unwrap()
}

async fn post(
    client: &HttpClient,
    url: &str,
    key: &str,
) -> Result<warren::http::Response, HandlerError> {
    let body = Bytes::from(serde_json::to_vec(&json!({"hello": key})).unwrap());
    client
        .post_idempotent(&Url::parse(url).unwrap(), key, body, &HeaderMap::new())
        .await
}

fn faulty(rates: FaultRates, max_faults_per_key: u32) -> ApiSettings {
    ApiSettings {
        rates,
        max_faults_per_key,
        ..Default::default()
    }
}

async fn posts(sim: &Sim, key: &str) -> Vec<support::downstream::RequestView> {
    sim.requests(Some(key))
        .await
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_in_process_with_the_same_key() {
    let sim = Sim::start(faulty(
        FaultRates {
            fail: 1.0,
            ..Default::default()
        },
        2,
    ))
    .await;
    let client = client_for(&sim.base, settings());
    let r = post(&client, &sim.url("/events"), "k1")
        .await
        .expect("third try succeeds");
    assert_eq!(r.status, 200);
    let statuses: Vec<_> = posts(&sim, "k1").await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 500, 200]);

    // More failures than tries: a transient error for the worker's tiers, no Retry-After.
    let sim = Sim::start(faulty(
        FaultRates {
            fail: 1.0,
            ..Default::default()
        },
        10,
    ))
    .await;
    let client = client_for(&sim.base, settings());
    let err = post(&client, &sim.url("/events"), "k2").await.unwrap_err();
    assert!(
        matches!(&err, HandlerError::Transient { retry_after: None, reason } if reason.contains("500")),
        "{err:?}"
    );
    assert_eq!(posts(&sim, "k2").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_answers_are_not_retried() {
    let sim = Sim::start(faulty(
        FaultRates {
            reject: 1.0,
            ..Default::default()
        },
        3,
    ))
    .await;
    let client = client_for(&sim.base, settings());
    let err = post(&client, &sim.url("/events"), "k").await.unwrap_err();
    assert!(
        matches!(&err, HandlerError::Permanent(r) if r.contains("422")),
        "{err:?}"
    );
    // A body the endpoint cannot accept is a 400.
    let err = post(&client, &sim.url("/trade/open"), "k400")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HandlerError::Permanent(r) if r.contains("400")),
        "{err:?}"
    );
    assert_eq!(posts(&sim, "k").await.len(), 1);
    assert_eq!(posts(&sim, "k400").await.len(), 1);
    assert!(
        sim.requests(None).await.iter().all(|r| r.method == "POST"),
        "no status checks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_retry_after_is_waited_out_in_process() {
    let sim = Sim::start(ApiSettings {
        retry_after: Duration::from_secs(1),
        ..faulty(
            FaultRates {
                throttle: 1.0,
                ..Default::default()
            },
            1,
        )
    })
    .await;
    let client = client_for(&sim.base, settings());
    post(&client, &sim.url("/events"), "k")
        .await
        .expect("succeeds after the wait");
    let p = posts(&sim, "k").await;
    assert_eq!(p.iter().map(|r| r.status).collect::<Vec<_>>(), [429, 200]);
    assert!(
        p[1].at_ms >= p[0].at_ms + 1000,
        "second call {} ms after the 429",
        p[1].at_ms - p[0].at_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_is_handed_to_the_worker() {
    let sim = Sim::start(ApiSettings {
        retry_after: Duration::from_secs(3),
        ..faulty(
            FaultRates {
                throttle: 1.0,
                ..Default::default()
            },
            1,
        )
    })
    .await;
    let client = client_for(&sim.base, settings());
    let err = post(&client, &sim.url("/events"), "k").await.unwrap_err();
    match err {
        HandlerError::Transient {
            retry_after,
            reason,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
            assert!(reason.contains("429"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        posts(&sim, "k").await.len(),
        1,
        "no second call before Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ambiguous_commit_is_resolved_by_a_status_check_without_a_second_call() {
    let sim = Sim::start(ApiSettings {
        hang: Duration::from_secs(3),
        ..faulty(
            FaultRates {
                ambiguous: 1.0,
                ..Default::default()
            },
            1,
        )
    })
    .await;
    let client = client_for(&sim.base, settings());
    for k in 0..8 {
        let key = format!("k{k}");
        let r = post(&client, &sim.url("/events"), &key)
            .await
            .expect("resolved by the status check");
        assert!(r.via_status_check);
        assert_eq!(r.json::<serde_json::Value>().unwrap()["accepted"], true);
        assert_eq!(posts(&sim, &key).await.len(), 1, "{key}: one POST only");
    }
    let ledger = sim.ledger().await;
    assert_eq!(ledger.effects, 8);
    assert!(
        ledger
            .keys
            .iter()
            .all(|k| k.effects == 1 && k.status_checks == 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_checks_status_and_never_assumes_done() {
    let sim = Sim::start(faulty(
        FaultRates {
            conflict: 1.0,
            ..Default::default()
        },
        1,
    ))
    .await;
    let once = client_for(
        &sim.base,
        ClientSettings {
            tries: 1,
            ..settings()
        },
    );
    let err = post(&once, &sim.url("/events"), "k").await.unwrap_err();
    let HandlerError::Transient { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("409") && reason.contains("in_flight"),
        "{reason}"
    );
    // The duplicate commits in the background; the next try (the worker's retry) is done.
    support::eventually(Duration::from_secs(3), "the duplicate commits", || async {
        sim.ledger().await.effects == 1
    })
    .await;
    let r = post(&once, &sim.url("/events"), "k")
        .await
        .expect("replayed");
    assert_eq!(r.status, 200);
    let log: Vec<_> = sim
        .requests(Some("k"))
        .await
        .iter()
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let want: Vec<_> = [("POST", 409), ("GET", 409), ("POST", 200)]
        .iter()
        .map(|(m, s)| (m.to_string(), *s))
        .collect();
    assert_eq!(log, want);
    assert_eq!(sim.ledger().await.effects, 1);
}

/// A server whose POSTs answer 504 without committing until the `n`-th, and whose status check
/// knows only committed keys.
async fn forgetful_server(commit_on: u32) -> (String, Arc<Mutex<Vec<(String, String)>>>) {
    use axum::extract::{Path, State};
    use axum::http::{HeaderMap as AxumHeaders, StatusCode};
    use axum::routing::{get, post};

    #[derive(Default)]
    struct S {
        posts: HashMap<String, u32>,
        log: Arc<Mutex<Vec<(String, String)>>>,
    }
    let log = Arc::new(Mutex::new(vec![]));
    let state = Arc::new(Mutex::new(S {
        log: log.clone(),
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route(
            "/op",
            post(
                move |State(s): State<Arc<Mutex<S>>>, h: AxumHeaders| async move {
                    let key = h["idempotency-key"].to_str().unwrap().to_string();
                    let mut s = s.lock().unwrap();
                    s.log.lock().unwrap().push(("POST".into(), key.clone()));
                    let n = s.posts.entry(key).or_default();
                    *n += 1;
                    if *n >= commit_on {
                        StatusCode::OK
                    } else {
                        StatusCode::GATEWAY_TIMEOUT
                    }
                },
            ),
        )
        .route(
            "/operations/{key}",
            get(
                move |State(s): State<Arc<Mutex<S>>>, Path(key): Path<String>| async move {
                    let s = s.lock().unwrap();
                    s.log.lock().unwrap().push(("GET".into(), key.clone()));
                    if s.posts.get(&key).is_some_and(|n| *n >= commit_on) {
                        StatusCode::OK
                    } else {
                        StatusCode::NOT_FOUND
                    }
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_after_an_ambiguous_answer_retries_the_same_key() {
    let (base, log) = forgetful_server(2).await;
    let client = client_for(&base, settings());
    post(&client, &format!("{base}/op"), "the-key")
        .await
        .expect("second POST commits");
    let log = log.lock().unwrap().clone();
    let want: Vec<(String, String)> =
        [("POST", "the-key"), ("GET", "the-key"), ("POST", "the-key")]
            .iter()
            .map(|(m, k)| (m.to_string(), k.to_string()))
            .collect();
    assert_eq!(log, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_sending_is_ambiguous_and_checked() {
    // Reads the request, then closes the connection without an answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut sock, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            let mut buf = [0u8; 4096];
            let _ = sock.read(&mut buf).await;
            drop(sock);
        }
    });
    let sim = Sim::start(ApiSettings::default()).await;
    let status = StatusUrl::parse(&sim.url("/operations/{key}")).unwrap();
    let client = HttpClient::new(settings(), status, None).unwrap();
    let err = post(&client, &format!("http://{addr}/op"), "rk")
        .await
        .unwrap_err();
    let HandlerError::Transient { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("not found, retrying the same key"),
        "{reason}"
    );
    let checks = sim.requests(Some("rk")).await;
    assert_eq!(checks.len(), 3, "one status check per try: {checks:?}");
    assert!(checks.iter().all(|r| r.method == "GET" && r.status == 404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_transient_and_needs_no_check() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sim = Sim::start(ApiSettings::default()).await;
    let status = StatusUrl::parse(&sim.url("/operations/{key}")).unwrap();
    let client = HttpClient::new(settings(), status, None).unwrap();
    let err = post(&client, &format!("http://127.0.0.1:{port}/op"), "ck")
        .await
        .unwrap_err();
    let HandlerError::Transient { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("cannot connect"), "{reason}");
    assert!(
        sim.requests(None).await.is_empty(),
        "nothing was sent, so nothing to check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_token_is_sent_and_never_printed() {
    let sim = Sim::start(ApiSettings {
        token: Some(warren_sim::Token::new("tok-123")),
        ..Default::default()
    })
    .await;
    let base = Url::parse(&sim.base).unwrap();
    let client = HttpClient::new(
        settings(),
        StatusUrl::for_api(&base),
        Some(Token::new("tok-123")),
    )
    .unwrap();
    post(&client, &sim.url("/events"), "k")
        .await
        .expect("authorized");
    assert!(!format!("{client:?}").contains("tok-123"));
    let anonymous = client_for(&sim.base, settings());
    let err = post(&anonymous, &sim.url("/events"), "k2")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, HandlerError::Permanent(r) if r.contains("401")),
        "{err:?}"
    );
}

#[test]
fn status_url_templates_are_checked() {
    assert!(
        StatusUrl::parse("http://h/ops")
            .unwrap_err()
            .contains("{key}")
    );
    assert!(StatusUrl::parse("ftp://h/{key}").is_err());
    assert!(
        StatusUrl::parse("http://user:pw@h/{key}")
            .unwrap()
            .to_string()
            .contains("h/{key}")
    );
    assert!(
        !StatusUrl::parse("http://user:pw@h/{key}")
            .unwrap()
            .to_string()
            .contains("pw")
    );
    let derived = StatusUrl::for_api(&Url::parse("http://h:81/api/v1?x=1").unwrap());
    assert_eq!(derived.url("K"), "http://h:81/operations/K");
}
