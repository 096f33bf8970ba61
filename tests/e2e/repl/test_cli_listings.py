"""The provision and smoke tasks as a person runs them, against real REPLs on PTYs: --json
prints machine-readable results, piped tables keep every port and hostname whole."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import interrupt, wait_while_running

REPO = Path(__file__).resolve().parents[3]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSHOP_")}
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def test_provision_json_and_table(make_peer):
    peers = [make_peer(f"d{i}") for i in range(2)]
    ports = ",".join(p.port for p in peers)
    proc = invoke("provision", "--ports", ports, "--hostname", "lab-workshop-room-b-{index:02d}",
                  "--telnet-password", "tn-secret-9", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["port"] for r in results] == [p.port for p in peers]
    assert [r["hostname"] for r in results] == ["lab-workshop-room-b-01", "lab-workshop-room-b-02"]
    assert all(r["ok"] and r["config"]["telnet"]["password"] == "***" for r in results)
    assert "tn-secret-9" not in proc.stdout + proc.stderr

    table = invoke("provision", "--ports", ports, "--hostname", "lab-workshop-room-b-{index:02d}")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["port", "hostname"])
    rows = [line.split() for line in lines[header + 1:] if line.strip()]
    assert [(r[0], r[1]) for r in rows] == [(p.port, f"lab-workshop-room-b-0{i + 1}") for i, p in enumerate(peers)]
    assert all("written + verified" in line for line in lines[header + 1:] if line.strip())


def test_smoke_json_and_table(make_peer):
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file", "--json")
    report = json.loads(proc.stdout)
    [device] = report["devices"]
    assert device["port"] == peer.port and device["facts"]["platform"] == "linux"
    assert {c["name"] for c in device["checks"]} >= {"connect", "firmware", "heap", "flash", "config"}
    assert proc.returncode == (0 if report["ok"] else 1)

    table = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file")
    lines = table.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["port", "connect"])
    assert lines[header].split() == ["port", "connect", "firmware", "modules", "heap", "flash", "config", "s", "result"]
    row = lines[header + 1].split()
    assert row[0] == peer.port and row[1] == "pass" and row[-1] in ("ok", "FAILED")


def test_provision_mqtt_host_and_port_as_the_broker_task_prints_it(make_peer):
    """`broker --port 18840` says `provision --mqtt 127.0.0.1:18840`: the board gets host and port apart."""
    peer = make_peer()
    proc = invoke("provision", "--ports", peer.port, "--mqtt", "127.0.0.1:18840", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((peer.root / "workshop.json").read_text())
    assert doc["mqtt"] == {"broker": "127.0.0.1", "port": 18840}
    bad = invoke("provision", "--ports", peer.port, "--mqtt", "127.0.0.1:18840", "--mqtt-port", "1883")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "names port 18840 but the mqtt port is 1883" in " ".join(bad.stderr.split())
    assert json.loads((peer.root / "workshop.json").read_text()) == doc           # nothing written


def test_identify_blink_without_its_board_is_an_error(make_peer, tmp_path):
    """--blink needs the registry that knows the name, and the board on one of the ports: else exit 1, not 0."""
    from workshop.provision import identify as repl_identify
    from workshop.registry import Registry
    from workshop.repl import ReplSession

    peer = make_peer()
    # A registry named but not there (a typo) is an error, with --blink or without: it showed every
    # board with no sticker, exit 0. The board is not asked anything.
    for blink in (["--blink", "lab-02"], []):
        missing = invoke("identify", "--ports", peer.port, *blink, "--registry", str(tmp_path / "typo.db"))
        assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stdout + missing.stderr
        assert f"--registry {tmp_path / 'typo.db'}: no registry there" in " ".join(missing.stderr.split())
        assert not (tmp_path / "typo.db").exists() and peer.port not in missing.stdout
    none = invoke("identify", "--ports", peer.port, "--blink", "lab-02")    # no workshop.db here either
    assert none.returncode == 1 and "--blink lab-02: no registry at workshop.db" in " ".join(none.stderr.split())
    reg = Registry(tmp_path / "w.db")
    with ReplSession(peer.port) as s:
        mac = repl_identify(s).mac
    reg.see(mac)
    reg.record_provision(mac, ok=True, hostname="lab-01")
    reg.see("02:00:00:00:00:02")
    reg.record_provision("02:00:00:00:00:02", ok=True, hostname="lab-02")        # known, but not plugged in
    elsewhere = invoke("identify", "--ports", peer.port, "--blink", "lab-02", "--registry", str(tmp_path / "w.db"))
    assert elsewhere.returncode == 1 and "Traceback" not in elsewhere.stderr, elsewhere.stdout + elsewhere.stderr
    assert "--blink lab-02: that board is on none of the 1 port(s) asked" in " ".join(elsewhere.stderr.split())
    here = invoke("identify", "--ports", peer.port, "--blink", "lab-01", "--registry", str(tmp_path / "w.db"))
    assert here.returncode == 0, here.stdout + here.stderr
    assert "console" in here.stdout


def test_smoke_with_a_dist_that_holds_no_build_says_so(make_peer, tmp_path):
    """--dist names the build the boards should run: a folder without it is an error, never boards/UNIX.toml."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    for dist, why in ((tmp_path / "nonexistent", "no such folder of builds"), (tmp_path, "no build of UNIX there")):
        proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--dist", str(dist))
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        assert f"--dist {dist}: {why}" in " ".join(proc.stderr.split()) and "Smoke" not in proc.stdout


