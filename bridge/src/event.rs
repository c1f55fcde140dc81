//! What the bridge delivers: one event for one endpoint (JSON rendered by the broker, or a
//! published message rendered when it is sent), and its compact storage form.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::WebhookConfig;

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

/// One event for one endpoint. Its [`Body`] is either JSON the broker rendered already, or a
/// published message kept in its compact form ([`MessageEvent`]) and rendered to JSON only
/// when it is sent ([`Event::render`]), with the endpoint's `payload_encoding`. A message
/// event that is dropped unsent (a dead endpoint whose outbox overflows) is never rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unique per endpoint; it is the delivery id receivers deduplicate by.
    pub id: u64,
    pub kind: EventKind,
    /// When the event happened, in milliseconds since the Unix epoch. Its age decides when
    /// it becomes a dead letter, and delivery latency is measured from it.
    pub created_ms: u64,
    pub body: Body,
}

/// What an event says, in one of two forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// The complete JSON object of the event, rendered by the broker (it contains
    /// `"event"`, `"delivery"`, `"ts"` and the kind's fields); sent as it is.
    Json(Bytes),
    /// A published message; one `Arc` is shared by every endpoint the event goes to, and
    /// each renders it with its own payload encoding when it sends it.
    Message(Arc<MessageEvent>),
}

impl From<Bytes> for Body {
    fn from(json: Bytes) -> Body {
        Body::Json(json)
    }
}

impl From<Vec<u8>> for Body {
    fn from(json: Vec<u8>) -> Body {
        Body::Json(json.into())
    }
}

/// What the body of a `message.publish` event says, held as the broker has it (shared
/// buffers and `Arc`s, nothing copied) until the bridge renders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageEvent {
    /// The topic, UTF-8 (an MQTT topic name). Bytes that are not UTF-8 are rendered lossily.
    pub topic: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// The publisher's client id; `None` for a message without one (published by the broker).
    pub client_id: Option<Arc<str>>,
    pub username: Option<Arc<str>>,
    /// For a message to a group topic.
    pub group: Option<MessageGroup>,
    pub payload: Bytes,
}

/// The group part of a `message.publish` event: `"gid"`, `"type"` and `"live"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageGroup {
    pub gid: u64,
    pub message_type: u32,
    pub live: bool,
}

/// Version byte of the storage form of a [`Body::Json`] event.
const STORAGE_JSON: u8 = 1;
/// Version byte of the storage form of a [`Body::Message`] event.
const STORAGE_MESSAGE: u8 = 2;
/// version (1) + id (8) + kind (1) + created_ms (8); the body is the rest.
const HEADER_LEN: usize = 18;

/// Flags byte of a stored [`MessageEvent`].
const FLAG_RETAIN: u8 = 1;
const FLAG_CLIENT_ID: u8 = 2;
const FLAG_USERNAME: u8 = 4;
const FLAG_GROUP: u8 = 8;
const FLAG_LIVE: u8 = 16;
const KNOWN_FLAGS: u8 = FLAG_RETAIN | FLAG_CLIENT_ID | FLAG_USERNAME | FLAG_GROUP | FLAG_LIVE;

/// The rendered size of a message event without its strings and payload (a 13-digit `ts`,
/// `null` ids, `"encoding":"base64"`), and at most what a group adds.
const MESSAGE_OVERHEAD: usize = 176;
const GROUP_OVERHEAD: usize = 48;

impl Event {
    /// The JSON object sent for this event to an endpoint configured by `config` (whose
    /// `payload_encoding` decides how a message's payload is written).
    pub fn render(&self, config: &WebhookConfig) -> Bytes {
        match &self.body {
            Body::Json(json) => json.clone(),
            Body::Message(message) => {
                let mut out = Vec::with_capacity(self.size());
                self.render_message(message, config, &mut out);
                out.into()
            }
        }
    }

    /// Appends [`Event::render`]'s bytes to `out`.
    pub fn render_into(&self, config: &WebhookConfig, out: &mut Vec<u8>) {
        match &self.body {
            Body::Json(json) => out.extend_from_slice(json),
            Body::Message(message) => self.render_message(message, config, out),
        }
    }

