#!/usr/bin/env python3
"""Groups benchmarks (SPEC §3–§8): group fan-out vs plain-topic fan-out, broker memory
for many groups, and management API throughput/latency.

    cargo build --release -p rookery -p rookery-benches
    python3 benches/groups_bench.py                       # all three parts, ~6 min
    python3 benches/groups_bench.py --parts fanout --reps 3
    python3 benches/groups_bench.py --parts memory,api --out groups.md

Parts:

- fanout: 1 publisher -> 100 subscribers, 64 B, closed loop (window 1000), QoS 0 and
  QoS 1 (at most --max-inflight unacknowledged QoS 1 publishes, default 100), with `rookery-load fanout --credentials FILE`. "group": 101 users (100
  subscribers + the publisher, each logging in with its address/token), all members of
  one group; subscribers on `groups/{gid}`, the publisher on `groups/{gid}`. "plain":
  the same 101 users and credentials on a plain topic. Both run in the same invocation,
  alternating (group first on odd repetitions, plain first on even ones), a fresh broker
  (durability strict, the default) per run. Ratio = group / plain.
- memory: --users users, then --groups groups of --group-size members each (members
  drawn at random, fixed seed), created through the HTTP API with --create-conns
  concurrent keep-alive connections, durability strict; then the broker's VmRSS after
  --idle seconds idle and the data directory size.
- api: `groupeditmembers` (each connection adds then removes its own user, alternately,
  in one group) and `message` (backend group message, QoS 1, 16 B, to a group with
  --online members subscribed on `groups/{gid}` over MQTT, QoS 1) with --api-conns
  concurrent keep-alive connections and --api-requests requests per op; durability
  strict and none, alternating per repetition.

Every broker is started from target/release/ on free loopback ports with a fresh
temporary data directory and stopped by PID (SIGTERM, then SIGKILL). Every phase has a
timeout and the whole run stops starting new runs once --budget seconds have passed.
Python 3.11, standard library only. Reuses compare.py's helpers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

APP = "groups-bench-app-token"
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- broker

class Rookery:
    """One Rookery process on free loopback ports with its own temporary data dir."""

    def __init__(self, binary: str, durability: str, extra_env: list[str] | None = None):
        self.binary = binary
        self.durability = durability
        self.extra_env = extra_env or []
        self.tmp = tempfile.TemporaryDirectory(prefix="groups-bench-")
        self.data = Path(self.tmp.name) / "data"
        self.data.mkdir()
        self.log = Path(self.tmp.name) / "broker.log"
        self.proc: subprocess.Popen | None = None
        self.mqtt_port = 0
        self.http_port = 0

    def start(self) -> float:
        """Start (or restart on the same data dir); returns seconds to ready."""
        self.mqtt_port, self.http_port = compare.free_port(), compare.free_port()
        env = dict(os.environ)
        env["RUST_LOG"] = "warn"
        env["ROOKERY_AUTH__ADMIN_TOKEN"] = APP
        env["ROOKERY_STORAGE__DURABILITY"] = self.durability
        for kv in self.extra_env:
            k, _, v = kv.partition("=")
            env[k] = v
        cmd = [self.binary, "--mqtt-listen", f"127.0.0.1:{self.mqtt_port}",
               "--http-listen", f"127.0.0.1:{self.http_port}", "--data-dir", str(self.data)]
        t = time.monotonic()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            compare.wait_port(self.mqtt_port, self.proc)
            compare.wait_port(self.http_port, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"rookery: {e}; log: {compare.tail(self.log)}") from None
        return time.monotonic() - t

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        compare.stop_process(self.proc)
        self.proc = None

    def close(self) -> None:
        self.stop()
        self.tmp.cleanup()

    def __enter__(self) -> "Rookery":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def proc_status(pid: int, key: str) -> int | None:
    """A kB field of /proc/PID/status (VmRSS, VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def cpu_s(pid: int | str) -> float:
    """utime + stime of a process (all threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dir_size(path: Path) -> tuple[int, int]:
    """(allocated bytes as du counts them, apparent bytes) of a directory tree."""
    alloc = apparent = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


# ----------------------------------------------------------------------- HTTP client

class KeepAlive:
    """A minimal HTTP/1.1 keep-alive client for POST /api (loopback only)."""

    def __init__(self, port: int, timeout: float = 30.0):
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = b""

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def post(self, body: bytes) -> tuple[int, bytes]:
        req = (b"POST /api HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
        for attempt in (0, 1):
            if self.sock is None:
                self._connect()
            try:
                self.sock.sendall(req)
                return self._response()
            except (ConnectionError, BrokenPipeError) as e:
                # The server closed an idle keep-alive connection: retry once.
                self.close()
                if attempt:
                    raise e
        raise AssertionError("unreachable")

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by server")
        self.buf += chunk

    def _response(self) -> tuple[int, bytes]:
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = None
        close = False
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            k = k.strip().lower()
            if k == b"content-length":
                length = int(v)
            elif k == b"connection" and v.strip().lower() == b"close":
                close = True
            elif k == b"transfer-encoding":
                raise RuntimeError("chunked responses are not supported by this client")
        if length is None:
            raise RuntimeError("response without Content-Length")
        while len(self.buf) < length:
            self._recv()
        body, self.buf = self.buf[:length], self.buf[length:]
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.sock:
            self.sock.close()
        self.sock = None


def api(port: int, **req) -> dict:
    c = KeepAlive(port)
    try:
        _, body = c.post(json.dumps({"token": APP, **req}).encode())
    finally:
        c.close()
    return json.loads(body)


def drive(port: int, conns: int, per_conn: list[int], make_body, keep: bool = False,
          deadline_s: float = 300.0) -> dict:
    """Run per_conn[c] requests on each of `conns` keep-alive connections in threads.

    make_body(c, j) -> bytes is request j of connection c. Returns latencies (ns),
    wall time, failures, and (keep=True) every parsed answer keyed by (c, j).
    """
    lat: list[list[int]] = [[] for _ in range(conns)]
    answers: dict[tuple[int, int], dict] = {}
    failures: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(conns + 1)
    stop_at = time.monotonic() + deadline_s

    def worker(c: int) -> None:
        client = KeepAlive(port)
        client._connect()
        try:
            start.wait(timeout=30)
            for j in range(per_conn[c]):
                if time.monotonic() > stop_at:
                    with lock:
                        failures.append(f"conn {c}: deadline reached after {j} requests")
                    return
                body = make_body(c, j)
                t = time.perf_counter_ns()
                status, raw = client.post(body)
                lat[c].append(time.perf_counter_ns() - t)
                ok = status == 200 and b'"result":true' in raw
                if keep or not ok:
                    try:
                        ans = json.loads(raw)
                    except ValueError:
                        ans = {"raw": raw[:200].decode(errors="replace")}
                    if keep:
                        answers[(c, j)] = ans
                    if not ok:
                        with lock:
                            failures.append(f"HTTP {status}: {json.dumps(ans)[:200]}")
        except Exception as e:  # noqa: BLE001 - reported, not raised, from a thread
            with lock:
                failures.append(f"conn {c}: {type(e).__name__}: {e}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(conns)]
    for t in threads:
        t.start()
    start.wait(timeout=30)
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout=max(1.0, stop_at - time.monotonic() + 5))
    wall = time.perf_counter() - t0
    all_lat = sorted(x for l in lat for x in l)
    return {"latencies": all_lat, "wall_s": wall, "failures": failures, "answers": answers}


def pct(sorted_ns: list[int], q: float) -> float | None:
    """Nearest-rank percentile, in µs."""
    if not sorted_ns:
        return None
    k = max(0, min(len(sorted_ns) - 1, int(round(q * len(sorted_ns) + 0.5)) - 1))
    return sorted_ns[k] / 1000


def create_users(port: int, names: list[str], conns: int) -> dict[str, str]:
    """useradd every name; returns address -> token."""
    n = len(names)
    per = [len(range(c, n, conns)) for c in range(conns)]
    bodies = [json.dumps({"op": "useradd", "token": APP, "user": {"address": a}}).encode()
              for a in names]
    r = drive(port, conns, per, lambda c, j: bodies[c + j * conns], keep=True)
    if r["failures"]:
        raise RuntimeError(f"useradd: {len(r['failures'])} failures, e.g. {r['failures'][0]}")
    tokens = {}
    for ans in r["answers"].values():
        tokens[ans["user"]["address"]] = ans["user"]["token"]
    if len(tokens) != n:
        raise RuntimeError(f"useradd: {len(tokens)} tokens for {n} users")
    return tokens


def create_group(port: int, name: str, members: list[str]) -> int:
    ans = api(port, op="groupadd", group={"name": name, "members": {"m": ",".join(members)}})
    if not ans.get("result"):
        raise RuntimeError(f"groupadd: {ans}")
    return ans["group"]["gid"]


# ---------------------------------------------------------------- part 1: fan-out

MODE_ENV = {
    "group": [],
    "plain": [],
    # Diagnostic: the same group with group history off (nothing of it is stored).
    "group-nohistory": ["ROOKERY_GROUPS__HISTORY_MAX_MESSAGES=0"],
    # Diagnostic: the same group with no store at all (history in memory only).
    "group-nodur": ["ROOKERY_STORAGE__DURABILITY=none"],
}
MODE_TITLE = {"group": "group `groups/{gid}`", "plain": "plain topic",
              "group-nohistory": "group, history off", "group-nodur": "group, durability none"}


def run_fanout(opts, qos: int, mode: str, rep: int) -> dict:
    with Rookery(opts.rookery, "strict", MODE_ENV[mode]) as b:
        b.start()
        n = opts.subscribers
        names = [f"fan{i}" for i in range(n + 1)]  # the last one publishes
        tokens = create_users(b.http_port, names, 8)
        gid = create_group(b.http_port, "fanout", names)
        creds = Path(b.tmp.name) / "credentials.txt"
        creds.write_text("".join(f"{a} {tokens[a]}\n" for a in names))
        cmd = [opts.load, "fanout", "--publishers", "1", "--subscribers", str(n),
               "--qos", str(qos), "--payload", "64", "--window", "1000", "--max-inflight", str(opts.max_inflight),
               "--credentials", str(creds),
               "--port", str(b.mqtt_port), "--broker-pid", str(b.pid),
               "--duration", str(opts.duration), "--warmup", str(opts.warmup),
               "--drain", str(opts.drain), "--json"]
        if mode.startswith("group"):
            cmd += ["--publish-topic", f"groups/{gid}", "--subscribe-filter", f"groups/{gid}"]
        limit = opts.warmup + opts.duration + opts.drain + 90
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"error": f"rookery-load timed out after {limit:.0f} s"}
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
        if line is None:
            return {"error": f"no JSON (exit {out.returncode}): {out.stderr.strip()[-300:]}"}
        res = json.loads(line)
        if not b.alive():
            res["error"] = f"broker died; log: {compare.tail(b.log)}"
        res["broker_log_tail"] = compare.tail(b.log, 3)
        return res


def part_fanout(opts, report: list[str], raw: dict) -> None:
    metrics = [("delivery_rate", "deliveries/s ↑"),
               ("cpu_us_per_delivery", "broker CPU µs/delivery ↓"),
               ("latency_us.p99", "latency p99 µs (closed loop, queueing) ↓"),
               ("latency_us.p50", "latency p50 µs (closed loop, queueing) ↓"),
               ("broker_cpu_pct", "broker CPU % of one core"),
               ("loss", "lost deliveries ↓"),
               ("other_cpu_pct", "other load on the machine, % of a core")]
    runs: dict[tuple[int, str], list[dict]] = {}
    notes = []
    for rep in range(1, opts.reps + 1):
        for qos in opts.qos:
            order = opts.modes if rep % 2 == 1 else list(reversed(opts.modes))
            for mode in order:
                if over_budget(opts):
                    notes.append(f"- budget reached: qos {qos} {mode} rep {rep} not run")
                    continue
                log(f"fanout rep {rep} qos {qos} {mode} ...")
                r = run_fanout(opts, qos, mode, rep)
                raw.setdefault("fanout", []).append({"rep": rep, "qos": qos, "mode": mode, "result": r})
                if r.get("error"):
                    notes.append(f"- qos {qos} {mode} rep {rep}: FAILED: {r['error']}")
                    log(f"  FAILED: {r['error']}")
                    continue
                if r.get("errors"):
                    notes.append(f"- qos {qos} {mode} rep {rep}: {'; '.join(r['errors'][:3])}")
                runs.setdefault((qos, mode), []).append(r)
                lat = r.get("latency_us") or {}
                log(f"  {compare.fmt(r.get('delivery_rate'))} deliveries/s, "
                    f"{r.get('cpu_us_per_delivery')} µs/delivery, p99 {compare.fmt(lat.get('p99'))} µs, "
                    f"loss {r.get('loss')}, other load {r.get('other_cpu_pct')}%")
    report.append("### Group fan-out vs plain topic (1 → 100, 64 B, closed loop, window 1000, "
                  f"{opts.max_inflight} QoS 1 publishes in flight)")
    report.append("")
    report.append(f"{opts.reps} repetition(s), alternating; measured {opts.duration:g} s after "
                  f"{opts.warmup:g} s warm-up; fresh broker (durability strict) per run; "
                  "median (min–max); ratio = group / plain.")
    report.append("")
    ratios = [m for m in opts.modes if m.startswith("group")] if "plain" in opts.modes else []
    head = ["QoS", "metric", *[MODE_TITLE[m] for m in opts.modes], *[f"{m}/plain" for m in ratios]]
    report.append("| " + " | ".join(head) + " |")
    report.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    for qos in opts.qos:
        first = True
        for key, label in metrics:
            cols = {m: [compare.get(r, key) for r in runs.get((qos, m), [])] for m in opts.modes}
            row = [str(qos) if first else "", label, *[compare.cell(cols[m]) for m in opts.modes],
                   *[compare.ratio(cols[m], cols["plain"]) for m in ratios]]
            report.append("| " + " | ".join(row) + " |")
            first = False
    if notes:
        report += ["", "Notes:", "", *notes]
    report.append("")


# ----------------------------------------------------------------- part 2: memory

def part_memory(opts, report: list[str], raw: dict) -> None:
    rows: list[tuple[str, str]] = []
    with Rookery(opts.rookery, "strict") as b:
        b.start()
        time.sleep(1)
        rss0 = proc_status(b.pid, "VmRSS")
        rows.append(("broker RSS right after start (empty)", mib(rss0)))
        names = [f"m{i:05d}" for i in range(opts.users)]
        log(f"memory: creating {opts.users} users ...")
        t = time.monotonic()
        create_users(b.http_port, names, opts.create_conns)
        dt_u = time.monotonic() - t
        rss_u = proc_status(b.pid, "VmRSS")
        rows.append((f"create {opts.users:,} users ({opts.create_conns} connections)",
                     f"{dt_u:.1f} s, {opts.users / dt_u:,.0f} useradd/s"))
        rows.append(("broker RSS after the users", mib(rss_u)))
        log(f"memory: creating {opts.groups} groups of {opts.group_size} ...")
        rnd = random.Random(42)
        bodies = [json.dumps({"op": "groupadd", "token": APP, "group": {
            "name": f"g{g}", "members": {"m": ",".join(rnd.sample(names, opts.group_size))}}}).encode()
            for g in range(opts.groups)]
        conns = opts.create_conns
        per = [len(range(c, opts.groups, conns)) for c in range(conns)]
        cpu0 = cpu_s(b.pid)
        r = drive(b.http_port, conns, per, lambda c, j: bodies[c + j * conns], deadline_s=400)
        cpu_g = cpu_s(b.pid) - cpu0
        if r["failures"]:
            raise RuntimeError(f"groupadd: {len(r['failures'])} failures, e.g. {r['failures'][0]}")
        dt_g = r["wall_s"]
        rows.append((f"create {opts.groups:,} groups × {opts.group_size} members",
                     f"{dt_g:.1f} s, {opts.groups / dt_g:,.0f} groupadd/s, p99 "
                     f"{pct(r['latencies'], 0.99) / 1000:.1f} ms, broker CPU {cpu_g * 1e6 / opts.groups:,.0f} µs/groupadd"))
        check = api(b.http_port, op="groupsget", start=0, count=0)
        rows.append(("groupsget total", str(check.get("total"))))
        rss_g = proc_status(b.pid, "VmRSS")
        rows.append(("broker RSS right after the groups", mib(rss_g)))
        time.sleep(opts.idle)
        rss_idle = proc_status(b.pid, "VmRSS")
        hwm = proc_status(b.pid, "VmHWM")
        alloc, apparent = dir_size(b.data)
        rows.append((f"**broker RSS after {opts.idle:g} s idle**", f"**{mib(rss_idle)}**"))
        rows.append(("broker peak RSS (VmHWM)", mib(hwm)))
        rows.append(("RSS idle − RSS empty, per group (incl. its share of users)",
                     f"{(rss_idle - rss0) * 1024 / opts.groups:,.0f} B"))
        rows.append(("**data dir (allocated, like du; apparent size)**",
                     f"**{alloc / 2**20:.1f} MiB**; {apparent / 2**20:.1f} MiB"))
        # Restart on the same data dir: recovery time and RSS after it.
        b.stop()
        ready = b.start()
        time.sleep(opts.idle)
        rss_r = proc_status(b.pid, "VmRSS")
        again = api(b.http_port, op="groupsget", start=0, count=0)
        rows.append(("restart (SIGTERM, start on the same dir): spawn → listening", f"{ready:.2f} s"))
        rows.append((f"broker RSS after restart + {opts.idle:g} s idle; groupsget total",
                     f"{mib(rss_r)}; {again.get('total')}"))
        raw["memory"] = {"rss_empty_kb": rss0, "rss_users_kb": rss_u, "rss_groups_kb": rss_g,
                         "rss_idle_kb": rss_idle, "hwm_kb": hwm, "data_alloc": alloc,
                         "data_apparent": apparent, "users_s": dt_u, "groups_s": dt_g,
                         "rss_restart_kb": rss_r, "restart_s": ready}
    report.append(f"### Memory: {opts.groups:,} groups of {opts.group_size} members "
                  f"({opts.users:,} users), durability strict")
    report.append("")
    report.append("| metric | value |")
    report.append("|---|---:|")
    report += [f"| {k} | {v} |" for k, v in rows]
    report.append("")


def mib(kb: int | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f} MiB"


# -------------------------------------------------------------------- part 3: API

def subscriber_helper(port: int, topic: str, creds_file: str, lifetime: float) -> int:
    """Hidden mode (`--subscriber-helper`): MQTT 3.1.1 subscribers, one per credentials
    line, QoS 1 on `topic`; PUBACK every message; print `ready`, then the total count
    when stdin closes (or after `lifetime` s)."""
    def s16(b: bytes) -> bytes:
        return struct.pack(">H", len(b)) + b

    def remlen(n: int) -> bytes:
        out = b""
        while True:
            d, n = n % 128, n // 128
            out += bytes([d | (0x80 if n else 0)])
            if not n:
                return out

    socks = []
    for i, line in enumerate(Path(creds_file).read_text().split("\n")):
        if not line.strip():
            continue
        user, token = line.split()
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        body = s16(b"MQTT") + bytes([4, 0xC2]) + struct.pack(">H", 60) + s16(f"gb-sub-{i}".encode()) \
            + s16(user.encode()) + s16(token.encode())
        s.sendall(bytes([0x10]) + remlen(len(body)) + body)
        if s.recv(4) != b"\x20\x02\x00\x00":
            print("connack refused", flush=True)
            return 1
        body = struct.pack(">H", 1) + s16(topic.encode()) + b"\x01"
        s.sendall(bytes([0x82]) + remlen(len(body)) + body)
        suback = s.recv(5)
        if len(suback) < 5 or suback[4] > 2:
            print(f"suback refused {suback!r}", flush=True)
            return 1
        s.setblocking(False)
        socks.append(s)
    bufs = {s: b"" for s in socks}
    count = 0
    print("ready", flush=True)
    end = time.monotonic() + lifetime
    while time.monotonic() < end:
        r, _, _ = select.select(socks + [sys.stdin], [], [], 0.5)
        if sys.stdin in r:
            if not sys.stdin.readline():
                break
        for s in r:
            if s is sys.stdin:
                continue
            chunk = s.recv(65536)
            if not chunk:
                print("closed by broker", file=sys.stderr)
                socks.remove(s)
                continue
            buf = bufs[s] + chunk
            acks = b""
            while len(buf) >= 2:
                n, mult, i = 0, 1, 1
                while i < len(buf) and buf[i] & 0x80:
                    n += (buf[i] & 0x7F) * mult
                    mult *= 128
                    i += 1
                if i >= len(buf):
                    break
                n += (buf[i] & 0x7F) * mult
                total = i + 1 + n
                if len(buf) < total:
                    break
                first, pkt = buf[0], buf[i + 1:total]
                buf = buf[total:]
                if first >> 4 == 3:
                    count += 1
                    if (first >> 1) & 3:
                        tlen = struct.unpack(">H", pkt[:2])[0]
                        acks += b"\x40\x02" + pkt[2 + tlen:4 + tlen]
            bufs[s] = buf
            if acks:
                s.setblocking(True)
                s.sendall(acks)
                s.setblocking(False)
    print(count, flush=True)
    return 0


def run_api(opts, durability: str) -> dict:
    out: dict = {}
    with Rookery(opts.rookery, durability) as b:
        b.start()
        conns = opts.api_conns
        togglers = [f"t{c}" for c in range(conns)]
        online = [f"on{i}" for i in range(opts.online)]
        tokens = create_users(b.http_port, ["sender", *online, *togglers], 8)
        gid = create_group(b.http_port, "api", ["sender", *online])
        per = [len(range(c, opts.api_requests, conns)) for c in range(conns)]

        # groupeditmembers: connection c adds t{c} on even j, removes it on odd j.
        add = [json.dumps({"op": "groupeditmembers", "token": APP,
                           "group": {"gid": gid, "members": {"m": t}}}).encode() for t in togglers]
        rem = [json.dumps({"op": "groupeditmembers", "token": APP,
                           "group": {"gid": gid, "members": {"m": t, "remove": True}}}).encode()
               for t in togglers]
        cpu0 = cpu_s(b.pid)
        r = drive(b.http_port, conns, per, lambda c, j: (rem if j % 2 else add)[c], deadline_s=120)
        out["groupeditmembers"] = summarize(r, cpu_s(b.pid) - cpu0)

        # message: the backend sends as "sender" to the group; `online` members are
        # subscribed over MQTT (QoS 1) and acknowledge every message.
        creds = Path(b.tmp.name) / "online.txt"
        creds.write_text("".join(f"{a} {tokens[a]}\n" for a in online))
        helper = subprocess.Popen(
            [sys.executable, __file__, "--subscriber-helper", str(b.mqtt_port), f"groups/{gid}",
             str(creds), "180"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = helper.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"subscriber helper: {line!r}")
            body = json.dumps({"op": "message", "token": APP, "message": {
                "from": "sender", "gid": gid, "type": 0, "message": "benchmark-msg-16"}}).encode()
            cpu0 = cpu_s(b.pid)
            r = drive(b.http_port, conns, per, lambda c, j: body, deadline_s=120)
            out["message"] = summarize(r, cpu_s(b.pid) - cpu0)
            # Wait (bounded) for the deliveries to arrive, then collect the count.
            expected = sum(per) * len(online)
            time.sleep(1.0)
            helper.stdin.close()
            got = helper.stdout.readline().strip()
            helper.wait(timeout=20)
            out["message"]["deliveries"] = int(got) if got.isdigit() else got
            out["message"]["expected_deliveries"] = expected
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait(timeout=5)
        if not b.alive():
            out["error"] = f"broker died; log: {compare.tail(b.log)}"
    return out


def summarize(r: dict, broker_cpu: float) -> dict:
    n = len(r["latencies"])
    return {"requests": n, "wall_s": r["wall_s"], "rate": n / r["wall_s"] if r["wall_s"] else None,
            "p50_us": pct(r["latencies"], 0.50), "p99_us": pct(r["latencies"], 0.99),
            "max_us": pct(r["latencies"], 1.0), "failures": len(r["failures"]),
            "failure_examples": r["failures"][:3],
            "broker_cpu_us_per_req": broker_cpu * 1e6 / n if n else None}


def part_api(opts, report: list[str], raw: dict) -> None:
    runs: dict[str, list[dict]] = {}
    notes = []
    for rep in range(1, opts.reps + 1):
        order = ["strict", "none"] if rep % 2 == 1 else ["none", "strict"]
        for d in order:
            if over_budget(opts):
                notes.append(f"- budget reached: {d} rep {rep} not run")
                continue
            log(f"api rep {rep} durability {d} ...")
            try:
                r = run_api(opts, d)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                notes.append(f"- {d} rep {rep}: FAILED: {e}")
                log(f"  FAILED: {e}")
                continue
            raw.setdefault("api", []).append({"rep": rep, "durability": d, "result": r})
            runs.setdefault(d, []).append(r)
            for op in ("groupeditmembers", "message"):
                s = r.get(op, {})
                log(f"  {op}: {compare.fmt(s.get('rate'))} req/s, p50 {compare.fmt(s.get('p50_us'))} µs, "
                    f"p99 {compare.fmt(s.get('p99_us'))} µs, failures {s.get('failures')}"
                    + (f", deliveries {s.get('deliveries')}/{s.get('expected_deliveries')}"
                       if op == "message" else ""))
                if s.get("failures"):
                    notes.append(f"- {d} rep {rep} {op}: {s['failures']} failed, e.g. {s['failure_examples']}")
            if r.get("error"):
                notes.append(f"- {d} rep {rep}: {r['error']}")
    report.append(f"### Management API ({opts.api_conns} keep-alive connections, "
                  f"{opts.api_requests:,} requests per op)")
    report.append("")
    report.append(f"{opts.reps} repetition(s), alternating strict/none; fresh broker per run; "
                  "median (min–max). Latency = request written to response read, in the client.")
    report.append("")
    report.append("| op | metric | strict | none |")
    report.append("|---|---|---:|---:|")
    metrics = [("rate", "requests/s ↑"), ("p50_us", "latency p50 µs ↓"), ("p99_us", "latency p99 µs ↓"),
               ("max_us", "latency max µs ↓"), ("broker_cpu_us_per_req", "broker CPU µs/request ↓"),
               ("failures", "failed requests ↓")]
    for op in ("groupeditmembers", "message"):
        first = True
        ms = metrics + ([("deliveries", "MQTT deliveries received / expected")] if op == "message" else [])
        for key, label in ms:
            cells = []
            for d in ("strict", "none"):
                rs = runs.get(d, [])
                if key == "deliveries":
                    cells.append(", ".join(f"{compare.get(r, op + '.deliveries')}/"
                                           f"{compare.get(r, op + '.expected_deliveries')}" for r in rs) or "—")
                else:
                    cells.append(compare.cell([compare.get(r, f"{op}.{key}") for r in rs]))
            report.append(f"| {op if first else ''} | {label} | {cells[0]} | {cells[1]} |")
            first = False
    if notes:
        report += ["", "Notes:", "", *notes]
    report.append("")


# ------------------------------------------------------------------------------ main

def over_budget(opts) -> bool:
    return time.monotonic() - T0 > opts.budget


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber-helper":
        port, topic, creds, lifetime = sys.argv[2:6]
        return subscriber_helper(int(port), topic, creds, float(lifetime))
    tdir = compare.target_dir()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="fanout,memory,api", help="comma-separated: fanout, memory, api")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for fanout and api (default 3)")
    ap.add_argument("--qos", default="0,1", help="fanout QoS levels (default 0,1)")
    ap.add_argument("--modes", default="group,plain",
                    help="fanout runs: group, plain, group-nohistory, group-nodur "
                         "(diagnostics: group history off; durability none)")
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--max-inflight", type=int, default=100,
                    help="fanout: the publisher's unacknowledged QoS 1 publishes (default 100)")
    ap.add_argument("--duration", type=float, default=8.0, help="fanout measured seconds (default 8)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--drain", type=float, default=2.0)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--group-size", type=int, default=10)
    ap.add_argument("--create-conns", type=int, default=16, help="memory: concurrent connections")
    ap.add_argument("--idle", type=float, default=5.0, help="memory: idle seconds before RSS")
    ap.add_argument("--api-conns", type=int, default=8)
    ap.add_argument("--api-requests", type=int, default=5000, help="requests per op and run")
    ap.add_argument("--online", type=int, default=4, help="api: online members for message")
    ap.add_argument("--budget", type=float, default=780.0,
                    help="seconds after which no new run starts (default 780)")
    ap.add_argument("--rookery", default=str(tdir / "release" / "rookery"))
    ap.add_argument("--load", default=str(tdir / "release" / "rookery-load"))
    ap.add_argument("--out", help="also write the Markdown report here")
    ap.add_argument("--raw", help="write every run's raw results (JSON) here")
    opts = ap.parse_args()
    opts.qos = [int(q) for q in opts.qos.split(",") if q.strip()]
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    for m in opts.modes:
        if m not in MODE_ENV:
            ap.error(f"unknown mode {m!r}; known: {', '.join(MODE_ENV)}")
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("fanout", "memory", "api"):
            ap.error(f"unknown part {p!r}")
    for binary in (opts.rookery, opts.load):
        if not os.access(binary, os.X_OK):
            print(f"error: {binary} not found; run: cargo build --release -p rookery -p rookery-benches",
                  file=sys.stderr)
            return 2
    if opts.users < opts.group_size:
        ap.error("--users must be at least --group-size")
    compare.raise_fd_limit()

    report = [f"## Groups benchmarks — {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} CPUs)", ""]
    raw: dict = {}
    ok = True
    try:
        for p in parts:
            if over_budget(opts):
                report.append(f"(part {p} skipped: budget of {opts.budget:g} s reached)")
                continue
            try:
                {"fanout": part_fanout, "memory": part_memory, "api": part_api}[p](opts, report, raw)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                ok = False
                report += [f"### {p}: FAILED", "", str(e), ""]
                log(f"{p} FAILED: {e}")
    except KeyboardInterrupt:
        print("\ninterrupted; reporting what ran", file=sys.stderr)
        ok = False
    report.append(f"Total time {time.monotonic() - T0:.0f} s. "
                  f"`python3 benches/groups_bench.py {' '.join(sys.argv[1:])}`".rstrip())
    md = "\n".join(report) + "\n"
    print(md)
    if opts.out:
        Path(opts.out).write_text(md)
    if opts.raw:
        Path(opts.raw).write_text(json.dumps(raw, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
