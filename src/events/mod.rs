//! The event machinery between the outbox table and `Subscribe` streams.
//!
//! ```text
//! writers --(outbox rows, position NULL)--> events table
//!    | in-process Notify / NOTIFY connections_outbox
//!    v
//! sequencer (one per database) --stamps positions 1, 2, 3 ...--> events table
//!    | in-process Notify / NOTIFY connections_events
//!    v
//! fan-out (one per replica) --reads new rows once--> broadcast + head watch
//!    v
//! subscriptions (one task per stream): replay from the table, then tail live
//! ```
//!
//! - [`sequencer`]: stamps committed rows with dense positions in commit
//!   order; on PostgreSQL only the holder of an advisory lock does it.
//! - [`fanout`]: reads each newly stamped row once per replica and publishes
//!   it on a bounded broadcast channel.
//! - [`subscription`]: a stream's task: replay, `CaughtUp`, live tail,
//!   heartbeats, falling back to the table when it lags.
//! - [`retention`]: prunes old events and moves `pruned_through`.
//!
//! Wake-ups are pushed; a slow poll (`EventSettings::poll_interval`) is only a
//! safety net for a lost notification. Everything stops when the shutdown
//! signal is raised.

pub mod fanout;
pub mod retention;
pub mod sequencer;
pub mod subscription;

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{Notify, broadcast, watch},
    task::JoinHandle,
};

use crate::{config::EventSettings, domain::SequencedEvent, storage::Repository};

/// Capacity of the per-replica live channel. A subscriber that falls this
/// far behind gets `Lagged` and goes back to reading the table.
const LIVE_CAPACITY: usize = 4096;

/// Raised once when the server starts shutting down.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the switch that raises it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    pub fn is_raised(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown starts (or the switch is gone).
    pub async fn raised(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|raised| *raised).await;
    }
}

/// What streams need: the live channel, the head and the shutdown signal.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct EventHub {
    pub(crate) live: broadcast::Sender<Arc<SequencedEvent>>,
    pub(crate) head: watch::Receiver<u64>,
    pub(crate) shutdown: Shutdown,
    pub(crate) settings: EventSettings,
}

impl EventHub {
    /// The newest position this replica has published.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    pub fn settings(&self) -> &EventSettings {
        &self.settings
    }
}

/// The background tasks, not yet started.
pub struct EventTasks {
    repo: Repository,
    settings: EventSettings,
    live: broadcast::Sender<Arc<SequencedEvent>>,
    head: watch::Sender<u64>,
}

/// Creates the hub (for the gRPC services) and the tasks that feed it.
/// `head` is the last sequenced position when the server starts: the
/// fan-out publishes every later one, so a stream that read the table up to
/// the hub's head can never miss one between the table and the live channel.
pub fn build(
    repo: Repository,
    settings: EventSettings,
    shutdown: Shutdown,
    head: u64,
) -> (EventHub, EventTasks) {
    let (live, _) = broadcast::channel(LIVE_CAPACITY);
    let (head_tx, head_rx) = watch::channel(head);
    let hub = EventHub {
        live: live.clone(),
        head: head_rx,
        shutdown,
        settings: settings.clone(),
    };
    let tasks = EventTasks {
        repo,
        settings,
        live,
        head: head_tx,
    };
    (hub, tasks)
}

impl EventTasks {
    /// Spawns the sequencer, the fan-out and the pruner.
    pub fn start(self, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
        let sequenced = Arc::new(Notify::new());
        vec![
            tokio::spawn(sequencer::run(
                self.repo.clone(),
                self.settings.clone(),
                sequenced.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(fanout::run(
                self.repo.clone(),
                self.settings.clone(),
                sequenced,
                self.live,
                self.head,
                shutdown.clone(),
            )),
            tokio::spawn(retention::run(self.repo, self.settings, shutdown)),
        ]
    }
}

/// Sleeps, unless shutdown starts first; returns whether shutdown started.
pub(crate) async fn pause(duration: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => shutdown.is_raised(),
        () = shutdown.raised() => true,
    }
}

/// A PostgreSQL LISTEN on one channel that reconnects after failures. On
/// SQLite it never fires (in-process wake-ups are enough there).
pub(crate) struct Listener {
    repo: Repository,
    channel: &'static str,
    inner: Option<sea_orm::sqlx::postgres::PgListener>,
}

impl Listener {
    pub(crate) fn new(repo: Repository, channel: &'static str) -> Self {
        Self {
            repo,
            channel,
            inner: None,
        }
    }

    /// Resolves on a notification, or after a lost connection or an error
    /// (notifications may have been missed: the caller re-reads the table).
    pub(crate) async fn wait(&mut self) {
        if !self.repo.is_postgres() {
            return std::future::pending().await;
        }
        let listener = match &mut self.inner {
            Some(listener) => listener,
            None => match self.repo.listen(self.channel).await {
                Ok(listener) => self.inner.insert(listener),
                Err(err) => {
                    tracing::warn!(channel = self.channel, error = %err, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    return;
                }
            },
        };
        match crate::storage::events::next_notification(listener).await {
            Ok(Some(_)) => while listener.next_buffered().is_some() {},
            Ok(None) => tracing::warn!(channel = self.channel, "LISTEN connection lost"),
            Err(err) => {
                tracing::warn!(channel = self.channel, error = %err, "LISTEN failed; reconnecting");
                self.inner = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
