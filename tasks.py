"""Invoke tasks: the kit's command line. Parse options, call workshop.*, render results.

No logic lives here; every task has an importable twin in the `workshop` package.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from invoke import Exit, task
from rich.console import Console
from rich.table import Table

from workshop import build as _build
from workshop import check as _check
from workshop import config, source

console = Console()
err_console = Console(stderr=True)


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _fail(message: str, code: int = 1) -> Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    return Exit(code=code)


def _selected_boards(board: str | None, all_boards: bool) -> list[config.Board]:
    try:
        if all_boards:
            return list(config.load_boards().values())
        if not board:
            raise _fail("name a board (--board NAME, comma-separated for several) or pass --all; see 'invoke boards'")
        return [config.get_board(name) for name in _csv(board)]
    except config.ConfigError as e:
        raise _fail(str(e)) from None


@task
def boards(c):
    """List the boards: port, chip, MicroPython BOARD/VARIANT, flash offset, toolchain here."""
    try:
        known = config.load_boards()
    except config.ConfigError as e:
        raise _fail(str(e)) from None
    docker_reason = _build.docker_engine_reason()
    table = Table(title="Boards")
    for col in ("board", "port", "chip", "MicroPython BOARD/VARIANT", "flash", "offsets", "toolchain here"):
        table.add_column(col)
    for b in known.values():
        status = _build.toolchain_status(b, docker_reason=docker_reason)
        offsets = ", ".join(f"{r.file}@0x{r.offset:x}" for r in b.flash_regions()) or "-"
        target = "/".join(x for x in (b.mp_board, b.variant) if x) or "-"
        toolchain = f"[green]{status.kind}[/]" if status.kind else f"[red]none[/]: {status.reason}"
        table.add_row(b.name, b.port.name, b.chip_name, target, b.flash_size or "-", offsets, toolchain)
    console.print(table)


@task(help={
    "ports": "ports whose submodules to fetch (default: unix,esp32,esp8266)",
    "micropython": "checkout folder to create or complete (default: the user cache dir, or $WORKSHOP_MICROPYTHON)",
    "git_url": "URL template for sources, e.g. '/srv/mirror/{owner}+{name}/repo' (default: GitHub, or $WORKSHOP_GIT_URL)",
})
def setup(c, ports="", micropython=None, git_url=None):
    """Fetch MicroPython v1.28.0 and the submodules the ports need into the cache; verify it."""
    chosen = _csv(ports) or list(source.ALL_PORTS)
    try:
        checkout = source.setup(chosen, micropython, git_url, on_event=lambda m: console.print(f"  {m}"))
    except (source.SourceError, config.ConfigError) as e:
        raise _fail(str(e)) from None
    pin = "pinned" if checkout.pinned else "NOT the pinned release"
    console.print(f"MicroPython {checkout.label} ({checkout.commit[:10]}, {pin}) at {checkout.path}, "
                  f"ready for {', '.join(chosen)}")


@task(help={
    "board": "board name(s), comma-separated (see 'invoke boards')",
    "all": "every board in boards/",
    "skip_unavailable": "with --all: list boards without a toolchain here as skipped instead of failing",
    "toolchain": "auto (native if its tools are on PATH, else docker), docker or native",
    "image": "container image instead of the port's default (docker toolchain)",
    "jobs": "make -j for each build (default: CPU count)",
    "parallel": "how many boards build at once (default 1; docker builds can overlap)",
    "micropython": "MicroPython checkout to build from (default: the cache, see 'invoke setup')",
    "force": "rebuild even when the inputs are unchanged",
})
def build(c, board=None, all=False, skip_unavailable=False, toolchain="auto", image=None, jobs=None,
          parallel=1, micropython=None, force=False):
    """Build images into dist/<BOARD>/ (image, build.json); 'up to date' when nothing changed."""
    selected = _selected_boards(board, all)
    jobs = int(jobs) if jobs else None
    plans, results = [], []
    docker_reason = _build.docker_engine_reason() if toolchain == "auto" else None
    for b in selected:
        try:
            checkout = source.locate(micropython, [b.port.name])
            status = _build.toolchain_status(b, docker_reason=docker_reason) if toolchain == "auto" else None
            if status and status.kind is None and all and skip_unavailable:
                results.append(_build.BuildResult(b.name, "skipped", 0.0, error=status.reason))
                continue
            plans.append(_build.plan(b, checkout, toolchain, image, jobs, status=status))
        except (source.SourceError, _build.BuildError, config.ConfigError) as e:
            results.append(_build.BuildResult(b.name, "failed", 0.0, error=str(e)))

    def on_event(name: str, message: str) -> None:
        console.print(f"[bold]{name}[/]: {message}", highlight=False)

    with ThreadPoolExecutor(max_workers=max(1, int(parallel))) as pool:
        results += list(pool.map(lambda p: _build.run(p, on_event, force=force), plans))
    order = {b.name: i for i, b in enumerate(selected)}
    results.sort(key=lambda r: order[r.board])
    table = Table(title="Build")
    for col in ("board", "result", "image size", "time", "detail"):
        table.add_column(col)
    for r in results:
        colour = {"built": "green", "up to date": "green", "skipped": "yellow"}.get(r.status, "red")
        size = f"{r.image_size:,} B" if r.image_size else "-"
        detail = r.error or (f"dist/{r.board}/" if r.ok else "")
        table.add_row(r.board, f"[{colour}]{r.status}[/]", size, f"{r.seconds:.1f} s", detail)
    console.print(table)
    if any(r.status == "failed" for r in results):
        raise Exit(code=1)


@task(help={
    "board": "board name(s), comma-separated",
    "all": "every board (default when no --board is given)",
    "micropython": "MicroPython checkout whose tools/manifestfile.py resolves the manifests",
    "json_out": "also write the findings as JSON to this file",
})
def check(c, board=None, all=False, micropython=None, json_out=None):
    """Resolve each board's manifest without building: missing files, duplicates, stack size."""
    selected = _selected_boards(board, all or not board)
    table = Table(title="Manifest check")
    for col in ("board", "frozen files", "stack modules", "stack bytecode", "result"):
        table.add_column(col)
    failed = False
    findings = {}
    for b in selected:
        try:
            # Resolving a manifest needs micropython-lib only, not the port's C submodules.
            checkout = source.locate(micropython, [b.port.name], submodules=["lib/micropython-lib"])
        except source.SourceError as e:
            raise _fail(str(e)) from None
        r = _check.check_board(b, checkout)
        failed |= not r.ok
        findings[b.name] = {"ok": r.ok, "problems": r.problems, "frozen": [f.target for f in r.files],
                            "stack_modules": r.stack_modules, "stack_bytecode": r.stack_bytecode}
        result = "[green]ok[/]" if r.ok else "[red]" + "\n".join(r.problems) + "[/]"
        table.add_row(b.name, str(len(r.files)), str(len(r.stack_modules)), f"{r.stack_bytecode:,} B", result)
    console.print(table)
    if json_out:
        with open(json_out, "w") as f:
            json.dump(findings, f, indent=2)
    if failed:
        raise Exit(code=1)


# --- more tasks below ---
