#!/usr/bin/env python3
"""What does a broker lose when it is killed with SIGKILL (kill -9)?

For each broker configuration (Rookery with durability strict, Rookery
batched, Mosquitto with persistence) and each repetition:

1. start the broker on a free loopback port with a fresh data directory;
2. connect a persistent subscriber (MQTT 3.1.1, clean session off, fixed
   client id), subscribe QoS 1 to one topic, disconnect: it is now offline
   and the broker must queue for it;
3. one paho publisher sends QoS 1 messages (8-byte sequence number first in
   the payload) as fast as it can, at most --inflight unacknowledged, and
   records which sequence numbers got a PUBACK;
4. --kill-after seconds after the first publish (plus a uniform random
   0..--kill-jitter), the broker is sent SIGKILL by its PID;
5. the broker is restarted on the same data directory (new port);
6. the subscriber reconnects with the same client id and clean session off
   and collects messages until --idle seconds pass with nothing new.

Reported per run: sent, acknowledged (PUBACK received before the kill),
delivered after restart (distinct), **acknowledged but lost** (acked and
never delivered: the durability figure; a broker that PUBACKs only after
fsync must show 0), delivered without ack (stored but the PUBACK did not
reach the publisher before the kill: allowed), duplicates, whether the broker
still had the session, and the restart time. The Markdown table shows the
median (min-max) over the repetitions.

    python3 benches/persistence_loss.py                       # 3 reps of each broker
    python3 benches/persistence_loss.py --reps 1 --brokers rookery-strict
    python3 benches/persistence_loss.py --kill-after 8 --autosave-interval 5

Everything is bounded in time, on loopback, and every broker started here is
killed at the end (try/finally). Python 3.11, standard library + paho-mqtt 2.x.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import free_port, tail  # noqa: E402

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
except ImportError:  # pragma: no cover
    print("error: paho-mqtt is missing: pip install paho-mqtt==2.1.0", file=sys.stderr)
    raise SystemExit(2)

REPO = Path(__file__).resolve().parent.parent
BROKERS = ("rookery-strict", "rookery-batched", "mosquitto")
SEQ = struct.Struct("!Q")


# --------------------------------------------------------------------------- brokers


def target_dir() -> Path:
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        p = Path(env)
        return p if p.is_absolute() else REPO / p
    return REPO / "target"


def read_status_kb(pid: int, key: str) -> int | None:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def dir_size(path: Path) -> int:
    """Bytes allocated on disk under path (st_blocks, like `du`)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


