//! Crash tests (issue 4, SPEC §7 "Durability"): the real `rookery` binary is killed with
//! SIGKILL while publishers are being acknowledged, then started again on the same data
//! directory; everything that was acknowledged and had to be stored must still be
//! delivered (QoS 1: at least once; QoS 2: exactly once to the application), and retained
//! messages and persistent sessions must be intact. Further tests cover SIGTERM (flush and
//! exit 0), `durability = "none"` (nothing kept, nothing written) and `batched` (loss
//! bounded by the flush window).
//!
//! How the harness works is described in `crash_support/mod.rs`. The kill points are
//! random; each test prints its seed (`CRASH_SEED=<n>` reproduces it) and the counts it
//! measured. The tests run one at a time (a lock), each bounded well under 30 s.

mod crash_support;

use bytes::Bytes;
use crash_support::{
    check_subscriber, received_all, rng, serial, tally, within, Acked, Broker, Client, Ending,
    Flood, FloodLog, Msg, Settings, Workspace, QUIET, WAIT,
};
use rand::Rng;
use rookery::codec::{ProtocolVersion, QoS};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Kill points: this many cycles, each after a random 200–2000 ms of publishing.
const CYCLES: u32 = 3;
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 200..=2000;
/// Messages in flight from the publisher (below the broker's Receive Maximum of 100).
const WINDOW: usize = 50;
/// At most this many messages per cycle, so that the drain stays short.
const MAX_PER_CYCLE: u64 = 10_000;
/// A drain ends when nothing arrived for this long (or [`QUIET`] once complete).
const DRAIN_QUIET: Duration = Duration::from_secs(2);
const DRAIN_LIMIT: Duration = Duration::from_secs(7);

fn flood(prefix: &str, first_seq: u64) -> Flood {
    Flood {
        topic_prefix: prefix.to_string(),
        first_seq,
        max_messages: MAX_PER_CYCLE,
        max_duration: Duration::from_secs(3),
        window: WINDOW,
        only: None,
    }
}

/// Connects a publisher, floods in a task, kills the broker after `delay`, and returns
/// what the publisher saw (after checking that the flood itself was sound).
async fn flood_then_kill(
    broker: Broker,
    publisher: Client,
    flood: Flood,
    delay: Duration,
) -> FloodLog {
    let mut publisher = publisher;
    let cap = flood.max_messages;
    let (near_end, nearly_done) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move { publisher.flood(&flood, Some(near_end)).await });
    // The random kill point, or earlier if the broker is so fast that the flood would
    // otherwise end before it: the kill must land while messages are in flight.
    let trigger = tokio::select! {
        _ = tokio::time::sleep(delay) => format!("at the random point {delay:?}"),
        Ok(()) = nearly_done => format!("at 90% of the {cap}-message cap, before {delay:?}"),
    };
    let finished_early = task.is_finished();
    broker.kill9().await;
    let log = within(2 * WAIT, "the publisher to notice the kill", task)
        .await
        .expect("publisher task");
    println!("  killed {trigger}; publisher: {}", log.summary());
    if finished_early {
        println!(
            "  note: the publisher had stopped before the kill ({})",
            log.ending
        );
    }
    assert!(
        log.errors.is_empty(),
        "protocol problems on the publisher's connection: {:?}",
        &log.errors[..log.errors.len().min(5)]
    );
    assert!(
        !log.acked_q1.is_empty() && !log.acked_q2.is_empty(),
        "the broker acknowledged no QoS 1 or no QoS 2 message before the kill: nothing to \
         check ({})",
        log.summary()
    );
    log
}

/// Reconnects and drains every subscriber at once (each in its own task); their problems.
async fn drain_all(
    subs: &mut Vec<Client>,
    addr: SocketAddr,
    acked: &Acked,
    prefix: &'static str,
    qos2_rule: &'static str,
) -> Vec<String> {
    let tasks: Vec<_> = subs
        .drain(..)
        .map(|mut sub| {
            let acked = acked.clone();
            tokio::spawn(async move {
                let problems = reconnect_and_drain(&mut sub, addr, &acked, prefix, qos2_rule).await;
                (sub, problems)
            })
        })
        .collect();
    let mut problems = Vec::new();
    for task in tasks {
        let (sub, p) = within(DRAIN_LIMIT + 3 * WAIT, "a subscriber to drain", task)
            .await
            .expect("subscriber task");
        problems.extend(p);
        subs.push(sub);
    }
    problems
}

