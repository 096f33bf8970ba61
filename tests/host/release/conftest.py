"""Fixtures for release/download tests: placeholder builds in a temporary dist/, a fake ESP Web
Tools folder (the real one is used by the e2e flasher test), and a real HTTP server on 127.0.0.1
that can tamper with, truncate or withhold files."""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from placeholders import ESP_BOARDS, clean_tree, make_fake_web_tools, never_stale, write_placeholder_build
from workshop.config import PROJECT_ROOT


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    d = tmp_path / "dist"
    for name in ESP_BOARDS:
        write_placeholder_build(d, name)
    return d


@pytest.fixture
def fake_web_tools(tmp_path: Path) -> Path:
    """Stands in for ESP Web Tools in host tests (the e2e flasher test uses the real package)."""
    return make_fake_web_tools(tmp_path / "fake-esp-web-tools")


@pytest.fixture
def release_kwargs(tmp_path: Path, dist: Path, fake_web_tools: Path) -> dict:
    """make_release arguments for placeholder builds: staleness is workshop.build's business and
    is exercised separately; the project tree counts as clean."""
    return dict(root=PROJECT_ROOT, dist=dist, out=tmp_path / "release" / "v0.1.0", web_tools=fake_web_tools,
                stale=never_stale, tree_dirty=clean_tree, boards=ESP_BOARDS)


# --- a real HTTP server ----------------------------------------------------------------------


@dataclass
class Behaviour:
    tamper: set[str] = field(default_factory=set)      # serve with one byte flipped (same length)
    truncate: set[str] = field(default_factory=set)    # announce full length, send half, close
    missing: set[str] = field(default_factory=set)     # 404
    endless: set[str] = field(default_factory=set)     # no length, the file over and over until the client goes
    sent: dict[str, int] = field(default_factory=dict)  # endless: bytes sent before the client went
    stall: set[str] = field(default_factory=set)       # announce full length, send a quarter, then nothing
    stalled: threading.Event = field(default_factory=threading.Event)  # set once a stalled file's quarter is out
    requests: list[str] = field(default_factory=list)  # paths asked for, in order


class _Handler(SimpleHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        name = self.path.lstrip("/").split("?")[0]
        self.behaviour.requests.append(name)
        base = Path(self.directory)
        if name in self.behaviour.missing or not (base / name).is_file():
            self.send_error(404)
            return
        data = (base / name).read_bytes()
        if name in self.behaviour.endless:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.close_connection = True
            sent = 0
            try:
                while sent < 1 << 30:
                    self.wfile.write(data)
                    sent += len(data)
            except OSError:
                pass
            self.behaviour.sent[name] = sent
            return
        if name in self.behaviour.tamper:
            data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if name in self.behaviour.stall:
            self.wfile.write(data[: len(data) // 4])
            self.wfile.flush()
            self.behaviour.stalled.set()
            time.sleep(60)          # the client gives up (or is interrupted) first
            return
        if name in self.behaviour.truncate:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


@dataclass
class Server:
    url: str
    behaviour: Behaviour
    directory: Path


@pytest.fixture
def http_server():
    """Start a server for a folder: `serve(folder) -> Server`; all stopped at teardown."""
    servers = []

    def serve(directory: Path) -> Server:
        behaviour = Behaviour()
        handler = type("Handler", (_Handler,), {"behaviour": behaviour})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return Server(f"http://127.0.0.1:{httpd.server_address[1]}/", behaviour, directory)

    yield serve
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()
