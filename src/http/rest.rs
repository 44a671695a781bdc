//! `socialize.removeConnection` over REST (SPEC section 11), a thin
//! adapter: it reads the parameters (query string or form body), hands the
//! credentials to the shared gate, converts the parameters into the same
//! raw input the gRPC door builds (so validation is the domain's, identical
//! for both), calls the same application service, and shapes the answer.
//!
//! Credentials, in order: `userKey` with `secret` (a), `userKey` with
//! `timestamp`, `nonce` and `sig` (b, a signed request), else the
//! `Authorization: Bearer` header (c): an API token, or a user token of the
//! browser SDK (which acts only on its own uid, the default `UID`).
//!
//! `context` is a string on REST: when it parses as JSON that value is
//! used (`{"a":1}`, `42`, `"quoted"`), otherwise the string itself (`page-7`).
//! Either way it is returned unchanged in the response.

use std::{net::IpAddr, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{Method, StatusCode, header, request::Parts};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use super::{
    RestConfig, call_layer,
    error_codes::RestError,
    params::Params,
    response::{self, ResponseOptions, get, parse_bool},
    server::PeerAddr,
};
use crate::{
    access::{
        Access, AccessError, AppKeyProof, CallContext, Caller, Credential, Gate, Permission, Proof,
        signature,
    },
    domain::{DomainError, input::RemoveConnectionInput, removal::LastIdentityHandling},
    service::Services,
};

const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// The REST door's shared state.
#[derive(Debug)]
pub struct RestDoor {
    services: Services,
    gate: Arc<Gate>,
    config: RestConfig,
}

impl RestDoor {
    pub fn new(services: Services, gate: Arc<Gate>, config: RestConfig) -> Self {
        Self {
            services,
            gate,
            config,
        }
    }

    pub fn services(&self) -> &Services {
        &self.services
    }
}

/// `GET` or `POST /socialize.removeConnection`.
pub async fn remove_connection(State(door): State<Arc<RestDoor>>, request: Request) -> Response {
    // axum routes HEAD to GET handlers: a HEAD must never act.
    if request.method() == Method::HEAD {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let (call_id, traceparent) = call_layer::call_of(&request);
    let peer = request.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let (parts, body) = request.into_parts();
    let params = match door.read_params(&parts, body).await {
        Ok(params) => params,
        Err(err) => return answer(&ResponseOptions::default(), &call_id, Err(err), None),
    };
    let (options, options_ok) = ResponseOptions::parse(&params);
    let context = params.get("context").ok().flatten().map(parse_context);
    let result = async {
        options_ok?;
        let caller = door.admit(&parts, &params, peer).await?;
        let mut raw = input(&params)?;
        // A user token names its account: the browser SDK need not repeat
        // the UID (as Gigya's client SDKs do not send it).
        if let (true, Some(uid)) = (raw.uid.is_empty(), &caller.uid) {
            raw.uid.clone_from(uid);
        }
        let mut call = CallContext::new(caller);
        call.call_id.clone_from(&call_id);
        call.traceparent = traceparent;
        let command = raw.parse(door.services.registry())?;
        Ok(door.services.remove_connection(&call, command).await?)
    }
    .await;
    answer(&options, &call_id, result, context)
}

/// Anything else on the REST listener.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        "not found: try POST /socialize.removeConnection\n",
    )
        .into_response()
}

fn answer(
    options: &ResponseOptions,
    call_id: &str,
    result: Result<crate::domain::removal::RemovalOutcome, RestError>,
    context: Option<Value>,
) -> Response {
    let (code, body) = match result {
        Ok(outcome) => response::success(outcome),
        // The call layer records the outcome's reason in the span.
        Err(err) => response::failure(call_id, &err, context),
    };
    response::render(options, code, body)
}

/// `context` as given: a JSON value if it parses as one, else the string.
fn parse_context(raw: &str) -> Value {
    serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()))
}

/// The parameters as the domain's raw RemoveConnection input (REST names
/// in, the same values the gRPC door would pass).
fn input(params: &Params) -> Result<RemoveConnectionInput, DomainError> {
    let owned = |name| get(params, name).map(|v| v.map(str::to_owned));
    let last_identity_handling = match get(params, "lastIdentityHandling")? {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("soft") => Some(LastIdentityHandling::Soft),
        Some(v) if v.eq_ignore_ascii_case("remove") => Some(LastIdentityHandling::Remove),
        Some(v) if v.eq_ignore_ascii_case("fail") => Some(LastIdentityHandling::Fail),
        Some(_) => {
            return Err(DomainError::invalid(
                "lastIdentityHandling",
                "must be `soft`, `remove` or `fail`",
            ));
        }
    };
    Ok(RemoveConnectionInput {
        api_key: owned("apiKey")?.unwrap_or_default(),
        uid: owned("UID")?.unwrap_or_default(),
        provider: owned("provider")?,
        cid: owned("cid")?,
        remove_login_id: parse_bool(params, "removeLoginID")?.unwrap_or(false),
        last_identity_handling,
        context: get(params, "context")?.map(parse_context),
        request_id: owned("requestId")?.unwrap_or_default(),
        dry_run: parse_bool(params, "dryRun")?.unwrap_or(false),
        force_providers_logout: parse_bool(params, "forceProvidersLogout")?,
    })
}

