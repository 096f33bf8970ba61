"""The host code (package, tasks.py, benches) is typed and checked: mypy (configured in pyproject.toml) finds no error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def test_mypy_finds_no_error_in_the_package_tasks_and_benches() -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is missing: pip install -e '.[test]' (it is in the test extra)")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, "mypy (pyproject.toml [tool.mypy]) found:\n" + proc.stdout + proc.stderr
    # The configuration really covers both: a file list that matched nothing would also pass.
    listed = subprocess.run([sys.executable, "-m", "mypy", "--verbose", "--no-error-summary"], cwd=REPO,
                            capture_output=True, text=True, timeout=600).stderr
    for name in ("tasks.py", "workshop/repl.py", "workshop/devconfig.py", "bench/heap.py", "tests/support.py"):
        assert name in listed, f"mypy does not check {name}"
