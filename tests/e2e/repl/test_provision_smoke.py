"""Provisioning and smoke checks on N real MicroPython REPLs on PTYs, in parallel."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from workshop import smoke
from workshop.config import get_board
from workshop.provision import ProvisionConfig, ProvisionError, provision_all



def frozen_unix_skip_reason() -> str | None:
    """The root conftest's answer (found among loaded modules: this folder has its own conftest)."""
    import sys

    root = Path(__file__).resolve().parents[2] / "conftest.py"
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == root:
            return mod.frozen_unix_skip_reason()
    return None if (root.parent.parent / "dist" / "UNIX" / "micropython").exists() else "dist/UNIX/micropython not built"


_FROZEN_SKIP = frozen_unix_skip_reason()

WIFI_PW, TELNET_PW = "s3cret-wifi-pw", "s3cret-telnet-pw"


def config(**kw) -> ProvisionConfig:
    base = dict(hostname="ws-{mac4}", wifi_ssid="Workshop", wifi_password=WIFI_PW, telnet_user="micro",
                telnet_password=TELNET_PW, mqtt_broker="127.0.0.1", mqtt_port=1883, start=("wifi", "telnet"))
    base.update(kw)
    return ProvisionConfig(**base)


def no_secrets(*texts: str) -> bool:
    return not any(WIFI_PW in t or TELNET_PW in t for t in texts)


def test_provision_four_boards_in_parallel(make_peer):
    peers = [make_peer(f"d{i}") for i in range(4)]
    (peers[0].root / "boot.py").write_text("import gc\ngc.collect()")           # user content, no newline
    (peers[1].root / "workshop.json").write_text('{"custom": {"led": 2}, "wifi": {"ssid": "old", "channel": 6}}')
    events = []
    results = provision_all([p.port for p in peers], config(), on_event=events.append)
    assert all(r.ok for r in results), [r.error for r in results]
    names = set()
    for peer, r in zip(peers, results):
        doc = json.loads((peer.root / "workshop.json").read_text())
        assert doc["hostname"] == r.hostname == f"ws-{r.mac.replace(':', '')[-4:]}"
        assert doc["wifi"]["password"] == WIFI_PW and doc["telnet"] == {"user": "micro", "password": TELNET_PW}
        assert doc["mqtt"] == {"broker": "127.0.0.1", "port": 1883} and doc["start"] == ["wifi", "telnet"]
        assert r.config["wifi"]["password"] == "***"
        assert not list(peer.root.glob("*.tmp"))
        names.add(r.hostname)
    assert len(names) == 4
    assert (peers[0].root / "boot.py").read_text() == "import gc\ngc.collect()\nimport workshop_boot\n"
    kept = json.loads((peers[1].root / "workshop.json").read_text())
    assert kept["custom"] == {"led": 2} and kept["wifi"] == {"ssid": "Workshop", "channel": 6, "password": WIFI_PW}
    assert no_secrets(repr(results), *(repr(e) for e in events), json.dumps([r.to_dict() for r in results]))

    again = provision_all([p.port for p in peers], config())                  # idempotent
    assert [r.boot_hook for r in again] == ["present"] * 4
    assert (peers[0].root / "boot.py").read_text().count("import workshop_boot") == 1


def test_provision_through_a_dropping_uart(make_peer, drop):
    peer = make_peer(drop=drop)
    [r] = provision_all([peer.port], config(hostname="lab-{index:02d}"))
    assert r.ok, r.error
    assert json.loads((peer.root / "workshop.json").read_text())["hostname"] == "lab-01"
    assert drop.passed > 1000


def test_duplicate_hostnames_are_refused_before_writing(make_peer):
    peers = [make_peer(f"d{i}") for i in range(2)]
    # A fixed name for two boards: refused before any board is touched.
    with pytest.raises(ProvisionError, match="hostname 'same-name' would be the name of all 2 boards"):
        provision_all([p.port for p in peers], config(hostname="same-name"))
    # A pattern that makes one name of two boards' MACs ({mac:.0} is empty): refused once both are identified.
    results = provision_all([p.port for p in peers], config(hostname="same-x{mac:.0}"))
    assert not any(r.ok for r in results)
    assert all("same-x" in r.error and r.stage == "name" for r in results)
    assert not any((p.root / "workshop.json").exists() for p in peers)


def test_a_secret_in_an_error_is_masked(make_peer):
    silent = make_peer("silent", silent=True)
    [r] = provision_all([silent.port], config(), connect_timeout=1.0)
    assert not r.ok and "no raw REPL" in r.error and no_secrets(repr(r), r.error)


# --- smoke ---------------------------------------------------------------------------------------


def unix_expected(**changes) -> smoke.Expected:
    return smoke.Expected.for_board(get_board("UNIX"), **changes)


