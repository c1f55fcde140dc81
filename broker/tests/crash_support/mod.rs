//! Harness for the crash tests: the real `rookery` binary as a child process on a data
//! directory that outlives it, killed with SIGKILL (or stopped with SIGTERM) and started
//! again on the same directory; and a raw MQTT client (packets from `rookery::codec`) that
//! keeps its own session state across connections, so that every packet id, every
//! acknowledgement and every redelivery is visible to the test.
//!
//! Everything is bounded: the broker must print its address within [`STARTUP_LIMIT`],
//! every network wait is at most [`WAIT`], and each helper that loops has a deadline. Only
//! the children started here are ever signalled, by their PID.

#![allow(dead_code)] // not every test uses every helper

use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rookery::codec::{
    self, ConnAck, Connect, MqttStr, Packet, Properties, ProtocolVersion, PubResponse, QoS,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long a (re)started broker may take to print its address: this includes recovery.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// Upper bound for any single network wait.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long a client listens to conclude that nothing more arrives.
pub const QUIET: Duration = Duration::from_millis(300);

/// The crash tests run one at a time: each one loads the machine on purpose, and the kill
/// points are only meaningful if the broker is not competing with another test's broker.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}

/// A seeded RNG for the kill points: `CRASH_SEED=<n>` reproduces a run, otherwise the
/// seed comes from the clock. The seed is printed either way.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            (nanos % u128::from(u64::MAX)) as u64
        });
    println!("[{test}] seed {seed} (rerun with CRASH_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Awaits `future` for at most `limit`, failing the test with `what` on timeout.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    future: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------
// The broker process and its data directory
// ---------------------------------------------------------------------------------------

/// A temporary directory with the broker's data directory (`data/`) and, beside it, one
/// log file per broker start (stdout and stderr). On a test failure the directory is kept
/// and the end of the last log is printed.
pub struct Workspace {
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    data: PathBuf,
    starts: usize,
    last_log: Option<PathBuf>,
}

/// How a broker is started: durability mode and extra `ROOKERY_*` variables.
#[derive(Debug, Clone)]
pub struct Settings {
    pub durability: &'static str,
    pub env: Vec<(String, String)>,
    /// A TOML config file's text, passed with `--config` (for what no variable sets,
    /// such as `[[webhooks]]`).
    pub config: Option<String>,
}

impl Settings {
    pub fn durability(durability: &'static str) -> Settings {
        Settings {
            durability,
            env: Vec::new(),
            config: None,
        }
    }

    pub fn with(mut self, key: &str, value: &str) -> Settings {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

impl Workspace {
    pub fn new(name: &str) -> Workspace {
        let dir = tempfile::Builder::new()
            .prefix(&format!("rookery-crash-{name}-"))
            .tempdir()
            .expect("temporary directory");
        let root = dir.path().to_path_buf();
        let data = root.join("data");
        std::fs::create_dir_all(&data).expect("data directory");
        Workspace {
            dir: Some(dir),
            root,
            data,
            starts: 0,
            last_log: None,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Every regular file under the data directory with its size.
    pub fn data_files(&self) -> Vec<(PathBuf, u64)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() => walk(&path, out),
                    Ok(meta) if meta.is_file() => out.push((path, meta.len())),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data, &mut out);
        out.sort();
        out
    }

    /// Starts the broker on this workspace's data directory (the same one every time) and
    /// waits until it prints `rookery: MQTT listening on ADDR`.
    pub async fn start(&mut self, settings: &Settings) -> Broker {
        self.starts += 1;
        let number = self.starts;
        let log = self.root.join(format!("broker-{number}.log"));
        self.last_log = Some(log.clone());
        let log_file = std::fs::File::create(&log).expect("log file");
        let stderr = log_file.try_clone().expect("log file handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rookery"));
        command
            .arg("--mqtt-listen")
            .arg("127.0.0.1:0")
            .arg("--http-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&self.data)
            .env("ROOKERY_STORAGE_DURABILITY", settings.durability)
            .env("ROOKERY_SYS_INTERVAL_SECS", "0")
            // A configured admin token, so that nothing is generated into the data dir.
            .env("ROOKERY_AUTH_ADMIN_TOKEN", "crash-test-admin-token")
            // The floods below must never hit the per-session queue limits: a message
            // dropped by the overflow policy would look like a lost message.
            .env("ROOKERY_MQTT_MAX_QUEUED_MESSAGES", "1000000")
            .env("ROOKERY_MQTT_MAX_QUEUED_BYTES", "1073741824")
            .env(
                "RUST_LOG",
                std::env::var("CRASH_RUST_LOG").unwrap_or_else(|_| "info".to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        for (key, value) in &settings.env {
            command.env(key, value);
        }
        let mut config_path = None;
        if let Some(text) = &settings.config {
            let path = self.root.join(format!("config-{number}.toml"));
            std::fs::write(&path, text).expect("config file");
            command.arg("--config").arg(&path);
            config_path = Some(path);
        }
        let started = Instant::now();
        let mut child = command.spawn().expect("spawn the rookery binary");
        let pid = child.id().expect("a running child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, mut lines) = mpsc::unbounded_channel::<String>();
        // Drains stdout for the broker's whole life (it logs there too), so that it can
        // never block on a full pipe; every line also goes to the log file.
        let mut log_out = log_file;
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = writeln!(log_out, "{line}");
                let _ = tx.send(line);
            }
        });
        let addr = tokio::time::timeout(STARTUP_LIMIT, async {
            while let Some(line) = lines.recv().await {
                if let Some(rest) = line.strip_prefix("rookery: MQTT listening on ") {
                    return rest.trim().parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await;
        let addr = match addr {
            Ok(Some(addr)) => addr,
            Ok(None) => {
                let status = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                panic!(
                    "broker start #{number} on {}: exited ({status:?}) before listening\n{}",
                    self.data.display(),
                    log_head(&log, 15)
                );
            }
            Err(_) => panic!(
                "broker start #{number} on {}: no listening address within {STARTUP_LIMIT:?}\n{}",
                self.data.display(),
                log_tail(&log, 40)
            ),
        };
        assert!(addr.ip().is_loopback(), "broker listens on {addr}");
        let took = started.elapsed();
        println!(
            "  broker #{number} (pid {pid}, durability {}) listening on {addr} after {took:?}",
            settings.durability
        );
        Broker {
            child,
            pid,
            addr,
            log,
            number,
            config_path,
        }
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let kept = dir.keep();
                eprintln!("crash test failed: workspace kept at {}", kept.display());
            }
            if let Some(log) = &self.last_log {
                eprintln!("{}", log_tail(log, 30));
            }
        }
    }
}

/// The first `n` lines of a log file (where a start-up error is).
pub fn log_head(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().take(n).collect();
    format!(
        "--- first lines of {} ---\n{}",
        path.display(),
        lines.join("\n")
    )
}

/// The last `n` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    format!(
        "--- last {} lines of {} ---\n{}",
        lines.len() - start,
        path.display(),
        lines[start..].join("\n")
    )
}

/// A running broker. Dropping it kills the process (SIGKILL) if it still runs.
pub struct Broker {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub log: PathBuf,
    number: usize,
    /// The `--config` file it was started with (rewrite it, then [`Broker::sighup`]).
    pub config_path: Option<PathBuf>,
}

impl Broker {
    /// SIGKILL (`kill -9`), then reaps the process.
    pub async fn kill9(mut self) {
        let started = Instant::now();
        within(WAIT, "the killed broker to be reaped", self.child.kill())
            .await
            .expect("SIGKILL the broker");
        println!(
            "  broker #{} (pid {}) killed with SIGKILL (reaped after {:?})",
            self.number,
            self.pid,
            started.elapsed()
        );
    }

    /// SIGHUP by PID (a configuration reload).
    pub fn sighup(&self) {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &self.pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(sent.success(), "kill -HUP {} failed: {sent}", self.pid);
    }

    /// SIGTERM by PID; returns the exit status, or `Err` if it did not exit within `limit`
    /// (the process is then killed when the `Broker` is dropped).
    pub async fn sigterm(mut self, limit: Duration) -> Result<ExitStatus, String> {
        let started = Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .expect("run kill(1)");
        assert!(sent.success(), "kill -TERM {} failed: {sent}", self.pid);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => {
                println!(
                    "  broker #{} (pid {}) exited after SIGTERM in {:?}: {status}",
                    self.number,
                    self.pid,
                    started.elapsed()
                );
                Ok(status)
            }
            Ok(Err(e)) => Err(format!("waiting for the broker: {e}")),
            Err(_) => Err(format!(
                "broker pid {} still running {limit:?} after SIGTERM\n{}",
                self.pid,
                log_tail(&self.log, 20)
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw MQTT connection
// ---------------------------------------------------------------------------------------

/// How a read ended without a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Closed,
    TimedOut,
    Undecodable(String),
}

/// One TCP connection: packets are encoded into a write buffer and sent with `flush`, so
/// a window of PUBLISH packets goes out in one write.
pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
}

impl Conn {
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Result<Conn, String> {
        let stream = match tokio::time::timeout(WAIT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(format!("TCP connect to {addr}: {e}")),
            Err(_) => return Err(format!("TCP connect to {addr}: timed out")),
        };
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(64 * 1024),
            version,
        })
    }

    pub fn queue(&mut self, packet: &Packet) {
        codec::encode_packet(packet, self.version, &mut self.wbuf).expect("test packet encodes");
    }

    pub async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(WAIT, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Closed),
            Err(_) => Err(End::TimedOut),
        }
    }

    pub async fn send(&mut self, packet: &Packet) -> Result<(), End> {
        self.queue(packet);
        self.flush().await
    }

    /// A packet already received and buffered, without reading the socket.
    pub fn buffered(&mut self) -> Result<Option<Packet>, End> {
        codec::decode_packet(&mut self.rbuf, self.version, usize::MAX)
            .map_err(|e| End::Undecodable(e.to_string()))
    }

    /// The next packet within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Result<Packet, End> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(packet) = self.buffered()? {
                return Ok(packet);
            }
            self.rbuf.reserve(64 * 1024);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await {
                Err(_) => return Err(End::TimedOut),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
                Ok(Ok(_)) => {}
            }
        }
    }
}

