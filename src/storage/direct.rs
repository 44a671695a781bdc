//! SQLite: the write path's statements on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own, and every
//! statement is a round trip to it: about 60 µs of hand-offs between
//! threads on this project's machine, four of them for a lone removal (BEGIN,
//! read, write, COMMIT), where SQLite itself needs about 10 µs per statement
//! (`bench/experiments/sqlite_hand_offs.rs`: 7-8x). The hot writes
//! (removals, links, and one-statement writes such as the relay's progress)
//! therefore run on a connection of their own, driven through SQLite's C API
//! by whoever holds the write turn (`group_commit`), with their statements
//! prepared once. They run on the runtime's threads: SQLite's work for a
//! removal is tens of microseconds, and the one slow part, checkpointing
//! the write-ahead log, is left to the pool (`wal_pages`).
//!
//! Pages of events are read through the same C API, on read-only
//! connections and blocking threads (`direct_reads`).
//!
//! Its rows are read through the same trait as sqlx's (`sql::ReadRow`), each
//! column converted to the Rust type asked for, so the code that plans and
//! checks a write is the same on both connections.

use std::{
    collections::HashMap,
    ffi::{CStr, CString, c_char, c_int},
    ptr::{self, NonNull},
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
};

use chrono::{DateTime, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use libsqlite3_sys as ffi;
use sea_orm::{
    ConnectionTrait, DbBackend, DbErr, RuntimeErr, Statement, Value, sea_query::ArrayType, sqlx,
};

use super::sql::ReadRow;

/// Prepared statement lists kept per connection; past this many distinct
/// texts (which the write path's shapes never reach) the cache starts over.
const CACHED_TEXTS: usize = 512;

/// How long a direct connection waits for another's lock: the pool's busy
/// timeout (`db::connect_with`).
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A row as SQLite returned it, converted column by column on reading
/// ([`ReadRow`]): SQLite stores integers, booleans and timestamps as
/// integers and text, and the repository reads each column as the Rust
/// type it declares.
#[derive(Debug)]
pub(crate) struct DirectRow {
    columns: Vec<(String, Cell)>,
}

#[derive(Debug, Clone)]
enum Cell {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl ReadRow for DirectRow {
    fn read<T: sea_orm::TryGetable + sea_orm::sea_query::ValueType>(
        &self,
        column: &str,
    ) -> Result<T, DbErr> {
        let cell = self
            .columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, cell)| cell)
            .ok_or_else(|| custom(format!("no column {column:?}")))?;
        let value =
            convert(cell, T::array_type()).map_err(|e| custom(format!("column {column}: {e}")))?;
        T::try_from(value).map_err(|e| custom(format!("column {column}: {e}")))
    }
}

/// `cell` as the `Value` variant of `ty` (typed null included), which
/// `ValueType::try_from` takes.
fn convert(cell: &Cell, ty: ArrayType) -> Result<Value, String> {
    let int = |v: &Cell| match v {
        Cell::Integer(i) => Ok(*i),
        other => Err(format!("{other:?} is not an integer")),
    };
    let text = |v: &Cell| match v {
        Cell::Text(t) => Ok(t.clone()),
        Cell::Integer(i) => Ok(i.to_string()),
        other => Err(format!("{other:?} is not text")),
    };
    let null = matches!(cell, Cell::Null);
    Ok(match ty {
        ArrayType::Bool if null => Value::Bool(None),
        ArrayType::Bool => Value::Bool(Some(int(cell)? != 0)),
        ArrayType::Int if null => Value::Int(None),
        ArrayType::Int => Value::Int(Some(
            i32::try_from(int(cell)?).map_err(|_| "out of range for i32")?,
        )),
        ArrayType::BigInt if null => Value::BigInt(None),
        ArrayType::BigInt => Value::BigInt(Some(int(cell)?)),
        ArrayType::Double if null => Value::Double(None),
        ArrayType::Double => Value::Double(Some(match cell {
            Cell::Real(r) => *r,
            other => int(other)? as f64,
        })),
        ArrayType::String if null => Value::String(None),
        ArrayType::String => Value::String(Some(text(cell)?)),
        ArrayType::Bytes if null => Value::Bytes(None),
        ArrayType::Bytes => Value::Bytes(Some(match cell {
            Cell::Blob(b) => b.clone(),
            other => text(other)?.into_bytes(),
        })),
        ArrayType::ChronoDateTimeUtc if null => Value::ChronoDateTimeUtc(None),
        ArrayType::ChronoDateTimeUtc => Value::ChronoDateTimeUtc(Some(parse_time(&text(cell)?)?)),
        other => return Err(format!("no reading of SQLite values as {other:?}")),
    })
}

