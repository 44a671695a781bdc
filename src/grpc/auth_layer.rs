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
    CallId,
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
    /// Failed authentications per peer address: a peer that keeps sending
    /// bad tokens is refused before its tokens are looked up.
    failures: Option<RateLimiter>,
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
            failures: (settings.rate_limit_per_second > 0.0).then(|| {
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
        let peer_key = peer.map(|ip| format!("peer:{ip}"));
        let failures = self.failures.as_ref().zip(peer_key.as_deref());
        if let Some((failures, peer_key)) = failures
            && !failures.has_capacity(peer_key)
        {
            return Err(ApiError::RateLimited(
                "too many failed authentications: slow down and retry later".into(),
            ));
        }
        let grant = match self.authenticate(header).await {
            Ok(grant) => grant,
            Err(err) => {
                if let (Some((failures, peer_key)), ApiError::Unauthenticated(_)) = (failures, &err)
                {
                    failures.try_acquire(peer_key);
                }
                return Err(err);
            }
        };
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
            // The telemetry layer's call id, so refusals match their log span.
            let call_id = request
                .extensions()
                .get::<CallId>()
                .map_or_else(|| CallId::generate().0, |id| id.0.clone());
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
                    // Handlers and inner layers never see the token, so
                    // nothing after this point can log it.
                    request.headers_mut().remove(http::header::AUTHORIZATION);
                    let response =
                        too_large_as_resource_exhausted(inner.call(request).await?, &call_id);
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
                Err(err) => Ok(refuse(err, &path, &call_id)),
            }
        })
    }
}

/// tonic refuses a request over `max_decoding_message_size` with
/// OUT_OF_RANGE and no details; callers get RESOURCE_EXHAUSTED with an
/// ErrorInfo and a call id instead, like every other limit.
fn too_large_as_resource_exhausted(response: Response<Body>, call_id: &str) -> Response<Body> {
    match tonic::Status::from_header_map(response.headers()) {
        Some(status)
            if status.code() == tonic::Code::OutOfRange
                && status.message().contains("message length too large") =>
        {
            tracing::info!(call_id, reason = "RESOURCE_EXHAUSTED", "request too large");
            ApiError::ResourceExhausted("the request message is too large".into())
                .into_status(call_id)
                .into_http()
        }
        _ => response,
    }
}

/// A refusal as a gRPC response (trailers-only), with ErrorInfo and call id.
fn refuse(err: ApiError, path: &str, call_id: &str) -> Response<Body> {
    let (_, reason) = err.code_and_reason();
    tracing::info!(call_id, rpc = path, reason, "call refused");
    err.into_status(call_id).into_http()
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

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::storage::db;

    /// A body that never ends, like a live Subscribe stream.
    struct Endless;

    impl http_body::Body for Endless {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
            Poll::Pending
        }
    }

    /// Answers with an endless body and the caller's name in a header.
    #[derive(Clone)]
    struct Echo;

    impl Service<Request<Body>> for Echo {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Self::Future {
            let mut response = Response::new(Body::new(Endless));
            if request.headers().contains_key("authorization") {
                response
                    .headers_mut()
                    .insert("x-saw-token", "yes".parse().unwrap());
            }
            if let Some(caller) = request.extensions().get::<Caller>() {
                response
                    .headers_mut()
                    .insert("x-caller", caller.name.parse().unwrap());
            }
            std::future::ready(Ok(response))
        }
    }

    async fn security(
        mode: AccessMode,
        settings: SecuritySettings,
    ) -> (Arc<Security>, TokenStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let connection = db::connect(&url).await.unwrap();
        db::migrate(&connection).await.unwrap();
        let tokens = TokenStore::new(connection);
        let security = Arc::new(Security::new(tokens.clone(), mode, &settings));
        (security, tokens, dir)
    }

    fn call(path: &str, token: Option<&str>) -> Request<Body> {
        let mut builder = Request::builder().uri(path);
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        builder.body(Body::empty()).unwrap()
    }

    fn status_of(response: &Response<Body>) -> Option<Code> {
        tonic::Status::from_header_map(response.headers()).map(|s| s.code())
    }

    #[tokio::test]
    async fn stream_permits_are_held_until_the_response_body_is_dropped() {
        let settings = SecuritySettings {
            max_streams_per_caller: 2,
            rate_limit_per_second: 0.0,
            token_cache_ttl: Duration::from_secs(60),
            ..SecuritySettings::default()
        };
        let (security, _tokens, _dir) = security(AccessMode::Open, settings).await;
        let mut service = security.layer().layer(Echo);
        let subscribe = "/connections.v1.EventService/Subscribe";
        let first = service.call(call(subscribe, None)).await.unwrap();
        let second = service.call(call(subscribe, None)).await.unwrap();
        assert_eq!(status_of(&first), None);
        assert_eq!(status_of(&second), None);
        let third = service.call(call(subscribe, None)).await.unwrap();
        assert_eq!(status_of(&third), Some(Code::ResourceExhausted));
        // Unary calls are not bounded.
        let unary = service
            .call(call("/connections.v1.EventService/CommitPosition", None))
            .await
            .unwrap();
        assert_eq!(status_of(&unary), None);
        drop(first);
        let again = service.call(call(subscribe, None)).await.unwrap();
        assert_eq!(
            status_of(&again),
            None,
            "the ended stream gave its permit back"
        );
        drop(second);
        drop(again);
    }

    #[tokio::test]
    async fn admitted_callers_reach_the_service_with_their_name() {
        let settings = SecuritySettings {
            token_cache_ttl: Duration::ZERO,
            ..SecuritySettings::default()
        };
        let (security, tokens, _dir) = security(AccessMode::Authenticated, settings).await;
        let token = super::super::auth::generate_token();
        tokens
            .create("billing", &hash_token(&token), "*", "connections.read")
            .await
            .unwrap();
        let mut service = security.layer().layer(Echo);
        let get = "/connections.v1.ConnectionService/GetAccount";
        let ok = service.call(call(get, Some(&token))).await.unwrap();
        assert_eq!(status_of(&ok), None);
        assert_eq!(ok.headers()["x-caller"], "billing");
        assert!(!ok.headers().contains_key("x-saw-token"));
        let anonymous = service.call(call(get, None)).await.unwrap();
        assert_eq!(status_of(&anonymous), Some(Code::Unauthenticated));
        let write = service
            .call(call(
                "/connections.v1.ConnectionService/RemoveConnection",
                Some(&token),
            ))
            .await
            .unwrap();
        assert_eq!(status_of(&write), Some(Code::PermissionDenied));
        let health = service
            .call(call("/grpc.health.v1.Health/Check", None))
            .await
            .unwrap();
        assert_eq!(status_of(&health), None);
    }
}
