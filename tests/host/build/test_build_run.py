"""Running a plan: a failed or interrupted build never leaves a dist/<BOARD>/ that looks complete."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest

from workshop import build, buildinfo, config, source

REPO = Path(__file__).resolve().parents[3]
CHECKOUT = source.Checkout(Path("/src/micropython"), source.MICROPYTHON_COMMIT, "v1.28.0", False, True)


@pytest.fixture
def unix_plan(tmp_path: Path) -> build.BuildPlan:
    return build.plan(config.get_board("UNIX"), CHECKOUT, "native", jobs=1, dist=tmp_path / "dist",
                      cache=tmp_path / "cache")


def _previous_build(p: build.BuildPlan) -> bytes:
    """A complete dist/UNIX/ from an earlier build (other inputs), as a user would have it."""
    p.board_dist.mkdir(parents=True)
    image = p.board_dist / "micropython"
    image.write_bytes(b"old image")
    info = buildinfo.BuildInfo(
        board="UNIX", port="unix", chip="host", chip_name="host", flash_size=None, mp_board=None,
        variant="standard", micropython_version="v1.28.0", micropython_commit=source.MICROPYTHON_COMMIT,
        project_version="0.1.0", project_commit=None, project_dirty=False, manifest_sha256="0",
        inputs_sha256="an older build", frozen_modules=("wifi.py",), toolchain="native", toolchain_image=None,
        built_at="2026-11-20T10:00:00Z", duration_s=1.0,
        artifacts=(buildinfo.Artifact("micropython", buildinfo.sha256_file(image), image.stat().st_size, None, False),))
    buildinfo.write_atomic(p.board_dist / "build.json", info.to_json())
    return (p.board_dist / "build.json").read_bytes()


def _kept(p: build.BuildPlan, build_json: bytes) -> None:
    assert (p.board_dist / "micropython").read_bytes() == b"old image"
    assert (p.board_dist / "build.json").read_bytes() == build_json
    assert buildinfo.read_build_info(p.board_dist).inputs_sha256 == "an older build"
    assert sorted(x.name for x in p.dist_dir.iterdir()) == ["UNIX"]  # no half-staged folder beside it


def test_failed_rebuild_keeps_the_last_good_image_and_says_it_is_stale(unix_plan: build.BuildPlan):
    before = _previous_build(unix_plan)
    calls = []

    def failing_make(argv, **kw):
        calls.append(argv)
        kw["stdout"].write("cc: error: something broke\n")
        return subprocess.CompletedProcess(argv, 2 if len(calls) == 2 else 0)

    result = build.run(unix_plan, runner=failing_make)
    assert result.status == "failed" and len(calls) == 2
    assert result.error == (f"UNIX: unix step failed (exit 2); see {unix_plan.build_dir / 'build.log'}; "
                            "dist/UNIX/ still holds the previous image, built 2026-11-20T10:00:00Z "
                            "(stale: built from other inputs)")
    assert "cc: error: something broke" in (unix_plan.build_dir / "build.log").read_text()
    _kept(unix_plan, before)
    assert build.current_build(unix_plan) is None      # flash/release see it as stale, not current


def test_failed_first_build_says_there_is_no_image(unix_plan: build.BuildPlan):
    result = build.run(unix_plan, runner=lambda argv, **kw: subprocess.CompletedProcess(argv, 2))
    assert result.status == "failed" and result.error.endswith("; no image in dist/UNIX/")
    assert not unix_plan.dist_dir.exists() or list(unix_plan.dist_dir.iterdir()) == []


def test_interrupted_build_keeps_the_last_good_image(unix_plan: build.BuildPlan):
    before = _previous_build(unix_plan)

    def interrupted(argv, **kw):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build.run(unix_plan, runner=interrupted)
    _kept(unix_plan, before)


def test_build_without_outputs_is_a_failure_not_a_dist(unix_plan: build.BuildPlan):
    """make exiting 0 is not enough: the images and frozen_content.c must be there."""
    before = _previous_build(unix_plan)
    result = build.run(unix_plan, runner=lambda argv, **kw: subprocess.CompletedProcess(argv, 0))
    assert result.status == "failed"
    assert f"the build did not produce {unix_plan.build_dir / 'micropython'};" in result.error
    _kept(unix_plan, before)


def test_swap_in_replaces_the_old_folder_only_with_a_complete_one(tmp_path: Path):
    target, staging = tmp_path / "UNIX", tmp_path / ".UNIX.partial"
    target.mkdir()
    (target / "micropython").write_bytes(b"old")
    staging.mkdir()
    (staging / "micropython").write_bytes(b"new")
    build._swap_in(staging, target)
    assert (target / "micropython").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["UNIX"]


def test_identity_module_is_written_before_make_and_kept_when_unchanged(unix_plan: build.BuildPlan):
    """make sees <build>/identity/_workshop_build.py (named by WORKSHOP_BUILD_IDENTITY) with the
    plan's inputs hash; an unchanged identity is not rewritten (make would recompile it)."""
    seen = []

    def make(argv, **kw):
        folder = Path(kw["env"]["WORKSHOP_BUILD_IDENTITY"])
        module = folder / "_workshop_build.py"
        seen.append((folder, module.read_text(), module.stat().st_mtime_ns))
        return subprocess.CompletedProcess(argv, 0)

    build.run(unix_plan, runner=make)                  # fails at staging (no outputs): not the point here
    folder, text, mtime = seen[0]
    assert folder == unix_plan.build_dir / "identity" and len(seen) == 2 and seen[1] == seen[0]
    ns: dict = {}
    exec(text, ns)
    assert ns["board"] == "UNIX" and ns["inputs"] == unix_plan.inputs_sha256 and ns["project"]
    assert text == build.identity_source("UNIX", unix_plan.inputs_sha256, ns["project"])
    build.run(unix_plan, runner=make)
    assert seen[2][2] == mtime                          # same text: same file, same time stamp


