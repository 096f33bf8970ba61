"""Fixtures for the service modules: a running MicroPython process serving on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import free_port, wait_for_port

HERE = Path(__file__).resolve().parent


class Served:
    """A MicroPython script started with a port; stdout is collected for log assertions."""

    def __init__(self, mp, script: str, *args: str, env: dict | None = None, port: int | None = None,
                 ready: str | None = None, heapsize: str | None = None):
        self.port = port or free_port()
        self.proc = mp.popen(HERE / script, str(self.port), *args, env=env, heapsize=heapsize, cwd=HERE,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if ready:  # wait for a log line instead of probing the port (a probe would be a client)
            seen = ""
            while ready not in seen:
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"{script} exited before '{ready}': {seen}")
                seen += line
        else:
            try:
                wait_for_port(self.port)
            except TimeoutError:
                self.proc.kill()
                raise AssertionError(f"{script} did not listen: {self.proc.stdout.read()}")

    def stop(self) -> str:
        self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return out or ""


@pytest.fixture
def serve(micropython):
    started: list[Served] = []

    def start(script: str, *args: str, **kw) -> Served:
        s = Served(micropython, script, *args, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.stop()
