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
//! | `meta`        | `schema_version`, `next_message_id`, `checkpointed_through` | u64 big-endian |
//! | `retained`    | topic (UTF-8)                         | `StoredMessage`             |
//! | `messages`    | message id (u64 BE)                   | `StoredMessage`             |
//! | `refcounts`   | message id (u64 BE)                   | reference count, u64 BE     |
//! | `sessions`    | client id                             | `StoredSession`             |
//! | `queues`      | client id, 0x00, sequence (u64 BE)    | `QueueEntry`                |
//! | `inflight`    | client id, 0x00, packet id (u16 BE)   | `InflightEntry`             |
//! | `incoming`    | client id, 0x00, packet id (u16 BE)   | empty (QoS 2 awaiting PUBREL) |
//! | `users`       | user address (UTF-8)                  | the broker's user record    |
//! | `groups`      | gid (u32 BE)                          | the broker's group record (with members) |
//! | `directory`   | a name (`next_gid`, `next_uid`, ...)  | the broker's counters       |
//! | `history`     | gid (u32 BE), message id (u64 BE)     | the broker's history entry  |
//! | `outbox`      | endpoint key, event id (u64 BE each)  | a webhook event (bridge)    |
//! | `dead_letters`| endpoint key, event id (u64 BE each)  | last error, then the event  |
//! | `group_queues`| gid (u32 BE), message id (u64 BE)     | a waiting round-robin message |
//! | `journal`     | record number, part (u64 BE, u32 BE)  | one batch's resolved writes |
//!
//! The `users`, `groups` and `directory` values are opaque here ([`Op::PutRecord`]): the
//! broker owns their encoding (versioned JSON), as it owns what a user or group means.
//! The `journal` holds batches applied since the last checkpoint (each as the key writes it
//! resolved to, `codec::encode_journal`); a background checkpoint moves them into the other
//! trees and records `checkpointed_through` (`sled_store/staged.rs`). Schema version 2 added
//! it; a version 1 database is refused rather than read without its journal semantics.
//! Version 3 added the record trees, version 4 the webhook outbox, dead letters and round-robin group queues.
//!
//! Reference counts live in their own tree, beside the message rather than in front of it,
//! so that acknowledging one copy of a message shared by many sessions rewrites 8 bytes,
//! not the whole payload. A message id has a `refcounts` entry exactly when it has a
//! `messages` entry. Records are encoded as described in `codec.rs` (a format byte, then
//! varint-framed fields).
//!
//! Client ids cannot contain 0x00 (MQTT strings exclude U+0000),
//! so the separator is unambiguous.

use crate::{StorageError, StorageResult, StoredMessage, StoredSession};

/// Current on-disk schema. Opening a database with another version is refused.
pub const SCHEMA_VERSION: u64 = 4;

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
/// that refers to them, with a reference count:
///
/// - `PutMessage` stores a new message with a count of zero (re-putting an id that is
///   already stored replaces its content and keeps its count, so the count always equals
///   the number of entries naming it);
/// - every `Enqueue` / `PutInflight` naming it adds one; one that replaces an existing
///   entry at the same key first drops one from the message the old entry named (so
///   re-putting an in-flight entry on PUBREC is neutral);
/// - every `Dequeue` / `RemoveInflight` of an existing entry drops one, and so does each
///   queue or in-flight entry removed with `RemoveSession`; removing a key that does not
///   exist changes nothing;
/// - a message whose count is zero at the end of the batch is deleted, whether it was
///   dropped to zero or put and never referenced. Deletion waits for the end of the batch
///   so that `Dequeue` then `PutInflight` of the same message (moving it from the queue to
///   the in-flight window) works in one batch.
///
/// Ops apply in order. A batch in which an `Enqueue` / `PutInflight` names a message that
/// is neither stored nor put earlier in the batch, or a client id contains U+0000, is
/// refused whole with [`crate::StorageError::Invalid`], and nothing of it is applied.
/// A space of opaque records (users, groups, the directory's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    Users,
    Groups,
    Directory,
    /// Group history: read by prefix with [`Store::records`], never loaded whole.
    History,
    /// Webhook events not yet delivered (key: endpoint key, then event id, big-endian);
    /// read by prefix at start.
    Outbox,
    /// Webhook events that reached their endpoint's maximum age undelivered.
    DeadLetters,
    /// Round-robin groups' messages waiting for an eligible member (key: gid u32 BE, then
    /// a message id u64 BE; value: `StoredMessage::to_bytes`).
    GroupQueues,
}

