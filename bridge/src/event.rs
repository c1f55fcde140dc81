//! What the bridge delivers: one rendered event for one endpoint, and its compact storage form.

use bytes::Bytes;

/// The kinds of event an endpoint can receive (SPEC §9). The names are the contract.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    MessagePublish,
    MessageDropped,
    ClientConnected,
    ClientDisconnected,
    SessionSubscribed,
    SessionUnsubscribed,
    GroupCreated,
    GroupUpdated,
    GroupDeleted,
    GroupMembers,
    UserCreated,
    UserDeleted,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::MessagePublish,
        EventKind::MessageDropped,
        EventKind::ClientConnected,
        EventKind::ClientDisconnected,
        EventKind::SessionSubscribed,
        EventKind::SessionUnsubscribed,
        EventKind::GroupCreated,
        EventKind::GroupUpdated,
        EventKind::GroupDeleted,
        EventKind::GroupMembers,
        EventKind::UserCreated,
        EventKind::UserDeleted,
    ];

    /// The name used in configuration, in `X-Rookery-Event` and in the body's `"event"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessagePublish => "message.publish",
            EventKind::MessageDropped => "message.dropped",
            EventKind::ClientConnected => "client.connected",
            EventKind::ClientDisconnected => "client.disconnected",
            EventKind::SessionSubscribed => "session.subscribed",
            EventKind::SessionUnsubscribed => "session.unsubscribed",
            EventKind::GroupCreated => "group.created",
            EventKind::GroupUpdated => "group.updated",
            EventKind::GroupDeleted => "group.deleted",
            EventKind::GroupMembers => "group.members",
            EventKind::UserCreated => "user.created",
            EventKind::UserDeleted => "user.deleted",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// Message events are the ones a topic filter applies to.
    pub fn is_message(self) -> bool {
        matches!(self, EventKind::MessagePublish | EventKind::MessageDropped)
    }

    /// The byte stored for this kind. Written out (not the position in `ALL`) so reordering
    /// the enum can never change what stored events mean.
    fn storage_code(self) -> u8 {
        match self {
            EventKind::MessagePublish => 1,
            EventKind::MessageDropped => 2,
            EventKind::ClientConnected => 3,
            EventKind::ClientDisconnected => 4,
            EventKind::SessionSubscribed => 5,
            EventKind::SessionUnsubscribed => 6,
            EventKind::GroupCreated => 7,
            EventKind::GroupUpdated => 8,
            EventKind::GroupDeleted => 9,
            EventKind::GroupMembers => 10,
            EventKind::UserCreated => 11,
            EventKind::UserDeleted => 12,
        }
    }

    fn from_storage_code(code: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.storage_code() == code)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event for one endpoint. `body` is the complete rendered JSON object of the event (the
/// broker renders it; it already contains `"event"`, `"delivery"`, `"ts"` and the kind's
/// fields). The bridge sends `body` as it is, so the bytes the signature covers are the bytes
/// the broker stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unique per endpoint; it is the delivery id receivers deduplicate by.
    pub id: u64,
    pub kind: EventKind,
    /// When the event happened, in milliseconds since the Unix epoch. Its age decides when
    /// it becomes a dead letter, and delivery latency is measured from it.
    pub created_ms: u64,
    pub body: Bytes,
}

/// Version byte of the storage form; bump it when the layout changes.
const STORAGE_VERSION: u8 = 1;
/// version (1) + id (8) + kind (1) + created_ms (8); the body is the rest.
const HEADER_LEN: usize = 18;

impl Event {
    /// The storage form: `[version=1][id u64 BE][kind u8][created_ms u64 BE][body...]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.body.len());
        self.encode_into(&mut out);
        out
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(STORAGE_VERSION);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.kind.storage_code());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.body);
    }

    /// Appends `[length u32 big-endian][encode()]` to `out`: how stores frame events one
    /// after another in a record, without an intermediate buffer.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let length = (HEADER_LEN + self.body.len()) as u32;
        out.extend_from_slice(&length.to_be_bytes());
        self.encode_into(out);
    }

    /// Reads the storage form back; `None` for anything that is not one (never panics).
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < HEADER_LEN || bytes[0] != STORAGE_VERSION {
            return None;
        }
        let id = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let kind = EventKind::from_storage_code(bytes[9])?;
        let created_ms = u64::from_be_bytes(bytes[10..18].try_into().ok()?);
        Some(Event {
            id,
            kind,
            created_ms,
            body: Bytes::copy_from_slice(&bytes[HEADER_LEN..]),
        })
    }
}

/// The delivery id of an event as sent in `X-Rookery-Delivery` and in the body's
/// `"delivery"`: 16 lowercase hex digits, so ids sort as text in the order they were made.
pub fn delivery_id_string(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_spec_names_and_parse_back() {
        let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "message.publish",
                "message.dropped",
                "client.connected",
                "client.disconnected",
                "session.subscribed",
                "session.unsubscribed",
                "group.created",
                "group.updated",
                "group.deleted",
                "group.members",
                "user.created",
                "user.deleted",
            ]
        );
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("message"), None);
        assert_eq!(EventKind::parse("Message.Publish"), None);
        let message_kinds: Vec<EventKind> = EventKind::ALL
            .into_iter()
            .filter(|k| k.is_message())
            .collect();
        assert_eq!(
            message_kinds,
            [EventKind::MessagePublish, EventKind::MessageDropped]
        );
    }

    #[test]
    fn storage_codes_are_distinct() {
        let mut codes: Vec<u8> = EventKind::ALL.iter().map(|k| k.storage_code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), EventKind::ALL.len());
    }

    #[test]
    fn encode_decode_round_trip() {
        for (index, kind) in EventKind::ALL.into_iter().enumerate() {
            let event = Event {
                id: u64::MAX - index as u64,
                kind,
                created_ms: 1_700_000_000_000 + index as u64,
                body: Bytes::from(format!("{{\"event\":\"{kind}\",\"n\":{index}}}")),
            };
            assert_eq!(Event::decode(&event.encode()), Some(event));
        }
        let empty_body = Event {
            id: 0,
            kind: EventKind::UserDeleted,
            created_ms: 0,
            body: Bytes::new(),
        };
        assert_eq!(Event::decode(&empty_body.encode()), Some(empty_body));
    }

    #[test]
    fn garbage_does_not_decode() {
        let good = Event {
            id: 7,
            kind: EventKind::GroupMembers,
            created_ms: 9,
            body: Bytes::from_static(b"{}"),
        }
        .encode();
        assert!(Event::decode(&[]).is_none());
        assert!(Event::decode(&good[..HEADER_LEN - 1]).is_none());
        let mut wrong_version = good.clone();
        wrong_version[0] = 2;
        assert!(Event::decode(&wrong_version).is_none());
        let mut wrong_kind = good.clone();
        wrong_kind[9] = 0;
        assert!(Event::decode(&wrong_kind).is_none());
        wrong_kind[9] = 200;
        assert!(Event::decode(&wrong_kind).is_none());
        // Every prefix and a spread of byte patterns: decode must answer, never panic.
        for len in 0..good.len() {
            let _ = Event::decode(&good[..len]);
        }
        for seed in 0u8..=255 {
            let noise: Vec<u8> = (0..(seed as usize % 40))
                .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8))
                .collect();
            let _ = Event::decode(&noise);
        }
    }

    #[test]
    fn delivery_ids_are_sixteen_hex_digits() {
        assert_eq!(delivery_id_string(0), "0000000000000000");
        assert_eq!(delivery_id_string(255), "00000000000000ff");
        assert_eq!(delivery_id_string(u64::MAX), "ffffffffffffffff");
    }
}
