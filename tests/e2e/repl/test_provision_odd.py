"""Provisioning as a classroom does it, against real MicroPython REPLs on PTYs: names and passwords
beyond ASCII, a board whose filesystem is full or read-only (a small LittleFS in the board's
RAM, what an ESP8266's 1 MB filesystem is), a boot.py that is not UTF-8, a lesson of many files
on an ESP8266-sized heap, and config values a board could not read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workshop.provision import ProvisionConfig, ProvisionError, provision_all
from workshop.repl import Pacing, ReplSession

from support import wait_while_running

WIFI_PW = "s3cret-wifi-pw"

# boot.py of a board whose filesystem is a LittleFS of BLOCKS x 512 bytes in RAM, mounted at
# /board and made the current folder (where the unix "board" keeps its files); PRELOAD is
# written there first, READONLY then remounts it read-only. Real VfsLfs2: real OSErrors.
RAM_FS = """
import vfs, os
class RAM:
    def __init__(s, n): s.d = bytearray(n * 512)
    def readblocks(s, n, buf, off=0): o = n * 512 + off; buf[:] = s.d[o:o + len(buf)]
    def writeblocks(s, n, buf, off=0): o = n * 512 + off; s.d[o:o + len(buf)] = buf
    def ioctl(s, op, arg):
        if op == 4: return len(s.d) // 512
        if op == 5: return 512
        if op == 6: return 0
_home = os.getcwd()
_b = RAM(BLOCKS)
vfs.VfsLfs2.mkfs(_b)
vfs.mount(vfs.VfsLfs2(_b), '/board')
os.chdir('/board')
for _n, _d in PRELOAD:
    with open(_n, 'wb') as _f:
        _f.write(_d)
if READONLY:
    vfs.umount('/board')
    vfs.mount(vfs.VfsLfs2(_b), '/board', readonly=True)
    os.chdir('/board')
open(_home + '/.ram_fs_ready', 'w').close()
"""


def ram_board(make_peer, name: str, blocks: int, preload: dict[str, bytes], readonly: bool = False):
    boot = f"BLOCKS = {blocks}\nPRELOAD = {list(preload.items())!r}\nREADONLY = {readonly}\n" + RAM_FS
    peer = make_peer(name, files={"boot.py": boot})
    # Provisioning's Ctrl-C would cut a boot.py still making the RAM filesystem (the likely
    # cause of a loaded CI run's "full" board taking every file, into the host folder).
    wait_while_running(peer.proc, lambda: (peer.root / ".ram_fs_ready").exists(),
                       f"{name}: boot.py did not make its RAM filesystem within 15 s", 15)
    return peer


def board_files(port: str) -> dict[str, bytes]:
    """Every file in the board's current folder (its root), as bytes."""
    with ReplSession(port) as s:
        text = s.run("import os, binascii\nfor n in os.listdir():\n print(n, binascii.hexlify(open(n, 'rb').read()).decode())\n")
    return {name: bytes.fromhex(data) for name, _, data in (line.partition(" ") for line in text.splitlines())}


def test_an_emoji_in_the_ssid_password_and_a_file_name_reaches_the_board_as_written(make_peer, tmp_path):
    """JSON's \\ud83c\\udf93 escapes are read by MicroPython as two lone surrogates: the board would
    look for another network name than the one the teacher typed, and never join it."""
    ssid, password = "Café 🎓 Lab", "pä🔑sswörd"
    lesson = tmp_path / "lesson"
    lesson.mkdir()
    (lesson / "🎓 notes.txt").write_text("read me\n")
    peer = make_peer()
    [r] = provision_all([peer.port], ProvisionConfig(wifi_ssid=ssid, wifi_password=password), files=lesson,
                        pacing=Pacing.fast())
    assert r.ok, r.error
    assert r.files == {"written": ["🎓 notes.txt"], "unchanged": [], "removed": [], "kept": []}
    with ReplSession(peer.port) as s:     # what the board's own config reader makes of it
        seen = s.run("import wsconfig\nw = wsconfig.load()['wifi']\nprint(w['ssid'].encode().hex())\n"
                     "print(w['password'].encode().hex())\n").split()
    assert seen == [ssid.encode().hex(), password.encode().hex()]
    assert (peer.root / "🎓 notes.txt").read_text() == "read me\n"
    assert password not in json.dumps(r.to_dict(), ensure_ascii=False) and r.config["wifi"]["password"] == "***"


