//! A call that outlives the server's deadline (`call_timeout`): the server
//! drops its work, which rolls back, and answers. Nothing half-done is left,
//! no event is written, and the account is not wedged.
//!
//! The deadline is the server's own, not a client's `grpc-timeout`: a client
//! that gives up fires its timer on its own side, and its server may still be
//! inside the same deadline (it started counting on receipt) when the
//! database lets the work through; only the server's answer says that the
//! work was dropped.

use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tonic::Code;

use crate::{
    helpers::{Backend, TestApp},
    on_both_backends,
    remove_connection::{outbox_events, remove},
};

on_both_backends!(a_deadline_shorter_than_the_database_rolls_the_removal_back);

/// A write transaction on a connection of its own, beside the server's: on
/// SQLite it holds the database's write lock from the start (IMMEDIATE).
pub(crate) async fn begin_beside(
    app: &TestApp,
) -> (sea_orm::DatabaseConnection, DatabaseTransaction) {
    let holder = sea_orm::Database::connect(app.database_url.as_str())
        .await
        .expect("second connection");
    let txn = holder
        .begin_with_options(TransactionOptions {
            isolation_level: None,
            access_mode: None,
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        })
        .await
        .expect("begin");
    (holder, txn)
}

/// Blocks writers of account `uid`: its row lock on PostgreSQL, the
/// database's write lock on SQLite. Held until the transaction ends.
pub(crate) async fn hold_writers(
    app: &TestApp,
    uid: &str,
) -> (sea_orm::DatabaseConnection, DatabaseTransaction) {
    let (holder, txn) = begin_beside(app).await;
    if holder.get_database_backend() == sea_orm::DbBackend::Postgres {
        txn.execute_unprepared(&format!(
            "SELECT id FROM accounts WHERE uid = '{uid}' FOR UPDATE"
        ))
        .await
        .expect("lock the account row");
    }
    (holder, txn)
}

/// Changes account `uid` in `txn` (from [`hold_writers`]) as every writer
/// of its identities does: `change`, then a touch of the account row.
pub(crate) async fn change_held_account(txn: &DatabaseTransaction, uid: &str, change: &str) {
    txn.execute_unprepared(change)
        .await
        .expect("change under the lock");
    txn.execute_unprepared(&format!(
        "UPDATE accounts SET updated_at = updated_at WHERE uid = '{uid}'"
    ))
    .await
    .expect("touch the account");
}

/// PostgreSQL: waits until a writer queues behind [`hold_writers`], and
/// checks that it got there as a conflict of an unlocked write (one more
/// than `conflicts_before`). SQLite's writer waits in the pool, unseen.
pub(crate) async fn queued_as_a_conflict(
    backend: &Backend,
    holder: &sea_orm::DatabaseConnection,
    conflicts_before: u64,
) {
    if matches!(backend, Backend::Postgres(_)) {
        until_a_writer_waits(holder).await;
        assert!(
            connections::telemetry::metrics::storage().write_conflicts() > conflicts_before,
            "the unlocked write did not see the held account as a conflict"
        );
    }
}

/// PostgreSQL: which statements of this database [`writers_waiting`]
/// counts: not a shared write statement (`SHARED_WRITES_APPLICATION`),
/// which gives a lock wait up after 10 ms and sends its writes to run again
/// under the lock, where they wait as any writer does.
fn waiting_writers() -> String {
    format!(
        "wait_event_type = 'Lock' AND application_name <> '{}'",
        connections::storage::SHARED_WRITES_APPLICATION
    )
}

/// PostgreSQL: statements of this database waiting for a lock now (not
/// counting shared write statements).
pub(crate) async fn writers_waiting(holder: &sea_orm::DatabaseConnection) -> usize {
    backends_where(holder, &waiting_writers()).await
}

/// PostgreSQL: backends of this database (`holder`'s) where `condition`
/// holds (on `pg_stat_activity`).
pub(crate) async fn backends_where(holder: &sea_orm::DatabaseConnection, condition: &str) -> usize {
    let count: i64 = holder
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND {condition}"
            ),
        ))
        .await
        .expect("pg_stat_activity")
        .expect("a row")
        .try_get("", "n")
        .expect("n");
    usize::try_from(count).unwrap_or(0)
}

/// Waits until `ready` holds, within 30 s (then fails, naming `what`).
pub(crate) async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !ready().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// PostgreSQL: waits until a statement of the database waits for a lock
/// (a writer queued behind [`hold_writers`]).
pub(crate) async fn until_a_writer_waits(holder: &sea_orm::DatabaseConnection) {
    until("a writer waits", async || writers_waiting(holder).await > 0).await;
}

/// PostgreSQL: terminates the backend of the writer waiting behind a lock
/// of `holder`, and checks that the call is neither answered nor lost: a
/// write that waits on a lock does so in a transaction (a shared autocommit
/// statement gives the wait up), which the lost connection rolled back, so
/// the call runs again and waits again, on another backend.
pub(crate) async fn writer_killed_while_waiting_is_retried<T>(
    holder: &sea_orm::DatabaseConnection,
    call: &tokio::task::JoinHandle<Result<tonic::Response<T>, tonic::Status>>,
) {
    until_a_writer_waits(holder).await;
    let killed = holder
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT pid, pg_terminate_backend(pid) AS gone FROM pg_stat_activity \
                 WHERE datname = current_database() AND {}",
                waiting_writers()
            ),
        ))
        .await
        .expect("terminate the waiting backend");
    let killed: Vec<i32> = killed
        .iter()
        .map(|row| row.try_get("", "pid").expect("pid"))
        .collect();
    assert_eq!(killed.len(), 1, "one writer waited");
    let condition = format!("{} AND pid <> {}", waiting_writers(), killed[0]);
    until("the call waits again, on another backend", async || {
        assert!(
            !call.is_finished(),
            "the call ended instead of running again"
        );
        backends_where(holder, &condition).await > 0
    })
    .await;
}

async fn a_deadline_shorter_than_the_database_rolls_the_removal_back(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |settings| {
        // Every call of the test has this deadline, not only the held one:
        // on a loaded CI machine a PostgreSQL removal that meets the first
        // call's rollback took 165 ms, and 300 ms failed a run.
        settings.security.call_timeout = Duration::from_secs(2);
    })
    .await;
    app.create_site("3_a", 1).await;
    app.create_account("3_a", "u1", &[("a@x.com", true)]).await;
    app.link("3_a", "u1", "facebook", "", "fb-1", None).await;

    let (holder, txn) = hold_writers(&app, "u1").await;
    let status = app
        .connections()
        .remove_connection(remove("u1", Some("facebook")))
        .await
        .expect_err("the database did not answer in time");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The server's answer, not a client-side timer's.
    assert!(std::error::Error::source(&status).is_none(), "{status:?}");
    txn.rollback().await.expect("release");
    holder.close().await.expect("close");

    // Not wedged: the next removal of the same account goes through, and
    // it is the only one that ever happened.
    let done = app
        .connections()
        .remove_connection(remove("u1", Some("facebook")))
        .await
        .expect("the account is free again")
        .into_inner();
    assert_eq!(done.removed.len(), 1, "the first call removed nothing");
    let events = outbox_events(&app).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].call_id, done.call_id);
}
