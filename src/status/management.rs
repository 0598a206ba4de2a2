//! The RabbitMQ management HTTP API, for the one figure AMQP cannot give: unacked messages.
//! Credentials come from the management URL or else the AMQP URL, and are never printed.

use std::time::Duration;

use serde::Deserialize;

use crate::amqp::{AmqpUrl, redact};

/// Deadline for one management request; stats are a nicety, `status` must not hang on them.
const TIMEOUT: Duration = Duration::from_secs(3);

/// A client for one broker's management API.
pub struct Management {
    client: reqwest::Client,
    base: url::Url,
    user: String,
    password: String,
    vhost: String,
}

/// Why the management API gave no figure.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    /// The flag's value is not an http(s) URL.
    #[error("--management-url / RABBITMQ_MANAGEMENT_URL: {0}")]
    Url(String),
    /// The request failed or was refused.
    #[error("management API at {url}: {reason}")]
    Unavailable {
        /// The base URL, password redacted.
        url: String,
        /// Why.
        reason: String,
    },
}

#[derive(Deserialize)]
struct QueueInfo {
    messages_unacknowledged: Option<u64>,
    messages: Option<u64>,
    #[serde(default)]
    consumer_details: Vec<ConsumerInfo>,
    #[serde(default)]
    message_stats: Option<MessageStats>,
    #[serde(default)]
    head_message_timestamp: Option<u64>,
    /// Bytes of the messages held (not every queue type reports it).
    #[serde(default)]
    message_bytes: Option<u64>,
    /// A stream's segment files.
    #[serde(default)]
    segments: Option<u64>,
    /// Quorum queues: the node of the leader, every member's node, the members that run.
    #[serde(default)]
    leader: Option<String>,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    online: Vec<String>,
}

#[derive(Deserialize)]
struct MessageStats {
    publish_details: Option<Rate>,
    ack_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Rate {
    rate: f64,
}

#[derive(Deserialize)]
struct ConsumerInfo {
    #[serde(default)]
    active: Option<bool>,
    #[serde(default)]
    consumer_tag: Option<String>,
}

/// What the management API says of one queue.
#[derive(Debug, Clone, Default)]
pub struct QueueFigures {
    /// Delivered, not yet acked; `None` when the broker has no figure yet.
    pub unacked: Option<u64>,
    /// Ready plus unacked, of the same sample as `unacked`.
    pub messages: Option<u64>,
    /// The active consumer's tag (a warren worker's is `warren-<host:pid>-<queue>`), if any.
    pub active: Option<String>,
    /// Messages published to the queue per second (the broker's recent average).
    pub publish_rate: Option<f64>,
    /// Messages acked from the queue per second.
    pub ack_rate: Option<f64>,
    /// The `timestamp` property (seconds) of the message at the head; classic queues only.
    pub head_timestamp: Option<u64>,
    /// A quorum queue's replicas: which node leads, where its members are, which of them run.
    pub replicas: Option<Replicas>,
    /// Bytes of the messages held, when the queue type reports it.
    pub bytes: Option<u64>,
    /// A stream's segment files.
    pub segments: Option<u64>,
}

/// Where a quorum queue's replicas are: its leader's node, its members' and the running ones'.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Replicas {
    /// The node of the leader; `None` while an election runs.
    pub leader: Option<String>,
    /// Every member's node, sorted.
    pub members: Vec<String>,
    /// The members that run, sorted.
    pub online: Vec<String>,
}

