"""Small helpers for the service tests (kept here: test dirs are not packages)."""

from __future__ import annotations

import shutil
import socket
import time

import pytest


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: apt-get install {package}")
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)
