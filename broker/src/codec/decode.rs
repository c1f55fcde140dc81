//! Packet decoding with full validation, for MQTT 3.1, 3.1.1 and 5.0.
//!
//! [`decode_packet`] takes one packet off the front of the receive buffer. The fixed header
//! is checked as soon as it is there (so garbage and oversize packets are refused before
//! their body arrives); the body is then split off the buffer without copying, and every
//! string, topic and payload of the returned [`Packet`] is a slice of it. Nothing is read
//! without a length check, so no input can make the decoder panic, and nothing is allocated
//! from a length prefix: the only allocations are the `Vec`s of properties, filters and
//! reason codes, whose bytes are already in the buffer. A QoS 0 PUBLISH without properties
//! allocates nothing.
//!
//! Statements of the specifications are cited as `[MQTT-x.y.z-n]` (the MQTT 5.0 numbering
//! where 3.1.1 and 5.0 differ, unless marked 3.1.1); rules without a conformance number are
//! cited by section. Checks that need connection state (topic alias ranges, receive maximum
//! accounting, which side may send which packet, a second CONNECT) are left to the broker.
//!
//! When an error is returned the connection must be closed: the buffer may or may not have
//! had the offending packet removed.

use super::properties::{read_properties, Ctx};
use super::topic::{validate_topic_filter, validate_topic_name, TopicError};
use super::types::*;
use super::wire::{parse_vbi, Reader, VbiParse};
use bytes::{Buf, Bytes, BytesMut};

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
    /// 0x90: an invalid topic name (PUBLISH, will topic).
    #[error("invalid topic: {0}")]
    InvalidTopic(&'static str),
    /// 0x8F: an invalid topic filter (SUBSCRIBE, UNSUBSCRIBE).
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(&'static str),
}

impl DecodeError {
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::InvalidTopic(_) => reason::TOPIC_NAME_INVALID,
            DecodeError::InvalidTopicFilter(_) => reason::TOPIC_FILTER_INVALID,
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
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    check_fixed_header(packet_type, flags, version)?;

    let (remaining, len_len) = match parse_vbi(buf.get(1..).unwrap_or_default())? {
        VbiParse::Done(value, len) => (value as usize, len),
        VbiParse::Incomplete => return Ok(None),
    };
    let header_len = 1 + len_len;
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    buf.advance(header_len);
    // Splitting a `BytesMut` that owns a plain Vec promotes it to a shared buffer (one small
    // allocation until the caller next reallocates it); an empty body needs no split at all.
    let body = if remaining == 0 {
        Bytes::new()
    } else {
        buf.split_to(remaining).freeze()
    };
    let mut r = Reader::new(body);

    let packet = match packet_type {
        1 => Packet::Connect(Box::new(decode_connect(&mut r)?)),
        2 => Packet::ConnAck(decode_connack(&mut r, version)?),
        3 => Packet::Publish(decode_publish(flags, &mut r, version)?),
        4 => Packet::PubAck(decode_pub_response(&mut r, version, PubKind::Ack)?),
        5 => Packet::PubRec(decode_pub_response(&mut r, version, PubKind::Rec)?),
        6 => Packet::PubRel(decode_pub_response(&mut r, version, PubKind::Rel)?),
        7 => Packet::PubComp(decode_pub_response(&mut r, version, PubKind::Comp)?),
        8 => Packet::Subscribe(decode_subscribe(&mut r, version)?),
        9 => Packet::SubAck(decode_suback(&mut r, version)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(&mut r, version)?),
        11 => Packet::UnsubAck(decode_unsuback(&mut r, version)?),
        12 => {
            r.finish("PINGREQ has a remaining length of 0 (3.12)")?;
            Packet::PingReq
        }
        13 => {
            r.finish("PINGRESP has a remaining length of 0 (3.13)")?;
            Packet::PingResp
        }
        14 => Packet::Disconnect(decode_disconnect(&mut r, version)?),
        15 => Packet::Auth(decode_auth(&mut r)?),
        // check_fixed_header refused type 0.
        _ => return Err(DecodeError::Malformed("reserved packet type 0 (2.1.2)")),
    };
    Ok(Some(packet))
}

/// Packet type and flags of the fixed header (2.1.2, 2.1.3). PUBLISH flags are checked
/// here too, so a bad PUBLISH is refused before its body has arrived.
fn check_fixed_header(
    packet_type: u8,
    flags: u8,
    version: ProtocolVersion,
) -> Result<(), DecodeError> {
    match packet_type {
        0 => Err(DecodeError::Malformed("reserved packet type 0 (2.1.2)")),
        15 if !version.is_v5() => Err(DecodeError::Malformed(
            "packet type 15 is reserved before MQTT 5.0 (3.1.1 §2.2.1)",
        )),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]"));
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::Malformed(
                    "DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]",
                ));
            }
            Ok(())
        }
        6 | 8 | 10 => {
            // MQTT 3.1 sent these with QoS 1 in the fixed header and allowed DUP on resend.
            if flags == 0b0010 || (version == ProtocolVersion::V31 && flags == 0b1010) {
                Ok(())
            } else {
                Err(DecodeError::Malformed(match packet_type {
                    6 => "PUBREL fixed header flags must be 0010 [MQTT-3.6.1-1]",
                    8 => "SUBSCRIBE fixed header flags must be 0010 [MQTT-3.8.1-1]",
                    _ => "UNSUBSCRIBE fixed header flags must be 0010 [MQTT-3.10.1-1]",
                }))
            }
        }
        _ if flags != 0 => Err(DecodeError::Malformed(
            "reserved fixed header flags must be 0 [MQTT-2.2.2-1]",
        )),
        _ => Ok(()),
    }
}

