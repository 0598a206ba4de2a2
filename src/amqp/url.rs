//! The broker URL: one node or a comma-separated list of a cluster's nodes, parsed once, with
//! heartbeat and connect-timeout defaults, and passwords that no `Debug`, `Display`, log line
//! or error message can reveal. The list also remembers which node answered last, so every
//! connection of a process goes there first and moves on when it does not answer.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::uri::AMQPUri;

/// The default from DESIGN.md, for a local broker.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Heartbeat interval asked for unless the URL sets `heartbeat=`; lapin closes the connection
/// after two missed intervals, which is how a half-open connection is detected.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 10;

/// Frame size asked for unless the URL sets `frame_max=`. lapin keeps 32 frames of send and
/// receive buffer per connection, so RabbitMQ's 128 KiB default costs 8 MiB of RSS per
/// connection, and 8 KiB costs 512 KiB; events are a few hundred bytes, and larger bodies are
/// simply split. 8 KiB against 16 KiB: publish CPU and throughput within the noise, a retrying
/// worker's peak RSS about 1 MiB lower.
pub const DEFAULT_FRAME_MAX: u32 = 8 * 1024;

/// TCP+TLS+AMQP handshake deadline unless the URL sets `connection_timeout=` (milliseconds).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A node that did not answer is tried after the others for this long.
pub const NODE_PENALTY: Duration = Duration::from_secs(30);

/// One broker node of an [`AmqpUrl`].
#[derive(Clone)]
pub struct Node {
    uri: AMQPUri,
    redacted: String,
}

impl Node {
    /// The parsed URI with warren's defaults applied, to hand to lapin.
    pub fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// The node's URL with the password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// `host:port` (`[v6]:port`), for messages that should not even show the user.
    pub fn host_port(&self) -> String {
        let host = &self.uri.authority.host;
        if host.contains(':') {
            format!("[{host}]:{}", self.uri.authority.port)
        } else {
            format!("{host}:{}", self.uri.authority.port)
        }
    }

    /// The connection deadline.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(
            self.uri
                .query
                .connection_timeout
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
        )
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Node").field(&self.redacted).finish()
    }
}

/// Which node answered last and which did not answer lately; shared by every clone.
#[derive(Debug, Default)]
struct Health {
    preferred: usize,
    failed_at: Vec<Option<Instant>>,
}

/// Broker URLs (one per node of a cluster) whose passwords are redacted everywhere they could
/// be printed. Clones share which node answered last.
#[derive(Clone)]
pub struct AmqpUrl {
    nodes: Arc<[Node]>,
    redacted: String,
    health: Arc<Mutex<Health>>,
}

impl AmqpUrl {
    /// The first node's parsed URI, to hand to lapin (the benchmark's raw baseline connects
    /// with it).
    pub fn uri(&self) -> AMQPUri {
        self.nodes[0].uri()
    }

    /// Every node, in the order given.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The URLs with every password replaced by `***`, comma-separated.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The heartbeat interval in seconds that will be negotiated (the first node's).
    pub fn heartbeat_secs(&self) -> u16 {
        self.nodes[0]
            .uri
            .query
            .heartbeat
            .unwrap_or(DEFAULT_HEARTBEAT_SECS)
    }

    /// The first node's connection deadline.
    pub fn connect_timeout(&self) -> Duration {
        self.nodes[0].connect_timeout()
    }

    /// The virtual host, decoded (`/` for `%2f`); the same on every node.
    pub fn vhost(&self) -> &str {
        &self.nodes[0].uri.vhost
    }

    /// The first node's user name and password, for a sibling API on the same broker (the
    /// management plugin). Crate-private: never printed.
    pub(crate) fn credentials(&self) -> (&str, &str) {
        let u = &self.nodes[0].uri.authority.userinfo;
        (&u.username, &u.password)
    }

    /// The first node's `host:port`, for messages that should not even show the user.
    pub fn host_port(&self) -> String {
        self.nodes[0].host_port()
    }

    /// Node indexes in the order to try them: the one that answered last, then the others in
    /// list order after it; nodes that failed within [`NODE_PENALTY`] go last.
    pub fn candidates(&self) -> Vec<usize> {
        let health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let n = self.nodes.len();
        let mut order: Vec<usize> = (0..n).map(|i| (health.preferred + i) % n).collect();
        order.sort_by_key(|&i| {
            health
                .failed_at
                .get(i)
                .copied()
                .flatten()
                .is_some_and(|at| at.elapsed() < NODE_PENALTY)
        });
        order
    }

    /// Records that node `i` answered: it is tried first from now on.
    pub fn answered(&self, i: usize) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        health.preferred = i;
        if let Some(f) = health.failed_at.get_mut(i) {
            *f = None;
        }
    }

    /// Records that node `i` did not answer: it is tried last for a while.
    pub fn failed(&self, i: usize) {
        let mut health = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = health.failed_at.get_mut(i) {
            *f = Some(Instant::now());
        }
    }
}

/// The URL could not be parsed. The message never contains a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AMQP URL {shown}: {reason}")]
pub struct AmqpUrlError {
    shown: String,
    reason: String,
}

impl FromStr for AmqpUrl {
    type Err = AmqpUrlError;

