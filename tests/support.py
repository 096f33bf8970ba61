"""Helpers for tests in any folder (tests/ is on sys.path: `from support import free_port`)."""

from __future__ import annotations

import shutil
import socket
import time

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
