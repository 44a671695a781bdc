use std::collections::BTreeSet;

use connections::{
    domain::{ConnectionRemoved, EventSource, RemovalMode},
    proto::v1 as pb,
    storage::entities::event,
};
use sea_orm::{EntityTrait, QueryOrder};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bad_fields},
    on_both_backends,
};

on_both_backends!(
    remove_connection_removes_one_provider_and_writes_its_event,
    remove_connection_matches_providers_case_insensitively_and_messenger_as_microsoft,
    remove_connection_of_all_providers_removes_only_social_identities,
    remove_connection_requests_saml_logouts_unless_force_providers_logout_is_false,
    remove_connection_of_all_with_nothing_connected_succeeds_without_events,
    remove_connection_refuses_unknown_and_empty_providers,
    remove_connection_of_a_provider_not_connected_is_not_connected,
    remove_connection_refuses_the_last_identity_with_fail,
    remove_connection_soft_removes_the_last_identity_and_relinking_reactivates_it,
    remove_connection_with_remove_deletes_the_last_identity_and_its_login_id,
    remove_connection_removes_the_login_id_the_identity_brought,
    remove_connection_refuses_a_login_id_another_identity_uses,
    remove_connection_refuses_to_remove_the_last_password_login_id,
    remove_connection_dry_run_reports_and_changes_nothing,
    remove_connection_dry_run_reports_the_error_it_would_return,
    remove_connection_returns_the_context_unchanged,
    remove_connection_allows_at_most_one_hundred_distinct_cids,
    remove_connection_counts_a_cid_only_when_the_request_succeeds,
    remove_connection_validates_its_fields,
    remove_connection_of_an_unknown_site_or_account_is_not_found,
    remove_connection_retry_with_the_same_request_id_acts_once,
    remove_connection_refuses_a_request_id_reused_for_another_request,
    remove_connection_never_removes_both_of_the_last_two_ways_concurrently,
    remove_connection_concurrent_retries_of_one_request_id_act_once,
    remove_connection_concurrent_new_cids_never_exceed_the_limit,
    remove_connection_acts_on_what_a_concurrent_writer_left,
    an_unlocked_removal_that_would_wait_waits_under_the_lock,
    a_removal_that_waited_for_the_account_dates_its_event_after_the_wait,
    remove_connection_whose_request_id_another_call_stores_first_changes_nothing,
);

pub const KEY: &str = "3_a";

/// The answer to a removal that must succeed.
async fn removed(
    app: &TestApp,
    request: pb::RemoveConnectionRequest,
) -> pb::RemoveConnectionResponse {
    app.connections()
        .remove_connection(request)
        .await
        .expect("the removal succeeds")
        .into_inner()
}

pub fn remove(uid: &str, provider: Option<&str>) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        api_key: KEY.into(),
        uid: uid.into(),
        provider: provider.map(Into::into),
        cid: None,
        remove_login_id: false,
        last_identity_handling: pb::LastIdentityHandling::Unspecified.into(),
        context: None,
        request_id: String::new(),
        dry_run: false,
        force_providers_logout: None,
    }
}

fn handling(
    mut request: pb::RemoveConnectionRequest,
    handling: pb::LastIdentityHandling,
) -> pb::RemoveConnectionRequest {
    request.last_identity_handling = handling.into();
    request
}

/// Another call's record of `request_id` for a RemoveConnection on `KEY`,
/// written in `txn` (a request that differs from any this file sends).
pub async fn another_calls_record(txn: &sea_orm::DatabaseTransaction, request_id: &str) {
    use connections::storage::entities::idempotency_key;
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    idempotency_key::ActiveModel {
        scope: Set(format!("RemoveConnection/{KEY}")),
        request_id: Set(request_id.into()),
        fingerprint: Set("another request".into()),
        response: Set("{}".into()),
        created_at: Set(chrono::Utc::now()),
    }
    .insert(txn)
    .await
    .expect("the other call's record");
}

/// Every event in the outbox, in insertion order.
pub async fn outbox_events(app: &TestApp) -> Vec<ConnectionRemoved> {
    event::Entity::find()
        .order_by_asc(event::Column::Id)
        .all(app.repo.connection())
        .await
        .expect("read events")
        .iter()
        .map(|row| serde_json::from_str(&row.payload).expect("decode event"))
        .collect()
}

