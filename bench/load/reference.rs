//! The SQLite ceiling: a plain program making the minimum statements of one
//! removal (lock the account, delete the identity, insert the outbox row,
//! commit) and of the re-link that restores it, on the service's own file,
//! with the service's pragmas and pool size: through sqlx (each statement a
//! round trip to its connection's thread), and through SQLite's C API on the
//! calling thread, as the service's own write path runs (`--direct`).
//! `bench/reference/*.sql` is the same for PostgreSQL, run by pgbench.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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

/// Who runs the reference's transactions.
#[derive(Clone)]
enum Writer {
    /// sqlx's pool, each statement a round trip to its connection's thread.
    Sqlx(SqlitePool),
    /// One connection driven through SQLite's C API on the calling thread
    /// (as the service's write path), shared behind a lock: SQLite has one
    /// writer.
    Direct(Arc<Mutex<direct::Conn>>),
}

impl Writer {
    async fn remove_and_relink(
        &self,
        site_id: i64,
        api_key: &str,
        uid: &str,
        removes: &mut Latencies,
    ) -> Result<(), Error> {
        match self {
            Writer::Sqlx(pool) => remove_and_relink(pool, site_id, api_key, uid, removes).await,
            Writer::Direct(conn) => {
                let started = Instant::now();
                conn.lock()
                    .map_err(|_| "a worker panicked")?
                    .remove(site_id, api_key, uid)?;
                removes.push(started.elapsed());
                conn.lock()
                    .map_err(|_| "a worker panicked")?
                    .relink(site_id, uid)?;
                // Lets the other workers' tasks run, as awaiting a
                // statement would.
                tokio::task::yield_now().await;
                Ok(())
            }
        }
    }
}

