"""A real build: the UNIX board with the frozen stack, from the pinned MicroPython checkout.

Skips (one line) without the checkout; `invoke setup` makes it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from workshop import build, buildinfo, check, config

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def unix_build(mp_checkout, tmp_path_factory):
    """Build into a private dist/ (the build tree in the cache is shared, so this is incremental)."""
    dist = tmp_path_factory.mktemp("dist")
    plan = build.plan(config.get_board("UNIX"), mp_checkout, "native", dist=dist)
    result = build.run(plan)
    assert result.status == "built", result.error and (result.log.read_text()[-3000:] if result.log else result.error)
    return plan, result


def test_build_json_describes_the_image(unix_build, mp_checkout):
    plan, result = unix_build
    info = buildinfo.read_build_info(plan.board_dist)   # verifies every artifact's sha256
    assert info == result.info
    assert (info.board, info.port, info.chip, info.toolchain, info.toolchain_image) == ("UNIX", "unix", "host", "native", None)
    assert (info.micropython_version, info.micropython_commit) == ("v1.28.0", mp_checkout.commit)
    assert info.inputs_sha256 == plan.inputs_sha256
    binary = plan.board_dist / "micropython"
    assert [a.file for a in info.artifacts] == ["micropython"] and os.access(binary, os.X_OK)
    assert info.artifacts[0].size == binary.stat().st_size and info.flash_images == ()
    assert info.manifest_sha256 == buildinfo.sha256_file(REPO / "ports" / "unix" / "manifest.py")
    # The frozen list in build.json is what the manifest resolves to, resolved as the build does:
    # with the build's identity folder named (WORKSHOP_BUILD_IDENTITY), so with _workshop_build.py.
    expected = [f.target for f in check.resolve(config.get_board("UNIX"), mp_checkout,
                                                identity=build.identity_dir(plan.build_dir))]
    assert sorted(info.frozen_modules) == sorted(expected)
    # `invoke check` resolves without a build: everything but the identity module.
    plain = [f.target for f in check.resolve(config.get_board("UNIX"), mp_checkout)]
    assert sorted(plain + ["_workshop_build.py"]) == sorted(info.frozen_modules)


def test_the_image_carries_its_build_identity(unix_build, tmp_path: Path):
    """The built binary's frozen _workshop_build says which build it is: build.json's inputs hash."""
    plan, result = unix_build
    code = ("import json, _workshop_build as b\n"
            "print(json.dumps([b.board, b.inputs, b.project, hasattr(b, '__file__')]))\n")
    proc = subprocess.run([str(plan.board_dist / "micropython"), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, MICROPYPATH=".frozen"))
    assert proc.returncode == 0, proc.stderr
    board, inputs, project, has_file = json.loads(proc.stdout.splitlines()[-1])
    info = buildinfo.read_build_info(plan.board_dist)
    assert inputs == info.inputs_sha256 == plan.inputs_sha256
    assert (board, project) == (info.board, info.project_version) == ("UNIX", info.project_version)
    # Frozen (from an empty folder, .frozen alone on the path); like the ESP8266's firmware, the
    # image keeps no module __file__ (ports/unix/port.toml).
    assert not has_file and "_workshop_build.py" in info.frozen_modules


def test_every_frozen_module_imports_from_frozen_only(unix_build, mp_checkout, tmp_path: Path):
    """From an empty folder with sys.path reduced to .frozen, every module the manifest lists
    imports: no file of the repo is reachable. (The image, like the ESP8266's, keeps no module
    __file__ to name where each came from: the empty folder and path are the proof.)"""
    plan, result = unix_build
    stack = check.check_board(config.get_board("UNIX"), mp_checkout).stack_modules
    assert set(stack) >= {"umqtt.simple", "umqtt.robust", "urequests", "requests", "base64", "ntptime",
                          "wifi", "mdns", "telnet", "webserver", "workshop_boot"}
    frozen = {check.FrozenFile(Path(t), t).module: t for t in result.info.frozen_modules}
    assert set(stack) <= set(frozen)
    code = (
        "import sys, json\n"
        f"names = {sorted(frozen)!r}\n"
        "out = {}\n"
        "for n in names:\n"
        "    m = __import__(n)\n"
        "    for part in n.split('.')[1:]:\n"
        "        m = getattr(m, part)\n"
        "    out[n] = getattr(m, '__file__', '')\n"
        "print(json.dumps({'path': sys.path, 'files': out}))\n"
    )
    proc = subprocess.run([str(plan.board_dist / "micropython"), "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, MICROPYPATH=".frozen"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["path"] == ["", ".frozen"] and list(tmp_path.iterdir()) == []
    assert report["files"] == dict.fromkeys(frozen, "")


def test_unchanged_inputs_are_up_to_date_without_make(unix_build):
    plan, _ = unix_build
    ran = []
    result = build.run(plan, runner=lambda argv, **kw: ran.append(argv))
    assert result.status == "up to date" and ran == []
