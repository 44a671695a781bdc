//! One task per `Subscribe` stream, writing into a small bounded channel
//! that the gRPC response drains.
//!
//! The task replays from the table in pages, sends `CaughtUp` once, then
//! tails the replica's broadcast. It subscribes to the broadcast *before* its
//! last table read, so an event is either in that read or in the broadcast
//! (possibly both: positions already seen are skipped). `scanned` is the
//! highest position examined, matching the filter or not; a live event that
//! is not `scanned + 1`, or a lagged receiver, means something was missed,
//! and the task goes back to the table. While the client does not read, the
//! task waits on its channel and the broadcast receiver lags: memory stays
//! bounded and nobody else waits.
//!
//! The task ends when the client goes away, when the server shuts down (the
//! stream then ends with OK), or after a storage error (sent as the final
//! item).

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use tokio::sync::{
    broadcast::{
        self,
        error::{RecvError, TryRecvError},
    },
    mpsc,
};

use super::EventHub;
use crate::{
    domain::{EventFilter, SequencedEvent, StreamItem},
    storage::{Repository, StorageError},
};

/// Events read per replay query.
const PAGE: u64 = 500;
/// Replayed events, and live events already published when the task wakes,
/// go to the client in batches of up to this many: one channel hand-over (a
/// wake-up of the client's task) per batch, not per event.
const BATCH: usize = 64;
/// Batches buffered per stream between the task and the client, so at most
/// this many times [`BATCH`] events: a live batch may hold a single event,
/// so a client may fall as few as this many events behind before the task
/// waits (and its broadcast receiver starts to lag).
const STREAM_BUFFER: usize = 4;

pub type Item = Result<StreamItem, StorageError>;

/// A subscription, with its start already resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every event with a position up to this one is not wanted.
    pub after: u64,
    pub filter: EventFilter,
    pub heartbeat: Duration,
}

/// Starts the stream's task; the receiver ends when the task does. Items
/// come in batches, in order.
pub fn spawn(repo: Repository, hub: EventHub, plan: Plan) -> mpsc::Receiver<Vec<Item>> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    // Counted as a live subscriber for as long as the task runs.
    let gauge = hub.metrics.subscriber_opened();
    // The task logs inside the Subscribe call's span, so its lines name
    // the call. It enters the span only to log: entering it on every poll
    // (`Instrument`) cost a replay 7% of its CPU (the OpenTelemetry layer
    // attaches a context on each entry).
    let span = tracing::Span::current();
    tokio::spawn(async move {
        run(repo, hub, plan, tx, span).await;
        drop(gauge);
    });
    rx
}

/// Where a live event falls relative to the positions already examined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seam {
    /// Already read from the table (the overlap at the seam): skip it.
    Seen,
    /// The very next position: deliver it (if it matches).
    Next,
    /// Something between was missed: go back to the table.
    Gap,
}

fn seam(scanned: u64, position: u64) -> Seam {
    if position <= scanned {
        Seam::Seen
    } else if position == scanned + 1 {
        Seam::Next
    } else {
        Seam::Gap
    }
}

/// What a tail woken by a live event sends, and whether it must then go
/// back to the table.
struct LiveBatch {
    items: Vec<Item>,
    gap: bool,
    /// Set when the channel had dropped events for this receiver (a lag,
    /// which is also a gap): how many.
    missed: Option<u64>,
}

/// Takes `first` and the events published after it that are already in the
/// channel, up to [`BATCH`]: events published together (a shared commit's,
/// a sequencer batch's) go to the client in one hand-over, so one wake-up of
/// its response task and one write to its connection, not one per event.
/// Stops at a gap or a lag (what was missed is in the table); advances
/// `scanned` over every next position, matching `filter` or not.
fn take_published(
    first: &SequencedEvent,
    live: &mut broadcast::Receiver<Arc<SequencedEvent>>,
    scanned: &mut u64,
    filter: &EventFilter,
) -> LiveBatch {
    let mut items = Vec::new();
    let mut take = |event: &SequencedEvent| {
        let seam = seam(*scanned, event.position);
        if seam == Seam::Next {
            *scanned = event.position;
            if filter.matches(&event.event) {
                items.push(Ok(StreamItem::Event(Box::new(event.clone()))));
            }
        }
        seam == Seam::Gap
    };
    let mut gap = take(first);
    let mut missed = None;
    let mut examined = 1;
    while !gap && examined < BATCH {
        gap = match live.try_recv() {
            Ok(event) => take(&event),
            Err(TryRecvError::Lagged(count)) => {
                missed = Some(count);
                true
            }
            // Closed: the next `recv` says so.
            Err(TryRecvError::Empty | TryRecvError::Closed) => break,
        };
        examined += 1;
    }
    LiveBatch { items, gap, missed }
}

