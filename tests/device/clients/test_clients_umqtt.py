"""umqtt.simple and umqtt.robust under MicroPython against a real mosquitto broker.

What the broker delivers is read back by a paho-mqtt client on the host; what the device
receives is printed by the device script as Python literals.
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import threading
import time

import pytest
from clienttools import DeviceProcess, Subscriber, device_lines, free_port

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
c.set_last_will("ws/status", "offline °", qos=2)   # any QoS: the broker delivers it
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
    # server=None reads "mqtt" from the device config through wsconfig, the one reader of
    # /workshop.json; WORKSHOP_CONFIG is its unix seam.
    config = tmp_path / "workshop.json"
    config.write_text(json.dumps({"hostname": "ws-1", "mqtt": {"broker": mosquitto.host, "port": mosquitto.port}}))
    out = run(micropython, f"""
try:
    MQTTClient("e1", HOST, {free_port()}).connect()
except OSError as e:
    print(repr("refused"))
try:
    MQTTClient("e2")
except ValueError as e:
    print(repr(str(e)))
""", mosquitto, env={"WORKSHOP_CONFIG": str(tmp_path / "absent.json")})
    assert device_lines(out.stdout) == ["refused", "no MQTT broker: set mqtt.broker in "
                                        + str(tmp_path / "absent.json")]
    out = run(micropython, """
c = MQTTClient("e3")
print(repr((c.server, c.port)))
print(c.connect())
try:
    c.publish("ws/x", "y", qos=2)
except ValueError:
    print(repr("qos2"))
""", mosquitto, env={"WORKSHOP_CONFIG": str(config)})
    assert device_lines(out.stdout) == [(mosquitto.host, mosquitto.port), 0, "qos2"]
    config.write_text(json.dumps({"mqtt": "not-a-table"}))  # hand-edited: a named error, not AttributeError
    out = run(micropython, """
try:
    MQTTClient("e4")
except ValueError as e:
    print(repr(str(e)))
""", mosquitto, env={"WORKSHOP_CONFIG": str(config)})
    assert device_lines(out.stdout) == [f"{config}: \"mqtt\" must be an object, got 'not-a-table'"]


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


def test_robust_resubscribes_only_what_is_still_subscribed(micropython, mosquitto, subscriber, tmp_path):
    # The subscriptions robust makes again after a restart are the granted ones minus the
    # unsubscribed: an unsubscribed filter must stay gone on the new broker.
    dev = DeviceProcess(micropython, PRELUDE + """
from umqtt.robust import MQTTClient
MQTTClient.DELAY = 0.1
MQTTClient.MAX_DELAY = 0.5
c = MQTTClient("rob-unsub", HOST, PORT)
c.set_callback(show)
c.connect()
c.subscribe("ws/old/#", 1)
c.subscribe(b"ws/keep", 1)
c.unsubscribe("ws/old/#")
print(repr("ready"))
while 1:
    c.wait_msg()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        dev.expect("ready")
        mosquitto.restart(down_for=1.0)  # a new broker: no sessions, no subscriptions
        pub = subscriber()
        deadline = time.monotonic() + 15
        while True:  # until the device is back and subscribed again
            pub.publish("ws/old/x", b"gone")  # in order: had ws/old/# come back, this arrives first
            pub.publish("ws/keep", b"kept")
            try:
                got = dev.expect(..., timeout=0.5)
            except AssertionError:  # not back yet
                if time.monotonic() > deadline or dev.proc.poll() is not None:
                    raise
                continue
            assert got == (b"ws/keep", b"kept")
            break
    finally:
        dev.kill()


