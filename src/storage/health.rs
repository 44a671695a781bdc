//! Whether the database answers, known to every caller at once: a breaker
//! that calls trip when they find the database unavailable, and a probe
//! that checks it in the background (a pool with no free connection is
//! checked, not trusted: busy is not down). While it is open, calls fail at once
//! (no pool acquire timeout to wait out) and health reports NOT_SERVING;
//! the probe retries every 50 ms with a fresh connection, so the first call
//! after the database returns succeeds within about 0.1 s.

use std::{sync::Arc, time::Duration};

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{Notify, watch};

use super::{Repository, StorageError, StorageResult};

/// How often an open breaker tries the database again.
const RECOVERY_PROBE: Duration = Duration::from_millis(50);
/// Attempts of one step whose connection was lost before COMMIT.
const MAX_ATTEMPTS: usize = 4;
/// How long one probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Pool and probe settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Longest wait for a pooled connection before a call fails.
    pub acquire_timeout: Duration,
    /// How often the database is probed while it answers.
    pub probe_interval: Duration,
    /// Most connections the pool opens; None: 8 on SQLite, on PostgreSQL 8
    /// per core between 8 and 32 (`db::default_postgres_pool`).
    pub max_connections: Option<u32>,
    /// SQLite group commit: the longest a batch stays open for writers
    /// queued behind it (their first member waits that long at most).
    pub group_commit_max_age: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            acquire_timeout: Duration::from_secs(5),
            probe_interval: Duration::from_secs(1),
            max_connections: None,
            group_commit_max_age: super::group_commit::MAX_AGE,
        }
    }
}

/// The breaker: `true` while the database is believed reachable.
#[derive(Debug)]
pub struct DbHealth {
    available: watch::Sender<bool>,
    /// Wakes the probe when a call trips the breaker.
    tripped: Notify,
    /// The pool, whose state tells a busy service (every connection checked
    /// out) from a database that stopped answering.
    db: DatabaseConnection,
}

impl DbHealth {
    pub fn new(db: DatabaseConnection) -> Arc<Self> {
        Arc::new(Self {
            available: watch::Sender::new(true),
            tripped: Notify::new(),
            db,
        })
    }

    pub fn is_available(&self) -> bool {
        *self.available.borrow()
    }

    /// Follows the breaker (health reporting).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.available.subscribe()
    }

    /// Opens the breaker: a call found the database unavailable.
    pub fn trip(&self) {
        if self.available.send_replace(false) {
            tracing::error!("database unavailable: calls fail fast until it answers again");
        }
        self.tripped.notify_one();
    }

    fn recovered(&self) {
        if !self.available.send_replace(true) {
            tracing::info!("database reachable again");
        }
    }

    /// The refusal while the breaker is open.
    pub(crate) fn check(&self) -> StorageResult<()> {
        if self.is_available() {
            Ok(())
        } else {
            Err(StorageError::Unavailable(DbErr::Custom(
                "the database did not answer the last probe".into(),
            )))
        }
    }

    /// Resolves when the breaker opens (at once if it is open).
    pub(crate) async fn opened(&self) {
        let mut available = self.available.subscribe();
        let _ = available.wait_for(|up| !*up).await;
    }
}

impl DbHealth {
    /// Runs one database step. While the breaker is open it fails at once. A
    /// connection lost before anything was committed (a killed backend, a
    /// restarted server) is retried on another connection, a few times at
    /// most; a step that still finds the database unavailable trips the
    /// breaker, so that the calls after it fail fast. A connection lost
    /// during COMMIT is never retried (the outcome is unknown; callers retry
    /// with a request_id).
    pub async fn guarded<T, F, Fut>(&self, step: F) -> StorageResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        self.check()?;
        let mut result = step().await;
        // When the server killed its backends, the pool's other connections
        // are usually dead too: each failed attempt discards one, so a few
        // attempts reach a fresh connection.
        for _ in 1..MAX_ATTEMPTS {
            match &result {
                Err(err) if err.is_retryable() => {
                    tracing::warn!(error = %err, "database connection lost; retrying");
                    result = step().await;
                }
                _ => break,
            }
        }
        // One connection lost during COMMIT says nothing about the server
        // (e.g. an administrator killed that backend); no connection to be
        // had, or a retry that failed too, does.
        // A pool timeout may only mean that every connection is busy: with
        // all of them checked out the caller hears "overloaded"; either way
        // the probe decides about health, with a connection of its own.
        match result {
            Err(err @ StorageError::Unavailable(_)) if err.is_pool_timeout() => {
                tracing::debug!(error = %err, "no pooled connection in time; probing the database");
                self.tripped.notify_one();
                if super::db::pool_exhausted(&self.db) {
                    Err(err.pool_exhausted())
                } else {
                    Err(err)
                }
            }
            Err(err @ StorageError::Unavailable(_)) => {
                tracing::debug!(error = %err, "tripping the database breaker");
                self.trip();
                Err(err)
            }
            other => other,
        }
    }
}

impl Repository {
    /// [`DbHealth::guarded`] on this repository's breaker.
    pub async fn guarded<T, F, Fut>(&self, step: F) -> StorageResult<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = StorageResult<T>>,
    {
        self.health().guarded(step).await
    }

    /// Whether the database answers one cheap query now. A pool that does
    /// not answer (every connection busy, or all of them lost) is not taken
    /// for a database that does not: a fresh connection decides. While the
    /// breaker is open only that fresh connection is tried, as the pool's
    /// acquire would keep retrying until its timeout.
    async fn probe_once(&self, available: bool) -> bool {
        let pooled = async { self.ping().await.is_ok() };
        if available
            && tokio::time::timeout(PROBE_TIMEOUT, pooled)
                .await
                .unwrap_or(false)
        {
            return true;
        }
        tokio::time::timeout(
            PROBE_TIMEOUT,
            super::db::fresh_connection_answers(self.connection()),
        )
        .await
        .unwrap_or(false)
    }

    /// Probes the database until `stop` resolves, keeping the breaker true.
    pub async fn run_probe(self, settings: PoolSettings, stop: impl Future<Output = ()>) {
        let health = self.health().clone();
        let probe = async {
            loop {
                let available = health.is_available();
                let answered = self.probe_once(available).await;
                match (available, answered) {
                    (true, false) => health.trip(),
                    (false, true) => health.recovered(),
                    _ => {}
                }
                if health.is_available() {
                    tokio::select! {
                        () = tokio::time::sleep(settings.probe_interval) => {}
                        () = health.tripped.notified() => {}
                    }
                } else {
                    tokio::time::sleep(RECOVERY_PROBE).await;
                }
            }
        };
        tokio::select! {
            () = probe => {}
            () = stop => {}
        }
    }
}
