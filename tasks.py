"""Invoke tasks: the kit's command line. Parse options, call workshop.*, render results.

No logic lives here; every task has an importable twin in the `workshop` package.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from typing import Any

from invoke import Exit
from invoke import task as _invoke_task
from rich.console import Console
from rich.markup import escape

from workshop import build as _build
from workshop import check as _check
from workshop import config, devconfig, parallel, render, source
from workshop.render import Cell, Column

# This CLI works on the checkout it lives in, wherever invoke was started from (invoke -r ...).
os.environ.setdefault(config.PROJECT_ENV, os.path.dirname(os.path.abspath(__file__)))

# emoji=False: rich turned ":ab:" and ":cd:" into emoji, so a MAC such as 24:0a:c4:ab:cd:ef printed as
# "24:0a:c4🆎cd:ef" in every line that named it (markup=False and escape() leave emoji codes on).
console = Console(emoji=False)
console.soft_wrap = not console.is_terminal     # piped: a line (a command to copy) is never wrapped at 80
err_console = Console(stderr=True, emoji=False)
err_console.soft_wrap = not err_console.is_terminal   # (--json's summary lines go there: whole too)


def _table(title: str | None, columns: list, rows: list) -> None:
    """Every table goes through here (workshop.render): key columns never cut, details wrap,
    plain lines when piped. `columns`: names, or render.Column(name, wrap=True) for details;
    cells: text, or render.Cell(text, status) to colour by status."""
    render.print_table(console, title, columns, rows)


def _text(value: str) -> str:
    """Text from a board, the network, a path or a tool, for a line that also has markup: shown
    as it is (rich markup escaped, control characters as \\xNN)."""
    return escape(render.visible(value))


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _fail(message: str, code: int = 1) -> Exit:
    err_console.print(f"[bold red]error:[/] {_text(message)}", highlight=False, soft_wrap=True)
    return Exit(code=code)


def _stdout_reader_gone() -> bool:
    """stdout is a pipe whose reader closed it (poll says POLLERR on the write end)."""
    import select

    poll = select.poll()
    poll.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & select.POLLERR for _, events in poll.poll(0))


def task(*args, **kwargs):
    """invoke's @task; a task run outside a kit checkout (a bad $WORKSHOP_PROJECT) ends in the one
    line NoProjectError says, whichever task it is, not a traceback. A reader that went away
    (`roster --watch --json | head`) ends it as it ends a Unix tool (SIGPIPE's 141), quietly."""
    def wrap(body):
        @functools.wraps(body)                 # (invoke reads the options off the signature)
        def run(*a, **kw):
            try:
                try:
                    return body(*a, **kw)
                finally:       # an Exit(1) too: buffered output meets a gone reader here, not at exit
                    sys.stdout.flush()
            except config.NoProjectError as e:
                raise _fail(str(e)) from None
            except BrokenPipeError:
                if not _stdout_reader_gone():
                    raise                      # (another pipe's, a board's socket: not ours to hide)
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())   # (exit's flush: no error)
                raise Exit(code=141) from None
        return _invoke_task(*args, **kwargs)(run)
    return wrap


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {_text(message)}", highlight=False, soft_wrap=True)


def _write_output(path, text: str, option: str) -> None:
    """An output file (--json-out, --junit, --csv) written whole, or one error line naming it (a
    full disk, a folder that went away): never a traceback, never half a file."""
    from workshop import buildinfo

    try:
        buildinfo.write_atomic(path, text)
    except OSError as e:
        raise _fail(f"{option} {path}: not written: {e.strerror or e}") from None


def _checked(parse, *args, **kw):
    """A value from the command line through devconfig's parser for it (seconds, count,
    port_number): a bad one ends in its one-line error, not a traceback."""
    try:
        return parse(*args, **kw)
    except devconfig.DevConfigError as e:
        raise _fail(str(e)) from None


def _connect_timeout(value) -> float:
    """--connect-timeout (smoke, provision, identify): how long a board has to give a raw REPL."""
    return 3.0 if value is None else _checked(devconfig.seconds, value, "--connect-timeout")


def _budgets(boot_timeout, repl_timeout, reset_probe, reset_wait):
    """The station's time budgets (station and flash --provision), checked before any board is touched."""
    from workshop import station as _station

    try:
        return _station.budgets(boot_timeout=boot_timeout, repl_timeout=repl_timeout, reset_probe=reset_probe,
                                reset_wait=reset_wait)
    except _station.StationError as e:
        raise _fail(str(e)) from None


def _board_names(board: str | None) -> list[str] | None:
    """--board NAME[,NAME...]; None when not given. Given but empty is an error, not every board
    (--board "$B" with B unset built, checked or released them all)."""
    if board is None:
        return None
    names = _csv(board)
    if not names:
        raise _fail(f"--board {board!r}: no board named (--board NAME[,NAME...]; see 'invoke boards')")
    return names


def _selected_boards(board: str | None, all_boards: bool) -> list[config.Board]:
    _board_names(board)
    if board and all_boards:
        raise _fail(f"--board {board} and --all: give one of them (--board NAME[,NAME...] or --all)")
    try:
        if all_boards:
            return list(config.load_boards().values())
        if not board:
            raise _fail("name a board (--board NAME, comma-separated for several) or pass --all; see 'invoke boards'")
        return [config.get_board(name) for name in _csv(board)]
    except config.ConfigError as e:
        raise _fail(str(e)) from None


@task(help={"json": "print the boards as JSON instead of a table"})
def boards(c, json=False):  # noqa: A002 - invoke derives --json
    """List the boards: chip, MicroPython BOARD/VARIANT, flash offset, toolchain here (and why none)."""
    import json as _json

    rows = []
    missing: dict[str, list[str]] = {}      # why there is no toolchain -> the boards it holds back
    try:    # the chip facts (offsets, names) are read per board too: a ConfigError there is one line as well
        known = _build.board_rows()
        if json:
            print(_json.dumps([row.to_dict() for row in known], indent=2))
            return
        for row in known:
            b, status = row.board, row.toolchain
            # One image at its offset (the file is named only when it is not the usual firmware.bin):
            # with the port left to --json (the chip says it), the table fits 80 columns uncut.
            offsets = ", ".join(f"0x{r.offset:x}" if r.file == "firmware.bin" else f"{r.file}@0x{r.offset:x}"
                                for r in b.flash_regions()) or "-"
            target = "/".join(x for x in (b.mp_board, b.variant) if x) or "-"
            toolchain = Cell(status.kind, "ok") if status.kind else Cell("none", "none")
            if not status.kind:
                missing.setdefault(status.reason, []).append(b.name)
            rows.append([b.name, b.chip_name, target, b.flash_size, offsets, toolchain])
    except config.ConfigError as e:
        raise _fail(str(e)) from None
    _table("Boards", ["board", "chip", "BOARD/VARIANT", "flash", Column("offset", wrap=True), "toolchain"], rows)
    for reason, names in missing.items():
        console.print(f"no toolchain here for {', '.join(names)}: {reason}", markup=False, highlight=False)


@task(help={
    "ports": "ports whose submodules to fetch (default: unix,esp32,esp8266)",
    "micropython": "checkout folder to create or complete (default: the user cache dir, or $WORKSHOP_MICROPYTHON)",
    "git_url": "URL template for sources, e.g. '/srv/mirror/{owner}+{name}/repo' (default: GitHub, or $WORKSHOP_GIT_URL)",
    "check": "only verify the existing checkout and native toolchains (no fetching); exit 1 when one is missing or wrong",
})
def setup(c, ports="", micropython=None, git_url=None, check=False):
    """Fetch MicroPython v1.28.0, the submodules the ports need and native toolchains (ESP8266 SDK) into the cache."""
    chosen = _csv(ports) or list(source.ALL_PORTS)
    try:
        if check:
            checkout = source.verify(chosen, micropython)
        else:
            checkout = source.setup(chosen, micropython, git_url, on_event=lambda m: console.print(f"  {m}", markup=False,
                                                                                           soft_wrap=True))
    except (source.SourceError, config.ConfigError) as e:
        raise _fail(str(e)) from None
    pin = "pinned" if checkout.pinned else "NOT the pinned release"
    console.print(f"MicroPython {checkout.label} ({checkout.commit[:10]}, {pin}) at {checkout.path}, "
                  f"ready for {', '.join(chosen)}", markup=False, soft_wrap=True)


@task(help={
    "board": "board name(s), comma-separated (see 'invoke boards'; default: every board this machine can build, the others listed as skipped)",
    "all": "every board in boards/, failing on one without a toolchain here (unless --skip-unavailable)",
    "skip_unavailable": "with --all: list boards without a toolchain here as skipped instead of failing",
    "toolchain": "auto (native if its tools are on PATH, else docker), docker or native",
    "image": "container image instead of the port's default (docker toolchain)",
    "jobs": "how many boards build at once (default 1); the CPU cores are shared out as make -j",
    "micropython": "MicroPython checkout to build from (default: the cache, see 'invoke setup')",
    "force": "rebuild even when the inputs are unchanged",
    "json": "print the results (and each build's build.json) as JSON instead of the table; progress goes to stderr",
})
def build(c, board=None, all=False, skip_unavailable=False, toolchain="auto", image=None, jobs="1",
          micropython=None, force=False, json=False):  # noqa: A002 - invoke derives --all/--json
    """Build images into dist/<BOARD>/ (image, build.json); 'up to date' when nothing changed."""
    chosen = bool(board) or all  # neither: every board this machine can build (what ./kit build does)
    selected = _selected_boards(board, all or not chosen)
    progress = err_console if json else console

    def on_event(name: str, message: str) -> None:
        progress.print(f"[bold]{name}[/]: {_text(message)}", highlight=False, soft_wrap=True)

    workers = _checked(devconfig.count, jobs, "--jobs")
    try:
        with parallel.signals_interrupt():  # kill or a closed terminal stops make as Ctrl-C does (its own session)
            results = _build.build_all(selected, toolchain=toolchain, image=image, jobs=workers,
                                       micropython=micropython, force=force,
                                       skip_unavailable=all and skip_unavailable or not chosen, on_event=on_event)
    except _build.BuildError as e:
        raise _fail(str(e)) from None
    if json:
        import json as _json

        print(_json.dumps([r.to_dict() for r in results], indent=2))
    else:
        rows = []
        for r in results:
            size = f"{r.image_size:,} B" if r.image_size else "-"
            detail = r.error or (f"dist/{r.board}/" if r.ok else "")
            rows.append([r.board, Cell(r.status, r.status), size, f"{r.seconds:.1f} s", detail])
        _table("Build" + (" interrupted" if any(r.interrupted for r in results) else ""),
               ["board", "result", Column("image size", justify="right"), Column("time", justify="right"),
                Column("detail", wrap=True)], rows)
    if any(r.interrupted for r in results):
        raise Exit(code=130)
    if any(r.status == "failed" for r in results):
        raise Exit(code=1)