/// Reconnects a persistent subscriber after the restart and drains it; its problems.
async fn reconnect_and_drain(
    sub: &mut Client,
    addr: SocketAddr,
    acked: &Acked,
    prefix: &str,
    qos2_rule: &str,
) -> Vec<String> {
    sub.ack_delay = None;
    let present = match sub.connect(addr, false).await {
        Ok(present) => present,
        Err(e) => {
            return vec![format!(
                "{}: cannot reconnect after the restart: {e}",
                sub.id
            )]
        }
    };
    let mut problems = Vec::new();
    if !present {
        problems.push(format!(
            "{} ({:?}): CONNACK Session Present = 0 after the restart — the persistent session \
             (and its queue) did not survive",
            sub.id, sub.version
        ));
    }
    let ending = sub
        .run(DRAIN_QUIET, DRAIN_LIMIT, received_all(acked, prefix))
        .await;
    if !matches!(ending, Ending::Quiet | Ending::Deadline) {
        problems.push(format!("{}: drain ended with {ending:?}", sub.id));
    }
    sub.disconnect().await;
    problems.extend(check_subscriber(
        &format!("{} after the restart", sub.id),
        sub,
        acked,
        prefix,
        qos2_rule,
    ));
    problems
}

// ---------------------------------------------------------------------------------------
// 1. Offline persistent sessions
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos1_and_qos2_acknowledged_messages_to_offline_persistent_sessions_survive_kill_9() {
    let _serial = serial().await;
    let test = "offline";
    let mut rng = rng(test);
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("strict");
    let mut broker = ws.start(&settings).await;

    let mut subs = vec![
        Client::new("crash-offline-v311", V311, None),
        Client::new("crash-offline-v5", V5, Some(3600)),
    ];
    for sub in &mut subs {
        sub.connect_expecting(broker.addr, false, false).await;
        sub.subscribe_granted(&[("crash/#", QoS::ExactlyOnce)])
            .await;
        sub.disconnect().await;
    }

    let mut acked = Acked::default();
    let mut next_seq = 0;
    for cycle in 1..=CYCLES {
        let delay = Duration::from_millis(rng.gen_range(KILL_AFTER_MS));
        let version = if cycle.is_multiple_of(2) { V311 } else { V5 };
        println!(
            "[{test}] cycle {cycle}/{CYCLES}: subscribers offline, {version:?} publisher, \
             kill -9 after {delay:?}"
        );
        let mut publisher = Client::new(&format!("crash-offline-pub-{cycle}"), version, None);
        publisher.connect_expecting(broker.addr, true, false).await;
        let log = flood_then_kill(broker, publisher, flood("crash", next_seq), delay).await;
        next_seq = log.next_seq;
        acked.add(&log);

        broker = ws.start(&settings).await;
        let mut problems = Vec::new();
        problems.extend(
            drain_all(
                &mut subs,
                broker.addr,
                &acked,
                "crash",
                "no QoS 2 duplicates",
            )
            .await,
        );
        assert!(
            problems.is_empty(),
            "cycle {cycle} (kill after {delay:?}, {} acknowledged so far):\n{}",
            acked.len(),
            problems.join("\n")
        );
    }
    println!(
        "[{test}] passed: {} QoS 1 + {} QoS 2 acknowledged messages over {CYCLES} kills, all \
         delivered",
        acked.q1.len(),
        acked.q2.len()
    );
    broker.kill9().await;
}

