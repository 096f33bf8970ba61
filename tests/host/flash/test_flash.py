"""Bulk flashing against real peers: esp32-mock-bootloader devices on PTYs, driven by real esptool."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flash_peers import assert_flashed, assert_untouched, make_dist
from workshop import config, flash
from workshop.flash import Attempt, FlashImage, FlashOptions, Stage, State

REPO = Path(__file__).resolve().parents[3]


def by_port(events: list[flash.FlashEvent]) -> dict[str, list[flash.FlashEvent]]:
    out: dict[str, list[flash.FlashEvent]] = {}
    for e in events:
        out.setdefault(e.port, []).append(e)
    return out


def test_eight_devices_in_one_parallel_run_hold_the_image_byte_for_byte(mocks, dist, tmp_path, capfd):
    devices = mocks.start_many(["esp32"] * 8)
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=128 * 1024)
    image = FlashImage.from_dist(image_dir)
    events: list[flash.FlashEvent] = []

    report = flash.flash_all([d.port for d in devices], image, on_event=events.append, log_dir=tmp_path / "logs")

    assert report.ok, [(r.port, r.error) for r in report.results]
    assert [r.port for r in report.results] == [d.port for d in devices]
    for r in report.results:
        assert (r.state, r.verified, r.chip, r.board, r.retries) == (State.OK, True, "esp32", "ESP32_GENERIC", 0)
        assert r.mac and len(r.mac.split(":")) == 6
        log = Path(r.log_file).read_text()
        assert "Hash of data verified" in log and "Verification successful" in log
    # Each device had its own progress: bytes grow to the image size, verify precedes done.
    streams = by_port(events)
    for d in devices:
        stages = [e.stage for e in streams[d.port]]
        assert stages.index(Stage.VERIFYING) < stages.index(Stage.DONE) == len(stages) - 1
        written = [e.bytes_done for e in streams[d.port] if e.stage is Stage.WRITING]
        assert written == sorted(written) and written[-1] == image.size and len(written) > 2
    # In parallel: some two devices were writing at the same time (one sequential run has no such
    # pair). Not "before the first finished": on a loaded 2-core machine one may finish first.
    spans = {}
    for i, e in enumerate(events):
        if e.stage is Stage.WRITING:
            spans.setdefault(e.port, [i, i])[1] = i
    assert any(a[0] < b[1] and b[0] < a[1] for p, a in spans.items() for q, b in spans.items() if p < q), spans
    # esptool's chatter went to the log files, not to our stdout/stderr.
    out, err = capfd.readouterr()
    assert "esptool" not in out + err and "Connecting" not in out + err
    for d in devices:
        assert_flashed(d, image_dir, 0x1000)


def test_a_device_unplugged_mid_write_fails_clearly_and_the_others_succeed(mocks, dist, tmp_path):
    devices = mocks.start_many(["esp32c3"] * 8)
    victim = devices[3]
    image_dir = make_dist(dist, "ESP32_GENERIC_C3", "esp32c3", size=256 * 1024)
    image = FlashImage.from_dist(image_dir)
    events: list[flash.FlashEvent] = []

    def on_event(e: flash.FlashEvent) -> None:
        events.append(e)
        if e.port == victim.port and e.stage is Stage.WRITING and e.percent >= 30 and victim.alive:
            victim.kill()

    report = flash.flash_all([d.port for d in devices], image, on_event=on_event, log_dir=tmp_path / "logs")

    assert not report.ok
    failed = {r.port: r for r in report.results if not r.ok}
    assert list(failed) == [victim.port]
    r = failed[victim.port]
    assert r.state is State.FAILED and not r.verified
    assert r.error.startswith("writing:"), r.error          # the stage where it broke, then why
    assert r.left_as == "partially written: flash again"
    assert not any(e.stage is Stage.DONE for e in events if e.port == victim.port)
    for d in devices:
        if d is not victim:
            assert_flashed(d, image_dir, 0x0)
    # Nothing is OK without esptool's verify.
    assert all(x.verified for x in report.results if x.ok)


def test_written_but_unverifiable_is_not_ok(mocks, dist, tmp_path):
    """ESP8266's ROM cannot checksum flash: with only a no-stub attempt the data lands but is not OK."""
    device = mocks.start("esp8266")
    image_dir = make_dist(dist, "ESP8266_GENERIC", "esp8266", size=32 * 1024, flash_size="2MB")
    options = FlashOptions(baud=115200, attempts=(Attempt(115200, None),))

    report = flash.flash_all([device.port], FlashImage.from_dist(image_dir), options, log_dir=tmp_path / "logs")

    r = report.results[0]
    assert (r.state, r.verified, r.error_kind) == (State.FAILED, False, "verify-failed"), r.error
    assert "not verified" in r.error
    assert_flashed(device, image_dir, 0x0)     # the bytes are there; we still refuse to call it OK


