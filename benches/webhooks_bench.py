#!/usr/bin/env python3
"""Webhook bridge benchmarks (SPEC §9): what an endpoint costs the publishers, and how
fast events reach a fast endpoint.

    cargo build --release -p rookery -p rookery-benches
    python3 benches/webhooks_bench.py                     # both parts, ~3 min
    python3 benches/webhooks_bench.py --parts publish --qos 1 --reps 3
    python3 benches/webhooks_bench.py --parts delivery --events 200000

Parts:

- publish: publish throughput with `rookery-load fanin` (--publishers publishers, each on
  its own topic -> 1 subscriber on a `+` wildcard, 64 B, closed loop, window 100, max 100
  unacked per publisher) with (a) no webhook, (b) a dead endpoint (a loopback port where
  nothing listens), (c) an endpoint that answers every request after 2 s; (b) and (c)
  take `events = ["message.publish"]` with every other setting at its default (so their
  outbox fills to 100,000 events and then refuses new ones: `drop_new`; --overflow
  drop_oldest drops the oldest instead). Ratios = (b)/(a), (c)/(a).
  Configurations alternate per repetition (a b c, then c b a).
- delivery: `rookery-load fanin --rate R --duration D --warmup 0` publishes R x D
  messages (QoS --delivery-qos) as fast as scheduled to a broker with one endpoint on a
  fast local server (answers 204 at once), without batching (batch_max 1, concurrency 8)
  and with batching (batch_max 100, batch_age_ms 20, concurrency 4); outbox bounds are
  raised so that nothing overflows. The rate is events counted at the endpoint (distinct
  `X-Rookery-Delivery` ids) from the first to the last arrival; received must be >=
  published (at-least-once). The endpoint's own CPU is measured too.

Every run starts a fresh broker (durability strict, the default) from target/release/
with `--config FILE --mqtt-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir DIR`
(a fresh temporary DIR), reads the addresses it prints, and stops it by PID. Endpoint
servers are this script in a hidden mode (`--endpoint fast|slow`), one asyncio process
per run, keep-alive, Content-Length framing. Loopback only. Python 3.11, standard
library only; reuses compare.py's load runner and helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402
from groups_bench import cpu_s  # noqa: E402

APP = "webhooks-bench-app-token"
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ endpoint servers

class _Hook(asyncio.Protocol):
    """One keep-alive connection: HTTP/1.1 requests framed by Content-Length."""

    def __init__(self, st: dict, ids: set, delay: float):
        self.st, self.ids, self.delay = st, ids, delay
        self.buf = bytearray()
        self.need = -1
        self.batch = 1
        self.tr: asyncio.Transport | None = None

    def connection_made(self, tr) -> None:
        self.tr = tr
        self.st["connections"] += 1

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        st = self.st
        while True:
            if self.need < 0:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    return
                head = bytes(buf[:i]).lower()
                del buf[:i + 4]
                m = re.search(rb"\r\ncontent-length: *(\d+)", head)
                if m is None:
                    st["bad_requests"] += 1
                    self.tr.close()
                    return
                self.need = int(m.group(1))
                b = re.search(rb"\r\nx-rookery-batch: *(\d+)", head)
                self.batch = int(b.group(1)) if b else 1
                d = re.search(rb"\r\nx-rookery-delivery: *([0-9a-f,]+)", head)
                if d:
                    self.ids.update(d.group(1).split(b","))
            if len(buf) < self.need:
                return
            n = self.need
            in_body = buf.count(b'"delivery":', 0, n)
            del buf[:n]
            self.need = -1
            now = time.monotonic()
            if st["first"] is None:
                st["first"] = now
            st["last"] = now
            st["requests"] += 1
            st["events"] += self.batch
            st["body_events"] += in_body
            if in_body != self.batch:
                st["count_mismatch"] += 1
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self._answer)
            else:
                self.tr.write(b"HTTP/1.1 204 No Content\r\n\r\n")

    def _answer(self) -> None:
        if self.tr and not self.tr.is_closing():
            self.tr.write(b"HTTP/1.1 204 No Content\r\n\r\n")


def endpoint_main(kind: str) -> int:
    """Hidden mode: serve on a free loopback port, print `ready PORT`; each `stats` line
    on stdin is answered with one JSON line; EOF ends it."""
    delay = {"fast": 0.0, "slow": 2.0}[kind]
    st = {"connections": 0, "requests": 0, "events": 0, "body_events": 0, "count_mismatch": 0,
          "bad_requests": 0, "first": None, "last": None}
    ids: set = set()

    def control(loop) -> None:
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps({**st, "unique": len(ids)}), flush=True)
        loop.call_soon_threadsafe(loop.stop)

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(lambda: _Hook(st, ids, delay), "127.0.0.1", 0, backlog=1024))
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    threading.Thread(target=control, args=(loop,), daemon=True).start()
    loop.run_forever()
    return 0


class Endpoint:
    """An endpoint server process (this script, --endpoint KIND)."""

    def __init__(self, kind: str):
        self.proc = subprocess.Popen([sys.executable, __file__, "--endpoint", kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "ready":
            self.close()
            raise RuntimeError(f"endpoint server {kind}: {line!r}")
        self.port = int(line[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.cpu0 = cpu_s(self.proc.pid)  # start-up excluded

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        st = json.loads(self.proc.stdout.readline())
        st["cpu_s"] = cpu_s(self.proc.pid) - self.cpu0
        return st

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                compare.stop_process(self.proc)


# --------------------------------------------------------------------------- broker

def toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


class ConfigBroker:
    """A Rookery started with `--config` on port 0, shaped for compare.run_one (name,
    port, proc, log, start, stop)."""

    def __init__(self, binary: str, webhooks: list[dict]):
        self.name = "rookery"
        self.binary = binary
        self.webhooks = webhooks
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.port = self.http_port = 0
        self.log = Path()
        self.cpu0 = 0.0

    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="webhooks-bench-")
        tmp = Path(self.tmp.name)
        (tmp / "data").mkdir()
        self.log = tmp / "broker.log"
        conf = tmp / "rookery.toml"
        lines = ["[auth]", f"admin_token = {toml_value(APP)}", ""]
        for w in self.webhooks:
            lines.append("[[webhooks]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in w.items()]
            lines.append("")
        conf.write_text("\n".join(lines))
        env = dict(os.environ)
        env["RUST_LOG"] = "warn"
        cmd = [self.binary, "--config", str(conf), "--mqtt-listen", "127.0.0.1:0",
               "--http-listen", "127.0.0.1:0", "--data-dir", str(tmp / "data")]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        deadline = time.monotonic() + 15
        while True:
            text = self.log.read_text(errors="replace")
            mqtt = re.search(r"^rookery: MQTT listening on \S+:(\d+)$", text, re.M)
            http = re.search(r"^rookery: HTTP listening on \S+:(\d+)$", text, re.M)
            if mqtt and http:
                self.port, self.http_port = int(mqtt.group(1)), int(http.group(1))
                self.cpu0 = cpu_s(self.proc.pid)  # start-up excluded
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited with code {self.proc.returncode}" if self.proc.poll() is not None
                       else "printed no MQTT address within 15 s")
                self.stop()
                raise RuntimeError(f"rookery {why}; log: {compare.tail(self.log)}")
            time.sleep(0.05)

    def collect(self, res: dict) -> None:
        """Adds the broker's webhookstats, total CPU and log tail to `res` (while it runs)."""
        try:
            if self.webhooks:
                res["webhookstats"] = self.api(op="webhookstats").get("webhooks")
            res["broker_cpu_total_s"] = cpu_s(self.proc.pid) - self.cpu0
        except (OSError, ValueError) as e:
            res["collect_error"] = f"{type(e).__name__}: {e}"
        res["broker_log_tail"] = compare.tail(self.log, 3)
        res["broker_log_bytes"] = self.log.stat().st_size

    def api(self, **req) -> dict:
        body = json.dumps({"token": APP, **req}).encode()
        r = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/api", data=body,
                                   headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(r, timeout=10) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        compare.stop_process(self.proc)
        self.proc = None
        if self.tmp:
            self.tmp.cleanup()
            self.tmp = None