// ---------------------------------------------------------------------------------------
// 2. Online, slow persistent subscribers
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_slow_persistent_subscriber_loses_nothing_acknowledged_on_kill_9() {
    const QOS2_RULE: &str = "HARDEST GUARANTEE (exactly once across kill -9: resend with the \
                             original packet id, never redeliver a released QoS 2 message)";
    let _serial = serial().await;
    let test = "online-slow";
    let mut rng = rng(test);
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("strict");
    let mut broker = ws.start(&settings).await;

    let mut subs = vec![
        Client::new("crash-slow-v311", V311, None),
        Client::new("crash-slow-v5", V5, Some(3600)),
    ];
    for sub in &mut subs {
        sub.connect_expecting(broker.addr, false, false).await;
        sub.subscribe_granted(&[("slow/#", QoS::ExactlyOnce)]).await;
        sub.disconnect().await;
    }

    let mut acked = Acked::default();
    let mut next_seq = 0;
    for cycle in 1..=CYCLES {
        let delay = Duration::from_millis(rng.gen_range(KILL_AFTER_MS));
        let version = if cycle.is_multiple_of(2) { V5 } else { V311 };
        println!(
            "[{test}] cycle {cycle}/{CYCLES}: subscribers online acking one message per 5 ms, \
             {version:?} publisher, kill -9 after {delay:?}"
        );
        // The subscribers come online (their session holds whatever is left) and consume
        // slowly until the broker dies under them.
        let mut tasks = Vec::new();
        for mut sub in subs.drain(..) {
            sub.connect_expecting(broker.addr, false, true).await;
            sub.ack_delay = Some(Duration::from_millis(5));
            tasks.push(tokio::spawn(async move {
                let ending = sub
                    .run(Duration::from_secs(15), Duration::from_secs(15), |_| false)
                    .await;
                (sub, ending)
            }));
        }
        let mut publisher = Client::new(&format!("crash-slow-pub-{cycle}"), version, None);
        publisher.connect_expecting(broker.addr, true, false).await;
        let log = flood_then_kill(broker, publisher, flood("slow", next_seq), delay).await;
        next_seq = log.next_seq;
        acked.add(&log);
        for task in tasks {
            let (sub, ending) = within(WAIT, "a slow subscriber to notice the kill", task)
                .await
                .expect("subscriber task");
            let connection = sub.connections();
            let before = sub
                .received
                .iter()
                .filter(|r| r.connection == connection)
                .count();
            println!(
                "    {} on the slow connection: {before} deliveries, ended with {ending:?}",
                sub.id
            );
            assert_eq!(
                ending,
                Ending::Closed,
                "{}: the slow subscriber's connection should end with the kill",
                sub.id
            );
            subs.push(sub);
        }

        broker = ws.start(&settings).await;
        let mut problems = Vec::new();
        problems.extend(drain_all(&mut subs, broker.addr, &acked, "slow", QOS2_RULE).await);
        assert!(
            problems.is_empty(),
            "cycle {cycle} (kill after {delay:?}, {} acknowledged so far; counts span both \
             connections of each subscriber):\n{}",
            acked.len(),
            problems.join("\n")
        );
    }
    println!(
        "[{test}] passed: {} QoS 1 + {} QoS 2 acknowledged messages over {CYCLES} kills, all \
         delivered, no QoS 2 duplicate",
        acked.q1.len(),
        acked.q2.len()
    );
    broker.kill9().await;
}

// ---------------------------------------------------------------------------------------
// Retained messages and sessions (tests 3, 4 and 5)
// ---------------------------------------------------------------------------------------

/// The three subscriptions of each persistent session, and for each a topic it matches
/// with the QoS a QoS 2 publish to it must arrive at (the granted QoS survives too).
const SESSION_FILTERS: [(&str, QoS); 3] = [
    ("sess/a", QoS::AtLeastOnce),
    ("sess/b/+", QoS::ExactlyOnce),
    ("sess/c/#", QoS::AtLeastOnce),
];
const SESSION_TOPICS: [(&str, QoS); 3] = [
    ("sess/a", QoS::AtLeastOnce),
    ("sess/b/x", QoS::ExactlyOnce),
    ("sess/c/y/z", QoS::AtLeastOnce),
];
const RETAINED: usize = 100;
const CLEARED: [&str; 2] = ["gone/a", "gone/b/c"];

fn keep_topic(i: usize) -> String {
    format!("keep/{:03}", i)
}

/// Retained messages, cleared ones and two persistent sessions, before the broker stops.
struct State {
    retained: BTreeMap<String, Bytes>,
    /// 3.1.1, clean session 0, offline when the broker stops.
    s311: Client,
    /// 5.0, session expiry 3600, still connected when the broker stops.
    s5: Client,
}

