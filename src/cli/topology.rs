//! `warren topology apply|show|export|delete`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{GlobalArgs, Outcome, OutputArg, TopologyArgs};
use crate::amqp;
use crate::error::{Error, Result};
use crate::output::{self, Output, OutputFormat};
use crate::topology::{self};

/// `warren topology …`
#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare everything idempotently; says what was created and what already existed.
    Apply {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
        output: OutputArg,
    },
    /// Print the resolved plan: every queue with its arguments, and every binding.
    Show {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
        output: OutputArg,
    },
    /// Write RabbitMQ definitions.json, for brokers that load definitions at boot.
    Export {
        #[command(flatten)]
        topology: TopologyArgs,
        /// The virtual host the definitions are for.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Delete every queue and exchange of the topology, with their messages.
    Delete {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Confirm: messages in these queues are lost.
        #[arg(short = 'y', long)]
        yes: bool,
    },
}

pub(super) async fn topology_command(global: &GlobalArgs, cmd: TopologyCommand) -> Result<Outcome> {
    match cmd {
        TopologyCommand::Apply { topology, output } => {
            let t = topology.load()?;
            let url = global.url()?;
            let conn = amqp::connect(&url, "topology", "admin").await?;
            let result = topology::apply(&conn, &t.plan()).await;
            amqp::close(&conn).await;
            let report = result?;
            let mut out = Output::stdout();
            match output.into() {
                OutputFormat::Table => {
                    out.text(&output::table(report.items.iter().map(|i| ApplyRow {
                        kind: i.kind,
                        name: i.name.clone(),
                        status: format!("{:?}", i.status).to_lowercase(),
                    })))?;
                    tracing::info!(
                        created = report.created(),
                        total = report.items.len(),
                        "Topology applied."
                    );
                }
                OutputFormat::Json => out.json(&report)?,
                OutputFormat::Ndjson => out.ndjson(&report.items)?,
            }
            Ok(Outcome::Success)
        }
        TopologyCommand::Show { topology, output } => {
            let plan = topology.load()?.plan();
            let mut out = Output::stdout();
            match output.into() {
                OutputFormat::Table => {
                    let mut rows: Vec<ShowRow> = plan
                        .exchanges
                        .iter()
                        .map(|e| ShowRow {
                            object: "exchange".into(),
                            name: e.name.clone(),
                            details: std::iter::once(e.kind.to_string())
                                .chain(e.arguments.iter().map(|(k, v)| format!("{k}={v}")))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        })
                        .collect();
                    rows.extend(plan.queues.iter().map(|q| {
                        ShowRow {
                            object: format!(
                                "queue ({})",
                                serde_json::to_value(q.role)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_string))
                                    .unwrap_or_default()
                            ),
                            name: q.name.clone(),
                            details: q
                                .arguments
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        }
                    }));
                    rows.extend(plan.bindings.iter().map(|b| {
                        ShowRow {
                            object: if b.to_exchange {
                                "binding (exchange)".into()
                            } else {
                                "binding".into()
                            },
                            name: format!("{} -> {}", b.exchange, b.queue),
                            details: std::iter::once(b.routing_key.clone())
                                .filter(|k| !k.is_empty())
                                .chain(b.arguments.iter().map(|(k, v)| format!("{k}={v}")))
                                .collect::<Vec<_>>()
                                .join("\n"),
                        }
                    }));
                    out.text(&output::table(rows))?;
                }
                OutputFormat::Json => out.json(&plan)?,
                OutputFormat::Ndjson => out.ndjson(&plan.queues)?,
            }
            Ok(Outcome::Success)
        }
        TopologyCommand::Export {
            topology,
            vhost,
            out,
        } => {
            let defs = topology.load()?.plan().definitions(&vhost);
            let mut out = match out {
                Some(path) => Output::create(&path)?,
                None => Output::stdout(),
            };
            out.json(&defs)?;
            out.finish()?;
            Ok(Outcome::Success)
        }
        TopologyCommand::Delete { topology, yes } => {
            if !yes {
                return Err(Error::Usage(
                    "topology delete removes every queue with its messages; pass -y to confirm"
                        .into(),
                ));
            }
            let t = topology.load()?;
            let conn = amqp::connect(&global.url()?, "topology", "admin").await?;
            let result = topology::delete(&conn, &t.plan()).await;
            amqp::close(&conn).await;
            let deleted = result?;
            tracing::info!(deleted, "Topology deleted.");
            Ok(Outcome::Success)
        }
    }
}

#[derive(tabled::Tabled)]
struct ApplyRow {
    kind: &'static str,
    name: String,
    status: String,
}

#[derive(tabled::Tabled)]
struct ShowRow {
    object: String,
    name: String,
    details: String,
}
