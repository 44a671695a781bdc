//! The database going away under load: connections killed by
//! `pg_terminate_backend`, and a PostgreSQL server stopped and started
//! again. Calls are retried once or answered UNAVAILABLE
//! (`DATABASE_UNAVAILABLE`), never INTERNAL; while the database is down
//! calls fail at once and health says NOT_SERVING; the first call after it
//! returns succeeds. Timings are printed, and bounded only far above the
//! figures, to tell "fails fast" from "waits out the pool's timeout".
//! Live subscribers come through both with exactly the events committed.
//! A pool with every connection busy is not an outage: `DATABASE_BUSY`.

use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{Backend, TestApp, reason},
    pg_cluster::PgCluster,
    remove_connection::remove,
};
use connections::proto::v1 as pb;

const ACCOUNTS: usize = 60;

async fn populate(app: &TestApp, accounts: usize) {
    app.create_site("3_a", 1).await;
    for n in 0..accounts {
        let uid = format!("u{n}");
        app.create_account("3_a", &uid, &[(&format!("{uid}@x.com"), true)])
            .await;
        app.link("3_a", &uid, "facebook", "", &format!("fb-{n}"), None)
            .await;
    }
}

/// A PostgreSQL app with `accounts` populated, its database's name, and an
/// administrator's connection to the server (to kill the app's backends).
async fn spawn_with_admin(accounts: usize) -> (TestApp, String, sea_orm::DatabaseConnection) {
    let backend = Backend::postgres();
    let Backend::Postgres(base) = &backend else {
        unreachable!("postgres backend");
    };
    let app = TestApp::spawn(&backend).await;
    populate(&app, accounts).await;
    let database = url::Url::parse(&app.database_url)
        .expect("url")
        .path()
        .trim_start_matches('/')
        .to_owned();
    let admin = sea_orm::Database::connect(base.as_str())
        .await
        .expect("admin connection");
    (app, database, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn killed_connections_are_retried_or_unavailable_never_internal() {
    let (app, database, admin) = spawn_with_admin(ACCOUNTS).await;
    // Three rounds of killing every connection of the service, 150 ms
    // apart, while removals run four at a time.
    let killer = tokio::spawn(async move {
        let mut killed = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            killed += admin
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{database}' AND pid <> pg_backend_pid()"
                    ),
                ))
                .await
                .map_or(0, |rows| rows.len());
        }
        killed
    });

    let outcomes = futures::future::join_all((0..4).map(|worker| {
        let client = app.connections();
        async move {
            let mut client = client;
            let mut outcomes = Vec::new();
            for n in (worker..ACCOUNTS).step_by(4) {
                let uid = format!("u{n}");
                // Paced so that the load spans the killing rounds.
                tokio::time::sleep(Duration::from_millis(10)).await;
                outcomes.push((
                    uid.clone(),
                    client
                        .remove_connection(remove(&uid, Some("facebook")))
                        .await,
                ));
            }
            outcomes
        }
    }))
    .await;
    let killed = killer.await.expect("killer");

    let (mut ok, mut unavailable) = (0, 0);
    let mut acknowledged = Vec::new();
    for (uid, outcome) in outcomes.into_iter().flatten() {
        match outcome {
            Ok(_) => {
                ok += 1;
                acknowledged.push(uid);
            }
            Err(status) if status.code() == Code::Unavailable => {
                assert_eq!(reason(&status), "DATABASE_UNAVAILABLE", "{status:?}");
                assert!(
                    status.message().contains("database is unavailable"),
                    "{}",
                    status.message()
                );
                unavailable += 1;
            }
            Err(status) => panic!("{uid}: {status:?}"),
        }
    }
    eprintln!(
        "pg_terminate_backend: {killed} backends killed in 3 rounds; {ok} removals \
         acknowledged, {unavailable} answered UNAVAILABLE, none INTERNAL"
    );
    assert!(killed > 0, "the test killed no connection");
    assert!(ok > ACCOUNTS / 2, "most removals get through: {ok}");
    // Every acknowledged removal is committed.
    time_until(Duration::from_secs(8), "SERVING", || async {
        serving(&app).await == Some(ServingStatus::Serving)
    })
    .await;
    for uid in acknowledged {
        let account = app.account("3_a", &uid).await;
        assert!(account.identities.is_empty(), "{uid} was acknowledged");
    }
}