def test_an_image_for_another_chip_is_refused_with_nothing_written(mocks, dist, tmp_path):
    device = mocks.start("esp32c3")
    image = FlashImage.from_dist(make_dist(dist, "ESP32_GENERIC", "esp32", size=64 * 1024))

    report = flash.flash_all([device.port], image, log_dir=tmp_path / "logs")

    r = report.results[0]
    assert (r.state, r.error_kind, r.retries, r.bytes_written) == (State.FAILED, "wrong-chip", 0, 0)
    assert "ESP32-C3" in r.error and "ESP32_GENERIC" in r.error and "nothing written" in r.error
    assert r.left_as == "untouched"
    assert_untouched(device)


def test_auto_gives_each_chip_its_own_image_from_the_board_files(mocks, dist, tmp_path):
    boards = {b.chip: b for b in config.load_boards().values() if not b.is_host}
    chips = ["esp32", "esp32s3", "esp32c3", "esp8266", "esp32s2", "esp32"]
    devices = mocks.start_many(chips)
    offsets = {}
    for seed, chip in enumerate(sorted(set(chips))):
        board = boards[chip]
        offsets[chip] = board.flash_regions()[0].offset           # from boards/ + esptool's chip facts
        make_dist(dist, board.name, chip, size=48 * 1024, seed=seed, offset=offsets[chip],
                  flash_size=board.flash_size)
    images = flash.images_by_chip(flash.dist_images(dist))
    assert offsets == {"esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp8266": 0x0}

    report = flash.flash_all([d.port for d in devices], images, log_dir=tmp_path / "logs")

    assert report.ok, [(r.port, r.error) for r in report.results]
    for d, r in zip(devices, report.results):
        assert (r.chip, r.board) == (d.chip, boards[d.chip].name)
        assert_flashed(d, dist / boards[d.chip].name, offsets[d.chip])


def test_socket_url_ports_work(mocks, dist, tmp_path):
    device = mocks.start("esp32s3")
    url = mocks.tcp_bridge(device)
    image_dir = make_dist(dist, "ESP32_GENERIC_S3", "esp32s3", size=64 * 1024)

    report = flash.flash_all([url], FlashImage.from_dist(image_dir), log_dir=tmp_path / "logs")

    assert report.ok, report.results[0].error
    assert report.results[0].port == url
    assert_flashed(device, image_dir, 0x0)


def test_uart_paced_links_carry_a_flash_at_the_set_baud(mocks, dist, tmp_path):
    # The bench's "real UART" figures rest on this relay: bytes arrive intact, no faster than the baud.
    baud = 921600
    devices = mocks.start_many(["esp32", "esp32"], fast_slip=True)
    links = mocks.uart_links(devices, baud)
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=64 * 1024)

    report = flash.flash_all(links, FlashImage.from_dist(image_dir), log_dir=tmp_path / "logs")

    assert report.ok, [(r.port, r.error) for r in report.results]
    for r in report.results:
        log = Path(r.log_file).read_text()
        compressed = int(log.split("Compressed 65536 bytes to ", 1)[1].split("...", 1)[0])
        assert r.seconds > compressed / (baud / 10), "the link was not paced"
    for d in devices:
        assert_flashed(d, image_dir, 0x1000)


def test_a_dead_port_times_out_fast_with_a_named_error_without_stalling_the_others(mocks, dist, tmp_path):
    master, slave = pty.openpty()        # a port with nothing behind it
    dead = os.ttyname(slave)
    try:
        devices = mocks.start_many(["esp32", "esp32"])
        image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=128 * 1024)
        report = flash.flash_all([dead, *(d.port for d in devices)], FlashImage.from_dist(image_dir),
                                 log_dir=tmp_path / "logs")
    finally:
        os.close(master)
        os.close(slave)

    silent, *good = report.results
    assert (silent.state, silent.error_kind, silent.retries) == (State.FAILED, "no-answer", 0)
    assert "no answer from a bootloader" in silent.error and dead in silent.error
    assert silent.seconds < 10          # three sync attempts, not esptool's default retry loop
    assert all(r.ok for r in good)
    for d in devices:
        assert_flashed(d, image_dir, 0x1000)


def test_a_lost_connection_is_retried_at_a_lower_baud(mocks, dist, tmp_path):
    """socat between esptool and the mock dies mid-write once; the retry at 115200 baud succeeds."""
    device = mocks.start("esp32")
    url = mocks.tcp_bridge(device)
    bridge = mocks.bridges[-1]
    tcp_port = int(url.rsplit(":", 1)[1])
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=256 * 1024)
    cut = threading.Event()

    def on_event(e: flash.FlashEvent) -> None:
        if e.stage is Stage.WRITING and e.percent >= 25 and not cut.is_set():
            cut.set()
            bridge.kill()
            bridge.wait()
            mocks.tcp_bridge(device, port=tcp_port)     # plugged back in

    report = flash.flash_all([url], FlashImage.from_dist(image_dir), on_event=on_event, log_dir=tmp_path / "logs")

    r = report.results[0]
    assert cut.is_set()
    assert r.ok, r.error
    assert r.retries >= 1 and r.attempts[0].stage == "writing" and r.attempts[0].error
    assert r.attempts[1].attempt == "115200 baud, stub"
    assert_flashed(device, image_dir, 0x1000)


