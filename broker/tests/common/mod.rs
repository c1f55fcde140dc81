//! Shared helpers for the integration tests: a broker on 127.0.0.1:0, rumqttc clients
//! (3.1.1 and 5.0) wrapped so that every wait is bounded, and a raw TCP client for the
//! cases a client library cannot produce.
//!
//! Every wait goes through [`WAIT`] (something that must happen) or a short explicit
//! "quiet" period (something that must not happen), so a failing test fails in seconds.

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

use bytes::{Bytes, BytesMut};
use rookery::codec::{self, ConnAck, Connect, MqttStr, Packet, Properties, ProtocolVersion};
use rookery::{BrokerHandle, Config};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Upper bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(3);
/// How long a test listens to conclude that something does not arrive.
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `future` for at most [`WAIT`], failing the test with `what` on timeout.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    within_for(WAIT, what, future).await
}

pub async fn within_for<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `condition` every 10 ms until it holds, for at most `limit`.
pub async fn eventually(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A unique client id per call, so tests in one binary never share sessions by accident.
pub fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------

/// A broker started in-process on 127.0.0.1:0 with its data in a temporary directory.
pub struct TestBroker {
    handle: Option<BrokerHandle>,
    pub addr: SocketAddr,
    _data: tempfile::TempDir,
    /// Tokens of the users created with [`TestBroker::token`].
    tokens: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

impl TestBroker {
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// Starts a broker after `configure` has adjusted the test defaults.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestBroker {
        let data = tempfile::tempdir().expect("temporary data directory");
        let mut config = Config::default();
        config.mqtt.listen = "127.0.0.1:0".parse().expect("address");
        config.http.listen = "127.0.0.1:0".parse().expect("address");
        config.storage.data_dir = data.path().to_path_buf();
        config.sys.interval_secs = 0;
        configure(&mut config);
        let handle = within("the broker to start", rookery::start(config))
            .await
            .expect("broker starts");
        TestBroker {
            addr: handle.mqtt_addr(),
            handle: Some(handle),
            _data: data,
            tokens: Default::default(),
        }
    }

    /// The token of user `address` (its MQTT password), creating the user in the broker's
    /// directory on first use.
    pub fn token(&self, address: &str) -> String {
        let mut tokens = self.tokens.lock().unwrap();
        if let Some(token) = tokens.get(address) {
            return token.clone();
        }
        let handle = self.handle.as_ref().expect("running broker");
        let change = handle
            .directory()
            .add_user(address, None, None, rookery::groups::now_secs())
            .expect("user created");
        let token = change.value.1;
        tokens.insert(address.to_string(), token.clone());
        token
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The management API's listener.
    pub fn http_addr(&self) -> SocketAddr {
        self.handle.as_ref().expect("running").http_addr()
    }

    /// The broker's users and groups.
    pub fn directory(&self) -> &rookery::groups::directory::Directory {
        self.handle.as_ref().expect("running").directory()
    }

    pub fn stats(&self) -> &rookery::stats::Stats {
        self.handle.as_ref().expect("running").stats()
    }

    /// The running broker (e.g. for its TLS listeners' addresses).
    pub fn handle(&self) -> &BrokerHandle {
        self.handle.as_ref().expect("running")
    }

    pub async fn stop(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// Reads a counter of the broker's statistics.
pub fn counter(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(std::sync::atomic::Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------------
// rumqttc, MQTT 3.1.1
// ---------------------------------------------------------------------------------------

pub mod v4 {
    use super::*;
    pub use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, ConnectionError, Event, LastWill, MqttOptions,
        Packet, Publish, QoS, SubscribeReasonCode,
    };

    /// A rumqttc 3.1.1 client whose event loop runs in its own task. The loop stops at
    /// the first error (no automatic reconnect); dropping the client aborts the task, which
    /// closes the socket without DISCONNECT, as a crashing device would.
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        pub id: String,
        events: mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
        pending: VecDeque<Packet>,
        closed: Option<String>,
        task: JoinHandle<()>,
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(4 << 20, 4 << 20);
        options
    }

    /// Connects with default options (clean session, keep-alive 30 s).
    pub async fn connect(addr: SocketAddr, id: &str) -> Client {
        connect_with(addr, id, |_| {}).await.expect("connects")
    }

    /// Connects after `configure` has adjusted the options; `Err` if the broker refused
    /// the connection or closed it before CONNACK.
    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> Result<Client, ConnectionError> {
        let mut options = options(addr, id);
        configure(&mut options);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error));
                        break;
                    }
                }
            }
        });
        let first = within("CONNACK", events.recv()).await;
        match first {
            Some(Ok(Packet::ConnAck(connack))) => Ok(Client {
                client,
                connack,
                id: id.to_string(),
                events,
                pending: VecDeque::new(),
                closed: None,
                task,
            }),
            Some(Err(error)) => Err(error),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    impl Client {
        /// The next packet from the broker that `select` accepts; others are kept for later.
        pub async fn next_matching<T>(
            &mut self,
            what: &str,
            limit: Duration,
            mut select: impl FnMut(&Packet) -> Option<T>,
        ) -> Option<T> {
            if let Some(index) = self.pending.iter().position(|p| select(p).is_some()) {
                let packet = self.pending.remove(index).expect("index is valid");
                return select(&packet);
            }
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                if self.closed.is_some() {
                    return None;
                }
                let received = tokio::time::timeout_at(deadline, self.events.recv()).await;
                match received {
                    Err(_) => return None,
                    Ok(None) => {
                        self.closed = Some("event loop ended".into());
                        return None;
                    }
                    Ok(Some(Err(error))) => {
                        self.closed = Some(error.to_string());
                        return None;
                    }
                    Ok(Some(Ok(packet))) => {
                        if let Some(value) = select(&packet) {
                            return Some(value);
                        }
                        let _ = what;
                        self.pending.push_back(packet);
                    }
                }
            }
        }

        async fn expect_matching<T>(
            &mut self,
            what: &str,
            select: impl FnMut(&Packet) -> Option<T>,
        ) -> T {
            match self.next_matching(what, WAIT, select).await {
                Some(value) => value,
                None => panic!(
                    "{}: no {what} within {WAIT:?} (connection: {})",
                    self.id,
                    self.closed.as_deref().unwrap_or("open")
                ),
            }
        }

        /// The next PUBLISH, waiting at most [`WAIT`].
        pub async fn recv_publish(&mut self) -> Publish {
            self.expect_matching("PUBLISH", |p| match p {
                Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
        }

        /// Asserts that no PUBLISH arrives within `quiet`.
        pub async fn expect_no_publish(&mut self, quiet: Duration) {
            let got = self
                .next_matching("PUBLISH", quiet, |p| match p {
                    Packet::Publish(publish) => Some(publish.clone()),
                    _ => None,
                })
                .await;
            assert!(got.is_none(), "{}: unexpected PUBLISH {got:?}", self.id);
        }

        /// Subscribes and returns the SUBACK return codes.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("request queued");
            self.expect_matching("SUBACK", |p| match p {
                Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await
        }

        pub async fn unsubscribe(&mut self, filter: &str) {
            self.client
                .unsubscribe(filter)
                .await
                .expect("request queued");
            self.expect_matching("UNSUBACK", |p| {
                matches!(p, Packet::UnsubAck(_)).then_some(())
            })
            .await
        }

        /// Publishes and, for QoS 1/2, waits for the end of the acknowledgement flow.
        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
            self.client
                .publish(topic, qos, retain, payload.to_vec())
                .await
                .expect("request queued");
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.expect_matching("PUBACK", |p| matches!(p, Packet::PubAck(_)).then_some(()))
                        .await
                }
                QoS::ExactlyOnce => {
                    self.expect_matching("PUBCOMP", |p| {
                        matches!(p, Packet::PubComp(_)).then_some(())
                    })
                    .await
                }
            }
        }

        /// Waits until the broker closes the connection; returns the client's error text.
        pub async fn wait_closed(&mut self) -> String {
            let deadline = tokio::time::Instant::now() + WAIT;
            while self.closed.is_none() {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) => panic!("{}: connection not closed within {WAIT:?}", self.id),
                    Ok(None) => self.closed = Some("event loop ended".into()),
                    Ok(Some(Err(error))) => self.closed = Some(error.to_string()),
                    Ok(Some(Ok(packet))) => self.pending.push_back(packet),
                }
            }
            self.closed.clone().unwrap_or_default()
        }

        /// Whether the connection is still open after `quiet`.
        pub async fn still_open_after(&mut self, quiet: Duration) -> bool {
            let _ = self.next_matching("nothing", quiet, |_| None::<()>).await;
            self.closed.is_none()
        }

        /// A normal DISCONNECT, then waits for the connection to end.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.expect("request queued");
            let _ = within("the event loop to end after DISCONNECT", &mut self.task).await;
        }

        /// Closes the socket without DISCONNECT and waits until it is closed.
        pub async fn kill(mut self) {
            self.task.abort();
            let _ = within("the event loop to be aborted", &mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// rumqttc, MQTT 5.0
// ---------------------------------------------------------------------------------------

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnAckProperties, ConnectProperties, ConnectReturnCode, DisconnectReasonCode,
        Filter, LastWill, LastWillProperties, Packet, PubAckReason, PubRecReason, Publish,
        PublishProperties, RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    /// A rumqttc 5.0 client; see [`super::v4::Client`] for the life cycle.
    ///
    /// rumqttc 0.24 ends its event loop (and so the connection) on any SUBACK, PUBACK or
    /// PUBREC with a failure reason code; the helpers below report that reason code, but
    /// the client cannot be used afterwards.
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        pub id: String,
        events: mpsc::UnboundedReceiver<Result<Packet, ConnectionError>>,
        pending: VecDeque<Packet>,
        closed: Option<ConnectionError>,
        ended: bool,
        task: JoinHandle<()>,
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(Some(4 << 20));
        options
    }

    pub async fn connect(addr: SocketAddr, id: &str) -> Client {
        connect_with(addr, id, |_| {}).await.expect("connects")
    }

    pub async fn connect_with(
        addr: SocketAddr,
        id: &str,
        configure: impl FnOnce(&mut MqttOptions),
    ) -> Result<Client, ConnectionError> {
        let mut options = options(addr, id);
        configure(&mut options);
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, mut events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(Ok(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(error) => {
                        let _ = tx.send(Err(error));
                        break;
                    }
                }
            }
        });
        let first = within("CONNACK", events.recv()).await;
        match first {
            Some(Ok(Packet::ConnAck(connack))) => Ok(Client {
                client,
                connack,
                id: id.to_string(),
                events,
                pending: VecDeque::new(),
                closed: None,
                ended: false,
                task,
            }),
            Some(Err(error)) => Err(error),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Session expiry as a connect property.
    pub fn session_expiry(secs: u32) -> ConnectProperties {
        let mut properties = ConnectProperties::new();
        properties.session_expiry_interval = Some(secs);
        properties
    }

    impl Client {
        pub fn connack_properties(&self) -> ConnAckProperties {
            self.connack
                .properties
                .clone()
                .expect("CONNACK has properties")
        }

        pub async fn next_matching<T>(
            &mut self,
            limit: Duration,
            mut select: impl FnMut(&Packet) -> Option<T>,
        ) -> Option<T> {
            if let Some(index) = self.pending.iter().position(|p| select(p).is_some()) {
                let packet = self.pending.remove(index).expect("index is valid");
                return select(&packet);
            }
            let deadline = tokio::time::Instant::now() + limit;
            loop {
                if self.ended {
                    return None;
                }
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) => return None,
                    Ok(None) => {
                        self.ended = true;
                        return None;
                    }
                    Ok(Some(Err(error))) => {
                        self.closed = Some(error);
                        self.ended = true;
                        return None;
                    }
                    Ok(Some(Ok(packet))) => {
                        if let Some(value) = select(&packet) {
                            return Some(value);
                        }
                        self.pending.push_back(packet);
                    }
                }
            }
        }

        async fn expect_matching<T>(
            &mut self,
            what: &str,
            select: impl FnMut(&Packet) -> Option<T>,
        ) -> T {
            match self.next_matching(WAIT, select).await {
                Some(value) => value,
                None => panic!(
                    "{}: no {what} within {WAIT:?} (connection: {:?})",
                    self.id, self.closed
                ),
            }
        }

        pub async fn recv_publish(&mut self) -> Publish {
            self.expect_matching("PUBLISH", |p| match p {
                Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
        }

        pub async fn expect_no_publish(&mut self, quiet: Duration) {
            let got = self
                .next_matching(quiet, |p| match p {
                    Packet::Publish(publish) => Some(publish.clone()),
                    _ => None,
                })
                .await;
            assert!(got.is_none(), "{}: unexpected PUBLISH {got:?}", self.id);
        }

        /// Subscribes to one filter with the given options and returns the reason codes.
        pub async fn subscribe_filter(
            &mut self,
            filter: Filter,
            properties: Option<SubscribeProperties>,
        ) -> Vec<SubscribeReasonCode> {
            match properties {
                Some(properties) => self
                    .client
                    .subscribe_many_with_properties([filter], properties)
                    .await
                    .expect("request queued"),
                None => self
                    .client
                    .subscribe_many([filter])
                    .await
                    .expect("request queued"),
            }
            let suback = self
                .next_matching(WAIT, |p| match p {
                    Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                    _ => None,
                })
                .await;
            match (suback, &self.closed) {
                (Some(codes), _) => codes,
                (None, Some(ConnectionError::MqttState(StateError::SubFail { reason }))) => {
                    vec![*reason]
                }
                (None, closed) => panic!("{}: no SUBACK within {WAIT:?} ({closed:?})", self.id),
            }
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.subscribe_filter(Filter::new(filter, qos), None).await
        }

        /// Subscribes with a Subscription Identifier.
        pub async fn subscribe_with_id(
            &mut self,
            filter: &str,
            qos: QoS,
            id: usize,
        ) -> Vec<SubscribeReasonCode> {
            let properties = SubscribeProperties {
                id: Some(id),
                user_properties: Vec::new(),
            };
            self.subscribe_filter(Filter::new(filter, qos), Some(properties))
                .await
        }

        pub async fn unsubscribe(&mut self, filter: &str) {
            self.client
                .unsubscribe(filter)
                .await
                .expect("request queued");
            self.expect_matching("UNSUBACK", |p| {
                matches!(p, Packet::UnsubAck(_)).then_some(())
            })
            .await
        }

        /// Publishes and waits for PUBACK (its reason) or PUBCOMP; `None` for QoS 0.
        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: &[u8],
            properties: Option<PublishProperties>,
        ) -> Option<u8> {
            match properties {
                Some(properties) => self
                    .client
                    .publish_with_properties(topic, qos, retain, payload.to_vec(), properties)
                    .await
                    .expect("request queued"),
                None => self
                    .client
                    .publish(topic, qos, retain, payload.to_vec())
                    .await
                    .expect("request queued"),
            }
            let ack = match qos {
                QoS::AtMostOnce => return None,
                QoS::AtLeastOnce => {
                    self.next_matching(WAIT, |p| match p {
                        Packet::PubAck(ack) => Some(puback_reason_code(&ack.reason)),
                        _ => None,
                    })
                    .await
                }
                QoS::ExactlyOnce => {
                    self.next_matching(WAIT, |p| match p {
                        Packet::PubRec(rec) => Some(pubrec_reason_code(&rec.reason)),
                        _ => None,
                    })
                    .await
                }
            };
            let code = match (ack, &self.closed) {
                (Some(code), _) => code,
                (None, Some(ConnectionError::MqttState(StateError::PubAckFail { reason }))) => {
                    return Some(puback_reason_code(reason))
                }
                (None, Some(ConnectionError::MqttState(StateError::PubRecFail { reason }))) => {
                    return Some(pubrec_reason_code(reason))
                }
                (None, closed) => panic!("{}: no acknowledgement ({closed:?})", self.id),
            };
            match qos {
                QoS::AtMostOnce | QoS::AtLeastOnce => Some(code),
                QoS::ExactlyOnce => {
                    let rec = code;
                    if rec < 0x80 {
                        self.expect_matching("PUBCOMP", |p| {
                            matches!(p, Packet::PubComp(_)).then_some(())
                        })
                        .await;
                    }
                    Some(rec)
                }
            }
        }

        pub async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
            let code = self.publish_with(topic, qos, retain, payload, None).await;
            assert!(
                code.unwrap_or(0) < 0x80,
                "{}: publish refused with {code:?}",
                self.id
            );
        }

        /// Waits until the broker closes the connection.
        ///
        /// rumqttc 0.24 cannot decode a DISCONNECT whose Remaining Length is 1 (a reason
        /// code and no properties, the usual form), so it reports such a close as an I/O
        /// error: tests that check a DISCONNECT reason code use [`RawClient`].
        pub async fn wait_closed(&mut self) {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !self.ended {
                match tokio::time::timeout_at(deadline, self.events.recv()).await {
                    Err(_) => panic!("{}: connection not closed within {WAIT:?}", self.id),
                    Ok(None) => self.ended = true,
                    Ok(Some(Err(error))) => {
                        self.closed = Some(error);
                        self.ended = true;
                    }
                    Ok(Some(Ok(packet))) => self.pending.push_back(packet),
                }
            }
        }

        pub async fn still_open_after(&mut self, quiet: Duration) -> bool {
            let _ = self.next_matching(quiet, |_| None::<()>).await;
            !self.ended
        }

        pub async fn disconnect(mut self) {
            self.client.disconnect().await.expect("request queued");
            let _ = within("the event loop to end after DISCONNECT", &mut self.task).await;
        }

        pub async fn kill(mut self) {
            self.task.abort();
            let _ = within("the event loop to be aborted", &mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The wire value of a PUBACK reason.
    pub fn puback_reason_code(reason: &PubAckReason) -> u8 {
        match reason {
            PubAckReason::Success => 0x00,
            PubAckReason::NoMatchingSubscribers => 0x10,
            PubAckReason::UnspecifiedError => 0x80,
            PubAckReason::ImplementationSpecificError => 0x83,
            PubAckReason::NotAuthorized => 0x87,
            PubAckReason::TopicNameInvalid => 0x90,
            PubAckReason::PacketIdentifierInUse => 0x91,
            PubAckReason::QuotaExceeded => 0x97,
            PubAckReason::PayloadFormatInvalid => 0x99,
        }
    }

    pub fn pubrec_reason_code(reason: &PubRecReason) -> u8 {
        match reason {
            PubRecReason::Success => 0x00,
            PubRecReason::NoMatchingSubscribers => 0x10,
            PubRecReason::UnspecifiedError => 0x80,
            PubRecReason::ImplementationSpecificError => 0x83,
            PubRecReason::NotAuthorized => 0x87,
            PubRecReason::TopicNameInvalid => 0x90,
            PubRecReason::PacketIdentifierInUse => 0x91,
            PubRecReason::QuotaExceeded => 0x97,
            PubRecReason::PayloadFormatInvalid => 0x99,
        }
    }

    pub fn topic(publish: &Publish) -> &str {
        std::str::from_utf8(&publish.topic).expect("UTF-8 topic")
    }
}

// ---------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------

/// How a raw read ended without a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEnd {
    Closed,
    TimedOut,
    Undecodable(String),
}

