//! In-memory stores: nothing survives a restart. Used for `durability = "none"` and tests.
//!
//! A std `Mutex` is right here: every critical section is a map operation with no await.

use crate::store::{check_client_id, InflightEntry, QueueEntry, Recovered, RecoveredSession};
use crate::{Op, StorageError, StorageResult, Store, StoredMessage, StoredSession};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Mutex;

/// [`Store`] in plain ordered maps, with the same semantics as `SledStore` (see [`Op`]):
/// the reference for tests and the store behind `durability = "none"` tests. Per-session
/// records are nested under the client id so that removing or counting a session's queue
/// touches only that session.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Default)]
struct MemoryState {
    retained: BTreeMap<String, StoredMessage>,
    sessions: BTreeMap<String, StoredSession>,
    /// id -> (reference count, message).
    messages: BTreeMap<u64, (u64, StoredMessage)>,
    queues: BTreeMap<String, BTreeMap<u64, QueueEntry>>,
    inflight: BTreeMap<String, BTreeMap<u16, InflightEntry>>,
    incoming: BTreeMap<String, BTreeSet<u16>>,
    /// Highest id put + 1 (0 before any).
    next_id: u64,
    records: BTreeMap<(crate::Space, Vec<u8>), Vec<u8>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every stored message id with its reference count (as `SledStore::message_refcounts`).
    pub fn message_refcounts(&self) -> BTreeMap<u64, u64> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state
            .messages
            .iter()
            .map(|(id, (count, _))| (*id, *count))
            .collect()
    }
}

