"""Pure parts of roster and fleet: message validation, state rules, target choice, identify code."""

from __future__ import annotations

import json

import pytest

from workshop import fleet, roster


def status(**kw) -> bytes:
    base = {"hostname": "lab-01", "ip": "10.0.0.5", "board": "ESP32_GENERIC", "micropython": "1.28.0",
            "inputs": "a" * 64, "project": "0.1.0", "heap_free": 100000, "rssi": -60, "uptime_s": 5,
            "interval_s": 10, "telnet": 23, "state": "online"}
    base.update(kw)
    return json.dumps(base).encode()


def test_stale_after_two_intervals_and_the_will_keeps_what_the_board_said():
    now = [1000.0]
    r = roster.Roster(roster.Expected({"ESP32_GENERIC": "a" * 64}, "dist"), clock=lambda: now[0])
    assert r.ingest_mqtt("workshop/lab-01/status", status(), retained=True)
    row = r.rows()[0]
    assert (row.state, row.outdated, row.retained, row.telnet) == ("online", False, True, 23)
    now[0] += 20.5   # > 2 x interval_s
    assert r.rows()[0].state == "stale"
    r.ingest_mqtt("workshop/lab-01/status", b'{"hostname": "lab-01", "state": "offline", "ip": "10.0.0.5"}')
    row = r.rows()[0]
    assert row.state == "offline" and row.board == "ESP32_GENERIC" and row.heap_free == 100000


def test_updates_come_when_a_status_arrives_and_when_a_board_turns_stale_by_the_clock():
    # roster --watch --json / piped tables print on each change: a board that goes silent sends
    # nothing, its turn to stale is the clock's alone and must be reported too.
    now = [1000.0]
    r = roster.Roster(None, clock=lambda: now[0])
    r.ingest_mqtt("workshop/lab-01/status", status())
    updates = r.updates(poll=0.01)
    assert [x.state for x in next(updates)] == ["online"]
    r.ingest_mqtt("workshop/lab-02/status", status(hostname="lab-02"))
    assert [(x.hostname, x.state) for x in next(updates)] == [("lab-01", "online"), ("lab-02", "online")]
    now[0] += 20.5                                   # > 2 x interval_s, no message at all
    assert [x.state for x in next(updates)] == ["stale", "stale"]


def test_outdated_unknown_and_mismatch():
    r = roster.Roster(roster.Expected({"ESP32_GENERIC": "b" * 64}, "dist"))
    r.ingest_mqtt("workshop/lab-01/status", status())
    r.ingest_mqtt("workshop/lab-02/status", status(hostname="lab-02", inputs=None))
    r.ingest_mqtt("workshop/lab-03/status", status(hostname="lab-03", board="ESP8266_GENERIC"))
    by = {x.hostname: x for x in r.rows()}
    assert by["lab-01"].outdated is True and "bbbbbbbbbbbb" in by["lab-01"].outdated_reason
    assert by["lab-02"].outdated is None and by["lab-02"].outdated_reason == "no build identity in the image"
    assert by["lab-03"].outdated is None and "no build of ESP8266_GENERIC" in by["lab-03"].outdated_reason


@pytest.mark.parametrize("topic,payload,why", [
    ("workshop/x/status", b"{", "not a JSON status"),
    ("workshop/x/status", b'"online"', "not a JSON object"),
    ("workshop/x/status", b'{"state": "sleeping"}', "neither"),
    ("workshop/x/other", b'{"state": "online"}', "not a workshop/<hostname>/status topic"),
    ("workshop/x/status", b'{"state": "online", "hostname": "y"}', "says hostname"),
])
def test_malformed_statuses_are_skipped_with_a_warning(topic, payload, why):
    seen: list[str] = []
    r = roster.Roster(None, on_warning=seen.append)
    assert not r.ingest_mqtt(topic, payload)
    assert r.rows() == [] and len(seen) == 1 and why in seen[0] and topic in seen[0]