def test_read_build_info_rejects_changed_images(tmp_path: Path):
    board_dir = tmp_path / "ESP32_GENERIC"
    board_dir.mkdir()
    (board_dir / "firmware.bin").write_bytes(b"\xe9" * 1024)
    info = buildinfo.BuildInfo(
        board="ESP32_GENERIC", port="esp32", chip="esp32", chip_name="ESP32", flash_size="4MB",
        mp_board="ESP32_GENERIC", variant=None, micropython_version="v1.28.0", micropython_commit="e0e9fbb",
        project_version="0.1.0", project_commit=None, project_dirty=False, manifest_sha256="0", inputs_sha256="1",
        frozen_modules=("wifi.py",), toolchain="docker", toolchain_image="espressif/idf:v5.5.1",
        built_at="2026-11-21T00:00:00Z", duration_s=1.0,
        artifacts=(buildinfo.Artifact("firmware.bin", buildinfo.sha256_file(board_dir / "firmware.bin"), 1024, 0x1000, True),))
    buildinfo.write_atomic(board_dir / "build.json", info.to_json())
    assert buildinfo.read_build_info(board_dir) == info
    assert info.flash_images[0].offset == 0x1000
    (board_dir / "firmware.bin").write_bytes(b"\xe9" * 1023 + b"\0")
    with pytest.raises(buildinfo.BuildInfoError, match="firmware.bin: does not match the sha256 in build.json"):
        buildinfo.read_build_info(board_dir)
    (board_dir / "firmware.bin").unlink()
    with pytest.raises(buildinfo.BuildInfoError, match="firmware.bin: missing, but build.json lists it"):
        buildinfo.read_build_info(board_dir)
    (board_dir / "build.json").unlink()
    with pytest.raises(buildinfo.BuildInfoError, match="has no finished build"):
        buildinfo.read_build_info(board_dir)


def test_release_warns_when_its_images_mix_toolchains():
    from workshop import release

    def info(board: str, chip: str, toolchain: str, compiler: str | None) -> buildinfo.BuildInfo:
        return buildinfo.BuildInfo(
            board=board, port="x", chip=chip, chip_name=chip, flash_size=None, mp_board=None, variant=None,
            micropython_version="v1.28.0", micropython_commit="0", project_version="0.1.0", project_commit=None,
            project_dirty=False, manifest_sha256="0", inputs_sha256="1", frozen_modules=(), artifacts=(),
            toolchain=toolchain, toolchain_image=None if toolchain == "native" else compiler, built_at="", duration_s=0,
            compiler=compiler)

    gcc = "xtensa-lx106-elf-gcc (12.2.0-14) 12.2.0"
    native = info("ESP8266_GENERIC", "esp8266", "native", gcc)
    idf = info("ESP32_GENERIC", "esp32", "docker", "espressif/idf:v5.5.1")
    host = info("UNIX", "host", "native", None)
    assert release.toolchain_mix([native, host]) is None          # the host binary is no device image
    assert release.toolchain_mix([idf, info("ESP32_GENERIC_S3", "esp32s3", "docker", "espressif/idf:v5.5.1")]) is None
    assert release.toolchain_mix([native, idf, host]) == (
        f"this release mixes toolchains: ESP32_GENERIC by docker (espressif/idf:v5.5.1); ESP8266_GENERIC by native ({gcc})")


