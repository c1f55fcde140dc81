//! The on-disk encoding of records and keys, hand-written.
//!
//! Why hand-written rather than serde + a format crate: the format is the durable contract
//! of the database, so it is spelled out here field by field (and can only change together
//! with [`FORMAT`] or the schema version), it costs no dependency, and every decoding
//! failure is a [`StorageError::Corrupt`] naming the record, never a panic or a huge
//! allocation driven by a garbage length.
//!
//! Every value starts with a format byte ([`FORMAT`]), so a record layout can evolve
//! (a reader dispatches on it) without a full schema migration. Integers are LEB128
//! varints (message ids, timestamps and lengths are mostly small), strings and byte strings
//! are a varint length followed by the bytes, `Option`s a 0/1 byte and the value, booleans
//! a 0/1 byte (anything else is corruption). Reference counts and meta counters are fixed
//! 8-byte big-endian integers so that they can be read without a decoder.
//!
//! Keys are built so that sled's byte order is the order the broker needs: a client id,
//! a 0x00 separator (MQTT strings cannot contain U+0000, so the separator cannot occur in
//! the id and `a` + 0x00 sorts before `ab`) and a big-endian sequence or packet id.

use crate::store::{InflightEntry, QueueEntry};
use crate::{StorageError, StorageResult, StoredMessage, StoredSession, StoredSubscription};
use bytes::Bytes;

/// Format byte at the start of every encoded value.
pub const FORMAT: u8 = 1;

/// Separator between a client id and the rest of a per-session key.
pub const SEP: u8 = 0x00;

fn corrupt(what: &str, why: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("{what}: {why}"))
}

struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn new(capacity: usize) -> Writer {
        let mut buf = Vec::with_capacity(capacity + 1);
        buf.push(FORMAT);
        Writer { buf }
    }

    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    fn bool(&mut self, v: bool) {
        self.buf.push(u8::from(v));
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn bytes(&mut self, v: &[u8]) {
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    fn opt_u32(&mut self, v: Option<u32>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.varint(u64::from(v));
            }
        }
    }

    fn u32s(&mut self, v: &[u32]) {
        self.varint(v.len() as u64);
        for &id in v {
            self.varint(u64::from(id));
        }
    }
}

/// A cursor over one encoded value; `what` names the record in error messages.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> StorageResult<Reader<'a>> {
        match buf.split_first() {
            Some((&FORMAT, rest)) => Ok(Reader { buf: rest, what }),
            Some((other, _)) => Err(corrupt(what, format!("unknown record format {other}"))),
            None => Err(corrupt(what, "empty value")),
        }
    }

    fn err(&self, why: &str) -> StorageError {
        corrupt(self.what, why)
    }

    fn u8(&mut self) -> StorageResult<u8> {
        let (&v, rest) = self
            .buf
            .split_first()
            .ok_or_else(|| self.err("truncated"))?;
        self.buf = rest;
        Ok(v)
    }

    fn bool(&mut self) -> StorageResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("invalid boolean")),
        }
    }

    fn varint(&mut self) -> StorageResult<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.err("integer overflows 64 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(self.err("integer overflows 64 bits"))
    }

    fn u32(&mut self) -> StorageResult<u32> {
        u32::try_from(self.varint()?).map_err(|_| self.err("integer overflows 32 bits"))
    }

    /// A length, checked against what is left so that garbage cannot make us allocate.
    fn len(&mut self, min_item_size: usize) -> StorageResult<usize> {
        let len = self.varint()?;
        match usize::try_from(len) {
            Ok(len) if len.saturating_mul(min_item_size) <= self.buf.len() => Ok(len),
            _ => Err(self.err("length exceeds the record")),
        }
    }

    fn slice(&mut self) -> StorageResult<&'a [u8]> {
        let len = self.len(1)?;
        let (v, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(v)
    }

    fn string(&mut self) -> StorageResult<String> {
        let v = self.slice()?;
        String::from_utf8(v.to_vec()).map_err(|_| self.err("invalid UTF-8"))
    }

    fn bytes(&mut self) -> StorageResult<Bytes> {
        Ok(Bytes::copy_from_slice(self.slice()?))
    }

    fn opt_u32(&mut self) -> StorageResult<Option<u32>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.u32()?)),
            _ => Err(self.err("invalid option tag")),
        }
    }

    fn u32s(&mut self) -> StorageResult<Vec<u32>> {
        let len = self.len(1)?;
        (0..len).map(|_| self.u32()).collect()
    }

    fn finish(self) -> StorageResult<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

