"""Black-box scenarios driven only through the command-line tools an outside evaluator has:
mosquitto_pub / mosquitto_sub (Debian mosquitto-clients 2.0) and curl, against the real
`rookery` binary on 127.0.0.1:0 (SPEC §3–§8, README "Groups" and "Management API").

Every subprocess is bounded (`timeout`, and `-W` on mosquitto_sub) and killed by its own PID.

Observed behaviour of mosquitto_pub 2.0.11 on a refused v5 publish (PUBACK/PUBREC 0x87):
it prints "Warning: Publish 1 failed: Not authorized." on stderr and still exits 0; with
`-d` the PUBACK line shows "RC:135". The tests assert that observable behaviour.

    ROOKERY_BIN=/tmp/probe/rookery-debug python3 -m pytest -q -p no:cacheprovider \
        broker/tests/python/test_cli_scenarios.py
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import Broker

# Skipped on a developer machine without the tools; under CI (CI=true, `.ci/run` installs
# them) a missing tool fails the tests instead of passing them silently.
pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub") and shutil.which("curl")),
    reason="needs mosquitto_pub, mosquitto_sub and curl",
)

V311 = "mqttv311"
V5 = "mqttv5"
SEP = "\x1f"  # field separator in mosquitto_sub -F output (never inside a payload here)
WAIT = 4.0  # upper bound for anything expected to arrive
QUIET = 0.8  # how long to listen before concluding that nothing arrives


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def b(broker):
    """conftest's broker, under the short name these scenarios use."""
    return broker


@pytest.fixture
def procs():
    """Every mosquitto_sub started by a test; killed by PID at the end."""
    started: list[Sub] = []
    yield started
    for s in started:
        s.kill()


# --------------------------------------------------------------------------- curl


def curl_json(b: Broker, body: dict) -> tuple[int, dict]:
    """POST /api with a JSON body (the app token added unless given)."""
    body = {"token": b.app_token, **body}
    out = subprocess.run(
        ["timeout", "10", "curl", "-s", "-m", "8", "-w", "\n%{http_code}",
         "-H", "content-type: application/json",
         "--data-binary", json.dumps(body), f"http://127.0.0.1:{b.http_port}/api"],
        capture_output=True, text=True, timeout=15)
    text, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(text)


def curl_legacy(b: Broker, **fields) -> tuple[int, dict]:
    """The legacy query-string form: GET /api?op=...&token=...&..."""
    fields = {"token": b.app_token, **fields}
    url = f"http://127.0.0.1:{b.http_port}/api?" + urllib.parse.urlencode(fields)
    out = subprocess.run(
        ["timeout", "10", "curl", "-s", "-m", "8", "-w", "\n%{http_code}", url],
        capture_output=True, text=True, timeout=15)
    text, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(text)


def ok(answer: tuple[int, dict]) -> dict:
    status, body = answer
    assert status == 200 and body.get("result") is True, (status, body)
    return body


def users(b: Broker, *names: str) -> dict[str, str]:
    tokens = {}
    for n in names:
        body = ok(curl_json(b, {"op": "useradd", "user": {"address": n}}))
        assert body["user"]["address"] == n
        tokens[n] = body["user"]["token"]
    return tokens


def groupadd(b: Broker, group: dict) -> int:
    body = ok(curl_json(b, {"op": "groupadd", "group": group}))
    return body["group"]["gid"]


# --------------------------------------------------------------------------- mosquitto


def auth(tokens: dict[str, str] | None, user: str | None) -> list[str]:
    if user is None:
        return []
    return ["-u", user, "-P", tokens[user]]


class Pub:
    def __init__(self, completed: subprocess.CompletedProcess):
        self.rc = completed.returncode
        self.stdout = completed.stdout
        self.stderr = completed.stderr

    @property
    def denied(self) -> bool:
        return "Not authorized" in self.stderr or "RC:135" in self.stdout


