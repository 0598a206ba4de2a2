//! `warren console` against the real broker: the console runs in-process on port 0 (its
//! library `run` takes the listener and the shutdown token), driven over HTTP by reqwest and
//! in real headless Chromium through chromedriver.

mod bench;
mod browser;
mod http;
mod pages;

use std::time::Duration;

use reqwest::redirect::Policy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren::console::{ChangeToken, ConsoleSettings};

use crate::support::dlq::{DLQ_TOPOLOGY, Dead};
use crate::support::{self, TestTopology};

/// The token consoles started with changes allowed accept.
pub const TOKEN: &str = "test-console-token-0123456789";

/// A console serving one test topology.
pub struct Console {
    pub base: String,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), warren::error::Error>>,
}

impl Console {
    /// Serves `t` on 127.0.0.1:0; changes allowed when `changes`.
    pub async fn start(t: &TestTopology, changes: bool) -> Self {
        Self::start_with(t, changes, None).await
    }

    /// [`Console::start`] reading the management API too.
    pub async fn start_with(
        t: &TestTopology,
        changes: bool,
        management: Option<warren::status::Management>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let settings = ConsoleSettings {
            url: support::url(),
            topology: t.topology.clone(),
            management,
            changes: changes.then(|| ChangeToken::new(TOKEN.into()).unwrap()),
            refresh: Duration::from_millis(300),
            page_size: 50,
        };
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(warren::console::run(settings, listener, shutdown.clone()));
        Self {
            base,
            shutdown,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the console and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(20), self.handle).await;
        stopped
            .expect("console stops")
            .expect("console task")
            .expect("console ran without error");
    }
}

/// An HTTP client that keeps redirects visible (the tests read `Location` and `Set-Cookie`).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The test topology ([`DLQ_TOPOLOGY`]) applied, with `n` dead letters of one group (HTTP
/// 422 for an order) and `other` of another (a timeout) in the work queue's DLQ.
pub async fn seeded(test: &str, n: usize, other: usize) -> (TestTopology, lapin::Connection) {
    let t = TestTopology::new(test, DLQ_TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let work = t.queue("work");
    let mut dead: Vec<Dead> = (0..n)
        .map(|i| {
            Dead::new(
                "test.order",
                "permanent",
                &format!("HTTP 422 for order {i}"),
                &work,
            )
        })
        .collect();
    dead.extend(
        (0..other).map(|_| Dead::new("test.fill", "exhausted", "timeout after 30s", &work)),
    );
    support::dlq::publish_dead(&conn, &t, &dead).await;
    (t, conn)
}

/// The fingerprint of the seeded 422 group, as a query string for its messages page.
pub fn group_query(t: &TestTopology) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("queue", &t.queue("work"))
        .append_pair("type", "test.order")
        .append_pair("kind", "permanent")
        .append_pair("fp", "HTTP 422 for order <n>")
        .finish()
}
