"""A real ESP8266 image, built natively here: Debian's gcc-xtensa-lx106 + the SDK folder that
`invoke setup --ports esp8266` prepares in the cache. Then flashed onto an ESP8266 ROM-protocol
peer (esp32-mock-bootloader, which speaks the ESP8266 ROM protocol) and released.

Skips (one line) without the compiler, the prepared SDK or the checkout's esp8266 submodules.
The builds run in a copy of the project (boards, ports, modules, manifest.py) so that editing a
module or growing the stack never touches this repository; the first build is a clean one.
"""

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

from workshop import build, buildinfo, check, config, elf, release, source

REPO = Path(__file__).resolve().parents[3]
BOARD = "ESP8266_GENERIC"
sys.path.insert(0, str(REPO / "tests" / "host" / "flash"))
sys.path.insert(0, str(REPO / "tests" / "host" / "release"))


def esp8266_skip_reason() -> str | None:
    """Why the native ESP8266 build cannot run here (None: it can)."""
    if not shutil.which("xtensa-lx106-elf-gcc"):
        return "no xtensa-lx106-elf-gcc (apt-get install gcc-xtensa-lx106 binutils-xtensa-lx106 picolibc-xtensa-lx106-elf)"
    try:
        source.native_toolchain(config.load_port("esp8266"))
        source.locate(None, ["esp8266"])
    except source.SourceError as e:
        return str(e).split(": run")[0] + ": invoke setup --ports esp8266"
    return None


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("project")
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "manifest.py", root / "manifest.py")
    return root


@pytest.fixture(scope="module")
def checkout() -> source.Checkout:
    reason = esp8266_skip_reason()
    if reason:
        pytest.skip(reason)
    return source.locate(None, ["esp8266"])


def _plan(project: Path, checkout: source.Checkout) -> build.BuildPlan:
    # The build tree beside the project copy (not the user cache): it goes with the test's tmp folder.
    return build.plan(config.get_board(BOARD, project), checkout, "native", root=project, dist=project / "dist",
                      cache=project.parent / "cache")


@pytest.fixture(scope="module")
def built(project: Path, checkout: source.Checkout) -> tuple[build.BuildPlan, build.BuildResult]:
    p = _plan(project, checkout)
    assert not p.build_dir.exists()                       # a clean build, as on a fresh machine
    result = build.run(p)
    assert result.status == "built", result.error and (result.log.read_text()[-4000:] if result.log else result.error)
    return p, result


def _ld_regions(checkout: source.Checkout) -> dict[str, tuple[int, int]]:
    """MEMORY regions as MicroPython's 2 MiB linker script writes them ('len = 1M - 36K')."""
    text = (checkout.path / "ports" / "esp8266" / "boards" / "esp8266_2MiB.ld").read_text()
    units = {"K": 1024, "M": 1024 * 1024}
    out = {}
    for name, org, length in re.findall(r"(\w+_seg)\s*:\s*org = (0x[0-9a-fA-F]+), len = ([^\n]+)", text):
        value = re.sub(r"(\d+)([KM])", lambda m: str(int(m.group(1)) * units[m.group(2)]), length)
        out[name] = (int(org, 16), int(eval(value, {"__builtins__": {}})))   # "1048576 - 36864"
    return out


def test_invoke_boards_shows_the_native_toolchain_once_prepared(checkout):
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "boards", "--json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in json.loads(proc.stdout) if r["board"] == BOARD)
    assert (row["toolchain"], row["toolchain_reason"]) == ("native", "native: xtensa-lx106-elf-gcc, make on PATH")


