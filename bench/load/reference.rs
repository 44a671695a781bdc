//! The SQLite ceiling: a plain program making the minimum statements of one
//! removal (lock the account, delete the identity, insert the outbox row,
//! commit) and of the re-link that restores it, on the service's own file,
//! with the service's pragmas and pool size. `bench/reference/*.sql` is the
//! same for PostgreSQL, run by pgbench.

use std::time::{Duration, Instant};

use sea_orm::sqlx::{
    self, Executor, Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use serde_json::{Map, json};

use crate::{
    Accounts, Error, FIRST_UID, PROVIDERS,
    stats::{self, Latencies},
};

/// An outbox payload of the size the service writes for one removal.
pub const PAYLOAD: &str = r#"{"event_id":"00000000-0000-0000-0000-000000000000","occurred_at":"2026-11-28T00:00:00.000000Z","api_key":"3_bench","vhost":7001,"uid":"1000000","provider":"facebook","sub_provider":"","provider_uid":"facebook-1000000","mode":"Hard","removed_login_ids":[],"provider_logout_requested":true,"source":"RemoveConnection","cid":null,"call_id":"00000000-0000-0000-0000-000000000000","actor":"bench","remaining_login_methods":3,"traceparent":null}"#;

async fn pool(path: &str) -> Result<SqlitePool, Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    Ok(SqlitePoolOptions::new()
        .max_connections(8)
        .min_connections(1)
        .connect_with(options)
        .await?)
}

/// The account's row id (the write lock is the transaction's: SQLite has
/// no row locks).
async fn find_account(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Sqlite>,
    site_id: i64,
    uid: &str,
) -> Result<i64, Error> {
    Ok(
        sqlx::query("SELECT id FROM accounts WHERE site_id = ? AND uid = ?")
            .bind(site_id)
            .bind(uid)
            .fetch_one(&mut **conn)
            .await?
            .try_get(0)?,
    )
}

/// One removal and its re-link, each in its own IMMEDIATE transaction.
async fn remove_and_relink(
    pool: &SqlitePool,
    site_id: i64,
    api_key: &str,
    uid: &str,
    removes: &mut Latencies,
) -> Result<(), Error> {
    let provider = PROVIDERS[0];
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    conn.execute("BEGIN IMMEDIATE").await?;
    let account_id = find_account(&mut conn, site_id, uid).await?;
    sqlx::query("DELETE FROM identities WHERE account_id = ? AND provider = ?")
        .bind(account_id)
        .bind(provider)
        .execute(&mut *conn)
        .await?;
    let now = chrono::Utc::now();
    sqlx::query(
        "INSERT INTO events (event_id, occurred_at, api_key, provider, source, payload) \
         VALUES (?, ?, ?, ?, 'REFERENCE', ?)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(now)
    .bind(api_key)
    .bind(provider)
    .bind(PAYLOAD)
    .execute(&mut *conn)
    .await?;
    conn.execute("COMMIT").await?;
    removes.push(started.elapsed());

    conn.execute("BEGIN IMMEDIATE").await?;
    let account_id = find_account(&mut conn, site_id, uid).await?;
    sqlx::query(
        "INSERT INTO identities (site_id, account_id, provider, sub_provider, provider_uid, \
         login_id, state, session, linked_at, updated_at) \
         VALUES (?, ?, ?, '', ?, NULL, 'ACTIVE', ?, ?, ?)",
    )
    .bind(site_id)
    .bind(account_id)
    .bind(provider)
    .bind(format!("{provider}-{uid}"))
    .bind(vec![0u8; 60])
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    conn.execute("COMMIT").await?;
    Ok(())
}

pub async fn sqlite(
    path: &str,
    accounts: &Accounts,
    concurrency: usize,
    duration: Duration,
    label: &str,
) -> Result<(), Error> {
    let pool = pool(path).await?;
    let site_id: i64 = sqlx::query("SELECT id FROM sites WHERE api_key = ?")
        .bind(&accounts.api_key)
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let pool = pool.clone();
        let api_key = accounts.api_key.clone();
        let mine: Vec<u64> = (0..accounts.accounts)
            .filter(|n| (*n as usize) % concurrency == worker)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut removes = Latencies::default();
            let mut turn = 0usize;
            while !mine.is_empty() && Instant::now() < deadline {
                let uid = (FIRST_UID + mine[turn % mine.len()]).to_string();
                remove_and_relink(&pool, site_id, &api_key, &uid, &mut removes).await?;
                turn += 1;
            }
            Ok::<_, Error>(removes)
        }));
    }
    let mut removes = Latencies::default();
    for task in tasks {
        removes.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The reference's outbox rows are not events of the service.
    sqlx::query("DELETE FROM events WHERE source = 'REFERENCE'")
        .execute(&pool)
        .await?;
    pool.close().await;
    let mut out = Map::new();
    out.insert("concurrency".into(), json!(concurrency));
    out.insert("seconds".into(), json!(stats::round3(elapsed)));
    out.insert("removes".into(), json!(removes.len()));
    out.insert(
        "removes_per_s".into(),
        json!(stats::round3(removes.len() as f64 / elapsed)),
    );
    removes.summary("remove", &mut out);
    stats::emit("reference", label, out);
    Ok(())
}

