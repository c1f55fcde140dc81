//! Endpoints that are slow, down, or failing for good: timeouts, recovery, dead letters,
//! backoff, the bounded outbox, and stopping.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rookery_bridge::{Bridge, Enqueued, Overflow};
use support::*;

#[tokio::test]
async fn a_timeout_is_retried() {
    let server = TestServer::start().await;
    server.script([Answer::ok().after(Duration::from_millis(1500))]);
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.timeout_ms = 200;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    bridge.enqueue(0, message(5));
    eventually("delivered after the timeout", || store.removed_ids() == [5]).await;
    let received = server.received();
    assert_eq!(received.len(), 2);
    assert!(
        received[1].at.duration_since(received[0].at) >= Duration::from_millis(200),
        "the retry comes after the timeout, not after the slow answer's headers"
    );
    assert_eq!(
        received[0].header("x-rookery-delivery"),
        received[1].header("x-rookery-delivery")
    );
    let stats = &bridge.stats()[0];
    assert_eq!((stats.failures, stats.delivered), (1, 1));
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_that_comes_up_later_gets_everything() {
    let addr = unused_addr();
    let store = Arc::new(MemoryStore::default());
    let url = format!("http://{addr}/hook");
    let bridge = Bridge::start(vec![config(url)], store.clone(), vec![]);
    for id in 0..20 {
        assert_eq!(bridge.enqueue(0, message(id)), Enqueued::Queued);
    }
    eventually("connection failures are counted", || {
        bridge.stats()[0].failures >= 2
    })
    .await;
    assert!(store.removed_ids().is_empty());
    assert_eq!(bridge.stats()[0].outbox_depth, 20);

    let server = TestServer::start_on(addr).await;
    eventually("all twenty delivered", || store.removed_ids().len() == 20).await;
    let delivered: HashSet<String> = server
        .received()
        .iter()
        .map(|r| r.header("x-rookery-delivery").unwrap().to_owned())
        .collect();
    let expected: HashSet<String> = (0..20).map(rookery_bridge::delivery_id_string).collect();
    assert_eq!(delivered, expected);
    assert_eq!(bridge.stats()[0].outbox_depth, 0);
    bridge.shutdown().await;
}

#[tokio::test]
async fn an_event_that_reaches_max_age_becomes_a_dead_letter() {
    let server = TestServer::start().await;
    server.otherwise(Answer::status(500).with_body("boom"));
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.max_age_secs = 1;
    let key = endpoint.endpoint_key();
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    for id in 0..5 {
        bridge.enqueue(0, message(id));
    }
    eventually("five dead letters", || store.buried_ids().len() == 5).await;

    let mut buried = store.buried_ids();
    buried.sort_unstable();
    assert_eq!(buried, [0, 1, 2, 3, 4]);
    for (endpoint_key, event, last_error, buried_at_ms) in store.buried.lock().unwrap().iter() {
        assert_eq!(*endpoint_key, key);
        assert!(
            buried_at_ms - event.created_ms >= 1000,
            "buried only once it is max_age old"
        );
        assert!(last_error.contains("500"), "last error: {last_error}");
        assert!(last_error.contains("boom"), "last error: {last_error}");
    }
    assert!(store.removed_ids().is_empty());
    let stats = &bridge.stats()[0];
    assert_eq!(stats.dead_letters, 5);
    assert_eq!(stats.outbox_depth, 0);
    assert!(stats.failures >= 2);
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_failing_endpoint_is_not_hammered() {
    let server = TestServer::start().await;
    server.otherwise(Answer::status(500));
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.concurrency = 4;
    endpoint.backoff_initial_ms = 100;
    endpoint.backoff_max_ms = 100;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    for id in 0..50 {
        bridge.enqueue(0, message(id));
    }
    tokio::time::sleep(Duration::from_millis(650)).await;
    let requests = server.count();
    // First wave: up to 4 at once. Then one probe per 100 ms: about 6 in 650 ms.
    assert!(requests >= 3, "still retrying: {requests} requests");
    assert!(
        requests <= 13,
        "{requests} requests in 650 ms: the backoff is per endpoint"
    );
    assert_eq!(bridge.stats()[0].outbox_depth, 50);
    bridge.shutdown().await;
}

#[tokio::test]
async fn drop_oldest_makes_room_by_dropping_queued_events() {
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(format!("http://{}/hook", unused_addr()));
    endpoint.outbox_max_events = 10;
    endpoint.concurrency = 1;
    endpoint.overflow = Overflow::DropOldest;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    let mut dropped = 0;
    for id in 0..25 {
        match bridge.enqueue(0, message(id)) {
            Enqueued::Queued => {}
            Enqueued::DroppedOldest(n) => dropped += n,
            Enqueued::DroppedNew => panic!("drop_oldest never refuses a small event"),
        }
    }
    assert_eq!(dropped, 15);
    let removed = store.removed_ids();
    assert_eq!(removed.len(), 15);
    assert_eq!(removed.iter().collect::<HashSet<_>>().len(), 15);
    // At most one event is in flight; the newest ones are always kept.
    assert!(removed.iter().all(|&id| id < 16), "dropped {removed:?}");
    let stats = &bridge.stats()[0];
    assert_eq!(stats.dropped_overflow, 15);
    assert_eq!(stats.outbox_depth, 10);
    bridge.shutdown().await;
}

#[tokio::test]
async fn drop_new_refuses_the_newest_events() {
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(format!("http://{}/hook", unused_addr()));
    endpoint.outbox_max_events = 10;
    endpoint.overflow = Overflow::DropNew;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    let outcomes: Vec<Enqueued> = (0..25).map(|id| bridge.enqueue(0, message(id))).collect();
    assert!(outcomes[..10].iter().all(|o| *o == Enqueued::Queued));
    assert!(outcomes[10..].iter().all(|o| *o == Enqueued::DroppedNew));
    assert_eq!(store.removed_ids(), (10..25).collect::<Vec<u64>>());
    let stats = &bridge.stats()[0];
    assert_eq!(stats.dropped_overflow, 15);
    assert_eq!(stats.outbox_depth, 10);
    // Full: the publisher's check refuses (and counts) before building an event.
    assert!(bridge.refuses(0));
    assert!(bridge.refuses(0));
    assert_eq!(bridge.stats()[0].dropped_overflow, 17);
    assert!(bridge.refuses(1), "no such endpoint");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_full_drop_new_outbox_takes_events_again_once_some_are_delivered() {
    let server = TestServer::start().await;
    server.otherwise(Answer::status(500));
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.outbox_max_events = 5;
    endpoint.backoff_initial_ms = 50;
    endpoint.backoff_max_ms = 50;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    for id in 0..5 {
        assert_eq!(bridge.enqueue(0, message(id)), Enqueued::Queued);
    }
    assert!(bridge.refuses(0), "the default policy is drop_new");
    server.otherwise(Answer::status(204));
    let deadline = Instant::now() + Duration::from_secs(10);
    while bridge.stats()[0].outbox_depth > 0 {
        assert!(
            Instant::now() < deadline,
            "never delivered: {:?}",
            bridge.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!bridge.refuses(0), "room again after delivery");
    assert_eq!(bridge.enqueue(0, message(5)), Enqueued::Queued);
    assert_eq!(bridge.stats()[0].dropped_overflow, 1);
    bridge.shutdown().await;
}

#[tokio::test]
async fn the_byte_bound_applies_too() {
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(format!("http://{}/hook", unused_addr()));
    let size = message(0).size();
    endpoint.outbox_max_bytes = size * 4;
    endpoint.overflow = Overflow::DropNew;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    for id in 0..6 {
        bridge.enqueue(0, message(id));
    }
    let stats = &bridge.stats()[0];
    assert_eq!(stats.outbox_depth, 4);
    assert_eq!(stats.outbox_bytes as usize, size * 4);
    assert_eq!(store.removed_ids(), [4, 5]);
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_does_not_block_on_a_dead_endpoint() {
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(format!("http://{}/hook", unused_addr()));
    endpoint.outbox_max_events = 50_000;
    endpoint.overflow = Overflow::DropOldest;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    let events: Vec<_> = (0..100_000).map(message).collect();
    let started = Instant::now();
    let mut queued = 0u64;
    let mut dropped = 0u64;
    for event in events {
        match bridge.enqueue(0, event) {
            Enqueued::Queued => queued += 1,
            Enqueued::DroppedOldest(n) => {
                queued += 1;
                dropped += n;
            }
            Enqueued::DroppedNew => panic!("drop_oldest refused an event"),
        }
    }
    let took = started.elapsed();
    assert_eq!(queued, 100_000);
    assert_eq!(dropped, 50_000);
    assert_eq!(store.removed_ids().len(), 50_000);
    let stats = &bridge.stats()[0];
    assert_eq!(stats.outbox_depth, 50_000);
    assert_eq!(stats.dropped_overflow, 50_000);
    assert!(stats.delivered == 0 && stats.dead_letters == 0);
    eprintln!("100k enqueues against a dead endpoint took {took:?}");
    bridge.shutdown().await;
}

#[tokio::test]
async fn shutdown_abandons_in_flight_requests_and_keeps_the_events() {
    let server = TestServer::start().await;
    server.otherwise(Answer::ok().after(Duration::from_secs(5)));
    let store = Arc::new(MemoryStore::default());
    let mut endpoint = config(server.url());
    endpoint.timeout_ms = 10_000;
    let bridge = Bridge::start(vec![endpoint], store.clone(), vec![]);
    for id in 0..3 {
        bridge.enqueue(0, message(id));
    }
    eventually("requests in flight", || bridge.stats()[0].in_flight == 3).await;
    tokio::time::timeout(Duration::from_secs(2), bridge.shutdown())
        .await
        .expect("shutdown does not wait for in-flight requests");
    assert!(store.removed_ids().is_empty(), "nothing was answered");
    assert_eq!(bridge.stats()[0].in_flight, 0);

    let before = server.count();
    bridge.enqueue(0, message(3));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(server.count(), before, "a stopped bridge sends nothing");
    // A second shutdown is harmless.
    bridge.shutdown().await;
}

#[tokio::test]
async fn dropping_the_bridge_stops_its_workers() {
    let server = TestServer::start().await;
    server.otherwise(Answer::status(500));
    let store = Arc::new(MemoryStore::default());
    let bridge = Bridge::start(vec![config(server.url())], store.clone(), vec![]);
    bridge.enqueue(0, message(1));
    eventually("retrying", || server.count() >= 2).await;
    drop(bridge);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = server.count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.count(), after_drop);
}
