//! A message as it travels through the broker, and its encode-once cache.
//!
//! The router turns an incoming PUBLISH into one `Arc<Message>` shared by every delivery.
//! The wire bytes of a PUBLISH depend only on the protocol family (3.x or 5), the QoS and
//! retain flag the subscriber gets, and the subscription identifiers; for deliveries
//! without subscription identifiers the bytes are encoded once per form and shared.
//! QoS 1/2 forms are encoded with packet identifier 0, and the writer patches the
//! identifier (and DUP) into its own copy.

use crate::codec::{self, MqttStr, Properties, ProtocolVersion, Publish, QoS};
use bytes::{Bytes, BytesMut};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

pub struct Message {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties passed through to subscribers (topic alias and subscription identifiers
    /// removed; they are per-connection).
    pub properties: Properties,
    /// Client id of the publisher, for no-local [MQTT-3.8.3-3].
    pub publisher: Arc<str>,
    /// The publishing user's address (username), if any: group history's `from`.
    pub sender: Option<Arc<str>>,
    /// Routed again (round-robin failover, or out of a group's queue): not a new message
    /// for the group's history.
    pub rerouted: bool,
    /// For a group message: the directory generation its routing was decided under (0:
    /// none). Sent later under the same generation, it needs no second check.
    pub directory_generation: u64,
    pub received_at: Instant,
    /// When the message expires, from the Message Expiry Interval [MQTT-3.3.2-5].
    pub expires_at: Option<Instant>,
    /// [family (0 = 3.x, 1 = 5)][qos][retain]
    encoded: [[[OnceLock<Bytes>; 2]; 3]; 2],
}

impl Message {
    pub fn new(publish: Publish, publisher: Arc<str>) -> Message {
        let received_at = Instant::now();
        let mut properties = publish.properties;
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        let expires_at = properties
            .message_expiry_interval
            .map(|secs| received_at + std::time::Duration::from_secs(u64::from(secs)));
        Message {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos,
            retain: publish.retain,
            properties,
            publisher,
            sender: None,
            rerouted: false,
            directory_generation: 0,
            received_at,
            expires_at,
            encoded: Default::default(),
        }
    }

    /// A copy to route again (round-robin failover, a group's queue).
    pub fn rerouted(&self) -> Message {
        let mut copy = Message::new(
            self.to_publish(self.qos, self.retain, &[]),
            self.publisher.clone(),
        );
        copy.expires_at = self.expires_at;
        copy.received_at = self.received_at;
        copy.sender = self.sender.clone();
        copy.rerouted = true;
        copy
    }

    /// The storage record of this message.
    pub fn to_stored(&self) -> rookery_storage::StoredMessage {
        let now_ms = unix_millis();
        rookery_storage::StoredMessage {
            topic: self.topic.to_string(),
            payload: self.payload.clone(),
            qos: self.qos as u8,
            properties: encode_properties(&self.properties),
            publisher: self.publisher.to_string(),
            received_at_ms: now_ms.saturating_sub(self.received_at.elapsed().as_millis() as u64),
            expiry_interval: self.properties.message_expiry_interval,
        }
    }

    /// Rebuilds a message from storage; `None` if the record does not decode. The time
    /// it already spent waiting counts against its expiry.
    pub fn from_stored(stored: rookery_storage::StoredMessage) -> Option<Message> {
        let properties = decode_properties(&stored.properties)?;
        let waited =
            std::time::Duration::from_millis(unix_millis().saturating_sub(stored.received_at_ms));
        let now = Instant::now();
        let received_at = now.checked_sub(waited).unwrap_or(now);
        let expires_at = stored
            .expiry_interval
            .map(|secs| received_at + std::time::Duration::from_secs(u64::from(secs)));
        Some(Message {
            topic: MqttStr::from(stored.topic),
            payload: stored.payload,
            qos: QoS::from_u8(stored.qos)?,
            retain: true,
            properties,
            publisher: Arc::from(stored.publisher),
            sender: None,
            rerouted: false,
            directory_generation: 0,
            received_at,
            expires_at,
            encoded: Default::default(),
        })
    }

