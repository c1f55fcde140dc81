"""An outside tester's probe of SPEC §3–§8: a chat / IoT backend driving the management API over
HTTP and paho clients over MQTT 3.1.1 and 5 against the real binary. Written from the SPEC
(and the README's documented decisions where the SPEC is silent) only.

Run:  ROOKERY_BIN=/path/to/rookery python3 -m pytest -q broker/tests/python/test_spec_probe.py

Every wait is bounded by conftest.WAIT / QUIET.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import QUIET, WAIT, broker_binary

V311, V5 = mqtt.MQTTv311, mqtt.MQTTv5
VERSIONS = [V311, V5]
VID = {V311: "v311", V5: "v5"}


# ----------------------------------------------------------------------------------------------
# helpers

@pytest.fixture
def client_factory(client_factory):
    """conftest's factory, but at the end every client still connected is sent DISCONNECT first so
    that its network thread ends at once (conftest's loop_stop otherwise waits ~1 s per client)."""
    made = []

    def make(*args, **kwargs):
        c = client_factory(*args, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        try:
            if c.paho.is_connected():
                c.paho.disconnect()
        except Exception:
            pass
    deadline = time.monotonic() + WAIT
    for c in made:
        thread = getattr(c.paho, "_thread", None)
        if thread is not None:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

def code(rc) -> int:
    return rc.value if hasattr(rc, "value") else int(rc)


def refused_sub(version) -> int:
    return 0x87 if version == V5 else 0x80


def ok(broker, request):
    status, answer = broker.api(request)
    assert status == 200 and answer.get("result") is True, (request, status, answer)
    return answer


def fails(broker, request, status, error):
    got_status, answer = broker.api(request)
    assert (got_status, answer.get("result"), answer.get("error")) == (status, False, error), (request, got_status, answer)
    assert isinstance(answer.get("message"), str) and answer["message"], answer
    return answer


def users(broker, *names) -> dict[str, str]:
    return {n: broker.add_user(n) for n in names}


def new_group(broker, **group) -> int:
    return ok(broker, {"op": "groupadd", "group": group})["group"]["gid"]


def edit(broker, gid, m, **members):
    return ok(broker, {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": m, **members}}})


def group_get(broker, gid):
    return ok(broker, {"op": "groupget", "group": {"gid": gid}})["group"]


def member_list(broker, gid):
    return ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}})["members"]


def login(cf, broker, tokens, name, version, cid=None, **kw):
    c = cf(broker.port, cid or f"{name}-{VID[version]}", version, username=name, password=tokens[name], **kw)
    assert code(c.reason_code) == 0, (name, c.reason_code)
    return c


def anon(cf, broker, version, cid="anon"):
    c = cf(broker.port, f"{cid}-{VID[version]}", version)
    assert code(c.reason_code) == 0, c.reason_code
    return c


def suback(client, topic, qos=1) -> int:
    codes = client.subscribe(topic, qos)
    assert len(codes) == 1
    return code(codes[0])


def payloads(client, quiet=QUIET) -> list[bytes]:
    return [m.payload for m in client.drain(quiet)]


def collect(clients, quiet=QUIET) -> dict:
    """Drains several clients, sharing one quiet period at the end."""
    got = {k: [] for k in clients}
    deadline = time.monotonic() + quiet
    while True:
        any_msg = False
        for k, c in clients.items():
            while True:
                try:
                    got[k].append(c.messages.get_nowait())
                    any_msg = True
                except Exception:
                    break
        if any_msg:
            deadline = time.monotonic() + quiet
        if time.monotonic() >= deadline:
            return got
        time.sleep(0.02)


def http(broker, method, query=None, body=None, content_type=None):
    url = f"http://127.0.0.1:{broker.http_port}/api"
    if query is not None:
        url += "?" + urllib.parse.urlencode(query)
    headers = {"content-type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Rt:
    """A real-time API caller over $groups/ops on its own connection."""

    def __init__(self, cf, broker, tokens, name, version, cid=None):
        self.version = version
        self.c = login(cf, broker, tokens, name, version, cid=cid or f"rt-{name}-{VID[version]}")
        self.name = name
        self.n = 0
        self.reply_topic = f"rt/{name}/replies" if version == V5 else f"$users/{name}/replies"
        assert suback(self.c, self.reply_topic) < 0x80

    def raw(self, payload: bytes, corr: bytes | None = None):
        props = None
        if self.version == V5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = self.reply_topic
            props.CorrelationData = corr or b"c"
        rc = self.c.publish("$groups/ops", payload, 1, properties=props)
        assert code(rc) < 0x80, rc
        msg = self.c.message()
        assert msg.topic == self.reply_topic
        if self.version == V5:
            assert msg.properties.CorrelationData == (corr or b"c")
        return json.loads(msg.payload)

    def __call__(self, request: dict) -> dict:
        self.n += 1
        rid = f"{self.name}-{self.n}"
        answer = self.raw(json.dumps({**request, "id": rid}).encode(), corr=rid.encode())
        assert answer.get("id") == rid, answer
        assert answer.get("op") == request.get("op"), answer
        return answer

    def ok(self, request):
        answer = self(request)
        assert answer["result"] is True, (request, answer)
        return answer

    def refused(self, request, *errors):
        answer = self(request)
        assert answer["result"] is False and answer.get("error") in errors, (request, answer)
        assert answer.get("message"), answer
        return answer


# ----------------------------------------------------------------------------------------------
# §3 identities

GOOD_ADDRESSES = ["a", "x" * 63, "alice.smith-01_x@example.com", "p1(555)0100", "ü" * 63]
BAD_ADDRESSES = ["", "x" * 64, "a/b", "a+b", "a#b", "a\x00b", "a b", "a\tb", "a\nb", "a\u2003b", " lead", "trail "]


def test_user_address_validation(broker):
    for address in BAD_ADDRESSES:
        fails(broker, {"op": "useradd", "id": "bad", "user": {"address": address}}, 400, "BADREQUEST")
    assert ok(broker, {"op": "usersget"})["total"] == 0  # nothing was created
    for address in GOOD_ADDRESSES:
        answer = ok(broker, {"op": "useradd", "id": address, "user": {"address": address}})
        assert answer["id"] == address and answer["user"]["address"] == address
    listed = ok(broker, {"op": "usersget"})
    assert listed["total"] == len(GOOD_ADDRESSES)
    assert sorted(u["address"] for u in listed["users"]) == sorted(GOOD_ADDRESSES)


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_user_token_lifecycle_and_login(broker, client_factory, version):
    now = time.time()
    answer = ok(broker, {"op": "useradd", "id": "r1",
                         "user": {"address": "alice", "name": "Alice", "token": {"expiry": 60}}})
    assert answer["id"] == "r1" and answer["op"] == "useradd"
    user = answer["user"]
    token = user["token"]
    assert isinstance(token, str) and len(token) >= 16
    assert isinstance(user["uid"], int) and user["address"] == "alice"
    # expiry in minutes
    assert abs(user["token_expires"] - (now + 3600)) < 30, user
    # the default expiry is 525600 minutes
    bob = ok(broker, {"op": "useradd", "user": {"address": "bob"}})["user"]
    assert abs(bob["token_expires"] - (now + 525600 * 60)) < 30, bob
    # the token is shown once: never in usersget nor in a userset that does not regenerate it
    listed = ok(broker, {"op": "usersget"})
    assert token not in json.dumps(listed)
    assert all("token" not in u for u in listed["users"]), listed
    set_answer = ok(broker, {"op": "userset", "user": {"address": "alice", "name": "A."}})
    assert token not in json.dumps(set_answer)
    # EXISTS / NOUSER
    fails(broker, {"op": "useradd", "id": 9, "user": {"address": "alice"}}, 409, "EXISTS")
    fails(broker, {"op": "userset", "user": {"address": "nobody", "name": "x"}}, 404, "NOUSER")
    fails(broker, {"op": "userdel", "user": {"address": "nobody"}}, 404, "NOUSER")

    c = client_factory(broker.port, "a1", version, username="alice", password=token)
    assert code(c.reason_code) == 0
    c.disconnect()
    wrong = client_factory(broker.port, "a2", version, username="alice", password="not-it")
    assert code(wrong.reason_code) == 0x86
    unknown = client_factory(broker.port, "a3", version, username="zed", password=token)
    assert code(unknown.reason_code) in (0x86, 0x87)

    # userset with token {} regenerates: the old one stops working, the new one works
    new_token = ok(broker, {"op": "userset", "user": {"address": "alice", "token": {}}})["user"]["token"]
    assert new_token != token
    old = client_factory(broker.port, "a4", version, username="alice", password=token)
    assert code(old.reason_code) == 0x86
    c = client_factory(broker.port, "a5", version, username="alice", password=new_token)
    assert code(c.reason_code) == 0
    c.disconnect()

    # revocation refuses login
    ok(broker, {"op": "userset", "user": {"address": "alice", "token": {"remove": True}}})
    revoked = client_factory(broker.port, "a6", version, username="alice", password=new_token)
    assert code(revoked.reason_code) in (0x86, 0x87)
    assert ok(broker, {"op": "usersget"})["users"][0]["has_token"] is False

    # an inactive user may not log in
    bob_token = bob["token"]
    ok(broker, {"op": "userset", "user": {"address": "bob", "active": False}})
    inactive = client_factory(broker.port, "b1", version, username="bob", password=bob_token)
    assert code(inactive.reason_code) in (0x86, 0x87)
    ok(broker, {"op": "userset", "user": {"address": "bob", "active": True}})
    c = client_factory(broker.port, "b2", version, username="bob", password=bob_token)
    assert code(c.reason_code) == 0
    c.disconnect()

    # a deleted user may not log in; deleting twice is NOUSER
    ok(broker, {"op": "userdel", "user": {"address": "bob"}})
    gone = client_factory(broker.port, "b3", version, username="bob", password=bob_token)
    assert code(gone.reason_code) in (0x86, 0x87)
    fails(broker, {"op": "userdel", "user": {"address": "bob"}}, 404, "NOUSER")

    # anonymous is allowed by default
    a = client_factory(broker.port, "anon", version)
    assert code(a.reason_code) == 0
    a.disconnect()


def test_token_expiry_validation(broker):
    fails(broker, {"op": "useradd", "user": {"address": "a", "token": {"expiry": 0}}}, 400, "BADREQUEST")
    fails(broker, {"op": "useradd", "user": {"address": "a", "token": {"expiry": -5}}}, 400, "BADREQUEST")
    fails(broker, {"op": "useradd", "user": {"address": "a", "token": {"expiry": "60"}}}, 400, "BADREQUEST")
    assert ok(broker, {"op": "usersget"})["total"] == 0
    ok(broker, {"op": "useradd", "user": {"address": "a"}})
    now = time.time()
    u = ok(broker, {"op": "userset", "user": {"address": "a", "token": {"expiry": 1}}})["user"]
    assert abs(u["token_expires"] - (now + 60)) < 10
    fails(broker, {"op": "userset", "user": {"address": "a", "token": {"expiry": 5, "remove": True}}}, 400, "BADREQUEST")


def test_usersget_paging(broker):
    names = [f"u{i:03d}" for i in range(120)]
    for n in reversed(names):
        ok(broker, {"op": "useradd", "user": {"address": n}})
    everything = ok(broker, {"op": "usersget"})
    assert (everything["start"], everything["count"], everything["total"]) == (0, 120, 120)
    assert [u["address"] for u in everything["users"]] == names
    page = ok(broker, {"op": "usersget", "start": 100, "count": 50})
    assert (page["start"], page["count"], page["total"]) == (100, 20, 120)
    assert [u["address"] for u in page["users"]] == names[100:]
    assert ok(broker, {"op": "usersget", "start": 5, "count": 0})["users"] == []


def test_anonymous_can_be_refused_by_config(start_broker, client_factory):
    b = start_broker(config="[auth]\nallow_anonymous = false\n")
    tokens = users(b, "alice")
    for version in VERSIONS:
        a = client_factory(b.port, f"anon-{VID[version]}", version)
        assert code(a.reason_code) in (0x86, 0x87), a.reason_code
        c = login(client_factory, b, tokens, "alice", version)
        c.disconnect()


# ----------------------------------------------------------------------------------------------
# §4 groups, flags and permissions

FLAG_TO_PERMS = [
    (0x0, {"send": 0, "recv": 0, "pub": 0, "sub": 0, "list": 0}),
    (0x1, {"send": 1}), (0x2, {"send": 2}),
    (0x10, {"recv": 1}), (0x20, {"recv": 2}),
    (0x100, {"pub": 1}), (0x200, {"pub": 2}),
    (0x1000, {"sub": 1}), (0x2000, {"sub": 2}),
    (0x10000, {"list": 1}), (0x20000, {"list": 2}),
    (0x2 | 0x10 | 0x200 | 0x2000 | 0x10000, {"send": 2, "recv": 1, "pub": 2, "sub": 2, "list": 1}),
]


def full_perms(partial):
    return {"send": 0, "recv": 0, "pub": 0, "sub": 0, "list": 0, **partial}


def test_flags_and_permissions_agree_both_ways(broker):
    for flags, perms in FLAG_TO_PERMS:
        g = ok(broker, {"op": "groupadd", "group": {"name": f"f{flags:x}", "flags": flags}})["group"]
        assert g["flags"] == flags and g["permissions"] == full_perms(perms), (flags, g)
        assert group_get(broker, g["gid"])["permissions"] == full_perms(perms)
        g = ok(broker, {"op": "groupadd", "group": {"name": f"p{flags:x}", "permissions": perms}})["group"]
        assert g["flags"] == flags and g["permissions"] == full_perms(perms), (perms, g)
    # no-store and loopback are flags only
    g = ok(broker, {"op": "groupadd", "group": {"name": "nl", "flags": 0x40 | 0x80}})["group"]
    assert g["flags"] == 0xC0 and g["nostore"] is True and g["loopback"] is True
    assert g["permissions"] == full_perms({})
    # 0x10|0x20: round-robin among the selected; recv reads 2 and the flags keep both bits
    g = ok(broker, {"op": "groupadd", "group": {"name": "rr-sel", "flags": 0x30}})["group"]
    assert g["flags"] == 0x30 and g["permissions"]["recv"] == 2, g
    assert group_get(broker, g["gid"])["flags"] == 0x30
    # flags first, then permissions on top: the answer's flags always agree
    g = ok(broker, {"op": "groupadd", "group": {"name": "both", "flags": 0x2 | 0x40,
                                                "permissions": {"send": 1, "list": 2}}})["group"]
    assert g["flags"] == 0x1 | 0x40 | 0x20000 and g["permissions"] == full_perms({"send": 1, "list": 2}), g
    # groupset changes them the same way
    gid = g["gid"]
    g = ok(broker, {"op": "groupset", "group": {"gid": gid, "flags": 0x20 | 0x80}})["group"]
    assert g["flags"] == 0xA0 and g["permissions"] == full_perms({"recv": 2}) and g["loopback"] is True
    g = ok(broker, {"op": "groupset", "group": {"gid": gid, "permissions": {"recv": 0, "sub": 2}}})["group"]
    assert g["flags"] == 0x80 | 0x2000 and g["permissions"] == full_perms({"sub": 2}), g
    # a value outside 0..2 is refused and changes nothing
    fails(broker, {"op": "groupset", "group": {"gid": gid, "permissions": {"send": 3}}}, 400, "BADREQUEST")
    assert group_get(broker, gid)["flags"] == 0x80 | 0x2000


def test_groupadd_get_members_and_del(broker):
    users(broker, "alice", "bob", "carol")
    now = time.time()
    answer = ok(broker, {"op": "groupadd", "id": "g", "group": {
        "name": "Support", "flags": 0, "active": True,
        "validity": {"start": 0, "duration": 31536000, "expiryext": 0},
        "permissions": {"send": 0, "recv": 2, "pub": 0, "sub": 0, "list": 1},
        "members": {"m": "alice,bob", "remove": False,
                    "permissions": {"send": True, "recv": True, "pub": True, "sub": True, "list": True},
                    "admin": {"owner": False, "admin": True, "adduser": True}}}})
    assert answer["id"] == "g"
    g = answer["group"]
    gid = g["gid"]
    assert isinstance(gid, int) and g["name"] == "Support"
    assert g["permissions"] == {"send": 0, "recv": 2, "pub": 0, "sub": 0, "list": 1}
    assert g["flags"] == 0x20 | 0x10000
    got = group_get(broker, gid)
    assert got["active"] is True and got["member_count"] == 2
    assert abs(got["validity"]["start"] - now) < 5
    assert got["validity"]["expires"] == got["validity"]["start"] + 31536000
    members = member_list(broker, gid)
    assert [m["address"] for m in members] == ["alice", "bob"]
    for m in members:
        assert m["permissions"] == {"send": True, "recv": True, "pub": True, "sub": True, "list": True}
        assert m["admin"]["admin"] is True and m["admin"]["adduser"] is True and m["admin"]["owner"] is False
        assert abs(m["since"] - now) < 5
    # default duration is one year
    g2 = group_get(broker, new_group(broker, name="plain"))
    assert g2["validity"]["duration"] == 31536000 and g2["flags"] == 0 and g2["active"] is True
    # edit, add, remove
    edit(broker, gid, "carol", permissions={"send": False}, admin={"modify": True})
    edit(broker, gid, "alice", permissions={"recv": False})
    members = {m["address"]: m for m in member_list(broker, gid)}
    assert members["carol"]["permissions"]["send"] is False and members["carol"]["permissions"]["recv"] is True
    assert members["carol"]["admin"]["modify"] is True
    assert members["alice"]["permissions"]["recv"] is False and members["alice"]["permissions"]["send"] is True
    edit(broker, gid, "bob,carol", remove=True)
    assert [m["address"] for m in member_list(broker, gid)] == ["alice"]
    # only existing users; a list naming one unknown user adds nobody
    fails(broker, {"op": "groupeditmembers", "id": 5, "group": {"gid": gid, "members": {"m": "bob,ghost"}}},
          404, "NOUSER")
    assert [m["address"] for m in member_list(broker, gid)] == ["alice"]
    fails(broker, {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "bob", "remove": True}}},
          404, "NOTMEMBER")
    fails(broker, {"op": "groupadd", "group": {"name": "x", "members": {"m": "ghost"}}}, 404, "NOUSER")
    # groupdel; gids are never reused
    ok(broker, {"op": "groupdel", "group": {"gid": gid}})
    fails(broker, {"op": "groupget", "group": {"gid": gid}}, 404, "NOGROUP")
    fails(broker, {"op": "groupdel", "group": {"gid": gid}}, 404, "NOGROUP")
    fails(broker, {"op": "groupgetmembers", "group": {"gid": gid}}, 404, "NOGROUP")
    gid3 = new_group(broker, name="after")
    assert gid3 > g2["gid"] > gid


