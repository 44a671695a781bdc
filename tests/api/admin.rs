use connections::proto::v1 as pb;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bad_fields},
    on_both_backends,
};

on_both_backends!(
    upsert_site_creates_then_updates,
    upsert_site_refuses_a_vhost_of_another_site,
    upsert_site_validates_every_field,
    get_site_of_an_unknown_key_is_site_not_found,
    upsert_account_replaces_login_ids,
    upsert_account_refuses_a_login_id_of_another_account,
    upsert_account_keeps_login_ids_that_identities_brought,
    upsert_account_on_an_unknown_site_is_site_not_found,
);

fn site_request(api_key: &str, vhost: i64) -> pb::UpsertSiteRequest {
    pb::UpsertSiteRequest {
        api_key: api_key.into(),
        vhost,
        name: "Demo".into(),
        unlink_action_enabled: false,
        allowed_redirect_origins: vec![],
        allowed_browser_origins: vec![],
    }
}

async fn upsert_site_creates_then_updates(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let first = app
        .admin()
        .upsert_site(site_request("3_a", 7))
        .await
        .unwrap()
        .into_inner();
    assert!(first.created);
    let site = first.site.unwrap();
    assert!(!site.unlink_action_enabled);

    let mut change = site_request("3_a", 8);
    change.unlink_action_enabled = true;
    change.allowed_redirect_origins = vec![
        "HTTPS://Example.com:443".into(),
        "http://localhost:8080".into(),
    ];
    let second = app.admin().upsert_site(change).await.unwrap().into_inner();
    assert!(!second.created);

    let read = app
        .admin()
        .get_site(pb::GetSiteRequest {
            api_key: "3_a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .site
        .unwrap();
    assert_eq!(read.vhost, 8);
    assert!(read.unlink_action_enabled);
    assert_eq!(
        read.allowed_redirect_origins,
        ["http://localhost:8080", "https://example.com"]
    );
}

async fn upsert_site_refuses_a_vhost_of_another_site(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.create_site("3_a", 7).await;
    let status = assert_refused(
        app.admin().upsert_site(site_request("3_b", 7)).await,
        Code::AlreadyExists,
        "VHOST_IN_USE",
    );
    assert_eq!(bad_fields(&status), ["vhost"]);
    // Nothing was created.
    assert_refused(
        app.admin()
            .get_site(pb::GetSiteRequest {
                api_key: "3_b".into(),
            })
            .await,
        Code::NotFound,
        "SITE_NOT_FOUND",
    );
}

async fn upsert_site_validates_every_field(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let cases = [
        (site_request("", 1), "MISSING_PARAMETER", "api_key"),
        (site_request("a b", 1), "INVALID_PARAMETER", "api_key"),
        (site_request("3_a", 0), "MISSING_PARAMETER", "vhost"),
        (site_request("3_a", -1), "INVALID_PARAMETER", "vhost"),
        (
            site_request("3_a", 100_000_000_000),
            "INVALID_PARAMETER",
            "vhost",
        ),
        (
            pb::UpsertSiteRequest {
                allowed_redirect_origins: vec!["https://example.com/path".into()],
                allowed_browser_origins: vec![],
                ..site_request("3_a", 1)
            },
            "INVALID_PARAMETER",
            "allowed_redirect_origins",
        ),
        (
            pb::UpsertSiteRequest {
                allowed_redirect_origins: vec!["javascript:alert(1)".into()],
                allowed_browser_origins: vec![],
                ..site_request("3_a", 1)
            },
            "INVALID_PARAMETER",
            "allowed_redirect_origins",
        ),
    ];
    for (request, expected_reason, field) in cases {
        let status = assert_refused(
            app.admin().upsert_site(request).await,
            Code::InvalidArgument,
            expected_reason,
        );
        assert_eq!(bad_fields(&status), [field]);
    }
}

async fn get_site_of_an_unknown_key_is_site_not_found(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    assert_refused(
        app.admin()
            .get_site(pb::GetSiteRequest {
                api_key: "nope".into(),
            })
            .await,
        Code::NotFound,
        "SITE_NOT_FOUND",
    );
}

async fn upsert_account_replaces_login_ids(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.create_site("3_a", 1).await;
    let account = app
        .create_account("3_a", "u1", &[("a@x.com", true), ("b@x.com", false)])
        .await;
    assert_eq!(account.login_methods, 1);
    let account = app.create_account("3_a", "u1", &[("c@x.com", true)]).await;
    let ids: Vec<_> = account
        .login_ids
        .iter()
        .map(|l| l.login_id.as_str())
        .collect();
    assert_eq!(ids, ["c@x.com"]);
    assert_eq!(app.account("3_a", "u1").await.login_ids, account.login_ids);
}

async fn upsert_account_refuses_a_login_id_of_another_account(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    let result = app
        .admin()
        .upsert_account(pb::UpsertAccountRequest {
            api_key: "3_a".into(),
            uid: "u2".into(),
            login_ids: vec![pb::LoginId {
                login_id: "a@x.com".into(),
                has_password: true,
            }],
        })
        .await;
    assert_refused(result, Code::AlreadyExists, "LOGIN_ID_TAKEN");
    // The failed request created nothing.
    assert_refused(
        app.connections()
            .get_account(pb::GetAccountRequest {
                api_key: "3_a".into(),
                uid: "u2".into(),
            })
            .await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
}

async fn upsert_account_keeps_login_ids_that_identities_brought(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[]).await;
    app.link("3_a", "u1", "facebook", "", "fb1", Some("a@x.com"))
        .await;
    let result = app
        .admin()
        .upsert_account(pb::UpsertAccountRequest {
            api_key: "3_a".into(),
            uid: "u1".into(),
            login_ids: vec![],
        })
        .await;
    assert_refused(result, Code::FailedPrecondition, "LOGIN_ID_IN_USE");
    assert_eq!(app.account("3_a", "u1").await.login_ids.len(), 1);
}

async fn upsert_account_on_an_unknown_site_is_site_not_found(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let result = app
        .admin()
        .upsert_account(pb::UpsertAccountRequest {
            api_key: "3_none".into(),
            uid: "u1".into(),
            login_ids: vec![],
        })
        .await;
    assert_refused(result, Code::NotFound, "SITE_NOT_FOUND");
}