def pub(b: Broker, tokens, user, topic, payload, *, qos=0, version=V311, retain=False,
        extra: list[str] | None = None, lines: str | None = None) -> Pub:
    args = ["timeout", "10", "mosquitto_pub", "-h", "127.0.0.1", "-p", str(b.port), "-d",
            "-V", version, "-q", str(qos), "-t", topic, *auth(tokens, user)]
    if retain:
        args.append("-r")
    if lines is not None:
        args.append("-l")
    elif payload is not None:
        args += ["-m", payload]
    args += extra or []
    done = subprocess.run(args, capture_output=True, text=True, timeout=15, input=lines)
    return Pub(done)


class Sub:
    """A running mosquitto_sub (-d, -F with separators) whose messages land in a queue."""

    def __init__(self, b: Broker, tokens, user, topics, *, version=V311, qos=1,
                 count: int | None = None, wait_secs: int = 30, extra: list[str] | None = None,
                 fmt: str = "%r" + SEP + "%q" + SEP + "%t" + SEP + "%p",
                 expect_subscribed: bool = True):
        if isinstance(topics, str):
            topics = [topics]
        args = ["timeout", str(wait_secs + 5), "stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1",
                "-p", str(b.port), "-d", "-V", version, "-q", str(qos),
                "-W", str(wait_secs), "-F", "MSG" + SEP + fmt, *auth(tokens, user)]
        for t in topics:
            args += ["-t", t]
        if count is not None:
            args += ["-C", str(count)]
        args += extra or []
        self.messages: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.suback_line = None
        self.log: list[str] = []
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if expect_subscribed:
            assert self.subscribed.wait(WAIT), f"mosquitto_sub never subscribed: {self.log}"
            assert self.granted_ok(), f"subscription refused: {self.suback_line}"

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            if line.startswith("MSG" + SEP):
                self.messages.put(line.split(SEP)[1:])
            elif line.startswith("Subscribed (mid"):
                self.suback_line = line
                self.subscribed.set()
        self.ended.set()
        self.subscribed.set()

    def granted_ok(self) -> bool:
        # "Subscribed (mid: 1): 1, 1" — any code ≥ 0x80 is a refusal
        if self.suback_line is None:
            return False
        codes = [int(c) for c in self.suback_line.split("):", 1)[1].split(",")]
        return all(c < 0x80 for c in codes)

    def granted(self) -> list[int]:
        return [int(c) for c in self.suback_line.split("):", 1)[1].split(",")]

    def get(self, timeout=WAIT) -> list[str]:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout} s; log: {self.log[-8:]}") from None

    def payloads(self, n: int, timeout=WAIT) -> list[str]:
        return [self.get(timeout)[-1] for _ in range(n)]

    def nothing(self, quiet=QUIET):
        try:
            m = self.messages.get(timeout=quiet)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message: {m}")

    def drain(self, quiet=QUIET) -> list[list[str]]:
        got = []
        while True:
            try:
                got.append(self.messages.get(timeout=quiet))
            except queue.Empty:
                return got

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)  # `timeout` forwards it to mosquitto_sub
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)


def sub(procs, *args, **kwargs) -> Sub:
    s = Sub(*args, **kwargs)
    procs.append(s)
    return s


def assert_sub_refused(procs, b, tokens, user, topic, version):
    """SUBACK refuses `user`'s subscription to `topic`: v5 0x87, 3.1.1 0x80 (SPEC §6)."""
    s = sub(procs, b, tokens, user, topic, version=version, expect_subscribed=False)
    assert s.subscribed.wait(WAIT)
    assert s.granted() == [0x87 if version == V5 else 0x80]


# --------------------------------------------------------------------------- 1. normal group


@pytest.mark.parametrize("version", [V311, V5])
def test_normal_group_members_only(b, procs, version):
    t = users(b, "alice", "bob", "carol")
    gid = groupadd(b, {"name": "team", "members": {"m": "alice,bob"}})

    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    carol = sub(procs, b, t, "carol", "groups/#", version=version)

    r = pub(b, t, "alice", f"groups/{gid}", "hello", version=version)  # default QoS 0
    assert r.rc == 0, r.stderr
    retain, qos, topic, payload = bob.get()
    assert (topic, payload) == (f"groups/{gid}", "hello")
    carol.nothing()

    # a non-member's publish is not delivered: v5 QoS 1 gets PUBACK 0x87, which
    # mosquitto_pub reports on stderr ("Not authorized"); 3.1.1 gets a normal PUBACK.
    r = pub(b, t, "carol", f"groups/{gid}", "intruder", qos=1, version=version)
    if version == V5:
        assert r.denied, (r.stdout, r.stderr)
    else:
        assert r.rc == 0 and not r.denied, (r.stdout, r.stderr)
    bob.nothing()
    carol.nothing()

    # a non-member subscribing to the group's own topic is refused (v5 0x87, 3.1.1 0x80)
    assert_sub_refused(procs, b, t, "carol", f"groups/{gid}", version)


