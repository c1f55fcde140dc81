//! Record spaces kept as an append-only log of segment files beside the sled database
//! (`dir/{name}/{sequence:020}.log`), not as a sled tree: the webhook outboxes
//! (`Space::Outbox`, `dir/outbox`) and group history (`Space::History`, `dir/history`).
//!
//! Why: both are written once per commit and read rarely. An outbox is a FIFO whose
//! records are removed soon (delivered, or dropped by an overflow policy); through sled
//! each record cost a journal write, a staged copy, a checkpoint into the tree, sled's
//! own log and page rewrites, and blob files for large batches: with a dead endpoint the
//! broker accepted 0.28–0.30x the publishes it accepts without a webhook, a third of that
//! in storage. History chunks are appended by every commit and trimmed by count and age;
//! through sled a commit of QoS 0 chunks took ~1 ms for ~28 KB, here ~0.4 ms (group
//! fan-out at QoS 0 went from 0.86–0.92 to 0.95 of a plain topic). A record costs one
//! buffered `write` and its share of the commit's fsync; a removal a small tombstone; a
//! segment whose records are all removed is deleted whole.
//!
//! Record: `[kind u8: 1 put, 2 remove][key length u16][value length u32][crc32 u32]
//! [key][value]`, all big-endian, the CRC over everything else. Opening replays the
//! segments in order; a record that does not check (a write torn by a crash) ends its
//! segment, and the last segment is truncated there so that appending goes on from a
//! clean end. Segments are deleted oldest first only, so a tombstone never outlives a
//! record it removes in an older segment.
//!
//! Preallocation: a write that extends a file makes its `fdatasync` commit the file size
//! in the filesystem's journal too (on ext4 a journal commit by its own kernel thread,
//! which on a busy machine waits for a CPU). So segments are extended ahead by zeros, a
//! mebibyte at a time, and records are written over them: most commits only sync data
//! (an isolated write + fdatasync: 150 µs instead of 228 µs here, and no journal thread
//! to wake). Opening treats a tail of zeros after the last record as that unused space.
//!
//! Compaction: a record that stays (the history of a quiet group) would keep its segment,
//! and every later one, alive. Once the log is more than twice its live bytes (plus a
//! segment), the oldest segment's live records are appended again to the active one,
//! synced, and the oldest segment deleted: it is the oldest, so none of its tombstones
//! is still needed. Each compaction copies at most one segment, and only when at least
//! half of the log is garbage, so the copying stays a fraction of what was written. A
//! compaction that fails (a read error, no space for the copies) is logged and tried
//! again a minute later; the batch it followed is written all the same. After a failed
//! fsync no segment is deleted any more until the store is reopened: pages that did not
//! reach the disk may be dropped by the kernel, and a later fsync would not say so.
//!
//! Atomicity with the rest of a batch: `SledStore::apply` appends the batch's log
//! records after its sled part succeeded, and `flush` fsyncs all of them. A crash in
//! between keeps the sled part without the log records: nothing of that batch was
//! acknowledged, and its publishers send again. Every acknowledged record is in a synced
//! segment.

use crate::{StorageError, StorageResult};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// A segment is closed once it holds this much; the next write starts a new one.
const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Segments grow by zeros written ahead in steps of this much (see "Preallocation").
const PREALLOCATE_BYTES: u64 = 1024 * 1024;
/// A failed compaction is tried again after this long.
const COMPACTION_RETRY: std::time::Duration = std::time::Duration::from_secs(60);
const PUT: u8 = 1;
const REMOVE: u8 = 2;
const HEADER: usize = 1 + 2 + 4 + 4;

/// Where a live record's value is.
#[derive(Debug, Clone, Copy)]
struct Location {
    segment: u64,
    offset: u64,
    len: u32,
    /// The whole record's bytes (header, key, value), for the live-bytes accounting.
    record_len: u32,
}

struct Segment {
    file: File,
    /// Put records in it still live.
    live: usize,
    /// Their bytes.
    live_bytes: u64,
    /// Where records end (the next is written here).
    len: u64,
    /// The file's length: records, then zeros written ahead.
    allocated: u64,
}

impl Segment {
    /// An empty segment in `file` (its lengths are set as it is replayed or written).
    fn new(file: File) -> Segment {
        Segment {
            file,
            live: 0,
            live_bytes: 0,
            len: 0,
            allocated: 0,
        }
    }
}

