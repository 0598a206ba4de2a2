//! Error fingerprints: the error text with ids, hex strings, numbers and quoted values replaced
//! by placeholders, so that 5,000 copies of one failure group into one line.

/// Normalizes `error`: UUIDs become `<uuid>`, ULIDs `<ulid>`, hex strings of 8+ characters with
/// a digit `<hex>`, numbers (and digit runs inside words) `<n>`, quoted strings `<str>`.
/// Whitespace runs collapse to one space.
pub fn fingerprint(error: &str) -> String {
    let chars: Vec<char> = error.chars().collect();
    let mut out = String::with_capacity(error.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if (c == '\'' || c == '"')
            && boundary_before(&chars, i)
            && let Some(end) = closing_quote(&chars, i)
        {
            out.push_str("<str>");
            i = end + 1;
            continue;
        }
        if c.is_alphanumeric() {
            let end = word_end(&chars, i);
            push_word(&mut out, &chars[i..end]);
            i = end;
            continue;
        }
        if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    out.trim().to_string()
}

fn boundary_before(chars: &[char], i: usize) -> bool {
    i == 0 || !chars[i - 1].is_alphanumeric()
}

/// The matching quote, if it closes before the end and is not inside a word (`can't`).
fn closing_quote(chars: &[char], open: usize) -> Option<usize> {
    let q = chars[open];
    let close = open + 1 + chars[open + 1..].iter().position(|&c| c == q)?;
    let after_ok = chars.get(close + 1).is_none_or(|c| !c.is_alphanumeric());
    after_ok.then_some(close)
}

/// A word is a run of alphanumerics, `-` and `_`, plus `.` between digits (`12.5`).
fn word_end(chars: &[char], start: usize) -> usize {
    let mut i = start;
    while i < chars.len() {
        let c = chars[i];
        let joins = (c == '-' || c == '_') && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric());
        let decimal = c == '.'
            && i > start
            && chars[i - 1].is_ascii_digit()
            && chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c.is_alphanumeric() || joins || decimal {
            i += 1;
        } else {
            break;
        }
    }
    i
}

fn push_word(out: &mut String, word: &[char]) {
    let s: String = word.iter().collect();
    if is_uuid(&s) {
        out.push_str("<uuid>");
        return;
    }
    // Words made of parts (`order-8812`, `pf_agent_7`): normalize each part.
    let mut part = String::new();
    for &c in word {
        if c == '-' || c == '_' {
            push_part(out, &part);
            part.clear();
            out.push(c);
        } else {
            part.push(c);
        }
    }
    push_part(out, &part);
}

fn push_part(out: &mut String, part: &str) {
    if part.is_empty() {
        return;
    }
    if is_http_status(out, part) {
        out.push_str(part);
        return;
    }
    let has_digit = part.chars().any(|c| c.is_ascii_digit());
    if !has_digit {
        out.push_str(part);
    } else if is_ulid(part) {
        out.push_str("<ulid>");
    } else if part.len() >= 8 && part.chars().all(|c| c.is_ascii_hexdigit()) {
        out.push_str("<hex>");
    } else if part.chars().all(|c| c.is_ascii_digit() || c == '.') {
        out.push_str("<n>");
    } else {
        // Digits inside a word: `v2`, `abc123`.
        let mut in_digits = false;
        for c in part.chars() {
            if c.is_ascii_digit() || (in_digits && c == '.') {
                if !in_digits {
                    out.push_str("<n>");
                    in_digits = true;
                }
            } else {
                in_digits = false;
                out.push(c);
            }
        }
    }
}

/// A status code is what tells one HTTP failure from another: a number in 100..=599 after
/// `: ` (`POST http://h/events: 503 …`) or after `HTTP`, `status`, `answered` or `returned`.
fn is_http_status(out: &str, part: &str) -> bool {
    let code = part.len() == 3 && part.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n));
    let Some(before) = out.strip_suffix(' ') else {
        return false;
    };
    code && (before.ends_with(':')
        || ["HTTP", "status", "answered", "returned"]
            .iter()
            .any(|w| before.ends_with(w)))
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// 26 Crockford base32 characters, first one 0-7.
fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.starts_with(|c: char| ('0'..='7').contains(&c))
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() && !matches!(c.to_ascii_uppercase(), 'I' | 'L' | 'O' | 'U')
        })
}

#[cfg(test)]
mod tests {
    use super::fingerprint;

    #[test]
    fn ids_and_numbers_collapse() {
        let cases = [
            (
                "order 01JABCDEFGHJKMNPQRSTVWXYZ0 rejected: HTTP 422",
                "order <ulid> rejected: HTTP 422",
            ),
            (
                "escrow 3f2b8c1e-9d4a-4b7e-8f00-123456789abc not found",
                "escrow <uuid> not found",
            ),
            (
                "key 9f86d081884c7d65 in flight after 1.5s",
                "key <hex> in flight after <n>s",
            ),
            (
                "agent pf_agent_42 over limit 1000",
                "agent pf_agent_<n> over limit <n>",
            ),
            ("unknown pair 'BTC-EUR'", "unknown pair <str>"),
            (
                "field \"amount\" must be positive",
                "field <str> must be positive",
            ),
            ("can't   reach   host", "can't reach host"),
            ("upstream v2 returned 503", "upstream v<n> returned 503"),
            ("took 250 ms: retry", "took <n> ms: retry"),
            (
                "http://10.0.0.1:443/x: timeout",
                "http://<n>:<n>/x: timeout",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(fingerprint(input), want, "input: {input}");
        }
    }

    #[test]
    fn errors_differing_only_in_ids_share_a_fingerprint() {
        let a = fingerprint(
            "HTTP 422 for order 01J9ZK3W8Q5V6X7Y8Z9A0B1C2D (agent pf_agent_7): 'qty' < 0.001",
        );
        let b = fingerprint(
            "HTTP 422 for order 01J9ZK3W8Q5V6X7Y8Z9A0B1C2E (agent pf_agent_12): 'size' < 0.5",
        );
        assert_eq!(a, b);
        assert_ne!(
            a,
            fingerprint("HTTP 422 for escrow 01J9ZK3W8Q5V6X7Y8Z9A0B1C2D")
        );
    }

    #[test]
    fn http_failures_group_by_status_method_and_path() {
        let a = fingerprint(
            r#"POST http://127.0.0.1:40123/events: 503 Service Unavailable {"error":"busy"}"#,
        );
        assert_eq!(
            a,
            "POST http://<n>:<n>/events: 503 Service Unavailable {<str>:<str>}"
        );
        let b = fingerprint(r#"POST http://127.0.0.1:40999/events: 422 {"error":"qty"}"#);
        assert_eq!(b, "POST http://<n>:<n>/events: 422 {<str>:<str>}");
        assert_ne!(
            fingerprint("POST http://h/orders: 500 x"),
            fingerprint("POST http://h/events: 500 x")
        );
    }

    #[test]
    fn words_without_digits_stay() {
        assert_eq!(fingerprint("deadbeef cafebabe"), "deadbeef cafebabe");
        assert_eq!(
            fingerprint("connection reset by peer"),
            "connection reset by peer"
        );
    }
}