/// Runs the reference at `concurrency` for `duration`: through sqlx, or
/// with `direct` through SQLite's C API.
pub async fn sqlite(
    path: &str,
    accounts: &Accounts,
    concurrency: usize,
    duration: Duration,
    label: &str,
    direct: bool,
) -> Result<(), Error> {
    let pool = pool(path).await?;
    let site_id: i64 = sqlx::query("SELECT id FROM sites WHERE api_key = ?")
        .bind(&accounts.api_key)
        .fetch_one(&pool)
        .await?
        .try_get(0)?;
    let writer = match direct {
        true => Writer::Direct(Arc::new(Mutex::new(direct::Conn::open(path)?))),
        false => Writer::Sqlx(pool.clone()),
    };
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let writer = writer.clone();
        let api_key = accounts.api_key.clone();
        let mine: Vec<u64> = (0..accounts.accounts)
            .filter(|n| (*n as usize) % concurrency == worker)
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut removes = Latencies::default();
            let mut turn = 0usize;
            while !mine.is_empty() && Instant::now() < deadline {
                let uid = (FIRST_UID + mine[turn % mine.len()]).to_string();
                writer
                    .remove_and_relink(site_id, &api_key, &uid, &mut removes)
                    .await?;
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
    drop(writer);
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

mod direct {
    //! The reference's statements through SQLite's C API, prepared once.

    use std::{
        ffi::{CStr, CString, c_int},
        ptr::{self, NonNull},
    };

    use libsqlite3_sys as ffi;

    use crate::{Error, PROVIDERS};

    const FIND: &str = "SELECT id FROM accounts WHERE site_id = ?1 AND uid = ?2";
    const DELETE: &str = "DELETE FROM identities WHERE account_id = ?1 AND provider = ?2";
    const APPEND: &str = "INSERT INTO events (event_id, occurred_at, api_key, provider, source, \
        payload) VALUES (?1, ?2, ?3, ?4, 'REFERENCE', ?5)";
    const LINK: &str = "INSERT INTO identities (site_id, account_id, provider, sub_provider, \
        provider_uid, login_id, state, session, linked_at, updated_at) \
        VALUES (?1, ?2, ?3, '', ?4, NULL, 'ACTIVE', ?5, ?6, ?6)";

    pub struct Conn {
        db: NonNull<ffi::sqlite3>,
        statements: Vec<NonNull<ffi::sqlite3_stmt>>,
    }

    // SAFETY: opened NOMUTEX and used behind a lock, one thread at a time.
    unsafe impl Send for Conn {}

    const BEGIN: usize = 0;
    const COMMIT: usize = 1;
    const FIND_AT: usize = 2;
    const DELETE_AT: usize = 3;
    const APPEND_AT: usize = 4;
    const LINK_AT: usize = 5;

    enum Bind<'a> {
        Int(i64),
        Text(&'a str),
        Blob(&'a [u8]),
    }

    impl Conn {
        pub fn open(path: &str) -> Result<Self, Error> {
            let c_path = CString::new(path)?;
            let mut db = ptr::null_mut();
            let flags = ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX;
            // SAFETY: a valid C string and out pointer.
            let rc = unsafe { ffi::sqlite3_open_v2(c_path.as_ptr(), &mut db, flags, ptr::null()) };
            let db = NonNull::new(db).ok_or("SQLite could not allocate a connection")?;
            let mut conn = Self {
                db,
                statements: Vec::new(),
            };
            conn.check(rc)?;
            for sql in [
                "PRAGMA synchronous = NORMAL",
                "PRAGMA foreign_keys = ON",
                "PRAGMA busy_timeout = 30000",
            ] {
                let pragma = conn.prepare(sql)?;
                // SAFETY: a statement of this connection.
                let rc = unsafe { ffi::sqlite3_step(pragma.as_ptr()) };
                // SAFETY: as above; finalized once.
                unsafe { ffi::sqlite3_finalize(pragma.as_ptr()) };
                if rc != ffi::SQLITE_ROW && rc != ffi::SQLITE_DONE {
                    conn.check(rc)?;
                }
            }
            for sql in ["BEGIN IMMEDIATE", "COMMIT", FIND, DELETE, APPEND, LINK] {
                let stmt = conn.prepare(sql)?;
                conn.statements.push(stmt);
            }
            Ok(conn)
        }

        pub fn remove(&mut self, site_id: i64, api_key: &str, uid: &str) -> Result<(), Error> {
            let provider = PROVIDERS[0];
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
            let event_id = uuid::Uuid::new_v4().to_string();
            self.run(BEGIN, &[])?;
            let account = self.find(site_id, uid)?;
            self.run(DELETE_AT, &[Bind::Int(account), Bind::Text(provider)])?;
            self.run(
                APPEND_AT,
                &[
                    Bind::Text(&event_id),
                    Bind::Text(&now),
                    Bind::Text(api_key),
                    Bind::Text(provider),
                    Bind::Text(super::PAYLOAD),
                ],
            )?;
            self.run(COMMIT, &[])
        }

        pub fn relink(&mut self, site_id: i64, uid: &str) -> Result<(), Error> {
            let provider = PROVIDERS[0];
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
            let provider_uid = format!("{provider}-{uid}");
            self.run(BEGIN, &[])?;
            let account = self.find(site_id, uid)?;
            self.run(
                LINK_AT,
                &[
                    Bind::Int(site_id),
                    Bind::Int(account),
                    Bind::Text(provider),
                    Bind::Text(&provider_uid),
                    Bind::Blob(&[0u8; 60]),
                    Bind::Text(&now),
                ],
            )?;
            self.run(COMMIT, &[])
        }

        fn find(&mut self, site_id: i64, uid: &str) -> Result<i64, Error> {
            let stmt = self.bind(FIND_AT, &[Bind::Int(site_id), Bind::Text(uid)])?;
            // SAFETY: a statement of this connection, bound above.
            let rc = unsafe { ffi::sqlite3_step(stmt) };
            let found = if rc == ffi::SQLITE_ROW {
                // SAFETY: the row's first column.
                Ok(unsafe { ffi::sqlite3_column_int64(stmt, 0) })
            } else {
                self.check(rc).and(Err(format!("no account {uid}").into()))
            };
            // SAFETY: as above.
            unsafe { ffi::sqlite3_reset(stmt) };
            found
        }

        /// Runs a statement that returns no rows.
        fn run(&mut self, at: usize, values: &[Bind<'_>]) -> Result<(), Error> {
            let stmt = self.bind(at, values)?;
            // SAFETY: a statement of this connection, bound above.
            let rc = unsafe { ffi::sqlite3_step(stmt) };
            // SAFETY: as above.
            unsafe { ffi::sqlite3_reset(stmt) };
            if rc == ffi::SQLITE_DONE {
                Ok(())
            } else {
                self.check(rc)
            }
        }

        fn bind(&self, at: usize, values: &[Bind<'_>]) -> Result<*mut ffi::sqlite3_stmt, Error> {
            let stmt = self.statements[at].as_ptr();
            for (index, value) in (1..).zip(values) {
                // SAFETY: SQLite copies text and blobs (TRANSIENT).
                let rc = unsafe {
                    match value {
                        Bind::Int(v) => ffi::sqlite3_bind_int64(stmt, index, *v),
                        Bind::Text(v) => ffi::sqlite3_bind_text(
                            stmt,
                            index,
                            v.as_ptr().cast(),
                            c_int::try_from(v.len())?,
                            ffi::SQLITE_TRANSIENT(),
                        ),
                        Bind::Blob(v) => ffi::sqlite3_bind_blob(
                            stmt,
                            index,
                            v.as_ptr().cast(),
                            c_int::try_from(v.len())?,
                            ffi::SQLITE_TRANSIENT(),
                        ),
                    }
                };
                self.check(rc)?;
            }
            Ok(stmt)
        }

        fn prepare(&self, sql: &str) -> Result<NonNull<ffi::sqlite3_stmt>, Error> {
            let text = CString::new(sql)?;
            let mut stmt = ptr::null_mut();
            // SAFETY: an open handle and a NUL-terminated text.
            let rc = unsafe {
                ffi::sqlite3_prepare_v2(
                    self.db.as_ptr(),
                    text.as_ptr(),
                    -1,
                    &mut stmt,
                    ptr::null_mut(),
                )
            };
            self.check(rc)?;
            Ok(NonNull::new(stmt).ok_or("an empty statement")?)
        }

        fn check(&self, rc: c_int) -> Result<(), Error> {
            if rc == ffi::SQLITE_OK {
                return Ok(());
            }
            // SAFETY: an open handle; the message is copied at once.
            let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(self.db.as_ptr())) };
            Err(format!("SQLite error {rc}: {}", message.to_string_lossy()).into())
        }
    }

    impl Drop for Conn {
        fn drop(&mut self) {
            for stmt in self.statements.drain(..) {
                // SAFETY: each statement is finalized once, before the close.
                unsafe { ffi::sqlite3_finalize(stmt.as_ptr()) };
            }
            // SAFETY: no statement of the connection is left.
            unsafe { ffi::sqlite3_close(self.db.as_ptr()) };
        }
    }
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
