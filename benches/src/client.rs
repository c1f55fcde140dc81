//! Connection set-up plus the publisher and subscriber event loops.
//!
//! Hot-path rules: one read syscall fills a `BytesMut` with as many packets
//! as are available, all of them are handled, and everything to send back
//! (acks) goes out in one write. Per-subscriber statistics live in the task
//! and are merged at the end; the only shared state touched per batch is a
//! handful of cache-padded atomics.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BufMut, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};

use crate::mqtt::{self, Packet};

/// Payload prefix: publisher id (u32), sequence (u64), send time (u64 ns).
pub const PAYLOAD_HEADER: usize = 20;
const MAX_PACKET: usize = 16 * 1024 * 1024;
/// Publisher stops encoding while this much is still unwritten.
const WBUF_HIGH: usize = 128 * 1024;
/// Time values not yet set.
pub const UNSET: u64 = u64::MAX;

#[repr(align(128))]
#[derive(Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[derive(Default)]
pub struct SubCounters {
    /// Deliveries received (including duplicates).
    pub received: AtomicU64,
    /// Distinct (publisher, sequence) deliveries received.
    pub unique: AtomicU64,
}

#[derive(Default)]
pub struct PubSlot {
    /// Messages handed to the socket (sequence numbers 0..sent).
    pub sent: AtomicU64,
    /// Set while the publisher sleeps on a full window.
    pub waiting: AtomicBool,
    pub notify: Notify,
}

/// State shared by all clients of one run.
pub struct Shared {
    pub epoch: Instant,
    pub start_ns: AtomicU64,
    pub warm_end_ns: AtomicU64,
    pub meas_end_ns: AtomicU64,
    /// progress[cell] = highest sequence seen + 1 for one
    /// (publisher, subscriber) pair; see `Plan::cells`.
    pub progress: Vec<Padded<AtomicU64>>,
    /// For each publisher, the progress cells of its expected subscribers.
    pub pub_cells: Vec<Vec<usize>>,
    pub pubs: Vec<Padded<PubSlot>>,
    pub subs: Vec<Padded<SubCounters>>,
    pub pubs_done: AtomicUsize,
}

impl Shared {
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn instant_at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.epoch + Duration::from_nanos(ns))
    }

    /// Lowest progress over a publisher's expected subscribers: every
    /// subscriber has seen (at least as far as) this sequence.
    #[inline]
    fn min_progress(&self, publisher: usize) -> u64 {
        self.pub_cells[publisher]
            .iter()
            .map(|&c| self.progress[c].load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// MQTT username and password of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

/// Parse a credentials file: one `username password` per line (blank lines
/// and lines starting with `#` are skipped).
pub fn parse_credentials(text: &str) -> Result<Vec<Credential>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(u), Some(p), None) => out.push(Credential {
                username: u.to_string(),
                password: p.to_string(),
            }),
            _ => bail!("credentials line {}: expected `username password`", n + 1),
        }
    }
    Ok(out)
}

pub struct Conn {
    pub stream: TcpStream,
    pub rbuf: BytesMut,
}

async fn read_packet_kind(conn: &mut Conn, want: u8) -> Result<BytesMut> {
    loop {
        if let Some((packet, used)) = mqtt::decode(&conn.rbuf, MAX_PACKET)? {
            let kind = match packet {
                Packet::Connack { .. } => mqtt::CONNACK,
                Packet::Suback { .. } => mqtt::SUBACK,
                Packet::Publish { .. } => mqtt::PUBLISH,
                _ => 0,
            };
            let raw = conn.rbuf.split_to(used);
            if kind == want {
                return Ok(raw);
            }
            continue;
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < 4096 {
            conn.rbuf.reserve(64 * 1024);
        }
        if conn.stream.read_buf(&mut conn.rbuf).await? == 0 {
            bail!("connection closed by broker");
        }
    }
}

/// TCP connect, CONNECT (with optional username/password), wait for a
/// successful CONNACK.
pub async fn connect(
    addr: &str,
    client_id: &str,
    keep_alive: u16,
    clean_session: bool,
    credentials: Option<&Credential>,
) -> Result<Conn> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    stream.set_nodelay(true)?;
    let mut conn = Conn {
        stream,
        rbuf: BytesMut::with_capacity(4096),
    };
    let mut out = BytesMut::with_capacity(64);
    mqtt::encode_connect_auth(
        &mut out,
        client_id,
        keep_alive,
        clean_session,
        credentials.map(|c| (c.username.as_str(), c.password.as_str())),
    );
    conn.stream.write_all(&out).await?;
    let raw = read_packet_kind(&mut conn, mqtt::CONNACK).await?;
    match mqtt::decode(&raw, MAX_PACKET)? {
        Some((Packet::Connack { code: 0, .. }, _)) => Ok(conn),
        Some((Packet::Connack { code, .. }, _)) => bail!("CONNACK refused, code {code}"),
        _ => unreachable!(),
    }
}

