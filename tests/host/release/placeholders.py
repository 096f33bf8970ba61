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
                            built_at: str = BUILT_AT, extra_bytes: bytes = b"", image: bytes | None = None) -> BuildInfo:
    """dist/<BOARD>/ with placeholder artifacts for every output the board's port makes, and a
    matching build.json written through BuildInfo (as workshop.build writes it). `image`: the
    bytes of the first output (firmware.bin) instead of a placeholder, e.g. from esp_image()."""
    board = get_board(board_name)
    out = dist / board_name
    out.mkdir(parents=True, exist_ok=True)
    regions = {r.file: r.offset for r in board.flash_regions()}
    artifacts = []
    for i, output in enumerate(board.port.outputs):
        data = placeholder_bytes(board_name, output.file, size // (i + 1)) + (extra_bytes if i == 0 else b"")
        if i == 0 and image is not None:
            data = image
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

    try:
        return (PROJECT_ROOT / "dist" / "UNIX" / "micropython").read_bytes()
    except OSError:         # not built (or being rebuilt) here
        return (Path(sys.executable).parent / "micropython").read_bytes()


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


def esp_image(chip: str, flash_size: str, *, after: bytes = b"") -> bytes:
    """A valid image for `chip`, made by esptool's own image classes, whose header says
    `flash_size` (esptool's name, e.g. '1MB'), followed by `after` (the rest of a merged file).
    esp8266: laid out as MicroPython's makeimg.py does (the elf2image 0x00000 part, padded to
    0x9000, then the irom0 part); ESP32 family: a bootloader image with its SHA-256 appended."""
    from esptool.bin_image import ELFSection
    from esptool.targets import CHIP_DEFS

    rom = CHIP_DEFS[chip]
    img = rom.BOOTLOADER_IMAGE()
    img.entrypoint = 0x40100004 if chip == "esp8266" else 0x40080004
    img.flash_size_freq = rom.FLASH_SIZES[flash_size]     # + frequency code 0: 40 MHz
    if chip == "esp8266":
        img.segments = [ELFSection(b".text", 0x40100000, bytes(range(256)) * 8, 0),
                        ELFSection(b".data", 0x3FFE8000, b"data" * 64, 0),
                        ELFSection(b".irom0.text", 0x40209000, b"irom" * 1024, 0)]
        irom, other = img.save(None)
        return other + b"\xff" * (0x9000 - len(other)) + irom + after
    img.segments = [ELFSection(b".dram0.data", 0x3FFB0000, b"dram" * 64, 0),
                    ELFSection(b".iram0.text", 0x40080000, bytes(range(256)) * 4, 0)]
    img.append_digest = True
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        img.save(f"{tmp}/image.bin")
        return Path(f"{tmp}/image.bin").read_bytes() + after
