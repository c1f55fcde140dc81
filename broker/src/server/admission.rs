//! Who may connect, per source address: the connect rate (`[mqtt] max_connect_rate`,
//! `connect_burst`) and the back-off after failed logins (`[auth] max_auth_failures` and
//! friends). Both are small maps behind their own mutex, taken for a few hundred
//! nanoseconds per connection and never held across an await; nothing here sleeps. A
//! refused client is answered (or closed) at once: the back-off is a refusal, not a delay.
//!
//! Memory is bounded: an entry that says nothing more than a fresh one would (a full
//! bucket, an address whose failures and back-off are behind it) is evicted by
//! [`Admission::sweep`], run periodically and whenever a map reaches [`MAX_TRACKED`]
//! addresses. If a map is still full of live entries, new addresses are not tracked until
//! the next sweep frees room (they are let in: `max_connections` still bounds them).
//!
//! An IPv6 address is tracked by its /64, which a single host or site typically has
//! whole; an IPv4-mapped IPv6 address as the IPv4 address.

use crate::config::Config;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked per map at most.
pub const MAX_TRACKED: usize = 100_000;
/// After a sweep that freed nothing, the next one waits this long (a map full of live
/// entries is not rescanned on every connection).
const SWEEP_BACKOFF: Duration = Duration::from_secs(1);
/// No back-off is longer than a day, whatever `auth_backoff_max_secs` says.
pub const MAX_BACKOFF_SECS: u64 = 24 * 3600;

/// The key an address is tracked under.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures in the current window.
    count: u32,
    window_start: Instant,
    last_failure: Instant,
    /// Back-offs so far (the next lasts `auth_backoff_secs << strikes`).
    strikes: u32,
    banned_until: Option<Instant>,
}

impl Failures {
    /// Whether the entry no longer matters: not in back-off, and quiet for the window
    /// (and, once backed off, for `auth_backoff_max_secs` after the back-off ended, so
    /// that the doubling is not forgotten between two attempts).
    fn idle(&self, now: Instant, auth: &crate::config::AuthConfig) -> bool {
        if self.banned_until.is_some_and(|until| now < until) {
            return false;
        }
        let last = self
            .banned_until
            .map_or(self.last_failure, |until| until.max(self.last_failure));
        let mut quiet = Duration::from_secs(auth.auth_failure_window_secs);
        if self.strikes > 0 {
            quiet = quiet.max(Duration::from_secs(auth.auth_backoff_max_secs));
        }
        now.saturating_duration_since(last) >= quiet
    }
}

struct Tracked<T> {
    entries: FxHashMap<IpAddr, T>,
    /// No sweep on a full map before this.
    next_full_sweep: Option<Instant>,
}

impl<T> Default for Tracked<T> {
    fn default() -> Self {
        Tracked {
            entries: FxHashMap::default(),
            next_full_sweep: None,
        }
    }
}

impl<T> Tracked<T> {
    /// Room for one more address, sweeping with `idle` if the map is full; false if
    /// there is none.
    fn make_room(&mut self, now: Instant, idle: impl Fn(&T) -> bool, what: &str) -> bool {
        if self.entries.len() < MAX_TRACKED {
            return true;
        }
        if self.next_full_sweep.is_some_and(|at| now < at) {
            return false;
        }
        self.entries.retain(|_, entry| !idle(entry));
        if self.entries.len() < MAX_TRACKED {
            self.next_full_sweep = None;
            return true;
        }
        self.next_full_sweep = Some(now + SWEEP_BACKOFF);
        tracing::warn!(
            addresses = self.entries.len(),
            "{what}: {MAX_TRACKED} addresses tracked; new ones are not limited until some go idle"
        );
        false
    }
}