@pytest.mark.parametrize("field,value,why", [
    ("heap_free", "lots", "heap_free: expected a number, got 'lots'"),
    ("interval_s", 0, "interval_s: expected a number of seconds > 0, got 0 (stale after 2 x 30 s instead)"),
    ("interval_s", "10", "interval_s: expected a number of seconds > 0, got '10'"),
    ("interval_s", float("nan"), "interval_s: expected a number of seconds > 0, got nan"),
])
def test_an_odd_field_is_ignored_with_a_warning_and_the_status_kept(field, value, why):
    seen: list[str] = []
    now = [1000.0]
    r = roster.Roster(None, clock=lambda: now[0], on_warning=seen.append)
    assert r.ingest_mqtt("workshop/lab-01/status", status(**{field: value}))
    [row] = r.rows()
    assert row.state == "online" and getattr(row, field) == (None if field == "heap_free" else 30)
    assert len(seen) == 1 and why in seen[0] and seen[0].endswith("; field ignored"), seen
    now[0] += 50                                    # > 2 x the board's 10 s, < 2 x the default 30 s
    assert r.rows()[0].state == ("online" if field == "interval_s" else "stale")


def test_a_fractional_interval_is_taken():
    now = [1000.0]
    r = roster.Roster(None, clock=lambda: now[0], on_warning=print)
    assert r.ingest_mqtt("workshop/lab-01/status", status(interval_s=12.5)) and r.warnings == []
    now[0] += 24
    assert r.rows()[0].state == "online" and r.rows()[0].interval_s == 12.5
    now[0] += 2
    assert r.rows()[0].state == "stale"                                   # after 2 x 12.5 s


def test_a_broken_registry_lookup_is_a_warning_not_a_crash():
    def lookup(host: str):
        raise RuntimeError("database is locked")

    r = roster.Roster(None, lookup)
    r.ingest_mqtt("workshop/lab-01/status", status())
    assert r.rows()[0].sticker is None and "database is locked" in r.warnings[0]


def test_resolve_targets():
    r = roster.Roster(roster.Expected({"ESP32_GENERIC": "a" * 64}, "dist"))
    r.ingest_mqtt("workshop/lab-01/status", status())
    r.ingest_mqtt("workshop/lab-02/status", status(hostname="lab-02", inputs="c" * 64, telnet=2323))
    rows = r.rows()
    assert [t.hostname for t in fleet.resolve(rows, all_boards=True)] == ["lab-01", "lab-02"]
    out = fleet.resolve(rows, outdated=True)
    assert [(t.hostname, t.host, t.port) for t in out] == [("lab-02", "10.0.0.5", 2323)]
    named = fleet.resolve(rows, ["lab-02", "ghost"])
    assert [(t.hostname, t.state) for t in named] == [("lab-02", "online"), ("ghost", "unknown")]
    twice = fleet.resolve(rows, ["GHOST", "lab-02", "ghost", "LAB-02"])   # one board each, in any case
    assert [(t.hostname, t.state) for t in twice] == [("GHOST", "unknown"), ("lab-02", "online")]
    with pytest.raises(fleet.FleetError, match="choose the boards"):
        fleet.resolve(rows)
    with pytest.raises(fleet.FleetError, match="no boards in the roster: none announced itself"):
        fleet.resolve([], outdated=True)          # not "every image matches"
    with pytest.raises(fleet.FleetError, match="choose the boards"):
        fleet.resolve(rows, ["lab-01"], all_boards=True)


def test_resume_reads_only_the_same_command(tmp_path):
    c1 = fleet.Command("put", data=b"one", dest="main.py")
    c2 = fleet.Command("put", data=b"two", dest="main.py")
    rep = fleet.FleetReport("put", c1.key, 0.0, [fleet.BoardResult("a", True), fleet.BoardResult("b", False, error="x")])
    path = tmp_path / "last.json"
    fleet.write_report(rep, path)
    assert fleet.completed_in(path, c1) == {"a"}
    assert fleet.completed_in(path, c2) == set()          # other content: nothing is skipped
    assert fleet.completed_in(tmp_path / "none.json", c1) == set()
    path.write_text("{half")
    with pytest.raises(fleet.FleetError, match="cannot read"):
        fleet.completed_in(path, c1)


