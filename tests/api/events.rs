//! EventService: positions, replay then live, filters, checkpoints,
//! retention, slow subscribers, replicas and shutdown. Events are written at
//! the storage level through the server's own repository, the way a removal
//! writes them (append in the transaction, then `outbox_committed`).

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use connections::{
    domain::{ConnectionRemoved, EventSource, RemovalMode},
    proto::v1::{self as pb, subscribe_response::Message},
    storage::{entities::event, events::NotificationListener, outbox},
};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tonic::{Code, Streaming};

use crate::{
    helpers::{Backend, TestApp, assert_refused, bad_fields},
    on_both_backends,
};

/// Longest wait for anything that should happen at once.
const PATIENCE: Duration = Duration::from_secs(20);

on_both_backends!(
    replay_then_live_gives_dense_positions,
    a_replay_over_several_pages_arrives_whole_and_in_order,
    concurrent_writers_are_delivered_exactly_once_in_order,
    a_late_committing_transaction_is_not_skipped,
    subscriptions_resume_after_a_position_or_a_consumer_checkpoint,
    commit_position_never_moves_back,
    filters_select_api_keys_providers_and_sources,
    idle_streams_get_caught_up_then_heartbeats,
    a_slow_subscriber_does_not_stop_writers_and_catches_up,
    two_replicas_share_one_database,
    a_write_on_a_replica_that_does_not_lead_wakes_the_leader,
    a_listener_asks_for_a_table_read_once_it_listens,
    pruned_positions_are_refused_with_the_earliest_position,
    shutdown_ends_open_streams,
    shutdown_does_not_wait_for_a_client_that_never_reads,
    bad_subscribe_requests_are_refused,
);

/// A realistic event, as RemoveConnection / UnlinkAccount would write it.
pub fn removed(api_key: &str, provider: &str, source: EventSource) -> ConnectionRemoved {
    let id = uuid::Uuid::new_v4().to_string();
    ConnectionRemoved {
        event_id: id.clone(),
        occurred_at: Utc::now(),
        api_key: api_key.into(),
        vhost: 1001,
        uid: format!("uid-{}", &id[..8]),
        provider: provider.into(),
        sub_provider: String::new(),
        provider_uid: format!("{provider}-{}", &id[..8]),
        mode: RemovalMode::Hard,
        removed_login_ids: vec![],
        provider_logout_requested: provider == "facebook",
        source,
        cid: Some("settings-page".into()),
        call_id: uuid::Uuid::new_v4().to_string(),
        actor: "anonymous".into(),
        remaining_login_methods: 1,
        traceparent: None,
    }
}

fn facebook() -> ConnectionRemoved {
    removed("3_site", "facebook", EventSource::RemoveConnection)
}

/// Commits `events` in one transaction, like one removal, and returns once
/// the sequencer has given them positions (so that a subscription started
/// next replays them before `CaughtUp`).
async fn write(app: &TestApp, events: &[ConnectionRemoved]) {
    let txn = app.repo.begin_write().await.expect("begin");
    outbox::append(&*txn, events).await.expect("append");
    txn.commit().await.expect("commit");
    app.repo.outbox_committed();
    sequenced(app).await;
}

/// Waits until no committed event lacks a position. The sequencer runs in
/// the background and no message says when it is done, so this polls the
/// table (bounded by `PATIENCE`).
async fn sequenced(app: &TestApp) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let unsequenced = event::Entity::find()
                .filter(event::Column::Position.is_null())
                .count(app.repo.connection())
                .await
                .expect("count");
            if unsequenced == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("events were not sequenced");
}

async fn write_n(app: &TestApp, n: usize) -> Vec<ConnectionRemoved> {
    let events: Vec<_> = (0..n).map(|_| facebook()).collect();
    write(app, &events).await;
    events
}

pub(crate) async fn subscribe(
    app: &TestApp,
    request: pb::SubscribeRequest,
) -> Streaming<pb::SubscribeResponse> {
    app.events()
        .subscribe(request)
        .await
        .expect("subscribe")
        .into_inner()
}

pub(crate) fn from(start: pb::StartFrom) -> pb::SubscribeRequest {
    pb::SubscribeRequest {
        start_from: start.into(),
        ..Default::default()
    }
}

