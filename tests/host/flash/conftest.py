"""Fixtures for the flashing tests: a farm of mock bootloaders, a dist/-like folder (see flash_peers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flash_peers import MockFarm


@pytest.fixture
def mocks(tmp_path: Path):
    farm = MockFarm(tmp_path / "mocks")
    farm.root.mkdir()
    yield farm
    farm.close()


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    d.mkdir()
    return d
