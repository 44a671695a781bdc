//! The per-replica fan-out: reads every newly sequenced event from the table
//! once, publishes it on a bounded broadcast channel, then moves the head.
//! The broadcast never blocks: a subscriber that falls more than its capacity
//! behind is told it lagged and re-reads the table itself, so a slow client
//! costs neither writers nor the sequencer anything.

use std::sync::Arc;

use tokio::{
    sync::{Notify, broadcast, watch},
    time::MissedTickBehavior,
};

use super::Shutdown;
use crate::{
    config::EventSettings,
    domain::{EventFilter, SequencedEvent},
    storage::{
        Repository,
        events::{EVENTS_CHANNEL, NotificationListener},
    },
    telemetry::metrics::EventMetrics,
};

/// Rows read per query.
const PAGE: u64 = 500;

pub async fn run(
    repo: Repository,
    settings: EventSettings,
    sequenced: Arc<Notify>,
    live: broadcast::Sender<Arc<SequencedEvent>>,
    head: watch::Sender<u64>,
    metrics: &'static EventMetrics,
    shutdown: Shutdown,
) {
    // Start at the head read before the server began serving (older events
    // are served from the table); streams opened since then expect every
    // later position on the live channel.
    let mut published = *head.borrow();
    let mut listener = NotificationListener::new(repo.clone(), EVENTS_CHANNEL);
    let mut poll = tokio::time::interval(settings.poll_interval);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        publish_new(&repo, &live, &head, metrics, &mut published).await;
        tokio::select! {
            () = shutdown.raised() => return,
            () = sequenced.notified() => {}
            () = listener.wait() => {}
            _ = poll.tick() => {}
        }
    }
}

async fn publish_new(
    repo: &Repository,
    live: &broadcast::Sender<Arc<SequencedEvent>>,
    head: &watch::Sender<u64>,
    metrics: &EventMetrics,
    published: &mut u64,
) {
    let everything = EventFilter::default();
    loop {
        let page = match repo.events_after(*published, &everything, PAGE).await {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read new events; will retry");
                return;
            }
        };
        let full = page.len() as u64 == PAGE;
        let now = chrono::Utc::now();
        for event in page {
            *published = event.position;
            // Commit (occurred_at is taken just before) to publication here.
            let lag = (now - event.event.occurred_at).to_std().unwrap_or_default();
            metrics.record_sequencing_lag(lag.as_secs_f64());
            // No receiver is fine: nobody is tailing right now.
            let _ = live.send(Arc::new(event));
        }
        metrics.set_head_position(*published);
        head.send_if_modified(|h| {
            let moved = *h != *published;
            *h = *published;
            moved
        });
        if !full {
            return;
        }
    }
}
