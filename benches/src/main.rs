//! rookery-load: an independent MQTT 3.1.1 load generator.
//!
//! Scenarios: `fanout` (P publishers -> N subscribers on one topic), `fanin`
//! (N publishers -> 1 subscriber on a wildcard), `pairs` (N
//! publisher/subscriber pairs, one topic each) and `idle` (open N idle
//! connections as fast as possible). See benches/README.md.

#![recursion_limit = "256"]

mod client;
mod mqtt;
mod procfs;
mod relay;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

use client::{
    Conn, Padded, PubConfig, PubMode, PubSlot, PubStats, Shared, SubConfig, SubCounters, SubStats,
    PAYLOAD_HEADER, UNSET,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// P publishers (default 1) -> N subscribers (default 100), one topic.
    Fanout,
    /// N publishers (default 100), each on its own topic, -> S subscribers
    /// (default 1) on a `+` wildcard (or all on one topic with --same-topic).
    Fanin,
    /// N publisher/subscriber pairs (default 50), each pair its own topic.
    Pairs,
    /// Open N idle connections (default 1000) as fast as possible, hold, close.
    Idle,
}

#[derive(Parser, Debug)]
#[command(name = "rookery-load", version, about = "MQTT 3.1.1 load generator")]
struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// How clients reach the broker: tcp (direct), or through a local relay (see
    /// src/relay.rs) as tcp-relay, tls, ws (`--port` = HTTP port) or wss.
    #[arg(long, value_enum, default_value_t = relay::Transport::Tcp)]
    transport: relay::Transport,
    /// CA certificate (PEM) that signed the broker's certificate, for tls and wss.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,
    /// QoS for publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (>= 20: publisher id, sequence, send time).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long)]
    subscribers: Option<usize>,
    #[arg(long)]
    publishers: Option<usize>,
    #[arg(long)]
    pairs: Option<usize>,
    /// Connections for the idle scenario.
    #[arg(long)]
    connections: Option<usize>,
    /// Measured interval, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before the measured interval, seconds (excluded from stats).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Max time after publishing stops to wait for outstanding deliveries.
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Open loop: total publish rate (msgs/s over all publishers), fixed
    /// schedule, latency from the scheduled send time.
    #[arg(long)]
    rate: Option<f64>,
    /// Closed loop (default): per publisher, at most W messages not yet
    /// received by every expected subscriber.
    #[arg(long, default_value_t = 1000)]
    window: u64,
    /// Broker PID for CPU (/proc/PID/stat) and RSS (/proc/PID/status).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Print one JSON object of results on stdout.
    #[arg(long)]
    json: bool,
    /// Slow consumer emulation: subscriber spends this long per message.
    #[arg(long, default_value_t = 0)]
    subscriber_delay_us: u64,
    /// Subscribers connect with clean session off (persistent sessions: a broker with
    /// persistence stores their QoS >= 1 messages).
    #[arg(long)]
    persistent_subscribers: bool,
    /// How many subscribers get --subscriber-delay-us (default: all).
    #[arg(long, visible_alias = "slow-subscriber")]
    slow_subscribers: Option<usize>,
    /// QoS 1/2: max unacknowledged publishes per publisher (keep it at or
    /// below the broker's receive limit: Mosquitto silently drops QoS 2
    /// publishes beyond its max_inflight_messages while still acking them).
    #[arg(long, default_value_t = 100)]
    max_inflight: usize,
    /// Max publishes encoded per write.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// MQTT keep-alive, seconds (PINGREQ every half of it when idle).
    #[arg(long, default_value_t = 60)]
    keepalive: u16,
    /// Tokio worker threads (default: number of CPUs).
    #[arg(long)]
    threads: Option<usize>,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Idle scenario: how long to hold the connections, seconds.
    #[arg(long, default_value_t = 3.0)]
    hold: f64,
    /// Fan-in: every publisher uses the same topic (no wildcard).
    #[arg(long)]
    same_topic: bool,
    /// Topic prefix (default: rookery-load/<unique run tag>).
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Subscriber read buffer, bytes.
    #[arg(long, default_value_t = 128 * 1024)]
    read_buffer: usize,
    /// Log in with username/password: a file with one `username password`
    /// per line. Subscriber i uses line i (the file must have at least one
    /// line per subscriber); publisher j uses line subscribers + j if there
    /// is one, otherwise it connects without credentials.
    #[arg(long, value_name = "FILE")]
    credentials: Option<std::path::PathBuf>,
    /// Subscription filter for every subscriber instead of the scenario's
    /// (e.g. `groups/#`); it must match the publishers' topics.
    #[arg(long)]
    subscribe_filter: Option<String>,
    /// Topic for every publisher instead of the scenario's (e.g. `groups/7`).
    #[arg(long)]
    publish_topic: Option<String>,
}

