//! The tower layer every gRPC call goes through: it gives the call its id
//! and its `rpc` span (continuing an incoming W3C `traceparent`), hands both
//! to the handler through request extensions, and when the response is ready
//! records the outcome, the latency metrics and one log line.
//!
//! Kept thin: a span, a UUID, a header parse and a few atomics per call.

use std::{
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::metrics;
use crate::grpc::{CallId, TraceParent, status::CALL_ID_HEADER};

/// Response header carrying the call span's traceparent back to the caller.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Adds [`TelemetryService`] around the gRPC routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct TelemetryLayer;

impl<S> tower::Layer<S> for TelemetryLayer {
    type Service = TelemetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TelemetryService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct TelemetryService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for TelemetryService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let rpc = request.uri().path().trim_start_matches('/').to_owned();
        let call_id = CallId::generate();
        let span = tracing::info_span!(
            "rpc",
            otel.name = %rpc,
            otel.kind = "server",
            rpc = %rpc,
            call_id = %call_id.0,
            site = Empty,
            code = Empty,
            reason = Empty,
        );
        let traceparent = start_trace(&span, request.headers());
        let call_id_header = HeaderValue::from_str(&call_id.0).ok();
        request.extensions_mut().insert(call_id);
        request
            .extensions_mut()
            .insert(TraceParent(traceparent.clone()));
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(
            async move {
                let result = response.await;
                let code = match &result {
                    Ok(response) => grpc_code(response.headers()),
                    // The routes never fail this way in tonic; counted anyway.
                    Err(_) => Code::Unknown,
                };
                finish(&rpc, code, started.elapsed());
                result.map(|mut response| {
                    let headers = response.headers_mut();
                    if let Ok(value) = HeaderValue::from_str(&traceparent) {
                        headers.insert(TRACEPARENT_HEADER, value);
                    }
                    // Handlers set it already; this covers statuses made
                    // before a handler ran (unknown method, refused caller).
                    if let Some(value) = call_id_header
                        && !headers.contains_key(CALL_ID_HEADER)
                    {
                        headers.insert(CALL_ID_HEADER, value);
                    }
                    response
                })
            }
            .instrument(span),
        )
    }
}

/// The code of a response: in the headers for a trailers-only (error)
/// response; a unary success carries OK in the trailers, so absent means OK.
/// Streams count as OK once opened (their end status is in the trailers).
fn grpc_code(headers: &HeaderMap) -> Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

/// Records the outcome in the current (rpc) span, the metrics and the log.
fn finish(rpc: &str, code: Code, elapsed: Duration) {
    let name = metrics::code_name(code);
    let span = Span::current();
    span.record("code", tracing::field::display(name));
    // OpenTelemetry-only attributes: kept out of the log lines.
    span.set_attribute("rpc.system", "grpc");
    span.set_attribute("rpc.grpc.status_code", i64::from(code as i32));
    if is_server_error(code) {
        span.set_status(opentelemetry::trace::Status::error(name));
    }
    metrics::record_rpc(rpc, code, elapsed);
    // Milliseconds with microsecond precision.
    let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    match code {
        // Probes call health every few seconds: keep them out of INFO.
        Code::Ok if rpc.starts_with("grpc.health.") => {
            tracing::debug!(latency_ms, "rpc finished");
        }
        Code::Ok => tracing::info!(latency_ms, "rpc finished"),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(latency_ms, "rpc failed");
        }
        _ => tracing::warn!(latency_ms, "rpc refused"),
    }
}

/// Codes that mean the server failed (OpenTelemetry's gRPC conventions),
/// as opposed to a request the server rightly refused.
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

/// Reads `traceparent` (and `tracestate`) from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` continue the caller's trace, if any, and returns the span's
/// own traceparent (same trace id, the span's id).
///
/// Normally the id comes from the OpenTelemetry layer installed by
/// [`super::init`]. Without it (a library user or a test that installed no
/// subscriber, or the span filtered out) one is made up here, continuing
/// the caller's trace id, so that events always carry a valid traceparent.
fn start_trace(span: &Span, headers: &HeaderMap) -> String {
    let parent = if headers.contains_key(TRACEPARENT_HEADER) {
        TraceContextPropagator::new().extract(&HeaderExtractor(headers))
    } else {
        Context::new()
    };
    let parent_span = parent.span().span_context().clone();
    if parent_span.is_valid() {
        // Fails only when no OpenTelemetry layer sees this span: handled below.
        let _ = span.set_parent(parent);
    }
    let own = span.context().span().span_context().clone();
    if own.is_valid() && (!parent_span.is_valid() || own.trace_id() == parent_span.trace_id()) {
        return format_traceparent(&own);
    }
    let (trace_id, flags) = if parent_span.is_valid() {
        (parent_span.trace_id(), parent_span.trace_flags())
    } else {
        (random_trace_id(), TraceFlags::SAMPLED)
    };
    format_traceparent(&SpanContext::new(
        trace_id,
        random_span_id(),
        flags,
        false,
        Default::default(),
    ))
}

