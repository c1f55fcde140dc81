#!/usr/bin/env python3
"""Rookery recovery with a large backlog of queued offline messages.

1. **Fill.** Start Rookery (durability strict by default) on a fresh data
   directory with the per-session queue limits raised. --subscribers
   persistent subscribers (MQTT 3.1.1, clean session off) subscribe QoS 1 to
   one topic and go offline. --publishers paho publisher processes send
   --messages / --subscribers QoS 1 messages of --payload bytes to that topic
   (disjoint 8-byte sequence numbers first in the payload), at most
   --inflight unacknowledged each, so that --messages copies end up queued
   in total (default 1,000,000 for 1 subscriber; `--subscribers 10` gives
   10 x 100,000). The fill is verified by counting PUBACKs and by reading
   `$SYS/broker/publish/messages/received` and `.../dropped` (published
   every `sys.interval_secs`, default 10 s).
2. **Queued.** With everything acknowledged and the broker idle: broker RSS
   (/proc/PID/status VmRSS), its peak so far (VmHWM), the data directory size
   (allocated blocks, like `du`).
3. **kill -9** the broker (by its PID) and restart it on the same data
   directory. **Recovery time** = spawn to its `rookery: MQTT listening on`
   line on stdout. RSS right after that line and after --idle-wait seconds
   idle (default 5), peak RSS of the new process, data directory size.
4. **Drain** (unless --drain 0): subscriber 0 reconnects with clean session
   off (paho, acks each message); time from CONNECT to the first message and
   to --drain distinct messages (default 100,000). With --check-all every
   subscriber is drained completely and compared with the acknowledged
   sequence numbers: acknowledged-but-lost must be 0 with strict durability.

    python3 benches/recovery.py                       # 1 subscriber x 1,000,000
    python3 benches/recovery.py --subscribers 10      # 10 x 100,000
    python3 benches/recovery.py --messages 100000 --check-all

Target (from the issue): broker RSS <= 200 MB with 1M queued messages.
Bounded in time; the broker is killed at the end (try/finally).
Python 3.11, standard library + paho-mqtt 2.x; reuses persistence_loss.py.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from persistence_loss import (  # noqa: E402
    Broker, Collector, Publisher, dir_size, new_client, connect_manual, read_status_kb,
    subscribe_offline, target_dir,
)

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.enums import MQTTErrorCode  # noqa: E402

TOPIC = "bench/recovery"


def publisher_proc(port: int, index: int, topic: str, start: int, count: int, size: int,
                   inflight: int, window: int, deadline_s: float, progress, result_q) -> None:
    """One publisher process: sends seq start..start+count-1, reports
    (index, sent, acked, acked_seqs_ranges, seconds, error)."""
    err = None
    pub = None
    t0 = time.monotonic()
    try:
        pub = Publisher(port, f"recovery-pub-{index}", topic, count=count, start=start, size=size,
                        inflight=inflight, window=window)
        pub.connect()
        deadline = time.monotonic() + deadline_s
        c = pub.c
        # Same as Publisher.run, with a progress counter for the parent.
        pub.first_publish = time.monotonic()
        while time.monotonic() < deadline:
            while pub.sent < count and len(pub.pending) < pub.window:
                seq = start + pub.sent
                info = c.publish(topic, seq.to_bytes(8, "big") + b"\0" * (size - 8), qos=1)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    raise RuntimeError(f"publish failed: {info.rc}")
                pub.pending[info.mid] = seq
                pub.sent += 1
            if pub.sent >= count and not pub.pending:
                break
            if c.loop(0.01) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise RuntimeError("connection lost")
            progress.value = len(pub.acked)
        progress.value = len(pub.acked)
        if pub.sent < count or pub.pending:
            err = f"deadline: sent {pub.sent}, unacked {len(pub.pending)}"
    except Exception as e:  # noqa: BLE001
        err = f"{type(e).__name__}: {e}"
    finally:
        acked = sorted(pub.acked) if pub else []
        if pub:
            pub.close()
    result_q.put((index, pub.sent if pub else 0, acked, time.monotonic() - t0, err))


class Sampler:
    """Samples the broker's VmRSS every `period` s; max per phase."""

    def __init__(self, broker: Broker, period: float = 0.2):
        self.broker, self.period = broker, period
        self.phase = "start"
        self.max: dict[str, int] = {}
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.wait(self.period):
            try:
                pid = self.broker.proc.pid if self.broker.proc else None
            except AttributeError:
                pid = None
            if pid is None:
                continue
            rss = read_status_kb(pid, "VmRSS")
            if rss is not None:
                self.max[self.phase] = max(self.max.get(self.phase, 0), rss)


