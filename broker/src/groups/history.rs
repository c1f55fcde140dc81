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
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.from.len() + self.payload.len());
        out.extend_from_slice(&self.ts.to_be_bytes());
        out.extend_from_slice(&self.message_type.to_be_bytes());
        out.extend_from_slice(&(self.from.len() as u16).to_be_bytes());
        out.extend_from_slice(self.from.as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

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

/// One group's entries: ids and times (with the entries themselves without a store).
#[derive(Default)]
struct Bounds {
    entries: VecDeque<(u64, u64, Option<Entry>)>,
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

    fn load(&self, gid: Gid) -> Bounds {
        let mut bounds = Bounds::default();
        if let Some(store) = &self.store {
            match store.records(Space::History, &gid.to_be_bytes()) {
                Ok(records) => {
                    for (key, value) in records {
                        let id = key
                            .get(4..12)
                            .and_then(|b| b.try_into().ok())
                            .map(u64::from_be_bytes);
                        if let Some(entry) = id.and_then(|id| Entry::decode(id, &value)) {
                            bounds.entries.push_back((entry.id, entry.ts, None));
                        }
                    }
                }
                Err(error) => tracing::error!(%error, gid, "reading group history"),
            }
        }
        bounds
    }

    /// Adds a message to `gid`'s history; returns the store operations (the new entry and
    /// the removal of those it pushes out of the bounds) to commit with the message.
    pub fn record(&self, gid: Gid, entry: Entry, now: u64) -> Vec<Op> {
        if !self.enabled() {
            return Vec::new();
        }
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let bounds = groups.entry(gid).or_insert_with(|| self.load(gid));
        let mut ops = Vec::new();
        if self.store.is_some() {
            ops.push(Op::PutRecord {
                space: Space::History,
                key: key(gid, entry.id),
                value: entry.encode(),
            });
            bounds.entries.push_back((entry.id, entry.ts, None));
        } else {
            // Its own copy: the payload may be a slice of the publisher's read buffer.
            let entry = Entry {
                payload: Bytes::copy_from_slice(&entry.payload),
                ..entry
            };
            bounds.entries.push_back((entry.id, entry.ts, Some(entry)));
        }
        let oldest = now.saturating_sub(self.config.history_max_age_secs);
        while bounds.entries.len() > self.config.history_max_messages
            || bounds
                .entries
                .front()
                .is_some_and(|(_, ts, _)| *ts < oldest)
        {
            let Some((id, _, _)) = bounds.entries.pop_front() else {
                break;
            };
            if self.store.is_some() {
                ops.push(Op::RemoveRecord {
                    space: Space::History,
                    key: key(gid, id),
                });
            }
        }
        ops
    }

    /// `gid`'s history, oldest first, without entries older than the age bound.
    pub fn entries(&self, gid: Gid, now: u64) -> Vec<Entry> {
        let oldest = now.saturating_sub(self.config.history_max_age_secs);
        let Some(store) = &self.store else {
            let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            return groups
                .get(&gid)
                .map(|b| {
                    b.entries
                        .iter()
                        .filter_map(|(_, _, e)| e.clone())
                        .filter(|e| e.ts >= oldest)
                        .collect()
                })
                .unwrap_or_default();
        };
        match store.records(Space::History, &gid.to_be_bytes()) {
            Ok(records) => records
                .into_iter()
                .filter_map(|(key, value)| {
                    let id = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
                    Entry::decode(id, &value)
                })
                .filter(|e| e.ts >= oldest)
                .collect(),
            Err(error) => {
                tracing::error!(%error, gid, "reading group history");
                Vec::new()
            }
        }
    }

    /// A deleted group's history: the removals to commit.
    pub fn forget(&self, gid: Gid) -> Vec<Op> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let bounds = groups.remove(&gid).unwrap_or_else(|| self.load(gid));
        if self.store.is_none() {
            return Vec::new();
        }
        bounds
            .entries
            .into_iter()
            .map(|(id, _, _)| Op::RemoveRecord {
                space: Space::History,
                key: key(gid, id),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let ops = history.record(7, entry(id, 1000 + id), 1000 + id);
                if let Some(store) = &store {
                    store.apply(ops).unwrap();
                }
            }
            let ids: Vec<u64> = history.entries(7, 1005).iter().map(|e| e.id).collect();
            assert_eq!(ids, vec![3, 4, 5], "count bound");
            assert_eq!(history.entries(7, 1005)[0], entry(3, 1003), "round trip");
            // Much later: too old to show, and pushed out on the next record.
            assert!(history.entries(7, 1200).is_empty());
            let ops = history.record(7, entry(6, 1200), 1200);
            if let Some(store) = &store {
                assert_eq!(ops.len(), 4, "one put, three removals");
                store.apply(ops).unwrap();
            }
            assert_eq!(history.entries(7, 1200), vec![entry(6, 1200)]);
            assert!(
                history.entries(8, 1200).is_empty(),
                "other groups untouched"
            );
        }
    }
}