def test_robust_idle_wait_with_a_timeout_pings_instead_of_reconnecting(micropython, mosquitto, subscriber, tmp_path):
    """connect(timeout=0.3) then a quiet topic: wait_msg() times out again and again; the client
    must keep its connection (one ping per timeout) and still get the message that comes later."""
    dev = DeviceProcess(micropython, PRELUDE + """
from umqtt.robust import MQTTClient
class Counting(MQTTClient):
    reconnects = 0
    def reconnect(self):
        Counting.reconnects += 1
        return super().reconnect()
def got(topic, msg):
    show(topic, msg)
    print(repr(("reconnects", Counting.reconnects)))
c = Counting("rob-idle", HOST, PORT)
c.set_callback(got)
c.connect(timeout=0.3)
c.subscribe("ws/quiet", 1)
print(repr("ready"))
while 1:
    c.wait_msg()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        dev.expect("ready")
        time.sleep(2.0)                      # about six read timeouts
        pub = subscriber()
        pub.publish("ws/quiet", b"finally")
        assert dev.expect(...) == (b"ws/quiet", b"finally")
        assert dev.expect(...) == ("reconnects", 0)
    finally:
        dev.kill()


def test_after_a_failed_connect_or_a_disconnect_calls_raise_oserror_and_robust_recovers(micropython, mosquitto,
                                                                                       subscriber):
    """A board that booted before the broker was up (its connect() refused), or a client used
    after disconnect(), raised AttributeError ('NoneType' object has no attribute 'write') on its
    next call: the tutorials' `except OSError` loop crashed, and umqtt.robust never reconnected.
    As with micropython-lib: OSError, and robust reconnects on the publish and the check_msg."""
    sub = subscriber("ws/late")
    out = run(micropython, f"""
c = MQTTClient("s1", HOST, {free_port()})
try:
    c.connect()
except OSError:
    print(repr("refused"))
for call in (lambda: c.publish("ws/x", "y"), c.check_msg, c.ping):
    try:
        call()
    except OSError:
        print(repr("OSError"))
c = MQTTClient("s2", HOST, PORT)
c.connect()
c.disconnect()
for call in (lambda: c.publish("ws/x", "y"), c.check_msg, c.disconnect):
    try:
        call()
    except OSError:
        print(repr("OSError"))
from umqtt.robust import MQTTClient
MQTTClient.DELAY = 0.1
c = MQTTClient("r1", HOST, {free_port()})
try:
    c.connect()
except OSError:
    print(repr("refused"))
c.port = PORT                                     # the broker is up now (here: at another port)
c.publish("ws/late", "made it", qos=1)
print(repr(c.check_msg()))
c.disconnect()
""", mosquitto)
    assert device_lines(out.stdout) == ["refused"] + ["OSError"] * 6 + ["refused", None], out.stdout + out.stderr
    assert [m.payload for m in sub.wait_for(2)] == [b"made it"]


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



TLS = PRELUDE + """
import ssl
from errno import ETIMEDOUT
CA = open(sys.argv[3], "rb").read()
def context(cadata):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cadata)
    return ctx
"""


def test_port_0_means_1883_or_8883_with_tls(micropython, pki):
    out = micropython.run(TLS + """
print(repr([MQTTClient("p", "broker").port, MQTTClient("p", "broker", ssl=True).port,
            MQTTClient("p", "broker", ssl=context(CA)).port, MQTTClient("p", "broker", 1234, ssl=True).port,
            MQTTClient("p", "broker", 0, ssl=None).port]))
""", "127.0.0.1", "0", str(pki.ca_der))
    assert device_lines(out.stdout) == [[1883, 8883, 8883, 1234, 1883]]


@pytest.mark.parametrize("mode", ["ssl=True", "ssl=True verified", "SSLContext"])
def test_tls_with_password_publishes_and_subscribes(micropython, tls_broker, pki, tmp_path, mode):
    # The broker speaks only TLS and wants user/password; paho on the host trusts the test CA.
    host = Subscriber(tls_broker.host, tls_broker.port, "ws/tls/out", user="micro", password="s3cret", ca=pki.ca_pem)
    dev = DeviceProcess(micropython, TLS + """
mode = sys.argv[4]
if mode == "SSLContext":
    kw = {"ssl": context(CA)}                      # verifies the chain and server_hostname=HOST
elif mode == "ssl=True verified":
    kw = {"ssl": True, "ssl_params": {"cert_reqs": ssl.CERT_REQUIRED, "cadata": CA, "server_hostname": HOST}}
else:
    kw = {"ssl": True}                               # legacy: encrypted, not verified
c = MQTTClient("tls1", HOST, PORT, user="micro", password="s3cret", keepalive=30, **kw)
c.set_callback(show)
print(c.connect(timeout=1.5))
print(c.subscribe("ws/tls/ïn", 1))
c.publish("ws/tls/out", "über TLS " + mode, qos=1)
c.publish(b"ws/tls/out", bytes(range(256)) * 24)       # > one TLS record
print(repr("ready"))
c.wait_msg()
t = time.ticks_ms()
while c.check_msg() is None:                      # check_msg on a TLS socket, then its timeout
    if time.ticks_diff(time.ticks_ms(), t) > 5000:
        raise SystemExit("nothing came")
    time.sleep_ms(10)
