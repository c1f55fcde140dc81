//! Routing: the subscription trie, retained messages, and fan-out of each PUBLISH to the
//! outboxes of the sessions that should receive it.
//!
//! Publishing takes the trie's read lock, so publishers run in parallel; subscribing takes
//! the write lock briefly. Fan-out never waits on a subscriber: it only pushes onto
//! bounded outboxes, whose overflow policy decides what happens when one is full.

pub mod retained;
pub mod trie;

use crate::acl::{Access, Acl, Identity};
use crate::codec::topic::parse_shared;
use crate::codec::{QoS, SubscriptionOptions};
use crate::config::StorageFullPolicy;
use crate::durable::{AckGate, Durable};
use crate::groups::acl::Allow;
use crate::groups::enforce::GroupRoute;
use crate::groups::history::Write;
use crate::message::Message;
use crate::session::{Delivery, SessionCore, SessionState};
use crate::stats::Stats;
use retained::Retained;
use rookery_storage::Op;
use std::sync::{Arc, RwLock};
use tokio::sync::Notify;
use trie::{Subscriber, Trie};

/// What routing one message did.
#[derive(Default, Clone)]
pub struct Routed {
    /// Deliveries queued.
    pub queued: usize,
    /// The commit that stores what routing wrote (retained message), if anything.
    pub ticket: Option<crate::durable::Ticket>,
    /// Storage is full and its policy refuses: the message went to nobody.
    pub refused_storage_full: bool,
    /// Opens if every stored copy is acknowledged before `ticket` commits (then the
    /// publisher's acknowledgement need not wait for it).
    pub gate: Option<Arc<AckGate>>,
}

pub struct Router {
    /// Where QoS >= 1 deliveries to persistent sessions are stored; `None` without
    /// durability.
    durable: Option<Arc<Durable>>,
    trie: RwLock<Trie>,
    pub retained: Retained,
    acl: RwLock<Option<Arc<Acl>>>,
    /// The last messages of each stored group.
    pub history: Arc<crate::groups::history::History>,
    /// Which users are online, for `$groups/{gid}/presence`.
    pub presence: crate::groups::presence::Presence,
    /// Round-robin messages waiting for an eligible member to come online, per gid
    /// (bounded by [`ROUND_ROBIN_QUEUE`]); QoS >= 1 ones also in the store's
    /// `GroupQueues` space, under the id with them.
    waiting: std::sync::Mutex<rustc_hash::FxHashMap<crate::groups::Gid, GroupQueue>>,
    /// Round-robin groups: the next turn, per gid.
    rotation: std::sync::Mutex<rustc_hash::FxHashMap<crate::groups::Gid, usize>>,
    /// Users and groups: every delivery of a group message is checked against it.
    pub directory: Arc<crate::groups::directory::Directory>,
    /// Webhook events (SPEC §9).
    pub events: crate::events::Events,
    stats: Arc<Stats>,
}

impl Router {
    pub fn new(
        retained: Retained,
        acl: Option<Acl>,
        durable: Option<Arc<Durable>>,
        directory: Arc<crate::groups::directory::Directory>,
        history: Arc<crate::groups::history::History>,
        stats: Arc<Stats>,
    ) -> Router {
        Router {
            durable,
            trie: RwLock::new(Trie::new()),
            retained,
            acl: RwLock::new(acl.map(Arc::new)),
            rotation: Default::default(),
            waiting: Default::default(),
            presence: Default::default(),
            history,
            directory,
            events: crate::events::Events::disabled(),
            stats,
        }
    }

    /// The router with webhook events on.
    pub fn with_events(self, events: crate::events::Events) -> Router {
        Router { events, ..self }
    }

    /// The broker-wide counters (the broker's own `Stats`), for the `brokerstats` op.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the ACL (a reload): publishes, subscriptions and deliveries checked from
    /// now on use it, existing subscriptions included (their deliveries are checked
    /// one by one).
    pub fn set_acl(&self, acl: Option<Acl>) {
        *self.acl.write().unwrap_or_else(|e| e.into_inner()) = acl.map(Arc::new);
    }