# --------------------------------------------------------------------------- 2. restricted


@pytest.mark.parametrize("version", [V311, V5])
def test_restricted_group_member_cs0_via_legacy_form(b, procs, version):
    t = users(b, "alice", "bob", "carol")
    # legacy form: flag 0x1 = selected members can send (send 1)
    body = ok(curl_legacy(b, op="groupadd", name="restricted", flag="1"))
    gid = body["group"]["gid"]
    assert body["group"]["permissions"]["send"] == 1
    ok(curl_legacy(b, op="groupeditmembers", gid=str(gid), m="alice,bob,carol"))
    ok(curl_legacy(b, op="groupeditmembers", gid=str(gid), m="bob", cs="0"))
    members = ok(curl_json(b, {"op": "groupgetmembers", "group": {"gid": gid}}))["members"]
    perms = {m["address"]: m["permissions"] for m in members}
    assert perms["bob"]["send"] is False and perms["bob"]["recv"] is True
    assert perms["alice"]["send"] is True

    carol = sub(procs, b, t, "carol", "groups/#", version=version)
    r = pub(b, t, "bob", f"groups/{gid}", "from-bob", qos=1, version=version)
    if version == V5:
        assert r.denied, (r.stdout, r.stderr)
    carol.nothing()
    r = pub(b, t, "alice", f"groups/{gid}", "from-alice", qos=1, version=version)
    assert not r.denied, r.stderr
    assert carol.get()[2:] == [f"groups/{gid}", "from-alice"]


@pytest.mark.parametrize("version", [V311, V5])
def test_broadcast_only_admins_send(b, procs, version):
    t = users(b, "admin", "bob", "carol")
    gid = groupadd(b, {"name": "news", "permissions": {"send": 1},
                       "members": {"m": "bob,carol", "permissions": {"send": False}}})
    ok(curl_json(b, {"op": "groupeditmembers", "group": {"gid": gid, "members": {
        "m": "admin", "permissions": {"send": True}, "admin": {"admin": True}}}}))

    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    carol = sub(procs, b, t, "carol", "groups/#", version=version)
    assert not pub(b, t, "admin", f"groups/{gid}", "announcement", qos=1, version=version).denied
    assert bob.get()[3] == "announcement"
    assert carol.get()[3] == "announcement"

    r = pub(b, t, "bob", f"groups/{gid}", "reply-all", qos=1, version=version)
    if version == V5:
        assert r.denied, r.stderr
    bob.nothing()
    carol.nothing()


# --------------------------------------------------------------------------- 3. public room


@pytest.mark.parametrize("version", [V311, V5])
def test_public_room_anyone_sends_members_receive(b, procs, version):
    t = users(b, "alice", "bob", "carol")
    gid = groupadd(b, {"name": "lobby", "permissions": {"send": 2}, "members": {"m": "alice"}})
    alice = sub(procs, b, t, "alice", "groups/#", version=version)
    carol = sub(procs, b, t, "carol", "groups/#", version=version)
    anon = sub(procs, b, t, None, "groups/#", version=version)

    r = pub(b, t, "bob", f"groups/{gid}", "from-bob", qos=1, version=version)
    assert r.rc == 0 and not r.denied, r.stderr
    r = pub(b, t, None, f"groups/{gid}", "from-anon", qos=1, version=version)
    assert r.rc == 0 and not r.denied, r.stderr
    assert sorted(alice.payloads(2)) == ["from-anon", "from-bob"]
    carol.nothing()
    anon.nothing(0.2)


# --------------------------------------------------------------------------- 4. hunt group


