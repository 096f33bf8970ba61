"""Serve a release folder over HTTP (the organizer's laptop as the workshop's download mirror).

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

from .release import INDEX, ReleaseError, read_index

ROOM_PAGE = Path(__file__).resolve().parent / "room" / "room.html"

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("application/json", ".json")


class ServeError(RuntimeError):
    pass


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


def served_release(directory: Path) -> Served:
    """The release in `directory` (its index.json): the version to name in hints, and the images'
    inputs hashes that /room compares each board's with (the release served, not dist/)."""
    from .roster import Expected

    index = Path(directory) / INDEX
    if not index.is_file():
        raise ServeError(f"{directory}: no {INDEX}; make the release first (invoke release --version V)")
    try:
        version, boards = read_index(index.read_bytes(), str(index))
    except (ReleaseError, OSError) as e:
        return Served(Path(directory), None, Expected({}, str(index)), f"{e}: /room cannot tell outdated boards")
    return Served(Path(directory), version, Expected({b.board: b.inputs_sha256 for b in boards if b.inputs_sha256}, str(index)))


def make_server(directory: Path, host: str = "0.0.0.0", port: int = 8000, on_request=None,
                room=None) -> ThreadingHTTPServer:
    """An HTTP server for `directory` (not started: call serve_forever, or use start_in_thread).

    `room`: a `workshop.roster.Roster` to show on /room (the live page) and /room.json."""
    directory = Path(directory)
    if not (directory / INDEX).is_file():
        raise ServeError(f"{directory}: no {INDEX}; make the release first (invoke release --version V)")
    handler = functools.partial(_Handler, directory=str(directory))
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e} (try another --port)") from None
    server.daemon_threads = True
    server.on_request = on_request  # type: ignore[attr-defined]
    server.room = room  # type: ignore[attr-defined]
    return server


def make_room_server(room, host: str = "0.0.0.0", port: int = 8000, on_request=None) -> ThreadingHTTPServer:
    """Only the live room page (/room) and its data (/room.json), for `roster --serve`."""
    try:
        server = ThreadingHTTPServer((host, port), functools.partial(_Handler, directory=str(ROOM_PAGE.parent)))
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e} (try another port)") from None
    server.daemon_threads = True
    server.on_request = on_request  # type: ignore[attr-defined]
    server.room = room  # type: ignore[attr-defined]
    server.room_only = True  # type: ignore[attr-defined]
    return server


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
