//! Our own MQTT codec, written from the OASIS MQTT 3.1.1 and 5.0 specifications.
//!
//! `decode` turns bytes into [`Packet`]s with full validation; `encode` writes packets for a
//! given protocol version; `topic` holds the topic name / filter rules. Decoding never panics
//! on any input and never copies payloads: topics, strings and payloads are slices of the
//! receive buffer.

pub mod decode;
pub mod encode;
pub mod topic;
pub mod types;

pub use decode::{decode_packet, DecodeError};
pub use encode::{encode_packet, encoded_len, EncodeError};
pub use types::*;
