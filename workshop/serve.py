"""Serve a release folder over HTTP (the organizer's laptop as the workshop's download mirror).

Before serving, `verified_folder` checks the folder against its release's own records: every file
SHA256SUMS lists is there with that sha256, and the flasher page's files are there. A corrupt or
incomplete release is refused (ESP Web Tools flashes whatever bytes it fetches); a download cache,
which has no flasher page and only the boards fetched, is served with warnings naming what it lacks.

WebSerial only works in a secure context: attendees who want to flash from the page must open it
over https or on localhost; over plain http on the LAN the page still lists every image for
download (and `invoke download --from http://<laptop>:<port>/` works).
"""

from __future__ import annotations

import functools
import mimetypes
import threading
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .buildinfo import sha256_file
from .release import INDEX, PAGE, SUMS, WEB_TOOLS_DIR, ReleaseBoard, ReleaseError, parse_sums, read_index

ROOM_PAGE = Path(__file__).resolve().parent / "room" / "room.html"

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/json", ".json")


class ServeError(RuntimeError):
    pass


# What the flasher page (release.flasher_page) loads besides index.json: the page itself and ESP
# Web Tools' entry script (which loads its chunks, all listed in SHA256SUMS under esp-web-tools/).
PAGE_SCRIPT = f"{WEB_TOOLS_DIR}/install-button.js"
PAGE_FILES = (PAGE, PAGE_SCRIPT)


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript",
                      ".json": "application/json", ".bin": "application/octet-stream", "": "application/octet-stream"}

    # Text files without an extension: a browser shows them (SHA256SUMS, ESP Web Tools' LICENSE).
    TEXT_FILES = frozenset({"SHA256SUMS", "LICENSE", "VERSION"})

    def guess_type(self, path: Any) -> str:
        if Path(str(path)).name in self.TEXT_FILES:
            return "text/plain; charset=utf-8"
        return super().guess_type(path)

    def end_headers(self) -> None:
        # Other pages and tools may fetch from this mirror; the files are public anyway.
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        room = getattr(self.server, "room", None)
        path = self.path.split("?")[0]
        if room is not None and path in ("/room", "/room/", "/room.json"):
            self._send_room(room, path)
            return
        if getattr(self.server, "room_only", False):
            self.send_error(404, "the room server serves /room and /room.json only")
            return
        super().do_GET()

    def _send_room(self, room, path: str) -> None:
        import json

        if path == "/room.json":
            body = json.dumps(room.report()).encode()
            ctype = "application/json"
        else:
            body = ROOM_PAGE.read_bytes()
            ctype = "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - library code never prints
        log = getattr(self.server, "on_request", None)
        if log:
            log(self.address_string(), format % args)


@dataclass(frozen=True)
class Served:
    """What a served folder holds: its release version and each board's inputs hash there."""

    directory: Path
    version: str | None       # None: index.json is no release index (then `problem` says why)
    expected: Any             # workshop.roster.Expected: what /room's "outdated" is judged against
    problem: str | None = None


def _index_of(directory: Path) -> Path:
    """The release's index.json in `directory`; ServeError naming what is missing, the folder
    itself (a mistyped --directory) or its index (no release made there yet)."""
    if not directory.is_dir():
        what = "a file, not a folder" if directory.exists() else "no such folder"
        raise ServeError(f"{directory}: {what}: --directory names a release folder, e.g. release/v0.1.0")
    index = directory / INDEX
    if not index.is_file():
        raise ServeError(f"{directory}: no {INDEX}; make the release first (invoke release --version V)")
    return index


def served_release(directory: Path) -> Served:
    """The release in `directory` (its index.json): the version to name in hints, and the images'
    inputs hashes that /room compares each board's with (the release served, not dist/)."""
    from .roster import Expected

    index = _index_of(Path(directory))
    try:
        version, boards = read_index(index.read_bytes(), str(index))
    except (ReleaseError, OSError) as e:
        return Served(Path(directory), None, Expected({}, str(index)), f"{e}: /room cannot tell outdated boards")
    return Served(Path(directory), version, Expected({b.board: b.inputs_sha256 for b in boards if b.inputs_sha256}, str(index)))


