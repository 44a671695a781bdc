//! The browser SDK (issue 17): user tokens bound to one site and one uid
//! (minted over gRPC and by the CLI, expiring, revocable), CORS on the REST
//! endpoint for the site's `allowed_browser_origins`, the script at
//! `/sdk/connections.js`, and, in headless Chromium, a demo page of another
//! origin calling `connections.socialize.removeConnection`.

use std::time::{Duration, Instant};

use connections::proto::v1 as pb;
use serde_json::{Value, json};
use tonic::Code;

use crate::{
    browser::{Browser, PageServer},
    helpers::{Backend, TestApp, assert_refused, bearer},
    on_both_backends,
    remove_connection::outbox_events,
    rest::{Reply, form, send},
    security::cli,
};

on_both_backends!(
    browser_sdk_user_token_removes_its_own_connection_and_answers_the_user,
    browser_sdk_user_token_never_acts_on_another_uid_site_or_use_case,
    browser_sdk_user_tokens_expire_and_are_revoked_by_rpc_and_cli,
    browser_sdk_user_tokens_keep_open_mode_and_are_honoured_in_it,
    browser_sdk_cors_answers_only_the_sites_browser_origins,
    browser_sdk_script_is_served_with_cache_headers,
    browser_sdk_in_chromium_a_page_of_another_origin_removes_a_connection,
);

const KEY: &str = "3_shop";
const OTHER: &str = "3_elsewhere";
const PATH: &str = "/socialize.removeConnection";
const SHOP_ORIGIN: &str = "https://shop.example";

/// A server with two sites (KEY allows pages of SHOP_ORIGIN), users u1 and
/// u2 on KEY each with a password and facebook + google, and the site
/// backend's admin token (which ends open mode; lookups are not cached).
struct Shop {
    app: TestApp,
    admin_token: String,
}

impl Shop {
    async fn start(backend: &Backend, browser_origins: &[&str]) -> Self {
        let app = TestApp::spawn_with(backend, |s| {
            s.security.token_cache_ttl = Duration::ZERO;
        })
        .await;
        for (api_key, vhost, origins) in [(KEY, 17, browser_origins), (OTHER, 18, &[][..])] {
            app.admin()
                .upsert_site(pb::UpsertSiteRequest {
                    api_key: api_key.into(),
                    vhost,
                    name: api_key.into(),
                    unlink_action_enabled: false,
                    allowed_redirect_origins: vec![],
                    allowed_browser_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                })
                .await
                .expect("upsert site");
        }
        for (api_key, uid) in [(KEY, "u1"), (KEY, "u2"), (OTHER, "u1")] {
            app.create_account(api_key, uid, &[(&format!("{uid}@example.com"), true)])
                .await;
            for provider in ["facebook", "googleplus"] {
                app.link(
                    api_key,
                    uid,
                    provider,
                    "",
                    &format!("{provider}-{api_key}-{uid}"),
                    None,
                )
                .await;
            }
        }
        let admin_token = app
            .create_token(
                "shop-backend",
                &format!("{KEY},{OTHER}"),
                "admin,connections.read",
            )
            .await;
        Self { app, admin_token }
    }

    /// A user token from CreateUserToken.
    async fn user_token(&self, api_key: &str, uid: &str, ttl_seconds: i64) -> String {
        self.app
            .admin()
            .create_user_token(bearer(
                pb::CreateUserTokenRequest {
                    api_key: api_key.into(),
                    uid: uid.into(),
                    ttl_seconds,
                },
                &self.admin_token,
            ))
            .await
            .expect("create user token")
            .into_inner()
            .token
    }

    /// The providers of an account's active identities, read as the admin.
    async fn providers(&self, api_key: &str, uid: &str) -> Vec<String> {
        let account = self
            .app
            .connections()
            .get_account(bearer(
                pb::GetAccountRequest {
                    api_key: api_key.into(),
                    uid: uid.into(),
                },
                &self.admin_token,
            ))
            .await
            .expect("get account")
            .into_inner()
            .account
            .expect("account");
        account
            .identities
            .into_iter()
            .filter(|i| i.state == pb::IdentityState::Active as i32)
            .map(|i| i.provider)
            .collect()
    }