pub fn connect_packet(
    version: ProtocolVersion,
    client_id: &str,
    clean_start: bool,
    session_expiry: Option<u32>,
) -> Connect {
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.session_expiry_interval = session_expiry;
    }
    Connect {
        protocol: version,
        clean_start,
        keep_alive: 60,
        client_id: MqttStr::from(client_id),
        will: None,
        username: None,
        password: None,
        properties,
    }
}

pub fn publish_packet(
    topic: &str,
    qos: QoS,
    retain: bool,
    packet_id: u16,
    payload: Bytes,
) -> Packet {
    Packet::Publish(codec::Publish {
        dup: false,
        qos,
        retain,
        topic: MqttStr::from(topic),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        properties: Properties::default(),
        payload,
    })
}

// ---------------------------------------------------------------------------------------
// A client with session state
// ---------------------------------------------------------------------------------------

/// One message as the application saw it (after the client's QoS 2 deduplication).
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub dup: bool,
    pub packet_id: u16,
    /// Which connection of this client (1, 2, ...) it arrived on.
    pub connection: u32,
}

/// An outgoing QoS 1/2 message not yet fully acknowledged.
#[derive(Debug, Clone)]
struct Outgoing {
    seq: u64,
    qos: QoS,
    /// QoS 2: PUBREC received, PUBREL sent.
    released: bool,
}

