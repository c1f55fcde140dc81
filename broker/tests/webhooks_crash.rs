//! At-least-once across a crash (SPEC §9): the endpoint is down while QoS 1 messages are
//! published and acknowledged, the broker is killed with SIGKILL and started again, the
//! endpoint comes up — and every acknowledged message's event arrives. The real binary,
//! a real HTTP server, everything on 127.0.0.1 and bounded.

mod common;
mod crash_support;
#[path = "webhooks/hook.rs"]
mod hook;

use crash_support::{Settings, Workspace};
use hook::Hook;
use rumqttc::QoS;
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn settings(port: u16) -> Settings {
    let mut settings = Settings::durability("strict");
    settings.config = Some(format!(
        r#"
[[webhooks]]
url = "http://127.0.0.1:{port}/hook"
name = "down-then-up"
secret = "s"
events = ["message.publish"]
topics = ["w/#"]
backoff_initial_ms = 50
backoff_max_ms = 200
"#
    ));
    settings
}

fn topics_received(hook: &Hook) -> BTreeSet<String> {
    hook.events()
        .iter()
        .filter_map(|e| e["topic"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_acknowledged_messages_survive_kill_9_while_the_endpoint_is_down() {
    let _serial = crash_support::serial().await;
    // A port nobody listens on, for now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut workspace = Workspace::new("webhooks");
    let settings = settings(port);
    let broker = workspace.start(&settings).await;
    let mut publisher = common::v4::connect(broker.addr, "publisher").await;
    const BEFORE: usize = 300;
    for i in 0..BEFORE {
        // Returns once the PUBACK arrived.
        publisher
            .publish(&format!("w/{i}"), QoS::AtLeastOnce, false, b"payload")
            .await;
    }
    broker.kill9().await;
    drop(publisher);

    let broker = workspace.start(&settings).await;
    let hook = Hook::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("the endpoint's port is still free");
    let _server = hook::serve_on(listener, hook.clone());
    // And a few after the restart: their ids must not collide with the recovered ones.
    let mut publisher = common::v4::connect(broker.addr, "publisher").await;
    for i in BEFORE..BEFORE + 20 {
        publisher
            .publish(&format!("w/{i}"), QoS::AtLeastOnce, false, b"payload")
            .await;
    }
    let expected: BTreeSet<String> = (0..BEFORE + 20).map(|i| format!("w/{i}")).collect();
    common::eventually("every acknowledged message's event", WAIT, || {
        topics_received(&hook) == expected
    })
    .await;
    // Duplicates are allowed (at-least-once) but carry the same delivery id.
    let events = hook.events();
    let ids: BTreeSet<&str> = events
        .iter()
        .map(|e| e["delivery"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), expected.len(), "one delivery id per event");
    for request in hook.received() {
        assert_eq!(
            request.header("x-rookery-signature"),
            hook::signature("s", &request.body)
        );
    }
    drop(broker);
}
