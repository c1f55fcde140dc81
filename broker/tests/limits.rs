//! Every configured limit, hit by real clients over real sockets, with what a client sees
//! (v5 reason codes; 3.1.1 return codes, read as raw bytes where the two differ) and how
//! it is counted (`/metrics`). See the README's "Limits" section.

mod common;

use bytes::Bytes;
use common::{RawClient, TestBroker, QUIET};
use rookery::codec::{self, Connect, MqttStr, Packet, ProtocolVersion, PubResponse};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const V5: ProtocolVersion = ProtocolVersion::V5;
const V311: ProtocolVersion = ProtocolVersion::V311;

/// Sends `connect` on a new TCP connection and returns every byte the broker sent until
/// it closed the connection (within the test bound).
async fn raw_answer(addr: SocketAddr, connect: Connect) -> Vec<u8> {
    let version = connect.protocol;
    let mut stream = common::within("TCP connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("TCP connect");
    let bytes = common::encode(&Packet::Connect(Box::new(connect)), version);
    stream.write_all(&bytes).await.expect("CONNECT written");
    let mut answer = Vec::new();
    common::within("the broker to answer and close", async {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    answer
}

/// The 3.1.1 CONNACK refusing with `code`, after which the connection is closed
/// [MQTT-3.2.2-5]; session present 0 [MQTT-3.2.2-4].
fn v311_refusal(code: u8) -> Vec<u8> {
    vec![0x20, 0x02, 0x00, code]
}

/// A v5 CONNECT refused: its CONNACK, after which the broker closes [MQTT-3.2.2-7].
async fn v5_refusal(addr: SocketAddr, connect: Connect) -> codec::ConnAck {
    let (mut client, connack) = RawClient::connect(addr, connect).await;
    assert!(connack.reason_code >= 0x80, "{connack:?}");
    assert!(!connack.session_present, "[MQTT-3.2.2-6]");
    let after = client.expect_closed().await;
    assert!(after.is_empty(), "nothing after a refusal: {after:?}");
    connack
}

fn login(version: ProtocolVersion, client_id: &str, user: &str, token: &str) -> Connect {
    let mut connect = common::connect_packet(version, client_id);
    connect.username = Some(MqttStr::from(user));
    connect.password = Some(Bytes::copy_from_slice(token.as_bytes()));
    connect
}

async fn metrics(broker: &TestBroker) -> HashMap<String, f64> {
    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", broker.http_addr()))
        .timeout(common::WAIT)
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn refused(samples: &HashMap<String, f64>, reason: &str) -> f64 {
    samples[&format!("rookery_connections_refused_total{{reason=\"{reason}\"}}")]
}

#[tokio::test]
async fn max_connections_refuses_with_quota_exceeded_or_server_unavailable() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_connections = 1).await;
    let mut first = RawClient::connected(broker.addr, V5, "mc-1").await;
    let connack = v5_refusal(broker.addr, common::connect_packet(V5, "mc-2")).await;
    assert_eq!(connack.reason_code, 0x97, "Quota exceeded");
    assert_eq!(
        connack.properties.reason_string.as_deref(),
        Some("too many connections")
    );
    assert_eq!(
        raw_answer(broker.addr, common::connect_packet(V311, "mc-3")).await,
        v311_refusal(3),
        "3.1.1: Server unavailable"
    );
    // The connection in place is not disturbed.
    first.ping().await;
    let samples = metrics(&broker).await;
    assert_eq!(refused(&samples, "max_connections"), 2.0);
    assert_eq!(refused(&samples, "connect_rate"), 0.0);
    drop(first);
    common::eventually("the slot to be freed", Duration::from_secs(2), || {
        common::counter(&broker.stats().connections_current) == 0
    })
    .await;
    RawClient::connected(broker.addr, V311, "mc-4")
        .await
        .ping()
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn the_connect_rate_per_address_refuses_with_connection_rate_exceeded() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_connect_rate = 1;
        c.mqtt.connect_burst = 3;
    })
    .await;
    // The burst: three at once (kept open; the rate is about connecting, not being
    // connected).
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(RawClient::connected(broker.addr, V5, &format!("rate-{i}")).await);
    }
    let connack = v5_refusal(broker.addr, common::connect_packet(V5, "rate-v5")).await;
    assert_eq!(connack.reason_code, 0x9F, "Connection rate exceeded");
    assert_eq!(
        connack.properties.reason_string.as_deref(),
        Some("connection rate exceeded")
    );
    assert_eq!(
        raw_answer(broker.addr, common::connect_packet(V311, "rate-v311")).await,
        v311_refusal(3),
        "3.1.1: Server unavailable"
    );
    // WebSocket: refused before the upgrade.
    let url = format!("ws://{}/mqtt", broker.http_addr());
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!(
            "expected HTTP 429, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
    for client in &mut open {
        client.ping().await;
    }
    let samples = metrics(&broker).await;
    assert_eq!(refused(&samples, "connect_rate"), 3.0);
    // One token a second: the next connection a second later is let in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    RawClient::connected(broker.addr, V5, "rate-later")
        .await
        .ping()
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn failed_logins_back_off_the_address_and_a_good_login_afterwards_resets() {
    let broker = TestBroker::start_with(|c| {
        c.auth.max_auth_failures = 2;
        c.auth.auth_backoff_secs = 1;
        c.auth.auth_backoff_max_secs = 4;
    })
    .await;
    let token = broker.token("alice");
    // Connected before: never disturbed by the back-off of its address.
    let mut bystander = RawClient::connected(broker.addr, V5, "bystander").await;

    let connack = v5_refusal(broker.addr, login(V5, "bad-1", "alice", "wrong")).await;
    assert_eq!(connack.reason_code, 0x86, "Bad user name or password");
    assert_eq!(
        raw_answer(broker.addr, login(V311, "bad-2", "alice", "wrong")).await,
        v311_refusal(4),
        "3.1.1: bad user name or password"
    );
    // Two failures: the address is backed off for 1 s, the right token included.
    let connack = v5_refusal(broker.addr, login(V5, "good-1", "alice", &token)).await;
    assert_eq!(connack.reason_code, 0x8A, "Banned");
    assert_eq!(
        raw_answer(broker.addr, login(V311, "good-2", "alice", &token)).await,
        v311_refusal(5),
        "3.1.1: not authorized"
    );
    let connack = v5_refusal(broker.addr, common::connect_packet(V5, "anonymous")).await;
    assert_eq!(connack.reason_code, 0x8A);
    bystander.ping().await;
    let samples = metrics(&broker).await;
    assert_eq!(samples["rookery_auth_failures_total"], 2.0);
    assert_eq!(refused(&samples, "auth_backoff"), 3.0);
    assert_eq!(samples["rookery_auth_backoff_addresses"], 1.0);

    // Once the back-off has passed, the good client from the same address is let in ...
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, connack) = RawClient::connect(broker.addr, login(V5, "good-3", "alice", &token)).await;
    assert_eq!(
        connack.reason_code, 0,
        "a good login after the back-off: {connack:?}"
    );
    // ... and its success forgot the failures: one more failure is not a back-off.
    let connack = v5_refusal(broker.addr, login(V5, "bad-3", "alice", "wrong")).await;
    assert_eq!(connack.reason_code, 0x86);
    let (mut alice, connack) =
        RawClient::connect(broker.addr, login(V5, "good-4", "alice", &token)).await;
    assert_eq!(connack.reason_code, 0, "{connack:?}");
    alice.ping().await;
    assert_eq!(
        metrics(&broker).await["rookery_auth_backoff_addresses"],
        0.0
    );
    broker.stop().await;
}

