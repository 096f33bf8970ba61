"""Lesson files onto a board: a folder tree (main.py, lib/, exercises) copied through the raw REPL.

Per file: the board's sha256 of what it holds is compared first (identical files are skipped),
then the file is written to `<path>.tmp` and renamed (never half a file under the real name),
then the board's sha256 of the result must equal ours. The board keeps a list of the files the kit
put there and their sha256 (`.workshop_lessons` beside them): with `prune`, an earlier lesson's
file that this folder no longer has is removed if it is still as the kit wrote it, and kept (and
said) if it was edited on the board: an attendee's work is never deleted. Secrets never come from the lesson
folder: `workshop.json` there is refused (provisioning writes the config), and so is any file
that contains a configured secret. Nor does a lesson replace the kit's own stack: a `wifi.py`
(or `umqtt/` folder) at the lesson's root would be imported on the board instead of the frozen
module (a board's sys.path is ['', '.frozen', '/lib']) and is refused, as is anything that
would be left out without a word (a symlink to nothing, a FIFO) or that the board cannot name.
Symlinks are followed (a `lib -> ../shared/lib` is copied as the folder it shows).

Used by `provision --files DIR` (workshop.provision.provision_all(files=...)), which runs it on
every board in parallel.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .repl import RemoteError, ReplError, ReplSession

SKIP_NAMES = {"__pycache__", ".git", ".DS_Store"}
CONFIG_NAME = "workshop.json"

# Board side: one line per path, in order: its sha256 (hex), or '-' when missing; folders made
# first. Small on purpose (an ESP8266 has ~14 KB free): the paths of one batch come as a list
# literal of at most HASH_BATCH characters, each hash is printed as it is made (no dict, no JSON
# of them all), and nothing stays in the REPL's globals afterwards. No '%' but the two below.
_HASHES = """
import os, binascii
try:
    import hashlib
except ImportError:
    import uhashlib as hashlib
def _wsh(dirs, paths):
    for d in dirs:
        try:
            os.mkdir(d)
        except OSError:
            pass
    b = bytearray(512)
    m = memoryview(b)
    for p in paths:
        try:
            f = open(p, 'rb')
        except OSError:
            print('-')
            continue
        h = hashlib.sha256()
        while 1:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
        f.close()
        print(binascii.hexlify(h.digest()).decode())
_wsh(%r, %r)
del _wsh
"""
HASH_BATCH = 1024        # characters of paths per command
_SHA256 = re.compile(r"[0-9a-f]{64}")
RECORD_NAME = ".workshop_lessons"   # on the board: "<sha256> <path>" per file the kit put there
# The record, line by line (no whole-file string on an ESP8266); '-' first when there is none.
_READ_RECORD = """
try:
    _f = open(%r)
except OSError:
    print('-')
else:
    _l = None
    for _l in _f:
        print(_l.rstrip('\\r\\n'))
    _f.close()
    del _l
    del _f
"""
_RECORD_LINE = re.compile(r"([0-9a-f]{64}) (.+)")
# Removes each file, then each folder given that is now empty (deepest first; a folder still
# holding files raises, and is kept).
_REMOVE = """
import os
for _p in %r:
    os.remove(_p)
for _p in %r:
    try:
        os.rmdir(_p)
    except OSError:
        pass
del _p
"""


class LessonError(ValueError):
    """The lesson folder cannot be used as it is (missing, holds a secret or the device config),
    or a file of it could not be written to a board. `result` holds what was done on that board
    before it stopped (the files already written), when it got that far."""

    def __init__(self, message: str, result: FilesResult | None = None) -> None:
        super().__init__(message)
        self.result = result


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
    removed: list[str] = field(default_factory=list)   # prune: earlier lessons' files, as the kit wrote them
    kept: list[str] = field(default_factory=list)      # prune: earlier lessons' files edited on the board

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "unchanged": self.unchanged, "removed": self.removed, "kept": self.kept}

    @property
    def summary(self) -> str:
        text = f"{len(self.written)} lesson file(s) written, {len(self.unchanged)} already identical"
        if self.removed:
            text += f", {len(self.removed)} earlier one(s) removed"
        if self.kept:
            text += f", {len(self.kept)} earlier one(s) kept, edited on the board: {', '.join(self.kept)}"
        return text


def files_cell(files: dict[str, Any] | None) -> str:
    """A board's lesson files in a few words, for a table cell: '2 new, 3 same, 1 removed'."""
    if not files:
        return "-"
    text = f"{len(files['written'])} new, {len(files['unchanged'])} same"
    if files.get("removed"):
        text += f", {len(files['removed'])} removed"
    if files.get("kept"):
        text += f", kept (edited on the board): {', '.join(files['kept'])}"
    return text


