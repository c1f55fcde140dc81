//! Durability: group commit of storage operations.
//!
//! Connections and the router submit `Op`s and get a [`Ticket`]: the number of the commit
//! that will contain them. One commit worker takes every operation that arrived while the
//! previous commit ran, applies them as one atomic batch and — with `strict` durability —
//! flushes once, so one fsync serves all of them. Acknowledgements that promise
//! durability (PUBACK / PUBREC of a stored message) wait for their ticket; nothing else
//! does. With `batched` durability tickets complete when the batch is applied (without
//! fsync) and a timer flushes every `flush_interval_ms`, so acknowledgements wait for the
//! apply only; with `none` there is no store at all.

pub mod capacity;
pub mod sessions;

use crate::config::{Durability, StorageFullPolicy};
use rookery_storage::{Op, StorageError, Store};
// Fx hashing: these maps are hit several times per stored message. Client ids in the keys
// are chosen by clients, but each map lives for one batch and holds only its entries.
use rustc_hash::FxHashMap as HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{watch, Notify};

impl Pending {
    /// Adds an operation, or cancels it against a pending one; true if something is
    /// left to commit.
    fn push(&mut self, op: Op) -> bool {
        match op {
            Op::Dequeue {
                client_id,
                sequence,
            } => {
                let key = (client_id, sequence);
                let cancellable =
                    self.enqueued
                        .get(&key)
                        .is_some_and(|index| match self.ops.get(*index) {
                            Some(Some(Op::Enqueue { entry, .. })) => self
                                .messages
                                .get(&entry.message_id)
                                .is_none_or(|m| m.routed),
                            _ => false,
                        });
                if cancellable {
                    let index = self.enqueued.remove(&key).unwrap_or(usize::MAX);
                    if let Some(Some(Op::Enqueue { entry, .. })) =
                        self.ops.get_mut(index).map(Option::take)
                    {
                        self.release_message(entry.message_id);
                    }
                    return false;
                }
                let (client_id, sequence) = key;
                self.ops.push(Some(Op::Dequeue {
                    client_id,
                    sequence,
                }));
            }
            Op::Enqueue {
                client_id,
                sequence,
                entry,
            } => {
                if let Some(message) = self.messages.get_mut(&entry.message_id) {
                    message.refs += 1;
                }
                self.enqueued
                    .insert((client_id.clone(), sequence), self.ops.len());
                self.ops.push(Some(Op::Enqueue {
                    client_id,
                    sequence,
                    entry,
                }));
            }
            Op::PutInflight {
                client_id,
                packet_id,
                entry,
            } => {
                // An in-flight record keeps its message, like a queue entry.
                if let Some(message) = self.messages.get_mut(&entry.message_id) {
                    message.refs += 1;
                }
                self.ops.push(Some(Op::PutInflight {
                    client_id,
                    packet_id,
                    entry,
                }));
            }
            Op::PutMessage { id, message } => {
                let index = self.ops.len();
                self.messages.insert(
                    id,
                    PendingMessage {
                        index,
                        refs: 0,
                        routed: false,
                        gate: None,
                    },
                );
                self.ops.push(Some(Op::PutMessage { id, message }));
            }
            other => self.ops.push(Some(other)),
        }
        true
    }

    /// One pending entry of a message was cancelled; a routed message left without
    /// entries is not written.
    fn release_message(&mut self, id: u64) {
        let Some(message) = self.messages.get_mut(&id) else {
            return;
        };
        message.refs = message.refs.saturating_sub(1);
        if message.refs == 0 && message.routed {
            let index = message.index;
            if let Some(gate) = self.messages.remove(&id).and_then(|m| m.gate) {
                gate.open();
            }
            if let Some(slot) = self.ops.get_mut(index) {
                *slot = None;
            }
        }
    }
}

/// The commit that will contain the operations submitted with it.
pub type Ticket = u64;

