//! `warren status`: its flags, turned into [`StatusSettings`].

use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::{GlobalArgs, Outcome, OutputArg, TopologyArgs, signals};
use crate::error::{Error, Result};
use crate::status::{self, Management, StatusSettings};

/// `warren status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// RabbitMQ management API, for unacked counts (plugin rabbitmq_management). Its user and
    /// password are the AMQP URL's unless this URL has its own; neither is printed.
    #[arg(
        long,
        env = "RABBITMQ_MANAGEMENT_URL",
        default_value = "http://127.0.0.1:15672"
    )]
    pub management_url: String,
    /// Redraw every INTERVAL (default 2s) until Ctrl-C.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s",
          value_parser = humantime::parse_duration)]
    pub watch: Option<Duration>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputArg::Table)]
    pub output: OutputArg,
}

pub(super) async fn status_command(global: &GlobalArgs, args: StatusArgs) -> Result<Outcome> {
    let url = global.url()?;
    let topology = args.topology.load()?;
    let management =
        Management::new(&args.management_url, &url).map_err(|e| Error::Usage(e.to_string()))?;
    // Without --watch, Ctrl-C keeps its default: stop the process at once.
    let shutdown = match args.watch {
        Some(_) => signals::on_signals(),
        None => CancellationToken::new(),
    };
    let settings = StatusSettings {
        url,
        topology,
        management,
        watch: args.watch,
        output: args.output.into(),
    };
    status::run(settings, shutdown).await?;
    Ok(Outcome::Success)
}
