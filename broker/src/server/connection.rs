//! One client connection: the task that owns the socket and, while connected, the
//! client's session state. Reading, writing and the session's outbox are driven from one
//! `select!` loop, so a connection needs no locks of its own; publishers reach it only
//! through the outbox.

use super::transport::{BoxedStream, TransportRead, TransportWrite};
use super::Broker;
use crate::codec::{self, reason, Disconnect, LastWill, MqttStr, Packet, ProtocolVersion};
use crate::durable::{Committed, Ticket};
use crate::session::{Delivery, Detached, SessionCore, SessionState, TakeOver};
use crate::stats::Stats;
use bytes::BytesMut;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

/// Stop moving deliveries into the write buffer past this many bytes: the rest waits in
/// the outbox, where the queue limits apply, until the socket takes what is buffered.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Bytes made room for before each read.
const READ_CHUNK: usize = 16 * 1024;
/// Deliveries moved from the outbox per fill.
pub(super) const FILL_BATCH: usize = 256;
/// How long a closing connection may spend flushing its last packets.
const FLUSH_ON_CLOSE: Duration = Duration::from_secs(2);

/// A QoS 1 group message held back until the end of its read (see
/// `Connection::stage_publish`).
pub struct StagedPublish {
    pub(super) message: crate::message::Message,
    pub(super) packet_id: u16,
    /// Its history entry's ticket.
    pub(super) history: Ticket,
}

/// Something a connection does once a commit finished.
pub(super) enum Deferred {
    /// A control packet: an acknowledgement promising durability, or one queued behind it.
    Packet(Box<Packet>),
    /// A QoS 1 PUBACK that may also go once its gate opens (every stored copy of its
    /// message was acknowledged before the commit).
    GatedPacket(Box<Packet>, Arc<crate::durable::AckGate>),
    /// A QoS 2 PUBLISH to a persistent session, once its packet id is stored.
    Publish { delivery: Delivery, packet_id: u16 },
    /// Retained messages for a new subscription, after its SUBACK.
    Retained(Vec<Delivery>),
}

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The client sent DISCONNECT with this reason code (0 for 3.1.1); v5 reason 0x04
    /// keeps the will [MQTT-3.14.4-3].
    Disconnected { reason_code: u8 },
    /// The socket closed or failed, or keep-alive expired: the will is published.
    Lost,
    /// A protocol violation: v5 clients get DISCONNECT with this reason first.
    Violation(u8),
    /// The broker is shutting down.
    Shutdown,
}

pub(super) struct Connection {
    pub broker: Arc<Broker>,
    /// The configuration in force when the client connected: its limits hold for this
    /// connection's life, whatever a reload changes later.
    pub config: Arc<crate::config::Config>,
    pub id: u64,
    pub peer: SocketAddr,
    pub version: ProtocolVersion,
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    pub core: Arc<SessionCore>,
    pub state: SessionState,
    /// Boxed: a will is rare and its properties are large; most connections carry none.
    pub will: Option<Box<LastWill>>,
    /// Keep-alive in effect; zero means none.
    pub keep_alive: Duration,
    /// The client's Maximum Packet Size: larger PUBLISH packets are not sent to it.
    pub client_max_packet: usize,
    /// In-flight window towards the client: min(max_inflight, its Receive Maximum).
    pub inflight_limit: usize,
    /// Topic aliases the broker assigned towards the client (v5).
    pub client_alias_max: u16,
    pub outbound_aliases: HashMap<MqttStr, u16>,
    /// Topic aliases the client set towards the broker (v5).
    pub inbound_aliases: HashMap<u16, MqttStr>,
    pub wbuf: BytesMut,
    /// Fires once if a new connection takes the session over; `None` once it has.
    pub kick: Option<oneshot::Receiver<TakeOver>>,
    pub ending: Option<End>,
    /// Packets waiting for the commit that makes what they promise durable, in order
    /// (acknowledgements in the order their PUBLISH packets arrived [MQTT-4.6.0-2]).
    /// Ticket 0: no wait, but queued behind the others to keep the order.
    pub deferred: VecDeque<(Ticket, Deferred)>,
    /// Group messages of this read whose history entries are recorded and committing,
    /// routed at the end of it (see `Connection::stage_publish`).
    pub staged: Vec<StagedPublish>,
    /// Commit progress, when durability is on.
    pub commits: Option<watch::Receiver<Committed>>,
    /// Woken when an [`crate::durable::AckGate`] of a deferred PUBACK opens.
    pub ack_waker: Arc<tokio::sync::Notify>,
}

