//! What the sequencer hands the fan-out of its own replica: the events it
//! just stamped (PostgreSQL, where the stamp returns them), so that they are
//! published without being read back from the table, or word that something
//! new is in the table. Bounded: past `MAX_HELD` events the fan-out is told
//! to read the table instead.
//!
//! It also tells the fan-out whether a hand-over is due (a stamp is running
//! or its events wait), so that the `NOTIFY` announcing that very stamp, which
//! can arrive before its rows do, does not send the fan-out to the table.

use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use crate::domain::SequencedEvent;

/// Events held for the fan-out at most.
const MAX_HELD: usize = 4096;

#[derive(Debug, Default)]
pub struct Stamped {
    wake: Notify,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    events: Vec<SequencedEvent>,
    read_table: bool,
    /// A stamp of this replica's is running: its hand-over will follow.
    stamping: bool,
    /// A stamp ended with nothing to hand over.
    settled: bool,
}

/// What the fan-out gets on a wake-up.
#[derive(Debug, PartialEq)]
pub enum Handed {
    /// Stamped events in position order; the fan-out still checks that they
    /// follow what it published (another sequencer may have stamped between).
    Events(Vec<SequencedEvent>),
    /// New rows are in the table.
    ReadTable,
}

impl Stamped {
    /// A stamp starts; it ends with `events`, `nothing` or `in_table`.
    pub fn stamping(&self) {
        self.held().stamping = true;
    }

    /// The stamp found nothing to stamp.
    pub fn nothing(&self) {
        {
            let mut held = self.held();
            held.stamping = false;
            held.settled = true;
        }
        self.wake.notify_one();
    }

    /// Whether a hand-over is on its way: a stamp is running, or what it
    /// handed over has not been taken yet.
    pub fn handover_due(&self) -> bool {
        let held = self.held();
        held.stamping || held.read_table || held.settled || !held.events.is_empty()
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Events just stamped, in position order.
    pub fn events(&self, events: Vec<SequencedEvent>) {
        {
            let mut held = self.held();
            held.stamping = false;
            if held.read_table || held.events.len() + events.len() > MAX_HELD {
                held.events.clear();
                held.read_table = true;
            } else {
                held.events.extend(events);
            }
        }
        self.wake.notify_one();
    }

    /// Something new is in the table (stamped by a writer, or by a stamp
    /// that does not return its rows).
    pub fn in_table(&self) {
        {
            let mut held = self.held();
            held.stamping = false;
            held.events.clear();
            held.read_table = true;
        }
        self.wake.notify_one();
    }

    /// Waits for the next hand-over. Cancel-safe: what was handed stays
    /// held until a call completes. The events may be none (after a stamp
    /// that found nothing, or a wake-up whose events an earlier call took):
    /// the fan-out then checks what was announced meanwhile.
    pub async fn next(&self) -> Handed {
        self.wake.notified().await;
        let mut held = self.held();
        held.settled = false;
        if std::mem::take(&mut held.read_table) {
            held.events.clear();
            return Handed::ReadTable;
        }
        Handed::Events(std::mem::take(&mut held.events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions(handed: Handed) -> Vec<u64> {
        match handed {
            Handed::Events(events) => events.iter().map(|e| e.position).collect(),
            Handed::ReadTable => panic!("expected events"),
        }
    }

    #[tokio::test]
    async fn batches_handed_before_a_wake_up_arrive_together_in_order() {
        let stamped = Stamped::default();
        stamped.events(vec![SequencedEvent::sample(1), SequencedEvent::sample(2)]);
        stamped.events(vec![SequencedEvent::sample(3)]);
        assert_eq!(positions(stamped.next().await), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_hand_over_is_due_from_the_stamp_until_it_is_taken() {
        let stamped = Stamped::default();
        assert!(!stamped.handover_due());
        stamped.stamping();
        assert!(stamped.handover_due());
        stamped.events(vec![SequencedEvent::sample(1)]);
        assert!(stamped.handover_due());
        assert_eq!(positions(stamped.next().await), vec![1]);
        assert!(!stamped.handover_due());

        // A stamp that found nothing still wakes the fan-out, with nothing.
        stamped.stamping();
        stamped.nothing();
        assert!(stamped.handover_due());
        assert!(positions(stamped.next().await).is_empty());
        assert!(!stamped.handover_due());

        // A failed stamp (it may have committed) sends it to the table.
        stamped.stamping();
        stamped.in_table();
        assert!(stamped.handover_due());
        assert_eq!(stamped.next().await, Handed::ReadTable);
        assert!(!stamped.handover_due());
    }

    #[tokio::test]
    async fn word_of_the_table_replaces_held_events() {
        let stamped = Stamped::default();
        stamped.events(vec![SequencedEvent::sample(1)]);
        stamped.in_table();
        stamped.events(vec![SequencedEvent::sample(2)]);
        assert_eq!(stamped.next().await, Handed::ReadTable);
    }

    #[tokio::test]
    async fn too_many_held_events_turn_into_a_table_read() {
        let stamped = Stamped::default();
        stamped.events((1..=MAX_HELD as u64).map(SequencedEvent::sample).collect());
        stamped.events(vec![SequencedEvent::sample(MAX_HELD as u64 + 1)]);
        assert_eq!(stamped.next().await, Handed::ReadTable);
        stamped.events(vec![SequencedEvent::sample(1)]);
        assert_eq!(positions(stamped.next().await), vec![1]);
    }
}
