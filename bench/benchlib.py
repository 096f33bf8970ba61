"""What several bench scripts share (the scripts' own folder is on sys.path when they run)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FROZEN_UNIX = REPO / "dist" / "UNIX" / "micropython"


def frozen_note() -> str:
    """Why the frozen figures may not describe the current modules/, or ''."""
    sys.path.insert(0, str(REPO))
    try:
        from workshop import build

        stale = build.stale_reason("UNIX")
    except Exception as e:  # the figures are still printed; the note says what they are worth
        stale = f"staleness not checked ({e})"
    return f"note: dist/UNIX is stale ({stale}): its figures are those of the last build" if stale else ""
