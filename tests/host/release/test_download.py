"""invoke download: a release from a real HTTP server on 127.0.0.1 (or a folder) into a verified cache."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from placeholders import ESP_BOARDS, write_host_build
from workshop.config import PROJECT_ROOT
from workshop import download as dl
from workshop import release as rel


@pytest.fixture
def made(release_kwargs) -> rel.Release:
    return rel.make_release("v0.1.0", **release_kwargs)


def leftovers(cache: Path) -> list[str]:
    """Temporary or partial files in the cache: there must never be any after a run."""
    return sorted(p.name for p in cache.rglob("*") if p.name.startswith(".") or p.suffix == ".part")


def test_happy_path_then_second_run_from_cache(made, http_server, tmp_path):
    server = http_server(made.directory)
    cache = tmp_path / "cache"
    events = []
    result = dl.download_release("v0.1.0", source=server.url, cache=cache, on_event=events.append)

    assert result.directory == cache / "releases" / "v0.1.0"
    assert [b.board.board for b in result.boards] == sorted(ESP_BOARDS)
    for board in result.boards:
        image = f"{board.board.board}-20261121-v1.28.0-v0.1.0.bin"
        assert list(board.paths) == [image], "only the images by default, not .elf/.map"
        assert board.paths[image].read_bytes() == (made.directory / image).read_bytes()
        assert (result.directory / f"{board.board.board}.manifest.json").is_file()
    esp32 = result.board("ESP32_GENERIC")
    assert esp32.flash_regions == ((0x1000, result.directory / "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"),)
    assert leftovers(cache) == []
    # Progress: a start with the total, progress that reaches it, done.
    name = "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    mine = [e for e in events if e.file == name]
    size = (made.directory / name).stat().st_size
    assert mine[0].kind == "start" and mine[0].total == size
    assert mine[-1] == dl.DownloadEvent("done", name, size, size)
    assert any(e.kind == "progress" and 0 < e.done < size for e in mine), "more than one chunk for a 96 KiB file"
    assert set(result.fetched) == {"index.json", *(f"{b}.manifest.json" for b in ESP_BOARDS),
                                   *(f"{b}-20261121-v1.28.0-v0.1.0.bin" for b in ESP_BOARDS)}

    # Second run: every verified file comes from the cache; only SHA256SUMS is asked for.
    server.behaviour.requests.clear()
    again = dl.download_release("v0.1.0", source=server.url, cache=cache)
    assert server.behaviour.requests == ["SHA256SUMS"]
    assert again.fetched == () and set(again.cached) == set(result.fetched)

    # The source gone: a complete cache still answers.
    offline = dl.download_release("v0.1.0", source=f"http://127.0.0.1:{closed_port()}/", cache=cache,
                                  boards=["ESP8266_GENERIC"])
    assert offline.board("ESP8266_GENERIC").paths

    # A captive portal (a real server answering 200 with its login page for every path) is as
    # good as unreachable: the cache answers (it was "not a sha256sum line" and nothing).
    portal = tmp_path / "portal"
    portal.mkdir()
    (portal / "SHA256SUMS").write_text("<!DOCTYPE html><html><body>Log in to the venue Wi-Fi</body></html>\n")
    events = []
    behind = dl.download_release("v0.1.0", source=http_server(portal).url, cache=cache, boards=["ESP8266_GENERIC"],
                                 on_event=events.append)
    assert behind.board("ESP8266_GENERIC").paths and dl.DownloadEvent("offline", "SHA256SUMS") in events
    # ...and without a cache it says what it probably is
    with pytest.raises(dl.DownloadError, match=r"not a sha256sum line.*is no release's checksum list \(a captive "
                                               r"portal, or a server's error page\?\): check the network, or try another --from"):
        dl.download_release("v0.1.0", source=http_server(portal).url, cache=tmp_path / "empty-cache")


def test_include_debug_and_one_board(made, http_server, tmp_path):
    server = http_server(made.directory)
    result = dl.download_release("0.1.0", ["ESP32_GENERIC_S3"], source=server.url, cache=tmp_path / "c",
                                 include_debug=True)
    assert [b.board.board for b in result.boards] == ["ESP32_GENERIC_S3"]
    base = "ESP32_GENERIC_S3-20261121-v1.28.0-v0.1.0"
    assert sorted(result.boards[0].paths) == [f"{base}.bin", f"{base}.elf", f"{base}.map"]
    assert not any("ESP32_GENERIC-" in r for r in server.behaviour.requests)


def test_tampered_file_is_refused_and_deleted(made, http_server, tmp_path):
    server = http_server(made.directory)
    name = "ESP32_GENERIC_C3-20261121-v1.28.0-v0.1.0.bin"
    server.behaviour.tamper.add(name)
    cache = tmp_path / "cache"
    with pytest.raises(dl.DownloadError, match=f"{name}: SHA-256 MISMATCH.*deleted"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC_C3"], source=server.url, cache=cache)
    assert not (cache / "releases" / "v0.1.0" / name).exists()
    assert leftovers(cache) == []
    # Fixed source: the next run fetches and verifies it.
    server.behaviour.tamper.clear()
    result = dl.download_release("v0.1.0", ["ESP32_GENERIC_C3"], source=server.url, cache=cache)
    assert result.board("ESP32_GENERIC_C3").paths[name].read_bytes() == (made.directory / name).read_bytes()


def test_cached_file_corrupted_on_disk_is_fetched_again(made, http_server, tmp_path):
    server = http_server(made.directory)
    cache = tmp_path / "cache"
    result = dl.download_release("v0.1.0", ["ESP8266_GENERIC"], source=server.url, cache=cache)
    path = result.board("ESP8266_GENERIC").paths["ESP8266_GENERIC-20261121-v1.28.0-v0.1.0.bin"]
    path.write_bytes(b"bit rot")
    again = dl.download_release("v0.1.0", ["ESP8266_GENERIC"], source=server.url, cache=cache)
    assert again.fetched == ("ESP8266_GENERIC-20261121-v1.28.0-v0.1.0.bin",)
    assert path.read_bytes() == (made.directory / path.name).read_bytes()


def test_missing_file_404(made, http_server, tmp_path):
    server = http_server(made.directory)
    name = "ESP32_GENERIC_S2-20261121-v1.28.0-v0.1.0.bin"
    server.behaviour.missing.add(name)
    cache = tmp_path / "cache"
    with pytest.raises(dl.DownloadError, match=f"{name}: 404 Not Found.*release is incomplete"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC_S2"], source=server.url, cache=cache)
    assert not (cache / "releases" / "v0.1.0" / name).exists() and leftovers(cache) == []


def test_interrupted_transfer_leaves_nothing_half_written(made, http_server, tmp_path):
    server = http_server(made.directory)
    name = "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    server.behaviour.truncate.add(name)
    cache = tmp_path / "cache"
    size = (made.directory / name).stat().st_size
    with pytest.raises(dl.DownloadError, match=rf"{name}: transfer interrupted \({size // 2} of {size} bytes\)"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache)
    assert not (cache / "releases" / "v0.1.0" / name).exists() and leftovers(cache) == []


def test_unknown_version(made, http_server, tmp_path):
    server = http_server(made.directory.parent)  # serves release/ with a {version} folder per release
    with pytest.raises(dl.DownloadError, match="release v9.9.9 not found: .*v9.9.9/SHA256SUMS does not exist"):
        dl.download_release("v9.9.9", source=server.url + "{version}/", cache=tmp_path / "c")
    ok = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url + "{version}/", cache=tmp_path / "c")
    assert ok.board("ESP32_GENERIC").paths


def test_server_with_another_version(made, http_server, tmp_path):
    """Nothing of the other release lands in this version's cache folder, where smoke --release,
    flash --release and roster --release would later read it as this version's."""
    from workshop import smoke

    server = http_server(made.directory)
    cache = tmp_path / "c"
    with pytest.raises(dl.DownloadError, match="serves release v0.1.0, not v0.2.0 .nothing was written"):
        dl.download_release("v0.2.0", source=server.url, cache=cache)
    folder = dl.release_cache("v0.2.0", cache)
    assert not folder.exists() or list(folder.iterdir()) == []
    with pytest.raises(smoke.SmokeError, match="release v0.2.0: no index.json"):
        smoke.release_index("v0.2.0", root=tmp_path / "project", cache=cache)
    assert server.behaviour.requests == ["SHA256SUMS", "index.json"], "no image fetched either"


