//! Differential tests against mqttbytes 0.6, MQTT 3.1.1 (`mqttbytes::v4`).
//!
//! For each arbitrary mqttbytes packet: mqttbytes writes it and our decoder must read the
//! same fields; we write the same packet, the bytes must be identical, and mqttbytes must
//! read back what it started from.
//!
//! mqttbytes 0.6 quirks kept out of the generators: passwords are UTF-8 strings (ours are
//! binary; generated passwords are text), an empty user name or password is taken as
//! absent, and its topic matcher panics on non-ASCII topics (never called here, so
//! non-ASCII strings are used).

// In a `codec` module so that `cargo test -p rookery codec` selects these tests.
mod codec {
    use bytes::{Bytes, BytesMut};
    use mqttbytes::{v4, QoS as MQoS};
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use rookery::codec::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof!["[a-zA-Z0-9 _./-]{0,10}", "[a-zé中ß]{0,4}"]
    }
    fn nonempty() -> impl Strategy<Value = String> {
        "[a-zA-Zé0-9]{1,10}"
    }
    fn topic() -> impl Strategy<Value = String> {
        "[a-zé0-9/]{1,12}"
    }
    fn filter() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9/]{1,10}",
            Just("#".into()),
            Just("a/+/b".into()),
            Just("+/#".into())
        ]
    }
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        vec(any::<u8>(), 0..40)
    }
    fn mqos() -> impl Strategy<Value = MQoS> {
        prop::sample::select(&[MQoS::AtMostOnce, MQoS::AtLeastOnce, MQoS::ExactlyOnce][..])
    }
    fn qos(q: MQoS) -> QoS {
        QoS::from_u8(q as u8).unwrap()
    }
    fn s(x: &str) -> MqttStr {
        MqttStr::from(x)
    }

    // ---------------------------------------------------------------- MQTT 3.1.1 (v4)

    fn v4_packet() -> impl Strategy<Value = v4::Packet> {
        let connect = (
            text(),
            any::<u16>(),
            any::<bool>(),
            option::of((topic(), payload(), mqos(), any::<bool>())),
            option::of((nonempty(), option::of(nonempty()))),
        )
            .prop_map(|(id, keep_alive, clean, will, login)| {
                v4::Packet::Connect(v4::Connect {
                    protocol: mqttbytes::Protocol::V4,
                    keep_alive,
                    client_id: id,
                    clean_session: clean,
                    last_will: will.map(|(t, p, q, r)| v4::LastWill::new(t, p, q, r)),
                    login: login.map(|(u, p)| v4::Login::new(u, p.unwrap_or_default())),
                })
            });
        let publish = (
            mqos(),
            any::<bool>(),
            any::<bool>(),
            topic(),
            1u16..,
            payload(),
        )
            .prop_map(|(q, dup, retain, t, pkid, p)| {
                let mut publish = v4::Publish::new(t, q, p);
                publish.dup = dup && q != MQoS::AtMostOnce;
                publish.retain = retain;
                publish.pkid = if q == MQoS::AtMostOnce { 0 } else { pkid };
                v4::Packet::Publish(publish)
            });
        let connack = (any::<bool>(), 0usize..6).prop_map(|(sp, code)| {
            use v4::ConnectReturnCode::*;
            let code = [
                Success,
                RefusedProtocolVersion,
                BadClientId,
                ServiceUnavailable,
                BadUserNamePassword,
                NotAuthorized,
            ][code];
            v4::Packet::ConnAck(v4::ConnAck::new(code, sp && code == Success))
        });
        let subscribe = (1u16.., vec((filter(), mqos()), 1..4)).prop_map(|(pkid, filters)| {
            let mut sub = v4::Subscribe::new_many(
                filters
                    .into_iter()
                    .map(|(f, q)| v4::SubscribeFilter::new(f, q)),
            );
            sub.pkid = pkid;
            v4::Packet::Subscribe(sub)
        });
        let suback = (1u16.., vec(0u8..4, 1..4)).prop_map(|(pkid, codes)| {
            let codes = codes
                .into_iter()
                .map(|c| match c {
                    3 => v4::SubscribeReasonCode::Failure,
                    q => v4::SubscribeReasonCode::Success(QoS_of(q)),
                })
                .collect();
            v4::Packet::SubAck(v4::SubAck::new(pkid, codes))
        });
        let unsubscribe = (1u16.., vec(filter(), 1..4))
            .prop_map(|(pkid, topics)| v4::Packet::Unsubscribe(v4::Unsubscribe { pkid, topics }));
        prop_oneof![
            connect,
            publish,
            connack,
            subscribe,
            suback,
            unsubscribe,
            (1u16..).prop_map(|id| v4::Packet::PubAck(v4::PubAck::new(id))),
            (1u16..).prop_map(|id| v4::Packet::PubRec(v4::PubRec::new(id))),
            (1u16..).prop_map(|id| v4::Packet::PubRel(v4::PubRel::new(id))),
            (1u16..).prop_map(|id| v4::Packet::PubComp(v4::PubComp::new(id))),
            (1u16..).prop_map(|id| v4::Packet::UnsubAck(v4::UnsubAck::new(id))),
            Just(v4::Packet::PingReq),
            Just(v4::Packet::PingResp),
            Just(v4::Packet::Disconnect),
        ]
    }

    #[allow(non_snake_case)]
    fn QoS_of(q: u8) -> MQoS {
        [MQoS::AtMostOnce, MQoS::AtLeastOnce, MQoS::ExactlyOnce][usize::from(q)]
    }

    fn v4_write(p: &v4::Packet, buf: &mut BytesMut) {
        let r = match p {
            v4::Packet::Connect(x) => x.write(buf),
            v4::Packet::ConnAck(x) => x.write(buf),
            v4::Packet::Publish(x) => x.write(buf),
            v4::Packet::PubAck(x) => x.write(buf),
            v4::Packet::PubRec(x) => x.write(buf),
            v4::Packet::PubRel(x) => x.write(buf),
            v4::Packet::PubComp(x) => x.write(buf),
            v4::Packet::Subscribe(x) => x.write(buf),
            v4::Packet::SubAck(x) => x.write(buf),
            v4::Packet::Unsubscribe(x) => x.write(buf),
            v4::Packet::UnsubAck(x) => x.write(buf),
            v4::Packet::PingReq => v4::PingReq.write(buf),
            v4::Packet::PingResp => v4::PingResp.write(buf),
            v4::Packet::Disconnect => v4::Disconnect.write(buf),
        };
        r.expect("mqttbytes writes");
    }

    /// The same packet in our model.
    fn from_v4(p: &v4::Packet) -> Packet {
        let none = Properties::default;
        match p {
            v4::Packet::Connect(c) => Packet::Connect(Box::new(Connect {
                protocol: ProtocolVersion::V311,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: s(&c.client_id),
                will: c.last_will.as_ref().map(|w| LastWill {
                    topic: s(&w.topic),
                    payload: w.message.clone(),
                    qos: qos(w.qos),
                    retain: w.retain,
                    properties: none(),
                }),
                username: c.login.as_ref().map(|l| s(&l.username)),
                password: c
                    .login
                    .as_ref()
                    .filter(|l| !l.password.is_empty())
                    .map(|l| Bytes::from(l.password.clone())),
                properties: none(),
            })),
            v4::Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
                session_present: a.session_present,
                reason_code: [0x00, 0x84, 0x85, 0x88, 0x86, 0x87][a.code as usize],
                properties: none(),
            }),
            v4::Packet::Publish(p) => Packet::Publish(Publish {
                dup: p.dup,
                qos: qos(p.qos),
                retain: p.retain,
                topic: s(&p.topic),
                packet_id: p.pkid,
                properties: none(),
                payload: p.payload.clone(),
            }),
            v4::Packet::PubAck(x) => Packet::PubAck(PubResponse::new(x.pkid, 0)),
            v4::Packet::PubRec(x) => Packet::PubRec(PubResponse::new(x.pkid, 0)),
            v4::Packet::PubRel(x) => Packet::PubRel(PubResponse::new(x.pkid, 0)),
            v4::Packet::PubComp(x) => Packet::PubComp(PubResponse::new(x.pkid, 0)),
            v4::Packet::Subscribe(x) => Packet::Subscribe(Subscribe {
                packet_id: x.pkid,
                filters: x
                    .filters
                    .iter()
                    .map(|f| {
                        let o = SubscriptionOptions {
                            qos: qos(f.qos),
                            ..SubscriptionOptions::default()
                        };
                        (s(&f.path), o)
                    })
                    .collect(),
                properties: none(),
            }),
            v4::Packet::SubAck(x) => Packet::SubAck(SubAck {
                packet_id: x.pkid,
                reason_codes: x
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        v4::SubscribeReasonCode::Success(q) => *q as u8,
                        v4::SubscribeReasonCode::Failure => 0x80,
                    })
                    .collect(),
                properties: none(),
            }),
            v4::Packet::Unsubscribe(x) => Packet::Unsubscribe(Unsubscribe {
                packet_id: x.pkid,
                filters: x.topics.iter().map(|t| s(t)).collect(),
                properties: none(),
            }),
            v4::Packet::UnsubAck(x) => Packet::UnsubAck(UnsubAck {
                packet_id: x.pkid,
                reason_codes: Vec::new(),
                properties: none(),
            }),
            v4::Packet::PingReq => Packet::PingReq,
            v4::Packet::PingResp => Packet::PingResp,
            v4::Packet::Disconnect => Packet::Disconnect(Disconnect::default()),
        }
    }

    /// mqttbytes leaves `properties: None` where we read an empty list; compare in our model.
    fn ours(bytes: &mut BytesMut, v: ProtocolVersion) -> Packet {
        decode_packet(bytes, v, usize::MAX)
            .expect("our decoder accepts mqttbytes output")
            .expect("complete")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn v4_mqttbytes_to_ours_and_back(theirs in v4_packet()) {
            let expected = from_v4(&theirs);
            let mut buf = BytesMut::new();
            v4_write(&theirs, &mut buf);
            let their_bytes = buf.clone();
            prop_assert_eq!(ours(&mut buf, ProtocolVersion::V311), expected.clone());
            prop_assert!(buf.is_empty());

            let mut mine = BytesMut::new();
            encode_packet(&expected, ProtocolVersion::V311, &mut mine).unwrap();
            prop_assert_eq!(&mine[..], &their_bytes[..], "byte-identical 3.1.1 encodings");
            let back = v4::read(&mut mine, usize::MAX).expect("mqttbytes reads our output");
            prop_assert_eq!(back, theirs);
        }
    }
}