def read_sys(port: int, newer_than_uptime: float, wait: float) -> dict[str, str]:
    """$SYS/broker/# values from a publication whose uptime is > newer_than_uptime
    (so that they were taken after the fill), waiting up to `wait` s."""
    vals: dict[str, str] = {}
    fresh = threading.Event()

    def on_message(_c, _u, msg):
        v = msg.payload.decode(errors="replace")
        vals[msg.topic] = v
        if msg.topic == "$SYS/broker/uptime":
            try:
                if float(v.split()[0]) > newer_than_uptime:
                    fresh.set()
            except ValueError:
                pass

    c = new_client(f"recovery-sys-{os.getpid()}", clean=True)
    c.on_message = on_message
    connect_manual(c, port)
    c.subscribe("$SYS/broker/#", qos=0)
    deadline = time.monotonic() + wait
    snapshot = None
    while time.monotonic() < deadline:
        c.loop(0.05)
        if fresh.is_set():
            # The values of one round arrive together; read a little longer.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                c.loop(0.05)
            snapshot = dict(vals)
            break
    try:
        c.disconnect()
        c.loop(0.1)
    except Exception:
        pass
    return snapshot or {}


def mb(kb: int | None) -> str:
    return "—" if kb is None else f"{kb / 1024:.1f} MiB"


def mbytes(b: int | None) -> str:
    return "—" if b is None else f"{b / 2 ** 20:.1f} MiB"


