//! Packet encoding for MQTT 3.1, 3.1.1 and 5.0.
//!
//! One model serves all versions: for 3.x the encoder drops properties and the other
//! v5-only fields, and maps v5 reason codes to 3.x return codes. For 5.0 it uses the short
//! forms the spec allows: PUBACK/PUBREC/PUBREL/PUBCOMP with reason 0x00 and no properties
//! are just the packet identifier (3.4.2.1), DISCONNECT and AUTH with reason 0x00 and no
//! properties have a Remaining Length of 0 (3.14.2.1, 3.15.2.1), and a non-zero reason code
//! without properties leaves out the Property Length where the spec allows it (PUBACK
//! family and DISCONNECT, not AUTH).
//!
//! Properties not allowed in the packet being written are left out (see `properties.rs`).
//! CONNECT is written for its own `protocol` field, like the decoder reads it; `version` is
//! ignored for CONNECT. A QoS 0 PUBLISH is written with DUP 0 [MQTT-3.3.1-2].
//!
//! 3.x CONNACK return codes (3.1.1 table 3.1) from v5 reason codes:
//! 0x00 → 0; 0x84 → 1 (unacceptable protocol version); 0x85 → 2 (identifier rejected);
//! 0x80, 0x83, 0x88, 0x89, 0x8B, 0x97, 0x9C, 0x9D, 0x9F (server-side conditions) → 3 (server
//! unavailable); 0x86 → 4 (bad user name or password); 0x87, 0x8A, 0x8C and every other
//! failure code → 5 (not authorized). Success codes other than 0x00 do not exist for
//! CONNACK and are written as 0. 3.x SUBACK failure codes (>= 0x80) are written as 0x80.

use super::properties::{measure, write_properties, Ctx};
use super::types::*;
use super::wire::{put_prefixed, put_vbi, vbi_len, VBI_MAX};
use bytes::{BufMut, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet, or one of its strings or binary fields, cannot be represented: a
    /// Remaining Length above 268,435,455 or a length-prefixed field above 65,535 bytes.
    #[error("packet too large to encode: {0} bytes")]
    TooLarge(usize),
    #[error("packet type not valid for this protocol version")]
    NotInVersion,
}

const MAX_FIELD: usize = u16::MAX as usize;

/// Sizes computed once and shared by the length check and the writer.
#[derive(Default)]
struct Layout {
    remaining: usize,
    /// Length of the main property list (without its Property Length prefix).
    props: usize,
    /// Length of the will property list (CONNECT).
    will_props: usize,
    /// For PUBACK family / DISCONNECT / AUTH in v5: 0 = nothing after the packet id (or an
    /// empty body), 1 = reason code only, 2 = reason code and properties.
    form: u8,
    /// The longest length-prefixed field; `usize::MAX` if something is unrepresentable.
    longest: usize,
}

impl Layout {
    #[inline]
    fn field(&mut self, len: usize) {
        self.remaining += 2 + len;
        self.longest = self.longest.max(len);
    }

    /// Adds a property list (with its prefix) and returns its inner length.
    #[inline]
    fn properties(&mut self, props: &Properties, ctx: Ctx) -> usize {
        let (len, longest) = measure(props, ctx);
        self.remaining += vbi_len(len) + len;
        self.longest = self.longest.max(longest);
        len
    }

    fn check(&self) -> Result<(), EncodeError> {
        if self.longest > MAX_FIELD {
            return Err(EncodeError::TooLarge(self.longest));
        }
        if self.remaining > VBI_MAX as usize {
            return Err(EncodeError::TooLarge(self.remaining));
        }
        Ok(())
    }

    fn total(&self) -> usize {
        1 + vbi_len(self.remaining) + self.remaining
    }
}

/// Appends `packet`, encoded for `version`, to `buf`. v5-only fields are left out for 3.x.
/// On error nothing is written.
pub fn encode_packet(
    packet: &Packet,
    version: ProtocolVersion,
    buf: &mut BytesMut,
) -> Result<(), EncodeError> {
    if let Packet::Publish(p) = packet {
        let layout = publish_layout(p, version);
        layout.check()?;
        write_publish(p, version, &layout, buf);
        return Ok(());
    }
    let layout = layout(packet, version)?;
    layout.check()?;
    buf.reserve(layout.total());
    write(packet, version, &layout, buf);
    Ok(())
}

/// The number of bytes `encode_packet` would write, fixed header included (0 for a packet
/// that does not exist in `version`).
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    match packet {
        Packet::Publish(p) => publish_layout(p, version).total(),
        _ => layout(packet, version).map_or(0, |l| l.total()),
    }
}

/// The broker's hot path: appends a PUBLISH to `buf`, allocating nothing beyond growing
/// `buf`. A PUBLISH that cannot be represented (a topic or property above 65,535 bytes, or
/// a Remaining Length above 268,435,455: impossible for anything this codec decoded within
/// a sane maximum packet size) is not written; use [`encode_packet`] to get the error.
pub fn encode_publish(publish: &Publish, version: ProtocolVersion, buf: &mut BytesMut) {
    let layout = publish_layout(publish, version);
    let checked = layout.check();
    debug_assert!(checked.is_ok(), "unencodable PUBLISH: {checked:?}");
    if checked.is_ok() {
        write_publish(publish, version, &layout, buf);
    }
}

