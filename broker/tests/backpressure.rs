//! Queue limits and slow consumers: a subscriber that never reads loses QoS 0 messages
//! (counted) without slowing the publisher or other subscribers; offline queues are bounded
//! by count and bytes under the configured overflow policy; max_connections is enforced.

mod common;

use common::{v4, RawClient, TestBroker, QUIET};
use rookery::codec::{self, Packet, ProtocolVersion};
use rookery::config::OverflowPolicy;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const MESSAGES: usize = 100_000;
const BATCH: usize = 50;

/// A subscriber whose socket has a tiny receive buffer and that never reads.
async fn stalled_subscriber(broker: &TestBroker, filter: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = common::within("TCP connect", socket.connect(broker.addr))
        .await
        .unwrap();
    let mut raw = RawClient::from_stream(stream, ProtocolVersion::V311);
    let mut connect = common::connect_packet(ProtocolVersion::V311, "stalled");
    connect.keep_alive = 0;
    raw.send(&Packet::Connect(Box::new(connect))).await;
    assert!(matches!(raw.expect().await, Packet::ConnAck(_)));
    assert_eq!(
        raw.subscribe(1, filter, codec::QoS::AtMostOnce).await,
        vec![0]
    );
    raw.into_stream()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_loses_counted_qos0_messages_and_slows_no_one() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 100).await;
    let _stalled = stalled_subscriber(&broker, "flood/#").await;

    // The fast subscriber counts what it receives on a watch channel.
    let mut fast = RawClient::connected(broker.addr, ProtocolVersion::V311, "fast").await;
    assert_eq!(
        fast.subscribe(1, "flood/#", codec::QoS::AtMostOnce).await,
        vec![0]
    );
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut count = 0;
        while count < MESSAGES {
            let Ok(packet) = fast.recv_within(Duration::from_secs(5)).await else {
                break;
            };
            if let Packet::Publish(publish) = packet {
                assert_eq!(publish.payload.len(), 64);
                count += 1;
                let _ = count_tx.send(count);
            }
        }
        count
    });

    // The publisher writes batches smaller than the queue limit and waits for the fast
    // subscriber to have each batch, so only the stalled subscriber can overflow.
    let mut publisher = RawClient::connected(broker.addr, ProtocolVersion::V311, "flooder").await;
    let one = common::encode(
        &common::publish_packet("flood/t", codec::QoS::AtMostOnce, 0, &[0x5A; 64]),
        ProtocolVersion::V311,
    );
    let batch: Vec<u8> = one
        .iter()
        .copied()
        .cycle()
        .take(one.len() * BATCH)
        .collect();
    let started = Instant::now();
    let mut sent = 0;
    while sent < MESSAGES {
        publisher.send_raw(&batch).await;
        sent += BATCH;
        let target = sent;
        common::within(
            "the fast subscriber to keep up",
            count_rx.wait_for(|c| *c >= target),
        )
        .await
        .expect("reader alive");
    }
    let elapsed = started.elapsed();
    // The publisher was never blocked: it still gets a prompt answer.
    let ping = Instant::now();
    publisher.ping().await;
    assert!(ping.elapsed() < Duration::from_millis(500));

    let dropped = common::counter(&broker.stats().dropped_qos0);
    assert!(dropped > 0, "the stalled subscriber's overflow is counted");
    assert!(
        dropped <= MESSAGES as u64,
        "only the stalled subscriber drops: {dropped} drops"
    );
    let received = common::within("the reader", reader).await.unwrap();
    assert_eq!(received, MESSAGES, "the fast subscriber got every message");
    eprintln!("{MESSAGES} messages in {elapsed:?}, {dropped} dropped for the stalled subscriber");
    broker.stop().await;
}

async fn offline_overflow(policy: OverflowPolicy) -> (Vec<String>, u64) {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_queued_messages = 10;
        c.mqtt.overflow_policy = policy;
    })
    .await;
    let persistent = |o: &mut v4::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut sub = v4::connect_with(broker.addr, "overflow", persistent)
        .await
        .unwrap();
    sub.subscribe("of/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v4::connect(broker.addr, "overflow-pub").await;
    for i in 0..25 {
        publisher
            .publish(
                "of/t",
                v4::QoS::AtLeastOnce,
                false,
                format!("{i}").as_bytes(),
            )
            .await;
    }
    publisher.disconnect().await;
    let mut sub = v4::connect_with(broker.addr, "overflow", persistent)
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(p) = sub
        .next_matching("PUBLISH", QUIET, |p| match p {
            v4::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    {
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    let dropped = common::counter(&broker.stats().dropped_qos12);
    sub.disconnect().await;
    broker.stop().await;
    (got, dropped)
}

#[tokio::test]
async fn a_full_offline_queue_drops_new_messages_and_counts_them_with_drop_new() {
    let (got, dropped) = offline_overflow(OverflowPolicy::DropNew).await;
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    assert_eq!(dropped, 15);
}

#[tokio::test]
async fn a_full_offline_queue_evicts_the_oldest_messages_with_drop_oldest() {
    let (got, dropped) = offline_overflow(OverflowPolicy::DropOldest).await;
    let expected: Vec<String> = (15..25).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    assert_eq!(dropped, 15);
}

#[tokio::test]
async fn the_offline_queue_is_bounded_in_bytes_too() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_bytes = 10_000).await;
    let persistent = |o: &mut v4::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut sub = v4::connect_with(broker.addr, "bytes", persistent)
        .await
        .unwrap();
    sub.subscribe("bytes/t", v4::QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = v4::connect(broker.addr, "bytes-pub").await;
    for _ in 0..25 {
        publisher
            .publish("bytes/t", v4::QoS::AtLeastOnce, false, &[1; 1000])
            .await;
    }
    publisher.disconnect().await;
    let mut sub = v4::connect_with(broker.addr, "bytes", persistent)
        .await
        .unwrap();
    let mut got = 0u64;
    while sub
        .next_matching("PUBLISH", QUIET, |p| {
            matches!(p, v4::Packet::Publish(_)).then_some(())
        })
        .await
        .is_some()
    {
        got += 1;
    }
    let dropped = common::counter(&broker.stats().dropped_qos12);
    assert!(
        (5..=10).contains(&got),
        "about 10,000 bytes of 1,000-byte messages: {got}"
    );
    assert_eq!(
        got + dropped,
        25,
        "every message delivered or counted as dropped"
    );
    sub.disconnect().await;
    broker.stop().await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_connections = 2).await;
    let a = v4::connect(broker.addr, "mc-a").await;
    let b = v4::connect(broker.addr, "mc-b").await;
    let refused = v4::connect_with(broker.addr, "mc-c", |_| {}).await;
    assert!(refused.is_err(), "a third connection was accepted");
    a.disconnect().await;
    common::eventually("the slot to be freed", Duration::from_secs(2), || {
        common::counter(&broker.stats().connections_current) < 2
    })
    .await;
    let c = v4::connect(broker.addr, "mc-c").await;
    b.disconnect().await;
    c.disconnect().await;
    broker.stop().await;
}
