//! MQTT 5.0 properties (section 2.2.2): which property may appear in which packet, how each
//! is read and validated, and how a [`Properties`] is written back.
//!
//! Properties are always written in ascending identifier order, user properties and
//! subscription identifiers in the order they are stored. The encoder leaves out any
//! property that is not allowed in the packet being written, so a `Properties` value reused
//! across packet types never produces an invalid packet.

use super::decode::DecodeError;
use super::topic::validate_topic_name;
use super::types::{MqttStr, Properties};
use super::wire::{put_prefixed, put_vbi, vbi_len, Reader, VBI_MAX};
use bytes::{BufMut, BytesMut};

/// The packet (or part of CONNECT) a property list belongs to; a bit in the masks below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum Ctx {
    Connect = 1 << 0,
    Will = 1 << 1,
    ConnAck = 1 << 2,
    Publish = 1 << 3,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    PubResp = 1 << 4,
    Subscribe = 1 << 5,
    SubAck = 1 << 6,
    Unsubscribe = 1 << 7,
    UnsubAck = 1 << 8,
    Disconnect = 1 << 9,
    Auth = 1 << 10,
}

// Property identifiers (table 2-4).
pub(crate) const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub(crate) const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub(crate) const CONTENT_TYPE: u8 = 0x03;
pub(crate) const RESPONSE_TOPIC: u8 = 0x08;
pub(crate) const CORRELATION_DATA: u8 = 0x09;
pub(crate) const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub(crate) const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub(crate) const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub(crate) const SERVER_KEEP_ALIVE: u8 = 0x13;
pub(crate) const AUTHENTICATION_METHOD: u8 = 0x15;
pub(crate) const AUTHENTICATION_DATA: u8 = 0x16;
pub(crate) const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub(crate) const WILL_DELAY_INTERVAL: u8 = 0x18;
pub(crate) const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub(crate) const RESPONSE_INFORMATION: u8 = 0x1A;
pub(crate) const SERVER_REFERENCE: u8 = 0x1C;
pub(crate) const REASON_STRING: u8 = 0x1F;
pub(crate) const RECEIVE_MAXIMUM: u8 = 0x21;
pub(crate) const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub(crate) const TOPIC_ALIAS: u8 = 0x23;
pub(crate) const MAXIMUM_QOS: u8 = 0x24;
pub(crate) const RETAIN_AVAILABLE: u8 = 0x25;
pub(crate) const USER_PROPERTY: u8 = 0x26;
pub(crate) const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub(crate) const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub(crate) const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub(crate) const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

const CONNECT: u16 = Ctx::Connect as u16;
const WILL: u16 = Ctx::Will as u16;
const CONNACK: u16 = Ctx::ConnAck as u16;
const PUBLISH: u16 = Ctx::Publish as u16;
const PUBRESP: u16 = Ctx::PubResp as u16;
const SUBSCRIBE: u16 = Ctx::Subscribe as u16;
const SUBACK: u16 = Ctx::SubAck as u16;
const UNSUBACK: u16 = Ctx::UnsubAck as u16;
const DISCONNECT: u16 = Ctx::Disconnect as u16;
const AUTH: u16 = Ctx::Auth as u16;
const ALL: u16 = (1 << 11) - 1;

/// The packets a property identifier may appear in (table 2-4), or `None` for an
/// identifier the spec does not define.
pub(crate) fn allowed_in(id: u8) -> Option<u16> {
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => PUBLISH | WILL,
        SUBSCRIPTION_IDENTIFIER => PUBLISH | SUBSCRIBE,
        SESSION_EXPIRY_INTERVAL => CONNECT | CONNACK | DISCONNECT,
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => CONNACK,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => CONNECT | CONNACK | AUTH,
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => CONNECT,
        WILL_DELAY_INTERVAL => WILL,
        SERVER_REFERENCE => CONNACK | DISCONNECT,
        REASON_STRING => CONNACK | PUBRESP | SUBACK | UNSUBACK | DISCONNECT | AUTH,
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => CONNECT | CONNACK,
        TOPIC_ALIAS => PUBLISH,
        USER_PROPERTY => ALL,
        _ => return None,
    })
}

