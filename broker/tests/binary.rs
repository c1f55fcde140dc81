//! The real `rookery` binary as a child process, driven by Mosquitto's command-line
//! clients (`mosquitto_pub` / `mosquitto_sub`, package `mosquitto-clients`): the broker
//! prints its address on stdout, serves both protocol versions, and stops cleanly on
//! SIGTERM. Every child is killed by its PID when the test ends, even on failure.

mod common;

use common::{RawClient, WAIT};
use rookery::codec::ProtocolVersion;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Sends `signal` to a process by PID.
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status();
}

/// A child process whose stdout lines arrive on a channel; killed by PID on drop.
struct Process {
    child: Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    fn spawn(program: &str, args: &[&str]) -> Process {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        let pid = child.id().expect("running child has a pid");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        // Drain stdout for the child's whole life, so it can never block on a full pipe.
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process { child, pid, lines }
    }

    /// The next stdout line for which `select` returns something, within `limit`.
    async fn line<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut select: impl FnMut(&str) -> Option<T>,
    ) -> T {
        common::within_for(limit, what, async {
            loop {
                let Some(line) = self.lines.recv().await else {
                    panic!("stdout closed while waiting for {what}");
                };
                if let Some(value) = select(&line) {
                    return value;
                }
            }
        })
        .await
    }

    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        common::within_for(limit, "the process to exit", self.child.wait())
            .await
            .expect("wait for child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.pid, "-KILL");
        }
    }
}

/// The broker binary on 127.0.0.1:0 with a temporary data directory.
struct Broker {
    process: Process,
    addr: SocketAddr,
    _data: tempfile::TempDir,
}

impl Broker {
    async fn start() -> Broker {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_str().unwrap().to_string();
        let mut process = Process::spawn(
            env!("CARGO_BIN_EXE_rookery"),
            &[
                "--mqtt-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--data-dir",
                &data_dir,
            ],
        );
        let addr = process
            .line("the listening address", Duration::from_secs(10), |line| {
                line.strip_prefix("rookery: MQTT listening on ")
                    .map(|a| a.trim().parse::<SocketAddr>().expect("address"))
            })
            .await;
        assert!(addr.ip().is_loopback());
        Broker {
            process,
            addr,
            _data: data,
        }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }
}

async fn mosquitto_pub(args: &[&str]) {
    let status = common::within(
        "mosquitto_pub",
        Command::new("mosquitto_pub")
            .args(args)
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("mosquitto_pub runs (package mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub {args:?}: {status}");
}

/// Starts `mosquitto_sub -d` and waits until its subscription is acknowledged. `stdbuf`
/// (coreutils) makes its stdout line-buffered, so the debug lines arrive as they happen;
/// it execs mosquitto_sub, so the PID is mosquitto_sub's.
async fn mosquitto_sub(args: &[&str]) -> Process {
    let mut all = vec!["-oL", "mosquitto_sub", "-d"];
    all.extend_from_slice(args);
    let mut sub = Process::spawn("stdbuf", &all);
    sub.line("mosquitto_sub's SUBACK", WAIT, |l| {
        l.contains("received SUBACK").then_some(())
    })
    .await;
    sub
}

/// The next line that is not one of mosquitto's debug lines.
async fn message_line(sub: &mut Process) -> String {
    sub.line("a message", WAIT, |l| {
        let debug = l.starts_with("Client ") || l.starts_with("Subscribed ");
        (!debug).then(|| l.to_string())
    })
    .await
}

#[tokio::test]
async fn the_binary_serves_mosquitto_clients_at_every_qos_in_both_versions() {
    let broker = Broker::start().await;
    let port = broker.port();
    for version in ["mqttv311", "mqttv5"] {
        let mut sub = mosquitto_sub(&[
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            "2",
            "-t",
            "bin/#",
            "-C",
            "3",
            "-W",
            "8",
            "-F",
            "%q %t %p",
        ])
        .await;
        for qos in ["0", "1", "2"] {
            let topic = format!("bin/{version}/q{qos}");
            let payload = format!("hello {qos}");
            mosquitto_pub(&[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-V",
                version,
                "-q",
                qos,
                "-t",
                &topic,
                "-m",
                &payload,
            ])
            .await;
            assert_eq!(
                message_line(&mut sub).await,
                format!("{qos} {topic} {payload}")
            );
        }
        let status = sub.wait_exit(WAIT).await;
        assert!(
            status.success(),
            "mosquitto_sub got its 3 messages: {status}"
        );
    }
    drop(broker);
}

#[tokio::test]
async fn the_binary_keeps_retained_messages_for_mosquitto_sub() {
    let broker = Broker::start().await;
    let port = broker.port();
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-r",
        "-t",
        "bin/ret",
        "-m",
        "kept",
    ])
    .await;
    let output = common::within(
        "mosquitto_sub",
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-t",
                "bin/ret",
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                "3",
            ])
            .args(["-F", "%r %q %t %p"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "1 1 bin/ret kept"
    );
    drop(broker);
}

#[tokio::test]
async fn the_binary_passes_v5_properties_between_mosquitto_clients() {
    let broker = Broker::start().await;
    let port = broker.port();
    let mut sub = mosquitto_sub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        "bin/props",
        "-C",
        "1",
        "-W",
        "5",
        "-F",
        "%P|%C|%R|%D|%p",
    ])
    .await;
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-q",
        "1",
        "-t",
        "bin/props",
        "-m",
        "body",
        "-D",
        "publish",
        "user-property",
        "color",
        "blue",
        "-D",
        "publish",
        "content-type",
        "text/plain",
        "-D",
        "publish",
        "response-topic",
        "bin/replies",
        "-D",
        "publish",
        "correlation-data",
        "c-42",
    ])
    .await;
    assert_eq!(
        message_line(&mut sub).await,
        "color:blue|text/plain|bin/replies|c-42|body"
    );
    drop(broker);
}

#[tokio::test]
async fn the_binary_publishes_the_will_of_a_killed_mosquitto_client() {
    let broker = Broker::start().await;
    let port = broker.port();
    let mut watcher = mosquitto_sub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "bin/will",
        "-C",
        "1",
        "-W",
        "5",
        "-F",
        "%t %p",
    ])
    .await;
    let device = mosquitto_sub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-t",
        "bin/nothing",
        "-k",
        "30",
        "--will-topic",
        "bin/will",
        "--will-payload",
        "device gone",
        "--will-qos",
        "1",
    ])
    .await;
    signal(device.pid, "-KILL");
    assert_eq!(message_line(&mut watcher).await, "bin/will device gone");
    drop(device);
    drop(broker);
}

#[tokio::test]
async fn the_binary_stops_on_sigterm_and_tells_v5_clients_mqtt_3_14() {
    let mut broker = Broker::start().await;
    let mut client = RawClient::connected(broker.addr, ProtocolVersion::V5, "sigterm").await;
    signal(broker.process.pid, "-TERM");
    let packets = client.expect_closed().await;
    assert_eq!(
        common::disconnect_reason(&packets),
        Some(0x8B),
        "{packets:?}"
    );
    let status = broker.process.wait_exit(Duration::from_secs(6)).await;
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // The port is closed.
    assert!(tokio::net::TcpStream::connect(broker.addr).await.is_err());
}
