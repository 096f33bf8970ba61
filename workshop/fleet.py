"""Commands to many boards over the network, in parallel, through their telnet REPL.

Each board gets its own `ReplSession` over `TelnetTransport` (workshop.repl): the login, then the
same guarded raw REPL the serial side uses (every command carries its length and byte sum).
A board that is offline, refuses the login or drops mid-command fails alone, with the reason;
the others go on. Every run leaves a JSON report; `resume=` skips the boards that completed the
same command in that report, so a failure never restarts the whole fleet.

Targets come from the roster (hostname, IP, telnet port from the board's status or mDNS).
Library code never prints: progress goes to `on_event`, results are returned.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .buildinfo import write_atomic
from .parallel import Runner, wait_threads
from .repl import LoginError, RemoteError, ReplError, ReplSession, ReplTimeout, TelnetTransport, telnet_session

KINDS = ("exec", "run", "put", "reset", "identify")
BACK_POLL_S = 1.0                   # between logins while a reset board boots
RESET_MARK = "WS-RESET"
RETURNED_MARK = "WS-RESET-RETURNED"
PUT_BLOCK = 1024   # bytes per guarded write: ~7 KB peak heap to receive and run it (ESP8266-safe; 2048 fails in 16 KB)


class FleetError(ValueError):
    """The command or the target list is unusable (nothing was sent to any board)."""


@dataclass(frozen=True)
class Target:
    hostname: str
    host: str | None            # IP (or name) to connect to; None: not known (offline, never seen)
    port: int | None = 23       # telnet's port; None: the board says telnet is not running
    board: str | None = None
    state: str = "online"       # the roster's view: online | stale | offline | unknown


@dataclass(frozen=True)
class Command:
    kind: str                   # exec | run | put | reset | identify
    code: str = ""              # exec/run: the code; identify: the blink code
    data: bytes = b""           # put: the file's bytes
    dest: str = ""              # put: the path on the board
    label: str = ""             # what a person typed (for reports)
    takes_s: float = 0.0        # how long the command itself runs on the board (identify: its blink),
                                # on top of the fleet's per-command timeout
    back_within_s: float = 0.0  # reset: how long the board has to be back on telnet (0: not waited for)

    @property
    def key(self) -> str:
        """Identity for --resume: the same command on the same content."""
        h = hashlib.sha256(f"{self.kind}\0{self.dest}\0{self.code}\0".encode() + self.data)
        return h.hexdigest()[:16]

    @classmethod
    def exec(cls, code: str) -> Command:
        if not code.strip():
            raise FleetError("exec: no code given")
        return cls("exec", code=code, label=f"exec {code!r}")

    @classmethod
    def run(cls, path: Path) -> Command:
        try:
            code = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise FleetError(f"run: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
        return cls("run", code=code, label=f"run {path}")

    @classmethod
    def put(cls, src: Path, dest: str | None = None) -> Command:
        try:
            data = Path(src).read_bytes()
        except OSError as e:
            raise FleetError(f"put: cannot read {src}: {e.strerror or e}") from None
        # Relative: the board's root (on the unix port, its current folder) like mpremote's ':name'.
        return cls("put", data=data, dest=dest or Path(src).name, label=f"put {src} {dest or Path(src).name}")

    @classmethod
    def reset(cls, back_within_s: float = 30.0) -> Command:
        """machine.reset(), then (back_within_s > 0) a new telnet login accepted within that many
        seconds: "reset" alone is only the old board going silent."""
        if back_within_s < 0:
            raise FleetError(f"reset: the time to come back must be 0 (not waited for) or more, not {back_within_s:g}")
        return cls("reset", label="reset", back_within_s=float(back_within_s))

    @classmethod
    def identify(cls, led_pin: int | None, active_low: bool = False, seconds: float = 5.0) -> Command:
        return cls("identify", code=identify_code(led_pin, active_low, seconds),
                   label=f"identify (LED pin {led_pin})" if led_pin is not None else "identify (console)",
                   takes_s=float(seconds) if led_pin is not None else 0.0)


def identify_code(led_pin: int | None, active_low: bool = False, seconds: float = 5.0) -> str:
    """Blink the board's LED for `seconds` (or, without a known LED, print a banner on its console)."""
    n = max(1, int(seconds * 4))
    banner = ("import sys\nfor _ in range(3):sys.stdout.write('\\n*** IDENTIFY: this board ***\\n')\n"
              "print('no LED pin known: banner on the console')\n")
    if led_pin is None:
        return banner
    on, off = (0, 1) if active_low else (1, 0)
    return (f"import time\ntry:\n from machine import Pin\nexcept ImportError:\n Pin=None\n"
            f"if Pin is None:\n{_indent(banner)}"
            f"else:\n p=Pin({int(led_pin)},Pin.OUT)\n for i in range({n}):\n  p.value({on} if i%2==0 else {off})\n"
            f"  time.sleep_ms(250)\n p.value({off})\n print('blinked LED pin {int(led_pin)}')\n")