def test_build_all_keeps_the_order_and_names_why_each_board_was_not_built(tmp_path: Path, monkeypatch):
    """The fan-out and skip policy `invoke build` renders: boards without a toolchain here are
    failed, or skipped with --skip-unavailable, before any checkout is looked for."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.setattr(build, "docker_engine_reason", lambda docker=None: "no docker client")
    boards = [config.get_board(n) for n in ("UNIX", "ESP8266_GENERIC", "ESP32_GENERIC")]
    nowhere = tmp_path / "no-checkout"
    strict = build.build_all(boards, micropython=nowhere)
    assert [(r.board, r.status) for r in strict] == [("UNIX", "failed"), ("ESP8266_GENERIC", "failed"),
                                                     ("ESP32_GENERIC", "failed")]
    assert strict[0].error == "UNIX: no toolchain here: needs cc, pkg-config, make on PATH (force one with --toolchain docker|native)"
    assert strict[1].error.startswith("ESP8266_GENERIC: no toolchain here: no docker client; no xtensa-lx106-elf-gcc, make on PATH")
    lenient = build.build_all(boards, micropython=nowhere, skip_unavailable=True)
    assert [(r.board, r.status, r.error) for r in lenient] == [
        ("UNIX", "skipped", "needs cc, pkg-config, make on PATH"),
        ("ESP8266_GENERIC", "skipped", "no docker client; no xtensa-lx106-elf-gcc, make on PATH"),
        ("ESP32_GENERIC", "skipped", "no docker client; no idf.py, make on PATH")]
    # A forced toolchain skips the availability check: the missing checkout is the reason then.
    forced = build.build_all(boards[:1], toolchain="native", micropython=nowhere)
    assert forced[0].status == "failed" and forced[0].error.startswith(f"no MicroPython checkout at {nowhere}")


def test_a_changed_port_command_empties_the_build_tree_before_make(unix_plan: build.BuildPlan):
    """make rebuilds nothing when only its command line changes (a new -D flag in port.toml): the
    image would be "built" from the old objects. A tree made by another (or an unknown) port
    command is emptied before make runs, mpy-cross's tree aside; one made by the same is kept."""
    seen: list[list[str]] = []

    def make(argv, **kw):
        seen.append(sorted(p.name for p in unix_plan.build_dir.iterdir()))
        return subprocess.CompletedProcess(argv, 0)

    tree = unix_plan.build_dir
    (tree / "mpy-cross").mkdir(parents=True)
    (tree / "py").mkdir()
    (tree / "py" / "obj.o").write_bytes(b"built by a command nobody recorded")
    build.run(unix_plan, runner=make)                  # fails at staging (no outputs): not the point here
    assert "py" not in seen[0] and "mpy-cross" in seen[0]
    (tree / "py").mkdir()
    (tree / "py" / "obj.o").write_bytes(b"built by this command")
    build.run(unix_plan, runner=make)
    assert (tree / "py" / "obj.o").read_bytes() == b"built by this command"
    other_jobs = build.plan(config.get_board("UNIX"), CHECKOUT, "native", jobs=2, dist=unix_plan.dist_dir,
                            cache=unix_plan.build_dir.parents[1])
    assert other_jobs.build_dir == tree and other_jobs.steps[-1].argv != unix_plan.steps[-1].argv
    build.run(other_jobs, runner=make)                 # -j2 instead of -j1 builds the same image
    assert (tree / "py" / "obj.o").read_bytes() == b"built by this command"
    port = unix_plan.steps[-1]
    flagged = dataclasses.replace(unix_plan, steps=unix_plan.steps[:-1] + (
        dataclasses.replace(port, argv=port.argv + ("CFLAGS_EXTRA=-DMICROPY_PY_OS_DUPTERM=1",)),))
    build.run(flagged, runner=make)
    assert not (tree / "py").exists() and (tree / "mpy-cross").is_dir()
    assert (tree / build.PORT_COMMAND).read_text().splitlines()[-1] == "CFLAGS_EXTRA=-DMICROPY_PY_OS_DUPTERM=1"


def test_a_board_named_twice_is_built_once(tmp_path: Path):
    """`--board UNIX,UNIX --jobs 2` ran two builds in one build tree (one emptied it under the
    other: a traceback); a board is planned, built and listed once."""
    unix = config.get_board("UNIX")
    results = build.build_all([unix, unix, config.get_board("ESP8266_GENERIC"), unix], toolchain="native",
                              jobs=2, micropython=tmp_path / "no-checkout")
    assert [r.board for r in results] == ["UNIX", "ESP8266_GENERIC"]


