//! Delivery to a healthy (or briefly failing) endpoint: what each request carries, batching,
//! retries with a stable delivery id, order.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rookery_bridge::{delivery_id_string, Bridge, Enqueued, EventKind};
use sha2::Sha256;
use support::*;

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn a_request_carries_the_headers_and_a_valid_signature() {
    let server = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.secret = "s3cret".into();
    endpoint
        .headers
        .insert("Authorization".into(), "Bearer token".into());
    let bridge = Bridge::start(vec![endpoint.clone()], store.clone(), vec![]);

    let sent = event(42, EventKind::GroupMembers);
    assert_eq!(bridge.enqueue(0, sent.clone()), Enqueued::Queued);
    eventually("the event is removed after its 2xx", || {
        store.removed_ids() == [42]
    })
    .await;

    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(
        request.body,
        sent.render(&endpoint),
        "the body is the stored JSON, byte for byte"
    );
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer token"));
    assert_eq!(request.header("x-rookery-event"), Some("group.members"));
    assert_eq!(
        request.header("x-rookery-delivery"),
        Some("000000000000002a")
    );
    assert_eq!(request.header("x-rookery-batch"), None);
    let expected = format!("sha256={}", hmac_hex("s3cret", &request.body));
    assert_eq!(
        request.header("x-rookery-signature"),
        Some(expected.as_str())
    );
    assert_ne!(
        request.header("x-rookery-signature"),
        Some(format!("sha256={}", hmac_hex("other", &request.body)).as_str())
    );
    assert_eq!(store.removed.lock().unwrap()[0].0, endpoint.endpoint_key());

    let stats = &bridge.stats()[0];
    assert_eq!(stats.name, server.url());
    assert_eq!(stats.url, server.url());
    assert_eq!((stats.delivered, stats.failures, stats.retries), (1, 0, 0));
    assert_eq!((stats.outbox_depth, stats.outbox_bytes), (0, 0));
    assert_eq!(stats.latency.count, 1);
    assert_eq!(*stats.latency.cumulative().last().unwrap(), 1);
    bridge.shutdown().await;
}

#[tokio::test]
async fn without_a_secret_there_is_no_signature_header() {
    let server = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.name = Some("audit".into());
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    bridge.enqueue(0, event(1, EventKind::UserCreated));
    eventually("delivered", || store.removed_ids() == [1]).await;
    let request = &server.received()[0];
    assert_eq!(request.header("x-rookery-signature"), None);
    assert_eq!(request.header("x-rookery-event"), Some("user.created"));
    assert_eq!(bridge.stats()[0].name, "audit");
    bridge.shutdown().await;
}

