"""The room on loopback: boards (unix MicroPython running workshop_boot) announce themselves to a
real mosquitto; the roster reads retained statuses, last wills, build identities and mDNS."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from workshop import roster
from workshop.buildinfo import read_build_info

REPO = Path(__file__).resolve().parents[3]
FIELDS = {"hostname", "ip", "board", "micropython", "inputs", "project", "heap_free", "rssi", "uptime_s", "state"}


def retained(broker, seconds: float = 1.0) -> dict[str, tuple[dict, bool]]:
    """A fresh paho subscriber: the first message per topic (what the broker holds, if retained)."""
    got: dict[str, tuple[dict, bool]] = {}
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.on_message = lambda c, u, m: got.setdefault(m.topic, (json.loads(m.payload), m.retain))
    c.connect(broker.host, broker.port)
    c.subscribe("workshop/+/status")
    c.loop_start()
    time.sleep(seconds)
    c.loop_stop()
    c.disconnect()
    return got


def wait_rows(room: roster.Roster, pred, timeout: float = 10.0) -> list[roster.Row]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = room.rows()
        if pred({r.hostname: r for r in rows}):
            return rows
        time.sleep(0.1)
    raise AssertionError(f"roster never got there: {[r.to_json() for r in room.rows()]}")


def test_statuses_are_retained_and_a_killed_board_goes_offline_then_comes_back_current(room):
    current = read_build_info(REPO / "dist" / "UNIX", verify=False).inputs_sha256
    old = room("lab-01", "pypi", identity={"board": "UNIX", "inputs": "0" * 64, "project": "0.0.9"})
    new = room("lab-02", "frozen")
    broker = room.broker
    time.sleep(1.5)
    got = retained(broker)
    assert set(got) == {"workshop/lab-01/status", "workshop/lab-02/status"}
    for topic, (doc, was_retained) in got.items():
        assert was_retained, topic
        assert FIELDS <= set(doc) and doc["state"] == "online", (topic, doc)
        assert doc["ip"] == "127.0.0.1" and doc["rssi"] is None and doc["heap_free"] > 0
    assert got["workshop/lab-02/status"][0]["inputs"] == current
    assert got["workshop/lab-02/status"][0]["board"] == "UNIX"

    room_ = roster.Roster(roster.expected_from_dist(REPO))
    with roster.RoomWatcher(room_, (broker.host, broker.port), mdns=False):
        rows = wait_rows(room_, lambda r: {"lab-01", "lab-02"} <= set(r))
        by = {r.hostname: r for r in rows}
        assert by["lab-01"].outdated is True and by["lab-02"].outdated is False
        assert by["lab-01"].telnet == old.telnet_port and by["lab-01"].project == "0.0.9"
        old.kill()
        wait_rows(room_, lambda r: r["lab-01"].state == "offline")
        assert {r.hostname: r.state for r in room_.rows()}["lab-02"] == "online"
        # Reflashed with the current build (the frozen firmware): back, no longer outdated.
        old.start(room.frozen(), identity=None)
        rows = wait_rows(room_, lambda r: r["lab-01"].state == "online" and r["lab-01"].outdated is False)
    # The will is retained too: a roster started later still sees a killed board as offline.
    new.kill()
    time.sleep(0.5)
    assert retained(broker)["workshop/lab-02/status"][0]["state"] == "offline"


def test_a_board_that_stops_answering_turns_stale(room):
    b = room("lab-03", "pypi", interval_s=1)
    r = roster.Roster(None)
    with roster.RoomWatcher(r, (room.broker.host, room.broker.port), mdns=False):
        wait_rows(r, lambda rows: "lab-03" in rows and rows["lab-03"].state == "online")
        b.pause()  # hung: the TCP connection stays, no status, no will yet
        try:
            wait_rows(r, lambda rows: rows["lab-03"].state == "stale", timeout=6)
        finally:
            b.resume()
        wait_rows(r, lambda rows: rows["lab-03"].state == "online", timeout=6)


def publish_retained(broker, topic: str, payload: bytes) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.connect(broker.host, broker.port)
    c.loop_start()
    c.publish(topic, payload, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def test_roster_json_skips_malformed_statuses_with_warnings(room):
    room("lab-04", "pypi")
    broker = room.broker
    bad = {"workshop/garbage/status": b"\xff\xfenot json", "workshop/list/status": b"[1, 2]",
           "workshop/nostate/status": b'{"hostname": "nostate"}',
           "workshop/liar/status": b'{"hostname": "someone-else", "state": "online"}',
           "workshop/odd/status": b'{"state": "online", "heap_free": "lots", "ip": 7}'}
    for topic, payload in bad.items():
        publish_retained(broker, topic, payload)
    time.sleep(1.2)
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{broker.host}:{broker.port}",
                           "--no-mdns", "--json", "--wait", "1.5"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    names = {b["hostname"]: b for b in doc["boards"]}
    assert set(names) == {"lab-04", "odd"}
    assert names["odd"]["heap_free"] is None and names["odd"]["ip"] is None
    assert names["lab-04"]["state"] == "online" and names["lab-04"]["outdated"] is None  # PyPI runtime: no identity
    for topic in ("garbage", "list", "nostate", "liar"):
        assert any(f"workshop/{topic}/status" in w for w in doc["warnings"]), doc["warnings"]
    assert "workshop/garbage/status" in proc.stderr  # warnings go to stderr too, never into the JSON stream


def test_roster_joins_the_registry_by_hostname(room):
    room("lab-05", "pypi")
    registry = {"lab-05": {"mac": "24:6f:28:aa:bb:cc", "sticker": "blue-7"}}
    r = roster.Roster(None, registry.get)
    with roster.RoomWatcher(r, (room.broker.host, room.broker.port), mdns=False):
        rows = wait_rows(r, lambda rows: "lab-05" in rows)
    row = {x.hostname: x for x in rows}["lab-05"]
    assert (row.sticker, row.mac) == ("blue-7", "24:6f:28:aa:bb:cc")


def test_mdns_fills_in_a_board_that_cannot_reach_the_broker(room):
    from support import free_port

    closed = free_port()  # nothing listens there: announce keeps backing off, mDNS still answers
    room("lab-06", "pypi", start=("wifi", "mdns", "telnet", "announce"),
         identity={"board": "UNIX", "inputs": "ab" * 32, "project": "0.1.0"})
    b = room.__self__ if hasattr(room, "__self__") else None  # noqa: F841
    r = roster.Roster(None)
    # the broker is the room's, but this board was configured with a dead port
    with roster.RoomWatcher(r, None, mdns=True, interfaces=["127.0.0.1"]):
        rows = wait_rows(r, lambda rows: "lab-06" in rows, timeout=8)
    row = {x.hostname: x for x in rows}["lab-06"]
    assert row.sources == ("mdns",) and row.board == "UNIX" and row.inputs == "ab" * 32
    assert row.state == "online" and row.ip == "127.0.0.1"
    assert closed


def test_roster_table_keeps_hostnames_whole_on_a_narrow_terminal(room):
    import os

    room("classroom-lab-board-0042", "pypi")
    time.sleep(1.2)
    env = dict(os.environ, COLUMNS="70")
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                           "--no-mdns", "--wait", "1"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "classroom-lab-board-0042" in proc.stdout and "127.0.0.1" in proc.stdout and "online" in proc.stdout


def test_roster_watch_shows_a_live_table_and_ends_on_ctrl_c(room):
    import signal

    room("lab-07", "pypi")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                             "--no-mdns", "--watch"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t < 2 and proc.returncode == 0, err
    assert "lab-07" in out and "online" in out


def test_invoke_roster_joins_the_station_registry(room, tmp_path):
    from workshop.registry import Registry

    db = tmp_path / "class.db"
    reg = Registry(db)
    reg.see("24:6f:28:aa:bb:07", chip="esp32")
    reg.record_provision("24:6f:28:aa:bb:07", ok=True, hostname="lab-07")
    sticker = reg.get("24:6f:28:aa:bb:07").sticker
    room("lab-07", "pypi")
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                           "--no-mdns", "--registry", str(db), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    row = next(b for b in json.loads(proc.stdout)["boards"] if b["hostname"] == "lab-07")
    assert (row["sticker"], row["mac"]) == (str(sticker), "24:6f:28:aa:bb:07")
    table = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                            "--no-mdns", "--registry", str(db)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    assert f"{sticker} 24:6f:28:aa:bb:07" in table.stdout


def test_an_unreachable_broker_is_one_clear_line(tmp_path):
    from support import free_port

    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"127.0.0.1:{free_port()}", "--no-mdns"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    line = proc.stderr.strip()
    assert line.startswith("error: cannot reach the MQTT broker at 127.0.0.1:") and "./kit broker" in line


@pytest.mark.parametrize("mode", ["--watch", "--serve"])
def test_roster_watch_or_serve_with_json_prints_json_lines_not_tables(room, mode):
    """--json means JSON on stdout also while watching (or serving): one report per line, a new one on each change."""
    import signal

    from support import free_port

    room("lab-08", "pypi")
    args = ["--watch"] if mode == "--watch" else ["--serve", f"127.0.0.1:{free_port()}"]
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                             "--no-mdns", "--wait", "1", "--json", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines, err
    reports = [json.loads(line) for line in lines]              # every line is a report: no table
    assert any(b["hostname"] == "lab-08" and b["state"] == "online" for b in reports[-1]["boards"])


def test_a_status_that_looks_like_markup_is_a_warning_and_the_roster_keeps_listening(room):
    """`[/b]` in a retained status once made rich raise in paho's thread: its loop ended, every
    later message was lost (roster, --watch, /room, fleet --all), for as long as the broker kept it."""
    broker = room.broker
    publish_retained(broker, "workshop/lab-00/status", b'{"state": "online", "hostname": "[/b]"}')
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{broker.host}:{broker.port}",
                             "--no-mdns", "--json", "--wait", "3"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)      # the roster has the bad retained message by now; a board speaks after it
    publish_retained(broker, "workshop/lab-01/status", b'{"state": "online", "hostname": "lab-01", "ip": "10.0.0.9"}')
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "MarkupError" not in err, err
    assert "says hostname '[/b]'" in err                      # the warning as text, brackets and all
    doc = json.loads(out)
    assert [b["hostname"] for b in doc["boards"]] == ["lab-01"]
    assert any("'[/b]'" in w for w in doc["warnings"]), doc["warnings"]


def test_a_failing_warning_printer_does_not_end_the_watch(mosquitto):
    """Whatever on_warning does, the watcher's callbacks never let an exception out into paho's loop."""
    def printer(message: str) -> None:
        raise RuntimeError("the terminal is gone")

    r = roster.Roster(None, on_warning=printer)
    with roster.RoomWatcher(r, (mosquitto.host, mosquitto.port), mdns=False) as w:
        assert w.subscribed.wait(5)
        publish_retained(mosquitto, "workshop/bad/status", b"{")
        publish_retained(mosquitto, "workshop/lab-02/status", b'{"state": "online"}')
        rows = wait_rows(r, lambda rows: "lab-02" in rows)
    assert [x.hostname for x in rows] == ["lab-02"] and "not a JSON status" in r.warnings[0]


def test_junk_on_the_broker_keeps_one_warning_per_topic_and_a_bounded_report(mosquitto):
    """5000 junk messages once grew the warnings (and /room.json) without limit: now one per topic
    (the latest), at most roster.MAX_WARNINGS, and a repeat is printed once."""
    printed: list[str] = []
    r = roster.Roster(None, on_warning=printed.append)
    with roster.RoomWatcher(r, (mosquitto.host, mosquitto.port), mdns=False) as w:
        assert w.subscribed.wait(5)
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.connect(mosquitto.host, mosquitto.port)
        c.loop_start()
        for i in range(4000):                                   # 400 topics, 10 junk messages each
            c.publish(f"workshop/junk-{i % 400}/status", json.dumps({"state": f"s{i}"}).encode())
        for _ in range(1000):                                   # one topic, the same junk again and again
            c.publish("workshop/again/status", b"not json")
        c.publish("workshop/lab-09/status", b'{"state": "online"}').wait_for_publish(10)
        c.loop_stop()
        c.disconnect()
        wait_rows(r, lambda rows: "lab-09" in rows, timeout=20)
    warnings = r.warnings
    assert len(warnings) == roster.MAX_WARNINGS and r.warnings_dropped > 0
    assert warnings[-1].startswith("workshop/again/status: not a JSON status")     # the newest kept
    assert len({w.split(":")[0] for w in warnings}) == len(warnings)                 # one per topic
    assert sum(p.startswith("workshop/again/status") for p in printed) == 1          # a repeat is not printed again
    assert "'s3999'" in next(w for w in warnings if w.startswith("workshop/junk-399/"))  # the latest of its topic
    assert len(json.dumps(r.report())) < 30_000


def test_two_boards_with_one_hostname_are_named_in_a_warning(mosquitto):
    """Two boards provisioned as lab-10 share its topic: the row flaps between them; the roster says so."""
    import threading

    stop = threading.Event()

    def two_boards() -> None:
        c = paho.Client(paho.CallbackAPIVersion.VERSION2)
        c.connect(mosquitto.host, mosquitto.port)
        c.loop_start()
        while not stop.is_set():
            for mac, ip in (("24:6f:28:00:10:01", "10.0.0.31"), ("24:6f:28:00:10:02", "10.0.0.32")):
                c.publish("workshop/lab-10/status", json.dumps({"state": "online", "hostname": "lab-10", "mac": mac,
                                                                 "ip": ip, "interval_s": 1}), retain=True)
                time.sleep(0.2)
        c.loop_stop()
        c.disconnect()

    t = threading.Thread(target=two_boards)
    t.start()
    try:
        proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{mosquitto.host}:{mosquitto.port}",
                               "--no-mdns", "--json", "--wait", "2"], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
    finally:
        stop.set()
        t.join()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [b["hostname"] for b in doc["boards"]] == ["lab-10"]
    twins = [w for w in doc["warnings"] if "two boards say they are lab-10" in w]
    assert len(twins) == 1 and "MAC 24:6f:28:00:10:01 at 10.0.0.31" in twins[0] and "10.0.0.32" in twins[0]
    assert proc.stderr.count("two boards say they are lab-10") == 1, proc.stderr


def test_the_registry_is_joined_by_the_mac_a_status_reports(mosquitto, tmp_path):
    """A status whose MAC is not the registry's MAC for that hostname once showed the other board's
    sticker silently: now its own MAC's record (or none), and a warning."""
    from workshop.registry import Registry

    db = tmp_path / "class.db"
    reg = Registry(db)
    for mac, host in (("24:6f:28:00:11:01", "lab-11"), ("24:6f:28:00:11:02", "lab-12")):
        reg.see(mac, chip="esp32")
        reg.record_provision(mac, ok=True, hostname=host)
    s1, s2 = reg.get("24:6f:28:00:11:01").sticker, reg.get("24:6f:28:00:11:02").sticker
    statuses = {"lab-11": "24:6F:28:00:11:02",      # the board with lab-12's MAC now says it is lab-11
                "lab-12": "24:6f:28:00:11:02",      # itself: joined as before
                "lab-13": "24:6f:28:00:11:03"}      # a MAC the registry does not know, a hostname it does not know
    for host, mac in statuses.items():
        publish_retained(mosquitto, f"workshop/{host}/status", json.dumps({"state": "online", "mac": mac}).encode())
    publish_retained(mosquitto, "workshop/lab-14/status", b'{"state": "online"}')   # no MAC: by hostname
    reg.see("24:6f:28:00:11:04", chip="esp32")
    reg.record_provision("24:6f:28:00:11:04", ok=True, hostname="lab-14")
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{mosquitto.host}:{mosquitto.port}",
                           "--no-mdns", "--registry", str(db), "--json", "--wait", "1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    by = {b["hostname"]: b for b in doc["boards"]}
    assert (by["lab-11"]["sticker"], by["lab-11"]["mac"]) == (str(s2), "24:6F:28:00:11:02")
    assert by["lab-12"]["sticker"] == str(s2) and by["lab-13"]["sticker"] is None
    assert by["lab-14"]["sticker"] == str(reg.get("24:6f:28:00:11:04").sticker)
    [warning] = [w for w in doc["warnings"] if w.startswith("lab-11:")]
    assert "MAC 24:6F:28:00:11:02" in warning and f"MAC 24:6f:28:00:11:01, sticker {s1}" in warning
    assert f"its own MAC's sticker {s2}" in warning
    assert not any(w.startswith(("lab-12:", "lab-13:", "lab-14:")) for w in doc["warnings"]), doc["warnings"]


