//! The network side: listeners, and one task per connection.
//!
//! `start` binds the listeners and spawns the background tasks (session expiry, `$SYS`);
//! every accepted socket gets a `connection::Connection` task that owns the socket and,
//! while connected, the client's session state. MQTT arrives over plain TCP, TLS
//! (`tls`), and WebSocket or WSS on the HTTP listener (`websocket`); `transport` is what
//! lets one connection implementation serve them all.

pub mod admission;
mod connection;
mod handshake;
mod inbound;
mod outbound;
pub mod realtime;
mod reload;
mod tls;
mod transport;
pub mod websocket;
mod will;

use crate::acl::Acl;
use crate::config::Config;
use crate::config::Durability;
use crate::durable::Durable;
use crate::message::Message;
use crate::router::retained::Retained;
use crate::router::Router;
use crate::session::{OutboxLimits, Registry, SessionCore, SessionState};
use crate::stats::Stats;
use arc_swap::ArcSwap;
use rookery_storage::{Recovered, Store};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use reload::{ReloadError, Reloaded};

/// Connections refused at accept whose CONNECT is still being read to answer it.
const MAX_REFUSING: usize = 256;
/// How long a refused connection has to send its CONNECT for the refusal's CONNACK.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);

/// What every connection task shares.
pub struct Broker {
    /// The configuration as started. What a reload can change (limits, `[auth]`
    /// back-off, the ACL file, webhooks) is read from [`Broker::current`] instead.
    pub config: Config,
    /// The configuration in force, replaced whole by a reload (SIGHUP).
    live: ArcSwap<Config>,
    /// Per-address connect rate and authentication back-off.
    pub admission: admission::Admission,
    /// Permits for refused TCP connections being answered ([`MAX_REFUSING`]).
    refusing: Arc<tokio::sync::Semaphore>,
    /// Reloads run one at a time.
    reloading: tokio::sync::Mutex<()>,
    /// The store and its commit worker; `None` with `durability = "none"`.
    pub durable: Option<Arc<Durable>>,
    pub router: Router,
    pub registry: Registry,
    pub stats: Arc<Stats>,
    next_connection_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// Why a connection was refused before its CONNECT was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` are open.
    MaxConnections,
    /// The address connects faster than `max_connect_rate`.
    ConnectRate,
}

impl Refusal {
    /// The CONNACK reason code: 0x97 Quota exceeded (an administratively imposed limit)
    /// and 0x9F Connection rate exceeded; 3.x clients get 3, Server unavailable (the
    /// encoder's mapping).
    pub(crate) fn connack_code(self) -> u8 {
        match self {
            Refusal::MaxConnections => crate::codec::reason::QUOTA_EXCEEDED,
            Refusal::ConnectRate => crate::codec::reason::CONNECTION_RATE_EXCEEDED,
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "too many connections",
            Refusal::ConnectRate => "connection rate exceeded",
        }
    }
}

impl Broker {
    /// The configuration in force (after reloads): read it once per connection, and
    /// keep that snapshot for the connection's life.
    pub fn current(&self) -> Arc<Config> {
        self.live.load_full()
    }

    /// Whether a new connection from `peer` may go on to its handshake: not at
    /// `max_connections`, and its address within `max_connect_rate`. Counted and logged
    /// when refused (the first refusal and every 1,000th after it, per reason).
    pub(crate) fn admit_connection(&self, peer: SocketAddr) -> Result<(), Refusal> {
        let config = self.live.load();
        let current = Stats::get(&self.stats.connections_current) as usize;
        let refusal = if current >= config.mqtt.max_connections {
            Refusal::MaxConnections
        } else if !self
            .admission
            .connect_allowed(peer.ip(), &config, Instant::now())
        {
            Refusal::ConnectRate
        } else {
            return Ok(());
        };
        let counter = match refusal {
            Refusal::MaxConnections => &self.stats.refused_max_connections,
            Refusal::ConnectRate => &self.stats.refused_connect_rate,
        };
        let total = counter.fetch_add(1, Ordering::Relaxed) + 1;
        if total == 1 || total % 1000 == 0 {
            tracing::warn!(
                %peer,
                current,
                total,
                "connection refused: {}",
                refusal.describe()
            );
        } else {
            tracing::debug!(%peer, "connection refused: {}", refusal.describe());
        }
        Err(refusal)
    }

    fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes a persistent session's record (no-op without durability or for sessions
    /// that end with their connection).
    pub fn persist_session(
        &self,
        client_id: &str,
        state: &mut SessionState,
        disconnected: bool,
    ) -> Option<crate::durable::Ticket> {
        let durable = self
            .durable
            .as_ref()
            .filter(|_| state.expiry_interval > 0)?;
        state.persisted = true;
        Some(durable.save_session(client_id, state, disconnected))
    }

