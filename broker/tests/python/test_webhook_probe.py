"""The webhook bridge from the outside (SPEC §1 [[webhooks]], §9, §10; README "Webhooks").

A real HTTP server on 127.0.0.1 (http.server in a thread) is the receiver; the broker is
the prebuilt binary started by the conftest fixtures. Every wait is bounded.

    ROOKERY_BIN=/tmp/probe/rookery python3 -m pytest -q -p no:cacheprovider \
        broker/tests/python/test_webhook_probe.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import Broker, broker_binary

ADMIN = "probe-admin-token"
SECRET = "s3cret-probe"
DELIVERY_ID = re.compile(r"^[0-9a-f]{16}$")
ALL_KINDS = {
    "message.publish", "message.dropped", "client.connected", "client.disconnected",
    "session.subscribed", "session.unsubscribed", "group.created", "group.updated",
    "group.deleted", "group.members", "user.created", "user.deleted",
}


# --------------------------------------------------------------------------- receiver

@dataclass
class Request:
    path: str
    headers: dict  # lower-case names
    body: bytes
    status: int = 0  # what the receiver answered (0: still sleeping / connection dropped)
    at: float = field(default_factory=time.monotonic)

    def json(self):
        return json.loads(self.body)

    def events(self) -> list[dict]:
        data = self.json()
        return data if isinstance(data, list) else [data]


class Receiver:
    """A webhook receiver. `behaviour(request, index_on_path)` -> (status, delay_s)."""

    def __init__(self, port: int = 0):
        self.requests: list[Request] = []
        self.cond = threading.Condition()
        self.behaviour = lambda request, n: (200, 0.0)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.cond:
                    n = sum(1 for r in receiver.requests if r.path == self.path)
                    receiver.requests.append(request)
                    status, delay = receiver.behaviour(request, n)
                if delay:
                    time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.wfile.flush()
                except OSError:
                    return
                with receiver.cond:
                    request.status = status
                    receiver.cond.notify_all()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def url(self, path="/hook"):
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # --- queries (all under the lock)

    def answered(self, path=None) -> list[Request]:
        with self.cond:
            return [r for r in self.requests if 200 <= r.status < 300 and (path is None or r.path == path)]

    def all(self, path=None) -> list[Request]:
        with self.cond:
            return [r for r in self.requests if path is None or r.path == path]

    def events(self, path=None) -> list[tuple[dict, Request]]:
        """Events of the requests answered 2xx, with their request."""
        return [(e, r) for r in self.answered(path) for e in r.events()]

    def wait(self, predicate, timeout=5.0, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"receiver: no {what} within {timeout} s; got "
                                         f"{[(r.path, r.status, r.body[:200]) for r in self.requests][-20:]}")
                self.cond.wait(min(left, 0.05))

    def wait_event(self, match, path=None, timeout=8.0, what="event") -> tuple[dict, Request]:
        def find():
            for r in self.requests:
                if 200 <= r.status < 300 and (path is None or r.path == path):
                    for e in r.events():
                        if match(e):
                            return e, r
            return None
        return self.wait(find, timeout, what)


@pytest.fixture
def receiver():
    started: list[Receiver] = []

    def make(port: int = 0) -> Receiver:
        r = Receiver(port)
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# --------------------------------------------------------------------------- config

def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def hook(url: str, **keys) -> str:
    keys.setdefault("backoff_initial_ms", 50)
    keys.setdefault("backoff_max_ms", 300)
    return "[[webhooks]]\n" + f"url = {toml_value(url)}\n" + "".join(
        f"{k} = {toml_value(v)}\n" for k, v in keys.items()) + "\n"


def config(*hooks: str, extra: str = "") -> str:
    return f'[auth]\nallow_anonymous = true\nadmin_token = "{ADMIN}"\n\n{extra}\n' + "".join(hooks)


def start(start_broker, cfg: str, env=None) -> Broker:
    b = start_broker(config=cfg, env=env)
    b.app_token = ADMIN
    return b


class _Keep:
    """A data dir that survives the broker using it (for restarts on the same dir)."""

    def __init__(self, name):
        self.name = name

    def cleanup(self):
        pass


def start_on(data_dir: str, cfg: str) -> Broker:
    """A broker on an existing data dir (conftest's Broker always makes a fresh one)."""
    b = Broker.__new__(Broker)
    b.data = _Keep(data_dir)
    path = Path(data_dir) / "rookery.toml"
    path.write_text(cfg)
    args = [str(broker_binary()), "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--data-dir", data_dir, "--config", str(path)]
    b.process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=dict(os.environ, RUST_LOG="warn"), text=True)
    b.http_port = b.https_port = b.tls_port = None
    b.app_token = None
    b.port = b._read_port()
    threading.Thread(target=b._drain, daemon=True).start()
    b.app_token = ADMIN
    return b


