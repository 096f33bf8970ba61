"""PTY peers for the REPL, provisioning and smoke tests (see peers.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from peers import Drop, PtyPeer  # noqa: E402


@pytest.fixture
def make_peer(tmp_path: Path):
    """make_peer(name, files={path: text}, **PtyPeer options) -> a started peer; all stopped at the end."""
    started: list[PtyPeer] = []

    def make(name: str = "dev", files: dict[str, str] | None = None, **kwargs) -> PtyPeer:
        root = tmp_path / name
        for rel, text in (files or {}).items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        peer = PtyPeer(root, **kwargs).start()
        started.append(peer)
        return peer

    yield make
    for p in started:
        p.stop()


@pytest.fixture
def drop() -> Drop:
    return Drop(burst=270, window=0.1)
