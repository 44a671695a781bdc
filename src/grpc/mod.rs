//! The gRPC layer: thin adapters that parse requests into domain types, call
//! the repository, and convert results back. Proto types end here.

pub mod admin;
pub mod auth;
pub mod auth_layer;
pub mod connection;
pub mod convert;
pub mod events;
pub mod limits;
pub mod status;

use std::sync::Arc;

use tonic::{Request, Response, Status, metadata::MetadataValue};

use crate::{
    domain::{CallContext, ProviderRegistry},
    events::EventHub,
    storage::Repository,
};
use status::{ApiError, CALL_ID_HEADER};

/// Shared state of the gRPC services.
#[derive(Clone, Debug)]
pub struct AppState {
    pub repo: Repository,
    pub registry: Arc<ProviderRegistry>,
    /// Live events and the shutdown signal for Subscribe streams.
    pub events: EventHub,
}

/// The W3C traceparent of the call's span, put into request extensions by
/// the telemetry layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceParent(pub String);

/// The call's id, made by the telemetry layer so that its span, its logs,
/// the response and the events all name the call the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallId(pub String);

impl CallId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Names the call's site (api_key, or vhost for UnlinkAccount) in the call's
/// span, once the handler has parsed it. Cheap; does nothing outside a call.
pub fn record_site(site: impl std::fmt::Display) {
    tracing::Span::current().record("site", tracing::field::display(site));
}

/// Name used for the actor when the server runs without authentication.
pub const ANONYMOUS_ACTOR: &str = "anonymous";

/// Starts a call: the call id (the telemetry layer's, or a fresh one when
/// the handler is called without it), the caller and the trace context.
pub fn call_context<T>(request: &Request<T>) -> CallContext {
    let actor = request
        .extensions()
        .get::<auth::Caller>()
        .map_or(ANONYMOUS_ACTOR, |c| c.name.as_str());
    let mut ctx = CallContext::new(actor);
    if let Some(call_id) = request.extensions().get::<CallId>() {
        ctx.call_id.clone_from(&call_id.0);
    }
    ctx.traceparent = request
        .extensions()
        .get::<TraceParent>()
        .map(|t| t.0.clone());
    ctx
}

/// Finishes a call: the response or the error status, both carrying the call id.
pub fn respond<T>(ctx: &CallContext, result: Result<T, ApiError>) -> Result<Response<T>, Status> {
    match result {
        Ok(message) => {
            let mut response = Response::new(message);
            if let Ok(value) = MetadataValue::try_from(ctx.call_id.as_str()) {
                response.metadata_mut().insert(CALL_ID_HEADER, value);
            }
            Ok(response)
        }
        Err(err) => {
            // The reason goes into the call's span; the telemetry layer
            // adds the code (it also sees statuses made outside handlers).
            let (_, reason) = err.code_and_reason();
            tracing::Span::current().record("reason", tracing::field::display(reason));
            Err(err.into_status(&ctx.call_id))
        }
    }
}
