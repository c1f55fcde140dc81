//! Damaged or foreign databases are refused with `Corrupt`, never a panic: garbage is
//! written straight into the trees through sled (only storage's own tests may do this).

mod common;

use common::{inflight_entry, message, queue_entry, session};
use rookery_storage::{Op, StorageError, StorageResult, Store};
use std::path::Path;

/// A flushed database with one session `c`: two queued messages, one in flight, one
/// incoming id, one retained message.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = common::open_after_drop(dir.path()).unwrap();
    store
        .apply(vec![
            Op::PutSession(Box::new(session("c", 3))),
            Op::PutMessage {
                id: 1,
                message: message("a", b"1", 1),
            },
            Op::PutMessage {
                id: 2,
                message: message("b", b"2", 2),
            },
            Op::Enqueue {
                client_id: "c".into(),
                sequence: 10,
                entry: queue_entry(1, 1),
            },
            Op::Enqueue {
                client_id: "c".into(),
                sequence: 11,
                entry: queue_entry(2, 2),
            },
            Op::PutInflight {
                client_id: "c".into(),
                packet_id: 5,
                entry: inflight_entry(2, 1),
            },
            Op::PutIncoming {
                client_id: "c".into(),
                packet_id: 6,
            },
            Op::PutRetained(message("r", b"x", 4)),
        ])
        .unwrap();
    store.flush().unwrap();
    dir
}

/// Opens the database with sled itself, retrying while the store just dropped still
/// holds its file lock (sled releases it from a background thread).
fn open_raw(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(dir.join("db")) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

/// Sets (or with `None` removes) `key` in `tree`, bypassing the store.
fn poke(dir: &Path, tree: &str, key: &[u8], value: Option<&[u8]>) {
    let db = open_raw(dir);
    let tree = db.open_tree(tree).unwrap();
    match value {
        Some(value) => tree.insert(key, value).unwrap(),
        None => tree.remove(key).unwrap(),
    };
    db.flush().unwrap();
}

fn peek(dir: &Path, tree: &str, key: &[u8]) -> Vec<u8> {
    let db = open_raw(dir);
    let value = db.open_tree(tree).unwrap().get(key).unwrap().unwrap();
    value.to_vec()
}

fn expect_corrupt<T: std::fmt::Debug>(result: StorageResult<T>, mentions: &str) {
    match result {
        Err(StorageError::Corrupt(why)) => assert!(why.contains(mentions), "{why}"),
        other => panic!("expected Corrupt mentioning {mentions:?}, got {other:?}"),
    }
}

fn recover_after(tree: &str, key: &[u8], value: Option<&[u8]>, mentions: &str) {
    let dir = populated();
    poke(dir.path(), tree, key, value);
    // Refused at open (the id counter is read there) or by recover.
    expect_corrupt(
        common::open_after_drop(dir.path()).and_then(|store| store.recover()),
        mentions,
    );
}

#[test]
fn garbage_values_make_recover_fail_with_corrupt() {
    recover_after("retained", b"r", Some(b"\x01\xff\xff"), "message");
    recover_after("sessions", b"c", Some(b"\x01"), "session: truncated");
    recover_after(
        "sessions",
        b"c",
        Some(b"\x02abc"),
        "unknown record format 2",
    );
    recover_after("sessions", b"c", Some(b""), "empty value");
    recover_after(
        "inflight",
        b"c\x00\x00\x05",
        Some(b"\x01\x02"),
        "in-flight entry",
    );
    recover_after("inflight", b"c\x00\x05", Some(b"\x01\x02"), "packet key");
    recover_after("incoming", b"c\x00\x00\x06\x07", Some(b""), "packet key");
    recover_after(
        "queues",
        b"c\x00\x01",
        Some(b"\x01\x01\x01\x00\x00"),
        "queue key",
    );
    recover_after(
        "meta",
        b"next_message_id",
        Some(b"\x00\x01"),
        "message id counter",
    );
    recover_after(
        "messages",
        &2u64.to_be_bytes(),
        Some(b"\x01"),
        "message: truncated",
    );
    recover_after(
        "messages",
        &2u64.to_be_bytes(),
        None,
        "names message 2, which is not stored",
    );
}

#[test]
fn a_session_under_another_key_is_corrupt() {
    let dir = populated();
    let value = peek(dir.path(), "sessions", b"c");
    poke(dir.path(), "sessions", b"d", Some(&value));
    let store = common::open_after_drop(dir.path()).unwrap();
    expect_corrupt(store.recover(), "is for client \"c\"");
}

#[test]
fn recover_does_not_read_queued_values_but_queue_range_checks_them() {
    let dir = populated();
    let key = [b"c\x00".as_slice(), &11u64.to_be_bytes()].concat();
    poke(dir.path(), "queues", &key, Some(b"\x01\xff"));
    let store = common::open_after_drop(dir.path()).unwrap();
    let recovered = store.recover().unwrap();
    assert_eq!(recovered.sessions[0].queue, Some((10, 11)));
    assert_eq!(recovered.sessions[0].queue_len, 2);
    // The good entry before the damaged one is still readable on its own.
    assert_eq!(store.queue_range("c", 0, 1).unwrap().len(), 1);
    expect_corrupt(store.queue_range("c", 0, 10), "queue entry");
}

#[test]
fn a_damaged_refcount_refuses_the_batch_and_changes_nothing() {
    let dir = populated();
    poke(dir.path(), "refcounts", &1u64.to_be_bytes(), Some(b"\x00"));
    let store = common::open_after_drop(dir.path()).unwrap();
    let before = store.recover().unwrap();
    let dequeue = Op::Dequeue {
        client_id: "c".into(),
        sequence: 10,
    };
    expect_corrupt(
        store.apply(vec![
            Op::PutIncoming {
                client_id: "c".into(),
                packet_id: 9,
            },
            dequeue,
        ]),
        "reference count",
    );
    assert_eq!(store.recover().unwrap(), before);
    assert_eq!(store.queue_range("c", 0, 10).unwrap().len(), 2);
}

#[test]
fn another_schema_version_is_refused() {
    let dir = populated();
    poke(
        dir.path(),
        "meta",
        b"schema_version",
        Some(&5u64.to_be_bytes()),
    );
    let err = common::open_after_drop(dir.path())
        .err()
        .expect("must refuse");
    expect_corrupt::<()>(
        Err(err),
        "has schema version 5, but this build reads only version 4",
    );

    poke(dir.path(), "meta", b"schema_version", Some(b"v1"));
    expect_corrupt(
        common::open_after_drop(dir.path()).map(|_| ()),
        "schema version",
    );

    poke(dir.path(), "meta", b"schema_version", None);
    expect_corrupt(
        common::open_after_drop(dir.path()).map(|_| ()),
        "no schema version",
    );
}

#[test]
fn a_new_database_gets_the_current_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    drop(common::open_after_drop(dir.path()).unwrap());
    assert_eq!(
        peek(dir.path(), "meta", b"schema_version"),
        4u64.to_be_bytes()
    );
    // Reopening an empty database with its version is fine.
    let store = common::open_after_drop(dir.path()).unwrap();
    assert_eq!(store.recover().unwrap().next_message_id, 1);
}
