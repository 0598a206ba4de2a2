//! Where each work queue's quorum replicas are: the leader's node, the members, and which of
//! them run. Shown under the status table when the management API names them.

use tabled::Tabled;

use super::QueueStatus;
use crate::output;

#[derive(Tabled)]
struct Row {
    queue: String,
    leader: String,
    members: String,
    online: String,
}

/// The replica table, or `None` when no queue has replicas to show (no management API, or no
/// quorum queue).
pub(super) fn render(queues: &[QueueStatus]) -> Option<String> {
    let rows: Vec<Row> = queues
        .iter()
        .filter_map(|q| {
            let r = q.replicas.as_ref()?;
            Some(Row {
                queue: q.name.clone(),
                leader: r.leader.clone().unwrap_or_else(|| "(electing)".into()),
                members: r.members.join(", "),
                online: format!("{}/{}", r.online.len(), r.members.len()),
            })
        })
        .collect();
    (!rows.is_empty()).then(|| output::table(rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{DlqDepth, Oldest, Rates, Replicas};

    fn queue(name: &str, replicas: Option<Replicas>) -> QueueStatus {
        QueueStatus {
            name: name.into(),
            ready: Some(0),
            unacked: None,
            consumers: Some(0),
            retry: vec![],
            dlq: DlqDepth {
                queue: format!("{name}.dlq"),
                ready: Some(0),
                unacked: None,
                messages: Some(0),
                oldest: Oldest::Empty,
            },
            rates: Rates::default(),
            lanes: vec![],
            owners: vec![],
            replicas,
            oldest: Oldest::Empty,
        }
    }

    #[test]
    fn each_quorum_queue_shows_its_leader_members_and_how_many_run() {
        let nodes: Vec<String> = ["rabbit@a", "rabbit@b", "rabbit@c"]
            .map(String::from)
            .into();
        let queues = [
            queue(
                "pf.trading",
                Some(Replicas {
                    leader: Some("rabbit@b".into()),
                    members: nodes.clone(),
                    online: nodes[..2].to_vec(),
                }),
            ),
            queue("pf.classic", None),
            queue(
                "pf.jobs",
                Some(Replicas {
                    leader: None,
                    members: nodes.clone(),
                    online: nodes.clone(),
                }),
            ),
        ];
        let table = render(&queues).unwrap();
        let row = |q: &str| table.lines().find(|l| l.contains(q)).unwrap().to_string();
        assert!(row("pf.trading").contains("rabbit@b") && row("pf.trading").contains("2/3"));
        assert!(row("pf.trading").contains("rabbit@a, rabbit@b, rabbit@c"));
        assert!(row("pf.jobs").contains("(electing)") && row("pf.jobs").contains("3/3"));
        assert!(!table.contains("pf.classic"));
        assert!(
            render(&queues[1..2]).is_none(),
            "no quorum figures: no table"
        );
    }
}
