//! The in-memory outbox of one endpoint: a bounded FIFO of events waiting to be sent, plus
//! the accounting of the ones in flight (they count against the bound until they leave).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::Overflow;
use crate::event::Event;

/// What [`crate::Bridge::enqueue`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued with room to spare.
    Queued,
    /// Queued after dropping this many of the oldest queued events (`drop_oldest`).
    DroppedOldest(u64),
    /// Refused: the outbox is full (`drop_new`), or the event could never fit.
    DroppedNew,
}

/// The result of [`Outbox::push`], for the caller to act on outside the lock.
pub(crate) struct Pushed {
    pub outcome: Enqueued,
    /// Ids to forget in the durable store (dropped oldest, or the refused new one). Inline:
    /// with a full outbox every push drops one, and a heap `Vec` per event showed.
    pub dropped_ids: smallvec::SmallVec<[u64; 4]>,
}

/// What the dispatcher should do next.
#[derive(Debug)]
pub(crate) enum NextBatch {
    Send(Vec<Event>),
    /// A partial batch becomes due at this instant (unless it fills up first).
    DueAt(Instant),
    Empty,
}

struct Queued {
    event: Event,
    /// When a partial batch starting with this event must go.
    due_at: Instant,
}

pub(crate) struct Outbox {
    ready: VecDeque<Queued>,
    ready_bytes: usize,
    in_flight_events: usize,
    in_flight_bytes: usize,
    max_events: usize,
    max_bytes: usize,
    overflow: Overflow,
    batch_age: Duration,
}

impl Outbox {
    pub fn new(
        max_events: usize,
        max_bytes: usize,
        overflow: Overflow,
        batch_age: Duration,
    ) -> Self {
        Outbox {
            ready: VecDeque::new(),
            ready_bytes: 0,
            in_flight_events: 0,
            in_flight_bytes: 0,
            max_events,
            max_bytes,
            overflow,
            batch_age,
        }
    }

    /// Undelivered events, queued and in flight.
    pub fn depth(&self) -> usize {
        self.ready.len() + self.in_flight_events
    }

    pub fn bytes(&self) -> usize {
        self.ready_bytes + self.in_flight_bytes
    }

    /// Adds an event at the back, applying the overflow policy.
    pub fn push(&mut self, event: Event, now: Instant) -> Pushed {
        let size = event.size();
        let (max_events, max_bytes) = (self.max_events, self.max_bytes);
        let fits = |events: usize, bytes: usize| {
            events < max_events && bytes.saturating_add(size) <= max_bytes
        };
        let mut dropped_ids = smallvec::SmallVec::new();
        let outcome = if fits(self.depth(), self.bytes()) {
            Enqueued::Queued
        } else if self.overflow == Overflow::DropNew
            // Dropping every queued event would still not make room: in-flight events are
            // not ours to drop, and an event larger than the whole bound never fits.
            || !fits(self.in_flight_events, self.in_flight_bytes)
        {
            Enqueued::DroppedNew
        } else {
            while !fits(self.depth(), self.bytes()) {
                // Never runs dry: `fits` holds once only in-flight events are left.
                let Some(oldest) = self.ready.pop_front() else {
                    break;
                };
                self.ready_bytes -= oldest.event.size();
                dropped_ids.push(oldest.event.id);
            }
            Enqueued::DroppedOldest(dropped_ids.len() as u64)
        };
        if outcome == Enqueued::DroppedNew {
            dropped_ids.push(event.id);
        } else {
            self.ready_bytes += size;
            self.ready.push_back(Queued {
                event,
                due_at: now + self.batch_age,
            });
        }
        Pushed {
            outcome,
            dropped_ids,
        }
    }

    /// Whether every new event would be refused now, whatever its size: `drop_new` and the
    /// outbox at its bound. Mirrored in an atomic after every change (`worker.rs`), so
    /// that a publisher can skip building an event nobody will keep.
    pub fn refuses_every_event(&self) -> bool {
        self.overflow == Overflow::DropNew
            && (self.depth() >= self.max_events || self.bytes() >= self.max_bytes)
    }

    /// The next request's events, if one is due: a full batch at once, a partial one when its
    /// oldest event has waited `batch_age`. The events move to the in-flight accounting.
    pub fn next_batch(&mut self, batch_max: usize, now: Instant) -> NextBatch {
        let Some(oldest) = self.ready.front() else {
            return NextBatch::Empty;
        };
        let batch_max = batch_max.max(1);
        if batch_max > 1 && self.ready.len() < batch_max && now < oldest.due_at {
            return NextBatch::DueAt(oldest.due_at);
        }
        let take = batch_max.min(self.ready.len());
        let events: Vec<Event> = self.ready.drain(..take).map(|q| q.event).collect();
        let bytes: usize = events.iter().map(Event::size).sum();
        self.ready_bytes -= bytes;
        self.in_flight_events += events.len();
        self.in_flight_bytes += bytes;
        NextBatch::Send(events)
    }

