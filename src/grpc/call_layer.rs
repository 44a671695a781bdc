//! The tower layer every gRPC call goes through (the gRPC door's half of
//! telemetry; trace context itself is `telemetry::trace_context`): it gives the call its id
//! and its `rpc` span (continuing an incoming W3C `traceparent`), hands both
//! to the handler through request extensions, and when the response is ready
//! records the outcome, the latency metrics and one log line when the call
//! ends: with its trailers (a unary reply, or a stream's end), with a
//! trailers-only error, or as CANCELLED when the client goes away first.
//!
//! Kept thin: a span, a UUID, a header parse and a few atomics per call.

use std::{
    pin::Pin,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    access::{CALL_ID_HEADER, CallId, TraceParent},
    telemetry::{
        metrics,
        trace_context::{TRACEPARENT_HEADER, start_trace},
    },
};

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
    R: Body + Unpin + Send + 'static,
{
    type Response = http::Response<ObservedBody<R>>;
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
            // The cause of a failure, for the call's one log line.
            error = Empty,
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
        let mut end = CallEnd {
            rpc,
            started,
            span: Some(span.clone()),
        };
        Box::pin(
            async move {
                let mut response = match response.await {
                    Ok(response) => response,
                    Err(err) => {
                        // The routes never fail this way in tonic; counted anyway.
                        end.finish(Code::Unknown);
                        return Err(err);
                    }
                };
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
                // A trailers-only response (an error) is complete now;
                // otherwise the call ends with its body's trailers.
                let end = match grpc_code(response.headers()) {
                    Some(code) => {
                        end.finish(code);
                        None
                    }
                    None if response.body().is_end_stream() => {
                        end.finish(Code::Ok);
                        None
                    }
                    None => Some(end),
                };
                Ok(response.map(|inner| ObservedBody { inner, end }))
            }
            .instrument(span),
        )
    }
}

/// The end of one call: outcome, metrics and log line, exactly once. A
/// call dropped before it ended (the client went away) ends as CANCELLED.
struct CallEnd {
    rpc: String,
    started: Instant,
    /// Held until the end so that the span covers a streamed response, and
    /// released then so that it closes before the client sees the end.
    span: Option<Span>,
}

impl CallEnd {
    fn finish(&mut self, code: Code) {
        if let Some(span) = self.span.take() {
            span.in_scope(|| finish(&self.rpc, code, self.started.elapsed()));
        }
    }
}