t = time.ticks_ms()
try:
    c.wait_msg()
except OSError as e:
    print(repr(("timeout", e.errno == ETIMEDOUT, time.ticks_diff(time.ticks_ms(), t) < 4000)))
""", tmp_path, tls_broker.host, str(tls_broker.port), str(pki.ca_der), mode)
    try:
        assert dev.expect(...) == 0
        assert dev.expect(...) == 1
        dev.expect("ready")
        host.publish("ws/tls/ïn", "°C".encode(), qos=1)
        host.publish("ws/tls/ïn", b"two", qos=0)
        assert dev.expect(...) == ("ws/tls/ïn".encode(), "°C".encode())
        assert dev.expect(...) == ("ws/tls/ïn".encode(), b"two")
        assert dev.expect(...) == ("timeout", True, True)
        dev.finish()
        got = host.wait_for(2)
        assert [(m.payload, m.qos) for m in got] == [(f"über TLS {mode}".encode(), 1), (bytes(range(256)) * 24, 0)]
    finally:
        dev.kill()
        host.close()


def test_tls_refuses_an_untrusted_broker_and_a_wrong_password(micropython, tls_broker, pki):
    out = micropython.run(TLS + """
for name, kw in (("other CA", {"ssl": context(open(sys.argv[4], "rb").read())}),
                 ("verified, other CA", {"ssl": True, "ssl_params": {"cert_reqs": ssl.CERT_REQUIRED,
                                         "cadata": open(sys.argv[4], "rb").read(), "server_hostname": HOST}}),
                 ("wrong password", {"ssl": context(CA), "password": "wrong"}),
                 ("plain MQTT to the TLS port", {})):
    kw.setdefault("password", "s3cret")
    try:
        MQTTClient("tls2", HOST, PORT, user="micro", **kw).connect(timeout=3)
        print(repr((name, "connected")))
    except MQTTException as e:
        print(repr((name, "MQTTException", e.args[0])))
    except (OSError, ValueError) as e:              # mbedtls reports a failed verification as ValueError
        print(repr((name, "refused")))
""", tls_broker.host, str(tls_broker.port), str(pki.ca_der), str(pki.other_ca_der))
    assert device_lines(out.stdout) == [("other CA", "refused"), ("verified, other CA", "refused"),
                                        ("wrong password", "MQTTException", 5),
                                        ("plain MQTT to the TLS port", "refused")]


def test_mixed_bytes_and_str_with_non_ascii_both_ways(micropython, mosquitto, subscriber, tmp_path):
    host = subscriber("ws/mix/#")
    dev = DeviceProcess(micropython, PRELUDE + """
c = MQTTClient(b"mix1", HOST, PORT)
c.set_callback(show)
c.set_last_will(b"ws/mix/will", "unused °")
c.connect()
c.publish(b"ws/mix/bytes-topic", "str payload °C")
c.publish("ws/mix/tøpic°", b"\\xff\\x00 bytes", qos=1)
c.publish("ws/mix/ünï", "ünïcode ✓", qos=1)
c.publish(bytearray(b"ws/mix/ba"), bytearray(b"bytearray"), qos=1)
c.subscribe("ws/dev/ünï/#", 1)                  # str topic filter with non-ASCII
c.subscribe("ws/dev/býtes".encode())             # the same kind as bytes
c.subscribe("ws/dev/gone")
c.unsubscribe(b"ws/dev/gone")
print(repr("ready"))
for i in range(3):
    c.wait_msg()
c.disconnect()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    try:
        dev.expect("ready")
        got = host.wait_for(4)
        assert [(m.topic, m.payload) for m in got] == [
            ("ws/mix/bytes-topic", "str payload °C".encode()),
            ("ws/mix/tøpic°", b"\xff\x00 bytes"),
            ("ws/mix/ünï", "ünïcode ✓".encode()),
            ("ws/mix/ba", b"bytearray"),
        ]
        host.publish("ws/dev/gone", b"not for the device")
        host.publish("ws/dev/ünï/°", "wärme °C")
        host.publish("ws/dev/býtes", bytes(range(256)), qos=0)
        host.publish("ws/dev/ünï/x", "")
        assert dev.expect(...) == ("ws/dev/ünï/°".encode(), "wärme °C".encode())
        assert dev.expect(...) == ("ws/dev/býtes".encode(), bytes(range(256)))
        assert dev.expect(...) == ("ws/dev/ünï/x".encode(), b"")
        dev.finish()
    finally:
        dev.kill()


