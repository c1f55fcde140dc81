//! Retry delays: exponential (initial, doubling, capped) with jitter.

use std::time::Duration;

use rand::Rng;

/// The delay before the next attempt after `failures` consecutive failed ones (1 = the
/// first failure). The ceiling doubles from `initial_ms` up to `max_ms`; the delay is drawn
/// uniformly from `[initial_ms, ceiling]` ("full jitter" with a floor), so endpoints that
/// failed together do not come back in step, and a failing endpoint is never tried more
/// often than once per `initial_ms`.
pub(crate) fn retry_delay(
    initial_ms: u64,
    max_ms: u64,
    failures: u32,
    rng: &mut impl Rng,
) -> Duration {
    let initial_ms = initial_ms.max(1);
    let max_ms = max_ms.max(initial_ms);
    let doublings = failures.saturating_sub(1).min(63);
    let ceiling = initial_ms.saturating_mul(1u64 << doublings).min(max_ms);
    Duration::from_millis(rng.gen_range(initial_ms..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_in_range() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            assert_eq!(
                retry_delay(200, 30_000, 1, &mut rng),
                Duration::from_millis(200)
            );
            let second = retry_delay(200, 30_000, 2, &mut rng).as_millis();
            assert!((200..=400).contains(&second));
            let fourth = retry_delay(200, 30_000, 4, &mut rng).as_millis();
            assert!((200..=1600).contains(&fourth));
            let late = retry_delay(200, 30_000, 1000, &mut rng).as_millis();
            assert!((200..=30_000).contains(&late));
        }
        // Jitter: many draws at a high failure count are not all the same.
        let draws: std::collections::HashSet<Duration> = (0..50)
            .map(|_| retry_delay(10, 10_000, 20, &mut rng))
            .collect();
        assert!(draws.len() > 10);
    }

    #[test]
    fn degenerate_settings_do_not_panic() {
        let mut rng = rand::thread_rng();
        assert_eq!(retry_delay(0, 0, 0, &mut rng), Duration::from_millis(1));
        assert_eq!(
            retry_delay(u64::MAX, 1, 64, &mut rng).as_millis(),
            u64::MAX as u128
        );
    }
}