impl MemoryState {
    /// Everything that can refuse a batch, checked before anything changes, so that the
    /// apply pass cannot fail half-way. Messages are never deleted before the end of a
    /// batch, so "stored" during the batch is "stored before or put earlier in it".
    fn validate(&self, batch: &[Op]) -> StorageResult<()> {
        let mut put = HashSet::new();
        let known =
            |id: u64, put: &HashSet<u64>| self.messages.contains_key(&id) || put.contains(&id);
        for op in batch {
            match op {
                Op::PutRetained(_)
                | Op::RemoveRetained { .. }
                | Op::PutRecord { .. }
                | Op::RemoveRecord { .. } => {}
                Op::PutMessage { id, .. } => {
                    put.insert(*id);
                }
                Op::PutSession(session) => check_client_id(&session.client_id)?,
                Op::RemoveSession { client_id }
                | Op::Dequeue { client_id, .. }
                | Op::RemoveInflight { client_id, .. }
                | Op::PutIncoming { client_id, .. }
                | Op::RemoveIncoming { client_id, .. } => check_client_id(client_id)?,
                Op::Enqueue {
                    client_id,
                    entry: QueueEntry { message_id, .. },
                    ..
                }
                | Op::PutInflight {
                    client_id,
                    entry: InflightEntry { message_id, .. },
                    ..
                } => {
                    check_client_id(client_id)?;
                    if !known(*message_id, &put) {
                        return Err(StorageError::Invalid(format!(
                            "an entry of {client_id} names message {message_id}, which is \
                             neither stored nor put earlier in the batch"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn add_ref(&mut self, id: u64) {
        if let Some((count, _)) = self.messages.get_mut(&id) {
            *count += 1;
        }
    }

    fn drop_ref(&mut self, id: u64, touched: &mut BTreeSet<u64>) {
        if let Some((count, _)) = self.messages.get_mut(&id) {
            *count = count.saturating_sub(1);
            touched.insert(id);
        }
    }

    fn apply(&mut self, op: Op, touched: &mut BTreeSet<u64>) {
        match op {
            Op::PutRecord { space, key, value } => {
                self.records.insert((space, key), value);
            }
            Op::RemoveRecord { space, key } => {
                self.records.remove(&(space, key));
            }
            Op::PutRetained(message) => {
                self.retained.insert(message.topic.clone(), message);
            }
            Op::RemoveRetained { topic } => {
                self.retained.remove(&topic);
            }
            Op::PutSession(session) => {
                self.sessions.insert(session.client_id.clone(), *session);
            }
            Op::RemoveSession { client_id } => {
                self.sessions.remove(&client_id);
                self.incoming.remove(&client_id);
                let queue = self.queues.remove(&client_id).unwrap_or_default();
                let inflight = self.inflight.remove(&client_id).unwrap_or_default();
                let ids = queue.values().map(|e| e.message_id);
                let ids: Vec<u64> = ids.chain(inflight.values().map(|e| e.message_id)).collect();
                for id in ids {
                    self.drop_ref(id, touched);
                }
            }
            Op::PutMessage { id, message } => {
                let count = self.messages.get(&id).map_or(0, |(count, _)| *count);
                self.messages.insert(id, (count, message));
                touched.insert(id);
                self.next_id = self.next_id.max(id.saturating_add(1));
            }
            Op::Enqueue {
                client_id,
                sequence,
                entry,
            } => {
                let id = entry.message_id;
                let old = self
                    .queues
                    .entry(client_id)
                    .or_default()
                    .insert(sequence, entry);
                if let Some(old) = old {
                    self.drop_ref(old.message_id, touched);
                }
                self.add_ref(id);
            }
            Op::Dequeue {
                client_id,
                sequence,
            } => {
                if let Some(queue) = self.queues.get_mut(&client_id) {
                    let old = queue.remove(&sequence);
                    if queue.is_empty() {
                        self.queues.remove(&client_id);
                    }
                    if let Some(old) = old {
                        self.drop_ref(old.message_id, touched);
                    }
                }
            }
            Op::PutInflight {
                client_id,
                packet_id,
                entry,
            } => {
                let id = entry.message_id;
                let old = self
                    .inflight
                    .entry(client_id)
                    .or_default()
                    .insert(packet_id, entry);
                if let Some(old) = old {
                    self.drop_ref(old.message_id, touched);
                }
                self.add_ref(id);
            }
            Op::RemoveInflight {
                client_id,
                packet_id,
            } => {
                if let Some(inflight) = self.inflight.get_mut(&client_id) {
                    let old = inflight.remove(&packet_id);
                    if inflight.is_empty() {
                        self.inflight.remove(&client_id);
                    }
                    if let Some(old) = old {
                        self.drop_ref(old.message_id, touched);
                    }
                }
            }
            Op::PutIncoming {
                client_id,
                packet_id,
            } => {
                self.incoming
                    .entry(client_id)
                    .or_default()
                    .insert(packet_id);
            }
            Op::RemoveIncoming {
                client_id,
                packet_id,
            } => {
                if let Some(incoming) = self.incoming.get_mut(&client_id) {
                    incoming.remove(&packet_id);
                    if incoming.is_empty() {
                        self.incoming.remove(&client_id);
                    }
                }
            }
        }
    }

    fn message(&self, id: u64, owner: &str) -> StorageResult<StoredMessage> {
        match self.messages.get(&id) {
            Some((_, message)) => Ok(message.clone()),
            None => Err(StorageError::Corrupt(format!(
                "an entry of {owner} names message {id}, which is not stored"
            ))),
        }
    }
}

impl Store for MemoryStore {
    fn apply(&self, batch: Vec<Op>) -> StorageResult<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.validate(&batch)?;
        let mut touched = BTreeSet::new();
        for op in batch {
            state.apply(op, &mut touched);
        }
        for id in touched {
            if state
                .messages
                .get(&id)
                .is_some_and(|(count, _)| *count == 0)
            {
                state.messages.remove(&id);
            }
        }
        Ok(())
    }

    fn flush(&self) -> StorageResult<()> {
        Ok(())
    }

    fn recover(&self) -> StorageResult<Recovered> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut sessions = Vec::with_capacity(state.sessions.len());
        for (client_id, session) in &state.sessions {
            let queue = state.queues.get(client_id);
            let bounds = queue.and_then(|q| Some((*q.keys().next()?, *q.keys().next_back()?)));
            let mut inflight = Vec::new();
            for (packet_id, entry) in state.inflight.get(client_id).into_iter().flatten() {
                let message = state.message(entry.message_id, client_id)?;
                inflight.push((*packet_id, entry.clone(), message));
            }
            sessions.push(RecoveredSession {
                session: session.clone(),
                queue: bounds,
                queue_len: queue.map_or(0, |q| q.len() as u64),
                inflight,
                incoming: state
                    .incoming
                    .get(client_id)
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect(),
            });
        }
        Ok(Recovered {
            retained: state.retained.values().cloned().collect(),
            sessions,
            records: state
                .records
                .iter()
                .filter(|((space, _), _)| crate::Space::RECOVERED.contains(space))
                .map(|((space, key), value)| (*space, key.clone(), value.clone()))
                .collect(),
            next_message_id: state.next_id.max(1),
        })
    }

    fn queue_range(
        &self,
        client_id: &str,
        from: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, QueueEntry, StoredMessage)>> {
        check_client_id(client_id)?;
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(queue) = state.queues.get(client_id) else {
            return Ok(Vec::new());
        };
        queue
            .range(from..)
            .take(limit)
            .map(|(sequence, entry)| {
                let message = state.message(entry.message_id, client_id)?;
                Ok((*sequence, entry.clone(), message))
            })
            .collect()
    }

    fn records(
        &self,
        space: crate::Space,
        prefix: &[u8],
    ) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(state
            .records
            .range((space, prefix.to_vec())..)
            .take_while(|((s, key), _)| *s == space && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }

    fn free_space(&self) -> Option<u64> {
        None
    }
}
