//! The gate every door puts in front of its calls: authenticates the caller
//! (a bearer token, or for the REST door an application key's proof),
//! checks the permission the call needs, applies the per-caller rate limit
//! and the bound on concurrent streams.
//!
//! Open mode (no tokens or application keys, loopback only, decided at
//! start-up) lets every call through as `anonymous`; it ends for good once
//! a token or an application key exists. User tokens (browser SDK) do not
//! end it, but one that is presented is honoured even in open mode, so it
//! never acts beyond its account. An application key's proof is
//! checked even in open mode, so its caller is named. Token
//! lookups, and the "do tokens exist" check of open mode, are cached for
//! `token_cache_ttl` (2 s by default): a new token or a revocation takes
//! effect within that delay.

use std::{
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::OwnedSemaphorePermit;

use super::{
    Access, AccessError, AccessMode, Caller, Grant,
    app_keys::{AppKeyProof, AppKeys},
    bearer_token, hash_token, hashes_match,
    limits::{RateLimiter, StreamLimiter},
    ttl_cache::{TtlCache, lock},
};
use crate::{config::SecuritySettings, storage::TokenStore};

/// A caller let in: who, and the stream permit to hold while its stream
/// lives (None for unary calls).
#[derive(Debug)]
pub struct Admission {
    pub caller: Caller,
    pub stream_permit: Option<OwnedSemaphorePermit>,
}

/// The credentials a door found in a request.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// The `authorization` header's value, if any (`Bearer <token>`).
    Header(Option<&'a str>),
    /// An application key and its proof (REST).
    AppKey(&'a AppKeyProof),
}

/// Admits callers: shared by every door, one per process.
#[derive(Debug)]
pub struct Gate {
    tokens: TokenStore,
    /// Sticky: once true, callers must authenticate until the process ends.
    authenticated: AtomicBool,
    /// When open mode last asked the database whether tokens exist.
    tokens_checked_at: Mutex<Option<Instant>>,
    ttl: Duration,
    /// Token hash -> grant if active.
    cache: TtlCache<Option<Grant>>,
    rate: Option<RateLimiter>,
    /// Failed authentications per peer address: a peer that keeps sending
    /// bad tokens is refused before its tokens are looked up.
    failures: Option<RateLimiter>,
    streams: Option<StreamLimiter>,
    /// Application keys (REST); None when the door that needs them is off.
    app_keys: Option<AppKeys>,
}

impl Gate {
    pub fn new(tokens: TokenStore, mode: AccessMode, settings: &SecuritySettings) -> Self {
        Self {
            tokens,
            authenticated: AtomicBool::new(mode == AccessMode::Authenticated),
            tokens_checked_at: Mutex::new(Some(Instant::now())),
            ttl: settings.token_cache_ttl,
            cache: TtlCache::new(settings.token_cache_ttl),
            rate: (settings.rate_limit_per_second > 0.0).then(|| {
                RateLimiter::new(settings.rate_limit_per_second, settings.rate_limit_burst)
            }),
            failures: (settings.rate_limit_per_second > 0.0).then(|| {
                RateLimiter::new(settings.rate_limit_per_second, settings.rate_limit_burst)
            }),
            streams: (settings.max_streams_per_caller > 0)
                .then(|| StreamLimiter::new(settings.max_streams_per_caller)),
            app_keys: None,
        }
    }

    /// Also accepts application keys (and counts them when deciding
    /// whether open mode has ended).
    pub fn with_app_keys(mut self, app_keys: AppKeys) -> Self {
        self.app_keys = Some(app_keys);
        self
    }

    /// The current mode (open mode ends when the first token appears).
    pub fn mode(&self) -> AccessMode {
        if self.authenticated.load(Ordering::Acquire) {
            AccessMode::Authenticated
        } else {
            AccessMode::Open
        }
    }

    /// Whether callers must authenticate now. In open mode, asks the
    /// database at most once per TTL; the first token ends open mode.
    async fn requires_authentication(&self) -> Result<bool, AccessError> {
        if self.authenticated.load(Ordering::Acquire) {
            return Ok(true);
        }
        {
            let mut checked = lock(&self.tokens_checked_at);
            match *checked {
                Some(at) if at.elapsed() < self.ttl => return Ok(false),
                _ => *checked = Some(Instant::now()),
            }
        }
        let credentials_exist = match (self.tokens.any_active().await, &self.app_keys) {
            (Ok(false), Some(app_keys)) => app_keys.any_active().await,
            (tokens, _) => tokens,
        };
        match credentials_exist {
            Ok(false) => Ok(false),
            Ok(true) => {
                if !self.authenticated.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "API tokens or application keys now exist: open mode ended, callers \
                         must authenticate"
                    );
                }
                Ok(true)
            }
            Err(err) => {
                // Try again on the next call rather than after a TTL.
                *lock(&self.tokens_checked_at) = None;
                tracing::error!(error = %err, "cannot check for API tokens");
                Err(unavailable(&err))
            }
        }
    }

    /// The grant of a presented token, or the refusal.
    async fn authenticate(&self, header: Option<&str>) -> Result<Grant, AccessError> {
        let token = header.and_then(bearer_token).ok_or_else(|| {
            AccessError::Unauthenticated(
                "missing or malformed `authorization: Bearer <token>` header".into(),
            )
        })?;
        let hash = hash_token(token);
        if let Some(cached) = self.cache.get(&hash) {
            return cached.ok_or_else(invalid_token).and_then(unexpired);
        }
        let found = self.tokens.active_by_hash(&hash).await.map_err(|err| {
            tracing::error!(error = %err, "cannot look up an API token");
            unavailable(&err)
        })?;
        let grant = found.and_then(|found| {
            if !hashes_match(&hash, &found.token_hash) {
                return None;
            }
            let token = found.token;
            Grant::from_stored(
                token.caller,
                &token.sites,
                &token.permissions,
                token.expires_at,
                token.uid,
            )
            .map_err(|unreadable| {
                tracing::error!(
                    token_id = token.id,
                    unreadable,
                    "stored API token is unreadable: refused"
                );
            })
            .ok()
        });
        self.cache.insert(hash, grant.clone());
        grant.ok_or_else(invalid_token).and_then(unexpired)
    }

    /// Admits one call: authenticates and authorises the caller, then
    /// applies its limits. `stream` says whether the call is a long-lived
    /// stream (bounded per caller). `peer` keys anonymous callers' limits and
    /// failed authentications.
    pub async fn admit(
        &self,
        access: Access,
        header: Option<&str>,
        peer: Option<IpAddr>,
        stream: bool,
    ) -> Result<Admission, AccessError> {
        self.admit_credential(access, Credential::Header(header), peer, stream)
            .await
    }

    /// [`Gate::admit`] for any kind of credential.
    pub async fn admit_credential(
        &self,
        access: Access,
        credential: Credential<'_>,
        peer: Option<IpAddr>,
        stream: bool,
    ) -> Result<Admission, AccessError> {
        let (caller, key) = self.authorise(access, credential, peer).await?;
        let stream_permit = self.limit(&key, stream)?;
        Ok(Admission {
            caller,
            stream_permit,
        })
    }

    /// Authenticates and authorises one call; returns the caller (anonymous
    /// in open mode) and the key its limits are counted under.
    async fn authorise(
        &self,
        access: Access,
        credential: Credential<'_>,
        peer: Option<IpAddr>,
    ) -> Result<(Caller, String), AccessError> {
        let anonymous = match credential {
            _ if access == Access::Open => true,
            Credential::Header(_) => !self.requires_authentication().await?,
            Credential::AppKey(_) => false,
        };
        if anonymous {
            // User tokens do not end open mode, but one that is presented is
            // honoured, so that it never acts beyond its account even here.
            if let (Credential::Header(header @ Some(_)), false) =
                (credential, access == Access::Open)
            {
                match self.authenticate(header).await {
                    Ok(grant) if grant.caller.uid.is_some() => return authorised(grant, access),
                    // Only user tokens can be expired yet active in open mode.
                    Err(AccessError::TokenExpired) => return Err(AccessError::TokenExpired),
                    _ => {}
                }
            }
            let key = peer.map_or_else(|| "anonymous".to_owned(), |ip| format!("peer:{ip}"));
            return Ok((Caller::anonymous(), key));
        }
        let peer_key = peer.map(|ip| format!("peer:{ip}"));
        let failures = self.failures.as_ref().zip(peer_key.as_deref());
        if let Some((failures, peer_key)) = failures
            && !failures.has_capacity(peer_key)
        {
            return Err(AccessError::RateLimited(
                "too many failed authentications: slow down and retry later".into(),
            ));
        }
        let authenticated = match credential {
            Credential::Header(header) => self.authenticate(header).await,
            Credential::AppKey(proof) => match &self.app_keys {
                Some(app_keys) => app_keys.verify(proof, chrono::Utc::now()).await,
                None => Err(AccessError::Unauthenticated(
                    "application keys are not accepted here".into(),
                )),
            },
        };
        let grant = match authenticated {
            Ok(grant) => grant,
            Err(err) => {
                if let (
                    Some((failures, peer_key)),
                    AccessError::Unauthenticated(_) | AccessError::TokenExpired,
                ) = (failures, &err)
                {
                    failures.try_acquire(peer_key);
                }
                return Err(err);
            }
        };
        authorised(grant, access)
    }

    /// Applies the limits for a caller admitted on `key`; returns the
    /// stream permit to hold for the life of the response.
    fn limit(&self, key: &str, stream: bool) -> Result<Option<OwnedSemaphorePermit>, AccessError> {
        if let Some(rate) = &self.rate
            && !rate.try_acquire(key)
        {
            return Err(AccessError::RateLimited(
                "too many requests: slow down and retry later".into(),
            ));
        }
        match &self.streams {
            Some(streams) if stream => {
                streams
                    .try_acquire(key)
                    .map(Some)
                    .ok_or(AccessError::TooManyStreams {
                        limit: streams.limit(),
                    })
            }
            _ => Ok(None),
        }
    }
}