fn put_message(w: &mut Writer, m: &StoredMessage) {
    w.bytes(m.topic.as_bytes());
    w.bytes(&m.payload);
    w.u8(m.qos);
    w.bytes(&m.properties);
    w.bytes(m.publisher.as_bytes());
    w.varint(m.received_at_ms);
    w.opt_u32(m.expiry_interval);
}

fn get_message(r: &mut Reader<'_>) -> StorageResult<StoredMessage> {
    Ok(StoredMessage {
        topic: r.string()?,
        payload: r.bytes()?,
        qos: r.u8()?,
        properties: r.bytes()?,
        publisher: r.string()?,
        received_at_ms: r.varint()?,
        expiry_interval: r.opt_u32()?,
    })
}

pub fn encode_message(m: &StoredMessage) -> Vec<u8> {
    let mut w = Writer::new(m.topic.len() + m.payload.len() + m.properties.len() + 24);
    put_message(&mut w, m);
    w.buf
}

pub fn decode_message(buf: &[u8]) -> StorageResult<StoredMessage> {
    let mut r = Reader::new(buf, "message")?;
    let m = get_message(&mut r)?;
    r.finish()?;
    Ok(m)
}

pub fn encode_session(s: &StoredSession) -> Vec<u8> {
    let mut w = Writer::new(64 + s.subscriptions.len() * 32);
    w.bytes(s.client_id.as_bytes());
    w.varint(s.subscriptions.len() as u64);
    for sub in &s.subscriptions {
        w.bytes(sub.filter.as_bytes());
        w.u8(sub.qos);
        w.bool(sub.no_local);
        w.bool(sub.retain_as_published);
        w.u8(sub.retain_handling);
        w.opt_u32(sub.subscription_id);
    }
    w.varint(u64::from(s.expiry_interval));
    w.varint(s.disconnected_at_ms);
    // Will tag: 0 none, 1 a will, 2 a retained will.
    match &s.will {
        None => w.u8(0),
        Some(will) => {
            w.u8(if s.will_retain { 2 } else { 1 });
            put_message(&mut w, will);
        }
    }
    w.varint(u64::from(s.will_delay));
    // Trailing and optional: records written before it existed end here.
    if let Some(sender) = &s.will_sender {
        w.bytes(sender.as_bytes());
    }
    w.buf
}

pub fn decode_session(buf: &[u8]) -> StorageResult<StoredSession> {
    let mut r = Reader::new(buf, "session")?;
    let client_id = r.string()?;
    // A subscription takes at least 6 bytes (empty filter, qos, 2 flags, rh, no id).
    let count = r.len(6)?;
    let mut subscriptions = Vec::with_capacity(count);
    for _ in 0..count {
        subscriptions.push(StoredSubscription {
            filter: r.string()?,
            qos: r.u8()?,
            no_local: r.bool()?,
            retain_as_published: r.bool()?,
            retain_handling: r.u8()?,
            subscription_id: r.opt_u32()?,
        });
    }
    let expiry_interval = r.u32()?;
    let disconnected_at_ms = r.varint()?;
    let (will, will_retain) = match r.u8()? {
        0 => (None, false),
        tag @ (1 | 2) => (Some(get_message(&mut r)?), tag == 2),
        _ => return Err(r.err("invalid will tag")),
    };
    let will_delay = r.u32()?;
    let will_sender = if r.buf.is_empty() {
        None
    } else {
        Some(r.string()?)
    };
    r.finish()?;
    Ok(StoredSession {
        client_id,
        subscriptions,
        expiry_interval,
        disconnected_at_ms,
        will,
        will_retain,
        will_delay,
        will_sender,
    })
}

