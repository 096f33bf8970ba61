"""provision --files: lesson files onto real MicroPython REPL peers, in parallel, verified, skipping identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from station_peers import E2E
from workshop import lessons
from workshop.provision import ProvisionConfig, provision_all
from workshop.registry import Registry
from workshop.repl import ReplSession

REPO = Path(__file__).resolve().parents[3]


def lesson(tmp_path: Path) -> Path:
    d = tmp_path / "lesson"
    (d / "lib" / "sensors").mkdir(parents=True)
    (d / "main.py").write_text("import blink\n")
    (d / "lib" / "blink.py").write_bytes(bytes(range(256)) * 9)           # binary, > one block
    (d / "lib" / "sensors" / "__init__.py").write_text("")
    (d / ".git").mkdir()
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")          # not a lesson file
    return d


def test_files_reach_every_board_byte_for_byte_and_identical_ones_are_skipped(tmp_path):
    folder = lesson(tmp_path)
    peers = [E2E.PtyPeer(tmp_path / f"dev{i}", runtime="pypi").start() for i in range(3)]
    try:
        (peers[1].root / "main.py").write_text("import blink\n")            # already there on one board
        results = provision_all([p.port for p in peers], ProvisionConfig(), files=folder)
        assert all(r.ok for r in results), [r.error for r in results]
        assert results[0].files == {"written": ["lib/blink.py", "lib/sensors/__init__.py", "main.py"], "unchanged": [],
                                    "removed": [], "kept": []}
        assert results[1].files == {"written": ["lib/blink.py", "lib/sensors/__init__.py"], "unchanged": ["main.py"],
                                    "removed": [], "kept": []}
        for p in peers:
            assert (p.root / "lib" / "blink.py").read_bytes() == (folder / "lib" / "blink.py").read_bytes()
            assert not list(p.root.rglob("*.tmp")) and not (p.root / ".git").exists()
        again = provision_all([peers[0].port], ProvisionConfig(), files=folder)
        assert again[0].files["written"] == []
    finally:
        for p in peers:
            p.stop()


def test_the_device_config_and_secrets_never_come_from_the_lesson_folder(tmp_path):
    folder = lesson(tmp_path)
    (folder / "workshop.json").write_text("{}")
    with pytest.raises(lessons.LessonError, match="written by provisioning"):
        lessons.collect(folder)
    (folder / "workshop.json").unlink()
    (folder / "secrets.py").write_text("PW = 's3cret-wifi'\n")
    cfg = ProvisionConfig(wifi_ssid="W", wifi_password="s3cret-wifi")
    with pytest.raises(lessons.LessonError, match="contains a configured secret"):
        provision_all(["/dev/null"], cfg, files=folder)                     # refused before any board is touched
    with pytest.raises(lessons.LessonError, match="no such folder"):
        lessons.collect(tmp_path / "nope")


def test_invoke_provision_with_files_and_registry_names_boards_by_sticker(tmp_path):
    folder = lesson(tmp_path)
    peers = [E2E.PtyPeer(tmp_path / f"dev{i}", runtime="pypi").start() for i in range(2)]
    db = tmp_path / "w.db"
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "provision", "--ports",
                               ",".join(p.port for p in peers), "--hostname", "lab-{index:02d}", "--files",
                               str(folder), "--registry", str(db), "--json"],
                              capture_output=True, text=True, timeout=120, cwd=REPO,
                              env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        data = json.loads(proc.stdout)
        assert sorted(d["hostname"] for d in data) == ["lab-01", "lab-02"]
        recs = Registry(db).boards()
        assert sorted((r.sticker, r.hostname, r.provision_ok) for r in recs) == [(1, "lab-01", True), (2, "lab-02", True)]
        for p in peers:
            assert (p.root / "main.py").read_text() == "import blink\n"
    finally:
        for p in peers:
            p.stop()


def test_invoke_smoke_with_registry_records_each_boards_result_by_its_mac(tmp_path):
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi").start()     # the stack is not frozen there: smoke fails
    db = tmp_path / "w.db"
    try:
        proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "smoke", "--ports",
                               peer.port, "--board", "UNIX", "--board-file", "--registry", str(db)],
                              capture_output=True, text=True, timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    finally:
        peer.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [rec] = Registry(db).boards()
    assert rec.smoke_ok is False and rec.state == "failed" and "modules" in rec.smoke_detail


@pytest.mark.parametrize("name", ["wifi.py", "webserver.py", "WiFi.py", "umqtt/helper.py", "telnet.mpy",
                                  "wsconfig.py", "announce/__init__.py"])
def test_a_lesson_file_that_would_replace_the_kits_own_module_is_refused_before_any_board(tmp_path, name):
    """A board imports its root folder before its firmware: an exercise called webserver.py (or a
    umqtt/ folder of helpers) would be what boot starts and what `from umqtt.simple import
    MQTTClient` finds. Refused in one line naming the file, before any board is touched."""
    folder = lesson(tmp_path)
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("print('my exercise')\n")
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi").start()
    try:
        with pytest.raises(lessons.LessonError, match=r"would replace the kit's own '\w+' module on every board") as e:
            provision_all([peer.port], ProvisionConfig(hostname="lab-1"), files=folder)
        assert str(folder / name) in str(e.value) and "rename it" in str(e.value)
        assert not (peer.root / "workshop.json").exists()                  # nothing written
    finally:
        peer.stop()
    ok = tmp_path / "ok"
    (ok / "lib").mkdir(parents=True)
    (ok / "lib" / "wifi.py").write_text("X = 1\n")    # /lib comes after the firmware: no shadow
    (ok / "wifi_exercise.py").write_text("X = 1\n")
    (ok / "wifi").write_text("notes\n")              # no .py: nothing imports it
    assert [f.relative for f in lessons.collect(ok)] == ["lib/wifi.py", "wifi", "wifi_exercise.py"]


def test_a_symlinked_folder_is_copied_and_a_broken_link_is_refused(tmp_path):
    """A teacher keeps one shared lib/ and links it into each lesson: the board gets what the
    folder shows (the link's files), not a board without lib/ reported OK. A link to nothing,
    or back into its own folder, is refused naming it, rather than left out without a word."""
    shared = tmp_path / "shared"
    (shared / "lib" / "drivers").mkdir(parents=True)
    (shared / "lib" / "drivers" / "oled.py").write_text("W = 128\n")
    (shared / "util.py").write_text("U = 1\n")
    folder = tmp_path / "lesson"
    folder.mkdir()
    (folder / "main.py").write_text("import oled\n")
    (folder / "lib").symlink_to(shared / "lib")
    (folder / "util.py").symlink_to(shared / "util.py")
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi").start()
    try:
        [r] = provision_all([peer.port], ProvisionConfig(), files=folder)
        assert r.ok, r.error
        assert r.files["written"] == ["lib/drivers/oled.py", "main.py", "util.py"]
        assert (peer.root / "lib" / "drivers" / "oled.py").read_text() == "W = 128\n"
        assert (peer.root / "util.py").read_text() == "U = 1\n" and not (peer.root / "util.py").is_symlink()
    finally:
        peer.stop()
    (folder / "old.py").symlink_to(tmp_path / "moved-away.py")
    with pytest.raises(lessons.LessonError, match=r"old.py: a symbolic link to .*moved-away.py, which does not exist"):
        lessons.collect(folder)
    (folder / "old.py").unlink()
    (shared / "lib" / "again").symlink_to(shared / "lib")
    with pytest.raises(lessons.LessonError, match=r"lib/again: a symbolic link to a folder it is in \(a loop\)"):
        lessons.collect(folder)


def test_prune_removes_an_earlier_lessons_files_but_never_one_edited_on_the_board(tmp_path):
    """provision --files lesson2 left every file of lesson 1 on the boards (old exercises beside
    the new ones, an old main.py running at boot). --prune removes what the kit put there and the
    new folder lacks, unless the attendee changed it; without --prune nothing is removed."""
    one = lesson(tmp_path)
    (one / "ex1.py").write_text("# exercise 1\n")
    (one / "mine.py").write_text("# fill me in\n")
    two = tmp_path / "lesson2"
    (two / "lib").mkdir(parents=True)
    (two / "main.py").write_text("import ex2\n")
    (two / "ex2.py").write_text("# exercise 2\n")
    (two / "lib" / "blink.py").write_bytes((one / "lib" / "blink.py").read_bytes())
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi").start()
    try:
        [r] = provision_all([peer.port], ProvisionConfig(), files=one)
        assert r.ok, r.error
        (peer.root / "mine.py").write_text("# my answer\n")               # the attendee's work
        (peer.root / "notes.txt").write_text("never put there by the kit\n")
        [r] = provision_all([peer.port], ProvisionConfig(), files=two)    # no --prune: nothing removed
        assert r.ok and r.files["removed"] == [] and (peer.root / "ex1.py").exists(), r
        [r] = provision_all([peer.port], ProvisionConfig(), files=two, prune=True)
        assert r.ok, r.error
        assert r.files == {"written": [], "unchanged": ["ex2.py", "lib/blink.py", "main.py"],
                           "removed": ["ex1.py", "lib/sensors/__init__.py"], "kept": ["mine.py"]}, r.files
        assert not (peer.root / "ex1.py").exists() and not (peer.root / "lib" / "sensors").exists()
        assert (peer.root / "mine.py").read_text() == "# my answer\n"
        assert (peer.root / "notes.txt").exists() and (peer.root / "lib" / "blink.py").exists()
        assert (peer.root / "main.py").read_text().startswith("import ex2")
        assert lessons.files_cell(r.files) == "0 new, 3 same, 2 removed, kept (edited on the board): mine.py"
        # The kept file is the attendee's now: a later prune leaves it alone without naming it again.
        [r] = provision_all([peer.port], ProvisionConfig(), files=two, prune=True)
        assert r.ok and r.files["removed"] == [] and r.files["kept"] == [], r.files
        assert (peer.root / "mine.py").exists()
    finally:
        peer.stop()


@pytest.mark.parametrize("task", ["provision", "flash", "station"])
def test_prune_without_files_is_refused_before_any_board(tmp_path, task):
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), task, "--prune"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1 and "--prune goes with --files" in proc.stderr, proc.stdout + proc.stderr


def test_a_lesson_file_name_with_a_line_break_is_refused(tmp_path):
    folder = lesson(tmp_path)
    (folder / "two\nlines.py").write_text("")
    with pytest.raises(lessons.LessonError, match="line break"):
        lessons.collect(folder)


def test_prune_keeps_to_the_kits_own_files_whatever_their_names_and_an_empty_lesson_clears_them(tmp_path):
    """Review finds: a file already on the board as the lesson has it was listed as the kit's (and
    --prune then deleted it); names with a leading or trailing space were read back wrong and never
    pruned; an empty list (after an empty lesson folder) failed every later --files with KeyError."""
    one = tmp_path / "one"
    one.mkdir()
    for name in ("main.py", "notes ", " lead.txt", "shared.py"):
        (one / name).write_text(f"# {name}\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi").start()
    try:
        (peer.root / "shared.py").write_text("# shared.py\n")              # there before the kit came
        [r] = provision_all([peer.port], ProvisionConfig(), files=one)
        assert r.ok and r.files["unchanged"] == ["shared.py"], r.error or r.files
        with ReplSession(peer.port) as s:
            assert lessons.read_record(s, "").keys() == {"main.py", "notes ", " lead.txt"}
        [r] = provision_all([peer.port], ProvisionConfig(), files=empty, prune=True)
        assert r.ok and sorted(r.files["removed"]) == [" lead.txt", "main.py", "notes "], r.error or r.files
        assert not (peer.root / "notes ").exists() and not (peer.root / " lead.txt").exists()
        assert (peer.root / "shared.py").read_text() == "# shared.py\n"  # never the kit's: never touched
        assert (peer.root / lessons.RECORD_NAME).read_bytes() == b""
        [r] = provision_all([peer.port], ProvisionConfig(), files=one, prune=True)   # the empty list reads
        assert r.ok and r.files["written"] == [" lead.txt", "main.py", "notes "], r.error or r.files
    finally:
        peer.stop()