def _indent(code: str) -> str:
    return "".join(" " + line + "\n" for line in code.splitlines())


@dataclass(frozen=True)
class BoardResult:
    hostname: str
    ok: bool
    result: str = ""            # what the board printed (exec/run), or what was done
    error: str = ""             # why it failed
    seconds: float = 0.0
    resumed: bool = False       # skipped: completed in the run being resumed
    address: str = ""


@dataclass(frozen=True)
class FleetEvent:
    hostname: str
    kind: str                   # "start", "connect", "waiting" (for a reset board), "done", "failed", "skipped"
    message: str


@dataclass
class FleetReport:
    command: str
    key: str
    started: float
    results: list[BoardResult] = field(default_factory=list)
    cancelled: bool = False     # Ctrl-C: boards not finished are failed "cancelled"
    # --outdated: the boards whose image could not be compared, so not run on: {hostname, why}
    left_out: list[dict[str, str]] = field(default_factory=list)
    path: Path | None = None          # where run_in_room wrote it
    unwritten: str | None = None      # why it could not be written there (the results stand)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"command": self.command, "key": self.key, "started": self.started, "ok": self.ok,
                "cancelled": self.cancelled,
                "results": [asdict(r) for r in self.results], "left_out": self.left_out}


def write_report(report: FleetReport, path: Path) -> None:
    """Atomically (temp file + rename): a cut-off run never leaves half a report to resume from."""
    write_atomic(path, json.dumps(report.to_json(), indent=2) + "\n")


