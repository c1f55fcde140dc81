//! The bounded queue between publishers and one session's connection.
//!
//! Publishers push deliveries; the session's connection task drains them. While the client
//! is offline the same queue is the session's offline queue. The queue is bounded in
//! messages and bytes; when it is full the overflow policy decides what is dropped, and
//! every drop is counted. A std `Mutex` guards it: each critical section is a few pointer
//! moves with no await, and publishers must never wait on a slow subscriber.

use crate::codec::QoS;
use crate::config::OverflowPolicy;
use crate::message::Message;
use crate::stats::Stats;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Queued deliveries past which a subscriber counts as backlogged.
const BACKLOG_THRESHOLD: usize = 32;

/// One message on its way to one subscriber.
#[derive(Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// The QoS the subscriber gets: min(message QoS, subscription QoS).
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Where the delivery is in the store, for deliveries to persistent sessions: its
    /// queue entry is removed once the client has the message.
    pub stored: Option<StoredRef>,
    /// Read back from a queue recovered after a restart: it may have been sent before,
    /// so it goes out with DUP set [MQTT-3.3.1-1].
    pub redelivery: bool,
}

/// A delivery's queue entry and message in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredRef {
    pub seq: u64,
    pub message_id: u64,
}

impl Delivery {
    fn weight(&self) -> usize {
        self.message.weight()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub policy: OverflowPolicy,
    pub queue_qos0_offline: bool,
}

struct Queue {
    limits: OutboxLimits,
    deliveries: VecDeque<Delivery>,
    bytes: usize,
    qos0_queued: usize,
    /// For persistent sessions: the part of the queue kept in the store.
    disk: Option<DiskQueue>,
}

/// The stored queue of a persistent session. Every QoS >= 1 delivery to it is written to
/// the store; the in-memory queue holds a window of it while the client is connected.
/// Sequences below `loaded_through` are in memory, in flight or acknowledged; the rest is
/// read back from the store when the connection has room.
#[derive(Debug, Clone, Default)]
pub struct DiskQueue {
    pub client_id: String,
    pub next_seq: u64,
    pub loaded_through: u64,
    /// The last sequence recovered at start-up: entries up to it may have been sent
    /// before the restart.
    pub recovered_through: u64,
    /// Entries recovered from the store at start-up and not yet acknowledged. Their sizes
    /// are not known without reading them, so the byte limit counts only entries queued
    /// since the start.
    pub recovered: u64,
    /// Sequence and size of every entry queued since the start and not yet acknowledged,
    /// in sequence order: 16 bytes per queued message, so a million queued messages cost
    /// 16 MB of memory, not a million messages.
    index: VecDeque<(u64, u32)>,
    bytes: usize,
}

impl DiskQueue {
    pub fn new(client_id: String, next_seq: u64, loaded_through: u64, recovered: u64) -> DiskQueue {
        DiskQueue {
            client_id,
            recovered_through: if recovered > 0 {
                next_seq.saturating_sub(1)
            } else {
                0
            },
            next_seq,
            loaded_through,
            recovered,
            ..Default::default()
        }
    }

    fn len(&self) -> u64 {
        self.index.len() as u64 + self.recovered
    }

    fn remove(&mut self, seq: u64) {
        match self.index.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(position) => {
                if let Some((_, weight)) = self.index.remove(position) {
                    self.bytes -= weight as usize;
                }
            }
            Err(_) => self.recovered = self.recovered.saturating_sub(1),
        }
    }

    /// The oldest entry not yet read back into memory, which `drop_oldest` may evict.
    fn oldest_unloaded(&self) -> Option<u64> {
        self.index
            .iter()
            .map(|(seq, _)| *seq)
            .find(|seq| *seq > self.loaded_through)
    }
}

/// Why a delivery was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    QueueFull,
    Offline,
}

