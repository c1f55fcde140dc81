"""paho-mqtt 2.1 against the rookery binary: MQTT 5.0-only features."""

from __future__ import annotations

import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from conftest import QUIET

V5 = mqtt.MQTTv5


def publish_properties(**values) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


def test_an_empty_client_id_gets_an_assigned_client_identifier(broker, client_factory):
    c = client_factory(broker.port, "", V5)
    assigned = c.connack_properties.AssignedClientIdentifier
    assert assigned
    other = client_factory(broker.port, "", V5)
    assert other.connack_properties.AssignedClientIdentifier != assigned
    c.disconnect()
    other.disconnect()


def test_server_keep_alive_is_announced_when_the_cap_is_lower(start_broker, client_factory):
    broker = start_broker(env={"ROOKERY_MQTT_MAX_KEEPALIVE": "10"})
    c = client_factory(broker.port, "ka", V5, keepalive=60)
    assert c.connack_properties.ServerKeepAlive == 10
    c.disconnect()


def test_properties_are_passed_through(broker, client_factory):
    sub = client_factory(broker.port, "props-sub", V5)
    sub.subscribe("props/t", 1)
    pub = client_factory(broker.port, "props-pub", V5)
    sent = publish_properties(
        UserProperty=[("a", "1"), ("b", "2"), ("a", "3")],
        ContentType="application/json",
        ResponseTopic="props/replies",
        CorrelationData=b"\x00corr",
        PayloadFormatIndicator=1,
    )
    pub.publish("props/t", b"{}", 1, properties=sent)
    got = sub.message().properties
    assert got.UserProperty == [("a", "1"), ("b", "2"), ("a", "3")]
    assert got.ContentType == "application/json"
    assert got.ResponseTopic == "props/replies"
    assert got.CorrelationData == b"\x00corr"
    assert got.PayloadFormatIndicator == 1
    sub.disconnect()
    pub.disconnect()


def test_overlapping_subscriptions_deliver_one_message_with_both_identifiers(broker, client_factory):
    sub = client_factory(broker.port, "subid", V5)
    for ident, topic in ((1, "sid/+"), (2, "sid/#")):
        properties = Properties(PacketTypes.SUBSCRIBE)
        properties.SubscriptionIdentifier = ident
        sub.subscribe(topic, 1, properties=properties)
    pub = client_factory(broker.port, "subid-pub", V5)
    pub.publish("sid/x", b"x", 1)
    msg = sub.message()
    assert sorted(msg.properties.SubscriptionIdentifier) == [1, 2]
    sub.no_message()
    sub.disconnect()
    pub.disconnect()


def test_no_local_keeps_own_messages_away(broker, client_factory):
    talker = client_factory(broker.port, "talker", V5)
    talker.subscribe("room", options=SubscribeOptions(qos=1, noLocal=True))
    other = client_factory(broker.port, "other", V5)
    other.subscribe("room", 1)
    talker.publish("room", b"mine", 1)
    assert other.message().payload == b"mine"
    talker.no_message()
    other.publish("room", b"theirs", 1)
    assert talker.message().payload == b"theirs"
    talker.disconnect()
    other.disconnect()


def test_retain_handling_and_retain_as_published(broker, client_factory):
    pub = client_factory(broker.port, "rh-pub", V5)
    pub.publish("rh/t", b"kept", 1, retain=True)
    for handling, expected in ((0, [b"kept", b"kept"]), (1, [b"kept"]), (2, [])):
        sub = client_factory(broker.port, f"rh{handling}", V5)
        for _ in range(2):
            sub.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=handling))
        assert [m.payload for m in sub.drain()] == expected, f"retain handling {handling}"
        sub.disconnect()
    rap = client_factory(broker.port, "rap", V5)
    rap.subscribe("rh/t", options=SubscribeOptions(qos=1, retainAsPublished=True, retainHandling=2))
    pub.publish("rh/t", b"again", 1, retain=True)
    assert rap.message().retain
    rap.disconnect()
    pub.disconnect()


