//! A broker URL listing several nodes: a node that refuses and a node that never answers are
//! passed over, the error names every node and no password, on the real broker.

use std::time::Duration;

use assert_cmd::Command;
use warren::amqp::{self, AmqpUrl};

use crate::support::proxy::{Mode, Proxy};
use crate::support::{self, TestTopology};

/// A local port nothing listens on: connecting is refused at once.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn warren(url: &str) -> Command {
    let mut cmd = Command::cargo_bin("warren").unwrap();
    cmd.env("AMQP_URL", url).env("RUST_LOG", "warren=debug");
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_and_a_silent_node_are_passed_over() {
    let real = support::url().host_port();
    // Accepts, then forwards nothing: the AMQP handshake never completes.
    let silent = Proxy::start(real.parse().unwrap()).await;
    silent.set(Mode::BlackHole);
    let list = format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f?connection_timeout=1000,{},{real}",
        dead_port(),
        silent.addr
    );

    let url: AmqpUrl = list.parse().unwrap();
    let conn = amqp::connect(&url, "test", "node-list").await.unwrap();
    assert!(conn.status().connected());
    assert_eq!(
        url.candidates(),
        [2, 0, 1],
        "the node that answered goes first, the two that did not after it"
    );
    amqp::close(&conn).await;

    // The binary, through the same list.
    let t = TestTopology::fast("node-list");
    let out = tokio::task::spawn_blocking({
        let (list, args) = (list.clone(), t.args());
        move || {
            warren(&list)
                .args(["topology", "apply", "-o", "json"])
                .args(args)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("Connected to another broker node"), "{log}");
    let conn = support::connect().await;
    t.cleanup(&conn).await;
}

#[tokio::test]
async fn when_no_node_answers_the_error_names_each_and_no_password() {
    let (a, b) = (dead_port(), dead_port());
    let list = format!("amqp://bob:s3cr3t-canary@127.0.0.1:{a}/%2f,127.0.0.1:{b}");
    let out = tokio::task::spawn_blocking(move || {
        warren(&list)
            .args(["status", "-o", "json"])
            .timeout(Duration::from_secs(60))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{a}")) && err.contains(&format!("127.0.0.1:{b}")),
        "{err}"
    );
    assert!(err.contains("bob:***@"), "{err}");
    assert!(!err.contains("s3cr3t-canary"), "{err}");
}
