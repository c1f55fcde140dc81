//! Packets from the client, once connected.

use super::connection::{Connection, Deferred, End};
use crate::acl::{Access, Identity};
use crate::codec::topic::{parse_shared, validate_topic_filter};
use crate::codec::{
    reason, Disconnect, MqttStr, Packet, PubResponse, Publish, QoS, RetainHandling, SubAck,
    Subscribe, UnsubAck, Unsubscribe,
};
use crate::groups::enforce::{self, GroupRoute};
use crate::groups::GroupTopic;
use crate::message::Message;
use crate::session::{Delivery, SessionSubscription};
use crate::stats::Stats;

impl Connection {
    pub(super) fn handle(&mut self, packet: Packet) {
        if !matches!(packet, Packet::Publish(_)) {
            // Whatever this packet changes (a subscription, an acknowledgement), the
            // messages before it are routed first.
            self.route_staged();
        }
        match packet {
            Packet::Publish(publish) => self.on_publish(publish),
            Packet::PubAck(ack) => self.on_puback(ack),
            Packet::PubRec(rec) => self.on_pubrec(rec),
            Packet::PubRel(rel) => self.on_pubrel(rel),
            Packet::PubComp(comp) => self.on_pubcomp(comp),
            Packet::Subscribe(subscribe) => self.on_subscribe(subscribe),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(disconnect) => self.on_disconnect(disconnect),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation; so is AUTH without an
            // authentication method, and any packet only a server sends.
            _ => self.end(End::Violation(reason::PROTOCOL_ERROR)),
        }
    }

