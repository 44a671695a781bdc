//! The unlink action link, `GET /action/v2/unlinkaccount` (SPEC section
//! 12), over plain HTTP/1.1 against a real server (and once in headless
//! Chromium), on SQLite and PostgreSQL. Links are minted by the
//! `SignUnlinkLink` RPC, by the CLI, or signed here by an implementation of
//! the README's signing rule written for the tests, with the secret
//! `RotateActionSecret` returned.

use std::collections::BTreeSet;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use connections::{config::SessionKey, domain::EventSource, proto::v1 as pb};
use tonic::Code;

use crate::{
    browser::{Browser, PageServer},
    helpers::{Backend, TestApp, assert_refused},
    on_both_backends,
    remove_connection::outbox_events,
    rest::{Reply, enc, send},
    unlink_account::{identities_of, pairs as set},
};

on_both_backends!(
    action_link_minted_by_the_rpc_unlinks_once_and_every_click_gets_the_first_outcome,
    action_link_signed_by_the_site_follows_the_documented_rule_for_janrain_and_others,
    action_link_refuses_unsigned_forged_and_altered_links_with_a_page,
    action_link_refuses_expired_links_and_links_that_live_too_long,
    action_link_never_redirects_off_the_site,
    action_link_applies_the_unlinkaccount_rules_and_redirects_refusals,
    action_link_head_and_other_methods_never_act,
    action_link_minted_by_the_cli_works_and_minting_needs_a_session_key,
    action_link_browser_clicks_a_signed_link_and_lands_with_status_ok,
);

const KEY: &str = "3_links";
const VHOST: i64 = 77;
const UID: &str = "42";
const PATH: &str = "/action/v2/unlinkaccount";
const SESSION_KEY: [u8; 32] = [7; 32];

/// A server that can seal action secrets, a site with the action enabled,
/// and account 42 with a password, facebook, janrain (yahoo and gigya),
/// sheridan and gigya.
async fn setup(backend: &Backend) -> TestApp {
    setup_with_origins(backend, &["https://www.example.com"]).await
}

async fn setup_with_origins(backend: &Backend, origins: &[&str]) -> TestApp {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.session_key = Some(SessionKey(SESSION_KEY));
    })
    .await;
    upsert_site(&app, true, origins).await;
    app.create_account(KEY, UID, &[("a@x.com", true)]).await;
    app.link(KEY, UID, "facebook", "", "fb1", None).await;
    app.link(KEY, UID, "janrain", "yahoo", "jr1", None).await;
    app.link(KEY, UID, "janrain", "gigya", "jr2", None).await;
    app.link(KEY, UID, "sheridan", "", "sh1", None).await;
    app.link(KEY, UID, "gigya", "", "gg1", None).await;
    app
}

async fn upsert_site(app: &TestApp, enabled: bool, origins: &[&str]) {
    app.admin()
        .upsert_site(pb::UpsertSiteRequest {
            api_key: KEY.into(),
            vhost: VHOST,
            name: "links".into(),
            unlink_action_enabled: enabled,
            allowed_redirect_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            allowed_browser_origins: vec![],
        })
        .await
        .expect("upsert site");
}

async fn identities(app: &TestApp) -> BTreeSet<(String, String)> {
    identities_of(app, KEY, UID).await
}