    /// `POST /socialize.removeConnection?apiKey=..` as the SDK sends it.
    async fn remove(&self, api_key: &str, token: &str, params: &[(&str, &str)]) -> Value {
        let authorization = format!("Bearer {token}");
        send(
            &self.app,
            "POST",
            &format!("{PATH}?apiKey={api_key}"),
            Some(("application/x-www-form-urlencoded", form(params))),
            &[("authorization", &authorization)],
        )
        .await
        .json()
    }
}

async fn browser_sdk_user_token_removes_its_own_connection_and_answers_the_user(backend: Backend) {
    let shop = Shop::start(&backend, &[SHOP_ORIGIN]).await;
    let created = shop
        .app
        .admin()
        .create_user_token(bearer(
            pb::CreateUserTokenRequest {
                api_key: KEY.into(),
                uid: "u1".into(),
                ttl_seconds: 0,
            },
            &shop.admin_token,
        ))
        .await
        .expect("create user token")
        .into_inner();
    assert!(created.token.starts_with("cnx_"));
    assert_eq!(created.call_id.len(), 32);
    // The default lifetime: 15 minutes.
    let expires_in =
        created.expires_at.expect("expires_at").seconds - chrono::Utc::now().timestamp();
    assert!((890..=900).contains(&expires_in), "{expires_in}");

    // No UID: the token's own account. The context comes back unchanged.
    let body = shop
        .remove(
            KEY,
            &created.token,
            &[
                ("provider", "facebook"),
                ("context", r#"{"page":"profile"}"#),
            ],
        )
        .await;
    assert_eq!(body["errorCode"], 0, "{body}");
    assert_eq!(body["context"], json!({"page": "profile"}));
    assert_eq!(body["removed"][0]["provider"], "facebook");
    assert_eq!(body["removed"][0]["providerLogoutRequested"], true);
    let user = &body["user"];
    assert_eq!(user["uid"], "u1");
    assert_eq!(user["apiKey"], KEY);
    assert_eq!(user["loginMethods"], 2);
    assert_eq!(user["loginIds"][0]["loginId"], "u1@example.com");
    let providers: Vec<&str> = user["identities"]
        .as_array()
        .expect("identities")
        .iter()
        .map(|i| i["provider"].as_str().expect("provider"))
        .collect();
    assert_eq!(providers, ["googleplus"]);
    // The provider session stays secret, and so does the token.
    let text = body.to_string();
    assert!(!text.contains("secret-token"), "{text}");
    assert!(!text.contains(&created.token[4..]), "{text}");
    assert_eq!(shop.providers(KEY, "u1").await, ["googleplus"]);

    // The event names the user token's caller.
    let events = outbox_events(&shop.app).await;
    let removed = events.last().expect("an event");
    assert_eq!(removed.uid, "u1");
    assert_eq!(removed.actor, "user:u1");

    // Reading its own account over gRPC is allowed too.
    let own = shop
        .app
        .connections()
        .get_account(bearer(
            pb::GetAccountRequest {
                api_key: KEY.into(),
                uid: "u1".into(),
            },
            &created.token,
        ))
        .await
        .expect("own account");
    assert_eq!(own.into_inner().account.expect("account").uid, "u1");
}

async fn browser_sdk_user_token_never_acts_on_another_uid_site_or_use_case(backend: Backend) {
    let shop = Shop::start(&backend, &[SHOP_ORIGIN]).await;
    let token = shop.user_token(KEY, "u1", 0).await;

    // REST: another uid of its site, and its own uid on another site.
    for (api_key, uid) in [(KEY, "u2"), (OTHER, "u1"), (KEY, "nobody")] {
        let body = shop
            .remove(api_key, &token, &[("UID", uid), ("provider", "facebook")])
            .await;
        assert_eq!(body["errorCode"], 403_007, "{api_key}/{uid}: {body}");
        assert_eq!(body["reason"], "PERMISSION_DENIED", "{body}");
        assert!(body.get("user").is_none(), "{body}");
    }
    assert_eq!(shop.providers(KEY, "u2").await, ["facebook", "googleplus"]);
    assert_eq!(
        shop.providers(OTHER, "u1").await,
        ["facebook", "googleplus"]
    );

    // gRPC: the same refusal, and nothing of the site-wide use cases.
    let mut connections = shop.app.connections();
    denied(
        connections
            .remove_connection(bearer(
                pb::RemoveConnectionRequest {
                    api_key: KEY.into(),
                    uid: "u2".into(),
                    provider: Some("facebook".into()),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    denied(
        connections
            .get_account(bearer(
                pb::GetAccountRequest {
                    api_key: KEY.into(),
                    uid: "u2".into(),
                },
                &token,
            ))
            .await,
    );
    denied(
        connections
            .link_connection(bearer(
                pb::LinkConnectionRequest {
                    api_key: KEY.into(),
                    uid: "u1".into(),
                    provider: "twitter".into(),
                    provider_uid: "tw-1".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    denied(
        connections
            .unlink_account(bearer(
                pb::UnlinkAccountRequest {
                    vhost: 17,
                    uid: 1,
                    redirect_url: "/done".into(),
                    sub_provider_name: "none".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    denied(
        shop.app
            .admin()
            .create_user_token(bearer(
                pb::CreateUserTokenRequest {
                    api_key: KEY.into(),
                    uid: "u2".into(),
                    ttl_seconds: 0,
                },
                &token,
            ))
            .await,
    );

    // Minting: a bounded lifetime, an existing site, within the admin's sites.
    let mut admin = shop.app.admin();
    let mint = |api_key: &str, ttl_seconds: i64, with: &str| {
        bearer(
            pb::CreateUserTokenRequest {
                api_key: api_key.into(),
                uid: "u1".into(),
                ttl_seconds,
            },
            with,
        )
    };
    assert_refused(
        admin
            .create_user_token(mint(KEY, 3601, &shop.admin_token))
            .await,
        Code::InvalidArgument,
        "INVALID_PARAMETER",
    );
    assert_refused(
        admin
            .create_user_token(mint(KEY, -5, &shop.admin_token))
            .await,
        Code::InvalidArgument,
        "INVALID_PARAMETER",
    );
    let narrow = shop.app.create_token("other-backend", OTHER, "admin").await;
    denied(admin.create_user_token(mint(KEY, 0, &narrow)).await);
    let everywhere = shop.app.create_token("ops", "*", "admin").await;
    assert_refused(
        admin
            .create_user_token(mint("3_missing", 0, &everywhere))
            .await,
        Code::NotFound,
        "SITE_NOT_FOUND",
    );
}

/// Asserts a gRPC refusal with PERMISSION_DENIED.
fn denied(result: Result<impl std::fmt::Debug, tonic::Status>) {
    assert_refused(result, Code::PermissionDenied, "PERMISSION_DENIED");
}

/// Polls REST removal with `token` until it is refused, within `deadline`;
/// returns the refusal.
async fn refused_within(shop: &Shop, token: &str, deadline: Duration) -> Value {
    let until = Instant::now() + deadline;
    loop {
        let body = shop
            .remove(KEY, token, &[("provider", "twitter"), ("dryRun", "true")])
            .await;
        if body["errorCode"] != 400_006 || Instant::now() > until {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser_sdk_user_tokens_expire_and_are_revoked_by_rpc_and_cli(backend: Backend) {
    let shop = Shop::start(&backend, &[SHOP_ORIGIN]).await;

    // A dry run that names a provider the user lacks answers NOT_CONNECTED
    // (400006) while the token works, and 403003 once it does not.
    let short = shop.user_token(KEY, "u1", 1).await;
    let body = refused_within(&shop, &short, Duration::from_secs(10)).await;
    assert_eq!(body["errorCode"], 403_003, "{body}");
    assert_eq!(body["reason"], "TOKEN_EXPIRED", "{body}");

    let token = shop.user_token(KEY, "u1", 0).await;
    let body = shop
        .remove(KEY, &token, &[("provider", "twitter"), ("dryRun", "true")])
        .await;
    assert_eq!(body["reason"], "NOT_CONNECTED", "{body}");
    let revoked = shop
        .app
        .admin()
        .revoke_user_tokens(bearer(
            pb::RevokeUserTokensRequest {
                api_key: KEY.into(),
                uid: "u1".into(),
            },
            &shop.admin_token,
        ))
        .await
        .expect("revoke")
        .into_inner();
    // The expired token had not been revoked either: it counts.
    assert_eq!(revoked.revoked, 2);
    let body = shop.remove(KEY, &token, &[("provider", "facebook")]).await;
    assert_eq!(body["errorCode"], 403_003, "{body}");
    assert_eq!(shop.providers(KEY, "u1").await, ["facebook", "googleplus"]);

    // The command line mints (printing the token only on stdout) and revokes.
    let created = cli(
        &[
            "user-token",
            "create",
            "--api-key",
            KEY,
            "--uid",
            "u2",
            "--ttl",
            "5m",
        ],
        &shop.app.database_url,
    );
    assert!(created.status.success(), "{created:?}");
    let cli_token = String::from_utf8(created.stdout).expect("UTF-8");
    let cli_token = cli_token.trim();
    let notes = String::from_utf8_lossy(&created.stderr);
    assert!(!notes.contains(cli_token), "{notes}");
    let body = shop
        .remove(
            KEY,
            cli_token,
            &[("provider", "twitter"), ("dryRun", "true")],
        )
        .await;
    assert_eq!(body["reason"], "NOT_CONNECTED", "{body}");
    let too_long = cli(
        &[
            "user-token",
            "create",
            "--api-key",
            KEY,
            "--uid",
            "u2",
            "--ttl",
            "2h",
        ],
        &shop.app.database_url,
    );
    assert!(!too_long.status.success());
    let revoked = cli(
        &["user-token", "revoke", "--api-key", KEY, "--uid", "u2"],
        &shop.app.database_url,
    );
    assert!(revoked.status.success(), "{revoked:?}");
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("revoked 1"));
    let body = shop
        .remove(
            KEY,
            cli_token,
            &[("provider", "twitter"), ("dryRun", "true")],
        )
        .await;
    assert_eq!(body["errorCode"], 403_003, "{body}");
}

async fn browser_sdk_user_tokens_keep_open_mode_and_are_honoured_in_it(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| {
        s.security.token_cache_ttl = Duration::ZERO;
    })
    .await;
    app.create_site(KEY, 17).await;
    for uid in ["u1", "u2"] {
        app.create_account(KEY, uid, &[(&format!("{uid}@example.com"), true)])
            .await;
        app.link(KEY, uid, "facebook", "", &format!("fb-{uid}"), None)
            .await;
    }
    // Minted anonymously in open mode, which it does not end.
    let token = app
        .admin()
        .create_user_token(pb::CreateUserTokenRequest {
            api_key: KEY.into(),
            uid: "u1".into(),
            ttl_seconds: 0,
        })
        .await
        .expect("create user token in open mode")
        .into_inner()
        .token;
    app.create_account(KEY, "u3", &[("u3@example.com", true)])
        .await;
    // Presented, it is honoured: its own account only, as its caller.
    denied(
        app.connections()
            .remove_connection(bearer(
                pb::RemoveConnectionRequest {
                    api_key: KEY.into(),
                    uid: "u2".into(),
                    provider: Some("facebook".into()),
                    ..Default::default()
                },
                &token,
            ))
            .await,
    );
    app.connections()
        .remove_connection(bearer(
            pb::RemoveConnectionRequest {
                api_key: KEY.into(),
                uid: "u1".into(),
                provider: Some("facebook".into()),
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("its own account");
    let events = outbox_events(&app).await;
    assert_eq!(events.last().expect("an event").actor, "user:u1");
}

/// A CORS request: `method` on the REST path with `Origin: origin`.
async fn cors(shop: &Shop, method: &str, api_key: &str, origin: &str) -> Reply {
    let mut headers = vec![("origin", origin)];
    if method == "OPTIONS" {
        headers.push(("access-control-request-method", "POST"));
        headers.push((
            "access-control-request-headers",
            "authorization,content-type",
        ));
    }
    send(
        &shop.app,
        method,
        &format!("{PATH}?apiKey={api_key}"),
        None,
        &headers,
    )
    .await
}

async fn browser_sdk_cors_answers_only_the_sites_browser_origins(backend: Backend) {
    // Origins are normalised when stored (case, default port).
    let shop = Shop::start(&backend, &["HTTPS://Shop.Example:443"]).await;
    let site = shop
        .app
        .admin()
        .get_site(bearer(
            pb::GetSiteRequest {
                api_key: KEY.into(),
            },
            &shop.admin_token,
        ))
        .await
        .expect("get site")
        .into_inner()
        .site
        .expect("site");
    assert_eq!(site.allowed_browser_origins, [SHOP_ORIGIN]);

    // Preflight from an allowed origin.
    let preflight = cors(&shop, "OPTIONS", KEY, SHOP_ORIGIN).await;
    assert_eq!(preflight.status, 204);
    let header = |reply: &Reply, name: &str| {
        reply
            .headers
            .get(name)
            .map(|v| v.to_str().expect("header").to_owned())
    };
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(SHOP_ORIGIN)
    );
    let allowed_headers =
        header(&preflight, "access-control-allow-headers").expect("allow-headers");
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );
    assert!(header(&preflight, "access-control-allow-methods").is_some_and(|m| m.contains("POST")),);
    assert!(header(&preflight, "access-control-allow-credentials").is_none());
    assert!(header(&preflight, "vary").is_some_and(|v| v.contains("Origin")));

    // Disallowed origins, the other site, an unknown site: no CORS header at all.
    for (api_key, origin) in [
        (KEY, "https://evil.example"),
        (KEY, "http://shop.example"),
        (KEY, "null"),
        (OTHER, SHOP_ORIGIN),
        ("3_missing", SHOP_ORIGIN),
    ] {
        for method in ["OPTIONS", "POST"] {
            let reply = cors(&shop, method, api_key, origin).await;
            for name in [
                "access-control-allow-origin",
                "access-control-allow-methods",
                "access-control-allow-headers",
            ] {
                assert!(
                    header(&reply, name).is_none(),
                    "{method} {api_key} {origin}: {name}"
                );
            }
            assert!(header(&reply, "vary").is_some_and(|v| v.contains("Origin")));
        }
    }

    // The actual call from the allowed origin carries the header, with the
    // call id readable by the page.
    let token = shop.user_token(KEY, "u1", 0).await;
    let authorization = format!("Bearer {token}");
    let reply = send(
        &shop.app,
        "POST",
        &format!("{PATH}?apiKey={KEY}"),
        Some((
            "application/x-www-form-urlencoded",
            form(&[("provider", "facebook")]),
        )),
        &[("origin", SHOP_ORIGIN), ("authorization", &authorization)],
    )
    .await;
    assert_eq!(reply.json()["errorCode"], 0, "{}", reply.text);
    assert_eq!(
        header(&reply, "access-control-allow-origin").as_deref(),
        Some(SHOP_ORIGIN)
    );
    assert_eq!(
        header(&reply, "access-control-expose-headers").as_deref(),
        Some("x-call-id")
    );

    // JSONP stays available for old pages (with a token in the header here).
    let reply = send(
        &shop.app,
        "GET",
        &format!(
            "{PATH}?{}",
            form(&[
                ("apiKey", KEY),
                ("provider", "googleplus"),
                ("dryRun", "true"),
                ("format", "jsonp"),
                ("callback", "page.done"),
            ])
        ),
        None,
        &[("authorization", &authorization)],
    )
    .await;
    assert!(reply.text.starts_with("page.done({"), "{}", reply.text);

    // Bad browser origins are refused by field.
    let refused = shop
        .app
        .admin()
        .upsert_site(bearer(
            pb::UpsertSiteRequest {
                api_key: KEY.into(),
                vhost: 17,
                name: KEY.into(),
                unlink_action_enabled: false,
                allowed_redirect_origins: vec![],
                allowed_browser_origins: vec!["https://*.example".into()],
            },
            &shop.admin_token,
        ))
        .await;
    let status = assert_refused(refused, Code::InvalidArgument, "INVALID_PARAMETER");
    assert_eq!(
        crate::helpers::bad_fields(&status),
        ["allowed_browser_origins"]
    );
}

async fn browser_sdk_script_is_served_with_cache_headers(backend: Backend) {
    // Authenticated mode: the script is still open to every page.
    let shop = Shop::start(&backend, &[SHOP_ORIGIN]).await;
    let reply = send(
        &shop.app,
        "GET",
        &format!("/sdk/connections.js?apiKey={KEY}"),
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    let built = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/dist/connections.js"),
    )
    .expect("the built SDK");
    assert_eq!(reply.text, built);
    assert!(reply.text.contains("removeConnection"));
    let header = |name: &str| {
        reply
            .headers
            .get(name)
            .map(|v| v.to_str().expect("header").to_owned())
            .unwrap_or_default()
    };
    assert!(header("content-type").starts_with("application/javascript"));
    assert!(header("cache-control").contains("max-age="));
    let etag = header("etag");
    assert!(etag.starts_with('"'), "{etag}");
    let again = send(
        &shop.app,
        "GET",
        "/sdk/connections.js",
        None,
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(again.status, 304);
    assert!(again.text.is_empty());
}

/// The demo page: loads the SDK from the API's origin, calls
/// removeConnection with a callback and a context object, and records the
/// callback's response and the onConnectionRemoved events in `window.seen`.
fn demo_page(api: &str, token: &str, uid: Option<&str>) -> String {
    let uid = uid.map_or_else(String::new, |uid| format!("UID: {},", json!(uid)));
    format!(
        r#"<!doctype html>
<title>Shop profile</title>
<script src="{api}/sdk/connections.js?apiKey={KEY}"></script>
<script>
  window.seen = {{ events: [], response: null }};
  connections.setUserToken({token});
  connections.socialize.addEventHandlers({{
    onConnectionRemoved: function (event) {{ window.seen.events.push(event); }}
  }});
  var context = {{ widget: 'profile', attempt: 1 }};
  connections.socialize.removeConnection({{
    {uid}
    provider: 'facebook',
    cid: 'profile-page',
    context: context,
    callback: function (response) {{
      window.seen.sameContext = response.context === context;
      window.seen.response = response;
    }}
  }});
</script>
<p id=message>demo</p>
"#,
        token = json!(token),
    )
}

async fn browser_sdk_in_chromium_a_page_of_another_origin_removes_a_connection(backend: Backend) {
    let Some(browser) = Browser::find("browser_sdk_in_chromium_a_page_of_another_origin") else {
        return;
    };
    // The page server's port (its origin) is known once it runs: the site
    // allows it after that.
    let shop = Shop::start(&backend, &[]).await;
    let api = format!("http://{}", shop.app.http_addr);
    let own = shop.user_token(KEY, "u1", 0).await;
    let pages = PageServer::start().await;
    pages.page("/profile", demo_page(&api, &own, None));
    pages.page("/someone-else", demo_page(&api, &own, Some("u2")));
    // A second page server: its own origin (another port) is not allowed.
    let stranger = PageServer::start().await;
    stranger.page("/profile", demo_page(&api, &own, None));
    // The demo pages' origin is allowed; the stranger's (another port) is not.
    shop.app
        .admin()
        .upsert_site(bearer(
            pb::UpsertSiteRequest {
                api_key: KEY.into(),
                vhost: 17,
                name: KEY.into(),
                unlink_action_enabled: false,
                allowed_redirect_origins: vec![],
                allowed_browser_origins: vec![pages.origin()],
            },
            &shop.admin_token,
        ))
        .await
        .expect("allow the page's origin");

    let result = browser
        .run(
            "connections_sdk.js",
            &json!({
                "own": pages.url("/profile"),
                "other_uid": pages.url("/someone-else"),
                "stranger": stranger.url("/profile"),
            }),
        )
        .await;

    let own = &result["own"];
    let response = &own["response"];
    assert_eq!(response["errorCode"], 0, "{result}");
    assert_eq!(response["operation"], "socialize.removeConnection");
    assert_eq!(
        response["context"],
        json!({"widget": "profile", "attempt": 1})
    );
    assert_eq!(own["sameContext"], true, "{result}");
    assert_eq!(response["user"]["uid"], "u1");
    assert_eq!(response["callId"].as_str().map(str::len), Some(32));
    let events = own["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{result}");
    assert_eq!(events[0]["eventName"], "connectionRemoved");
    assert_eq!(events[0]["provider"], "facebook");
    assert_eq!(events[0]["providerLogoutRequested"], true);
    assert_eq!(shop.providers(KEY, "u1").await, ["googleplus"]);

    let other = &result["other_uid"];
    assert_eq!(other["response"]["errorCode"], 403_007, "{result}");
    assert_eq!(other["events"], json!([]));
    assert_eq!(shop.providers(KEY, "u2").await, ["facebook", "googleplus"]);

    let stranger = &result["stranger"];
    assert_eq!(stranger["response"]["errorCode"], 500_026, "{result}");
    assert_eq!(stranger["sameContext"], true, "{result}");
    assert_eq!(stranger["events"], json!([]));
}
