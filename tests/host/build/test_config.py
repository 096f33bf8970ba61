"""Board and port data: what ships loads, and every broken file names its file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workshop import config

REPO = Path(__file__).resolve().parents[3]
SHIPPED = ["ESP32_GENERIC", "ESP32_GENERIC_S2", "ESP32_GENERIC_S3", "ESP32_GENERIC_C3", "ESP8266_GENERIC", "UNIX"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the project's data files, to break one at a time."""
    for name in ("boards", "ports"):
        shutil.copytree(REPO / name, tmp_path / name)
    return tmp_path


def test_every_shipped_board_loads_with_offsets_from_esptool():
    boards = config.load_boards()
    assert sorted(boards) == sorted(SHIPPED)
    offsets = {name: [(r.file, r.offset) for r in b.flash_regions()] for name, b in boards.items()}
    # The chips' bootloader offsets, as MicroPython's deploy docs give them.
    assert offsets == {
        "ESP32_GENERIC": [("firmware.bin", 0x1000)],
        "ESP32_GENERIC_S2": [("firmware.bin", 0x1000)],
        "ESP32_GENERIC_S3": [("firmware.bin", 0x0)],
        "ESP32_GENERIC_C3": [("firmware.bin", 0x0)],
        "ESP8266_GENERIC": [("firmware.bin", 0x0)],
        "UNIX": [],
    }
    assert boards["ESP32_GENERIC_S3"].chip_name == "ESP32-S3"
    assert boards["ESP8266_GENERIC"].variant is None  # the default (2 MiB) variant
    assert boards["UNIX"].is_host
    # btree is a board setting, off on the workshop boards the kit builds here (no berkeley-db
    # needed); the ESP32 boards keep MicroPython's default.
    assert {n: b.btree for n, b in boards.items()} == {**dict.fromkeys(SHIPPED, True), "UNIX": False,
                                                         "ESP8266_GENERIC": False}
    assert boards["ESP8266_GENERIC"].margins == {"irom0": 65536, "iram": 1024, "dram": 12288}


def test_offsets_follow_esptool_chip_data_not_code(project: Path):
    """A new chip family is one TOML file: its offset comes from esptool's definitions."""
    (project / "boards" / "ESP32_GENERIC_C6.toml").write_text(
        'port = "esp32"\nboard = "ESP32_GENERIC_C6"\nchip = "esp32c6"\nflash_size = "4MB"\nmin_free_heap = 60000\n')
    from esptool.targets import CHIP_DEFS

    board = config.load_boards(project)["ESP32_GENERIC_C6"]
    assert board.flash_regions()[0].offset == CHIP_DEFS["esp32c6"].BOOTLOADER_FLASH_OFFSET
    assert board.chip_name == "ESP32-C6"


@pytest.mark.parametrize("edit, message", [
    (('flash_size = "4MB"', 'flash_size = "4M"'),
     "boards/ESP32_GENERIC.toml: flash_size: expected one of '256KB'"),
    (('chip = "esp32"', 'chip = "esp33"'), "boards/ESP32_GENERIC.toml: chip: expected one of esp8266, esp32"),
    (('min_free_heap = 60000', 'min_free_heap = "lots"'), "boards/ESP32_GENERIC.toml: min_free_heap: expected a number of bytes, got 'lots'"),
    (('min_free_heap = 60000', 'min_free_heap = true'), "boards/ESP32_GENERIC.toml: min_free_heap: expected a number of bytes, got True"),
    (('board = "ESP32_GENERIC"\n', ''), "boards/ESP32_GENERIC.toml: board: missing"),
    (('port = "esp32"', 'port = "esp64"'), "boards/ESP32_GENERIC.toml: port: ports/esp64/port.toml: no such port 'esp64'"),
    (('chip = "esp32"', 'chip = "esp32"\nflash_mode = "dio"'), "boards/ESP32_GENERIC.toml: flash_mode: unknown key"),
    (('port = "esp32"', 'port = '), "boards/ESP32_GENERIC.toml: not valid TOML"),
    (('chip = "esp32"', 'chip = "esp32"\nbtree = false'),
     "boards/ESP32_GENERIC.toml: btree: expected true (port esp32 has no btree_off in its port.toml), got False"),
    (('chip = "esp32"', 'chip = "esp32"\nmargins = { iram = 1024 }'),
     "boards/ESP32_GENERIC.toml: margins.iram: expected a budget region of port esp32 (none), got 'iram'"),
])
def test_broken_board_file_names_file_and_key(project: Path, edit, message):
    path = project / "boards" / "ESP32_GENERIC.toml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(config.ConfigError) as e:
        config.load_boards(project)
    assert str(e.value).startswith(message), str(e.value)