/// The service's PostgreSQL backends (every connection but `admin`'s own).
async fn service_backends(admin: &sea_orm::DatabaseConnection, database: &str) -> Vec<i32> {
    let rows = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT pid FROM pg_stat_activity \
                 WHERE datname = '{database}' AND pid <> pg_backend_pid()"
            ),
        ))
        .await
        .expect("pg_stat_activity");
    rows.iter()
        .map(|row| row.try_get::<i32>("", "pid").expect("pid"))
        .collect()
}

/// Pooled connections are not pinged at every checkout: only those that may
/// have died while idle. When every idle connection was killed between
/// calls, the first call meets a dead one and is retried, and its retry and
/// every call after it test their connection first: no call fails, however
/// many dead connections the pool held (more than a call's attempts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn idle_connections_killed_between_calls_fail_no_call() {
    let (app, database, admin) = spawn_with_admin(24).await;
    // Twelve calls at once grow the pool to about as many connections.
    let get = |n: usize| pb::GetAccountRequest {
        api_key: "3_a".into(),
        uid: format!("u{n}"),
    };
    for _ in 0..3 {
        let calls = (0..12).map(|n| {
            let mut client = app.connections();
            async move { client.get_account(get(n)).await }
        });
        for answer in futures::future::join_all(calls).await {
            answer.expect("get account");
        }
    }
    let pooled = service_backends(&admin, &database).await;
    assert!(
        pooled.len() > 4,
        "the pool grew to {} connections only",
        pooled.len()
    );

    let list = pooled
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    admin
        .execute_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT pg_terminate_backend(pid) FROM unnest(ARRAY[{list}]) AS pid"),
        ))
        .await
        .expect("kill the service's connections");
    // The service may open new connections meanwhile (its probe, the
    // sequencer's listener): only the killed ones must be gone.
    time_until(
        Duration::from_secs(5),
        "the killed backends gone",
        || async {
            let now = service_backends(&admin, &database).await;
            !now.iter().any(|pid| pooled.contains(pid))
        },
    )
    .await;

    // One at a time, then twelve at once: every call is answered.
    let mut client = app.connections();
    for n in 0..12 {
        client
            .remove_connection(remove(&format!("u{n}"), Some("facebook")))
            .await
            .unwrap_or_else(|status| panic!("u{n}: {status:?}"));
    }
    let calls = (12..24).map(|n| {
        let mut client = app.connections();
        async move {
            (
                n,
                client
                    .remove_connection(remove(&format!("u{n}"), Some("facebook")))
                    .await,
            )
        }
    });
    for (n, answer) in futures::future::join_all(calls).await {
        answer.unwrap_or_else(|status| panic!("u{n}: {status:?}"));
    }
    eprintln!(
        "{} connections killed while idle; 24 removals after, none failed",
        pooled.len()
    );
}

async fn serving(app: &TestApp) -> Option<ServingStatus> {
    let mut health = HealthClient::new(app.channel.clone());
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()
        .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
}

