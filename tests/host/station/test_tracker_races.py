"""The station's port bookkeeping (PortTracker, FolderSource, SystemSource, watch) at the unlucky
moments of a classroom: node numbers reused by the next board, udev's by-id link made after its
node, boards that share a USB serial (CP2102 clones say "0001"), a loose cable re-plugged twice.

The flash stage is a scripted stand-in here (it still calls the station's gate, so MAC claims are
the real ones): these are races in the bookkeeping, and they need exact interleavings that real
esptool sessions cannot be made to hit every run. Device nodes are files in a temporary folder,
so a node "reused" by the next board is the same path for certain (as ttyUSB0 and pts numbers are,
lowest free first). The journeys through real esptool and real REPLs are in test_station.py."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from workshop import devices, station
from workshop import flash as _flash
from workshop.flash import DeviceResult, FlashImage, Stage, State

MAC_A, MAC_B = "24:0a:c4:aa:aa:aa", "24:0a:c4:bb:bb:bb"


@dataclass
class ScriptedFlash:
    """flash_device: reads the MAC `macs` gives the node (after `connect_s`), calls the station's
    gate, then "writes" for `write_s`; `calls` lists the nodes it was asked to flash."""
    macs: dict[str, str] = field(default_factory=dict)
    write_s: float = 0.3
    connect_s: float = 0.0
    calls: list[str] = field(default_factory=list)

    def __call__(self, port, images, options=None, on_event=None, log_path=None, cancel=None, gate=None):
        self.calls.append(port.device)
        r = DeviceResult(port=port.device, chip="esp32", board="fw", stage=Stage.CONNECTING)
        time.sleep(self.connect_s)
        r.mac = self.macs.get(port.device, "24:0a:c4:00:00:01")
        if gate is not None:
            try:
                skip = gate(r)
            except _flash.Refused as e:
                r.state, r.error, r.error_kind = State.FAILED, str(e), e.kind
                return r
            if skip:
                r.state, r.error = State.SKIPPED, skip
                return r
        time.sleep(self.write_s)
        r.state, r.verified, r.stage = State.OK, True, Stage.DONE
        return r


class Nodes:
    """Device nodes as files: plug() makes one, unplug() removes it; a name comes back as it was."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def plug(self, name: str) -> str:
        path = self.root / name
        path.write_bytes(b"")
        return str(path)

    def unplug(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)


def cp2102_link(folder: Path, serial: str, target: str) -> Path:
    link = folder / f"usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_{serial}-if00-port0"
    tmp = link.with_name(link.name + ".new")
    tmp.symlink_to(target)
    tmp.replace(link)
    return link


def an_image(tmp: Path) -> FlashImage:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "fw.bin").write_bytes(b"\0" * 16)
    return FlashImage.from_file(tmp / "fw.bin", 0x1000)


def lesson_plan(tmp: Path) -> station.Plan:
    """Flash, then a provisioning stage (stubbed by the tests): the path where a journey ends
    without a last reset (linger 0), as with lesson files."""
    (tmp / "lesson").mkdir(exist_ok=True)
    return station.Plan(images=an_image(tmp / "img"), files=tmp / "lesson", log_dir=tmp / "logs", settle=0.0)


def watching(plan, source, stop_after=None):
    events: list[station.StationEvent] = []
    cancel = threading.Event()
    out: dict[str, station.StationReport] = {}
    runner = threading.Thread(target=lambda: out.setdefault("r", station.watch(
        plan, source, on_event=events.append, cancel=cancel, stop_after=stop_after, poll=0.05)), daemon=True)
    runner.start()
    return runner, cancel, events, out


def until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def summary(report: station.StationReport):
    return [(r.key, r.port, r.state, r.reason) for r in report.results]