def _load_edited_port(project: Path, port: str, edit: tuple[str, str]) -> config.ConfigError:
    """ports/<port>/port.toml with one text edit made, loaded: the error it gives."""
    path = project / "ports" / port / "port.toml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(config.ConfigError) as e:
        config.load_port(port, project)
    return e.value


@pytest.mark.parametrize("edit, message", [
    (('offset = "bootloader"', 'offset = "boot"'), "outputs[0].offset: expected \"bootloader\" or a number, got 'boot'"),
    (('dir = "ports/esp32"', 'dir = 32'), "make.dir: expected a path inside the MicroPython checkout, got 32"),
    (('name = "esp32"', 'name = "esp-32"'), "name: expected 'esp32' (the folder's name), got 'esp-32'"),
    (('native_tools = ["idf.py", "make"]', 'native_tools = "idf.py"'), "native_tools: expected a list of strings, got 'idf.py'"),
])
def test_broken_port_file_names_file_and_key(project: Path, edit, message):
    error = _load_edited_port(project, "esp32", edit)
    assert str(error) == f"ports/esp32/port.toml: {message}" or str(error).endswith(message), str(error)
    assert "port.toml" in str(error)


@pytest.mark.parametrize("edit, message", [
    (('margins = { irom0 = 65536,', 'margins = { irom = 65536,'),
     "boards/ESP8266_GENERIC.toml: margins.irom: expected a budget region of port esp8266 (irom0, iram, dram), got 'irom'"),
    (('iram = 1024,', 'iram = -1,'), "boards/ESP8266_GENERIC.toml: margins.iram: expected a number of bytes >= 0, got -1"),
    (('btree = false', 'btree = "no"'), "boards/ESP8266_GENERIC.toml: btree: expected true/false, got 'no'"),
])
def test_broken_esp8266_settings_name_file_and_key(project: Path, edit, message):
    path = project / "boards" / "ESP8266_GENERIC.toml"
    text = path.read_text()
    assert edit[0] in text
    path.write_text(text.replace(edit[0], edit[1]))
    with pytest.raises(config.ConfigError) as e:
        config.load_board(path, project)
    assert str(e.value) == message


@pytest.mark.parametrize("edit, message", [
    (('commit = "c70543e57fb18e5be0315aa217bca27d0e26d23d"', 'commit = "c70543e"'),
     "native.sources[1].commit: expected a full 40-digit commit, got 'c70543e'"),
    (('repo = "tommie/lx106-hal"', 'repo = "lx106-hal"'), "native.sources[3].repo: expected 'owner/name', got 'lx106-hal'"),
    (('map = "firmware.map"', 'map = 1'), "budget.map: expected a file in the build tree, got 1"),
])
def test_broken_native_toolchain_data_names_file_and_key(project: Path, edit, message):
    assert str(_load_edited_port(project, "esp8266", edit)) == f"ports/esp8266/port.toml: {message}"


def test_unknown_board_lists_the_known_ones():
    with pytest.raises(config.ConfigError, match=r"unknown board 'ESP32' \(boards: ESP32_GENERIC, .*UNIX\)"):
        config.get_board("ESP32")


def test_esp8266_images_are_written_with_detected_flash_size():
    """ESP8266 modules vary (512 KB to 16 MB): esptool writes the detected size into the header."""
    from workshop.flash import port_write_flash_size

    assert port_write_flash_size("esp8266") == "detect"
    assert port_write_flash_size("esp32") == "keep"
    assert port_write_flash_size("no-such-port") == "keep"