@task(help={
    "board": "board name(s), comma-separated",
    "all": "every board (default when no --board is given)",
    "micropython": "MicroPython checkout whose tools/manifestfile.py resolves the manifests",
    "json_out": "also write the findings as JSON to this file",
    "json": "print the findings as JSON instead of a table",
})
def check(c, board=None, all=False, micropython=None, json_out=None, json=False):  # noqa: A002 - invoke derives --all/--json
    """Resolve each board's manifest without building: missing files, duplicates, stack size; the last build's budget."""
    import json as _json

    selected = _selected_boards(board, all or not board)
    out = _checked(devconfig.output_file, json_out, "--json-out") if json_out else None
    try:
        results = _check.check_all(selected, micropython)
    except (source.SourceError, config.ConfigError) as e:   # ConfigError: any board's file (the ports' submodules need them all)
        raise _fail(str(e)) from None
    findings = {r.board: r.to_dict() for r in results}
    if json:
        print(_json.dumps(findings, indent=2))
    else:
        rows = []
        for r in results:
            result = Cell("ok", "ok") if r.ok else Cell("\n".join(r.problems), "failed")
            budget = "\n".join(f"{name} {b['free']:,} B free" for name, b in r.budget.items()) if r.budget else "-"
            rows.append([r.board, str(len(r.files)), str(len(r.stack_modules)), f"{r.stack_bytecode:,} B", budget, result])
        _table("Manifest check", ["board", "frozen files", "stack modules", "stack bytecode",
                                  Column("budget (last build)", wrap=True), Column("result", wrap=True)], rows)
    if out is not None:
        _write_output(out, _json.dumps(findings, indent=2) + "\n", "--json-out")
    if any(not r.ok for r in results):
        raise Exit(code=1)


# --- releases: release, serve, download (workshop.release, workshop.serve, workshop.download) ---


@task(help={
    "version": "release tag, e.g. v0.1.0 (0.1.0 is read as v0.1.0)",
    "board": "board name(s), comma-separated (default: every board in boards/)",
    "allow_dirty": "release builds made from, or a tree with, uncommitted changes (test releases only)",
    "force": "replace an existing release/<version>/",
    "config": "workshop.toml whose secrets (every password/secret/token key: [wifi], [telnet], [mqtt] password...) must not occur in any output",
    "wifi_password": "a Wi-Fi password to scan for (also $WORKSHOP_WIFI_PASSWORD)",
    "telnet_password": "a telnet password to scan for (also $WORKSHOP_TELNET_PASSWORD)",
    "json": "print the release (boards, files, sha256, offsets) as JSON instead of the table",
})
def release(c, version, board=None, allow_dirty=False, force=False, config=None, wifi_password=None,
            telnet_password=None, json=False):
    """dist/ -> release/<version>/: images, SHA256SUMS, index.json, ESP Web Tools manifests, flasher page."""
    from pathlib import Path

    from workshop import download as _download
    from workshop import release as _release

    def on_event(e: _release.ReleaseEvent) -> None:
        if e.kind == "warning":
            _warn(e.message)
        elif not json:
            console.print(f"  {e.message}", markup=False, highlight=False)

    try:
        secrets = _release.load_secrets(Path(config) if config else None,
                                        extra={"wifi.password": wifi_password, "telnet.password": telnet_password})
        with parallel.signals_interrupt():      # kill or a closed terminal: the staging folder goes too
            made = _release.make_release(version, boards=_board_names(board), allow_dirty=allow_dirty, force=force,
                                         secrets=secrets, repository=_download.checked_repository(), on_event=on_event)
    except (_release.ReleaseError, _download.DownloadError) as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        raise _fail(f"release {version} interrupted: nothing was released (release/ is as it was)", code=130) from None
    if json:
        import json as _json

        print(_json.dumps(made.to_dict(), indent=2))
        return
    rows = []
    for b in made.boards:
        for f in b.images:
            offset = f"0x{f.offset:x}" if f.offset is not None else "-"
            rows.append([b.board, b.chip_family, b.micropython_version, f.name, f"{f.size:,} B", offset])
    _table(f"Release {made.version}", ["board", "chip", "MicroPython", "image", Column("size", justify="right"),
                                       "offset"], rows)
    console.print(f"{made.directory}: {len(made.files)} files, secrets scanned: "
                  f"{', '.join(sorted(secrets)) or 'none configured'}. Try it: invoke serve --version {made.version}",
                  markup=False)


def _print_request(who: str, line: str) -> None:
    """A request line as text, never as markup: a client's path is not ours to style (a request
    for /x[/]y made the handler raise before its answer went out)."""
    from rich.text import Text

    console.print(Text.assemble((who, "dim"), " ", render.visible(line)), highlight=False)


@task(auto_shortflags=False, help={
    "version": "release to serve from release/<version>/",
    "directory": "serve this folder instead (a release folder, or a download cache: no flasher page, and only "
                 "the boards it holds); checked against its SHA256SUMS first, and refused if a file is missing "
                 "or corrupt",
    "host": "address to listen on (default 0.0.0.0: the whole LAN)",
    "port": "TCP port (default 8000)",
    "mqtt": "also serve the live room page /room from this broker: HOST[:PORT]",
    "room": "serve /room from mDNS alone (no broker)",
    "interface": "mDNS for /room on these interface addresses only, comma-separated",
})
def serve(c, version=None, directory=None, host="0.0.0.0", port="8000", mqtt=None, room=False, interface=None):
    """Serve a release on the LAN: the flasher page and every image, checked against SHA256SUMS first (WebSerial needs https or localhost); /room with --mqtt."""
    from pathlib import Path

    from workshop import release as _release
    from workshop import serve as _serve

    if not directory and not version:
        raise _fail("name the release (--version V) or a folder (--directory DIR)")
    try:
        folder = Path(directory) if directory else config.project_root() / "release" / _release.normalize_version(version)
        served = _serve.served_release(folder)
        # Every file against SHA256SUMS, and the flasher page's files, before a byte is served.
        checked = _serve.verified_folder(folder)
    except (_release.ReleaseError, _serve.ServeError) as e:
        raise _fail(str(e)) from None
    if served.problem:
        _warn(served.problem)
    for warning in checked.warnings:
        _warn(warning)
    watcher = the_room = None
    if mqtt or room:
        the_room, watcher = _room_watcher(mqtt, None, None, None, None, False, interface)
        the_room.expected = served.expected     # outdated against the release served, not dist/
    try:
        server = _serve.make_server(folder, host, _checked(devconfig.port_number, port, "--port"), room=the_room,
                                    on_request=_print_request)
    except (_release.ReleaseError, _serve.ServeError) as e:
        if watcher:
            watcher.stop()
        raise _fail(str(e)) from None
    what = [f"release {served.version}"] if served.version else []
    if checked.verified:
        what.append(f"{len(checked.verified)} files match {_release.SUMS}")
    console.print(f"Serving {folder}" + (f" ({', '.join(what)})" if what else ""), markup=False)
    urls = _serve.urls(server)
    for url in urls:
        console.print(f"  {url}", markup=False)
    lan = _serve.attendee_url(urls)
    download = f"invoke download --version {served.version or 'V'} --from {lan or 'URL'}"
    if lan is None and host in ("0.0.0.0", ""):
        console.print("This machine has no LAN address yet: attendees reach it once it is on the workshop network "
                      "(the addresses are shown again on a restart)  (Ctrl-C stops)", markup=False, soft_wrap=True)
    elif lan is None:
        here = f"invoke download --version {served.version or 'V'} --from {urls[0]}"
        console.print(f"Listening on {host} only: no other machine reaches it (attendees' laptops need "
                      f"--host 0.0.0.0, or this laptop's LAN address); on this machine: {here}  (Ctrl-C stops)",
                      markup=False, soft_wrap=True)
    elif checked.kind == "download-cache":
        console.print(f"No flasher page here (a download cache): attendees run: {download}  (Ctrl-C stops)",
                      markup=False, soft_wrap=True)
    else:
        console.print("Flashing from the page needs Chrome/Edge on localhost or https; over plain http on the LAN "
                      f"attendees can download images, or run: {download}  (Ctrl-C stops)", markup=False, soft_wrap=True)
    if the_room is not None:
        console.print(f"  the room: {urls[0]}room")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if watcher:
            watcher.stop()


