//! The journal and the staged layers: why a group commit costs one sled write.
//!
//! sled 0.34 costs 6–7 µs per written key on the 2-core development VM
//! (`examples/sled_modes.rs`), whether the keys go in one transaction or one batch per
//! tree, and a stored message takes about six keys (message, reference count and queue
//! entry when it is queued; their removal when it is acknowledged): ~40 µs per message,
//! which capped `strict` durability at ~25k messages/s per core. Yet most of those writes
//! are undone a few milliseconds later, when an online subscriber acknowledges.
//!
//! So `apply` stores the key writes a batch resolves to (the overlay of `batch.rs`) as
//! **one journal record** (one sled key in the `journal` tree, flushed with the group
//! commit) and keeps them in memory in the **active layer**. Later batches read through
//! the active layer, and removing a key that exists only there drops it from the layer:
//! a message queued and acknowledged between two checkpoints never reaches the trees.
//!
//! A **checkpoint** runs every `checkpoint_interval`, or once the active layer holds
//! `checkpoint_bytes` of entries older than ~1.5 s or half of `max_staged_bytes` in all:
//! the active layer is frozen, and a background thread writes what is left of it into the
//! trees (in chunks; see `checkpoint.rs` for why no transaction is needed), flushes,
//! records the number of the last journal record it covers (`meta/checkpointed_through`),
//! flushes again, and only then deletes the covered journal records. Reads look at the
//! active layer, then the frozen one, then the trees. If the frozen layer is still being
//! written when the active one reaches `max_staged_bytes`, `apply` waits: memory stays
//! bounded.
//!
//! At open, journal records after `checkpointed_through` are replayed into the active
//! layer in order and checkpointed; records at or below it (deleted after a crash cut
//! their removal short) are skipped. Replay re-applies resolved writes, not operations,
//! so it cannot fail validation or resolve differently.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// A staged value: `None` removes the key. `in_base`: the key has a value in the layers
/// below the active one (frozen layer or trees). A removal of a key that is not in the
/// base is dropped from the layer instead of being kept as a tombstone.
#[derive(Debug, Clone)]
pub(super) struct StagedValue {
    pub value: Option<Vec<u8>>,
    pub in_base: bool,
    /// The age bucket (see `Layers::epoch`) the entry was staged in.
    epoch: u64,
}

/// Live staged bytes are counted by age in buckets of this length...
const EPOCH: std::time::Duration = std::time::Duration::from_millis(500);
/// ... of which this many are "young"; older bytes count in `Layers::old_bytes`. An entry
/// older than about 1.5 s is unlikely to be undone by an acknowledgement soon: it
/// belongs to an offline or slow session, and is what a checkpoint should move out of
/// memory. Young entries are mostly messages in flight to online subscribers, which net
/// out of the layer on their own; checkpointing them writes them and then their removal.
const YOUNG_EPOCHS: usize = 4;

/// One layer: per tree (indexed like `T`), key → staged value.
pub(super) type Layer = Vec<BTreeMap<Vec<u8>, StagedValue>>;

/// Memory an active entry takes, roughly: key, value and the map's per-entry overhead.
fn entry_size(key: &[u8], value_len: usize) -> usize {
    key.len() + value_len + 64
}

/// What a staged lookup found.
pub(super) enum Staged {
    /// In the active layer (whose entry knows whether the key is in the base below).
    Active(Option<Vec<u8>>),
    /// In the frozen layer (so the key's presence below the active layer is
    /// `value.is_some()`).
    Frozen(Option<Vec<u8>>),
    /// Not staged: read the trees.
    No,
}

pub(super) struct Layers {
    pub active: Layer,
    /// Approximate bytes the active layer holds (keys, values and per-entry overhead).
    pub active_bytes: usize,
    /// Of those, the bytes of entries staged more than `YOUNG_EPOCHS - 1` epochs ago.
    pub old_bytes: usize,
    /// Bytes of young entries by epoch (index `epoch % YOUNG_EPOCHS`).
    young_bytes: [usize; YOUNG_EPOCHS],
    /// The current age epoch and when it started.
    epoch: u64,
    epoch_started: Instant,
    /// Bytes of journal records written since the active layer was last frozen.
    pub journal_bytes: usize,
    /// When the active layer received its first write since it was last frozen.
    pub active_since: Option<Instant>,
    /// The layer the checkpoint thread is writing.
    pub frozen: Option<Arc<Layer>>,
    /// The last journal record whose writes are in `frozen` (or in the trees).
    pub frozen_through: u64,
    /// The last checkpoint's error, until one succeeds: `apply` refuses new work with it.
    pub checkpoint_error: Option<crate::StorageError>,
    pub shutdown: bool,
}

impl Layers {
    pub fn new(trees: usize) -> Layers {
        Layers {
            active: vec![BTreeMap::new(); trees],
            active_bytes: 0,
            old_bytes: 0,
            young_bytes: [0; YOUNG_EPOCHS],
            epoch: YOUNG_EPOCHS as u64,
            epoch_started: Instant::now(),
            journal_bytes: 0,
            active_since: None,
            frozen: None,
            frozen_through: 0,
            checkpoint_error: None,
            shutdown: false,
        }
    }

