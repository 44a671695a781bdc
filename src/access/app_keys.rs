//! Application keys (SPEC section 11): a public `userKey` and a secret
//! (base64 of 24 random bytes), scoped to sites and permissions like a
//! token. A REST caller proves it holds the secret either by sending it
//! (`secret`, compared in constant time) or by signing the request
//! (`timestamp`, `nonce`, `sig`; see [`super::signature`]). A nonce is
//! accepted once: it is recorded in the database, so a replay is refused
//! whichever replica it reaches.
//!
//! Lookups (key and unsealed secret) are cached for the token cache TTL, so
//! a revocation takes effect within that delay, as for tokens.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine;
use chrono::{DateTime, Utc};
use rand::{Rng, RngCore};
use subtle::ConstantTimeEq;

use super::{
    AccessError, Grant,
    signature::{self, TIMESTAMP_WINDOW},
    ttl_cache::{TtlCache, lock},
};
use crate::storage::{AppKeySecret, AppKeyStore, StorageError, StoredAppKey};

/// Random bytes in a secret (the SPEC asks for at least 16).
pub const SECRET_BYTES: usize = 24;
/// Characters of a user key.
pub const USER_KEY_CHARS: usize = 12;
/// Longest accepted nonce: they are stored until their window ends.
pub const MAX_NONCE_CHARS: usize = 128;
/// How often expired nonces are deleted (by whichever replica gets there).
const NONCE_PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// What a caller presented for an application key.
#[derive(Clone, PartialEq, Eq)]
pub struct AppKeyProof {
    pub user_key: String,
    pub proof: Proof,
}

/// How the caller proves it holds the key's secret.
#[derive(Clone, PartialEq, Eq)]
pub enum Proof {
    /// (a) The secret itself, as a request parameter.
    Secret(String),
    /// (b) A signed request: the door computed the base string from the URL
    /// the client called and every parameter but `sig`.
    Signed {
        timestamp: String,
        nonce: String,
        sig: String,
        base_string: String,
    },
}

impl std::fmt::Debug for AppKeyProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.proof {
            Proof::Secret(_) => "secret",
            Proof::Signed { .. } => "signed",
        };
        f.debug_struct("AppKeyProof")
            .field("user_key", &self.user_key)
            .field("proof", &kind)
            .finish()
    }
}

/// A new user key: 12 characters of `A-Z a-z 0-9`.
pub fn generate_user_key() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..USER_KEY_CHARS)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A new secret: the raw bytes (stored sealed, the HMAC key) and their
/// base64, which is what the caller is given, once.
pub fn generate_secret() -> (AppKeySecret, String) {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
    (AppKeySecret(bytes), encoded)
}

/// A user key as it may appear in a request: short and printable, so a
/// junk value is refused before it reaches the database.
fn plausible_user_key(user_key: &str) -> bool {
    !user_key.is_empty() && user_key.len() <= 64 && user_key.bytes().all(|b| b.is_ascii_graphic())
}

type Cached = Option<(StoredAppKey, AppKeySecret)>;

/// Verifies application-key proofs; one per process, inside the `Gate`.
#[derive(Debug)]
pub struct AppKeys {
    store: AppKeyStore,
    /// User key -> active key and secret, if any.
    cache: TtlCache<Cached>,
    pruned_at: Mutex<Option<Instant>>,
}

impl AppKeys {
    pub fn new(store: AppKeyStore, ttl: Duration) -> Self {
        Self {
            store,
            cache: TtlCache::new(ttl),
            pruned_at: Mutex::new(None),
        }
    }

    /// Whether any key is active (ends open mode, like a token).
    pub async fn any_active(&self) -> Result<bool, StorageError> {
        self.store.any_active().await
    }