def test_a_docker_build_asked_for_without_an_engine_says_so_and_keeps_a_current_image_current(
        mp_checkout, tmp_path: Path, monkeypatch):
    """--image (or --toolchain docker) with no Docker engine: the engine's absence is the error,
    before any step runs (not "mpy-cross step failed (exit 125)"), and the native image kept in
    dist/ is called current, as flash and smoke see it (not "stale: built from other inputs")."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")
    reason = build.docker_engine_reason()
    assert reason is not None
    dist = tmp_path / "dist"
    native = build.plan(config.get_board("UNIX"), mp_checkout, "native", dist=dist)
    _previous_build(native)
    info = buildinfo.read_build_info(native.board_dist)
    recorded = dataclasses.replace(info, inputs_sha256=native.inputs_sha256,
                                   extra={"checkout": str(mp_checkout.path), "uid_gid": None})
    buildinfo.write_atomic(native.board_dist / "build.json", recorded.to_json())
    assert build.stale_reason("UNIX", dist=dist, micropython=mp_checkout.path) is None
    for forced in ({"image": "my/x:latest"}, {"toolchain": "docker", "image": "my/x:latest"}):
        [result] = build.build_all([config.get_board("UNIX")], dist=dist, micropython=mp_checkout.path, **forced)
        assert result.status == "failed", forced
        assert result.error == (f"UNIX: {reason}: a Docker build (--toolchain docker, --image) needs a running Docker "
                                "engine; dist/UNIX/ still holds the previous image, built 2026-11-20T10:00:00Z "
                                "(still current: its native build of the same inputs)"), forced
    # A port whose default image is used: the same (ESP8266_GENERIC's larsks/esp-open-sdk).
    [esp] = build.build_all([config.get_board("ESP8266_GENERIC")], toolchain="docker", dist=dist,
                            micropython=mp_checkout.path)
    assert esp.status == "failed" and esp.error.startswith(f"ESP8266_GENERIC: {reason}: a Docker build"), esp.error


def test_cancel_stops_a_running_step_and_keeps_the_last_good_image(unix_plan: build.BuildPlan):
    """Ctrl-C (`cancel`) during make: the step's whole process group is stopped at once, the
    result says "interrupted" and what dist/ still holds; a later queued build does not start."""
    import threading
    import time

    before = _previous_build(unix_plan)
    pid_file = unix_plan.build_dir.parent / "child.pid"
    slow = build.Step(("sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"), (), "mpy-cross")
    p = dataclasses.replace(unix_plan, steps=(slow, *unix_plan.steps[1:]))
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    result = build.run(p, cancel=cancel)
    assert time.monotonic() - t0 < 2.0
    assert result.status == "interrupted" and result.interrupted and not result.ok
    assert result.error == ("interrupted during the mpy-cross step (stopped); dist/UNIX/ still holds the previous "
                            "image, built 2026-11-20T10:00:00Z (stale: built from other inputs)")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:   # the make's own children too
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    _kept(unix_plan, before)
    queued = build.run(p, cancel=cancel)
    assert queued.status == "not started" and queued.error.startswith("interrupted before it started; dist/UNIX/ still")


def test_a_stopped_docker_step_kills_its_container(tmp_path: Path):
    """Ctrl-C ended the docker client (SIGTERM, then SIGKILL) and nothing else: the container,
    which the client does not own, went on compiling into the build tree. A stopped docker step
    now runs `docker kill <its --name>`, and still ends within Ctrl-C's 2 s.

    No Docker engine here: `docker` is a stand-in client on this test's PATH that records its
    commands and, like the real one, outlives a SIGTERM while its container runs."""
    import os
    import threading
    import time

    calls = tmp_path / "calls"
    client = tmp_path / "docker"
    client.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
[ "$1" = kill ] && exit 0
trap 'echo "client got TERM" >> {calls}' TERM
while :; do sleep 0.05; done
""")
    client.chmod(0o755)
    p = build.plan(config.get_board("ESP8266_GENERIC"), CHECKOUT, "docker", jobs=1, dist=tmp_path / "dist",
                   cache=tmp_path / "cache", uid_gid=(1000, 1000))
    step = p.steps[0]
    assert step.container and step.argv[step.argv.index("--name") + 1] == step.container
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t0 = time.monotonic()
    with pytest.raises(build._Interrupted):
        build.run_step([str(client), *step.argv[1:]], cancel=cancel, container=step.container,
                       env=dict(os.environ), stdout=subprocess.DEVNULL)
    assert time.monotonic() - t0 < 2.0
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("run --rm --name " + step.container) and f"kill {step.container}" in lines, lines


def test_a_command_that_is_not_there_is_a_failed_build_not_a_traceback(unix_plan: build.BuildPlan, monkeypatch,
                                                                       tmp_path: Path):
    """No make on PATH: the build died with FileNotFoundError's traceback."""
    before = _previous_build(unix_plan)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = build.run(unix_plan)
    assert result.status == "failed", result
    assert result.error.startswith("UNIX: mpy-cross step: cannot run 'make': No such file or directory"), result.error
    _kept(unix_plan, before)
