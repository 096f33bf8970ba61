"""Build benchmark: our tool next to raw `make`, same checkout and toolchain, one run.

For each board (UNIX, and ESP8266_GENERIC when its native toolchain is prepared): wall-clock
seconds for a clean build, an incremental build after editing one module, and the no-op case
("up to date" for us, a make that finds nothing to do for raw make), with the ratio ours/raw
(tool overhead: inputs hash, staging, ELF checks). For ESP8266_GENERIC also the stack's flash
cost: the image with our manifest minus the image with MicroPython's stock manifest
(FROZEN_MANIFEST left at the board's default), same toolchain, same run, per budget region.
Works on a temporary copy of the project, never on the repo.

    python bench/build.py [--micropython PATH] [--jobs N] [--board UNIX,ESP8266_GENERIC]
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

from workshop import build, config, elf, source  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_make(plan: build.BuildPlan, build_dir: Path) -> None:
    """The same two make commands, by hand, into their own build tree (with the same identity
    module frozen, copied from ours)."""
    shutil.copytree(build.identity_dir(plan.build_dir), build.identity_dir(build_dir), dirs_exist_ok=True)
    for step in plan.steps:
        argv = [a.replace(str(plan.build_dir), str(build_dir)) for a in step.argv]
        env = dict(os.environ, **{k: v.replace(str(plan.build_dir), str(build_dir)) for k, v in step.env})
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def ours(plan: build.BuildPlan) -> None:
    result = build.run(plan)
    if not result.ok:
        raise SystemExit(f"build failed: {result.error}")


def _copy_project(project: Path) -> None:
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "manifest.py", project)


def stock_image(plan: build.BuildPlan, build_dir: Path) -> tuple[int, dict[str, elf.Region]]:
    """The same make commands with MicroPython's own manifest (no FROZEN_MANIFEST): image size and budget."""
    for step in plan.steps:
        argv = [a.replace(str(plan.build_dir), str(build_dir)) for a in step.argv if not a.startswith("FROZEN_MANIFEST=")]
        env = dict(os.environ, **{k: v.replace(str(plan.build_dir), str(build_dir)) for k, v in step.env})
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    port = plan.board.port
    assert port.budget and port.elf
    regions = elf.budget(build_dir / port.elf, build_dir / port.budget.map, port.budget.regions)
    return (build_dir / "firmware.bin").stat().st_size, {r.name: r for r in regions}


def bench_board(name: str, checkout: source.Checkout, jobs: int, tmp: Path) -> None:
    project = tmp / name / "project"
    _copy_project(project)
    board = config.get_board(name, project)

    def make_plan() -> build.BuildPlan:
        return build.plan(board, checkout, "native", jobs=jobs, root=project, dist=tmp / name / "dist",
                          cache=tmp / name / "cache")

    raw_dir = tmp / name / "raw-build"
    rows = []
    rows.append(("clean build", timed(lambda: ours(make_plan())), timed(lambda: raw_make(make_plan(), raw_dir))))
    module = project / "modules" / "base64.py"
    module.write_text(module.read_text() + "\n# bench edit\n")
    rows.append(("edit one module", timed(lambda: ours(make_plan())), timed(lambda: raw_make(make_plan(), raw_dir))))
    rows.append(("no change", timed(lambda: ours(make_plan())), timed(lambda: raw_make(make_plan(), raw_dir))))
    plan = make_plan()
    print(f"{name} board, MicroPython {checkout.label}, make -j{jobs}, {os.cpu_count()} cores"
          + (f", {plan.compiler}" if plan.compiler else ""))
    print(f"{'case':<18}{'ours (s)':>10}{'raw make (s)':>14}{'ours/raw':>10}")
    for case, mine, raw in rows:
        print(f"{case:<18}{mine:>10.3f}{raw:>14.3f}{mine / raw:>10.3f}")
    if board.port.budget:
        info = build.current_build(plan)
        assert info and info.budget
        size, stock = stock_image(plan, tmp / name / "stock-build")
        ours_size = next(a.size for a in info.artifacts if a.flash)
        print(f"stack flash cost (our manifest - stock manifest, same toolchain): firmware.bin "
              f"{ours_size:,} - {size:,} = {ours_size - size:+,} B")
        for region, b in info.budget.items():
            print(f"  {region:<6} used {b['used']:>9,} - {stock[region].used:>9,} = {b['used'] - stock[region].used:>+8,} B"
                  f"   (free {b['free']:,} of {b['size']:,} B)")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micropython", help="MicroPython checkout (default: the cache)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--board", default="UNIX,ESP8266_GENERIC", help="boards to measure (comma-separated)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        for name in [b.strip() for b in args.board.split(",") if b.strip()]:
            board = config.get_board(name)
            try:
                checkout = source.locate(args.micropython, [board.port.name])
                source.native_toolchain(board.port)
            except source.SourceError as e:
                print(f"{name}: skipped: {e}\n")
                continue
            bench_board(name, checkout, args.jobs, Path(tmp))


if __name__ == "__main__":
    main()