    /// A session ended: its subscriptions leave the router and its record the store.
    pub fn end_session(&self, core: &SessionCore, state: &SessionState) {
        self.router.remove_session(core, state);
        if let (Some(durable), true) = (&self.durable, state.persisted) {
            durable.remove_session(&core.client_id);
        }
    }

    /// The queue limits every session gets (from the configuration in force).
    pub fn outbox_limits(&self) -> OutboxLimits {
        outbox_limits(&self.live.load().mqtt)
    }
}

/// The queue limits of `config`.
pub fn outbox_limits(config: &crate::config::MqttConfig) -> OutboxLimits {
    OutboxLimits {
        max_messages: config.max_queued_messages.max(1),
        max_bytes: config.max_queued_bytes.max(1),
        policy: config.overflow_policy,
        queue_qos0_offline: config.queue_qos0_offline,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot open storage in {dir}: {source}")]
    Storage {
        dir: std::path::PathBuf,
        source: rookery_storage::StorageError,
    },
}

/// A running broker. Dropping it does not stop the broker; call `shutdown`.
pub struct BrokerHandle {
    mqtt_addr: SocketAddr,
    http_addr: SocketAddr,
    mqtt_tls_addr: Option<SocketAddr>,
    http_tls_addr: Option<SocketAddr>,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The commit worker, stopped only after the final commit.
    commit_task: Option<JoinHandle<()>>,
}

impl BrokerHandle {
    /// The address the MQTT/TCP listener is bound to (useful with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The address the HTTP listener (management API) is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The address the MQTT/TLS listener is bound to, if `[mqtt] tls_listen` is set.
    pub fn mqtt_tls_addr(&self) -> Option<SocketAddr> {
        self.mqtt_tls_addr
    }

    /// The address the HTTPS listener (WSS, and the API over TLS) is bound to, if
    /// `[http] tls_listen` is set.
    pub fn http_tls_addr(&self) -> Option<SocketAddr> {
        self.http_tls_addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.broker.stats
    }

    /// Users and groups (the management API's state).
    pub fn directory(&self) -> &Arc<crate::groups::directory::Directory> {
        &self.broker.router.directory
    }

    /// Stops accepting, tells every connection to close (v5 clients get DISCONNECT
    /// 0x8B Server shutting down) and waits up to `grace` for them.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
        let deadline = Instant::now() + grace;
        while Stats::get(&self.broker.stats.connections_current) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Undelivered events wait for the next start (the last commit writes the staged).
        self.broker.router.events.shutdown().await;
        if let Some(durable) = &self.broker.durable {
            // Open QoS 0 history chunks too (written by the drain's last commit).
            self.broker
                .router
                .history
                .flush_due(crate::groups::now_secs(), true);
            // Everything submitted reaches the disk, including what `batched` had not
            // flushed yet.
            if let Err(error) = durable.drain().await {
                tracing::error!(%error, "final flush failed");
            }
        }
        if let Some(task) = self.commit_task {
            task.abort();
            let _ = tokio::time::timeout(grace, task).await;
        }
        // The aborted tasks hold the store (and its file lock) until the runtime drops
        // them; waiting for that lets a caller reopen the data directory at once.
        let deadline = tokio::time::Instant::now() + grace;
        for task in self.tasks {
            let _ = tokio::time::timeout_at(deadline, task).await;
        }
    }
}