def ok(broker: Broker, request: dict) -> dict:
    status, answer = broker.api(request)
    assert status == 200 and answer.get("result") is True, (request, status, answer)
    return answer


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_request(request: Request, secret: str | None = SECRET):
    """Headers of one (non-batched) event request, against its body."""
    event = request.json()
    assert isinstance(event, dict), request.body
    assert request.headers.get("content-type", "").startswith("application/json")
    assert request.headers.get("x-rookery-event") == event["event"]
    assert request.headers.get("x-rookery-delivery") == event["delivery"]
    assert DELIVERY_ID.match(event["delivery"]), event
    if secret is None:
        assert "x-rookery-signature" not in request.headers
    else:
        assert request.headers.get("x-rookery-signature") == sign(request.body, secret)
    assert isinstance(event["ts"], int) and abs(event["ts"] - time.time() * 1000) < 120_000, event


def find_stats(answer: dict, name: str) -> dict:
    """The per-endpoint counters of `webhookstats`, wherever the answer nests them."""
    found = []

    def walk(node, key=None):
        if isinstance(node, dict):
            if "delivered" in node and "dead_letters" in node:
                if name in (node.get("name"), node.get("endpoint"), node.get("url"), key):
                    found.append(node)
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    walk(answer)
    assert found, f"no stats for endpoint {name!r} in {answer}"
    return found[0]


# --------------------------------------------------------------------------- tests

