//! In-memory stores: nothing survives a restart. Used for `durability = "none"` and tests.
//!
//! A std `Mutex` is right here: every critical section is a map operation with no await.

use crate::{RetainedStore, SessionStore, StorageResult, StoredMessage, StoredSession};
use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemoryRetainedStore {
    messages: Mutex<HashMap<String, StoredMessage>>,
}

impl MemoryRetainedStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl RetainedStore for MemoryRetainedStore {
    fn put(&self, message: StoredMessage) -> StorageResult<()> {
        let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        messages.insert(message.topic.clone(), message);
        Ok(())
    }

    fn remove(&self, topic: &str) -> StorageResult<()> {
        let mut messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        messages.remove(topic);
        Ok(())
    }

    fn load_all(&self) -> StorageResult<Vec<StoredMessage>> {
        let messages = self.messages.lock().unwrap_or_else(|e| e.into_inner());
        Ok(messages.values().cloned().collect())
    }

    fn len(&self) -> usize {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

#[derive(Default)]
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<String, StoredSession>>,
}

impl MemorySessionStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl SessionStore for MemorySessionStore {
    fn save(&self, session: StoredSession) -> StorageResult<()> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.insert(session.client_id.clone(), session);
        Ok(())
    }

    fn remove(&self, client_id: &str) -> StorageResult<()> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(client_id);
        Ok(())
    }

    fn load_all(&self) -> StorageResult<Vec<StoredSession>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sessions.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn message(topic: &str) -> StoredMessage {
        StoredMessage {
            topic: topic.into(),
            payload: Bytes::from_static(b"x"),
            qos: 1,
            properties: Bytes::new(),
            publisher: "p".into(),
            received_at_ms: 1,
            expiry_interval: None,
        }
    }

    #[test]
    fn retained_put_replaces_and_remove_deletes() {
        let store = MemoryRetainedStore::new();
        store.put(message("a")).unwrap();
        store.put(message("a")).unwrap();
        store.put(message("b")).unwrap();
        assert_eq!(store.len(), 2);
        store.remove("a").unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].topic, "b");
    }
}
