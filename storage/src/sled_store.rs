//! The sled implementation of [`Store`]: the only code in the workspace that touches sled.
//!
//! # Atomicity
//!
//! `apply` runs in two steps. First every op of the batch is evaluated, in order, against
//! an overlay (the batch's pending writes, per tree) that reads through to what is stored:
//! that is where reference counts are computed, entries replaced by a later op are found,
//! and `RemoveSession` merges the stored range with what the batch itself added or
//! removed. Nothing is written while this runs, so an invalid batch or a decoding error
//! leaves the database untouched. Then the resulting plain inserts and removals are
//! written as one record of the `journal` tree — a single sled insert, atomic by itself —
//! and staged in memory; a background checkpoint later moves them into the trees
//! (`sled_store/staged.rs` explains why and how, and how the journal is replayed at open). So after a crash recovery sees every batch up to some
//! point, each whole or not at all (the crash test in `tests/crash.rs` kills a writer with
//! SIGKILL to check exactly that). `apply` calls are serialised by a mutex.
//!
//! `apply` never fsyncs: `flush` does, once per group commit.
//!
//! # Errors
//!
//! sled I/O errors become [`StorageError::Io`], except "no space" / "quota exceeded", which
//! become [`StorageError::Full`]. sled 0.34 remembers the first I/O error of its log writer
//! and fails every later write with it, so after `Full` the store must be reopened (drop it
//! and call [`SledStore::open`] again) once space is back; what was flushed before is intact.

use crate::codec;
use crate::store::{check_client_id, QueueEntry, Recovered, RecoveredSession, SCHEMA_VERSION};
use crate::{Op, StorageError, StorageResult, Store, StoredMessage};
use sled::Tree;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Keys in the `meta` tree.
const SCHEMA_KEY: &[u8] = b"schema_version";
const NEXT_ID_KEY: &[u8] = b"next_message_id";
/// The last journal record whose writes are in the trees.
const CHECKPOINT_KEY: &[u8] = b"checkpointed_through";

/// The trees, in the order of `TREE_NAMES`. `Journal` is last: the checkpoint transaction
/// covers the trees before it.
#[derive(Clone, Copy, Debug)]
enum T {
    Meta = 0,
    Retained,
    Messages,
    Refcounts,
    Sessions,
    Queues,
    Inflight,
    Incoming,
    Users,
    Groups,
    Directory,
    History,
    Outbox,
    DeadLetters,
    GroupQueues,
    Journal,
}

impl T {
    fn of(space: crate::Space) -> T {
        match space {
            crate::Space::Users => T::Users,
            crate::Space::Groups => T::Groups,
            crate::Space::Directory => T::Directory,
            crate::Space::History => T::History,
            crate::Space::Outbox => T::Outbox,
            crate::Space::DeadLetters => T::DeadLetters,
            crate::Space::GroupQueues => T::GroupQueues,
        }
    }
}

mod batch;
mod checkpoint;
mod record_log;
mod staged;
use batch::Overlay;
use record_log::RecordLog;
use staged::{Layers, Staged};

const TREE_NAMES: [&str; 16] = [
    "meta",
    "retained",
    "messages",
    "refcounts",
    "sessions",
    "queues",
    "inflight",
    "incoming",
    "users",
    "groups",
    "directory",
    "history",
    "outbox",
    "dead_letters",
    "group_queues",
    "journal",
];

/// The trees that hold data (all but the journal).
const DATA_TREES: usize = T::Journal as usize;

