//! Bad input from the network (SPEC §11): each case closes only the offending connection
//! (v5 with DISCONNECT 0x81 / 0x82 / 0x90 / 0x95 where applicable), and a client connected
//! before keeps working.

mod common;

use common::{v4, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Packet, ProtocolVersion};
use std::time::Duration;

/// A subscriber connected before the bad input, and a way to prove it still works.
struct Bystander {
    sub: v4::Client,
}

impl Bystander {
    async fn new(broker: &TestBroker) -> Bystander {
        let mut sub = v4::connect(broker.addr, &common::unique_id("bystander")).await;
        sub.subscribe("bystander/t", v4::QoS::AtLeastOnce).await;
        Bystander { sub }
    }

    async fn still_works(mut self, broker: &TestBroker) {
        let mut publisher = v4::connect(broker.addr, &common::unique_id("probe")).await;
        publisher
            .publish("bystander/t", v4::QoS::AtLeastOnce, false, b"alive")
            .await;
        assert_eq!(&self.sub.recv_publish().await.payload[..], b"alive");
        publisher.disconnect().await;
        self.sub.disconnect().await;
    }
}

/// Connects with `version`, sends `bytes`, and checks that the broker closes the
/// connection, with DISCONNECT `expected` for v5 and without any packet for 3.1.1.
async fn closes_after(version: ProtocolVersion, bytes: &[u8], expected: u8) {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = RawClient::connected(broker.addr, version, &common::unique_id("bad")).await;
    raw.send_raw(bytes).await;
    let packets = raw.expect_closed().await;
    if version.is_v5() {
        assert_eq!(
            common::disconnect_reason(&packets),
            Some(expected),
            "{version:?} {bytes:02x?}: {packets:?}"
        );
    } else {
        assert!(packets.is_empty(), "3.1.1 gets no DISCONNECT: {packets:?}");
    }
    bystander.still_works(&broker).await;
    broker.stop().await;
}

async fn both_versions(make: impl Fn(ProtocolVersion) -> Vec<u8>, expected: u8) {
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        closes_after(version, &make(version), expected).await;
    }
}

fn publish_bytes(version: ProtocolVersion, topic: &str, qos: codec::QoS) -> Vec<u8> {
    common::encode(&common::publish_packet(topic, qos, 1, b"payload"), version)
}

/// Offset of the topic's first byte in a PUBLISH encoded by `publish_bytes`.
const TOPIC_AT: usize = 4;

