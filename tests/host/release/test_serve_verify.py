"""invoke serve checks the folder it serves against its release's own records (SHA256SUMS, the
flasher page's files) before it serves a byte: attendees' browsers flash whatever they fetch."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support import free_port, wait_for_port
from workshop import download as dl
from workshop import release as rel
from workshop import serve
from workshop.release import SUMS, parse_sums

REPO = Path(__file__).resolve().parents[3]
IMAGE = "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"
SCRIPT = "esp-web-tools/install-button.js"


def sums_of(folder: Path) -> dict[str, str]:
    return parse_sums((folder / SUMS).read_text())


def flip_a_byte(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def run_serve(folder: Path, port: int, timeout: float = 30) -> subprocess.CompletedProcess:
    """`invoke serve` on a folder it must refuse: it ends by itself (serving would time out here)."""
    return subprocess.run([sys.executable, "-m", "invoke", "serve", "--directory", str(folder), "--host", "127.0.0.1",
                           "--port", str(port)], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, COLUMNS="200"))


class Serving:
    """The real `invoke serve --directory FOLDER` on 127.0.0.1 while inside `with`; out and err
    hold what it printed once it has been stopped (Ctrl-C)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.out, self.err = folder, free_port(), "", ""

    def __enter__(self) -> Serving:
        self.proc = subprocess.Popen([sys.executable, "-m", "invoke", "serve", "--directory", str(self.folder),
                                      "--host", "127.0.0.1", "--port", str(self.port)], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env=dict(os.environ, COLUMNS="200"))
        wait_for_port(self.port, timeout=20)
        # Answered only once serve_forever runs, after the addresses and hints are printed: a
        # Ctrl-C as soon as the port listened could land before them (seen in CI).
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/index.json", timeout=10).read()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        self.out, self.err = self.proc.communicate(timeout=10)


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_a_changed_byte_and_a_deleted_page_script_are_refused_naming_both(release_kwargs):
    """The reviewer's case: one byte of an image changed, esp-web-tools/install-button.js deleted."""
    made = rel.make_release("v0.1.0", **release_kwargs)
    listed = sums_of(made.directory)[IMAGE]
    flip_a_byte(made.directory / IMAGE)
    actual = hashlib.sha256((made.directory / IMAGE).read_bytes()).hexdigest()
    (made.directory / SCRIPT).unlink()
    port = free_port()
    proc = run_serve(made.directory, port)
    err = one_line(proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Serving" not in proc.stdout and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"refusing to serve {made.directory} (release v0.1.0)" in err, err
    assert f"{IMAGE}: its sha256 here is {actual}, {SUMS} says {listed}" in err, err
    assert f"{SCRIPT}: missing" in err and "the Install button" in err, err
    assert "invoke release --version v0.1.0 --force" in err, err
    with pytest.raises(OSError):        # nothing was left listening
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)


def test_a_deleted_page_script_alone_is_refused_naming_it(release_kwargs):
    made = rel.make_release("v0.1.0", **release_kwargs)
    (made.directory / SCRIPT).unlink()
    proc = run_serve(made.directory, free_port())
    err = one_line(proc.stderr)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{SCRIPT}: missing" in err and IMAGE not in err, err
    with pytest.raises(serve.FolderRefused) as refused:
        serve.verified_folder(made.directory)
    assert refused.value.check.missing == (SCRIPT,) and refused.value.check.mismatched == ()


def test_a_deleted_image_of_a_release_is_refused_naming_it(release_kwargs):
    made = rel.make_release("v0.1.0", **release_kwargs)
    (made.directory / IMAGE).unlink()
    with pytest.raises(serve.FolderRefused, match=rf"{IMAGE}: missing \(listed in {SUMS}\)") as refused:
        serve.verified_folder(made.directory)
    check = refused.value.check
    assert check.kind == "release" and check.missing == (IMAGE,) and not check.ok
    proc = run_serve(made.directory, free_port())
    assert proc.returncode == 1 and f"{IMAGE}: missing" in one_line(proc.stderr), proc.stdout + proc.stderr


def test_a_changed_byte_is_refused_by_the_check_itself(release_kwargs):
    made = rel.make_release("v0.1.0", **release_kwargs)
    listed = sums_of(made.directory)[IMAGE]
    flip_a_byte(made.directory / IMAGE)
    check = serve.check_folder(made.directory)
    assert [(m.file, m.expected) for m in check.mismatched] == [(IMAGE, listed)]
    assert check.mismatched[0].actual == hashlib.sha256((made.directory / IMAGE).read_bytes()).hexdigest()
    assert check.missing == () and len(check.problems) == 1 and IMAGE in check.problems[0]


