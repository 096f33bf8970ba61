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
            checkout = source.setup(chosen, micropython, git_url, on_event=lambda m: console.print(f"  {m}", soft_wrap=True))
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
            # The toolchain first: a board that cannot be built here needs no checkout either.
            status = _build.toolchain_status(b, docker_reason=docker_reason) if toolchain == "auto" else None
            if status and status.kind is None:
                if all and skip_unavailable:
                    results.append(_build.BuildResult(b.name, "skipped", 0.0, error=status.reason))
                    continue
                raise _build.no_toolchain(b, status)
            checkout = source.locate(micropython, [b.port.name])
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


# --- devices / flash (workshop.devices, workshop.flash) ---------------------------------------

_RESULT_STYLE = {"ok": "green", "failed": "red", "interrupted": "yellow", "not started": "yellow"}


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
})
def devices(c, ports=None, identify=False, all=False, json=False, logs=None):  # noqa: A002 - invoke derives --all/--json
    """List serial ports that look like boards; --identify reads chip, MAC and flash size."""
    import json as _json
    from pathlib import Path

    from rich.markup import escape

    from workshop import devices as _devices

    try:
        found = _devices.select_ports(_csv(ports)) if ports else _devices.list_board_ports(include_unknown=all)
    except _devices.DeviceError as e:
        raise _fail(str(e)) from None
    if identify and found:
        with console.status(f"identifying {len(found)} port(s)..."):
            result = _devices.identify_all(found, log_dir=Path(logs) if logs else _flash_log_dir(None) / "identify")
    else:
        result = [_devices.Device(p) for p in found]
    if json:
        print(_json.dumps([d.to_dict() for d in result], indent=2))
    else:
        columns = [("port", True), ("by-id", False), ("USB", True), ("bridge", True), ("serial", True)]
        if identify:
            columns += [("chip", False), ("MAC", True), ("flash", True), ("error", False)]
        rows = []
        for d in result:
            p = d.port
            row = [escape(p.device), escape(p.by_id or "-"), p.usb_id or "-", p.bridge or "-", escape(p.serial_number or "-")]
            if identify:
                i = d.identity
                row += [i.description if i else "-", i.mac if i else "-", (i.flash_size or "?") if i else "-",
                        f"[red]{escape(d.error)}[/]" if d.error else ""]
            rows.append(row)
        _table(f"{len(result)} serial port(s)" + ("" if ports else " that look like boards"), columns, rows)
        if not result:
            console.print("no board found: check the cable (data, not charge-only), or pass --ports / --all")
    if identify and any(not d.ok for d in result):
        raise Exit(code=1)


def _flash_log_dir(logs: str | None):
    from pathlib import Path

    from workshop import flash as _flash

    return Path(logs) if logs else _flash.default_log_dir()


def _flash_images(board, auto, image, offset, chip, release, dist):
    """--board / --auto / --image / --release -> one FlashImage or chip -> FlashImage (workshop.flash.choose_images)."""
    from pathlib import Path

    from workshop import flash as _flash

    try:
        return _flash.choose_images(board=board, auto=auto, image=Path(image) if image else None, offset=offset,
                                    chip=chip, release=release, dist=Path(dist) if dist else None)
    except _flash.FlashError as e:
        raise _fail(str(e)) from None


