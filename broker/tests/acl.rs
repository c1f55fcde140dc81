//! The Mosquitto-syntax `acl_file` (SPEC §5): refused subscriptions, deliveries filtered
//! per subscriber, `user` blocks, `pattern` lines, refused publishes and will topics, and
//! `$` topics closed to clients.

mod common;

use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Packet, ProtocolVersion};

const ACL: &str = "\
# anonymous clients
topic readwrite #
topic deny test/nosubscribe

user writer
topic write test/#

user alice
topic read sensors/#
topic write alice/out/#

pattern readwrite clients/%c/#
";

async fn broker_with_acl() -> (TestBroker, tempfile::TempDir) {
    broker_with_acl_and(|_| {}).await
}

async fn broker_with_acl_and(
    configure: impl FnOnce(&mut rookery::Config),
) -> (TestBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acl.conf");
    std::fs::write(&path, ACL).unwrap();
    let broker = TestBroker::start_with(|c| {
        c.auth.acl_file = Some(path);
        configure(c);
    })
    .await;
    (broker, dir)
}

fn as_user(broker: &TestBroker, name: &str) -> impl FnOnce(&mut v4::MqttOptions) {
    let (name, token) = (name.to_string(), broker.token(name));
    move |o: &mut v4::MqttOptions| {
        o.set_credentials(name, token);
    }
}

fn as_user5(broker: &TestBroker, name: &str) -> impl FnOnce(&mut v5::MqttOptions) {
    let (name, token) = (name.to_string(), broker.token(name));
    move |o: &mut v5::MqttOptions| {
        o.set_credentials(name, token);
    }
}

