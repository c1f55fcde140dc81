//! `--transport`: the load generator's clients speak plain TCP (their hot loops are
//! built on `TcpStream` readiness), so for every other transport each client connects
//! to a local relay in this process, which carries its bytes to the broker over TLS,
//! WebSocket or WSS (`tokio-rustls`, `tokio-tungstenite`).
//!
//! The relay adds a loopback hop on the client side. `tcp-relay` runs plain TCP through
//! the same relay, so that comparing `tls`/`ws`/`wss` with `tcp-relay` isolates what
//! the transport costs; `tcp` (the default) connects directly, with no relay.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Direct TCP (no relay).
    Tcp,
    /// Plain TCP through the relay: the baseline for the relayed transports.
    TcpRelay,
    /// MQTT over TLS (`--port` is the broker's TLS port).
    Tls,
    /// MQTT over WebSocket on `/mqtt` (`--port` is the broker's HTTP port).
    Ws,
    /// MQTT over WebSocket over TLS (`--port` is the broker's HTTPS port).
    Wss,
}

#[derive(Clone)]
struct Upstream {
    transport: Transport,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
}

/// Starts the relay for `transport` and returns the address clients connect to, or
/// `target` itself for direct TCP.
pub async fn start(
    transport: Transport,
    host: &str,
    port: u16,
    tls_ca: Option<&Path>,
) -> Result<String> {
    if transport == Transport::Tcp {
        return Ok(format!("{host}:{port}"));
    }
    let tls = match transport {
        Transport::Tls | Transport::Wss => {
            let ca = tls_ca.context("--transport tls/wss needs --tls-ca FILE")?;
            Some(connector(ca)?)
        }
        _ => None,
    };
    let upstream = Upstream {
        transport,
        host: host.to_string(),
        port,
        tls,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local: SocketAddr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let _ = client.set_nodelay(true);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Err(error) = relay(client, &upstream).await {
                    eprintln!("rookery-load: relay: {error:#}");
                }
            });
        }
    });
    Ok(local.to_string())
}

fn connector(ca: &Path) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
    {
        roots.add(cert.with_context(|| format!("parse {}", ca.display()))?)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn relay(mut client: TcpStream, upstream: &Upstream) -> Result<()> {
    let tcp = TcpStream::connect((upstream.host.as_str(), upstream.port))
        .await
        .with_context(|| format!("connect {}:{}", upstream.host, upstream.port))?;
    tcp.set_nodelay(true)?;
    let tls = match &upstream.tls {
        Some(connector) => {
            let name = ServerName::try_from(upstream.host.clone())?;
            Some(
                connector
                    .connect(name, tcp)
                    .await
                    .context("TLS handshake")?,
            )
        }
        None => {
            if upstream.transport == Transport::TcpRelay {
                let mut tcp = tcp;
                tokio::io::copy_bidirectional(&mut client, &mut tcp).await?;
                return Ok(());
            }
            return websocket(client, tcp, upstream).await;
        }
    };
    let mut tls = tls.context("TLS stream")?;
    if upstream.transport == Transport::Wss {
        return websocket(client, tls, upstream).await;
    }
    tokio::io::copy_bidirectional(&mut client, &mut tls).await?;
    Ok(())
}

/// Carries bytes from `client` to the broker in binary messages, one per read, and the
/// payloads of the broker's binary messages back.
async fn websocket<S>(mut client: TcpStream, stream: S, upstream: &Upstream) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let scheme = if upstream.transport == Transport::Wss {
        "wss"
    } else {
        "ws"
    };
    let url = format!("{scheme}://{}:{}/mqtt", upstream.host, upstream.port);
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (socket, _) = tokio_tungstenite::client_async(request, stream)
        .await
        .context("WebSocket upgrade")?;
    let (mut sink, mut source) = socket.split();
    let (mut client_read, mut client_write) = client.split();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        tokio::select! {
            read = client_read.read_buf(&mut buf) => {
                if read? == 0 {
                    let _ = sink.close().await;
                    return Ok(());
                }
                let message = Message::Binary(buf.split().freeze());
                sink.send(message).await?;
                buf.reserve(64 * 1024);
            }
            message = source.next() => match message {
                Some(Ok(Message::Binary(data))) => client_write.write_all(&data).await?,
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(error)) => bail!("WebSocket: {error}"),
            },
        }
    }
}