def test_every_event_kind_with_its_documented_fields(start_broker, client_factory, receiver):
    rx = receiver()
    broker = start(start_broker, config(
        hook(rx.url(), name="all", secret=SECRET, headers={"Authorization": "Bearer xyz"}),
        extra="[mqtt]\nmax_queued_messages = 1\n"))

    # user.created: address, uid, name, never the token
    tokens = {}
    for name in ("alice", "bob", "carol"):
        answer = ok(broker, {"op": "useradd", "user": {"address": name, "name": name.title()}})
        tokens[name] = answer["user"]["token"]
        e, _ = rx.wait_event(lambda e, n=name: e["event"] == "user.created" and e.get("address") == n,
                             what=f"user.created {name}")
        assert e["uid"] == answer["user"]["uid"] and e["name"] == name.title(), e
        assert tokens[name] not in json.dumps(e), "user.created must never carry the token"

    # client.connected: client_id, username, protocol, clean_start, keep_alive, peer
    alice = client_factory(broker.port, "alice-5", mqtt.MQTTv5, username="alice",
                           password=tokens["alice"], keepalive=25)
    e, _ = rx.wait_event(lambda e: e["event"] == "client.connected" and e.get("client_id") == "alice-5")
    assert (e["username"], e["protocol"], e["clean_start"], e["keep_alive"]) == ("alice", 5, True, 25), e
    assert isinstance(e["peer"], str) and "127.0.0.1" in e["peer"], e
    anon = client_factory(broker.port, "anon-4", mqtt.MQTTv311, clean=False, keepalive=17)
    e, _ = rx.wait_event(lambda e: e["event"] == "client.connected" and e.get("client_id") == "anon-4")
    assert (e["username"], e["protocol"], e["clean_start"], e["keep_alive"]) == (None, 4, False, 17), e

    # session.subscribed / session.unsubscribed
    alice.subscribe("groups/#", 1)
    e, _ = rx.wait_event(lambda e: e["event"] == "session.subscribed" and e.get("client_id") == "alice-5")
    assert (e["username"], e["filter"], e["qos"]) == ("alice", "groups/#", 1), e
    alice.subscribe("resp/alice", 0)
    alice.unsubscribe("groups/#")
    e, _ = rx.wait_event(lambda e: e["event"] == "session.unsubscribed" and e.get("client_id") == "alice-5")
    assert (e["username"], e["filter"]) == ("alice", "groups/#"), e

    # group.created (backend: by null) with the group as groupget shows it
    gid = ok(broker, {"op": "groupadd", "group": {"name": "team", "members": {"m": "alice,bob"}}})["group"]["gid"]
    e, _ = rx.wait_event(lambda e: e["event"] == "group.created" and e.get("gid") == gid)
    shown = ok(broker, {"op": "groupget", "group": {"gid": gid}})["group"]
    assert e["by"] is None, e
    for key in ("gid", "name", "flags", "permissions", "active", "validity", "created"):
        assert e["group"][key] == shown[key], (key, e["group"], shown)

    # group.updated
    ok(broker, {"op": "groupset", "group": {"gid": gid, "name": "team2"}})
    e, _ = rx.wait_event(lambda e: e["event"] == "group.updated" and e.get("gid") == gid)
    assert e["by"] is None and e["group"]["gid"] == gid and e["group"]["name"] == "team2", e

    # group.members: added_or_changed, then removed
    ok(broker, {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "carol"}}})
    e, _ = rx.wait_event(lambda e: e["event"] == "group.members" and e.get("gid") == gid
                         and e.get("action") == "added_or_changed" and "carol" in e.get("members", []))
    assert e["by"] is None and e["members"] == ["carol"] and "type" in e, e
    ok(broker, {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "carol", "remove": True}}})
    e, _ = rx.wait_event(lambda e: e["event"] == "group.members" and e.get("gid") == gid
                         and e.get("action") == "removed")
    assert e["by"] is None and e["members"] == ["carol"] and "type" in e, e

    # Real-time API: `by` is the caller's address.
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "resp/alice"
    props.CorrelationData = b"c1"
    alice.publish("$groups/ops", json.dumps({"op": "groupadd", "id": "rt1", "group": {"name": "rt"}}), 1,
                  properties=props)
    reply = json.loads(alice.message().payload)
    assert reply["result"] is True, reply
    rt_gid = reply["group"]["gid"]
    e, _ = rx.wait_event(lambda e: e["event"] == "group.created" and e.get("gid") == rt_gid)
    assert e["by"] == "alice", e

    # message.publish, group message: gid, type, live; QoS, retain, client_id, username
    alice.publish(f"groups/{gid}/3", b"typed hello", 1)
    e, _ = rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == f"groups/{gid}/3")
    assert (e["qos"], e["retain"], e["client_id"], e["username"]) == (1, False, "alice-5", "alice"), e
    assert (e["gid"], e["type"], e["live"], e["payload"], e["encoding"]) == (gid, 3, False, "typed hello", "utf8"), e
    alice.publish(f"groups/{gid}", b"type zero", 0, retain=True)
    e, _ = rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == f"groups/{gid}")
    assert (e["qos"], e["retain"], e["gid"], e["type"], e["live"]) == (0, True, gid, 0, False), e
    alice.publish(f"groups/{gid}/live/cam", b"frame", 0)
    e, _ = rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == f"groups/{gid}/live/cam")
    assert (e["gid"], e["live"]) == (gid, True), e
    # the backend `message` op: client_id null
    ok(broker, {"op": "message", "message": {"from": "alice", "gid": gid, "type": 2, "message": "from backend"}})
    e, _ = rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == f"groups/{gid}/2")
    assert (e["client_id"], e["gid"], e["type"], e["payload"]) == (None, gid, 2, "from backend"), e
    # an ordinary topic: no gid
    anon.publish("plain/topic", b"x", 1)
    e, _ = rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == "plain/topic")
    assert (e["client_id"], e["username"], e["qos"]) == ("anon-4", None, 1), e
    assert e.get("gid") is None, e

    # message.dropped: the persistent session anon-4 is offline with room for one message
    anon.subscribe("q/#", 1)
    anon.disconnect()
    e, _ = rx.wait_event(lambda e: e["event"] == "client.disconnected" and e.get("client_id") == "anon-4")
    # a 3.1.1 DISCONNECT has no reason code: reported as 0 (normal disconnection)
    assert (e["username"], e["reason"], e["reason_code"]) == (None, "normal", 0), e
    for i in range(3):
        alice.publish("q/1", f"queued {i}".encode(), 1)
    e, _ = rx.wait_event(lambda e: e["event"] == "message.dropped" and e.get("client_id") == "anon-4",
                         what="message.dropped queue_full")
    assert (e["topic"], e["reason"], e.get("gid")) == ("q/1", "queue_full", None), e
    assert "gid" in e, "message.dropped documents a gid field"
    # ... and a no-store round-robin group with nobody online: no_receiver
    hunt = ok(broker, {"op": "groupadd", "group": {"name": "hunt", "flags": 0x40 | 0x20,
                                                     "members": {"m": "bob"}}})["group"]["gid"]
    ok(broker, {"op": "message", "message": {"from": "bob", "gid": hunt, "message": "nobody home"}})
    e, _ = rx.wait_event(lambda e: e["event"] == "message.dropped" and e.get("gid") == hunt,
                         what="message.dropped no_receiver")
    assert (e["reason"], e["client_id"], e["topic"]) == ("no_receiver", None, f"groups/{hunt}"), e

    # client.disconnected: lost
    bob = client_factory(broker.port, "bob-4", mqtt.MQTTv311, username="bob", password=tokens["bob"])
    rx.wait_event(lambda e: e["event"] == "client.connected" and e.get("client_id") == "bob-4")
    bob.kill()
    e, _ = rx.wait_event(lambda e: e["event"] == "client.disconnected" and e.get("client_id") == "bob-4")
    assert (e["username"], e["reason"], e["reason_code"]) == ("bob", "lost", None), e
    # client.disconnected: normal_with_will (v5 reason 0x04)
    carol = client_factory(broker.port, "carol-5", mqtt.MQTTv5, username="carol", password=tokens["carol"],
                           will=("wills/carol", b"bye", 0, False))
    carol.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
    e, _ = rx.wait_event(lambda e: e["event"] == "client.disconnected" and e.get("client_id") == "carol-5")
    # `reason_code` is the client's own DISCONNECT reason code (README, Webhooks).
    assert (e["reason"], e["reason_code"], e["username"]) == ("normal_with_will", 4, "carol"), e
    # client.disconnected: takeover (another connection claims the client id; 0x8E)
    first = client_factory(broker.port, "dave-5", mqtt.MQTTv5)
    rx.wait_event(lambda e: e["event"] == "client.connected" and e.get("client_id") == "dave-5")
    second = client_factory(broker.port, "dave-5", mqtt.MQTTv5)
    e, _ = rx.wait_event(lambda e: e["event"] == "client.disconnected" and e.get("client_id") == "dave-5")
    assert (e["reason"], e["reason_code"]) == ("takeover", 0x8E), e
    second.disconnect()
    e, _ = rx.wait_event(lambda e: e["event"] == "client.disconnected" and e.get("client_id") == "dave-5"
                         and e["reason"] == "normal")
    assert e["reason_code"] == 0, e

    # group.deleted, user.deleted
    ok(broker, {"op": "groupdel", "group": {"gid": gid}})
    e, _ = rx.wait_event(lambda e: e["event"] == "group.deleted" and e.get("gid") == gid)
    assert e["by"] is None, e
    ok(broker, {"op": "userdel", "user": {"address": "carol"}})
    e, _ = rx.wait_event(lambda e: e["event"] == "user.deleted" and e.get("address") == "carol")

    # Every request: headers, signature, the configured header; ids unique per event.
    time.sleep(0.3)
    requests = rx.answered()
    kinds = set()
    bodies_by_id: dict[str, dict] = {}
    for r in requests:
        check_request(r)
        assert r.headers.get("authorization") == "Bearer xyz"
        event = r.json()
        kinds.add(event["event"])
        previous = bodies_by_id.setdefault(event["delivery"], event)
        assert previous == event, f"two different events share delivery id {event['delivery']}"
        # broker notifications on $ topics are not message events
        if event["event"] == "message.publish":
            assert not event["topic"].startswith(("$users/", "$SYS")), event
            assert not event["topic"].endswith("/presence"), event
    assert ALL_KINDS <= kinds, ALL_KINDS - kinds
    assert not rx.all("/other")