struct LogState {
    /// By sequence number; the last is the one appended to.
    segments: BTreeMap<u64, Segment>,
    index: BTreeMap<Vec<u8>, Location>,
    /// Written since the last fsync (the active segment; a closed one is synced when
    /// closed).
    unsynced: bool,
    /// An fsync failed: what was written since may be gone from the disk even if a later
    /// fsync succeeds, so no segment is deleted any more (until the store is reopened).
    sync_failed: bool,
    /// No compaction before then (one failed; it is retried later, not at every commit).
    compact_after: Option<std::time::Instant>,
    buffer: Vec<u8>,
}

pub(super) struct RecordLog {
    dir: PathBuf,
    /// What the log holds, for messages ("webhook outbox", "group history").
    name: &'static str,
    segment_bytes: u64,
    state: Mutex<LogState>,
}

fn io_error(context: &str, error: std::io::Error) -> StorageError {
    if super::is_full(&error) {
        StorageError::Full
    } else {
        StorageError::Io(format!("{context}: {error}"))
    }
}

fn segment_path(dir: &Path, sequence: u64) -> PathBuf {
    dir.join(format!("{sequence:020}.log"))
}

/// Appends one record: a put with `Some(value)`, a removal with `None`.
fn encode(buffer: &mut Vec<u8>, key: &[u8], value: Option<&[u8]>) -> StorageResult<()> {
    let key_len = u16::try_from(key.len())
        .map_err(|_| StorageError::Invalid("a log record key longer than 65535 bytes".into()))?;
    let kind = if value.is_some() { PUT } else { REMOVE };
    let value = value.unwrap_or_default();
    let value_len = u32::try_from(value.len())
        .map_err(|_| StorageError::Invalid("a log record of 4 GiB or more".into()))?;
    let start = buffer.len();
    buffer.push(kind);
    buffer.extend_from_slice(&key_len.to_be_bytes());
    buffer.extend_from_slice(&value_len.to_be_bytes());
    buffer.extend_from_slice(&[0; 4]);
    buffer.extend_from_slice(key);
    buffer.extend_from_slice(value);
    seal(buffer, start);
    Ok(())
}

/// Encodes `writes` into `buffer` (cleared first); where each record starts.
fn encode_all(
    buffer: &mut Vec<u8>,
    writes: &[(&[u8], Option<&[u8]>)],
) -> StorageResult<Vec<usize>> {
    buffer.clear();
    let mut offsets = Vec::with_capacity(writes.len());
    for (key, value) in writes {
        offsets.push(buffer.len());
        encode(buffer, key, *value)?;
    }
    Ok(offsets)
}

/// Fills in the CRC of the record starting at `start`.
fn seal(buffer: &mut [u8], start: usize) {
    let crc = record_crc(&buffer[start..]);
    buffer[start + 7..start + 11].copy_from_slice(&crc.to_be_bytes());
}

fn record_crc(record: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&record[..7]);
    hasher.update(&record[HEADER..]);
    hasher.finalize()
}

/// One decoded record: kind, key, value range within the segment.
struct Parsed<'a> {
    kind: u8,
    key: &'a [u8],
    value_offset: usize,
    value_len: u32,
    next: usize,
}

fn parse(bytes: &[u8], at: usize) -> Option<Parsed<'_>> {
    let header = bytes.get(at..at + HEADER)?;
    let kind = header[0];
    if kind != PUT && kind != REMOVE {
        return None;
    }
    let key_len = usize::from(u16::from_be_bytes([header[1], header[2]]));
    let value_len = u32::from_be_bytes(header[3..7].try_into().ok()?);
    let crc = u32::from_be_bytes(header[7..11].try_into().ok()?);
    let end = (at + HEADER)
        .checked_add(key_len)?
        .checked_add(usize::try_from(value_len).ok()?)?;
    let record = bytes.get(at..end)?;
    if record_crc(record) != crc {
        return None;
    }
    Some(Parsed {
        kind,
        key: &record[HEADER..HEADER + key_len],
        value_offset: at + HEADER + key_len,
        value_len,
        next: end,
    })
}

