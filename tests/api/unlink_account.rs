use std::collections::BTreeSet;

use connections::{
    domain::{EventSource, RemovalMode},
    proto::v1 as pb,
    storage::entities::identity,
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bad_fields},
    on_both_backends,
    remove_connection::{KEY, outbox_events},
};

on_both_backends!(
    unlink_account_unlinks_one_provider,
    unlink_account_unlinks_every_external_identity_with_sub_provider_none,
    unlink_account_unlinks_every_janrain_identity_with_all,
    unlink_account_unlinks_one_janrain_sub_provider,
    unlink_account_ignores_the_last_identity_rule,
    unlink_account_is_refused_on_a_disabled_site,
    unlink_account_refuses_hostile_redirects,
    unlink_account_validates_its_fields,
    unlink_account_of_a_named_provider_matching_nothing_is_not_connected,
    unlink_account_of_an_unknown_site_or_account_is_not_found,
    unlink_account_dry_run_reports_and_changes_nothing,
    unlink_account_retry_with_the_same_request_id_acts_once,
);

const VHOST: i64 = 1;
const UID: &str = "42";

fn unlink(provider: Option<&str>, sub_provider_name: &str) -> pb::UnlinkAccountRequest {
    pb::UnlinkAccountRequest {
        vhost: VHOST,
        uid: 42,
        redirect_url: "/userprofile".into(),
        external_id_provider_name: provider.map(Into::into),
        sub_provider_name: sub_provider_name.into(),
        request_id: String::new(),
        dry_run: false,
    }
}

/// Account 42 with a password, facebook, janrain (yahoo and gigya),
/// sheridan and gigya.
async fn setup(backend: &Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.create_site(KEY, VHOST).await;
    app.create_account(KEY, UID, &[("a@x.com", true)]).await;
    app.link(KEY, UID, "facebook", "", "fb1", None).await;
    app.link(KEY, UID, "janrain", "yahoo", "jr1", None).await;
    app.link(KEY, UID, "janrain", "gigya", "jr2", None).await;
    app.link(KEY, UID, "sheridan", "", "sh1", None).await;
    app.link(KEY, UID, "gigya", "", "gg1", None).await;
    app
}

fn removed(response: &pb::UnlinkAccountResponse) -> BTreeSet<(String, String)> {
    response
        .removed
        .iter()
        .map(|r| {
            assert_eq!(r.mode(), pb::RemovalMode::Hard);
            assert!(r.removed_login_ids.is_empty());
            (r.provider.clone(), r.sub_provider.clone())
        })
        .collect()
}

pub(crate) fn pairs(items: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    items
        .iter()
        .map(|(p, s)| ((*p).to_owned(), (*s).to_owned()))
        .collect()
}

async fn remaining(app: &TestApp) -> BTreeSet<(String, String)> {
    identities_of(app, KEY, UID).await
}

/// The account's identities as (provider, sub_provider).
pub(crate) async fn identities_of(
    app: &TestApp,
    api_key: &str,
    uid: &str,
) -> BTreeSet<(String, String)> {
    app.account(api_key, uid)
        .await
        .identities
        .into_iter()
        .map(|i| (i.provider, i.sub_provider))
        .collect()
}

/// Seed example 1: one provider (any provider but janrain takes `none`).
async fn unlink_account_unlinks_one_provider(backend: Backend) {
    let app = setup(&backend).await;
    let response = app
        .connections()
        .unlink_account(unlink(Some("Sheridan"), "none"))
        .await
        .expect("unlink")
        .into_inner();
    assert!(!response.call_id.is_empty());
    assert_eq!(response.redirect_url, "/userprofile");
    assert!(!response.dry_run);
    assert_eq!(removed(&response), pairs(&[("sheridan", "")]));
    assert!(
        !remaining(&app)
            .await
            .contains(&("sheridan".into(), String::new()))
    );

    let [event] = outbox_events(&app).await.try_into().expect("one event");
    assert_eq!(event.source, EventSource::UnlinkAccount);
    assert_eq!(event.mode, RemovalMode::Hard);
    assert_eq!(event.cid, None);
    assert!(event.removed_login_ids.is_empty());
    assert_eq!((event.api_key.as_str(), event.vhost), (KEY, VHOST));
    assert_eq!(event.uid, UID);
    assert_eq!(event.call_id, response.call_id);
    assert_eq!(event.event_id, response.removed[0].event_id);
    // Password + facebook + janrain x2 + gigya.
    assert_eq!(event.remaining_login_methods, 5);
}

