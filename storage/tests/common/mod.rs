//! A naive model of the `Store` contract, written straight from the rules in `store.rs`
//! and deliberately unlike both implementations: no reference counts at all. A message
//! exists from its `PutMessage` until the end of the first batch after which no queue or
//! in-flight entry names it — which is what the counting rules amount to. A batch runs on a
//! copy of the whole model and the copy is kept only if every op succeeded.
#![allow(dead_code)]

use bytes::Bytes;
use rookery_storage::{
    InflightEntry, Op, QueueEntry, Recovered, RecoveredSession, Space, StoredMessage,
    StoredSession, StoredSubscription,
};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct Model {
    retained: BTreeMap<String, StoredMessage>,
    sessions: BTreeMap<String, StoredSession>,
    messages: BTreeMap<u64, StoredMessage>,
    queues: BTreeMap<(String, u64), QueueEntry>,
    inflight: BTreeMap<(String, u16), InflightEntry>,
    incoming: BTreeMap<(String, u16), ()>,
    max_id_put: Option<u64>,
    records: BTreeMap<(Space, Vec<u8>), Vec<u8>>,
}

/// Why the model refused a batch (the stores must refuse it too).
#[derive(Debug)]
pub struct Refused(pub String);

impl Model {
    pub fn apply(&mut self, batch: &[Op]) -> Result<(), Refused> {
        let mut next = self.clone();
        for op in batch {
            next.op(op)?;
        }
        let referenced: Vec<u64> = next
            .queues
            .values()
            .map(|e| e.message_id)
            .chain(next.inflight.values().map(|e| e.message_id))
            .collect();
        next.messages.retain(|id, _| referenced.contains(id));
        *self = next;
        Ok(())
    }

    fn op(&mut self, op: &Op) -> Result<(), Refused> {
        let client_ok = |c: &str| {
            if c.contains('\0') {
                Err(Refused(format!("client id {c:?} has a NUL")))
            } else {
                Ok(())
            }
        };
        match op.clone() {
            Op::PutRecord { space, key, value } => {
                self.records.insert((space, key), value);
            }
            Op::RemoveRecord { space, key } => {
                self.records.remove(&(space, key));
            }
            Op::PutRetained(m) => {
                self.retained.insert(m.topic.clone(), m);
            }
            Op::RemoveRetained { topic } => {
                self.retained.remove(&topic);
            }
            Op::PutSession(s) => {
                client_ok(&s.client_id)?;
                self.sessions.insert(s.client_id.clone(), *s);
            }
            Op::RemoveSession { client_id } => {
                client_ok(&client_id)?;
                self.sessions.remove(&client_id);
                self.queues.retain(|(c, _), _| *c != client_id);
                self.inflight.retain(|(c, _), _| *c != client_id);
                self.incoming.retain(|(c, _), _| *c != client_id);
            }
            Op::PutMessage { id, message } => {
                self.messages.insert(id, message);
                self.max_id_put = self.max_id_put.max(Some(id));
            }
            Op::Enqueue {
                client_id,
                sequence,
                entry,
            } => {
                client_ok(&client_id)?;
                if !self.messages.contains_key(&entry.message_id) {
                    return Err(Refused(format!("unknown message {}", entry.message_id)));
                }
                self.queues.insert((client_id, sequence), entry);
            }
            Op::Dequeue {
                client_id,
                sequence,
            } => {
                client_ok(&client_id)?;
                self.queues.remove(&(client_id, sequence));
            }
            Op::PutInflight {
                client_id,
                packet_id,
                entry,
            } => {
                client_ok(&client_id)?;
                if !self.messages.contains_key(&entry.message_id) {
                    return Err(Refused(format!("unknown message {}", entry.message_id)));
                }
                self.inflight.insert((client_id, packet_id), entry);
            }
            Op::RemoveInflight {
                client_id,
                packet_id,
            } => {
                client_ok(&client_id)?;
                self.inflight.remove(&(client_id, packet_id));
            }
            Op::PutIncoming {
                client_id,
                packet_id,
            } => {
                client_ok(&client_id)?;
                self.incoming.insert((client_id, packet_id), ());
            }
            Op::RemoveIncoming {
                client_id,
                packet_id,
            } => {
                client_ok(&client_id)?;
                self.incoming.remove(&(client_id, packet_id));
            }
        }
        Ok(())
    }