def test_ctrl_c_during_provision_ends_it_within_2_s_with_the_table(make_peer, tmp_path):
    """invoke provision --files: Ctrl-C in the middle of the lesson files ends the process within
    2 s (its pool workers stop writing at once), exit 130, the table says what was not done: the
    board cut short 'interrupted', a board that had failed before Ctrl-C still 'failed'."""
    peer = make_peer("slow")
    mute = make_peer("mute", silent=True)
    lesson = tmp_path / "lesson"
    lesson.mkdir()
    for i in range(20):                                   # tens of seconds of paced writes
        (lesson / f"f{i}.py").write_text("x = 1\n" * 400)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSHOP_")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "invoke"), "provision", "--ports",
                             f"{peer.port},{mute.port}", "--connect-timeout", "1", "--hostname", "lab-{mac4}",
                             "--files", str(lesson)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_while_running(proc, lambda: list(peer.root.glob("f*.py")), "provisioning never reached the files", 60)  # the first lesson file is on the board
        out, err, elapsed = interrupt(proc)
    finally:
        proc.kill()
    written = sorted(p.name for p in peer.root.glob("f*.py"))
    time.sleep(1.0)
    assert elapsed < 2.0, (elapsed, out[-500:], err[-500:])
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, out + err
    row = next(line for line in out.splitlines() if line.startswith(peer.port + " "))
    assert "interrupted at files" in row and "failed at" not in row, out     # not "failed at connect"
    row = next(line for line in out.splitlines() if line.startswith(mute.port + " "))
    assert "failed at connect" in row and "interrupted at" not in row, out   # it failed before Ctrl-C
    assert len(written) < 20 and sorted(p.name for p in peer.root.glob("f*.py")) == written  # nothing after


def test_smoke_warns_that_the_dist_build_is_stale(make_peer, tmp_path):
    """README: smoke sees a kept image as stale. Checking boards against a dist/ build the
    sources have moved on from (modules edited without a rebuild) says so, instead of passing quietly."""
    from workshop import build, buildinfo

    board_dir = tmp_path / "dist" / "UNIX"
    board_dir.mkdir(parents=True)
    (board_dir / "micropython").write_bytes(b"an older image")
    info = buildinfo.BuildInfo(
        board="UNIX", port="unix", chip="host", chip_name="host", flash_size=None, mp_board=None, variant="standard",
        micropython_version="v1.28.0", micropython_commit="0" * 40, project_version="0.1.0", project_commit=None,
        project_dirty=False, manifest_sha256="0", inputs_sha256="an older build", frozen_modules=(),
        toolchain="native", toolchain_image=None, built_at="2026-11-20T10:00:00Z", duration_s=1.0,
        artifacts=(buildinfo.Artifact("micropython", buildinfo.sha256_file(board_dir / "micropython"), 14, None, False),))
    buildinfo.write_atomic(board_dir / "build.json", info.to_json())
    reason = build.stale_reason("UNIX", dist=tmp_path / "dist")
    assert reason
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--dist", str(tmp_path / "dist"), "--json")
    assert "Traceback" not in proc.stderr, proc.stderr
    assert (f"warning: {board_dir / 'build.json'}: the build is stale ({reason}): the boards are checked against it "
            "anyway; 'invoke build --board UNIX' builds the current sources") in " ".join(proc.stderr.split()), proc.stderr
    assert json.loads(proc.stdout)["devices"][0]["port"] == peer.port      # stdout stays the report