def test_groupsget_and_groupgetmembers_paging_without_hidden_cap(broker):
    names = [f"m{i:03d}" for i in range(250)]
    for n in names:
        ok(broker, {"op": "useradd", "user": {"address": n}})
    gid = new_group(broker, name="big", members={"m": ",".join(reversed(names))})
    everything = ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}})
    assert (everything["start"], everything["count"], everything["total"]) == (0, 250, 250)
    assert [m["address"] for m in everything["members"]] == names
    big = ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}, "start": 0, "count": 1000})
    assert big["count"] == 250 and len(big["members"]) == 250
    page = ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}, "start": 200, "count": 30})
    assert (page["start"], page["count"], page["total"]) == (200, 30, 250)
    assert [m["address"] for m in page["members"]] == names[200:230]
    assert group_get(broker, gid)["member_count"] == 250
    gids = [gid] + [new_group(broker, name=f"g{i}") for i in range(130)]
    allg = ok(broker, {"op": "groupsget"})
    assert allg["total"] == 131 and allg["count"] == 131
    assert [g["gid"] for g in allg["groups"]] == sorted(gids)
    page = ok(broker, {"op": "groupsget", "start": 120, "count": 5})
    assert (page["start"], page["count"], page["total"]) == (120, 5, 131)
    assert [g["gid"] for g in page["groups"]] == sorted(gids)[120:125]


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_per_type_group_and_member_rules(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "nina", "carol")
    gid = new_group(broker, name="typed", members={"m": "alice,bob,carol"})
    # type 5: anyone may send; type 7: recv selected, bob deselected for type 7 only
    g = ok(broker, {"op": "groupset", "group": {"gid": gid, "type": 5, "permissions": {"send": 2}}})["group"]
    ok(broker, {"op": "groupset", "group": {"gid": gid, "type": 7, "permissions": {"recv": 1}}})
    ok(broker, {"op": "groupeditmembers", "group": {"gid": gid, "type": 7, "members": {"m": "bob", "permissions": {"recv": False}}}})
    got = group_get(broker, gid)
    assert got["flags"] == 0 and got["permissions"] == full_perms({})
    types = {t["type"]: t for t in got["types"]}
    assert types[5]["permissions"]["send"] == 2 and types[5]["flags"] & 0x2
    assert types[7]["permissions"]["recv"] == 1 and types[7]["flags"] & 0x10
    bob_member = {m["address"]: m for m in member_list(broker, gid)}["bob"]
    assert bob_member["permissions"]["recv"] is True  # the default rule is untouched
    # `type` needs permissions
    fails(broker, {"op": "groupset", "group": {"gid": gid, "type": 9}}, 400, "BADREQUEST")

    alice = login(client_factory, broker, tokens, "alice", version)
    bob = login(client_factory, broker, tokens, "bob", version)
    nina = login(client_factory, broker, tokens, "nina", version)
    carol = login(client_factory, broker, tokens, "carol", version)
    assert suback(bob, "groups/#") < 0x80
    assert suback(alice, "groups/#") < 0x80
    assert suback(carol, "groups/#") < 0x80
    # a non-member may send type 5 (and deeper topics of type 5), not type 0 nor 6
    assert code(nina.publish(f"groups/{gid}/5", b"n5", 1)) < 0x80
    assert code(nina.publish(f"groups/{gid}/5/a/b", b"n5deep", 1)) < 0x80
    rc0 = nina.publish(f"groups/{gid}", b"n0", 1)
    rc6 = nina.publish(f"groups/{gid}/6", b"n6", 1)
    if version == V5:
        assert code(rc0) == 0x87 and code(rc6) == 0x87
    # bob does not receive type 7 (his member rule for type 7), but type 0 and 8
    for t in ("", "/7", "/8"):
        assert code(alice.publish(f"groups/{gid}{t}", f"a{t}".encode(), 1)) < 0x80
    got = collect({"bob": bob, "alice": alice, "carol": carol})
    # carol has no member rule for type 7: her default permissions apply
    assert sorted(m.payload for m in got["carol"]) == [b"a", b"a/7", b"a/8", b"n5", b"n5deep"]
    assert sorted((m.topic, m.payload) for m in got["bob"]) == sorted([
        (f"groups/{gid}/5", b"n5"), (f"groups/{gid}/5/a/b", b"n5deep"),
        (f"groups/{gid}", b"a"), (f"groups/{gid}/8", b"a/8")])
    assert sorted(m.payload for m in got["alice"]) == [b"n5", b"n5deep"]
    # a single-group filter for type 7 names one group bob can receive nothing from
    assert suback(bob, f"groups/{gid}/7") == refused_sub(version)
    assert suback(bob, f"groups/{gid}/8") < 0x80


