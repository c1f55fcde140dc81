//! The MQTT data representations of section 1.5: integers, Variable Byte Integers, UTF-8
//! strings and binary data, read from a packet body and written to an output buffer.
//!
//! [`Reader`] reads from the body of one packet (a [`Bytes`] slice of the receive buffer).
//! Every read checks the length first, so a truncated body is a Malformed Packet, never a
//! panic; strings and binary data are returned as sub-slices of the body, without copying.

use super::decode::DecodeError;
use super::types::MqttStr;
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The largest value a Variable Byte Integer can hold (1.5.5).
pub const VBI_MAX: u32 = 268_435_455;

/// Outcome of parsing a Variable Byte Integer from a buffer that may still be filling up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VbiParse {
    /// The value and the number of bytes it took.
    Done(u32, usize),
    /// More bytes are needed.
    Incomplete,
}

/// Parses a Variable Byte Integer at the front of `bytes`. At most 4 bytes are allowed
/// [MQTT-1.5.5-1 / 3.1.1 §2.2.3], and the encoding must use the minimum number of bytes
/// [MQTT-1.5.5-1] (a trailing zero group, e.g. `80 00`, is refused).
pub(crate) fn parse_vbi(bytes: &[u8]) -> Result<VbiParse, DecodeError> {
    let mut value: u32 = 0;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::Malformed(
                    "variable byte integer not minimally encoded [MQTT-1.5.5-1]",
                ));
            }
            return Ok(VbiParse::Done(value, i + 1));
        }
    }
    if bytes.len() >= 4 {
        return Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes [MQTT-1.5.5-1]",
        ));
    }
    Ok(VbiParse::Incomplete)
}

/// Number of bytes the Variable Byte Integer encoding of `value` takes.
#[inline]
pub(crate) fn vbi_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes `value` (at most [`VBI_MAX`], checked by the caller) as a Variable Byte Integer.
#[inline]
pub(crate) fn put_vbi(buf: &mut BytesMut, value: usize) {
    debug_assert!(value <= VBI_MAX as usize);
    let mut x = value;
    loop {
        let mut byte = (x & 0x7F) as u8;
        x >>= 7;
        if x > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if x == 0 {
            break;
        }
    }
}

/// Writes a two-byte length prefix and the bytes (strings and binary data, 1.5.4 / 1.5.6).
/// The caller has checked that `data` is at most 65,535 bytes long.
#[inline]
pub(crate) fn put_prefixed(buf: &mut BytesMut, data: &[u8]) {
    debug_assert!(data.len() <= u16::MAX as usize);
    buf.put_u16(data.len() as u16);
    buf.put_slice(data);
}

const TRUNCATED: DecodeError = DecodeError::Malformed("packet shorter than its fields");

/// Checked reads from one packet body.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails with Malformed unless the whole body has been read.
    #[inline]
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(what))
        }
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.buf.try_get_u8().map_err(|_| TRUNCATED)
    }

    #[inline]
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.buf.try_get_u16().map_err(|_| TRUNCATED)
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.buf.try_get_u32().map_err(|_| TRUNCATED)
    }

    /// A Variable Byte Integer inside the body (property length, subscription identifier).
    pub(crate) fn vbi(&mut self) -> Result<u32, DecodeError> {
        match parse_vbi(&self.buf)? {
            VbiParse::Done(value, len) => {
                self.buf.advance(len);
                Ok(value)
            }
            VbiParse::Incomplete => Err(TRUNCATED),
        }
    }

    /// The next `len` bytes, as a zero-copy slice.
    #[inline]
    pub(crate) fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.buf.len() {
            return Err(TRUNCATED);
        }
        Ok(self.buf.split_to(len))
    }

    /// Everything left in the body.
    #[inline]
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Binary Data: a two-byte length then that many bytes (1.5.6).
    #[inline]
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 Encoded String (1.5.4): well-formed UTF-8 [MQTT-1.5.4-1], no U+0000
    /// [MQTT-1.5.4-2]. Surrogates cannot occur in well-formed UTF-8.
    #[inline]
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary()?;
        check_utf8(&bytes)?;
        Ok(MqttStr::from_validated(bytes))
    }
}

/// The string rules of 1.5.4 on raw bytes.
#[inline]
pub(crate) fn check_utf8(bytes: &[u8]) -> Result<(), DecodeError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(DecodeError::Malformed(
            "string is not well-formed UTF-8 [MQTT-1.5.4-1]",
        ));
    }
    if bytes.contains(&0) {
        return Err(DecodeError::Malformed(
            "string contains U+0000 [MQTT-1.5.4-2]",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(v: usize) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_vbi(&mut b, v);
        b.to_vec()
    }

    #[test]
    fn vbi_boundaries_follow_table_1_1() {
        let cases: [(usize, &[u8]); 8] = [
            (0, &[0x00]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (value, bytes) in cases {
            assert_eq!(enc(value), bytes, "{value}");
            assert_eq!(vbi_len(value), bytes.len(), "{value}");
            assert_eq!(
                parse_vbi(bytes),
                Ok(VbiParse::Done(value as u32, bytes.len()))
            );
            // Every proper prefix is incomplete.
            for n in 0..bytes.len() {
                assert_eq!(parse_vbi(&bytes[..n]), Ok(VbiParse::Incomplete));
            }
        }
    }

    #[test]
    fn vbi_refuses_five_bytes_and_overlong() {
        assert!(parse_vbi(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]).is_err());
        assert!(parse_vbi(&[0x80, 0x80, 0x80, 0x80]).is_err());
        assert!(parse_vbi(&[0x80, 0x00]).is_err());
        assert!(parse_vbi(&[0xFF, 0x80, 0x00]).is_err());
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x05, b'a']));
        assert!(r.binary().is_err());
        let mut r = Reader::new(Bytes::from_static(&[0x01]));
        assert!(r.u16().is_err());
        assert!(r.u32().is_err());
        assert_eq!(r.u8(), Ok(1));
        assert!(r.u8().is_err());
        assert!(r.vbi().is_err());
    }

    #[test]
    fn strings_follow_1_5_4() {
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x02, 0xC3, 0xA9]));
        assert_eq!(r.string().unwrap().as_str(), "é");
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0x00]));
        assert!(r.string().is_err());
        // A UTF-16 surrogate encoded as UTF-8 (CESU) is not well-formed.
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x03, 0xED, 0xA0, 0x80]));
        assert!(r.string().is_err());
        let mut r = Reader::new(Bytes::from_static(&[0x00, 0x01, 0xFF]));
        assert!(r.string().is_err());
    }
}