@task(help={
    "version": "release tag, e.g. v0.1.0",
    "board": "board name(s), comma-separated (default: every board in the release)",
    "from_": "base URL or local folder (may contain {version}); default: the GitHub Releases of "
             "$WORKSHOP_REPOSITORY (else micropython-workshop/workshop-kit)",
    "debug": "also fetch the .elf/.map files",
    "json": "print what was fetched (boards, files, paths, sha256) as JSON instead of the table",
})
def download(c, version=None, board=None, from_=None, debug=False, json=False):
    """Fetch release images into the cache, each checked against SHA256SUMS; cached files are reused."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TransferSpeedColumn

    from workshop import download as _download

    if not version:
        raise _fail("download: --version is required, e.g. --version v0.1.0")
    current: list[str] = []       # the file being fetched, for the interrupted message
    # Progress goes to stderr (stdout is the table, or the JSON); bars only on a terminal, else
    # one plain line per file fetched.
    bars = err_console.is_terminal
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  console=err_console, transient=False, disable=not bars) as progress:
        tasks: dict[str, TaskID] = {}

        def on_event(e: _download.DownloadEvent) -> None:
            if e.kind == "start":
                tasks[e.file] = progress.add_task(_text(e.file), total=e.total)   # (a description is markup)
                current[:] = [e.file]
            elif e.kind in ("progress", "done") and e.file in tasks:
                progress.update(tasks[e.file], completed=e.done)
                if e.kind == "done" and not bars:
                    err_console.print(f"fetched {e.file} ({e.done:,} bytes)", markup=False, highlight=False)
            elif e.kind == "offline":
                err_console.print("[yellow]source unreachable: using the verified cache[/]")

        try:
            with parallel.signals_interrupt():      # SIGTERM/SIGHUP end it as Ctrl-C does
                result = _download.download_release(version, _board_names(board), source=from_, include_debug=debug,
                                                    on_event=on_event)
        except _download.DownloadError as e:
            raise _fail(str(e)) from None
        except KeyboardInterrupt as e:
            during = f" during {current[0]}" if current else ""
            why = f" ({e.args[0]})" if e.args else ""
            raise _fail(f"download interrupted{why}{during}: nothing half-written was kept; run it again to "
                        f"finish (verified files are not fetched again)", code=130) from None
    if json:
        import json as _json

        print(_json.dumps(result.to_dict(), indent=2))
        return
    rows = []
    for b in result.boards:
        for f in b.board.files:
            if f.name in b.paths:
                rows.append([b.board.board, b.board.chip_family, str(b.paths[f.name]),
                             f"0x{f.offset:x}" if f.offset is not None else "-"])
    _table(f"Release {result.version} from {result.source}", ["board", "chip", "file", "offset"], rows)
    console.print(f"{len(result.fetched)} fetched, {len(result.cached)} already in the cache, all verified "
                  f"against SHA256SUMS: {result.directory}", markup=False)


# --- devices / flash (workshop.devices, workshop.flash) ---------------------------------------

def _device_ports(ports: str | None) -> list:
    from workshop import devices as _devices

    try:
        return _devices.select_ports(_csv(ports))
    except _devices.DeviceError as e:
        raise _fail(str(e)) from None


@task(help={
    "ports": "comma-separated device paths or pyserial URLs (socket://host:port, rfc2217://...); default: every USB port that looks like a board",
    "identify": "connect to each board (in parallel) and read chip, MAC and flash size through esptool",
    "all": "list every USB serial port, not only known ESP bridges (CP210x, CH34x, FTDI, Espressif USB)",
    "json": "print JSON instead of a table",
    "logs": "folder for the esptool logs of --identify (default: logs/flash/<time>/identify)",
    "timeout_scale": "with --identify: stretch its time boxes by this factor (default 1; e.g. 3 for an emulated board)",
})
def devices(c, ports=None, identify=False, all=False, json=False, logs=None,  # noqa: A002 - invoke derives --all/--json
            timeout_scale=None):
    """List serial ports that look like boards; --identify reads chip, MAC and flash size."""
    import json as _json
    import threading
    from pathlib import Path

    from workshop import devices as _devices
    from workshop import flash as _flash

    if timeout_scale is not None and not identify:
        raise _fail("--timeout-scale stretches the time boxes of --identify: give --identify too")
    try:
        scale = _flash.timeout_scale(timeout_scale) if timeout_scale is not None else 1.0
    except _flash.FlashError as e:
        raise _fail(str(e)) from None
    try:
        found = _devices.select_ports(_csv(ports)) if ports else _devices.list_board_ports(include_unknown=all)
    except _devices.DeviceError as e:
        raise _fail(str(e)) from None
    cancel = threading.Event()
    if identify and found:
        with console.status(f"identifying {len(found)} port(s)..."):
            result = _devices.identify_all(found, log_dir=_flash_log_dir(logs) if logs else _flash_log_dir(None) / "identify",
                                           cancel=cancel, timeout_scale=scale)
    else:
        result = [_devices.Device(p) for p in found]
    if json:
        print(_json.dumps([d.to_dict() for d in result], indent=2))
    else:
        columns: list = ["port", Column("by-id", wrap=True), "USB", "bridge", "serial"]
        if identify:
            columns += ["chip", "MAC", "flash", Column("detail", wrap=True)]
        rows = []
        for d in result:
            p = d.port
            row: list = [p.device, p.by_id, p.usb_id, p.bridge, p.serial_number]
            if identify:
                i = d.identity
                row += [i.description if i else "-", i.mac if i else "-", (i.flash_size or "?") if i else "-",
                        Cell(d.error, "failed") if d.error else Cell(d.note, "warn") if d.note else ""]
            rows.append(row)
        _table(f"{len(result)} serial port(s)" + ("" if ports else " that look like boards"), columns, rows)
        if not result:
            console.print("no board found: check the cable (data, not charge-only), or pass --ports / --all")
    if cancel.is_set():
        raise Exit(code=130)
    if identify and any(not d.ok for d in result):
        raise Exit(code=1)


def _flash_log_dir(logs: str | None):
    from pathlib import Path

    from workshop import flash as _flash

    return _checked(devconfig.output_folder, logs, "--logs") if logs else _flash.default_log_dir()


def _flash_images(board, auto, image, offset, chip, release, dist):
    """--board / --auto / --image / --release -> one FlashImage or chip -> FlashImage (workshop.flash.choose_images)."""
    from pathlib import Path

    from workshop import flash as _flash

    try:
        images = _flash.choose_images(board=board, auto=auto, image=Path(image) if image else None, offset=offset,
                                      chip=chip, release=release, dist=Path(dist) if dist else None)
    except _flash.FlashError as e:
        raise _fail(str(e)) from None
    for warning in _flash.stale_warnings(images):
        _warn(warning)
    return images


def _prune_needs_files(prune, files) -> None:
    if prune and not files:
        raise _fail("--prune goes with --files (it removes what an earlier lesson folder put on the boards)")


def _lesson_folder(files, cfg):
    """--files DIR for the station pipeline, read and checked (workshop.lessons.collect: missing, a
    workshop.json, a configured secret) before any board is flashed; the Path, or None. The
    files are read again as each board is provisioned: a lesson fixed mid-run reaches the boards
    that come after."""
    from pathlib import Path

    from workshop import lessons as _lessons

    if not files:
        return None
    try:
        _lessons.collect(Path(files), cfg.secrets() if cfg is not None else [])
    except _lessons.LessonError as e:
        raise _fail(f"--files: {e}") from None
    return Path(files)


def _flash_options(timeout_scale=None, **options):
    """workshop.flash.FlashOptions, checked (--baud, --flash-size, --timeout-scale) before any board is touched."""
    from workshop import flash as _flash

    try:
        if timeout_scale is not None:
            options["budgets"] = _flash.Budgets(scale=timeout_scale)
        return _flash.FlashOptions(**options)
    except _flash.FlashError as e:
        raise _fail(str(e)) from None


# The station's time budgets (workshop.station.BUDGETS), for station and flash --provision.
_BUDGET_HELP = {
    "boot_timeout": "seconds a flashed board may take to answer at its REPL (default 20: first boot formats the filesystem)",
    "repl_timeout": "seconds each REPL step of provision and smoke may take (default 10; a slow board's imports take seconds)",
    "reset_probe": "seconds a board whose ROM may stay in download mode gets to answer before 'press RESET' is shown (default 2)",
    "reset_wait": "seconds a board that needs RESET pressed, or has no USB serial to follow, is waited for (default 120)",
}
# What to write (flash.choose_images, through _flash_images): the same options on flash and station.
_IMAGE_HELP = {
    "board": "write dist/<BOARD>/ (build.json gives chip and offsets); a board with another chip is refused",
    "auto": "pick each board's image by its detected chip, among the builds in dist/ (or the --release)",
    "image": "write this single file instead (with --offset, and --chip to check the chip)",
    "offset": "flash offset for --image, e.g. 0x1000",
    "chip": "esptool chip name the --image is for (esp32, esp32c3...)",
    "release": "write release V's images (downloaded and verified first) instead of dist/",
    "dist": "folder with <BOARD>/build.json builds (default: dist/)",
}


def _start_live(render_now, out=None):
    """A live view on the terminal (`out`, default stdout's) that draws `render_now()` itself, 8
    times a second: the latest stage of every board, never a frame kept from before an update
    skipped to save redraws."""
    from rich.live import Live

    live = Live(get_renderable=render_now, console=out or console, refresh_per_second=8, transient=False)
    live.__enter__()
    return live


def _stop_live(live, *exc) -> None:
    """The last frame drawn (the final state of every board), then the live view ended."""
    if live is not None:
        live.refresh()
        live.__exit__(*exc)


class _FlashView:
    """flash's progress: on a terminal a live table (one row per board: port, stage, percent
    written, chip, MAC, note) that follows the table rule (render.LiveTable: nothing cut); piped,
    one whole line per stage change (and per 25 % written)."""

    COLUMNS: list[str | Column] = ["port", "stage", Column("%", justify="right"), "chip", "MAC",
                                   Column("note", wrap=True)]

    def __init__(self, ports: list[str], out: Console | None = None) -> None:
        self.out = out or console                  # stderr's when stdout carries JSON
        self.rows: dict[str, Any] = dict.fromkeys(ports)
        self.written: dict[str, float] = {}        # percent of the image written, per port (this attempt)
        self.live: Any = None
        self.last: dict[str, tuple[str, int]] = {}

    def __enter__(self) -> _FlashView:
        self.live = _start_live(self._render, self.out) if self.out.is_terminal else None
        return self

    def __exit__(self, *exc: object) -> None:
        _stop_live(self.live, *exc)

    def _render(self):
        status = {"done": "ok", "failed": "failed", "retrying": "warn", "interrupted": "interrupted"}
        rows: list[list[render.CellLike]] = []
        for port, e in list(self.rows.items()):  # (a worker thread may be adding to it)
            if e is None:
                rows.append([port, "queued", "", "", "", ""])
                continue
            stage = e.stage.value
            percent = self.written.get(port)
            rows.append([port, Cell(stage, status.get(stage)), f"{percent:.0f}" if percent is not None else "",
                         e.chip or "", e.mac or "",
                         " ".join(x for x in (f"try {e.attempt}" if e.attempt > 1 else "", e.message) if x)])
        return render.LiveTable(None, self.COLUMNS, rows)

    def __call__(self, e) -> None:
        from workshop.flash import Stage

        self.rows[e.port] = e
        if e.bytes_total:
            self.written[e.port] = e.percent
        elif e.stage is Stage.CONNECTING:        # a new attempt writes from the start
            self.written.pop(e.port, None)
        if self.live is not None:
            return
        step = int(e.percent // 25) if e.bytes_total else -1
        if self.last.get(e.port) == (e.stage.value, step):
            return
        self.last[e.port] = (e.stage.value, step)
        fields = " ".join(x for x in (e.chip, e.mac, f"{e.percent:.0f}%" if e.bytes_total else "",
                                      f"try {e.attempt}" if e.attempt > 1 else "") if x)
        self.out.print(render.visible(f"{e.port} {e.stage.value}{' ' + fields if fields else ''}"
                                     f"{': ' + e.message if e.message else ''}"),
                      markup=False, highlight=False, soft_wrap=True)


@task(auto_shortflags=False, help={
    **_IMAGE_HELP,
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    "erase": "erase the whole flash first",
    "baud": "baud rate after the stub is up (a failed attempt retries at 115200, then legacy stub, then no stub)",
    "flash_size": "esptool --flash-size for the image header (default: the port's data: detect for ESP8266, else keep)",
    "report": "JSON report path (default: <logs>/report.json)",
    "logs": "folder for the per-device esptool logs (default: logs/flash/<time>/)",
    "provision": "then provision each verified board from this workshop.toml (the station pipeline, as 'invoke station')",
    "files": "with --provision: also copy this folder of lesson files onto every board",
    "prune": "with --files: remove the files an earlier --files put on the boards that this folder no longer has "
             "(a flash without --erase keeps them), unless edited on the board",
    "registry": "record every board in this registry (SQLite; e.g. workshop.db)",
    "json_out": "with --provision: write one JSON line per event to this file",
    "json": "print the report (as --report writes it) as JSON instead of the table; progress goes to stderr",
    "timeout_scale": "stretch every esptool stage's time box by this factor (default 1; e.g. 3 for an emulated board)",
    **{k: "with --provision: " + v for k, v in _BUDGET_HELP.items()},
})
def flash(c, board=None, auto=False, ports=None, erase=False, baud="460800", image=None, offset=None, chip=None,
          release=None, dist=None, flash_size=None, report=None, logs=None, provision=None, files=None, prune=False,
          registry=None, json_out=None, boot_timeout=None, repl_timeout=None, reset_probe=None, reset_wait=None,
          json=False, timeout_scale=None):  # noqa: A002 - invoke derives --json
    """Flash every selected board in parallel, verify each, retry slower, report; non-zero exit if any failed."""

    from workshop import flash as _flash
    from workshop import station as _station

    _prune_needs_files(prune, files)
    if json_out and not (provision or files):
        raise _fail("--json-out goes with --provision or --files (one JSON line per station event); the flash "
                    "report is --report FILE or --json")
    times = _budgets(boot_timeout, repl_timeout, reset_probe, reset_wait)
    report_out = _checked(devconfig.output_file, report, "--report") if report else None
    events_out = _checked(devconfig.output_file, json_out, "--json-out") if json_out else None
    images = _flash_images(board, auto, image, offset, chip, release, dist)
    options = _flash_options(baud=_checked(devconfig.baud, baud, "--baud"), erase=erase, flash_size=flash_size,
                             timeout_scale=timeout_scale)
    cfg = _provision_config(provision, **_provision_options(*[None] * 8)) if provision else None
    lesson = _lesson_folder(files, cfg)
    targets = _device_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    log_dir = _flash_log_dir(logs)
    reg = _open_registry(registry)
    if provision or files:
        if json:
            raise _fail("--json prints the flash report; with --provision or --files use --json-out FILE "
                        "(one JSON line per event)")
        plan = _station.Plan(images=images, flash_options=options, provision=cfg, files=lesson, prune=prune,
                             registry=reg, log_dir=log_dir, **times)
        _run_station(lambda on_event, cancel: _station.run_boards(targets, plan, on_event=on_event, cancel=cancel),
                     events_out)
        return
    with _FlashView([t.device for t in targets], err_console if json else console) as view:
        try:
            result = _flash.flash_all(targets, images, options, on_event=view, log_dir=log_dir)
        except _flash.FlashError as e:
            raise _fail(str(e)) from None
    if json:
        print(result.to_json(), end="")
    summary = []
    for r in result.results:
        state = "verified" if r.ok else r.state.value
        why = r.left_as if r.ok else f"{r.left_as}: [{r.error_kind}] {r.error}"
        summary.append([r.port, r.chip_name, r.mac, r.board, Cell(state, r.state.value), f"{r.seconds:.1f}",
                        str(r.retries), why])
    if not json:
        _table("Flash " + ("interrupted" if result.interrupted else "summary"),
               ["port", "chip", "MAC", "image", "result", Column("s", justify="right"), "retries",
                Column("left as / why", wrap=True)], summary)
    if reg is not None:                       # recorded first: a report that cannot be written loses nothing
        _not_recorded(_station.record_flash_report(reg, result, images))
    try:
        report_path = result.write_json(report_out or log_dir / "report.json")
    except OSError as e:
        raise _fail(f"the report could not be written: {e}") from None
    ok = sum(r.ok for r in result.results)
    (err_console if json else console).print(f"{ok}/{len(result.results)} verified in {result.seconds:.1f} s; "
                                             f"report {report_path}; esptool logs in {log_dir}", markup=False)
    if result.interrupted:
        raise Exit(code=130)
    if not result.ok:
        raise Exit(code=1)


# --- provision / smoke (workshop.provision, workshop.smoke) -----------------------------------


def _not_recorded(missing: dict[str, str]) -> None:
    """--registry: name every board that could not be recorded, and why (on stderr: stdout may be
    JSON)."""
    for port, why in missing.items():
        err_console.print(f"[yellow]not recorded in the registry:[/] {_text(port)} ({_text(why)})",
                          highlight=False, soft_wrap=True)


def _serial_ports(ports: str | None) -> list[str]:
    return [p.device for p in _device_ports(ports)]


def _provision_config(config_file, **options):
    from pathlib import Path

    from workshop import provision as _provision

    try:
        if config_file:
            return _provision.ProvisionConfig.from_file(Path(config_file), **options)
        return _provision.ProvisionConfig(**{k: v for k, v in options.items() if v is not None})
    except _provision.ProvisionError as e:
        raise _fail(str(e)) from None


def _run_provision(targets: list[str], cfg, *, replace=False, reset=False, baud=115200, connect_timeout=3.0,
                   as_json=False, files=None, prune=False, registry=None, reset_timeout=None, timeout=None) -> bool:
    """Provision, render a table (or JSON); True if every board was provisioned (Ctrl-C: exit 130
    after the table of what was done)."""
    import threading
    from pathlib import Path

    from workshop import lessons as _lessons
    from workshop import provision as _provision
    from workshop import station as _station

    baudrate = _checked(devconfig.baud, baud, "--baud")
    reg = _open_registry(registry)
    cancel = threading.Event()
    with console.status(f"provisioning {len(targets)} board(s)...") as status:
        def on_event(e) -> None:
            if e.kind in ("provisioned", "failed", "retry", "files"):
                status.update(_text(f"{e.port}: {e.message}"))    # a board's words, not markup

        try:
            results = _provision.provision_all(targets, cfg, on_event=on_event, replace=replace, reset=reset,
                                               reset_timeout=reset_timeout or _provision.RESET_TIMEOUT_S,
                                               baudrate=baudrate, connect_timeout=connect_timeout,
                                               timeout=timeout or 10.0,
                                               files=Path(files) if files else None, prune=prune,
                                               index_of=_station.sticker_index(reg) if reg is not None else None,
                                               vet=_station.registry_vet(reg) if reg is not None else None,
                                               cancel=cancel)
        except (_lessons.LessonError, _provision.ProvisionError) as e:
            raise _fail(str(e)) from None
    if reg is not None:
        _not_recorded(_station.record_provision_results(reg, results))
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        rows = []
        for r in results:
            result = (Cell("written + verified", "ok") if r.ok else
                      Cell(f"interrupted at {r.stage}", "interrupted") if r.interrupted else
                      Cell(f"failed at {r.stage}", "failed"))
            copied = _lessons.files_cell(r.files)
            rows.append([r.port, r.hostname, r.mac, r.config_path, r.boot_hook, copied, result, f"{r.duration_s:.1f}",
                         r.error or ""])
        _table("Provisioning", ["port", "hostname", "MAC", "config", "boot hook", Column("files", wrap=True), "result",
                                Column("s", justify="right"), Column("error", wrap=True)], rows)
    if cancel.is_set():
        raise Exit(code=130)
    return all(r.ok for r in results)


def _provision_services() -> tuple[str, ...]:
    """For the help text, read when tasks.py loads: outside a project (a bad $WORKSHOP_PROJECT) it
    names none, and the task that needs the project says why in one line (not a traceback from
    every task, --list included)."""
    from workshop import provision as _provision

    try:
        return _provision.device_services()
    except (config.ConfigError, OSError):
        return ("(those of modules/workshop_boot.py)",)


_PROVISION_HELP = {
    "wifi": "workshop Wi-Fi SSID",
    "wifi_password": "Wi-Fi password (or env WORKSHOP_WIFI_PASSWORD, kept out of shell history); never printed",
    "hostname": "hostname pattern, unique per board: {mac4} {mac6} {mac} {port} {index}, e.g. ws-{mac4}",
    "telnet_user": "telnet user name",
    "telnet_password": "telnet password (or env WORKSHOP_TELNET_PASSWORD); never printed",
    "mqtt": "MQTT broker host the boards use (and --mqtt-port, default 1883)",
    "mqtt_port": "MQTT broker port written to the config",
    "start": "services started at boot, comma-separated, from: " + ",".join(_provision_services()),
    "config": "a workshop.toml in the /workshop.json shape; options given here win over it",
}


def _provision_options(wifi, wifi_password, hostname, telnet_user, telnet_password, mqtt, mqtt_port, start):
    return dict(hostname=hostname, wifi_ssid=wifi,
                wifi_password=devconfig.secret_option(wifi_password, "wifi.password"),
                telnet_user=telnet_user,
                telnet_password=devconfig.secret_option(telnet_password, "telnet.password"),
                mqtt_broker=mqtt, mqtt_port=mqtt_port,   # checked (and made an int) by ProvisionConfig
                start=tuple(_csv(start)) if start is not None else None)


@task(auto_shortflags=False, help={
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    **_PROVISION_HELP,
    "replace": "replace the device config instead of merging into it (merging keeps keys not given here)",
    "reset": "soft-reset each board afterwards, so boot.py starts the services now; a service that does not "
             "start (Wi-Fi not reachable from here, ...) fails that board, saying why",
    "reset_timeout": "with --reset: seconds a board has to run its start-up (default 30; Wi-Fi alone may take 15)",
    "baud": "serial baud rate of the REPL",
    "json": "print JSON instead of a table",
    "files": "also copy this folder of lesson files (main.py, lib/, ...) onto every board: atomic, verified, identical files skipped",
    "prune": "with --files: remove the files an earlier --files put on the boards that this folder no longer has "
             "(a file edited on the board is kept, and named)",
    "registry": "record the boards in this registry; {index} is then each board's sticker number",
    "connect_timeout": "seconds each board has to answer with a MicroPython REPL (default 3; a board still "
                       "booting after a flash or a reset, or an emulated one, needs more)",
    "timeout": "seconds each REPL command on a board may take, sending it included (default 10; a slow or "
               "emulated board, or a large lesson file over a slow link, needs more)",
})
def provision(c, ports=None, wifi=None, wifi_password=None, hostname=None, telnet_user=None, telnet_password=None,
              mqtt=None, mqtt_port=None, start=None, config=None, replace=False, reset=False, baud="115200",
              json=False, files=None, registry=None, connect_timeout=None, reset_timeout=None,  # noqa: A002
              timeout=None, prune=False):
    """Write /workshop.json and the boot hook on every board in parallel (atomic, read back); non-zero exit if any failed."""
    cfg = _provision_config(config, **_provision_options(wifi, wifi_password, hostname, telnet_user,
                                                         telnet_password, mqtt, mqtt_port, start))
    connect = _connect_timeout(connect_timeout)
    if reset_timeout is not None and not reset:
        raise _fail("--reset-timeout goes with --reset (the soft reset it bounds)")
    restart = _checked(devconfig.seconds, reset_timeout, "--reset-timeout") if reset_timeout is not None else None
    budget = _checked(devconfig.seconds, timeout, "--timeout") if timeout is not None else None
    _prune_needs_files(prune, files)
    targets = _serial_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    if not _run_provision(targets, cfg, replace=replace, reset=reset, baud=baud, as_json=json, files=files, prune=prune,
                          registry=registry, connect_timeout=connect, reset_timeout=restart, timeout=budget):
        raise Exit(code=1)


def _network_options(network, mqtt, http_url=None):
    """--network [--mqtt HOST[:PORT]] [--http-url URL] (smoke, station) -> smoke.NetworkOptions, or
    None without --network; --mqtt or --http-url without it is refused (it would be ignored)."""
    from workshop import smoke as _smoke

    if (mqtt or http_url) and not network:
        raise _fail(f"{'--mqtt' if mqtt else '--http-url'} goes with --network (the network checks)")
    if not network:
        return None
    try:
        host, port = _smoke.parse_broker(mqtt)
        url = _smoke.parse_http_url(http_url) if http_url else None
    except _smoke.SmokeError as e:
        raise _fail(str(e)) from None
    opts = _smoke.NetworkOptions(mqtt_host=host, mqtt_port=port)
    return dataclasses.replace(opts, http_url=url) if url else opts


def _smoke_expected(board, dist, release, board_file=False):
    from pathlib import Path

    from workshop import smoke as _smoke

    try:
        return _smoke.choose_expected(board, dist=Path(dist) if dist else None, release=release, board_file=board_file)
    except _smoke.SmokeError as e:
        raise _fail(str(e)) from None


@task(auto_shortflags=False, help={
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    "board": "the board the firmware was built for (default: the only build in dist/)",
    "dist": "folder with <BOARD>/build.json builds (default: dist/); it must hold the board's build",
    "board_file": "expect only what boards/<BOARD>.toml says (no build to compare the firmware with)",
    "release": "expect release V's firmware (release/V/index.json, or the downloaded release's) instead of dist/'s build",
    "network": "also check Wi-Fi (with the provisioned config), an MQTT round trip and an HTTP GET",
    "mqtt": "MQTT broker for --network (default: the device config's mqtt.broker); HOST or HOST:PORT",
    "http_url": "URL for the --network HTTP GET (default http://micropython.org/ks/test.html)",
    "json_out": "write the JSON report to this file ('-' = print it instead of the table)",
    "json": "print the JSON report instead of the table (as --json-out -)",
    "junit": "write a JUnit XML report to this file",
    "baud": "serial baud rate of the REPL",
    "timeout": "seconds the device check may take on one board (default 10; slow or emulated boards need more); "
               "a board that runs out says which step it was in and what it had found",
    "registry": "record each board's result in this registry (by the MAC its firmware reports)",
    "connect_timeout": "seconds each board has to answer with a MicroPython REPL (default 3; a board still "
                       "booting after a flash or a reset, or an emulated one, needs more)",
})
def smoke(c, ports=None, board=None, dist=None, release=None, network=False, mqtt=None, http_url=None,
          json_out=None, junit=None, baud="115200", json=False, timeout=None, registry=None, board_file=False,  # noqa: A002 - invoke derives --json
          connect_timeout=None):
    """Check every board in parallel (firmware, frozen stack, heap, flash, config[, network]); non-zero exit if any failed."""
    from workshop import smoke as _smoke

    if json:
        json_out = "-"
    budget = 10.0 if timeout is None else _checked(devconfig.seconds, timeout, "--timeout")  # a string: not invoke's cast
    baudrate = _checked(devconfig.baud, baud, "--baud")
    connect = _connect_timeout(connect_timeout)
    net = _network_options(network, mqtt, http_url)
    json_path = _checked(devconfig.output_file, json_out, "--json-out") if json_out and json_out != "-" else None
    junit_path = _checked(devconfig.output_file, junit, "--junit") if junit else None
    expected = _smoke_expected(board, dist, release, board_file)
    if expected.stale:
        _warn(f"{expected.source}: the build is stale ({expected.stale}): the boards are checked against it "
              f"anyway; 'invoke build --board {expected.board}' builds the current sources")
    targets = _serial_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    reg = _open_registry(registry)
    from workshop import station as _station

    with console.status(f"checking {len(targets)} board(s)..."):
        run = _station.smoke_boards(targets, expected, registry=reg, network=net, baudrate=baudrate, timeout=budget,
                                    connect_timeout=connect)
    reports = run.reports
    _not_recorded(run.not_recorded)
    if json_out == "-":
        print(_smoke.to_json(reports), end="")
    else:
        groups = [*_smoke.SUMMARY_GROUPS, *(_smoke.NETWORK_GROUPS if net else ())]
        rows = []
        for r in reports:
            cells = _smoke.summary(r)
            result = (Cell("interrupted", "interrupted") if r.interrupted else Cell("ok", "ok") if r.ok
                      else Cell("FAILED", "failed"))
            rows.append([r.port, *(Cell(cells[g].text, cells[g].status) if g in cells else "-" for g in groups),
                         f"{r.duration_s:.1f}", result])
        _table(f"Smoke{' interrupted' if run.interrupted else ''}: expecting {expected.source}",
               ["port", *groups, Column("s", justify="right"), "result"], rows)
        for r in reports:
            for chk in [] if r.interrupted else r.failed:
                console.print(f"[red]✗[/] {_text(r.port)} {_text(chk.name)}: {_text(chk.detail)}", soft_wrap=True)
        ok = sum(r.ok for r in reports)
        cut = sum(r.interrupted for r in reports)
        console.print(f"{ok}/{len(reports)} board(s) passed"
                      + (f"; {cut} not finished (Ctrl-C)" if cut else ""),
                      highlight=False, soft_wrap=True)
    # The files after the table: a file that cannot be written still leaves the results shown.
    if json_path is not None:
        _write_output(json_path, _smoke.to_json(reports), "--json-out")
    if junit_path is not None:
        _write_output(junit_path, _smoke.to_junit(reports), "--junit")
    if run.interrupted:
        raise Exit(code=130)
    if not all(r.ok for r in reports):
        raise Exit(code=1)


# --- more tasks below ---


# --- the room on the network: broker, roster, fleet, identify (workshop.roster/fleet/broker) ------

_ROOM_HELP = {
    "mqtt": "the workshop broker: HOST or HOST:PORT (default port 1883); omit to rely on mDNS only",
    "mqtt_user": "broker user (when the broker has a password file)",
    "mqtt_password": "broker password (or $WORKSHOP_MQTT_PASSWORD)",
    "release": "compare images with release V's index.json instead of dist/",
    "registry": "join boards with the station's registry (sqlite file): stickers and MACs",
    "no_mdns": "do not browse mDNS (_workshop._tcp) for boards that do not reach the broker",
    "interface": "mDNS on these interface addresses only, comma-separated (default: all)",
    "wait": "seconds to listen before answering (retained statuses come at once; mDNS takes ~1-2 s)",
}


def _room_lookups(registry):
    """--registry PATH -> (by hostname, by MAC) lookups of the station's records (sticker, MAC, ...)."""
    from workshop import roster as _roster

    reg = _open_registry(registry, existing=True)
    return _roster.registry_lookups(reg) if reg is not None else (None, None)