#[tokio::test]
async fn full_batches_are_json_arrays_of_batch_max_events() {
    let server = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.secret = "k".into();
    endpoint.batch_max = 5;
    // Far longer than the test: only full batches can go.
    endpoint.batch_age_ms = 60_000;
    endpoint.concurrency = 1;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    for id in 0..10 {
        bridge.enqueue(0, message(id));
    }
    eventually("ten delivered", || store.removed_ids().len() == 10).await;

    let received = server.received();
    assert_eq!(received.len(), 2);
    for (batch, request) in received.iter().enumerate() {
        let ids: Vec<u64> = (batch as u64 * 5..batch as u64 * 5 + 5).collect();
        let body = request.json();
        let items = body.as_array().expect("a batch body is an array");
        let numbers: Vec<u64> = items.iter().map(|i| i["n"].as_u64().unwrap()).collect();
        assert_eq!(numbers, ids);
        assert_eq!(request.header("x-rookery-batch"), Some("5"));
        assert_eq!(request.header("x-rookery-event"), Some("message.publish"));
        let delivery: Vec<String> = ids.iter().map(|&id| delivery_id_string(id)).collect();
        assert_eq!(
            request.header("x-rookery-delivery"),
            Some(delivery.join(",").as_str())
        );
        let expected = format!("sha256={}", hmac_hex("k", &request.body));
        assert_eq!(
            request.header("x-rookery-signature"),
            Some(expected.as_str())
        );
    }
    assert_eq!(bridge.stats()[0].delivered, 10);
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_partial_batch_goes_when_its_oldest_event_is_batch_age_old() {
    let server = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.batch_max = 100;
    endpoint.batch_age_ms = 300;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    let enqueued_at = Instant::now();
    bridge.enqueue(0, message(1));
    bridge.enqueue(0, event(2, EventKind::ClientConnected));
    bridge.enqueue(0, event(3, EventKind::GroupDeleted));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.count(), 0, "a partial batch waits for its age");
    eventually("the partial batch is sent", || {
        store.removed_ids().len() == 3
    })
    .await;

    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert!(request.at.duration_since(enqueued_at) >= Duration::from_millis(290));
    assert_eq!(request.json().as_array().unwrap().len(), 3);
    assert_eq!(request.header("x-rookery-batch"), Some("3"));
    assert_eq!(request.header("x-rookery-event"), Some("batch"));
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_500_is_retried_until_it_succeeds_with_the_same_delivery_id() {
    let server = TestServer::start().await;
    server.script([
        Answer::status(500),
        Answer::status(503).with_body("busy"),
        Answer::status(500),
    ]);
    let store = Arc::new(MemoryStore::default());
    let bridge = Bridge::start(vec![config(server.url())], store.clone(), vec![]);
    bridge.enqueue(0, message(7));
    eventually("delivered after three failures", || {
        store.removed_ids() == [7]
    })
    .await;

    let received = server.received();
    assert_eq!(received.len(), 4);
    let ids: HashSet<&str> = received
        .iter()
        .map(|r| r.header("x-rookery-delivery").unwrap())
        .collect();
    assert_eq!(ids, HashSet::from(["0000000000000007"]));
    assert!(received.windows(2).all(|w| w[0].body == w[1].body));
    let stats = &bridge.stats()[0];
    assert_eq!((stats.failures, stats.retries, stats.delivered), (3, 3, 1));
    assert_eq!(stats.dead_letters, 0);
    assert!(store.buried_ids().is_empty());
    bridge.shutdown().await;
}

#[tokio::test]
async fn odd_answers_are_failures_and_a_204_is_success() {
    let server = TestServer::start().await;
    server.script([
        Answer::status(302),
        Answer::status(404).with_body("x".repeat(1 << 20)),
        Answer::status(400).with_body("{\"error\":"),
        Answer::status(204),
    ]);
    let store = Arc::new(MemoryStore::default());
    let bridge = Bridge::start(vec![config(server.url())], store.clone(), vec![]);
    bridge.enqueue(0, message(1));
    eventually("delivered after odd answers", || store.removed_ids() == [1]).await;
    assert_eq!(server.count(), 4, "a redirect is not followed");
    assert_eq!(bridge.stats()[0].failures, 3);
    bridge.shutdown().await;
}

#[tokio::test]
async fn recovered_events_go_first_and_order_is_fifo_with_concurrency_one() {
    let server = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.concurrency = 1;
    let recovered = vec![vec![message(1), message(2), message(3)]];
    let bridge = Bridge::start(vec![endpoint], store.clone(), recovered);
    for id in 4..=20 {
        bridge.enqueue(0, message(id));
    }
    eventually("all delivered", || store.removed_ids().len() == 20).await;
    let order: Vec<u64> = server
        .received()
        .iter()
        .map(|r| r.json()["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (1..=20).collect::<Vec<u64>>());
    assert_eq!(store.removed_ids(), (1..=20).collect::<Vec<u64>>());
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_requeued_dead_letter_gets_a_fresh_age() {
    let server = TestServer::start().await;
    server.script([Answer::status(500)]);
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.max_age_secs = 1;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    let mut old = message(9);
    old.created_ms -= 10_000;
    bridge.requeue(0, old);
    eventually("delivered on the retry", || store.removed_ids() == [9]).await;
    assert_eq!(server.count(), 2);
    assert!(
        store.buried_ids().is_empty(),
        "an old event requeued is not buried at its first failure"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn each_endpoint_gets_its_own_events() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let endpoints = vec![config(first.url()), config(second.url())];
    let keys: Vec<u64> = endpoints.iter().map(|e| e.endpoint_key()).collect();
    let bridge = Bridge::start(endpoints, store.clone(), vec![]);
    bridge.enqueue(0, message(1));
    bridge.enqueue(1, message(2));
    bridge.enqueue(1, message(3));
    assert_eq!(bridge.enqueue(2, message(4)), Enqueued::DroppedNew);
    eventually("three delivered", || store.removed_ids().len() == 3).await;
    assert_eq!(first.count(), 1);
    assert_eq!(second.count(), 2);
    let mut removed = store.removed.lock().unwrap().clone();
    removed.sort_unstable_by_key(|&(_, id)| id);
    assert_eq!(removed, [(keys[0], 1), (keys[1], 2), (keys[1], 3)]);
    assert_eq!(bridge.endpoints().len(), 2);
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_message_event_is_rendered_per_endpoint_when_sent() {
    use rookery_bridge::{Body, Event, MessageEvent, MessageGroup, PayloadEncoding};
    let text = TestServer::start().await;
    let binary = TestServer::start().await;
    let store = Arc::new(MemoryStore::default());
    let mut as_text = config(text.url());
    as_text.secret = "t".into();
    let mut as_base64 = config(binary.url());
    as_base64.payload_encoding = PayloadEncoding::Base64;
    as_base64.batch_max = 2;
    as_base64.batch_age_ms = 10;
    let bridge = Bridge::start(vec![as_text, as_base64], store.clone(), vec![]);
    let message = Arc::new(MessageEvent {
        topic: "$groups/7/m".into(),
        qos: 1,
        retain: false,
        client_id: Some("pub".into()),
        username: Some("alice".into()),
        group: Some(MessageGroup {
            gid: 7,
            message_type: 2,
            live: false,
        }),
        payload: "hello".into(),
    });
    let event = Event {
        id: 9,
        kind: EventKind::MessagePublish,
        created_ms: now_ms(),
        body: Body::Message(message),
    };
    bridge.enqueue(0, event.clone());
    bridge.enqueue(1, event.clone());
    eventually("both delivered", || store.removed_ids().len() == 2).await;

    let request = &text.received()[0];
    let expected = serde_json::json!({
        "event": "message.publish",
        "delivery": "0000000000000009",
        "ts": event.created_ms,
        "topic": "$groups/7/m",
        "qos": 1,
        "retain": false,
        "client_id": "pub",
        "username": "alice",
        "gid": 7,
        "type": 2,
        "live": false,
        "payload": "hello",
        "encoding": "utf8",
    });
    assert_eq!(request.json(), expected);
    let signature = format!("sha256={}", hmac_hex("t", &request.body));
    assert_eq!(
        request.header("x-rookery-signature"),
        Some(signature.as_str())
    );

    let mut base64 = expected;
    base64["payload"] = "aGVsbG8=".into();
    base64["encoding"] = "base64".into();
    assert_eq!(binary.received()[0].json(), serde_json::json!([base64]));
    bridge.shutdown().await;
}