/// A raw MQTT client that behaves as a correct persistent-session client should:
///
/// - QoS 1: every PUBLISH is delivered to the "application" (recorded) and acknowledged;
/// - QoS 2 (method B, as MQTT 4.3.3 describes the receiver): the packet id is stored
///   *before* the message is delivered, and until the PUBREL arrives a PUBLISH with that
///   packet id is a retransmission (acknowledged again, not delivered again). That store
///   survives reconnects (it is client session state), so a broker that resends an
///   unacknowledged QoS 2 PUBLISH after a restart with its original packet id [MQTT-4.4.0-1]
///   causes no duplicate, while one that resends it with a new packet id, or after the flow
///   was released, does: that is a real duplicate at the application.
/// - PUBREL is always answered with PUBCOMP (0x92 in v5 for an unknown id).
pub struct Client {
    pub id: String,
    pub version: ProtocolVersion,
    pub session_expiry: Option<u32>,
    conn: Option<Conn>,
    connections: u32,
    next_packet_id: u16,
    outgoing: HashMap<u16, Outgoing>,
    awaiting_rel: HashMap<u16, (String, Bytes)>,
    pub received: Vec<Received>,
    /// QoS 2 PUBLISH packets resent with a packet id still awaiting PUBREL (not delivered).
    pub qos2_retransmissions: u64,
    /// Of those, how many came without DUP = 1 [MQTT-3.3.1-1] (reported, not asserted).
    pub retransmissions_without_dup: u64,
    /// PUBREL for a packet id this client did not have (answered, harmless).
    pub unknown_pubrel: u64,
    /// QoS 2 PUBLISH packets dropped because their packet id was still awaiting PUBREL
    /// for another message (as a correct client must); also listed in `errors`.
    pub dropped_reused: u64,
    /// Protocol problems seen from the broker; any entry fails the test.
    pub errors: Vec<String>,
    /// Wait this long before acknowledging each PUBLISH (a slow consumer).
    pub ack_delay: Option<Duration>,
    /// The broker's Receive Maximum (v5 CONNACK); our publishing windows stay within it.
    pub receive_maximum: Option<u16>,
}

/// What ended a long-running client loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The connection closed (the broker was killed or stopped).
    Closed,
    /// Nothing arrived for the quiet period.
    Quiet,
    /// The deadline passed.
    Deadline,
    /// The broker sent DISCONNECT with this reason code.
    Disconnected(u8),
    Undecodable(String),
}

impl Client {
    pub fn new(id: &str, version: ProtocolVersion, session_expiry: Option<u32>) -> Client {
        Client {
            id: id.to_string(),
            version,
            session_expiry,
            conn: None,
            connections: 0,
            next_packet_id: 1,
            outgoing: HashMap::new(),
            awaiting_rel: HashMap::new(),
            received: Vec::new(),
            qos2_retransmissions: 0,
            retransmissions_without_dup: 0,
            unknown_pubrel: 0,
            dropped_reused: 0,
            errors: Vec::new(),
            ack_delay: None,
            receive_maximum: None,
        }
    }