def _room_watcher(mqtt, mqtt_user, mqtt_password, release, registry, no_mdns, interface):
    from workshop import roster as _roster

    try:
        expected = _roster.expected_from_release(release) if release else _roster.expected_from_dist()
        broker = _roster.parse_address(mqtt) if mqtt else None
    except _roster.RosterError as e:
        raise _fail(str(e)) from None
    if not broker and no_mdns:
        raise _fail("nothing to listen to: give --mqtt HOST[:PORT] (or drop --no-mdns)")
    # A warning quotes what a board (or anyone on the broker) sent: text, never markup.
    by_hostname, by_mac = _room_lookups(registry)
    room = _roster.Roster(expected, by_hostname, lookup_mac=by_mac,
                          on_warning=lambda w: err_console.print(f"[yellow]warning:[/] {_text(w)}", highlight=False,
                                                                 soft_wrap=True))
    try:
        watcher = _roster.RoomWatcher(room, broker, mdns=not no_mdns, interfaces=_csv(interface) or None,
                                      user=mqtt_user, password=devconfig.secret_option(mqtt_password, "mqtt.password"))
        watcher.start()
    except _roster.RosterError as e:
        raise _fail(str(e)) from None
    return room, watcher


def _ago(seconds):
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


_ROSTER_COLUMNS: list[str | Column] = ["hostname", Column("sticker/MAC"), "IP", "board", Column("firmware", wrap=True), "outdated",
                   Column("heap", justify="right"), "RSSI", "uptime", Column("last seen", wrap=True), "state"]