/// Why the task stopped.
enum Stop {
    /// Client gone, shutdown, or an error already sent.
    Done,
}

async fn run(
    repo: Repository,
    hub: EventHub,
    plan: Plan,
    tx: mpsc::Sender<Vec<Item>>,
    span: tracing::Span,
) {
    let Plan {
        after,
        filter,
        heartbeat,
    } = plan;
    let mut task = Task {
        repo,
        hub,
        filter,
        heartbeat,
        tx,
        scanned: after,
        caught_up: false,
        span,
    };
    let _ = task.stream().await;
}

struct Task {
    repo: Repository,
    hub: EventHub,
    filter: EventFilter,
    heartbeat: Duration,
    tx: mpsc::Sender<Vec<Item>>,
    /// Every position up to this one has been examined (sent or filtered out).
    scanned: u64,
    caught_up: bool,
    /// The Subscribe call's span, entered to log.
    span: tracing::Span,
}

impl Task {
    async fn stream(&mut self) -> Result<(), Stop> {
        loop {
            let live = self.hub.live.subscribe();
            self.replay().await?;
            if !self.caught_up {
                self.caught_up = true;
                self.send(Ok(StreamItem::CaughtUp {
                    head_position: self.scanned,
                }))
                .await?;
            }
            self.tail(live).await?;
        }
    }

    /// Reads the table from `scanned` until a short page.
    async fn replay(&mut self) -> Result<(), Stop> {
        loop {
            // Read before the query: every position up to it is committed
            // and therefore in the query's result if it matches.
            let head = self.hub.head();
            let page = match self
                .repo
                .events_after(self.scanned, &self.filter, PAGE)
                .await
            {
                Ok(page) => page,
                Err(err) => {
                    self.span.in_scope(|| {
                        tracing::error!(error = %err, "subscription cannot read events");
                    });
                    let _ = self.send(Err(err)).await;
                    return Err(Stop::Done);
                }
            };
            let full = page.len() as u64 == PAGE;
            let mut events = page.into_iter().peekable();
            while events.peek().is_some() {
                let batch: Vec<Item> = events
                    .by_ref()
                    .take(BATCH)
                    .map(|event| {
                        self.scanned = event.position;
                        Ok(StreamItem::Event(Box::new(event)))
                    })
                    .collect();
                self.send_batch(batch).await?;
            }
            if !full {
                self.scanned = self.scanned.max(head);
                return Ok(());
            }
        }
    }