# ---------------------------------------------------------------- part 1: publish

PUBLISH_CONFIGS = ["none", "dead", "slow"]
PUBLISH_TITLE = {"none": "(a) no webhook", "dead": "(b) dead endpoint",
                 "slow": "(c) 2 s endpoint"}


def fanin_args(opts, qos: int) -> list[str]:
    return ["fanin", "--publishers", str(opts.publishers), "--subscribers", "1",
            "--qos", str(qos), "--payload", "64", "--window", "100", "--max-inflight", "100"]


def run_publish(opts, qos: int, config: str, rep: int) -> dict:
    endpoint = None
    hooks: list[dict] = []
    if config == "slow":
        endpoint = Endpoint("slow")
        hooks = [{"url": endpoint.url, "events": ["message.publish"]}]
    elif config == "dead":
        hooks = [{"url": f"http://127.0.0.1:{compare.free_port()}/hook", "events": ["message.publish"]}]
    for hook in hooks:
        if opts.overflow:
            hook["overflow"] = opts.overflow
        if opts.outbox_max_events:
            # Large enough that the outbox never fills during the run: what storing every
            # event costs the publishers, before any overflow policy applies.
            hook["outbox_max_events"] = opts.outbox_max_events
            hook["outbox_max_bytes"] = 1 << 34
    try:
        broker = ConfigBroker(opts.rookery, hooks)
        sc = compare.Scenario(f"publish-{config}", "", fanin_args(opts, qos), [])
        run = compare.run_one(broker, sc, rep, opts, lambda b, run: b.collect(run.result))
        res = dict(run.result)
        if run.error:
            res["error"] = run.error
        if endpoint:
            res["endpoint"] = endpoint.stats()
        pm, cpu = res.get("published_measured"), res.get("broker_cpu_s")
        res["cpu_us_per_msg"] = cpu * 1e6 / pm if pm and cpu is not None else None
        return res
    finally:
        if endpoint:
            endpoint.close()


