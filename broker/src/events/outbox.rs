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

/// Unique ids for events and chunks, increasing across restarts: microseconds since the
/// epoch, or the last id plus one when faster (SPEC §12: ids come from one place).
#[derive(Debug, Default)]
pub struct Ids {
    last: AtomicU64,
}

impl Ids {
    /// Every id from now on is above `last` (the highest found in the store).
    pub fn advance_past(&self, last: u64) {
        self.last.fetch_max(last, Ordering::Relaxed);
    }

    pub fn next(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let id = now.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(current) => last = current,
            }
        }
    }
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
    bytes: Vec<u8>,
}

#[derive(Default)]
struct Endpoint {
    key: u64,
    /// Records staged for the next commit, oldest first (usually one).
    unwritten: Vec<Unwritten>,
    /// Per record (written, being written or staged): how many of its events are still in
    /// the outbox. A record missing here has none left.
    left: FxHashMap<u64, usize>,
    /// Which record each event in the outbox is in.
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
    fn stage(&mut self, event: &Event, ids: &Ids) {
        let record = match self.unwritten.last_mut() {
            Some(record) if record.bytes.len() < RECORD_BYTES => record,
            _ => {
                self.unwritten.push(Unwritten {
                    id: ids.next(),
                    bytes: Vec::with_capacity(4096),
                });
                self.unwritten.last_mut().expect("just pushed")
            }
        };
        event.encode_framed(&mut record.bytes);
        let id = record.id;
        *self.left.entry(id).or_default() += 1;
        self.record_of.insert(event.id, id);
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
            if self.left.contains_key(&record.id) {
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
        let Some(record) = self.record_of.remove(&id) else {
            return;
        };
        let Some(left) = self.left.get_mut(&record) else {
            return;
        };
        *left = left.saturating_sub(1);
        if *left > 0 {
            return;
        }
        self.left.remove(&record);
        // Still staged: `drain` skips it. Written (or in the commit that drained it, which
        // is applied before the next one, whose drain removes it): removed.
        if !self.unwritten.iter().any(|r| r.id == record) {
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
                        endpoint.record_of.insert(event.id, chunk);
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
        self.endpoints
            .iter()
            .position(|e| e.lock().unwrap_or_else(|e| e.into_inner()).key == key)
    }

    /// Starts draining the outbox into the store's commits (once it is in an `Arc`).
    pub fn attach(self: &Arc<Self>) {
        if let Some(durable) = &self.durable {
            let source: Arc<dyn RecordSource> = self.clone();
            durable.add_source(Arc::downgrade(&source));
        }
    }

    /// Adds an event to endpoint `index`'s outbox (staged for the next commit); `awaited`:
    /// it must be durable before whatever it describes is acknowledged, and the ticket
    /// says when. Call before handing the event to the bridge.
    pub fn add(&self, index: usize, event: &Event, awaited: bool) -> Option<Ticket> {
        let durable = self.durable.as_ref()?;
        let mut endpoint = self.endpoint(index)?;
        endpoint.stage(event, &self.ids);
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
        self.add(index, &event, true);
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
