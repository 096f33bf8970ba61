"""Every esptool stage is time-boxed: hangs become failures the retry ladder handles (real esptool)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import serial

from station_peers import make_dist
from workshop import flash
from workshop.flash import FlashImage, FlashOptions, Stage, State

REPO = Path(__file__).resolve().parents[3]


def test_a_default_stub_that_never_starts_is_flashed_with_the_legacy_stub_in_one_run(farm, tmp_path):
    board = farm.start("esp32", runtime=None, hang_stub=True)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=64 * 1024)
    events: list[flash.FlashEvent] = []
    t0 = time.monotonic()

    report = flash.flash_all([board.port], FlashImage.from_dist(image_dir), on_event=events.append,
                             log_dir=tmp_path / "logs")

    [r] = report.results
    assert r.ok, r.error
    # The hung stub was given up after its budget; no second try of the same stub at a lower baud.
    assert [a.attempt for a in r.attempts] == ["460800 baud, stub", "115200 baud, legacy stub"]
    assert r.attempts[0].stage == "stub" and "budget" in r.attempts[0].error
    log = Path(r.log_file).read_text()
    assert "stub overran its" in log and "Running stub flasher" in log
    hung_at = next(e for e in events if e.stage is Stage.STUB)
    retry = next(e for e in events if e.stage is Stage.RETRYING)
    assert "legacy stub" in retry.message
    assert time.monotonic() - t0 < 30
    data = board.flash()
    assert data[0x1000:0x1000 + 64 * 1024] == (image_dir / "firmware.bin").read_bytes()
    assert hung_at.attempt == 1


def test_plain_esptool_hangs_on_that_peer(farm):
    """The peer is a real hang, not a fast failure: esptool alone is still waiting after 12 s."""
    board = farm.start("esp32", runtime=None, hang_stub=True)
    proc = subprocess.Popen([sys.executable, "-m", "esptool", "--port", board.port, "--before", "no-reset",
                             "flash-id"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        proc.wait(timeout=12)
        raise AssertionError(f"esptool finished (exit {proc.returncode}): {proc.stdout.read()}")
    except subprocess.TimeoutExpired:
        pass
    finally:
        proc.kill()
        proc.wait()


def test_a_board_that_stalls_mid_write_fails_that_attempt_within_its_budget(farm, tmp_path):
    board = farm.start("esp32", runtime=None, stall_after=2)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=128 * 1024)
    budgets = flash.Budgets(write_base=2.0)
    options = FlashOptions(attempts=(flash.Attempt(460800, "2"),), budgets=budgets)
    t0 = time.monotonic()

    report = flash.flash_all([board.port], FlashImage.from_dist(image_dir), options, log_dir=tmp_path / "logs")

    [r] = report.results
    elapsed = time.monotonic() - t0
    assert (r.state, r.error_kind, r.verified) == (State.FAILED, "timeout", False)
    assert r.error.startswith("writing: no answer within its") and "131072 bytes at 0x1000" in r.error
    assert r.left_as == "partially written: flash again"
    assert elapsed < budgets.write(128 * 1024, 460800) + budgets.connect(3) + 3


def test_a_port_held_by_another_program_is_named_busy(farm, tmp_path):
    board = farm.start("esp32", runtime=None)
    holder = serial.Serial(board.port, exclusive=True)         # e.g. a terminal left open
    try:
        image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=8 * 1024)
        report = flash.flash_all([board.port], FlashImage.from_dist(image_dir), log_dir=tmp_path / "logs")
    finally:
        holder.close()
    [r] = report.results
    assert (r.state, r.error_kind, r.retries) == (State.FAILED, "port-busy", 0)
    assert "port busy: held by another program" in r.error


_SIGINT = r"""
import json, sys
from pathlib import Path
from workshop import flash
image, log_dir, *ports = sys.argv[1:]
def on_event(e):
    if e.stage is flash.Stage.STUB:
        print("STUB", flush=True)
report = flash.flash_all(ports, flash.FlashImage.from_dist(Path(image)), on_event=on_event, log_dir=Path(log_dir),
                         options=flash.FlashOptions(budgets=flash.Budgets(scale=20)))
