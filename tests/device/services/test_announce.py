"""announce on the real MicroPython runtimes against a real mosquitto (loopback): the retained
status and its fields, a new status at once when the IP changes, the offline will and a clean
stop, reconnecting with backoff after the broker restarts, broker credentials, and ticks that
never hold the REPL (a broker that accepts and then says nothing)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import free_port, require_tool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "clients"))
from clienttools import Subscriber  # noqa: E402

HERE = Path(__file__).resolve().parent


def script(tmp_path: Path, broker: str, port: int, body: str, *, interval: int = 30, user: str | None = None,
           password: str | None = None) -> Path:
    mqtt = {"broker": broker, "port": port}
    if user:
        mqtt.update(user=user, password=password)
    cfg = {"hostname": "ann-1", "mqtt": mqtt, "announce": {"interval_s": interval}}
    p = tmp_path / "ann.py"
    p.write_text(f"""
import sys, time, json
import wsconfig, announce
ips = ["127.0.0.1"]
cfg = json.loads({json.dumps(json.dumps(cfg))})
announce.start(cfg, ip=lambda: ips[0], telnet_port=2323)
{body}
""")
    return p


def statuses(sub: Subscriber) -> list[dict]:
    return [json.loads(m.payload) for m in sub.messages]


def until_offline(sub: Subscriber) -> list[dict]:
    """The statuses heard up to the offline one that stop() publishes (within 5 s)."""
    deadline = time.monotonic() + 5
    while not (sub.messages and json.loads(sub.messages[-1].payload)["state"] == "offline"):
        assert time.monotonic() < deadline, statuses(sub)
        time.sleep(0.05)
    return statuses(sub)


def test_status_fields_ip_change_and_clean_stop(micropython, mosquitto, tmp_path):
    sub = Subscriber(mosquitto.host, mosquitto.port, "workshop/ann-1/status")
    try:
        p = script(tmp_path, mosquitto.host, mosquitto.port,
                   "wsconfig.serve(1500)\nips[0] = '127.0.0.2'\nwsconfig.serve(2500)\nannounce.stop()\nprint('stopped')")
        t = time.monotonic()
        out = micropython.run(p, timeout=30).stdout
        elapsed = time.monotonic() - t
        assert "stopped" in out
        got = until_offline(sub)
        first = got[0]
        assert {"hostname", "ip", "board", "micropython", "inputs", "project", "heap_free", "rssi", "uptime_s",
                "state"} <= set(first)
        assert first["hostname"] == "ann-1" and first["state"] == "online" and first["telnet"] == 2323
        assert first["rssi"] is None and first["heap_free"] > 0 and first["interval_s"] == 30
        ips = [s["ip"] for s in got if s["state"] == "online"]
        assert ips[:2] == ["127.0.0.1", "127.0.0.2"]     # the new IP well before the 30 s interval
        assert elapsed < 15
        assert got[-1]["state"] == "offline" and got[-1]["ip"] == "127.0.0.2"   # stop(): said goodbye
    finally:
        sub.close()
    late = Subscriber(mosquitto.host, mosquitto.port, "workshop/ann-1/status")
    try:
        m = late.wait_for(1, timeout=5)[0]
        assert m.retain and json.loads(m.payload)["state"] == "offline"
    finally:
        late.close()


WRAPPED = """
import sys, json
sys.path.insert(0, {here!r})
import ticks30, wsconfig, announce
announce.time = ticks30
ips = ["127.0.0.1"]
cfg = json.loads({cfg!r})
{before}
announce.start(cfg, ip=lambda: ips[0])
wsconfig.serve(1500)
{after}
ips[0] = "127.0.0.2"
wsconfig.serve(2500)
print("STATE", announce._state)
"""


@pytest.mark.parametrize("when", ["connected for 6.2 days", "started after 6.2 days up"])
def test_an_ip_change_after_the_ticks_wrap_is_published_and_the_board_stays_online(micropython, mosquitto,
                                                                                   tmp_path, when):
    """On a board's 30-bit ticks a moment 2**29 ms (6.2 days) back reads as the future. Connected
    that long, the reconnect after an IP change waited for start()'s "next attempt" 6 more days
    (the will said offline); started that late, the once-a-second IP check never ran."""
    cfg = json.dumps({"hostname": "ann-w", "mqtt": {"broker": mosquitto.host, "port": mosquitto.port},
                      "announce": {"interval_s": 30}})
    # Connected for 6.2 days: what changes in that time is start()'s _due (the rest is refreshed
    # every second or interval), so it is set that far back; started late: the clock is moved on.
    before = "ticks30.jump((1 << 29) + 1000)" if when.startswith("started") else ""
    after = ("announce._due = ticks30.ticks_add(ticks30.ticks_ms(), -(1 << 29) - 10000)"
             if when.startswith("connected") else "")
    p = tmp_path / "wrap.py"
    p.write_text(WRAPPED.format(here=str(HERE), cfg=cfg, before=before, after=after))
    sub = Subscriber(mosquitto.host, mosquitto.port, "workshop/ann-w/status")
    try:
        out = micropython.run(p, timeout=30).stdout
        got = [(s["ip"], s["state"]) for s in statuses(sub)]
    finally:
        sub.close()
    assert "STATE 3" in out, out                                   # connected again
    assert got[:2] == [("127.0.0.1", "online"), ("127.0.0.2", "online")], got   # the new address at once
    will = got.index(("127.0.0.1", "offline"))    # the reconnect's close: the will has the old address
    assert ("127.0.0.2", "online") in got[will + 1:], got          # and back online with the new one


def test_a_dropped_link_is_not_published_as_address_0000(micropython, mosquitto, tmp_path):
    # On a Wi-Fi drop the station interface says 0.0.0.0: that is no new address, and a retained
    # status saying it would show the room 0.0.0.0 for the board until it reconnected.
    sub = Subscriber(mosquitto.host, mosquitto.port, "workshop/ann-1/status")
    try:
        p = script(tmp_path, mosquitto.host, mosquitto.port,
                   "wsconfig.serve(1500)\nips[0] = '0.0.0.0'\nwsconfig.serve(2500)\n"
                   "ips[0] = '127.0.0.2'\nwsconfig.serve(2500)\nannounce.stop()\nprint('stopped')")
        out = micropython.run(p, timeout=30).stdout
        assert "stopped" in out
        got = until_offline(sub)
        assert [s["ip"] for s in got if s["state"] == "online"][:2] == ["127.0.0.1", "127.0.0.2"]
        assert all(s["ip"] != "0.0.0.0" for s in got), got
    finally:
        sub.close()


def test_reconnects_with_backoff_after_the_broker_restarts(micropython, mosquitto, tmp_path):
    p = script(tmp_path, mosquitto.host, mosquitto.port, "print('up', flush=True) if 0 else print('up')\n"
               "wsconfig.serve(1500)\nprint('serving')\nwsconfig.serve(20000)", interval=30)
    proc = micropython.popen(p, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        mosquitto.restart(down_for=2.5)   # persistence off: the retained status is gone with it
        sub = Subscriber(mosquitto.host, mosquitto.port, "workshop/ann-1/status")
        try:
            got = sub.wait_for(1, timeout=12)
            assert got and json.loads(got[0].payload)["state"] == "online"
        finally:
            sub.close()
    finally:
        proc.kill()
        proc.communicate(timeout=5)


def test_two_boards_given_one_hostname_do_not_throw_each_other_off_the_broker(micropython, mosquitto, tmp_path):
    # A broker closes a connection when another arrives with its client id. With the id made of
    # the hostname alone, two boards provisioned with one name took turns (each close published
    # the other's "offline" will, each reconnect closed the other): a room flapping every second.
    sub = Subscriber(mosquitto.host, mosquitto.port, "workshop/ann-1/status")
    p = script(tmp_path, mosquitto.host, mosquitto.port, "wsconfig.serve(5000)", interval=30)
    boards = [micropython.popen(p, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    try:
        time.sleep(4.5)
        got = statuses(sub)
        assert len(got) >= 2 and all(m["state"] == "online" for m in got), got
    finally:
        sub.close()
        for b in boards:
            b.kill()
            b.communicate(timeout=5)


def test_broker_credentials_and_a_refusal_that_is_reported(micropython, tmp_path):
    passwd = require_tool("mosquitto_passwd", "mosquitto")
    pw = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pw), "board", "b0ard-pw"], check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\npersistence false\nuser root\n")
    broker = subprocess.Popen([require_tool("mosquitto", "mosquitto"), "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        from support import wait_for_port

        wait_for_port(port)
        body = "wsconfig.serve(2500)\nprint('STATE', announce._state, announce.last_error)"
        ok = micropython.run(script(tmp_path, "127.0.0.1", port, body, user="board", password="b0ard-pw")).stdout
        assert "STATE 3 None" in ok
        bad = micropython.run(script(tmp_path, "127.0.0.1", port, body, user="board", password="wrong")).stdout
        assert "broker refused: bad user or password" in bad
    finally:
        broker.kill()
        broker.wait()


def test_a_silent_broker_never_holds_the_repl(micropython, tmp_path):
    # Accepts TCP (the kernel's backlog) and never answers: CONNACK never comes.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    refused = free_port()
    body = """
