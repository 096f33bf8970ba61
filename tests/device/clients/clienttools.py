"""Helpers for the client-library device tests (imported by the test modules beside it)."""

from __future__ import annotations

import ast
import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

BIG = bytes(range(256)) * 200  # /big on the test HTTP server: 51,200 bytes
CHUNKS = [b"hello", b" ", "chunked °world".encode(), b"!" * 300]  # /chunked, one chunk each


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_lines(stdout: str) -> list:
    """Each line a device script printed, read back as the Python literal it printed."""
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.strip()]


class DeviceProcess:
    """A MicroPython script running in the background; its printed lines arrive in order."""

    def __init__(self, micropython, code: str, tmp_path: Path, *args: str, **kw) -> None:
        script = tmp_path / f"device_{time.monotonic_ns()}.py"
        script.write_text(code)
        self.proc = micropython.popen(script, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, wanted, timeout: float = 10):
        """Wait for the next printed line and return it as a literal; fail if it is not `wanted`."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"device printed nothing for {timeout} s; so far {self.seen}") from None
        if line is None:
            raise AssertionError(f"device exited {self.proc.wait()} before {wanted!r}; printed {self.seen}\n"
                                 f"{self.proc.stderr.read()}")
        self.seen.append(line)
        value = ast.literal_eval(line)
        if wanted is not ... and value != wanted:
            raise AssertionError(f"device printed {value!r}, expected {wanted!r}")
        return value

    def finish(self, timeout: float = 20) -> None:
        """Wait for a clean exit."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"device did not exit; printed {self.seen}") from None
        if rc != 0:
            raise AssertionError(f"device exited {rc}; printed {self.seen}\n{self.proc.stderr.read()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