fn publish_layout(p: &Publish, version: ProtocolVersion) -> Layout {
    let mut l = Layout::default();
    l.field(p.topic.len());
    if p.qos != QoS::AtMostOnce {
        l.remaining += 2;
    }
    if version.is_v5() {
        l.props = l.properties(&p.properties, Ctx::Publish);
    }
    l.remaining += p.payload.len();
    l
}

fn write_publish(p: &Publish, version: ProtocolVersion, l: &Layout, buf: &mut BytesMut) {
    buf.reserve(l.total());
    let dup = p.dup && p.qos != QoS::AtMostOnce;
    buf.put_u8(0x30 | (u8::from(dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain));
    put_vbi(buf, l.remaining);
    put_prefixed(buf, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        buf.put_u16(p.packet_id);
    }
    if version.is_v5() {
        write_properties(buf, &p.properties, Ctx::Publish, l.props);
    }
    buf.put_slice(&p.payload);
}

fn layout(packet: &Packet, version: ProtocolVersion) -> Result<Layout, EncodeError> {
    let v5 = version.is_v5();
    let mut l = Layout::default();
    match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol.is_v5();
            // Protocol name, level, flags, keep alive.
            l.field(if c.protocol == ProtocolVersion::V31 {
                6
            } else {
                4
            });
            l.remaining += 4;
            if cv5 {
                l.props = l.properties(&c.properties, Ctx::Connect);
            }
            l.field(c.client_id.len());
            if let Some(w) = &c.will {
                if cv5 {
                    l.will_props = l.properties(&w.properties, Ctx::Will);
                }
                l.field(w.topic.len());
                l.field(w.payload.len());
            }
            if let Some(u) = &c.username {
                l.field(u.len());
            }
            if let Some(p) = &c.password {
                l.field(p.len());
            }
        }
        Packet::ConnAck(a) => {
            l.remaining = 2;
            if v5 {
                l.props = l.properties(&a.properties, Ctx::ConnAck);
            }
        }
        Packet::Publish(p) => return Ok(publish_layout(p, version)),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            l.remaining = 2;
            if v5 {
                let (len, longest) = measure(&r.properties, Ctx::PubResp);
                l.longest = longest;
                l.props = len;
                l.form = if len > 0 {
                    l.remaining += 1 + vbi_len(len) + len;
                    2
                } else if r.reason_code != reason::SUCCESS {
                    l.remaining += 1;
                    1
                } else {
                    0
                };
            }
        }
        Packet::Subscribe(s) => {
            l.remaining = 2;
            if v5 {
                l.props = l.properties(&s.properties, Ctx::Subscribe);
            }
            for (f, _) in &s.filters {
                l.field(f.len());
                l.remaining += 1;
            }
        }
        Packet::SubAck(s) => {
            l.remaining = 2 + s.reason_codes.len();
            if v5 {
                l.props = l.properties(&s.properties, Ctx::SubAck);
            }
        }
        Packet::Unsubscribe(u) => {
            l.remaining = 2;
            if v5 {
                l.props = l.properties(&u.properties, Ctx::Unsubscribe);
            }
            for f in &u.filters {
                l.field(f.len());
            }
        }
        Packet::UnsubAck(u) => {
            l.remaining = 2;
            if v5 {
                l.props = l.properties(&u.properties, Ctx::UnsubAck);
                l.remaining += u.reason_codes.len();
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                short_form(&mut l, d.reason_code, &d.properties, Ctx::Disconnect, true);
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::NotInVersion);
            }
            short_form(&mut l, a.reason_code, &a.properties, Ctx::Auth, false);
        }
    }
    Ok(l)
}

/// DISCONNECT / AUTH: empty body for reason 0x00 without properties; otherwise the reason
/// code, then the properties (left out when empty if `reason_alone` is allowed).
fn short_form(l: &mut Layout, code: u8, props: &Properties, ctx: Ctx, reason_alone: bool) {
    let (len, longest) = measure(props, ctx);
    l.longest = longest;
    l.props = len;
    if len == 0 && code == reason::SUCCESS {
        l.form = 0;
    } else if len == 0 && reason_alone {
        l.form = 1;
        l.remaining = 1;
    } else {
        l.form = 2;
        l.remaining = 1 + vbi_len(len) + len;
    }
}

