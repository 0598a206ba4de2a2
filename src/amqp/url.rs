//! The broker URL: parsed once, with heartbeat and connect-timeout defaults, and a password
//! that no `Debug`, `Display`, log line or error message can reveal.

use std::fmt;
use std::str::FromStr;

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

/// A broker URL whose password is redacted everywhere it could be printed.
#[derive(Clone)]
pub struct AmqpUrl {
    uri: AMQPUri,
    redacted: String,
}

impl AmqpUrl {
    /// The parsed URI with warren's defaults applied, to hand to lapin (the benchmark's raw
    /// baseline connects with it).
    pub fn uri(&self) -> AMQPUri {
        self.uri.clone()
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The heartbeat interval in seconds that will be negotiated.
    pub fn heartbeat_secs(&self) -> u16 {
        self.uri.query.heartbeat.unwrap_or(DEFAULT_HEARTBEAT_SECS)
    }

    /// The connection deadline.
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.uri
                .query
                .connection_timeout
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
        )
    }

    /// The virtual host, decoded (`/` for `%2f`).
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The user name and password, for a sibling API on the same broker (the management
    /// plugin). Crate-private: never printed.
    pub(crate) fn credentials(&self) -> (&str, &str) {
        let u = &self.uri.authority.userinfo;
        (&u.username, &u.password)
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
}

/// The URL could not be parsed. The message never contains the URL's password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid AMQP URL {shown}: {reason}")]
pub struct AmqpUrlError {
    shown: String,
    reason: String,
}

impl FromStr for AmqpUrl {
    type Err = AmqpUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = redact(s);
        let fail = |reason: &str| AmqpUrlError {
            shown: shown.clone(),
            reason: reason.to_string(),
        };
        let parsed = url::Url::parse(s).map_err(|e| fail(&e.to_string()))?;
        if !matches!(parsed.scheme(), "amqp" | "amqps") {
            return Err(fail("the scheme must be amqp:// or amqps://"));
        }
        // lapin's own parse errors may quote the whole input; report our own reason instead.
        let mut uri = AMQPUri::from_str(s)
            .map_err(|_| fail("expected amqp[s]://user:password@host:port/vhost[?options]"))?;
        if uri.query.heartbeat == Some(0) {
            return Err(fail(&format!(
                "the 'heartbeat' parameter is 0, which turns heartbeats off (a dead broker or a \
                 half-open connection would go unnoticed): give heartbeat=N with N of at least 1, \
                 or leave it out for the default of {DEFAULT_HEARTBEAT_SECS} s"
            )));
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
        Ok(AmqpUrl {
            uri,
            redacted: shown,
        })
    }
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

/// Replaces the password of any URL-like string with `***`; unparseable input is hidden whole.
pub fn redact(s: &str) -> String {
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparseable URL>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shows() {
        let url: AmqpUrl = "amqp://bob:s3cr3t-canary@broker:5672/%2f".parse().unwrap();
        for shown in [
            format!("{url}"),
            format!("{url:?}"),
            url.redacted().to_string(),
        ] {
            assert!(!shown.contains("s3cr3t-canary"), "{shown}");
            assert!(shown.contains("bob:***@broker"), "{shown}");
        }
    }

    #[test]
    fn parse_errors_hide_the_password() {
        for bad in [
            "http://bob:s3cr3t-canary@broker/",
            "amqp://bob:s3cr3t-canary@broker:notaport/",
            "amqp://bob:s3cr3t-canary@broker/%2f?heartbeat=abc",
        ] {
            let err = bad.parse::<AmqpUrl>().unwrap_err().to_string();
            assert!(!err.contains("s3cr3t-canary"), "{err}");
        }
    }

    #[test]
    fn defaults_apply_unless_the_url_sets_them() {
        let url: AmqpUrl = DEFAULT_AMQP_URL.parse().unwrap();
        assert_eq!(url.heartbeat_secs(), DEFAULT_HEARTBEAT_SECS);
        let url: AmqpUrl = "amqp://guest:guest@h/%2f?heartbeat=3".parse().unwrap();
        assert_eq!(url.heartbeat_secs(), 3);
    }

    #[test]
    fn an_ipv6_literal_host_is_the_host_connected_to() {
        let url: AmqpUrl = "amqp://bob:pw@[fd00::5]:5673/%2f".parse().unwrap();
        assert_eq!(url.uri().authority.host, "fd00::5");
        assert_eq!(url.host_port(), "[fd00::5]:5673");
        let url: AmqpUrl = "amqp://bob:pw@10.1.2.3/%2f".parse().unwrap();
        assert_eq!(url.uri().authority.host, "10.1.2.3");
        assert_eq!(url.host_port(), "10.1.2.3:5672");
    }

    #[test]
    fn heartbeats_cannot_be_turned_off() {
        let err = "amqp://bob:s3cr3t-canary@h/%2f?heartbeat=0"
            .parse::<AmqpUrl>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("'heartbeat' parameter is 0"), "{err}");
        assert!(!err.contains("s3cr3t-canary"), "{err}");
        assert!(
            "amqp://guest:guest@h/%2f?heartbeat=1"
                .parse::<AmqpUrl>()
                .is_ok()
        );
    }
}