/// SUBSCRIBE one filter and wait for the SUBACK; returns the granted QoS.
pub async fn subscribe(conn: &mut Conn, filter: &str, qos: u8) -> Result<u8> {
    let mut out = BytesMut::with_capacity(64);
    mqtt::encode_subscribe(&mut out, 1, &[(filter, qos)]);
    conn.stream.write_all(&out).await?;
    let raw = read_packet_kind(conn, mqtt::SUBACK).await?;
    match mqtt::decode(&raw, MAX_PACKET)? {
        Some((Packet::Suback { codes: [code], .. }, _)) if *code <= 2 => Ok(*code),
        Some((Packet::Suback { codes, .. }, _)) => bail!("SUBACK failure {codes:?}"),
        _ => unreachable!(),
    }
}

/// Best-effort DISCONNECT without waiting on a full socket.
pub fn send_disconnect(stream: &TcpStream) {
    let mut buf = BytesMut::with_capacity(2);
    mqtt::encode_disconnect(&mut buf);
    let _ = stream.try_write(&buf);
}

fn ping_interval(keep_alive: u16) -> tokio::time::Interval {
    let period = Duration::from_millis(if keep_alive > 0 {
        keep_alive as u64 * 500
    } else {
        3_600_000
    });
    let mut iv = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    iv
}

pub fn new_histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns .. 100 s, 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

// ---------------------------------------------------------------- subscriber

pub struct SubConfig {
    pub index: usize,
    /// Publisher indices whose messages this subscriber expects.
    pub expects: Vec<usize>,
    /// Progress cell for each entry of `expects`.
    pub cells: Vec<usize>,
    pub publishers_total: usize,
    pub delay_us: u64,
    pub read_buffer: usize,
    pub keep_alive: u16,
}

pub struct SubStats {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub malformed: u64,
    pub latency: Histogram<u64>,
    pub error: Option<String>,
}

/// Per-publisher receive state of one subscriber.
struct Track {
    /// Highest sequence seen + 1.
    next: u64,
    /// One bit per sequence, to tell duplicates from reordering.
    seen: Vec<u64>,
    cell: usize,
    dirty: bool,
}

enum Seen {
    New,
    Reordered,
    Duplicate,
}

impl Track {
    #[inline]
    fn record(&mut self, seq: u64) -> Seen {
        let word = (seq >> 6) as usize;
        if word >= self.seen.len() {
            let len = (word + 1).max(self.seen.len() * 2).max(1024);
            self.seen.resize(len, 0);
        }
        let bit = 1u64 << (seq & 63);
        if seq >= self.next {
            self.seen[word] |= bit;
            self.next = seq + 1;
            self.dirty = true;
            Seen::New
        } else if self.seen[word] & bit != 0 {
            Seen::Duplicate
        } else {
            self.seen[word] |= bit;
            Seen::Reordered
        }
    }
}

