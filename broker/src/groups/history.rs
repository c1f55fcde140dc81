//! Group history (SPEC §7 "Stored groups"): the last messages of each stored group,
//! bounded by count and age (`[groups]`), kept in the store's `History` space (key: gid,
//! then message id, both big-endian) and read on demand, never loaded whole. Without a
//! store (`durability = "none"`) the same bounded history lives in memory.
//!
//! The bounds of a group (ids and times of its entries) are read from the store the first
//! time the group is touched after a start, then kept in memory: trimming needs no read.

use super::model::Gid;
use crate::config::GroupsConfig;
use bytes::Bytes;
use rookery_storage::{Op, Space, Store};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: u64,
    /// The sender's address ("" for a client without one).
    pub from: String,
    pub message_type: u32,
    /// Unix seconds.
    pub ts: u64,
    pub payload: Bytes,
}

impl Entry {
    fn decode(id: u64, value: &[u8]) -> Option<Entry> {
        let ts = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
        let message_type = u32::from_be_bytes(value.get(8..12)?.try_into().ok()?);
        let from_len = usize::from(u16::from_be_bytes(value.get(12..14)?.try_into().ok()?));
        let from = std::str::from_utf8(value.get(14..14 + from_len)?).ok()?;
        Some(Entry {
            id,
            from: from.to_string(),
            message_type,
            ts,
            payload: Bytes::copy_from_slice(value.get(14 + from_len..)?),
        })
    }
}

