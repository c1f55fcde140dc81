//! One batch evaluated against an overlay of pending writes (see the parent module's
//! "Atomicity"): reference counting, replaced entries, session removal, and the end-of-batch
//! clean-up, all without writing to sled.

use super::{sled_error, Shared, Writes, DATA_TREES, NEXT_ID_KEY, T};
use crate::codec;
use crate::store::check_client_id;
use crate::{Op, StorageError, StorageResult};
use rustc_hash::FxHashMap as HashMap;
use std::collections::{BTreeMap, BTreeSet};

/// A batch being evaluated: pending writes per tree over what is stored (staged layers,
/// then the trees).
pub(super) struct Overlay<'a> {
    store: &'a Shared,
    writes: Vec<Writes>,
    /// Keys found absent from the store (per tree): removing one after the batch put it
    /// needs no write at all (an entry put and removed within one group commit costs
    /// nothing).
    absent: Vec<BTreeSet<Vec<u8>>>,
    /// Keys known to have (true) or not to have (false) a value below the active staged
    /// layer, per tree: see `staged.rs`.
    in_base: Vec<HashMap<Vec<u8>, bool>>,
    /// Reference counts read or changed by this batch: (stored before, current).
    counts: BTreeMap<u64, (Option<u64>, u64)>,
    /// The store's id high-water mark before the batch (see `SledStore::apply_lock`).
    fresh_from: u64,
    /// Highest `id + 1` put by this batch.
    next_id: u64,
}