    /// Connects; returns Session Present, or an error if the broker refused or closed.
    pub async fn connect(&mut self, addr: SocketAddr, clean_start: bool) -> Result<bool, String> {
        let mut conn = Conn::open(addr, self.version).await?;
        let connect = connect_packet(self.version, &self.id, clean_start, self.session_expiry);
        conn.send(&Packet::Connect(Box::new(connect)))
            .await
            .map_err(|e| format!("{}: sending CONNECT: {e:?}", self.id))?;
        let connack: ConnAck = match conn.recv_within(WAIT).await {
            Ok(Packet::ConnAck(connack)) => connack,
            other => return Err(format!("{}: expected CONNACK, got {other:?}", self.id)),
        };
        if connack.reason_code != 0 {
            return Err(format!("{}: CONNACK refused: {connack:?}", self.id));
        }
        if clean_start {
            // The session (and with it our half of the QoS 2 state) starts afresh.
            self.awaiting_rel.clear();
        }
        self.outgoing.clear();
        self.receive_maximum = connack.properties.receive_maximum;
        self.connections += 1;
        self.conn = Some(conn);
        Ok(connack.session_present)
    }

    /// Connects and panics unless it works and Session Present is as expected.
    pub async fn connect_expecting(&mut self, addr: SocketAddr, clean_start: bool, present: bool) {
        let got = match self.connect(addr, clean_start).await {
            Ok(got) => got,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            got,
            present,
            "{} ({:?}, clean start {clean_start}): CONNACK Session Present is {got}, expected \
             {present}{}",
            self.id,
            self.version,
            if present {
                " — the persistent session did not survive the restart"
            } else {
                ""
            }
        );
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("client is connected")
    }

    /// How many connections this client has made (the current one's number).
    pub fn connections(&self) -> u32 {
        self.connections
    }

    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// `wanted` messages in flight, or fewer if the broker's Receive Maximum says so.
    fn window(&self, wanted: usize) -> usize {
        wanted
            .min(self.receive_maximum.map_or(usize::MAX, usize::from))
            .max(1)
    }