# ----------------------------------------------------------------------------------------------
# §4 validity and active

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_not_started_and_inactive_groups_deny_everything(broker, client_factory, version):
    tokens = users(broker, "alice", "bob")
    now = time.time()
    later = ok(broker, {"op": "groupadd", "group": {"name": "later", "members": {"m": "alice,bob"},
                                                      "validity": {"start": 3600, "duration": 600}}})["group"]
    assert abs(later["validity"]["start"] - (now + 3600)) < 10, later
    assert later["validity"]["expires"] == later["validity"]["start"] + 600
    off = new_group(broker, name="off", active=False, members={"m": "alice,bob"})
    assert group_get(broker, off)["active"] is False
    alice = login(client_factory, broker, tokens, "alice", version)
    bob = login(client_factory, broker, tokens, "bob", version)
    assert suback(bob, "groups/#") < 0x80
    for gid in (later["gid"], off):
        for topic in (f"groups/{gid}", f"groups/{gid}/live/x", f"$groups/{gid}/presence"):
            assert suback(alice, topic) == refused_sub(version), topic
        for topic in (f"groups/{gid}", f"groups/{gid}/3", f"groups/{gid}/live/x"):
            rc = alice.publish(topic, b"denied", 1)
            if version == V5:
                assert code(rc) == 0x87, topic
        answer = broker.api({"op": "message", "message": {"from": "alice", "gid": gid, "message": "x"}})[1]
        assert answer["result"] is False, answer
    bob.no_message()
    # re-activating opens it again
    ok(broker, {"op": "groupset", "group": {"gid": off, "active": True}})
    assert code(alice.publish(f"groups/{off}", b"back", 1)) < 0x80
    assert bob.message().payload == b"back"


def test_duration_expiry_and_expiryext(broker, client_factory):
    tokens = users(broker, "alice", "bob")
    t0 = time.monotonic()
    short = new_group(broker, name="short", members={"m": "alice,bob"}, validity={"duration": 2})
    ext = new_group(broker, name="ext", members={"m": "alice,bob"}, validity={"duration": 2, "expiryext": 6})
    alice = login(client_factory, broker, tokens, "alice", V5)
    bob = login(client_factory, broker, tokens, "bob", V5)
    rt = Rt(client_factory, broker, tokens, "bob", V5)
    assert suback(bob, "groups/#") < 0x80
    assert code(alice.publish(f"groups/{short}", b"s1", 1)) == 0
    time.sleep(max(0.0, 0.8 - (time.monotonic() - t0)))
    before = time.time()
    assert code(alice.publish(f"groups/{ext}", b"e1", 1)) == 0
    assert sorted(payloads(bob)) == [b"e1", b"s1"]
    expires = group_get(broker, ext)["validity"]["expires"]
    assert expires >= int(before) + 6 - 1, expires
    time.sleep(max(0.0, 3.2 - (time.monotonic() - t0)))
    # `short` is past its 2 s; `ext` was extended by its message
    assert code(alice.publish(f"groups/{short}", b"s2", 1)) == 0x87
    assert suback(alice, f"groups/{short}") == 0x87
    assert code(alice.publish(f"groups/{ext}", b"e2", 1)) == 0
    assert bob.message().payload == b"e2"
    bob.no_message()
    rt.refused({"op": "groupgetmembers", "group": {"gid": short}}, "GROUPEXPIRED")
    rt.ok({"op": "groupgetmembers", "group": {"gid": ext}})


# ----------------------------------------------------------------------------------------------
# §4/§5/§6 the permission table

ROLES = ["plus", "minus", "non", "anon"]


def allowed(value, role):
    if value == 0:
        return role in ("plus", "minus")
    if value == 1:
        return role == "plus"
    return True


def table_setup(broker, client_factory, version, action):
    tokens = users(broker, "obs", "plus", "minus", "non")
    gids = {}
    for value in (0, 1, 2):
        gid = new_group(broker, name=f"{action}{value}", permissions={action: value},
                        members={"m": "obs,plus,minus"})
        edit(broker, gid, "minus", permissions={action: False})
        gids[value] = gid
    clients = {r: login(client_factory, broker, tokens, r, version) for r in ("obs", "plus", "minus", "non")}
    clients["anon"] = anon(client_factory, broker, version)
    return tokens, gids, clients


def check_publish_table(broker, client_factory, version, action, observed, topic):
    """Every role publishes to each group (action at 0, 1, 2); the observer gets exactly the
    permitted messages, and the refused ones get v5 0x87 / a 3.1.1 acknowledgement."""
    _, gids, cl = table_setup(broker, client_factory, version, action)
    assert suback(cl["obs"], observed) < 0x80
    expected = set()
    for value, gid in gids.items():
        for role in ROLES:
            rc = code(cl[role].publish(topic.format(gid=gid), f"{role}-{value}".encode(), 1))
            if allowed(value, role):
                expected.add(f"{role}-{value}".encode())
                assert rc < 0x80, (role, value, rc)
            elif version == V5:
                assert rc == 0x87, (role, value, rc)
            else:
                assert rc == 0, (role, value, rc)  # 3.1.1: acknowledged and dropped
    assert sorted(payloads(cl["obs"])) == sorted(expected)


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_permission_table_send(broker, client_factory, version):
    check_publish_table(broker, client_factory, version, "send", "groups/#", "groups/{gid}")


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_permission_table_pub_live(broker, client_factory, version):
    check_publish_table(broker, client_factory, version, "pub", "groups/+/live/#", "groups/{gid}/live/t")


def check_receive(version, gids, cl, single_filter, wildcard, publish_topic):
    for value, gid in gids.items():
        for role in ROLES:
            got = suback(cl[role], single_filter(gid))
            if allowed(value, role):
                assert got < 0x80, (role, value, got)
            else:
                assert got == refused_sub(version), (role, value, got)
    for role in ROLES:
        for gid in gids.values():
            cl[role].unsubscribe(single_filter(gid))
        assert suback(cl[role], wildcard) < 0x80, role  # wildcards are accepted
    for value, gid in gids.items():
        assert code(cl["obs"].publish(publish_topic(gid), f"m{value}".encode(), 1)) < 0x80
    got = collect({r: cl[r] for r in ROLES})
    for role in ROLES:
        want = sorted(f"m{v}".encode() for v in gids if allowed(v, role))
        assert sorted(m.payload for m in got[role]) == want, role


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_permission_table_recv(broker, client_factory, version):
    _, gids, cl = table_setup(broker, client_factory, version, "recv")
    rr = gids.pop(2)  # recv 2 is round-robin, checked below
    check_receive(version, gids, cl, lambda g: f"groups/{g}", "groups/#", lambda g: f"groups/{g}")
    # recv 2: one member per message (member permissions do not apply); never non-members
    for role in ("non", "anon"):
        assert suback(cl[role], f"groups/{rr}") == refused_sub(version), role
    for i in range(4):
        assert code(cl["obs"].publish(f"groups/{rr}", f"rr{i}".encode(), 1)) < 0x80
    got = collect({r: cl[r] for r in ROLES})
    assert got["non"] == [] and got["anon"] == []
    assert len(got["plus"]) == 2 and len(got["minus"]) == 2, {r: [m.payload for m in v] for r, v in got.items()}
    assert sorted(m.payload for m in got["plus"] + got["minus"]) == [b"rr0", b"rr1", b"rr2", b"rr3"]


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_permission_table_sub_live(broker, client_factory, version):
    _, gids, cl = table_setup(broker, client_factory, version, "sub")
    check_receive(version, gids, cl, lambda g: f"groups/{g}/live/#", "groups/+/live/#",
                  lambda g: f"groups/{g}/live/t")


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_permission_table_list(broker, client_factory, version):
    tokens, gids, cl = table_setup(broker, client_factory, version, "list")
    for value, gid in gids.items():
        for role in ROLES:
            got = suback(cl[role], f"$groups/{gid}/presence")
            if allowed(value, role):
                assert got < 0x80, (role, value, got)
                snapshot = json.loads(cl[role].message().payload)
                assert snapshot["gid"] == gid and {m["address"] for m in snapshot["members"]} == {"obs", "plus", "minus"}
            else:
                assert got == refused_sub(version), (role, value, got)
            cl[role].unsubscribe(f"$groups/{gid}/presence")
    # groupgetmembers over the real-time API needs list (or an admin flag)
    for role in ("plus", "minus", "non"):
        rt = Rt(client_factory, broker, tokens, role, version)
        for value, gid in gids.items():
            answer = rt({"op": "groupgetmembers", "group": {"gid": gid}})
            assert answer["result"] is allowed(value, role), (role, value, answer)
            if not allowed(value, role):
                assert answer["error"] in (("PERMISSION", "NOTMEMBER") if role == "non" else ("PERMISSION",)), answer


# ----------------------------------------------------------------------------------------------
# §5/§7 live topics, retained, loopback, no-store

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_live_topics_are_never_retained_stored_or_queued(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "carol")
    gid = new_group(broker, name="live", members={"m": "alice,bob,carol"})
    kw = {"clean": False, "session_expiry": 300} if version == V5 else {"clean": False}
    bob = login(client_factory, broker, tokens, "bob", version, **kw)
    assert suback(bob, f"groups/{gid}/live/#") < 0x80
    assert suback(bob, f"groups/{gid}") < 0x80
    bob.disconnect()
    alice = login(client_factory, broker, tokens, "alice", version)
    carol = login(client_factory, broker, tokens, "carol", version)
    assert suback(carol, f"groups/{gid}/live/#") < 0x80
    assert code(alice.publish(f"groups/{gid}/live/pos", b"L1", 1, retain=True)) < 0x80
    assert carol.message().payload == b"L1"
    assert code(alice.publish(f"groups/{gid}", b"G1", 1)) < 0x80
    # bob's persistent session got the group message queued, not the live one
    bob = login(client_factory, broker, tokens, "bob", version, cid=f"bob-{VID[version]}", clean=False,
                **({"session_expiry": 300} if version == V5 else {}))
    assert bob.session_present
    assert payloads(bob) == [b"G1"]
    # nothing retained for a new live subscriber
    carol.unsubscribe(f"groups/{gid}/live/#")
    assert suback(carol, f"groups/{gid}/live/#") < 0x80
    carol.no_message()
    # no history of live messages
    history = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"]
    assert [m["payload"] for m in history] == ["G1"]


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_retained_group_messages_only_to_permitted_subscribers(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "carol", "nina")
    gid = new_group(broker, name="ret", permissions={"recv": 1}, members={"m": "alice,bob,carol"})
    edit(broker, gid, "carol", permissions={"recv": False})
    alice = login(client_factory, broker, tokens, "alice", version)
    assert code(alice.publish(f"groups/{gid}", b"R", 1, retain=True)) < 0x80
    subs = {r: login(client_factory, broker, tokens, r, version) for r in ("bob", "carol", "nina")}
    subs["anon"] = anon(client_factory, broker, version)
    for c in subs.values():
        assert suback(c, "groups/#") < 0x80
    got = collect(subs)
    assert [(m.payload, m.retain) for m in got["bob"]] == [(b"R", True)]
    assert got["carol"] == [] and got["nina"] == [] and got["anon"] == []
    # after bob's removal a new subscription gets no retained message
    edit(broker, gid, "bob", remove=True)
    subs["bob"].unsubscribe("groups/#")
    assert suback(subs["bob"], "groups/#") < 0x80
    subs["bob"].no_message()


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_loopback_flag(broker, client_factory, version):
    tokens = users(broker, "alice", "bob")
    plain = new_group(broker, name="plain", members={"m": "alice,bob"})
    loop = new_group(broker, name="loop", flags=0x80, members={"m": "alice,bob"})
    a1 = login(client_factory, broker, tokens, "alice", version, cid="a1")
    a2 = login(client_factory, broker, tokens, "alice", version, cid="a2")
    bob = login(client_factory, broker, tokens, "bob", version)
    for c in (a1, a2, bob):
        assert suback(c, "groups/#") < 0x80
    assert code(a1.publish(f"groups/{plain}", b"p", 1)) < 0x80
    assert code(a1.publish(f"groups/{loop}", b"l", 1)) < 0x80
    got = collect({"a1": a1, "a2": a2, "bob": bob})
    # without 0x80 the publishing client id does not get its message back (also 3.1.1);
    # another client id of the same user does
    assert sorted(m.payload for m in got["a1"]) == [b"l"]
    assert sorted(m.payload for m in got["a2"]) == [b"l", b"p"]
    assert sorted(m.payload for m in got["bob"]) == [b"l", b"p"]