def test_ctrl_c_during_smoke_ends_it_within_2_s_with_the_table(make_peer, tmp_path):
    """A board that hangs mid-check (an import that never returns): Ctrl-C ended smoke only after
    its pool's sessions gave up (9 s, exit 1, no output). Now within 2 s: exit 130, the table,
    the board 'interrupted'; the other board's finished result stays."""
    hung = make_peer("hung", stack_on_path=False, files={
        "workshop.json": '{"hostname": "x"}',
        "lib/wifi.py": "open('hanging', 'w').close()\nimport time\ntime.sleep(120)\n"})
    fine = make_peer("fine", stack_on_path=False, files={"workshop.json": '{"hostname": "y"}'})
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSHOP_")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "invoke"), "smoke", "--ports", f"{hung.port},{fine.port}",
                             "--board", "UNIX", "--board-file", "--timeout", "120"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_while_running(proc, lambda: (hung.root / "hanging").exists(), "the board never reached the hanging import", 60)
        time.sleep(1.0)                                   # the other board is done by now
        out, err, elapsed = interrupt(proc)
    finally:
        proc.kill()
    assert elapsed < 2.0, (elapsed, out[-500:], err[-500:])
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["port", "connect"])
    rows = {line.split()[0]: line.split() for line in lines[header + 1:] if line.strip() and "/" in line.split()[0]}
    assert rows[hung.port][-1] == "interrupted" and rows[fine.port][-1] in ("ok", "FAILED"), out
    assert "1 not finished (Ctrl-C)" in out, out


@pytest.mark.parametrize("value", ["a b", "bad:host:x"])
def test_smoke_refuses_a_broker_that_is_no_host_before_touching_a_board(make_peer, value):
    """smoke --network took --mqtt 'a b' and failed each board's MQTT check after the run; the
    broker address goes through the one parser provision uses, and is refused up front."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file", "--network", "--mqtt", value)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"--mqtt {value!r}: expected a host name or IP address" in " ".join(proc.stderr.split()), proc.stderr
    assert "Smoke" not in proc.stdout


def test_smoke_network_options_without_network_are_refused_not_ignored(make_peer):
    """--mqtt (or --http-url) without --network was silently ignored: the run passed without the
    network checks the person asked for."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file", "--mqtt", "10.0.0.2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "--mqtt goes with --network" in " ".join(proc.stderr.split()) and "Smoke" not in proc.stdout



@pytest.mark.parametrize("value, why", [("notaurl", "expected http://HOST[:PORT]/PATH"),
                                        ("ftp://10.0.0.2/x", "expected http://HOST[:PORT]/PATH"),
                                        ("http://10.0.0.2:99999/ok", "Port out of range"),
                                        ("http://[::1]:8000/ok", "not [IPv6]")])