/// Who publishes where, and who expects what.
struct Plan {
    pub_topics: Vec<String>,
    /// (filter, expected publisher indices) per subscriber.
    subs: Vec<(String, Vec<usize>)>,
}

impl Plan {
    fn build(args: &Args, prefix: &str) -> Result<Plan> {
        Ok(match args.scenario {
            Scenario::Fanout => {
                let p = args.publishers.unwrap_or(1);
                let s = args.subscribers.unwrap_or(100);
                let topic = format!("{prefix}/fanout");
                Plan {
                    pub_topics: vec![topic.clone(); p],
                    subs: (0..s).map(|_| (topic.clone(), (0..p).collect())).collect(),
                }
            }
            Scenario::Fanin => {
                let p = args.publishers.unwrap_or(100);
                let s = args.subscribers.unwrap_or(1);
                let (topics, filter) = if args.same_topic {
                    let t = format!("{prefix}/fanin");
                    (vec![t.clone(); p], t)
                } else {
                    (
                        (0..p).map(|i| format!("{prefix}/fanin/{i}")).collect(),
                        format!("{prefix}/fanin/+"),
                    )
                };
                Plan {
                    pub_topics: topics,
                    subs: (0..s).map(|_| (filter.clone(), (0..p).collect())).collect(),
                }
            }
            Scenario::Pairs => {
                let n = args.pairs.unwrap_or(50);
                let topics: Vec<String> = (0..n).map(|i| format!("{prefix}/pair/{i}")).collect();
                Plan {
                    subs: topics
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (t.clone(), vec![i]))
                        .collect(),
                    pub_topics: topics,
                }
            }
            Scenario::Idle => bail!("idle has no traffic plan"),
        })
    }
}

/// Connection set-up budget (each phase).
const SETUP: Duration = Duration::from_secs(30);
/// Slack on top of the planned run time before the watchdog kills the run.
const SLACK: Duration = Duration::from_secs(10);

static PROCESS_START: OnceLock<Instant> = OnceLock::new();
static HARD_DEADLINE_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Move the watchdog deadline to `from_now` from now.
fn set_hard_deadline(from_now: Duration) {
    let start = PROCESS_START.get_or_init(Instant::now);
    let at = start.elapsed() + from_now;
    HARD_DEADLINE_MS.store(at.as_millis() as u64, Ordering::SeqCst);
}

/// Ends the process if the run overruns its deadline, whatever state the
/// runtime is in.
fn start_watchdog(scenario: String, json: bool) {
    let start = *PROCESS_START.get_or_init(Instant::now);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        let deadline = HARD_DEADLINE_MS.load(Ordering::SeqCst);
        if start.elapsed().as_millis() as u64 > deadline {
            let msg = format!(
                "hard timeout: run still going after {:.1} s",
                start.elapsed().as_secs_f64()
            );
            if json {
                println!("{}", json!({ "scenario": scenario, "error": msg }));
            }
            eprintln!("rookery-load: {msg}");
            std::process::exit(3);
        }
    });
}

