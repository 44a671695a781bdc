//! The unlink action link in a browser: `GET /action/v2/unlinkaccount`
//! (SPEC section 12), a thin adapter over the application service that
//! follows signed links.
//!
//! - `GET` reads the seed's parameters (`vhost`, `uid`, `redirectUrl`,
//!   `external_id_provider_name`, `sub_provider_name`) and the link's
//!   `expires` and `sig`, and hands them to the service, which checks the
//!   signature, the redirect, the lifetime and section 5's rules, and acts
//!   once per link.
//! - Success: `302` to the redirect with `status=ok`. A refusal once the
//!   redirect is known to be safe (signed, and allowed for the site): `302`
//!   to it with `status=error&reason=<REASON>`. Otherwise a small static
//!   page (400, 403, 410, 500 or 503) saying what went wrong; it repeats
//!   nothing of the request.
//! - `HEAD` never acts (link scanners and previews send it): the headers
//!   of a page, no body. Any other method: 405.
//!
//! Every response carries `Cache-Control: no-store`,
//! `Referrer-Policy: no-referrer`, a Content-Security-Policy that allows
//! nothing (the pages have no script, style or image), and
//! `X-Content-Type-Options: nosniff`.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Request, State},
    response::Response,
};
use http::{HeaderValue, Method, StatusCode, header};

use super::{
    call_layer,
    error_codes::{ErrorCode, RestError},
    params::Params,
    response::{Outcome, get},
    rest::RestDoor,
};
use crate::{
    access::{
        AccessError,
        action_link::{EXPIRES_PARAMETER, SIG_PARAMETER, canonical_query},
    },
    domain::{DomainError, Vhost},
    service::{FollowLink, LinkFollowed, LinkRefused, ServiceError},
};

const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the browser gets.
enum Answer {
    /// `302` to `location`.
    Redirect { location: String, code: ErrorCode },
    /// A static page.
    Page {
        status: StatusCode,
        title: &'static str,
        message: &'static str,
        code: ErrorCode,
    },
}

/// `/action/v2/unlinkaccount`, every method.
pub async fn unlink_account(State(door): State<Arc<RestDoor>>, request: Request) -> Response {
    let (call_id, traceparent) = call_layer::call_of(&request);
    let query = request.uri().query().unwrap_or_default().to_owned();
    let answer = match *request.method() {
        Method::GET => follow(&door, &query, traceparent, &call_id).await,
        Method::HEAD => Answer::Page {
            status: StatusCode::OK,
            title: "Unlink account",
            message: "Open this link in a browser to unlink the account.",
            code: ErrorCode::OK,
        },
        _ => Answer::Page {
            status: StatusCode::METHOD_NOT_ALLOWED,
            title: "Not allowed",
            message: "This address only opens links. Nothing was changed.",
            code: METHOD_NOT_ALLOWED,
        },
    };
    let head = request.method() == Method::HEAD;
    let mut response = render(answer, &call_id, head);
    if response.status() == StatusCode::METHOD_NOT_ALLOWED {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

const METHOD_NOT_ALLOWED: ErrorCode = ErrorCode {
    error_code: 405,
    status_code: 405,
    reason: "METHOD_NOT_ALLOWED",
};

/// A GET: the parameters to the service's plain request, its answer to a
/// redirect or a page.
async fn follow(
    door: &RestDoor,
    query: &str,
    traceparent: Option<String>,
    call_id: &str,
) -> Answer {
    let Ok(params) = Params::decode(query.as_bytes()) else {
        return refused(
            RestError::Malformed("the link is not a valid query string".into()),
            call_id,
            None,
        );
    };
    let link = match read_link(&params, traceparent, call_id) {
        Ok(link) => link,
        Err(err) => return refused(RestError::from(err), call_id, None),
    };
    match door.services().follow_unlink_link(link).await {
        Ok(LinkFollowed { redirect, outcome }) => {
            tracing::info!(
                removed = outcome.removed.len(),
                first_call_id = outcome.call_id,
                "action link followed"
            );
            Answer::Redirect {
                location: with_status(redirect.as_str(), "status=ok"),
                code: ErrorCode::OK,
            }
        }
        Err(LinkRefused { error, redirect }) => refused(
            RestError::Service(error),
            call_id,
            redirect.as_ref().map(|r| r.as_str()),
        ),
    }
}

/// The link's parameters: each at most once; the vhost names the site
/// whose secret signed the link.
fn read_link(
    params: &Params,
    traceparent: Option<String>,
    call_id: &str,
) -> Result<FollowLink, DomainError> {
    let owned = |name| get(params, name).map(|v| v.map(str::to_owned));
    let vhost = match get(params, "vhost")? {
        None | Some("") => return Err(DomainError::MissingParameter { field: "vhost" }),
        Some(vhost) => vhost
            .parse::<i64>()
            .map_err(|_| DomainError::invalid("vhost", "must be a positive integer"))?,
    };
    Ok(FollowLink {
        vhost: Vhost::parse("vhost", vhost)?,
        canonical: canonical_query(params.pairs()),
        sig: owned(SIG_PARAMETER)?,
        expires: owned(EXPIRES_PARAMETER)?,
        uid: owned("uid")?,
        redirect_url: owned("redirectUrl")?,
        external_id_provider_name: owned("external_id_provider_name")?.filter(|p| !p.is_empty()),
        sub_provider_name: owned("sub_provider_name")?,
        call_id: call_id.to_owned(),
        traceparent,
    })
}

/// The one map from a refusal to what the browser sees: the reason is the
/// REST door's (`error_codes`, exhaustive); with a safe redirect the
/// browser goes back to the site, otherwise it gets a page whose status and
/// text depend on the kind of refusal. Internal causes are logged (by
/// `details`) and never shown.
fn refused(err: RestError, call_id: &str, redirect: Option<&str>) -> Answer {
    let code = err.code();
    let _logged = err.details(call_id);
    if let Some(redirect) = redirect {
        return Answer::Redirect {
            location: with_status(redirect, &format!("status=error&reason={}", code.reason)),
            code,
        };
    }
    let (status, message) = match &err {
        RestError::Service(ServiceError::Access(AccessError::LinkSignatureInvalid)) => (
            StatusCode::FORBIDDEN,
            "This link is not valid: it was not made by the site, or it was changed on the \
             way. Nothing was changed. Go back to the site and try again.",
        ),
        RestError::Service(ServiceError::Access(AccessError::LinkExpired)) => (
            StatusCode::GONE,
            "This link has expired. Nothing was changed. Go back to the site and try again.",
        ),
        RestError::Service(ServiceError::Access(_)) => (
            StatusCode::FORBIDDEN,
            "This link may not be used. Nothing was changed.",
        ),
        RestError::Service(ServiceError::Rule(DomainError::RedirectNotAllowed { .. })) => (
            StatusCode::BAD_REQUEST,
            "This link would send you on to a page the site does not allow. Nothing was \
             changed.",
        ),
        RestError::Service(ServiceError::Rule(_)) | RestError::Malformed(_) => (
            StatusCode::BAD_REQUEST,
            "This link is incomplete or malformed. Nothing was changed.",
        ),
        RestError::Service(
            ServiceError::Unavailable(_)
            | ServiceError::Busy(_)
            | ServiceError::StorageFull(_)
            | ServiceError::Conflict(_),
        )
        | RestError::Overloaded => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is busy or unavailable right now. Try the link again in a moment.",
        ),
        RestError::Service(ServiceError::NotConfigured(_) | ServiceError::Internal(_)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on our side. Try the link again later.",
        ),
    };
    Answer::Page {
        status,
        title: "The link did not work",
        message,
        code,
    }
}

/// `target` with `status_query` added to its query, before any fragment.
fn with_status(target: &str, status_query: &str) -> String {
    let (before, fragment) = match target.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (target, None),
    };
    let separator = if !before.contains('?') {
        "?"
    } else if before.ends_with(['?', '&']) {
        ""
    } else {
        "&"
    };
    let mut location = format!("{before}{separator}{status_query}");
    if let Some(fragment) = fragment {
        location.push('#');
        location.push_str(fragment);
    }
    location
}