/// Counts the connection for its whole life, including the handshakes (TLS, MQTT).
pub(super) struct ConnectionGuard(Arc<Stats>);

impl ConnectionGuard {
    pub(super) fn count(stats: &Arc<Stats>) -> ConnectionGuard {
        Stats::add(&stats.connections_current, 1);
        Stats::add(&stats.connections_total, 1);
        ConnectionGuard(stats.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0
            .connections_current
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves an MQTT connection over plain TCP.
pub(super) async fn serve_tcp(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    let guard = ConnectionGuard::count(&broker.stats);
    let (reader, writer) = stream.into_split();
    serve(reader, writer, peer, broker, guard).await;
}

/// Serves an MQTT connection over any other transport (TLS, WebSocket, WSS); `guard`
/// has counted it since its transport handshake began.
pub(super) async fn serve_stream(
    stream: BoxedStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    guard: ConnectionGuard,
) {
    let (reader, writer) = tokio::io::split(stream);
    serve(reader, writer, peer, broker, guard).await;
}

async fn serve<R: TransportRead, W: TransportWrite>(
    mut reader: R,
    mut writer: W,
    peer: SocketAddr,
    broker: Arc<Broker>,
    _guard: ConnectionGuard,
) {
    let mut rbuf = BytesMut::new();
    // The handshake's and the closing code's futures are boxed so that the task keeps
    // only the steady-state loop's state for the connection's lifetime.
    let Some(connection) = Box::pin(super::handshake::accept(
        &mut reader,
        &mut writer,
        &mut rbuf,
        peer,
        broker,
    ))
    .await
    else {
        return;
    };
    if rbuf.is_empty() {
        rbuf = BytesMut::new();
    }
    connection.run(reader, writer, rbuf).await;
}

impl Connection {
    /// Appends a control packet to the write buffer.
    pub fn send(&mut self, packet: &Packet) {
        if let Err(error) = codec::encode_packet(packet, self.version, &mut self.wbuf) {
            tracing::error!(%error, client_id = %self.client_id, "packet not encodable");
        }
    }

    /// Whether acknowledgements of stored messages wait for the commit (`strict`).
    pub fn durable_acks(&self) -> bool {
        self.broker.durable.as_ref().is_some_and(|d| d.acks_wait())
    }

    /// Sends an acknowledgement now, or once `ticket` is durable (and after everything
    /// already waiting).
    pub fn acknowledge(&mut self, packet: Packet, ticket: Option<Ticket>) {
        if ticket.is_none() && self.deferred.is_empty() {
            self.send(&packet);
            return;
        }
        self.defer(ticket.unwrap_or(0), Deferred::Packet(Box::new(packet)));
    }

    /// Whether a persistent session has stored entries that are not yet readable (their
    /// commit is pending): then the connection waits for commits to read them back.
    /// Checked every loop iteration, so the common case (no persistence) costs one
    /// atomic load, not the outbox lock.
    fn waits_for_stored_entries(&self) -> bool {
        self.core.outbox.is_persistent() && self.core.outbox.unloaded_from().is_some()
    }

    /// Commits at once, on this task, when acknowledgements wait (see
    /// [`crate::durable::Durable::commit_inline`]), and sends those it released.
    fn commit_for_waiting_acks(&mut self) {
        let Some(durable) = &self.broker.durable else {
            return;
        };
        let Some(&(ticket, _)) = self.deferred.back() else {
            return;
        };
        if ticket != 0 && durable.commit_inline(ticket) {
            self.release_deferred();
        }
    }

    /// Queues something to do once `ticket` is durable.
    pub fn defer(&mut self, ticket: Ticket, deferred: Deferred) {
        self.deferred.push_back((ticket, deferred));
        self.release_deferred();
    }

    /// Does what waited for commits that finished. A failed commit turns an
    /// acknowledgement into a refusal: v5 0x97 (quota exceeded: the disk is full) or
    /// 0x80; a 3.1.1 client, which has no way to hear a refusal, is disconnected so that
    /// it resends after reconnecting.
    fn release_deferred(&mut self) {
        let committed = self.commits.as_ref().map(|c| *c.borrow());
        while let Some((ticket, front)) = self.deferred.front() {
            let gate_open = matches!(front, Deferred::GatedPacket(_, gate) if gate.is_open());
            let outcome = match (*ticket, committed) {
                _ if gate_open => Some(Ok(())),
                (0, _) | (_, None) => Some(Ok(())),
                (ticket, Some(committed)) => committed.outcome(ticket),
            };
            let Some(outcome) = outcome else {
                break;
            };
            let Some((_, deferred)) = self.deferred.pop_front() else {
                break;
            };
            match deferred {
                Deferred::Packet(packet) | Deferred::GatedPacket(packet, _) => {
                    let mut packet = *packet;
                    if let Err(full) = outcome {
                        if !self.version.is_v5() {
                            self.end(End::Lost);
                            return;
                        }
                        let code = if full {
                            reason::QUOTA_EXCEEDED
                        } else {
                            reason::UNSPECIFIED_ERROR
                        };
                        if let Packet::PubAck(ack) | Packet::PubRec(ack) = &mut packet {
                            ack.reason_code = code;
                        }
                        if let Packet::PubRec(rec) = &packet {
                            self.state.incoming_qos2.remove(&rec.packet_id);
                        }
                    }
                    self.send(&packet);
                }
                Deferred::Publish {
                    delivery,
                    packet_id,
                } => {
                    // Sent even if the in-flight record failed to store: the message is
                    // due, and only its exactly-once guarantee across a crash is weaker.
                    if self.state.inflight.contains_key(&packet_id)
                        && !self.write_publish(&delivery, packet_id, delivery.redelivery)
                    {
                        self.state.inflight.remove(&packet_id);
                    }
                }
                Deferred::Retained(deliveries) => {
                    for delivery in deliveries {
                        let _ = self.core.outbox.push(delivery);
                    }
                }
            }
        }
    }

    /// Ends the connection after what is buffered has been written.
    pub fn end(&mut self, end: End) {
        if self.ending.is_none() {
            self.ending = Some(end);
        }
    }

    async fn run<R: TransportRead, W: TransportWrite>(
        mut self,
        mut reader: R,
        mut writer: W,
        mut rbuf: BytesMut,
    ) {
        let mut shutdown = self.broker.shutdown.clone();
        let mut last_read = Instant::now();
        // Bytes written into a buffering transport (TLS, WebSocket) and not flushed yet.
        let mut unflushed = false;
        let keep_alive_limit = self.keep_alive + self.keep_alive / 2;
        let keep_alive_timer = tokio::time::sleep(keep_alive_limit.max(Duration::from_secs(1)));
        tokio::pin!(keep_alive_timer);
        let max_packet = self.config.mqtt.max_packet_size as usize;
        self.resend_inflight();
        // Packets a client sent right behind its CONNECT, read with it (pipelining, or
        // one WebSocket message or TLS record holding several packets).
        if !rbuf.is_empty() {
            self.decode_all(&mut rbuf, max_packet);
        }
        loop {
            if self.wbuf.len() < WRITE_HIGH_WATER && self.ending.is_none() {
                self.fill_from_outbox();
            }
            if self.ending.is_some() {
                break;
            }
            tokio::select! {
                biased;
                Ok(()) = shutdown.changed() => self.end(End::Shutdown),
                take_over = wait_for_take_over(&mut self.kick), if self.kick.is_some() => {
                    match take_over {
                        Ok(take_over) => {
                            Box::pin(self.hand_over(take_over, &mut writer)).await;
                            return;
                        }
                        // The registry let go of this connection without a take-over.
                        Err(_) => self.kick = None,
                    }
                }
                written = write_or_flush(&mut writer, &mut self.wbuf), if !self.wbuf.is_empty() || unflushed => {
                    match written {
                        Ok(Written::Flushed) => unflushed = false,
                        Ok(Written::Bytes(0)) | Err(_) => self.end(End::Lost),
                        Ok(Written::Bytes(n)) => {
                            Stats::add(&self.broker.stats.bytes_sent, n as u64);
                            unflushed = W::BUFFERED;
                            if self.wbuf.is_empty() {
                                // Idle connections hold no buffers: this is most of what
                                // keeps memory per connection small.
                                self.wbuf = BytesMut::new();
                            }
                        }
                    }
                }
                read = reader.read_some(&mut rbuf, READ_CHUNK) => {
                    match read {
                        Ok(0) | Err(_) => self.end(End::Lost),
                        Ok(n) => {
                            Stats::add(&self.broker.stats.bytes_received, n as u64);
                            // Only whole packets count as activity, so a client trickling
                            // the bytes of a packet that never completes (slow loris) still
                            // hits the keep-alive limit.
                            if self.decode_all(&mut rbuf, max_packet) > 0 {
                                last_read = Instant::now();
                                self.commit_for_waiting_acks();
                            }
                            if rbuf.is_empty() {
                                rbuf = BytesMut::new();
                            }
                        }
                    }
                }
                _ = self.core.outbox.ready.notified(), if self.wbuf.len() < WRITE_HIGH_WATER => {}
                _ = wait_for_commit(&mut self.commits), if !self.deferred.is_empty() || self.waits_for_stored_entries() => {
                    self.release_deferred();
                }
                _ = self.ack_waker.notified(), if !self.deferred.is_empty() => {
                    self.release_deferred();
                }
                _ = &mut keep_alive_timer, if !self.keep_alive.is_zero() => {
                    // [MQTT-3.1.2-24] one and a half times the keep-alive without a packet.
                    let deadline = last_read + keep_alive_limit;
                    if Instant::now() >= deadline {
                        tracing::debug!(client_id = %self.client_id, "keep-alive expired");
                        self.end(End::Violation(reason::KEEP_ALIVE_TIMEOUT));
                    } else {
                        keep_alive_timer.as_mut().reset(deadline.into());
                    }
                }
            }
        }
        let end = self.ending.unwrap_or(End::Lost);
        Box::pin(self.close(end, &mut writer, &mut reader)).await;
    }

    /// Handles every whole packet in `rbuf`; returns how many there were.
    fn decode_all(&mut self, rbuf: &mut BytesMut, max_packet: usize) -> usize {
        let mut decoded = 0;
        while self.ending.is_none() {
            match codec::decode_packet(rbuf, self.version, max_packet) {
                Ok(Some(packet)) => {
                    decoded += 1;
                    self.handle(packet);
                }
                Ok(None) => break,
                Err(error) => {
                    Stats::add(&self.broker.stats.protocol_errors, 1);
                    tracing::debug!(client_id = %self.client_id, %error, "bad packet: closing");
                    self.end(End::Violation(error.reason_code()));
                }
            }
        }
        self.route_staged();
        Stats::add(&self.broker.stats.messages_received, decoded as u64);
        decoded
    }

    /// Answers a take-over: DISCONNECT 0x8E to this client [MQTT-3.1.4-3], its will as on
    /// any ended connection, and the session state to the new connection.
    async fn hand_over<W: TransportWrite>(&mut self, take_over: TakeOver, writer: &mut W) {
        if self.version.is_v5() {
            self.send(&Packet::Disconnect(Disconnect {
                reason_code: reason::SESSION_TAKEN_OVER,
                ..Default::default()
            }));
        }
        self.flush(writer).await;
        // This connection ends like any other for presence and webhooks; the new one
        // announces itself once it holds the session.
        self.announce_offline();
        let client = self.event_client();
        self.broker.router.events.client_disconnected(
            client,
            "takeover",
            Some(reason::SESSION_TAKEN_OVER),
        );
        self.publish_will();
        let _ = take_over.reply.send(std::mem::take(&mut self.state));
    }

    async fn flush<W: TransportWrite>(&mut self, writer: &mut W) {
        let write = async {
            while !self.wbuf.is_empty() {
                if writer.write_buf(&mut self.wbuf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
            // Also flushes what a buffering transport holds, and closes it in its own way
            // (TLS close_notify, WebSocket Close frame).
            let _ = writer.shutdown().await;
        };
        let _ = tokio::time::timeout(FLUSH_ON_CLOSE, write).await;
    }

    /// Presence: this connection of its user ended (announced if it was the last).
    fn announce_offline(&self) {
        if let Some(address) = &self.username {
            let router = &self.broker.router;
            for (topic, payload) in router.presence.disconnected(address, &router.directory) {
                router.publish_internal(&topic, payload.into(), Default::default());
            }
        }
    }

    /// This connection's client as webhook events name it.
    pub(super) fn event_client(&self) -> crate::events::Client<'_> {
        crate::events::Client {
            client_id: &self.client_id,
            username: self.username.as_deref(),
        }
    }

    async fn close<R: TransportRead, W: TransportWrite>(
        mut self,
        end: End,
        writer: &mut W,
        reader: &mut R,
    ) {
        let disconnect_reason = match end {
            End::Violation(code) => Some(code),
            End::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            _ => None,
        };
        if let (Some(code), true) = (disconnect_reason, self.version.is_v5()) {
            self.send(&Packet::Disconnect(Disconnect {
                reason_code: code,
                ..Default::default()
            }));
        }
        self.flush(writer).await;
        self.core.outbox.set_online(false);
        if !matches!(end, End::Shutdown) {
            self.fail_over_round_robin();
        }
        self.announce_offline();
        let (why, code) = match end {
            End::Disconnected {
                reason_code: reason::DISCONNECT_WITH_WILL,
            } => ("normal_with_will", Some(reason::DISCONNECT_WITH_WILL)),
            End::Disconnected { reason_code } => ("normal", Some(reason_code)),
            End::Lost => ("lost", None),
            End::Violation(code) => ("protocol_error", Some(code)),
            End::Shutdown => ("shutdown", None),
        };
        let client = self.event_client();
        self.broker
            .router
            .events
            .client_disconnected(client, why, code);
        match end {
            // Normal DISCONNECT: the will is discarded [MQTT-3.1.2-10].
            End::Disconnected { reason_code } if reason_code != reason::DISCONNECT_WITH_WILL => {
                self.state.will = None
            }
            // Shutdown: the record keeps the will, published after the restart (the
            // client did not disconnect normally).
            End::Shutdown => {}
            _ => {
                if self.publish_will() {
                    self.state.will = None;
                }
            }
        }
        let expiry = if self.state.expiry_interval == u32::MAX {
            Duration::MAX
        } else {
            Duration::from_secs(u64::from(self.state.expiry_interval))
        };
        let mut state = std::mem::take(&mut self.state);
        if !expiry.is_zero() {
            // Parked: the record carries when the client left, for expiry after a restart.
            self.broker
                .persist_session(&self.client_id, &mut state, true);
        }
        match self
            .broker
            .registry
            .detach(&self.client_id, self.id, state, expiry)
        {
            Detached::Parked => {}
            Detached::Removed(core, state) => self.broker.end_session(&core, &state),
            Detached::NotOwner(state) => {
                if let Some(Ok(take_over)) = self.kick.as_mut().map(|kick| kick.try_recv()) {
                    let _ = take_over.reply.send(state);
                }
            }
        }
        tracing::debug!(client_id = %self.client_id, peer = %self.peer, ?end, "connection closed");
        if let End::Violation(_) = end {
            linger(reader).await;
        }
    }

    /// Round-robin failover [SPEC §7]: group messages this session was given and has not
    /// acknowledged go to the next member (this session is offline now, so the rotation
    /// skips it). In flight: taken back (with their stored entries). Queued but unsent:
    /// taken back when the session ends with its connection (they would be lost).
    fn fail_over_round_robin(&mut self) {
        let directory = self.broker.router.directory.clone();
        let is_round_robin = |message: &crate::message::Message| {
            crate::groups::enforce::GroupRoute::for_topic(&message.topic, &directory)
                .is_some_and(|g| g.is_round_robin())
        };
        let unacknowledged: Vec<u16> = self
            .state
            .inflight
            .iter()
            .filter(|(_, f)| !f.released && is_round_robin(&f.delivery.message))
            .map(|(packet_id, _)| *packet_id)
            .collect();
        let mut again = Vec::new();
        for packet_id in unacknowledged {
            if let Some(inflight) = self.state.inflight.remove(&packet_id) {
                let forget = self.forget_inflight(packet_id, &inflight);
                self.stored_delivery_done(inflight.delivery.stored, forget);
                again.push(inflight.delivery.message);
            }
        }
        // (`kick` is gone once a new connection took the session over: it keeps them.)
        if self.state.expiry_interval == 0 && self.kick.is_some() {
            let mut queued = Vec::new();
            self.core
                .outbox
                .drain_into(&mut queued, usize::MAX, usize::MAX);
            again.extend(
                queued
                    .into_iter()
                    .filter(|d| {
                        d.qos != crate::codec::QoS::AtMostOnce && is_round_robin(&d.message)
                    })
                    .map(|d| d.message),
            );
        }
        for message in again {
            self.broker.router.publish(message.rerouted(), None);
        }
    }

    /// Publishes or schedules the will; true if it was published now (so the session
    /// record no longer needs it).
    fn publish_will(&mut self) -> bool {
        match self.will.take() {
            Some(will) => super::will::schedule(
                self.broker.clone(),
                *will,
                self.client_id.clone(),
                self.username.clone(),
                self.id,
                self.state.expiry_interval,
            ),
            None => true,
        }
    }
}

enum Written {
    Bytes(usize),
    Flushed,
}

/// Writes from `wbuf`, or, once it is empty, flushes: a buffering transport may hold the
/// last bytes written until then, and flushing only when everything is written spares a
/// flush per write. Cancel safe, like each of the two.
async fn write_or_flush<W: TransportWrite>(
    writer: &mut W,
    wbuf: &mut BytesMut,
) -> std::io::Result<Written> {
    if wbuf.is_empty() {
        writer.flush().await?;
        Ok(Written::Flushed)
    } else {
        writer.write_buf(wbuf).await.map(Written::Bytes)
    }
}

async fn wait_for_take_over(
    kick: &mut Option<oneshot::Receiver<TakeOver>>,
) -> Result<TakeOver, oneshot::error::RecvError> {
    match kick {
        Some(receiver) => receiver.await,
        None => std::future::pending().await,
    }
}

/// After a DISCONNECT for a protocol violation, reads and discards what the client still
/// sends, for a moment, before the socket closes. A client that is mid-way through a burst
/// (e.g. answering PUBRECs) then reads our DISCONNECT and its reason code instead of
/// failing on a reset connection.
async fn linger<R: TransportRead>(reader: &mut R) {
    const LINGER: Duration = Duration::from_secs(1);
    let discard = async {
        let mut sink = BytesMut::new();
        loop {
            sink.clear();
            match reader.read_some(&mut sink, 1024).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, discard).await;
}

async fn wait_for_commit(commits: &mut Option<watch::Receiver<Committed>>) {
    match commits {
        Some(receiver) => {
            if receiver.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