fn all_identities() -> BTreeSet<(String, String)> {
    set(&[
        ("facebook", ""),
        ("janrain", "yahoo"),
        ("janrain", "gigya"),
        ("sheridan", ""),
        ("gigya", ""),
    ])
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn rotate_secret(app: &TestApp) -> Vec<u8> {
    let secret = app
        .admin()
        .rotate_action_secret(pb::RotateActionSecretRequest {
            api_key: KEY.into(),
        })
        .await
        .expect("rotate action secret")
        .into_inner()
        .action_secret;
    URL_SAFE_NO_PAD
        .decode(&secret)
        .expect("the secret is base64url")
}

/// The README's rule, written here: every parameter but `sig` as
/// `enc(name)=enc(value)`, sorted, joined by `&`; `sig` =
/// base64url-no-padding(HMAC-SHA256(secret, that)). Returns the query.
fn signed_query(secret: &[u8], params: &[(&str, &str)]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut pairs: Vec<(String, String)> = params.iter().map(|(k, v)| (enc(k), enc(v))).collect();
    pairs.sort();
    let canonical = pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("hmac key");
    mac.update(canonical.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{canonical}&sig={sig}")
}

/// The parameters of a link for account 42, valid for ten minutes.
fn link_params<'a>(
    redirect: &'a str,
    provider: Option<&'a str>,
    sub: &'a str,
    expires: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![
        ("vhost", "77"),
        ("uid", UID),
        ("redirectUrl", redirect),
        ("sub_provider_name", sub),
        ("expires", expires),
    ];
    if let Some(provider) = provider {
        params.push(("external_id_provider_name", provider));
    }
    params
}

async fn get(app: &TestApp, query: &str) -> Reply {
    send(app, "GET", &format!("{PATH}?{query}"), None, &[]).await
}

fn location(reply: &Reply) -> &str {
    assert_eq!(reply.status, 302, "{reply:?}");
    reply
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no Location in {reply:?}"))
}

/// Every response of the route carries these.
fn assert_protected(reply: &Reply) {
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no {name} in {reply:?}"))
            .to_owned()
    };
    assert_eq!(header("cache-control"), "no-store");
    assert_eq!(header("referrer-policy"), "no-referrer");
    assert_eq!(header("x-content-type-options"), "nosniff");
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(reply.headers.get("x-call-id").is_some(), "{reply:?}");
}

/// A static error page: its status, no redirect, none of `inputs` repeated.
fn assert_page(reply: &Reply, status: u16, inputs: &[&str]) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert!(reply.headers.get("location").is_none(), "{reply:?}");
    assert_protected(reply);
    assert!(
        reply
            .headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/html")),
        "{reply:?}"
    );
    assert!(reply.text.contains("<p id=\"message\">"), "{}", reply.text);
    assert!(!reply.text.contains("<script"), "{}", reply.text);
    for input in inputs {
        assert!(
            !reply.text.contains(input),
            "the page repeats {input:?}: {}",
            reply.text
        );
    }
}

async fn sign_by_rpc(app: &TestApp, request: pb::SignUnlinkLinkRequest) -> String {
    app.admin()
        .sign_unlink_link(request)
        .await
        .expect("sign unlink link")
        .into_inner()
        .link
}

fn sign_request(redirect: &str, provider: Option<&str>, sub: &str) -> pb::SignUnlinkLinkRequest {
    pb::SignUnlinkLinkRequest {
        vhost: VHOST,
        uid: 42,
        redirect_url: redirect.into(),
        external_id_provider_name: provider.map(Into::into),
        sub_provider_name: sub.into(),
        ttl_seconds: 0,
        base_url: String::new(),
    }
}

/// The path and query of a minted link (the tests send them to their own server).
fn path_and_query(link: &str) -> &str {
    let at = link
        .find(PATH)
        .unwrap_or_else(|| panic!("no {PATH} in {link}"));
    &link[at..]
}

async fn follow(app: &TestApp, link: &str) -> Reply {
    send(app, "GET", path_and_query(link), None, &[]).await
}

async fn action_link_minted_by_the_rpc_unlinks_once_and_every_click_gets_the_first_outcome(
    backend: Backend,
) {
    let app = setup(&backend).await;
    let mut request = sign_request("/userprofile", Some("sheridan"), "none");
    request.base_url = format!("http://{}/", app.http_addr);
    let response = app
        .admin()
        .sign_unlink_link(request)
        .await
        .expect("sign")
        .into_inner();
    let link = response.link;
    assert!(
        link.starts_with(&format!("http://{}{PATH}?", app.http_addr)),
        "{link}"
    );
    assert!(link.contains("&sig="), "{link}");
    let expires_at = response.expires_at.expect("expires_at").seconds;
    assert!(
        expires_at > now() && expires_at <= now() + 900,
        "{expires_at}"
    );
    assert!(link.contains(&format!("expires={expires_at}")), "{link}");

    // Eight clicks at once, on two replicas of one database: one acts.
    let replica = TestApp::spawn_on(&app.database_url, |settings| {
        settings.session_key = Some(SessionKey(SESSION_KEY));
    })
    .await;
    let clicks = (0..8).map(|i| follow(if i % 2 == 0 { &app } else { &replica }, &link));
    let replies = futures::future::join_all(clicks).await;
    let mut call_ids = BTreeSet::new();
    for reply in &replies {
        assert_eq!(location(reply), "/userprofile?status=ok");
        assert_protected(reply);
        call_ids.insert(
            reply.headers["x-call-id"]
                .to_str()
                .expect("call id")
                .to_owned(),
        );
    }
    let mut expected = all_identities();
    expected.remove(&("sheridan".to_owned(), String::new()));
    assert_eq!(identities(&app).await, expected);
    let events = outbox_events(&app).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].source, EventSource::UnlinkAccount);
    assert!(call_ids.contains(&events[0].call_id), "{events:?}");
    assert_eq!(events[0].actor, "action-link");
    assert_eq!(events[0].provider, "sheridan");
    assert_eq!(events[0].uid, UID);

    // Later clicks on either replica: the same outcome, no second event.
    for server in [&app, &replica] {
        let again = follow(server, &link).await;
        assert_eq!(location(&again), "/userprofile?status=ok");
    }
    assert_eq!(outbox_events(&app).await.len(), 1);
    replica.stop().await;

    // Used links are forgotten once expired; other idempotency records stay.
    app.connections()
        .unlink_account(pb::UnlinkAccountRequest {
            vhost: VHOST,
            uid: 42,
            redirect_url: "/x".into(),
            external_id_provider_name: Some("gigya".into()),
            sub_provider_name: "none".into(),
            request_id: "r1".into(),
            dry_run: false,
        })
        .await
        .expect("unlink with a request id");
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(app.repo.prune_used_links(later).await.expect("prune"), 1);
    assert_eq!(app.repo.prune_used_links(later).await.expect("prune"), 0);
}

