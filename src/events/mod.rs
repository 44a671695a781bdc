//! The event machinery between the outbox table and `Subscribe` streams.
//!
//! ```text
//! writers --(outbox rows, position NULL)--> events table
//!    | in-process Notify / NOTIFY connections_outbox after the commit
//!    | (from a replica whose sequencer does not lead)
//!    v
//! sequencer (one per database) --stamps positions 1, 2, 3 ...--> events table
//!    | the stamped rows in process (PostgreSQL) / NOTIFY connections_events
//!    v
//! fan-out (one per replica) --reads rows it was not handed, once--> broadcast + head watch
//!    v
//! subscriptions (one task per stream): replay from the table, then tail live
//! ```
//!
//! - [`sequencer`]: stamps committed rows with dense positions in commit
//!   order; on PostgreSQL only the holder of an advisory lock does it.
//! - [`stamped`]: the sequencer's hand-over to its own replica's fan-out.
//! - [`fanout`]: publishes each newly stamped row once per replica on a
//!   bounded broadcast channel: as handed over by the local sequencer, else
//!   read from the table.
//! - [`subscription`]: a stream's task: replay, `CaughtUp`, live tail,
//!   heartbeats, falling back to the table when it lags.
//! - [`retention`]: prunes old events and moves `pruned_through`.
//!
//! Wake-ups are pushed; a slow poll (`EventSettings::poll_interval`) is only a
//! safety net for a lost notification. Everything stops when the shutdown
//! signal is raised.

pub mod fanout;
pub mod retention;
mod retry;
pub mod sequencer;
pub mod stamped;
pub mod subscription;

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{broadcast, watch},
    task::JoinHandle,
};

use crate::{
    config::EventSettings, domain::SequencedEvent, storage::Repository,
    telemetry::metrics::EventMetrics,
};

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

    /// [`Self::raised`] as a future that owns its signal.
    pub fn raised_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|raised| *raised).await;
        }
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
    pub(crate) metrics: &'static EventMetrics,
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
    metrics: &'static EventMetrics,
    live: broadcast::Sender<Arc<SequencedEvent>>,
    head: watch::Sender<u64>,
}

/// Creates the hub (for the Subscribe service) and the tasks that feed it.
/// `head` is the last sequenced position when the server starts: the
/// fan-out publishes every later one, so a stream that read the table up to
/// the hub's head can never miss one between the table and the live channel.
pub fn build(
    repo: Repository,
    settings: EventSettings,
    shutdown: Shutdown,
    head: u64,
    metrics: &'static EventMetrics,
) -> (EventHub, EventTasks) {
    let (live, _) = broadcast::channel(LIVE_CAPACITY);
    let (head_tx, head_rx) = watch::channel(head);
    let hub = EventHub {
        live: live.clone(),
        head: head_rx,
        shutdown,
        settings: settings.clone(),
        metrics,
    };
    let tasks = EventTasks {
        repo,
        settings,
        metrics,
        live,
        head: head_tx,
    };
    (hub, tasks)
}

impl EventTasks {
    /// Spawns the sequencer, the fan-out and the pruner.
    pub fn start(self, shutdown: Shutdown) -> Vec<JoinHandle<()>> {
        let sequenced = Arc::new(stamped::Stamped::default());
        vec![
            tokio::spawn(sequencer::run(
                self.repo.clone(),
                self.settings.clone(),
                sequenced.clone(),
                self.metrics,
                shutdown.clone(),
            )),
            tokio::spawn(fanout::run(
                self.repo.clone(),
                self.settings.clone(),
                sequenced,
                self.live,
                self.head,
                self.metrics,
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
