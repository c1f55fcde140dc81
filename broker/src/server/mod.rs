//! The network side: listeners, and one task per connection.
//!
//! `start` binds the listeners and spawns the background tasks (session expiry, `$SYS`);
//! every accepted socket gets a `connection::Connection` task that owns the socket and,
//! while connected, the client's session state.

mod connection;
mod handshake;
mod inbound;
mod outbound;
mod will;

use crate::acl::Acl;
use crate::config::Config;
use crate::router::retained::Retained;
use crate::router::Router;
use crate::session::Registry;
use crate::stats::Stats;
use rookery_storage::MemoryRetainedStore;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What every connection task shares.
pub struct Broker {
    pub config: Config,
    pub router: Router,
    pub registry: Registry,
    pub stats: Arc<Stats>,
    next_connection_id: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

impl Broker {
    fn next_connection_id(&self) -> u64 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
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
}

/// A running broker. Dropping it does not stop the broker; call `shutdown`.
pub struct BrokerHandle {
    mqtt_addr: SocketAddr,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl BrokerHandle {
    /// The address the MQTT/TCP listener is bound to (useful with port 0).
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.broker.stats
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
    }
}

/// Binds the listeners and starts the broker on the current tokio runtime.
pub async fn start(config: Config) -> Result<BrokerHandle, StartError> {
    let stats = Arc::new(Stats::default());
    let acl = match &config.auth.acl_file {
        Some(path) => Some(Acl::load(path)?),
        None => None,
    };
    let retained = Retained::new(Arc::new(MemoryRetainedStore::new()), stats.clone());
    let router = Router::new(retained, acl, stats.clone());
    let registry = Registry::new(stats.clone());
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
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let broker = Arc::new(Broker {
        config,
        router,
        registry,
        stats,
        next_connection_id: AtomicU64::new(1),
        shutdown: shutdown_rx,
    });
    tracing::info!(%mqtt_addr, "MQTT listener ready");
    let tasks = vec![
        tokio::spawn(accept_loop(listener, broker.clone())),
        tokio::spawn(expire_sessions(broker.clone())),
        tokio::spawn(crate::sys::publish_periodically(broker.clone())),
    ];
    Ok(BrokerHandle {
        mqtt_addr,
        broker,
        shutdown: shutdown_tx,
        tasks,
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
        let current = Stats::get(&broker.stats.connections_current) as usize;
        if current >= broker.config.mqtt.max_connections {
            tracing::warn!(%peer, current, "max_connections reached: connection refused");
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        tokio::spawn(async move {
            connection::serve(stream, peer, broker).await;
        });
    }
}

/// Ends offline sessions whose expiry interval has passed [MQTT-3.1.2-23].
async fn expire_sessions(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        for (core, state) in broker.registry.expire(Instant::now()) {
            tracing::debug!(client_id = %core.client_id, "session expired");
            broker.router.remove_session(&core, &state);
        }
    }
}