def test_a_resumed_room_run_skips_the_completed_boards_and_a_report_it_cannot_write_is_said(tmp_path):
    r = roster.Roster(None)
    for h in ("lab-01", "lab-02"):
        r.ingest_mqtt(f"workshop/{h}/status", status(hostname=h, ip="127.0.0.1", telnet=9))  # (nothing on port 9)
    command = fleet.Command.exec("print(1)")
    path = tmp_path / "last.json"
    fleet.write_report(fleet.FleetReport("exec", command.key, 0.0, [fleet.BoardResult("lab-01", True),
                                                                    fleet.BoardResult("lab-02", True)]), path)
    runner = fleet.Fleet(password="pw", connect_timeout=1.0)
    seen: list = []

    def make(targets):
        seen.append([t.hostname for t in targets])
        return command

    done = fleet.run_in_room(runner, r.rows(), make, all_boards=True, resume=True, report=path)
    assert seen == [["lab-01", "lab-02"]] and done.ok and done.unwritten is None and done.path == path
    assert [(x.hostname, x.resumed) for x in done.results] == [("lab-01", True), ("lab-02", True)]
    assert json.loads(path.read_text())["results"][0]["resumed"] is True          # the new report

    (tmp_path / "a-folder").mkdir()
    done = fleet.run_in_room(runner, r.rows(), make, hosts=["lab-01"], report=tmp_path / "a-folder")
    assert [(x.hostname, x.ok) for x in done.results] == [("lab-01", False)]     # no telnet there: tried, failed
    assert done.unwritten and done.unwritten.startswith(f"the report could not be written to {tmp_path / 'a-folder'}")
    with pytest.raises(fleet.FleetError, match="choose the boards"):
        fleet.run_in_room(runner, r.rows(), make, report=path)


def test_identify_code_blinks_the_board_led_or_prints_a_banner():
    code = fleet.identify_code(2, active_low=True, seconds=1)
    compile(code, "identify", "exec")
    assert "Pin(2,Pin.OUT)" in code and "range(4)" in code and "p.value(0 if i%2==0 else 1)" in code
    banner = fleet.identify_code(None)
    compile(banner, "identify", "exec")
    assert "IDENTIFY" in banner and "Pin" not in banner
    assert fleet.led_for("NO_SUCH_BOARD") == (None, False)
    assert fleet.led_for("X", {"X": {"led_pin": 8, "led_active_low": True}}) == (8, True)


def test_fleet_refuses_to_run_without_a_password():
    with pytest.raises(fleet.FleetError, match="no telnet password"):
        fleet.Fleet(password="")


@pytest.mark.parametrize("args", [("roster", "--wait", "0"), ("serve", "--room", "--directory", "{release}"),
                                  ("fleet", "exec", "print(1)", "--all", "--wait", "0", "--telnet-password", "pw")])
@pytest.mark.parametrize("value, message", [
    ("bogus", "--interface 'bogus': expected the IPv4 address of one of this machine's interfaces"),
    ("10.255.255.77", "mDNS cannot listen on --interface 10.255.255.77"),
])
def test_a_bad_mdns_interface_is_one_line_not_a_traceback(args, value, message, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    (tmp_path / "index.json").write_text("{}")        # serve reads the folder's index before the room
    args = tuple(a.replace("{release}", str(tmp_path)) for a in args)
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), *args, "--interface", value], cwd=repo,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and message in " ".join(proc.stderr.split()), proc.stderr


def test_two_boards_with_one_hostname_are_a_warning_naming_both():
    now = [1000.0]
    seen: list[str] = []
    r = roster.Roster(None, clock=lambda: now[0], on_warning=seen.append)
    topic = "workshop/lab-01/status"
    r.ingest_mqtt(topic, status(mac="24:6f:28:00:00:01", ip="10.0.0.5"))
    now[0] += 1
    r.ingest_mqtt(topic, status(mac="24:6F:28:00:00:01", ip="10.0.0.7"))       # one board, a new IP: fine
    assert seen == []
    now[0] += 1
    r.ingest_mqtt(topic, status(mac="24:6f:28:00:00:02", ip="10.0.0.6"))
    for _ in range(5):                                                        # they go on alternating
        now[0] += 1
        r.ingest_mqtt(topic, status(mac="24:6F:28:00:00:01", ip="10.0.0.7"))
        r.ingest_mqtt(topic, status(mac="24:6f:28:00:00:02", ip="10.0.0.6"))
    assert len(seen) == 1 and r.warnings == seen                              # said once
    assert "two boards say they are lab-01" in seen[0]
    assert "MAC 24:6F:28:00:00:01 at 10.0.0.7" in seen[0] and "MAC 24:6f:28:00:00:02 at 10.0.0.6" in seen[0]


