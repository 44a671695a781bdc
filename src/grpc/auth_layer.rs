//! The security layer: a tower layer in front of every gRPC service that
//! finds the caller's credentials (`authorization: Bearer <token>`) and the
//! permission the path needs (`routes`), asks the shared `access::Gate`, and
//! puts the admitted `Caller` into the request's extensions for
//! `call_context`.
//!
//! Health and reflection pass untouched. Refusals are ordinary statuses with
//! an ErrorInfo reason and an `x-call-id`, built by `status::ApiError`.

use std::{
    convert::Infallible,
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
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
    routes::{access_for_path, is_bounded_stream},
    status::ApiError,
};
use crate::access::{Access, Admission, CallId, Gate};

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
    security: Arc<Gate>,
}

impl SecurityLayer {
    pub fn new(gate: Arc<Gate>) -> Self {
        Self { security: gate }
    }
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
    security: Arc<Gate>,
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
            let admitted = security
                .admit(access, header, peer_ip(&request), is_bounded_stream(&path))
                .await;
            match admitted {
                Ok(Admission {
                    caller,
                    stream_permit,
                }) => {
                    request.extensions_mut().insert(caller);
                    // Handlers and inner layers never see the token, so
                    // nothing after this point can log it.
                    request.headers_mut().remove(http::header::AUTHORIZATION);
                    let response =
                        client_errors_as_client_errors(inner.call(request).await?, &call_id);
                    Ok(match stream_permit {
                        Some(permit) => response.map(|body| {
                            Body::new(GuardedBody {
                                inner: body,
                                _permit: permit,
                            })
                        }),
                        None => response,
                    })
                }
                Err(err) => Ok(refuse(err.into(), &call_id)),
            }
        })
    }
}

/// tonic answers two client mistakes as if they were the server's: a
/// request over `max_decoding_message_size` (OUT_OF_RANGE, no details) and a
/// body it cannot decode (INTERNAL: truncated, wrong wire type, invalid
/// UTF-8, nested past the decoder's limit). Callers get RESOURCE_EXHAUSTED
/// and INVALID_ARGUMENT `MALFORMED_REQUEST` instead, with an ErrorInfo and
/// the call id, like every other refusal.
fn client_errors_as_client_errors(response: Response<Body>, call_id: &str) -> Response<Body> {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    match status.code() {
        tonic::Code::OutOfRange if status.message().contains("message length too large") => {
            record_reason(&ApiError::MessageTooLarge);
            ApiError::MessageTooLarge.into_status(call_id).into_http()
        }
        tonic::Code::Internal => match decode_failure(status.message()) {
            Some(malformed) => {
                record_reason(&malformed);
                warn_malformed(call_id, &malformed);
                malformed.into_status(call_id).into_http()
            }
            None => response,
        },
        _ => response,
    }
}

/// The decoder's failure, when `message` is one: the request field it
/// failed in (the outermost of prost's `Message.field` stack) and why.
fn decode_failure(message: &str) -> Option<ApiError> {
    const PREFIX: &str = "failed to decode Protobuf message: ";
    let mut rest = message.strip_prefix(PREFIX)?;
    // `Message.field: ` frames, innermost first, then the description
    // (which may itself contain ": ").
    let mut field = None;
    while let Some((frame, after)) = rest.split_once(": ") {
        let Some((message, name)) = frame.split_once('.') else {
            break;
        };
        let is_ident =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_ident(message) || !is_ident(name) {
            break;
        }
        field = Some(name.to_owned());
        rest = after;
    }
    let description = rest;
    Some(ApiError::MalformedRequest {
        field,
        description: description.to_owned(),
    })
}

/// One WARN line per ten seconds at most, however many bad bodies arrive:
/// any client can send them, and the log must stay readable.
fn warn_malformed(call_id: &str, malformed: &ApiError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    const EVERY_SECONDS: u64 = 10;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= EVERY_SECONDS
        && LAST_WARNED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(call_id, error = %malformed, suppressed, "malformed request body refused");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}

/// A refusal as a gRPC response (trailers-only), with ErrorInfo and call id.
/// Not logged here: the call layer's one line for the call says it.
fn refuse(err: ApiError, call_id: &str) -> Response<Body> {
    record_reason(&err);
    err.into_status(call_id).into_http()
}

/// The refusal's reason, in the call's span (and so in its log line).
fn record_reason(err: &ApiError) {
    let (_, reason) = err.code_and_reason();
    tracing::Span::current().record("reason", tracing::field::display(reason));
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

    use std::time::Duration;

    use super::*;
    use crate::{
        access::{AccessMode, Caller, generate_token, hash_token},
        config::SecuritySettings,
        storage::{TokenStore, db},
    };

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
    ) -> (Arc<Gate>, TokenStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let connection = db::connect(&url).await.unwrap();
        db::migrate(&connection).await.unwrap();
        let tokens = TokenStore::new(connection);
        let security = Arc::new(Gate::new(tokens.clone(), mode, &settings));
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
        let mut service = SecurityLayer::new(security.clone()).layer(Echo);
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
        let token = generate_token();
        tokens
            .create("billing", &hash_token(&token), "*", "connections.read")
            .await
            .unwrap();
        let mut service = SecurityLayer::new(security.clone()).layer(Echo);
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

#[cfg(test)]
mod decode_tests {
    use super::*;

    #[test]
    fn decoder_failures_name_the_request_field() {
        let failure = decode_failure(
            "failed to decode Protobuf message: Value.kind: Struct.fields: \
             RemoveConnectionRequest.context: recursion limit reached",
        );
        match failure {
            Some(ApiError::MalformedRequest { field, description }) => {
                assert_eq!(field.as_deref(), Some("context"));
                assert_eq!(description, "recursion limit reached");
            }
            other => panic!("{other:?}"),
        }
        match decode_failure("failed to decode Protobuf message: invalid varint") {
            Some(ApiError::MalformedRequest { field, .. }) => assert_eq!(field, None),
            other => panic!("{other:?}"),
        }
        assert!(decode_failure("something else").is_none());
    }
}