def test_two_boards_swapped_between_sockets_are_not_refused_as_clones(tmp_path, monkeypatch):
    """A MAC's claim outlived its board: a claim held while *a* device existed at the claimant's old
    node, and the next board plugged in takes that node. Boards A (node X) and B (node Y), both
    unplugged; B comes back on X, A on Y: each was refused as the other's clone ("MAC ... already
    seen on X"), two boards failed that were fine."""
    flash = ScriptedFlash(write_s=0.2)
    monkeypatch.setattr(_flash, "flash_device", flash)
    monkeypatch.setattr(station._Journey, "provision", lambda self, port: True)
    nodes, folder = Nodes(tmp_path / "dev"), tmp_path / "by-id"
    folder.mkdir()
    runner, cancel, events, out = watching(lesson_plan(tmp_path), station.FolderSource(folder), stop_after=4)
    try:
        x, y = nodes.plug("ttyUSB0"), nodes.plug("ttyUSB1")
        flash.macs.update({x: MAC_A, y: MAC_B})
        a, b = cp2102_link(folder, "AAAA", x), cp2102_link(folder, "BBBB", y)
        until(lambda: sum(e.final for e in events) == 2)
        for link, node in ((a, x), (b, y)):
            link.unlink()
            nodes.unplug(node)
        time.sleep(0.3)                           # the station sees both go
        flash.macs.update({x: MAC_B, y: MAC_A})   # B on ttyUSB0 now, A on ttyUSB1
        flash.connect_s = 0.3                     # both plugged in by the time their MACs are read
        cp2102_link(folder, "BBBB", nodes.plug("ttyUSB0"))
        cp2102_link(folder, "AAAA", nodes.plug("ttyUSB1"))
        runner.join(20)
    finally:
        cancel.set()
        runner.join(5)
    assert [r.state for r in out["r"].results] == ["ready"] * 4, summary(out["r"])


def test_a_board_whose_by_id_link_comes_after_its_node_gets_one_journey(tmp_path, monkeypatch):
    """Without --ports-dir (pyserial's list): udev makes /dev/serial/by-id's link a moment after the
    kernel's node. A scan between the two saw the port without its link, the next one with it: the
    same board "appeared" again, was parked for its own journey, handed back when that ended, and
    flashed a second time (and --stop-after 2 stopped with one board plugged)."""
    node = Nodes(tmp_path / "dev").plug("ttyUSB0")
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    link = by_id / "usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_S1-if00-port0"
    scans: list[float] = []
    real_links = devices._by_id_links

    def comports():
        scans.append(time.monotonic())
        if len(scans) == 1:
            link.symlink_to(node)                 # udev's rule, just after the first scan
        return [SimpleNamespace(device=node, vid=0x10C4, pid=0xEA60, serial_number="S1", description="CP2102")]

    monkeypatch.setattr(devices.list_ports, "comports", comports)
    monkeypatch.setattr(devices, "_by_id_links", lambda: real_links(by_id))
    flash = ScriptedFlash(write_s=0.5)
    monkeypatch.setattr(_flash, "flash_device", flash)
    monkeypatch.setattr(station._Journey, "provision", lambda self, port: (time.sleep(0.3), True)[1])
    runner, cancel, events, out = watching(lesson_plan(tmp_path), station.SystemSource(), stop_after=2)
    try:
        runner.join(4)
        stopped_by_itself = not runner.is_alive()
    finally:
        cancel.set()
        runner.join(5)
    assert len(out["r"].results) == 1 and flash.calls == [node], (summary(out["r"]), flash.calls)
    assert not stopped_by_itself
    assert not [e for e in events if e.stage == "vanished"], [(e.key, e.message) for e in events]