    /// Gives the message memory of its own: its topic, payload and properties stop being
    /// slices of the publisher's read buffer. Done once per message (not per subscriber)
    /// when it is retained or has to wait in a queue, so that waiting messages keep only
    /// their own bytes alive.
    pub fn detach_from_read_buffer(&mut self) {
        self.topic = MqttStr::from(self.topic.as_str());
        self.payload = Bytes::copy_from_slice(&self.payload);
        self.properties.detach_from_read_buffer();
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Approximate bytes this message holds, for queue accounting.
    pub fn weight(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    /// The PUBLISH this message becomes for one subscriber.
    pub fn to_publish(&self, qos: QoS, retain: bool, subscription_ids: &[u32]) -> Publish {
        let mut properties = self.properties.clone();
        properties.subscription_identifiers = subscription_ids.to_vec();
        if let Some(expires_at) = self.expires_at {
            // The forwarded interval is what remains of it [MQTT-3.3.2-6].
            let left = expires_at.saturating_duration_since(Instant::now());
            properties.message_expiry_interval = Some(left.as_secs().max(1) as u32);
        }
        Publish {
            dup: false,
            qos,
            retain,
            topic: self.topic.clone(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties,
            payload: self.payload.clone(),
        }
    }

    /// The encoded PUBLISH for a subscriber without subscription identifiers, shared by
    /// every such subscriber. Messages with an expiry are not cached: the interval left
    /// differs per delivery.
    pub fn encoded(&self, version: ProtocolVersion, qos: QoS, retain: bool) -> Option<&Bytes> {
        if self.expires_at.is_some() {
            return None;
        }
        let family = usize::from(version.is_v5());
        let slot = &self.encoded[family][qos as usize][usize::from(retain)];
        Some(slot.get_or_init(|| {
            let publish = self.to_publish(qos, retain, &[]);
            let mut buf = BytesMut::with_capacity(codec::encoded_len(
                &codec::Packet::Publish(publish.clone()),
                version,
            ));
            codec::encode::encode_publish(&publish, version, &mut buf);
            buf.freeze()
        }))
    }
}

/// Offset of the packet identifier in an encoded PUBLISH with QoS > 0: after the fixed
/// header (1 byte + variable length) and the topic (2-byte length + bytes).
pub fn packet_id_offset(encoded: &[u8]) -> Option<usize> {
    let mut index = 1;
    loop {
        let byte = *encoded.get(index)?;
        index += 1;
        if byte & 0x80 == 0 {
            break;
        }
        if index > 5 {
            return None;
        }
    }
    let topic_len = usize::from(u16::from_be_bytes([
        *encoded.get(index)?,
        *encoded.get(index + 1)?,
    ]));
    let offset = index + 2 + topic_len;
    (offset + 2 <= encoded.len()).then_some(offset)
}

/// Encodes properties for storage: as an MQTT 5 PUBLISH with an empty topic and payload,
/// so the stored form is the standard property wire format, read back by the codec.
pub fn encode_properties(properties: &Properties) -> Bytes {
    if properties.is_empty() {
        return Bytes::new();
    }
    let carrier = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: MqttStr::default(),
        packet_id: 0,
        properties: properties.clone(),
        payload: Bytes::new(),
    };
    let mut buf = BytesMut::new();
    codec::encode::encode_publish(&carrier, ProtocolVersion::V5, &mut buf);
    buf.freeze()
}

/// The inverse of [`encode_properties`]; `None` if the stored bytes are not valid.
pub fn decode_properties(stored: &Bytes) -> Option<Properties> {
    if stored.is_empty() {
        return Some(Properties::default());
    }
    let mut buf = BytesMut::from(stored.as_ref());
    match codec::decode_packet(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(codec::Packet::Publish(publish))) => Some(publish.properties),
        _ => None,
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
