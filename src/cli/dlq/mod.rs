//! `warren dlq …`: the subcommands and the flags they share. Reading commands are in
//! [`read`], the ones that change the DLQs in [`change`]; the work is in [`crate::dlq`].

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use super::{GlobalArgs, Outcome, TopologyArgs};
use crate::dlq::{self, DlqRef, Filter, Kind};
use crate::error::{Error, Result};

mod change;
mod read;

pub use change::{PurgeArgs, ReplayArgs};
pub use read::{ExportArgs, ListArgs, ShowArgs, StatsArgs};

/// `warren dlq …`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with why they failed. Non-destructive: order and counts are unchanged.
    List(ListArgs),
    /// Print one dead letter: properties, headers, x-death and the pretty-printed body.
    Show(ShowArgs),
    /// Count dead letters by origin queue, kind, event type and error fingerprint.
    Stats(StatsArgs),
    /// Send dead letters back to the queue they failed in, attempts reset. Safe to kill.
    Replay(ReplayArgs),
    /// Delete dead letters. Asks on a terminal; refuses without -y otherwise.
    Purge(PurgeArgs),
    /// Write dead letters as NDJSON (explanation, properties, headers, body). Non-destructive.
    Export(ExportArgs),
}

/// Runs a `dlq` command.
pub(super) async fn dlq_command(global: &GlobalArgs, cmd: DlqCommand) -> Result<Outcome> {
    let url = global.url()?;
    match cmd {
        DlqCommand::List(args) => read::list(&url, args).await,
        DlqCommand::Show(args) => read::show(&url, args).await,
        DlqCommand::Stats(args) => read::stats(&url, args).await,
        DlqCommand::Export(args) => read::export(&url, args).await,
        DlqCommand::Replay(args) => change::replay(&url, args).await,
        DlqCommand::Purge(args) => change::purge(&url, args).await,
    }
}

/// Which DLQs a command reads.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// A work queue of the topology (its DLQ is read) or a DLQ's name. Repeat for several.
    #[arg(short = 'q', long = "queue", value_name = "QUEUE")]
    pub queues: Vec<String>,
    /// Every DLQ of the topology, including the bridge's `<events exchange>.dlq`. The default
    /// for list, show, stats and export; replay and purge need -q or --all.
    #[arg(long, conflicts_with = "queues")]
    pub all: bool,
}

impl Selection {
    /// The DLQs to read; `explicit` commands (replay, purge) refuse to default to all.
    fn resolve(&self, explicit: bool) -> Result<Vec<DlqRef>> {
        if explicit && !self.all && self.queues.is_empty() {
            return Err(Error::Usage(
                "choose the DLQs: -q QUEUE (repeatable) or --all".into(),
            ));
        }
        let topology = self.topology.load()?;
        Ok(dlq::resolve(&topology, &self.queues)?)
    }
}

/// The common filters.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this event type, or a topic pattern such as `wallet.*` or `escrow.#`. Repeat for several.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only this kind (see the README's kind table). Repeat for several.
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    pub kinds: Vec<KindArg>,
    /// Only dead letters whose id, type, agent, error or body contains TEXT (ignoring case).
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Only dead letters whose last failure is within this long ago: 90s, 30m, 1h, 2d.
    #[arg(long, value_name = "AGE", value_parser = humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Act on at most N matching dead letters (the first N in queue order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            types: self.types.clone(),
            kinds: self.kinds.iter().map(|&k| k.into()).collect(),
            grep: self.grep.as_ref().map(|g| g.to_lowercase()),
            limit: self.limit,
            ..Filter::default()
        }
        .since_ago(self.since)
    }
}

/// `--kind`, as clap parses it; see [`Kind`] (the names are [`Kind::as_str`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum KindArg {
    /// The worker: the handler said retrying cannot help.
    Permanent,
    /// The worker: every attempt failed.
    Exhausted,
    /// The worker or the bridge: not a valid envelope.
    Invalid,
    /// The worker dead-lettered it while still retrying (should not happen; shown as found).
    Transient,
    /// The broker: delivered too many times without an ack (the worker crashed or lost its
    /// connection while handling it).
    #[value(alias = "delivery-limit")]
    DeliveryLimit,
    /// The broker: its TTL ran out before a worker took it.
    Expired,
    /// The broker: the queue was over its length limit.
    Maxlen,
    /// The broker: a consumer rejected it without requeue.
    Rejected,
    /// The bridge published it and no queue binds its routing key: the events exchange's
    /// alternate exchange kept it in `<events>.unrouted`.
    Unroutable,
    /// Neither warren's headers nor `x-death` explain it.
    Unknown,
}

impl From<KindArg> for Kind {
    fn from(arg: KindArg) -> Self {
        match arg {
            KindArg::Permanent => Kind::Permanent,
            KindArg::Exhausted => Kind::Exhausted,
            KindArg::Invalid => Kind::Invalid,
            KindArg::Transient => Kind::Transient,
            KindArg::DeliveryLimit => Kind::DeliveryLimit,
            KindArg::Expired => Kind::Expired,
            KindArg::Maxlen => Kind::Maxlen,
            KindArg::Rejected => Kind::Rejected,
            KindArg::Unroutable => Kind::Unroutable,
            KindArg::Unknown => Kind::Unknown,
        }
    }
}

/// `1 DLQ`, `3 DLQs`.
fn dlq_count(n: usize) -> String {
    if n == 1 {
        "1 DLQ".into()
    } else {
        format!("{n} DLQs")
    }
}

#[cfg(test)]
mod tests {
    use super::KindArg;
    use crate::dlq::Kind;
    use clap::ValueEnum;

    #[test]
    fn every_kind_is_accepted_by_the_name_it_is_shown_with() {
        for arg in KindArg::value_variants() {
            let kind = Kind::from(*arg);
            let name = arg.to_possible_value().map(|v| v.get_name().to_string());
            assert_eq!(name.as_deref(), Some(kind.as_str()));
        }
        assert_eq!(
            KindArg::from_str("delivery-limit", false),
            Ok(KindArg::DeliveryLimit)
        );
    }
}