def two_clones_watched(tmp_path, monkeypatch, write_s: float):
    """Two CP2102 boards that both report USB serial 0001 (on pyserial's list as it is plugged in:
    the first one only, to begin with), flashed by a ScriptedFlash, and watch() running on the
    system list: (first, second, plugged, flash, (runner, cancel, events, out))."""
    nodes = Nodes(tmp_path / "dev")
    a, b = nodes.plug("ttyUSB0"), nodes.plug("ttyUSB1")
    plugged = [a]

    def comports():
        return [SimpleNamespace(device=p, vid=0x10C4, pid=0xEA60, serial_number="0001", description="CP2102")
                for p in list(plugged)]

    monkeypatch.setattr(devices.list_ports, "comports", comports)
    monkeypatch.setattr(devices, "_by_id_links", lambda: {})      # (their by-id names collide anyway)
    flash = ScriptedFlash(write_s=write_s, macs={a: MAC_A, b: MAC_B})
    monkeypatch.setattr(_flash, "flash_device", flash)
    plan = station.Plan(images=an_image(tmp_path), log_dir=tmp_path / "logs")      # flash only
    return a, b, plugged, flash, watching(plan, station.SystemSource(), stop_after=2)


def test_a_second_clone_plugged_while_the_first_flashes_gets_its_journey(tmp_path, monkeypatch):
    """Same USB serial was taken for same board: the second clone was parked for the first one's
    journey, which never asked for it, and dropped when that journey ended: never flashed, and
    --stop-after 2 never stopped."""
    a, b, plugged, flash, (runner, cancel, events, out) = two_clones_watched(tmp_path, monkeypatch, 1.0)
    try:
        until(lambda: flash.calls == [a])
        plugged.append(b)                         # the next board, while the first is written
        runner.join(5)
        stopped = not runner.is_alive()
    finally:
        cancel.set()
        runner.join(5)
    assert sorted(flash.calls) == [a, b], (summary(out["r"]), flash.calls)
    assert stopped and [r.state for r in out["r"].results] == ["ready", "ready"], summary(out["r"])


def test_a_clone_plugged_next_to_a_finished_one_is_not_ignored_as_its_reset(tmp_path, monkeypatch):
    """A board with the finished board's USB serial, plugged while that one is still there, was
    'ignored' as the finished board back after its last reset."""
    a, b, plugged, flash, (runner, cancel, events, out) = two_clones_watched(tmp_path, monkeypatch, 0.2)
    try:
        until(lambda: any(e.final for e in events))
        plugged.append(b)                         # the next board; the first one, ready, still plugged
        runner.join(4)
    finally:
        cancel.set()
        runner.join(5)
    ignored = [(e.port, e.message) for e in events if e.stage == "ignored"]
    assert sorted(flash.calls) == [a, b] and not ignored, (summary(out["r"]), flash.calls, ignored)


def test_a_board_replugged_twice_while_it_flashes_gets_one_more_journey_not_two(tmp_path, monkeypatch):
    """A loose cable: the first re-plug was parked for the running journey and kept after it was
    gone again; the second (the same node and link) was deferred behind the journey; when the
    journey ended both started one: one board, three journeys, flashed three times."""
    release = threading.Event()
    calls: list[str] = []

    def flash(port, images, options=None, on_event=None, log_path=None, cancel=None, gate=None):
        calls.append(port.device)
        r = DeviceResult(port=port.device, chip="esp32", board="fw", mac=MAC_A, stage=Stage.WRITING)
        if len(calls) == 1:
            release.wait(10)                      # the first attempt: its board is pulled meanwhile
            r.state, r.error, r.error_kind = State.FAILED, "writing: the port vanished", "esptool"
            return r
        time.sleep(0.3)
        r.state, r.verified, r.stage = State.OK, True, Stage.DONE
        return r

    monkeypatch.setattr(_flash, "flash_device", flash)
    monkeypatch.setattr(station._Journey, "provision", lambda self, port: True)
    nodes, folder = Nodes(tmp_path / "dev"), tmp_path / "by-id"
    folder.mkdir()
    runner, cancel, events, out = watching(lesson_plan(tmp_path), station.FolderSource(folder))
    try:
        node = nodes.plug("ttyUSB0")
        link = cp2102_link(folder, "S1", node)
        until(lambda: bool(calls))
        for _ in range(2):                        # unplugged, plugged back on the same node
            link.unlink()
            nodes.unplug(node)
            time.sleep(0.3)
            node = nodes.plug("ttyUSB0")
            link = cp2102_link(folder, "S1", node)
            time.sleep(0.3)
        release.set()
        until(lambda: sum(e.final for e in events) >= 2)
        time.sleep(1.5)                           # a third journey would have started by now
    finally:
        cancel.set()
        runner.join(5)
    assert [r.state for r in out["r"].results] == ["failed", "ready"], (summary(out["r"]), calls)