async fn set_up_state(addr: SocketAddr, tag: &str, token: u64) -> State {
    // The sessions first: the retained messages below are acknowledged after their
    // SUBACKs (in strict mode only once durable), so this does not depend on whether a
    // SUBACK itself waits for the commit (that is what
    // `a_persistent_subscription_survives_kill_9_right_after_its_suback` checks).
    let mut s311 = Client::new(&format!("{tag}-s311"), V311, None);
    s311.connect_expecting(addr, false, false).await;
    s311.subscribe_granted(&SESSION_FILTERS).await;
    s311.disconnect().await;
    let mut s5 = Client::new(&format!("{tag}-s5"), V5, Some(3600));
    s5.connect_expecting(addr, false, false).await;
    s5.subscribe_granted(&SESSION_FILTERS).await;

    let mut publisher = Client::new(&format!("{tag}-setup"), V311, None);
    publisher.connect_expecting(addr, true, false).await;
    // First values that are replaced below, and retained messages that are then cleared.
    let mut first = Vec::new();
    for i in 0..10 {
        first.push(Msg::new(
            &keep_topic(i),
            format!("old value {i}").as_bytes(),
            QoS::AtLeastOnce,
            true,
        ));
    }
    for topic in CLEARED {
        first.push(Msg::new(topic, b"to be cleared", QoS::AtLeastOnce, true));
    }
    publisher
        .publish_all(&first, 20)
        .await
        .unwrap_or_else(|e| panic!("setting up retained messages: {e}"));
    let mut retained = BTreeMap::new();
    let mut second = Vec::new();
    for i in 0..RETAINED {
        let payload = format!("{tag} retained {i} token {token:016x}");
        second.push(Msg::new(
            &keep_topic(i),
            payload.as_bytes(),
            QoS::AtLeastOnce,
            true,
        ));
        retained.insert(keep_topic(i), Bytes::from(payload));
    }
    for topic in CLEARED {
        second.push(Msg::new(topic, b"", QoS::AtLeastOnce, true));
    }
    publisher
        .publish_all(&second, 20)
        .await
        .unwrap_or_else(|e| panic!("setting up retained messages: {e}"));
    publisher.disconnect().await;

    // The broker has them now (so a failure after the restart is about persistence).
    let problems = check_retained(addr, &format!("{tag}-before"), &retained).await;
    assert!(
        problems.is_empty(),
        "retained messages wrong even before the broker stopped:\n{}",
        problems.join("\n")
    );
    println!(
        "  set up: 2 persistent sessions with 3 subscriptions each (the v5 one stays \
         connected), {RETAINED} retained (10 replaced), {} cleared",
        CLEARED.len()
    );
    State { retained, s311, s5 }
}

/// A new subscriber to `keep/#` and `gone/#`: exactly the expected retained messages.
async fn check_retained(
    addr: SocketAddr,
    id: &str,
    expected: &BTreeMap<String, Bytes>,
) -> Vec<String> {
    let mut fresh = Client::new(&format!("{id}-fresh"), V5, None);
    if let Err(e) = fresh.connect(addr, true).await {
        return vec![e];
    }
    fresh
        .subscribe_granted(&[("keep/#", QoS::AtLeastOnce), ("gone/#", QoS::AtLeastOnce)])
        .await;
    let n = expected.len();
    fresh
        .run(Duration::from_secs(1), WAIT, |c| c.received.len() >= n)
        .await;
    fresh.disconnect().await;
    retained_problems(&fresh, expected)
}

fn retained_problems(fresh: &Client, expected: &BTreeMap<String, Bytes>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut got: BTreeMap<&str, Vec<&Bytes>> = BTreeMap::new();
    for r in &fresh.received {
        got.entry(r.topic.as_str()).or_default().push(&r.payload);
        if !r.retain {
            problems.push(format!("{} delivered without the RETAIN flag", r.topic));
        }
    }
    let missing: Vec<&String> = expected
        .keys()
        .filter(|t| !got.contains_key(t.as_str()))
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} retained messages missing (first: {:?})",
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(10)]
        ));
    }
    for (topic, payloads) in &got {
        match expected.get(*topic) {
            Some(want) if payloads.len() == 1 && payloads[0] == want => {}
            Some(want) => problems.push(format!(
                "retained {topic}: got {:?}, expected {want:?}",
                payloads
            )),
            None if CLEARED.contains(topic) => problems.push(format!(
                "retained {topic} was cleared (empty payload, acknowledged) but came back: {:?}",
                payloads
            )),
            None => problems.push(format!(
                "unexpected retained message on {topic}: {payloads:?}"
            )),
        }
    }
    println!(
        "    retained check ({}): {} of {} expected received, {} problems",
        fresh.id,
        expected
            .keys()
            .filter(|t| got.contains_key(t.as_str()))
            .count(),
        expected.len(),
        problems.len()
    );
    problems
}