def _roster_rows(rows):
    """Cells for the room table: state and outdated carry their status (colour), never markup."""
    out = []
    for r in rows:
        outdated = Cell("yes", "failed") if r.outdated else (Cell("no", "ok") if r.outdated is False else Cell("?", "skip"))
        fw = " ".join(x for x in (r.micropython and f"v{r.micropython}", r.inputs and r.inputs[:12]) if x) or "-"
        seen = _ago(r.age_s) + (" (retained)" if r.retained else "")
        state = {"online": "ok", "stale": "warn", "offline": "failed"}.get(r.state)
        out.append([r.hostname, " ".join(x for x in (r.sticker, r.mac) if x) or "-", r.ip or "-", r.board or "-",
                    fw, outdated, f"{r.heap_free:,}" if r.heap_free is not None else "-",
                    str(r.rssi) if r.rssi is not None else "-",
                    f"{r.uptime_s} s" if r.uptime_s is not None else "-", seen, Cell(r.state, state)])
    return out


def _roster_table(rows, title):
    """The live view's table on a terminal (rich Live redraws it); everything else prints through _table."""
    return render.LiveTable(title, _ROSTER_COLUMNS, _roster_rows(rows))


@task(auto_shortflags=False, help={**_ROOM_HELP, "watch": "keep a live table (Ctrl-C ends); with --json one JSON report per line, on each change",
            "json": "print JSON instead of a table",
            "serve": "also serve the live /room page on this [HOST:]PORT (e.g. 8000 or 0.0.0.0:8000)",
            "forget": "clear these boards' retained status on the broker (h1,h2: renamed or gone boards shown offline)"})
