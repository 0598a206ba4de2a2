//! Where each replicated queue's leader is once `apply` has declared it: asked of the
//! management API (AMQP cannot tell), and said to be unknown, with why, when it does not answer.

use super::declare::ApplyReport;
use super::plan::{Arg, Plan};
use crate::status::{Management, ManagementError};

/// Fills in the leader of every quorum queue and stream in `report`. The first failure of the
/// management API leaves every leader unknown and says why in `report.leaders_unknown`.
pub async fn locate_leaders(report: &mut ApplyReport, plan: &Plan, management: &Management) {
    let replicated = |name: &str| {
        plan.queues.iter().any(|q| {
            q.name == name
                && matches!(
                    q.arguments.get("x-queue-type"),
                    Some(Arg::Str(t)) if t == "quorum" || t == "stream"
                )
        })
    };
    let mut problem: Option<ManagementError> = None;
    for item in report.items.iter_mut() {
        if item.kind != "queue" || !replicated(&item.name) {
            continue;
        }
        item.leader = Some(None);
        if problem.is_some() {
            continue;
        }
        match management.figures(&item.name).await {
            Ok(figures) => {
                item.leader = Some(figures.and_then(|f| f.replicas).and_then(|r| r.leader));
            }
            Err(e) => problem = Some(e),
        }
    }
    report.leaders_unknown = problem.map(|e| match e {
        ManagementError::Unavailable { url, reason } => {
            format!("management API not reachable: {url}: {reason}")
        }
        other => format!("management API not reachable: {other}"),
    });
}