def main() -> int:
    tdir = target_dir()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000,
                    help="total queued copies (publishes x subscribers), default 1000000")
    ap.add_argument("--subscribers", type=int, default=1, help="offline persistent subscribers (default 1)")
    ap.add_argument("--publishers", type=int, default=2, help="publisher processes (default 2)")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes, >= 8 (default 64)")
    ap.add_argument("--inflight", type=int, default=100, help="paho max inflight per publisher (default 100)")
    ap.add_argument("--window", type=int, default=1000, help="max un-acked messages handed to paho (default 1000)")
    ap.add_argument("--durability", default="strict", choices=["strict", "batched", "none"])
    ap.add_argument("--max-queued-messages", type=int, default=2_000_000,
                    help="Rookery mqtt.max_queued_messages (default 2000000)")
    ap.add_argument("--max-queued-bytes", type=int, default=4 * 1024 ** 3,
                    help="Rookery mqtt.max_queued_bytes (default 4 GiB)")
    ap.add_argument("--rookery-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for Rookery (repeatable)")
    ap.add_argument("--fill-timeout", type=float, default=1800.0, help="max fill time, s (default 1800)")
    ap.add_argument("--start-timeout", type=float, default=600.0, help="max recovery time, s (default 600)")
    ap.add_argument("--idle-wait", type=float, default=5.0, help="idle seconds before the second RSS sample (5)")
    ap.add_argument("--drain", type=int, default=100_000,
                    help="after recovery, time subscriber 0 receiving this many distinct messages "
                         "(default 100000; 0 = skip)")
    ap.add_argument("--check-all", action="store_true",
                    help="drain every subscriber completely and check that every acknowledged "
                         "message arrived (acknowledged-but-lost must be 0 with strict)")
    ap.add_argument("--drain-idle", type=float, default=5.0, help="stop draining after S s without a message (5)")
    ap.add_argument("--rookery", default=str(tdir / "release" / "rookery"), help="rookery binary")
    ap.add_argument("--tmpdir", default=None, help="parent of the data directory (default: system temp)")
    ap.add_argument("--keep", action="store_true", help="keep the data directory and log")
    ap.add_argument("--out", help="also write the Markdown table to this file")
    opts = ap.parse_args()
    if opts.payload < 8:
        ap.error("--payload must be >= 8")
    if not os.access(opts.rookery, os.X_OK):
        print(f"error: {opts.rookery} not found (cargo build --release -p rookery)", file=sys.stderr)
        return 2
    check_all = opts.check_all
    drain_n = opts.drain
    publishes = opts.messages // opts.subscribers
    total = publishes * opts.subscribers

    env = {
        "ROOKERY_STORAGE__DURABILITY": opts.durability,
        "ROOKERY_MQTT__MAX_QUEUED_MESSAGES": str(opts.max_queued_messages),
        "ROOKERY_MQTT__MAX_QUEUED_BYTES": str(opts.max_queued_bytes),
    }
    for kv in opts.rookery_env:
        k, _, v = kv.partition("=")
        env[k] = v
    tmp = Path(tempfile.mkdtemp(prefix="recovery-", dir=opts.tmpdir))
    broker = Broker("rookery", tmp, rookery=opts.rookery, env=env, start_timeout=opts.start_timeout)
    sampler = Sampler(broker)
    rows: list[tuple[str, str]] = []
    notes: list[str] = []
    log = lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    procs: list[mp.Process] = []
    try:
        t_first = broker.start()
        log(f"broker up on {broker.port} in {t_first:.2f} s, pid {broker.pid}, data {broker.data}")
        rss_empty = broker.rss_kb()
        sub_ids = [f"recovery-sub-{i}" for i in range(opts.subscribers)]
        for sid in sub_ids:
            subscribe_offline(broker.port, sid, TOPIC)

        # ---- fill
        sampler.phase = "fill"
        ctx = mp.get_context("spawn")
        result_q = ctx.Queue()
        per = [publishes // opts.publishers + (1 if i < publishes % opts.publishers else 0)
               for i in range(opts.publishers)]
        starts = [sum(per[:i]) for i in range(opts.publishers)]
        progress = [ctx.Value("q", 0, lock=False) for _ in per]
        t_fill = time.monotonic()
        for i in range(opts.publishers):
            p = ctx.Process(target=publisher_proc, args=(
                broker.port, i, TOPIC, starts[i], per[i], opts.payload, opts.inflight, opts.window,
                opts.fill_timeout, progress[i], result_q), daemon=True)
            p.start()
            procs.append(p)
        log(f"fill: {opts.publishers} publisher(s), {publishes:,} publishes x {opts.subscribers} "
            f"subscriber(s) = {total:,} queued copies")
        results = []
        last = time.monotonic()
        while len(results) < len(procs):
            try:
                results.append(result_q.get(timeout=1.0))
            except Exception:  # queue.Empty
                pass
            if time.monotonic() - last >= 15:
                last = time.monotonic()
                done = sum(v.value for v in progress)
                el = last - t_fill
                log(f"  {done:,}/{publishes:,} acked, {done / el:,.0f}/s, broker RSS {mb(broker.rss_kb())}")
            if time.monotonic() - t_fill > opts.fill_timeout + 60:
                raise RuntimeError("fill did not finish in time")
            if not broker.alive():
                raise RuntimeError(f"broker died during the fill; log: {broker.log}")
        fill_s = time.monotonic() - t_fill
        for p in procs:
            p.join(timeout=10)
        errors = [r[4] for r in results if r[4]]
        acked_seqs = set()
        sent = 0
        for _i, s, acked, _t, _e in results:
            sent += s
            acked_seqs.update(acked)
        acked = len(acked_seqs)
        log(f"fill done in {fill_s:.1f} s: sent {sent:,}, acked {acked:,}, errors {errors}")
        if errors:
            notes.append(f"publisher errors: {errors}")

        # Wait for a $SYS round taken after the fill (also lets the broker settle).
        sys_wait = 25.0
        sys_vals = read_sys(broker.port, newer_than_uptime=-1, wait=3)
        try:
            uptime_now = float(sys_vals.get("$SYS/broker/uptime", "0").split()[0])
        except ValueError:
            uptime_now = 0
        sys_vals = read_sys(broker.port, newer_than_uptime=uptime_now, wait=sys_wait)
        received = sys_vals.get("$SYS/broker/publish/messages/received")
        dropped = sys_vals.get("$SYS/broker/publish/messages/dropped")
        store_bytes = sys_vals.get("$SYS/broker/store/bytes")
        log(f"$SYS: publish/messages/received {received}, dropped {dropped}, store/bytes {store_bytes}")

        sampler.phase = "queued"
        time.sleep(1.0)
        rss_queued = broker.rss_kb()
        hwm_fill = broker.hwm_kb()
        disk_queued = dir_size(broker.data)
        log(f"queued: RSS {mb(rss_queued)}, peak {mb(hwm_fill)}, data dir {mbytes(disk_queued)}")

        # ---- kill -9 and recover
        broker.kill9()
        log("killed with SIGKILL; restarting")
        sampler.phase = "recovery"
        recovery_s = broker.start()
        rss_ready = broker.rss_kb()
        hwm_ready = broker.hwm_kb()
        log(f"recovered in {recovery_s:.2f} s: RSS {mb(rss_ready)}, peak {mb(hwm_ready)}")
        sampler.phase = "idle"
        time.sleep(opts.idle_wait)
        rss_idle = broker.rss_kb()
        hwm_idle = broker.hwm_kb()
        disk_recovered = dir_size(broker.data)
        log(f"after {opts.idle_wait:g} s idle: RSS {mb(rss_idle)}, peak {mb(hwm_idle)}, "
            f"data dir {mbytes(disk_recovered)}")

        # ---- drain
        drain_rows = []
        if check_all or drain_n > 0:
            sampler.phase = "drain"
            targets = sub_ids if check_all else sub_ids[:1]
            for sid in targets:
                col = Collector(broker.port, sid)
                mark = min(drain_n, publishes) if drain_n > 0 else publishes
                until = publishes if check_all else mark
                col.want_marks = {mark, until}
                t_conn = col.collect(idle=opts.drain_idle, max_time=opts.fill_timeout, until=until)
                first = (col.first_msg - t_conn) if col.first_msg else None
                t_mark = (col.marks[mark] - t_conn) if mark in col.marks else None
                t_all = (col.marks[until] - t_conn) if check_all and until in col.marks else None
                lost = len(acked_seqs - col.seen) if check_all else None
                drain_rows.append((sid, mark, t_mark, until, t_all, len(col.seen), col.duplicates,
                                   first, lost, col.session_present))
                log(f"drain {sid}: {len(col.seen):,} distinct, {col.duplicates} dups, first after "
                    f"{first if first is None else round(first, 3)} s, {mark:,} after "
                    f"{t_mark if t_mark is None else round(t_mark, 2)} s" +
                    (f", all {until:,} after {t_all if t_all is None else round(t_all, 2)} s, "
                     f"acked-but-lost {lost}" if check_all else ""))
                if lost:
                    ls = sorted(acked_seqs - col.seen)
                    notes.append(f"{sid}: ACKED BUT LOST {len(ls)}: seq {ls[0]}..{ls[-1]}, first {ls[:10]}")
            rss_drain = broker.rss_kb()
        problems = broker.log_problems()
        if problems:
            notes.append(f"{len(problems)} warning/error log line(s), first: {problems[0][:300]}")
            for p in problems[:5]:
                log(f"broker log: {p[:300]}")

        # ---- table
        def row(label, value):
            rows.append((label, value))

        row("queued copies (publishes × subscribers)", f"{publishes:,} × {opts.subscribers} = {total:,}")
        row("publishes acknowledged (PUBACKs counted)", f"{acked:,}")
        row("`$SYS` publish/messages/received, dropped", f"{received or '—'}, {dropped or '—'}")
        row("fill time, rate", f"{fill_s:.1f} s, {acked / fill_s:,.0f} publishes/s")
        row("broker RSS empty (after start)", mb(rss_empty))
        row("broker RSS max during fill (sampled 5/s)", mb(sampler.max.get("fill")))
        row("**broker RSS with all messages queued, before kill**", f"**{mb(rss_queued)}**")
        row("broker peak RSS (VmHWM) before kill", mb(hwm_fill))
        row("data dir before kill", mbytes(disk_queued))
        if store_bytes:
            row("`$SYS` store/bytes before kill", f"{int(store_bytes) / 2 ** 20:.1f} MiB")
        row("**recovery time** (spawn → `MQTT listening`)", f"**{recovery_s:.2f} s**")
        row("broker RSS right after recovery", mb(rss_ready))
        row("broker peak RSS (VmHWM) during recovery", mb(hwm_ready))
        row(f"**broker RSS after {opts.idle_wait:g} s idle**", f"**{mb(rss_idle)}**")
        row("data dir after recovery", mbytes(disk_recovered))
        for sid, mark, t_mark, until, t_all, got, dups, first, lost, sp in drain_rows:
            row(f"drain {sid}: first message after CONNECT", "—" if first is None else f"{first * 1000:.0f} ms")
            row(f"**drain {sid}: first {mark:,} distinct messages after CONNECT**",
                "—" if t_mark is None else f"**{t_mark:.2f} s**, {mark / t_mark:,.0f} msg/s")
            if lost is not None:
                row(f"drain {sid}: all {until:,} after CONNECT",
                    "—" if t_all is None else f"{t_all:.2f} s, {until / t_all:,.0f} msg/s")
                row(f"drain {sid}: distinct received, duplicates", f"{got:,}, {dups}")
                row(f"**drain {sid}: acknowledged but lost**", f"**{lost}**")
            else:
                row(f"drain {sid}: distinct received, duplicates", f"{got:,}, {dups}")
            if not sp:
                row(f"drain {sid}: session present", "0 (session lost!)")
        if drain_rows:
            row("broker RSS max during drain (sampled)", mb(sampler.max.get("drain")))
            row("broker RSS after drain", mb(rss_drain))
    except Exception as e:  # noqa: BLE001
        notes.append(f"FAILED: {type(e).__name__}: {e}")
        log(f"FAILED: {type(e).__name__}: {e}")
    finally:
        sampler.stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        broker.kill9()
        if opts.keep:
            notes.append(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    out = [f"## Rookery recovery with {total:,} queued messages — {time.strftime('%Y-%m-%d %H:%M')}", ""]
    out.append(
        f"durability {opts.durability}; {opts.subscribers} offline persistent subscriber(s), "
        f"{opts.payload} B QoS 1 payloads from {opts.publishers} paho publisher process(es) "
        f"(max inflight {opts.inflight} each); {os.cpu_count()} CPUs, load average at the end "
        f"{os.getloadavg()[0]:.2f}. RSS = VmRSS of the broker process; MiB = 2^20 bytes.")
    out.append("")
    out.append("| metric | value |")
    out.append("|---|---:|")
    out += [f"| {a} | {b} |" for a, b in rows]
    if notes:
        out += ["", "Notes:", "", *[f"- {n}" for n in notes]]
    md = "\n".join(out) + "\n"
    print(md)
    if opts.out:
        Path(opts.out).write_text(md)
    return 0 if rows and not any(n.startswith("FAILED") or "LOST" in n for n in notes) else 1


if __name__ == "__main__":
    sys.exit(main())