def test_a_failed_connect_is_retried_on_its_own_port_not_reported_busy(mocks, dist, tmp_path):
    """Noise while esptool detects the chip fails attempt 1 in its connect. That attempt's port
    stayed open (its exclusive lock held), so attempt 2 failed as 'port busy: held by another
    program (Thonny, ...)' on a board nothing else held. Now the retry connects and flashes."""
    device = mocks.start("esp32", garbled_detects=1)
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=32 * 1024)

    report = flash.flash_all([device.port], FlashImage.from_dist(image_dir), log_dir=tmp_path / "logs")

    [r] = report.results
    assert r.ok, r.error
    assert "busy" not in str(r.attempts)
    assert r.retries == 1 and r.attempts[0].stage == "connecting", r.attempts
    assert "Unexpected chip magic value" in r.attempts[0].error
    assert_flashed(device, image_dir, 0x1000)


def test_cancel_stops_every_worker_and_says_what_each_was_left_as(mocks, dist, tmp_path):
    devices = mocks.start_many(["esp32"] * 3)
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=256 * 1024)
    cancel = threading.Event()

    def on_event(e: flash.FlashEvent) -> None:
        if e.stage is Stage.WRITING and e.percent >= 20:
            cancel.set()

    report = flash.flash_all([d.port for d in devices], FlashImage.from_dist(image_dir), on_event=on_event,
                             log_dir=tmp_path / "logs", cancel=cancel)

    assert report.interrupted and not report.ok
    states = {r.state for r in report.results}
    assert State.INTERRUPTED in states and states <= {State.INTERRUPTED, State.OK, State.NOT_STARTED}
    for r in report.results:
        if r.state is State.INTERRUPTED:
            assert r.error.startswith("interrupted during") and not r.verified
            assert r.left_as in ("untouched", "untouched (stub in RAM only)", "partially written: flash again")


_CTRL_C = r"""
import json, os, signal, sys
from pathlib import Path
from workshop import flash
image, log_dir, *ports = sys.argv[1:]
def on_event(e):
    if e.stage is flash.Stage.WRITING and e.percent >= 20:
        os.kill(os.getpid(), signal.SIGINT)      # what Ctrl-C in the terminal does
report = flash.flash_all(ports, flash.FlashImage.from_dist(Path(image)), on_event=on_event, log_dir=Path(log_dir))
print(report.to_json())
"""


