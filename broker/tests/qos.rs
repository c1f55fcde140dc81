//! QoS 0/1/2 in both directions and both protocol versions, exactly-once delivery,
//! overlapping subscriptions, ordering and the in-flight window towards a subscriber.

mod common;

use bytes::Bytes;
use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Packet, ProtocolVersion, PubResponse};
use std::time::Duration;

const QOS4: [v4::QoS; 3] = [
    v4::QoS::AtMostOnce,
    v4::QoS::AtLeastOnce,
    v4::QoS::ExactlyOnce,
];
const QOS5: [v5::QoS; 3] = [
    v5::QoS::AtMostOnce,
    v5::QoS::AtLeastOnce,
    v5::QoS::ExactlyOnce,
];

fn min4(a: v4::QoS, b: v4::QoS) -> v4::QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

fn min5(a: v5::QoS, b: v5::QoS) -> v5::QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

#[tokio::test]
async fn v311_delivered_qos_is_the_minimum_of_publish_and_subscription_qos_mqtt_3_8_4_6() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "qos-sub4").await;
    let mut publisher = v4::connect(broker.addr, "qos-pub4").await;
    for (s, sub_qos) in QOS4.iter().enumerate() {
        let codes = sub.subscribe(&format!("qos4/{s}"), *sub_qos).await;
        assert_eq!(codes, vec![v4::SubscribeReasonCode::Success(*sub_qos)]);
    }
    for (p, pub_qos) in QOS4.iter().enumerate() {
        for (s, sub_qos) in QOS4.iter().enumerate() {
            let payload = format!("p{p}s{s}");
            publisher
                .publish(&format!("qos4/{s}"), *pub_qos, false, payload.as_bytes())
                .await;
            let got = sub.recv_publish().await;
            assert_eq!(got.payload, Bytes::from(payload.clone()));
            assert_eq!(got.qos, min4(*pub_qos, *sub_qos), "{payload}");
            assert!(!got.dup);
        }
    }
    sub.expect_no_publish(QUIET).await;
    sub.disconnect().await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_delivered_qos_is_the_minimum_of_publish_and_subscription_qos_mqtt_3_8_4_8() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, "qos-sub5").await;
    let mut publisher = v5::connect(broker.addr, "qos-pub5").await;
    for (s, sub_qos) in QOS5.iter().enumerate() {
        let codes = sub.subscribe(&format!("qos5/{s}"), *sub_qos).await;
        assert_eq!(codes, vec![v5::SubscribeReasonCode::Success(*sub_qos)]);
    }
    for (p, pub_qos) in QOS5.iter().enumerate() {
        for (s, sub_qos) in QOS5.iter().enumerate() {
            let payload = format!("p{p}s{s}");
            publisher
                .publish(&format!("qos5/{s}"), *pub_qos, false, payload.as_bytes())
                .await;
            let got = sub.recv_publish().await;
            assert_eq!(got.payload, Bytes::from(payload.clone()));
            assert_eq!(got.qos, min5(*pub_qos, *sub_qos), "{payload}");
        }
    }
    sub.expect_no_publish(QUIET).await;
    sub.disconnect().await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn messages_cross_protocol_versions_in_both_directions() {
    let broker = TestBroker::start().await;
    let mut s4 = v4::connect(broker.addr, "x-sub4").await;
    let mut s5 = v5::connect(broker.addr, "x-sub5").await;
    s4.subscribe("cross/#", v4::QoS::ExactlyOnce).await;
    s5.subscribe("cross/#", v5::QoS::ExactlyOnce).await;
    let mut p4 = v4::connect(broker.addr, "x-pub4").await;
    let mut p5 = v5::connect(broker.addr, "x-pub5").await;
    p4.publish("cross/from4", v4::QoS::ExactlyOnce, false, b"four")
        .await;
    p5.publish("cross/from5", v5::QoS::ExactlyOnce, false, b"five")
        .await;
    for expected in [("cross/from4", &b"four"[..]), ("cross/from5", &b"five"[..])] {
        let got4 = s4.recv_publish().await;
        assert_eq!((got4.topic.as_str(), &got4.payload[..]), expected);
        assert_eq!(got4.qos, v4::QoS::ExactlyOnce);
        let got5 = s5.recv_publish().await;
        assert_eq!((v5::topic(&got5), &got5.payload[..]), expected);
        assert_eq!(got5.qos, v5::QoS::ExactlyOnce);
    }
    for c in [s4, p4] {
        c.disconnect().await;
    }
    for c in [s5, p5] {
        c.disconnect().await;
    }
    broker.stop().await;
}

