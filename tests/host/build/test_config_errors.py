"""What a person sees when the cache path, a port's tool list or a board file is off: absolute
paths, the tools a native build really runs, and one line naming the file and key (no traceback)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workshop import build, config, source

REPO = Path(__file__).resolve().parents[3]
CHECKOUT = source.Checkout(Path("/src/micropython"), source.MICROPYTHON_COMMIT, "v1.28.0", dirty=False, pinned=True)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A kit checkout made of copies of the project's data, to add a broken board to."""
    root = tmp_path / "project"
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    shutil.copy(REPO / "manifest.py", root / "manifest.py")
    return root


def _invoke(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real task, as a person runs it, on the project copy."""
    env = dict(os.environ, WORKSHOP_PROJECT=str(project))
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess[str], message: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [f"error: {message}"], proc.stderr


# --- 1. WORKSHOP_CACHE -------------------------------------------------------------------------


def test_a_relative_cache_is_made_absolute_before_make_or_docker_sees_it(tmp_path: Path, monkeypatch):
    """make -C <checkout> with BUILD=relcache/... wrote mpy-cross into the checkout; docker -v
    relcache/... is a named volume. Every path the plan hands on is absolute."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKSHOP_CACHE", "relcache")
    assert config.cache_dir() == tmp_path.resolve() / "relcache"
    board = config.get_board("UNIX")
    native = build.plan(board, CHECKOUT, "native", jobs=1)
    build_args = [a for step in native.steps for a in step.argv if a.startswith("BUILD=")]
    assert len(build_args) == 2 and all(Path(a[len("BUILD="):]).is_absolute() for a in build_args), build_args
    assert all(Path(value).is_absolute() for step in native.steps for _, value in step.env)
    docker = build.plan(config.get_board("ESP32_GENERIC"), CHECKOUT, "docker", jobs=1, uid_gid=(1000, 1000))
    mounts = [a for step in docker.steps for i, a in enumerate(step.argv) if i and step.argv[i - 1] == "-v"]
    assert mounts and all(m.startswith("/") for m in mounts), mounts
    monkeypatch.setenv("WORKSHOP_CACHE", "~/kit-cache")
    assert config.cache_dir() == Path.home().resolve() / "kit-cache"


def test_the_default_cache_has_one_spelling_through_a_symlinked_cache_home(tmp_path: Path, monkeypatch):
    real = tmp_path / "real-cache"
    real.mkdir()
    (tmp_path / "cache-link").symlink_to(real)
    monkeypatch.delenv("WORKSHOP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache-link"))
    assert config.cache_dir() == real.resolve() / "workshop-kit"


# --- 2. make is a native tool of every port whose native build runs make -----------------------


@pytest.mark.parametrize("board", ["UNIX", "ESP8266_GENERIC", "ESP32_GENERIC"])
def test_a_machine_without_make_cannot_build_natively(board: str, tmp_path: Path, monkeypatch):
    """`invoke boards` said UNIX builds natively without make; the build then died in Popen."""
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    b = config.get_board(board)
    if b.port.native.prepare:                   # a prepared SDK where the port needs one
        folder = source.toolchain_path(b.port)
        folder.mkdir(parents=True)
        (folder / source.TOOLCHAIN_STAMP).write_text('{"recipe": "%s"}' % b.port.native.prepare)
    steps = build.plan(b, CHECKOUT, "native", jobs=1, compiler="gcc 12").steps
    assert all(step.argv[0] == "make" for step in steps)          # what the native build runs
    assert "make" in b.port.native_tools
    everything = build.toolchain_status(b, which=lambda tool: "/usr/bin/" + tool, docker_reason="no docker client")
    assert everything.kind == "native", everything
    no_make = build.toolchain_status(b, which=lambda tool: None if tool == "make" else "/usr/bin/" + tool,
                                     docker_reason="no docker client")
    assert no_make.kind is None and no_make.reason.endswith(("no make on PATH", "needs make on PATH")), no_make


# --- 3a. a board file that is not UTF-8 -------------------------------------------------------


