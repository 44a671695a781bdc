//! The per-replica fan-out: reads every newly sequenced event from the table
//! once, publishes it on a bounded broadcast channel, then moves the head.
//! The broadcast never blocks: a subscriber that falls more than its capacity
//! behind is told it lagged and re-reads the table itself, so a slow client
//! costs neither writers nor the sequencer anything.
//!
//! A read that fails (the database is down, or a stored event cannot be
//! decoded) is retried after a back-off ([`Retry`]), not on every wake-up:
//! an event that cannot be read stays unreadable until someone repairs it.
//! Live delivery waits at that position meanwhile; nothing is skipped.

use std::sync::Arc;

use tokio::{
    sync::{broadcast, watch},
    time::MissedTickBehavior,
};

use super::{
    Shutdown,
    retry::Retry,
    stamped::{Handed, Stamped},
};
use crate::{
    config::EventSettings,
    domain::{EventFilter, SequencedEvent},
    storage::{
        Repository, StorageError,
        events::{EVENTS_CHANNEL, NotificationListener},
    },
    telemetry::metrics::EventMetrics,
};

/// Rows read per query.
const PAGE: u64 = 500;

pub async fn run(
    repo: Repository,
    settings: EventSettings,
    sequenced: Arc<Stamped>,
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
    // A table read is owed at start, and after any wake-up that did not
    // settle what is new.
    let mut retry = Retry::new(settings.poll_interval, "reading new events");
    // The highest head announced while this replica's sequencer had a
    // hand-over due: read from the table if the hand-over falls short.
    let mut announced = 0;
    loop {
        if retry.ready()
            && let Some((err, wait)) =
                retry.record(publish_new(&repo, &live, &head, metrics, &mut published).await)
        {
            tracing::warn!(
                error = %err,
                published,
                failures = retry.failures(),
                retry_in_ms = wait.as_millis(),
                "cannot read new events; live delivery waits at this position"
            );
        }
        let mut read_table = true;
        tokio::select! {
            () = shutdown.raised() => return,
            handed = sequenced.next() => {
                if let Handed::Events(events) = handed {
                    read_table = !publish_stamped(events, &live, &head, metrics, &mut published)
                        || announced > published;
                }
            }
            notified = listener.wait() => {
                // This replica's own stamps are announced too, sometimes
                // before the sequencer hands their rows over: nothing to
                // read when they are published, or about to be.
                match notified {
                    Some(stamped_head) if stamped_head <= published => read_table = false,
                    Some(stamped_head) if sequenced.handover_due() => {
                        announced = announced.max(stamped_head);
                        read_table = false;
                    }
                    _ => {}
                }
            }
            _ = poll.tick() => {}
            () = retry.elapsed() => {}
        }
        retry.owe(read_table);
    }
}

/// Publishes events handed over by this replica's sequencer, if they follow
/// what was published; returns false when the table must be read instead.
fn publish_stamped(
    events: Vec<SequencedEvent>,
    live: &broadcast::Sender<Arc<SequencedEvent>>,
    head: &watch::Sender<u64>,
    metrics: &EventMetrics,
    published: &mut u64,
) -> bool {
    let fresh: Vec<SequencedEvent> = events
        .into_iter()
        .filter(|e| e.position > *published)
        .collect();
    let follows = fresh
        .iter()
        .zip(*published + 1..)
        .all(|(e, expected)| e.position == expected);
    if !follows {
        return false;
    }
    if !fresh.is_empty() {
        publish(fresh, live, head, metrics, published);
    }
    true
}

/// Publishes what the table holds after `published`.
async fn publish_new(
    repo: &Repository,
    live: &broadcast::Sender<Arc<SequencedEvent>>,
    head: &watch::Sender<u64>,
    metrics: &EventMetrics,
    published: &mut u64,
) -> Result<(), StorageError> {
    let everything = EventFilter::default();
    loop {
        let page = repo.events_after(*published, &everything, PAGE).await?;
        let full = page.len() as u64 == PAGE;
        publish(page, live, head, metrics, published);
        if !full {
            return Ok(());
        }
    }
}

/// Sends `events` (following `published`, in position order) to the live
/// channel and moves the head.
fn publish(
    events: Vec<SequencedEvent>,
    live: &broadcast::Sender<Arc<SequencedEvent>>,
    head: &watch::Sender<u64>,
    metrics: &EventMetrics,
    published: &mut u64,
) {
    let now = chrono::Utc::now();
    for event in events {
        *published = event.position;
        // Write (occurred_at is taken just before its statement: see
        // `storage::removal`) to publication here: the write, its commit, the
        // stamp and the hand-over.
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
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Live {
        tx: broadcast::Sender<Arc<SequencedEvent>>,
        rx: broadcast::Receiver<Arc<SequencedEvent>>,
        head: watch::Sender<u64>,
        metrics: EventMetrics,
        published: u64,
    }

    impl Live {
        fn at(published: u64) -> Self {
            let (tx, rx) = broadcast::channel(16);
            Self {
                tx,
                rx,
                head: watch::Sender::new(published),
                metrics: EventMetrics::detached(),
                published,
            }
        }

        fn hand(&mut self, positions: &[u64]) -> bool {
            let events = positions
                .iter()
                .copied()
                .map(SequencedEvent::sample)
                .collect();
            publish_stamped(
                events,
                &self.tx,
                &self.head,
                &self.metrics,
                &mut self.published,
            )
        }

        fn sent(&mut self) -> Vec<u64> {
            std::iter::from_fn(|| self.rx.try_recv().ok().map(|e| e.position)).collect()
        }
    }

    #[test]
    fn handed_events_that_follow_the_head_are_published_without_a_read() {
        let mut live = Live::at(4);
        assert!(live.hand(&[5, 6, 7]));
        assert_eq!(live.sent(), vec![5, 6, 7]);
        assert_eq!((live.published, *live.head.borrow()), (7, 7));
    }

    #[test]
    fn handed_events_already_read_from_the_table_are_skipped() {
        let mut live = Live::at(6);
        assert!(live.hand(&[5, 6, 7]));
        assert_eq!(live.sent(), vec![7]);
        assert!(live.hand(&[6, 7]));
        assert!(live.sent().is_empty());
        assert_eq!(live.published, 7);
    }

    #[test]
    fn a_gap_before_the_handed_events_sends_the_fan_out_to_the_table() {
        let mut live = Live::at(4);
        assert!(!live.hand(&[6, 7]));
        assert!(!live.hand(&[5, 7]));
        assert!(live.sent().is_empty());
        assert_eq!((live.published, *live.head.borrow()), (4, 4));
    }
}
