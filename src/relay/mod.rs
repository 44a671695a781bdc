//! The JetStream relay: a door that publishes every `ConnectionRemoved`, in
//! position order and exactly once per position, to a NATS JetStream stream
//! (SPEC section 13). On when `--nats-url` is set.
//!
//! ```text
//! events table --(stamped, position order)--> relay leader --publish-->  JetStream stream
//!                                               |  Nats-Msg-Id = event_id
//!                                               |  Nats-Expected-Last-Sequence = position - 1
//!                                               v
//!                         event_sequence.relayed_through (acked so far)
//! ```
//!
//! - **One leader.** On PostgreSQL the replica holding a session advisory
//!   lock (not the sequencer's) relays; the others retry now and then and
//!   take over when the leader's connection dies. On SQLite the one process
//!   relays.
//! - **Stream sequence == position.** Each message may only be stored when
//!   the stream's last sequence is `position - 1`. On start (and after any
//!   error) the leader reads the stream's last sequence and resumes right
//!   after it, so a crash mid-batch neither skips nor repeats a position: a
//!   message that did reach the stream is never sent again, and one that did
//!   not is sent next. A new (empty) stream is moved to start at the earliest
//!   position still in the table (a purge with `seq`, which is what 2.9
//!   servers offer in place of a stream `first_seq`).
//! - **Pipelined.** Up to [`publisher::WINDOW`] publishes await their acks
//!   at once; acks are checked in order.
//! - **Nothing lost.** JetStream's acks move `relayed_through`; retention
//!   never prunes past it. NATS down or unreachable stops nothing else: the
//!   leader retries with backoff and catches up.
//! - **Lag.** Every replica samples the lag (positions and the age of the
//!   oldest unrelayed event) from the database, so it shows even while no
//!   leader runs: metrics, a `connections.relay` health entry and logs.
//!
//! Subjects are `<prefix>.<api_key>.<provider>` with escaped tokens, see
//! [`subject`]; payloads are built by [`message`].

pub mod message;
mod publisher;
pub mod subject;

use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle};
use tonic_health::server::HealthReporter;

use crate::{
    config::RelaySettings,
    events::{Shutdown, pause},
    storage::{Repository, events::LeaderLease},
    telemetry::metrics::RelayMetrics,
};

/// Health entry (gRPC health service name) reporting the relay's lag.
pub const HEALTH_SERVICE: &str = "connections.relay";
/// Lag (age of the oldest unrelayed event) from which the relay's health
/// entry is NOT_SERVING and a warning is logged.
pub const LAG_ALARM: Duration = Duration::from_secs(60);
/// How often the lag warning repeats while the relay stays behind.
const LAG_LOG_EVERY: Duration = Duration::from_secs(30);

/// The relay, not yet started.
pub struct Relay {
    repo: Repository,
    settings: RelaySettings,
    metrics: &'static RelayMetrics,
}

impl Relay {
    pub fn new(repo: Repository, settings: RelaySettings, metrics: &'static RelayMetrics) -> Self {
        Self {
            repo,
            settings,
            metrics,
        }
    }

