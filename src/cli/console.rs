//! `warren console`: its flags, turned into [`ConsoleSettings`]; the listener is bound here.

use std::time::Duration;

use clap::Args;

use super::{GlobalArgs, Outcome, TopologyArgs, signals};
use crate::console::{self, ChangeToken, ConsoleSettings};
use crate::error::{Error, Result};
use crate::status::Management;

/// The environment variable holding the token that changes need.
const TOKEN_ENV: &str = "WARREN_CONSOLE_TOKEN";

/// `warren console`
#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// Address to serve on, e.g. 127.0.0.1:8080 (port 0 picks a free port; the address is
    /// logged). /metrics and /healthz are served there too.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Allow replays and purges. Needs WARREN_CONSOLE_TOKEN (16+ characters): operators sign
    /// in with it. Without this flag the console is read-only and refuses every change.
    #[arg(long)]
    pub allow_changes: bool,
    /// RabbitMQ management API, for unacked counts, rates and the oldest dead letter's age.
    /// Its user and password are the AMQP URL's unless this URL has its own; neither is shown.
    #[arg(
        long,
        env = "RABBITMQ_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// How often live pages get new figures.
    #[arg(long, value_name = "INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub refresh: Duration,
    /// Dead letters on one page.
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub page_size: u16,
}

pub(super) async fn console_command(global: &GlobalArgs, args: ConsoleArgs) -> Result<Outcome> {
    let url = global.url()?;
    let topology = args.topology.load()?;
    let management =
        Management::new(&args.management_url, &url).map_err(|e| Error::Usage(e.to_string()))?;
    let changes = if args.allow_changes {
        let token = std::env::var(TOKEN_ENV).map_err(|_| {
            Error::Usage(format!(
                "--allow-changes needs {TOKEN_ENV}: the token operators sign in with"
            ))
        })?;
        Some(ChangeToken::new(token).map_err(|e| Error::Usage(format!("{TOKEN_ENV}: {e}")))?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| Error::Usage(format!("--listen {}: {e}", args.listen)))?;
    let shutdown = signals::on_signals();
    let settings = ConsoleSettings {
        url,
        topology,
        management: Some(management),
        changes,
        refresh: args.refresh,
        page_size: args.page_size.into(),
    };
    console::run(settings, listener, shutdown).await?;
    Ok(Outcome::Success)
}
