"""BuildPlan is pure: the exact commands each port's build runs, asserted without Docker or make."""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

from workshop import build, config, source

REPO = Path(__file__).resolve().parents[3]
MP = Path("/src/micropython")
CHECKOUT = source.Checkout(MP, source.MICROPYTHON_COMMIT, "v1.28.0", dirty=False, pinned=True)
CACHE = Path("/cache")


def make_plan(board: str, toolchain: str, root: Path = REPO, **kw) -> build.BuildPlan:
    b = config.get_board(board, root)
    kw.setdefault("jobs", 4)
    kw.setdefault("uid_gid", (1000, 1000))
    return build.plan(b, kw.pop("checkout", CHECKOUT), toolchain, root=root, cache=CACHE, **kw)


def test_esp32_docker_plan_is_micropython_ci_in_espressif_idf():
    p = make_plan("ESP32_GENERIC_S3", "docker")
    bdir = build.build_dir_for(config.get_board("ESP32_GENERIC_S3"), REPO, CACHE)
    mounts = []
    for m in (MP, REPO, bdir):
        mounts += ["-v", f"{m}:{m}"]
    def docker(step: str) -> list[str]:
        return ["docker", "run", "--rm", "--name", f"workshop-{bdir.name}-{step}", "--user", "1000:1000",
                "-e", "HOME=/tmp", "-e", f"MICROPY_MPYCROSS={bdir}/mpy-cross/mpy-cross",
                "-e", f"WORKSHOP_BUILD_IDENTITY={bdir}/identity", *mounts, "-w", str(MP), "espressif/idf:v5.5.1"]
    assert [list(s.argv) for s in p.steps] == [
        docker("mpy-cross") + ["make", "-j4", "-C", f"{MP}/mpy-cross", f"BUILD={bdir}/mpy-cross"],
        docker("esp32") + ["make", "-j4", "-C", f"{MP}/ports/esp32", "BOARD=ESP32_GENERIC_S3",
                           f"FROZEN_MANIFEST={REPO}/ports/esp32/manifest.py", f"BUILD={bdir}"],
    ]
    # Named so that a stopped build can kill its container (the client's end is not the container's)
    assert [s.container for s in p.steps] == [f"workshop-{bdir.name}-mpy-cross", f"workshop-{bdir.name}-esp32"]
    assert p.toolchain == "docker" and p.image == "espressif/idf:v5.5.1"
    assert p.board_dist == REPO / "dist" / "ESP32_GENERIC_S3"
    assert bdir.is_relative_to(CACHE)  # build trees live outside the repository


def test_esp8266_docker_plan_uses_esp_open_sdk_and_image_override():
    p = make_plan("ESP8266_GENERIC", "docker")
    assert p.steps[1].argv[p.steps[1].argv.index("-w") + 3:][:5] == (
        "make", "-j4", "-C", f"{MP}/ports/esp8266", "BOARD=ESP8266_GENERIC")
    assert "larsks/esp-open-sdk" in p.steps[0].argv
    custom = make_plan("ESP8266_GENERIC", "docker", image="registry.local/esp-open-sdk:2024")
    assert "registry.local/esp-open-sdk:2024" in custom.steps[1].argv and "larsks/esp-open-sdk" not in custom.steps[1].argv
    assert custom.inputs_sha256 != p.inputs_sha256  # another toolchain image is another build


def test_native_plans_run_the_same_make_without_docker():
    unix = make_plan("UNIX", "native")
    bdir = build.build_dir_for(config.get_board("UNIX"), REPO, CACHE)
    port_args = tomllib.loads((REPO / "ports" / "unix" / "port.toml").read_text())["make"]["args"]
    assert [arg.split()[0] for arg in port_args] == ["CFLAGS_EXTRA=-DMICROPY_PY_OS_DUPTERM=1"]  # the boards' Python
    assert [list(s.argv) for s in unix.steps] == [
        ["make", "-j4", "-C", f"{MP}/mpy-cross", f"BUILD={bdir}/mpy-cross"],
        ["make", "-j4", "-C", f"{MP}/ports/unix", "VARIANT=standard",
         f"FROZEN_MANIFEST={REPO}/ports/unix/manifest.py", f"BUILD={bdir}", *port_args, "MICROPY_PY_BTREE=0"],
    ]
    assert all(dict(s.env) == {"MICROPY_MPYCROSS": f"{bdir}/mpy-cross/mpy-cross",
                               "WORKSHOP_BUILD_IDENTITY": f"{bdir}/identity"} for s in unix.steps)
    esp32 = make_plan("ESP32_GENERIC", "native", compiler="ESP-IDF v5.5.1")
    assert esp32.steps[1].argv[:5] == ("make", "-j4", "-C", f"{MP}/ports/esp32", "BOARD=ESP32_GENERIC")
    assert esp32.image is None and not esp32.mounts


