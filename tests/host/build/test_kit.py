"""The ./kit script as a person runs it: what it hands to invoke, from which folder.

The kit's invoke is a recording wrapper around the real one (a venv named by WORKSHOP_VENV, so
nothing is installed): `build` and `setup` are only recorded (no fetching, no make), every
other task runs for real.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
KIT = REPO / "kit"
REAL_INVOKE = Path(sys.executable).parent / "invoke"


@pytest.fixture
def kit(tmp_path: Path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "invoked.log"
    stub = venv / "bin" / "invoke"
    stub.write_text(f"""#!/bin/sh
printf '%s|%s\\n' "$PWD" "$*" >> {log}
for a in "$@"; do case "$a" in build|setup) exit 0 ;; esac; done
exec {REAL_INVOKE} "$@"
""")
    stub.chmod(0o755)
    (venv / ".installed").touch()             # newer than pyproject.toml: nothing to install
    caller = tmp_path / "elsewhere"
    caller.mkdir()

    def run(*args: str) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
        log.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSHOP_")}
        proc = subprocess.run([str(KIT), *args], cwd=caller, capture_output=True, text=True, timeout=300,
                              env=dict(env, WORKSHOP_VENV=str(venv), COLUMNS="200"))
        calls = [tuple(line.split("|", 1)) for line in log.read_text().splitlines()] if log.exists() else []
        return proc, calls  # type: ignore[return-value]

    run.caller = caller  # type: ignore[attr-defined]
    return run


def _build_packages_installed() -> bool:
    # ./kit build installs these first (apt-get, sudo when not root): with one missing the test
    # would install it, or wait at a sudo prompt.
    text = KIT.read_text()
    packages = [p for var in ("BUILD_PACKAGES", "ESP8266_PACKAGES")
                for p in text.split(f'{var}="', 1)[1].split('"', 1)[0].split()]
    return all(subprocess.run(["dpkg", "-s", p], capture_output=True).returncode == 0 for p in packages)


@pytest.mark.parametrize(("args", "passed"), [
    ((), "build"),
    (("--jobs", "2"), "build --jobs 2"),
    (("--board", "ESP32_GENERIC"), "build --board ESP32_GENERIC"),
    (("-fb", "UNIX"), "build -fb UNIX"),
    (("--all", "--jobs", "2"), "build --all --jobs 2"),
])
def test_kit_build_passes_the_arguments_as_given(kit, args, passed):
    """`./kit build --board X` built every board (it always added --all --skip-unavailable, and
    --all won); then it parsed the arguments itself and missed combined flags (-fb UNIX). The
    build task's own default (neither --board nor --all) is every board this machine can build."""
    if not _build_packages_installed():
        pytest.skip("the kit's packages are not all installed here (./kit build would install them)")
    proc, calls = kit("build", *args)
    assert proc.returncode == 0, proc.stderr
    builds = [argv.removeprefix(f"-r {REPO} ") for _, argv in calls if " build" in f" {argv}" and "setup" not in argv]
    assert builds == [passed], calls


def test_kit_tasks_run_in_the_callers_folder(kit, mp_checkout):
    """./kit cd'ed into the checkout: a relative --json-out landed in the checkout, a relative
    --image was not found. Tasks now run where the kit was called, on the kit's checkout."""
    proc, calls = kit("check", "--board", "UNIX", "--json-out", "x.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert calls == [(str(kit.caller), f"-r {REPO} check --board UNIX --json-out x.json")]
    assert (kit.caller / "x.json").is_file() and not (REPO / "x.json").exists()
    (kit.caller / "img.bin").write_bytes(b"\xe9" * 4096)
    proc, _ = kit("flash", "--image", "img.bin", "--offset", "0x1000", "--ports", str(kit.caller / "no-tty"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "no such serial device" in proc.stderr and "no such image file" not in proc.stderr, proc.stderr


def test_kit_help(kit):
    proc, calls = kit("--help")
    assert proc.returncode == 0 and calls == []
    assert "./kit build" in proc.stdout and "set -euo" not in proc.stdout and "#!/" not in proc.stdout
    proc, calls = kit("--help", "flash")
    assert proc.returncode == 0, proc.stderr
    assert calls == [(str(kit.caller), f"-r {REPO} --help flash")]
    assert "--boot-timeout" in proc.stdout and "set -euo" not in proc.stdout and "./kit build" not in proc.stdout