@dataclass(frozen=True)
class Mismatch:
    file: str                 # relative to the folder, as SHA256SUMS names it
    expected: str             # SHA256SUMS' sha256 (the released bytes')
    actual: str               # the sha256 of the file in the folder


@dataclass(frozen=True)
class FolderCheck:
    """A folder to serve, checked against its release's own records (SHA256SUMS, index.json) and
    for the flasher page's files. `problems` non-empty: it must not be served (see verified_folder)."""

    directory: Path
    version: str | None       # index.json's; None when that is no release index
    kind: str                 # "release" (has the flasher page) | "download-cache" (has none) | "not-a-release"
    verified: tuple[str, ...] = ()              # files whose sha256 is the one SHA256SUMS gives
    # Files SHA256SUMS lists (or the page loads) that are not here; for a download cache, those
    # of the page are left out (one warning says it has no page).
    missing: tuple[str, ...] = ()
    mismatched: tuple[Mismatch, ...] = ()       # files here whose sha256 is not SHA256SUMS'
    problems: tuple[str, ...] = ()              # each a sentence: why it is refused
    warnings: tuple[str, ...] = ()              # each a sentence: served, but said

    @property
    def ok(self) -> bool:
        return not self.problems

    def remedy(self) -> str:
        v = self.version or "V"
        if self.kind == "download-cache":
            return (f"run `invoke download --version {v}` again (it fetches what is missing and replaces what does "
                    f"not match), or serve the release folder itself (invoke serve --version {v})")
        return (f"re-run `invoke release --version {v} --force` (from dist/), or copy the release folder again "
                "from where it was made")

    def refusal(self) -> str:
        what = f"{self.directory}" + (f" (release {self.version})" if self.version else "")
        return (f"refusing to serve {what}: attendees' browsers flash whatever it serves, and `invoke download "
                "--from` it would fail:\n  - " + "\n  - ".join(self.problems) + f"\nTo fix it: {self.remedy()}.")


class FolderRefused(ServeError):
    """The folder fails its check; `check` says how (the message lists every problem)."""

    def __init__(self, check: FolderCheck) -> None:
        super().__init__(check.refusal())
        self.check = check


def _safe_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and "\\" not in name


def _page_file(name: str) -> bool:
    return name == PAGE or name.startswith(WEB_TOOLS_DIR + "/")


def _page_role(name: str) -> str:
    if name == PAGE:
        return "the flasher page itself: / would be a directory listing"
    if name == PAGE_SCRIPT:
        return "the flasher page's ESP Web Tools script: without it the Install button is dead"
    return "a file of the flasher page's ESP Web Tools: the Install button may not work"