def test_no_store_group(broker, client_factory):
    tokens = users(broker, "alice", "bob", "carol", "dave")
    gid = new_group(broker, name="ns", flags=0x40, members={"m": "alice,bob,carol,dave"})
    dave = login(client_factory, broker, tokens, "dave", V5, clean=False, session_expiry=300)
    assert suback(dave, f"groups/{gid}") < 0x80
    dave.disconnect()
    alice = login(client_factory, broker, tokens, "alice", V5)
    bob = login(client_factory, broker, tokens, "bob", V5)
    bob.subscribe(f"groups/{gid}", options=SubscribeOptions(qos=1, retainAsPublished=True))
    assert code(alice.publish(f"groups/{gid}", b"NS", 1, retain=True)) < 0x80
    msg = bob.message()
    assert (msg.payload, msg.retain) == (b"NS", True)  # the retain flag still reaches current subscribers
    carol = login(client_factory, broker, tokens, "carol", V5)
    assert suback(carol, f"groups/{gid}") < 0x80
    carol.no_message()  # ... but it is not kept
    assert ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"] == []
    dave = login(client_factory, broker, tokens, "dave", V5, cid="dave-v5", clean=False, session_expiry=300)
    assert dave.session_present
    dave.no_message()  # nothing queued offline


# ----------------------------------------------------------------------------------------------
# §7 round-robin

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_round_robin_one_member_per_message_rotating(broker, client_factory, version):
    tokens = users(broker, "s", "r1", "r2", "r3", "x")
    gid = new_group(broker, name="hunt", permissions={"recv": 2}, members={"m": "s,r1,r2,r3"})
    s = login(client_factory, broker, tokens, "s", version)
    rs = {r: login(client_factory, broker, tokens, r, version) for r in ("r1", "r2", "r3")}
    x = login(client_factory, broker, tokens, "x", version)
    for c in rs.values():
        assert suback(c, f"groups/{gid}") < 0x80
    assert suback(x, "groups/#") < 0x80
    for i in range(6):
        assert code(s.publish(f"groups/{gid}", f"m{i}".encode(), 1)) < 0x80
    got = collect({**rs, "x": x, "s": s})
    assert got["x"] == [] and got["s"] == []
    counts = {r: len(got[r]) for r in rs}
    assert counts == {"r1": 2, "r2": 2, "r3": 2}, {r: [m.payload for m in got[r]] for r in rs}
    assert sorted(m.payload for r in rs for m in got[r]) == [f"m{i}".encode() for i in range(6)]
    # rotation: each consecutive three go to three different members
    owner = {m.payload: r for r in rs for m in got[r]}
    assert len({owner[f"m{i}".encode()] for i in range(3)}) == 3
    assert len({owner[f"m{i}".encode()] for i in range(3, 6)}) == 3


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_round_robin_queues_while_nobody_is_online(broker, client_factory, version):
    tokens = users(broker, "s", "q", "x")
    gid = new_group(broker, name="hunt", permissions={"recv": 2}, members={"m": "s,q"})
    s = login(client_factory, broker, tokens, "s", version)
    x = login(client_factory, broker, tokens, "x", version)
    assert suback(x, "groups/#") < 0x80  # a non-member never takes them
    for i in range(3):
        assert code(s.publish(f"groups/{gid}", f"w{i}".encode(), 1)) < 0x80
    q = login(client_factory, broker, tokens, "q", version)
    assert suback(q, f"groups/{gid}") < 0x80
    assert [q.message().payload for _ in range(3)] == [b"w0", b"w1", b"w2"]
    q.no_message()
    x.no_message()


def test_round_robin_among_selected_and_no_store_hunt_drops(broker, client_factory):
    tokens = users(broker, "s", "a", "b", "c")
    gid = new_group(broker, name="sel", flags=0x30, members={"m": "s,a,b,c"})
    edit(broker, gid, "b", permissions={"recv": False})
    s = login(client_factory, broker, tokens, "s", V5)
    rs = {r: login(client_factory, broker, tokens, r, V5) for r in ("a", "b", "c")}
    for r, c in rs.items():
        assert suback(c, "groups/#") < 0x80
    for i in range(4):
        assert code(s.publish(f"groups/{gid}", f"k{i}".encode(), 1)) < 0x80
    got = collect(rs)
    assert {r: len(v) for r, v in got.items()} == {"a": 2, "b": 0, "c": 2}
    # a no-store hunt group with nobody online drops the message
    ns = new_group(broker, name="nshunt", flags=0x20 | 0x40, members={"m": "s,a"})
    rs["a"].unsubscribe("groups/#")
    assert code(s.publish(f"groups/{ns}", b"dropped", 1)) < 0x80
    assert suback(rs["a"], f"groups/{ns}") < 0x80
    rs["a"].no_message()


# ----------------------------------------------------------------------------------------------
# §5/§8 presence, events, $ topics

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_presence_snapshot_and_online_offline(broker, client_factory, version):
    tokens = users(broker, "obs", "alice", "nina")
    gid = new_group(broker, name="p", members={"m": "obs,alice"})
    obs = login(client_factory, broker, tokens, "obs", version)
    assert suback(obs, f"$groups/{gid}/presence") < 0x80
    snapshot = json.loads(obs.message().payload)
    assert snapshot == {"gid": gid, "members": [{"address": "alice", "online": False},
                                                {"address": "obs", "online": True}]}
    nina = login(client_factory, broker, tokens, "nina", version)  # not a member: no presence
    obs.no_message()
    before = time.time()
    a1 = login(client_factory, broker, tokens, "alice", version, cid="a1")
    online = json.loads(obs.message().payload)
    assert set(online) == {"gid", "address", "online", "ts"}, online
    assert (online["gid"], online["address"], online["online"]) == (gid, "alice", True)
    assert isinstance(online["ts"], (int, float)) and abs(online["ts"] - before) < 10
    a2 = login(client_factory, broker, tokens, "alice", version, cid="a2")  # a second connection
    obs.no_message()
    a1.disconnect()
    obs.no_message()
    a2.disconnect()
    offline = json.loads(obs.message().payload)
    assert set(offline) == {"gid", "address", "online", "ts"}
    assert (offline["gid"], offline["address"], offline["online"]) == (gid, "alice", False)
    nina.disconnect()
    obs.no_message()


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_user_events(broker, client_factory, version):
    tokens = users(broker, "alice", "bob")
    alice = login(client_factory, broker, tokens, "alice", version)
    assert suback(alice, "$users/alice/events") < 0x80

    def event():
        msg = alice.message()
        assert msg.retain is False
        return json.loads(msg.payload)

    gid = new_group(broker, name="ev", members={"m": "alice"})
    e = event()
    assert (e["event"], e["gid"]) == ("group.member_added", gid), e
    edit(broker, gid, "alice", permissions={"send": False})
    e = event()
    assert (e["event"], e["gid"]) == ("group.permissions_changed", gid), e
    ok(broker, {"op": "groupset", "group": {"gid": gid, "name": "renamed"}})
    e = event()
    assert (e["event"], e["gid"]) == ("group.updated", gid), e
    edit(broker, gid, "bob")  # what alice hears of bob's joining is not specified: skip it
    alice.drain()
    edit(broker, gid, "alice", remove=True)
    e = event()
    assert (e["event"], e["gid"]) == ("group.member_removed", gid), e
    edit(broker, gid, "alice")
    assert event()["event"] == "group.member_added"
    ok(broker, {"op": "groupdel", "group": {"gid": gid}})
    e = event()
    assert (e["event"], e["gid"]) == ("group.deleted", gid), e
    alice.no_message()


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_dollar_topics_publish_and_subscribe_rules(broker, client_factory, version):
    tokens = users(broker, "alice", "bob")
    gid = new_group(broker, name="d", members={"m": "alice,bob"})
    alice = login(client_factory, broker, tokens, "alice", version)
    bob = login(client_factory, broker, tokens, "bob", version)
    for topic in ("$users/bob/events", "$users/bob/replies", "$users/bob/messages"):
        assert suback(alice, topic) == refused_sub(version), topic
    assert suback(bob, "$users/bob/events") < 0x80
    assert suback(bob, "$users/bob/replies") < 0x80
    assert suback(bob, f"$groups/{gid}/presence") < 0x80
    bob.drain()  # the snapshot
    assert suback(bob, "$other/topic") < 0x80
    # alice tries a wildcard over users: she must never see bob's notifications
    wc = suback(alice, "$users/+/events")
    for topic in ("$users/bob/events", "$users/alice/events", "$users/bob/replies",
                  f"$groups/{gid}/presence", "$SYS/broker/fake", "$other/topic"):
        rc = code(alice.publish(topic, b'{"event":"group.deleted","gid":1}', 1))
        if version == V5:
            assert rc == 0x87, (topic, rc)
    bob.no_message()
    edit(broker, gid, "bob", permissions={"send": False})  # a real event for bob
    assert json.loads(bob.message().payload)["event"] == "group.permissions_changed"
    got = alice.drain()
    assert all(m.topic != "$users/bob/events" for m in got), (wc, [(m.topic, m.payload) for m in got])


# ----------------------------------------------------------------------------------------------
# §7/§8 history

