//! Journal records, staging, checkpoints and journal replay (see `staged.rs`).

use super::batch::Resolved;
use super::staged::Layer;
use super::{sled_error, Shared, Writes, CHECKPOINT_KEY, DATA_TREES, T};
use crate::codec;
use crate::{StorageError, StorageResult};
use rustc_hash::FxHashMap as HashMap;
use std::time::Duration;

/// The size a journal part is cut at (see `Shared::journal`): well below sled's blob
/// threshold (128 KiB with its default segment size).
const JOURNAL_PART_BYTES: usize = 64 * 1024;

/// A journal part's key: the record number, then the part number, both big-endian, so
/// that sled's key order is the order of replay.
fn journal_key(number: u64, part: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&number.to_be_bytes());
    key[8..].copy_from_slice(&part.to_be_bytes());
    key
}

/// Keys per sled batch in a checkpoint.
const CHUNK: usize = 2048;

/// How long the checkpoint thread waits before retrying a failed checkpoint.
const RETRY_AFTER: Duration = Duration::from_secs(1);

impl Shared {
    /// Writes the journal record `number` of a resolved batch: its parts, each at most
    /// about [`JOURNAL_PART_BYTES`], in one atomic sled batch. Why parts: sled 0.34 keeps
    /// a value larger than a quarter of its 512 KiB segments as a separate blob file, and
    /// writing a new file per commit cost ~7 ms for a 400 KiB record (17 µs per KiB), about
    /// a quarter of the whole commit; values below the threshold go into the log.
    pub(super) fn journal(&self, number: u64, resolved: &Resolved) -> StorageResult<usize> {
        let mut batch = sled::Batch::default();
        let mut part: Vec<codec::JournalWriteRef<'_>> = Vec::new();
        let mut part_bytes = 0;
        let mut parts = 0u32;
        let mut len = 0;
        let mut write_part = |part: &mut Vec<codec::JournalWriteRef<'_>>| {
            let record = codec::encode_journal(part);
            len += record.len();
            batch.insert(&journal_key(number, parts)[..], record);
            parts += 1;
            part.clear();
        };
        for (tree, writes) in resolved.writes.iter().enumerate() {
            for (key, value) in writes {
                part_bytes += key.len() + value.as_ref().map_or(0, Vec::len) + 8;
                part.push((tree as u8, key.as_slice(), value.as_deref()));
                if part_bytes >= JOURNAL_PART_BYTES {
                    write_part(&mut part);
                    part_bytes = 0;
                }
            }
        }
        if !part.is_empty() {
            write_part(&mut part);
        }
        self.tree(T::Journal)
            .apply_batch(batch)
            .map_err(|e| sled_error("writing the journal", e))?;
        Ok(len)
    }

    /// Stages a journaled batch in the active layer, freezing it for a checkpoint when it
    /// is old or large enough, and waiting for the running checkpoint when the staged
    /// writes reach `max_staged_bytes`.
    pub(super) fn stage(
        &self,
        writes: Vec<Writes>,
        in_base: &[HashMap<Vec<u8>, bool>],
        number: u64,
        journal_bytes: usize,
    ) {
        let mut layers = self.layers();
        layers.begin_batch();
        layers.journal_bytes += journal_bytes;
        for (tree, writes) in writes.into_iter().enumerate() {
            for (key, value) in writes {
                let below = in_base[tree].get(&key).copied().unwrap_or(true);
                layers.stage(tree, key, value, below);
            }
        }
        let options = &self.options;
        while layers.frozen.is_some()
            && layers.active_bytes >= options.max_staged_bytes
            && layers.checkpoint_error.is_none()
        {
            layers = self
                .layers_changed
                .wait(layers)
                .unwrap_or_else(|e| e.into_inner());
        }
        let due = layers.old_bytes >= options.checkpoint_bytes
            || layers.active_bytes >= options.max_staged_bytes / 2
            || layers.journal_bytes >= options.max_journal_bytes
            || layers
                .active_since
                .is_some_and(|since| since.elapsed() >= options.checkpoint_interval);
        if due && layers.frozen.is_none() {
            layers.freeze(number);
            self.layers_changed.notify_all();
        }
    }

    /// Freezes whatever is staged and waits until it is in the trees. The caller must not
    /// hold the apply lock (this takes it, so that no batch is staged meanwhile).
    pub(super) fn checkpoint_now(&self) -> StorageResult<()> {
        let state = self.apply_state();
        let mut layers = self.layers();
        loop {
            if let Some(error) = &layers.checkpoint_error {
                return Err(error.clone());
            }
            if layers.frozen.is_none() {
                if layers.active_is_empty() {
                    return Ok(());
                }
                layers.freeze(state.next_journal - 1);
                self.layers_changed.notify_all();
            }
            layers = self
                .layers_changed
                .wait(layers)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The checkpoint thread: writes each frozen layer into the trees.
    pub(super) fn run_checkpoints(&self) {
        loop {
            let (layer, through) = {
                let mut layers = self.layers();
                while layers.frozen.is_none() && !layers.shutdown {
                    layers = self
                        .layers_changed
                        .wait(layers)
                        .unwrap_or_else(|e| e.into_inner());
                }
                match &layers.frozen {
                    Some(layer) => (layer.clone(), layers.frozen_through),
                    None => return,
                }
            };
            let result = self.write_layer(&layer, through);
            let mut layers = self.layers();
            match result {
                Ok(()) => {
                    layers.frozen = None;
                    layers.checkpoint_error = None;
                }
                Err(error) => {
                    tracing::error!(%error, "checkpoint failed; retrying");
                    layers.checkpoint_error = Some(error);
                }
            }
            let failed = layers.checkpoint_error.is_some();
            let shutdown = layers.shutdown;
            drop(layers);
            self.layers_changed.notify_all();
            if failed {
                if shutdown {
                    return;
                }
                std::thread::sleep(RETRY_AFTER);
            }
        }
    }

    /// One checkpoint: the layer's writes in chunks of at most [`CHUNK`] keys, a flush,
    /// the journal position they cover and another flush, then the removal of the journal
    /// records it covers.
    ///
    /// No transaction is needed: a checkpoint cut short by a crash leaves some of the
    /// layer's writes in the trees with `checkpointed_through` still at the previous
    /// checkpoint, and replaying the journal from there rewrites every key the layer
    /// holds with the same absolute values (journal records hold resolved writes, not
    /// operations), so the result is the same. Meanwhile readers never see the partial
    /// state: every key being written is still in the frozen layer, which reads consult
    /// first. Chunks keep sled's memory per operation small (one transaction over a
    /// whole layer made its memory grow with the layer).
    fn write_layer(&self, layer: &Layer, through: u64) -> StorageResult<()> {
        for (tree, writes) in layer.iter().enumerate() {
            let entries: Vec<_> = writes.iter().collect();
            for chunk in entries.chunks(CHUNK) {
                let mut batch = sled::Batch::default();
                for (key, staged) in chunk {
                    match &staged.value {
                        Some(value) => batch.insert(key.as_slice(), value.as_slice()),
                        None => batch.remove(key.as_slice()),
                    }
                }
                self.trees[tree]
                    .apply_batch(batch)
                    .map_err(|e| sled_error("writing a checkpoint", e))?;
            }
        }
        let flush = |what| self.db.flush().map(|_| ()).map_err(|e| sled_error(what, e));
        flush("flushing a checkpoint")?;
        self.tree(T::Meta)
            .insert(CHECKPOINT_KEY, &through.to_be_bytes())
            .map_err(|e| sled_error("recording a checkpoint", e))?;
        flush("flushing a checkpoint position")?;
        self.remove_journal_through(through)
    }

    fn remove_journal_through(&self, through: u64) -> StorageResult<()> {
        let journal = self.tree(T::Journal);
        let mut batch = sled::Batch::default();
        // Every part of records `..=through`: keys below `(through + 1, 0)`.
        let end = journal_key(through.saturating_add(1), 0);
        for key in journal.range(..end).keys() {
            let key = key.map_err(|e| sled_error("reading the journal", e))?;
            batch.remove(key);
        }
        journal
            .apply_batch(batch)
            .map_err(|e| sled_error("trimming the journal", e))
    }

    fn checkpointed_through(&self) -> StorageResult<u64> {
        match self
            .tree(T::Meta)
            .get(CHECKPOINT_KEY)
            .map_err(|e| sled_error("reading the checkpoint position", e))?
        {
            Some(v) => codec::decode_u64(&v, "checkpoint position"),
            None => Ok(0),
        }
    }

    /// At open: stages the journal records written after the last checkpoint, in order,
    /// and checkpoints them; removes records the last checkpoint already covers.
    pub(super) fn replay_journal(&self) -> StorageResult<()> {
        let through = self.checkpointed_through()?;
        self.remove_journal_through(through)?;
        let mut last = through;
        {
            let mut layers = self.layers();
            for kv in self.tree(T::Journal).iter() {
                let (key, value) = kv.map_err(|e| sled_error("reading the journal", e))?;
                let number = match key.get(..8) {
                    Some(number) if key.len() == 12 => codec::decode_u64(number, "journal key")?,
                    _ => {
                        return Err(StorageError::Corrupt(format!(
                            "journal key of {} bytes, expected 12",
                            key.len()
                        )))
                    }
                };
                layers.begin_batch();
                for (tree, key, value) in codec::decode_journal(&value)? {
                    if usize::from(tree) >= DATA_TREES {
                        return Err(StorageError::Corrupt(format!(
                            "journal record {number} writes to unknown tree {tree}"
                        )));
                    }
                    // Unknown presence below: removals are kept.
                    layers.stage(usize::from(tree), key, value, true);
                }
                last = number;
            }
        }
        self.apply_state().next_journal = last + 1;
        self.checkpoint_now()
    }
}
