//! Session records: what of a session is written to the store, and how it comes back.

use super::{Durable, Ticket};
use crate::codec::{QoS, RetainHandling, SubscriptionOptions};
use crate::message::unix_millis;
use crate::session::{SessionState, SessionSubscription};
use rookery_storage::{Op, StoredSession, StoredSubscription};

impl Durable {
    /// Writes a persistent session's subscriptions and expiry. `disconnected` is set when
    /// the client has just gone offline, so that the expiry can be resumed after a
    /// restart.
    pub fn save_session(
        &self,
        client_id: &str,
        state: &SessionState,
        disconnected: bool,
    ) -> Ticket {
        self.submit([Op::PutSession(Box::new(session_record(
            client_id,
            state,
            disconnected,
        )))])
    }

    /// Removes a session with its queue and in-flight records.
    pub fn remove_session(&self, client_id: &str) -> Ticket {
        self.submit([Op::RemoveSession {
            client_id: client_id.to_string(),
        }])
    }
}

fn session_record(client_id: &str, state: &SessionState, disconnected: bool) -> StoredSession {
    let mut subscriptions: Vec<StoredSubscription> = state
        .subscriptions
        .iter()
        .map(|(filter, sub)| StoredSubscription {
            filter: filter.clone(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            retain_handling: sub.options.retain_handling as u8,
            subscription_id: sub.subscription_id,
        })
        .collect();
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    StoredSession {
        client_id: client_id.to_string(),
        subscriptions,
        expiry_interval: state.expiry_interval,
        disconnected_at_ms: if disconnected { unix_millis() } else { 0 },
        will: state.will.as_ref().map(|w| w.message.clone()),
        will_retain: state.will.as_ref().is_some_and(|w| w.retain),
        will_delay: state.will.as_ref().map_or(0, |w| w.delay),
        will_sender: state
            .will
            .as_ref()
            .and_then(|w| w.sender.as_deref().map(String::from)),
    }
}

/// The subscriptions of a stored session, as the session state keeps them.
pub fn restore_subscriptions(
    stored: &StoredSession,
) -> impl Iterator<Item = (String, SessionSubscription)> + '_ {
    stored.subscriptions.iter().map(|sub| {
        let retain_handling = match sub.retain_handling {
            1 => RetainHandling::SendAtSubscribeIfNew,
            2 => RetainHandling::DoNotSend,
            _ => RetainHandling::SendAtSubscribe,
        };
        let options = SubscriptionOptions {
            qos: QoS::from_u8(sub.qos).unwrap_or(QoS::AtMostOnce),
            no_local: sub.no_local,
            retain_as_published: sub.retain_as_published,
            retain_handling,
        };
        (
            sub.filter.clone(),
            SessionSubscription {
                options,
                subscription_id: sub.subscription_id,
            },
        )
    })
}

/// How long a stored offline session has left before it expires, or `None` for never.
pub fn remaining_expiry(stored: &StoredSession) -> Option<std::time::Duration> {
    if stored.expiry_interval == u32::MAX {
        return None;
    }
    let total = std::time::Duration::from_secs(u64::from(stored.expiry_interval));
    if stored.disconnected_at_ms == 0 {
        // Connected when the broker stopped: the session expiry starts now.
        return Some(total);
    }
    let offline =
        std::time::Duration::from_millis(unix_millis().saturating_sub(stored.disconnected_at_ms));
    Some(total.saturating_sub(offline))
}
