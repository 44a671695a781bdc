//! The sequencer: stamps committed outbox rows with dense positions, in id
//! order, in short transactions of its own, so writers never wait for each
//! other and a reader of `position > cursor` can never skip a row that
//! committed late (it simply gets a later position).
//!
//! One sequencer runs per database. On SQLite the single writer makes that
//! true of every stamping transaction anyway. On PostgreSQL the replica that
//! holds a session advisory lock leads; the others retry now and then, so
//! leadership moves when the leader dies. The stamping transaction also locks
//! the `event_sequence` row, so even two sequencers could not double-stamp.
//!
//! A stamp that fails is retried after a back-off ([`Retry`]), not on every
//! writer's wake-up.

use std::sync::Arc;

use tokio::time::MissedTickBehavior;

use super::{Shutdown, pause, retry::Retry, stamped::Stamped};
use crate::{
    config::EventSettings,
    storage::{
        Repository, StorageResult,
        events::{NotificationListener, OUTBOX_CHANNEL, SequencerLease},
    },
    telemetry::metrics::EventMetrics,
};

/// Rows stamped per transaction.
const STAMP_BATCH: u64 = 1000;

/// Runs until shutdown. `sequenced` hears of every stamping commit.
pub async fn run(
    repo: Repository,
    settings: EventSettings,
    sequenced: Arc<Stamped>,
    metrics: &'static EventMetrics,
    shutdown: Shutdown,
) {
    if !repo.is_postgres() {
        lead(&repo, &settings, &sequenced, metrics, &shutdown, None).await;
        return;
    }
    let mut candidate = repo.sequencer_candidate();
    loop {
        match candidate.try_lead().await {
            Ok(Some(lease)) => {
                tracing::info!("this replica is the event sequencer");
                lead(
                    &repo,
                    &settings,
                    &sequenced,
                    metrics,
                    &shutdown,
                    Some(lease),
                )
                .await;
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(error = %err, "cannot try the sequencer lock"),
        }
        if pause(settings.leader_retry, &shutdown).await {
            return;
        }
    }
}

/// Stamps on every wake-up until shutdown or until the lease is lost.
async fn lead(
    repo: &Repository,
    settings: &EventSettings,
    sequenced: &Stamped,
    metrics: &EventMetrics,
    shutdown: &Shutdown,
    mut lease: Option<SequencerLease>,
) {
    let written = repo.outbox_notifier();
    let mut listener = NotificationListener::new(repo.clone(), OUTBOX_CHANNEL);
    let mut poll = tokio::time::interval(settings.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Where writers stamp their own rows, a write wakes the fan-out directly;
    // the poll still stamps anything left unstamped (e.g. by an older version).
    let stamped_on_write = repo.sequences_on_write();
    // Marked before the first stamp: a commit after it is either stamped
    // there or wakes this loop.
    let _leading = Leading::mark(repo);
    // A stamp is owed at start, and after any wake-up that did not settle it.
    let mut retry = Retry::new(settings.poll_interval, "sequencing");
    loop {
        if retry.ready()
            && let Some((err, wait)) =
                retry.record(stamp_all(repo, lease.as_mut(), sequenced, metrics).await)
        {
            tracing::warn!(
                error = %err,
                failures = retry.failures(),
                retry_in_ms = wait.as_millis(),
                "sequencing failed; will retry"
            );
            if let Some(held) = &mut lease
                && !held.is_alive().await
            {
                tracing::warn!("lost the sequencer lock's connection");
                return;
            }
        }
        let mut stamp = true;
        tokio::select! {
            () = shutdown.raised() => break,
            () = written.notified() => {
                if stamped_on_write {
                    sequenced.in_table();
                    stamp = false;
                }
            }
            _ = listener.wait() => {}
            _ = poll.tick() => {
                if let Some(held) = &mut lease
                    && !held.is_alive().await
                {
                    tracing::warn!("lost the sequencer lock's connection");
                    return;
                }
                // Sampled here, not on every write's wake-up: the backlog
                // only stays above zero when stamping is failing or behind.
                match repo.count_unsequenced_events().await {
                    Ok(pending) => metrics.set_unsequenced(pending),
                    Err(err) => tracing::debug!(error = %err, "cannot count unsequenced events"),
                }
            }
            () = retry.elapsed() => {}
        }
        retry.owe(stamp);
    }
    if let Some(held) = lease {
        held.release().await;
    }
}

/// Marks this replica's sequencer as leading until dropped, however `lead`
/// ends.
struct Leading<'a>(&'a Repository);

impl<'a> Leading<'a> {
    fn mark(repo: &'a Repository) -> Self {
        repo.set_sequencer_leading(true);
        Self(repo)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.set_sequencer_leading(false);
    }
}

/// Stamps until nothing is pending, or the first failure. The
/// leader on PostgreSQL stamps on its lock's connection, which returns the
/// rows for the fan-out; elsewhere the fan-out reads them from the table.
///
/// A batch shorter than `STAMP_BATCH` stamped every row pending when it ran,
/// so it ends the round without a second, empty stamp: a row committed
/// after it has its writer's wake-up (sent after the commit) still to come.
async fn stamp_all(
    repo: &Repository,
    mut lease: Option<&mut SequencerLease>,
    sequenced: &Stamped,
    metrics: &EventMetrics,
) -> StorageResult<()> {
    loop {
        let stamped = match lease.as_deref_mut() {
            Some(held) => {
                sequenced.stamping();
                match held.stamp_events(STAMP_BATCH).await {
                    Ok(events) => {
                        let full = events.len() as u64 == STAMP_BATCH;
                        let head = events.last().map(|e| e.position);
                        if head.is_some() {
                            sequenced.events(events);
                        } else {
                            sequenced.nothing();
                        }
                        Ok(head.map(|head| (head, full)))
                    }
                    Err(err) => {
                        // It may have committed: the fan-out reads the table.
                        sequenced.in_table();
                        Err(err)
                    }
                }
            }
            // SQLite, only for rows an older version left unstamped (rare):
            // its stamp returns just the head, so a round ends with a stamp
            // that finds nothing.
            None => repo
                .stamp_pending_events(STAMP_BATCH)
                .await
                .inspect(|head| {
                    if head.is_some() {
                        sequenced.in_table();
                    }
                })
                .map(|head| head.map(|head| (head, true))),
        };
        if let Some((head, full)) = stamped? {
            tracing::debug!(head, "sequenced events");
            if full {
                continue;
            }
        }
        metrics.set_unsequenced(0);
        return Ok(());
    }
}