fn key(gid: Gid, id: u64) -> Vec<u8> {
    let mut key = gid.to_be_bytes().to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Entries of QoS 0 messages are written in chunks of up to this many (one store record
/// per chunk): a record per message cost ~10 µs of commit work, a fifth of a 100-member
/// fan-out's broker time. QoS >= 1 entries close their chunk at once, so that the
/// acknowledgement of the message covers its history entry.
pub const CHUNK: usize = 64;
/// An open chunk older than this is written by [`History::flush_due`].
pub const CHUNK_AGE_SECS: u64 = 1;

/// A chunk record: entries one after another, each `[id u64][length u32][entry]`, the
/// entry `[ts u64][type u32][from length u16][from][payload]` ([`OpenChunk::push`]).
fn decode_chunk(mut value: &[u8]) -> Option<Vec<Entry>> {
    let mut entries = Vec::new();
    while !value.is_empty() {
        let id = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
        let len = u32::from_be_bytes(value.get(8..12)?.try_into().ok()?) as usize;
        entries.push(Entry::decode(id, value.get(12..12 + len)?)?);
        value = value.get(12 + len..)?;
    }
    Some(entries)
}

/// A chunk in the store: its key id (its first entry's), how many entries, the newest time.
struct Chunk {
    first_id: u64,
    count: usize,
    newest: u64,
}

/// The chunk being filled, already encoded: appending a message is one copy into
/// `bytes`, with no allocation of its own.
#[derive(Default)]
struct OpenChunk {
    first_id: u64,
    count: usize,
    oldest: u64,
    newest: u64,
    /// Some version of it was put in the store (by a QoS >= 1 entry); the chunk stays
    /// open and later versions replace it (`Durable` coalesces pending versions).
    written: bool,
    bytes: Vec<u8>,
}

impl OpenChunk {
    fn push(&mut self, entry: &NewEntry<'_>) {
        if self.count == 0 {
            self.first_id = entry.id;
            self.oldest = entry.ts;
        }
        self.count += 1;
        self.newest = self.newest.max(entry.ts);
        let length = 14 + entry.from.len() + entry.payload.len();
        self.bytes.reserve(12 + length);
        self.bytes.extend_from_slice(&entry.id.to_be_bytes());
        self.bytes.extend_from_slice(&(length as u32).to_be_bytes());
        self.bytes.extend_from_slice(&entry.ts.to_be_bytes());
        self.bytes
            .extend_from_slice(&entry.message_type.to_be_bytes());
        self.bytes
            .extend_from_slice(&(entry.from.len() as u16).to_be_bytes());
        self.bytes.extend_from_slice(entry.from.as_bytes());
        self.bytes.extend_from_slice(entry.payload);
    }

    fn put(&self, gid: Gid) -> Op {
        Op::PutRecord {
            space: Space::History,
            key: key(gid, self.first_id),
            value: self.bytes.clone(),
        }
    }
}

/// A message to add to a group's history, borrowed from the message being routed.
pub struct NewEntry<'a> {
    pub id: u64,
    pub from: &'a str,
    pub message_type: u32,
    pub ts: u64,
    pub payload: &'a [u8],
}

impl NewEntry<'_> {
    fn to_entry(&self) -> Entry {
        Entry {
            id: self.id,
            from: self.from.to_string(),
            message_type: self.message_type,
            ts: self.ts,
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

/// One group's history as memory knows it: the stored chunks' bounds and the chunk
/// being filled (with a store), or every entry (without one).
#[derive(Default)]
struct Bounds {
    chunks: VecDeque<Chunk>,
    stored: usize,
    open: OpenChunk,
    in_memory: VecDeque<Entry>,
}

pub struct History {
    /// Entry ids without a store (with one, the store's message ids are used).
    next_id: std::sync::atomic::AtomicU64,
    config: GroupsConfig,
    store: Option<Arc<dyn Store>>,
    groups: Mutex<FxHashMap<Gid, Bounds>>,
}

impl History {
    pub fn new(config: GroupsConfig, store: Option<Arc<dyn Store>>) -> History {
        History {
            next_id: std::sync::atomic::AtomicU64::new(1),
            config,
            store,
            groups: Mutex::new(FxHashMap::default()),
        }
    }

    /// An id for an entry when there is no store.
    pub fn local_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.config.history_max_messages > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FxHashMap<Gid, Bounds>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stored_chunks(&self, gid: Gid) -> Vec<(u64, Vec<Entry>)> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        match store.records(Space::History, &gid.to_be_bytes()) {
            Ok(records) => records
                .into_iter()
                .filter_map(|(key, value)| {
                    let id = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
                    Some((id, decode_chunk(&value)?))
                })
                .collect(),
            Err(error) => {
                tracing::error!(%error, gid, "reading group history");
                Vec::new()
            }
        }
    }

    fn load(&self, gid: Gid) -> Bounds {
        let mut bounds = Bounds::default();
        for (first_id, entries) in self.stored_chunks(gid) {
            bounds.stored += entries.len();
            bounds.chunks.push_back(Chunk {
                first_id,
                count: entries.len(),
                newest: entries.iter().map(|e| e.ts).max().unwrap_or(0),
            });
        }
        bounds
    }

    /// Writes `gid`'s open chunk (if any) and drops the stored chunks the bounds leave
    /// behind: the store operations to commit.
    fn close_chunk(&self, gid: Gid, bounds: &mut Bounds, now: u64) -> Vec<Op> {
        let mut ops = Vec::new();
        let open = std::mem::take(&mut bounds.open);
        if open.count > 0 {
            ops.push(open.put(gid));
            bounds.chunks.push_back(Chunk {
                first_id: open.first_id,
                count: open.count,
                newest: open.newest,
            });
            bounds.stored += open.count;
        }
        let oldest = now.saturating_sub(self.config.history_max_age_secs);
        while let Some(front) = bounds.chunks.front() {
            // Whole chunks only: at least `history_max_messages` are kept (reads show
            // exactly that many).
            let over = bounds.stored - front.count >= self.config.history_max_messages;
            if !(over || front.newest < oldest) {
                break;
            }
            ops.push(Op::RemoveRecord {
                space: Space::History,
                key: key(gid, front.first_id),
            });
            bounds.stored -= front.count;
            bounds.chunks.pop_front();
        }
        ops
    }

    /// Adds a message to `gid`'s history. `awaited`: its acknowledgement waits for its
    /// commit (QoS >= 1), so the chunk holding it is put now (it stays open: the next
    /// versions replace it). Returns the store operations to commit (none while a QoS 0
    /// chunk fills).
    pub fn record(&self, gid: Gid, entry: NewEntry<'_>, awaited: bool, now: u64) -> Vec<Op> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut groups = self.lock();
        let bounds = groups.entry(gid).or_insert_with(|| self.load(gid));
        if self.store.is_none() {
            // Memory only: the whole history; trimmed as it grows.
            bounds.in_memory.push_back(entry.to_entry());
            let oldest = now.saturating_sub(self.config.history_max_age_secs);
            while bounds.in_memory.len() > self.config.history_max_messages
                || bounds.in_memory.front().is_some_and(|e| e.ts < oldest)
            {
                bounds.in_memory.pop_front();
            }
            return Vec::new();
        }
        bounds.open.push(&entry);
        let full = bounds.open.count >= CHUNK;
        let old = now.saturating_sub(bounds.open.oldest) >= CHUNK_AGE_SECS;
        if full || old {
            self.close_chunk(gid, bounds, now)
        } else if awaited {
            bounds.open.written = true;
            vec![bounds.open.put(gid)]
        } else {
            Vec::new()
        }
    }

    /// Open chunks older than [`CHUNK_AGE_SECS`] (or all, at shutdown), written now.
    pub fn flush_due(&self, now: u64, all: bool) -> Vec<Op> {
        if self.store.is_none() {
            return Vec::new();
        }
        let mut groups = self.lock();
        let mut ops = Vec::new();
        for (gid, bounds) in groups.iter_mut() {
            let open = &bounds.open;
            if open.count > 0 && (all || now.saturating_sub(open.oldest) >= CHUNK_AGE_SECS) {
                ops.extend(self.close_chunk(*gid, bounds, now));
            }
        }
        ops
    }

    /// `gid`'s history, oldest first: at most `history_max_messages`, none older than
    /// the age bound.
    pub fn entries(&self, gid: Gid, now: u64) -> Vec<Entry> {
        let oldest = now.saturating_sub(self.config.history_max_age_secs);
        let (open, open_key, in_memory) = match self.lock().get(&gid) {
            Some(b) => (
                decode_chunk(&b.open.bytes).unwrap_or_default(),
                (b.open.count > 0).then_some(b.open.first_id),
                b.in_memory.iter().cloned().collect::<Vec<_>>(),
            ),
            None => Default::default(),
        };
        let mut entries: Vec<Entry> = self
            .stored_chunks(gid)
            .into_iter()
            // The open chunk as memory has it is newer than any version put so far.
            .filter(|(first_id, _)| Some(*first_id) != open_key)
            .flat_map(|(_, entries)| entries)
            .collect();
        entries.extend(in_memory);
        entries.extend(open);
        entries.retain(|e| e.ts >= oldest);
        let excess = entries
            .len()
            .saturating_sub(self.config.history_max_messages);
        entries.drain(..excess);
        entries
    }

    /// A deleted group's history: the removals to commit.
    pub fn forget(&self, gid: Gid) -> Vec<Op> {
        let bounds = self.lock().remove(&gid);
        if self.store.is_none() {
            return Vec::new();
        }
        let bounds = bounds.unwrap_or_else(|| self.load(gid));
        let open = (bounds.open.written).then_some(bounds.open.first_id);
        bounds
            .chunks
            .iter()
            .map(|c| c.first_id)
            .chain(open)
            .map(|first_id| Op::RemoveRecord {
                space: Space::History,
                key: key(gid, first_id),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Entry {
        fn as_new(&self) -> NewEntry<'_> {
            NewEntry {
                id: self.id,
                from: &self.from,
                message_type: self.message_type,
                ts: self.ts,
                payload: &self.payload,
            }
        }
    }

    fn entry(id: u64, ts: u64) -> Entry {
        Entry {
            id,
            from: "alice".into(),
            message_type: 3,
            ts,
            payload: Bytes::from(format!("m{id}")),
        }
    }

    #[test]
    fn bounded_by_count_and_age_with_and_without_a_store() {
        let config = GroupsConfig {
            history_max_messages: 3,
            history_max_age_secs: 100,
        };
        let store: Arc<dyn Store> = Arc::new(rookery_storage::MemoryStore::new());
        for store in [Some(store), None] {
            let history = History::new(config.clone(), store.clone());
            for id in 1..=5 {
                // QoS >= 1: written at once.
                let ops = history.record(7, entry(id, 1000 + id).as_new(), true, 1000 + id);
                if let Some(store) = &store {
                    store.apply(ops).unwrap();
                }
            }
            let ids: Vec<u64> = history.entries(7, 1005).iter().map(|e| e.id).collect();
            assert_eq!(ids, vec![3, 4, 5], "count bound");
            assert_eq!(history.entries(7, 1005)[0], entry(3, 1003), "round trip");
            // Much later: too old to show, and pushed out on the next record.
            assert!(history.entries(7, 1200).is_empty());
            let ops = history.record(7, entry(6, 1200).as_new(), true, 1200);
            if let Some(store) = &store {
                // Entries a second apart: chunks [1, 2], [3, 4], then [5, 6] closed now.
                assert_eq!(ops.len(), 3, "one put, two old chunks removed");
                store.apply(ops).unwrap();
            }
            assert_eq!(history.entries(7, 1200), vec![entry(6, 1200)]);
            assert!(
                history.entries(8, 1200).is_empty(),
                "other groups untouched"
            );
        }
    }

    #[test]
    fn qos_0_entries_are_written_in_chunks_and_still_read_while_open() {
        let config = GroupsConfig {
            history_max_messages: 100,
            history_max_age_secs: 1000,
        };
        let store: Arc<dyn Store> = Arc::new(rookery_storage::MemoryStore::new());
        let history = History::new(config.clone(), Some(store.clone()));
        let mut writes = 0;
        for id in 1..=(CHUNK as u64 + 10) {
            let ops = history.record(3, entry(id, 5000).as_new(), false, 5000);
            writes += ops.len();
            store.apply(ops).unwrap();
        }
        assert_eq!(writes, 1, "one chunk of {CHUNK} written, 10 entries open");
        assert_eq!(
            history.entries(3, 5000).len(),
            CHUNK + 10,
            "open entries are read too"
        );
        // A QoS 1 entry puts the open chunk (which stays open); age closes it (and
        // shutdown).
        store
            .apply(history.record(3, entry(1000, 5000).as_new(), true, 5000))
            .unwrap();
        store
            .apply(history.record(3, entry(1001, 5000).as_new(), false, 5000))
            .unwrap();
        assert!(history.flush_due(5000, false).is_empty(), "young");
        store.apply(history.flush_due(5001, false)).unwrap();
        // After a restart only the store speaks.
        let again = History::new(config, Some(store.clone()));
        let ids: Vec<u64> = again.entries(3, 5001).iter().map(|e| e.id).collect();
        let mut expected: Vec<u64> = (1..=CHUNK as u64 + 10).collect();
        expected.extend([1000, 1001]);
        assert_eq!(ids, expected);
        // The count bound drops whole chunks; reads show exactly the newest 100.
        for id in 2000..2300 {
            store
                .apply(again.record(3, entry(id, 5002).as_new(), true, 5002))
                .unwrap();
        }
        let shown = again.entries(3, 5002);
        assert_eq!(shown.len(), 100);
        assert_eq!(shown.last().map(|e| e.id), Some(2299));
        let stored = store
            .records(Space::History, &3u32.to_be_bytes())
            .unwrap()
            .len();
        assert!(stored <= 100, "whole chunks dropped: {stored} records");
        assert_eq!(again.forget(3).len(), stored);
    }
}
