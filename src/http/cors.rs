//! Cross-origin calls from browsers (the browser SDK): a page of another
//! origin may call `socialize.removeConnection` only when its origin is in
//! the site's `allowed_browser_origins`. The site is the `apiKey` of the
//! query string (a preflight carries the query string but no body, so the
//! SDK always puts `apiKey` there).
//!
//! Allowed: the preflight (`OPTIONS` with `Access-Control-Request-Method`)
//! is answered here with 204 and the allowed methods and headers
//! (`Authorization` for the user token), and the actual response gets
//! `Access-Control-Allow-Origin: <that origin>`. Not allowed (or no such
//! site): no CORS header at all, so the browser refuses to let the page
//! call or read. Credentials (cookies) are never allowed: the user token is
//! the credential. Every answer on the path carries `Vary: Origin`, since it
//! depends on the header.

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderValue, Method, StatusCode, header};

use super::{REMOVE_CONNECTION_PATH, params::Params};
use crate::{access::CALL_ID_HEADER, service::Services};

/// How long a browser may reuse a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The middleware: answers preflights and marks responses of the REST path.
pub async fn cors(State(services): State<Services>, request: Request, next: Next) -> Response {
    if request.uri().path() != REMOVE_CONNECTION_PATH {
        return next.run(request).await;
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed = match &origin {
        Some(origin) => allowed(&services, request.uri().query(), origin).await,
        None => false,
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if allowed {
            let headers = response.headers_mut();
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST"),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE),
            );
        }
        response
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if let (true, Some(origin)) = (allowed, origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CALL_ID_HEADER),
        );
    }
    response
}

/// Whether the site named by the query's `apiKey` allows `origin`. Any
/// doubt (no or repeated apiKey, unknown site, unreadable origin, database
/// down) is a no: the browser then blocks the call.
async fn allowed(services: &Services, query: Option<&str>, origin: &HeaderValue) -> bool {
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let Some(params) = query.and_then(|q| Params::decode(q.as_bytes()).ok()) else {
        return false;
    };
    let Ok(Some(api_key)) = params.get("apiKey") else {
        return false;
    };
    services.allows_browser_origin(api_key, origin).await
}
