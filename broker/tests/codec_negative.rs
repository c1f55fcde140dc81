//! Negative tests: each validation rule of the decoder, with the exact error and the v5
//! reason code it maps to.

// In a `codec` module so that `cargo test -p rookery codec` selects these tests.
mod codec {
    use bytes::BytesMut;
    use rookery::codec::*;

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn decode(bytes: &[u8], v: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
        decode_packet(&mut BytesMut::from(bytes), v, 1 << 20)
    }

    /// Wraps a body in a fixed header with the right (one-byte) Remaining Length.
    fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        assert!(body.len() < 128);
        let mut out = vec![first, body.len() as u8];
        out.extend_from_slice(body);
        out
    }

    #[track_caller]
    fn malformed(bytes: &[u8], v: ProtocolVersion) {
        match decode(bytes, v) {
            Err(e @ DecodeError::Malformed(_)) => assert_eq!(e.reason_code(), 0x81),
            other => panic!("expected Malformed, got {other:?} for {bytes:02X?}"),
        }
    }

    #[track_caller]
    fn protocol_error(bytes: &[u8], v: ProtocolVersion) {
        match decode(bytes, v) {
            Err(e @ DecodeError::Protocol(_)) => assert_eq!(e.reason_code(), 0x82),
            other => panic!("expected Protocol, got {other:?} for {bytes:02X?}"),
        }
    }

    #[track_caller]
    fn ok(bytes: &[u8], v: ProtocolVersion) -> Packet {
        match decode(bytes, v) {
            Ok(Some(p)) => p,
            other => panic!("expected a packet, got {other:?} for {bytes:02X?}"),
        }
    }

    /// A v5 packet body: `head`, then a property list, then `tail`.
    fn with_props(head: &[u8], props: &[u8], tail: &[u8]) -> Vec<u8> {
        let mut body = head.to_vec();
        assert!(props.len() < 128);
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(tail);
        body
    }

    fn connect_body(level_name: (&[u8], u8), flags: u8, payload: &[u8]) -> Vec<u8> {
        let (name, level) = level_name;
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, flags, 0, 60]);
        if level == 5 {
            body.push(0); // no properties
        }
        body.extend_from_slice(payload);
        body
    }

    const MQTT4: (&[u8], u8) = (b"MQTT", 4);
    const MQTT5: (&[u8], u8) = (b"MQTT", 5);
    const CID: &[u8] = &[0, 1, b'c'];

    #[test]
    fn remaining_length_more_than_four_bytes_is_malformed() {
        malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V311);
        // Four continuation bytes are refused before the fifth arrives.
        malformed(&[0x30, 0x80, 0x80, 0x80, 0x80], V5);
        // Non-minimal encoding [MQTT-1.5.5-1].
        malformed(&[0xC0, 0x80, 0x00], V5);
    }

    #[test]
    fn reserved_packet_type_and_flags() {
        malformed(&[0x00, 0x00], V311);
        // AUTH does not exist before 5.0.
        malformed(&[0xF0, 0x00], V311);
        malformed(&[0xF0, 0x00], V31);
        // PUBREL, SUBSCRIBE, UNSUBSCRIBE must have 0010 [MQTT-3.6.1-1], [MQTT-3.8.1-1],
        // [MQTT-3.10.1-1].
        for t in [0x60u8, 0x80, 0xA0] {
            for flags in [0x0u8, 0x1, 0x3, 0x4, 0x8, 0xF] {
                malformed(&[t | flags, 0x02, 0x00, 0x01], V311);
                malformed(&[t | flags, 0x02, 0x00, 0x01], V5);
            }
        }
        // MQTT 3.1 allowed DUP on their resend.
        assert!(matches!(
            ok(&[0x6A, 0x02, 0x00, 0x01], V31),
            Packet::PubRel(_)
        ));
        malformed(&[0x6A, 0x02, 0x00, 0x01], V311);
        // Every other type: flags 0 [MQTT-2.2.2-1].
        for t in [
            0x10u8, 0x20, 0x40, 0x50, 0x70, 0x90, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0,
        ] {
            for flags in [0x1u8, 0x2, 0x4, 0x8] {
                malformed(&[t | flags, 0x00], V5);
            }
        }
        // Checked before the body arrives.
        malformed(&[0xC1], V311);
    }

    #[test]
    fn publish_flags() {
        // QoS 3 [MQTT-3.3.1-4], before the body arrives.
        malformed(&[0x36], V311);
        malformed(&packet(0x36, &[0, 1, b'a', 0, 1]), V5);
        // DUP with QoS 0 [MQTT-3.3.1-2].
        malformed(&packet(0x38, &[0, 1, b'a']), V311);
        // Packet id 0 with QoS > 0 [MQTT-2.3.1-1].
        protocol_error(&packet(0x32, &[0, 1, b'a', 0, 0]), V311);
        protocol_error(&packet(0x34, &[0, 1, b'a', 0, 0, 0]), V5);
        // Truncated packet id.
        malformed(&packet(0x32, &[0, 1, b'a', 0]), V311);
    }

    #[test]
    fn publish_topic_rules() {
        let topic_err = |bytes: &[u8], v| match decode(bytes, v) {
            Err(e @ DecodeError::InvalidTopic(_)) => assert_eq!(e.reason_code(), 0x90),
            other => panic!("expected InvalidTopic, got {other:?}"),
        };
        // Wildcards [MQTT-3.3.2-2].
        topic_err(&packet(0x30, &[0, 3, b'a', b'/', b'+']), V311);
        topic_err(&packet(0x30, &[0, 1, b'#']), V5);
        // Empty topic: invalid in 3.x [MQTT-4.7.3-1]...
        topic_err(&packet(0x30, &[0, 0, b'x']), V311);
        topic_err(&packet(0x30, &[0, 0, b'x']), V31);
        // ... allowed in v5, where a topic alias stands for it (3.3.2.1).
        let aliased = with_props(&[0, 0], &[0x23, 0, 5], b"x");
        assert!(
            matches!(ok(&packet(0x30, &aliased), V5), Packet::Publish(p) if p.topic.is_empty())
        );
        // Without one it is still decoded: the alias check needs connection state.
        assert!(
            matches!(ok(&packet(0x30, &[0, 0, 0, b'x']), V5), Packet::Publish(p) if p.topic.is_empty())
        );
        // Invalid UTF-8 and U+0000 [MQTT-1.5.4-1], [MQTT-1.5.4-2].
        malformed(&packet(0x30, &[0, 2, 0xC3, 0x28]), V311);
        malformed(&packet(0x30, &[0, 2, b'a', 0]), V311);
        // Topic longer than the packet.
        malformed(&packet(0x30, &[0, 9, b'a']), V311);
    }

    #[test]
    fn connect_protocol_name_and_level() {
        let unsupported = |bytes: &[u8], level| match decode(bytes, V311) {
            Err(e @ DecodeError::UnsupportedProtocol(l)) => {
                assert_eq!(l, level);
                assert_eq!(e.reason_code(), 0x84);
            }
            other => panic!("expected UnsupportedProtocol, got {other:?}"),
        };
        unsupported(&packet(0x10, &connect_body((b"MQTT", 6), 2, CID)), 6);
        unsupported(&packet(0x10, &connect_body((b"MQTT", 3), 2, CID)), 3);
        unsupported(&packet(0x10, &connect_body((b"MQIsdp", 4), 2, CID)), 4);
        unsupported(&packet(0x10, &connect_body((b"HTTP", 4), 2, CID)), 4);
        // Truncated before the level.
        malformed(&packet(0x10, &[0, 4, b'M', b'Q', b'T', b'T']), V311);
    }

    #[test]
    fn connect_flags() {
        // Reserved bit [MQTT-3.1.2-3].
        malformed(&packet(0x10, &connect_body(MQTT4, 0x03, CID)), V311);
        malformed(&packet(0x10, &connect_body(MQTT5, 0x01, CID)), V5);
        // Will QoS / retain without will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13].
        malformed(&packet(0x10, &connect_body(MQTT4, 0x08, CID)), V311);
        malformed(&packet(0x10, &connect_body(MQTT4, 0x20, CID)), V311);
        malformed(&packet(0x10, &connect_body(MQTT5, 0x10, CID)), V5);
        // Will QoS 3.
        let will = [0, 1, b'c', 0, 1, b't', 0, 0];
        malformed(&packet(0x10, &connect_body(MQTT4, 0x1C, &will)), V311);
        assert!(matches!(
            ok(&packet(0x10, &connect_body(MQTT4, 0x14, &will)), V311),
            Packet::Connect(c) if c.will.as_ref().unwrap().qos == QoS::ExactlyOnce
        ));
        // Password without user name: protocol error in 3.x [MQTT-3.1.2-22], fine in v5.
        let pw = [0, 1, b'c', 0, 2, 0xFF, 0x00];
        protocol_error(&packet(0x10, &connect_body(MQTT4, 0x40, &pw)), V311);
        protocol_error(&packet(0x10, &connect_body((b"MQIsdp", 3), 0x40, &pw)), V31);
        let c = ok(&packet(0x10, &connect_body(MQTT5, 0x40, &pw)), V5);
        // Passwords are binary: 0xFF is not UTF-8.
        assert!(
            matches!(c, Packet::Connect(c) if c.password.as_deref() == Some(&[0xFF, 0x00][..]))
        );
    }

    #[test]
    fn connect_must_consume_exactly_the_remaining_length() {
        let mut payload = CID.to_vec();
        payload.push(0);
        malformed(&packet(0x10, &connect_body(MQTT4, 0x02, &payload)), V311);
        // Missing user name announced by the flags.
        malformed(&packet(0x10, &connect_body(MQTT4, 0x82, CID)), V311);
        // Invalid client id and user name strings.
        malformed(
            &packet(0x10, &connect_body(MQTT4, 0x02, &[0, 1, 0xFF])),
            V311,
        );
        malformed(
            &packet(0x10, &connect_body(MQTT4, 0x82, &[0, 1, b'c', 0, 1, 0])),
            V311,
        );
        // Will topic must be a valid topic name.
        let will = [0, 1, b'c', 0, 1, b'#', 0, 0];
        assert!(matches!(
            decode(&packet(0x10, &connect_body(MQTT4, 0x04, &will)), V311),
            Err(DecodeError::InvalidTopic(_))
        ));
    }

    #[test]
    fn subscribe_rules() {
        // At least one filter [MQTT-3.8.3-3].
        protocol_error(&packet(0x82, &[0, 1]), V311);
        protocol_error(&packet(0x82, &[0, 1, 0]), V5);
        // Packet id 0 [MQTT-2.3.1-1].
        protocol_error(&packet(0x82, &[0, 0, 0, 1, b'a', 0]), V311);
        // 3.x: upper 6 bits of the requested QoS byte are reserved [MQTT-3.8.3-4].
        malformed(&packet(0x82, &[0, 1, 0, 1, b'a', 0x04]), V311);
        malformed(&packet(0x82, &[0, 1, 0, 1, b'a', 0x03]), V311);
        // v5: reserved bits 6-7 [MQTT-3.8.3-5], QoS 3, retain handling 3.
        malformed(&packet(0x82, &[0, 1, 0, 0, 1, b'a', 0x40]), V5);
        malformed(&packet(0x82, &[0, 1, 0, 0, 1, b'a', 0x80]), V5);
        malformed(&packet(0x82, &[0, 1, 0, 0, 1, b'a', 0x03]), V5);
        malformed(&packet(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]), V5);
        assert!(matches!(
            ok(&packet(0x82, &[0, 1, 0, 0, 1, b'a', 0x2E]), V5),
            Packet::Subscribe(_)
        ));
        // No Local on a shared subscription [MQTT-3.8.3-4].
        let mut shared = vec![0, 1, 0, 0, 9];
        shared.extend_from_slice(b"$share/g/");
        shared[4] = 10;
        shared.extend_from_slice(&[b'a', 0x04]);
        protocol_error(&packet(0x82, &shared), V5);
        // Invalid filters: 0x8F.
        for filter in [&b"a/#/b"[..], b"a+", b"", b"$share/g"] {
            let mut body = vec![0, 1, 0, filter.len() as u8];
            body.extend_from_slice(filter);
            body.push(0);
            match decode(&packet(0x82, &body), V311) {
                Err(e @ DecodeError::InvalidTopicFilter(_)) => assert_eq!(e.reason_code(), 0x8F),
                other => panic!("expected InvalidTopicFilter, got {other:?}"),
            }
        }
        // A filter truncated by the Remaining Length, missing options byte.
        malformed(&packet(0x82, &[0, 1, 0, 1, b'a']), V311);
    }

    #[test]
    fn unsubscribe_rules() {
        protocol_error(&packet(0xA2, &[0, 1]), V311);
        protocol_error(&packet(0xA2, &[0, 1, 0]), V5);
        malformed(&packet(0xA2, &[0, 1, 0, 2, b'a']), V311);
        assert!(matches!(
            decode(&packet(0xA2, &[0, 1, 0, 2, b'a', b'#']), V311),
            Err(DecodeError::InvalidTopicFilter(_))
        ));
    }

    #[test]
    fn fixed_size_packets_refuse_trailing_bytes() {
        malformed(&[0xC0, 0x01, 0x00], V311);
        malformed(&[0xD0, 0x01, 0x00], V5);
        malformed(&[0xE0, 0x01, 0x00], V311);
        malformed(&packet(0x40, &[0, 1, 0]), V311);
        malformed(&packet(0xB0, &[0, 1, 0]), V311);
        malformed(&packet(0x20, &[0, 0, 0]), V311);
        malformed(&packet(0x40, &[0, 1, 0, 0, 0]), V5);
        malformed(&packet(0xE0, &[0, 0, 0]), V5);
        malformed(&packet(0xF0, &[0, 0, 0]), V5);
        // Too short.
        malformed(&packet(0x40, &[0]), V311);
        malformed(&packet(0x20, &[0]), V5);
        // v5 CONNACK needs its Property Length.
        malformed(&packet(0x20, &[0, 0]), V5);
    }

    #[test]
    fn ack_rules() {
        // CONNACK reserved flag bits [MQTT-3.2.2-1], return codes, session present with error.
        malformed(&packet(0x20, &[0x02, 0]), V311);
        protocol_error(&packet(0x20, &[0, 6]), V311);
        protocol_error(&packet(0x20, &[1, 5]), V311);
        protocol_error(&packet(0x20, &[1, 0x87, 0]), V5);
        protocol_error(&packet(0x20, &[0, 0x01, 0]), V5);
        // Packet id 0 in acks.
        for t in [0x40u8, 0x50, 0x62, 0x70, 0xB0] {
            protocol_error(&packet(t, &[0, 0]), V311);
        }
        // Reason codes not in the packet's table.
        protocol_error(&packet(0x40, &[0, 1, 0x92]), V5);
        protocol_error(&packet(0x62, &[0, 1, 0x10]), V5);
        protocol_error(&packet(0xE0, &[0x91]), V5);
        protocol_error(&packet(0xF0, &[0x01, 0]), V5);
        // SUBACK: at least one code, valid codes.
        protocol_error(&packet(0x90, &[0, 1]), V311);
        protocol_error(&packet(0x90, &[0, 1, 0x03]), V311);
        protocol_error(&packet(0x90, &[0, 1, 0x87]), V311);
        protocol_error(&packet(0x90, &[0, 1, 0, 0x11]), V5);
        protocol_error(&packet(0xB0, &[0, 1, 0]), V5);
        protocol_error(&packet(0xB0, &[0, 1, 0, 0x10]), V5);
    }

    #[test]
    fn property_rules() {
        let publish = |props: &[u8]| packet(0x30, &with_props(&[0, 1, b't'], props, b"p"));
        // Unknown identifier: malformed.
        malformed(&publish(&[0x04, 0]), V5);
        malformed(&publish(&[0x80, 0x01, 0]), V5);
        // Not allowed in this packet type: malformed (2.2.2.2).
        malformed(&publish(&[0x11, 0, 0, 0, 1]), V5);
        malformed(
            &packet(0x40, &with_props(&[0, 1, 0], &[0x23, 0, 1], &[])),
            V5,
        );
        // Duplicates of single-valued properties [MQTT-2.2.2-2].
        protocol_error(&publish(&[0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2]), V5);
        protocol_error(&publish(&[0x23, 0, 1, 0x23, 0, 1]), V5);
        // User properties and (in PUBLISH) subscription identifiers repeat.
        let p = ok(
            &publish(&[
                0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0, 0x0B, 1, 0x0B, 2,
            ]),
            V5,
        );
        assert!(matches!(&p, Packet::Publish(p)
        if p.properties.user_properties.len() == 2 && p.properties.subscription_identifiers == [1, 2]));
        // ... but only one subscription identifier in SUBSCRIBE.
        let sub = |props: &[u8]| packet(0x82, &with_props(&[0, 1], props, &[0, 1, b'a', 0]));
        assert!(matches!(ok(&sub(&[0x0B, 7]), V5), Packet::Subscribe(_)));
        protocol_error(&sub(&[0x0B, 7, 0x0B, 8]), V5);
        // Subscription identifier 0; over-long VBI.
        protocol_error(&sub(&[0x0B, 0]), V5);
        malformed(&sub(&[0x0B, 0x80, 0x80, 0x80, 0x80, 0x01]), V5);
        // Receive maximum 0, maximum packet size 0, topic alias 0.
        let connect = |props: &[u8]| {
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, props.len() as u8];
            body.extend_from_slice(props);
            body.extend_from_slice(CID);
            packet(0x10, &body)
        };
        assert!(matches!(
            ok(&connect(&[0x21, 0, 1]), V311),
            Packet::Connect(_)
        ));
        protocol_error(&connect(&[0x21, 0, 0]), V311);
        protocol_error(&connect(&[0x27, 0, 0, 0, 0]), V311);
        protocol_error(&publish(&[0x23, 0, 0]), V5);
        // Byte flags that must be 0 or 1.
        protocol_error(&publish(&[0x01, 2]), V5);
        protocol_error(&connect(&[0x17, 2]), V311);
        protocol_error(&connect(&[0x19, 2]), V311);
        let connack = |props: &[u8]| packet(0x20, &with_props(&[0, 0], props, &[]));
        protocol_error(&connack(&[0x24, 2]), V5);
        protocol_error(&connack(&[0x25, 2]), V5);
        protocol_error(&connack(&[0x28, 2]), V5);
        protocol_error(&connack(&[0x29, 2]), V5);
        protocol_error(&connack(&[0x2A, 2]), V5);
        // Authentication data without a method.
        protocol_error(&connect(&[0x16, 0, 0]), V311);
        // Response topic with wildcards [MQTT-3.3.2-14].
        protocol_error(&publish(&[0x08, 0, 1, b'#']), V5);
        // Property length exceeding the remaining length: malformed.
        malformed(&packet(0x30, &[0, 1, b't', 10, 0x01, 0]), V5);
        // A property cut by the property length.
        malformed(&publish(&[0x02, 0, 0]), V5);
        // Strings in properties follow 1.5.4.
        malformed(&publish(&[0x03, 0, 1, 0]), V5);
        malformed(&publish(&[0x26, 0, 1, b'k', 0, 1, 0xFF]), V5);
    }

    #[test]
    fn too_large_is_refused_before_the_body() {
        // PUBLISH announcing 1000 bytes with a 100-byte limit; only the header has arrived.
        let mut buf = BytesMut::from(&[0x30, 0xE8, 0x07][..]);
        let err = decode_packet(&mut buf, V5, 100).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TooLarge {
                size: 1003,
                max: 100
            }
        );
        assert_eq!(err.reason_code(), 0x95);
        // The limit includes the fixed header: a 2-byte PINGREQ needs max >= 2.
        assert!(decode_packet(&mut BytesMut::from(&[0xC0, 0][..]), V5, 1).is_err());
        assert!(decode_packet(&mut BytesMut::from(&[0xC0, 0][..]), V5, 2).is_ok());
    }
}