def test_group_history_and_since(broker, client_factory):
    tokens = users(broker, "alice", "bob", "carol", "dave", "eve")
    gid = new_group(broker, name="h", members={"m": "alice,bob"})
    alice = login(client_factory, broker, tokens, "alice", V5)
    for topic, payload in ((f"groups/{gid}", b"m1"), (f"groups/{gid}/3", b"\x00\xff\x10"),
                           (f"groups/{gid}/7/sub", b"m3")):
        assert code(alice.publish(topic, payload, 1)) < 0x80
    h = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})
    assert (h["start"], h["count"], h["total"]) == (0, 3, 3)
    msgs = h["messages"]
    for m in msgs:
        assert set(m) == {"id", "from", "type", "ts", "payload", "encoding"}, m
        assert m["from"] == "alice" and abs(m["ts"] - time.time()) < 30
    assert [m["type"] for m in msgs] == [7, 3, 0]  # newest first
    assert msgs[0]["id"] > msgs[1]["id"] > msgs[2]["id"]
    assert (msgs[0]["payload"], msgs[0]["encoding"]) == ("m3", "utf8")
    assert msgs[1]["encoding"] == "base64" and base64.b64decode(msgs[1]["payload"]) == b"\x00\xff\x10"
    page = ok(broker, {"op": "groupmessages", "group": {"gid": gid}, "start": 1, "count": 1})
    assert [m["type"] for m in page["messages"]] == [3] and page["total"] == 3
    # a member over the real-time API sees history from when they joined; admins see all
    time.sleep(1.1)
    edit(broker, gid, "carol")
    edit(broker, gid, "dave", admin={"admin": True})
    time.sleep(1.1)
    alice.publish(f"groups/{gid}", b"m4", 1)
    carol = Rt(client_factory, broker, tokens, "carol", V311)
    seen = carol.ok({"op": "groupmessages", "group": {"gid": gid}})
    assert [m["payload"] for m in seen["messages"]] == ["m4"] and seen["total"] == 1
    bob = Rt(client_factory, broker, tokens, "bob", V5)
    assert len(bob.ok({"op": "groupmessages", "group": {"gid": gid}})["messages"]) == 4
    dave = Rt(client_factory, broker, tokens, "dave", V5)
    assert len(dave.ok({"op": "groupmessages", "group": {"gid": gid}})["messages"]) == 4
    assert len(ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"]) == 4
    # groupmessages needs recv
    edit(broker, gid, "carol", permissions={"recv": False})
    ok(broker, {"op": "groupset", "group": {"gid": gid, "permissions": {"recv": 1}}})
    carol.refused({"op": "groupmessages", "group": {"gid": gid}}, "PERMISSION")
    eve = Rt(client_factory, broker, tokens, "eve", V5)  # not a member
    eve.refused({"op": "groupmessages", "group": {"gid": gid}}, "PERMISSION", "NOTMEMBER")


# ----------------------------------------------------------------------------------------------
# §8 real-time API

def test_real_time_api_reply_routes_and_owner(broker, client_factory):
    tokens = users(broker, "alice", "bob")
    # v5: response topic + correlation data
    a = login(client_factory, broker, tokens, "alice", V5, cid="a-raw")
    a.subscribe("my/replies", 1)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "my/replies"
    props.CorrelationData = b"\x01corr"
    a.publish("$groups/ops", json.dumps({"op": "groupadd", "id": 42, "group": {"name": "mine"}}).encode(), 1,
              properties=props)
    reply = a.message()
    assert reply.topic == "my/replies" and reply.properties.CorrelationData == b"\x01corr"
    answer = json.loads(reply.payload)
    assert answer["result"] is True and answer["id"] == 42 and answer["op"] == "groupadd"
    gid = answer["group"]["gid"]
    members = member_list(broker, gid)
    assert [m["address"] for m in members] == ["alice"] and members[0]["admin"]["owner"] is True
    # 3.1.1: replies on $users/{address}/replies carrying the request id
    b = login(client_factory, broker, tokens, "bob", V311, cid="b-raw")
    assert suback(b, "$users/bob/replies") < 0x80
    b.publish("$groups/ops", json.dumps({"op": "groupadd", "id": "req-7", "group": {"name": "bobs"}}).encode(), 1)
    reply = b.message()
    answer = json.loads(reply.payload)
    assert reply.topic == "$users/bob/replies" and answer["id"] == "req-7" and answer["result"] is True
    # user ops are not for real-time callers
    rt = Rt(client_factory, broker, tokens, "bob", V5)
    rt.refused({"op": "useradd", "user": {"address": "mallory"}}, "PERMISSION")
    rt.refused({"op": "nosuch"}, "BADOP")
    assert ok(broker, {"op": "usersget"})["total"] == 2
    # garbage JSON still gets an answer
    bad = rt.raw(b"{not json", corr=b"zz")
    assert bad["result"] is False and bad["error"] == "BADREQUEST" and bad.get("message")
    # anonymous clients may not use $groups/ops
    an = anon(client_factory, broker, V5)
    assert code(an.publish("$groups/ops", json.dumps({"op": "groupadd", "group": {"name": "anon"}}).encode(), 1)) == 0x87
    assert ok(broker, {"op": "groupsget"})["total"] == 2


def test_real_time_api_admin_flags(broker, client_factory):
    names = ["own", "mod", "rem", "au", "ru", "aa", "ra", "ro", "p", "x", "y", "z"]
    tokens = users(broker, *names)
    gid = new_group(broker, name="adm", members={"m": "own,p,y,z"})
    edit(broker, gid, "own", admin={"owner": True})
    edit(broker, gid, "mod", admin={"modify": True})
    edit(broker, gid, "rem", admin={"remove": True})
    edit(broker, gid, "au", admin={"adduser": True})
    edit(broker, gid, "ru", admin={"remuser": True})
    edit(broker, gid, "aa", admin={"addadmin": True})
    edit(broker, gid, "ra", admin={"remadmin": True})
    edit(broker, gid, "ro", admin={"remowner": True})
    rt = {n: Rt(client_factory, broker, tokens, n, V5 if i % 2 else V311) for i, n in enumerate(names)}

    def members():
        return {m["address"]: m for m in member_list(broker, gid)}

    snapshot = (group_get(broker, gid), members())

    def unchanged():
        assert (group_get(broker, gid), members()) == snapshot

    G = {"gid": gid}
    # modify -> groupset
    for n in ("p", "au", "ru", "aa", "ra", "rem", "x"):
        rt[n].refused({"op": "groupset", "group": {**G, "name": "hack"}}, "PERMISSION", "NOTMEMBER")
    unchanged()
    rt["mod"].ok({"op": "groupset", "group": {**G, "name": "renamed"}})
    assert group_get(broker, gid)["name"] == "renamed"
    # adduser -> add plain members
    for n in ("p", "ru", "mod"):
        rt[n].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "x"}}}, "PERMISSION")
    assert "x" not in members()
    rt["au"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "x"}}})
    assert "x" in members()
    # adduser/remuser -> edit a plain member's permissions
    rt["p"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "x", "permissions": {"send": False}}}}, "PERMISSION")
    rt["ru"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "x", "permissions": {"send": False}}}})
    assert members()["x"]["permissions"]["send"] is False
    # remuser -> remove plain members; not members with admin flags
    rt["au"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "y", "remove": True}}}, "PERMISSION")
    rt["ru"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "y", "remove": True}}})
    assert "y" not in members()
    rt["ru"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "mod", "remove": True}}}, "PERMISSION")
    assert "mod" in members()
    # addadmin -> grant admin flags; adduser alone may not
    rt["au"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "z", "admin": {"modify": True}}}}, "PERMISSION")
    assert members()["z"]["admin"]["modify"] is False
    rt["aa"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "z", "admin": {"modify": True}}}})
    assert members()["z"]["admin"]["modify"] is True
    # remadmin -> revoke admin flags / remove admins; addadmin alone may not
    rt["aa"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "z", "admin": {"modify": False}}}}, "PERMISSION")
    assert members()["z"]["admin"]["modify"] is True
    rt["ra"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "z", "admin": {"modify": False}}}})
    assert members()["z"]["admin"]["modify"] is False
    rt["ra"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "mod", "remove": True}}})
    assert "mod" not in members()
    # remowner -> remove an owner; remadmin alone may not
    rt["ra"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "own", "remove": True}}}, "PERMISSION")
    assert "own" in members()
    # only an owner grants owner
    rt["aa"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "p", "admin": {"owner": True}}}}, "PERMISSION")
    assert members()["p"]["admin"]["owner"] is False
    rt["own"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "p", "admin": {"owner": True}}}})
    assert members()["p"]["admin"]["owner"] is True
    rt["ro"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "own", "remove": True}}})
    assert "own" not in members()
    # members may remove themselves
    rt["x"].ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "x", "remove": True}}})
    assert "x" not in members()
    rt["z"].refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "au", "remove": True}}}, "PERMISSION")
    # remove -> groupdel
    rt["mod"].refused({"op": "groupdel", "group": G}, "PERMISSION", "NOTMEMBER")
    rt["z"].refused({"op": "groupdel", "group": G}, "PERMISSION")
    group_get(broker, gid)
    rt["rem"].ok({"op": "groupdel", "group": G})
    fails(broker, {"op": "groupget", "group": G}, 404, "NOGROUP")


def test_real_time_groupgetmembers_needs_list_or_admin(broker, client_factory):
    tokens = users(broker, "adm", "plain", "nolist")
    gid = new_group(broker, name="l", permissions={"list": 1}, members={"m": "adm,plain,nolist"})
    edit(broker, gid, "nolist", permissions={"list": False})
    edit(broker, gid, "adm", permissions={"list": False}, admin={"adduser": True})
    req = {"op": "groupgetmembers", "group": {"gid": gid}}
    assert Rt(client_factory, broker, tokens, "plain", V5).ok(req)["total"] == 3
    Rt(client_factory, broker, tokens, "nolist", V5).refused(req, "PERMISSION")
    assert Rt(client_factory, broker, tokens, "adm", V311).ok(req)["total"] == 3


def test_real_time_listing_inactive_group(broker, client_factory):
    tokens = users(broker, "adm", "plain")
    gid = new_group(broker, name="l", active=False, members={"m": "adm,plain"})
    edit(broker, gid, "adm", admin={"modify": True})
    req = {"op": "groupgetmembers", "group": {"gid": gid}}
    plain = Rt(client_factory, broker, tokens, "plain", V5)
    plain.refused(req, "GROUPINACTIVE")
    plain.refused({"op": "groupmessages", "group": {"gid": gid}}, "GROUPINACTIVE")
    Rt(client_factory, broker, tokens, "adm", V5).ok(req)


# ----------------------------------------------------------------------------------------------
# §8/§11 bad input and the legacy form

def test_bad_input_changes_nothing(broker):
    ok(broker, {"op": "useradd", "user": {"address": "alice"}})
    gid = new_group(broker, name="g", members={"m": "alice"})
    before = (ok(broker, {"op": "usersget"}), ok(broker, {"op": "groupsget"}), member_list(broker, gid))
    # bad JSON
    for body in (b"{not json", b"[1,2]", b"", b'"op"'):
        status, answer = http(broker, "POST", body=body, content_type="application/json")
        assert status == 400 and answer["result"] is False and answer["error"] == "BADREQUEST", (body, answer)
        assert answer.get("message")
    # unknown op
    assert fails(broker, {"op": "frobnicate", "id": "u1"}, 400, "BADOP")["id"] == "u1"
    # wrong types and missing fields, each with its id echoed
    cases = [
        {"op": "groupget", "group": {"gid": "x"}},
        {"op": "groupget", "group": {"gid": str(gid)}},
        {"op": "groupget", "group": {}},
        {"op": "groupget"},
        {"op": "useradd"},
        {"op": "useradd", "user": {"address": 5}},
        {"op": "useradd", "user": {"address": "bob", "naem": "typo"}},
        {"op": "groupadd", "group": {"name": "x", "flags": "2"}},
        {"op": "groupadd", "group": {"name": "x", "permissions": {"send": "2"}}},
        {"op": "groupadd", "group": {"name": "x", "active": "yes"}},
        {"op": "groupadd", "group": {"name": "x", "validity": {"duration": "60"}}},
        {"op": "groupeditmembers", "group": {"gid": gid}},
        {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "alice", "remove": True, "permissions": {"send": False}}}},
        {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "alice", "permissions": {"send": "no"}}}},
        {"op": "groupset", "group": {"gid": gid, "name": 7}},
        {"op": 5},
        {"id": "noop"},
    ]
    for i, req in enumerate(cases):
        answer = fails(broker, {**req, "id": i}, 400, "BADREQUEST")
        assert answer["id"] == i, answer
    # wrong or missing app token
    status, answer = http(broker, "POST", body=json.dumps({"op": "usersget", "token": "wrong", "id": "t"}).encode())
    assert (status, answer["result"], answer["error"], answer["id"]) == (401, False, "AUTHFAIL", "t")
    status, answer = http(broker, "POST", body=json.dumps({"op": "useradd", "id": "t2", "user": {"address": "eve"}}).encode())
    assert (status, answer["error"], answer["id"]) == (401, "AUTHFAIL", "t2")
    status, answer = http(broker, "GET", query={"op": "usersget", "token": "wrong"})
    assert (status, answer["error"]) == (401, "AUTHFAIL")
    after = (ok(broker, {"op": "usersget"}), ok(broker, {"op": "groupsget"}), member_list(broker, gid))
    assert after == before
    # a refused groupadd does not use up a gid
    assert new_group(broker, name="next") == gid + 1


