//! The REST response (SPEC section 11): `callId`, `errorCode`,
//! `statusCode`, `statusReason`, `time`, `apiVersion: 2`; on errors
//! `errorMessage`, `errorDetails` and `reason`; `context` when given;
//! `removed` and `user` on success. A field with no data is absent.
//!
//! `user` is the account after the change as GetAccount returns it (proto
//! JSON names: `uid`, `loginIds`, `identities`, `loginMethods`, ...), which
//! never holds a secret: the JS seed's response member, answered to every
//! caller since it is what the caller may read anyway. JSON, or JSONP
//! (`callback(<json>);`) when `format=jsonp` with a valid callback.

use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use super::{
    error_codes::{ErrorCode, RestError},
    params::{Duplicate, Params},
};
use crate::domain::{
    AccountView, DomainError, IdentityState, IdentityView, RemovalMode,
    removal::{RemovalOutcome, RemovedIdentity},
};

/// Longest accepted JSONP callback.
pub const MAX_CALLBACK_CHARS: usize = 128;

/// How to answer, from the `format`, `callback` and `httpStatusCodes`
/// parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseOptions {
    /// JSONP callback; None: plain JSON.
    pub callback: Option<String>,
    /// True: the HTTP status equals `statusCode`; false: always 200.
    pub http_status_codes: bool,
}

impl ResponseOptions {
    /// The options, and the refusal if a parameter is bad. With a bad
    /// parameter the options are what could be read (JSON, and
    /// `httpStatusCodes` if it was valid), so the refusal is never JSONP
    /// with an unchecked callback.
    pub fn parse(params: &Params) -> (Self, Result<(), DomainError>) {
        let mut options = Self::default();
        let result = (|| {
            options.http_status_codes = parse_bool(params, "httpStatusCodes")?.unwrap_or(false);
            match get(params, "format")? {
                None | Some("json") => Ok(()),
                Some("jsonp") => {
                    let callback = get(params, "callback")?
                        .ok_or(DomainError::MissingParameter { field: "callback" })?;
                    if !is_callback(callback) {
                        return Err(DomainError::invalid(
                            "callback",
                            format!(
                                "must be a JavaScript identifier path such as `a.b_c`, at most \
                                 {MAX_CALLBACK_CHARS} characters"
                            ),
                        ));
                    }
                    options.callback = Some(callback.to_owned());
                    Ok(())
                }
                Some(_) => Err(DomainError::invalid("format", "must be `json` or `jsonp`")),
            }
        })();
        (options, result)
    }
}

/// A parameter's value; a duplicated one is an invalid parameter.
pub fn get<'a>(params: &'a Params, name: &'static str) -> Result<Option<&'a str>, DomainError> {
    params
        .get(name)
        .map_err(|Duplicate(field)| DomainError::invalid(field, "given more than once"))
}

/// `true` / `false` (any case), absent = None.
pub fn parse_bool(params: &Params, name: &'static str) -> Result<Option<bool>, DomainError> {
    match get(params, name)? {
        None => Ok(None),
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(_) => Err(DomainError::invalid(name, "must be `true` or `false`")),
    }
}