    pub fn lookup(&self, tree: usize, key: &[u8]) -> Staged {
        if let Some(staged) = self.active[tree].get(key) {
            return Staged::Active(staged.value.clone());
        }
        match self.frozen.as_ref().and_then(|f| f[tree].get(key)) {
            Some(staged) => Staged::Frozen(staged.value.clone()),
            None => Staged::No,
        }
    }

    /// Stages one resolved write. `in_base`: whether the key has a value below the active
    /// layer, if the batch knows (it read the key); unknown counts as yes, which at worst
    /// writes a removal of a key that is not there.
    ///
    /// Call [`Layers::begin_batch`] first: it sets the clock the entries are aged by.
    pub fn stage(&mut self, tree: usize, key: Vec<u8>, value: Option<Vec<u8>>, in_base: bool) {
        let value_len = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        let layer = &mut self.active[tree];
        let (freed, added, epoch) = match layer.get_mut(&key) {
            Some(staged) if value.is_none() && !staged.in_base => {
                let freed = entry_size(&key, value_len(&staged.value));
                let epoch = staged.epoch;
                layer.remove(&key);
                (freed, 0, epoch)
            }
            Some(staged) => {
                let freed = value_len(&staged.value);
                let added = value_len(&value);
                staged.value = value;
                (freed, added, staged.epoch)
            }
            None if value.is_none() && !in_base => return,
            None => {
                let added = entry_size(&key, value_len(&value));
                let epoch = self.epoch;
                layer.insert(
                    key,
                    StagedValue {
                        value,
                        in_base,
                        epoch,
                    },
                );
                (0, added, epoch)
            }
        };
        self.active_bytes = self.active_bytes.saturating_sub(freed) + added;
        let bucket = self.bucket(epoch);
        *bucket = bucket.saturating_sub(freed) + added;
    }

    /// The byte counter of entries staged in `epoch`.
    fn bucket(&mut self, epoch: u64) -> &mut usize {
        if self.epoch - epoch >= YOUNG_EPOCHS as u64 {
            &mut self.old_bytes
        } else {
            &mut self.young_bytes[(epoch % YOUNG_EPOCHS as u64) as usize]
        }
    }

    /// Before staging a batch: starts the active layer's age if it is new, and moves to
    /// the current epoch (the bytes of the epoch falling out of the young window become
    /// old). Once per batch rather than per key: a batch is staged at one moment.
    pub fn begin_batch(&mut self) {
        self.active_since.get_or_insert_with(Instant::now);
        while self.epoch_started.elapsed() >= EPOCH {
            self.epoch_started += EPOCH;
            self.epoch += 1;
            let slot = (self.epoch % YOUNG_EPOCHS as u64) as usize;
            self.old_bytes += std::mem::take(&mut self.young_bytes[slot]);
        }
    }

    pub fn active_is_empty(&self) -> bool {
        self.active.iter().all(BTreeMap::is_empty)
    }

    /// Moves the active layer to `frozen` for the checkpoint thread.
    pub fn freeze(&mut self, through: u64) {
        let trees = self.active.len();
        let layer = std::mem::replace(&mut self.active, vec![BTreeMap::new(); trees]);
        self.frozen = Some(Arc::new(layer));
        self.frozen_through = through;
        self.active_bytes = 0;
        self.old_bytes = 0;
        self.young_bytes = [0; YOUNG_EPOCHS];
        self.journal_bytes = 0;
        self.active_since = None;
    }

    /// Staged keys of `tree` in `start..=end`, the active layer over the frozen one.
    pub fn range(
        &self,
        tree: usize,
        start: &[u8],
        end: &[u8],
    ) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        let bounds = (
            std::ops::Bound::Included(start.to_vec()),
            std::ops::Bound::Included(end.to_vec()),
        );
        self.merged(tree, |layer| layer.range::<Vec<u8>, _>(bounds.clone()))
    }

    /// Staged keys of `tree` starting with `prefix`, the active layer over the frozen one.
    pub fn prefixed(&self, tree: usize, prefix: &[u8]) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.merged(tree, |layer| {
            layer
                .range(prefix.to_vec()..)
                .take_while(|(key, _)| key.starts_with(prefix))
        })
    }

    /// What `select` picks from the frozen layer of `tree`, overwritten by what it picks
    /// from the active one.
    fn merged<'a, I>(
        &'a self,
        tree: usize,
        select: impl Fn(&'a BTreeMap<Vec<u8>, StagedValue>) -> I,
    ) -> BTreeMap<Vec<u8>, Option<Vec<u8>>>
    where
        I: Iterator<Item = (&'a Vec<u8>, &'a StagedValue)>,
    {
        let layers = self
            .frozen
            .iter()
            .map(|f| &f[tree])
            .chain([&self.active[tree]]);
        layers
            .flat_map(select)
            .map(|(key, staged)| (key.clone(), staged.value.clone()))
            .collect()
    }
}