/// Pending writes of one tree: `None` removes the key.
type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Tuning for [`SledStore::open_with`].
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// sled's page cache, in bytes. sled's own default is 1 GiB, far above the broker's
    /// memory budget (≤ 200 MB with 1,000,000 queued messages), and sled's real use runs
    /// 4-5x over this figure because it counts serialized bytes. Measured with 1M queued
    /// messages (`examples/recover_1m.rs`): RSS after recovery 117 MiB with 4 MiB, 135 with
    /// 8, 170 with 16, ~207 with 32 or 64 — and no measurable change in group-commit
    /// throughput (`examples/apply_flush.rs`) between 8 and 512 MiB, since queues are
    /// written at their tail and read back in order. Default 8 MiB.
    pub cache_capacity: u64,
    /// sled's background flush interval. `None` (the default): the broker decides when data
    /// becomes durable (group commit in `strict`, its own timer in `batched`), so the loss
    /// window it documents is the real one and fsyncs are not doubled.
    pub flush_every_ms: Option<u64>,
    /// sled's `Mode::HighThroughput` instead of `Mode::LowSpace`.
    pub high_throughput: bool,
    /// A checkpoint starts when the staged writes are this old (default 5 s): each
    /// checkpoint writes the entries still live at that moment (messages in flight to
    /// online subscribers among them, which are then removed again by the next one), so
    /// the longer, the fewer writes — and the longer the journal to replay after a crash.
    pub checkpoint_interval: Duration,
    /// ... or when the staged entries older than about 1.5 s take this much memory
    /// (default 1 MiB): those belong to offline or slow sessions and will not be undone
    /// soon, while younger ones are mostly messages in flight to online subscribers that
    /// net out of the layer by themselves ...
    pub checkpoint_bytes: usize,
    /// ... or the journal records since the last checkpoint this much disk (default
    /// 64 MiB): a journal record holds what its batch wrote even if a later batch
    /// undid it.
    pub max_journal_bytes: usize,
    /// ... or when all staged entries reach half of this; `apply` waits for the running
    /// checkpoint when they reach all of it (default 6 MiB), which bounds the memory they
    /// take. sled's own memory grows with what is written through it between
    /// checkpoints, far beyond the staged bytes themselves, so these are small. Measured
    /// (`benches/recovery.py --subscribers 10`: broker RSS with 10 offline sessions x
    /// 100,000 queued; 50 persistent QoS 1 pairs, strict, ±15% noise): triggering on all
    /// live bytes, 8 / 64 MiB (checkpoint / max) gave 628 MiB and 142k deliveries/s, 1 / 4
    /// 164 MiB and 132k; triggering on old bytes, 1 / 8 gave 209 MiB and 158k, 1 / 6
    /// 184 MiB and 120–150k.
    pub max_staged_bytes: usize,
}

impl Default for SledOptions {
    fn default() -> Self {
        SledOptions {
            cache_capacity: 8 * 1024 * 1024,
            flush_every_ms: None,
            high_throughput: false,
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_bytes: 1024 * 1024,
            max_journal_bytes: 64 * 1024 * 1024,
            max_staged_bytes: 6 * 1024 * 1024,
        }
    }
}