#[inline]
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Protocol(
            "packet identifier must be non-zero [MQTT-2.3.1-1]",
        ));
    }
    Ok(id)
}

const BAD_UTF8: DecodeError =
    DecodeError::Malformed("string is not well-formed UTF-8 [MQTT-1.5.4-1]");
const NUL_IN_STRING: DecodeError = DecodeError::Malformed("string contains U+0000 [MQTT-1.5.4-2]");

fn topic_error_message(e: TopicError) -> &'static str {
    match e {
        TopicError::Empty => "topic must be at least one character long [MQTT-4.7.3-1]",
        TopicError::WildcardInName => "topic names must not contain wildcards [MQTT-3.3.2-2]",
        TopicError::MultiLevelMisplaced => {
            "'#' must be the last level and stand alone [MQTT-4.7.1-2]"
        }
        TopicError::SingleLevelMisplaced => "'+' must occupy a whole level [MQTT-4.7.1-3]",
        TopicError::NullCharacter => "string contains U+0000 [MQTT-1.5.4-2]",
        TopicError::SharedMalformed => "shared subscription is malformed [MQTT-4.8.2-1]",
    }
}

/// A topic name (PUBLISH, will topic): UTF-8 [MQTT-3.3.2-1], no wildcards [MQTT-3.3.2-2],
/// non-empty [MQTT-4.7.3-1] unless `allow_empty` (MQTT 5.0 with a topic alias, 3.3.2.1).
/// UTF-8 is validated once, and the topic rules run on that `&str`.
fn topic_name(r: &mut Reader, allow_empty: bool) -> Result<MqttStr, DecodeError> {
    let bytes = r.binary()?;
    let s = std::str::from_utf8(&bytes).map_err(|_| BAD_UTF8)?;
    if !(s.is_empty() && allow_empty) {
        match validate_topic_name(s) {
            Ok(()) => {}
            Err(TopicError::NullCharacter) => return Err(NUL_IN_STRING),
            Err(e) => return Err(DecodeError::InvalidTopic(topic_error_message(e))),
        }
    }
    Ok(MqttStr::from_validated(bytes))
}

/// A topic filter (SUBSCRIBE, UNSUBSCRIBE) [MQTT-3.8.3-1], [MQTT-4.7.1-2], [MQTT-4.7.1-3].
fn topic_filter(r: &mut Reader) -> Result<MqttStr, DecodeError> {
    let bytes = r.binary()?;
    let s = std::str::from_utf8(&bytes).map_err(|_| BAD_UTF8)?;
    match validate_topic_filter(s) {
        Ok(()) => {}
        Err(TopicError::NullCharacter) => return Err(NUL_IN_STRING),
        Err(e) => return Err(DecodeError::InvalidTopicFilter(topic_error_message(e))),
    }
    Ok(MqttStr::from_validated(bytes))
}

