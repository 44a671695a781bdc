//! `GET /sdk/connections.js`: the browser SDK (built from `clients/js/` by
//! `npm run build`, committed, and embedded here so that the binary serves
//! the script of its own version). The page's `<script src>` names the site
//! (`?apiKey=...`); the script reads that and its own URL itself, so the
//! server ignores the query. Cached for a while and revalidated by ETag.

use std::sync::LazyLock;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

/// The script's path.
pub const SDK_PATH: &str = "/sdk/connections.js";

/// The built script.
pub const SCRIPT: &str = include_str!("../../clients/js/dist/connections.js");

/// A strong validator of this build of the script.
static ETAG: LazyLock<HeaderValue> = LazyLock::new(|| {
    let digest = hex::encode(Sha256::digest(SCRIPT.as_bytes()));
    HeaderValue::from_str(&format!("\"{}\"", &digest[..32]))
        .unwrap_or_else(|_| HeaderValue::from_static("\"sdk\""))
});

/// `GET` (and `HEAD`) of the script.
pub async fn script(request_headers: HeaderMap) -> Response {
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tag| tag.as_bytes() == ETAG.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        SCRIPT.into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/javascript; charset=utf-8"),
    );
    // Short enough that a deploy reaches pages soon; the ETag makes the
    // revalidation cheap.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    headers.insert(header::ETAG, ETAG.clone());
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Pages of other origins load it (also under Cross-Origin-Embedder-Policy).
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    response
}