/// The per-address state of the connection limits.
#[derive(Default)]
pub struct Admission {
    rate: Mutex<Tracked<Bucket>>,
    failures: Mutex<Tracked<Failures>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn rate_and_burst(config: &Config) -> Option<(f64, f64)> {
    let mqtt = &config.mqtt;
    (mqtt.max_connect_rate > 0).then(|| {
        let rate = f64::from(mqtt.max_connect_rate);
        (rate, f64::from(mqtt.connect_burst.max(1)))
    })
}

impl Admission {
    /// Takes a token from `ip`'s bucket: false when the address connects faster than
    /// `max_connect_rate` (after its burst). A refused attempt takes no token.
    pub fn connect_allowed(&self, ip: IpAddr, config: &Config, now: Instant) -> bool {
        let Some((rate, burst)) = rate_and_burst(config) else {
            return true;
        };
        let key = address_key(ip);
        let mut tracked = lock(&self.rate);
        if let Some(bucket) = tracked.entries.get_mut(&key) {
            let tokens = bucket.refilled(now, rate, burst);
            bucket.last = now;
            if tokens < 1.0 {
                bucket.tokens = tokens;
                return false;
            }
            bucket.tokens = tokens - 1.0;
            return true;
        }
        if tracked.make_room(
            now,
            |b| b.refilled(now, rate, burst) >= burst,
            "connect rate",
        ) {
            tracked.entries.insert(
                key,
                Bucket {
                    tokens: burst - 1.0,
                    last: now,
                },
            );
        }
        true
    }

    /// How much longer `ip` is in back-off after failed logins, if it is.
    pub fn backoff_left(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let tracked = lock(&self.failures);
        if tracked.entries.is_empty() {
            return None;
        }
        let until = tracked.entries.get(&address_key(ip))?.banned_until?;
        (now < until).then(|| until - now)
    }

    /// Counts a failed login from `ip`; returns the back-off it starts, if it starts one:
    /// the `max_auth_failures`-th failure within the window starts the first, and once an
    /// address has been backed off, each further failure starts another, twice as long
    /// (up to `auth_backoff_max_secs`).
    pub fn login_failed(&self, ip: IpAddr, config: &Config, now: Instant) -> Option<Duration> {
        let auth = &config.auth;
        if auth.max_auth_failures == 0 {
            return None;
        }
        let key = address_key(ip);
        let mut tracked = lock(&self.failures);
        if !tracked.entries.contains_key(&key)
            && !tracked.make_room(now, |f| f.idle(now, auth), "authentication back-off")
        {
            return None;
        }
        let entry = tracked.entries.entry(key).or_insert(Failures {
            count: 0,
            window_start: now,
            last_failure: now,
            strikes: 0,
            banned_until: None,
        });
        if now.saturating_duration_since(entry.window_start)
            >= Duration::from_secs(auth.auth_failure_window_secs)
        {
            entry.count = 0;
            entry.window_start = now;
        }
        entry.count += 1;
        entry.last_failure = now;
        if entry.count < auth.max_auth_failures && entry.strikes == 0 {
            return None;
        }
        let cap = auth.auth_backoff_max_secs.clamp(1, MAX_BACKOFF_SECS);
        let initial = auth.auth_backoff_secs.clamp(1, cap);
        let secs = initial
            .checked_shl(entry.strikes)
            .filter(|s| *s >> entry.strikes == initial)
            .map_or(cap, |s| s.min(cap));
        let backoff = Duration::from_secs(secs);
        entry.banned_until = Some(now + backoff);
        entry.strikes = entry.strikes.saturating_add(1).min(63);
        entry.count = 0;
        entry.window_start = now;
        Some(backoff)
    }

    /// A successful login from `ip` forgets its failures and back-offs.
    pub fn login_succeeded(&self, ip: IpAddr) {
        let mut tracked = lock(&self.failures);
        if !tracked.entries.is_empty() {
            tracked.entries.remove(&address_key(ip));
        }
    }

    /// Addresses in back-off now (for `/metrics`).
    pub fn in_backoff(&self, now: Instant) -> usize {
        lock(&self.failures)
            .entries
            .values()
            .filter(|f| f.banned_until.is_some_and(|until| now < until))
            .count()
    }

    /// Evicts the entries that say nothing a fresh one would not.
    pub fn sweep(&self, config: &Config, now: Instant) {
        {
            let mut tracked = lock(&self.rate);
            match rate_and_burst(config) {
                None => tracked.entries.clear(),
                Some((rate, burst)) => tracked
                    .entries
                    .retain(|_, b| b.refilled(now, rate, burst) < burst),
            }
        }
        let mut tracked = lock(&self.failures);
        if config.auth.max_auth_failures == 0 {
            tracked.entries.clear();
        } else {
            tracked.entries.retain(|_, f| !f.idle(now, &config.auth));
        }
    }