fn decode_connect(r: &mut Reader) -> Result<Connect, DecodeError> {
    // Protocol name and level (3.1.2.1, 3.1.2.2). [MQTT-3.1.2-1], [MQTT-3.1.2-2]: a name or
    // level we do not speak is answered with "unsupported protocol version".
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => ProtocolVersion::V31,
        (b"MQTT", 4) => ProtocolVersion::V311,
        (b"MQTT", 5) => ProtocolVersion::V5,
        _ => return Err(DecodeError::UnsupportedProtocol(level)),
    };
    let v5 = protocol.is_v5();

    // Connect flags (3.1.2.3).
    let flags = r.u8()?;
    if flags & 0b0000_0001 != 0 {
        return Err(DecodeError::Malformed(
            "CONNECT reserved flag must be 0 [MQTT-3.1.2-3]",
        ));
    }
    let clean_start = flags & 0b0000_0010 != 0;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let password_flag = flags & 0b0100_0000 != 0;
    let username_flag = flags & 0b1000_0000 != 0;
    if will_qos == 3 {
        return Err(DecodeError::Malformed(
            "will QoS 3 [MQTT-3.1.2-12] (3.1.1: [MQTT-3.1.2-14])",
        ));
    }
    if !will_flag && will_qos != 0 {
        return Err(DecodeError::Malformed(
            "will QoS without will flag [MQTT-3.1.2-11] (3.1.1: [MQTT-3.1.2-13])",
        ));
    }
    if !will_flag && will_retain {
        return Err(DecodeError::Malformed(
            "will retain without will flag [MQTT-3.1.2-13] (3.1.1: [MQTT-3.1.2-15])",
        ));
    }
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::Protocol(
            "password flag without user name flag (3.1.1: [MQTT-3.1.2-22])",
        ));
    }

    let keep_alive = r.u16()?;
    let properties = if v5 {
        read_properties(r, Ctx::Connect)?
    } else {
        Properties::default()
    };

    // Payload (3.1.3): client identifier, will properties/topic/payload, user name,
    // password, in this order [MQTT-3.1.3-1].
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = if v5 {
            read_properties(r, Ctx::Will)?
        } else {
            Properties::default()
        };
        let topic = topic_name(r, false)?;
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: QoS::from_u8(will_qos).unwrap_or_default(),
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string()?)
    } else {
        None
    };
    // The password is Binary Data, not a string (3.1.3.5).
    let password = if password_flag {
        Some(r.binary()?)
    } else {
        None
    };
    r.finish("CONNECT has bytes after its last field")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

/// The 3.1.1 CONNACK return codes (table 3.1) as v5 reason codes.
const V3_CONNACK_CODES: [u8; 6] = [
    reason::SUCCESS,
    reason::UNSUPPORTED_PROTOCOL_VERSION,
    reason::CLIENT_IDENTIFIER_NOT_VALID,
    reason::SERVER_UNAVAILABLE,
    reason::BAD_USER_NAME_OR_PASSWORD,
    reason::NOT_AUTHORIZED,
];

fn decode_connack(r: &mut Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let ack_flags = r.u8()?;
    if ack_flags & 0xFE != 0 {
        return Err(DecodeError::Malformed(
            "CONNACK acknowledge flags bits 7-1 are reserved [MQTT-3.2.2-1]",
        ));
    }
    // MQTT 3.1 has no session present flag: the byte is reserved.
    let session_present = version != ProtocolVersion::V31 && ack_flags & 1 != 0;
    let code = r.u8()?;
    let (reason_code, properties) = if version.is_v5() {
        if !valid_connack_reason(code) {
            return Err(DecodeError::Protocol(
                "invalid CONNACK reason code (3.2.2.2)",
            ));
        }
        (code, read_properties(r, Ctx::ConnAck)?)
    } else {
        match V3_CONNACK_CODES.get(usize::from(code)) {
            Some(&c) => (c, Properties::default()),
            None => {
                return Err(DecodeError::Protocol(
                    "reserved CONNACK return code (3.1.1 §3.2.2.3)",
                ))
            }
        }
    };
    if session_present && reason_code != reason::SUCCESS {
        return Err(DecodeError::Protocol(
            "session present with a failure code [MQTT-3.2.2-6] (3.1.1: [MQTT-3.2.2-4])",
        ));
    }
    r.finish("CONNACK has bytes after its last field")?;
    Ok(ConnAck {
        session_present,
        reason_code,
        properties,
    })
}

