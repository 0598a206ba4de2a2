//! The console over HTTP: pages show what the broker holds and never consume; changes need
//! the token, the session's CSRF token and the same origin; a canary replay moves exactly 1,
//! then 10, and stops when a replayed message fails again.

use std::time::Duration;

use reqwest::StatusCode;

use super::{Console, TOKEN, client, group_query, seeded};
use crate::support::{self, dlq::Dead, queue_len};

pub async fn get(c: &reqwest::Client, url: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut r = c.get(url);
    if let Some(k) = cookie {
        r = r.header("cookie", k);
    }
    let r = r.send().await.expect("GET");
    (r.status(), r.text().await.unwrap())
}

/// Posts a form; returns the status and the `Location` it redirects to.
pub async fn post(
    c: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut r = c
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(k) = cookie {
        r = r.header("cookie", k);
    }
    if let Some(o) = origin {
        r = r.header("origin", o);
    }
    let r = r.send().await.expect("POST");
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (r.status(), location)
}

/// Signs in; returns the session cookie and the CSRF token its forms carry.
pub async fn sign_in(c: &reqwest::Client, console: &Console) -> (String, String) {
    let r = c
        .post(console.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &console.base)
        .body(format!("token={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = set.split(';').next().unwrap().to_string();
    let (_, page) = get(c, &console.url("/dlq"), Some(&cookie)).await;
    let csrf = between(&page, r#"name="csrf" value=""#, "\"").expect("a CSRF field");
    (cookie, csrf)
}

pub fn between(text: &str, start: &str, end: &str) -> Option<String> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(text[from..from + len].to_string())
}

/// Polls job page `path` until its phase is `phase`; returns the page.
pub async fn wait_phase(c: &reqwest::Client, url: &str, cookie: &str, phase: &str) -> String {
    let want = format!(r#"data-phase="{phase}""#);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, page) = get(c, url, Some(cookie)).await;
        if page.contains(&want) {
            return page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never reached {phase}: {page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_show_the_broker_and_browsing_never_consumes() {
    let (t, conn) = seeded("console-pages", 4, 2).await;
    let work = t.queue("work");
    let dlq = format!("{work}.dlq");
    support::dlq::publish_to_queue(&conn, &work, "test.ready", 3).await;
    let console = Console::start(&t, false).await;
    let http = client();

    let (status, page) = get(&http, &console.url("/"), None).await;
    assert_eq!(status, StatusCode::OK);
    let row = between(&page, &format!(r#"<tr data-queue="{work}">"#), "</tr>").expect("work row");
    assert!(row.contains(r#"data-col="ready">3<"#), "{row}");
    assert!(row.contains(">6</a>"), "the DLQ depth: {row}");
    assert!(
        !page.contains("guest:guest"),
        "the AMQP password is never shown"
    );

    // The live stream's first event is the same table.
    let mut live = http
        .get(console.url("/live/overview"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(10), live.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8_lossy(&first);
    assert!(
        first.starts_with("data: ") && first.contains(&work),
        "{first}"
    );
    drop(live);

    let (_, groups) = get(&http, &console.url("/dlq"), None).await;
    assert!(
        groups.contains(r#"<strong id="total">6</strong>"#),
        "{groups}"
    );
    assert!(groups.contains(r#"data-count="4""#) && groups.contains(r#"data-count="2""#));
    assert!(groups.contains("HTTP 422 for order &lt;n&gt;"), "{groups}");

    let (_, letters) = get(
        &http,
        &console.url(&format!("/dlq/messages?{}", group_query(&t))),
        None,
    )
    .await;
    assert_eq!(
        letters.matches(r#"<tr class="letter""#).count(),
        4,
        "{letters}"
    );
    let (_, timeouts) = get(
        &http,
        &console.url(&format!("/dlq/messages?queue={work}&text=timeout")),
        None,
    )
    .await;
    assert_eq!(timeouts.matches(r#"<tr class="letter""#).count(), 2);
    let (status, bad) = get(&http, &console.url("/dlq/messages?kind=nope"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.contains("kind: 'nope'"), "{bad}");

    let id = between(&letters, r#"<tr class="letter" data-id=""#, "\"").unwrap();
    let (status, detail) = get(
        &http,
        &console.url(&format!("/dlq/message?queue={dlq}&id={id}")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for want in [
        "x-warren-origin-queue",
        "traceparent",
        "HTTP 422 for order",
        "&quot;type&quot;: &quot;test.order&quot;",
    ] {
        assert!(detail.contains(want), "{want} in {detail}");
    }

    let (_, health) = get(&http, &console.url("/healthz"), None).await;
    assert_eq!(health, "ok\n");
    let (_, metrics) = get(&http, &console.url("/metrics"), None).await;
    assert!(
        metrics.contains(r#"warren_console_pages_total{page="messages"} 3"#),
        "{metrics}"
    );

    assert_eq!(queue_len(&conn, &dlq).await, 6, "browsing consumed nothing");
    assert_eq!(queue_len(&conn, &work).await, 3);
    console.stop().await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_read_only_offers_no_action_and_refuses_every_change() {
    let (t, conn) = seeded("console-ro", 3, 0).await;
    let dlq = format!("{}.dlq", t.queue("work"));
    let console = Console::start(&t, false).await;
    let http = client();
    for path in ["/", "/dlq", &format!("/dlq/messages?{}", group_query(&t))] {
        let (_, page) = get(&http, &console.url(path), None).await;
        assert!(
            !page.contains("method=\"post\""),
            "{path} offers a form: {page}"
        );
        assert!(!page.contains(r#"name="op""#), "{path} offers an action");
        assert!(page.contains("Read-only"));
    }
    let forged = [("op", "purge-all"), ("csrf", "x"), ("queue", "work")];
    let (status, _) = post(&http, &console.url("/jobs"), None, None, &forged).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = post(
        &http,
        &console.url("/login"),
        None,
        None,
        &[("token", TOKEN)],
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "no sign-in on a read-only console"
    );
    let (_, metrics) = get(&http, &console.url("/metrics"), None).await;
    assert!(
        metrics.contains(r#"warren_console_refused_total{reason="read_only"} 2"#),
        "{metrics}"
    );
    assert_eq!(queue_len(&conn, &dlq).await, 3);
    console.stop().await;
    t.cleanup(&conn).await;
}

fn purge_form<'a>(csrf: &'a str, id: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("op", "purge"),
        ("queue", "work"),
        ("csrf", csrf),
        ("id", id),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_changes_need_the_token_the_csrf_token_and_the_same_origin() {
    let (t, conn) = seeded("console-auth", 3, 0).await;
    let dlq = format!("{}.dlq", t.queue("work"));
    let console = Console::start(&t, true).await;
    let http = client();
    let (status, _) = post(
        &http,
        &console.url("/login"),
        None,
        None,
        &[("token", "wrong-token-wrong-token")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (cookie, csrf) = sign_in(&http, &console).await;
    let (_, letters) = get(
        &http,
        &console.url(&format!("/dlq/messages?{}", group_query(&t))),
        Some(&cookie),
    )
    .await;
    let id = between(&letters, r#"<tr class="letter" data-id=""#, "\"").unwrap();
    let jobs = console.url("/jobs");
    let (s, _) = post(&http, &jobs, None, None, &purge_form(&csrf, &id)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "no session");
    let (s, _) = post(
        &http,
        &jobs,
        Some(&cookie),
        None,
        &purge_form("forged", &id),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "wrong CSRF token");
    let (s, _) = post(
        &http,
        &jobs,
        Some(&cookie),
        Some("http://evil.example"),
        &purge_form(&csrf, &id),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another site");
    assert_eq!(
        queue_len(&conn, &dlq).await,
        3,
        "nothing refused changed anything"
    );

    // The real thing: a purge of the one selected message, dry run first.
    let (s, job) = post(
        &http,
        &jobs,
        Some(&cookie),
        Some(&console.base),
        &purge_form(&csrf, &id),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let job = console.url(&job);
    let page = wait_phase(&http, &job, &cookie, "waiting").await;
    assert!(
        page.contains(r#"<strong id="planned">1</strong>"#),
        "{page}"
    );
    assert_eq!(queue_len(&conn, &dlq).await, 3, "a dry run changes nothing");
    let (s, _) = post(
        &http,
        &format!("{job}/continue"),
        Some(&cookie),
        Some(&console.base),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    wait_phase(&http, &job, &cookie, "done").await;
    assert_eq!(queue_len(&conn, &dlq).await, 2);
    let (_, left) = get(
        &http,
        &console.url(&format!("/dlq/messages?{}", group_query(&t))),
        Some(&cookie),
    )
    .await;
    assert!(
        !left.contains(&id),
        "the purged message is gone, the others stay"
    );
    console.stop().await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_canary_replay_moves_1_then_10_and_stops_when_one_fails_again() {
    let (t, conn) = seeded("console-canary", 30, 2).await;
    let work = t.queue("work");
    let dlq = format!("{work}.dlq");
    let console = Console::start(&t, true).await;
    let http = client();
    let (cookie, csrf) = sign_in(&http, &console).await;
    let mut form: Vec<(String, String)> = url::form_urlencoded::parse(group_query(&t).as_bytes())
        .into_owned()
        .collect();
    form.push(("op".into(), "replay-all".into()));
    form.push(("csrf".into(), csrf.clone()));
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (s, job) = post(
        &http,
        &console.url("/jobs"),
        Some(&cookie),
        Some(&console.base),
        &form,
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let job = console.url(&job);
    let page = wait_phase(&http, &job, &cookie, "waiting").await;
    assert!(
        page.contains(r#"<strong id="planned">30</strong>"#),
        "the dry run counts the group only: {page}"
    );
    let step = |n: usize| {
        let (http, job, cookie, csrf, base) = (&http, &job, &cookie, &csrf, &console.base);
        async move {
            let (s, _) = post(
                http,
                &format!("{job}/continue"),
                Some(cookie),
                Some(base),
                &[("csrf", csrf)],
            )
            .await;
            assert_eq!(s, StatusCode::SEE_OTHER);
            let page = wait_phase(http, job, cookie, "waiting").await;
            assert!(page.contains(&format!(r#"data-moved="{n}""#)), "{page}");
        }
    };
    step(1).await;
    assert_eq!(
        (queue_len(&conn, &work).await, queue_len(&conn, &dlq).await),
        (1, 31)
    );
    step(11).await;
    assert_eq!(
        (queue_len(&conn, &work).await, queue_len(&conn, &dlq).await),
        (11, 21)
    );

    // Every replayed copy carries the marker; one of them fails again.
    let replayed = support::drain(&conn, &work).await;
    assert_eq!(replayed.len(), 11);
    for d in &replayed {
        assert_eq!(
            warren::amqp::header_u32(&d.properties, warren::amqp::hdr::REPLAYED),
            1
        );
    }
    let again_id = replayed[0]
        .properties
        .message_id()
        .as_ref()
        .unwrap()
        .to_string();
    let mut again = Dead::new("test.order", "permanent", "HTTP 422 for order 0", &work);
    again.id = again_id;
    support::dlq::publish_dead(&conn, &t, &[again]).await;
    let (s, _) = post(
        &http,
        &format!("{job}/continue"),
        Some(&cookie),
        Some(&console.base),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let page = wait_phase(&http, &job, &cookie, "stopped").await;
    assert!(
        page.contains("1 replayed message(s) failed again"),
        "{page}"
    );
    assert_eq!(
        queue_len(&conn, &work).await,
        0,
        "the stopped ramp replayed nothing more"
    );
    assert_eq!(queue_len(&conn, &dlq).await, 22);
    console.stop().await;
    t.cleanup(&conn).await;
}
