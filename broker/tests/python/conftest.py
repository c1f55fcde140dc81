"""Fixtures for the paho-mqtt tests: the real `rookery` binary on 127.0.0.1:0, and a small
synchronous wrapper around paho's threaded client so that every wait is bounded.

Run from the repository root after building the broker:

    cargo build -p rookery            # or --release
    pip install paho-mqtt==2.1.0 pytest
    python -m pytest broker/tests/python

The binary is $ROOKERY_BIN if set, else the newer of target/release/rookery and
target/debug/rookery (under $CARGO_TARGET_DIR if set).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

WAIT = 3.0  # seconds: the upper bound for anything a test waits for
QUIET = 0.3  # seconds: how long to listen to conclude that nothing arrives

REPO = Path(__file__).resolve().parents[3]
LISTENING = re.compile(r"^rookery: MQTT listening on (\S+):(\d+)$")
HTTP_LISTENING = re.compile(r"^rookery: HTTP listening on (\S+):(\d+)$")
HTTP_TLS_LISTENING = re.compile(r"^rookery: HTTP/TLS listening on (\S+):(\d+)$")
MQTT_TLS_LISTENING = re.compile(r"^rookery: MQTT/TLS listening on (\S+):(\d+)$")
APP_TOKEN = re.compile(r"^rookery: generated the management API app token \(shown only now\): (\S+)$")


def broker_binary() -> Path:
    explicit = os.environ.get("ROOKERY_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates = [p for p in (target / "release" / "rookery", target / "debug" / "rookery") if p.exists()]
    if not candidates:
        pytest.skip("no rookery binary: run `cargo build -p rookery` first (or set ROOKERY_BIN)")
    return max(candidates, key=lambda p: p.stat().st_mtime)


class Broker:
    """One broker process. Killed by its PID on `stop`, whatever state it is in."""

    def __init__(self, config: str | None = None, env: dict[str, str] | None = None):
        self.data = tempfile.TemporaryDirectory(prefix="rookery-py-")
        args = [
            str(broker_binary()),
            "--mqtt-listen", "127.0.0.1:0",
            "--http-listen", "127.0.0.1:0",
            "--data-dir", self.data.name,
        ]
        if config is not None:
            path = Path(self.data.name) / "rookery.toml"
            path.write_text(config)
            args += ["--config", str(path)]
        full_env = dict(os.environ, RUST_LOG="warn", **(env or {}))
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=full_env, text=True
        )
        self.http_port = None
        self.https_port = None  # with [http] tls_listen
        self.tls_port = None  # with [mqtt] tls_listen
        self.app_token = None
        self.port = self._read_port()
        # Keep draining stdout (logs go there too) so the broker never blocks on the pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_port(self) -> int:
        lines: queue.Queue[str] = queue.Queue()

        def first_lines():
            for line in self.process.stdout:
                lines.put(line)
                if LISTENING.match(line.strip()):
                    return

        threading.Thread(target=first_lines, daemon=True).start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.1)
            except queue.Empty:
                if self.process.poll() is not None:
                    raise RuntimeError(f"broker exited with {self.process.returncode}")
                continue
            http = HTTP_LISTENING.match(line.strip())
            if http:
                self.http_port = int(http.group(2))
            https = HTTP_TLS_LISTENING.match(line.strip())
            if https:
                self.https_port = int(https.group(2))
            tls = MQTT_TLS_LISTENING.match(line.strip())
            if tls:
                self.tls_port = int(tls.group(2))
            token = APP_TOKEN.match(line.strip())
            if token:
                self.app_token = token.group(1)
            match = LISTENING.match(line.strip())
            if match:
                assert match.group(1) == "127.0.0.1"
                return int(match.group(2))
        self.stop()
        raise RuntimeError("the broker did not print its address within 10 s")

    def api(self, request: dict) -> tuple[int, dict]:
        """One management API call (the app token added): (HTTP status, JSON answer)."""
        import json
        import urllib.error
        import urllib.request
        body = json.dumps({"token": self.app_token, **request})
        http_request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/api", data=body.encode(),
            headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(http_request, timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def add_user(self, address: str) -> str:
        """Creates a user through the management API; returns its token (the MQTT password)."""
        status, answer = self.api({"op": "useradd", "user": {"address": address}})
        assert status == 200 and answer["result"], answer
        return answer["user"]["token"]

    def _drain(self):
        for _ in self.process.stdout:
            pass

    def stop(self):
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=6)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.data.cleanup()


@pytest.fixture
def broker():
    b = Broker()
    yield b
    b.stop()


@pytest.fixture
def start_broker():
    """A factory for brokers with a config file or environment; all stopped at the end."""
    started: list[Broker] = []

    def start(config: str | None = None, env: dict[str, str] | None = None) -> Broker:
        b = Broker(config=config, env=env)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


class Client:
    """A paho client (callback API version 2) whose events land in queues."""

    def __init__(self, port: int, client_id: str, protocol, *, clean: bool = True,
                 session_expiry: int | None = None, will: tuple | None = None,
                 connect_properties: Properties | None = None, keepalive: int = 30,
                 username: str | None = None, password: str = "secret"):
        self.protocol = protocol
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subacks: queue.Queue[list] = queue.Queue()
        self.unsubacks: queue.Queue[int] = queue.Queue()
        self.connacks: queue.Queue[tuple] = queue.Queue()
        self.disconnects: queue.Queue = queue.Queue()
        self.pubacks: queue.Queue[tuple] = queue.Queue()
        v5 = protocol == mqtt.MQTTv5
        self.paho = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if v5 else clean,
            reconnect_on_failure=False,
        )
        if username is not None:
            self.paho.username_pw_set(username, password)
        if will is not None:
            topic, payload, qos, retain, *props = will
            self.paho.will_set(topic, payload, qos, retain, props[0] if props else None)
        self.paho.on_connect = lambda c, u, flags, rc, props: self.connacks.put((flags, rc, props))
        self.paho.on_message = lambda c, u, msg: self.messages.put(msg)
        self.paho.on_subscribe = lambda c, u, mid, codes, props: self.subacks.put(codes)
        self.paho.on_unsubscribe = lambda c, u, mid, codes, props: self.unsubacks.put(mid)
        self.paho.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        self.paho.on_publish = lambda c, u, mid, rc, props: self.pubacks.put((mid, rc))
        if v5:
            properties = connect_properties or Properties(PacketTypes.CONNECT)
            if session_expiry is not None:
                properties.SessionExpiryInterval = session_expiry
            self.paho.connect("127.0.0.1", port, keepalive, clean_start=clean, properties=properties)
        else:
            self.paho.connect("127.0.0.1", port, keepalive)
        self.paho.loop_start()
        flags, rc, props = self.connacks.get(timeout=WAIT)
        self.session_present = flags.session_present
        self.reason_code = rc
        self.connack_properties = props

    def subscribe(self, topic, qos=0, options=None, properties=None) -> list:
        if options is not None:
            self.paho.subscribe(topic, options=options, properties=properties)
        else:
            self.paho.subscribe(topic, qos, properties=properties)
        return self.subacks.get(timeout=WAIT)

    def unsubscribe(self, topic):
        self.paho.unsubscribe(topic)
        self.unsubacks.get(timeout=WAIT)

    def publish(self, topic, payload, qos=0, retain=False, properties=None):
        """Publishes and waits for the acknowledgement; returns its reason code."""
        info = self.paho.publish(topic, payload, qos, retain, properties)
        info.wait_for_publish(timeout=WAIT)
        assert info.is_published(), f"publish to {topic} not acknowledged"
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            mid, rc = self.pubacks.get(timeout=WAIT)
            if mid == info.mid:
                return rc
        raise AssertionError(f"no on_publish for mid {info.mid}")

    def message(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s") from None

    def no_message(self, quiet: float = QUIET):
        try:
            msg = self.messages.get(timeout=quiet)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {msg.topic}: {msg.payload!r}")

    def drain(self, quiet: float = QUIET) -> list[mqtt.MQTTMessage]:
        got = []
        while True:
            try:
                got.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return got

    def disconnect(self, reasoncode=None):
        self.paho.disconnect(reasoncode=reasoncode)
        self.disconnects.get(timeout=WAIT)
        self.paho.loop_stop()

    def kill(self):
        """Closes the socket without DISCONNECT, as a crashing device would."""
        self.paho.loop_stop()
        sock = self.paho.socket()
        if sock is not None:
            sock.close()

    def wait_disconnected(self):
        rc = self.disconnects.get(timeout=WAIT)
        self.paho.loop_stop()
        return rc


@pytest.fixture
def client_factory():
    """Creates connected clients and disconnects (or kills) those still open at the end."""
    clients: list[Client] = []

    def make(port: int, client_id: str, protocol, **kwargs) -> Client:
        c = Client(port, client_id, protocol, **kwargs)
        clients.append(c)
        return c

    yield make
    for c in clients:
        try:
            c.paho.loop_stop()
            sock = c.paho.socket()
            if sock is not None:
                sock.close()
        except Exception:
            pass