    /// Routes one message: stores or clears it as retained, then queues one delivery per
    /// matching session.
    /// `ack_waker`: the publisher's connection, for a QoS 1 PUBLISH whose acknowledgement
    /// may go early through `Routed::gate`.
    pub fn publish(&self, message: Message, ack_waker: Option<&Arc<Notify>>) -> Routed {
        self.publish_recorded(message, ack_waker, None)
    }

    /// Records a group message's history entry ahead of its routing (see
    /// `Connection::stage_publish`): the ticket to hand to
    /// [`Router::publish_recorded`], or `None` (nothing recorded) where the message has no
    /// history entry, or storage is full (`publish` may refuse it).
    pub fn record_history_ahead(&self, message: &Message) -> Option<crate::durable::Ticket> {
        if self.durable.as_ref()?.is_full() {
            return None;
        }
        let group = GroupRoute::for_topic(&message.topic, &self.directory)?;
        self.maybe_record_history(Some(&group), message)
    }

    /// [`Router::publish`] for a message whose history entry `history` has recorded
    /// already ([`Router::record_history_ahead`]).
    pub fn publish_recorded(
        &self,
        mut message: Message,
        ack_waker: Option<&Arc<Notify>>,
        history: Option<crate::durable::Ticket>,
    ) -> Routed {
        let acl = self.acl();
        // Deliveries are queued under the read lock: no subscriber is cloned, and queueing
        // never waits (outbox pushes take only the outbox's own short lock).
        let trie = self.trie.read().unwrap_or_else(|e| e.into_inner());
        let mut matches = Vec::new();
        trie.matches(&message.topic, &mut matches);
        if message.retain || matches.iter().any(|s| s.session.outbox.is_backlogged()) {
            message.detach_from_read_buffer();
        }
        // A group message: every delivery is checked against the group's current rules
        // (SPEC §6), and live topics and no-store groups touch no disk (SPEC §7). The
        // generation is read before the snapshot (see `Directory::generation`).
        let generation = self.directory.generation();
        let group = GroupRoute::for_topic(&message.topic, &self.directory);
        if group.is_some() {
            message.directory_generation = generation;
        }
        let message = Arc::new(message);
        let mut routed = Routed::default();
        let no_disk = group.as_ref().is_some_and(|g| !g.may_store());
        // Storage full: a QoS >= 1 message that would be stored is refused whole, or its
        // stored copies are dropped (`[storage] full_policy`). QoS 0 flows as usual.
        let mut may_store = true;
        if let Some(durable) = self.durable.as_ref().filter(|d| d.is_full() && !no_disk) {
            if message.qos != QoS::AtMostOnce && needs_storage(&message, &matches) {
                match durable.full_policy() {
                    StorageFullPolicy::Refuse => {
                        Stats::add(&self.stats.storage_refused, 1);
                        routed.refused_storage_full = true;
                        return routed;
                    }
                    StorageFullPolicy::Drop => may_store = false,
                }
            }
        }
        // The webhook event goes with the message: for QoS >= 1 the publisher's
        // acknowledgement waits for it, as for the message.
        let event_ticket = self.publish_event(&message, group.as_ref());
        if event_ticket.is_some() {
            routed.ticket = event_ticket;
        }
        if message.retain && no_disk {
            // Never kept: the retain flag still reaches current subscribers.
            if group.as_ref().is_some_and(|g| !g.live) {
                Stats::add(&self.stats.dropped_no_store, 1);
                self.events.dropped(Some(&message.topic), None, "no_store");
            }
        } else if message.retain {
            if !may_store && !message.payload.is_empty() {
                Stats::add(&self.stats.dropped_storage_full, 1);
                self.events
                    .dropped(Some(&message.topic), None, "storage_full");
            }
            let retained = self
                .retained
                .set(&message, may_store || message.payload.is_empty());
            routed.ticket = routed.ticket.max(retained);
        }
        if matches.is_empty() {
            if let Some(g) = group.as_ref().filter(|g| g.is_round_robin()) {
                routed.ticket = routed.ticket.max(self.wait_for_receiver(g, &message));
            }
            // Nobody subscribed now: the group's history still keeps it (members read it
            // later with `groupmessages`).
            routed.ticket = routed
                .ticket
                .max(history.or_else(|| self.maybe_record_history(group.as_ref(), &message)));
            return routed;
        }
        // Overlapping subscriptions of one session give one delivery, with the highest
        // QoS and every matching subscription identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3].
        // Shared subscriptions are separate: each group gets its own copy.
        matches.sort_by_key(|s| (s.session.id, s.shared));
        let mut message_id = None;
        let mut store_message = None;
        let mut targets = Vec::new();
        let mut round_robin = Vec::new();
        let mut index = 0;
        while index < matches.len() {
            let first = &matches[index];
            let mut end = index + 1;
            if !first.shared {
                while end < matches.len()
                    && matches[end].session.id == first.session.id
                    && !matches[end].shared
                {
                    end += 1;
                }
            }
            match group.as_ref().map(|g| group_receiver(g, &message, first)) {
                None | Some(Receiver::Yes) => targets.push((index, end)),
                Some(Receiver::RoundRobin) => round_robin.push((index, end)),
                Some(Receiver::No) => {}
            }
            index = end;
        }
        if let Some(g) = group.as_ref().filter(|g| g.is_round_robin()) {
            // One eligible online member per message, in turn [SPEC §7]; with none, the
            // group's queue.
            let online: Vec<(usize, usize)> = round_robin
                .into_iter()
                .filter(|(i, _)| matches[*i].session.outbox.online())
                .collect();
            if online.is_empty() {
                routed.ticket = routed.ticket.max(self.wait_for_receiver(g, &message));
            } else {
                let mut rotation = self.rotation.lock().unwrap_or_else(|e| e.into_inner());
                let turn = rotation.entry(g.gid).or_insert(0);
                targets.push(online[*turn % online.len()]);
                *turn = turn.wrapping_add(1);
            }
        }
        for (index, end) in targets {
            let first = &matches[index];
            let subs = &matches[index..end];
            if let Some(delivery) = merge_delivery(&message, subs, acl.as_deref(), &self.stats) {
                let outbox = &first.session.outbox;
                let durable = self.durable.as_ref().filter(|_| {
                    delivery.qos != QoS::AtMostOnce && outbox.is_persistent() && !no_disk
                });
                if durable.is_some() && !may_store {
                    Stats::add(&self.stats.dropped_storage_full, 1);
                    let client = Some(&*outbox_client(first));
                    self.events
                        .dropped(Some(&message.topic), client, "storage_full");
                    continue;
                }
                let result = match durable {
                    Some(durable) => {
                        // Stored once, whatever the number of persistent subscribers.
                        let id = *message_id.get_or_insert_with(|| {
                            let id = durable.allocate_message_id();
                            store_message = Some(Op::PutMessage {
                                id,
                                message: message.to_stored(),
                            });
                            id
                        });
                        outbox
                            .push_stored(delivery, id, &mut store_message, durable)
                            .map(Some)
                    }
                    None => outbox.push(delivery).map(|()| None),
                };
                if let Ok(ticket) = result {
                    routed.queued += 1;
                    routed.ticket = routed.ticket.max(ticket);
                }
            }
        }
        routed.ticket = routed
            .ticket
            .max(history.or_else(|| self.maybe_record_history(group.as_ref(), &message)));
        if let (Some(durable), Some(id)) = (&self.durable, message_id) {
            // A retained message is stored in the same commit and cannot be cancelled.
            let waker = ack_waker.filter(|_| !message.retain);
            routed.gate = durable.routing_done(id, waker);
            if event_ticket.is_some() {
                // The event must be durable too: no early acknowledgement.
                routed.gate = None;
            }
        }
        routed
    }

