//! Durability: group commit of storage operations.
//!
//! Connections and the router submit `Op`s and get a [`Ticket`]: their position in the
//! sequence of every operation submitted, so that a ticket is finished once every
//! operation before it is committed. One commit worker takes what arrived while the
//! previous commit ran, applies it as one atomic batch and — with `strict` durability —
//! flushes once, so one fsync serves all of them.
//!
//! **Write-behind** (`[storage] write_behind_ms`): operations submitted with
//! [`Durable::submit_behind`] — a message stored for an online persistent subscriber and
//! sent to it at once — are due only that long after their submission; the worker takes
//! the operations that are due, up to the first that is not (a batch is a prefix of the
//! sequence). Such a message is usually acknowledged within a few milliseconds; if that
//! happens while its entry still waits here, entry and message are cancelled and never
//! written, and the publisher's PUBACK goes at once (see [`AckGate`]). Without the wait, an entry submitted just before
//! the worker takes a batch is written, then removed again a moment later: in the
//! 50-pair benchmark that was 29% of the messages, each costing ~19 µs of commit work.
//! The price: an acknowledgement that does wait for a commit while such entries are
//! pending (a message the online subscriber does not acknowledge in time; anything
//! submitted behind such an entry) waits up to that much longer. Everything else is due
//! at once, so a flood to offline sessions is not slowed down. Acknowledgements that promise
//! durability (PUBACK / PUBREC of a stored message) wait for their ticket; nothing else
//! does. With `batched` durability tickets complete when the batch is applied (without
//! fsync) and a timer flushes every `flush_interval_ms`, so acknowledgements wait for the
//! apply only; with `none` there is no store at all.
//!
//! **Record sources** ([`RecordSource`], the webhook outboxes): rather than submitting an
//! operation per item, a source buffers items itself and is drained into the batch at
//! every commit, after the slots are taken; an item that must be durable only takes a
//! [`Durable::barrier`] ticket. A commit that covers the barrier drains after it was
//! pushed, so it holds every item buffered before. One record per source per commit,
//! written once: at ~100,000 events/s an operation (or a rewritten chunk) per event cost
//! most of a core.

pub mod capacity;
pub mod sessions;

use crate::config::{Durability, StorageFullPolicy};
use rookery_storage::{Op, StorageError, Store};
// Fx hashing: these maps are hit several times per stored message. Client ids in the keys
// are chosen by clients, but each map lives for one batch and holds only its entries.
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// The `Pending::enqueued` key of a queue entry: a hash, so that no client id is copied
/// under the lock. Two entries with the same hash are told apart by the operation it
/// points to; the later one then is not cancellable, which only costs a write.
fn entry_key(client_id: &str, sequence: u64) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut hasher = rustc_hash::FxBuildHasher.build_hasher();
    client_id.hash(&mut hasher);
    sequence.hash(&mut hasher);
    hasher.finish()
}

/// What a cancellation freed, handled once the lock is released: dropping a message
/// frees several buffers, and opening a gate wakes a task.
#[derive(Default)]
struct Cancelled {
    ops: Vec<Op>,
    gates: Vec<Arc<AckGate>>,
}

impl Cancelled {
    fn finish(self) {
        for gate in self.gates {
            gate.open();
        }
    }
}

