//! Signed requests as the Gigya REST API defines them (SPEC section 11),
//! independent of any protocol: the OAuth-1-style base string, the
//! HMAC-SHA1 signature over it, and the timestamp window.
//!
//! ```text
//! base = METHOD "&" enc(scheme://host[:port]/path) "&" enc(sorted "name=value" pairs joined by "&")
//! sig  = base64(HMAC-SHA1(key = base64-decoded secret, base))
//! ```
//!
//! `enc` is RFC 3986 percent-encoding (everything but `A-Z a-z 0-9 - . _ ~`);
//! the pairs are every parameter except `sig`, each name and value encoded,
//! sorted by encoded name then encoded value.

use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

/// How far a signed request's timestamp may be from the server's clock.
pub const TIMESTAMP_WINDOW: Duration = Duration::from_secs(120);

/// The parameter carrying the signature: left out of the base string.
pub const SIG_PARAMETER: &str = "sig";

/// RFC 3986 percent-encoding of every byte but the unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL of the base string: lower-case scheme and host, the port only
/// when it is not the scheme's default, then the path. None for a URL that
/// does not parse or has no host.
pub fn normalize_url(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    // `Url` lower-cases scheme and host and drops default ports itself.
    let host = url.host_str()?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    Some(format!("{}://{host}{port}{}", url.scheme(), url.path()))
}

/// Every parameter but `sig` as `enc(name)=enc(value)`, sorted by encoded
/// name then encoded value, joined by `&` (the query part of the base
/// string, and the canonical query of an action link).
pub fn sorted_query(parameters: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, String)> = parameters
        .iter()
        .filter(|(name, _)| name != SIG_PARAMETER)
        .map(|(name, value)| (percent_encode(name), percent_encode(value)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The base string of a request to `url` (already normalized) with these
/// parameters; `sig` is left out.
pub fn base_string(method: &str, url: &str, parameters: &[(String, String)]) -> String {
    let query = sorted_query(parameters);
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        percent_encode(url),
        percent_encode(&query)
    )
}

/// base64(HMAC-SHA1(secret, base)); None only if HMAC refused the key
/// (it takes keys of any length).
pub fn sign(secret: &[u8], base: &str) -> Option<String> {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).ok()?;
    mac.update(base.as_bytes());
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

/// Whether `signature` (base64) is the signature of `base`: decoded and
/// compared in constant time.
pub fn verify(secret: &[u8], base: &str, signature: &str) -> bool {
    let Ok(tag) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        return false;
    };
    mac.update(base.as_bytes());
    mac.verify_slice(&tag).is_ok()
}

/// A request timestamp: Unix seconds, or milliseconds as some SDKs send
/// them (a value too large to be seconds of this era).
pub fn parse_timestamp(value: &str) -> Option<DateTime<Utc>> {
    let number: i64 = value.trim().parse().ok()?;
    if number <= 0 {
        return None;
    }
    // 10^11 seconds is the year 5138; a millisecond value of today is 10^12.
    if number >= 100_000_000_000 {
        Utc.timestamp_millis_opt(number).single()
    } else {
        Utc.timestamp_opt(number, 0).single()
    }
}

/// Whether `timestamp` is within [`TIMESTAMP_WINDOW`] of `now`, either side.
pub fn within_window(timestamp: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    let window = chrono::Duration::from_std(TIMESTAMP_WINDOW).unwrap_or(chrono::Duration::MAX);
    (now - timestamp).abs() <= window
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("aZ0-._~"), "aZ0-._~");
        assert_eq!(percent_encode("a b+c/d=é*"), "a%20b%2Bc%2Fd%3D%C3%A9%2A");
    }

    #[test]
    fn urls_are_normalized_as_the_base_string_needs() {
        assert_eq!(
            normalize_url("HTTPS://API.Example.COM:443/socialize.removeConnection").as_deref(),
            Some("https://api.example.com/socialize.removeConnection")
        );
        assert_eq!(
            normalize_url("http://Example.com:80/x").as_deref(),
            Some("http://example.com/x")
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:8080/A.b").as_deref(),
            Some("http://127.0.0.1:8080/A.b")
        );
        assert_eq!(normalize_url("not a url"), None);
    }

    /// The example of OAuth 1.0 (RFC 5849 section 3.4.1.1 style) built by
    /// hand: sorted, encoded twice, `sig` left out.
    #[test]
    fn the_base_string_sorts_and_encodes_the_parameters() {
        let parameters = vec![
            ("UID".to_owned(), "u 1".to_owned()),
            ("apiKey".to_owned(), "3_a".to_owned()),
            ("sig".to_owned(), "ignored".to_owned()),
            ("nonce".to_owned(), "n/1".to_owned()),
        ];
        assert_eq!(
            base_string("post", "https://h/socialize.removeConnection", &parameters),
            "POST&https%3A%2F%2Fh%2Fsocialize.removeConnection&\
             UID%3Du%25201%26apiKey%3D3_a%26nonce%3Dn%252F1"
        );
    }

    /// RFC 2202 test case 2 for HMAC-SHA1.
    #[test]
    fn signatures_are_base64_hmac_sha1_and_verify_in_constant_time() {
        let sig = sign(b"Jefe", "what do ya want for nothing?").unwrap();
        let expected = base64::engine::general_purpose::STANDARD
            .encode(hex::decode("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79").unwrap());
        assert_eq!(sig, expected);
        assert!(verify(b"Jefe", "what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", "what do ya want for nothing!", &sig));
        assert!(!verify(b"jefe", "what do ya want for nothing?", &sig));
        assert!(!verify(
            b"Jefe",
            "what do ya want for nothing?",
            "not base64!"
        ));
    }

    #[test]
    fn timestamps_are_seconds_or_milliseconds() {
        let seconds = parse_timestamp("1764201600").unwrap();
        let millis = parse_timestamp("1764201600123").unwrap();
        assert_eq!(seconds.timestamp(), 1_764_201_600);
        assert_eq!(millis.timestamp_millis(), 1_764_201_600_123);
        for bad in ["", "-5", "0", "12.5", "soon", "99999999999999999999"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
        let now = seconds;
        assert!(within_window(now - chrono::Duration::seconds(120), now));
        assert!(within_window(now + chrono::Duration::seconds(120), now));
        assert!(!within_window(now - chrono::Duration::seconds(121), now));
        assert!(!within_window(now + chrono::Duration::seconds(121), now));
    }
}
