"""The station's journeys when things go wrong around them (interrupted, re-plugged, raced), on real peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from station_peers import RADIO_DOUBLE, HotPlug, make_dist
from workshop import station
from workshop.flash import FlashImage
from workshop.registry import Registry

from support import interrupt

REPO = Path(__file__).resolve().parents[3]


def flash_only(tmp_path: Path, image_dir: Path, **kw) -> station.Plan:
    return station.Plan(images=FlashImage.from_dist(image_dir), registry=Registry(tmp_path / "workshop.db"),
                        log_dir=tmp_path / "logs", **kw)


def test_an_interrupted_flash_is_never_taken_as_already_ready_afterwards(farm, tmp_path):
    board = farm.start("esp32", runtime=None, fast_slip=True)
    size = 512 * 1024
    first = make_dist(tmp_path / "one", "ESP32_GENERIC", "esp32", size=size, seed=1)
    other = make_dist(tmp_path / "two", "ESP32_GENERIC", "esp32", size=size, seed=2)
    plan = flash_only(tmp_path, first)
    [r1] = station.run_boards([board.port], plan).results
    assert r1.ok, r1.reason

    # Run 2: another image, Ctrl-C at ~20 % of the write.
    cancel = threading.Event()
    states_while_writing: list[str] = []

    def on_event(e: station.StationEvent) -> None:
        if e.stage == "writing" and (e.percent or 0) > 20 and not cancel.is_set():
            states_while_writing.append(plan.registry.get(board.mac).state)
            cancel.set()

    [r2] = station.run_boards([board.port], flash_only(tmp_path, other), on_event=on_event, cancel=cancel).results
    assert r2.state == "interrupted" and r2.left_as == "interrupted during writing: reflash before use", r2.left_as
    assert states_while_writing == ["flashing"]         # a run killed there leaves no "ready" behind either
    rec = plan.registry.get(board.mac)
    assert (rec.state, rec.flash_ok) == ("failed", False)

    # Run 3, the first image again: flashed, not "already ready with this image".
    [r3] = station.run_boards([board.port], plan).results
    assert r3.ok and r3.recognized is None, (r3.state, r3.recognized)
    assert board.flash()[0x1000:0x1000 + size] == (first / "firmware.bin").read_bytes()


def _invoke(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_for_event(jsonl: Path, stage: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if jsonl.exists() and any(json.loads(x)["stage"] == stage for x in jsonl.read_text().splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"no {stage!r} event within {timeout} s")


def test_ctrl_c_during_provisioning_stops_the_process_and_its_writes_within_2_s(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=32 * 1024)
    board = farm.start("esp32", runtime="pypi")
    hub.plug(board, serial="SER0001")
    lesson = tmp_path / "lesson"
    lesson.mkdir()
    for i in range(20):                               # tens of seconds of paced writes
        (lesson / f"f{i}.py").write_text("x = 1\n" * 400)
    cfg = tmp_path / "workshop.toml"
    cfg.write_text('hostname = "lab-{index:02d}"\n')
    jsonl = tmp_path / "events.jsonl"
    proc = _invoke("station", "--board", "ESP32_GENERIC", "--dist", str(tmp_path / "dist"), "--ports-dir",
                   str(hub.folder), "--registry", str(tmp_path / "w.db"), "--json-out", str(jsonl),
                   "--logs", str(tmp_path / "logs"), "--provision", str(cfg), "--files", str(lesson))
    try:
        _wait_for_event(jsonl, "provisioning")
        time.sleep(1.5)                               # in the middle of the lesson files
        out, err, elapsed = interrupt(proc)
    finally:
        proc.kill()
    written = sorted(p.name for p in board.root.glob("f*.py"))
    time.sleep(1.0)
    assert elapsed < 2.0, (elapsed, out[-500:])
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "Traceback" not in err
    assert len(written) < 20
    assert sorted(p.name for p in board.root.glob("f*.py")) == written      # nothing written after the exit


def _watch(plan: station.Plan, folder: Path, events: list, cancel: threading.Event,
           **kw) -> tuple[threading.Thread, dict]:
    out: dict[str, station.StationReport] = {}
    # all_ports: some links here are named as bare device nodes (ttyUSB0), which tell no bridge.
    t = threading.Thread(target=lambda: out.setdefault("r", station.watch(
        plan, station.FolderSource(folder, all_ports=True), on_event=events.append, cancel=cancel, **kw)),
        daemon=True)
    t.start()
    return t, out


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def _lesson(tmp_path: Path, n: int, lines: int = 300) -> Path:
    folder = tmp_path / "lesson"
    folder.mkdir()
    for i in range(n):
        (folder / f"f{i}.py").write_text("x = 1\n" * lines)
    return folder


def _summary(report: station.StationReport) -> list[tuple[str, str, str | None]]:
    return [(r.key, r.state, r.reason) for r in report.results]


def test_a_serial_less_board_plugged_while_another_one_provisions_gets_its_own_journey(farm, tmp_path):
    # Boards without a USB serial number cannot be told apart by their port: only while a journey
    # waits for its own board after the reset may a new serial-less port be taken to be it.
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = flash_only(tmp_path, image_dir, files=_lesson(tmp_path, 6))
    a = farm.start("esp32", name="a", runtime="pypi")
    b = farm.start("esp32", name="b", runtime="pypi")
    events: list[station.StationEvent] = []
    cancel = threading.Event()
    t, out = _watch(plan, hub.folder, events, cancel, stop_after=2)
    hub.plug(a, name="ttyUSB0")
    _wait(lambda: any(e.stage == "provisioning" for e in events), 60, "board a provisioning")
    hub.plug(b, name="ttyUSB1")
    t.join(120)
    cancel.set()
    t.join(5)
    report = out["r"]
    assert sorted((r.key, r.state) for r in report.results) == [
        (str(hub.folder / "ttyUSB0"), "ready"), (str(hub.folder / "ttyUSB1"), "ready")], _summary(report)
    assert (b.root / "f5.py").exists()


def test_a_new_board_on_the_device_node_of_a_board_still_ending_gets_its_journey_after_that_one(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = flash_only(tmp_path, image_dir, files=_lesson(tmp_path, 20, 400), boot_timeout=3.0)
    a = farm.start("esp32", name="a", runtime="pypi")
    events: list[station.StationEvent] = []
    cancel = threading.Event()
    t, out = _watch(plan, hub.folder, events, cancel, stop_after=2)
    link = hub.plug(a, serial="AAAA0001")
    _wait(lambda: any(e.stage == "provisioning" for e in events), 60, "board a provisioning")
    time.sleep(1.0)
    old = a.port
    a.kill()                                         # pulled out mid-provision...
    hub.unplug(link)
    time.sleep(0.5)
    b = farm.start("esp32", name="b", runtime="pypi")   # ...and another board gets its device node
    if b.port != old:
        cancel.set()
        pytest.skip(f"the PTY number was not reused ({old} -> {b.port})")
    hub.plug(b, serial="BBBB0002")
    t.join(120)
    cancel.set()
    t.join(5)
    report = out["r"]
    by_key = {r.key: r for r in report.results}
    assert set(by_key) == {str(link), str(hub.folder / HotPlug.link_name("BBBB0002"))}, _summary(report)
    assert by_key[str(link)].state == "unplugged", _summary(report)
    assert by_key[str(hub.folder / HotPlug.link_name("BBBB0002"))].state == "ready", _summary(report)


class FollowLink(threading.Thread):
    """The USB side of a board that re-enumerates after every reset: its link follows each new port."""

    def __init__(self, hub: HotPlug, peer, name: str) -> None:
        super().__init__(daemon=True)
        self.hub, self.peer, self.name, self.stop = hub, peer, name, threading.Event()

    def run(self) -> None:
        linked = self.peer.port
        while not self.stop.is_set():
            now = self.peer.port
            if now and now != linked:
                self.hub.plug(self.peer, name=self.name)
                linked = now
            time.sleep(0.02)


def test_a_native_usb_board_back_after_its_last_reset_is_not_taken_as_a_new_board(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC_S3", "esp32s3", size=32 * 1024, offset=0)
    plan = flash_only(tmp_path, image_dir)
    native = farm.start("esp32s3", name="native", runtime="pypi", reenumerate=True, reenumerate_always=True)
    name = HotPlug.link_name("F4:12:FA:00:00:01")
    hub.plug(native, name=name)
    follower = FollowLink(hub, native, name)
    follower.start()
    results = []
    try:
        for _run in ("flashed", "recognized"):
            before = native.port
            events: list[station.StationEvent] = []
            cancel = threading.Event()
            t, out = _watch(plan, hub.folder, events, cancel)
            _wait(lambda: any(e.final for e in events), 60, "the journey's end")
            _wait(lambda: native.port != before, 10, "the re-enumeration after the last reset")
            time.sleep(1.5)                               # scans enough to see it back
            cancel.set()
            t.join(10)
            report = out["r"]
            assert len(report.results) == 1, _summary(report)
            assert any(e.stage == "ignored" and "after its last reset" in e.message for e in events), \
                [(e.stage, e.message) for e in events]           # said, not silently swallowed
            results += report.results
    finally:
        follower.stop.set()
    flashed, recognized = results
    assert flashed.ok and flashed.recognized is None, _summary(report)
    assert recognized.ok and recognized.recognized == "sticker 1, already ready with this image"


def test_two_boards_in_one_run_never_get_one_hostname(farm, tmp_path):
    from workshop.provision import ProvisionConfig

    boards = [farm.start("esp32", name=n, runtime="pypi", mac=mac)
              for n, mac in (("a", "24:0a:c4:01:12:34"), ("b", "24:0a:c4:02:12:34"))]   # one {mac4}
    for b in boards:
        (b.root / "lib").mkdir(parents=True)
        (b.root / "lib" / "network.py").write_text(RADIO_DOUBLE % bytes.fromhex(b.mac.replace(":", "")))
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = flash_only(tmp_path, image_dir, provision=ProvisionConfig(hostname="ws-{mac4}"))

    report = station.run_boards([b.port for b in boards], plan)

    states = sorted((r.state, r.reason or "") for r in report.results)
    assert states[0][0] == "failed" and states[1] == ("ready", ""), states
    assert "hostname 'ws-1234' is already board 24:0a:c4:0" in states[0][1] and "in this run" in states[0][1]
    named = [b for b in boards if (b.root / "workshop.json").exists()]
    assert len(named) == 1 and json.loads((named[0].root / "workshop.json").read_text())["hostname"] == "ws-1234"
    assert [r.mac for r in plan.registry.boards() if r.hostname == "ws-1234"] == [named[0].mac]


def test_a_serial_less_board_unplugged_mid_provision_is_reported_where_it_was_without_reset_wait(farm, tmp_path):
    hub = HotPlug(tmp_path / "by-id")
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = flash_only(tmp_path, image_dir, files=_lesson(tmp_path, 20, 400), boot_timeout=3.0)
    board = farm.start("esp32", runtime="pypi")
    events: list[station.StationEvent] = []
    cancel = threading.Event()
    t, out = _watch(plan, hub.folder, events, cancel, stop_after=1)
    link = hub.plug(board, name="ttyUSB0")                      # a CH340: no serial number
    _wait(lambda: any(e.stage == "provisioning" for e in events), 60, "provisioning")
    time.sleep(1.0)
    t0 = time.monotonic()
    board.kill()
    hub.unplug(link)
    t.join(plan.reset_wait + 30)
    cancel.set()
    elapsed = time.monotonic() - t0
    [r] = out["r"].results
    assert (r.state, r.stage) == ("unplugged", "provisioning"), (r.state, r.stage, r.reason)
    assert elapsed < plan.boot_timeout + 3, elapsed            # not after reset_wait (120 s)
    assert not any("press RESET" in e.message for e in events)


def test_a_smoke_check_that_outlasts_the_repl_timeout_names_the_stations_option(farm, tmp_path):
    from station_peers import FROZEN_UNIX
    from workshop import smoke

    if not FROZEN_UNIX.exists():
        pytest.skip("dist/UNIX/micropython not built (invoke build --board UNIX)")
    board = farm.start("esp32")
    (board.root / "lib").mkdir(parents=True)
    (board.root / "lib" / "network.py").write_text("import time\ntime.sleep(3)\n")    # a slow board's import
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    plan = flash_only(tmp_path, image_dir, smoke=True, repl_timeout=1.0,
                      expected=lambda _image: smoke.Expected.from_build(REPO / "dist" / "UNIX"))

    [r] = station.run_boards([board.port], plan).results

    assert r.state == "failed" and "did not finish within 1 s" in r.reason, r.reason
    assert r.reason.endswith("(a slow or emulated board: raise --repl-timeout)"), r.reason


def test_a_hostname_is_one_board_s_in_any_mac_spelling_and_free_again_when_its_board_failed():
    tracker = station.PortTracker(station.FixedSource(()))
    assert tracker.reserve_hostname("lab-01", "24:0A:C4:01:12:34") is None
    assert tracker.reserve_hostname("LAB-01", "240ac4011234") is None          # the same board, respelt
    assert tracker.reserve_hostname("lab-01", "24:0a:c4:99:99:99") == "24:0a:c4:01:12:34"
    tracker.free_hostname("lab-01", "24:0a:c4:01:12:34")                     # it failed provisioning
    assert tracker.reserve_hostname("lab-01", "24:0a:c4:99:99:99") is None    # its replacement takes it
    assert tracker.reserve_hostname("lab-02", "chip-00a1b2") is None          # an ESP8266 chip id as it is
    assert tracker.reserve_hostname("lab-02", "CHIP-00A1B2") is None


def test_a_link_unplugged_while_the_folder_is_scanned_is_never_taken_for_a_device_node(tmp_path, monkeypatch):
    """The hot-plug folder was scanned as resolve() then is_symlink(): a by-id link removed between
    the two (the board unplugged just then) came back as a port whose device was the link's own
    path, a phantom board whose journey failed as 'unplugged' and counted towards --stop-after
    (CI saw it: the re-plugged board then never got its journey). The link is the board's port
    with its target, or, once gone, not there at all."""
    import pathlib

    master, slave = os.openpty()
    try:
        node = os.ttyname(slave)
        folder = tmp_path / "by-id"
        folder.mkdir()
        link = folder / "usb-Espressif_USB_JTAG_serial_debug_unit_AB12CD-if00"
        link.symlink_to(node)
        real_resolve = pathlib.Path.resolve

        def resolve_then_unplug(self, strict=False):
            target = real_resolve(self, strict=strict)
            if self == link:
                link.unlink()                   # unplugged right after its target was read
            return target

        monkeypatch.setattr(pathlib.Path, "resolve", resolve_then_unplug)
        [port] = station.FolderSource(folder).scan()
        assert (port.device, port.by_id, port.serial_number) == (node, str(link), "AB12CD")
        assert station.FolderSource(folder).scan() == []
    finally:
        os.close(master)
        os.close(slave)