    /// Addresses tracked: (connect rate, failed logins).
    pub fn tracked(&self) -> (usize, usize) {
        (
            lock(&self.rate).entries.len(),
            lock(&self.failures).entries.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: u32, burst: u32) -> Config {
        let mut config = Config::default();
        config.mqtt.max_connect_rate = rate;
        config.mqtt.connect_burst = burst;
        config.auth.max_auth_failures = 3;
        config.auth.auth_failure_window_secs = 10;
        config.auth.auth_backoff_secs = 1;
        config.auth.auth_backoff_max_secs = 4;
        config
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let admission = Admission::default();
        let config = config(2, 3);
        let t0 = Instant::now();
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(admission.connect_allowed(a, &config, t0));
        }
        assert!(!admission.connect_allowed(a, &config, t0));
        // Another address has its own bucket.
        assert!(admission.connect_allowed(ip("10.0.0.2"), &config, t0));
        // 2/s: one token after 0.5 s.
        let t1 = t0 + Duration::from_millis(500);
        assert!(admission.connect_allowed(a, &config, t1));
        assert!(!admission.connect_allowed(a, &config, t1));
        // Full again after 1.5 s; then swept as idle.
        let t2 = t1 + Duration::from_secs(2);
        admission.sweep(&config, t2);
        assert_eq!(admission.tracked().0, 0);
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let admission = Admission::default();
        let config = config(0, 1);
        let now = Instant::now();
        for _ in 0..100 {
            assert!(admission.connect_allowed(ip("10.0.0.1"), &config, now));
        }
        assert_eq!(admission.tracked().0, 0);
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_cap_and_a_success_resets() {
        let admission = Admission::default();
        let config = config(0, 1);
        let a = ip("10.0.0.1");
        let t0 = Instant::now();
        assert_eq!(admission.login_failed(a, &config, t0), None);
        assert_eq!(admission.login_failed(a, &config, t0), None);
        assert_eq!(admission.backoff_left(a, t0), None);
        assert_eq!(
            admission.login_failed(a, &config, t0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(admission.backoff_left(a, t0), Some(Duration::from_secs(1)));
        assert_eq!(admission.backoff_left(ip("10.0.0.2"), t0), None);
        assert_eq!(admission.in_backoff(t0), 1);
        // Served: the next failure alone backs off again, for twice as long, then 4 s (the cap).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(admission.backoff_left(a, t1), None);
        assert_eq!(
            admission.login_failed(a, &config, t1),
            Some(Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(2);
        assert_eq!(
            admission.login_failed(a, &config, t2),
            Some(Duration::from_secs(4))
        );
        let t3 = t2 + Duration::from_secs(4);
        assert_eq!(
            admission.login_failed(a, &config, t3),
            Some(Duration::from_secs(4))
        );
        // Not forgotten while quiet for less than the cap after the back-off ...
        let t4 = t3 + Duration::from_secs(4);
        admission.sweep(&config, t4 + Duration::from_secs(3));
        assert_eq!(admission.tracked().1, 1);
        // ... but after a success.
        admission.login_succeeded(a);
        assert_eq!(admission.tracked().1, 0);
        assert_eq!(admission.login_failed(a, &config, t4), None);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let admission = Admission::default();
        let config = config(0, 1);
        let a = ip("10.0.0.1");
        let t0 = Instant::now();
        admission.login_failed(a, &config, t0);
        admission.login_failed(a, &config, t0);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(admission.login_failed(a, &config, later), None);
        admission.sweep(&config, later + Duration::from_secs(10));
        assert_eq!(admission.tracked().1, 0);
    }

    #[test]
    fn huge_back_offs_saturate_at_the_cap() {
        let admission = Admission::default();
        let mut config = config(0, 1);
        config.auth.max_auth_failures = 1;
        config.auth.auth_backoff_max_secs = u64::MAX;
        let a = ip("10.0.0.1");
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..70 {
            let backoff = admission.login_failed(a, &config, now).unwrap();
            assert!(backoff >= last);
            last = backoff;
            now += Duration::from_secs(1);
        }
        assert_eq!(last, Duration::from_secs(MAX_BACKOFF_SECS));
    }
}
