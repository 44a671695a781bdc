//! Retention: deletes sequenced events older than the configured age, in
//! small transactions, oldest position first, and records how far it went in
//! `event_sequence.pruned_through` (subscribing after a pruned position is
//! refused, so nobody silently misses events). With the JetStream relay on,
//! it never deletes past `event_sequence.relayed_through`: an event that has
//! not reached the broker stays, however old.
//!
//! It also forgets followed action links an hour after they were followed:
//! their links have expired by then (they live 15 minutes), so a click can
//! no longer reach the record.

use chrono::Utc;

use super::{Shutdown, pause};
use crate::{config::EventSettings, storage::Repository};

/// How long a followed action link is remembered: well past its expiry.
const USED_LINK_MEMORY: chrono::Duration = chrono::Duration::hours(1);

/// Events deleted per transaction.
const PRUNE_BATCH: u64 = 1000;

pub async fn run(repo: Repository, settings: EventSettings, shutdown: Shutdown) {
    let retention = chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX);
    loop {
        if let Some(cutoff) = Utc::now().checked_sub_signed(retention) {
            prune(&repo, cutoff, settings.keep_unrelayed, &shutdown).await;
        }
        prune_used_links(&repo).await;
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

async fn prune_used_links(repo: &Repository) {
    let Some(cutoff) = Utc::now().checked_sub_signed(USED_LINK_MEMORY) else {
        return;
    };
    match repo.prune_used_links(cutoff).await {
        Ok(0) => {}
        Ok(deleted) => tracing::info!(deleted, "forgot expired action links"),
        Err(err) => tracing::warn!(error = %err, "pruning used action links failed; will retry"),
    }
}
