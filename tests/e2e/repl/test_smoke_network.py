"""`smoke --network` on real MicroPython REPLs on PTYs: a real mosquitto, a real local HTTP server.

The peers run the frozen UNIX firmware when dist/UNIX is built and current, else the PyPI runtime
(whose stack modules then fail the 'frozen' check; the network checks are the same code).
The unix port has no radio: its Wi-Fi check must be a skip with that reason, never a pass.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from workshop import smoke
from workshop.config import get_board
from workshop.provision import ProvisionConfig, provision_all

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).parent))
from test_provision_smoke import _FROZEN_SKIP  # noqa: E402

RUNTIME = "frozen" if _FROZEN_SKIP is None else "pypi"
BODY = b"hello from the smoke test\n"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)
        body, status = (BODY, 200) if self.path == "/ok" else (b"not here\n", 404)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    """A real CPython HTTP server on 127.0.0.1: /ok is 200, anything else 404; `.seen` lists the paths."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.seen = []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected() -> smoke.Expected:
    if RUNTIME == "frozen":
        return smoke.Expected.from_build(REPO / "dist" / "UNIX")
    return smoke.Expected.for_board(get_board("UNIX"))


def provisioned(make_peer, names, host: str, port: int):
    peers = [make_peer(n, runtime=RUNTIME) for n in names]
    cfg = ProvisionConfig(hostname="ws-{mac4}", wifi_ssid="Workshop", wifi_password="net-test-pw",
                          mqtt_broker=host, mqtt_port=port, start=())
    results = provision_all([p.port for p in peers], cfg)
    assert all(r.ok for r in results), [r.error for r in results]
    for p in peers:
        assert json.loads((p.root / "workshop.json").read_text())["mqtt"] == {"broker": host, "port": port}
    return peers


def details(report: smoke.DeviceReport) -> dict[str, tuple[str, str]]:
    return {c.name: (c.status, c.detail) for c in report.checks if c.name in ("wifi", "mqtt", "http")}


def assert_wifi_skipped(report: smoke.DeviceReport) -> None:
    wifi = report.check("wifi")
    assert wifi is not None and wifi.status == "skip", details(report)
    assert "no radio" in wifi.detail and "unix port" in wifi.detail


def test_network_checks_pass_through_a_real_broker_and_http_server(make_peer, mosquitto, http_server):
    peers = provisioned(make_peer, ["n0", "n1"], mosquitto.host, mosquitto.port)
    reports = smoke.smoke_all([p.port for p in peers], expected(),
                              network=smoke.NetworkOptions(http_url=f"{http_server.url}/ok"))
    for r in reports:
        assert_wifi_skipped(r)
        mqtt, http = r.check("mqtt"), r.check("http")
        assert mqtt.status == "pass", details(r)
        assert f"round trip through {mosquitto.host}:{mosquitto.port}" in mqtt.detail
        assert http.status == "pass", details(r)
        assert f"HTTP 200 OK, {len(BODY)} bytes" in http.detail
        if RUNTIME == "frozen":
            assert r.ok, [(c.name, c.detail) for c in r.failed]
    assert http_server.seen == ["/ok", "/ok"]                  # each board really asked the server
    junit = ET.fromstring(smoke.to_junit(reports))
    assert len(junit.findall(".//testcase[@name='wifi']/skipped")) == 2
    assert not junit.findall(".//testcase[@name='mqtt']/failure") + junit.findall(".//testcase[@name='http']/failure")


