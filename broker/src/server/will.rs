//! Will messages: published when a connection ends without a normal DISCONNECT, after the
//! v5 Will Delay Interval unless the client reconnects first [MQTT-3.1.3-9], and no later
//! than the end of the session [MQTT-3.1.2-8].

use super::Broker;
use crate::acl::{Access, Identity};
use crate::codec::{reason, LastWill, Publish};
use crate::groups::{enforce, Gid, GroupTopic};
use crate::message::Message;
use crate::session::WillRecord;
use crate::stats::Stats;
use std::sync::Arc;
use std::time::Duration;

/// Publishes the will now (returns true) or after its delay (false).
pub(super) fn schedule(
    broker: Arc<Broker>,
    will: LastWill,
    client_id: Arc<str>,
    sender: Option<Arc<str>>,
    connection_id: u64,
    session_expiry: u32,
) -> bool {
    let delay = will
        .properties
        .will_delay_interval
        .unwrap_or(0)
        .min(session_expiry);
    // Built when published, so that a message expiry counts from the publication.
    let publisher = client_id.clone();
    publish_after(
        &broker,
        move || {
            let mut message = Message::new(will_publish(will), publisher);
            message.sender = sender;
            message
        },
        client_id,
        connection_id,
        Duration::from_secs(u64::from(delay)),
    )
}

/// Publishes the will `message` builds now (returns true), or after `delay` unless a
/// connection other than `connection_id` attached to the client id meanwhile
/// [MQTT-3.1.3-9] (false).
fn publish_after(
    broker: &Arc<Broker>,
    message: impl FnOnce() -> Message + Send + 'static,
    client_id: Arc<str>,
    connection_id: u64,
    delay: Duration,
) -> bool {
    if delay.is_zero() {
        let message = message();
        if allowed(broker, &message) {
            tracing::debug!(%client_id, topic = %message.topic, "publishing will");
            broker.router.publish(message, None);
        }
        return true;
    }
    let broker = broker.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        if broker.registry.reconnected_since(&client_id, connection_id) {
            tracing::debug!(%client_id, "client reconnected: delayed will cancelled");
            return;
        }
        let message = message();
        if allowed(&broker, &message) {
            tracing::debug!(%client_id, topic = %message.topic, "publishing delayed will");
            broker.router.publish(message, None);
        }
        forget_stored_will(&broker, &client_id, connection_id);
    });
    false
}

/// Whether a will may be published now. A will is its client's message: it passes the
/// same group rules (`send`, or `pub` on live topics, for its user) and ACL file as the
/// client's PUBLISH would [SPEC §6], decided when it is published, since the rules may
/// have changed since CONNECT (a member removed meanwhile loses the will too).
fn allowed(broker: &Broker, message: &Message) -> bool {
    let sender = message.sender.as_deref();
    match authorize(broker, sender, &message.publisher, &message.topic) {
        Ok(group) => {
            if let Some(gid) = group {
                // `expiryext` pushes the expiry on each group message.
                let directory = &broker.router.directory;
                directory.on_group_message(gid, crate::groups::now_secs());
            }
            true
        }
        Err(_) => {
            Stats::add(&broker.stats.acl_denied, 1);
            tracing::info!(client_id = %message.publisher, topic = %message.topic, "will not authorized: dropped");
            false
        }
    }
}

/// The one decision on a will's topic, at CONNECT and at publication: as for a PUBLISH
/// of `username`, group topics by the group's rules, the rest by the ACL file.
/// `Ok(Some(gid))` for a group message; `Err` is the reason code a CONNECT carrying
/// the will is refused with.
pub(super) fn authorize(
    broker: &Broker,
    username: Option<&str>,
    client_id: &str,
    topic: &str,
) -> Result<Option<Gid>, u8> {
    let directory = &broker.router.directory;
    match enforce::check_publish(directory, username, topic) {
        Ok(Some(GroupTopic::Message { gid, .. })) => Ok(Some(gid)),
        // A will is never a real-time API request (CONNECT refuses `$` will topics).
        Ok(Some(GroupTopic::Ops)) => Err(reason::NOT_AUTHORIZED),
        Ok(Some(_)) => Ok(None),
        Ok(None) => {
            let who = Identity {
                username,
                client_id,
            };
            let acl = broker.router.acl();
            if acl.is_none_or(|acl| acl.check_topic(who, topic, Access::Write)) {
                Ok(None)
            } else {
                Err(reason::NOT_AUTHORIZED)
            }
        }
        Err(enforce::Refusal::BadTopic(_)) => Err(reason::TOPIC_NAME_INVALID),
        Err(_) => Err(reason::NOT_AUTHORIZED),
    }
}

/// After a delayed will was published: the session's record no longer carries it, so a
/// restart does not publish it again.
fn forget_stored_will(broker: &Broker, client_id: &str, connection_id: u64) {
    broker
        .registry
        .with_parked(client_id, connection_id, |state| {
            if state.will.take().is_some() {
                // Still offline: the record keeps its disconnect time for the expiry only
                // approximately (it becomes now), at most the will delay later.
                broker.persist_session(client_id, state, true);
            }
        });
}

/// The will as a persistent session's record keeps it.
pub(super) fn record(
    will: &LastWill,
    client_id: &Arc<str>,
    sender: Option<&Arc<str>>,
) -> WillRecord {
    WillRecord {
        message: Message::new(will_publish(will.clone()), client_id.clone()).to_stored(),
        retain: will.retain,
        delay: will.properties.will_delay_interval.unwrap_or(0),
        sender: sender.cloned(),
    }
}

/// After a restart: the will of a recovered session whose connection ended without
/// DISCONNECT (the crash, or a delayed will still pending), published after what is
/// left of its delay unless the client reconnects first.
pub(super) fn schedule_recovered(
    broker: &Arc<Broker>,
    will: WillRecord,
    client_id: Arc<str>,
    remaining: Duration,
) {
    let Some(mut message) = Message::from_stored(will.message) else {
        tracing::error!(%client_id, "stored will does not decode: dropped");
        return;
    };
    message.retain = will.retain;
    message.sender = will.sender;
    // Connection ids start at 1: any connection since the restart is a reconnect.
    publish_after(broker, move || message, client_id, 0, remaining);
}

/// What is left of a recovered session's will delay (capped by its session expiry
/// [MQTT-3.1.2-8]): counted from the disconnect, or from now if the client was connected
/// when the broker stopped.
pub(super) fn remaining_delay(stored: &rookery_storage::StoredSession) -> Duration {
    let delay = Duration::from_secs(u64::from(stored.will_delay.min(stored.expiry_interval)));
    if stored.disconnected_at_ms == 0 {
        return delay;
    }
    let offline = crate::message::unix_millis().saturating_sub(stored.disconnected_at_ms);
    delay.saturating_sub(Duration::from_millis(offline))
}

fn will_publish(will: LastWill) -> Publish {
    let mut properties = will.properties;
    properties.will_delay_interval = None;
    Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: 0,
        properties,
        payload: will.payload,
    }
}