def test_filters_by_kind_topic_and_gid(client_factory, receiver):
    # gids are allocated by the broker: make the groups first, then restart with the filter.
    data = tempfile.TemporaryDirectory(prefix="rookery-probe-")
    try:
        first = start_on(data.name, config())
        password = ok(first, {"op": "useradd", "user": {"address": "alice"}})["user"]["token"]
        g1 = ok(first, {"op": "groupadd", "group": {"name": "one", "members": {"m": "alice"}}})["group"]["gid"]
        g2 = ok(first, {"op": "groupadd", "group": {"name": "two", "members": {"m": "alice"}}})["group"]["gid"]
        first.stop()

        rx = receiver()
        broker = start_on(data.name, config(
            hook(rx.url("/kinds"), name="kinds", secret=SECRET, events=["group.created", "user.deleted"]),
            hook(rx.url("/topics"), name="topics", topics=["sensors/#", "groups/+/live/#"]),
            hook(rx.url("/gids"), name="gids", secret=SECRET, gids=[g1]),
            hook(rx.url("/all"), name="all", secret=SECRET)))
        try:
            alice = client_factory(broker.port, "alice", mqtt.MQTTv311, username="alice", password=password)
            alice.subscribe("sensors/#", 1)
            alice.publish("sensors/a", b"in", 1)
            alice.publish("other/b", b"out", 1)
            alice.publish(f"groups/{g1}", b"g1 message", 1)
            alice.publish(f"groups/{g2}", b"g2 message", 1)
            alice.publish(f"groups/{g2}/live/x", b"g2 live", 0)
            ok(broker, {"op": "groupset", "group": {"gid": g1, "name": "one-b"}})
            ok(broker, {"op": "groupset", "group": {"gid": g2, "name": "two-b"}})
            g3 = ok(broker, {"op": "groupadd", "group": {"name": "three"}})["group"]["gid"]
            ok(broker, {"op": "useradd", "user": {"address": "bob"}})
            ok(broker, {"op": "userdel", "user": {"address": "bob"}})
            alice.publish("sensors/z", b"last", 1)

            # "all" sees everything; once it has the last message and user.deleted, the others are settled
            rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == "sensors/z", "/all")
            rx.wait_event(lambda e: e["event"] == "user.deleted", "/all")
            rx.wait_event(lambda e: e["event"] == "user.deleted", "/kinds")
            rx.wait_event(lambda e: e["event"] == "message.publish" and e.get("topic") == "sensors/z", "/topics")
            rx.wait_event(lambda e: e["event"] == "group.updated" and e.get("gid") == g1, "/gids")
            time.sleep(0.5)

            # kinds: only the two kinds listed
            kinds = [e for e, _ in rx.events("/kinds")]
            assert {e["event"] for e in kinds} == {"group.created", "user.deleted"}, kinds
            assert [e["gid"] for e in kinds if e["event"] == "group.created"] == [g3]
            for r in rx.answered("/kinds"):
                check_request(r)

            # topics: message events filtered by topic, other kinds untouched
            topics = [e for e, _ in rx.events("/topics")]
            published = sorted(e["topic"] for e in topics if e["event"] == "message.publish")
            assert published == sorted(["sensors/a", "sensors/z", f"groups/{g2}/live/x"]), published
            other = {e["event"] for e in topics}
            assert {"client.connected", "session.subscribed", "group.updated", "group.created",
                    "user.created", "user.deleted"} <= other, other
            for r in rx.answered("/topics"):
                check_request(r, secret=None)  # no secret: no signature

            # gids: every event that carries a gid carries g1
            gids = [e for e, _ in rx.events("/gids")]
            carried = [e for e in gids if e.get("gid") is not None]
            assert carried and {e["gid"] for e in carried} == {g1}, carried
            assert {e["event"] for e in carried} >= {"message.publish", "group.updated"}
            assert not [e for e in gids if e["event"] == "group.created"], "group three has another gid"

            # the unfiltered endpoint got the g2 events the gid filter held back
            everything = [e for e, _ in rx.events("/all")]
            assert any(e.get("gid") == g2 and e["event"] == "message.publish" for e in everything)
            assert any(e.get("gid") == g3 and e["event"] == "group.created" for e in everything)
        finally:
            broker.stop()
    finally:
        data.cleanup()