async fn qos2_from_a_publisher_is_delivered_once(version: ProtocolVersion) {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "eo-sub").await;
    sub.subscribe("eo/t", v4::QoS::ExactlyOnce).await;
    let mut publisher = RawClient::connected(broker.addr, version, "eo-pub").await;
    let mut publish = common::publish_packet("eo/t", codec::QoS::ExactlyOnce, 7, b"once");
    publisher.send(&publish).await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubRec(PubResponse::new(7, 0))
    );
    // The same packet again with DUP, as after a lost PUBREC: acknowledged, not delivered
    // again [MQTT-4.3.3-10 (3.1.1: MQTT-4.3.3-2)].
    if let Packet::Publish(p) = &mut publish {
        p.dup = true;
    }
    publisher.send(&publish).await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubRec(PubResponse::new(7, 0))
    );
    publisher
        .send(&Packet::PubRel(PubResponse::new(7, 0)))
        .await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubComp(PubResponse::new(7, 0))
    );
    // After PUBREL the packet id is free: a new message with id 7 is a new message.
    publisher
        .send(&common::publish_packet(
            "eo/t",
            codec::QoS::ExactlyOnce,
            7,
            b"twice",
        ))
        .await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubRec(PubResponse::new(7, 0))
    );
    publisher
        .send(&Packet::PubRel(PubResponse::new(7, 0)))
        .await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubComp(PubResponse::new(7, 0))
    );

    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    assert_eq!(&sub.recv_publish().await.payload[..], b"twice");
    sub.expect_no_publish(QUIET).await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_is_delivered_exactly_once_mqtt_4_3_3_v311() {
    qos2_from_a_publisher_is_delivered_once(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn qos2_is_delivered_exactly_once_mqtt_4_3_3_v5() {
    qos2_from_a_publisher_is_delivered_once(ProtocolVersion::V5).await;
}

async fn qos2_towards_a_subscriber_follows_the_four_step_flow(version: ProtocolVersion) {
    let broker = TestBroker::start().await;
    let mut sub = RawClient::connected(broker.addr, version, "flow-sub").await;
    assert_eq!(
        sub.subscribe(1, "flow/t", codec::QoS::ExactlyOnce).await,
        vec![2]
    );
    let mut publisher = v5::connect(broker.addr, "flow-pub").await;
    publisher
        .publish("flow/t", v5::QoS::ExactlyOnce, false, b"x")
        .await;
    let publish = sub.expect_publish().await;
    assert_eq!(publish.qos, codec::QoS::ExactlyOnce);
    assert_ne!(
        publish.packet_id, 0,
        "QoS 2 carries a non-zero packet id [MQTT-2.2.1-3]"
    );
    sub.send(&Packet::PubRec(PubResponse::new(publish.packet_id, 0)))
        .await;
    match sub.expect().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, publish.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubResponse::new(publish.packet_id, 0)))
        .await;
    sub.expect_silence(QUIET).await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_towards_a_v311_subscriber_is_publish_pubrec_pubrel_pubcomp_mqtt_4_3_3() {
    qos2_towards_a_subscriber_follows_the_four_step_flow(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn qos2_towards_a_v5_subscriber_is_publish_pubrec_pubrel_pubcomp_mqtt_4_3_3() {
    qos2_towards_a_subscriber_follows_the_four_step_flow(ProtocolVersion::V5).await;
}

#[tokio::test]
async fn qos1_towards_a_subscriber_carries_a_packet_id_and_awaits_puback_mqtt_4_3_2() {
    let broker = TestBroker::start().await;
    let mut sub = RawClient::connected(broker.addr, ProtocolVersion::V311, "q1-sub").await;
    sub.subscribe(1, "q1/t", codec::QoS::AtLeastOnce).await;
    let mut publisher = v4::connect(broker.addr, "q1-pub").await;
    publisher
        .publish("q1/t", v4::QoS::AtLeastOnce, false, b"a")
        .await;
    publisher
        .publish("q1/t", v4::QoS::AtLeastOnce, false, b"b")
        .await;
    let a = sub.expect_publish().await;
    let b = sub.expect_publish().await;
    assert_eq!(a.qos, codec::QoS::AtLeastOnce);
    assert!(a.packet_id != 0 && b.packet_id != 0 && a.packet_id != b.packet_id);
    sub.send(&Packet::PubAck(PubResponse::new(a.packet_id, 0)))
        .await;
    sub.send(&Packet::PubAck(PubResponse::new(b.packet_id, 0)))
        .await;
    sub.ping().await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn messages_from_one_publisher_arrive_in_order_mqtt_4_6_0_5() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "order-sub").await;
    sub.subscribe("order/t", v4::QoS::AtLeastOnce).await;
    let publisher = v4::connect(broker.addr, "order-pub").await;
    for i in 0..200u32 {
        publisher
            .client
            .publish(
                "order/t",
                v4::QoS::AtLeastOnce,
                false,
                i.to_be_bytes().to_vec(),
            )
            .await
            .unwrap();
    }
    for i in 0..200u32 {
        let got = sub.recv_publish().await;
        assert_eq!(
            &got.payload[..],
            i.to_be_bytes(),
            "message {i} out of order"
        );
    }
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_the_highest_qos_mqtt_3_3_5_1() {
    let broker = TestBroker::start().await;
    let mut s4 = v4::connect(broker.addr, "overlap4").await;
    s4.subscribe("ov/+", v4::QoS::AtMostOnce).await;
    s4.subscribe("ov/#", v4::QoS::ExactlyOnce).await;
    s4.subscribe("ov/x", v4::QoS::AtLeastOnce).await;
    let mut s5 = v5::connect(broker.addr, "overlap5").await;
    s5.subscribe("ov/+", v5::QoS::AtLeastOnce).await;
    s5.subscribe("ov/#", v5::QoS::AtMostOnce).await;
    let mut publisher = v4::connect(broker.addr, "overlap-pub").await;
    publisher
        .publish("ov/x", v4::QoS::ExactlyOnce, false, b"one")
        .await;
    let got4 = s4.recv_publish().await;
    assert_eq!(got4.qos, v4::QoS::ExactlyOnce);
    let got5 = s5.recv_publish().await;
    assert_eq!(got5.qos, v5::QoS::AtLeastOnce);
    s4.expect_no_publish(QUIET).await;
    s5.expect_no_publish(Duration::from_millis(50)).await;
    publisher.disconnect().await;
    s4.disconnect().await;
    s5.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_repeated_subscribe_replaces_the_subscription_mqtt_3_8_4_3() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "resub").await;
    sub.subscribe("resub/t", v4::QoS::ExactlyOnce).await;
    sub.subscribe("resub/t", v4::QoS::AtMostOnce).await;
    let mut publisher = v4::connect(broker.addr, "resub-pub").await;
    publisher
        .publish("resub/t", v4::QoS::ExactlyOnce, false, b"x")
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(
        got.qos,
        v4::QoS::AtMostOnce,
        "the second subscription's QoS applies"
    );
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

/// Publishes `count` QoS 1 messages on `topic` from a fresh client.
async fn publish_many(broker: &TestBroker, topic: &str, count: usize) {
    let mut publisher = v4::connect(broker.addr, &common::unique_id("many")).await;
    for i in 0..count {
        publisher
            .publish(
                topic,
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    publisher.disconnect().await;
}

/// Reads PUBLISH packets until `quiet` passes without one.
async fn drain_publishes(raw: &mut RawClient, quiet: Duration) -> Vec<codec::Publish> {
    let mut got = Vec::new();
    loop {
        match raw.recv_within(quiet).await {
            Ok(Packet::Publish(p)) => got.push(p),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(common::RawEnd::TimedOut) => return got,
            Err(end) => panic!("connection ended: {end:?}"),
        }
    }
}

#[tokio::test]
async fn a_subscriber_that_does_not_ack_gets_at_most_max_inflight_messages_mqtt_4_9_0_2() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_inflight = 5).await;
    let mut sub = RawClient::connected(broker.addr, ProtocolVersion::V311, "window").await;
    sub.subscribe(1, "window/t", codec::QoS::AtLeastOnce).await;
    publish_many(&broker, "window/t", 20).await;
    let first = drain_publishes(&mut sub, QUIET).await;
    assert_eq!(first.len(), 5, "in-flight window of 5");
    // Acknowledging two opens the window by two, in order.
    for p in &first[..2] {
        sub.send(&Packet::PubAck(PubResponse::new(p.packet_id, 0)))
            .await;
    }
    let next = drain_publishes(&mut sub, QUIET).await;
    assert_eq!(next.len(), 2);
    assert_eq!(&next[0].payload[..], b"5");
    assert_eq!(&next[1].payload[..], b"6");
    // Acknowledging everything gets the rest.
    for p in first[2..].iter().chain(&next) {
        sub.send(&Packet::PubAck(PubResponse::new(p.packet_id, 0)))
            .await;
    }
    let mut total = first.len() + next.len();
    while total < 20 {
        let batch = drain_publishes(&mut sub, QUIET).await;
        assert!(!batch.is_empty(), "stalled after {total} messages");
        assert!(batch.len() <= 5);
        for p in &batch {
            sub.send(&Packet::PubAck(PubResponse::new(p.packet_id, 0)))
                .await;
        }
        total += batch.len();
    }
    assert_eq!(total, 20);
    broker.stop().await;
}

#[tokio::test]
async fn qos0_messages_are_not_held_back_by_the_in_flight_window() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_inflight = 2).await;
    let mut sub = RawClient::connected(broker.addr, ProtocolVersion::V311, "window0").await;
    sub.subscribe(1, "window0/t", codec::QoS::AtLeastOnce).await;
    let mut publisher = v4::connect(broker.addr, "window0-pub").await;
    for i in 0..10 {
        publisher
            .publish(
                "window0/t",
                v4::QoS::AtMostOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    let got = drain_publishes(&mut sub, QUIET).await;
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|p| p.qos == codec::QoS::AtMostOnce));
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp_0x92_in_v5() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "unknown-rel").await;
    raw.send(&Packet::PubRel(PubResponse::new(99, 0))).await;
    assert_eq!(
        raw.expect().await,
        Packet::PubComp(PubResponse::new(99, 0x92))
    );
    raw.ping().await;
    let mut raw4 = RawClient::connected(broker.addr, ProtocolVersion::V311, "unknown-rel4").await;
    raw4.send(&Packet::PubRel(PubResponse::new(99, 0))).await;
    match raw4.expect().await {
        Packet::PubComp(comp) => assert_eq!(comp.packet_id, 99),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    broker.stop().await;
}
