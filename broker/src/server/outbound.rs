//! Deliveries to the client: from the outbox into the write buffer, within the in-flight
//! window, the client's Maximum Packet Size and its Topic Alias Maximum.

use super::connection::{Connection, Deferred, FILL_BATCH};

/// Room made in an empty write buffer before a batch, so that it rarely regrows.
const WRITE_BUFFER_START: usize = 16 * 1024;
use crate::codec::{self, MqttStr, Packet, PubResponse, QoS};
use crate::durable::Ticket;
use crate::message::packet_id_offset;
use crate::session::{Delivery, InFlight, StoredRef};
use crate::stats::Stats;
use rookery_storage::Op;
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
                let topic = Some(&*delivery.message.topic);
                let client = Some(&*self.client_id);
                self.broker.router.events.dropped(topic, client, "expired");
                self.stored_delivery_done(delivery.stored, None);
                continue;
            }
            if !self.may_still_receive(&delivery) {
                // Queued while allowed, no longer allowed (removed, demoted, group
                // deactivated or deleted while it waited): not delivered [SPEC §6].
                Stats::add(&self.broker.stats.acl_denied, 1);
                self.stored_delivery_done(delivery.stored, None);
                continue;
            }
            let stored = delivery.stored;
            if self.write_new_delivery(delivery) {
                sent += 1;
            } else {
                self.stored_delivery_done(stored, None);
            }
        }
        if sent > 0 {
            Stats::add(&self.broker.stats.publish_sent, sent);
            Stats::add(&self.broker.stats.messages_sent, sent);
        }
    }

    /// A group message is checked again when it is sent, against the group as it is now:
    /// it may have waited in a queue (offline, backlog) since it was routed.
    fn may_still_receive(&self, delivery: &Delivery) -> bool {
        let topic = &delivery.message.topic;
        if !(topic.starts_with("groups/") || topic.starts_with("$groups/")) {
            return true;
        }
        let directory = &self.broker.router.directory;
        let routed_under = delivery.message.directory_generation;
        if routed_under != 0 && routed_under == directory.generation() {
            // Nothing changed since routing decided (the usual case: one atomic load).
            return true;
        }
        crate::groups::enforce::GroupRoute::for_topic(topic, directory)
            .is_none_or(|route| route.receiver(self.username.as_deref()).is_some())
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
            let reference = StoredRef {
                seq,
                message_id: entry.message_id,
            };
            // Recovered in flight (a QoS 2 message sent before a restart): it is resent
            // from the in-flight state with its packet id, not again as new.
            if self
                .state
                .inflight
                .values()
                .any(|f| f.delivery.stored == Some(reference))
            {
                continue;
            }
            let Some(message) = crate::message::Message::from_stored(stored) else {
                tracing::error!(%client_id, seq, "stored message does not decode: dropped");
                self.stored_delivery_done(Some(reference), None);
                continue;
            };
            loaded.push(Delivery {
                message: std::sync::Arc::new(message),
                qos: QoS::from_u8(entry.qos).unwrap_or(QoS::AtLeastOnce),
                retain: entry.retain,
                subscription_ids: entry.subscription_ids,
                stored: Some(reference),
                redelivery: self.core.outbox.is_recovered(seq),
            });
        }
        loaded
    }

    /// The client has a stored delivery (or it will never be sent): its queue entry
    /// leaves the store, together with `also` (the QoS 2 in-flight record's update) in
    /// the same commit. Returns the ticket of that commit.
    pub(super) fn stored_delivery_done(
        &mut self,
        stored: Option<StoredRef>,
        also: Option<Op>,
    ) -> Option<Ticket> {
        let (stored, durable) = (stored?, self.broker.durable.clone()?);
        self.core.outbox.stored_done(stored.seq);
        let dequeue = Op::Dequeue {
            client_id: self.client_id.to_string(),
            sequence: stored.seq,
        };
        Some(durable.submit(also.into_iter().chain([dequeue])))
    }

    /// The in-flight record of a QoS 2 delivery to a persistent session: sent with its
    /// packet id, so that after a restart the same packet id is used again and the
    /// client recognises the message instead of taking it for a new one.
    pub(super) fn inflight_record(&self, packet_id: u16, inflight: &InFlight) -> Option<Op> {
        let stored = inflight.delivery.stored?;
        Some(Op::PutInflight {
            client_id: self.client_id.to_string(),
            packet_id,
            entry: rookery_storage::InflightEntry {
                message_id: stored.message_id,
                qos: inflight.delivery.qos as u8,
                retain: inflight.delivery.retain,
                subscription_ids: inflight.delivery.subscription_ids.clone(),
                released: inflight.released,
                sequence: stored.seq,
            },
        })
    }

    /// The removal of a QoS 2 delivery's in-flight record, if it has one.
    pub(super) fn forget_inflight(&self, packet_id: u16, inflight: &InFlight) -> Option<Op> {
        (inflight.delivery.qos == QoS::ExactlyOnce && inflight.delivery.stored.is_some()).then(
            || Op::RemoveInflight {
                client_id: self.client_id.to_string(),
                packet_id,
            },
        )
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
        if packet_id == 0 {
            return self.write_publish(&delivery, 0, false);
        }
        let sequence = self.state.next_sequence;
        self.state.next_sequence += 1;
        let inflight = InFlight {
            delivery,
            sequence,
            released: false,
        };
        // QoS 2 to a persistent session: the packet id is stored before the PUBLISH
        // leaves (with `strict`, the PUBLISH waits for that commit).
        let record = (inflight.delivery.qos == QoS::ExactlyOnce)
            .then(|| self.inflight_record(packet_id, &inflight))
            .flatten();
        let ticket = record.and_then(|op| self.broker.durable.as_ref().map(|d| d.submit([op])));
        let delivery = inflight.delivery.clone();
        self.state.inflight.insert(packet_id, inflight);
        match ticket.filter(|_| self.durable_acks()) {
            Some(ticket) => {
                self.defer(
                    ticket,
                    Deferred::Publish {
                        delivery,
                        packet_id,
                    },
                );
                true
            }
            None => {
                if self.write_publish(&delivery, packet_id, delivery.redelivery) {
                    true
                } else {
                    self.state.inflight.remove(&packet_id);
                    false
                }
            }
        }
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
    pub(super) fn write_publish(&mut self, delivery: &Delivery, packet_id: u16, dup: bool) -> bool {
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
                return self.too_large(&message.topic);
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
            return self.too_large(&message.topic);
        }
        if let Packet::Publish(publish) = &packet {
            codec::encode::encode_publish(publish, self.version, &mut self.wbuf);
        }
        true
    }

    /// [MQTT-3.1.2-25] a packet larger than the client's Maximum Packet Size is dropped as
    /// if delivered.
    fn too_large(&mut self, topic: &str) -> bool {
        Stats::add(&self.broker.stats.dropped_too_large, 1);
        let client = Some(&*self.client_id);
        self.broker
            .router
            .events
            .dropped(Some(topic), client, "too_large");
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
