//! `warren bridge`: WebSocket and webhook ingress onto the events exchange.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{GlobalArgs, Outcome, TopologyArgs, signals};
use crate::error::{Error, Result};

/// `warren bridge …`
#[derive(Debug, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub topology: TopologyArgs,
    /// The upstream event stream, ws:// or wss://. The key comes from PF_AGENT_KEY, the agent
    /// id from PF_AGENT_ID; neither is ever logged.
    #[arg(long)]
    pub url: Option<String>,
    /// Topics to subscribe to: event types or `domain.*`, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', default_values_t = crate::bridge::upstream::DEFAULT_TOPICS.map(String::from))]
    pub topics: Vec<String>,
    /// Where the resume cursor is kept (last eventId confirmed with everything before it).
    /// Without it, a restart resumes from the latest events.
    #[arg(long)]
    pub cursor_file: Option<PathBuf>,
    /// Publishes awaiting their broker confirm at most; also bounds the frames held in memory.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_535))]
    pub confirm_window: u32,
    /// Deadline for connecting to the upstream (TCP, TLS and WebSocket handshake).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// How often to ping the upstream.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// No frame (event or pong) for this long means a dead connection: reconnect.
    #[arg(long, default_value = "45s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// No event for this long (pongs do not count): warn, resubscribe from the cursor and
    /// report not ready until events flow again. `0` or `off` turns it off.
    #[arg(long, default_value = "30s", value_parser = parse_silence_timeout)]
    pub silence_timeout: Duration,
    /// How often the cursor file is rewritten (also every --confirm-window events and on exit).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub cursor_flush_interval: Duration,
    /// How long SIGTERM waits for outstanding confirms before persisting the cursor and exiting.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Accept signed webhooks (POST /webhooks/events) on this address, e.g. 0.0.0.0:8080.
    #[arg(long, requires = "webhook_secret_file")]
    pub webhook_listen: Option<String>,
    /// Webhook signing secrets, one per line (`whsec_<base64>` or raw); any of them verifies.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// The largest webhook body accepted, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub webhook_max_body: usize,
    /// Accepted skew of `webhook-timestamp` from our clock.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub webhook_tolerance: Duration,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9090); the
    /// bound address is logged as `Serving /metrics… addr=…` (use port 0 to pick a free one).
    #[arg(long, env = "WARREN_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
}

/// A duration, or `0`/`off` for none.
fn parse_silence_timeout(s: &str) -> std::result::Result<Duration, String> {
    match s.trim() {
        "0" | "off" => Ok(Duration::ZERO),
        d => humantime::parse_duration(d).map_err(|e| format!("{e} (or `off`)")),
    }
}

pub(super) async fn bridge_command(global: &GlobalArgs, args: BridgeArgs) -> Result<Outcome> {
    let mut settings = crate::bridge::BridgeSettings::new(global.url()?, args.topology.load()?);
    if let Some(url) = args.url {
        let env = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| Error::Usage(format!("{name} must be set when --url is given")))
        };
        settings.upstream = Some(crate::bridge::UpstreamSettings {
            url,
            topics: args.topics,
            agent_key: env("PF_AGENT_KEY")?,
            agent_id: env("PF_AGENT_ID")?,
        });
    }
    if let Some(addr) = args.webhook_listen {
        let path = args.webhook_secret_file.unwrap_or_default();
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        let secrets = crate::bridge::webhook::parse_secrets(&text)
            .map_err(|e| Error::Usage(format!("{}: {e}", path.display())))?;
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Usage(format!("--webhook-listen {addr}: {e}")))?;
        settings.webhook = Some(crate::bridge::WebhookSettings {
            listener,
            secrets,
            max_body: args.webhook_max_body,
            tolerance: args.webhook_tolerance,
        });
    }
    settings.cursor_file = args.cursor_file;
    settings.confirm_window = args.confirm_window as usize;
    settings.connect_timeout = args.connect_timeout;
    settings.ping_interval = args.ping_interval;
    settings.idle_timeout = args.idle_timeout;
    settings.silence_timeout = args.silence_timeout;
    settings.cursor_flush_interval = args.cursor_flush_interval;
    settings.shutdown_timeout = args.shutdown_timeout;
    let shutdown = signals::on_signals();
    let stats = Arc::new(crate::bridge::Stats::default());
    if let Some(addr) = &args.metrics_listen {
        let mut registry = prometheus_client::registry::Registry::default();
        crate::bridge::BridgeMetrics::new(stats.clone()).register(&mut registry);
        crate::metrics::spawn(addr, registry, stats.ready.clone(), shutdown.clone())
            .await
            .map_err(|e| Error::Usage(format!("--metrics-listen {addr}: {e}")))?;
    }
    crate::bridge::run(settings, stats, shutdown).await?;
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_timeout_takes_a_duration_or_off() {
        assert_eq!(parse_silence_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_silence_timeout("0"), Ok(Duration::ZERO));
        assert_eq!(parse_silence_timeout("off"), Ok(Duration::ZERO));
        assert!(parse_silence_timeout("soon").unwrap_err().contains("off"));
    }
}