@pytest.mark.parametrize("version", [V311, V5])
def test_hunt_group_round_robin(b, procs, version):
    t = users(b, "sender", "r1", "r2", "r3")
    gid = groupadd(b, {"name": "support", "permissions": {"recv": 2},
                       "members": {"m": "sender,r1,r2,r3"}})
    subs = {u: sub(procs, b, t, u, "groups/#", version=version) for u in ("r1", "r2", "r3")}
    n = 9
    lines = "".join(f"m{i}\n" for i in range(n))
    r = pub(b, t, "sender", f"groups/{gid}", "", qos=1, version=version, lines=lines)
    assert r.rc == 0 and not r.denied, r.stderr
    got: dict[str, list[str]] = {u: [] for u in subs}
    deadline = time.monotonic() + WAIT
    while sum(map(len, got.values())) < n and time.monotonic() < deadline:
        for u, s in subs.items():
            got[u] += [m[-1] for m in s.drain(0.1)]
    for u, s in subs.items():
        got[u] += [m[-1] for m in s.drain(0.3)]
    everything = sorted(p for ps in got.values() for p in ps)
    assert everything == sorted(f"m{i}" for i in range(n)), got  # each exactly once
    # rotating: with three eligible members, nine messages are three each
    assert sorted(len(v) for v in got.values()) == [3, 3, 3], got


@pytest.mark.parametrize("version", [V311, V5])
def test_hunt_group_messages_wait_for_first_subscriber(b, procs, version):
    t = users(b, "sender", "r1", "r2")
    gid = groupadd(b, {"name": "queue", "permissions": {"recv": 2},
                       "members": {"m": "sender,r1,r2"}})
    assert pub(b, t, "sender", f"groups/{gid}", "q0", qos=0, version=version).rc == 0
    assert pub(b, t, "sender", f"groups/{gid}", "q1", qos=1, version=version).rc == 0
    time.sleep(0.3)
    first = sub(procs, b, t, "r1", "groups/#", version=version)
    assert sorted(first.payloads(2)) == ["q0", "q1"]
    second = sub(procs, b, t, "r2", "groups/#", version=version)
    second.nothing()
    first.nothing(0.2)


# --------------------------------------------------------------------------- 5. per-type rules


@pytest.mark.parametrize("version", [V311, V5])
def test_type_rule_send2_for_type5_only(b, procs, version):
    t = users(b, "alice", "outsider")
    gid = groupadd(b, {"name": "typed", "members": {"m": "alice"}})
    body = ok(curl_json(b, {"op": "groupset", "group": {"gid": gid, "type": 5,
                                                         "permissions": {"send": 2}}}))
    alice = sub(procs, b, t, "alice", "groups/#", version=version)

    r = pub(b, t, "outsider", f"groups/{gid}/5", "typed-ok", qos=1, version=version)
    assert not r.denied, r.stderr
    assert alice.get()[2:] == [f"groups/{gid}/5", "typed-ok"]
    r = pub(b, t, "outsider", f"groups/{gid}/5/sub/topic", "typed-deep", qos=1, version=version)
    assert not r.denied, r.stderr
    assert alice.get()[2:] == [f"groups/{gid}/5/sub/topic", "typed-deep"]

    r = pub(b, t, "outsider", f"groups/{gid}", "type0-no", qos=1, version=version)
    if version == V5:
        assert r.denied, r.stderr
    r = pub(b, t, "outsider", f"groups/{gid}/6", "type6-no", qos=1, version=version)
    if version == V5:
        assert r.denied, r.stderr
    alice.nothing()


# --------------------------------------------------------------------------- 6. retained


@pytest.mark.parametrize("version", [V311, V5])
def test_retained_group_message_only_to_members(b, procs, version):
    t = users(b, "alice", "bob", "carol")
    gid = groupadd(b, {"name": "ret", "members": {"m": "alice,bob"}})
    r = pub(b, t, "alice", f"groups/{gid}", "sticky", qos=1, retain=True, version=version)
    assert r.rc == 0 and not r.denied, r.stderr
    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    retain, qos, topic, payload = bob.get()
    assert (retain, topic, payload) == ("1", f"groups/{gid}", "sticky")
    carol = sub(procs, b, t, "carol", "groups/#", version=version)
    anon = sub(procs, b, t, None, "groups/#", version=version)
    carol.nothing()
    anon.nothing(0.2)