pub struct SledStore {
    shared: Arc<Shared>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// What `apply` owns (under `Shared::apply_lock`).
struct ApplyState {
    /// The id high-water mark: no message id >= it was ever put, so a `PutMessage` of
    /// such an id needs no lookup.
    high_water: u64,
    /// The number of the next journal record.
    next_journal: u64,
}

/// The store's state, shared with the checkpoint thread.
struct Shared {
    db: sled::Db,
    /// Indexed by `T`.
    trees: Vec<Tree>,
    /// Serialises `apply` (the overlay reads outside any transaction, which is only sound
    /// if no other batch is staged in between).
    apply_lock: Mutex<ApplyState>,
    layers: Mutex<Layers>,
    /// Signalled when a layer is frozen, a checkpoint ends, or the store shuts down.
    layers_changed: Condvar,
    options: SledOptions,
    path: PathBuf,
    /// Last size sled reported, returned if asking again fails.
    last_size: AtomicU64,
    /// `Space::Outbox` and `Space::History`, each in a log of its own (`record_log.rs`
    /// says why).
    outbox: RecordLog,
    history: RecordLog,
    /// A batch wrote to sled since the last flush: a commit of outbox records alone (a
    /// webhook endpoint's events, with nothing else stored) then skips sled's flush.
    sled_dirty: std::sync::atomic::AtomicBool,
}

fn is_full(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    // ENOSPC = 28, EDQUOT = 122 on Linux. sled clones stored errors keeping only the kind,
    // so the kind is checked too.
    matches!(
        error.kind(),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded
    ) || matches!(error.raw_os_error(), Some(28) | Some(122))
}

fn sled_error(context: &str, error: sled::Error) -> StorageError {
    match error {
        sled::Error::Io(io) if is_full(&io) => StorageError::Full,
        sled::Error::Io(io) => StorageError::Io(format!("{context}: {io}")),
        sled::Error::Corruption { at, .. } => {
            StorageError::Corrupt(format!("{context}: sled found corruption at {at:?}"))
        }
        other => StorageError::Io(format!("{context}: {other}")),
    }
}

impl SledStore {
    /// Opens (creating if needed) the database at `dir/db` with the default options.
    pub fn open(dir: &Path) -> StorageResult<SledStore> {
        Self::open_with(dir, &SledOptions::default())
    }

    pub fn open_with(dir: &Path, options: &SledOptions) -> StorageResult<SledStore> {
        std::fs::create_dir_all(dir).map_err(|e| {
            if is_full(&e) {
                StorageError::Full
            } else {
                StorageError::Io(format!("creating {}: {e}", dir.display()))
            }
        })?;
        let path = dir.join("db");
        let context = format!("opening {}", path.display());
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(options.cache_capacity)
            .flush_every_ms(options.flush_every_ms)
            .mode(if options.high_throughput {
                sled::Mode::HighThroughput
            } else {
                sled::Mode::LowSpace
            })
            .open()
            .map_err(|e| sled_error(&context, e))?;
        let trees = TREE_NAMES
            .iter()
            .map(|name| db.open_tree(name))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sled_error(&context, e))?;
        let shared = Arc::new(Shared {
            db,
            trees,
            apply_lock: Mutex::new(ApplyState {
                high_water: 0,
                next_journal: 1,
            }),
            layers: Mutex::new(Layers::new(DATA_TREES)),
            layers_changed: Condvar::new(),
            options: options.clone(),
            path,
            last_size: AtomicU64::new(0),
            outbox: RecordLog::open(&dir.join("outbox"), "webhook outbox")?,
            history: RecordLog::open(&dir.join("history"), "group history")?,
            sled_dirty: std::sync::atomic::AtomicBool::new(true),
        });
        shared.check_schema()?;
        let worker = shared.clone();
        let checkpointer = std::thread::Builder::new()
            .name("rookery-checkpoint".into())
            .spawn(move || worker.run_checkpoints())
            .map_err(|e| StorageError::Io(format!("starting the checkpoint thread: {e}")))?;
        let store = SledStore {
            shared,
            checkpointer: Some(checkpointer),
        };
        store.shared.replay_journal()?;
        let high_water = store.shared.next_message_id()?;
        store.shared.apply_state().high_water = high_water;
        store.shared.move_tree_into_log(T::Outbox)?;
        store.shared.move_tree_into_log(T::History)?;
        Ok(store)
    }

    /// Where the database lives (`dir/db`).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Writes every staged batch into the trees now (it happens by itself in the
    /// background; this is for tests and tools that read the trees).
    pub fn checkpoint(&self) -> StorageResult<()> {
        self.shared.checkpoint_now()
    }

