//! Property tests: arbitrary valid packets of every type and version survive
//! encode → decode unchanged, `encoded_len` matches what is written, packets can arrive a
//! byte at a time or several in one read, and arbitrary bytes never make the decoder panic.

// In a `codec` module so that `cargo test -p rookery codec` selects these tests.
mod codec {
    use bytes::{Bytes, BytesMut};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use rookery::codec::topic::validate_topic_filter;
    use rookery::codec::*;

    const VERSIONS: [ProtocolVersion; 3] = [
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ];

    fn version() -> impl Strategy<Value = ProtocolVersion> {
        prop::sample::select(&VERSIONS[..])
    }

    fn string() -> impl Strategy<Value = MqttStr> {
        prop_oneof![
            "[a-zA-Z0-9 _./-]{0,12}",
            // Any printable Unicode (no control characters, so no U+0000).
            "\\PC{0,6}",
        ]
        .prop_map(MqttStr::from)
    }

    fn topic_name() -> impl Strategy<Value = MqttStr> {
        "[a-z0-9é$/ ]{1,12}".prop_map(MqttStr::from)
    }

    fn topic_filter() -> impl Strategy<Value = MqttStr> {
        (
            any::<bool>(),
            vec(prop_oneof!["[a-zé0-9]{0,3}", Just("+".to_string())], 1..4),
            any::<bool>(),
        )
            .prop_map(|(shared, levels, hash)| {
                let mut f = levels.join("/");
                if hash {
                    f.push_str(if f.is_empty() { "#" } else { "/#" });
                }
                if shared {
                    f = format!("$share/grp/{f}");
                }
                f
            })
            .prop_filter("valid filter", |f| validate_topic_filter(f).is_ok())
            .prop_map(MqttStr::from)
    }

