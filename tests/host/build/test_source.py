"""`invoke setup`: the pinned MicroPython checkout, made from a mirror and verified."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from workshop import source

REPO = Path(__file__).resolve().parents[3]


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def test_no_network_is_one_line_that_says_what_to_do(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "invoke", "setup", "--ports", "unix",
                           "--git-url", str(tmp_path / "offline" / "{owner}+{name}")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: cannot fetch ") and "set WORKSHOP_GIT_URL to a mirror" in errors[0]
    assert not (tmp_path / "cache" / "micropython-v1.28.0").exists()           # nothing half-made
    assert not (tmp_path / "cache" / "micropython-v1.28.0.partial").exists()


def test_missing_checkout_says_run_setup(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    with pytest.raises(source.SourceError, match=r"no MicroPython checkout at .*: run 'invoke setup' \(needs network\) "
                                                 r"or pass --micropython PATH or set WORKSHOP_MICROPYTHON"):
        source.locate()


@pytest.fixture
def mirror(mp_checkout, tmp_path: Path) -> str:
    """A mirror laid out like '{owner}+{name}', made of the cached checkout and its submodules."""
    root = tmp_path / "mirror"
    root.mkdir()
    for name, path in {"micropython+micropython": mp_checkout.path,
                       "micropython+micropython-lib": mp_checkout.path / "lib" / "micropython-lib",
                       "Mbed-TLS+mbedtls": mp_checkout.path / "lib" / "mbedtls"}.items():
        (root / name).symlink_to(path)
    return str(root / "{owner}+{name}")


def test_setup_from_a_mirror_gives_a_pinned_checkout_with_only_the_needed_submodules(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    events: list[str] = []
    checkout = source.setup(["unix"], url_template=mirror, on_event=events.append)
    assert checkout.path == tmp_path / "cache" / "micropython-v1.28.0"
    assert (checkout.commit, checkout.version, checkout.pinned, checkout.dirty) == (
        source.MICROPYTHON_COMMIT, "v1.28.0", True, False)
    for sub in ("lib/micropython-lib", "lib/mbedtls"):
        assert _git("rev-parse", "HEAD", cwd=checkout.path / sub) == source.submodule_commit(checkout.path, sub)
    assert not (checkout.path / "lib" / "mbedtls" / "tests").exists()           # submodule test suites left out
    assert (checkout.path / "lib" / "mbedtls" / "library" / "ssl_tls.c").is_file()
    assert not list((checkout.path / "lib" / "berkeley-db-1.xx").iterdir())    # not needed by unix
    assert events[0].startswith("cloning MicroPython v1.28.0 from ")

    # A second setup has nothing to do.
    again: list[str] = []
    assert source.setup(["unix"], url_template=mirror, on_event=again.append) == checkout and again == []

    # A submodule moved off its pin is caught, and setup puts it back.
    mplib = checkout.path / "lib" / "micropython-lib"
    _git("-c", "advice.detachedHead=false", "checkout", "-q", "HEAD~1", cwd=mplib)
    with pytest.raises(source.SourceError, match=r"submodule lib/micropython-lib is at [0-9a-f]{10}, "
                                                 r"MicroPython pins 8380c7bb8f: run 'invoke setup --ports unix'"):
        source.locate(None, ["unix"])
    source.setup(["unix"], url_template=mirror)
    assert source.locate(None, ["unix"]).pinned


def test_default_checkout_must_be_the_pinned_release(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    checkout = source.setup(["unix"], url_template=mirror)
    _git("-c", "advice.detachedHead=false", "checkout", "-q", "v1.27.0", cwd=checkout.path)
    with pytest.raises(source.SourceError, match=r"is MicroPython v1.27.0 \([0-9a-f]{10}\), expected v1.28.0: "
                                                 r"delete it and run 'invoke setup'"):
        source.locate(None, ["unix"], submodules=[])
    # The same tree named explicitly is accepted as "another checkout", and says it is not pinned.
    other = source.locate(checkout.path, ["unix"], submodules=[])
    assert other.version == "v1.27.0" and not other.pinned
    monkeypatch.setenv("WORKSHOP_MICROPYTHON", str(checkout.path))
    assert source.locate(None, ["unix"], submodules=[]) == other


# --- the native ESP8266 toolchain (the SDK folder esp-open-sdk assembles) ----------------------


@pytest.fixture
def sdk_sources() -> str:
    """A URL template that has the ESP8266 SDK sources (fetched code: never in the repo)."""
    from workshop import config

    template = os.environ.get(source.ENV_GIT_URL)
    if not template:
        pytest.skip(f"no mirror of the ESP8266 SDK sources: set {source.ENV_GIT_URL}")
    for s in config.load_port("esp8266").native.sources:
        url = source.git_url(s.owner, s.repo, template)
        if subprocess.run(["git", "ls-remote", url], capture_output=True).returncode != 0:
            pytest.skip(f"{url}: not reachable, so the ESP8266 SDK cannot be prepared")
    if not shutil.which("xtensa-lx106-elf-gcc"):
        pytest.skip("no xtensa-lx106-elf-gcc (apt-get install gcc-xtensa-lx106 binutils-xtensa-lx106 picolibc-xtensa-lx106-elf)")
    return template


def test_setup_prepares_the_esp8266_sdk_folder_the_way_esp_open_sdk_does(sdk_sources, tmp_path, monkeypatch):
    from workshop import config

    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    port = config.load_port("esp8266")
    events: list[str] = []
    tc = source.prepare_toolchain(port, sdk_sources, on_event=events.append)
    assert tc is not None and tc.path == source.toolchain_path(port) and tc.path.is_relative_to(tmp_path / "cache")
    sdk = tc.sdk
    # esp-open-sdk's sdk_patch for 2.1.0-18-g61248df: the version define, the C99 c_types patch,
    # libcrypto merged into libwpa, user_rf_cal_sector_set.o in libmain.
    assert (sdk / "include" / "esp_sdk_ver.h").read_text().endswith("#define ESP_SDK_VERSION 020100\n")
    assert "#include <stdint.h>" in (sdk / "include" / "c_types.h").read_text()
    members = lambda lib: set(_git_free(["xtensa-lx106-elf-ar", "t", str(sdk / "lib" / lib)]).split())
    assert members("libcrypto.a") <= members("libwpa.a")
    assert "user_rf_cal_sector_set.o" in members("libmain.a")
    # esp-open-lwip built with the lx106 gcc, its headers beside the SDK's; lx106-hal's headers.
    assert {"tcp.o", "dhcpserver.o", "espconn_dummy.o"} <= members("liblwip_open.a")
    for header in ("lwipopts.h", "lwip/tcp.h", "arch/cc.h", "netif/etharp.h", "xtensa/config/core-isa.h"):
        assert (sdk / "include" / header).is_file(), header
    assert not (sdk / "lib" / "libc.a").exists()            # MicroPython links its own libc
    # esptool 3.3.1 for elf2image in its own venv, not the host's esptool 5.
    version = subprocess.run([str(tc.python_bin / "python"), "-m", "esptool", "version"], capture_output=True, text=True)
    assert "3.3.1" in version.stdout
    assert tc.stamp["sources"] == {s.name: f"{s.owner}/{s.repo}@{s.commit}" for s in port.native.sources}
    assert tc.stamp["compiler"].startswith("xtensa-lx106-elf-gcc")
    assert any(e.startswith("fetching ESP8266_NONOS_SDK at 61248df5f6") for e in events)
    # Prepared once: a second setup has nothing to do, and it is what builds find.
    again: list[str] = []
    assert source.prepare_toolchain(port, sdk_sources, on_event=again.append) == tc and again == []
    assert source.native_toolchain(port) == tc


def _git_free(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def test_a_failed_prepare_leaves_nothing_that_looks_prepared(tmp_path, monkeypatch):
    from workshop import config

    if not shutil.which("xtensa-lx106-elf-gcc"):
        pytest.skip("no xtensa-lx106-elf-gcc (apt-get install gcc-xtensa-lx106)")
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    port = config.load_port("esp8266")
    with pytest.raises(source.SourceError, match=r"^preparing the esp8266 toolchain failed: cannot fetch .*offline"):
        source.prepare_toolchain(port, str(tmp_path / "offline" / "{owner}+{name}"))
    assert not source.toolchain_path(port).exists()
    assert not source.toolchain_path(port).with_name(source.toolchain_path(port).name + ".partial").exists()
    with pytest.raises(source.SourceError, match="run 'invoke setup --ports esp8266'"):
        source.native_toolchain(port)


def test_setup_without_the_compiler_names_it_and_prepares_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    events: list[str] = []
    source.prepare_toolchains(["unix", "esp8266"], on_event=events.append)
    assert events == ["esp8266: no xtensa-lx106-elf-gcc on PATH, so no native toolchain to prepare "
                      "(Docker builds still work)"]
    assert not (tmp_path / "cache").exists()


def test_setup_check_fails_when_the_sdk_could_be_prepared_but_is_not(tmp_path, monkeypatch):
    """`setup --check` (what ./kit build runs first) must not pass while the SDK is missing."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "xtensa-lx106-elf-gcc").write_text("#!/bin/sh\necho 'xtensa-lx106-elf-gcc (test) 12.2.0'\n")
    (bin_dir / "xtensa-lx106-elf-gcc").chmod(0o755)
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(source.SourceError, match=r"no prepared esp8266 toolchain at .*esp8266-toolchain-[0-9a-f]{10}: "
                                                 r"run 'invoke setup --ports esp8266'"):
        source.prepare_toolchains(["unix", "esp8266"], check=True)