    /// Every stored message id with its reference count — for tests and consistency checks
    /// (a leaked message is invisible through [`Store`]). Fails with `Corrupt` if the
    /// `messages` and `refcounts` trees disagree on which ids exist.
    pub fn message_refcounts(&self) -> StorageResult<BTreeMap<u64, u64>> {
        self.checkpoint()?;
        let shared = &self.shared;
        let mut counts = BTreeMap::new();
        for kv in shared.tree(T::Refcounts).iter() {
            let (key, value) = kv.map_err(|e| sled_error("reading reference counts", e))?;
            let id = codec::decode_u64(&key, "reference count key")?;
            counts.insert(id, codec::decode_u64(&value, "reference count")?);
        }
        let mut ids = Vec::with_capacity(counts.len());
        for key in shared.tree(T::Messages).iter().keys() {
            let key = key.map_err(|e| sled_error("reading message ids", e))?;
            ids.push(codec::decode_u64(&key, "message key")?);
        }
        if !ids.iter().eq(counts.keys()) {
            return Err(StorageError::Corrupt(format!(
                "messages {ids:?} and reference counts {:?} disagree",
                counts.keys().collect::<Vec<_>>()
            )));
        }
        Ok(counts)
    }
}

impl Drop for SledStore {
    /// Checkpoints what is staged (so that the trees alone hold everything after a clean
    /// close), then stops the checkpoint thread.
    fn drop(&mut self) {
        let _ = self.shared.checkpoint_now();
        self.shared.layers().shutdown = true;
        self.shared.layers_changed.notify_all();
        if let Some(thread) = self.checkpointer.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn tree(&self, t: T) -> &Tree {
        &self.trees[t as usize]
    }

    fn apply_state(&self) -> MutexGuard<'_, ApplyState> {
        self.apply_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn layers(&self) -> MutexGuard<'_, Layers> {
        self.layers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current value of `key`: staged layers first, then the tree. Also says whether
    /// the key has a value below the active layer (`None` if it is staged there, in which
    /// case the staged entry knows).
    fn get_layered(&self, t: T, key: &[u8]) -> StorageResult<(Option<Vec<u8>>, Option<bool>)> {
        match self.layers().lookup(t as usize, key) {
            Staged::Active(value) => return Ok((value, None)),
            Staged::Frozen(value) => {
                let below = value.is_some();
                return Ok((value, Some(below)));
            }
            Staged::No => {}
        }
        let value = self
            .tree(t)
            .get(key)
            .map_err(|e| sled_error("reading", e))?
            .map(|v| v.to_vec());
        let below = value.is_some();
        Ok((value, Some(below)))
    }

    /// Writes the schema version into a new database, refuses any other version.
    fn check_schema(&self) -> StorageResult<()> {
        let context = format!("reading the schema version of {}", self.path.display());
        let meta = self.tree(T::Meta);
        match meta.get(SCHEMA_KEY).map_err(|e| sled_error(&context, e))? {
            Some(v) => {
                let version = codec::decode_u64(&v, "schema version")?;
                if version != SCHEMA_VERSION {
                    return Err(StorageError::Corrupt(format!(
                        "{} has schema version {version}, but this build reads only version \
                         {SCHEMA_VERSION}; refusing to open it (use a matching build, or move \
                         the data directory away to start empty)",
                        self.path.display()
                    )));
                }
            }
            None => {
                if let Some(tree) = self.trees.iter().find(|t| !t.is_empty()) {
                    return Err(StorageError::Corrupt(format!(
                        "{} holds data (tree {:?}) but no schema version; refusing to open it",
                        self.path.display(),
                        String::from_utf8_lossy(&tree.name())
                    )));
                }
                meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| sled_error(&context, e))?;
                self.db.flush().map_err(|e| sled_error(&context, e))?;
            }
        }
        Ok(())
    }

    /// The stored message `id`, which an entry at `what` names.
    fn message(&self, id: u64, what: &dyn std::fmt::Display) -> StorageResult<StoredMessage> {
        let (value, _) = self.get_layered(T::Messages, &id.to_be_bytes())?;
        let value = value.ok_or_else(|| {
            StorageError::Corrupt(format!("{what} names message {id}, which is not stored"))
        })?;
        codec::decode_message(&value)
    }

