"""invoke serve: a release folder over HTTP, as attendees' browsers and `invoke download` see it."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from workshop import download as dl
from workshop import release as rel
from workshop import serve


def test_serves_a_release_for_browsers_and_downloads(release_kwargs, tmp_path):
    made = rel.make_release("v0.1.0", **release_kwargs)
    requests = []
    server = serve.make_server(made.directory, "127.0.0.1", 0, on_request=lambda who, line: requests.append(line))
    serve.start_in_thread(server)
    try:
        base = serve.urls(server)[0]
        assert base == f"http://127.0.0.1:{server.server_address[1]}/"
        with urllib.request.urlopen(base + "esp-web-tools/install-button.js", timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/javascript"), "module scripts need a JS MIME type"
        with urllib.request.urlopen(base + "index.json", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json"
        with urllib.request.urlopen(base, timeout=10) as r:
            assert b"esp-web-tools/install-button.js" in r.read()
        # The organizer's laptop as a download mirror.
        result = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=base, cache=tmp_path / "cache")
        assert result.board("ESP32_GENERIC").paths
        assert any("SHA256SUMS" in line for line in requests), "requests are reported through the callback"
    finally:
        server.shutdown()
        server.server_close()


def test_refuses_a_folder_that_is_not_a_release(tmp_path):
    with pytest.raises(serve.ServeError, match="no index.json; make the release first"):
        serve.make_server(tmp_path, "127.0.0.1", 0)
    # A mistyped --directory is named as missing, not sent off to make a release.
    with pytest.raises(serve.ServeError, match=r"nothere: no such folder: --directory names a release folder"):
        serve.make_server(tmp_path / "nothere", "127.0.0.1", 0)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(serve.ServeError, match=r"a-file: a file, not a folder: --directory"):
        serve.served_release(tmp_path / "a-file")


def test_port_in_use_is_a_clear_error(release_kwargs):
    made = rel.make_release("v0.1.0", **release_kwargs)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(serve.ServeError, match=r"cannot listen on 127.0.0.1:\d+: .*another program listens on port \d+: stop it, or try another --port"):
            serve.make_server(made.directory, "127.0.0.1", busy.getsockname()[1])


def _ip_addresses() -> set[str]:
    """The machine's IPv4 addresses as iproute2 reports them (`ip -j -4 addr`), loopback left out."""
    import json
    import shutil
    import subprocess

    if not shutil.which("ip"):
        pytest.fail("ip (iproute2) not found: apt-get install iproute2")
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True, timeout=30).stdout
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if a.get("family") == "inet" and not a["local"].startswith("127.")}


def test_serving_on_every_interface_lists_the_lan_addresses_that_answer(release_kwargs):
    """--host 0.0.0.0: the addresses to give attendees are the interfaces' (the host name resolves
    to loopback on Debian), and each of them serves the release."""
    made = rel.make_release("v0.1.0", **release_kwargs)
    expected = _ip_addresses()
    assert set(serve.lan_addresses()) == expected
    server = serve.make_server(made.directory, "0.0.0.0", 0)
    serve.start_in_thread(server)
    try:
        port = server.server_address[1]
        listed = serve.urls(server)
        assert listed == [f"http://localhost:{port}/", *(f"http://{a}:{port}/" for a in serve.lan_addresses())]
        if not expected:
            pytest.skip("this machine has no IPv4 address besides loopback")
        for url in listed[1:]:
            with urllib.request.urlopen(url + "index.json", timeout=10) as r:
                assert r.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_text_files_without_an_extension_are_served_as_text(release_kwargs, tmp_path):
    """SHA256SUMS (and ESP Web Tools' LICENSE) open in the browser instead of downloading as octet-stream."""
    (release_kwargs["web_tools"] / "LICENSE").write_text("MIT\n")
    made = rel.make_release("v0.1.0", **release_kwargs)
    server = serve.make_server(made.directory, "127.0.0.1", 0)
    serve.start_in_thread(server)
    try:
        base = serve.urls(server)[0]
        for name in ("SHA256SUMS", "esp-web-tools/LICENSE"):
            with urllib.request.urlopen(base + name, timeout=10) as r:
                assert r.headers["Content-Type"] == "text/plain; charset=utf-8", name
        with urllib.request.urlopen(base + "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/octet-stream"
    finally:
        server.shutdown()
        server.server_close()


def test_served_release_names_the_version_and_the_images_inputs(release_kwargs, tmp_path):
    made = rel.make_release("v0.1.0", **release_kwargs)
    served = serve.served_release(made.directory)
    assert served.version == "v0.1.0" and served.problem is None
    assert dict(served.expected.inputs) == {b.board: b.inputs_sha256 for b in made.boards}
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "index.json").write_text("{}")
    served = serve.served_release(odd)      # serves all the same; the room cannot tell outdated boards
    assert served.version is None and "not a release index" in served.problem and dict(served.expected.inputs) == {}
    with pytest.raises(serve.ServeError, match="no index.json"):
        serve.served_release(tmp_path)