def check_folder(directory: Path) -> FolderCheck:
    """Check `directory` before serving it: every file its SHA256SUMS lists is there with that
    sha256, index.json agrees with SHA256SUMS, and the flasher page's files are there.

    A folder with the page (a release) must be complete. A folder without any of it is taken for a
    download cache: served with a warning (no flasher page) and one naming each file it lacks that
    `invoke download --from` would ask for. A folder with no SHA256SUMS whose index.json is no
    release index is not a release at all: served as it is, with a warning. Files whose sha256
    differs are a problem everywhere. Raises ServeError only when there is no index.json."""
    directory = Path(directory)
    index_path = _index_of(directory)
    version: str | None = None
    boards: tuple[ReleaseBoard, ...] = ()
    index_problem: str | None = None
    try:
        version, boards = read_index(index_path.read_bytes(), str(index_path))
    except (ReleaseError, OSError) as e:
        index_problem = str(e)
    has_page = (directory / PAGE).exists() or (directory / WEB_TOOLS_DIR).exists()
    kind = "release" if has_page else "download-cache"

    sums_path = directory / SUMS
    if not sums_path.is_file():
        if index_problem is not None:
            return FolderCheck(directory, None, "not-a-release", warnings=(
                f"{directory}: no {SUMS} and no release index: not a release, nothing verified; served as it is "
                f"(`invoke download --from` cannot use it)",))
        return FolderCheck(directory, version, kind, problems=(
            f"no {SUMS}: nothing to check its files against (every release and download cache has one)",))
    try:
        sums = parse_sums(sums_path.read_text(encoding="utf-8", errors="replace"), str(sums_path))
    except (ReleaseError, OSError) as e:
        return FolderCheck(directory, version, kind, problems=(f"{e}",))

    problems: list[str] = []
    warnings: list[str] = []
    if index_problem is not None:     # (a newer kit's format, say): the files are still checked
        warnings.append(f"{index_problem}: checked against {SUMS} alone (this kit's `invoke download --from` "
                        "cannot read that index)")
    verified: list[str] = []
    missing: list[str] = []
    mismatched: list[Mismatch] = []
    for name, expected in sums.items():
        if not _safe_name(name):
            problems.append(f"{SUMS} lists {name!r}, which is no file inside the folder")
            continue
        path = directory / name
        if not path.is_file():
            missing.append(name)
            continue
        try:
            actual = sha256_file(path)
        except OSError as e:
            problems.append(f"{name}: cannot be read ({e.strerror or e}): it cannot be served either")
            continue
        if actual == expected:
            verified.append(name)
        else:
            mismatched.append(Mismatch(name, expected, actual))
            problems.append(f"{name}: its sha256 here is {actual}, {SUMS} says {expected}: not the released "
                            f"bytes (corrupt, or changed since the release)")
    if INDEX not in sums:
        problems.append(f"{SUMS} does not list {INDEX}: `invoke download --from` refuses the folder")
    for board in boards:
        for f in board.files:
            if f.name in sums and sums[f.name] != f.sha256:
                problems.append(f"{INDEX} and {SUMS} disagree about {f.name}: the release is inconsistent")
        for named in [board.manifest, *(f.name for f in board.files)]:
            if named and named not in sums:
                problems.append(f"{INDEX} names {named} ({board.board}), {SUMS} does not list it: "
                                "`invoke download --from` fails on it")

    if has_page:
        # A release folder is made whole: every file it lists, and the page's, must be here.
        for name in PAGE_FILES:
            if name not in sums and not (directory / name).is_file():
                missing.append(name)
        for name in missing:
            listed = f" (listed in {SUMS})" if name in sums else ""
            why = _page_role(name) if _page_file(name) else "`invoke download --from` fails on it (404)"
            problems.append(f"{name}: missing{listed}: {why}")
    else:
        warnings.append(f"no flasher page ({PAGE}, {WEB_TOOLS_DIR}/): this looks like a download cache: attendees "
                        f"can `invoke download --from` it but not flash from a browser (serve the release folder "
                        f"for that: invoke serve --version {version or 'V'})")
        absent = {n for n in missing if not _page_file(n)}
        described: set[str] = set()
        debug: list[str] = []
        for board in boards:
            needed = [n for n in [board.manifest, *(f.name for f in board.images)] if n and n in absent]
            debug += [f.name for f in board.files if f.role != "image" and f.name in absent]
            described |= {*needed, *debug}
            if needed:
                warnings.append(f"{board.board}: not here, though {SUMS} lists them: {', '.join(needed)}: "
                                f"`invoke download --from` this server fails for {board.board} (404); "
                                f"complete the cache with `invoke download --version {version or 'V'}`")
        if debug:
            warnings.append(f"debug files (.elf/.map) not here: {', '.join(debug)}: only `invoke download --debug "
                            f"--from` needs them (`invoke download --version {version or 'V'} --debug` fetches them)")
        rest = sorted(absent - described)
        if rest:
            warnings.append(f"not here, though {SUMS} lists them: {', '.join(rest)}")
        missing = sorted(absent)
    return FolderCheck(directory, version, kind, tuple(verified), tuple(missing), tuple(mismatched),
                       tuple(problems), tuple(warnings))


