//! Per-endpoint counters, kept in atomics so the delivery path never takes a lock for them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (inclusive, ms) of the latency buckets; a last `+Inf` bucket follows.
pub const LATENCY_BUCKETS_MS: [u64; 12] =
    [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];

/// Event creation → 2xx latency, in fixed buckets so it can be exported as a Prometheus
/// histogram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Upper bounds of the finite buckets, in ms.
    pub bounds_ms: &'static [u64],
    /// Events per bucket, not cumulative: `counts[i]` are the events with latency in
    /// `(bounds_ms[i-1], bounds_ms[i]]`; the last entry (`counts.len() == bounds_ms.len() + 1`)
    /// is the `+Inf` bucket.
    pub counts: Vec<u64>,
    pub sum_ms: u64,
    pub count: u64,
}

impl LatencyHistogram {
    /// Cumulative counts (`le` buckets, as Prometheus wants them), `+Inf` last.
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |total, n| {
                *total += n;
                Some(*total)
            })
            .collect()
    }
}

/// A snapshot of one endpoint's delivery.
#[derive(Debug, Clone)]
pub struct EndpointStats {
    pub name: String,
    pub url: String,
    /// Events answered with a 2xx.
    pub delivered: u64,
    /// Events scheduled for another attempt after a failed one.
    pub retries: u64,
    /// Failed requests: non-2xx answers, timeouts and connection errors.
    pub failures: u64,
    /// Events buried after reaching max age.
    pub dead_letters: u64,
    /// Events dropped by the overflow policy (either way).
    pub dropped_overflow: u64,
    /// Undelivered events held in memory, queued and in flight.
    pub outbox_depth: u64,
    /// Their body bytes.
    pub outbox_bytes: u64,
    /// Requests in flight.
    pub in_flight: u64,
    pub latency: LatencyHistogram,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub retries: AtomicU64,
    pub failures: AtomicU64,
    pub dead_letters: AtomicU64,
    pub dropped_overflow: AtomicU64,
    pub in_flight: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    latency_sum_ms: AtomicU64,
    latency_count: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub fn record_latency(&self, latency_ms: u64) {
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&bound| latency_ms <= bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_ms.fetch_add(latency_ms, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    pub fn latency(&self) -> LatencyHistogram {
        LatencyHistogram {
            bounds_ms: &LATENCY_BUCKETS_MS,
            counts: self
                .latency_buckets
                .iter()
                .map(|b| b.load(Relaxed))
                .collect(),
            sum_ms: self.latency_sum_ms.load(Relaxed),
            count: self.latency_count.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_lands_in_the_right_bucket() {
        let counters = Counters::default();
        for ms in [0, 1, 2, 5, 6, 10_000, 10_001, u64::MAX / 4] {
            counters.record_latency(ms);
        }
        let histogram = counters.latency();
        assert_eq!(histogram.counts.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert_eq!(histogram.counts[0], 2); // 0, 1
        assert_eq!(histogram.counts[1], 2); // 2, 5
        assert_eq!(histogram.counts[2], 1); // 6
        assert_eq!(histogram.counts[11], 1); // 10_000
        assert_eq!(histogram.counts[12], 2); // +Inf
        assert_eq!(histogram.count, 8);
        assert_eq!(*histogram.cumulative().last().unwrap(), 8);
        assert_eq!(histogram.cumulative()[1], 4);
    }
}
