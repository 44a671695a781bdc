//! SQLite group commit (issue 12): writers that queue for the write turn
//! share one transaction, each in its own savepoint.
//!
//! - A write that fails inside a batch, after it wrote, changes nothing, and
//!   its neighbours in the same batch commit and are answered.
//! - Removals with a request id (a first call, its retry, a reuse) share a
//!   batch without savepoints, and the reuse changes nothing.
//! - A batch whose next writer goes away (a cancelled request) still
//!   commits: nobody is left waiting for an answer that never comes.
//! - Concurrent removals form batches, and every event is there once, at
//!   dense positions.
//! - A replay reads what is committed while a writer holds SQLite's lock
//!   (event pages are read on read-only connections of their own).
//!
//! That a crash mid-batch loses no acknowledged call is `crash.rs`: its
//! eight concurrent writers share batches on SQLite, and the server is
//! killed with SIGKILL mid-load.

use std::time::{Duration, Instant};

use connections::{proto::v1 as pb, storage::GroupCommitStats};
use sea_orm::ConnectionTrait;
use tonic::Code;

use crate::{
    events,
    helpers::{Backend, TestApp, reason},
    remove_connection::outbox_events,
};

const KEY: &str = "3_gc";
const PATIENCE: Duration = Duration::from_secs(30);

fn remove(uid: &str, provider: &str) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        api_key: KEY.into(),
        ..crate::remove_connection::remove(uid, Some(provider))
    }
}

fn stats(app: &TestApp) -> GroupCommitStats {
    app.repo
        .group_commit_stats()
        .expect("SQLite has group commit")
}