#[inline]
fn allows(ctx: Ctx, id: u8) -> bool {
    allowed_in(id).is_some_and(|mask| mask & ctx as u16 != 0)
}

fn dup() -> DecodeError {
    DecodeError::Protocol("property included more than once [MQTT-2.2.2-2]")
}

fn set_once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(dup());
    }
    *slot = Some(value);
    Ok(())
}

/// A Byte property whose only legal values are 0 and 1.
fn read_bool_byte(r: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

/// Reads a Property Length and the property list that follows it (2.2.2), checking every
/// property against the packet it is in.
pub(crate) fn read_properties(r: &mut Reader, ctx: Ctx) -> Result<Properties, DecodeError> {
    let len = r.vbi()? as usize;
    let mut props = Properties::default();
    if len == 0 {
        return Ok(props);
    }
    if len > r.remaining() {
        return Err(DecodeError::Malformed(
            "property length exceeds the remaining length",
        ));
    }
    let mut p = Reader::new(r.take(len)?);
    while !p.is_empty() {
        // The identifier is a Variable Byte Integer; every defined identifier fits in one
        // byte, so a continuation bit means an unknown identifier.
        let id = p.u8()?;
        if allowed_in(id).is_none() {
            return Err(DecodeError::Malformed("unknown property identifier"));
        }
        if !allows(ctx, id) {
            // "A Control Packet which contains an Identifier which is not valid for its
            // packet type ... is a Malformed Packet" (2.2.2.2).
            return Err(DecodeError::Malformed(
                "property not allowed in this packet type (2.2.2.2)",
            ));
        }
        read_one(&mut p, id, ctx, &mut props)?;
    }
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::Protocol(
            "authentication data without authentication method (3.1.2.11.10)",
        ));
    }
    Ok(props)
}