/// A SQLite connection driven on the calling thread. Only the holder of the
/// write turn uses it (it lives in the turn's slot), one call at a time.
pub(crate) struct DirectConn {
    db: NonNull<ffi::sqlite3>,
    /// Each text's statements, prepared once.
    cache: HashMap<String, Vec<Prepared>>,
    /// Pages in the write-ahead log after this connection's last commit
    /// (SQLite's WAL hook writes it; boxed, so its address stays put).
    wal_pages: Box<AtomicI32>,
}

// SAFETY: the connection is opened with SQLITE_OPEN_NOMUTEX and used by one
// thread at a time: the write turn's mutex hands it from one holder to the
// next, and nothing keeps a pointer into it across a hand-over.
unsafe impl Send for DirectConn {}

impl std::fmt::Debug for DirectConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectConn")
            .field("cached", &self.cache.len())
            .finish()
    }
}

struct Prepared(NonNull<ffi::sqlite3_stmt>);

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: prepared on a connection that is closed only after its
        // cache is dropped (`DirectConn::drop`).
        unsafe { ffi::sqlite3_finalize(self.0.as_ptr()) };
    }
}

impl DirectConn {
    /// Opens `path` with the pool's settings: WAL (already the file's
    /// mode), `synchronous = NORMAL`, foreign keys, no busy wait (see
    /// [`Self::begin_immediate`]).
    pub(crate) fn open(path: &str) -> Result<Self, DbErr> {
        let mut conn = Self::open_with(path, ffi::SQLITE_OPEN_READWRITE)?;
        // SAFETY: an open handle; the hook's argument is the boxed counter,
        // which lives as long as the connection (dropped after the close).
        // The hook replaces SQLite's automatic checkpoint on this
        // connection: a checkpoint writes and syncs the database file, which
        // must not hold a runtime thread (see `wal_pages`).
        unsafe {
            let counter: *const AtomicI32 = &*conn.wal_pages;
            ffi::sqlite3_wal_hook(
                conn.db.as_ptr(),
                Some(record_wal_pages),
                counter.cast_mut().cast(),
            );
        }
        conn.exec(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON",
        )?;
        Ok(conn)
    }

