//! `dlq show --check-status`: whether a dead letter's effect is done downstream after all, asked
//! of the `http` handler's status endpoint by the key that handler uses for the event.

use serde::Serialize;

use super::{Body, Detail};
use crate::envelope::idempotency_key;
use crate::handlers::http::{HttpHandler, effect_status};
use crate::http::HttpClient;
use crate::worker::EffectStatus;

/// What the status check found for one dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EffectCheck {
    /// The idempotency key asked about.
    pub key: String,
    /// `done`, `not_done` or `unknown`.
    pub status: &'static str,
    /// What the endpoint answered, when not done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl EffectCheck {
    fn new(key: String, found: EffectStatus) -> Self {
        let (status, detail) = match found {
            EffectStatus::Done => ("done", None),
            EffectStatus::NotDone(why) => ("not_done", Some(why)),
            EffectStatus::Unknown(why) => ("unknown", Some(why)),
        };
        Self {
            key,
            status,
            detail,
        }
    }

    /// One line for `show`'s table.
    pub fn describe(&self) -> String {
        match (self.status, &self.detail) {
            ("done", _) => {
                "done downstream (status check by key): replaying changes nothing".into()
            }
            ("not_done", Some(why)) => format!("not done downstream (status check: {why})"),
            (_, Some(why)) => format!("unknown (status check: {why})"),
            (status, None) => status.into(),
        }
    }
}

/// Asks `client`'s status endpoint about each dead letter that carries an event id.
pub async fn check_effects(client: &HttpClient, found: &mut [Detail]) {
    for detail in found {
        let Some(event_id) = event_id(detail) else {
            continue;
        };
        let key = idempotency_key(&event_id, HttpHandler::NAME, HttpHandler::STEP);
        let status = effect_status(client, &key).await;
        detail.effect = Some(EffectCheck::new(key, status));
    }
}

/// The envelope's `eventId`, else the `message_id` (the same, by the wire contract).
fn event_id(detail: &Detail) -> Option<String> {
    match &detail.body {
        Body::Json(v) => v
            .get("eventId")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        _ => None,
    }
    .or_else(|| detail.letter.id.clone())
}