/// A JavaScript identifier path: `name(.name)*`, names of ASCII letters,
/// digits, `_` and `$`, not starting with a digit.
pub fn is_callback(callback: &str) -> bool {
    callback.len() <= MAX_CALLBACK_CHARS
        && callback.split('.').all(|name| {
            let mut chars = name.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

/// `yyyy-mm-ddThh:mm:ss.SSSZ`.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The fields every response has.
fn envelope(call_id: &str, code: &ErrorCode, time: DateTime<Utc>) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert("callId".into(), call_id.into());
    body.insert("errorCode".into(), code.error_code.into());
    body.insert("statusCode".into(), code.status_code.into());
    body.insert("statusReason".into(), code.status_reason().into());
    body.insert("time".into(), format_time(time).into());
    body.insert("apiVersion".into(), 2.into());
    body
}

/// The fields naming an identity; the sub-provider only when there is one.
fn identity_entry(
    provider: String,
    sub_provider: String,
    provider_uid: String,
) -> Map<String, Value> {
    let mut entry = Map::new();
    entry.insert("provider".into(), provider.into());
    if !sub_provider.is_empty() {
        entry.insert("subProvider".into(), sub_provider.into());
    }
    entry.insert("providerUid".into(), provider_uid.into());
    entry
}

/// A removed identity as `removed` lists it: the gRPC response's fields in
/// camelCase (proto JSON names), empty strings and lists left out.
fn removed_identity(removed: RemovedIdentity) -> Value {
    let RemovedIdentity {
        provider,
        sub_provider,
        provider_uid,
        mode,
        removed_login_ids,
        provider_logout_requested,
        event_id,
    } = removed;
    let mut entry = identity_entry(provider, sub_provider, provider_uid);
    let mode = match mode {
        RemovalMode::Hard => "REMOVAL_MODE_HARD",
        RemovalMode::Soft => "REMOVAL_MODE_SOFT",
    };
    entry.insert("mode".into(), mode.into());
    if !removed_login_ids.is_empty() {
        entry.insert("removedLoginIds".into(), json!(removed_login_ids));
    }
    entry.insert(
        "providerLogoutRequested".into(),
        provider_logout_requested.into(),
    );
    if !event_id.is_empty() {
        entry.insert("eventId".into(), event_id.into());
    }
    Value::Object(entry)
}

/// The account as `user` shows it: GetAccount's fields in camelCase,
/// empty strings left out.
fn user(account: AccountView) -> Value {
    let login_methods = account.login_methods();
    let AccountView {
        api_key,
        uid,
        login_ids,
        identities,
        created_at,
        updated_at,
    } = account;
    let identity = |identity: IdentityView| {
        let IdentityView {
            provider,
            sub_provider,
            provider_uid,
            login_id,
            state,
            has_session,
            linked_at,
            updated_at,
        } = identity;
        let mut entry = identity_entry(provider, sub_provider, provider_uid);
        if let Some(login_id) = login_id {
            entry.insert("loginId".into(), login_id.into());
        }
        let state = match state {
            IdentityState::Active => "IDENTITY_STATE_ACTIVE",
            IdentityState::SoftRemoved => "IDENTITY_STATE_SOFT_REMOVED",
        };
        entry.insert("state".into(), state.into());
        entry.insert("hasSession".into(), has_session.into());
        entry.insert("linkedAt".into(), format_time(linked_at).into());
        entry.insert("updatedAt".into(), format_time(updated_at).into());
        Value::Object(entry)
    };
    json!({
        "apiKey": api_key,
        "uid": uid,
        "loginIds": login_ids
            .into_iter()
            .map(|(login_id, has_password)| json!({"loginId": login_id, "hasPassword": has_password}))
            .collect::<Vec<_>>(),
        "identities": identities.into_iter().map(identity).collect::<Vec<_>>(),
        "loginMethods": login_methods,
        "createdAt": format_time(created_at),
        "updatedAt": format_time(updated_at),
    })
}

/// The success body of socialize.removeConnection.
pub fn success(outcome: RemovalOutcome) -> (ErrorCode, Map<String, Value>) {
    let RemovalOutcome {
        call_id,
        time,
        removed,
        account,
        context,
        redirect_url: _,
        dry_run,
    } = outcome;
    let code = ErrorCode::OK;
    let mut body = envelope(&call_id, &code, time);
    if let Some(context) = context {
        body.insert("context".into(), context);
    }
    if !removed.is_empty() {
        body.insert(
            "removed".into(),
            Value::Array(removed.into_iter().map(removed_identity).collect()),
        );
    }
    if let Some(account) = account {
        body.insert("user".into(), user(account));
    }
    if dry_run {
        body.insert("dryRun".into(), true.into());
    }
    (code, body)
}

/// The error body; `context` is echoed when the request carried one.
pub fn failure(
    call_id: &str,
    err: &RestError,
    context: Option<Value>,
) -> (ErrorCode, Map<String, Value>) {
    let code = err.code();
    let mut body = envelope(call_id, &code, Utc::now());
    body.insert("errorMessage".into(), code.message().into());
    body.insert("errorDetails".into(), err.details(call_id).into());
    body.insert("reason".into(), code.reason.into());
    if let Some(context) = context {
        body.insert("context".into(), context);
    }
    (code, body)
}

/// What the per-call layer reads back for metrics and the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub error_code: u32,
    pub reason: &'static str,
}

/// The HTTP response: JSON or JSONP, and the status the options ask for.
pub fn render(options: &ResponseOptions, code: ErrorCode, body: Map<String, Value>) -> Response {
    let json = Value::Object(body).to_string();
    let (content_type, text) = match &options.callback {
        // U+2028/2029 are valid in JSON but end a line in older JavaScript.
        Some(callback) => (
            "application/javascript; charset=utf-8",
            format!(
                "{callback}({});",
                json.replace('\u{2028}', "\\u2028")
                    .replace('\u{2029}', "\\u2029")
            ),
        ),
        None => ("application/json; charset=utf-8", json),
    };
    let status = if options.http_status_codes {
        StatusCode::from_u16(code.status_code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    } else {
        StatusCode::OK
    };
    let mut response = (status, Body::from(text)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.extensions_mut().insert(Outcome {
        error_code: code.error_code,
        reason: code.reason,
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(query: &str) -> (ResponseOptions, Result<(), DomainError>) {
        ResponseOptions::parse(&Params::decode(query.as_bytes()).unwrap())
    }

    #[test]
    fn callbacks_are_identifier_paths() {
        for good in ["cb", "a.b_c", "$jq.fn$1", "_x.Y"] {
            assert!(is_callback(good), "{good}");
        }
        for bad in [
            "",
            "alert(1)//",
            "a..b",
            "1a",
            "a.",
            "a-b",
            "a b",
            "a;b",
            "a[0]",
            &"a".repeat(129),
        ] {
            assert!(!is_callback(bad), "{bad}");
        }
    }

    #[test]
    fn options_fall_back_to_plain_json_when_bad() {
        let (opts, result) = options("format=jsonp&callback=alert(1)//&httpStatusCodes=true");
        assert_eq!(opts.callback, None);
        assert!(opts.http_status_codes);
        assert_eq!(result.unwrap_err().field(), Some("callback"));
        let (opts, result) = options("format=jsonp&callback=my.cb");
        assert_eq!(opts.callback.as_deref(), Some("my.cb"));
        assert!(result.is_ok());
        assert_eq!(options("format=xml").1.unwrap_err().field(), Some("format"));
        assert_eq!(
            options("format=jsonp").1.unwrap_err(),
            DomainError::MissingParameter { field: "callback" }
        );
        assert_eq!(
            options("httpStatusCodes=yes").1.unwrap_err().field(),
            Some("httpStatusCodes")
        );
    }

    #[test]
    fn times_have_milliseconds_and_a_z() {
        let time = DateTime::from_timestamp_millis(1_427_024_545_943).unwrap();
        assert_eq!(format_time(time), "2015-03-22T11:42:25.943Z");
    }
}
