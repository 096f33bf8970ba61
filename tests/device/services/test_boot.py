"""Start-up (boot.py: `import workshop_boot`) with a good, a missing and a corrupt /workshop.json.
Wi-Fi is the scripted WLAN double (fake/network.py, no radio); telnet and mdns are real and
answer real clients afterwards; boot always gives way to the rest of boot.py / the REPL."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query

from support import free_port

HERE = Path(__file__).resolve().parent
BOOT = """
import sys
sys.path.append("%s")
import workshop_boot
print("REPL REACHED")
""" % (HERE / "fake")


def boot(mp, tmp_path, config, script="ok", extra=""):
    cfg = tmp_path / "workshop.json"
    if config is not None:
        cfg.write_text(config if isinstance(config, str) else json.dumps(config))
    env = {"WORKSHOP_CONFIG": str(cfg), "FAKE_PORT": "esp32", "FAKE_SCRIPT": script}
    return mp.run(BOOT + extra, env=env, timeout=30)



def boot_to_repl(micropython, shim: str, config: Path) -> tuple[subprocess.Popen, list[str]]:
    """Run the boot `shim` (an ESP8266's WLAN double) up to its "REPL REACHED"; the lines it printed."""
    env = micropython.environ({"WORKSHOP_CONFIG": str(config), "FAKE_PORT": "esp8266"})
    proc = subprocess.Popen(micropython.command("-c", shim), env=env, stdout=subprocess.PIPE, text=True, cwd=HERE)
    lines: list[str] = []
    while "REPL REACHED" not in lines:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            raise AssertionError(lines)
        lines.append(line.strip())
    return proc, lines


def test_missing_config_is_one_line_and_the_repl_is_reached(micropython, tmp_path):
    out = boot(micropython, tmp_path, None).stdout.splitlines()
    assert out == [f"workshop: no config at {tmp_path / 'workshop.json'}", "REPL REACHED"]


def test_corrupt_config_is_one_line_and_the_repl_is_reached(micropython, tmp_path):
    for bad in ('{"start": ["wifi"', "[1, 2]", "\x00\xff"):
        out = boot(micropython, tmp_path, bad).stdout.splitlines()
        assert len(out) == 2 and out[0].startswith("workshop: bad config") and out[1] == "REPL REACHED", out


def test_a_config_too_big_for_the_heap_is_one_line_and_boot_py_goes_on(micropython, tmp_path):
    """A corrupt file of brackets, or a config too big for an ESP8266's heap: json raises
    MemoryError, not ValueError. That is a bad config (one line), not a traceback that ends
    boot.py before its own lines after the hook."""
    cfg = tmp_path / "workshop.json"
    for bad in ("[" * 30000, json.dumps({"notes": ["x" * 60] * 2000, "start": ["wifi"]})):
        cfg.write_text(bad)
        out = micropython.run(BOOT, env={"WORKSHOP_CONFIG": str(cfg), "FAKE_PORT": "esp32"}, heapsize="96k",
                              timeout=30).stdout.splitlines()
        assert len(out) == 2 and out[0].startswith(f"workshop: bad config {cfg}: memory allocation failed"), out
        assert out[1] == "REPL REACHED"


def test_no_network_is_bounded_by_the_wifi_timeout(micropython, tmp_path):
    cfg = {"hostname": "ws-t", "wifi": {"ssid": "Gone", "password": "pw", "timeout_ms": 800},
           "telnet": {"password": "pw"}, "start": ["wifi", "mdns", "telnet", "ftp"]}
    t = time.monotonic()
    out = boot(micropython, tmp_path, cfg, script="silent", extra="import telnet; telnet.stop()").stdout.splitlines()
    assert time.monotonic() - t < 5
    assert out[0] == ("workshop: wifi not started: wifi: cannot connect to 'Gone': timeout after 800 ms"
                      " (still connecting: a wrong password, or a weak signal)")   # (the double is an ESP32)
    assert out[1] == "workshop: mdns not started: no network"
    assert out[2].startswith("telnet: listening on port 23") or "telnet not started" in out[2]
    assert out[-2:] == ["workshop: unknown service 'ftp' in \"start\"", "REPL REACHED"]


def test_good_config_starts_wifi_mdns_and_telnet(micropython, tmp_path):
    """Real services on loopback: the start-up module wires wifi's IP into mdns, and telnet takes
    its credentials from the file. Ports: telnet and mdns are on free ports via a tiny shim."""
    tport, mport = free_port(), free_port(socket.SOCK_DGRAM)
    cfg = {"hostname": "ws-good", "wifi": {"ssid": "Workshop", "password": "pw"},
           "telnet": {"user": "micro", "password": "pw2"}, "start": ["wifi", "mdns", "telnet"]}
    (tmp_path / "workshop.json").write_text(json.dumps(cfg))
    shim = f"""
import sys
sys.path.append("{HERE / 'fake'}")
import network
network.WLAN.ifconfig = lambda self: ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
import telnet, mdns
_ts, _ms = telnet.start, mdns.start
telnet.start = lambda **kw: _ts(port={tport}, host="127.0.0.1", **kw)
mdns.start = lambda *a, **kw: _ms(*a, port={mport}, **kw)
import workshop_boot
print("REPL REACHED")
import wsconfig
wsconfig.serve()
"""
    proc, lines = boot_to_repl(micropython, shim, tmp_path / "workshop.json")
    try:
        assert lines[0] == "workshop: wifi up, 127.0.0.1"
        assert lines[1] == "mdns: ws-good.local -> 127.0.0.1"
        q = dns.message.make_query("ws-good._telnet._tcp.local.", "SRV")
        r = dns.query.udp(q, "127.0.0.1", port=mport, timeout=2)
        assert [str(x) for x in r.answer[0]] == ["0 0 23 ws-good.local."]
        with socket.create_connection(("127.0.0.1", tport), timeout=5) as s:
            data = b""
            s.sendall(b"micro\r\npw2\r\n")
            while b">>> " not in data:
                d = s.recv(1024)
                assert d, data
                data += d
            assert b"Logged in" in data
    finally:
        proc.kill()
        proc.wait()


def test_a_section_that_is_not_an_object_is_a_named_error(micropython, tmp_path):
    # A hand-edited config ("wifi": "Workshop") names the key, not "'str' object has no attribute 'get'".
    cfg = {"wifi": "Workshop", "telnet": ["micro"], "start": ["wifi", "telnet"]}
    out = boot(micropython, tmp_path, cfg).stdout.splitlines()
    path = tmp_path / "workshop.json"
    assert out == [f"workshop: wifi not started: {path}: \"wifi\" must be an object, got 'Workshop'",
                   f"workshop: telnet not started: {path}: \"telnet\" must be an object, got ['micro']",
                   "REPL REACHED"]


def test_ctrl_c_during_the_wi_fi_wait_reaches_the_repl_with_no_attempt_left_running(micropython, tmp_path):
    """Ctrl-C while boot waits for a Wi-Fi that does not answer: one line, the rest of boot.py and
    the REPL at once, and the station is not left retrying in the background (it was: an ESP32
    retries for ever, unseen, with the password that just failed)."""
    import signal

    cfg = tmp_path / "workshop.json"
    cfg.write_text(json.dumps({"hostname": "ws-c", "wifi": {"ssid": "Gone", "password": "pw", "timeout_ms": 15000},
                               "start": ["wifi", "mdns"]}))
    code = "print('BOOT')\n" + BOOT + "import network\nprint('STATION', network.WLAN().status(), network.calls[-1])\n"
    env = micropython.environ({"WORKSHOP_CONFIG": str(cfg), "FAKE_PORT": "esp32", "FAKE_SCRIPT": "silent"})
    proc = subprocess.Popen(micropython.command("-c", code), env=env, stdout=subprocess.PIPE, text=True, cwd=HERE)
    try:
        assert proc.stdout.readline() == "BOOT\n"
        time.sleep(1)
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=10)[0].splitlines()
        assert time.monotonic() - t < 2
    finally:
        proc.kill()
        proc.wait()
    assert out == ["workshop: start-up interrupted", "REPL REACHED", "STATION 1000 ('disconnect',)"], out


