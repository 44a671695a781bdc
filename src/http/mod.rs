//! The HTTP door (axum on the hyper stack tonic already uses): the
//! Gigya-compatible REST endpoint `socialize.removeConnection` (SPEC section
//! 11), callable from the sites' pages through the browser SDK (CORS, the
//! script), the unlink action link `GET /action/v2/unlinkaccount` (section
//! 12), and the Prometheus `/metrics` endpoint on its own listener.
//!
//! - [`server`]: the accept loop (TLS optional), HTTP/1.1 and HTTP/2, header
//!   read timeout, graceful shutdown.
//! - [`call_layer`]: every request's call id, span, trace context, metrics,
//!   log line, and the bound on requests in flight.
//! - [`params`]: strict `application/x-www-form-urlencoded` decoding.
//! - [`rest`]: the REST handler: parameters to the domain's raw input,
//!   credentials to the gate, the service, the answer.
//! - [`action_link`]: the action link's handler: signed link in, redirect
//!   or static page out.
//! - [`error_codes`]: the one exhaustive map from every error to Gigya's
//!   errorCode and statusCode.
//! - [`response`]: the response shape (JSON or JSONP).
//! - [`cors`]: cross-origin calls from the sites' allowed browser origins.
//! - [`sdk`]: `GET /sdk/connections.js`, the browser SDK.
//! - [`metrics`]: `GET /metrics`.

pub mod action_link;
pub mod call_layer;
pub mod cors;
pub mod error_codes;
pub mod metrics;
pub mod params;
pub mod response;
pub mod rest;
pub mod sdk;
pub mod server;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    routing::{any, get},
};

pub use crate::service::UNLINK_ACCOUNT_PATH;
use crate::{access::Gate, service::Services};

/// The REST endpoint's path.
pub const REMOVE_CONNECTION_PATH: &str = "/socialize.removeConnection";

/// How the HTTP door protects itself and what it needs to know about how
/// clients reach it.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers, and its body.
    pub read_timeout: Duration,
    /// Requests handled at once; more wait up to `queue_timeout`, then are refused.
    pub max_in_flight: usize,
    pub queue_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            read_timeout: Duration::from_secs(10),
            max_in_flight: 256,
            queue_timeout: Duration::from_secs(1),
        }
    }
}

/// What the REST handler needs.
#[derive(Debug, Clone)]
pub struct RestConfig {
    /// `scheme://host[:port][/prefix]` clients use to reach the service,
    /// for the signature base string; None: from `X-Forwarded-Proto` and
    /// `Host`.
    pub public_base_url: Option<String>,
    /// Whether this listener speaks TLS (the scheme when no header says).
    pub tls: bool,
    pub limits: HttpLimits,
}

/// The REST and action-link router over the shared services and gate.
pub fn rest_router(services: Services, gate: Arc<Gate>, config: RestConfig) -> Router {
    let call_limits = call_layer::InFlight::new(&config.limits);
    let door = Arc::new(rest::RestDoor::new(services.clone(), gate, config));
    Router::new()
        .route(
            REMOVE_CONNECTION_PATH,
            get(rest::remove_connection).post(rest::remove_connection),
        )
        .route(sdk::SDK_PATH, get(sdk::script))
        // Every method reaches the handler: only GET acts, HEAD never does.
        .route(UNLINK_ACCOUNT_PATH, any(action_link::unlink_account))
        .fallback(rest::not_found)
        .with_state(door)
        .layer(axum::middleware::from_fn_with_state(services, cors::cors))
        .layer(axum::middleware::from_fn_with_state(
            call_limits,
            call_layer::per_call,
        ))
}