fn pad<T: Default>() -> Padded<T> {
    Padded(T::default())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Run `make(i)` for i in 0..n with at most `concurrency` in flight.
async fn connect_many<F, Fut>(n: usize, concurrency: usize, make: F) -> Vec<Result<Conn>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Conn>> + Send + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let make = make.clone();
        let next = next.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                out.push((i, make(i).await));
            }
        }));
    }
    let mut all: Vec<(usize, Result<Conn>)> = Vec::with_capacity(n);
    for w in workers {
        match w.await {
            Ok(v) => all.extend(v),
            Err(e) => all.push((usize::MAX, Err(anyhow::anyhow!("connect worker: {e}")))),
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// Broker RSS sampler: keeps the maximum VmRSS seen.
struct RssSampler {
    max_kb: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pid: Option<String>) -> RssSampler {
        let max_kb = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        if let Some(pid) = pid {
            let (m, s) = (max_kb.clone(), stop.clone());
            tokio::spawn(async move {
                let mut iv = tokio::time::interval(Duration::from_millis(100));
                while !s.load(Ordering::Relaxed) {
                    iv.tick().await;
                    if let Some(kb) = procfs::rss_kb(&pid) {
                        m.fetch_max(kb, Ordering::Relaxed);
                    }
                }
            });
        }
        RssSampler { max_kb, stop }
    }

    fn finish(&self, pid: &Option<String>) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let last = pid.as_deref().and_then(procfs::rss_kb).unwrap_or(0);
        let max = self.max_kb.fetch_max(last, Ordering::Relaxed).max(last);
        pid.as_ref().map(|_| max)
    }
}

#[derive(Clone, Copy)]
struct Snapshot {
    t_ns: u64,
    sent: u64,
    received: u64,
    broker_ticks: Option<u64>,
    self_ticks: Option<u64>,
    system: Option<(u64, u64)>,
}

fn snapshot(shared: &Shared, pid: &Option<String>) -> Snapshot {
    Snapshot {
        t_ns: shared.now_ns(),
        sent: shared
            .pubs
            .iter()
            .map(|p| p.sent.load(Ordering::Relaxed))
            .sum(),
        received: shared
            .subs
            .iter()
            .map(|s| s.received.load(Ordering::Relaxed))
            .sum(),
        broker_ticks: pid.as_deref().and_then(procfs::cpu_ticks),
        self_ticks: procfs::cpu_ticks("self"),
        system: procfs::system_ticks(),
    }
}

fn cpu_delta(a: Option<u64>, b: Option<u64>, tck: u64) -> Option<f64> {
    Some(b?.saturating_sub(a?) as f64 / tck as f64)
}

fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{:x}",
        (nanos ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff
    )
}