    /// In-flight events that left the outbox (delivered or buried).
    pub fn finish(&mut self, events: &[Event]) {
        let bytes: usize = events.iter().map(Event::size).sum();
        self.in_flight_events = self.in_flight_events.saturating_sub(events.len());
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(bytes);
    }

    /// In-flight events whose attempt failed: back to the front, in their order, so they go
    /// out before newer events. They have waited their batch age already, so they are due as
    /// soon as the backoff lets the next request start.
    pub fn retry_later(&mut self, events: Vec<Event>, now: Instant) {
        self.finish(&events);
        for event in events.into_iter().rev() {
            self.ready_bytes += event.size();
            self.ready.push_front(Queued { event, due_at: now });
        }
    }

    /// Takes queued events from the front while they are at least `max_age_ms` old. The queue
    /// is oldest-first (apart from requeued dead letters), so stopping at the first young
    /// event keeps this cheap while still finding the expired ones of a dead endpoint.
    pub fn take_expired(&mut self, now_ms: u64, max_age_ms: u64) -> Vec<Event> {
        let mut expired = Vec::new();
        while let Some(front) = self.ready.front() {
            if now_ms.saturating_sub(front.event.created_ms) < max_age_ms {
                break;
            }
            if let Some(queued) = self.ready.pop_front() {
                self.ready_bytes -= queued.event.size();
                expired.push(queued.event);
            }
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventKind;
    use bytes::Bytes;

    fn event(id: u64, size: usize) -> Event {
        Event {
            id,
            kind: EventKind::MessagePublish,
            created_ms: id,
            body: Bytes::from(vec![b'x'; size]).into(),
        }
    }

    fn ids(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn drop_oldest_drops_queued_events_oldest_first() {
        let now = Instant::now();
        let mut outbox = Outbox::new(3, usize::MAX, Overflow::DropOldest, Duration::ZERO);
        for id in 0..3 {
            assert_eq!(outbox.push(event(id, 1), now).outcome, Enqueued::Queued);
        }
        let pushed = outbox.push(event(3, 1), now);
        assert_eq!(pushed.outcome, Enqueued::DroppedOldest(1));
        assert_eq!(pushed.dropped_ids.as_slice(), [0]);
        assert!(!outbox.refuses_every_event(), "drop_oldest makes room");
        // In-flight events are never dropped.
        let NextBatch::Send(sent) = outbox.next_batch(1, now) else {
            panic!("a batch should be due");
        };
        assert_eq!(ids(&sent), [1]);
        let pushed = outbox.push(event(4, 1), now);
        assert_eq!(pushed.dropped_ids.as_slice(), [2]);
        assert_eq!(outbox.depth(), 3);
    }

    #[test]
    fn drop_new_refuses_every_event_exactly_while_full() {
        let now = Instant::now();
        let mut outbox = Outbox::new(2, 100, Overflow::DropNew, Duration::ZERO);
        outbox.push(event(0, 1), now);
        assert!(!outbox.refuses_every_event());
        outbox.push(event(1, 1), now);
        assert!(outbox.refuses_every_event(), "at the event bound");
        assert_eq!(outbox.push(event(2, 1), now).outcome, Enqueued::DroppedNew);
        // Sent and delivered: room again.
        let NextBatch::Send(sent) = outbox.next_batch(1, now) else {
            panic!("a batch should be due");
        };
        assert!(outbox.refuses_every_event(), "in flight still counts");
        outbox.finish(&sent);
        assert!(!outbox.refuses_every_event());
        // The byte bound: full bytes refuse everything; a big event alone does not.
        let mut outbox = Outbox::new(100, 10, Overflow::DropNew, Duration::ZERO);
        assert_eq!(outbox.push(event(3, 11), now).outcome, Enqueued::DroppedNew);
        assert!(!outbox.refuses_every_event(), "a smaller event would fit");
        outbox.push(event(4, 10), now);
        assert!(outbox.refuses_every_event());
    }

    #[test]
    fn drop_oldest_by_bytes_makes_enough_room() {
        let now = Instant::now();
        let mut outbox = Outbox::new(100, 10, Overflow::DropOldest, Duration::ZERO);
        for id in 0..5 {
            outbox.push(event(id, 2), now);
        }
        let pushed = outbox.push(event(5, 5), now);
        assert_eq!(pushed.outcome, Enqueued::DroppedOldest(3));
        assert_eq!(pushed.dropped_ids.as_slice(), [0, 1, 2]);
        assert_eq!(outbox.bytes(), 9);
        // Larger than the whole bound: refused without dropping anything.
        let huge = outbox.push(event(6, 11), now);
        assert_eq!(huge.outcome, Enqueued::DroppedNew);
        assert_eq!(huge.dropped_ids.as_slice(), [6]);
        assert_eq!(outbox.depth(), 3);
    }

    #[test]
    fn drop_new_refuses_and_keeps_the_queue() {
        let now = Instant::now();
        let mut outbox = Outbox::new(2, usize::MAX, Overflow::DropNew, Duration::ZERO);
        outbox.push(event(0, 1), now);
        outbox.push(event(1, 1), now);
        let pushed = outbox.push(event(2, 1), now);
        assert_eq!(pushed.outcome, Enqueued::DroppedNew);
        assert_eq!(pushed.dropped_ids.as_slice(), [2]);
        let NextBatch::Send(sent) = outbox.next_batch(5, now) else {
            panic!("a batch should be due");
        };
        assert_eq!(ids(&sent), [0, 1]);
    }

    #[test]
    fn full_when_everything_is_in_flight_refuses_even_with_drop_oldest() {
        let now = Instant::now();
        let mut outbox = Outbox::new(2, usize::MAX, Overflow::DropOldest, Duration::ZERO);
        outbox.push(event(0, 1), now);
        outbox.push(event(1, 1), now);
        assert!(matches!(outbox.next_batch(2, now), NextBatch::Send(_)));
        assert_eq!(outbox.push(event(2, 1), now).outcome, Enqueued::DroppedNew);
    }

    #[test]
    fn batches_wait_for_size_or_age() {
        let now = Instant::now();
        let age = Duration::from_millis(20);
        let mut outbox = Outbox::new(100, usize::MAX, Overflow::DropOldest, age);
        assert!(matches!(outbox.next_batch(3, now), NextBatch::Empty));
        outbox.push(event(0, 1), now);
        outbox.push(event(1, 1), now + Duration::from_millis(5));
        match outbox.next_batch(3, now + Duration::from_millis(10)) {
            NextBatch::DueAt(at) => assert_eq!(at, now + age),
            other => panic!("expected a due time, got {other:?}"),
        }
        let NextBatch::Send(aged) = outbox.next_batch(3, now + age) else {
            panic!("the partial batch is due");
        };
        assert_eq!(ids(&aged), [0, 1]);
        for id in 2..9 {
            outbox.push(event(id, 1), now + age);
        }
        let NextBatch::Send(full) = outbox.next_batch(3, now + age) else {
            panic!("a full batch is due at once");
        };
        assert_eq!(ids(&full), [2, 3, 4]);
        assert_eq!(outbox.depth(), 9);
    }

    #[test]
    fn retried_events_go_before_newer_ones() {
        let now = Instant::now();
        let mut outbox = Outbox::new(100, usize::MAX, Overflow::DropOldest, Duration::ZERO);
        for id in 0..4 {
            outbox.push(event(id, 3), now);
        }
        let NextBatch::Send(sent) = outbox.next_batch(2, now) else {
            panic!("due");
        };
        outbox.push(event(4, 3), now);
        assert_eq!((outbox.depth(), outbox.bytes()), (5, 15));
        outbox.retry_later(sent, now);
        assert_eq!((outbox.depth(), outbox.bytes()), (5, 15));
        let NextBatch::Send(all) = outbox.next_batch(10, now) else {
            panic!("due");
        };
        assert_eq!(ids(&all), [0, 1, 2, 3, 4]);
        outbox.finish(&all);
        assert_eq!((outbox.depth(), outbox.bytes()), (0, 0));
    }

    #[test]
    fn expired_events_are_taken_from_the_front() {
        let now = Instant::now();
        let mut outbox = Outbox::new(100, usize::MAX, Overflow::DropOldest, Duration::ZERO);
        for id in [0, 1, 5, 2] {
            outbox.push(event(id, 3), now);
        }
        // created_ms == id: at now_ms 10 with max age 9, ids 0 and 1 are expired; the scan
        // stops at the first young event.
        assert_eq!(ids(&outbox.take_expired(10, 9)), [0, 1]);
        assert_eq!((outbox.depth(), outbox.bytes()), (2, 6));
        assert!(outbox.take_expired(10, 9).is_empty());
    }
}
