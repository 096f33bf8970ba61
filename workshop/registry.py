"""Every board ever seen, keyed by MAC, in one SQLite file (stdlib `sqlite3`).

The registry is how the kit remembers a classroom: which physical board is `lab-07`, what it
was flashed with, whether its last provision and smoke passed, and every run it went through.

API (stable; the room view joins with it):

    reg = Registry("workshop.db")              # created on first use
    reg.boards() -> list[BoardRecord]           # sorted by sticker
    reg.get(mac) / reg.by_hostname(name) / reg.by_sticker(n) -> BoardRecord | None
    reg.see(mac, chip=..., flash_size=..., port=..., usb_serial=..., usb_id=...) -> BoardRecord
    reg.record_flash(mac, ok=..., board=..., image=..., release=..., inputs=..., detail=..., flash_size=...)
    reg.record_flash_started(mac)               # before the first byte is written: not ready any more
    reg.record_provision(mac, ok=..., hostname=..., detail=...)
    reg.record_smoke(mac, ok=..., detail=...)
    reg.record_event(mac, stage, ok, detail)    # anything else worth keeping (duplicate MAC...)
    reg.history(mac) -> list[Run]
    reg.to_csv() / reg.to_json(); read_csv(text) -> list[BoardRecord]

`BoardRecord` fields: mac, sticker, chip, flash_size, usb_serial, usb_id, port, hostname, board,
image, release, inputs (the image's inputs hash), flash_ok, flashed_at, provision_ok,
provision_at, provision_detail, smoke_ok, smoke_at, smoke_detail, state, first_seen, last_seen.
`state` is the board's standing in words: "seen", "flashing" (a flash began and never ended: a
run was killed mid-write), "flashed", "provisioned", "ready", "failed".

Stickers: the first time a MAC is seen it gets the next sticker number (1, 2, 3, ...), the
`{index}` of hostname patterns. A number is never given to another board, even if that board is
never seen again (a counter, not max()+1).

Concurrency: each operation opens its own connection (threads and processes alike), writes in
`BEGIN IMMEDIATE` transactions, WAL journal: two processes recording at once both land, and a
crash mid-run leaves the file as of the last committed operation. A lock another program holds
(an SQLite browser with unsaved changes) is waited for up to BUSY_TIMEOUT_S in short tries, so
Ctrl-C still ends the wait at once; then it is a RegistryError naming the lock.

Every failure is a RegistryError naming the file: not an SQLite database, another program's
database (its tables are never touched: nothing is created in it, its journal mode is kept),
a damaged one (checked when opened), or a lock that never went away. Nothing raises sqlite3's
own exceptions.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_PATH = Path("workshop.db")
BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS boards (
    mac TEXT PRIMARY KEY,
    sticker INTEGER NOT NULL UNIQUE,
    chip TEXT, flash_size TEXT, usb_serial TEXT, usb_id TEXT, port TEXT,
    hostname TEXT, board TEXT, image TEXT, release TEXT, inputs TEXT,
    flash_ok INTEGER, flashed_at TEXT,
    provision_ok INTEGER, provision_at TEXT, provision_detail TEXT,
    smoke_ok INTEGER, smoke_at TEXT, smoke_detail TEXT,
    state TEXT NOT NULL DEFAULT 'seen',
    first_seen TEXT NOT NULL, last_seen TEXT NOT NULL
)""",
    "CREATE INDEX IF NOT EXISTS boards_hostname ON boards(hostname)",
    """CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mac TEXT NOT NULL, at TEXT NOT NULL, stage TEXT NOT NULL, ok INTEGER, detail TEXT, port TEXT
)""",
    "CREATE INDEX IF NOT EXISTS runs_mac ON runs(mac)",
)
# The tables a registry has, and the columns each must have ("sqlite_sequence": AUTOINCREMENT's).
_TABLES: dict[str, frozenset[str]] = {
    "meta": frozenset({"key", "value"}),
    "boards": frozenset({"mac", "sticker", "chip", "flash_size", "usb_serial", "usb_id", "port", "hostname", "board",
                         "image", "release", "inputs", "flash_ok", "flashed_at", "provision_ok", "provision_at",
                         "provision_detail", "smoke_ok", "smoke_at", "smoke_detail", "state", "first_seen",
                         "last_seen"}),
    "runs": frozenset({"id", "mac", "at", "stage", "ok", "detail", "port"}),
    "sqlite_sequence": frozenset(),
}