def verified_folder(directory: Path) -> FolderCheck:
    """check_folder, refusing (FolderRefused, a ServeError listing every problem and what to do) a
    folder that fails; what it returns may still carry warnings to show."""
    check = check_folder(directory)
    if not check.ok:
        raise FolderRefused(check)
    return check


def make_server(directory: Path, host: str = "0.0.0.0", port: int = 8000, on_request=None,
                room=None) -> ThreadingHTTPServer:
    """An HTTP server for `directory` (not started: call serve_forever, or use start_in_thread).

    `room`: a `workshop.roster.Roster` to show on /room (the live page) and /room.json."""
    directory = Path(directory)
    _index_of(directory)
    handler = functools.partial(_Handler, directory=str(directory))
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise ServeError(listen_error(host, port, e, "--host", "--port")) from None
    server.daemon_threads = True
    server.on_request = on_request  # type: ignore[attr-defined]
    server.room = room  # type: ignore[attr-defined]
    return server


def make_room_server(room, host: str = "0.0.0.0", port: int = 8000, on_request=None) -> ThreadingHTTPServer:
    """Only the live room page (/room) and its data (/room.json), for `roster --serve`."""
    try:
        server = ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=str(ROOM_PAGE.parent)))
    except OSError as e:
        raise ServeError(listen_error(host, port, e, "host", "port")) from None
    server.daemon_threads = True
    server.on_request = on_request  # type: ignore[attr-defined]
    server.room = room  # type: ignore[attr-defined]
    server.room_only = True  # type: ignore[attr-defined]
    return server


def listen_error(host: str, port: int, e: OSError, host_option: str, port_option: str) -> str:
    """Why a server cannot listen on host:port, and what to change: the port (in use, or below
    1024 without root) or the host (not an address of this machine, or no address at all)."""
    import errno
    import socket

    why = e.strerror or str(e)
    if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
        mine = ", ".join(["127.0.0.1", *lan_addresses()])
        hint = f"{host_option} {host} is not an address of this machine (its addresses: {mine}; 0.0.0.0: all)"
    elif e.errno == errno.EACCES and 0 < port < 1024:
        hint = f"ports below 1024 need root: try another {port_option}, e.g. 8000"
    elif e.errno == errno.EADDRINUSE:
        hint = f"another program listens on port {port}: stop it, or try another {port_option}"
    else:
        hint = f"try another {port_option}"
    return f"cannot listen on {host}:{port}: {why} ({hint})"


def is_loopback(host: str) -> bool:
    """An address (or `localhost`) only this machine reaches; a name is taken as given."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def attendee_url(addresses: list[str]) -> str | None:
    """Of `urls(server)`, the first attendees' laptops reach (a LAN address); None when the
    server listens on loopback only, or the machine has no LAN address yet."""
    from urllib.parse import urlsplit

    return next((u for u in addresses if not is_loopback(urlsplit(u).hostname or "")), None)


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="workshop-serve", daemon=True)
    thread.start()
    return thread


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other than loopback, read from its network interfaces
    (ifaddr; no traffic sent). The host name is no guide: Debian maps it to 127.0.1.1 in
    /etc/hosts, so looking it up finds loopback alone."""
    import ipaddress

    import ifaddr

    found = {str(ip.ip) for adapter in ifaddr.get_adapters() for ip in adapter.ips if ip.is_IPv4}
    return sorted((a for a in found if not ipaddress.IPv4Address(a).is_loopback), key=ipaddress.IPv4Address)


def urls(server: ThreadingHTTPServer) -> list[str]:
    host, port = server.server_address[:2]
    hosts = ["localhost", *lan_addresses()] if host in ("0.0.0.0", "") else [str(host)]
    return [f"http://{h}:{port}/" for h in hosts]
