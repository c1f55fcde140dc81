//! Reloading the configuration without a restart: SIGHUP to the real binary after
//! rewriting its `--config` file (the ACL file and a limit take effect; a broken file
//! changes nothing), and `BrokerHandle::reload` in process for webhooks and the
//! connection limits. See the README's "Reload".

mod common;
mod crash_support;
#[path = "webhooks/hook.rs"]
mod hook;

use common::{RawClient, TestBroker, QUIET};
use crash_support::{Settings, Workspace};
use hook::Hook;
use rookery::codec::{self, Packet, ProtocolVersion};
use rookery::config::WebhookConfig;
use rookery::Config;
use std::path::Path;
use std::time::{Duration, Instant};

const V5: ProtocolVersion = ProtocolVersion::V5;

/// Waits until the broker's log holds `needle` at least `count` times.
async fn wait_for_log(log: &Path, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {count}x {needle:?} in the log within 10 s\n{}",
            crash_support::log_tail(log, 20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes at QoS 1 and returns the PUBACK reason code.
async fn publish(client: &mut RawClient, packet_id: u16, topic: &str, size: usize) -> u8 {
    client
        .send(&common::publish_packet(
            topic,
            codec::QoS::AtLeastOnce,
            packet_id,
            &vec![b'x'; size],
        ))
        .await;
    match client.expect().await {
        Packet::PubAck(ack) => {
            assert_eq!(ack.packet_id, packet_id);
            ack.reason_code
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// A new v5 connection and the Maximum Packet Size its CONNACK announces.
async fn fresh(addr: std::net::SocketAddr, id: &str) -> (RawClient, Option<u32>) {
    let (client, connack) = RawClient::connect(addr, common::connect_packet(V5, id)).await;
    assert_eq!(connack.reason_code, 0, "{connack:?}");
    (client, connack.properties.maximum_packet_size)
}

fn config_text(max_packet_size: u32, acl: &Path) -> String {
    format!(
        "[mqtt]\nmax_packet_size = {max_packet_size}\n[auth]\nacl_file = '{}'\n",
        acl.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_acl_file_and_limits_and_a_broken_file_changes_nothing() {
    let mut workspace = Workspace::new("reload");
    let root = workspace.data_dir().parent().unwrap().to_path_buf();
    let acl = root.join("acl.conf");
    std::fs::write(&acl, "topic readwrite #\n").unwrap();
    let settings = Settings {
        durability: "none",
        env: Vec::new(),
        config: Some(config_text(1_048_576, &acl)),
    };
    let broker = workspace.start(&settings).await;
    let config_path = broker.config_path.clone().expect("started with --config");

    let (mut before, max) = fresh(broker.addr, "before").await;
    assert_eq!(max, Some(1_048_576));
    assert!(publish(&mut before, 1, "secret/x", 10).await < 0x80);

    // A topic becomes denied; the packet size limit is lowered.
    std::fs::write(&acl, "topic readwrite #\ntopic deny secret/#\n").unwrap();
    std::fs::write(&config_path, config_text(1024, &acl)).unwrap();
    broker.sighup();
    wait_for_log(&broker.log, "configuration reloaded", 1).await;

    // The ACL applies to every client at once, the one connected before included.
    assert_eq!(publish(&mut before, 2, "secret/x", 10).await, 0x87);
    // That one keeps the packet size it was told in its CONNACK ...
    assert!(publish(&mut before, 3, "open/x", 2000).await < 0x80);
    // ... a new connection gets the new one, and is held to it.
    let (mut after, max) = fresh(broker.addr, "after").await;
    assert_eq!(max, Some(1024));
    assert_eq!(publish(&mut after, 1, "secret/x", 10).await, 0x87);
    after
        .send(&common::publish_packet(
            "open/x",
            codec::QoS::AtLeastOnce,
            2,
            &[b'x'; 2000],
        ))
        .await;
    let packets = after.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x95),
        "{packets:?}"
    );

    // A file that does not parse changes nothing.
    std::fs::write(&config_path, "[mqtt]\nmax_packet_size = \"small\"\n").unwrap();
    broker.sighup();
    wait_for_log(&broker.log, "configuration reload refused", 1).await;
    let (mut client, max) = fresh(broker.addr, "broken-1").await;
    assert_eq!(max, Some(1024));
    assert_eq!(publish(&mut client, 1, "secret/x", 10).await, 0x87);

    // Nor does a valid file naming an ACL file that cannot be read: the limit it also
    // changes is not applied either.
    std::fs::write(&config_path, config_text(512, &root.join("missing.conf"))).unwrap();
    broker.sighup();
    wait_for_log(&broker.log, "configuration reload refused", 2).await;
    let (mut client, max) = fresh(broker.addr, "broken-2").await;
    assert_eq!(max, Some(1024));
    assert_eq!(publish(&mut client, 1, "secret/x", 10).await, 0x87);
    before.ping().await;

    let status = broker
        .sigterm(Duration::from_secs(10))
        .await
        .expect("the broker stops on SIGTERM after reloads");
    assert!(status.success(), "{status}");
}

fn webhook(addr: std::net::SocketAddr, name: &str) -> WebhookConfig {
    let mut webhook = WebhookConfig::new(format!("http://{addr}/hook"));
    webhook.name = Some(name.into());
    webhook.events = vec!["message.publish".into()];
    webhook.backoff_initial_ms = 50;
    webhook.backoff_max_ms = 200;
    webhook
}

fn topics(hook: &Hook) -> Vec<String> {
    let mut topics: Vec<String> = hook
        .events()
        .iter()
        .filter_map(|e| e["topic"].as_str().map(str::to_string))
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

async fn eventually_topics(hook: &Hook, expected: &[&str]) {
    common::eventually(
        &format!("the endpoint to have {expected:?}"),
        Duration::from_secs(10),
        || topics(hook) == expected,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_webhook_events_to_the_new_endpoints() {
    let a = Hook::default();
    let (a_addr, _a_server) = hook::start(a.clone()).await;
    let b = Hook::default();
    let (b_addr, _b_server) = hook::start(b.clone()).await;
    let broker = TestBroker::start_with(|c| c.webhooks.push(webhook(a_addr, "a"))).await;
    let mut publisher = RawClient::connected(broker.addr, V5, "hooks-pub").await;
    assert!(publish(&mut publisher, 1, "hooks/1", 4).await < 0x80);
    eventually_topics(&a, &["hooks/1"]).await;

    let mut config = Config::default();
    config.webhooks.push(webhook(b_addr, "b"));
    let report = broker.handle().reload(config).await.expect("reload");
    assert!(
        report.changed.iter().any(|c| c.starts_with("webhooks")),
        "{report:?}"
    );
    // Restart-only keys that differ (the test broker's ports, data directory) are
    // reported, not applied: the broker still answers where it did.
    assert!(
        report.need_restart.contains(&"mqtt.listen".to_string()),
        "{report:?}"
    );
    assert!(publish(&mut publisher, 2, "hooks/2", 4).await < 0x80);
    eventually_topics(&b, &["hooks/2"]).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        topics(&a),
        ["hooks/1"],
        "the old endpoint gets no new events"
    );
    RawClient::connected(broker.addr, V5, "still-here")
        .await
        .ping()
        .await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undelivered_webhook_events_survive_a_reload_of_their_endpoint() {
    let a = Hook::default();
    a.fail_always
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (a_addr, _a_server) = hook::start(a.clone()).await;
    let broker = TestBroker::start_with(|c| c.webhooks.push(webhook(a_addr, "a"))).await;
    let mut publisher = RawClient::connected(broker.addr, V5, "held-pub").await;
    for i in 1..=3u16 {
        // Acknowledged once its event is in the durable outbox.
        assert!(publish(&mut publisher, i, &format!("held/{i}"), 4).await < 0x80);
    }
    // The same endpoint (same name: same outbox), another setting: the endpoints are
    // replaced, and the new ones recover what the old ones still held.
    let mut config = Config::default();
    let mut changed = webhook(a_addr, "a");
    changed.timeout_ms = 2_000;
    config.webhooks.push(changed);
    broker.handle().reload(config).await.expect("reload");
    a.fail_always
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(publish(&mut publisher, 4, "held/4", 4).await < 0x80);
    eventually_topics(&a, &["held/1", "held/2", "held/3", "held/4"]).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_reload_changes_the_connection_limits_for_new_connections() {
    let broker = TestBroker::start().await;
    let mut first = RawClient::connected(broker.addr, V5, "limits-1").await;
    let mut config = Config::default();
    config.mqtt.max_connections = 1;
    config.mqtt.max_queued_messages = 3;
    config.auth.max_auth_failures = 1;
    let report = broker
        .handle()
        .reload(config.clone())
        .await
        .expect("reload");
    for key in [
        "mqtt.max_connections",
        "mqtt.max_queued_messages",
        "auth.max_auth_failures",
    ] {
        assert!(
            report.changed.iter().any(|c| c.starts_with(key)),
            "{key} in {report:?}"
        );
    }
    let (mut refused, connack) =
        RawClient::connect(broker.addr, common::connect_packet(V5, "limits-2")).await;
    assert_eq!(connack.reason_code, 0x97);
    refused.expect_closed().await;
    first.ping().await;
    // The same configuration again: nothing to report.
    let report = broker.handle().reload(config).await.expect("reload");
    assert!(report.changed.is_empty(), "{report:?}");
    broker.stop().await;
}