    fn binary() -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..16).prop_map(Bytes::from)
    }

    fn flag() -> impl Strategy<Value = Option<u8>> {
        option::of(0u8..=1)
    }

    /// Properties with every field filled at random; `for_packet` then keeps the allowed ones.
    fn any_properties() -> impl Strategy<Value = Properties> {
        let a = (
            flag(),
            option::of(any::<u32>()),
            option::of(string()),
            option::of(topic_name()),
            option::of(binary()),
            vec(1u32..=268_435_455, 0..3),
            option::of(any::<u32>()),
            option::of(string()),
            option::of(any::<u16>()),
        );
        let b = (
            option::of(string()),
            option::of(binary()),
            flag(),
            option::of(any::<u32>()),
            flag(),
            option::of(string()),
            option::of(string()),
            option::of(string()),
            option::of(1u16..),
        );
        let c = (
            option::of(any::<u16>()),
            option::of(1u16..),
            flag(),
            flag(),
            vec((string(), string()), 0..3),
            option::of(1u32..),
            flag(),
            flag(),
            flag(),
        );
        (a, b, c).prop_map(|(a, b, c)| Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: b.0,
            authentication_data: b.1,
            request_problem_information: b.2,
            will_delay_interval: b.3,
            request_response_information: b.4,
            response_information: b.5,
            server_reference: b.6,
            reason_string: b.7,
            receive_maximum: b.8,
            topic_alias_maximum: c.0,
            topic_alias: c.1,
            maximum_qos: c.2,
            retain_available: c.3,
            user_properties: c.4,
            maximum_packet_size: c.5,
            wildcard_subscription_available: c.6,
            subscription_identifier_available: c.7,
            shared_subscription_available: c.8,
        })
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Connect,
        Will,
        ConnAck,
        Publish,
        PubResp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        Disconnect,
        Auth,
    }

    fn keep<T>(ok: bool, v: Option<T>) -> Option<T> {
        if ok {
            v
        } else {
            None
        }
    }

    /// Keeps the properties MQTT 5.0 table 2-4 allows in `kind` (an independent copy of the
    /// table in the codec).
    fn for_packet(p: Properties, kind: Kind) -> Properties {
        use Kind::*;
        let is = |kinds: &[Kind]| kinds.contains(&kind);
        let message = is(&[Publish, Will]);
        let mut out = Properties {
            payload_format_indicator: keep(message, p.payload_format_indicator),
            message_expiry_interval: keep(message, p.message_expiry_interval),
            content_type: keep(message, p.content_type),
            response_topic: keep(message, p.response_topic),
            correlation_data: keep(message, p.correlation_data),
            subscription_identifiers: match kind {
                Publish => p.subscription_identifiers,
                Subscribe => p.subscription_identifiers.into_iter().take(1).collect(),
                _ => Vec::new(),
            },
            session_expiry_interval: keep(
                is(&[Connect, ConnAck, Disconnect]),
                p.session_expiry_interval,
            ),
            assigned_client_identifier: keep(is(&[ConnAck]), p.assigned_client_identifier),
            server_keep_alive: keep(is(&[ConnAck]), p.server_keep_alive),
            authentication_method: keep(is(&[Connect, ConnAck, Auth]), p.authentication_method),
            authentication_data: keep(is(&[Connect, ConnAck, Auth]), p.authentication_data),
            request_problem_information: keep(is(&[Connect]), p.request_problem_information),
            will_delay_interval: keep(is(&[Will]), p.will_delay_interval),
            request_response_information: keep(is(&[Connect]), p.request_response_information),
            response_information: keep(is(&[ConnAck]), p.response_information),
            server_reference: keep(is(&[ConnAck, Disconnect]), p.server_reference),
            reason_string: keep(
                is(&[ConnAck, PubResp, SubAck, UnsubAck, Disconnect, Auth]),
                p.reason_string,
            ),
            receive_maximum: keep(is(&[Connect, ConnAck]), p.receive_maximum),
            topic_alias_maximum: keep(is(&[Connect, ConnAck]), p.topic_alias_maximum),
            topic_alias: keep(is(&[Publish]), p.topic_alias),
            maximum_qos: keep(is(&[ConnAck]), p.maximum_qos),
            retain_available: keep(is(&[ConnAck]), p.retain_available),
            user_properties: p.user_properties,
            maximum_packet_size: keep(is(&[Connect, ConnAck]), p.maximum_packet_size),
            wildcard_subscription_available: keep(
                is(&[ConnAck]),
                p.wildcard_subscription_available,
            ),
            subscription_identifier_available: keep(
                is(&[ConnAck]),
                p.subscription_identifier_available,
            ),
            shared_subscription_available: keep(is(&[ConnAck]), p.shared_subscription_available),
        };
        // Authentication data needs an authentication method (3.1.2.11.10).
        if out.authentication_data.is_some() && out.authentication_method.is_none() {
            out.authentication_method = Some(MqttStr::from("SCRAM-SHA-1"));
        }
        out
    }

    fn properties(kind: Kind, v: ProtocolVersion) -> BoxedStrategy<Properties> {
        if v.is_v5() {
            any_properties()
                .prop_map(move |p| for_packet(p, kind))
                .boxed()
        } else {
            Just(Properties::default()).boxed()
        }
    }

    fn qos() -> impl Strategy<Value = QoS> {
        prop::sample::select(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][..])
    }

    fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        let will = option::of((
            topic_name(),
            binary(),
            qos(),
            any::<bool>(),
            properties(Kind::Will, v),
        ))
        .prop_map(|w| {
            w.map(|(topic, payload, qos, retain, properties)| LastWill {
                topic,
                payload,
                qos,
                retain,
                properties,
            })
        });
        (
            any::<bool>(),
            any::<u16>(),
            string(),
            will,
            option::of(string()),
            option::of(binary()),
            properties(Kind::Connect, v),
        )
            .prop_map(
                move |(
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                )| {
                    // 3.x: no password without a user name [MQTT-3.1.2-22].
                    let password = if v.is_v5() || username.is_some() {
                        password
                    } else {
                        None
                    };
                    Packet::Connect(Box::new(Connect {
                        protocol: v,
                        clean_start,
                        keep_alive,
                        client_id,
                        will,
                        username,
                        password,
                        properties,
                    }))
                },
            )
    }

    const CONNACK_V5: &[u8] = &[
        0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95,
        0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
    ];
    const CONNACK_V3: &[u8] = &[0x00, 0x84, 0x85, 0x88, 0x86, 0x87];
    const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
    const PUBREL: &[u8] = &[0x00, 0x92];
    const SUBACK_V5: &[u8] = &[
        0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
    ];
    const SUBACK_V3: &[u8] = &[0x00, 0x01, 0x02, 0x80];
    const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
    const DISCONNECT: &[u8] = &[
        0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94,
        0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
    ];

    fn code(codes: &'static [u8]) -> impl Strategy<Value = u8> {
        prop::sample::select(codes)
    }

    fn pub_response(v: ProtocolVersion, codes: &'static [u8]) -> BoxedStrategy<PubResponse> {
        if v.is_v5() {
            (1u16.., code(codes), properties(Kind::PubResp, v))
                .prop_map(|(packet_id, reason_code, properties)| PubResponse {
                    packet_id,
                    reason_code,
                    properties,
                })
                .boxed()
        } else {
            (1u16..).prop_map(|id| PubResponse::new(id, 0)).boxed()
        }
    }

    fn publish(v: ProtocolVersion) -> impl Strategy<Value = Publish> {
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            topic_name(),
            any::<bool>(),
            1u16..,
            properties(Kind::Publish, v),
            vec(any::<u8>(), 0..64),
        )
            .prop_map(
                move |(qos, dup, retain, topic, aliased, id, mut properties, payload)| {
                    // v5: an empty topic stands for a topic alias (3.3.2.1).
                    let topic = if v.is_v5() && aliased {
                        properties.topic_alias.get_or_insert(1);
                        MqttStr::default()
                    } else {
                        topic
                    };
                    Publish {
                        dup: dup && qos != QoS::AtMostOnce,
                        qos,
                        retain,
                        topic,
                        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
                        properties,
                        payload: Bytes::from(payload),
                    }
                },
            )
    }

    fn subscribe(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
        let options =
            (qos(), any::<bool>(), any::<bool>(), 0u8..3).prop_map(move |(qos, nl, rap, rh)| {
                if v.is_v5() {
                    SubscriptionOptions {
                        qos,
                        no_local: nl,
                        retain_as_published: rap,
                        retain_handling: [
                            RetainHandling::SendAtSubscribe,
                            RetainHandling::SendAtSubscribeIfNew,
                            RetainHandling::DoNotSend,
                        ][usize::from(rh)],
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                }
            });
        (
            1u16..,
            vec((topic_filter(), options), 1..4),
            properties(Kind::Subscribe, v),
        )
            .prop_map(|(packet_id, mut filters, properties)| {
                // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                for (f, o) in &mut filters {
                    if f.starts_with("$share/") {
                        o.no_local = false;
                    }
                }
                Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties,
                })
            })
    }

    fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
        let v5 = v.is_v5();
        let connack = (
            any::<bool>(),
            code(if v5 { CONNACK_V5 } else { CONNACK_V3 }),
            properties(Kind::ConnAck, v),
        )
            .prop_map(move |(sp, reason_code, properties)| {
                Packet::ConnAck(ConnAck {
                    // No session present with a failure, and none at all in 3.1.
                    session_present: sp && reason_code == 0 && v != ProtocolVersion::V31,
                    reason_code,
                    properties,
                })
            });
        let suback = (
            1u16..,
            vec(code(if v5 { SUBACK_V5 } else { SUBACK_V3 }), 1..5),
            properties(Kind::SubAck, v),
        )
            .prop_map(|(packet_id, reason_codes, properties)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    reason_codes,
                    properties,
                })
            });
        let unsubscribe = (
            1u16..,
            vec(topic_filter(), 1..4),
            properties(Kind::Unsubscribe, v),
        )
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties,
                })
            });
        let unsuback = (
            1u16..,
            vec(code(UNSUBACK), if v5 { 1..4 } else { 0..1 }),
            properties(Kind::UnsubAck, v),
        )
            .prop_map(|(packet_id, reason_codes, properties)| {
                Packet::UnsubAck(UnsubAck {
                    packet_id,
                    reason_codes,
                    properties,
                })
            });
        let disconnect = (
            code(if v5 { DISCONNECT } else { &[0] }),
            properties(Kind::Disconnect, v),
        )
            .prop_map(|(reason_code, properties)| {
                Packet::Disconnect(Disconnect {
                    reason_code,
                    properties,
                })
            });
        let common = prop_oneof![
            connect(v),
            connack,
            publish(v).prop_map(Packet::Publish),
            pub_response(v, PUBACK).prop_map(Packet::PubAck),
            pub_response(v, PUBACK).prop_map(Packet::PubRec),
            pub_response(v, PUBREL).prop_map(Packet::PubRel),
            pub_response(v, PUBREL).prop_map(Packet::PubComp),
            subscribe(v),
            suback,
            unsubscribe,
            unsuback,
            Just(Packet::PingReq),
            Just(Packet::PingResp),
            disconnect,
        ];
        if v5 {
            let auth = (code(&[0x00, 0x18, 0x19]), properties(Kind::Auth, v)).prop_map(
                |(reason_code, properties)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties,
                    })
                },
            );
            prop_oneof![14 => common, 1 => auth].boxed()
        } else {
            common.boxed()
        }
    }

    fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
        version().prop_flat_map(|v| packet(v).prop_map(move |p| (v, p)))
    }

    fn encode(packet: &Packet, v: ProtocolVersion) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_packet(packet, v, &mut buf).expect("valid packets encode");
        buf
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn encode_then_decode_is_identity((v, packet) in versioned_packet()) {
            let mut buf = encode(&packet, v);
            prop_assert_eq!(buf.len(), encoded_len(&packet, v));
            let decoded = decode_packet(&mut buf, v, usize::MAX);
            prop_assert_eq!(decoded, Ok(Some(packet)));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn publish_fast_path_matches_encode_packet((v, p) in version().prop_flat_map(|v| publish(v).prop_map(move |p| (v, p)))) {
            let mut fast = BytesMut::new();
            encode_publish(&p, v, &mut fast);
            let packet = Packet::Publish(p);
            prop_assert_eq!(&fast[..], &encode(&packet, v)[..]);
        }

        #[test]
        fn packets_split_anywhere_and_batched_decode(
            (v, packets) in version().prop_flat_map(|v| vec(packet(v), 1..5).prop_map(move |p| (v, p))),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut all = BytesMut::new();
            for p in &packets {
                encode_packet(p, v, &mut all).unwrap();
            }
            // Deliver the stream in two reads cut at a random point.
            let cut = cut.index(all.len() + 1);
            let tail = all.split_off(cut);
            let mut buf = all;
            let mut out = Vec::new();
            while let Some(p) = decode_packet(&mut buf, v, usize::MAX).unwrap() {
                out.push(p);
            }
            buf.extend_from_slice(&tail);
            while let Some(p) = decode_packet(&mut buf, v, usize::MAX).unwrap() {
                out.push(p);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, packets);
        }

        #[test]
        fn max_packet_size_is_checked_against_the_whole_packet((v, packet) in versioned_packet()) {
            let buf = encode(&packet, v);
            let len = buf.len();
            let mut exact = buf.clone();
            prop_assert!(decode_packet(&mut exact, v, len).unwrap().is_some());
            // Only the fixed header has arrived: already refused.
            let header = 1 + buf[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
            let mut head = BytesMut::from(&buf[..header]);
            prop_assert_eq!(
                decode_packet(&mut head, v, len - 1),
                Err(DecodeError::TooLarge { size: len, max: len - 1 })
            );
        }

        /// Arbitrary bytes: never a panic, and whatever decodes re-encodes to an equal packet.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64), v in version()) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(packet)) = decode_packet(&mut buf, v, 1 << 20) {
                let pv = match &packet { Packet::Connect(c) => c.protocol, _ => v };
                let mut again = encode(&packet, pv);
                prop_assert_eq!(decode_packet(&mut again, pv, 1 << 20), Ok(Some(packet)));
            }
        }

        /// A valid packet with one byte changed: never a panic; anything that still decodes
        /// re-encodes to an equal packet.
        #[test]
        fn mutated_packets_never_panic((v, packet) in versioned_packet(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = encode(&packet, v).to_vec();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let mut buf = BytesMut::from(&bytes[..]);
            if let Ok(Some(packet)) = decode_packet(&mut buf, v, 1 << 20) {
                let pv = match &packet { Packet::Connect(c) => c.protocol, _ => v };
                let mut again = encode(&packet, pv);
                prop_assert_eq!(decode_packet(&mut again, pv, 1 << 20), Ok(Some(packet)));
            }
        }
    }
}
