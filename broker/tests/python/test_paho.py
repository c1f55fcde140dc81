"""paho-mqtt 2.1 against the rookery binary: features that exist in MQTT 3.1.1 and 5.0,
each test run once per protocol version."""

from __future__ import annotations

import socket
import struct
import time

import pytest
import paho.mqtt.client as mqtt

from conftest import QUIET, WAIT

VERSIONS = [pytest.param(mqtt.MQTTv311, id="v311"), pytest.param(mqtt.MQTTv5, id="v5")]


def persistent(version) -> dict:
    """Client arguments for a session that survives a disconnect."""
    if version == mqtt.MQTTv5:
        return {"clean": False, "session_expiry": 60}
    return {"clean": False}


@pytest.mark.parametrize("version", VERSIONS)
def test_connack_for_a_new_session_is_success_without_session_present(broker, client_factory, version):
    c = client_factory(broker.port, "new", version)
    assert c.reason_code == 0
    assert not c.session_present
    c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_delivered_qos_is_the_minimum_of_publish_and_subscription_qos(broker, client_factory, version):
    sub = client_factory(broker.port, "sub", version)
    pub = client_factory(broker.port, "pub", version)
    for sub_qos in range(3):
        codes = sub.subscribe(f"qos/{sub_qos}", sub_qos)
        assert [int(getattr(code, "value", code)) for code in codes] == [sub_qos]
    for pub_qos in range(3):
        for sub_qos in range(3):
            payload = f"p{pub_qos}s{sub_qos}".encode()
            pub.publish(f"qos/{sub_qos}", payload, pub_qos)
            msg = sub.message()
            assert msg.payload == payload
            assert msg.qos == min(pub_qos, sub_qos)
    sub.no_message()
    sub.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_messages_of_one_publisher_arrive_in_order(broker, client_factory, version):
    sub = client_factory(broker.port, "order-sub", version)
    sub.subscribe("order/t", 1)
    pub = client_factory(broker.port, "order-pub", version)
    infos = [pub.paho.publish("order/t", str(i), 1) for i in range(100)]
    for info in infos:
        info.wait_for_publish(timeout=WAIT)
    assert [sub.message().payload for _ in range(100)] == [str(i).encode() for i in range(100)]
    sub.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_messages_are_set_replaced_and_cleared(broker, client_factory, version):
    pub = client_factory(broker.port, "ret-pub", version)
    pub.publish("ret/a", b"first", 1, retain=True)
    pub.publish("ret/a", b"second", 1, retain=True)
    pub.publish("ret/b", b"gone soon", 1, retain=True)
    pub.publish("ret/b", b"", 1, retain=True)
    sub = client_factory(broker.port, "ret-sub", version)
    sub.subscribe("ret/#", 1)
    msg = sub.message()
    assert (msg.topic, msg.payload, msg.retain) == ("ret/a", b"second", True)
    sub.no_message()
    # A live message to an existing subscription carries RETAIN 0 (no Retain As Published).
    pub.publish("ret/a", b"live", 1, retain=True)
    msg = sub.message()
    assert (msg.payload, msg.retain) == (b"live", False)
    sub.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_will_is_published_on_abnormal_close_and_not_on_disconnect(broker, client_factory, version):
    watcher = client_factory(broker.port, "watcher", version)
    watcher.subscribe("will/#", 1)
    crashing = client_factory(broker.port, "crashing", version, will=("will/crashing", b"lost", 1, False))
    crashing.kill()
    msg = watcher.message()
    assert (msg.topic, msg.payload) == ("will/crashing", b"lost")
    polite = client_factory(broker.port, "polite", version, will=("will/polite", b"lost", 1, False))
    polite.disconnect()
    watcher.no_message(2 * QUIET)
    watcher.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_persistent_session_keeps_subscriptions_and_offline_messages(broker, client_factory, version):
    sub = client_factory(broker.port, "persist", version, **persistent(version))
    sub.subscribe("persist/#", 2)
    sub.disconnect()
    pub = client_factory(broker.port, "persist-pub", version)
    # QoS 0 first: the acknowledged QoS 1/2 publishes behind it prove it was routed
    # while the subscriber was still offline.
    pub.publish("persist/q0", b"zero", 0)
    pub.publish("persist/q1", b"one", 1)
    pub.publish("persist/q2", b"two", 2)
    sub = client_factory(broker.port, "persist", version, **persistent(version))
    assert sub.session_present
    got = [(m.topic, m.payload, m.qos) for m in sub.drain()]
    assert got == [("persist/q1", b"one", 1), ("persist/q2", b"two", 2)], "QoS 0 is not queued offline"
    pub.publish("persist/live", b"live", 1)
    assert sub.message().payload == b"live"
    sub.disconnect()
    # A clean session discards it all.
    clean = client_factory(broker.port, "persist", version)
    assert not clean.session_present
    clean.disconnect()
    pub.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_wildcards_match_levels_and_skip_dollar_topics(start_broker, client_factory, version):
    broker = start_broker(env={"ROOKERY_SYS_INTERVAL_SECS": "1"})
    plus = client_factory(broker.port, "plus", version)
    plus.subscribe("sport/+/player1", 0)
    hash_ = client_factory(broker.port, "hash", version)
    hash_.subscribe("sport/#", 0)
    everything = client_factory(broker.port, "everything", version)
    everything.subscribe("#", 0)
    sys = client_factory(broker.port, "sys", version)
    sys.subscribe("$SYS/broker/uptime", 0)
    pub = client_factory(broker.port, "wild-pub", version)
    for topic in ["sport", "sport/tennis/player1", "sport/tennis/player1/ranking", "sport/golf/player1"]:
        pub.publish(topic, topic, 1)
    assert [m.topic for m in plus.drain()] == ["sport/tennis/player1", "sport/golf/player1"]
    assert [m.topic for m in hash_.drain()] == [
        "sport", "sport/tennis/player1", "sport/tennis/player1/ranking", "sport/golf/player1",
    ]
    uptime = sys.message(timeout=WAIT)
    assert uptime.topic == "$SYS/broker/uptime"
    assert uptime.payload.endswith(b"seconds")
    time.sleep(1.1)
    topics = [m.topic for m in everything.drain()]
    assert topics and not any(t.startswith("$") for t in topics), topics
    for c in (plus, hash_, everything, sys, pub):
        c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_shared_subscription_gives_each_message_to_one_member(broker, client_factory, version):
    a = client_factory(broker.port, "share-a", version)
    b = client_factory(broker.port, "share-b", version)
    a.subscribe("$share/workers/jobs", 1)
    b.subscribe("$share/workers/jobs", 1)
    pub = client_factory(broker.port, "share-pub", version)
    for i in range(20):
        pub.publish("jobs", f"job{i}", 1)
    got_a = [m.payload for m in a.drain()]
    got_b = [m.payload for m in b.drain()]
    assert got_a and got_b, (got_a, got_b)
    assert sorted(got_a + got_b) == sorted(f"job{i}".encode() for i in range(20))
    for c in (a, b, pub):
        c.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_a_second_connection_with_the_same_client_id_takes_over(broker, client_factory, version):
    first = client_factory(broker.port, "twin", version)
    second = client_factory(broker.port, "twin", version)
    first.wait_disconnected()
    second.subscribe("twin/t", 1)
    second.publish("twin/t", b"mine", 1)
    assert second.message().payload == b"mine"
    second.disconnect()