    /// The `message.publish` event of a message published by a client or the backend
    /// (not broker notifications on `$` topics, nor a round-robin message routed again).
    fn publish_event(
        &self,
        message: &Message,
        group: Option<&GroupRoute>,
    ) -> Option<crate::durable::Ticket> {
        // No `wants` check first: `message_publish` loads the endpoints once and leaves
        // at once without any; a second load per message showed in profiles.
        if message.rerouted || message.topic.starts_with('$') {
            return None;
        }
        let scope = crate::events::Scope {
            topic: Some(&message.topic),
            gid: group.map(|g| u64::from(g.gid)),
        };
        let awaited = message.qos != QoS::AtMostOnce;
        // Nothing is rendered here: the bridge writes the JSON when it sends the event.
        self.events
            // Topic and payload are copied, not shared: a slice of a connection's read
            // buffer would keep the whole buffer alive for as long as the event waits in
            // a dead endpoint's outbox (100,000 events by default).
            .message_publish(scope, awaited, || rookery_bridge::MessageEvent {
                topic: bytes::Bytes::copy_from_slice(message.topic.as_bytes()),
                qos: message.qos as u8,
                retain: message.retain,
                client_id: (!message.publisher.is_empty()).then(|| message.publisher.clone()),
                username: message.sender.clone(),
                group: group.map(|g| rookery_bridge::MessageGroup {
                    gid: u64::from(g.gid),
                    message_type: g.message_type,
                    live: g.live,
                }),
                payload: bytes::Bytes::copy_from_slice(&message.payload),
            })
    }

