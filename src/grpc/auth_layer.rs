//! The security layer: a tower layer in front of every service that
//! authenticates the caller (`authorization: Bearer <token>`), checks the
//! permission the gRPC path needs, applies the per-caller rate limit and the
//! bound on concurrent streams, and puts the `Caller` into the request's
//! extensions for the handlers (site scope) and `call_context` (actor).
//!
//! Health and reflection pass untouched. Refusals are ordinary statuses with
//! an ErrorInfo reason and an `x-call-id`, built by `status::ApiError`.
//!
//! Open mode (no tokens, loopback only, decided at start-up) lets every call
//! through as `anonymous`; it ends for good once a token exists. Token
//! lookups, and the "do tokens exist" check of open mode, are cached for
//! `token_cache_ttl` (2 s by default): a new token or a revocation takes
//! effect within that delay.

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tonic::{
    body::Body,
    codegen::Bytes,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tower::{Layer, Service};

use super::{
    auth::{
        Access, AccessMode, BOUNDED_STREAM_PATHS, Caller, Grant, access_for_path, bearer_token,
        hash_token, hashes_match, parse_permissions, parse_sites,
    },
    status::ApiError,
};
use crate::{
    config::SecuritySettings,
    grpc::limits::{RateLimiter, StreamLimiter},
    storage::TokenStore,
};

/// Cached token lookups kept before the cache is emptied.
const MAX_CACHED_TOKENS: usize = 10_000;

/// Shared state of the layer.
#[derive(Debug)]
pub struct Security {
    tokens: TokenStore,
    /// Sticky: once true, callers must authenticate until the process ends.
    authenticated: AtomicBool,
    /// When open mode last asked the database whether tokens exist.
    tokens_checked_at: Mutex<Option<Instant>>,
    ttl: Duration,
    /// Token hash -> (looked up at, grant if active).
    cache: Mutex<HashMap<String, (Instant, Option<Grant>)>>,
    rate: Option<RateLimiter>,
    streams: Option<StreamLimiter>,
}

impl Security {
    pub fn new(tokens: TokenStore, mode: AccessMode, settings: &SecuritySettings) -> Self {
        Self {
            tokens,
            authenticated: AtomicBool::new(mode == AccessMode::Authenticated),
            tokens_checked_at: Mutex::new(Some(Instant::now())),
            ttl: settings.token_cache_ttl,
            cache: Mutex::new(HashMap::new()),
            rate: (settings.rate_limit_per_second > 0.0).then(|| {
                RateLimiter::new(settings.rate_limit_per_second, settings.rate_limit_burst)
            }),
            streams: (settings.max_streams_per_caller > 0)
                .then(|| StreamLimiter::new(settings.max_streams_per_caller)),
        }
    }

    /// The current mode (open mode ends when the first token appears).
    pub fn mode(&self) -> AccessMode {
        if self.authenticated.load(Ordering::Acquire) {
            AccessMode::Authenticated
        } else {
            AccessMode::Open
        }
    }

    pub fn layer(self: &Arc<Self>) -> SecurityLayer {
        SecurityLayer {
            security: self.clone(),
        }
    }

    /// Whether callers must authenticate now. In open mode, asks the
    /// database at most once per TTL; the first token ends open mode.
    async fn requires_authentication(&self) -> Result<bool, ApiError> {
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
        match self.tokens.any_active().await {
            Ok(false) => Ok(false),
            Ok(true) => {
                if !self.authenticated.swap(true, Ordering::AcqRel) {
                    tracing::warn!(
                        "API tokens now exist: open mode ended, callers must authenticate"
                    );
                }
                Ok(true)
            }
            Err(err) => {
                // Try again on the next call rather than after a TTL.
                *lock(&self.tokens_checked_at) = None;
                tracing::error!(error = %err, "cannot check for API tokens");
                Err(unavailable())
            }
        }
    }

    /// The grant of a presented token, or the refusal.
    async fn authenticate(&self, header: Option<&str>) -> Result<Grant, ApiError> {
        let token = header.and_then(bearer_token).ok_or_else(|| {
            ApiError::Unauthenticated(
                "missing or malformed `authorization: Bearer <token>` header".into(),
            )
        })?;
        let hash = hash_token(token);
        if let Some(cached) = self.cached(&hash) {
            return cached.ok_or_else(invalid_token);
        }
        let found = self.tokens.active_by_hash(&hash).await.map_err(|err| {
            tracing::error!(error = %err, "cannot look up an API token");
            unavailable()
        })?;
        let grant = found.and_then(|found| {
            if !hashes_match(&hash, &found.token_hash) {
                return None;
            }
            let token = found.token;
            match (
                parse_sites(&token.sites),
                parse_permissions(&token.permissions),
            ) {
                (Ok(sites), Ok(permissions)) => Some(Grant {
                    caller: Caller {
                        name: token.caller,
                        sites,
                    },
                    permissions,
                }),
                (sites, permissions) => {
                    tracing::error!(
                        token_id = token.id,
                        sites = ?sites.err(),
                        permissions = ?permissions.err(),
                        "stored API token is unreadable: refused"
                    );
                    None
                }
            }
        });
        self.remember(hash, grant.clone());
        grant.ok_or_else(invalid_token)
    }

    fn cached(&self, hash: &str) -> Option<Option<Grant>> {
        let cache = lock(&self.cache);
        cache
            .get(hash)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, grant)| grant.clone())
    }

    fn remember(&self, hash: String, grant: Option<Grant>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.clear();
        }
        cache.insert(hash, (Instant::now(), grant));
    }

    /// Authenticates and authorises one call; returns the caller (None in
    /// open mode) and the key its limits are counted under.
    async fn admit(
        &self,
        access: Access,
        header: Option<&str>,
        peer: Option<IpAddr>,
    ) -> Result<(Option<Caller>, String), ApiError> {
        if !self.requires_authentication().await? {
            let key = peer.map_or_else(|| "anonymous".to_owned(), |ip| format!("peer:{ip}"));
            return Ok((None, key));
        }
        let grant = self.authenticate(header).await?;
        let allowed = match access {
            Access::Open | Access::AnyCaller => true,
            Access::Requires(permission) => grant.permissions.contains(&permission),
            Access::Denied => false,
        };
        if !allowed {
            return Err(ApiError::PermissionDenied(
                "the caller lacks the permission this call needs".into(),
            ));
        }
        let key = format!("caller:{}", grant.caller.name);
        Ok((Some(grant.caller), key))
    }

    /// Applies the limits for a caller admitted on `key`; returns the
    /// stream permit to hold for the life of the response.
    fn limit(&self, key: &str, path: &str) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if let Some(rate) = &self.rate
            && !rate.try_acquire(key)
        {
            return Err(ApiError::RateLimited(
                "too many requests: slow down and retry later".into(),
            ));
        }
        match &self.streams {
            Some(streams) if BOUNDED_STREAM_PATHS.contains(&path) => {
                streams.try_acquire(key).map(Some).ok_or_else(|| {
                    ApiError::ResourceExhausted(
                        "too many concurrent streams for this caller".into(),
                    )
                })
            }
            _ => Ok(None),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The same refusal for unknown and revoked tokens.
fn invalid_token() -> ApiError {
    ApiError::Unauthenticated("invalid or revoked token".into())
}

fn unavailable() -> ApiError {
    ApiError::Unavailable("cannot check credentials right now; retry later".into())
}

fn peer_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|addr| addr.ip())
}