def part_publish(opts, report: list[str], raw: dict) -> None:
    runs: dict[tuple[int, str], list[dict]] = {}
    notes: list[str] = []
    for qos, reps in zip(opts.qos, opts.reps):
        for rep in range(1, reps + 1):
            order = PUBLISH_CONFIGS if rep % 2 == 1 else list(reversed(PUBLISH_CONFIGS))
            for config in order:
                if over_budget(opts):
                    notes.append(f"- budget reached: QoS {qos} {config} rep {rep} not run")
                    continue
                settle(opts)
                log(f"publish QoS {qos} rep {rep} {config} ...")
                r = run_publish(opts, qos, config, rep)
                raw.setdefault("publish", []).append({"qos": qos, "config": config, "rep": rep, "result": r})
                ws = (r.get("webhookstats") or [{}])[0]
                log(f"  {compare.fmt(r.get('publish_rate'))} msgs/s, {compare.fmt(r.get('cpu_us_per_msg'))} "
                    f"µs/msg, loss {r.get('loss')}, other load {r.get('other_cpu_pct')}%"
                    + (f"; webhook delivered {ws.get('delivered')}, dropped {ws.get('dropped_overflow')}, "
                       f"depth {ws.get('outbox_depth')}" if ws else ""))
                if r.get("error"):
                    notes.append(f"- QoS {qos} {config} rep {rep}: FAILED: {r['error']}")
                    log(f"  FAILED: {r['error']}")
                    continue
                if r.get("errors"):
                    notes.append(f"- QoS {qos} {config} rep {rep}: {'; '.join(r['errors'][:3])}")
                if r.get("loss") or r.get("pub_unacked"):
                    notes.append(f"- QoS {qos} {config} rep {rep}: loss {r.get('loss')}, "
                                 f"unacked {r.get('pub_unacked')}")
                runs.setdefault((qos, config), []).append(r)
    metrics = [
        ("publish_rate", "publishes/s accepted ↑"),
        ("cpu_us_per_msg", "broker CPU µs/message ↓"),
        ("broker_cpu_pct", "broker CPU % of one core"),
        ("broker_rss_max_kb", "broker RSS max KiB ↓"),
        ("loss", "lost MQTT deliveries ↓"),
        ("webhookstats.0.delivered", "webhook events delivered"),
        ("webhookstats.0.dropped_overflow", "webhook events dropped (outbox full)"),
        ("webhookstats.0.outbox_depth", "outbox depth at the end"),
        ("webhookstats.0.failures", "failed requests"),
        ("other_cpu_pct", "other load on the machine, % of a core"),
    ]
    report.append(f"### Publish throughput with a webhook: fan-in {opts.publishers} → 1, 64 B, "
                  "closed loop (window 100)")
    report.append("")
    report.append(f"Repetitions per QoS {', '.join(f'{q}: {n}' for q, n in zip(opts.qos, opts.reps))}, "
                  f"alternating; {opts.duration:g} s measured after {opts.warmup:g} s warm-up; fresh "
                  "broker (durability strict) and data dir per run; median (min–max). Webhook: "
                  "`events = [\"message.publish\"]`, other settings default (outbox "
                  f"{opts.outbox_max_events or 100_000:,} events, "
                  f"overflow {opts.overflow or 'drop_new (the default)'}, concurrency 4, timeout 5 s). "
                  "Ratios = (b)/(a) and (c)/(a).")
    report.append("")
    head = ["QoS", "metric", *[PUBLISH_TITLE[c] for c in PUBLISH_CONFIGS], "(b)/(a)", "(c)/(a)"]
    report.append("| " + " | ".join(head) + " |")
    report.append("|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|")
    for qos in opts.qos:
        for i, (key, label) in enumerate(metrics):
            cols = {c: [get(r, key) for r in runs.get((qos, c), [])] for c in PUBLISH_CONFIGS}
            ratios = ["", ""]
            if key in ("publish_rate", "cpu_us_per_msg", "broker_rss_max_kb"):
                ratios = [compare.ratio(cols[c], cols["none"]) for c in ("dead", "slow")]
                if key == "publish_rate":
                    ratios = [f"**{x}**" for x in ratios]
            cells = [compare.cell(cols[c]) for c in PUBLISH_CONFIGS]
            report.append("| " + " | ".join([str(qos) if i == 0 else "", label, *cells, *ratios]) + " |")
    report.append("")
    report.append(f"Load: `rookery-load {' '.join(fanin_args(opts, 1)).replace('--qos 1', '--qos Q')} "
                  f"--duration {opts.duration:g} --warmup {opts.warmup:g} --drain {opts.drain:g}`")
    if notes:
        report += ["", "Notes:", "", *notes]
    report.append("")