#[tokio::test]
async fn each_failure_after_a_back_off_starts_a_longer_one() {
    let broker = TestBroker::start_with(|c| {
        c.auth.max_auth_failures = 2;
        c.auth.auth_backoff_secs = 1;
        c.auth.auth_backoff_max_secs = 60;
    })
    .await;
    let token = broker.token("bob");
    for id in ["b-1", "b-2"] {
        let connack = v5_refusal(broker.addr, login(V5, id, "bob", "wrong")).await;
        assert_eq!(connack.reason_code, 0x86);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // One failure now is enough, and the back-off is 2 s.
    let connack = v5_refusal(broker.addr, login(V5, "b-3", "bob", "wrong")).await;
    assert_eq!(connack.reason_code, 0x86);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let connack = v5_refusal(broker.addr, login(V5, "b-4", "bob", &token)).await;
    assert_eq!(
        connack.reason_code, 0x8A,
        "still backed off after 1.1 s of 2 s"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (mut bob, connack) = RawClient::connect(broker.addr, login(V5, "b-5", "bob", &token)).await;
    assert_eq!(connack.reason_code, 0, "{connack:?}");
    bob.ping().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_packet_above_max_packet_size_closes_with_0x95() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_packet_size = 1024).await;
    for version in [V5, V311] {
        let (mut client, connack) = RawClient::connect(
            broker.addr,
            common::connect_packet(version, &format!("big-{version:?}")),
        )
        .await;
        if version.is_v5() {
            assert_eq!(connack.properties.maximum_packet_size, Some(1024));
        }
        client
            .send(&common::publish_packet(
                "big/t",
                codec::QoS::AtMostOnce,
                0,
                &[1; 2000],
            ))
            .await;
        let packets = client.expect_closed().await;
        match version {
            // [MQTT-3.2.2-15] / 4.13: DISCONNECT 0x95 Packet too large.
            V5 => assert_eq!(common::disconnect_reason(&packets), Some(0x95)),
            _ => assert!(packets.is_empty(), "3.1.1: closed, no packet: {packets:?}"),
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn topics_over_the_length_and_level_limits_are_refused() {
    let broker = TestBroker::start_with(|c| {
        c.mqtt.max_topic_length = 16;
        c.mqtt.max_topic_levels = 3;
    })
    .await;
    for version in [V5, V311] {
        let id = format!("topics-{version:?}");
        let mut client = RawClient::connected(broker.addr, version, &id).await;
        // Filters: SUBACK 0x8F Topic Filter invalid (3.1.1: 0x80 Failure); the connection
        // stays.
        let refused = if version.is_v5() { 0x8F } else { 0x80 };
        assert_eq!(
            client.subscribe(1, "a/b/c/d", codec::QoS::AtMostOnce).await,
            vec![refused]
        );
        assert_eq!(
            client
                .subscribe(2, "a-very-long-topic-filter", codec::QoS::AtMostOnce)
                .await,
            vec![refused]
        );
        assert_eq!(
            client.subscribe(3, "a/b/c", codec::QoS::AtMostOnce).await,
            vec![0]
        );
        // A topic name over a limit: DISCONNECT 0x90 Topic Name invalid (3.1.1: closed).
        for topic in ["a/b/c/d", "a-very-long-topic-name"] {
            let id = format!("pub-{version:?}-{topic}");
            let mut publisher = RawClient::connected(broker.addr, version, &id).await;
            publisher
                .send(&common::publish_packet(
                    topic,
                    codec::QoS::AtLeastOnce,
                    1,
                    b"x",
                ))
                .await;
            let packets = publisher.expect_closed().await;
            match version {
                V5 => assert_eq!(common::disconnect_reason(&packets), Some(0x90), "{topic}"),
                _ => assert!(packets.is_empty(), "{topic}: {packets:?}"),
            }
        }
        client.ping().await;
    }
    // A will topic over a limit: CONNACK 0x90.
    let mut connect = common::connect_packet(V5, "will");
    connect.will = Some(codec::LastWill {
        topic: MqttStr::from("w/x/y/z"),
        payload: Bytes::from_static(b"gone"),
        qos: codec::QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    assert_eq!(v5_refusal(broker.addr, connect).await.reason_code, 0x90);
    broker.stop().await;
}

#[tokio::test]
async fn max_inflight_bounds_unacknowledged_deliveries_with_the_clients_receive_maximum() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_inflight = 3).await;
    let mut publisher = RawClient::connected(broker.addr, V5, "inf-pub").await;
    // One subscriber takes the broker's limit, one announces a smaller Receive Maximum.
    let mut wide = RawClient::connected(broker.addr, V5, "inf-wide").await;
    let mut connect = common::connect_packet(V5, "inf-narrow");
    connect.properties.receive_maximum = Some(1);
    let (mut narrow, _) = RawClient::connect(broker.addr, connect).await;
    for client in [&mut wide, &mut narrow] {
        assert_eq!(
            client.subscribe(1, "inf/#", codec::QoS::AtLeastOnce).await,
            vec![1]
        );
    }
    for i in 0..6u16 {
        publisher
            .send(&common::publish_packet(
                "inf/t",
                codec::QoS::AtLeastOnce,
                i + 1,
                b"m",
            ))
            .await;
        assert!(matches!(publisher.expect().await, Packet::PubAck(_)));
    }
    for (client, limit) in [(&mut wide, 3), (&mut narrow, 1)] {
        let mut ids = Vec::new();
        for _ in 0..limit {
            ids.push(client.expect_publish().await.packet_id);
        }
        // [MQTT-4.9.0-2]: no more until one is acknowledged.
        client.expect_silence(QUIET).await;
        client
            .send(&Packet::PubAck(PubResponse::new(ids[0], 0)))
            .await;
        client.expect_publish().await;
        client.expect_silence(QUIET).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_offline_queue_over_max_queued_messages_drops_and_counts() {
    let broker = TestBroker::start_with(|c| c.mqtt.max_queued_messages = 4).await;
    let mut connect = common::connect_packet(V311, "q-sub");
    connect.clean_start = false;
    let (mut subscriber, _) = RawClient::connect(broker.addr, connect.clone()).await;
    assert_eq!(
        subscriber
            .subscribe(1, "q/#", codec::QoS::AtLeastOnce)
            .await,
        vec![1]
    );
    subscriber
        .send(&Packet::Disconnect(Default::default()))
        .await;
    subscriber.expect_closed().await;
    common::eventually("the session to go offline", Duration::from_secs(2), || {
        common::counter(&broker.stats().connections_current) == 0
    })
    .await;
    let mut publisher = RawClient::connected(broker.addr, V311, "q-pub").await;
    for i in 0..10u16 {
        publisher
            .send(&common::publish_packet(
                "q/t",
                codec::QoS::AtLeastOnce,
                i + 1,
                &[b'0' + i as u8],
            ))
            .await;
        assert!(matches!(publisher.expect().await, Packet::PubAck(_)));
    }
    let samples = metrics(&broker).await;
    assert_eq!(
        samples["rookery_messages_dropped_total{reason=\"queue_full_qos12\"}"], 6.0,
        "drop_new: the 6 beyond the limit of 4"
    );
    let (mut subscriber, connack) = RawClient::connect(broker.addr, connect).await;
    assert!(connack.session_present);
    let mut got = Vec::new();
    for _ in 0..4 {
        let publish = subscriber.expect_publish().await;
        got.push(publish.payload[0]);
        subscriber
            .send(&Packet::PubAck(PubResponse::new(publish.packet_id, 0)))
            .await;
    }
    assert_eq!(got, b"0123");
    subscriber.expect_silence(QUIET).await;
    broker.stop().await;
}