    // The readers below see only the trees: `recover` checkpoints first.

    fn count_queue(&self, prefix: &[u8]) -> StorageResult<(Option<(u64, u64)>, u64)> {
        let mut bounds = None;
        let mut len = 0u64;
        // Keys only: a queued message is never decoded (nor its message read) here.
        for key in self.tree(T::Queues).scan_prefix(prefix).keys() {
            let key = key.map_err(|e| sled_error("scanning a queue", e))?;
            let sequence = codec::queue_key_sequence(&key, prefix.len())?;
            bounds = match bounds {
                None => Some((sequence, sequence)),
                Some((first, _)) => Some((first, sequence)),
            };
            len += 1;
        }
        Ok((bounds, len))
    }

    fn recover_session(&self, key: &[u8], value: &[u8]) -> StorageResult<RecoveredSession> {
        let session = codec::decode_session(value)?;
        if session.client_id.as_bytes() != key {
            return Err(StorageError::Corrupt(format!(
                "session stored under {:?} is for client {:?}",
                String::from_utf8_lossy(key),
                session.client_id
            )));
        }
        let prefix = codec::session_prefix(&session.client_id);
        let (queue, queue_len) = self.count_queue(&prefix)?;
        let mut inflight = Vec::new();
        for kv in self.tree(T::Inflight).scan_prefix(&prefix) {
            let (key, value) = kv.map_err(|e| sled_error("scanning in-flight entries", e))?;
            let packet_id = codec::packet_key_id(&key, prefix.len())?;
            let entry = codec::decode_inflight(&value)?;
            let what = format!("in-flight entry {}/{packet_id}", session.client_id);
            let message = self.message(entry.message_id, &what)?;
            inflight.push((packet_id, entry, message));
        }
        let mut incoming = Vec::new();
        for key in self.tree(T::Incoming).scan_prefix(&prefix).keys() {
            let key = key.map_err(|e| sled_error("scanning incoming ids", e))?;
            incoming.push(codec::packet_key_id(&key, prefix.len())?);
        }
        Ok(RecoveredSession {
            session,
            queue,
            queue_len,
            inflight,
            incoming,
        })
    }

    fn next_message_id(&self) -> StorageResult<u64> {
        let counter = match self
            .tree(T::Meta)
            .get(NEXT_ID_KEY)
            .map_err(|e| sled_error("reading the message id counter", e))?
        {
            Some(v) => codec::decode_u64(&v, "message id counter")?,
            None => 0,
        };
        let above_stored = match self
            .tree(T::Messages)
            .last()
            .map_err(|e| sled_error("reading the last message id", e))?
        {
            Some((key, _)) => codec::decode_u64(&key, "message key")?.saturating_add(1),
            None => 0,
        };
        Ok(counter.max(above_stored).max(1))
    }
}

/// The space of a record op kept in a log rather than in sled.
fn logged_space(op: &Op) -> Option<crate::Space> {
    match op {
        Op::PutRecord { space, .. } | Op::RemoveRecord { space, .. }
            if matches!(space, crate::Space::Outbox | crate::Space::History) =>
        {
            Some(*space)
        }
        _ => None,
    }
}

/// A log's share of a batch: puts (`Some` value) and removals.
fn log_writes(ops: &[Op], space: crate::Space) -> Vec<(&[u8], Option<&[u8]>)> {
    ops.iter()
        .filter(|op| logged_space(op) == Some(space))
        .filter_map(|op| match op {
            Op::PutRecord { key, value, .. } => Some((key.as_slice(), Some(value.as_slice()))),
            Op::RemoveRecord { key, .. } => Some((key.as_slice(), None)),
            _ => None,
        })
        .collect()
}

impl Shared {
    fn log(&self, tree: T) -> Option<&RecordLog> {
        match tree {
            T::Outbox => Some(&self.outbox),
            T::History => Some(&self.history),
            _ => None,
        }
    }

