//! `$SYS/broker/...` statistics, published as retained messages at an interval so that a
//! new subscriber sees current values at once.

use crate::codec::{MqttStr, Publish, QoS};
use crate::message::Message;
use crate::server::Broker;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn publish_periodically(broker: Arc<Broker>) {
    let secs = broker.config.sys.interval_secs;
    if secs == 0 {
        return;
    }
    let publisher: Arc<str> = Arc::from("$SYS");
    let mut tick = tokio::time::interval(Duration::from_secs(secs));
    loop {
        tick.tick().await;
        for (topic, value) in broker.stats.sys_values() {
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: true,
                topic: MqttStr::from_static(topic),
                packet_id: 0,
                properties: Default::default(),
                payload: Bytes::from(value),
            };
            broker
                .router
                .publish(Message::new(publish, publisher.clone()), None);
        }
    }
}
