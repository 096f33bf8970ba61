"""Raw-REPL session over a serial port: interrupt, exec, eval, put/get files, soft reset.

Built for real boards: UARTs that drop input past a burst (~270 bytes on an ESP32), DTR/RTS
wired to EN/IO0, boards busy in main.py, ports with nothing on them. Every write is paced
(`Pacing`); raw-paste flow control is used on top where the firmware offers it; every command is
sent with its own length and byte sum, so a command that lost bytes on the way is refused by the
device (never half-run) and re-sent more slowly. A port that does not answer raises `ReplTimeout`
within `connect_timeout`. Ports are opened exclusively: one another program holds is `PortBusy`.

Why not mpremote's `SerialTransport`: it blocks forever on a silent port (`serial.read(2)` with
no timeout), prints to stdout from library code, pastes in fixed 256-byte bursts every 10 ms when
raw-paste is unavailable (more than a 270-byte UART keeps), and cannot tell a command corrupted in
transit from one that failed. The wire protocol is the same (Ctrl-A raw REPL, Ctrl-E 'A' Ctrl-A
raw paste, Ctrl-D soft reset).

Library code never prints: progress goes to `on_event`, results are returned, errors raised.
Secrets given to the session are masked in every event and error message.
"""

from __future__ import annotations

import ast
import binascii
import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypedDict

import serial

from . import serialport
from .devconfig import MASK

RAW_BANNER = b"raw REPL; CTRL-B to exit\r\n"
SOFT_REBOOT = b"soft reboot"
FRIENDLY_PROMPT = b">>> "
_CORRUPT = "WSREPL-CORRUPT"


class ReplStats(TypedDict):
    written: int                 # bytes sent to the board
    retries: int                 # commands re-sent after bytes were lost
    raw_paste: bool | None       # None until the first command found out


class ReplError(Exception):
    """Talking to the board failed; the message names the port and what to do. `reason` is the
    message without the port, for callers that name the board themselves (a table's row)."""

    def __init__(self, port: str, message: str) -> None:
        super().__init__(f"{port}: {message}")
        self.port = port
        self.reason = message


class PortBusy(ReplError, serialport.PortBusy):
    """Another program (Thonny, a terminal, another kit run) holds the port open exclusively.
    Also a `serialport.PortBusy`: one type for a busy port, whichever layer opened it."""


class ReplTimeout(ReplError):
    """The board did not answer in time (silent port, wrong port or baud rate, board stuck).

    `partial` holds what the board had sent of the awaited answer when time ran out (a command's
    output so far, say), so a caller can tell how far the board got.
    """

    def __init__(self, port: str, message: str, partial: bytes = b"") -> None:
        super().__init__(port, message)
        self.partial = partial


class TransferError(ReplError):
    """Bytes were lost on the way to the board, even after slowing down."""


class RemoteError(ReplError):
    """Code run on the board raised; `exc_type`, `exc_message`, `traceback` and `stdout` hold it."""

    def __init__(self, port: str, traceback: str, stdout: str = "") -> None:
        self.traceback = traceback.strip()
        last = self.traceback.splitlines()[-1] if self.traceback else "unknown error"
        self.exc_type, _, self.exc_message = last.partition(": ")
        self.stdout = stdout
        super().__init__(port, f"the board raised {last}")

    @property
    def line(self) -> int | None:
        """The line of the code sent that raised (the traceback's innermost one), if it says."""
        found = re.findall(r"line (\d+)", self.traceback)
        return int(found[-1]) if found else None