/// Checks the permission `access` needs; returns the caller and the key its
/// limits are counted under. A user token's key names its site and uid,
/// so users of two sites with the same uid never share a budget.
fn authorised(grant: Grant, access: Access) -> Result<(Caller, String), AccessError> {
    let allowed = match access {
        Access::Open | Access::AnyCaller => true,
        Access::Requires(permission) => grant.permissions.contains(&permission),
        Access::Denied => false,
    };
    if !allowed {
        return Err(AccessError::MissingPermission);
    }
    let key = match &grant.caller.uid {
        Some(uid) => format!("user:{}:{uid}", super::format_sites(&grant.caller.sites)),
        None => format!("caller:{}", grant.caller.name),
    };
    Ok((grant.caller, key))
}

/// Refuses a grant whose token has expired (checked on every call, cached
/// or not).
fn unexpired(grant: Grant) -> Result<Grant, AccessError> {
    match grant.expires_at {
        Some(at) if at <= chrono::Utc::now() => Err(AccessError::TokenExpired),
        _ => Ok(grant),
    }
}

/// The same refusal for unknown and revoked tokens.
fn invalid_token() -> AccessError {
    AccessError::Unauthenticated("invalid or revoked token".into())
}

/// The refusal when the credential store fails: overloaded or unavailable.
pub(crate) fn unavailable(err: &crate::storage::StorageError) -> AccessError {
    if err.is_busy() {
        AccessError::Busy
    } else {
        AccessError::Unavailable
    }
}