def completed_in(path: Path, command: Command) -> set[str]:
    """Hostnames that completed `command` in the report at `path` (none if it ran another command)."""
    try:
        doc = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as e:
        raise FleetError(f"--resume: cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("key") != command.key:
        return set()
    return {r["hostname"] for r in doc.get("results", []) if isinstance(r, dict) and r.get("ok")}


def default_report_path(root: Path | None = None) -> Path:
    """Where a fleet run's report goes unless --report says (what --resume reads)."""
    from .config import project_root

    return (root or project_root()) / "logs" / "fleet" / "last.json"


def run_in_room(runner: Fleet, rows: Sequence[Any], make_command: Callable[[list[Target]], Command | Callable[[Target], Command]],
                *, hosts: Iterable[str] = (), all_boards: bool = False, outdated: bool = False, resume: bool = False,
                report: Path | None = None) -> FleetReport:
    """A fleet command on the room: the targets chosen among the roster's rows (choose), less the
    boards the report at `report` (default_report_path) says completed this very command when
    `resume`, run, and the report written there. `make_command` gets the targets (identify makes
    one command per board). A report that cannot be written is `unwritten` on the result: the
    results stand, the caller says it. FleetError: no targets, an unreadable report to resume."""
    path = report or default_report_path()
    targets, left_out = choose(rows, hosts, all_boards=all_boards, outdated=outdated)
    command = make_command(targets)
    # (a command per board has no one key to resume by)
    skip = completed_in(path, command) if resume and not callable(command) else set()
    done = runner.run(targets, command, skip=skip, left_out=left_out)  # Ctrl-C: returns at once, unfinished "cancelled"
    done.path = path
    try:
        write_report(done, path)
    except OSError as e:
        done.unwritten = f"the report could not be written to {path}: {e}"
    return done


def targets_from_rows(rows: Iterable[Any]) -> list[Target]:
    """Roster rows (workshop.roster.Row) -> targets (a row's telnet None: telnet is not running)."""
    return [Target(r.hostname, r.ip, r.telnet, r.board, r.state) for r in rows]


class Fleet:
    """One command on many boards; `cancel()` (Ctrl-C) closes every open session at once."""

    def __init__(self, *, user: str = "micro", password: str = "", jobs: int = 16, timeout: float = 20.0,
                 connect_timeout: float = 5.0, on_event: Callable[[FleetEvent], None] | None = None) -> None:
        if not password:
            raise FleetError("no telnet password: --telnet-password or $WORKSHOP_TELNET_PASSWORD")
        self.user = user
        self.password = password
        self.jobs = max(1, jobs)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.on_event = on_event
        self._open: set[ReplSession] = set()
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def _event(self, hostname: str, kind: str, message: str) -> None:
        if self.on_event:
            self.on_event(FleetEvent(hostname, kind, message.replace(self.password, "***")))

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            sessions = list(self._open)
        for s in sessions:
            try:
                s.close()
            except Exception:  # noqa: BLE001 - cancelling must not fail
                pass

    def run(self, targets: Sequence[Target], command: Command | Callable[[Target], Command], *,
            skip: Iterable[str] = (), left_out: Iterable[tuple[str, str]] = ()) -> FleetReport:
        """`command` may be one per board (identify: each board's own LED pin); `left_out`: the
        boards chosen not to run on and why (not_compared), said in the report."""
        if not targets:
            raise FleetError("no boards to run on (see ./kit roster; --hosts, --all or --outdated)")
        skip = set(skip)
        first = command(targets[0]) if callable(command) else command
        report = FleetReport(first.label if not callable(command) else first.kind, first.key, time.time(),
                             left_out=[{"hostname": h, "why": why} for h, why in left_out])
        results: dict[str, BoardResult] = {}

        def one(t: Target) -> None:
            if t.hostname in skip:
                results[t.hostname] = BoardResult(t.hostname, True, "completed in the resumed run", resumed=True)
                self._event(t.hostname, "skipped", "completed in the resumed run")
                return
            results[t.hostname] = self._one(t, command(t) if callable(command) else command)

        # Daemon threads, at most `jobs` at a time: a worker still inside connect() or the login of
        # a board that froze has no session for cancel() to close, and a pool's threads are
        # joined at exit (Ctrl-C took its whole connect timeout, 3.8 s with one frozen board).
        gate = threading.Semaphore(self.jobs)
        raised: list[BaseException] = []

        def guarded(t: Target) -> None:
            with gate:
                if not self._cancelled.is_set():
                    try:
                        one(t)
                    except BaseException as e:  # noqa: BLE001 - raised in the caller's thread below
                        raised.append(e)

        runners = [Runner(functools.partial(guarded, t), f"fleet {t.hostname}") for t in targets]
        # Ctrl-C: close every session (blocked reads end at once), keep what finished.
        report.cancelled = wait_threads(runners, self._cancelled, on_interrupt=self.cancel)
        if raised and not report.cancelled:
            raise raised[0]               # (as the pool's result() did: a bug is not a board's failure)
        report.results = [results.get(t.hostname) or BoardResult(t.hostname, False, error="cancelled")
                          for t in targets]
        return report

    def _one(self, t: Target, command: Command) -> BoardResult:
        t0 = time.monotonic()
        address = t.host + (f":{t.port}" if t.port is not None else "") if t.host else ""

        def fail(why: str) -> BoardResult:
            self._event(t.hostname, "failed", why)
            return BoardResult(t.hostname, False, error=why, seconds=round(time.monotonic() - t0, 2), address=address)

        if t.state == "unknown" or not t.host:
            return fail("not in the roster: it never announced itself (is announce in its start list?)")
        if t.state == "offline":
            return fail("offline (its last will, or it left cleanly)")
        if t.port is None:
            return fail("telnet is not running on this board (its status has no telnet port): "
                        "add telnet to its start list (./kit provision --start ...,telnet) and reset it")
        if self._cancelled.is_set():
            return fail("cancelled")
        self._event(t.hostname, "start", f"{command.kind} via telnet {address}")
        session = telnet_session(t.host, t.port, user=self.user, password=self.password, name=t.hostname,
                                 timeout=self.timeout, connect_timeout=self.connect_timeout)
        with self._lock:
            self._open.add(session)
        try:
            with session:
                self._event(t.hostname, "connect", "logged in, raw REPL")
                text = self._do(session, command)
        except LoginError as e:
            return fail(e.reason)
        except RemoteError as e:
            # Where it raised, and what it had printed by then: a lesson's "step 1" and line 3 were lost.
            raised = fail(f"the board raised {e.exc_type}: {e.exc_message}".rstrip(": ")
                          + (f" (line {e.line})" if e.line is not None else ""))
            return dataclasses.replace(raised, result=e.stdout)
        except ReplError as e:
            return fail("cancelled" if self._cancelled.is_set() else e.reason)
        finally:
            with self._lock:
                self._open.discard(session)
        if command.kind == "reset" and command.back_within_s:
            not_back = self._back(t, command.back_within_s)
            if not_back:
                return fail(not_back)
            text = f"reset; back on telnet after {time.monotonic() - t0:.1f} s"
        self._event(t.hostname, "done", text.strip().splitlines()[-1] if text.strip() else "ok")
        return BoardResult(t.hostname, True, text, seconds=round(time.monotonic() - t0, 2), address=address)

    def _back(self, t: Target, within_s: float) -> str | None:
        """After a reset: log in again until the board accepts the login (None), or why not within
        `within_s`. A board that boots answers nothing for a while (refused, no prompt, silence),
        so those are tried again; a refused login is said at once. Only the telnet login, never
        the raw REPL: its Ctrl-C would stop the main.py (or the boot's start-up) the reset just
        began. Each try gets what is left of `within_s` (at most the connect timeout, for the
        connection and again for the login)."""
        assert t.host is not None and t.port is not None
        self._event(t.hostname, "waiting", f"reset; logging in again when it is back (up to {within_s:g} s)")
        deadline = time.monotonic() + within_s
        last = "no answer"
        while not self._cancelled.wait(min(BACK_POLL_S, max(0.0, deadline - time.monotonic()))):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                TelnetTransport(t.host, t.port, user=self.user, password=self.password,
                                timeout=min(self.connect_timeout, max(left, 0.5))).close()
            except LoginError as e:
                return "reset, then the login was refused: " + e.reason
            except ReplError as e:
                last = e.reason
                continue
            return None
        if self._cancelled.is_set():
            return "cancelled"
        return (f"reset, but not back on telnet within {within_s:g} s (last try: {last}): "
                "see its serial console (stuck in boot, or Wi-Fi not joined?); --back-within gives it longer")

    def _do(self, s: ReplSession, c: Command) -> str:
        if c.kind in ("exec", "run", "identify"):
            # A blink of --seconds is not a board that stopped answering: the timeout is on top of it.
            return s.run(c.code, timeout=self.timeout + c.takes_s) if c.takes_s else s.run(c.code)
        if c.kind == "put":
            return self._put(s, c)
        if c.kind == "reset":
            s.run("import machine")
            try:
                # machine.reset() on a board, which never returns; the unix port has only soft_reset,
                # which ends the process (the "board") once the command is done.
                text = s.run(f"import machine\nprint({RESET_MARK!r})\nr = getattr(machine, 'reset', None)\n"
                             f"if r:\n    r()\n    print({RETURNED_MARK!r})\nelse:\n    machine.soft_reset()\n",
                             timeout=5.0)
            except RemoteError:
                raise
            except ReplTimeout as e:
                # A board that resets goes silent (lwIP sends no FIN): silence after the mark is the
                # reset. Silence before it is a board that never got to reset().
                if RESET_MARK.encode() not in e.partial:
                    raise
            except ReplError as e:
                if "closed" not in str(e):
                    raise
            else:
                if RETURNED_MARK in text:     # machine.reset() returned: the board is still running
                    raise ReplError(s.port, "machine.reset() returned: the board did not reset")
            return "reset"
        raise FleetError(f"unknown command {c.kind!r} (one of {', '.join(KINDS)})")

    def _put(self, s: ReplSession, c: Command) -> str:
        s.put(c.dest, c.data, atomic=True, verify=False, block=PUT_BLOCK)
        want = hashlib.sha256(c.data).hexdigest()
        got = s.run(f"import hashlib,binascii\nh=hashlib.sha256()\nwith open({c.dest!r},'rb') as f:\n"
                    " while 1:\n  b=f.read(512)\n  if not b:break\n  h.update(b)\n"
                    "print(binascii.hexlify(h.digest()).decode())\n").strip()
        if got != want:
            raise ReplError(s.port, f"{c.dest}: sha256 on the board {got[:16]} differs from the file's {want[:16]}")
        return f"{c.dest}: {len(c.data)} bytes, sha256 {want[:16]} verified"


def resolve(rows: Sequence[Any], hosts: Iterable[str] = (), *, all_boards: bool = False,
            outdated: bool = False) -> list[Target]:
    """Pick targets from roster rows: named hosts (unknown ones kept, to fail with a reason), the
    outdated ones, or all. Exactly one way must be chosen."""
    return choose(rows, hosts, all_boards=all_boards, outdated=outdated)[0]


def choose(rows: Sequence[Any], hosts: Iterable[str] = (), *, all_boards: bool = False,
           outdated: bool = False) -> tuple[list[Target], list[tuple[str, str]]]:
    """resolve(), and the boards --outdated leaves out because their image cannot be compared
    (not_compared: hostname, why), for the report to name."""
    from .roster import select

    # A name given twice is one board (one run), in any case (LAB-01,lab-01), known or not.
    spelt: dict[str, str] = {}
    for h in hosts:
        if h:
            spelt.setdefault(h.lower(), h)
    names = list(spelt.values())
    if sum((bool(names), all_boards, outdated)) != 1:
        raise FleetError("choose the boards: --hosts h1,h2 or --all or --outdated")
    if (all_boards or outdated) and not rows:
        raise FleetError("no boards in the roster: none announced itself on the broker or mDNS (see ./kit roster; "
                         "a longer --wait, or --hosts h1,h2)")
    # Two spellings of one board (LAB-01,lab-01) are one board too: one session, one result.
    chosen = list({r.hostname: r for r in select(rows, hosts=names, outdated=outdated)}.values())
    if not chosen and outdated:
        unknown = not_compared(rows)
        raise FleetError("no outdated board in the roster: " + (
            f"{len(rows) - len(unknown)} match the current images; not compared: "
            + "; ".join(f"{h} ({why})" for h, why in unknown) if unknown else "every image matches"))
    return targets_from_rows(chosen), not_compared(rows) if outdated else []


def not_compared(rows: Sequence[Any]) -> list[tuple[str, str]]:
    """The boards --outdated cannot judge (no build identity in the image, no build of that board
    to compare with), each with why: left out of the run, and said (they may be outdated)."""
    return [(r.hostname, r.outdated_reason or "not compared") for r in rows if r.outdated is None]


def led_for(board: str | None, boards: Mapping[str, Any] | None = None) -> tuple[int | None, bool]:
    """The LED pin and polarity from boards/<BOARD>.toml (`led_pin`, `led_active_low`), if known."""
    if not board:
        return None, False
    if boards is None:
        from .config import ConfigError, get_board

        try:
            b = get_board(board)
        except ConfigError:
            return None, False
        extra = dict(getattr(b, "extra", {}) or {})
        pin = getattr(b, "led_pin", None)
        if pin is None:
            pin = extra.get("led_pin")
        low = getattr(b, "led_active_low", None)
        if low is None:
            low = extra.get("led_active_low", False)
        return (int(pin) if isinstance(pin, int) else None), bool(low)
    entry = boards.get(board) or {}
    pin = entry.get("led_pin")
    return (int(pin) if isinstance(pin, int) else None), bool(entry.get("led_active_low", False))
