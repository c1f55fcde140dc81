//! The delivery worker of one endpoint: takes batches from its outbox, keeps up to
//! `concurrency` requests in flight, and turns their answers into removals, retries and
//! burials.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{watch, Notify};
use tokio::task::{Id, JoinSet};

use crate::backoff::retry_delay;
use crate::config::WebhookConfig;
use crate::event::Event;
use crate::outbox::{Enqueued, NextBatch, Outbox};
use crate::request::{self, Prepared};
use crate::stats::{Counters, EndpointStats};
use crate::store::OutboxStore;

/// How much of an error answer's body is kept for the dead letter's last error.
const ERROR_SNIPPET_BYTES: usize = 200;
/// Answer bodies are read (so the connection can be reused) up to this much, then dropped.
const MAX_DRAINED_BYTES: usize = 64 * 1024;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Everything about one endpoint that the bridge handle and the worker share.
pub(crate) struct Endpoint {
    pub config: WebhookConfig,
    pub key: u64,
    outbox: Mutex<Outbox>,
    /// [`Outbox::refuses_every_event`] as of the last change of the outbox, read without
    /// its lock by [`Endpoint::refuses`].
    refusing: AtomicBool,
    overflow_warning: OverflowWarning,
    /// Signalled on every enqueue; the worker listens only while it waits for events.
    wake: Notify,
    pub counters: Counters,
    store: Arc<dyn OutboxStore>,
}

impl Endpoint {
    pub fn new(config: WebhookConfig, store: Arc<dyn OutboxStore>) -> Self {
        let outbox = Outbox::new(
            config.outbox_max_events,
            config.outbox_max_bytes,
            config.overflow,
            Duration::from_millis(config.batch_age_ms),
        );
        Endpoint {
            key: config.endpoint_key(),
            config,
            outbox: Mutex::new(outbox),
            refusing: AtomicBool::new(false),
            overflow_warning: OverflowWarning::default(),
            wake: Notify::new(),
            counters: Counters::default(),
            store,
        }
    }

    /// A poisoned lock only means another thread panicked mid-update; the counters in the
    /// outbox stay usable, and the publisher path must not panic in turn.
    fn outbox(&self) -> OutboxGuard<'_> {
        OutboxGuard {
            outbox: self.outbox.lock().unwrap_or_else(|e| e.into_inner()),
            refusing: &self.refusing,
        }
    }

    /// The publisher path: a short lock, a notify, and the store told about any drop.
    pub fn enqueue(&self, event: Event) -> Enqueued {
        let pushed = self.outbox().push(event, Instant::now());
        if pushed.outcome != Enqueued::DroppedNew {
            self.wake.notify_one();
        }
        if !pushed.dropped_ids.is_empty() {
            self.count_dropped(pushed.dropped_ids.len() as u64);
            self.store.remove(self.key, &pushed.dropped_ids);
        }
        pushed.outcome
    }

    /// Whether the outbox refuses every new event (`drop_new`, full); if so, counts one
    /// dropped. No lock: the publisher builds, stages and stores nothing for an event
    /// that would only be refused, so a dead endpoint with a full outbox costs it a load
    /// and a counter (0.75x the publish rate without a webhook when every such event was
    /// built and staged first, QoS 0, 20 publishers). An outbox that just got room may
    /// still refuse one event: as if it had come a moment earlier.
    pub fn refuses(&self) -> bool {
        if !self.refusing.load(Relaxed) {
            return false;
        }
        self.count_dropped(1);
        true
    }

    fn count_dropped(&self, dropped: u64) {
        Counters::add(&self.counters.dropped_overflow, dropped);
        if let Some(dropped) = self
            .overflow_warning
            .note(dropped, self.overflow_warning.now_ms())
        {
            tracing::warn!(
                endpoint = self.config.display_name(),
                dropped,
                policy = ?self.config.overflow,
                "webhook outbox full: events dropped"
            );
        }
    }

    pub fn stats(&self) -> EndpointStats {
        let (depth, bytes) = {
            let outbox = self.outbox();
            (outbox.depth() as u64, outbox.bytes() as u64)
        };
        let c = &self.counters;
        EndpointStats {
            name: self.config.display_name().to_owned(),
            url: self.config.url.clone(),
            delivered: c.delivered.load(Relaxed),
            retries: c.retries.load(Relaxed),
            failures: c.failures.load(Relaxed),
            dead_letters: c.dead_letters.load(Relaxed),
            dropped_overflow: c.dropped_overflow.load(Relaxed),
            outbox_depth: depth,
            outbox_bytes: bytes,
            in_flight: c.in_flight.load(Relaxed),
            latency: c.latency(),
        }
    }

    fn bury(&self, events: &[Event], last_error: &str) {
        for event in events {
            self.store.bury(self.key, event, last_error);
        }
        Counters::add(&self.counters.dead_letters, events.len() as u64);
        if !events.is_empty() {
            tracing::warn!(
                endpoint = self.config.display_name(),
                count = events.len(),
                last_error,
                "webhook events reached max age: moved to dead letters"
            );
        }
    }
}

