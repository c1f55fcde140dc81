//! `/metrics` and `/health` (SPEC §10), scraped over real HTTP after real MQTT traffic and
//! checked against what the test sent.

mod common;
#[path = "webhooks/hook.rs"]
mod hook;

use common::v4::connect;
use common::{eventually, TestBroker};
use rumqttc::QoS;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The samples of a scrape: `name{labels}` → value.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(broker: &TestBroker) -> (String, HashMap<String, f64>) {
    let response = reqwest::Client::new()
        .get(format!("http://{}/metrics", broker.http_addr()))
        .timeout(WAIT)
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    (text, samples)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic_actually_sent() {
    let endpoint = hook::Hook::default();
    let (hook_addr, _server) = hook::start(endpoint.clone()).await;
    let broker = TestBroker::start_with(|config| {
        let mut webhook = rookery::config::WebhookConfig::new(format!("http://{hook_addr}/hook"));
        webhook.name = Some("audit".into());
        webhook.events = vec!["message.publish".into()];
        config.webhooks.push(webhook);
    })
    .await;
    let (_, before) = scrape(&broker).await;
    assert_eq!(before["rookery_connections"], 0.0);

    let mut subscriber = connect(broker.addr, "m-sub").await;
    subscriber.subscribe("m/#", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, "m-pub").await;
    const SENT: usize = 25;
    for i in 0..SENT {
        publisher
            .publish(&format!("m/{i}"), QoS::AtLeastOnce, false, b"0123456789")
            .await;
    }
    for _ in 0..SENT {
        subscriber.recv_publish().await;
    }
    // The counters must move by exactly what was sent.
    eventually("the webhook events delivered", WAIT, || {
        endpoint.events().len() >= SENT
    })
    .await;
    let (text, after) = scrape(&broker).await;
    assert_eq!(after["rookery_connections"], 2.0, "{text}");
    assert_eq!(
        after["rookery_publish_received_total"] - before["rookery_publish_received_total"],
        SENT as f64,
        "{text}"
    );
    assert_eq!(
        after["rookery_publish_sent_total"] - before["rookery_publish_sent_total"],
        SENT as f64
    );
    assert!(after["rookery_bytes_received_total"] >= (SENT * 10) as f64);
    assert_eq!(after["rookery_subscriptions"], 1.0);
    assert_eq!(
        after["rookery_messages_dropped_total{reason=\"queue_full_qos12\"}"],
        0.0
    );
    assert_eq!(
        after["rookery_webhook_deliveries_total{endpoint=\"audit\"}"], SENT as f64,
        "{text}"
    );
    assert!(after["rookery_webhook_delivery_seconds_count{endpoint=\"audit\"}"] >= SENT as f64);
    assert_eq!(
        after["rookery_webhook_outbox_depth{endpoint=\"audit\"}"],
        0.0
    );
    // QoS 1 with a webhook: each event was committed before its PUBACK.
    assert!(
        after["rookery_storage_commit_seconds_count"] >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("rookery_storage_commit_seconds_bucket{le=\"+Inf\"}"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"));

    let health = reqwest::Client::new()
        .get(format!("http://{}/health", broker.http_addr()))
        .timeout(WAIT)
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let health: serde_json::Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ready");
    assert_eq!(health["storage"], "ok");
    assert_eq!(health["connections"], 2);

    publisher.disconnect().await;
    subscriber.disconnect().await;
    eventually("the connection gauge falls back", WAIT, || {
        broker
            .stats()
            .connections_current
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0
    })
    .await;
    let (_, last) = scrape(&broker).await;
    assert_eq!(last["rookery_connections"], 0.0);
    assert_eq!(last["rookery_connections_accepted_total"], 2.0);
    broker.stop().await;
}