def roster(c, mqtt=None, mqtt_user=None, mqtt_password=None, release=None, registry=None, no_mdns=False,
           interface=None, wait="2", watch=False, json=False, serve=None, forget=None):  # noqa: A002
    """Every board that announced itself: online/stale/offline, outdated image, heap, RSSI, uptime."""
    import json as _json
    import time

    listen = _checked(devconfig.seconds, wait, "--wait", zero=True)
    if forget and (watch or serve):
        raise _fail("--forget clears statuses and ends: not with --watch or --serve")
    room, watcher = _room_watcher(mqtt, mqtt_user, mqtt_password, release, registry, no_mdns, interface)
    server = None
    try:
        if forget:
            _forget(watcher, _csv(forget), listen, json)
            return
        if serve:
            server = _room_server(serve, room)
        if not (watch or server):
            _listen(listen, "no listing printed")   # asked for and not given: not a success (`> room.json`)
            if json:
                print(_json.dumps(room.report(), indent=2))
            else:
                rows = room.rows()
                _table(f"Room: {len(rows)} board(s); images compared with "
                       f"{room.expected.source if room.expected else '-'}", _ROSTER_COLUMNS, _roster_rows(rows))
            return
        # --watch, and --serve (which watches while it serves), until Ctrl-C.
        if json:
            # One JSON report per line: the first after --wait, then one each time the room changes.
            time.sleep(listen)
            for _ in room.updates():
                print(_json.dumps(room.report()), flush=True)
        if not console.is_terminal:
            # Piped: a whole plain table each time the room changes (a live redraw would be cut).
            for rows in room.updates():
                _table("Room (Ctrl-C ends)", _ROSTER_COLUMNS, _roster_rows(rows))
        from rich.live import Live

        with Live(_roster_table(room.rows(), "Room (live; Ctrl-C ends)"), console=console, refresh_per_second=2) as live:
            while True:
                room.changed.wait(1.0)
                room.changed.clear()
                live.update(_roster_table(room.rows(), "Room (live; Ctrl-C ends)"))
    except KeyboardInterrupt:
        pass
    finally:
        if server:
            server.shutdown()
            server.server_close()
        watcher.stop()


def _listen(seconds, not_done):
    """--wait: the boards' announcements arrive meanwhile. Ctrl-C: exit 130, saying what was not done."""
    import time

    try:
        time.sleep(seconds)
    except KeyboardInterrupt:
        raise _fail(f"interrupted while listening for the boards (--wait {seconds:g}): {not_done}", 130) from None


def _forget(watcher, hostnames, listen, as_json):
    """roster --forget: listen for --wait (the retained statuses arrive), clear the named ones."""
    import json as _json

    from workshop import roster as _roster

    _listen(listen, "nothing was forgotten")
    try:
        done = watcher.forget(hostnames)
    except _roster.RosterError as e:
        raise _fail(str(e)) from None
    if as_json:
        print(_json.dumps([{"hostname": h, "result": r} for h, r in done.items()], indent=2))
    else:
        for host, result in done.items():
            console.print(f"{host}: {result}", markup=False, highlight=False)
    if any(not r.startswith("forgotten") for r in done.values()):
        raise Exit(code=1)


def _room_server(address, room):
    from workshop import serve as _serve

    host, _, port = str(address).rpartition(":")
    try:
        server = _serve.make_room_server(room, host or "0.0.0.0", _checked(devconfig.port_number, port, "--serve"))
    except (_serve.ServeError, ValueError) as e:
        raise _fail(f"--serve {address}: {e}") from None
    _serve.start_in_thread(server)
    for url in _serve.urls(server):
        err_console.print(f"Room page: {url}room")
    return server


_FLEET_HELP = {
    **{k: v for k, v in _ROOM_HELP.items() if k != "registry"},
    "hosts": "these boards (hostnames, comma-separated)",
    "all": "every board in the roster",
    "outdated": "the boards whose image differs from dist/ (or --release V)",
    "resume": "skip the boards that completed this same command in the last run's report",
    "telnet_user": "telnet login (default micro)",
    "telnet_password": "telnet password (or $WORKSHOP_TELNET_PASSWORD)",
    "jobs": "boards at once (default 16)",
    "timeout": "seconds each command may take on a board (default 20)",
    "report": "the JSON report (default logs/fleet/last.json; --resume reads it)",
    "json": "print the JSON report instead of result lines",
}


def _fleet_run(make_command, *, hosts, all_boards, outdated, resume, mqtt, mqtt_user, mqtt_password, release,
               no_mdns, interface, wait, telnet_user, telnet_password, jobs, timeout, report, as_json):
    import json as _json

    from workshop import fleet as _fleet

    listen = _checked(devconfig.seconds, wait, "--wait", zero=True)
    budget = _checked(devconfig.seconds, timeout, "--timeout")
    workers = _checked(devconfig.count, jobs, "--jobs")
    path = _checked(devconfig.output_file, report, "--report") if report else None
    try:                                  # before the broker: a missing password is no reason to wait
        runner = _fleet.Fleet(user=telnet_user or "micro",
                              password=devconfig.secret_option(telnet_password, "telnet.password") or "",
                              jobs=workers, timeout=budget,
                              on_event=None if as_json else
                              (lambda e: err_console.print(f"[dim]{_text(e.hostname)}: {_text(e.message)}[/]", highlight=False, soft_wrap=True)
                               if e.kind in ("start", "waiting") else None))
    except _fleet.FleetError as e:
        raise _fail(str(e)) from None
    room, watcher = _room_watcher(mqtt, mqtt_user, mqtt_password, release, None, no_mdns, interface)
    try:
        _listen(listen, "nothing was sent to any board")
        rows = room.rows()
    finally:
        watcher.stop()
    try:
        done = _fleet.run_in_room(runner, rows, make_command, hosts=_csv(hosts), all_boards=all_boards,
                                  outdated=outdated, resume=resume, report=path)
    except _fleet.FleetError as e:
        raise _fail(str(e)) from None
    if as_json:
        print(_json.dumps(done.to_json(), indent=2))
    else:
        for r in done.results:
            if r.resumed:
                console.print(f"- {r.hostname}: skipped (completed in the resumed run)", style="dim", markup=False,
                              highlight=False)
            elif r.ok:
                text = r.result.strip() or "ok"
                console.print(f"[green]✓[/] {_text(r.hostname)}: {_text(text)}", highlight=False, soft_wrap=True)
            else:
                console.print(f"[red]✗[/] {_text(r.hostname)}: {_text(r.error)}", highlight=False, soft_wrap=True)
        for left in done.left_out:
            console.print(f"[yellow]-[/] {_text(left['hostname'])}: left out of --outdated, not compared "
                          f"({_text(left['why'])}): name it with --hosts to include it", highlight=False, soft_wrap=True)
        ok = sum(r.ok for r in done.results)
        console.print(f"{ok}/{len(done.results)} board(s) ok; report: {done.path}"
                      + ("" if done.ok else "  (retry the rest: add --resume)"), markup=False)
    if done.unwritten:                # the results above are still shown; the exit code says it
        raise _fail(done.unwritten)
    if done.cancelled:
        raise Exit(code=130)
    if not done.ok:
        raise Exit(code=1)


