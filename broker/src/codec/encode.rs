//! Packet encoding (placeholder until the codec lands).
use super::types::*;
use bytes::BytesMut;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet too large to encode: {0} bytes")]
    TooLarge(usize),
    #[error("packet type not valid for this protocol version")]
    NotInVersion,
}

/// Appends `packet`, encoded for `version`, to `buf`. v5-only fields are left out for 3.x.
pub fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    let _ = (packet, version, buf);
    Err(EncodeError::NotInVersion)
}

/// The number of bytes `encode_packet` would write, fixed header included.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let _ = (packet, version);
    0
}
