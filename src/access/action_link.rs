//! Signed unlink action links (SPEC section 12), independent of any
//! protocol: the canonical query a link's signature covers, the signature,
//! the lifetime rules, and the key under which a used link is remembered.
//!
//! ```text
//! canonical = enc(name) "=" enc(value), for every parameter but `sig`,
//!             sorted by encoded name then encoded value, joined by "&"
//! sig       = base64url-without-padding(HMAC-SHA256(key = the site's action secret, canonical))
//! ```
//!
//! `enc` is RFC 3986 percent-encoding (every byte of the UTF-8 value but
//! `A-Z a-z 0-9 - . _ ~` as `%XX`, upper-case hex), as for signed REST
//! requests. The action secret is 32 random bytes, handed to a site as
//! base64url without padding; the HMAC key is the decoded bytes.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::{AccessError, signature::sorted_query};
pub use crate::storage::{ActionSecret, action_secrets::USED_LINK_PREFIX};

/// The parameter carrying the signature: left out of the canonical query.
pub use super::signature::SIG_PARAMETER;
/// The parameter carrying the link's expiry (Unix seconds).
pub const EXPIRES_PARAMETER: &str = "expires";
/// The longest a link may live, in seconds.
pub const MAX_LIFETIME_SECONDS: i64 = 15 * 60;
/// How far the signer's clock may run ahead of the server's, in seconds:
/// a link expiring up to this much after the 15 minutes is still accepted.
pub const CLOCK_SKEW_SECONDS: i64 = 30;

/// Bytes of a site's action secret.
const SECRET_BYTES: usize = 32;

/// A new random action secret.
pub fn generate_secret() -> ActionSecret {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    ActionSecret(bytes)
}

/// The form a site receives its secret in: base64url without padding.
pub fn encode_secret(secret: &ActionSecret) -> String {
    URL_SAFE_NO_PAD.encode(&secret.0)
}

/// `sig` of a canonical query.
pub fn sign(secret: &ActionSecret, canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(mac(secret, canonical).finalize().into_bytes())
}

/// Whether `sig` signs `canonical`: decoded, then compared in constant time.
pub fn verify(secret: &ActionSecret, canonical: &str, sig: &str) -> bool {
    let Ok(tag) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    mac(secret, canonical).verify_slice(&tag).is_ok()
}

fn mac(secret: &ActionSecret, canonical: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.0)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(canonical.as_bytes());
    mac
}

/// The canonical query of a link's parameters (`sig` left out): also the
/// query string the minted link carries before `&sig=`. The same rule as
/// the query part of a signed REST request's base string.
pub fn canonical_query(parameters: &[(String, String)]) -> String {
    sorted_query(parameters)
}

/// Checks a link's `expires` (Unix seconds) at `now` (Unix seconds): not
/// past, and not further ahead than the longest lifetime (plus clock skew).
pub fn check_expiry(expires: i64, now: i64) -> Result<(), AccessError> {
    if expires < now {
        return Err(AccessError::LinkExpired);
    }
    if expires.saturating_sub(now) > MAX_LIFETIME_SECONDS + CLOCK_SKEW_SECONDS {
        return Err(AccessError::LinkExpiryTooFar {
            max_seconds: MAX_LIFETIME_SECONDS,
        });
    }
    Ok(())
}

/// The idempotency key a link acts under: every click of one link is the
/// same request, so the first outcome answers the others, on any replica.
pub fn used_link_key(sig: &str) -> String {
    format!(
        "{USED_LINK_PREFIX}{}",
        hex::encode(Sha256::digest(sig.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_canonical_query_sorts_encodes_and_leaves_out_sig() {
        let query = pairs(&[
            ("vhost", "42"),
            ("uid", "7"),
            ("sig", "ignored"),
            ("redirectUrl", "/profile?tab=a b&x=é"),
            ("sub_provider_name", "none"),
            ("expires", "1764201600"),
        ]);
        assert_eq!(
            canonical_query(&query),
            "expires=1764201600&redirectUrl=%2Fprofile%3Ftab%3Da%20b%26x%3D%C3%A9\
             &sub_provider_name=none&uid=7&vhost=42"
        );
        // Same name twice: sorted by value too, so the order given does not matter.
        assert_eq!(
            canonical_query(&pairs(&[("a", "2"), ("a", "1")])),
            canonical_query(&pairs(&[("a", "1"), ("a", "2")]))
        );
    }

    /// RFC 4231 test case 2 for HMAC-SHA256, in base64url without padding.
    #[test]
    fn signatures_are_base64url_hmac_sha256_and_verify() {
        let secret = ActionSecret(b"Jefe".to_vec());
        let sig = sign(&secret, "what do ya want for nothing?");
        let expected = URL_SAFE_NO_PAD.encode(
            hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                .unwrap(),
        );
        assert_eq!(sig, expected);
        assert!(!sig.contains(['=', '+', '/']));
        let text = "what do ya want for nothing?";
        assert!(verify(&secret, text, &sig));
        assert!(!verify(&secret, "what do ya want for nothing!", &sig));
        assert!(!verify(&ActionSecret(b"jefe".to_vec()), text, &sig));
        assert!(!verify(&secret, text, "not base64!"));
        assert!(!verify(&secret, text, ""));
        assert!(!verify(&secret, text, &format!("{sig}=")));
    }

    #[test]
    fn secrets_are_random_32_bytes_and_never_printed() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(URL_SAFE_NO_PAD.decode(encode_secret(&a)).unwrap(), a.0);
        assert_eq!(a.0.len(), 32);
        assert_eq!(format!("{a:?}"), "ActionSecret(<redacted>)");
    }

    #[test]
    fn links_live_at_most_fifteen_minutes() {
        let now = 1_764_201_600;
        assert_eq!(check_expiry(now + 900, now), Ok(()));
        assert_eq!(check_expiry(now, now), Ok(()));
        assert!(check_expiry(now + 900 + CLOCK_SKEW_SECONDS, now).is_ok());
        assert_eq!(
            check_expiry(now + 901 + CLOCK_SKEW_SECONDS, now),
            Err(AccessError::LinkExpiryTooFar { max_seconds: 900 })
        );
        assert_eq!(check_expiry(now - 1, now), Err(AccessError::LinkExpired));
        assert!(check_expiry(i64::MAX, now).is_err());
        assert_eq!(check_expiry(i64::MIN, now), Err(AccessError::LinkExpired));
    }

    #[test]
    fn each_link_has_its_own_key() {
        let key = used_link_key("abc");
        assert!(key.starts_with(USED_LINK_PREFIX));
        assert_eq!(key, used_link_key("abc"));
        assert_ne!(key, used_link_key("abd"));
        assert!(key.len() <= 128);
    }
}