/// A TCP connection driven byte by byte: packets are encoded with `rookery::codec` or
/// written by hand, and what comes back is decoded for the connection's version.
pub struct RawClient {
    stream: TcpStream,
    rbuf: BytesMut,
    pub version: ProtocolVersion,
}

/// A CONNECT with the given identity and defaults (clean start, keep-alive 30 s).
pub fn connect_packet(version: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 30,
        client_id: MqttStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

/// A PUBLISH packet; `packet_id` is ignored for QoS 0.
pub fn publish_packet(topic: &str, qos: codec::QoS, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(codec::Publish {
        dup: false,
        qos,
        retain: false,
        topic: MqttStr::from(topic),
        packet_id: if qos == codec::QoS::AtMostOnce {
            0
        } else {
            packet_id
        },
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    })
}

pub fn subscribe_packet(packet_id: u16, filter: &str, qos: codec::QoS) -> Packet {
    Packet::Subscribe(codec::Subscribe {
        packet_id,
        filters: vec![(
            MqttStr::from(filter),
            codec::SubscriptionOptions {
                qos,
                ..Default::default()
            },
        )],
        properties: Properties::default(),
    })
}

pub fn encode(packet: &Packet, version: ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    codec::encode_packet(packet, version, &mut buf).expect("test packet encodes");
    buf.to_vec()
}

impl RawClient {
    /// A TCP connection with nothing sent yet.
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> RawClient {
        let stream = within("TCP connect", TcpStream::connect(addr))
            .await
            .expect("TCP connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            version,
        }
    }

    /// Wraps an already connected stream (e.g. one with a small receive buffer).
    pub fn from_stream(stream: TcpStream, version: ProtocolVersion) -> RawClient {
        RawClient {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            version,
        }
    }

    /// The socket, e.g. to keep a connection open without reading from it.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends `connect` and returns the client with the broker's CONNACK.
    pub async fn connect(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::open(addr, connect.protocol).await;
        client.send(&Packet::Connect(Box::new(connect))).await;
        match client.recv().await {
            Ok(Packet::ConnAck(connack)) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Connects with [`connect_packet`] defaults and asserts success.
    pub async fn connected(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
    ) -> RawClient {
        let (client, connack) = RawClient::connect(addr, connect_packet(version, client_id)).await;
        assert_eq!(connack.reason_code, 0, "CONNACK {connack:?}");
        client
    }

    pub async fn send(&mut self, packet: &Packet) {
        let bytes = encode(packet, self.version);
        self.send_raw(&bytes).await;
    }

    /// Writes bytes; a write error (the broker already closed) is not a test failure.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = within("a TCP write", self.stream.write_all(bytes)).await;
    }

    /// The next packet within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Packet, RawEnd> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Result<Packet, RawEnd> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match codec::decode_packet(&mut self.rbuf, self.version, usize::MAX) {
                Ok(Some(packet)) => return Ok(packet),
                Ok(None) => {}
                Err(error) => return Err(RawEnd::Undecodable(error.to_string())),
            }
            self.rbuf.reserve(8192);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(RawEnd::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(RawEnd::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet, which must arrive within [`WAIT`].
    pub async fn expect(&mut self) -> Packet {
        match self.recv().await {
            Ok(packet) => packet,
            Err(end) => panic!("expected a packet, got {end:?}"),
        }
    }

    /// The next PUBLISH, skipping nothing: any other packet fails the test.
    pub async fn expect_publish(&mut self) -> codec::Publish {
        match self.expect().await {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection (within `limit`) and returns the
    /// packets it sent before closing.
    pub async fn expect_closed_within(&mut self, limit: Duration) -> Vec<Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut packets = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Ok(packet) => packets.push(packet),
                Err(RawEnd::Closed) => return packets,
                Err(RawEnd::TimedOut) => {
                    panic!("connection not closed within {limit:?}; received {packets:?}")
                }
                Err(RawEnd::Undecodable(error)) => {
                    panic!("undecodable bytes from the broker: {error}")
                }
            }
        }
    }

    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        self.expect_closed_within(WAIT).await
    }

    /// Asserts that nothing arrives (and the connection stays open) for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        match self.recv_within(quiet).await {
            Err(RawEnd::TimedOut) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// SUBSCRIBE and its SUBACK reason codes.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: codec::QoS) -> Vec<u8> {
        self.send(&subscribe_packet(packet_id, filter, qos)).await;
        match self.expect().await {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                ack.reason_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// A PINGREQ answered by PINGRESP: proof that the connection works.
    pub async fn ping(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.expect().await {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

/// The DISCONNECT reason code among the packets a closing broker sent, if any.
pub fn disconnect_reason(packets: &[Packet]) -> Option<u8> {
    packets.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}
