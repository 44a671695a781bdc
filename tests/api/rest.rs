//! The REST door: `socialize.removeConnection` as the Gigya REST API has
//! it (SPEC section 11), spoken to over plain HTTP/1.1 (and once by `curl`),
//! on SQLite and PostgreSQL. Signed requests are signed here by an
//! implementation of the documented algorithm written for the tests, not by
//! the server's code.

use std::time::Duration;

use base64::Engine;
use connections::{config::SessionKey, domain::EventSource, proto::v1 as pb};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bearer},
    on_both_backends,
    remove_connection::outbox_events,
};

on_both_backends!(
    rest_removes_a_connection_with_key_and_secret_and_records_the_key_as_actor,
    rest_takes_every_parameter_by_get_and_by_post,
    rest_answers_every_error_code_with_its_status_in_both_modes,
    rest_signed_requests_are_verified_against_an_independent_signature,
    rest_signed_requests_behind_a_proxy_use_the_public_base_url,
    rest_jsonp_wraps_the_response_only_for_a_valid_callback,
    rest_rate_limits_application_keys,
    rest_accepts_bearer_tokens_and_manages_application_keys,
    rest_reports_an_unavailable_database_as_500001,
    rest_works_with_curl_as_the_readme_shows,
);

const KEY: &str = "3_rest";
const OTHER: &str = "3_other";
const PATH: &str = "/socialize.removeConnection";

// ---- an HTTP client and the test's own form encoding and signing ----

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

