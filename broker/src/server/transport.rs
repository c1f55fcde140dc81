//! The byte streams an MQTT connection runs over (SPEC §2: TCP, TLS, WebSocket, WSS).
//!
//! The connection code (`handshake`, `connection`) is generic over a read half and a
//! write half, so one session implementation serves every transport. There are exactly
//! two instantiations:
//!
//! - plain TCP uses the socket's own halves (`TcpStream::into_split`): no lock, and the
//!   read waits for readiness before it reserves a buffer, so an idle connection holds
//!   none;
//! - every other transport is one [`BoxedStream`] (TLS over TCP, WebSocket messages
//!   adapted to bytes, or WebSocket over TLS) split with `tokio::io::split`. The one
//!   connection task polls both halves, so the split's lock is never contended.

use bytes::BytesMut;
use std::future::Future;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A bidirectional byte stream of any transport but plain TCP.
pub(crate) trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}

pub(crate) type BoxedStream = Box<dyn AsyncStream>;

/// The read side of a connection.
pub(crate) trait TransportRead: Send {
    /// Appends what is available to `buf` (reserving `chunk` bytes first); `Ok(0)` at
    /// the end of the stream. Cancel safe: when the future is dropped before it
    /// completes, nothing has been read, so it can be a `select!` branch.
    fn read_some(
        &mut self,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;
}

/// The write side of a connection.
pub(crate) trait TransportWrite: AsyncWrite + Unpin + Send {
    /// Whether written bytes may wait inside the transport (TLS records, WebSocket
    /// frames) until `flush`. A TCP write hands the bytes to the kernel, so the TCP path
    /// never spends a loop iteration on a flush that does nothing.
    const BUFFERED: bool;
}

impl TransportRead for OwnedReadHalf {
    async fn read_some(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        loop {
            // Readiness first, then a buffer: an idle connection waits holding none.
            self.readable().await?;
            buf.reserve(chunk);
            match self.try_read_buf(buf) {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                read => return read,
            }
        }
    }
}

impl TransportWrite for OwnedWriteHalf {
    const BUFFERED: bool = false;
}

// Generic rather than for `BoxedStream` alone, so that the impl holds for every lifetime
// the boxed trait object may be given (an `async fn` in a trait needs that to be `Send`).
impl<S: AsyncRead + Send> TransportRead for tokio::io::ReadHalf<S> {
    async fn read_some(&mut self, buf: &mut BytesMut, chunk: usize) -> io::Result<usize> {
        // A TLS or WebSocket stream has no readiness of its own to wait on (a TLS record
        // may carry no application data), so the buffer is reserved up front.
        buf.reserve(chunk);
        self.read_buf(buf).await
    }
}

impl<S: AsyncWrite + Send> TransportWrite for tokio::io::WriteHalf<S> {
    const BUFFERED: bool = true;
}
