"""`invoke check`: each board's manifest resolved by MicroPython's own tools/manifestfile.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from workshop import build, check, config
from workshop.smoke import manifest_modules

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("board", ["ESP32_GENERIC", "ESP32_GENERIC_C3", "ESP8266_GENERIC", "UNIX"])
def test_shipped_manifests_resolve_without_conflicts(mp_checkout, board):
    result = check.check_board(config.get_board(board), mp_checkout)
    assert result.problems == []
    targets = {f.target for f in result.files}
    # Our stack replaces the stock copies: exactly one requests, umqtt, ntptime; and they are ours.
    modules = REPO / "modules"
    for name in ("requests", "urequests", "ntptime", "umqtt.simple", "umqtt.robust", "base64"):
        owners = [f.source for f in result.files if f.module == name]
        assert len(owners) == 1 and owners[0].is_relative_to(modules), (name, owners)
    for entry in manifest_modules():   # every file manifest.py freezes from modules/
        assert entry in targets, entry
    # The stock content the port manifest keeps is still there.
    assert "asyncio/__init__.py" in targets and "mip/__init__.py" in targets
    assert result.stack_bytecode > 1000


def test_stock_networking_next_to_ours_is_reported_as_a_conflict(mp_checkout, tmp_path: Path):
    """What happens if a port manifest keeps the stock bundle: umqtt and requests frozen twice."""
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "manifest.py", tmp_path)
    (tmp_path / "ports" / "esp32" / "manifest.py").write_text(
        'include("$(PORT_DIR)/boards/manifest.py")\ninclude("../../manifest.py")\n')
    result = check.check_board(config.get_board("ESP32_GENERIC", tmp_path), mp_checkout, tmp_path)
    joined = "\n".join(result.problems)
    for module in ("umqtt.simple", "umqtt.robust", "requests", "urequests", "ntptime"):
        assert f"{module} is frozen 2 times" in joined, joined
    assert "modules/umqtt/simple.py" in joined and "$(MPY_DIR)/lib/micropython-lib/micropython/umqtt.simple" in joined


def test_missing_module_is_named(mp_checkout, tmp_path: Path):
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, tmp_path / name)
    shutil.copy(REPO / "manifest.py", tmp_path)
    (tmp_path / "modules" / "ntptime.py").unlink()
    result = check.check_board(config.get_board("ESP8266_GENERIC", tmp_path), mp_checkout, tmp_path)
    assert result.problems == ["manifest.py: Cannot stat modules/ntptime.py"]


def test_bytecode_size_is_mpy_cross_output(tmp_path: Path):
    src = tmp_path / "m.py"
    src.write_text("def f(x):\n    return x + 1\n" * 20)
    size = check.bytecode_size([src], ())
    assert 100 < size < src.stat().st_size
    src.write_text("def f(:\n")
    with pytest.raises(SyntaxError, match="m.py: mpy-cross failed"):
        check.bytecode_size([src], ())


def test_identity_module_is_frozen_only_when_a_build_names_its_folder(mp_checkout, tmp_path: Path, monkeypatch):
    """`invoke build` sets WORKSHOP_BUILD_IDENTITY: then the manifest adds _workshop_build.py from
    that folder. `invoke check` resolves without it, whatever the shell's environment says."""
    assert len(manifest_modules()) >= 10 and "_workshop_build.py" not in manifest_modules()
    identity = tmp_path / "identity"
    identity.mkdir()
    (identity / "_workshop_build.py").write_text('board = "UNIX"\ninputs = "x"\nproject = "0"\n')
    board = config.get_board("UNIX")
    plain = check.resolve(board, mp_checkout)
    built = check.resolve(board, mp_checkout, identity=identity)
    assert [f.target for f in built] == [f.target for f in plain] + ["_workshop_build.py"]
    assert built[-1].source == identity / "_workshop_build.py" and built[-1].module == "_workshop_build"
    monkeypatch.setenv("WORKSHOP_BUILD_IDENTITY", str(identity))
    assert check.resolve(board, mp_checkout) == plain
    assert check.check_board(board, mp_checkout).files == plain
    import os
    assert os.environ["WORKSHOP_BUILD_IDENTITY"] == str(identity)   # restored after each resolution
    (identity / "_workshop_build.py").unlink()
    with pytest.raises(Exception, match="Cannot stat .*_workshop_build.py"):
        check.resolve(board, mp_checkout, identity=identity)


