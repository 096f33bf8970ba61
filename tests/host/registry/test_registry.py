"""The board registry: stickers stable and never reused, concurrent writers, exports."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from support import interrupt
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
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "registry", "--registry", ""],
                          capture_output=True, text=True, timeout=60)   # (an unset shell variable: a traceback)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "--registry: an empty name; name the registry file" in " ".join(proc.stderr.split())


def _kit_registry(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "registry", "--registry",
                           str(path), *args], capture_output=True, text=True, timeout=60)


def test_another_programs_sqlite_database_is_refused_and_left_untouched(tmp_path):
    """`registry --registry` naming another program's SQLite file (a class list app's, a browser's)
    once added the registry's three tables to it and switched it to the WAL journal."""
    other = tmp_path / "attendance.sqlite"
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE pupils (name TEXT, present INTEGER)")
        db.execute("INSERT INTO pupils VALUES ('Ada', 1)")
        db.commit()
    before = other.read_bytes()
    with pytest.raises(RegistryError, match=r"attendance.sqlite: not a usable registry: an SQLite database of "
                                            r"another kind \(its tables: pupils\), not a board registry"):
        Registry(other)
    proc = _kit_registry(other, "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "an SQLite database of another kind" in " ".join(proc.stderr.split()) and proc.stdout == ""
    assert other.read_bytes() == before                                           # not one byte changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attendance.sqlite"]    # no -wal/-shm beside it
    with contextlib.closing(sqlite3.connect(other)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["pupils"]


def _damaged(tmp_path: Path) -> Path:
    path = tmp_path / "class.db"
    reg = Registry(path)
    for i in range(300):
        reg.see(mac(i), chip="esp32", port=f"/dev/ttyUSB{i}")
    with contextlib.closing(sqlite3.connect(path)) as db:          # everything in the file, no WAL left
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    for page in range(2, len(data) // 4096):                      # a bad sector, a half-copied USB stick
        data[page * 4096:page * 4096 + 64] = b"\xde\xad" * 32
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_registry_is_one_clear_line_when_opened_not_a_traceback_later(tmp_path):
    """A registry whose header was intact but whose pages were damaged opened fine; `registry`
    (table or --json) then died in a sqlite3.DatabaseError traceback."""
    path = _damaged(tmp_path)
    before = path.read_bytes()
    with pytest.raises(RegistryError, match="class.db: not a usable registry: the file is damaged"):
        Registry(path)
    for args in ((), ("--json",)):
        proc = _kit_registry(path, *args)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr and "sqlite3." not in proc.stderr, proc.stderr
        assert "not a usable registry: the file is damaged" in " ".join(proc.stderr.split()), proc.stderr
        assert len(proc.stderr.strip().splitlines()) <= 3, proc.stderr          # one message, folded at most
    assert path.read_bytes() == before


_HOLDER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
if sys.argv[2] == "exclusive":          # nobody else may even read
    db.execute("PRAGMA locking_mode=EXCLUSIVE")
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO meta (key, value) VALUES ('held', 'by another program')")
print("held", flush=True)
time.sleep(120)
"""

_SEE = r"""
import sys, time
from workshop import registry
if len(sys.argv) > 2:
    registry.BUSY_TIMEOUT_S = float(sys.argv[2])
reg = registry.Registry(sys.argv[1])
print("open", flush=True)
try:
    reg.see("24:0a:c4:00:00:99", chip="esp32")
except registry.RegistryError as e:
    print(type(e).__name__, e, flush=True)
"""


@contextlib.contextmanager
def _held(path: Path, how: str):
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path), how], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def _sigint_after(argv: list[str], ready: str | None, delay: float) -> tuple[subprocess.CompletedProcess, float]:
    import signal
    import time

    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if ready is not None:
        assert proc.stdout.readline().strip() == ready
    time.sleep(delay)
    assert proc.poll() is None, proc.communicate()           # still waiting for the lock
    out, err, elapsed = interrupt(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err), elapsed


def test_ctrl_c_ends_a_wait_for_a_locked_registry_within_two_seconds(tmp_path):
    """A registry another program keeps locked (an SQLite browser with unsaved changes): Ctrl-C
    did nothing for up to 30 s, sqlite3 waiting for the lock inside one call."""
    path = tmp_path / "class.db"
    Registry(path).see(mac(1), chip="esp32")
    with _held(path, "write"):
        proc, elapsed = _sigint_after([sys.executable, "-c", _SEE, str(path)], "open", 1.0)
        assert elapsed < 2.0, (elapsed, proc.stdout, proc.stderr)
        assert "KeyboardInterrupt" in proc.stderr, proc.stderr
    with _held(path, "exclusive"):            # `registry` itself, which only reads: it cannot even read
        proc, elapsed = _sigint_after([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "registry",
                                       "--registry", str(path)], None, 2.5)
        assert elapsed < 2.0, (elapsed, proc.stdout, proc.stderr)
    assert [b.mac for b in Registry(path).boards()] == [mac(1)]      # the other program's change never landed


def test_a_lock_that_never_goes_away_is_a_registry_error_naming_it(tmp_path):
    """After the wait, a raw sqlite3.OperationalError 'database is locked' (a traceback in the
    station, flash/provision/smoke --registry); the open of a registry that could not be read
    said 'not a usable registry', as if the file were bad."""
    import time

    path = tmp_path / "class.db"
    Registry(path).see(mac(1), chip="esp32")
    with _held(path, "write"):
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", _SEE, str(path), "1"], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stdout.splitlines()[-1] == (f"RegistryLocked {path}: locked by another program for 1 s (one "
                                                "holding it open with unsaved changes, such as an SQLite browser?): "
                                                "close or save it there, then run again"), proc.stdout
        assert time.monotonic() - t < 10
    assert Registry(path).see("24:0a:c4:00:00:99").sticker == 2          # released: recorded at once


def test_results_a_locked_registry_cannot_take_are_named_per_board_once(tmp_path, monkeypatch):
    """flash/provision/smoke --registry record after the run: a lock another program took in the
    meantime was a traceback that lost the run's table and report; now every board not recorded
    is named with the lock, after one wait (not one per board)."""
    import time
    from types import SimpleNamespace

    from workshop import registry, station

    monkeypatch.setattr(registry, "BUSY_TIMEOUT_S", 1.0)
    path = tmp_path / "class.db"
    reg = Registry(path)
    reports = [SimpleNamespace(port=f"/dev/ttyUSB{i}", mac=mac(i + 1), ok=True, failed=[], interrupted=False)
               for i in range(3)] + [SimpleNamespace(port="/dev/ttyUSB9", mac=None, ok=False, failed=[],
                                                     interrupted=False)]
    with _held(path, "write"):
        t = time.monotonic()
        missing = station.record_smoke_reports(reg, reports)
        assert time.monotonic() - t < 3
    locked = (f"{path}: locked by another program for 1 s (one holding it open with unsaved changes, such as an "
              "SQLite browser?): close or save it there, then run again")
    assert missing == {"/dev/ttyUSB0": locked, "/dev/ttyUSB1": locked, "/dev/ttyUSB2": locked,
                       "/dev/ttyUSB9": "MAC unknown"}      # never recordable, whatever the registry
    assert station.record_smoke_reports(reg, reports) == {"/dev/ttyUSB9": "MAC unknown"}   # released: recorded
    assert [b.mac for b in reg.boards()] == [mac(1), mac(2), mac(3)]


def test_smoke_results_of_two_ports_with_one_mac_are_named_not_merged(tmp_path):
    """smoke --registry on two clones (one MAC on two ports): both were recorded on one row, the
    last result silently overwriting the first. Neither is recorded, each is named; the others are."""
    from types import SimpleNamespace

    from workshop import station

    reg = Registry(tmp_path / "class.db")
    reports = [SimpleNamespace(port="/dev/ttyUSB0", mac=mac(1), ok=True, failed=[], interrupted=False),
               SimpleNamespace(port="/dev/ttyUSB1", mac=mac(1).upper(), ok=False, failed=[], interrupted=False),
               SimpleNamespace(port="/dev/ttyUSB2", mac=mac(2), ok=True, failed=[], interrupted=False)]
    missing = station.record_smoke_reports(reg, reports)
    why = (f"MAC {mac(1)} is reported on /dev/ttyUSB0, /dev/ttyUSB1 (clones?): one registry row per MAC, so none "
           "of them is recorded")
    assert missing == {"/dev/ttyUSB0": why, "/dev/ttyUSB1": why}
    assert [(b.mac, b.smoke_ok) for b in reg.boards()] == [(mac(2), True)]


def test_a_registry_that_cannot_be_created_leaves_no_empty_file_to_refuse_the_next_run(tmp_path):
    """A full disk while creating it (here a file size limit of 0 bytes) left an empty file, which
    every later run refused as 'an empty file, not an SQLite database'."""
    import resource

    path = tmp_path / "class.db"
    code = ("from workshop.registry import Registry, RegistryError\ntry:\n    Registry(%r)\n"
            "except RegistryError as e:\n    print(e)" % str(path))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)))
    assert proc.returncode == 0 and f"{path}: not a usable registry" in proc.stdout, proc.stdout + proc.stderr
    assert list(tmp_path.iterdir()) == []
    Registry(path).see(mac(1))                                  # the next run (room on the disk) makes it
    assert Registry(path).get(mac(1)) is not None