# --------------------------------------------------------------------------- 7. revocation


REVOKE = {
    "remove": lambda b, gid: curl_json(b, {"op": "groupeditmembers", "group": {
        "gid": gid, "members": {"m": "bob", "remove": True}}}),
    "deactivate": lambda b, gid: curl_json(b, {"op": "groupset", "group": {"gid": gid, "active": False}}),
    "delete": lambda b, gid: curl_json(b, {"op": "groupdel", "group": {"gid": gid}}),
}


@pytest.mark.parametrize("version", [V311, V5])
@pytest.mark.parametrize("how", list(REVOKE))
def test_revocation_stops_live_subscription(b, procs, how, version):
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "rev", "permissions": {"send": 2}, "members": {"m": "alice,bob"}})
    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    alice = sub(procs, b, t, "alice", "groups/#", version=version)
    # a non-member publisher (public room), so the group's sender side survives a removal
    assert pub(b, t, None, f"groups/{gid}", "before", qos=1, version=version).rc == 0
    assert bob.get()[3] == "before"
    assert alice.get()[3] == "before"

    ok(REVOKE[how](b, gid))
    assert pub(b, t, None, f"groups/{gid}", "after", qos=1, version=version).rc == 0
    bob.nothing()
    assert bob.alive(), "the subscriber was disconnected instead of filtered"
    if how == "remove":
        assert alice.get()[3] == "after"  # still a member
    else:
        alice.nothing(0.2)


# --------------------------------------------------------------------------- 8. presence, events


@pytest.mark.parametrize("version", [V311, V5])
def test_presence_snapshot_and_online_offline(b, procs, version):
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "pres", "members": {"m": "alice,bob"}})
    watch = sub(procs, b, t, "bob", f"$groups/{gid}/presence", version=version)
    snap = json.loads(watch.get()[3])
    assert snap["gid"] == gid
    online = {m["address"]: m["online"] for m in snap["members"]}
    assert online == {"alice": False, "bob": True}, snap

    alice = sub(procs, b, t, "alice", "some/ordinary/topic", version=version)
    ev = json.loads(watch.get()[3])
    assert (ev["gid"], ev["address"], ev["online"]) == (gid, "alice", True), ev
    assert isinstance(ev["ts"], (int, float))
    alice.kill()
    ev = json.loads(watch.get()[3])
    assert (ev["gid"], ev["address"], ev["online"]) == (gid, "alice", False), ev


@pytest.mark.parametrize("version", [V311, V5])
def test_presence_refused_to_non_member(b, procs, version):
    t = users(b, "alice", "carol")
    gid = groupadd(b, {"name": "pres", "members": {"m": "alice"}})
    assert_sub_refused(procs, b, t, "carol", f"$groups/{gid}/presence", version)


@pytest.mark.parametrize("version", [V311, V5])
def test_user_events_after_groupeditmembers(b, procs, version):
    t = users(b, "alice", "carol")
    gid = groupadd(b, {"name": "ev", "members": {"m": "alice"}})
    ev = sub(procs, b, t, "carol", "$users/carol/events", version=version)
    ok(curl_json(b, {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "carol"}}}))
    e = json.loads(ev.get()[3])
    assert (e["event"], e["gid"]) == ("group.member_added", gid), e
    ok(curl_json(b, {"op": "groupeditmembers", "group": {"gid": gid, "members": {
        "m": "carol", "permissions": {"send": False}}}}))
    e = json.loads(ev.get()[3])
    assert (e["event"], e["gid"]) == ("group.permissions_changed", gid), e
    ok(curl_json(b, {"op": "groupeditmembers", "group": {"gid": gid, "members": {
        "m": "carol", "remove": True}}}))
    e = json.loads(ev.get()[3])
    assert (e["event"], e["gid"]) == ("group.member_removed", gid), e

    # another user's events topic is not readable
    other = sub(procs, b, t, "alice", "$users/carol/events", version=version,
                expect_subscribed=False)
    assert other.subscribed.wait(WAIT)
    assert all(c >= 0x80 for c in other.granted())