#[tokio::test]
async fn garbage_before_connect_closes_the_connection() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0x00, 0x00, 0x00, 0x00][..],
        &[0xFF; 64][..],
        &[0x10, 0x00][..], // CONNECT with nothing in it
    ] {
        let mut raw = RawClient::open(broker.addr, ProtocolVersion::V5).await;
        raw.send_raw(garbage).await;
        let packets = raw.expect_closed().await;
        assert!(
            packets
                .iter()
                .all(|p| !matches!(p, Packet::ConnAck(a) if a.reason_code == 0)),
            "{garbage:02x?} was accepted: {packets:?}"
        );
    }
    bystander.still_works(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_first_packet_that_is_not_connect_closes_the_connection_mqtt_3_1_0_1() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let first_packets = [
        vec![0xC0, 0x00], // PINGREQ
        publish_bytes(ProtocolVersion::V311, "a", codec::QoS::AtMostOnce),
        common::encode(
            &common::subscribe_packet(1, "#", codec::QoS::AtMostOnce),
            ProtocolVersion::V311,
        ),
    ];
    for bytes in first_packets {
        let mut raw = RawClient::open(broker.addr, ProtocolVersion::V311).await;
        raw.send_raw(&bytes).await;
        let packets = raw.expect_closed().await;
        assert!(packets.is_empty(), "{bytes:02x?}: {packets:?}");
    }
    bystander.still_works(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_with_qos_3_is_malformed_mqtt_3_3_1_4() {
    both_versions(
        |v| {
            let mut bytes = publish_bytes(v, "a/b", codec::QoS::AtLeastOnce);
            bytes[0] = 0x36;
            bytes
        },
        0x81,
    )
    .await;
}

#[tokio::test]
async fn dup_on_a_qos0_publish_is_malformed_mqtt_3_3_1_2() {
    both_versions(
        |v| {
            let mut bytes = publish_bytes(v, "a/b", codec::QoS::AtMostOnce);
            bytes[0] |= 0x08;
            bytes
        },
        0x81,
    )
    .await;
}

#[tokio::test]
async fn reserved_fixed_header_flags_are_malformed_mqtt_2_2_2_2() {
    // SUBSCRIBE must have flags 0010 [MQTT-3.8.1-1].
    both_versions(
        |v| {
            let mut bytes =
                common::encode(&common::subscribe_packet(1, "a", codec::QoS::AtMostOnce), v);
            bytes[0] = 0x80;
            bytes
        },
        0x81,
    )
    .await;
    // PINGREQ with a flag bit set.
    both_versions(|_| vec![0xC1, 0x00], 0x81).await;
}

#[tokio::test]
async fn a_remaining_length_of_more_than_four_bytes_is_malformed_mqtt_1_5_5() {
    both_versions(|_| vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 0x81).await;
}

#[tokio::test]
async fn a_remaining_length_above_max_packet_size_is_refused_before_the_body_arrives() {
    // 2,097,151 bytes announced, nothing sent: the header alone is enough to refuse.
    both_versions(|_| vec![0x30, 0xFF, 0xFF, 0x7F], 0x95).await;
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error_mqtt_3_1_0_2() {
    both_versions(
        |v| {
            common::encode(
                &Packet::Connect(Box::new(common::connect_packet(v, "again"))),
                v,
            )
        },
        0x82,
    )
    .await;
}

#[tokio::test]
async fn packets_only_a_server_sends_are_protocol_errors() {
    let connack = |v| {
        common::encode(
            &Packet::ConnAck(codec::ConnAck {
                session_present: false,
                reason_code: 0,
                properties: Default::default(),
            }),
            v,
        )
    };
    both_versions(connack, 0x82).await;
    both_versions(|_| vec![0xD0, 0x00], 0x82).await; // PINGRESP
}

#[tokio::test]
async fn an_invalid_utf8_topic_is_malformed_mqtt_1_5_4_1() {
    both_versions(
        |v| {
            let mut bytes = publish_bytes(v, "ab", codec::QoS::AtMostOnce);
            bytes[TOPIC_AT] = 0xC3;
            bytes[TOPIC_AT + 1] = 0x28;
            bytes
        },
        0x81,
    )
    .await;
}

#[tokio::test]
async fn a_nul_character_in_a_topic_is_malformed_mqtt_1_5_4_2() {
    both_versions(
        |v| {
            let mut bytes = publish_bytes(v, "ab", codec::QoS::AtMostOnce);
            bytes[TOPIC_AT + 1] = 0x00;
            bytes
        },
        0x81,
    )
    .await;
}

#[tokio::test]
async fn a_wildcard_in_a_publish_topic_is_refused_with_0x90_mqtt_3_3_2_2() {
    both_versions(
        |v| {
            let mut bytes = publish_bytes(v, "a/b", codec::QoS::AtMostOnce);
            bytes[TOPIC_AT + 2] = b'+';
            bytes
        },
        0x90,
    )
    .await;
}

#[tokio::test]
async fn a_topic_length_beyond_the_packet_is_malformed() {
    both_versions(
        |v| {
            let mut bytes = publish_bytes(v, "ab", codec::QoS::AtMostOnce);
            bytes[TOPIC_AT - 1] = 200;
            bytes
        },
        0x81,
    )
    .await;
}

#[tokio::test]
async fn topics_beyond_the_configured_limits_are_refused() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_topic_levels = 4).await;
    let bystander = Bystander::new(&broker).await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "levels").await;
    // A filter with too many levels is refused in SUBACK; the connection stays.
    assert_eq!(
        raw.subscribe(1, "a/b/c/d/e", codec::QoS::AtMostOnce).await,
        vec![0x8F]
    );
    raw.send(&common::publish_packet(
        "a/b/c/d/e",
        codec::QoS::AtMostOnce,
        0,
        b"x",
    ))
    .await;
    let packets = raw.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x90),
        "{packets:?}"
    );
    bystander.still_works(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_subscription_identifier_of_0_is_a_protocol_error_mqtt_3_8_2_1() {
    let mut subscribe = common::subscribe_packet(1, "a", codec::QoS::AtMostOnce);
    if let Packet::Subscribe(s) = &mut subscribe {
        s.properties.subscription_identifiers = vec![1];
    }
    let mut bytes = common::encode(&subscribe, ProtocolVersion::V5);
    // [0x82, len, id(2), props len, 0x0B, 1, ...]: set the identifier's value to 0.
    assert_eq!(bytes[5], 0x0B);
    bytes[6] = 0;
    closes_after(ProtocolVersion::V5, &bytes, 0x82).await;
}

#[tokio::test]
async fn a_3_1_1_password_without_a_user_name_is_refused_mqtt_3_1_2_22() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    // CONNECT "MQTT" 4, flags: password + clean session, keep-alive 30, id "p", password "pw".
    let connect = [
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 30, 0, 1, b'p', 0, 2, b'p', b'w',
    ];
    assert_eq!(connect.len(), 2 + 17);
    let mut raw = RawClient::open(broker.addr, ProtocolVersion::V311).await;
    raw.send_raw(&connect).await;
    let packets = raw.expect_closed().await;
    assert!(
        packets
            .iter()
            .all(|p| !matches!(p, Packet::ConnAck(a) if a.reason_code == 0)),
        "accepted: {packets:?}"
    );
    bystander.still_works(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_truncated_packet_followed_by_close_harms_no_one() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    for version in [ProtocolVersion::V311, ProtocolVersion::V5] {
        let mut raw = RawClient::connected(broker.addr, version, "truncated").await;
        let bytes = common::encode(
            &common::publish_packet("bystander/t", codec::QoS::AtLeastOnce, 1, &[9; 100]),
            version,
        );
        raw.send_raw(&bytes[..bytes.len() / 2]).await;
        drop(raw);
    }
    // Half a CONNECT, then close.
    let mut raw = RawClient::open(broker.addr, ProtocolVersion::V311).await;
    let connect = common::encode(
        &Packet::Connect(Box::new(common::connect_packet(
            ProtocolVersion::V311,
            "half",
        ))),
        ProtocolVersion::V311,
    );
    raw.send_raw(&connect[..connect.len() - 3]).await;
    drop(raw);
    common::eventually(
        "the truncated connections to be closed",
        Duration::from_secs(2),
        || common::counter(&broker.stats().connections_current) == 1,
    )
    .await;
    // The half message was never delivered.
    let Bystander { mut sub } = bystander;
    sub.expect_no_publish(QUIET).await;
    Bystander { sub }.still_works(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_stalled_partial_connect_is_closed_at_the_connect_timeout() {
    let broker = TestBroker::start_with(|c| c.mqtt.connect_timeout_secs = 1).await;
    let mut raw = RawClient::open(broker.addr, ProtocolVersion::V311).await;
    raw.send_raw(&[0x10, 0x20, 0x00]).await; // a CONNECT header announcing 32 bytes, then nothing
    let packets = raw.expect_closed_within(Duration::from_secs(3)).await;
    assert!(packets.is_empty());
    broker.stop().await;
}

#[tokio::test]
async fn pseudo_random_bytes_after_connect_never_take_the_broker_down() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    // A fixed xorshift sequence, so a failure is reproducible.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..60 {
        let version = if round % 2 == 0 {
            ProtocolVersion::V311
        } else {
            ProtocolVersion::V5
        };
        let mut raw = RawClient::connected(broker.addr, version, &format!("fuzz{round}")).await;
        let len = (next() % 300) as usize + 1;
        let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        raw.send_raw(&bytes).await;
        // Either the broker closes the connection or it is still answering.
        match raw.recv_within(Duration::from_millis(200)).await {
            Err(common::RawEnd::Undecodable(error)) => {
                panic!("round {round}: the broker sent undecodable bytes: {error}")
            }
            _ => drop(raw),
        }
    }
    bystander.still_works(&broker).await;
    common::eventually(
        "the fuzz connections to close",
        Duration::from_secs(3),
        || common::counter(&broker.stats().connections_current) == 0,
    )
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn many_bad_connections_at_once_leave_good_clients_working() {
    let broker = TestBroker::start().await;
    let bystander = Bystander::new(&broker).await;
    let addr = broker.addr;
    let attackers: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(async move {
                let mut raw = RawClient::open(addr, ProtocolVersion::V311).await;
                raw.send_raw(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, i as u8]).await;
                raw.expect_closed().await;
            })
        })
        .collect();
    for attacker in attackers {
        common::within("an attacker to be closed", attacker)
            .await
            .unwrap();
    }
    bystander.still_works(&broker).await;
    broker.stop().await;
}
