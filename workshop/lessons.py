"""Lesson files onto a board: a folder tree (main.py, lib/, exercises) copied through the raw REPL.

Per file: the board's sha256 of what it holds is compared first (identical files are skipped),
then the file is written to `<path>.tmp` and renamed (never half a file under the real name),
then the board's sha256 of the result must equal ours. Secrets never come from the lesson
folder: `workshop.json` there is refused (provisioning writes the config), and so is any file
that contains a configured secret.

Used by `provision --files DIR` (workshop.provision.provision_all(files=...)), which runs it on
every board in parallel.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .repl import ReplSession

SKIP_NAMES = {"__pycache__", ".git", ".DS_Store"}
CONFIG_NAME = "workshop.json"

# Board side: sha256 (hex) of each path, None when missing; folders made on request. No '%'.
_HASHES = """
import os, json, binascii
try:
    import hashlib
except ImportError:
    import uhashlib as hashlib
A = json.loads(%r)
for d in A['dirs']:
    try:
        os.mkdir(d)
    except OSError:
        pass
R = {}
b = bytearray(512)
for p in A['paths']:
    try:
        f = open(p, 'rb')
    except OSError:
        R[p] = None
        continue
    h = hashlib.sha256()
    while 1:
        n = f.readinto(b)
        if not n:
            break
        h.update(memoryview(b)[:n])
    f.close()
    R[p] = binascii.hexlify(h.digest()).decode()
print(json.dumps(R))
"""


class LessonError(ValueError):
    """The lesson folder cannot be used as it is (missing, holds a secret or the device config)."""


@dataclass(frozen=True)
class LessonFile:
    relative: str          # posix path inside the lesson folder
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class FilesResult:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "unchanged": self.unchanged}

    @property
    def summary(self) -> str:
        return f"{len(self.written)} lesson file(s) written, {len(self.unchanged)} already identical"


def collect(folder: Path, secrets: list[str] | tuple[str, ...] = ()) -> list[LessonFile]:
    """Every file under `folder` (sorted), checked before any board is touched."""
    if not folder.is_dir():
        raise LessonError(f"{folder}: no such folder of lesson files")
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part in SKIP_NAMES or part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if rel.as_posix() == CONFIG_NAME:
            raise LessonError(f"{path}: the device config is written by provisioning, not copied as a lesson "
                              "file: remove it from the folder")
        data = path.read_bytes()
        for secret in secrets:
            if secret and secret.encode() in data:
                raise LessonError(f"{path}: contains a configured secret (a password): lesson files are shared "
                                  "with every board and attendee; remove it")
        files.append(LessonFile(rel.as_posix(), data))
    return files


def _device_path(root: str, relative: str) -> str:
    return str(PurePosixPath(root) / relative) if root else relative


def copy_files(session: ReplSession, files: list[LessonFile], root: str = "/") -> FilesResult:
    """Copy `files` under `root` on the board ('' = the device's current folder, the unix port)."""
    result = FilesResult()
    if not files:
        return result
    targets = {f.relative: _device_path(root, f.relative) for f in files}
    dirs: list[str] = []
    for f in files:
        parents = list(PurePosixPath(f.relative).parents)[:-1]
        for parent in reversed(parents):
            d = _device_path(root, str(parent))
            if d not in dirs:
                dirs.append(d)
    before = session.eval_json(_HASHES % json.dumps({"dirs": dirs, "paths": list(targets.values())}))
    changed = [f for f in files if before.get(targets[f.relative]) != f.sha256]
    for f in files:
        if f not in changed:
            result.unchanged.append(f.relative)
    for f in changed:
        session.put(targets[f.relative], f.data, atomic=True, verify=False)
    if changed:
        after = session.eval_json(_HASHES % json.dumps({"dirs": [], "paths": [targets[f.relative] for f in changed]}))
        for f in changed:
            got = after.get(targets[f.relative])
            if got != f.sha256:
                raise LessonError(f"{targets[f.relative]}: the board's sha256 {str(got)[:12]} differs from the "
                                  f"lesson file's {f.sha256[:12]} after writing")
            result.written.append(f.relative)
    return result


__all__ = ["FilesResult", "LessonError", "LessonFile", "collect", "copy_files"]
