use connections::proto::v1 as pb;
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp, assert_refused, bad_fields},
    on_both_backends,
};

on_both_backends!(
    link_connection_links_two_providers_and_get_account_shows_them,
    link_connection_normalises_provider_names,
    link_connection_refuses_an_identity_of_another_account,
    link_connection_is_idempotent_for_the_same_account,
    link_connection_validates_providers_and_sub_providers,
    link_connection_refuses_a_login_id_of_another_account,
    get_account_never_returns_session_data,
    get_account_of_an_unknown_account_is_account_not_found,
    link_connection_acts_on_what_a_concurrent_writer_left,
    an_unlocked_link_that_would_wait_waits_under_the_lock,
);

fn link_request(provider: &str, sub: &str, provider_uid: &str) -> pb::LinkConnectionRequest {
    pb::LinkConnectionRequest {
        api_key: "3_a".into(),
        uid: "u1".into(),
        provider: provider.into(),
        sub_provider: sub.into(),
        provider_uid: provider_uid.into(),
        login_id: None,
        session: None,
    }
}

async fn setup(backend: &Backend) -> TestApp {
    let app = TestApp::spawn(backend).await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    app
}

async fn link_connection_links_two_providers_and_get_account_shows_them(backend: Backend) {
    let app = setup(&backend).await;
    let fb = app
        .link("3_a", "u1", "facebook", "", "fb1", Some("fb@x.com"))
        .await;
    assert!(!fb.reactivated);
    assert!(!fb.call_id.is_empty());
    app.link("3_a", "u1", "janrain", "yahoo", "jr1", None).await;
    let account = app.account("3_a", "u1").await;
    assert_eq!(account.login_methods, 3);
    let identities: Vec<_> = account
        .identities
        .iter()
        .map(|i| {
            (
                i.provider.as_str(),
                i.sub_provider.as_str(),
                i.provider_uid.as_str(),
                i.state(),
            )
        })
        .collect();
    assert_eq!(
        identities,
        [
            ("facebook", "", "fb1", pb::IdentityState::Active),
            ("janrain", "yahoo", "jr1", pb::IdentityState::Active)
        ]
    );
    // The login ID the identity brought was added to the account.
    assert!(
        account
            .login_ids
            .iter()
            .any(|l| l.login_id == "fb@x.com" && !l.has_password)
    );
}

async fn link_connection_normalises_provider_names(backend: Backend) {
    let app = setup(&backend).await;
    let linked = app.link("3_a", "u1", "Messenger", "", "ms1", None).await;
    assert_eq!(linked.identity.unwrap().provider, "microsoft");
    let linked = app.link("3_a", "u1", "SAML-Okta", "", "s1", None).await;
    assert_eq!(linked.identity.unwrap().provider, "saml-okta");
}

async fn link_connection_refuses_an_identity_of_another_account(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account("3_a", "u2", &[]).await;
    app.link("3_a", "u1", "facebook", "", "fb1", None).await;
    let mut request = link_request("facebook", "", "fb1");
    request.uid = "u2".into();
    assert_refused(
        app.connections().link_connection(request).await,
        Code::AlreadyExists,
        "IDENTITY_LINKED_ELSEWHERE",
    );
    assert!(app.account("3_a", "u2").await.identities.is_empty());
}

async fn link_connection_is_idempotent_for_the_same_account(backend: Backend) {
    let app = setup(&backend).await;
    app.link("3_a", "u1", "twitter", "", "t1", None).await;
    let again = app.link("3_a", "u1", "twitter", "", "t1", None).await;
    assert!(!again.reactivated);
    assert_eq!(app.account("3_a", "u1").await.identities.len(), 1);
}

async fn link_connection_validates_providers_and_sub_providers(backend: Backend) {
    let app = setup(&backend).await;
    let cases = [
        (
            link_request("myspace", "", "x"),
            "UNKNOWN_PROVIDER",
            "provider",
        ),
        (link_request("", "", "x"), "MISSING_PARAMETER", "provider"),
        (
            link_request("saml-", "", "x"),
            "UNKNOWN_PROVIDER",
            "provider",
        ),
        (
            link_request("janrain", "", "x"),
            "MISSING_PARAMETER",
            "sub_provider",
        ),
        (
            link_request("facebook", "yahoo", "x"),
            "INVALID_PARAMETER",
            "sub_provider",
        ),
        (
            link_request("facebook", "", ""),
            "MISSING_PARAMETER",
            "provider_uid",
        ),
        (
            pb::LinkConnectionRequest {
                uid: String::new(),
                ..link_request("facebook", "", "x")
            },
            "MISSING_PARAMETER",
            "uid",
        ),
    ];
    for (request, expected_reason, field) in cases {
        let status = assert_refused(
            app.connections().link_connection(request).await,
            Code::InvalidArgument,
            expected_reason,
        );
        assert_eq!(bad_fields(&status), [field]);
    }
    assert!(app.account("3_a", "u1").await.identities.is_empty());
}

