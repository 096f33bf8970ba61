"""invoke serve --mqtt: the live room beside a release judges 'outdated' against the release it
serves (its index.json), not against dist/; its hints name the release. Real mosquitto, real
`invoke serve`, statuses published the way boards publish them (retained)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "host" / "release"))

from placeholders import ESP_BOARDS, clean_tree, make_fake_web_tools, never_stale, write_placeholder_build  # noqa: E402
from support import free_port, wait_for_port  # noqa: E402
from workshop import release as rel  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def test_serve_mqtt_judges_outdated_against_the_release_it_serves(mosquitto, tmp_path):
    import paho.mqtt.publish as publish

    dist = tmp_path / "dist"
    for board in ESP_BOARDS:
        write_placeholder_build(dist, board)
    made = rel.make_release("v0.3.0", dist=dist, out=tmp_path / "release" / "v0.3.0", boards=ESP_BOARDS,
                            web_tools=make_fake_web_tools(tmp_path / "ewt"), stale=never_stale, tree_dirty=clean_tree)
    inputs = made.board("ESP8266_GENERIC").inputs_sha256
    assert inputs
    statuses = {"lab-01": inputs, "lab-02": "f" * 64}      # the released image; another one
    for host, image in statuses.items():
        publish.single(f"workshop/{host}/status", json.dumps({"state": "online", "hostname": host, "board": "ESP8266_GENERIC",
                                                               "inputs": image, "interval_s": 30}),
                       retain=True, hostname=mosquitto.host, port=mosquitto.port)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--directory", str(made.directory), "--host", "127.0.0.1",
                             "--port", str(port), "--mqtt", f"{mosquitto.host}:{mosquitto.port}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    try:
        wait_for_port(port)
        deadline = time.monotonic() + 10
        while True:
            doc = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/room.json", timeout=5).read())
            if len(doc["boards"]) == 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        outdated = {b["hostname"]: b["outdated"] for b in doc["boards"]}
        assert outdated == {"lab-01": False, "lab-02": True}, doc["boards"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert f"invoke download --version v0.3.0 --from http://127.0.0.1:{port}/" in out, out
    assert "--version V " not in out


def test_serve_answers_and_logs_a_request_whose_path_looks_like_markup(tmp_path):
    """serve printed each request line as rich markup: a request for /x[/]y raised MarkupError in
    the handler before its status line went out, so that client got no answer at all (and
    /[red]... restyled the log). Request lines and the folder are printed as text."""
    import urllib.error

    dist = tmp_path / "dist"
    for board in ESP_BOARDS:
        write_placeholder_build(dist, board)
    made = rel.make_release("v0.3.1", dist=dist, out=tmp_path / "rel[b]ease" / "v0.3.1", boards=ESP_BOARDS,
                            web_tools=make_fake_web_tools(tmp_path / "ewt"), stale=never_stale, tree_dirty=clean_tree)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--directory", str(made.directory), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, COLUMNS="200"))
    try:
        wait_for_port(port)
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/x[/]y", timeout=5)
            status = 200
        except urllib.error.HTTPError as e:
            status = e.code
        index = urllib.request.urlopen(f"http://127.0.0.1:{port}/index.json", timeout=5)
        assert index.status == 200
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:   # (urllib refuses to send it)
            raw.sendall(b"GET /\x1b[2Jcleared HTTP/1.0\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.0 404")
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    assert status == 404, (out, err)
    assert '"GET /x[/]y HTTP/1.1" 404' in out, out
    assert f"Serving {made.directory}" in out, out
    assert "MarkupError" not in err, err
    assert "\x1b" not in out and '"GET /\\x1b[2Jcleared HTTP/1.0" 404' in out, repr(out)   # shown, not sent