def test_smoke_http_url_is_checked_before_any_board(make_peer, value, why):
    """A bad --http-url went to every board: 'GET notaurl: request failed: ValueError: need more
    than 1 values to unpack', one row per board."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file", "--network", "--http-url", value)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert f"--http-url {value!r}:" in said and why in said, proc.stderr
    assert "Smoke" not in proc.stdout


def test_provision_shows_macs_as_every_other_table_does(make_peer):
    """provision's table and JSON said 240ac450c064 where devices, flash, station and the registry
    say 24:0a:c4:50:c0:64."""
    import re

    from workshop.provision import identify as repl_identify
    from workshop.registry import normalize_mac
    from workshop.repl import ReplSession

    peer = make_peer()
    with ReplSession(peer.port) as s:
        mac = normalize_mac(repl_identify(s).mac)
    proc = invoke("provision", "--ports", peer.port, "--json")
    assert proc.returncode == 0, proc.stderr
    [result] = json.loads(proc.stdout)
    assert result["mac"] == mac and re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", mac)
    table = invoke("provision", "--ports", peer.port)
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith(peer.port))
    assert row[2] == mac, table.stdout


@pytest.mark.parametrize("hostname, boards, message", [
    ("Bad_Name!", 1, "hostname 'bad-name!' (from 'Bad_Name!') is not a valid host name"),
    ("lab-01", 2, "hostname 'lab-01' would be the name of all 2 boards"),
    # An error is text, never markup: this one ended in a MarkupError traceback.
    ("[/]lab", 1, "hostname '[/]lab' (from '[/]lab') is not a valid host name"),
    # ...and no emoji: rich turned ":ab:" into 🆎 (in a MAC too: 24:0a:c4:ab:cd:ef)
    ("lab:ab:cd:ef", 1, "hostname 'lab:ab:cd:ef' (from 'lab:ab:cd:ef') is not a valid host name"),
])
def test_provision_refuses_a_hostname_no_board_can_have_before_connecting(make_peer, hostname, boards, message):
    """Both were refused only after connecting to (and identifying) every board."""
    peers = [make_peer(f"d{i}") for i in range(boards)]
    proc = invoke("provision", "--ports", ",".join(p.port for p in peers), "--hostname", hostname)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert "Provisioning" not in proc.stdout and not any((p.root / "workshop.json").exists() for p in peers)


def test_smoke_registry_records_each_board_by_its_mac_and_names_the_board_it_could_not(make_peer, tmp_path):
    """smoke --registry: each board's result goes to the registry under the MAC its firmware
    reports (pass and fail alike, with the failing check); a port where no MAC was read is named
    on stderr, not silently left out."""
    from workshop.provision import identify
    from workshop.registry import Registry
    from workshop.repl import ReplSession

    if not (REPO / "dist" / "UNIX" / "micropython").exists():
        pytest.skip("dist/UNIX/micropython not built (invoke build --board UNIX)")
    good = make_peer("good", runtime="frozen")
    stale = make_peer("stale", runtime="frozen", files={"umqtt/simple.py": "X = 1\n"})
    mute = make_peer("mute", silent=True)      # a port that is there, where no MicroPython answers
    gone = mute.port
    proc = invoke("provision", "--ports", f"{good.port},{stale.port}", "--hostname", "lab-{mac4}", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    macs = {}
    for peer in (good, stale):
        with ReplSession(peer.port) as s:
            macs[peer.port] = identify(s).mac
    db = tmp_path / "workshop.db"

    proc = invoke("smoke", "--ports", f"{good.port},{stale.port},{gone}", "--board", "UNIX", "--registry", str(db),
                  "--json")

    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout.startswith("{"), proc.stdout + proc.stderr
    devices = {d["port"]: d for d in json.loads(proc.stdout)["devices"]}
    assert devices[good.port]["ok"] and not devices[stale.port]["ok"] and not devices[gone]["ok"]
    reg = Registry(db)
    ok, bad = reg.get(macs[good.port]), reg.get(macs[stale.port])
    assert ok is not None and (ok.smoke_ok, ok.smoke_detail, ok.port) == (True, "all checks passed", good.port)
    assert bad is not None and bad.smoke_ok is False and bad.port == stale.port
    assert "module umqtt.simple: not frozen: imported from the file umqtt/simple.py" in (bad.smoke_detail or ""), bad.smoke_detail
    assert len(reg.boards()) == 2
    # ...with why: the MAC is read within the smoke's own budgets, and a failure to read it is said
    assert f"not recorded in the registry: {gone} (MAC unknown: {gone}: no raw REPL after Ctrl-C/Ctrl-A within 3 s" \
        in " ".join(proc.stderr.split()), proc.stderr


def test_smoke_registry_reads_the_mac_in_the_session_of_the_checks(make_peer, tmp_path):
    """smoke --registry read each board's MAC in a session of its own before the checks: the
    board's program was interrupted and its REPL entered twice, and the result went under the
    MAC of whatever board the port led to at the first session. Now the board sees no more
    raw-REPL sessions than a smoke without a registry, and the JSON says the MAC it recorded."""
    from workshop.provision import identify
    from workshop.registry import Registry
    from workshop.repl import RAW_BANNER, ReplSession

    if not (REPO / "dist" / "UNIX" / "micropython").exists():
        pytest.skip("dist/UNIX/micropython not built (invoke build --board UNIX)")
    peer = make_peer("one", runtime="frozen")
    proc = invoke("provision", "--ports", peer.port, "--hostname", "lab-{mac4}", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with ReplSession(peer.port) as s:
        mac = identify(s).mac
    plain_start = len(peer.output)
    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plain = peer.output[plain_start:].count(RAW_BANNER)
    db = tmp_path / "workshop.db"
    start = len(peer.output)

    proc = invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--board-file", "--registry", str(db), "--json")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert peer.output[start:].count(RAW_BANNER) == plain >= 1, bytes(peer.output[start:])
    assert json.loads(proc.stdout)["devices"][0]["mac"] == mac
    board = Registry(db).get(mac)
    assert board is not None and (board.smoke_ok, board.port) == (True, peer.port)


# The radio double for these peers (the unix port has no WLAN; this one replays an ESP32's status
# codes): its Wi-Fi takes `SECONDS` to get an IP, like DHCP in a busy classroom, or refuses the key.
SLOW_WIFI = """import time
STA_IF, AP_IF = 0, 1
STAT_IDLE, STAT_CONNECTING, STAT_GOT_IP = 1000, 1001, 1010
STAT_NO_AP_FOUND, STAT_WRONG_PASSWORD, STAT_CONNECT_FAIL = 201, 202, 203
SECONDS, KEY = %r, %r
_t = [None]
def hostname(n=None):
    return "x"