async fn link_connection_refuses_a_login_id_of_another_account(backend: Backend) {
    let app = setup(&backend).await;
    app.create_account("3_a", "u2", &[("b@x.com", true)]).await;
    let request = pb::LinkConnectionRequest {
        login_id: Some("b@x.com".into()),
        ..link_request("facebook", "", "fb1")
    };
    assert_refused(
        app.connections().link_connection(request).await,
        Code::AlreadyExists,
        "LOGIN_ID_TAKEN",
    );
    assert!(app.account("3_a", "u1").await.identities.is_empty());
}

async fn get_account_never_returns_session_data(backend: Backend) {
    let app = setup(&backend).await;
    let linked = app.link("3_a", "u1", "facebook", "", "fb1", None).await;
    assert!(!format!("{linked:?}").contains("secret-token"));
    let account = app.account("3_a", "u1").await;
    assert!(account.identities[0].has_session);
    assert!(!format!("{account:?}").contains("secret-token"));
}

async fn get_account_of_an_unknown_account_is_account_not_found(backend: Backend) {
    let app = setup(&backend).await;
    let status = assert_refused(
        app.connections()
            .get_account(pb::GetAccountRequest {
                api_key: "3_a".into(),
                uid: "nobody".into(),
            })
            .await,
        Code::NotFound,
        "ACCOUNT_NOT_FOUND",
    );
    assert!(bad_fields(&status).is_empty());
    assert_refused(
        app.connections()
            .get_account(pb::GetAccountRequest {
                api_key: "3_zz".into(),
                uid: "u1".into(),
            })
            .await,
        Code::NotFound,
        "SITE_NOT_FOUND",
    );
}

/// A link that runs while another transaction links the same identity to
/// the same account acts on what that transaction leaves: the identity is
/// the account's own, so the link refreshes it. On PostgreSQL a link first
/// reads without a lock and writes only if the account is unchanged and
/// free (see `WriteSteps::guard_account`); here it is held, so the link
/// runs again under the lock. A write that trusted its first read would
/// insert the identity a second time and be refused as linked elsewhere.
async fn link_connection_acts_on_what_a_concurrent_writer_left(backend: Backend) {
    let app = setup(&backend).await;
    let conflicts = connections::telemetry::metrics::storage().write_conflicts();
    let (holder, txn, link) = link_behind_a_held_link(&app, "u1").await;
    crate::deadlines::queued_as_a_conflict(&backend, &holder, conflicts).await;
    txn.commit().await.expect("commit the concurrent link");
    holder.close().await.expect("close");

    let linked = link
        .await
        .expect("task")
        .expect("the identity is the account's own")
        .into_inner();
    assert!(!linked.reactivated);
    let account = app.account("3_a", "u1").await;
    assert_eq!(account.identities.len(), 1, "{account:?}");
}

/// PostgreSQL: an unlocked link's write is one autocommit statement, which
/// must never wait on a lock. Here it would wait on the identity's unique
/// index for another account's uncommitted link of the same identity: the
/// shared statement gives the wait up, and the link runs under the lock
/// instead, in a transaction. Its backend is terminated there: nothing of
/// it committed, so the call runs again, and links once the other
/// account's link is rolled back.
async fn an_unlocked_link_that_would_wait_waits_under_the_lock(backend: Backend) {
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    let app = setup(&backend).await;
    app.create_account("3_a", "u2", &[]).await;
    let (holder, txn, link) = link_behind_a_held_link(&app, "u2").await;
    crate::deadlines::writer_killed_while_waiting_is_retried(&holder, &link).await;
    txn.rollback().await.expect("release");
    holder.close().await.expect("close");
    let linked = link.await.expect("join").expect("linked once free");
    assert_eq!(
        linked.into_inner().identity.expect("identity").provider_uid,
        "fb-1"
    );
    assert_eq!(app.account("3_a", "u1").await.identities.len(), 1);
}

/// Holds account `uid` in another transaction that links facebook `fb-1` to
/// it (not yet committed), then starts u1's link of the same identity.
async fn link_behind_a_held_link(
    app: &TestApp,
    uid: &str,
) -> (
    sea_orm::DatabaseConnection,
    sea_orm::DatabaseTransaction,
    tokio::task::JoinHandle<Result<tonic::Response<pb::LinkConnectionResponse>, tonic::Status>>,
) {
    let (holder, txn) = crate::deadlines::hold_writers(app, uid).await;
    crate::deadlines::change_held_account(
        &txn,
        uid,
        &format!(
            "INSERT INTO identities (site_id, account_id, provider, sub_provider, \
             provider_uid, state, linked_at, updated_at) \
             SELECT site_id, id, 'facebook', '', 'fb-1', 'ACTIVE', updated_at, updated_at \
             FROM accounts WHERE uid = '{uid}'"
        ),
    )
    .await;
    let mut client = app.connections();
    let link = tokio::spawn(async move {
        client
            .link_connection(link_request("facebook", "", "fb-1"))
            .await
    });
    (holder, txn, link)
}