@task(auto_shortflags=False, help={"action": "exec | run | put", "arg": "exec: the code; run: a .py file; put: the file to send",
            "dest": "put: the path on the board (default: the file's name in the board's root)", **_FLEET_HELP},
      positional=["action", "arg"])
def fleet(c, action, arg, dest=None, hosts=None, all=False, outdated=False, resume=False, mqtt=None,  # noqa: A002
          mqtt_user=None, mqtt_password=None, release=None, no_mdns=False, interface=None, wait="2",
          telnet_user=None, telnet_password=None, jobs="16", timeout="20", report=None, json=False):
    """exec CODE | run FILE | put SRC [--dest D] on many boards over Wi-Fi (telnet REPL); JSON report, --resume."""
    from pathlib import Path

    from workshop import fleet as _fleet

    def make():
        if action == "exec":
            return _fleet.Command.exec(arg)
        if action == "run":
            return _fleet.Command.run(Path(arg))
        if action == "put":
            return _fleet.Command.put(Path(arg), dest or None)
        raise _fleet.FleetError(f"unknown action {action!r}: exec CODE, run FILE, put SRC (reset: ./kit fleet-reset)")

    try:                                  # the file read and the action checked before listening
        command = make()
    except _fleet.FleetError as e:
        raise _fail(str(e)) from None
    _fleet_run(lambda _targets: command, hosts=hosts, all_boards=all, outdated=outdated, resume=resume, mqtt=mqtt, mqtt_user=mqtt_user,
               mqtt_password=mqtt_password, release=release, no_mdns=no_mdns, interface=interface, wait=wait,
               telnet_user=telnet_user, telnet_password=telnet_password, jobs=jobs, timeout=timeout,
               report=report, as_json=json)


# Invoke has no optional positional arguments, so the command without one is its own task.
@task(auto_shortflags=False, help={**_FLEET_HELP, "back_within": "seconds each board has to be back on telnet after "
                                                                    "its reset (default 30; 0: do not wait)"})
def fleet_reset(c, hosts=None, all=False, outdated=False, resume=False, mqtt=None,  # noqa: A002
                mqtt_user=None, mqtt_password=None, release=None, no_mdns=False, interface=None, wait="2",
                telnet_user=None, telnet_password=None, jobs="16", timeout="20", report=None, json=False,
                back_within="30"):
    """Reset many boards over Wi-Fi (machine.reset() through the telnet REPL), then see each come back."""
    from workshop import fleet as _fleet

    back = _checked(devconfig.seconds, back_within, "--back-within", zero=True)
    _fleet_run(lambda _t: _fleet.Command.reset(back), hosts=hosts, all_boards=all, outdated=outdated, resume=resume,
               mqtt=mqtt, mqtt_user=mqtt_user, mqtt_password=mqtt_password, release=release, no_mdns=no_mdns,
               interface=interface, wait=wait, telnet_user=telnet_user, telnet_password=telnet_password, jobs=jobs,
               timeout=timeout, report=report, as_json=json)


@task(auto_shortflags=False, help={
    "bind": "address to listen on (default 0.0.0.0: the whole workshop LAN)",
    "port": "TCP port (default 1883)",
    "password_file": "only these users (a mosquitto_passwd file); default: anonymous access",
})
def broker(c, bind="0.0.0.0", port="1883", password_file=None):
    """Run the workshop's MQTT broker (mosquitto) in the foreground; Ctrl-C stops it."""
    from workshop import broker as _broker

    try:
        plan = _broker.plan(bind, _checked(devconfig.port_number, port, "--port"), password_file)
        # mosquitto's lines carry client ids and user names: text, never markup ("[/]x" raised).
        running = _broker.Broker(plan, on_line=lambda line: console.print(render.visible(line), style="dim",
                                                                          markup=False, highlight=False))
        running.start()        # from here to stop(), SIGTERM/SIGHUP arrive as KeyboardInterrupt
    except _broker.BrokerError as e:
        raise _fail(str(e)) from None
    except KeyboardInterrupt:
        console.print("broker stopped")     # start() stopped mosquitto
        return
    try:
        console.print(f"MQTT broker on {bind}:{plan.port} ({'users from ' + str(plan.password_file) if plan.password_file else 'anonymous'}); "
                      f"persistence in {plan.directory}", markup=False)
        addresses = _broker.provision_addresses(plan)
        for address in addresses:
            console.print(f"  boards: ./kit provision --mqtt {address} ...   roster: ./kit roster --mqtt {address}")
        if _broker.loopback_only(plan):
            console.print("  (listening on loopback: only this machine reaches it, not boards on Wi-Fi: "
                          "--bind 0.0.0.0 for the room)", markup=False)
        if not addresses:
            console.print("  this machine has no LAN address yet: join the workshop network, then give boards "
                          "that address (./kit provision --mqtt <address>)", markup=False)
        console.print("Ctrl-C stops it.")
        code = running.wait()
    except KeyboardInterrupt:
        running.stop()
        console.print("broker stopped")
        return
    running.stop()
    raise _fail(f"mosquitto exited with code {code}")


# --- station / registry / identify (workshop.station, workshop.registry, workshop.identify) -------


def _open_registry(path, existing=False):
    """--registry PATH -> Registry, or None when not given; `existing`: a registry only reads
    it, so a missing file is an error rather than a new empty one (a typo shows no boards)."""
    if path is None or path == "" and not existing:
        return None
    from pathlib import Path

    from workshop import registry as _registry

    if not path:
        raise _fail("--registry: an empty name; name the registry file (e.g. workshop.db)")

    if existing and not Path(path).exists():
        raise _fail(f"--registry {path}: no registry there (the station, or flash/provision/smoke --registry, "
                    "create it)")

    try:
        return _registry.Registry(path)
    except _registry.RegistryError as e:
        raise _fail(str(e)) from None