def test_smoke_pypi_runtime_reports_the_stack_not_frozen(make_peer, tmp_path):
    """The PyPI runtime imports the stack from modules/ (source files): that must fail the check."""
    peers = [make_peer(f"d{i}") for i in range(4)]
    provision_all([p.port for p in peers], config())
    reports = smoke.smoke_all([p.port for p in peers], unix_expected())
    for r in reports:
        assert not r.ok
        assert r.check("connect").status == r.check("config").status == r.check("heap").status == "pass"
        wifi = r.check("module wifi") or r.check("module umqtt.simple")
        assert wifi.status == "fail" and "not frozen" in wifi.detail and "/modules/" in wifi.detail
        assert r.check("flash").status == "skip"
    junit = ET.fromstring(smoke.to_junit(reports))
    cases = junit.findall(".//testcase")
    assert len(junit.findall("testsuite")) == 4 and len(cases) == sum(len(r.checks) for r in reports)
    assert junit.find(".//testcase[@name='module umqtt.simple']/failure") is not None
    data = json.loads(smoke.to_json(reports))
    assert data["ok"] is False and len(data["devices"]) == 4
    assert no_secrets(smoke.to_json(reports), smoke.to_junit(reports))


def test_frozen_detection_on_the_runtimes_own_frozen_modules(make_peer):
    """The PyPI runtime freezes asyncio and mip: with those as 'the stack', every check passes.

    Proves the frozen test on a real frozen module (its __file__ is 'asyncio/__init__.py',
    relative, not a file on the device); the full-stack positive case needs dist/UNIX.
    """
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    [r] = smoke.smoke_all([peer.port], unix_expected(stack_modules=("asyncio", "mip")))
    assert r.ok, [(c.name, c.detail) for c in r.failed]
    assert r.check("module asyncio").detail.startswith("frozen")


def test_failures_name_the_check(make_peer):
    files = {"workshop.json": "{}"}
    good = make_peer("good", stack_on_path=False, files=files)
    shadowed = make_peer("shadowed", stack_on_path=False, files={**files, "asyncio.py": "X = 1\n"})
    small = make_peer("small", stack_on_path=False, heapsize="300k", files=files)
    broken = make_peer("broken", stack_on_path=False, files={"workshop.json": "{not json"})
    silent = make_peer("silent", silent=True)
    expected = unix_expected(stack_modules=("asyncio", "mip", "nosuchmodule"))
    reports = smoke.smoke_all([p.port for p in (good, shadowed, small, broken, silent)], expected,
                              connect_timeout=1.5)
    by = dict(zip(("good", "shadowed", "small", "broken", "silent"), reports))
    failed = {k: sorted(c.name for c in r.failed) for k, r in by.items()}
    assert failed["good"] == ["module nosuchmodule"]
    assert "ImportError" in by["good"].check("module nosuchmodule").detail
    assert failed["shadowed"] == ["module asyncio", "module nosuchmodule"]
    assert "asyncio.py" in by["shadowed"].check("module asyncio").detail
    assert failed["small"] == ["heap", "module nosuchmodule"]
    assert failed["broken"] == ["config", "module nosuchmodule"]
    assert failed["silent"] == ["connect"] and "no raw REPL" in by["silent"].check("connect").detail
    assert by["silent"].duration_s < 4


def test_version_mismatch_fails_firmware(make_peer):
    peer = make_peer(stack_on_path=False, files={"workshop.json": "{}"})
    [r] = smoke.smoke_all([peer.port], unix_expected(stack_modules=(), micropython_version="1.28.0"))
    fw = r.check("firmware")
    assert fw.status == "fail" and "expected 1.28.0" in fw.detail


@pytest.mark.skipif(_FROZEN_SKIP is not None, reason=str(_FROZEN_SKIP))
def test_frozen_unix_firmware_passes_after_provisioning(make_peer):
    """The real thing: the UNIX firmware we built, the stack frozen in; provision then smoke, N = 4."""
    peers = [make_peer(f"d{i}", runtime="frozen") for i in range(4)]
    assert all(r.ok for r in provision_all([p.port for p in peers], config(start=())))
    expected = smoke.Expected.from_build(Path(__file__).resolve().parents[3] / "dist" / "UNIX")
    reports = smoke.smoke_all([p.port for p in peers], expected)
    for r in reports:
        assert r.ok, [(c.name, c.detail) for c in r.failed]
        assert all(c.status == "pass" for c in r.checks if c.name.startswith("module ") and c.name != "module workshop_boot")


@pytest.mark.skipif(_FROZEN_SKIP is not None, reason=str(_FROZEN_SKIP))
def test_a_file_shadowing_the_image_fails_where_modules_have_no_file_name(make_peer):
    """The UNIX image, like the ESP8266's, keeps no module __file__: a stale umqtt/simple.py or
    _workshop_build.py left on the board (imported before the frozen one) must still fail the
    check, naming the file, not pass as "built into the firmware"."""
    peer = make_peer(runtime="frozen", files={"workshop.json": '{"hostname": "x"}',
                                              "umqtt/simple.py": "X = 1\n", "_workshop_build.py": "board = 'UNIX'\n"})
    dist = Path(__file__).resolve().parents[3] / "dist" / "UNIX"
    [r] = smoke.smoke_all([peer.port], smoke.Expected.from_build(dist))
    mod = r.check("module umqtt.simple")
    assert mod.status == "fail" and "imported from the file umqtt/simple.py" in mod.detail, mod.detail
    fw = r.check("firmware")
    assert fw.status == "fail" and "_workshop_build.py" in fw.detail, fw.detail
    wifi = r.check("module wifi")  # no __file__ (else it would say "frozen (...)"), no shadow
    assert wifi.status == "pass" and wifi.detail == "built into the firmware", wifi.detail


