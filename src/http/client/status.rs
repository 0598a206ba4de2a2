//! What a status check by key found, read from the status endpoint's answer.

use bytes::Bytes;

use super::Response;
use super::types::snippet;

/// What a status check found.
pub(super) enum Check {
    Committed(Response),
    NotFound,
    Unknown(String),
}

/// What a 200 from the status endpoint says. Only an explicit "done" counts as done:
/// - `{"status": <number>, "body": …}` (warren's contract): the stored outcome;
/// - a `status` or `state` string: `committed`, `complete(d)`, `succeeded`, `success`, `done`
///   mean done; anything else (`pending`, `processing`, `in_flight`, `failed`, …) means
///   "not done yet": retry later with the same key, and let the downstream's idempotency decide;
/// - a body with neither field (the resource itself) means the operation exists: done.
pub(super) fn read_status_body(body: Bytes) -> Check {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Check::Unknown(format!(
            "200 with a body that is not JSON: {}",
            snippet(&body)
        ));
    };
    if let Some(status) = value.get("status").and_then(|s| s.as_u64())
        && let Some(inner) = value.get("body")
    {
        return Check::Committed(Response {
            status: u16::try_from(status).unwrap_or(500),
            body: Bytes::from(inner.to_string()),
            via_status_check: true,
        });
    }
    let state = ["status", "state"]
        .iter()
        .find_map(|k| value.get(*k).and_then(|v| v.as_str()));
    match state.map(|s| s.to_ascii_lowercase()) {
        Some(s)
            if matches!(
                s.as_str(),
                "committed" | "complete" | "completed" | "succeeded" | "success" | "done"
            ) =>
        {
            Check::Committed(Response {
                status: 200,
                body,
                via_status_check: true,
            })
        }
        Some(s) => Check::Unknown(format!("operation is '{s}'")),
        None => Check::Committed(Response {
            status: 200,
            body,
            via_status_check: true,
        }),
    }
}

#[cfg(test)]
mod status_body_tests {
    use super::*;

    fn read(body: &str) -> Check {
        read_status_body(Bytes::from(body.to_string()))
    }

    #[test]
    fn only_an_explicit_done_counts_as_done() {
        assert!(matches!(
            read(r#"{"state":"committed","status":201,"body":{"id":1}}"#),
            Check::Committed(Response { status: 201, .. })
        ));
        for done in [
            r#"{"status":"complete"}"#,
            r#"{"state":"Succeeded"}"#,
            r#"{"id":"pos_1"}"#,
        ] {
            assert!(matches!(read(done), Check::Committed(_)), "{done}");
        }
        // The seeds' OperationStatus: pending, processing and failed are not done.
        for not_done in [
            r#"{"status":"pending"}"#,
            r#"{"status":"processing"}"#,
            r#"{"status":"failed"}"#,
            r#"{"state":"in_flight"}"#,
            "not json",
        ] {
            assert!(matches!(read(not_done), Check::Unknown(_)), "{not_done}");
        }
    }
}
