//! The durable side of the webhook outboxes (SPEC §9): each endpoint's undelivered events
//! in the store's `Outbox` space, so that a restart or a `kill -9` loses none that must
//! survive.
//!
//! Events are stored in chunks (up to [`CHUNK_EVENTS`] events or [`CHUNK_BYTES`]), one
//! record per chunk, not one per event: a record costs several microseconds of commit
//! work, which at tens of thousands of events a second would take a core. A chunk is
//! removed once every event in it has left the outbox (delivered, dropped by the overflow
//! policy, or buried as a dead letter). Delivery is at-least-once, so a crash before the
//! removal only sends some delivered events again; receivers deduplicate by delivery id.
//!
//! The chunk being filled is put whenever an event in it must be durable (it stays open,
//! and `Durable` replaces a pending version of it in place) and otherwise by
//! [`DurableOutbox::flush`] on a timer. A chunk whose events all left before it was ever
//! written is never written at all: with a healthy endpoint most are.

use crate::durable::{Durable, Ticket};
use rookery_bridge::{Event, OutboxStore};
use rookery_storage::{Op, Space, Store};
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Events per chunk record.
pub const CHUNK_EVENTS: usize = 64;
/// Bytes per chunk record: a chunk is rewritten whole while it fills. Measured with a
/// dead endpoint at ~77,000 QoS 1 events/s: broker RSS ~290 MiB with 4 KiB chunks, ~700
/// MiB with 32 KiB (sled keeps the rewritten versions), at the same throughput.
pub const CHUNK_BYTES: usize = 4 * 1024;

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

#[derive(Default)]
struct OpenChunk {
    /// The chunk's record id (0: no chunk open).
    id: u64,
    count: usize,
    left: usize,
    bytes: Vec<u8>,
    /// Some version is in the store (or pending).
    written: bool,
    /// Holds events no version written so far has.
    dirty: bool,
}

#[derive(Default)]
struct Endpoint {
    key: u64,
    open: OpenChunk,
    /// Closed chunks: events still in the outbox, by chunk id.
    closed: FxHashMap<u64, usize>,
    /// Which chunk each event in the outbox is in.
    chunk_of: FxHashMap<u64, u64>,
}

impl Endpoint {
    fn put_open(&mut self) -> Op {
        self.open.written = true;
        self.open.dirty = false;
        Op::PutRecord {
            space: Space::Outbox,
            key: record_key(self.key, self.open.id),
            value: self.open.bytes.clone(),
        }
    }

    fn close_open(&mut self, ops: &mut Vec<Op>) {
        let open = &self.open;
        if open.count == 0 {
            return;
        }
        if open.left > 0 {
            if open.dirty || !open.written {
                ops.push(self.put_open());
            }
            self.closed.insert(self.open.id, self.open.left);
        } else if open.written {
            ops.push(self.remove(self.open.id));
        }
        self.open = OpenChunk::default();
    }

    fn remove(&self, chunk: u64) -> Op {
        Op::RemoveRecord {
            space: Space::Outbox,
            key: record_key(self.key, chunk),
        }
    }

    /// An event left the outbox: its chunk has one fewer.
    fn leave(&mut self, id: u64, ops: &mut Vec<Op>) {
        let Some(chunk) = self.chunk_of.remove(&id) else {
            return;
        };
        if chunk == self.open.id && self.open.count > 0 {
            self.open.left = self.open.left.saturating_sub(1);
            if self.open.left == 0 {
                // Everything in it is gone: start afresh (and drop any version written).
                if self.open.written {
                    ops.push(self.remove(chunk));
                }
                self.open = OpenChunk::default();
            }
            return;
        }
        if let Some(left) = self.closed.get_mut(&chunk) {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.closed.remove(&chunk);
                ops.push(self.remove(chunk));
            }
        }
    }
}

