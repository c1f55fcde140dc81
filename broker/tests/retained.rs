//! Retained messages: set, replace, clear, delivery on subscribe with the retain flag,
//! the v5 Retain Handling and Retain As Published options, and retained message expiry.

mod common;

use common::{v4, v5, TestBroker, QUIET};
use std::time::Duration;

#[tokio::test]
async fn a_retained_message_is_delivered_to_a_new_v311_subscriber_with_retain_set_mqtt_3_3_1_6() {
    let broker = TestBroker::start().await;
    let mut publisher = v4::connect(broker.addr, "ret-pub").await;
    publisher
        .publish("ret/a", v4::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v4::connect(broker.addr, "ret-sub").await;
    sub.subscribe("ret/a", v4::QoS::AtLeastOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.topic, "ret/a");
    assert_eq!(&got.payload[..], b"kept");
    assert!(
        got.retain,
        "retained delivery on subscribe has RETAIN set [MQTT-3.3.1-8]"
    );
    assert_eq!(got.qos, v4::QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_retained_message_is_delivered_to_a_new_v5_subscriber_with_retain_set_mqtt_3_3_1_9() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "ret5-pub").await;
    publisher
        .publish("ret5/a", v5::QoS::ExactlyOnce, true, b"kept")
        .await;
    let mut sub = v5::connect(broker.addr, "ret5-sub").await;
    sub.subscribe("ret5/a", v5::QoS::AtLeastOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"kept");
    assert!(got.retain);
    assert_eq!(
        got.qos,
        v5::QoS::AtLeastOnce,
        "min(message QoS 2, subscription QoS 1)"
    );
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_new_retained_message_replaces_the_previous_one_mqtt_3_3_1_5() {
    let broker = TestBroker::start().await;
    let mut publisher = v4::connect(broker.addr, "repl-pub").await;
    publisher
        .publish("repl/a", v4::QoS::AtMostOnce, true, b"first")
        .await;
    publisher
        .publish("repl/a", v4::QoS::AtLeastOnce, true, b"second")
        .await;
    let mut sub = v4::connect(broker.addr, "repl-sub").await;
    sub.subscribe("repl/a", v4::QoS::ExactlyOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"second");
    assert_eq!(got.qos, v4::QoS::AtLeastOnce);
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_empty_retained_message_clears_the_topic_mqtt_3_3_1_10() {
    let broker = TestBroker::start().await;
    let mut publisher = v4::connect(broker.addr, "clear-pub").await;
    publisher
        .publish("clear/a", v4::QoS::AtLeastOnce, true, b"soon gone")
        .await;
    // A current subscriber sees the clearing message like any other publish.
    let mut current = v4::connect(broker.addr, "clear-current").await;
    current.subscribe("clear/a", v4::QoS::AtLeastOnce).await;
    assert_eq!(&current.recv_publish().await.payload[..], b"soon gone");
    publisher
        .publish("clear/a", v4::QoS::AtLeastOnce, true, b"")
        .await;
    let clearing = current.recv_publish().await;
    assert!(clearing.payload.is_empty());
    // A new subscriber gets nothing.
    let mut late = v4::connect(broker.addr, "clear-late").await;
    late.subscribe("clear/#", v4::QoS::AtLeastOnce).await;
    late.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    current.disconnect().await;
    late.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_v5_empty_retained_message_clears_the_topic_mqtt_3_3_1_6() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "clear5-pub").await;
    publisher
        .publish("clear5/a", v5::QoS::AtLeastOnce, true, b"x")
        .await;
    publisher
        .publish("clear5/a", v5::QoS::AtLeastOnce, true, b"")
        .await;
    publisher
        .publish("clear5/b", v5::QoS::AtLeastOnce, true, b"stays")
        .await;
    let mut sub = v5::connect(broker.addr, "clear5-sub").await;
    sub.subscribe("clear5/+", v5::QoS::AtMostOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(v5::topic(&got), "clear5/b");
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_wildcard_subscription_receives_every_matching_retained_message() {
    let broker = TestBroker::start().await;
    let mut publisher = v4::connect(broker.addr, "many-pub").await;
    for topic in [
        "house/kitchen/temp",
        "house/garden/temp",
        "house/kitchen/light",
        "other/temp",
    ] {
        publisher
            .publish(topic, v4::QoS::AtLeastOnce, true, topic.as_bytes())
            .await;
    }
    let mut sub = v4::connect(broker.addr, "many-sub").await;
    sub.subscribe("house/+/temp", v4::QoS::AtMostOnce).await;
    let mut topics = vec![
        sub.recv_publish().await.topic,
        sub.recv_publish().await.topic,
    ];
    topics.sort();
    assert_eq!(topics, ["house/garden/temp", "house/kitchen/temp"]);
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_retained_publish_reaches_established_v311_subscribers_with_retain_clear_mqtt_3_3_1_9() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(broker.addr, "live-sub").await;
    sub.subscribe("live/a", v4::QoS::AtMostOnce).await;
    let mut publisher = v4::connect(broker.addr, "live-pub").await;
    publisher
        .publish("live/a", v4::QoS::AtMostOnce, true, b"now")
        .await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"now");
    assert!(
        !got.retain,
        "3.1.1: RETAIN is 0 towards established subscriptions"
    );
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

fn filter(path: &str, rule: v5::RetainForwardRule, retain_as_published: bool) -> v5::Filter {
    let mut filter = v5::Filter::new(path, v5::QoS::AtLeastOnce);
    filter.retain_forward_rule = rule;
    filter.preserve_retain = retain_as_published;
    filter
}

#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag_on_live_delivery_mqtt_3_3_1_12() {
    let broker = TestBroker::start().await;
    let mut rap = v5::connect(broker.addr, "rap-on").await;
    rap.subscribe_filter(
        filter("rap/a", v5::RetainForwardRule::OnEverySubscribe, true),
        None,
    )
    .await;
    let mut plain = v5::connect(broker.addr, "rap-off").await;
    plain
        .subscribe_filter(
            filter("rap/a", v5::RetainForwardRule::OnEverySubscribe, false),
            None,
        )
        .await;
    let mut publisher = v5::connect(broker.addr, "rap-pub").await;
    publisher
        .publish("rap/a", v5::QoS::AtLeastOnce, true, b"r")
        .await;
    publisher
        .publish("rap/a", v5::QoS::AtLeastOnce, false, b"n")
        .await;
    let (r, n) = (rap.recv_publish().await, rap.recv_publish().await);
    assert!(
        r.retain,
        "Retain As Published: RETAIN as the publisher set it"
    );
    assert!(!n.retain);
    let (r, n) = (plain.recv_publish().await, plain.recv_publish().await);
    assert!(
        !r.retain,
        "without Retain As Published RETAIN is 0 [MQTT-3.3.1-13]"
    );
    assert!(!n.retain);
    for c in [rap, plain, publisher] {
        c.disconnect().await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_0_sends_retained_messages_on_every_subscribe_mqtt_3_3_1_9() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "rh0-pub").await;
    publisher
        .publish("rh0/a", v5::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v5::connect(broker.addr, "rh0-sub").await;
    for _ in 0..2 {
        sub.subscribe_filter(
            filter("rh0/a", v5::RetainForwardRule::OnEverySubscribe, false),
            None,
        )
        .await;
        let got = sub.recv_publish().await;
        assert_eq!(&got.payload[..], b"kept");
        assert!(got.retain);
    }
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_1_sends_retained_messages_only_for_a_new_subscription_mqtt_3_3_1_10() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "rh1-pub").await;
    publisher
        .publish("rh1/a", v5::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v5::connect(broker.addr, "rh1-sub").await;
    sub.subscribe_filter(
        filter("rh1/a", v5::RetainForwardRule::OnNewSubscribe, false),
        None,
    )
    .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"kept");
    // The same subscription again: it exists, so nothing is sent.
    sub.subscribe_filter(
        filter("rh1/a", v5::RetainForwardRule::OnNewSubscribe, false),
        None,
    )
    .await;
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn retain_handling_2_never_sends_retained_messages_mqtt_3_3_1_11() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "rh2-pub").await;
    publisher
        .publish("rh2/a", v5::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut sub = v5::connect(broker.addr, "rh2-sub").await;
    sub.subscribe_filter(filter("rh2/a", v5::RetainForwardRule::Never, false), None)
        .await;
    sub.expect_no_publish(QUIET).await;
    // Live messages still flow.
    publisher
        .publish("rh2/a", v5::QoS::AtLeastOnce, false, b"live")
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"live");
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_expired_retained_message_is_not_delivered_mqtt_3_3_2_5() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "ret-exp-pub").await;
    let short = v5::PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = v5::PublishProperties {
        message_expiry_interval: Some(60),
        ..Default::default()
    };
    publisher
        .publish_with(
            "retexp/short",
            v5::QoS::AtLeastOnce,
            true,
            b"s",
            Some(short),
        )
        .await;
    publisher
        .publish_with("retexp/long", v5::QoS::AtLeastOnce, true, b"l", Some(long))
        .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut sub = v5::connect(broker.addr, "ret-exp-sub").await;
    sub.subscribe("retexp/#", v5::QoS::AtLeastOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(v5::topic(&got), "retexp/long");
    let left = got.properties.and_then(|p| p.message_expiry_interval);
    assert!(
        matches!(left, Some(1..=58)),
        "remaining expiry {left:?} [MQTT-3.3.2-6]"
    );
    sub.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_messages_are_not_sent_to_shared_subscriptions_mqtt_4_8_2() {
    let broker = TestBroker::start().await;
    let mut publisher = v5::connect(broker.addr, "ret-share-pub").await;
    publisher
        .publish("retshare/a", v5::QoS::AtLeastOnce, true, b"kept")
        .await;
    let mut member = v5::connect(broker.addr, "ret-share-member").await;
    member
        .subscribe("$share/g/retshare/a", v5::QoS::AtLeastOnce)
        .await;
    member.expect_no_publish(QUIET).await;
    publisher.disconnect().await;
    member.disconnect().await;
    broker.stop().await;
}
