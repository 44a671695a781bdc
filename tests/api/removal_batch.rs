//! PostgreSQL: concurrent unlocked removals share their guarded write
//! statement (issue 12, `storage::removal_batch`).
//!
//! - Two removals held on a lock of the events table fill both statement
//!   slots; four more queue meanwhile (two of them on one account) and go
//!   as one statement once the lock is released. All write; of the two on
//!   one account one guard wins and the other runs again under the lock. A
//!   removal with a request id sent meanwhile does not queue: it runs
//!   alone, as before.
//! - Removals with a request id held on that id's unique index (another
//!   transaction is inserting it), as many as shared statements have
//!   slots, hold up no other removal: plain removals sent meanwhile are
//!   answered while they still wait.

use std::time::{Duration, Instant};

use connections::{proto::v1 as pb, storage::RemovalBatchStats};
use sea_orm::{ConnectionTrait, TransactionTrait};
use tonic::Code;

use crate::{
    deadlines::writers_waiting,
    helpers::{Backend, TestApp, assert_refused},
    remove_connection::{KEY, another_calls_record, outbox_events, remove},
};

const PATIENCE: Duration = Duration::from_secs(30);

fn stats(app: &TestApp) -> RemovalBatchStats {
    app.repo
        .removal_batch_stats()
        .expect("PostgreSQL batches removal writes")
}

/// Waits until `ready` holds, within `PATIENCE`.
async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !ready().await {
        assert!(started.elapsed() < PATIENCE, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    account.identities.into_iter().map(|i| i.provider).collect()
}

fn spawn_removal(
    app: &TestApp,
    request: pb::RemoveConnectionRequest,
) -> tokio::task::JoinHandle<Result<tonic::Response<pb::RemoveConnectionResponse>, tonic::Status>> {
    let mut client = app.connections();
    tokio::spawn(async move { client.remove_connection(request).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn removals_queued_behind_busy_statements_share_the_next_one() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let uids = ["h0", "h1", "q0", "q1", "q2", "k0"];
    setup(&app, &uids).await;
    app.link(KEY, "q0", "twitter", "", "tw-q0", None).await;
    let before = stats(&app);

    // Appending events waits for this lock: both slots' statements hold.
    let holder = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("second connection");
    let txn = holder.begin().await.expect("begin");
    txn.execute_unprepared("LOCK TABLE events IN SHARE MODE")
        .await
        .expect("lock events");
    let mut calls = Vec::new();
    for (n, uid) in ["h0", "h1"].into_iter().enumerate() {
        calls.push((uid, spawn_removal(&app, remove(uid, Some("facebook")))));
        until("a held statement", async || {
            writers_waiting(&holder).await > n
        })
        .await;
    }
    let queued = [
        remove("q0", Some("facebook")),
        remove("q1", Some("facebook")),
        remove("q2", Some("facebook")),
        // The same account as the first, in the same statement.
        remove("q0", Some("twitter")),
    ];
    for (n, request) in queued.into_iter().enumerate() {
        let uid = if n == 3 { "q0" } else { ["q0", "q1", "q2"][n] };
        calls.push((uid, spawn_removal(&app, request)));
        until("a queued removal", async || stats(&app).queued > n).await;
    }
    // With a request id: alone, so it waits on the lock beside the two.
    let keyed = pb::RemoveConnectionRequest {
        request_id: "own".into(),
        ..remove("k0", Some("facebook"))
    };
    calls.push(("k0", spawn_removal(&app, keyed)));
    until("the keyed removal waits alone", async || {
        writers_waiting(&holder).await > 2
    })
    .await;
    assert_eq!(stats(&app).queued, 4, "the keyed removal did not queue");

    txn.rollback().await.expect("release the lock");
    for (uid, call) in calls {
        let answer = call.await.expect("join");
        let answer = answer.unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        assert_eq!(answer.into_inner().removed.len(), 1, "{uid}");
    }
    for uid in uids {
        assert_eq!(providers(&app, uid).await, ["googleplus"], "{uid}");
    }
    let after = stats(&app);
    assert_eq!(
        (
            after.statements - before.statements,
            after.writes - before.writes
        ),
        (3, 6),
        "two held statements, then one for the four queued"
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

    let holder = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("second connection");
    let txn = holder.begin().await.expect("begin");
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
        until("a keyed removal waits", async || {
            writers_waiting(&holder).await > n
        })
        .await;
    }

    // Answered while the other transaction still holds the ids.
    for uid in ["p0", "p1", "p2", "p3"] {
        let answer = tokio::time::timeout(
            PATIENCE,
            app.connections()
                .remove_connection(remove(uid, Some("facebook"))),
        )
        .await
        .unwrap_or_else(|_| panic!("{uid} waited behind the held removals"))
        .unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        assert_eq!(answer.into_inner().removed.len(), 1, "{uid}");
    }
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