    fn render_message(&self, message: &MessageEvent, config: &WebhookConfig, out: &mut Vec<u8>) {
        // Writing into a Vec fails only for a value that cannot be JSON: none of these.
        fn field(out: &mut Vec<u8>, key: &str, value: impl serde::Serialize) {
            out.push(b',');
            let _ = serde_json::to_writer(&mut *out, key);
            out.push(b':');
            let _ = serde_json::to_writer(&mut *out, &value);
        }
        out.extend_from_slice(b"{\"event\":\"");
        out.extend_from_slice(self.kind.as_str().as_bytes());
        out.extend_from_slice(b"\",\"delivery\":\"");
        out.extend_from_slice(delivery_id_string(self.id).as_bytes());
        out.push(b'"');
        field(out, "ts", self.created_ms);
        field(out, "topic", &*String::from_utf8_lossy(&message.topic));
        field(out, "qos", message.qos);
        field(out, "retain", message.retain);
        field(out, "client_id", message.client_id.as_deref());
        field(out, "username", message.username.as_deref());
        if let Some(group) = &message.group {
            field(out, "gid", group.gid);
            field(out, "type", group.message_type);
            field(out, "live", group.live);
        }
        match config.payload_text(&message.payload) {
            Some(text) => {
                field(out, "payload", text);
                field(out, "encoding", "utf8");
            }
            None => {
                use base64::Engine;
                // Base64 needs no JSON escaping: encoded straight between the quotes.
                out.extend_from_slice(b",\"payload\":\"");
                let start = out.len();
                let encoded = base64::encoded_len(message.payload.len(), true).unwrap_or_default();
                out.resize(start + encoded, 0);
                let written = base64::engine::general_purpose::STANDARD
                    .encode_slice(&message.payload, &mut out[start..])
                    .unwrap_or_default();
                out.truncate(start + written);
                out.push(b'"');
                field(out, "encoding", "base64");
            }
        }
        out.push(b'}');
    }

    /// The size the in-memory outbox accounts for this event (`outbox_max_bytes`): the
    /// body's length for JSON; for a message, an estimate of its rendering (overhead, the
    /// strings, the payload as base64). It depends only on the event, so it is the same
    /// whenever it is asked.
    pub fn size(&self) -> usize {
        match &self.body {
            Body::Json(json) => json.len(),
            Body::Message(message) => {
                MESSAGE_OVERHEAD
                    + message.topic.len()
                    + message.client_id.as_deref().map_or(0, str::len)
                    + message.username.as_deref().map_or(0, str::len)
                    + if message.group.is_some() {
                        GROUP_OVERHEAD
                    } else {
                        0
                    }
                    + message.payload.len().div_ceil(3) * 4
            }
        }
    }

