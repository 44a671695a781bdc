//! What sqlx's SQLite driver costs the SQLite ceiling: the ceiling's two
//! transactions (a removal: lock, read the account, delete the identity,
//! insert the outbox row, commit; then the re-link), first through sqlx as
//! `connections-bench sqlite-reference` and the server run them (each
//! statement a round trip to the connection's own thread), then the same
//! statements on the calling thread (sqlx's `lock_handle`, SQLite's C API),
//! on one connection, WAL, `synchronous = NORMAL`, as the server uses.
//!
//!     cargo run --release --example sqlite_hand_offs [-- DB_FILE]
//!
//! Prints microseconds per removal and re-link, three rounds of each.

use std::{
    error::Error,
    ffi::{CStr, CString},
    ptr::{self, NonNull},
    time::Instant,
};

use libsqlite3_sys as ffi;
use sea_orm::sqlx::{
    self, Executor, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

const SCHEMA: &str = "
    DROP TABLE IF EXISTS accounts; DROP TABLE IF EXISTS identities; DROP TABLE IF EXISTS events;
    CREATE TABLE accounts (id INTEGER PRIMARY KEY, site_id INTEGER NOT NULL, uid TEXT NOT NULL,
        UNIQUE (site_id, uid));
    CREATE TABLE identities (id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL,
        provider TEXT NOT NULL, provider_uid TEXT NOT NULL, session BLOB);
    CREATE INDEX identities_account ON identities (account_id, provider);
    CREATE TABLE events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE,
        occurred_at TEXT NOT NULL, api_key TEXT NOT NULL, provider TEXT NOT NULL,
        source TEXT NOT NULL, payload TEXT NOT NULL);";
const FIND: &str = "SELECT id FROM accounts WHERE site_id = 1 AND uid = ?1";
const DELETE: &str = "DELETE FROM identities WHERE account_id = ?1 AND provider = 'facebook'";
const APPEND: &str = "INSERT INTO events (event_id, occurred_at, api_key, provider, source, \
    payload) VALUES (?1, '2026-11-29T00:00:00.000000Z', '3_bench', 'facebook', 'REFERENCE', ?2)";
const LINK: &str = "INSERT INTO identities (account_id, provider, provider_uid, session) \
    VALUES (?1, 'facebook', 'facebook-uid', x'000102030405060708090a0b0c0d0e0f')";
const ACCOUNTS: i64 = 2000;
const PAIRS: i64 = 4000;
/// The size of the outbox payload the service writes for one removal.
const PAYLOAD_BYTES: usize = 470;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/tmp/sqlite_hand_offs.db".to_owned());
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let mut conn = pool.acquire().await?;
    seed(&mut conn).await?;
    let payload = "p".repeat(PAYLOAD_BYTES);
    for round in 1..=3 {
        let started = Instant::now();
        for i in 0..PAIRS {
            through_sqlx(&mut conn, i, &format!("sqlx-{round}-{i}"), &payload).await?;
        }
        report(round, "through sqlx", started);

        let mut handle = conn.lock_handle().await?;
        let on_thread = OnThread::prepare(handle.as_raw_handle())?;
        let started = Instant::now();
        for i in 0..PAIRS {
            on_thread.pair(i, &format!("direct-{round}-{i}"), &payload)?;
        }
        report(round, "on the calling thread", started);
    }
    drop(conn);
    pool.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    Ok(())
}

fn report(round: u32, how: &str, started: Instant) {
    let micros = started.elapsed().as_secs_f64() * 1e6 / PAIRS as f64;
    println!("round {round}: {micros:6.1} µs per removal and re-link, {how}");
}

async fn seed(conn: &mut SqliteConnection) -> Result<()> {
    conn.execute(SCHEMA).await?;
    conn.execute("BEGIN").await?;
    for i in 0..ACCOUNTS {
        sqlx::query("INSERT INTO accounts (site_id, uid) VALUES (1, ?1)")
            .bind(i.to_string())
            .execute(&mut *conn)
            .await?;
        sqlx::query(LINK).bind(i + 1).execute(&mut *conn).await?;
    }
    conn.execute("COMMIT").await?;
    Ok(())
}