    /// Checks a proof at `now`; the grant of the key, or the refusal.
    pub async fn verify(
        &self,
        proof: &AppKeyProof,
        now: DateTime<Utc>,
    ) -> Result<Grant, AccessError> {
        if !plausible_user_key(&proof.user_key) {
            return Err(invalid_key());
        }
        let (key, secret) = self
            .lookup(&proof.user_key)
            .await?
            .ok_or_else(invalid_key)?;
        match &proof.proof {
            Proof::Secret(presented) => {
                let expected = base64::engine::general_purpose::STANDARD.encode(&secret.0);
                if !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
                    return Err(invalid_key());
                }
            }
            Proof::Signed {
                timestamp,
                nonce,
                sig,
                base_string,
            } => {
                if !signature::verify(&secret.0, base_string, sig) {
                    return Err(AccessError::Unauthenticated(
                        "the signature does not match the request".into(),
                    ));
                }
                let timestamp = signature::parse_timestamp(timestamp).ok_or_else(|| {
                    AccessError::Unauthenticated(
                        "timestamp must be Unix seconds or milliseconds".into(),
                    )
                })?;
                if !signature::within_window(timestamp, now) {
                    return Err(AccessError::StaleTimestamp {
                        window_seconds: TIMESTAMP_WINDOW.as_secs(),
                    });
                }
                if nonce.is_empty() || nonce.chars().count() > MAX_NONCE_CHARS {
                    return Err(AccessError::Unauthenticated(format!(
                        "nonce must be 1 to {MAX_NONCE_CHARS} characters"
                    )));
                }
                self.remember_nonce(&key.user_key, nonce, timestamp, now)
                    .await?;
            }
        }
        grant_of(key)
    }

    /// The active key and its secret, from the cache or the database.
    async fn lookup(&self, user_key: &str) -> Result<Cached, AccessError> {
        if let Some(cached) = self.cache.get(user_key) {
            return Ok(cached);
        }
        let found = match self.store.active_with_secret(user_key).await {
            Ok(found) => found,
            Err(StorageError::Corrupt(cause)) => {
                tracing::error!(user_key, error = %cause, "application key unusable: refused");
                None
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot look up an application key");
                return Err(super::gate::unavailable(&err));
            }
        };
        self.cache.insert(user_key.to_owned(), found.clone());
        Ok(found)
    }

    /// Records the nonce until its timestamp leaves the window; a nonce seen
    /// before (by any replica) is a replay.
    async fn remember_nonce(
        &self,
        user_key: &str,
        nonce: &str,
        timestamp: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), AccessError> {
        self.prune_nonces(now).await;
        let window = chrono::Duration::from_std(TIMESTAMP_WINDOW).unwrap_or(chrono::Duration::MAX);
        let expires_at = timestamp.checked_add_signed(window).unwrap_or(now);
        match self.store.remember_nonce(user_key, nonce, expires_at).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(AccessError::ReplayedNonce),
            Err(err) => {
                tracing::error!(error = %err, "cannot record a request nonce");
                Err(super::gate::unavailable(&err))
            }
        }
    }

    /// Deletes expired nonces at most once per interval per process. A
    /// failure only delays the clean-up.
    async fn prune_nonces(&self, now: DateTime<Utc>) {
        {
            let mut pruned_at = lock(&self.pruned_at);
            if pruned_at.is_some_and(|at| at.elapsed() < NONCE_PRUNE_INTERVAL) {
                return;
            }
            *pruned_at = Some(Instant::now());
        }
        match self.store.prune_nonces(now).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "expired request nonces deleted"),
            Err(err) => tracing::warn!(error = %err, "cannot delete expired request nonces"),
        }
    }
}

/// What a stored key grants; an unreadable row grants nothing.
fn grant_of(key: StoredAppKey) -> Result<Grant, AccessError> {
    let StoredAppKey {
        user_key,
        caller,
        sites,
        permissions,
        ..
    } = key;
    Grant::from_stored(caller, &sites, &permissions, None, None).map_err(|unreadable| {
        tracing::error!(
            user_key,
            unreadable,
            "stored application key is unreadable: refused"
        );
        invalid_key()
    })
}

/// The same refusal for an unknown key, a revoked key and a wrong secret.
fn invalid_key() -> AccessError {
    AccessError::Unauthenticated("invalid application key or secret".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_keys_and_secrets_are_random_and_well_formed() {
        let (a, b) = (generate_user_key(), generate_user_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), USER_KEY_CHARS);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        let (raw, encoded) = generate_secret();
        assert_eq!(raw.0.len(), SECRET_BYTES);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&encoded)
                .unwrap(),
            raw.0
        );
        assert!(!format!("{raw:?}").contains(&encoded));
        let proof = AppKeyProof {
            user_key: a,
            proof: Proof::Secret(encoded.clone()),
        };
        assert!(!format!("{proof:?}").contains(&encoded));
    }

    #[test]
    fn junk_user_keys_are_not_looked_up() {
        assert!(plausible_user_key("AbC123xyz789"));
        assert!(!plausible_user_key(""));
        assert!(!plausible_user_key("a b"));
        assert!(!plausible_user_key(&"k".repeat(65)));
    }
}