    /// Spawns the relay. `head` is the replica's fan-out head (it moves when
    /// new positions are stamped: the relay's wake-up); `health`, when
    /// given, gets the [`HEALTH_SERVICE`] entry.
    pub fn start(
        self,
        head: watch::Receiver<u64>,
        health: Option<HealthReporter>,
        shutdown: Shutdown,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            tokio::join!(
                self.watch_lag(health, &shutdown),
                self.elect(head, &shutdown)
            );
        })
    }

    /// Leads whenever this replica can; returns at shutdown.
    async fn elect(&self, mut head: watch::Receiver<u64>, shutdown: &Shutdown) {
        if !self.repo.is_postgres() {
            self.lead(None, &mut head, shutdown).await;
            return;
        }
        let mut candidate = self.repo.relay_candidate();
        loop {
            match candidate.try_lead().await {
                Ok(Some(lease)) => {
                    tracing::info!("this replica is the JetStream relay");
                    self.lead(Some(lease), &mut head, shutdown).await;
                }
                Ok(None) => {}
                Err(err) => tracing::warn!(error = %err, "cannot try the relay lock"),
            }
            if pause(self.settings.leader_retry, shutdown).await {
                return;
            }
        }
    }

    /// Relays until shutdown or until the lease is lost, reconnecting with
    /// backoff after every failure.
    async fn lead(
        &self,
        mut lease: Option<LeaderLease>,
        head: &mut watch::Receiver<u64>,
        shutdown: &Shutdown,
    ) {
        self.metrics.set_leader(true);
        let mut backoff = Backoff::default();
        let client = loop {
            match publisher::connect(&self.settings).await {
                Ok(client) => break Some(client),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %err, retry_in = ?delay, "cannot set up the NATS client");
                    if pause(delay, shutdown).await {
                        break None;
                    }
                }
            }
        };
        if let Some(client) = client {
            let mut publisher = publisher::Publisher {
                repo: &self.repo,
                settings: &self.settings,
                metrics: self.metrics,
                client,
                lease: &mut lease,
                head,
                shutdown,
            };
            loop {
                // A session notices shutdown itself (and collects the acks
                // in flight); this bounds the wait when it is stuck opening
                // the stream on an unreachable server.
                let stuck = async {
                    shutdown.raised().await;
                    tokio::time::sleep(publisher::DRAIN_ON_SHUTDOWN * 2).await;
                };
                let ended = tokio::select! {
                    ended = publisher.session(&mut backoff) => ended,
                    () = stuck => publisher::Ended::Shutdown,
                };
                match ended {
                    publisher::Ended::Shutdown => break,
                    publisher::Ended::LostLease => {
                        tracing::warn!("lost the relay lock's connection: no longer relaying");
                        break;
                    }
                    publisher::Ended::Failed(reason) => {
                        self.metrics.set_connected(false);
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %reason, retry_in = ?delay, "JetStream relay interrupted; will resume from the stream's last sequence");
                        if pause(delay, shutdown).await {
                            break;
                        }
                    }
                }
            }
            // Flushes nothing: every publish that matters was awaited.
            drop(publisher);
        }
        self.metrics.set_connected(false);
        self.metrics.set_leader(false);
        if let Some(held) = lease {
            held.release().await;
        }
    }

    /// Samples the relay's lag from the database on every replica: metric,
    /// health entry and a warning while it is large.
    async fn watch_lag(&self, health: Option<HealthReporter>, shutdown: &Shutdown) {
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut healthy = None;
        let mut last_warning: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = shutdown.raised() => return,
                _ = tick.tick() => {}
            }
            let (positions, seconds) = match self.lag().await {
                Ok(lag) => lag,
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the relay's progress");
                    continue;
                }
            };
            self.metrics.set_lag(positions, seconds);
            let ok = seconds < LAG_ALARM.as_secs_f64();
            if healthy != Some(ok) {
                if let Some(health) = &health {
                    let status = if ok {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status(HEALTH_SERVICE, status).await;
                }
                if ok && healthy.is_some() {
                    tracing::info!(lag_positions = positions, "JetStream relay caught up");
                }
                healthy = Some(ok);
            }
            if !ok && last_warning.is_none_or(|at| at.elapsed() >= LAG_LOG_EVERY) {
                tracing::warn!(
                    lag_positions = positions,
                    lag_seconds = seconds,
                    "JetStream relay is behind: events are kept until it catches up"
                );
                last_warning = Some(tokio::time::Instant::now());
            }
        }
    }

    /// Positions not yet relayed, and the age in seconds of the oldest one.
    async fn lag(&self) -> Result<(u64, f64), crate::storage::StorageError> {
        let progress = self.repo.relay_progress().await?;
        let relayed = progress
            .relayed_through
            .unwrap_or(progress.pruned_through)
            .max(progress.pruned_through);
        if !self.metrics.is_leader() {
            self.metrics.set_relayed_position(relayed);
        }
        let positions = progress.last_position.saturating_sub(relayed);
        if positions == 0 {
            return Ok((0, 0.0));
        }
        let seconds = self
            .repo
            .event_occurred_at(relayed + 1)
            .await?
            .and_then(|at| (chrono::Utc::now() - at).to_std().ok())
            .map_or(0.0, |age| age.as_secs_f64());
        Ok((positions, seconds))
    }
}

/// Exponential backoff between relay attempts, reset once a session starts.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert_eq!(delays[7], Duration::from_secs(5));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