def stack_names() -> frozenset[str]:
    """The top-level names the firmware's own stack is imported by (manifest.py: 'wifi', 'umqtt',
    ...; the build identity too): a lesson file or folder of that name at the board's root
    would be imported instead of the frozen one."""
    from .buildinfo import IDENTITY_MODULE
    from .smoke.expect import manifest_modules

    return frozenset(PurePosixPath(p).parts[0].removesuffix(".py") for p in (*manifest_modules(), IDENTITY_MODULE))


def _shadowed(rel: PurePosixPath, stack: frozenset[str]) -> str | None:
    # Case-blind: on a FAT filesystem (case-insensitive) WiFi.py is found by `import wifi`.
    top = rel.parts[0].lower()
    name = top if len(rel.parts) > 1 else re.sub(r"\.(py|mpy)$", "", top)
    return name if name in stack and (len(rel.parts) > 1 or name != top) else None


def collect(folder: Path, secrets: list[str] | tuple[str, ...] = (),
            stack: frozenset[str] | None = None) -> list[LessonFile]:
    """Every file under `folder` (sorted), checked before any board is touched. `stack`: the
    module names a root-level lesson file must not take (default: the firmware's, stack_names())."""
    if not folder.is_dir():
        raise LessonError(f"{folder}: no such folder of lesson files")
    stack = stack_names() if stack is None else stack
    found: list[tuple[PurePosixPath, Path]] = []

    def walk(d: Path, rel: PurePosixPath, above: tuple[tuple[int, int], ...]) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            path, sub = d / entry.name, rel / entry.name
            if entry.name in SKIP_NAMES or entry.name.startswith("."):
                continue
            try:
                st = os.stat(path)                   # a symlink: what it points to
            except OSError as e:
                if not os.path.islink(path):
                    raise LessonError(f"{path}: cannot read: {e.strerror or e}") from None
                raise LessonError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist: fix "
                                  "or remove the link (it would be left out)") from None
            try:
                sub.as_posix().encode("utf-8")
            except UnicodeEncodeError:
                raise LessonError(f"{path!r}: the name is not UTF-8 (a board names files in UTF-8): "
                                  "rename it") from None
            if "\n" in entry.name or "\r" in entry.name:
                raise LessonError(f"{path!r}: the name has a line break in it (the board's list of lesson "
                                  "files is one line per file): rename it")
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in above:
                    raise LessonError(f"{path}: a symbolic link to a folder it is in (a loop): remove the link")
                walk(path, sub, (*above, key))
            elif stat.S_ISREG(st.st_mode):
                found.append((sub, path))
            else:
                raise LessonError(f"{path}: neither a file nor a folder (a FIFO, socket or device): "
                                  "remove it from the lesson folder")

    root = os.stat(folder)
    walk(folder, PurePosixPath(), ((root.st_dev, root.st_ino),))
    files = []
    for rel, path in sorted(found, key=lambda f: f[0].parts):
        if rel.as_posix() == CONFIG_NAME:
            raise LessonError(f"{path}: the device config is written by provisioning, not copied as a lesson "
                              "file: remove it from the folder")
        name = _shadowed(rel, stack)
        if name is not None:
            raise LessonError(f"{path}: would replace the kit's own '{name}' module on every board (a board "
                              f"imports its files before the firmware's, so boot and tutorials would get this "
                              f"one): rename it (e.g. {name}_lesson{'.py' if len(rel.parts) == 1 else ''}), "
                              "or put it under lib/")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise LessonError(f"{path}: cannot read: {e.strerror or e}") from None
        for secret in secrets:
            if secret and secret.encode() in data:
                raise LessonError(f"{path}: contains a configured secret (a password): lesson files are shared "
                                  "with every board and attendee; remove it")
        files.append(LessonFile(rel.as_posix(), data))
    return files


