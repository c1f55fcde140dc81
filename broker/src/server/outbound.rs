//! Deliveries to the client: from the outbox into the write buffer, within the in-flight
//! window, the client's Maximum Packet Size and its Topic Alias Maximum.

use super::connection::{Connection, FILL_BATCH};

/// Room made in an empty write buffer before a batch, so that it rarely regrows.
const WRITE_BUFFER_START: usize = 16 * 1024;
use crate::codec::{self, MqttStr, Packet, PubResponse, QoS};
use crate::message::packet_id_offset;
use crate::session::{Delivery, InFlight};
use crate::stats::Stats;
use std::time::Instant;

impl Connection {
    /// Moves queued deliveries into the write buffer: QoS 0 at once, QoS 1/2 while the
    /// in-flight window has room [MQTT-4.9.0-2].
    pub(super) fn fill_from_outbox(&mut self) {
        let window = self
            .inflight_limit
            .saturating_sub(self.state.inflight_count());
        let mut batch = Vec::new();
        self.core.outbox.drain_into(&mut batch, FILL_BATCH, window);
        if batch.is_empty() {
            batch = self.load_from_store(window.min(FILL_BATCH));
        }
        if batch.is_empty() {
            return;
        }
        if self.wbuf.capacity() == 0 {
            self.wbuf.reserve(WRITE_BUFFER_START);
        }
        let now = Instant::now();
        let mut sent = 0;
        for delivery in batch.drain(..) {
            if delivery.message.is_expired(now) {
                // [MQTT-3.3.2-5] an expired message is not delivered.
                Stats::add(&self.broker.stats.dropped_expired, 1);
                self.stored_delivery_done(delivery.seq);
                continue;
            }
            let seq = delivery.seq;
            if self.write_new_delivery(delivery) {
                sent += 1;
            } else {
                self.stored_delivery_done(seq);
            }
        }
        if sent > 0 {
            Stats::add(&self.broker.stats.publish_sent, sent);
            Stats::add(&self.broker.stats.messages_sent, sent);
        }
    }

