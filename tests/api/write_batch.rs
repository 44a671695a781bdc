//! PostgreSQL: concurrent unlocked removals and links share their guarded
//! write statement (issue 12, `storage::write_batch`).
//!
//! - Two removals held in a trigger on the events table (a loop that
//!   sleeps while a row of a test table exists: no lock, so the shared
//!   statements' lock timeout does not apply) fill both statement slots;
//!   four removals (two of them on one account), one with a request id and
//!   two links queue meanwhile and go as one statement once the trigger
//!   lets go. All write; of the two on one account one guard wins and the
//!   other runs again under the lock.
//! - Removals with a request id held on that id's unique index (another
//!   transaction is inserting it), as many as shared statements have
//!   slots, hold up no other removal: their statements give up the lock
//!   wait, and they wait under the lock, in transactions of their own,
//!   while plain removals sent meanwhile are answered.
//! - The same for a link held on the unique index of an identity another
//!   account is linking: it waits under the lock, and fails as linked elsewhere
//!   once the other transaction commits.
//! - A shared statement sent on a connection that died while idle (they are
//!   not pinged at every checkout) fails; its removal, whose account it did
//!   not change, runs again under the lock and is answered once, with one
//!   event.

use std::time::Duration;

use connections::{
    proto::v1 as pb,
    storage::{SHARED_WRITES_APPLICATION, WriteBatchStats},
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, TransactionTrait};
use tonic::Code;

use crate::{
    deadlines::{backends_where, until, writers_waiting},
    helpers::{Backend, TestApp, assert_refused},
    remove_connection::{KEY, another_calls_record, outbox_events, remove},
};

const PATIENCE: Duration = Duration::from_secs(30);

fn stats(app: &TestApp) -> WriteBatchStats {
    app.repo
        .write_batch_stats()
        .expect("PostgreSQL batches guarded writes")
}

async fn setup(app: &TestApp, uids: &[&str]) {
    app.create_site(KEY, 4712).await;
    for uid in uids {
        app.create_account(KEY, uid, &[]).await;
        app.link(KEY, uid, "facebook", "", &format!("fb-{uid}"), None)
            .await;
        app.link(KEY, uid, "googleplus", "", &format!("gp-{uid}"), None)
            .await;
    }
}

async fn providers(app: &TestApp, uid: &str) -> Vec<String> {
    let account = app.account(KEY, uid).await;
    let mut providers: Vec<_> = account.identities.into_iter().map(|i| i.provider).collect();
    providers.sort_unstable();
    providers
}