/// Waits until `count` writers queue for the write turn.
async fn queued(app: &TestApp, count: usize) {
    let deadline = Instant::now() + PATIENCE;
    while app.repo.writers_queued() < count {
        assert!(
            Instant::now() < deadline,
            "{count} writers never queued (now {})",
            app.repo.writers_queued()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn site_name(app: &TestApp) -> String {
    let row = app
        .repo
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            format!("SELECT name FROM sites WHERE api_key = '{KEY}'"),
        ))
        .await
        .expect("read site")
        .expect("site");
    row.try_get("", "name").expect("name")
}

/// Opens a batch on the connection removals and links use, with a write of
/// its own (the site's name becomes "held"), and keeps the write turn.
async fn hold_the_turn(app: &TestApp) -> connections::storage::RawWrite {
    let mut holder = app.repo.begin_raw_write().await.expect("begin");
    holder
        .execute(&format!(
            "UPDATE sites SET name = 'held' WHERE api_key = '{KEY}'"
        ))
        .await
        .expect("holder's write");
    holder
}

async fn setup(app: &TestApp, uids: &[&str]) {
    app.create_site(KEY, 4711).await;
    for uid in uids {
        app.create_account(KEY, uid, &[]).await;
        for provider in ["facebook", "googleplus"] {
            app.link(KEY, uid, provider, "", &format!("{provider}-{uid}"), None)
                .await;
        }
    }
}

#[tokio::test]
async fn a_write_failing_inside_a_batch_changes_nothing_and_its_neighbours_commit() {
    // A batch that may stay open for its queued writers however slow this
    // machine is: with the 5 ms default, a loaded machine commits each of
    // them alone and there is no batch to prove anything on.
    let app = TestApp::spawn_with(&Backend::Sqlite, |settings| {
        settings.pool.group_commit_max_age = Duration::from_secs(60);
    })
    .await;
    setup(&app, &["u1", "u2", "u3", "other"]).await;
    app.link(KEY, "other", "twitter", "", "tw-taken", None)
        .await;
    let before = stats(&app);

    // The holder opens the batch (on the connection the removals and links
    // use) and keeps the turn while four calls queue.
    let holder = hold_the_turn(&app).await;
    let mut client = app.connections();
    let first =
        tokio::spawn(async move { client.remove_connection(remove("u1", "facebook")).await });
    queued(&app, 1).await;
    // Refused after reading (nothing connected for that provider): it joins
    // without a savepoint of its own, and leaves its neighbours alone.
    let mut client = app.connections();
    let refused =
        tokio::spawn(async move { client.remove_connection(remove("u2", "linkedin")).await });
    queued(&app, 2).await;
    // Adds its login ID, then finds the identity linked to another account:
    // it fails after writing, inside the batch.
    let mut client = app.connections();
    let failing = tokio::spawn(async move {
        client
            .link_connection(pb::LinkConnectionRequest {
                api_key: KEY.into(),
                uid: "u2".into(),
                provider: "twitter".into(),
                sub_provider: String::new(),
                provider_uid: "tw-taken".into(),
                login_id: Some("fresh@example.com".into()),
                session: None,
            })
            .await
    });
    queued(&app, 3).await;
    let mut client = app.connections();
    let last =
        tokio::spawn(async move { client.remove_connection(remove("u3", "facebook")).await });
    queued(&app, 4).await;

    // The holder hands the batch on and is answered after the shared commit.
    holder
        .commit()
        .await
        .expect("holder committed with its batch");
    let first = first.await.expect("join").expect("first removal");
    let last = last.await.expect("join").expect("last removal");
    let failed = failing
        .await
        .expect("join")
        .expect_err("link of a taken identity");
    assert_eq!(failed.code(), Code::AlreadyExists, "{failed:?}");
    assert_eq!(reason(&failed), "IDENTITY_LINKED_ELSEWHERE");
    let refused = refused.await.expect("join").expect_err("nothing to remove");
    assert_eq!(reason(&refused), "NOT_CONNECTED", "{refused:?}");

    let after = stats(&app);
    let (batches, members) = (
        after.batches - before.batches,
        after.members - before.members,
    );
    // The link rolled back to its savepoint inside a batch whose other
    // members committed (the holder may have committed alone before them,
    // when its batch was older than the batch age limit).
    assert!(
        members >= 3 && members > batches && after.rolled_back > before.rolled_back,
        "the failing link shared a batch with the removals: {before:?} -> {after:?}"
    );

    assert_eq!(site_name(&app).await, "held");
    let u2 = app.account(KEY, "u2").await;
    assert!(
        u2.login_ids.is_empty(),
        "the failed link's login ID was rolled back: {:?}",
        u2.login_ids
    );
    assert!(u2.identities.iter().all(|i| i.provider != "twitter"));
    for (uid, response) in [("u1", first.into_inner()), ("u3", last.into_inner())] {
        assert_eq!(response.removed.len(), 1, "{uid}");
        let account = app.account(KEY, uid).await;
        let providers: Vec<_> = account.identities.iter().map(|i| &i.provider).collect();
        assert_eq!(providers, ["googleplus"], "{uid}");
    }
    let events = outbox_events(&app).await;
    let uids: Vec<_> = events.iter().map(|e| e.uid.as_str()).collect();
    assert_eq!(uids, ["u1", "u3"]);
}

/// Removals with a request id join a batch as one atomic step, as plain
/// ones do (their record is written with the removal): a first call, its
/// retry, a reuse of its id for another request and a plain removal share a
/// batch; the retry gets the first answer, the reuse is refused and changes
/// nothing, no member needs a savepoint, and every call is answered.
#[tokio::test]
async fn removals_with_a_request_id_share_a_batch_without_savepoints() {
    let app = TestApp::spawn_with(&Backend::Sqlite, |settings| {
        settings.pool.group_commit_max_age = Duration::from_secs(60);
    })
    .await;
    setup(&app, &["u1", "u2", "u3"]).await;
    let before = stats(&app);
    let with_id = |uid: &str| pb::RemoveConnectionRequest {
        request_id: "batch-1".into(),
        ..remove(uid, "facebook")
    };

    let holder = app.repo.begin_raw_write().await.expect("begin");
    let mut calls = Vec::new();
    for (n, request) in [
        with_id("u1"),
        with_id("u1"),
        with_id("u2"),
        remove("u3", "facebook"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut client = app.connections();
        calls.push(tokio::spawn(async move {
            client.remove_connection(request).await
        }));
        queued(&app, n + 1).await;
    }
    holder
        .commit()
        .await
        .expect("holder committed with its batch");
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.expect("join"));
    }
    let [first, retry, reused, plain] = <[_; 4]>::try_from(answers).expect("four answers");
    let first = first.expect("first call").into_inner();
    let retry = retry.expect("retry").into_inner();
    assert_eq!(
        retry.removed, first.removed,
        "the retry gets the first answer"
    );
    assert_eq!(retry.call_id, first.call_id);
    let reused = reused.expect_err("the id is the first call's");
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED", "{reused:?}");
    assert_eq!(plain.expect("plain removal").into_inner().removed.len(), 1);

    let after = stats(&app);
    assert!(
        after.members - before.members >= 2 && after.batches - before.batches < 2,
        "the writes shared a batch: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.rolled_back, before.rolled_back,
        "no member rolled back to a savepoint of its own"
    );
    let u2 = app.account(KEY, "u2").await;
    assert_eq!(u2.identities.len(), 2, "the refused reuse changed nothing");
    let events = outbox_events(&app).await;
    let uids: Vec<_> = events.iter().map(|e| e.uid.as_str()).collect();
    assert_eq!(uids, ["u1", "u3"]);
}

