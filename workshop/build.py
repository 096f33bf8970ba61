"""Build images: BuildPlan (pure: argv, env, mounts, outputs, cache key) -> run -> dist/<BOARD>/.

A plan is computed without touching Docker or make, so tests assert the exact commands. Running
a plan builds in the cache directory, then stages the outputs and build.json beside dist/ and
renames them into place: a failed or interrupted build leaves no dist/<BOARD>/ at all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from types import EllipsisType
from typing import Any

from . import check, elf, parallel, source
from .buildinfo import (BUILD_INFO, IDENTITY_ENV, IDENTITY_MODULE, Artifact, BuildInfo, BuildInfoError,
                        read_build_info, sha256_file, write_atomic)
from .config import Board, ConfigError, cache_dir, get_board, load_boards, project_root

TOOLCHAINS = ("auto", "docker", "native")
# Files whose content decides what is frozen, besides everything under modules/.
STACK_MANIFEST = "manifest.py"


class BuildError(RuntimeError):
    """A build could not be planned or failed; the message says which board and why."""


@dataclass(frozen=True)
class Step:
    """One command of a build. `env` holds only what the plan adds to the caller's environment."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    name: str = ""
    container: str | None = None       # docker: the container's --name, killed when the build is stopped


@dataclass(frozen=True)
class BuildPlan:
    board: Board
    checkout: Path
    micropython_version: str
    micropython_commit: str
    toolchain: str                     # "docker" or "native"
    image: str | None                  # container image (docker only)
    build_dir: Path
    dist_dir: Path
    manifest: Path
    steps: tuple[Step, ...]
    inputs_sha256: str
    mounts: tuple[Path, ...] = ()
    compiler: str | None = None        # what compiles the image: the native compiler's version, or the image
    native: source.NativeToolchain | None = None

    @property
    def board_dist(self) -> Path:
        return self.dist_dir / self.board.name


# --- toolchain availability ------------------------------------------------------------------


@dataclass(frozen=True)
class ToolchainStatus:
    kind: str | None                   # "native", "docker" or None
    reason: str                        # why this one, or why none


def docker_engine_reason(docker: str | None = None) -> str | None:
    """None when a Docker engine answers, else a short reason."""
    docker = docker or shutil.which("docker")
    if not docker:
        return "no docker client"
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker engine not answering ({e.__class__.__name__})"
    if proc.returncode != 0:
        return "no docker engine running"
    return None


def toolchain_status(board: Board, which: Callable[[str], str | None] = shutil.which,
                     docker_reason: str | None | EllipsisType = ...) -> ToolchainStatus:
    """Which toolchain `--toolchain auto` would use for this board here, and why."""
    missing = [t for t in board.port.native_tools if not which(t)]
    unprepared = None
    if not missing:
        try:
            source.native_toolchain(board.port)
            return ToolchainStatus("native", "native: " + ", ".join(board.port.native_tools) + " on PATH")
        except source.SourceError:
            unprepared = f"{', '.join(board.port.native_tools)} on PATH but its SDK is not prepared (invoke setup --ports {board.port.name})"
            missing = []
    native_reason = unprepared or f"no {', '.join(missing)} on PATH"
    if not board.port.docker_images:
        return ToolchainStatus(None, unprepared or f"needs {', '.join(missing)} on PATH")
    reason = docker_engine_reason() if docker_reason is ... else docker_reason
    if reason is None:
        return ToolchainStatus("docker", "docker engine available")
    return ToolchainStatus(None, f"{reason}; {native_reason}")


@dataclass(frozen=True)
class BoardRow:
    """One line of `invoke boards`: a board and the toolchain that would build it here."""

    board: Board
    toolchain: ToolchainStatus

    def to_dict(self) -> dict[str, object]:
        b = self.board
        return {"board": b.name, "port": b.port.name, "chip": b.chip, "chip_name": b.chip_name,
                "mp_board": b.mp_board, "variant": b.variant, "flash_size": b.flash_size,
                "images": [{"file": r.file, "offset": r.offset} for r in b.flash_regions()],
                "btree": b.btree, "margins": b.margins,
                "toolchain": self.toolchain.kind, "toolchain_reason": self.toolchain.reason,
                "description": b.description}