    pub fn recover(&self) -> Recovered {
        let sessions = self
            .sessions
            .iter()
            .map(|(client_id, session)| {
                let seqs: Vec<u64> = self
                    .queues
                    .keys()
                    .filter(|(c, _)| c == client_id)
                    .map(|(_, s)| *s)
                    .collect();
                RecoveredSession {
                    session: session.clone(),
                    queue: seqs.first().map(|first| (*first, *seqs.last().unwrap())),
                    queue_len: seqs.len() as u64,
                    inflight: self
                        .inflight
                        .iter()
                        .filter(|((c, _), _)| c == client_id)
                        .map(|((_, p), e)| (*p, e.clone(), self.messages[&e.message_id].clone()))
                        .collect(),
                    incoming: self
                        .incoming
                        .keys()
                        .filter(|(c, _)| c == client_id)
                        .map(|(_, p)| *p)
                        .collect(),
                }
            })
            .collect();
        Recovered {
            retained: self.retained.values().cloned().collect(),
            sessions,
            records: self
                .records
                .iter()
                .filter(|((space, _), _)| Space::RECOVERED.contains(space))
                .map(|((space, key), value)| (*space, key.clone(), value.clone()))
                .collect(),
            next_message_id: self.max_id_put.map_or(1, |id| id.saturating_add(1).max(1)),
        }
    }

    /// Every record of `space` under `prefix`, in key order.
    pub fn records(&self, space: Space, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.records
            .iter()
            .filter(|((s, key), _)| *s == space && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect()
    }

    pub fn queue_range(
        &self,
        client_id: &str,
        from: u64,
        limit: usize,
    ) -> Vec<(u64, QueueEntry, StoredMessage)> {
        self.queues
            .iter()
            .filter(|((c, s), _)| c == client_id && *s >= from)
            .take(limit)
            .map(|((_, s), e)| (*s, e.clone(), self.messages[&e.message_id].clone()))
            .collect()
    }

    /// The number of entries naming each stored message.
    pub fn refcounts(&self) -> BTreeMap<u64, u64> {
        let mut counts: BTreeMap<u64, u64> = self.messages.keys().map(|id| (*id, 0)).collect();
        let ids = self.queues.values().map(|e| e.message_id);
        for id in ids.chain(self.inflight.values().map(|e| e.message_id)) {
            *counts.get_mut(&id).expect("entries name stored messages") += 1;
        }
        counts
    }

    /// Client ids with any record, for range checks.
    pub fn clients(&self) -> Vec<String> {
        let mut all: Vec<String> = self.sessions.keys().cloned().collect();
        all.extend(self.queues.keys().map(|(c, _)| c.clone()));
        all.sort();
        all.dedup();
        all
    }
}

pub fn message(topic: &str, payload: &[u8], stamp: u64) -> StoredMessage {
    StoredMessage {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        qos: (stamp % 3) as u8,
        properties: if stamp.is_multiple_of(2) {
            Bytes::new()
        } else {
            Bytes::from_static(b"\x03\x00\x04text")
        },
        publisher: format!("pub{}", stamp % 5),
        received_at_ms: stamp,
        expiry_interval: stamp.is_multiple_of(4).then_some(stamp as u32),
    }
}

pub fn session(client_id: &str, stamp: u64) -> StoredSession {
    StoredSession {
        client_id: client_id.into(),
        subscriptions: (0..stamp % 3)
            .map(|i| StoredSubscription {
                filter: format!("f/{i}/#"),
                qos: (i % 3) as u8,
                no_local: i % 2 == 0,
                retain_as_published: stamp.is_multiple_of(2),
                retain_handling: (stamp % 3) as u8,
                subscription_id: (i > 0).then_some(i as u32),
            })
            .collect(),
        expiry_interval: if stamp.is_multiple_of(5) {
            u32::MAX
        } else {
            stamp as u32
        },
        disconnected_at_ms: stamp,
        will: (stamp % 2 == 1).then(|| message("will", b"bye", stamp)),
        will_retain: stamp % 2 == 1 && stamp.is_multiple_of(3),
        will_delay: (stamp % 7) as u32,
        will_sender: (stamp % 2 == 1).then(|| format!("user-{stamp}")),
    }
}

pub fn queue_entry(message_id: u64, stamp: u64) -> QueueEntry {
    QueueEntry {
        message_id,
        qos: 1 + (stamp % 2) as u8,
        retain: stamp.is_multiple_of(3),
        subscription_ids: (0..stamp % 3).map(|i| i as u32 + 1).collect(),
    }
}

pub fn inflight_entry(message_id: u64, stamp: u64) -> InflightEntry {
    InflightEntry {
        message_id,
        qos: 1 + (stamp % 2) as u8,
        retain: stamp.is_multiple_of(3),
        subscription_ids: (0..stamp % 2).map(|i| i as u32 + 7).collect(),
        released: stamp % 4 == 1,
        sequence: stamp,
    }
}

/// Opens a `SledStore`, retrying for a moment while the previous instance in this
/// process still holds the database's file lock: sled releases it from a background
/// thread shortly after the last handle is dropped, not during `drop`.
pub fn open_after_drop(
    path: &std::path::Path,
) -> rookery_storage::StorageResult<rookery_storage::SledStore> {
    open_with_after_drop(path, &rookery_storage::SledOptions::default())
}

pub fn open_with_after_drop(
    path: &std::path::Path,
    options: &rookery_storage::SledOptions,
) -> rookery_storage::StorageResult<rookery_storage::SledStore> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match rookery_storage::SledStore::open_with(path, options) {
            Err(rookery_storage::StorageError::Io(message))
                if message.contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