pub struct Outbox {
    queue: Mutex<Queue>,
    /// Wakes the connection task when the queue goes from empty to non-empty.
    pub ready: Notify,
    /// Whether the client is connected; read without the lock by shared-subscription
    /// member choice and by the router's backlog check.
    online: AtomicBool,
    /// Deliveries queued, mirrored outside the lock for the router's backlog check.
    queued: AtomicUsize,
    /// Whether QoS >= 1 deliveries go to the store (a persistent session).
    persistent: AtomicBool,
    stats: Arc<Stats>,
    /// Drops are reported as `message.dropped` webhook events, naming this client.
    events: crate::events::Events,
    client_id: Arc<str>,
}

impl Outbox {
    pub fn new(
        limits: OutboxLimits,
        stats: Arc<Stats>,
        events: crate::events::Events,
        client_id: Arc<str>,
    ) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                limits,
                deliveries: VecDeque::new(),
                bytes: 0,
                qos0_queued: 0,
                disk: None,
            }),
            ready: Notify::new(),
            online: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            persistent: AtomicBool::new(false),
            stats,
            events,
            client_id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New limits apply to what arrives from now on.
    pub fn set_limits(&self, limits: OutboxLimits) {
        self.lock().limits = limits;
    }

    pub fn online(&self) -> bool {
        self.online.load(Ordering::Relaxed)
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Relaxed);
        if online {
            return;
        }
        // Going offline: deliveries that are also in the store leave memory; they are read
        // back from the store when the client returns.
        let mut queue = self.lock();
        let Some(first_stored) = queue
            .deliveries
            .iter()
            .find_map(|d| d.stored.map(|r| r.seq))
        else {
            return;
        };
        let mut kept = VecDeque::new();
        for delivery in std::mem::take(&mut queue.deliveries) {
            if delivery.stored.is_some() {
                queue.bytes -= delivery.weight();
            } else {
                kept.push_back(delivery);
            }
        }
        queue.deliveries = kept;
        if let Some(disk) = queue.disk.as_mut() {
            disk.loaded_through = disk.loaded_through.min(first_stored - 1);
        }
        self.queued.store(queue.deliveries.len(), Ordering::Relaxed);
    }

    /// Makes this a persistent session's queue (idempotent: an existing stored queue is
    /// kept).
    pub fn enable_disk(&self, disk: DiskQueue) {
        let mut queue = self.lock();
        if queue.disk.is_none() {
            queue.disk = Some(disk);
            self.persistent.store(true, Ordering::Relaxed);
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    /// Queues a QoS >= 1 delivery of a persistent session: written to the store, and to
    /// memory as well when the client is connected and the memory window continues
    /// without a gap. Returns the ticket of the commit that stores it.
    /// `store_message` is the operation that stores the message itself, for the first
    /// persistent subscriber: it goes into the same submission as the entry, so that
    /// the two are always in one batch (a message is never stored without a reference).
    pub fn push_stored(
        &self,
        mut delivery: Delivery,
        message_id: u64,
        store_message: &mut Option<rookery_storage::Op>,
        durable: &crate::durable::Durable,
    ) -> Result<crate::durable::Ticket, Drop> {
        let mut queue = self.lock();
        let limits = queue.limits;
        let online = self.online();
        let in_memory_room = queue.deliveries.len() < limits.max_messages
            && queue.bytes + delivery.weight() <= limits.max_bytes;
        let online = online && in_memory_room;
        let Some(disk) = queue.disk.as_mut() else {
            return Err(Drop::Offline);
        };
        let weight = delivery.weight();
        let mut evicted = Vec::new();
        while disk.len() >= limits.max_messages as u64
            || (disk.bytes + weight > limits.max_bytes && !disk.index.is_empty())
        {
            let oldest = match limits.policy {
                OverflowPolicy::DropOldest => disk.oldest_unloaded(),
                OverflowPolicy::DropNew => None,
            };
            let Some(oldest) = oldest else {
                drop(queue);
                self.count_drop(delivery.qos, Some(&delivery.message.topic));
                return Err(Drop::QueueFull);
            };
            disk.remove(oldest);
            evicted.push(rookery_storage::Op::Dequeue {
                client_id: disk.client_id.clone(),
                sequence: oldest,
            });
            self.count_drop(QoS::AtLeastOnce, None);
        }
        let seq = disk.next_seq;
        disk.next_seq += 1;
        disk.index.push_back((seq, weight as u32));
        disk.bytes += weight;
        // Submitted under the queue lock, so the store sees this session's entries in
        // sequence order.
        let enqueue = rookery_storage::Op::Enqueue {
            client_id: disk.client_id.clone(),
            sequence: seq,
            entry: rookery_storage::QueueEntry {
                message_id,
                qos: delivery.qos as u8,
                retain: delivery.retain,
                subscription_ids: delivery.subscription_ids.clone(),
            },
        };
        let contiguous = disk.loaded_through + 1 == seq;
        let delivered_now = online && contiguous && in_memory_room;
        let ops = evicted
            .into_iter()
            .chain(store_message.take())
            .chain([enqueue]);
        // Sent to the subscriber at once: its acknowledgement may well come before the
        // entry is due to be written, so let the entry wait (write-behind). An entry for
        // an offline or backlogged session is written as soon as possible.
        let ticket = if delivered_now {
            durable.submit_behind(ops)
        } else {
            durable.submit(ops)
        };
        delivery.stored = Some(StoredRef { seq, message_id });
        if delivered_now {
            disk.loaded_through = seq;
            let was_empty = queue.deliveries.is_empty();
            queue.bytes += delivery.weight();
            queue.deliveries.push_back(delivery);
            self.queued.store(queue.deliveries.len(), Ordering::Relaxed);
            drop(queue);
            if was_empty {
                self.ready.notify_one();
            }
        } else {
            drop(queue);
            if online {
                // The connection reads it back from the store when it has room.
                self.ready.notify_one();
            }
        }
        Ok(ticket)
    }

    /// For a persistent session with stored entries not yet in memory: the sequence to
    /// read from, and the store's client id.
    pub fn unloaded_from(&self) -> Option<(u64, String)> {
        let queue = self.lock();
        let disk = queue.disk.as_ref()?;
        (disk.loaded_through + 1 < disk.next_seq && queue.deliveries.is_empty())
            .then(|| (disk.loaded_through + 1, disk.client_id.clone()))
    }

    /// Whether a stored entry predates the last restart.
    pub fn is_recovered(&self, seq: u64) -> bool {
        self.lock()
            .disk
            .as_ref()
            .is_some_and(|disk| seq <= disk.recovered_through)
    }

    /// Records that stored entries up to `seq` were read back into the connection.
    pub fn mark_loaded(&self, seq: u64) {
        if let Some(disk) = self.lock().disk.as_mut() {
            disk.loaded_through = disk.loaded_through.max(seq);
        }
    }

    /// A stored delivery was acknowledged and its entry removed from the store.
    pub fn stored_done(&self, seq: u64) {
        if let Some(disk) = self.lock().disk.as_mut() {
            disk.remove(seq);
        }
    }

    /// Whether a message queued here is likely to wait: the client is offline or already
    /// has a backlog. The router then gives the message its own memory instead of a slice
    /// of the publisher's read buffer, so that a few waiting messages cannot pin many
    /// whole read buffers (which would break the queue's byte limit).
    pub fn is_backlogged(&self) -> bool {
        !self.online() || self.queued.load(Ordering::Relaxed) > BACKLOG_THRESHOLD
    }

    /// Queues a delivery, applying the overflow policy. Never blocks.
    pub fn push(&self, delivery: Delivery) -> Result<(), Drop> {
        let mut queue = self.lock();
        let limits = queue.limits;
        if !self.online() && delivery.qos == QoS::AtMostOnce && !limits.queue_qos0_offline {
            return Err(Drop::Offline);
        }
        let weight = delivery.weight();
        while queue.deliveries.len() >= limits.max_messages
            || (queue.bytes + weight > limits.max_bytes && !queue.deliveries.is_empty())
        {
            // QoS 0 goes first: the arriving one if it is QoS 0, else the oldest queued one.
            if delivery.qos == QoS::AtMostOnce {
                self.count_drop(delivery.qos, Some(&delivery.message.topic));
                return Err(Drop::QueueFull);
            }
            if queue.qos0_queued > 0 {
                if let Some(index) = queue
                    .deliveries
                    .iter()
                    .position(|d| d.qos == QoS::AtMostOnce)
                {
                    let topic = queue.deliveries[index].message.topic.clone();
                    Self::remove_at(&mut queue, index);
                    self.count_drop(QoS::AtMostOnce, Some(&topic));
                    continue;
                }
            }
            match limits.policy {
                OverflowPolicy::DropNew => {
                    self.count_drop(delivery.qos, Some(&delivery.message.topic));
                    self.queued.store(queue.deliveries.len(), Ordering::Relaxed);
                    return Err(Drop::QueueFull);
                }
                OverflowPolicy::DropOldest => {
                    let Some(oldest) = queue.deliveries.front() else {
                        break;
                    };
                    let qos = oldest.qos;
                    let topic = oldest.message.topic.clone();
                    Self::remove_at(&mut queue, 0);
                    self.count_drop(qos, Some(&topic));
                }
            }
        }
        let was_empty = queue.deliveries.is_empty();
        queue.bytes += weight;
        if delivery.qos == QoS::AtMostOnce {
            queue.qos0_queued += 1;
        }
        queue.deliveries.push_back(delivery);
        self.queued.store(queue.deliveries.len(), Ordering::Relaxed);
        drop(queue);
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    fn remove_at(queue: &mut Queue, index: usize) {
        if let Some(removed) = queue.deliveries.remove(index) {
            queue.bytes -= removed.weight();
            if removed.qos == QoS::AtMostOnce {
                queue.qos0_queued -= 1;
            }
        }
    }

    /// Counts (and reports) a message dropped because the queue is full; `topic` is
    /// unknown for a stored entry evicted from the disk queue.
    fn count_drop(&self, qos: QoS, topic: Option<&str>) {
        self.events
            .dropped(topic, Some(&self.client_id), "queue_full");
        let counter = if qos == QoS::AtMostOnce {
            &self.stats.dropped_qos0
        } else {
            &self.stats.dropped_qos12
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        // Log the first drop and then every 10,000th, so an overload is visible without
        // the log itself becoming the bottleneck.
        if total == 1 || total % 10_000 == 0 {
            tracing::warn!(
                qos = qos as u8,
                total,
                "session queue full: message dropped"
            );
        }
    }

    /// Moves up to `max` deliveries into `out`, and at most `max_qos` of QoS >= 1 (the
    /// in-flight window left). QoS 0 deliveries behind a blocked QoS >= 1 one wait, to keep
    /// the order of messages.
    pub fn drain_into(&self, out: &mut Vec<Delivery>, max: usize, mut max_qos: usize) {
        let mut queue = self.lock();
        out.reserve(queue.deliveries.len().min(max));
        while out.len() < max {
            let Some(front) = queue.deliveries.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce {
                if max_qos == 0 {
                    break;
                }
                max_qos -= 1;
            }
            if let Some(delivery) = queue.deliveries.pop_front() {
                queue.bytes -= delivery.weight();
                if delivery.qos == QoS::AtMostOnce {
                    queue.qos0_queued -= 1;
                }
                out.push(delivery);
            }
        }
        self.queued.store(queue.deliveries.len(), Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.lock().deliveries.len()
    }

    /// Deliveries queued in memory, read without the lock (may lag by one push).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&self) {
        let mut queue = self.lock();
        queue.deliveries.clear();
        queue.bytes = 0;
        queue.qos0_queued = 0;
        self.queued.store(0, Ordering::Relaxed);
    }
}
