//! Broker events for the webhook bridge (SPEC §9): where the broker says what happened
//! (a message published or dropped, a client connected, a group changed), builds the event
//! once for the interested endpoints, stores it in each one's durable outbox (`outbox.rs`)
//! and hands it to `rookery-bridge`, which delivers it.
//!
//! - `message.publish`, the event of every published message ([`Events::message_publish`]):
//!   one compact [`MessageEvent`] (the message's topic, ids and payload buffers, nothing
//!   copied), shared by all its endpoints; the bridge renders its JSON when it sends it,
//!   with each endpoint's payload encoding. Publishing renders nothing, and an event a
//!   dead endpoint's outbox drops unsent is never rendered.
//! - Every other kind ([`Events::emit`]): its JSON, rendered at once (written straight
//!   into its buffer: [`Fields`]), per interested endpoint where a payload's encoding
//!   differs.
//!
//! Durability follows what the event describes: the event of a QoS >= 1 PUBLISH, and of a
//! management API change, is durable before the PUBACK / the API answer (they wait for its
//! ticket, like for the message or the change itself); a QoS 0 message's event, like the
//! message, may be lost in a crash before the next commit (within [`FLUSH_INTERVAL`]);
//! connection and subscription events likewise, nobody waits for them.
//!
//! Cost when no endpoint wants a kind: one atomic load and one array lookup
//! ([`Events::wants`]).
//!
//! A reload (SIGHUP) with changed `[[webhooks]]` replaces the endpoints in place
//! ([`Events::reload`]): every clone (router, session registry, each session's outbox)
//! shares one [`ArcSwapOption`], so all of them switch at once.

mod kinds;
pub mod outbox;

pub use kinds::Client;

use crate::durable::{Durable, Ticket};
use arc_swap::ArcSwapOption;
use outbox::{DurableOutbox, Ids};
use rookery_bridge::{
    delivery_id_string, Body, Bridge, EndpointStats, Event, EventKind, MessageEvent, WebhookConfig,
};
use serde_json::{Map, Value};
use std::sync::Arc;

/// At the latest this long after it was staged, an event nobody waits for is committed.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// An event's JSON body as it is written: `{"event":…,"delivery":…,"ts":…` so far, then
/// each field appended. Writing the body directly costs a fraction of building a
/// `serde_json::Map` (a `BTreeMap` of owned strings) and serializing it, per event.
pub struct Fields {
    body: Vec<u8>,
}

impl Fields {
    /// Appends `"key":value`. Keys are the caller's and distinct.
    pub fn put(&mut self, key: &str, value: impl serde::Serialize) {
        self.body.push(b',');
        // Writing into a Vec fails only for a value that cannot be JSON (a map with
        // non-string keys): none of ours.
        let _ = serde_json::to_writer(&mut self.body, key);
        self.body.push(b':');
        let _ = serde_json::to_writer(&mut self.body, &value);
    }

    pub fn put_all(&mut self, fields: Map<String, Value>) {
        for (key, value) in fields {
            self.put(&key, value);
        }
    }
}

/// The start of an event's JSON body, `{"event":…,"delivery":…,"ts":…`, with room for
/// `extra` more bytes.
fn head(kind: EventKind, id: u64, created_ms: u64, extra: usize) -> Fields {
    let mut head = Fields {
        body: Vec::with_capacity(256 + extra),
    };
    head.body.extend_from_slice(b"{\"event\":\"");
    head.body.extend_from_slice(kind.as_str().as_bytes());
    head.body.extend_from_slice(b"\",\"delivery\":\"");
    head.body
        .extend_from_slice(delivery_id_string(id).as_bytes());
    head.body.extend_from_slice(b"\"");
    head.put("ts", created_ms);
    head
}

/// The end of an event's JSON body for one endpoint: the payload, if any, in the endpoint's
/// `payload_encoding` (`payload` and `encoding` fields), and the closing brace.
fn finish(mut body: Fields, payload: Option<&[u8]>, config: &WebhookConfig) -> Vec<u8> {
    if let Some(payload) = payload {
        match config.payload_text(payload) {
            Some(text) => {
                body.put("payload", text);
                body.put("encoding", "utf8");
            }
            None => {
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
                body.put("payload", encoded);
                body.put("encoding", "base64");
            }
        }
    }
    body.body.push(b'}');
    body.body
}

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

