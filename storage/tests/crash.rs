//! Crash safety: a child process applies and flushes deterministic batches as fast as it
//! can, printing the number of each batch once `flush` returned; the parent kills it with
//! SIGKILL at a random moment, reopens the database and checks that
//!
//! - every batch the child reported flushed is there (durability), and
//! - the database equals the model after exactly k whole batches, for k the last reported
//!   batch or the one after it (atomicity: every batch writes to several trees, so a
//!   partly recovered batch cannot equal any model state).
//!
//! The same database goes through several kill/reopen rounds, each child resuming after
//! the last batch it finds, so recovery of an already-recovered database is covered too.

mod common;

use common::{inflight_entry, message, queue_entry, session, Model};
use rookery_storage::{Op, SledStore, Store};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "ROOKERY_STORAGE_CRASH_CHILD";
const CLIENTS: [&str; 3] = ["c0", "c1", "c10"];

/// Batch `n` (from 1). Message ids are batch numbers, so `next_message_id - 1` is the
/// last batch applied.
fn batch(n: u64) -> Vec<Op> {
    let client = |k: u64| CLIENTS[(k % 3) as usize].to_string();
    let mut ops = vec![
        Op::PutMessage {
            id: n,
            message: message("q", &n.to_be_bytes(), n),
        },
        Op::Enqueue {
            client_id: client(n),
            sequence: n,
            entry: queue_entry(n, n),
        },
        Op::PutRetained(message(&format!("r/{}", n % 4), &n.to_be_bytes(), n)),
        Op::PutSession(Box::new(session(&client(n), n))),
        // Replaces an older in-flight entry most of the time: moves a reference.
        Op::PutInflight {
            client_id: client(n + 1),
            packet_id: (n % 7) as u16,
            entry: inflight_entry(n, n),
        },
    ];
    if n > 6 {
        ops.push(Op::Dequeue {
            client_id: client(n - 6),
            sequence: n - 6,
        });
    }
    if n.is_multiple_of(2) {
        ops.push(Op::PutIncoming {
            client_id: client(n),
            packet_id: (n % 5) as u16,
        });
    } else {
        ops.push(Op::RemoveIncoming {
            client_id: client(n + 2),
            packet_id: (n % 5) as u16,
        });
    }
    if n.is_multiple_of(97) {
        ops.push(Op::RemoveSession {
            client_id: client(n / 97),
        });
    }
    if n.is_multiple_of(13) {
        ops.push(Op::RemoveRetained {
            topic: format!("r/{}", n % 4),
        });
    }
    if n.is_multiple_of(25) {
        // Over 1 MiB: larger than one of sled's I/O buffers (segments), so that a kill can
        // leave part of this batch on disk. Message ids must stay batch numbers, so the
        // 64 entries share message n (in a queue without a session record).
        for i in 0..64u64 {
            ops.push(Op::Enqueue {
                client_id: "bulk".into(),
                sequence: n * 100 + i,
                entry: queue_entry(n, i),
            });
        }
        ops.push(Op::PutRetained(message("big", &vec![n as u8; 1 << 20], n)));
    }
    if n % 25 == 1 && n > 1 {
        for i in 0..64u64 {
            ops.push(Op::Dequeue {
                client_id: "bulk".into(),
                sequence: (n - 1) * 100 + i,
            });
        }
    }
    ops
}

/// The child: resume after the last batch found, then apply + flush forever.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // an ordinary test run: nothing to do
    };
    let store = SledStore::open(Path::new(&dir)).expect("child open");
    let last = store.recover().expect("child recover").next_message_id - 1;
    println!("resumed {last}");
    for n in last + 1.. {
        store.apply(batch(n)).expect("apply");
        store.flush().expect("flush");
        println!("flushed {n}");
    }
}

/// A small xorshift: random kill times without a dependency; the seed is printed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn check_recovered(dir: &Path, last_flushed: u64) -> u64 {
    let store = SledStore::open(dir).expect("reopen after kill");
    let recovered = store.recover().expect("recover after kill");
    let applied = recovered.next_message_id - 1;
    assert!(
        applied >= last_flushed,
        "batch {last_flushed} was flushed but only {applied} batches survived"
    );
    assert!(
        applied <= last_flushed + 1,
        "batch {applied} was never applied"
    );
    let mut model = Model::default();
    for n in 1..=applied {
        model.apply(&batch(n)).expect("model batch");
    }
    assert_eq!(
        recovered,
        model.recover(),
        "state after batch {applied} differs"
    );
    for client in CLIENTS.into_iter().chain(["bulk"]) {
        assert_eq!(
            store
                .queue_range(client, 0, usize::MAX)
                .expect("queue_range"),
            model.queue_range(client, 0, usize::MAX),
            "queue of {client} after batch {applied}"
        );
    }
    assert_eq!(
        store.message_refcounts().expect("refcounts"),
        model.refcounts()
    );
    applied
}

#[test]
#[cfg(unix)]
fn kill_9_loses_no_flushed_batch_and_splits_none() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("seed {seed}");
    let mut random = seed;
    let mut applied = 0;
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_entry",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (opened_tx, opened) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            let mut resumed = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // The harness may print "test crash_child_entry ... " on the same line.
                if let Some((_, n)) = line.split_once("flushed ") {
                    last = n.trim().parse::<u64>().ok();
                } else if let Some((_, n)) = line.split_once("resumed ") {
                    resumed = n.trim().parse::<u64>().ok();
                    let _ = opened_tx.send(());
                }
            }
            (resumed, last)
        });
        // Start the clock once the child has the database open (start-up time varies a lot
        // on a loaded machine), then kill it somewhere in the next 20..1020 ms.
        opened
            .recv_timeout(Duration::from_secs(120))
            .expect("child never opened the database");
        let delay = Duration::from_millis(20 + next_random(&mut random) % 1000);
        let started = Instant::now();
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        let (resumed, last) = reader.join().unwrap();
        let resumed = resumed.expect("child never opened the database");
        assert_eq!(resumed, applied, "round {round}: child resumed elsewhere");
        let last_flushed = last.unwrap_or(resumed);
        println!(
            "round {round}: killed after {:?} ({status}), resumed at {resumed}, last flushed {last_flushed}",
            started.elapsed()
        );
        applied = check_recovered(dir.path(), last_flushed);
        println!("round {round}: {applied} batches recovered");
    }
    assert!(
        applied > 20,
        "the child made too little progress to test anything"
    );
}
