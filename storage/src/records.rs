//! Plain records that cross the storage boundary.

use bytes::Bytes;

/// A message as stored: enough to deliver it again exactly as it was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// MQTT 5 properties to pass on (user properties, content type, ...), opaque here:
    /// the broker encodes them in the MQTT 5 property wire format.
    pub properties: Bytes,
    /// Client id of the publisher (for no-local).
    pub publisher: String,
    /// Milliseconds since the Unix epoch when the broker received the message.
    pub received_at_ms: u64,
    /// Message Expiry Interval in seconds, if the publisher set one.
    pub expiry_interval: Option<u32>,
}

impl StoredMessage {
    /// The message in the store's own encoding, for records the broker keeps in an
    /// opaque space (a round-robin group's queue).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode_message(self)
    }

    pub fn from_bytes(bytes: &[u8]) -> crate::StorageResult<StoredMessage> {
        crate::codec::decode_message(bytes)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub client_id: String,
    pub subscriptions: Vec<StoredSubscription>,
    /// Session Expiry Interval in seconds; `u32::MAX` means never.
    pub expiry_interval: u32,
    /// Milliseconds since the Unix epoch when the client disconnected (0 while connected).
    pub disconnected_at_ms: u64,
    /// The will of the current or last connection: kept while the client is connected
    /// (a crash ends the connection without DISCONNECT, so the will is due after a
    /// restart) and while its will delay runs.
    pub will: Option<StoredMessage>,
    /// The will's retain flag.
    pub will_retain: bool,
    /// Will Delay Interval in seconds.
    pub will_delay: u32,
    /// The username the will's connection logged in with: the identity its publication
    /// is checked (group rules, ACL file) and recorded under.
    pub will_sender: Option<String>,
}