def test_network_failures_name_their_reason(make_peer, mosquitto, http_server):
    peers = provisioned(make_peer, ["n0", "n1"], mosquitto.host, mosquitto.port)
    mosquitto.process.kill()                                   # the broker is down
    mosquitto.process.wait()
    dead_url = f"http://127.0.0.1:{closed_port()}/ok"
    with ThreadPoolExecutor(2) as pool:                        # one board per URL, at the same time
        r404, rdead = pool.map(lambda pu: smoke.smoke_all([pu[0].port], expected(),
                                                          network=smoke.NetworkOptions(http_url=pu[1]))[0],
                               zip(peers, (f"{http_server.url}/missing", dead_url)))
    for r in (r404, rdead):
        assert not r.ok
        assert_wifi_skipped(r)
        status, detail = details(r)["mqtt"]
        assert status == "fail"
        assert f"broker {mosquitto.host}:{mosquitto.port}: cannot connect to the broker" in detail
        assert "ECONNREFUSED" in detail and "nothing listens there" in detail
    status, detail = details(r404)["http"]
    assert status == "fail" and f"GET {http_server.url}/missing: HTTP 404 Not Found" in detail
    status, detail = details(rdead)["http"]
    assert status == "fail" and f"GET {dead_url}: request failed" in detail and "ECONNREFUSED" in detail
    assert http_server.seen == ["/missing"]


def test_a_silent_broker_fails_on_time_and_the_next_check_still_runs(make_peer, http_server):
    """A broker that accepts the connection and never answers: a named timeout, not a stuck board."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        host, port = silent.getsockname()
        [peer] = provisioned(make_peer, ["n0"], host, port)
        [r] = smoke.smoke_all([peer.port], expected(),
                              network=smoke.NetworkOptions(http_url=f"{http_server.url}/ok", mqtt_timeout=1.0))
    mqtt = r.check("mqtt")
    assert mqtt.status == "fail" and f"broker {host}:{port}: cannot connect to the broker" in mqtt.detail, details(r)
    assert "ETIMEDOUT" in mqtt.detail and mqtt.duration_s < 4
    assert r.check("http").status == "pass", details(r)


def _invoke(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["COLUMNS"] = "200"
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_invoke_smoke_network_writes_json_and_junit(make_peer, mosquitto, http_server, tmp_path):
    """The command line: --mqtt HOST:PORT wins over the config's broker; reports written whole."""
    [peer] = provisioned(make_peer, ["n0"], mosquitto.host, closed_port())   # the config's port is wrong
    out, xml = tmp_path / "reports" / "smoke.json", tmp_path / "reports" / "smoke.xml"
    proc = _invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--network",
                   "--mqtt", f"{mosquitto.host}:{mosquitto.port}", "--http-url", f"{http_server.url}/ok",
                   "--json-out", str(out), "--junit", str(xml))
    assert "Traceback" not in proc.stderr, proc.stderr
    data = json.loads(out.read_text())
    [device] = data["devices"]
    checks = {c["name"]: c for c in device["checks"]}
    assert checks["wifi"]["status"] == "skip" and "no radio" in checks["wifi"]["detail"]
    assert checks["mqtt"]["status"] == "pass", checks["mqtt"]
    assert f"{mosquitto.host}:{mosquitto.port}" in checks["mqtt"]["detail"]
    assert checks["http"]["status"] == "pass", checks["http"]
    if RUNTIME == "frozen":
        assert proc.returncode == 0 and data["ok"] is True, proc.stdout + proc.stderr
    else:
        assert proc.returncode == 1
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite.get("name") == peer.port and suite.find("testcase[@name='wifi']/skipped") is not None
    assert sorted(p.name for p in out.parent.iterdir()) == ["smoke.json", "smoke.xml"]   # no temporary files left

    mosquitto.process.kill()
    mosquitto.process.wait()
    proc = _invoke("smoke", "--ports", peer.port, "--board", "UNIX", "--network",
                   "--mqtt", f"{mosquitto.host}:{mosquitto.port}", "--http-url", f"{http_server.url}/ok",
                   "--json-out", str(out))
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.read_text())["devices"][0]["checks"]}
    assert checks["mqtt"]["status"] == "fail" and "ECONNREFUSED" in checks["mqtt"]["detail"]
    assert "mqtt: broker" in " ".join(proc.stdout.split())     # the failed check is named on the console
