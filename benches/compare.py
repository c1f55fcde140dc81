#!/usr/bin/env python3
"""Rookery vs Mosquitto: run the rookery-load scenarios against both brokers.

Each run starts a fresh broker on its own loopback port, runs one scenario
with `rookery-load --broker-pid PID --json`, and stops the broker. Brokers
alternate (ABBA order across repetitions). Prints a Markdown table of
medians per broker and the Rookery/Mosquitto ratio.

    cargo build --release -p rookery -p rookery-benches
    python3 benches/compare.py                       # default suite, 3 reps
    python3 benches/compare.py --brokers mosquitto --reps 1 --scenarios fanout,idle

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Metric: (JSON key path, label, better: "higher" | "lower" | None)
M = tuple[str, str, str | None]

THROUGHPUT: list[M] = [
    ("delivery_rate", "deliveries/s", "higher"),
    ("publish_rate", "publishes/s", "higher"),
    ("latency_us.p50", "latency p50 µs (queueing, closed loop)", "lower"),
    ("latency_us.p99", "latency p99 µs (queueing, closed loop)", "lower"),
    ("cpu_us_per_delivery", "broker CPU µs/delivery", "lower"),
    ("broker_cpu_pct", "broker CPU % of one core", None),
    ("broker_rss_max_kb", "broker RSS max KiB", "lower"),
    ("loss", "lost deliveries", "lower"),
]


@dataclass
class Scenario:
    name: str
    description: str
    args: list[str]
    metrics: list[M]
    traffic: bool = True


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "fanout",
            "1 publisher -> 100 subscribers, one topic, QoS 0, 64 B, closed loop (window 1000)",
            ["fanout", "--publishers", "1", "--subscribers", "100", "--qos", "0",
             "--payload", "64", "--window", "1000"],
            THROUGHPUT,
        ),
        Scenario(
            "fanin",
            "100 publishers (own topics) -> 1 subscriber on a + wildcard, QoS 0, 64 B, "
            "closed loop (window 100 per publisher)",
            ["fanin", "--publishers", "100", "--subscribers", "1", "--qos", "0",
             "--payload", "64", "--window", "100"],
            THROUGHPUT,
        ),
        Scenario(
            "pairs-qos1",
            "50 publisher/subscriber pairs, own topic each, QoS 1, 64 B, closed loop "
            "(window 100, max 100 unacked per publisher)",
            ["pairs", "--pairs", "50", "--qos", "1", "--payload", "64", "--window", "100",
             "--max-inflight", "100"],
            [
                ("delivery_rate", "deliveries/s", "higher"),
                ("loss", "lost deliveries", "lower"),
                ("duplicates", "duplicates", "lower"),
                ("reordered", "reordered", "lower"),
                ("pub_unacked", "publishes never acked", "lower"),
                ("latency_us.p99", "latency p99 µs (queueing, closed loop)", "lower"),
                ("cpu_us_per_delivery", "broker CPU µs/delivery", "lower"),
                ("broker_rss_max_kb", "broker RSS max KiB", "lower"),
            ],
        ),
        Scenario(
            "latency",
            "1 publisher -> 100 subscribers at 200 msg/s (20,000 deliveries/s), QoS 0, 64 B, "
            "open loop, latency from the scheduled send time",
            ["fanout", "--publishers", "1", "--subscribers", "100", "--qos", "0",
             "--payload", "64", "--rate", "200"],
            [
                ("latency_us.p50", "latency p50 µs", "lower"),
                ("latency_us.p90", "latency p90 µs", "lower"),
                ("latency_us.p99", "latency p99 µs", "lower"),
                ("latency_us.p999", "latency p99.9 µs", "lower"),
                ("latency_us.max", "latency max µs", "lower"),
                ("delivery_rate", "deliveries/s", "higher"),
                ("loss", "lost deliveries", "lower"),
                ("cpu_us_per_delivery", "broker CPU µs/delivery", "lower"),
            ],
        ),
        Scenario(
            "idle",
            "open 5,000 idle connections as fast as possible (100 in flight), hold, close",
            ["idle", "--connections", "5000", "--connect-concurrency", "100"],
            [
                ("connect_rate", "connects/s", "higher"),
                ("rss_per_conn_bytes", "broker RSS bytes/connection", "lower"),
                ("cpu_us_per_connect", "broker CPU µs/connect", "lower"),
                ("broker_rss_max_kb", "broker RSS max KiB", "lower"),
                ("failed", "failed connects", "lower"),
            ],
            traffic=False,
        ),
        Scenario(
            "overload",
            "1 publisher at 20,000 msg/s (open loop, 512 B, QoS 0) -> 1 subscriber that "
            "consumes 2,000 msg/s (500 µs per message)",
            ["fanout", "--publishers", "1", "--subscribers", "1", "--qos", "0",
             "--payload", "512", "--rate", "20000", "--subscriber-delay-us", "500"],
            [
                ("broker_rss_max_kb", "broker RSS max KiB", "lower"),
                ("publish_rate", "publishes/s accepted", None),
                ("delivery_rate", "deliveries/s", None),
                ("loss_pct", "% not delivered by end of drain", None),
                ("broker_cpu_pct", "broker CPU % of one core", None),
            ],
        ),
    ]
}


def target_dir() -> Path:
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        p = Path(env)
        return p if p.is_absolute() else REPO / p
    return REPO / "target"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with code {proc.returncode} during start-up")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"broker did not listen on {port} within {timeout:.0f} s")


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def stop_process(proc: subprocess.Popen | None) -> None:
    """Stops a process we started, by its PID: SIGTERM, then SIGKILL after 8 s."""
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


class Broker:
    """A broker process started fresh for one run."""

    def __init__(self, name: str, opts: argparse.Namespace):
        self.name = name
        self.opts = opts
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.port = 0
        self.log = Path()

    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-")
        tmp = Path(self.tmp.name)
        self.port = free_port()
        self.log = tmp / "broker.log"
        env = dict(os.environ)
        if self.name == "mosquitto":
            conf = tmp / "mosquitto.conf"
            lines = [
                f"listener {self.port} 127.0.0.1",
                "allow_anonymous true",
                # Raised so that the broker queues instead of dropping.
                "max_queued_messages 1000000",
                "max_inflight_messages 100",
                "persistence false",
                # Errors only (start-up failures show up in the log file);
                # nothing is logged per connection or message.
                "log_dest stderr",
                "log_type error",
                "log_type warning",
            ]
            if self.opts.mosquitto_nodelay:
                lines.append("set_tcp_nodelay true")
            conf.write_text("\n".join(lines) + "\n")
            cmd = [self.opts.mosquitto, "-c", str(conf)]
        else:
            data = tmp / "data"
            data.mkdir()
            http_port = free_port()
            cmd = [
                self.opts.rookery,
                "--mqtt-listen", f"127.0.0.1:{self.port}",
                "--http-listen", f"127.0.0.1:{http_port}",
                "--data-dir", str(data),
            ]
            env.setdefault("RUST_LOG", "warn")
            for kv in self.opts.rookery_env:
                k, _, v = kv.partition("=")
                env[k] = v
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True,
            )
        try:
            wait_port(self.port, self.proc)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.name}: {e}; log: {tail(self.log)}") from None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None
        if self.tmp:
            self.tmp.cleanup()
            self.tmp = None


@dataclass
class Run:
    broker: str
    scenario: str
    rep: int
    result: dict = field(default_factory=dict)
    error: str | None = None


def run_one(broker: Broker, sc: Scenario, rep: int, opts: argparse.Namespace,
            after_load=None) -> Run:
    """One load run on a fresh broker. `after_load(broker, run)`, if given, is called
    once the load run is over and its result parsed, before the broker is stopped."""
    run = Run(broker.name, sc.name, rep)
    try:
        broker.start()
    except RuntimeError as e:
        run.error = str(e)
        return run
    try:
        cmd = [
            opts.load, *sc.args,
            "--port", str(broker.port),
            "--broker-pid", str(broker.proc.pid),
            "--duration", str(opts.duration),
            "--warmup", str(opts.warmup),
            "--drain", str(opts.drain),
            "--hold", str(opts.hold),
            "--json",
        ]
        limit = opts.warmup + opts.duration + opts.drain + opts.hold + 90
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            run.error = f"rookery-load timed out after {limit:.0f} s"
            return run
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
        if line is None:
            run.error = f"no JSON (exit {out.returncode}): {out.stderr.strip()[-300:]}"
            return run
        run.result = json.loads(line)
        if "error" in run.result:
            run.error = run.result["error"]
        if broker.proc.poll() is not None:
            run.error = (run.error or "") + f" broker died (exit {broker.proc.returncode}); log: {tail(broker.log)}"
        elif after_load is not None:
            after_load(broker, run)
    finally:
        broker.stop()
    return run


def get(d: dict, path: str):
    for part in path.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    v = float(v)
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f} M"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100 or v == int(v):
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def cell(values: list) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) > 1 and min(vals) != max(vals):
        return f"{fmt(med)} ({fmt(min(vals))}–{fmt(max(vals))})"
    return fmt(med)


def ratio(a: list, b: list) -> str:
    a = [v for v in a if v is not None]
    b = [v for v in b if v is not None]
    if not a or not b:
        return "—"
    ma, mb = statistics.median(a), statistics.median(b)
    if mb == 0:
        return "=" if ma == 0 else "∞"
    return f"{ma / mb:.2f}"


def table(runs: list[Run], scenarios: list[Scenario], brokers: list[str], opts) -> str:
    title = {"rookery": "Rookery", "mosquitto": "Mosquitto"}
    out = []
    out.append(f"## Rookery vs Mosquitto — {time.strftime('%Y-%m-%d %H:%M')}")
    out.append("")
    out.append(
        f"{opts.reps} repetition(s); measured {opts.duration:g} s after {opts.warmup:g} s warm-up, "
        f"drain up to {opts.drain:g} s; {os.cpu_count()} CPUs. Cells: median (min–max). "
        "↑ higher is better, ↓ lower is better; ratio = Rookery / Mosquitto."
    )
    out.append("")
    head = ["Scenario", "Metric", *[title.get(b, b) for b in brokers]]
    both = "rookery" in brokers and "mosquitto" in brokers
    if both:
        head.append("Rookery/Mosquitto")
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    notes = []
    for sc in scenarios:
        by_broker = {b: [r for r in runs if r.scenario == sc.name and r.broker == b] for b in brokers}
        ok = {b: [r.result for r in rs if not r.error and r.result] for b, rs in by_broker.items()}
        first = True
        metrics = list(sc.metrics)
        if sc.traffic:
            metrics.append(("other_cpu_pct", "other load on the machine, % of a core", None))
        for key, label, better in metrics:
            arrow = {"higher": " ↑", "lower": " ↓"}.get(better, "")
            row = [sc.name if first else "", label + arrow]
            first = False
            cols = {b: [get(r, key) for r in ok[b]] for b in brokers}
            row += [cell(cols[b]) for b in brokers]
            if both:
                row.append(ratio(cols["rookery"], cols["mosquitto"]))
            out.append("| " + " | ".join(row) + " |")
        for b, rs in by_broker.items():
            for r in rs:
                if r.error:
                    notes.append(f"- {sc.name} / {b} / rep {r.rep}: FAILED: {r.error}")
                elif r.result.get("errors"):
                    notes.append(f"- {sc.name} / {b} / rep {r.rep}: {'; '.join(r.result['errors'][:3])}")
            noisy = [get(r, "other_cpu_pct") for r in ok[b]]
            noisy = [v for v in noisy if v is not None and v > 25]
            if noisy:
                notes.append(
                    f"- {sc.name} / {b}: {len(noisy)} run(s) had other processes using "
                    f"> 25% of a core (max {max(noisy):.0f}%): numbers are noisy"
                )
    out.append("")
    out.append("Scenarios:")
    out.append("")
    for sc in scenarios:
        out.append(f"- **{sc.name}**: {sc.description}. `rookery-load {' '.join(sc.args)}`")
    if notes:
        out.append("")
        out.append("Notes:")
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def summary(run: Run) -> str:
    if run.error:
        return f"FAILED: {run.error[:200]}"
    r = run.result
    if r.get("scenario") == "idle":
        return (f"{fmt(r.get('connect_rate'))} conn/s, {fmt(r.get('rss_per_conn_bytes'))} B/conn, "
                f"{r.get('failed')} failed")
    lat = r.get("latency_us") or {}
    return (f"{fmt(r.get('delivery_rate'))} deliveries/s, p99 {fmt(lat.get('p99'))} µs, "
            f"loss {r.get('loss')}, broker CPU {fmt(r.get('broker_cpu_pct'))}%, "
            f"RSS max {fmt(r.get('broker_rss_max_kb'))} KiB, other load {fmt(r.get('other_cpu_pct'))}%")


def busy_fraction(interval: float = 1.0) -> float:
    """Fraction of all CPUs busy over `interval` seconds (/proc/stat)."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)
    b0, t0 = sample()
    time.sleep(interval)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def wait_idle(max_wait: float, threshold: float = 0.10) -> float:
    """Wait (up to max_wait s) until the machine is mostly idle; returns
    the last busy fraction seen."""
    deadline = time.monotonic() + max_wait
    busy = busy_fraction()
    while busy > threshold and time.monotonic() < deadline:
        busy = busy_fraction()
    return busy


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65535 if hard == resource.RLIM_INFINITY else min(hard, 65535)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            print(f"warning: could not raise open files limit: {e}", file=sys.stderr)


