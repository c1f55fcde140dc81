"""MQTT.js (Node) over WebSocket and WSS against the rookery binary, with a paho client on
plain TCP seeing what MQTT.js publishes: the same session code behind every transport.

MQTT.js lives in tests/node (package.json, package-lock.json); it is installed there
with `npm ci` when node_modules is missing. Skipped only when `node` is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import REPO, Broker

NODE_DIR = REPO / "tests" / "node"
SCRIPT = NODE_DIR / "roundtrip.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    if not (NODE_DIR / "node_modules" / "mqtt").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install MQTT.js into tests/node"
        subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR)],
                       check=True, timeout=300)
    return node


def run_mqttjs(node: str, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(SCRIPT), "--url", url, *args],
                          capture_output=True, text=True, timeout=30)


def make_pki(directory: Path, name: str) -> dict[str, Path]:
    """A CA and a server certificate for localhost/127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make test certificates)")
    ca_key, ca, key, csr, cert = (directory / f"{name}-{part}" for part in
                                  ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = directory / f"{name}-ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
            "-subj", f"/CN={name} test CA")
    openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
            "-out", cert, "-days", "2", "-extfile", ext)
    return {"ca": ca, "cert": cert, "key": key}


def tcp_watcher(client_factory, broker: Broker, topic: str):
    watcher = client_factory(broker.port, f"watch-{topic}", mqtt.MQTTv311)
    watcher.subscribe(topic, 1)
    return watcher


@pytest.mark.parametrize("version", ["4", "5"])
def test_mqttjs_over_websocket_reaches_a_tcp_client(node, broker, client_factory, version):
    topic = f"from-ws/v{version}"
    watcher = tcp_watcher(client_factory, broker, topic)
    result = run_mqttjs(node, f"ws://127.0.0.1:{broker.http_port}/mqtt",
                        "--version", version, "--to-tcp", topic)
    assert result.returncode == 0, result.stdout + result.stderr
    message = watcher.message()
    assert message.payload == b"over ws:"


def test_mqttjs_over_wss_with_the_test_ca(node, start_broker, client_factory, tmp_path):
    pki = make_pki(tmp_path, "wss")
    broker = start_broker(config=(
        "[http]\n"
        'tls_listen = "127.0.0.1:0"\n'
        f'tls_cert = "{pki["cert"]}"\n'
        f'tls_key = "{pki["key"]}"\n'))
    assert broker.https_port, "the broker printed its HTTP/TLS address"
    watcher = tcp_watcher(client_factory, broker, "from-wss")
    result = run_mqttjs(node, f"wss://localhost:{broker.https_port}/mqtt",
                        "--ca", str(pki["ca"]), "--to-tcp", "from-wss")
    assert result.returncode == 0, result.stdout + result.stderr
    assert watcher.message().payload == b"over wss:"

    # A client that trusts another CA cannot connect; the listener goes on serving.
    other = make_pki(tmp_path, "other")
    refused = run_mqttjs(node, f"wss://localhost:{broker.https_port}/mqtt", "--ca", str(other["ca"]))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    again = run_mqttjs(node, f"wss://localhost:{broker.https_port}/mqtt", "--ca", str(pki["ca"]))
    assert again.returncode == 0, again.stdout + again.stderr
