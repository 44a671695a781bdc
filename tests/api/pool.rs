//! PostgreSQL's pool hands out the connection released last (the vendored
//! sqlx-core's idle stack, as PgBouncer does by default): calls that come
//! one at a time keep using one backend, whose caches stay warm, instead
//! of rotating over every idle connection.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use crate::helpers::Backend;

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "needs CONNECTIONS_TEST_POSTGRES_URL")]
async fn one_call_at_a_time_keeps_using_the_connection_released_last() {
    // The service's own pool settings, without a server's background reads
    // (its sequencer, fan-out and health probe) taking connections between
    // the test's.
    let (url, _database) = Backend::postgres().fresh_database().await;
    let db = &connections::storage::db::connect(&url)
        .await
        .expect("connect");
    // Grow the pool: four connections checked out at once, then idle.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(db.begin().await.expect("begin"));
    }
    for txn in held {
        txn.rollback().await.expect("rollback");
    }

    let pool = db.get_postgres_connection_pool();
    let mut backends: HashMap<i32, usize> = HashMap::new();
    for _ in 0..8 {
        // sqlx gives a connection back to the pool in a task of its own:
        // each call starts once the last is back, as calls one at a time do.
        let deadline = Instant::now() + PATIENCE;
        while pool.num_idle() < pool.size() as usize {
            assert!(Instant::now() < deadline, "connections never came back");
            tokio::task::yield_now().await;
        }
        let row = db
            .query_one_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT pg_backend_pid() AS pid",
            ))
            .await
            .expect("query")
            .expect("a row");
        *backends
            .entry(row.try_get::<i32>("", "pid").expect("pid"))
            .or_default() += 1;
    }
    // A queue over four idle connections would give each two of the eight.
    assert_eq!(backends.len(), 1, "backends used: {backends:?}");
}