impl Space {
    pub const ALL: [Space; 7] = [
        Space::Users,
        Space::Groups,
        Space::Directory,
        Space::History,
        Space::Outbox,
        Space::DeadLetters,
        Space::GroupQueues,
    ];
    /// The spaces `recover` returns whole.
    pub const RECOVERED: [Space; 3] = [Space::Users, Space::Groups, Space::Directory];
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Stores (or replaces) an opaque record.
    PutRecord {
        space: Space,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveRecord {
        space: Space,
        key: Vec<u8>,
    },
    PutRetained(StoredMessage),
    RemoveRetained {
        topic: String,
    },
    /// Boxed: sessions are written rarely, and the largest variant sets the size of
    /// every `Op` the commit path moves around.
    PutSession(Box<StoredSession>),
    /// Removes the session with its queue, in-flight and incoming records.
    RemoveSession {
        client_id: String,
    },
    PutMessage {
        id: u64,
        message: StoredMessage,
    },
    Enqueue {
        client_id: String,
        sequence: u64,
        entry: QueueEntry,
    },
    Dequeue {
        client_id: String,
        sequence: u64,
    },
    PutInflight {
        client_id: String,
        packet_id: u16,
        entry: InflightEntry,
    },
    RemoveInflight {
        client_id: String,
        packet_id: u16,
    },
    PutIncoming {
        client_id: String,
        packet_id: u16,
    },
    RemoveIncoming {
        client_id: String,
        packet_id: u16,
    },
}

/// What the broker recovers at start-up, without loading queued messages into memory.
///
/// Everything is in key order: retained messages by topic, sessions by client id,
/// in-flight entries and incoming ids by packet id (the broker re-sends in-flight messages
/// in `InflightEntry::sequence` order). Queue entries of a client id that has no session
/// record are not reported here (they stay reachable through `queue_range`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    pub retained: Vec<StoredMessage>,
    pub sessions: Vec<RecoveredSession>,
    /// Every opaque record of the [`Space::RECOVERED`] spaces: by space, then key.
    pub records: Vec<(Space, Vec<u8>, Vec<u8>)>,
    /// The first message id not yet used: above every id ever put (a persisted high-water
    /// mark, so ids are not reused after their messages are deleted), and at least 1.
    pub next_message_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSession {
    pub session: StoredSession,
    /// (first, last) sequence of its queue, if non-empty, and its length (the count of
    /// entries, which is less than last - first + 1 when entries were dequeued out of order).
    pub queue: Option<(u64, u64)>,
    pub queue_len: u64,
    pub inflight: Vec<(u16, InflightEntry, StoredMessage)>,
    pub incoming: Vec<u16>,
}

/// Client ids key per-session ranges followed by a 0x00 separator, so one containing
/// U+0000 (which MQTT forbids anyway) could read or remove another client's records.
pub(crate) fn check_client_id(client_id: &str) -> StorageResult<()> {
    if client_id.as_bytes().contains(&0) {
        return Err(StorageError::Invalid(format!(
            "client id {client_id:?} contains U+0000"
        )));
    }
    Ok(())
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
    /// Every record of `space` whose key starts with `prefix`, in key order (for
    /// bounded sets such as one group's history).
    fn records(&self, space: Space, prefix: &[u8]) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Bytes on disk (approximate), for the global storage limit.
    fn size_on_disk(&self) -> u64;
    /// Free bytes on the file system holding the store, if it has one.
    fn free_space(&self) -> Option<u64>;
}