async fn setup(backend: &Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.create_site(KEY, 1).await;
    app
}

fn providers(account: &pb::Account) -> Vec<(String, pb::IdentityState)> {
    account
        .identities
        .iter()
        .map(|i| (i.provider.clone(), i.state()))
        .collect()
}

async fn remove_connection_removes_one_provider_and_writes_its_event(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    let mut request = remove("u1", Some("facebook"));
    request.cid = Some("profile-page".into());
    let response = app
        .connections()
        .remove_connection(request)
        .await
        .expect("remove")
        .into_inner();
    assert!(!response.call_id.is_empty());
    assert!(response.time.is_some());
    assert!(!response.dry_run);
    let [removed] = response.removed.as_slice() else {
        panic!("one removal expected: {:?}", response.removed);
    };
    assert_eq!(
        (
            removed.provider.as_str(),
            removed.provider_uid.as_str(),
            removed.mode()
        ),
        ("facebook", "fb1", pb::RemovalMode::Hard)
    );
    assert!(removed.provider_logout_requested);
    assert!(removed.removed_login_ids.is_empty());
    let account = response.account.expect("account");
    assert_eq!(
        providers(&account),
        [("twitter".to_owned(), pb::IdentityState::Active)]
    );
    assert_eq!(account.login_methods, 2);
    assert_eq!(account, app.account(KEY, "u1").await);

    let [event] = outbox_events(&app).await.try_into().expect("one event");
    assert_eq!(event.event_id, removed.event_id);
    assert_eq!(event.call_id, response.call_id);
    assert_eq!(
        (event.provider.as_str(), event.provider_uid.as_str()),
        ("facebook", "fb1")
    );
    assert_eq!(event.mode, RemovalMode::Hard);
    assert_eq!(event.source, EventSource::RemoveConnection);
    assert_eq!(event.cid.as_deref(), Some("profile-page"));
    assert_eq!((event.api_key.as_str(), event.vhost), (KEY, 1));
    assert_eq!(event.uid, "u1");
    assert_eq!(event.actor, "anonymous");
    assert_eq!(event.remaining_login_methods, 2);
    assert!(event.provider_logout_requested);
    // Never tokens.
    let rows = event::Entity::find()
        .all(app.repo.connection())
        .await
        .expect("events");
    assert!(rows.iter().all(|r| !r.payload.contains("secret-token")));
}

async fn remove_connection_matches_providers_case_insensitively_and_messenger_as_microsoft(
    backend: Backend,
) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "microsoft", "", "ms1", None).await;
    app.link(KEY, "u1", "saml-okta", "", "s1", None).await;
    let response = app
        .connections()
        .remove_connection(remove("u1", Some("MESSENGER")))
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(response.removed[0].provider, "microsoft");
    let response = app
        .connections()
        .remove_connection(remove("u1", Some("SAML-Okta")))
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(response.removed[0].provider, "saml-okta");
    assert!(app.account(KEY, "u1").await.identities.is_empty());
}

async fn remove_connection_of_all_providers_removes_only_social_identities(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    app.link(KEY, "u1", "saml-okta", "", "s1", None).await;
    app.link(KEY, "u1", "janrain", "yahoo", "jr1", None).await;
    let response = app
        .connections()
        .remove_connection(handling(remove("u1", None), pb::LastIdentityHandling::Fail))
        .await
        .expect("remove all")
        .into_inner();
    let removed: BTreeSet<_> = response
        .removed
        .iter()
        .map(|r| (r.provider.as_str(), r.mode()))
        .collect();
    assert_eq!(
        removed,
        [
            ("facebook", pb::RemovalMode::Hard),
            ("saml-okta", pb::RemovalMode::Hard)
        ]
        .into()
    );
    assert_eq!(
        providers(&app.account(KEY, "u1").await),
        [("janrain".to_owned(), pb::IdentityState::Active)]
    );
    assert_eq!(outbox_events(&app).await.len(), 2);
}