def test_auto_toolchain_prefers_native_then_docker_else_says_why():
    b = config.get_board("ESP32_GENERIC")
    have_idf = lambda tool: {"idf.py": "/opt/idf/idf.py", "make": "/usr/bin/make"}.get(tool)
    assert build.toolchain_status(b, which=have_idf, docker_reason="no docker engine running").kind == "native"
    nothing = lambda tool: None
    assert build.toolchain_status(b, which=nothing, docker_reason=None).kind == "docker"
    none = build.toolchain_status(b, which=nothing, docker_reason="no docker engine running")
    assert none.kind is None and none.reason == "no docker engine running; no idf.py, make on PATH"
    with pytest.raises(build.BuildError, match=r"ESP32_GENERIC: no toolchain here: no docker engine running; "
                                                r"no idf.py, make on PATH \(force one with --toolchain docker\|native\)"):
        build.plan(b, CHECKOUT, "auto", status=none)


def test_image_without_docker_and_unknown_toolchain_are_refused():
    with pytest.raises(build.BuildError, match="--image needs --toolchain docker"):
        make_plan("UNIX", "native", image="x")
    # With auto, an image asked for means Docker, whatever is on PATH.
    native_here = build.ToolchainStatus("native", "native: xtensa-lx106-elf-gcc on PATH")
    p = make_plan("ESP8266_GENERIC", "auto", image="my/esp-open-sdk:latest", status=native_here)
    assert p.toolchain == "docker" and "my/esp-open-sdk:latest" in p.steps[1].argv
    with pytest.raises(build.BuildError, match="toolchain must be one of auto, docker, native, got 'podman'"):
        make_plan("UNIX", "podman")
    with pytest.raises(build.BuildError, match="port unix has no Docker image"):
        make_plan("UNIX", "docker")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("boards", "ports", "modules"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "*.mpy"))
    shutil.copy(REPO / "manifest.py", tmp_path / "manifest.py")
    return tmp_path


def _key(project: Path, board: str = "ESP32_GENERIC", **kw) -> str:
    return make_plan(board, "docker" if board != "UNIX" else "native", root=project, **kw).inputs_sha256


def test_cache_key_changes_with_each_input_and_only_then(project: Path):
    base = _key(project)
    assert _key(project) == base  # nothing changed
    assert make_plan("ESP32_GENERIC", "docker", root=project, jobs=1).inputs_sha256 == base  # -j is not an input
    assert make_plan("ESP32_GENERIC", "docker", root=project, uid_gid=(501, 20)).inputs_sha256 == base

    def changed(edit) -> str:
        edit()
        return _key(project)

    seen = {base}
    edits = {
        "a module": lambda: (project / "modules" / "base64.py").write_text(
            (project / "modules" / "base64.py").read_text() + "\n# edited\n"),
        "a module in a package": lambda: (project / "modules" / "umqtt" / "simple.py").write_text(
            (project / "modules" / "umqtt" / "simple.py").read_text() + "\n"),
        "a new module file": lambda: (project / "modules" / "extra.py").write_text("x = 1\n"),
        "the stack manifest": lambda: (project / "manifest.py").write_text((project / "manifest.py").read_text() + "\n"),
        "the port manifest": lambda: (project / "ports" / "esp32" / "manifest.py").write_text(
            (project / "ports" / "esp32" / "manifest.py").read_text() + "\n"),
        "port data": lambda: (project / "ports" / "esp32" / "port.toml").write_text(
            (project / "ports" / "esp32" / "port.toml").read_text() + "\n# note\n"),
        "board data": lambda: (project / "boards" / "ESP32_GENERIC.toml").write_text(
            (project / "boards" / "ESP32_GENERIC.toml").read_text().replace("60000", "61000")),
    }
    for what, edit in edits.items():
        key = changed(edit)
        assert key not in seen, f"changing {what} did not change the cache key"
        seen.add(key)
    other_commit = source.Checkout(MP, "0" * 40, "v1.28.0-1-g0000000", False, False)
    assert _key(project, checkout=other_commit) not in seen
    dirty = source.Checkout(MP, source.MICROPYTHON_COMMIT, "v1.28.0", True, True)
    assert _key(project, checkout=dirty) not in seen
    assert _key(project, image="espressif/idf:v5.3") not in seen
    # Where things are is not an input: another checkout folder, cache folder or project clone.
    now = _key(project)
    moved = source.Checkout(Path("/elsewhere/mp"), source.MICROPYTHON_COMMIT, "v1.28.0", False, True)
    assert _key(project, checkout=moved) == now
    b = config.get_board("ESP32_GENERIC", project)
    assert build.plan(b, CHECKOUT, "docker", root=project, cache=Path("/other-cache"), uid_gid=(1000, 1000)).inputs_sha256 == now
    clone = project.parent / "clone"
    shutil.copytree(project, clone)
    assert _key(clone) == _key(project)
    # Another board's data is not an input of this one.
    before = _key(project)
    (project / "boards" / "ESP32_GENERIC_S3.toml").write_text(
        (project / "boards" / "ESP32_GENERIC_S3.toml").read_text().replace("80000", "81000"))
    assert _key(project) == before