def test_a_board_named_twice_is_fetched_and_listed_once(made, http_server, tmp_path):
    server = http_server(made.directory)
    result = dl.download_release("v0.1.0", ["ESP32_GENERIC", "ESP32_GENERIC"], source=server.url, cache=tmp_path / "c")
    assert [b.board.board for b in result.boards] == ["ESP32_GENERIC"]
    assert result.fetched.count("ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin") == 1


def test_unknown_board(made, http_server, tmp_path):
    server = http_server(made.directory)
    with pytest.raises(dl.DownloadError, match="release v0.1.0 has no board 'PICO' \\(it has: ESP32_GENERIC, "):
        dl.download_release("v0.1.0", ["PICO"], source=server.url, cache=tmp_path / "c")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_network_down(tmp_path):
    with pytest.raises(dl.DownloadError, match="cannot reach 127.0.0.1:\\d+: .*refused.*--from"):
        dl.download_release("v0.1.0", source=f"http://127.0.0.1:{closed_port()}/", cache=tmp_path / "c", timeout=5)


def test_local_folder_source(made, tmp_path):
    result = dl.download_release("v0.1.0", ["ESP32_GENERIC_S3"], source=made.directory, cache=tmp_path / "c")
    assert result.source == str(made.directory)
    (p,) = result.board("ESP32_GENERIC_S3").paths.values()
    assert p.read_bytes() == (made.directory / p.name).read_bytes()
    with pytest.raises(dl.DownloadError, match="no such folder"):
        dl.download_release("v0.1.0", source=tmp_path / "nowhere", cache=tmp_path / "c")


