//! PostgreSQL: concurrent unlocked removals share their guarded write
//! statement (issue 12, `storage::removal_batch`).
//!
//! Two removals whose request ids another transaction is inserting hold
//! both statement slots (each statement waits on the key's unique index);
//! six more removals queue meanwhile (two of them on one account) and go
//! as one statement when a slot frees. Each member gets its own outcome:
//!
//! - when the other transaction rolls back, all eight write, and the six
//!   shared one statement (of the two on one account, one guard wins and
//!   the other removal runs again under the lock);
//! - when it commits, the two held ones and the queued one whose request id
//!   it stored are refused (`IDEMPOTENCY_KEY_REUSED`) and change nothing;
//!   the shared statement fails on that key, and its other members write
//!   alone.

use std::time::{Duration, Instant};

use connections::{proto::v1 as pb, storage::RemovalBatchStats};
use sea_orm::TransactionTrait;
use tonic::{Code, Status};

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

fn with_id(uid: &str, request_id: &str) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        request_id: request_id.into(),
        ..remove(uid, Some("facebook"))
    }
}

/// Runs the scenario of the module's doc; `commit`: whether the other
/// transaction commits its request ids. Returns each removal's answer, by
/// uid, and the statements and writes the batches counted.
async fn held_then_queued(
    app: &TestApp,
    commit: bool,
) -> (
    Vec<(String, Result<pb::RemoveConnectionResponse, Status>)>,
    u64,
    u64,
) {
    app.create_site(KEY, 4712).await;
    let uids = ["h0", "h1", "q0", "q1", "q2", "q3", "q4"];
    for uid in uids {
        app.create_account(KEY, uid, &[]).await;
        app.link(KEY, uid, "facebook", "", &format!("fb-{uid}"), None)
            .await;
        app.link(KEY, uid, "googleplus", "", &format!("gp-{uid}"), None)
            .await;
    }
    app.link(KEY, "q0", "twitter", "", "tw-q0", None).await;
    let before = stats(app);

    let holder = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("second connection");
    let txn = holder.begin().await.expect("begin");
    for request_id in ["held-0", "held-1", "dup"] {
        another_calls_record(&txn, request_id).await;
    }

    let mut calls = Vec::new();
    let requests = [
        with_id("h0", "held-0"),
        with_id("h1", "held-1"),
        remove("q0", Some("facebook")),
        remove("q1", Some("facebook")),
        with_id("q2", "dup"),
        remove("q3", Some("facebook")),
        with_id("q4", "own"),
        // The same account as q0's, in the same statement: one of the two
        // guards wins, the other runs again under the lock.
        remove("q0", Some("twitter")),
    ];
    for (n, request) in requests.into_iter().enumerate() {
        let uid = request.uid.clone();
        let mut client = app.connections();
        calls.push((
            uid,
            tokio::spawn(async move { client.remove_connection(request).await }),
        ));
        let started = Instant::now();
        // The two held ones wait on the database, the rest in the queue.
        while if n < 2 {
            writers_waiting(&holder).await < n + 1
        } else {
            stats(app).queued < n - 1
        } {
            assert!(
                started.elapsed() < PATIENCE,
                "removal {n} never got in line"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if commit {
        txn.commit().await.expect("the other call commits");
    } else {
        txn.rollback().await.expect("the other call rolls back");
    }
    let mut answers = Vec::new();
    for (uid, call) in calls {
        answers.push((uid, call.await.expect("join").map(|r| r.into_inner())));
    }
    let after = stats(app);
    (
        answers,
        after.statements - before.statements,
        after.writes - before.writes,
    )
}

async fn providers(app: &TestApp, uid: &str) -> Vec<String> {
    let account = app.account(KEY, uid).await;
    account.identities.into_iter().map(|i| i.provider).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn removals_queued_behind_busy_statements_share_the_next_one() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let (answers, statements, writes) = held_then_queued(&app, false).await;
    for (uid, answer) in answers {
        let answer = answer.unwrap_or_else(|e| panic!("{uid}: {e:?}"));
        assert_eq!(answer.removed.len(), 1, "{uid}");
        assert_eq!(providers(&app, &uid).await, ["googleplus"], "{uid}");
    }
    assert_eq!(
        (statements, writes),
        (3, 8),
        "two held statements, then one for the six queued"
    );
    let events = outbox_events(&app).await;
    let mut uids: Vec<_> = events.iter().map(|e| e.uid.as_str()).collect();
    uids.sort_unstable();
    assert_eq!(uids, ["h0", "h1", "q0", "q0", "q1", "q2", "q3", "q4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn a_shared_statement_failing_on_one_request_id_refuses_only_that_member() {
    let app = TestApp::spawn(&Backend::postgres()).await;
    let (answers, statements, writes) = held_then_queued(&app, true).await;
    for (uid, answer) in answers {
        if ["h0", "h1", "q2"].contains(&uid.as_str()) {
            assert_refused(answer, Code::InvalidArgument, "IDEMPOTENCY_KEY_REUSED");
            assert_eq!(
                providers(&app, &uid).await,
                ["facebook", "googleplus"],
                "{uid} changed nothing"
            );
        } else {
            let answer = answer.unwrap_or_else(|e| panic!("{uid}: {e:?}"));
            assert_eq!(answer.removed.len(), 1, "{uid}");
            assert_eq!(providers(&app, &uid).await, ["googleplus"], "{uid}");
        }
    }
    assert_eq!(
        (statements, writes),
        (9, 8),
        "two held statements, the shared one that failed, then six alone"
    );
    let events = outbox_events(&app).await;
    let mut uids: Vec<_> = events.iter().map(|e| e.uid.as_str()).collect();
    uids.sort_unstable();
    assert_eq!(uids, ["q0", "q0", "q1", "q3", "q4"]);
}