/// Seed example 2: no provider, `sub_provider_name=none`: every external-id
/// identity, whatever its state; social identities stay.
async fn unlink_account_unlinks_every_external_identity_with_sub_provider_none(backend: Backend) {
    let app = setup(&backend).await;
    app.link(KEY, UID, "twitter", "", "tw1", None).await;
    // No RPC soft-removes an external-id identity; mark gigya's mapping
    // SOFT_REMOVED in the table to show that UnlinkAccount deletes it anyway.
    identity::Entity::update_many()
        .col_expr(identity::Column::State, Expr::value("SOFT_REMOVED"))
        .filter(identity::Column::Provider.eq("gigya"))
        .exec(app.repo.connection())
        .await
        .expect("soft-remove gigya");
    let response = app
        .connections()
        .unlink_account(unlink(None, "NONE"))
        .await
        .expect("unlink all")
        .into_inner();
    assert_eq!(
        removed(&response),
        pairs(&[
            ("janrain", "yahoo"),
            ("janrain", "gigya"),
            ("sheridan", ""),
            ("gigya", ""),
        ])
    );
    assert_eq!(
        remaining(&app).await,
        pairs(&[("facebook", ""), ("twitter", "")])
    );
    assert_eq!(outbox_events(&app).await.len(), 4);
}

/// Seed example 3: janrain with `all`.
async fn unlink_account_unlinks_every_janrain_identity_with_all(backend: Backend) {
    let app = setup(&backend).await;
    let response = app
        .connections()
        .unlink_account(unlink(Some("janrain"), "all"))
        .await
        .expect("unlink janrain")
        .into_inner();
    assert_eq!(
        removed(&response),
        pairs(&[("janrain", "yahoo"), ("janrain", "gigya")])
    );
    assert_eq!(
        remaining(&app).await,
        pairs(&[("facebook", ""), ("sheridan", ""), ("gigya", "")])
    );
}

/// Seed example 4: janrain's gigya sub-provider only.
async fn unlink_account_unlinks_one_janrain_sub_provider(backend: Backend) {
    let app = setup(&backend).await;
    let response = app
        .connections()
        .unlink_account(unlink(Some("Janrain"), "Gigya"))
        .await
        .expect("unlink janrain gigya")
        .into_inner();
    assert_eq!(removed(&response), pairs(&[("janrain", "gigya")]));
    assert!(
        remaining(&app)
            .await
            .contains(&("janrain".into(), "yahoo".into()))
    );
    // The gigya provider itself is untouched.
    assert!(
        remaining(&app)
            .await
            .contains(&("gigya".into(), String::new()))
    );
}

async fn unlink_account_ignores_the_last_identity_rule(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    app.create_site(KEY, VHOST).await;
    app.create_account(KEY, UID, &[]).await;
    app.link(KEY, UID, "gigya", "", "gg1", None).await;
    app.connections()
        .unlink_account(unlink(Some("gigya"), "none"))
        .await
        .expect("unlink the last identity");
    assert_eq!(app.account(KEY, UID).await.login_methods, 0);
    let [event] = outbox_events(&app).await.try_into().expect("one event");
    assert_eq!(event.remaining_login_methods, 0);
}

