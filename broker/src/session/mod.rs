//! Sessions: the part shared with publishers (`SessionCore`, mostly the outbox) and the
//! part owned by whichever connection currently holds the session (`SessionState`).

pub mod outbox;
pub mod registry;

pub use outbox::{Delivery, Outbox, OutboxLimits, StoredRef};
pub use registry::{Attached, Detached, Registry, TakeOver};

use crate::codec::{QoS, SubscriptionOptions};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What publishers need of a session. Lives as long as the session (across connections).
pub struct SessionCore {
    /// Unique for the broker's lifetime, so a reused client id is a different session.
    pub id: u64,
    pub client_id: Arc<str>,
    pub outbox: Outbox,
}

/// A subscription as the session remembers it (the trie holds the routing copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSubscription {
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// An outbound QoS 1/2 message waiting for its acknowledgement.
pub struct InFlight {
    pub delivery: Delivery,
    /// Order of sending, to resend in the original order after a reconnect [MQTT-4.6.0-1].
    pub sequence: u64,
    /// QoS 2 only: PUBREC received, PUBREL sent, waiting for PUBCOMP.
    pub released: bool,
}

/// State owned by the connection that holds the session, parked in the registry while the
/// client is offline.
#[derive(Default)]
pub struct SessionState {
    /// Filter (as subscribed, `$share/...` included) → options.
    pub subscriptions: HashMap<String, SessionSubscription>,
    pub inflight: HashMap<u16, InFlight>,
    /// QoS 2 packet ids received and not yet released by PUBREL [MQTT-4.3.3-10].
    pub incoming_qos2: HashSet<u16>,
    pub next_packet_id: u16,
    pub next_sequence: u64,
    /// Session Expiry Interval in seconds; u32::MAX = never.
    pub expiry_interval: u32,
    /// Whether the store holds a record of this session (so its end must remove it).
    pub persisted: bool,
    /// The will as the session record keeps it: from CONNECT until a normal DISCONNECT
    /// or its publication, so that a crash (which ends the connection without
    /// DISCONNECT) still gets it published after the restart.
    pub will: Option<Box<WillRecord>>,
}

/// A will in a persistent session's record.
#[derive(Debug, Clone)]
pub struct WillRecord {
    pub message: rookery_storage::StoredMessage,
    pub retain: bool,
    /// Will Delay Interval, seconds.
    pub delay: u32,
    /// The username of the connection that set the will: its publication is checked and
    /// recorded (group history's `from`) as that user's.
    pub sender: Option<Arc<str>>,
}

impl SessionState {
    /// The next free packet identifier, never 0 and never one in flight [MQTT-2.2.1-3].
    pub fn allocate_packet_id(&mut self) -> Option<u16> {
        for _ in 0..=u16::MAX {
            self.next_packet_id = self.next_packet_id.wrapping_add(1);
            if self.next_packet_id == 0 {
                self.next_packet_id = 1;
            }
            if !self.inflight.contains_key(&self.next_packet_id) {
                return Some(self.next_packet_id);
            }
        }
        None
    }

    pub fn inflight_count(&self) -> usize {
        self.inflight.len()
    }

    /// In-flight messages in the order they were first sent.
    pub fn inflight_in_order(&self) -> Vec<u16> {
        let mut ids: Vec<(u64, u16)> = self
            .inflight
            .iter()
            .map(|(id, f)| (f.sequence, *id))
            .collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, id)| id).collect()
    }

    pub fn max_granted_qos(&self) -> QoS {
        self.subscriptions
            .values()
            .map(|s| s.options.qos)
            .max()
            .unwrap_or_default()
    }
}