def test_boards_without_a_mac_are_told_apart_by_an_ip_that_comes_back():
    now = [1000.0]
    r = roster.Roster(None, clock=lambda: now[0])
    topic = "workshop/lab-02/status"
    r.ingest_mqtt(topic, status(hostname="lab-02", ip="10.0.0.5"))
    r.ingest_mqtt(topic, status(hostname="lab-02", ip="10.0.0.8"))            # a new DHCP lease: one board
    now[0] += 30                                                              # > 2 intervals: the old IP is forgotten
    r.ingest_mqtt(topic, status(hostname="lab-02", ip="10.0.0.5"))
    assert r.warnings == []
    r.ingest_mqtt(topic, status(hostname="lab-02", ip="10.0.0.8"))
    r.ingest_mqtt(topic, status(hostname="lab-02", ip="10.0.0.5"))            # back again: two boards
    assert len(r.warnings) == 1 and "10.0.0.5 (no MAC) and 10.0.0.8 (no MAC)" in r.warnings[0]


def test_a_retained_status_from_another_mac_is_not_taken_for_a_second_board():
    r = roster.Roster(None)
    r.ingest_mqtt("workshop/lab-03/status", status(hostname="lab-03", mac="24:6f:28:00:00:09"), retained=True)
    r.ingest_mqtt("workshop/lab-03/status", status(hostname="lab-03", mac="24:6f:28:00:00:0a"))
    assert r.warnings == []


def test_a_board_known_from_mdns_alone_turns_stale_after_its_ttl_and_offline_when_removed():
    now = [1000.0]
    r = roster.Roster(None, clock=lambda: now[0])
    r.ingest_mdns("lab-20", "10.0.0.20", 23, {"board": "ESP32_GENERIC"})
    r.ingest_mqtt("workshop/lab-21/status", status(hostname="lab-21"))
    r.ingest_mdns("lab-21", "10.0.0.21", 23, {})
    now[0] += 60
    r.seen_mdns("lab-20", now[0] - 1, ttl=120)             # the watcher saw it answer again
    now[0] += 100
    states = {x.hostname: x.state for x in r.rows()}
    assert states == {"lab-20": "online", "lab-21": "stale"}  # 101 s < its TTL; lab-21 goes by MQTT
    now[0] += 20
    assert {x.hostname: x.state for x in r.rows()}["lab-20"] == "stale"
    r.leave_mdns("lab-20")                                  # a goodbye (or zeroconf removed it)
    r.leave_mdns("lab-21")                                  # MQTT's word wins for lab-21
    assert {x.hostname: x.state for x in r.rows()} == {"lab-20": "offline", "lab-21": "stale"}
    r.ingest_mdns("lab-20", "10.0.0.29", 0, {"board": "ESP32_GENERIC_S3"})    # back, elsewhere, reflashed
    row = {x.hostname: x for x in r.rows()}["lab-20"]
    assert (row.state, row.ip, row.board, row.telnet) == ("online", "10.0.0.29", "ESP32_GENERIC_S3", None)


def test_a_locked_registry_is_a_warning_in_the_room_not_a_board_without_a_sticker(tmp_path, monkeypatch):
    """The MAC lookup took every RegistryError for "not a MAC": a registry that another program
    kept locked would have shown the board without its sticker, and no word why."""
    import subprocess
    import sys

    from workshop import registry

    path = tmp_path / "class.db"
    reg = registry.Registry(path)
    reg.see("24:6f:28:00:00:01", chip="esp32")
    reg.record_provision("24:6f:28:00:00:01", ok=True, hostname="lab-01")
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time\n"
                               "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "db.execute('PRAGMA locking_mode=EXCLUSIVE')\ndb.execute('BEGIN EXCLUSIVE')\n"
                               "print('held', flush=True)\ntime.sleep(60)\n", str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(registry, "BUSY_TIMEOUT_S", 0.3)
        by_hostname, by_mac = roster.registry_lookups(reg)
        r = roster.Roster(None, lookup=lambda name: None, lookup_mac=by_mac)   # the MAC lookup alone
        r.ingest_mqtt("workshop/lab-01/status", status(mac="24:6f:28:00:00:01"))
        row = r.rows()[0]
    finally:
        holder.kill()
        holder.wait()
    assert row.sticker is None
    assert len(r.warnings) == 1 and "registry lookup of lab-01 failed" in r.warnings[0], r.warnings
    assert "locked by another program" in r.warnings[0], r.warnings
    assert r.rows()[0].sticker == "1"                                 # released: the sticker is back