/// The broker's event source; without `[[webhooks]]` every call is a no-op. Clones share
/// the endpoints, and see a reload's new ones at once.
#[derive(Clone, Default)]
pub struct Events {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The endpoints in force; `None` without `[[webhooks]]`.
    current: ArcSwapOption<Inner>,
    /// Event and chunk ids, one sequence across reloads: an old generation still adding
    /// events while a new one starts must not reuse a chunk id.
    ids: Arc<Ids>,
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
        let events = Events::disabled();
        let inner = Inner::start(endpoints, durable, events.shared.ids.clone())?;
        events.shared.current.store(inner.map(Arc::new));
        Ok(events)
    }

    /// Replaces the endpoints (a reload): the new ones start, recovering what the store
    /// holds, before the old ones stop, so that no event goes unrecorded in between.
    ///
    /// 1. The old outbox's staged events are committed: every event the old generation
    ///    took in so far is in a record the new one recovers. Records are written once,
    ///    never appended to, so the new generation, removing a record once it delivered
    ///    what it read there, never removes an event it did not read.
    /// 2. The new endpoints recover the outboxes (their own, and kept ones of endpoints
    ///    that come back) and start delivering.
    /// 3. The new generation is swapped in; the old one's workers are stopped (its
    ///    in-flight requests abandoned).
    ///
    /// Delivery stays at-least-once: an event both generations hold may be sent twice
    /// (same delivery id); one the old generation took in after step 2 and did not
    /// deliver before it stopped stays in the store, delivered after the next restart or
    /// reload. On an error (the store cannot be read) nothing changes.
    pub async fn reload(
        &self,
        endpoints: Vec<WebhookConfig>,
        durable: Option<Arc<Durable>>,
    ) -> Result<(), String> {
        let old = self.shared.current.load_full();
        if let Some(old) = &old {
            if let (Some(durable), Some(ticket)) = (&durable, old.outbox.commit_staged()) {
                if durable.wait(ticket).await.is_err() {
                    return Err("writing the staged webhook outbox events failed".into());
                }
            }
        }
        let new = Inner::start(endpoints, durable, self.shared.ids.clone())?;
        self.shared.current.store(new.map(Arc::new));
        if let Some(old) = old {
            // What it staged since goes with the next commit (the outbox stays a record
            // source until the last clone of it is gone).
            old.bridge.shutdown().await;
        }
        Ok(())
    }

    /// Whether any endpoint takes events of this kind (before topic and gid filters).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.shared
            .current
            .load()
            .as_ref()
            .is_some_and(|inner| !inner.wanted[kind_index(kind)].is_empty())
    }
}

impl Inner {
    /// The endpoints (by index) that take this event: its kind, then topic and gid
    /// filters, then room — an endpoint whose full outbox refuses every new event
    /// (`drop_new`) counts it dropped here, before anything of it is built or staged.
    fn targets<'a>(
        &'a self,
        kind: EventKind,
        scope: Scope<'a>,
    ) -> impl Iterator<Item = usize> + 'a {
        let configs = self.bridge.endpoints();
        self.wanted[kind_index(kind)]
            .iter()
            .copied()
            .filter(move |&i| configs[i].accepts(kind, scope.topic, scope.gid))
            .filter(move |&i| !self.bridge.refuses(i))
    }

    /// Recovers the outboxes of `endpoints` and starts their workers; `None` without
    /// endpoints.
    fn start(
        endpoints: Vec<WebhookConfig>,
        durable: Option<Arc<Durable>>,
        ids: Arc<Ids>,
    ) -> Result<Option<Inner>, String> {
        if endpoints.is_empty() {
            return Ok(None);
        }
        let keys: Vec<u64> = endpoints.iter().map(|e| e.endpoint_key()).collect();
        let recovered = DurableOutbox::recover(durable, &keys, ids.clone())?;
        ids.advance_past(recovered.last_id);
        let outbox = Arc::new(recovered.outbox);
        outbox.attach();
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
        Ok(Some(Inner {
            bridge,
            outbox,
            ids,
            wanted,
        }))
    }
}

