//! Broker events for the webhook bridge (SPEC §9): where the broker says what happened
//! (a message published or dropped, a client connected, a group changed), renders each
//! event's JSON once per interested endpoint, stores it in the endpoint's durable outbox
//! (`outbox.rs`) and hands it to `rookery-bridge`, which delivers it.
//!
//! Durability follows what the event describes: the event of a QoS >= 1 PUBLISH, and of a
//! management API change, is durable before the PUBACK / the API answer (they wait for its
//! ticket, like for the message or the change itself); a QoS 0 message's event, like the
//! message, may be lost in a crash within [`FLUSH_INTERVAL`]; connection and subscription
//! events are written at once but nobody waits for them.
//!
//! Cost when no endpoint wants a kind: one array lookup ([`Events::wants`]).

mod kinds;
pub mod outbox;

pub use kinds::Client;

use crate::durable::{Durable, Ticket};
use outbox::{DurableOutbox, Ids};
use rookery_bridge::{delivery_id_string, Bridge, EndpointStats, Event, EventKind, WebhookConfig};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// How often open outbox chunks holding unwritten events are written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What an event is about, for the endpoints' filters: the topic filter applies to
/// message events, the gid filter to events that carry a gid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub topic: Option<&'a str>,
    pub gid: Option<u64>,
}

/// The broker's event source; without `[[webhooks]]` every call is a no-op.
#[derive(Clone, Default)]
pub struct Events {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    bridge: Bridge,
    outbox: Arc<DurableOutbox>,
    ids: Arc<Ids>,
    /// Per kind (in `EventKind::ALL` order), the endpoints whose `events` take it.
    wanted: Vec<Vec<usize>>,
}

fn kind_index(kind: EventKind) -> usize {
    EventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

/// A dead letter as the API shows it.
pub struct DeadLetter {
    pub endpoint: usize,
    pub error: String,
    pub event: Event,
}

impl Events {
    pub fn disabled() -> Events {
        Events::default()
    }

    /// Recovers the outboxes of `endpoints` from the store and starts their delivery
    /// workers (on the current tokio runtime).
    pub fn start(
        endpoints: Vec<WebhookConfig>,
        durable: Option<Arc<Durable>>,
    ) -> Result<Events, String> {
        if endpoints.is_empty() {
            return Ok(Events::disabled());
        }
        let keys: Vec<u64> = endpoints.iter().map(|e| e.endpoint_key()).collect();
        let ids = Arc::new(Ids::default());
        let recovered = DurableOutbox::recover(durable, &keys, ids.clone())?;
        ids.advance_past(recovered.last_id);
        let outbox = Arc::new(recovered.outbox);
        let total: usize = recovered.events.iter().map(Vec::len).sum();
        if total > 0 {
            tracing::info!(events = total, "undelivered webhook events recovered");
        }
        let wanted = EventKind::ALL
            .iter()
            .map(|kind| {
                endpoints
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        e.events.is_empty() || e.events.iter().any(|k| k == kind.as_str())
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let bridge = Bridge::start(endpoints, outbox.clone(), recovered.events);
        Ok(Events {
            inner: Some(Arc::new(Inner {
                bridge,
                outbox,
                ids,
                wanted,
            })),
        })
    }

    /// Whether any endpoint takes events of this kind (before topic and gid filters).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| !inner.wanted[kind_index(kind)].is_empty())
    }

    /// Emits one event: `fields` are its kind's own fields (called only if an endpoint
    /// takes it); `payload`, if any, is added per endpoint in its `payload_encoding`
    /// (`payload` and `encoding` fields). `awaited`: the caller will wait for the ticket
    /// before acknowledging what the event describes.
    pub fn emit(
        &self,
        kind: EventKind,
        scope: Scope<'_>,
        awaited: bool,
        payload: Option<&[u8]>,
        fields: impl FnOnce() -> Map<String, Value>,
    ) -> Option<Ticket> {
        let inner = self.inner.as_ref()?;
        let configs = inner.bridge.endpoints();
        let targets: Vec<usize> = inner.wanted[kind_index(kind)]
            .iter()
            .copied()
            .filter(|&i| configs[i].accepts(kind, scope.topic, scope.gid))
            .collect();
        if targets.is_empty() {
            return None;
        }
        let id = inner.ids.next();
        let created_ms = now_ms();
        let mut body = Map::new();
        body.insert("event".into(), kind.as_str().into());
        body.insert("delivery".into(), delivery_id_string(id).into());
        body.insert("ts".into(), created_ms.into());
        body.extend(fields());
        let mut ops = Vec::new();
        let mut events = Vec::with_capacity(targets.len());
        for index in targets {
            let mut body = body.clone();
            if let Some(payload) = payload {
                let (text, encoding) = configs[index].encode_payload(payload);
                body.insert("payload".into(), text.into());
                body.insert("encoding".into(), encoding.into());
            }
            let event = Event {
                id,
                kind,
                created_ms,
                body: serde_json::to_vec(&Value::Object(body))
                    .unwrap_or_default()
                    .into(),
            };
            ops.extend(inner.outbox.add(index, &event, awaited));
            events.push((index, event));
        }
        // Stored (or pending) before the bridge may deliver and remove it.
        let ticket = inner.outbox.submit(ops, awaited);
        for (index, event) in events {
            inner.bridge.enqueue(index, event);
        }
        ticket
    }

    /// Writes events waiting in open outbox chunks; run every [`FLUSH_INTERVAL`].
    pub async fn flush_periodically(self) {
        let Some(inner) = self.inner else {
            return;
        };
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tick.tick().await;
            inner.outbox.flush();
        }
    }

    pub fn endpoints(&self) -> &[WebhookConfig] {
        self.inner
            .as_ref()
            .map_or(&[], |inner| inner.bridge.endpoints())
    }

    pub fn stats(&self) -> Vec<EndpointStats> {
        self.inner
            .as_ref()
            .map_or_else(Vec::new, |inner| inner.bridge.stats())
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, String> {
        let Some(inner) = &self.inner else {
            return Ok(Vec::new());
        };
        Ok(inner
            .outbox
            .dead_letters()?
            .into_iter()
            .map(|(endpoint, error, event)| DeadLetter {
                endpoint,
                error,
                event,
            })
            .collect())
    }

    /// Sends a dead letter again (same delivery id, fresh age); the ticket of its move
    /// back into the outbox.
    pub fn retry(&self, letter: DeadLetter) -> Option<Ticket> {
        let inner = self.inner.as_ref()?;
        let (event, ticket) = inner.outbox.revive(letter.endpoint, letter.event)?;
        inner.bridge.requeue(letter.endpoint, event);
        ticket
    }

    /// Writes what is open and stops the delivery workers.
    pub async fn shutdown(&self) {
        if let Some(inner) = &self.inner {
            inner.outbox.flush();
            inner.bridge.shutdown().await;
        }
    }
}