def test_the_image_links_and_build_json_says_what_built_it(built, checkout):
    p, result = built
    info = buildinfo.read_build_info(p.board_dist)       # verifies every artifact's sha256
    assert info == result.info
    assert (info.board, info.port, info.chip, info.toolchain, info.toolchain_image) == (BOARD, "esp8266", "esp8266",
                                                                                         "native", None)
    gcc = subprocess.run(["xtensa-lx106-elf-gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    assert info.compiler == gcc
    assert info.extra["native"]["stamp"]["sources"]["ESP8266_NONOS_SDK"].endswith("@61248df5f6d45d130313b412f7492f581fd4cadf")
    firmware = p.board_dist / "firmware.bin"
    assert firmware.read_bytes()[0] == 0xE9                # an ESP8266 ROM image
    assert [(a.file, a.offset, a.flash) for a in info.artifacts] == [
        ("firmware.bin", 0, True), ("firmware.elf", None, False), ("firmware.map", None, False)]
    assert 500_000 < firmware.stat().st_size < 1_000_000


def test_the_budget_in_build_json_is_what_xtensa_size_reports(built, checkout):
    p, result = built
    regions = _ld_regions(checkout)
    sections = subprocess.run(["xtensa-lx106-elf-size", "-A", str(p.board_dist / "firmware.elf")],
                              capture_output=True, text=True, check=True).stdout
    used = dict.fromkeys(regions, 0)
    for name, size, addr in re.findall(r"^(\.\S+)\s+(\d+)\s+(\d+)$", sections, re.M):
        for region, (org, length) in regions.items():
            if int(addr) and org <= int(addr) < org + length:
                used[region] += int(size)
    budget = result.info.budget
    names = {"irom0": "irom0_0_seg", "iram": "iram1_0_seg", "dram": "dram0_0_seg"}
    board = config.get_board(BOARD)
    for ours, linker in names.items():
        assert budget[ours] == {"region": linker, "used": used[linker], "size": regions[linker][1],
                                "free": regions[linker][1] - used[linker], "margin": board.margins[ours]}, ours
    # Every figure is a real one: code in flash, in IRAM, and static RAM (.data + .rodata + .bss).
    assert budget["irom0"]["used"] > 400_000 and budget["iram"]["used"] > 20_000 and budget["dram"]["used"] > 40_000


def test_every_stack_module_is_in_the_linked_image_exactly_once(built, checkout, project):
    p, result = built
    linked = elf.frozen_names(p.board_dist / "firmware.elf")
    stack = [f.target for f in check.resolve(config.get_board(BOARD, project), checkout)
             if f.source.resolve().is_relative_to((project / "modules").resolve())]
    assert {"umqtt/simple.py", "umqtt/robust.py", "urequests.py", "requests.py", "base64.py", "ntptime.py",
            "wifi.py", "mdns.py", "telnet.py", "webserver.py", "workshop_boot.py"} <= set(stack)
    for target in stack + ["_workshop_build.py"]:
        assert linked.count(target) == 1, target
    assert sorted(linked) == sorted(result.info.frozen_modules)     # build.json lists what the ELF holds
    # The stock copies the port manifest replaces are gone (one umqtt, one requests).
    assert len(linked) == len(set(linked))


def test_a_module_the_manifest_lists_but_the_image_lacks_fails_the_build(built, checkout, project):
    """The frozen list is checked against the linked ELF, not only frozen_content.c: here the
    manifest names one more module than the image that was linked holds."""
    p, result = built
    manifest = project / "manifest.py"
    text = manifest.read_text()
    (project / "modules" / "late.py").write_text("x = 1\n")
    manifest.write_text(text + '\nmodule("late.py", base_path="modules")\n')
    try:
        with pytest.raises(build.BuildError, match=r"^ESP8266_GENERIC: the manifest freezes late.py but the linked "
                                                    r"firmware.elf lacks it$"):
            build.check_frozen(p, result.info.frozen_modules)
    finally:
        manifest.write_text(text)
        (project / "modules" / "late.py").unlink()
    build.check_frozen(p, result.info.frozen_modules)       # as built: consistent


def test_check_shows_the_budget_of_the_last_build(built, checkout, project):
    p, result = built
    r = check.check_board(config.get_board(BOARD, project), checkout, project, dist=p.dist_dir)
    assert r.ok and r.budget == result.info.budget and r.budget_built_at == result.info.built_at


def test_a_second_build_is_up_to_date(built, project, checkout):
    ran: list = []
    again = build.run(_plan(project, checkout), runner=lambda argv, **kw: ran.append(argv))
    assert again.status == "up to date" and ran == []


def test_flash_writes_the_real_image_onto_an_esp8266_rom_peer(built, tmp_path):
    """invoke flash --board ESP8266_GENERIC onto esp32-mock-bootloader's ESP8266 (4 MB flash),
    read back byte for byte: esptool's `--flash-size detect` rewrites the header's size nibble."""
    from esptool.targets import CHIP_DEFS
    from flash_peers import MockFarm

    p, _ = built
    farm = MockFarm(tmp_path / "mocks")
    farm.root.mkdir()
    try:
        device = farm.start("esp8266")
        proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "flash", "--board", BOARD,
                               "--dist", str(p.dist_dir), "--ports", device.port, "--logs", str(tmp_path / "logs"),
                               "--report", str(tmp_path / "report.json")],
                              capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "COLUMNS": "200"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        assert [(d["ok"], d["verified"]) for d in report["devices"]] == [(True, True)]
        image = bytearray((p.board_dist / "firmware.bin").read_bytes())
        flash = device.flash()
    finally:
        farm.close()
    size_code = CHIP_DEFS["esp8266"].FLASH_SIZES["4MB"]       # what detect finds on the mock's 4 MB flash
    assert flash[3] >> 4 == size_code >> 4
    image[3] = (image[3] & 0x0F) | size_code
    assert flash[:len(image)] == bytes(image)
    assert flash[len(image):len(image) + 4096] == b"\xff" * 4096       # nothing written past the image


def test_release_of_the_real_image(built, project, tmp_path):
    """Names, SHA256SUMS, index.json and the ESP Web Tools manifest all refer to the real file, as
    released: with the board's flash size (2MB) in its header, which elf2image left at 1MB (ESP
    Web Tools keeps the header, and MicroPython then finds no room for its filesystem)."""
    from esptool.targets import CHIP_DEFS
    from placeholders import make_fake_web_tools

    p, result = built
    out = tmp_path / "release" / "v0.1.0"
    rel = release.make_release("v0.1.0", boards=[BOARD], root=project, dist=p.dist_dir, out=out,
                               web_tools=make_fake_web_tools(tmp_path / "ewt"), tree_dirty=lambda: None,
                               allow_dirty=True)
    built_image = (p.board_dist / "firmware.bin").read_bytes()
    real = bytes([*built_image[:3], (built_image[3] & 0x0F) | CHIP_DEFS["esp8266"].FLASH_SIZES["2MB"], *built_image[4:]])
    digest = hashlib.sha256(real).hexdigest()
    date = result.info.built_at[:10].replace("-", "")
    name = f"{BOARD}-{date}-v1.28.0-v0.1.0.bin"
    assert (out / name).read_bytes() == real
    sums = dict(reversed(line.split("  ", 1)) for line in (out / "SHA256SUMS").read_text().splitlines())
    assert sums[name] == digest
    proc = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    index = json.loads((out / "index.json").read_text())
    entry = next(b for b in index["boards"] if b["board"] == BOARD)
    image = next(f for f in entry["files"] if f["name"] == name)
    assert (image["sha256"], image["size"], image["offset"]) == (digest, len(real), 0)
    assert entry["inputs_sha256"] == result.info.inputs_sha256
    manifest = json.loads((out / release.manifest_name(BOARD)).read_text())
    assert manifest["builds"][0]["chipFamily"] == "ESP8266"
    assert manifest["builds"][0]["parts"] == [{"path": name, "offset": 0}]
    assert rel.board(BOARD).files


def test_editing_one_module_rebuilds(built, project, checkout):
    p, first = built
    module = project / "modules" / "base64.py"
    text = module.read_text()
    module.write_text(text + "\n\ndef _workshop_test_marker():\n    return 'rebuilt'\n")
    try:
        again = build.run(_plan(project, checkout))
        assert again.status == "built", again.error
        assert again.info.inputs_sha256 != first.info.inputs_sha256
        assert again.info.artifacts[0].sha256 != first.info.artifacts[0].sha256
        assert b"_workshop_test_marker" in (again.info and (p.board_dist / "firmware.bin").read_bytes())
    finally:
        module.write_text(text)


def test_a_stack_grown_past_the_margin_fails_with_the_numbers_and_keeps_the_last_image(built, project, checkout):
    p, _ = built
    last = buildinfo.read_build_info(p.board_dist)
    board_file = project / "boards" / f"{BOARD}.toml"
    board_text = board_file.read_text()
    # The margin sits 8 KB below what is free now; the stack then grows by ~24 KB of bytecode.
    free = last.budget["irom0"]["free"]
    board_file.write_text(board_text.replace("irom0 = 65536", f"irom0 = {free - 8192}"))
    module = project / "modules" / "base64.py"
    text = module.read_text()
    blob = ", ".join(repr(f"{i:05d}" * 8) for i in range(600))
    module.write_text(text + f"\n_GROWN = ({blob},)\n")
    try:
        result = build.run(_plan(project, checkout))
        assert result.status == "failed"
        m = re.search(r"irom0 ([\d,]+) / ([\d,]+) B \(([\d,]+) B free, margin ([\d,]+) B\)", result.error or "")
        assert m, result.error
        used, size, left, margin = (int(g.replace(",", "")) for g in m.groups())
        assert size == last.budget["irom0"]["size"] and margin == free - 8192
        assert used > last.budget["irom0"]["used"] + 8192 and left == size - used < margin
        assert f"the image leaves less than the board's margin free" in result.error
        # The last good image is still there, and the failure says so.
        assert buildinfo.read_build_info(p.board_dist) == last
        assert "dist/ESP8266_GENERIC/ still holds the previous image" in result.error
    finally:
        module.write_text(text)
        board_file.write_text(board_text)