@pytest.mark.parametrize("version", VERSIONS)
def test_unsubscribe_stops_delivery(broker, client_factory, version):
    sub = client_factory(broker.port, "unsub", version)
    sub.subscribe("unsub/t", 1)
    sub.unsubscribe("unsub/t")
    pub = client_factory(broker.port, "unsub-pub", version)
    pub.publish("unsub/t", b"x", 1)
    sub.no_message()
    sub.disconnect()
    pub.disconnect()


ACL = """\
topic readwrite #
topic deny test/nosubscribe
user alice
topic read sensors/#
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_the_acl_file_refuses_subscriptions_and_filters_deliveries(start_broker, client_factory, version, tmp_path):
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    broker = start_broker(config=f'[auth]\nacl_file = "{acl}"\n')
    c = client_factory(broker.port, "acl", version)
    codes = c.subscribe("test/nosubscribe", 1)
    expected = 0x80  # both versions, as Mosquitto answers (see ARCHITECTURE.md)
    assert [int(getattr(code, "value", code)) for code in codes] == [expected]
    everything = client_factory(broker.port, "acl-all", version)
    everything.subscribe("#", 1)
    token = broker.add_user("alice")
    alice = client_factory(broker.port, "alice", version, username="alice", password=token)
    assert [int(getattr(code, "value", code)) for code in alice.subscribe("#", 1)] == [expected]
    assert [int(getattr(code, "value", code)) for code in alice.subscribe("sensors/#", 1)] == [1]
    # Alice may only read: her publish is refused (v5 PUBACK 0x87; 3.1.1 acknowledged, dropped).
    rc = alice.publish("sensors/t", b"spoof", 1)
    if version == mqtt.MQTTv5:
        assert rc == 0x87, f"PUBACK reason {rc}"
    everything.no_message()
    c.publish("sensors/t", b"real", 1)
    assert alice.message().payload == b"real"
    assert everything.message().payload == b"real"
    for client in (c, everything, alice):
        client.disconnect()


# --- raw sockets, for what paho will not send ---------------------------------------------


def raw_connect(port: int, client_id: bytes, flags: int, keepalive: int, will: tuple | None = None) -> socket.socket:
    """A 3.1.1 CONNECT written by hand."""
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", keepalive)
    body += struct.pack("!H", len(client_id)) + client_id
    if will is not None:
        topic, payload = will
        body += struct.pack("!H", len(topic)) + topic + struct.pack("!H", len(payload)) + payload
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    return sock


def read_until_closed(sock: socket.socket, limit: float) -> bytes:
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"connection not closed within {limit} s; got {data!r}")


def raw_connect_v5(port: int, client_id: bytes) -> socket.socket:
    """A 5.0 CONNECT (clean start, keep-alive 30, no properties) and its CONNACK."""
    body = b"\x00\x04MQTT\x05\x02\x00\x1e\x00" + struct.pack("!H", len(client_id)) + client_id
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = sock.recv(3)
    assert connack[:1] == b"\x20", connack
    length = connack[1]
    rest = connack[3:]
    while len(rest) < length - 1:
        rest += sock.recv(length - 1 - len(rest))
    assert connack[2:3] in (b"\x00", b"\x01")
    return sock


def disconnect_reason(data: bytes) -> int | None:
    """The reason code of the DISCONNECT that ends `data`, if there is one."""
    index = data.rfind(b"\xe0")
    if index < 0 or index + 1 >= len(data):
        return None
    return data[index + 2] if data[index + 1] >= 1 else 0


# paho-mqtt 2.1 ignores the reason code of a DISCONNECT whose Remaining Length is below 3
# (eclipse-paho/paho.mqtt.python#860), i.e. the usual `e0 01 <reason>` form that rookery and
# Mosquitto send, so reason codes of broker DISCONNECTs are read from raw sockets here.


def test_a_taken_over_v5_connection_gets_disconnect_0x8e(broker, client_factory):
    sock = raw_connect_v5(broker.port, b"twin5")
    second = client_factory(broker.port, "twin5", mqtt.MQTTv5)
    assert disconnect_reason(read_until_closed(sock, WAIT)) == 0x8E
    sock.close()
    second.disconnect()


def test_a_v5_packet_above_max_packet_size_is_refused_with_0x95(start_broker, client_factory):
    broker = start_broker(env={"ROOKERY_MQTT_MAX_PACKET_SIZE": "1024"})
    probe = client_factory(broker.port, "probe", mqtt.MQTTv5)
    assert probe.connack_properties.MaximumPacketSize == 1024
    sock = raw_connect_v5(broker.port, b"big")
    payload = b"x" * 2000
    body = struct.pack("!H", 5) + b"big/t" + b"\x00" + payload  # QoS 0, no properties
    length = len(body)
    sock.sendall(bytes([0x30, (length & 0x7F) | 0x80, length >> 7]) + body)
    assert disconnect_reason(read_until_closed(sock, WAIT)) == 0x95
    sock.close()
    # The limit is per packet: others carry on.
    probe.publish("big/t", b"x" * 500, 1)
    probe.disconnect()


def test_v311_empty_client_id_without_clean_session_is_refused_with_code_2(broker):
    sock = raw_connect(broker.port, b"", flags=0x00, keepalive=30)
    assert read_until_closed(sock, WAIT) == b"\x20\x02\x00\x02"
    sock.close()


def test_a_silent_client_is_dropped_after_one_and_a_half_keep_alives_and_its_will_sent(broker, client_factory):
    watcher = client_factory(broker.port, "ka-watcher", mqtt.MQTTv311)
    watcher.subscribe("ka/will", 0)
    # Clean session + will flag (QoS 0), keep-alive 1 s, then silence.
    sock = raw_connect(broker.port, b"silent", flags=0x06, keepalive=1, will=(b"ka/will", b"timeout"))
    sock.settimeout(WAIT)
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    started = time.monotonic()
    assert read_until_closed(sock, 4) == b""
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed <= 2.5, elapsed
    assert watcher.message().payload == b"timeout"
    sock.close()
    watcher.disconnect()