def test_identity_folder_is_in_every_step_and_its_location_is_not_an_input():
    """The manifest freezes <build>/identity/_workshop_build.py when WORKSHOP_BUILD_IDENTITY names
    the folder: every step gets it (docker: as -e, the build tree is mounted at its own path), and
    another cache folder (so another identity path) gives the same key."""
    b = config.get_board("ESP32_GENERIC")
    keys = set()
    for cache in (CACHE, Path("/other-cache")):
        p = build.plan(b, CHECKOUT, "docker", root=REPO, cache=cache, jobs=4, uid_gid=(1000, 1000))
        bdir = build.build_dir_for(b, REPO, cache)
        assert build.identity_dir(bdir) == bdir / "identity" and bdir.is_relative_to(cache)
        for step in p.steps:
            argv = list(step.argv)
            i = argv.index(f"WORKSHOP_BUILD_IDENTITY={bdir}/identity")
            assert argv[i - 1] == "-e" and i < argv.index("-w") and step.env == ()
            assert f"{bdir}:{bdir}" in argv          # the folder is inside a mount, at its own path
        keys.add(p.inputs_sha256)
    native = set()
    for cache in (CACHE, Path("/other-cache")):
        p = build.plan(config.get_board("UNIX"), CHECKOUT, "native", root=REPO, cache=cache, jobs=4)
        bdir = build.build_dir_for(config.get_board("UNIX"), REPO, cache)
        assert all(dict(s.env)["WORKSHOP_BUILD_IDENTITY"] == f"{bdir}/identity" for s in p.steps)
        native.add(p.inputs_sha256)
    assert len(keys) == 1 and len(native) == 1


def test_identity_module_is_plain_assignments():
    text = build.identity_source("UNIX", "ab" * 32, "0.1.0")
    assert text == f'board = "UNIX"\ninputs = "{"ab" * 32}"\nproject = "0.1.0"\n'
    ns: dict = {}
    exec(text, ns)
    assert (ns["board"], ns["inputs"], ns["project"]) == ("UNIX", "ab" * 32, "0.1.0")


# --- the native ESP8266 toolchain --------------------------------------------------------------

TOOLCHAIN = source.NativeToolchain("esp8266", Path("/cache/esp8266-toolchain-x"),
                                   {"sources": {"ESP8266_NONOS_SDK": "espressif/ESP8266_NONOS_SDK@61248df"}})
GCC = "xtensa-lx106-elf-gcc (12.2.0-14+deb12u1+13+b2) 12.2.0"