/// The layer given to `Server::builder().layer(...)`.
#[derive(Clone, Debug)]
pub struct SecurityLayer {
    security: Arc<Security>,
}

impl<S> Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityService {
            inner,
            security: self.security.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SecurityService<S> {
    inner: S,
    security: Arc<Security>,
}

impl<S> Service<Request<Body>> for SecurityService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let security = self.security.clone();
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            let access = access_for_path(&path);
            if access == Access::Open {
                return inner.call(request).await;
            }
            let header = request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let admitted = match security.admit(access, header, peer_ip(&request)).await {
                Ok((caller, key)) => security.limit(&key, &path).map(|permit| (caller, permit)),
                Err(err) => Err(err),
            };
            match admitted {
                Ok((caller, permit)) => {
                    if let Some(caller) = caller {
                        request.extensions_mut().insert(caller);
                    }
                    let response = inner.call(request).await?;
                    Ok(match permit {
                        Some(permit) => response.map(|body| {
                            Body::new(GuardedBody {
                                inner: body,
                                _permit: permit,
                            })
                        }),
                        None => response,
                    })
                }
                Err(err) => Ok(refuse(err, &path)),
            }
        })
    }
}

/// A refusal as a gRPC response (trailers-only), with ErrorInfo and call id.
fn refuse(err: ApiError, path: &str) -> Response<Body> {
    let call_id = uuid::Uuid::new_v4().simple().to_string();
    let (_, reason) = err.code_and_reason();
    tracing::info!(call_id, rpc = path, reason, "call refused");
    err.into_status(&call_id).into_http()
}

/// A response body holding a stream permit until the body is dropped, i.e.
/// until the stream ends or the client goes away.
struct GuardedBody {
    inner: Body,
    _permit: OwnedSemaphorePermit,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