worst = 0
for broker_down in (0, 1):
    for _ in range(60):
        t = time.ticks_us()
        announce._tick(None)
        worst = max(worst, time.ticks_diff(time.ticks_us(), t))
        time.sleep_ms(100)
    print('after', announce._state, announce._backoff, announce.last_error)
    cfg["mqtt"]["port"] = %d
    announce.start(cfg, ip=lambda: ips[0])
print('WORST_US', worst)
""" % refused
    out = micropython.run(script(tmp_path, "127.0.0.1", silent.getsockname()[1], body), timeout=60).stdout
    silent.close()
    lines = out.splitlines()
    assert any("no CONNACK" in ln for ln in lines), out           # gave up on the silent broker after 5 s
    assert any("refused" in ln and ln.startswith("after 0") for ln in lines), out
    worst = int(next(ln for ln in lines if ln.startswith("WORST_US")).split()[1])
    assert worst < 20_000, f"a tick took {worst} us"               # a few ms at most, even on a slow CI


def test_an_idle_connected_tick_allocates_nothing(micropython, mosquitto, tmp_path):
    # Four ticks a second for as long as the board runs: any allocation there is GC churn forever.
    body = """
import gc
wsconfig.serve(1500)
assert announce._state == 3, announce.last_error
announce._tick(None)
a = b = i = 0  # the globals exist before measuring: a new one can grow the module's dict
gc.collect()
gc.disable()
a = gc.mem_alloc()
while i < 2000:  # a counted while: a range() would be an allocation of its own
    announce._tick(None)
    i += 1