impl Management {
    /// A client for `management_url`, authenticating as the URL's user or the AMQP URL's.
    pub fn new(management_url: &str, amqp: &AmqpUrl) -> Result<Self, ManagementError> {
        let mut base = url::Url::parse(management_url)
            .map_err(|e| ManagementError::Url(format!("{}: {e}", redact(management_url))))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ManagementError::Url(format!(
                "{}: the scheme must be http or https",
                redact(management_url)
            )));
        }
        let (amqp_user, amqp_password) = amqp.credentials();
        let (user, password) = if base.username().is_empty() {
            (amqp_user.to_string(), amqp_password.to_string())
        } else {
            let decode = |s: &str| percent_decode(s);
            (
                decode(base.username()),
                decode(base.password().unwrap_or("")),
            )
        };
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| ManagementError::Url(e.to_string()))?;
        Ok(Self {
            client,
            base,
            user,
            password,
            vhost: amqp.vhost().to_string(),
        })
    }

    /// The base URL as shown to people (never with credentials).
    pub fn shown(&self) -> String {
        self.base.to_string()
    }

    /// Unacked messages of `queue`; `Ok(None)` when the queue does not exist or the broker has
    /// no figure yet (stats lag a few seconds).
    pub async fn unacked(&self, queue: &str) -> Result<Option<u64>, ManagementError> {
        Ok(self.figures(queue).await?.and_then(|f| f.unacked))
    }

    /// Unacked messages and the active consumer of `queue`; `Ok(None)` when it does not exist.
    pub async fn figures(&self, queue: &str) -> Result<Option<QueueFigures>, ManagementError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|_| ManagementError::Url(format!("{} cannot be a base URL", self.shown())))?
            .pop_if_empty()
            .extend(["api", "queues", &self.vhost, queue]);
        let fail = |reason: String| ManagementError::Unavailable {
            url: self.shown(),
            reason,
        };
        let response = self
            .client
            .get(url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(|e| fail(plain_reason(&e)))?;
        match response.status() {
            s if s.is_success() => {}
            reqwest::StatusCode::NOT_FOUND => return Ok(None),
            reqwest::StatusCode::UNAUTHORIZED => {
                return Err(fail(format!("401 unauthorized for user '{}'", self.user)));
            }
            s => return Err(fail(format!("HTTP {s}"))),
        }
        let info: QueueInfo = response
            .json()
            .await
            .map_err(|e| fail(format!("unexpected answer: {e}")))?;
        let active = info
            .consumer_details
            .iter()
            .find(|c| c.active.unwrap_or(true))
            .and_then(|c| c.consumer_tag.clone());
        let replicas = (!info.members.is_empty()).then(|| {
            let (mut members, mut online) = (info.members.clone(), info.online.clone());
            members.sort();
            online.sort();
            Replicas {
                leader: info.leader.clone().filter(|l| !l.is_empty()),
                members,
                online,
            }
        });
        Ok(Some(QueueFigures {
            replicas,
            unacked: info.messages_unacknowledged,
            messages: info.messages,
            active,
            publish_rate: info
                .message_stats
                .as_ref()
                .and_then(|m| m.publish_details.as_ref())
                .map(|r| r.rate),
            ack_rate: info
                .message_stats
                .as_ref()
                .and_then(|m| m.ack_details.as_ref())
                .map(|r| r.rate),
            head_timestamp: info.head_message_timestamp,
            bytes: info.message_bytes,
            segments: info.segments,
        }))
    }
}

/// reqwest's messages repeat the full URL; keep the innermost cause.
fn plain_reason(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", TIMEOUT.as_secs());
    }
    if e.is_connect() {
        return "connection refused or unreachable (is the rabbitmq_management plugin enabled?)"
            .into();
    }
    let mut cause = "request failed".to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    cause
}

/// Decodes `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_management_url_or_the_amqp_url() {
        let amqp: AmqpUrl = "amqp://bob:s3cr3t@h:5672/%2f".parse().unwrap();
        let m = Management::new("http://127.0.0.1:15672", &amqp).unwrap();
        assert_eq!(
            (m.user.as_str(), m.password.as_str(), m.vhost.as_str()),
            ("bob", "s3cr3t", "/")
        );
        let m = Management::new("https://ops:p%40ss@mgmt.example/rabbit/", &amqp).unwrap();
        assert_eq!((m.user.as_str(), m.password.as_str()), ("ops", "p@ss"));
        assert!(
            !m.shown().contains("p%40ss") && !m.shown().contains("ops"),
            "{}",
            m.shown()
        );
        let err = Management::new("ftp://x:secret@h/", &amqp)
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
