//! Retained messages: an in-memory index for matching, written through to the
//! `RetainedStore` so that the storage backend decides what survives a restart.

use crate::codec::topic::filter_matches;
use crate::message::Message;
use crate::stats::Stats;
use rookery_storage::{RetainedStore, StoredMessage};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub struct Retained {
    index: RwLock<HashMap<Arc<str>, Arc<Message>>>,
    store: Arc<dyn RetainedStore>,
    stats: Arc<Stats>,
}

impl Retained {
    pub fn new(store: Arc<dyn RetainedStore>, stats: Arc<Stats>) -> Retained {
        Retained {
            index: RwLock::new(HashMap::new()),
            store,
            stats,
        }
    }

    /// Keeps `message` as its topic's retained message, or clears it when the payload is
    /// empty [MQTT-3.3.1-6] [MQTT-3.3.1-7].
    pub fn set(&self, message: &Arc<Message>) {
        let topic: Arc<str> = Arc::from(message.topic.as_str());
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let result = if message.payload.is_empty() {
            index.remove(&topic);
            self.store.remove(&topic)
        } else {
            index.insert(topic, message.clone());
            self.store.put(stored(message))
        };
        self.stats
            .retained
            .store(index.len() as u64, Ordering::Relaxed);
        if let Err(error) = result {
            tracing::error!(%error, topic = %message.topic, "retained message not stored");
        }
    }

    /// Retained messages whose topic matches `filter`, oldest expiry excluded.
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let mut found: Vec<Arc<Message>> = index
            .iter()
            .filter(|(topic, message)| filter_matches(filter, topic) && !message.is_expired(now))
            .map(|(_, message)| message.clone())
            .collect();
        found.sort_by(|a, b| a.topic.cmp(&b.topic));
        found
    }

    pub fn len(&self) -> usize {
        self.index.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn stored(message: &Message) -> StoredMessage {
    let received_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        .saturating_sub(message.received_at.elapsed().as_millis() as u64);
    StoredMessage {
        topic: message.topic.to_string(),
        payload: message.payload.clone(),
        qos: message.qos as u8,
        properties: crate::message::encode_properties(&message.properties),
        publisher: message.publisher.to_string(),
        received_at_ms,
        expiry_interval: message.properties.message_expiry_interval,
    }
}
