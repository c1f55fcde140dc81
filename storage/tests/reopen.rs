//! What was flushed is what is recovered after the store is dropped and reopened.

mod common;

use common::{inflight_entry, message, queue_entry, session};
use rookery_storage::{Op, Store};

fn batches() -> Vec<Vec<Op>> {
    let clients = ["dev/1", "dev/2", "dev/10", "app"];
    (1..=300u64)
        .map(|n| {
            let client = |k: u64| clients[(k % 4) as usize].to_string();
            let mut ops = vec![
                Op::PutMessage {
                    id: n,
                    message: message(&format!("t/{n}"), &[n as u8; 40], n),
                },
                Op::PutSession(Box::new(session(&client(n), n))),
            ];
            // Each message queued for two sessions (stored once, counted twice).
            for k in [n, n + 1] {
                ops.push(Op::Enqueue {
                    client_id: client(k),
                    sequence: n,
                    entry: queue_entry(n, k),
                });
            }
            if n % 3 == 0 {
                ops.push(Op::Dequeue {
                    client_id: client(n),
                    sequence: n - 2,
                });
                ops.push(Op::PutInflight {
                    client_id: client(n + 2),
                    packet_id: (n % 11) as u16,
                    entry: inflight_entry(n - 1, n),
                });
            }
            if n % 5 == 0 {
                ops.push(Op::PutIncoming {
                    client_id: client(n),
                    packet_id: n as u16,
                });
                ops.push(Op::PutRetained(message(&format!("r/{}", n % 7), b"on", n)));
            }
            if n == 150 {
                ops.push(Op::RemoveSession {
                    client_id: "app".into(),
                });
            }
            ops
        })
        .collect()
}

#[test]
fn reopen_recovers_exactly_what_was_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_after_drop(dir.path()).unwrap();
    for batch in batches() {
        store.apply(batch).unwrap();
    }
    store.flush().unwrap();
    let before = store.recover().unwrap();
    let queues: Vec<_> = before
        .sessions
        .iter()
        .map(|s| {
            store
                .queue_range(&s.session.client_id, 0, usize::MAX)
                .unwrap()
        })
        .collect();
    let refcounts = store.message_refcounts().unwrap();
    assert!(before.sessions.iter().all(|s| s.queue_len > 0));
    assert!(before
        .sessions
        .iter()
        .any(|s| !s.inflight.is_empty() && !s.incoming.is_empty()));
    assert_eq!(before.next_message_id, 301);
    assert!(refcounts.values().any(|&n| n == 2));
    drop(store);

    let store = common::open_after_drop(dir.path()).unwrap();
    assert_eq!(store.recover().unwrap(), before);
    for (session, queue) in before.sessions.iter().zip(queues) {
        assert_eq!(
            store
                .queue_range(&session.session.client_id, 0, usize::MAX)
                .unwrap(),
            queue
        );
    }
    assert_eq!(store.message_refcounts().unwrap(), refcounts);
    assert!(store.size_on_disk() > 0);
}

#[test]
fn message_ids_are_not_reused_after_their_messages_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_after_drop(dir.path()).unwrap();
    store
        .apply(vec![
            Op::PutMessage {
                id: 41,
                message: message("t", b"x", 1),
            },
            Op::Enqueue {
                client_id: "c".into(),
                sequence: 0,
                entry: queue_entry(41, 0),
            },
        ])
        .unwrap();
    store
        .apply(vec![Op::Dequeue {
            client_id: "c".into(),
            sequence: 0,
        }])
        .unwrap();
    assert_eq!(store.message_refcounts().unwrap().len(), 0);
    store.flush().unwrap();
    drop(store);
    let store = common::open_after_drop(dir.path()).unwrap();
    assert_eq!(store.recover().unwrap().next_message_id, 42);
}

#[test]
fn a_second_open_of_the_same_directory_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let _store = common::open_after_drop(dir.path()).unwrap();
    // sled locks its files; a second broker on the same data directory gets an error.
    let err = common::open_after_drop(dir.path())
        .err()
        .expect("second open must fail");
    assert!(err.to_string().contains("could not acquire lock"), "{err}");
}
