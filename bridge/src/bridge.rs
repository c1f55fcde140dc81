//! The handle the broker holds: one delivery worker per configured endpoint.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::WebhookConfig;
use crate::event::Event;
use crate::outbox::Enqueued;
use crate::stats::EndpointStats;
use crate::store::OutboxStore;
use crate::worker::{now_ms, Endpoint, Worker};

/// The webhook bridge. Cheap to clone (all clones share the workers); `Send + Sync`.
/// Dropping the last clone stops the workers as [`Bridge::shutdown`] would, without waiting.
#[derive(Clone)]
pub struct Bridge {
    inner: Arc<Inner>,
}

struct Inner {
    configs: Vec<WebhookConfig>,
    endpoints: Vec<Arc<Endpoint>>,
    /// `true` stops the workers; dropping it (with the last `Bridge`) stops them too.
    shutdown: watch::Sender<bool>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Bridge {
    /// Starts one delivery worker (a tokio task) per endpoint; must be called inside a tokio
    /// runtime. `recovered[i]` are the events found in the outbox of endpoint `i` at startup
    /// (oldest first); they are delivered first. They pass through the same bound as new
    /// events, so an outbox larger than the configured bound is cut by the overflow policy
    /// (and the store told).
    ///
    /// The configurations are expected to have passed [`WebhookConfig::validate`]; the
    /// workers still clamp zero concurrency or batch sizes to 1 rather than stall.
    pub fn start(
        endpoints: Vec<WebhookConfig>,
        store: Arc<dyn OutboxStore>,
        recovered: Vec<Vec<Event>>,
    ) -> Bridge {
        if recovered.len() > endpoints.len() {
            tracing::warn!(
                endpoints = endpoints.len(),
                recovered = recovered.len(),
                "recovered webhook outboxes beyond the configured endpoints are ignored"
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .map(|config| Arc::new(Endpoint::new(config.clone(), Arc::clone(&store))))
            .collect();
        let mut recovered = recovered.into_iter();
        for endpoint in &shared {
            for event in recovered.next().unwrap_or_default() {
                endpoint.enqueue(event);
            }
        }
        let workers = shared
            .iter()
            .map(|endpoint| {
                let worker = Worker::new(Arc::clone(endpoint));
                tokio::spawn(worker.run(shutdown_rx.clone()))
            })
            .collect();
        Bridge {
            inner: Arc::new(Inner {
                configs: endpoints,
                endpoints: shared,
                shutdown,
                workers: Mutex::new(workers),
            }),
        }
    }

    pub fn endpoints(&self) -> &[WebhookConfig] {
        &self.inner.configs
    }

    /// Hands an event (already stored in the durable outbox) to endpoint `endpoint_index`.
    /// Never blocks and never awaits (a short mutex push and a notify), so the publisher's
    /// cost does not depend on the endpoint. Applies the bounded-outbox overflow policy;
    /// dropped events are removed from the store, counted, and logged (at most one warning a
    /// second per endpoint). An index with no endpoint refuses the event (`DroppedNew`).
    pub fn enqueue(&self, endpoint_index: usize, event: Event) -> Enqueued {
        match self.inner.endpoints.get(endpoint_index) {
            Some(endpoint) => endpoint.enqueue(event),
            None => {
                tracing::warn!(
                    endpoint_index,
                    "webhook event for an unknown endpoint refused"
                );
                Enqueued::DroppedNew
            }
        }
    }

    /// Whether endpoint `endpoint_index` refuses every new event now (`drop_new` and a
    /// full outbox); if so one drop is counted, and the caller should build nothing for
    /// it. An index with no endpoint refuses too.
    pub fn refuses(&self, endpoint_index: usize) -> bool {
        self.inner
            .endpoints
            .get(endpoint_index)
            .is_none_or(|endpoint| endpoint.refuses())
    }

    /// A dead letter retried through the API: queued again with a fresh age. The bridge sets
    /// `created_ms` to now, so the event gets a whole `max_age_secs` again (and its latency
    /// is measured from the retry); the broker should store it in the outbox with the same
    /// fresh `created_ms` so a restart keeps that. The overflow policy applies as for
    /// [`Bridge::enqueue`].
    pub fn requeue(&self, endpoint_index: usize, mut event: Event) {
        event.created_ms = now_ms();
        self.enqueue(endpoint_index, event);
    }

    /// A snapshot per endpoint, in configuration order.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.inner.endpoints.iter().map(|e| e.stats()).collect()
    }

    /// Stops the workers and waits for them. In-flight requests are abandoned; their events,
    /// like every undelivered one, stay in the durable outbox for the next start. Events
    /// enqueued afterwards are held in memory only (bounded as ever) and not sent.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let workers =
            std::mem::take(&mut *self.inner.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for worker in workers {
            // A worker that panicked has stopped all the same.
            let _ = worker.await;
        }
    }
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("endpoints", &self.inner.configs.len())
            .finish()
    }
}