async fn remove_connection_requests_saml_logouts_unless_force_providers_logout_is_false(
    backend: Backend,
) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "saml-okta", "", "s1", None).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    let response = app
        .connections()
        .remove_connection(remove("u1", Some("saml-okta")))
        .await
        .expect("remove saml")
        .into_inner();
    assert!(response.removed[0].provider_logout_requested);
    let mut quiet = remove("u1", None);
    quiet.force_providers_logout = Some(false);
    let response = app
        .connections()
        .remove_connection(quiet)
        .await
        .expect("remove all without logout")
        .into_inner();
    assert_eq!(response.removed.len(), 2);
    assert!(
        response
            .removed
            .iter()
            .all(|r| !r.provider_logout_requested)
    );
    let events = outbox_events(&app).await;
    let logout: Vec<_> = events
        .iter()
        .map(|e| (e.provider.as_str(), e.provider_logout_requested))
        .collect();
    assert_eq!(
        logout,
        [("saml-okta", true), ("facebook", false), ("twitter", false)]
    );
}

async fn remove_connection_of_all_with_nothing_connected_succeeds_without_events(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    let response = app
        .connections()
        .remove_connection(remove("u1", None))
        .await
        .expect("remove all")
        .into_inner();
    assert!(response.removed.is_empty());
    assert!(outbox_events(&app).await.is_empty());

    // With a request id its answer is stored all the same: a retry after
    // a link answers it again instead of removing the new identity.
    let mut request = remove("u1", None);
    request.request_id = "req-empty".into();
    let first = removed(&app, request.clone()).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let retry = removed(&app, request).await;
    assert_eq!(retry, first);
    assert!(retry.removed.is_empty());
    assert_eq!(app.account(KEY, "u1").await.identities.len(), 1);
    assert!(outbox_events(&app).await.is_empty());
}

async fn remove_connection_refuses_unknown_and_empty_providers(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "janrain", "yahoo", "jr1", None).await;
    for (provider, expected) in [
        ("myspace", "UNKNOWN_PROVIDER"),
        // External-id providers belong to UnlinkAccount.
        ("janrain", "UNKNOWN_PROVIDER"),
        ("saml-", "UNKNOWN_PROVIDER"),
        // Present but empty is a mistake, not "all".
        ("", "INVALID_PARAMETER"),
    ] {
        let status = assert_refused(
            app.connections()
                .remove_connection(remove("u1", Some(provider)))
                .await,
            Code::InvalidArgument,
            expected,
        );
        assert_eq!(bad_fields(&status), ["provider"], "{provider:?}");
    }
    assert_eq!(app.account(KEY, "u1").await.identities.len(), 1);
}

async fn remove_connection_of_a_provider_not_connected_is_not_connected(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    assert_refused(
        app.connections()
            .remove_connection(remove("u1", Some("facebook")))
            .await,
        Code::FailedPrecondition,
        "NOT_CONNECTED",
    );
    assert!(outbox_events(&app).await.is_empty());
}