def _project_with_board(tmp_path: Path, name: str, toml: str) -> Path:
    for folder in ("boards", "ports", "modules"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    shutil.copy(REPO / "manifest.py", tmp_path)
    (tmp_path / "boards" / f"{name}.toml").write_text(toml)
    return tmp_path



_ESP32_BOARD_TYPO = ('port = "esp32"\nboard = "ESP32_GENRIC"\nchip = "esp32"\nflash_size = "4MB"\nmin_free_heap = 1\n',
                     "TYPO.toml: board = 'ESP32_GENRIC' is not a board of MicroPython v1.28.0 (ports/esp32/boards/); "
                     "did you mean ESP32_GENERIC")
_ESP32_VARIANT_TYPO = ('port = "esp32"\nboard = "ESP32_GENERIC"\nvariant = "SPIRAMX"\nchip = "esp32"\n'
                       'flash_size = "4MB"\nmin_free_heap = 1\n',
                       "TYPO.toml: variant = 'SPIRAMX' is not a variant of ESP32_GENERIC in MicroPython v1.28.0 "
                       "(it has: D2WD, OTA, SPIRAM, UNICORE)")
_ESP8266_BOARD_TYPO = ('port = "esp8266"\nboard = "ESP8266_GENERIK"\nchip = "esp8266"\nflash_size = "2MB"\n'
                       'min_free_heap = 1\n',
                       "TYPO.toml: board = 'ESP8266_GENERIK' is not a board of MicroPython v1.28.0 "
                       "(ports/esp8266/boards/); did you mean ESP8266_GENERIC")
_UNIX_VARIANT_TYPO = ('port = "unix"\nvariant = "standrd"\nchip = "host"\nmin_free_heap = 1\n',
                      "TYPO.toml: variant = 'standrd' is not a variant of MicroPython v1.28.0 (ports/unix/variants/); "
                      "did you mean standard")


@pytest.mark.parametrize("toml, problem", [_ESP32_BOARD_TYPO, _ESP32_VARIANT_TYPO, _ESP8266_BOARD_TYPO,
                                           _UNIX_VARIANT_TYPO])
def test_a_board_or_variant_the_checkout_lacks_is_a_check_problem(mp_checkout, tmp_path: Path, toml: str,
                                                                  problem: str):
    """A typo in a board file still resolves as a manifest (the port manifests do not read
    BOARD_DIR): only make would find it, minutes into a build."""
    root = _project_with_board(tmp_path, "TYPO", toml)
    result = check.check_board(config.get_board("TYPO", root), mp_checkout, root)
    assert len(result.problems) == 1 and result.problems[0].startswith(problem), result.problems


@pytest.mark.parametrize("toml, problem", [_ESP8266_BOARD_TYPO, _UNIX_VARIANT_TYPO])
def test_build_refuses_a_board_or_variant_the_checkout_lacks_before_make(mp_checkout, tmp_path: Path, toml: str,
                                                                          problem: str):
    root = _project_with_board(tmp_path, "TYPO", toml)
    [built] = build.build_all([config.get_board("TYPO", root)], toolchain="native", micropython=mp_checkout.path,
                              root=root, dist=tmp_path / "dist")
    assert built.status == "failed" and built.error.startswith(f"TYPO: {problem}"), built.error
    assert built.log is None               # refused before any step ran


def test_the_shipped_boards_and_variants_exist_in_the_checkout(mp_checkout):
    for board in config.load_boards().values():
        assert check.missing_target(board, mp_checkout) is None, board.name