@pytest.mark.skipif(_FROZEN_SKIP is not None, reason=str(_FROZEN_SKIP))
def test_firmware_check_compares_the_images_build_identity(make_peer, tmp_path):
    """dist/UNIX/micropython carries its build identity: against its own build.json the firmware
    check passes; against another build's (same board, MicroPython and chip; other inputs) it
    fails, naming both inputs hashes."""
    dist = Path(__file__).resolve().parents[3] / "dist" / "UNIX"
    real = json.loads((dist / "build.json").read_text())
    peer = make_peer(runtime="frozen", files={"workshop.json": '{"hostname": "x"}'})
    [ok] = smoke.smoke_all([peer.port], smoke.Expected.from_build(dist))
    fw = ok.check("firmware")
    assert fw.status == "pass" and f"identity UNIX inputs {real['inputs_sha256'][:12]}" in fw.detail
    assert ok.facts["identity"]["inputs"] == real["inputs_sha256"]

    other_hash = "f" * 64 if real["inputs_sha256"] != "f" * 64 else "e" * 64
    other = tmp_path / "other" / "UNIX"
    other.mkdir(parents=True)
    (other / "build.json").write_text(json.dumps(dict(real, inputs_sha256=other_hash)))
    [r] = smoke.smoke_all([peer.port], smoke.Expected.from_build(other))
    fw = r.check("firmware")
    assert fw.status == "fail" and [c.name for c in r.failed] == ["firmware"]
    assert real["inputs_sha256"][:12] in fw.detail and other_hash[:12] in fw.detail
    assert str(other / "build.json") in fw.detail


def test_an_image_without_build_identity_fails_when_one_is_expected(make_peer, tmp_path):
    """The PyPI runtime stands in for an image built before identities: no _workshop_build."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": "{}"})
    [r] = smoke.smoke_all([peer.port], unix_expected(stack_modules=(), inputs_sha256="c" * 64))
    fw = r.check("firmware")
    assert fw.status == "fail" and fw.detail.startswith("no build identity in the image: rebuild")
    assert "c" * 12 in fw.detail
    [plain] = smoke.smoke_all([peer.port], unix_expected(stack_modules=()))
    assert plain.check("firmware").status == "pass"


def test_control_characters_from_a_board_keep_the_junit_report_valid(make_peer):
    """A module on the device fails with an ANSI colour code and a NUL in its message: the JUnit XML
    still parses, with the characters written as escapes, and the failure names the check."""
    broken = "raise ImportError('\\x1b[31mbroken\\x1b[0m \\x00 module')\n"
    peer = make_peer(stack_on_path=False, files={"workshop.json": "{}", "asyncio.py": broken})
    [r] = smoke.smoke_all([peer.port], unix_expected(stack_modules=("asyncio",)))
    check = r.check("module asyncio")
    assert check.status == "fail" and "\x1b[31mbroken\x1b[0m \x00 module" in check.detail
    root = ET.fromstring(smoke.to_junit([r]))
    failure = root.find(".//testcase[@name='module asyncio']/failure")
    assert "\\x1b[31mbroken\\x1b[0m \\x00 module" in failure.get("message") == failure.text
    [device] = json.loads(smoke.to_json([r]))["devices"]
    assert [c["detail"] for c in device["checks"] if c["name"] == "module asyncio"] == [check.detail]


def test_a_lesson_boot_py_keeps_the_boot_hook(make_peer, tmp_path):
    """A lesson folder's own boot.py is copied with `import workshop_boot` added: the board still starts its services."""
    lesson = tmp_path / "lesson"
    lesson.mkdir()
    (lesson / "boot.py").write_text("print('lesson boot')\n")
    (lesson / "main.py").write_text("print('hi')\n")
    peer = make_peer()
    [r] = provision_all([peer.port], config(), files=lesson)
    assert r.ok, r.error
    boot = (peer.root / "boot.py").read_text()
    assert boot == "print('lesson boot')\nimport workshop_boot\n" and r.boot_hook == "added"
    [again] = provision_all([peer.port], config(), files=lesson)            # identical now: skipped, hook kept
    assert again.ok and again.boot_hook == "present" and "boot.py" in again.files["unchanged"]
    assert (peer.root / "boot.py").read_text().count("import workshop_boot") == 1
    (lesson / "boot.py").write_text("import workshop_boot\nprint('own hook')\n")
    [own] = provision_all([peer.port], config(), files=lesson)
    assert own.ok and (peer.root / "boot.py").read_text() == "import workshop_boot\nprint('own hook')\n"
