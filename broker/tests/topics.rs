//! Topic matching: `+` and `#`, `$` topics and leading wildcards, `$SYS`, shared
//! subscriptions, no-local, unsubscribe and invalid filters.

mod common;

use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, ProtocolVersion};
use std::collections::HashSet;
use std::time::Duration;

/// Publishes each topic (QoS 1, payload = topic) and returns the topics `sub` received.
async fn topics_received(
    sub: &mut v4::Client,
    publisher: &mut v4::Client,
    topics: &[&str],
) -> Vec<String> {
    for topic in topics {
        publisher
            .publish(topic, v4::QoS::AtLeastOnce, false, topic.as_bytes())
            .await;
    }
    let mut got = Vec::new();
    while let Some(p) = sub
        .next_matching("PUBLISH", QUIET, |p| match p {
            v4::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    {
        got.push(p.topic);
    }
    got
}

const TOPICS: [&str; 7] = [
    "sport",
    "sport/",
    "sport/tennis",
    "sport/tennis/player1",
    "sport/tennis/player1/ranking",
    "sport/golf/player1",
    "other/tennis",
];

async fn matches_of(filter: &str) -> Vec<String> {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "wild-sub").await;
    let codes = sub.subscribe(filter, v4::QoS::AtLeastOnce).await;
    assert_eq!(
        codes,
        vec![v4::SubscribeReasonCode::Success(v4::QoS::AtLeastOnce)]
    );
    let mut publisher = v4::connect(broker.addr, "wild-pub").await;
    let got = topics_received(&mut sub, &mut publisher, &TOPICS).await;
    sub.disconnect().await;
    publisher.disconnect().await;
    broker.stop().await;
    got
}

#[tokio::test]
async fn the_multi_level_wildcard_matches_the_parent_and_every_child_level_mqtt_4_7_1_2() {
    assert_eq!(
        matches_of("sport/#").await,
        [
            "sport",
            "sport/",
            "sport/tennis",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/golf/player1"
        ]
    );
    assert_eq!(matches_of("#").await, TOPICS);
}

#[tokio::test]
async fn the_single_level_wildcard_matches_exactly_one_level_mqtt_4_7_1_3() {
    assert_eq!(matches_of("sport/tennis/+").await, ["sport/tennis/player1"]);
    assert_eq!(matches_of("sport/+").await, ["sport/", "sport/tennis"]);
    assert_eq!(
        matches_of("+/+/player1").await,
        ["sport/tennis/player1", "sport/golf/player1"]
    );
    assert_eq!(
        matches_of("+/tennis/#").await,
        [
            "sport/tennis",
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "other/tennis"
        ]
    );
    assert_eq!(matches_of("+").await, ["sport"]);
}

#[tokio::test]
async fn topic_matching_is_exact_and_case_sensitive_mqtt_4_7_3_4() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "case-sub").await;
    sub.subscribe("Case/Topic", v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::connect(broker.addr, "case-pub").await;
    let got = topics_received(
        &mut sub,
        &mut publisher,
        &[
            "case/topic",
            "Case/Topic/",
            "Case/Topic",
            "Case/Topic2",
            "/Case/Topic",
        ],
    )
    .await;
    assert_eq!(got, ["Case/Topic"]);
    sub.disconnect().await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn sys_topics_are_published_and_not_matched_by_leading_wildcards_mqtt_4_7_2_1() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    let mut all = v4::connect(broker.addr, "sys-all").await;
    all.subscribe("#", v4::QoS::AtMostOnce).await;
    let mut plus = v5::connect(broker.addr, "sys-plus").await;
    plus.subscribe("+/broker/uptime", v5::QoS::AtMostOnce).await;
    let mut sys = v4::connect(broker.addr, "sys-sub").await;
    sys.subscribe("$SYS/broker/uptime", v4::QoS::AtMostOnce)
        .await;
    let mut sys_all = v5::connect(broker.addr, "sys-wild").await;
    sys_all.subscribe("$SYS/#", v5::QoS::AtMostOnce).await;

    let uptime = common::within_for(
        Duration::from_secs(3),
        "$SYS/broker/uptime",
        sys.recv_publish(),
    )
    .await;
    assert_eq!(uptime.topic, "$SYS/broker/uptime");
    let text = String::from_utf8(uptime.payload.to_vec()).unwrap();
    assert!(text.ends_with("seconds"), "uptime payload {text:?}");
    let any = sys_all.recv_publish().await;
    assert!(v5::topic(&any).starts_with("$SYS/broker/"));

    // A further tick has passed by now; neither `#` nor `+/...` saw any of it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    all.expect_no_publish(Duration::from_millis(50)).await;
    plus.expect_no_publish(Duration::from_millis(50)).await;
    // `#` still matches ordinary topics.
    let mut publisher = v4::connect(broker.addr, "sys-pub").await;
    publisher
        .publish("plain", v4::QoS::AtLeastOnce, false, b"x")
        .await;
    assert_eq!(all.recv_publish().await.topic, "plain");
    for c in [all, sys, publisher] {
        c.disconnect().await;
    }
    for c in [plus, sys_all] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn sys_values_are_retained_for_new_subscribers() {
    let broker = TestBroker::start_with(|c| c.sys.interval_secs = 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut sub = v4::connect(broker.addr, "sys-late").await;
    sub.subscribe("$SYS/broker/clients/connected", v4::QoS::AtMostOnce)
        .await;
    let got = sub.recv_publish().await;
    assert!(got.retain, "a $SYS value arrives at once, retained");
    let connected: u64 = String::from_utf8(got.payload.to_vec())
        .unwrap()
        .parse()
        .unwrap();
    assert!(connected <= 1);
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn clients_may_not_publish_to_sys_topics() {
    let broker = TestBroker::start().await;
    let mut sys = v5::connect(broker.addr, "sys-watch").await;
    sys.subscribe("$SYS/#", v5::QoS::AtLeastOnce).await;
    let mut spoofer = v5::connect(broker.addr, "sys-spoof").await;
    let code = spoofer
        .publish_with(
            "$SYS/broker/uptime",
            v5::QoS::AtLeastOnce,
            false,
            b"0 seconds",
            None,
        )
        .await;
    assert_eq!(code, Some(0x87), "v5 PUBACK Not authorized");
    drop(spoofer); // rumqttc ends its connection on a refused PUBACK
    let mut spoofer4 = v4::connect(broker.addr, "sys-spoof4").await;
    // 3.1.1: acknowledged normally, and dropped [MQTT-3.3.5-2].
    spoofer4
        .publish("$SYS/fake", v4::QoS::AtLeastOnce, false, b"x")
        .await;
    sys.expect_no_publish(QUIET).await;
    spoofer4.disconnect().await;
    sys.disconnect().await;
    broker.stop().await;
}

async fn collect_payloads(client: &mut v5::Client) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = client
        .next_matching(QUIET, |p| match p {
            v5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    {
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    got
}

#[tokio::test]
async fn a_shared_subscription_delivers_each_message_to_exactly_one_member_mqtt_4_8_2_4() {
    let broker = TestBroker::start().await;
    let mut a = v5::connect(broker.addr, "share-a").await;
    let mut b = v5::connect(broker.addr, "share-b").await;
    let mut other_group = v5::connect(broker.addr, "share-other").await;
    let mut plain = v5::connect(broker.addr, "share-plain").await;
    a.subscribe("$share/g/jobs/+", v5::QoS::AtLeastOnce).await;
    b.subscribe("$share/g/jobs/+", v5::QoS::AtLeastOnce).await;
    other_group
        .subscribe("$share/h/jobs/+", v5::QoS::AtLeastOnce)
        .await;
    plain.subscribe("jobs/+", v5::QoS::AtLeastOnce).await;

    let mut publisher = v5::connect(broker.addr, "share-pub").await;
    let sent: Vec<String> = (0..20).map(|i| format!("job{i}")).collect();
    for payload in &sent {
        publisher
            .publish("jobs/x", v5::QoS::AtLeastOnce, false, payload.as_bytes())
            .await;
    }
    let got_a = collect_payloads(&mut a).await;
    let got_b = collect_payloads(&mut b).await;
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members get work: {got_a:?} {got_b:?}"
    );
    assert_eq!(
        got_a.len() + got_b.len(),
        20,
        "each message to exactly one member"
    );
    let union: HashSet<&String> = got_a.iter().chain(&got_b).collect();
    assert_eq!(union.len(), 20, "no message twice");
    // Another group and a non-shared subscription each get every message.
    assert_eq!(collect_payloads(&mut other_group).await, sent);
    assert_eq!(collect_payloads(&mut plain).await, sent);
    for c in [a, b, other_group, plain, publisher] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn shared_subscriptions_work_for_3_1_1_clients_too() {
    let broker = TestBroker::start().await;
    let mut a = v4::connect(broker.addr, "share4-a").await;
    let mut b = v4::connect(broker.addr, "share4-b").await;
    a.subscribe("$share/w/work", v4::QoS::AtLeastOnce).await;
    b.subscribe("$share/w/work", v4::QoS::AtLeastOnce).await;
    let mut publisher = v4::connect(broker.addr, "share4-pub").await;
    for i in 0..10 {
        publisher
            .publish(
                "work",
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    let mut counts = [0usize; 2];
    for (n, c) in [&mut a, &mut b].into_iter().enumerate() {
        while c
            .next_matching("PUBLISH", QUIET, |p| {
                matches!(p, v4::Packet::Publish(_)).then_some(())
            })
            .await
            .is_some()
        {
            counts[n] += 1;
        }
    }
    assert_eq!(counts[0] + counts[1], 10, "{counts:?}");
    assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
    for c in [a, b, publisher] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn unsubscribing_from_a_shared_group_leaves_the_other_members_mqtt_4_8_2() {
    let broker = TestBroker::start().await;
    let mut a = v5::connect(broker.addr, "unshare-a").await;
    let mut b = v5::connect(broker.addr, "unshare-b").await;
    a.subscribe("$share/g/u", v5::QoS::AtLeastOnce).await;
    b.subscribe("$share/g/u", v5::QoS::AtLeastOnce).await;
    a.unsubscribe("$share/g/u").await;
    let mut publisher = v5::connect(broker.addr, "unshare-pub").await;
    for i in 0..6 {
        publisher
            .publish("u", v5::QoS::AtLeastOnce, false, format!("{i}").as_bytes())
            .await;
    }
    assert_eq!(collect_payloads(&mut b).await.len(), 6);
    a.expect_no_publish(Duration::from_millis(50)).await;
    for c in [a, b, publisher] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it_mqtt_3_8_3_3() {
    let broker = TestBroker::start().await;
    let mut talker = v5::connect(broker.addr, "nolocal").await;
    let mut filter = v5::Filter::new("chat/room", v5::QoS::AtLeastOnce);
    filter.nolocal = true;
    talker.subscribe_filter(filter, None).await;
    let mut echo = v5::connect(broker.addr, "local").await;
    echo.subscribe("chat/room", v5::QoS::AtLeastOnce).await;
    let mut listener = v5::connect(broker.addr, "listener").await;
    listener.subscribe("chat/room", v5::QoS::AtLeastOnce).await;

    talker
        .publish("chat/room", v5::QoS::AtLeastOnce, false, b"from talker")
        .await;
    echo.publish("chat/room", v5::QoS::AtLeastOnce, false, b"from echo")
        .await;

    assert_eq!(&talker.recv_publish().await.payload[..], b"from echo");
    talker.expect_no_publish(QUIET).await;
    // Without no-local, a client gets its own message back.
    let echoed = collect_payloads(&mut echo).await;
    assert_eq!(echoed, ["from talker", "from echo"]);
    assert_eq!(
        collect_payloads(&mut listener).await,
        ["from talker", "from echo"]
    );
    for c in [talker, echo, listener] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error_mqtt_3_8_3_4() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "nolocal-share").await;
    let mut subscribe = common::subscribe_packet(1, "$share/g/t", codec::QoS::AtMostOnce);
    if let codec::Packet::Subscribe(s) = &mut subscribe {
        s.filters[0].1.no_local = true;
    }
    raw.send(&subscribe).await;
    let packets = raw.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x82),
        "{packets:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_mqtt_3_10_4_1() {
    let broker = TestBroker::start().await;
    let mut sub4 = v4::connect(broker.addr, "unsub4").await;
    let mut sub5 = v5::connect(broker.addr, "unsub5").await;
    sub4.subscribe("unsub/#", v4::QoS::AtLeastOnce).await;
    sub5.subscribe("unsub/#", v5::QoS::AtLeastOnce).await;
    sub4.unsubscribe("unsub/#").await;
    sub5.unsubscribe("unsub/#").await;
    let mut publisher = v4::connect(broker.addr, "unsub-pub").await;
    publisher
        .publish("unsub/x", v4::QoS::AtLeastOnce, false, b"x")
        .await;
    sub4.expect_no_publish(QUIET).await;
    sub5.expect_no_publish(Duration::from_millis(50)).await;
    sub4.disconnect().await;
    sub5.disconnect().await;
    publisher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_unsuback_reports_no_subscription_existed_mqtt_3_11_3() {
    let broker = TestBroker::start().await;
    let mut raw = RawClient::connected(broker.addr, ProtocolVersion::V5, "unsuback").await;
    raw.subscribe(1, "have/this", codec::QoS::AtMostOnce).await;
    raw.send(&codec::Packet::Unsubscribe(codec::Unsubscribe {
        packet_id: 2,
        filters: vec!["have/this".into(), "never/had".into()],
        properties: Default::default(),
    }))
    .await;
    match raw.expect().await {
        codec::Packet::UnsubAck(ack) => {
            assert_eq!(ack.packet_id, 2);
            assert_eq!(ack.reason_codes, vec![0x00, 0x11]);
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_invalid_topic_filter_is_refused_with_a_reason_mqtt_4_7_1_2() {
    // `a/#/b` puts `#` before the last level. rumqttc will not send it, so raw clients do.
    // Refusing it in SUBACK (0x8F / 0x80) and closing the connection as malformed (v5 with
    // DISCONNECT 0x8F or 0x81, as Mosquitto does) are both allowed; silence is not.
    let broker = TestBroker::start().await;
    for (version, suback_code) in [(ProtocolVersion::V5, 0x8F), (ProtocolVersion::V311, 0x80)] {
        let mut raw = RawClient::connected(broker.addr, version, "badfilter").await;
        let mut subscribe = common::subscribe_packet(1, "a/#/b", codec::QoS::AtMostOnce);
        if let codec::Packet::Subscribe(s) = &mut subscribe {
            s.filters.push(("ok/+".into(), Default::default()));
        }
        raw.send(&subscribe).await;
        match raw.recv().await {
            Ok(codec::Packet::SubAck(ack)) => assert_eq!(ack.reason_codes, vec![suback_code, 0]),
            Ok(codec::Packet::Disconnect(d)) => {
                assert!(version.is_v5());
                assert!(matches!(d.reason_code, 0x8F | 0x81), "DISCONNECT {d:?}");
                raw.expect_closed().await;
            }
            Err(common::RawEnd::Closed) => {
                assert!(!version.is_v5(), "v5 connection closed without DISCONNECT");
            }
            other => panic!("{version:?}: unexpected {other:?}"),
        }
        // Other clients are unaffected.
        let mut probe = RawClient::connected(broker.addr, version, "probe").await;
        probe.ping().await;
    }
    broker.stop().await;
}