async fn remove_connection_refuses_the_last_identity_with_fail(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", false)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let before = app.account(KEY, "u1").await;
    assert_refused(
        app.connections()
            .remove_connection(handling(
                remove("u1", Some("facebook")),
                pb::LastIdentityHandling::Fail,
            ))
            .await,
        Code::FailedPrecondition,
        "LAST_LOGIN_IDENTITY",
    );
    assert_eq!(app.account(KEY, "u1").await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn remove_connection_soft_removes_the_last_identity_and_relinking_reactivates_it(
    backend: Backend,
) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[]).await;
    app.create_account(KEY, "u2", &[]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    // UNSPECIFIED means SOFT.
    let response = app
        .connections()
        .remove_connection(remove("u1", Some("facebook")))
        .await
        .expect("soft remove")
        .into_inner();
    assert_eq!(response.removed[0].mode(), pb::RemovalMode::Soft);
    let account = app.account(KEY, "u1").await;
    assert_eq!(account.login_methods, 0);
    let identity = &account.identities[0];
    assert_eq!(identity.state(), pb::IdentityState::SoftRemoved);
    assert!(!identity.has_session, "session data must be wiped");
    let [event] = outbox_events(&app).await.try_into().expect("one event");
    assert_eq!(event.mode, RemovalMode::Soft);
    assert_eq!(event.remaining_login_methods, 0);

    // The mapping stays bound to u1: another account cannot take it ...
    let mut link = pb::LinkConnectionRequest {
        api_key: KEY.into(),
        uid: "u2".into(),
        provider: "facebook".into(),
        sub_provider: String::new(),
        provider_uid: "fb1".into(),
        login_id: None,
        session: None,
    };
    assert_refused(
        app.connections().link_connection(link.clone()).await,
        Code::AlreadyExists,
        "IDENTITY_LINKED_ELSEWHERE",
    );
    // ... and logging in with it again finds u1 and re-activates it.
    link.uid = "u1".into();
    let relinked = app
        .connections()
        .link_connection(link)
        .await
        .expect("relink")
        .into_inner();
    assert!(relinked.reactivated);
    assert_eq!(relinked.account.expect("account").login_methods, 1);
}

async fn remove_connection_with_remove_deletes_the_last_identity_and_its_login_id(
    backend: Backend,
) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[]).await;
    app.create_account(KEY, "u2", &[("b@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    let response = app
        .connections()
        .remove_connection(handling(
            remove("u1", None),
            pb::LastIdentityHandling::Remove,
        ))
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(response.removed[0].mode(), pb::RemovalMode::Hard);
    assert_eq!(response.removed[0].removed_login_ids, ["fb@x.com"]);
    let account = app.account(KEY, "u1").await;
    assert!(account.identities.is_empty() && account.login_ids.is_empty());
    assert_eq!(account.login_methods, 0);
    // A hard-removed provider identity is free to be linked to another account.
    let linked = app
        .link(KEY, "u2", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    assert!(!linked.reactivated);
    assert_eq!(app.account(KEY, "u2").await.identities.len(), 1);
}

async fn remove_connection_removes_the_login_id_the_identity_brought(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    let mut request = remove("u1", Some("facebook"));
    request.remove_login_id = true;
    let response = app
        .connections()
        .remove_connection(request)
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(response.removed[0].removed_login_ids, ["fb@x.com"]);
    let account = app.account(KEY, "u1").await;
    let login_ids: Vec<_> = account.login_ids.iter().map(|l| &l.login_id).collect();
    assert_eq!(login_ids, ["a@x.com"]);
    let [event] = outbox_events(&app).await.try_into().expect("one event");
    assert_eq!(event.removed_login_ids, ["fb@x.com"]);
}

async fn remove_connection_refuses_a_login_id_another_identity_uses(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", Some("shared@x.com"))
        .await;
    app.link(KEY, "u1", "twitter", "", "tw1", Some("shared@x.com"))
        .await;
    let before = app.account(KEY, "u1").await;
    let mut request = remove("u1", Some("facebook"));
    request.remove_login_id = true;
    assert_refused(
        app.connections().remove_connection(request).await,
        Code::FailedPrecondition,
        "LOGIN_ID_IN_USE",
    );
    assert_eq!(app.account(KEY, "u1").await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn remove_connection_refuses_to_remove_the_last_password_login_id(backend: Backend) {
    let app = setup(&backend).await;
    // The login ID facebook brought carries the account's only password.
    app.create_account(KEY, "u1", &[("fb@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    let before = app.account(KEY, "u1").await;
    let mut request = handling(
        remove("u1", Some("facebook")),
        pb::LastIdentityHandling::Fail,
    );
    request.remove_login_id = true;
    assert_refused(
        app.connections().remove_connection(request.clone()).await,
        Code::FailedPrecondition,
        "NO_LOGIN_METHOD_LEFT",
    );
    // SOFT removal of the last identity plus its login ID: same answer.
    request.last_identity_handling = pb::LastIdentityHandling::Soft.into();
    assert_refused(
        app.connections().remove_connection(request).await,
        Code::FailedPrecondition,
        "NO_LOGIN_METHOD_LEFT",
    );
    assert_eq!(app.account(KEY, "u1").await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn remove_connection_dry_run_reports_and_changes_nothing(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    let before = app.account(KEY, "u1").await;
    let mut request = remove("u1", None);
    request.dry_run = true;
    request.remove_login_id = true;
    request.cid = Some("dry".into());
    let response = app
        .connections()
        .remove_connection(request)
        .await
        .expect("dry run")
        .into_inner();
    assert!(response.dry_run);
    assert_eq!(response.removed.len(), 1);
    assert_eq!(response.removed[0].event_id, "");
    assert_eq!(response.removed[0].removed_login_ids, ["fb@x.com"]);
    let would_be = response.account.expect("account");
    assert!(would_be.identities.is_empty());
    assert_eq!(would_be.login_ids.len(), 1);
    assert_eq!(app.account(KEY, "u1").await, before);
    assert!(outbox_events(&app).await.is_empty());
}

async fn remove_connection_dry_run_reports_the_error_it_would_return(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let mut request = handling(remove("u1", None), pb::LastIdentityHandling::Fail);
    request.dry_run = true;
    assert_refused(
        app.connections().remove_connection(request).await,
        Code::FailedPrecondition,
        "LAST_LOGIN_IDENTITY",
    );
}

async fn remove_connection_returns_the_context_unchanged(backend: Backend) {
    use prost_types::value::Kind;
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    let context = prost_types::Value {
        kind: Some(Kind::StructValue(prost_types::Struct {
            fields: [
                (
                    "page".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::StringValue("settings".into())),
                    },
                ),
                (
                    "attempt".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::NumberValue(2.5)),
                    },
                ),
                (
                    "tags".to_owned(),
                    prost_types::Value {
                        kind: Some(Kind::ListValue(prost_types::ListValue {
                            values: vec![
                                prost_types::Value {
                                    kind: Some(Kind::BoolValue(true)),
                                },
                                prost_types::Value {
                                    kind: Some(Kind::NullValue(0)),
                                },
                            ],
                        })),
                    },
                ),
            ]
            .into(),
        })),
    };
    let mut request = remove("u1", None);
    request.context = Some(context.clone());
    let response = app
        .connections()
        .remove_connection(request)
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(response.context, Some(context));
    // Without a context there is none in the response.
    let response = app
        .connections()
        .remove_connection(remove("u1", None))
        .await
        .expect("remove")
        .into_inner();
    assert_eq!(response.context, None);
    // JSON has no NaN.
    let mut request = remove("u1", None);
    request.context = Some(prost_types::Value {
        kind: Some(Kind::NumberValue(f64::NAN)),
    });
    let status = assert_refused(
        app.connections().remove_connection(request).await,
        Code::InvalidArgument,
        "INVALID_PARAMETER",
    );
    assert_eq!(bad_fields(&status), ["context"]);
}

fn with_cid(uid: &str, cid: &str) -> pb::RemoveConnectionRequest {
    let mut request = remove(uid, None);
    request.cid = Some(cid.into());
    request
}

async fn remove_connection_allows_at_most_one_hundred_distinct_cids(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    let mut client = app.connections();
    // Requests that remove nothing count their cid too.
    for n in 0..100 {
        client
            .remove_connection(with_cid("u1", &format!("cid-{n}")))
            .await
            .expect("cid within the limit");
    }
    // A known cid is still fine.
    client
        .remove_connection(with_cid("u1", "cid-7"))
        .await
        .expect("known cid");
    // A dry run reports the error but does not count.
    let mut dry = with_cid("u1", "cid-100");
    dry.dry_run = true;
    assert_refused(
        client.remove_connection(dry).await,
        Code::InvalidArgument,
        "TOO_MANY_CONTEXT_IDS",
    );
    let status = assert_refused(
        client.remove_connection(with_cid("u1", "cid-100")).await,
        Code::InvalidArgument,
        "TOO_MANY_CONTEXT_IDS",
    );
    assert_eq!(bad_fields(&status), ["cid"]);
    // The limit is per site.
    app.create_site("3_b", 2).await;
    app.create_account("3_b", "u1", &[("a@x.com", true)]).await;
    let mut other_site = with_cid("u1", "cid-100");
    other_site.api_key = "3_b".into();
    client
        .remove_connection(other_site)
        .await
        .expect("other site");
}

async fn remove_connection_counts_a_cid_only_when_the_request_succeeds(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    let mut client = app.connections();
    for n in 0..99 {
        client
            .remove_connection(with_cid("u1", &format!("cid-{n}")))
            .await
            .expect("cid within the limit");
    }
    // Refused for another reason (NOT_CONNECTED): "failed" is not counted ...
    let mut failing = with_cid("u1", "failed");
    failing.provider = Some("facebook".into());
    assert_refused(
        client.remove_connection(failing).await,
        Code::FailedPrecondition,
        "NOT_CONNECTED",
    );
    // ... nor is a dry run's cid ...
    let mut dry = with_cid("u1", "dry");
    dry.dry_run = true;
    client.remove_connection(dry).await.expect("dry run");
    // ... so the 100th distinct cid is still free.
    client
        .remove_connection(with_cid("u1", "hundredth"))
        .await
        .expect("100th cid");
    assert_refused(
        client.remove_connection(with_cid("u1", "failed")).await,
        Code::InvalidArgument,
        "TOO_MANY_CONTEXT_IDS",
    );
}

async fn remove_connection_validates_its_fields(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    let mut no_key = remove("u1", None);
    no_key.api_key = String::new();
    let mut no_uid = remove("u1", None);
    no_uid.uid = String::new();
    let mut bad_handling = remove("u1", None);
    bad_handling.last_identity_handling = 42;
    let empty_cid = with_cid("u1", "");
    let long_cid = with_cid("u1", &"c".repeat(101));
    let mut long_request_id = remove("u1", None);
    long_request_id.request_id = "r".repeat(129);
    for (request, expected, field) in [
        (no_key, "MISSING_PARAMETER", "api_key"),
        (no_uid, "MISSING_PARAMETER", "uid"),
        (bad_handling, "INVALID_PARAMETER", "last_identity_handling"),
        (empty_cid, "INVALID_PARAMETER", "cid"),
        (long_cid, "INVALID_PARAMETER", "cid"),
        (long_request_id, "INVALID_PARAMETER", "request_id"),
    ] {
        let status = assert_refused(
            app.connections().remove_connection(request).await,
            Code::InvalidArgument,
            expected,
        );
        assert_eq!(bad_fields(&status), [field]);
    }
    // A cid of exactly 100 characters is fine.
    app.connections()
        .remove_connection(with_cid("u1", &"c".repeat(100)))
        .await
        .expect("100-character cid");
}

async fn remove_connection_of_an_unknown_site_or_account_is_not_found(backend: Backend) {
    let app = setup(&backend).await;
    let mut unknown_site = remove("u1", None);
    unknown_site.api_key = "3_nope".into();
    assert_refused(
        app.connections().remove_connection(unknown_site).await,
        Code::NotFound,
        "SITE_NOT_FOUND",
    );
    assert_refused(
        app.connections()
            .remove_connection(remove("nobody", None))
            .await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
}

async fn remove_connection_retry_with_the_same_request_id_acts_once(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let mut request = remove("u1", Some("facebook"));
    request.request_id = "req-1".into();
    let first = removed(&app, request.clone()).await;
    // The identity is gone now: acting again would be NOT_CONNECTED.
    let retry = removed(&app, request).await;
    assert_eq!(retry, first);
    assert_eq!(outbox_events(&app).await.len(), 1);
}

async fn remove_connection_refuses_a_request_id_reused_for_another_request(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    let mut first = remove("u1", Some("facebook"));
    first.request_id = "req-1".into();
    app.connections()
        .remove_connection(first)
        .await
        .expect("first");
    let before = app.account(KEY, "u1").await;
    let mut other = remove("u1", Some("twitter"));
    other.request_id = "req-1".into();
    let status = assert_refused(
        app.connections().remove_connection(other).await,
        Code::InvalidArgument,
        "IDEMPOTENCY_KEY_REUSED",
    );
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert_eq!(app.account(KEY, "u1").await, before);
    assert_eq!(outbox_events(&app).await.len(), 1);
}

async fn remove_connection_never_removes_both_of_the_last_two_ways_concurrently(backend: Backend) {
    const PAIRS: usize = 20;
    let app = setup(&backend).await;
    for n in 0..PAIRS {
        let uid = format!("u{n}");
        app.create_account(KEY, &uid, &[]).await;
        app.link(KEY, &uid, "facebook", "", &format!("fb{n}"), None)
            .await;
        app.link(KEY, &uid, "twitter", "", &format!("tw{n}"), None)
            .await;
    }
    let mut tasks = Vec::new();
    for n in 0..PAIRS {
        for provider in ["facebook", "twitter"] {
            let mut client = app.connections();
            let request = handling(
                remove(&format!("u{n}"), Some(provider)),
                pb::LastIdentityHandling::Fail,
            );
            tasks.push(tokio::spawn(async move {
                (n, client.remove_connection(request).await)
            }));
        }
    }
    let mut successes = vec![Vec::new(); PAIRS];
    for task in tasks {
        let (n, result) = task.await.expect("task");
        match result {
            Ok(response) => successes[n].push(response.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert_eq!(crate::helpers::reason(&status), "LAST_LOGIN_IDENTITY");
            }
        }
    }
    let events = outbox_events(&app).await;
    assert_eq!(events.len(), PAIRS);
    for (n, won) in successes.iter().enumerate() {
        let [response] = won.as_slice() else {
            panic!("account u{n}: {} successes", won.len());
        };
        let account = app.account(KEY, &format!("u{n}")).await;
        assert_eq!(account.login_methods, 1, "u{n}");
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.call_id == response.call_id)
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].event_id, response.removed[0].event_id);
        assert_eq!(mine[0].uid, format!("u{n}"));
    }
}

async fn remove_connection_concurrent_retries_of_one_request_id_act_once(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    let mut request = remove("u1", None);
    request.request_id = "same".into();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let mut client = app.connections();
            let request = request.clone();
            tokio::spawn(async move { client.remove_connection(request).await })
        })
        .collect();
    let mut responses = Vec::new();
    for task in tasks {
        responses.push(task.await.expect("task").expect("answered").into_inner());
    }
    assert!(responses.iter().all(|r| *r == responses[0]));
    assert_eq!(responses[0].removed.len(), 2);
    assert_eq!(outbox_events(&app).await.len(), 2);
}

async fn remove_connection_concurrent_new_cids_never_exceed_the_limit(backend: Backend) {
    let app = setup(&backend).await;
    let mut client = app.connections();
    for n in 0..4 {
        app.create_account(KEY, &format!("u{n}"), &[]).await;
    }
    for n in 0..98 {
        client
            .remove_connection(with_cid("u0", &format!("cid-{n}")))
            .await
            .expect("cid within the limit");
    }
    // Four new cids on four accounts (no shared account lock) race for the
    // last two places.
    let tasks: Vec<_> = (0..4)
        .map(|n| {
            let mut client = app.connections();
            let request = with_cid(&format!("u{n}"), &format!("new-{n}"));
            tokio::spawn(async move { client.remove_connection(request).await })
        })
        .collect();
    let mut admitted = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => admitted += 1,
            Err(status) => {
                assert_eq!(crate::helpers::reason(&status), "TOO_MANY_CONTEXT_IDS");
            }
        }
    }
    assert_eq!(admitted, 2);
}