/// The endpoint's outbox, locked; on unlock the lock-free refusal flag is brought up to
/// date, so that it never lags a change made under the lock.
struct OutboxGuard<'a> {
    outbox: MutexGuard<'a, Outbox>,
    refusing: &'a AtomicBool,
}

impl std::ops::Deref for OutboxGuard<'_> {
    type Target = Outbox;
    fn deref(&self) -> &Outbox {
        &self.outbox
    }
}

impl std::ops::DerefMut for OutboxGuard<'_> {
    fn deref_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }
}

impl Drop for OutboxGuard<'_> {
    fn drop(&mut self) {
        self.refusing
            .store(self.outbox.refuses_every_event(), Relaxed);
    }
}

/// At most one overflow warning per endpoint per this interval.
const WARN_INTERVAL_MS: u64 = 1000;

/// Rate-limits the overflow warning without a lock (drops are counted on the publisher
/// path): the drops since the last warning, and when that was. Times are milliseconds
/// of a monotonic clock (`started`), so a wall clock stepped back cannot silence it.
struct OverflowWarning {
    started: Instant,
    since_last: AtomicU64,
    /// Milliseconds since `started`, plus one; 0: never warned.
    last_ms: AtomicU64,
}

impl Default for OverflowWarning {
    fn default() -> Self {
        OverflowWarning {
            started: Instant::now(),
            since_last: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl OverflowWarning {
    /// Now, on this warning's clock.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Counts `dropped` at `now` (from [`OverflowWarning::now_ms`]); the count to log
    /// when a warning is due.
    fn note(&self, dropped: u64, now: u64) -> Option<u64> {
        self.since_last.fetch_add(dropped, Relaxed);
        let last = self.last_ms.load(Relaxed);
        if last != 0 && now.saturating_sub(last) < WARN_INTERVAL_MS {
            return None;
        }
        // One caller wins the turn.
        self.last_ms
            .compare_exchange(last, now.max(1), Relaxed, Relaxed)
            .ok()?;
        Some(self.since_last.swap(0, Relaxed))
    }
}

/// Whether the endpoint is answering, and when it may be tried next.
struct Health {
    /// Set by a failure, cleared by a success. While set, one request at a time probes the
    /// endpoint, so a dead endpoint sees one request per backoff interval, not `concurrency`.
    failing: bool,
    consecutive_failures: u32,
    /// No request starts before this (the backoff applies to the endpoint, not to a batch).
    not_before: Instant,
    last_failure_at: Option<Instant>,
}

struct InFlight {
    events: Vec<Event>,
    started: Instant,
}

/// What the dispatcher waits for when it cannot send anything now.
enum Wait {
    /// All request slots are taken.
    Completion,
    /// Backing off until then.
    Backoff(Instant),
    /// A partial batch is due then (or sooner, if it fills up).
    BatchDue(Instant),
    /// The outbox is empty.
    Events,
}

pub(crate) struct Worker {
    endpoint: Arc<Endpoint>,
    client: Result<reqwest::Client, String>,
    url: String,
    base_headers: reqwest::header::HeaderMap,
    requests: JoinSet<Result<(), String>>,
    in_flight: HashMap<Id, InFlight>,
    health: Health,
}

impl Worker {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        let config = &endpoint.config;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms.max(1)))
            .pool_max_idle_per_host(config.concurrency.max(1))
            .pool_idle_timeout(Duration::from_secs(90))
            // A redirect would turn the POST into a GET elsewhere; a 3xx is a failure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {}", error_chain(&e)));
        if let Err(error) = &client {
            tracing::error!(endpoint = config.display_name(), error, "webhook disabled");
        }
        Worker {
            url: config.url.clone(),
            base_headers: request::base_headers(config),
            client,
            requests: JoinSet::new(),
            in_flight: HashMap::new(),
            health: Health {
                failing: false,
                consecutive_failures: 0,
                not_before: Instant::now(),
                last_failure_at: None,
            },
            endpoint,
        }
    }