def test_a_full_board_filesystem_is_named_with_the_file_and_nothing_is_half_written(make_peer, tmp_path):
    lesson = tmp_path / "lesson"
    lesson.mkdir()
    (lesson / "a_small.py").write_text("print('small')\n")
    (lesson / "data.bin").write_bytes(bytes(range(256)) * 36)          # 9216 bytes: more than is free
    old_config = b'{"hostname": "old", "custom": 1}'
    peer = ram_board(make_peer, "full", 20, {"workshop.json": old_config, "data.bin": b"last week's data"})
    [r] = provision_all([peer.port], ProvisionConfig(wifi_ssid="W", wifi_password=WIFI_PW), files=lesson,
                        pacing=Pacing.fast())
    assert not r.ok and r.stage == "files"
    assert "data.bin (9216 bytes) not written: the board's filesystem is full" in r.error, r.error
    assert "1 other file(s) written before it" in r.error, r.error
    assert r.files == {"written": ["a_small.py"], "unchanged": [], "removed": [], "kept": []}
    files = board_files(peer.port)
    assert files["data.bin"] == b"last week's data"                   # its previous copy, whole
    assert files["a_small.py"] == b"print('small')\n"
    assert not [n for n in files if n.endswith(".tmp")]
    assert json.loads(files["workshop.json"])["custom"] == 1
    assert WIFI_PW not in r.error


def test_a_read_only_board_filesystem_is_named_and_its_config_kept(make_peer):
    old_config = b'{"hostname": "old", "custom": 1}'
    peer = ram_board(make_peer, "ro", 40, {"workshop.json": old_config}, readonly=True)
    [r] = provision_all([peer.port], ProvisionConfig(hostname="lab-1", wifi_ssid="W"), pacing=Pacing.fast())
    assert not r.ok and r.stage == "config"
    assert r.error.endswith("workshop.json not written: the board's filesystem is read-only (OSError 30)"), r.error
    assert board_files(peer.port) == {"workshop.json": old_config}


def test_a_boot_py_that_is_not_utf8_keeps_its_bytes(make_peer):
    """A teacher's boot.py saved in Latin-1 (a comment with an accent): the hook is appended, the
    rest is left byte for byte (not turned into U+FFFD replacement characters)."""
    peer = make_peer()
    mine = b"# temp\xe9rature du capteur\nimport gc\n"
    (peer.root / "boot.py").write_bytes(mine)
    [r] = provision_all([peer.port], ProvisionConfig(hostname="lab-1"), pacing=Pacing.fast())
    assert r.ok and r.boot_hook == "added", r.error
    assert (peer.root / "boot.py").read_bytes() == mine + b"import workshop_boot\n"


def test_a_lesson_of_many_files_fits_an_esp8266_sized_heap(make_peer, tmp_path):
    """60 exercises on a board with ~46 KB free (64-bit objects: what ~20 KB is on an ESP8266):
    the board's sha256 of every file is asked for in small batches, printed as it goes, and
    nothing of it stays in the REPL's globals for the attendee's code to miss."""
    lesson = tmp_path / "lesson"
    (lesson / "exercises").mkdir(parents=True)
    for i in range(60):
        (lesson / "exercises" / f"exercise_{i:03d}_blink_the_led.py").write_text(f"print({i})\n")
    peer = make_peer(heapsize="48k")

    def free() -> int:
        with ReplSession(peer.port) as s:
            return int(s.run("import gc\ngc.collect()\nprint(gc.mem_free())\n"))

    assert provision_all([peer.port], ProvisionConfig(hostname="lab-1"), pacing=Pacing.fast())[0].ok
    before = free()                         # (what identifying the board imports is held from here on)
    [r] = provision_all([peer.port], ProvisionConfig(hostname="lab-1"), files=lesson, pacing=Pacing.fast())
    assert r.ok, r.error
    assert len(r.files["written"]) == 60
    [again] = provision_all([peer.port], ProvisionConfig(), files=lesson, pacing=Pacing.fast())
    assert again.ok and len(again.files["unchanged"]) == 60, again.error
    assert before - free() < 1500, before


