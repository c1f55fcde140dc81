//! The events of clients, sessions and drops, each a one-line call where it happens.
//! Their JSON schemas are documented in the README ("Webhooks").

use super::{Events, Scope};
use crate::durable::Ticket;
use rookery_bridge::EventKind;
use serde_json::{json, Map, Value};

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A client as events name it.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

impl Events {
    /// An event about one client: its id and username, then `fields` (built only if an
    /// endpoint takes the kind).
    fn client_event(&self, kind: EventKind, client: Client<'_>, fields: impl FnOnce() -> Value) {
        if !self.wants(kind) {
            return;
        }
        self.emit(kind, Scope::default(), false, None, |f| {
            f.put("client_id", client.client_id);
            f.put("username", client.username);
            f.put_all(object(fields()));
        });
    }

    pub fn client_connected(
        &self,
        client: Client<'_>,
        protocol: u8,
        clean_start: bool,
        keep_alive: u16,
        peer: std::net::SocketAddr,
    ) {
        self.client_event(EventKind::ClientConnected, client, || {
            json!({
                "protocol": protocol,
                "clean_start": clean_start,
                "keep_alive": keep_alive,
                "peer": peer.to_string(),
            })
        });
    }

    /// `reason`: `normal` and `normal_with_will` (the client's DISCONNECT, with its reason
    /// code), `lost` (socket closed or keep-alive), `protocol_error` (with the code the
    /// broker sent), `takeover` (0x8E: another connection took the client id), `shutdown`.
    pub fn client_disconnected(&self, client: Client<'_>, reason: &str, reason_code: Option<u8>) {
        self.client_event(
            EventKind::ClientDisconnected,
            client,
            || json!({"reason": reason, "reason_code": reason_code}),
        );
    }

    pub fn subscribed(&self, client: Client<'_>, filter: &str, qos: u8) {
        self.client_event(
            EventKind::SessionSubscribed,
            client,
            || json!({"filter": filter, "qos": qos}),
        );
    }

    pub fn unsubscribed(&self, client: Client<'_>, filter: &str) {
        self.client_event(
            EventKind::SessionUnsubscribed,
            client,
            || json!({"filter": filter}),
        );
    }

    /// A message that will not reach `client_id` (or anyone, without one); `topic` is
    /// `None` for a stored entry evicted unread from a full disk queue. `reason`:
    /// `queue_full`, `expired`, `no_receiver` (round-robin group with nobody eligible),
    /// `no_store`, `storage_full`, `too_large`.
    pub fn dropped(&self, topic: Option<&str>, client_id: Option<&str>, reason: &str) {
        if !self.wants(EventKind::MessageDropped) {
            return;
        }
        let gid = topic
            .and_then(crate::groups::parse_topic)
            .and_then(|t| match t {
                Ok(
                    crate::groups::GroupTopic::Message { gid, .. }
                    | crate::groups::GroupTopic::Live { gid },
                ) => Some(u64::from(gid)),
                _ => None,
            });
        let scope = Scope { topic, gid };
        self.emit(EventKind::MessageDropped, scope, false, None, |f| {
            f.put("topic", topic);
            f.put("gid", gid);
            f.put("client_id", client_id);
            f.put("reason", reason);
        });
    }

    /// A management API change (SPEC §8): `group.created`, `group.updated`,
    /// `group.deleted`, `group.members`, `user.created`, `user.deleted`. The API waits for
    /// the ticket before answering.
    pub fn api_change(
        &self,
        kind: EventKind,
        gid: Option<u64>,
        fields: Map<String, Value>,
    ) -> Option<Ticket> {
        if !self.wants(kind) {
            return None;
        }
        let scope = Scope { topic: None, gid };
        self.emit(kind, scope, true, None, |f| f.put_all(fields))
    }
}
