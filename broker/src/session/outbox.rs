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
}

impl Delivery {
    fn weight(&self) -> usize {
        self.message.weight()
    }
}

#[derive(Debug, Clone, Copy)]
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
    stats: Arc<Stats>,
}

impl Outbox {
    pub fn new(limits: OutboxLimits, stats: Arc<Stats>) -> Outbox {
        Outbox {
            queue: Mutex::new(Queue {
                limits,
                deliveries: VecDeque::new(),
                bytes: 0,
                qos0_queued: 0,
            }),
            ready: Notify::new(),
            online: AtomicBool::new(true),
            queued: AtomicUsize::new(0),
            stats,
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
                self.count_drop(delivery.qos);
                return Err(Drop::QueueFull);
            }
            if queue.qos0_queued > 0 {
                if let Some(index) = queue
                    .deliveries
                    .iter()
                    .position(|d| d.qos == QoS::AtMostOnce)
                {
                    Self::remove_at(&mut queue, index);
                    self.count_drop(QoS::AtMostOnce);
                    continue;
                }
            }
            match limits.policy {
                OverflowPolicy::DropNew => {
                    self.count_drop(delivery.qos);
                    self.queued.store(queue.deliveries.len(), Ordering::Relaxed);
                    return Err(Drop::QueueFull);
                }
                OverflowPolicy::DropOldest => {
                    let Some(oldest) = queue.deliveries.front() else {
                        break;
                    };
                    let qos = oldest.qos;
                    Self::remove_at(&mut queue, 0);
                    self.count_drop(qos);
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

    fn count_drop(&self, qos: QoS) {
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
