//! Persistent sessions: subscriptions and offline QoS 1/2 messages survive a disconnect
//! (3.1.1 clean session false, v5 clean start false with a session expiry), clean start
//! discards them, v5 sessions expire, and unacknowledged messages are resent on reconnect.

mod common;

use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Disconnect, Packet, Properties, ProtocolVersion, PubResponse};
use std::time::Duration;

fn persistent4(o: &mut v4::MqttOptions) {
    o.set_clean_session(false);
}

fn persistent5(expiry: u32) -> impl FnOnce(&mut v5::MqttOptions) {
    move |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_connect_properties(v5::session_expiry(expiry));
    }
}

async fn publish4(broker: &TestBroker, topic: &str, qos: v4::QoS, payload: &[u8]) {
    let mut publisher = v4::connect(broker.addr, &common::unique_id("pub")).await;
    publisher.publish(topic, qos, false, payload).await;
    publisher.disconnect().await;
}

#[tokio::test]
async fn a_3_1_1_persistent_session_keeps_subscriptions_and_queues_qos1_and_qos2_mqtt_3_1_2_4() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect_with(broker.addr, "persist4", persistent4)
        .await
        .unwrap();
    sub.subscribe("persist4/#", v4::QoS::ExactlyOnce).await;
    sub.disconnect().await;

    publish4(&broker, "persist4/q1", v4::QoS::AtLeastOnce, b"one").await;
    publish4(&broker, "persist4/q2", v4::QoS::ExactlyOnce, b"two").await;

    let mut sub = v4::connect_with(broker.addr, "persist4", persistent4)
        .await
        .unwrap();
    assert!(sub.connack.session_present);
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"one"[..], v4::QoS::AtLeastOnce)
    );
    assert_eq!(
        (&second.payload[..], second.qos),
        (&b"two"[..], v4::QoS::ExactlyOnce)
    );
    // The subscription survived: new messages arrive without subscribing again.
    publish4(&broker, "persist4/live", v4::QoS::AtLeastOnce, b"live").await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"live");
    sub.expect_no_publish(QUIET).await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos0_messages_are_not_queued_for_offline_sessions_by_default() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect_with(broker.addr, "noq0", persistent4)
        .await
        .unwrap();
    sub.subscribe("noq0/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    publish4(&broker, "noq0/t", v4::QoS::AtMostOnce, b"zero").await;
    publish4(&broker, "noq0/t", v4::QoS::AtLeastOnce, b"one").await;
    let mut sub = v4::connect_with(broker.addr, "noq0", persistent4)
        .await
        .unwrap();
    assert_eq!(&sub.recv_publish().await.payload[..], b"one");
    sub.expect_no_publish(QUIET).await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos0_messages_are_queued_for_offline_sessions_when_configured() {
    let broker = TestBroker::start_with(|c| c.mqtt.queue_qos0_offline = true).await;
    let mut sub = v4::connect_with(broker.addr, "q0", persistent4)
        .await
        .unwrap();
    sub.subscribe("q0/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    publish4(&broker, "q0/t", v4::QoS::AtMostOnce, b"zero").await;
    let mut sub = v4::connect_with(broker.addr, "q0", persistent4)
        .await
        .unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(
        (&got.payload[..], got.qos),
        (&b"zero"[..], v4::QoS::AtMostOnce)
    );
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_v5_session_with_expiry_keeps_subscriptions_and_queues_messages_mqtt_3_1_2_11() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect_with(broker.addr, "persist5", persistent5(60))
        .await
        .unwrap();
    sub.subscribe("persist5/#", v5::QoS::ExactlyOnce).await;
    sub.disconnect().await;

    let mut publisher = v5::connect(broker.addr, "persist5-pub").await;
    publisher
        .publish("persist5/q1", v5::QoS::AtLeastOnce, false, b"one")
        .await;
    publisher
        .publish("persist5/q2", v5::QoS::ExactlyOnce, false, b"two")
        .await;

    let mut sub = v5::connect_with(broker.addr, "persist5", persistent5(60))
        .await
        .unwrap();
    assert!(sub.connack.session_present);
    assert_eq!(&sub.recv_publish().await.payload[..], b"one");
    assert_eq!(&sub.recv_publish().await.payload[..], b"two");
    publisher
        .publish("persist5/live", v5::QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"live");
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn clean_session_discards_the_stored_session_and_its_queue_mqtt_3_1_2_6() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect_with(broker.addr, "discard4", persistent4)
        .await
        .unwrap();
    sub.subscribe("discard4/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    publish4(&broker, "discard4/t", v4::QoS::AtLeastOnce, b"queued").await;

    let mut clean = v4::connect(broker.addr, "discard4").await;
    assert!(!clean.connack.session_present);
    clean.expect_no_publish(QUIET).await;
    publish4(&broker, "discard4/t", v4::QoS::AtLeastOnce, b"after").await;
    clean.expect_no_publish(QUIET).await;
    clean.disconnect().await;
    // And the clean session ended with its connection: nothing is stored now either.
    let again = v4::connect_with(broker.addr, "discard4", persistent4)
        .await
        .unwrap();
    assert!(!again.connack.session_present);
    again.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_clean_start_discards_the_session_mqtt_3_1_2_4() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect_with(broker.addr, "discard5", persistent5(60))
        .await
        .unwrap();
    sub.subscribe("discard5/t", v5::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v5::connect(broker.addr, "discard5-pub").await;
    publisher
        .publish("discard5/t", v5::QoS::AtLeastOnce, false, b"queued")
        .await;

    let mut clean = v5::connect_with(broker.addr, "discard5", |o| {
        o.set_clean_start(true);
        o.set_connect_properties(v5::session_expiry(60));
    })
    .await
    .unwrap();
    assert!(!clean.connack.session_present);
    clean.expect_no_publish(QUIET).await;
    publisher
        .publish("discard5/t", v5::QoS::AtLeastOnce, false, b"after")
        .await;
    clean.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    clean.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_v5_session_with_expiry_1s_is_gone_after_2s_offline_mqtt_3_1_2_23() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect_with(broker.addr, "expire5", persistent5(1))
        .await
        .unwrap();
    sub.subscribe("expire5/t", v5::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut publisher = v5::connect(broker.addr, "expire5-pub").await;
    publisher
        .publish("expire5/t", v5::QoS::AtLeastOnce, false, b"late")
        .await;
    let mut sub = v5::connect_with(broker.addr, "expire5", persistent5(1))
        .await
        .unwrap();
    assert!(!sub.connack.session_present, "the session expired");
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_v5_session_within_its_expiry_is_still_there_mqtt_3_1_2_23() {
    let broker = TestBroker::start().await;
    let sub = v5::connect_with(broker.addr, "notyet5", persistent5(3))
        .await
        .unwrap();
    sub.disconnect().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let sub = v5::connect_with(broker.addr, "notyet5", persistent5(3))
        .await
        .unwrap();
    assert!(sub.connack.session_present);
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_v5_session_without_expiry_ends_with_the_connection_mqtt_3_1_2_11() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect_with(broker.addr, "zero5", |o| {
        o.set_clean_start(false);
    })
    .await
    .unwrap();
    sub.subscribe("zero5/t", v5::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let sub = v5::connect_with(broker.addr, "zero5", |o| {
        o.set_clean_start(false);
    })
    .await
    .unwrap();
    assert!(!sub.connack.session_present);
    sub.disconnect().await;
    broker.stop().await;
}

fn v5_connect(client_id: &str, clean_start: bool, expiry: Option<u32>) -> codec::Connect {
    let mut connect = common::connect_packet(ProtocolVersion::V5, client_id);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = expiry;
    connect
}

fn disconnect_with_expiry(expiry: u32) -> Packet {
    Packet::Disconnect(Disconnect {
        reason_code: 0,
        properties: Properties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
    })
}

#[tokio::test]
async fn disconnect_can_shorten_the_session_expiry_to_zero_mqtt_3_14_2_2() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::connect(broker.addr, v5_connect("shorten", true, Some(60))).await;
    c.subscribe(1, "shorten/t", codec::QoS::AtLeastOnce).await;
    c.send(&disconnect_with_expiry(0)).await;
    c.expect_closed().await;
    let (_c, connack) =
        RawClient::connect(broker.addr, v5_connect("shorten", false, Some(60))).await;
    assert!(
        !connack.session_present,
        "expiry 0 on DISCONNECT ends the session"
    );
    broker.stop().await;
}

#[tokio::test]
async fn disconnect_may_not_turn_a_zero_session_expiry_into_non_zero_mqtt_3_14_2_2() {
    let broker = TestBroker::start().await;
    let (mut c, _) = RawClient::connect(broker.addr, v5_connect("lengthen", true, None)).await;
    c.send(&disconnect_with_expiry(60)).await;
    let packets = c.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x82),
        "{packets:?}"
    );
    let (_c, connack) =
        RawClient::connect(broker.addr, v5_connect("lengthen", false, Some(60))).await;
    assert!(!connack.session_present);
    broker.stop().await;
}

async fn unacked_qos1_is_resent_with_dup(version: ProtocolVersion) {
    let broker = TestBroker::start().await;
    let id = common::unique_id("dup");
    let mut connect = common::connect_packet(version, &id);
    connect.clean_start = false;
    if version.is_v5() {
        connect.properties.session_expiry_interval = Some(60);
    }
    let (mut sub, _) = RawClient::connect(broker.addr, connect.clone()).await;
    sub.subscribe(1, "dup/t", codec::QoS::AtLeastOnce).await;
    publish4(&broker, "dup/t", v4::QoS::AtLeastOnce, b"ack me").await;
    let first = sub.expect_publish().await;
    assert!(!first.dup);
    drop(sub); // no PUBACK, no DISCONNECT

    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut sub, connack) = RawClient::connect(broker.addr, connect).await;
    assert!(connack.session_present);
    let again = sub.expect_publish().await;
    assert!(again.dup, "a resent PUBLISH has DUP set [MQTT-3.3.1-1]");
    assert_eq!(again.packet_id, first.packet_id, "with the same packet id");
    assert_eq!(&again.payload[..], b"ack me");
    sub.send(&Packet::PubAck(PubResponse::new(again.packet_id, 0)))
        .await;
    sub.expect_silence(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn unacknowledged_qos1_is_resent_with_dup_on_reconnect_v311_mqtt_4_4_0_1() {
    unacked_qos1_is_resent_with_dup(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn unacknowledged_qos1_is_resent_with_dup_on_reconnect_v5_mqtt_4_4_0_1() {
    unacked_qos1_is_resent_with_dup(ProtocolVersion::V5).await;
}

#[tokio::test]
async fn pubrel_is_resent_after_reconnect_when_pubcomp_was_missing_mqtt_4_4_0_1() {
    let broker = TestBroker::start().await;
    let mut connect = common::connect_packet(ProtocolVersion::V311, "rel-resend");
    connect.clean_start = false;
    let (mut sub, _) = RawClient::connect(broker.addr, connect.clone()).await;
    sub.subscribe(1, "rel/t", codec::QoS::ExactlyOnce).await;
    publish4(&broker, "rel/t", v4::QoS::ExactlyOnce, b"two").await;
    let publish = sub.expect_publish().await;
    sub.send(&Packet::PubRec(PubResponse::new(publish.packet_id, 0)))
        .await;
    match sub.expect().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, publish.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(sub); // no PUBCOMP

    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut sub, connack) = RawClient::connect(broker.addr, connect).await;
    assert!(connack.session_present);
    match sub.expect().await {
        Packet::PubRel(rel) => assert_eq!(rel.packet_id, publish.packet_id),
        other => panic!("expected the PUBREL again (not the PUBLISH), got {other:?}"),
    }
    sub.send(&Packet::PubComp(PubResponse::new(publish.packet_id, 0)))
        .await;
    sub.expect_silence(QUIET).await;
    broker.stop().await;
}

#[tokio::test]
async fn offline_messages_keep_their_order_mqtt_4_6_0_2() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect_with(broker.addr, "order-offline", persistent4)
        .await
        .unwrap();
    sub.subscribe("oo/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v4::connect(broker.addr, "oo-pub").await;
    for i in 0..50u32 {
        let qos = if i % 2 == 0 {
            v4::QoS::AtLeastOnce
        } else {
            v4::QoS::ExactlyOnce
        };
        publisher
            .publish("oo/t", qos, false, &i.to_be_bytes())
            .await;
    }
    publisher.disconnect().await;
    let mut sub = v4::connect_with(broker.addr, "order-offline", persistent4)
        .await
        .unwrap();
    for i in 0..50u32 {
        assert_eq!(&sub.recv_publish().await.payload[..], i.to_be_bytes());
    }
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn qos2_is_exactly_once_across_a_publisher_reconnect_mqtt_4_3_3() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "eo-across-sub").await;
    sub.subscribe("eox/t", v4::QoS::ExactlyOnce).await;
    let mut connect = common::connect_packet(ProtocolVersion::V311, "eo-across");
    connect.clean_start = false;
    let (mut publisher, _) = RawClient::connect(broker.addr, connect.clone()).await;
    let publish = common::publish_packet("eox/t", codec::QoS::ExactlyOnce, 11, b"once");
    publisher.send(&publish).await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubRec(PubResponse::new(11, 0))
    );
    drop(publisher); // lost before PUBREL

    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut publisher, connack) = RawClient::connect(broker.addr, connect).await;
    assert!(connack.session_present);
    // The client does not know whether PUBREC arrived: it sends the PUBLISH again (DUP),
    // then PUBREL. The broker must not deliver a second copy [MQTT-4.3.3-10].
    let mut again = publish.clone();
    if let Packet::Publish(p) = &mut again {
        p.dup = true;
    }
    publisher.send(&again).await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubRec(PubResponse::new(11, 0))
    );
    publisher
        .send(&Packet::PubRel(PubResponse::new(11, 0)))
        .await;
    assert_eq!(
        publisher.expect().await,
        Packet::PubComp(PubResponse::new(11, 0))
    );
    assert_eq!(&sub.recv_publish().await.payload[..], b"once");
    sub.expect_no_publish(QUIET).await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn in_flight_messages_move_to_the_connection_that_takes_the_session_over_mqtt_4_4_0_1() {
    let broker = TestBroker::start().await;
    let mut connect = common::connect_packet(ProtocolVersion::V311, "inflight-twin");
    connect.clean_start = false;
    let (mut first, _) = RawClient::connect(broker.addr, connect.clone()).await;
    first.subscribe(1, "ift/t", codec::QoS::AtLeastOnce).await;
    publish4(&broker, "ift/t", v4::QoS::AtLeastOnce, b"unacked").await;
    let original = first.expect_publish().await;
    // A second connection takes over while the first has not acknowledged.
    let (mut second, connack) = RawClient::connect(broker.addr, connect).await;
    assert!(connack.session_present);
    first.expect_closed().await;
    let resent = second.expect_publish().await;
    assert!(resent.dup);
    assert_eq!(resent.packet_id, original.packet_id);
    assert_eq!(&resent.payload[..], b"unacked");
    second
        .send(&Packet::PubAck(PubResponse::new(resent.packet_id, 0)))
        .await;
    second.expect_silence(QUIET).await;
    broker.stop().await;
}
