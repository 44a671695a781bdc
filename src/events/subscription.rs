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
use tokio::sync::{broadcast::error::RecvError, mpsc};

use super::EventHub;
use crate::{
    domain::{EventFilter, StreamItem},
    storage::{Repository, StorageError},
};

/// Events read per replay query.
const PAGE: u64 = 500;
/// Replayed events go to the client in batches of this many: one channel
/// hand-over (a wake-up of the client's task) per batch, not per event.
const BATCH: usize = 64;
/// Batches buffered per stream between the task and the client: live
/// events travel one per batch, so a client may fall this many behind before
/// the task waits.
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
        mut live: tokio::sync::broadcast::Receiver<Arc<crate::domain::SequencedEvent>>,
    ) -> Result<(), Stop> {
        let idle = tokio::time::sleep(self.heartbeat);
        tokio::pin!(idle);
        loop {
            tokio::select! {
                biased;
                () = self.hub.shutdown.raised() => return Err(Stop::Done),
                () = self.tx.closed() => return Err(Stop::Done),
                received = live.recv() => match received {
                    Ok(event) => match seam(self.scanned, event.position) {
                        Seam::Seen => continue,
                        Seam::Gap => return Ok(()),
                        Seam::Next => {
                        self.scanned = event.position;
                        if self.filter.matches(&event.event) {
                            self.send(Ok(StreamItem::Event(Box::new((*event).clone()))))
                                .await?;
                            idle.as_mut().reset(tokio::time::Instant::now() + self.heartbeat);
                        }
                        }
                    },
                    Err(RecvError::Lagged(missed)) => {
                        self.span.in_scope(|| {
                            tracing::debug!(missed, "subscriber lagged; reading the table");
                        });
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
}
