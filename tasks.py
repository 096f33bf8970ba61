"""Invoke tasks: the kit's command line. Parse options, call workshop.*, render results.

No logic lives here; every task has an importable twin in the `workshop` package.
"""

from __future__ import annotations

import json
import os
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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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
    "check": "only verify the existing checkout (no fetching); exit 1 when it is missing or wrong",
})
def setup(c, ports="", micropython=None, git_url=None, check=False):
    """Fetch MicroPython v1.28.0 and the submodules the ports need into the cache; verify it."""
    chosen = _csv(ports) or list(source.ALL_PORTS)
    try:
        if check:
            checkout = source.locate(micropython, chosen)
        else:
            checkout = source.setup(chosen, micropython, git_url, on_event=lambda m: console.print(f"  {m}"))
    except (source.SourceError, config.ConfigError) as e:
        raise _fail(str(e)) from None
    pin = "pinned" if checkout.pinned else "NOT the pinned release"
    console.print(f"MicroPython {checkout.label} ({checkout.commit[:10]}, {pin}) at {checkout.path}, "
                  f"ready for {', '.join(chosen)}", soft_wrap=True)


@task(help={
    "board": "board name(s), comma-separated (see 'invoke boards')",
    "all": "every board in boards/",
    "skip_unavailable": "with --all: list boards without a toolchain here as skipped instead of failing",
    "toolchain": "auto (native if its tools are on PATH, else docker), docker or native",
    "image": "container image instead of the port's default (docker toolchain)",
    "jobs": "how many boards build at once (default 1); the CPU cores are shared out as make -j",
    "micropython": "MicroPython checkout to build from (default: the cache, see 'invoke setup')",
    "force": "rebuild even when the inputs are unchanged",
})
def build(c, board=None, all=False, skip_unavailable=False, toolchain="auto", image=None, jobs=1,
          micropython=None, force=False):
    """Build images into dist/<BOARD>/ (image, build.json); 'up to date' when nothing changed."""
    selected = _selected_boards(board, all)
    jobs = max(1, int(jobs))
    make_jobs = max(1, (os.cpu_count() or 1) // jobs)
    plans, results = [], []
    docker_reason = _build.docker_engine_reason() if toolchain == "auto" else None
    for b in selected:
        try:
            checkout = source.locate(micropython, [b.port.name])
            status = _build.toolchain_status(b, docker_reason=docker_reason) if toolchain == "auto" else None
            if status and status.kind is None and all and skip_unavailable:
                results.append(_build.BuildResult(b.name, "skipped", 0.0, error=status.reason))
                continue
            plans.append(_build.plan(b, checkout, toolchain, image, make_jobs, status=status))
        except (source.SourceError, _build.BuildError, config.ConfigError) as e:
            results.append(_build.BuildResult(b.name, "failed", 0.0, error=str(e)))

    def on_event(name: str, message: str) -> None:
        console.print(f"[bold]{name}[/]: {message}", highlight=False, soft_wrap=True)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
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


# --- releases: release, serve, download (workshop.release, workshop.serve, workshop.download) ---


@task(help={
    "version": "release tag, e.g. v0.1.0 (0.1.0 is read as v0.1.0)",
    "board": "board name(s), comma-separated (default: every board in boards/)",
    "allow_dirty": "release builds made from, or a tree with, uncommitted changes (test releases only)",
    "force": "replace an existing release/<version>/",
    "config": "workshop.toml whose secrets ([wifi] password, [telnet] password) must not occur in any output",
    "wifi_password": "a Wi-Fi password to scan for (also $WORKSHOP_WIFI_PASSWORD)",
    "telnet_password": "a telnet password to scan for (also $WORKSHOP_TELNET_PASSWORD)",
})
def release(c, version, board=None, allow_dirty=False, force=False, config=None, wifi_password=None,
            telnet_password=None):
    """dist/ -> release/<version>/: images, SHA256SUMS, index.json, ESP Web Tools manifests, flasher page."""
    from pathlib import Path

    from workshop import download as _download
    from workshop import release as _release

    try:
        secrets = _release.load_secrets(Path(config) if config else None,
                                        extra={"wifi.password": wifi_password, "telnet.password": telnet_password})
        made = _release.make_release(version, boards=_csv(board) or None, allow_dirty=allow_dirty, force=force,
                                     secrets=secrets, repository=_download.repository(),
                                     on_event=lambda e: console.print(f"  {e.message}", highlight=False))
    except _release.ReleaseError as e:
        raise _fail(str(e)) from None
    table = Table(title=f"Release {made.version}")
    for col in ("board", "chip", "MicroPython", "image", "size", "offset"):
        table.add_column(col)
    for b in made.boards:
        for f in b.images:
            offset = f"0x{f.offset:x}" if f.offset is not None else "-"
            table.add_row(b.board, b.chip_family, b.micropython_version, f.name, f"{f.size:,} B", offset)
    console.print(table)
    console.print(f"{made.directory}: {len(made.files)} files, secrets scanned: "
                  f"{', '.join(sorted(secrets)) or 'none configured'}. Try it: invoke serve --version {made.version}")


@task(help={
    "version": "release to serve from release/<version>/",
    "directory": "serve this folder instead (a release folder or a download cache)",
    "host": "address to listen on (default 0.0.0.0: the whole LAN)",
    "port": "TCP port (default 8000)",
})
def serve(c, version=None, directory=None, host="0.0.0.0", port=8000):
    """Serve a release on the LAN: the flasher page and every image (WebSerial needs https or localhost)."""
    from pathlib import Path

    from workshop import release as _release
    from workshop import serve as _serve

    if not directory and not version:
        raise _fail("name the release (--version V) or a folder (--directory DIR)")
    try:
        folder = Path(directory) if directory else config.PROJECT_ROOT / "release" / _release.normalize_version(version)
        server = _serve.make_server(folder, host, int(port),
                                    on_request=lambda who, line: console.print(f"[dim]{who}[/] {line}", highlight=False))
    except (_release.ReleaseError, _serve.ServeError) as e:
        raise _fail(str(e)) from None
    console.print(f"Serving {folder}")
    for url in _serve.urls(server):
        console.print(f"  {url}")
    console.print("Flashing from the page needs Chrome/Edge on localhost or https; over plain http on the LAN "
                  "attendees can download images, or run: invoke download --version V --from http://<this laptop>:"
                  f"{server.server_address[1]}/  (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@task(help={
    "version": "release tag, e.g. v0.1.0",
    "board": "board name(s), comma-separated (default: every board in the release)",
    "from_": "base URL or local folder (may contain {version}); default: the project's GitHub Releases",
    "debug": "also fetch the .elf/.map files",
})
def download(c, version, board=None, from_=None, debug=False):
    """Fetch release images into the cache, each checked against SHA256SUMS; cached files are reused."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from workshop import download as _download

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def on_event(e: _download.DownloadEvent) -> None:
            if e.kind == "start":
                tasks[e.file] = progress.add_task(e.file, total=e.total)
            elif e.kind in ("progress", "done") and e.file in tasks:
                progress.update(tasks[e.file], completed=e.done)
            elif e.kind == "offline":
                progress.console.print("[yellow]source unreachable: using the verified cache[/]")

        try:
            result = _download.download_release(version, _csv(board) or None, source=from_, include_debug=debug,
                                                on_event=on_event)
        except _download.DownloadError as e:
            raise _fail(str(e)) from None
    table = Table(title=f"Release {result.version} from {result.source}")
    for col in ("board", "chip", "file", "offset"):
        table.add_column(col)
    for b in result.boards:
        for f in b.board.files:
            if f.name in b.paths:
                table.add_row(b.board.board, b.board.chip_family, str(b.paths[f.name]),
                              f"0x{f.offset:x}" if f.offset is not None else "-")
    console.print(table)
    console.print(f"{len(result.fetched)} fetched, {len(result.cached)} already in the cache, all verified "
                  f"against SHA256SUMS: {result.directory}")


# --- more tasks below ---