# MicroPython's errno numbers are the POSIX ones Linux has: the host's errno module names them.
_ERRNO = {errno.ENOSPC: "the board's filesystem is full", errno.EROFS: "the board's filesystem is read-only",
          errno.ENOENT: "no such file or folder on the board",
          errno.ENOTDIR: "a file on the board is in the way of a folder there",
          errno.EISDIR: "a folder on the board has that name", errno.EACCES: "the board refused access",
          errno.EIO: "the board's flash failed to write (I/O error)"}


def board_error(e: ReplError) -> str:
    """What a board's error means, in words: 'the board's filesystem is full (OSError 28)' for a
    RemoteError a file write raised (MicroPython says 'OSError: 28' or '[Errno 28] ENOSPC');
    other errors as they are (their port prefix dropped)."""
    text = e.reason
    if isinstance(e, RemoteError):
        if e.exc_type.endswith("MemoryError"):
            return f"the board ran out of memory ({e.exc_type}: {e.exc_message})"
        if e.exc_type.endswith("OSError"):
            m = re.search(r"\d+", e.exc_message)
            name = re.search(r"\bE[A-Z]+\b", e.exc_message)
            code = int(m.group()) if m else getattr(errno, name.group(), None) if name else None
            if code in _ERRNO:
                return f"{_ERRNO[code]} (OSError {code})"
    return text


def _device_path(root: str, relative: str) -> str:
    return str(PurePosixPath(root) / relative) if root else relative


def _batches(paths: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    size = 0
    for p in paths:
        n = len(repr(p)) + 2
        if out[-1] and size + n > HASH_BATCH:
            out.append([])
            size = 0
        out[-1].append(p)
        size += n
    return out


def board_hashes(session: ReplSession, paths: list[str], dirs: Sequence[str] = ()) -> dict[str, str | None]:
    """The board's sha256 (hex) of each path, None for a missing one; `dirs` made first. A line
    a background service prints meanwhile (telnet, announce) is no hash and is passed over."""
    for batch in _batches(list(dirs)) if dirs else []:
        session.run(_HASHES % (batch, []))
    hashes: dict[str, str | None] = {}
    for batch in _batches(paths):
        text = session.run(_HASHES % ([], batch))
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() == "-" or _SHA256.fullmatch(ln.strip())]
        if len(lines) != len(batch):
            raise ReplError(session.port, f"the board answered {len(lines)} sha256 line(s) for {len(batch)} "
                                          f"file(s): {text.strip()[:80]!r}")
        for p, line in zip(batch, lines):
            hashes[p] = None if line == "-" else line
    return hashes


def read_record(session: ReplSession, root: str = "/") -> dict[str, str]:
    """The files the kit put under `root` in earlier runs: {relative path: sha256 as written}
    ({} on a board that has no record: provisioned before the kit kept one, or never)."""
    text = session.run(_READ_RECORD % _device_path(root, RECORD_NAME))
    record: dict[str, str] = {}
    for line in text.splitlines():          # (not stripped: a name may start or end with a space)
        m = _RECORD_LINE.fullmatch(line)
        if m:
            record[m.group(2)] = m.group(1)
    return record


def _prune(session: ReplSession, record: dict[str, str], keep: set[str], root: str,
           result: FilesResult) -> dict[str, str]:
    """Remove the recorded files not in `keep` that are still as the kit wrote them; the rest of
    the record (the files still tracked)."""
    gone = sorted(r for r in record if r not in keep)
    if not gone:
        return record
    now = board_hashes(session, [_device_path(root, r) for r in gone])
    remove = [r for r in gone if now[_device_path(root, r)] == record[r]]
    result.kept += [r for r in gone if now[_device_path(root, r)] not in (None, record[r])]
    folders = sorted({str(d) for r in remove for d in list(PurePosixPath(r).parents)[:-1]},
                     key=lambda d: -len(PurePosixPath(d).parts))
    for batch in _batches(remove) if remove else []:
        session.run(_REMOVE % ([_device_path(root, r) for r in batch], []))
    if folders:
        session.run(_REMOVE % ([], [_device_path(root, d) for d in folders]))
    result.removed += remove
    return {r: h for r, h in record.items() if r in keep}


