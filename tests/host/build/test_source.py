"""`invoke setup`: the pinned MicroPython checkout, made from a mirror and verified."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workshop import source

REPO = Path(__file__).resolve().parents[3]


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_no_network_is_one_line_that_says_what_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "invoke", "setup", "--ports", "unix",
                           "--git-url", str(tmp_path / "offline" / "{owner}+{name}")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: cannot fetch ") and "set WORKSHOP_GIT_URL to a mirror" in errors[0]
    assert not (tmp_path / "cache" / "micropython-v1.28.0").exists()           # nothing half-made
    assert not (tmp_path / "cache" / "micropython-v1.28.0.partial").exists()


def test_missing_checkout_says_run_setup(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    with pytest.raises(source.SourceError, match=r"no MicroPython checkout at .*: run 'invoke setup' \(needs network\) "
                                                 r"or pass --micropython PATH or set WORKSHOP_MICROPYTHON"):
        source.locate()


@pytest.fixture
def mirror(mp_checkout, tmp_path: Path) -> str:
    """A mirror laid out like '{owner}+{name}', made of the cached checkout and its submodules."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name, path in {"micropython+micropython": mp_checkout.path,
                       "micropython+micropython-lib": mp_checkout.path / "lib" / "micropython-lib",
                       "Mbed-TLS+mbedtls": mp_checkout.path / "lib" / "mbedtls"}.items():
        (root / name).symlink_to(path)
    return str(root / "{owner}+{name}")


def test_setup_from_a_mirror_gives_a_pinned_checkout_with_only_the_needed_submodules(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    events: list[str] = []
    checkout = source.setup(["unix"], url_template=mirror, on_event=events.append)
    assert checkout.path == tmp_path / "cache" / "micropython-v1.28.0"
    assert (checkout.commit, checkout.version, checkout.pinned, checkout.dirty) == (
        source.MICROPYTHON_COMMIT, "v1.28.0", True, False)
    for sub in ("lib/micropython-lib", "lib/mbedtls"):
        assert _git("rev-parse", "HEAD", cwd=checkout.path / sub) == source.submodule_commit(checkout.path, sub)
    assert not (checkout.path / "lib" / "mbedtls" / "tests").exists()           # submodule test suites left out
    assert (checkout.path / "lib" / "mbedtls" / "library" / "ssl_tls.c").is_file()
    assert not list((checkout.path / "lib" / "berkeley-db-1.xx").iterdir())    # not needed by unix
    assert events[0].startswith("cloning MicroPython v1.28.0 from ")

    # A second setup has nothing to do.
    again: list[str] = []
    assert source.setup(["unix"], url_template=mirror, on_event=again.append) == checkout and again == []

    # A submodule moved off its pin is caught, and setup puts it back.
    mplib = checkout.path / "lib" / "micropython-lib"
    _git("-c", "advice.detachedHead=false", "checkout", "-q", "HEAD~1", cwd=mplib)
    with pytest.raises(source.SourceError, match=r"submodule lib/micropython-lib is at [0-9a-f]{10}, "
                                                 r"MicroPython pins 8380c7bb8f: run 'invoke setup --ports unix'"):
        source.locate(None, ["unix"])
    source.setup(["unix"], url_template=mirror)
    assert source.locate(None, ["unix"]).pinned


def test_default_checkout_must_be_the_pinned_release(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    checkout = source.setup(["unix"], url_template=mirror)
    _git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.27.0", cwd=checkout.path)
    with pytest.raises(source.SourceError, match=r"is MicroPython v1.27.0 \([0-9a-f]{10}\), expected v1.28.0: "
                                                 r"delete it and run 'invoke setup'"):
        source.locate(None, ["unix"], submodules=[])
    # The same tree named explicitly is accepted as "another checkout", and says it is not pinned.
    other = source.locate(checkout.path, ["unix"], submodules=[])
    assert other.version == "v1.27.0" and not other.pinned
    monkeypatch.setenv("WORKSHOP_MICROPYTHON", str(checkout.path))
    assert source.locate(None, ["unix"], submodules=[]) == other
