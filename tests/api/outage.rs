//! The database going away under load: connections killed by
//! `pg_terminate_backend`, and a PostgreSQL server stopped and started
//! again. Calls are retried once or answered UNAVAILABLE
//! (`DATABASE_UNAVAILABLE`), never INTERNAL; while the database is down
//! calls fail at once and health says NOT_SERVING; the first call after it
//! returns succeeds. Timings are printed, and bounded only far above the
//! figures, to tell "fails fast" from "waits out the pool's timeout".

use std::time::{Duration, Instant};

use sea_orm::ConnectionTrait;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::{Backend, TestApp, reason},
    pg_cluster::PgCluster,
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

fn remove(uid: &str) -> pb::RemoveConnectionRequest {
    pb::RemoveConnectionRequest {
        api_key: "3_a".into(),
        uid: uid.into(),
        provider: Some("facebook".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn killed_connections_are_retried_or_unavailable_never_internal() {
    let backend = Backend::postgres();
    let Backend::Postgres(base) = &backend else {
        unreachable!("postgres backend");
    };
    let app = TestApp::spawn(&backend).await;
    populate(&app, ACCOUNTS).await;
    let database = url::Url::parse(&app.database_url)
        .expect("url")
        .path()
        .trim_start_matches('/')
        .to_owned();
    let admin = sea_orm::Database::connect(base.as_str())
        .await
        .expect("admin connection");
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
                outcomes.push((uid.clone(), client.remove_connection(remove(&uid)).await));
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
    let write = app.connections().remove_connection(remove("u1")).await;
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
        .remove_connection(remove("u1"))
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
    // Several acquire timeouts: many probe intervals with the pool busy.
    for _ in 0..4 {
        let status = app
            .connections()
            .remove_connection(remove("u0"))
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
                .remove_connection(remove("u0"))
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