def copy_files(session: ReplSession, files: list[LessonFile], root: str = "/", *, prune: bool = False) -> FilesResult:
    """Copy `files` under `root` on the board ('' = the device's current folder, the unix port).
    A file that cannot be written raises LessonError naming it, why in words, and (`.result`)
    the files written before it. The board's record of the kit's files is updated (atomically)
    once all are written; `prune` first removes the recorded ones `files` no longer has, unless
    edited on the board (`.kept`)."""
    result = FilesResult()
    try:
        record = read_record(session, root)
        if prune:
            record = _prune(session, record, {f.relative for f in files}, root, result)
    except ReplError as e:
        raise LessonError(f"{session.port}: cannot remove the earlier lessons' files: {board_error(e)}"
                          if prune else f"{session.port}: cannot read the board's lesson record: {board_error(e)}",
                          result) from None
    if not files:
        _write_record(session, record, root, result)
        return result
    targets = {f.relative: _device_path(root, f.relative) for f in files}
    dirs: list[str] = []
    for f in files:
        parents = list(PurePosixPath(f.relative).parents)[:-1]
        for parent in reversed(parents):
            d = _device_path(root, str(parent))
            if d not in dirs:
                dirs.append(d)
    try:
        before = board_hashes(session, list(targets.values()), dirs)
    except ReplError as e:
        raise LessonError(f"{session.port}: cannot read the board's lesson files: {board_error(e)}", result) from None
    changed = [f for f in files if before.get(targets[f.relative]) != f.sha256]
    for f in files:
        if f not in changed:
            result.unchanged.append(f.relative)
    done: list[LessonFile] = []
    for f in changed:
        try:
            session.put(targets[f.relative], f.data, atomic=True, verify=False)
        except ReplError as e:
            so_far = f" ({len(done)} other file(s) written before it)" if done else ""
            result.written += [d.relative for d in done]
            raise LessonError(f"{session.port}: {targets[f.relative]} ({len(f.data)} bytes) not written: "
                              f"{board_error(e)}{so_far}", result) from None
        done.append(f)
    if changed:
        try:
            after = board_hashes(session, [targets[f.relative] for f in changed])
        except ReplError as e:
            raise LessonError(f"{session.port}: cannot check the files written: {board_error(e)}", result) from None
        for f in changed:
            got = after.get(targets[f.relative])
            if got != f.sha256:
                raise LessonError(f"{targets[f.relative]}: the board's sha256 {str(got)[:12]} differs from the "
                                  f"lesson file's {f.sha256[:12]} after writing", result)
            result.written.append(f.relative)
    # The kit's files: what it wrote now, and what it wrote before and is still as written. A
    # file that was already there as the lesson has it, and is not in the record, is not the
    # kit's (an attendee's copy, a fleet put): --prune never touches it.
    _write_record(session, {**record, **{f.relative: f.sha256 for f in files if f.relative in record},
                            **{f.relative: f.sha256 for f in changed}}, root, result)
    return result


def _write_record(session: ReplSession, record: dict[str, str], root: str, result: FilesResult) -> None:
    data = "".join(f"{record[r]} {r}\n" for r in sorted(record)).encode()
    try:
        session.put(_device_path(root, RECORD_NAME), data, atomic=True, verify=True)
    except ReplError as e:
        raise LessonError(f"{session.port}: the lesson files are written, but not the list of them "
                          f"({RECORD_NAME}, which --prune needs): {board_error(e)}", result) from None


__all__ = ["RECORD_NAME", "FilesResult", "LessonError", "LessonFile", "board_error", "board_hashes", "collect",
           "copy_files", "files_cell", "read_record", "stack_names"]