async fn action_link_signed_by_the_site_follows_the_documented_rule_for_janrain_and_others(
    backend: Backend,
) {
    let app = setup(&backend).await;
    let secret = rotate_secret(&app).await;
    let expires = (now() + 600).to_string();

    // One janrain sub-provider; the redirect keeps its query and fragment.
    let one = link_params("/profile?tab=1#links", Some("janrain"), "yahoo", &expires);
    let reply = get(&app, &signed_query(&secret, &one)).await;
    assert_eq!(location(&reply), "/profile?tab=1&status=ok#links");
    let mut expected = all_identities();
    expected.remove(&("janrain".to_owned(), "yahoo".to_owned()));
    assert_eq!(identities(&app).await, expected);

    // Every janrain identity with `all`, to an allowed absolute URL.
    let all = link_params(
        "https://www.example.com/done",
        Some("janrain"),
        "all",
        &expires,
    );
    let reply = get(&app, &signed_query(&secret, &all)).await;
    assert_eq!(location(&reply), "https://www.example.com/done?status=ok");
    expected.remove(&("janrain".to_owned(), "gigya".to_owned()));
    assert_eq!(identities(&app).await, expected);

    // No provider and `none`: every external-id identity (facebook stays).
    let every = link_params("/back", None, "none", &expires);
    let reply = get(&app, &signed_query(&secret, &every)).await;
    assert_eq!(location(&reply), "/back?status=ok");
    assert_eq!(identities(&app).await, set(&[("facebook", "")]));

    let events = outbox_events(&app).await;
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.source == EventSource::UnlinkAccount && e.actor == "action-link")
    );

    // Rotation: links signed with the old secret stop working.
    let old = signed_query(&secret, &link_params("/again", None, "none", &expires));
    let _new = rotate_secret(&app).await;
    let reply = get(&app, &old).await;
    assert_page(&reply, 403, &["/again"]);
}