    /// `amqp://user:pw@host1:5672/vhost` or a comma-separated list of nodes: full URLs, or,
    /// after the first, `host[:port]` alone, which takes everything else from the first.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let mut nodes: Vec<Node> = Vec::with_capacity(parts.len());
        let mut first: Option<url::Url> = None;
        for (i, part) in parts.iter().enumerate() {
            let fail = |reason: String| AmqpUrlError {
                shown: redact_node(part, i == 0).unwrap_or_else(|| HIDDEN.to_string()),
                reason: if parts.len() > 1 {
                    format!(
                        "node {} of {}: {reason} (nodes are separated by commas)",
                        i + 1,
                        parts.len()
                    )
                } else {
                    reason
                },
            };
            if part.is_empty() {
                return Err(AmqpUrlError {
                    shown: redact(s),
                    reason: format!(
                        "node {} of {} is empty (one comma between nodes; write a comma inside \
                         a password as %2C)",
                        i + 1,
                        parts.len()
                    ),
                });
            }
            let (node, parsed) = match &first {
                Some(first) if !part.contains("://") => {
                    parse_node(&with_host_port(first, part).map_err(fail)?).map_err(fail)?
                }
                _ => parse_node(part).map_err(fail)?,
            };
            if let Some(n) = nodes.first()
                && n.uri.vhost != node.uri.vhost
            {
                return Err(fail(format!(
                    "virtual host '{}' differs from the first node's '{}' (the nodes of one \
                     list are one cluster's)",
                    node.uri.vhost, n.uri.vhost
                )));
            }
            first.get_or_insert(parsed);
            nodes.push(node);
        }
        let redacted = nodes
            .iter()
            .map(|n| n.redacted.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let health = Health {
            preferred: 0,
            failed_at: vec![None; nodes.len()],
        };
        Ok(AmqpUrl {
            nodes: nodes.into(),
            redacted,
            health: Arc::new(Mutex::new(health)),
        })
    }
}

/// Parses one node's full URL, applying warren's defaults.
fn parse_node(s: &str) -> Result<(Node, url::Url), String> {
    let parsed = url::Url::parse(s).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "amqp" | "amqps") {
        return Err("the scheme must be amqp:// or amqps://".into());
    }
    // lapin's own parse errors may quote the whole input; report our own reason instead.
    let mut uri = AMQPUri::from_str(s)
        .map_err(|_| "expected amqp[s]://user:password@host:port/vhost[?options]".to_string())?;
    if uri.query.heartbeat == Some(0) {
        return Err(format!(
            "the 'heartbeat' parameter is 0, which turns heartbeats off (a dead broker or a \
             half-open connection would go unnoticed): give heartbeat=N with N of at least 1, \
             or leave it out for the default of {DEFAULT_HEARTBEAT_SECS} s"
        ));
    }
    // lapin takes the host from `Url::domain()`, which has none for an IPv6 literal, and
    // would connect to `localhost` instead of `[fd00::5]`.
    if let Some(url::Host::Ipv6(addr)) = parsed.host() {
        uri.authority.host = addr.to_string();
    }
    uri.query.heartbeat.get_or_insert(DEFAULT_HEARTBEAT_SECS);
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    uri.query
        .connection_timeout
        .get_or_insert(DEFAULT_CONNECT_TIMEOUT_MS);
    let node = Node {
        uri,
        redacted: redact(s),
    };
    Ok((node, parsed))
}

/// The first node's URL with the host and port of `part` (`host[:port]` alone; no port means
/// the scheme's default).
fn with_host_port(first: &url::Url, part: &str) -> Result<String, String> {
    let shape = "after the first node, give a full amqp[s]:// URL or host[:port] alone";
    let probe = url::Url::parse(&format!("amqp://{part}")).map_err(|_| shape.to_string())?;
    let bare = probe.username().is_empty()
        && probe.password().is_none()
        && matches!(probe.path(), "" | "/")
        && probe.query().is_none()
        && probe.fragment().is_none();
    let host = probe.host_str().filter(|h| bare && !h.is_empty());
    let host = host.ok_or_else(|| shape.to_string())?;
    let mut url = first.clone();
    url.set_host(Some(host)).map_err(|e| e.to_string())?;
    url.set_port(probe.port()).map_err(|_| shape.to_string())?;
    Ok(url.to_string())
}

impl fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AmqpUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for AmqpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Replaces the password of every URL in a comma-separated list with `***`. An entry that does
/// not parse is hidden whole, with every entry after it (they may be the rest of a password
/// holding a comma).
pub fn redact(s: &str) -> String {
    let first = s.split(',').next().unwrap_or(s).trim();
    if url::Url::parse(first).is_err() {
        // One URL whose password holds a comma, or no URL at all.
        return redact_node(s, true).unwrap_or_else(|| HIDDEN.to_string());
    }
    let mut shown = Vec::new();
    for (i, part) in s.split(',').map(str::trim).enumerate() {
        match redact_node(part, i == 0) {
            Some(node) => shown.push(node),
            None => {
                shown.push(HIDDEN.to_string());
                break;
            }
        }
    }
    shown.join(",")
}

const HIDDEN: &str = "<unparseable URL>";

/// One entry with its password masked: a URL, or (after the first) `host[:port]` as it is.
fn redact_node(s: &str, first: bool) -> Option<String> {
    if let Ok(mut u) = url::Url::parse(s) {
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
            return Some(u.to_string());
        }
        // `user:pw@host` parses as a scheme and a path: show only what is clearly a URL.
        if s.contains("://") {
            return Some(u.to_string());
        }
    }
    if first || s.contains("://") {
        return None;
    }
    let probe = url::Url::parse(&format!("amqp://{s}")).ok()?;
    let bare = probe.username().is_empty()
        && probe.password().is_none()
        && matches!(probe.path(), "" | "/")
        && probe.query().is_none()
        && probe.fragment().is_none();
    bare.then(|| s.to_string())
}

#[cfg(test)]
mod tests;
