"""The station's journeys when things go wrong around them (interrupted, re-plugged, raced), on real peers."""

from __future__ import annotations

import threading
from pathlib import Path

from station_peers import make_dist
from workshop import station
from workshop.flash import FlashImage
from workshop.registry import Registry


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
