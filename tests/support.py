"""Helpers for tests in any folder (tests/ is on sys.path: `from support import free_port`)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def require_tool(name: str, package: str) -> str:
    """A real peer the suite needs: missing means the machine was not set up, which is a failure."""
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: run ./kit test (it installs {package}) or apt-get install {package}")
    return path


MOCK_FLASH_SIZE = 4 * 1024 * 1024  # esp32-mock-bootloader's emulated SPI flash


class FlashDumpingPeer:
    """A peer process around esp32-mock-bootloader that writes the emulated flash to dump_path on
    SIGTERM (the mock keeps flash in memory and has no out-of-band read): what a test compares with
    the image, without going back through esptool. Mixed into the peers' dataclasses."""

    proc: subprocess.Popen
    dump_path: Path
    log_path: Path

    if TYPE_CHECKING:  # a field of MockDevice, a property of station_peers.BoardPeer (it re-enumerates)
        @property
        def port(self) -> str: ...

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Pull the plug: SIGKILL, no dump (the PTY vanishes mid-conversation)."""
        self.proc.kill()
        self.proc.wait()

    def flash(self) -> bytes:
        """Stop the peer and return its whole flash (only once; the device is gone after)."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        if not self.dump_path.exists():
            raise AssertionError(f"{self.port}: the peer left no flash dump (killed?)\n"
                                 f"{self.log_path.read_text(errors='replace')}")
        data = self.dump_path.read_bytes()
        assert len(data) == MOCK_FLASH_SIZE, f"{self.port}: flash dump of {len(data)} B"
        return data


def interrupt(proc: subprocess.Popen) -> tuple[str, str, float]:
    """Ctrl-C (SIGINT) to a running command: its (stdout, stderr) and the seconds until it exited.
    Killed if it outlives 60 s (the wait then raises)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return out, err, time.monotonic() - t0



def cancel_while_running(work, cancel, running_for: float, wait: float = 5.0) -> float | None:
    """work() in a thread; after running_for seconds (it must still be running: AssertionError
    otherwise) cancel is set: the seconds from then until work() returned or raised, or None if
    it outlived `wait`. interrupt()'s twin for a worker thread, as Ctrl-C reaches one."""
    import threading

    ended: list[float] = []

    def run() -> None:
        try:
            work()
        finally:
            ended.append(time.monotonic())

    threading.Thread(target=run, daemon=True).start()
    time.sleep(running_for)
    assert not ended, f"work ended within {running_for} s, before the cancel: it needs to run longer"
    t0 = time.monotonic()
    cancel.set()
    deadline = t0 + wait
    while not ended and time.monotonic() < deadline:
        time.sleep(0.01)
    return ended[0] - t0 if ended else None


class Terminal:
    """A command on a pseudo-terminal `columns` wide, as on a person's terminal (rich draws its
    live tables only there): read what it draws, Ctrl-C it, and its text without ANSI codes."""

    ANSI = __import__("re").compile(r"\x1b\[[0-9;?]*[a-zA-Z]")

    def __init__(self, argv: list[str], columns: int = 80, cwd: Path | None = None) -> None:
        import os
        import pty

        self.out = bytearray()
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the command on its terminal
            if cwd is not None:
                os.chdir(cwd)
            os.environ.update(COLUMNS=str(columns), LINES="50", TERM="xterm")
            os.execv(argv[0], list(argv))
        self.ended = False

    def read(self, seconds: float) -> bool:
        """What it draws for `seconds`, or until it ends; True once it has ended."""
        import os
        import select

        until = time.monotonic() + seconds
        while not self.ended and time.monotonic() < until:
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: the child has gone
                    data = b""
                if not data:
                    self.ended = True
                self.out.extend(data)
        return self.ended

    def interrupt(self) -> None:
        import os

        os.kill(self.pid, signal.SIGINT)

    def close(self) -> None:
        import contextlib
        import os

        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    @property
    def text(self) -> str:
        return self.ANSI.sub("", self.out.decode(errors="replace"))


def wait_while_running(proc: subprocess.Popen, ready, what: str, timeout: float = 60, poll: float = 0.05) -> None:
    """Until ready() says the process reached the point the test acts at (a file it made, a log);
    fails with `what` when the process ends, or the time runs out, first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline and proc.poll() is None, what
        time.sleep(poll)