    /// Adds or replaces a subscription; returns whether one existed for this filter.
    pub fn subscribe(
        &self,
        session: &Arc<SessionCore>,
        username: Option<Arc<str>>,
        filter: &str,
        options: SubscriptionOptions,
        subscription_id: Option<u32>,
    ) -> bool {
        let (share, plain) = split_share(filter);
        let names_one_group = !plain.contains(['+', '#'])
            && crate::groups::parse_topic(plain).is_some_and(|t| t.is_ok());
        let subscriber = Subscriber {
            session: session.clone(),
            options,
            subscription_id,
            shared: share.is_some(),
            username,
            group_cache: names_one_group.then(Default::default),
        };
        let mut trie = self.trie.write().unwrap_or_else(|e| e.into_inner());
        let existed = trie.insert(plain, share, subscriber);
        self.stats
            .subscriptions
            .store(trie.len() as u64, std::sync::atomic::Ordering::Relaxed);
        existed
    }

    pub fn unsubscribe(&self, session: &SessionCore, filter: &str) -> bool {
        let (share, plain) = split_share(filter);
        let mut trie = self.trie.write().unwrap_or_else(|e| e.into_inner());
        let removed = trie.remove(plain, share, session.id);
        self.stats
            .subscriptions
            .store(trie.len() as u64, std::sync::atomic::Ordering::Relaxed);
        removed
    }

    /// Drops every subscription and queued message of a session that ended.
    pub fn remove_session(&self, session: &SessionCore, state: &SessionState) {
        for filter in state.subscriptions.keys() {
            self.unsubscribe(session, filter);
        }
        session.outbox.clear();
    }
}

fn outbox_client(subscriber: &Subscriber) -> Arc<str> {
    subscriber.session.client_id.clone()
}

fn split_share(filter: &str) -> (Option<&str>, &str) {
    match parse_shared(filter) {
        Some(Ok((name, inner))) => (Some(name), inner),
        _ => (None, filter),
    }
}

/// A round-robin group's waiting messages, with their store ids (QoS >= 1, stored).
type GroupQueue = std::collections::VecDeque<(Option<u64>, Arc<Message>)>;

