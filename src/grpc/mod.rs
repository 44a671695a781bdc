//! The gRPC door: thin tonic adapters. Each handler converts the proto
//! request into a service request (`convert`), calls the application
//! service, and converts the result back; errors become statuses in
//! `status` only. Proto types end here. `call_layer` gives every call its
//! id, span and trace context; `auth_layer` admits callers through the
//! shared `access::Gate`.

pub mod admin;
pub mod auth_layer;
pub mod call_layer;
pub mod connection;
pub mod convert;
pub mod events;
pub mod routes;
pub mod status;

use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::access::{CALL_ID_HEADER, CallContext, CallId, Caller, TraceParent};
use status::ApiError;

/// Starts a call: the call id (the call layer's, or a fresh one when the
/// handler is called without it), the caller the auth layer admitted, the
/// trace context and the client's deadline.
pub(crate) fn call_context<T>(request: &Request<T>) -> CallContext {
    let caller = request
        .extensions()
        .get::<Caller>()
        .cloned()
        .unwrap_or_else(Caller::anonymous);
    let mut call = CallContext::new(caller);
    if let Some(call_id) = request.extensions().get::<CallId>() {
        call.call_id.clone_from(&call_id.0);
    }
    call.traceparent = request
        .extensions()
        .get::<TraceParent>()
        .map(|t| t.0.clone());
    call.deadline = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map(|timeout| std::time::Instant::now() + timeout);
    call
}

/// A `grpc-timeout` header value: digits followed by a unit.
fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Finishes a call: the response or the error status, both carrying the call id.
pub(crate) fn respond<T>(
    call: &CallContext,
    result: Result<T, ApiError>,
) -> Result<Response<T>, Status> {
    match result {
        Ok(message) => {
            let mut response = Response::new(message);
            if let Ok(value) = MetadataValue::try_from(call.call_id.as_str()) {
                response.metadata_mut().insert(CALL_ID_HEADER, value);
            }
            Ok(response)
        }
        Err(err) => {
            // The reason goes into the call's span; the call layer adds the
            // code (it also sees statuses made outside handlers).
            let (_, reason) = err.code_and_reason();
            tracing::Span::current().record("reason", tracing::field::display(reason));
            Err(err.into_status(&call.call_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::SiteScope;

    #[test]
    fn the_authenticated_caller_becomes_the_actor() {
        let mut request = Request::new(());
        assert_eq!(call_context(&request).actor(), "anonymous");
        request.extensions_mut().insert(Caller {
            name: "billing-service".into(),
            sites: SiteScope::All,
            uid: None,
        });
        let call = call_context(&request);
        assert_eq!(call.actor(), "billing-service");
        assert_eq!(call.scope(), &SiteScope::All);
    }

    #[test]
    fn grpc_timeouts_parse() {
        use std::time::Duration;
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}