@dataclass(frozen=True)
class Pacing:
    """How fast to write to the board: `chunk` bytes, then at least `delay` seconds' pause.

    The default (96 bytes per 40 ms, ~2.4 KB/s) stays under what an ESP32 UART keeps in a burst;
    native-USB boards take `Pacing.fast()`. After a lost-bytes retry the session halves the rate.
    """

    chunk: int = 96
    delay: float = 0.04

    @classmethod
    def fast(cls) -> Pacing:
        return cls(chunk=256, delay=0.0)

    @classmethod
    def unpaced(cls) -> Pacing:
        """No pacing at all (for showing what a burst does to a real UART)."""
        return cls(chunk=1 << 20, delay=0.0)

    def slower(self) -> Pacing:
        return Pacing(chunk=max(16, min(self.chunk, 192) // 2), delay=max(0.02, self.delay * 2))


@dataclass(frozen=True)
class ReplEvent:
    port: str
    kind: str        # "connect", "raw-repl", "interrupt", "soft-reset", "exec", "retry", "put", "get", "close"
    message: str


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return not self.stderr.strip()

    @property
    def text(self) -> str:
        return _text(self.stdout)

    @property
    def error(self) -> str:
        return _text(self.stderr)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace").replace("\r\n", "\n")


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced by ***, wherever it occurs (inside a longer word too:
    masked too often is safe, a secret next to an escape or in a URL left bare is not); longest
    first, so a secret holding a shorter one is masked whole."""
    for s in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(s, MASK)
    return text


def guard(code: str | bytes) -> bytes:
    """Wrap code so that the board runs it only if every byte arrived.

    The code travels as a bytes literal with its length and byte sum; a literal that lost bytes
    fails the check (raising a marker the host recognises), a lost byte elsewhere is a
    SyntaxError before anything runs. Either way nothing half-arrived is executed.
    """
    raw = code.encode() if isinstance(code, str) else code
    # exec(globals().pop('_c')): the literal leaves the board's globals as it runs (a 3 KB smoke
    # check or a lesson block stayed there, heap an ESP8266 lacks, until the next command).
    return (b"_c=" + repr(raw).encode() + b"\n"
            b"if len(_c)!=%d or sum(_c)!=%d:raise OSError('%s')\n"
            b"exec(globals().pop('_c'))\n" % (len(raw), sum(raw), _CORRUPT.encode()))


class CancellablePort:
    """A serial port that refuses every read and write once `cancel` is set (Ctrl-C).

    Provisioning and smoke run in worker threads the interpreter waits for at exit (a thread
    pool's): they must stop by themselves. ReplSession reads in 0.05 s steps and writes in small
    paced chunks, so a set `cancel` ends a session within one step, whatever file it is writing.
    """

    def __init__(self, ser: Any, cancel: threading.Event) -> None:
        self._ser, self._cancel = ser, cancel
        self._closed = threading.Event()
        threading.Thread(target=self._interrupt_on_cancel, name="repl cancel", daemon=True).start()

    def _interrupt_on_cancel(self) -> None:
        # A write already blocked on a board that stopped reading would wait out its write
        # timeout (the station's is the boot timeout): pyserial's cancel_write/cancel_read end it.
        while not self._cancel.wait(0.1):
            if self._closed.is_set():
                return
        for name in ("cancel_write", "cancel_read"):
            with contextlib.suppress(Exception):
                getattr(self._ser, name)()

    def _check(self) -> None:
        if self._cancel.is_set():
            raise OSError("interrupted")

    def read(self, n: int = 1) -> bytes:
        self._check()
        return bytes(self._ser.read(n))

    def write(self, data: bytes) -> int | None:
        self._check()
        return self._ser.write(data)

    def flush(self) -> None:
        self._check()
        self._ser.flush()

    @property
    def in_waiting(self) -> int:
        self._check()
        return int(self._ser.in_waiting)

    def close(self) -> None:
        self._closed.set()
        self._ser.close()


# The banner every port prints when MicroPython starts ("MicroPython v1.28.0 on 2026-11-20; ...",
# or a build's git hash for the version).
_BANNER = re.compile(rb"MicroPython \S+ on \d{4}-\d\d-\d\d;")


def _restarted(received: bytes | bytearray, budget: float | None) -> str:
    """For a command's timeout (`budget` given: not a wait where a banner is expected, after
    Ctrl-B or a reset): the board's start-up banner among what it sent instead of the answer
    says why the answer never came."""
    if budget is not None and _BANNER.search(received):
        return (": the board restarted during the command (a reset, a brown-out or a crash: its start-up "
                "banner came instead of the answer)")
    return ""


def _within(timeout: float, budget: float | None) -> str:
    """'5 s', or for a wait that was the rest of a command's budget, what that budget was."""
    if budget is None:
        return f"{timeout:g} s"
    return f"the command's {budget:g} s (sending it included)"


class ReplSession:
    """One serial port, one raw-REPL session. Use as a context manager.

    `port` is a device path (or any pyserial URL). `timeout` bounds each command, `connect_timeout`
    bounds getting a raw REPL at all (a silent port fails that fast, with `ReplTimeout`). Once
    `cancel` is set (Ctrl-C), the port refuses I/O: the session ends within one read.
    """

    def __init__(self, port: str, *, baudrate: int = 115200, timeout: float = 10.0,
                 connect_timeout: float = 3.0, pacing: Pacing = Pacing(), raw_paste: bool = True,
                 retries: int = 3, on_event: Callable[[ReplEvent], None] | None = None,
                 secrets: Iterable[str] = (), serial_factory: Callable[..., Any] | None = None,
                 cancel: threading.Event | None = None, connect_option: str = "--connect-timeout") -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.connect_option = connect_option      # the caller's name for connect_timeout, for its message
        self.pacing = pacing
        self.use_raw_paste = raw_paste
        self.retries = retries
        self._on_event = on_event
        self._secrets: set[str] = {s for s in secrets if s}
        self._serial_factory = serial_factory
        self._cancel = cancel
        self._ser: Any = None
        self._buf = bytearray()
        self.in_raw = False
        self.raw_paste_window: int | None = None   # set once raw-paste was negotiated
        self.stats: ReplStats = {"written": 0, "retries": 0, "raw_paste": None if raw_paste else False}

    # --- plumbing ---------------------------------------------------------------------------

    def add_secret(self, secret: str | None) -> None:
        if secret:
            self._secrets.add(secret)

    def _mask(self, text: str) -> str:
        return mask(text, self._secrets)

    def _event(self, kind: str, message: str) -> None:
        if self._on_event:
            self._on_event(ReplEvent(self.port, kind, self._mask(message)))

    def _error(self, cls: type[ReplError], message: str) -> ReplError:
        return cls(self.port, self._mask(message))

    def open(self) -> ReplSession:
        if self._ser is not None:
            return self
        try:
            if self._serial_factory:
                ser = self._serial_factory(self.port)
            else:
                # The kit's one opener: exclusive (as mpremote), DTR/RTS low (no reset on open).
                ser = serialport.open_port(self.port, self.baudrate, timeout=0.05, write_timeout=self.connect_timeout)
        except serialport.PortBusy:
            raise self._error(PortBusy, serialport.PORT_BUSY) from None
        except serialport.PortUnavailable as e:
            raise self._error(ReplError, str(e).removeprefix(f"{self.port}: ")) from None
        except (serial.SerialException, OSError, ValueError) as e:
            raise self._error(ReplError, f"cannot open: {e}") from None
        self._ser = CancellablePort(ser, self._cancel) if self._cancel is not None else ser
        self._buf.clear()
        self._event("connect", f"opened at {self.baudrate} baud")
        return self

    def close(self) -> None:
        if self._ser is None:
            return
        try:
            if self.in_raw:
                self._ser.write(b"\r\x02")       # back to the friendly REPL for the next user
                self._ser.flush()
        except Exception:  # noqa: BLE001 - closing must not fail on a dead port
            pass
        try:
            self._ser.close()
        finally:
            self._ser = None
            self.in_raw = False
            self._event("close", "closed")

    def __enter__(self) -> ReplSession:
        self.open()
        try:
            self.enter_raw()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _require_open(self) -> Any:
        if self._ser is None:
            raise self._error(ReplError, "session is not open")
        return self._ser

    def _write(self, data: bytes) -> None:
        ser = self._require_open()
        try:
            ser.write(data)
            ser.flush()
        except (serial.SerialException, OSError) as e:
            why = str(e)  # pyserial's own message already starts "write failed: "
            raise self._error(ReplError, why if why.startswith("write failed") else f"write failed: {why}") from None
        self.stats["written"] += len(data)

    def _fill(self, wait: float) -> bool:
        """Read what is there (waiting up to ~wait s for the first byte); True if anything came."""
        ser = self._require_open()
        try:
            n = ser.in_waiting
            data = ser.read(n) if n else ser.read(1)
            if data and not n:
                more = ser.in_waiting
                if more:
                    data += ser.read(more)
        except (serial.SerialException, OSError) as e:
            raise self._error(ReplError, f"read failed: {e}") from None
        if data:
            self._buf += data
            return True
        if wait > 0.05:
            time.sleep(0)  # the serial timeout already waited
        return False

    def _discard_input(self, quiet: float = 0.05, limit: float = 1.0) -> None:
        """Drop pending input until the line is quiet for `quiet` s (at most `limit` s)."""
        self._buf.clear()
        end = time.monotonic() + limit
        last = time.monotonic()
        while time.monotonic() < end:
            if self._fill(0.05):
                self._buf.clear()
                last = time.monotonic()
            elif time.monotonic() - last >= quiet:
                break
        self._buf.clear()

    def _read_until(self, markers: bytes | tuple[bytes, ...], timeout: float, what: str,
                    budget: float | None = None) -> bytes:
        """Bytes up to and including the first marker; the rest stays buffered. `budget`: the
        command's whole time, of which `timeout` is what is left, for the message."""
        if isinstance(markers, bytes):
            markers = (markers,)
        deadline = time.monotonic() + timeout
        while True:
            hits = [(i, m) for m in markers if (i := self._buf.find(m)) >= 0]
            if hits:
                i, m = min(hits)
                end = i + len(m)
                data = bytes(self._buf[:end])
                del self._buf[:end]
                return data
            if time.monotonic() >= deadline:
                raise ReplTimeout(self.port, self._mask(f"no {what} within {_within(timeout, budget)}"
                                                        + _restarted(self._buf, budget)), bytes(self._buf))
            self._fill(deadline - time.monotonic())

    def _read_exact(self, n: int, timeout: float, what: str, budget: float | None = None) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self._buf) < n:
            if time.monotonic() >= deadline:
                raise self._error(ReplTimeout, f"no {what} within {_within(timeout, budget)}"
                                  + _restarted(self._buf, budget))
            self._fill(deadline - time.monotonic())
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    # --- REPL modes ---------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Ctrl-C twice (a main.py may catch the first KeyboardInterrupt)."""
        self._write(b"\r\x03")
        time.sleep(0.05)
        self._write(b"\x03")
        self._event("interrupt", "sent Ctrl-C")

    def enter_raw(self, interrupt: bool = True, timeout: float | None = None) -> None:
        """Get to the raw-REPL prompt: interrupt what runs, Ctrl-A, wait for the banner.

        Re-tries the interrupt a few times within `timeout` (default `connect_timeout`): a busy
        main.py may be printing or catching the first Ctrl-C.
        """
        timeout = self.connect_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            attempt += 1
            if interrupt:
                self.interrupt()
            self._discard_input(quiet=0.05, limit=0.5)
            self._write(b"\r\x01")
            left = deadline - time.monotonic()
            try:
                self._read_until(RAW_BANNER, max(0.2, min(left, 1.0 + 0.5 * attempt)), "raw REPL banner")
                self._read_until(b">", max(0.2, deadline - time.monotonic()), "raw REPL prompt")
            except ReplTimeout:
                if time.monotonic() >= deadline:
                    raise self._error(ReplTimeout, f"no raw REPL after Ctrl-C/Ctrl-A within {timeout:g} s "
                                      "(a board still starting up after a flash or a reset answers later: "
                                      f"allow it longer with {self.connect_option}; else not a MicroPython "
                                      "REPL? check the port, the baud rate, that the board is not in its "
                                      "bootloader, and that no other program holds the port)") from None
                continue
            self._buf.clear()
            self.in_raw = True
            self._event("raw-repl", "in raw REPL" + (f" after {attempt} tries" if attempt > 1 else ""))
            return

    def exit_raw(self) -> None:
        self._write(b"\r\x02")
        self.in_raw = False

    def soft_reset(self, timeout: float | None = None) -> str:
        """Ctrl-D in the raw REPL: the board restarts its VM, runs boot.py, and we are back in raw REPL.

        Returns what the board printed while restarting (boot.py output and the like). A real
        board comes back to the raw REPL by itself once boot.py has run, however long that takes
        (boot.py connecting to Wi-Fi is silent for seconds): silence is not the end (taking 0.5 s
        of it for the end interrupted boot.py mid-Wi-Fi). A unix peer restarts into the friendly
        REPL: its prompt is the end. When neither comes within `timeout` (default: the
        session's), whatever still runs is interrupted and ReplTimeout says so (the board is then
        in raw REPL).
        """
        timeout = self.timeout if timeout is None else timeout
        if not self.in_raw:
            self.enter_raw()
        self._write(b"\x04")
        self.in_raw = False
        self._event("soft-reset", "soft reset")
        deadline = time.monotonic() + timeout
        out = bytearray()
        settled = False
        while time.monotonic() < deadline:
            if self._fill(0.05):
                out += self._buf
                self._buf.clear()
                if RAW_BANNER + b">" in out:      # (a log line may follow the prompt in the same read)
                    self.in_raw = settled = True
                    break
                if out.endswith(FRIENDLY_PROMPT):
                    settled = True
                    break
        if not settled:
            still = self._error(ReplTimeout, f"boot.py (on a unix board: or main.py) was still running {timeout:g} s "
                                "after the soft reset: interrupted (the services it starts may not have started)")
            try:
                self.enter_raw()                      # (Ctrl-C: whatever still runs is interrupted)
            except ReplError:
                pass                                  # the board did not answer that either: said above
            raise still
        if not self.in_raw:
            self.enter_raw(timeout=max(self.connect_timeout, deadline - time.monotonic()))
        text = _text(bytes(out))
        for marker in ("OK", "MPY: soft reboot", "soft reboot"):
            text = text.replace(marker, "", 1) if text.lstrip().startswith(marker) else text
        return text.split("raw REPL; CTRL-B to exit")[0].strip()

    # --- exec ---------------------------------------------------------------------------------

    def exec_raw(self, code: bytes, timeout: float | None = None, budget: float | None = None,
                 guarded: bool = False) -> ExecResult:
        """Send code as is (no integrity guard) and return its stdout and stderr, all within
        `timeout` (default: the session's): the time spent sending it counts, so a slow link
        or slowed pacing does not stretch a budget the user set. `budget`: the whole command's
        time when `timeout` is what is left of it (exec's re-sends), for the messages.
        `guarded` (guard()'s code, which runs only whole): a raw paste still sending when the
        time is up is cut there."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        budget = timeout if budget is None else budget

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        if not self.in_raw:
            self.enter_raw()
        if self.use_raw_paste and self.stats["raw_paste"] is not False:
            self._write(b"\x05A\x01")
            resp = self._read_exact(2, left(), "answer to the raw-paste request", budget)
            if resp == b"R\x01":
                self.stats["raw_paste"] = True
                self._raw_paste_write(code, left(), budget, guarded)
                return self._follow(left(), budget)
            if resp == b"R\x00":
                self.stats["raw_paste"] = False       # firmware has raw paste switched off
            else:
                # Old firmware: it took \x05A as input and Ctrl-A reset the raw REPL.
                self._read_until(RAW_BANNER + b">", left(), "raw REPL after the raw-paste request", budget)
                self.stats["raw_paste"] = False
            self._event("exec", "no raw-paste on this firmware: paced writes")
        self._paced_write(code)
        if self.pacing.delay:
            time.sleep(self.pacing.delay)
        self._write(b"\x04")
        try:
            # The board answers OK at once, before running anything.
            ok = self._read_exact(2, min(left(), 1.5), "OK after the command", budget)
        except ReplTimeout:
            if not left():
                raise                         # the budget went on sending: no second Ctrl-D into a running command
            # No OK: the Ctrl-D itself was lost in a dropped burst. Send it again, after a pause
            # that lets the UART drain (what arrived is guarded: a damaged command will not run).
            time.sleep(0.2)
            self._write(b"\x04")
            ok = self._read_exact(2, left(), "OK after the command", budget)
        if ok != b"OK":
            raise self._error(ReplError, f"board did not accept the command (answered {ok!r})")
        return self._follow(left(), budget)

    def _paced_write(self, data: bytes) -> None:
        p = self.pacing
        for i in range(0, len(data), p.chunk):
            self._write(data[i:i + p.chunk])
            if p.delay and i + p.chunk < len(data):
                time.sleep(p.delay)

    def _raw_paste_write(self, data: bytes, timeout: float, budget: float | None = None, cut: bool = False) -> None:
        deadline = time.monotonic() + timeout
        header = self._read_exact(2, timeout, "raw-paste window size", budget)
        window = int.from_bytes(header, "little")
        self.raw_paste_window = window
        remain = window
        p = self.pacing
        i = 0
        last_write = 0.0
        while i < len(data):
            # Take window grants (and an abort) as they come; wait when the window is used up.
            stall_deadline = time.monotonic() + min(timeout, 2.0)
            while remain == 0 or self._buf or self._ser.in_waiting:
                if not self._buf:
                    self._fill(0.05)
                if self._buf:
                    b = self._buf[:1]
                    del self._buf[:1]
                    if b == b"\x01":
                        remain += window
                    elif b == b"\x04":
                        self._write(b"\x04")      # board ended the paste early: acknowledge
                        raise self._error(TransferError, "board ended raw paste early")
                    else:
                        raise self._error(ReplError, f"unexpected {bytes(b)!r} from the board during raw paste")
                elif remain == 0 and time.monotonic() > stall_deadline:
                    raise _PasteStall()
            if cut and len(data) - i > 1 and time.monotonic() > deadline:
                # The budget went on sending (a slow link): end the paste here. Guarded code cut
                # short is a SyntaxError on the board, or stops before its exec: nothing of it
                # runs. (Not with its last byte alone missing: "exec(...)" without its newline runs.)
                self._recover_after_stall(deadline)
                raise ReplTimeout(self.port, self._mask(f"sending the command ({i} of {len(data)} bytes sent) took "
                                                        f"{_within(timeout, budget)}: nothing of it ran"))
            n = min(remain, p.chunk, len(data) - i)
            if p.delay:
                wait = last_write + p.delay - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            self._write(data[i:i + n])
            last_write = time.monotonic()
            remain -= n
            i += n
        self._write(b"\x04")
        self._read_until(b"\x04", max(0.0, deadline - time.monotonic()), "end of raw paste", budget)

    def _follow(self, timeout: float, budget: float | None = None) -> ExecResult:
        # The raw REPL answers stdout, \x04, stderr, \x04, ">". Read to the end and split at the
        # last \x04 before it: a \x04 the command printed (binary output) is stdout, not its end.
        tail = self._read_until(b"\x04>", timeout, "end of the command's output", budget)[:-2]
        out, _, err = tail.rpartition(b"\x04")
        return ExecResult(out, err)

    def _recover_after_stall(self, deadline: float) -> None:
        """A raw paste stalled (bytes lost, the board waits for the rest): end it and read the
        board's answer within what is left of the command's budget (`deadline`; 0.2 s a step at
        least, up to 2 s): fixed 2 s waits and a fresh raw REPL took a command well past its
        budget. An answer that does not come in time is left to the next attempt (exec: within
        the budget) or command, which enters the raw REPL anew (Ctrl-C, Ctrl-A: its discard
        drops the late answer)."""
        def left() -> float:
            return max(0.2, min(2.0, deadline - time.monotonic()))

        self._write(b"\x04")
        try:
            self._read_until(b"\x04", left(), "end of the stalled paste")
            self._follow(left())
        except ReplTimeout:
            self.in_raw = False

    def exec(self, code: str | bytes, timeout: float | None = None) -> ExecResult:
        """Run code on the board (integrity-guarded; re-sent more slowly if bytes were lost).

        Returns stdout and stderr; a traceback on the board is in `stderr`, not raised.
        """
        wrapped = guard(code)
        pacing0 = self.pacing
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget        # one budget for the command, its re-sends included
        for attempt in range(self.retries + 1):
            left = deadline - time.monotonic()
            if attempt and left <= 0:
                self.pacing = pacing0
                raise self._error(ReplTimeout, f"no answer within the command's {budget:g} s (sending it included): "
                                  f"bytes were lost on the way and {attempt} re-send(s) took the rest")
            if attempt and not self.in_raw:
                # A recovery left to us (_recover_after_stall): the raw REPL within this budget
                # too, not the connect timeout, and said as the command's timeout.
                try:
                    self.enter_raw(timeout=left)
                except ReplTimeout:
                    self.pacing = pacing0
                    raise self._error(ReplTimeout, f"no answer within the command's {budget:g} s (sending it "
                                      "included): bytes were lost on the way and the board did not answer "
                                      "again") from None
                left = deadline - time.monotonic()
            try:
                result = self.exec_raw(wrapped, left, budget, guarded=True)
            except _PasteStall:
                self._recover_after_stall(deadline)
                result = None
            if result is not None and not _corrupted(result):
                return result
            if attempt == self.retries:
                break
            self.stats["retries"] += 1
            self.pacing = self.pacing.slower()
            self._event("retry", f"bytes lost on the way to the board: re-sending at {self.pacing.chunk} bytes "
                                 f"per {self.pacing.delay * 1000:.0f} ms")
        self.pacing = pacing0
        raise self._error(TransferError, f"bytes lost on the way to the board {self.retries + 1} times, "
                          "even at the slowest pace (bad cable or USB hub? try a lower --baud)")

    def run(self, code: str | bytes, timeout: float | None = None) -> str:
        """Run code; return its stdout as text; raise RemoteError if it raised."""
        result = self.exec(code, timeout)
        if not result.ok:
            raise RemoteError(self.port, self._mask(result.error), self._mask(result.text))
        return result.text

    def eval(self, expression: str, timeout: float | None = None) -> Any:
        """Evaluate a Python literal-valued expression on the board."""
        text = self.run(f"print(repr({expression}))", timeout)
        try:
            return ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise self._error(ReplError, f"not a literal: {text.strip()[:80]!r}") from None

    def eval_json(self, code: str, timeout: float | None = None) -> dict[str, Any]:
        """Run code that prints one JSON object on a line of its own; return it parsed. The last
        such line counts: a line something else on the board printed after it (a lesson's timer,
        a log line) is passed over."""
        text = self.run(code, timeout)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            raise self._error(ReplError, "the board printed no result")
        for line in reversed(lines):
            if line.lstrip().startswith("{"):
                try:
                    found = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(found, dict):
                    return found
        raise self._error(ReplError, f"unreadable result from the board: {lines[-1][:80]!r}")

    # --- files --------------------------------------------------------------------------------

    def get(self, path: str, timeout: float | None = None) -> bytes:
        """Read a file from the board (hex on the wire)."""
        code = (f"import binascii\nwith open({path!r},'rb') as f:\n"
                " while 1:\n  b=f.read(256)\n  if not b:break\n  print(binascii.hexlify(b).decode())\n")
        text = self.run(code, timeout)
        self._event("get", f"read {path}")
        return bytes.fromhex("".join(text.split()))

    def exists(self, path: str) -> bool:
        return self.run(f"import os\ntry:\n os.stat({path!r});print(1)\nexcept OSError:print(0)\n").strip() == "1"

    def remove(self, path: str) -> None:
        self.run(f"import os\ntry:\n os.remove({path!r})\nexcept OSError:pass\n")

    def put(self, path: str, data: bytes, *, atomic: bool = True, verify: bool = True,
            block: int = 512, timeout: float | None = None) -> None:
        """Write `data` to `path` on the board.

        atomic: written to `path + '.tmp'`, then renamed over `path` (readers never see half a
        file). verify: read back and compared. Each block is guarded like every command, so a
        block that lost bytes is re-sent, never written short.
        """
        target = path + ".tmp" if atomic else path
        self.run(f"_f=open({target!r},'wb')\n", timeout)
        try:
            for i in range(0, len(data), block):
                chunk = data[i:i + block]
                literal = repr(chunk)
                b64 = binascii.b2a_base64(chunk, newline=False).decode()
                if len(b64) + 24 < len(literal):
                    self.run(f"from binascii import a2b_base64\n_f.write(a2b_base64('{b64}'))\n", timeout)
                else:
                    self.run(f"_f.write({literal})\n", timeout)
            self.run("_f.close()\ndel _f\n", timeout)
        except BaseException:
            try:
                self.run("try:\n _f.close()\nexcept Exception:pass\n", 2.0)
                self.remove(target)
            except ReplError:
                pass
            raise
        if atomic:
            # os.rename over an existing file is not atomic everywhere (FAT): remove first there.
            self.run(f"import os\ntry:\n os.rename({target!r},{path!r})\n"
                     f"except OSError:\n os.remove({path!r})\n os.rename({target!r},{path!r})\n", timeout)
        if verify:
            back = self.get(path, timeout)
            if back != data:
                raise self._error(TransferError, f"{path}: read back {len(back)} bytes that differ from the "
                                  f"{len(data)} written")
        self._event("put", f"wrote {path} ({len(data)} bytes{', verified' if verify else ''})")


class _PasteStall(Exception):
    """Internal: the board stopped granting raw-paste windows (it is missing bytes)."""


def _corrupted(result: ExecResult) -> bool:
    err = result.error
    if _CORRUPT in err:
        return True
    # Our guarded wrapper is always valid Python: a SyntaxError at the top level (<stdin>)
    # means bytes went missing on the way. Errors inside the sent code say '<string>'.
    return "SyntaxError" in err and '"<stdin>"' in err and '"<string>"' not in err



# --- telnet: the same session over a board's telnet REPL ------------------------------------------

class LoginError(ReplError):
    """The board's telnet refused the login (wrong user or password, locked out, busy)."""


_IAC, _DONT, _DO, _WONT, _WILL, _SB, _SE = 255, 254, 253, 252, 251, 250, 240


class TelnetTransport:
    """A board's telnet REPL (modules/telnet.py) as the byte stream `ReplSession` reads and writes.

    Logs in, strips telnet commands from what the board sends, and escapes what we send (IAC
    doubled, CR sent as CR NUL) so the REPL sees exactly our bytes. The serial-like surface
    (`write`, `flush`, `read` waiting up to `read_timeout`, `in_waiting`, `close`) is what
    `ReplSession` uses; pass it as `serial_factory`, see `telnet_session`. A closed connection is
    an `OSError`, which the session reports as a failed read or write.
    """

    def __init__(self, host: str, port: int = 23, *, user: str = "micro", password: str = "",
                 timeout: float = 5.0, read_timeout: float = 0.05) -> None:
        import socket

        self.name = f"{host}:{port}"
        self.read_timeout = read_timeout
        self._rx = bytearray()
        self._iac = 0          # parser state: 0 data, 1 after IAC, 2 option byte, 3 in SB, 4 IAC in SB
        self._eof = False
        try:
            self._sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise ReplError(self.name, f"cannot connect: {e.strerror or e}") from None
        # Small commands and answers go back and forth: Nagle + delayed ACKs would add ~40 ms each.
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._login(user, password, timeout)
        except BaseException:
            self._sock.close()
            raise

    def _login(self, user: str, password: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        secrets = [password]

        def until(*markers: bytes) -> bytes:
            while True:
                for m in markers:
                    if m in self._rx:
                        return m
                for refusal in (b"Locked", b"Busy", b"Login incorrect"):
                    i = self._rx.find(refusal)
                    if i >= 0 and b"\n" in self._rx[i:]:
                        line = bytes(self._rx[i:]).split(b"\r\n")[0].decode(errors="replace").strip()
                        raise LoginError(self.name, mask(f"telnet login refused: {line}", secrets))
                if time.monotonic() > deadline:
                    seen = bytes(self._rx[-60:]).decode(errors="replace")
                    raise ReplTimeout(self.name, f"no telnet login prompt within {timeout:g} s (saw {seen!r})")
                try:
                    self._recv(max(0.01, deadline - time.monotonic()))
                except OSError:
                    raise ReplError(self.name, "the board closed the telnet connection during login") from None

        until(b"login: ")
        self._rx.clear()
        self.write(user.encode() + b"\r\n")
        until(b"Password: ")
        self._rx.clear()
        self.write(password.encode() + b"\r\n")
        until(b"Logged in")
        i = self._rx.find(b"\r\n", self._rx.find(b"Logged in"))
        if i < 0:
            until(b"\r\n")
            i = self._rx.find(b"\r\n", self._rx.find(b"Logged in"))
        del self._rx[:i + 2]

    def _recv(self, wait: float) -> None:
        import select

        if self._eof:
            raise OSError("the board closed the telnet connection")
        ready, _, _ = select.select([self._sock], [], [], max(0.0, wait))
        if not ready:
            return
        try:
            data = self._sock.recv(65536)
        except ConnectionError as e:
            self._eof = True
            raise OSError(f"the board dropped the telnet connection ({e.strerror or e})") from None
        if not data:
            self._eof = True
            raise OSError("the board closed the telnet connection")
        self._filter(data)

    def _filter(self, data: bytes) -> None:
        out = self._rx
        for c in data:
            st = self._iac
            if st == 0:
                if c == _IAC:
                    self._iac = 1
                else:
                    out.append(c)
            elif st == 1:
                if c == _IAC:
                    out.append(c)
                    self._iac = 0
                elif c == _SB:
                    self._iac = 3
                elif _WILL <= c <= _DONT:
                    self._iac = 2
                else:
                    self._iac = 0
            elif st == 2:
                self._iac = 0     # option negotiation: the board's defaults (it echoes, SGA) are fine
            elif st == 3:
                if c == _IAC:
                    self._iac = 4
            else:
                self._iac = 0 if c == _SE else 3

    # the serial-like surface ReplSession uses
    def write(self, data: bytes) -> int:
        # NVT: CR LF is an end of line (the board reads CR); a lone CR travels as CR NUL.
        n = len(data)
        try:
            self._send_escaped(data)
        except ConnectionError as e:
            self._eof = True
            raise OSError(f"the board dropped the telnet connection ({e.strerror or e})") from None
        return n

    def _send_escaped(self, data: bytes) -> None:
        self._sock.sendall(bytes(data).replace(b"\xff", b"\xff\xff").replace(b"\r", b"\r\x00")
                           .replace(b"\r\x00\n", b"\r\n"))

    def flush(self) -> None:
        pass

    def read(self, n: int = 1) -> bytes:
        if not self._rx:
            self._recv(self.read_timeout)
        data = bytes(self._rx[:n])
        del self._rx[:n]
        return data

    @property
    def in_waiting(self) -> int:
        if not self._eof:
            try:
                self._recv(0)
            except OSError:
                if not self._rx:
                    raise
        return len(self._rx)

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


def telnet_session(host: str, port: int = 23, *, user: str = "micro", password: str = "", name: str | None = None,
                   timeout: float = 10.0, connect_timeout: float = 5.0,
                   on_event: Callable[[ReplEvent], None] | None = None) -> ReplSession:
    """A `ReplSession` over a board's telnet REPL (login included): the same guarded raw REPL.

    TCP does not drop bytes the way a UART does, so writes go at `Pacing.fast()`; the length and
    checksum guard still refuses anything damaged. `name` labels events and errors (the hostname).
    """
    def factory(_: str) -> TelnetTransport:
        return TelnetTransport(host, port, user=user, password=password, timeout=connect_timeout)

    return ReplSession(name or f"{host}:{port}", timeout=timeout, connect_timeout=connect_timeout,
                       pacing=Pacing.fast(), secrets=[password], on_event=on_event, serial_factory=factory)
