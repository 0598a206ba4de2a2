//! `warren topology apply|show|export|delete`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{GlobalArgs, Outcome, OutputArg, TopologyArgs};
use crate::amqp;
use crate::error::{Error, Result};
use crate::output::{self, Output, OutputFormat};
use crate::status::Management;
use crate::topology::{self};

/// `warren topology …`
#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare everything idempotently; says what was created and what already existed, and
    /// on which node each quorum queue's leader is.
    Apply {
        #[command(flatten)]
        topology: TopologyArgs,
        /// RabbitMQ management API (any node's), for where each quorum queue's leader is; its
        /// user and password are the AMQP URL's unless this URL has its own. Without it the
        /// leaders show as unknown.
        #[arg(
            long,
            env = "RABBITMQ_MANAGEMENT_URL",
            default_value = "http://127.0.0.1:15672"
        )]
        management_url: String,
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
        TopologyCommand::Apply {
            topology,
            management_url,
            output,
        } => {
            let t = topology.load()?;
            let url = global.url()?;
            let management =
                Management::new(&management_url, &url).map_err(|e| Error::Usage(e.to_string()))?;
            let plan = t.plan();
            let conn = amqp::connect(&url, "topology", "admin").await?;
            let result = topology::apply(&conn, &plan).await;
            amqp::close(&conn).await;
            let mut report = result?;
            topology::locate_leaders(&mut report, &plan, &management).await;
            let mut out = Output::stdout();
            match output.into() {
                OutputFormat::Table => {
                    let mut text = output::table(report.items.iter().map(|i| ApplyRow {
                        kind: i.kind,
                        name: i.name.clone(),
                        status: format!("{:?}", i.status).to_lowercase(),
                        leader: match &i.leader {
                            None => String::new(),
                            Some(Some(node)) => node.clone(),
                            Some(None) => "unknown".into(),
                        },
                    }));
                    if let Some(why) = &report.leaders_unknown {
                        text.push_str(&format!("\nleader: unknown ({why})"));
                    }
                    out.text(&text)?;
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
    leader: String,
}

#[derive(tabled::Tabled)]
struct ShowRow {
    object: String,
    name: String,
    details: String,
}