/// A removal that runs while another transaction is changing its account
/// acts on what that transaction leaves, never on what it read before. On
/// PostgreSQL a plain removal first reads without a lock and writes only if
/// the account is unchanged and free (see `removal::apply`): here it is
/// held, so the removal runs again under the lock, waits, and finds the
/// identity gone. A write that trusted its first read would delete nothing
/// and fail its own row count (INTERNAL), or delete what it no longer may.
async fn remove_connection_acts_on_what_a_concurrent_writer_left(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    app.link(KEY, "u1", "twitter", "", "tw1", None).await;
    let conflicts = connections::telemetry::metrics::storage().write_conflicts();

    let (holder, txn) = crate::deadlines::hold_writers(&app, "u1").await;
    // What every writer of an account's identities does under its lock:
    // change them, and touch the account.
    crate::deadlines::change_held_account(
        &txn,
        "u1",
        "DELETE FROM identities WHERE provider = 'facebook' \
         AND account_id = (SELECT id FROM accounts WHERE uid = 'u1')",
    )
    .await;
    let mut client = app.connections();
    let removal = tokio::spawn(async move {
        client
            .remove_connection(remove("u1", Some("facebook")))
            .await
    });
    crate::deadlines::queued_as_a_conflict(&backend, &holder, conflicts).await;
    txn.commit().await.expect("commit the concurrent change");
    holder.close().await.expect("close");

    assert_refused(
        removal.await.expect("task"),
        Code::FailedPrecondition,
        "NOT_CONNECTED",
    );
    assert!(outbox_events(&app).await.is_empty());
    let account = app.account(KEY, "u1").await;
    assert_eq!(account.login_methods, 2, "{account:?}");
}