class Broker:
    """One broker process on a persistent data directory.

    kind: "rookery" or "mosquitto". `start()` may be called again after
    `kill9()` or `stop()`: it reuses the data directory (and a new port)."""

    def __init__(self, kind: str, workdir: Path, *, rookery: str = "", mosquitto: str = "",
                 env: dict[str, str] | None = None, mosquitto_conf: list[str] | None = None,
                 start_timeout: float = 60.0):
        self.kind = kind
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.rookery = rookery
        self.mosquitto = mosquitto
        self.env = env or {}
        self.mosquitto_conf = mosquitto_conf or []
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0
        self.log = workdir / "broker.log"
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start the broker; return seconds from spawn to ready (Rookery: its
        `MQTT listening` line on stdout; Mosquitto: first accepted TCP
        connection, polled every 5 ms)."""
        self.starts += 1
        self.port = free_port()
        env = dict(os.environ)
        env.update(self.env)
        with open(self.log, "a") as lf:
            lf.write(f"----- start #{self.starts} on port {self.port} at {time.strftime('%H:%M:%S')}\n")
        if self.kind == "rookery":
            cmd = [self.rookery,
                   "--mqtt-listen", f"127.0.0.1:{self.port}",
                   "--http-listen", f"127.0.0.1:{free_port()}",
                   "--data-dir", str(self.data)]
            env.setdefault("RUST_LOG", "warn")
            ready = threading.Event()
            t0 = time.monotonic()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
            t_ready = [0.0]

            def pump(proc=self.proc):
                # Copies the broker's output (its log goes to stdout) to the log file.
                with open(self.log, "ab") as lf:
                    for line in proc.stdout:
                        if not ready.is_set() and b"MQTT listening on" in line:
                            t_ready[0] = time.monotonic()
                            ready.set()
                        lf.write(line)
                        lf.flush()

            self._reader = threading.Thread(target=pump, daemon=True)
            self._reader.start()
            deadline = t0 + self.start_timeout
            while not ready.wait(0.01):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self._fail_start()
            return t_ready[0] - t0
        conf = self.workdir / f"mosquitto-{self.starts}.conf"
        conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            *self.mosquitto_conf,
            f"persistence_location {self.data}/",
            # Run as root, Mosquitto would switch to user "mosquitto", which cannot
            # write the (0700) temporary directory: keep the current user.
            *(["user root"] if os.geteuid() == 0 else []),
            f"log_dest file {self.log}",
            "log_type error", "log_type warning", "log_type notice", "log_type information",
        ]) + "\n")
        t0 = time.monotonic()
        with open(self.log, "ab") as lf:
            self.proc = subprocess.Popen([self.mosquitto, "-c", str(conf)], stdout=lf,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        deadline = t0 + self.start_timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return time.monotonic() - t0
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self._fail_start()
                time.sleep(0.005)

    def _fail_start(self):
        code = self.proc.poll()
        self.kill9()
        raise RuntimeError(f"{self.kind} did not become ready (exit code {code}); "
                           f"log tail: {tail(self.log)}")

    def rss_kb(self) -> int | None:
        return read_status_kb(self.pid, "VmRSS") if self.alive() else None

    def hwm_kb(self) -> int | None:
        return read_status_kb(self.pid, "VmHWM") if self.alive() else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL our child by its PID and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if self._reader:
            self._reader.join(timeout=2)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill9()

    def log_problems(self) -> list[str]:
        """Warning/error lines of the broker log (Rookery: WARN/ERROR; Mosquitto:
        Error/Warning)."""
        out = []
        try:
            for line in self.log.read_text(errors="replace").splitlines():
                low = line.lower()
                if "should not be run as root" in low:
                    continue  # Mosquitto's start-up notice when run as root
                if " warn " in line or " error " in line or "error:" in low or "warning:" in low:
                    out.append(line.strip())
        except OSError:
            pass
        return out


# --------------------------------------------------------------------------- clients


def new_client(client_id: str, clean: bool) -> mqtt.Client:
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                       protocol=mqtt.MQTTv311, reconnect_on_failure=False)


def connect_manual(c: mqtt.Client, port: int, timeout: float = 10.0) -> bool:
    """Connect and run the loop by hand until CONNACK; returns session_present."""
    state: dict = {}

    def on_connect(_c, _u, flags, rc, _p):
        state["rc"] = rc
        state["sp"] = bool(flags.session_present)

    c.on_connect = on_connect
    c.connect("127.0.0.1", port, keepalive=60)
    deadline = time.monotonic() + timeout
    while "rc" not in state:
        if time.monotonic() > deadline:
            raise RuntimeError("no CONNACK")
        if c.loop(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise RuntimeError("connection lost before CONNACK")
    if state["rc"].is_failure:
        raise RuntimeError(f"CONNACK refused: {state['rc']}")
    return state["sp"]


def subscribe_offline(port: int, client_id: str, topic: str, timeout: float = 10.0) -> None:
    """Create a persistent session subscribed (QoS 1) to topic, then leave it offline."""
    c = new_client(client_id, clean=False)
    connect_manual(c, port, timeout)
    done = threading.Event()
    c.on_subscribe = lambda *_a: done.set()
    c.subscribe(topic, qos=1)
    deadline = time.monotonic() + timeout
    while not done.is_set():
        if time.monotonic() > deadline:
            raise RuntimeError("no SUBACK")
        c.loop(0.05)
    c.disconnect()
    c.loop(0.1)


def payload(seq: int, size: int) -> bytes:
    return SEQ.pack(seq) + b"\0" * max(0, size - SEQ.size)


class Publisher:
    """QoS 1 publisher on the calling thread (paho's loop run by hand, no
    reconnect). Sends seq = start, start+1, ... until `count` are sent or the
    connection drops or `stop` is set; at most `window` not yet acknowledged
    (paho itself keeps at most `inflight` on the wire)."""

    def __init__(self, port: int, client_id: str, topic: str, *, count: int, start: int = 0,
                 size: int = 64, inflight: int = 100, window: int = 1000):
        self.port, self.topic, self.count, self.start, self.size = port, topic, count, start, size
        self.window = max(window, inflight)
        self.c = new_client(client_id, clean=True)
        self.c.max_inflight_messages_set(inflight)
        self.c.max_queued_messages_set(0)
        self.pending: dict[int, int] = {}
        self.acked: list[int] = []
        self.sent = 0
        self.first_publish: float | None = None
        self.last_ack: float | None = None
        self.lost_connection = False
        self.stop = threading.Event()
        self.c.on_publish = self._on_publish

    def _on_publish(self, _c, _u, mid, _rc, _p):
        seq = self.pending.pop(mid, None)
        if seq is not None:
            self.acked.append(seq)
            self.last_ack = time.monotonic()

    def connect(self) -> None:
        connect_manual(self.c, self.port)

    def run(self, deadline: float, linger: bool = True) -> None:
        """Publish; with linger, keep reading acks after the last publish until
        all are acknowledged, the connection drops, stop is set or deadline."""
        c = self.c
        self.first_publish = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < deadline:
            while self.sent < self.count and len(self.pending) < self.window:
                seq = self.start + self.sent
                info = c.publish(self.topic, payload(seq, self.size), qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.lost_connection = True
                    return
                self.pending[info.mid] = seq
                self.sent += 1
            if self.sent >= self.count and (not self.pending or not linger):
                return
            if c.loop(0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self.lost_connection = True
                return

    def close(self) -> None:
        try:
            self.c.disconnect()
            self.c.loop(0.1)
        except Exception:
            pass
        try:
            self.c.socket() and self.c.socket().close()
        except Exception:
            pass


class Collector:
    """Persistent subscriber that reconnects (clean session off) and collects
    sequence numbers until `idle` seconds without a new message."""

    def __init__(self, port: int, client_id: str):
        self.port, self.client_id = port, client_id
        self.seen: set[int] = set()
        self.received = 0
        self.duplicates = 0
        self.dup_flagged = 0
        self.last_msg = time.monotonic()
        self.first_msg: float | None = None
        self.session_present: bool | None = None
        self.lock = threading.Lock()
        self.marks: dict[int, float] = {}   # distinct count -> time it was reached
        self.want_marks: set[int] = set()

    def _on_message(self, _c, _u, msg):
        (seq,) = SEQ.unpack_from(msg.payload)
        now = time.monotonic()
        with self.lock:
            if self.first_msg is None:
                self.first_msg = now
            self.received += 1
            if msg.dup:
                self.dup_flagged += 1
            if seq in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(seq)
                n = len(self.seen)
                if n in self.want_marks:
                    self.marks[n] = now
            self.last_msg = now

    def collect(self, idle: float, max_time: float, until: int | None = None) -> float:
        """Returns the time the connection was opened (monotonic)."""
        c = new_client(self.client_id, clean=False)
        c.on_message = self._on_message
        t_conn = time.monotonic()
        self.session_present = connect_manual(c, self.port)
        self.last_msg = time.monotonic()
        deadline = t_conn + max_time
        while time.monotonic() < deadline:
            if c.loop(0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if time.monotonic() - self.last_msg > idle:
                break
            if until is not None and len(self.seen) >= until:
                break
        try:
            c.disconnect()
            c.loop(0.1)
        except Exception:
            pass
        return t_conn


# --------------------------------------------------------------------------- one run


@dataclass
class Result:
    broker: str
    rep: int
    values: dict = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def make_broker(name: str, workdir: Path, opts) -> Broker:
    if name.startswith("rookery"):
        env = {
            "ROOKERY_STORAGE__DURABILITY": name.split("-", 1)[1],
            "ROOKERY_MQTT__MAX_QUEUED_MESSAGES": str(opts.max_queued_messages),
            "ROOKERY_MQTT__MAX_QUEUED_BYTES": str(opts.max_queued_bytes),
        }
        for kv in opts.rookery_env:
            k, _, v = kv.partition("=")
            env[k] = v
        return Broker("rookery", workdir, rookery=opts.rookery, env=env)
    return Broker("mosquitto", workdir, mosquitto=opts.mosquitto, mosquitto_conf=[
        "persistence true",
        f"autosave_interval {opts.autosave_interval:g}",
        "max_queued_messages 0",      # unlimited: queue, never drop
        "max_inflight_messages 100",
    ])


def run_once(name: str, rep: int, opts) -> Result:
    res = Result(name, rep)
    tmp = Path(tempfile.mkdtemp(prefix=f"loss-{name}-", dir=opts.tmpdir))
    broker = make_broker(name, tmp, opts)
    topic = f"bench/loss/{rep}"
    sub_id = f"loss-sub-{name}-{rep}"
    try:
        broker.start()
        subscribe_offline(broker.port, sub_id, topic)
        pub = Publisher(broker.port, f"loss-pub-{name}-{rep}", topic, count=opts.messages,
                        size=opts.payload, inflight=opts.inflight, window=opts.window)
        pub.connect()
        kill_at = opts.kill_after + random.uniform(0, opts.kill_jitter)
        killed = {}

        def killer():
            # Waits for the first publish, then kill_at seconds, then SIGKILL.
            while pub.first_publish is None and not pub.stop.is_set():
                time.sleep(0.001)
            if pub.first_publish is None:
                return
            delay = pub.first_publish + kill_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            killed["t"] = time.monotonic()
            killed["sent"] = pub.sent
            os.kill(broker.pid, signal.SIGKILL)

        kt = threading.Thread(target=killer, daemon=True)
        kt.start()
        pub.run(deadline=time.monotonic() + kill_at + 30)
        kt.join(timeout=kill_at + 35)
        broker.kill9()          # reaps it (already dead)
        pub.close()
        if "t" not in killed:
            raise RuntimeError("the broker was not killed")
        t_pub = killed["t"] - pub.first_publish
        finished_before_kill = pub.sent >= opts.messages and not pub.pending and \
            pub.last_ack is not None and pub.last_ack < killed["t"]
        if finished_before_kill:
            res.notes.append("all messages were sent and acknowledged before the kill; raise --messages")
        acked = set(pub.acked)

        restart_s = broker.start()
        col = Collector(broker.port, sub_id)
        col.collect(idle=opts.idle, max_time=opts.collect_timeout)
        seen = col.seen
        lost = acked - seen
        res.values = {
            "kill_at_s": t_pub,
            "sent": pub.sent,
            "acked": len(acked),
            "ack_rate": len(acked) / t_pub if t_pub > 0 else None,
            "delivered": len(seen),
            "lost": len(lost),
            "lost_pct": 100.0 * len(lost) / len(acked) if acked else 0.0,
            "unacked_delivered": len(seen - acked),
            "duplicates": col.duplicates,
            "session_present": int(bool(col.session_present)),
            "restart_s": restart_s,
            "data_bytes": dir_size(broker.data),
        }
        if lost:
            ls = sorted(lost)
            res.notes.append(f"acked but lost: {len(ls)} (seq {ls[0]}..{ls[-1]}; first few {ls[:10]})")
        beyond = {s for s in seen if s >= pub.sent}
        if beyond:
            res.notes.append(f"{len(beyond)} delivered sequence numbers were never sent (bug in the bench?)")
        problems = broker.log_problems()
        if problems:
            res.notes.append(f"{len(problems)} warning/error log line(s), e.g.: {problems[0][:300]}")
    except Exception as e:  # noqa: BLE001 - report and go on with the next run
        res.error = f"{type(e).__name__}: {e}"
    finally:
        broker.kill9()
        if not opts.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            res.notes.append(f"kept {tmp}")
    return res


# --------------------------------------------------------------------------- table


def fmt(v) -> str:
    if v is None:
        return "—"
    v = float(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == int(v):
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(vals: list) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) > 1 and min(vals) != max(vals):
        return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})"
    return fmt(med)


ROWS = [
    ("kill_at_s", "killed after (s of publishing)"),
    ("sent", "messages sent before the kill"),
    ("acked", "acknowledged (PUBACK before the kill)"),
    ("ack_rate", "acknowledged / s"),
    ("delivered", "delivered after restart (distinct)"),
    ("lost", "**acknowledged but lost**"),
    ("lost_pct", "acknowledged but lost, % of acknowledged"),
    ("unacked_delivered", "delivered, never acknowledged"),
    ("duplicates", "duplicates"),
    ("session_present", "session present after restart (1 = yes)"),
    ("restart_s", "restart time, s (spawn → ready)"),
    ("data_bytes", "data dir on disk at the end (after the drain), bytes"),
]


def describe(name: str, opts) -> str:
    if name == "rookery-strict":
        return "Rookery, durability strict"
    if name == "rookery-batched":
        return "Rookery, durability batched (flush_interval_ms default 100)"
    return f"Mosquitto, persistence, autosave_interval {opts.autosave_interval:g} s"


def table(results: list[Result], brokers: list[str], opts) -> str:
    out = [f"## kill -9 persistence loss — {time.strftime('%Y-%m-%d %H:%M')}", ""]
    out.append(
        f"{opts.reps} repetition(s) per broker; {opts.messages:,} QoS 1 messages of {opts.payload} B "
        f"offered to 1 offline persistent subscriber, paho publisher with max inflight "
        f"{opts.inflight}; SIGKILL {opts.kill_after:g} s"
        + (f" + U(0, {opts.kill_jitter:g}) s" if opts.kill_jitter else "")
        + f" after the first publish; collect until {opts.idle:g} s idle. "
        f"Cells: median (min–max). {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.2f}.")
    out.append("")
    out.append("| metric | " + " | ".join(describe(b, opts) for b in brokers) + " |")
    out.append("|---|" + "---:|" * len(brokers))
    for key, label in ROWS:
        row = [label]
        for b in brokers:
            row.append(cell([r.values.get(key) for r in results if r.broker == b and not r.error]))
        out.append("| " + " | ".join(row) + " |")
    notes = []
    for r in results:
        if r.error:
            notes.append(f"- {r.broker} rep {r.rep}: FAILED: {r.error}")
        for n in r.notes:
            notes.append(f"- {r.broker} rep {r.rep}: {n}")
    if notes:
        out += ["", "Notes:", "", *notes]
    return "\n".join(out) + "\n"


def main() -> int:
    tdir = target_dir()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default=",".join(BROKERS), help=f"comma-separated subset of {', '.join(BROKERS)}")
    ap.add_argument("--reps", type=int, default=3, help="runs per broker (default 3)")
    ap.add_argument("--messages", type=int, default=200_000,
                    help="QoS 1 messages to offer (default 200000; should not all be acked before the kill)")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes, >= 8 (default 64)")
    ap.add_argument("--inflight", type=int, default=100, help="paho max inflight (default 100)")
    ap.add_argument("--window", type=int, default=1000,
                    help="max messages handed to paho and not yet acked (default 1000)")
    ap.add_argument("--kill-after", type=float, default=3.0,
                    help="SIGKILL this many seconds after the first publish (default 3)")
    ap.add_argument("--kill-jitter", type=float, default=0.0,
                    help="add a uniform random 0..S seconds to --kill-after (default 0)")
    ap.add_argument("--idle", type=float, default=3.0,
                    help="after restart, stop collecting after S s without a new message (default 3)")
    ap.add_argument("--collect-timeout", type=float, default=300.0, help="max collection time, s (default 300)")
    ap.add_argument("--autosave-interval", type=float, default=5.0,
                    help="Mosquitto autosave_interval, s (default 5; Mosquitto's own default is 1800)")
    ap.add_argument("--max-queued-messages", type=int, default=2_000_000,
                    help="Rookery mqtt.max_queued_messages (default 2000000, so nothing is dropped by policy)")
    ap.add_argument("--max-queued-bytes", type=int, default=4 * 1024 ** 3,
                    help="Rookery mqtt.max_queued_bytes (default 4 GiB)")
    ap.add_argument("--rookery-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for Rookery (repeatable)")
    ap.add_argument("--rookery", default=str(tdir / "release" / "rookery"), help="rookery binary")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto")
    ap.add_argument("--tmpdir", default=None, help="parent of the per-run data directories (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep data directories and logs")
    ap.add_argument("--seed", type=int, default=None, help="random seed for --kill-jitter")
    ap.add_argument("--out", help="also write the Markdown table to this file")
    opts = ap.parse_args()
    if opts.payload < SEQ.size:
        ap.error("--payload must be >= 8")
    if opts.seed is not None:
        random.seed(opts.seed)
    brokers = [b.strip() for b in opts.brokers.split(",") if b.strip()]
    for b in brokers:
        if b not in BROKERS:
            ap.error(f"unknown broker {b!r}; known: {', '.join(BROKERS)}")
    if any(b.startswith("rookery") for b in brokers) and not os.access(opts.rookery, os.X_OK):
        print(f"error: {opts.rookery} not found (cargo build --release -p rookery)", file=sys.stderr)
        return 2
    if "mosquitto" in brokers and not os.access(opts.mosquitto, os.X_OK):
        print("error: mosquitto not found (apt-get install -y mosquitto)", file=sys.stderr)
        return 2

    results: list[Result] = []
    t0 = time.monotonic()
    try:
        for rep in range(1, opts.reps + 1):
            order = brokers if rep % 2 else list(reversed(brokers))
            for b in order:
                print(f"[{time.monotonic() - t0:5.0f}s] rep {rep} {b} ...", end="", file=sys.stderr, flush=True)
                r = run_once(b, rep, opts)
                results.append(r)
                if r.error:
                    print(f" FAILED: {r.error}", file=sys.stderr)
                else:
                    v = r.values
                    print(f" acked {v['acked']}, delivered {v['delivered']}, acked-but-lost {v['lost']}, "
                          f"dups {v['duplicates']}, restart {v['restart_s']:.2f}s", file=sys.stderr)
                for n in r.notes:
                    print(f"    note: {n}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted; reporting the runs so far", file=sys.stderr)
    md = table(results, brokers, opts)
    print(md)
    if opts.out:
        Path(opts.out).write_text(md)
    return 0 if results and all(not r.error for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