def get(d, path: str):
    """compare.get that also indexes lists (`webhookstats.0.delivered`)."""
    for part in path.split("."):
        if isinstance(d, list):
            d = d[int(part)] if part.isdigit() and int(part) < len(d) else None
        elif isinstance(d, dict):
            d = d.get(part)
        else:
            return None
    return d


# --------------------------------------------------------------- part 2: delivery

DELIVERY_CONFIGS = {
    "unbatched": {"batch_max": 1, "concurrency": 8},
    "batched": {"batch_max": 100, "batch_age_ms": 20, "concurrency": 4},
}
DELIVERY_TITLE = {"unbatched": "batch_max 1, concurrency 8",
                  "batched": "batch_max 100, batch_age_ms 20, concurrency 4"}


def delivery_args(opts) -> list[str]:
    return ["fanin", "--publishers", str(opts.publishers), "--subscribers", "1",
            "--qos", str(opts.delivery_qos), "--payload", "64", "--max-inflight", "100",
            "--rate", str(opts.delivery_rate)]


def run_delivery(opts, config: str) -> dict:
    endpoint = Endpoint("fast")

    def wait_delivered(broker: ConfigBroker, run: compare.Run) -> None:
        """After the load run: wait until the endpoint has an event per published message
        (or nothing new arrived for --stall s, or --delivery-timeout s passed)."""
        res = run.result
        want = res.get("published") or 0
        t0 = time.monotonic()
        seen, t_seen = -1, t0
        while time.monotonic() - t0 < opts.delivery_timeout:
            n = endpoint.stats()["unique"]
            if n >= want > 0:
                break
            if n != seen:
                seen, t_seen = n, time.monotonic()
            elif time.monotonic() - t_seen > opts.stall:
                break
            time.sleep(0.25)
        res["waited_after_load_s"] = round(time.monotonic() - t0, 2)
        broker.collect(res)

    hook = {"url": endpoint.url, "events": ["message.publish"], **DELIVERY_CONFIGS[config],
            "outbox_max_events": 10 * opts.events, "outbox_max_bytes": 1 << 30}
    try:
        broker = ConfigBroker(opts.rookery, [hook])
        duration = opts.events / opts.delivery_rate
        lopts = argparse.Namespace(load=opts.load, duration=duration, warmup=0,
                                   drain=opts.drain, hold=0)
        sc = compare.Scenario(f"delivery-{config}", "", delivery_args(opts), [])
        run = compare.run_one(broker, sc, 1, lopts, wait_delivered)
        res = dict(run.result)
        if run.error:
            res["error"] = run.error
        st = endpoint.stats()
        res["endpoint"] = st
        span = (st["last"] - st["first"]) if st["first"] is not None else None
        n = st["unique"]
        res["span_s"] = span
        res["events_per_s"] = (n - 1) / span if span and n > 1 else None
        res["events_per_request"] = st["events"] / st["requests"] if st["requests"] else None
        res["duplicates"] = st["events"] - n
        res["endpoint_cpu_pct"] = 100 * st["cpu_s"] / span if span else None
        res["endpoint_cpu_us_per_event"] = st["cpu_s"] * 1e6 / n if n else None
        total = res.get("broker_cpu_total_s")
        res["broker_cpu_us_per_event"] = total * 1e6 / n if n and total else None
        res["complete"] = n >= (res.get("published") or 0) > 0
        res["publish_s"] = duration
        return res
    finally:
        endpoint.close()


