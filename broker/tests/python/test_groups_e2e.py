"""A chat backend, from the outside: the management API over HTTP (urllib) and paho
clients over MQTT, against the real binary, following SPEC §3–§8 only."""

import json

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

VERSIONS = [mqtt.MQTTv311, mqtt.MQTTv5]


def ok(broker, request):
    status, answer = broker.api(request)
    assert status == 200 and answer["result"] is True, (request, answer)
    return answer


@pytest.mark.parametrize("version", VERSIONS)
def test_a_chat_backend(broker, client_factory, version):
    tokens = {name: broker.add_user(name) for name in ("alice", "bob", "carol")}
    gid = ok(broker, {"op": "groupadd", "id": "g1",
                      "group": {"name": "support", "members": {"m": "alice,bob"}}})["group"]["gid"]

    def login(name, **kwargs):
        return client_factory(broker.port, f"{name}-{version}", version,
                              username=name, password=tokens[name], **kwargs)

    alice, bob, carol = login("alice"), login("bob"), login("carol")
    for c in (alice, bob):
        c.subscribe("groups/#", 1)
    carol.subscribe("groups/#", 1)  # a wildcard is accepted, each delivery is checked
    bob.subscribe(f"$users/bob/events", 1)

    # A member's message reaches the other member, not the sender (no loopback), not carol.
    alice.publish(f"groups/{gid}", b"hello", 1)
    msg = bob.message()
    assert (msg.topic, msg.payload) == (f"groups/{gid}", b"hello")
    alice.no_message()
    carol.no_message()

    # A non-member may not send (v5: PUBACK 0x87; 3.1.1: acknowledged and dropped).
    rc = carol.publish(f"groups/{gid}", b"spam", 1)
    if version == mqtt.MQTTv5:
        assert rc == 0x87
    bob.no_message()

    # The backend sends as alice through the same rules; the history keeps both.
    ok(broker, {"op": "message", "message": {"from": "alice", "gid": gid, "type": 2, "message": "from backend"}})
    msg = bob.message()
    assert (msg.topic, msg.payload) == (f"groups/{gid}/2", b"from backend")
    history = ok(broker, {"op": "groupmessages", "group": {"gid": gid}})
    assert [(m["from"], m["payload"]) for m in history["messages"]] == [
        ("alice", "from backend"), ("alice", "hello")]

    # Bob is removed: he is told, and stops receiving at once without resubscribing.
    ok(broker, {"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "bob", "remove": True}}})
    event = json.loads(bob.message().payload)
    assert (event["event"], event["gid"]) == ("group.member_removed", gid)
    alice.publish(f"groups/{gid}", b"after removal", 1)
    bob.no_message()

    # Errors are answered with the documented codes and change nothing.
    status, answer = broker.api({"op": "groupget", "group": {"gid": 987654}})
    assert (status, answer["error"]) == (404, "NOGROUP")
    status, answer = broker.api({"op": "nosuchop"})
    assert (status, answer["error"]) == (400, "BADOP")
    status, answer = broker.api({"op": "groupeditmembers", "group": {"gid": gid, "members": {"m": "nobody"}}})
    assert (status, answer["error"]) == (404, "NOUSER")
    members = ok(broker, {"op": "groupgetmembers", "group": {"gid": gid}})
    assert [m["address"] for m in members["members"]] == ["alice"]

    # Deleting the group: nobody receives anything more from it.
    carol_gid = ok(broker, {"op": "groupadd", "group": {"name": "other", "members": {"m": "carol"}}})["group"]["gid"]
    ok(broker, {"op": "groupdel", "group": {"gid": gid}})
    rc = alice.publish(f"groups/{gid}", b"gone", 1)
    if version == mqtt.MQTTv5:
        assert rc == 0x87
    carol.no_message()
    carol.publish(f"groups/{carol_gid}", b"mine", 1)
    carol.no_message()  # no loopback by default
    for c in (alice, bob, carol):
        c.disconnect()


def test_the_real_time_api_and_presence(broker, client_factory):
    tokens = {name: broker.add_user(name) for name in ("dora", "eli")}
    dora = client_factory(broker.port, "dora", mqtt.MQTTv5, username="dora", password=tokens["dora"])
    dora.subscribe("replies/dora", 1)
    properties = Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = "replies/dora"
    properties.CorrelationData = b"req-1"
    request = {"op": "groupadd", "id": 1, "group": {"name": "ops", "members": {"m": "eli"}}}
    dora.publish("$groups/ops", json.dumps(request).encode(), 1, properties=properties)
    reply = dora.message()
    assert reply.topic == "replies/dora"
    assert reply.properties.CorrelationData == b"req-1"
    answer = json.loads(reply.payload)
    assert answer["result"] is True and answer["id"] == 1, answer
    gid = answer["group"]["gid"]
    dora.subscribe(f"$groups/{gid}/presence", 1)
    snapshot = json.loads(dora.message().payload)
    assert snapshot == {"gid": gid, "members": [
        {"address": "dora", "online": True}, {"address": "eli", "online": False}]}
    eli = client_factory(broker.port, "eli", mqtt.MQTTv311, username="eli", password=tokens["eli"])
    online = json.loads(dora.message().payload)
    assert (online["address"], online["online"]) == ("eli", True)
    # A plain member may not change the group (3.1.1 reply topic).
    eli.subscribe("$users/eli/replies", 1)
    eli.publish("$groups/ops", json.dumps({"op": "groupset", "group": {"gid": gid, "name": "x"}}).encode(), 1)
    assert json.loads(eli.message().payload)["error"] == "PERMISSION"
    eli.disconnect()
    offline = json.loads(dora.message().payload)
    assert (offline["address"], offline["online"]) == ("eli", False)
    dora.disconnect()


def test_a_wrong_token_is_refused(broker):
    broker.add_user("fred")
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id="fred",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set("fred", "not-the-token")
    codes = []
    client.on_connect = lambda c, u, flags, rc, props: codes.append(rc)
    client.connect("127.0.0.1", broker.port, 30)
    for _ in range(50):
        client.loop(timeout=0.1)
        if codes:
            break
    assert codes and codes[0].is_failure, codes
    client.disconnect()
