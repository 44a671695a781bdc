//! W3C trace context: continue an incoming `traceparent`, or start a trace,
//! and give a call's span its own `traceparent`. Used by every door's
//! per-call layer, so events carry the same trace context whichever door
//! the call came in by.

use http::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Header carrying a W3C trace context, in requests and in responses.
pub const TRACEPARENT_HEADER: &str = "traceparent";

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
/// When spans are exported the id comes from the OpenTelemetry layer
/// installed by [`super::init`]. Without it (no OTLP endpoint, a library
/// user or a test that installed no subscriber, or the span filtered out)
/// one is made up here, continuing the caller's trace id, so that events
/// always carry a valid traceparent.
pub fn start_trace(span: &Span, headers: &HeaderMap) -> String {
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