    /// Opens `path` read-only, for reads off the runtime's threads
    /// (`direct_reads`): no WAL hook (it never commits), and a busy wait
    /// for the rare moments a reader of a WAL database must wait (recovery
    /// after a crash, a checkpoint restarting the log).
    pub(crate) fn open_reader(path: &str) -> Result<Self, DbErr> {
        let conn = Self::open_with(path, ffi::SQLITE_OPEN_READONLY)?;
        let millis = c_int::try_from(BUSY_TIMEOUT.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: an open handle.
        unsafe { ffi::sqlite3_busy_timeout(conn.db.as_ptr(), millis) };
        Ok(conn)
    }

    /// `path` opened with `flags` (one thread at a time), extended result
    /// codes on.
    fn open_with(path: &str, flags: c_int) -> Result<Self, DbErr> {
        let c_path = CString::new(path).map_err(|_| custom("a database path with a NUL byte"))?;
        let mut db = ptr::null_mut();
        // SAFETY: a valid C string and out pointer; a handle comes back even
        // on failure, and is closed by `DirectConn`'s drop.
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                c_path.as_ptr(),
                &mut db,
                flags | ffi::SQLITE_OPEN_NOMUTEX,
                ptr::null(),
            )
        };
        let db =
            NonNull::new(db).ok_or_else(|| custom("SQLite could not allocate a connection"))?;
        let conn = Self {
            db,
            cache: HashMap::new(),
            wal_pages: Box::new(AtomicI32::new(0)),
        };
        if rc != ffi::SQLITE_OK {
            return Err(conn.error(rc));
        }
        // SAFETY: an open handle.
        unsafe { ffi::sqlite3_extended_result_codes(conn.db.as_ptr(), 1) };
        Ok(conn)
    }

    /// `BEGIN IMMEDIATE`. In this process the write turn already orders
    /// writers; another process's writer (a command-line tool) can still
    /// hold SQLite's lock, and then the caller waits with the pool's busy
    /// timeout off this thread ([`Self::begin_waiting`]), since a wait here
    /// would hold a runtime thread.
    pub(crate) fn begin_immediate(&mut self) -> Result<(), NotBegun> {
        match self.exec("BEGIN IMMEDIATE") {
            Ok(()) => Ok(()),
            Err(err) if is_busy(&err) => Err(NotBegun::Busy),
            Err(err) => Err(NotBegun::Failed(err)),
        }
    }

    /// `BEGIN IMMEDIATE`, waiting up to `timeout` for another process's
    /// writer (to run off the runtime's threads).
    pub(crate) fn begin_waiting(&mut self, timeout: std::time::Duration) -> Result<(), DbErr> {
        let millis = c_int::try_from(timeout.as_millis()).unwrap_or(c_int::MAX);
        // SAFETY: an open handle.
        unsafe { ffi::sqlite3_busy_timeout(self.db.as_ptr(), millis) };
        let begun = self.exec("BEGIN IMMEDIATE");
        // SAFETY: as above.
        unsafe { ffi::sqlite3_busy_timeout(self.db.as_ptr(), 0) };
        begun
    }

    /// Pages in the write-ahead log after the last commit on this
    /// connection: past SQLite's own threshold, the caller has the log
    /// checkpointed elsewhere (`group_commit`), as SQLite would have done
    /// inside the commit.
    pub(crate) fn wal_pages(&self) -> i32 {
        self.wal_pages.load(Ordering::Relaxed)
    }

    /// Whether a transaction is open (SQLite ends one itself after some
    /// errors, e.g. a full disk).
    pub(crate) fn in_transaction(&self) -> bool {
        // SAFETY: an open handle.
        unsafe { ffi::sqlite3_get_autocommit(self.db.as_ptr()) == 0 }
    }

    /// Runs statements without values or rows (transaction control).
    pub(crate) fn exec(&mut self, sql: &str) -> Result<(), DbErr> {
        self.query(sql, &[]).map(|_| ())
    }

    /// Runs `statement` (one or several statements, `?` placeholders taking
    /// its values in order across them) and returns every row they answer.
    pub(crate) fn query_statement(
        &mut self,
        statement: &Statement,
    ) -> Result<Vec<DirectRow>, DbErr> {
        let values = statement.values.as_ref().map_or(&[][..], |v| &v.0[..]);
        self.query(&statement.sql, values)
    }

    fn query(&mut self, sql: &str, values: &[Value]) -> Result<Vec<DirectRow>, DbErr> {
        if !self.cache.contains_key(sql) {
            let prepared = self.prepare(sql)?;
            if self.cache.len() >= CACHED_TEXTS {
                self.cache.clear();
            }
            self.cache.insert(sql.to_owned(), prepared);
        }
        let db = self.db;
        let statements = self
            .cache
            .get(sql)
            .ok_or_else(|| custom("a prepared statement went missing"))?;
        let mut rows = Vec::new();
        let mut next = 0;
        for statement in statements {
            let stmt = statement.0.as_ptr();
            let result = run(db, stmt, values, &mut next, &mut rows);
            // SAFETY: a statement of this connection; resetting it ends its
            // run and drops its bindings, whatever the outcome.
            unsafe {
                ffi::sqlite3_reset(stmt);
                ffi::sqlite3_clear_bindings(stmt);
            }
            result?;
        }
        if next != values.len() {
            return Err(custom(format!(
                "{} values for {next} placeholders",
                values.len()
            )));
        }
        Ok(rows)
    }

    fn prepare(&self, sql: &str) -> Result<Vec<Prepared>, DbErr> {
        let text = CString::new(sql).map_err(|_| custom("SQL text with a NUL byte"))?;
        let mut prepared = Vec::new();
        let mut rest: *const c_char = text.as_ptr();
        loop {
            let mut stmt = ptr::null_mut();
            let mut tail = ptr::null();
            // SAFETY: `rest` points into `text`, NUL-terminated, which
            // outlives this loop; SQLite writes the statement and the tail.
            let rc = unsafe {
                ffi::sqlite3_prepare_v3(
                    self.db.as_ptr(),
                    rest,
                    -1,
                    ffi::SQLITE_PREPARE_PERSISTENT,
                    &mut stmt,
                    &mut tail,
                )
            };
            if rc != ffi::SQLITE_OK {
                return Err(self.error(rc));
            }
            // None for text holding no statement (the end, white space).
            match NonNull::new(stmt) {
                Some(stmt) => prepared.push(Prepared(stmt)),
                None => break,
            }
            if tail.is_null() {
                break;
            }
            rest = tail;
        }
        Ok(prepared)
    }

    fn error(&self, rc: c_int) -> DbErr {
        error_of(self.db, rc)
    }
}