fn waiting_key(gid: crate::groups::Gid, id: u64) -> Vec<u8> {
    let mut key = gid.to_be_bytes().to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// Round-robin messages a group keeps while no member is online.
pub const ROUND_ROBIN_QUEUE: usize = 10_000;

impl Router {
    /// Routes a message the broker itself publishes (API events, real-time replies,
    /// presence): QoS 1, not retained, from no client.
    pub fn publish_internal(
        &self,
        topic: &str,
        payload: bytes::Bytes,
        properties: crate::codec::Properties,
    ) {
        let publish = crate::codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: crate::codec::MqttStr::from(topic),
            packet_id: 0,
            properties,
            payload,
        };
        self.publish(Message::new(publish, Arc::from("")), None);
    }

    /// A round-robin message no member could take: queued for the first eligible member
    /// that comes online or subscribes (not for no-store groups, which drop it). A
    /// QoS 1/2 message is stored with the group's queue: the ticket its acknowledgement
    /// waits for. A QoS 0 message waits too [SPEC §7: "the message waits"], in memory
    /// only, like any QoS 0 message it may be lost by a restart.
    fn wait_for_receiver(
        &self,
        group: &GroupRoute,
        message: &Arc<Message>,
    ) -> Option<crate::durable::Ticket> {
        if !group.may_store() {
            Stats::add(&self.stats.dropped_no_receiver, 1);
            self.events
                .dropped(Some(&message.topic), None, "no_receiver");
            return None;
        }
        let mut ops = Vec::new();
        let durable = self
            .durable
            .as_ref()
            .filter(|_| message.qos != QoS::AtMostOnce);
        let id = durable.map(|durable| {
            let id = durable.allocate_message_id();
            ops.push(Op::PutRecord {
                space: rookery_storage::Space::GroupQueues,
                key: waiting_key(group.gid, id),
                value: message.to_stored().to_bytes(),
            });
            id
        });
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let queue = waiting.entry(group.gid).or_default();
        if queue.len() >= ROUND_ROBIN_QUEUE {
            if let Some((oldest_id, oldest)) = queue.pop_front() {
                self.events
                    .dropped(Some(&oldest.topic), None, "no_receiver");
                ops.extend(oldest_id.map(|id| Op::RemoveRecord {
                    space: rookery_storage::Space::GroupQueues,
                    key: waiting_key(group.gid, id),
                }));
            }
            Stats::add(&self.stats.dropped_no_receiver, 1);
            tracing::warn!(
                gid = group.gid,
                "round-robin queue full: oldest message dropped"
            );
        }
        queue.push_back((id, message.clone()));
        drop(waiting);
        if ops.is_empty() {
            return None;
        }
        let durable = self.durable.as_ref()?;
        Some(durable.submit(ops))
    }

    /// Someone who may now receive came online or subscribed: routes the waiting
    /// round-robin messages of the groups `username` is a member of again.
    pub fn release_waiting(&self, username: &str) {
        let gids: Vec<crate::groups::Gid> = {
            let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            waiting.keys().copied().collect()
        };
        for gid in gids {
            let member = self
                .directory
                .group(gid)
                .is_some_and(|g| g.members.contains_key(username));
            if !member {
                continue;
            }
            let queued = self
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&gid)
                .unwrap_or_default();
            let mut removals = Vec::new();
            for (id, message) in queued {
                // Routed again first (stored for its new receiver if need be), then
                // forgotten by the group's queue, in that order in the store.
                self.publish(message.rerouted(), None);
                removals.extend(id.map(|id| Op::RemoveRecord {
                    space: rookery_storage::Space::GroupQueues,
                    key: waiting_key(gid, id),
                }));
            }
            if let (Some(durable), false) = (&self.durable, removals.is_empty()) {
                durable.submit(removals);
            }
        }
    }

    /// The round-robin messages found waiting in the store at start.
    pub fn restore_waiting(&self, records: Vec<(Vec<u8>, Vec<u8>)>) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let mut restored = 0;
        for (key, value) in records {
            let (Some(gid), Some(id)) = (
                key.get(..4)
                    .and_then(|k| Some(u32::from_be_bytes(k.try_into().ok()?))),
                key.get(4..12)
                    .and_then(|k| Some(u64::from_be_bytes(k.try_into().ok()?))),
            ) else {
                continue;
            };
            let Some(mut message) = rookery_storage::StoredMessage::from_bytes(&value)
                .ok()
                .and_then(Message::from_stored)
            else {
                tracing::warn!(gid, id, "a waiting round-robin message does not decode");
                continue;
            };
            message.retain = false;
            waiting
                .entry(gid)
                .or_default()
                .push_back((Some(id), Arc::new(message)));
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(restored, "waiting round-robin messages restored");
        }
    }

    /// Records a group message in its group's history unless it is not kept there: live
    /// topics, no-store groups, a round-robin message routed again (recorded the first
    /// time), and an empty retained message (which only clears the retained copy).
    fn maybe_record_history(
        &self,
        group: Option<&GroupRoute>,
        message: &Message,
    ) -> Option<crate::durable::Ticket> {
        let group = group.filter(|g| g.may_store() && !g.live && !message.rerouted)?;
        if message.payload.is_empty() && message.retain {
            return None;
        }
        self.record_history(group, message)
    }

    /// Adds a group message to its group's history, in the next commit.
    fn record_history(
        &self,
        group: &GroupRoute,
        message: &Message,
    ) -> Option<crate::durable::Ticket> {
        if !self.history.enabled() {
            return None;
        }
        let id = match &self.durable {
            Some(durable) => durable.allocate_message_id(),
            None => self.history.local_id(),
        };
        let now = group.now();
        let entry = crate::groups::history::NewEntry {
            id,
            from: message.sender.as_deref().unwrap_or_default(),
            message_type: group.message_type,
            ts: now,
            payload: &message.payload,
        };
        let awaited = message.qos != QoS::AtMostOnce;
        let write = self.history.record(group.gid, entry, awaited, now);
        let durable = self.durable.as_ref()?;
        match write {
            Write::Awaited => Some(durable.barrier(true)),
            // QoS 0 promises nothing: its entries are written behind, without an fsync
            // of their own (most of the cost of history at high rates).
            Write::Soon => {
                durable.barrier(false);
                None
            }
            Write::Nothing => None,
        }
    }
}

