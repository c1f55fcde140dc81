//! Group history (SPEC §7 "Stored groups"): the last messages of each stored group,
//! bounded by count and age (`[groups]`), kept in the store's `History` space (key: gid,
//! then message id, both big-endian) and read on demand, never loaded whole. Without a
//! store (`durability = "none"`) the same bounded history lives in memory.
//!
//! The bounds of a group (ids and times of its entries) are read from the store the first
//! time the group is touched after a start, then kept in memory: trimming needs no read.

use super::model::Gid;
use crate::config::GroupsConfig;
use crate::durable::RecordSource;
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
/// fan-out's broker time. A chunk holding a QoS >= 1 entry is closed by the next commit
/// (its drain, [`RecordSource`]), so that the acknowledgement of the message covers its
/// history entry, and all the entries that commit gets share one record. (Putting the
/// open chunk again for every such entry, replaced in place while pending, wrote each
/// entry ~30 times over, through sled: 62 MB/s for 1.7 MB/s of payload.)
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
    /// It holds an entry whose acknowledgement waits for the next commit (QoS >= 1):
    /// that commit's drain closes it.
    awaited: bool,
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
}

/// A closed chunk on its way to the store. It stays readable from memory until the
/// commit that wrote it is surely applied: it is put by the drain of commit N and
/// dropped by the drain of commit N + 1 (commits never overlap).
struct ClosedChunk {
    first_id: u64,
    bytes: Vec<u8>,
    /// A drain has put it (the next one drops it).
    put: bool,
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

/// What the caller of [`History::record`] must ask of `Durable`: the history writes its
/// chunks itself, as a [`RecordSource`] drained at every commit, so it only needs a
/// commit to happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Nothing yet (a QoS 0 chunk filling, or no store).
    Nothing,
    /// A chunk closed: a commit soon, with no fsync of its own (`Durable::barrier(false)`).
    Soon,
    /// The entry's acknowledgement waits for the commit that holds it
    /// (`Durable::barrier(true)`).
    Awaited,
}

/// One group's history as memory knows it: the stored chunks' bounds and the chunk
/// being filled (with a store), or every entry (without one).
#[derive(Default)]
struct Bounds {
    /// Every chunk stored or on its way (`closed`), oldest first.
    chunks: VecDeque<Chunk>,
    stored: usize,
    open: OpenChunk,
    closed: Vec<ClosedChunk>,
    /// Trimmed chunks, removed by the next drain.
    removals: Vec<u64>,
    /// Listed in `Groups::touched` (the next drain looks at it).
    touched: bool,
    in_memory: VecDeque<Entry>,
}

impl Bounds {
    /// Lists the group for the next drain (once).
    fn touch(&mut self, gid: Gid, touched: &mut Vec<Gid>) {
        if !self.touched {
            self.touched = true;
            touched.push(gid);
        }
    }
}

#[derive(Default)]
struct Groups {
    bounds: FxHashMap<Gid, Bounds>,
    /// Groups with something for the next drain: an awaited open chunk, closed chunks,
    /// removals.
    touched: Vec<Gid>,
}

pub struct History {
    /// Entry ids without a store (with one, the store's message ids are used).
    next_id: std::sync::atomic::AtomicU64,
    config: GroupsConfig,
    store: Option<Arc<dyn Store>>,
    groups: Mutex<Groups>,
}