class _StationView:
    """Renders station events: a live line per board on a terminal, plain lines otherwise; JSON lines to a file."""

    def __init__(self, json_out=None) -> None:
        import sys
        from pathlib import Path

        self.tty = sys.stdout.isatty()
        self.rows: dict[str, Any] = {}
        if json_out:
            Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        self.json = open(json_out, "a", encoding="utf-8") if json_out else None  # noqa: SIM115 - closed in close()
        self.live: Any = None
        self.last_percent: dict[str, int] = {}

    def __enter__(self):
        self.live = _start_live(self._render) if self.tty else None
        return self

    def __exit__(self, *exc):
        _stop_live(self.live, *exc)
        if self.json:
            self.json.close()

    _COLUMNS: list[str | Column] = ["port", "stage", Column("%", justify="right"), "chip", "MAC", "hostname",
                                    Column("s", justify="right"), Column("note", wrap=True)]

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        counts = {"ready": 0, "failed": 0, "in progress": 0}
        rows = []
        for e in list(self.rows.values()):  # (a journey's thread may be adding to it)
            state = e.state
            counts[state] = counts.get(state, 0) + 1
            status = {"ready": "ok", "failed": "failed", "interrupted": "interrupted", "unplugged": "warn"}.get(state)
            rows.append([e.port, Cell(e.stage, status), f"{e.percent:.0f}" if e.percent is not None else "", e.chip or "",
                         e.mac or "", e.hostname or "", f"{e.elapsed:.1f}",
                         Cell("unplug me", "ok") if state == "ready" else e.message])
        # The shared rules (workshop.render.LiveTable): port, MAC and hostname are never cut, the
        # note wraps, and a table too wide for the terminal is drawn wider, folded at its edge.
        counter = " · ".join(f"{state} {n}" for state, n in counts.items())
        return Group(render.LiveTable(None, self._COLUMNS, rows), Text(counter))

    def __call__(self, e) -> None:
        import json as _json

        if self.json:
            self.json.write(_json.dumps(e.to_dict()) + "\n")
            self.json.flush()
        self.rows[e.key] = e
        if self.live is not None:
            return
        if e.percent is not None:           # plain output: progress every 25 %
            step = int(e.percent // 25)
            if self.last_percent.get(e.key) == step:
                return
            self.last_percent[e.key] = step
        fields = " ".join(x for x in (e.chip, e.mac, e.hostname, f"{e.percent:.0f}%" if e.percent is not None else "")
                          if x)
        print(render.visible(f"{e.elapsed:7.1f}s {e.port} {e.stage}{' ' + fields if fields else ''}: {e.message}"),
              flush=True)


def _run_station(run, json_out=None):
    """Run a station function with the renderer; summary table; exit 130 after Ctrl-C, 1 if any board failed."""
    import threading


    from workshop import station as _station

    cancel = threading.Event()
    with _StationView(json_out) as view:
        try:
            report = run(view, cancel)
        except _station.StationError as e:
            raise _fail(str(e)) from None
    rows = []
    for r in report.results:
        status = {"ready": "ok", "failed": "failed", "unplugged": "warn", "interrupted": "interrupted"}.get(r.state)
        rows.append([r.port, str(r.sticker or "-"), r.hostname, r.mac, r.chip, Cell(r.state, status), f"{r.seconds:.1f}",
                     r.left_as + (f" ({r.reason})" if r.reason and not r.ok else "")])
    _table("Station " + ("interrupted" if report.interrupted else "summary"),
           ["port", "sticker", "hostname", "MAC", "chip", "result", Column("s", justify="right"),
            Column("left as / why", wrap=True)], rows)
    counts = report.counts
    console.print(" · ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no board seen")
    if report.interrupted:
        raise Exit(code=130)
    if not report.ok:
        raise Exit(code=1)


@task(auto_shortflags=False, help={
    **_IMAGE_HELP,
    "provision": "provision each board from this workshop.toml (identity, boot hook)",
    "files": "copy this folder of lesson files onto each board",
    "prune": "with --files: remove the files an earlier --files put on a board that this folder no longer has "
             "(a reflash keeps the filesystem), unless edited on the board",
    "smoke": "smoke-test each board (firmware, frozen stack, heap, flash, config)",
    "network": "with --smoke: also Wi-Fi, MQTT round trip, HTTP GET",
    "mqtt": "with --network: the broker, HOST or HOST:PORT (default: the board's config)",
    "registry": "the board registry (default: workshop.db here)",
    "ports_dir": "watch this folder of device links instead of the system's serial ports (default on Linux: /dev/serial/by-id via pyserial)",
    "all_ports": "take every USB serial port, not only known ESP bridges",
    "stop_after": "stop once this many boards are done (ready or failed); default: until Ctrl-C",
    "json_out": "write one JSON line per event to this file",
    "reflash": "flash even boards the registry knows as ready with this image",
    "baud": "flash baud rate (a failed attempt retries at 115200, then legacy stub, then no stub)",
    "timeout_scale": "stretch every esptool stage's time box by this factor (default 1; e.g. 3 for an emulated board)",
    **_BUDGET_HELP,
    "logs": "folder for the per-board esptool logs (default: logs/station/<time>/)",
})
def station(c, board=None, auto=False, release=None, image=None, offset=None, chip=None, dist=None, provision=None,
            files=None, prune=False, smoke=False, network=False, mqtt=None, registry="workshop.db", ports_dir=None, all_ports=False,
            stop_after=None, json_out=None, reflash=False, baud="460800", boot_timeout=None, repl_timeout=None,
            reset_probe=None, reset_wait=None, logs=None, timeout_scale=None):
    """Hot-plug: every board plugged in goes appear -> flash -> provision -> smoke -> ready, until Ctrl-C."""
    from pathlib import Path

    from workshop import station as _station

    _prune_needs_files(prune, files)
    times = _budgets(boot_timeout, repl_timeout, reset_probe, reset_wait)
    stop = _checked(devconfig.count, stop_after, "--stop-after") if stop_after is not None else None
    events_out = _checked(devconfig.output_file, json_out, "--json-out") if json_out else None
    images = _flash_images(board, auto, image, offset, chip, release, dist)
    cfg = _provision_config(provision, **_provision_options(*[None] * 8)) if provision else None
    lesson = _lesson_folder(files, cfg)
    net = _network_options(network, mqtt)
    flash_options = _flash_options(baud=_checked(devconfig.baud, baud, "--baud"), timeout_scale=timeout_scale)
    plan = _station.Plan(images=images, flash_options=flash_options, provision=cfg,
                         files=lesson, prune=prune, smoke=smoke or network, network=net,
                         registry=_open_registry(registry), reflash=reflash, log_dir=_flash_log_dir(logs) if logs else None,
                         **times)
    try:
        source = _station.default_source(Path(ports_dir) if ports_dir else None, all_ports)
    except _station.StationError as e:
        raise _fail(str(e)) from None
    console.print(f"watching {ports_dir or 'the serial ports'} for boards; Ctrl-C stops", markup=False, highlight=False)
    _run_station(lambda on_event, cancel: _station.watch(plan, source, on_event=on_event, cancel=cancel,
                                                         stop_after=stop), events_out)


@task(help={
    "registry": "the registry file (default: workshop.db here)",
    "csv": "write the registry as CSV to this file (stickers, class list)",
    "json": "print JSON instead of a table",
})
def registry(c, registry="workshop.db", csv=None, json=False):  # noqa: A002
    """Every board ever seen, by sticker: MAC, chip, hostname, image, last results."""
    from workshop import registry as _registry

    csv_path = _checked(devconfig.output_file, csv, "--csv") if csv else None
    reg = _open_registry(registry, existing=True)
    try:
        if csv_path is not None:
            _write_output(csv_path, reg.to_csv(), "--csv")
            console.print(f"{len(reg.boards())} board(s) written to {csv}", markup=False)
            return
        if json:
            print(reg.to_json(), end="")
            return
        boards = reg.boards()
    except _registry.RegistryError as e:     # a lock taken after it opened (an SQLite browser)
        raise _fail(str(e)) from None

    def mark(v):
        return Cell("-") if v is None else (Cell("ok", "ok") if v else Cell("failed", "failed"))

    rows = [[str(b.sticker), b.hostname, b.mac, b.chip, b.board, b.state, mark(b.flash_ok), mark(b.provision_ok),
             mark(b.smoke_ok), b.port, b.last_seen, b.smoke_detail or b.provision_detail or ""] for b in boards]
    _table(f"Registry {registry}", ["sticker", "hostname", "MAC", "chip", "board", "state", "flash", "provision",
                                    "smoke", "last port", "last seen", Column("detail", wrap=True)], rows)


def _identify_over_network(hosts, all, mqtt, mqtt_user, mqtt_password, no_mdns, interface, wait,  # noqa: A002
                           telnet_user, telnet_password, seconds, timeout, report, json):
    """identify --hosts/--all: blink boards over the network (LED pin from boards/<BOARD>.toml; else a banner)."""
    from workshop import fleet as _fleet

    blink = _checked(devconfig.seconds, seconds, "--seconds")

    def make(_targets):
        return lambda t: _fleet.Command.identify(*_fleet.led_for(t.board), seconds=blink)

    _fleet_run(make, hosts=hosts, all_boards=all, outdated=False, resume=False, mqtt=mqtt, mqtt_user=mqtt_user,
               mqtt_password=mqtt_password, release=None, no_mdns=no_mdns, interface=interface, wait=wait,
               telnet_user=telnet_user, telnet_password=telnet_password, jobs=16, timeout=timeout,
               report=report, as_json=json)


@task(auto_shortflags=False, help={
    **{k: "over the network: " + v for k, v in _FLEET_HELP.items() if k not in ("outdated", "resume", "jobs", "release")},
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    "blink": "only this board shows itself (a hostname such as lab-07, or a sticker number)",
    "registry": "the registry that knows the stickers (default: workshop.db here, when there is one; a file "
                "named here must exist)",
    "baud": "serial baud rate of the REPL",
    "json": "print JSON instead of a table (over the network: the JSON report)",
    "seconds": "over the network: how long to blink (default 5)",
    "connect_timeout": "seconds each board has to answer with a MicroPython REPL (default 3; a board still "
                       "booting after a flash or a reset, or an emulated one, needs more)",
})
def identify(c, ports=None, blink=None, registry=None, baud="115200", json=False,  # noqa: A002
             hosts=None, all=False, mqtt=None, mqtt_user=None, mqtt_password=None, no_mdns=False,  # noqa: A002
             interface=None, wait="2", telnet_user=None, telnet_password=None, seconds="5", timeout="20", report=None,
             connect_timeout=None):
    """Each board blinks its sticker number on its LED (or prints its name on its console); port -> hostname -> MAC.
    With --hosts/--all: boards on the network, through their telnet REPL."""
    if hosts or all:
        return _identify_over_network(hosts, all, mqtt, mqtt_user, mqtt_password, no_mdns, interface, wait,
                                      telnet_user, telnet_password, seconds, timeout, report, json)
    import json as _json
    import threading
    from pathlib import Path

    from workshop import identify as _identify

    baudrate = _checked(devconfig.baud, baud, "--baud")
    connect = _connect_timeout(connect_timeout)
    targets = _serial_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    # A registry named must be there (a typo showed no stickers, silently); the default is taken
    # when the station made one here.
    reg = (_open_registry(registry, existing=True) if registry is not None else
           _open_registry("workshop.db") if Path("workshop.db").exists() else None)
    if blink and reg is None:          # the names and stickers live there: nothing would blink
        raise _fail(f"--blink {blink}: no registry at workshop.db: pass --registry FILE (the station's)")
    cancel = threading.Event()
    try:
        with console.status(f"asking {len(targets)} board(s) to show themselves..."):
            shown = _identify.identify_boards(targets, reg, only=blink, baudrate=baudrate, cancel=cancel,
                                              connect_timeout=connect)
    except ValueError as e:
        raise _fail(str(e)) from None
    if json:
        print(_json.dumps([s.to_dict() for s in shown], indent=2))
    else:
        def how(s):
            if s.interrupted:
                return Cell("interrupted", "interrupted")
            return s.how or Cell("-" if s.ok else "failed", None if s.ok else "failed")

        rows = [[s.port, s.hostname, str(s.sticker or "-"), s.mac, how(s), s.error or ""] for s in shown]
        _table("Which board is which" + (" (interrupted)" if cancel.is_set() else ""),
               ["port", "hostname", "sticker", "MAC", "shown by", Column("detail", wrap=True)], rows)
    if cancel.is_set():
        raise Exit(code=130)
    if any(not s.ok for s in shown):
        raise Exit(code=1)
