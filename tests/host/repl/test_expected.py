"""Which firmware smoke expects: the policy lives in workshop.smoke (tasks.py only renders)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "release"))

from placeholders import write_placeholder_build  # noqa: E402

from workshop import smoke  # noqa: E402


def test_without_a_board_the_only_build_in_dist_is_expected(tmp_path: Path) -> None:
    with pytest.raises(smoke.SmokeError, match=r"pass --board NAME \(nothing built in "):
        smoke.choose_expected(dist=tmp_path)
    write_placeholder_build(tmp_path, "ESP32_GENERIC_S3")
    expected = smoke.choose_expected(dist=tmp_path)
    assert expected.board == "ESP32_GENERIC_S3" and expected.source == str(tmp_path / "ESP32_GENERIC_S3" / "build.json")
    assert expected.chip == "esp32s3" and expected.flash_size == "8MB"
    write_placeholder_build(tmp_path, "ESP8266_GENERIC")
    with pytest.raises(smoke.SmokeError, match=r"pass --board NAME \(built: ESP32_GENERIC_S3, ESP8266_GENERIC\)"):
        smoke.choose_expected(dist=tmp_path)
    assert smoke.choose_expected("ESP8266_GENERIC", dist=tmp_path).chip == "esp8266"


def test_a_board_without_a_build_is_expected_from_its_board_file(tmp_path: Path) -> None:
    expected = smoke.choose_expected("UNIX", board_file=True)
    assert expected.source == "boards/UNIX.toml" and expected.micropython_version is None
    with pytest.raises(smoke.SmokeError, match="unknown board 'NOPE'"):
        smoke.choose_expected("NOPE", board_file=True)


def test_a_named_dist_without_the_build_is_an_error_not_the_board_file(tmp_path: Path) -> None:
    """--dist names the build the boards should run: when it is not there, smoke says so."""
    with pytest.raises(smoke.SmokeError, match=r"--dist .*/nonexistent: no such folder of builds"):
        smoke.choose_expected("UNIX", dist=tmp_path / "nonexistent")
    with pytest.raises(smoke.SmokeError, match=r"--dist .*: no build of UNIX there \(no .*/UNIX/build.json\)"):
        smoke.choose_expected("UNIX", dist=tmp_path)
    with pytest.raises(smoke.SmokeError, match="unknown board 'NOPE'"):
        smoke.choose_expected("NOPE", dist=tmp_path)
    write_placeholder_build(tmp_path, "ESP8266_GENERIC")
    assert smoke.choose_expected("ESP8266_GENERIC", dist=tmp_path).source.endswith("build.json")
    with pytest.raises(smoke.SmokeError, match="--board-file takes --board NAME"):
        smoke.choose_expected("UNIX", dist=tmp_path, board_file=True)
    with pytest.raises(smoke.SmokeError, match="release v9.9.9: no index.json"):
        smoke.choose_expected("UNIX", dist=tmp_path, release="9.9.9")
