//! Will messages: published when a connection ends without a normal DISCONNECT, after the
//! v5 Will Delay Interval unless the client reconnects first [MQTT-3.1.3-9], and no later
//! than the end of the session [MQTT-3.1.2-8].

use super::Broker;
use crate::codec::{LastWill, Publish};
use crate::message::Message;
use std::sync::Arc;
use std::time::Duration;

pub(super) fn schedule(
    broker: Arc<Broker>,
    will: LastWill,
    client_id: Arc<str>,
    connection_id: u64,
    session_expiry: u32,
) {
    let delay = will
        .properties
        .will_delay_interval
        .unwrap_or(0)
        .min(session_expiry);
    if delay == 0 {
        publish(&broker, will, client_id);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
        if broker.registry.reconnected_since(&client_id, connection_id) {
            tracing::debug!(%client_id, "client reconnected: delayed will cancelled");
            return;
        }
        publish(&broker, will, client_id);
    });
}

fn publish(broker: &Broker, will: LastWill, client_id: Arc<str>) {
    let mut properties = will.properties;
    properties.will_delay_interval = None;
    let publish = Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic,
        packet_id: 0,
        properties,
        payload: will.payload,
    };
    tracing::debug!(%client_id, topic = %publish.topic, "publishing will");
    broker
        .router
        .publish(Message::new(publish, client_id), None);
}
