//! TLS for the MQTT/TLS listener (`[mqtt] tls_listen`) and for WSS (`[http] tls_listen`):
//! the rustls configuration read from PEM files, and the accept loops, which run every
//! TLS handshake in its own task under [`HANDSHAKE_TIMEOUT`], so that a slow or failing
//! handshake only ever affects its own connection.

use super::connection::{self, ConnectionGuard};
use super::{Broker, StartError};
use crate::config::{ClientAuth, Config};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a new connection has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a server configuration from PEM files: the certificate chain (leaf first), its
/// private key (PKCS#8, PKCS#1 or SEC1), and optionally the CA whose client certificates
/// are accepted (`auth` says whether a client must present one).
fn server_config(
    section: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
    client_ca: Option<&Path>,
    auth: ClientAuth,
) -> Result<Arc<ServerConfig>, StartError> {
    let error = |message: String| StartError::Tls(format!("[{section}] {message}"));
    let cert = cert.ok_or_else(|| error("tls_listen is set but tls_cert is not".into()))?;
    let key = key.ok_or_else(|| error("tls_listen is set but tls_key is not".into()))?;
    let chain = read_certificates(cert).map_err(|e| error(format!("tls_cert: {e}")))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        error(format!(
            "tls_key: no private key read from {}: {e}",
            key.display()
        ))
    })?;
    // The provider is chosen here rather than taken from the process default, which is
    // ambiguous (and panics) when more than one provider is compiled in.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| error(format!("TLS versions: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certificates(path).map_err(|e| error(format!("tls_client_ca: {e}")))? {
                roots.add(ca).map_err(|e| {
                    error(format!(
                        "tls_client_ca: {} is not a usable CA certificate: {e}",
                        path.display()
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            let verifier = verifier
                .build()
                .map_err(|e| error(format!("tls_client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        error(format!(
            "tls_cert and tls_key do not make a usable pair: {e}"
        ))
    })?;
    // WSS clients negotiate HTTP/1.1; MQTT clients send no ALPN (or "mqtt"), which a
    // server without ALPN protocols accepts.
    if section == "http" {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certificates)
}

/// Accepts MQTT/TLS connections: each one counts against `max_connections` from its
/// first byte, like a TCP connection, and gets the MQTT session code once its TLS
/// handshake succeeded. One refused at accept (`max_connections`, `max_connect_rate`) is
/// closed before its handshake: sparing the handshake is the point of refusing it.
async fn accept_mqtt(listener: TcpListener, acceptor: TlsAcceptor, broker: Arc<Broker>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if broker.admit_connection(peer).is_err() {
            continue;
        }
        let _ = stream.set_nodelay(true);
        let broker = broker.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let guard = ConnectionGuard::count(&broker.stats);
            let Some(stream) = handshake(&acceptor, stream, peer).await else {
                return;
            };
            connection::serve_stream(Box::new(stream), peer, broker, guard).await;
        });
    }
}

/// The server side of a TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`]. A failure (an
/// untrusted or missing client certificate, a client that does not trust ours, bytes
/// that are not TLS) is logged and closes only this connection.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// The WSS listener: TLS connections for the HTTP server (`axum::serve`), handed over
/// once their handshake is done. Handshakes run in their own tasks, so one slow client
/// never holds up the others' accepts.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        // Bounded: handshaken connections wait here only while the HTTP server is busy
        // taking the ones before them.
        let (ready_tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "HTTP/TLS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let ready_tx = ready_tx.clone();
                tokio::spawn(async move {
                    if let Some(stream) = handshake(&acceptor, stream, peer).await {
                        let _ = ready_tx.send((stream, peer)).await;
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local_addr,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// A bound TLS listener and the acceptor for its connections.
pub(super) struct BoundTls {
    pub listener: TcpListener,
    pub local_addr: SocketAddr,
    pub acceptor: TlsAcceptor,
}

/// Binds `[mqtt] tls_listen`, if set. The certificate files are read (and refused with a
/// clear error) before anything listens.
pub(super) async fn bind_mqtt(config: &Config) -> Result<Option<BoundTls>, StartError> {
    let mqtt = &config.mqtt;
    let Some(addr) = mqtt.tls_listen else {
        return Ok(None);
    };
    let server_config = server_config(
        "mqtt",
        mqtt.tls_cert.as_deref(),
        mqtt.tls_key.as_deref(),
        mqtt.tls_client_ca.as_deref(),
        mqtt.tls_client_auth,
    )?;
    bind(addr, server_config).await.map(Some)
}

/// Binds `[http] tls_listen` (WSS), if set, with `[http]`'s certificate or else
/// `[mqtt]`'s.
pub(super) async fn bind_http(config: &Config) -> Result<Option<BoundTls>, StartError> {
    let http = &config.http;
    let Some(addr) = http.tls_listen else {
        return Ok(None);
    };
    let (cert, key) = match (&http.tls_cert, &http.tls_key) {
        (None, None) => (&config.mqtt.tls_cert, &config.mqtt.tls_key),
        (cert, key) => (cert, key),
    };
    let server_config = server_config(
        "http",
        cert.as_deref(),
        key.as_deref(),
        None,
        ClientAuth::Required,
    )?;
    bind(addr, server_config).await.map(Some)
}

async fn bind(addr: SocketAddr, config: Arc<ServerConfig>) -> Result<BoundTls, StartError> {
    let bind_error = |source| StartError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let local_addr = listener.local_addr().map_err(bind_error)?;
    Ok(BoundTls {
        listener,
        local_addr,
        acceptor: TlsAcceptor::from(config),
    })
}

/// Starts serving the bound TLS listeners: MQTT/TLS, and the HTTP app over TLS.
pub(super) fn spawn(
    mqtt: Option<BoundTls>,
    http: Option<BoundTls>,
    broker: &Arc<Broker>,
    shutdown: &tokio::sync::watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), StartError> {
    if let Some(bound) = mqtt {
        tracing::info!(addr = %bound.local_addr, "MQTT/TLS listener ready");
        tasks.push(tokio::spawn(accept_mqtt(
            bound.listener,
            bound.acceptor,
            broker.clone(),
        )));
    }
    if let Some(bound) = http {
        tracing::info!(addr = %bound.local_addr, "HTTP/TLS listener ready");
        let addr = bound.local_addr;
        let listener = TlsListener::new(bound.listener, bound.acceptor)
            .map_err(|source| StartError::Bind { addr, source })?;
        tasks.push(tokio::spawn(crate::api::serve(
            listener,
            broker.clone(),
            shutdown.clone(),
        )));
    }
    Ok(())
}