async fn next(stream: &mut Streaming<pb::SubscribeResponse>) -> Message {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("no message in time")
        .expect("stream failed")
        .expect("stream ended")
        .message
        .expect("empty message")
}

/// The next message that is not a heartbeat.
async fn next_non_heartbeat(stream: &mut Streaming<pb::SubscribeResponse>) -> Message {
    loop {
        match next(stream).await {
            Message::Heartbeat(_) => {}
            other => return other,
        }
    }
}

async fn next_event(stream: &mut Streaming<pb::SubscribeResponse>) -> pb::ConnectionRemoved {
    match next_non_heartbeat(stream).await {
        Message::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

pub(crate) async fn events(
    stream: &mut Streaming<pb::SubscribeResponse>,
    n: usize,
) -> Vec<pb::ConnectionRemoved> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_event(stream).await);
    }
    out
}

pub(crate) async fn caught_up(stream: &mut Streaming<pb::SubscribeResponse>) -> u64 {
    match next_non_heartbeat(stream).await {
        Message::CaughtUp(c) => c.head_position,
        other => panic!("expected CaughtUp, got {other:?}"),
    }
}

fn positions(events: &[pb::ConnectionRemoved]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

async fn replay_then_live_gives_dense_positions(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let written = write_n(&app, 3).await;
    let mut stream = subscribe(&app, from(pb::StartFrom::Beginning)).await;
    let replayed = events(&mut stream, 3).await;
    assert_eq!(positions(&replayed), [1, 2, 3]);
    assert_eq!(replayed[0].event_id, written[0].event_id);
    assert_eq!(replayed[0].provider, "facebook");
    assert_eq!(replayed[0].source(), pb::EventSource::RemoveConnection);
    assert_eq!(replayed[0].cid, "settings-page");
    assert_eq!(caught_up(&mut stream).await, 3);

    write_n(&app, 2).await;
    let live = events(&mut stream, 2).await;
    assert_eq!(positions(&live), [4, 5]);
}

/// Replay reads the table in pages and hands events to the stream in
/// batches: none of those seams may drop, repeat or reorder an event.
async fn a_replay_over_several_pages_arrives_whole_and_in_order(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut written = Vec::new();
    for _ in 0..3 {
        written.extend(write_n(&app, 411).await);
    }
    let mut stream = subscribe(&app, from(pb::StartFrom::Beginning)).await;
    let replayed = events(&mut stream, written.len()).await;
    assert_eq!(positions(&replayed), (1..=1233).collect::<Vec<_>>());
    let ids: Vec<_> = replayed.iter().map(|e| e.event_id.as_str()).collect();
    let expected: Vec<_> = written.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, expected);
    assert_eq!(caught_up(&mut stream).await, 1233);
}

async fn concurrent_writers_are_delivered_exactly_once_in_order(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut stream = subscribe(&app, from(pb::StartFrom::Now)).await;
    assert_eq!(caught_up(&mut stream).await, 0);

    let app = std::sync::Arc::new(app);
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for _ in 0..10 {
                    let events = write_n(&app, 2).await;
                    ids.extend(events.into_iter().map(|e| e.event_id));
                }
                ids
            })
        })
        .collect();
    let mut written = HashSet::new();
    for writer in writers {
        written.extend(writer.await.expect("writer"));
    }
    let received = events(&mut stream, 160).await;
    assert_eq!(positions(&received), (1..=160).collect::<Vec<_>>());
    let ids: HashSet<_> = received.into_iter().map(|e| e.event_id).collect();
    assert_eq!(ids, written);
}

async fn a_late_committing_transaction_is_not_skipped(backend: Backend) {
    let app = std::sync::Arc::new(TestApp::spawn(&backend).await);
    let mut stream = subscribe(&app, from(pb::StartFrom::Beginning)).await;
    assert_eq!(caught_up(&mut stream).await, 0);

    // The late writer takes its id first and commits last.
    let late = facebook();
    let txn = app.repo.begin_write().await.expect("begin");
    outbox::append(&*txn, std::slice::from_ref(&late))
        .await
        .expect("append");

    let others = {
        let app = app.clone();
        tokio::spawn(async move {
            for _ in 0..3 {
                write_n(&app, 1).await;
            }
        })
    };
    if matches!(backend, Backend::Postgres(_)) {
        // PostgreSQL writers do not wait for each other: the others commit
        // and are delivered while the late transaction is still open.
        tokio::time::timeout(PATIENCE, others)
            .await
            .expect("writers blocked")
            .expect("writers");
        let first = events(&mut stream, 3).await;
        assert_eq!(positions(&first), [1, 2, 3]);
        txn.commit().await.expect("commit");
        app.repo.outbox_committed();
        let last = next_event(&mut stream).await;
        assert_eq!((last.position, last.event_id), (4, late.event_id));
    } else {
        // SQLite has one writer: the others wait for the open transaction.
        txn.commit().await.expect("commit");
        app.repo.outbox_committed();
        others.await.expect("writers");
        let all = events(&mut stream, 4).await;
        assert_eq!(positions(&all), [1, 2, 3, 4]);
        assert_eq!(all[0].event_id, late.event_id);
    }
}

