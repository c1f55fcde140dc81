//! A minimal, independent MQTT 3.1.1 client codec.
//!
//! Deliberately shares no code with the broker: the load generator must act
//! as an independent client. Encoding appends to a caller-owned `BytesMut`
//! (so a whole batch of packets goes out in one write), and decoding borrows
//! from the caller's read buffer (no per-packet allocation).

use bytes::{BufMut, BytesMut};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBSCRIBE: u8 = 8;
pub const SUBACK: u8 = 9;
pub const PINGREQ: u8 = 12;
pub const PINGRESP: u8 = 13;
pub const DISCONNECT: u8 = 14;

/// Largest remaining length MQTT can express (4 varint bytes).
pub const MAX_REMAINING: usize = 268_435_455;

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Remaining-length varint longer than 4 bytes.
    BadLength,
    /// Packet structurally invalid for its type.
    Malformed(&'static str),
    /// Packet larger than the configured maximum.
    TooLarge(usize),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::BadLength => write!(f, "bad remaining length"),
            DecodeError::Malformed(what) => write!(f, "malformed packet: {what}"),
            DecodeError::TooLarge(n) => write!(f, "packet too large: {n} bytes"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A decoded packet borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Connack {
        session_present: bool,
        code: u8,
    },
    Publish {
        dup: bool,
        qos: u8,
        retain: bool,
        pkid: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    Puback(u16),
    Pubrec(u16),
    Pubrel(u16),
    Pubcomp(u16),
    Suback {
        pkid: u16,
        codes: &'a [u8],
    },
    Pingresp,
    /// Anything a client does not expect to receive (still framed correctly).
    Other(u8),
}

fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    debug_assert!(len <= MAX_REMAINING);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT, protocol level 4 (3.1.1), no will, no credentials.
#[cfg_attr(not(test), allow(dead_code))]
pub fn encode_connect(buf: &mut BytesMut, client_id: &str, keep_alive: u16, clean_session: bool) {
    encode_connect_auth(buf, client_id, keep_alive, clean_session, None);
}

/// CONNECT, protocol level 4 (3.1.1), no will, with an optional
/// (username, password).
pub fn encode_connect_auth(
    buf: &mut BytesMut,
    client_id: &str,
    keep_alive: u16,
    clean_session: bool,
    credentials: Option<(&str, &str)>,
) {
    let creds_len = credentials.map_or(0, |(u, p)| 4 + u.len() + p.len());
    let remaining = 10 + 2 + client_id.len() + creds_len;
    buf.reserve(5 + remaining);
    buf.put_u8(CONNECT << 4);
    put_remaining_length(buf, remaining);
    put_str(buf, b"MQTT");
    buf.put_u8(4);
    let mut flags = if clean_session { 0x02 } else { 0 };
    if credentials.is_some() {
        flags |= 0x80 | 0x40;
    }
    buf.put_u8(flags);
    buf.put_u16(keep_alive);
    put_str(buf, client_id.as_bytes());
    if let Some((user, password)) = credentials {
        put_str(buf, user.as_bytes());
        put_str(buf, password.as_bytes());
    }
}

/// SUBSCRIBE with one or more (filter, requested QoS) pairs.
pub fn encode_subscribe(buf: &mut BytesMut, pkid: u16, filters: &[(&str, u8)]) {
    let remaining = 2 + filters.iter().map(|(f, _)| 3 + f.len()).sum::<usize>();
    buf.reserve(5 + remaining);
    buf.put_u8((SUBSCRIBE << 4) | 0x02);
    put_remaining_length(buf, remaining);
    buf.put_u16(pkid);
    for (filter, qos) in filters {
        put_str(buf, filter.as_bytes());
        buf.put_u8(*qos);
    }
}

/// PUBLISH header (fixed header, topic, packet id); the caller appends
/// exactly `payload_len` payload bytes right after. This lets the load
/// generator write its payload fields in place without building a
/// temporary payload buffer.
pub fn encode_publish_header(
    buf: &mut BytesMut,
    topic: &[u8],
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
    payload_len: usize,
) {
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload_len;
    buf.reserve(5 + remaining);
    let mut first = (PUBLISH << 4) | (qos << 1);
    if retain {
        first |= 0x01;
    }
    if dup {
        first |= 0x08;
    }
    buf.put_u8(first);
    put_remaining_length(buf, remaining);
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(pkid);
    }
}

/// Complete PUBLISH with an opaque payload.
#[cfg_attr(not(test), allow(dead_code))]
pub fn encode_publish(buf: &mut BytesMut, topic: &[u8], qos: u8, pkid: u16, payload: &[u8]) {
    encode_publish_header(buf, topic, qos, false, false, pkid, payload.len());
    buf.put_slice(payload);
}

fn encode_ack(buf: &mut BytesMut, first: u8, pkid: u16) {
    buf.reserve(4);
    buf.put_u8(first);
    buf.put_u8(2);
    buf.put_u16(pkid);
}

pub fn encode_puback(buf: &mut BytesMut, pkid: u16) {
    encode_ack(buf, PUBACK << 4, pkid);
}

pub fn encode_pubrec(buf: &mut BytesMut, pkid: u16) {
    encode_ack(buf, PUBREC << 4, pkid);
}

/// PUBREL carries the reserved flags 0b0010.
pub fn encode_pubrel(buf: &mut BytesMut, pkid: u16) {
    encode_ack(buf, (PUBREL << 4) | 0x02, pkid);
}

pub fn encode_pubcomp(buf: &mut BytesMut, pkid: u16) {
    encode_ack(buf, PUBCOMP << 4, pkid);
}

pub fn encode_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[PINGREQ << 4, 0]);
}