def test_esp8266_native_plan_is_micropython_make_with_the_prepared_sdk():
    p = make_plan("ESP8266_GENERIC", "native", native=TOOLCHAIN, compiler=GCC)
    bdir = build.build_dir_for(config.get_board("ESP8266_GENERIC"), REPO, CACHE)
    sdk = "/cache/esp8266-toolchain-x/sdk"
    assert [list(s.argv) for s in p.steps] == [
        ["make", "-j4", "-C", f"{MP}/mpy-cross", f"BUILD={bdir}/mpy-cross"],
        ["make", "-j4", "-C", f"{MP}/ports/esp8266", "BOARD=ESP8266_GENERIC",
         f"FROZEN_MANIFEST={REPO}/ports/esp8266/manifest.py", f"BUILD={bdir}", "MICROPY_PY_BTREE=0",
         f"ESP_SDK={sdk}", "ESPTOOL=/cache/esp8266-toolchain-x/venv/bin/python -m esptool",
         f"CFLAGS_EXTRA=-I{REPO}/ports/esp8266/native -isystem {sdk}/include -fcommon -Wno-array-bounds "
         "-Wno-error=unused-const-variable -D__PICOLIBC_ERRNO_FUNCTION=__errno"],
    ]
    assert (p.toolchain, p.image, p.compiler, p.native) == ("native", None, GCC, TOOLCHAIN)
    # The same sources prepared in another cache folder are the same build; another compiler or
    # another prepared SDK is another one.
    moved = source.NativeToolchain("esp8266", Path("/other/esp8266-toolchain-x"), TOOLCHAIN.stamp)
    assert make_plan("ESP8266_GENERIC", "native", native=moved, compiler=GCC).inputs_sha256 == p.inputs_sha256
    assert make_plan("ESP8266_GENERIC", "native", native=TOOLCHAIN,
                     compiler=GCC.replace("12.2.0", "13.1.0")).inputs_sha256 != p.inputs_sha256
    other_sdk = source.NativeToolchain("esp8266", TOOLCHAIN.path, {"sources": {"ESP8266_NONOS_SDK": "x@0"}})
    assert make_plan("ESP8266_GENERIC", "native", native=other_sdk, compiler=GCC).inputs_sha256 != p.inputs_sha256
    # Docker keeps MicroPython's reference toolchain, with the same board settings.
    docker = make_plan("ESP8266_GENERIC", "docker")
    assert docker.compiler == "larsks/esp-open-sdk" and docker.native is None
    assert docker.steps[1].argv[-1] == "MICROPY_PY_BTREE=0" and not any("ESP_SDK" in a for a in docker.steps[1].argv)


def test_esp8266_native_without_a_prepared_sdk_says_run_setup(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    with pytest.raises(build.BuildError, match=r"ESP8266_GENERIC: no prepared esp8266 toolchain at .*: "
                                                r"run 'invoke setup --ports esp8266'"):
        make_plan("ESP8266_GENERIC", "native", compiler=GCC)
    b = config.get_board("ESP8266_GENERIC")
    gcc = lambda tool: "/usr/bin/" + tool
    status = build.toolchain_status(b, which=gcc, docker_reason="no docker engine running")
    assert status.kind is None and status.reason == (
        "no docker engine running; xtensa-lx106-elf-gcc, make on PATH but its SDK is not prepared "
        "(invoke setup --ports esp8266)")
    none = build.toolchain_status(b, which=lambda tool: None, docker_reason="no docker client")
    assert none.reason == "no docker client; no xtensa-lx106-elf-gcc, make on PATH"


def test_esp8266_native_with_a_prepared_sdk_is_auto(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    port = config.load_port("esp8266")
    folder = source.toolchain_path(port)
    folder.mkdir(parents=True)
    (folder / source.TOOLCHAIN_STAMP).write_text('{"recipe": "esp-open-sdk"}')
    gcc = lambda tool: "/usr/bin/" + tool
    status = build.toolchain_status(config.get_board("ESP8266_GENERIC"), which=gcc, docker_reason="no docker client")
    assert status.kind == "native"
    assert source.native_toolchain(port) == source.NativeToolchain("esp8266", folder, {"recipe": "esp-open-sdk"})


def test_an_esp32_native_build_is_keyed_by_the_esp_idf_it_runs_with(tmp_path: Path, monkeypatch):
    """Two ESP-IDF versions exported in the shell make two different images: the version
    `idf.py --version` gives is in the inputs key and build.json, as gcc's is for the ESP8266."""
    p = make_plan("ESP32_GENERIC", "native", compiler="ESP-IDF v5.5.1")
    assert p.compiler == "ESP-IDF v5.5.1"
    assert make_plan("ESP32_GENERIC", "native", compiler="ESP-IDF v5.4.2").inputs_sha256 != p.inputs_sha256
    # Asked of the idf.py on PATH when not given (an IDF's idf.py answers this first line).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    idf = bin_dir / "idf.py"
    idf.write_text("#!/bin/sh\necho 'ESP-IDF v5.5.1'\n")
    idf.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    assert make_plan("ESP32_GENERIC", "native").inputs_sha256 == p.inputs_sha256
    # An idf.py that is not set up (no exported environment: it fails) is named, with what to do.
    idf.write_text("#!/bin/sh\necho 'ERROR: ESP-IDF not set up' >&2\nexit 2\n")
    with pytest.raises(build.BuildError, match=r"ESP32_GENERIC: idf.py gives no --version: not on PATH, or not set "
                                               r"up \(install ESP-IDF and run its export.sh in this shell, or build "
                                               r"with --toolchain docker\)"):
        make_plan("ESP32_GENERIC", "native")
