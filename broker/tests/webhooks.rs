//! The webhook bridge end to end (SPEC §9): a real broker, real MQTT clients and the real
//! management API, delivering to a real HTTP server started by the test. Schemas and
//! signatures, filters, retries until the endpoint recovers, dead letters and their retry
//! through the API, and (in `webhooks_crash.rs`) a `kill -9` while the endpoint is down.
//!
//! Every wait is bounded; everything runs on 127.0.0.1.

mod common;
#[path = "webhooks/hook.rs"]
mod hook;

use common::v4::connect;
use common::{eventually, TestBroker};
use hook::Hook;
use rookery::config::WebhookConfig;
use rumqttc::QoS;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

const APP: &str = "app-token-for-webhook-tests";
const SECRET: &str = "s3cret";
const WAIT: Duration = Duration::from_secs(10);

fn endpoint(url: String, configure: impl FnOnce(&mut WebhookConfig)) -> WebhookConfig {
    let mut config = WebhookConfig::new(url);
    config.secret = SECRET.into();
    config.backoff_initial_ms = 20;
    config.backoff_max_ms = 100;
    configure(&mut config);
    config
}

async fn api(broker: &TestBroker, mut request: Value) -> Value {
    request["token"] = APP.into();
    let response = reqwest::Client::new()
        .post(format!("http://{}/api", broker.http_addr()))
        .json(&request)
        .timeout(WAIT)
        .send()
        .await
        .expect("the API answers");
    response.json().await.expect("a JSON answer")
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_with_their_schemas_valid_signatures_and_filters_applied() {
    let all = Hook::default();
    let members_only = Hook::default();
    let (all_addr, _a) = hook::start(all.clone()).await;
    let (members_addr, _m) = hook::start(members_only.clone()).await;
    let broker = TestBroker::start_with(|config| {
        config.auth.admin_token = Some(APP.into());
        config
            .webhooks
            .push(endpoint(format!("http://{all_addr}/hook"), |c| {
                c.name = Some("all".into());
                c.topics = vec!["sensors/#".into(), "groups/#".into()];
                c.headers.insert("X-Team".into(), "rooks".into());
            }));
        config
            .webhooks
            .push(endpoint(format!("http://{members_addr}/hook"), |c| {
                c.events = vec!["group.members".into()];
                c.batch_max = 10;
            }));
    })
    .await;

    let mut sub = connect(broker.addr, "watcher").await;
    sub.subscribe("sensors/#", QoS::AtLeastOnce).await;
    let mut publisher = connect(broker.addr, "thermo-1").await;
    publisher
        .publish("sensors/kitchen", QoS::AtLeastOnce, false, b"21.5")
        .await;
    publisher
        .publish("sensors/raw", QoS::AtMostOnce, true, &[0xff, 0x00, 0xfe])
        .await;
    // Outside the topic filter: no message event.
    publisher
        .publish("elsewhere/x", QoS::AtLeastOnce, false, b"no")
        .await;
    sub.unsubscribe("sensors/#").await;

    let added = api(
        &broker,
        json!({"op": "useradd", "user": {"address": "alice"}}),
    )
    .await;
    assert_eq!(added["result"], true, "{added}");
    api(
        &broker,
        json!({"op": "useradd", "user": {"address": "bob"}}),
    )
    .await;
    let group = api(
        &broker,
        json!({"op": "groupadd", "group": {"name": "Kitchen", "members": {"m": "alice"}}}),
    )
    .await;
    let gid = group["group"]["gid"].as_u64().expect("a gid");
    api(
        &broker,
        json!({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "bob"}}}),
    )
    .await;
    api(
        &broker,
        json!({"op": "groupset", "group": {"gid": gid, "name": "Kitchen 2"}}),
    )
    .await;
    let sent = api(
        &broker,
        json!({"op": "message", "message": {"from": "alice", "gid": gid, "message": "hi"}}),
    )
    .await;
    assert_eq!(sent["result"], true, "{sent}");
    api(&broker, json!({"op": "groupdel", "group": {"gid": gid}})).await;
    api(
        &broker,
        json!({"op": "userdel", "user": {"address": "bob"}}),
    )
    .await;
    publisher.disconnect().await;

    let kinds_expected = [
        "client.connected",
        "client.disconnected",
        "session.subscribed",
        "session.unsubscribed",
        "message.publish",
        "user.created",
        "user.deleted",
        "group.created",
        "group.updated",
        "group.deleted",
        "group.members",
    ];
    eventually("every kind of event at the first endpoint", WAIT, || {
        let events = all.events();
        kinds_expected
            .iter()
            .all(|k| !of_kind(&events, k).is_empty())
            && of_kind(&events, "message.publish").len() >= 3
            && of_kind(&events, "client.disconnected")
                .iter()
                .any(|e| e["client_id"] == "thermo-1")
    })
    .await;

    // Headers and signatures, request by request.
    for request in all.received() {
        assert_eq!(
            request.header("x-rookery-signature"),
            hook::signature(SECRET, &request.body),
            "signature of {:?}",
            request.body
        );
        assert_eq!(request.header("x-team"), "rooks");
        assert_eq!(request.header("content-type"), "application/json");
        let events = request.events();
        assert_eq!(events.len(), 1, "no batching at the first endpoint");
        assert_eq!(request.header("x-rookery-event"), events[0]["event"]);
        assert_eq!(request.header("x-rookery-delivery"), events[0]["delivery"]);
    }
    let events = all.events();
    let publishes = of_kind(&events, "message.publish");
    let by_topic: HashMap<&str, &Value> = publishes
        .iter()
        .map(|e| (e["topic"].as_str().unwrap(), *e))
        .collect();
    assert!(!by_topic.contains_key("elsewhere/x"), "filtered out");
    let kitchen = by_topic["sensors/kitchen"];
    assert_eq!(kitchen["payload"], "21.5");
    assert_eq!(kitchen["encoding"], "utf8");
    assert_eq!(kitchen["qos"], 1);
    assert_eq!(kitchen["retain"], false);
    assert_eq!(kitchen["client_id"], "thermo-1");
    assert!(kitchen["ts"].as_u64().unwrap() > 1_600_000_000_000, "ms");
    let raw = by_topic["sensors/raw"];
    assert_eq!(raw["payload"], "/wD+", "binary payloads are base64");
    assert_eq!(raw["encoding"], "base64");
    assert_eq!(raw["retain"], true);
    let group_message = publishes
        .iter()
        .find(|e| e["gid"] == gid)
        .expect("the group message");
    assert_eq!(group_message["username"], "alice");
    assert_eq!(group_message["type"], 0);
    assert_eq!(group_message["topic"], format!("groups/{gid}"));

    let connected = of_kind(&events, "client.connected");
    let thermo = connected
        .iter()
        .find(|e| e["client_id"] == "thermo-1")
        .expect("thermo-1 connected");
    assert_eq!(thermo["protocol"], 4);
    assert!(thermo["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let subscribed = of_kind(&events, "session.subscribed");
    assert_eq!(subscribed[0]["filter"], "sensors/#");
    assert_eq!(subscribed[0]["qos"], 1);
    let created_user = of_kind(&events, "user.created");
    assert!(created_user.iter().all(|e| e.get("token").is_none()));
    assert_eq!(
        of_kind(&events, "group.created")[0]["group"]["name"],
        "Kitchen"
    );
    assert_eq!(
        of_kind(&events, "group.updated")[0]["group"]["name"],
        "Kitchen 2"
    );
    assert_eq!(of_kind(&events, "group.deleted")[0]["gid"], gid);
    assert_eq!(of_kind(&events, "user.deleted")[0]["address"], "bob");
    let members = of_kind(&events, "group.members");
    assert_eq!(members[0]["members"], json!(["bob"]));
    assert_eq!(members[0]["gid"], gid);

    // Delivery ids are unique.
    let mut ids: Vec<&str> = events
        .iter()
        .map(|e| e["delivery"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "one delivery id per event");

    // The second endpoint takes only group.members, in batches (a JSON array).
    eventually(
        "the group.members event at the second endpoint",
        WAIT,
        || !members_only.events().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for request in members_only.received() {
        assert!(request.body.starts_with(b"["), "batched: an array");
        assert_eq!(
            request.header("x-rookery-signature"),
            hook::signature(SECRET, &request.body)
        );
    }
    assert!(members_only
        .events()
        .iter()
        .all(|e| e["event"] == "group.members"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_retried_with_the_same_delivery_id_until_it_recovers() {
    let hook = Hook::default();
    hook.fail_next.store(6, Ordering::SeqCst);
    let (addr, _server) = hook::start(hook.clone()).await;
    let broker = TestBroker::start_with(|config| {
        config.auth.admin_token = Some(APP.into());
        config
            .webhooks
            .push(endpoint(format!("http://{addr}/hook"), |c| {
                c.events = vec!["message.publish".into()];
                c.concurrency = 1;
            }));
    })
    .await;
    let mut publisher = connect(broker.addr, "p").await;
    for i in 0..5 {
        publisher
            .publish(&format!("t/{i}"), QoS::AtLeastOnce, false, b"x")
            .await;
    }
    eventually("all five events delivered after the failures", WAIT, || {
        hook.events().len() >= 5
    })
    .await;
    assert!(
        hook.answered_500.load(Ordering::SeqCst) >= 6,
        "it failed first"
    );
    let topics: std::collections::BTreeSet<String> = hook
        .events()
        .iter()
        .map(|e| e["topic"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(topics.len(), 5, "every message's event arrived: {topics:?}");
    let delivered: Vec<String> = hook
        .events()
        .iter()
        .map(|e| e["delivery"].as_str().unwrap().to_string())
        .collect();
    for failed in hook.failed_ids() {
        assert!(
            delivered.contains(&failed),
            "a retry carries the delivery id {failed} of its first attempt"
        );
    }
    let stats = api_stats(&broker).await;
    assert!(stats["retries"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["failures"].as_u64().unwrap() >= 6, "{stats}");
    assert_eq!(stats["delivered"], 5, "{stats}");
    broker.stop().await;
}

async fn api_stats(broker: &TestBroker) -> Value {
    let answer = api(broker, json!({"op": "webhookstats"})).await;
    answer["webhooks"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_their_maximum_age_become_dead_letters_that_the_api_retries() {
    let hook = Hook::default();
    hook.fail_always.store(true, Ordering::SeqCst);
    let (addr, _server) = hook::start(hook.clone()).await;
    let broker = TestBroker::start_with(|config| {
        config.auth.admin_token = Some(APP.into());
        config
            .webhooks
            .push(endpoint(format!("http://{addr}/hook"), |c| {
                c.name = Some("crm".into());
                c.events = vec!["message.publish".into()];
                c.max_age_secs = 1;
            }));
    })
    .await;
    let mut publisher = connect(broker.addr, "p").await;
    publisher.publish("a", QoS::AtLeastOnce, false, b"1").await;
    publisher.publish("b", QoS::AtLeastOnce, false, b"2").await;
    let mut letters = Value::Null;
    for _ in 0..100 {
        letters = api(&broker, json!({"op": "webhookdeadletters"})).await;
        if letters["total"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(letters["total"], 2, "{letters}");
    let first = &letters["deadletters"][0];
    assert_eq!(first["endpoint"], "crm");
    assert_eq!(first["event"], "message.publish");
    assert!(first["error"].as_str().unwrap().contains("500"), "{first}");
    assert_eq!(first["body"]["topic"], "a");
    let paged = api(
        &broker,
        json!({"op": "webhookdeadletters", "start": 1, "count": 5}),
    )
    .await;
    assert_eq!(paged["deadletters"].as_array().unwrap().len(), 1);
    assert!(hook.events().is_empty(), "nothing was accepted");

    // Bad input is refused and changes nothing.
    let refused = api(&broker, json!({"op": "webhookretry"})).await;
    assert_eq!(refused["result"], false);
    assert_eq!(refused["error"], "BADREQUEST");
    let unknown = api(&broker, json!({"op": "webhookretry", "delivery": "00"})).await;
    assert_eq!(unknown["result"], false, "{unknown}");

    // The endpoint recovers; one letter retried by id, then the rest.
    hook.fail_always.store(false, Ordering::SeqCst);
    let id = first["delivery"].as_str().unwrap().to_string();
    let retried = api(&broker, json!({"op": "webhookretry", "delivery": id})).await;
    assert_eq!(retried["retried"], 1, "{retried}");
    eventually("the retried letter delivered", WAIT, || {
        hook.events().iter().any(|e| e["delivery"] == id.as_str())
    })
    .await;
    let rest = api(&broker, json!({"op": "webhookretry", "all": true})).await;
    assert_eq!(rest["retried"], 1, "{rest}");
    eventually("both delivered", WAIT, || hook.events().len() >= 2).await;
    let left = api(&broker, json!({"op": "webhookdeadletters"})).await;
    assert_eq!(left["total"], 0, "{left}");
    broker.stop().await;
}

/// The default overflow policy, `drop_new`: a dead endpoint's full outbox refuses new
/// events before anything of them is built or stored, counts them, and keeps the oldest,
/// which a restarted broker delivers once the endpoint answers — and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_keeps_the_oldest_events_and_stores_none_it_refused() {
    let data = tempfile::tempdir().expect("a data directory");
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("an address")
    };
    let configure = |config: &mut rookery::config::Config, url: String| {
        config.auth.admin_token = Some(APP.into());
        config.storage.data_dir = data.path().to_path_buf();
        config.webhooks.push(endpoint(url, |c| {
            // The same outbox whatever the URL.
            c.name = Some("crm".into());
            c.events = vec!["message.publish".into()];
            c.outbox_max_events = 5;
        }));
    };
    let broker = TestBroker::start_with(|c| configure(c, format!("http://{dead}/hook"))).await;
    let mut publisher = connect(broker.addr, "p").await;
    for i in 0..20 {
        publisher
            .publish(&format!("t/{i}"), QoS::AtLeastOnce, false, b"x")
            .await;
    }
    let stats = api_stats(&broker).await;
    assert_eq!(stats["dropped_overflow"], 15, "{stats}");
    assert_eq!(stats["outbox_depth"], 5, "{stats}");
    assert_eq!(stats["delivered"], 0, "{stats}");
    broker.stop().await;

    let hook = Hook::default();
    let (addr, _server) = hook::start(hook.clone()).await;
    let broker = TestBroker::start_with(|c| configure(c, format!("http://{addr}/hook"))).await;
    eventually("the five kept events delivered", WAIT, || {
        hook.events().len() >= 5
    })
    .await;
    // Anything refused but stored would arrive now too.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut topics: Vec<String> = hook
        .events()
        .iter()
        .map(|e| e["topic"].as_str().unwrap().to_string())
        .collect();
    topics.sort();
    topics.dedup();
    assert_eq!(topics, ["t/0", "t/1", "t/2", "t/3", "t/4"]);
    broker.stop().await;
}