impl Drop for DirectConn {
    fn drop(&mut self) {
        self.cache.clear();
        // SAFETY: every statement of the connection was just finalized (so
        // the close cannot be refused); a transaction left open rolls back.
        unsafe { ffi::sqlite3_close(self.db.as_ptr()) };
    }
}

/// SQLite's WAL hook: called after each commit with the log's size.
unsafe extern "C" fn record_wal_pages(
    counter: *mut std::ffi::c_void,
    _db: *mut ffi::sqlite3,
    _name: *const c_char,
    pages: c_int,
) -> c_int {
    // SAFETY: the argument registered with the hook: the connection's boxed
    // counter, alive while the connection is open.
    let counter = unsafe { &*counter.cast::<AtomicI32>() };
    counter.store(pages, Ordering::Relaxed);
    ffi::SQLITE_OK
}

/// Binds the next values to `stmt`, steps it to the end and collects its
/// rows.
fn run(
    db: NonNull<ffi::sqlite3>,
    stmt: *mut ffi::sqlite3_stmt,
    values: &[Value],
    next: &mut usize,
    rows: &mut Vec<DirectRow>,
) -> Result<(), DbErr> {
    // SAFETY: `stmt` is a prepared statement of `db`.
    let wanted = usize::try_from(unsafe { ffi::sqlite3_bind_parameter_count(stmt) }).unwrap_or(0);
    let Some(mine) = values.get(*next..*next + wanted) else {
        return Err(custom(format!(
            "{} values for more than {} placeholders",
            values.len(),
            *next
        )));
    };
    for (index, value) in (1..).zip(mine) {
        bind(db, stmt, index, value)?;
    }
    *next += wanted;
    loop {
        // SAFETY: as above.
        let rc = unsafe { ffi::sqlite3_step(stmt) };
        match rc {
            ffi::SQLITE_ROW => rows.push(read_row(stmt)),
            ffi::SQLITE_DONE => return Ok(()),
            rc => return Err(error_of(db, rc)),
        }
    }
}

