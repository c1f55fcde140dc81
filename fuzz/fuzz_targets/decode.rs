//! Feeds arbitrary bytes to the decoder for each protocol version. Every packet that
//! decodes is re-encoded and decoded again, and must come back equal (a round-trip oracle);
//! its encoded length must match `encoded_len`.
#![no_main]

// The codec is compiled straight from the broker's sources (it only needs `bytes` and
// `thiserror`), so the fuzzer neither builds nor depends on the rest of the broker.
#[allow(dead_code, unused_imports)]
#[path = "../../broker/src/codec/mod.rs"]
mod codec;

use bytes::BytesMut;
use codec::{decode_packet, encode_packet, encoded_len, Packet, ProtocolVersion};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ] {
        let mut buf = BytesMut::from(data);
        // Decode packets until the input runs out or is refused.
        while let Ok(Some(packet)) = decode_packet(&mut buf, version, MAX) {
            let v = match &packet {
                Packet::Connect(c) => c.protocol,
                _ => version,
            };
            let mut out = BytesMut::new();
            encode_packet(&packet, v, &mut out).expect("a decoded packet encodes");
            assert_eq!(out.len(), encoded_len(&packet, v));
            let again = decode_packet(&mut out, v, MAX);
            assert_eq!(again, Ok(Some(packet)), "round trip");
            assert!(out.is_empty());
        }
    }
});