pub async fn run_subscriber(
    cfg: SubConfig,
    shared: Arc<Shared>,
    mut conn: Conn,
    mut stop: oneshot::Receiver<()>,
) -> SubStats {
    let mut stats = SubStats {
        received: 0,
        unique: 0,
        duplicates: 0,
        reordered: 0,
        unexpected: 0,
        malformed: 0,
        latency: new_histogram(),
        error: None,
    };
    let mut tracks: Vec<Option<Track>> = (0..cfg.publishers_total).map(|_| None).collect();
    for (&p, &cell) in cfg.expects.iter().zip(&cfg.cells) {
        tracks[p] = Some(Track {
            next: 0,
            seen: Vec::new(),
            cell,
            dirty: false,
        });
    }
    let counters = &shared.subs[cfg.index];
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut ping = ping_interval(cfg.keep_alive);
    let mut slow_clock: Option<tokio::time::Instant> = None;
    let result: Result<()> = async {
        loop {
            if conn.rbuf.capacity() - conn.rbuf.len() < cfg.read_buffer / 4 {
                conn.rbuf.reserve(cfg.read_buffer);
            }
            tokio::select! {
                biased;
                _ = &mut stop => return Ok(()),
                _ = ping.tick() => {
                    mqtt::encode_pingreq(&mut wbuf);
                    conn.stream.write_all(&wbuf).await?;
                    wbuf.clear();
                    continue;
                }
                r = conn.stream.read_buf(&mut conn.rbuf) => {
                    if r? == 0 {
                        bail!("connection closed by broker");
                    }
                }
            }
            let now = shared.now_ns();
            let warm_end = shared.warm_end_ns.load(Ordering::Relaxed);
            let meas_end = shared.meas_end_ns.load(Ordering::Relaxed);
            let mut consumed = 0;
            let mut batch_msgs = 0u64;
            while let Some((packet, used)) = mqtt::decode(&conn.rbuf[consumed..], MAX_PACKET)? {
                consumed += used;
                match packet {
                    Packet::Publish {
                        qos, pkid, payload, ..
                    } => {
                        match qos {
                            1 => mqtt::encode_puback(&mut wbuf, pkid),
                            2 => mqtt::encode_pubrec(&mut wbuf, pkid),
                            _ => {}
                        }
                        stats.received += 1;
                        batch_msgs += 1;
                        if payload.len() < PAYLOAD_HEADER {
                            stats.malformed += 1;
                            continue;
                        }
                        let publisher = u32::from_be_bytes(payload[0..4].try_into().unwrap());
                        let seq = u64::from_be_bytes(payload[4..12].try_into().unwrap());
                        let sent = u64::from_be_bytes(payload[12..20].try_into().unwrap());
                        let Some(Some(track)) = tracks.get_mut(publisher as usize) else {
                            stats.unexpected += 1;
                            continue;
                        };
                        if seq > u32::MAX as u64 {
                            stats.malformed += 1;
                            continue;
                        }
                        match track.record(seq) {
                            Seen::Duplicate => {
                                stats.duplicates += 1;
                                continue;
                            }
                            Seen::Reordered => stats.reordered += 1,
                            Seen::New => {}
                        }
                        stats.unique += 1;
                        if sent >= warm_end && sent < meas_end {
                            stats
                                .latency
                                .saturating_record(now.saturating_sub(sent).max(1));
                        }
                    }
                    Packet::Pubrel(pkid) => mqtt::encode_pubcomp(&mut wbuf, pkid),
                    _ => {}
                }
            }
            conn.rbuf.advance(consumed);
            counters.received.store(stats.received, Ordering::Relaxed);
            counters.unique.store(stats.unique, Ordering::Relaxed);
            for track in tracks.iter_mut().flatten() {
                if track.dirty {
                    track.dirty = false;
                    shared.progress[track.cell].store(track.next, Ordering::SeqCst);
                }
            }
            // Wake publishers blocked on their window (rarely set).
            for &p in &cfg.expects {
                let slot = &shared.pubs[p];
                if slot.waiting.load(Ordering::SeqCst) {
                    slot.notify.notify_one();
                }
            }
            if !wbuf.is_empty() {
                conn.stream.write_all(&wbuf).await?;
                wbuf.clear();
            }
            if cfg.delay_us > 0 && batch_msgs > 0 {
                // Emulate a consumer that needs `delay_us` per message.
                let now = tokio::time::Instant::now();
                let base = slow_clock.map_or(now, |c| c.max(now));
                let until = base + Duration::from_micros(cfg.delay_us * batch_msgs);
                slow_clock = Some(until);
                tokio::select! {
                    biased;
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
        }
    }
    .await;
    if let Err(e) = result {
        stats.error = Some(format!("subscriber {}: {e:#}", cfg.index));
    }
    send_disconnect(&conn.stream);
    stats
}

// ----------------------------------------------------------------- publisher

#[derive(Clone, Copy)]
pub enum PubMode {
    /// At most `window` messages not yet seen by every expected subscriber.
    Closed { window: u64 },
    /// Fixed schedule: message k is due at start + phase + k * interval.
    Open {
        interval_ns: f64,
        phase_ns: f64,
        /// Busy-wait the last few tens of µs before a deadline (for
        /// low-rate latency runs, where timer slack would dominate).
        spin: bool,
    },
}

pub struct PubConfig {
    pub index: usize,
    pub topic: Vec<u8>,
    pub qos: u8,
    pub payload: usize,
    pub mode: PubMode,
    pub max_inflight: usize,
    pub batch: usize,
    pub keep_alive: u16,
    /// Running alone on its own thread: blocking sleeps are allowed.
    pub dedicated: bool,
}

pub struct PubStats {
    pub sent: u64,
    pub acked: u64,
    pub unacked: u64,
    /// QoS >= 1: from writing a PUBLISH sent in the measured interval to its PUBACK
    /// (QoS 1) or first PUBREC (QoS 2) — the acknowledgement that promises durability.
    pub ack_latency: Histogram<u64>,
    pub error: Option<String>,
}

impl Default for PubStats {
    fn default() -> Self {
        PubStats {
            sent: 0,
            acked: 0,
            unacked: 0,
            ack_latency: new_histogram(),
            error: None,
        }
    }
}

/// Sleep on the OS thread until `deadline` (ns since epoch). Only for
/// publishers that own their thread.
fn precise_sleep_until(shared: &Shared, deadline: u64, spin: bool) {
    const SPIN_NS: u64 = 80_000;
    loop {
        let now = shared.now_ns();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if spin && left <= SPIN_NS {
            std::hint::spin_loop();
            continue;
        }
        let sleep = if spin { left - SPIN_NS } else { left };
        std::thread::sleep(Duration::from_nanos(sleep.max(1_000)));
    }
}

/// Records the ack latency of packet `id` once (a repeated PUBREC finds 0).
fn record_ack(written_at: &mut [u64], id: u16, shared: &Shared, hist: &mut Histogram<u64>) {
    if let Some(at) = written_at.get_mut(id as usize) {
        if *at != 0 {
            let _ = hist.record(shared.now_ns().saturating_sub(*at).max(1));
            *at = 0;
        }
    }
}

pub async fn run_publisher(
    cfg: PubConfig,
    shared: Arc<Shared>,
    mut conn: Conn,
    mut start: watch::Receiver<bool>,
    mut shutdown: oneshot::Receiver<()>,
) -> PubStats {
    let mut stats = PubStats::default();
    let result = publisher_loop(
        &cfg,
        &shared,
        &mut conn,
        &mut start,
        &mut shutdown,
        &mut stats,
    )
    .await;
    if let Err(e) = result {
        stats.error = Some(format!("publisher {}: {e:#}", cfg.index));
    }
    send_disconnect(&conn.stream);
    shared.pubs_done.fetch_add(1, Ordering::SeqCst);
    stats
}

async fn publisher_loop(
    cfg: &PubConfig,
    shared: &Shared,
    conn: &mut Conn,
    start: &mut watch::Receiver<bool>,
    shutdown: &mut oneshot::Receiver<()>,
    stats: &mut PubStats,
) -> Result<()> {
    tokio::select! {
        biased;
        _ = &mut *shutdown => return Ok(()),
        r = start.wait_for(|s| *s) => { r.map_err(|_| anyhow!("start signal dropped"))?; }
    }
    let slot = &shared.pubs[cfg.index];
    let start_ns = shared.start_ns.load(Ordering::SeqCst);
    let meas_end = shared.meas_end_ns.load(Ordering::SeqCst);
    let id = cfg.index as u32;
    let padding = cfg.payload - PAYLOAD_HEADER;
    let mut wbuf = BytesMut::with_capacity(cfg.batch * (cfg.payload + cfg.topic.len() + 8) + 4096);
    // 0 = free, 1 = awaiting PUBACK/PUBREC, 2 = awaiting PUBCOMP.
    let mut inflight = vec![0u8; 65536];
    // When each in-flight PUBLISH was written, if inside the measured interval (0: not
    // measured), for `ack_latency`.
    let mut written_at = vec![0u64; if cfg.qos > 0 { 65536 } else { 0 }];
    let warm_end = shared.warm_end_ns.load(Ordering::SeqCst);
    let mut n_inflight = 0usize;
    let mut next_pkid: u16 = 1;
    let mut seq: u64 = 0;
    let mut generating = true;
    let mut read_ready = false;
    let mut ping = ping_interval(cfg.keep_alive);
    let sched = |k: u64| -> u64 {
        match cfg.mode {
            PubMode::Open {
                interval_ns,
                phase_ns,
                ..
            } => start_ns + (phase_ns + k as f64 * interval_ns) as u64,
            PubMode::Closed { .. } => 0,
        }
    };

    loop {
        // 1. Acks from the broker.
        if cfg.qos > 0 || read_ready {
            read_ready = false;
            for _ in 0..8 {
                if conn.rbuf.capacity() - conn.rbuf.len() < 16 * 1024 {
                    conn.rbuf.reserve(64 * 1024);
                }
                match conn.stream.try_read_buf(&mut conn.rbuf) {
                    Ok(0) => bail!("connection closed by broker"),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
            let mut consumed = 0;
            while let Some((packet, used)) = mqtt::decode(&conn.rbuf[consumed..], MAX_PACKET)? {
                consumed += used;
                match packet {
                    Packet::Puback(id) if inflight[id as usize] == 1 => {
                        record_ack(&mut written_at, id, shared, &mut stats.ack_latency);
                        inflight[id as usize] = 0;
                        n_inflight -= 1;
                        stats.acked += 1;
                    }
                    Packet::Pubrec(id) if inflight[id as usize] != 0 => {
                        record_ack(&mut written_at, id, shared, &mut stats.ack_latency);
                        // PUBREL must be (re)sent even for a repeated PUBREC.
                        inflight[id as usize] = 2;
                        mqtt::encode_pubrel(&mut wbuf, id);
                    }
                    Packet::Pubcomp(id) if inflight[id as usize] == 2 => {
                        inflight[id as usize] = 0;
                        n_inflight -= 1;
                        stats.acked += 1;
                    }
                    _ => {}
                }
            }
            conn.rbuf.advance(consumed);
        }

        // 2. New messages, as far as window / schedule / inflight allow.
        let now = shared.now_ns();
        if generating && now >= meas_end {
            generating = false;
        }
        let mut window_blocked = false;
        let mut inflight_blocked = false;
        let mut next_deadline: Option<u64> = None;
        // Don't queue more than this in our own buffer: the broker's TCP
        // backpressure must hold the publisher back (and count as not sent).
        let wbuf_full = wbuf.len() >= WBUF_HIGH;
        if generating && !wbuf_full {
            let mut allow = cfg.batch as u64;
            match cfg.mode {
                PubMode::Closed { window } => {
                    let outstanding = seq.saturating_sub(shared.min_progress(cfg.index));
                    let room = window.saturating_sub(outstanding);
                    window_blocked = room == 0;
                    allow = allow.min(room);
                }
                PubMode::Open { .. } => {
                    let first = sched(0);
                    let due = if now < first {
                        0
                    } else {
                        // Largest k with sched(k) <= now, plus one.
                        let mut k = seq;
                        while k < seq + allow && sched(k) <= now {
                            k += 1;
                        }
                        k
                    };
                    let behind = due.saturating_sub(seq);
                    if behind < allow {
                        next_deadline = Some(sched(due));
                    }
                    allow = allow.min(behind);
                }
            }
            if cfg.qos > 0 {
                let room = cfg.max_inflight.saturating_sub(n_inflight) as u64;
                if room < allow {
                    inflight_blocked = room == 0;
                    allow = room;
                }
            }
            for _ in 0..allow {
                let pkid = if cfg.qos > 0 {
                    if inflight[next_pkid as usize] != 0 {
                        inflight_blocked = true;
                        break;
                    }
                    let id = next_pkid;
                    inflight[id as usize] = 1;
                    written_at[id as usize] = if now >= warm_end && now < meas_end {
                        now
                    } else {
                        0
                    };
                    n_inflight += 1;
                    next_pkid = if next_pkid == u16::MAX {
                        1
                    } else {
                        next_pkid + 1
                    };
                    id
                } else {
                    0
                };
                let stamp = match cfg.mode {
                    PubMode::Closed { .. } => now,
                    PubMode::Open { .. } => sched(seq),
                };
                mqtt::encode_publish_header(
                    &mut wbuf,
                    &cfg.topic,
                    cfg.qos,
                    false,
                    false,
                    pkid,
                    cfg.payload,
                );
                wbuf.put_u32(id);
                wbuf.put_u64(seq);
                wbuf.put_u64(stamp);
                wbuf.put_bytes(0, padding);
                seq += 1;
            }
            slot.sent.store(seq, Ordering::Relaxed);
            stats.sent = seq;
        }

        // 3. One write for the whole batch.
        while !wbuf.is_empty() {
            match conn.stream.try_write(&wbuf) {
                Ok(n) if n == wbuf.len() => wbuf.clear(),
                Ok(n) => wbuf.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }

        if !generating && wbuf.is_empty() && n_inflight == 0 {
            stats.unacked = 0;
            return Ok(());
        }
        stats.unacked = n_inflight as u64;

        // 4. Wait for whatever unblocks us.
        let write_pending = !wbuf.is_empty();
        let busy = generating && !window_blocked && !inflight_blocked && next_deadline.is_none();
        if busy && !write_pending {
            tokio::task::yield_now().await;
            continue;
        }
        let mut timer: Option<u64> = None;
        if generating {
            if let Some(deadline) = next_deadline.filter(|_| !inflight_blocked) {
                if cfg.dedicated && !write_pending {
                    let spin = matches!(cfg.mode, PubMode::Open { spin: true, .. });
                    if deadline <= now + 2_000_000 {
                        precise_sleep_until(shared, deadline, spin);
                        continue;
                    }
                    timer = Some(deadline - 1_500_000);
                } else {
                    timer = Some(deadline);
                }
            } else {
                timer = Some(meas_end);
            }
        }
        if window_blocked {
            slot.waiting.store(true, Ordering::SeqCst);
            if seq.saturating_sub(shared.min_progress(cfg.index))
                < match cfg.mode {
                    PubMode::Closed { window } => window,
                    PubMode::Open { .. } => u64::MAX,
                }
            {
                slot.waiting.store(false, Ordering::SeqCst);
                continue;
            }
        }
        let sleep_at = shared.instant_at(timer.unwrap_or(meas_end));
        tokio::select! {
            biased;
            _ = &mut *shutdown => {
                slot.waiting.store(false, Ordering::SeqCst);
                return Ok(());
            }
            r = conn.stream.readable() => { r?; read_ready = true; }
            r = conn.stream.writable(), if write_pending => { r?; }
            _ = slot.notify.notified(), if window_blocked => {}
            _ = tokio::time::sleep_until(sleep_at), if timer.is_some() => {}
            _ = ping.tick() => { mqtt::encode_pingreq(&mut wbuf); }
        }
        if window_blocked {
            slot.waiting.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_file() {
        let c = parse_credentials("# users\nu1 aa\n\n  u2\tbb  \n").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            (c[1].username.as_str(), c[1].password.as_str()),
            ("u2", "bb")
        );
        assert!(parse_credentials("u1\n").is_err());
        assert!(parse_credentials("u1 a b\n").is_err());
    }
}
