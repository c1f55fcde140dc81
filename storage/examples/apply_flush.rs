//! Group-commit throughput of `SledStore`: batches of 1, 10, 100 and 1000 enqueued
//! messages (each a `PutMessage` + an `Enqueue` of a 64-byte message for one of 100
//! sessions, plus the `Dequeue` of an older entry so that the database stays the same
//! size), each batch applied and then flushed, as the broker's `strict` commit worker does.
//!
//! ```text
//! cargo run --release -p rookery-storage --example apply_flush -- [DIR] [SECONDS_PER_SIZE]
//! ```
//!
//! Prints enqueued messages per second and the apply and flush latency percentiles for
//! each batch size. DIR (default `target/apply-flush`) is deleted before and after.
//! `ROOKERY_SLED_CACHE_MB` sets sled's page cache.

use bytes::Bytes;
use rookery_storage::{Op, QueueEntry, SledOptions, SledStore, Store, StoredMessage};
use std::path::PathBuf;
use std::time::{Duration, Instant};

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

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "target/apply-flush".into()),
    );
    let seconds: f64 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(5.0);
    let _ = std::fs::remove_dir_all(&dir);
    let mut options = SledOptions::default();
    if let Some(mb) = std::env::var("ROOKERY_SLED_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        options.cache_capacity = mb << 20;
    }
    let store = SledStore::open_with(&dir, &options).expect("open");
    const SESSIONS: u64 = 100;
    /// Entries kept per session before the oldest is dequeued.
    const KEEP: u64 = 1000;
    let mut next_id = 1u64;
    println!(
        "{:>6} {:>10} {:>9} {:>10} {:>10} {:>10} {:>10}",
        "batch", "msgs/s", "batches/s", "apply p50", "apply p99", "flush p50", "flush p99"
    );
    for size in [1u64, 10, 100, 1000] {
        let mut applies = Vec::new();
        let mut flushes = Vec::new();
        let started = Instant::now();
        let mut messages = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            let mut batch = Vec::with_capacity(size as usize * 3);
            for _ in 0..size {
                let id = next_id;
                next_id += 1;
                let client_id = format!("client-{:03}", id % SESSIONS);
                let sequence = id / SESSIONS;
                batch.push(Op::PutMessage {
                    id,
                    message: message(id),
                });
                batch.push(Op::Enqueue {
                    client_id: client_id.clone(),
                    sequence,
                    entry: QueueEntry {
                        message_id: id,
                        qos: 1,
                        retain: false,
                        subscription_ids: vec![],
                    },
                });
                if sequence >= KEEP {
                    batch.push(Op::Dequeue {
                        client_id,
                        sequence: sequence - KEEP,
                    });
                }
            }
            let t0 = Instant::now();
            store.apply(batch).expect("apply");
            let t1 = Instant::now();
            store.flush().expect("flush");
            let t2 = Instant::now();
            applies.push(t1 - t0);
            flushes.push(t2 - t1);
            messages += size;
        }
        let elapsed = started.elapsed().as_secs_f64();
        applies.sort();
        flushes.sort();
        println!(
            "{:>6} {:>10.0} {:>9.0} {:>8.2}ms {:>8.2}ms {:>8.2}ms {:>8.2}ms",
            size,
            messages as f64 / elapsed,
            flushes.len() as f64 / elapsed,
            percentile(&applies, 0.5),
            percentile(&applies, 0.99),
            percentile(&flushes, 0.5),
            percentile(&flushes, 0.99),
        );
    }
    println!("{:.1} MiB on disk", store.size_on_disk() as f64 / 1048576.0);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
