"""A room of "boards" on loopback: unix MicroPython processes (the frozen UNIX firmware and the
PyPI runtime) running the real start-up module with distinct configs, plus a real mosquitto."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from roomtools import PASSWORD
from support import free_port

HERE = Path(__file__).resolve().parent


REPO = HERE.parents[2]
FAKE_NETWORK = REPO / "tests" / "device" / "services" / "fake"
FROZEN_UNIX = REPO / "dist" / "UNIX" / "micropython"


def frozen_skip_reason() -> str | None:
    if not FROZEN_UNIX.exists():
        return "dist/UNIX/micropython not built (invoke setup && invoke build --board UNIX)"
    from workshop import build

    stale = build.stale_reason("UNIX")
    return f"dist/UNIX is stale ({stale}): invoke build --board UNIX" if stale else None



def frozen_runtime(pypi):
    reason = frozen_skip_reason()
    if reason:
        pytest.skip(reason)
    return type(pypi)("frozen", FROZEN_UNIX, ".frozen")


@dataclass
class Board:
    hostname: str
    root: Path
    runtime: object
    config: dict
    telnet_port: int
    identity: Path | None = None
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)
    boots: int = 0                  # starts after the first (reboot_on_reset)
    powered: bool = True            # False once kill()ed: no reboot

    def start(self, runtime=None, identity: dict | None | str = "keep") -> Board:
        if runtime is not None:
            self.runtime = runtime
        if identity != "keep":
            self.identity = None
            if identity is not None:
                self.identity = self.root.parent / f"{self.hostname}-identity"
                self.identity.mkdir(exist_ok=True)
                (self.identity / "_workshop_build.py").write_text(
                    "".join(f"{k} = {v!r}\n" for k, v in identity.items()))
        (self.root / "workshop.json").write_text(json.dumps(self.config))
        path = self.runtime.path
        if self.identity is not None:
            path = f"{self.identity}:{path}"
        env = dict(os.environ, MICROPYPATH=path, FAKE_NETWORK_DIR=str(FAKE_NETWORK), FAKE_PORT="esp32",
                   INPUT_LOG=str(self.input_log()))
        env.pop("WORKSHOP_CONFIG", None)
        self.proc = subprocess.Popen(self.runtime.command(str(HERE / "board.py")), cwd=self.root, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seen = ""
        while "board ready" not in seen:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"{self.hostname} exited during start-up: {seen}")
            seen += line
        self.log.append(seen)
        return self

    def input_log(self, boot: int | None = None) -> Path:
        """What the board's telnet server received (logins included) during boot number `boot`
        (default: the current one; 0 is the first)."""
        return self.root.parent / f"{self.hostname}-input-{self.boots if boot is None else boot}.log"

    def reboot_on_reset(self, boot_s: float = 1.0) -> Board:
        """As a real board: its reset (on the unix port soft_reset, which ends the process with 0)
        is followed by a boot, here `boot_s` later (the telnet port refuses meanwhile)."""
        def watch() -> None:
            while self.proc.wait() == 0 and self.powered:
                time.sleep(boot_s)
                if not self.powered:
                    return
                self.boots += 1
                self.start()

        threading.Thread(target=watch, name=f"{self.hostname} power", daemon=True).start()
        return self

    def kill(self) -> None:
        """Power cut: SIGKILL, no goodbye (the broker publishes the last will)."""
        self.powered = False
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def wait_exit(self, timeout: float = 10) -> int:
        return self.proc.wait(timeout)


@pytest.fixture
def room(mosquitto, pypi_micropython, tmp_path: Path):
    """room(hostname, runtime="pypi"|"frozen", identity=None|dict, interval_s=1, start=[...]) -> Board."""
    boards: list[Board] = []
    pypi = pypi_micropython

    def make(hostname: str, runtime: str = "pypi", identity: dict | None = None, interval_s: int = 1,
             start: tuple[str, ...] = ("wifi", "telnet", "announce"), **extra) -> Board:
        rt = pypi if runtime == "pypi" else frozen_runtime(pypi)
        root = tmp_path / hostname
        root.mkdir()
        port = free_port()
        cfg = {"hostname": hostname, "wifi": {"ssid": "Workshop", "password": "wifi-pw"},
               "telnet": {"user": "micro", "password": PASSWORD, "port": port},
               "mqtt": {"broker": mosquitto.host, "port": mosquitto.port},
               "announce": {"interval_s": interval_s}, "start": list(start), **extra}
        b = Board(hostname, root, rt, cfg, port)
        boards.append(b)
        return b.start(identity=identity)

    make.broker = mosquitto
    make.frozen = lambda: frozen_runtime(pypi)
    yield make
    for b in boards:
        b.powered = False
        if b.proc and b.proc.poll() is None:
            try:
                b.resume()
            except ProcessLookupError:
                pass
            b.kill()
        if b.proc and b.proc.stdout:
            b.proc.stdout.close()