/// Binds the listeners and starts the broker on the current tokio runtime.
pub async fn start(config: Config) -> Result<BrokerHandle, StartError> {
    let stats = Arc::new(Stats::default());
    let acl = match &config.auth.acl_file {
        Some(path) => Some(Acl::load(path)?),
        None => None,
    };
    let (durable, recovered) = open_storage(&config)?;
    let events =
        crate::events::Events::start(config.webhooks.clone(), durable.clone()).map_err(|e| {
            StartError::Storage {
                dir: config.storage.data_dir.clone(),
                source: rookery_storage::StorageError::Corrupt(e),
            }
        })?;
    let retained = Retained::new(durable.clone(), stats.clone());
    retained.restore(
        recovered
            .retained
            .into_iter()
            .filter_map(Message::from_stored),
    );
    let directory = crate::groups::directory::Directory::new(durable.clone(), &recovered.records)
        .map_err(|e| StartError::Storage {
        dir: config.storage.data_dir.clone(),
        source: rookery_storage::StorageError::Corrupt(e),
    })?;
    let history = Arc::new(crate::groups::history::History::new(
        config.groups.clone(),
        durable.as_ref().map(|d| d.store().clone()),
    ));
    if let Some(durable) = &durable {
        durable.add_source(&history);
    }
    let router = Router::new(
        retained,
        acl,
        durable.clone(),
        Arc::new(directory),
        history,
        stats.clone(),
    )
    .with_events(events.clone());
    if let Some(durable) = &durable {
        let waiting = durable
            .store()
            .records(rookery_storage::Space::GroupQueues, &[])
            .map_err(|source| StartError::Storage {
                dir: config.storage.data_dir.clone(),
                source,
            })?;
        router.restore_waiting(waiting);
    }
    let registry = Registry::new(stats.clone(), events.clone());
    let listener = TcpListener::bind(config.mqtt.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.mqtt.listen,
            source,
        })?;
    let mqtt_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.mqtt.listen,
        source,
    })?;
    let http_listener = TcpListener::bind(config.http.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.http.listen,
            source,
        })?;
    let http_addr = http_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.http.listen,
            source,
        })?;
    let mqtt_tls = tls::bind_mqtt(&config).await?;
    let http_tls = tls::bind_http(&config).await?;
    let mqtt_tls_addr = mqtt_tls.as_ref().map(|bound| bound.local_addr);
    let http_tls_addr = http_tls.as_ref().map(|bound| bound.local_addr);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let http_shutdown = shutdown_rx.clone();
    let broker = Arc::new(Broker {
        live: ArcSwap::from_pointee(config.clone()),
        config,
        admission: Default::default(),
        refusing: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING)),
        reloading: tokio::sync::Mutex::new(()),
        durable: durable.clone(),
        router,
        registry,
        stats,
        next_connection_id: AtomicU64::new(1),
        shutdown: shutdown_rx,
    });
    restore_sessions(&broker, recovered.sessions);
    tracing::info!(%mqtt_addr, "MQTT listener ready");
    let mut tasks = vec![
        tokio::spawn(accept_loop(listener, broker.clone())),
        tokio::spawn(expire_sessions(broker.clone())),
        tokio::spawn(sweep_admission(broker.clone())),
        tokio::spawn(crate::sys::publish_periodically(broker.clone())),
        tokio::spawn(flush_history_chunks(broker.clone())),
        tokio::spawn(events.flush_periodically()),
    ];
    let commit_task = durable.as_ref().map(|durable| {
        let interval = Duration::from_millis(broker.config.storage.flush_interval_ms.max(1));
        tokio::spawn(durable.clone().run(interval))
    });
    if let Some(durable) = &durable {
        let limits = crate::durable::capacity::Limits::from_config(&broker.config.storage);
        tasks.push(tokio::spawn(
            durable.clone().watch_capacity(limits, broker.stats.clone()),
        ));
    }
    crate::api::ensure_app_token(&broker).await;
    tracing::info!(%http_addr, "HTTP listener ready");
    tls::spawn(mqtt_tls, http_tls, &broker, &http_shutdown, &mut tasks)?;
    tasks.push(tokio::spawn(crate::api::serve(
        http_listener,
        broker.clone(),
        http_shutdown,
    )));
    Ok(BrokerHandle {
        mqtt_addr,
        http_addr,
        mqtt_tls_addr,
        http_tls_addr,
        broker,
        shutdown: shutdown_tx,
        tasks,
        commit_task,
    })
}

async fn accept_loop(listener: TcpListener, broker: Arc<Broker>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(refusal) = broker.admit_connection(peer) {
            refuse_tcp(&broker, stream, refusal);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        tokio::spawn(async move {
            connection::serve_tcp(stream, peer, broker).await;
        });
    }
}

/// Answers a TCP connection refused at accept: its CONNECT gets CONNACK with the
/// refusal's reason code, then the connection closes [MQTT-3.2.2-7] (3.1.1:
/// [MQTT-3.2.2-5]). At most [`MAX_REFUSING`] are answered at once, each for at most
/// [`REFUSAL_WAIT`]; beyond that a refused connection is closed at once, unanswered.
fn refuse_tcp(broker: &Arc<Broker>, stream: tokio::net::TcpStream, refusal: Refusal) {
    let Ok(permit) = broker.refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        handshake::refuse(&mut reader, &mut writer, refusal, REFUSAL_WAIT).await;
        drop(permit);
    });
}

/// Evicts idle per-address entries (connect rate, failed logins) every 10 s.
async fn sweep_admission(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        broker.admission.sweep(&broker.current(), Instant::now());
    }
}

/// Ends offline sessions whose expiry interval has passed [MQTT-3.1.2-23].
async fn expire_sessions(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for (core, state) in broker.registry.expire(Instant::now()) {
            tracing::debug!(client_id = %core.client_id, "session expired");
            broker.end_session(&core, &state);
        }
    }
}