async fn action_link_refuses_unsigned_forged_and_altered_links_with_a_page(backend: Backend) {
    let app = setup(&backend).await;
    let secret = rotate_secret(&app).await;
    let expires = (now() + 600).to_string();
    let params = link_params("/userprofile", Some("janrain"), "all", &expires);
    let valid = signed_query(&secret, &params);
    let sig = valid.rsplit_once("&sig=").expect("sig").1.to_owned();

    // The seed's own link, unsigned.
    let mut refused = vec![
        "vhost=77&uid=42&sub_provider_name=none&redirectUrl=/userprofile".to_owned(),
        // Signed but without expires... and with a signature of something else.
        format!("vhost=77&uid=42&sub_provider_name=none&redirectUrl=%2Fuserprofile&sig={sig}"),
        // Forged: signed with another secret.
        signed_query(b"not the site's secret", &params),
        // Not base64url, empty, padded.
        valid.replace(&format!("sig={sig}"), "sig=%2B%2F%3D"),
        valid.replace(&format!("sig={sig}"), "sig="),
        valid.replace(&format!("sig={sig}"), &format!("sig={sig}%3D")),
        // An unknown site.
        valid.replace("vhost=77", "vhost=78"),
        // A parameter added.
        format!("{valid}&extra=1"),
    ];
    // Each parameter altered.
    for (name, altered) in [
        ("vhost", "0077"),
        ("uid", "43"),
        ("redirectUrl", "/elsewhere"),
        ("sub_provider_name", "yahoo"),
        ("external_id_provider_name", "gigya"),
        ("expires", "9999999999"),
    ] {
        let changed: Vec<(&str, &str)> = params
            .iter()
            .map(|(k, v)| if *k == name { (*k, altered) } else { (*k, *v) })
            .collect();
        let forged = signed_query(&secret, &changed);
        let (query, _) = forged.rsplit_once("&sig=").expect("sig");
        refused.push(format!("{query}&sig={sig}"));
    }
    for query in &refused {
        let reply = get(&app, query).await;
        assert_eq!(reply.status, 403, "{query}: {reply:?}");
        assert_page(&reply, 403, &["/userprofile", "/elsewhere", "extra"]);
        assert!(reply.text.contains("not valid"), "{query}: {}", reply.text);
    }
    assert_eq!(identities(&app).await, all_identities());
    assert!(outbox_events(&app).await.is_empty());

    // Broken query strings and a missing or bad vhost: 400 pages.
    for query in [
        "vhost=%ZZ",
        "vhost=%C3%28",
        "uid=42",
        "vhost=qzxv&uid=42",
        "vhost=-1",
        "vhost=123456789012",
        "vhost=77&vhost=77",
        &format!("{valid}&sig=again"),
        &format!("{valid}&uid=43"),
    ] {
        let reply = get(&app, query).await;
        assert_page(&reply, 400, &["qzxv", "again", "%ZZ"]);
    }
    // The valid link still works after all that.
    assert_eq!(location(&get(&app, &valid).await), "/userprofile?status=ok");
}

async fn action_link_refuses_expired_links_and_links_that_live_too_long(backend: Backend) {
    let app = setup(&backend).await;
    let secret = rotate_secret(&app).await;
    let past = (now() - 5).to_string();
    let reply = get(
        &app,
        &signed_query(&secret, &link_params("/back", None, "none", &past)),
    )
    .await;
    assert_eq!(location(&reply), "/back?status=error&reason=LINK_EXPIRED");
    assert_protected(&reply);

    let far = (now() + 3600).to_string();
    let reply = get(
        &app,
        &signed_query(&secret, &link_params("/back", None, "none", &far)),
    )
    .await;
    assert_eq!(
        location(&reply),
        "/back?status=error&reason=LINK_EXPIRY_TOO_FAR"
    );

    let nonsense = signed_query(&secret, &link_params("/back", None, "none", "soon"));
    assert_eq!(
        location(&get(&app, &nonsense).await),
        "/back?status=error&reason=INVALID_PARAMETER"
    );

    assert_eq!(identities(&app).await, all_identities());
    assert!(outbox_events(&app).await.is_empty());

    // The RPC mints at most 15 minutes.
    for ttl in [-1, 901, 3600] {
        let mut request = sign_request("/back", None, "none");
        request.ttl_seconds = ttl;
        let status = assert_refused(
            app.admin().sign_unlink_link(request).await,
            Code::InvalidArgument,
            "INVALID_PARAMETER",
        );
        assert!(status.message().contains("ttl_seconds"), "{status:?}");
    }
    let mut short = sign_request("/back", None, "none");
    short.ttl_seconds = 60;
    let link = sign_by_rpc(&app, short).await;
    let expires: i64 = link
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("expires="))
        .and_then(|v| v.parse().ok())
        .expect("expires");
    assert!(expires <= now() + 60, "{link}");
}