def test_500s_are_retried_with_the_same_delivery_id_then_delivered(start_broker, client_factory, receiver):
    rx = receiver()
    rx.behaviour = lambda request, n: (500 if n < 3 else 200, 0.0) if request.path == "/hook" else \
        ((302 if n == 0 else 200, 0.0) if request.path == "/redir" else (200, 0.0))
    broker = start(start_broker, config(
        hook(rx.url(), name="flaky", secret=SECRET, events=["message.publish"],
             backoff_initial_ms=100, backoff_max_ms=400),
        hook(rx.url("/redir"), name="redir", events=["message.publish"], backoff_initial_ms=100,
             backoff_max_ms=400)))
    c = client_factory(broker.port, "pub", mqtt.MQTTv311)
    t0 = time.monotonic()
    c.publish("retry/me", b"payload", 1)
    rx.wait(lambda: rx.answered("/hook") and rx.answered("/redir"), timeout=15, what="2xx-answered requests")
    time.sleep(0.8)  # nothing more after the 2xx
    # a 3xx is not success and redirects are not followed
    redirected = rx.all("/redir")
    assert [r.status for r in redirected] == [302, 200], [r.status for r in redirected]
    assert len({r.headers["x-rookery-delivery"] for r in redirected}) == 1
    assert not [r for r in rx.all() if r.path not in ("/hook", "/redir")], "a redirect was followed"
    requests = rx.all("/hook")
    assert [r.status for r in requests] == [500, 500, 500, 200], [r.status for r in requests]
    ids = {r.headers["x-rookery-delivery"] for r in requests}
    assert len(ids) == 1, ids
    first = requests[0].json()
    for r in requests:
        check_request(r)
        assert r.json() == first, "a retry carries the same event"
    # exponential backoff: the gaps do not shrink, and the retries are not immediate
    gaps = [b.at - a.at for a, b in zip(requests, requests[1:])]
    assert all(g >= 0.03 for g in gaps), gaps
    assert requests[-1].at - t0 < 15
    stats = find_stats(ok(broker, {"op": "webhookstats"}), "flaky")
    assert stats["delivered"] == 1 and stats["retries"] >= 3, stats
    for key in ("delivered", "retries", "failures", "dead_letters", "dropped_overflow", "outbox_depth",
                "outbox_bytes", "in_flight", "latency_ms"):
        assert key in stats, (key, stats)
    assert stats["outbox_depth"] == 0, stats
    # §10: webhook deliveries/retries/failures on /metrics, per endpoint
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.http_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    for series, at_least in (("rookery_webhook_deliveries_total", 1), ("rookery_webhook_retries_total", 3),
                             ("rookery_webhook_failures_total", 1)):
        values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith(series + "{") and 'endpoint="flaky"' in line]
        assert values and values[0] >= at_least, (series, values)


