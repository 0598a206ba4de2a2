//! The downstream error taxonomy as pure tables: an HTTP status, a transport failure or a
//! status-check answer to what the caller does next. No I/O; DESIGN.md's table, tested as one.

use std::time::{Duration, SystemTime};

/// What a response to a mutating call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 2xx: the effect is done.
    Done,
    /// 400, 422 and the other 4xx (and an unexpected redirect): retrying cannot help.
    Permanent,
    /// 409: the key is in flight or already used. Check status by key; never assume done.
    Conflict,
    /// 408, 504: the outcome is unknown. Check status by key; retry the same key if not found.
    Ambiguous,
    /// 429: retry no earlier than `Retry-After`.
    Throttled,
    /// 500, 502, 503 and other 5xx: retry with backoff and jitter.
    Transient,
}

/// Classifies a response status.
pub fn classify(status: u16) -> Class {
    match status {
        200..=299 => Class::Done,
        408 | 504 => Class::Ambiguous,
        409 => Class::Conflict,
        429 => Class::Throttled,
        // Redirects are not followed: a POST turned into a GET would lose the body.
        300..=499 => Class::Permanent,
        _ => Class::Transient,
    }
}

/// What a transport failure (no status at all) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The connection was never made: the request cannot have reached the server.
    NotSent,
    /// A timeout or reset after the request may have been sent: the outcome is unknown.
    Ambiguous,
}

/// Classifies a transport failure: only a failed connect proves nothing was sent.
pub fn classify_transport(connect_failed: bool) -> Transport {
    if connect_failed {
        Transport::NotSent
    } else {
        Transport::Ambiguous
    }
}

/// What a status check (`GET <status-url>` for the key) answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// 200: the operation is committed; its stored outcome is in the body.
    Committed,
    /// 404: the server has never committed this key; retry it with the same key.
    NotFound,
    /// Anything else (409 in flight, 202 pending, 5xx, timeout): cannot tell yet; retry later.
    Unknown,
}

/// Classifies a status-check answer. Only a plain 200 counts as committed.
pub fn classify_lookup(status: u16) -> Lookup {
    match status {
        200 => Lookup::Committed,
        404 => Lookup::NotFound,
        _ => Lookup::Unknown,
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (relative to `now`). A date in
/// the past means zero; anything unparsable is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_taxonomy_table() {
        let cases = [
            (200, Class::Done),
            (201, Class::Done),
            (204, Class::Done),
            (400, Class::Permanent),
            (422, Class::Permanent),
            (401, Class::Permanent),
            (404, Class::Permanent),
            (302, Class::Permanent),
            (409, Class::Conflict),
            (408, Class::Ambiguous),
            (504, Class::Ambiguous),
            (429, Class::Throttled),
            (500, Class::Transient),
            (502, Class::Transient),
            (503, Class::Transient),
            (599, Class::Transient),
        ];
        for (status, want) in cases {
            assert_eq!(classify(status), want, "status {status}");
        }
    }

    #[test]
    fn only_a_failed_connect_is_known_unsent() {
        assert_eq!(classify_transport(true), Transport::NotSent);
        assert_eq!(classify_transport(false), Transport::Ambiguous);
    }

    #[test]
    fn status_checks_count_only_200_as_committed() {
        let cases = [
            (200, Lookup::Committed),
            (404, Lookup::NotFound),
            (202, Lookup::Unknown),
            (409, Lookup::Unknown),
            (500, Lookup::Unknown),
            (410, Lookup::Unknown),
        ];
        for (status, want) in cases {
            assert_eq!(classify_lookup(status), want, "status {status}");
        }
    }

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
