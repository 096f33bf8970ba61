"""Every bench script says its options with --help, and does not start measuring instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name != "benchlib.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_exits(script):
    proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: " + script)
