"""Discovery and identification of boards: mock bootloaders on PTYs and over TCP, real esptool."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serial.tools.list_ports_common import ListPortInfo

from workshop import devices

from support import interrupt, wait_while_running

REPO = Path(__file__).resolve().parents[3]


def esptool_cli_mac(port: str) -> str:
    """The MAC as plain `python -m esptool read-mac` prints it: an independent reading to compare with."""
    out = subprocess.run([sys.executable, "-m", "esptool", "--port", port, "--before", "no-reset", "--after",
                          "no-reset", "read-mac"], capture_output=True, text=True, timeout=60).stdout
    return re.search(r"MAC:\s+([0-9a-f:]{17})", out).group(1)


def test_identify_reads_chip_mac_and_flash_size_of_every_device_in_parallel(mocks, tmp_path):
    chips = ["esp32", "esp32s3", "esp32c3", "esp8266"]
    found = mocks.start_many(chips)
    url = mocks.tcp_bridge(mocks.start("esp32c6"))
    ports = devices.resolve_ports([d.port for d in found] + [url])

    result = devices.identify_all(ports, log_dir=tmp_path / "logs")

    assert [d.port.device for d in result] == [d.port for d in found] + [url]
    assert all(d.ok for d in result), [d.error for d in result]
    assert [d.identity.chip for d in result] == chips + ["esp32c6"]
    assert [d.identity.chip_name for d in result] == ["ESP32", "ESP32-S3", "ESP32-C3", "ESP8266", "ESP32-C6"]
    assert {d.identity.flash_size for d in result} == {"4MB"}          # the mock's JEDEC ID says 4 MB
    for mock, d in zip(found, result):
        assert d.identity.mac == esptool_cli_mac(mock.port)
    assert (tmp_path / "logs" / f"{devices.log_name(found[0].port)}.log").read_text().count("Detecting chip type")


def test_a_dead_port_is_named_and_fast(tmp_path):
    master, slave = pty.openpty()
    try:
        dead = devices.SerialPort(os.ttyname(slave))
        d = devices.identify(dead, connect_attempts=2)
    finally:
        os.close(master)
        os.close(slave)
    assert (d.ok, d.error_kind) == (False, "no-answer")
    assert "no answer from a bootloader" in d.error and "held in reset" in d.error
    assert d.seconds < 6


def test_explicit_ports_accept_paths_by_id_links_and_urls(mocks, tmp_path):
    mock = mocks.start("esp32")
    link = tmp_path / "usb-Silicon_Labs_CP2102_0001-if00-port0"
    link.symlink_to(mock.port)

    ports = devices.resolve_ports([str(link), "socket://127.0.0.1:4000", "rfc2217://127.0.0.1:4001", mock.port])

    assert [p.device for p in ports] == [mock.port, "socket://127.0.0.1:4000", "rfc2217://127.0.0.1:4001"]
    assert ports[0].by_id == str(link)
    with pytest.raises(devices.PortUnavailable, match="/dev/nonexistent: no such serial device"):
        devices.resolve_ports(["/dev/nonexistent"])
    with pytest.raises(devices.PortUnavailable, match="bogus://x: not a usable pyserial URL"):
        devices.resolve_ports(["bogus://x"])


def test_only_known_usb_bridges_count_as_boards(monkeypatch, tmp_path):
    """The VID:PID filter over pyserial's port list (USB enumeration cannot be emulated here)."""
    def info(device, vid, pid, serial=None):
        i = ListPortInfo(device, skip_link_detection=True)
        i.vid, i.pid, i.serial_number, i.description = vid, pid, serial, "USB serial"
        return i

    listed = [info("/dev/ttyUSB0", 0x10C4, 0xEA60, "0001"), info("/dev/ttyACM0", 0x303A, 0x1001, "F4:12"),
              info("/dev/ttyUSB1", 0x1A86, 0x55D4), info("/dev/ttyACM1", 0x2341, 0x0043), info("/dev/ttyS0", None, None)]
    monkeypatch.setattr(devices.list_ports, "comports", lambda: listed)

    boards = devices.list_board_ports()
    assert [(p.device, p.bridge, p.usb_id) for p in boards] == [
        ("/dev/ttyACM0", "Espressif USB-JTAG/serial", "303a:1001"),
        ("/dev/ttyUSB0", "CP210x", "10c4:ea60"),
        ("/dev/ttyUSB1", "CH9102", "1a86:55d4")]
    assert [p.device for p in devices.list_board_ports(include_unknown=True)] == [
        "/dev/ttyACM0", "/dev/ttyACM1", "/dev/ttyUSB0", "/dev/ttyUSB1"]


def test_invoke_devices_identify_json(mocks, tmp_path):
    found = mocks.start_many(["esp32s2", "esp32c3"])
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "devices", "--identify",
                           "--json", "--logs", str(tmp_path / "logs"), "--ports", ",".join(d.port for d in found)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(proc.stdout)
    assert [(d["port"]["device"], d["identity"]["chip"]) for d in data] == [(found[0].port, "esp32s2"),
                                                                          (found[1].port, "esp32c3")]


def test_ctrl_c_ends_devices_identify_within_2_s(tmp_path):
    # A port that never answers keeps esptool syncing for ~8 s: Ctrl-C must not wait for that.
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "devices", "--identify",
                                 "--logs", str(tmp_path / "logs"), "--ports", os.ttyname(slave)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            wait_while_running(proc, lambda: list((tmp_path / "logs").glob("*.log")), "identify never started", 30)  # esptool is at the port
            time.sleep(0.5)
            out, err, elapsed = interrupt(proc)
        finally:
            proc.kill()
    finally:
        os.close(master)
        os.close(slave)
    assert elapsed < 2.0, (elapsed, out[-400:], err[-400:])
    assert proc.returncode == 130 and "interrupted" in out and "Traceback" not in err, out + err