/// Opens the store in the data directory and reads back what survived, unless
/// durability is off.
fn open_storage(config: &Config) -> Result<(Option<Arc<Durable>>, Recovered), StartError> {
    if config.storage.durability == Durability::None {
        return Ok((None, Recovered::default()));
    }
    let dir = config.storage.data_dir.clone();
    let storage_error = |source| StartError::Storage {
        dir: dir.clone(),
        source,
    };
    let started = Instant::now();
    let store = rookery_storage::SledStore::open(&dir).map_err(storage_error)?;
    let recovered = store.recover().map_err(storage_error)?;
    tracing::info!(
        dir = %dir.display(),
        retained = recovered.retained.len(),
        sessions = recovered.sessions.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "storage recovered"
    );
    let durable = Durable::new(
        Arc::new(store),
        config.storage.durability,
        recovered.next_message_id,
        config.storage.full_policy,
        Duration::from_millis(config.storage.write_behind_ms),
    );
    Ok((Some(durable), recovered))
}

/// Writes QoS 0 history chunks that have been open for a while (`groups/history.rs`).
async fn flush_history_chunks(broker: Arc<Broker>) {
    let Some(durable) = broker.durable.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if broker
            .router
            .history
            .flush_due(crate::groups::now_secs(), false)
        {
            durable.barrier(false);
        }
    }
}

/// Puts recovered sessions back: offline, with their subscriptions in the router.
fn restore_sessions(broker: &Arc<Broker>, sessions: Vec<rookery_storage::RecoveredSession>) {
    use crate::durable::sessions::{remaining_expiry, restore_subscriptions};
    // Published once every session is back, so that all their subscriptions see them.
    let mut wills = Vec::new();
    for recovered in sessions {
        let stored = &recovered.session;
        let mut state = SessionState {
            expiry_interval: stored.expiry_interval,
            persisted: true,
            ..Default::default()
        };
        state.subscriptions.extend(restore_subscriptions(stored));
        // QoS 2 messages in flight when the broker stopped: resent with their packet ids.
        for (packet_id, entry, message) in recovered.inflight.iter().cloned() {
            let Some(message) = Message::from_stored(message) else {
                tracing::error!(client_id = %stored.client_id, packet_id, "stored in-flight message does not decode");
                continue;
            };
            let delivery = crate::session::Delivery {
                message: Arc::new(message),
                qos: crate::codec::QoS::from_u8(entry.qos)
                    .unwrap_or(crate::codec::QoS::ExactlyOnce),
                retain: entry.retain,
                subscription_ids: entry.subscription_ids,
                stored: Some(crate::session::StoredRef {
                    seq: entry.sequence,
                    message_id: entry.message_id,
                }),
                redelivery: true,
            };
            state.next_sequence = state.next_sequence.max(entry.sequence + 1);
            state.inflight.insert(
                packet_id,
                crate::session::InFlight {
                    delivery,
                    sequence: entry.sequence,
                    released: entry.released,
                },
            );
        }
        state
            .incoming_qos2
            .extend(recovered.incoming.iter().copied());
        let client_id: Arc<str> = Arc::from(stored.client_id.as_str());
        if let Some(message) = stored.will.clone() {
            let will = crate::session::WillRecord {
                message,
                retain: stored.will_retain,
                delay: stored.will_delay,
                sender: stored.will_sender.as_deref().map(Arc::from),
            };
            let remaining = will::remaining_delay(stored);
            if !remaining.is_zero() {
                // Still in the record if the broker stops again before it is published.
                state.will = Some(Box::new(will.clone()));
            } else if let Some(durable) = &broker.durable {
                // Published now: the record no longer carries it.
                durable.submit([rookery_storage::Op::PutSession(Box::new(
                    rookery_storage::StoredSession {
                        will: None,
                        will_retain: false,
                        will_delay: 0,
                        will_sender: None,
                        ..stored.clone()
                    },
                ))]);
            }
            wills.push((will, client_id.clone(), remaining));
        }
        let subscriptions: Vec<_> = state
            .subscriptions
            .iter()
            .map(|(filter, sub)| (filter.clone(), sub.clone()))
            .collect();
        let core = broker.registry.restore(
            client_id,
            state,
            remaining_expiry(stored),
            broker.outbox_limits(),
        );
        let (first, last) = recovered.queue.unwrap_or((1, 0));
        core.outbox
            .enable_disk(crate::session::outbox::DiskQueue::new(
                stored.client_id.clone(),
                last + 1,
                first.saturating_sub(1),
                recovered.queue_len,
            ));
        for (filter, sub) in subscriptions {
            broker
                .router
                .subscribe(&core, None, &filter, sub.options, sub.subscription_id);
        }
    }
    for (will, client_id, remaining) in wills {
        will::schedule_recovered(broker, will, client_id, remaining);
    }
}
