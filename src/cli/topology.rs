//! `warren topology apply|show|export|delete`.

use std::path::PathBuf;

use clap::Subcommand;

use super::{GlobalArgs, TopologyArgs, stdout_error};
use crate::amqp;
use crate::error::{Error, Result};
use crate::output::{self, OutputFormat};
use crate::topology::{self};

/// `warren topology …`
#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Declare everything idempotently; says what was created and what already existed.
    Apply {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print the resolved plan: every queue with its arguments, and every binding.
    Show {
        #[command(flatten)]
        topology: TopologyArgs,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
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

pub(super) async fn topology_command(global: &GlobalArgs, cmd: TopologyCommand) -> Result<u8> {
    match cmd {
        TopologyCommand::Apply { topology, output } => {
            let t = topology.load()?;
            let url = global.url()?;
            let conn = amqp::connect(&url, "topology", "admin").await?;
            let result = topology::apply(&conn, &t.plan()).await;
            amqp::close(&conn).await;
            let report = result?;
            match output {
                OutputFormat::Table => {
                    output::print_text(&output::table(report.items.iter().map(|i| ApplyRow {
                        kind: i.kind,
                        name: i.name.clone(),
                        status: format!("{:?}", i.status).to_lowercase(),
                    })))
                    .map_err(stdout_error)?;
                    tracing::info!(
                        created = report.created(),
                        total = report.items.len(),
                        "Topology applied."
                    );
                }
                OutputFormat::Json => output::print_json(&report).map_err(stdout_error)?,
                OutputFormat::Ndjson => {
                    output::print_ndjson(&report.items).map_err(stdout_error)?
                }
            }
            Ok(0)
        }
        TopologyCommand::Show { topology, output } => {
            let plan = topology.load()?.plan();
            match output {
                OutputFormat::Table => {
                    let mut rows: Vec<ShowRow> = plan
                        .exchanges
                        .iter()
                        .map(|e| ShowRow {
                            object: "exchange".into(),
                            name: e.name.clone(),
                            details: e.kind.to_string(),
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
                    rows.extend(plan.bindings.iter().map(|b| ShowRow {
                        object: "binding".into(),
                        name: format!("{} -> {}", b.exchange, b.queue),
                        details: b.routing_key.clone(),
                    }));
                    output::print_text(&output::table(rows)).map_err(stdout_error)?;
                }
                OutputFormat::Json => output::print_json(&plan).map_err(stdout_error)?,
                OutputFormat::Ndjson => output::print_ndjson(&plan.queues).map_err(stdout_error)?,
            }
            Ok(0)
        }
        TopologyCommand::Export {
            topology,
            vhost,
            out,
        } => {
            let defs = topology.load()?.plan().definitions(&vhost);
            let text =
                serde_json::to_string_pretty(&defs).map_err(|e| Error::Other(e.to_string()))?;
            match out {
                Some(path) => std::fs::write(&path, text + "\n")
                    .map_err(|source| Error::Io { path, source })?,
                None => output::print_text(&text).map_err(stdout_error)?,
            }
            Ok(0)
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
            Ok(0)
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