impl Pending {
    /// Adds an operation, or cancels it against a pending one; true if something is
    /// left to commit.
    fn push(&mut self, op: Op, due: Instant, cancelled: &mut Cancelled) -> bool {
        let position = self.end();
        match op {
            Op::Dequeue {
                client_id,
                sequence,
            } => {
                let key = entry_key(&client_id, sequence);
                let cancellable =
                    self.enqueued
                        .get(&key)
                        .is_some_and(|position| match self.slot(*position) {
                            Some(Some(Op::Enqueue {
                                client_id: queued,
                                sequence: queued_sequence,
                                entry,
                            })) => {
                                *queued == client_id
                                    && *queued_sequence == sequence
                                    && self
                                        .messages
                                        .get(&entry.message_id)
                                        .is_none_or(|m| m.routed)
                            }
                            _ => false,
                        });
                if cancellable {
                    let position = self.enqueued.remove(&key).unwrap_or(Ticket::MAX);
                    if let Some(Some(op)) = self.slot_mut(position).map(Option::take) {
                        if let Op::Enqueue { entry, .. } = &op {
                            self.release_message(entry.message_id, cancelled);
                        }
                        cancelled.ops.push(op);
                    }
                    return false;
                }
                self.append(
                    Op::Dequeue {
                        client_id,
                        sequence,
                    },
                    due,
                );
            }
            Op::Enqueue {
                client_id,
                sequence,
                entry,
            } => {
                if let Some(message) = self.messages.get_mut(&entry.message_id) {
                    message.refs += 1;
                    message.last_ref = position;
                }
                self.enqueued
                    .insert(entry_key(&client_id, sequence), position);
                self.append(
                    Op::Enqueue {
                        client_id,
                        sequence,
                        entry,
                    },
                    due,
                );
            }
            Op::PutInflight {
                client_id,
                packet_id,
                entry,
            } => {
                // An in-flight record keeps its message, like a queue entry.
                if let Some(message) = self.messages.get_mut(&entry.message_id) {
                    message.refs += 1;
                    message.last_ref = position;
                }
                self.append(
                    Op::PutInflight {
                        client_id,
                        packet_id,
                        entry,
                    },
                    due,
                );
            }
            Op::PutMessage { id, message } => {
                self.messages.insert(
                    id,
                    PendingMessage {
                        position,
                        last_ref: position,
                        refs: 0,
                        routed: false,
                        gate: None,
                    },
                );
                self.append(Op::PutMessage { id, message }, due);
            }
            other => self.append(other, due),
        }
        true
    }

    /// The position after the last pending operation: the ticket of everything pending.
    fn end(&self) -> Ticket {
        self.base + self.slots.len() as Ticket
    }

    fn append(&mut self, op: Op, due: Instant) {
        self.slots.push_back(Slot { op: Some(op), due });
    }

    fn slot(&self, position: Ticket) -> Option<&Option<Op>> {
        let index = position.checked_sub(self.base)?;
        self.slots.get(usize::try_from(index).ok()?).map(|s| &s.op)
    }

    fn slot_mut(&mut self, position: Ticket) -> Option<&mut Option<Op>> {
        let index = position.checked_sub(self.base)?;
        self.slots
            .get_mut(usize::try_from(index).ok()?)
            .map(|s| &mut s.op)
    }

    /// Takes the pending operations up to the first one not due at `now` (all with
    /// `None`) as the next batch: its operations and the tickets it covers, `start..end`.
    fn take(&mut self, now: Option<Instant>) -> (Vec<Op>, Ticket, Ticket) {
        let mut cut = match now {
            Some(now) => {
                let due = self.slots.iter().position(|s| s.due > now);
                self.base + due.unwrap_or(self.slots.len()) as Ticket
            }
            None => self.end(),
        };
        // A routed message put before the cut whose entries go on after it: take those
        // too. Otherwise the batch could drop the message (all its entries in it
        // cancelled) while a later batch's entry still names it.
        while let Some(last) = self
            .messages
            .values()
            .filter(|m| m.routed && m.position < cut && m.last_ref >= cut)
            .map(|m| m.last_ref + 1)
            .max()
        {
            cut = last;
        }
        let start = self.base;
        let count = usize::try_from(cut - start).unwrap_or(usize::MAX);
        let ops: Vec<Op> = self.slots.drain(..count).filter_map(|s| s.op).collect();
        self.base = cut;
        // What was taken can no longer be cancelled.
        self.enqueued.retain(|_, position| *position >= cut);
        self.messages.retain(|_, m| m.position >= cut);
        (ops, start, cut)
    }

    /// One pending entry of a message was cancelled; a routed message left without
    /// entries is not written.
    fn release_message(&mut self, id: u64, cancelled: &mut Cancelled) {
        let Some(message) = self.messages.get_mut(&id) else {
            return;
        };
        message.refs = message.refs.saturating_sub(1);
        if message.refs == 0 && message.routed {
            let position = message.position;
            if let Some(gate) = self.messages.remove(&id).and_then(|m| m.gate) {
                cancelled.gates.push(gate);
            }
            if let Some(op) = self.slot_mut(position).and_then(Option::take) {
                cancelled.ops.push(op);
            }
        }
    }
}

