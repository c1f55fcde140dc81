//! CONNECT → CONNACK: protocol checks, client identifier, authentication, keep-alive, and
//! claiming the session (new, resumed or taken over).

use super::connection::Connection;
use super::transport::{TransportRead, TransportWrite};
use super::{Broker, Refusal};
use crate::codec::{self, reason, ConnAck, Connect, MqttStr, Packet, Properties, ProtocolVersion};
use crate::config::Config;
use crate::session::{Attached, SessionState};
use crate::stats::Stats;
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

/// How long a new connection waits for a taken-over connection to hand its session on.
const TAKE_OVER_WAIT: Duration = Duration::from_secs(5);

/// Reads CONNECT within the connect timeout and answers it. Returns the connection ready
/// to run, or `None` when it was refused (CONNACK with a failure code already sent).
pub(super) async fn accept<R: TransportRead, W: TransportWrite>(
    reader: &mut R,
    writer: &mut W,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
    broker: Arc<Broker>,
) -> Option<Connection> {
    // The limits in force now stay this connection's for its life, whatever a reload
    // changes later (a v5 client was told some of them in CONNACK).
    let config = broker.current();
    let timeout = Duration::from_secs(config.mqtt.connect_timeout_secs.max(1));
    let max_packet = config.mqtt.max_packet_size as usize;
    let first = tokio::time::timeout(timeout, read_first_packet(reader, rbuf, max_packet)).await;
    let connect = match first {
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within the connect timeout: closing");
            return None;
        }
        Ok(Err(codec::DecodeError::UnsupportedProtocol(level))) => {
            // [MQTT-3.1.2-2] answer with return code 0x01 (3.1.1 form; v5 0x84 below).
            let code = if level == 5 {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            } else {
                0x01
            };
            let _ = write_and_flush(writer, &[0x20, 0x02, 0x00, code]).await;
            return None;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "bad CONNECT: closing");
            broker
                .stats
                .protocol_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return None;
        }
        Ok(Ok(None)) => return None,
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(Some(_))) => {
            // [MQTT-3.1.0-1] the first packet must be CONNECT.
            tracing::debug!(%peer, "first packet is not CONNECT: closing");
            return None;
        }
    };
    let version = connect.protocol;
    match admit(*connect, peer, broker, config, version).await {
        Ok(mut connection) => {
            if flush(writer, &mut connection.wbuf).await {
                Some(connection)
            } else {
                None
            }
        }
        Err(code) => {
            let mut buf = BytesMut::new();
            let refusal = Packet::ConnAck(ConnAck {
                session_present: false,
                reason_code: code,
                properties: Properties::default(),
            });
            if codec::encode_packet(&refusal, version, &mut buf).is_ok() {
                let _ = write_and_flush(writer, &buf).await;
            }
            None
        }
    }
}

/// The largest CONNECT a refused connection may send to be answered.
const REFUSED_CONNECT_MAX: usize = 64 * 1024;

/// Answers a connection refused before its CONNECT was read (`Broker::admit_connection`):
/// a CONNECT arriving within `wait` gets CONNACK with the refusal's reason code (v5 with a
/// Reason String), then the connection closes [MQTT-3.2.2-7] (3.1.1: [MQTT-3.2.2-5]).
/// Anything else closes it without an answer.
pub(super) async fn refuse<R: TransportRead, W: TransportWrite>(
    reader: &mut R,
    writer: &mut W,
    refusal: Refusal,
    wait: Duration,
) {
    let mut rbuf = BytesMut::new();
    let first = tokio::time::timeout(
        wait,
        read_first_packet(reader, &mut rbuf, REFUSED_CONNECT_MAX),
    )
    .await;
    let Ok(Ok(Some(Packet::Connect(connect)))) = first else {
        let _ = writer.shutdown().await;
        return;
    };
    let properties = Properties {
        reason_string: Some(MqttStr::from(refusal.describe())),
        ..Default::default()
    };
    let refusal = Packet::ConnAck(ConnAck {
        // [MQTT-3.2.2-6] (3.1.1: [MQTT-3.2.2-4]) no session with a refusal.
        session_present: false,
        reason_code: refusal.connack_code(),
        properties,
    });
    let mut buf = BytesMut::new();
    if codec::encode_packet(&refusal, connect.protocol, &mut buf).is_ok() {
        let _ = tokio::time::timeout(wait, write_and_flush(writer, &buf)).await;
    }
    let _ = writer.shutdown().await;
}