    fn allocate_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.outgoing.contains_key(&id) {
                return id;
            }
        }
    }

    /// SUBSCRIBE to several filters at once; returns the reason codes.
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<u8> {
        let packet_id = self.allocate_packet_id();
        let packet = Packet::Subscribe(codec::Subscribe {
            packet_id,
            filters: filters
                .iter()
                .map(|(f, qos)| {
                    (
                        MqttStr::from(*f),
                        codec::SubscriptionOptions {
                            qos: *qos,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            properties: Properties::default(),
        });
        if let Err(e) = self.conn().send(&packet).await {
            panic!("{}: sending SUBSCRIBE: {e:?}", self.id);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.conn().recv_within(left).await {
                Ok(Packet::SubAck(ack)) if ack.packet_id == packet_id => return ack.reason_codes,
                Ok(other) => {
                    if let Some(unhandled) = self.handle(other).await {
                        self.errors
                            .push(format!("unexpected {unhandled:?} before SUBACK"));
                    }
                }
                Err(e) => panic!("{}: no SUBACK: {e:?}", self.id),
            }
        }
    }

    /// Subscribes and asserts the granted QoS of each filter.
    pub async fn subscribe_granted(&mut self, filters: &[(&str, QoS)]) {
        let codes = self.subscribe(filters).await;
        let expected: Vec<u8> = filters.iter().map(|(_, q)| *q as u8).collect();
        assert_eq!(codes, expected, "{}: SUBACK for {filters:?}", self.id);
    }

    /// A normal DISCONNECT, then waits (bounded) for the broker to close the socket, so
    /// that the session is offline when this returns.
    pub async fn disconnect(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let packet = Packet::Disconnect(codec::Disconnect::default());
        if conn.send(&packet).await.is_ok() {
            let deadline = Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match conn.recv_within(left).await {
                    Err(End::Closed) => break,
                    Err(e) => {
                        self.errors
                            .push(format!("connection not closed after DISCONNECT: {e:?}"));
                        break;
                    }
                    // The broker may have sent something before it read our DISCONNECT:
                    // it is neither delivered nor acknowledged (the session keeps it).
                    Ok(_) => {}
                }
            }
        }
    }

    /// Drops the connection without DISCONNECT.
    pub fn drop_connection(&mut self) {
        self.conn = None;
    }

    /// Handles a packet from the broker as the client side of a session; returns the
    /// packets that are not part of that (acknowledgements of our own publishes, ...).
    async fn handle(&mut self, packet: Packet) -> Option<Packet> {
        match packet {
            Packet::Publish(publish) => {
                let topic = publish.topic.as_str().to_string();
                let delivered = Received {
                    topic: topic.clone(),
                    payload: publish.payload.clone(),
                    qos: publish.qos,
                    retain: publish.retain,
                    dup: publish.dup,
                    packet_id: publish.packet_id,
                    connection: self.connections,
                };
                let ack = match publish.qos {
                    QoS::AtMostOnce => {
                        self.received.push(delivered);
                        None
                    }
                    QoS::AtLeastOnce => {
                        self.received.push(delivered);
                        Some(Packet::PubAck(PubResponse::new(publish.packet_id, 0)))
                    }
                    QoS::ExactlyOnce => {
                        match self.awaiting_rel.get(&publish.packet_id) {
                            Some((t, p)) if *t == topic && *p == publish.payload => {
                                self.qos2_retransmissions += 1;
                                if !publish.dup {
                                    self.retransmissions_without_dup += 1;
                                }
                            }
                            Some((t, p)) => {
                                self.dropped_reused += 1;
                                self.errors.push(format!(
                                    "QoS 2 packet id {} reused for {topic} {:?} while still \
                                     awaiting PUBREL for {t} {:?} (a real client drops it)",
                                    publish.packet_id,
                                    short(&publish.payload),
                                    short(p)
                                ));
                            }
                            None => {
                                self.awaiting_rel
                                    .insert(publish.packet_id, (topic, publish.payload.clone()));
                                self.received.push(delivered);
                            }
                        }
                        Some(Packet::PubRec(PubResponse::new(publish.packet_id, 0)))
                    }
                };
                if let Some(ack) = ack {
                    if let Some(delay) = self.ack_delay {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = self.conn().send(&ack).await;
                }
                None
            }
            Packet::PubRel(rel) => {
                let code = if self.awaiting_rel.remove(&rel.packet_id).is_some() {
                    0
                } else {
                    self.unknown_pubrel += 1;
                    if self.version.is_v5() {
                        codec::reason::PACKET_IDENTIFIER_NOT_FOUND
                    } else {
                        0
                    }
                };
                let _ = self
                    .conn()
                    .send(&Packet::PubComp(PubResponse::new(rel.packet_id, code)))
                    .await;
                None
            }
            Packet::PingResp => None,
            other => Some(other),
        }
    }

    /// Reads and handles packets until the connection closes, nothing arrives for
    /// `quiet`, or `limit` passes. Once `done` holds, the quiet period shortens to
    /// [`QUIET`] (to catch late duplicates without waiting for the full period).
    pub async fn run(
        &mut self,
        quiet: Duration,
        limit: Duration,
        mut done: impl FnMut(&Client) -> bool,
    ) -> Ending {
        let deadline = Instant::now() + limit;
        let mut finished = done(self);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ending::Deadline;
            }
            let period = if finished { QUIET.min(quiet) } else { quiet };
            let wait = period.min(deadline - now);
            let Some(conn) = self.conn.as_mut() else {
                return Ending::Closed;
            };
            match conn.recv_within(wait).await {
                Ok(Packet::Disconnect(d)) => {
                    self.conn = None;
                    return Ending::Disconnected(d.reason_code);
                }
                Ok(packet) => {
                    if let Some(other) = self.handle(packet).await {
                        self.errors.push(format!("unexpected packet {other:?}"));
                    }
                    if !finished {
                        finished = done(self);
                    }
                }
                Err(End::TimedOut) => {
                    if Instant::now() >= deadline {
                        return Ending::Deadline;
                    }
                    return Ending::Quiet;
                }
                Err(End::Closed) => {
                    self.conn = None;
                    return Ending::Closed;
                }
                Err(End::Undecodable(e)) => {
                    self.conn = None;
                    return Ending::Undecodable(e);
                }
            }
        }
    }

    /// Publishes every message and waits until each one is acknowledged (PUBACK, or
    /// PUBREC then PUBCOMP), keeping up to `window` in flight. Fails on a refusal.
    pub async fn publish_all(&mut self, messages: &[Msg], window: usize) -> Result<(), String> {
        let window = self.window(window);
        let mut next = 0;
        let deadline = Instant::now() + WAIT + Duration::from_millis(10 * messages.len() as u64);
        loop {
            while self.outgoing.len() < window && next < messages.len() {
                let msg = &messages[next];
                let packet_id = self.allocate_packet_id();
                let packet = publish_packet(
                    &msg.topic,
                    msg.qos,
                    msg.retain,
                    packet_id,
                    msg.payload.clone(),
                );
                self.conn().queue(&packet);
                if msg.qos != QoS::AtMostOnce {
                    self.outgoing.insert(
                        packet_id,
                        Outgoing {
                            seq: next as u64,
                            qos: msg.qos,
                            released: false,
                        },
                    );
                }
                next += 1;
            }
            self.conn()
                .flush()
                .await
                .map_err(|e| format!("{}: write failed: {e:?}", self.id))?;
            if self.outgoing.is_empty() && next == messages.len() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let packet = self
                .conn()
                .recv_within(left)
                .await
                .map_err(|e| format!("{}: waiting for acknowledgements: {e:?}", self.id))?;
            let Some(packet) = self.handle(packet).await else {
                continue;
            };
            match self.on_ack(packet) {
                Ok(AckEvent::Refused { seq, code }) => {
                    return Err(format!(
                        "{}: {} refused with reason code {code:#04x}",
                        self.id, messages[seq as usize].topic
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies PUBACK / PUBREC / PUBCOMP to the outgoing window.
    fn on_ack(&mut self, packet: Packet) -> Result<AckEvent, String> {
        match packet {
            Packet::PubAck(ack) => match self.outgoing.remove(&ack.packet_id) {
                Some(out) if out.qos == QoS::AtLeastOnce => Ok(if ack.reason_code < 0x80 {
                    AckEvent::Acked {
                        seq: out.seq,
                        qos: out.qos,
                    }
                } else {
                    AckEvent::Refused {
                        seq: out.seq,
                        code: ack.reason_code,
                    }
                }),
                other => Err(format!("{}: PUBACK {ack:?} for {other:?}", self.id)),
            },
            Packet::PubRec(rec) => match self.outgoing.get_mut(&rec.packet_id) {
                Some(out) if out.qos == QoS::ExactlyOnce && !out.released => {
                    let seq = out.seq;
                    if rec.reason_code < 0x80 {
                        out.released = true;
                        self.conn()
                            .queue(&Packet::PubRel(PubResponse::new(rec.packet_id, 0)));
                        Ok(AckEvent::Acked {
                            seq,
                            qos: QoS::ExactlyOnce,
                        })
                    } else {
                        self.outgoing.remove(&rec.packet_id);
                        Ok(AckEvent::Refused {
                            seq,
                            code: rec.reason_code,
                        })
                    }
                }
                other => Err(format!("{}: PUBREC {rec:?} for {other:?}", self.id)),
            },
            Packet::PubComp(comp) => match self.outgoing.remove(&comp.packet_id) {
                Some(out) if out.released => Ok(AckEvent::Completed),
                other => Err(format!("{}: PUBCOMP {comp:?} for {other:?}", self.id)),
            },
            Packet::Disconnect(d) => Err(format!("{}: DISCONNECT from the broker: {d:?}", self.id)),
            other => Err(format!("{}: unexpected {other:?}", self.id)),
        }
    }

    /// The flood of the crash tests: QoS 1 and QoS 2 messages (see [`Flood`]) as fast as
    /// the acknowledgements allow, `window` in flight, until the connection ends (the
    /// broker is killed), `flood.max_messages` have been sent and acknowledged, or
    /// `flood.max_duration` passes (no new messages after that).
    ///
    /// `near_end` is told when 90% of `max_messages` have been sent, so that the caller can
    /// kill the broker while the flood is still running even if the broker is fast.
    pub async fn flood(
        &mut self,
        flood: &Flood,
        mut near_end: Option<tokio::sync::oneshot::Sender<()>>,
    ) -> FloodLog {
        let mut log = FloodLog::default();
        let started = Instant::now();
        let mut seq = flood.first_seq;
        let end_seq = flood.first_seq + flood.max_messages;
        let window = self.window(flood.window);
        let ending = loop {
            let sending = started.elapsed() < flood.max_duration;
            while sending && self.outgoing.len() < window && seq < end_seq {
                let qos = flood.qos_of(seq);
                let packet_id = self.allocate_packet_id();
                let packet = publish_packet(
                    &flood.topic(qos),
                    qos,
                    false,
                    packet_id,
                    seq_payload(seq, qos),
                );
                self.conn().queue(&packet);
                self.outgoing.insert(
                    packet_id,
                    Outgoing {
                        seq,
                        qos,
                        released: false,
                    },
                );
                log.sent += 1;
                seq += 1;
                if log.sent >= flood.max_messages * 9 / 10 {
                    if let Some(tx) = near_end.take() {
                        let _ = tx.send(());
                    }
                }
            }
            if let Err(e) = self.conn().flush().await {
                break format!("write failed ({e:?})");
            }
            if self.outgoing.is_empty() {
                break if seq >= end_seq {
                    "all messages sent and acknowledged".to_string()
                } else {
                    "time limit reached".to_string()
                };
            }
            let packet = match self.conn().recv_within(WAIT).await {
                Ok(packet) => packet,
                Err(End::Closed) => break "connection closed".to_string(),
                Err(e) => break format!("no acknowledgement ({e:?})"),
            };
            let mut batch = vec![packet];
            // Everything else already received, before writing again.
            while let Ok(Some(packet)) = self.conn().buffered() {
                batch.push(packet);
            }
            for packet in batch {
                let Some(packet) = self.handle(packet).await else {
                    continue;
                };
                match self.on_ack(packet) {
                    Ok(AckEvent::Acked {
                        seq,
                        qos: QoS::AtLeastOnce,
                    }) => {
                        log.acked_q1.insert(seq);
                    }
                    Ok(AckEvent::Acked { seq, .. }) => {
                        log.acked_q2.insert(seq);
                    }
                    Ok(AckEvent::Refused { seq, code }) => log.refused.push((seq, code)),
                    Ok(AckEvent::Completed) => log.completed_q2 += 1,
                    Err(e) => log.errors.push(e),
                }
            }
        };
        log.in_flight_at_end = self.outgoing.len();
        log.ending = ending;
        log.next_seq = seq;
        log.duration = started.elapsed();
        self.conn = None;
        log
    }
}

enum AckEvent {
    Acked { seq: u64, qos: QoS },
    Refused { seq: u64, code: u8 },
    Completed,
}

/// A message for [`Client::publish_all`].
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

impl Msg {
    pub fn new(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Msg {
        Msg {
            topic: topic.to_string(),
            payload: Bytes::copy_from_slice(payload),
            qos,
            retain,
        }
    }
}

/// Parameters of [`Client::flood`].
#[derive(Debug, Clone)]
pub struct Flood {
    /// Messages go to `{topic_prefix}/q1` and `{topic_prefix}/q2`.
    pub topic_prefix: String,
    pub first_seq: u64,
    pub max_messages: u64,
    pub max_duration: Duration,
    pub window: usize,
    /// `None`: alternate QoS 1 (even sequence numbers) and QoS 2 (odd).
    pub only: Option<QoS>,
}

impl Flood {
    pub fn qos_of(&self, seq: u64) -> QoS {
        match self.only {
            Some(qos) => qos,
            None if seq.is_multiple_of(2) => QoS::AtLeastOnce,
            None => QoS::ExactlyOnce,
        }
    }

    pub fn topic(&self, qos: QoS) -> String {
        format!("{}/q{}", self.topic_prefix, qos as u8)
    }
}

/// What the flooding publisher saw.
#[derive(Debug, Default)]
pub struct FloodLog {
    pub sent: u64,
    /// Sequence numbers acknowledged with PUBACK (QoS 1) / PUBREC (QoS 2), reason < 0x80.
    pub acked_q1: BTreeSet<u64>,
    pub acked_q2: BTreeSet<u64>,
    pub completed_q2: u64,
    pub refused: Vec<(u64, u8)>,
    pub errors: Vec<String>,
    pub in_flight_at_end: usize,
    pub next_seq: u64,
    pub ending: String,
    pub duration: Duration,
}

impl FloodLog {
    pub fn summary(&self) -> String {
        format!(
            "sent {} in {:?}, acknowledged {} QoS 1 + {} QoS 2 ({} PUBCOMP), refused {}, \
             {} in flight at the end ({})",
            self.sent,
            self.duration,
            self.acked_q1.len(),
            self.acked_q2.len(),
            self.completed_q2,
            self.refused.len(),
            self.in_flight_at_end,
            self.ending
        )
    }
}

/// The payload of a flood message: sequence number (8 bytes BE), QoS byte, padding.
pub fn seq_payload(seq: u64, qos: QoS) -> Bytes {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.push(qos as u8);
    payload.extend_from_slice(&[b'.'; 55]);
    Bytes::from(payload)
}

pub fn parse_seq_payload(payload: &[u8]) -> Option<(u64, u8)> {
    if payload.len() != 64 {
        return None;
    }
    let seq = u64::from_be_bytes(payload[..8].try_into().ok()?);
    Some((seq, payload[8]))
}

fn short(payload: &[u8]) -> String {
    match parse_seq_payload(payload) {
        Some((seq, qos)) => format!("seq {seq} (QoS {qos})"),
        None => format!(
            "{:?}",
            String::from_utf8_lossy(&payload[..payload.len().min(40)])
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Checking deliveries against acknowledgements
// ---------------------------------------------------------------------------------------

/// Everything acknowledged to the publisher so far (across kill cycles).
#[derive(Debug, Default, Clone)]
pub struct Acked {
    pub q1: BTreeSet<u64>,
    pub q2: BTreeSet<u64>,
}

impl Acked {
    pub fn add(&mut self, log: &FloodLog) {
        self.q1.extend(log.acked_q1.iter().copied());
        self.q2.extend(log.acked_q2.iter().copied());
    }

    pub fn len(&self) -> usize {
        self.q1.len() + self.q2.len()
    }
}

/// Counts of one subscriber's deliveries of flood messages under `topic_prefix`.
#[derive(Debug, Default)]
pub struct Tally {
    pub deliveries: usize,
    pub unique: usize,
    /// Sequence number → (how many times the application saw it, published QoS).
    pub counts: BTreeMap<u64, (u32, u8)>,
    pub qos1_duplicates: usize,
    pub qos2_duplicates: Vec<(u64, u32)>,
    pub qos_mismatches: Vec<String>,
    pub redelivered_with_dup: usize,
}

pub fn tally(client: &Client, topic_prefix: &str) -> Tally {
    let mut t = Tally::default();
    let prefix = format!("{topic_prefix}/");
    for r in client
        .received
        .iter()
        .filter(|r| r.topic.starts_with(&prefix))
    {
        let Some((seq, qos)) = parse_seq_payload(&r.payload) else {
            t.qos_mismatches.push(format!(
                "undecodable payload on {}: {:?}",
                r.topic,
                short(&r.payload)
            ));
            continue;
        };
        if r.qos as u8 != qos {
            t.qos_mismatches.push(format!(
                "seq {seq} published at QoS {qos} delivered at QoS {} (subscribed at QoS 2)",
                r.qos as u8
            ));
        }
        if r.dup {
            t.redelivered_with_dup += 1;
        }
        t.deliveries += 1;
        t.counts.entry(seq).or_insert((0, qos)).0 += 1;
    }
    t.unique = t.counts.len();
    for (&seq, &(n, qos)) in &t.counts {
        if n > 1 {
            if qos == 2 {
                t.qos2_duplicates.push((seq, n));
            } else {
                t.qos1_duplicates += 1;
            }
        }
    }
    t
}

/// Checks one subscriber against everything acknowledged; returns the problems (empty if
/// none) and prints the counts.
pub fn check_subscriber(
    label: &str,
    client: &Client,
    acked: &Acked,
    topic_prefix: &str,
    qos2_rule: &str,
) -> Vec<String> {
    let t = tally(client, topic_prefix);
    let missing_q1: Vec<u64> = acked
        .q1
        .iter()
        .filter(|s| !t.counts.contains_key(s))
        .copied()
        .collect();
    let missing_q2: Vec<u64> = acked
        .q2
        .iter()
        .filter(|s| !t.counts.contains_key(s))
        .copied()
        .collect();
    let unacked_delivered = t
        .counts
        .keys()
        .filter(|s| !acked.q1.contains(s) && !acked.q2.contains(s))
        .count();
    println!(
        "    {label}: {} deliveries, {} distinct; acknowledged-and-missing: {} QoS 1, {} QoS 2; \
         QoS 1 duplicates {}, QoS 2 duplicates {}; DUP-flagged deliveries {}; QoS 2 \
         retransmissions absorbed {} ({} without DUP=1); delivered but never acknowledged {}; \
         connections {}",
        t.deliveries,
        t.unique,
        missing_q1.len(),
        missing_q2.len(),
        t.qos1_duplicates,
        t.qos2_duplicates.len(),
        t.redelivered_with_dup,
        client.qos2_retransmissions,
        client.retransmissions_without_dup,
        unacked_delivered,
        client.connections,
    );
    let mut problems = Vec::new();
    if !missing_q1.is_empty() {
        problems.push(format!(
            "{label}: {} of {} acknowledged QoS 1 messages never delivered (first: {:?})",
            missing_q1.len(),
            acked.q1.len(),
            &missing_q1[..missing_q1.len().min(10)]
        ));
    }
    if !missing_q2.is_empty() {
        let reused = if client.dropped_reused > 0 {
            format!(
                "; {} QoS 2 PUBLISH packets were dropped because the broker reused a packet id \
                 still awaiting PUBREL",
                client.dropped_reused
            )
        } else {
            String::new()
        };
        problems.push(format!(
            "{label}: {} of {} acknowledged QoS 2 messages never delivered (first: {:?}){reused}",
            missing_q2.len(),
            acked.q2.len(),
            &missing_q2[..missing_q2.len().min(10)]
        ));
    }
    if !t.qos2_duplicates.is_empty() {
        // How the first few duplicates arrived: (connection, packet id, DUP flag).
        let details: Vec<String> = t
            .qos2_duplicates
            .iter()
            .take(3)
            .map(|(seq, _)| {
                let arrivals: Vec<String> = client
                    .received
                    .iter()
                    .filter(|r| {
                        r.topic.starts_with(topic_prefix)
                            && parse_seq_payload(&r.payload).map(|(s, _)| s) == Some(*seq)
                    })
                    .map(|r| {
                        format!(
                            "connection {} packet id {} DUP {}",
                            r.connection, r.packet_id, r.dup as u8
                        )
                    })
                    .collect();
                format!("seq {seq}: {}", arrivals.join(", "))
            })
            .collect();
        problems.push(format!(
            "{label}: {qos2_rule}: {} QoS 2 messages delivered more than once to the \
             application (seq, times; first: {:?}); {}",
            t.qos2_duplicates.len(),
            &t.qos2_duplicates[..t.qos2_duplicates.len().min(10)],
            details.join("; ")
        ));
    }
    if !t.qos_mismatches.is_empty() {
        problems.push(format!(
            "{label}: {} deliveries with the wrong QoS or payload (first: {:?})",
            t.qos_mismatches.len(),
            &t.qos_mismatches[..t.qos_mismatches.len().min(5)]
        ));
    }
    if !client.errors.is_empty() {
        problems.push(format!(
            "{label}: protocol problems: {:?}",
            &client.errors[..client.errors.len().min(5)]
        ));
    }
    problems
}

/// A `done` condition for [`Client::run`]: true once the client has received every
/// sequence number in `acked` (it looks only at deliveries it has not seen yet).
pub fn received_all(acked: &Acked, topic_prefix: &str) -> impl FnMut(&Client) -> bool {
    let mut missing: HashSet<u64> = acked.q1.iter().chain(acked.q2.iter()).copied().collect();
    let prefix = format!("{topic_prefix}/");
    let mut seen = 0;
    move |client: &Client| {
        for r in &client.received[seen..] {
            if r.topic.starts_with(&prefix) {
                if let Some((seq, _)) = parse_seq_payload(&r.payload) {
                    missing.remove(&seq);
                }
            }
        }
        seen = client.received.len();
        missing.is_empty()
    }
}