def test_ctrl_c_stops_cleanly_and_reports_each_device_state(mocks, dist, tmp_path):
    devices = mocks.start_many(["esp32"] * 3)
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=512 * 1024)
    proc = subprocess.run([sys.executable, "-c", _CTRL_C, str(image_dir), str(tmp_path / "logs"),
                           *(d.port for d in devices)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr                     # no traceback: KeyboardInterrupt handled
    data = json.loads(proc.stdout)
    assert data["interrupted"] and not data["ok"]
    states = [d["state"] for d in data["devices"]]
    assert "interrupted" in states and set(states) <= {"interrupted", "ok", "not started"}
    for d in data["devices"]:
        assert d["ok"] == (d["state"] == "ok") and (not d["ok"] or d["verified"])
        if d["state"] == "interrupted":
            assert d["error"].startswith("interrupted during ") and d["left_as"]


def test_from_dist_refuses_a_changed_image_and_auto_refuses_two_images_for_one_chip(dist):
    a = make_dist(dist, "ESP32_GENERIC", "esp32", size=8192)
    make_dist(dist, "OTHER_ESP32", "esp32", size=8192, seed=2)
    with pytest.raises(flash.FlashError, match="two images for ESP32: ESP32_GENERIC and OTHER_ESP32"):
        flash.images_by_chip(flash.dist_images(dist))
    (a / "firmware.bin").write_bytes(b"tampered")
    with pytest.raises(flash.FlashError, match="firmware.bin: does not match the sha256"):
        FlashImage.from_dist(a)


def test_the_retry_ladder_is_lower_baud_then_legacy_stub_then_no_stub():
    assert [a.label for a in flash.retry_ladder(921600)] == [
        "921600 baud, stub", "115200 baud, stub", "115200 baud, legacy stub", "115200 baud, no stub"]
    assert len(flash.retry_ladder(115200)) == 3


# --- the invoke task: table, JSON report, exit code -------------------------------------------


def _invoke(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    invoke = Path(sys.executable).parent / "invoke"
    return subprocess.run([str(invoke), "-r", str(REPO), *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env={**os.environ, "COLUMNS": "200"})


def test_invoke_flash_exits_non_zero_when_one_device_fails_and_writes_a_json_report(mocks, dist, tmp_path):
    devices = mocks.start_many(["esp32", "esp32c3"])       # the C3 must refuse the ESP32 image
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=64 * 1024)
    report_path = tmp_path / "report.json"

    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(dist), "--ports",
                   ",".join(d.port for d in devices), "--report", str(report_path), "--logs", str(tmp_path / "logs"))

    assert proc.returncode != 0, proc.stdout + proc.stderr
    data = json.loads(report_path.read_text())
    assert [(d["port"], d["ok"]) for d in data["devices"]] == [(devices[0].port, True), (devices[1].port, False)]
    assert data["devices"][1]["error_kind"] == "wrong-chip"
    assert "ESP32-C3" in proc.stdout and "wrong-chip" in proc.stdout      # the summary table
    assert "Uploading stub" not in proc.stdout                            # esptool output went to logs
    assert_flashed(devices[0], image_dir, 0x1000)
    assert_untouched(devices[1])


def test_invoke_flash_all_ok_exits_zero(mocks, dist, tmp_path):
    devices = mocks.start_many(["esp32s3", "esp32s3"])
    make_dist(dist, "ESP32_GENERIC_S3", "esp32s3", size=64 * 1024)
    proc = _invoke("flash", "--board", "ESP32_GENERIC_S3", "--dist", str(dist), "--ports",
                   ",".join(d.port for d in devices), "--logs", str(tmp_path / "logs"),
                   "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("verified") >= 2


def test_a_failure_outside_any_attempt_is_that_devices_named_error(dist, tmp_path):
    """The log folder cannot be made (here: it is a file): the device fails with the reason,
    instead of the worker's exception vanishing into its future and leaving 'not started', no error."""
    image = FlashImage.from_dist(make_dist(dist, "ESP32_GENERIC", "esp32"))
    blocked = tmp_path / "logs"
    blocked.write_text("a file where the log folder should be")
    report = flash.flash_all(["/dev/null"], image, log_dir=blocked)
    [r] = report.results
    assert not report.ok and r.state is State.FAILED and not r.verified
    assert r.error_kind == "error" and "logs" in r.error, r.error


def test_a_build_in_another_boards_folder_is_refused(tmp_path):
    """dist/ESP32_GENERIC_S3 holding ESP32_GENERIC's build.json would flash the wrong image."""
    import shutil

    source = make_dist(tmp_path / "dist", "ESP32_GENERIC", "esp32", size=4096)
    shutil.copytree(source, tmp_path / "dist" / "ESP32_GENERIC_S3")
    with pytest.raises(flash.FlashError, match=r"describes board ESP32_GENERIC, not ESP32_GENERIC_S3"):
        flash.FlashImage.from_dist(tmp_path / "dist" / "ESP32_GENERIC_S3")
    assert flash.FlashImage.from_dist(source).board == "ESP32_GENERIC"


def test_dist_images_skips_only_host_builds_whatever_the_folder_is_called(tmp_path):
    # The skip used to match "host build" in the error text: a dist/ under a folder whose name
    # holds those words silently dropped a tampered image instead of refusing it.
    dist = tmp_path / "host build checks" / "dist"
    dist.mkdir(parents=True)
    unix = make_dist(dist, "UNIX", "esp32", size=4096)
    info = json.loads((unix / "build.json").read_text())
    info.update(chip="host", port="unix")
    (unix / "build.json").write_text(json.dumps(info))
    esp = make_dist(dist, "ESP32_GENERIC", "esp32", size=8192)
    assert [i.board for i in flash.dist_images(dist)] == ["ESP32_GENERIC"]
    with pytest.raises(flash.HostBuild):
        FlashImage.from_dist(unix)
    (esp / "firmware.bin").write_bytes(b"tampered")
    with pytest.raises(flash.FlashError, match="firmware.bin: does not match the sha256"):
        flash.dist_images(dist)


@pytest.mark.parametrize("extra, message", [
    (("--offset", "-5"), "--offset -5: expected 0x0 .. 0x7ffffff"),
    (("--offset", "0x10000000"), "--offset 0x10000000: expected 0x0 .. 0x7ffffff"),
    (("--offset", "0x1001"), "--offset 0x1001: not on a flash sector boundary"),
    (("--offset", "0x7fff000"), "end past 128 MB"),
    (("--offset", "0x1000", "--flash-size", "3MB"), "--flash-size: expected one of detect, keep, 256KB"),
    (("--offset", "0x1000", "--empty"), "the file is empty: nothing to write"),
])
def test_bad_flash_options_are_refused_before_any_board_is_touched(mocks, tmp_path, extra, message):
    """Not sent to the board to fail, be retried three times and be reported 'partially written'."""
    [device] = mocks.start_many(["esp32"])
    image = tmp_path / "firmware.bin"
    image.write_bytes(b"" if "--empty" in extra else b"\xe9" + bytes(8191))
    proc = _invoke("flash", "--image", str(image), "--chip", "esp32", "--ports", device.port,
                   "--logs", str(tmp_path / "logs"), *(a for a in extra if a != "--empty"), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and message in " ".join(proc.stderr.split()), proc.stderr
    assert "partially written" not in proc.stdout and not (tmp_path / "logs").exists()
    assert_untouched(device)


@pytest.mark.parametrize("task", ["flash", "station"])
@pytest.mark.parametrize("problem", ["missing", "config inside"])
def test_an_unusable_lesson_folder_is_refused_before_any_board_is_flashed(mocks, tmp_path, task, problem):
    """Not found out at provisioning, after every board was flashed."""
    [device] = mocks.start_many(["esp32"])
    image = tmp_path / "firmware.bin"
    image.write_bytes(b"\xe9" + bytes(8191))
    cfg = tmp_path / "ws.toml"
    cfg.write_text('hostname = "ws-{mac4}"\n')
    lesson = tmp_path / "lesson"
    if problem == "config inside":
        lesson.mkdir()
        (lesson / "workshop.json").write_text("{}")
    where = ("--ports", device.port) if task == "flash" else ("--ports-dir", str(tmp_path))
    proc = _invoke(task, "--image", str(image), "--offset", "0x1000", "--chip", "esp32", *where,
                   "--provision", str(cfg), "--files", str(lesson), "--logs", str(tmp_path / "logs"), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    why = "no such folder of lesson files" if problem == "missing" else "written by provisioning"
    assert "Traceback" not in proc.stderr and f"--files: {lesson}" in " ".join(proc.stderr.split()), proc.stderr
    assert why in " ".join(proc.stderr.split())
    assert "watching" not in proc.stdout and not (tmp_path / "logs").exists()
    assert_untouched(device)


def test_flash_warns_that_a_dist_image_is_stale_and_writes_it(mocks, dist, tmp_path):
    """README: flash sees a kept image as stale. A dist/ build whose inputs are not the current
    sources' (modules edited without a rebuild) is flashed with a warning naming why, not silently."""
    from workshop import build

    [device] = mocks.start_many(["esp32"])
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=32 * 1024)
    reason = build.stale_reason("ESP32_GENERIC", dist=dist)
    assert reason                                     # its inputs hash is made from its bytes
    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(dist), "--ports", device.port,
                   "--logs", str(tmp_path / "logs"), "--report", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"warning: {image_dir} is stale ({reason}): writing it anyway; 'invoke build --board ESP32_GENERIC' "
            "builds the current sources") in " ".join(proc.stderr.split()), proc.stderr
    assert_flashed(device, image_dir, 0x1000)


def test_an_image_too_big_for_the_boards_flash_is_refused_once_with_nothing_written(mocks, tmp_path):
    """100 kB at 0x3ff000 on a 4 MB flash: esptool refuses it before writing; it was retried
    three times and reported 'partially written'. Refused after flash attach, no retry."""
    [device] = mocks.start_many(["esp32"])
    image = tmp_path / "img.bin"
    image.write_bytes(b"\xe9" + bytes(100 * 1024 - 1))
    report = tmp_path / "r.json"
    proc = _invoke("flash", "--image", str(image), "--offset", "0x3ff000", "--chip", "esp32", "--ports", device.port,
                   "--logs", str(tmp_path / "logs"), "--report", str(report), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [r] = json.loads(report.read_text())["devices"]
    assert (r["state"], r["error_kind"], r["retries"], r["left_as"]) == ("failed", "too-big", 0, "untouched"), r
    assert r["error"] == ("the image does not fit: 102,400 bytes at 0x3ff000 end at 0x418000, past this board's 4MB "
                          "flash (0x400000); nothing written"), r["error"]
    assert "partially written" not in proc.stdout
    assert_untouched(device)


def test_a_flash_size_larger_than_the_boards_flash_is_refused_once_with_nothing_written(mocks, dist, tmp_path):
    """--flash-size 16MB on a 4 MB board: esptool only warned in the log ("larger than the
    available flash size") and wrote a header claiming 16 MB; verify passed and the board was
    reported 'flashed and verified', then its firmware stopped at boot on the mismatch."""
    [device] = mocks.start_many(["esp32"])
    make_dist(dist, "ESP32_GENERIC", "esp32", size=16 * 1024)
    report = tmp_path / "r.json"
    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(dist), "--ports", device.port,
                   "--flash-size", "16MB", "--logs", str(tmp_path / "logs"), "--report", str(report), timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [r] = json.loads(report.read_text())["devices"]
    assert (r["state"], r["error_kind"], r["retries"], r["left_as"]) == ("failed", "too-big", 0, "untouched"), r
    assert r["error"] == ("--flash-size 16MB: more than this board's 4MB flash, and a header claiming more flash "
                          "than the chip has breaks the firmware at boot; nothing written"), r["error"]
    assert_untouched(device)


def test_flash_progress_keeps_ports_and_stages_whole_piped_and_at_80_columns(mocks, dist, tmp_path):
    """Piped, the progress was one frame cut to 80 columns ('/d… don…'); on an 80-column terminal
    '/dev/… conne…'; the summary line folded in the middle of the log path. Piped: one whole line
    per stage change; on a terminal: a live table by the table rule (render.LiveTable)."""
    import re

    from support import Terminal

    devices = mocks.start_many(["esp32", "esp32"])
    make_dist(dist, "ESP32_GENERIC", "esp32", size=32 * 1024)
    logs = tmp_path / "a-log-folder-with-a-long-name-so-that-the-summary-line-passes-80-columns" / "flash"
    ports = [mocks.tcp_bridge(devices[0]), devices[1].port]
    args = ["flash", "--board", "ESP32_GENERIC", "--dist", str(dist), "--ports", ",".join(ports), "--logs", str(logs)]
    invoke = str(Path(sys.executable).parent / "invoke")
    piped = subprocess.run([invoke, "-r", str(REPO), *args, "--report", str(tmp_path / "r1.json")], capture_output=True,
                           text=True, timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "80"})
    assert piped.returncode == 0, piped.stdout + piped.stderr
    lines = piped.stdout.splitlines()
    for port in ports:
        assert f"{port} connecting" in piped.stdout and any(
            line.startswith(f"{port} done ") and line.endswith(": verified") for line in lines), piped.stdout
    assert "…" not in piped.stdout
    assert any(line.startswith("2/2 verified in ") and line.endswith(f"esptool logs in {logs}") for line in lines), lines

    devices = mocks.start_many(["esp32", "esp32"])
    ports = [d.port for d in devices]
    argv = [invoke, "-r", str(REPO), *args[:5], "--ports", ",".join(ports), "--logs", str(logs),
            "--report", str(tmp_path / "r2.json")]
    term = Terminal(argv, 80)      # flash on an 80-column terminal
    try:
        term.read(120)
    finally:
        term.close()
    text = term.text
    live = text[text.index("┏"):text.index("Flash summary")].replace("\r", "\n").splitlines()
    assert "…" not in "".join(live) and max(len(line) for line in live) <= 80, "\n".join(live[-20:])
    for port in ports:
        assert any(re.match(rf"│ {re.escape(port)} +│ done +│ +100 │ esp32 │ 24:0a:c4(:[0-9a-f]{{2}}){{3}} │ verified +│",
                            line) for line in live), "\n".join(live[-20:])


def test_two_choices_of_what_to_write_are_refused_as_such(dist, tmp_path):
    """`flash --board X --auto` said 'choose what to write', as if nothing had been chosen."""
    make_dist(dist, "ESP32_GENERIC", "esp32", size=4096)
    with pytest.raises(flash.FlashError, match=r"^--board and --auto: give only one of them"):
        flash.choose_images(board="ESP32_GENERIC", auto=True, dist=dist)
    with pytest.raises(flash.FlashError, match=r"^choose what to write"):
        flash.choose_images(dist=dist)
    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--auto", "--dist", str(dist), "--ports", "/dev/null")
    assert proc.returncode == 1 and "--board and --auto: give only one of them" in " ".join(proc.stderr.split())


def test_auto_without_a_flashable_image_names_where_it_looked(dist, monkeypatch):
    # --auto --release V with a release of the host board alone said "no flashable image in
    # dist/ (invoke build ...)": the images came from the release.
    from workshop import download

    with pytest.raises(flash.FlashError, match=r"^--auto: no flashable image in dist/ \(invoke build"):
        flash.choose_images(auto=True, dist=dist)
    monkeypatch.setattr(download, "release_images", lambda version, boards: [])   # (what a UNIX-only release gives)
    with pytest.raises(flash.FlashError, match=r"^--auto: no flashable image in release v0.1.0 \(only its ESP"):
        flash.choose_images(auto=True, release="v0.1.0", dist=dist)


def test_flash_options_take_the_baud_as_a_number_from_text_too():
    """A library caller's FlashOptions(baud="921600") passed the check and kept the text, which
    then failed every board at the first comparison with a number; it is the number now."""
    assert FlashOptions(baud="921600").baud == 921600 and FlashOptions(baud=115200).baud == 115200
    for bad in ("fast", 100, True):
        with pytest.raises(flash.FlashError, match=r"^--baud: expected a baud rate"):
            FlashOptions(baud=bad)


# --- what the image file holds, against the chip found ---------------------------------------


def _esp_image(chip: str, flash_size: str, after: bytes = b"") -> bytes:
    """A valid image for `chip`, made with esptool's own image classes (tests/host/release/placeholders)."""
    sys.path.insert(0, str(REPO / "tests" / "host" / "release"))
    from placeholders import esp_image

    return esp_image(chip, flash_size, after=after)


def test_an_image_file_built_for_another_chip_is_refused_once_with_nothing_written(mocks, tmp_path):
    """An ESP32 firmware.bin given as --image to an ESP32-C3: esptool refuses it at write time
    ("Input does not contain an ESP32-C3 image"), which looked like a failed write: it was retried
    three times and reported 'partially written: flash again' (with the same wrong file). It is a
    wrong chip, refused before anything is written; with --chip, before any board is touched."""
    device = mocks.start("esp32c3")
    image = tmp_path / "firmware.bin"
    image.write_bytes(_esp_image("esp32", "4MB", after=b"\xff" * 0x7000 + bytes(32 * 1024)))

    report = flash.flash_all([device.port], flash.choose_images(image=image, offset="0x0"), log_dir=tmp_path / "logs")

    [r] = report.results
    assert (r.state, r.error_kind, r.retries, r.left_as) == (State.FAILED, "wrong-chip", 0, "untouched"), r
    assert r.error == f"found ESP32-C3, but {image} is an image for ESP32 (its header says so): nothing written"
    with pytest.raises(flash.FlashError, match=r"an image for ESP32 \(its header says so\), not for ESP32-C3 "
                                               r"\(--chip esp32c3\): nothing written"):
        flash.choose_images(image=image, offset="0x0", chip="esp32c3")
    assert_untouched(device)


def test_an_image_file_that_is_no_firmware_is_never_written_where_the_rom_boots_from(mocks, tmp_path):
    """A firmware.bin that is a captive portal's page (or a download cut short) was written over
    the board's bootloader and reported 'flashed and verified': the board no longer booted. At the
    chip's bootloader offset it is refused, nothing written; elsewhere (data, a filesystem) it is
    written as given."""
    device = mocks.start("esp32c3")
    page = tmp_path / "firmware.bin"
    page.write_bytes(b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>\n" * 64)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(_esp_image("esp32c3", "4MB")[:200])

    with pytest.raises(flash.FlashError, match=r"no ESP32-C3 firmware image at 0x0, where its ROM bootloader looks for "
                                               r"one \(a download cut short, or not firmware: it starts b'<!DOCTYPE ht'\)"):
        flash.choose_images(image=page, offset="0x0", chip="esp32c3")
    for bad in (page, cut):
        report = flash.flash_all([device.port], flash.choose_images(image=bad, offset="0x0"),
                                 log_dir=tmp_path / f"logs-{bad.stem}")
        [r] = report.results
        assert (r.state, r.error_kind, r.retries, r.left_as) == (State.FAILED, "not-an-image", 0, "untouched"), r
        assert r.error.startswith(f"{bad}: no ESP32-C3 firmware image at 0x0") and "nothing written" in r.error
    report = flash.flash_all([device.port], flash.choose_images(image=page, offset="0x200000", chip="esp32c3"),
                             log_dir=tmp_path / "logs-data")
    assert report.ok, report.results[0].error
    data = device.flash()
    assert data[:0x200000] == b"\xff" * 0x200000 and data[0x200000:0x200000 + page.stat().st_size] == page.read_bytes()


def test_an_image_file_at_0x0_is_judged_by_what_it_puts_at_the_esp32_bootloader_offset(mocks, tmp_path):
    """On an ESP32 the ROM boots from 0x1000. A file flashed at 0x0 covers that offset: a web page,
    or an ESP8266 firmware.bin, was written over the bootloader and reported 'flashed and
    verified' (only a region starting at 0x1000 was checked). A merged image at 0x0 (0xFF up to
    0x1000, then the bootloader image) is what `esptool merge-bin` makes: written as given."""
    device = mocks.start("esp32")
    page = tmp_path / "page.bin"
    page.write_bytes(b"<!DOCTYPE html><html><body>Sign in to the Wi-Fi</body></html>\n" * 128)
    other = tmp_path / "esp8266.bin"
    other.write_bytes(_esp_image("esp8266", "4MB") + bytes(8 * 1024))
    merged = tmp_path / "merged.bin"
    merged.write_bytes(b"\xff" * 0x1000 + _esp_image("esp32", "4MB"))

    for bad in (page, other):
        with pytest.raises(flash.FlashError, match=r"no ESP32 firmware image at 0x1000, where its ROM bootloader"):
            flash.choose_images(image=bad, offset="0x0", chip="esp32")
        report = flash.flash_all([device.port], flash.choose_images(image=bad, offset="0x0"),
                                 log_dir=tmp_path / f"logs-{bad.stem}")
        [r] = report.results
        assert (r.state, r.error_kind, r.left_as) == (State.FAILED, "not-an-image", "untouched"), r
        assert r.error.startswith(f"{bad}: no ESP32 firmware image at 0x1000") and "nothing written" in r.error
    assert_untouched(device)
    fresh = mocks.start("esp32")
    report = flash.flash_all([fresh.port], flash.choose_images(image=merged, offset="0x0", chip="esp32"),
                             log_dir=tmp_path / "logs-merged")
    assert report.ok, report.results[0].error
    assert fresh.flash()[:merged.stat().st_size] == merged.read_bytes()


def test_an_esp8266_image_file_gets_the_flash_size_detected_as_a_dist_build_does(mocks, dist, tmp_path):
    """The ESP8266 port writes with --flash-size detect (its port data): an image's header says
    1MB until then, and MicroPython sizes its filesystem by it. dist/ESP8266_GENERIC got the 4 MB
    the flash chip reports; the same bytes as --image (with --chip esp8266 or without) kept 1MB."""
    from esptool.targets import CHIP_DEFS

    built = _esp_image("esp8266", "1MB")
    detected = int(CHIP_DEFS["esp8266"].FLASH_SIZES["4MB"])          # the mock's flash chip: 4 MB
    file = tmp_path / "ESP8266_GENERIC-v1.28.0.bin"
    file.write_bytes(built)
    for chip in ("esp8266", None):
        device = mocks.start("esp8266")
        report = flash.flash_all([device.port], flash.choose_images(image=file, offset="0x0", chip=chip),
                                 log_dir=tmp_path / f"logs-{chip}")
        assert report.ok, report.results[0].error
        written = device.flash()[:len(built)]
        assert written[3] & 0xF0 == detected, (chip, hex(written[3]))
        assert written[:3] + written[4:] == built[:3] + built[4:]


def test_ctrl_c_during_the_reset_after_verify_says_the_board_is_flashed_not_partly(mocks, dist, tmp_path):
    """Stopped once verify has passed, a board holds the whole image: "partially written: flash
    again" sent a person to reflash a good board, and the station said "reflash before use"."""
    from workshop import station

    device = mocks.start("esp32")
    image_dir = make_dist(dist, "ESP32_GENERIC", "esp32", size=64 * 1024)
    cancel = threading.Event()

    def on_event(e: flash.FlashEvent) -> None:
        if e.stage is Stage.RESETTING:
            cancel.set()

    report = flash.flash_all([device.port], FlashImage.from_dist(image_dir), on_event=on_event,
                             log_dir=tmp_path / "logs", cancel=cancel)
    [r] = report.results
    assert r.state is State.INTERRUPTED and r.verified, (r.state, r.error)
    assert r.left_as == "flashed and verified, not reset: press RESET"
    assert_flashed(device, image_dir, 0x1000)
    board = station.BoardResult(key=device.port, port=device.port, state="interrupted", stage="flashing", flash=r)
    assert board.left_as == "interrupted during flashing: flashed and verified, run it again to finish"


def test_invoke_flash_json_prints_the_report_on_stdout_and_progress_on_stderr(mocks, dist, tmp_path):
    [device] = mocks.start_many(["esp32"])
    make_dist(dist, "ESP32_GENERIC", "esp32", size=16 * 1024)
    report = tmp_path / "r.json"
    proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(dist), "--ports", device.port, "--json",
                   "--logs", str(tmp_path / "logs"), "--report", str(report), timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = json.loads(proc.stdout)                   # nothing but the report on stdout
    assert printed == json.loads(report.read_text())
    [r] = printed["devices"]
    assert (r["port"], r["ok"], r["left_as"], r["board"]) == (device.port, True, "flashed and verified", "ESP32_GENERIC")
    assert f"{device.port} connecting" in proc.stderr and "1/1 verified in " in proc.stderr


def test_invoke_flash_refuses_a_timeout_scale_that_is_not_a_positive_number(mocks, dist, tmp_path):
    [device] = mocks.start_many(["esp32"])
    make_dist(dist, "ESP32_GENERIC", "esp32", size=16 * 1024)
    for bad in ("0", "-2", "fast", "inf"):
        proc = _invoke("flash", "--board", "ESP32_GENERIC", "--dist", str(dist), "--ports", device.port,
                       "--timeout-scale", bad, "--logs", str(tmp_path / "logs"), timeout=60)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"--timeout-scale: expected a number > 0 (2 doubles every stage's time box), got '{bad}'" \
            in proc.stderr, proc.stderr
    assert_untouched(device)