def test_robust_loses_no_qos1_message_across_a_broker_kill(micropython, persistent_broker, tmp_path):
    # The host subscriber has a persistent session (clean_session=False, QoS 1) on a broker that
    # saves it every second, so whatever the broker accepted reaches the host even while the host
    # is reconnecting. The device's QoS 1 stream runs through a SIGKILL and restart of the broker.
    b = persistent_broker
    host = Subscriber(b.host, b.port, "ws/seq", client_id="host-seq", clean_session=False)
    time.sleep(1.5)  # the broker has saved the host's session
    dev = DeviceProcess(micropython, PRELUDE + """
from umqtt.robust import MQTTClient
MQTTClient.DELAY = 0.1
MQTTClient.MAX_DELAY = 0.4
c = MQTTClient("rob3", HOST, PORT)
c.set_callback(show)
c.connect(timeout=3)
c.subscribe("ws/cmd3", 1)
print(repr("ready"))
for i in range(50):
    c.publish("ws/seq", str(i), qos=1)
    if i == 15:
        print(repr("kill now"))
    time.sleep(0.04)
print(repr("sent"))
c.wait_msg()                                       # the subscription came back with the device
""", tmp_path, b.host, str(b.port))
    try:
        dev.expect("ready")
        dev.expect("kill now")
        b.restart(down_for=1.0)
        dev.expect("sent", timeout=20)
        Subscriber(b.host, b.port).publish("ws/cmd3", b"still subscribed")
        assert dev.expect(...) == (b"ws/cmd3", b"still subscribed")
        dev.finish()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            numbers = {int(m.payload) for m in host.wait_for(50, timeout=1)}
            if numbers >= set(range(50)):
                break
        assert sorted(set(range(50)) - numbers) == [], "lost QoS 1 messages"
    finally:
        dev.kill()
        host.close()


CONNACK = b"\x20\x02\x00\x00"
_rng = random.Random(4)
NOISE = [bytes(_rng.getrandbits(8) for _ in range(n)) for n in (1, 7, 64, 300)]
# (name, what the peer sends after accepting, then closes (True) or stays silent (False))
BAD_CONNECT = [
    ("silent", b"", False),
    ("closed at once", b"", True),
    ("CONNACK too long", b"\x20\x03\x00\x00\x00", True),
    ("SUBACK instead", b"\x90\x03\x00\x01\x00", True),
    ("truncated CONNACK", b"\x20\x02\x00", True),
    ("truncated CONNACK, silent", b"\x20\x02", False),
    ("HTTP", b"HTTP/1.1 400 Bad Request\r\n\r\n", True),
] + [(f"noise {len(n)}{'' if c else ', silent'}", n, c) for n in NOISE for c in (True, False)]
BAD_SESSION = [
    ("length of 5 bytes", b"\x30\xff\xff\xff\xff\x01", False),
    ("topic longer than packet", b"\x30\x03\xff\xff\x00", False),
    ("QoS 3", b"\x36\x05\x00\x01a\x00\x01", False),
    ("reserved type 0", b"\x00\x00", False),
    ("reserved type 15", b"\xf0\x00", False),
    ("CONNECT from the server", b"\x10\x00", False),
    ("truncated PUBLISH", b"\x30\x10\x00\x05ab", True),
    ("truncated PUBLISH, silent", b"\x32\x10\x00\x05abcde\x00", False),
    ("PUBLISH larger than any heap", b"\x30\xff\xff\xff\x7f\x00\x01a", False),
    ("PUBACK too long", b"\x40\x08" + b"\x00" * 8, False),
    ("closed", b"", True),
] + [(f"noise {len(n)}{'' if c else ', silent'}", n, c) for n in NOISE for c in (True, False)]


class GarbagePeer:
    """A TCP server that answers each connection with the next scripted reply."""

    def __init__(self, script: list[tuple[bytes, bool]]) -> None:
        self.script = list(script)
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        for reply, close in self.script:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                conn.recv(1024)  # the CONNECT
                conn.sendall(reply)
            except OSError:
                pass
            if close:
                conn.close()
            else:
                self.held.append(conn)

    def close(self) -> None:
        self.srv.close()
        for c in self.held:
            c.close()