async fn unlink_account_is_refused_on_a_disabled_site(backend: Backend) {
    let app = setup(&backend).await;
    app.admin()
        .upsert_site(pb::UpsertSiteRequest {
            api_key: KEY.into(),
            vhost: VHOST,
            name: "disabled".into(),
            unlink_action_enabled: false,
            allowed_redirect_origins: vec!["https://www.example.com".into()],
            allowed_browser_origins: vec![],
        })
        .await
        .expect("disable");
    let before = app.account(KEY, UID).await;
    assert_refused(
        app.connections().unlink_account(unlink(None, "none")).await,
        Code::PermissionDenied,
        "ACTION_DISABLED",
    );
    assert_eq!(app.account(KEY, UID).await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn unlink_account_refuses_hostile_redirects(backend: Backend) {
    let app = setup(&backend).await;
    let before = app.account(KEY, UID).await;
    for hostile in [
        "//evil.com/x",
        "https://evil.com/",
        "https://www.example.com.evil.com/",
        "https://www.example.com@evil.com/",
        "javascript:alert(1)",
        "/\\evil.com",
        "http://www.example.com/",
        "userprofile",
    ] {
        let mut request = unlink(None, "none");
        request.redirect_url = hostile.into();
        let status = assert_refused(
            app.connections().unlink_account(request).await,
            Code::InvalidArgument,
            "REDIRECT_NOT_ALLOWED",
        );
        assert_eq!(bad_fields(&status), ["redirect_url"], "{hostile}");
    }
    assert_eq!(app.account(KEY, UID).await, before);
    // An allowed origin is returned as given.
    let mut request = unlink(Some("gigya"), "none");
    request.redirect_url = "https://www.example.com/done?x=1".into();
    let response = app
        .connections()
        .unlink_account(request)
        .await
        .expect("allowed origin")
        .into_inner();
    assert_eq!(response.redirect_url, "https://www.example.com/done?x=1");
}

async fn unlink_account_validates_its_fields(backend: Backend) {
    let app = setup(&backend).await;
    let with = |f: &dyn Fn(&mut pb::UnlinkAccountRequest)| {
        let mut request = unlink(Some("janrain"), "all");
        f(&mut request);
        request
    };
    let cases: Vec<(pb::UnlinkAccountRequest, Code, &str, &str)> = vec![
        (
            with(&|r| r.vhost = 0),
            Code::InvalidArgument,
            "MISSING_PARAMETER",
            "vhost",
        ),
        (
            with(&|r| r.vhost = -1),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "vhost",
        ),
        (
            with(&|r| r.vhost = 100_000_000_000),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "vhost",
        ),
        (
            with(&|r| r.uid = 0),
            Code::InvalidArgument,
            "MISSING_PARAMETER",
            "uid",
        ),
        (
            with(&|r| r.uid = -42),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "uid",
        ),
        (
            with(&|r| r.uid = 123_456_789_012),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "uid",
        ),
        (
            with(&|r| r.redirect_url = String::new()),
            Code::InvalidArgument,
            "MISSING_PARAMETER",
            "redirect_url",
        ),
        (
            with(&|r| r.redirect_url = format!("/{}", "p".repeat(100))),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "redirect_url",
        ),
        (
            with(&|r| r.external_id_provider_name = Some(String::new())),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "external_id_provider_name",
        ),
        (
            with(&|r| r.external_id_provider_name = Some("x".repeat(51))),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "external_id_provider_name",
        ),
        (
            with(&|r| r.external_id_provider_name = Some("facebook".into())),
            Code::InvalidArgument,
            "UNKNOWN_PROVIDER",
            "external_id_provider_name",
        ),
        (
            with(&|r| r.sub_provider_name = String::new()),
            Code::InvalidArgument,
            "MISSING_PARAMETER",
            "sub_provider_name",
        ),
        (
            with(&|r| r.sub_provider_name = "y".repeat(51)),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "sub_provider_name",
        ),
        (
            unlink(None, "yahoo"),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "sub_provider_name",
        ),
        (
            unlink(Some("gigya"), "all"),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "sub_provider_name",
        ),
        (
            unlink(Some("sheridan staff"), "yahoo"),
            Code::InvalidArgument,
            "INVALID_PARAMETER",
            "sub_provider_name",
        ),
    ];
    let before = app.account(KEY, UID).await;
    for (request, code, reason, field) in cases {
        let status = assert_refused(
            app.connections().unlink_account(request).await,
            code,
            reason,
        );
        assert_eq!(bad_fields(&status), [field], "{reason} {field}");
    }
    assert_eq!(app.account(KEY, UID).await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn unlink_account_of_a_named_provider_matching_nothing_is_not_connected(backend: Backend) {
    let app = setup(&backend).await;
    assert_refused(
        app.connections()
            .unlink_account(unlink(Some("Sheridan Staff"), "none"))
            .await,
        Code::FailedPrecondition,
        "NOT_CONNECTED",
    );
    assert_refused(
        app.connections()
            .unlink_account(unlink(Some("janrain"), "googleplus"))
            .await,
        Code::FailedPrecondition,
        "NOT_CONNECTED",
    );
    // Without a provider, matching nothing is a success that removes nothing.
    app.connections()
        .unlink_account(unlink(None, "none"))
        .await
        .expect("first");
    let response = app
        .connections()
        .unlink_account(unlink(None, "none"))
        .await
        .expect("nothing left")
        .into_inner();
    assert!(response.removed.is_empty());
    assert_eq!(outbox_events(&app).await.len(), 4);
}

async fn unlink_account_of_an_unknown_site_or_account_is_not_found(backend: Backend) {
    let app = setup(&backend).await;
    let mut unknown_site = unlink(None, "none");
    unknown_site.vhost = 999;
    assert_refused(
        app.connections().unlink_account(unknown_site).await,
        Code::NotFound,
        "SITE_NOT_FOUND",
    );
    let mut unknown_account = unlink(None, "none");
    unknown_account.uid = 7;
    assert_refused(
        app.connections().unlink_account(unknown_account).await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
}

async fn unlink_account_dry_run_reports_and_changes_nothing(backend: Backend) {
    let app = setup(&backend).await;
    let before = app.account(KEY, UID).await;
    let mut request = unlink(Some("janrain"), "all");
    request.dry_run = true;
    let response = app
        .connections()
        .unlink_account(request)
        .await
        .expect("dry run")
        .into_inner();
    assert!(response.dry_run);
    assert_eq!(response.removed.len(), 2);
    assert!(response.removed.iter().all(|r| r.event_id.is_empty()));
    assert_eq!(app.account(KEY, UID).await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn unlink_account_retry_with_the_same_request_id_acts_once(backend: Backend) {
    let app = setup(&backend).await;
    let mut request = unlink(Some("janrain"), "all");
    request.request_id = "unlink-1".into();
    let first = app
        .connections()
        .unlink_account(request.clone())
        .await
        .expect("first")
        .into_inner();
    let retry = app
        .connections()
        .unlink_account(request.clone())
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!(outbox_events(&app).await.len(), 2);
    request.external_id_provider_name = Some("gigya".into());
    request.sub_provider_name = "none".into();
    assert_refused(
        app.connections().unlink_account(request).await,
        Code::InvalidArgument,
        "IDEMPOTENCY_KEY_REUSED",
    );
    assert_eq!(outbox_events(&app).await.len(), 2);
}
