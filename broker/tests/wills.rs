//! Will messages: published when a connection ends without DISCONNECT (or with v5 reason
//! 0x04), not after a normal DISCONNECT, and the v5 Will Delay Interval.

mod common;

use common::{v4, v5, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Disconnect, LastWill, MqttStr, Packet, ProtocolVersion};
use std::time::{Duration, Instant};

async fn watcher4(broker: &TestBroker, filter: &str) -> v4::Client {
    let mut watcher = v4::connect(broker.addr, &common::unique_id("watcher")).await;
    watcher.subscribe(filter, v4::QoS::ExactlyOnce).await;
    watcher
}

async fn watcher5(broker: &TestBroker, filter: &str) -> v5::Client {
    let mut watcher = v5::connect(broker.addr, &common::unique_id("watcher")).await;
    watcher.subscribe(filter, v5::QoS::ExactlyOnce).await;
    watcher
}

fn will_properties(delay: Option<u32>) -> v5::LastWillProperties {
    v5::LastWillProperties {
        delay_interval: delay,
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    }
}

#[tokio::test]
async fn the_will_is_published_when_a_3_1_1_connection_closes_without_disconnect_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher4(&broker, "will4/+").await;
    let device = v4::connect_with(broker.addr, "will4-dev", |o| {
        o.set_last_will(v4::LastWill::new(
            "will4/dev",
            "offline",
            v4::QoS::AtLeastOnce,
            false,
        ));
    })
    .await
    .unwrap();
    device.kill().await;
    let will = watcher.recv_publish().await;
    assert_eq!(will.topic, "will4/dev");
    assert_eq!(&will.payload[..], b"offline");
    assert_eq!(will.qos, v4::QoS::AtLeastOnce);
    watcher.expect_no_publish(QUIET).await;
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn the_will_is_published_when_a_v5_connection_closes_without_disconnect_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "will5/+").await;
    let device = v5::connect_with(broker.addr, "will5-dev", |o| {
        o.set_last_will(v5::LastWill::new(
            "will5/dev",
            "offline",
            v5::QoS::ExactlyOnce,
            false,
            None,
        ));
    })
    .await
    .unwrap();
    device.kill().await;
    let will = watcher.recv_publish().await;
    assert_eq!(v5::topic(&will), "will5/dev");
    assert_eq!(&will.payload[..], b"offline");
    assert_eq!(will.qos, v5::QoS::ExactlyOnce);
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_normal_3_1_1_disconnect_discards_the_will_mqtt_3_1_2_10() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher4(&broker, "bye4/#").await;
    let device = v4::connect_with(broker.addr, "bye4-dev", |o| {
        o.set_last_will(v4::LastWill::new(
            "bye4/dev",
            "offline",
            v4::QoS::AtLeastOnce,
            false,
        ));
    })
    .await
    .unwrap();
    device.disconnect().await;
    watcher.expect_no_publish(QUIET * 2).await;
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_normal_v5_disconnect_discards_the_will_mqtt_3_1_2_10() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "bye5/#").await;
    let device = v5::connect_with(broker.addr, "bye5-dev", |o| {
        o.set_last_will(v5::LastWill::new(
            "bye5/dev",
            "x",
            v5::QoS::AtLeastOnce,
            false,
            None,
        ));
    })
    .await
    .unwrap();
    device.disconnect().await;
    watcher.expect_no_publish(QUIET * 2).await;
    watcher.disconnect().await;
    broker.stop().await;
}