fn bind(
    db: NonNull<ffi::sqlite3>,
    stmt: *mut ffi::sqlite3_stmt,
    index: c_int,
    value: &Value,
) -> Result<(), DbErr> {
    let text = |s: &str| -> c_int {
        let len = c_int::try_from(s.len()).unwrap_or(c_int::MAX);
        // SAFETY: SQLite copies the bytes (TRANSIENT) before returning.
        unsafe {
            ffi::sqlite3_bind_text(stmt, index, s.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT())
        }
    };
    let int = |v: i64| -> c_int {
        // SAFETY: a prepared statement and an index it has.
        unsafe { ffi::sqlite3_bind_int64(stmt, index, v) }
    };
    // SAFETY: as above.
    let null = || unsafe { ffi::sqlite3_bind_null(stmt, index) };
    let rc = match value {
        Value::Bool(Some(v)) => int(i64::from(*v)),
        Value::TinyInt(Some(v)) => int(i64::from(*v)),
        Value::SmallInt(Some(v)) => int(i64::from(*v)),
        Value::Int(Some(v)) => int(i64::from(*v)),
        Value::BigInt(Some(v)) => int(*v),
        Value::TinyUnsigned(Some(v)) => int(i64::from(*v)),
        Value::SmallUnsigned(Some(v)) => int(i64::from(*v)),
        Value::Unsigned(Some(v)) => int(i64::from(*v)),
        // SQLite's integers are 64-bit signed (a LIMIT is bound as one).
        Value::BigUnsigned(Some(v)) => {
            int(i64::try_from(*v).map_err(|_| custom(format!("{v} is past SQLite's integers")))?)
        }
        Value::String(Some(v)) => text(v),
        // sqlx's text for a timestamp, so both connections write the same.
        Value::ChronoDateTimeUtc(Some(v)) => text(&v.to_rfc3339_opts(SecondsFormat::AutoSi, false)),
        Value::Bytes(Some(v)) => {
            let len = c_int::try_from(v.len()).unwrap_or(c_int::MAX);
            // SAFETY: SQLite copies the bytes (TRANSIENT) before returning.
            unsafe {
                ffi::sqlite3_bind_blob(stmt, index, v.as_ptr().cast(), len, ffi::SQLITE_TRANSIENT())
            }
        }
        Value::Bool(None)
        | Value::TinyInt(None)
        | Value::SmallInt(None)
        | Value::Int(None)
        | Value::BigInt(None)
        | Value::TinyUnsigned(None)
        | Value::SmallUnsigned(None)
        | Value::Unsigned(None)
        | Value::BigUnsigned(None)
        | Value::String(None)
        | Value::ChronoDateTimeUtc(None)
        | Value::Bytes(None) => null(),
        other => return Err(custom(format!("no SQLite binding for {other:?}"))),
    };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(error_of(db, rc))
    }
}

fn read_row(stmt: *mut ffi::sqlite3_stmt) -> DirectRow {
    // SAFETY: `stmt` has a row: its columns are readable until the next step.
    let count = unsafe { ffi::sqlite3_column_count(stmt) };
    let columns = (0..count)
        .map(|index| {
            // SAFETY: as above; the name is copied at once.
            let name = unsafe { CStr::from_ptr(ffi::sqlite3_column_name(stmt, index)) }
                .to_string_lossy()
                .into_owned();
            (name, read_cell(stmt, index))
        })
        .collect();
    DirectRow { columns }
}

