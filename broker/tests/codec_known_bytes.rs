//! Known-bytes tests: byte layouts from the figures and examples of the MQTT 3.1.1 and 5.0
//! specifications, decoded and re-encoded.

// In a `codec` module so that `cargo test -p rookery codec` selects these tests.
mod codec {
    use bytes::{Bytes, BytesMut};
    use rookery::codec::*;

    const V31: ProtocolVersion = ProtocolVersion::V31;
    const V311: ProtocolVersion = ProtocolVersion::V311;
    const V5: ProtocolVersion = ProtocolVersion::V5;

    fn decode(bytes: &[u8], version: ProtocolVersion) -> Packet {
        let mut buf = BytesMut::from(bytes);
        let packet = decode_packet(&mut buf, version, usize::MAX)
            .expect("decodes")
            .expect("complete");
        assert!(buf.is_empty(), "whole packet consumed");
        packet
    }

    fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_packet(packet, version, &mut buf).expect("encodes");
        assert_eq!(buf.len(), encoded_len(packet, version));
        buf.to_vec()
    }

    /// Decodes `bytes`, checks the packet, and checks that it encodes back to `bytes`.
    fn both_ways(bytes: &[u8], version: ProtocolVersion, expected: &Packet) {
        assert_eq!(&decode(bytes, version), expected);
        assert_eq!(encode(expected, version), bytes);
    }

    fn s(x: &str) -> MqttStr {
        MqttStr::from(x)
    }

    #[test]
    fn pings_and_disconnect_are_two_bytes() {
        for v in [V31, V311, V5] {
            both_ways(&[0xC0, 0x00], v, &Packet::PingReq);
            both_ways(&[0xD0, 0x00], v, &Packet::PingResp);
            both_ways(&[0xE0, 0x00], v, &Packet::Disconnect(Disconnect::default()));
        }
    }

    /// 3.1.1 figure 3.6 (variable header example) completed with a payload: will flag, will
    /// QoS 1, user name, password, clean session, keep alive 10.
    #[test]
    fn connect_311_figure_3_6() {
        let mut bytes = vec![0x10, 0];
        bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xCE, 0x00, 0x0A]);
        bytes.extend_from_slice(&[0x00, 0x02, b'i', b'd']); // client id
        bytes.extend_from_slice(&[0x00, 0x01, b't']); // will topic
        bytes.extend_from_slice(&[0x00, 0x02, 0xFF, 0x00]); // will payload (binary)
        bytes.extend_from_slice(&[0x00, 0x01, b'u']); // user name
        bytes.extend_from_slice(&[0x00, 0x03, 0x00, 0xFF, 0x80]); // password (binary)
        bytes[1] = (bytes.len() - 2) as u8;
        let expected = Packet::Connect(Box::new(Connect {
            protocol: V311,
            clean_start: true,
            keep_alive: 10,
            client_id: s("id"),
            will: Some(LastWill {
                topic: s("t"),
                payload: Bytes::from_static(&[0xFF, 0x00]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(&[0x00, 0xFF, 0x80])),
            properties: Properties::default(),
        }));
        // The connection's version is irrelevant: CONNECT carries its own.
        assert_eq!(decode(&bytes, V5), expected);
        both_ways(&bytes, V311, &expected);
    }

    /// 5.0 §3.1.2.12 variable header example: user name, password, clean start, keep alive 10,
    /// properties length 5 with session expiry interval 10.
    #[test]
    fn connect_5_variable_header_example() {
        let mut bytes = vec![0x10, 0];
        bytes.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC2, 0x00, 0x0A]);
        bytes.extend_from_slice(&[0x05, 0x11, 0x00, 0x00, 0x00, 0x0A]);
        bytes.extend_from_slice(&[0x00, 0x00]); // empty client id
        bytes.extend_from_slice(&[0x00, 0x01, b'u', 0x00, 0x01, b'p']);
        bytes[1] = (bytes.len() - 2) as u8;
        let expected = Packet::Connect(Box::new(Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 10,
            client_id: s(""),
            will: None,
            username: Some(s("u")),
            password: Some(Bytes::from_static(b"p")),
            properties: Properties {
                session_expiry_interval: Some(10),
                ..Properties::default()
            },
        }));
        both_ways(&bytes, V5, &expected);
    }

    #[test]
    fn connect_31_uses_mqisdp_level_3() {
        let bytes = [
            0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C,
            0x00, 0x03, b'a', b'b', b'c',
        ];
        let expected = Packet::Connect(Box::new(Connect {
            protocol: V31,
            clean_start: true,
            keep_alive: 60,
            client_id: s("abc"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        }));
        both_ways(&bytes, V31, &expected);
    }

    /// 3.1.1 figure 3.11 / 5.0 §3.3.2.3: topic "a/b", packet identifier 10.
    #[test]
    fn publish_variable_header_example() {
        let mut bytes = vec![0x32, 0x09, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A];
        bytes.extend_from_slice(b"hi");
        let expected = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: s("a/b"),
            packet_id: 10,
            properties: Properties::default(),
            payload: Bytes::from_static(b"hi"),
        });
        both_ways(&bytes, V311, &expected);
        // v5: same plus a zero Property Length.
        let v5 = [
            0x32, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x0A, 0x00, b'h', b'i',
        ];
        both_ways(&v5, V5, &expected);
    }

    #[test]
    fn publish_flags_dup_retain_qos2() {
        let bytes = [0x3D, 0x05, 0x00, 0x01, b'x', 0x12, 0x34];
        let expected = Packet::Publish(Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: s("x"),
            packet_id: 0x1234,
            properties: Properties::default(),
            payload: Bytes::new(),
        });
        both_ways(&bytes, V311, &expected);
    }

    /// Remaining Length boundaries of table 2.4 (3.1.1) / 1.5.5 (5.0), through a QoS 0 PUBLISH
    /// with topic "a" (3 bytes of variable header) and a payload of `n - 3` bytes.
    #[test]
    fn remaining_length_boundaries() {
        let cases: [(usize, &[u8]); 7] = [
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
            (268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
        ];
        for (n, len_bytes) in cases {
            let publish = Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: s("a"),
                packet_id: 0,
                properties: Properties::default(),
                payload: Bytes::from(vec![0u8; n - 3]),
            });
            let mut buf = BytesMut::new();
            encode_packet(&publish, V311, &mut buf).unwrap();
            assert_eq!(buf.len(), 1 + len_bytes.len() + n);
            assert_eq!(encoded_len(&publish, V311), buf.len());
            assert_eq!(&buf[1..1 + len_bytes.len()], len_bytes, "{n}");
            // Missing one byte: incomplete. Then complete.
            let last = buf.split_off(buf.len() - 1);
            assert_eq!(decode_packet(&mut buf, V311, usize::MAX), Ok(None));
            buf.unsplit(last);
            let decoded = decode_packet(&mut buf, V311, usize::MAX).unwrap().unwrap();
            assert_eq!(decoded, publish);
        }
        // Remaining Length 0 is PINGREQ's.
        assert_eq!(encode(&Packet::PingReq, V5), [0xC0, 0x00]);
    }

    #[test]
    fn remaining_length_above_the_maximum_cannot_be_encoded() {
        let publish = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: s("a"),
            packet_id: 0,
            properties: Properties::default(),
            payload: Bytes::from(vec![0u8; 268_435_456 - 3]),
        });
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_packet(&publish, V311, &mut buf),
            Err(EncodeError::TooLarge(268_435_456))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn v5_pub_responses_use_the_short_form() {
        // Reason 0x00 and no properties: just the packet id [MQTT-3.4.2-1 note].
        both_ways(
            &[0x40, 0x02, 0x00, 0x07],
            V5,
            &Packet::PubAck(PubResponse::new(7, 0)),
        );
        both_ways(
            &[0x50, 0x02, 0x00, 0x07],
            V5,
            &Packet::PubRec(PubResponse::new(7, 0)),
        );
        both_ways(
            &[0x62, 0x02, 0x00, 0x07],
            V5,
            &Packet::PubRel(PubResponse::new(7, 0)),
        );
        both_ways(
            &[0x70, 0x02, 0x00, 0x07],
            V5,
            &Packet::PubComp(PubResponse::new(7, 0)),
        );
        // A reason code without properties: no Property Length.
        both_ways(
            &[0x40, 0x03, 0x00, 0x07, 0x10],
            V5,
            &Packet::PubAck(PubResponse::new(7, 0x10)),
        );
        // Remaining length 4 with a zero Property Length decodes the same.
        assert_eq!(
            decode(&[0x40, 0x04, 0x00, 0x07, 0x10, 0x00], V5),
            Packet::PubAck(PubResponse::new(7, 0x10))
        );
        // With a reason string.
        let mut with_props = PubResponse::new(7, 0x92);
        with_props.properties.reason_string = Some(s("no"));
        both_ways(
            &[
                0x70, 0x09, 0x00, 0x07, 0x92, 0x05, 0x1F, 0x00, 0x02, b'n', b'o',
            ],
            V5,
            &Packet::PubComp(with_props),
        );
        // 3.x: always just the id; a v5 reason code is dropped.
        assert_eq!(
            encode(&Packet::PubAck(PubResponse::new(7, 0x80)), V311),
            [0x40, 0x02, 0x00, 0x07]
        );
    }

    #[test]
    fn v5_disconnect_and_auth_short_forms() {
        both_ways(
            &[0xE0, 0x00],
            V5,
            &Packet::Disconnect(Disconnect::default()),
        );
        let d = Disconnect {
            reason_code: 0x04,
            properties: Properties::default(),
        };
        both_ways(&[0xE0, 0x01, 0x04], V5, &Packet::Disconnect(d.clone()));
        assert_eq!(decode(&[0xE0, 0x02, 0x04, 0x00], V5), Packet::Disconnect(d));
        let d = Disconnect {
            reason_code: 0x8E,
            properties: Properties {
                session_expiry_interval: Some(0),
                ..Properties::default()
            },
        };
        both_ways(
            &[0xE0, 0x07, 0x8E, 0x05, 0x11, 0x00, 0x00, 0x00, 0x00],
            V5,
            &Packet::Disconnect(d),
        );
        // 3.x DISCONNECT is just two bytes, whatever the reason.
        let d = Packet::Disconnect(Disconnect {
            reason_code: 0x8E,
            properties: Properties::default(),
        });
        assert_eq!(encode(&d, V311), [0xE0, 0x00]);

        both_ways(&[0xF0, 0x00], V5, &Packet::Auth(Auth::default()));
        let a = Auth {
            reason_code: 0x18,
            properties: Properties {
                authentication_method: Some(s("m")),
                ..Properties::default()
            },
        };
        both_ways(
            &[0xF0, 0x06, 0x18, 0x04, 0x15, 0x00, 0x01, b'm'],
            V5,
            &Packet::Auth(a.clone()),
        );
        let mut buf = BytesMut::new();
        assert_eq!(
            encode_packet(&Packet::Auth(a), V311, &mut buf),
            Err(EncodeError::NotInVersion)
        );
    }

    #[test]
    fn connack_codes_map_between_versions() {
        let ack = |code| {
            Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties: Properties::default(),
            })
        };
        for (v3, v5) in [
            (0u8, 0x00u8),
            (1, 0x84),
            (2, 0x85),
            (3, 0x88),
            (4, 0x86),
            (5, 0x87),
        ] {
            both_ways(&[0x20, 0x02, 0x00, v3], V311, &ack(v5));
        }
        for (v5, v3) in [
            (0x89u8, 3u8),
            (0x8A, 5),
            (0x8C, 5),
            (0x8B, 3),
            (0x81, 5),
            (0x9F, 3),
        ] {
            assert_eq!(encode(&ack(v5), V311), [0x20, 0x02, 0x00, v3]);
        }
        both_ways(&[0x20, 0x03, 0x00, 0x8C, 0x00], V5, &ack(0x8C));
        // Session present.
        let present = Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: 0,
            properties: Properties::default(),
        });
        both_ways(&[0x20, 0x02, 0x01, 0x00], V311, &present);
        // MQTT 3.1 has no session present flag.
        assert_eq!(encode(&present, V31), [0x20, 0x02, 0x00, 0x00]);
    }

    #[test]
    fn subscribe_and_suback_examples() {
        // 3.1.1 figure 3.22: "a/b" QoS 1, "c/d" QoS 2, packet id 10.
        let bytes = [
            0x82, 0x0E, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/',
            b'd', 0x02,
        ];
        let opts = |qos| SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 10,
            filters: vec![
                (s("a/b"), opts(QoS::AtLeastOnce)),
                (s("c/d"), opts(QoS::ExactlyOnce)),
            ],
            properties: Properties::default(),
        });
        both_ways(&bytes, V311, &sub);
        // v5 options byte: retain handling 2, retain as published, no local, QoS 1 = 0x2D.
        let v5 = [0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'#', 0x2D];
        let sub5 = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![(
                s("#"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            )],
            properties: Properties::default(),
        });
        both_ways(&v5, V5, &sub5);
        // 3.x drops the v5 options.
        assert_eq!(
            encode(&sub5, V311),
            [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x01]
        );

        // 3.1.1 figure 3.26: SUBACK 0, 1, 2, 0x80.
        let suback = Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![0x00, 0x01, 0x02, 0x80],
            properties: Properties::default(),
        });
        both_ways(
            &[0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80],
            V311,
            &suback,
        );
        let failures = Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![0x87, 0x01, 0xA2],
            properties: Properties::default(),
        });
        assert_eq!(
            encode(&failures, V311),
            [0x90, 0x05, 0x00, 0x0A, 0x80, 0x01, 0x80]
        );
        both_ways(
            &[0x90, 0x06, 0x00, 0x0A, 0x00, 0x87, 0x01, 0xA2],
            V5,
            &failures,
        );
    }

    #[test]
    fn unsubscribe_and_unsuback_examples() {
        // 3.1.1 figure 3.30: "a/b", "c/d".
        let bytes = [
            0xA2, 0x0C, 0x00, 0x0A, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x03, b'c', b'/', b'd',
        ];
        let unsub = Packet::Unsubscribe(Unsubscribe {
            packet_id: 10,
            filters: vec![s("a/b"), s("c/d")],
            properties: Properties::default(),
        });
        both_ways(&bytes, V311, &unsub);
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: 10,
            reason_codes: vec![0x00, 0x11],
            properties: Properties::default(),
        });
        both_ways(&[0xB0, 0x05, 0x00, 0x0A, 0x00, 0x00, 0x11], V5, &unsuback);
        // 3.x UNSUBACK has no reason codes.
        assert_eq!(encode(&unsuback, V311), [0xB0, 0x02, 0x00, 0x0A]);
    }

    #[test]
    fn incomplete_input_is_not_an_error() {
        let full = [0x30, 0x05, 0x00, 0x01, b'x', b'h', b'i'];
        for n in 0..full.len() {
            let mut buf = BytesMut::from(&full[..n]);
            assert_eq!(decode_packet(&mut buf, V311, 1024), Ok(None), "{n}");
            assert_eq!(buf.len(), n, "nothing consumed");
        }
        // Several packets in one buffer come out one by one.
        let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0, 0x00, 0xE0][..]);
        assert_eq!(
            decode_packet(&mut buf, V311, 1024),
            Ok(Some(Packet::PingReq))
        );
        assert_eq!(
            decode_packet(&mut buf, V311, 1024),
            Ok(Some(Packet::PingResp))
        );
        assert_eq!(decode_packet(&mut buf, V311, 1024), Ok(None));
    }

    #[test]
    fn decoded_strings_share_the_receive_buffer() {
        let mut buf = BytesMut::from(&[0x30, 0x07, 0x00, 0x03, b'a', b'/', b'b', b'h', b'i'][..]);
        let start = buf.as_ptr() as usize;
        let Some(Packet::Publish(p)) = decode_packet(&mut buf, V311, 1024).unwrap() else {
            panic!("not a publish");
        };
        assert_eq!(p.topic.as_bytes().as_ptr() as usize, start + 4);
        assert_eq!(p.payload.as_ptr() as usize, start + 7);
    }
}