def test_a_timeout_is_a_failure_and_is_retried(start_broker, client_factory, receiver):
    rx = receiver()
    rx.behaviour = lambda request, n: (200, 1.5 if n == 0 else 0.0)
    broker = start(start_broker, config(hook(rx.url(), name="slow", secret=SECRET, events=["message.publish"],
                                             timeout_ms=300, backoff_initial_ms=100, backoff_max_ms=400)))
    c = client_factory(broker.port, "pub", mqtt.MQTTv311)
    c.publish("slow/me", b"tick", 1)
    rx.wait(lambda: len(rx.all()) >= 2 and any(r.status == 200 and r is not rx.requests[0] for r in rx.requests),
            timeout=15, what="a retry after the timeout answered 200")
    requests = rx.all()
    first = requests[0]
    assert requests[1].at - first.at >= 0.25, "the retry came before timeout_ms"
    assert len({r.headers["x-rookery-delivery"] for r in requests}) == 1
    for r in requests:
        check_request(r)
    time.sleep(1.6)  # the first (sleeping) answer comes too late to count; nothing more is sent
    assert len(rx.all()) == len(requests)
    stats = find_stats(ok(broker, {"op": "webhookstats"}), "slow")
    assert stats["delivered"] == 1 and stats["failures"] + stats["retries"] >= 1, stats


def test_acknowledged_events_survive_sigkill_with_the_receiver_down(client_factory, receiver):
    port = free_port()  # nothing listens here until after the crash
    cfg = config(hook(f"http://127.0.0.1:{port}/hook", name="crashy", secret=SECRET,
                      events=["message.publish", "user.created"],
                      backoff_initial_ms=100, backoff_max_ms=500))
    data = tempfile.TemporaryDirectory(prefix="rookery-probe-")
    broker = None
    try:
        broker = start_on(data.name, cfg)
        pub = client_factory(broker.port, "crash-pub", mqtt.MQTTv5)
        sent = []
        for i in range(30):
            payload = f"durable-{i}"
            rc = pub.publish("crash/t" if i % 2 else "crash/u", payload.encode(), 1)
            assert rc == 0, rc
            sent.append(payload)
        ok(broker, {"op": "useradd", "user": {"address": "dave"}})  # a management change, also durable
        os.kill(broker.process.pid, signal.SIGKILL)
        broker.process.wait(timeout=5)
        pub.kill()

        broker = start_on(data.name, cfg)
        rx = receiver(port)
        rx.wait(lambda: set(sent) <= {e.get("payload") for r in rx.requests if 200 <= r.status < 300
                                      for e in r.events()},
                timeout=15, what="every acknowledged message's event after the restart")
        rx.wait_event(lambda e: e["event"] == "user.created" and e.get("address") == "dave", timeout=5,
                      what="user.created of an API change answered before the crash")
        for r in rx.answered():
            check_request(r)
            assert r.json()["event"] in ("message.publish", "user.created")
        # duplicates are allowed (at least once), but then with the same id for the same event
        by_id = {}
        for e, _ in rx.events():
            assert by_id.setdefault(e["delivery"], e) == e
    finally:
        if broker is not None:
            broker.stop()
        data.cleanup()