async fn run_traffic(args: &Args) -> Result<Value> {
    let tag = run_tag();
    let prefix = args
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("rookery-load/{tag}"));
    let mut plan = Plan::build(args, &prefix)?;
    if let Some(t) = &args.publish_topic {
        plan.pub_topics.iter_mut().for_each(|p| p.clone_from(t));
    }
    if let Some(f) = &args.subscribe_filter {
        plan.subs.iter_mut().for_each(|(s, _)| s.clone_from(f));
    }
    let n_pubs = plan.pub_topics.len();
    let n_subs = plan.subs.len();
    if n_pubs == 0 || n_subs == 0 {
        bail!("need at least one publisher and one subscriber");
    }
    let creds: Arc<Vec<client::Credential>> = Arc::new(match &args.credentials {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let c = client::parse_credentials(&text)?;
            if c.len() < n_subs {
                bail!(
                    "{}: {} credentials for {n_subs} subscribers",
                    path.display(),
                    c.len()
                );
            }
            c
        }
    });
    let addr = relay::start(
        args.transport,
        &args.host,
        args.port,
        args.tls_ca.as_deref(),
    )
    .await?;
    let pid = args.broker_pid.map(|p| p.to_string());
    let tck = procfs::clk_tck();
    let mut errors: Vec<String> = Vec::new();

    // Progress cells: one per (publisher, expecting subscriber).
    let mut pub_cells: Vec<Vec<usize>> = vec![Vec::new(); n_pubs];
    let mut sub_cells: Vec<Vec<usize>> = Vec::with_capacity(n_subs);
    let mut n_cells = 0;
    for (_, expects) in &plan.subs {
        let mut cells = Vec::with_capacity(expects.len());
        for &p in expects {
            pub_cells[p].push(n_cells);
            cells.push(n_cells);
            n_cells += 1;
        }
        sub_cells.push(cells);
    }
    let fanout_of: Vec<u64> = pub_cells.iter().map(|c| c.len() as u64).collect();
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        start_ns: AtomicU64::new(UNSET),
        warm_end_ns: AtomicU64::new(UNSET),
        meas_end_ns: AtomicU64::new(UNSET),
        progress: (0..n_cells).map(|_| pad()).collect(),
        pub_cells,
        pubs: (0..n_pubs).map(|_| Padded(PubSlot::default())).collect(),
        subs: (0..n_subs)
            .map(|_| Padded(SubCounters::default()))
            .collect(),
        pubs_done: AtomicUsize::new(0),
    });
    let setup_deadline = SETUP;

    // Subscribers first: connect + subscribe, then start their read loops.
    let filters: Arc<Vec<String>> = Arc::new(plan.subs.iter().map(|(f, _)| f.clone()).collect());
    let (qos, ka) = (args.qos, args.keepalive);
    let clean_subscribers = !args.persistent_subscribers;
    let sub_conns = {
        let (addr, tag, filters, creds) =
            (addr.clone(), tag.clone(), filters.clone(), creds.clone());
        tokio::time::timeout(
            setup_deadline,
            connect_many(n_subs, args.connect_concurrency, move |i| {
                let (addr, id, filter) =
                    (addr.clone(), format!("rl-{tag}-s{i}"), filters[i].clone());
                let cred = creds.get(i).cloned();
                async move {
                    let mut c =
                        client::connect(&addr, &id, ka, clean_subscribers, cred.as_ref()).await?;
                    client::subscribe(&mut c, &filter, qos).await?;
                    Ok(c)
                }
            }),
        )
        .await
        .context("subscriber set-up timed out")?
    };
    let slow = args.slow_subscribers.unwrap_or(n_subs);
    let mut sub_handles = Vec::with_capacity(n_subs);
    for (i, conn) in sub_conns.into_iter().enumerate() {
        let conn = conn.with_context(|| format!("subscriber {i}"))?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let delay_us = if i < slow {
            args.subscriber_delay_us
        } else {
            0
        };
        let cfg = SubConfig {
            index: i,
            expects: plan.subs[i].1.clone(),
            cells: sub_cells[i].clone(),
            publishers_total: n_pubs,
            delay_us,
            read_buffer: if delay_us > 0 {
                4096
            } else {
                args.read_buffer.max(4096)
            },
            keep_alive: ka,
        };
        let task = tokio::spawn(client::run_subscriber(cfg, shared.clone(), conn, stop_rx));
        sub_handles.push((stop_tx, task));
    }

    // Publishers: closed loop on the shared runtime; open loop each on its
    // own thread so that it can sleep precisely.
    let (start_tx, start_rx) = watch::channel(false);
    let per_pub_rate = args.rate.map(|r| r / n_pubs as f64);
    let mut pub_handles: Vec<(oneshot::Sender<()>, oneshot::Receiver<PubStats>)> = Vec::new();
    let mut ready: Vec<oneshot::Receiver<Result<()>>> = Vec::new();
    for (i, topic) in plan.pub_topics.iter().enumerate() {
        let mode = match per_pub_rate {
            None => PubMode::Closed {
                window: args.window,
            },
            Some(r) => {
                let interval_ns = 1e9 / r;
                PubMode::Open {
                    interval_ns,
                    phase_ns: interval_ns * i as f64 / n_pubs as f64,
                    spin: r <= 2000.0,
                }
            }
        };
        let cfg = PubConfig {
            index: i,
            topic: topic.as_bytes().to_vec(),
            qos,
            payload: args.payload,
            mode,
            max_inflight: args.max_inflight.clamp(1, 65_535),
            batch: args.batch.max(1),
            keep_alive: ka,
            dedicated: per_pub_rate.is_some(),
        };
        let (shut_tx, shut_rx) = oneshot::channel();
        let (res_tx, res_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (addr, id, shared, start_rx) = (
            addr.clone(),
            format!("rl-{tag}-p{i}"),
            shared.clone(),
            start_rx.clone(),
        );
        let cred = creds.get(n_subs + i).cloned();
        let body = async move {
            match client::connect(&addr, &id, ka, true, cred.as_ref()).await {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    let stats = client::run_publisher(cfg, shared, conn, start_rx, shut_rx).await;
                    let _ = res_tx.send(stats);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        };
        if per_pub_rate.is_some() {
            std::thread::Builder::new()
                .name(format!("pub-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(body),
                        Err(e) => eprintln!("publisher {i}: runtime: {e}"),
                    }
                })?;
        } else {
            tokio::spawn(body);
        }
        pub_handles.push((shut_tx, res_rx));
        ready.push(ready_rx);
    }
    for (i, r) in ready.into_iter().enumerate() {
        match tokio::time::timeout(setup_deadline, r).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e.context(format!("publisher {i}"))),
            Ok(Err(_)) => bail!("publisher {i} exited during set-up"),
            Err(_) => bail!("publisher {i} set-up timed out"),
        }
    }

    // Timeline.
    set_hard_deadline(secs(args.warmup + args.duration + args.drain) + SLACK);
    let start_ns = shared.now_ns() + 20_000_000;
    let warm_end = start_ns + secs(args.warmup).as_nanos() as u64;
    let meas_end = warm_end + secs(args.duration).as_nanos() as u64;
    let drain_end = meas_end + secs(args.drain).as_nanos() as u64;
    shared.start_ns.store(start_ns, Ordering::SeqCst);
    shared.warm_end_ns.store(warm_end, Ordering::SeqCst);
    shared.meas_end_ns.store(meas_end, Ordering::SeqCst);
    let rss = RssSampler::start(pid.clone());
    let rss_start = pid.as_deref().and_then(procfs::rss_kb);
    let _ = start_tx.send(true);

    tokio::time::sleep_until(shared.instant_at(warm_end)).await;
    let a = snapshot(&shared, &pid);
    tokio::time::sleep_until(shared.instant_at(meas_end)).await;
    let b = snapshot(&shared, &pid);

    // Drain: until every publisher is done and every expected delivery
    // arrived, or the drain period ends.
    let expected_now = |s: &Shared| -> u64 {
        s.pubs
            .iter()
            .zip(&fanout_of)
            .map(|(p, f)| p.sent.load(Ordering::Relaxed) * f)
            .sum()
    };
    loop {
        let now = shared.now_ns();
        if now >= drain_end {
            break;
        }
        let unique: u64 = shared
            .subs
            .iter()
            .map(|s| s.unique.load(Ordering::Relaxed))
            .sum();
        if shared.pubs_done.load(Ordering::SeqCst) == n_pubs && unique >= expected_now(&shared) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain_used = (shared.now_ns().saturating_sub(meas_end)) as f64 / 1e9;

    // Stop everyone and collect.
    let collect_by = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut pub_stats: Vec<PubStats> = Vec::with_capacity(n_pubs);
    for (shut, _) in pub_handles.iter_mut() {
        let (tx, _) = oneshot::channel();
        let _ = std::mem::replace(shut, tx).send(());
    }
    for (i, (_, res)) in pub_handles.into_iter().enumerate() {
        match tokio::time::timeout_at(collect_by, res).await {
            Ok(Ok(s)) => pub_stats.push(s),
            _ => errors.push(format!("publisher {i}: no result")),
        }
    }
    let mut sub_stats: Vec<SubStats> = Vec::with_capacity(n_subs);
    let mut tasks = Vec::with_capacity(n_subs);
    for (stop, task) in sub_handles {
        let _ = stop.send(());
        tasks.push(task);
    }
    for (i, task) in tasks.into_iter().enumerate() {
        match tokio::time::timeout_at(collect_by, task).await {
            Ok(Ok(s)) => sub_stats.push(s),
            _ => errors.push(format!("subscriber {i}: no result")),
        }
    }
    let rss_max = rss.finish(&pid);
    let rss_end = pid.as_deref().and_then(procfs::rss_kb);

    // Results.
    let sent: Vec<u64> = shared
        .pubs
        .iter()
        .map(|p| p.sent.load(Ordering::Relaxed))
        .collect();
    let published: u64 = sent.iter().sum();
    let expected: u64 = expected_now(&shared);
    let mut hist = client::new_histogram();
    let (mut received, mut unique, mut dups, mut reordered, mut unexpected, mut malformed) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    for s in &sub_stats {
        received += s.received;
        unique += s.unique;
        dups += s.duplicates;
        reordered += s.reordered;
        unexpected += s.unexpected;
        malformed += s.malformed;
        hist.add(&s.latency).ok();
        if let Some(e) = &s.error {
            errors.push(e.clone());
        }
    }
    let (mut acked, mut unacked) = (0u64, 0u64);
    let mut ack_hist = client::new_histogram();
    for p in &pub_stats {
        ack_hist.add(&p.ack_latency).ok();
        acked += p.acked;
        unacked += p.unacked;
        if let Some(e) = &p.error {
            errors.push(e.clone());
        }
    }
    let measured_s = (b.t_ns - a.t_ns) as f64 / 1e9;
    let delivered_measured = b.received - a.received;
    let published_measured = b.sent - a.sent;
    let broker_cpu = cpu_delta(a.broker_ticks, b.broker_ticks, tck);
    let self_cpu = cpu_delta(a.self_ticks, b.self_ticks, tck);
    let loss = expected.saturating_sub(unique);
    // CPU used by everything else on the machine during the measurement,
    // in percent of one core: a noisy neighbour shows up here.
    let other_cpu = match (a.system, b.system) {
        (Some((busy_a, _)), Some((busy_b, _))) => {
            let all = busy_b.saturating_sub(busy_a) as f64 / tck as f64;
            Some(round(
                100.0 * (all - broker_cpu.unwrap_or(0.0) - self_cpu.unwrap_or(0.0)).max(0.0)
                    / measured_s,
                1,
            ))
        }
        _ => None,
    };
    let us = |ns: u64| round(ns as f64 / 1000.0, 1);
    let latency = if hist.is_empty() {
        Value::Null
    } else {
        json!({
            "count": hist.len(),
            "min": us(hist.min()),
            "mean": round(hist.mean() / 1000.0, 1),
            "p50": us(hist.value_at_quantile(0.50)),
            "p90": us(hist.value_at_quantile(0.90)),
            "p99": us(hist.value_at_quantile(0.99)),
            "p999": us(hist.value_at_quantile(0.999)),
            "max": us(hist.max()),
        })
    };
    let ack_latency = if ack_hist.is_empty() {
        Value::Null
    } else {
        json!({
            "count": ack_hist.len(),
            "p50": us(ack_hist.value_at_quantile(0.50)),
            "p90": us(ack_hist.value_at_quantile(0.90)),
            "p99": us(ack_hist.value_at_quantile(0.99)),
            "p999": us(ack_hist.value_at_quantile(0.999)),
            "max": us(ack_hist.max()),
        })
    };
    errors.truncate(20);
    Ok(json!({
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "mode": if args.rate.is_some() { "open" } else { "closed" },
        "rate": args.rate,
        "window": if args.rate.is_some() { None } else { Some(args.window) },
        "qos": args.qos,
        "payload": args.payload,
        "publishers": n_pubs,
        "subscribers": n_subs,
        "slow_subscribers": if args.subscriber_delay_us > 0 { slow.min(n_subs) } else { 0 },
        "subscriber_delay_us": args.subscriber_delay_us,
        "warmup_s": args.warmup,
        "duration_s": round(measured_s, 3),
        "drain_s": round(drain_used, 3),
        "published": published,
        "published_measured": published_measured,
        "publish_rate": round(published_measured as f64 / measured_s, 1),
        "expected_deliveries": expected,
        "received": received,
        "unique_received": unique,
        "delivered_measured": delivered_measured,
        "delivery_rate": round(delivered_measured as f64 / measured_s, 1),
        "loss": loss,
        "loss_pct": if expected > 0 { round(100.0 * loss as f64 / expected as f64, 4) } else { 0.0 },
        "duplicates": dups,
        "reordered": reordered,
        "unexpected": unexpected,
        "malformed": malformed,
        "pub_acked": acked,
        "pub_unacked": unacked,
        "latency_us": latency,
        "ack_latency_us": ack_latency,
        "broker_pid": args.broker_pid,
        "broker_cpu_s": broker_cpu.map(|c| round(c, 3)),
        "broker_cpu_pct": broker_cpu.map(|c| round(100.0 * c / measured_s, 1)),
        "cpu_us_per_delivery": broker_cpu
            .filter(|_| delivered_measured > 0)
            .map(|c| round(c * 1e6 / delivered_measured as f64, 4)),
        "broker_rss_start_kb": rss_start,
        "broker_rss_max_kb": rss_max,
        "broker_rss_end_kb": rss_end,
        "loadgen_cpu_s": self_cpu.map(|c| round(c, 3)),
        "loadgen_cpu_pct": self_cpu.map(|c| round(100.0 * c / measured_s, 1)),
        "other_cpu_pct": other_cpu,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "errors": errors,
    }))
}