def test_one_tree_probe_for_build_release_and_locate(tmp_path):
    """source.tree_changes is the one "is this tree dirty" probe: build records it, release
    refuses on it (untracked files count there), locate marks a modified checkout."""
    from workshop import release

    repo = tmp_path / "repo"
    repo.mkdir()
    _git("init", "-q", cwd=repo)
    (repo / "a.txt").write_text("a\n")
    _git("add", "a.txt", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-q", "-m", "a", cwd=repo)
    assert source.tree_changes(repo) == [] and release.git_tree_dirty(repo) is None
    (repo / "new.txt").write_text("untracked\n")
    assert source.tree_changes(repo) == []                                  # build/locate: tracked files only
    assert source.tree_changes(repo, untracked=True) == ["?? new.txt"]
    assert release.git_tree_dirty(repo) == "uncommitted changes: new.txt"  # release: everything counts
    (repo / "a.txt").write_text("changed\n")
    assert source.tree_changes(repo) == [" M a.txt"]
    with pytest.raises(source.SourceError, match=r"is not a git work tree"):
        source.tree_changes(tmp_path / "elsewhere")
    assert release.git_tree_dirty(tmp_path).startswith(f"{tmp_path} is not a git work tree")


def test_a_port_whose_sources_cannot_be_fetched_does_not_stop_the_others(mirror, tmp_path, monkeypatch):
    """esp32 needs berkeley-db (its boards build btree), which this mirror lacks: setup says so
    for esp32 in one line and still completes unix."""
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(source.SourceError) as e:
        source.setup(["esp32", "unix"], url_template=mirror)
    assert len(str(e.value).splitlines()) == 1
    assert str(e.value).startswith("esp32: cannot fetch ") and "berkeley-db-1.xx" in str(e.value)
    assert source.locate(None, ["unix"]).pinned                 # unix is ready all the same


def test_each_local_change_of_the_checkout_is_another_build(mirror, tmp_path, monkeypatch):
    """The inputs key held only "dirty": a second edit of an already modified checkout built
    nothing ("up to date", the image without the edit), and an edit inside lib/micropython-lib
    did not count at all. The key now holds the changes themselves, submodules' included."""
    from workshop import build, config

    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    checkout = source.setup(["unix"], url_template=mirror)
    board = config.get_board("UNIX")

    def key() -> str:
        now = source.locate(None, ["unix"])
        return build.plan(board, now, "native", jobs=1, cache=tmp_path / "cache").inputs_sha256

    clean = key()
    funcs = checkout.path / "extmod" / "asyncio" / "funcs.py"
    mip = checkout.path / "lib" / "micropython-lib" / "micropython" / "mip" / "mip" / "__init__.py"
    original, original_mip = funcs.read_bytes(), mip.read_bytes()
    funcs.write_bytes(original + b"WS_EDIT = 1\n")
    first = key()
    funcs.write_bytes(original + b"WS_EDIT = 2\n")
    second = key()
    mip.write_bytes(original_mip + b"WS_LIB = 3\n")
    in_submodule = key()
    assert len({clean, first, second, in_submodule}) == 4
    assert source.locate(None, ["unix"]).dirty
    funcs.write_bytes(original)
    mip.write_bytes(original_mip)
    assert key() == clean and not source.locate(None, ["unix"]).dirty


def _other_repo(path: Path) -> Path:
    """A git repository with one commit of its own: a mirror that lacks the pinned commit."""
    path.mkdir(parents=True)
    _git("init", "-q", cwd=path)
    (path / "README").write_text("not the pinned commit\n")
    _git("add", "README", cwd=path)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "other", cwd=path)
    return path