#[tokio::test]
async fn a_batch_whose_next_writer_goes_away_still_commits() {
    next_writer_goes_away(false).await;
}

/// The same on the direct connection (removals and links), whose savepoint
/// and rollback run inline: the next writer goes away after writing, or
/// queued, and the batch commits without its work.
#[tokio::test]
async fn a_direct_batch_whose_next_writer_goes_away_still_commits() {
    next_writer_goes_away(true).await;
}

/// A writer holds a batch with a write; the next one queues (and, `direct`,
/// writes once it has the turn), then goes away, queued or in the middle of
/// its turn: the holder is still answered, its write committed, the
/// other's not, and the turn is free again.
async fn next_writer_goes_away(direct: bool) {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    app.create_site(KEY, 4711).await;

    let holder = if direct {
        Holder::Direct(hold_the_turn(&app).await)
    } else {
        let holder = app.repo.begin_write().await.expect("begin");
        holder
            .execute_unprepared(&format!(
                "UPDATE sites SET name = 'held' WHERE api_key = '{KEY}'"
            ))
            .await
            .expect("holder's write");
        Holder::Pooled(holder)
    };
    let repo = app.repo.clone();
    let waiter = tokio::spawn(async move {
        let txn = if direct {
            let mut txn = repo.begin_raw_write().await.expect("begin");
            txn.execute(&format!(
                "UPDATE sites SET name = 'abandoned' WHERE api_key = '{KEY}'"
            ))
            .await
            .expect("the waiter's write");
            Some(txn)
        } else {
            let _txn = repo.begin_write().await;
            None
        };
        // Never finishes: it is cancelled queued, or holding the turn.
        std::future::pending::<()>().await;
        drop(txn);
    });
    queued(&app, 1).await;
    // The holder sees a writer queued and hands the batch on to it ...
    let commit = tokio::spawn(async move {
        match holder {
            Holder::Pooled(txn) => txn.commit().await,
            Holder::Direct(txn) => txn.commit().await,
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    // ... which goes away, queued or in the middle of its turn.
    waiter.abort();
    let committed = tokio::time::timeout(PATIENCE, commit)
        .await
        .expect("the holder is answered")
        .expect("join");
    committed.expect("the batch committed");
    assert_eq!(site_name(&app).await, "held");
    // The turn is free again.
    let next = tokio::time::timeout(PATIENCE, app.repo.begin_write())
        .await
        .expect("the turn came free")
        .expect("begin");
    next.rollback().await.expect("rollback");
}

enum Holder {
    Pooled(connections::storage::WriteTxn),
    Direct(connections::storage::RawWrite),
}

#[tokio::test]
async fn concurrent_removals_share_commits_and_keep_positions_dense() {
    let app = TestApp::spawn_with(&Backend::Sqlite, |settings| {
        settings.pool.group_commit_max_age = Duration::from_secs(60);
    })
    .await;
    let uids: Vec<String> = (0..32).map(|n| format!("c{n}")).collect();
    let refs: Vec<&str> = uids.iter().map(String::as_str).collect();
    setup(&app, &refs).await;
    let before = stats(&app);

    // A removal on the direct connection runs its statements without
    // yielding, so on an idle machine concurrent ones rarely overlap: a
    // holder keeps the turn until all 32 queue.
    let holder = hold_the_turn(&app).await;
    let calls: Vec<_> = uids
        .iter()
        .map(|uid| {
            let mut client = app.connections();
            let request = remove(uid, "facebook");
            tokio::spawn(async move { client.remove_connection(request).await })
        })
        .collect();
    queued(&app, 32).await;
    holder
        .commit()
        .await
        .expect("holder committed with its batch");
    for call in calls {
        let response = call.await.expect("join").expect("removal").into_inner();
        assert_eq!(response.removed.len(), 1);
    }

    let after = stats(&app);
    assert!(
        after.members - before.members >= 32 && after.batches - before.batches < 32,
        "32 concurrent removals shared commits: {before:?} -> {after:?}"
    );
    let mut events = app.events();
    let (replayed, _) = crate::process::replay_all(&mut events, PATIENCE).await;
    let positions: Vec<u64> = replayed.iter().map(|e| e.position).collect();
    let expected: Vec<u64> = (1..=positions.len() as u64).collect();
    assert_eq!(positions, expected, "dense positions");
    assert_eq!(
        replayed.iter().filter(|e| e.provider == "facebook").count(),
        32
    );
}

/// The direct connection does not checkpoint the write-ahead log inside
/// its commits (that would hold a runtime thread for the copy and the file
/// syncs): a commit that finds the log past SQLite's threshold has it
/// checkpointed on the pool.
#[tokio::test]
async fn the_write_ahead_log_is_checkpointed_off_the_write_path() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    setup(&app, &["w1"]).await;
    let before = stats(&app);
    let mut client = app.connections();
    let deadline = Instant::now() + PATIENCE;
    // Each removal and re-link writes a few pages; a thousand pages is some
    // hundreds of them.
    while stats(&app).checkpoints == before.checkpoints {
        assert!(
            Instant::now() < deadline,
            "no checkpoint: {before:?} -> {:?}",
            stats(&app)
        );
        client
            .remove_connection(remove("w1", "facebook"))
            .await
            .expect("removal");
        app.link(KEY, "w1", "facebook", "", "facebook-w1", None)
            .await;
    }
}

/// Another process's writer (a command-line tool on the same file) holds
/// SQLite's write lock: a removal on the direct connection waits for it,
/// off the runtime's threads (the server keeps answering meanwhile), and
/// succeeds once it is released.
#[tokio::test]
async fn a_direct_write_waits_for_another_processs_writer() {
    use sea_orm::TransactionTrait;

    let app = TestApp::spawn(&Backend::Sqlite).await;
    setup(&app, &["p1"]).await;
    let file: String = app
        .repo
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
        ))
        .await
        .expect("database list")
        .expect("main database")
        .try_get("", "file")
        .expect("file");
    let other = sea_orm::Database::connect(format!("sqlite://{file}"))
        .await
        .expect("another connection");
    let holder = other
        .begin_with_options(sea_orm::TransactionOptions {
            isolation_level: None,
            access_mode: None,
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
        })
        .await
        .expect("the other writer takes the lock");

    let mut client = app.connections();
    let mut removal =
        tokio::spawn(async move { client.remove_connection(remove("p1", "facebook")).await });
    // Held back while the lock is taken ...
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut removal)
            .await
            .is_err(),
        "the removal did not wait for SQLite's lock"
    );
    // ... while reads are answered.
    let account = app.account(KEY, "p1").await;
    assert_eq!(account.identities.len(), 2);

    holder.commit().await.expect("the other writer lets go");
    let removed = tokio::time::timeout(PATIENCE, removal)
        .await
        .expect("the removal went on")
        .expect("join")
        .expect("removal");
    assert_eq!(removed.into_inner().removed.len(), 1);
    let account = app.account(KEY, "p1").await;
    assert_eq!(account.identities.len(), 1);
}

/// Event pages are read on read-only connections of their own, off the
/// runtime's threads: a writer holding SQLite's write lock (an open batch
/// on the direct connection) does not keep a subscriber from replaying
/// what is committed, nor does the subscriber see the uncommitted write.
#[tokio::test]
async fn a_replay_reads_committed_events_while_a_writer_holds_the_lock() {
    let app = TestApp::spawn(&Backend::Sqlite).await;
    setup(&app, &["u1"]).await;
    app.connections()
        .remove_connection(remove("u1", "facebook"))
        .await
        .expect("removal");
    let holder = hold_the_turn(&app).await;

    let mut stream = events::subscribe(&app, events::from(pb::StartFrom::Beginning)).await;
    let replayed = events::events(&mut stream, 1).await;
    assert_eq!(
        (
            replayed[0].position,
            replayed[0].uid.as_str(),
            replayed[0].provider.as_str()
        ),
        (1, "u1", "facebook")
    );
    assert_eq!(events::caught_up(&mut stream).await, 1);
    assert_ne!(
        site_name(&app).await,
        "held",
        "the holder's write is not committed"
    );
    holder.rollback().await.expect("rollback");
}