fn decode_publish(
    flags: u8,
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    // Flags were checked by check_fixed_header.
    let qos = QoS::from_u8((flags >> 1) & 0b11).unwrap_or_default();
    let v5 = version.is_v5();
    let topic = topic_name(r, v5)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        packet_id(r)?
    };
    let properties = if v5 {
        read_properties(r, Ctx::Publish)?
    } else {
        Properties::default()
    };
    // An empty topic without a topic alias is a protocol error (3.3.2.1), but whether an
    // alias stands for the topic is connection state: that check is the broker's.
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

#[derive(Clone, Copy)]
enum PubKind {
    Ack,
    Rec,
    Rel,
    Comp,
}

fn decode_pub_response(
    r: &mut Reader,
    version: ProtocolVersion,
    kind: PubKind,
) -> Result<PubResponse, DecodeError> {
    let packet_id = packet_id(r)?;
    if !version.is_v5() {
        r.finish("3.x PUBACK/PUBREC/PUBREL/PUBCOMP have a remaining length of 2")?;
        return Ok(PubResponse::new(packet_id, reason::SUCCESS));
    }
    // A Remaining Length of 2 means reason 0x00 and no properties; less than 4 means no
    // Property Length (3.4.2.1, 3.4.2.2.1 and their PUBREC/PUBREL/PUBCOMP counterparts).
    let mut resp = PubResponse::new(packet_id, reason::SUCCESS);
    if r.is_empty() {
        return Ok(resp);
    }
    resp.reason_code = r.u8()?;
    let valid = match kind {
        PubKind::Ack | PubKind::Rec => matches!(
            resp.reason_code,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        ),
        PubKind::Rel | PubKind::Comp => matches!(resp.reason_code, 0x00 | 0x92),
    };
    if !valid {
        return Err(DecodeError::Protocol(
            "reason code not allowed in this packet (3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1)",
        ));
    }
    if !r.is_empty() {
        resp.properties = read_properties(r, Ctx::PubResp)?;
    }
    r.finish("PUBACK/PUBREC/PUBREL/PUBCOMP has bytes after its properties")?;
    Ok(resp)
}

fn decode_subscribe(r: &mut Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let v5 = version.is_v5();
    let properties = if v5 {
        read_properties(r, Ctx::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = topic_filter(r)?;
        let opts = r.u8()?;
        let qos = QoS::from_u8(opts & 0b11).ok_or(DecodeError::Malformed(
            "subscription QoS 3 [MQTT-3.8.3-5] (3.1.1: [MQTT-3.8.3-4])",
        ))?;
        let options = if v5 {
            if opts & 0b1100_0000 != 0 {
                return Err(DecodeError::Malformed(
                    "subscription options bits 6-7 are reserved [MQTT-3.8.3-5]",
                ));
            }
            let retain_handling = match (opts >> 4) & 0b11 {
                0 => RetainHandling::SendAtSubscribe,
                1 => RetainHandling::SendAtSubscribeIfNew,
                2 => RetainHandling::DoNotSend,
                _ => return Err(DecodeError::Malformed("retain handling 3 (3.8.3.1)")),
            };
            let no_local = opts & 0b0100 != 0;
            if no_local && filter.starts_with("$share/") {
                return Err(DecodeError::Protocol(
                    "no local on a shared subscription [MQTT-3.8.3-4]",
                ));
            }
            SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: opts & 0b1000 != 0,
                retain_handling,
            }
        } else {
            if opts & 0b1111_1100 != 0 {
                return Err(DecodeError::Malformed(
                    "requested QoS byte bits 7-2 are reserved (3.1.1: [MQTT-3.8.3-4])",
                ));
            }
            SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            }
        };
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBSCRIBE without a topic filter [MQTT-3.8.3-2] (3.1.1: [MQTT-3.8.3-3])",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_suback(r: &mut Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    let v5 = version.is_v5();
    let properties = if v5 {
        read_properties(r, Ctx::SubAck)?
    } else {
        Properties::default()
    };
    let codes = r.rest();
    if codes.is_empty() {
        return Err(DecodeError::Protocol(
            "SUBACK without a reason code (3.9.3)",
        ));
    }
    for &c in codes.iter() {
        let valid = if v5 {
            matches!(
                c,
                0x00 | 0x01 | 0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
            )
        } else {
            matches!(c, 0x00 | 0x01 | 0x02 | 0x80)
        };
        if !valid {
            return Err(DecodeError::Protocol(
                "invalid SUBACK reason code (3.9.3) (3.1.1: [MQTT-3.9.3-2])",
            ));
        }
    }
    Ok(SubAck {
        packet_id,
        reason_codes: codes.to_vec(),
        properties,
    })
}