@pytest.mark.parametrize("stage", ["connect", "wait_msg", "check_msg"])
def test_a_peer_sending_garbage_gets_a_clean_exception_not_a_hang(micropython, stage):
    cases = BAD_CONNECT if stage == "connect" else BAD_SESSION
    peer = GarbagePeer([(r if stage == "connect" else CONNACK + r, c) for _, r, c in cases])
    try:
        out = micropython.run(PRELUDE + f"""
stage = sys.argv[3]
for i in range({len(cases)}):
    c = MQTTClient("g", HOST, PORT)
    c.set_callback(show)
    t = time.ticks_ms()
    try:
        c.connect(timeout=0.5)
        if stage == "wait_msg":
            c.wait_msg()
        elif stage == "check_msg":
            while c.check_msg() is None:
                if time.ticks_diff(time.ticks_ms(), t) > 3000:
                    break
        r = "no error"
    except MQTTException:
        r = "MQTTException"
    except OSError:
        r = "OSError"
    except Exception as e:
        r = repr(e)
    print(repr((r, time.ticks_diff(time.ticks_ms(), t) < 1500)))
    if c.sock:
        c.sock.close()
""", "127.0.0.1", str(peer.port), stage, timeout=120)
    finally:
        peer.close()
    got = dict(zip([name for name, _, _ in cases], device_lines(out.stdout)))
    bad = {k: v for k, v in got.items() if v[0] not in ("MQTTException", "OSError") or not v[1]}
    assert len(got) == len(cases) and not bad, f"not a clean, prompt exception: {bad}"


SILENT = {  # what the tutorial code calls -> what a broker that never answers it sends first
    "connect": (b"", "c.connect()"),
    "publish qos 1": (CONNACK, "c.connect()\nc.publish('ws/x', 'y', qos=1)"),
    "subscribe": (CONNACK, "c.connect()\nc.set_callback(show)\nc.subscribe('ws/x')"),
}


def test_tutorial_defaults_end_on_a_silent_broker(micropython):
    # No timeout passed anywhere: connect() and each ack wait end in OSError after umqtt's 10 s
    # default (one process per case, in parallel), instead of blocking forever.
    peers, procs = [], []
    try:
        for reply, code in SILENT.values():
            peer = GarbagePeer([(reply, False)])
            peers.append(peer)
            script = PRELUDE + f"""
t = time.ticks_ms()
try:
    c = MQTTClient("silent", HOST, PORT)
{''.join('    ' + line + chr(10) for line in code.splitlines())}    print(repr("no error"))
except OSError as e:
    print(repr(("OSError", time.ticks_diff(time.ticks_ms(), t) // 1000)))
"""
            procs.append(subprocess.Popen(micropython.command("-c", script, "127.0.0.1", str(peer.port)),
                                          env=micropython.environ(), stdout=subprocess.PIPE, text=True))
        got = {name: device_lines(p.communicate(timeout=30)[0]) for name, p in zip(SILENT, procs)}
    finally:
        for p in procs:
            p.kill()
        for peer in peers:
            peer.close()
    assert got == {name: [("OSError", 10)] for name in SILENT}


def test_an_ack_wait_ends_at_its_timeout_even_when_other_packets_came_meanwhile(micropython):
    """Each read of the wait got the whole timeout again: a broker that sent a PINGRESP 1.5 s into
    a 2 s wait for a PUBACK, then nothing, kept publish() waiting 3.5 s."""
    srv = socket.create_server(("127.0.0.1", 0))

    def broker() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(1024)  # CONNECT
            conn.sendall(CONNACK)
            conn.recv(1024)  # the QoS 1 PUBLISH
            time.sleep(1.5)
            conn.sendall(b"\xd0\x00")  # PINGRESP: not the PUBACK
            conn.recv(1024)  # then silent, until the client gives up

    threading.Thread(target=broker, daemon=True).start()
    try:
        out = micropython.run(PRELUDE + """
c = MQTTClient("w", HOST, PORT)
c.connect(timeout=2)
t = time.ticks_ms()
try:
    c.publish("ws/x", "y", qos=1)
    print(repr("no error"))
except OSError:
    print(repr(("OSError", time.ticks_diff(time.ticks_ms(), t))))
""", "127.0.0.1", str(srv.getsockname()[1]), timeout=30)
    finally:
        srv.close()
    [(kind, ms)] = device_lines(out.stdout)
    assert kind == "OSError" and 1900 <= ms < 2700, out.stdout


