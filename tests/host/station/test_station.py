"""The station against real peers: esp32-mock-bootloader boards (real esptool) that become real
MicroPython REPLs after their flash's reset; hot-plug through a folder of links."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from station_peers import FROZEN_UNIX, RADIO_DOUBLE, HotPlug, make_dist
from workshop import flash, smoke, station
from workshop.flash import FlashImage, FlashOptions
from workshop.provision import ProvisionConfig
from workshop.registry import Registry

REPO = Path(__file__).resolve().parents[3]

needs_frozen = pytest.mark.skipif(not FROZEN_UNIX.exists(), reason="dist/UNIX/micropython not built (invoke build --board UNIX)")


def unix_expected(_image):
    # The peer's "firmware" after the reset is the frozen UNIX build: smoke expects that build.
    return smoke.Expected.from_build(REPO / "dist" / "UNIX")


def plan_for(tmp_path: Path, image_dir: Path, **kw) -> station.Plan:
    values = dict(images=FlashImage.from_dist(image_dir), provision=ProvisionConfig(hostname="lab-{index:02d}"),
                  smoke=True, registry=Registry(tmp_path / "workshop.db"), log_dir=tmp_path / "logs",
                  expected=unix_expected)
    values.update(kw)
    return station.Plan(**values)


@needs_frozen
def test_one_board_goes_from_bootloader_to_ready(farm, tmp_path):
    board = farm.start("esp32")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=96 * 1024)
    (tmp_path / "lesson" / "lib").mkdir(parents=True)
    (tmp_path / "lesson" / "main.py").write_text("print('hello from the lesson')\n")
    (tmp_path / "lesson" / "lib" / "blink.py").write_text("N = 3\n")
    plan = plan_for(tmp_path, image_dir, files=tmp_path / "lesson")
    events: list[station.StationEvent] = []

    report = station.run_boards([board.port], plan, on_event=events.append)

    [r] = report.results
    assert r.ok, (r.stage, r.reason)
    assert (r.state, r.hostname, r.sticker, r.mac) == ("ready", "lab-01", 1, board.mac)
    assert r.flash.verified and r.provision.ok and r.smoke.ok
    assert r.provision.files == {"written": ["lib/blink.py", "main.py"], "unchanged": [], "removed": [], "kept": []}
    stages = [e.stage for e in events]
    for a, b in [("appeared", "writing"), ("writing", "verifying"), ("verifying", "booting"),
                 ("booting", "provisioning"), ("provisioning", "smoking"), ("smoking", "ready")]:
        assert stages.index(a) < stages.index(b)
    assert events[-1].final and events[-1].ok and "unplug me" in events[-1].message
    assert events[-1].state == r.state and {e.state for e in events[:-1]} == {"in progress"}
    # The lesson files are on the board, byte for byte; the config names it by its sticker.
    assert (board.root / "lib" / "blink.py").read_text() == "N = 3\n"
    assert json.loads((board.root / "workshop.json").read_text())["hostname"] == "lab-01"
    rec = plan.registry.get(board.mac)
    assert (rec.state, rec.sticker, rec.hostname, rec.board, rec.flash_ok, rec.provision_ok, rec.smoke_ok) == (
        "ready", 1, "lab-01", "ESP32_GENERIC", True, True, True)
    assert [h.stage for h in plan.registry.history(board.mac)] == ["seen", "flash", "provision", "smoke", "ready"]
    assert board.flash()[0x1000:0x1000 + 96 * 1024] == (image_dir / "firmware.bin").read_bytes()


def test_flash_and_provision_on_the_pypi_runtime_and_lesson_files_are_skipped_when_identical(farm, tmp_path):
    board = farm.start("esp32", runtime="pypi")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=32 * 1024)
    (tmp_path / "lesson").mkdir()
    (tmp_path / "lesson" / "main.py").write_text("x = 1\n")
    plan = plan_for(tmp_path, image_dir, smoke=False, files=tmp_path / "lesson")
    first = station.run_boards([board.port], plan).results[0]
    assert first.ok, first.reason
    second = station.run_boards([board.port], station.Plan(**{**plan.__dict__, "reflash": True})).results[0]
    assert second.ok, second.reason
    assert second.provision.files == {"written": [], "unchanged": ["main.py"], "removed": [], "kept": []}
    assert second.sticker == first.sticker == 1


def test_a_reflash_with_the_next_lesson_and_prune_removes_the_last_lessons_files(farm, tmp_path):
    """A reflash keeps the board's filesystem: lesson 1's extra file stays (and may run) unless the
    station prunes it, as `provision --prune` does (flash --provision --files --prune)."""
    board = farm.start("esp32", runtime="pypi")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=32 * 1024)
    for name, files in (("one", {"main.py": "x = 1\n", "old.py": "y = 2\n"}), ("two", {"main.py": "x = 3\n"})):
        (tmp_path / name).mkdir()
        for f, text in files.items():
            (tmp_path / name / f).write_text(text)
    plan = plan_for(tmp_path, image_dir, smoke=False, files=tmp_path / "one")
    first = station.run_boards([board.port], plan).results[0]
    assert first.ok, first.reason
    assert (board.root / "old.py").exists()

    plan = station.Plan(**{**plan.__dict__, "reflash": True, "files": tmp_path / "two", "prune": True})
    second = station.run_boards([board.port], plan).results[0]

    assert second.ok, second.reason
    assert second.provision.files == {"written": ["main.py"], "unchanged": [], "removed": ["old.py"], "kept": []}
    assert not (board.root / "old.py").exists() and (board.root / "main.py").read_text() == "x = 3\n"


@pytest.mark.parametrize("late", [False, True], ids=["together", "clone-after-the-first-is-ready"])
def test_two_boards_with_one_mac_are_not_merged(farm, tmp_path, late):
    # late: the clone's first esptool session hangs, so it reaches its MAC after the first board is
    # ready (still plugged in): the MAC is still that board's.
    a = farm.start("esp32", runtime=None, mac="24:0a:c4:12:34:56")
    b = farm.start("esp32", runtime=None, mac="24:0a:c4:12:34:56", hang_first_connect=late)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, provision=None, smoke=False)

    report = station.run_boards([a.port, b.port], plan)

    states = sorted((r.state, r.reason or "") for r in report.results)
    assert states[0][0] == "failed" and states[1] == ("ready", "")
    assert "MAC 24:0a:c4:12:34:56 already seen on /dev/pts/" in states[0][1]
    assert len(plan.registry.boards()) == 1
    assert "duplicate" in [h.stage for h in plan.registry.history("24:0a:c4:12:34:56")]


def test_a_failed_flash_names_its_stage_once_in_the_boards_reason(farm, tmp_path):
    # The flash's error already starts with its stage ("writing: no answer within ..."): the station
    # said it twice ("writing: writing: ...").
    board = farm.start("esp32", runtime=None, stall_after=2)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=128 * 1024)
    options = FlashOptions(attempts=(flash.Attempt(460800, "2"),), budgets=flash.Budgets(write_base=2.0))
    plan = plan_for(tmp_path, image_dir, provision=None, smoke=False, flash_options=options)

    [r] = station.run_boards([board.port], plan).results

    assert (r.state, r.stage) == ("failed", "writing"), r.reason
    assert r.reason.startswith("writing: no answer within its ") and "writing: writing" not in r.reason, r.reason


class Mover(threading.Thread):
    """The USB side of re-enumeration: when a peer comes back on a new PTY, its link moves."""

    def __init__(self, hub: HotPlug, peer, new_name: str) -> None:
        super().__init__(daemon=True)
        self.hub, self.peer, self.new_name = hub, peer, new_name
        self.old = peer.port
        self.moved = threading.Event()

    def run(self) -> None:
        new = self.peer.wait_port_change(self.old, timeout=120)
        for link in list(self.hub.folder.iterdir()):
            if os.readlink(link) == self.old:
                self.hub.unplug(link)
        self.hub.plug(self.peer, name=self.new_name)
        self.moved.set()
        assert new


@needs_frozen
def test_hot_plug_a_board_unplugged_mid_write_is_reported_the_others_finish_and_a_known_board_is_recognized(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=256 * 1024)
    plan = plan_for(tmp_path, image_dir)
    events: list[station.StationEvent] = []
    cancel = threading.Event()
    out: dict[str, station.StationReport] = {}
    runner = threading.Thread(target=lambda: out.setdefault("r", station.watch(
        plan, station.FolderSource(hub.folder), on_event=events.append, cancel=cancel, stop_after=3)), daemon=True)
    runner.start()

    steady = farm.start("esp32", name="steady")
    victim = farm.start("esp32", name="victim", runtime=None, fast_slip=True)
    steady_link = hub.plug(steady, serial="STEADY0001")
    victim_link = hub.plug(victim, serial="VICTIM0002")
    # kill the victim once it is writing
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(e.key == str(victim_link) and e.stage == "writing" and
                                                  (e.percent or 0) > 5 for e in events):
        time.sleep(0.01)
    victim.kill()
    hub.unplug(victim_link)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(e.key == str(steady_link) and e.final for e in events):
        time.sleep(0.05)
    # plugged again: recognized from the registry
    hub.unplug(steady_link)
    time.sleep(0.5)
    again_link = hub.plug(steady, serial="STEADY0001")
    runner.join(timeout=120)
    cancel.set()
    report = out["r"]
    by_key: dict[str, list[station.BoardResult]] = {}
    for r in report.results:
        by_key.setdefault(r.key, []).append(r)
    first, second = by_key[str(steady_link)]
    assert first.state == "ready", first.reason
    assert first.hostname in ("lab-01", "lab-02")                  # the victim may have been seen first
    assert second.state == "ready" and second.recognized == f"{first.hostname}, already ready with this image", (
        second.stage, second.reason, [(e.stage, e.message) for e in events if e.key == str(steady_link)],
        steady.log_path.read_text(errors="replace")[-3000:], second.flash and second.flash.log_file and
        Path(second.flash.log_file).read_text(errors="replace")[-3000:])
    [v] = by_key[str(victim_link)]
    assert v.state == "unplugged" and v.reason.startswith("unplugged during writing"), v.reason
    assert v.left_as == "unplugged during writing: reflash before use"
    assert [e.state for e in events if e.key == str(victim_link) and e.final] == ["unplugged"]
    assert again_link == steady_link
    assert [r.sticker for r in report.results if r.mac == steady.mac] == [first.sticker] * 2


@needs_frozen
def test_a_native_usb_board_that_re_enumerates_is_followed_by_its_serial_number(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC_S3", "esp32s3", size=64 * 1024, offset=0)
    plan = plan_for(tmp_path, image_dir)
    native = farm.start("esp32s3", name="native", reenumerate=True)
    events: list[station.StationEvent] = []
    mover = Mover(hub, native, HotPlug.link_name("F4:12:FA:00:00:01"))
    hub.plug(native, name=HotPlug.link_name("F4:12:FA:00:00:01").replace("_debug_unit", "_ROM"))
    mover.start()

    report = station.watch(plan, station.FolderSource(hub.folder), on_event=events.append, stop_after=1)

    assert len(report.results) == 1, [(x.key, x.state, x.stage, x.reason) for x in report.results]
    [r] = report.results
    assert mover.moved.is_set()
    assert r.ok, (r.stage, r.reason)
    assert r.port == native.port and r.key.endswith("_ROM_F4:12:FA:00:00:01-if00")
    assert any(e.stage == "booting" and "following USB serial F4:12:FA:00:00:01" in e.message for e in events)
    assert any(e.stage == "booting" and e.message.startswith("back on ") for e in events)


def test_a_new_board_is_seen_within_a_second(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=8 * 1024)
    plan = plan_for(tmp_path, image_dir, provision=None, smoke=False)
    board = farm.start("esp32", runtime=None)
    seen: dict[str, float] = {}
    cancel = threading.Event()

    def on_event(e):
        if e.stage == "appeared":
            seen["t"] = time.monotonic()
        if e.final:
            cancel.set()

    runner = threading.Thread(target=station.watch, args=(plan, station.FolderSource(hub.folder)),
                              kwargs={"on_event": on_event, "cancel": cancel}, daemon=True)
    runner.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    hub.plug(board, serial="0001")
    runner.join(timeout=60)
    assert seen["t"] - t0 < 1.0




def _invoke(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=kw.get("cwd", REPO),
                            env={**os.environ, "COLUMNS": "120"})


def test_invoke_station_plain_events_json_lines_and_registry_listing(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    board = farm.start("esp32", runtime=None)
    hub.plug(board, serial="A0001")
    db, jsonl = tmp_path / "w.db", tmp_path / "events.jsonl"
    proc = _invoke("station", "--board", "ESP32_GENERIC", "--dist", str(tmp_path / "dist"), "--ports-dir",
                   str(hub.folder), "--registry", str(db), "--stop-after", "1", "--json-out", str(jsonl),
                   "--logs", str(tmp_path / "logs"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "appeared" in out and "ready: unplug me" in out          # plain lines: stdout is not a terminal
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert lines[0]["stage"] == "appeared" and lines[-1]["final"] and lines[-1]["ok"]
    listing = _invoke("registry", "--registry", str(db), "--json")
    text, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    [rec] = json.loads(text)
    assert (rec["mac"], rec["sticker"], rec["state"]) == (board.mac, 1, "ready")
    csv_path = tmp_path / "class.csv"
    export = _invoke("registry", "--registry", str(db), "--csv", str(csv_path))
    export.communicate(timeout=60)
    assert board.mac in csv_path.read_text()


def test_ctrl_c_on_invoke_station_during_a_hung_stub_exits_130_within_2_s(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    hung = farm.start("esp32", runtime=None, hang_stub=True)
    hub.plug(hung, serial="HUNG0001")
    jsonl = tmp_path / "events.jsonl"
    proc = _invoke("station", "--board", "ESP32_GENERIC", "--dist", str(tmp_path / "dist"), "--ports-dir",
                   str(hub.folder), "--registry", str(tmp_path / "w.db"), "--json-out", str(jsonl),
                   "--logs", str(tmp_path / "logs"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (jsonl.exists() and '"stage": "stub"' in jsonl.read_text()):
        time.sleep(0.05)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < 2.0
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "untouched" in out
    assert "Traceback" not in err


def test_invoke_flash_provision_runs_the_same_pipeline(farm, tmp_path):
    boards = [farm.start("esp32", runtime="pypi") for _ in range(2)]
    make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=32 * 1024)
    cfg = tmp_path / "workshop.toml"
    cfg.write_text('hostname = "lab-{index:02d}"\nstart = ["wifi"]\n[wifi]\nssid = "Workshop"\n')
    db = tmp_path / "w.db"
    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(tmp_path / "dist"), "--ports",
                   ",".join(b.port for b in boards), "--provision", str(cfg), "--registry", str(db),
                   "--logs", str(tmp_path / "logs"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert out.count("ready: unplug me") >= 2
    recs = Registry(db).boards()
    assert sorted(r.hostname for r in recs) == ["lab-01", "lab-02"] and all(r.state == "ready" for r in recs)
    for b in boards:
        doc = json.loads((b.root / "workshop.json").read_text())
        assert doc["wifi"] == {"ssid": "Workshop"} and doc["hostname"] in ("lab-01", "lab-02")


@needs_frozen
def test_a_board_without_a_serial_number_that_vanishes_waits_for_reset_and_continues(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC_S2", "esp32s2", size=32 * 1024)
    plan = plan_for(tmp_path, image_dir, smoke=False)
    board = farm.start("esp32s2", name="s2", reenumerate=True)
    events: list[station.StationEvent] = []
    hub.plug(board, name="ttyACM0")                              # no serial number in the name
    mover = Mover(hub, board, "ttyACM1")
    mover.start()

    # Links named as bare device nodes tell no bridge: taken as --all-ports takes them.
    report = station.watch(plan, station.FolderSource(hub.folder, all_ports=True), on_event=events.append, stop_after=1)

    assert len(report.results) == 1, [(r.key, r.state, r.reason) for r in report.results]
    [r] = report.results
    assert r.ok, (r.stage, r.reason, [(e.stage, e.message) for e in events][-6:])
    assert any(e.message == f"press RESET on {hub.folder / 'ttyACM0'}" for e in events)
    assert r.port == board.port


@needs_frozen
def test_flash_and_smoke_with_a_registry_name_the_boards_they_could_not_record(farm, tmp_path):
    import pty

    board = farm.start("esp32")
    make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    master, slave = pty.openpty()            # a port with nothing behind it: no MAC is ever read there
    dead = os.ttyname(slave)
    db = tmp_path / "w.db"
    try:
        proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(tmp_path / "dist"), "--ports",
                       f"{dead},{board.port}", "--registry", str(db), "--logs", str(tmp_path / "logs"))
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert f"not recorded in the registry: {dead} (MAC unknown)" in " ".join(err.split())
        assert board.port not in err
        assert [r.mac for r in Registry(db).boards()] == [board.mac]

        proc = _invoke("smoke", "--board", "UNIX", "--dist", str(REPO / "dist"), "--ports", f"{board.port},{dead}",
                       "--registry", str(db), "--json")
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, out + err
        assert (f"not recorded in the registry: {dead} (MAC unknown: {dead}: no raw REPL after Ctrl-C/Ctrl-A "
                "within 3 s") in " ".join(err.split())                # smoke also says why
        assert board.port not in err
        reports = {r["port"]: r for r in json.loads(out)["devices"]}     # stdout stays JSON
        assert not reports[dead]["ok"], reports[board.port]
        smoked = [r for r in Registry(db).boards() if r.smoke_ok is not None]
        assert len(smoked) == 1 and smoked[0].port == board.port, smoked
    finally:
        os.close(master)
        os.close(slave)


def test_index_hostnames_without_a_registry_are_refused_before_any_board_is_touched(farm, tmp_path):
    # Each journey provisions one board: without stickers every board would have been "lab-01".
    board = farm.start("esp32", runtime=None)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, registry=None, smoke=False)
    with pytest.raises(station.StationError, match=r"uses \{index\}.*--registry"):
        station.run_boards([board.port], plan)
    with pytest.raises(station.StationError, match=r"uses \{index\}"):
        station.watch(plan, station.FolderSource(tmp_path), stop_after=1)
    cfg = tmp_path / "workshop.toml"
    cfg.write_text('hostname = "lab-{index:02d}"\n')
    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(tmp_path / "dist"), "--ports", board.port,
                   "--provision", str(cfg), "--logs", str(tmp_path / "logs"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    assert "uses {index}" in err and "--registry" in err and "Traceback" not in err
    assert board.flash()[0x1000:0x1010] == b"\xff" * 16                  # nothing written


def test_a_hostname_the_registry_holds_for_another_board_is_refused_before_writing(farm, tmp_path):
    board = farm.start("esp32", runtime="pypi")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, smoke=False)
    other = "24:0a:c4:aa:bb:cc"
    plan.registry.see(other)                                           # sticker 1
    plan.registry.record_provision(other, ok=True, hostname="lab-02")  # named by hand, or by an older pattern

    [r] = station.run_boards([board.port], plan).results

    assert (r.state, r.stage, r.sticker) == ("failed", "provisioning", 2), r.reason
    assert "hostname 'lab-02' is already board 24:0a:c4:aa:bb:cc's (sticker 1)" in r.reason
    assert not (board.root / "workshop.json").exists()
    assert plan.registry.get(board.mac).hostname is None
    assert plan.registry.get(other).hostname == "lab-02"


def test_a_followed_board_that_turns_out_to_be_another_board_is_not_given_its_identity(farm, tmp_path):
    # A serial-less board vanishes after its flash; before it comes back another serial-less board
    # (a MicroPython board whose radio has another MAC) is plugged in: it is taken to be the first
    # one, and must be refused by its MAC, not written with the first board's hostname.
    from station_peers import E2E

    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC_S2", "esp32s2", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, smoke=False)
    first = farm.start("esp32s2", name="s2", reenumerate=True, runtime="pypi")
    stranger_mac = "24:0a:c4:99:88:77"
    stranger = E2E.PtyPeer(tmp_path / "stranger", runtime="pypi")
    (stranger.root / "lib").mkdir(parents=True)
    (stranger.root / "lib" / "network.py").write_text(RADIO_DOUBLE % bytes.fromhex(stranger_mac.replace(":", "")))
    stranger.start()
    hub.plug(first, name="ttyACM0")

    def swap() -> None:
        first.wait_port_change(first.port, timeout=120)
        hub.unplug(hub.folder / "ttyACM0")
        link = hub.folder / "ttyACM1"
        link.symlink_to(stranger.port)

    mover = threading.Thread(target=swap, daemon=True)
    mover.start()
    t0 = time.monotonic()
    try:
        report = station.watch(plan, station.FolderSource(hub.folder, all_ports=True), stop_after=2)   # ttyACM*: no bridge named
    finally:
        stranger.stop()

    r, other = report.results
    assert time.monotonic() - t0 < 60          # no second wait for a board that is not coming
    assert r.state == "failed", (r.state, r.reason)
    assert r.reason == (f"provision name: another board answered on {stranger.port}: MAC {stranger_mac}, "
                        f"expected {first.mac}: not provisioned with this board's identity")
    assert not (stranger.root / "workshop.json").exists()
    assert plan.registry.get(first.mac).hostname is None
    assert plan.registry.get(stranger_mac) is None
    # The stranger is not swallowed: it gets its own journey (a REPL, no bootloader: nothing to flash).
    assert (other.key, other.port, other.state, other.stage) == (str(hub.folder / "ttyACM1"), stranger.port,
                                                                 "failed", "connecting"), other.reason


def test_an_s2_left_in_download_mode_on_its_port_is_shown_press_reset_and_continues_after_it(farm, tmp_path):
    # The ESP32-S2's ROM cannot leave download mode over its own USB: the port stays, MicroPython
    # never answers until RESET is pressed (then the board re-enumerates, same USB serial).
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC_S2", "esp32s2", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, smoke=False)
    board = farm.start("esp32s2", name="s2", runtime="pypi", reenumerate=True, manual_reset=True)
    link = hub.plug(board, serial="S2RESET")
    mover = Mover(hub, board, link.name)
    mover.start()
    events: list[station.StationEvent] = []
    asked = threading.Event()
    flashed_at: list[float] = []

    def on_event(e: station.StationEvent) -> None:
        events.append(e)
        if e.stage == "booting" and not flashed_at:
            flashed_at.append(time.monotonic())
        if e.message == f"press RESET on {link}" and not asked.is_set():
            asked.set()
            assert time.monotonic() - flashed_at[0] < plan.boot_timeout    # not after a REPL timeout
            board.press_reset()                                            # the person at the table

    report = station.watch(plan, station.FolderSource(hub.folder), on_event=on_event, stop_after=1)

    [r] = report.results
    assert r.ok, (r.stage, r.reason, [(e.stage, e.message) for e in events][-6:])
    assert asked.is_set() and mover.moved.is_set()
    stages = [e.stage for e in events]
    assert stages.index("provisioning") > next(i for i, e in enumerate(events) if e.message.startswith("press RESET"))
    assert r.port == board.port and r.hostname == "lab-01"
    assert json.loads((board.root / "workshop.json").read_text())["hostname"] == "lab-01"


def test_a_board_without_the_manual_reset_flag_is_not_asked_for_reset(farm, tmp_path):
    # The same ROM-stays peer flashed as an ESP32 (no manual_reset_after_flash in its board file):
    # the REPL timeout stands; "press RESET" is port data, not a guess.
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, smoke=False, boot_timeout=3.0)
    board = farm.start("esp32", runtime="pypi", manual_reset=True)
    events: list[station.StationEvent] = []

    [r] = station.run_boards([board.port], plan, on_event=events.append).results

    assert r.state == "failed" and r.stage == "provisioning", (r.state, r.reason)
    assert not any("press RESET" in e.message for e in events)


def test_invoke_provision_with_a_registry_refuses_a_hostname_another_board_holds(tmp_path):
    from station_peers import E2E

    db = tmp_path / "w.db"
    reg = Registry(db)
    reg.see("24:0a:c4:aa:bb:cc")                                   # sticker 1
    reg.record_provision("24:0a:c4:aa:bb:cc", ok=True, hostname="lab-02")
    peer = E2E.PtyPeer(tmp_path / "board", runtime="pypi").start()
    try:
        proc = _invoke("provision", "--ports", peer.port, "--hostname", "lab-{index:02d}", "--registry", str(db),
                       "--json")
        out, err = proc.communicate(timeout=120)
    finally:
        peer.stop()
    assert proc.returncode == 1, out + err
    [res] = json.loads(out)
    assert res["stage"] == "name" and "hostname 'lab-02' is already board 24:0a:c4:aa:bb:cc's" in res["error"]
    assert not (tmp_path / "board" / "workshop.json").exists()
    assert Registry(db).get("24:0a:c4:aa:bb:cc").hostname == "lab-02"


def test_time_budgets_are_seconds_and_a_bad_one_names_its_option():
    assert station.budgets(boot_timeout="45", repl_timeout=2.5, reset_probe=None) == {"boot_timeout": 45.0,
                                                                                     "repl_timeout": 2.5}
    for bad in ("soon", "0", "-1", "nan", "inf"):
        with pytest.raises(station.StationError, match=rf"^--reset-wait: expected seconds > 0, got '{bad}'$"):
            station.budgets(reset_wait=bad)
    assert set(station.BUDGETS) <= set(station.Plan.__dataclass_fields__)


def test_the_budget_help_states_the_plans_defaults():
    import importlib.util

    spec = importlib.util.spec_from_file_location("kit_tasks", REPO / "tasks.py")
    assert spec and spec.loader
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    assert set(tasks._BUDGET_HELP) == set(station.BUDGETS)
    for name in station.BUDGETS:
        default = station.Plan.__dataclass_fields__[name].default
        assert f"(default {default:g}" in tasks._BUDGET_HELP[name], (name, default)


@pytest.mark.parametrize("task", ["station", "flash"])
def test_invoke_refuses_a_bad_budget_before_touching_a_board(task, tmp_path):
    proc = _invoke(task, "--board", "ESP32_GENERIC", "--repl-timeout", "soon", "--provision", "nowhere.toml")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "--repl-timeout: expected seconds > 0, got 'soon'" in out + err and "Traceback" not in err


def test_a_board_whose_reset_is_never_pressed_fails_after_reset_wait_naming_it(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC_S2", "esp32s2", size=16 * 1024)
    plan = plan_for(tmp_path, image_dir, smoke=False, reset_probe=0.5, reset_wait=1.5)
    board = farm.start("esp32s2", name="s2", runtime="pypi", reenumerate=True, manual_reset=True)
    hub.plug(board, serial="S2NEVER")
    t0 = time.monotonic()
    report = station.watch(plan, station.FolderSource(hub.folder), on_event=lambda e: None, stop_after=1)
    [r] = report.results
    assert r.state == "failed" and "RESET was not pressed within 1.5 s" in r.reason, (r.state, r.reason)
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("args, message", [
    (["broker", "--port", "99999"], "--port: expected a port number 1..65535, got '99999'"),
    (["fleet", "exec", "1", "--all", "--jobs", "x"], "--jobs: expected a whole number >= 1, got 'x'"),
    (["roster", "--wait", "soon"], "--wait: expected seconds >= 0, got 'soon'"),
    (["identify", "--all", "--seconds", "x"], "--seconds: expected seconds > 0, got 'x'"),
    (["smoke", "--baud", "100"], "--baud: expected a baud rate such as 115200 (>= 300), got '100'"),
    (["identify", "--baud", "96OO"], "--baud: expected a baud rate such as 115200 (>= 300), got '96OO'"),
])
def test_a_number_typed_wrong_on_the_command_line_is_a_named_error_not_a_traceback(args, message):
    # Before, int defaults were cast by invoke itself ("invalid literal for int()" and a traceback).
    proc = _invoke(*args)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and message in out + err and "Traceback" not in err, out + err


def test_a_ports_dir_takes_known_esp_bridges_only_unless_all_ports(tmp_path):
    """--ports-dir dropped the known-bridge filter: a link named random-name was flashed, and
    --all-ports changed nothing. A link is judged by its device's USB ids when pyserial knows
    them, else by its by-id name; --all-ports takes every one."""
    import pty

    fds = []
    names = ["usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_0001-if00-port0",
             "usb-1a86_USB2.0-Serial-if00-port0", "usb-FTDI_FT232R_USB_UART_A50285BI-if00-port0",
             "usb-Espressif_USB_JTAG_serial_debug_unit_F4:12:FA:00:00:01-if00",
             "usb-Prolific_Technology_Inc._USB-Serial_Controller-if00-port0", "random-name", "ttyUSB0"]
    folder = tmp_path / "by-id"
    folder.mkdir()
    for name in names:
        master, slave = pty.openpty()
        fds += [master, slave]
        (folder / name).symlink_to(os.ttyname(slave))
    try:
        known = {Path(p.by_id).name: p for p in station.default_source(folder).scan()}
        every = {Path(p.by_id).name for p in station.default_source(folder, all_ports=True).scan()}
    finally:
        for fd in fds:
            os.close(fd)
    assert set(known) == set(names[:4])
    assert [known[n].bridge for n in names[:4]] == ["CP210x", "CH34x", "FTDI", "Espressif USB"]
    assert known[names[0]].serial_number == "0001"
    assert every == set(names)


@pytest.mark.parametrize("value", ["a b", "bad:host:x"])
def test_invoke_station_refuses_a_broker_that_is_no_host_before_watching(value, tmp_path):
    """station --smoke --network took --mqtt 'bad:host:x' and failed each board after its flash."""
    image = tmp_path / "firmware.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    proc = _invoke("station", "--image", str(image), "--offset", "0x1000", "--ports-dir", str(tmp_path),
                   "--network", "--mqtt", value)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, out + err
    assert f"--mqtt {value!r}: expected a host name or IP address" in " ".join(err.split()), err
    assert "watching" not in out


def test_the_live_view_at_80_columns_keeps_every_note_readable_and_counts_interrupted_apart(farm, tmp_path):
    """At 80 columns the note column shrank to one letter ('unplug me' one letter per line) and
    the counter said 'failed 2' for one failed and one interrupted board. The live table follows
    the shared width rule (render.LiveTable); the counter names each way a journey ended."""
    from support import Terminal

    hub = HotPlug(tmp_path / "by-id")
    make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    ready, wrong, hung = (farm.start("esp32", runtime=None), farm.start("esp32c3", runtime=None),
                          farm.start("esp32", runtime=None, hang_stub=True))
    jsonl = tmp_path / "events.jsonl"
    argv = [str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "station", "--board", "ESP32_GENERIC",
            "--dist", str(tmp_path / "dist"), "--ports-dir", str(hub.folder), "--registry", str(tmp_path / "w.db"),
            "--json-out", str(jsonl), "--logs", str(tmp_path / "logs")]
    term = Terminal(argv, 80)     # the station on an 80-column terminal
    try:
        for board, serial in ((ready, "RDY0001"), (wrong, "C3000001"), (hung, "HUNG0001")):
            hub.plug(board, serial=serial)
        deadline = time.monotonic() + 90
        while True:
            term.read(0.2)
            events = [json.loads(x) for x in jsonl.read_text().splitlines()] if jsonl.exists() else []
            finals = {e["key"] for e in events if e["final"]}
            if len(finals) >= 2 and any(e["stage"] == "stub" for e in events):
                break
            assert time.monotonic() < deadline, events[-5:]
        term.read(0.5)
        term.interrupt()
        term.read(10)
    finally:
        term.close()
    text = term.text
    screen = text.replace("\r", "\n").splitlines()
    live = text[:text.index("Station interrupted")].replace("\r", "\n").splitlines()   # the live frames
    # A live table wider than the terminal is folded at its 80th column (render.LiveTable): join
    # each full screen line with the next to read the table's own lines.
    lines: list[str] = []
    for line in live:
        if lines and len(lines[-1]) % 80 == 0 and lines[-1].startswith(("│", "┃", "┏", "┡", "└")):
            lines[-1] += line
        else:
            lines.append(line)
    row = next((line for line in reversed(lines) if line.startswith(f"│ {ready.port} ") and "ready" in line), "")
    assert "│ unplug me " in row, "\n".join(lines[-40:])      # not one letter per line
    assert any("found ESP32-C3, but" in line for line in lines), "\n".join(lines[-40:])
    assert any("ready 1 · failed 1 · in progress 0 · interrupted 1" in line for line in screen), text[-3000:]
    assert not any("failed 2" in line for line in screen), text[-3000:]


@pytest.mark.parametrize("task", ["flash", "station", "provision", "smoke"])
def test_help_names_every_option_and_h_is_help_not_an_option(task):
    """Invoke's automatic short flags ran out of letters ('--=STRING, --boot-timeout') and took -h
    (station --reflash, provision --hostname, smoke --http-url): `station --auto -h` started a
    reflashing station. These tasks have long options only; -h after them is help."""
    invoke = str(Path(sys.executable).parent / "invoke")
    helped = subprocess.run([invoke, "-r", str(REPO), "--help", task], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "--=" not in helped.stdout and "-h," not in helped.stdout, helped.stdout
    first = {"flash": "--board", "station": "--auto", "provision": "--ports", "smoke": "--ports"}[task]
    proc = subprocess.run([invoke, "-r", str(REPO), task, first, *(["x"] if first != "--auto" else []), "-h"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage:"), proc.stdout + proc.stderr
    assert "watching" not in proc.stdout


def test_invoke_station_refuses_stop_after_0_before_watching(tmp_path):
    """--stop-after 0 was refused only after 'watching ... for boards' was printed."""
    image = tmp_path / "firmware.bin"
    image.write_bytes(b"\xe9" + bytes(4095))
    proc = _invoke("station", "--image", str(image), "--offset", "0x1000", "--ports-dir", str(tmp_path),
                   "--stop-after", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Traceback" not in err, out + err
    assert "--stop-after: expected a whole number >= 1, got '0'" in " ".join(err.split()) and "watching" not in out
