"""The live /room page in headless Chromium: a board's card appears when it announces, turns
stale when it stops answering and offline when it dies, without a reload; nothing from a CDN."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from chromium import Browser
from support import free_port, require_tool, wait_for_port

REPO = Path(__file__).resolve().parents[3]


def card_state(browser: Browser, host: str) -> str | None:
    return browser.evaluate(f"(document.querySelector('.board[data-host=\"{host}\"]') || {{}}).dataset?.state || null")


def test_room_page_rows_appear_and_turn_stale_then_offline_without_reload(room, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "roster", "--mqtt", f"{room.broker.host}:{room.broker.port}",
                             "--no-mdns", "--serve", f"127.0.0.1:{port}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        with Browser(require_tool("chromium", "chromium"), tmp_path / "profile", tmp_path / "chromium.log") as b:
            b.goto(f"http://127.0.0.1:{port}/room", "document.getElementById('summary').textContent.includes('boards')")
            assert b.evaluate("document.querySelectorAll('.board').length") == 0
            board = room("pg-01", "pypi", interval_s=1,
                         identity={"board": "UNIX", "inputs": "0" * 64, "project": "0.0.1"})
            b.wait_for("document.querySelector('.board[data-host=\"pg-01\"]') !== null", 10, "card for pg-01")
            assert card_state(b, "pg-01") == "online"
            assert b.evaluate("document.querySelector('.board[data-host=\"pg-01\"]').dataset.outdated") == "true"
            assert "OUTDATED" in b.evaluate("document.querySelector('.board[data-host=\"pg-01\"]').textContent")
            board.pause()
            b.wait_for("document.querySelector('.board[data-host=\"pg-01\"]').dataset.state === 'stale'", 8, "stale")
            board.resume()
            b.wait_for("document.querySelector('.board[data-host=\"pg-01\"]').dataset.state === 'online'", 8, "online")
            board.kill()
            b.wait_for("document.querySelector('.board[data-host=\"pg-01\"]').dataset.state === 'offline'", 8, "offline")
            # Same document all along (no reload), everything from this server, no errors.
            assert b.evaluate("performance.getEntriesByType('navigation').length") == 1
            assert b.log.responses and all(u.startswith(f"http://127.0.0.1:{port}/") for u in b.log.responses), b.log.responses
            assert not b.log.errors
            size = b.evaluate("parseFloat(getComputedStyle(document.querySelector('.host')).fontSize)")
            assert size >= 24  # readable from the back of the room on a projector
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_kit_serve_serves_the_room_beside_a_release(room, tmp_path):
    rel = tmp_path / "release"
    rel.mkdir()
    (rel / "index.json").write_text("{}")
    room("pg-02", "pypi")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--directory", str(rel), "--host", "127.0.0.1",
                             "--port", str(port), "--mqtt", f"{room.broker.host}:{room.broker.port}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 10
        while True:
            doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/room.json", timeout=5).read())
            if any(x["hostname"] == "pg-02" for x in doc["boards"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert [x["hostname"] for x in doc["boards"]] == ["pg-02"]
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/room", timeout=5).read().decode()
        assert "<title>Workshop room</title>" in page and "http" not in page.split("<script>")[1]
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/index.json", timeout=5).read() == b"{}"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_a_roster_that_stops_answering_is_said_on_the_page_and_the_cards_are_greyed(tmp_path):
    """A roster that hangs (or a network that drops the projector's connection without a reset)
    left /room.json's fetch waiting for ever: the page went on showing every board "online", "last
    seen 1 s ago", with no word that nothing was being watched any more."""
    import threading

    from workshop import roster, serve

    hang = threading.Event()

    class HangingRoster(roster.Roster):
        def report(self, now=None):
            while hang.is_set():
                time.sleep(0.05)
            return super().report(now)

    room = HangingRoster(None)
    room.ingest_mqtt("workshop/lab-01/status", b'{"state": "online", "hostname": "lab-01", "ip": "10.0.0.5"}')
    port = free_port()
    server = serve.make_room_server(room, "127.0.0.1", port)
    serve.start_in_thread(server)
    live = "document.body.dataset.live"
    error = "document.getElementById('error').textContent"
    try:
        with Browser(require_tool("chromium", "chromium"), tmp_path / "profile", tmp_path / "chromium.log") as b:
            b.goto(f"http://127.0.0.1:{port}/room", "document.querySelector('.board[data-host=\"lab-01\"]') !== null")
            assert card_state(b, "lab-01") == "online" and b.evaluate(error) == ""
            b.pump(1.5)                                    # a few polls answered
            hang.set()                                     # the roster stops answering
            t = time.monotonic()
            b.wait_for(f"{error}.startsWith('roster unreachable')", 8, "the page saying so")
            assert time.monotonic() - t < 6 and b.evaluate(live) == "false"
            b.wait_for(f"{error}.includes('no answer within 3 s')", 6, "why")
            text = b.evaluate(error)
            assert "the cards show the room as it was" in text and "(retrying)" in text, text
            assert b.evaluate("getComputedStyle(document.getElementById('grid')).opacity") == "0.45"
            assert card_state(b, "lab-01") == "online"     # still there, greyed: the room as it was
            hang.clear()                                   # answering again: live, without a reload
            b.wait_for(f"{live} === 'true' && {error} === ''", 8, "live again")
            assert b.evaluate("getComputedStyle(document.getElementById('grid')).opacity") == "1"
            assert b.evaluate("performance.getEntriesByType('navigation').length") == 1
    finally:
        hang.clear()
        server.shutdown()
        server.server_close()
