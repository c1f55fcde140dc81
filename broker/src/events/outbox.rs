//! The durable side of the webhook outboxes (SPEC §9): each endpoint's undelivered events
//! in the store's `Outbox` space, so that a restart or a `kill -9` loses none that must
//! survive.
//!
//! Events are stored in records written once, never rewritten: each endpoint buffers the
//! events it takes in ("staged"), and every commit of the store drains the buffer into one
//! record ([`RecordSource`]), so an event costs a copy into the buffer and, if it must be
//! durable, a barrier ticket; a record covers whatever arrived during one commit (up to
//! [`RECORD_BYTES`] each). A record is removed once every event in it has left the outbox
//! (delivered, dropped by the overflow policy, or buried as a dead letter); one whose
//! events all left before its commit is never written. Delivery is at-least-once, so a
//! crash before the removal only sends some delivered events again; receivers deduplicate
//! by delivery id.
//!
//! Measured with a dead endpoint (QoS 1, 20 publishers): rewriting a 64-event chunk per
//! awaited event ran at 76,000 events/s; see the README's webhook benchmark for now.

use crate::durable::{Durable, RecordSource, Ticket};
use rookery_bridge::{Event, OutboxStore};
use rookery_storage::{Op, Space, Store};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A record grows to about this size before the next staged events start another one,
/// so that a slow commit under a flood does not make one huge value.
pub const RECORD_BYTES: usize = 64 * 1024;

/// Unique ids for events and records, increasing across restarts: a counter that starts
/// at the microseconds since the epoch at start (or above the highest id in the store, if
/// that is higher) and counts up by one per id (SPEC §12: ids come from one place). One
/// atomic add per event instead of a clock read and a compare-and-swap loop; ids run ahead
/// of the clock only above a million a second, and a restart starts above both.
#[derive(Debug)]
pub struct Ids {
    next: AtomicU64,
}

impl Default for Ids {
    fn default() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Ids {
            next: AtomicU64::new(now.max(1)),
        }
    }
}

impl Ids {
    /// Every id from now on is above `last` (the highest found in the store).
    pub fn advance_past(&self, last: u64) {
        self.next
            .fetch_max(last.saturating_add(1), Ordering::Relaxed);
    }

    pub fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// `BLOCK` ids starting at a multiple of `BLOCK`: a record's id and its events' ids, so
    /// that an event's record is its id rounded down (no map from event to record).
    pub fn reserve_block(&self) -> u64 {
        let mut current = self.next.load(Ordering::Relaxed);
        loop {
            let base = current.div_ceil(BLOCK) * BLOCK;
            match self.next.compare_exchange_weak(
                current,
                base + BLOCK,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return base,
                Err(now) => current = now,
            }
        }
    }
}

/// Ids per record block (see [`Ids::reserve_block`]): a record holds at most `BLOCK - 1`
/// events that took their ids from it.
pub const BLOCK: u64 = 1024;

/// The record an event with an id from a block is in.
fn block_of(id: u64) -> u64 {
    id & !(BLOCK - 1)
}