def part_delivery(opts, report: list[str], raw: dict) -> None:
    results: dict[str, dict] = {}
    notes: list[str] = []
    for config in DELIVERY_CONFIGS:
        if over_budget(opts):
            notes.append(f"- budget reached: {config} not run")
            continue
        settle(opts)
        log(f"delivery {config} ({opts.events:,} messages at {opts.delivery_rate:,}/s) ...")
        r = run_delivery(opts, config)
        raw.setdefault("delivery", []).append({"config": config, "result": r})
        st = r.get("endpoint", {})
        log(f"  published {r.get('published')}, endpoint got {st.get('unique')} distinct "
            f"({st.get('requests')} requests) in {compare.fmt(r.get('span_s'))} s: "
            f"{compare.fmt(r.get('events_per_s'))} events/s, endpoint CPU "
            f"{compare.fmt(r.get('endpoint_cpu_pct'))}%")
        if r.get("error"):
            notes.append(f"- {config}: FAILED: {r['error']}")
        if not r.get("complete"):
            notes.append(f"- {config}: **incomplete**: {st.get('unique')} distinct events received for "
                         f"{r.get('published')} published (waited {r.get('waited_after_load_s')} s after "
                         f"the load); webhookstats {json.dumps(r.get('webhookstats'))}")
        if st.get("count_mismatch") or st.get("bad_requests"):
            notes.append(f"- {config}: {st.get('count_mismatch')} requests whose body did not hold "
                         f"X-Rookery-Batch events, {st.get('bad_requests')} without Content-Length")
        if r.get("span_s") and r["span_s"] < 1.2 * r["publish_s"]:
            notes.append(f"- {config}: the endpoint kept up with the publishers "
                         f"({r['span_s']:.2f} s for {r['publish_s']:.2f} s of publishing): the rate "
                         "is the publish rate, a lower bound of the bridge's")
        results[config] = r
    rows = [
        ("published", "messages published (QoS %d)" % opts.delivery_qos),
        ("endpoint.unique", "distinct events received"),
        ("duplicates", "duplicates received"),
        ("endpoint.requests", "HTTP requests"),
        ("events_per_request", "events per request"),
        ("span_s", "first → last event, s"),
        ("events_per_s", "**events/s** (first → last) ↑"),
        ("endpoint_cpu_pct", "endpoint server CPU % of one core"),
        ("endpoint_cpu_us_per_event", "endpoint server CPU µs/event"),
        ("broker_cpu_us_per_event", "broker CPU µs/event (all of the run: MQTT publish + delivery + webhooks)"),
        ("webhookstats.0.retries", "retries"),
        ("webhookstats.0.dropped_overflow", "dropped (outbox full)"),
    ]
    report.append(f"### Event delivery to a fast local endpoint ({opts.events:,} messages)")
    report.append("")
    report.append(
        f"`rookery-load {' '.join(delivery_args(opts))} --duration {opts.events / opts.delivery_rate:g} "
        f"--warmup 0` publishes {opts.events:,} messages (64 B); one webhook "
        "(`events = [\"message.publish\"]`, outbox bounds raised so nothing overflows) to a "
        "Python asyncio server on loopback that answers 204 at once (keep-alive; it counts "
        "distinct `X-Rookery-Delivery` ids). Fresh broker (durability strict) per run; one run each.")
    report.append("")
    cfgs = [c for c in DELIVERY_CONFIGS if c in results]
    report.append("| metric | " + " | ".join(DELIVERY_TITLE[c] for c in cfgs) + " |")
    report.append("|---|" + "---:|" * len(cfgs))
    for key, label in rows:
        cells = []
        for c in cfgs:
            v = get(results[c], key)
            cells.append(f"**{compare.fmt(v)}**" if key == "events_per_s" and v else compare.fmt(v))
        report.append(f"| {label} | " + " | ".join(cells) + " |")
    if notes:
        report += ["", "Notes:", "", *notes]
    report.append("")


# ------------------------------------------------------------------------------ main

def over_budget(opts) -> bool:
    return time.monotonic() - T0 > opts.budget