def test_legacy_form_and_query_string(broker):
    T = broker.app_token
    status, answer = http(broker, "GET", query={"op": "useradd", "token": T, "addr": "bob", "name": "Bob", "expiry": 60})
    assert status == 200 and answer["result"] is True, answer
    assert abs(answer["user"]["token_expires"] - (time.time() + 3600)) < 30 and answer["user"]["token"]
    form = "application/x-www-form-urlencoded"
    status, answer = http(broker, "POST", body=urllib.parse.urlencode(
        {"op": "useradd", "token": T, "address": "alice"}).encode(), content_type=form)
    assert status == 200 and answer["result"] is True, answer
    status, answer = http(broker, "POST", body=urllib.parse.urlencode(
        {"op": "groupadd", "token": T, "name": "legacy", "flag": 0x1 | 0x40, "expiry": 600, "expiryext": 30}).encode(),
        content_type=form)
    assert status == 200 and answer["result"] is True, answer
    gid = answer["group"]["gid"]
    g = group_get(broker, gid)
    assert g["flags"] == 0x41 and g["permissions"]["send"] == 1 and g["nostore"] is True
    assert g["validity"]["duration"] == 600 and g["validity"]["expiryext"] == 30
    # members with cs/cr/canpub/cansub/canlist
    status, answer = http(broker, "POST", query={"op": "groupeditmembers", "token": T, "gid": gid, "m": "alice,bob",
                                                 "cs": 1, "cr": 0, "canpub": "true", "cansub": "no", "canlist": "on",
                                                 "delete": 0})
    assert status == 200 and answer["result"] is True, answer
    ms = {m["address"]: m["permissions"] for m in member_list(broker, gid)}
    assert ms == {a: {"send": True, "recv": False, "pub": True, "sub": False, "list": True} for a in ("alice", "bob")}
    # per-type member rule
    status, answer = http(broker, "GET", query={"op": "groupeditmembers", "token": T, "gid": gid, "m": "bob",
                                                "type": 4, "cr": 1})
    assert status == 200 and answer["result"] is True, answer
    bob_types = {m["address"]: m for m in member_list(broker, gid)}["bob"]["types"]
    assert [(t["type"], t["permissions"]["recv"]) for t in bob_types] == [(4, True)], bob_types
    assert {m["address"]: m for m in member_list(broker, gid)}["bob"]["permissions"]["recv"] is False
    # groupset via flat fields
    status, answer = http(broker, "GET", query={"op": "groupset", "token": T, "gid": gid, "active": 0, "flag": 0x2})
    assert status == 200 and answer["result"] is True, answer
    g = group_get(broker, gid)
    assert g["active"] is False and g["flags"] == 0x2
    # delete=1 removes members
    status, answer = http(broker, "GET", query={"op": "groupeditmembers", "token": T, "gid": gid, "m": "bob", "delete": 1})
    assert status == 200 and answer["result"] is True, answer
    assert [m["address"] for m in member_list(broker, gid)] == ["alice"]
    # userset delete=1 revokes the token
    status, answer = http(broker, "GET", query={"op": "userset", "token": T, "addr": "bob", "delete": 1})
    assert status == 200 and answer["result"] is True, answer
    assert {u["address"]: u["has_token"] for u in ok(broker, {"op": "usersget"})["users"]}["bob"] is False
    # groupdel by gid
    status, answer = http(broker, "GET", query={"op": "groupdel", "token": T, "gid": gid})
    assert status == 200 and answer["result"] is True
    # errors look the same
    status, answer = http(broker, "GET", query={"op": "groupget", "token": T, "gid": "x"})
    assert (status, answer["error"]) == (400, "BADREQUEST")
    status, answer = http(broker, "GET", query={"op": "nosuch", "token": T})
    assert (status, answer["error"]) == (400, "BADOP")
    status, answer = http(broker, "GET", query={"op": "groupget", "token": T, "gid": gid})
    assert (status, answer["error"]) == (404, "NOGROUP")


# ----------------------------------------------------------------------------------------------
# a raw MQTT client, for what paho hides: QoS 2 PUBREC codes and a subscriber that never acks





def _varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