@task(help={
    "board": "write dist/<BOARD>/ (build.json gives chip and offsets); a board with another chip is refused",
    "auto": "pick each board's image by its detected chip, among the builds in dist/ (or the --release)",
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    "erase": "erase the whole flash first",
    "baud": "baud rate after the stub is up (a failed attempt retries at 115200, then legacy stub, then no stub)",
    "image": "write this single file instead (with --offset, and --chip to check the chip)",
    "offset": "flash offset for --image, e.g. 0x1000",
    "chip": "esptool chip name the --image is for (esp32, esp32c3...)",
    "release": "write release V's images (downloaded and verified first) instead of dist/",
    "dist": "folder with <BOARD>/build.json builds (default: dist/)",
    "flash_size": "esptool --flash-size for the image header (default: the port's data: detect for ESP8266, else keep)",
    "report": "JSON report path (default: <logs>/report.json)",
    "logs": "folder for the per-device esptool logs (default: logs/flash/<time>/)",
    "provision": "then provision each verified board from this workshop.toml (the station pipeline, as 'invoke station')",
    "files": "with --provision: also copy this folder of lesson files onto every board",
    "registry": "record every board in this registry (SQLite; e.g. workshop.db)",
    "json_out": "with --provision: write one JSON line per event to this file",
})
def flash(c, board=None, auto=False, ports=None, erase=False, baud=460800, image=None, offset=None, chip=None,
          release=None, dist=None, flash_size=None, report=None, logs=None, provision=None, files=None,
          registry=None, json_out=None):
    """Flash every selected board in parallel, verify each, retry slower, report; non-zero exit if any failed."""
    from pathlib import Path

    from rich.markup import escape
    from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn

    from workshop import flash as _flash

    images = _flash_images(board, auto, image, offset, chip, release, dist)
    cfg = _provision_config(provision, **_provision_options(*[None] * 8)) if provision else None
    targets = _device_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    log_dir = _flash_log_dir(logs)
    options = _flash.FlashOptions(baud=int(baud), erase=erase, flash_size=flash_size)
    reg = _open_registry(registry)
    if provision or files:
        from workshop import station as _station

        plan = _station.Plan(images=images, flash_options=options, provision=cfg, files=Path(files) if files else None,
                             registry=reg, log_dir=log_dir)
        _run_station(lambda on_event, cancel: _station.run_boards(targets, plan, on_event=on_event, cancel=cancel),
                     json_out)
        return
    columns = (TextColumn("{task.description}"), TextColumn("{task.fields[stage]:<11}"), BarColumn(),
               TaskProgressColumn(), DownloadColumn(), TextColumn("{task.fields[note]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        rows = {t.device: progress.add_task(t.device, total=None, stage="queued", note="") for t in targets}

        def on_event(e: _flash.FlashEvent) -> None:
            note = " ".join(x for x in (e.chip, e.mac, f"try {e.attempt}" if e.attempt > 1 else "") if x)
            if e.stage in (_flash.Stage.FAILED, _flash.Stage.RETRYING, _flash.Stage.INTERRUPTED):
                colour = "red" if e.stage is _flash.Stage.FAILED else "yellow"
                note = f"[{colour}]{escape(e.message)}[/]"
            update = {"stage": e.stage.value, "note": note}
            if e.bytes_total:
                update.update(total=e.bytes_total, completed=e.bytes_done)
            progress.update(rows[e.port], **update)

        try:
            result = _flash.flash_all(targets, images, options, on_event=on_event, log_dir=log_dir)
        except _flash.FlashError as e:
            raise _fail(str(e)) from None
    rows = []
    for r in result.results:
        state = "verified" if r.ok else r.state.value
        why = r.left_as if r.ok else escape(f"{r.left_as}: [{r.error_kind}] {r.error}")
        rows.append((escape(r.port), r.chip_name or "-", r.mac or "-", escape(r.board or "-"),
                     f"[{_RESULT_STYLE.get(r.state.value, 'white')}]{state}[/]", f"{r.seconds:.1f}",
                     str(r.retries), why))
    _table("Flash " + ("interrupted" if result.interrupted else "summary"),
           [("port", True), ("chip", True), ("MAC", True), ("image", True), ("result", True), ("s", True),
            ("retries", True), ("left as / why", False)], rows)
    report_path = result.write_json(Path(report) if report else log_dir / "report.json")
    if reg is not None:
        from workshop import station as _station

        _station.record_flash_report(reg, result, images)
    ok = sum(r.ok for r in result.results)
    console.print(f"{ok}/{len(result.results)} verified in {result.seconds:.1f} s; report {report_path}; "
                  f"esptool logs in {log_dir}")
    if result.interrupted:
        raise Exit(code=130)
    if not result.ok:
        raise Exit(code=1)


# --- provision / smoke (workshop.provision, workshop.smoke) -----------------------------------


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
                   as_json=False, files=None, registry=None) -> bool:
    """Provision, render a table (or JSON); True if every board was provisioned."""
    from pathlib import Path

    from rich.markup import escape

    from workshop import lessons as _lessons
    from workshop import provision as _provision
    from workshop import station as _station

    reg = _open_registry(registry)
    with console.status(f"provisioning {len(targets)} board(s)...") as status:
        def on_event(e) -> None:
            if e.kind in ("provisioned", "failed", "retry", "files"):
                status.update(f"{e.port}: {e.message}")

        try:
            results = _provision.provision_all(targets, cfg, on_event=on_event, replace=replace, reset=reset,
                                               baudrate=int(baud), connect_timeout=connect_timeout,
                                               files=Path(files) if files else None,
                                               index_of=_station.sticker_index(reg) if reg is not None else None)
        except (_lessons.LessonError, _provision.ProvisionError) as e:
            raise _fail(str(e)) from None
    if reg is not None:
        _station.record_provision_results(reg, results)
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        table = Table(title="Provisioning")
        for col in ("port", "hostname", "MAC", "config", "boot hook", "files", "result", "s"):
            table.add_column(col, overflow="fold")
        for r in results:
            result = "[green]written + verified[/]" if r.ok else f"[red]failed at {r.stage}: {escape(r.error or '')}[/]"
            copied = f"{len(r.files['written'])} new, {len(r.files['unchanged'])} same" if r.files else "-"
            table.add_row(r.port, r.hostname or "-", r.mac or "-", r.config_path or "-", r.boot_hook or "-",
                          copied, result, f"{r.duration_s:.1f}")
        console.print(table)
    return all(r.ok for r in results)


_PROVISION_HELP = {
    "wifi": "workshop Wi-Fi SSID",
    "wifi_password": "Wi-Fi password (or env WORKSHOP_WIFI_PASSWORD, kept out of shell history); never printed",
    "hostname": "hostname pattern, unique per board: {mac4} {mac6} {mac} {port} {index}, e.g. ws-{mac4}",
    "telnet_user": "telnet user name",
    "telnet_password": "telnet password (or env WORKSHOP_TELNET_PASSWORD); never printed",
    "mqtt": "MQTT broker host the boards use (and --mqtt-port, default 1883)",
    "mqtt_port": "MQTT broker port written to the config",
    "start": "services started at boot, comma-separated: wifi,mdns,telnet,webserver",
    "config": "a workshop.toml in the /workshop.json shape; options given here win over it",
}


def _provision_options(wifi, wifi_password, hostname, telnet_user, telnet_password, mqtt, mqtt_port, start):
    return dict(hostname=hostname, wifi_ssid=wifi,
                wifi_password=wifi_password or os.environ.get("WORKSHOP_WIFI_PASSWORD"),
                telnet_user=telnet_user,
                telnet_password=telnet_password or os.environ.get("WORKSHOP_TELNET_PASSWORD"),
                mqtt_broker=mqtt, mqtt_port=mqtt_port,   # checked (and made an int) by ProvisionConfig
                start=tuple(_csv(start)) if start is not None else None)


@task(help={
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    **_PROVISION_HELP,
    "replace": "replace the device config instead of merging into it (merging keeps keys not given here)",
    "reset": "soft-reset each board afterwards, so boot.py starts the services now",
    "baud": "serial baud rate of the REPL",
    "json": "print JSON instead of a table",
    "files": "also copy this folder of lesson files (main.py, lib/, ...) onto every board: atomic, verified, identical files skipped",
    "registry": "record the boards in this registry; {index} is then each board's sticker number",
})
def provision(c, ports=None, wifi=None, wifi_password=None, hostname=None, telnet_user=None, telnet_password=None,
              mqtt=None, mqtt_port=None, start=None, config=None, replace=False, reset=False, baud=115200,
              json=False, files=None, registry=None):  # noqa: A002
    """Write /workshop.json and the boot hook on every board in parallel (atomic, read back); non-zero exit if any failed."""
    cfg = _provision_config(config, **_provision_options(wifi, wifi_password, hostname, telnet_user,
                                                         telnet_password, mqtt, mqtt_port, start))
    targets = _serial_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    if not _run_provision(targets, cfg, replace=replace, reset=reset, baud=baud, as_json=json, files=files,
                          registry=registry):
        raise Exit(code=1)


def _smoke_expected(board, dist, release):
    from pathlib import Path

    from workshop import buildinfo
    from workshop import smoke as _smoke

    base = Path(dist) if dist else buildinfo.dist_dir()
    if not board:
        built = sorted(p.name for p in base.glob("*") if (p / "build.json").is_file())
        if len(built) != 1:
            raise _fail("which firmware should the boards run? pass --board NAME"
                        + (f" (built: {', '.join(built)})" if built else ""))
        board = built[0]
    try:
        if release:
            return _smoke.Expected.from_release_index(_smoke.release_index(release), board)
        if (base / board / "build.json").is_file():
            return _smoke.Expected.from_build(base / board)
        return _smoke.Expected.for_board(config.get_board(board))
    except (_smoke.SmokeError, config.ConfigError) as e:
        raise _fail(str(e)) from None


@task(help={
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    "board": "the board the firmware was built for (default: the only build in dist/)",
    "dist": "folder with <BOARD>/build.json builds (default: dist/)",
    "release": "expect release V's firmware (release/V/index.json, or the downloaded release's) instead of dist/'s build",
    "network": "also check Wi-Fi (with the provisioned config), an MQTT round trip and an HTTP GET",
    "mqtt": "MQTT broker for --network (default: the device config's mqtt.broker); HOST or HOST:PORT",
    "http_url": "URL for the --network HTTP GET (default http://micropython.org/ks/test.html)",
    "json_out": "write the JSON report to this file ('-' = print it instead of the table)",
    "junit": "write a JUnit XML report to this file",
    "baud": "serial baud rate of the REPL",
    "registry": "record each board's result in this registry (by the MAC its firmware reports)",
})
def smoke(c, ports=None, board=None, dist=None, release=None, network=False, mqtt=None, http_url=None,
          json_out=None, junit=None, baud=115200, registry=None):
    """Check every board in parallel (firmware, frozen stack, heap, flash, config[, network]); non-zero exit if any failed."""
    from pathlib import Path

    from rich.markup import escape

    from workshop import buildinfo
    from workshop import smoke as _smoke

    net = None
    if network:
        try:
            host, mport = _smoke.parse_broker(mqtt)
        except _smoke.SmokeError as e:
            raise _fail(str(e)) from None
        net = _smoke.NetworkOptions(mqtt_host=host, mqtt_port=mport, **({"http_url": http_url} if http_url else {}))
    expected = _smoke_expected(board, dist, release)
    targets = _serial_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    reg = _open_registry(registry)
    with console.status(f"checking {len(targets)} board(s)..."):
        from workshop import station as _station

        macs = _station.board_macs(targets, int(baud)) if reg is not None else {}
        reports = _smoke.smoke_all(targets, expected, network=net, baudrate=int(baud))
        if reg is not None:
            _station.record_smoke_reports(reg, reports, macs)
    if json_out:
        text = _smoke.to_json(reports)
        if json_out == "-":
            print(text, end="")
        else:
            buildinfo.write_atomic(Path(json_out), text)
    if junit:
        buildinfo.write_atomic(Path(junit), _smoke.to_junit(reports))
    if json_out != "-":
        groups = ["connect", "firmware", "modules", "heap", "flash", "config"] + (["wifi", "mqtt", "http"] if net else [])
        table = Table(title=f"Smoke: expecting {expected.source}")
        for col in ("port", *groups, "s", "result"):
            table.add_column(col, overflow="fold")
        style = {"pass": "green", "fail": "red", "skip": "dim"}
        for r in reports:
            row = _smoke.summary_rows(r)
            cells = []
            for g in groups:
                v = row.get(g, "-")
                colour = "red" if (g == "modules" and v.split("/")[0] != v.split("/")[-1]) else style.get(v, "green")
                cells.append(f"[{colour}]{v}[/]")
            table.add_row(r.port, *cells, f"{r.duration_s:.1f}", "[green]ok[/]" if r.ok else "[red]FAILED[/]")
        console.print(table)
        for r in reports:
            for chk in r.failed:
                console.print(f"[red]✗[/] {r.port} {chk.name}: {escape(chk.detail)}", soft_wrap=True)
        ok = sum(r.ok for r in reports)
        console.print(f"{ok}/{len(reports)} board(s) passed")
    if not all(r.ok for r in reports):
        raise Exit(code=1)


# --- more tasks below ---


# --- station / registry / identify (workshop.station, workshop.registry, workshop.identify) -------


def _open_registry(path):
    """--registry PATH -> Registry, or None when not given."""
    if not path:
        return None
    from workshop import registry as _registry

    try:
        return _registry.Registry(path)
    except _registry.RegistryError as e:
        raise _fail(str(e)) from None


def _table(title: str, columns, rows):
    """A table that never cuts a key column (names, ports, hostnames, results): the detail columns
    wrap instead. Without a terminal: no box, as wide as the content needs."""
    import sys

    from rich import box as _box
    from rich.text import Text

    tty = sys.stdout.isatty()
    table = Table(title=title, box=_box.HEAVY_HEAD if tty else None, show_edge=tty, pad_edge=tty)
    for name, key in columns:
        longest = max([len(name)] + [Text.from_markup(str(r[len(table.columns)])).cell_len for r in rows])
        # key columns keep their whole width; a detail column keeps at least 24 cells and wraps
        table.add_column(name, no_wrap=key, min_width=longest if key else min(longest, 24), overflow="fold")
    for r in rows:
        table.add_row(*r)
    needed = sum((c.min_width or 0) + 3 for c in table.columns) + 1
    if tty and needed > console.width:
        # Too narrow a terminal for one line per row: one block per row instead, nothing cut.
        console.print(f"[bold]{title}[/]")
        for r in rows:
            console.print("  ".join(f"[dim]{name}[/] {cell}" for (name, _), cell in zip(columns, r)), soft_wrap=False)
    elif tty:
        console.print(table)
    else:
        Console(width=max(console.width, sum((c.min_width or 12) + 3 for c in table.columns))).print(table)


class _StationView:
    """Renders station events: a live line per board on a terminal, plain lines otherwise; JSON lines to a file."""

    def __init__(self, json_out=None) -> None:
        import sys
        import time

        self.tty = sys.stdout.isatty()
        self.rows: dict[str, object] = {}
        self.json = open(json_out, "a", encoding="utf-8") if json_out else None  # noqa: SIM115 - closed in close()
        self.live = None
        self.last_percent: dict[str, int] = {}
        self.t = time.monotonic
        self.last_draw = 0.0

    def __enter__(self):
        if self.tty:
            from rich.live import Live

            self.live = Live(self._render(), console=console, refresh_per_second=8, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)
        if self.json:
            self.json.close()

    def _render(self):
        from rich.markup import escape

        counts = {"ready": 0, "failed": 0, "in progress": 0}
        table = Table(box=None, show_header=True, pad_edge=False)
        for col in ("port", "stage", "%", "chip", "MAC", "hostname", "s", "note"):
            table.add_column(col, no_wrap=col != "note", overflow="fold", min_width=12 if col == "note" else None)
        for e in self.rows.values():
            state = "ready" if e.final and e.ok else "failed" if e.final else "in progress"
            counts[state] += 1
            colour = {"ready": "green", "failed": "red"}.get(state, "white")
            note = "[bold green]unplug me[/]" if state == "ready" else escape(e.message)
            table.add_row(escape(e.port), f"[{colour}]{e.stage}[/]", f"{e.percent:.0f}" if e.percent is not None else "",
                          e.chip or "", e.mac or "", e.hostname or "", f"{e.elapsed:.1f}", note)
        table.caption = f"ready {counts['ready']} · failed {counts['failed']} · in progress {counts['in progress']}"
        return table

    def __call__(self, e) -> None:
        import json as _json

        if self.json:
            self.json.write(_json.dumps(e.to_dict()) + "\n")
            self.json.flush()
        self.rows[e.key] = e
        if self.live is not None:
            now = self.t()
            if e.final or now - self.last_draw > 0.1:
                self.last_draw = now
                self.live.update(self._render())
            return
        if e.percent is not None:           # plain output: progress every 25 %
            step = int(e.percent // 25)
            if self.last_percent.get(e.key) == step:
                return
            self.last_percent[e.key] = step
        fields = " ".join(x for x in (e.chip, e.mac, e.hostname, f"{e.percent:.0f}%" if e.percent is not None else "")
                          if x)
        print(f"{e.elapsed:7.1f}s {e.port} {e.stage}{' ' + fields if fields else ''}: {e.message}", flush=True)


def _run_station(run, json_out=None):
    """Run a station function with the renderer; summary table; exit 130 after Ctrl-C, 1 if any board failed."""
    import threading

    from rich.markup import escape

    from workshop import station as _station

    cancel = threading.Event()
    with _StationView(json_out) as view:
        try:
            report = run(view, cancel)
        except _station.StationError as e:
            raise _fail(str(e)) from None
    rows = []
    for r in report.results:
        colour = {"ready": "green", "failed": "red", "unplugged": "yellow", "interrupted": "yellow"}.get(r.state, "white")
        rows.append((escape(r.port), str(r.sticker or "-"), escape(r.hostname or "-"), r.mac or "-", r.chip or "-",
                     f"[{colour}]{r.state}[/]", f"{r.seconds:.1f}", escape(r.left_as + (f" ({r.reason})" if r.reason and not r.ok else ""))))
    _table("Station " + ("interrupted" if report.interrupted else "summary"),
           [("port", True), ("sticker", True), ("hostname", True), ("MAC", True), ("chip", True), ("result", True),
            ("s", True), ("left as / why", False)], rows)
    counts = report.counts
    console.print(" · ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no board seen")
    if report.interrupted:
        raise Exit(code=130)
    if not report.ok:
        raise Exit(code=1)


@task(help={
    "board": "write dist/<BOARD>/ to every board (a board with another chip is refused)",
    "auto": "pick each board's image by its chip, among the builds in dist/ (or the --release)",
    "release": "write release V's images (downloaded and verified first)",
    "image": "write this single file (with --offset and --chip)",
    "offset": "flash offset for --image",
    "chip": "esptool chip name the --image is for",
    "dist": "folder with <BOARD>/build.json builds (default: dist/)",
    "provision": "provision each board from this workshop.toml (identity, boot hook)",
    "files": "copy this folder of lesson files onto each board",
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
    "boot_timeout": "seconds a flashed board may take to answer at its REPL (first boot formats the filesystem)",
    "logs": "folder for the per-board esptool logs (default: logs/station/<time>/)",
})
def station(c, board=None, auto=False, release=None, image=None, offset=None, chip=None, dist=None, provision=None,
            files=None, smoke=False, network=False, mqtt=None, registry="workshop.db", ports_dir=None, all_ports=False,
            stop_after=None, json_out=None, reflash=False, baud=460800, boot_timeout=20.0, logs=None):
    """Hot-plug: every board plugged in goes appear -> flash -> provision -> smoke -> ready, until Ctrl-C."""
    from pathlib import Path

    from workshop import flash as _flash
    from workshop import smoke as _smoke
    from workshop import station as _station

    images = _flash_images(board, auto, image, offset, chip, release, dist)
    cfg = _provision_config(provision, **_provision_options(*[None] * 8)) if provision else None
    net = None
    if network:
        try:
            host, mport = _smoke.parse_broker(mqtt)
        except _smoke.SmokeError as e:
            raise _fail(str(e)) from None
        net = _smoke.NetworkOptions(mqtt_host=host, mqtt_port=mport)
    plan = _station.Plan(images=images, flash_options=_flash.FlashOptions(baud=int(baud)), provision=cfg,
                         files=Path(files) if files else None, smoke=smoke or network, network=net,
                         registry=_open_registry(registry), reflash=reflash, boot_timeout=float(boot_timeout),
                         log_dir=Path(logs) if logs else None)
    try:
        source = _station.default_source(Path(ports_dir) if ports_dir else None, all_ports)
    except _station.StationError as e:
        raise _fail(str(e)) from None
    console.print(f"watching {ports_dir or 'the serial ports'} for boards; Ctrl-C stops", highlight=False)
    _run_station(lambda on_event, cancel: _station.watch(plan, source, on_event=on_event, cancel=cancel,
                                                         stop_after=int(stop_after) if stop_after else None),
                 json_out)


@task(help={
    "registry": "the registry file (default: workshop.db here)",
    "csv": "write the registry as CSV to this file (stickers, class list)",
    "json": "print JSON instead of a table",
})
def registry(c, registry="workshop.db", csv=None, json=False):  # noqa: A002
    """Every board ever seen, by sticker: MAC, chip, hostname, image, last results."""
    from pathlib import Path

    from rich.markup import escape

    from workshop import buildinfo
    from workshop import registry as _registry

    if not Path(registry).exists():
        raise _fail(f"{registry}: no registry yet (the station, or flash/provision/smoke --registry, create it)")
    reg = _open_registry(registry)
    if csv:
        buildinfo.write_atomic(Path(csv), reg.to_csv())
        console.print(f"{len(reg.boards())} board(s) written to {csv}")
        return
    if json:
        print(reg.to_json(), end="")
        return

    def mark(v):
        return "-" if v is None else ("[green]ok[/]" if v else "[red]failed[/]")

    rows = [(str(b.sticker), escape(b.hostname or "-"), b.mac, b.chip or "-", escape(b.board or "-"), b.state,
             mark(b.flash_ok), mark(b.provision_ok), mark(b.smoke_ok), escape(b.port or "-"), b.last_seen,
             escape(b.smoke_detail or b.provision_detail or "")) for b in reg.boards()]
    _table(f"Registry {registry}", [("sticker", True), ("hostname", True), ("MAC", True), ("chip", True),
                                    ("board", True), ("state", True), ("flash", True), ("provision", True),
                                    ("smoke", True), ("last port", True), ("last seen", True), ("detail", False)], rows)


@task(help={
    "ports": "comma-separated device paths or pyserial URLs; default: every USB port that looks like a board",
    "blink": "only this board shows itself (a hostname such as lab-07, or a sticker number)",
    "registry": "the registry that knows the stickers (default: workshop.db here)",
    "baud": "serial baud rate of the REPL",
    "json": "print JSON instead of a table",
})
def identify(c, ports=None, blink=None, registry="workshop.db", baud=115200, json=False):  # noqa: A002
    """Each board blinks its sticker number on its LED (or prints its name on its console); port -> hostname -> MAC."""
    import json as _json
    from pathlib import Path

    from rich.markup import escape

    from workshop import identify as _identify

    targets = _serial_ports(ports)
    if not targets:
        raise _fail("no board found: plug boards in (data cables), see 'invoke devices --all', or pass --ports")
    reg = _open_registry(registry) if Path(registry).exists() else None
    try:
        with console.status(f"asking {len(targets)} board(s) to show themselves..."):
            shown = _identify.identify_boards(targets, reg, only=blink, baudrate=int(baud))
    except ValueError as e:
        raise _fail(str(e)) from None
    if json:
        print(_json.dumps([s.to_dict() for s in shown], indent=2))
    else:
        rows = [(escape(s.port), escape(s.hostname or "-"), str(s.sticker or "-"), s.mac or "-",
                 escape(s.how or ("-" if s.ok else "failed")), escape(s.error or "")) for s in shown]
        _table("Which board is which", [("port", True), ("hostname", True), ("sticker", True), ("MAC", True),
                                        ("shown by", True), ("detail", False)], rows)
    if any(not s.ok for s in shown):
        raise Exit(code=1)
