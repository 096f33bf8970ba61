"""Fixtures for the station tests: boards that are bootloaders, then MicroPython (see station_peers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from station_peers import BoardFarm


@pytest.fixture
def farm(tmp_path: Path):
    f = BoardFarm(tmp_path / "boards")
    f.root.mkdir()
    yield f
    f.close()