/// RFC 3986 percent-encoding, written here rather than taken from the server.
pub(crate) fn enc(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn form(params: &[(&str, &str)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The Gigya signature: base64(HMAC-SHA1(base64-decoded secret, base string)).
fn gigya_signature(secret: &str, method: &str, url: &str, params: &[(&str, &str)]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| *k != "sig")
        .map(|(k, v)| (enc(k), enc(v)))
        .collect();
    pairs.sort();
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let base = format!("{method}&{}&{}", enc(url), enc(&query));
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .expect("secret is base64");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&key).expect("hmac key");
    mac.update(base.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub async fn send(
    app: &TestApp,
    method: &str,
    path_and_query: &str,
    body: Option<(&str, String)>,
    headers: &[(&str, &str)],
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{}{path_and_query}", app.http_addr));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = match body {
        Some((content_type, body)) => {
            request = request.header("content-type", content_type);
            Full::new(Bytes::from(body))
        }
        None => Full::new(Bytes::new()),
    };
    let response = client
        .request(request.body(body).expect("request"))
        .await
        .expect("HTTP request");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

async fn post(app: &TestApp, params: &[(&str, &str)]) -> Reply {
    send(
        app,
        "POST",
        PATH,
        Some(("application/x-www-form-urlencoded", form(params))),
        &[],
    )
    .await
}

async fn get(app: &TestApp, params: &[(&str, &str)]) -> Reply {
    send(app, "GET", &format!("{PATH}?{}", form(params)), None, &[]).await
}

/// Checks the fields every answer has and that the call id matches its header.
fn envelope(reply: &Reply, error_code: u64, status_code: u64) -> Value {
    let body = reply.json();
    assert_eq!(body["errorCode"], error_code, "{body}");
    assert_eq!(body["statusCode"], status_code, "{body}");
    assert_eq!(body["apiVersion"], 2, "{body}");
    // A retry answers the first call's id; the header names this call.
    assert!(body["callId"].as_str().is_some_and(|id| id.len() == 32));
    assert!(reply.headers.contains_key("x-call-id"));
    let time = body["time"].as_str().expect("time");
    assert_eq!(time.len(), 24, "{time}");
    assert!(
        chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%S%.3fZ").is_ok(),
        "{time}"
    );
    let reason = match status_code {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        409 => "Conflict",
        _ => "Internal Server Error",
    };
    assert_eq!(body["statusReason"], reason, "{body}");
    if error_code == 0 {
        for absent in ["errorMessage", "errorDetails", "reason"] {
            assert!(body.get(absent).is_none(), "{absent} in {body}");
        }
    } else {
        assert!(body["errorMessage"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(body["errorDetails"].as_str().is_some_and(|m| !m.is_empty()));
    }
    body
}

/// Sends `params` with httpStatusCodes=false and =true and checks the code,
/// the reason, and the HTTP status of each mode. Returns the last body.
async fn expect_error(
    app: &TestApp,
    params: &[(&str, &str)],
    error_code: u64,
    status_code: u64,
    reason: &str,
) -> Value {
    let mut body = Value::Null;
    for mode in ["false", "true"] {
        let mut with_mode = params.to_vec();
        with_mode.push(("httpStatusCodes", mode));
        let reply = post(app, &with_mode).await;
        let expected_http = if mode == "true" { status_code } else { 200 };
        assert_eq!(
            u64::from(reply.status),
            expected_http,
            "{params:?}: {}",
            reply.text
        );
        body = envelope(&reply, error_code, status_code);
        assert_eq!(body["reason"], reason, "{params:?}: {body}");
        assert_eq!(reply.headers["x-call-id"], body["callId"].as_str().unwrap());
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
        );
    }
    body
}

// ---- set-up ----

struct Rest {
    app: TestApp,
    /// Caller `billing`: connections.write on KEY.
    user_key: String,
    secret: String,
    /// Caller `ops`: connections.write on every site.
    everywhere: (String, String),
    /// Caller `other-tenant`: connections.write on OTHER only.
    other: (String, String),
    /// Caller `reader`: connections.read on KEY.
    reader: (String, String),
}

impl Rest {
    /// `params` plus this key's userKey and secret.
    fn with_secret<'a>(&'a self, params: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        let mut all = vec![
            ("userKey", self.user_key.as_str()),
            ("secret", self.secret.as_str()),
        ];
        all.extend_from_slice(params);
        all
    }
}

fn rest_settings(settings: &mut connections::config::Settings) {
    settings.session_key = Some(SessionKey([7; 32]));
    settings.security.token_cache_ttl = Duration::ZERO;
}

async fn create_app_key(
    app: &TestApp,
    admin_token: &str,
    caller: &str,
    sites: &[&str],
    permissions: &[&str],
) -> (String, String) {
    let created = app
        .admin()
        .create_app_key(bearer(
            pb::CreateAppKeyRequest {
                caller: caller.into(),
                sites: sites.iter().map(|s| (*s).into()).collect(),
                permissions: permissions.iter().map(|p| (*p).into()).collect(),
            },
            admin_token,
        ))
        .await
        .expect("create app key")
        .into_inner();
    let key = created.app_key.expect("app key");
    assert_eq!(key.caller, caller);
    assert!(key.revoked_at.is_none());
    (key.user_key, created.secret)
}

/// Two sites and accounts (made over gRPC while the server is still open),
/// then an admin token and four application keys (CreateAppKey): from then
/// on every call must authenticate.
async fn setup(
    backend: &Backend,
    configure: impl FnOnce(&mut connections::config::Settings),
) -> Rest {
    let app = TestApp::spawn_with(backend, |s| {
        rest_settings(s);
        configure(s);
    })
    .await;
    app.create_site(KEY, 77).await;
    app.create_site(OTHER, 78).await;
    // u1: a password, facebook, twitter, saml-okta, linkedin.
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    app.link(KEY, "u1", "saml-okta", "", "s1", None).await;
    // u2: facebook brought a login ID of its own.
    app.create_account(KEY, "u2", &[("pw@x.com", true)]).await;
    app.link(KEY, "u2", "facebook", "", "fb2", Some("fb2@x.com"))
        .await;
    // u3: googleplus is the only way to log in.
    app.create_account(KEY, "u3", &[]).await;
    app.link(KEY, "u3", "googleplus", "", "gp3", None).await;
    // u4: two identities share a login ID.
    app.create_account(KEY, "u4", &[("pw4@x.com", true)]).await;
    app.link(KEY, "u4", "facebook", "", "fb4", Some("shared@x.com"))
        .await;
    app.link(KEY, "u4", "twitter", "", "tw4", Some("shared@x.com"))
        .await;
    // u5: the only identity, with the login ID it brought.
    app.create_account(KEY, "u5", &[]).await;
    app.link(KEY, "u5", "facebook", "", "fb5", Some("fb5@x.com"))
        .await;
    // u6: a password and nothing else.
    app.create_account(KEY, "u6", &[("pw6@x.com", true)]).await;
    // From here on every call must authenticate.
    let admin = app.create_token("setup-admin", "*", "admin").await;
    let everywhere = create_app_key(&app, &admin, "ops", &["*"], &["connections.write"]).await;
    let other = create_app_key(
        &app,
        &admin,
        "other-tenant",
        &[OTHER],
        &["connections.write"],
    )
    .await;
    let reader = create_app_key(&app, &admin, "reader", &[KEY], &["connections.read"]).await;
    let (user_key, secret) =
        create_app_key(&app, &admin, "billing", &[KEY], &["connections.write"]).await;
    Rest {
        app,
        user_key,
        secret,
        everywhere,
        other,
        reader,
    }
}

// ---- the tests ----

async fn rest_removes_a_connection_with_key_and_secret_and_records_the_key_as_actor(
    backend: Backend,
) {
    let rest = setup(&backend, |_| {}).await;
    let params = rest.with_secret(&[
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "Facebook"),
        ("cid", "settings-page"),
        ("context", r#"{"page":"settings","n":1}"#),
        ("format", "json"),
        // What SDKs add; unknown parameters are ignored.
        ("sdk", "python_3.2"),
        ("targetEnv", "server"),
        ("apikey", "ignored: names are case-sensitive"),
    ]);
    let reply = post(&rest.app, &params).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.headers["content-type"],
        "application/json; charset=utf-8"
    );
    let body = envelope(&reply, 0, 200);
    assert_eq!(
        body["context"],
        serde_json::json!({"page": "settings", "n": 1})
    );
    let removed = body["removed"].as_array().expect("removed");
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["provider"], "facebook");
    assert_eq!(removed[0]["providerUid"], "fb1");
    assert_eq!(removed[0]["mode"], "REMOVAL_MODE_HARD");
    assert_eq!(removed[0]["providerLogoutRequested"], true);
    assert!(
        removed[0].get("subProvider").is_none(),
        "empty fields are absent"
    );
    assert!(removed[0].get("removedLoginIds").is_none());
    assert!(body.get("dryRun").is_none());
    assert!(
        !reply.text.contains(&rest.secret),
        "never echoes the secret"
    );

    let [event] = outbox_events(&rest.app)
        .await
        .try_into()
        .expect("one event");
    assert_eq!(event.source, EventSource::RemoveConnection);
    assert_eq!(event.call_id, body["callId"].as_str().unwrap());
    assert_eq!(event.actor, "billing");
    assert_eq!(event.cid.as_deref(), Some("settings-page"));
    assert_eq!(removed[0]["eventId"], event.event_id.as_str());
    assert_eq!((event.api_key.as_str(), event.uid.as_str()), (KEY, "u1"));
    assert!(event.traceparent.is_some());
    assert!(!format!("{event:?}").contains(&rest.secret));
}

async fn rest_takes_every_parameter_by_get_and_by_post(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    let app = &rest.app;

    // dryRun: reported, nothing changes, no event ids.
    let reply = get(
        app,
        &rest.with_secret(&[
            ("apiKey", KEY),
            ("UID", "u1"),
            ("provider", "twitter"),
            ("dryRun", "true"),
        ]),
    )
    .await;
    let body = envelope(&reply, 0, 200);
    assert_eq!(body["dryRun"], true);
    assert_eq!(body["removed"][0]["provider"], "twitter");
    assert!(body["removed"][0].get("eventId").is_none());
    assert!(outbox_events(app).await.is_empty());

    // forceProvidersLogout=false turns saml's logout off; by default it is on.
    let reply = get(
        app,
        &rest.with_secret(&[
            ("apiKey", KEY),
            ("UID", "u1"),
            ("provider", "saml-okta"),
            ("forceProvidersLogout", "false"),
        ]),
    )
    .await;
    let body = envelope(&reply, 0, 200);
    assert_eq!(body["removed"][0]["providerLogoutRequested"], false);
    assert!(!outbox_events(app).await[0].provider_logout_requested);

    // requestId: a retry answers the first response without acting again.
    let retried = rest.with_secret(&[
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "twitter"),
        ("requestId", "req-1"),
        ("context", "page-7"),
    ]);
    let first = envelope(&post(app, &retried).await, 0, 200);
    assert_eq!(first["context"], "page-7", "a non-JSON context is a string");
    let again = envelope(&post(app, &retried).await, 0, 200);
    assert_eq!(again["callId"], first["callId"]);
    assert_eq!(again["removed"], first["removed"]);
    assert_eq!(outbox_events(app).await.len(), 2);
    let reused = rest.with_secret(&[
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "facebook"),
        ("requestId", "req-1"),
    ]);
    expect_error(app, &reused, 400_006, 400, "IDEMPOTENCY_KEY_REUSED").await;

    // removeLoginID: the login ID facebook brought goes too.
    let reply = post(
        app,
        &rest.with_secret(&[
            ("apiKey", KEY),
            ("UID", "u2"),
            ("provider", "facebook"),
            ("removeLoginID", "true"),
        ]),
    )
    .await;
    let body = envelope(&reply, 0, 200);
    assert_eq!(
        body["removed"][0]["removedLoginIds"],
        serde_json::json!(["fb2@x.com"])
    );

    // lastIdentityHandling: fail refuses, soft keeps the mapping.
    let last = |handling| {
        rest.with_secret(&[
            ("apiKey", KEY),
            ("UID", "u3"),
            ("provider", "googleplus"),
            ("lastIdentityHandling", handling),
        ])
    };
    let body = expect_error(app, &last("fail"), 400_006, 400, "LAST_LOGIN_IDENTITY").await;
    assert!(body.get("removed").is_none());
    let body = envelope(&post(app, &last("soft")).await, 0, 200);
    assert_eq!(body["removed"][0]["mode"], "REMOVAL_MODE_SOFT");

    // remove: the last identity goes completely, with the login ID it brought.
    let body = envelope(
        &post(
            app,
            &rest.with_secret(&[
                ("apiKey", KEY),
                ("UID", "u5"),
                ("provider", "facebook"),
                ("lastIdentityHandling", "remove"),
            ]),
        )
        .await,
        0,
        200,
    );
    assert_eq!(body["removed"][0]["mode"], "REMOVAL_MODE_HARD");
    assert_eq!(
        body["removed"][0]["removedLoginIds"],
        serde_json::json!(["fb5@x.com"])
    );

    // No provider: every social and SAML identity left (facebook of u1).
    let body = envelope(
        &get(
            app,
            &rest.with_secret(&[("apiKey", KEY), ("UID", "u1"), ("cid", "c2")]),
        )
        .await,
        0,
        200,
    );
    let providers: Vec<_> = body["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["provider"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(providers, ["facebook"]);
    // ...and with nothing left to remove, success without `removed`.
    let body = envelope(
        &get(app, &rest.with_secret(&[("apiKey", KEY), ("UID", "u1")])).await,
        0,
        200,
    );
    assert!(body.get("removed").is_none(), "{body}");
    let events = outbox_events(app).await;
    assert!(
        events
            .iter()
            .all(|e| e.actor == "billing" && e.source == EventSource::RemoveConnection)
    );
}

