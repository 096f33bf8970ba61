"""./kit broker: the generated configuration, and the real mosquitto it runs (loopback only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from support import free_port, require_tool, wait_for_port
from workshop import broker

REPO = Path(__file__).resolve().parents[3]


def test_plan_anonymous_and_with_a_password_file(tmp_path):
    p = broker.plan("127.0.0.1", 1884, None, tmp_path / "b")
    assert "listener 1884 127.0.0.1\n" in p.config_text and "allow_anonymous true\n" in p.config_text
    assert f"persistence_location {tmp_path / 'b'}/\n" in p.config_text
    assert p.argv("mosquitto") == ["mosquitto", "-c", str(tmp_path / "b" / "mosquitto.conf")]
    pw = tmp_path / "passwd"
    pw.write_text("")
    p = broker.plan("0.0.0.0", 1883, pw, tmp_path / "b")
    assert "allow_anonymous false\n" in p.config_text and f"password_file {pw}\n" in p.config_text
    with pytest.raises(broker.BrokerError, match="no such file"):
        broker.plan(password_file=tmp_path / "missing")


def test_a_bind_address_that_cannot_be_listened_on_is_refused_before_mosquitto(tmp_path):
    with pytest.raises(broker.BrokerError, match=r"^--bind 'bad_host!': not an address or host name this machine"):
        broker.plan("bad_host!", 18830, directory=tmp_path / "b")
    with pytest.raises(broker.BrokerError, match=r"^--bind 192.0.2.77: not an address of this machine"):
        broker.check_port_free("192.0.2.77", 18830)           # (TEST-NET-1: on no machine)
    assert not (tmp_path / "b").exists()


def test_each_listener_has_its_own_persistence_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    a, b, c = broker.plan("0.0.0.0", 18830), broker.plan("0.0.0.0", 18831), broker.plan("::", 1883)
    assert len({a.directory, b.directory, c.directory}) == 3
    assert a.directory.parent == b.directory.parent and b.directory.name == "0.0.0.0-18831"
    assert f"persistence_location {b.directory}/\n" in b.config_text and c.directory.name == "__-1883"


def connect(port: int, user: str | None, password: str | None) -> str:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    result: list[str] = []
    c.on_connect = lambda c, u, f, rc, p=None: result.append(str(rc))
    if user:
        c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not result and time.monotonic() < deadline:
        time.sleep(0.02)
    c.loop_stop()
    c.disconnect()
    return result[0] if result else "no answer"


def start_kit(port: int, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invoke", "broker", "--bind", "127.0.0.1", "--port", str(port), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_broker_with_a_password_file_refuses_a_wrong_password_and_stops_on_ctrl_c(tmp_path):
    passwd = require_tool("mosquitto_passwd", "mosquitto")
    pw = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(pw), "micro", "s3cret"], check=True, capture_output=True)
    port = free_port()
    env = dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "cache"))
    proc = start_kit(port, "--password-file", str(pw), env=env)
    try:
        wait_for_port(port)
        assert connect(port, "micro", "s3cret") == "Success"
        assert connect(port, "micro", "wrong") == "Not authorized"
        assert connect(port, None, None) == "Not authorized"
        assert (tmp_path / "cache" / "broker" / f"127.0.0.1-{port}" / "mosquitto.conf").is_file()
    finally:
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and time.monotonic() - t < 3, err
    assert f"--mqtt 127.0.0.1:{port}" in out and "broker stopped" in out
    # Piped, lines are not wrapped at 80 columns: the commands to copy stay whole.
    assert f"  boards: ./kit provision --mqtt 127.0.0.1:{port} ...   roster: ./kit roster --mqtt 127.0.0.1:{port}\n" in out
    assert any(line.startswith(f"MQTT broker on 127.0.0.1:{port} ") and "persistence in /" in line
               for line in out.splitlines()), out
    with pytest.raises(OSError):
        wait_for_port(port, timeout=0.5)


def test_anonymous_broker_keeps_retained_messages_across_a_restart(tmp_path):
    port = free_port()
    env = dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "cache"))
    proc = start_kit(port, env=env)
    wait_for_port(port)
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish("workshop/lab-01/status", b'{"state": "online"}', retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    proc = start_kit(port, env=env)
    try:
        wait_for_port(port)
        assert retained_now(port, 5, until_any=True) == [b'{"state": "online"}']
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_missing_mosquitto_is_one_line_from_the_task(monkeypatch, capsys):
    import invoke

    sys.path.insert(0, str(REPO))
    import tasks

    monkeypatch.setattr(broker.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker, "SBIN", ())
    with pytest.raises(invoke.Exit) as e:
        tasks.broker(invoke.Context(), bind="127.0.0.1", port=free_port())
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {broker.INSTALL_HINT}"]


def test_missing_mosquitto_error(monkeypatch):
    monkeypatch.setattr(broker.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker, "SBIN", (Path("/nonexistent"),))
    with pytest.raises(broker.BrokerError) as e:
        broker.mosquitto_binary()
    assert str(e.value) == broker.INSTALL_HINT


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_broker_ended_by_sigterm_or_sighup_stops_mosquitto_too(tmp_path, sig):
    """A closed terminal (SIGHUP) or `kill` (SIGTERM) must not leave mosquitto running in its own session."""
    require_tool("mosquitto", "mosquitto")
    port = free_port()
    proc = start_kit(port, env=dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "cache")))
    try:
        wait_for_port(port)
    finally:
        t = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    left = _processes_mentioning(tmp_path)
    for pid in left:                      # a failing run must not leave a broker behind either
        os.kill(pid, signal.SIGKILL)
    assert not left, "mosquitto outlived ./kit broker"
    assert time.monotonic() - t < 3 and "broker stopped" in out, out + err
    assert "Traceback" not in err, err
    with pytest.raises(OSError):
        wait_for_port(port, timeout=0.5)


def _processes_mentioning(path: Path) -> list[int]:
    """Live processes whose command line names `path` (the broker's config is in the test's folder)."""
    time.sleep(0.3)
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().split(") ")[-1][:1]
            except OSError:
                continue
            if str(path) in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


def retained_now(port: int, seconds: float = 1.0, *, until_any: bool = False) -> list[bytes]:
    """The statuses a new subscriber gets within `seconds` (until_any: from the first on)."""
    got: list[bytes] = []
    s = paho.Client(paho.CallbackAPIVersion.VERSION2)
    s.on_message = lambda c, u, m: got.append(m.payload)
    s.connect("127.0.0.1", port)
    s.subscribe("workshop/+/status")
    s.loop_start()
    deadline = time.monotonic() + seconds
    while not (until_any and got) and time.monotonic() < deadline:
        time.sleep(0.05)
    s.loop_stop()
    s.disconnect()
    return got


def publish(port: int, topic: str, payload: bytes) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_a_broker_on_another_port_neither_shows_nor_saves_over_another_rooms_statuses(tmp_path):
    """All listeners once shared one persistence file: room B showed room A's boards as retained,
    and saved over A's file on exit."""
    env = dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "cache"))
    room_a, room_b = free_port(), free_port()
    for port, topic in ((room_a, "workshop/a-01/status"), (room_b, "workshop/b-01/status")):
        proc = start_kit(port, env=env)
        try:
            wait_for_port(port)
            assert retained_now(port) == []                 # B starts empty: A's statuses are A's
            publish(port, topic, b'{"state": "online"}')
        finally:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=10)
    proc = start_kit(room_a, env=env)
    try:
        wait_for_port(room_a)
        assert retained_now(room_a) == [b'{"state": "online"}']     # a-01 only: B did not save over A
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)