fn read_one(p: &mut Reader, id: u8, ctx: Ctx, props: &mut Properties) -> Result<(), DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => {
            let v = read_bool_byte(p, "payload format indicator must be 0 or 1 (3.3.2.3.2)")?;
            set_once(&mut props.payload_format_indicator, v)
        }
        MESSAGE_EXPIRY_INTERVAL => set_once(&mut props.message_expiry_interval, p.u32()?),
        CONTENT_TYPE => set_once(&mut props.content_type, p.string()?),
        RESPONSE_TOPIC => {
            let s = p.string()?;
            if validate_topic_name(&s).is_err() {
                return Err(DecodeError::Protocol(
                    "response topic must be a topic name without wildcards [MQTT-3.3.2-14]",
                ));
            }
            set_once(&mut props.response_topic, s)
        }
        CORRELATION_DATA => set_once(&mut props.correlation_data, p.binary()?),
        SUBSCRIPTION_IDENTIFIER => {
            let v = p.vbi()?;
            if v == 0 {
                return Err(DecodeError::Protocol(
                    "subscription identifier of 0 (3.8.2.1.2)",
                ));
            }
            // One per matching subscription in PUBLISH [MQTT-3.3.4-3]; at most one in
            // SUBSCRIBE (3.8.2.1.2).
            if ctx == Ctx::Subscribe && !props.subscription_identifiers.is_empty() {
                return Err(dup());
            }
            props.subscription_identifiers.push(v);
            Ok(())
        }
        SESSION_EXPIRY_INTERVAL => set_once(&mut props.session_expiry_interval, p.u32()?),
        ASSIGNED_CLIENT_IDENTIFIER => set_once(&mut props.assigned_client_identifier, p.string()?),
        SERVER_KEEP_ALIVE => set_once(&mut props.server_keep_alive, p.u16()?),
        AUTHENTICATION_METHOD => set_once(&mut props.authentication_method, p.string()?),
        AUTHENTICATION_DATA => set_once(&mut props.authentication_data, p.binary()?),
        REQUEST_PROBLEM_INFORMATION => {
            let v = read_bool_byte(p, "request problem information must be 0 or 1 (3.1.2.11.7)")?;
            set_once(&mut props.request_problem_information, v)
        }
        WILL_DELAY_INTERVAL => set_once(&mut props.will_delay_interval, p.u32()?),
        REQUEST_RESPONSE_INFORMATION => {
            let v = read_bool_byte(
                p,
                "request response information must be 0 or 1 (3.1.2.11.6)",
            )?;
            set_once(&mut props.request_response_information, v)
        }
        RESPONSE_INFORMATION => set_once(&mut props.response_information, p.string()?),
        SERVER_REFERENCE => set_once(&mut props.server_reference, p.string()?),
        REASON_STRING => set_once(&mut props.reason_string, p.string()?),
        RECEIVE_MAXIMUM => {
            let v = p.u16()?;
            if v == 0 {
                return Err(DecodeError::Protocol("receive maximum of 0 (3.1.2.11.3)"));
            }
            set_once(&mut props.receive_maximum, v)
        }
        TOPIC_ALIAS_MAXIMUM => set_once(&mut props.topic_alias_maximum, p.u16()?),
        TOPIC_ALIAS => {
            let v = p.u16()?;
            if v == 0 {
                return Err(DecodeError::Protocol("topic alias of 0 [MQTT-3.3.2-8]"));
            }
            set_once(&mut props.topic_alias, v)
        }
        MAXIMUM_QOS => {
            let v = read_bool_byte(p, "maximum QoS must be 0 or 1 (3.2.2.3.4)")?;
            set_once(&mut props.maximum_qos, v)
        }
        RETAIN_AVAILABLE => {
            let v = read_bool_byte(p, "retain available must be 0 or 1 (3.2.2.3.5)")?;
            set_once(&mut props.retain_available, v)
        }
        USER_PROPERTY => {
            let key = p.string()?;
            let value = p.string()?;
            props.user_properties.push((key, value));
            Ok(())
        }
        MAXIMUM_PACKET_SIZE => {
            let v = p.u32()?;
            if v == 0 {
                return Err(DecodeError::Protocol(
                    "maximum packet size of 0 (3.1.2.11.4)",
                ));
            }
            set_once(&mut props.maximum_packet_size, v)
        }
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            let v = read_bool_byte(p, "wildcard subscription available must be 0 or 1")?;
            set_once(&mut props.wildcard_subscription_available, v)
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            let v = read_bool_byte(p, "subscription identifier available must be 0 or 1")?;
            set_once(&mut props.subscription_identifier_available, v)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            let v = read_bool_byte(p, "shared subscription available must be 0 or 1")?;
            set_once(&mut props.shared_subscription_available, v)
        }
        _ => Err(DecodeError::Malformed("unknown property identifier")),
    }
}