b = gc.mem_alloc()
gc.enable()
print('STATE', announce._state, 'ALLOC', b - a)
announce.stop()
"""
    out = micropython.run(script(tmp_path, mosquitto.host, mosquitto.port, body), timeout=30).stdout
    assert "STATE 3 ALLOC 0\n" in out, out  # bytes over 2,000 idle ticks


def test_a_config_without_a_broker_is_a_named_error(micropython, tmp_path):
    """announce reads mqtt.broker through wsconfig.broker(), as umqtt.simple does: a config
    without one, or with a hand-edited "mqtt" (or "announce") that is not an object, says what to
    set; so does a broker name that does not resolve (it said "[addrinfo error -2]", on an ESP32
    "-202", and nothing else)."""
    p = tmp_path / "nobroker.py"
    p.write_text("""
import announce
mqtt = {"broker": "127.0.0.1"}
for cfg in ({"hostname": "ann-1"}, {"hostname": "ann-1", "mqtt": "not-a-table"},
            {"hostname": "ann-1", "mqtt": mqtt, "announce": 30},
            {"hostname": "ann-1", "mqtt": {"broker": "no-such-broker.invalid"}}):
    try:
        announce.start(cfg)
    except (ValueError, OSError) as e:
        print("error:", e)
""")
    out = micropython.run(p, timeout=30, env={"WORKSHOP_CONFIG": "ws.json"}).stdout.splitlines()
    assert out[:3] == ["error: no MQTT broker: set mqtt.broker in ws.json",
                       "error: ws.json: \"mqtt\" must be an object, got 'not-a-table'",
                       "error: ws.json: \"announce\" must be an object, got 30"], out
    assert out[3].startswith("error: announce: cannot resolve mqtt.broker 'no-such-broker.invalid' (")
    assert out[3].endswith("): give its IP address") and len(out) == 4, out
