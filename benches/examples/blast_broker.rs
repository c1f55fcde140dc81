//! A deliberately trivial "broker" for measuring the load generator's own
//! ceiling: QoS 0 only, exact topic match only, no retained messages, no
//! sessions. A publisher's read batch is forwarded as one chunk to every
//! subscriber of its topic, so subscribers see large batches, the way a
//! write-batching broker behaves. Not an MQTT broker; do not benchmark it.
//!
//! cargo run --release -p rookery-benches --example blast_broker -- 127.0.0.1:18839

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Subs = Arc<Mutex<HashMap<Vec<u8>, Vec<mpsc::UnboundedSender<Bytes>>>>>;

fn frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let mut len = 0usize;
    for i in 1..5 {
        let b = *buf.get(i)?;
        len |= ((b & 0x7f) as usize) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return (buf.len() >= i + 1 + len).then_some((buf[0], i + 1, len));
        }
    }
    None
}

async fn client(stream: TcpStream, subs: Subs) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let mut out = BytesMut::new();
        while let Some(chunk) = rx.recv().await {
            out.extend_from_slice(&chunk);
            while let Ok(more) = rx.try_recv() {
                out.extend_from_slice(&more);
            }
            if wr.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    });
    let mut buf = BytesMut::with_capacity(256 * 1024);
    // Cache of the subscriber list for the topic last published to.
    let mut cached: Option<(Vec<u8>, Vec<mpsc::UnboundedSender<Bytes>>)> = None;
    loop {
        buf.reserve(256 * 1024);
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut frozen = buf.split().freeze();
        // Forward runs of PUBLISH packets to the same topic as one chunk.
        let mut run_start = 0;
        let mut run_topic: Option<Vec<u8>> = None;
        let mut at = 0;
        let flush =
            |topic: &Option<Vec<u8>>,
             chunk: Bytes,
             cached: &mut Option<(Vec<u8>, Vec<mpsc::UnboundedSender<Bytes>>)>| {
                let Some(topic) = topic else { return };
                if cached.as_ref().map(|c| &c.0) != Some(topic) {
                    let list = subs.lock().unwrap().get(topic).cloned().unwrap_or_default();
                    *cached = Some((topic.clone(), list));
                }
                for s in &cached.as_ref().unwrap().1 {
                    let _ = s.send(chunk.clone());
                }
            };
        while let Some((first, hlen, rlen)) = frame(&frozen[at..]) {
            let body = &frozen[at + hlen..at + hlen + rlen];
            match first >> 4 {
                3 => {
                    let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let topic = &body[2..2 + tlen];
                    if run_topic.as_deref() != Some(topic) {
                        flush(&run_topic, frozen.slice(run_start..at), &mut cached);
                        run_topic = Some(topic.to_vec());
                        run_start = at;
                    }
                }
                other => {
                    flush(&run_topic, frozen.slice(run_start..at), &mut cached);
                    run_topic = None;
                    match other {
                        1 => {
                            let _ = tx.send(Bytes::from_static(&[0x20, 2, 0, 0]));
                        }
                        8 => {
                            let tlen = u16::from_be_bytes([body[2], body[3]]) as usize;
                            let filter = body[4..4 + tlen].to_vec();
                            subs.lock()
                                .unwrap()
                                .entry(filter)
                                .or_default()
                                .push(tx.clone());
                            cached = None;
                            let _ = tx.send(Bytes::from(vec![0x90, 3, body[0], body[1], 0]));
                        }
                        12 => {
                            let _ = tx.send(Bytes::from_static(&[0xd0, 0]));
                        }
                        14 => return Ok(()),
                        _ => {}
                    }
                }
            }
            at += hlen + rlen;
            if run_topic.is_none() {
                run_start = at;
            }
        }
        flush(&run_topic, frozen.slice(run_start..at), &mut cached);
        frozen.advance(at);
        buf.extend_from_slice(&frozen);
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18839".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("blast_broker listening on {addr}");
    let subs: Subs = Arc::default();
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(client(stream, subs.clone()));
    }
}
