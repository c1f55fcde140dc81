//! MQTT over WebSocket (and WSS) on the HTTP listener's `GET /mqtt` (SPEC §1, §2; MQTT
//! 5.0 §6).
//!
//! The upgrade negotiates the subprotocol `mqtt` (or `mqttv3.1`, which MQTT 3.1 clients
//! offer). A client that offers subprotocols but none of these is refused with 400; a
//! client that offers none is served anyway, without a `Sec-WebSocket-Protocol` in the
//! answer (some tools cannot send one, and the bytes that follow are MQTT either way).
//!
//! After the upgrade, [`WsStream`] turns the WebSocket's binary messages into a byte
//! stream for the ordinary connection code: an MQTT packet may span messages, and one
//! message may hold several packets [MQTT-6.0.0-2]. A text message is a protocol error
//! [MQTT-6.0.0-1]: the connection ends (as a lost one: the will is published) with a
//! Close frame 1003 (unsupported data).

use super::connection::{self, ConnectionGuard};
use super::{Broker, Refusal};
use axum::extract::connect_info::Connected;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use bytes::Bytes;
use futures_util::{Sink, Stream};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The subprotocols served, in order of preference.
pub const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Close codes (RFC 6455 §7.4.1): the connection ended normally (including for MQTT
/// reasons, which v5 clients have already read in a DISCONNECT), or it carried a text
/// message.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_UNSUPPORTED_DATA: u16 = 1003;

/// The peer address of an HTTP connection, for the connection's logs.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Connected<IncomingStream<'_, super::tls::TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, super::tls::TlsListener>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

/// `GET /mqtt`: upgrades to a WebSocket and serves MQTT on it.
pub async fn upgrade(
    State(broker): State<Weak<Broker>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let Some(broker) = broker.upgrade() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is shutting down",
        )
            .into_response();
    };
    let offered = upgrade.requested_protocols().next().is_some();
    let upgrade = upgrade.protocols(SUBPROTOCOLS);
    if offered && upgrade.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "MQTT over WebSocket needs the subprotocol \"mqtt\"",
        )
            .into_response();
    }
    match broker.admit_connection(peer) {
        Ok(()) => {}
        Err(Refusal::MaxConnections) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response()
        }
        Err(Refusal::ConnectRate) => {
            return (StatusCode::TOO_MANY_REQUESTS, "connection rate exceeded").into_response()
        }
    }
    // A message larger than the largest packet is refused by the WebSocket layer; the
    // margin lets the codec see (and answer 0x95 to) a packet just over the limit.
    let max_packet = broker.current().mqtt.max_packet_size as usize;
    let max_message = max_packet.saturating_add(64 * 1024);
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| async move {
            let guard = ConnectionGuard::count(&broker.stats);
            let stream = WsStream::new(socket);
            connection::serve_stream(Box::new(stream), peer, broker, guard).await;
        })
}

/// A WebSocket as a byte stream: reads yield the payloads of binary messages, each
/// write is sent as one binary message.
pub(super) struct WsStream {
    socket: WebSocket,
    /// What is left of the binary message being read.
    pending: Bytes,
    /// The code of the Close frame to send on shutdown, if not a normal closure.
    close_code: Option<u16>,
    close_sent: bool,
}

impl WsStream {
    fn new(socket: WebSocket) -> WsStream {
        WsStream {
            socket,
            pending: Bytes::new(),
            close_code: None,
            close_sent: false,
        }
    }
}

fn ws_error(error: axum::Error) -> io::Error {
    io::Error::other(error)
}

impl AsyncRead for WsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.socket).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => this.pending = data,
                Some(Ok(Message::Text(_))) => {
                    this.close_code = Some(CLOSE_UNSUPPORTED_DATA);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket message [MQTT-6.0.0-1]",
                    )));
                }
                // The WebSocket layer answers pings (and the peer's Close) itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(error)) => return Poll::Ready(Err(ws_error(error))),
            }
        }
    }
}

impl AsyncWrite for WsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(ws_error)?;
        Pin::new(&mut this.socket)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(ws_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(Pin::new(&mut this.socket).poll_ready(cx)).map_err(ws_error)?;
            let frame = match this.close_code {
                Some(code) => CloseFrame {
                    code,
                    reason: "MQTT needs binary messages".into(),
                },
                None => CloseFrame {
                    code: CLOSE_NORMAL,
                    reason: "".into(),
                },
            };
            Pin::new(&mut this.socket)
                .start_send(Message::Close(Some(frame)))
                .map_err(ws_error)?;
            this.close_sent = true;
        }
        // Flushes the Close frame.
        Pin::new(&mut this.socket).poll_close(cx).map_err(ws_error)
    }
}