async fn action_link_never_redirects_off_the_site(backend: Backend) {
    let app = setup(&backend).await;
    let secret = rotate_secret(&app).await;
    let expires = (now() + 600).to_string();
    let long = format!("/{}", "q".repeat(200));
    let hostile = [
        "//evil.example",
        "//evil.example/path",
        "https://evil.example",
        "https://www.example.com.evil.example/",
        "https://www.example.com@evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "javascript:alert(1)",
        "JaVaScRiPt:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "%2F%2Fevil.example",
        "%252F%252Fevil.example",
        "/%2F/evil.example/../x",
        "/\t/evil.example",
        "/a\r\nLocation: https://evil.example",
        "/a\nb",
        "http://www.example.com/",
        "evil.example",
        long.as_str(),
    ];
    for redirect in hostile {
        let params = link_params(redirect, None, "none", &expires);
        let reply = get(&app, &signed_query(&secret, &params)).await;
        // `/%2F/...` is a path on the site: the only safe one here.
        if redirect.starts_with("/%2F") {
            assert_eq!(location(&reply), format!("{redirect}?status=ok"));
            continue;
        }
        assert_page(&reply, 400, &["evil", "alert", "qqqq"]);
        assert!(
            reply.text.contains("does not allow") || reply.text.contains("malformed"),
            "{redirect:?}: {}",
            reply.text
        );
        // The RPC does not mint such a link either.
        let result = app
            .admin()
            .sign_unlink_link(sign_request(redirect, None, "none"))
            .await;
        let status = result.expect_err(redirect);
        assert_eq!(status.code(), Code::InvalidArgument, "{redirect:?}");
    }
    // Only the one safe path acted.
    assert_eq!(identities(&app).await, set(&[("facebook", "")]));
    assert_eq!(outbox_events(&app).await.len(), 4);
}

async fn action_link_applies_the_unlinkaccount_rules_and_redirects_refusals(backend: Backend) {
    let app = setup(&backend).await;
    let secret = rotate_secret(&app).await;
    let expires = (now() + 600).to_string();
    let error = |reason: &str| format!("/back?status=error&reason={reason}");
    for (params, reason) in [
        (
            link_params("/back", None, "all", &expires),
            "INVALID_PARAMETER",
        ),
        (
            link_params("/back", None, "", &expires),
            "MISSING_PARAMETER",
        ),
        (
            link_params("/back", Some("sheridan"), "all", &expires),
            "INVALID_PARAMETER",
        ),
        (
            link_params("/back", Some("facebook"), "none", &expires),
            "UNKNOWN_PROVIDER",
        ),
        (
            link_params("/back", Some("janrain"), "facebook", &expires),
            "NOT_CONNECTED",
        ),
        (
            link_params("/back", Some("janrain"), &"x".repeat(51), &expires),
            "INVALID_PARAMETER",
        ),
    ] {
        let reply = get(&app, &signed_query(&secret, &params)).await;
        assert_eq!(location(&reply), error(reason), "{params:?}");
    }
    for (uid, reason) in [
        ("abc", "INVALID_PARAMETER"),
        ("", "MISSING_PARAMETER"),
        ("123456789012", "INVALID_PARAMETER"),
        ("43", "ACCOUNT_NOT_FOUND"),
    ] {
        let mut params = link_params("/back", None, "none", &expires);
        params[1] = ("uid", uid);
        let reply = get(&app, &signed_query(&secret, &params)).await;
        assert_eq!(location(&reply), error(reason), "uid {uid:?}");
    }

    // A site with the action switched off.
    upsert_site(&app, false, &["https://www.example.com"]).await;
    let params = link_params("/back", None, "none", &expires);
    let reply = get(&app, &signed_query(&secret, &params)).await;
    assert_eq!(location(&reply), error("ACTION_DISABLED"));
    assert_refused(
        app.admin()
            .sign_unlink_link(sign_request("/back", None, "none"))
            .await,
        Code::PermissionDenied,
        "ACTION_DISABLED",
    );
    assert_eq!(identities(&app).await, all_identities());
    assert!(outbox_events(&app).await.is_empty());

    // Refused clicks did not use the link up: switched on, it acts once.
    upsert_site(&app, true, &["https://www.example.com"]).await;
    let reply = get(&app, &signed_query(&secret, &params)).await;
    assert_eq!(location(&reply), "/back?status=ok");
    assert_eq!(identities(&app).await, set(&[("facebook", "")]));
}

async fn action_link_head_and_other_methods_never_act(backend: Backend) {
    let app = setup(&backend).await;
    let link = sign_by_rpc(&app, sign_request("/back", None, "none")).await;
    let target = path_and_query(&link);
    let head = send(&app, "HEAD", target, None, &[]).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.text.is_empty());
    assert!(head.headers.get("location").is_none());
    assert_protected(&head);
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let reply = send(&app, method, target, None, &[]).await;
        assert_page(&reply, 405, &["/back"]);
        assert_eq!(reply.headers["allow"], "GET, HEAD", "{method}");
    }
    let form = send(
        &app,
        "POST",
        PATH,
        Some((
            "application/x-www-form-urlencoded",
            target.split_once('?').expect("query").1.to_owned(),
        )),
        &[],
    )
    .await;
    assert_eq!(form.status, 405);
    assert_eq!(identities(&app).await, all_identities());
    assert!(outbox_events(&app).await.is_empty());
    // The link was not used up by any of them.
    assert_eq!(location(&follow(&app, &link).await), "/back?status=ok");
    assert_eq!(outbox_events(&app).await.len(), 4);
}

