"""What a board should run: an `Expected` from dist/<BOARD>/build.json, a release's index.json, or
the board file alone; the stack's module list comes from manifest.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..buildinfo import IDENTITY_MODULE
from ..check import module_name
from ..config import Board, project_root
from .model import SmokeError

# Stack modules that start things when imported: checked only if boot.py already imported them.
RUNS_ON_IMPORT = ("workshop_boot",)


def manifest_modules(manifest: Path | None = None) -> tuple[str, ...]:
    """The frozen paths our manifest.py adds ('umqtt/simple.py', 'wifi.py', ...), in its order.

    Evaluates the manifest with `module()`/`package()` stand-ins (MicroPython's manifestfile
    semantics for those two); anything else in it is ignored. The build identity module is not
    part of the stack (the firmware check reads it), even when WORKSHOP_BUILD_IDENTITY is set here.
    """
    manifest = manifest or project_root() / "manifest.py"
    base = manifest.parent
    found: list[str] = []

    def module(path: str, base_path: str = ".", opt: Any = None) -> None:
        found.append(Path(path).as_posix())

    def package(name: str, files: Any = None, base_path: str = ".", opt: Any = None) -> None:
        root = base / base_path
        for f in sorted((root / name).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if files is None or rel.split("/", 1)[-1] in files:
                found.append(rel)

    def ignore(*a: Any, **k: Any) -> None:
        return None

    env = {"module": module, "package": package, "require": ignore, "include": ignore, "freeze": ignore,
           "metadata": ignore, "options": type("O", (), {"__getattr__": lambda s, k: None})()}
    try:
        exec(compile(manifest.read_text(), str(manifest), "exec"), env)
    except OSError as e:
        raise SmokeError(f"{manifest}: cannot read the manifest: {e.strerror}") from None
    return tuple(p for p in dict.fromkeys(found) if p != IDENTITY_MODULE)


def stack_module_names(frozen: Sequence[str]) -> tuple[str, ...]:
    """Importable names for the stack's frozen paths, packages' __init__ folded in."""
    names = [module_name(p) for p in frozen]
    return tuple(n for n in dict.fromkeys(names))


def _version(v: str | None) -> str | None:
    if not v:
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}" if m else v


@dataclass(frozen=True)
class Expected:
    """What a device should run. None means: not checked."""

    source: str                                   # "dist/ESP32_GENERIC/build.json", "release/1.0/index.json", ...
    board: str | None = None
    chip: str | None = None                       # esptool chip name or "host"
    chip_name: str | None = None                  # "ESP32-S3"
    build_name: str | None = None                 # sys.implementation._build: "ESP32_GENERIC", "standard"
    micropython_version: str | None = None        # "1.28.0"
    frozen_modules: tuple[str, ...] = ()          # every frozen path in the image (when known)
    inputs_sha256: str | None = None              # the build's inputs hash, as its frozen identity must say
    stack_modules: tuple[str, ...] = ()           # module names the smoke imports
    min_free_heap: int | None = None
    flash_size: str | None = None                 # "4MB"
    stale: str | None = None                      # a dist/ build that is not the current sources' (why)

    @classmethod
    def for_board(cls, board: Board, *, manifest: Path | None = None, **changes: Any) -> Expected:
        build = board.mp_board or board.variant
        if board.mp_board and board.variant:
            build = f"{board.mp_board}-{board.variant}"
        values: dict[str, Any] = dict(
            source=f"boards/{board.name}.toml", board=board.name, chip=board.chip, chip_name=board.chip_name,
            build_name=build, stack_modules=stack_module_names(manifest_modules(manifest)),
            min_free_heap=board.min_free_heap, flash_size=board.flash_size)
        values.update(changes)
        return cls(**values)

    @classmethod
    def from_build(cls, board_dir: Path, board: Board | None = None, *,
                   manifest: Path | None = None) -> Expected:
        """dist/<BOARD>/ (build.json) + boards/<BOARD>.toml thresholds."""
        from ..buildinfo import BuildInfoError, read_build_info
        from ..config import ConfigError, get_board

        try:
            info = read_build_info(board_dir, verify=False)
        except BuildInfoError as e:
            raise SmokeError(str(e)) from None
        if board is None:
            try:
                board = get_board(info.board)
            except ConfigError as e:
                raise SmokeError(str(e)) from None
        # The stack modules checked are the manifest's own, all of them (for_board's default): one
        # missing from the image is a failure the device check reports, not something to leave out.
        expected = cls.for_board(board, manifest=manifest, source=str(board_dir / "build.json"),
                                 micropython_version=_version(info.micropython_version), chip=info.chip,
                                 chip_name=info.chip_name, frozen_modules=tuple(info.frozen_modules),
                                 flash_size=info.flash_size or board.flash_size,
                                 inputs_sha256=info.inputs_sha256)
        # The image's identity names the board it was built for: build.json's. A build the sources
        # have moved on from is still what the boards should run, but the run says so.
        from ..build import stale_reason

        return replace(expected, board=info.board, stale=stale_reason(info.board, dist=board_dir.parent))

    @classmethod
    def from_release_index(cls, index: Path, board_name: str, *,
                           manifest: Path | None = None) -> Expected:
        """A release's index.json (release/<V>/ or a download cache), read by workshop.release."""
        from ..config import ConfigError, get_board
        from ..release import ReleaseError, read_index

        try:
            _, boards = read_index(index.read_bytes(), str(index))
        except OSError as e:
            raise SmokeError(f"{index}: cannot read the release index: {e.strerror or e}") from None
        except ReleaseError as e:
            raise SmokeError(str(e)) from None
        entry = next((b for b in boards if b.board == board_name), None)
        if entry is None:
            raise SmokeError(f"{index}: no board {board_name!r} in this release "
                             f"(it has: {', '.join(b.board for b in boards) or 'none'})")
        try:
            board = get_board(board_name)
        except ConfigError as e:
            raise SmokeError(str(e)) from None
        return cls.for_board(board, manifest=manifest, source=str(index),
                             micropython_version=_version(entry.micropython_version), chip=entry.chip,
                             chip_name=entry.chip_family, frozen_modules=entry.frozen_modules,
                             flash_size=entry.flash_size or board.flash_size,
                             inputs_sha256=entry.inputs_sha256)   # None in indexes made before identities


