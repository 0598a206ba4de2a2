//! Worker-test fixtures: the chaos handler's record file, spawning the `warren worker` binary
//! with it, waiting for events to be handled, and a recording proxy on its consuming connection.

use std::collections::BTreeSet;
use std::time::Duration;

use super::proxy::{Method, Proxy};
use super::{TestTopology, Warren, eventually};

/// One line of the chaos handler's record file.
#[derive(Debug, Clone)]
pub struct Call {
    pub id: String,
    pub attempt: u32,
    pub outcome: String,
    pub at_ms: u64,
    /// The queue that dead-lettered the delivery back (its retry tier), `-` on a first delivery.
    pub returned_from: String,
}

/// Every finished handler call, in order.
pub fn calls(t: &TestTopology) -> Vec<Call> {
    records(t)
        .into_iter()
        .filter(|c| c.outcome != "start")
        .collect()
}

/// Handler calls started so far.
pub fn started(t: &TestTopology) -> usize {
    records(t).iter().filter(|c| c.outcome == "start").count()
}

/// Every line of the record file, starts included.
pub fn records(t: &TestTopology) -> Vec<Call> {
    std::fs::read_to_string(t.dir().join("record"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Call {
                id: f[0].into(),
                attempt: f[1].parse().unwrap(),
                outcome: f[2].into(),
                at_ms: f[3].parse().unwrap(),
                returned_from: f[4].into(),
            }
        })
        .collect()
}

/// Ids of the events handled ok, in order.
pub fn ok_ids(t: &TestTopology) -> Vec<String> {
    calls(t)
        .into_iter()
        .filter(|c| c.outcome == "ok")
        .map(|c| c.id)
        .collect()
}

/// Starts `warren worker --handler chaos` on `queues`, recording into the topology's directory.
pub fn worker(t: &TestTopology, queues: &[&str], extra: &[&str], log: &str) -> Warren {
    worker_with(t, queues, extra, log, &[])
}

/// [`worker`] with extra environment variables.
pub fn worker_with(
    t: &TestTopology,
    queues: &[&str],
    extra: &[&str],
    log: &str,
    envs: &[(&str, &str)],
) -> Warren {
    let mut args: Vec<String> = vec!["worker".into(), "--handler".into(), "chaos".into()];
    args.extend(t.args());
    for q in queues {
        args.extend(["-q".into(), q.to_string()]);
    }
    args.extend([
        "--record".into(),
        t.dir().join("record").display().to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    Warren::spawn(&args, &t.dir().join(log), envs)
}

/// Waits until every one of `ids` was handled ok.
pub async fn wait_done(t: &TestTopology, ids: &[String], timeout: Duration) {
    let want: BTreeSet<_> = ids.iter().cloned().collect();
    eventually(timeout, "every event handled ok", || {
        let got: BTreeSet<_> = ok_ids(t).into_iter().collect();
        let done = want.is_subset(&got);
        async move { done }
    })
    .await;
}

/// A proxy that records the AMQP methods both ways, and its URL for a worker.
pub async fn recording_proxy() -> (Proxy, String) {
    let proxy = Proxy::start_recording(
        super::url()
            .host_port()
            .parse()
            .expect("broker host:port is an address"),
    )
    .await;
    let url = proxy.amqp_url(10);
    (proxy, url)
}

/// The methods on the worker's consuming connection (the one that sent `basic.consume`).
pub fn consuming(proxy: &Proxy) -> Vec<Method> {
    proxy
        .methods()
        .into_iter()
        .find(|methods| methods.iter().any(Method::is_consume))
        .expect("the consuming connection went through the proxy")
}
