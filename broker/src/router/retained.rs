//! Retained messages: an in-memory index for matching, written through to the store (when
//! durability is on) so that they survive a restart.

use crate::codec::topic::filter_matches;
use crate::durable::{Durable, Ticket};
use crate::message::Message;
use crate::stats::Stats;
use rookery_storage::Op;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Instant;

pub struct Retained {
    index: RwLock<HashMap<Arc<str>, Arc<Message>>>,
    durable: Option<Arc<Durable>>,
    stats: Arc<Stats>,
}

impl Retained {
    pub fn new(durable: Option<Arc<Durable>>, stats: Arc<Stats>) -> Retained {
        Retained {
            index: RwLock::new(HashMap::new()),
            durable,
            stats,
        }
    }

    /// Loads retained messages recovered from storage (at start-up).
    pub fn restore(&self, messages: impl IntoIterator<Item = Message>) {
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        for message in messages {
            index.insert(Arc::from(message.topic.as_str()), Arc::new(message));
        }
        self.stats
            .retained
            .store(index.len() as u64, Ordering::Relaxed);
    }

    /// Keeps `message` as its topic's retained message, or clears it when the payload is
    /// empty [MQTT-3.3.1-6] [MQTT-3.3.1-7]. Returns the ticket of the commit that stores
    /// the change, when durability is on.
    /// Sets or clears the retained message of its topic. `store: false` (storage is full
    /// and its policy drops): kept in memory only, so lost at a restart.
    pub fn set(&self, message: &Arc<Message>, store: bool) -> Option<Ticket> {
        let topic: Arc<str> = Arc::from(message.topic.as_str());
        let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
        let op = if message.payload.is_empty() {
            index.remove(&topic);
            Op::RemoveRetained {
                topic: topic.to_string(),
            }
        } else {
            index.insert(topic, message.clone());
            Op::PutRetained(message.to_stored())
        };
        self.stats
            .retained
            .store(index.len() as u64, Ordering::Relaxed);
        // `$SYS` values are rewritten every few seconds and mean nothing after a restart:
        // they are not stored.
        if topic_is_sys(&message.topic) || !store {
            return None;
        }
        // Submitted under the index lock, so the store sees changes of one topic in the
        // order the index did.
        self.durable.as_ref().map(|durable| durable.submit([op]))
    }

    /// Retained messages whose topic matches `filter`, expired ones excluded.
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

fn topic_is_sys(topic: &str) -> bool {
    topic.starts_with("$SYS/")
}