def test_a_board_file_that_is_not_utf8_names_the_file(project: Path):
    (project / "boards" / "BAD.toml").write_bytes(b'port = "unix"\xff\nchip = "host"\n')
    with pytest.raises(config.ConfigError) as e:
        config.load_boards(project)
    assert str(e.value) == "boards/BAD.toml: not UTF-8 text"
    with pytest.raises(config.ConfigError, match=r"^ports/unix/port\.toml: not UTF-8 text$"):
        (project / "ports" / "unix" / "port.toml").write_bytes(b'name = "unix"\n# caf\xe9\n')
        config.load_port("unix", project)


def test_boards_task_with_a_non_utf8_board_file_is_one_error_line(project: Path):
    (project / "boards" / "BAD.toml").write_bytes(b'port = "unix"\xff\nchip = "host"\n')
    _one_error_line(_invoke(project, "boards"), "boards/BAD.toml: not UTF-8 text")


@pytest.mark.parametrize("args", [("boards",), ("roster", "--wait", "0"), ("release", "--version", "v9")])
def test_a_bad_workshop_project_is_one_error_line_from_any_task_and_the_list_still_shows(tmp_path: Path, args):
    # The provision help text read the project when tasks.py loaded: every task (and --list)
    # was a traceback; roster and release raised it from inside the task.
    nowhere = tmp_path / "not-a-checkout"
    _one_error_line(_invoke(nowhere, *args), f"${config.PROJECT_ENV}={nowhere}: not a workshop kit checkout "
                                            "(it needs boards, ports, modules, manifest.py)")
    listing = _invoke(nowhere, "--list")
    assert listing.returncode == 0 and "provision" in listing.stdout and "Traceback" not in listing.stderr


@pytest.mark.parametrize("task", [("build",), ("check",), ("release", "--version", "v0.9.9", "--allow-dirty"),
                                  ("download", "--version", "v0.9.9")], ids=lambda t: t[0])
def test_an_empty_board_option_is_an_error_not_every_board(project: Path, task: tuple[str, ...]):
    # --board "$B" with B unset built, checked or released every board.
    _one_error_line(_invoke(project, *task, "--board", ""),
                    "--board '': no board named (--board NAME[,NAME...]; see 'invoke boards')")


def test_build_with_an_unknown_toolchain_is_one_error_line_not_one_failure_per_board(project: Path):
    _one_error_line(_invoke(project, "build", "--all", "--toolchain", "podman"),
                    "--toolchain must be one of auto, docker, native, got 'podman'")


def test_build_json_lists_every_board_with_its_result_and_reason(project: Path, tmp_path: Path):
    # Nothing on PATH: no docker client, no compiler, so every board is skipped with its reason.
    (tmp_path / "empty-bin").mkdir()
    env = dict(os.environ, WORKSHOP_PROJECT=str(project), PATH=str(tmp_path / "empty-bin"))
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)                  # the whole of stdout is the JSON
    assert [r["board"] for r in rows] == list(config.load_boards(project))
    unix = next(r for r in rows if r["board"] == "UNIX")
    assert (unix["status"], unix["ok"], unix["error"], unix["build"]) == (
        "skipped", True, "needs cc, pkg-config, make on PATH", None)
    assert all(r["status"] == "skipped" and r["error"] for r in rows), rows


def test_check_task_with_a_non_utf8_board_file_is_one_error_line(project: Path, mp_checkout):
    (project / "boards" / "BAD.toml").write_bytes(b'port = "unix"\xff\nchip = "host"\n')
    _one_error_line(_invoke(project, "check", "--board", "UNIX"), "boards/BAD.toml: not UTF-8 text")


# --- 3b. `invoke check` with another board's file broken --------------------------------------


def test_check_task_with_an_unrelated_broken_board_is_one_error_line(project: Path, mp_checkout):
    """check --board UNIX reads every board (which ports need berkeley-db): a ConfigError from
    another board's file came out as a traceback."""
    (project / "boards" / "BAD.toml").write_text(
        'port = "unix"\nvariant = "standard"\nchip = "host"\nmin_free_heap = 1000\nmargins = 5\n')
    message = "boards/BAD.toml: margins: expected a table of budget region -> bytes, got 5"
    _one_error_line(_invoke(project, "check", "--board", "UNIX"), message)
    _one_error_line(_invoke(project, "boards"), message)