def test_a_native_usb_board_back_on_the_same_node_after_its_reset_is_one_journey(tmp_path, monkeypatch):
    """An ESP32-S3 on its own USB re-enumerates after the flash's reset, and a lone board comes
    back on the same node (ttyACM0, lowest free) under the same by-id link. Its return was parked
    for the journey, which found its port there and never asked; the journey then handed it back
    as a new board: a second journey for the same board (counted by --stop-after, listed twice)."""
    nodes, folder = Nodes(tmp_path / "dev"), tmp_path / "by-id"
    folder.mkdir()
    node = nodes.plug("ttyACM0")
    link = folder / "usb-Espressif_USB_JTAG_serial_debug_unit_F4:12:FA:00:00:01-if00"
    link.symlink_to(node)
    calls: list[str] = []

    def flash(port, images, options=None, on_event=None, log_path=None, cancel=None, gate=None):
        calls.append(port.device)
        r = DeviceResult(port=port.device, chip="esp32s3", board="fw", mac=MAC_A, stage=Stage.DONE)
        link.unlink()                             # the hard reset: gone from USB...
        nodes.unplug(node)
        time.sleep(0.3)
        nodes.plug("ttyACM0")                     # ...and back, on the same node and link
        link.symlink_to(node)
        time.sleep(0.3)
        r.state, r.verified = State.OK, True
        return r

    monkeypatch.setattr(_flash, "flash_device", flash)
    monkeypatch.setattr(station._Journey, "provision", lambda self, port: True)
    runner, cancel, events, out = watching(lesson_plan(tmp_path), station.FolderSource(folder), stop_after=2)
    try:
        until(lambda: any(e.final for e in events))
        runner.join(2)                            # a second journey would have started and ended by now
    finally:
        cancel.set()
        runner.join(5)
    assert [r.state for r in out["r"].results] == ["ready"] and calls == [node], (summary(out["r"]), calls)


def test_a_returning_board_parked_before_udev_named_its_port_is_still_handed_to_its_journey():
    """A native-USB board back on a new node after its reset, seen first without its by-id link
    (udev makes the link a moment later) and parked for its journey: once the link came, the
    parked port was dropped as gone, and the journey waiting for its board never got it ("did
    not come back after its reset")."""
    class Listed:
        ports: list[devices.SerialPort] = []

        def scan(self) -> list[devices.SerialPort]:
            return list(self.ports)

    listed = Listed()
    tracker = station.PortTracker(listed)
    link = "/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit_F4:12:FA:00:00:02-if00"
    serial = "F4:12:FA:00:00:02"
    listed.ports = [devices.SerialPort("/dev/ttyACM0", link, serial_number=serial)]
    tracker.refresh()
    tracker.own(serial, link)                     # its journey has it
    listed.ports = []                             # the reset: gone from USB
    tracker.refresh()
    back = devices.SerialPort("/dev/ttyACM1", None, serial_number=serial)
    listed.ports = [back]                         # back, its link not made yet
    appeared, _ = tracker.refresh()
    assert [tracker.offer(p) for p in appeared] == ["parked"]
    named = devices.SerialPort("/dev/ttyACM1", link, serial_number=serial)
    listed.ports = [named]                        # udev's link
    assert tracker.refresh() == ([], [])          # the same port, named: neither new nor gone
    got = tracker.wait_for(link, serial, 0.5, threading.Event())
    assert got == named