/// `endpoint key ‖ id`, both big-endian: one endpoint's records sort together.
pub fn record_key(endpoint_key: u64, id: u64) -> Vec<u8> {
    let mut key = endpoint_key.to_be_bytes().to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn split_key(key: &[u8]) -> Option<(u64, u64)> {
    Some((
        u64::from_be_bytes(key.get(..8)?.try_into().ok()?),
        u64::from_be_bytes(key.get(8..16)?.try_into().ok()?),
    ))
}

/// A chunk record: events one after another, each `[length u32][Event::encode]`.
fn decode_chunk(mut value: &[u8]) -> Option<Vec<Event>> {
    let mut events = Vec::new();
    while !value.is_empty() {
        let length = u32::from_be_bytes(value.get(..4)?.try_into().ok()?) as usize;
        events.push(Event::decode(value.get(4..4 + length)?)?);
        value = value.get(4 + length..)?;
    }
    Some(events)
}

/// A dead letter record: `[error length u16][error][Event::encode]`.
pub fn encode_dead_letter(event: &Event, last_error: &str) -> Vec<u8> {
    let error = &last_error.as_bytes()[..last_error.len().min(1024)];
    let error = match std::str::from_utf8(error) {
        Ok(s) => s.as_bytes(),
        // Cut inside a character: keep the valid prefix.
        Err(e) => &error[..e.valid_up_to()],
    };
    let mut value = (error.len() as u16).to_be_bytes().to_vec();
    value.extend_from_slice(error);
    value.extend_from_slice(&event.encode());
    value
}

pub fn decode_dead_letter(value: &[u8]) -> Option<(String, Event)> {
    let length = usize::from(u16::from_be_bytes(value.get(..2)?.try_into().ok()?));
    let error = std::str::from_utf8(value.get(2..2 + length)?).ok()?;
    Some((error.to_string(), Event::decode(value.get(2 + length..)?)?))
}

/// A record not written yet: staged events.
struct Unwritten {
    id: u64,
    /// The next id of its block to give an event.
    next_slot: u64,
    bytes: Vec<u8>,
    /// Its events still in the outbox (moved to `Endpoint::left` when written).
    left: usize,
}

#[derive(Default)]
struct Endpoint {
    key: u64,
    /// Records staged for the next commit, oldest first (usually one).
    unwritten: Vec<Unwritten>,
    /// Per written record (or being written): how many of its events are still in the
    /// outbox. A written record missing here has none left.
    left: FxHashMap<u64, usize>,
    /// Which record each event in the outbox is in, for events whose id is not from
    /// their record's block (kept ids: recovered from older versions, dead letters sent
    /// again, events rendered before they were staged); the others' record is
    /// `block_of(id)`. A map entry per event cost a cache miss on insert and on removal.
    record_of: FxHashMap<u64, u64>,
    /// The barrier ticket that covers what is staged, if one was taken since the last drain:
    /// awaited (due now), or only a lazy one.
    awaited_barrier: Option<Ticket>,
    lazy_barrier: bool,
    /// Written records whose events all left, removed by the next commit: removals ride
    /// along with commits that happen anyway (or the timer's), never one of their own,
    /// and never hold back what is behind them.
    removals: Vec<u64>,
}

impl Endpoint {
    /// Appends an event to the staged record (a new one when there is none or it is full).
    /// `assign`: the event takes its id from the record's block (its body is rendered
    /// later, with that id); otherwise it keeps its own.
    fn stage(&mut self, event: &mut Event, ids: &Ids, assign: bool) {
        let room = |r: &Unwritten| r.bytes.len() < RECORD_BYTES && (!assign || r.next_slot < BLOCK);
        if !self.unwritten.last().is_some_and(room) {
            self.unwritten.push(Unwritten {
                id: ids.reserve_block(),
                next_slot: 1,
                // Whole: growing it by doubling copied each record once more.
                bytes: Vec::with_capacity(RECORD_BYTES + 1024),
                left: 0,
            });
        }
        let Some(record) = self.unwritten.last_mut() else {
            return;
        };
        if assign {
            event.id = record.id + record.next_slot;
            record.next_slot += 1;
        } else {
            self.record_of.insert(event.id, record.id);
        }
        event.encode_framed(&mut record.bytes);
        record.left += 1;
    }

    /// The commit takes what is staged: records with events left are written, and
    /// records emptied since the last commit are removed.
    fn drain(&mut self, ops: &mut Vec<Op>) {
        self.awaited_barrier = None;
        self.lazy_barrier = false;
        for record in self.removals.drain(..) {
            ops.push(Op::RemoveRecord {
                space: Space::Outbox,
                key: record_key(self.key, record),
            });
        }
        for record in self.unwritten.drain(..) {
            if record.left > 0 {
                self.left.insert(record.id, record.left);
                ops.push(Op::PutRecord {
                    space: Space::Outbox,
                    key: record_key(self.key, record.id),
                    value: record.bytes,
                });
            }
        }
    }

    /// An event left the outbox: its record has one fewer, and goes once it has none.
    fn leave(&mut self, id: u64) {
        let record = self.record_of.remove(&id).unwrap_or_else(|| block_of(id));
        if let Some(staged) = self.unwritten.iter_mut().find(|r| r.id == record) {
            // Still staged: `drain` skips it once none are left.
            staged.left = staged.left.saturating_sub(1);
            return;
        }
        let Some(left) = self.left.get_mut(&record) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left == 0 {
            // Written (or in the commit that drained it, which is applied before the next
            // one, whose drain removes it).
            self.left.remove(&record);
            self.removals.push(record);
        }
    }
}

/// The endpoints' durable outboxes; `durable` is `None` without a store (events then live
/// in the bridge's memory only).
pub struct DurableOutbox {
    durable: Option<Arc<Durable>>,
    ids: Arc<Ids>,
    endpoints: Vec<Mutex<Endpoint>>,
    /// Each endpoint's key, by index (fixed: found without taking a lock).
    keys: Vec<u64>,
}

/// What was in the outboxes at start.
pub struct RecoveredOutbox {
    pub outbox: DurableOutbox,
    /// Per endpoint (configuration order), oldest first.
    pub events: Vec<Vec<Event>>,
    /// The highest id found, for [`Ids::advance_past`].
    pub last_id: u64,
}

impl DurableOutbox {
    /// Reads the outboxes of the configured endpoints (`keys`, in configuration order).
    /// Records of endpoints no longer configured are left in place, for when they return.
    pub fn recover(
        durable: Option<Arc<Durable>>,
        keys: &[u64],
        ids: Arc<Ids>,
    ) -> Result<RecoveredOutbox, String> {
        let mut endpoints: Vec<Endpoint> = keys
            .iter()
            .map(|&key| Endpoint {
                key,
                ..Endpoint::default()
            })
            .collect();
        let mut events = vec![Vec::new(); keys.len()];
        let mut last_id = 0;
        if let Some(store) = durable.as_ref().map(|d| d.store()) {
            for space in [Space::Outbox, Space::DeadLetters] {
                let records = store.records(space, &[]).map_err(|e| e.to_string())?;
                for (key, value) in records {
                    let (endpoint_key, chunk) =
                        split_key(&key).ok_or("an outbox record with a short key")?;
                    last_id = last_id.max(chunk);
                    if space == Space::DeadLetters {
                        continue;
                    }
                    let chunk_events = decode_chunk(&value).ok_or_else(|| {
                        format!("outbox record {endpoint_key:016x}/{chunk} does not decode")
                    })?;
                    let Some(index) = keys.iter().position(|k| *k == endpoint_key) else {
                        tracing::warn!(
                            endpoint_key = format!("{endpoint_key:016x}"),
                            "undelivered webhook events of an endpoint no longer configured \
                             are kept"
                        );
                        continue;
                    };
                    let endpoint = &mut endpoints[index];
                    endpoint.left.insert(chunk, chunk_events.len());
                    for event in &chunk_events {
                        last_id = last_id.max(event.id);
                        if block_of(event.id) != chunk {
                            endpoint.record_of.insert(event.id, chunk);
                        }
                    }
                    events[index].extend(chunk_events);
                }
            }
        }
        for list in &mut events {
            list.sort_by_key(|e| e.created_ms);
        }
        Ok(RecoveredOutbox {
            outbox: DurableOutbox {
                durable,
                ids,
                endpoints: endpoints.into_iter().map(Mutex::new).collect(),
                keys: keys.to_vec(),
            },
            events,
            last_id,
        })
    }

    fn endpoint(&self, index: usize) -> Option<std::sync::MutexGuard<'_, Endpoint>> {
        self.endpoints
            .get(index)
            .map(|e| e.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn index_of(&self, key: u64) -> Option<usize> {
        self.keys.iter().position(|k| *k == key)
    }

    /// Starts draining the outbox into the store's commits (once it is in an `Arc`).
    pub fn attach(self: &Arc<Self>) {
        if let Some(durable) = &self.durable {
            durable.add_source(self);
        }
    }

    /// Adds an event to endpoint `index`'s outbox (staged for the next commit); `awaited`:
    /// it must be durable before whatever it describes is acknowledged, and the ticket
    /// says when. Call before handing the event to the bridge.
    ///
    /// `assign_id`: the event takes an id from its record's block (see [`Ids::
    /// reserve_block`]), for events whose body is rendered when sent; otherwise it keeps
    /// the id it has.
    pub fn add(
        &self,
        index: usize,
        event: &mut Event,
        awaited: bool,
        assign_id: bool,
    ) -> Option<Ticket> {
        let Some(durable) = self.durable.as_ref() else {
            if assign_id {
                event.id = self.ids.next();
            }
            return None;
        };
        let mut endpoint = self.endpoint(index)?;
        endpoint.stage(event, &self.ids, assign_id);
        // The barrier is taken under the endpoint's lock, after staging: the commit that
        // covers it drains this endpoint afterwards, so it holds the event.
        if !awaited {
            // Written by the next commit, or within `FLUSH_INTERVAL` (`commit_lazily`).
            return None;
        }
        if endpoint.awaited_barrier.is_none() {
            endpoint.awaited_barrier = Some(durable.barrier(true));
        }
        endpoint.awaited_barrier
    }

    /// Asks for a commit (not fsynced by itself) if some endpoint staged events that no
    /// barrier covers yet: the timer's turn, so that events nobody waits for reach the
    /// store within [`super::FLUSH_INTERVAL`] even when nothing else is committed.
    pub fn commit_lazily(&self) {
        let Some(durable) = &self.durable else {
            return;
        };
        let mut wanted = false;
        for endpoint in &self.endpoints {
            let mut endpoint = endpoint.lock().unwrap_or_else(|e| e.into_inner());
            if (!endpoint.unwritten.is_empty() || !endpoint.removals.is_empty())
                && endpoint.awaited_barrier.is_none()
                && !endpoint.lazy_barrier
            {
                endpoint.lazy_barrier = true;
                wanted = true;
            }
        }
        if wanted {
            durable.barrier(false);
        }
    }

    /// Before a reload starts the new endpoints, which read the store: a ticket after
    /// which every event staged so far is in a record. Records are never appended to once
    /// written, so the new generation, removing a record once it delivered the events it
    /// read there, never removes one it did not read.
    pub fn commit_staged(&self) -> Option<Ticket> {
        let durable = self.durable.as_ref()?;
        let staged = self.endpoints.iter().any(|e| {
            !e.lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwritten
                .is_empty()
        });
        staged.then(|| durable.barrier(true))
    }

    /// Dead letters of every configured endpoint, oldest first: (endpoint index, last
    /// error, event).
    pub fn dead_letters(&self) -> Result<Vec<(usize, String, Event)>, String> {
        let Some(store) = self.durable.as_ref().map(|d| d.store()) else {
            return Ok(Vec::new());
        };
        let mut letters = Vec::new();
        for (key, value) in store
            .records(Space::DeadLetters, &[])
            .map_err(|e| e.to_string())?
        {
            let Some((endpoint_key, _)) = split_key(&key) else {
                continue;
            };
            let (Some(index), Some((error, event))) =
                (self.index_of(endpoint_key), decode_dead_letter(&value))
            else {
                continue;
            };
            letters.push((index, error, event));
        }
        letters.sort_by_key(|(_, _, e)| e.created_ms);
        Ok(letters)
    }

    /// A dead letter goes back to the outbox (retried through the API); the event as the
    /// bridge will queue it (fresh age).
    pub fn revive(&self, index: usize, mut event: Event) -> Option<(Event, Option<Ticket>)> {
        let key = self.endpoint(index)?.key;
        event.created_ms = super::now_ms();
        // Staged (with its barrier) before the removal is submitted: the commit that takes
        // the removal drains the event too, so the letter is never in neither place.
        self.add(index, &mut event, true, false);
        let ticket = self.durable.as_ref().map(|durable| {
            durable.submit([Op::RemoveRecord {
                space: Space::DeadLetters,
                key: record_key(key, event.id),
            }])
        });
        Some((event, ticket))
    }
}

impl OutboxStore for DurableOutbox {
    fn remove(&self, endpoint_key: u64, ids: &[u64]) {
        let Some(index) = self.index_of(endpoint_key) else {
            return;
        };
        // Nothing promises a removal durable: at worst an event is sent again.
        if let Some(mut endpoint) = self.endpoint(index) {
            for id in ids {
                endpoint.leave(*id);
            }
        }
    }

    fn bury(&self, endpoint_key: u64, event: &Event, last_error: &str) {
        let Some(index) = self.index_of(endpoint_key) else {
            return;
        };
        // Left first: the commit that takes the dead letter drains the removal of its
        // record (if it was the last event there) too.
        if let Some(mut endpoint) = self.endpoint(index) {
            endpoint.leave(event.id);
        }
        if let Some(durable) = &self.durable {
            durable.submit([Op::PutRecord {
                space: Space::DeadLetters,
                key: record_key(endpoint_key, event.id),
                value: encode_dead_letter(event, last_error),
            }]);
        }
    }
}

impl RecordSource for DurableOutbox {
    fn drain(&self, ops: &mut Vec<Op>) {
        for endpoint in &self.endpoints {
            let mut endpoint = endpoint.lock().unwrap_or_else(|e| e.into_inner());
            if !endpoint.unwritten.is_empty() || !endpoint.removals.is_empty() {
                endpoint.drain(ops);
            }
        }
    }
}

/// Reads a store's outbox records directly (tests and tools): (endpoint key, events).
pub fn stored_events(store: &dyn Store) -> Vec<(u64, Event)> {
    store
        .records(Space::Outbox, &[])
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| Some((split_key(&key)?.0, decode_chunk(&value)?)))
        .flat_map(|(endpoint, events)| events.into_iter().map(move |e| (endpoint, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::in_memory as durable;
    use rookery_bridge::{Body, EventKind};

    fn event(id: u64) -> Event {
        Event {
            id,
            kind: EventKind::UserDeleted,
            created_ms: 1,
            body: Body::Json(bytes::Bytes::from_static(b"{}")),
        }
    }

    fn stored_ids(durable: &Durable) -> Vec<u64> {
        let mut ids: Vec<u64> = stored_events(durable.store().as_ref())
            .into_iter()
            .map(|(_, e)| e.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Records written once per commit, ids from the records' blocks (more events than a
    /// block holds, so two records), kept ids mapped explicitly; a record is removed by
    /// the commit after its last event left, and not before.
    #[tokio::test]
    async fn records_follow_their_events_out_of_the_store() {
        let durable = durable();
        let recovered =
            DurableOutbox::recover(Some(durable.clone()), &[7], Arc::default()).unwrap();
        let outbox = Arc::new(recovered.outbox);
        outbox.attach();
        let mut ids = Vec::new();
        let mut ticket = None;
        for _ in 0..BLOCK + 10 {
            let mut e = event(0);
            ticket = outbox.add(0, &mut e, true, true).max(ticket);
            ids.push(e.id);
        }
        let mut kept = event(42);
        ticket = outbox.add(0, &mut kept, true, false).max(ticket);
        ids.push(42);
        assert_eq!(kept.id, 42, "a kept id stays");
        durable.drain().await.unwrap();
        assert!(durable.committed().outcome(ticket.unwrap()).is_some());
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "ids are unique");
        assert_eq!(stored_ids(&durable), sorted);
        let records = durable.store().records(Space::Outbox, &[]).unwrap().len();
        assert_eq!(
            records,
            2,
            "{} events from blocks of {BLOCK}: two records",
            BLOCK + 11
        );

        // All but the last event leave: the second record keeps it.
        let (last, rest) = ids.split_last().unwrap();
        outbox.remove(7, rest);
        durable.drain().await.unwrap();
        let left = stored_ids(&durable);
        assert!(left.contains(last) && left.len() < ids.len());
        assert_eq!(
            durable.store().records(Space::Outbox, &[]).unwrap().len(),
            1
        );
        outbox.remove(7, &[*last]);
        durable.drain().await.unwrap();
        assert!(stored_ids(&durable).is_empty());
    }

    /// Events that left before their commit are never written.
    #[tokio::test]
    async fn events_gone_before_their_commit_are_never_written() {
        let durable = durable();
        let recovered =
            DurableOutbox::recover(Some(durable.clone()), &[7], Arc::default()).unwrap();
        let outbox = Arc::new(recovered.outbox);
        outbox.attach();
        let mut e = event(0);
        outbox.add(0, &mut e, false, true);
        outbox.remove(7, &[e.id]);
        durable.drain().await.unwrap();
        assert!(durable
            .store()
            .records(Space::Outbox, &[])
            .unwrap()
            .is_empty());
    }
}