impl<'a> Overlay<'a> {
    pub(super) fn new(store: &'a Shared, fresh_from: u64) -> Overlay<'a> {
        Overlay {
            store,
            writes: vec![BTreeMap::new(); DATA_TREES],
            absent: vec![BTreeSet::new(); DATA_TREES],
            in_base: vec![HashMap::default(); DATA_TREES],
            counts: BTreeMap::new(),
            fresh_from,
            next_id: 0,
        }
    }

    fn get(&mut self, t: T, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if let Some(pending) = self.writes[t as usize].get(key) {
            return Ok(pending.clone());
        }
        let (value, below) = self.store.get_layered(t, key)?;
        if let Some(below) = below {
            self.in_base[t as usize].insert(key.to_vec(), below);
        }
        if value.is_none() {
            self.absent[t as usize].insert(key.to_vec());
        }
        Ok(value)
    }

    fn put(&mut self, t: T, key: Vec<u8>, value: Vec<u8>) {
        self.writes[t as usize].insert(key, Some(value));
    }

    fn remove(&mut self, t: T, key: Vec<u8>) {
        self.writes[t as usize].insert(key, None);
    }

    /// Every (key, value) under `prefix` as the batch sees it so far.
    fn scan(&self, t: T, prefix: &[u8]) -> StorageResult<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut merged = BTreeMap::new();
        for kv in self.store.tree(t).scan_prefix(prefix) {
            let (key, value) = kv.map_err(|e| sled_error("scanning during a batch", e))?;
            merged.insert(key.to_vec(), value.to_vec());
        }
        for (key, value) in self.store.layers().prefixed(t as usize, prefix) {
            match value {
                Some(value) => merged.insert(key, value),
                None => merged.remove(&key),
            };
        }
        let pending = self.writes[t as usize]
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix));
        for (key, value) in pending {
            match value {
                Some(value) => merged.insert(key.clone(), value.clone()),
                None => merged.remove(key),
            };
        }
        Ok(merged)
    }

    /// The current count of message `id`, or `None` if it is not stored.
    fn count(&mut self, id: u64) -> StorageResult<Option<u64>> {
        if let Some(&(_, current)) = self.counts.get(&id) {
            return Ok(Some(current));
        }
        let stored = self.get(T::Refcounts, &id.to_be_bytes())?;
        match stored {
            None => Ok(None),
            Some(v) => {
                let n = codec::decode_u64(&v, "reference count")?;
                self.counts.insert(id, (Some(n), n));
                Ok(Some(n))
            }
        }
    }

    /// Adds one reference to a message `count` found stored.
    fn add_ref(&mut self, id: u64) -> StorageResult<()> {
        if let Some(n) = self.count(id)? {
            self.counts.entry(id).or_insert((Some(n), n)).1 = n.saturating_add(1);
        }
        Ok(())
    }

    /// Drops one reference. A missing message (an entry that outlived its message, which
    /// only damage can cause) is ignored, so that removing the entry still works.
    fn drop_ref(&mut self, id: u64) -> StorageResult<()> {
        if let Some(n) = self.count(id)? {
            self.counts.entry(id).or_insert((Some(n), n)).1 = n.saturating_sub(1);
        }
        Ok(())
    }

    /// Puts a queue or in-flight entry, moving the reference from any entry it replaces.
    fn put_entry(
        &mut self,
        t: T,
        key: Vec<u8>,
        value: Vec<u8>,
        message_id: u64,
        what: &dyn std::fmt::Display,
    ) -> StorageResult<()> {
        if self.count(message_id)?.is_none() {
            return Err(StorageError::Invalid(format!(
                "{what} names message {message_id}, which is neither stored nor put earlier \
                 in the batch"
            )));
        }
        if let Some(old) = self.get(t, &key)? {
            self.drop_ref(entry_message_id(t, &old)?)?;
        }
        self.put(t, key, value);
        self.add_ref(message_id)
    }

    fn remove_entry(&mut self, t: T, key: Vec<u8>) -> StorageResult<()> {
        if let Some(old) = self.get(t, &key)? {
            self.drop_ref(entry_message_id(t, &old)?)?;
            self.remove(t, key);
        }
        Ok(())
    }

    pub(super) fn op(&mut self, op: &Op) -> StorageResult<()> {
        match op {
            Op::PutRecord { space, key, value } => {
                self.put(T::of(*space), key.clone(), value.clone())
            }
            Op::RemoveRecord { space, key } => self.remove(T::of(*space), key.clone()),
            Op::PutRetained(message) => {
                let value = codec::encode_message(message);
                self.put(T::Retained, message.topic.as_bytes().to_vec(), value);
            }
            Op::RemoveRetained { topic } => self.remove(T::Retained, topic.as_bytes().to_vec()),
            Op::PutSession(session) => {
                check_client_id(&session.client_id)?;
                let value = codec::encode_session(session);
                self.put(T::Sessions, session.client_id.as_bytes().to_vec(), value);
            }
            Op::RemoveSession { client_id } => {
                check_client_id(client_id)?;
                self.remove(T::Sessions, client_id.as_bytes().to_vec());
                let prefix = codec::session_prefix(client_id);
                for t in [T::Queues, T::Inflight] {
                    for (key, value) in self.scan(t, &prefix)? {
                        self.drop_ref(entry_message_id(t, &value)?)?;
                        self.remove(t, key);
                    }
                }
                for key in self.scan(T::Incoming, &prefix)?.into_keys() {
                    self.remove(T::Incoming, key);
                }
            }
            Op::PutMessage { id, message } => {
                self.put(
                    T::Messages,
                    id.to_be_bytes().to_vec(),
                    codec::encode_message(message),
                );
                // Below u64::MAX the mark is exact (not saturated), so ids at or above it
                // were never put: no need to look for an existing count.
                let fresh = *id >= self.fresh_from && self.fresh_from < u64::MAX;
                if fresh {
                    for t in [T::Messages, T::Refcounts] {
                        self.in_base[t as usize]
                            .entry(id.to_be_bytes().to_vec())
                            .or_insert(false);
                    }
                }
                if !self.counts.contains_key(id) && (fresh || self.count(*id)?.is_none()) {
                    self.counts.insert(*id, (None, 0));
                }
                self.next_id = self.next_id.max(id.saturating_add(1));
            }
            Op::Enqueue {
                client_id,
                sequence,
                entry,
            } => {
                check_client_id(client_id)?;
                let what = format_args!("Enqueue {client_id}/{sequence}");
                let key = codec::queue_key(client_id, *sequence);
                let value = codec::encode_queue_entry(entry);
                self.put_entry(T::Queues, key, value, entry.message_id, &what)?;
            }
            Op::Dequeue {
                client_id,
                sequence,
            } => {
                check_client_id(client_id)?;
                self.remove_entry(T::Queues, codec::queue_key(client_id, *sequence))?;
            }
            Op::PutInflight {
                client_id,
                packet_id,
                entry,
            } => {
                check_client_id(client_id)?;
                let what = format_args!("PutInflight {client_id}/{packet_id}");
                let key = codec::packet_key(client_id, *packet_id);
                let value = codec::encode_inflight(entry);
                self.put_entry(T::Inflight, key, value, entry.message_id, &what)?;
            }
            Op::RemoveInflight {
                client_id,
                packet_id,
            } => {
                check_client_id(client_id)?;
                self.remove_entry(T::Inflight, codec::packet_key(client_id, *packet_id))?;
            }
            Op::PutIncoming {
                client_id,
                packet_id,
            } => {
                check_client_id(client_id)?;
                self.put(
                    T::Incoming,
                    codec::packet_key(client_id, *packet_id),
                    Vec::new(),
                );
            }
            Op::RemoveIncoming {
                client_id,
                packet_id,
            } => {
                check_client_id(client_id)?;
                self.remove(T::Incoming, codec::packet_key(client_id, *packet_id));
            }
        }
        Ok(())
    }

    /// End of batch: write changed counts, delete unreferenced messages, raise the id
    /// high-water mark.
    pub(super) fn finish(mut self) -> StorageResult<Resolved> {
        for (id, (stored, current)) in std::mem::take(&mut self.counts) {
            let key = id.to_be_bytes().to_vec();
            match (stored, current) {
                // Put by this batch and never referenced: it was not in sled before (a
                // message has a count exactly when it is stored), so nothing to write.
                (None, 0) => {
                    self.writes[T::Messages as usize].remove(&key);
                    self.writes[T::Refcounts as usize].remove(&key);
                }
                (Some(_), 0) => {
                    self.remove(T::Messages, key.clone());
                    self.remove(T::Refcounts, key);
                }
                _ if stored != Some(current) => {
                    self.put(T::Refcounts, key, current.to_be_bytes().to_vec())
                }
                _ => {}
            }
        }
        // Only ever raised; `fresh_from` is at least the stored counter.
        if self.next_id > self.fresh_from {
            let value = self.next_id.to_be_bytes().to_vec();
            self.put(T::Meta, NEXT_ID_KEY.to_vec(), value);
        }
        for (writes, absent) in self.writes.iter_mut().zip(&self.absent) {
            writes.retain(|key, value| value.is_some() || !absent.contains(key));
        }
        Ok(Resolved {
            high_water: self.fresh_from.max(self.next_id),
            writes: self.writes,
            in_base: self.in_base,
        })
    }
}

/// A batch resolved to plain writes, ready to be journaled and staged.
pub(super) struct Resolved {
    /// Per tree (indexed like `T`, without the journal).
    pub writes: Vec<Writes>,
    /// What the batch learnt about the keys' presence below the active layer.
    pub in_base: Vec<HashMap<Vec<u8>, bool>>,
    pub high_water: u64,
}

impl Resolved {
    pub fn is_empty(&self) -> bool {
        self.writes.iter().all(BTreeMap::is_empty)
    }
}

fn entry_message_id(t: T, value: &[u8]) -> StorageResult<u64> {
    Ok(match t {
        T::Queues => codec::decode_queue_entry(value)?.message_id,
        _ => codec::decode_inflight(value)?.message_id,
    })
}