def test_a_mirror_without_the_pinned_commit_says_so_and_leaves_the_submodule_missing(mirror, tmp_path, monkeypatch):
    """The mirror has berkeley-db-1.xx, but not the commit MicroPython pins: the error names the
    commit and the mirror (not "check the network"), and `setup --check` then says the submodule is
    missing (not "at <the mirror's branch>", which a half-made clone would claim)."""
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    _other_repo(Path(mirror.replace("{owner}+{name}", "micropython+berkeley-db-1.xx")))
    with pytest.raises(source.SourceError) as e:
        source.setup(["esp32"], url_template=mirror)
    message = str(e.value)
    assert len(message.splitlines()) == 1, message
    pin = source.submodule_commit(tmp_path / "cache" / "micropython-v1.28.0", "lib/berkeley-db-1.xx")
    assert f"it has no commit {pin[:10]}, the one MicroPython v1.28.0 pins for lib/berkeley-db-1.xx" in message
    assert "check the network" not in message and "set WORKSHOP_GIT_URL to a mirror that has it" in message
    with pytest.raises(source.SourceError, match=r"submodule lib/berkeley-db-1.xx \(needed by esp32\) is missing"):
        source.locate(None, ["esp32"])


def test_a_mirror_folder_that_is_not_there_is_named_as_such(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(source.SourceError) as e:
        source.setup(["unix"], url_template=str(tmp_path / "nowhere" / "{owner}+{name}"))
    message = str(e.value)
    assert f"cannot fetch {tmp_path}/nowhere/micropython+micropython: no such mirror folder" in message, message
    assert "check the network" not in message


def test_a_misspelt_port_is_refused_before_anything_is_cloned(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path / "cache"))
    events: list[str] = []
    from workshop.config import ConfigError

    with pytest.raises(ConfigError, match=r"no such port 'esp33'"):
        source.setup(["unix", "esp33"], url_template=str(tmp_path / "m" / "{owner}+{name}"), on_event=events.append)
    assert events == [] and not (tmp_path / "cache").exists()