    fn who(&self) -> Identity<'_> {
        Identity {
            username: self.username.as_deref(),
            client_id: &self.client_id,
        }
    }

    /// Refuses a PUBLISH: v5 gets the reason in PUBACK/PUBREC; 3.1.1 gets the normal
    /// acknowledgement and the message is dropped [MQTT-3.3.5-2], or is disconnected when
    /// configured so.
    /// Storage is full and the message would have to be stored: v5 clients get 0x97
    /// (in order behind acknowledgements still waiting for commits); a 3.1.1 client,
    /// which cannot be told, is disconnected without the acknowledgement, as after a
    /// failed commit, so that it resends the message after reconnecting.
    fn refuse_storage_full(&mut self, qos: QoS, packet_id: u16) {
        tracing::debug!(client_id = %self.client_id, packet_id, "publish refused: storage full");
        if !self.version.is_v5() {
            self.end(End::Lost);
            return;
        }
        let response = PubResponse::new(packet_id, reason::QUOTA_EXCEEDED);
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.acknowledge(Packet::PubAck(response), None),
            QoS::ExactlyOnce => self.acknowledge(Packet::PubRec(response), None),
        }
    }

    fn refuse_publish(&mut self, publish: &Publish, code: u8) {
        // Its acknowledgement goes behind those of the messages before it.
        self.route_staged();
        if code == reason::NOT_AUTHORIZED {
            Stats::add(&self.broker.stats.acl_denied, 1);
        }
        tracing::debug!(client_id = %self.client_id, topic = %publish.topic, code, "publish refused");
        if !self.version.is_v5() && self.config.mqtt.disconnect_on_denied_publish {
            self.end(End::Violation(code));
            return;
        }
        let code = if self.version.is_v5() {
            code
        } else {
            reason::SUCCESS
        };
        match publish.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.send(&Packet::PubAck(PubResponse::new(publish.packet_id, code)))
            }
            QoS::ExactlyOnce => {
                if code < 0x80 {
                    self.state.incoming_qos2.insert(publish.packet_id);
                }
                self.send(&Packet::PubRec(PubResponse::new(publish.packet_id, code)));
            }
        }
    }

    fn on_publish(&mut self, mut publish: Publish) {
        Stats::add(&self.broker.stats.publish_received, 1);
        if !self.resolve_topic_alias(&mut publish) {
            return;
        }
        if !may_be_staged(&publish) {
            self.route_staged();
        }
        let config = &self.config.mqtt;
        if publish.topic.len() > config.max_topic_length
            || publish.topic.split('/').count() > config.max_topic_levels
        {
            self.end(End::Violation(reason::TOPIC_NAME_INVALID));
            return;
        }
        if publish.qos == QoS::ExactlyOnce {
            if self.state.incoming_qos2.contains(&publish.packet_id) {
                // A resent QoS 2 PUBLISH: acknowledged again, not delivered again [MQTT-4.3.3-10].
                self.send(&Packet::PubRec(PubResponse::new(
                    publish.packet_id,
                    reason::SUCCESS,
                )));
                return;
            }
            if self.state.incoming_qos2.len() >= usize::from(config.receive_maximum.max(1)) {
                // [MQTT-3.3.4-7] more unacknowledged QoS 2 than our Receive Maximum.
                self.end(End::Violation(reason::RECEIVE_MAXIMUM_EXCEEDED));
                return;
            }
        }
        if publish.properties.payload_format_indicator == Some(1)
            && std::str::from_utf8(&publish.payload).is_err()
        {
            // 3.3.2.3.2: a payload announced as UTF-8 that is not is refused with 0x99.
            self.refuse_publish(&publish, reason::PAYLOAD_FORMAT_INVALID);
            return;
        }
        // Group topics are decided by the group's rules, `$` topics are closed to
        // clients except `$groups/ops` [SPEC §5, §6]; the ACL file governs the rest.
        let directory = &self.broker.router.directory;
        match enforce::check_publish(directory, self.username.as_deref(), &publish.topic) {
            Err(refusal) => {
                tracing::debug!(client_id = %self.client_id, topic = %publish.topic, ?refusal, "group publish refused");
                let code = match refusal {
                    enforce::Refusal::BadTopic(_) => reason::TOPIC_NAME_INVALID,
                    _ => reason::NOT_AUTHORIZED,
                };
                self.refuse_publish(&publish, code);
                return;
            }
            Ok(Some(GroupTopic::Ops)) => {
                self.on_ops_request(publish);
                return;
            }
            Ok(Some(GroupTopic::Message { gid, .. })) => {
                // `expiryext` pushes the expiry on each group message.
                directory.on_group_message(gid, crate::groups::now_secs());
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                if let Some(acl) = self.broker.router.acl() {
                    if !acl.check_topic(self.who(), &publish.topic, Access::Write) {
                        self.refuse_publish(&publish, reason::NOT_AUTHORIZED);
                        return;
                    }
                }
            }
        }
        let qos = publish.qos;
        let packet_id = publish.packet_id;
        tracing::trace!(client_id = %self.client_id, topic = %publish.topic, "routing PUBLISH");
        let mut message = Message::new(publish, self.client_id.clone());
        message.sender = self.username.clone();
        let Some(message) = self.stage_publish(message, packet_id) else {
            return;
        };
        self.route_staged();
        let waker = (qos == QoS::AtLeastOnce && self.durable_acks()).then_some(&self.ack_waker);
        let routed = self.broker.router.publish(message, waker);
        self.acknowledge_routed(qos, packet_id, routed);
    }

    /// Holds a QoS 1 group message back to the end of the read, its history entry
    /// recorded now; `Some(message)` (to route now) where that does not apply.
    ///
    /// Why: its PUBACK waits for the commit of that entry. Routed message by message, a
    /// read of 100 publishes to a group of 100 first spends ~1.7 ms queueing 10,000
    /// deliveries and only then starts the commit (~1–2 ms of fsync on a busy machine):
    /// the two add up. Recorded first, the commit (started by `route_staged`) runs on a
    /// blocking thread while the deliveries are queued. Only the order within the read
    /// changes, not what anyone receives: any other packet routes the held messages
    /// first. The cost: a message whose commit failed, or refused as storage filled up
    /// meanwhile, may be in the history without having been delivered.
    fn stage_publish(&mut self, message: Message, packet_id: u16) -> Option<Message> {
        if message.qos != QoS::AtLeastOnce || !self.durable_acks() {
            return Some(message);
        }
        match self.broker.router.record_history_ahead(&message) {
            Some(history) => {
                self.staged.push(super::connection::StagedPublish {
                    message,
                    packet_id,
                    history,
                });
                None
            }
            None => Some(message),
        }
    }

    /// Starts the commit of the held messages' history entries, then routes and
    /// acknowledges them, in order.
    pub(super) fn route_staged(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        if let Some(durable) = &self.broker.durable {
            durable.commit_soon();
        }
        let mut staged = std::mem::take(&mut self.staged);
        let waker = self.ack_waker.clone();
        for held in staged.drain(..) {
            let routed =
                self.broker
                    .router
                    .publish_recorded(held.message, Some(&waker), Some(held.history));
            self.acknowledge_routed(QoS::AtLeastOnce, held.packet_id, routed);
        }
        // The buffer is kept for the next read.
        self.staged = staged;
    }

    /// The acknowledgement of a routed PUBLISH, sent or deferred until its commit.
    fn acknowledge_routed(&mut self, qos: QoS, packet_id: u16, routed: crate::router::Routed) {
        tracing::trace!(client_id = %self.client_id, queued = routed.queued, "routed PUBLISH");
        if routed.refused_storage_full {
            self.refuse_storage_full(qos, packet_id);
            return;
        }
        // A QoS 1/2 message that had to be stored is acknowledged once it is durable.
        let ticket = routed.ticket.filter(|_| self.durable_acks());
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let puback = Packet::PubAck(PubResponse::new(packet_id, reason::SUCCESS));
                match (ticket, routed.gate) {
                    (Some(ticket), Some(gate)) => {
                        self.defer(ticket, Deferred::GatedPacket(Box::new(puback), gate))
                    }
                    (ticket, _) => self.acknowledge(puback, ticket),
                }
            }
            QoS::ExactlyOnce => {
                self.state.incoming_qos2.insert(packet_id);
                // A persistent session remembers, across a restart, which QoS 2 packet
                // ids it has received, so that a resent PUBLISH is not routed twice.
                let incoming = self.store_incoming(packet_id, true);
                let ticket = ticket.max(incoming.filter(|_| self.durable_acks()));
                self.acknowledge(
                    Packet::PubRec(PubResponse::new(packet_id, reason::SUCCESS)),
                    ticket,
                );
            }
        }
    }

    /// Applies the v5 Topic Alias of an incoming PUBLISH; false if the connection ends.
    fn resolve_topic_alias(&mut self, publish: &mut Publish) -> bool {
        let Some(alias) = publish.properties.topic_alias.take() else {
            if publish.topic.is_empty() {
                // An empty topic without an alias [MQTT-3.3.2-1].
                self.end(End::Violation(reason::PROTOCOL_ERROR));
                return false;
            }
            return true;
        };
        if alias == 0 || alias > self.config.mqtt.topic_alias_maximum {
            // [MQTT-3.3.2-9] / [MQTT-3.3.2-10]
            self.end(End::Violation(reason::TOPIC_ALIAS_INVALID));
            return false;
        }
        if publish.topic.is_empty() {
            match self.inbound_aliases.get(&alias) {
                Some(topic) => publish.topic = topic.clone(),
                None => {
                    // An alias this connection never mapped: the alias is what is wrong
                    // (0x94, as the Paho interoperability suite and Mosquitto have it).
                    self.end(End::Violation(reason::TOPIC_ALIAS_INVALID));
                    return false;
                }
            }
        } else {
            self.inbound_aliases.insert(alias, publish.topic.clone());
        }
        true
    }

    fn on_puback(&mut self, ack: PubResponse) {
        let acknowledged = self
            .state
            .inflight
            .get(&ack.packet_id)
            .is_some_and(|f| f.delivery.qos == QoS::AtLeastOnce);
        if acknowledged {
            if let Some(inflight) = self.state.inflight.remove(&ack.packet_id) {
                self.stored_delivery_done(inflight.delivery.stored, None);
            }
        }
    }

    fn on_pubrec(&mut self, rec: PubResponse) {
        let Some(inflight) = self
            .state
            .inflight
            .get_mut(&rec.packet_id)
            .filter(|f| f.delivery.qos == QoS::ExactlyOnce)
        else {
            let pubrel = PubResponse::new(rec.packet_id, reason::PACKET_IDENTIFIER_NOT_FOUND);
            self.send(&Packet::PubRel(pubrel));
            return;
        };
        if rec.reason_code >= 0x80 {
            // The client refused the message: the exchange ends here [MQTT-4.3.3-4].
            if let Some(inflight) = self.state.inflight.remove(&rec.packet_id) {
                let forget = self.forget_inflight(rec.packet_id, &inflight);
                self.stored_delivery_done(inflight.delivery.stored, forget);
            }
            return;
        }
        let first_pubrec = !inflight.released;
        inflight.released = true;
        // The client has the message: its queue entry goes and its in-flight record says
        // "released", and PUBREL follows only once that is durable, so that after a crash
        // the broker resends PUBREL, not the message.
        let ticket = match (first_pubrec, self.state.inflight.get(&rec.packet_id)) {
            (true, Some(inflight)) => {
                let stored = inflight.delivery.stored;
                let record = self.inflight_record(rec.packet_id, inflight);
                self.stored_delivery_done(stored, record)
            }
            _ => None,
        };
        let ticket = ticket.filter(|_| self.durable_acks());
        self.acknowledge(
            Packet::PubRel(PubResponse::new(rec.packet_id, reason::SUCCESS)),
            ticket,
        );
    }

    /// Records (or forgets) a received QoS 2 packet id in the store, for persistent
    /// sessions.
    fn store_incoming(&mut self, packet_id: u16, received: bool) -> Option<crate::durable::Ticket> {
        let durable = self
            .broker
            .durable
            .as_ref()
            .filter(|_| self.state.persisted)?;
        let client_id = self.client_id.to_string();
        let op = if received {
            rookery_storage::Op::PutIncoming {
                client_id,
                packet_id,
            }
        } else {
            rookery_storage::Op::RemoveIncoming {
                client_id,
                packet_id,
            }
        };
        Some(durable.submit([op]))
    }

    fn on_pubrel(&mut self, rel: PubResponse) {
        let code = if self.state.incoming_qos2.remove(&rel.packet_id) {
            self.store_incoming(rel.packet_id, false);
            reason::SUCCESS
        } else {
            reason::PACKET_IDENTIFIER_NOT_FOUND
        };
        self.acknowledge(Packet::PubComp(PubResponse::new(rel.packet_id, code)), None);
    }

    fn on_pubcomp(&mut self, comp: PubResponse) {
        if self
            .state
            .inflight
            .get(&comp.packet_id)
            .is_some_and(|f| f.released)
        {
            if let Some(inflight) = self.state.inflight.remove(&comp.packet_id) {
                let forget = self.forget_inflight(comp.packet_id, &inflight);
                if let (Some(op), Some(durable)) = (forget, &self.broker.durable) {
                    durable.submit([op]);
                }
            }
        }
    }

    fn on_subscribe(&mut self, subscribe: Subscribe) {
        tracing::trace!(client_id = %self.client_id, filters = ?subscribe.filters, "SUBSCRIBE");
        let subscription_id = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let mut reason_codes = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        for (filter, options) in &subscribe.filters {
            let code = self.subscribe_one(filter, *options, subscription_id, &mut retained);
            match code {
                Ok(code) => reason_codes.push(code),
                Err(violation) => {
                    self.end(End::Violation(violation));
                    return;
                }
            }
        }
        // A persistent session's new subscription is stored before SUBACK (with
        // `strict`), and the retained messages follow the SUBACK.
        let ticket = self
            .broker
            .persist_session(&self.client_id, &mut self.state, false)
            .filter(|_| self.durable_acks());
        let suback = Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reason_codes,
            properties: Default::default(),
        });
        self.acknowledge(suback, ticket);
        if !retained.is_empty() {
            self.defer(0, Deferred::Retained(retained));
        }
    }

    /// One filter of a SUBSCRIBE: the granted QoS, a failure reason code, or `Err` with a
    /// reason to close the connection.
    fn subscribe_one(
        &mut self,
        filter: &MqttStr,
        options: crate::codec::SubscriptionOptions,
        subscription_id: Option<u32>,
        retained: &mut Vec<Delivery>,
    ) -> Result<u8, u8> {
        let config = &self.config.mqtt;
        if validate_topic_filter(filter).is_err()
            || filter.len() > config.max_topic_length
            || filter.split('/').count() > config.max_topic_levels
        {
            return Ok(reason::TOPIC_FILTER_INVALID);
        }
        let shared = parse_shared(filter).is_some();
        if shared && options.no_local {
            // [MQTT-3.8.3-4] no-local on a shared subscription is a protocol error.
            return Err(reason::PROTOCOL_ERROR);
        }
        let plain = match parse_shared(filter) {
            Some(Ok((_, inner))) => inner,
            _ => filter.as_str(),
        };
        let directory = &self.broker.router.directory;
        if let Err(refusal) = enforce::check_subscribe(directory, self.username.as_deref(), plain) {
            tracing::debug!(client_id = %self.client_id, filter = %plain, ?refusal, "group subscribe refused");
            Stats::add(&self.broker.stats.acl_denied, 1);
            // v5 0x87 Not authorized; 3.1.1 has only 0x80 [SPEC §6].
            return Ok(if self.version.is_v5() {
                reason::NOT_AUTHORIZED
            } else {
                reason::UNSPECIFIED_ERROR
            });
        }
        if let Some(acl) = self.broker.router.acl() {
            if !acl.check_subscribe(self.who(), plain) {
                Stats::add(&self.broker.stats.acl_denied, 1);
                // 0x80 in both versions for `acl_file` refusals, as Mosquitto answers:
                // some v5 clients (the Paho test client among them) accept no other
                // SUBACK failure code.
                return Ok(reason::UNSPECIFIED_ERROR);
            }
        }
        let existed = self.broker.router.subscribe(
            &self.core,
            self.username.clone(),
            filter,
            options,
            subscription_id,
        );
        let client = self.event_client();
        self.broker
            .router
            .events
            .subscribed(client, filter, options.qos as u8);
        if let Some(address) = &self.username {
            // Round-robin messages waiting for a member may now have one [SPEC §7].
            self.broker.router.release_waiting(address);
        }
        self.state.subscriptions.insert(
            filter.to_string(),
            SessionSubscription {
                options,
                subscription_id,
            },
        );
        // Retained messages: never for shared subscriptions [MQTT-3.8.4-?], and per the
        // Retain Handling option [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11].
        let send_retained = !shared
            && match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => !existed,
                RetainHandling::DoNotSend => false,
            };
        // Who is in the group and online, for this subscriber only [SPEC §8].
        let username = self.username.as_deref();
        for group in enforce::presence_snapshots(directory, username, plain) {
            let payload = self.broker.router.presence.snapshot(&group);
            let publish = Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: MqttStr::from(format!("$groups/{}/presence", group.gid)),
                packet_id: 0,
                properties: Default::default(),
                payload: payload.into(),
            };
            retained.push(Delivery {
                message: std::sync::Arc::new(Message::new(publish, std::sync::Arc::from(""))),
                qos: QoS::AtMostOnce,
                retain: false,
                subscription_ids: subscription_id.into_iter().collect(),
                stored: None,
                redelivery: false,
            });
        }
        if send_retained {
            let acl = self.broker.router.acl();
            for message in self.broker.router.retained.matching(plain) {
                // A retained group message only for a subscriber that may receive it.
                match GroupRoute::for_topic(&message.topic, directory) {
                    Some(route) if route.receiver(self.username.as_deref()).is_none() => continue,
                    Some(_) => {}
                    None => {
                        if acl.as_ref().is_some_and(|acl| {
                            !acl.check_topic(self.who(), &message.topic, Access::Read)
                        }) {
                            continue;
                        }
                    }
                }
                retained.push(Delivery {
                    qos: message.qos.min(options.qos),
                    retain: true,
                    subscription_ids: subscription_id.into_iter().collect(),
                    message,
                    stored: None,
                    redelivery: false,
                });
            }
        }
        Ok(options.qos as u8)
    }

    fn on_unsubscribe(&mut self, unsubscribe: Unsubscribe) {
        let reason_codes = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                let existed = self.state.subscriptions.remove(filter.as_str()).is_some();
                self.broker.router.unsubscribe(&self.core, filter);
                if existed {
                    let client = self.event_client();
                    self.broker.router.events.unsubscribed(client, filter);
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        self.broker
            .persist_session(&self.client_id, &mut self.state, false);
        self.send(&Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reason_codes,
            properties: Default::default(),
        }));
    }

    fn on_disconnect(&mut self, disconnect: Disconnect) {
        if let Some(expiry) = disconnect.properties.session_expiry_interval {
            if self.state.expiry_interval == 0 && expiry != 0 {
                // [MQTT-3.14.2-2] cannot turn a zero session expiry into a non-zero one.
                self.end(End::Violation(reason::PROTOCOL_ERROR));
                return;
            }
            self.state.expiry_interval = expiry.min(self.config.mqtt.max_session_expiry_secs);
        }
        self.end(End::Disconnected {
            reason_code: disconnect.reason_code,
        });
    }
}

/// Whether a PUBLISH could be held back by `stage_publish` (QoS 1 to a group): any other
/// routes the held ones first, so that messages are routed in their order.
fn may_be_staged(publish: &Publish) -> bool {
    publish.qos == QoS::AtLeastOnce && publish.topic.starts_with("groups/")
}