SQLITE_HEADER = b"SQLite format 3\x00"       # the first 16 bytes of every SQLite database file
CREATING_S = 2.0      # an empty file this recent may be a registry another process is creating
LOCK_TRY_S = 0.1      # one try at a lock another connection holds: Ctrl-C lands between tries
LEFT_AS_IS = "left as it is; name a new file, or the station's registry"


class RegistryError(RuntimeError):
    """The registry file cannot be used (not a database, wrong schema, damaged, locked, unwritable)."""


class RegistryLocked(RegistryError):
    """Another program held the registry's lock for longer than BUSY_TIMEOUT_S."""


@dataclass(frozen=True)
class BoardRecord:
    mac: str
    sticker: int
    chip: str | None = None
    flash_size: str | None = None
    usb_serial: str | None = None
    usb_id: str | None = None
    port: str | None = None
    hostname: str | None = None
    board: str | None = None
    image: str | None = None
    release: str | None = None
    inputs: str | None = None
    flash_ok: bool | None = None
    flashed_at: str | None = None
    provision_ok: bool | None = None
    provision_at: str | None = None
    provision_detail: str | None = None
    smoke_ok: bool | None = None
    smoke_at: str | None = None
    smoke_detail: str | None = None
    state: str = "seen"
    first_seen: str = ""
    last_seen: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Run:
    mac: str
    at: str
    stage: str
    ok: bool | None
    detail: str | None
    port: str | None


_BOOLS = {"flash_ok", "provision_ok", "smoke_ok"}
COLUMNS = tuple(f.name for f in fields(BoardRecord))


def normalize_mac(mac: str) -> str:
    """aa:bb:cc:dd:ee:ff from any common spelling (AA-BB-..., aabbcc...)."""
    digits = "".join(c for c in mac.lower() if c in "0123456789abcdef")
    if len(digits) != 12:
        raise RegistryError(f"not a MAC address: {mac!r}")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def mac_or_id(mac: str) -> str:
    """aa:bb:cc:dd:ee:ff for a MAC in any spelling; anything else (an ESP8266's chip id, the unix
    port's stand-in) as it came."""
    try:
        return normalize_mac(mac)
    except RegistryError:
        return mac


def _busy(e: sqlite3.Error) -> bool:
    """Another connection holds the lock this statement needs (SQLITE_BUSY, SQLITE_LOCKED)."""
    return getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        "database is locked" in str(e))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record(row: sqlite3.Row) -> BoardRecord:
    values = {k: row[k] for k in row.keys() if k in COLUMNS}
    for k in _BOOLS:
        if values.get(k) is not None:
            values[k] = bool(values[k])
    return BoardRecord(**values)