impl RecordLog {
    /// Opens `dir` (creating it), replaying every segment.
    pub fn open(dir: &Path, name: &'static str) -> StorageResult<RecordLog> {
        RecordLog::open_with(dir, name, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, name: &'static str, segment_bytes: u64) -> StorageResult<RecordLog> {
        let context = format!("opening the {name} log");
        std::fs::create_dir_all(dir).map_err(|e| io_error(&context, e))?;
        let mut sequences = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| io_error(&context, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&context, e))?;
            let name = entry.file_name();
            let Some(sequence) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            sequences.push(sequence);
        }
        sequences.sort_unstable();
        let mut state = LogState {
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            unsynced: false,
            sync_failed: false,
            compact_after: None,
            buffer: Vec::new(),
        };
        let last = sequences.last().copied();
        for sequence in sequences {
            let path = segment_path(dir, sequence);
            let context = format!("reading {}", path.display());
            let bytes = std::fs::read(&path).map_err(|e| io_error(&context, e))?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&context, e))?;
            let mut at = 0;
            while let Some(record) = parse(&bytes, at) {
                let key = record.key.to_vec();
                if record.kind == PUT {
                    let location = Location {
                        segment: sequence,
                        offset: record.value_offset as u64,
                        len: record.value_len,
                        record_len: (record.next - at) as u32,
                    };
                    if let Some(old) = state.index.insert(key, location) {
                        state.release(&old);
                    }
                    let segment = match state.segments.entry(sequence) {
                        std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                        std::collections::btree_map::Entry::Vacant(entry) => entry.insert(
                            Segment::new(file.try_clone().map_err(|e| io_error(&context, e))?),
                        ),
                    };
                    segment.live += 1;
                    segment.live_bytes += u64::from(location.record_len);
                } else if let Some(old) = state.index.remove(&key) {
                    state.release(&old);
                }
                at = record.next;
            }
            let mut allocated = bytes.len() as u64;
            // Zeros after the last record: space written ahead, not damage.
            if at < bytes.len() && bytes[at..].iter().any(|&b| b != 0) {
                tracing::warn!(
                    segment = %path.display(),
                    offset = at,
                    bytes = bytes.len() - at,
                    log = name,
                    "a log ends in a torn or damaged record; what follows it is ignored"
                );
                if Some(sequence) == last {
                    file.set_len(at as u64).map_err(|e| io_error(&context, e))?;
                    allocated = at as u64;
                }
            }
            let segment = state
                .segments
                .entry(sequence)
                .or_insert_with(|| Segment::new(file));
            segment.len = at as u64;
            segment.allocated = allocated;
        }
        let log = RecordLog {
            dir: dir.to_path_buf(),
            name,
            segment_bytes,
            state: Mutex::new(state),
        };
        {
            let mut state = log.state();
            if state.segments.is_empty() {
                log.start_segment(&mut state, 1)?;
            }
            log.retire(&mut state);
        }
        Ok(log)
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn start_segment(&self, state: &mut LogState, sequence: u64) -> StorageResult<()> {
        let path = segment_path(&self.dir, sequence);
        let context = format!("creating {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            // Only a file left by a start that failed before it was listed.
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error(&context, e))?;
        // The new name must survive a power loss as well as its contents.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error("syncing a log directory", e))?;
        state.segments.insert(sequence, Segment::new(file));
        Ok(())
    }

    /// Deletes the oldest segments while they hold nothing live (never the active one).
    fn retire(&self, state: &mut LogState) {
        if state.sync_failed {
            return;
        }
        while state.segments.len() > 1 {
            let Some((&sequence, segment)) = state.segments.iter().next() else {
                break;
            };
            if segment.live > 0 {
                break;
            }
            state.segments.remove(&sequence);
            let path = segment_path(&self.dir, sequence);
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), %error, "removing a log segment failed");
            }
        }
    }

    /// Appends puts (`Some` value) and removals (`None`) as one write.
    pub fn apply(&self, writes: &[(&[u8], Option<&[u8]>)]) -> StorageResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut state = self.state();
        let mut buffer = std::mem::take(&mut state.buffer);
        let result = encode_all(&mut buffer, writes)
            .and_then(|offsets| self.write(&mut state, &buffer, writes, &offsets));
        state.buffer = buffer;
        result?;
        self.retire(&mut state);
        // The batch is written: a compaction that fails only leaves garbage for later.
        if let Err(error) = self.compact_if_due(&mut state) {
            tracing::warn!(log = self.name, %error, "log compaction failed; retried in a minute");
            state.compact_after = Some(std::time::Instant::now() + COMPACTION_RETRY);
        }
        Ok(())
    }

    /// Copies the oldest segment's live records to the active one and deletes it, once
    /// the log holds more than twice its live bytes plus a segment (see "Compaction").
    fn compact_if_due(&self, state: &mut LogState) -> StorageResult<()> {
        let total: u64 = state.segments.values().map(|s| s.len).sum();
        let live: u64 = state.segments.values().map(|s| s.live_bytes).sum();
        if state.segments.len() < 3 || total <= 2 * live + self.segment_bytes {
            return Ok(());
        }
        if state
            .compact_after
            .is_some_and(|after| std::time::Instant::now() < after)
        {
            return Ok(());
        }
        let Some(&oldest) = state.segments.keys().next() else {
            return Ok(());
        };
        let mut records = Vec::new();
        for (key, location) in state.index.iter().filter(|(_, l)| l.segment == oldest) {
            records.push((key.clone(), read_value(state, location, self.name)?));
        }
        let writes: Vec<(&[u8], Option<&[u8]>)> = records
            .iter()
            .map(|(key, value)| (key.as_slice(), Some(value.as_slice())))
            .collect();
        let mut buffer = Vec::new();
        let offsets = encode_all(&mut buffer, &writes)?;
        if !buffer.is_empty() {
            self.write(state, &buffer, &writes, &offsets)?;
        }
        // The copies are durable before the originals go.
        self.sync_active(state)?;
        tracing::debug!(
            log = self.name,
            segment = oldest,
            records = records.len(),
            bytes = buffer.len(),
            "log segment compacted"
        );
        self.retire(state);
        Ok(())
    }

    fn sync_active(&self, state: &mut LogState) -> StorageResult<()> {
        if let Some(segment) = state.segments.values().next_back() {
            if let Err(error) = segment.file.sync_data() {
                state.sync_failed = true;
                return Err(io_error(&format!("syncing the {} log", self.name), error));
            }
        }
        state.unsynced = false;
        Ok(())
    }

    fn write(
        &self,
        state: &mut LogState,
        buffer: &[u8],
        writes: &[(&[u8], Option<&[u8]>)],
        offsets: &[usize],
    ) -> StorageResult<()> {
        let (&sequence, active) = state
            .segments
            .iter_mut()
            .next_back()
            .ok_or_else(|| StorageError::Io(format!("the {} log has no segment", self.name)))?;
        let base = active.len;
        let end = base + buffer.len() as u64;
        let written =
            preallocate(active, end).and_then(|()| active.file.write_all_at(buffer, base));
        if let Err(error) = written {
            // Whatever part of it reached the file is cut off again: the index never
            // points past what was written whole.
            let _ = active.file.set_len(base);
            active.allocated = base;
            return Err(io_error(&format!("writing the {} log", self.name), error));
        }
        active.len += buffer.len() as u64;
        state.unsynced = true;
        for ((key, value), &start) in writes.iter().zip(offsets) {
            match value {
                Some(value) => {
                    let location = Location {
                        segment: sequence,
                        offset: base + (start + HEADER + key.len()) as u64,
                        len: value.len() as u32,
                        record_len: (HEADER + key.len() + value.len()) as u32,
                    };
                    if let Some(segment) = state.segments.get_mut(&sequence) {
                        segment.live += 1;
                        segment.live_bytes += u64::from(location.record_len);
                    }
                    if let Some(old) = state.index.insert(key.to_vec(), location) {
                        state.release(&old);
                    }
                }
                None => {
                    if let Some(old) = state.index.remove(*key) {
                        state.release(&old);
                    }
                }
            }
        }
        let full = state
            .segments
            .get(&sequence)
            .is_some_and(|s| s.len >= self.segment_bytes);
        if full {
            // Closed segments are never synced again: sync it now.
            if let Some(segment) = state.segments.get(&sequence) {
                if let Err(error) = segment.file.sync_data() {
                    state.sync_failed = true;
                    return Err(io_error(&format!("syncing the {} log", self.name), error));
                }
            }
            self.start_segment(state, sequence + 1)?;
        }
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn flush(&self) -> StorageResult<()> {
        let mut state = self.state();
        if !state.unsynced {
            return Ok(());
        }
        self.sync_active(&mut state)
    }

    /// The live records whose key starts with `prefix`, in key order.
    pub fn records(&self, prefix: &[u8]) -> StorageResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let state = self.state();
        let mut out = Vec::new();
        for (key, location) in state
            .index
            .range(prefix.to_vec()..)
            .take_while(|(key, _)| key.starts_with(prefix))
        {
            out.push((key.clone(), read_value(&state, location, self.name)?));
        }
        Ok(out)
    }

    /// Bytes on disk, the zeros written ahead included.
    pub fn size(&self) -> u64 {
        self.state().segments.values().map(|s| s.allocated).sum()
    }

    /// Bytes of records (tests: where the next record goes, with one segment).
    #[cfg(test)]
    fn end(&self) -> u64 {
        self.state().segments.values().map(|s| s.len).sum()
    }
}