def mdns_peer(hostname: str, ttl: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "mdns_peer.py"), hostname, str(ttl)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "registered"
    return proc


def test_with_mdns_alone_a_board_that_says_goodbye_goes_offline_and_a_silent_one_turns_stale():
    """serve --room and roster without --mqtt: boards found over mDNS once never left the room."""
    leaving, cut = mdns_peer("zc-01", 3), mdns_peer("zc-02", 3)
    try:
        r = roster.Roster(None)
        with roster.RoomWatcher(r, None, mdns=True, interfaces=["127.0.0.1"], mdns_check=0.5) as watcher:
            wait_rows(r, lambda rows: {"zc-01", "zc-02"} <= set(rows) and rows["zc-02"].state == "online")
            time.sleep(4)                                   # > the TTL: answering boards stay online
            assert {x.hostname: x.state for x in r.rows()} == {"zc-01": "online", "zc-02": "online"}
            leaving.communicate("bye\n", timeout=10)        # goodbye packets
            wait_rows(r, lambda rows: rows["zc-01"].state == "offline", timeout=5)
            cut.kill()                                      # power cut: no goodbye, no more answers
            wait_rows(r, lambda rows: rows["zc-02"].state == "stale", timeout=8)
            # Neither is asked about for ever: the one that left at once, the silent one once its
            # records are gone (the browser adds a board again when it answers).
            deadline = time.monotonic() + 8
            while watcher._services and time.monotonic() < deadline:
                time.sleep(0.2)
            assert watcher._services == {}
    finally:
        for p in (leaving, cut):
            p.kill()
            p.wait()


