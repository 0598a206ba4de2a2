//! The console's pages past the first: a group's dead letters page by page through plain links
//! (no script), never consuming; and the overview's oldest-message ages, shown where RabbitMQ
//! reports them and, where it does not, with the reason in the cell's title.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use reqwest::StatusCode;

use super::http::{between, get};
use super::{Console, client, group_query, seeded};
use crate::support::{self, TestTopology, dlq::Dead, queue_len};

/// The dead-letter rows of a messages page: (id, position in the DLQ).
fn rows(page: &str) -> Vec<(String, u32)> {
    page.split(r#"<tr class="letter" data-id=""#)
        .skip(1)
        .map(|row| {
            let id = row[..row.find('"').unwrap()].to_string();
            let pos = between(row, r#"<td class="n">"#, "<").expect("a position cell");
            (id, pos.parse().expect("a position"))
        })
        .collect()
}

/// The `href` of the page's link with `rel`, unescaped.
fn link(page: &str, rel: &str) -> Option<String> {
    between(page, &format!(r#"<a rel="{rel}" href=""#), "\"").map(|h| h.replace("&amp;", "&"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_pages_through_a_group_by_links_and_never_consumes() {
    let (t, conn) = seeded("console-paging", 120, 7).await;
    let dlq = format!("{}.dlq", t.queue("work"));
    let console = Console::start(&t, false).await;
    let http = client();

    let first = format!("/dlq/messages?{}", group_query(&t));
    let mut url = first.clone();
    let mut pages = vec![];
    while pages.len() < 10 {
        let (status, page) = get(&http, &console.url(&url), None).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        let next = link(&page, "next");
        pages.push((url, page));
        match next {
            Some(n) => url = n,
            None => break,
        }
    }
    let sizes: Vec<usize> = pages.iter().map(|(_, p)| rows(p).len()).collect();
    assert_eq!(sizes, [50, 50, 20], "page size 50, the group holds 120");
    assert!(
        pages[1].0.contains("fp=") && pages[1].0.ends_with("page=2"),
        "the next link keeps the filter: {}",
        pages[1].0
    );
    let all: Vec<(String, u32)> = pages.iter().flat_map(|(_, p)| rows(p)).collect();
    let mut ids: Vec<&String> = all.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 120, "every dead letter of the group once");
    let positions: Vec<u32> = all.iter().map(|(_, p)| *p).collect();
    assert_eq!(
        positions,
        (1..=120).collect::<Vec<u32>>(),
        "in queue order, no gap"
    );
    assert!(
        pages[2].1.contains(r#"<span id="range">101–120</span>"#),
        "{}",
        pages[2].1
    );

    // Back: the first page has no previous link; the last one's leads to the second.
    assert_eq!(link(&pages[0].1, "prev"), None);
    let prev = link(&pages[2].1, "prev").expect("a previous link");
    assert_eq!(prev, pages[1].0);
    let (_, again) = get(&http, &console.url(&prev), None).await;
    assert_eq!(rows(&again), rows(&pages[1].1), "the same page again");
    let prev = link(&pages[1].1, "prev").expect("a previous link");
    let (_, again) = get(&http, &console.url(&prev), None).await;
    assert_eq!(rows(&again), rows(&pages[0].1));

    // Past the end: an empty page that leads back; a page that is not a number is refused.
    let (status, past) = get(&http, &console.url(&format!("{first}&page=9")), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        rows(&past).is_empty() && link(&past, "prev").is_some(),
        "{past}"
    );
    for bad in ["0", "x", "-1"] {
        let (status, page) = get(&http, &console.url(&format!("{first}&page={bad}")), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "page={bad}");
        assert!(page.contains("page: a number from 1"), "{page}");
    }

    assert_eq!(queue_len(&conn, &dlq).await, 127, "paging consumed nothing");
    console.stop().await;
    t.cleanup(&conn).await;
}

/// A classic and a quorum work queue, and a quorum queue left empty.
const AGES_TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 3
retry_delays = ["300ms"]
expires = "10m"

[[queues]]
name = "classic"
queue_type = "classic"
bind = ["test.classic"]

[[queues]]
name = "quorum"
bind = ["test.quorum"]

[[queues]]
name = "idle"
bind = ["test.idle"]
"#;

/// Publishes `n` messages to `queue` stamped `age` ago (the bridge stamps the event's time).
async fn publish_aged(conn: &lapin::Connection, queue: &str, n: usize, age: Duration) {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let at = std::time::SystemTime::now() - age;
    let secs = at.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    for _ in 0..n {
        let (id, body) = support::envelope("test.aged", serde_json::json!({}));
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_message_id(id.as_str().into())
                    .with_timestamp(secs)
                    .with_delivery_mode(2),
            )
            .await
            .unwrap();
        assert!(confirm.await.unwrap().is_ack());
    }
}

/// The overview's row of `queue`.
fn row(page: &str, queue: &str) -> String {
    between(page, &format!(r#"<tr data-queue="{queue}">"#), "</tr>")
        .unwrap_or_else(|| panic!("a row for {queue}: {page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_oldest_ages_where_rabbitmq_reports_them_and_says_why_elsewhere() {
    // The management API reports head timestamps: the suite's own node runs it.
    let _node = support::node::use_throwaway_node();
    let management_url = support::node::current().unwrap().management_url.clone();
    let t = TestTopology::new("console-ages", AGES_TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let (classic, quorum, idle) = (t.queue("classic"), t.queue("quorum"), t.queue("idle"));
    publish_aged(&conn, &classic, 3, Duration::from_secs(600)).await;
    publish_aged(&conn, &quorum, 3, Duration::from_secs(600)).await;
    // A dead letter as the worker writes it: no timestamp property.
    let dead = Dead::new("test.quorum", "permanent", "HTTP 422", &quorum);
    support::dlq::publish_dead(&conn, &t, &[dead]).await;

    let management = warren::status::Management::new(&management_url, &support::url()).unwrap();
    let console = Console::start_with(&t, false, Some(management)).await;
    let http = client();
    // Management figures lag the broker by its statistics interval (5 s by default).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let page = loop {
        let (_, page) = get(&http, &console.url("/"), None).await;
        if row(&page, &classic).contains(r#"data-col="oldest" title=""#) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the classic queue's age never showed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let classic_row = row(&page, &classic);
    let age = between(&classic_row, r#"data-col="oldest" title=""#, "</td>").unwrap();
    assert!(
        age.ends_with(">10m") || age.ends_with(">11m"),
        "ten minutes old: {classic_row}"
    );
    let quorum_row = row(&page, &quorum);
    assert!(
        quorum_row.contains(r#"data-why="Quorum""#)
            && quorum_row.contains("classic queues only")
            && quorum_row.contains(">n/a</abbr>"),
        "{quorum_row}"
    );
    assert!(
        page.contains("Oldest ready n/a: RabbitMQ reports"),
        "said without hovering too"
    );
    assert!(
        row(&page, &idle).contains(r#"data-why="Empty""#),
        "{}",
        row(&page, &idle)
    );
    assert!(
        quorum_row.contains(r#"data-why="NoTimestamp""#)
            && quorum_row.contains("carries no timestamp property"),
        "the dead letter has no timestamp: {quorum_row}"
    );
    console.stop().await;

    // Without the management API every age says what it needs.
    let console = Console::start(&t, false).await;
    let (_, page) = get(&http, &console.url("/"), None).await;
    let classic_row = row(&page, &classic);
    assert!(
        classic_row.contains(r#"data-why="NoManagement""#)
            && classic_row.contains("needs the management API"),
        "{classic_row}"
    );
    console.stop().await;

    assert_eq!(queue_len(&conn, &classic).await, 3, "ages never consume");
    assert_eq!(queue_len(&conn, &quorum).await, 3);
    t.cleanup(&conn).await;
}
