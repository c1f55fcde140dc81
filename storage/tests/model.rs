//! Property test: random batches applied to `SledStore`, `MemoryStore` and the naive model
//! in `common` must agree after every batch — on whether the batch is refused, on
//! `recover()`, and on `queue_range` — and the sled store must still agree after a
//! flush, drop and reopen at the end.

mod common;

use common::{inflight_entry, message, queue_entry, session, Model};
use proptest::prelude::*;
use rookery_storage::{MemoryStore, Op, Space, StorageError, Store};

/// A few client ids, including a prefix of another ("a" / "ab") to catch range scans that
/// run past their session, and rarely one with a NUL (always refused).
fn client() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => Just("a".to_string()),
        10 => Just("ab".to_string()),
        10 => Just("b".to_string()),
        1 => Just("a\0b".to_string()),
    ]
}

fn id() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 1u64..6, 1 => Just(u64::MAX), 1 => Just(0u64)]
}

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..6, 1 => Just(u64::MAX)]
}

fn pid() -> impl Strategy<Value = u16> {
    prop_oneof![8 => 1u16..5, 1 => Just(u16::MAX)]
}

/// One or two ops: a plain op, or a `PutMessage` followed by an entry naming it (so that
/// most batches are valid even though messages are deleted when unreferenced).
fn ops() -> impl Strategy<Value = Vec<Op>> {
    let stamp = any::<u16>().prop_map(u64::from);
    prop_oneof![
        3 => (id(), stamp.clone(), "[a-c]{0,3}").prop_map(|(id, stamp, topic)| vec![
            Op::PutMessage { id, message: message(&topic, &stamp.to_be_bytes(), stamp) }
        ]),
        4 => (client(), seq(), id(), stamp.clone()).prop_map(|(client_id, sequence, id, stamp)| vec![
            Op::PutMessage { id, message: message("m", &[1, 2, 3], stamp) },
            Op::Enqueue { client_id, sequence, entry: queue_entry(id, stamp) },
        ]),
        3 => (client(), seq(), id(), stamp.clone()).prop_map(|(client_id, sequence, id, stamp)| vec![
            Op::Enqueue { client_id, sequence, entry: queue_entry(id, stamp) }
        ]),
        3 => (client(), seq()).prop_map(|(client_id, sequence)| vec![
            Op::Dequeue { client_id, sequence }
        ]),
        2 => (client(), pid(), id(), stamp.clone()).prop_map(|(client_id, packet_id, id, stamp)| vec![
            Op::PutMessage { id, message: message("i", b"", stamp) },
            Op::PutInflight { client_id, packet_id, entry: inflight_entry(id, stamp) },
        ]),
        2 => (client(), pid(), id(), stamp.clone()).prop_map(|(client_id, packet_id, id, stamp)| vec![
            Op::PutInflight { client_id, packet_id, entry: inflight_entry(id, stamp) }
        ]),
        2 => (client(), pid()).prop_map(|(client_id, packet_id)| vec![
            Op::RemoveInflight { client_id, packet_id }
        ]),
        1 => (client(), pid()).prop_map(|(client_id, packet_id)| vec![
            Op::PutIncoming { client_id, packet_id }
        ]),
        1 => (client(), pid()).prop_map(|(client_id, packet_id)| vec![
            Op::RemoveIncoming { client_id, packet_id }
        ]),
        2 => (client(), stamp.clone()).prop_map(|(c, stamp)| vec![Op::PutSession(Box::new(session(&c, stamp)))]),
        1 => client().prop_map(|client_id| vec![Op::RemoveSession { client_id }]),
        1 => ("[a-c]{0,2}", stamp).prop_map(|(topic, stamp)| vec![
            Op::PutRetained(message(&topic, b"r", stamp))
        ]),
        1 => "[a-c]{0,2}".prop_map(|topic| vec![Op::RemoveRetained { topic }]),
        1 => (space(), "[a-c]{0,2}", "[x-z]{0,3}").prop_map(|(space, key, value)| vec![
            Op::PutRecord { space, key: key.into_bytes(), value: value.into_bytes() }
        ]),
        1 => (space(), "[a-c]{0,2}").prop_map(|(space, key)| vec![
            Op::RemoveRecord { space, key: key.into_bytes() }
        ]),
    ]
}