def test_roster_watch_over_mdns_alone_reports_a_board_leaving():
    import signal

    peer = mdns_peer("zc-03", 120)
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "roster", "--interface", "127.0.0.1", "--wait", "2",
                             "--watch", "--json"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(4)
        peer.communicate("bye\n", timeout=10)
        time.sleep(2)
    finally:
        peer.kill()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    states = [{b["hostname"]: b["state"] for b in json.loads(line)["boards"]} for line in out.splitlines() if line]
    assert states and states[0].get("zc-03") == "online", (out, err)
    assert states[-1]["zc-03"] == "offline", (out, err)


def test_roster_watch_on_a_100_column_terminal_cuts_no_column(room):
    """The live table once drew firmware and last seen zero-wide and pushed state off the edge."""
    from support import Terminal

    room("classroom-lab-board-0042", "pypi")
    term = Terminal([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                     "--no-mdns", "--watch"], 100, cwd=REPO)
    try:
        term.read(4)
        term.interrupt()
        term.read(30)
    finally:
        term.close()
    text = term.text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    for header in ("hostname", "firmware", "last seen", "state"):
        assert header in text, (header, text[-3000:])
    assert "classroom-lab-board-0042" in text and "online" in text and "…" not in text


def test_an_empty_retained_message_clears_the_board_from_the_roster(mosquitto):
    """Clearing a status the MQTT way (an empty retained message) once left the row and warned
    'not a JSON status'."""
    r = roster.Roster(None)
    with roster.RoomWatcher(r, (mosquitto.host, mosquitto.port), mdns=False) as w:
        assert w.subscribed.wait(5)
        publish_retained(mosquitto, "workshop/lab-30/status", b'{"state": "online"}')
        publish_retained(mosquitto, "workshop/lab-31/status", b'{"state": "online"}')
        wait_rows(r, lambda rows: {"lab-30", "lab-31"} <= set(rows))
        publish_retained(mosquitto, "workshop/lab-30/status", b"")
        wait_rows(r, lambda rows: set(rows) == {"lab-31"})
    assert r.warnings == []
    assert "workshop/lab-30/status" not in retained(mosquitto)        # and the broker holds none