pub fn encode_disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[DISCONNECT << 4, 0]);
}

/// Parse the fixed header at the start of `buf`.
///
/// Returns `Ok(None)` if more bytes are needed, otherwise
/// `(first_byte, header_len, remaining_len)`.
#[inline]
pub fn parse_fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let first = buf[0];
    let mut len: usize = 0;
    let mut shift = 0;
    for i in 1..5 {
        let Some(&byte) = buf.get(i) else {
            return Ok(None);
        };
        len |= ((byte & 0x7f) as usize) << shift;
        if byte & 0x80 == 0 {
            return Ok(Some((first, i + 1, len)));
        }
        shift += 7;
    }
    Err(DecodeError::BadLength)
}

#[inline]
fn read_u16(b: &[u8], at: usize) -> Result<u16, DecodeError> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(DecodeError::Malformed("short packet")),
    }
}

/// Try to decode one packet from the front of `buf`.
///
/// Returns `Ok(None)` when the buffer does not yet hold a full packet,
/// otherwise the packet and the number of bytes it occupies (the caller
/// advances its buffer by that much once done with the borrowed packet).
#[inline]
pub fn decode(buf: &[u8], max_packet: usize) -> Result<Option<(Packet<'_>, usize)>, DecodeError> {
    let Some((first, hlen, rlen)) = parse_fixed_header(buf)? else {
        return Ok(None);
    };
    let total = hlen + rlen;
    if total > max_packet {
        return Err(DecodeError::TooLarge(total));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[hlen..total];
    let kind = first >> 4;
    let packet = match kind {
        PUBLISH => {
            let qos = (first >> 1) & 0x03;
            if qos == 3 {
                return Err(DecodeError::Malformed("publish qos 3"));
            }
            let tlen = read_u16(body, 0)? as usize;
            let mut at = 2 + tlen;
            if body.len() < at {
                return Err(DecodeError::Malformed("publish topic"));
            }
            let topic = &body[2..at];
            let pkid = if qos > 0 {
                let id = read_u16(body, at)?;
                at += 2;
                id
            } else {
                0
            };
            Packet::Publish {
                dup: first & 0x08 != 0,
                qos,
                retain: first & 0x01 != 0,
                pkid,
                topic,
                payload: &body[at..],
            }
        }
        CONNACK => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("connack length"));
            }
            Packet::Connack {
                session_present: body[0] & 0x01 != 0,
                code: body[1],
            }
        }
        PUBACK | PUBREC | PUBREL | PUBCOMP => {
            if body.len() != 2 {
                return Err(DecodeError::Malformed("ack length"));
            }
            let id = read_u16(body, 0)?;
            match kind {
                PUBACK => Packet::Puback(id),
                PUBREC => Packet::Pubrec(id),
                PUBREL => Packet::Pubrel(id),
                _ => Packet::Pubcomp(id),
            }
        }
        SUBACK => {
            let pkid = read_u16(body, 0)?;
            Packet::Suback {
                pkid,
                codes: &body[2..],
            }
        }
        PINGRESP => Packet::Pingresp,
        other => Packet::Other(other),
    };
    Ok(Some((packet, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_one(buf: &BytesMut) -> (Packet<'_>, usize) {
        decode(buf, MAX_REMAINING).unwrap().unwrap()
    }

    #[test]
    fn remaining_length_boundaries() {
        for len in [
            0usize,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING,
        ] {
            let mut b = BytesMut::new();
            b.put_u8(0x30);
            put_remaining_length(&mut b, len);
            let (_, hlen, rlen) = parse_fixed_header(&b).unwrap().unwrap();
            assert_eq!(rlen, len);
            assert_eq!(hlen, b.len());
        }
        assert_eq!(
            parse_fixed_header(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(DecodeError::BadLength)
        );
        assert_eq!(parse_fixed_header(&[0x30, 0xff]), Ok(None));
    }

    #[test]
    fn connect_bytes() {
        let mut b = BytesMut::new();
        encode_connect(&mut b, "ab", 60, true);
        assert_eq!(
            &b[..],
            &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 2, b'a', b'b']
        );
    }

    #[test]
    fn connect_with_credentials_bytes() {
        let mut b = BytesMut::new();
        encode_connect_auth(&mut b, "c", 30, true, Some(("u1", "tk")));
        assert_eq!(
            &b[..],
            &[
                0x10, 21, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 30, 0, 1, b'c', 0, 2, b'u',
                b'1', 0, 2, b't', b'k'
            ]
        );
    }

    #[test]
    fn subscribe_bytes() {
        let mut b = BytesMut::new();
        encode_subscribe(&mut b, 7, &[("a/+", 1)]);
        assert_eq!(&b[..], &[0x82, 8, 0, 7, 0, 3, b'a', b'/', b'+', 1]);
    }

    #[test]
    fn publish_roundtrip() {
        for qos in 0..=2u8 {
            let mut b = BytesMut::new();
            encode_publish(&mut b, b"t/1", qos, 42, b"hello");
            let (p, used) = roundtrip_one(&b);
            assert_eq!(used, b.len());
            assert_eq!(
                p,
                Packet::Publish {
                    dup: false,
                    qos,
                    retain: false,
                    pkid: if qos > 0 { 42 } else { 0 },
                    topic: b"t/1",
                    payload: b"hello",
                }
            );
        }
    }

    #[test]
    fn acks_roundtrip() {
        let mut b = BytesMut::new();
        encode_puback(&mut b, 1);
        encode_pubrec(&mut b, 2);
        encode_pubrel(&mut b, 3);
        encode_pubcomp(&mut b, 4);
        assert_eq!(b[8], 0x62, "PUBREL flags");
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((p, n)) = decode(&b[at..], 1024).unwrap() {
            got.push(format!("{p:?}"));
            at += n;
        }
        assert_eq!(got, ["Puback(1)", "Pubrec(2)", "Pubrel(3)", "Pubcomp(4)"]);
    }

    #[test]
    fn partial_and_server_packets() {
        let connack = [0x20, 2, 1, 0];
        assert_eq!(decode(&connack[..3], 64), Ok(None));
        assert_eq!(
            decode(&connack, 64).unwrap().unwrap().0,
            Packet::Connack {
                session_present: true,
                code: 0
            }
        );
        let suback = [0x90, 3, 0, 9, 1];
        assert_eq!(
            decode(&suback, 64).unwrap().unwrap().0,
            Packet::Suback {
                pkid: 9,
                codes: &[1]
            }
        );
        assert_eq!(decode(&[0xd0, 0], 64).unwrap().unwrap().0, Packet::Pingresp);
        let mut big = BytesMut::new();
        encode_publish(&mut big, b"t", 0, 0, &[0u8; 100]);
        assert_eq!(decode(&big, 50), Err(DecodeError::TooLarge(big.len())));
        let mut b = BytesMut::new();
        encode_pingreq(&mut b);
        encode_disconnect(&mut b);
        assert_eq!(&b[..], &[0xc0, 0, 0xe0, 0]);
    }
}
