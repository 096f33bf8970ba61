"""Placeholder builds for release tests: ESP images cannot be built on this machine, so each
dist/<BOARD>/ gets clearly labelled text files in place of its artifacts and a matching build.json
written through BuildInfo, exactly as workshop.build writes it."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from workshop.buildinfo import Artifact, BuildInfo, write_atomic
from workshop.config import get_board

BUILT_AT = "2026-11-21T10:30:00Z"
MP_VERSION = "v1.28.0"
MP_COMMIT = "e0e9fbb17ed6fd06bb76e266ae554784c9c80804"
ESP_BOARDS = ("ESP32_GENERIC", "ESP32_GENERIC_C3", "ESP32_GENERIC_S2", "ESP32_GENERIC_S3", "ESP8266_GENERIC")
FROZEN = ("umqtt/simple.py", "umqtt/robust.py", "urequests.py", "wifi.py", "mdns.py", "telnet.py", "webserver.py")


def placeholder_bytes(board: str, file: str, size: int) -> bytes:
    """Clearly not firmware: a repeated text line naming board and file, cut to `size`."""
    line = f"PLACEHOLDER {board}/{file}: not a real image, ESP builds cannot run on this machine\n".encode()
    return (line * (size // len(line) + 1))[:size]


def write_placeholder_build(dist: Path, board_name: str, *, size: int = 96 * 1024, dirty: bool = False,
                            built_at: str = BUILT_AT, extra_bytes: bytes = b"") -> BuildInfo:
    """dist/<BOARD>/ with placeholder artifacts for every output the board's port makes, and a
    matching build.json written through BuildInfo (as workshop.build writes it)."""
    board = get_board(board_name)
    out = dist / board_name
    out.mkdir(parents=True, exist_ok=True)
    regions = {r.file: r.offset for r in board.flash_regions()}
    artifacts = []
    for i, output in enumerate(board.port.outputs):
        data = placeholder_bytes(board_name, output.file, size // (i + 1)) + (extra_bytes if i == 0 else b"")
        (out / output.file).write_bytes(data)
        # flashed = has an offset, as workshop.build records it (a host board's program has none)
        artifacts.append(Artifact(output.file, hashlib.sha256(data).hexdigest(), len(data),
                                  regions.get(output.file), output.file in regions))
    info = BuildInfo(
        board=board_name, port=board.port.name, chip=board.chip, chip_name=board.chip_name,
        flash_size=board.flash_size, mp_board=board.mp_board, variant=board.variant,
        micropython_version=MP_VERSION, micropython_commit=MP_COMMIT, project_version="0.1.0",
        project_commit="0123456789abcdef0123456789abcdef01234567", project_dirty=dirty,
        manifest_sha256="0" * 64, inputs_sha256="1" * 64, frozen_modules=FROZEN,
        artifacts=tuple(artifacts), toolchain="docker", toolchain_image="espressif/idf:v5.5.1",
        built_at=built_at, duration_s=1.0,
    )
    write_atomic(out / "build.json", info.to_json())
    return info


def never_stale(board: str) -> None:
    return None


def clean_tree() -> None:
    return None


def make_fake_web_tools(directory: Path) -> Path:
    """Stands in for ESP Web Tools in host tests (the e2e flasher test uses the real package)."""
    directory.mkdir(parents=True)
    (directory / "install-button.js").write_text("// placeholder for esp-web-tools in host tests\n")
    (directory / "VERSION").write_text("0.0.0-test\n")
    return directory


def host_program() -> bytes:
    """A real MicroPython unix program for a host board's placeholder build: the UNIX firmware
    built here (dist/UNIX/micropython) when there is one, else the PyPI runtime's launcher."""
    import sys

    from workshop.config import PROJECT_ROOT

    built = PROJECT_ROOT / "dist" / "UNIX" / "micropython"
    return (built if built.is_file() else Path(sys.executable).parent / "micropython").read_bytes()


def write_host_build(dist: Path, board_name: str = "UNIX") -> BuildInfo:
    """dist/UNIX/ as workshop.build leaves it: the unix port's program (mode 755, not flashed: no
    offset) and build.json."""
    info = write_placeholder_build(dist, board_name)
    program = dist / board_name / info.artifacts[0].file
    data = host_program()
    program.write_bytes(data)
    program.chmod(0o755)
    art = info.artifacts[0]
    info = replace(info, artifacts=(replace(art, sha256=hashlib.sha256(data).hexdigest(), size=len(data)),),
                   toolchain="native", toolchain_image=None)
    write_atomic(dist / board_name / "build.json", info.to_json())
    return info