async fn run_idle(args: &Args) -> Result<Value> {
    let n = args.connections.unwrap_or(1000);
    let addr = relay::start(
        args.transport,
        &args.host,
        args.port,
        args.tls_ca.as_deref(),
    )
    .await?;
    let pid = args.broker_pid.map(|p| p.to_string());
    let tck = procfs::clk_tck();
    let tag = run_tag();
    let mut errors = Vec::new();
    if let Some(limit) = open_files_limit() {
        if (n as u64) + 64 > limit {
            errors.push(format!(
                "open files limit {limit} is below {n} connections; raise it with ulimit -n"
            ));
        }
    }
    let rss = RssSampler::start(pid.clone());
    let rss_before = pid.as_deref().and_then(procfs::rss_kb);
    let cpu_before = pid.as_deref().and_then(procfs::cpu_ticks);
    let self_before = procfs::cpu_ticks("self");
    let ka = args.keepalive;
    let t0 = Instant::now();
    let results = {
        let (addr, tag) = (addr.clone(), tag.clone());
        tokio::time::timeout(
            SETUP,
            connect_many(n, args.connect_concurrency, move |i| {
                let (addr, id) = (addr.clone(), format!("rl-{tag}-i{i}"));
                async move {
                    tokio::time::timeout(
                        Duration::from_secs(10),
                        client::connect(&addr, &id, ka, true, None),
                    )
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("connect timed out")))
                }
            }),
        )
        .await
        .context("idle connects timed out")?
    };
    let connect_s = t0.elapsed().as_secs_f64();
    let cpu_after = pid.as_deref().and_then(procfs::cpu_ticks);
    let self_cpu = cpu_delta(self_before, procfs::cpu_ticks("self"), tck);
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0usize;
    for r in results {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    let connected = conns.len();
    set_hard_deadline(secs(args.hold) + SLACK);
    tokio::time::sleep(secs(args.hold)).await;
    let rss_held = pid.as_deref().and_then(procfs::rss_kb);
    for c in &conns {
        client::send_disconnect(&c.stream);
    }
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_closed = pid.as_deref().and_then(procfs::rss_kb);
    let rss_max = rss.finish(&pid);
    let cpu = cpu_delta(cpu_before, cpu_after, tck);
    let delta_kb = match (rss_before, rss_held) {
        (Some(a), Some(b)) => Some(b as i64 - a as i64),
        _ => None,
    };
    Ok(json!({
        "scenario": "idle",
        "connections": n,
        "connected": connected,
        "failed": failed,
        "connect_time_s": round(connect_s, 3),
        "connect_rate": round(connected as f64 / connect_s, 1),
        "hold_s": args.hold,
        "broker_pid": args.broker_pid,
        "broker_cpu_connect_s": cpu.map(|c| round(c, 3)),
        "cpu_us_per_connect": cpu.filter(|_| connected > 0).map(|c| round(c * 1e6 / connected as f64, 1)),
        "loadgen_cpu_connect_s": self_cpu.map(|c| round(c, 3)),
        "broker_rss_before_kb": rss_before,
        "broker_rss_held_kb": rss_held,
        "broker_rss_max_kb": rss_max,
        "broker_rss_after_close_kb": rss_closed,
        "rss_delta_kb": delta_kb,
        "rss_per_conn_bytes": delta_kb
            .filter(|_| connected > 0)
            .map(|d| round(d as f64 * 1024.0 / connected as f64, 0)),
        "errors": errors,
    }))
}

