//! The HTTP door's per-call layer (the gRPC door's is `grpc::call_layer`):
//! every request gets a call id (`x-call-id` response header), an `http`
//! span continuing an incoming W3C `traceparent` (returned in the response),
//! a bound on requests in flight, and when the response is ready the
//! metrics and one log line with its outcome (errorCode and reason).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use http::{HeaderValue, StatusCode};
use tokio::sync::Semaphore;
use tracing::{Instrument, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    HttpLimits, REMOVE_CONNECTION_PATH, UNLINK_ACCOUNT_PATH,
    error_codes::RestError,
    response::{self, Outcome, ResponseOptions},
    sdk::SDK_PATH,
};
use crate::{
    access::{CALL_ID_HEADER, CallId, TraceParent},
    telemetry::{
        metrics,
        trace_context::{TRACEPARENT_HEADER, start_trace},
    },
};

/// The bound on requests handled at once.
#[derive(Debug, Clone)]
pub struct InFlight {
    permits: Arc<Semaphore>,
    queue_timeout: Duration,
}

impl InFlight {
    pub fn new(limits: &HttpLimits) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            queue_timeout: limits.queue_timeout,
        }
    }
}

/// The metrics label of a path: one of ours, or `other` (paths come from
/// clients and must not grow the label set).
fn route_of(path: &str) -> &'static str {
    match path {
        REMOVE_CONNECTION_PATH => "socialize.removeConnection",
        SDK_PATH => "sdk",
        UNLINK_ACCOUNT_PATH => "action.unlinkaccount",
        _ => "other",
    }
}

/// The call id and traceparent this layer gave the request (a fresh id
/// outside the layer, e.g. in a unit test).
pub fn call_of(request: &Request) -> (String, Option<String>) {
    let call_id = request
        .extensions()
        .get::<CallId>()
        .cloned()
        .unwrap_or_else(CallId::generate)
        .0;
    let traceparent = request
        .extensions()
        .get::<TraceParent>()
        .map(|t| t.0.clone());
    (call_id, traceparent)
}

/// The middleware: wraps every request of the REST router.
pub async fn per_call(
    State(in_flight): State<InFlight>,
    mut request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = route_of(request.uri().path());
    let method = request.method().clone();
    let call_id = CallId::generate();
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        method = %method,
        route,
        call_id = %call_id.0,
        site = Empty,
        code = Empty,
        reason = Empty,
        // The cause of a failure, for the request's one log line.
        error = Empty,
    );
    let traceparent = start_trace(&span, request.headers());
    let call_id_header = HeaderValue::from_str(&call_id.0).ok();
    request.extensions_mut().insert(call_id.clone());
    request
        .extensions_mut()
        .insert(TraceParent(traceparent.clone()));
    let mut response = async {
        let permit = tokio::time::timeout(
            in_flight.queue_timeout,
            in_flight.permits.clone().acquire_owned(),
        )
        .await;
        match permit {
            Ok(Ok(permit)) => {
                let response = next.run(request).await;
                drop(permit);
                response
            }
            // Refused before the request was read: the HTTP status says so
            // whatever `httpStatusCodes` asked (it was not read either).
            _ => {
                let (code, body) = response::failure(&call_id.0, &RestError::Overloaded, None);
                let mut response = response::render(&ResponseOptions::default(), code, body);
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
        }
    }
    .instrument(span.clone())
    .await;
    let headers = response.headers_mut();
    if let Some(value) = call_id_header {
        headers.insert(CALL_ID_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT_HEADER, value);
    }
    let outcome = response.extensions().get::<Outcome>().copied();
    let status = response.status();
    span.in_scope(|| finish(route, status, outcome, started.elapsed()));
    response
}

/// Records the outcome in the span, the metrics and the log.
fn finish(route: &'static str, status: StatusCode, outcome: Option<Outcome>, elapsed: Duration) {
    // Responses that are not REST answers (404, 405) count by HTTP status.
    let (error_code, reason) = outcome.map_or_else(
        || {
            let code = if status.is_success() {
                0
            } else {
                u32::from(status.as_u16())
            };
            (code, "")
        },
        |o| (o.error_code, o.reason),
    );
    let span = Span::current();
    span.record("code", error_code);
    if !reason.is_empty() {
        span.record("reason", tracing::field::display(reason));
    }
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if error_code >= 500_000 || status.is_server_error() {
        span.set_status(opentelemetry::trace::Status::error(reason));
    }
    metrics::record_http(route, status.as_u16(), error_code, elapsed);
    let latency_ms = (elapsed.as_secs_f64() * 1e6).round() / 1e3;
    match error_code {
        0 => tracing::info!(latency_ms, "http request finished"),
        code if code >= 500_000 => tracing::error!(latency_ms, "http request failed"),
        // A request the server rightly refused: anyone can send them, so
        // they stay out of WARN (as on the gRPC door).
        _ => tracing::info!(latency_ms, "http request refused"),
    }
}