def test_a_timeout_mid_packet_is_a_lost_stream_for_robust_not_an_idle_wait(micropython):
    """robust took any timeout in wait_msg() as an idle connection and read on: a PUBLISH cut by a
    timeout had the rest of its body parsed as a packet, a message the broker never sent."""
    srv = socket.create_server(("127.0.0.1", 0))

    def broker() -> None:
        conn, _ = srv.accept()
        conn.recv(1024)  # CONNECT
        conn.sendall(CONNACK + b"\x30\x0e\x00\x04ws/x")  # a PUBLISH without its 8-byte message
        time.sleep(1.6)  # past the client's 1 s timeout
        conn.sendall(b"\x30\x06\x00\x04ws/n")  # the message: 8 bytes that look like a PUBLISH
        again, _ = srv.accept()  # the reconnect
        again.recv(1024)
        again.sendall(CONNACK + b"\x30\x08\x00\x04ws/xok")
        time.sleep(2)
        conn.close()
        again.close()

    threading.Thread(target=broker, daemon=True).start()
    try:
        out = micropython.run(PRELUDE + """
from umqtt import robust
robust.MQTTClient.DELAY = 0
c = robust.MQTTClient("cut", HOST, PORT)
c.set_callback(show)
c.connect(timeout=1)
c.wait_msg()
""", "127.0.0.1", str(srv.getsockname()[1]), timeout=30)
    finally:
        srv.close()
    assert device_lines(out.stdout) == [(b"ws/x", b"ok")]


def test_too_large_closes_the_stream_and_robust_reconnects(micropython):
    # A PUBLISH no heap can hold: MQTTException("too large"), and the rest of that packet is never
    # parsed as the next one: the stream is closed, robust reconnects and gets the next message.
    huge = b"\x30\xff\xff\xff\x7f\x00\x01a" + b"\x30\x08\x00\x04ws/xno"  # its "body" looks like a packet
    good = b"\x30\x08\x00\x04ws/xok"
    peer = GarbagePeer([(CONNACK + huge, False), (CONNACK + good, False), (CONNACK + huge, False)])
    try:
        out = micropython.run(PRELUDE + """
from umqtt import robust
robust.MQTTClient.DELAY = 0
c = robust.MQTTClient("big", HOST, PORT)
c.set_callback(show)
c.connect(timeout=2)
for i in range(2):
    try:
        c.wait_msg()
    except MQTTException as e:
        print(repr(str(e)))
s = MQTTClient("big", HOST, PORT)
s.connect(timeout=2)
try:
    s.wait_msg()
except MQTTException as e:
    print(repr(str(e)))
try:
    s.wait_msg()
except OSError:
    print(repr("closed"))
""", "127.0.0.1", str(peer.port), timeout=60)
    finally:
        peer.close()
    assert device_lines(out.stdout) == ["too large", (b"ws/x", b"ok"), "too large", "closed"]


def test_a_qos2_message_reaches_the_callback_and_leaves_the_stream_in_step(micropython, mosquitto, tmp_path):
    """A broker sends QoS 2 only to a session that subscribed with QoS 2 (here made by paho under
    the device's client id, kept with clean_session=False). umqtt has no QoS 2 handshake: the
    message still reaches the callback, wait_msg() raises MQTTException("got QoS 2"), and the next
    message is read whole (before, the QoS 2 packet was left half read and the next one lost)."""
    import paho.mqtt.client as mqtt

    setup = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-q2", clean_session=False)
    setup.connect(mosquitto.host, mosquitto.port)
    setup.loop_start()
    subacked = threading.Event()
    setup.on_subscribe = lambda *a: subacked.set()
    setup.subscribe("ws/q2", 2)
    assert subacked.wait(5)
    setup.loop_stop()
    setup.disconnect()
    dev = DeviceProcess(micropython, PRELUDE + """
c = MQTTClient("dev-q2", HOST, PORT)
c.set_callback(show)
print(repr(c.connect(clean_session=False)))      # the session paho left is there
for i in range(2):
    try:
        print(repr(c.wait_msg()))
    except MQTTException as e:
        print(repr(str(e)))
c.disconnect()
""", tmp_path, mosquitto.host, str(mosquitto.port))
    pub = Subscriber(mosquitto.host, mosquitto.port)
    try:
        dev.expect(1)
        pub.publish("ws/q2", b"two", qos=2)
        pub.publish("ws/q2", b"zero", qos=0)
        for line in ((b"ws/q2", b"two"), "got QoS 2", (b"ws/q2", b"zero"), 0x30):
            dev.expect(line)
        dev.finish()
    finally:
        pub.close()
        dev.kill()