    /// The storage form: `[version][id u64 BE][kind u8][created_ms u64 BE][body...]`.
    /// Version 1: the body is the JSON ([`Body::Json`]). Version 2 ([`Body::Message`]):
    /// `[flags u8][qos u8][topic][client_id]?[username]?[gid u64 BE][type u32 BE]?[payload]`,
    /// each string and the payload as `[length u32 BE][bytes]`; the flags say which optional
    /// parts are there (client id 2, username 4, group 8) and hold retain (1) and live (16).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.stored_body_len());
        self.encode_into(&mut out);
        out
    }

    /// What [`Event::encode`] writes after the header, for the buffer's capacity.
    fn stored_body_len(&self) -> usize {
        match &self.body {
            Body::Json(json) => json.len(),
            Body::Message(message) => {
                2 + 4
                    + message.topic.len()
                    + message.client_id.as_deref().map_or(0, |s| 4 + s.len())
                    + message.username.as_deref().map_or(0, |s| 4 + s.len())
                    + message.group.map_or(0, |_| 12)
                    + 4
                    + message.payload.len()
            }
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        fn chunk(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out.push(match self.body {
            Body::Json(_) => STORAGE_JSON,
            Body::Message(_) => STORAGE_MESSAGE,
        });
        out.extend_from_slice(&self.id.to_be_bytes());
        out.push(self.kind.storage_code());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        match &self.body {
            Body::Json(json) => out.extend_from_slice(json),
            Body::Message(message) => {
                let flag = |on: bool, flag: u8| if on { flag } else { 0 };
                out.push(
                    flag(message.retain, FLAG_RETAIN)
                        | flag(message.client_id.is_some(), FLAG_CLIENT_ID)
                        | flag(message.username.is_some(), FLAG_USERNAME)
                        | flag(message.group.is_some(), FLAG_GROUP)
                        | flag(message.group.is_some_and(|g| g.live), FLAG_LIVE),
                );
                out.push(message.qos);
                chunk(out, &message.topic);
                if let Some(client_id) = &message.client_id {
                    chunk(out, client_id.as_bytes());
                }
                if let Some(username) = &message.username {
                    chunk(out, username.as_bytes());
                }
                if let Some(group) = &message.group {
                    out.extend_from_slice(&group.gid.to_be_bytes());
                    out.extend_from_slice(&group.message_type.to_be_bytes());
                }
                chunk(out, &message.payload);
            }
        }
    }

    /// Appends `[length u32 big-endian][encode()]` to `out`: how stores frame events one
    /// after another in a record, without an intermediate buffer.
    pub fn encode_framed(&self, out: &mut Vec<u8>) {
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        self.encode_into(out);
        let length = (out.len() - length_at - 4) as u32;
        out[length_at..length_at + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// Reads the storage form back (either version); `None` for anything that is not one
    /// (never panics).
    pub fn decode(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let id = u64::from_be_bytes(bytes[1..9].try_into().ok()?);
        let kind = EventKind::from_storage_code(bytes[9])?;
        let created_ms = u64::from_be_bytes(bytes[10..18].try_into().ok()?);
        let rest = &bytes[HEADER_LEN..];
        let body = match bytes[0] {
            STORAGE_JSON => Body::Json(Bytes::copy_from_slice(rest)),
            STORAGE_MESSAGE => Body::Message(Arc::new(decode_message(rest)?)),
            _ => return None,
        };
        Some(Event {
            id,
            kind,
            created_ms,
            body,
        })
    }
}

/// The version 2 body ([`Event::encode`]); `None` unless it is exactly one.
fn decode_message(mut bytes: &[u8]) -> Option<MessageEvent> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(taken)
    }
    fn chunk<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
        let length = u32::from_be_bytes(take(bytes, 4)?.try_into().ok()?);
        take(bytes, usize::try_from(length).ok()?)
    }
    fn text(bytes: &mut &[u8]) -> Option<Arc<str>> {
        std::str::from_utf8(chunk(bytes)?).ok().map(Arc::from)
    }
    let [flags, qos] = *take(&mut bytes, 2)? else {
        return None;
    };
    if flags & !KNOWN_FLAGS != 0 || qos > 2 {
        return None;
    }
    let topic = chunk(&mut bytes)?;
    std::str::from_utf8(topic).ok()?;
    let topic = Bytes::copy_from_slice(topic);
    let client_id = if flags & FLAG_CLIENT_ID != 0 {
        Some(text(&mut bytes)?)
    } else {
        None
    };
    let username = if flags & FLAG_USERNAME != 0 {
        Some(text(&mut bytes)?)
    } else {
        None
    };
    let group = if flags & FLAG_GROUP != 0 {
        Some(MessageGroup {
            gid: u64::from_be_bytes(take(&mut bytes, 8)?.try_into().ok()?),
            message_type: u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?),
            live: flags & FLAG_LIVE != 0,
        })
    } else if flags & FLAG_LIVE != 0 {
        return None;
    } else {
        None
    };
    let payload = Bytes::copy_from_slice(chunk(&mut bytes)?);
    if !bytes.is_empty() {
        return None;
    }
    Some(MessageEvent {
        topic,
        qos,
        retain: flags & FLAG_RETAIN != 0,
        client_id,
        username,
        group,
        payload,
    })
}