def test_dead_letters_are_listed_and_retried_through_the_api(start_broker, client_factory, receiver):
    rx = receiver()
    failing = {"on": True}
    rx.behaviour = lambda request, n: (500 if failing["on"] else 200, 0.0)
    broker = start(start_broker, config(hook(rx.url(), name="crm", secret=SECRET, events=["message.publish"],
                                             max_age_secs=1, backoff_initial_ms=100, backoff_max_ms=300)))
    c = client_factory(broker.port, "pub", mqtt.MQTTv311)
    c.publish("dead/1", b"first", 1)

    def dead():
        status, answer = broker.api({"op": "webhookdeadletters", "start": 0, "count": 50})
        assert status == 200 and answer.get("result") is True, answer
        return answer

    deadline = time.monotonic() + 10
    while (answer := dead())["total"] < 1:
        assert time.monotonic() < deadline, f"no dead letter within 10 s: {answer}"
        time.sleep(0.1)
    [letter] = answer["deadletters"]
    assert (letter["endpoint"], letter["event"]) == ("crm", "message.publish"), letter
    assert DELIVERY_ID.match(letter["delivery"]) and "500" in letter["error"], letter
    assert isinstance(letter["created"], int) and abs(letter["created"] - time.time() * 1000) < 60_000, letter
    assert letter["body"]["payload"] == "first" and letter["body"]["delivery"] == letter["delivery"], letter
    tried = rx.all()
    assert tried and {r.headers["x-rookery-delivery"] for r in tried} == {letter["delivery"]}
    assert tried[0].json() == letter["body"]
    # no more attempts once it is a dead letter
    count = len(rx.all())
    time.sleep(0.6)
    assert len(rx.all()) == count
    stats = find_stats(ok(broker, {"op": "webhookstats"}), "crm")
    assert stats["dead_letters"] >= 1 and stats["failures"] >= 1 and stats["delivered"] == 0, stats
    # filters of the listing
    assert ok(broker, {"op": "webhookdeadletters", "endpoint": "crm"})["total"] == 1
    assert ok(broker, {"op": "webhookdeadletters", "delivery": letter["delivery"]})["total"] == 1
    status, answer = broker.api({"op": "webhookdeadletters", "endpoint": "nope"})
    assert (status, answer["result"], answer.get("total")) == (200, True, 0) or \
        (status, answer["result"], answer.get("error")) == (400, False, "BADREQUEST"), (status, answer)

    # webhookretry one: the same delivery id, delivered, gone from the list
    failing["on"] = False
    ok(broker, {"op": "webhookretry", "delivery": letter["delivery"]})
    e, r = rx.wait_event(lambda e: e["delivery"] == letter["delivery"], timeout=5, what="the retried dead letter")
    check_request(r)
    assert {k: v for k, v in e.items() if k != "ts"} == {k: v for k, v in letter["body"].items() if k != "ts"}
    resent_ts = (e["ts"], letter["body"]["ts"])
    assert dead()["total"] == 0

    # webhookretry all of one endpoint
    failing["on"] = True
    c.publish("dead/2", b"second", 1)
    c.publish("dead/3", b"third", 1)
    deadline = time.monotonic() + 10
    while (answer := dead())["total"] < 2:
        assert time.monotonic() < deadline, f"no two dead letters within 10 s: {answer}"
        time.sleep(0.1)
    ids = {d["delivery"] for d in answer["deadletters"]}
    failing["on"] = False
    ok(broker, {"op": "webhookretry", "all": True, "endpoint": "crm"})
    rx.wait(lambda: ids <= {e["delivery"] for e, _ in rx.events()}, timeout=5, what="both retried dead letters")
    assert dead()["total"] == 0
    # a bad request is answered as the other ops are
    status, answer = broker.api({"op": "webhookretry", "delivery": "ffffffffffffffff"})
    assert answer["result"] is False and "error" in answer and status >= 400, (status, answer)

    # webhookretry sends the dead letter listed, `ts` (when the message was published) included:
    # only its age for max_age_secs starts again.
    assert resent_ts[0] == resent_ts[1], f"re-sent ts {resent_ts[0]} != the dead letter's ts {resent_ts[1]}"


def test_binary_payloads_auto_and_base64(start_broker, client_factory, receiver):
    rx = receiver()
    broker = start(start_broker, config(
        hook(rx.url("/auto"), name="auto", secret=SECRET, events=["message.publish"], payload_encoding="auto"),
        hook(rx.url("/b64"), name="b64", secret=SECRET, events=["message.publish"], payload_encoding="base64"),
        hook(rx.url("/default"), name="default", secret=SECRET, events=["message.publish"])))
    c = client_factory(broker.port, "bin", mqtt.MQTTv311)
    binary = b"\xff\x00\xfe\x80binary\x00"
    text = "h\u00e9llo \u2603".encode()
    c.publish("bin/b", binary, 1)
    c.publish("bin/t", text, 1)
    c.publish("bin/e", b"", 1)
    for path in ("/auto", "/b64", "/default"):
        rx.wait(lambda p=path: len(rx.events(p)) >= 3, what=f"three events on {path}")
    got = {p: {e["topic"]: e for e, _ in rx.events(p)} for p in ("/auto", "/b64", "/default")}
    for p in ("/auto", "/default"):  # auto is the default
        assert got[p]["bin/b"]["encoding"] == "base64", got[p]["bin/b"]
        assert base64.b64decode(got[p]["bin/b"]["payload"]) == binary
        assert (got[p]["bin/t"]["encoding"], got[p]["bin/t"]["payload"]) == ("utf8", text.decode())
        assert (got[p]["bin/e"]["encoding"], got[p]["bin/e"]["payload"]) == ("utf8", "")
    for topic, raw in (("bin/b", binary), ("bin/t", text), ("bin/e", b"")):
        e = got["/b64"][topic]
        assert e["encoding"] == "base64" and base64.b64decode(e["payload"]) == raw, e
    for r in rx.answered():
        check_request(r)