impl RestDoor {
    /// The request's parameters: the query string, and for a POST the form
    /// body too. Bad encoding, a body too large or too slow, or a body that
    /// is not a form are malformed requests.
    async fn read_params(&self, parts: &Parts, body: Body) -> Result<Params, RestError> {
        let query = parts.uri.query().unwrap_or_default();
        let mut params = Params::decode(query.as_bytes()).map_err(RestError::Malformed)?;
        if parts.method != Method::POST {
            return Ok(params);
        }
        let limit = self.config.limits.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(too_large(limit));
        }
        let read = tokio::time::timeout(
            self.config.limits.read_timeout,
            Limited::new(body, limit).collect(),
        )
        .await
        .map_err(|_| RestError::Malformed("the request body did not arrive in time".into()))?;
        let bytes = match read {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                return Err(too_large(limit));
            }
            Err(_) => return Err(RestError::Malformed("cannot read the request body".into())),
        };
        if bytes.is_empty() {
            return Ok(params);
        }
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case(FORM_CONTENT_TYPE) {
            return Err(RestError::Malformed(format!(
                "the body must be {FORM_CONTENT_TYPE}"
            )));
        }
        let mut form = Params::decode(&bytes).map_err(RestError::Malformed)?;
        form.extend(params);
        params = form;
        Ok(params)
    }

    /// Finds the credentials and asks the gate.
    async fn admit(
        &self,
        parts: &Parts,
        params: &Params,
        peer: Option<IpAddr>,
    ) -> Result<Caller, RestError> {
        let access = Access::Requires(Permission::ConnectionsWrite);
        let admission = match get(params, "userKey")? {
            Some(user_key) => {
                let proof = self.proof(parts, params, user_key)?;
                self.gate
                    .admit_credential(access, Credential::AppKey(&proof), peer, false)
                    .await?
            }
            None => {
                let header = parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                self.gate
                    .admit_credential(access, Credential::Header(header), peer, false)
                    .await?
            }
        };
        Ok(admission.caller)
    }

    /// An application key's proof: its secret (a), or a signature (b) over
    /// the base string of the URL the client called and every parameter.
    fn proof(
        &self,
        parts: &Parts,
        params: &Params,
        user_key: &str,
    ) -> Result<AppKeyProof, RestError> {
        let proof = if let Some(secret) = get(params, "secret")? {
            Proof::Secret(secret.to_owned())
        } else if let Some(sig) = get(params, signature::SIG_PARAMETER)? {
            let (Some(timestamp), Some(nonce)) = (get(params, "timestamp")?, get(params, "nonce")?)
            else {
                return Err(AccessError::Unauthenticated(
                    "a signed request needs timestamp, nonce and sig".into(),
                )
                .into());
            };
            let url = self.called_url(parts).ok_or_else(|| {
                AccessError::Unauthenticated(
                    "cannot tell which URL the request was sent to (Host header)".into(),
                )
            })?;
            Proof::Signed {
                timestamp: timestamp.to_owned(),
                nonce: nonce.to_owned(),
                sig: sig.to_owned(),
                base_string: signature::base_string(parts.method.as_str(), &url, params.pairs()),
            }
        } else {
            return Err(AccessError::Unauthenticated(
                "userKey needs a secret, or a signature (timestamp, nonce, sig)".into(),
            )
            .into());
        };
        Ok(AppKeyProof {
            user_key: user_key.to_owned(),
            proof,
        })
    }

    /// The URL the client called, normalized for the base string: the
    /// configured public base URL plus the path, or else the scheme from
    /// `X-Forwarded-Proto` (or this listener's) and the `Host` header.
    fn called_url(&self, parts: &Parts) -> Option<String> {
        let path = parts.uri.path();
        if let Some(base) = &self.config.public_base_url {
            return signature::normalize_url(&format!("{}{path}", base.trim_end_matches('/')));
        }
        let forwarded = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| v == "http" || v == "https");
        let scheme =
            forwarded.unwrap_or_else(|| if self.config.tls { "https" } else { "http" }.to_owned());
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))?;
        if host.contains(['/', '?', '#', '@']) {
            return None;
        }
        signature::normalize_url(&format!("{scheme}://{host}{path}"))
    }
}

fn too_large(limit: usize) -> RestError {
    RestError::Malformed(format!("the request body is larger than {limit} bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_json_when_it_parses_and_a_string_otherwise() {
        assert_eq!(parse_context(r#"{"a":1}"#), serde_json::json!({"a": 1}));
        assert_eq!(parse_context("42"), serde_json::json!(42));
        assert_eq!(parse_context(r#""q""#), serde_json::json!("q"));
        assert_eq!(parse_context("page-7"), serde_json::json!("page-7"));
        assert_eq!(parse_context("{broken"), serde_json::json!("{broken"));
    }

    #[test]
    fn rest_parameters_become_the_domain_input() {
        let params = Params::decode(
            b"apiKey=3_a&UID=u1&provider=facebook&cid=c&removeLoginID=true\
              &lastIdentityHandling=FAIL&context=x&requestId=r1&dryRun=true\
              &forceProvidersLogout=false&sdk=js_latest",
        )
        .unwrap();
        assert_eq!(
            input(&params).unwrap(),
            RemoveConnectionInput {
                api_key: "3_a".into(),
                uid: "u1".into(),
                provider: Some("facebook".into()),
                cid: Some("c".into()),
                remove_login_id: true,
                last_identity_handling: Some(LastIdentityHandling::Fail),
                context: Some(Value::String("x".into())),
                request_id: "r1".into(),
                dry_run: true,
                force_providers_logout: Some(false),
            }
        );
        let bad = Params::decode(b"lastIdentityHandling=never").unwrap();
        assert_eq!(
            input(&bad).unwrap_err().field(),
            Some("lastIdentityHandling")
        );
        let twice = Params::decode(b"UID=a&UID=b").unwrap();
        assert_eq!(input(&twice).unwrap_err().field(), Some("UID"));
    }
}