/// A position in the sequence of submitted operations: finished once every operation
/// before it is committed.
pub type Ticket = u64;

/// What the commit worker has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Committed {
    /// Every ticket up to this one is finished.
    pub through: Ticket,
    /// The most recent commits that failed, most recent first: the tickets they
    /// covered, `start < ticket <= end`, and whether the disk was full; those tickets are
    /// refused. A waiter is at most a few commits behind, so a short history is enough.
    pub recent_failures: [Failure; 16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Failure {
    pub start: Ticket,
    pub end: Ticket,
    pub full: bool,
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
            .find(|f| f.start < ticket && ticket <= f.end)
        {
            Some(failure) => Some(Err(failure.full)),
            None => Some(Ok(())),
        }
    }
}

/// Buffers its own items and hands them over as operations at each commit (see "Record
/// sources"). `drain` runs with no lock of `Durable` held.
pub trait RecordSource: Send + Sync {
    fn drain(&self, ops: &mut Vec<Op>);
}

struct Slot {
    /// `None` where the operation was cancelled before it reached the store, and for a
    /// barrier.
    op: Option<Op>,
    /// When it may be written (see "Write-behind").
    due: Instant,
}

struct Pending {
    /// The operations not yet taken by the commit worker, in submission order.
    slots: VecDeque<Slot>,
    /// The position of `slots[0]`: how many operations were taken before it.
    base: Ticket,
    /// The position after the last operation that may be waited for (all but
    /// [`Durable::submit_lazy`]'s): a batch before it needs its fsync.
    awaited_through: Ticket,
    /// Where each pending `Enqueue` is (position), so that a `Dequeue` of the same entry
    /// arriving before the commit cancels both: a message acknowledged by its subscriber
    /// before it reached the disk need never be written at all.
    enqueued: HashMap<u64, Ticket>,
    /// Pending `PutMessage`s: position, how many pending entries refer to them, and
    /// whether the router has finished queueing the message. Until it has, an entry of
    /// it is never cancelled (another subscriber's entry may still follow), so the
    /// message is never dropped from a batch that a later entry depends on.
    messages: HashMap<u64, PendingMessage>,
}

struct PendingMessage {
    position: Ticket,
    /// The position of the last entry naming it.
    last_ref: Ticket,
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

/// Operations taken for one commit and the tickets they finish, `start < t <= end`.
struct Batch {
    ops: Vec<Op>,
    tickets: (Ticket, Ticket),
    flush: bool,
}

/// Applies a batch (and fsyncs it if `flush`); the apply time in µs, for tracing.
fn write_batch(store: &dyn Store, ops: Vec<Op>, flush: bool) -> Result<u64, StorageError> {
    let applying = std::time::Instant::now();
    store.apply(ops)?;
    let apply_us = applying.elapsed().as_micros() as u64;
    if flush {
        store.flush()?;
    }
    Ok(apply_us)
}

/// Where [`Durable::commit_inline`] and [`Durable::commit_soon`] may block a thread: a
/// multi-thread runtime with 2 workers or more.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
            && runtime.metrics().num_workers() >= 2
    })
}

/// The one connection allowed into [`Durable::commit_inline`]; released on drop.
struct InlineTurn<'a>(&'a std::sync::atomic::AtomicBool);

impl<'a> InlineTurn<'a> {
    fn take(flag: &'a std::sync::atomic::AtomicBool) -> Option<InlineTurn<'a>> {
        (!flag.swap(true, Ordering::AcqRel)).then_some(InlineTurn(flag))
    }
}

impl Drop for InlineTurn<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
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
    /// See "Write-behind".
    write_behind: Duration,
    /// Held for each commit, so that commits never overlap (their order is the order of
    /// the operations) — also the final one at shutdown.
    commit_gate: tokio::sync::Mutex<()>,
    /// A connection is committing in [`Durable::commit_inline`] (one at a time).
    inline_committer: std::sync::atomic::AtomicBool,
    /// How long each commit (apply and fsync) took, for `/metrics`.
    pub commit_latency: crate::stats::Histogram,
    /// Drained at every commit; dropped sources are pruned.
    sources: Mutex<Vec<std::sync::Weak<dyn RecordSource>>>,
}