print(report.to_json())
sys.exit(130 if report.interrupted else 1)
"""


def test_sigint_during_a_hung_stage_ends_the_run_within_2_s_with_each_boards_state(farm, tmp_path):
    hung = farm.start("esp32", runtime=None, hang_stub=True)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=64 * 1024)
    proc = subprocess.Popen([sys.executable, "-c", _SIGINT, str(image_dir), str(tmp_path / "logs"), hung.port],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "STUB"
    time.sleep(1.0)                                   # esptool is now waiting for a greeting that never comes
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, elapsed
    assert proc.returncode == 130, err
    data = json.loads(out)
    [d] = data["devices"]
    assert (d["state"], d["stage"], d["ok"]) == ("interrupted", "stub", False)
    assert d["error"] == "interrupted during stub" and d["left_as"] == "untouched (stub in RAM only)"
    assert os.path.exists(hung.port)


def test_identify_on_a_board_whose_stub_hangs_returns_chip_and_mac_from_the_rom(farm):
    from workshop import devices

    board = farm.start("esp32", runtime=None, hang_stub=True)
    t0 = time.monotonic()
    d = devices.identify(devices.SerialPort(board.port))
    assert d.ok, d.error
    assert (d.identity.chip, d.identity.mac, d.identity.flash_size) == ("esp32", board.mac, None)
    assert time.monotonic() - t0 < devices.IDENTIFY_STUB_S + 3
    # The flash size is missing, and the row says why (it was a bare "?"):
    assert d.note == ("flash size unknown: esptool's stub did not start within 4 s (flash falls back to the "
                      "legacy stub)") and d.to_dict()["note"] == d.note


def test_devices_identify_timeout_scale_gives_a_slow_stub_longer(farm):
    """`invoke devices --identify --timeout-scale 2`: the stub's time box is doubled, and said."""
    board = farm.start("esp32", runtime=None, hang_stub=True)
    invoke = Path(sys.executable).parent / "invoke"
    t0 = time.monotonic()
    proc = subprocess.run([str(invoke), "-r", str(REPO), "devices", "--ports", board.port, "--identify", "--json",
                           "--timeout-scale", "2"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [d] = json.loads(proc.stdout)
    assert d["identity"]["mac"] == board.mac and d["note"] == ("flash size unknown: esptool's stub did not start within 8 s "
                                                   "(flash falls back to the legacy stub)"), d
    assert time.monotonic() - t0 > 8
    bad = subprocess.run([str(invoke), "-r", str(REPO), "devices", "--ports", board.port, "--identify",
                          "--timeout-scale", "0"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 1 and "--timeout-scale: expected a number > 0" in bad.stderr, bad.stderr


def test_the_registry_gate_runs_when_the_first_attempt_failed_before_reading_the_mac(farm, tmp_path):
    # Attempt 1 hangs in its sync (no MAC yet); attempt 2 reads the MAC: the gate must run there.
    board = farm.start("esp32", runtime=None, hang_first_connect=True)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=32 * 1024)
    options = FlashOptions(budgets=flash.Budgets(connect_per_try=1.0))
    gated: list[str | None] = []

    def gate(result: flash.DeviceResult) -> str | None:
        gated.append(result.mac)
        return "already ready with this image"

    r = flash.flash_device(board.port, FlashImage.from_dist(image_dir), options, log_path=tmp_path / "b.log",
                           gate=gate)

    assert r.attempts[0].stage == "connecting" and "budget" in r.attempts[0].error
    assert gated == [board.mac]
    assert (r.state, r.bytes_written) == (State.SKIPPED, 0), r.error
    data = board.flash()
    assert data[0x1000:0x1000 + 16] == b"\xff" * 16          # nothing written


def test_a_gate_that_raised_runs_again_on_the_retry_and_never_lets_the_board_through_unchecked(farm, tmp_path):
    # The station's gate once raised RegistryError (a clone racing the first board's record):
    # the attempt failed, the retry skipped the gate as done, and the clone was flashed and
    # merged with the first board. The gate runs again; its refusal then holds.
    board = farm.start("esp32", runtime=None)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=16 * 1024)
    calls: list[str | None] = []

    def gate(result: flash.DeviceResult) -> str | None:
        calls.append(result.mac)
        if len(calls) == 1:
            raise RuntimeError("the registry was busy")
        raise flash.Refused("a clone of another board: not flashed")

    r = flash.flash_device(board.port, FlashImage.from_dist(image_dir), log_path=tmp_path / "b.log", gate=gate)

    assert calls == [board.mac, board.mac], r.attempts
    assert r.state is State.FAILED and "a clone of another board" in (r.error or ""), (r.state, r.error)
    assert r.bytes_written == 0 and board.flash()[0x1000:0x1000 + 16] == b"\xff" * 16   # nothing written


def test_timeout_scale_stretches_the_stub_stage_and_a_timeout_names_the_option(farm, tmp_path):
    """A slow hub or an emulated board needs longer stages: `invoke flash --timeout-scale 3` gives
    the stub three times its time box, and the message of a stage that overran says so."""
    import re

    board = farm.start("esp32", runtime=None, hang_stub=True)
    dist = tmp_path / "dist"
    make_dist(dist, "ESP32_GENERIC", "esp32", size=16 * 1024)
    report = tmp_path / "r.json"
    invoke = Path(sys.executable).parent / "invoke"
    proc = subprocess.run([str(invoke), "-r", str(REPO), "flash", "--board", "ESP32_GENERIC", "--dist", str(dist),
                           "--ports", board.port, "--timeout-scale", "3", "--logs", str(tmp_path / "logs"),
                           "--report", str(report)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr          # then the legacy stub flashed it
    [r] = json.loads(report.read_text())["devices"]
    hung = r["attempts"][0]["error"]
    m = re.search(r"no answer within its ([\d.]+) s budget \(uploading and starting the stub \((\d+) bytes\)\)", hung)
    assert m, hung
    assert float(m.group(1)) == round(flash.Budgets(scale=3).stub(int(m.group(2))), 1) > \
        flash.Budgets().stub(int(m.group(2))) * 2.9
    assert "--timeout-scale stretches every stage" in hung


def test_a_failure_after_retries_names_each_stage_once(farm, tmp_path):
    """The default stub hangs, then the legacy stub's write stalls: the reason names the first
    and the last failure, each with its stage once (it read "stub: stub: no answer ...")."""
    board = farm.start("esp32", runtime=None, hang_stub=True, stall_after=2)
    image_dir = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=128 * 1024)
    options = FlashOptions(attempts=(flash.Attempt(460800, "2"), flash.Attempt(115200, "1")),
                           budgets=flash.Budgets(write_base=2.0, line_margin=1.0))
    report = flash.flash_all([board.port], FlashImage.from_dist(image_dir), options, log_dir=tmp_path / "logs")
    [r] = report.results
    assert (r.state, r.error_kind, r.retries) == (State.FAILED, "timeout", 1), r.error
    assert r.error.startswith("stub: no answer within its ") and "; after 1 retry: writing: no answer" in r.error, \
        r.error