/// Visits every property of `props` allowed in `ctx`, in ascending identifier order.
/// One walk serves both the length computation and the writer, so they cannot disagree.
#[inline]
fn walk<S: PropSink>(props: &Properties, ctx: Ctx, sink: &mut S) {
    let ok = |id: u8| allows(ctx, id);
    if let (Some(v), true) = (props.payload_format_indicator, ok(PAYLOAD_FORMAT_INDICATOR)) {
        sink.byte(PAYLOAD_FORMAT_INDICATOR, v);
    }
    if let (Some(v), true) = (props.message_expiry_interval, ok(MESSAGE_EXPIRY_INTERVAL)) {
        sink.four(MESSAGE_EXPIRY_INTERVAL, v);
    }
    if let (Some(v), true) = (&props.content_type, ok(CONTENT_TYPE)) {
        sink.bytes(CONTENT_TYPE, v.as_bytes());
    }
    if let (Some(v), true) = (&props.response_topic, ok(RESPONSE_TOPIC)) {
        sink.bytes(RESPONSE_TOPIC, v.as_bytes());
    }
    if let (Some(v), true) = (&props.correlation_data, ok(CORRELATION_DATA)) {
        sink.bytes(CORRELATION_DATA, v);
    }
    if ok(SUBSCRIPTION_IDENTIFIER) {
        let ids = &props.subscription_identifiers;
        let ids = if ctx == Ctx::Subscribe && ids.len() > 1 {
            &ids[..1]
        } else {
            &ids[..]
        };
        for &v in ids {
            sink.vbi(SUBSCRIPTION_IDENTIFIER, v);
        }
    }
    if let (Some(v), true) = (props.session_expiry_interval, ok(SESSION_EXPIRY_INTERVAL)) {
        sink.four(SESSION_EXPIRY_INTERVAL, v);
    }
    if let (Some(v), true) = (
        &props.assigned_client_identifier,
        ok(ASSIGNED_CLIENT_IDENTIFIER),
    ) {
        sink.bytes(ASSIGNED_CLIENT_IDENTIFIER, v.as_bytes());
    }
    if let (Some(v), true) = (props.server_keep_alive, ok(SERVER_KEEP_ALIVE)) {
        sink.two(SERVER_KEEP_ALIVE, v);
    }
    if let (Some(v), true) = (&props.authentication_method, ok(AUTHENTICATION_METHOD)) {
        sink.bytes(AUTHENTICATION_METHOD, v.as_bytes());
    }
    if let (Some(v), true) = (&props.authentication_data, ok(AUTHENTICATION_DATA)) {
        sink.bytes(AUTHENTICATION_DATA, v);
    }
    if let (Some(v), true) = (
        props.request_problem_information,
        ok(REQUEST_PROBLEM_INFORMATION),
    ) {
        sink.byte(REQUEST_PROBLEM_INFORMATION, v);
    }
    if let (Some(v), true) = (props.will_delay_interval, ok(WILL_DELAY_INTERVAL)) {
        sink.four(WILL_DELAY_INTERVAL, v);
    }
    if let (Some(v), true) = (
        props.request_response_information,
        ok(REQUEST_RESPONSE_INFORMATION),
    ) {
        sink.byte(REQUEST_RESPONSE_INFORMATION, v);
    }
    if let (Some(v), true) = (&props.response_information, ok(RESPONSE_INFORMATION)) {
        sink.bytes(RESPONSE_INFORMATION, v.as_bytes());
    }
    if let (Some(v), true) = (&props.server_reference, ok(SERVER_REFERENCE)) {
        sink.bytes(SERVER_REFERENCE, v.as_bytes());
    }
    if let (Some(v), true) = (&props.reason_string, ok(REASON_STRING)) {
        sink.bytes(REASON_STRING, v.as_bytes());
    }
    if let (Some(v), true) = (props.receive_maximum, ok(RECEIVE_MAXIMUM)) {
        sink.two(RECEIVE_MAXIMUM, v);
    }
    if let (Some(v), true) = (props.topic_alias_maximum, ok(TOPIC_ALIAS_MAXIMUM)) {
        sink.two(TOPIC_ALIAS_MAXIMUM, v);
    }
    if let (Some(v), true) = (props.topic_alias, ok(TOPIC_ALIAS)) {
        sink.two(TOPIC_ALIAS, v);
    }
    if let (Some(v), true) = (props.maximum_qos, ok(MAXIMUM_QOS)) {
        sink.byte(MAXIMUM_QOS, v);
    }
    if let (Some(v), true) = (props.retain_available, ok(RETAIN_AVAILABLE)) {
        sink.byte(RETAIN_AVAILABLE, v);
    }
    for (k, v) in &props.user_properties {
        sink.pair(USER_PROPERTY, k, v);
    }
    if let (Some(v), true) = (props.maximum_packet_size, ok(MAXIMUM_PACKET_SIZE)) {
        sink.four(MAXIMUM_PACKET_SIZE, v);
    }
    if let (Some(v), true) = (
        props.wildcard_subscription_available,
        ok(WILDCARD_SUBSCRIPTION_AVAILABLE),
    ) {
        sink.byte(WILDCARD_SUBSCRIPTION_AVAILABLE, v);
    }
    if let (Some(v), true) = (
        props.subscription_identifier_available,
        ok(SUBSCRIPTION_IDENTIFIER_AVAILABLE),
    ) {
        sink.byte(SUBSCRIPTION_IDENTIFIER_AVAILABLE, v);
    }
    if let (Some(v), true) = (
        props.shared_subscription_available,
        ok(SHARED_SUBSCRIPTION_AVAILABLE),
    ) {
        sink.byte(SHARED_SUBSCRIPTION_AVAILABLE, v);
    }
}