/// PostgreSQL: an unlocked removal's write is one autocommit statement,
/// which must never wait on a lock (a connection lost while it waits would
/// leave its outcome unknown, and it could commit after its call's
/// deadline). No writer of the service holds an identity without its
/// account; a foreign transaction (an operator's script) does here, so
/// that the write, past its guard, would wait on the identity's row: the
/// shared statement gives the wait up, and the removal runs under the lock
/// instead, in a transaction. Its backend is terminated there: nothing of
/// it committed, so the call runs again, and removes once the row is free.
async fn an_unlocked_removal_that_would_wait_waits_under_the_lock(backend: Backend) {
    use sea_orm::ConnectionTrait;
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let (holder, txn) = crate::deadlines::begin_beside(&app).await;
    txn.execute_unprepared("SELECT id FROM identities WHERE provider_uid = 'fb1' FOR UPDATE")
        .await
        .expect("hold the identity's row");
    let mut client = app.connections();
    let removal = tokio::spawn(async move {
        client
            .remove_connection(remove("u1", Some("facebook")))
            .await
    });
    crate::deadlines::writer_killed_while_waiting_is_retried(&holder, &removal).await;
    txn.rollback().await.expect("release");
    holder.close().await.expect("close");
    let answer = removal.await.expect("join").expect("removed once free");
    assert_eq!(answer.into_inner().removed.len(), 1);
    // The killed attempt left nothing: one removal, one event.
    assert_eq!(outbox_events(&app).await.len(), 1);
    let account = app.account(KEY, "u1").await;
    assert!(account.identities.is_empty(), "{account:?}");
}