def test_group_updated_and_deleted_events(b, procs):
    t = users(b, "alice")
    gid = groupadd(b, {"name": "ev2", "members": {"m": "alice"}})
    ev = sub(procs, b, t, "alice", "$users/alice/events", version=V5)
    ok(curl_json(b, {"op": "groupset", "group": {"gid": gid, "name": "renamed"}}))
    e = json.loads(ev.get()[3])
    assert (e["event"], e["gid"]) == ("group.updated", gid), e
    ok(curl_json(b, {"op": "groupdel", "group": {"gid": gid}}))
    e = json.loads(ev.get()[3])
    assert (e["event"], e["gid"]) == ("group.deleted", gid), e


# --------------------------------------------------------------------------- 9. real-time API


def test_realtime_api_v311_replies_topic(b, procs):
    t = users(b, "alice", "bob")
    replies = sub(procs, b, t, "alice", "$users/alice/replies", version=V311)
    req = {"op": "groupadd", "id": "req-311", "group": {"name": "mine", "members": {"m": "bob"}}}
    r = pub(b, t, "alice", "$groups/ops", json.dumps(req), qos=1, version=V311)
    assert r.rc == 0, r.stderr
    answer = json.loads(replies.get()[3])
    assert answer["id"] == "req-311" and answer["result"] is True, answer
    assert answer["op"] == "groupadd"
    gid = answer["group"]["gid"]
    # the creator became owner
    members = ok(curl_json(b, {"op": "groupgetmembers", "group": {"gid": gid}}))["members"]
    admin = {m["address"]: m["admin"] for m in members}
    assert admin["alice"]["owner"] is True, members
    # a plain member without admin flags may not change the group: PERMISSION
    bob_replies = sub(procs, b, t, "bob", "$users/bob/replies", version=V311)
    req = {"op": "groupset", "id": 77, "group": {"gid": gid, "name": "hijacked"}}
    assert pub(b, t, "bob", "$groups/ops", json.dumps(req), qos=1, version=V311).rc == 0
    answer = json.loads(bob_replies.get()[3])
    assert (answer["id"], answer["result"], answer["error"]) == (77, False, "PERMISSION"), answer


def test_realtime_api_v5_response_topic_and_correlation(b, procs):
    t = users(b, "alice")
    fmt = "%D" + SEP + "%t" + SEP + "%p"
    replies = sub(procs, b, t, "alice", "resp/alice", version=V5, fmt=fmt)
    fallback = sub(procs, b, t, "alice", "$users/alice/replies", version=V5)
    req = {"op": "groupadd", "group": {"name": "v5group"}}
    r = pub(b, t, "alice", "$groups/ops", json.dumps(req), qos=1, version=V5,
            extra=["-D", "publish", "response-topic", "resp/alice",
                   "-D", "publish", "correlation-data", "corr-123"])
    assert r.rc == 0 and not r.denied, r.stderr
    corr, topic, payload = replies.get()
    assert topic == "resp/alice"
    assert corr == "corr-123"
    answer = json.loads(payload)
    assert answer["op"] == "groupadd" and answer["result"] is True, answer
    fallback.nothing(0.3)


def test_clients_may_not_publish_to_other_dollar_topics(b, procs):
    t = users(b, "alice")
    gid = groupadd(b, {"name": "p", "members": {"m": "alice"}})
    watch = sub(procs, b, t, "alice", f"$groups/{gid}/presence", version=V5)
    watch.get()  # snapshot
    r = pub(b, t, "alice", f"$groups/{gid}/presence", "{}", qos=1, version=V5)
    assert r.denied, (r.stdout, r.stderr)
    watch.nothing()


# --------------------------------------------------------------------------- 10. history


