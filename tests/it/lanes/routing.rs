//! Where an event goes among the lanes, with no worker running: a keyed event to the one lane
//! its key hashes to, a keyless event to every lane of the laned queues that bind its type,
//! and nothing to the lanes of a laned queue that does not bind it.

use std::collections::BTreeMap;

use warren::topology::lanes::{lane_header, lane_of};

use super::{lane_queues, publish_laned};
use crate::support::{self, TestTopology};

const TOPOLOGY: &str = r#"
[exchanges]
events = "ev"
dead_letter = "ev.dlx"

[defaults]
queue_type = "quorum"
max_attempts = 3
retry_delays = ["1s"]
expires = "10m"

[[queues]]
name = "orders"
bind = ["trade.*", "w.low"]
lanes = 8
lane_key = "payload.pair"

[[queues]]
name = "agents"
bind = ["trade.*"]
lanes = 4
"#;

/// Lane → the message ids it holds (drained), for every lane of `queue`.
async fn drain_lanes(
    conn: &lapin::Connection,
    queue: &str,
    lanes: u16,
) -> BTreeMap<usize, Vec<lapin::message::Delivery>> {
    let mut out = BTreeMap::new();
    for (i, q) in lane_queues(queue, lanes).iter().enumerate() {
        out.insert(i, super::drain_lane(conn, q).await);
    }
    out
}

fn ids(ds: &[lapin::message::Delivery]) -> Vec<String> {
    ds.iter()
        .map(|d| d.properties.message_id().as_ref().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn an_event_without_the_key_goes_to_every_lane_and_a_keyed_one_to_its_lane() {
    let t = TestTopology::new("lanes-unkeyed", TOPOLOGY);
    let conn = support::connect().await;
    t.apply(&conn).await;
    let (orders, agents) = (t.queue("orders"), t.queue("agents"));

    let low = support::envelope("w.low", serde_json::json!({"balance": 3}));
    let fill = support::envelope(
        "trade.fill",
        serde_json::json!({"pair": "ETH-USD", "seq": 0}),
    );
    publish_laned(&conn, &t.topology, &[low.clone(), fill.clone()]).await;

    // orders: the keyless w.low in each of its 8 lanes, the fill only in ETH-USD's lane.
    let want = usize::from(lane_of("ETH-USD", 8));
    support::eventually(
        std::time::Duration::from_secs(5),
        "orders' lanes hold 8 + 1 messages",
        || async {
            let mut n = 0;
            for q in lane_queues(&orders, 8) {
                n += support::queue_len(&conn, &q).await;
            }
            n == 9
        },
    )
    .await;
    for (lane, got) in drain_lanes(&conn, &orders, 8).await {
        let mut expected = vec![low.0.clone()];
        if lane == want {
            expected.push(fill.0.clone());
        }
        assert_eq!(ids(&got), expected, "{orders} lane {lane}");
        // The keyless copy carries no lane header for this queue; the keyed one names its lane.
        for d in &got {
            let header = warren::amqp::header_str(&d.properties, &lane_header(&orders));
            if d.properties.message_id().as_ref().unwrap().as_str() == fill.0 {
                assert_eq!(header, Some(want.to_string().as_str()));
            } else {
                assert_eq!(header, None);
            }
        }
    }

    // agents (lanes by agentId, binds trade.* only): the fill in its agent's lane, no w.low.
    let agent_lane = usize::from(lane_of("pf_agent_test", 4));
    for (lane, got) in drain_lanes(&conn, &agents, 4).await {
        let expected = if lane == agent_lane {
            vec![fill.0.clone()]
        } else {
            vec![]
        };
        assert_eq!(ids(&got), expected, "{agents} lane {lane}");
    }
    // And nothing was unrouted.
    assert_eq!(
        support::queue_len(&conn, &t.topology.unrouted_queue()).await,
        0
    );
    t.cleanup(&conn).await;
}