async fn through_sqlx(
    conn: &mut SqliteConnection,
    i: i64,
    event_id: &str,
    payload: &str,
) -> Result<()> {
    conn.execute("BEGIN IMMEDIATE").await?;
    let account: i64 = sqlx::query_scalar(FIND)
        .bind((i % ACCOUNTS).to_string())
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(DELETE)
        .bind(account)
        .execute(&mut *conn)
        .await?;
    sqlx::query(APPEND)
        .bind(event_id)
        .bind(payload)
        .execute(&mut *conn)
        .await?;
    conn.execute("COMMIT").await?;
    conn.execute("BEGIN IMMEDIATE").await?;
    sqlx::query(LINK).bind(account).execute(&mut *conn).await?;
    conn.execute("COMMIT").await?;
    Ok(())
}

/// The same statements, prepared once on the connection's handle, run on
/// this thread while sqlx's thread is locked out of it.
struct OnThread {
    db: *mut ffi::sqlite3,
    begin: Stmt,
    commit: Stmt,
    find: Stmt,
    delete: Stmt,
    append: Stmt,
    link: Stmt,
}

struct Stmt(*mut ffi::sqlite3_stmt);

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: prepared by `OnThread::prepare` on a handle that outlives it.
        unsafe { ffi::sqlite3_finalize(self.0) };
    }
}

impl OnThread {
    fn prepare(db: NonNull<ffi::sqlite3>) -> Result<Self> {
        let db = db.as_ptr();
        let prepare = |sql: &str| -> Result<Stmt> {
            let sql = CString::new(sql)?;
            let mut stmt = ptr::null_mut();
            // SAFETY: `db` is the open connection sqlx's lock hands over.
            let rc = unsafe {
                ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut stmt, ptr::null_mut())
            };
            check(db, rc)?;
            Ok(Stmt(stmt))
        };
        Ok(Self {
            db,
            begin: prepare("BEGIN IMMEDIATE")?,
            commit: prepare("COMMIT")?,
            find: prepare(FIND)?,
            delete: prepare(DELETE)?,
            append: prepare(APPEND)?,
            link: prepare(LINK)?,
        })
    }

    fn pair(&self, i: i64, event_id: &str, payload: &str) -> Result<()> {
        let uid = CString::new((i % ACCOUNTS).to_string())?;
        let event_id = CString::new(event_id)?;
        let payload = CString::new(payload)?;
        // SAFETY: every statement belongs to `self.db`; the bound strings
        // outlive their steps (each is reset before they are dropped).
        unsafe {
            self.step(&self.begin)?;
            ffi::sqlite3_bind_text(self.find.0, 1, uid.as_ptr(), -1, ffi::SQLITE_TRANSIENT());
            let rc = ffi::sqlite3_step(self.find.0);
            if rc != ffi::SQLITE_ROW {
                check(self.db, rc)?;
                return Err("no such account".into());
            }
            let account = ffi::sqlite3_column_int64(self.find.0, 0);
            ffi::sqlite3_reset(self.find.0);
            ffi::sqlite3_bind_int64(self.delete.0, 1, account);
            self.step(&self.delete)?;
            ffi::sqlite3_bind_text(
                self.append.0,
                1,
                event_id.as_ptr(),
                -1,
                ffi::SQLITE_TRANSIENT(),
            );
            ffi::sqlite3_bind_text(
                self.append.0,
                2,
                payload.as_ptr(),
                -1,
                ffi::SQLITE_TRANSIENT(),
            );
            self.step(&self.append)?;
            self.step(&self.commit)?;
            self.step(&self.begin)?;
            ffi::sqlite3_bind_int64(self.link.0, 1, account);
            self.step(&self.link)?;
            self.step(&self.commit)?;
        }
        Ok(())
    }

    /// Runs a statement that returns no rows, and resets it.
    ///
    /// # Safety
    /// `stmt` belongs to `self.db`.
    unsafe fn step(&self, stmt: &Stmt) -> Result<()> {
        // SAFETY: as the caller promises.
        let rc = unsafe { ffi::sqlite3_step(stmt.0) };
        // SAFETY: as above.
        unsafe { ffi::sqlite3_reset(stmt.0) };
        if rc == ffi::SQLITE_DONE {
            Ok(())
        } else {
            check(self.db, rc).and(Err("a statement returned rows".into()))
        }
    }
}

fn check(db: *mut ffi::sqlite3, rc: i32) -> Result<()> {
    if rc == ffi::SQLITE_OK {
        return Ok(());
    }
    // SAFETY: `db` is open; the message is copied before the next call.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(db)) };
    Err(format!("SQLite error {rc}: {}", message.to_string_lossy()).into())
}