/// PostgreSQL: a removal's event carries the time of its write, not of the
/// call's start: one that waited for the account's lock (its unlocked write
/// met the held account, and it ran again under the lock) is dated after the
/// lock was released, so the sequencing-lag metric (from `occurred_at` to the
/// position) does not count the wait. SQLite takes its write turn before it
/// reads, so its time always follows any wait.
async fn a_removal_that_waited_for_the_account_dates_its_event_after_the_wait(backend: Backend) {
    use chrono::SubsecRound;
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let (holder, txn) = crate::deadlines::hold_writers(&app, "u1").await;
    let mut client = app.connections();
    let removal = tokio::spawn(async move {
        client
            .remove_connection(remove("u1", Some("facebook")))
            .await
    });
    crate::deadlines::until_a_writer_waits(&holder).await;
    let released = chrono::Utc::now().trunc_subsecs(6);
    txn.rollback().await.expect("release");
    holder.close().await.expect("close");
    removal.await.expect("join").expect("removed once free");
    let events = outbox_events(&app).await;
    assert_eq!(events.len(), 1);
    assert!(
        events[0].occurred_at >= released,
        "the event is dated {} but the lock was released at {released}",
        events[0].occurred_at
    );
}

/// A removal whose request id another call (of another account) is storing
/// at the same time: it waits for that call, then answers from its record
/// (a reuse: IDEMPOTENCY_KEY_REUSED) and changes nothing. On PostgreSQL the
/// removal's unlocked write, past its guard (the account is free), waits on
/// the record's unique index and fails there when the other call commits;
/// nothing of it is kept, and it runs again under the lock. SQLite's
/// removal waits for the write lock, then finds the record.
async fn remove_connection_whose_request_id_another_call_stores_first_changes_nothing(
    backend: Backend,
) {
    let app = setup(&backend).await;
    app.create_account(KEY, "u1", &[("a@x.com", true)]).await;
    app.link(KEY, "u1", "facebook", "", "fb1", None).await;
    let conflicts = connections::telemetry::metrics::storage().write_conflicts();

    // The other call's transaction, not touching u1: its record only.
    let (holder, txn) = crate::deadlines::begin_beside(&app).await;
    another_calls_record(&txn, "req-1").await;

    let mut request = remove("u1", Some("facebook"));
    request.request_id = "req-1".into();
    let mut client = app.connections();
    let removal = tokio::spawn(async move { client.remove_connection(request).await });
    if matches!(backend, Backend::Postgres(_)) {
        crate::deadlines::until_a_writer_waits(&holder).await;
    }
    txn.commit().await.expect("the other call commits");
    holder.close().await.expect("close");

    let status = assert_refused(
        removal.await.expect("task"),
        Code::InvalidArgument,
        "IDEMPOTENCY_KEY_REUSED",
    );
    assert_eq!(bad_fields(&status), ["request_id"]);
    assert!(outbox_events(&app).await.is_empty());
    assert_eq!(app.account(KEY, "u1").await.identities.len(), 1);
    if matches!(backend, Backend::Postgres(_)) {
        assert!(
            connections::telemetry::metrics::storage().write_conflicts() > conflicts,
            "the unlocked write did not meet the record"
        );
    }
}