def test_default_source_is_the_projects_github_releases(monkeypatch):
    monkeypatch.delenv(dl.ENV_REPOSITORY, raising=False)
    assert dl.default_source() == f"https://github.com/{dl.DEFAULT_REPOSITORY}/releases/download/{{version}}/"
    monkeypatch.setenv(dl.ENV_REPOSITORY, "someone/fork")
    assert dl.default_source() == "https://github.com/someone/fork/releases/download/{version}/"


def test_release_images_become_flash_images(made, tmp_path):
    from workshop.flash import FlashImage

    images = dl.release_images("v0.1.0", ["ESP32_GENERIC", "ESP8266_GENERIC"], source=made.directory,
                               cache=tmp_path / "c")
    assert all(isinstance(i, FlashImage) for i in images)
    by_board = {i.board: i for i in images}
    esp32 = by_board["ESP32_GENERIC"]
    assert esp32.chip == "esp32" and esp32.chip_name == "ESP32" and esp32.flash_size == "4MB"
    assert [(p.name, o) for p, o in esp32.regions] == [("ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin", 0x1000)]
    assert esp32.load()[0][1] == (made.directory / "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin").read_bytes()
    assert by_board["ESP8266_GENERIC"].regions[0][1] == 0
    assert "release v0.1.0" in esp32.source


def test_truncated_sha256sums_is_a_clear_error_not_a_traceback(made, http_server, tmp_path):
    """A whole-body read of a cut-short response raises http.client.IncompleteRead: it must come out
    as a DownloadError naming the file (and with a complete cache, the cache is used)."""
    server = http_server(made.directory)
    cache = tmp_path / "cache"
    server.behaviour.truncate.add("SHA256SUMS")
    with pytest.raises(dl.DownloadError, match=r"SHA256SUMS: transfer (interrupted|failed)"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache)
    assert leftovers(cache) == []
    server.behaviour.truncate.clear()
    dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache)
    server.behaviour.truncate.add("SHA256SUMS")
    events = []
    again = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache, on_event=events.append)
    assert again.fetched == () and dl.DownloadEvent("offline", "SHA256SUMS") in events


INVOKE = str(Path(sys.executable).parent / "invoke")