async fn rest_answers_every_error_code_with_its_status_in_both_modes(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    let app = &rest.app;
    let (everywhere_key, everywhere_secret) = rest.everywhere.clone();
    let (other_key, other_secret) = rest.other.clone();
    let (reader_key, reader_secret) = rest.reader.clone();
    let long_cid = "c".repeat(101);
    let long_request_id = "r".repeat(300);

    // 400002 missing parameter.
    let body = expect_error(
        app,
        &rest.with_secret(&[("apiKey", KEY)]),
        400_002,
        400,
        "MISSING_PARAMETER",
    )
    .await;
    assert!(
        body["errorDetails"].as_str().unwrap().contains("UID"),
        "{body}"
    );
    let body = expect_error(
        app,
        &rest.with_secret(&[("UID", "u1")]),
        400_002,
        400,
        "MISSING_PARAMETER",
    )
    .await;
    assert!(
        body["errorDetails"].as_str().unwrap().contains("apiKey"),
        "{body}"
    );
    expect_error(
        app,
        &rest.with_secret(&[("apiKey", KEY), ("UID", "u1"), ("format", "jsonp")]),
        400_002,
        400,
        "MISSING_PARAMETER",
    )
    .await;

    // 400006: bad values and the rule refusals, told apart by reason.
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("UID", "u1"), ("provider", "myspace")],
            "UNKNOWN_PROVIDER",
        ),
        (vec![("UID", "u1"), ("provider", "")], "INVALID_PARAMETER"),
        (
            vec![("UID", "u1"), ("provider", "linkedin")],
            "NOT_CONNECTED",
        ),
        (
            vec![("UID", "u3"), ("lastIdentityHandling", "fail")],
            "LAST_LOGIN_IDENTITY",
        ),
        (
            vec![
                ("UID", "u4"),
                ("provider", "facebook"),
                ("removeLoginID", "true"),
            ],
            "LOGIN_ID_IN_USE",
        ),
        (
            vec![
                ("UID", "u5"),
                ("provider", "facebook"),
                ("removeLoginID", "true"),
            ],
            "NO_LOGIN_METHOD_LEFT",
        ),
        (
            vec![("UID", "u1"), ("cid", long_cid.as_str())],
            "INVALID_PARAMETER",
        ),
        (
            vec![("UID", "u1"), ("removeLoginID", "maybe")],
            "INVALID_PARAMETER",
        ),
        (
            vec![("UID", "u1"), ("lastIdentityHandling", "sometimes")],
            "INVALID_PARAMETER",
        ),
        (
            vec![("UID", "u1"), ("forceProvidersLogout", "1")],
            "INVALID_PARAMETER",
        ),
        (vec![("UID", "u1"), ("dryRun", "yes")], "INVALID_PARAMETER"),
        (vec![("UID", "u1"), ("format", "xml")], "INVALID_PARAMETER"),
        (vec![("UID", "u1"), ("UID", "u2")], "INVALID_PARAMETER"),
        (
            vec![("UID", "u1"), ("requestId", long_request_id.as_str())],
            "INVALID_PARAMETER",
        ),
    ];
    for (extra, reason) in cases {
        let mut params = vec![("apiKey", KEY)];
        params.extend(extra);
        expect_error(app, &rest.with_secret(&params), 400_006, 400, reason).await;
    }
    // A bad httpStatusCodes cannot be honoured: HTTP 200.
    let reply = post(
        app,
        &rest.with_secret(&[("apiKey", KEY), ("UID", "u1"), ("httpStatusCodes", "maybe")]),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        envelope(&reply, 400_006, 400)["reason"],
        "INVALID_PARAMETER"
    );
    // Nothing above changed anything.
    assert!(outbox_events(app).await.is_empty());

    // TOO_MANY_CONTEXT_IDS: a site may use 100 distinct cids; a request that
    // removes nothing still counts its cid (a dry run keeps nothing).
    for n in 0..100 {
        let cid = format!("cid-{n}");
        let params = rest.with_secret(&[("apiKey", KEY), ("UID", "u6")]);
        let mut params = params;
        params.push(("cid", cid.as_str()));
        envelope(&get(app, &params).await, 0, 200);
    }
    expect_error(
        app,
        &rest.with_secret(&[("apiKey", KEY), ("UID", "u1"), ("cid", "one-too-many")]),
        400_006,
        400,
        "TOO_MANY_CONTEXT_IDS",
    )
    .await;

    // 400001 malformed requests.
    for (content_type, body) in [
        ("application/x-www-form-urlencoded", "UID=%zz".to_owned()),
        ("application/x-www-form-urlencoded", "UID=%FF".to_owned()),
        ("application/json", r#"{"UID":"u1"}"#.to_owned()),
        (
            "application/x-www-form-urlencoded",
            format!("UID={}", "x".repeat(70_000)),
        ),
    ] {
        for (mode, http_status) in [("false", 200), ("true", 400)] {
            let reply = send(
                app,
                "POST",
                &format!("{PATH}?httpStatusCodes={mode}"),
                Some((content_type, body.clone())),
                &[],
            )
            .await;
            // The options of a request that cannot be read are unknown: HTTP 200.
            let _ = http_status;
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(
                envelope(&reply, 400_001, 400)["reason"],
                "MALFORMED_REQUEST"
            );
        }
    }
    let reply = send(app, "GET", &format!("{PATH}?UID=%zz"), None, &[]).await;
    envelope(&reply, 400_001, 400);

    // 400093 unknown apiKey (for a key that may act on every site).
    let everywhere = [
        ("userKey", everywhere_key.as_str()),
        ("secret", everywhere_secret.as_str()),
        ("apiKey", "3_unknown"),
        ("UID", "u1"),
    ];
    expect_error(app, &everywhere, 400_093, 400, "SITE_NOT_FOUND").await;

    // 403005 unknown UID.
    expect_error(
        app,
        &rest.with_secret(&[("apiKey", KEY), ("UID", "nobody")]),
        403_005,
        403,
        "ACCOUNT_NOT_FOUND",
    )
    .await;

    // 403003 missing or wrong credentials.
    let target = [("apiKey", KEY), ("UID", "u1"), ("provider", "twitter")];
    expect_error(app, &target, 403_003, 403, "UNAUTHENTICATED").await;
    let mut wrong = vec![
        ("userKey", rest.user_key.as_str()),
        ("secret", other_secret.as_str()),
    ];
    wrong.extend(target);
    let body = expect_error(app, &wrong, 403_003, 403, "UNAUTHENTICATED").await;
    assert!(!body.to_string().contains(&other_secret));
    let mut unknown = vec![
        ("userKey", "NoSuchKey123"),
        ("secret", rest.secret.as_str()),
    ];
    unknown.extend(target);
    expect_error(app, &unknown, 403_003, 403, "UNAUTHENTICATED").await;
    let mut bare = vec![("userKey", rest.user_key.as_str())];
    bare.extend(target);
    expect_error(app, &bare, 403_003, 403, "UNAUTHENTICATED").await;

    // 403007 a key for another site, or without the permission.
    let mut other = vec![
        ("userKey", other_key.as_str()),
        ("secret", other_secret.as_str()),
    ];
    other.extend(target);
    expect_error(app, &other, 403_007, 403, "PERMISSION_DENIED").await;
    let mut reader = vec![
        ("userKey", reader_key.as_str()),
        ("secret", reader_secret.as_str()),
    ];
    reader.extend(target);
    expect_error(app, &reader, 403_007, 403, "PERMISSION_DENIED").await;

    // 403002 and 403004: see the signed-request test; 403048: the rate test;
    // 500001: the unavailable-database test.
    assert!(
        outbox_events(app).await.is_empty(),
        "no refusal changed anything"
    );
}

