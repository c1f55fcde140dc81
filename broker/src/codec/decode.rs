//! Packet decoding (placeholder until the codec lands).
use super::types::*;
use bytes::BytesMut;

/// Why a packet could not be decoded. Each variant maps to the v5 reason code the broker
/// sends in DISCONNECT (or CONNACK) before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// 0x81: the bytes do not form a valid packet.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// 0x82: a valid packet that breaks a protocol rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// 0x95: larger than the maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    /// 0x84: CONNECT with a protocol name/level we do not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedProtocol(u8),
    /// 0x90 / 0x8F: an invalid topic name or filter.
    #[error("invalid topic: {0}")]
    InvalidTopic(&'static str),
}

impl DecodeError {
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::InvalidTopic(_) => reason::TOPIC_NAME_INVALID,
        }
    }
}

/// Decodes one packet from the front of `buf`, removing its bytes. Returns `Ok(None)` when
/// `buf` does not yet hold a whole packet. `version` is the connection's protocol version
/// (ignored for CONNECT, which carries its own). `max_packet_size` bounds the whole packet,
/// fixed header included [MQTT-3.2.2-15]; it is checked as soon as the length is known, so
/// an oversize packet is refused before its body arrives.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let _ = (buf, version, max_packet_size);
    Err(DecodeError::Malformed("codec not implemented yet"))
}