def board_rows(root: Path | None = None) -> list[BoardRow]:
    """Every board in boards/ with the toolchain `--toolchain auto` would use for it here."""
    docker_reason = docker_engine_reason()
    return [BoardRow(b, toolchain_status(b, docker_reason=docker_reason)) for b in load_boards(root).values()]


def no_toolchain(board: Board, status: ToolchainStatus) -> BuildError:
    return BuildError(f"{board.name}: no toolchain here: {status.reason} (force one with --toolchain docker|native)")


# --- the plan (pure) -------------------------------------------------------------------------


def _project_files(board: Board, root: Path) -> list[Path]:
    """Every project file that decides the image's content."""
    port_files = sorted(p for p in board.port.directory.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files = [root / STACK_MANIFEST, *port_files, board.source]
    modules = root / "modules"
    if modules.is_dir():
        files += sorted(p for p in modules.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                        and p.suffix != ".mpy")
    return files


def inputs_sha256(board: Board, micropython_commit: str, steps: Iterable[Step], image: str | None,
                  root: Path | None = None, checkout_changes: str | None = None,
                  places: dict[Path, str] | None = None, toolchain_identity: str | None = None) -> str:
    """The cache key: manifests, every module file, board/port data, MicroPython commit,
    toolchain image and the exact commands. Same key -> the image in dist/ is current.

    `places` names the folders (checkout, project, build tree) whose location is not content:
    the same sources built from another clone or cache folder give the same key."""
    root = project_root(root)
    names = sorted(((str(p), n) for p, n in (places or {}).items()), key=lambda pn: -len(pn[0]))

    def placeless(text: str) -> str:
        for path, name in names:
            text = text.replace(path, name)
        return text

    h = hashlib.sha256()
    for path in _project_files(board, root):
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        h.update(f"file {rel} {sha256_file(path) if path.exists() else 'missing'}\n".encode())
    h.update(f"micropython {micropython_commit}{' changes ' + checkout_changes if checkout_changes else ''}\n".encode())
    h.update(f"image {image}\n".encode())
    if toolchain_identity:
        h.update(f"toolchain {toolchain_identity}\n".encode())
    for step in steps:
        h.update(placeless(json.dumps([image_argv(step), step.env])).encode() + b"\n")
    return h.hexdigest()


def image_argv(step: Step) -> list[str]:
    """The step's command without what does not change the image: parallelism (-jN), the
    container user (--user UID:GID) and name (--name, which names the build tree's place)."""
    a = step.argv
    flags = ("--user", "--name")
    return [x for i, x in enumerate(a) if not re.fullmatch(r"-j\d+", x) and x not in flags and not (i and a[i - 1] in flags)]


def identity_dir(build: Path) -> Path:
    """Where run() writes the identity module for a build tree."""
    return build / "identity"


def identity_source(board: str, inputs: str, project: str) -> str:
    """The identity module's text: plain assignments only (tiny when frozen)."""
    return f"board = {json.dumps(board)}\ninputs = {json.dumps(inputs)}\nproject = {json.dumps(project)}\n"


def build_dir_for(board: Board, root: Path | None = None, cache: Path | None = None) -> Path:
    """Build trees live in the cache (outside the repo), one per board and project checkout."""
    root = project_root(root)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return (cache or cache_dir()) / "build" / f"{board.name}-{tag}"


def _make_vars(board: Board, manifest: Path, build: Path, native: source.NativeToolchain | None) -> list[str]:
    port = board.port
    args = []
    if port.board_var and board.mp_board:
        args.append(f"{port.board_var}={board.mp_board}")
    if board.variant:
        args.append(f"{port.variant_var}={board.variant}")
    args += [f"FROZEN_MANIFEST={manifest}", f"BUILD={build}", *port.make_args]
    if not board.btree:
        args += port.btree_off
    if native:
        where = {"sdk": native.sdk, "python": native.python_bin, "port": port.directory.resolve()}
        args += [a.format(**where) for a in port.native.make_args]
    return args


def plan(board: Board, checkout: source.Checkout, toolchain: str = "auto", image: str | None = None,
         jobs: int | None = None, root: Path | None = None, dist: Path | None = None,
         cache: Path | None = None, uid_gid: tuple[int, int] | None = None,
         status: ToolchainStatus | None = None, native: source.NativeToolchain | None = None,
         compiler: str | None = None) -> BuildPlan:
    """The exact commands that build `board`, the way MicroPython's CI does: mpy-cross first,
    then `make -C ports/<port> BOARD=... FROZEN_MANIFEST=<abs path>`.

    Docker runs as the calling user, with the checkout, the project and the build tree mounted
    at their own paths, so every path in the command means the same inside and out.

    A native build of a port with a prepared toolchain (ESP8266: the SDK folder `setup` makes)
    uses `native` (default: the one in the cache) and the port's [native] make arguments;
    `compiler` (default: asked from the port's compiler) is part of the cache key and build.json.
    """
    root = project_root(root)
    if toolchain not in TOOLCHAINS:
        raise BuildError(f"{board.name}: toolchain must be one of {', '.join(TOOLCHAINS)}, got {toolchain!r}")
    if toolchain == "auto" and image:
        toolchain = "docker"           # a container image asked for is a Docker build
    if toolchain == "auto":
        status = status or toolchain_status(board)
        if status.kind is None:
            raise no_toolchain(board, status)
        toolchain = status.kind
    if toolchain == "docker":
        image = image or board.port.docker_image(checkout.version)
        if not image:
            raise BuildError(f"{board.name}: port {board.port.name} has no Docker image ([docker] in "
                             f"ports/{board.port.name}/port.toml); use --toolchain native")
    elif image:
        raise BuildError(f"{board.name}: --image needs --toolchain docker")
    spec = board.port.native
    if toolchain == "native" and spec.prepare and native is None:
        try:
            native = source.native_toolchain(board.port)
        except source.SourceError as e:
            raise BuildError(f"{board.name}: {e}") from None
    if toolchain != "native":
        native = None
    if toolchain == "native" and spec.compiler:
        compiler = compiler or source.compiler_version(spec.compiler)
        if not compiler:
            raise BuildError(f"{board.name}: {spec.compiler} gives no --version: not on PATH, or not set up "
                             f"({spec.install}, or build with --toolchain docker)")
    elif toolchain == "docker":
        compiler = image
    mp = checkout.path
    build = build_dir_for(board, root, cache)
    manifest = board.port.manifest.resolve()
    mpy_cross_build = build / "mpy-cross"
    mpy_cross = mpy_cross_build / "mpy-cross"
    parallel = [f"-j{jobs or os.cpu_count() or 1}"]
    commands = [
        ("mpy-cross", ["make", *parallel, "-C", str(mp / "mpy-cross"), f"BUILD={mpy_cross_build}"]),
        (board.port.name, ["make", *parallel, "-C", str(mp / board.port.make_dir),
                           *_make_vars(board, manifest, build, native)]),
    ]
    # Environment, not a make variable: the esp32 port's CMake reads it from there. The identity
    # folder is in the build tree: its location is not content (the key names it $(BUILD)).
    env = (("MICROPY_MPYCROSS", str(mpy_cross)), (IDENTITY_ENV, str(identity_dir(build))))
    mounts: tuple[Path, ...] = ()
    steps: list[Step] = []
    if toolchain == "docker":
        uid, gid = uid_gid or (os.getuid(), os.getgid())
        mounts = tuple(dict.fromkeys(p.resolve() for p in (mp, root, build)))
        for name, argv in commands:
            # Named: stopping the docker client does not stop its container (Ctrl-C would leave a
            # make running in the build tree), `docker kill <name>` does (run_step). One name per
            # board, project and step: a second build of the same tree at once is refused.
            container = f"workshop-{build.name}-{name}"
            docker = ["docker", "run", "--rm", "--name", container, "--user", f"{uid}:{gid}", "-e", "HOME=/tmp"]
            for key, value in env:
                docker += ["-e", f"{key}={value}"]
            for m in mounts:
                docker += ["-v", f"{m}:{m}"]
            assert image is not None      # a docker plan without an image was refused above
            docker += ["-w", str(mp), image, *argv]
            steps.append(Step(tuple(docker), (), name, container))
    else:
        steps = [Step(tuple(argv), env, name) for name, argv in commands]
    places = {mp: "$(MPY_DIR)", root.resolve(): "$(PROJECT)", build: "$(BUILD)"}
    identity = None
    if native:
        places[native.path] = "$(TOOLCHAIN)"
        identity = native.identity
    if compiler and toolchain == "native":
        identity = f"{identity or ''} {compiler}".strip()
    # (a Checkout made without its changes' hash, yet dirty, still differs from a clean one)
    changes = checkout.changes or ("dirty" if checkout.dirty else None)
    key = inputs_sha256(board, checkout.commit, steps, image, root, changes, places, identity)
    return BuildPlan(board=board, checkout=mp, micropython_version=checkout.version,
                     micropython_commit=checkout.commit, toolchain=toolchain, image=image, build_dir=build,
                     dist_dir=dist or root / "dist", manifest=manifest, steps=tuple(steps),
                     inputs_sha256=key, mounts=mounts, compiler=compiler, native=native)


# --- staleness -------------------------------------------------------------------------------


def current_build(p: BuildPlan) -> BuildInfo | None:
    """dist/<BOARD>/'s build info when it is complete and built from exactly this plan's inputs."""
    try:
        info = read_build_info(p.board_dist)
    except BuildInfoError:
        return None
    return info if info.inputs_sha256 == p.inputs_sha256 else None


def stale_reason(board_name: str, root: Path | None = None, dist: Path | None = None,
                 micropython: str | Path | None = None) -> str | None:
    """None when dist/<BOARD>/ is complete and built from the current inputs; else why not.

    The plan is recomputed with the toolchain and image the build recorded. Without a checkout
    (e.g. on a release machine), the MicroPython commit recorded in build.json is assumed.
    """
    root = project_root(root)
    try:
        board = get_board(board_name, root)
    except ConfigError as e:
        return str(e)
    board_dist = (dist or root / "dist") / board_name
    try:
        info = read_build_info(board_dist)
    except BuildInfoError as e:
        return str(e)
    try:
        checkout = source.locate(micropython, [board.port.name])
    except source.SourceError:
        checkout = source.Checkout(Path(info.extra.get("checkout", "")), info.micropython_commit,
                                   info.micropython_version, False, True)
    # A native toolchain as recorded when this machine has none (a release machine); a
    # different prepared toolchain or compiler here is a change of inputs.
    native = None
    recorded = info.extra.get("native")
    if info.toolchain == "native" and board.port.native.prepare:
        try:
            native = source.native_toolchain(board.port)
        except source.SourceError:
            if recorded:
                native = source.NativeToolchain(board.port.name, Path(recorded["path"]), recorded["stamp"])
    compiler = None
    if info.toolchain == "native" and board.port.native.compiler:
        compiler = source.compiler_version(board.port.native.compiler) or info.compiler
    uid_gid = info.extra.get("uid_gid")
    try:
        p = plan(board, checkout, info.toolchain, info.toolchain_image, root=root, dist=dist,
                 status=ToolchainStatus(info.toolchain, "as recorded"),
                 uid_gid=(uid_gid[0], uid_gid[1]) if uid_gid else None, native=native, compiler=compiler)
    except BuildError as e:
        return str(e)
    if p.inputs_sha256 != info.inputs_sha256:
        return "inputs changed since the build"
    return None


# --- running ---------------------------------------------------------------------------------


@dataclass
class BuildResult:
    board: str
    status: str                        # "built", "up to date", "skipped", "failed", "interrupted", "not started"
    seconds: float
    info: BuildInfo | None = None
    error: str | None = None
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("built", "up to date", "skipped")

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C (`cancel`): mid-build, or before it started."""
        return self.status in ("interrupted", "not started")

    @property
    def image_size(self) -> int | None:
        if not self.info:
            return None
        flashed = self.info.flash_images or self.info.artifacts[:1]
        return sum(a.size for a in flashed)

    def to_dict(self) -> dict[str, Any]:
        """`build --json`: the row and, for a board built or up to date, its build.json."""
        return {"board": self.board, "status": self.status, "ok": self.ok, "seconds": round(self.seconds, 3),
                "image_size": self.image_size, "error": self.error, "log": str(self.log) if self.log else None,
                "build": asdict(self.info) if self.info else None}


FROZEN_NAMES = re.compile(r'^\s*"((?:[^"\\]|\\.)*)\\0"$', re.M)


def frozen_modules(frozen_content: Path) -> tuple[str, ...]:
    """The frozen module paths as the build's frozen_content.c lists them (mp_frozen_names)."""
    text = frozen_content.read_text(errors="replace")
    start = text.find("mp_frozen_names[]")
    if start < 0:
        raise BuildError(f"{frozen_content}: no mp_frozen_names table (was FROZEN_MANIFEST applied?)")
    end = text.find("};", start)
    # The table ends with an empty name ("\0"), not a module.
    return tuple(name for name in FROZEN_NAMES.findall(text[start:end]) if name)


def _project_version(root: Path) -> tuple[str, str | None, bool]:
    try:
        ver = package_version("workshop-kit")
    except PackageNotFoundError:
        ver = "0+unknown"
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip() or None
        dirty = bool(source.tree_changes(root))
    except (OSError, subprocess.CalledProcessError, source.SourceError):
        commit, dirty = None, False
    return ver, commit, dirty


Event = Callable[[str, str], None]   # (board, message)


class _Interrupted(Exception):
    """Internal: `cancel` was set while a step ran (its processes are stopped)."""


STOP_GRACE_S = 0.8     # after SIGTERM, how long a step's processes get before SIGKILL


def run_step(argv: list[str], *, cancel: threading.Event | None = None, container: str | None = None,
             **kwargs: object) -> subprocess.CompletedProcess:
    """One step's command (make, docker run) in its own process group; a set `cancel` stops the
    whole group (SIGTERM, then SIGKILL) within about a second and raises _Interrupted. A docker
    step's `container` is killed too (`docker kill`, argv[0] being the docker client): the
    client's end is not its container's."""
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    while True:
        try:
            return subprocess.CompletedProcess(argv, proc.wait(timeout=0.1))
        except subprocess.TimeoutExpired:
            if cancel is None or not cancel.is_set():
                continue
        if container:
            try:   # not waited for past a moment: Ctrl-C's 2 s; the kill goes on on its own
                subprocess.Popen([argv[0], "kill", container], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True).wait(timeout=0.5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for sig, grace in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 1.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        raise _Interrupted()


def run(p: BuildPlan, on_event: Event = lambda board, msg: None, force: bool = False,
        runner: Callable[..., subprocess.CompletedProcess] | None = None,
        cancel: threading.Event | None = None) -> BuildResult:
    """Execute a plan: 'up to date' without running make when the inputs are unchanged.

    The last good dist/<BOARD>/ stays until the new one is staged and complete: a failed build
    leaves it in place and says so (stale, since its inputs differ from this plan's). A set
    `cancel` (Ctrl-C) stops the running step at once: the result is "interrupted" (or "not
    started"), with what dist/<BOARD>/ still holds. `runner` (tests) replaces run_step."""
    name = p.board.name
    started = time.monotonic()
    if cancel is not None and cancel.is_set():
        return BuildResult(name, "not started", 0.0, error="interrupted before it started" + _previous_note(p))
    step_runner = runner or functools.partial(run_step, cancel=cancel)
    current = None if force else current_build(p)
    if current:
        on_event(name, "up to date")
        return BuildResult(name, "up to date", time.monotonic() - started, current)
    _match_tree_to_command(p)
    log = p.build_dir / "build.log"
    _write_identity(p)
    doing = "the build"
    try:
        with log.open("w") as out:
            for step in p.steps:
                doing = f"the {step.name} step"
                if cancel is not None and cancel.is_set():
                    raise _Interrupted()
                on_event(name, f"{step.name}: {' '.join(step.argv[:3])} ...")
                out.write(f"$ {' '.join(step.argv)}\n")
                out.flush()
                env = dict(os.environ, **dict(step.env))
                named = {"container": step.container} if step.container else {}
                try:
                    proc = step_runner(list(step.argv), stdout=out, stderr=subprocess.STDOUT, env=env, **named)
                except OSError as e:   # the command itself is missing (no make on PATH) or cannot run
                    raise BuildError(f"{name}: {step.name} step: cannot run {step.argv[0]!r}: {e.strerror or e} "
                                     "(see README, 'What each toolchain needs')") from None
                if proc.returncode != 0:
                    raise BuildError(f"{name}: {step.name} step failed (exit {proc.returncode}); see {log}")
        info = _stage(p, started)
    except _Interrupted:
        on_event(name, "interrupted")
        return BuildResult(name, "interrupted", time.monotonic() - started,
                           error=f"interrupted during {doing} (stopped)" + _previous_note(p), log=log)
    except BuildError as e:
        on_event(name, "failed")
        return BuildResult(name, "failed", time.monotonic() - started, error=str(e) + _previous_note(p), log=log)
    on_event(name, "built")
    return BuildResult(name, "built", time.monotonic() - started, info, log=log)


PORT_COMMAND = "port-command.txt"  # in the build tree: the port step's command that built it


def _match_tree_to_command(p: BuildPlan) -> None:
    """make rebuilds what changed files touch, never what a changed command line does (another
    -D flag, board or toolchain): a build tree made by another port command (or by an unknown
    one; -jN and the container user aside) is emptied first, mpy-cross's own tree aside (its
    command is fixed)."""
    p.build_dir.mkdir(parents=True, exist_ok=True)
    stamp = p.build_dir / PORT_COMMAND
    command = "\n".join(image_argv(p.steps[-1])) + "\n"
    try:
        old = stamp.read_text()
    except (OSError, UnicodeDecodeError):
        old = None
    if old != command:
        for child in p.build_dir.iterdir():
            if child.name == "mpy-cross":
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        write_atomic(stamp, command.encode())


def _previous_note(p: BuildPlan) -> str:
    """What a failed build left in dist/<BOARD>/: the previous image, and whether it is current.

    Current is judged as flash and smoke judge it (stale_reason: the plan of the toolchain that
    built it), not by this plan's key: a native image kept after a failed Docker build of the
    same sources is current."""
    try:
        old = read_build_info(p.board_dist)
    except BuildInfoError:
        return f"; no image in dist/{p.board.name}/"
    if old.inputs_sha256 == p.inputs_sha256:
        freshness = "still current: same inputs"
    elif stale_reason(p.board.name, dist=p.dist_dir, micropython=p.checkout) is None:
        freshness = f"still current: its {old.toolchain} build of the same inputs"
    else:
        freshness = "stale: built from other inputs"
    return f"; dist/{p.board.name}/ still holds the previous image, built {old.built_at} ({freshness})"


def _write_identity(p: BuildPlan) -> Path:
    """<build_dir>/identity/_workshop_build.py for this plan; rewritten only when its text changes
    (an unchanged file keeps its time stamp, so make does not recompile it)."""
    path = identity_dir(p.build_dir) / IDENTITY_MODULE
    text = identity_source(p.board.name, p.inputs_sha256, _project_version(project_root())[0])
    if not path.is_file() or path.read_text() != text:
        write_atomic(path, text)
    return path


def image_budget(p: BuildPlan) -> tuple[elf.Region, ...]:
    """The linked image's budget per region, with the board's margins (empty: the port has none)."""
    port = p.board.port
    if not port.budget or not port.elf:
        return ()
    try:
        return elf.budget(p.build_dir / port.elf, p.build_dir / port.budget.map, port.budget.regions,
                          p.board.margins)
    except elf.ElfError as e:
        raise BuildError(f"{p.board.name}: {e}") from None


def check_frozen(p: BuildPlan, listed: tuple[str, ...]) -> None:
    """The linked image freezes exactly what the manifest resolves to (and frozen_content.c
    lists), each module once: a module the manifest lists but the image lacks fails the build."""
    port = p.board.port
    checkout = source.Checkout(p.checkout, p.micropython_commit, p.micropython_version, False, True)
    try:
        expected = [f.target for f in check.resolve(p.board, checkout, identity=identity_dir(p.build_dir))]
    except Exception as e:  # manifestfile raises its own error class
        raise BuildError(f"{p.board.name}: the manifest does not resolve: {e}") from None
    problems = []
    if port.elf:
        try:
            linked = elf.frozen_names(p.build_dir / port.elf)
        except elf.ElfError as e:
            raise BuildError(f"{p.board.name}: {e}") from None
        missing = sorted(set(expected) - set(linked))
        extra = sorted(set(linked) - set(expected))
        twice = sorted({n for n in linked if linked.count(n) > 1})
        if missing:
            problems.append(f"the manifest freezes {', '.join(missing)} but the linked {port.elf} lacks "
                            f"{'it' if len(missing) == 1 else 'them'}")
        if extra:
            problems.append(f"the linked {port.elf} freezes {', '.join(extra)}, which the manifest does not list")
        if twice:
            problems.append(f"the linked {port.elf} freezes {', '.join(twice)} more than once")
    if sorted(listed) != sorted(expected) and not problems:
        problems.append("frozen_content.c lists other modules than the manifest resolves to: "
                        f"{', '.join(sorted(set(listed) ^ set(expected)))}")
    if problems:
        raise BuildError(f"{p.board.name}: " + "; ".join(problems))


def _stage(p: BuildPlan, started: float) -> BuildInfo:
    """Copy outputs + build.json into a hidden folder beside dist/<BOARD>, then swap it in: the
    previous dist/<BOARD> is replaced only by a complete, checked build."""
    board = p.board
    staging = p.dist_dir / f".{board.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        offsets = {r.file: r.offset for r in board.flash_regions()}
        artifacts = []
        for out in board.port.outputs:
            built = p.build_dir / out.file
            if not built.is_file():
                raise BuildError(f"{board.name}: the build did not produce {built}")
            shutil.copy2(built, staging / out.file)
            artifacts.append(Artifact(out.file, sha256_file(built), built.stat().st_size, offsets.get(out.file),
                                      out.file in offsets))
        frozen_c = p.build_dir / "frozen_content.c"
        if not frozen_c.is_file():
            raise BuildError(f"{board.name}: no {frozen_c}: the frozen manifest was not applied")
        listed = frozen_modules(frozen_c)
        check_frozen(p, listed)
        regions = image_budget(p)
        short = [r for r in regions if not r.ok]
        if short:
            raise BuildError(f"{board.name}: the image leaves less than the board's margin free: "
                             + "; ".join(r.describe() for r in short)
                             + f" (margins in boards/{board.source.name})")
        ver, commit, dirty = _project_version(project_root())
        extra: dict[str, object] = {"checkout": str(p.checkout), "uid_gid": _uid_gid_of(p)}
        if p.native:
            extra["native"] = {"path": str(p.native.path), "stamp": p.native.stamp}
        info = BuildInfo(
            board=board.name, port=board.port.name, chip=board.chip, chip_name=board.chip_name,
            flash_size=board.flash_size, mp_board=board.mp_board, variant=board.variant,
            micropython_version=p.micropython_version, micropython_commit=p.micropython_commit,
            project_version=ver, project_commit=commit, project_dirty=dirty,
            manifest_sha256=sha256_file(p.manifest), inputs_sha256=p.inputs_sha256,
            frozen_modules=listed, artifacts=tuple(artifacts), toolchain=p.toolchain,
            toolchain_image=p.image, built_at=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            duration_s=round(time.monotonic() - started, 2),
            extra=extra, compiler=p.compiler, budget={r.name: r.to_dict() for r in regions} or None,
        )
        write_atomic(staging / BUILD_INFO, info.to_json())
        _swap_in(staging, p.board_dist)
        return info
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_in(staging: Path, target: Path) -> None:
    """Replace `target` with the complete `staging` folder: the old one is moved aside first and
    removed only after the new one has its name."""
    old = target.with_name(f".{target.name}.previous")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old.exists() and not target.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _uid_gid_of(p: BuildPlan) -> list[int] | None:
    argv = p.steps[0].argv
    if p.toolchain != "docker":
        return None
    uid, gid = argv[argv.index("--user") + 1].split(":")
    return [int(uid), int(gid)]


# --- many boards -----------------------------------------------------------------------------


def build_all(boards: Iterable[Board], *, toolchain: str = "auto", image: str | None = None, jobs: int = 1,
              micropython: str | Path | None = None, force: bool = False, skip_unavailable: bool = False,
              on_event: Event = lambda board, msg: None, root: Path | None = None,
              dist: Path | None = None, cancel: threading.Event | None = None) -> list[BuildResult]:
    """Build several boards, `jobs` at a time (the CPU cores shared out as make -j), in the
    order given. A board without a toolchain here is failed, or with `skip_unavailable` listed
    as "skipped" with the reason, before any checkout check (it needs none). A board named twice
    is built once (two builds of one board would share, and empty, one build tree). A toolchain
    that is none of TOOLCHAINS is a BuildError, once, before any board."""
    if toolchain not in TOOLCHAINS:
        raise BuildError(f"--toolchain must be one of {', '.join(TOOLCHAINS)}, got {toolchain!r}")
    selected = list({b.name: b for b in boards}.values())
    jobs = max(1, int(jobs))
    make_jobs = max(1, (os.cpu_count() or 1) // jobs)
    plans: list[BuildPlan] = []
    results: list[BuildResult] = []
    cancel = cancel or threading.Event()
    try:
        # The engine is asked once: for auto's choice, and for a Docker build asked for (--toolchain
        # docker, --image), which without an engine fails saying so, not as a step's exit 125.
        docker_reason = docker_engine_reason() if toolchain == "auto" or toolchain == "docker" or image else None
        for b in selected:
            try:
                status = toolchain_status(b, docker_reason=docker_reason) if toolchain == "auto" and not image else None
                if status and status.kind is None:
                    if skip_unavailable:
                        results.append(BuildResult(b.name, "skipped", 0.0, error=status.reason))
                        continue
                    raise no_toolchain(b, status)
                checkout = source.locate(micropython, [b.port.name])
                missing = check.missing_target(b, checkout)
                if missing:             # make would say so too, after mpy-cross and minutes of CMake
                    raise BuildError(f"{b.name}: {missing}")
                p = plan(b, checkout, toolchain, image, make_jobs, root=root, dist=dist, status=status)
                if p.toolchain == "docker" and docker_reason:
                    raise BuildError(f"{b.name}: {docker_reason}: a Docker build (--toolchain docker, --image) needs a "
                                     "running Docker engine" + _previous_note(p))
                plans.append(p)
            except (source.SourceError, BuildError, ConfigError) as e:
                results.append(BuildResult(b.name, "failed", 0.0, error=str(e)))
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = []
            try:
                futures += [pool.submit(run, p, on_event, force, None, cancel) for p in plans]
            except KeyboardInterrupt:
                cancel.set()
            results.extend(parallel.results(futures, cancel))  # Ctrl-C: running steps stop, queued builds do not start
    except KeyboardInterrupt:               # while planning: nothing runs yet
        cancel.set()
    done = {r.board for r in results}
    results += [BuildResult(b.name, "not started", 0.0, error=f"interrupted before it started; dist/{b.name}/ unchanged")
                for b in selected if b.name not in done]
    order = {b.name: i for i, b in enumerate(selected)}
    results.sort(key=lambda r: order[r.board])
    return results