/// After the restart: both sessions are present and their subscriptions deliver without
/// resubscribing, at the granted QoS.
async fn check_sessions(addr: SocketAddr, tag: &str, subs: &mut [&mut Client]) -> Vec<String> {
    let mut problems = Vec::new();
    for sub in subs.iter_mut() {
        sub.drop_connection();
        sub.received.clear();
        match sub.connect(addr, false).await {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "{} ({:?}): CONNACK Session Present = 0 after the restart — the persistent \
                 session did not survive",
                sub.id, sub.version
            )),
            Err(e) => problems.push(e),
        }
    }
    let mut publisher = Client::new(&format!("{tag}-after"), V5, None);
    if let Err(e) = publisher.connect(addr, true).await {
        problems.push(e);
        return problems;
    }
    let mut msgs: Vec<Msg> = SESSION_TOPICS
        .iter()
        .map(|(topic, _)| Msg::new(topic, b"after the restart", QoS::ExactlyOnce, false))
        .collect();
    msgs.push(Msg::new(
        "sess/unsubscribed",
        b"nobody",
        QoS::AtLeastOnce,
        false,
    ));
    if let Err(e) = publisher.publish_all(&msgs, 10).await {
        problems.push(format!("publishing to the sessions after the restart: {e}"));
    }
    publisher.disconnect().await;
    for sub in subs.iter_mut() {
        if !sub.is_connected() {
            continue;
        }
        sub.run(Duration::from_secs(1), WAIT, |c| {
            c.received.len() >= SESSION_TOPICS.len()
        })
        .await;
        // A short quiet period: nothing else (no duplicates, nothing unsubscribed).
        sub.run(QUIET, QUIET, |_| false).await;
        sub.disconnect().await;
        let got: Vec<(String, QoS)> = sub
            .received
            .iter()
            .map(|r| (r.topic.clone(), r.qos))
            .collect();
        let want: Vec<(String, QoS)> = SESSION_TOPICS
            .iter()
            .map(|(t, q)| (t.to_string(), *q))
            .collect();
        let mut sorted = got.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        if sorted != want {
            problems.push(format!(
                "{} ({:?}) after the restart, without resubscribing: received (topic, QoS) \
                 {got:?}, expected {want:?}",
                sub.id, sub.version
            ));
        }
        if !sub.errors.is_empty() {
            problems.push(format!("{}: protocol problems {:?}", sub.id, sub.errors));
        }
    }
    problems
}

/// Starts a broker, sets up the state, stops it with `stop`, restarts it and checks.
async fn state_survives(test: &str, settings: Settings, graceful: bool) {
    let mut rng = rng(test);
    let mut ws = Workspace::new(test);
    let broker = ws.start(&settings).await;
    let mut state = set_up_state(broker.addr, test, rng.gen()).await;
    if graceful {
        let status = broker.sigterm(Duration::from_secs(5)).await;
        match status {
            Ok(status) => assert!(
                status.success(),
                "{test}: the broker should exit with status 0 after SIGTERM, got {status}"
            ),
            Err(e) => panic!("{test}: {e}"),
        }
    } else {
        broker.kill9().await;
    }
    state.s5.drop_connection();
    let broker = ws.start(&settings).await;
    let mut problems = check_retained(broker.addr, &format!("{test}-after"), &state.retained).await;
    problems.extend(check_sessions(broker.addr, test, &mut [&mut state.s311, &mut state.s5]).await);
    assert!(
        problems.is_empty(),
        "{test} (durability {}): after {} and a restart on the same data directory:\n{}",
        settings.durability,
        if graceful { "SIGTERM" } else { "kill -9" },
        problems.join("\n")
    );
    println!("[{test}] passed: retained messages and sessions intact");
    broker.kill9().await;
}

// ---------------------------------------------------------------------------------------
// 3. kill -9
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_and_sessions_survive_kill_9() {
    let _serial = serial().await;
    state_survives("state-kill9", Settings::durability("strict"), false).await;
}

