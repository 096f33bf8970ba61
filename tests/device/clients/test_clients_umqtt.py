"""umqtt.simple and umqtt.robust under MicroPython against a real mosquitto broker.

What the broker delivers is read back by a paho-mqtt client on the host; what the device
receives is printed by the device script as Python literals.
"""

from __future__ import annotations

import json
import time

import pytest
from clienttools import DeviceProcess, device_lines, free_port

LONG_TOPIC = "ws/" + "t" * 200  # > 127 bytes: a multi-byte remaining length even in SUBSCRIBE
BIG = 20000  # a 3-byte remaining length

PRELUDE = """
import sys, time
from umqtt.simple import MQTTClient, MQTTException
HOST = sys.argv[1]
PORT = int(sys.argv[2])
def show(topic, msg):
    print(repr((topic, msg)))
"""


def run(micropython, code: str, broker, *args: str, **kw):
    return micropython.run(PRELUDE + code, broker.host, str(broker.port), *args, **kw)


def test_publish_reaches_subscribers_byte_exact(micropython, mosquitto, subscriber):
    sub = subscriber("ws/#")
    run(micropython, f"""
c = MQTTClient("pub1", HOST, PORT)
c.connect()
c.publish("ws/temp", "23.5°C")                       # str with non-ASCII: UTF-8 byte length
c.publish(b"ws/bin", bytes(range(256)), qos=1)
c.publish("{LONG_TOPIC}", b"x" * {BIG}, qos=1)
c.publish(b"ws/empty", b"", qos=1)
c.publish("ws/retained", "kept", retain=True, qos=1)
c.disconnect()
""", mosquitto)
    got = sub.wait_for(5)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("ws/temp", "23.5°C".encode(), 0),
        ("ws/bin", bytes(range(256)), 1),
        (LONG_TOPIC, b"x" * BIG, 1),
        ("ws/empty", b"", 1),
        ("ws/retained", b"kept", 1),
    ]
    late = subscriber("ws/retained").wait_for(1)
    assert [(m.payload, m.retain) for m in late] == [(b"kept", True)]