impl Events {
    /// Emits one event: `fields` writes its kind's own fields (called only if an endpoint
    /// takes it); `payload`, if any, is added per endpoint in its `payload_encoding`
    /// (`payload` and `encoding` fields). `awaited`: the caller will wait for the ticket
    /// before acknowledging what the event describes.
    pub fn emit(
        &self,
        kind: EventKind,
        scope: Scope<'_>,
        awaited: bool,
        payload: Option<&[u8]>,
        fields: impl FnOnce(&mut Fields),
    ) -> Option<Ticket> {
        let current = self.shared.current.load();
        let inner = current.as_ref()?;
        let configs = inner.bridge.endpoints();
        let mut targets = inner.targets(kind, scope).peekable();
        targets.peek()?;
        let id = inner.ids.next();
        let created_ms = now_ms();
        let mut head = head(kind, id, created_ms, payload.map_or(0, |p| p.len() * 4 / 3));
        fields(&mut head);
        let mut ticket = None;
        while let Some(index) = targets.next() {
            let body = if targets.peek().is_some() {
                Fields {
                    body: head.body.clone(),
                }
            } else {
                std::mem::replace(&mut head, Fields { body: Vec::new() })
            };
            let mut event = Event {
                id,
                kind,
                created_ms,
                body: Body::Json(finish(body, payload, &configs[index]).into()),
            };
            // Stored (staged, with its ticket) before the bridge may deliver and remove it;
            // the body names its id already, so it keeps it.
            ticket = ticket.max(inner.outbox.add(index, &mut event, awaited, false));
            inner.bridge.enqueue(index, event);
        }
        ticket
    }

    /// Emits a `message.publish` event: `message` (called only if an endpoint takes it)
    /// builds one [`MessageEvent`], shared by every endpoint it goes to and rendered to JSON
    /// by the bridge when it is sent, so publishing costs no rendering (and a message a dead
    /// endpoint drops unsent is never rendered). `awaited` as for [`Events::emit`].
    pub fn message_publish(
        &self,
        scope: Scope<'_>,
        awaited: bool,
        message: impl FnOnce() -> MessageEvent,
    ) -> Option<Ticket> {
        let kind = EventKind::MessagePublish;
        let current = self.shared.current.load();
        let inner = current.as_ref()?;
        let mut targets = inner.targets(kind, scope).peekable();
        targets.peek()?;
        let created_ms = now_ms();
        let message = Arc::new(message());
        let mut ticket = None;
        for index in targets {
            let mut event = Event {
                // Given by the outbox: an id of its record's block (so each endpoint's
                // copy has its own delivery id).
                id: 0,
                kind,
                created_ms,
                body: Body::Message(Arc::clone(&message)),
            };
            // Stored (staged, with its ticket) before the bridge may deliver and remove it.
            ticket = ticket.max(inner.outbox.add(index, &mut event, awaited, true));
            inner.bridge.enqueue(index, event);
        }
        ticket
    }

    /// The endpoints in force, in configuration order.
    pub fn endpoints(&self) -> Vec<WebhookConfig> {
        self.shared
            .current
            .load()
            .as_ref()
            .map_or_else(Vec::new, |inner| inner.bridge.endpoints().to_vec())
    }