impl Drop for CallEnd {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The response body, passed through; its trailers end the call. Dropped
/// before that (the client went away), the call ends as CANCELLED.
pub struct ObservedBody<B> {
    inner: B,
    end: Option<CallEnd>,
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(end) = &mut this.end {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        end.finish(grpc_code(trailers).unwrap_or(Code::Ok));
                    }
                }
                Poll::Ready(Some(Err(_))) => end.finish(Code::Unknown),
                Poll::Ready(None) => end.finish(Code::Ok),
                Poll::Pending => {}
            }
            // A body without trailers that says it is done is not polled
            // again: it ended well.
            if polled.is_ready() && this.inner.is_end_stream() {
                end.finish(Code::Ok);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` of a header or trailer map, if present.
fn grpc_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
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
        // Probes call health every few seconds, and tools read reflection
        // before every call: keep them out of INFO unless the server failed.
        _ if is_infrastructure(rpc) && !is_server_error(code) => {
            tracing::debug!(latency_ms, "rpc finished");
        }
        Code::Ok => tracing::info!(latency_ms, "rpc finished"),
        // The client went away (e.g. a subscriber disconnecting): normal.
        Code::Cancelled => tracing::info!(latency_ms, "rpc cancelled"),
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(latency_ms, "rpc failed");
        }
        // The server could not do its job (database down, deadline).
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted => {
            tracing::warn!(latency_ms, "rpc failed");
        }
        // A request the server rightly refused: the caller's business, and
        // anyone can send them, so they stay out of WARN.
        _ => tracing::info!(latency_ms, "rpc refused"),
    }
}

/// Health checks and reflection: the machinery around the service's own RPCs.
fn is_infrastructure(rpc: &str) -> bool {
    rpc.starts_with("grpc.health.") || rpc.starts_with("grpc.reflection.")
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

#[cfg(test)]
mod tests {
    use std::{
        convert::Infallible,
        future::Ready,
        sync::{Arc, Mutex},
    };

    use http_body_util::{BodyExt, Full, combinators::WithTrailers};
    use hyper::body::Bytes;
    use tower::{Layer, ServiceExt};

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    type Seen = Arc<Mutex<Option<(Option<CallId>, Option<TraceParent>)>>>;
    type TestBody = WithTrailers<Full<Bytes>, Ready<Option<Result<HeaderMap, Infallible>>>>;

    fn status_map(status: Option<&str>) -> Option<HeaderMap> {
        status.map(|status| {
            let mut map = HeaderMap::new();
            map.insert("grpc-status", HeaderValue::from_str(status).unwrap());
            map
        })
    }

    /// Calls the layer around a handler that records what it was given and
    /// answers with a body, and a `grpc-status` in the headers (an error)
    /// or in the trailers.
    async fn call(
        path: &str,
        headers: &[(&str, &str)],
        header_status: Option<&str>,
        trailer_status: Option<&str>,
    ) -> (Seen, http::Response<ObservedBody<TestBody>>) {
        let seen: Seen = Arc::default();
        let seen_by_handler = seen.clone();
        let header_status = status_map(header_status);
        let trailers = status_map(trailer_status);
        let handler = tower::service_fn(move |request: http::Request<()>| {
            let seen = seen_by_handler.clone();
            let header_status = header_status.clone();
            let trailers = trailers.clone();
            async move {
                *seen.lock().unwrap() = Some((
                    request.extensions().get::<CallId>().cloned(),
                    request.extensions().get::<TraceParent>().cloned(),
                ));
                let body = Full::new(Bytes::from_static(b"reply"))
                    .with_trailers(std::future::ready(trailers.map(Ok)));
                let mut response = http::Response::new(body);
                if let Some(status) = header_status {
                    response.headers_mut().extend(status);
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut request = http::Request::builder().uri(path);
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
        let (seen, response) = call(
            "/test.v1.Layer/Trace",
            &[("traceparent", PARENT)],
            None,
            None,
        )
        .await;
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
            let (seen, _) = call("/test.v1.Layer/Trace", headers, None, None).await;
            let traceparent = seen.lock().unwrap().clone().unwrap().1.unwrap().0;
            let ours = parts(&traceparent);
            assert_eq!(ours[0], "00");
            assert_eq!(ours[1].len(), 32);
            assert_ne!(ours[1], "0".repeat(32));
            assert_eq!(ours[2].len(), 16);
        }
    }

    #[tokio::test]
    async fn errors_in_headers_are_counted_when_the_response_starts() {
        let rpc = "test.v1.Layer/HeaderError";
        let (_, response) = call(&format!("/{rpc}"), &[], Some("5"), None).await;
        assert_eq!(metrics::rpc_calls(rpc, Code::NotFound), 1);
        drop(response);
        assert_eq!(metrics::rpc_calls(rpc, Code::Cancelled), 0, "counted once");
    }

    #[tokio::test]
    async fn bodies_end_the_call_with_their_trailers() {
        let rpc = "test.v1.Layer/Trailers";
        let (_, response) = call(&format!("/{rpc}"), &[], None, Some("13")).await;
        assert_eq!(metrics::rpc_calls(rpc, Code::Internal), 0, "not ended yet");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "13");
        assert_eq!(metrics::rpc_calls(rpc, Code::Internal), 1);

        let rpc = "test.v1.Layer/Ok";
        let (_, response) = call(&format!("/{rpc}"), &[], None, Some("0")).await;
        response.into_body().collect().await.unwrap();
        assert_eq!(metrics::rpc_calls(rpc, Code::Ok), 1);
    }

    #[tokio::test]
    async fn bodies_dropped_before_their_end_are_cancelled_calls() {
        let rpc = "test.v1.Layer/Dropped";
        let (_, response) = call(&format!("/{rpc}"), &[], None, Some("0")).await;
        drop(response);
        assert_eq!(metrics::rpc_calls(rpc, Code::Cancelled), 1);
        assert_eq!(metrics::rpc_calls(rpc, Code::Ok), 0);
        assert_eq!(grpc_code(&HeaderMap::new()), None);
    }
}