async fn rest_signed_requests_are_verified_against_an_independent_signature(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    let app = &rest.app;
    let now = chrono::Utc::now().timestamp();
    let url = format!("http://{}{PATH}", app.http_addr);

    // Seconds, with the URL this client called.
    let timestamp = now.to_string();
    let mut params = vec![
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "twitter"),
        ("userKey", rest.user_key.as_str()),
        ("timestamp", timestamp.as_str()),
        ("nonce", "n-1"),
        ("format", "json"),
        ("context", "a b+c/é"),
    ];
    let sig = gigya_signature(&rest.secret, "POST", &url, &params);
    params.push(("sig", sig.as_str()));
    let reply = post(app, &params).await;
    let body = envelope(&reply, 0, 200);
    assert_eq!(body["removed"][0]["provider"], "twitter");
    assert_eq!(body["context"], "a b+c/é");

    // Replaying it is refused: 403004, in both modes (a new nonce each for the mode check).
    let reply = post(app, &params).await;
    assert_eq!(envelope(&reply, 403_004, 403)["reason"], "NONCE_REUSED");

    // Milliseconds, over GET.
    let millis = (now * 1000 + 123).to_string();
    let mut params = vec![
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "saml-okta"),
        ("userKey", rest.user_key.as_str()),
        ("timestamp", millis.as_str()),
        ("nonce", "n-2"),
    ];
    let sig = gigya_signature(&rest.secret, "GET", &url, &params);
    params.push(("sig", sig.as_str()));
    let body = envelope(&get(app, &params).await, 0, 200);
    assert_eq!(body["removed"][0]["provider"], "saml-okta");

    // Behind a proxy: the URL the client called comes from X-Forwarded-Proto and Host.
    let mut params = vec![
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "facebook"),
        ("dryRun", "true"),
        ("userKey", rest.user_key.as_str()),
        ("timestamp", timestamp.as_str()),
        ("nonce", "n-3"),
    ];
    let sig = gigya_signature(
        &rest.secret,
        "POST",
        &format!("https://api.example.com{PATH}"),
        &params,
    );
    params.push(("sig", sig.as_str()));
    let reply = send(
        app,
        "POST",
        PATH,
        Some(("application/x-www-form-urlencoded", form(&params))),
        &[
            ("x-forwarded-proto", "https"),
            ("host", "API.example.com:443"),
        ],
    )
    .await;
    envelope(&reply, 0, 200);

    // Each refusal, in both modes: httpStatusCodes is a signed parameter too.
    let signed =
        |nonce: &str, timestamp: i64, secret: &str, extra: &[(&'static str, &'static str)]| {
            let mut params: Vec<(&str, String)> = vec![
                ("apiKey", KEY.into()),
                ("UID", "u1".into()),
                ("provider", "facebook".into()),
                ("userKey", rest.user_key.clone()),
                ("timestamp", timestamp.to_string()),
                ("nonce", nonce.to_owned()),
            ];
            params.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            let borrowed: Vec<(&str, &str)> =
                params.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let sig = gigya_signature(secret, "POST", &url, &borrowed);
            params.push(("sig", sig));
            params
        };
    let refused = |params: Vec<(&'static str, String)>,
                   mode: &'static str,
                   code: u64,
                   reason: &'static str| async move {
        let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = post(app, &borrowed).await;
        assert_eq!(
            reply.status,
            if mode == "true" { 403 } else { 200 },
            "{}",
            reply.text
        );
        assert_eq!(envelope(&reply, code, 403)["reason"], reason);
    };
    let other_secret = base64::engine::general_purpose::STANDARD.encode([9u8; 24]);
    for mode in ["false", "true"] {
        let with_mode: &[(&str, &str)] = &[("httpStatusCodes", mode)];
        // Expired, and too far ahead: 403002.
        refused(
            signed("old", now - 121, &rest.secret, with_mode),
            mode,
            403_002,
            "TIMESTAMP_OUT_OF_WINDOW",
        )
        .await;
        refused(
            signed("ahead", now + 300, &rest.secret, with_mode),
            mode,
            403_002,
            "TIMESTAMP_OUT_OF_WINDOW",
        )
        .await;
        // A wrong secret, or a parameter changed after signing: 403003.
        refused(
            signed("wrong", now, &other_secret, with_mode),
            mode,
            403_003,
            "UNAUTHENTICATED",
        )
        .await;
        let mut tampered = signed("tampered", now, &rest.secret, with_mode);
        tampered[1].1 = "u2".into();
        refused(tampered, mode, 403_003, "UNAUTHENTICATED").await;
    }
    // A nonce is accepted once (a dry run here); any later request with it is 403004.
    let once = signed("once", now, &rest.secret, &[("dryRun", "true")]);
    let borrowed: Vec<(&str, &str)> = once.iter().map(|(k, v)| (*k, v.as_str())).collect();
    envelope(&post(app, &borrowed).await, 0, 200);
    for mode in ["false", "true"] {
        refused(
            signed(
                "once",
                now,
                &rest.secret,
                &[("dryRun", "true"), ("httpStatusCodes", mode)],
            ),
            mode,
            403_004,
            "NONCE_REUSED",
        )
        .await;
    }

    let events = outbox_events(app).await;
    assert_eq!(events.len(), 2, "twitter and saml-okta, each once");
    assert!(events.iter().all(|e| e.actor == "billing"));
}