def test_batching_posts_json_arrays(start_broker, client_factory, receiver):
    rx = receiver()
    broker = start(start_broker, config(
        hook(rx.url("/batch"), name="batched", secret=SECRET, batch_max=5, batch_age_ms=200, concurrency=1),
        hook(rx.url("/msgs"), name="msgs", secret=SECRET, events=["message.publish"], batch_max=4,
             batch_age_ms=300, concurrency=1)))
    c = client_factory(broker.port, "batcher", mqtt.MQTTv311)
    c.subscribe("b/#", 0)
    sent = [f"m{i}" for i in range(13)]
    infos = [c.paho.publish("b/t", p.encode(), 1) for p in sent]  # pipelined, so they arrive together
    for info in infos:
        info.wait_for_publish(timeout=5)
        assert info.is_published()
    for path in ("/batch", "/msgs"):
        rx.wait(lambda p=path: set(sent) <= {e.get("payload") for e, _ in rx.events(p)}, timeout=8,
                what=f"all messages on {path}")
    time.sleep(0.4)

    for path, limit in (("/batch", 5), ("/msgs", 4)):
        sizes = []
        for r in rx.answered(path):
            body = r.json()
            assert isinstance(body, list) and body, f"batch_max > 1: a JSON array per POST, got {body!r}"
            assert len(body) <= limit
            sizes.append(len(body))
            assert r.headers.get("x-rookery-signature") == sign(r.body)
            assert r.headers.get("x-rookery-batch") == str(len(body)), r.headers
            assert r.headers.get("x-rookery-delivery") == ",".join(e["delivery"] for e in body), r.headers
            kinds = {e["event"] for e in body}
            expected = kinds.pop() if len(kinds) == 1 else "batch"
            assert r.headers.get("x-rookery-event") == expected, (r.headers, body)
            for e in body:
                assert DELIVERY_ID.match(e["delivery"]) and isinstance(e["ts"], int)
        assert max(sizes) > 1, f"{path}: events were never batched: {sizes}"
        ids = [e["delivery"] for e, _ in rx.events(path)]
        assert len(ids) == len(set(ids)), f"{path}: an event delivered twice to a healthy endpoint"
    # the all-kinds endpoint also saw the connection and subscription
    kinds = {e["event"] for e, _ in rx.events("/batch")}
    assert {"client.connected", "session.subscribed", "message.publish"} <= kinds, kinds


def test_a_full_outbox_drops_new_events_counted_and_keeps_the_oldest(start_broker, client_factory, receiver):
    rx = receiver()
    failing = {"on": True}
    rx.behaviour = lambda request, n: (503 if failing["on"] else 200, 0.0)
    broker = start(start_broker, config(hook(rx.url(), name="small", events=["message.publish"],
                                             outbox_max_events=5, concurrency=1,
                                             backoff_initial_ms=100, backoff_max_ms=300)))
    c = client_factory(broker.port, "pub", mqtt.MQTTv311)
    for i in range(12):
        assert c.publish("o/t", f"o{i}".encode(), 1) == 0  # publishers never wait for the endpoint
    stats = find_stats(ok(broker, {"op": "webhookstats"}), "small")
    assert stats["dropped_overflow"] == 7 and stats["outbox_depth"] == 5, stats
    failing["on"] = False
    rx.wait(lambda: {"o0", "o1", "o2", "o3", "o4"} <= {e["payload"] for e, _ in rx.events()}, timeout=10,
            what="the five oldest events after recovery")
    time.sleep(0.5)
    assert {e["payload"] for e, _ in rx.events()} == {"o0", "o1", "o2", "o3", "o4"}
    stats = find_stats(ok(broker, {"op": "webhookstats"}), "small")
    assert stats["outbox_depth"] == 0 and stats["dropped_overflow"] == 7, stats


def test_shutdown_disconnects_are_reported(client_factory, receiver):
    rx = receiver()
    cfg = config(hook(rx.url(), name="sd", secret=SECRET, events=["client.disconnected"]))
    data = tempfile.TemporaryDirectory(prefix="rookery-probe-")
    broker = None
    try:
        broker = start_on(data.name, cfg)
        client_factory(broker.port, "stays", mqtt.MQTTv5)
        broker.stop()  # SIGTERM: graceful, flushes storage
        broker = start_on(data.name, cfg)  # delivered before the exit or after the restart
        e, r = rx.wait_event(lambda e: e.get("client_id") == "stays", timeout=8, what="client.disconnected")
        assert e["reason"] == "shutdown", e
        check_request(r)
    finally:
        if broker is not None:
            broker.stop()
        data.cleanup()
