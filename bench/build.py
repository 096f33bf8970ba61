"""Build benchmark for the UNIX board: our tool next to raw `make`, same checkout, one run.

Prints wall-clock seconds for a clean build, an incremental build after editing one module, and
the no-op case ("up to date" for us, a make that finds nothing to do for raw make), with the
ratio ours/raw (tool overhead). Works on a temporary copy of the project, never on the repo.

    python bench/build.py [--micropython PATH] [--jobs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from workshop import build, config, source  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_make(plan: build.BuildPlan, build_dir: Path) -> None:
    """The same two make commands, by hand, into their own build tree."""
    for step in plan.steps:
        argv = [a.replace(str(plan.build_dir), str(build_dir)) for a in step.argv]
        env = dict(os.environ, **{k: v.replace(str(plan.build_dir), str(build_dir)) for k, v in step.env})
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def ours(plan: build.BuildPlan) -> None:
    result = build.run(plan)
    if not result.ok:
        raise SystemExit(f"build failed: {result.error}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", help="MicroPython checkout (default: the cache)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    args = ap.parse_args()
    checkout = source.locate(args.micropython, ["unix"])
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        tmp = Path(tmp)
        project = tmp / "project"
        for name in ("boards", "ports", "modules"):
            shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(REPO / "manifest.py", project)
        board = config.get_board("UNIX", project)

        def make_plan() -> build.BuildPlan:
            return build.plan(board, checkout, "native", jobs=args.jobs, root=project, dist=tmp / "dist",
                              cache=tmp / "cache")

        raw_dir = tmp / "raw-build"
        rows = []
        rows.append(("clean build", timed(lambda: ours(make_plan())), timed(lambda: raw_make(make_plan(), raw_dir))))
        module = project / "modules" / "base64.py"
        module.write_text(module.read_text() + "\n# bench edit\n")
        rows.append(("edit one module", timed(lambda: ours(make_plan())), timed(lambda: raw_make(make_plan(), raw_dir))))
        rows.append(("no change", timed(lambda: ours(make_plan())), timed(lambda: raw_make(make_plan(), raw_dir))))

    print(f"UNIX board, MicroPython {checkout.label}, make -j{args.jobs}, {os.cpu_count()} cores")
    print(f"{'case':<18}{'ours (s)':>10}{'raw make (s)':>14}{'ours/raw':>10}")
    for case, mine, raw in rows:
        print(f"{case:<18}{mine:>10.3f}{raw:>14.3f}{mine / raw:>10.3f}")


if __name__ == "__main__":
    main()
