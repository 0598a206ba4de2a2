//! Webhook signature verification, pure functions: the Standard Webhooks scheme (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>`, several
//! signatures for key rotation, a timestamp tolerance) and the seeds' `X-PF-Signature:
//! sha256=<hex HMAC-SHA256 of body>`. Every signature is checked with hmac's constant-time
//! `verify_slice`.
//!
//! # Secrets file
//! One secret per line; blank lines and `#` comments are skipped; every line is tried, which is
//! how keys rotate. A `whsec_<base64>` line's Standard Webhooks key is the decoded bytes; any
//! other line is used as raw bytes. `X-PF-Signature` always uses the line's raw bytes, as the
//! seeds' sender does.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The default accepted clock skew between the sender's timestamp and ours.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// One signing secret. Debug never shows it.
#[derive(Clone)]
pub struct Secret {
    /// The line as written (the `X-PF-Signature` key).
    raw: Vec<u8>,
    /// The Standard Webhooks key.
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Parses one secret; `whsec_` secrets must be base64.
    pub fn parse(line: &str) -> Result<Self, String> {
        let key = match line.strip_prefix("whsec_") {
            Some(b64) => B64
                .decode(b64)
                .map_err(|_| "a whsec_ secret must be base64 after the prefix".to_string())?,
            None => line.as_bytes().to_vec(),
        };
        if key.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Self {
            raw: line.as_bytes().to_vec(),
            key,
        })
    }
}