class WLAN:
    def __init__(self, i=0):
        pass
    def active(self, v=None):
        return True
    def status(self):
        if _t[0] is None:
            return STAT_IDLE
        if _t[1] != KEY:
            return STAT_WRONG_PASSWORD
        return STAT_GOT_IP if time.time() - _t[0] >= SECONDS else STAT_CONNECTING
    def isconnected(self):
        return self.status() == STAT_GOT_IP
    def config(self, k=None, **kw):
        return b"\\x24\\x0a\\xc4\\x11\\x22\\x33" if k == "mac" else ""
    def connect(self, ssid, key=None):
        _t[:] = [time.time(), key]
    def disconnect(self):
        pass
    def ifconfig(self):
        open("wifi-up", "w").close()
        return ("10.0.0.5", "255.255.255.0", "10.0.0.1", "10.0.0.1")
"""


def _needs_frozen():
    if not (REPO / "dist" / "UNIX" / "micropython").exists():
        pytest.skip("dist/UNIX/micropython not built (invoke build --board UNIX)")


def provision_with_reset(make_peer, wifi_seconds: float, board_key: str, *options: str):
    """`provision --wifi labnet ... --start wifi --reset --json` on a frozen board whose Wi-Fi takes
    `wifi_seconds` and takes only `board_key`: (the process, the board's JSON result)."""
    _needs_frozen()
    peer = make_peer(runtime="frozen", files={"lib/network.py": SLOW_WIFI % (wifi_seconds, board_key)})
    proc = invoke("provision", "--ports", peer.port, "--wifi", "labnet", "--wifi-password", "pw12345678",
                  "--start", "wifi", "--reset", *options, "--json")
    [result] = json.loads(proc.stdout) if proc.stdout.startswith("[") else [None]
    return peer, proc, result


def test_provision_reset_waits_for_a_slow_wi_fi_start_up_and_reports_it(make_peer):
    """provision --reset took 0.5 s of silence after the reset for "booted" and interrupted boot.py
    while it connected to Wi-Fi (silent for seconds on a real board): the services never started,
    and the table said "written + verified". It now waits for the board's prompt, and reports the
    start-up's own lines."""
    peer, proc, r = provision_with_reset(make_peer, 3, "pw12345678")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert r["ok"] and r["reset"] and r["boot"] == ["workshop: wifi up, 10.0.0.5"], r
    assert (peer.root / "wifi-up").exists()                # the board really is on its Wi-Fi


def test_provision_reset_fails_a_board_whose_services_do_not_start_and_says_why(make_peer):
    _, proc, r = provision_with_reset(make_peer, 0, "the-right-key")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert not r["ok"] and r["stage"] == "reset", r
    assert r["error"] == ("after the reset: workshop: wifi not started: wifi: cannot connect to 'labnet': "
                          "wrong password"), r
    assert "pw12345678" not in proc.stdout + proc.stderr


def test_provision_reset_timeout_bounds_the_start_up_and_names_its_option(make_peer):
    peer, proc, r = provision_with_reset(make_peer, 6, "pw12345678", "--reset-timeout", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert not r["ok"] and r["stage"] == "reset", r
    assert "was still running 2 s after the soft reset: interrupted" in r["error"], r
    assert "(allow it longer: --reset-timeout, now 2 s)" in r["error"], r
    refused = invoke("provision", "--ports", peer.port, "--reset-timeout", "5")
    assert refused.returncode == 1 and "--reset-timeout goes with --reset" in refused.stderr, refused.stderr


@pytest.mark.parametrize("task", [("smoke", "--board", "UNIX", "--board-file"), ("provision", "--hostname", "lab-{mac4}"),
                                  ("identify",)])
def test_a_board_still_booting_is_given_longer_with_connect_timeout(make_peer, task):
    """A board that answers only after 4 s (an emulated ESP32's first boot after a flash) failed
    smoke, provision and identify after a fixed 3 s (even smoke --timeout 60), with a message
    about ports and baud rates. The message says to allow it longer, with --connect-timeout,
    which does."""
    late = make_peer("late", boot_delay=4, stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke(*task, "--ports", late.port)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "no raw REPL after Ctrl-C/Ctrl-A within 3 s (a board still starting up after a flash or a reset " \
           "answers later: allow it longer with --connect-timeout;" in said, said
    later = make_peer("later", boot_delay=4, stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    proc = invoke(*task, "--ports", later.port, "--connect-timeout", "10")
    assert "no raw REPL" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if task[0] == "provision":
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_provision_reset_fails_a_board_whose_boot_py_raised(make_peer):
    """A firmware without the frozen stack: boot.py's `import workshop_boot` raises, no start-up
    line comes, and --reset passed the board as "written + verified" with nothing started."""
    peer = make_peer(stack_on_path=False)
    proc = invoke("provision", "--ports", peer.port, "--hostname", "lab-{mac4}", "--start", "telnet",
                  "--telnet-password", "tn-secret-9", "--reset", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [r] = json.loads(proc.stdout)
    assert not r["ok"] and r["stage"] == "reset" and r["boot"] == [], r
    assert r["error"] == "after the reset: boot.py raised ImportError: no module named 'workshop_boot'", r


def test_provision_timeout_bounds_each_command_and_is_checked(make_peer):
    """provision had a fixed 10 s per REPL command: a slow or emulated board had no way out.
    `--timeout` bounds each command, sending it included (here 0.2 s: less than sending the
    config takes at the default pacing, so the board fails saying so, and keeps its config)."""
    peer = make_peer()
    proc = invoke("provision", "--ports", peer.port, "--hostname", "lab-01", "--timeout", "0.2", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [r] = json.loads(proc.stdout)
    assert not r["ok"] and "the command's 0.2 s (sending it included)" in r["error"], r
    assert not (peer.root / "workshop.json").exists()
    bad = invoke("provision", "--ports", peer.port, "--hostname", "lab-01", "--timeout", "0")
    assert bad.returncode == 1 and "--timeout: expected seconds > 0, got '0'" in bad.stderr, bad.stderr
    ok = invoke("provision", "--ports", peer.port, "--hostname", "lab-01", "--timeout", "20", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads((peer.root / "workshop.json").read_text())["hostname"] == "lab-01"