    /// Forwards live events; returns to let the caller re-read the table
    /// after a gap or a lag.
    async fn tail(
        &mut self,
        mut live: broadcast::Receiver<Arc<SequencedEvent>>,
    ) -> Result<(), Stop> {
        let idle = tokio::time::sleep(self.heartbeat);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                () = self.hub.shutdown.raised() => return Err(Stop::Done),
                () = self.tx.closed() => return Err(Stop::Done),
                received = live.recv() => match received {
                    Ok(event) => {
                        let live_batch =
                            take_published(&event, &mut live, &mut self.scanned, &self.filter);
                        if !live_batch.items.is_empty() {
                            self.send_batch(live_batch.items).await?;
                            idle.as_mut().reset(tokio::time::Instant::now() + self.heartbeat);
                        }
                        if let Some(missed) = live_batch.missed {
                            self.lagged(missed);
                        }
                        if live_batch.gap {
                            return Ok(());
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        self.lagged(missed);
                        return Ok(());
                    }
                    Err(RecvError::Closed) => return Err(Stop::Done),
                },
                () = &mut idle => {
                    // Never expected, but cheap to heal: if the live channel
                    // skipped something, the table has it.
                    if self.hub.head() > self.scanned {
                        self.span.in_scope(|| {
                            tracing::warn!(scanned = self.scanned, head = self.hub.head(), "stream behind the head while idle; re-reading the table");
                        });
                        return Ok(());
                    }
                    self.send(Ok(StreamItem::Heartbeat {
                        head_position: self.hub.head().max(self.scanned),
                        time: Utc::now(),
                    }))
                    .await?;
                    idle.as_mut().reset(tokio::time::Instant::now() + self.heartbeat);
                }
            }
        }
    }

    fn lagged(&self, missed: u64) {
        self.span.in_scope(|| {
            tracing::debug!(missed, "subscriber lagged; reading the table");
        });
    }

    /// Waits for room in the channel, unless the client leaves or the
    /// server shuts down first.
    async fn send(&self, item: Item) -> Result<(), Stop> {
        self.send_batch(vec![item]).await
    }

    async fn send_batch(&self, batch: Vec<Item>) -> Result<(), Stop> {
        let events = batch
            .iter()
            .filter(|item| matches!(item, Ok(StreamItem::Event(_))))
            .count();
        tokio::select! {
            sent = self.tx.send(batch) => {
                sent.map_err(|_| Stop::Done)?;
                if events > 0 {
                    self.hub.metrics.events_delivered(events as u64);
                }
                Ok(())
            }
            () = self.hub.shutdown.raised() => Err(Stop::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_at_the_seam_are_skipped_delivered_or_send_us_back() {
        assert_eq!(seam(10, 9), Seam::Seen);
        assert_eq!(seam(10, 10), Seam::Seen);
        assert_eq!(seam(10, 11), Seam::Next);
        assert_eq!(seam(10, 12), Seam::Gap);
        assert_eq!(seam(0, 1), Seam::Next);
    }

    /// A live channel of `capacity` holding events at `positions`, its
    /// sender gone (closed after what it sent).
    fn published(capacity: usize, positions: &[u64]) -> broadcast::Receiver<Arc<SequencedEvent>> {
        let (tx, rx) = broadcast::channel(capacity);
        for &position in positions {
            tx.send(Arc::new(SequencedEvent::sample(position))).ok();
        }
        rx
    }

    /// What a tail woken by the event at `first` sends (its positions), and
    /// whether it goes back to the table.
    fn taken_from(
        live: &mut broadcast::Receiver<Arc<SequencedEvent>>,
        first: u64,
        scanned: &mut u64,
        filter: &EventFilter,
    ) -> (Vec<u64>, bool) {
        let batch = take_published(&SequencedEvent::sample(first), live, scanned, filter);
        let positions = batch
            .items
            .iter()
            .map(|item| match item {
                Ok(StreamItem::Event(event)) => event.position,
                other => panic!("not an event: {other:?}"),
            })
            .collect();
        (positions, batch.gap)
    }

    fn taken(
        first: u64,
        rest: &[u64],
        scanned: &mut u64,
        filter: &EventFilter,
    ) -> (Vec<u64>, bool) {
        taken_from(&mut published(16, rest), first, scanned, filter)
    }

    #[test]
    fn events_already_published_go_in_one_batch_in_order() {
        let mut scanned = 4;
        let all = EventFilter::default();
        assert_eq!(
            taken(5, &[6, 7, 8], &mut scanned, &all),
            (vec![5, 6, 7, 8], false)
        );
        assert_eq!(scanned, 8);
    }

    #[test]
    fn live_events_seen_in_the_replay_are_skipped_and_a_gap_ends_the_batch() {
        let mut scanned = 6;
        let all = EventFilter::default();
        // 5 and 6 were in the last table read; 9 skips 8.
        assert_eq!(
            taken(5, &[6, 7, 9, 10], &mut scanned, &all),
            (vec![7], true)
        );
        assert_eq!(scanned, 7);
    }

    #[test]
    fn events_the_filter_drops_still_advance_the_scan() {
        let mut scanned = 0;
        let other_key = EventFilter {
            api_keys: Some(["other".to_owned()].into()),
            ..EventFilter::default()
        };
        assert_eq!(taken(1, &[2, 3], &mut scanned, &other_key), (vec![], false));
        assert_eq!(scanned, 3);
    }

    #[test]
    fn a_lagged_receiver_sends_what_it_has_and_goes_back_to_the_table() {
        let mut live = published(2, &[2, 3, 4, 5]);
        let mut scanned = 0;
        let all = EventFilter::default();
        let batch = take_published(&SequencedEvent::sample(1), &mut live, &mut scanned, &all);
        assert_eq!((batch.items.len(), batch.gap), (1, true));
        assert_eq!(batch.missed, Some(2), "the two oldest were dropped");
        assert_eq!(scanned, 1);
    }

    #[test]
    fn a_batch_holds_at_most_batch_events() {
        let last = BATCH as u64;
        let rest: Vec<u64> = (2..=last + 10).collect();
        let mut live = published(2 * BATCH, &rest);
        let mut scanned = 0;
        let all = EventFilter::default();
        let (positions, gap) = taken_from(&mut live, 1, &mut scanned, &all);
        assert_eq!((positions, gap), ((1..=last).collect(), false));
        assert_eq!(scanned, last);
        // The rest wait in the channel for the next wake-up.
        assert_eq!(live.try_recv().map(|e| e.position).ok(), Some(last + 1));
    }
}
