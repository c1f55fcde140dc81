//! The durable store the broker writes through: one `apply` per group commit.
//!
//! The broker's commit worker gathers the operations of every PUBLISH, SUBSCRIBE and
//! acknowledgement that arrived while the previous commit ran, hands them to `apply` as one
//! batch, then calls `flush` once (strict durability) and only then releases the
//! acknowledgements that waited for it. A batch is atomic: after a crash either all of it
//! or none of it is visible.
//!
//! Key space (sled trees; every key is prefixed so that one session's records are
//! contiguous and can be removed or scanned by prefix):
//!
//! | tree          | key                                   | value                       |
//! |---------------|---------------------------------------|-----------------------------|
//! | `meta`        | `schema_version`, `next_message_id`   | u64 big-endian              |
//! | `retained`    | topic (UTF-8)                         | `StoredMessage`             |
//! | `messages`    | message id (u64 BE)                   | refcount u32 + `StoredMessage` |
//! | `sessions`    | client id                             | `StoredSession`             |
//! | `queues`      | client id, 0x00, sequence (u64 BE)    | `QueueEntry`                |
//! | `inflight`    | client id, 0x00, packet id (u16 BE)   | `InflightEntry`             |
//! | `incoming`    | client id, 0x00, packet id (u16 BE)   | empty (QoS 2 awaiting PUBREL) |
//!
//! Later issues add `users`, `groups`, `members`, `history` and `outbox` trees under the same
//! schema version scheme. Client ids cannot contain 0x00 (MQTT strings exclude U+0000),
//! so the separator is unambiguous.

use crate::{StorageResult, StoredMessage, StoredSession};

/// Current on-disk schema. Opening a database with another version is refused.
pub const SCHEMA_VERSION: u64 = 1;

/// One message waiting in an offline (or not yet delivered) session queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub message_id: u64,
    /// QoS granted to this subscriber.
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// An outbound QoS 1/2 message sent and not yet fully acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InflightEntry {
    pub message_id: u64,
    pub qos: u8,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// QoS 2: PUBREC received and PUBREL sent.
    pub released: bool,
    /// Order of first sending.
    pub sequence: u64,
}

/// One change. Messages are stored once and shared by every queue and in-flight entry
/// that refers to them: `PutMessage` stores it with a reference count of zero, every
/// `Enqueue` / `PutInflight` naming it adds one, every `Dequeue` / `RemoveInflight` (and
/// the removal of a session) drops one, and a message whose count reaches zero is deleted
/// within the same batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    PutRetained(StoredMessage),
    RemoveRetained { topic: String },
    PutSession(StoredSession),
    /// Removes the session with its queue, in-flight and incoming records.
    RemoveSession { client_id: String },
    PutMessage { id: u64, message: StoredMessage },
    Enqueue { client_id: String, sequence: u64, entry: QueueEntry },
    Dequeue { client_id: String, sequence: u64 },
    PutInflight { client_id: String, packet_id: u16, entry: InflightEntry },
    RemoveInflight { client_id: String, packet_id: u16 },
    PutIncoming { client_id: String, packet_id: u16 },
    RemoveIncoming { client_id: String, packet_id: u16 },
}

/// What the broker recovers at start-up, without loading queued messages into memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub retained: Vec<StoredMessage>,
    pub sessions: Vec<RecoveredSession>,
    /// The first message id not yet used.
    pub next_message_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    pub session: StoredSession,
    /// (first, last) sequence of its queue, if non-empty, and its length.
    pub queue: Option<(u64, u64)>,
    pub queue_len: u64,
    pub inflight: Vec<(u16, InflightEntry, StoredMessage)>,
    pub incoming: Vec<u16>,
}

pub trait Store: Send + Sync {
    /// Applies a batch atomically (not yet necessarily on disk).
    fn apply(&self, batch: Vec<Op>) -> StorageResult<()>;
    /// Makes everything applied so far durable (fsync).
    fn flush(&self) -> StorageResult<()>;
    /// Everything needed to resume after a restart.
    fn recover(&self) -> StorageResult<Recovered>;
    /// Up to `limit` queue entries of `client_id` with sequence >= `from`, in order, each
    /// with its message.
    fn queue_range(
        &self,
        client_id: &str,
        from: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, QueueEntry, StoredMessage)>>;
    /// Bytes on disk (approximate), for the global storage limit.
    fn size_on_disk(&self) -> u64;
}