/// A Location header value: bytes outside visible ASCII (a validated
/// redirect has no white space or control characters, but may have
/// non-ASCII letters) percent-encoded.
fn location_header(location: &str) -> Option<HeaderValue> {
    let mut encoded = String::with_capacity(location.len());
    for byte in location.bytes() {
        if byte.is_ascii_graphic() {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).ok()
}

fn render(answer: Answer, call_id: &str, head: bool) -> Response {
    let (mut response, code) = match answer {
        Answer::Redirect { location, code } => match location_header(&location) {
            Some(value) => {
                let mut response = Response::new(Body::empty());
                *response.status_mut() = StatusCode::FOUND;
                response.headers_mut().insert(header::LOCATION, value);
                (response, code)
            }
            None => return render(internal_page(), call_id, head),
        },
        Answer::Page {
            status,
            title,
            message,
            code,
        } => {
            let html = format!(
                "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
                 <meta name=\"robots\" content=\"noindex\">\n<title>{title}</title>\n</head>\n\
                 <body>\n<h1>{title}</h1>\n<p id=\"message\">{message}</p>\n\
                 <p id=\"reference\">Reference: {call_id}</p>\n</body>\n</html>\n"
            );
            let body = if head {
                Body::empty()
            } else {
                Body::from(html)
            };
            let mut response = Response::new(body);
            *response.status_mut() = status;
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            (response, code)
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response.extensions_mut().insert(Outcome {
        error_code: code.error_code,
        reason: code.reason,
    });
    response
}

fn internal_page() -> Answer {
    Answer::Page {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        title: "The link did not work",
        message: "Something went wrong on our side. Try the link again later.",
        code: ErrorCode {
            error_code: 500_001,
            status_code: 500,
            reason: "INTERNAL",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_goes_into_the_query_before_the_fragment() {
        for (target, expected) in [
            ("/profile", "/profile?status=ok"),
            ("/profile?tab=a", "/profile?tab=a&status=ok"),
            ("/profile?", "/profile?status=ok"),
            ("/profile?a=1&", "/profile?a=1&status=ok"),
            ("/profile#top", "/profile?status=ok#top"),
            ("/p?x=1#a?b", "/p?x=1&status=ok#a?b"),
            (
                "https://www.example.com/done?x=%20#f",
                "https://www.example.com/done?x=%20&status=ok#f",
            ),
        ] {
            assert_eq!(with_status(target, "status=ok"), expected, "{target}");
        }
    }

    #[test]
    fn locations_are_visible_ascii() {
        assert_eq!(
            location_header("/caf\u{e9}?status=ok").unwrap(),
            "/caf%C3%A9?status=ok"
        );
        assert_eq!(location_header("/a?b=%41").unwrap(), "/a?b=%41");
    }
}