def test_a_telnet_that_did_not_start_is_announced_as_none(micropython, mosquitto, tmp_path):
    """The room's status says "telnet": null for a board without telnet, and fleet names that
    ("without telnet") instead of trying it. A telnet listed in "start" that failed to start (no
    password, its port taken) was announced with port 23 all the same: fleet got a refused
    connection."""
    import sys as _sys

    _sys.path.insert(0, str(HERE.parent / "clients"))
    from clienttools import Subscriber

    cfg = {"hostname": "ws-nt", "wifi": {"ssid": "Workshop", "password": "pw"}, "telnet": {"user": "micro"},
           "mqtt": {"broker": mosquitto.host, "port": mosquitto.port}, "start": ["wifi", "telnet", "announce"]}
    sub = Subscriber(mosquitto.host, mosquitto.port, "workshop/ws-nt/status")
    try:
        out = boot(micropython, tmp_path, cfg, extra="import wsconfig, announce\nwsconfig.serve(1500)\n"
                   "announce.stop()\n").stdout.splitlines()
        assert out[1] == ("workshop: telnet not started: telnet: a password is required "
                          "(telnet.start(password=...) or /workshop.json)"), out
        got = [json.loads(m.payload) for m in sub.wait_for(1, timeout=5)]
        assert got and got[0]["state"] == "online" and got[0]["telnet"] is None, got
    finally:
        sub.close()


def test_a_telnet_that_did_not_start_is_not_advertised_over_mdns(micropython, tmp_path):
    """mdns advertised _telnet._tcp as soon as "telnet" was listed, before telnet tried to start:
    a telnet that then failed (no password, its port taken) was still offered to every browser."""
    import dns.exception

    mport = free_port(socket.SOCK_DGRAM)
    cfg = {"hostname": "ws-nt", "wifi": {"ssid": "Workshop", "password": "pw"}, "telnet": {"user": "micro"},
           "start": ["wifi", "mdns", "telnet"]}
    (tmp_path / "workshop.json").write_text(json.dumps(cfg))
    shim = f"""
import sys
sys.path.append("{HERE / 'fake'}")
import network
network.WLAN.ifconfig = lambda self: ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
import mdns
_ms = mdns.start
mdns.start = lambda *a, **kw: _ms(*a, port={mport}, **kw)
import workshop_boot
print("REPL REACHED")
import wsconfig
wsconfig.serve()
"""
    proc, lines = boot_to_repl(micropython, shim, tmp_path / "workshop.json")
    try:
        assert lines[2].startswith("workshop: telnet not started: telnet: a password is required"), lines
        q = dns.message.make_query("ws-nt.local.", "A")   # mdns answers...
        assert dns.query.udp(q, "127.0.0.1", port=mport, timeout=2).answer
        q = dns.message.make_query("ws-nt._telnet._tcp.local.", "SRV")
        try:
            r = dns.query.udp(q, "127.0.0.1", port=mport, timeout=1)
            answer = [str(x) for a in r.answer for x in a]
        except dns.exception.Timeout:   # a name it does not serve gets no answer at all
            answer = []
        assert answer == [], answer     # ...but offers no telnet
    finally:
        proc.kill()
        proc.wait()