def test_groupmessages_history_newest_first(b, procs):
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "hist", "members": {"m": "alice,bob"}})
    for p in ("first", "second", "third"):
        assert not pub(b, t, "alice", f"groups/{gid}", p, qos=1, version=V5).denied
    assert not pub(b, t, "bob", f"groups/{gid}/5", "typed", qos=1, version=V311).denied
    before = time.time()
    body = ok(curl_json(b, {"op": "groupmessages", "group": {"gid": gid}, "start": 0, "count": 20}))
    msgs = body["messages"]
    assert [m["payload"] for m in msgs] == ["typed", "third", "second", "first"], msgs
    for m in msgs:
        assert {"id", "from", "type", "ts", "payload", "encoding"} <= set(m), m
        assert m["encoding"] == "utf8"
        assert abs(m["ts"] - before) < 60
    assert [m["from"] for m in msgs] == ["bob", "alice", "alice", "alice"]
    assert [m["type"] for m in msgs] == [5, 0, 0, 0]
    ids = [m["id"] for m in msgs]
    assert len(set(ids)) == 4 and ids == sorted(ids, reverse=True), ids
    # paging
    page = ok(curl_json(b, {"op": "groupmessages", "group": {"gid": gid}, "start": 1, "count": 2}))
    assert [m["payload"] for m in page["messages"]] == ["third", "second"]
    # the legacy query form
    legacy = ok(curl_legacy(b, op="groupmessages", gid=str(gid), count="1"))
    assert [m["payload"] for m in legacy["messages"]] == ["typed"]
    # a binary payload comes back base64-encoded
    import base64
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(b"\xff\x00\x01\xfe")
        f.flush()
        assert not pub(b, t, "alice", f"groups/{gid}", None, qos=1, version=V5,
                       extra=["-f", f.name]).denied
    newest = ok(curl_json(b, {"op": "groupmessages", "group": {"gid": gid}, "count": 1}))["messages"][0]
    assert newest["encoding"] == "base64", newest
    assert base64.b64decode(newest["payload"]) == b"\xff\x00\x01\xfe"


# --------------------------------------------------------------------------- extra edges


@pytest.mark.parametrize("version", [V311, V5])
def test_restricted_recv_cr0_via_legacy_post_form(b, procs, version):
    """recv 1 (flag 0x10) with `cr=0` for one member, set through a form-encoded POST."""
    t = users(b, "alice", "bob", "carol")
    gid = ok(curl_legacy(b, op="groupadd", name="rr", flag=str(0x10)))["group"]["gid"]
    out = subprocess.run(
        ["timeout", "10", "curl", "-s", "-m", "8", f"http://127.0.0.1:{b.http_port}/api",
         "--data-urlencode", "op=groupeditmembers", "--data-urlencode", f"token={b.app_token}",
         "-d", f"gid={gid}", "-d", "m=alice,bob,carol", "-d", "cs=1", "-d", "cr=1", "-d", "delete=0"],
        capture_output=True, text=True, timeout=15)
    assert json.loads(out.stdout)["result"] is True, out.stdout
    ok(curl_legacy(b, op="groupeditmembers", gid=str(gid), m="carol", cr="0"))
    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    carol = sub(procs, b, t, "carol", "groups/#", version=version)
    assert not pub(b, t, "alice", f"groups/{gid}", "selected-only", qos=1, version=version).denied
    assert bob.get()[3] == "selected-only"
    carol.nothing()
    # the group's own topic: carol can receive nothing from it → refused
    assert_sub_refused(procs, b, t, "carol", f"groups/{gid}", version)


@pytest.mark.parametrize("version", [V311, V5])
def test_member_type_rule_recv_false_for_type5(b, procs, version):
    t = users(b, "alice", "carol")
    gid = groupadd(b, {"name": "mt", "members": {"m": "alice,carol"}})
    # member permissions apply only where the group value is 1 (SPEC §4): recv 1 for type 5
    ok(curl_json(b, {"op": "groupset", "group": {"gid": gid, "type": 5, "permissions": {"recv": 1}}}))
    ok(curl_json(b, {"op": "groupeditmembers", "group": {"gid": gid, "type": 5, "members": {
        "m": "carol", "permissions": {"recv": False}}}}))
    carol = sub(procs, b, t, "carol", "groups/#", version=version)
    assert not pub(b, t, "alice", f"groups/{gid}/5", "t5", qos=1, version=version).denied
    assert not pub(b, t, "alice", f"groups/{gid}", "t0", qos=1, version=version).denied
    assert carol.get()[2:] == [f"groups/{gid}", "t0"]
    carol.nothing()