# --- 3c. a chip its port cannot have ----------------------------------------------------------


ESP32_BOARD = 'port = "esp32"\nboard = "ESP32_GENERIC"\nchip = "{chip}"\n{flash}min_free_heap = 60000\n'


@pytest.mark.parametrize("chip, flash", [("host", ""), ("esp8266", 'flash_size = "4MB"\n')])
def test_a_chip_the_port_cannot_have_names_file_key_and_the_ports_chips(project: Path, chip: str, flash: str):
    """esp32 + host tracebacked later in flash_regions; esp32 + esp8266 was flashed at the wrong offset."""
    path = project / "boards" / "X.toml"
    path.write_text(ESP32_BOARD.format(chip=chip, flash=flash))
    with pytest.raises(config.ConfigError) as e:
        config.load_board(path, project)
    assert str(e.value).startswith(f"boards/X.toml: chip: {chip!r} is not a chip of port esp32 (esp32, esp32s2, "), e.value
    assert "esp8266" not in str(e.value).split("(", 1)[1] and "host" not in str(e.value).split("(", 1)[1]


@pytest.mark.parametrize("port, chip", [("esp8266", "esp32"), ("unix", "esp32"), ("esp8266", "host")])
def test_other_ports_refuse_a_chip_they_cannot_have(project: Path, port: str, chip: str):
    path = project / "boards" / "X.toml"
    flash = "" if chip == "host" else 'flash_size = "4MB"\n'
    board = 'board = "ESP8266_GENERIC"\n' if port == "esp8266" else ""
    path.write_text(f'port = "{port}"\n{board}chip = "{chip}"\n{flash}min_free_heap = 1000\n')
    with pytest.raises(config.ConfigError, match=rf"^boards/X\.toml: chip: '{chip}' is not a chip of port {port} \("):
        config.load_board(path, project)


def test_every_shipped_board_has_a_chip_of_its_port_and_each_port_names_real_chips():
    for board in config.load_boards().values():
        assert board.chip in board.port.chips, board.name
    for port in ("esp32", "esp8266", "unix"):
        chips = config.load_port(port).chips
        assert chips and set(chips) <= set(config.known_chips()), (port, chips)
    assert config.load_port("unix").chips == (config.HOST_CHIP,)


def test_a_port_naming_a_chip_esptool_does_not_know_names_file_and_key(project: Path):
    path = project / "ports" / "esp32" / "port.toml"
    path.write_text(path.read_text().replace('"esp32s2"', '"esp32s9"', 1))
    with pytest.raises(config.ConfigError, match=r"^ports/esp32/port\.toml: chips: expected esptool chip names "
                                                 r"or 'host' \(esptool knows esp8266, .*\), got 'esp32s9'$"):
        config.load_port("esp32", project)


def test_boards_task_with_a_chip_its_port_cannot_have_is_one_error_line(project: Path):
    (project / "boards" / "X.toml").write_text(ESP32_BOARD.format(chip="host", flash=""))
    proc = _invoke(project, "boards")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(
        "error: boards/X.toml: chip: 'host' is not a chip of port esp32 (esp32, esp32s2, "), proc.stderr


def test_a_host_port_with_an_image_at_the_bootloader_offset_names_file_and_key(project: Path):
    """flash_regions asked esptool for the bootloader offset of 'host': a traceback naming no file."""
    path = project / "ports" / "unix" / "port.toml"
    path.write_text(path.read_text().replace('file = "micropython"', 'file = "micropython"\noffset = "bootloader"'))
    with pytest.raises(config.ConfigError) as e:
        config.load_port("unix", project)
    assert str(e.value) == ("ports/unix/port.toml: outputs[0].offset: expected a number (chips has 'host', which "
                            "has no bootloader), got 'bootloader'")