def settle(opts) -> None:
    """Before a run: wait (up to --wait-idle s) for the machine to be < 10% busy, so that
    no other load run overlaps ours."""
    if opts.wait_idle > 0:
        busy = compare.wait_idle(opts.wait_idle)
        if busy > 0.10:
            log(f"  (machine still {busy:.0%} busy after waiting {opts.wait_idle:g} s)")


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--endpoint":
        return endpoint_main(sys.argv[2])
    tdir = compare.target_dir()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="publish,delivery", help="comma-separated: publish, delivery")
    ap.add_argument("--qos", default="1,0", help="publish: QoS levels, in order (default 1,0)")
    ap.add_argument("--reps", default="2,1", help="publish: repetitions per QoS level (default 2,1)")
    ap.add_argument("--publishers", type=int, default=20, help="fan-in publishers (default 20)")
    ap.add_argument("--overflow", choices=["drop_new", "drop_oldest"],
                    help="publish: the endpoints' overflow policy (default: the broker's, drop_new)")
    ap.add_argument("--outbox-max-events", type=int, metavar="N",
                    help="publish: the endpoints' outbox bound (default: the broker's, 100,000); "
                         "a bound the run never reaches measures the cost of storing every event")
    ap.add_argument("--duration", type=float, default=6.0, help="publish: measured seconds (default 6)")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--drain", type=float, default=2.0)
    ap.add_argument("--events", type=int, default=100_000, help="delivery: messages to publish")
    ap.add_argument("--delivery-rate", type=int, default=100_000,
                    help="delivery: publish rate, msgs/s over all publishers (default 100,000)")
    ap.add_argument("--delivery-qos", type=int, default=1)
    ap.add_argument("--delivery-timeout", type=float, default=60.0,
                    help="delivery: max seconds to wait for the endpoint after the load (default 60)")
    ap.add_argument("--stall", type=float, default=10.0,
                    help="delivery: stop waiting after this long without a new event (default 10)")
    ap.add_argument("--wait-idle", type=float, default=30.0, metavar="S",
                    help="before each run, wait up to S s for the machine to be < 10%% busy "
                         "(default 30; 0 = don't wait)")
    ap.add_argument("--budget", type=float, default=220.0,
                    help="seconds after which no new run starts (default 220)")
    ap.add_argument("--rookery", default=str(tdir / "release" / "rookery"))
    ap.add_argument("--load", default=str(tdir / "release" / "rookery-load"))
    ap.add_argument("--out", help="also write the Markdown report here")
    ap.add_argument("--raw", default="/tmp/webhooks_bench.json",
                    help="raw results (JSON) (default /tmp/webhooks_bench.json)")
    opts = ap.parse_args()
    opts.hold = 0
    opts.qos = [int(q) for q in opts.qos.split(",") if q.strip()]
    opts.reps = [int(n) for n in opts.reps.split(",") if n.strip()]
    opts.reps += [opts.reps[-1]] * (len(opts.qos) - len(opts.reps))
    parts = [p.strip() for p in opts.parts.split(",") if p.strip()]
    for p in parts:
        if p not in ("publish", "delivery"):
            ap.error(f"unknown part {p!r}")
    for binary in (opts.rookery, opts.load):
        if not os.access(binary, os.X_OK):
            print(f"error: {binary} not found; run: cargo build --release -p rookery -p rookery-benches",
                  file=sys.stderr)
            return 2
    compare.raise_fd_limit()

    report = [f"## Webhooks benchmarks — {time.strftime('%Y-%m-%d %H:%M')} ({os.cpu_count()} CPUs, loopback)", ""]
    raw: dict = {"argv": sys.argv[1:], "cpus": os.cpu_count()}
    ok = True
    try:
        for p in parts:
            try:
                {"publish": part_publish, "delivery": part_delivery}[p](opts, report, raw)
            except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
                ok = False
                report += [f"### {p}: FAILED", "", str(e), ""]
                log(f"{p} FAILED: {e}")
    except KeyboardInterrupt:
        print("\ninterrupted; reporting what ran", file=sys.stderr)
        ok = False
    report.append(f"Total time {time.monotonic() - T0:.0f} s. "
                  f"`python3 benches/webhooks_bench.py {' '.join(sys.argv[1:])}`".rstrip())
    md = "\n".join(report) + "\n"
    print(md)
    if opts.out:
        Path(opts.out).write_text(md)
    if opts.raw:
        Path(opts.raw).write_text(json.dumps(raw, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