/// Waits (bounded) until `condition` holds; returns how long it took.
async fn time_until<F, Fut>(limit: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_database_fails_fast_and_recovers_by_itself() {
    let Some(cluster) = PgCluster::start() else {
        // CI runs where the server binaries are installed: not being able
        // to make a cluster there is a failure, not a skip.
        assert!(
            std::env::var_os("CONNECTIONS_TEST_RUN_ID").is_none(),
            "CI needs a private PostgreSQL cluster for the outage test"
        );
        return;
    };
    // A pool timeout far above the figures, so that waiting it out shows.
    let app = TestApp::spawn_on(&cluster.url(), |s| {
        s.pool.acquire_timeout = Duration::from_secs(10);
    })
    .await;
    populate(&app, 2).await;
    let get = pb::GetAccountRequest {
        api_key: "3_a".into(),
        uid: "u0".into(),
    };

    cluster.stop_server();
    let not_serving = time_until(Duration::from_secs(8), "NOT_SERVING", || async {
        serving(&app).await == Some(ServingStatus::NotServing)
    })
    .await;
    let started = Instant::now();
    let refused = app.connections().get_account(get.clone()).await;
    let refused_after = started.elapsed();
    let status = refused.expect_err("the database is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "DATABASE_UNAVAILABLE");
    let write = app
        .connections()
        .remove_connection(remove("u1", Some("facebook")))
        .await;
    assert_eq!(write.expect_err("down").code(), Code::Unavailable);

    cluster.start_server();
    let recovered = time_until(Duration::from_secs(8), "a successful call", || async {
        app.connections().get_account(get.clone()).await.is_ok()
    })
    .await;
    time_until(Duration::from_secs(8), "SERVING", || async {
        serving(&app).await == Some(ServingStatus::Serving)
    })
    .await;
    // Nothing was lost: the refused removal did not happen, a new one does.
    let account = app.account("3_a", "u1").await;
    assert_eq!(account.identities.len(), 1);
    app.connections()
        .remove_connection(remove("u1", Some("facebook")))
        .await
        .expect("writes work again");
    eprintln!(
        "database stopped: NOT_SERVING after {not_serving:?}, a call refused in \
         {refused_after:?}; restarted: first success after {recovered:?}"
    );
    assert!(
        refused_after < Duration::from_secs(2),
        "calls waited {refused_after:?}: they must not wait out the pool timeout"
    );
}

crate::on_both_backends!(a_busy_pool_answers_overloaded_and_keeps_serving);

/// Every pooled connection in use while the database answers: calls get
/// UNAVAILABLE `DATABASE_BUSY` ("overloaded", retry later), not
/// `DATABASE_UNAVAILABLE`, and health stays SERVING throughout.
async fn a_busy_pool_answers_overloaded_and_keeps_serving(backend: Backend) {
    let app = TestApp::spawn_with(&backend, |s| {
        // PostgreSQL's LISTEN connections (sequencer, fan-out) stay pooled.
        s.pool.max_connections = Some(4);
        s.pool.acquire_timeout = Duration::from_millis(300);
        s.pool.probe_interval = Duration::from_millis(50);
    })
    .await;
    populate(&app, 1).await;
    let watch = crate::helpers::HealthWatch::start(&app).await;

    // Every connection the pool may open, held by open transactions (the
    // server's own tasks may hold some: PostgreSQL's LISTEN connection).
    let mut held = Vec::new();
    while let Ok(transaction) = sea_orm::TransactionTrait::begin(app.repo.connection()).await {
        held.push(transaction);
        assert!(held.len() <= 4, "the pool opened more than its maximum");
    }
    // Several acquire timeouts: many probe intervals with the pool busy
    // (a read: on SQLite removals write on a connection of their own).
    for _ in 0..4 {
        let status = app
            .connections()
            .get_account(pb::GetAccountRequest {
                api_key: "3_a".into(),
                uid: "u0".into(),
            })
            .await
            .expect_err("no connection to be had");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason(&status), "DATABASE_BUSY", "{status:?}");
        assert!(
            status.message().contains("overloaded"),
            "{}",
            status.message()
        );
        assert_eq!(serving(&app).await, Some(ServingStatus::Serving));
    }
    for transaction in held {
        transaction
            .rollback()
            .await
            .expect("release the connection");
    }
    // The server's own tasks may take the freed connections first.
    time_until(
        Duration::from_secs(8),
        "a call on the freed pool",
        || async {
            app.connections()
                .remove_connection(remove("u0", Some("facebook")))
                .await
                .is_ok()
        },
    )
    .await;
    let seen = watch.stop();
    assert_eq!(seen.first(), Some(&ServingStatus::Serving), "{seen:?}");
    assert!(
        !seen.contains(&ServingStatus::NotServing),
        "a busy pool was reported as a database outage: {seen:?}"
    );
    eprintln!("busy pool: 4 calls answered DATABASE_BUSY, health {seen:?}");
}

/// Accounts the outage proof may remove (more than the load needs).
const LOAD_ACCOUNTS: usize = 1_500;
/// Longest wait for anything the outage proof waits on.
const PATIENCE: Duration = Duration::from_secs(60);

/// `populate`, eight at a time: the outage proof needs many accounts.
async fn populate_concurrently(app: &TestApp, accounts: usize) {
    use futures::StreamExt;
    app.create_site("3_a", 1).await;
    futures::stream::iter(0..accounts)
        .for_each_concurrent(8, |n| async move {
            let uid = format!("u{n}");
            app.create_account("3_a", &uid, &[(&format!("{uid}@x.com"), true)])
                .await;
            app.link("3_a", &uid, "facebook", "", &format!("fb-{n}"), None)
                .await;
        })
        .await;
}

/// What one writer saw: the uids whose removal was acknowledged, those
/// answered UNAVAILABLE (committed or not: the client cannot know), and how
/// long the slowest refusal took.
#[derive(Debug, Default)]
struct Writes {
    acknowledged: Vec<String>,
    unavailable: Vec<String>,
    slowest_refusal: Duration,
}

/// Removes `u{first}`, `u{first + step}`, ... one at a time, paced, until
/// `stop`; every failure must be UNAVAILABLE / DATABASE_UNAVAILABLE.
async fn write_load(
    app: &TestApp,
    first: usize,
    step: usize,
    stop: &std::sync::atomic::AtomicBool,
    acknowledged: &std::sync::atomic::AtomicUsize,
    refused: &std::sync::atomic::AtomicUsize,
) -> Writes {
    use std::sync::atomic::Ordering;
    let mut client = app.connections();
    let mut writes = Writes::default();
    for n in (first..LOAD_ACCOUNTS).step_by(step) {
        if stop.load(Ordering::Acquire) {
            break;
        }
        let uid = format!("u{n}");
        let started = Instant::now();
        match client
            .remove_connection(remove(&uid, Some("facebook")))
            .await
        {
            Ok(_) => {
                writes.acknowledged.push(uid);
                acknowledged.fetch_add(1, Ordering::AcqRel);
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{uid}: {status:?}");
                assert_eq!(reason(&status), "DATABASE_UNAVAILABLE", "{uid}: {status:?}");
                writes.slowest_refusal = writes.slowest_refusal.max(started.elapsed());
                writes.unavailable.push(uid);
                refused.fetch_add(1, Ordering::AcqRel);
            }
        }
        // A steady load rather than as fast as possible: the accounts last.
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    writes
}

/// What a live subscriber received: every event in order, and how many
/// streams it took.
#[derive(Debug, Default)]
struct Followed {
    events: Vec<pb::ConnectionRemoved>,
    streams: usize,
}

/// A live subscriber from the beginning: each event must be the next
/// position (dense, no duplicate); a stream that ends or fails is opened
/// again after the last position received. Returns once it has `target`.
async fn follow(
    channel: tonic::transport::Channel,
    mut target: tokio::sync::watch::Receiver<Option<u64>>,
) -> Followed {
    use pb::subscribe_response::Message;
    let mut client = pb::event_service_client::EventServiceClient::new(channel);
    let mut followed = Followed::default();
    let mut last = 0;
    let reached = |last: u64, target: &tokio::sync::watch::Receiver<Option<u64>>| {
        target.borrow().is_some_and(|t| last >= t)
    };
    loop {
        if reached(last, &target) {
            return followed;
        }
        let request = pb::SubscribeRequest {
            start_from: pb::StartFrom::AfterPosition.into(),
            after_position: last,
            ..Default::default()
        };
        let mut stream = match client.subscribe(request).await {
            Ok(stream) => stream.into_inner(),
            Err(_) => {
                // Refused while the database is down: pacing, then again.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        followed.streams += 1;
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = target.changed() => {
                    if reached(last, &target) {
                        return followed;
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(pb::SubscribeResponse {
                    message: Some(Message::Event(event)),
                })) => {
                    assert_eq!(
                        event.position,
                        last + 1,
                        "a live subscriber skipped or repeated a position"
                    );
                    last = event.position;
                    followed.events.push(event);
                    if reached(last, &target) {
                        return followed;
                    }
                }
                Ok(Some(_)) => {}
                // The stream ended or failed: open another after `last`.
                Ok(None) | Err(_) => break,
            }
        }
    }
}

/// Waits (bounded) until `counter` has grown by `by` from now.
async fn progress(counter: &std::sync::atomic::AtomicUsize, by: usize, what: &str) {
    let from = counter.load(std::sync::atomic::Ordering::Acquire);
    time_until(PATIENCE, what, || async {
        counter.load(std::sync::atomic::Ordering::Acquire) >= from + by
    })
    .await;
}

/// Issue 18, proof 9: under a steady write load with live subscribers, the
/// service's connections are terminated, then PostgreSQL is stopped and
/// started again. Calls fail with UNAVAILABLE / DATABASE_UNAVAILABLE (never
/// INTERNAL, never after waiting out the pool), health goes NOT_SERVING
/// and back, the subscribers resume, and in the end every subscriber has
/// exactly the events in the table (dense positions, no duplicate), which
/// include every acknowledged removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscribers_lose_nothing_through_killed_connections_and_a_restart() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let Some(cluster) = PgCluster::start() else {
        assert!(
            std::env::var_os("CONNECTIONS_TEST_RUN_ID").is_none(),
            "CI needs a private PostgreSQL cluster for the outage test"
        );
        return;
    };
    let started = Instant::now();
    // A pool timeout far above the figures, so that waiting it out shows.
    let app = Arc::new(
        TestApp::spawn_on(&cluster.url(), |s| {
            s.pool.acquire_timeout = Duration::from_secs(10);
            s.security.rate_limit_per_second = 0.0;
        })
        .await,
    );
    populate_concurrently(&app, LOAD_ACCOUNTS).await;
    let health = crate::helpers::HealthWatch::start(&app).await;

    let (target_tx, target) = tokio::sync::watch::channel(None);
    let followers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(follow(app.channel.clone(), target.clone())))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    const WRITERS: usize = 3;
    let writers: Vec<_> = (0..WRITERS)
        .map(|first| {
            let (app, stop) = (app.clone(), stop.clone());
            let (acknowledged, refused) = (acknowledged.clone(), refused.clone());
            tokio::spawn(async move {
                write_load(&app, first, WRITERS, &stop, &acknowledged, &refused).await
            })
        })
        .collect();

    // Every connection of the service killed, under load.
    progress(&acknowledged, 30, "removals before the kill").await;
    let admin = sea_orm::Database::connect(cluster.url().as_str())
        .await
        .expect("admin connection");
    let killed = admin
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        ))
        .await
        .expect("terminate the service's connections")
        .len();
    admin.close().await.expect("close the admin connection");
    progress(&acknowledged, 30, "removals after the kill").await;

    // The server stopped: calls refused, health NOT_SERVING.
    let refused_before_stop = refused.load(Ordering::Acquire);
    cluster.stop_server();
    let stopped_at = Instant::now();
    time_until(PATIENCE, "NOT_SERVING", || async {
        serving(&app).await == Some(ServingStatus::NotServing)
    })
    .await;
    progress(&refused, 150, "calls refused while the database is down").await;
    let refused_while_down = refused.load(Ordering::Acquire) - refused_before_stop;
    let down_for = stopped_at.elapsed();

    // Started again: SERVING, and writes go through.
    cluster.start_server();
    let restarted_at = Instant::now();
    time_until(PATIENCE, "SERVING", || async {
        serving(&app).await == Some(ServingStatus::Serving)
    })
    .await;
    let serving_after = restarted_at.elapsed();
    progress(&acknowledged, 30, "removals after the restart").await;
    stop.store(true, Ordering::Release);
    let mut writes = Writes::default();
    for writer in writers {
        let w = writer.await.expect("writer task");
        writes.acknowledged.extend(w.acknowledged);
        writes.unavailable.extend(w.unavailable);
        writes.slowest_refusal = writes.slowest_refusal.max(w.slowest_refusal);
    }

    // The table: every committed row sequenced, positions dense.
    let db = sea_orm::Database::connect(cluster.url().as_str())
        .await
        .expect("connect");
    let rows = {
        use connections::storage::entities::event;
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        time_until(PATIENCE, "every event sequenced", || async {
            event::Entity::find()
                .filter(event::Column::Position.is_null())
                .count(&db)
                .await
                .is_ok_and(|n| n == 0)
        })
        .await;
        event::Entity::find()
            .count(&db)
            .await
            .expect("count events")
    };
    let (table, head) = crate::process::replay_all(&mut app.events(), PATIENCE).await;
    let n = u64::try_from(table.len()).expect("count");
    assert_eq!((rows, head), (n, n), "rows, head and replayed events");
    assert!(
        table.iter().map(|e| e.position).eq(1..=n),
        "positions are not dense 1..={n}"
    );

    // Nothing acknowledged that is not committed; nothing committed twice.
    let mut by_uid = std::collections::HashMap::<&str, usize>::new();
    for event in &table {
        *by_uid.entry(event.uid.as_str()).or_default() += 1;
    }
    assert!(
        by_uid.values().all(|&count| count == 1),
        "a removal has two events"
    );
    for uid in &writes.acknowledged {
        assert_eq!(
            by_uid.get(uid.as_str()),
            Some(&1),
            "{uid} acknowledged, no event"
        );
    }
    let unavailable_committed = writes
        .unavailable
        .iter()
        .filter(|uid| by_uid.contains_key(uid.as_str()))
        .count();
    assert_eq!(
        u64::try_from(writes.acknowledged.len() + unavailable_committed).expect("count"),
        n,
        "every event belongs to an acknowledged call or one cut by the outage"
    );

    // The live subscribers: exactly the table's events, in order.
    target_tx.send_replace(Some(n));
    let mut streams = Vec::new();
    for follower in followers {
        let followed = tokio::time::timeout(PATIENCE, follower)
            .await
            .expect("a live subscriber did not catch up")
            .expect("subscriber task");
        let ids = followed.events.iter().map(|e| e.event_id.as_str());
        assert!(
            ids.eq(table.iter().map(|e| e.event_id.as_str())),
            "a live subscriber's events differ from the table's"
        );
        streams.push(followed.streams);
    }
    let seen = health.stop();
    assert!(seen.contains(&ServingStatus::NotServing), "{seen:?}");
    assert_eq!(seen.last(), Some(&ServingStatus::Serving), "{seen:?}");

    eprintln!(
        "outage: {killed} connections terminated, then PostgreSQL stopped for {down_for:.1?} \
         ({refused_while_down} calls refused meanwhile) and restarted (SERVING after \
         {serving_after:.1?}); removals: {} acknowledged, {} UNAVAILABLE ({unavailable_committed} \
         of them committed), none INTERNAL, slowest refusal {:.1?}; {n} events = positions \
         1..={n}; 2 live subscribers received all {n} in order over {streams:?} streams; \
         health {seen:?}; {:.1?}",
        writes.acknowledged.len(),
        writes.unavailable.len(),
        writes.slowest_refusal,
        started.elapsed(),
    );
    assert!(killed > 0, "the test killed no connection");
    // Generous: far below the 10 s pool timeout that calls used to wait out.
    assert!(
        writes.slowest_refusal < Duration::from_secs(5),
        "a refusal took {:?}",
        writes.slowest_refusal
    );
}
