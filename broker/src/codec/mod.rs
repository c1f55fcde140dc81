//! Our own MQTT codec, written from the OASIS MQTT 3.1, 3.1.1 and 5.0 specifications.
//!
//! `decode` turns bytes into [`Packet`]s with full validation; `encode` writes packets for a
//! given protocol version; `topic` holds the topic name / filter rules; `properties` the
//! MQTT 5.0 property table; `wire` the data representations of section 1.5. Decoding never
//! panics on any input and never copies payloads: topics, strings and payloads are slices
//! of the receive buffer.

pub mod decode;
pub mod encode;
mod properties;
pub mod topic;
pub mod types;
mod wire;

pub use decode::{decode_packet, DecodeError};
pub use encode::{encode_packet, encode_publish, encoded_len, EncodeError};
pub use types::*;
