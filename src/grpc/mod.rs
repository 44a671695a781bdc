//! The gRPC layer: thin adapters that parse requests into domain types, call
//! the repository, and convert results back. Proto types end here.

pub mod admin;
pub mod auth;
pub mod connection;
pub mod convert;
pub mod events;
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

/// Name used for the actor when the server runs without authentication.
pub const ANONYMOUS_ACTOR: &str = "anonymous";

/// Starts a call: a fresh call id, the caller and the trace context.
pub fn call_context<T>(request: &Request<T>) -> CallContext {
    let actor = request
        .extensions()
        .get::<auth::Caller>()
        .map_or(ANONYMOUS_ACTOR, |c| c.name.as_str());
    let mut ctx = CallContext::new(actor);
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
        Err(err) => Err(err.into_status(&ctx.call_id)),
    }
}