def test_a_port_given_wins_over_the_config(micropython, mosquitto, tmp_path):
    config = tmp_path / "workshop.json"
    config.write_text(json.dumps({"mqtt": {"broker": mosquitto.host, "port": "not-a-port"}}))
    out = run(micropython, f"""
c = MQTTClient("p1", port={mosquitto.port})
print(repr((c.server, c.port, c.connect())))
""", mosquitto, env={"WORKSHOP_CONFIG": str(config)})
    assert device_lines(out.stdout) == [(mosquitto.host, mosquitto.port, 0)]


def test_a_reply_from_the_callback_leaves_at_once_not_after_a_nagle_stall(micropython, nodelay_broker, tmp_path):
    """A board answering commands: the callback publishes a reply, then wait_msg() writes the
    command's PUBACK: two writes in a row. With Nagle on, the PUBACK waited for the broker's
    delayed ACK of the reply, and the broker's next command with it (~40 ms a round trip on
    Linux, every second one: 0.8, 42.6, 0.8, 46.7, ... ms measured); with TCP_NODELAY a round
    trip on loopback takes a millisecond or two. The broker and the host client have Nagle off, so
    the device's is the only one measured. A trip over 20 ms (half the stall) counts as stalled; a
    loaded machine may stall 3 of 18, Nagle stalls about 9."""
    broker = nodelay_broker
    dev = DeviceProcess(micropython, PRELUDE + """
def reply(topic, msg):
    c.publish(b"ws/reply", msg)
c = MQTTClient("replier", HOST, PORT)
c.set_callback(reply)
c.connect()
c.subscribe(b"ws/cmd", 1)
print(repr("ready"))
for i in range(20):
    c.wait_msg()
c.disconnect()
""", tmp_path, broker.host, str(broker.port))
    replies = Subscriber(broker.host, broker.port, "ws/reply")
    try:
        replies.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dev.expect("ready")
        trips = []
        for i in range(20):
            t = time.monotonic()
            replies.publish("ws/cmd", b"%d" % i, qos=1)
            got = replies.wait_for(i + 1, timeout=5)
            trips.append(time.monotonic() - t)
            assert [m.payload for m in got] == [b"%d" % k for k in range(i + 1)]
        dev.finish()
    finally:
        replies.close()
        dev.kill()
    stalled = [t for t in trips[2:] if t > 0.020]
    assert len(stalled) <= 3, f"{len(stalled)} of 18 round trips stalled: {[round(x * 1000, 1) for x in trips]} ms"


@pytest.mark.parametrize("client", ["simple", "robust"])
def test_a_qos1_publish_from_the_callback_does_not_take_the_ack_the_caller_waits_for(micropython, mosquitto,
                                                                                     subscriber, client):
    """The echo a tutorial writes: the callback answers each message with a QoS 1 publish. When a
    message arrives while the device's own QoS 1 publish waits for its PUBACK (here it subscribes
    to its own topic, so the broker forwards the message while the ack is due), the callback's
    publish reads that PUBACK first: it must stay the caller's, not be dropped (which made the
    caller wait out its timeout and fail, or robust publish the message twice)."""
    sub = subscriber("ws/echo")
    out = run(micropython, f"""
from umqtt.{client} import MQTTClient
def echo(topic, msg):
    c.publish(b"ws/echo", msg, qos=1)
c = MQTTClient("echo1", HOST, PORT)
c.set_callback(echo)
c.connect(timeout=3)
c.subscribe(b"ws/in")
t = time.ticks_ms()
for i in range(5):
    c.publish(b"ws/in", b"m%d" % i, qos=1)
print(repr(time.ticks_diff(time.ticks_ms(), t) < 2500))
c.disconnect()
""", mosquitto)
    assert device_lines(out.stdout)[-1] is True, out.stdout + out.stderr
    got = sub.wait_for(5)
    assert sorted(m.payload for m in got) == [b"m%d" % i for i in range(5)], [m.payload for m in got]