impl Durable {
    pub fn new(
        store: Arc<dyn Store>,
        mode: Durability,
        next_message_id: u64,
        full_policy: StorageFullPolicy,
        write_behind: Duration,
    ) -> Arc<Durable> {
        let (committed, _) = watch::channel(Committed::default());
        Arc::new(Durable {
            store,
            mode,
            pending: Mutex::new(Pending {
                slots: VecDeque::new(),
                base: 0,
                awaited_through: 0,
                enqueued: HashMap::default(),
                messages: HashMap::default(),
            }),
            wake: Notify::new(),
            committed,
            next_message_id: AtomicU64::new(next_message_id.max(1)),
            full: std::sync::atomic::AtomicBool::new(false),
            full_policy,
            write_behind,
            commit_gate: tokio::sync::Mutex::new(()),
            inline_committer: std::sync::atomic::AtomicBool::new(false),
            commit_latency: crate::stats::Histogram::new(&crate::stats::COMMIT_BUCKETS),
            sources: Mutex::new(Vec::new()),
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
        self.submit_due(ops, Instant::now(), true)
    }

    /// Like [`Durable::submit`], for operations that an acknowledgement expected soon
    /// may cancel: they are written only once `write_behind` has passed.
    pub fn submit_behind(&self, ops: impl IntoIterator<Item = Op>) -> Ticket {
        self.submit_due(ops, Instant::now() + self.write_behind, true)
    }

    /// For operations nobody waits for and nothing promises durable (the history entry
    /// of a QoS 0 group message): written after `write_behind`, and a batch of only such
    /// operations is not fsynced by itself — the next flush covers it. A crash may lose
    /// the last of them, as it may lose any QoS 0 message.
    pub fn submit_lazy(&self, ops: impl IntoIterator<Item = Op>) {
        self.submit_due(ops, Instant::now() + self.write_behind, false);
    }

    /// Drains `source` at every commit for as long as it lives (held weakly).
    pub fn add_source<S: RecordSource + 'static>(&self, source: &Arc<S>) {
        let source: Arc<dyn RecordSource> = source.clone();
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.retain(|s| s.strong_count() > 0);
        sources.push(Arc::downgrade(&source));
    }

    /// A ticket for what a record source buffered before this call: the commit covering
    /// it drains every source afterwards. Due at once; `awaited`: fsynced, otherwise
    /// fsynced by a later commit.
    pub fn barrier(&self, awaited: bool) -> Ticket {
        let due = Instant::now();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.slots.push_back(Slot { op: None, due });
        if awaited {
            pending.awaited_through = pending.end();
        }
        let ticket = pending.end();
        drop(pending);
        self.wake.notify_one();
        ticket
    }

    fn drain_sources(&self, ops: &mut Vec<Op>) {
        let sources: Vec<_> = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for source in sources {
            source.drain(ops);
        }
    }

    fn submit_due(&self, ops: impl IntoIterator<Item = Op>, at: Instant, awaited: bool) -> Ticket {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut added = false;
        let mut cancelled = Cancelled::default();
        for op in ops {
            added |= pending.push(op, at, &mut cancelled);
        }
        if awaited {
            pending.awaited_through = pending.end();
        }
        let ticket = pending.end();
        drop(pending);
        cancelled.finish();
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

    /// Waits until `ticket` is committed: `Err(full)` if its commit failed. For callers
    /// outside a connection (the management API), which answer once a change is durable.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), bool> {
        let mut commits = self.subscribe_commits();
        loop {
            if let Some(outcome) = commits.borrow_and_update().outcome(ticket) {
                return outcome;
            }
            if commits.changed().await.is_err() {
                return Err(false);
            }
        }
    }

    /// The commit worker: runs for the broker's lifetime. Commits what is pending once
    /// its oldest operation is due (see "Write-behind").
    pub async fn run(self: Arc<Self>, flush_interval: Duration) {
        if self.mode == Durability::Batched {
            tokio::spawn(self.clone().flush_periodically(flush_interval));
        }
        let flush = self.mode == Durability::Strict;
        loop {
            self.wake.notified().await;
            // Once around the run queue first: a connection about to commit inline (see
            // `commit_inline`) then takes the batch in its own turn, instead of finding
            // the gate held and waiting for this commit and then its own.
            tokio::task::yield_now().await;
            loop {
                let due = {
                    let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    pending.slots.front().map(|slot| slot.due)
                };
                let Some(due) = due else {
                    break;
                };
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                self.commit_pending(flush, Some(Instant::now())).await;
            }
        }
    }

    /// Applies (and, if `flush`, fsyncs) what is due at `now` (all with `None`) as one
    /// batch.
    async fn commit_pending(&self, flush: bool, now: Option<Instant>) {
        let _gate = self.commit_gate.lock().await;
        let batch = self.take_batch(flush, now);
        if batch.ops.is_empty() {
            self.finish(batch.tickets, Ok(()));
            return;
        }
        let store = self.store.clone();
        let started = std::time::Instant::now();
        let Batch {
            ops,
            tickets,
            flush,
        } = batch;
        let result = tokio::task::spawn_blocking(move || write_batch(&*store, ops, flush))
            .await
            .unwrap_or_else(|e| Err(StorageError::Io(format!("commit task failed: {e}"))));
        self.complete(tickets, started, result);
    }

    /// Commits what is due right now on the calling task's thread, so that a connection
    /// whose acknowledgements wait for `ticket` sends them in the same turn; true if
    /// `ticket` is committed on return (false: left to the commit worker, as when
    /// something before it is not due yet).
    ///
    /// Why: on a saturated machine the commit worker, and then the connection its
    /// completion wakes, each wait for a CPU behind every task the same publishes woke
    /// (a fan-out to 100 subscribers wakes 100); a QoS 1 round trip took ~9 times as
    /// long as the commit itself. One connection at a time commits here, on its own
    /// worker thread: the fsync blocks that thread for about a millisecond while the
    /// other workers (which may steal its queued tasks) go on. If the commit worker holds
    /// the gate, `block_in_place` hands this worker's tasks to another thread while it
    /// waits. Only on a multi-thread runtime with 2 workers or more (tests on a
    /// current-thread runtime keep the worker path).
    pub fn commit_inline(&self, ticket: Ticket) -> bool {
        if self.committed.borrow().through >= ticket {
            return true;
        }
        if !on_multi_thread_runtime() {
            return false;
        }
        let Some(_turn) = InlineTurn::take(&self.inline_committer) else {
            return false;
        };
        match self.commit_gate.try_lock() {
            Ok(_gate) => self.commit_due(ticket),
            Err(_) => tokio::task::block_in_place(|| {
                let _gate = self.commit_gate.blocking_lock();
                self.commit_due(ticket)
            }),
        }
    }

    /// Starts a commit of what is due now on a blocking thread at once, rather than when
    /// the commit worker's turn comes: for a connection about to queue the deliveries of
    /// the messages that commit covers (see `Connection::stage_publish`), so that their
    /// fsync and that work overlap. Where `commit_inline` would not run, this leaves the
    /// work to the worker too.
    pub fn commit_soon(self: &Arc<Self>) {
        if !on_multi_thread_runtime() {
            return;
        }
        let durable = self.clone();
        tokio::task::spawn_blocking(move || {
            let _gate = durable.commit_gate.blocking_lock();
            durable.commit_due(Ticket::MAX);
        });
    }

    /// With the commit gate held: commits what is due now, unless `ticket` is committed
    /// already; false if it is not due (write-behind), left to the commit worker.
    fn commit_due(&self, ticket: Ticket) -> bool {
        if self.committed.borrow().through >= ticket {
            return true;
        }
        let now = Instant::now();
        {
            let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.slots.front().is_none_or(|slot| slot.due > now) {
                return false;
            }
        }
        let batch = self.take_batch(self.mode == Durability::Strict, Some(now));
        if batch.ops.is_empty() {
            self.finish(batch.tickets, Ok(()));
            return true;
        }
        let started = std::time::Instant::now();
        let Batch {
            ops,
            tickets,
            flush,
        } = batch;
        let result = write_batch(&*self.store, ops, flush);
        self.complete(tickets, started, result);
        true
    }

    /// Takes the next batch (under the commit gate): what is due at `now`, then what the
    /// record sources buffered.
    fn take_batch(&self, flush: bool, now: Option<Instant>) -> Batch {
        let (mut ops, start, end, awaited) = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let awaited = pending.awaited_through > pending.base;
            let (ops, start, end) = pending.take(now);
            tracing::trace!(
                slots = end - start,
                kept = ops.len(),
                left = pending.slots.len(),
                "batch taken"
            );
            (ops, start, end, awaited)
        };
        // After the take: whatever a source buffered before a barrier taken here is in.
        self.drain_sources(&mut ops);
        Batch {
            ops,
            tickets: (start, end),
            // Only lazy operations: applied now, fsynced by the next flush.
            flush: flush && awaited,
        }
    }