pub fn encode_queue_entry(e: &QueueEntry) -> Vec<u8> {
    let mut w = Writer::new(16 + e.subscription_ids.len() * 2);
    w.varint(e.message_id);
    w.u8(e.qos);
    w.bool(e.retain);
    w.u32s(&e.subscription_ids);
    w.buf
}

pub fn decode_queue_entry(buf: &[u8]) -> StorageResult<QueueEntry> {
    let mut r = Reader::new(buf, "queue entry")?;
    let e = QueueEntry {
        message_id: r.varint()?,
        qos: r.u8()?,
        retain: r.bool()?,
        subscription_ids: r.u32s()?,
    };
    r.finish()?;
    Ok(e)
}

pub fn encode_inflight(e: &InflightEntry) -> Vec<u8> {
    let mut w = Writer::new(24 + e.subscription_ids.len() * 2);
    w.varint(e.message_id);
    w.u8(e.qos);
    w.bool(e.retain);
    w.u32s(&e.subscription_ids);
    w.bool(e.released);
    w.varint(e.sequence);
    w.buf
}

pub fn decode_inflight(buf: &[u8]) -> StorageResult<InflightEntry> {
    let mut r = Reader::new(buf, "in-flight entry")?;
    let e = InflightEntry {
        message_id: r.varint()?,
        qos: r.u8()?,
        retain: r.bool()?,
        subscription_ids: r.u32s()?,
        released: r.bool()?,
        sequence: r.varint()?,
    };
    r.finish()?;
    Ok(e)
}