fn space() -> impl Strategy<Value = Space> {
    prop::sample::select(Space::ALL.to_vec())
}

fn batch() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(ops(), 0..8).prop_map(|v| v.into_iter().flatten().collect())
}

fn check(store: &dyn Store, model: &Model, name: &str) -> Result<(), TestCaseError> {
    let recovered = store
        .recover()
        .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
    prop_assert_eq!(&recovered, &model.recover(), "{} recover", name);
    check_queues(store, model, name)
}

/// `queue_range` only: unlike `recover`, it reads the sled store's staged layers instead
/// of checkpointing them first.
fn check_queues(store: &dyn Store, model: &Model, name: &str) -> Result<(), TestCaseError> {
    for space in Space::ALL {
        for prefix in [&b""[..], b"a", b"b"] {
            let got = store
                .records(space, prefix)
                .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
            prop_assert_eq!(
                got,
                model.records(space, prefix),
                "{} records({:?}, {:?})",
                name,
                space,
                prefix
            );
        }
    }
    let mut clients = model.clients();
    clients.push("zz".into());
    for client in &clients {
        for from in [0, 2, 5, u64::MAX] {
            for limit in [0, 1, 3, 100] {
                let got = store
                    .queue_range(client, from, limit)
                    .map_err(|e| TestCaseError::fail(format!("{name}: {e}")))?;
                prop_assert_eq!(
                    got,
                    model.queue_range(client, from, limit),
                    "{} queue_range({:?}, {}, {})",
                    name,
                    client,
                    from,
                    limit
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn stores_agree_with_the_model(
        batches in prop::collection::vec(batch(), 1..12),
        max_staged_bytes in prop::sample::select(vec![2usize, 600, usize::MAX]),
        full_checks in any::<bool>(),
    ) {
        // Checkpoints after every batch, every few batches (while later batches stage
        // over a frozen layer), or only when `recover` forces one; `full_checks` off
        // leaves staged writes in place across batches, since `recover` checkpoints.
        let dir = tempfile::tempdir().unwrap();
        // A checkpoint starts at half of `max_staged_bytes` staged.
        let options = rookery_storage::SledOptions {
            max_staged_bytes,
            ..Default::default()
        };
        let sled = common::open_with_after_drop(dir.path(), &options).unwrap();
        let memory = MemoryStore::new();
        let mut model = Model::default();
        for batch in batches {
            let expected = model.apply(&batch);
            for (name, store) in [("sled", &sled as &dyn Store), ("memory", &memory)] {
                match (store.apply(batch.clone()), &expected) {
                    (Ok(()), Ok(())) => {}
                    (Err(StorageError::Invalid(_)), Err(_)) => {}
                    (got, expected) => prop_assert!(
                        false,
                        "{}: apply gave {:?}, model {:?} for {:?}",
                        name,
                        got,
                        expected,
                        batch
                    ),
                }
                if full_checks || name == "memory" {
                    check(store, &model, name)?;
                } else {
                    check_queues(store, &model, name)?;
                }
            }
            if full_checks {
                prop_assert_eq!(sled.message_refcounts().unwrap(), model.refcounts(), "sled refcounts");
            }
            prop_assert_eq!(memory.message_refcounts(), model.refcounts(), "memory refcounts");
        }
        sled.flush().unwrap();
        drop(sled);
        let reopened = common::open_after_drop(dir.path()).unwrap();
        check(&reopened, &model, "sled reopened")?;
        prop_assert_eq!(reopened.message_refcounts().unwrap(), model.refcounts());
    }
}
