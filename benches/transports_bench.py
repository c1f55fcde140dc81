#!/usr/bin/env python3
"""Fan-out throughput of Rookery over each transport: TCP, TLS, WebSocket and WSS.

Scenario (as compare.py's `fanout`): 1 publisher -> 100 subscribers on one topic, QoS 0,
64 B payloads, closed loop with a window of 1000, `rookery-load fanout`. Every run starts
a fresh broker (release build, `RUST_LOG=warn`) with all four listeners; the certificate
is made with the openssl CLI for this run.

The load generator reaches TLS, WebSocket and WSS through a local relay in its own
process (benches/src/relay.rs), so `tcp-relay` (plain TCP through the same relay) is
the baseline for those three; `tcp` is direct. Ratios are against `tcp-relay` and `tcp`.

    cargo build --release -p rookery -p rookery-benches
    python3 benches/transports_bench.py            # 5 runs of ~12 s: about 1.5 minutes

Options: --duration S (measured seconds, default 8), --transports a,b,c, --out FILE.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import stop_process, target_dir  # noqa: E402

LINE = re.compile(r"^rookery: (MQTT|HTTP|MQTT/TLS|HTTP/TLS) listening on (\S+):(\d+)$")
TRANSPORTS = ["tcp", "tcp-relay", "tls", "ws", "wss"]
# Which listener each transport's --port names.
LISTENER = {"tcp": "MQTT", "tcp-relay": "MQTT", "tls": "MQTT/TLS", "ws": "HTTP", "wss": "HTTP/TLS"}


def make_certificates(directory: Path) -> dict[str, Path]:
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "cert", "key", "csr")}
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for args in (
        ["req", "-x509", *ec, "-keyout", paths["ca-key"], "-out", paths["ca"], "-days", "2",
         "-subj", "/CN=bench CA"],
        ["req", *ec, "-keyout", paths["key"], "-out", paths["csr"], "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", paths["csr"], "-CA", paths["ca"], "-CAkey", paths["ca-key"],
         "-CAcreateserial", "-out", paths["cert"], "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return paths


def start_broker(binary: Path, tmp: Path, certs: dict[str, Path]):
    config = tmp / "rookery.toml"
    config.write_text(
        "[mqtt]\n"
        'tls_listen = "127.0.0.1:0"\n'
        f'tls_cert = "{certs["cert"]}"\n'
        f'tls_key = "{certs["key"]}"\n'
        "[http]\n"
        'tls_listen = "127.0.0.1:0"\n'
    )
    data = tempfile.mkdtemp(prefix="data-", dir=tmp)
    proc = subprocess.Popen(
        [str(binary), "--config", str(config), "--data-dir", data,
         "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        text=True, env={"RUST_LOG": "warn", "PATH": "/usr/bin:/bin"},
    )
    ports: dict[str, int] = {}
    for line in proc.stdout:
        match = LINE.match(line.strip())
        if match:
            ports[match.group(1)] = int(match.group(3))
        if match and match.group(1) == "MQTT":
            break
    # Keep draining stdout so the broker never blocks on the pipe.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    if len(ports) != 4:
        stop_process(proc)
        raise RuntimeError(f"the broker did not print its four listeners: {ports}")
    return proc, ports


def run(load: Path, binary: Path, tmp: Path, certs, transport: str, duration: float) -> dict:
    proc, ports = start_broker(binary, tmp, certs)
    try:
        cmd = [str(load), "fanout", "--publishers", "1", "--subscribers", "100", "--qos", "0",
               "--payload", "64", "--window", "1000", "--transport", transport,
               "--tls-ca", str(certs["ca"]), "--port", str(ports[LISTENER[transport]]),
               "--broker-pid", str(proc.pid), "--duration", str(duration), "--warmup", "2",
               "--drain", "2", "--json"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
        if line is None:
            return {"error": f"no JSON (exit {out.returncode}): {out.stderr.strip()[-300:]}"}
        return json.loads(line)
    finally:
        stop_process(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--out")
    opts = parser.parse_args()
    release = target_dir() / "release"
    binary, load = release / "rookery", release / "rookery-load"
    for path in (binary, load):
        if not path.exists():
            print(f"missing {path}: cargo build --release -p rookery -p rookery-benches")
            return 1
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-transports-") as name:
        tmp = Path(name)
        certs = make_certificates(tmp)
        for transport in opts.transports.split(","):
            result = run(load, binary, tmp, certs, transport, opts.duration)
            results[transport] = result
            print(f"{transport}: {result.get('error') or round(result.get('delivery_rate', 0))} deliveries/s",
                  file=sys.stderr)
    rows = ["| transport | deliveries/s | vs tcp | vs tcp-relay | broker CPU µs/delivery |",
            "|---|---|---|---|---|"]
    base = results.get("tcp", {}).get("delivery_rate")
    relay = results.get("tcp-relay", {}).get("delivery_rate")
    for transport, result in results.items():
        rate = result.get("delivery_rate")
        if rate is None:
            rows.append(f"| {transport} | error: {result.get('error')} | | | |")
            continue
        cpu = result.get("cpu_us_per_delivery")
        rows.append(
            f"| {transport} | {rate:,.0f} | {rate / base:.2f} | "
            f"{rate / relay:.2f} | {cpu:.2f} |" if base and relay and cpu is not None else
            f"| {transport} | {rate:,.0f} | | | |")
    table = "\n".join(rows)
    print(table)
    if opts.out:
        Path(opts.out).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
