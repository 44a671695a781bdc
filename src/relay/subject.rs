//! Subjects of relayed events: `<prefix>.<api_key>.<provider>`, each token
//! escaped so that no value can add a token, a wildcard or whitespace.
//!
//! The escaping rule (reversible, documented in the README):
//!
//! - bytes `A-Z`, `a-z`, `0-9`, `_` and `-` stay as they are;
//! - every other byte of the UTF-8 value, `%` included, becomes `%XX`
//!   (two upper-case hex digits): `.` is `%2E`, `*` is `%2A`, `>` is `%3E`,
//!   a space is `%20`, `é` is `%C3%A9`;
//! - an empty value becomes a lone `%` (NATS forbids empty tokens, and an
//!   escaped non-empty value never ends in a lone `%`).
//!
//! So a token is always non-empty printable ASCII without `.`, `*`, `>` or
//! whitespace, and [`unescape_token`] gives the value back.

/// Escapes one subject token (see the module docs).
pub fn escape_token(value: &str) -> String {
    if value.is_empty() {
        return "%".to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(hex_digit(byte >> 4));
            out.push(hex_digit(byte & 0x0f));
        }
    }
    out
}

fn hex_digit(nibble: u8) -> char {
    char::from(b"0123456789ABCDEF"[usize::from(nibble & 0x0f)])
}

/// Reverses [`escape_token`]; None for a token it cannot have produced.
pub fn unescape_token(token: &str) -> Option<String> {
    if token == "%" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            let hex = token.get(at + 1..at + 3)?;
            if !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
            {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            out.push(byte);
            at += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// The subject of an event of `api_key` about `provider`.
pub fn subject(prefix: &str, api_key: &str, provider: &str) -> String {
    format!(
        "{prefix}.{}.{}",
        escape_token(api_key),
        escape_token(provider)
    )
}

/// The wildcard subject the stream binds: every event under `prefix`.
pub fn stream_subjects(prefix: &str) -> String {
    format!("{prefix}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safe_tokens_stay_as_they_are() {
        assert_eq!(escape_token("3_abcDEF-09"), "3_abcDEF-09");
        assert_eq!(escape_token("saml-okta"), "saml-okta");
    }

    #[test]
    fn dots_wildcards_spaces_and_percent_are_escaped() {
        assert_eq!(escape_token("a.b*c>d e%f"), "a%2Eb%2Ac%3Ed%20e%25f");
        assert_eq!(escape_token("tab\tnl\n"), "tab%09nl%0A");
        assert_eq!(escape_token("$SYS"), "%24SYS");
        assert_eq!(escape_token("é"), "%C3%A9");
        assert_eq!(escape_token(""), "%");
    }

    #[test]
    fn escaping_is_reversible_and_yields_one_valid_token() {
        for value in [
            "",
            "%",
            "%%",
            "%25",
            "3_site",
            "a.b*c>d e",
            "saml-x.y*z> w",
            "..",
            ">",
            "*",
            "ünïcødé ✓",
            "\r\n\t\0",
        ] {
            let token = escape_token(value);
            assert!(!token.is_empty(), "{value:?}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'.' && b != b'*' && b != b'>'),
                "{value:?} -> {token:?}"
            );
            assert_eq!(unescape_token(&token).as_deref(), Some(value), "{token:?}");
        }
    }

    #[test]
    fn tokens_escaping_cannot_produce_are_refused() {
        for token in ["a.b", "%2", "%zz", "%2e", "a b", "%%"] {
            assert_eq!(unescape_token(token), None, "{token:?}");
        }
    }

    #[test]
    fn subjects_have_exactly_five_tokens() {
        let s = subject("connections.v1.removed", "3_a.b", "saml-x y");
        assert_eq!(s, "connections.v1.removed.3_a%2Eb.saml-x%20y");
        assert_eq!(s.split('.').count(), 5);
        assert_eq!(
            stream_subjects("connections.v1.removed"),
            "connections.v1.removed.>"
        );
    }
}