def main() -> int:
    tdir = target_dir()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per broker and scenario (default 3)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS),
                    help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    ap.add_argument("--brokers", default="rookery,mosquitto", help="comma-separated: rookery, mosquitto")
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per run (default 8)")
    ap.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per run (default 2)")
    ap.add_argument("--drain", type=float, default=2.0, help="max drain seconds per run (default 2)")
    ap.add_argument("--hold", type=float, default=3.0, help="idle: seconds to hold connections (default 3)")
    ap.add_argument("--rookery", default=str(tdir / "release" / "rookery"), help="rookery binary")
    ap.add_argument("--mosquitto", default=shutil.which("mosquitto") or "/usr/sbin/mosquitto",
                    help="mosquitto binary")
    ap.add_argument("--load", default=str(tdir / "release" / "rookery-load"), help="rookery-load binary")
    ap.add_argument("--rookery-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for Rookery (repeatable; RUST_LOG defaults to warn)")
    ap.add_argument("--mosquitto-nodelay", action="store_true",
                    help="add set_tcp_nodelay true to Mosquitto's config (default: Mosquitto's default, Nagle on)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each run, wait up to S seconds for the machine to be <10%% busy "
                         "(useful on shared machines; default 0 = don't wait)")
    ap.add_argument("--out", help="also write the Markdown table to this file")
    ap.add_argument("--raw", help="write every run's JSON result to this file")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    opts = ap.parse_args()

    if opts.list:
        for sc in SCENARIOS.values():
            print(f"{sc.name:12} {sc.description}\n{'':12} rookery-load {' '.join(sc.args)}")
        return 0
    names = [s.strip() for s in opts.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    scenarios = [SCENARIOS[n] for n in names]
    brokers = [b.strip() for b in opts.brokers.split(",") if b.strip()]
    for b in brokers:
        if b not in ("rookery", "mosquitto"):
            ap.error(f"unknown broker {b!r}")
    if not os.access(opts.load, os.X_OK):
        print(f"error: {opts.load} not found; run: cargo build --release -p rookery-benches", file=sys.stderr)
        return 2
    if "rookery" in brokers and not os.access(opts.rookery, os.X_OK):
        print(f"warning: {opts.rookery} not found (cargo build --release -p rookery); skipping Rookery",
              file=sys.stderr)
        brokers.remove("rookery")
    if "mosquitto" in brokers and not (opts.mosquitto and os.access(opts.mosquitto, os.X_OK)):
        print("warning: mosquitto not found (apt-get install -y mosquitto); skipping Mosquitto",
              file=sys.stderr)
        brokers.remove("mosquitto")
    if not brokers:
        print("error: no broker to run", file=sys.stderr)
        return 2
    raise_fd_limit()

    runs: list[Run] = []
    total = opts.reps * len(scenarios) * len(brokers)
    n = 0
    t0 = time.monotonic()
    try:
        for rep in range(1, opts.reps + 1):
            for sc in scenarios:
                order = brokers if rep % 2 == 1 else list(reversed(brokers))
                for b in order:
                    n += 1
                    if opts.wait_idle > 0:
                        busy = wait_idle(opts.wait_idle)
                        if busy > 0.10:
                            print(f"[machine still {busy:.0%} busy]", end=" ", file=sys.stderr)
                    print(f"[{n}/{total} {time.monotonic() - t0:5.0f}s] rep {rep} {sc.name} on {b} ...",
                          end="", file=sys.stderr, flush=True)
                    run = run_one(Broker(b, opts), sc, rep, opts)
                    runs.append(run)
                    print(" " + summary(run), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; reporting the runs so far", file=sys.stderr)

    md = table(runs, scenarios, brokers, opts)
    print(md)
    if opts.out:
        Path(opts.out).write_text(md)
    if opts.raw:
        Path(opts.raw).write_text(json.dumps(
            [{"broker": r.broker, "scenario": r.scenario, "rep": r.rep, "error": r.error, "result": r.result}
             for r in runs], indent=1))
    return 0 if all(not r.error for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