/// Extends `segment` with zeros, a whole step at a time, until `end` fits.
fn preallocate(segment: &mut Segment, end: u64) -> std::io::Result<()> {
    if end <= segment.allocated {
        return Ok(());
    }
    let target = end.div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
    let zeros = vec![0u8; (target - segment.allocated).min(PREALLOCATE_BYTES) as usize];
    while segment.allocated < target {
        let step = (target - segment.allocated).min(zeros.len() as u64) as usize;
        segment
            .file
            .write_all_at(&zeros[..step], segment.allocated)?;
        segment.allocated += step as u64;
    }
    Ok(())
}

fn read_value(state: &LogState, location: &Location, name: &str) -> StorageResult<Vec<u8>> {
    let segment = state.segments.get(&location.segment).ok_or_else(|| {
        StorageError::Corrupt(format!(
            "{name} record in missing segment {}",
            location.segment
        ))
    })?;
    let mut value = vec![0; location.len as usize];
    segment
        .file
        .read_exact_at(&mut value, location.offset)
        .map_err(|e| io_error(&format!("reading the {name} log"), e))?;
    Ok(value)
}

impl LogState {
    /// The record at `location` was replaced or removed.
    fn release(&mut self, location: &Location) {
        if let Some(segment) = self.segments.get_mut(&location.segment) {
            segment.live = segment.live.saturating_sub(1);
            segment.live_bytes = segment
                .live_bytes
                .saturating_sub(u64::from(location.record_len));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put<'a>(key: &'a [u8], value: &'a [u8]) -> (&'a [u8], Option<&'a [u8]>) {
        (key, Some(value))
    }

    #[test]
    fn records_survive_reopening_and_removals_stick() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = RecordLog::open(dir.path(), "test").unwrap();
            log.apply(&[put(b"a1", b"one"), put(b"a2", b"two"), put(b"b1", b"three")])
                .unwrap();
            log.apply(&[(b"a1", None), put(b"a2", b"two again")])
                .unwrap();
            log.flush().unwrap();
            assert_eq!(
                log.records(b"a").unwrap(),
                vec![(b"a2".to_vec(), b"two again".to_vec())]
            );
        }
        let log = RecordLog::open(dir.path(), "test").unwrap();
        assert_eq!(
            log.records(b"").unwrap(),
            vec![
                (b"a2".to_vec(), b"two again".to_vec()),
                (b"b1".to_vec(), b"three".to_vec())
            ]
        );
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_appending_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let end = {
            let log = RecordLog::open(dir.path(), "test").unwrap();
            log.apply(&[put(b"k1", b"v1")]).unwrap();
            log.apply(&[put(b"k2", b"v2")]).unwrap();
            log.end()
        };
        let path = segment_path(dir.path(), 1);
        assert!(
            std::fs::metadata(&path).unwrap().len() >= PREALLOCATE_BYTES,
            "zeros written ahead"
        );
        // A crash in the middle of the second record's write: its last bytes never
        // reached the disk (the zeros written ahead are still there).
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end as usize - 3..end as usize].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        {
            let log = RecordLog::open(dir.path(), "test").unwrap();
            assert_eq!(
                log.records(b"").unwrap(),
                vec![(b"k1".to_vec(), b"v1".to_vec())]
            );
            log.apply(&[put(b"k3", b"v3")]).unwrap();
        }
        let log = RecordLog::open(dir.path(), "test").unwrap();
        let keys: Vec<Vec<u8>> = log.records(b"").unwrap().into_iter().map(|r| r.0).collect();
        assert_eq!(keys, vec![b"k1".to_vec(), b"k3".to_vec()]);
    }

    #[test]
    fn damaged_bytes_are_refused_by_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let end = {
            let log = RecordLog::open(dir.path(), "test").unwrap();
            log.apply(&[put(b"k1", b"value one")]).unwrap();
            log.end()
        };
        let path = segment_path(dir.path(), 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = end as usize - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let log = RecordLog::open(dir.path(), "test").unwrap();
        assert!(log.records(b"").unwrap().is_empty());
    }

    #[test]
    fn emptied_segments_are_deleted_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let log = RecordLog::open(dir.path(), "test").unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 2) as usize];
        log.apply(&[put(b"r1", &big)]).unwrap();
        log.apply(&[put(b"r2", &big)]).unwrap(); // fills segment 1
        log.apply(&[put(b"r3", &big)]).unwrap(); // segment 2
        let segments = || std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(segments(), 2);
        // Segment 2's record goes first: segment 1 still holds r1 and r2.
        log.apply(&[(b"r3", None)]).unwrap();
        assert_eq!(segments(), 2);
        log.apply(&[(b"r1", None), (b"r2", None)]).unwrap();
        assert_eq!(segments(), 1, "segment 1 emptied and deleted");
        drop(log);
        let log = RecordLog::open(dir.path(), "test").unwrap();
        assert!(log.records(b"").unwrap().is_empty());
    }

    #[test]
    fn a_record_that_stays_is_copied_forward_and_old_segments_go() {
        let dir = tempfile::tempdir().unwrap();
        let segment = 4096u64;
        let value = vec![5u8; 1000];
        let log = RecordLog::open_with(dir.path(), "test", segment).unwrap();
        // A quiet group's chunk, then a busy stream that is trimmed as it goes.
        log.apply(&[put(b"quiet", b"kept for good")]).unwrap();
        for i in 0u32..200 {
            let key = format!("busy{i:05}");
            log.apply(&[put(key.as_bytes(), &value)]).unwrap();
            if i >= 4 {
                let old = format!("busy{:05}", i - 4);
                log.apply(&[(old.as_bytes(), None)]).unwrap();
            }
        }
        log.flush().unwrap();
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        // ~200 KB written, ~5 KB live: without compaction the quiet record would keep
        // every segment (~50) alive.
        assert!(segments <= 6, "{segments} segments left");
        let end = log.end();
        assert!(end <= 6 * segment, "{end} bytes of records");
        let expect = |log: &RecordLog| {
            let records = log.records(b"").unwrap();
            assert_eq!(records.len(), 5);
            assert_eq!(records[4], (b"quiet".to_vec(), b"kept for good".to_vec()));
            let busy: Vec<Vec<u8>> = records[..4].iter().map(|r| r.0.clone()).collect();
            let wanted: Vec<Vec<u8>> = (196..200)
                .map(|i| format!("busy{i:05}").into_bytes())
                .collect();
            assert_eq!(busy, wanted);
            assert!(records[..4].iter().all(|r| r.1 == value));
        };
        expect(&log);
        drop(log);
        let log = RecordLog::open_with(dir.path(), "test", segment).unwrap();
        expect(&log);
    }

    #[test]
    fn appending_goes_on_over_the_zeros_written_ahead_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0u8..3 {
            let log = RecordLog::open(dir.path(), "test").unwrap();
            assert_eq!(log.records(b"").unwrap().len(), usize::from(round));
            log.apply(&[put(&[b'k', round], &[round; 100])]).unwrap();
            log.flush().unwrap();
        }
        let log = RecordLog::open(dir.path(), "test").unwrap();
        let records = log.records(b"").unwrap();
        assert_eq!(records.len(), 3);
        assert!(records
            .iter()
            .enumerate()
            .all(|(i, r)| r.1 == [i as u8; 100]));
        let file = std::fs::metadata(segment_path(dir.path(), 1))
            .unwrap()
            .len();
        assert_eq!(
            file, PREALLOCATE_BYTES,
            "one step of zeros, never truncated"
        );
        assert_eq!(log.end(), 3 * (HEADER as u64 + 2 + 100));
        assert_eq!(log.size(), PREALLOCATE_BYTES, "what the disk holds");
    }

    #[test]
    fn garbage_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        for (i, bytes) in [
            vec![],
            vec![1],
            vec![1, 0, 5, 0, 0, 0, 1],
            vec![2; 40],
            vec![0xff; 100],
        ]
        .into_iter()
        .enumerate()
        {
            std::fs::write(segment_path(dir.path(), i as u64 + 1), bytes).unwrap();
        }
        let log = RecordLog::open(dir.path(), "test").unwrap();
        assert!(log.records(b"").unwrap().is_empty());
        log.apply(&[put(b"k", b"v")]).unwrap();
    }
}