def test_an_intact_release_is_served_and_an_image_is_the_released_bytes(release_kwargs):
    made = rel.make_release("v0.1.0", **release_kwargs)
    check = serve.verified_folder(made.directory)
    assert check.ok and check.kind == "release" and check.warnings == () and check.version == "v0.1.0"
    assert set(check.verified) == set(sums_of(made.directory))
    with Serving(made.directory) as served:
        with urllib.request.urlopen(f"http://127.0.0.1:{served.port}/{IMAGE}", timeout=10) as r:
            assert r.status == 200
            body = r.read()
        assert hashlib.sha256(body).hexdigest() == sums_of(made.directory)[IMAGE]
    out, err = served.out, served.err
    assert f"Serving {made.directory} (release v0.1.0" in out, out
    assert "warning" not in err and "error" not in err, err


def test_a_download_cache_is_served_with_warnings_naming_what_it_lacks(release_kwargs, tmp_path):
    """A cache holds no flasher page and only the boards fetched: served (a mirror for `download
    --from` for those boards), with warnings naming the page and every image it does not have."""
    made = rel.make_release("v0.1.0", **release_kwargs)
    cache = tmp_path / "cache"
    got = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=made.directory, cache=cache)
    check = serve.verified_folder(got.directory)
    assert check.ok and check.kind == "download-cache"
    said = "\n".join(check.warnings)
    assert "no flasher page" in said and "download cache" in said and "invoke download --from" in said, said
    other = "ESP32_GENERIC_S3-20261121-v1.28.0-v0.1.0.bin"
    assert other in said and "ESP32_GENERIC_S3" in said and IMAGE not in said, said
    assert "invoke download --version v0.1.0" in said, said
    # It does serve that board to a second laptop.
    server = serve.make_server(got.directory, "127.0.0.1", 0)
    serve.start_in_thread(server)
    try:
        again = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=serve.urls(server)[0], cache=tmp_path / "c2")
        assert again.board("ESP32_GENERIC").paths
    finally:
        server.shutdown()
        server.server_close()
    # The task says so, and still serves.
    with Serving(got.directory) as served:
        pass
    out, err = served.out, served.err
    err = one_line(err)
    assert "warning: no flasher page" in err and other in err, err
    assert f"Serving {got.directory}" in out, out


def test_a_corrupt_download_cache_is_refused_saying_download_again(release_kwargs, tmp_path):
    made = rel.make_release("v0.1.0", **release_kwargs)
    got = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=made.directory, cache=tmp_path / "cache")
    flip_a_byte(got.directory / IMAGE)
    with pytest.raises(serve.FolderRefused, match=IMAGE) as refused:
        serve.verified_folder(got.directory)
    assert "invoke download --version v0.1.0" in str(refused.value)
    assert "invoke release" not in str(refused.value)


def test_a_folder_that_is_no_release_is_served_as_it_is_with_a_warning(tmp_path):
    """(The room beside a folder: `serve --mqtt --directory` on an index.json that is no release.)"""
    (tmp_path / "index.json").write_text("{}")
    check = serve.verified_folder(tmp_path)
    assert check.ok and check.kind == "not-a-release" and check.version is None
    assert any("nothing verified" in w for w in check.warnings), check.warnings
    # A real release index without its SHA256SUMS is refused: every release and cache has one.
    made_index = tmp_path / "r"
    made_index.mkdir()
    (made_index / "index.json").write_text('{"format": 1, "version": "v0.1.0", "boards": []}')
    with pytest.raises(serve.FolderRefused, match=f"no {SUMS}"):
        serve.verified_folder(made_index)


def test_serving_on_loopback_says_no_attendee_reaches_it(release_kwargs):
    """Bound to 127.0.0.1, the hint told attendees to run `invoke download --from
    http://127.0.0.1:PORT/`, which on their laptops is their own machine."""
    made = rel.make_release("v0.1.0", **release_kwargs)
    with Serving(made.directory) as served:
        pass
    out = one_line(served.out)
    assert f"http://127.0.0.1:{served.port}/" in out, out
    assert "Listening on 127.0.0.1 only: no other machine reaches it" in out and "--host 0.0.0.0" in out, out
    # The download line is offered for this machine only, never as what attendees run.
    assert f"; on this machine: invoke download --version v0.1.0 --from http://127.0.0.1:{served.port}/" in out, out
    assert "attendees can download images, or run" not in out, out


@pytest.mark.parametrize("host, hint", [
    ("10.255.255.77", "--host 10.255.255.77 is not an address of this machine (its addresses: 127.0.0.1"),
    ("no-such-host.invalid", "--host no-such-host.invalid is not an address of this machine (its addresses: 127.0.0.1"),
])
def test_a_host_that_is_not_this_machines_is_named_not_the_port(release_kwargs, host, hint):
    made = rel.make_release("v0.1.0", **release_kwargs)
    proc = subprocess.run([sys.executable, "-m", "invoke", "serve", "--directory", str(made.directory), "--host", host,
                           "--port", str(free_port())], cwd=REPO, capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, COLUMNS="200"))
    err = one_line(proc.stderr)
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"cannot listen on {host}:" in err and hint in err and "try another --port" not in err, err