fn decode_unsubscribe(
    r: &mut Reader,
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(r)?;
    let properties = if version.is_v5() {
        read_properties(r, Ctx::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(topic_filter(r)?);
    }
    if filters.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBSCRIBE without a topic filter [MQTT-3.10.3-2]",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(r)?;
    if !version.is_v5() {
        r.finish("3.x UNSUBACK has a remaining length of 2")?;
        return Ok(UnsubAck {
            packet_id,
            reason_codes: Vec::new(),
            properties: Properties::default(),
        });
    }
    let properties = read_properties(r, Ctx::UnsubAck)?;
    let codes = r.rest();
    if codes.is_empty() {
        return Err(DecodeError::Protocol(
            "UNSUBACK without a reason code (3.11.3)",
        ));
    }
    if !codes
        .iter()
        .all(|c| matches!(c, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91))
    {
        return Err(DecodeError::Protocol(
            "invalid UNSUBACK reason code (3.11.3)",
        ));
    }
    Ok(UnsubAck {
        packet_id,
        reason_codes: codes.to_vec(),
        properties,
    })
}

fn decode_disconnect(r: &mut Reader, version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut d = Disconnect::default();
    if !version.is_v5() {
        r.finish("3.x DISCONNECT has a remaining length of 0")?;
        return Ok(d);
    }
    // Remaining Length 0: reason 0x00, no properties; less than 2: no properties (3.14.2).
    if r.is_empty() {
        return Ok(d);
    }
    d.reason_code = r.u8()?;
    if !valid_disconnect_reason(d.reason_code) {
        return Err(DecodeError::Protocol(
            "invalid DISCONNECT reason code (3.14.2.1)",
        ));
    }
    if !r.is_empty() {
        d.properties = read_properties(r, Ctx::Disconnect)?;
    }
    r.finish("DISCONNECT has bytes after its properties")?;
    Ok(d)
}

fn decode_auth(r: &mut Reader) -> Result<Auth, DecodeError> {
    let mut a = Auth::default();
    // Remaining Length 0: reason 0x00 (Success), no properties (3.15.2.1).
    if r.is_empty() {
        return Ok(a);
    }
    a.reason_code = r.u8()?;
    if !matches!(a.reason_code, 0x00 | 0x18 | 0x19) {
        return Err(DecodeError::Protocol("invalid AUTH reason code (3.15.2.1)"));
    }
    if !r.is_empty() {
        a.properties = read_properties(r, Ctx::Auth)?;
    }
    r.finish("AUTH has bytes after its properties")?;
    Ok(a)
}

/// CONNACK reason codes of table 3-1.
pub(crate) fn valid_connack_reason(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F
    )
}

/// DISCONNECT reason codes of table 3-10.
pub(crate) fn valid_disconnect_reason(code: u8) -> bool {
    matches!(
        code,
        0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0xA2
    ) && !matches!(code, 0x91 | 0x92)
}
