//! Recovery with 1,000,000 queued offline messages: fill, then measure `open` + `recover`
//! time and the RSS of a fresh process after recovery.
//!
//! ```text
//! cargo run --release -p rookery-storage --example recover_1m -- [DIR] [SESSIONS] [PER_SESSION] [shared]
//! ```
//!
//! Fills SESSIONS (1000) persistent sessions with PER_SESSION (1000) queued 64-byte
//! messages each, one session per batch (1000 `PutMessage` + 1000 `Enqueue`) with a flush
//! per batch; with `shared`, every message is stored once and queued for all sessions
//! (PER_SESSION messages, SESSIONS x PER_SESSION queue entries). It then runs itself again
//! as a child process, so that the recovery figures are those of a process that has only
//! opened the database and recovered. DIR (default `target/recover-1m`) is deleted first
//! and at the end (unless `ROOKERY_KEEP_BENCH_DIR` is set; `--recover-only DIR` then
//! measures recovery alone). `ROOKERY_SLED_CACHE_MB` sets sled's page cache.

use bytes::Bytes;
use rookery_storage::{
    Op, QueueEntry, SledOptions, SledStore, Store, StoredMessage, StoredSession,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn message(id: u64) -> StoredMessage {
    let mut payload = vec![b'x'; 64];
    payload[..8].copy_from_slice(&id.to_be_bytes());
    StoredMessage {
        topic: format!("devices/{}/telemetry", id % 1000),
        payload: Bytes::from(payload),
        qos: 1,
        properties: Bytes::new(),
        publisher: "publisher".into(),
        received_at_ms: 1_700_000_000_000 + id,
        expiry_interval: None,
    }
}

fn session(i: u64) -> StoredSession {
    StoredSession {
        client_id: format!("client-{i:05}"),
        subscriptions: vec![rookery_storage::StoredSubscription {
            filter: "devices/+/telemetry".into(),
            qos: 1,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        }],
        expiry_interval: u32::MAX,
        disconnected_at_ms: 1_700_000_000_000,
        will: None,
        will_retain: false,
        will_delay: 0,
        will_sender: None,
    }
}

fn entry(message_id: u64) -> QueueEntry {
    QueueEntry {
        message_id,
        qos: 1,
        retain: false,
        subscription_ids: vec![],
    }
}

fn fill(dir: &Path, sessions: u64, per_session: u64, shared: bool) {
    let _ = std::fs::remove_dir_all(dir);
    let store = SledStore::open_with(dir, &options()).expect("open");
    let started = Instant::now();
    let mut ops_total = 0u64;
    if shared {
        // The messages first (kept alive by the first session's queue), then one batch
        // per further session queueing all of them again.
        let mut batch = vec![Op::PutSession(Box::new(session(0)))];
        for m in 0..per_session {
            batch.push(Op::PutMessage {
                id: m + 1,
                message: message(m + 1),
            });
            batch.push(Op::Enqueue {
                client_id: session(0).client_id,
                sequence: m,
                entry: entry(m + 1),
            });
        }
        ops_total += batch.len() as u64;
        store.apply(batch).expect("apply");
        store.flush().expect("flush");
    }
    for s in u64::from(shared)..sessions {
        let client_id = session(s).client_id;
        let mut batch = vec![Op::PutSession(Box::new(session(s)))];
        for m in 0..per_session {
            let id = if shared {
                m + 1
            } else {
                s * per_session + m + 1
            };
            if !shared {
                batch.push(Op::PutMessage {
                    id,
                    message: message(id),
                });
            }
            batch.push(Op::Enqueue {
                client_id: client_id.clone(),
                sequence: m,
                entry: entry(id),
            });
        }
        ops_total += batch.len() as u64;
        store.apply(batch).expect("apply");
        store.flush().expect("flush");
    }
    let elapsed = started.elapsed();
    println!(
        "fill: {} queued entries ({} ops, {} batches) in {:.1} s ({:.0} ops/s), {:.1} MiB on disk, \
         filler RSS {} MiB",
        sessions * per_session,
        ops_total,
        sessions,
        elapsed.as_secs_f64(),
        ops_total as f64 / elapsed.as_secs_f64(),
        store.size_on_disk() as f64 / 1048576.0,
        rss_kib() / 1024
    );
}

/// `ROOKERY_SLED_CACHE_MB` overrides the page cache size, to see what it buys.
fn options() -> SledOptions {
    let mut options = SledOptions::default();
    if let Some(mb) = std::env::var("ROOKERY_SLED_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.cache_capacity = mb << 20;
    }
    options
}

fn recover(dir: &Path) {
    let rss_start = rss_kib();
    let started = Instant::now();
    let store = SledStore::open_with(dir, &options()).expect("open");
    let opened = started.elapsed();
    let rss_opened = rss_kib();
    let recovered = store.recover().expect("recover");
    let total = started.elapsed();
    let rss = rss_kib();
    let queued: u64 = recovered.sessions.iter().map(|s| s.queue_len).sum();
    // Reading the head of one queue, as the broker does when a session reconnects.
    let head_started = Instant::now();
    let first = &recovered.sessions[recovered.sessions.len() / 2]
        .session
        .client_id;
    let head = store.queue_range(first, 0, 100).expect("queue_range");
    let head_time = head_started.elapsed();
    println!(
        "recover: {} sessions, {queued} queued messages; open {:.0} ms + recover {:.0} ms = {:.0} ms",
        recovered.sessions.len(),
        opened.as_secs_f64() * 1e3,
        (total - opened).as_secs_f64() * 1e3,
        total.as_secs_f64() * 1e3
    );
    println!(
        "recover: RSS {} MiB after recovery ({} MiB after open, {} MiB at process start); \
         queue_range of 100 in {:.2} ms",
        rss / 1024,
        rss_opened / 1024,
        rss_start / 1024,
        head_time.as_secs_f64() * 1e3
    );
    assert_eq!(head.len(), 100);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--recover-only") {
        recover(Path::new(&args[2]));
        return;
    }
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "target/recover-1m".into()),
    );
    let sessions = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let per_session = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let shared = args.get(4).map(String::as_str) == Some("shared");
    fill(&dir, sessions, per_session, shared);
    for run in 1..=2 {
        println!("fresh process, run {run}:");
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("--recover-only")
            .arg(&dir)
            .status()
            .expect("spawn");
        assert!(status.success());
    }
    // ROOKERY_KEEP_BENCH_DIR keeps the database for more `--recover-only DIR` runs.
    if std::env::var_os("ROOKERY_KEEP_BENCH_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