#[tokio::test]
async fn subscribing_to_a_denied_topic_is_refused_with_0x80_in_3_1_1() {
    let (broker, _acl) = broker_with_acl().await;
    let mut c = v4::connect(broker.addr, "acl-sub4").await;
    let codes = c.subscribe("test/nosubscribe", v4::QoS::AtLeastOnce).await;
    assert_eq!(codes, vec![v4::SubscribeReasonCode::Failure]);
    // The connection stays usable and other filters are granted.
    let codes = c.subscribe("test/other", v4::QoS::AtLeastOnce).await;
    assert_eq!(
        codes,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    c.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn subscribing_to_a_denied_topic_is_refused_with_0x80_in_v5_as_mosquitto_does() {
    let (broker, _acl) = broker_with_acl().await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "acl-sub5").await;
    raw.send(&Packet::Subscribe(codec::Subscribe {
        packet_id: 3,
        filters: vec![
            ("test/nosubscribe".into(), Default::default()),
            ("test/fine".into(), Default::default()),
        ],
        properties: Default::default(),
    }))
    .await;
    match raw.expect().await {
        Packet::SubAck(ack) => assert_eq!(ack.reason_codes, vec![0x80, 0x00]),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    // rumqttc sees the same code.
    let mut c = v5::connect(broker.addr, "acl-sub5-rumqttc").await;
    let codes = c.subscribe("test/nosubscribe", v5::QoS::AtMostOnce).await;
    assert_eq!(codes, vec![v5::SubscribeReasonCode::Unspecified]);
    broker.stop().await;
}

#[tokio::test]
async fn a_wildcard_subscriber_does_not_receive_messages_on_a_denied_topic() {
    let (broker, _acl) = broker_with_acl().await;
    let mut all4 = v4::connect(broker.addr, "acl-all4").await;
    all4.subscribe("#", v4::QoS::AtLeastOnce).await;
    let mut all5 = v5::connect(broker.addr, "acl-all5").await;
    all5.subscribe("test/+", v5::QoS::AtLeastOnce).await;
    // `writer` may publish on test/#, including the topic anonymous clients may not read.
    let mut writer = v4::connect_with(broker.addr, "acl-writer", as_user(&broker, "writer"))
        .await
        .unwrap();
    writer
        .publish("test/nosubscribe", v4::QoS::AtLeastOnce, false, b"secret")
        .await;
    writer
        .publish("test/ok", v4::QoS::AtLeastOnce, false, b"public")
        .await;
    let got = all4.recv_publish().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        ("test/ok", &b"public"[..])
    );
    all4.expect_no_publish(QUIET).await;
    let got = all5.recv_publish().await;
    assert_eq!(v5::topic(&got), "test/ok");
    all5.expect_no_publish(QUIET).await;
    for c in [all4, writer] {
        c.disconnect().await;
    }
    all5.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_on_a_denied_topic_are_not_delivered_on_subscribe() {
    let (broker, _acl) = broker_with_acl().await;
    let mut writer = v4::connect_with(broker.addr, "acl-ret-writer", as_user(&broker, "writer"))
        .await
        .unwrap();
    writer
        .publish("test/nosubscribe", v4::QoS::AtLeastOnce, true, b"secret")
        .await;
    writer
        .publish("test/ok", v4::QoS::AtLeastOnce, true, b"public")
        .await;
    let mut sub = v4::connect(broker.addr, "acl-ret-sub").await;
    sub.subscribe("test/#", v4::QoS::AtLeastOnce).await;
    assert_eq!(sub.recv_publish().await.topic, "test/ok");
    sub.expect_no_publish(QUIET).await;
    writer.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_user_block_grants_its_user_only_what_it_lists() {
    let (broker, _acl) = broker_with_acl().await;
    let mut alice = v4::connect_with(broker.addr, "phone", as_user(&broker, "alice"))
        .await
        .unwrap();
    let granted = v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce);
    let refused = v4::SubscribeReasonCode::Failure;
    assert_eq!(
        alice.subscribe("sensors/#", v4::QoS::AtLeastOnce).await,
        [granted]
    );
    assert_eq!(
        alice
            .subscribe("sensors/+/temp", v4::QoS::AtLeastOnce)
            .await,
        [granted]
    );
    assert_eq!(alice.subscribe("#", v4::QoS::AtLeastOnce).await, [refused]);
    assert_eq!(
        alice.subscribe("alice/out/x", v4::QoS::AtLeastOnce).await,
        [refused],
        "write only"
    );
    // Anonymous rules do not apply to a user.
    assert_eq!(
        alice.subscribe("test/other", v4::QoS::AtLeastOnce).await,
        [refused]
    );
    // `pattern` lines apply to everyone, with %c replaced by the client id.
    assert_eq!(
        alice
            .subscribe("clients/phone/#", v4::QoS::AtLeastOnce)
            .await,
        [granted]
    );
    assert_eq!(
        alice
            .subscribe("clients/tablet/#", v4::QoS::AtLeastOnce)
            .await,
        [refused]
    );

    let mut anon = v4::connect(broker.addr, "acl-anon").await;
    anon.subscribe("alice/#", v4::QoS::AtLeastOnce).await;
    anon.publish("sensors/kitchen/temp", v4::QoS::AtLeastOnce, false, b"21")
        .await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"21");
    alice
        .publish("alice/out/status", v4::QoS::AtLeastOnce, false, b"ok")
        .await;
    assert_eq!(anon.recv_publish().await.topic, "alice/out/status");
    // 3.1.1: a refused publish is acknowledged and dropped [MQTT-3.3.5-2].
    anon.subscribe("sensors/#", v4::QoS::AtLeastOnce).await;
    alice
        .publish(
            "sensors/kitchen/temp",
            v4::QoS::AtLeastOnce,
            false,
            b"spoof",
        )
        .await;
    anon.expect_no_publish(QUIET).await;
    alice.expect_no_publish(QUIET).await;
    alice.disconnect().await;
    anon.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_v5_publish_gets_puback_or_pubrec_0x87() {
    let (broker, _acl) = broker_with_acl().await;
    let mut watcher = v4::connect(broker.addr, "acl-watch").await;
    watcher.subscribe("sensors/#", v4::QoS::AtLeastOnce).await;
    let mut alice = v5::connect_with(broker.addr, "alice5", as_user5(&broker, "alice"))
        .await
        .unwrap();
    let code = alice
        .publish_with("sensors/x", v5::QoS::AtLeastOnce, false, b"no", None)
        .await;
    assert_eq!(code, Some(0x87));
    let mut raw_connect = common::connect_packet(ProtocolVersion::V5, "alice5-raw");
    raw_connect.username = Some("alice".into());
    raw_connect.password = Some(bytes::Bytes::from(broker.token("alice")));
    let (mut raw, _) = RawClient::connect(broker.addr, raw_connect).await;
    raw.send(&common::publish_packet(
        "sensors/y",
        codec::QoS::ExactlyOnce,
        9,
        b"no",
    ))
    .await;
    match raw.expect().await {
        Packet::PubRec(rec) => assert_eq!((rec.packet_id, rec.reason_code), (9, 0x87)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    // A refused QoS 2 exchange is over: the connection carries on.
    raw.ping().await;
    watcher.expect_no_publish(QUIET).await;
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_3_1_1_client_is_disconnected_for_a_refused_publish_when_configured() {
    let (broker, _acl) = broker_with_acl_and(|c| c.mqtt.disconnect_on_denied_publish = true).await;
    let mut alice = v4::connect_with(broker.addr, "alice-dc", as_user(&broker, "alice"))
        .await
        .unwrap();
    alice
        .client
        .publish("sensors/x", v4::QoS::AtLeastOnce, false, b"no".to_vec())
        .await
        .unwrap();
    alice.wait_closed().await;
    broker.stop().await;
}

#[tokio::test]
async fn publishing_to_sys_is_refused_with_puback_0x87() {
    let (broker, _acl) = broker_with_acl().await;
    let mut c = v5::connect(broker.addr, "acl-sys").await;
    let code = c
        .publish_with("$SYS/x", v5::QoS::AtLeastOnce, false, b"x", None)
        .await;
    assert_eq!(code, Some(0x87));
    broker.stop().await;
}

#[tokio::test]
async fn a_will_on_a_topic_the_client_may_not_publish_to_is_refused_at_connect() {
    let (broker, _acl) = broker_with_acl().await;
    let alice_token = broker.token("alice");
    let refused = v5::connect_with(broker.addr, "alice-will", |o| {
        o.set_credentials("alice", alice_token.clone());
        o.set_last_will(v5::LastWill::new(
            "sensors/x",
            "gone",
            v5::QoS::AtMostOnce,
            false,
            None,
        ));
    })
    .await;
    assert!(
        matches!(
            refused,
            Err(v5::ConnectionError::ConnectionRefused(
                v5::ConnectReturnCode::NotAuthorized
            ))
        ),
        "{:?}",
        refused.err()
    );
    let refused = v4::connect_with(broker.addr, "alice-will4", |o| {
        o.set_credentials("alice", alice_token.clone());
        o.set_last_will(v4::LastWill::new(
            "sensors/x",
            "gone",
            v4::QoS::AtMostOnce,
            false,
        ));
    })
    .await;
    assert!(
        matches!(
            refused,
            Err(v4::ConnectionError::ConnectionRefused(
                v4::ConnectReturnCode::NotAuthorized
            ))
        ),
        "{:?}",
        refused.err()
    );
    // A will on a `$` topic is refused too.
    let refused = v5::connect_with(broker.addr, "sys-will", |o| {
        o.set_last_will(v5::LastWill::new(
            "$SYS/x",
            "gone",
            v5::QoS::AtMostOnce,
            false,
            None,
        ));
    })
    .await;
    assert!(refused.is_err(), "a will on $SYS was accepted");
    broker.stop().await;
}

#[tokio::test]
async fn an_unreadable_acl_file_stops_the_broker_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = rookery::Config::default();
    config.mqtt.listen = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = dir.path().to_path_buf();
    config.sys.interval_secs = 0;
    config.auth.acl_file = Some(dir.path().join("missing.conf"));
    assert!(rookery::start(config.clone()).await.is_err());
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "topic readwrite #\nbogus line\n").unwrap();
    config.auth.acl_file = Some(bad);
    match rookery::start(config).await {
        Err(error) => assert!(error.to_string().contains("line 2"), "{error}"),
        Ok(_) => panic!("a malformed ACL file was accepted"),
    }
}