trait PropSink {
    fn byte(&mut self, id: u8, v: u8);
    fn two(&mut self, id: u8, v: u16);
    fn four(&mut self, id: u8, v: u32);
    fn vbi(&mut self, id: u8, v: u32);
    fn bytes(&mut self, id: u8, v: &[u8]);
    fn pair(&mut self, id: u8, k: &MqttStr, v: &MqttStr);
}

/// Adds up the encoded size, and the longest string or binary value (which must fit in a
/// two-byte length).
#[derive(Default)]
struct Measure {
    len: usize,
    longest: usize,
}

impl PropSink for Measure {
    fn byte(&mut self, _: u8, _: u8) {
        self.len += 2;
    }
    fn two(&mut self, _: u8, _: u16) {
        self.len += 3;
    }
    fn four(&mut self, _: u8, _: u32) {
        self.len += 5;
    }
    fn vbi(&mut self, _: u8, v: u32) {
        self.len += 1 + vbi_len(v as usize);
        if v > VBI_MAX {
            // Not representable: reported like an over-long string.
            self.longest = usize::MAX;
        }
    }
    fn bytes(&mut self, _: u8, v: &[u8]) {
        self.len += 3 + v.len();
        self.longest = self.longest.max(v.len());
    }
    fn pair(&mut self, _: u8, k: &MqttStr, v: &MqttStr) {
        self.len += 5 + k.len() + v.len();
        self.longest = self.longest.max(k.len()).max(v.len());
    }
}

struct Write<'a>(&'a mut BytesMut);

impl PropSink for Write<'_> {
    fn byte(&mut self, id: u8, v: u8) {
        self.0.put_u8(id);
        self.0.put_u8(v);
    }
    fn two(&mut self, id: u8, v: u16) {
        self.0.put_u8(id);
        self.0.put_u16(v);
    }
    fn four(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        self.0.put_u32(v);
    }
    fn vbi(&mut self, id: u8, v: u32) {
        self.0.put_u8(id);
        put_vbi(self.0, v as usize);
    }
    fn bytes(&mut self, id: u8, v: &[u8]) {
        self.0.put_u8(id);
        put_prefixed(self.0, v);
    }
    fn pair(&mut self, id: u8, k: &MqttStr, v: &MqttStr) {
        self.0.put_u8(id);
        put_prefixed(self.0, k.as_bytes());
        put_prefixed(self.0, v.as_bytes());
    }
}

/// The size of the property list (without its Property Length prefix) and the longest
/// string or binary value in it (`usize::MAX` if a subscription identifier exceeds
/// [`VBI_MAX`]); the encoder refuses the packet when that exceeds 65,535.
#[inline]
pub(crate) fn measure(props: &Properties, ctx: Ctx) -> (usize, usize) {
    let mut m = Measure::default();
    walk(props, ctx, &mut m);
    (m.len, m.longest)
}

/// Writes the Property Length then the properties; `len` is `measure(props, ctx).0`.
#[inline]
pub(crate) fn write_properties(buf: &mut BytesMut, props: &Properties, ctx: Ctx, len: usize) {
    put_vbi(buf, len);
    if len > 0 {
        walk(props, ctx, &mut Write(buf));
    }
}
