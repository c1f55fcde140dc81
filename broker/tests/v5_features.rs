//! MQTT 5 features: subscription identifiers, topic aliases in both directions, maximum
//! packet size both ways, message expiry, property pass-through and receive maximum.

mod common;

use bytes::Bytes;
use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Packet, ProtocolVersion, PubResponse};
use std::time::Duration;

#[tokio::test]
async fn overlapping_subscriptions_give_one_message_carrying_both_identifiers_mqtt_3_3_4_3() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, "subid").await;
    sub.subscribe_with_id("sid/+", v5::QoS::AtLeastOnce, 1)
        .await;
    sub.subscribe_with_id("sid/#", v5::QoS::AtMostOnce, 2).await;
    let mut publisher = v5::connect(broker.addr, "subid-pub").await;
    publisher
        .publish("sid/x", v5::QoS::AtLeastOnce, false, b"x")
        .await;
    let got = sub.recv_publish().await;
    let mut ids = got.properties.expect("properties").subscription_identifiers;
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(got.qos, v5::QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_subscription_identifier_is_returned_only_for_subscriptions_that_have_one_mqtt_3_3_4_4() {
    let broker = TestBroker::start().await;
    let mut with_id = v5::connect(broker.addr, "sid-with").await;
    with_id
        .subscribe_with_id("sid2/a", v5::QoS::AtMostOnce, 268_435_455)
        .await;
    let mut without = v5::connect(broker.addr, "sid-without").await;
    without.subscribe("sid2/a", v5::QoS::AtMostOnce).await;
    let mut publisher = v5::connect(broker.addr, "sid2-pub").await;
    publisher
        .publish("sid2/a", v5::QoS::AtLeastOnce, false, b"x")
        .await;
    let got = with_id.recv_publish().await;
    let ids = got
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert_eq!(
        ids,
        vec![268_435_455],
        "the largest identifier survives the round trip"
    );
    let got = without.recv_publish().await;
    let ids = got
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert!(
        ids.is_empty(),
        "no identifier for a subscription without one: {ids:?}"
    );
    for c in [with_id, without, publisher] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn resubscribing_without_an_identifier_removes_it_mqtt_3_8_4_3() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, "sid-replace").await;
    sub.subscribe_with_id("sid3/a", v5::QoS::AtMostOnce, 7)
        .await;
    sub.subscribe("sid3/a", v5::QoS::AtMostOnce).await;
    let mut publisher = v5::connect(broker.addr, "sid3-pub").await;
    publisher
        .publish("sid3/a", v5::QoS::AtLeastOnce, false, b"x")
        .await;
    let got = sub.recv_publish().await;
    let ids = got
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert!(
        ids.is_empty(),
        "the replacing subscription has no identifier: {ids:?}"
    );
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_carry_the_subscription_identifier_mqtt_3_3_4_3() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "sid-ret-pub").await;
    publisher
        .publish("sidret/a", v5::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v5::connect(broker.addr, "sid-ret").await;
    sub.subscribe_with_id("sidret/#", v5::QoS::AtLeastOnce, 42)
        .await;
    let got = sub.recv_publish().await;
    assert!(got.retain);
    assert_eq!(
        got.properties.expect("properties").subscription_identifiers,
        vec![42]
    );
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

fn alias(n: u16) -> v5::PublishProperties {
    v5::PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_topic_alias_set_by_the_client_stands_for_its_topic_mqtt_3_3_2_12() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "alias-sub").await;
    sub.subscribe("alias/#", v4::QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(broker.addr, "alias-pub").await;
    publisher
        .publish_with(
            "alias/long/topic",
            v5::QoS::AtLeastOnce,
            false,
            b"1",
            Some(alias(1)),
        )
        .await;
    publisher
        .publish_with("", v5::QoS::AtLeastOnce, false, b"2", Some(alias(1)))
        .await;
    // Re-pointing the alias to another topic [MQTT-3.3.2-12].
    publisher
        .publish_with(
            "alias/other",
            v5::QoS::AtMostOnce,
            false,
            b"3",
            Some(alias(1)),
        )
        .await;
    publisher
        .publish_with("", v5::QoS::ExactlyOnce, false, b"4", Some(alias(1)))
        .await;
    let got: Vec<(String, Bytes)> = [
        sub.recv_publish().await,
        sub.recv_publish().await,
        sub.recv_publish().await,
        sub.recv_publish().await,
    ]
    .into_iter()
    .map(|p| (p.topic, p.payload))
    .collect();
    assert_eq!(
        got,
        [
            ("alias/long/topic".to_string(), Bytes::from_static(b"1")),
            ("alias/long/topic".to_string(), Bytes::from_static(b"2")),
            ("alias/other".to_string(), Bytes::from_static(b"3")),
            ("alias/other".to_string(), Bytes::from_static(b"4")),
        ]
    );
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

fn raw_publish_with_alias(topic: &str, alias: u16) -> Packet {
    let mut publish = common::publish_packet(topic, codec::QoS::AtMostOnce, 0, b"x");
    if let Packet::Publish(p) = &mut publish {
        p.properties.topic_alias = Some(alias);
    }
    publish
}

/// Sends `packet` and checks that the connection is closed with one of `allowed`.
async fn alias_violation(packet: Packet, allowed: &[u8]) {
    let broker = TestBroker::start_with(|c| c.mqtt.topic_alias_maximum = 4).await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "bad-alias").await;
    let mut bystander = RawClient::connected(broker.addr, ProtocolVersion::V5, "bystander").await;
    raw.send(&packet).await;
    let packets = raw.expect_closed().await;
    let reason = common::disconnect_reason(&packets);
    assert!(
        reason.is_some_and(|r| allowed.contains(&r)),
        "expected DISCONNECT with one of {allowed:02x?}: {packets:?}"
    );
    bystander.ping().await;
    broker.stop().await;
}

// The specification gives 0x94 for an alias above the maximum and names no code for alias
// 0 or an alias never mapped: brokers answer those with 0x82 (Protocol Error) or 0x94.

#[tokio::test]
async fn topic_alias_0_closes_the_connection_mqtt_3_3_2_8() {
    alias_violation(raw_publish_with_alias("a", 0), &[0x82, 0x94]).await;
}

#[tokio::test]
async fn a_topic_alias_above_the_maximum_is_refused_with_0x94_mqtt_3_3_2_10() {
    alias_violation(raw_publish_with_alias("a", 5), &[0x94]).await;
}

#[tokio::test]
async fn an_unknown_topic_alias_with_an_empty_topic_closes_the_connection_mqtt_3_3_4() {
    alias_violation(raw_publish_with_alias("", 3), &[0x82, 0x94]).await;
}

#[tokio::test]
async fn the_broker_uses_topic_aliases_up_to_the_clients_maximum_mqtt_3_3_2_17() {
    let broker = TestBroker::start().await;
    let mut connect = common::connect_packet(ProtocolVersion::V5, "alias-in");
    connect.properties.topic_alias_maximum = Some(2);
    let (mut raw, _) = RawClient::connect(broker.addr, connect).await;
    raw.subscribe(1, "ta/#", codec::QoS::AtMostOnce).await;
    let mut plain = RawClient::connected(broker.addr, ProtocolVersion::V5, "alias-none").await;
    plain.subscribe(1, "ta/#", codec::QoS::AtMostOnce).await;
    let mut publisher = v5::connect(broker.addr, "alias-out-pub").await;
    let topics = ["ta/a", "ta/a", "ta/b", "ta/c", "ta/c", "ta/b"];
    for (i, topic) in topics.iter().enumerate() {
        publisher
            .publish(
                topic,
                v5::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    // Resolve what the client received the way a client must.
    let mut known = std::collections::HashMap::new();
    let mut aliases_used = 0;
    for (i, topic) in topics.iter().enumerate() {
        let p = raw.expect_publish().await;
        assert_eq!(&p.payload[..], format!("{i}").as_bytes());
        let resolved = match p.properties.topic_alias {
            Some(alias) => {
                assert!(
                    (1..=2).contains(&alias),
                    "alias {alias} above the client's maximum"
                );
                aliases_used += 1;
                if p.topic.is_empty() {
                    known.get(&alias).cloned().expect("alias was set before")
                } else {
                    known.insert(alias, p.topic.to_string());
                    p.topic.to_string()
                }
            }
            None => p.topic.to_string(),
        };
        assert_eq!(resolved, *topic, "message {i}");
        let plain_p = plain.expect_publish().await;
        assert_eq!(&plain_p.topic[..], *topic);
        assert_eq!(
            plain_p.properties.topic_alias, None,
            "no aliases without a maximum"
        );
    }
    assert!(aliases_used > 0, "the broker never used an alias");
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_rumqttc_client_with_topic_alias_maximum_gets_every_topic_right() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect_with(broker.addr, "alias-rumqttc", |o| {
        o.set_topic_alias_max(Some(3));
    })
    .await
    .unwrap();
    sub.subscribe("tr/#", v5::QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(broker.addr, "alias-rumqttc-pub").await;
    let topics: Vec<String> = (0..20).map(|i| format!("tr/{}", i % 5)).collect();
    for topic in &topics {
        publisher
            .publish(topic, v5::QoS::AtLeastOnce, false, topic.as_bytes())
            .await;
    }
    for topic in &topics {
        let got = sub.recv_publish().await;
        assert_eq!(v5::topic(&got), topic);
        assert_eq!(&got.payload[..], topic.as_bytes());
    }
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

async fn oversize_publish_closes(version: ProtocolVersion) {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    let mut bystander = v4::connect(broker.addr, "big-bystander").await;
    bystander.subscribe("big/#", v4::QoS::AtLeastOnce).await;
    let mut raw = RawClient::connected(broker.addr, version, "big").await;
    raw.send(&common::publish_packet(
        "big/t",
        codec::QoS::AtLeastOnce,
        1,
        &[7; 2000],
    ))
    .await;
    let packets = raw.expect_closed().await;
    if version.is_v5() {
        assert_eq!(
            common::disconnect_reason(&packets),
            Some(0x95),
            "{packets:?}"
        );
    } else {
        assert!(packets.is_empty(), "{packets:?}");
    }
    // Just under the limit still works, for everyone else.
    let mut ok = RawClient::connected(broker.addr, version, "small").await;
    ok.send(&common::publish_packet(
        "big/t",
        codec::QoS::AtLeastOnce,
        1,
        &[7; 900],
    ))
    .await;
    assert!(matches!(ok.expect().await, Packet::PubAck(_)));
    assert_eq!(bystander.recv_publish().await.payload.len(), 900);
    bystander.expect_no_publish(QUIET).await;
    bystander.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_packet_above_max_packet_size_closes_a_v5_connection_with_0x95_mqtt_3_2_2_15() {
    oversize_publish_closes(ProtocolVersion::V5).await;
}

#[tokio::test]
async fn a_packet_above_max_packet_size_closes_a_3_1_1_connection() {
    oversize_publish_closes(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn messages_above_the_clients_maximum_packet_size_are_not_sent_to_it_mqtt_3_1_2_25() {
    let broker = TestBroker::start().await;
    let mut small = v5::connect_with(broker.addr, "small-max", |o| {
        o.set_max_packet_size(Some(200));
    })
    .await
    .unwrap();
    small.subscribe("mps/#", v5::QoS::AtLeastOnce).await;
    let mut big = v5::connect(broker.addr, "big-max").await;
    big.subscribe("mps/#", v5::QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(broker.addr, "mps-pub").await;
    publisher
        .publish("mps/t", v5::QoS::AtLeastOnce, false, &[1; 500])
        .await;
    publisher
        .publish("mps/t", v5::QoS::AtLeastOnce, false, &[2; 50])
        .await;
    assert_eq!(
        small.recv_publish().await.payload.len(),
        50,
        "the large one is skipped"
    );
    small.expect_no_publish(QUIET).await;
    assert!(small.still_open_after(Duration::from_millis(10)).await);
    assert_eq!(big.recv_publish().await.payload.len(), 500);
    assert_eq!(big.recv_publish().await.payload.len(), 50);
    assert!(
        common::counter(&broker.stats().dropped_too_large) >= 1,
        "the drop is counted"
    );
    for c in [small, big, publisher] {
        c.disconnect().await;
    }
    broker.stop().await;
}

fn expiring(secs: u32) -> v5::PublishProperties {
    v5::PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_expired_message_is_not_delivered_to_a_reconnecting_session_mqtt_3_3_2_5() {
    let broker = TestBroker::start().await;
    let resume = |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_connect_properties(v5::session_expiry(60));
    };
    let mut sub = v5::connect_with(broker.addr, "expiry-sub", resume)
        .await
        .unwrap();
    sub.subscribe("exp/#", v5::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v5::connect(broker.addr, "expiry-pub").await;
    publisher
        .publish_with(
            "exp/short",
            v5::QoS::AtLeastOnce,
            false,
            b"short",
            Some(expiring(1)),
        )
        .await;
    publisher
        .publish_with(
            "exp/long",
            v5::QoS::ExactlyOnce,
            false,
            b"long",
            Some(expiring(60)),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut sub = v5::connect_with(broker.addr, "expiry-sub", resume)
        .await
        .unwrap();
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"long");
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(1..=58)),
        "the forwarded expiry is what remains of 60 s [MQTT-3.3.2-6], got {left:?}"
    );
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn publish_properties_are_passed_through_unaltered_mqtt_3_3_2_17() {
    let broker = TestBroker::start().await;
    let mut sub = v5::connect(broker.addr, "props-sub").await;
    sub.subscribe("props/#", v5::QoS::AtLeastOnce).await;
    let mut sub4 = v4::connect(broker.addr, "props-sub4").await;
    sub4.subscribe("props/#", v4::QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(broker.addr, "props-pub").await;
    let properties = v5::PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("props/replies/42".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2, 255])),
        user_properties: vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("a".into(), "3".into()),
        ],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    publisher
        .publish_with(
            "props/t",
            v5::QoS::AtLeastOnce,
            false,
            b"{}",
            Some(properties.clone()),
        )
        .await;
    let got = sub.recv_publish().await;
    let p = got.properties.expect("properties");
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.response_topic, properties.response_topic);
    assert_eq!(p.correlation_data, properties.correlation_data);
    assert_eq!(p.content_type, properties.content_type);
    assert_eq!(
        p.user_properties, properties.user_properties,
        "user properties in order, duplicates kept [MQTT-3.3.2-18]"
    );
    // A 3.1.1 subscriber gets the same message without properties.
    assert_eq!(&sub4.recv_publish().await.payload[..], b"{}");
    publisher.disconnect().await;
    sub.disconnect().await;
    sub4.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn request_response_with_response_topic_and_correlation_data_mqtt_4_10() {
    let broker = TestBroker::start().await;
    let mut responder = v5::connect(broker.addr, "responder").await;
    responder
        .subscribe("service/requests", v5::QoS::AtLeastOnce)
        .await;
    let mut requester = v5::connect(broker.addr, "requester").await;
    requester
        .subscribe("requester/replies", v5::QoS::AtLeastOnce)
        .await;
    let request = v5::PublishProperties {
        response_topic: Some("requester/replies".into()),
        correlation_data: Some(Bytes::from_static(b"req-1")),
        ..Default::default()
    };
    requester
        .publish_with(
            "service/requests",
            v5::QoS::AtLeastOnce,
            false,
            b"ping",
            Some(request),
        )
        .await;
    let got = responder.recv_publish().await;
    let p = got.properties.expect("request properties");
    let reply = v5::PublishProperties {
        correlation_data: p.correlation_data.clone(),
        ..Default::default()
    };
    let reply_topic = p.response_topic.expect("response topic");
    responder
        .publish_with(
            &reply_topic,
            v5::QoS::AtLeastOnce,
            false,
            b"pong",
            Some(reply),
        )
        .await;
    let answer = requester.recv_publish().await;
    assert_eq!(&answer.payload[..], b"pong");
    assert_eq!(
        answer
            .properties
            .and_then(|p| p.correlation_data)
            .as_deref(),
        Some(&b"req-1"[..])
    );
    responder.disconnect().await;
    requester.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn the_broker_respects_the_clients_receive_maximum_mqtt_3_3_4_9() {
    let broker = TestBroker::start().await; // max_inflight 100
    let mut connect = common::connect_packet(ProtocolVersion::V5, "recv-max");
    connect.properties.receive_maximum = Some(3);
    let (mut sub, _) = RawClient::connect(broker.addr, connect).await;
    sub.subscribe(1, "rm/t", codec::QoS::ExactlyOnce).await;
    let mut publisher = v5::connect(broker.addr, "recv-max-pub").await;
    for i in 0..10 {
        let qos = if i % 2 == 0 {
            v5::QoS::AtLeastOnce
        } else {
            v5::QoS::ExactlyOnce
        };
        publisher
            .publish("rm/t", qos, false, format!("{i}").as_bytes())
            .await;
    }
    let mut unacked = Vec::new();
    for _ in 0..3 {
        unacked.push(sub.expect_publish().await);
    }
    sub.expect_silence(QUIET).await;
    // Completing one exchange frees one slot: a QoS 1 message by PUBACK.
    let first = unacked.remove(0);
    assert_eq!(first.qos, codec::QoS::AtLeastOnce);
    sub.send(&Packet::PubAck(PubResponse::new(first.packet_id, 0)))
        .await;
    let fourth = sub.expect_publish().await;
    assert_eq!(&fourth.payload[..], b"3");
    sub.expect_silence(QUIET).await;
    // A QoS 2 message only by PUBCOMP, not by PUBREC [MQTT-4.9.0-2].
    let second = unacked.remove(0);
    assert_eq!(second.qos, codec::QoS::ExactlyOnce);
    sub.send(&Packet::PubRec(PubResponse::new(second.packet_id, 0)))
        .await;
    assert!(matches!(sub.expect().await, Packet::PubRel(_)));
    sub.expect_silence(QUIET).await;
    sub.send(&Packet::PubComp(PubResponse::new(second.packet_id, 0)))
        .await;
    assert_eq!(&sub.expect_publish().await.payload[..], b"4");
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn more_unreleased_qos2_than_the_brokers_receive_maximum_is_refused_with_0x93() {
    let broker = TestBroker::start_with(|c| c.mqtt.receive_maximum = 2).await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "flood").await;
    for id in 1..=2 {
        raw.send(&common::publish_packet(
            "flood/t",
            codec::QoS::ExactlyOnce,
            id,
            b"x",
        ))
        .await;
        assert!(matches!(raw.expect().await, Packet::PubRec(_)));
    }
    raw.send(&common::publish_packet(
        "flood/t",
        codec::QoS::ExactlyOnce,
        3,
        b"x",
    ))
    .await;
    let packets = raw.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x93),
        "{packets:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn broker_shutdown_sends_v5_clients_disconnect_0x8b() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "shutdown").await;
    let stop = tokio::spawn(broker.stop());
    let packets = raw.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x8B),
        "{packets:?}"
    );
    common::within("shutdown", stop).await.unwrap();
}