    /// Reads the next stored entries of a persistent session back, once its in-memory
    /// queue is empty. The store read is a short, bounded range scan (at most one batch),
    /// done in place rather than on a blocking thread.
    fn load_from_store(&mut self, limit: usize) -> Vec<Delivery> {
        let Some(durable) = self.broker.durable.clone() else {
            return Vec::new();
        };
        if limit == 0 {
            return Vec::new();
        }
        let Some((from, client_id)) = self.core.outbox.unloaded_from() else {
            return Vec::new();
        };
        let entries = match durable.store().queue_range(&client_id, from, limit) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, %client_id, "cannot read the stored queue");
                return Vec::new();
            }
        };
        let mut loaded = Vec::with_capacity(entries.len());
        for (seq, entry, stored) in entries {
            self.core.outbox.mark_loaded(seq);
            let Some(message) = crate::message::Message::from_stored(stored) else {
                tracing::error!(%client_id, seq, "stored message does not decode: dropped");
                self.stored_delivery_done(Some(seq));
                continue;
            };
            loaded.push(Delivery {
                message: std::sync::Arc::new(message),
                qos: QoS::from_u8(entry.qos).unwrap_or(QoS::AtLeastOnce),
                retain: entry.retain,
                subscription_ids: entry.subscription_ids,
                seq: Some(seq),
            });
        }
        loaded
    }

    /// The client is done with a stored delivery (acknowledged, or it will never be
    /// sent): its entry leaves the store. Returns the ticket of that removal.
    pub(super) fn stored_delivery_done(
        &mut self,
        seq: Option<u64>,
    ) -> Option<crate::durable::Ticket> {
        let (seq, durable) = (seq?, self.broker.durable.as_ref()?);
        self.core.outbox.stored_done(seq);
        Some(durable.submit([rookery_storage::Op::Dequeue {
            client_id: self.client_id.to_string(),
            sequence: seq,
        }]))
    }

    /// Writes a delivery, allocating a packet id and recording it in flight for QoS > 0.
    /// Returns false when the message was not sent (too large for the client).
    fn write_new_delivery(&mut self, delivery: Delivery) -> bool {
        let packet_id = if delivery.qos == QoS::AtMostOnce {
            0
        } else {
            match self.state.allocate_packet_id() {
                Some(id) => id,
                None => return false,
            }
        };
        if !self.write_publish(&delivery, packet_id, false) {
            return false;
        }
        if packet_id != 0 {
            let sequence = self.state.next_sequence;
            self.state.next_sequence += 1;
            self.state.inflight.insert(
                packet_id,
                InFlight {
                    delivery,
                    sequence,
                    released: false,
                },
            );
        }
        true
    }

    /// After a reconnect: unacknowledged PUBLISH packets again with DUP set, and PUBREL
    /// for those already received, in their original order [MQTT-4.4.0-1].
    pub(super) fn resend_inflight(&mut self) {
        for packet_id in self.state.inflight_in_order() {
            let Some(inflight) = self.state.inflight.get(&packet_id) else {
                continue;
            };
            if inflight.released {
                self.send(&Packet::PubRel(PubResponse::new(packet_id, 0)));
            } else {
                let delivery = inflight.delivery.clone();
                if !self.write_publish(&delivery, packet_id, true) {
                    self.state.inflight.remove(&packet_id);
                }
            }
        }
    }

    /// Appends one PUBLISH. Uses the message's shared encoding when the form allows it
    /// (no subscription identifiers, no topic alias), patching in the packet id and DUP.
    fn write_publish(&mut self, delivery: &Delivery, packet_id: u16, dup: bool) -> bool {
        let message = &delivery.message;
        let alias = self.outbound_alias(&message.topic);
        let start = self.wbuf.len();
        let shared = match alias {
            None if delivery.subscription_ids.is_empty() => {
                message.encoded(self.version, delivery.qos, delivery.retain)
            }
            _ => None,
        };
        if let Some(encoded) = shared {
            if encoded.len() > self.client_max_packet {
                return self.too_large();
            }
            self.wbuf.extend_from_slice(encoded);
            if packet_id != 0 {
                if let Some(offset) = packet_id_offset(encoded) {
                    self.wbuf[start + offset..start + offset + 2]
                        .copy_from_slice(&packet_id.to_be_bytes());
                }
            }
            if dup {
                self.wbuf[start] |= 0x08;
            }
            return true;
        }
        let mut publish =
            message.to_publish(delivery.qos, delivery.retain, &delivery.subscription_ids);
        publish.packet_id = packet_id;
        publish.dup = dup;
        if let Some((alias, known)) = alias {
            publish.properties.topic_alias = Some(alias);
            if known {
                publish.topic = MqttStr::default();
            }
        }
        let packet = Packet::Publish(publish);
        if codec::encoded_len(&packet, self.version) > self.client_max_packet {
            if let Some((_, false)) = alias {
                // The alias was never sent, so the client must not be assumed to know it.
                self.outbound_aliases.remove(&message.topic);
            }
            return self.too_large();
        }
        if let Packet::Publish(publish) = &packet {
            codec::encode::encode_publish(publish, self.version, &mut self.wbuf);
        }
        true
    }

    /// [MQTT-3.1.2-25] a packet larger than the client's Maximum Packet Size is dropped as
    /// if delivered.
    fn too_large(&mut self) -> bool {
        Stats::add(&self.broker.stats.dropped_too_large, 1);
        false
    }

    /// The topic alias to use towards a v5 client that accepts them: `(alias, true)` when
    /// the client already knows it, `(alias, false)` when this PUBLISH sets it. Aliases are
    /// handed out until the client's maximum is reached, then topics go in full.
    fn outbound_alias(&mut self, topic: &MqttStr) -> Option<(u16, bool)> {
        if self.client_alias_max == 0 || !self.version.is_v5() {
            return None;
        }
        if let Some(alias) = self.outbound_aliases.get(topic) {
            return Some((*alias, true));
        }
        let count = self.outbound_aliases.len();
        if count >= usize::from(self.client_alias_max) {
            return None;
        }
        let alias = (count + 1) as u16;
        self.outbound_aliases.insert(topic.clone(), alias);
        Some((alias, false))
    }
}