/// v5 reason code → 3.1.1 CONNACK return code (see the module documentation).
pub(crate) fn v3_connack_code(code: u8) -> u8 {
    match code {
        0x00..=0x7F => 0,
        reason::UNSUPPORTED_PROTOCOL_VERSION => 1,
        reason::CLIENT_IDENTIFIER_NOT_VALID => 2,
        reason::UNSPECIFIED_ERROR
        | reason::IMPLEMENTATION_SPECIFIC_ERROR
        | reason::SERVER_UNAVAILABLE
        | reason::SERVER_BUSY
        | reason::SERVER_SHUTTING_DOWN
        | reason::QUOTA_EXCEEDED
        | reason::USE_ANOTHER_SERVER
        | reason::SERVER_MOVED
        | reason::CONNECTION_RATE_EXCEEDED => 3,
        reason::BAD_USER_NAME_OR_PASSWORD => 4,
        _ => 5,
    }
}

fn write(packet: &Packet, version: ProtocolVersion, l: &Layout, buf: &mut BytesMut) {
    let v5 = version.is_v5();
    let header = |buf: &mut BytesMut, first: u8| {
        buf.put_u8(first);
        put_vbi(buf, l.remaining);
    };
    match packet {
        Packet::Connect(c) => {
            header(buf, 0x10);
            let cv5 = c.protocol.is_v5();
            let name: &[u8] = if c.protocol == ProtocolVersion::V31 {
                b"MQIsdp"
            } else {
                b"MQTT"
            };
            put_prefixed(buf, name);
            buf.put_u8(c.protocol.level());
            let mut flags = u8::from(c.clean_start) << 1;
            if let Some(w) = &c.will {
                flags |= 0b100 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
            }
            flags |= u8::from(c.password.is_some()) << 6;
            flags |= u8::from(c.username.is_some()) << 7;
            buf.put_u8(flags);
            buf.put_u16(c.keep_alive);
            if cv5 {
                write_properties(buf, &c.properties, Ctx::Connect, l.props);
            }
            put_prefixed(buf, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if cv5 {
                    write_properties(buf, &w.properties, Ctx::Will, l.will_props);
                }
                put_prefixed(buf, w.topic.as_bytes());
                put_prefixed(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                put_prefixed(buf, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_prefixed(buf, p);
            }
        }
        Packet::ConnAck(a) => {
            header(buf, 0x20);
            // MQTT 3.1 has no session present flag.
            buf.put_u8(u8::from(
                a.session_present && version != ProtocolVersion::V31,
            ));
            if v5 {
                buf.put_u8(a.reason_code);
                write_properties(buf, &a.properties, Ctx::ConnAck, l.props);
            } else {
                buf.put_u8(v3_connack_code(a.reason_code));
            }
        }
        Packet::Publish(p) => write_publish(p, version, l, buf),
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            let first = match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            };
            header(buf, first);
            buf.put_u16(r.packet_id);
            if l.form >= 1 {
                buf.put_u8(r.reason_code);
            }
            if l.form == 2 {
                write_properties(buf, &r.properties, Ctx::PubResp, l.props);
            }
        }
        Packet::Subscribe(s) => {
            header(buf, 0x82);
            buf.put_u16(s.packet_id);
            if v5 {
                write_properties(buf, &s.properties, Ctx::Subscribe, l.props);
            }
            for (f, o) in &s.filters {
                put_prefixed(buf, f.as_bytes());
                let mut opts = o.qos as u8;
                if v5 {
                    opts |= u8::from(o.no_local) << 2;
                    opts |= u8::from(o.retain_as_published) << 3;
                    opts |= (o.retain_handling as u8) << 4;
                }
                buf.put_u8(opts);
            }
        }
        Packet::SubAck(s) => {
            header(buf, 0x90);
            buf.put_u16(s.packet_id);
            if v5 {
                write_properties(buf, &s.properties, Ctx::SubAck, l.props);
                buf.put_slice(&s.reason_codes);
            } else {
                for &c in &s.reason_codes {
                    buf.put_u8(if c >= 0x80 { 0x80 } else { c });
                }
            }
        }
        Packet::Unsubscribe(u) => {
            header(buf, 0xA2);
            buf.put_u16(u.packet_id);
            if v5 {
                write_properties(buf, &u.properties, Ctx::Unsubscribe, l.props);
            }
            for f in &u.filters {
                put_prefixed(buf, f.as_bytes());
            }
        }
        Packet::UnsubAck(u) => {
            header(buf, 0xB0);
            buf.put_u16(u.packet_id);
            if v5 {
                write_properties(buf, &u.properties, Ctx::UnsubAck, l.props);
                buf.put_slice(&u.reason_codes);
            }
        }
        Packet::PingReq => header(buf, 0xC0),
        Packet::PingResp => header(buf, 0xD0),
        Packet::Disconnect(d) => {
            header(buf, 0xE0);
            write_short_form(buf, l, d.reason_code, &d.properties, Ctx::Disconnect);
        }
        Packet::Auth(a) => {
            header(buf, 0xF0);
            write_short_form(buf, l, a.reason_code, &a.properties, Ctx::Auth);
        }
    }
}

fn write_short_form(buf: &mut BytesMut, l: &Layout, code: u8, props: &Properties, ctx: Ctx) {
    if l.form >= 1 {
        buf.put_u8(code);
    }
    if l.form == 2 {
        write_properties(buf, props, ctx, l.props);
    }
}