def test_topic_aliases_in_both_directions(broker, client_factory):
    connect = Properties(PacketTypes.CONNECT)
    connect.TopicAliasMaximum = 2
    sub = client_factory(broker.port, "alias-sub", V5, connect_properties=connect)
    sub.subscribe("alias/#", 1)
    pub = client_factory(broker.port, "alias-pub", V5)
    # Client → broker: set alias 1, then use it with an empty topic.
    pub.publish("alias/a", b"0", 1, properties=publish_properties(TopicAlias=1))
    pub.publish("", b"1", 1, properties=publish_properties(TopicAlias=1))
    for i, topic in enumerate(["alias/b", "alias/c", "alias/a", "alias/b"], start=2):
        pub.publish(topic, str(i), 1)
    # Broker → client: paho leaves aliases to the application, so resolve them here.
    expected = ["alias/a", "alias/a", "alias/b", "alias/c", "alias/a", "alias/b"]
    known: dict[int, str] = {}
    used = 0
    for i, topic in enumerate(expected):
        msg = sub.message()
        assert msg.payload == str(i).encode()
        alias = getattr(msg.properties, "TopicAlias", None)
        if alias is None:
            resolved = msg.topic
        else:
            assert 1 <= alias <= 2
            used += 1
            if msg.topic:
                known[alias] = msg.topic
            resolved = known[alias]
        assert resolved == topic, f"message {i}"
    assert used > 0, "the broker never used a topic alias"
    sub.disconnect()
    pub.disconnect()


def test_an_expired_message_is_not_delivered_and_the_rest_carry_the_remaining_expiry(broker, client_factory):
    sub = client_factory(broker.port, "exp", V5, clean=False, session_expiry=60)
    sub.subscribe("exp/#", 1)
    sub.disconnect()
    pub = client_factory(broker.port, "exp-pub", V5)
    pub.publish("exp/short", b"short", 1, properties=publish_properties(MessageExpiryInterval=1))
    pub.publish("exp/long", b"long", 1, properties=publish_properties(MessageExpiryInterval=60))
    time.sleep(2.0)
    sub = client_factory(broker.port, "exp", V5, clean=False, session_expiry=60)
    msgs = sub.drain()
    assert [m.payload for m in msgs] == [b"long"]
    assert 1 <= msgs[0].properties.MessageExpiryInterval <= 58
    sub.disconnect()
    pub.disconnect()


def test_a_session_with_expiry_1_is_gone_after_2_seconds(broker, client_factory):
    c = client_factory(broker.port, "short-session", V5, clean=False, session_expiry=1)
    c.subscribe("short/t", 1)
    c.disconnect()
    time.sleep(2.0)
    c = client_factory(broker.port, "short-session", V5, clean=False, session_expiry=1)
    assert not c.session_present
    c.disconnect()


def will_with_delay(delay: int):
    properties = Properties(PacketTypes.WILLMESSAGE)
    properties.WillDelayInterval = delay
    return ("delay/will", b"late", 1, False, properties)


def test_a_delayed_will_waits_for_the_delay_and_is_cancelled_by_a_reconnect(broker, client_factory):
    watcher = client_factory(broker.port, "delay-watch", V5)
    watcher.subscribe("delay/#", 1)
    # Sent after the delay.
    device = client_factory(broker.port, "delayed", V5, clean=False, session_expiry=30, will=will_with_delay(1))
    device.kill()
    started = time.monotonic()
    watcher.no_message(0.7)
    assert watcher.message().payload == b"late"
    assert time.monotonic() - started >= 0.9
    # Cancelled by a reconnect within the delay.
    device = client_factory(broker.port, "comeback", V5, clean=False, session_expiry=30, will=will_with_delay(2))
    device.kill()
    time.sleep(0.3)
    back = client_factory(broker.port, "comeback", V5, clean=False, session_expiry=30)
    assert back.session_present
    watcher.no_message(2.5)
    back.disconnect()
    watcher.disconnect()


def test_disconnect_with_reason_0x04_publishes_the_will(broker, client_factory):
    watcher = client_factory(broker.port, "w04-watch", V5)
    watcher.subscribe("w04/#", 1)
    device = client_factory(broker.port, "w04", V5, will=("w04/dev", b"bye", 1, False))
    device.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    assert watcher.message().payload == b"bye"
    watcher.disconnect()


def test_publishing_to_sys_is_refused_with_0x87(broker, client_factory):
    c = client_factory(broker.port, "spoof", V5)
    assert c.publish("$SYS/broker/uptime", b"0 seconds", 1) == 0x87
    c.disconnect()


def test_the_clients_maximum_packet_size_is_respected(broker, client_factory):
    connect = Properties(PacketTypes.CONNECT)
    connect.MaximumPacketSize = 200
    small = client_factory(broker.port, "small-max", V5, connect_properties=connect)
    small.subscribe("mps/t", 1)
    pub = client_factory(broker.port, "mps-pub", V5)
    pub.publish("mps/t", b"x" * 500, 1)
    pub.publish("mps/t", b"y" * 50, 1)
    assert [len(m.payload) for m in small.drain(QUIET)] == [50]
    small.disconnect()
    pub.disconnect()