/// The delivery id of an event as sent in `X-Rookery-Delivery` and in the body's
/// `"delivery"`: 16 lowercase hex digits, so ids sort as text in the order they were made.
pub fn delivery_id_string(id: u64) -> String {
    format!("{id:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PayloadEncoding;
    use serde_json::{json, Value};

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
                body: Bytes::from(format!("{{\"event\":\"{kind}\",\"n\":{index}}}")).into(),
            };
            assert_eq!(Event::decode(&event.encode()), Some(event));
        }
        let empty_body = Event {
            id: 0,
            kind: EventKind::UserDeleted,
            created_ms: 0,
            body: Bytes::new().into(),
        };
        assert_eq!(Event::decode(&empty_body.encode()), Some(empty_body));
    }

    #[test]
    fn garbage_does_not_decode() {
        let good = Event {
            id: 7,
            kind: EventKind::GroupMembers,
            created_ms: 9,
            body: Bytes::from_static(b"{}").into(),
        }
        .encode();
        assert!(Event::decode(&[]).is_none());
        assert!(Event::decode(&good[..HEADER_LEN - 1]).is_none());
        let mut wrong_version = good.clone();
        wrong_version[0] = 3;
        assert!(Event::decode(&wrong_version).is_none());
        wrong_version[0] = 0;
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

    fn message_event(group: Option<MessageGroup>, payload: &'static [u8]) -> Event {
        Event {
            id: 0x1234_abcd,
            kind: EventKind::MessagePublish,
            created_ms: 1_700_000_000_123,
            body: Body::Message(Arc::new(MessageEvent {
                topic: Bytes::from_static("a/\"quoted\"/ü\\".as_bytes()),
                qos: 1,
                retain: true,
                client_id: Some("pub-1".into()),
                username: None,
                group,
                payload: Bytes::from_static(payload),
            })),
        }
    }

    fn config(encoding: PayloadEncoding) -> WebhookConfig {
        let mut config = WebhookConfig::new("http://h/x");
        config.payload_encoding = encoding;
        config
    }

    const GROUP: MessageGroup = MessageGroup {
        gid: 77,
        message_type: 3,
        live: true,
    };

    #[test]
    fn message_renders_the_message_publish_object() {
        let rendered = |event: &Event, encoding| -> Value {
            serde_json::from_slice(&event.render(&config(encoding))).expect("valid JSON")
        };
        let plain = message_event(None, "héllo \"x\"\n".as_bytes());
        let expected = |payload: &str, encoding: &str| {
            json!({
                "event": "message.publish",
                "delivery": "000000001234abcd",
                "ts": 1_700_000_000_123u64,
                "topic": "a/\"quoted\"/ü\\",
                "qos": 1,
                "retain": true,
                "client_id": "pub-1",
                "username": null,
                "payload": payload,
                "encoding": encoding,
            })
        };
        assert_eq!(
            rendered(&plain, PayloadEncoding::Auto),
            expected("héllo \"x\"\n", "utf8")
        );
        assert_eq!(
            rendered(&plain, PayloadEncoding::Utf8),
            expected("héllo \"x\"\n", "utf8")
        );
        assert_eq!(
            rendered(&plain, PayloadEncoding::Base64),
            expected("aMOpbGxvICJ4Igo=", "base64")
        );
        // Not UTF-8: base64 whatever the endpoint prefers.
        let binary = message_event(None, &[0xff, 0x00, 0xfe]);
        for encoding in [
            PayloadEncoding::Auto,
            PayloadEncoding::Utf8,
            PayloadEncoding::Base64,
        ] {
            assert_eq!(rendered(&binary, encoding), expected("/wD+", "base64"));
        }
        let mut grouped = expected("/wD+", "base64");
        grouped["gid"] = json!(77);
        grouped["type"] = json!(3);
        grouped["live"] = json!(true);
        let group = message_event(Some(GROUP), &[0xff, 0x00, 0xfe]);
        assert_eq!(rendered(&group, PayloadEncoding::Auto), grouped);
        // The keys come in the documented order, the group's before the payload.
        let text = String::from_utf8(group.render(&config(PayloadEncoding::Auto)).to_vec())
            .expect("UTF-8");
        let at = |key: &str| text.find(&format!("\"{key}\":")).expect(key);
        assert!(at("event") < at("delivery") && at("delivery") < at("ts"));
        assert!(at("username") < at("gid") && at("live") < at("payload"));
        assert!(text.ends_with("\"encoding\":\"base64\"}"));
        // The empty payload in both encodings.
        let empty = message_event(None, b"");
        assert_eq!(
            rendered(&empty, PayloadEncoding::Auto),
            expected("", "utf8")
        );
        assert_eq!(
            rendered(&empty, PayloadEncoding::Base64),
            expected("", "base64")
        );
        // JSON bodies are sent as they are, and render_into appends the same bytes.
        let json_event = Event {
            id: 1,
            kind: EventKind::UserCreated,
            created_ms: 2,
            body: Bytes::from_static(b"{\"x\":1}").into(),
        };
        assert_eq!(
            &json_event.render(&config(PayloadEncoding::Auto))[..],
            b"{\"x\":1}"
        );
        let mut out = b"[".to_vec();
        group.render_into(&config(PayloadEncoding::Auto), &mut out);
        assert_eq!(&out[1..], &group.render(&config(PayloadEncoding::Auto))[..]);
    }

    #[test]
    fn size_is_exact_for_json_and_close_for_messages() {
        let json_event = Event {
            id: 1,
            kind: EventKind::UserCreated,
            created_ms: 2,
            body: Bytes::from_static(b"{\"x\":1}").into(),
        };
        assert_eq!(json_event.size(), 7);
        let big: &'static [u8] = Box::leak(vec![0x80u8; 3000].into_boxed_slice());
        for event in [
            message_event(None, b""),
            message_event(None, &[0xff; 10]),
            message_event(Some(GROUP), big),
        ] {
            let base64 = event.render(&config(PayloadEncoding::Base64)).len();
            let size = event.size();
            // Off by the topic's escapes and the group's digits at most.
            assert!(
                size.abs_diff(base64) <= 48,
                "estimate {size} vs rendered {base64}"
            );
        }
    }

    fn message_events() -> Vec<Event> {
        let mut events = vec![
            message_event(None, b"payload"),
            message_event(Some(GROUP), &[0xff, 0, 1]),
            message_event(
                Some(MessageGroup {
                    gid: u64::MAX,
                    message_type: u32::MAX,
                    live: false,
                }),
                b"",
            ),
        ];
        let mut bare = MessageEvent {
            topic: Bytes::new(),
            qos: 0,
            retain: false,
            client_id: None,
            username: Some("user@example".into()),
            group: None,
            payload: Bytes::new(),
        };
        events.push(Event {
            id: 0,
            kind: EventKind::MessagePublish,
            created_ms: 0,
            body: Body::Message(Arc::new(bare.clone())),
        });
        bare.username = None;
        bare.client_id = Some("".into());
        bare.qos = 2;
        events.push(Event {
            id: u64::MAX,
            kind: EventKind::MessagePublish,
            created_ms: u64::MAX,
            body: Body::Message(Arc::new(bare)),
        });
        events
    }

    #[test]
    fn message_encode_decode_round_trip() {
        for event in message_events() {
            let encoded = event.encode();
            assert_eq!(encoded[0], STORAGE_MESSAGE);
            assert_eq!(Event::decode(&encoded), Some(event.clone()));
            assert_eq!(encoded.len(), HEADER_LEN + event.stored_body_len());
        }
    }

    #[test]
    fn framed_events_follow_one_another() {
        let mut events = message_events();
        events.push(Event {
            id: 9,
            kind: EventKind::ClientConnected,
            created_ms: 10,
            body: Bytes::from_static(b"{\"a\":true}").into(),
        });
        let mut record = b"prefix".to_vec();
        for event in &events {
            event.encode_framed(&mut record);
        }
        let mut rest = &record[6..];
        let mut decoded = Vec::new();
        while !rest.is_empty() {
            let length = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            assert_eq!(&rest[4..4 + length], &events[decoded.len()].encode()[..]);
            decoded.push(Event::decode(&rest[4..4 + length]).expect("decodes"));
            rest = &rest[4 + length..];
        }
        assert_eq!(decoded, events);
    }

    #[test]
    fn json_records_of_version_one_still_decode() {
        // Written by an earlier version: [1][id][kind][created_ms][JSON].
        let mut stored = vec![1u8];
        stored.extend_from_slice(&5u64.to_be_bytes());
        stored.push(1);
        stored.extend_from_slice(&6u64.to_be_bytes());
        stored.extend_from_slice(b"{\"event\":\"message.publish\"}");
        let event = Event::decode(&stored).expect("decodes");
        assert_eq!(
            (event.id, event.kind, event.created_ms),
            (5, EventKind::MessagePublish, 6)
        );
        assert_eq!(
            event.body,
            Body::Json(Bytes::from_static(b"{\"event\":\"message.publish\"}"))
        );
        assert_eq!(event.encode(), stored);
    }

    #[test]
    fn broken_message_records_do_not_decode() {
        for event in message_events() {
            let good = event.encode();
            // Every proper prefix is missing part of a length-prefixed field.
            for len in 0..good.len() {
                assert!(Event::decode(&good[..len]).is_none(), "prefix {len}");
            }
            let mut trailing = good.clone();
            trailing.push(0);
            assert!(Event::decode(&trailing).is_none());
            // Flipping any single byte must not panic (it may still decode).
            for at in 0..good.len() {
                for bit in [0x01, 0x80, 0xff] {
                    let mut flipped = good.clone();
                    flipped[at] ^= bit;
                    let _ = Event::decode(&flipped);
                }
            }
        }
        let good = message_events()[1].encode();
        let mut bad_flags = good.clone();
        bad_flags[HEADER_LEN] |= 0x80;
        assert!(Event::decode(&bad_flags).is_none());
        let mut bad_qos = good.clone();
        bad_qos[HEADER_LEN + 1] = 3;
        assert!(Event::decode(&bad_qos).is_none());
        // A huge length prefix on the topic.
        let mut huge = good.clone();
        huge[HEADER_LEN + 2..HEADER_LEN + 6].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Event::decode(&huge).is_none());
        // A topic that is not UTF-8.
        let mut header = good[..HEADER_LEN].to_vec();
        header.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0, 0]);
        assert!(Event::decode(&header).is_none());
        header[HEADER_LEN + 6] = b'a';
        assert!(Event::decode(&header).is_some());
        // Noise after a version 2 header.
        for seed in 0u8..=255 {
            let mut noise = good[..HEADER_LEN].to_vec();
            noise.extend((0..(seed as usize % 64)).map(|i| seed.wrapping_mul(37) ^ (i as u8)));
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
