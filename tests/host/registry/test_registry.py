"""The board registry: stickers stable and never reused, concurrent writers, exports."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from workshop.registry import Registry, RegistryError, normalize_mac, read_csv

REPO = Path(__file__).resolve().parents[3]


def mac(n: int) -> str:
    return f"24:0a:c4:00:{n >> 8:02x}:{n & 0xff:02x}"


def test_stickers_are_assigned_once_per_mac_and_survive_reopening(tmp_path):
    path = tmp_path / "workshop.db"
    reg = Registry(path)
    a = reg.see(mac(1), chip="esp32", port="/dev/ttyUSB0")
    b = reg.see(mac(2), chip="esp32c3", port="/dev/ttyUSB1")
    assert (a.sticker, b.sticker) == (1, 2)
    again = Registry(path).see(mac(1).upper().replace(":", "-"), port="/dev/ttyUSB5")   # another run, other spelling
    assert again.sticker == 1 and again.port == "/dev/ttyUSB5" and again.chip == "esp32"
    assert [r.sticker for r in Registry(path).boards()] == [1, 2]


def test_a_sticker_is_never_given_to_another_board(tmp_path):
    reg = Registry(tmp_path / "workshop.db")
    reg.see(mac(1))
    reg.see(mac(2))
    with sqlite3.connect(tmp_path / "workshop.db") as db:          # board 2 removed by hand
        db.execute("DELETE FROM boards WHERE sticker = 2")
    assert reg.see(mac(3)).sticker == 3
    assert reg.see(mac(2)).sticker == 4                             # back, but its old number is spent


def test_results_history_and_lookups(tmp_path):
    reg = Registry(tmp_path / "workshop.db")
    reg.see(mac(7), chip="esp32", flash_size="4MB", usb_serial="0001", usb_id="10c4:ea60")
    reg.record_flash(mac(7), ok=True, board="ESP32_GENERIC", image="dist/ESP32_GENERIC", inputs="ab" * 32)
    reg.record_provision(mac(7), ok=True, hostname="Lab-01")
    r = reg.record_smoke(mac(7), ok=True, detail="all checks passed")
    assert (r.state, r.flash_ok, r.provision_ok, r.smoke_ok, r.hostname) == ("ready", True, True, True, "lab-01")
    assert reg.by_hostname("lab-01") == r and reg.by_sticker(1) == r and reg.get(mac(7)) == r
    assert [h.stage for h in reg.history(mac(7))] == ["seen", "flash", "provision", "smoke"]
    # A new image voids the earlier provision/smoke results.
    r = reg.record_flash(mac(7), ok=True, board="ESP32_GENERIC", inputs="cd" * 32)
    assert (r.state, r.provision_ok, r.smoke_ok, r.inputs) == ("flashed", None, None, "cd" * 32)
    r = reg.record_flash(mac(7), ok=False, detail="writing: timeout")
    assert r.state == "failed" and r.inputs == "cd" * 32


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(RegistryError, match="not a MAC address"):
        normalize_mac("24:0a")
    bogus = tmp_path / "bogus.db"
    bogus.write_text("not a database at all " * 100)
    with pytest.raises(RegistryError, match="bogus.db: not a usable registry"):
        Registry(bogus)
    with pytest.raises(RegistryError, match="not in the registry"):
        Registry(tmp_path / "w.db").record_smoke(mac(1), ok=True)


_WRITER = r"""
import sys
from workshop.registry import Registry
path, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reg = Registry(path)
for i in range(first, first + n):
    m = "24:0a:c4:00:%02x:%02x" % (i >> 8, i & 0xff)
    reg.see(m, chip="esp32")
    reg.record_flash(m, ok=True, board="ESP32_GENERIC")
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "workshop.db"
    Registry(path)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(first), "60"], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for first in (0, 1000)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    boards = Registry(path).boards()
    assert len(boards) == 120
    assert sorted(b.sticker for b in boards) == list(range(1, 121))          # unique, no gaps, none lost
    assert all(b.flash_ok and b.state == "flashed" for b in boards)
    assert all(len(Registry(path).history(b.mac)) == 2 for b in boards[:10])