async fn action_link_minted_by_the_cli_works_and_minting_needs_a_session_key(backend: Backend) {
    let app = setup(&backend).await;
    let key = base64::engine::general_purpose::STANDARD.encode(SESSION_KEY);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_connections"))
        .args([
            "action-link",
            "--database-url",
            &app.database_url,
            "--vhost",
            "77",
            "--uid",
            "42",
            "--redirect-url",
            "/done",
            "--external-id-provider-name",
            "gigya",
            "--ttl-seconds",
            "120",
            "--base-url",
            "https://accounts.example.com/gw",
        ])
        .env("CONNECTIONS_SESSION_KEY", &key)
        .env_remove("CONNECTIONS_PUBLIC_BASE_URL")
        .output()
        .expect("run connections action-link");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let link = stdout.trim();
    assert!(
        link.starts_with(&format!("https://accounts.example.com/gw{PATH}?")),
        "{link}"
    );
    assert!(stderr.contains("acts once"), "{stderr}");
    assert!(!stderr.contains(&key) && !stdout.contains(&key));
    assert_eq!(location(&follow(&app, link).await), "/done?status=ok");
    let mut expected = all_identities();
    expected.remove(&("gigya".to_owned(), String::new()));
    assert_eq!(identities(&app).await, expected);

    // Without --session-key a server cannot seal a secret: no links.
    let plain = TestApp::spawn(&backend).await;
    plain.create_site(KEY, VHOST).await;
    assert_refused(
        plain
            .admin()
            .rotate_action_secret(pb::RotateActionSecretRequest {
                api_key: KEY.into(),
            })
            .await,
        Code::FailedPrecondition,
        "NOT_CONFIGURED",
    );
    assert_refused(
        plain
            .admin()
            .sign_unlink_link(sign_request("/back", None, "none"))
            .await,
        Code::FailedPrecondition,
        "NOT_CONFIGURED",
    );
    // And a site without a secret takes no link.
    let reply = get(
        &plain,
        &signed_query(
            b"guess",
            &link_params("/back", None, "none", &(now() + 60).to_string()),
        ),
    )
    .await;
    assert_page(&reply, 403, &["/back"]);
}

/// The whole journey in a real browser: the site's page (served by the
/// test) shows a minted link; Chromium clicks it and lands back on the
/// site with `status=ok`; the identity is gone.
async fn action_link_browser_clicks_a_signed_link_and_lands_with_status_ok(backend: Backend) {
    let Some(browser) =
        Browser::find("action_link_browser_clicks_a_signed_link_and_lands_with_status_ok")
    else {
        return;
    };
    let site = PageServer::start().await;
    let app = setup_with_origins(&backend, &[&site.origin()]).await;
    let mut request = sign_request(&site.url("/profile"), Some("sheridan"), "none");
    request.base_url = format!("http://{}", app.http_addr);
    let link = sign_by_rpc(&app, request).await;
    let attribute = link.replace('&', "&amp;");
    site.page(
        "/demo",
        format!(
            "<!doctype html><title>Demo site</title>\
             <p id=message>Your connected accounts</p>\
             <a id=unlink href=\"{attribute}\">Unlink Sheridan</a>"
        ),
    );
    site.page(
        "/profile",
        "<!doctype html><title>Profile</title><p id=message>Back on the site</p>",
    );
    let landed = browser
        .run(
            "click_link.js",
            &serde_json::json!({
                "url": site.url("/demo"),
                "selector": "#unlink",
                "lands_on": site.url("/profile"),
            }),
        )
        .await;
    assert_eq!(landed["url"], format!("{}?status=ok", site.url("/profile")));
    assert_eq!(landed["message"], "Back on the site");
    let mut expected = all_identities();
    expected.remove(&("sheridan".to_owned(), String::new()));
    assert_eq!(identities(&app).await, expected);
    let events = outbox_events(&app).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, EventSource::UnlinkAccount);
}