async fn subscriptions_resume_after_a_position_or_a_consumer_checkpoint(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    write_n(&app, 5).await;

    let mut stream = subscribe(
        &app,
        pb::SubscribeRequest {
            start_from: pb::StartFrom::AfterPosition.into(),
            after_position: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(positions(&events(&mut stream, 3).await), [3, 4, 5]);
    assert_eq!(caught_up(&mut stream).await, 5);

    let committed = app
        .events()
        .commit_position(pb::CommitPositionRequest {
            consumer: "billing".into(),
            position: 4,
        })
        .await
        .expect("commit position")
        .into_inner();
    assert_eq!(committed.position, 4);
    let mut resumed = subscribe(
        &app,
        pb::SubscribeRequest {
            consumer: "billing".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next_event(&mut resumed).await.position, 5);
    assert_eq!(caught_up(&mut resumed).await, 5);

    // A consumer that never committed starts at the beginning.
    let mut fresh = subscribe(
        &app,
        pb::SubscribeRequest {
            consumer: "newcomer".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(positions(&events(&mut fresh, 5).await), [1, 2, 3, 4, 5]);
}

async fn commit_position_never_moves_back(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    write_n(&app, 5).await;
    // The head moves once the sequencer has stamped the rows.
    let mut stream = subscribe(&app, from(pb::StartFrom::Beginning)).await;
    events(&mut stream, 5).await;

    let mut client = app.events();
    let commit = |position| pb::CommitPositionRequest {
        consumer: "audit".into(),
        position,
    };
    let first = client
        .commit_position(commit(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.consumer.as_str(), first.position), ("audit", 3));
    assert!(!first.call_id.is_empty());
    let back = client
        .commit_position(commit(1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.position, 3);
    let forward = client
        .commit_position(commit(5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forward.position, 5);

    let beyond = assert_refused(
        client.commit_position(commit(6)).await,
        Code::InvalidArgument,
        "INVALID_PARAMETER",
    );
    assert_eq!(bad_fields(&beyond), ["position"]);
    assert_refused(
        client
            .commit_position(pb::CommitPositionRequest {
                consumer: String::new(),
                position: 1,
            })
            .await,
        Code::InvalidArgument,
        "MISSING_PARAMETER",
    );
}

async fn filters_select_api_keys_providers_and_sources(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    write(
        &app,
        &[
            removed("3_a", "facebook", EventSource::RemoveConnection), // 1: wanted
            removed("3_b", "facebook", EventSource::RemoveConnection), // 2: other site
            removed("3_a", "twitter", EventSource::RemoveConnection),  // 3: other provider
            removed("3_a", "facebook", EventSource::UnlinkAccount),    // 4: other source
            removed("3_a", "microsoft", EventSource::RemoveConnection), // 5: wanted (alias)
        ],
    )
    .await;
    let request = pb::SubscribeRequest {
        start_from: pb::StartFrom::Beginning.into(),
        api_keys: vec!["3_a".into()],
        providers: vec!["FaceBook".into(), "messenger".into()],
        sources: vec![pb::EventSource::RemoveConnection.into()],
        ..Default::default()
    };
    let mut stream = subscribe(&app, request).await;
    assert_eq!(positions(&events(&mut stream, 2).await), [1, 5]);
    assert_eq!(caught_up(&mut stream).await, 5);

    // Live events go through the same filter.
    write(
        &app,
        &[removed("3_b", "twitter", EventSource::UnlinkAccount)],
    )
    .await;
    write(
        &app,
        &[removed("3_a", "facebook", EventSource::RemoveConnection)],
    )
    .await;
    let live = next_event(&mut stream).await;
    assert_eq!((live.position, live.api_key.as_str()), (7, "3_a"));
}

async fn idle_streams_get_caught_up_then_heartbeats(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    write_n(&app, 2).await;
    let mut stream = subscribe(
        &app,
        pb::SubscribeRequest {
            start_from: pb::StartFrom::Beginning.into(),
            heartbeat_seconds: 1,
            ..Default::default()
        },
    )
    .await;
    events(&mut stream, 2).await;
    assert!(matches!(next(&mut stream).await, Message::CaughtUp(c) if c.head_position == 2));
    match next(&mut stream).await {
        Message::Heartbeat(beat) => {
            assert_eq!(beat.head_position, 2);
            assert!(beat.time.is_some());
        }
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    // CaughtUp comes once; afterwards only heartbeats while idle.
    assert!(matches!(next(&mut stream).await, Message::Heartbeat(_)));
}

async fn a_slow_subscriber_does_not_stop_writers_and_catches_up(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    // Subscribed and never reading while more events than the live channel
    // holds are written. Caught up first: an event written before the
    // stream's first read of the table would come before `CaughtUp`.
    let mut stream = subscribe(&app, from(pb::StartFrom::Now)).await;
    assert_eq!(caught_up(&mut stream).await, 0);
    const BATCHES: usize = 60;
    const PER_BATCH: usize = 100;
    for _ in 0..BATCHES {
        tokio::time::timeout(PATIENCE, write_n(&app, PER_BATCH))
            .await
            .expect("a writer was held up by a slow subscriber");
    }
    let received = events(&mut stream, BATCHES * PER_BATCH).await;
    assert_eq!(
        positions(&received),
        (1..=(BATCHES * PER_BATCH) as u64).collect::<Vec<_>>()
    );
}

async fn two_replicas_share_one_database(backend: Backend) {
    // SQLite is one file per process here; replicas are a PostgreSQL setup.
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    let a = TestApp::spawn(&backend).await;
    let b = TestApp::spawn_on(&a.database_url, |_| {}).await;
    let mut on_b = subscribe(&b, from(pb::StartFrom::Now)).await;
    let mut on_a = subscribe(&a, from(pb::StartFrom::Now)).await;
    assert_eq!(caught_up(&mut on_b).await, 0);
    assert_eq!(caught_up(&mut on_a).await, 0);

    let written = write_n(&a, 2).await;
    let received = events(&mut on_b, 2).await;
    assert_eq!(positions(&received), [1, 2]);
    assert_eq!(received[1].event_id, written[1].event_id);

    // And the other way round, whichever replica leads the sequencing.
    let written = write_n(&b, 1).await;
    let on_a_events = events(&mut on_a, 3).await;
    assert_eq!(positions(&on_a_events), [1, 2, 3]);
    assert_eq!(on_a_events[2].event_id, written[0].event_id);
    assert_eq!(next_event(&mut on_b).await.position, 3);

    // The first replica (most likely the sequencer) goes away: the other
    // takes over the sequencing.
    a.stop().await;
    let written = write_n(&b, 1).await;
    let after_failover = next_event(&mut on_b).await;
    assert_eq!(
        (after_failover.position, after_failover.event_id),
        (4, written[0].event_id.clone())
    );
    b.stop().await;
}

async fn a_write_on_a_replica_that_does_not_lead_wakes_the_leader(backend: Backend) {
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    // No poll within the test's patience: only a write's wake-up can get
    // its rows stamped, in-process on the leader, by NOTIFY from the other.
    let asleep = |settings: &mut connections::config::Settings| {
        settings.events.poll_interval = Duration::from_secs(3600);
    };
    let a = TestApp::spawn_with(&backend, asleep).await;
    let b = TestApp::spawn_on(&a.database_url, asleep).await;
    let mut on_a = subscribe(&a, from(pb::StartFrom::Now)).await;
    assert_eq!(caught_up(&mut on_a).await, 0);
    // One of the two leads; the other's writes reach it by NOTIFY. `write_n`
    // waits until its rows are stamped.
    for round in 0..3_u64 {
        let on_b = write_n(&b, 1).await;
        let on_a_written = write_n(&a, 1).await;
        let received = events(&mut on_a, 2).await;
        assert_eq!(positions(&received), [2 * round + 1, 2 * round + 2]);
        assert_eq!(received[0].event_id, on_b[0].event_id);
        assert_eq!(received[1].event_id, on_a_written[0].event_id);
    }
    a.stop().await;
    b.stop().await;
}

/// The sequencer and the fan-out read the table whenever their listener
/// answers `None`. A `NOTIFY` sent before the `LISTEN` is in place is heard by
/// nobody, so the listener must answer `None` once it listens, or a commit
/// announced in that moment (another replica's, at the sequencer's start)
/// waited for the next poll (`a_write_on_a_replica_that_does_not_lead_wakes_the_leader`
/// failed so, with its poll an hour away).
async fn a_listener_asks_for_a_table_read_once_it_listens(backend: Backend) {
    if matches!(backend, Backend::Sqlite) {
        return;
    }
    let app = TestApp::spawn(&backend).await;
    let mut listener = NotificationListener::new(app.repo.clone(), "connections_test_wake");
    let first = tokio::time::timeout(PATIENCE, listener.wait()).await;
    assert_eq!(
        first,
        Ok(None),
        "the first answer, once listening, is a table read"
    );
    app.repo
        .connection()
        .execute_unprepared("SELECT pg_notify('connections_test_wake', '7')")
        .await
        .expect("notify");
    let heard = tokio::time::timeout(PATIENCE, listener.wait()).await;
    assert_eq!(
        heard,
        Ok(Some(7)),
        "a notification after the LISTEN is heard"
    );
    // Its connection goes back before the server's pool closes.
    drop(listener);
    app.stop().await;
}

async fn pruned_positions_are_refused_with_the_earliest_position(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |settings| {
        settings.events.retention = Duration::from_secs(24 * 3600);
        settings.events.prune_interval = Duration::from_millis(100);
    })
    .await;
    let old: Vec<_> = (0..3)
        .map(|_| {
            let mut event = facebook();
            event.occurred_at = Utc::now() - chrono::Duration::days(2);
            event
        })
        .collect();
    write(&app, &old).await;
    write_n(&app, 2).await;
    app.events()
        .commit_position(pb::CommitPositionRequest {
            consumer: "laggard".into(),
            position: 0,
        })
        .await
        .expect("commit");

    // Retention runs in the background: wait until it has moved.
    tokio::time::timeout(PATIENCE, async {
        while app
            .repo
            .sequence_state()
            .await
            .expect("state")
            .pruned_through
            < 3
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("pruning did not happen");

    let pruned = assert_refused(
        app.events()
            .subscribe(pb::SubscribeRequest {
                start_from: pb::StartFrom::AfterPosition.into(),
                after_position: 1,
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
        "POSITION_PRUNED",
    );
    let info = tonic_types::StatusExt::get_error_details(&pruned)
        .error_info()
        .cloned()
        .expect("error info");
    assert_eq!(info.metadata["earliest_position"], "4");
    assert_refused(
        app.events()
            .subscribe(pb::SubscribeRequest {
                consumer: "laggard".into(),
                ..Default::default()
            })
            .await,
        Code::OutOfRange,
        "POSITION_PRUNED",
    );

    let mut from_beginning = subscribe(&app, from(pb::StartFrom::Beginning)).await;
    assert_eq!(positions(&events(&mut from_beginning, 2).await), [4, 5]);
    let mut after_horizon = subscribe(
        &app,
        pb::SubscribeRequest {
            start_from: pb::StartFrom::AfterPosition.into(),
            after_position: 3,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(positions(&events(&mut after_horizon, 2).await), [4, 5]);
    assert_eq!(caught_up(&mut after_horizon).await, 5);
    // Positions are never reused after pruning.
    write_n(&app, 1).await;
    assert_eq!(next_event(&mut after_horizon).await.position, 6);
}

async fn shutdown_ends_open_streams(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut stream = subscribe(&app, from(pb::StartFrom::Now)).await;
    caught_up(&mut stream).await;
    tokio::time::timeout(PATIENCE, app.stop())
        .await
        .expect("stop waited for the stream");
    let end = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("stream did not end");
    assert!(matches!(end, Ok(None)), "stream ended with {end:?}");
}

async fn shutdown_does_not_wait_for_a_client_that_never_reads(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |settings| {
        settings.events.drain_timeout = Duration::from_secs(1);
    })
    .await;
    write(&app, &(0..2000).map(|_| facebook()).collect::<Vec<_>>()).await;
    let _stream = subscribe(&app, from(pb::StartFrom::Beginning)).await;
    tokio::time::timeout(PATIENCE, app.stop())
        .await
        .expect("stop waited for a client that never reads");
}

async fn bad_subscribe_requests_are_refused(backend: Backend) {
    let app = TestApp::spawn(&backend).await;
    let mut client = app.events();
    let cases = [
        (
            pb::SubscribeRequest {
                heartbeat_seconds: 3601,
                ..Default::default()
            },
            "INVALID_PARAMETER",
            "heartbeat_seconds",
        ),
        (
            pb::SubscribeRequest {
                sources: vec![pb::EventSource::Unspecified.into()],
                ..Default::default()
            },
            "INVALID_PARAMETER",
            "sources",
        ),
        (
            pb::SubscribeRequest {
                providers: vec!["myspace".into()],
                ..Default::default()
            },
            "UNKNOWN_PROVIDER",
            "providers",
        ),
        (
            pb::SubscribeRequest {
                start_from: pb::StartFrom::AfterPosition.into(),
                after_position: 1,
                ..Default::default()
            },
            "INVALID_PARAMETER",
            "after_position",
        ),
        (
            pb::SubscribeRequest {
                consumer: " padded".into(),
                ..Default::default()
            },
            "INVALID_PARAMETER",
            "consumer",
        ),
    ];
    for (request, reason, field) in cases {
        let status = assert_refused(
            client.subscribe(request).await,
            Code::InvalidArgument,
            reason,
        );
        assert_eq!(bad_fields(&status), [field]);
    }
}

/// PostgreSQL: the server-side functions (the sequencer's stamp, the
/// locked write's read) never scan whole tables. A session caches each of
/// their statements' plans; one made while the tables were known to be
/// empty reads every row ever written on each call, long after the tables
/// grew. Here one session plans both on empty tables, then calls them
/// again after 2,000 events and 50 accounts: no sequential scan may happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn stored_functions_use_indexes_however_the_tables_grew() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    const TABLES: [&str; 5] = ["events", "sites", "accounts", "identities", "login_ids"];
    let app = TestApp::spawn(&Backend::postgres()).await;
    // One connection, so one session and one plan cache.
    let mut options = sea_orm::ConnectOptions::new(app.database_url.as_str());
    options.max_connections(1).min_connections(1);
    let session = sea_orm::Database::connect(options)
        .await
        .expect("second connection");
    let calls = || {
        [
            "SELECT count(*) AS n FROM connections_stamp_events(500, 'plan_test')",
            "SELECT count(*) AS n FROM \
             connections_lock_and_load('3_plans', NULL, 'uid-7', NULL, NULL, NULL, 'l@x.com')",
        ]
        .map(|sql| Statement::from_string(DbBackend::Postgres, sql))
    };
    // As autovacuum (or an operator) would: statistics of the empty tables.
    session
        .execute_unprepared("VACUUM ANALYZE")
        .await
        .expect("analyze");
    // Six calls: plpgsql plans a statement with parameters for each call
    // five times, then keeps one generic plan.
    for _ in 0..6 {
        for call in calls() {
            session
                .query_one_raw(call)
                .await
                .expect("call on empty tables");
        }
    }
    app.create_site("3_plans", 4242).await;
    for i in 0..50 {
        app.create_account(
            "3_plans",
            &format!("uid-{i}"),
            &[(&format!("l{i}@x.com"), true)],
        )
        .await;
    }
    for _ in 0..4 {
        write_n(&app, 500).await;
    }
    let txn = session.begin().await.expect("begin");
    for call in calls() {
        txn.query_one_raw(call).await.expect("call again");
    }
    let mut scanned = Vec::new();
    for table in TABLES {
        let row = txn
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                format!("SELECT pg_stat_get_xact_numscans('{table}'::regclass) AS n"),
            ))
            .await
            .expect("scan count")
            .expect("a row");
        let scans: i64 = row.try_get("", "n").expect("n");
        if scans > 0 {
            scanned.push(format!("{table}: {scans}"));
        }
    }
    txn.rollback().await.expect("rollback");
    assert!(scanned.is_empty(), "sequential scans: {scanned:?}");
}
