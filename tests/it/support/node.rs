//! The throwaway RabbitMQ node that broker-disturbing tests run against, so they never stop,
//! block or close the connections of a broker the suite did not start.
//!
//! `scripts/test.sh` starts one node for the whole run (`scripts/rabbit-node.sh`) and names its
//! directory in `WARREN_TEST_NODE_DIR`; a test run without it (a bare `cargo nextest run`)
//! starts a node for the test and stops it afterwards. [`use_throwaway_node`] points this test
//! process's [`super::amqp_url`] and [`super::rabbitmqctl`] at the node, so the fixtures and the
//! `warren` processes they spawn follow.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Where this process's broker is, when it is not the default one.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The node's AMQP URL.
    pub url: String,
    /// The node's directory, which `scripts/rabbit-node.sh ctl` takes.
    pub dir: PathBuf,
    /// The node's management API (every throwaway node runs the plugin).
    pub management_url: String,
}

static BROKER: OnceLock<Broker> = OnceLock::new();

/// The throwaway node this process uses, if it switched to one.
pub fn current() -> Option<&'static Broker> {
    BROKER.get()
}

/// A node this test process started, stopped when the guard drops; or the run's shared node,
/// which the guard leaves running.
pub struct NodeGuard {
    owned: Option<tempfile::TempDir>,
}

impl Drop for NodeGuard {
    fn drop(&mut self) {
        if let (Some(_tmp), Some(broker)) = (&self.owned, BROKER.get()) {
            let _ = script().arg("stop").arg(&broker.dir).status();
        }
    }
}

fn script() -> Command {
    Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbit-node.sh"))
}

/// Points this test process at the throwaway node: the run's (`WARREN_TEST_NODE_DIR`) or one it
/// starts now. Call it first in a test that stops, blocks or closes the broker, or that needs
/// the management plugin (a broker the suite did not start may not have it); keep the guard
/// until the test ends.
pub fn use_throwaway_node() -> NodeGuard {
    if let Some(dir) = std::env::var_os("WARREN_TEST_NODE_DIR").map(PathBuf::from) {
        set(broker_in(dir));
        return NodeGuard { owned: None };
    }
    let tmp = tempfile::Builder::new()
        .prefix("warren-test-node-")
        .tempdir()
        .expect("a temp dir for the node");
    // The node runs as the rabbitmq user, which must reach its directory.
    let _ = Command::new("chmod").arg("755").arg(tmp.path()).status();
    let dir = tmp.path().join("node");
    run(
        script().arg("start").arg(&dir).arg("--management"),
        "rabbit-node.sh start",
    );
    set(broker_in(dir));
    NodeGuard { owned: Some(tmp) }
}

fn broker_in(dir: PathBuf) -> Broker {
    Broker {
        url: run(script().arg("url").arg(&dir), "rabbit-node.sh url"),
        management_url: run(
            script().arg("management-url").arg(&dir),
            "rabbit-node.sh management-url",
        ),
        dir,
    }
}

/// Points this test process at `broker` (a cluster's node list, say), as [`use_throwaway_node`]
/// does at the throwaway node.
pub fn use_broker(broker: Broker) {
    set(broker);
}

fn set(broker: Broker) {
    let url = broker.url.clone();
    let now = BROKER.get_or_init(|| broker);
    assert_eq!(now.url, url, "one test process uses one throwaway node");
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `rabbitmqctl` command for this process's broker: the throwaway node's when the test
/// switched to it, else the default node's.
pub fn ctl_command() -> Command {
    match BROKER.get() {
        Some(b) => {
            let mut c = script();
            c.arg("ctl").arg(&b.dir);
            c
        }
        None => Command::new("rabbitmqctl"),
    }
}

/// `host:port` of this process's broker, for proxies placed in front of it.
pub fn broker_addr() -> std::net::SocketAddr {
    let url = super::amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    };
    hostport
        .parse()
        .expect("the broker's host:port is an address")
}