    /// Runs until `shutdown` turns true or its sender goes away. Requests still in flight are
    /// aborted with the worker; their events stay in the durable outbox.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = self.dispatch();
            let deadline = match wait {
                Wait::Backoff(at) | Wait::BatchDue(at) => Some(at),
                Wait::Completion | Wait::Events => None,
            };
            // Enqueues matter only while waiting for events; listening while all slots are
            // busy would wake the worker once per published event for nothing.
            let wants_events = matches!(wait, Wait::Events | Wait::BatchDue(_));
            let endpoint = Arc::clone(&self.endpoint);
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(done) = self.requests.join_next_with_id(), if !self.requests.is_empty() => {
                    let (id, result) = match done {
                        Ok((id, result)) => (id, result),
                        Err(join_error) => (join_error.id(), Err(format!("request task failed: {join_error}"))),
                    };
                    self.finish(id, result);
                }
                _ = endpoint.wake.notified(), if wants_events => {}
                _ = sleep_until_or_forever(deadline) => {}
            }
        }
        self.requests.abort_all();
        let abandoned = self.in_flight.len() as u64;
        self.endpoint
            .counters
            .in_flight
            .fetch_sub(abandoned, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts every request that may start now; says what to wait for next.
    fn dispatch(&mut self) -> Wait {
        let endpoint = Arc::clone(&self.endpoint);
        let slots = if self.health.failing {
            1
        } else {
            endpoint.config.concurrency.max(1)
        };
        loop {
            if self.requests.len() >= slots {
                return Wait::Completion;
            }
            let now = Instant::now();
            if now < self.health.not_before {
                return Wait::Backoff(self.health.not_before);
            }
            let next = endpoint.outbox().next_batch(endpoint.config.batch_max, now);
            match next {
                NextBatch::Send(events) => self.start_request(events, now),
                NextBatch::DueAt(at) => return Wait::BatchDue(at),
                NextBatch::Empty => return Wait::Events,
            }
        }
    }

    fn start_request(&mut self, events: Vec<Event>, now: Instant) {
        let Prepared { headers, body } =
            request::prepare(&self.endpoint.config, &self.base_headers, &events);
        let client = self.client.clone();
        let url = self.url.clone();
        let handle = self.requests.spawn(async move {
            let client = client?;
            post(&client, &url, headers, body).await
        });
        Counters::add(&self.endpoint.counters.in_flight, 1);
        self.in_flight.insert(
            handle.id(),
            InFlight {
                events,
                started: now,
            },
        );
    }

    fn finish(&mut self, id: Id, result: Result<(), String>) {
        let Some(InFlight { events, started }) = self.in_flight.remove(&id) else {
            return;
        };
        let endpoint = Arc::clone(&self.endpoint);
        endpoint.counters.in_flight.fetch_sub(1, Relaxed);
        match result {
            Ok(()) => self.delivered(&endpoint, events),
            Err(error) => self.failed(&endpoint, events, started, &error),
        }
    }

    fn delivered(&mut self, endpoint: &Endpoint, events: Vec<Event>) {
        self.health.failing = false;
        self.health.consecutive_failures = 0;
        endpoint.outbox().finish(&events);
        let now = now_ms();
        for event in &events {
            endpoint
                .counters
                .record_latency(now.saturating_sub(event.created_ms));
        }
        Counters::add(&endpoint.counters.delivered, events.len() as u64);
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        endpoint.store.remove(endpoint.key, &ids);
    }

    fn failed(&mut self, endpoint: &Endpoint, events: Vec<Event>, started: Instant, error: &str) {
        let config = &endpoint.config;
        Counters::add(&endpoint.counters.failures, 1);
        let now = Instant::now();
        // Requests that were already on their way when an earlier one failed belong to the
        // same outage: they do not push the backoff further out.
        let same_outage = self.health.last_failure_at.is_some_and(|at| started < at);
        if !same_outage {
            self.health.consecutive_failures = self.health.consecutive_failures.saturating_add(1);
            let delay = retry_delay(
                config.backoff_initial_ms,
                config.backoff_max_ms,
                self.health.consecutive_failures,
                &mut rand::thread_rng(),
            );
            self.health.not_before = self.health.not_before.max(now + delay);
        }
        self.health.failing = true;
        self.health.last_failure_at = Some(now);
        tracing::debug!(
            endpoint = config.display_name(),
            error,
            events = events.len(),
            consecutive_failures = self.health.consecutive_failures,
            "webhook delivery failed; will retry"
        );

        let now_ms = now_ms();
        let max_age_ms = config.max_age_secs.saturating_mul(1000);
        let (expired, retry): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| now_ms.saturating_sub(e.created_ms) >= max_age_ms);
        let expired_waiting = {
            let mut outbox = endpoint.outbox();
            outbox.finish(&expired);
            Counters::add(&endpoint.counters.retries, retry.len() as u64);
            outbox.retry_later(retry, now);
            // While the endpoint is down, the waiting events age too; bury those past max
            // age now rather than one per backoff interval.
            outbox.take_expired(now_ms, max_age_ms)
        };
        endpoint.bury(&expired, error);
        endpoint.bury(&expired_waiting, error);
    }
}

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One POST. `Ok` only for a 2xx; the error says what went wrong, for the dead letter.
async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
) -> Result<(), String> {
    let response = client
        .post(url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    let snippet = drain(response).await;
    if status.is_success() {
        Ok(())
    } else if snippet.is_empty() {
        Err(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}: {snippet}"))
    }
}

/// Reads the answer's body so the connection goes back to the pool, keeping the start of it
/// for error messages. A huge or broken body just ends the read.
async fn drain(mut response: reqwest::Response) -> String {
    let mut start = Vec::new();
    let mut read = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        if start.len() < ERROR_SNIPPET_BYTES {
            let room = ERROR_SNIPPET_BYTES - start.len();
            start.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        read += chunk.len();
        if read > MAX_DRAINED_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&start).trim().to_owned()
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        format!("timed out: {}", error_chain(error))
    } else if error.is_connect() {
        format!("connection failed: {}", error_chain(error))
    } else {
        error_chain(error)
    }
}

/// An error and its sources, since reqwest's own message hides the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::OverflowWarning;

    #[test]
    fn the_overflow_warning_comes_at_most_once_a_second_with_every_drop_counted() {
        let warning = OverflowWarning::default();
        assert_eq!(warning.note(1, 10_000), Some(1), "the first drop warns");
        assert_eq!(warning.note(3, 10_500), None, "counted, not warned");
        assert_eq!(warning.note(1, 10_999), None);
        assert_eq!(
            warning.note(2, 11_000),
            Some(6),
            "every drop since the last"
        );
        assert_eq!(warning.note(1, 11_001), None);
    }
}