class Registry:
    """The board registry at `path` (created on first use). Safe to share between threads."""

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        self.path = Path(path)
        self._refuse_other_files()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"{self.path}: {e.strerror or e}") from None
        creating = not self.path.exists()
        try:
            self._open()
        except RegistryLocked:
            raise
        except RegistryError as e:
            if creating:
                self._remove_failed_creation()
            why = str(e).removeprefix(f"{self.path}: ")
            raise RegistryError(f"{self.path}: not a usable registry: {why}") from None

    def _remove_failed_creation(self) -> None:
        """A registry this call began to create and could not (a full disk): its empty file would
        refuse every later run as 'an empty file, not an SQLite database'. Only an empty one is
        removed: a file with bytes in it is another process's by now."""
        try:
            if self.path.stat().st_size:
                return
        except OSError:
            return
        for path in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm"), Path(f"{self.path}-journal")):
            try:
                path.unlink()
            except OSError:
                pass

    def _refuse_other_files(self) -> None:
        """An existing file must already be an SQLite database: SQLite would make any empty file
        one (and a typo'd --registry would turn that file into a registry)."""
        deadline = time.monotonic() + CREATING_S
        while True:
            try:
                with self.path.open("rb") as f:
                    header = f.read(len(SQLITE_HEADER))
                fresh = time.time() - self.path.stat().st_mtime < CREATING_S
            except (FileNotFoundError, IsADirectoryError):
                return                    # created on first use; a folder is sqlite's error below
            except OSError as e:
                raise RegistryError(f"{self.path}: {e.strerror or e}") from None
            # Another process creating the registry right now leaves it empty for a moment.
            if header or not fresh or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if header != SQLITE_HEADER:
            what = "an empty file" if not header else "another kind of file"
            raise RegistryError(f"{self.path}: not a usable registry: {what}, not an SQLite database ({LEFT_AS_IS})")

    def _open(self) -> None:
        """Check what the file holds before anything is written to it: another program's
        database is refused untouched, a damaged one too; a new one gets the schema (one
        transaction) and the WAL journal."""
        def look(db: sqlite3.Connection) -> dict[str, set[str]]:
            names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            tables = {n: {c[1] for c in db.execute(f"PRAGMA table_info({_quoted(n)})")} for n in names}
            if tables:
                found = [str(r[0]) for r in db.execute("PRAGMA quick_check(3)")]
                if found != ["ok"]:
                    problems = [ln.strip() for f in found for ln in f.splitlines() if not ln.startswith("***")]
                    raise RegistryError(f"the file is damaged ({'; '.join(problems)}); left as it is: restore a "
                                        "copy from before the damage, or name a new file")
            return tables

        tables = self._read(look)
        for name in set(tables) & set(_TABLES):
            missing = sorted(_TABLES[name] - tables[name])
            if missing:
                raise RegistryError(f"table {name} has no column {', '.join(missing[:5])}"
                                    f"{', ...' if len(missing) > 5 else ''}: not a registry this kit can use "
                                    f"({LEFT_AS_IS})")
        if set(tables) >= {"meta", "boards", "runs"}:
            return                      # a registry (a table someone added beside ours is theirs)
        others = sorted(set(tables) - set(_TABLES))
        if others:
            raise RegistryError(f"an SQLite database of another kind (its tables: {', '.join(others[:5])}"
                                f"{', ...' if len(others) > 5 else ''}), not a board registry ({LEFT_AS_IS})")
        # New (or created by a process that was killed in the middle: only our tables in it).
        def journal(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA journal_mode=WAL")

        self._read(journal)
        with self._write() as db:
            for statement in _SCHEMA:
                db.execute(statement)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection; every sqlite3 error in it becomes a RegistryError (RegistryLocked for
        a lock that another connection held through one try)."""
        try:
            db = sqlite3.connect(self.path, timeout=LOCK_TRY_S, isolation_level=None)
        except sqlite3.Error as e:
            raise RegistryError(f"{self.path}: {e}") from None
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except sqlite3.Error as e:
            if _busy(e):
                raise RegistryLocked(self._locked_message()) from None
            raise RegistryError(f"{self.path}: {e}") from None
        finally:
            db.close()

    def _locked_message(self) -> str:
        return (f"{self.path}: locked by another program for {BUSY_TIMEOUT_S:g} s (one holding it open with "
                "unsaved changes, such as an SQLite browser?): close or save it there, then run again")

    def _retry(self, attempt: Callable[[], T]) -> T:
        """`attempt()` until no other connection holds the lock it needs, for up to BUSY_TIMEOUT_S
        (short tries: a KeyboardInterrupt ends the wait between them)."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                return attempt()
            except RegistryLocked:
                if time.monotonic() >= deadline:
                    raise
            time.sleep(LOCK_TRY_S / 2)

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        def attempt() -> T:
            with self._connect() as db:
                return query(db)
        return self._retry(attempt)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            def begin() -> None:
                try:
                    db.execute("BEGIN IMMEDIATE")
                except sqlite3.Error as e:
                    if _busy(e):
                        raise RegistryLocked(self._locked_message()) from None
                    raise
            self._retry(begin)
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- reading ------------------------------------------------------------------------------

    def _one(self, sql: str, args: tuple[Any, ...]) -> BoardRecord | None:
        row = self._read(lambda db: db.execute(sql, args).fetchone())
        return _record(row) if row else None

    def boards(self) -> list[BoardRecord]:
        rows = self._read(lambda db: db.execute("SELECT * FROM boards ORDER BY sticker").fetchall())
        return [_record(r) for r in rows]

    def get(self, mac: str) -> BoardRecord | None:
        return self._one("SELECT * FROM boards WHERE mac = ?", (normalize_mac(mac),))

    def by_hostname(self, hostname: str) -> BoardRecord | None:
        return self._one("SELECT * FROM boards WHERE hostname = ? ORDER BY last_seen DESC", (hostname.lower(),))

    def by_sticker(self, sticker: int) -> BoardRecord | None:
        return self._one("SELECT * FROM boards WHERE sticker = ?", (int(sticker),))

    def history(self, mac: str) -> list[Run]:
        mac = normalize_mac(mac)
        rows = self._read(lambda db: db.execute("SELECT * FROM runs WHERE mac = ? ORDER BY id", (mac,)).fetchall())
        return [Run(r["mac"], r["at"], r["stage"], None if r["ok"] is None else bool(r["ok"]), r["detail"], r["port"])
                for r in rows]

    # --- writing ------------------------------------------------------------------------------

    def see(self, mac: str, *, chip: str | None = None, flash_size: str | None = None, port: str | None = None,
            usb_serial: str | None = None, usb_id: str | None = None) -> BoardRecord:
        """A board is on a port: add it (with the next sticker) or refresh what it looks like now."""
        mac = normalize_mac(mac)
        now = _now()
        with self._write() as db:
            row = db.execute("SELECT sticker FROM boards WHERE mac = ?", (mac,)).fetchone()
            if row is None:
                counter = db.execute("SELECT value FROM meta WHERE key = 'next_sticker'").fetchone()
                sticker = int(counter["value"]) if counter else 1
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('next_sticker', ?)", (str(sticker + 1),))
                db.execute("INSERT INTO boards (mac, sticker, chip, flash_size, usb_serial, usb_id, port, first_seen, "
                           "last_seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (mac, sticker, chip, flash_size, usb_serial, usb_id, port, now, now))
            else:
                db.execute("UPDATE boards SET chip = COALESCE(?, chip), flash_size = COALESCE(?, flash_size), "
                           "usb_serial = COALESCE(?, usb_serial), usb_id = COALESCE(?, usb_id), "
                           "port = COALESCE(?, port), last_seen = ? WHERE mac = ?",
                           (chip, flash_size, usb_serial, usb_id, port, now, mac))
            db.execute("INSERT INTO runs (mac, at, stage, ok, detail, port) VALUES (?, ?, 'seen', NULL, ?, ?)",
                       (mac, now, chip, port))
        record = self.get(mac)
        assert record is not None
        return record

    def _update(self, mac: str, stage: str, ok: bool | None, detail: str | None, port: str | None = None,
                **columns: Any) -> BoardRecord:
        mac = normalize_mac(mac)
        now = _now()
        with self._write() as db:
            if db.execute("SELECT 1 FROM boards WHERE mac = ?", (mac,)).fetchone() is None:
                raise RegistryError(f"{mac}: not in the registry (see() it first)")
            if columns:
                sets = ", ".join(f"{k} = ?" for k in columns)
                db.execute(f"UPDATE boards SET {sets}, last_seen = ? WHERE mac = ?",  # noqa: S608 - our column names
                           (*columns.values(), now, mac))
            db.execute("INSERT INTO runs (mac, at, stage, ok, detail, port) VALUES (?, ?, ?, ?, ?, ?)",
                       (mac, now, stage, None if ok is None else int(ok), detail, port))
        record = self.get(mac)
        assert record is not None
        return record

    def record_flash(self, mac: str, *, ok: bool, board: str | None = None, image: str | None = None,
                     release: str | None = None, inputs: str | None = None, detail: str | None = None,
                     port: str | None = None, flash_size: str | None = None) -> BoardRecord:
        """A flash ended; `ok` only when esptool verified it. A failed flash leaves the board 'failed'."""
        columns: dict[str, Any] = {"flash_ok": int(ok), "flashed_at": _now(), "state": "flashed" if ok else "failed"}
        if flash_size:
            columns["flash_size"] = flash_size
        if ok:
            columns.update(board=board, image=image, release=release, inputs=inputs,
                           provision_ok=None, smoke_ok=None)    # a new image: earlier results are void
        return self._update(mac, "flash", ok, detail, port, **columns)

    def record_flash_started(self, mac: str) -> None:
        """Writing is about to begin: until `record_flash` says how it ended, the board is not ready
        (a run killed mid-write must not leave a half-flashed board looking "ready")."""
        with self._write() as db:
            db.execute("UPDATE boards SET state = 'flashing', flash_ok = NULL, last_seen = ? WHERE mac = ?",
                       (_now(), normalize_mac(mac)))

    def record_provision(self, mac: str, *, ok: bool, hostname: str | None = None, detail: str | None = None,
                         port: str | None = None) -> BoardRecord:
        columns: dict[str, Any] = {"provision_ok": int(ok), "provision_at": _now(), "provision_detail": detail,
                                   "state": "provisioned" if ok else "failed"}
        if ok and hostname:
            columns["hostname"] = hostname.lower()
        return self._update(mac, "provision", ok, detail, port, **columns)

    def record_smoke(self, mac: str, *, ok: bool, detail: str | None = None, port: str | None = None) -> BoardRecord:
        return self._update(mac, "smoke", ok, detail, port, smoke_ok=int(ok), smoke_at=_now(), smoke_detail=detail,
                            state="ready" if ok else "failed")

    def record_ready(self, mac: str, detail: str | None = None, port: str | None = None) -> BoardRecord:
        return self._update(mac, "ready", True, detail, port, state="ready")

    def record_event(self, mac: str, stage: str, ok: bool | None, detail: str | None = None,
                     port: str | None = None) -> BoardRecord:
        return self._update(mac, stage, ok, detail, port)

    # --- exports ------------------------------------------------------------------------------

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for b in self.boards():
            writer.writerow({k: ("" if v is None else v) for k, v in b.to_dict().items()})
        return out.getvalue()

    def to_json(self) -> str:
        return json.dumps([b.to_dict() for b in self.boards()], indent=2) + "\n"


def read_csv(text: str) -> list[BoardRecord]:
    """Records from `Registry.to_csv()` output (the organizer's sticker sheet, read back)."""
    records = []
    for row in csv.DictReader(io.StringIO(text)):
        values: dict[str, Any] = {}
        for name in COLUMNS:
            raw = row.get(name, "")
            if name == "sticker":
                values[name] = int(raw)
            elif name in _BOOLS:
                values[name] = None if raw == "" else raw == "True"
            elif name in ("state", "first_seen", "last_seen"):
                values[name] = raw
            else:
                values[name] = raw or None
        records.append(BoardRecord(**values))
    return records


__all__ = ["BoardRecord", "DEFAULT_PATH", "Registry", "RegistryError", "RegistryLocked", "Run", "normalize_mac",
           "read_csv"]
