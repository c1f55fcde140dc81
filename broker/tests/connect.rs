//! CONNECT and CONNACK, keep-alive, the connect timeout and session take-over, with
//! rumqttc (3.1.1 and 5.0) and raw TCP clients against an in-process broker.

mod common;

use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, LastWill, MqttStr, ProtocolVersion};
use std::time::{Duration, Instant};

#[tokio::test]
async fn connack_accepts_a_new_client_without_session_present_mqtt_3_2_2_2() {
    let broker = TestBroker::start().await;
    let c4 = v4::connect(broker.addr, "new-v4").await;
    assert_eq!(c4.connack.code, v4::ConnectReturnCode::Success);
    assert!(!c4.connack.session_present);
    let c5 = v5::connect(broker.addr, "new-v5").await;
    assert_eq!(c5.connack.code, v5::ConnectReturnCode::Success);
    assert!(!c5.connack.session_present);
    c4.disconnect().await;
    c5.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn session_present_is_set_when_a_3_1_1_persistent_session_resumes_mqtt_3_2_2_2() {
    let broker = TestBroker::start().await;
    let persistent = |o: &mut v4::MqttOptions| {
        o.set_clean_session(false);
    };
    let first = v4::connect_with(broker.addr, "resume-v4", persistent)
        .await
        .unwrap();
    assert!(
        !first.connack.session_present,
        "a new session is not present"
    );
    first.disconnect().await;
    let second = v4::connect_with(broker.addr, "resume-v4", persistent)
        .await
        .unwrap();
    assert!(
        second.connack.session_present,
        "the stored session is resumed"
    );
    second.disconnect().await;
    // Clean session discards it [MQTT-3.2.2-1].
    let clean = v4::connect(broker.addr, "resume-v4").await;
    assert!(!clean.connack.session_present);
    clean.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn session_present_is_set_when_a_v5_session_with_expiry_resumes_mqtt_3_2_2_2() {
    let broker = TestBroker::start().await;
    let resume = |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_connect_properties(v5::session_expiry(60));
    };
    let first = v5::connect_with(broker.addr, "resume-v5", resume)
        .await
        .unwrap();
    assert!(!first.connack.session_present);
    first.disconnect().await;
    let second = v5::connect_with(broker.addr, "resume-v5", resume)
        .await
        .unwrap();
    assert!(second.connack.session_present);
    second.disconnect().await;
    // Clean Start discards the session [MQTT-3.1.2-4].
    let clean = v5::connect_with(broker.addr, "resume-v5", |o| {
        o.set_clean_start(true);
        o.set_connect_properties(v5::session_expiry(60));
    })
    .await
    .unwrap();
    assert!(!clean.connack.session_present);
    clean.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_empty_client_id_gets_an_assigned_client_identifier_mqtt_3_2_2_16() {
    let broker = TestBroker::start().await;
    let mut a = v5::connect(broker.addr, "").await;
    let mut b = v5::connect(broker.addr, "").await;
    let id_a = a
        .connack_properties()
        .assigned_client_identifier
        .expect("assigned id");
    let id_b = b
        .connack_properties()
        .assigned_client_identifier
        .expect("assigned id");
    assert!(!id_a.is_empty());
    assert_ne!(id_a, id_b, "assigned identifiers are unique");
    // Both connections work side by side.
    a.subscribe("assigned/t", v5::QoS::AtMostOnce).await;
    b.publish("assigned/t", v5::QoS::AtMostOnce, false, b"hi")
        .await;
    assert_eq!(&a.recv_publish().await.payload[..], b"hi");
    a.disconnect().await;
    b.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v311_empty_client_id_with_clean_session_is_accepted_mqtt_3_1_3_6() {
    let broker = TestBroker::start().await;
    let mut c = v4::connect(broker.addr, "").await;
    assert_eq!(c.connack.code, v4::ConnectReturnCode::Success);
    c.subscribe("empty/t", v4::QoS::AtMostOnce).await;
    c.publish("empty/t", v4::QoS::AtMostOnce, false, b"x").await;
    assert_eq!(&c.recv_publish().await.payload[..], b"x");
    c.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v311_empty_client_id_without_clean_session_is_refused_with_code_2_mqtt_3_1_3_8() {
    // rumqttc refuses to build this CONNECT, so it is written and read byte by byte.
    let broker = TestBroker::start().await;
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // CONNECT: "MQTT" level 4, flags 0 (no clean session), keep-alive 30, empty client id.
    let connect = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 30, 0, 0];
    stream.write_all(&connect).await.unwrap();
    let mut reply = Vec::new();
    common::within(
        "the broker to answer and close",
        stream.read_to_end(&mut reply),
    )
    .await
    .unwrap();
    assert_eq!(reply, [0x20, 0x02, 0x00, 0x02]);
    broker.stop().await;
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused_with_code_1_mqtt_3_1_2_2() {
    let broker = TestBroker::start().await;
    let mut stream = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connect = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 7, 0x02, 0, 30, 0, 1, b'x',
    ];
    stream.write_all(&connect).await.unwrap();
    let mut reply = Vec::new();
    common::within(
        "the broker to answer and close",
        stream.read_to_end(&mut reply),
    )
    .await
    .unwrap();
    assert_eq!(reply, [0x20, 0x02, 0x00, 0x01]);
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_3_1_mqisdp_clients_can_connect_and_publish() {
    let broker = TestBroker::start().await;
    let mut sub = RawClient::connected(broker.addr, ProtocolVersion::V31, "old-device").await;
    assert_eq!(
        sub.subscribe(1, "legacy/t", codec::QoS::AtLeastOnce).await,
        vec![1]
    );
    let mut publisher = v4::connect(broker.addr, "legacy-pub").await;
    publisher
        .publish("legacy/t", v4::QoS::AtLeastOnce, false, b"v3.1")
        .await;
    let publish = sub.expect_publish().await;
    assert_eq!(&publish.topic[..], "legacy/t");
    assert_eq!(&publish.payload[..], b"v3.1");
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_connack_announces_the_broker_limits() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_packet_size = 65_536;
        c.mqtt.receive_maximum = 20;
        c.mqtt.topic_alias_maximum = 8;
    })
    .await;
    let c = v5::connect(broker.addr, "limits").await;
    let p = c.connack_properties();
    assert_eq!(p.max_packet_size, Some(65_536));
    assert_eq!(p.receive_max, Some(20));
    assert_eq!(p.topic_alias_max, Some(8));
    assert_ne!(p.retain_available, Some(0));
    assert_ne!(p.shared_subscription_available, Some(0));
    assert_ne!(p.subscription_identifiers_available, Some(0));
    assert_ne!(p.wildcard_subscription_available, Some(0));
    c.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn server_keep_alive_is_announced_when_max_keepalive_is_lower_mqtt_3_2_2_21() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_keepalive = 10).await;
    let capped = v5::connect(broker.addr, "ka-capped").await; // asks for 30 s
    assert_eq!(capped.connack_properties().server_keep_alive, Some(10));
    let within_cap = v5::connect_with(broker.addr, "ka-within", |o| {
        o.set_keep_alive(Duration::from_secs(5));
    })
    .await
    .unwrap();
    let announced = within_cap
        .connack
        .properties
        .as_ref()
        .and_then(|p| p.server_keep_alive);
    assert!(
        announced.is_none() || announced == Some(5),
        "a keep-alive below the cap is kept, got {announced:?}"
    );
    capped.disconnect().await;
    within_cap.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn server_keep_alive_is_enforced_as_announced_mqtt_3_1_2_24() {
    // Asks for keep-alive 0 (none) and gets Server Keep Alive 1: a silent client must then
    // be dropped after 1.5 s.
    let broker = TestBroker::start_with(|c| c.mqtt.max_keepalive = 1).await;
    let mut connect = common::connect_packet(ProtocolVersion::V5, "ka-zero");
    connect.keep_alive = 0;
    let (mut raw, connack) = RawClient::connect(broker.addr, connect).await;
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    let started = Instant::now();
    let packets = raw.expect_closed_within(Duration::from_secs(4)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early"
    );
    assert_eq!(common::disconnect_reason(&packets), Some(0x8D));
    broker.stop().await;
}

fn will(topic: &str, payload: &[u8]) -> LastWill {
    LastWill {
        topic: MqttStr::from(topic),
        payload: bytes::Bytes::copy_from_slice(payload),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    }
}

async fn silent_client_is_dropped(version: ProtocolVersion) {
    let broker = TestBroker::start().await;
    let mut watcher = v4::connect(broker.addr, "ka-watcher").await;
    watcher.subscribe("ka/will", v4::QoS::AtLeastOnce).await;

    let mut connect = common::connect_packet(version, "ka-silent");
    connect.keep_alive = 1;
    connect.will = Some(will("ka/will", b"gone"));
    let (mut raw, connack) = RawClient::connect(broker.addr, connect).await;
    assert_eq!(connack.reason_code, 0);
    let started = Instant::now();
    let packets = raw.expect_closed_within(Duration::from_secs(4)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before 1 s"
    );
    assert!(
        elapsed <= Duration::from_millis(2500),
        "closed after {elapsed:?}, not ~1.5 s"
    );
    if version.is_v5() {
        assert_eq!(
            common::disconnect_reason(&packets),
            Some(0x8D),
            "{packets:?}"
        );
    } else {
        assert!(packets.is_empty(), "3.1.1 gets no packet: {packets:?}");
    }
    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "ka/will");
    assert_eq!(&will.payload[..], b"gone");
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn keep_alive_expiry_closes_a_silent_3_1_1_client_and_publishes_its_will_mqtt_3_1_2_24() {
    silent_client_is_dropped(ProtocolVersion::V311).await;
}

#[tokio::test]
async fn keep_alive_expiry_closes_a_silent_v5_client_with_0x8d_and_publishes_its_will() {
    silent_client_is_dropped(ProtocolVersion::V5).await;
}

#[tokio::test]
async fn a_client_that_pings_within_its_keep_alive_stays_connected_mqtt_3_1_2_23() {
    let broker = TestBroker::start().await;
    let mut connect = common::connect_packet(ProtocolVersion::V311, "ka-pinger");
    connect.keep_alive = 1;
    let (mut raw, _) = RawClient::connect(broker.addr, connect).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.ping().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_connection_without_connect_is_closed_after_the_connect_timeout() {
    let broker = TestBroker::start_with(|c| c.mqtt.connect_timeout_secs = 1).await;
    let mut raw = RawClient::open(broker.addr, ProtocolVersion::V311).await;
    let started = Instant::now();
    let packets = raw.expect_closed_within(Duration::from_secs(3)).await;
    assert!(packets.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(800),
        "closed after {elapsed:?}"
    );
    // Other clients are unaffected.
    let c = v4::connect(broker.addr, "after-timeout").await;
    c.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn session_take_over_disconnects_the_first_3_1_1_connection_mqtt_3_1_4_2() {
    let broker = TestBroker::start().await;
    let mut first = v4::connect(broker.addr, "twin-v4").await;
    let mut second = v4::connect(broker.addr, "twin-v4").await;
    first.wait_closed().await;
    // The new connection is the one that works.
    second.subscribe("twin/t", v4::QoS::AtLeastOnce).await;
    second
        .publish("twin/t", v4::QoS::AtLeastOnce, false, b"mine")
        .await;
    assert_eq!(&second.recv_publish().await.payload[..], b"mine");
    assert!(second.still_open_after(QUIET).await);
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn session_take_over_sends_disconnect_0x8e_to_the_first_v5_connection_mqtt_3_1_4_3() {
    let broker = TestBroker::start().await;
    let mut first = RawClient::connected(broker.addr, ProtocolVersion::V5, "twin-v5").await;
    let mut second = v5::connect(broker.addr, "twin-v5").await;
    let packets = first.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x8E),
        "{packets:?}"
    );
    second.subscribe("twin5/t", v5::QoS::AtLeastOnce).await;
    second
        .publish("twin5/t", v5::QoS::AtLeastOnce, false, b"mine")
        .await;
    assert_eq!(&second.recv_publish().await.payload[..], b"mine");
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn session_take_over_keeps_the_session_for_clean_session_false_mqtt_3_1_4_3() {
    let broker = TestBroker::start().await;
    let persistent = |o: &mut v4::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut first = v4::connect_with(broker.addr, "twin-keep", persistent)
        .await
        .unwrap();
    first.subscribe("keep/t", v4::QoS::AtLeastOnce).await;
    let mut second = v4::connect_with(broker.addr, "twin-keep", persistent)
        .await
        .unwrap();
    assert!(
        second.connack.session_present,
        "the taken-over session is present"
    );
    first.wait_closed().await;
    // The subscription made on the first connection delivers to the second.
    let mut publisher = v4::connect(broker.addr, "twin-keep-pub").await;
    publisher
        .publish("keep/t", v4::QoS::AtLeastOnce, false, b"carried")
        .await;
    assert_eq!(&second.recv_publish().await.payload[..], b"carried");
    publisher.disconnect().await;
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn taking_over_a_clean_session_does_not_resume_it_mqtt_3_1_2_6() {
    // A clean session lasts as long as its network connection [MQTT-3.1.2-6]: when a
    // second connection with clean session false takes the client id over, the first
    // connection's session ends with it, so no session is present and its subscriptions
    // are gone.
    let broker = TestBroker::start().await;
    let mut first = v4::connect(broker.addr, "twin-clean").await;
    first.subscribe("clean/t", v4::QoS::AtLeastOnce).await;
    let mut second = v4::connect_with(broker.addr, "twin-clean", |o| {
        o.set_clean_session(false);
    })
    .await
    .unwrap();
    first.wait_closed().await;
    assert!(
        !second.connack.session_present,
        "the clean session ended with its connection"
    );
    let mut publisher = v4::connect(broker.addr, "twin-clean-pub").await;
    publisher
        .publish("clean/t", v4::QoS::AtLeastOnce, false, b"old sub")
        .await;
    second.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn taking_over_a_v5_session_without_expiry_does_not_resume_it_mqtt_3_1_2_11() {
    let broker = TestBroker::start().await;
    let mut first = v5::connect(broker.addr, "twin-zero").await; // session expiry 0
    first.subscribe("zero/t", v5::QoS::AtLeastOnce).await;
    let mut second = v5::connect_with(broker.addr, "twin-zero", |o| {
        o.set_clean_start(false);
        o.set_connect_properties(v5::session_expiry(60));
    })
    .await
    .unwrap();
    first.wait_closed().await;
    assert!(
        !second.connack.session_present,
        "a session with expiry 0 ends with its connection"
    );
    let mut publisher = v5::connect(broker.addr, "twin-zero-pub").await;
    publisher
        .publish("zero/t", v5::QoS::AtLeastOnce, false, b"old sub")
        .await;
    second.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn taking_over_with_clean_start_discards_the_old_session_mqtt_3_1_2_4() {
    let broker = TestBroker::start().await;
    let mut first = v5::connect_with(broker.addr, "twin-discard", |o| {
        o.set_clean_start(false);
        o.set_connect_properties(v5::session_expiry(60));
    })
    .await
    .unwrap();
    first.subscribe("discard/t", v5::QoS::AtLeastOnce).await;
    let mut second = v5::connect(broker.addr, "twin-discard").await; // clean start
    first.wait_closed().await;
    assert!(!second.connack.session_present);
    let mut publisher = v5::connect(broker.addr, "twin-discard-pub").await;
    publisher
        .publish("discard/t", v5::QoS::AtLeastOnce, false, b"old sub")
        .await;
    second.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    second.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn anonymous_clients_are_refused_when_anonymous_access_is_off() {
    let broker = TestBroker::start_with(|c| c.auth.allow_anonymous = false).await;
    let refused = v4::connect_with(broker.addr, "anon4", |_| {}).await;
    assert!(
        matches!(
            refused,
            Err(v4::ConnectionError::ConnectionRefused(
                v4::ConnectReturnCode::NotAuthorized | v4::ConnectReturnCode::BadUserNamePassword
            ))
        ),
        "3.1.1 anonymous client: {:?}",
        refused.err()
    );
    let refused = v5::connect_with(broker.addr, "anon5", |_| {}).await;
    assert!(
        matches!(
            refused,
            Err(v5::ConnectionError::ConnectionRefused(
                v5::ConnectReturnCode::NotAuthorized
            ))
        ),
        "v5 anonymous client: {:?}",
        refused.err()
    );
    broker.stop().await;
}
