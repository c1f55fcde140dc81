//! Rookery's persistence layer.
//!
//! The broker sees storage only through the `Store` trait of this crate, so that the in-memory
//! implementation (used when `durability = "none"` and in tests) and the sled implementation
//! (issue 4, [`SledStore`] — the only code in the workspace that touches sled) are
//! interchangeable. Records are plain data with no broker types in them: the
//! broker converts its messages and sessions to and from these records.

mod codec;
mod memory;
mod records;
mod sled_store;
pub mod store;

pub use memory::MemoryStore;
pub use records::{StoredMessage, StoredSession, StoredSubscription};
pub use sled_store::{SledOptions, SledStore};
pub use store::{InflightEntry, Op, QueueEntry, Recovered, RecoveredSession, Space, Store};

/// Errors a store can report. A store error refuses the durable work that caused it and
/// must leave what is already stored intact.
#[derive(Debug, Clone, thiserror::Error)]
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