    /// Per endpoint in force; a reload starts the counters afresh.
    pub fn stats(&self) -> Vec<EndpointStats> {
        self.shared
            .current
            .load()
            .as_ref()
            .map_or_else(Vec::new, |inner| inner.bridge.stats())
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, String> {
        let current = self.shared.current.load_full();
        let Some(inner) = current else {
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
        let current = self.shared.current.load();
        let inner = current.as_ref()?;
        let mut event = letter.event;
        // A message event renders its `ts` from `created_ms`, which the retry renews (its
        // fresh age): render it now, so the body sent again is the one listed, `ts` the
        // time of the message.
        if let (Body::Message(_), Some(config)) =
            (&event.body, inner.bridge.endpoints().get(letter.endpoint))
        {
            event.body = Body::Json(event.render(config));
        }
        let (event, ticket) = inner.outbox.revive(letter.endpoint, event)?;
        inner.bridge.requeue(letter.endpoint, event);
        ticket
    }

    /// Asks for a commit of events staged that nobody waits for; run every
    /// [`FLUSH_INTERVAL`] for the broker's life (any other commit takes them too).
    pub async fn flush_periodically(self) {
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tick.tick().await;
            if let Some(inner) = self.shared.current.load().as_ref() {
                inner.outbox.commit_lazily();
            }
        }
    }

    /// Stops the delivery workers; what is staged goes with the store's last commit.
    pub async fn shutdown(&self) {
        if let Some(inner) = self.shared.current.load_full() {
            inner.bridge.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rookery_bridge::{MessageGroup, PayloadEncoding};

    /// A `message.publish` body as `emit` rendered it before messages were rendered by the
    /// bridge: the fields `Router::publish_event` wrote, then the payload.
    fn rendered_by_emit(
        id: u64,
        created_ms: u64,
        message: &MessageEvent,
        config: &WebhookConfig,
    ) -> Vec<u8> {
        let mut f = head(EventKind::MessagePublish, id, created_ms, 0);
        f.put("topic", std::str::from_utf8(&message.topic).unwrap());
        f.put("qos", message.qos);
        f.put("retain", message.retain);
        f.put("client_id", message.client_id.as_deref());
        f.put("username", message.username.as_deref());
        if let Some(g) = &message.group {
            f.put("gid", u32::try_from(g.gid).unwrap());
            f.put("type", g.message_type);
            f.put("live", g.live);
        }
        finish(f, Some(&message.payload), config)
    }

    #[test]
    fn message_events_render_as_emit_did() {
        let payloads: [&'static [u8]; 4] = [
            b"plain text",
            "\u{e9}sc\"ap\\ed\n\u{1}".as_bytes(),
            &[0xff, 0xfe, 0x00, 0x80],
            b"",
        ];
        let groups = [
            None,
            Some(MessageGroup {
                gid: 42,
                message_type: 7,
                live: false,
            }),
            Some(MessageGroup {
                gid: u64::from(u32::MAX),
                message_type: u32::MAX,
                live: true,
            }),
        ];
        let mut checked = 0;
        for payload in payloads {
            for group in groups {
                for (client_id, username) in [
                    (Some("client-1"), Some("alice@example")),
                    (None, None),
                    (Some("c\"q"), None),
                ] {
                    let message = MessageEvent {
                        topic: Bytes::from_static("sensors/\u{fc}/\"t\"".as_bytes()),
                        qos: 2,
                        retain: group.is_none(),
                        client_id: client_id.map(Arc::from),
                        username: username.map(Arc::from),
                        group,
                        payload: Bytes::from_static(payload),
                    };
                    let event = Event {
                        id: 0xdead_beef,
                        kind: EventKind::MessagePublish,
                        created_ms: 1_712_345_678_901,
                        body: Body::Message(Arc::new(message.clone())),
                    };
                    for encoding in [
                        PayloadEncoding::Auto,
                        PayloadEncoding::Utf8,
                        PayloadEncoding::Base64,
                    ] {
                        let mut config = WebhookConfig::new("http://h/x");
                        config.payload_encoding = encoding;
                        let old_bytes =
                            rendered_by_emit(event.id, event.created_ms, &message, &config);
                        let new_bytes = event.render(&config);
                        let old: serde_json::Value = serde_json::from_slice(&old_bytes).unwrap();
                        let new: serde_json::Value = serde_json::from_slice(&new_bytes).unwrap();
                        assert_eq!(new, old, "{encoding:?} {group:?} {payload:?}");
                        // The same bytes, even: receivers see no change at all.
                        assert_eq!(new_bytes, old_bytes);
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 4 * 3 * 3 * 3);
    }
}