/// What the commit worker has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// Every ticket up to this one is finished.
    pub through: Ticket,
    /// The most recent commits that failed (0 = none), with whether the disk was full;
    /// their tickets are refused. A waiter is at most a few commits behind, so a short
    /// history is enough.
    pub recent_failures: [(Ticket, bool); 16],
}

impl Committed {
    /// `Some(Ok)` once `ticket` is durable, `Some(Err(full))` if its commit failed.
    pub fn outcome(&self, ticket: Ticket) -> Option<Result<(), bool>> {
        if ticket > self.through {
            return None;
        }
        match self
            .recent_failures
            .iter()
            .find(|(failed, _)| *failed == ticket)
        {
            Some((_, full)) => Some(Err(*full)),
            None => Some(Ok(())),
        }
    }
}

struct Pending {
    /// `None` where an operation was cancelled before it reached the store.
    ops: Vec<Option<Op>>,
    /// The ticket of the batch being gathered.
    ticket: Ticket,
    /// Where each pending `Enqueue` is in `ops`, so that a `Dequeue` of the same entry
    /// arriving before the commit cancels both: a message acknowledged by its subscriber
    /// before it reached the disk need never be written at all.
    enqueued: HashMap<(String, u64), usize>,
    /// Pending `PutMessage`s: position, how many pending entries refer to them, and
    /// whether the router has finished queueing the message. Until it has, an entry of
    /// it is never cancelled (another subscriber's entry may still follow), so the
    /// message is never dropped from a batch that a later entry depends on.
    messages: HashMap<u64, PendingMessage>,
}

struct PendingMessage {
    index: usize,
    refs: usize,
    routed: bool,
    /// The publisher's acknowledgement waiting for this message, if it may go as soon as
    /// every stored copy is cancelled.
    gate: Option<Arc<AckGate>>,
}

/// Lets a publisher's QoS 1 acknowledgement go before its commit: when every subscriber
/// that the message was stored for acknowledged it before the commit, its entries and the
/// message itself are cancelled (nothing of it will be written), so nothing is left
/// whose durability the acknowledgement would promise.
pub struct AckGate {
    open: std::sync::atomic::AtomicBool,
    /// The publisher's connection, woken when the gate opens.
    waker: Arc<Notify>,
}

impl AckGate {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.waker.notify_one();
    }
}

pub struct Durable {
    store: Arc<dyn Store>,
    mode: Durability,
    pending: Mutex<Pending>,
    wake: Notify,
    committed: watch::Sender<Committed>,
    next_message_id: AtomicU64,
    /// Storage is full (see `capacity.rs`): new durable work is refused or dropped.
    full: std::sync::atomic::AtomicBool,
    full_policy: StorageFullPolicy,
    /// Held for each commit, so that commits never overlap (their order is the order of
    /// the operations) — also the final one at shutdown.
    commit_gate: tokio::sync::Mutex<()>,
}

impl Durable {
    pub fn new(
        store: Arc<dyn Store>,
        mode: Durability,
        next_message_id: u64,
        full_policy: StorageFullPolicy,
    ) -> Arc<Durable> {
        let (committed, _) = watch::channel(Committed::default());
        Arc::new(Durable {
            store,
            mode,
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                ticket: 1,
                enqueued: HashMap::default(),
                messages: HashMap::default(),
            }),
            wake: Notify::new(),
            committed,
            next_message_id: AtomicU64::new(next_message_id.max(1)),
            full: std::sync::atomic::AtomicBool::new(false),
            full_policy,
            commit_gate: tokio::sync::Mutex::new(()),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Ids for stored messages, allocated in one place.
    pub fn allocate_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Queues operations for the next commit and returns its ticket. Never blocks on I/O.
    pub fn submit(&self, ops: impl IntoIterator<Item = Op>) -> Ticket {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut added = false;
        for op in ops {
            added |= pending.push(op);
        }
        let ticket = pending.ticket;
        drop(pending);
        if added {
            self.wake.notify_one();
        }
        ticket
    }

    /// The router has queued every entry of message `id`: from now on a subscriber's
    /// acknowledgement may cancel its pending entry. With `ack_waker` (the publisher's
    /// acknowledgement waits only for this message's entries), returns the gate that
    /// opens if all of them are cancelled before their commit.
    pub fn routing_done(&self, id: u64, ack_waker: Option<&Arc<Notify>>) -> Option<Arc<AckGate>> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let message = pending.messages.get_mut(&id)?;
        message.routed = true;
        let waker = ack_waker?;
        let gate = Arc::new(AckGate {
            open: std::sync::atomic::AtomicBool::new(false),
            waker: waker.clone(),
        });
        message.gate = Some(gate.clone());
        Some(gate)
    }