/// Appends `count` sequenced events after the current head, each a copy of
/// the newest stored payload, in one statement, and moves the head.
pub async fn backlog(database_url: &str, count: u64) -> Result<(), Error> {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(database_url).await?;
    let postgres = database_url.starts_with("postgres");
    let started = Instant::now();
    let (sequence, rows) = if postgres {
        (
            "UPDATE event_sequence SET last_position = last_position + $1 WHERE id = 1",
            "INSERT INTO events (position, event_id, occurred_at, api_key, provider, source, payload) \
             SELECT s.last_position + g, gen_random_uuid()::text, now(), e.api_key, e.provider, e.source, e.payload \
             FROM event_sequence s, generate_series(1, $1) g, \
                  (SELECT * FROM events WHERE position IS NOT NULL ORDER BY position DESC LIMIT 1) e \
             WHERE s.id = 1",
        )
    } else {
        (
            "UPDATE event_sequence SET last_position = last_position + $1 WHERE id = 1",
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < $1) \
             INSERT INTO events (position, event_id, occurred_at, api_key, provider, source, payload) \
             SELECT s.last_position + g.x, lower(hex(randomblob(16))), e.occurred_at, e.api_key, e.provider, e.source, e.payload \
             FROM event_sequence s, g, \
                  (SELECT * FROM events WHERE position IS NOT NULL ORDER BY position DESC LIMIT 1) e \
             WHERE s.id = 1",
        )
    };
    let count = i64::try_from(count)?;
    let txn = sea_orm::TransactionTrait::begin(&db).await?;
    let backend = txn.get_database_backend();
    let inserted = txn
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            backend,
            rows,
            [count.into()],
        ))
        .await?
        .rows_affected();
    if inserted != count as u64 {
        return Err(format!(
            "backlog: inserted {inserted} of {count} (no sequenced event to copy?)"
        )
        .into());
    }
    txn.execute_raw(sea_orm::Statement::from_sql_and_values(
        backend,
        sequence,
        [count.into()],
    ))
    .await?;
    txn.commit().await?;
    eprintln!(
        "backlog: {count} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints the last sequenced position (the relay's target).
pub async fn head(database_url: &str) -> Result<(), Error> {
    use sea_orm::{ConnectionTrait, Database};
    let db = Database::connect(database_url).await?;
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            backend,
            "SELECT last_position FROM event_sequence WHERE id = 1",
        ))
        .await?
        .ok_or("event_sequence row is missing")?;
    let head: i64 = row.try_get("", "last_position")?;
    println!("{head}");
    Ok(())
}