// ---------------------------------------------------------------------------------------
// 4. SIGTERM
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_sigterm_flushes_and_restarts_with_state() {
    let _serial = serial().await;
    state_survives("state-sigterm", Settings::durability("strict"), true).await;
    // With `batched` and a flush interval far longer than the test, only the flush on
    // SIGTERM can have put the state on disk (SPEC §10: "shutdown ... that flushes storage").
    state_survives(
        "state-sigterm-batched",
        Settings::durability("batched").with("ROOKERY_STORAGE_FLUSH_INTERVAL_MS", "10000"),
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// 3b. kill -9 right after SUBACK
// ---------------------------------------------------------------------------------------

/// Stricter than test 3: the broker is killed the moment the SUBACK arrives, with nothing
/// acknowledged after it. In strict mode a persistent session's SUBACK (like a PUBACK) is
/// taken to mean "durable": a client told that it is subscribed, and then told Session
/// Present = 1 after a restart, must not have silently lost the subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_subscription_survives_kill_9_right_after_its_suback() {
    let _serial = serial().await;
    let test = "suback-kill9";
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("strict");
    let mut broker = ws.start(&settings).await;
    let mut problems = Vec::new();
    for (version, expiry) in [(V311, None), (V5, Some(3600))] {
        let mut sub = Client::new(&format!("{test}-{version:?}"), version, expiry);
        sub.connect_expecting(broker.addr, false, false).await;
        sub.subscribe_granted(&SESSION_FILTERS).await;
        broker.kill9().await;
        sub.drop_connection();
        broker = ws.start(&settings).await;
        problems.extend(
            check_sessions(broker.addr, &format!("{test}-{version:?}"), &mut [&mut sub]).await,
        );
    }
    assert!(
        problems.is_empty(),
        "strict: kill -9 right after SUBACK (nothing acknowledged after it), then a \
         restart:\n{}",
        problems.join("\n")
    );
    println!("[{test}] passed");
    broker.kill9().await;
}

// ---------------------------------------------------------------------------------------
// 5. durability = "none"
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_none_keeps_nothing() {
    let _serial = serial().await;
    let test = "none";
    let mut rng = rng(test);
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("none");
    let broker = ws.start(&settings).await;
    let mut state = set_up_state(broker.addr, test, rng.gen()).await;
    // SIGTERM gives the broker every chance to write on the way out; it must not.
    match broker.sigterm(Duration::from_secs(5)).await {
        Ok(status) => println!("  exit status after SIGTERM: {status}"),
        Err(e) => println!("  {e} (killed; not what this test checks)"),
    }
    state.s5.drop_connection();
    let mut problems = Vec::new();
    let data_written = |ws: &Workspace, when: &str, problems: &mut Vec<String>| {
        let files = ws.data_files();
        println!("  files in the data directory {when}: {files:?}");
        let written: Vec<_> = files.iter().filter(|(_, len)| *len > 0).collect();
        if !written.is_empty() {
            problems.push(format!(
                "durability none wrote to {} ({when}): {written:?}",
                ws.data_dir().display()
            ));
        }
    };
    data_written(&ws, "after the first run", &mut problems);

    let broker = ws.start(&settings).await;
    let fresh = check_retained(broker.addr, "none-after", &BTreeMap::new()).await;
    if !fresh.is_empty() {
        problems.push(format!(
            "durability none: retained messages came back after a restart: {}",
            fresh.join("; ")
        ));
    }
    for sub in [&mut state.s311, &mut state.s5] {
        sub.received.clear();
        match sub.connect(broker.addr, false).await {
            Ok(false) => {}
            Ok(true) => problems.push(format!(
                "durability none: {} ({:?}) got Session Present = 1 after a restart",
                sub.id, sub.version
            )),
            Err(e) => problems.push(e),
        }
    }
    let mut publisher = Client::new("none-after-pub", V311, None);
    publisher.connect_expecting(broker.addr, true, false).await;
    let msgs: Vec<Msg> = SESSION_TOPICS
        .iter()
        .map(|(t, _)| Msg::new(t, b"after", QoS::AtLeastOnce, false))
        .collect();
    if let Err(e) = publisher.publish_all(&msgs, 10).await {
        problems.push(e);
    }
    publisher.disconnect().await;
    for sub in [&mut state.s311, &mut state.s5] {
        if sub.is_connected() {
            sub.run(QUIET, QUIET, |_| false).await;
            sub.disconnect().await;
        }
        if !sub.received.is_empty() {
            problems.push(format!(
                "durability none: {}'s subscriptions survived the restart: {:?}",
                sub.id,
                sub.received.iter().map(|r| &r.topic).collect::<Vec<_>>()
            ));
        }
    }
    broker.kill9().await;
    data_written(&ws, "after the second run", &mut problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!("[{test}] passed: nothing kept, nothing written");
}

// ---------------------------------------------------------------------------------------
// 6. durability = "batched"
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_durability_loses_at_most_the_flush_window() {
    let _serial = serial().await;
    let test = "batched";
    let mut rng = rng(test);
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("batched").with("ROOKERY_STORAGE_FLUSH_INTERVAL_MS", "50");
    let broker = ws.start(&settings).await;
    let token: u64 = rng.gen();

    let mut queue = Client::new("batched-queue", V5, Some(3600));
    queue.connect_expecting(broker.addr, false, false).await;
    queue
        .subscribe_granted(&[("batch/q/#", QoS::ExactlyOnce)])
        .await;
    queue.disconnect().await;

    // Phase A: acknowledged, then more than the flush window passes.
    let mut publisher = Client::new("batched-pub", V311, None);
    publisher.connect_expecting(broker.addr, true, false).await;
    let mut retained = BTreeMap::new();
    let mut msgs = Vec::new();
    for i in 0..200 {
        let payload = format!("batched retained {i} token {token:016x}");
        msgs.push(Msg::new(
            &keep_topic(i),
            payload.as_bytes(),
            QoS::AtLeastOnce,
            true,
        ));
        retained.insert(keep_topic(i), Bytes::from(payload));
    }
    let mut acked_a = Acked::default();
    for seq in 0..300u64 {
        let qos = if seq.is_multiple_of(2) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        msgs.push(Msg {
            topic: format!("batch/q/q{}", qos as u8),
            payload: crash_support::seq_payload(seq, qos),
            qos,
            retain: false,
        });
        if qos == QoS::AtLeastOnce {
            acked_a.q1.insert(seq);
        } else {
            acked_a.q2.insert(seq);
        }
    }
    publisher
        .publish_all(&msgs, WINDOW)
        .await
        .unwrap_or_else(|e| panic!("phase A: {e}"));
    println!("  phase A: 200 retained + 300 queued (QoS 1/2) acknowledged; waiting 500 ms");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Phase B: more load right up to the kill; those may be lost (inside the window).
    let delay = Duration::from_millis(rng.gen_range(100..=300));
    let mut flood_b = flood("batch/q", 300);
    flood_b.only = Some(QoS::AtLeastOnce);
    let log_b = flood_then_kill_b(broker, publisher, flood_b, delay).await;

    let broker = ws.start(&settings).await;
    let mut problems = check_retained(broker.addr, "batched-after", &retained).await;
    problems.extend(
        reconnect_and_drain(
            &mut queue,
            broker.addr,
            &acked_a,
            "batch/q",
            "no QoS 2 duplicates",
        )
        .await,
    );
    let t = tally(&queue, "batch/q");
    let survived_b = log_b
        .acked_q1
        .iter()
        .filter(|s| t.counts.contains_key(s))
        .count();
    println!(
        "  phase B (acknowledged within {delay:?} before the kill, inside the flush window; not \
         asserted): {survived_b} of {} survived",
        log_b.acked_q1.len()
    );
    assert!(
        problems.is_empty(),
        "batched (flush every 50 ms): messages acknowledged 500 ms before the kill:\n{}",
        problems.join("\n")
    );
    println!("[{test}] passed");
    broker.kill9().await;
}

/// Like [`flood_then_kill`] but without requiring acknowledgements of both QoS levels.
async fn flood_then_kill_b(
    broker: Broker,
    publisher: Client,
    flood: Flood,
    delay: Duration,
) -> FloodLog {
    let mut publisher = publisher;
    let task = tokio::spawn(async move { publisher.flood(&flood, None).await });
    tokio::time::sleep(delay).await;
    broker.kill9().await;
    let log = within(2 * WAIT, "the publisher to notice the kill", task)
        .await
        .expect("publisher task");
    println!("  phase B publisher: {}", log.summary());
    log
}

// ---------------------------------------------------------------------------------------
// 7. Wills across a crash
// ---------------------------------------------------------------------------------------

/// A new persistent v5 session subscribed to `filter` at QoS 1.
async fn will_subscriber(addr: SocketAddr, id: &str, filter: &str) -> Client {
    let mut sub = Client::new(id, V5, Some(3600));
    sub.connect_expecting(addr, true, false).await;
    sub.subscribe_granted(&[(filter, QoS::AtLeastOnce)]).await;
    sub
}

/// Connects a persistent v5 session with a retained QoS 1 will on `topic`, published
/// `delay` seconds after the connection ends.
async fn connect_with_will(
    addr: SocketAddr,
    id: &str,
    topic: &str,
    delay: u32,
) -> crash_support::Conn {
    use rookery::codec::{LastWill, MqttStr, Packet, Properties};
    let mut conn = crash_support::Conn::open(addr, V5).await.expect("connects");
    let mut connect = crash_support::connect_packet(V5, id, true, Some(3600));
    connect.will = Some(LastWill {
        topic: MqttStr::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties {
            will_delay_interval: (delay > 0).then_some(delay),
            ..Properties::default()
        },
    });
    conn.send(&Packet::Connect(Box::new(connect)))
        .await
        .expect("CONNECT sent");
    match conn.recv_within(WAIT).await {
        Ok(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, 0, "{ack:?}"),
        other => panic!("{id}: expected CONNACK, got {other:?}"),
    }
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_will_of_a_client_connected_at_kill_9_is_published_after_the_restart() {
    use rookery::codec::{Disconnect, Packet};
    let _serial = serial().await;
    let test = "will-kill9";
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("strict");
    let mut broker = ws.start(&settings).await;
    // An offline persistent subscriber on the will topics: it must get the crashed
    // client's will queued, and not the will of the client that disconnected normally.
    let mut sub = will_subscriber(broker.addr, &format!("{test}-sub"), "crashwill/#").await;
    sub.disconnect().await;

    let crashed = connect_with_will(
        broker.addr,
        &format!("{test}-crashed"),
        "crashwill/crashed",
        0,
    )
    .await;
    let mut polite = connect_with_will(
        broker.addr,
        &format!("{test}-polite"),
        "crashwill/polite",
        0,
    )
    .await;
    polite
        .send(&Packet::Disconnect(Disconnect::default()))
        .await
        .expect("DISCONNECT sent");
    // Nothing acknowledges that a session record is durable; give the commits time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill9().await;
    drop(crashed);
    drop(polite);
    broker = ws.start(&settings).await;

    sub.connect_expecting(broker.addr, false, true).await;
    let ending = sub
        .run(DRAIN_QUIET, DRAIN_LIMIT, |c| !c.received.is_empty())
        .await;
    let topics: Vec<&str> = sub.received.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(
        topics,
        vec!["crashwill/crashed"],
        "queued for the persistent subscriber after the restart ({ending:?})"
    );
    assert_eq!(&sub.received[0].payload[..], b"gone");
    // Retained: a new subscriber sees it too.
    let mut fresh = Client::new(&format!("{test}-fresh"), V5, None);
    fresh.connect_expecting(broker.addr, true, false).await;
    fresh
        .subscribe_granted(&[("crashwill/#", QoS::AtLeastOnce)])
        .await;
    fresh.run(QUIET, WAIT, |c| !c.received.is_empty()).await;
    let retained: Vec<(&str, bool)> = fresh
        .received
        .iter()
        .map(|r| (r.topic.as_str(), r.retain))
        .collect();
    assert_eq!(retained, vec![("crashwill/crashed", true)]);
    assert!(
        sub.errors.is_empty() && fresh.errors.is_empty(),
        "{:?} {:?}",
        sub.errors,
        fresh.errors
    );

    // Published once: another restart does not publish it again.
    broker.kill9().await;
    sub.drop_connection();
    broker = ws.start(&settings).await;
    sub.connect_expecting(broker.addr, false, true).await;
    sub.run(QUIET, WAIT, |_| false).await;
    assert_eq!(sub.received.len(), 1, "{:?}", sub.received);
    println!("[{test}] passed");
    broker.kill9().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_will_published_before_kill_9_is_not_published_again() {
    let _serial = serial().await;
    let test = "will-delayed";
    let mut ws = Workspace::new(test);
    let settings = Settings::durability("strict");
    let mut broker = ws.start(&settings).await;
    let mut sub = will_subscriber(broker.addr, &format!("{test}-sub"), "delayedwill/#").await;
    let client = connect_with_will(broker.addr, &format!("{test}-c"), "delayedwill/c", 1).await;
    drop(client); // the connection ends without DISCONNECT: the will is due in 1 s
    sub.run(Duration::from_secs(3), Duration::from_secs(5), |c| {
        !c.received.is_empty()
    })
    .await;
    assert_eq!(sub.received.len(), 1, "the will, once: {:?}", sub.received);
    // Let the record without the will reach the disk (nothing acknowledges it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill9().await;
    sub.drop_connection();
    broker = ws.start(&settings).await;
    sub.connect_expecting(broker.addr, false, true).await;
    sub.run(Duration::from_secs(2), WAIT, |_| false).await;
    assert_eq!(
        sub.received.len(),
        1,
        "not published again after the restart: {:?}",
        sub.received
    );
    println!("[{test}] passed");
    broker.kill9().await;
}