async fn read_first_packet<R: TransportRead>(
    reader: &mut R,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<Option<Packet>, codec::DecodeError> {
    loop {
        if let Some(packet) = codec::decode_packet(rbuf, ProtocolVersion::V5, max_packet)? {
            return Ok(Some(packet));
        }
        match reader.read_some(rbuf, 1024).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

async fn flush<W: TransportWrite>(writer: &mut W, wbuf: &mut BytesMut) -> bool {
    let ok = write_and_flush(writer, wbuf).await.is_ok();
    *wbuf = BytesMut::new();
    ok
}

/// Writes `bytes` and flushes them out of a buffering transport (TLS, WebSocket).
async fn write_and_flush<W: TransportWrite>(writer: &mut W, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(bytes).await?;
    writer.flush().await
}

/// Decides on a CONNECT; `Err` carries the CONNACK failure reason code.
async fn admit(
    connect: Connect,
    peer: SocketAddr,
    broker: Arc<Broker>,
    settings: Arc<Config>,
    version: ProtocolVersion,
) -> Result<Connection, u8> {
    let config = &settings.mqtt;
    // An address in back-off after failed logins is refused whatever it sends, correct
    // credentials included (or the back-off would not slow down guessing): 0x8A Banned,
    // 3.1.1: 5 Not authorized. Answered at once; nothing waits.
    if let Some(left) = broker.admission.backoff_left(peer.ip(), Instant::now()) {
        Stats::add(&broker.stats.refused_auth_backoff, 1);
        tracing::debug!(%peer, left_ms = left.as_millis() as u64, "CONNECT refused: address in authentication back-off");
        return Err(reason::BANNED);
    }
    if connect.properties.authentication_method.is_some() {
        // No enhanced authentication method is supported [MQTT-4.12.0-1].
        return Err(reason::BAD_AUTHENTICATION_METHOD);
    }
    match &connect.username {
        None if !settings.auth.allow_anonymous => return Err(reason::NOT_AUTHORIZED),
        None => {}
        // A user logs in with username = address, password = token [SPEC §3].
        Some(address) => {
            let password = connect.password.as_deref().unwrap_or_default();
            let directory = &broker.router.directory;
            if let Err(error) = directory.login(address, password, crate::groups::now_secs()) {
                Stats::add(&broker.stats.auth_failures, 1);
                let backoff = broker
                    .admission
                    .login_failed(peer.ip(), &settings, Instant::now());
                match backoff {
                    Some(backoff) => tracing::warn!(
                        %peer,
                        username = %address.as_str(),
                        ?error,
                        backoff_secs = backoff.as_secs(),
                        "login refused: the address is refused for the back-off"
                    ),
                    None => {
                        tracing::info!(%peer, username = %address.as_str(), ?error, "login refused")
                    }
                }
                return Err(reason::BAD_USER_NAME_OR_PASSWORD);
            }
            broker.admission.login_succeeded(peer.ip());
        }
    }
    let mut assigned = None;
    let client_id: Arc<str> = if connect.client_id.is_empty() {
        // [MQTT-3.1.3-7] / [MQTT-3.1.3-8]: 3.1.1 allows an empty id only with a clean
        // session; 3.1 not at all; v5 always, with an Assigned Client Identifier.
        if version == ProtocolVersion::V31
            || (version == ProtocolVersion::V311 && !connect.clean_start)
        {
            return Err(reason::CLIENT_IDENTIFIER_NOT_VALID);
        }
        let id = generate_client_id();
        assigned = Some(MqttStr::from(id.as_str()));
        Arc::from(id.as_str())
    } else {
        Arc::from(connect.client_id.as_str())
    };
    let username: Option<Arc<str>> = connect.username.as_ref().map(|u| Arc::from(u.as_str()));
    if let Some(will) = &connect.will {
        let topic_ok = !will.topic.starts_with('$')
            && will.topic.len() <= config.max_topic_length
            && will.topic.split('/').count() <= config.max_topic_levels;
        if !topic_ok {
            return Err(reason::TOPIC_NAME_INVALID);
        }
        // The will must be one the client could publish now (checked again when it is
        // published).
        super::will::authorize(&broker, username.as_deref(), &client_id, &will.topic)?;
    }

    // Keep-alive: the server cap reaches v5 clients as Server Keep Alive, which they must
    // use instead of their own [MQTT-3.1.2-21]. The broker still times out at the longer
    // of the two (and at the cap for a client that asked for none), so that a client
    // library that ignores Server Keep Alive is not cut off for it.
    let mut server_keep_alive = None;
    let mut keep_alive = connect.keep_alive;
    if version.is_v5()
        && config.max_keepalive > 0
        && (keep_alive == 0 || keep_alive > config.max_keepalive)
    {
        server_keep_alive = Some(config.max_keepalive);
        if keep_alive == 0 {
            keep_alive = config.max_keepalive;
        }
    }

    let session_expiry = match version {
        ProtocolVersion::V5 => connect
            .properties
            .session_expiry_interval
            .unwrap_or(0)
            .min(config.max_session_expiry_secs),
        _ if connect.clean_start => 0,
        _ => config.max_session_expiry_secs,
    };

    let limits = super::outbox_limits(config);
    let connection_id = broker.next_connection_id();
    let (kick_tx, kick_rx) = oneshot::channel();
    let (core, mut state, present) = match broker.registry.attach(
        client_id.clone(),
        connect.clean_start,
        connection_id,
        kick_tx,
        limits,
    ) {
        Attached::Ready {
            core,
            state,
            present,
            discarded,
        } => {
            if let Some(discarded) = discarded {
                let (old_core, old_state) = *discarded;
                broker.end_session(&old_core, &old_state);
            }
            (core, state, present)
        }
        Attached::TakingOver {
            core,
            state,
            clean_start,
        } => {
            let handed = match tokio::time::timeout(TAKE_OVER_WAIT, state).await {
                Ok(Ok(state)) => state,
                _ => broker.registry.take_parked(&client_id).unwrap_or_default(),
            };
            // A session that was to end with its connection (clean session, or v5 expiry
            // 0) is not resumed by whoever takes it over [MQTT-3.1.2-6].
            if clean_start || handed.expiry_interval == 0 {
                broker.end_session(&core, &handed);
                let fresh = broker.registry.new_core(client_id.clone(), limits);
                broker.registry.replace_core(&client_id, fresh.clone());
                (fresh, SessionState::default(), false)
            } else {
                (core, handed, true)
            }
        }
    };
    state.expiry_interval = session_expiry;
    state.will = connect
        .will
        .as_ref()
        .map(|will| Box::new(super::will::record(will, &client_id, username.as_ref())));
    broker.persist_session(&client_id, &mut state, false);
    if state.persisted {
        // From now on its QoS >= 1 deliveries are stored (a resumed session keeps its
        // stored queue).
        core.outbox
            .enable_disk(crate::session::outbox::DiskQueue::new(
                client_id.to_string(),
                1,
                0,
                0,
            ));
    }
    core.outbox.set_limits(limits);
    core.outbox.set_online(true);
    if let Some(address) = &username {
        let router = &broker.router;
        for (topic, payload) in router.presence.connected(address, &router.directory) {
            router.publish_internal(&topic, payload.into(), Default::default());
        }
        // A resumed session's subscriptions may take waiting round-robin messages.
        router.release_waiting(address);
    }

    let client_receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let inflight_limit = usize::from(config.max_inflight.min(client_receive_max).max(1));
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.assigned_client_identifier = assigned;
        properties.server_keep_alive = server_keep_alive;
        properties.receive_maximum = Some(config.receive_maximum.max(1));
        properties.topic_alias_maximum = Some(config.topic_alias_maximum);
        properties.maximum_packet_size = Some(config.max_packet_size);
        properties.retain_available = Some(1);
        properties.wildcard_subscription_available = Some(1);
        properties.subscription_identifier_available = Some(1);
        properties.shared_subscription_available = Some(1);
    }
    let connack = Packet::ConnAck(ConnAck {
        // [MQTT-3.2.2-1] with clean start the session is new.
        session_present: present && !connect.clean_start,
        reason_code: reason::SUCCESS,
        properties,
    });
    tracing::debug!(%peer, %client_id, ?version, present, "client connected");
    let level = match version {
        ProtocolVersion::V31 => 3,
        ProtocolVersion::V311 => 4,
        ProtocolVersion::V5 => 5,
    };
    let client = crate::events::Client {
        client_id: &client_id,
        username: username.as_deref(),
    };
    broker
        .router
        .events
        .client_connected(client, level, connect.clean_start, keep_alive, peer);
    let mut connection = Connection {
        broker: broker.clone(),
        config: settings.clone(),
        id: connection_id,
        peer,
        version,
        client_id,
        username,
        core,
        state,
        will: connect.will.map(Box::new),
        keep_alive: Duration::from_secs(u64::from(keep_alive)),
        client_max_packet: connect
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |max| max as usize),
        inflight_limit,
        client_alias_max: connect.properties.topic_alias_maximum.unwrap_or(0),
        outbound_aliases: HashMap::new(),
        inbound_aliases: HashMap::new(),
        wbuf: BytesMut::new(),
        kick: Some(kick_rx),
        ending: None,
        deferred: Default::default(),
        staged: Vec::new(),
        commits: broker.durable.as_ref().map(|d| d.subscribe_commits()),
        ack_waker: Arc::new(tokio::sync::Notify::new()),
    };
    connection.send(&connack);
    Ok(connection)
}

/// A broker-assigned client identifier: unique, and recognisable in logs.
fn generate_client_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().gen();
    format!("rookery-{n:016x}")
}