@pytest.mark.parametrize("version", [V311, V5])
def test_demotion_stops_live_subscription(b, procs, version):
    """recv 1 and the member's own recv turned off while subscribed."""
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "dem", "permissions": {"recv": 1}, "members": {"m": "alice,bob"}})
    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    assert not pub(b, t, "alice", f"groups/{gid}", "one", qos=1, version=version).denied
    assert bob.get()[3] == "one"
    ok(curl_json(b, {"op": "groupeditmembers", "group": {"gid": gid, "members": {
        "m": "bob", "permissions": {"recv": False}}}}))
    assert not pub(b, t, "alice", f"groups/{gid}", "two", qos=1, version=version).denied
    bob.nothing()
    assert bob.alive()


@pytest.mark.parametrize("version", [V311, V5])
def test_not_yet_started_group_denies(b, procs, version):
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "later", "validity": {"start": 3600, "duration": 86400},
                       "members": {"m": "alice,bob"}})
    bob = sub(procs, b, t, "bob", "groups/#", version=version)
    r = pub(b, t, "alice", f"groups/{gid}", "too-early", qos=1, version=version)
    if version == V5:
        assert r.denied, r.stderr
    bob.nothing()


@pytest.mark.parametrize("version", [V311, V5])
def test_anonymous_cannot_send_to_normal_group(b, procs, version):
    t = users(b, "alice")
    gid = groupadd(b, {"name": "closed", "members": {"m": "alice"}})
    alice = sub(procs, b, t, "alice", "groups/#", version=version)
    r = pub(b, t, None, f"groups/{gid}", "anon", qos=1, version=version)
    if version == V5:
        assert r.denied, r.stderr
    alice.nothing()


@pytest.mark.parametrize("version", [V311, V5])
def test_wrong_token_refused_at_connect(b, procs, version):
    users(b, "alice")
    r = pub(b, {"alice": "0" * 64}, "alice", "x", "y", version=version)
    assert r.rc != 0
    assert "not authorised" in r.stderr.lower() or "bad user name or password" in r.stderr.lower(), r.stderr


def test_nostore_retained_reaches_current_subscribers_not_kept(b, procs):
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "ns", "flags": 0x40, "members": {"m": "alice,bob"}})
    bob = sub(procs, b, t, "bob", "groups/#", version=V5)
    assert not pub(b, t, "alice", f"groups/{gid}", "ephemeral", qos=1, retain=True, version=V5).denied
    assert bob.get()[3] == "ephemeral"
    later = sub(procs, b, t, "bob", "groups/#", version=V311)
    later.nothing()
    body = ok(curl_json(b, {"op": "groupmessages", "group": {"gid": gid}}))
    assert body["messages"] == [], body


def test_live_topic_not_retained(b, procs):
    t = users(b, "alice", "bob")
    gid = groupadd(b, {"name": "live", "members": {"m": "alice,bob"}})
    bob = sub(procs, b, t, "bob", f"groups/{gid}/live/#", version=V5)
    assert not pub(b, t, "alice", f"groups/{gid}/live/pos", "p1", qos=1, retain=True, version=V5).denied
    assert bob.get()[2:] == [f"groups/{gid}/live/pos", "p1"]
    later = sub(procs, b, t, "bob", f"groups/{gid}/live/#", version=V5)
    later.nothing()
    body = ok(curl_json(b, {"op": "groupmessages", "group": {"gid": gid}}))
    assert body["messages"] == [], body


def test_v5_qos2_denied_publish_pubrec_0x87(b, procs):
    t = users(b, "alice", "carol")
    gid = groupadd(b, {"name": "q2", "members": {"m": "alice"}})
    alice = sub(procs, b, t, "alice", "groups/#", version=V5, qos=2)
    r = pub(b, t, "carol", f"groups/{gid}", "nope", qos=2, version=V5)
    assert r.denied, (r.stdout, r.stderr)
    assert not pub(b, t, "alice", f"groups/{gid}", "yes", qos=2, version=V5).denied
    retain, qos, topic, payload = alice.get()
    assert (qos, payload) == ("2", "yes")
    alice.nothing(0.3)