fn read_cell(stmt: *mut ffi::sqlite3_stmt, index: c_int) -> Cell {
    // SAFETY: a column of the current row; its bytes are copied before the
    // next call on the statement.
    unsafe {
        match ffi::sqlite3_column_type(stmt, index) {
            ffi::SQLITE_NULL => Cell::Null,
            ffi::SQLITE_INTEGER => Cell::Integer(ffi::sqlite3_column_int64(stmt, index)),
            ffi::SQLITE_FLOAT => Cell::Real(ffi::sqlite3_column_double(stmt, index)),
            ffi::SQLITE_BLOB => {
                let ptr = ffi::sqlite3_column_blob(stmt, index).cast::<u8>();
                let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, index)).unwrap_or(0);
                Cell::Blob(if ptr.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(ptr, len).to_vec()
                })
            }
            _ => {
                let ptr = ffi::sqlite3_column_text(stmt, index);
                let len = usize::try_from(ffi::sqlite3_column_bytes(stmt, index)).unwrap_or(0);
                Cell::Text(if ptr.is_null() {
                    String::new()
                } else {
                    String::from_utf8_lossy(std::slice::from_raw_parts(ptr, len)).into_owned()
                })
            }
        }
    }
}

/// A timestamp as sqlx writes it (RFC 3339), or as SQLite's own functions
/// do (`YYYY-MM-DD HH:MM:SS`, UTC).
fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(text, "%F %T%.f")
        .map(|naive| Utc.from_utc_datetime(&naive))
        .map_err(|_| format!("not a timestamp: {text:?}"))
}

/// Why `BEGIN IMMEDIATE` did not begin.
#[derive(Debug)]
pub(crate) enum NotBegun {
    /// Another process's writer holds SQLite's lock.
    Busy,
    Failed(DbErr),
}

fn is_busy(err: &DbErr) -> bool {
    direct_code(err).is_some_and(|code| code & 0xff == ffi::SQLITE_BUSY)
}

/// A UNIQUE or PRIMARY KEY constraint failed on the direct connection
/// (SeaORM's `sql_err` knows only sqlx's own SQLite errors).
pub(crate) fn is_unique_violation(err: &DbErr) -> bool {
    matches!(
        direct_code(err),
        Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY)
    )
}

/// The SQLite (extended) result code of a direct connection's error.
pub(crate) fn direct_code(err: &DbErr) -> Option<c_int> {
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            match e.as_ref() {
                sqlx::Error::Database(db) => db
                    .try_downcast_ref::<DirectError>()
                    .map(|direct| direct.code),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A SQLite error on the direct connection, as sqlx reports its own (the
/// extended result code as the error's code), so the repository sorts both
/// alike (`error::classify`).
#[derive(Debug)]
pub(crate) struct DirectError {
    code: c_int,
    message: String,
}

impl std::fmt::Display for DirectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for DirectError {}

impl sqlx::error::DatabaseError for DirectError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                sqlx::error::ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => sqlx::error::ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => sqlx::error::ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => sqlx::error::ErrorKind::CheckViolation,
            _ => sqlx::error::ErrorKind::Other,
        }
    }
}

/// The main database's file, None in memory.
pub(crate) async fn database_file(db: &impl ConnectionTrait) -> Result<Option<String>, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
        ))
        .await?;
    let file: Option<String> = match row {
        Some(row) => row.try_get("", "file")?,
        None => None,
    };
    Ok(file.filter(|f| !f.is_empty()))
}

fn error_of(db: NonNull<ffi::sqlite3>, rc: c_int) -> DbErr {
    // SAFETY: an open handle; the message is copied before the next call.
    let (code, message) = unsafe {
        let code = ffi::sqlite3_extended_errcode(db.as_ptr());
        let message = CStr::from_ptr(ffi::sqlite3_errmsg(db.as_ptr()))
            .to_string_lossy()
            .into_owned();
        (if code == ffi::SQLITE_OK { rc } else { code }, message)
    };
    DbErr::Query(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Database(
        Box::new(DirectError { code, message }),
    ))))
}

