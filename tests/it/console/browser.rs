//! The console in real headless Chromium, driven through chromedriver (Debian's `chromium`
//! and `chromium-driver`; scripts/chromium.sh installs them in CI). With JavaScript the
//! overview's numbers change without a reload and a group's canary replay moves exactly 1, then
//! 10, with the page's counts equal to the broker's; without JavaScript every page and form
//! still works. The first test leaves screenshots of the overview and of a dead-letter group
//! in `target/tmp/console/` (the README's images are copies of them).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use super::{Console, TOKEN, group_query, seeded};
use crate::support::{self, queue_len};

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let bin = std::env::var("WARREN_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{bin}: {e} (install chromium and chromium-driver: scripts/chromium.sh)")
        });
    let url = format!("http://127.0.0.1:{port}");
    let d = Driver { child, url };
    let http = super::client();
    for _ in 0..100 {
        if http.get(format!("{}/status", d.url)).send().await.is_ok() {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on port {port}");
}

async fn browser(d: &Driver, javascript: bool) -> Client {
    let mut options = json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,820", "--hide-scrollbars"],
    });
    if !javascript {
        options["prefs"] = json!({"profile.managed_default_content_settings.javascript": 2});
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(HttpConnector::new())
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session")
}

/// Waits until the element at `css` has text `want` (the page is reloaded between tries
/// when `reload`, for pages without JavaScript).
async fn wait_text(b: &Client, css: &str, want: &str, reload: bool) {
    let mut last = String::new();
    for _ in 0..150 {
        if reload {
            b.refresh().await.unwrap();
        }
        if let Ok(el) = b.find(Locator::Css(css)).await {
            last = el.text().await.unwrap_or_default();
            if last.trim() == want {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css}: wanted '{want}', last saw '{last}'");
}

async fn wait_attr(b: &Client, css: &str, reload: bool) {
    for _ in 0..150 {
        if reload {
            b.refresh().await.unwrap();
        }
        if b.find(Locator::Css(css)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no element {css}: {}", b.source().await.unwrap_or_default());
}

async fn sign_in(b: &Client, console: &Console, token: &str) {
    b.goto(&console.url("/login")).await.unwrap();
    b.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(token)
        .await
        .unwrap();
    b.find(Locator::Css("#sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    // The click returns before the form's answer loads: wait for it, a
    // refusal on the sign-in page or a page past it, so what the test reads
    // next is that answer and not the form it filled in.
    for _ in 0..150 {
        let url = b.current_url().await.unwrap();
        if url.path() != "/login" || b.source().await.unwrap().contains("Wrong token.") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("signing in never answered");
}

async fn click(b: &Client, css: &str) {
    b.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn screenshot(name: &str, png: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_updates_live_and_replays_a_group_1_then_10() {
    let (t, conn) = seeded("console-chromium", 40, 6).await;
    let work = t.queue("work");
    let dlq = format!("{work}.dlq");
    support::dlq::publish_to_queue(&conn, &work, "test.ready", 2).await;
    let console = Console::start(&t, true).await;
    let d = driver().await;
    let b = browser(&d, true).await;
    sign_in(&b, &console, TOKEN).await;

    let ready = format!(r#"tr[data-queue="{work}"] td[data-col="ready"]"#);
    let dead = format!(r#"tr[data-queue="{work}"] td[data-col="dlq"] a"#);
    b.goto(&console.url("/")).await.unwrap();
    wait_text(&b, "#live-state", "live", false).await;
    wait_text(&b, &ready, "2", false).await;
    wait_text(&b, &dead, "46", false).await;
    support::dlq::publish_to_queue(&conn, &work, "test.ready", 3).await;
    wait_text(&b, &ready, "5", false).await;
    screenshot("overview.png", &b.screenshot().await.unwrap());

    b.goto(&console.url(&format!("/dlq/messages?{}", group_query(&t))))
        .await
        .unwrap();
    wait_text(&b, "#shown", "40", false).await;
    screenshot("dlq-group.png", &b.screenshot().await.unwrap());

    click(&b, r#"button[value="replay-all"]"#).await;
    wait_text(&b, "#planned", "40", false).await;
    click(&b, "#continue").await;
    wait_attr(&b, r#"#moved[data-moved="1"]"#, false).await;
    wait_attr(&b, r#"#phase[data-phase="waiting"]"#, false).await;
    assert_eq!(
        (queue_len(&conn, &work).await, queue_len(&conn, &dlq).await),
        (6, 45)
    );
    click(&b, "#continue").await;
    wait_attr(&b, r#"#moved[data-moved="11"]"#, false).await;
    wait_attr(&b, r#"#phase[data-phase="waiting"]"#, false).await;
    assert_eq!(
        (queue_len(&conn, &work).await, queue_len(&conn, &dlq).await),
        (16, 35)
    );

    // The overview shows what the broker holds.
    b.goto(&console.url("/")).await.unwrap();
    wait_text(&b, &ready, "16", false).await;
    wait_text(&b, &dead, "35", false).await;
    b.close().await.unwrap();
    console.stop().await;
    t.cleanup(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_chromium_without_javascript_refuses_what_it_must_and_replays() {
    let (t, conn) = seeded("console-nojs", 12, 0).await;
    let work = t.queue("work");
    let dlq = format!("{work}.dlq");
    let d = driver().await;
    let b = browser(&d, false).await;
    let group = format!("/dlq/messages?{}", group_query(&t));

    // Read-only: the same page offers nothing to press.
    let read_only = Console::start(&t, false).await;
    b.goto(&read_only.url(&group)).await.unwrap();
    wait_text(&b, "#shown", "12", false).await;
    assert!(
        b.find_all(Locator::Css("form[method=post]"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.find_all(Locator::Css("button[name=op]"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        b.find_all(Locator::Css("input[type=checkbox]"))
            .await
            .unwrap()
            .is_empty()
    );
    read_only.stop().await;

    let console = Console::start(&t, true).await;
    sign_in(&b, &console, "not-the-token-at-all").await;
    assert!(b.source().await.unwrap().contains("Wrong token."));
    b.goto(&console.url(&group)).await.unwrap();
    assert!(
        b.find_all(Locator::Css("button[value]"))
            .await
            .unwrap()
            .is_empty()
    );
    sign_in(&b, &console, TOKEN).await;
    b.goto(&console.url(&group)).await.unwrap();
    // Replay a selection of two, by checkboxes: 1, then the other.
    let boxes = b.find_all(Locator::Css("input[name=id]")).await.unwrap();
    boxes[0].click().await.unwrap();
    boxes[1].click().await.unwrap();
    click(&b, r#"button[value="replay"]"#).await;
    wait_attr(&b, r#"#phase[data-phase="waiting"]"#, true).await;
    wait_text(&b, "#planned", "2", false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    wait_text(&b, "#live-state", "not live", false).await;
    click(&b, "#continue").await;
    wait_attr(&b, r#"#moved[data-moved="1"]"#, true).await;
    assert_eq!(
        (queue_len(&conn, &work).await, queue_len(&conn, &dlq).await),
        (1, 11)
    );
    wait_attr(&b, r#"#phase[data-phase="waiting"]"#, true).await;
    click(&b, "#continue").await;
    wait_attr(&b, r#"#phase[data-phase="done"]"#, true).await;
    assert_eq!(
        (queue_len(&conn, &work).await, queue_len(&conn, &dlq).await),
        (2, 10)
    );
    b.close().await.unwrap();
    console.stop().await;
    t.cleanup(&conn).await;
}