fn spawn_removal(
    app: &TestApp,
    request: pb::RemoveConnectionRequest,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::RemoveConnectionResponse>, tonic::Status>> {
    let mut client = app.connections();
    tokio::spawn(async move { client.remove_connection(request).await })
}

fn spawn_link(
    app: &TestApp,
    uid: &str,
    provider: &str,
    provider_uid: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::LinkConnectionResponse>, tonic::Status>> {
    let mut client = app.connections();
    let request = pb::LinkConnectionRequest {
        api_key: KEY.into(),
        uid: uid.into(),
        provider: provider.into(),
        sub_provider: String::new(),
        provider_uid: provider_uid.into(),
        login_id: None,
        session: None,
    };
    tokio::spawn(async move { client.link_connection(request).await })
}

async fn execute(db: &DatabaseConnection, sql: &str) {
    db.execute_unprepared(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Holds every insert into `events` in a trigger that sleeps while
/// `test_hold` has a row (no lock: what holds is the statement's time).
async fn hold_event_inserts(db: &DatabaseConnection) {
    execute(
        db,
        "CREATE TABLE test_hold (held boolean); INSERT INTO test_hold VALUES (true); \
         CREATE FUNCTION test_hold_events() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN WHILE EXISTS (SELECT 1 FROM test_hold) LOOP PERFORM pg_sleep(0.002); \
         END LOOP; RETURN NEW; END $$; \
         CREATE TRIGGER test_hold BEFORE INSERT ON events \
         FOR EACH ROW EXECUTE FUNCTION test_hold_events()",
    )
    .await;
}

/// Shared write statements running now (held in `hold_event_inserts`'s
/// trigger: nothing else keeps one running).
async fn held_statements(db: &DatabaseConnection) -> usize {
    backends_where(
        db,
        &format!("state = 'active' AND application_name = '{SHARED_WRITES_APPLICATION}'"),
    )
    .await
}

/// Removes facebook from each of `uids` in turn; each is answered
/// (within `PATIENCE`: not held up by a waiting write).
async fn removals_answered(app: &TestApp, uids: &[&str]) {
    for uid in uids {
        let answer = tokio::time::timeout(
            PATIENCE,
            app.connections()
                .remove_connection(remove(uid, Some("facebook"))),
        )
        .await
        .unwrap_or_else(|_| panic!("{uid} waited behind the held write"))
        .unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        assert_eq!(answer.into_inner().removed.len(), 1, "{uid}");
    }
}

/// A second connection to the app's database, and a transaction on it.
async fn another_transaction(app: &TestApp) -> (DatabaseConnection, DatabaseTransaction) {
    let holder = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("second connection");
    let txn = holder.begin().await.expect("begin");
    (holder, txn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn writes_queued_behind_busy_statements_share_the_next_one() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let uids = ["h0", "h1", "q0", "q1", "q2", "k0", "l0"];
    setup(&app, &uids).await;
    app.link(KEY, "q0", "twitter", "", "tw-q0", None).await;
    let holder = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("second connection");
    hold_event_inserts(&holder).await;
    let before = stats(&app);

    let mut calls = Vec::new();
    for (n, uid) in ["h0", "h1"].into_iter().enumerate() {
        calls.push((uid, spawn_removal(&app, remove(uid, Some("facebook")))));
        until("a held statement", async || {
            held_statements(&holder).await > n
        })
        .await;
    }
    let queued = [
        ("q0", remove("q0", Some("facebook"))),
        ("q1", remove("q1", Some("facebook"))),
        ("q2", remove("q2", Some("facebook"))),
        // The same account as the first, in the same statement.
        ("q0", remove("q0", Some("twitter"))),
        (
            "k0",
            pb::RemoveConnectionRequest {
                request_id: "own".into(),
                ..remove("k0", Some("facebook"))
            },
        ),
    ];
    for (n, (uid, request)) in queued.into_iter().enumerate() {
        calls.push((uid, spawn_removal(&app, request)));
        until("a queued removal", async || stats(&app).queued > n).await;
    }
    // A new identity, and the refresh of one the account has.
    let links = [
        spawn_link(&app, "l0", "twitter", "tw-l0"),
        spawn_link(&app, "l0", "googleplus", "gp-l0"),
    ];
    until("the queued links", async || stats(&app).queued == 7).await;
    assert_eq!(held_statements(&holder).await, 2, "only the two are held");

    execute(&holder, "DELETE FROM test_hold").await;
    for (uid, call) in calls {
        let answer = call.await.expect("join");
        let answer = answer.unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        assert_eq!(answer.into_inner().removed.len(), 1, "{uid}");
    }
    let mut linked = Vec::new();
    for call in links {
        let answer = call.await.expect("join").expect("link").into_inner();
        linked.push((
            answer.identity.expect("identity").provider,
            answer.reactivated,
        ));
    }
    assert_eq!(
        linked,
        [
            ("twitter".to_owned(), false),
            ("googleplus".to_owned(), false)
        ]
    );
    for uid in ["h0", "h1", "q0", "q1", "q2", "k0"] {
        assert_eq!(providers(&app, uid).await, ["googleplus"], "{uid}");
    }
    assert_eq!(
        providers(&app, "l0").await,
        ["facebook", "googleplus", "twitter"]
    );
    let after = stats(&app);
    assert_eq!(
        (
            after.statements - before.statements,
            after.writes - before.writes,
            after.rolled_back - before.rolled_back,
        ),
        (3, 9, 0),
        "two held statements, then one for the seven queued"
    );
    let events = outbox_events(&app).await;
    let mut removed: Vec<_> = events.iter().map(|e| e.uid.as_str()).collect();
    removed.sort_unstable();
    assert_eq!(removed, ["h0", "h1", "k0", "q0", "q0", "q1", "q2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn removals_held_on_their_request_ids_hold_up_no_other() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    setup(&app, &["k0", "k1", "p0", "p1", "p2", "p3"]).await;

    let (holder, txn) = another_transaction(&app).await;
    let before = stats(&app);
    // Two of them: as many as shared statements have slots.
    let mut held = Vec::new();
    for (n, uid) in ["k0", "k1"].into_iter().enumerate() {
        let request_id = format!("held-{n}");
        another_calls_record(&txn, &request_id).await;
        let request = pb::RemoveConnectionRequest {
            request_id,
            ..remove(uid, Some("facebook"))
        };
        held.push((uid, spawn_removal(&app, request)));
        // Its shared statement gave up the wait; it waits under the lock.
        until("a keyed removal waits under the lock", async || {
            stats(&app).rolled_back - before.rolled_back > n as u64
                && writers_waiting(&holder).await > n
        })
        .await;
    }

    // Answered while the other transaction still holds the ids.
    removals_answered(&app, &["p0", "p1", "p2", "p3"]).await;
    assert_eq!(
        writers_waiting(&holder).await,
        2,
        "the keyed removals still wait"
    );

    txn.commit().await.expect("the other call commits");
    for (uid, call) in held {
        assert_refused(
            call.await.expect("join"),
            Code::InvalidArgument,
            "IDEMPOTENCY_KEY_REUSED",
        );
        let unchanged = providers(&app, uid).await;
        assert_eq!(unchanged, ["facebook", "googleplus"], "{uid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn a_link_held_on_an_identity_linked_meanwhile_holds_up_no_other() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    setup(&app, &["o0", "l0", "l1", "p0", "p1", "p2"]).await;

    let (holder, txn) = another_transaction(&app).await;
    // Another account links the identity, not yet committed.
    txn.execute_unprepared(
        "INSERT INTO identities (site_id, account_id, provider, sub_provider, provider_uid, \
         state, linked_at, updated_at) SELECT site_id, id, 'twitter', '', 'tw-shared', \
         'ACTIVE', now(), now() FROM accounts WHERE uid = 'o0'",
    )
    .await
    .expect("the other link");
    let before = stats(&app);
    let held = spawn_link(&app, "l0", "twitter", "tw-shared");
    until("the link waits under the lock", async || {
        stats(&app).rolled_back > before.rolled_back && writers_waiting(&holder).await > 0
    })
    .await;

    // Answered while the link still waits.
    removals_answered(&app, &["p0", "p1", "p2"]).await;
    let linked = app.link(KEY, "l1", "twitter", "", "tw-l1", None).await;
    assert_eq!(linked.identity.expect("identity").provider_uid, "tw-l1");
    assert_eq!(writers_waiting(&holder).await, 1, "the link still waits");

    txn.commit().await.expect("the other link commits");
    assert_refused(
        held.await.expect("join"),
        Code::AlreadyExists,
        "IDENTITY_LINKED_ELSEWHERE",
    );
    assert_eq!(providers(&app, "l0").await, ["facebook", "googleplus"]);
    assert_eq!(
        providers(&app, "o0").await,
        ["facebook", "googleplus", "twitter"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn a_statement_on_a_connection_that_died_idle_runs_its_writes_under_the_lock() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let uids = ["s0", "s1", "s2", "s3"];
    setup(&app, &uids).await;
    let holder = app.repo.connection();
    let shared = format!("application_name = '{SHARED_WRITES_APPLICATION}'");
    let mut client = app.connections();
    // The first removal opens a shared connection. Each later one is sent
    // after the shared connections were killed while idle. A lost
    // connection seen anywhere in this process (another test's) makes the
    // pool test idle connections for a second, so the statement may find
    // a live one instead: the loop stops once one met a dead one.
    client
        .remove_connection(remove(uids[0], Some("facebook")))
        .await
        .expect("first removal");
    let before = stats(&app);
    let mut answered = vec![uids[0]];
    let mut met_a_dead_connection = false;
    for uid in &uids[1..] {
        let killed = holder
            .query_all_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND {shared}"
                ),
            ))
            .await
            .expect("terminate the shared connections");
        assert!(!killed.is_empty(), "a shared connection was open");
        until("the shared connections gone", async || {
            backends_where(holder, &shared).await == 0
        })
        .await;
        let rolled_back = stats(&app).rolled_back;
        client
            .remove_connection(remove(uid, Some("facebook")))
            .await
            .unwrap_or_else(|status| panic!("{uid}: {status:?}"));
        assert_eq!(providers(&app, uid).await, ["googleplus"], "{uid}");
        answered.push(uid);
        if stats(&app).rolled_back > rolled_back {
            met_a_dead_connection = true;
            break;
        }
    }
    assert!(
        met_a_dead_connection,
        "no statement met a killed connection"
    );
    let events = outbox_events(&app).await;
    for uid in &answered {
        let removed = events.iter().filter(|e| e.uid == *uid).count();
        assert_eq!(removed, 1, "{uid}: one removal, one event");
    }
    let after = stats(&app);
    assert!(
        after.statements > before.statements,
        "{before:?} -> {after:?}"
    );
}