    /// Whether storage is full: a QoS >= 1 message that would have to be stored is then
    /// refused or its stored copies dropped (`full_policy`).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    pub fn full_policy(&self) -> StorageFullPolicy {
        self.full_policy
    }

    fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::Relaxed);
    }

    /// Whether acknowledgements must wait for their ticket: always with a store. With
    /// `batched` a ticket completes when its batch is applied (a journal write, no fsync:
    /// typically well under a millisecond), so that everything acknowledged is covered
    /// by the next periodic flush and the loss window really is `flush_interval_ms`.
    /// Acknowledging before the apply let a commit backlog stretch the window: 0.6–1.2 s
    /// of acknowledged messages lost under `kill -9` at 11k msg/s
    /// (`benches/persistence_loss.py`).
    pub fn acks_wait(&self) -> bool {
        self.mode != Durability::None
    }

    pub fn subscribe_commits(&self) -> watch::Receiver<Committed> {
        self.committed.subscribe()
    }

    pub fn committed(&self) -> Committed {
        *self.committed.borrow()
    }

    /// The commit worker: runs for the broker's lifetime.
    pub async fn run(self: Arc<Self>, flush_interval: Duration) {
        if self.mode == Durability::Batched {
            tokio::spawn(self.clone().flush_periodically(flush_interval));
        }
        loop {
            self.wake.notified().await;
            self.commit_pending(self.mode == Durability::Strict).await;
        }
    }

    /// Applies (and, if `flush`, fsyncs) everything submitted so far as one batch.
    async fn commit_pending(&self, flush: bool) {
        let _gate = self.commit_gate.lock().await;
        let (ops, ticket) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let ticket = pending.ticket;
            pending.ticket += 1;
            pending.enqueued.clear();
            pending.messages.clear();
            let slots = pending.ops.len();
            let ops: Vec<Op> = std::mem::take(&mut pending.ops)
                .into_iter()
                .flatten()
                .collect();
            tracing::trace!(ticket, slots, kept = ops.len(), "batch taken");
            (ops, ticket)
        };
        if ops.is_empty() {
            self.finish(ticket, Ok(()));
            return;
        }
        let store = self.store.clone();
        let count = ops.len();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let applying = std::time::Instant::now();
            store.apply(ops)?;
            let apply_us = applying.elapsed().as_micros() as u64;
            if flush {
                store.flush()?;
            }
            Ok::<u64, StorageError>(apply_us)
        })
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("commit task failed: {e}"))));
        tracing::trace!(
            ticket,
            count,
            apply_us = result.as_ref().ok().copied(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "commit"
        );
        let result = result.map(|_| ());
        self.finish(ticket, result);
    }

    /// At shutdown: commits and flushes whatever is still pending.
    pub async fn drain(&self) -> Result<(), StorageError> {
        self.commit_pending(true).await;
        self.flush().await
    }

    /// Flushes everything applied so far (shutdown, and the `batched` timer).
    pub async fn flush(&self) -> Result<(), StorageError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .unwrap_or_else(|e| Err(StorageError::Io(format!("flush task failed: {e}"))))
    }

    async fn flush_periodically(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            if let Err(error) = self.flush().await {
                tracing::error!(%error, "periodic flush failed");
            }
        }
    }

    fn finish(&self, ticket: Ticket, result: Result<(), StorageError>) {
        self.committed.send_modify(|committed| {
            committed.through = ticket;
            if let Err(error) = &result {
                tracing::error!(%error, ticket, "commit failed: durable work refused");
                if matches!(error, StorageError::Full) {
                    // Until the capacity watcher sees room again.
                    self.set_full(true);
                }
                let slot = (ticket as usize) % committed.recent_failures.len();
                committed.recent_failures[slot] = (ticket, matches!(error, StorageError::Full));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_storage::{MemoryStore, QueueEntry, StoredMessage};

    fn durable() -> Arc<Durable> {
        Durable::new(
            Arc::new(MemoryStore::new()),
            Durability::Strict,
            1,
            StorageFullPolicy::Refuse,
        )
    }

    fn queue(durable: &Durable, id: u64, client: &str, sequence: u64, with_message: bool) {
        let message = with_message.then(|| Op::PutMessage {
            id,
            message: StoredMessage {
                topic: "t".into(),
                payload: bytes::Bytes::from_static(b"x"),
                qos: 1,
                properties: bytes::Bytes::new(),
                publisher: "p".into(),
                received_at_ms: 0,
                expiry_interval: None,
            },
        });
        let enqueue = Op::Enqueue {
            client_id: client.into(),
            sequence,
            entry: QueueEntry {
                message_id: id,
                qos: 1,
                retain: false,
                subscription_ids: vec![],
            },
        };
        durable.submit(message.into_iter().chain([enqueue]));
    }

    fn dequeue(durable: &Durable, client: &str, sequence: u64) {
        durable.submit([Op::Dequeue {
            client_id: client.into(),
            sequence,
        }]);
    }

    fn pending_ops(durable: &Durable) -> usize {
        let pending = durable.pending.lock().unwrap();
        pending.ops.iter().flatten().count()
    }

    #[test]
    fn the_gate_opens_when_every_stored_copy_is_acknowledged_before_the_commit() {
        let durable = durable();
        let waker = Arc::new(Notify::new());
        queue(&durable, 1, "a", 1, true);
        queue(&durable, 1, "b", 1, false);
        // Before routing is done nothing is cancelled (another entry may follow).
        dequeue(&durable, "a", 1);
        let gate = durable.routing_done(1, Some(&waker)).expect("a gate");
        assert!(!gate.is_open());
        // The Dequeue that arrived before routing_done was kept, so "a" is still stored.
        dequeue(&durable, "b", 1);
        assert!(!gate.is_open(), "a's entry was not cancelled");

        let durable = self::durable();
        queue(&durable, 7, "a", 1, true);
        queue(&durable, 7, "b", 1, false);
        let gate = durable.routing_done(7, Some(&waker)).expect("a gate");
        dequeue(&durable, "a", 1);
        assert!(!gate.is_open(), "b has not acknowledged");
        dequeue(&durable, "b", 1);
        assert!(gate.is_open());
        assert_eq!(
            pending_ops(&durable),
            0,
            "nothing of the message is written"
        );
    }

    #[tokio::test]
    async fn the_gate_stays_closed_once_the_batch_was_taken() {
        let durable = durable();
        let waker = Arc::new(Notify::new());
        queue(&durable, 1, "a", 1, true);
        let gate = durable.routing_done(1, Some(&waker)).expect("a gate");
        durable.commit_pending(true).await;
        dequeue(&durable, "a", 1);
        assert!(
            !gate.is_open(),
            "the message is durable; its ticket decides"
        );
        assert_eq!(durable.committed().through, 1);
        // Without a waker (QoS 2, retained, no durable acks) there is no gate.
        queue(&durable, 2, "a", 2, true);
        assert!(durable.routing_done(2, None).is_none());
    }
}