enum Receiver {
    Yes,
    RoundRobin,
    No,
}

/// Whether the session of `first` gets a group message: its user's current rights
/// (`recv`, or `sub` for live topics), no-local unless the group loops back (0x80, for
/// 3.1.1 clients too), and nothing queued for offline sessions where nothing may be
/// stored.
fn group_receiver(group: &GroupRoute, message: &Message, first: &Subscriber) -> Receiver {
    let own = *first.session.client_id == *message.publisher;
    if own && !group.loopback() {
        return Receiver::No;
    }
    if !group.may_store() && !first.session.outbox.online() {
        return Receiver::No;
    }
    // The per-session cache of SPEC §6: one decision per subscription, keyed by the
    // directory generation (any group change invalidates it) and the second (validity
    // and expiry move with time).
    let key = (message.directory_generation & 0xFFFF_FFFF) << 32 | (group.now() & 0x3FFF_FFFF) << 2;
    if let Some(cache) = &first.group_cache {
        let cached = cache.load(std::sync::atomic::Ordering::Relaxed);
        if message.directory_generation != 0 && cached & !3 == key && cached & 3 != 0 {
            return match cached & 3 {
                1 => Receiver::Yes,
                2 => Receiver::RoundRobin,
                _ => Receiver::No,
            };
        }
    }
    let (receiver, code) = match group.receiver(first.username.as_deref()) {
        Some(Allow::Yes) => (Receiver::Yes, 1),
        Some(Allow::RoundRobin) => (Receiver::RoundRobin, 2),
        None => (Receiver::No, 3),
    };
    if let Some(cache) = &first.group_cache {
        cache.store(key | code, std::sync::atomic::Ordering::Relaxed);
    }
    receiver
}

/// Builds the delivery for one session from all its matching subscriptions, or `None` when
/// no-local or the ACL excludes it.
fn merge_delivery(
    message: &Arc<Message>,
    subs: &[&Subscriber],
    acl: Option<&Acl>,
    stats: &Stats,
) -> Option<Delivery> {
    let session = &subs.first()?.session;
    let mut qos = None::<QoS>;
    let mut retain = false;
    let mut subscription_ids = Vec::new();
    for sub in subs {
        // [MQTT-3.8.3-3] no-local: not back to the publishing client.
        if sub.options.no_local && *session.client_id == *message.publisher {
            continue;
        }
        if let Some(acl) = acl {
            let who = Identity {
                username: sub.username.as_deref(),
                client_id: &session.client_id,
            };
            if !acl.check_topic(who, &message.topic, Access::Read) {
                Stats::add(&stats.acl_denied, 1);
                continue;
            }
        }
        let granted = message.qos.min(sub.options.qos);
        qos = Some(qos.map_or(granted, |q| q.max(granted)));
        // [MQTT-3.3.1-12] / [MQTT-3.3.1-13] retain as published, else cleared.
        retain |= sub.options.retain_as_published && message.retain;
        if let Some(id) = sub.subscription_id {
            subscription_ids.push(id);
        }
    }
    Some(Delivery {
        message: message.clone(),
        qos: qos?,
        retain,
        subscription_ids,
        stored: None,
        redelivery: false,
    })
}

/// Whether routing `message` to `matches` would write to the store: a retained message to
/// keep, or a QoS >= 1 copy for a persistent session.
fn needs_storage(message: &Message, matches: &[&Subscriber]) -> bool {
    (message.retain && !message.payload.is_empty())
        || matches
            .iter()
            .any(|s| s.options.qos != QoS::AtMostOnce && s.session.outbox.is_persistent())
}