def run_invoke(*args: str, cache: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, WORKSHOP_CACHE=str(cache), COLUMNS="200")
    return subprocess.run([INVOKE, "-r", str(PROJECT_ROOT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_a_host_boards_program_is_its_image_released_downloaded_and_runnable(release_kwargs, dist, http_server, tmp_path):
    """UNIX: its `micropython` is the board's image (listed, on the page's main list, downloaded by
    default) and comes out of the download executable; it has no manifest (nothing to flash)."""
    write_host_build(dist)
    release_kwargs["boards"] = ["ESP32_GENERIC", "UNIX"]
    made = rel.make_release("v0.1.0", **release_kwargs)
    unix = made.board("UNIX")
    name = "UNIX-20261121-v1.28.0-v0.1.0"
    assert [(f.name, f.role, f.flash, f.offset) for f in unix.images] == [(name, "image", False, None)]
    assert unix.manifest is None and not (made.directory / "UNIX.manifest.json").exists()
    assert os.access(made.directory / name, os.X_OK)

    server = http_server(made.directory)
    cache = tmp_path / "cache"
    result = dl.download_release("v0.1.0", ["UNIX"], source=server.url, cache=cache)
    (program,) = result.board("UNIX").paths.values()
    assert program.name == name and os.access(program, os.X_OK), oct(program.stat().st_mode)
    proc = subprocess.run([str(program), "-c", "import sys; print(sys.implementation.name)"], capture_output=True,
                          text=True, timeout=30)
    assert proc.stdout.strip() == "micropython", proc.stderr
    assert dl.release_images("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache)  # the host board is not flashed

    # The command line: the row is listed and the file fetched (not "nothing", exit 0).
    program.unlink()
    proc = run_invoke("download", "--version", "v0.1.0", "--board", "UNIX", "--from", server.url, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert name in proc.stdout and "1 fetched" in proc.stdout, proc.stdout
    assert os.access(program, os.X_OK)
    # --json: the same, for a script (each file's cached path and sha256)
    proc = run_invoke("download", "--version", "v0.1.0", "--board", "UNIX", "--from", server.url, "--json", cache=cache)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    (board,) = got["boards"]
    assert (got["version"], name in got["cached"], board["board"], board["paths"]) == ("v0.1.0", True, "UNIX",
                                                                                {name: str(program)})
    assert board["files"][0]["sha256"] == hashlib.sha256(program.read_bytes()).hexdigest()



def test_download_json_while_fetching_is_json_and_piped_progress_is_plain_lines(made, http_server, tmp_path):
    """`download --json | jq` failed while files were fetched: the progress bars went to stdout
    before the JSON. Piped, the bars were drawn as lines of '━'."""
    server = http_server(made.directory)
    proc = run_invoke("download", "--version", "v0.1.0", "--from", server.url, "--json", cache=tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)                              # stdout is the JSON alone
    assert got["fetched"] and "━" not in proc.stderr, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("fetched ")] == \
        [f"fetched {n} ({(made.directory / n).stat().st_size:,} bytes)" for n in got["fetched"]], proc.stderr
    proc = run_invoke("download", "--version", "v0.1.0", "--from", server.url, cache=tmp_path / "b")
    assert proc.returncode == 0 and "━" not in proc.stdout + proc.stderr and "fetched" in proc.stdout, proc.stdout


def test_download_without_a_version_says_which_option_is_missing(tmp_path):
    proc = run_invoke("download", "--from", str(tmp_path), cache=tmp_path / "c", timeout=60)
    assert proc.returncode == 1 and "error: download: --version is required, e.g. --version v0.1.0" in proc.stderr, \
        proc.stderr


def modes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix() or ".": p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def test_released_and_cached_files_are_world_readable_whatever_the_umask(release_kwargs, dist, http_server, tmp_path):
    """A web server that copies or serves release/<V>/ (nginx, GitHub Pages' upload) must be able to
    read every file: folders and programs 755, files 644, never mkdtemp/mkstemp's 700/600."""
    write_host_build(dist)
    release_kwargs["boards"] = ["ESP32_GENERIC", "UNIX"]
    previous = os.umask(0o077)
    try:
        made = rel.make_release("v0.1.0", **release_kwargs)
        got = modes(made.directory)
        program = "UNIX-20261121-v1.28.0-v0.1.0"
        assert {k: oct(v) for k, v in got.items() if v != (0o755 if k in (".", "esp-web-tools", program) else 0o644)} == {}
        assert {"index.html", "index.json", "SHA256SUMS", "ESP32_GENERIC.manifest.json", "esp-web-tools/install-button.js"} <= set(got)

        cache = tmp_path / "cache"
        result = dl.download_release("v0.1.0", source=http_server(made.directory).url, cache=cache)
        cached = modes(result.directory)
        del cached["."]
        assert {k: oct(v) for k, v in cached.items() if v != (0o755 if k == program else 0o644)} == {}
        assert {"index.json", "SHA256SUMS", program, "ESP32_GENERIC.manifest.json"} <= set(cached)
    finally:
        os.umask(previous)


def test_an_endless_body_is_cut_off_at_the_size_the_index_gives(made, http_server, tmp_path):
    """A source that never stops sending (no length, a broken proxy) must not fill the cache: the
    transfer fails as soon as more bytes than index.json's size for the file have arrived."""
    import time

    server = http_server(made.directory)
    name = "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    size = (made.directory / name).stat().st_size
    server.behaviour.endless.add(name)
    cache = tmp_path / "cache"
    events = []
    started = time.monotonic()
    with pytest.raises(dl.DownloadError, match=rf"{name}: more than the {size:,} bytes index.json gives for it arrived"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache, on_event=events.append)
    assert time.monotonic() - started < 10
    assert max(e.done for e in events if e.file == name) <= size, "nothing past the size was kept"
    assert leftovers(cache) == [] and not (cache / "releases" / "v0.1.0" / name).exists()

    # The small files without a size in index.json have a ceiling of their own.
    server.behaviour.endless = {"SHA256SUMS"}
    with pytest.raises(dl.DownloadError, match=rf"SHA256SUMS: more than {dl.SMALL_LIMIT:,} bytes, more than any SHA256SUMS has"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=tmp_path / "other")


STALLED = "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"


def _stalled_download(made, http_server, tmp_path: Path):
    """`invoke download` in a process of its own, inside the transfer of STALLED (the server stops
    sending it): (the process, the server, its cache)."""
    server = http_server(made.directory)
    server.behaviour.stall.add(STALLED)
    cache = tmp_path / "cache"
    env = dict(os.environ, WORKSHOP_CACHE=str(cache), COLUMNS="200")
    proc = subprocess.Popen([INVOKE, "-r", str(PROJECT_ROOT), "download", "--version", "v0.1.0", "--board",
                             "ESP32_GENERIC", "--from", server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    assert server.behaviour.stalled.wait(30), "the download never started"
    time.sleep(0.3)
    return proc, server, cache


def test_ctrl_c_during_a_download_says_so_and_exits_130_within_2_s(made, http_server, tmp_path):
    from support import interrupt

    proc, _, cache = _stalled_download(made, http_server, tmp_path)
    out, err, seconds = interrupt(proc)
    assert proc.returncode == 130, (out, err)
    assert seconds < 2, seconds
    assert "interrupted" in err and STALLED in err, err
    assert leftovers(cache) == []


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_download_ended_by_sigterm_or_sighup_leaves_no_partial_file(made, http_server, tmp_path, sig):
    import signal

    proc, _, cache = _stalled_download(made, http_server, tmp_path)
    assert [p for p in leftovers(cache) if p.endswith(".part")], "the partial file exists while it runs"
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 130 and "interrupted" in err, (proc.returncode, err)
    assert leftovers(cache) == []


def test_a_partial_file_left_by_a_killed_download_is_removed_by_the_next(made, http_server, tmp_path):
    """SIGKILL (or a power cut) runs no clean-up: the next download of that file removes the stale
    part files of dead processes, and leaves those of a download still running."""
    import signal

    proc, server, cache = _stalled_download(made, http_server, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    stale = [p for p in leftovers(cache) if p.endswith(".part")]
    assert stale, "SIGKILL leaves the partial file"
    # A part file of a live process (this one) with another name stays.
    folder = cache / "releases" / "v0.1.0"
    live = folder / f".{STALLED}.{os.getpid()}-abcd.part"
    live.write_bytes(b"in progress elsewhere")
    server.behaviour.stall.clear()
    result = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=cache)
    assert result.board("ESP32_GENERIC").paths[STALLED].read_bytes() == (made.directory / STALLED).read_bytes()
    assert leftovers(cache) == [live.name]


def test_a_server_that_accepts_and_never_answers_is_not_called_unreachable(tmp_path):
    """Connected, no HTTP answer: the network is up, the server is the problem; say that."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(listener.accept()[0]), daemon=True).start()
    port = listener.getsockname()[1]
    try:
        with pytest.raises(dl.DownloadError) as e:
            dl.download_release("v0.1.0", source=f"http://127.0.0.1:{port}/", cache=tmp_path / "c", timeout=1)
    finally:
        for s in [*held, listener]:
            s.close()
    message = str(e.value)
    assert f"127.0.0.1:{port} accepted the connection but sent no answer within 1 s" in message, message
    assert "cannot reach" not in message and "network up" not in message


def test_a_stalled_transfer_says_how_many_bytes_arrived(made, http_server, tmp_path):
    server = http_server(made.directory)
    name = "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    server.behaviour.stall.add(name)
    quarter = (made.directory / name).stat().st_size // 4
    with pytest.raises(dl.DownloadError, match=rf"{name}: transfer failed after {quarter:,} bytes: .*timed out"):
        dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=server.url, cache=tmp_path / "c", timeout=1)
    assert leftovers(tmp_path / "c") == []


# --- found in the README review: what each failure tells the person to do --------------------


def test_a_refused_connection_says_no_server_runs_there(tmp_path):
    """The host answered with a reset: the network is up, nothing listens there (a laptop whose
    `invoke serve` is not running); "is the network up?" would send them the wrong way."""
    port = closed_port()
    with pytest.raises(dl.DownloadError) as e:
        dl.download_release("v0.1.0", source=f"http://127.0.0.1:{port}/", cache=tmp_path / "c", timeout=5)
    message = str(e.value)
    assert f"cannot reach 127.0.0.1:{port}: " in message and "no server runs there" in message, message
    assert "network up" not in message and "--from" in message


def test_flash_release_not_downloaded_says_to_download_it_first(tmp_path):
    """`flash --release V` / `station --release V` have no --from: their error says what to run."""
    port = closed_port()
    with pytest.raises(dl.DownloadError) as e:
        dl.release_images("v0.1.0", source=f"http://127.0.0.1:{port}/", cache=tmp_path / "c")
    message = str(e.value)
    assert "invoke download --version v0.1.0 --from URL|DIR" in message, message
    assert "Use --from" not in message


@pytest.mark.parametrize("value", ["workshop-kit", "a b/c", "owner/name/extra"])
def test_a_workshop_repository_that_is_no_owner_name_is_refused(value, tmp_path, monkeypatch):
    monkeypatch.setenv(dl.ENV_REPOSITORY, value)
    with pytest.raises(dl.DownloadError, match=r"\$WORKSHOP_REPOSITORY=.*: expected a GitHub owner/name"):
        dl.download_release("v0.1.0", cache=tmp_path / "c", timeout=5)



def test_release_refuses_a_workshop_repository_that_is_no_owner_name(tmp_path):
    """The release's links (the page, index.json) are made from $WORKSHOP_REPOSITORY: 'a b/c'
    went into them as it was."""
    env = dict(os.environ, WORKSHOP_CACHE=str(tmp_path / "c"), WORKSHOP_REPOSITORY="a b/c")
    # (ESP32_GENERIC is not built here: were the check gone, the release would still be refused.)
    proc = subprocess.run([INVOKE, "-r", str(PROJECT_ROOT), "release", "--version", "v9.9.9", "--board",
                           "ESP32_GENERIC"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "$WORKSHOP_REPOSITORY='a b/c': expected a GitHub owner/name" in proc.stderr, \
        proc.stdout + proc.stderr
    assert not (PROJECT_ROOT / "release" / "v9.9.9").exists()


def test_a_folder_of_releases_without_version_names_the_release_folder(made, tmp_path):
    parent = made.directory.parent                    # release/, holding v0.1.0/
    with pytest.raises(dl.DownloadError) as e:
        dl.download_release("v0.1.0", source=parent, cache=tmp_path / "c")
    assert f"--from {parent / 'v0.1.0'}" in str(e.value), str(e.value)
    result = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=f"{parent}/{{version}}", cache=tmp_path / "c")
    assert result.board("ESP32_GENERIC").paths


def test_a_stale_part_file_goes_even_when_its_file_is_already_cached(made, tmp_path):
    cache = tmp_path / "c"
    dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=made.directory, cache=cache)
    folder = cache / "releases" / "v0.1.0"
    stale = folder / f".{STALLED}.999999999-abcd.part"       # a pid no process has
    stale.write_bytes(b"left by a killed run")
    result = dl.download_release("v0.1.0", ["ESP32_GENERIC"], source=made.directory, cache=cache)
    assert STALLED in result.cached
    assert leftovers(cache) == []
