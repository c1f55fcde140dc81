//! Inputs from fuzzing (see fuzz/README.md), kept as regression tests, and a check that the
//! fuzzer's seed corpus (fuzz/seeds) still decodes, so the seeds keep steering the fuzzer
//! into every packet type.

// In a `codec` module so that `cargo test -p rookery codec` selects these tests.
mod codec {
    use bytes::BytesMut;
    use rookery::codec::*;

    const VERSIONS: [ProtocolVersion; 3] = [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ];

    /// What the fuzz target does with one input: decode for each version; every packet that
    /// decodes must re-encode to `encoded_len` bytes and decode back to itself.
    fn fuzz_one(data: &[u8]) -> usize {
        let mut decoded = 0;
        for version in VERSIONS {
            let mut buf = BytesMut::from(data);
            while let Ok(Some(packet)) = decode_packet(&mut buf, version, 1 << 20) {
                decoded += 1;
                let v = match &packet {
                    Packet::Connect(c) => c.protocol,
                    _ => version,
                };
                let mut out = BytesMut::new();
                encode_packet(&packet, v, &mut out).expect("a decoded packet encodes");
                assert_eq!(out.len(), encoded_len(&packet, v));
                assert_eq!(decode_packet(&mut out, v, 1 << 20), Ok(Some(packet)));
                assert!(out.is_empty());
            }
        }
        decoded
    }

    #[test]
    fn seed_corpus_decodes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/seeds exists") {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // Each seed is a valid packet stream for at least one version, consumed whole.
            let ok = VERSIONS.iter().any(|&v| {
                let mut buf = BytesMut::from(&data[..]);
                while let Ok(Some(_)) = decode_packet(&mut buf, v, 1 << 20) {}
                buf.is_empty()
            });
            assert!(ok, "seed {} does not decode", path.display());
            assert!(fuzz_one(&data) > 0);
            seen += 1;
        }
        assert!(seen >= 30, "only {seen} seeds");
    }

    /// Edge cases written while reviewing what the fuzzer explores: truncations at every
    /// field boundary and lengths that point past the end.
    #[test]
    fn edge_inputs_do_not_panic() {
        let inputs: &[&[u8]] = &[
            &[],
            &[0x30],
            &[0x30, 0xFF],
            &[0x30, 0xFF, 0xFF, 0xFF, 0x7F],
            &[0x30, 0x02, 0xFF, 0xFF],
            &[0x10, 0x02, 0x00, 0x04],
            &[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05],
            // v5 CONNECT whose property length runs past the packet.
            &[0x10, 0x0B, 0, 4, b'M', b'Q', b'T', b'T', 5, 0, 0, 0, 0x7F],
            // Property length VBI cut by the end of the packet.
            &[0x30, 0x04, 0, 1, b't', 0x80],
            // Subscription identifier VBI cut inside the property list.
            &[0x30, 0x06, 0, 1, b't', 0x02, 0x0B, 0x80],
            &[0x82, 0x03, 0, 1, 0x01],
            &[0xF0, 0x01, 0x00],
            &[0xE0, 0x01, 0x00],
            &[0xE0, 0x02, 0x00, 0x05],
        ];
        for input in inputs {
            fuzz_one(input);
        }
    }
}