    /// Databases written before the logs kept `Space::Outbox` and `Space::History` in
    /// sled trees: their records move into the log (synced) and then leave the tree. A
    /// crash in between leaves them in both, and the next open moves them again (a put
    /// replaces).
    fn move_tree_into_log(&self, tree_name: T) -> StorageResult<()> {
        let Some(log) = self.log(tree_name) else {
            return Ok(());
        };
        let tree = self.tree(tree_name);
        if tree.is_empty() && self.layers().prefixed(tree_name as usize, &[]).is_empty() {
            return Ok(());
        }
        self.checkpoint_now()?;
        let mut records = Vec::new();
        for kv in tree.iter() {
            let (key, value) = kv.map_err(|e| sled_error("reading a tree to move", e))?;
            records.push((key.to_vec(), value.to_vec()));
        }
        let writes: Vec<(&[u8], Option<&[u8]>)> = records
            .iter()
            .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
            .collect();
        log.apply(&writes)?;
        log.flush()?;
        tree.clear()
            .map_err(|e| sled_error("clearing a moved tree", e))?;
        self.db.flush().map_err(|e| sled_error("flushing", e))?;
        tracing::info!(records = records.len(), tree = ?tree_name, "records moved into their log");
        Ok(())
    }
}

impl Store for SledStore {
    fn apply(&self, batch: Vec<Op>) -> StorageResult<()> {
        let shared = &self.shared;
        let (logged, batch): (Vec<Op>, Vec<Op>) =
            if batch.iter().any(|op| logged_space(op).is_some()) {
                batch.into_iter().partition(|op| logged_space(op).is_some())
            } else {
                (Vec::new(), batch)
            };
        let mut state = shared.apply_state();
        if let Some(error) = &shared.layers().checkpoint_error {
            return Err(error.clone());
        }
        let mut overlay = Overlay::new(shared, state.high_water);
        for op in &batch {
            overlay.op(op)?;
        }
        let resolved = overlay.finish()?;
        if !resolved.is_empty() {
            let number = state.next_journal;
            let journal_bytes = shared.journal(number, &resolved)?;
            state.next_journal += 1;
            shared.stage(resolved.writes, &resolved.in_base, number, journal_bytes);
            shared.sled_dirty.store(true, Ordering::SeqCst);
        }
        state.high_water = resolved.high_water;
        // After the sled part: a refused batch leaves no log records behind.
        if logged.is_empty() {
            return Ok(());
        }
        // Both, whatever the first does: what a source drained is gone from its memory.
        let outbox = shared
            .outbox
            .apply(&log_writes(&logged, crate::Space::Outbox));
        let history = shared
            .history
            .apply(&log_writes(&logged, crate::Space::History));
        outbox.and(history)
    }