fn custom(message: impl Into<String>) -> DbErr {
    DbErr::Custom(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(dir: &tempfile::TempDir) -> DirectConn {
        let path = dir.path().join("direct.db");
        std::fs::File::create(&path).unwrap();
        DirectConn::open(path.to_str().unwrap()).unwrap()
    }

    #[test]
    fn several_statements_take_their_values_in_order_and_answer_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = conn(&dir);
        conn.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, kind TEXT NOT NULL UNIQUE)")
            .unwrap();
        let statement = Statement::from_sql_and_values(
            sea_orm::DbBackend::Sqlite,
            "INSERT INTO t (kind) VALUES (?) RETURNING kind, id; \
             INSERT INTO t (kind) VALUES (?) RETURNING kind, id",
            [Value::from("a"), Value::from("b")],
        );
        let rows = conn.query_statement(&statement).unwrap();
        let read: Vec<(String, i64)> = rows
            .iter()
            .map(|r| (r.read("kind").unwrap(), r.read("id").unwrap()))
            .collect();
        assert_eq!(read, [("a".to_owned(), 1), ("b".to_owned(), 2)]);

        // Run again from the cache: a unique violation, reported as sqlx would.
        let err = conn.query_statement(&statement).unwrap_err();
        assert_eq!(direct_code(&err), Some(ffi::SQLITE_CONSTRAINT_UNIQUE));
        assert!(super::super::error::StorageError::is_unique_violation(&err));
    }

    #[test]
    fn timestamps_round_trip_in_sqlx_text() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = conn(&dir);
        conn.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, updated_at TEXT)")
            .unwrap();
        let now = Utc::now().trunc_subsecs(6);
        let insert = Statement::from_sql_and_values(
            sea_orm::DbBackend::Sqlite,
            "INSERT INTO t (updated_at) VALUES (?) RETURNING id, updated_at",
            [Value::from(now)],
        );
        let rows = conn.query_statement(&insert).unwrap();
        let read: DateTime<Utc> = rows[0].read("updated_at").unwrap();
        assert_eq!(read, now);
        let missing: Option<DateTime<Utc>> = conn
            .query_statement(&Statement::from_string(
                sea_orm::DbBackend::Sqlite,
                "SELECT NULL AS updated_at",
            ))
            .unwrap()[0]
            .read("updated_at")
            .unwrap();
        assert_eq!(missing, None);
    }

    #[test]
    fn too_few_values_is_an_error_not_a_null() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = conn(&dir);
        let statement = Statement::from_sql_and_values(
            sea_orm::DbBackend::Sqlite,
            "SELECT ? AS kind, ? AS id",
            [Value::from("only one")],
        );
        assert!(conn.query_statement(&statement).is_err());
    }

    #[test]
    fn unsigned_values_bind_as_integers_while_they_fit() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = conn(&dir);
        let limit = |v: u64| {
            Statement::from_sql_and_values(
                sea_orm::DbBackend::Sqlite,
                "SELECT value AS n FROM (SELECT 1 AS value UNION ALL SELECT 2) LIMIT ?",
                [Value::from(v)],
            )
        };
        assert_eq!(conn.query_statement(&limit(1)).unwrap().len(), 1);
        let err = conn.query_statement(&limit(u64::MAX)).unwrap_err();
        assert!(err.to_string().contains("past SQLite's integers"), "{err}");
    }

    #[test]
    fn a_reader_reads_what_the_writer_committed_and_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = conn(&dir);
        writer
            .exec("CREATE TABLE t (id INTEGER PRIMARY KEY)")
            .unwrap();
        writer.exec("INSERT INTO t (id) VALUES (7)").unwrap();
        let path = dir.path().join("direct.db");
        let mut reader = DirectConn::open_reader(path.to_str().unwrap()).unwrap();
        let read = Statement::from_string(sea_orm::DbBackend::Sqlite, "SELECT id FROM t");
        let rows = reader.query_statement(&read).unwrap();
        assert_eq!(rows[0].read::<i64>("id").unwrap(), 7);
        let err = reader.exec("INSERT INTO t (id) VALUES (8)").unwrap_err();
        assert_eq!(direct_code(&err), Some(ffi::SQLITE_READONLY));
    }

    use chrono::SubsecRound;
}
