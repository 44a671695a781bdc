//! Retention: deletes sequenced events older than the configured age, in
//! small transactions, oldest position first, and records how far it went in
//! `event_sequence.pruned_through` (subscribing after a pruned position is
//! refused, so nobody silently misses events). With the JetStream relay on,
//! it never deletes past `event_sequence.relayed_through`: an event that has
//! not reached the broker stays, however old.

use chrono::Utc;

use super::{Shutdown, pause};
use crate::{config::EventSettings, storage::Repository};

/// Events deleted per transaction.
const PRUNE_BATCH: u64 = 1000;

pub async fn run(repo: Repository, settings: EventSettings, shutdown: Shutdown) {
    let retention = chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
    loop {
        if let Some(cutoff) = Utc::now().checked_sub_signed(retention) {
            prune(&repo, cutoff, settings.keep_unrelayed, &shutdown).await;
        }
        if pause(settings.prune_interval, &shutdown).await {
            return;
        }
    }
}

async fn prune(
    repo: &Repository,
    cutoff: chrono::DateTime<Utc>,
    keep_unrelayed: bool,
    shutdown: &Shutdown,
) {
    let mut total = 0;
    while !shutdown.is_raised() {
        match repo.prune_events(cutoff, PRUNE_BATCH, keep_unrelayed).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < PRUNE_BATCH {
                    break;
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "pruning events failed; will retry");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(deleted = total, %cutoff, "pruned old events");
    }
}
