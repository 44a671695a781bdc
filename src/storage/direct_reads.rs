//! SQLite: pages of events read through SQLite's C API on a blocking thread.
//!
//! Through sqlx, every row of a page is a message from the connection's
//! worker thread to the reader's task; a replay reads pages of hundreds of
//! rows back to back, and without those hand-offs (and the thread switches
//! behind them) a replay takes 30% less of the server's CPU
//! (`bench/NOTES.md`, the seventeenth session). Here a page is one
//! blocking task: the statement runs and its rows are decoded on a
//! thread of tokio's blocking pool, so neither SQLite's work nor a page read
//! from disk holds a runtime thread, and the runtime only takes the decoded
//! events. Connections are read-only, opened on first use, and kept for the
//! next page; at most [`READERS`] pages are read at once (each connection
//! has a page cache of its own: two hundred subscribers catching up at once
//! must not open two hundred). An in-memory database (which other
//! connections cannot open) keeps every read on the pool.

use std::sync::{Arc, Mutex, MutexGuard};

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::Semaphore;

use super::{
    direct::{DirectConn, database_file},
    error::{StorageError, StorageResult},
};

/// Pages read at once, each on a connection of its own (kept for the next
/// page); a reader past this waits for one to finish.
const READERS: usize = 8;

/// The readers of one SQLite database (see the module's doc).
#[derive(Debug, Clone)]
pub(crate) struct DirectReads {
    db: DatabaseConnection,
    state: Arc<Mutex<State>>,
    readers: Arc<Semaphore>,
}

#[derive(Debug)]
struct State {
    source: Source,
    idle: Vec<DirectConn>,
}

#[derive(Debug, Clone)]
enum Source {
    /// Not asked yet (or the last asking failed).
    Unknown,
    File(String),
    /// In memory, or the file would not open: reads stay on the pool.
    Pool,
}

impl DirectReads {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            state: Arc::new(Mutex::new(State {
                source: Source::Unknown,
                idle: Vec::new(),
            })),
            readers: Arc::new(Semaphore::new(READERS)),
        }
    }

    /// `work` on a read-only connection, on a blocking thread; `None` when
    /// reads stay on the pool (the caller reads there).
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut DirectConn) -> StorageResult<T> + Send + 'static,
    ) -> Option<StorageResult<T>> {
        let path = match self.source().await {
            Ok(Some(path)) => path,
            Ok(None) => return None,
            Err(err) => return Some(Err(err.into())),
        };
        let Ok(reader) = self.readers.clone().acquire_owned().await else {
            // Never closed.
            return None;
        };
        let state = self.state.clone();
        // The connection and the permit go back inside the task, so a
        // caller that goes away strands nothing.
        let done = tokio::task::spawn_blocking(move || {
            let _reader = reader;
            let idle = lock(&state).idle.pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => DirectConn::open_reader(&path)?,
            };
            let result = work(&mut conn);
            lock(&state).idle.push(conn);
            result
        })
        .await;
        Some(done.unwrap_or_else(|err| {
            Err(StorageError::Database(DbErr::Custom(format!(
                "a SQLite read ended without an answer: {err}"
            ))))
        }))
    }

    /// The database's file, asked of the pool once.
    async fn source(&self) -> Result<Option<String>, DbErr> {
        let known = lock(&self.state).source.clone();
        let source = match known {
            Source::File(path) => return Ok(Some(path)),
            Source::Pool => return Ok(None),
            Source::Unknown => match database_file(&self.db).await? {
                Some(path) => match DirectConn::open_reader(&path) {
                    Ok(conn) => {
                        lock(&self.state).idle.push(conn);
                        Source::File(path)
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "SQLite: no direct read connection; event pages are read through the pool");
                        Source::Pool
                    }
                },
                None => Source::Pool,
            },
        };
        lock(&self.state).source = source.clone();
        Ok(match source {
            Source::File(path) => Some(path),
            _ => None,
        })
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock leaves the list intact.
    state.lock().unwrap_or_else(|e| e.into_inner())
}