/// The endpoints' durable outboxes; `durable` is `None` without a store (events then live
/// in the bridge's memory only).
pub struct DurableOutbox {
    durable: Option<Arc<Durable>>,
    ids: Arc<Ids>,
    endpoints: Vec<Mutex<Endpoint>>,
    /// Being replaced by a reload ([`DurableOutbox::seal`]): every event is written as a
    /// chunk of its own, closed at once.
    sealed: AtomicBool,
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
                    endpoint.closed.insert(chunk, chunk_events.len());
                    for event in &chunk_events {
                        last_id = last_id.max(event.id);
                        endpoint.chunk_of.insert(event.id, chunk);
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
                sealed: AtomicBool::new(false),
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

    /// Adds an event to endpoint `index`'s outbox; `awaited`: it must be durable before
    /// whatever it describes is acknowledged, and the ticket says when. Call before
    /// handing the event to the bridge.
    pub fn add(&self, index: usize, event: &Event, awaited: bool) -> Vec<Op> {
        let mut ops = Vec::new();
        if self.durable.is_none() {
            return ops;
        }
        let Some(mut endpoint) = self.endpoint(index) else {
            return ops;
        };
        if endpoint.open.count == 0 {
            endpoint.open.id = self.ids.next();
        }
        let encoded = event.encode();
        let open = &mut endpoint.open;
        open.bytes
            .extend_from_slice(&(encoded.len() as u32).to_be_bytes());
        open.bytes.extend_from_slice(&encoded);
        open.count += 1;
        open.left += 1;
        open.dirty = true;
        let chunk = open.id;
        let full = open.count >= CHUNK_EVENTS || open.bytes.len() >= CHUNK_BYTES;
        endpoint.chunk_of.insert(event.id, chunk);
        // Sealed: the chunk is never appended to once written (see `seal`).
        if full || self.sealed.load(Ordering::SeqCst) {
            endpoint.close_open(&mut ops);
        } else if awaited {
            ops.push(endpoint.put_open());
        }
        ops
    }

    /// Submits `ops` (from [`DurableOutbox::add`]): awaited ones get a ticket to wait for.
    pub fn submit(&self, ops: Vec<Op>, awaited: bool) -> Option<Ticket> {
        let durable = self.durable.as_ref()?;
        if ops.is_empty() {
            return None;
        }
        if awaited {
            Some(durable.submit(ops))
        } else {
            durable.submit_lazy(ops);
            None
        }
    }

    /// Before a reload starts the new endpoints, which read the store: closes every open
    /// chunk (the ops write those with events left), and from now on writes each event
    /// as a chunk of its own. A record the new generation reads is then never appended
    /// to afterwards, so its removal once the new generation delivered the events it read
    /// there removes no event it did not read.
    pub fn seal(&self) -> Vec<Op> {
        self.sealed.store(true, Ordering::SeqCst);
        let mut ops = Vec::new();
        if self.durable.is_none() {
            return ops;
        }
        for endpoint in &self.endpoints {
            endpoint
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .close_open(&mut ops);
        }
        ops
    }

    /// The reload failed: back to filling chunks.
    pub fn unseal(&self) {
        self.sealed.store(false, Ordering::SeqCst);
    }

    /// Writes the events of open chunks that no version holds yet (the timer's turn).
    pub fn flush(&self) {
        let mut ops = Vec::new();
        for endpoint in &self.endpoints {
            let mut endpoint = endpoint.lock().unwrap_or_else(|e| e.into_inner());
            if endpoint.open.count > 0 && endpoint.open.dirty {
                ops.push(endpoint.put_open());
            }
        }
        if let (Some(durable), false) = (&self.durable, ops.is_empty()) {
            // Awaited, so that it is fsynced in its own commit.
            durable.submit(ops);
        }
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
        let mut ops = vec![Op::RemoveRecord {
            space: Space::DeadLetters,
            key: record_key(key, event.id),
        }];
        ops.extend(self.add(index, &event, true));
        let ticket = self.submit(ops, true);
        Some((event, ticket))
    }
}

impl OutboxStore for DurableOutbox {
    fn remove(&self, endpoint_key: u64, ids: &[u64]) {
        let Some(index) = self.index_of(endpoint_key) else {
            return;
        };
        let mut ops = Vec::new();
        if let Some(mut endpoint) = self.endpoint(index) {
            for id in ids {
                endpoint.leave(*id, &mut ops);
            }
        }
        // Nothing promises a removal durable: at worst an event is sent again.
        self.submit(ops, false);
    }

    fn bury(&self, endpoint_key: u64, event: &Event, last_error: &str) {
        let Some(index) = self.index_of(endpoint_key) else {
            return;
        };
        let mut ops = vec![Op::PutRecord {
            space: Space::DeadLetters,
            key: record_key(endpoint_key, event.id),
            value: encode_dead_letter(event, last_error),
        }];
        if let Some(mut endpoint) = self.endpoint(index) {
            endpoint.leave(event.id, &mut ops);
        }
        self.submit(ops, true);
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