fn print_text(v: &Value, indent: usize) {
    if let Value::Object(map) = v {
        for (k, val) in map {
            match val {
                Value::Null => {}
                Value::Object(_) => {
                    println!("{:indent$}{k}:", "");
                    print_text(val, indent + 2);
                }
                Value::Array(a) if a.is_empty() => {}
                Value::Array(a) => {
                    println!("{:indent$}{k}:", "");
                    for item in a {
                        println!(
                            "{:indent$}  - {}",
                            "",
                            item.as_str().unwrap_or(&item.to_string())
                        );
                    }
                }
                other => println!("{:indent$}{k}: {other}", ""),
            }
        }
    }
}

fn validate(args: &Args) -> Result<()> {
    if args.payload < PAYLOAD_HEADER {
        bail!("--payload must be at least {PAYLOAD_HEADER} bytes");
    }
    if args.payload > 1 << 24 {
        bail!("--payload too large");
    }
    if let Some(r) = args.rate {
        if !(r > 0.0 && r.is_finite()) {
            bail!("--rate must be positive");
        }
    }
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    if args.duration <= 0.0 || args.warmup < 0.0 || args.drain < 0.0 || args.hold < 0.0 {
        bail!("--duration must be positive; --warmup/--drain/--hold non-negative");
    }
    Ok(())
}

fn main() {
    let args = Args::parse();
    let scenario = format!("{:?}", args.scenario).to_lowercase();
    let fail = |msg: String, json: bool| -> ! {
        if json {
            println!("{}", json!({ "scenario": scenario, "error": msg }));
        }
        eprintln!("rookery-load: {msg}");
        std::process::exit(1);
    };
    if let Err(e) = validate(&args) {
        fail(format!("{e:#}"), args.json);
    }

    // Hard stop: whatever happens, the process ends. Set-up gets its own
    // budget; the deadline moves once the timed part of the run starts.
    set_hard_deadline(
        SETUP * 2 + secs(args.warmup + args.duration + args.drain + args.hold) + SLACK,
    );
    start_watchdog(scenario.clone(), args.json);

    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(format!("runtime: {e}"), args.json),
    };
    let result = rt.block_on(async {
        match args.scenario {
            Scenario::Idle => run_idle(&args).await,
            _ => run_traffic(&args).await,
        }
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(v) => {
            if args.json {
                println!("{v}");
            } else {
                print_text(&v, 0);
            }
        }
        Err(e) => fail(format!("{e:#}"), args.json),
    }
}
