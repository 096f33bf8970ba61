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


def anchor_lib(argv: list[str], files) -> Path | None:
    """micropython-lib to compare against: argv[1], else the pinned checkout's submodule.
    None (after saying why on stderr) when it lacks one of `files`."""
    sys.path.insert(0, str(REPO))
    from workshop import source

    lib = Path(argv[1]) if len(argv) > 1 else source.default_path() / "lib" / "micropython-lib"
    missing = [p for p in files if not (lib / p).exists()]
    if missing:
        print(f"no micropython-lib at {lib} (missing {missing[0]}): run 'invoke setup' or pass its path",
              file=sys.stderr)
        return None
    return lib