def test_a_registry_that_does_not_exist_is_refused_not_created(mosquitto, tmp_path):
    missing = tmp_path / "missing.db"
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{mosquitto.host}:{mosquitto.port}",
                           "--no-mdns", "--registry", str(missing), "--wait", "0"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"error: --registry {missing}: no registry there (the station, or "
                                   "flash/provision/smoke --registry, create it)")
    assert not missing.exists()


def test_control_characters_in_a_status_reach_the_terminal_as_text(room):
    """Anyone on the LAN may publish a status. An escape sequence in one (a window title, a
    clear-screen, OSC 52 to the clipboard) went to the teacher's terminal as it was, in the table
    and in the warnings; each control character is shown as \\xNN instead."""
    broker = room.broker
    publish_retained(broker, "workshop/lab-03/status",
                     b'{"state": "online", "hostname": "lab-03", "board": "\\u001b]0;pwned\\u0007ESP32"}')
    publish_retained(broker, "workshop/lab-04/status", b'{"state": "online", "hostname": "\\u001b[2Jlab"}')
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{broker.host}:{broker.port}",
                           "--no-mdns", "--wait", "2"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout, repr(proc.stdout + proc.stderr)
    row = next(line for line in proc.stdout.splitlines() if line.startswith("lab-03 "))
    assert "\\x1b]0;pwned\\x07ESP32" in row, row
    assert "\\x1b[2Jlab" in proc.stderr, proc.stderr              # the warning about that hostname


