//! The global storage limit: a watcher that measures the store's size and the free space
//! of its file system and sets `Durable::is_full`, which the router reads per message.
//!
//! Full when the store exceeds `[storage] max_bytes` or the file system has less than
//! `min_free_bytes` free — or when a commit failed with "no space". It stops being full
//! once the store is below 90% of `max_bytes` and 125% of `min_free_bytes` is free, so
//! that the state does not flap around the limit with every message.

use super::Durable;
use crate::config::StorageConfig;
use crate::stats::Stats;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often size and free space are measured. sled's size is a directory walk, cheap at
/// this rate; a burst between two measurements can overshoot `max_bytes` by what arrives
/// in this time.
const INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub min_free_bytes: u64,
}

impl Limits {
    pub fn from_config(config: &StorageConfig) -> Limits {
        Limits {
            max_bytes: config.max_bytes,
            min_free_bytes: config.min_free_bytes,
        }
    }

    /// Whether storage is full now, given whether it was and what was measured.
    pub fn full(&self, was_full: bool, size: u64, free: Option<u64>) -> bool {
        let (max, min_free) = if was_full {
            (self.max_bytes / 10 * 9, self.min_free_bytes / 4 * 5)
        } else {
            (self.max_bytes, self.min_free_bytes)
        };
        let over_size = self.max_bytes > 0 && size > max;
        let short_of_space = self.min_free_bytes > 0 && free.is_some_and(|free| free < min_free);
        over_size || short_of_space
    }
}

impl Durable {
    /// Runs for the broker's lifetime.
    pub async fn watch_capacity(self: Arc<Self>, limits: Limits, stats: Arc<Stats>) {
        let mut tick = tokio::time::interval(INTERVAL);
        loop {
            tick.tick().await;
            let store = self.store.clone();
            let measured =
                tokio::task::spawn_blocking(move || (store.size_on_disk(), store.free_space()))
                    .await;
            let Ok((size, free)) = measured else {
                continue;
            };
            stats.storage_bytes.store(size, Ordering::Relaxed);
            let was_full = self.is_full();
            let full = limits.full(was_full, size, free);
            if full != was_full {
                if full {
                    tracing::warn!(
                        size,
                        free,
                        max_bytes = limits.max_bytes,
                        min_free_bytes = limits.min_free_bytes,
                        policy = ?self.full_policy,
                        "storage full: new durable work is refused or dropped"
                    );
                } else {
                    tracing::info!(size, free, "storage has room again");
                }
                self.set_full(full);
            }
            stats.storage_full.store(u64::from(full), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn full_with_hysteresis() {
        let limits = Limits {
            max_bytes: 1000,
            min_free_bytes: 400,
        };
        assert!(!limits.full(false, 1000, Some(10_000)));
        assert!(limits.full(false, 1001, Some(10_000)));
        // Stays full until below 90%.
        assert!(limits.full(true, 950, Some(10_000)));
        assert!(!limits.full(true, 900, Some(10_000)));
        // Free space: full under 400, room again from 500.
        assert!(limits.full(false, 0, Some(399)));
        assert!(limits.full(true, 0, Some(450)));
        assert!(!limits.full(true, 0, Some(500)));
        // Unknown free space and no limits: never full.
        assert!(!limits.full(false, 0, None));
        let none = Limits {
            max_bytes: 0,
            min_free_bytes: 0,
        };
        assert!(!none.full(true, u64::MAX, Some(0)));
    }
}
