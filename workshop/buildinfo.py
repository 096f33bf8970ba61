"""build.json: what a build left in dist/<BOARD>/, read by flash, smoke and release.

Written last, atomically, by workshop.build: a dist/<BOARD>/ without a readable build.json is
not a finished build.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import project_root

BUILD_INFO = "build.json"
FORMAT = 1
# The image's identity: a generated module (board, inputs hash, project version) that the build
# writes into <build tree>/identity/ and the root manifest.py freezes when this variable names
# that folder. smoke imports it on the device and compares it with build.json / index.json.
IDENTITY_ENV = "WORKSHOP_BUILD_IDENTITY"
IDENTITY_MODULE = "_workshop_build.py"


class BuildInfoError(ValueError):
    """dist/<BOARD>/ is missing, incomplete or does not match its build.json."""


def dist_dir(root: Path | None = None) -> Path:
    return project_root(root) / "dist"


@dataclass(frozen=True)
class Artifact:
    file: str                 # name inside dist/<BOARD>/
    sha256: str
    size: int
    offset: int | None        # flash offset; None = not written to a device (host binary, .elf, .map)
    flash: bool


@dataclass(frozen=True)
class BuildInfo:
    board: str
    port: str
    chip: str                 # esptool chip name, or "host"
    chip_name: str            # esptool's display name, e.g. "ESP32-S3"
    flash_size: str | None
    mp_board: str | None
    variant: str | None
    micropython_version: str
    micropython_commit: str
    project_version: str
    project_commit: str | None
    project_dirty: bool
    manifest_sha256: str
    inputs_sha256: str        # the cache key: same inputs -> no rebuild
    frozen_modules: tuple[str, ...]
    artifacts: tuple[Artifact, ...]
    toolchain: str            # "docker" | "native"
    toolchain_image: str | None
    built_at: str             # ISO 8601 UTC
    duration_s: float
    format: int = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    # What compiled it: the native compiler's `--version` line, or the container image.
    compiler: str | None = None
    # Per region read from the ELF: {"iram": {"region", "used", "size", "free", "margin"}}; None = not measured.
    budget: dict[str, dict[str, Any]] | None = None

    @property
    def flash_images(self) -> tuple[Artifact, ...]:
        return tuple(a for a in self.artifacts if a.flash and a.offset is not None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildInfo:
        data = dict(data)
        data["artifacts"] = tuple(Artifact(**a) for a in data["artifacts"])
        data["frozen_modules"] = tuple(data["frozen_modules"])
        return cls(**data)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, data: bytes | str, mode: int | None = None) -> None:
    """Write via a temporary file in the same folder + rename: readers never see half a file.
    `mode`: the file's permissions (None: the temporary file's own, 600)."""
    raw = data.encode() if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_build_info(board_dir: Path, verify: bool = True) -> BuildInfo:
    """Load dist/<BOARD>/build.json; with verify, every artifact must exist with its sha256."""
    path = board_dir / BUILD_INFO
    try:
        info = BuildInfo.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise BuildInfoError(f"{path}: missing: {board_dir.name} has no finished build (invoke build --board {board_dir.name})") from None
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        raise BuildInfoError(f"{path}: unreadable build info: {e}") from None
    if verify:
        for art in info.artifacts:
            f = board_dir / art.file
            if not f.is_file():
                raise BuildInfoError(f"{f}: missing, but {path.name} lists it")
            if f.stat().st_size != art.size or sha256_file(f) != art.sha256:
                raise BuildInfoError(f"{f}: does not match the sha256 in {path.name} (changed after the build)")
    return info