/// Message-id keys and counters: 8 bytes big-endian.
pub fn decode_u64(buf: &[u8], what: &str) -> StorageResult<u64> {
    let bytes: [u8; 8] = buf
        .try_into()
        .map_err(|_| corrupt(what, format!("expected 8 bytes, found {}", buf.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

/// `client_id` 0x00: the prefix of all of one session's keys in a per-session tree.
pub fn session_prefix(client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(client_id.len() + 9);
    key.extend_from_slice(client_id.as_bytes());
    key.push(SEP);
    key
}

pub fn queue_key(client_id: &str, sequence: u64) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

pub fn packet_key(client_id: &str, packet_id: u16) -> Vec<u8> {
    let mut key = session_prefix(client_id);
    key.extend_from_slice(&packet_id.to_be_bytes());
    key
}

/// The sequence at the end of a queue key whose prefix (`prefix_len` bytes) is known.
pub fn queue_key_sequence(key: &[u8], prefix_len: usize) -> StorageResult<u64> {
    decode_u64(key.get(prefix_len..).unwrap_or_default(), "queue key")
}

/// The packet id at the end of an in-flight or incoming key.
pub fn packet_key_id(key: &[u8], prefix_len: usize) -> StorageResult<u16> {
    let tail = key.get(prefix_len..).unwrap_or_default();
    let bytes: [u8; 2] = tail.try_into().map_err(|_| {
        corrupt(
            "packet key",
            format!("expected 2 bytes after the client id, found {}", tail.len()),
        )
    })?;
    Ok(u16::from_be_bytes(bytes))
}

/// A write to encode: tree index, key, value (`None` removes).
pub type JournalWriteRef<'a> = (u8, &'a [u8], Option<&'a [u8]>);

/// One journal record: the writes of one applied batch, as `(tree index, key, value)`
/// with `None` for a removal, replayed in order at start-up (see `sled_store/staged.rs`).
pub fn encode_journal(writes: &[JournalWriteRef<'_>]) -> Vec<u8> {
    let size: usize = writes
        .iter()
        .map(|(_, k, v)| k.len() + v.map_or(0, <[u8]>::len) + 8)
        .sum();
    let mut w = Writer::new(size + 8);
    w.varint(writes.len() as u64);
    for (tree, key, value) in writes {
        w.u8(*tree);
        w.bytes(key);
        match value {
            None => w.u8(0),
            Some(value) => {
                w.u8(1);
                w.bytes(value);
            }
        }
    }
    w.buf
}

/// A decoded journal write: tree index, key, value (`None` removes).
pub type JournalWrite = (u8, Vec<u8>, Option<Vec<u8>>);

pub fn decode_journal(buf: &[u8]) -> StorageResult<Vec<JournalWrite>> {
    let mut r = Reader::new(buf, "journal record")?;
    // Each write takes at least 3 bytes (tree, key length, tag).
    let count = r.len(3)?;
    let mut writes = Vec::with_capacity(count);
    for _ in 0..count {
        let tree = r.u8()?;
        let key = r.slice()?.to_vec();
        let value = match r.u8()? {
            0 => None,
            1 => Some(r.slice()?.to_vec()),
            _ => return Err(r.err("invalid write tag")),
        };
        writes.push((tree, key, value));
    }
    r.finish()?;
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> StoredMessage {
        StoredMessage {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"\x00\xffpayload"),
            qos: 2,
            properties: Bytes::from_static(b"\x26\x00\x01k\x00\x01v"),
            publisher: "pub".into(),
            received_at_ms: 1_700_000_000_000,
            expiry_interval: Some(u32::MAX),
        }
    }

    #[test]
    fn records_round_trip() {
        let m = message();
        assert_eq!(decode_message(&encode_message(&m)).unwrap(), m);
        let s = StoredSession {
            client_id: "c1".into(),
            subscriptions: vec![StoredSubscription {
                filter: "a/#".into(),
                qos: 1,
                no_local: true,
                retain_as_published: false,
                retain_handling: 2,
                subscription_id: Some(268_435_455),
            }],
            expiry_interval: u32::MAX,
            disconnected_at_ms: u64::MAX,
            will: Some(m),
            will_retain: true,
            will_delay: 5,
            will_sender: Some("alice".into()),
        };
        assert_eq!(decode_session(&encode_session(&s)).unwrap(), s);
        // Records written before `will_sender` existed end after the will delay.
        let without = StoredSession {
            will_sender: None,
            ..s.clone()
        };
        let old = encode_session(&without);
        assert!(encode_session(&s).starts_with(&old));
        assert_eq!(decode_session(&old).unwrap(), without);
        let q = QueueEntry {
            message_id: u64::MAX,
            qos: 1,
            retain: true,
            subscription_ids: vec![1, 300, u32::MAX],
        };
        assert_eq!(decode_queue_entry(&encode_queue_entry(&q)).unwrap(), q);
        let i = InflightEntry {
            message_id: 7,
            qos: 2,
            retain: false,
            subscription_ids: vec![],
            released: true,
            sequence: 1 << 40,
        };
        assert_eq!(decode_inflight(&encode_inflight(&i)).unwrap(), i);
    }

    #[test]
    fn bad_bytes_are_corrupt_not_panics() {
        let good = encode_message(&message());
        // Every truncation, and every single-byte change of the format or a length,
        // must decode to an error or a value, never panic.
        for cut in 0..good.len() {
            assert!(decode_message(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(decode_message(&trailing).is_err());
        let mut version = good.clone();
        version[0] = 9;
        let err = decode_message(&version).unwrap_err().to_string();
        assert!(err.contains("unknown record format 9"), "{err}");
        for i in 0..good.len() {
            for b in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = decode_message(&bad);
                let _ = decode_session(&bad);
                let _ = decode_queue_entry(&bad);
                let _ = decode_inflight(&bad);
            }
        }
        // A huge length must not allocate.
        assert!(decode_queue_entry(&[FORMAT, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        // An over-long varint is corruption, not a silent wrap.
        let mut long = vec![FORMAT];
        long.extend([0xff; 10]);
        long.push(0x01);
        assert!(decode_queue_entry(&long).is_err());
    }

    #[test]
    fn keys_sort_by_client_then_number() {
        assert!(queue_key("a", u64::MAX) < queue_key("ab", 0));
        assert!(queue_key("a", 255) < queue_key("a", 256));
        assert!(packet_key("a", 1) < packet_key("a", 256));
        let key = queue_key("abc", 42);
        assert_eq!(queue_key_sequence(&key, 4).unwrap(), 42);
        assert!(queue_key_sequence(&key[..6], 4).is_err());
        assert_eq!(packet_key_id(&packet_key("x", 9), 2).unwrap(), 9);
        assert!(packet_key_id(b"x\0", 2).is_err());
    }
}
