//! Durability: group commit of storage operations.
//!
//! Connections and the router submit `Op`s and get a [`Ticket`]: the number of the commit
//! that will contain them. One commit worker takes every operation that arrived while the
//! previous commit ran, applies them as one atomic batch and — with `strict` durability —
//! flushes once, so one fsync serves all of them. Acknowledgements that promise
//! durability (PUBACK / PUBREC of a stored message) wait for their ticket; nothing else
//! does. With `batched` durability tickets complete when the batch is applied and a
//! timer flushes every `flush_interval_ms`; with `none` there is no store at all.

pub mod capacity;
pub mod sessions;

use crate::config::{Durability, StorageFullPolicy};
use rookery_storage::{Op, StorageError, Store};
use std::collections::HashMap;
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
            self.messages.remove(&id);
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
                enqueued: HashMap::new(),
                messages: HashMap::new(),
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
    /// acknowledgement may cancel its pending entry.
    pub fn routing_done(&self, id: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(message) = pending.messages.get_mut(&id) {
            message.routed = true;
        }
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

    /// Whether acknowledgements must wait for their ticket.
    pub fn acks_wait(&self) -> bool {
        self.mode == Durability::Strict
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
            store.apply(ops)?;
            if flush {
                store.flush()?;
            }
            Ok::<(), StorageError>(())
        })
        .await
        .unwrap_or_else(|e| Err(StorageError::Io(format!("commit task failed: {e}"))));
        tracing::trace!(
            ticket,
            count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "commit"
        );
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