    fn flush(&self) -> StorageResult<()> {
        self.shared.outbox.flush()?;
        self.shared.history.flush()?;
        // Cleared before flushing: a batch applied meanwhile sets it again for the next.
        if !self.shared.sled_dirty.swap(false, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.db.flush().map(|_| ()).map_err(|e| {
            self.shared.sled_dirty.store(true, Ordering::SeqCst);
            sled_error("flushing", e)
        })
    }

    fn recover(&self) -> StorageResult<Recovered> {
        self.checkpoint()?;
        let shared = &self.shared;
        let mut retained = Vec::new();
        for value in shared.tree(T::Retained).iter().values() {
            let value = value.map_err(|e| sled_error("reading retained messages", e))?;
            retained.push(codec::decode_message(&value)?);
        }
        let mut sessions = Vec::new();
        for kv in shared.tree(T::Sessions).iter() {
            let (key, value) = kv.map_err(|e| sled_error("reading sessions", e))?;
            sessions.push(shared.recover_session(&key, &value)?);
        }
        let mut records = Vec::new();
        for space in crate::Space::RECOVERED {
            for kv in shared.tree(T::of(space)).iter() {
                let (key, value) = kv.map_err(|e| sled_error("reading records", e))?;
                records.push((space, key.to_vec(), value.to_vec()));
            }
        }
        Ok(Recovered {
            retained,
            sessions,
            records,
            next_message_id: shared.next_message_id()?,
        })
    }

    fn queue_range(
        &self,
        client_id: &str,
        from: u64,
        limit: usize,
    ) -> StorageResult<Vec<(u64, QueueEntry, StoredMessage)>> {
        check_client_id(client_id)?;
        let shared = &self.shared;
        let prefix_len = client_id.len() + 1;
        let start = codec::queue_key(client_id, from);
        let end = codec::queue_key(client_id, u64::MAX);
        // The first `limit` live entries are among the staged ones and the first
        // `limit + staged removals` of the tree.
        let staged = shared.layers().range(T::Queues as usize, &start, &end);
        let removals = staged.values().filter(|v| v.is_none()).count();
        let mut merged = BTreeMap::new();
        for kv in shared
            .tree(T::Queues)
            .range(start..=end)
            .take(limit.saturating_add(removals))
        {
            let (key, value) = kv.map_err(|e| sled_error("reading a queue", e))?;
            merged.insert(key.to_vec(), Some(value.to_vec()));
        }
        merged.extend(staged);
        let mut out = Vec::new();
        for (key, value) in merged.into_iter().filter_map(|(k, v)| Some((k, v?))) {
            if out.len() >= limit {
                break;
            }
            let sequence = codec::queue_key_sequence(&key, prefix_len)?;
            let entry = codec::decode_queue_entry(&value)?;
            let what = format!("queue entry {client_id}/{sequence}");
            let message = shared.message(entry.message_id, &what)?;
            out.push((sequence, entry, message));
        }
        Ok(out)
    }

    fn records(
        &self,
        space: crate::Space,
        prefix: &[u8],
    ) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let shared = &self.shared;
        let tree = T::of(space);
        if let Some(log) = shared.log(tree) {
            return log.records(prefix);
        }
        let mut merged = BTreeMap::new();
        for kv in shared.tree(tree).scan_prefix(prefix) {
            let (key, value) = kv.map_err(|e| sled_error("reading records", e))?;
            merged.insert(key.to_vec(), Some(value.to_vec()));
        }
        merged.extend(shared.layers().prefixed(tree as usize, prefix));
        Ok(merged
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect())
    }

    fn free_space(&self) -> Option<u64> {
        fs2::available_space(&self.shared.path).ok()
    }

