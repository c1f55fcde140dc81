#!/usr/bin/env python3
"""Rookery's durability modes side by side: persistent-session QoS 1 throughput and
publish-to-ack latency with `strict`, `batched` and `none` (and Mosquitto, in memory,
for reference), in one run, alternating the brokers per repetition.

    cargo build --release -p rookery -p rookery-benches
    python3 benches/storage_bench.py                # 3 reps, ~6 min
    python3 benches/storage_bench.py --reps 1 --configs strict,none

Scenarios (every subscriber has a persistent session, so with `strict` each QoS 1
delivery to it is stored before the publisher's PUBACK, unless the subscriber
acknowledged it first — then nothing of it is written):

- pairs-persistent: 50 publisher/subscriber pairs, own topic each, QoS 1, 64 B, closed
  loop (window 100, max 100 unacked per publisher): throughput.
- ack-latency: the same 50 pairs at a fixed 20,000 msg/s in total (open loop): PUBACK
  latency from writing the PUBLISH (p50/p99) and delivery latency.

The table's last column is strict / none. Reuses compare.py's broker handling.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare  # noqa: E402

PAIRS = ["pairs", "--pairs", "50", "--qos", "1", "--payload", "64",
         "--max-inflight", "100", "--persistent-subscribers"]
SCENARIOS = [
    compare.Scenario("pairs-persistent", "50 persistent QoS 1 pairs, closed loop (window 100)",
                     PAIRS + ["--window", "100"], []),
    compare.Scenario("ack-latency", "50 persistent QoS 1 pairs at 20,000 msg/s (open loop)",
                     PAIRS + ["--rate", "20000"], []),
]
CONFIGS = {
    "strict": ["ROOKERY_STORAGE__DURABILITY=strict"],
    "batched": ["ROOKERY_STORAGE__DURABILITY=batched"],
    "none": ["ROOKERY_STORAGE__DURABILITY=none"],
    "mosquitto": None,
}
METRICS = [
    ("delivery_rate", "deliveries/s ↑"),
    ("cpu_us_per_delivery", "broker CPU µs/delivery ↓"),
    ("ack_latency_us.p50", "PUBACK latency p50 µs ↓"),
    ("ack_latency_us.p99", "PUBACK latency p99 µs ↓"),
    ("latency_us.p99", "delivery latency p99 µs ↓"),
    ("loss", "lost deliveries ↓"),
    ("broker_rss_max_kb", "broker RSS max KiB ↓"),
]


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    text = f"{med:,.0f}" if med >= 100 else f"{med:.2f}"
    if min(values) != max(values):
        lo, hi = min(values), max(values)
        text += f" ({lo:,.0f}–{hi:,.0f})" if hi >= 100 else f" ({lo:.2f}–{hi:.2f})"
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    tdir = Path(__file__).resolve().parent.parent / "target"
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--configs", default="strict,batched,none,mosquitto")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--drain", type=float, default=2)
    ap.add_argument("--rookery", default=str(tdir / "release" / "rookery"))
    ap.add_argument("--mosquitto", default="/usr/sbin/mosquitto")
    ap.add_argument("--load", default=str(tdir / "release" / "rookery-load"))
    ap.add_argument("--out", help="also write the table to this file")
    opts = ap.parse_args()
    opts.hold = 0
    opts.mosquitto_nodelay = False
    configs = [c.strip() for c in opts.configs.split(",") if c.strip()]
    results: dict[tuple[str, str], list[dict]] = {}
    for rep in range(opts.reps):
        order = configs if rep % 2 == 0 else list(reversed(configs))
        for sc in SCENARIOS:
            for name in order:
                broker_opts = copy.copy(opts)
                broker_opts.rookery_env = CONFIGS[name] or []
                broker = compare.Broker("mosquitto" if name == "mosquitto" else "rookery", broker_opts)
                run = compare.run_one(broker, sc, rep, broker_opts)
                status = run.error or f"{run.result.get('delivery_rate', 0):,.0f} deliveries/s"
                print(f"rep {rep + 1} {sc.name:17} {name:9} {status}", file=sys.stderr)
                if not run.error:
                    results.setdefault((sc.name, name), []).append(run.result)
    lines = [
        f"{opts.reps} repetition(s), {opts.duration:g} s measured after {opts.warmup:g} s warm-up; "
        "median (min–max); last column strict / none.",
        "",
        "| scenario | metric | " + " | ".join(configs) + " | strict/none |",
        "|---|---|" + "---:|" * (len(configs) + 1),
    ]
    for sc in SCENARIOS:
        for i, (path, label) in enumerate(METRICS):
            cells, medians = [], {}
            for name in configs:
                values = [v for r in results.get((sc.name, name), [])
                          if isinstance(v := compare.get(r, path), (int, float))]
                cells.append(fmt(values))
                if values:
                    medians[name] = statistics.median(values)
            ratio = "–"
            if medians.get("none"):
                ratio = f"{medians.get('strict', 0) / medians['none']:.2f}"
            lines.append(f"| {sc.name if i == 0 else ''} | {label} | " + " | ".join(cells) + f" | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        Path(opts.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