def test_a_port_another_broker_holds_is_refused_not_reported_up(mosquitto, tmp_path):
    """The readiness probe once reached the other broker: 'MQTT broker on ...' then 'Address already in use'."""
    proc = start_kit(mosquitto.port, env=dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "cache")))
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 1, out + err
    assert "MQTT broker on" not in out and "Ctrl-C stops it" not in out
    assert err.strip().splitlines() == [f"error: port {mosquitto.port} on 127.0.0.1 is already in use (another broker? "
                                        f"'ss -ltnp sport = :{mosquitto.port}' names it): stop it, or choose another --port"]
    assert connect(mosquitto.port, None, None) == "Success"           # the other broker is left alone


def test_readiness_is_our_mosquittos_own_word(tmp_path, monkeypatch):
    """Past the port check (a race), a connection alone is not readiness: ours must say it runs."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    monkeypatch.setattr(broker, "check_port_free", lambda bind, port: None)
    b = broker.Broker(broker.plan("127.0.0.1", port, None, tmp_path / "b"))
    try:
        with pytest.raises(broker.BrokerError, match="Address already in use"):
            b.start()
    finally:
        b.stop()
        taken.close()


def test_a_client_id_that_looks_like_markup_neither_stops_the_log_nor_the_broker(tmp_path):
    """mosquitto logs each client id; the kit printed its lines as rich markup, so a client named
    "[/]x" raised MarkupError in the thread that reads mosquitto's output. The thread died, the
    pipe was never read again, and once it was full mosquitto blocked: the room's broker hung.
    Lines are printed as text, and no callback's exception ends the reader."""
    port = free_port()
    proc = start_kit(port, env=dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "cache"), COLUMNS="200"))
    try:
        wait_for_port(port)
        for client_id in ("[/]x", "[bold]y", "after-the-odd-ones"):
            c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
            c.connect("127.0.0.1", port)
            c.loop_start()
            c.publish("workshop/t", b"1", qos=1).wait_for_publish(5)
            c.loop_stop()
            c.disconnect()
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert "MarkupError" not in err and "Traceback" not in err, err
    assert proc.returncode == 0, err
    for client_id in ("[/]x", "[bold]y", "after-the-odd-ones"):
        assert f" as {client_id} " in out, out