def choose_expected(board: str | None = None, *, dist: Path | None = None,
                    release: str | None = None, board_file: bool = False) -> Expected:
    """What the boards should run, as `invoke smoke` chooses it: release V's index.json
    (--release), else dist/<BOARD>/build.json, else the board file alone. Without a board
    name, the only build in dist/ is the one (SmokeError when there are none or several).

    A `dist` named explicitly must hold that board's build (SmokeError otherwise: checking
    against the board file instead would pass a board the named build was never on);
    `board_file=True` asks for the board file alone (boards/<BOARD>.toml, no build identity)."""
    from ..buildinfo import dist_dir
    from ..config import ConfigError, get_board

    if board_file:
        if not board or release or dist is not None:
            raise SmokeError("--board-file takes --board NAME, and neither --dist nor --release")
        try:
            return Expected.for_board(get_board(board))
        except ConfigError as e:
            raise SmokeError(str(e)) from None
    base = dist if dist is not None else dist_dir()
    if dist is not None and not release and not dist.is_dir():
        raise SmokeError(f"--dist {dist}: no such folder of builds (see 'invoke build'; --board-file expects "
                         "the board file alone)")
    if not board:
        built = sorted(p.name for p in base.glob("*") if (p / "build.json").is_file())
        if len(built) != 1:
            raise SmokeError("which firmware should the boards run? pass --board NAME"
                             + (f" (built: {', '.join(built)})" if built else f" (nothing built in {base})"))
        board = built[0]
    if release:
        return Expected.from_release_index(release_index(release), board)
    if (base / board / "build.json").is_file():
        return Expected.from_build(base / board)
    try:
        known = get_board(board)
    except ConfigError as e:
        raise SmokeError(str(e)) from None
    if dist is not None:
        raise SmokeError(f"--dist {dist}: no build of {board} there (no {dist / board / 'build.json'}): "
                         f"'invoke build --board {board}', or --board-file to expect boards/{board}.toml alone")
    return Expected.for_board(known)


def release_index(version: str, root: Path | None = None, cache: Path | None = None) -> Path:
    """index.json of release `version`: the one made here (release/<V>/), else a downloaded one
    (what `invoke flash --release V` wrote). SmokeError when there is neither."""
    root = project_root(root)
    from ..download import release_cache
    from ..release import INDEX, ReleaseError, normalize_version

    try:
        v = normalize_version(version)
    except ReleaseError as e:
        raise SmokeError(str(e)) from None
    candidates = [root / "release" / v / INDEX, release_cache(v, cache) / INDEX]
    for index in candidates:
        if index.is_file():
            return index
    raise SmokeError(f"release {v}: no index.json in {' or '.join(str(c.parent) for c in candidates)} "
                     f"(invoke release --version {v}, or invoke download --version {v})")