    fn size_on_disk(&self) -> u64 {
        let shared = &self.shared;
        let logs = shared.outbox.size() + shared.history.size();
        match shared.db.size_on_disk().map(|s| s + logs) {
            Ok(size) => {
                shared.last_size.store(size, Ordering::Relaxed);
                size
            }
            Err(_) => shared.last_size.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InflightEntry;
    use bytes::Bytes;

    fn message(id: u64) -> StoredMessage {
        StoredMessage {
            topic: format!("t/{id}"),
            payload: Bytes::from(vec![id as u8; 8]),
            qos: 1,
            properties: Bytes::new(),
            publisher: "p".into(),
            received_at_ms: id,
            expiry_interval: None,
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

    /// Opens the store, retrying while one just dropped still holds sled's file lock
    /// (sled releases it from a background thread).
    fn reopen(dir: &Path) -> SledStore {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match SledStore::open(dir) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn records_of_an_older_database_move_into_their_logs() {
        for (tree, space) in [
            (T::Outbox, crate::Space::Outbox),
            (T::History, crate::Space::History),
        ] {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = reopen(dir.path());
                // What an older version left: the records in a sled tree.
                let sled_tree = store.shared.tree(tree);
                sled_tree.insert(b"e1", &b"records one"[..]).unwrap();
                sled_tree.insert(b"e2", &b"records two"[..]).unwrap();
                store.shared.db.flush().unwrap();
            }
            let store = reopen(dir.path());
            assert!(store.shared.tree(tree).is_empty(), "{space:?}");
            let records = store.records(space, b"").unwrap();
            assert_eq!(
                records,
                vec![
                    (b"e1".to_vec(), b"records one".to_vec()),
                    (b"e2".to_vec(), b"records two".to_vec())
                ],
                "{space:?}"
            );
            store
                .apply(vec![Op::RemoveRecord {
                    space,
                    key: b"e1".to_vec(),
                }])
                .unwrap();
            store.flush().unwrap();
            drop(store);
            let store = reopen(dir.path());
            assert_eq!(store.records(space, b"").unwrap().len(), 1, "{space:?}");
            assert!(
                store.records(crate::Space::Groups, b"").unwrap().is_empty(),
                "nothing leaked into another space"
            );
        }
    }

    #[test]
    fn refcounts_share_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let enqueue = |c: &str, s: u64, id: u64| Op::Enqueue {
            client_id: c.into(),
            sequence: s,
            entry: entry(id),
        };
        store
            .apply(vec![
                Op::PutMessage {
                    id: 1,
                    message: message(1),
                },
                Op::PutMessage {
                    id: 2,
                    message: message(2),
                },
                enqueue("a", 0, 1),
                enqueue("b", 0, 1),
            ])
            .unwrap();
        // Message 2 was never referenced: gone at the end of its batch.
        store.checkpoint().unwrap();
        assert!(store
            .shared
            .tree(T::Messages)
            .get(2u64.to_be_bytes())
            .unwrap()
            .is_none());
        assert_eq!(store.queue_range("b", 0, 10).unwrap()[0].2, message(1));
        // Dequeue then PutInflight in one batch: the message survives the move.
        store
            .apply(vec![
                Op::Dequeue {
                    client_id: "a".into(),
                    sequence: 0,
                },
                Op::PutInflight {
                    client_id: "a".into(),
                    packet_id: 1,
                    entry: InflightEntry {
                        message_id: 1,
                        qos: 1,
                        retain: false,
                        subscription_ids: vec![],
                        released: false,
                        sequence: 0,
                    },
                },
                Op::RemoveSession {
                    client_id: "b".into(),
                },
            ])
            .unwrap();
        store.checkpoint().unwrap();
        let refs = store
            .shared
            .tree(T::Refcounts)
            .get(1u64.to_be_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(codec::decode_u64(&refs, "count").unwrap(), 1);
        store
            .apply(vec![Op::RemoveInflight {
                client_id: "a".into(),
                packet_id: 1,
            }])
            .unwrap();
        store.checkpoint().unwrap();
        assert!(store.shared.tree(T::Messages).is_empty());
        assert!(store.shared.tree(T::Refcounts).is_empty());
        assert_eq!(store.recover().unwrap().next_message_id, 3);
    }

    #[test]
    fn invalid_batch_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let err = store
            .apply(vec![
                Op::PutMessage {
                    id: 1,
                    message: message(1),
                },
                Op::Enqueue {
                    client_id: "a".into(),
                    sequence: 0,
                    entry: entry(1),
                },
                Op::Enqueue {
                    client_id: "a".into(),
                    sequence: 1,
                    entry: entry(9),
                },
            ])
            .unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err}");
        let err = store
            .apply(vec![Op::PutIncoming {
                client_id: "a\0b".into(),
                packet_id: 1,
            }])
            .unwrap_err();
        assert!(matches!(err, StorageError::Invalid(_)), "{err}");
        assert!(store.queue_range("a", 0, 10).unwrap().is_empty());
        assert_eq!(
            store.recover().unwrap(),
            Recovered {
                next_message_id: 1,
                ..Default::default()
            }
        );
    }
}
