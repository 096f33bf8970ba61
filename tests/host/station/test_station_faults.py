"""The station's journeys when things go wrong around them (interrupted, re-plugged, raced), on real peers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from station_peers import HotPlug, make_dist
from workshop import station
from workshop.flash import FlashImage
from workshop.registry import Registry

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
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
    written = sorted(p.name for p in board.root.glob("f*.py"))
    time.sleep(1.0)
    assert elapsed < 2.0, (elapsed, out[-500:])
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "Traceback" not in err
    assert len(written) < 20
    assert sorted(p.name for p in board.root.glob("f*.py")) == written      # nothing written after the exit