async fn rest_signed_requests_behind_a_proxy_use_the_public_base_url(backend: Backend) {
    let rest = setup(&backend, |s| {
        s.http.public_base_url = Some("https://api.example.com/gigya".into());
    })
    .await;
    let app = &rest.app;
    let timestamp = chrono::Utc::now().timestamp().to_string();
    let sign_for = |url: &str, nonce: &'static str| {
        let mut params: Vec<(&str, String)> = vec![
            ("apiKey", KEY.into()),
            ("UID", "u1".into()),
            ("provider", "twitter".into()),
            ("userKey", rest.user_key.clone()),
            ("timestamp", timestamp.clone()),
            ("nonce", nonce.into()),
        ];
        let borrowed: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let sig = gigya_signature(&rest.secret, "POST", url, &borrowed);
        params.push(("sig", sig));
        form(
            &params
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
    };
    // Signed for the address the proxy forwards to: refused, whatever the headers say.
    let direct = sign_for(&format!("http://{}{PATH}", app.http_addr), "p-1");
    let reply = send(
        app,
        "POST",
        PATH,
        Some(("application/x-www-form-urlencoded", direct)),
        &[],
    )
    .await;
    envelope(&reply, 403_003, 403);
    // Signed for the public URL (the proxy strips /gigya): accepted.
    let public = sign_for(&format!("https://api.example.com/gigya{PATH}"), "p-2");
    let reply = send(
        app,
        "POST",
        PATH,
        Some(("application/x-www-form-urlencoded", public)),
        &[("x-forwarded-proto", "http"), ("host", "evil.example")],
    )
    .await;
    envelope(&reply, 0, 200);
}

