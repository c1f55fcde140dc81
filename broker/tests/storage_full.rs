//! The global storage limit (`[storage] max_bytes`, `full_policy`): while storage is full,
//! a QoS >= 1 message that would have to be stored is refused (v5 0x97, 3.1.1
//! disconnect) or its stored copies dropped and counted, and everything that needs no
//! storage — QoS 0, QoS 1 to clean sessions — keeps flowing.

mod common;

use common::{counter, v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Packet, ProtocolVersion, QoS};
use rookery::config::StorageFullPolicy;
use std::time::Duration;

/// A broker whose store is over its limit from the first measurement (any sled database
/// is larger than one byte).
async fn full_broker(policy: StorageFullPolicy) -> TestBroker {
    let broker = TestBroker::start_with(|config| {
        config.storage.max_bytes = 1;
        config.storage.full_policy = policy;
    })
    .await;
    common::eventually("storage to count as full", Duration::from_secs(5), || {
        counter(&broker.stats().storage_full) == 1
    })
    .await;
    broker
}

fn persistent5(o: &mut v5::MqttOptions) {
    o.set_clean_start(false);
    o.set_connect_properties(v5::session_expiry(3600));
}

fn publish(topic: &str, qos: QoS, retain: bool, packet_id: u16) -> Packet {
    Packet::Publish(codec::Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"payload"),
    })
}

async fn expect_ack(raw: &mut RawClient, packet_id: u16) -> u8 {
    match raw.expect().await {
        Packet::PubAck(ack) | Packet::PubRec(ack) => {
            assert_eq!(ack.packet_id, packet_id);
            ack.reason_code
        }
        other => panic!("expected PUBACK/PUBREC, got {other:?}"),
    }
}

#[tokio::test]
async fn refuse_policy_refuses_what_must_be_stored_and_lets_the_rest_flow() {
    let broker = full_broker(StorageFullPolicy::Refuse).await;
    // An offline persistent subscriber makes every QoS >= 1 message on full/# durable work.
    let mut persistent = v5::connect_with(broker.addr, "full-persistent", persistent5)
        .await
        .unwrap();
    persistent.subscribe("full/#", v5::QoS::AtLeastOnce).await;
    persistent.disconnect().await;
    let mut online = v4::connect(broker.addr, "full-online").await;
    online.subscribe("full/#", v4::QoS::AtLeastOnce).await;
    online.subscribe("free/#", v4::QoS::AtLeastOnce).await;

    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "full-pub5").await;
    raw.send(&publish("full/a", QoS::AtLeastOnce, false, 1))
        .await;
    assert_eq!(expect_ack(&mut raw, 1).await, 0x97, "QoS 1 refused");
    raw.send(&publish("full/b", QoS::ExactlyOnce, false, 2))
        .await;
    assert_eq!(expect_ack(&mut raw, 2).await, 0x97, "QoS 2 refused");
    // Refused whole: the online subscriber did not get them either.
    online.expect_no_publish(QUIET).await;

    // A retained QoS 1 message must be stored even with no subscriber.
    raw.send(&publish("free/retained", QoS::AtLeastOnce, true, 3))
        .await;
    assert_eq!(expect_ack(&mut raw, 3).await, 0x97, "retained refused");
    online.expect_no_publish(QUIET).await;

    // QoS 0 flows, and QoS 1 that only online clean sessions receive is acknowledged.
    raw.send(&publish("full/c", QoS::AtMostOnce, false, 0))
        .await;
    assert_eq!(&online.recv_publish().await.payload[..], b"payload");
    raw.send(&publish("free/d", QoS::AtLeastOnce, false, 4))
        .await;
    assert_eq!(expect_ack(&mut raw, 4).await, 0x00, "no storage needed");
    assert_eq!(online.recv_publish().await.topic, "free/d");

    // A 3.1.1 client cannot hear a refusal: disconnected without its PUBACK.
    let mut raw4 = RawClient::connected(broker.addr, ProtocolVersion::V311, "full-pub4").await;
    raw4.send(&publish("full/e", QoS::AtLeastOnce, false, 5))
        .await;
    let before_close = raw4.expect_closed_within(Duration::from_secs(3)).await;
    assert!(
        !before_close
            .iter()
            .any(|p| matches!(p, Packet::PubAck(_) | Packet::PubRec(_))),
        "{before_close:?}"
    );
    assert_eq!(counter(&broker.stats().storage_refused), 4);

    // Nothing refused was queued for the persistent session (nor the QoS 0 message:
    // QoS 0 is not queued for offline sessions by default).
    let mut persistent = v5::connect_with(broker.addr, "full-persistent", persistent5)
        .await
        .unwrap();
    persistent.expect_no_publish(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn drop_policy_acknowledges_and_counts_the_copies_it_cannot_store() {
    let broker = full_broker(StorageFullPolicy::Drop).await;
    let mut persistent = v5::connect_with(broker.addr, "drop-persistent", persistent5)
        .await
        .unwrap();
    persistent.subscribe("drop/#", v5::QoS::AtLeastOnce).await;
    persistent.disconnect().await;
    let mut online = v4::connect(broker.addr, "drop-online").await;
    online.subscribe("drop/#", v4::QoS::AtLeastOnce).await;

    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "drop-pub5").await;
    raw.send(&publish("drop/a", QoS::AtLeastOnce, false, 1))
        .await;
    assert_eq!(expect_ack(&mut raw, 1).await, 0x00);
    assert_eq!(online.recv_publish().await.topic, "drop/a");
    assert_eq!(counter(&broker.stats().dropped_storage_full), 1);
    assert_eq!(counter(&broker.stats().storage_refused), 0);

    let mut persistent = v5::connect_with(broker.addr, "drop-persistent", persistent5)
        .await
        .unwrap();
    persistent.expect_no_publish(QUIET).await;
    broker.stop().await;
}