class Raw:
    def __init__(self, port, cid, version, username=None, password=None):
        self.v5 = version == V5
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
        var = _str("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", 30)
        if self.v5:
            var += b"\x00"
        body = var + _str(cid) + (_str(username) if username else b"") + (_str(password) if password else b"")
        self.send(0x10, body)
        kind, body = self.read()
        assert kind >> 4 == 2 and body[1] == 0, body
        self.pid = 0

    def send(self, first, body):
        self.sock.sendall(bytes([first]) + _varint(len(body)) + body)

    def _exact(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def read(self, timeout=WAIT):
        self.sock.settimeout(timeout)
        first = self._exact(1)[0]
        n, mult = 0, 1
        while True:
            b = self._exact(1)[0]
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                break
        return first, self._exact(n)

    def subscribe(self, topic, qos=1):
        self.pid += 1
        body = struct.pack("!H", self.pid) + (b"\x00" if self.v5 else b"") + _str(topic) + bytes([qos])
        self.send(0x82, body)
        while True:
            kind, body = self.read()
            if kind >> 4 == 9:
                return body[-1]

    def publish(self, topic, payload, qos):
        self.pid += 1
        body = _str(topic) + struct.pack("!H", self.pid) + (b"\x00" if self.v5 else b"") + payload
        self.send(0x30 | (qos << 1), body)
        kind, body = self.read()
        assert kind >> 4 == (4 if qos == 1 else 5), kind
        return body[2] if len(body) > 2 else 0

    def next_publish(self, timeout=WAIT):
        """The next PUBLISH (topic, payload, packet id), not acknowledged."""
        while True:
            kind, body = self.read(timeout)
            if kind >> 4 == 3:
                tlen = struct.unpack("!H", body[:2])[0]
                topic = body[2:2 + tlen].decode()
                rest = body[2 + tlen:]
                pid = None
                if (kind >> 1) & 3:
                    pid = struct.unpack("!H", rest[:2])[0]
                    rest = rest[2:]
                if self.v5:
                    plen, i, mult = 0, 0, 1
                    while True:
                        b = rest[i]
                        i += 1
                        plen += (b & 0x7F) * mult
                        mult *= 128
                        if not b & 0x80:
                            break
                    rest = rest[i + plen:]
                return topic, rest, pid

    def close(self):
        self.sock.close()


@pytest.fixture
def raws():
    made = []
    yield made
    for r in made:
        r.close()


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_denied_qos2_publish_gets_pubrec_0x87(broker, client_factory, raws, version):
    tokens = users(broker, "alice", "nina")
    gid = new_group(broker, name="q2", members={"m": "alice"})
    alice = login(client_factory, broker, tokens, "alice", version)
    alice.subscribe("groups/#", 2)
    nina = Raw(broker.port, "nina-raw", version, "nina", tokens["nina"])
    raws.append(nina)
    rc = nina.publish(f"groups/{gid}", b"denied", 2)
    assert rc == (0x87 if version == V5 else 0)
    anon_raw = Raw(broker.port, "anon-raw", version)
    raws.append(anon_raw)
    rc = anon_raw.publish(f"groups/{gid}", b"denied-anon", 2)
    assert rc == (0x87 if version == V5 else 0)
    alice.no_message()


def test_round_robin_unacked_message_moves_to_the_next_member(broker, client_factory, raws):
    tokens = users(broker, "s", "r1", "r2")
    gid = new_group(broker, name="hunt", permissions={"recv": 2}, members={"m": "s,r1,r2"})
    r1 = Raw(broker.port, "r1-raw", V311, "r1", tokens["r1"])
    raws.append(r1)
    assert r1.subscribe(f"groups/{gid}", 1) == 1
    s = login(client_factory, broker, tokens, "s", V5)
    assert code(s.publish(f"groups/{gid}", b"job", 1)) < 0x80
    topic, payload, pid = r1.next_publish()
    assert (topic, payload) == (f"groups/{gid}", b"job") and pid is not None
    r2 = login(client_factory, broker, tokens, "r2", V311)
    assert suback(r2, f"groups/{gid}") < 0x80
    r2.no_message()  # r1 still holds it
    r1.close()  # drops before acknowledging
    assert r2.message().payload == b"job"
    r2.no_message()


# ----------------------------------------------------------------------------------------------
# more of §6: changes act on live subscriptions and on offline queues

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_changes_take_effect_on_live_wildcard_subscriptions(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "nina")
    gid = new_group(broker, name="live-acl", members={"m": "alice,bob"})
    alice = login(client_factory, broker, tokens, "alice", version)
    bob = login(client_factory, broker, tokens, "bob", version)
    nina = login(client_factory, broker, tokens, "nina", version)
    for c in (bob, nina):
        assert suback(c, "groups/#") < 0x80

    def round_(payload):
        rc = code(alice.publish(f"groups/{gid}", payload, 1))
        got = collect({"bob": bob, "nina": nina})
        return rc, sorted(m.payload for m in got["bob"]), sorted(m.payload for m in got["nina"])

    assert round_(b"m1")[1:] == ([b"m1"], [])
    edit(broker, gid, "nina")  # added: receives at once, no resubscribe
    assert round_(b"m2")[1:] == ([b"m2"], [b"m2"])
    ok(broker, {"op": "groupset", "group": {"gid": gid, "permissions": {"recv": 1}}})
    edit(broker, gid, "bob", permissions={"recv": False})
    assert round_(b"m3")[1:] == ([], [b"m3"])
    ok(broker, {"op": "groupset", "group": {"gid": gid, "active": False}})
    rc, b, n = round_(b"m4")
    assert (b, n) == ([], []) and (version == V311 or rc == 0x87)
    ok(broker, {"op": "groupset", "group": {"gid": gid, "active": True}})
    assert round_(b"m5")[1:] == ([], [b"m5"])
    edit(broker, gid, "nina", remove=True)
    assert round_(b"m6")[1:] == ([], [])
    ok(broker, {"op": "groupdel", "group": {"gid": gid}})
    rc, b, n = round_(b"m7")
    assert (b, n) == ([], []) and (version == V311 or rc == 0x87)


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_offline_queue_only_for_permitted_sessions(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "nina")
    gid = new_group(broker, name="q", members={"m": "alice,bob"})
    kw = {"clean": False, "session_expiry": 300} if version == V5 else {"clean": False}
    for n in ("bob", "nina"):
        c = login(client_factory, broker, tokens, n, version, **kw)
        assert suback(c, "groups/#") < 0x80
        c.disconnect()
    alice = login(client_factory, broker, tokens, "alice", version)
    assert code(alice.publish(f"groups/{gid}", b"off1", 1)) < 0x80
    bob = login(client_factory, broker, tokens, "bob", version, **kw)
    nina = login(client_factory, broker, tokens, "nina", version, **kw)
    assert bob.session_present and nina.session_present
    got = collect({"bob": bob, "nina": nina})
    assert [m.payload for m in got["bob"]] == [b"off1"] and got["nina"] == []
    # a member removed while offline gets nothing of what was queued for it (checked at delivery)
    bob.disconnect()
    assert code(alice.publish(f"groups/{gid}", b"off2", 1)) < 0x80
    edit(broker, gid, "bob", remove=True)
    bob = login(client_factory, broker, tokens, "bob", version, cid=f"bob-{VID[version]}", **kw)
    bob.no_message()


def test_presence_wildcard_is_filtered(broker, client_factory):
    tokens = users(broker, "obs", "alice", "nina")
    gid = new_group(broker, name="p", members={"m": "obs,alice"})
    obs = login(client_factory, broker, tokens, "obs", V5)
    nina = login(client_factory, broker, tokens, "nina", V5)
    # SPEC §6: "Filters with wildcards over groups or types are accepted, and every delivery is
    # checked" -- presence too: `$groups/+/presence`, `$groups/#`, and `$groups/{gid}/#` for a
    # member who may list (list 0).
    assert suback(obs, f"$groups/{gid}/#") < 0x80
    obs.unsubscribe(f"$groups/{gid}/#")
    assert suback(obs, "$groups/+/presence") < 0x80
    assert suback(nina, "$groups/+/presence") < 0x80
    obs.drain()
    login(client_factory, broker, tokens, "alice", V5)
    got = collect({"obs": obs, "nina": nina})
    assert [json.loads(m.payload)["address"] for m in got["obs"]] == ["alice"]
    assert got["nina"] == []


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_retained_per_type_follows_type_rules(broker, client_factory, version):
    tokens = users(broker, "alice", "bob")
    gid = new_group(broker, name="rt", members={"m": "alice,bob"})
    ok(broker, {"op": "groupset", "group": {"gid": gid, "type": 7, "permissions": {"recv": 1}}})
    ok(broker, {"op": "groupeditmembers", "group": {"gid": gid, "type": 7, "members": {"m": "bob", "permissions": {"recv": False}}}})
    alice = login(client_factory, broker, tokens, "alice", version)
    assert code(alice.publish(f"groups/{gid}/7", b"r7", 1, retain=True)) < 0x80
    assert code(alice.publish(f"groups/{gid}/8", b"r8", 1, retain=True)) < 0x80
    bob = login(client_factory, broker, tokens, "bob", version)
    assert suback(bob, f"groups/{gid}/#") < 0x80
    assert [(m.topic, m.retain) for m in bob.drain()] == [(f"groups/{gid}/8", True)]


# ----------------------------------------------------------------------------------------------
# more of §8

def test_users_deleted_leave_their_groups(broker, client_factory):
    tokens = users(broker, "alice", "bob")
    gid = new_group(broker, name="g", members={"m": "alice,bob"})
    ok(broker, {"op": "userdel", "user": {"address": "bob"}})
    assert [m["address"] for m in member_list(broker, gid)] == ["alice"]
    assert group_get(broker, gid)["member_count"] == 1
    # a new user with the same address is not a member of the old one's groups
    token = broker.add_user("bob")
    alice = login(client_factory, broker, tokens, "alice", V5)
    bob = client_factory(broker.port, "bob2", V5, username="bob", password=token)
    assert suback(bob, f"groups/{gid}") == 0x87
    assert code(bob.publish(f"groups/{gid}", b"x", 1)) == 0x87


def test_backend_message_goes_through_the_acl(broker, client_factory):
    tokens = users(broker, "alice", "bob", "nina")
    gid = new_group(broker, name="m", members={"m": "alice,bob"})
    bob = login(client_factory, broker, tokens, "bob", V5)
    assert suback(bob, "groups/#") < 0x80
    answer = ok(broker, {"op": "message", "id": 3, "message": {"from": "alice", "gid": gid, "type": 4, "message": "hi"}})
    assert answer["id"] == 3
    msg = bob.message()
    assert (msg.topic, msg.payload) == (f"groups/{gid}/4", b"hi")
    status, answer = broker.api({"op": "message", "message": {"from": "nina", "gid": gid, "message": "spam"}})
    assert answer["result"] is False and status in (403, 404), (status, answer)
    bob.no_message()
    assert [m["payload"] for m in ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"]] == ["hi"]


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_group_topic_names(broker, client_factory, version):
    tokens = users(broker, "alice")
    gid = new_group(broker, name="t", members={"m": "alice"})
    alice = login(client_factory, broker, tokens, "alice", version)
    # a group that does not exist: denied
    rc = code(alice.publish(f"groups/{gid + 100}", b"x", 1))
    assert version == V311 or rc == 0x87
    assert suback(alice, f"groups/{gid + 100}") == refused_sub(version)
    # malformed names under groups/ (README: 0x90)
    for topic in ("groups/abc", f"groups/{gid}/notatype"):
        rc = code(alice.publish(topic, b"x", 1))
        assert version == V311 or rc == 0x90, (topic, rc)


def test_real_time_api_more_routes(broker, client_factory):
    tokens = users(broker, "alice", "bob")
    # a v5 client without a response topic gets its reply on $users/{address}/replies
    a = login(client_factory, broker, tokens, "alice", V5, cid="a-raw")
    assert suback(a, "$users/alice/replies") < 0x80
    a.publish("$groups/ops", json.dumps({"op": "groupadd", "id": "x1", "group": {"name": "a1"}}).encode(), 1)
    answer = json.loads(a.message().payload)
    assert answer["id"] == "x1" and answer["result"] is True
    mine = answer["group"]["gid"]
    other = new_group(broker, name="not-alices", members={"m": "bob"})
    later = new_group(broker, name="later", members={"m": "alice"}, validity={"start": 3600})
    rt = Rt(client_factory, broker, tokens, "alice", V5)
    listed = rt.ok({"op": "groupsget"})
    assert sorted(g["gid"] for g in listed["groups"]) == sorted([mine, later])
    assert other not in [g["gid"] for g in listed["groups"]]
    # not started: the README's table reads either way ("inactive / not started or expired")
    rt.refused({"op": "groupgetmembers", "group": {"gid": later}}, "GROUPEXPIRED", "GROUPINACTIVE")
    rt.refused({"op": "groupget", "group": {"gid": other}}, "PERMISSION", "NOTMEMBER")
    rt.refused({"op": "groupget", "group": {"gid": 99999}}, "NOGROUP")
    # the owner adds members with permissions in one go
    rt.ok({"op": "groupeditmembers", "group": {"gid": mine, "members": {"m": "bob", "permissions": {"send": False}}}})
    ms = {m["address"]: m for m in member_list(broker, mine)}
    assert ms["bob"]["permissions"]["send"] is False and ms["alice"]["admin"]["owner"] is True


# ----------------------------------------------------------------------------------------------
# what survives a crash (kill -9): gids, users, queued, retained and history (SPEC §4, §7)
ADMIN = "probe-admin-token"


def crash_and_restart(b):
    os.kill(b.process.pid, signal.SIGKILL)
    b.process.wait(timeout=5)
    args = [str(broker_binary()), "--mqtt-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
            "--data-dir", b.data.name, "--config", os.path.join(b.data.name, "rookery.toml")]
    b.process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                 env=dict(os.environ, RUST_LOG="warn"), text=True)
    b.port = b._read_port()
    threading.Thread(target=b._drain, daemon=True).start()


def test_state_survives_kill_9(start_broker, client_factory):
    b = start_broker(config=f'[auth]\nadmin_token = "{ADMIN}"\n')
    b.app_token = ADMIN
    tokens = users(b, "alice", "bob", "q")
    g = new_group(b, name="g", members={"m": "alice,bob"})
    h = new_group(b, name="h", permissions={"recv": 2}, members={"m": "alice,q"})
    d = new_group(b, name="d")
    ok(b, {"op": "groupdel", "group": {"gid": d}})
    bob = login(client_factory, b, tokens, "bob", V311, clean=False)
    assert suback(bob, "groups/#") < 0x80
    bob.disconnect()
    alice = login(client_factory, b, tokens, "alice", V5)
    assert code(alice.publish(f"groups/{g}", b"g1", 1)) < 0x80
    assert code(alice.publish(f"groups/{g}", b"ret", 1, retain=True)) < 0x80
    assert code(alice.publish(f"groups/{h}", b"h1", 1)) < 0x80
    alice.kill()
    crash_and_restart(b)
    assert new_group(b, name="after") > d  # gids are never reused
    alice = login(client_factory, b, tokens, "alice", V5, cid="alice-2")
    bob = login(client_factory, b, tokens, "bob", V311, clean=False)
    assert bob.session_present
    assert sorted(payloads(bob)) == [b"g1", b"ret"]
    q = login(client_factory, b, tokens, "q", V5)
    assert suback(q, f"groups/{h}") < 0x80
    assert q.message().payload == b"h1"
    assert suback(alice, f"groups/{g}") < 0x80
    msg = alice.message()
    assert (msg.payload, msg.retain) == (b"ret", True)
    history = ok(b, {"op": "groupmessages", "group": {"gid": g}})["messages"]
    assert [m["payload"] for m in history] == ["ret", "g1"]


# ----------------------------------------------------------------------------------------------
# the 3.1.1 "disconnect instead, by config" of SPEC §6

def test_denied_v311_publish_disconnects_by_config(start_broker, client_factory):
    b = start_broker(config="[mqtt]\ndisconnect_on_denied_publish = true\n")
    tokens = users(b, "alice", "nina")
    gid = new_group(b, name="g", members={"m": "alice"})
    nina = login(client_factory, b, tokens, "nina", V311)
    nina.paho.publish(f"groups/{gid}", b"denied", 1)
    nina.wait_disconnected()
    alice = login(client_factory, b, tokens, "alice", V311)
    assert code(alice.publish(f"groups/{gid}", b"fine", 1)) == 0


# ----------------------------------------------------------------------------------------------
# single-group subscriptions see changes at once too (the per-session cache of SPEC §6)

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_changes_take_effect_on_single_group_subscriptions(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "carol")
    gid = new_group(broker, name="single", permissions={"recv": 1, "sub": 1}, members={"m": "alice,bob,carol"})
    alice = login(client_factory, broker, tokens, "alice", version)
    bob = login(client_factory, broker, tokens, "bob", version)
    carol = login(client_factory, broker, tokens, "carol", version)
    assert suback(bob, f"groups/{gid}") < 0x80
    assert suback(bob, f"groups/{gid}/live/#") < 0x80
    assert suback(carol, f"groups/{gid}") < 0x80

    def send(tag):
        alice.publish(f"groups/{gid}", tag + b"-g", 1)
        alice.publish(f"groups/{gid}/live/x", tag + b"-l", 1)
        got = collect({"bob": bob, "carol": carol})
        return sorted(m.payload for m in got["bob"]), sorted(m.payload for m in got["carol"])

    assert send(b"1") == ([b"1-g", b"1-l"], [b"1-g"])
    edit(broker, gid, "bob", permissions={"recv": False})
    assert send(b"2") == ([b"2-l"], [b"2-g"])
    edit(broker, gid, "bob", permissions={"recv": True, "sub": False})
    assert send(b"3") == ([b"3-g"], [b"3-g"])
    edit(broker, gid, "bob", permissions={"sub": True})
    assert send(b"4") == ([b"4-g", b"4-l"], [b"4-g"])
    edit(broker, gid, "carol", remove=True)
    assert send(b"5") == ([b"5-g", b"5-l"], [])
    ok(broker, {"op": "groupdel", "group": {"gid": gid}})
    assert send(b"6") == ([], [])


def test_round_robin_queue_goes_to_a_reconnecting_persistent_member(broker, client_factory):
    tokens = users(broker, "s", "q")
    gid = new_group(broker, name="hunt", permissions={"recv": 2}, members={"m": "s,q"})
    q = login(client_factory, broker, tokens, "q", V5, clean=False, session_expiry=300)
    assert suback(q, f"groups/{gid}") < 0x80
    q.disconnect()
    s = login(client_factory, broker, tokens, "s", V5)
    for i in range(2):
        assert code(s.publish(f"groups/{gid}", f"p{i}".encode(), 1)) < 0x80
    q = login(client_factory, broker, tokens, "q", V5, cid="q-v5", clean=False, session_expiry=300)
    assert sorted(payloads(q)) == [b"p0", b"p1"]


# ----------------------------------------------------------------------------------------------
# privilege escalation over the real-time API

def test_real_time_api_no_escalation(broker, client_factory):
    tokens = users(broker, "own", "au", "p", "x")
    gid = new_group(broker, name="esc", permissions={"send": 1}, members={"m": "own,au,p"})
    edit(broker, gid, "own", admin={"owner": True})
    edit(broker, gid, "au", admin={"adduser": True})
    edit(broker, gid, "p", permissions={"send": False})
    G = {"gid": gid}
    before = member_list(broker, gid)
    rp = Rt(client_factory, broker, tokens, "p", V5)
    rau = Rt(client_factory, broker, tokens, "au", V311)
    rp.refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "p", "permissions": {"send": True}}}}, "PERMISSION")
    rp.refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "p", "admin": {"owner": True}}}}, "PERMISSION")
    rau.refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "au", "admin": {"addadmin": True}}}}, "PERMISSION")
    rau.refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "x", "admin": {"modify": True}}}}, "PERMISSION")
    rau.refused({"op": "groupeditmembers", "group": {**G, "members": {"m": "own", "permissions": {"send": False}}}}, "PERMISSION")
    rau.refused({"op": "groupset", "group": {**G, "permissions": {"send": 2}}}, "PERMISSION")
    assert member_list(broker, gid) == before
    assert group_get(broker, gid)["permissions"]["send"] == 1
    # the owner holds all
    ro = Rt(client_factory, broker, tokens, "own", V5)
    ro.ok({"op": "groupset", "group": {**G, "name": "mine", "validity": {"duration": 86400}}})
    g = group_get(broker, gid)
    assert g["name"] == "mine" and g["validity"]["duration"] == 86400
    assert g["validity"]["expires"] == g["validity"]["start"] + 86400
    ro.ok({"op": "groupeditmembers", "group": {**G, "members": {"m": "x", "admin": {"admin": True}}}})
    ro.ok({"op": "groupdel", "group": G})


