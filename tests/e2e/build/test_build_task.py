"""`invoke build --all` on a machine with only some toolchains: nothing is skipped silently."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def invoke(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, COLUMNS="200", **(env or {})))


def test_build_all_names_every_board_and_why_it_was_not_built(mp_checkout, tmp_path: Path):
    # A PATH with the host compiler but no docker and no ESP toolchains: only UNIX can build.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "cc", "gcc", "pkg-config", "git", "sh", "bash", "python3", "ld", "as", "ar", "strip", "size",
                 "objcopy", "cpp", "sed", "grep", "mkdir", "rm", "cat", "cp", "mv", "touch", "uname", "find",
                 "echo", "env", "which", "tr", "head", "tail", "sort", "dirname", "basename", "expr", "ln"):
        # python3 may be a pyenv shim that needs pyenv on PATH: this interpreter itself instead.
        found = str(Path(sys.executable).resolve()) if tool == "python3" else shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": f"{bin_dir}"}
    strict = invoke("build", "--all", env=env)
    assert strict.returncode == 1
    for board in ("ESP32_GENERIC", "ESP32_GENERIC_S2", "ESP32_GENERIC_S3", "ESP32_GENERIC_C3", "ESP8266_GENERIC"):
        assert f"{board}: no toolchain here: no docker client; no " in strict.stdout, strict.stdout
    assert "UNIX" in strict.stdout and ("built" in strict.stdout or "up to date" in strict.stdout)

    lenient = invoke("build", "--all", "--skip-unavailable", env=env)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    default = invoke("build", env=env)          # neither --board nor --all: what ./kit build runs
    assert default.returncode == 0 and default.stdout == lenient.stdout, default.stdout + default.stderr
    # Piped, the table is plain: a header line, then one whole line per board.
    table = lenient.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.split()[:2] == ["board", "result"])
    rows = {line.split()[0]: line for line in table[header + 1:] if line.strip()}
    assert set(rows) == {"ESP32_GENERIC", "ESP32_GENERIC_S2", "ESP32_GENERIC_S3", "ESP32_GENERIC_C3",
                         "ESP8266_GENERIC", "UNIX"}
    assert all("skipped" in rows[b] and "no docker client" in rows[b] for b in rows if b != "UNIX")
    assert "up to date" in rows["UNIX"]


def test_boards_json_lists_every_board_with_its_toolchain_here(tmp_path: Path):
    import json

    from workshop import build, config

    proc = invoke("boards", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["board"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(config.load_boards())
    for name, row in rows.items():
        status = build.toolchain_status(config.get_board(name))
        assert (row["toolchain"], row["toolchain_reason"]) == (status.kind, status.reason), name
    assert rows["ESP8266_GENERIC"]["images"] == [{"file": "firmware.bin", "offset": 0}]
    assert rows["ESP32_GENERIC"]["images"] == [{"file": "firmware.bin", "offset": 0x1000}]
    assert rows["ESP8266_GENERIC"]["btree"] is False and rows["ESP8266_GENERIC"]["margins"]["iram"] == 1024
    assert rows["UNIX"]["toolchain"] == "native"


def test_check_json_is_the_findings(mp_checkout):
    import json

    proc = invoke("check", "--board", "UNIX,ESP8266_GENERIC", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = json.loads(proc.stdout)
    assert set(found) == {"UNIX", "ESP8266_GENERIC"}
    for name, r in found.items():
        assert r["ok"] and r["problems"] == [] and "umqtt/simple.py" in r["frozen"] and r["stack_bytecode"] > 1000
        assert "umqtt.simple" in r["stack_modules"]
    # The budget of the last build, when there is one in dist/ (UNIX has no budget regions).
    assert found["UNIX"]["budget"] is None


def test_build_refuses_a_board_together_with_all():
    """--all used to win over --board: `build --board X --all` built every board."""
    proc = invoke("build", "--board", "UNIX", "--all")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "--board UNIX and --all: give one of them" in " ".join(proc.stderr.split())
    assert "Build" not in proc.stdout


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_ctrl_c_stops_a_build_within_2_s_and_says_what_dist_still_holds(mp_checkout, tmp_path: Path, signame):
    """Ctrl-C mid-make: exit 130 within 2 s, the table says interrupted, and that dist/UNIX/
    still holds the previous image (a project copy of its own: its own build tree and dist/).
    kill (SIGTERM) and a closed terminal (SIGHUP) the same: make runs in a session of its own,
    so nothing but the kit stops it, and no make is left running."""
    import signal
    import time

    from workshop import build, buildinfo, config

    project = tmp_path / "project"
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    shutil.copy2(REPO / "manifest.py", project / "manifest.py")
    old = project / "dist" / "UNIX"
    old.mkdir(parents=True)
    (old / "micropython").write_bytes(b"old image")
    info = buildinfo.BuildInfo(
        board="UNIX", port="unix", chip="host", chip_name="host", flash_size=None, mp_board=None, variant="standard",
        micropython_version="v1.28.0", micropython_commit=mp_checkout.commit, project_version="0.1.0",
        project_commit=None, project_dirty=False, manifest_sha256="0", inputs_sha256="an older build",
        frozen_modules=(), toolchain="native", toolchain_image=None, built_at="2026-11-20T10:00:00Z", duration_s=1.0,
        artifacts=(buildinfo.Artifact("micropython", buildinfo.sha256_file(old / "micropython"), 9, None, False),))
    buildinfo.write_atomic(old / "build.json", info.to_json())
    tree = build.build_dir_for(config.get_board("UNIX", project), project)
    env = dict(os.environ, COLUMNS="200", WORKSHOP_PROJECT=str(project))
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "-r", str(REPO), "build", "--board", "UNIX"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:                 # make has started (a fresh tree: it compiles for a while)
            seen += line
            if "mpy-cross: make" in line:
                break
        assert "mpy-cross: make" in seen, seen
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t0
        time.sleep(0.5)
        left = subprocess.run(["pgrep", "-f", f"BUILD={tree}"], capture_output=True, text=True).stdout.split()
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", f"BUILD={tree}"], capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
    assert left == [], f"make still running after the build ended: pids {left}"
    text = " ".join((seen + out).split())
    assert elapsed < 2.0, (elapsed, text[-800:])
    assert proc.returncode == 130, text + err
    assert "Traceback" not in err, err
    assert "Build interrupted" in text and "UNIX interrupted" in text, text
    assert ("interrupted during the mpy-cross step (stopped); dist/UNIX/ still holds the previous image, built "
            "2026-11-20T10:00:00Z (stale: built from other inputs)") in text, text
    assert (old / "micropython").read_bytes() == b"old image"