def test_roster_forget_clears_a_gone_boards_retained_status(room):
    """A board renamed or taken away stays "offline" in every roster (its retained will) and
    fails every `fleet --all`: `roster --forget` clears it on the broker, and only what it names."""
    gone = room("old-name", "pypi")
    room("kept-01", "pypi")
    time.sleep(1.5)
    gone.kill()
    time.sleep(0.5)
    doc = retained(room.broker)["workshop/old-name/status"][0]
    assert doc["state"] == "offline"
    # A status under a topic in capitals (MQTT topics are case-sensitive): forgotten by any spelling.
    c = paho.Client(paho.CallbackAPIVersion.VERSION2)
    c.connect(room.broker.host, room.broker.port)
    c.loop_start()
    c.publish("workshop/Old-Caps/status", json.dumps(dict(doc, hostname="Old-Caps")), qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()
    mqtt = ["--mqtt", f"{room.broker.host}:{room.broker.port}", "--no-mdns", "--wait", "1.0"]
    proc = subprocess.run([sys.executable, "-m", "invoke", "roster", "--forget", "old-name,OLD-NAME,never-was,old-caps",
                           "--json", *mqtt], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr          # one name was not in the roster: said, and not 0
    assert json.loads(proc.stdout) == [{"hostname": "old-name", "result": "forgotten (was offline)"},
                                       {"hostname": "never-was", "result": "not in the roster: nothing to forget"},
                                       {"hostname": "Old-Caps", "result": "forgotten (was offline)"}], proc.stdout
    assert set(retained(room.broker)) == {"workshop/kept-01/status"}
    listing = subprocess.run([sys.executable, "-m", "invoke", "roster", "--json", *mqtt], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert [b["hostname"] for b in json.loads(listing.stdout)["boards"]] == ["kept-01"], listing.stdout