def test_api_http_edges(broker):
    fails(broker, {"op": "groupadd", "group": {"name": "n" * 257}}, 400, "BADREQUEST")
    fails(broker, {"op": "groupadd", "group": {"name": "a\x00b"}}, 400, "BADREQUEST")
    fails(broker, {"op": "useradd", "user": {"address": "u", "name": "n" * 257}}, 400, "BADREQUEST")
    ok(broker, {"op": "groupadd", "group": {"name": "n" * 256}})
    status, answer = http(broker, "PUT", body=b"{}")
    assert status == 405 and answer["error"] == "BADREQUEST"
    status, answer = http(broker, "POST", body=b'{"op":"usersget","x":"' + b"a" * (1 << 20) + b'"}')
    assert status == 413 and answer["error"] == "BADREQUEST"


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_ordinary_topics_are_open_to_everyone(broker, client_factory, version):
    tokens = users(broker, "alice")
    alice = login(client_factory, broker, tokens, "alice", version)
    a = anon(client_factory, broker, version)
    assert suback(a, "sensors/#") < 0x80
    assert code(alice.publish("sensors/t1", b"21.5", 1)) == 0
    assert a.message().payload == b"21.5"


# ----------------------------------------------------------------------------------------------
# ACL corners a backend relies on: shared subscriptions, wills, $groups/ops, response topics

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_shared_subscriptions_and_hash_are_filtered_too(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "nina")
    gid = new_group(broker, name="sh", members={"m": "alice,bob"})
    alice = login(client_factory, broker, tokens, "alice", version)
    bob = login(client_factory, broker, tokens, "bob", version)
    nina = login(client_factory, broker, tokens, "nina", version)
    a = anon(client_factory, broker, version)
    assert suback(bob, f"$share/w/groups/{gid}") < 0x80
    assert suback(nina, f"$share/w2/groups/{gid}") == refused_sub(version)
    assert suback(nina, "$share/w3/groups/#") < 0x80
    assert suback(a, "#") < 0x80
    assert code(alice.publish(f"groups/{gid}", b"secret", 1)) < 0x80
    got = collect({"bob": bob, "nina": nina, "anon": a})
    assert [m.payload for m in got["bob"]] == [b"secret"]
    assert got["nina"] == [] and got["anon"] == []


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_wills_go_through_the_acl(broker, client_factory, version):
    tokens = users(broker, "alice", "bob", "carol", "nina")
    gid = new_group(broker, name="w", permissions={"send": 1}, members={"m": "alice,bob,carol"})
    edit(broker, gid, "carol", permissions={"send": False})
    bob = login(client_factory, broker, tokens, "bob", version)
    assert suback(bob, "groups/#") < 0x80
    assert suback(bob, "$users/bob/events") < 0x80
    denied = [("nina", f"groups/{gid}"), ("nina", f"groups/{gid}/live/x"), ("nina", "$users/bob/events"),
              (None, f"groups/{gid}"), ("carol", f"groups/{gid}")]
    for i, (who, topic) in enumerate(denied):
        kw = {"username": who, "password": tokens[who]} if who else {}
        c = client_factory(broker.port, f"will-{i}", version, will=(topic, f"will-{i}".encode(), 1, True), **kw)
        # A will the client could not publish refuses the CONNECT (README, Groups); a `$` will
        # topic is invalid (v5 0x90; 3.1.1 has only 5, which paho reports as 0x87).
        expected = 0x90 if topic.startswith("$") and version == V5 else 0x87
        assert code(c.reason_code) == expected, (who, topic, c.reason_code)
    # a member allowed to send: its will is a group message like any other
    c = client_factory(broker.port, "alice-will", version, username="alice", password=tokens["alice"],
                       will=(f"groups/{gid}", b"alice-gone", 1, False))
    c.kill()
    got = bob.drain(1.0)
    # SPEC §6: "PUBLISH to a group topic is checked against `send` (or `pub` for live topics)";
    # a will is the client's message: only the permitted member's arrives, stored under its name.
    assert [(m.topic, m.payload) for m in got] == [(f"groups/{gid}", b"alice-gone")]
    history = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"]
    assert [(m["from"], m["payload"]) for m in history] == [("alice", "alice-gone")]
    late = login(client_factory, broker, tokens, "bob", version, cid="bob-late")
    assert suback(late, f"groups/{gid}") < 0x80
    late.no_message()


def test_a_members_will_is_recorded_with_its_sender(broker, client_factory):
    tokens = users(broker, "alice")
    gid = new_group(broker, name="w", members={"m": "alice"})
    c = client_factory(broker.port, "alice-will", V311, username="alice", password=tokens["alice"],
                       will=(f"groups/{gid}", b"alice-gone", 1, False))
    c.kill()
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        history = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"]
        if history:
            break
        time.sleep(0.1)
    # SPEC §8: groupmessages gives each message's `from`: the will's user.
    assert [(m["from"], m["payload"]) for m in history] == [("alice", "alice-gone")]


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_a_will_is_checked_again_when_published(broker, client_factory, version):
    # Allowed at CONNECT, alice is removed before her connection dies: her will is not sent.
    tokens = users(broker, "alice", "bob")
    gid = new_group(broker, name="w2", members={"m": "alice,bob"})
    bob = login(client_factory, broker, tokens, "bob", version)
    assert suback(bob, f"groups/{gid}") < 0x80
    c = client_factory(broker.port, "alice-will2", version, username="alice", password=tokens["alice"],
                       will=(f"groups/{gid}", b"too late", 1, False))
    assert code(c.reason_code) == 0
    edit(broker, gid, "alice", remove=True)
    c.kill()
    bob.no_message(1.0)
    assert ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"] == []


def test_ops_requests_and_replies_reach_nobody_else(broker, client_factory):
    tokens = users(broker, "alice", "bob", "eve")
    gid = new_group(broker, name="ops", members={"m": "alice,bob"})
    eve = login(client_factory, broker, tokens, "eve", V5)
    eve.subscribe("$groups/ops", 1)  # refused or accepted, eve must see nobody's requests
    bob = login(client_factory, broker, tokens, "bob", V5)
    assert suback(bob, "$users/bob/replies") < 0x80
    assert suback(bob, "groups/#") < 0x80
    alice = login(client_factory, broker, tokens, "alice", V5)
    assert suback(alice, "$users/alice/replies") < 0x80
    # a response topic alice may not publish to: the reply goes to her own replies topic
    for i, topic in enumerate(("$users/bob/replies", "$SYS/x")):
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = topic
        props.CorrelationData = f"c{i}".encode()
        alice.publish("$groups/ops", json.dumps({"op": "groupget", "id": f"r{i}", "group": {"gid": gid}}).encode(),
                      1, properties=props)
        reply = alice.message()
        assert reply.topic == "$users/alice/replies" and json.loads(reply.payload)["id"] == f"r{i}", reply.topic
    # a group topic where alice may not send: not published into the group
    ok(broker, {"op": "groupset", "group": {"gid": gid, "permissions": {"send": 1}}})
    edit(broker, gid, "alice", permissions={"send": False})
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"groups/{gid}"
    props.CorrelationData = b"c9"
    alice.publish("$groups/ops", json.dumps({"op": "groupget", "id": "r9", "group": {"gid": gid}}).encode(),
                  1, properties=props)
    reply = alice.message()
    assert reply.topic == "$users/alice/replies"
    got = collect({"bob": bob, "eve": eve})
    assert got["eve"] == [], [(m.topic, m.payload) for m in got["eve"]]
    assert [m.topic for m in got["bob"]] == [], [(m.topic, m.payload) for m in got["bob"]]


# ----------------------------------------------------------------------------------------------
# more of §7

@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_round_robin_overlapping_filters_and_live(broker, client_factory, version):
    tokens = users(broker, "s", "r1", "r2")
    gid = new_group(broker, name="hunt", permissions={"recv": 2}, members={"m": "s,r1,r2"})
    s = login(client_factory, broker, tokens, "s", version)
    r1 = login(client_factory, broker, tokens, "r1", version)
    r2 = login(client_factory, broker, tokens, "r2", version)
    for c in (r1, r2):
        assert suback(c, "groups/#") < 0x80
    assert suback(r1, f"groups/{gid}") < 0x80  # overlapping: still one copy per message
    for i in range(4):
        assert code(s.publish(f"groups/{gid}", f"o{i}".encode(), 1)) < 0x80
    got = collect({"r1": r1, "r2": r2})
    assert sorted(m.payload for r in got for m in got[r]) == [b"o0", b"o1", b"o2", b"o3"]
    # live topics are pub/sub, not round-robin: every subscriber gets them
    assert code(s.publish(f"groups/{gid}/live/x", b"L", 1)) < 0x80
    got = collect({"r1": r1, "r2": r2})
    assert [m.payload for m in got["r1"]] == [b"L"] and [m.payload for m in got["r2"]] == [b"L"]


def test_round_robin_qos0_waits_too(broker, client_factory):
    # SPEC §7: "If no member is online, the message waits in the group's queue and goes to the
    # first eligible member that subscribes (unless no-store)" -- at QoS 0 too (in memory only).
    tokens = users(broker, "s", "q")
    gid = new_group(broker, name="hunt0", permissions={"recv": 2}, members={"m": "s,q"})
    s = login(client_factory, broker, tokens, "s", V5)
    s.publish(f"groups/{gid}", b"z0", 0)
    time.sleep(0.2)
    q = login(client_factory, broker, tokens, "q", V5)
    assert suback(q, f"groups/{gid}") < 0x80
    assert q.message().payload == b"z0"


def test_no_local_subscription_option_wins_over_loopback(broker, client_factory):
    tokens = users(broker, "alice")
    gid = new_group(broker, name="loop", flags=0x80, members={"m": "alice"})
    alice = login(client_factory, broker, tokens, "alice", V5)
    alice.subscribe(f"groups/{gid}", options=SubscribeOptions(qos=1, noLocal=True))
    assert code(alice.publish(f"groups/{gid}", b"mine", 1)) < 0x80
    alice.no_message()


@pytest.mark.parametrize("version", VERSIONS, ids=["v311", "v5"])
def test_retained_group_message_cleared_and_gone_with_the_group(broker, client_factory, version):
    tokens = users(broker, "alice", "bob")
    g1 = new_group(broker, name="r1", members={"m": "alice,bob"})
    g2 = new_group(broker, name="r2", permissions={"recv": 2, "send": 2}, members={"m": "alice,bob"})
    alice = login(client_factory, broker, tokens, "alice", version)
    alice.publish(f"groups/{g1}", b"R", 1, retain=True)
    alice.publish(f"groups/{g1}", b"", 1, retain=True)  # clears it
    alice.publish(f"groups/{g2}/3", b"R2", 1, retain=True)
    ok(broker, {"op": "groupdel", "group": {"gid": g2}})
    bob = login(client_factory, broker, tokens, "bob", version)
    a = anon(client_factory, broker, version)
    assert suback(bob, "groups/#") < 0x80
    assert suback(a, "groups/#") < 0x80
    got = collect({"bob": bob, "anon": a})
    assert got["bob"] == [] and got["anon"] == [], {k: [(m.topic, m.payload) for m in v] for k, v in got.items()}


def test_denied_messages_are_not_in_history(broker, client_factory):
    tokens = users(broker, "alice", "nina")
    gid = new_group(broker, name="h", members={"m": "alice"})
    nina = login(client_factory, broker, tokens, "nina", V311)
    a = anon(client_factory, broker, V311)
    nina.publish(f"groups/{gid}", b"n", 1)
    a.publish(f"groups/{gid}", b"a", 1)
    nina.publish(f"groups/{gid}/live/x", b"l", 1)
    assert ok(broker, {"op": "groupmessages", "group": {"gid": gid}})["messages"] == []
    fails(broker, {"op": "groupeditmembers", "group": {"gid": gid, "type": 3, "members": {"m": "alice"}}}, 400, "BADREQUEST")