/// Parses a secrets file's text. Errors name the line, never its content.
pub fn parse_secrets(text: &str) -> Result<Vec<Secret>, String> {
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(Secret::parse(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    if out.is_empty() {
        return Err("no secret in the file".into());
    }
    Ok(out)
}

/// The signature headers of one request.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    /// `webhook-id`.
    pub id: Option<&'a str>,
    /// `webhook-timestamp` (seconds).
    pub timestamp: Option<&'a str>,
    /// `webhook-signature`.
    pub signature: Option<&'a str>,
    /// `X-PF-Signature`.
    pub pf_signature: Option<&'a str>,
}

/// Which scheme a request was verified with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Standard Webhooks: id, timestamp and signature checked.
    Standard,
    /// `X-PF-Signature`: body signature only, no timestamp.
    Pf,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No signature header at all.
    #[error("no webhook-signature or X-PF-Signature header")]
    Unsigned,
    /// A Standard Webhooks header is missing.
    #[error("header '{0}' is missing")]
    Missing(&'static str),
    /// A header is not of the expected shape.
    #[error("header '{0}' is malformed")]
    Malformed(&'static str),
    /// The timestamp is outside the tolerance.
    #[error("webhook-timestamp is {skew_secs}s away from now (tolerance {tolerance_secs}s)")]
    Stale {
        /// How far off, in seconds.
        skew_secs: i64,
        /// The tolerance.
        tolerance_secs: u64,
    },
    /// No signature matches any secret.
    #[error("no signature matches")]
    BadSignature,
}

/// Verifies a request; `now_secs` is the receiver's clock.
pub fn verify(
    secrets: &[Secret],
    h: &SignedHeaders<'_>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<Scheme, VerifyError> {
    if h.signature.is_some() || h.id.is_some() || h.timestamp.is_some() {
        return verify_standard(secrets, h, body, now_secs, tolerance).map(|()| Scheme::Standard);
    }
    let Some(pf) = h.pf_signature else {
        return Err(VerifyError::Unsigned);
    };
    let sig = pf
        .trim()
        .strip_prefix("sha256=")
        .and_then(|hx| hex::decode(hx).ok())
        .ok_or(VerifyError::Malformed("x-pf-signature"))?;
    for s in secrets {
        let mut mac = mac(&s.raw);
        mac.update(body);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(Scheme::Pf);
        }
    }
    Err(VerifyError::BadSignature)
}

fn verify_standard(
    secrets: &[Secret],
    h: &SignedHeaders<'_>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), VerifyError> {
    let id = h.id.ok_or(VerifyError::Missing("webhook-id"))?;
    let ts_text = h
        .timestamp
        .ok_or(VerifyError::Missing("webhook-timestamp"))?;
    let signature = h
        .signature
        .ok_or(VerifyError::Missing("webhook-signature"))?;
    if id.is_empty() || id.len() > 255 {
        return Err(VerifyError::Malformed("webhook-id"));
    }
    let ts: i64 = ts_text
        .trim()
        .parse()
        .map_err(|_| VerifyError::Malformed("webhook-timestamp"))?;
    let skew = now_secs.saturating_sub(ts);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::Stale {
            skew_secs: skew,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let candidates: Vec<Vec<u8>> = signature
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, b64)| B64.decode(b64).ok())
        .collect();
    if candidates.is_empty() {
        return Err(VerifyError::Malformed("webhook-signature"));
    }
    for s in secrets {
        let mut base = mac(&s.key);
        base.update(id.as_bytes());
        base.update(b".");
        base.update(ts_text.trim().as_bytes());
        base.update(b".");
        base.update(body);
        for sig in &candidates {
            if base.clone().verify_slice(sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err(VerifyError::BadSignature)
}

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// The `webhook-signature` value for one secret: `v1,<base64>`.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(&secret.key);
    m.update(format!("{id}.{timestamp}.").as_bytes());
    m.update(body);
    format!("v1,{}", B64.encode(m.finalize().into_bytes()))
}

/// The `X-PF-Signature` value for one secret: `sha256=<hex>`.
pub fn sign_pf(secret: &Secret, body: &[u8]) -> String {
    let mut m = mac(&secret.raw);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks specification's published test vector.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(sig: &'a str, ts: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(ID),
            timestamp: Some(ts),
            signature: Some(sig),
            pf_signature: None,
        }
    }

    fn secrets() -> Vec<Secret> {
        parse_secrets(SECRET).unwrap()
    }

    #[test]
    fn reproduces_and_accepts_the_standard_webhooks_vector() {
        assert_eq!(sign(&secrets()[0], ID, TS, BODY), SIG);
        let ts = TS.to_string();
        assert_eq!(
            verify(
                &secrets(),
                &headers(SIG, &ts),
                BODY,
                TS + 10,
                DEFAULT_TOLERANCE
            ),
            Ok(Scheme::Standard)
        );
    }

    #[test]
    fn tampered_forged_and_stale_requests_are_refused() {
        let ts = TS.to_string();
        let ok = |h: &SignedHeaders<'_>, body: &[u8], now: i64| {
            verify(&secrets(), h, body, now, DEFAULT_TOLERANCE)
        };
        assert_eq!(
            ok(&headers(SIG, &ts), br#"{"test": 2432232315}"#, TS),
            Err(VerifyError::BadSignature)
        );
        let other = parse_secrets("whsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==").unwrap();
        let forged = sign(&other[0], ID, TS, BODY);
        assert_eq!(
            ok(&headers(&forged, &ts), BODY, TS),
            Err(VerifyError::BadSignature)
        );
        let mut h = headers(SIG, &ts);
        h.id = Some("msg_other");
        assert_eq!(ok(&h, BODY, TS), Err(VerifyError::BadSignature));
        assert!(matches!(
            ok(&headers(SIG, &ts), BODY, TS + 301),
            Err(VerifyError::Stale { .. })
        ));
        assert!(matches!(
            ok(&headers(SIG, &ts), BODY, TS - 301),
            Err(VerifyError::Stale { .. })
        ));
        assert_eq!(ok(&headers(SIG, &ts), BODY, TS + 300), Ok(Scheme::Standard));
        assert_eq!(
            ok(&headers("v2,abc", &ts), BODY, TS),
            Err(VerifyError::Malformed("webhook-signature"))
        );
        assert_eq!(
            ok(&headers(SIG, "yesterday"), BODY, TS),
            Err(VerifyError::Malformed("webhook-timestamp"))
        );
        let mut h = headers(SIG, &ts);
        h.id = None;
        assert_eq!(ok(&h, BODY, TS), Err(VerifyError::Missing("webhook-id")));
        assert_eq!(
            ok(&SignedHeaders::default(), BODY, TS),
            Err(VerifyError::Unsigned)
        );
    }

    #[test]
    fn any_of_several_signatures_and_any_of_several_secrets_verifies() {
        let ts = TS.to_string();
        let multi = format!(
            "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ= {SIG} v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q="
        );
        assert!(
            verify(
                &secrets(),
                &headers(&multi, &ts),
                BODY,
                TS,
                DEFAULT_TOLERANCE
            )
            .is_ok()
        );
        let rotated = parse_secrets(&format!(
            "# new key first\nwhsec_c2VjcmV0LW9mLWEtcm90YXRlZC1lbmRwb2ludA==\n\n{SECRET}\n"
        ))
        .unwrap();
        assert_eq!(rotated.len(), 2);
        assert!(verify(&rotated, &headers(SIG, &ts), BODY, TS, DEFAULT_TOLERANCE).is_ok());
    }

    #[test]
    fn the_seeds_pf_signature_is_accepted() {
        let s = parse_secrets("pf_webhook_secret").unwrap();
        let body = br#"{"eventId":"x"}"#;
        let sig = sign_pf(&s[0], body);
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        let h = SignedHeaders {
            pf_signature: Some(&sig),
            ..Default::default()
        };
        assert_eq!(verify(&s, &h, body, 0, DEFAULT_TOLERANCE), Ok(Scheme::Pf));
        assert_eq!(
            verify(&s, &h, b"{}", 0, DEFAULT_TOLERANCE),
            Err(VerifyError::BadSignature)
        );
        let h = SignedHeaders {
            pf_signature: Some("sha256=zz"),
            ..Default::default()
        };
        assert_eq!(
            verify(&s, &h, body, 0, DEFAULT_TOLERANCE),
            Err(VerifyError::Malformed("x-pf-signature"))
        );
    }

    #[test]
    fn secrets_files_name_the_bad_line_and_hide_the_secret() {
        let err = parse_secrets("# c\nwhsec_%%%\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        assert!(!err.contains("%%%"));
        assert!(parse_secrets("\n# only comments\n").is_err());
        assert_eq!(format!("{:?}", secrets()[0]), "Secret(***)");
    }
}
