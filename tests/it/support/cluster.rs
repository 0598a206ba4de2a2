//! The three-node RabbitMQ cluster the `cluster::` tests kill, stop and cut off nodes of
//! (`scripts/rabbit-cluster.sh`). `scripts/test.sh` starts one for the whole run and names its
//! directory in `WARREN_TEST_CLUSTER_DIR`; without it a test starts its own and stops it when
//! the guard drops. The test process's broker becomes the cluster's node list, with
//! `rabbitmqctl` going to the first node.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::node::{self, Broker};

/// One node: its directory (`scripts/rabbit-node.sh` takes it) and AMQP port.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub dir: PathBuf,
    pub port: u16,
}

impl ClusterNode {
    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The Erlang node name, as queue leaders and members are reported.
    pub fn name(&self) -> String {
        std::fs::read_to_string(self.dir.join("nodename"))
            .expect("node name")
            .trim()
            .to_string()
    }
}

/// The cluster; stopped when dropped if this test started it.
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    owned: Option<tempfile::TempDir>,
    dir: PathBuf,
}

fn script(name: &str) -> Command {
    Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name),
    )
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

impl Cluster {
    /// The run's cluster, or one started now; this process's broker becomes its node list.
    pub fn start() -> Self {
        let (dir, owned) = match std::env::var_os("WARREN_TEST_CLUSTER_DIR") {
            Some(d) => (PathBuf::from(d), None),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("warren-test-cluster-")
                    .tempdir()
                    .expect("a temp dir for the cluster");
                let _ = Command::new("chmod").arg("755").arg(tmp.path()).status();
                let dir = tmp.path().join("cluster");
                run(
                    script("rabbit-cluster.sh")
                        .arg("start")
                        .arg(&dir)
                        .arg("--management"),
                    "rabbit-cluster.sh start",
                );
                (dir, Some(tmp))
            }
        };
        let nodes: Vec<ClusterNode> = (1..=3)
            .map(|i| {
                let dir = dir.join(format!("n{i}"));
                let port = std::fs::read_to_string(dir.join("port"))
                    .expect("node port")
                    .trim()
                    .parse()
                    .expect("a port");
                ClusterNode { dir, port }
            })
            .collect();
        let cluster = Self { nodes, owned, dir };
        // Every node runs and is in the cluster (an earlier test may have left one stopped).
        for i in 0..3 {
            cluster.ensure_running(i);
        }
        node::use_broker(Broker {
            url: cluster.url_list(&(0..3).collect::<Vec<_>>()),
            dir: cluster.nodes[0].dir.clone(),
            management_url: format!("http://127.0.0.1:{}", cluster.nodes[0].port + 20000),
        });
        cluster
    }

    /// guest URLs of the nodes `order`, comma-separated.
    pub fn url_list(&self, order: &[usize]) -> String {
        order
            .iter()
            .map(|&i| format!("amqp://guest:guest@{}/%2f", self.nodes[i].addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `rabbitmqctl` against node `i`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let out = script("rabbit-node.sh")
            .arg("ctl")
            .arg(&self.nodes[i].dir)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// SIGKILL node `i`'s Erlang VM: no goodbye to clients or peers.
    pub fn kill9(&self, i: usize) {
        let pid = std::fs::read_to_string(self.nodes[i].dir.join("pid")).expect("node pid file");
        let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        let addr = self.nodes[i].addr();
        while std::net::TcpStream::connect(&addr).is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Starts node `i` again (same name, port and data) after a kill; it rejoins its cluster.
    pub fn restart(&self, i: usize) {
        run(
            script("rabbit-node.sh")
                .arg("start")
                .arg(&self.nodes[i].dir)
                .arg("--port")
                .arg(self.nodes[i].port.to_string())
                .arg("--management"),
            "rabbit-node.sh start (restart)",
        );
    }

    /// Stops node `i`'s RabbitMQ application gracefully (clients are told, the node leaves).
    pub fn stop_app(&self, i: usize) {
        self.ctl(i, &["stop_app"]).expect("stop_app");
    }

    /// Starts node `i`'s application again and waits until it serves.
    pub fn start_app(&self, i: usize) {
        self.ctl(i, &["start_app"]).expect("start_app");
        self.ctl(i, &["await_startup"]).expect("await_startup");
    }

    /// Puts node `i` back if an earlier test left it killed or stopped.
    fn ensure_running(&self, i: usize) {
        if std::net::TcpStream::connect(self.nodes[i].addr()).is_ok() {
            return;
        }
        if self.ctl(i, &["status"]).is_ok() {
            self.start_app(i);
        } else {
            self.restart(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A test leaves every node running for the next one.
        for i in 0..3 {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.ensure_running(i)))
                .is_err()
            {
                eprintln!("cluster node {} could not be started again", i + 1);
            }
        }
        if self.owned.is_some() {
            let _ = script("rabbit-cluster.sh")
                .arg("stop")
                .arg(&self.dir)
                .status();
        }
    }
}