def test_subscriber_receives_qos0_qos1_and_long_topics(micropython, mosquitto, subscriber, tmp_path):
    dev = DeviceProcess(micropython, PRELUDE + f"""
c = MQTTClient("sub1", HOST, PORT)
c.set_callback(show)
c.connect()
print(repr((c.subscribe("{LONG_TOPIC}", 1), c.subscribe(b"ws/in/#"))))
print(repr("ready"))
for i in range(3):
    c.wait_msg()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        assert dev.expect(...) == (1, 0)  # granted QoS per subscription
        dev.expect("ready")
        pub = subscriber()
        pub.publish(LONG_TOPIC, b"y" * BIG, qos=1)
        pub.publish("ws/in/a", "°".encode(), qos=0)
        pub.publish("ws/in/b/c", b"", qos=1)
        assert dev.expect(...) == (LONG_TOPIC.encode(), b"y" * BIG)
        assert dev.expect(...) == (b"ws/in/a", "°".encode())
        assert dev.expect(...) == (b"ws/in/b/c", b"")
        dev.finish()
    finally:
        dev.kill()


def test_unsubscribed_topics_are_no_longer_delivered(micropython, mosquitto, subscriber, tmp_path):
    dev = DeviceProcess(micropython, PRELUDE + """
c = MQTTClient("unsub1", HOST, PORT)
c.set_callback(show)
c.connect()
c.subscribe("a/#")
c.subscribe("b")
c.unsubscribe("a/#")
print(repr("ready"))
while 1:
    c.wait_msg()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        dev.expect("ready")
        pub = subscriber()
        pub.publish("a/x", b"gone")
        pub.publish("b", b"here")
        # In-order delivery: had a/# still matched, its message would come first.
        assert dev.expect(...) == (b"b", b"here")
    finally:
        dev.kill()


@pytest.mark.parametrize("ending", ["killed", "disconnected"])
def test_last_will_is_published_only_when_the_device_vanishes(micropython, mosquitto, subscriber, tmp_path, ending):
    sub = subscriber("ws/status")
    dev = DeviceProcess(micropython, PRELUDE + """
c = MQTTClient("will1", HOST, PORT, keepalive=30)
c.set_last_will("ws/status", "offline °", qos=1)
c.connect()
c.publish("ws/status", "online", qos=1)
print(repr("ready"))
if sys.argv[3] == "disconnected":
    c.disconnect()
else:
    time.sleep(30)
""", tmp_path, mosquitto.host, str(mosquitto.port), ending)
    try:
        dev.expect("ready")
        if ending == "killed":
            dev.kill()
        else:
            dev.finish()
        time.sleep(0.5)
        expected = [b"online", "offline °".encode()] if ending == "killed" else [b"online"]
        assert [m.payload for m in sub.wait_for(len(expected), timeout=5)] == expected
    finally:
        dev.kill()


def test_credentials_accepted_and_refused(micropython, auth_broker):
    out = run(micropython, """
ok = MQTTClient("auth1", HOST, PORT, user="micro", password="s3cret")
print(ok.connect())
ok.publish("ws/x", "y", qos=1)
ok.disconnect()
for user, pw in (("micro", "wrong"), ("micro", None), (None, None)):
    try:
        MQTTClient("auth2", HOST, PORT, user=user, password=pw).connect()
        print(repr("connected"))
    except MQTTException as e:
        print(e.args[0])
""", auth_broker)
    # 0: no session present; 5: "not authorised" (MQTT 3.1.1 CONNACK codes)
    assert device_lines(out.stdout) == [0, 5, 5, 5]


def test_user_without_password_is_a_valid_connect(micropython, mosquitto, subscriber):
    sub = subscriber("ws/user")
    run(micropython, """
c = MQTTClient("user1", HOST, PORT, user="micro")
c.connect()
c.publish("ws/user", "fine", qos=1)
c.disconnect()
""", mosquitto)
    assert [m.payload for m in sub.wait_for(1)] == [b"fine"]


def test_packet_ids_wrap_after_65535(micropython, mosquitto, subscriber):
    sub = subscriber("ws/pid")
    out = run(micropython, """
c = MQTTClient("pid1", HOST, PORT)
c.connect()
c.pid = 65534
for i in range(3):
    c.publish("ws/pid", str(i), qos=1)
    print(c.pid)
c.disconnect()
""", mosquitto)
    assert device_lines(out.stdout) == [65535, 1, 2]
    assert [m.payload for m in sub.wait_for(3)] == [b"0", b"1", b"2"]


def test_check_msg_keeps_the_connection_alive_and_the_timeout(micropython, mosquitto):
    # mosquitto checks keepalives coarsely: an idle keepalive=1 client is dropped within 6 s, not
    # always within 3.5 s. Both clients run side by side, only one calls check_msg().
    out = run(micropython, """
from errno import ETIMEDOUT
c = MQTTClient("ka1", HOST, PORT, keepalive=1)
c.connect(timeout=0.5)
idle = MQTTClient("ka2", HOST, PORT, keepalive=1)
idle.connect(timeout=2)
t = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t) < 6500:
    print(repr(c.check_msg()))                      # nothing pending: None, at once
    time.sleep(0.25)
c.publish("ws/alive", "yes", qos=1)                 # the PUBACK proves the session is alive
try:
    idle.publish("ws/alive", "no", qos=1)
    print(repr("idle client still connected"))
except OSError:
    print(repr("idle client dropped"))
t = time.ticks_ms()
try:                                                # the connect() timeout still holds
    c.wait_msg()
except OSError as e:
    print(repr(("timeout", e.errno == ETIMEDOUT, time.ticks_diff(time.ticks_ms(), t) < 2000)))
""", mosquitto)
    lines = device_lines(out.stdout)
    assert set(lines[:-2]) == {None} and len(lines) > 15
    assert lines[-2:] == ["idle client dropped", ("timeout", True, True)]


def test_errors_a_user_can_act_on(micropython, mosquitto, tmp_path):
    config = tmp_path / "workshop.json"
    config.write_text(json.dumps({"hostname": "ws-1", "mqtt": {"broker": mosquitto.host, "port": mosquitto.port}}))
    out = run(micropython, f"""
import umqtt.simple as simple
try:
    MQTTClient("e1", HOST, {free_port()}).connect()
except OSError as e:
    print(repr("refused"))
simple.CONFIG = {str(tmp_path / "absent.json")!r}
try:
    MQTTClient("e2")
except ValueError as e:
    print(repr(str(e)))
simple.CONFIG = {str(config)!r}
c = MQTTClient("e3")
print(c.connect())
try:
    c.publish("ws/x", "y", qos=2)
except ValueError:
    print(repr("qos2"))
""", mosquitto)
    lines = device_lines(out.stdout)
    assert lines[0] == "refused"
    assert lines[1].startswith("no MQTT broker: pass server or set mqtt.broker in ")
    assert lines[2:] == [0, "qos2"]


def test_robust_client_resubscribes_after_broker_restart(micropython, mosquitto, subscriber, tmp_path):
    dev = DeviceProcess(micropython, PRELUDE + """
from umqtt.robust import MQTTClient
MQTTClient.DELAY = 0.1
MQTTClient.MAX_DELAY = 0.5
c = MQTTClient("rob1", HOST, PORT)
c.set_callback(show)
c.connect()
c.subscribe("ws/cmd", 1)
print(repr("ready"))
while 1:
    c.wait_msg()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        dev.expect("ready")
        pub = subscriber()
        pub.publish("ws/cmd", b"one")
        assert dev.expect(...) == (b"ws/cmd", b"one")
        pub.close()
        mosquitto.restart(down_for=1.0)  # a new broker: no sessions, no subscriptions
        pub = subscriber()
        deadline = time.monotonic() + 15
        while True:  # until the device is back and subscribed again
            pub.publish("ws/cmd", b"two")
            try:
                assert dev.expect(..., timeout=0.5) == (b"ws/cmd", b"two")
                break
            except AssertionError:
                if time.monotonic() > deadline or dev.proc.poll() is not None:
                    raise
    finally:
        dev.kill()


def test_robust_publish_survives_broker_outage(micropython, mosquitto, subscriber, tmp_path):
    dev = DeviceProcess(micropython, PRELUDE + """
from umqtt.robust import MQTTClient
MQTTClient.DELAY = 0.1
MQTTClient.MAX_DELAY = 0.5
c = MQTTClient("rob2", HOST, PORT)
c.connect()
c.publish("ws/boot", "up", qos=1)
print(repr("ready"))
time.sleep(0.8)                                   # the broker is down now (for 1.5 s)
c.publish("ws/during", "made it", qos=1, retain=True)
print(repr("published"))
c.disconnect()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        dev.expect("ready")
        mosquitto.restart(down_for=1.5)
        dev.expect("published", timeout=15)
        dev.finish()
        # The restarted broker holds the retained message: it was published after the restart.
        assert [(m.payload, m.retain) for m in subscriber("ws/during").wait_for(1)] == [(b"made it", True)]
    finally:
        dev.kill()


def test_runs_in_an_esp8266_sized_heap(micropython, mosquitto, subscriber, device_env):
    sub = subscriber("ws/heap")
    out = run(micropython, """
import gc
c = MQTTClient("heap1", HOST, PORT, keepalive=60)
got = [0]
def count(t, m):
    got[0] += 1
c.set_callback(count)
c.connect()
c.subscribe("ws/heap", 1)
gc.collect()
before = gc.mem_alloc()
for i in range(200):
    c.publish("ws/heap", b"reading", qos=1)      # loops back: a PUBACK and an incoming PUBLISH,
    while got[0] <= i:                            # in either order
        c.check_msg()
gc.collect()
print(gc.mem_alloc() - before)
c.disconnect()
""", mosquitto, heapsize="38k", env=device_env)
    assert len(sub.wait_for(200)) == 200
    leaked = device_lines(out.stdout)[0]
    assert leaked < 512, f"{leaked} bytes still held after 200 round trips"
