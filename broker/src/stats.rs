//! Broker-wide counters, read by `$SYS` (and later `/metrics`). Relaxed atomics: they are
//! statistics, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub publish_received: AtomicU64,
    pub publish_sent: AtomicU64,
    pub dropped_qos0: AtomicU64,
    pub dropped_qos12: AtomicU64,
    pub dropped_expired: AtomicU64,
    pub dropped_too_large: AtomicU64,
    /// Copies not stored because storage was full (`full_policy = "drop"`).
    pub dropped_storage_full: AtomicU64,
    /// Retained group messages of no-store groups, not kept (SPEC §7).
    pub dropped_no_store: AtomicU64,
    /// Round-robin group messages with no eligible online member (not queued yet).
    pub dropped_no_receiver: AtomicU64,
    /// QoS >= 1 PUBLISH packets refused because storage was full.
    pub storage_refused: AtomicU64,
    /// 1 while storage is full, else 0.
    pub storage_full: AtomicU64,
    /// Bytes the store takes on disk, as last measured.
    pub storage_bytes: AtomicU64,
    pub acl_denied: AtomicU64,
    pub protocol_errors: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub refused_max_connections: AtomicU64,
    /// Connections refused because their address connected faster than
    /// `max_connect_rate`.
    pub refused_connect_rate: AtomicU64,
    /// CONNECTs refused because their address was in back-off after failed logins.
    pub refused_auth_backoff: AtomicU64,
    /// Failed logins (user name given, login refused).
    pub auth_failures: AtomicU64,
    pub subscriptions: AtomicU64,
    pub retained: AtomicU64,
    pub sessions: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            connections_current: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            publish_received: AtomicU64::new(0),
            publish_sent: AtomicU64::new(0),
            dropped_qos0: AtomicU64::new(0),
            dropped_qos12: AtomicU64::new(0),
            dropped_expired: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            dropped_storage_full: AtomicU64::new(0),
            dropped_no_store: AtomicU64::new(0),
            dropped_no_receiver: AtomicU64::new(0),
            storage_refused: AtomicU64::new(0),
            storage_full: AtomicU64::new(0),
            storage_bytes: AtomicU64::new(0),
            acl_denied: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            refused_max_connections: AtomicU64::new(0),
            refused_connect_rate: AtomicU64::new(0),
            refused_auth_backoff: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn dropped_total(&self) -> u64 {
        Self::get(&self.dropped_qos0)
            + Self::get(&self.dropped_qos12)
            + Self::get(&self.dropped_expired)
            + Self::get(&self.dropped_too_large)
            + Self::get(&self.dropped_storage_full)
            + Self::get(&self.dropped_no_store)
            + Self::get(&self.dropped_no_receiver)
    }

    /// `$SYS/broker/...` topic names and their current values (Mosquitto's names where
    /// they exist, so existing dashboards work).
    pub fn sys_values(&self) -> Vec<(&'static str, String)> {
        let g = Self::get;
        vec![
            (
                "$SYS/broker/version",
                concat!("rookery ", env!("CARGO_PKG_VERSION")).to_string(),
            ),
            (
                "$SYS/broker/uptime",
                format!("{} seconds", self.started.elapsed().as_secs()),
            ),
            (
                "$SYS/broker/clients/connected",
                g(&self.connections_current).to_string(),
            ),
            ("$SYS/broker/clients/total", g(&self.sessions).to_string()),
            (
                "$SYS/broker/connections/total",
                g(&self.connections_total).to_string(),
            ),
            (
                "$SYS/broker/messages/received",
                g(&self.messages_received).to_string(),
            ),
            (
                "$SYS/broker/messages/sent",
                g(&self.messages_sent).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/received",
                g(&self.publish_received).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/sent",
                g(&self.publish_sent).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped",
                self.dropped_total().to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/qos0",
                g(&self.dropped_qos0).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/qos12",
                g(&self.dropped_qos12).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/expired",
                g(&self.dropped_expired).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/too_large",
                g(&self.dropped_too_large).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/storage_full",
                g(&self.dropped_storage_full).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/no_store",
                g(&self.dropped_no_store).to_string(),
            ),
            (
                "$SYS/broker/publish/messages/dropped/no_receiver",
                g(&self.dropped_no_receiver).to_string(),
            ),
            ("$SYS/broker/store/full", g(&self.storage_full).to_string()),
            (
                "$SYS/broker/store/refused",
                g(&self.storage_refused).to_string(),
            ),
            (
                "$SYS/broker/store/bytes",
                g(&self.storage_bytes).to_string(),
            ),
            (
                "$SYS/broker/bytes/received",
                g(&self.bytes_received).to_string(),
            ),
            ("$SYS/broker/bytes/sent", g(&self.bytes_sent).to_string()),
            (
                "$SYS/broker/subscriptions/count",
                g(&self.subscriptions).to_string(),
            ),
            (
                "$SYS/broker/retained messages/count",
                g(&self.retained).to_string(),
            ),
            ("$SYS/broker/acl/denied", g(&self.acl_denied).to_string()),
            (
                "$SYS/broker/protocol_errors",
                g(&self.protocol_errors).to_string(),
            ),
        ]
    }
}

/// A latency histogram with fixed buckets, updated with relaxed atomics (no lock on the
/// path it measures), read by `/metrics`.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds; a last, implicit bucket is +Inf.
    pub bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

/// What [`Histogram::snapshot`] reads: sum (s), count, (upper bound, count) per bucket.
pub type HistogramSnapshot = (f64, u64, Vec<(f64, u64)>);

/// Bounds for storage commits: 100 µs to 5 s.
pub const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let index = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds, the last one
    /// `f64::MAX`, which `prometheus-client` writes as `+Inf`; it accumulates them itself).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, count)| {
                let bound = self.bounds.get(i).copied().unwrap_or(f64::MAX);
                (bound, count.load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}