impl History {
    pub fn new(config: GroupsConfig, store: Option<Arc<dyn Store>>) -> History {
        History {
            next_id: std::sync::atomic::AtomicU64::new(1),
            config,
            store,
            groups: Mutex::new(Groups::default()),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Groups> {
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

    /// Closes `gid`'s open chunk (if any) for the next drain and trims the chunks the
    /// bounds leave behind.
    fn close_chunk(&self, bounds: &mut Bounds, now: u64) {
        let open = std::mem::take(&mut bounds.open);
        if open.count > 0 {
            bounds.chunks.push_back(Chunk {
                first_id: open.first_id,
                count: open.count,
                newest: open.newest,
            });
            bounds.stored += open.count;
            bounds.closed.push(ClosedChunk {
                first_id: open.first_id,
                bytes: open.bytes,
                put: false,
            });
        }
        let oldest = now.saturating_sub(self.config.history_max_age_secs);
        while let Some(front) = bounds.chunks.front() {
            // Whole chunks only: at least `history_max_messages` are kept (reads show
            // exactly that many).
            let over = bounds.stored - front.count >= self.config.history_max_messages;
            if !(over || front.newest < oldest) {
                break;
            }
            bounds.removals.push(front.first_id);
            bounds.stored -= front.count;
            bounds.chunks.pop_front();
        }
    }

    /// Adds a message to `gid`'s history. `awaited`: its acknowledgement waits for its
    /// commit (QoS >= 1), so the next commit's drain closes the chunk holding it — one
    /// record per group and commit however many entries it got. Says what to ask of
    /// `Durable`.
    pub fn record(&self, gid: Gid, entry: NewEntry<'_>, awaited: bool, now: u64) -> Write {
        if !self.enabled() {
            return Write::Nothing;
        }
        let mut groups = self.lock();
        let Groups { bounds, touched } = &mut *groups;
        let bounds = bounds.entry(gid).or_insert_with(|| self.load(gid));
        if self.store.is_none() {
            // Memory only: the whole history; trimmed as it grows.
            bounds.in_memory.push_back(entry.to_entry());
            let oldest = now.saturating_sub(self.config.history_max_age_secs);
            while bounds.in_memory.len() > self.config.history_max_messages
                || bounds.in_memory.front().is_some_and(|e| e.ts < oldest)
            {
                bounds.in_memory.pop_front();
            }
            return Write::Nothing;
        }
        bounds.open.push(&entry);
        bounds.open.awaited |= awaited;
        let full = bounds.open.count >= CHUNK;
        let old = now.saturating_sub(bounds.open.oldest) >= CHUNK_AGE_SECS;
        let write = if awaited {
            Write::Awaited
        } else if full || old {
            Write::Soon
        } else {
            return Write::Nothing;
        };
        if full || old {
            self.close_chunk(bounds, now);
        }
        bounds.touch(gid, touched);
        write
    }

    /// Closes the QoS 0 chunks open for longer than [`CHUNK_AGE_SECS`] (or all, at
    /// shutdown); true if a commit should follow (`Durable::barrier(false)`).
    pub fn flush_due(&self, now: u64, all: bool) -> bool {
        if self.store.is_none() {
            return false;
        }
        let mut groups = self.lock();
        let Groups { bounds, touched } = &mut *groups;
        let mut closed = false;
        for (gid, bounds) in bounds.iter_mut() {
            let open = &bounds.open;
            if open.count > 0 && (all || now.saturating_sub(open.oldest) >= CHUNK_AGE_SECS) {
                self.close_chunk(bounds, now);
                bounds.touch(*gid, touched);
                closed = true;
            }
        }
        closed
    }

    /// `gid`'s history, oldest first: at most `history_max_messages`, none older than
    /// the age bound.
    pub fn entries(&self, gid: Gid, now: u64) -> Vec<Entry> {
        let oldest = now.saturating_sub(self.config.history_max_age_secs);
        let (closed_ids, mut in_memory) = match self.lock().bounds.get(&gid) {
            Some(b) => {
                let mut entries: Vec<Entry> = b
                    .closed
                    .iter()
                    .flat_map(|c| decode_chunk(&c.bytes).unwrap_or_default())
                    .collect();
                entries.extend(decode_chunk(&b.open.bytes).unwrap_or_default());
                entries.extend(b.in_memory.iter().cloned());
                let ids: Vec<u64> = b.closed.iter().map(|c| c.first_id).collect();
                (ids, entries)
            }
            None => Default::default(),
        };
        let mut entries: Vec<Entry> = self
            .stored_chunks(gid)
            .into_iter()
            // Chunks still in memory are read from there (the store may have them or not).
            .filter(|(first_id, _)| !closed_ids.contains(first_id))
            .flat_map(|(_, entries)| entries)
            .collect();
        entries.append(&mut in_memory);
        entries.retain(|e| e.ts >= oldest);
        let excess = entries
            .len()
            .saturating_sub(self.config.history_max_messages);
        entries.drain(..excess);
        entries
    }

    /// A deleted group's history: the removals to commit.
    pub fn forget(&self, gid: Gid) -> Vec<Op> {
        let bounds = self.lock().bounds.remove(&gid);
        if self.store.is_none() {
            return Vec::new();
        }
        let bounds = bounds.unwrap_or_else(|| self.load(gid));
        bounds
            .chunks
            .iter()
            .map(|c| c.first_id)
            .chain(bounds.removals.iter().copied())
            .map(|first_id| Op::RemoveRecord {
                space: Space::History,
                key: key(gid, first_id),
            })
            .collect()
    }
}

impl RecordSource for History {
    /// At every commit: closes the chunks holding awaited entries, puts every closed
    /// chunk not put yet, removes the trimmed ones, and forgets the chunks the previous
    /// drain put (that commit has been applied).
    fn drain(&self, ops: &mut Vec<Op>) {
        let mut groups = self.lock();
        let Groups {
            bounds: all,
            touched,
        } = &mut *groups;
        for gid in std::mem::take(touched) {
            let Some(bounds) = all.get_mut(&gid) else {
                continue; // forgotten since
            };
            bounds.touched = false;
            if bounds.open.awaited {
                // The group's clock as its last record had it.
                let now = bounds.open.newest;
                self.close_chunk(bounds, now);
            }
            // Put by the previous drain: applied by now.
            bounds.closed.retain(|c| !c.put);
            for chunk in &mut bounds.closed {
                chunk.put = true;
                ops.push(Op::PutRecord {
                    space: Space::History,
                    key: key(gid, chunk.first_id),
                    value: chunk.bytes.clone(),
                });
            }
            ops.extend(bounds.removals.drain(..).map(|first_id| Op::RemoveRecord {
                space: Space::History,
                key: key(gid, first_id),
            }));
            if !bounds.closed.is_empty() {
                // To be dropped by the next drain.
                bounds.touch(gid, touched);
            }
        }
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

    /// One commit: the drain's operations applied; how many there were.
    fn commit(history: &History, store: &Option<Arc<dyn Store>>) -> usize {
        let mut ops = Vec::new();
        history.drain(&mut ops);
        let count = ops.len();
        if let Some(store) = store {
            store.apply(ops).unwrap();
        }
        count
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
                // QoS >= 1: written by the next commit.
                let write = history.record(7, entry(id, 1000 + id).as_new(), true, 1000 + id);
                let expected = if store.is_some() {
                    Write::Awaited
                } else {
                    Write::Nothing
                };
                assert_eq!(write, expected);
                commit(&history, &store);
            }
            let ids: Vec<u64> = history.entries(7, 1005).iter().map(|e| e.id).collect();
            assert_eq!(ids, vec![3, 4, 5], "count bound");
            assert_eq!(history.entries(7, 1005)[0], entry(3, 1003), "round trip");
            // Much later: too old to show, and pushed out on the next record.
            assert!(history.entries(7, 1200).is_empty());
            history.record(7, entry(6, 1200).as_new(), true, 1200);
            let ops = commit(&history, &store);
            if store.is_some() {
                // A chunk per commit: [3], [4], [5] removed, [6] put.
                assert_eq!(ops, 4, "one put, three old chunks removed");
            }
            assert_eq!(history.entries(7, 1200), vec![entry(6, 1200)]);
            assert!(
                history.entries(8, 1200).is_empty(),
                "other groups untouched"
            );
        }
    }

    #[test]
    fn a_commit_writes_one_record_per_group_and_reads_never_miss_an_entry() {
        let config = GroupsConfig {
            history_max_messages: 100,
            history_max_age_secs: 1000,
        };
        let store: Option<Arc<dyn Store>> = Some(Arc::new(rookery_storage::MemoryStore::new()));
        let history = History::new(config, store.clone());
        for id in 1..=10 {
            assert_eq!(
                history.record(4, entry(id, 7000).as_new(), true, 7000),
                Write::Awaited
            );
        }
        history.record(5, entry(11, 7000).as_new(), true, 7000);
        // Drained but not applied yet: still read from memory.
        let mut ops = Vec::new();
        history.drain(&mut ops);
        assert_eq!(ops.len(), 2, "one record per group");
        assert_eq!(history.entries(4, 7000).len(), 10);
        store.as_ref().unwrap().apply(ops).unwrap();
        assert_eq!(history.entries(4, 7000).len(), 10, "not twice once applied");
        assert_eq!(commit(&history, &store), 0, "nothing new to write");
        assert_eq!(history.entries(4, 7000).len(), 10, "from the store now");
        assert_eq!(history.lock().bounds[&4].closed.len(), 0);
        assert!(history.lock().touched.is_empty());
        // A group deleted between its record and the drain: nothing is put for it.
        history.record(6, entry(12, 7000).as_new(), true, 7000);
        history.forget(6);
        assert_eq!(commit(&history, &store), 0);
    }

    #[test]
    fn qos_0_entries_are_written_in_chunks_and_still_read_while_open() {
        let config = GroupsConfig {
            history_max_messages: 100,
            history_max_age_secs: 1000,
        };
        let store: Arc<dyn Store> = Arc::new(rookery_storage::MemoryStore::new());
        let some = Some(store.clone());
        let history = History::new(config.clone(), some.clone());
        let mut writes = 0;
        for id in 1..=(CHUNK as u64 + 10) {
            let write = history.record(3, entry(id, 5000).as_new(), false, 5000);
            assert_eq!(write == Write::Soon, id == CHUNK as u64, "entry {id}");
            writes += commit(&history, &some);
        }
        assert_eq!(writes, 1, "one chunk of {CHUNK} written, 10 entries open");
        assert_eq!(
            history.entries(3, 5000).len(),
            CHUNK + 10,
            "open entries are read too"
        );
        // A QoS 1 entry has its chunk written by the next commit, the QoS 0 entries
        // before it in the same record; age closes a QoS 0 chunk (and shutdown).
        history.record(3, entry(1000, 5000).as_new(), true, 5000);
        assert_eq!(commit(&history, &some), 1);
        history.record(3, entry(1001, 5000).as_new(), false, 5000);
        assert!(!history.flush_due(5000, false), "young");
        assert!(history.flush_due(5001, false));
        assert_eq!(commit(&history, &some), 1);
        // After a restart only the store speaks.
        let again = History::new(config, some.clone());
        let ids: Vec<u64> = again.entries(3, 5001).iter().map(|e| e.id).collect();
        let mut expected: Vec<u64> = (1..=CHUNK as u64 + 10).collect();
        expected.extend([1000, 1001]);
        assert_eq!(ids, expected);
        // The count bound drops whole chunks; reads show exactly the newest 100.
        for id in 2000..2300 {
            again.record(3, entry(id, 5002).as_new(), true, 5002);
            if id % 7 == 0 {
                commit(&again, &some);
            }
        }
        commit(&again, &some);
        let shown = again.entries(3, 5002);
        assert_eq!(shown.len(), 100);
        assert_eq!(shown.last().map(|e| e.id), Some(2299));
        let stored = store
            .records(Space::History, &3u32.to_be_bytes())
            .unwrap()
            .len();
        assert!(
            stored <= 100 / 7 + 2,
            "whole chunks dropped: {stored} records"
        );
        assert_eq!(again.forget(3).len(), stored);
    }
}