@pytest.mark.parametrize("toml, message", [
    ("[announce]\ninterval_s = nan\n", "announce.interval_s: nan: a board's JSON reader takes no NaN"),
    ("[announce]\ninterval_s = inf\n", "announce.interval_s: inf: a board's JSON reader takes no NaN or Infinity"),
    ("course_start = 2025-03-01\n", "course_start: datetime.date(2025, 3, 1): a date cannot be written"),
    ("[wifi]\nssid = \"Workshop room 204 (second floor) guests\"\n",
     "wifi.ssid 'Workshop room 204 (second floor) guests': a Wi-Fi network name is 1 to 32 bytes, this one is 39"),
    ("[wifi]\nssid = \"Café ☕☕☕☕☕☕☕☕☕\"\n", "a Wi-Fi network name is 1 to 32 bytes, this one is 33 (in UTF-8)"),
    ("[wifi]\nssid = \"W\"\npassword = \"" + "p" * 65 + "\"\n", "wifi password: 65 bytes, more than the 64"),
    ("[wifi]\nssid = \"W\"\npassword = \"" + "p" * 64 + "\"\n", "wifi password: 64 bytes, not 64 hex digits"),
    ("[mqtt]\npassword = nan\n", "mqtt.password: a board's JSON reader takes no NaN"),
])
def test_config_values_a_board_cannot_use_are_refused_before_any_board(make_peer, tmp_path, toml, message):
    """Values a board would not read (the whole /workshop.json unreadable at boot: no service
    starts) or its Wi-Fi driver would cut short without a word (32-byte SSIDs, 64-byte keys):
    one error naming the key, the boards untouched."""
    cfg = tmp_path / "workshop.toml"
    cfg.write_text(toml)
    with pytest.raises(ProvisionError) as e:
        ProvisionConfig.from_file(cfg)
    assert str(e.value).startswith(f"{cfg}: ") and message in str(e.value), str(e.value)
    assert "p" * 20 not in str(e.value)                       # a password is never shown


def test_a_hex_key_and_an_open_network_are_fine(make_peer):
    peer = make_peer()
    [r] = provision_all([peer.port], ProvisionConfig(wifi_ssid="W" * 32, wifi_password="ab12" * 16),
                        pacing=Pacing.fast())
    assert r.ok, r.error
    assert json.loads((peer.root / "workshop.json").read_text())["wifi"] == {"ssid": "W" * 32, "password": "ab12" * 16}


def test_a_board_config_with_nan_is_replaced_by_one_the_board_reads(make_peer):
    """CPython's json reads NaN, MicroPython's does not: such a config on the board (hand-edited)
    is unreadable there, so it is replaced by a good one rather than merged and written back."""
    peer = make_peer(files={"workshop.json": '{"announce": {"interval_s": NaN}, "hostname": "old"}'})
    [r] = provision_all([peer.port], ProvisionConfig(hostname="lab-1", start=()), pacing=Pacing.fast())
    assert r.ok, r.error
    with ReplSession(peer.port) as s:
        seen = s.run("import wsconfig\nprint(wsconfig.load())\n").strip()
    assert seen == "{'start': [], 'hostname': 'lab-1'}" or seen == "{'hostname': 'lab-1', 'start': []}", seen


def test_two_boards_reporting_one_mac_get_the_clone_advice_not_a_pattern_hint(make_peer):
    """Two boards with one MAC (clones; here two unix peers in one folder, whose id is that
    folder's) get one name from any pattern: the advice was 'use {mac6}, {mac} or {index}',
    which the pattern already did. Neither board is written."""
    a = make_peer("same")
    b = make_peer("same")
    results = provision_all([a.port, b.port], ProvisionConfig(hostname="lab-{mac6}"))
    assert [r.ok for r in results] == [False, False]
    for r in results:
        assert r.stage == "name" and "(a clone): no pattern tells them apart" in r.error, r.error
        assert "use {mac6}" not in r.error
    assert not (a.root / "workshop.json").exists()
