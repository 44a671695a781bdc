//! What the sequencer hands the fan-out of its own replica: the events it
//! just stamped (PostgreSQL, where the stamp returns them), so that they are
//! published without being read back from the table, or word that something
//! new is in the table. Bounded: past `MAX_HELD` events the fan-out is told
//! to read the table instead.

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
    /// Events just stamped, in position order.
    pub fn events(&self, events: Vec<SequencedEvent>) {
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
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
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            held.events.clear();
            held.read_table = true;
        }
        self.wake.notify_one();
    }

    /// Waits for the next hand-over. Cancel-safe: what was handed stays
    /// held until a call completes.
    pub async fn next(&self) -> Handed {
        loop {
            self.wake.notified().await;
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if std::mem::take(&mut held.read_table) {
                held.events.clear();
                return Handed::ReadTable;
            }
            if !held.events.is_empty() {
                return Handed::Events(std::mem::take(&mut held.events));
            }
        }
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
