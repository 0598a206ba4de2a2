//! The simulated peers the demo runs in-process: the API's and the upstream's settings (faults
//! on or off), listeners on loopback, and the API's answers the demo reads.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tokio::net::TcpListener;
use warren_sim::api::{ApiSettings, FaultRates};
use warren_sim::upstream::{self, Faults, UpstreamSettings};

use super::DemoSettings;
use crate::error::{Error, Result};

/// The sim API's settings: seeded, with faults and a little latency when asked.
pub(super) fn api_settings(settings: &DemoSettings) -> ApiSettings {
    let mut api = ApiSettings {
        seed: settings.seed,
        ..ApiSettings::default()
    };
    if settings.faults {
        api.rates = FaultRates {
            fail: 0.05,
            throttle: 0.03,
            ambiguous: 0.03,
            conflict: 0.02,
            reject: 0.02,
        };
        api.latency = Duration::from_millis(2);
    }
    api
}

/// The sim upstream's settings: seeded, with dropped connections and duplicates when asked.
pub(super) fn upstream_settings(settings: &DemoSettings, ledger: PathBuf) -> UpstreamSettings {
    let faults = if settings.faults {
        Faults {
            drop_every: Some((settings.events / 4).max(50)),
            duplicate_rate: 0.05,
            ..Faults::default()
        }
    } else {
        Faults::default()
    };
    UpstreamSettings {
        seed: settings.seed,
        rate: settings.rate,
        events: settings.events,
        start_ms: upstream::now_ms(),
        agent_id: "pf_agent_demo".into(),
        ledger: Some(ledger),
        faults,
        ..UpstreamSettings::default()
    }
}

/// A listener on a free loopback port.
pub(super) async fn bind() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| Error::Other(format!("cannot listen on 127.0.0.1: {e}")))
}

/// A listener's address, `host:port`.
pub(super) fn local(listener: &TcpListener) -> Result<String> {
    listener
        .local_addr()
        .map(|a| a.to_string())
        .map_err(|e| Error::Other(format!("listener address: {e}")))
}

/// GETs `url` and decodes its JSON.
pub(super) async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &str,
) -> Result<T> {
    let fail = |e: reqwest::Error| Error::Other(format!("GET {url}: {e}"));
    http.get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

/// `GET /stats` of the sim API.
#[derive(Deserialize)]
pub(super) struct ApiStats {
    pub(super) effects: u64,
}

/// `GET /ledger` of the sim API: every idempotency key it saw.
#[derive(Deserialize)]
pub(super) struct ApiLedger {
    pub(super) keys: Vec<ApiKey>,
}

/// One key of the ledger.
#[derive(Deserialize)]
pub(super) struct ApiKey {
    pub(super) event_id: Option<String>,
    pub(super) effects: u32,
    #[serde(default)]
    pub(super) replays: u32,
    pub(super) stored: Option<ApiStored>,
}

/// The outcome stored for a key.
#[derive(Deserialize)]
pub(super) struct ApiStored {
    pub(super) committed_at_ms: u64,
}
