//! `GET /metrics` in the Prometheus text format, on its own listener
//! (`--metrics-listen`), so metrics can be read without a collector.
//! Anything else is 404.

use axum::{
    Router,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderValue, StatusCode, header};

use crate::telemetry::metrics;

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The metrics router.
pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(render))
        .fallback(not_found)
}

async fn render() -> Response {
    let mut response = metrics::render_prometheus().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROMETHEUS_TEXT),
    );
    response
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found: try GET /metrics\n").into_response()
}