fn random_trace_id() -> TraceId {
    loop {
        let id = TraceId::from_bytes(rand::random::<[u8; 16]>());
        if id != TraceId::INVALID {
            return id;
        }
    }
}

fn random_span_id() -> SpanId {
    loop {
        let id = SpanId::from_bytes(rand::random::<[u8; 8]>());
        if id != SpanId::INVALID {
            return id;
        }
    }
}

/// `00-<trace id>-<span id>-<flags>` (W3C Trace Context, version 00).
pub fn format_traceparent(span: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    )
}

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };

    use tower::{Layer, ServiceExt};

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    type Seen = Arc<Mutex<Option<(Option<CallId>, Option<TraceParent>)>>>;

    /// Calls the layer around a handler that records what it was given.
    async fn call(headers: &[(&str, &str)], status: Option<&str>) -> (Seen, http::Response<()>) {
        let seen: Seen = Arc::default();
        let seen_by_handler = seen.clone();
        let status = status.map(str::to_owned);
        let handler = tower::service_fn(move |request: http::Request<()>| {
            let seen = seen_by_handler.clone();
            let status = status.clone();
            async move {
                *seen.lock().unwrap() = Some((
                    request.extensions().get::<CallId>().cloned(),
                    request.extensions().get::<TraceParent>().cloned(),
                ));
                let mut response = http::Response::new(());
                if let Some(status) = status {
                    response
                        .headers_mut()
                        .insert("grpc-status", HeaderValue::from_str(&status).unwrap());
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut request = http::Request::builder().uri("/test.v1.Layer/Call");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = TelemetryLayer
            .layer(handler)
            .oneshot(request.body(()).unwrap())
            .await
            .unwrap();
        (seen, response)
    }

    fn parts(traceparent: &str) -> Vec<String> {
        traceparent.split('-').map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn an_incoming_traceparent_is_continued_with_a_new_span_id() {
        let (seen, response) = call(&[("traceparent", PARENT)], None).await;
        let (call_id, traceparent) = seen.lock().unwrap().clone().unwrap();
        let call_id = call_id.unwrap().0;
        assert_eq!(call_id.len(), 32);
        assert_eq!(response.headers()[CALL_ID_HEADER], call_id.as_str());
        let traceparent = traceparent.unwrap().0;
        let (ours, theirs) = (parts(&traceparent), parts(PARENT));
        assert_eq!(ours.len(), 4);
        assert_eq!(ours[1], theirs[1], "same trace id");
        assert_ne!(ours[2], theirs[2], "own span id");
        assert_eq!(ours[3], "01");
        assert_eq!(response.headers()[TRACEPARENT_HEADER], traceparent.as_str());
    }

    #[tokio::test]
    async fn calls_without_or_with_a_broken_traceparent_start_a_trace() {
        for headers in [&[][..], &[("traceparent", "00-zz-bad-01")][..]] {
            let (seen, _) = call(headers, None).await;
            let traceparent = seen.lock().unwrap().clone().unwrap().1.unwrap().0;
            let ours = parts(&traceparent);
            assert_eq!(ours[0], "00");
            assert_eq!(ours[1].len(), 32);
            assert_ne!(ours[1], "0".repeat(32));
            assert_eq!(ours[2].len(), 16);
        }
    }

    #[tokio::test]
    async fn outcomes_are_counted_by_code() {
        let rpc = "test.v1.Layer/Call";
        let before = metrics::rpc_calls(rpc, Code::NotFound);
        call(&[], Some("5")).await;
        assert_eq!(metrics::rpc_calls(rpc, Code::NotFound), before + 1);
        assert_eq!(grpc_code(&HeaderMap::new()), Code::Ok);
    }
}