def test_csv_and_json_exports_round_trip(tmp_path):
    reg = Registry(tmp_path / "workshop.db")
    reg.see(mac(1), chip="esp32", usb_serial="A,B \"quoted\"")
    reg.record_flash(mac(1), ok=True, board="ESP32_GENERIC")
    reg.see(mac(2), chip="esp8266")
    reg.record_provision(mac(2), ok=False, detail="connect: no raw REPL\nafter 3 s")
    text = reg.to_csv()
    assert read_csv(text) == reg.boards()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["sticker"] for r in rows] == ["1", "2"] and rows[0]["mac"] == mac(1)
    assert json.loads(reg.to_json())[1]["provision_detail"] == "connect: no raw REPL\nafter 3 s"


def test_invoke_registry_table_never_cuts_names_ports_or_results_when_piped(tmp_path):
    import os

    reg = Registry(tmp_path / "w.db")
    long_port = "/dev/serial/by-id/usb-Espressif_USB_JTAG_serial_debug_unit_F4:12:FA:12:34:56-if00"
    reg.see(mac(1), chip="esp32s3", port=long_port)
    reg.record_flash(mac(1), ok=True, board="ESP32_GENERIC_S3")
    reg.record_provision(mac(1), ok=True, hostname="chemistry-lab-table-07-left")
    reg.record_smoke(mac(1), ok=False, detail="heap: 41,312 B free, expected at least 60,000 B " * 3)
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "registry", "--registry",
                           str(tmp_path / "w.db")], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "COLUMNS": "80"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for whole in (long_port, "chemistry-lab-table-07-left", "ESP32_GENERIC_S3", mac(1), "failed"):
        assert whole in out, whole
    assert "…" not in out and "│" not in out and "┃" not in out         # no cut cells, no box when piped


_KILLED = r"""
import sys
from workshop.registry import Registry
reg = Registry(sys.argv[1])
i = 0
while True:
    m = "24:0a:c4:01:%02x:%02x" % (i >> 8 & 0xff, i & 0xff)
    reg.see(m, chip="esp32")
    reg.record_flash(m, ok=True, board="ESP32_GENERIC")
    i += 1
    if i == 20:
        print("going", flush=True)
"""


def test_a_writer_killed_mid_run_leaves_the_registry_consistent(tmp_path):
    import signal
    import time

    path = tmp_path / "workshop.db"
    Registry(path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "going"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reg = Registry(path)
    boards = reg.boards()
    assert len(boards) >= 20
    assert sorted(b.sticker for b in boards) == list(range(1, len(boards) + 1))
    # every board that made it in is whole: seen, then flashed (or the flash had not committed yet)
    assert all(b.state in ("seen", "flashed") for b in boards)
    assert sum(b.state == "seen" for b in boards) <= 1
    assert reg.see("24:0a:c4:ff:ff:ff").sticker == len(boards) + 1


def test_an_existing_file_that_is_no_database_is_refused_and_left_alone(tmp_path):
    """`registry --registry <an empty file>` (or any other file) made it a database: SQLite
    takes an empty file for an empty database. Refused, file untouched; a new path is created."""
    import subprocess
    import sys

    import os
    import time

    empty = tmp_path / "class-list.txt"
    empty.write_bytes(b"")
    os.utime(empty, (time.time() - 60, time.time() - 60))   # not one another process is creating now
    with pytest.raises(RegistryError, match="class-list.txt: not a usable registry: an empty file, not an SQLite"):
        Registry(empty)
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "registry", "--registry",
                           str(empty)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "not an SQLite database" in " ".join(proc.stderr.split())
    assert empty.read_bytes() == b"" and not list(tmp_path.glob("class-list.txt-*"))
    Registry(tmp_path / "new.db").see(mac(1))
    assert Registry(tmp_path / "new.db").get(mac(1)) is not None      # a real registry opens again
    # A registry that is only read (the registry task, roster --registry) is never made: a typo
    # would show an empty room.
    typo = tmp_path / "nwe.db"
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "registry", "--registry",
                           str(typo)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and f"--registry {typo}: no registry there" in " ".join(proc.stderr.split())
    assert not typo.exists()