def test_a_log_callback_that_raises_does_not_stop_the_reader(tmp_path, monkeypatch):
    """Library side: an on_line that raises once loses that line only; mosquitto's later lines
    still come (its pipe is read on), and it still answers."""
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    seen: list[str] = []

    def on_line(line: str) -> None:
        seen.append(line)
        if len(seen) == 1:
            raise ValueError("a renderer's bug")

    port = free_port()
    running = broker.Broker(broker.plan("127.0.0.1", port), on_line=on_line).start()
    try:
        assert connect(port, None, None) == "Success"
        deadline = time.monotonic() + 5
        while not any("New client connected" in line for line in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        running.stop()
    assert len(seen) > 1 and any("New client connected" in line for line in seen), seen


def test_a_broker_on_every_interface_of_a_machine_without_a_lan_address_advises_no_loopback(monkeypatch, tmp_path):
    """It advised `provision --mqtt 127.0.0.1`: on a board that is its own loopback, never the broker."""
    monkeypatch.setattr(broker, "lan_addresses", lambda: [])
    assert broker.provision_addresses(broker.plan("0.0.0.0", 1883, None, tmp_path / "b")) == []
    monkeypatch.setattr(broker, "lan_addresses", lambda: ["10.0.0.2"])
    assert broker.provision_addresses(broker.plan("0.0.0.0", 1884, None, tmp_path / "b")) == ["10.0.0.2:1884"]
    assert broker.provision_addresses(broker.plan("127.0.0.1", 1883, None, tmp_path / "b")) == ["127.0.0.1"]
    # ... which only this machine reaches: the task says so (boards on Wi-Fi need --bind 0.0.0.0).
    assert broker.loopback_only(broker.plan("127.0.0.1", 1883, None, tmp_path / "b"))
    assert not broker.loopback_only(broker.plan("0.0.0.0", 1883, None, tmp_path / "b"))