fn raw_will(topic: &str, payload: &[u8], delay: Option<u32>) -> LastWill {
    LastWill {
        topic: MqttStr::from(topic),
        payload: bytes::Bytes::copy_from_slice(payload),
        qos: codec::QoS::AtLeastOnce,
        retain: false,
        properties: codec::Properties {
            will_delay_interval: delay,
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn v5_disconnect_with_reason_0x04_publishes_the_will_mqtt_3_14_4_3() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "w04/#").await;
    let mut connect = common::connect_packet(ProtocolVersion::V5, "w04-dev");
    connect.will = Some(raw_will("w04/dev", b"asked for", None));
    let (mut device, _) = RawClient::connect(broker.addr, connect).await;
    device
        .send(&Packet::Disconnect(Disconnect {
            reason_code: 0x04,
            ..Default::default()
        }))
        .await;
    device.expect_closed().await;
    let will = watcher.recv_publish().await;
    assert_eq!(&will.payload[..], b"asked for");
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_retained_will_is_kept_as_the_retained_message_mqtt_3_1_2_17() {
    let broker = TestBroker::start().await;
    let device = v4::connect_with(broker.addr, "rwill-dev", |o| {
        o.set_last_will(v4::LastWill::new(
            "rwill/dev",
            "offline",
            v4::QoS::AtLeastOnce,
            true,
        ));
    })
    .await
    .unwrap();
    device.kill().await;
    let mut later = v4::connect(broker.addr, "rwill-later").await;
    common::within("the retained will", async {
        loop {
            later.subscribe("rwill/dev", v4::QoS::AtLeastOnce).await;
            if let Some(p) = later
                .next_matching("PUBLISH", QUIET, |p| match p {
                    v4::Packet::Publish(p) => Some(p.clone()),
                    _ => None,
                })
                .await
            {
                assert!(p.retain);
                assert_eq!(&p.payload[..], b"offline");
                return;
            }
        }
    })
    .await;
    later.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn v5_will_properties_are_passed_to_subscribers_mqtt_3_1_3_10() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "wprops/#").await;
    let mut properties = will_properties(None);
    properties.content_type = Some("text/plain".into());
    properties.response_topic = Some("wprops/reply".into());
    properties.correlation_data = Some(bytes::Bytes::from_static(b"corr"));
    properties.user_properties = vec![("k".into(), "v".into())];
    let device = v5::connect_with(broker.addr, "wprops-dev", |o| {
        o.set_last_will(v5::LastWill::new(
            "wprops/dev",
            "bye",
            v5::QoS::AtLeastOnce,
            false,
            Some(properties),
        ));
    })
    .await
    .unwrap();
    device.kill().await;
    let will = watcher.recv_publish().await;
    let p = will.properties.expect("will properties");
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("wprops/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(p.user_properties, vec![("k".to_string(), "v".to_string())]);
    watcher.disconnect().await;
    broker.stop().await;
}

fn delayed_will(id: &str, delay: u32, session_expiry: u32) -> impl FnOnce(&mut v5::MqttOptions) {
    let topic = format!("delay/{id}");
    move |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_connect_properties(v5::session_expiry(session_expiry));
        o.set_last_will(v5::LastWill::new(
            topic,
            "late",
            v5::QoS::AtLeastOnce,
            false,
            Some(will_properties(Some(delay))),
        ));
    }
}

#[tokio::test]
async fn a_delayed_will_is_published_after_the_will_delay_mqtt_3_1_3_9() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "delay/#").await;
    let device = v5::connect_with(broker.addr, "d1", delayed_will("d1", 1, 30))
        .await
        .unwrap();
    device.kill().await;
    let closed = Instant::now();
    watcher.expect_no_publish(Duration::from_millis(700)).await;
    let will = watcher.recv_publish().await;
    let elapsed = closed.elapsed();
    assert_eq!(v5::topic(&will), "delay/d1");
    assert!(
        elapsed >= Duration::from_millis(900),
        "published after {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_millis(2500),
        "published after {elapsed:?}"
    );
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_delayed_will_is_not_published_if_the_client_reconnects_in_time_mqtt_3_1_3_9() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "delay/#").await;
    let device = v5::connect_with(broker.addr, "d2", delayed_will("d2", 2, 30))
        .await
        .unwrap();
    device.kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let back = v5::connect_with(broker.addr, "d2", delayed_will("d2", 2, 30))
        .await
        .unwrap();
    assert!(back.connack.session_present);
    watcher.expect_no_publish(Duration::from_millis(2500)).await;
    back.disconnect().await;
    watcher.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_will_delay_longer_than_the_session_expiry_ends_with_the_session_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    let mut watcher = watcher5(&broker, "delay/#").await;
    let device = v5::connect_with(broker.addr, "d3", delayed_will("d3", 60, 1))
        .await
        .unwrap();
    device.kill().await;
    let closed = Instant::now();
    let will = watcher.recv_publish().await;
    let elapsed = closed.elapsed();
    assert_eq!(v5::topic(&will), "delay/d3");
    assert!(
        elapsed >= Duration::from_millis(800),
        "published after {elapsed:?}"
    );
    watcher.disconnect().await;
    broker.stop().await;
}