async fn rest_jsonp_wraps_the_response_only_for_a_valid_callback(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    let app = &rest.app;
    let reply = get(
        app,
        &rest.with_secret(&[
            ("apiKey", KEY),
            ("UID", "u1"),
            ("provider", "twitter"),
            ("format", "jsonp"),
            ("callback", "gigya.callbacks._cb1"),
        ]),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers["content-type"],
        "application/javascript; charset=utf-8"
    );
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    let json = reply
        .text
        .strip_prefix("gigya.callbacks._cb1(")
        .and_then(|t| t.strip_suffix(");"))
        .unwrap_or_else(|| panic!("not JSONP: {}", reply.text));
    let body: Value = serde_json::from_str(json).expect("JSON inside");
    assert_eq!(body["errorCode"], 0);
    assert_eq!(body["removed"][0]["provider"], "twitter");

    // An error is wrapped as well.
    let reply = get(
        app,
        &rest.with_secret(&[
            ("apiKey", KEY),
            ("UID", "nobody"),
            ("format", "jsonp"),
            ("callback", "cb"),
        ]),
    )
    .await;
    assert!(
        reply.text.starts_with("cb({") && reply.text.ends_with("});"),
        "{}",
        reply.text
    );

    // A hostile callback is refused with 400006, as JSON, and never reflected.
    for hostile in ["alert(1)//", "a;b", "x.constructor['call']", "<script>"] {
        for mode in ["false", "true"] {
            let reply = get(
                app,
                &rest.with_secret(&[
                    ("apiKey", KEY),
                    ("UID", "u1"),
                    ("provider", "facebook"),
                    ("format", "jsonp"),
                    ("callback", hostile),
                    ("httpStatusCodes", mode),
                ]),
            )
            .await;
            assert_eq!(reply.status, if mode == "true" { 400 } else { 200 });
            assert!(
                reply.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            assert!(!reply.text.contains(hostile), "{}", reply.text);
            let body = envelope(&reply, 400_006, 400);
            assert_eq!(body["reason"], "INVALID_PARAMETER");
            assert!(body["errorDetails"].as_str().unwrap().contains("callback"));
        }
    }
    assert_eq!(
        outbox_events(app).await.len(),
        1,
        "only the first call acted"
    );
}

async fn rest_rate_limits_application_keys(backend: Backend) {
    // A burst that covers the set-up calls; the key's caller has its own.
    const BURST: u32 = 25;
    let rest = setup(&backend, |s| {
        s.security.rate_limit_per_second = 0.001;
        s.security.rate_limit_burst = BURST;
    })
    .await;
    let app = &rest.app;
    let params = rest.with_secret(&[
        ("apiKey", KEY),
        ("UID", "u1"),
        ("provider", "twitter"),
        ("dryRun", "true"),
    ]);
    for _ in 0..BURST {
        envelope(&post(app, &params).await, 0, 200);
    }
    expect_error(app, &params, 403_048, 403, "RATE_LIMITED").await;
}

async fn rest_accepts_bearer_tokens_and_manages_application_keys(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    let app = &rest.app;
    let token = app
        .create_token("crm", "*", "connections.write,admin")
        .await;
    let reply = send(
        app,
        "POST",
        PATH,
        Some((
            "application/x-www-form-urlencoded",
            form(&[("apiKey", KEY), ("UID", "u1"), ("provider", "twitter")]),
        )),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    envelope(&reply, 0, 200);
    assert_eq!(outbox_events(app).await[0].actor, "crm");
    let reply = send(
        app,
        "POST",
        PATH,
        Some((
            "application/x-www-form-urlencoded",
            form(&[("apiKey", KEY), ("UID", "u1")]),
        )),
        &[(
            "authorization",
            "Bearer cnx_not-a-real-token-not-a-real-token-not-a-rea",
        )],
    )
    .await;
    envelope(&reply, 403_003, 403);

    // List shows keys without secrets; revoking takes effect (cache TTL 0).
    let listed = app
        .admin()
        .list_app_keys(bearer(pb::ListAppKeysRequest {}, &token))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.app_keys.len(), 4);
    let billing = listed
        .app_keys
        .iter()
        .find(|k| k.user_key == rest.user_key)
        .expect("billing's key listed");
    assert_eq!(
        (billing.caller.as_str(), billing.sites.as_slice()),
        ("billing", &[KEY.to_owned()][..])
    );
    assert!(!format!("{listed:?}").contains(&rest.secret));
    let revoked = app
        .admin()
        .revoke_app_key(bearer(
            pb::RevokeAppKeyRequest {
                user_key: rest.user_key.clone(),
            },
            &token,
        ))
        .await
        .expect("revoke")
        .into_inner();
    assert!(revoked.app_key.unwrap().revoked_at.is_some());
    expect_error(
        app,
        &rest.with_secret(&[("apiKey", KEY), ("UID", "u1")]),
        403_003,
        403,
        "UNAUTHENTICATED",
    )
    .await;
    assert_refused(
        app.admin()
            .revoke_app_key(bearer(
                pb::RevokeAppKeyRequest {
                    user_key: rest.user_key.clone(),
                },
                &token,
            ))
            .await,
        Code::NotFound,
        "APP_KEY_NOT_FOUND",
    );
    // A site admin cannot mint a key beyond its sites.
    let site_admin = app.create_token("site-admin", OTHER, "admin").await;
    assert_refused(
        app.admin()
            .create_app_key(bearer(
                pb::CreateAppKeyRequest {
                    caller: "x".into(),
                    sites: vec![KEY.into()],
                    permissions: vec!["connections.write".into()],
                },
                &site_admin,
            ))
            .await,
        Code::PermissionDenied,
        "PERMISSION_DENIED",
    );
    assert_refused(
        app.admin()
            .create_app_key(bearer(
                pb::CreateAppKeyRequest {
                    caller: "x".into(),
                    sites: vec![],
                    permissions: vec!["connections.write".into()],
                },
                &token,
            ))
            .await,
        Code::InvalidArgument,
        "MISSING_PARAMETER",
    );

    // Without a --session-key the server refuses to mint keys it could not read after a restart.
    let plain = TestApp::spawn(&backend).await;
    assert_refused(
        plain
            .admin()
            .create_app_key(pb::CreateAppKeyRequest {
                caller: "x".into(),
                sites: vec!["*".into()],
                permissions: vec!["connections.write".into()],
            })
            .await,
        Code::FailedPrecondition,
        "NOT_CONFIGURED",
    );
}

async fn rest_reports_an_unavailable_database_as_500001(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    rest.app.repo.close().await;
    let body = expect_error(
        &rest.app,
        &rest.with_secret(&[("apiKey", KEY), ("UID", "u1")]),
        500_001,
        500,
        "DATABASE_UNAVAILABLE",
    )
    .await;
    let details = body["errorDetails"].as_str().unwrap();
    assert!(
        !details.to_lowercase().contains("pool"),
        "no internal detail: {details}"
    );
}

async fn rest_works_with_curl_as_the_readme_shows(backend: Backend) {
    let rest = setup(&backend, |_| {}).await;
    let url = format!("http://{}{PATH}", rest.app.http_addr);
    let app = &rest.app;
    let (user_key, secret) = (rest.user_key.clone(), rest.secret.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", &url])
            .args(["--data-urlencode", &format!("apiKey={KEY}")])
            .args(["--data-urlencode", "UID=u1"])
            .args(["--data-urlencode", "provider=twitter"])
            .args(["--data-urlencode", &format!("userKey={user_key}")])
            .args(["--data-urlencode", &format!("secret={secret}")])
            .args(["--data-urlencode", "httpStatusCodes=true"])
            .output()
    })
    .await
    .expect("join")
    .expect("curl runs (is it installed?)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let body: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(body["errorCode"], 0, "{body}");
    assert_eq!(body["removed"][0]["provider"], "twitter");
    assert_eq!(
        outbox_events(app).await[0].call_id,
        body["callId"].as_str().unwrap()
    );

    // The README's signed request: its Python snippet computes `sig`, curl sends it.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let snippet = readme
        .split_once("<<'PY'\n")
        .and_then(|(_, rest)| rest.split_once("\n   PY\n"))
        .map(|(code, _)| code)
        .expect("the README has a Python signing snippet");
    let script: String = snippet
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\"3_demo\"", &format!("\"{KEY}\""))
        .replace("\"42\"", "\"u1\"")
        .replace("\"facebook\"", "\"saml-okta\"");
    let url = format!("http://{}{PATH}", app.http_addr);
    let (user_key, secret) = (rest.user_key.clone(), rest.secret.clone());
    let output = tokio::task::spawn_blocking(move || {
        let signed = std::process::Command::new("python3")
            .args(["-c", &script, &url, &user_key, &secret])
            .output()
            .expect("python3 runs");
        assert!(
            signed.status.success(),
            "{}",
            String::from_utf8_lossy(&signed.stderr)
        );
        let body = String::from_utf8(signed.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned();
        std::process::Command::new("curl")
            .args([
                "-sS",
                &url,
                "-H",
                "content-type: application/x-www-form-urlencoded",
            ])
            .args(["--data", &body])
            .output()
    })
    .await
    .expect("join")
    .expect("curl runs");
    let body: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(body["errorCode"], 0, "{body}");
    assert_eq!(body["removed"][0]["provider"], "saml-okta");
}