    fn complete(
        &self,
        tickets: (Ticket, Ticket),
        started: std::time::Instant,
        result: Result<u64, StorageError>,
    ) {
        tracing::trace!(
            end = tickets.1,
            apply_us = result.as_ref().ok().copied(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "commit"
        );
        self.commit_latency.observe(started.elapsed());
        self.finish(tickets, result.map(|_| ()));
    }

    /// At shutdown: commits and flushes whatever is still pending.
    pub async fn drain(&self) -> Result<(), StorageError> {
        self.commit_pending(true, None).await;
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

    /// Records the commit of the tickets `start < ticket <= end`.
    fn finish(&self, (start, end): (Ticket, Ticket), result: Result<(), StorageError>) {
        self.committed.send_modify(|committed| {
            committed.through = end;
            if let Err(error) = &result {
                tracing::error!(%error, start, end, "commit failed: durable work refused");
                let full = matches!(error, StorageError::Full);
                if full {
                    // Until the capacity watcher sees room again.
                    self.set_full(true);
                }
                committed.recent_failures.rotate_right(1);
                committed.recent_failures[0] = Failure { start, end, full };
            }
        });
    }
}

/// A strict `Durable` over a `MemoryStore` (20 ms write-behind), for unit tests.
#[cfg(test)]
pub fn in_memory() -> Arc<Durable> {
    Durable::new(
        Arc::new(rookery_storage::MemoryStore::new()),
        Durability::Strict,
        1,
        StorageFullPolicy::Refuse,
        Duration::from_millis(20),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rookery_storage::{QueueEntry, StoredMessage};

    fn durable() -> Arc<Durable> {
        in_memory()
    }

    /// Queues an entry (with its message) for an online subscriber: due after the
    /// write-behind.
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
        durable.submit_behind(message.into_iter().chain([enqueue]));
    }

    fn dequeue(durable: &Durable, client: &str, sequence: u64) {
        durable.submit([Op::Dequeue {
            client_id: client.into(),
            sequence,
        }]);
    }

    fn pending_ops(durable: &Durable) -> usize {
        let pending = durable.pending.lock().unwrap();
        pending.slots.iter().filter(|s| s.op.is_some()).count()
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
        durable.commit_pending(true, None).await;
        dequeue(&durable, "a", 1);
        assert!(
            !gate.is_open(),
            "the message is durable; its ticket decides"
        );
        assert_eq!(durable.committed().through, 2, "message and entry");
        // Without a waker (QoS 2, retained, no durable acks) there is no gate.
        queue(&durable, 2, "a", 2, true);
        assert!(durable.routing_done(2, None).is_none());
    }

    /// When each pending operation is due, oldest first.
    fn due(durable: &Durable) -> Vec<Instant> {
        let pending = durable.pending.lock().unwrap();
        pending.slots.iter().map(|s| s.due).collect()
    }

    fn take(durable: &Durable, cutoff: Option<Instant>) -> (usize, Ticket, Ticket) {
        let (ops, start, end) = durable.pending.lock().unwrap().take(cutoff);
        (ops.len(), start, end)
    }

    #[test]
    fn write_behind_takes_only_operations_due_and_tickets_are_positions() {
        let durable = durable();
        queue(&durable, 1, "a", 1, true);
        std::thread::sleep(Duration::from_millis(2));
        queue(&durable, 2, "a", 2, true);
        let at = due(&durable);
        assert_eq!(at.len(), 4);
        assert!(at[1] < at[2]);
        // Message 1 and its entry are old enough; message 2 waits for the next batch.
        assert_eq!(take(&durable, Some(at[1])), (2, 0, 2));
        assert_eq!(pending_ops(&durable), 2);
        // Ticket 2 (after message 1's operations) is covered, ticket 4 is not.
        let committed = Committed {
            through: 2,
            ..Committed::default()
        };
        assert_eq!(committed.outcome(2), Some(Ok(())));
        assert_eq!(committed.outcome(4), None);
        // Message 2's entry is still cancellable by its acknowledgement.
        durable.routing_done(2, None);
        dequeue(&durable, "a", 2);
        assert_eq!(pending_ops(&durable), 0, "entry and message cancelled");
        assert_eq!(take(&durable, None), (0, 2, 4));

        // Other operations are due at once, but not before what was submitted earlier.
        queue(&durable, 3, "a", 3, true);
        dequeue(&durable, "b", 9);
        let at = due(&durable);
        assert!(at[2] < at[0], "the Dequeue is due before the entry");
        assert_eq!(take(&durable, Some(at[2])), (0, 4, 4), "behind the entry");
        assert_eq!(take(&durable, Some(at[0])), (3, 4, 7));
    }

    #[test]
    fn a_batch_never_ends_between_a_routed_message_and_its_entries() {
        let durable = durable();
        queue(&durable, 1, "a", 1, true);
        std::thread::sleep(Duration::from_millis(2));
        queue(&durable, 1, "b", 1, false);
        durable.routing_done(1, None);
        // "a" acknowledges: its entry is cancelled, but "b"'s still needs the message.
        dequeue(&durable, "a", 1);
        let at = due(&durable);
        // A cut after the message alone would leave a batch with the message and no entry
        // (so not written) and a later batch with an entry naming it: the cut moves on.
        assert_eq!(
            take(&durable, Some(at[0])),
            (2, 0, 3),
            "message and b's entry"
        );
        assert_eq!(pending_ops(&durable), 0);
    }

    /// A message for the store, due at once (as a group message's history entry).
    fn put_message(durable: &Durable, id: u64) -> Ticket {
        durable.submit([Op::PutMessage {
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
        }])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inline_commit_finishes_the_ticket_without_the_worker() {
        let durable = durable();
        let ticket = put_message(&durable, 7);
        assert!(durable.committed().outcome(ticket).is_none());
        assert!(durable.commit_inline(ticket));
        assert_eq!(durable.committed().outcome(ticket), Some(Ok(())));
        assert_eq!(pending_ops(&durable), 0);
        assert_eq!(durable.commit_latency.snapshot().1, 1);
        // Already committed: nothing more is written.
        assert!(durable.commit_inline(ticket));
        assert_eq!(durable.commit_latency.snapshot().1, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inline_commit_leaves_write_behind_entries_to_the_worker() {
        let durable = durable();
        queue(&durable, 1, "c", 1, true);
        let ticket = durable.committed().through + 2;
        assert!(!durable.commit_inline(ticket));
        assert!(durable.committed().outcome(ticket).is_none());
        assert_eq!(pending_ops(&durable), 2, "nothing taken before it is due");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inline_commit_waits_for_a_running_commit_then_commits_the_rest() {
        let durable = durable();
        let first = put_message(&durable, 1);
        let gate = durable.commit_gate.lock().await;
        let second = put_message(&durable, 2);
        let inline = {
            let durable = durable.clone();
            tokio::spawn(async move { durable.commit_inline(second) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!inline.is_finished(), "it waits for the gate");
        drop(gate);
        assert!(inline.await.unwrap());
        assert_eq!(durable.committed().outcome(first), Some(Ok(())));
        assert_eq!(durable.committed().outcome(second), Some(Ok(())));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_leaves_the_commit_to_the_worker() {
        let durable = durable();
        let ticket = put_message(&durable, 7);
        assert!(!durable.commit_inline(ticket));
        assert_eq!(pending_ops(&durable), 1);
    }

    #[test]
    fn a_failed_commit_refuses_exactly_the_tickets_it_covered() {
        let mut committed = Committed {
            through: 9,
            ..Committed::default()
        };
        committed.recent_failures[0] = Failure {
            start: 2,
            end: 5,
            full: true,
        };
        assert_eq!(committed.outcome(2), Some(Ok(())), "committed before");
        assert_eq!(committed.outcome(3), Some(Err(true)));
        assert_eq!(committed.outcome(5), Some(Err(true)));
        assert_eq!(committed.outcome(6), Some(Ok(())));
        assert_eq!(committed.outcome(10), None);
    }
}
