//! Rookery's persistence layer.
//!
//! The broker sees storage only through the traits in this crate, so that the in-memory
//! implementation (used when `durability = "none"` and in tests) and the sled implementation
//! (issue 4, [`SledStore`] — the only code in the workspace that touches sled) are
//! interchangeable. Records are plain data with no broker types in them: the
//! broker converts its messages and sessions to and from these records.

mod codec;
mod memory;
mod records;
mod sled_store;
pub mod store;

pub use memory::{MemoryRetainedStore, MemorySessionStore, MemoryStore};
pub use records::{StoredMessage, StoredSession, StoredSubscription};
pub use sled_store::{SledOptions, SledStore};
pub use store::{InflightEntry, Op, QueueEntry, Recovered, RecoveredSession, Store};

/// Errors a store can report. A store error refuses the durable work that caused it and
/// must leave what is already stored intact.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("storage is full")]
    Full,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The batch itself is wrong (a broker bug, not a disk problem): it was refused whole.
    #[error("invalid storage batch: {0}")]
    Invalid(String),
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Retained messages, one per topic [MQTT-3.3.1-5].
pub trait RetainedStore: Send + Sync {
    /// Stores `message` as the retained message of its topic, replacing any previous one.
    fn put(&self, message: StoredMessage) -> StorageResult<()>;
    /// Removes the retained message of `topic` (a retained PUBLISH with an empty payload
    /// [MQTT-3.3.1-6]).
    fn remove(&self, topic: &str) -> StorageResult<()>;
    /// Every retained message, for the broker to load into its in-memory index at start.
    fn load_all(&self) -> StorageResult<Vec<StoredMessage>>;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Persistent sessions: their subscriptions and expiry. (Queues and in-flight state join
/// them in the storage issue.)
pub trait SessionStore: Send + Sync {
    fn save(&self, session: StoredSession) -> StorageResult<()>;
    fn remove(&self, client_id: &str) -> StorageResult<()>;
    fn load_all(&self) -> StorageResult<Vec<StoredSession>>;
}
