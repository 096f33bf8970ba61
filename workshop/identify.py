"""Which board is which: each board shows its sticker number, and the table maps port -> name -> MAC.

Per port, over the raw REPL (the port opened exclusively): the board's MAC (as provisioning
reads it), its registry record (sticker, hostname, the board it was flashed for), then the
board's LED blinks the sticker number digit by digit (7 = seven blinks; 12 = one, pause, two;
a 0 is one long blink), twice. LED pin and polarity come from boards/<BOARD>.toml (`led_pin`,
`led_active_low`). A board without a known LED, or one where driving it fails, prints its name
on its own console (the friendly REPL, what a terminal on that port shows) instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


from .config import ConfigError, get_board
from .parallel import results
from .provision import identify as repl_identify
from .registry import Registry, RegistryError, normalize_mac
from .repl import FRIENDLY_PROMPT, ReplError, ReplSession

BLINK = """
import time
from machine import Pin
p = Pin(%(pin)d, Pin.OUT)
for r in range(%(rounds)d):
    for d in %(digits)r:
        for i in range(d or 1):
            p.value(%(on)d)
            time.sleep_ms(700 if d == 0 else 250)
            p.value(%(off)d)
            time.sleep_ms(250)
        time.sleep_ms(700)
    time.sleep_ms(1200)
print('blinked')
"""

CONSOLE = "print(%r)\r\n"


@dataclass
class Shown:
    port: str
    ok: bool
    mac: str | None = None
    sticker: int | None = None
    hostname: str | None = None
    board: str | None = None
    how: str | None = None            # "LED GPIO2 (active low)", "console"
    error: str | None = None
    interrupted: bool = False         # Ctrl-C stopped it before the board showed itself

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def digits(n: int) -> list[int]:
    return [int(c) for c in str(n)]


def _label(rec: Any, port: str) -> str:
    if rec is None:
        return f"unknown board on {port} (not in the registry)"
    return f"{rec.hostname or 'board'} - sticker {rec.sticker}"


def show(port: str, registry: Registry | None, *, baudrate: int = 115200, rounds: int = 2,
         connect_timeout: float = 3.0, timeout: float = 30.0, display: bool = True,
         cancel: threading.Event | None = None) -> Shown:
    """One board shows itself. A set `cancel` (Ctrl-C) ends its session within one read."""
    result = Shown(port, ok=False)
    session = ReplSession(port, baudrate=baudrate, timeout=timeout, connect_timeout=connect_timeout, cancel=cancel)
    try:
        session.open()
        session.enter_raw()
        ident = repl_identify(session)
        result.mac = normalize_mac(ident.mac)
        rec = registry.get(result.mac) if registry is not None else None
        if rec is not None:
            result.sticker, result.hostname, result.board = rec.sticker, rec.hostname, rec.board
        if not display:
            result.ok = True
            return result
        led: tuple[int, bool] | None = None
        if rec is not None and rec.board:
            try:
                b = get_board(rec.board)
                led = (b.led_pin, b.led_active_low) if b.led_pin is not None else None
            except ConfigError:
                led = None
        if led is not None and result.sticker is not None:
            pin, low = led
            code = BLINK % {"pin": pin, "rounds": rounds, "digits": digits(result.sticker),
                            "on": 0 if low else 1, "off": 1 if low else 0}
            try:
                session.run(code, timeout=timeout)
                result.how = f"LED GPIO{pin}" + (" (active low)" if low else "")
                result.ok = True
                return result
            except ReplError as e:
                result.error = f"LED GPIO{pin}: {e}"
        # No LED (or it failed): the name on the board's own console, at the friendly REPL, once
        # its prompt is there (a line sent while it prints its banner is lost on some boards).
        session.exit_raw()
        session._read_until(FRIENDLY_PROMPT, 5.0, "friendly REPL prompt after Ctrl-B")  # noqa: SLF001
        text = f"*** {_label(rec, port)} ***"
        session._write((CONSOLE % text).encode())  # noqa: SLF001 - one line at the friendly prompt
        # Confirm the board printed it (its output line, not the echo of our command).
        session._read_until((f"\n{text}\r\n".encode(), f"\n{text}\n".encode()), 5.0,  # noqa: SLF001
                            "printing the name on the console")
        result.how = "console"
        result.ok = True
        return result
    except (ReplError, RegistryError) as e:   # a registry another program locked: this board's error, said
        result.error = str(e)
        if cancel is not None and cancel.is_set():
            result.interrupted, result.error = True, "interrupted (Ctrl-C)"
        return result
    finally:
        session.close()


def identify_boards(ports: Sequence[str], registry: Registry | None, *, only: str | None = None,
                    baudrate: int = 115200, rounds: int = 2, cancel: threading.Event | None = None,
                    connect_timeout: float = 3.0) -> list[Shown]:
    """Every port in parallel; with `only` (a hostname or sticker number) just that board blinks.

    `only` needs the registry that knows names and stickers, and must be on one of the ports:
    otherwise ValueError (nothing blinking is not a success). Ctrl-C (KeyboardInterrupt) sets
    `cancel`: every session stops within one read and the results come back at once, the
    unfinished boards `interrupted`; a caller that passed `cancel` sees it set."""
    if only is not None:
        if registry is None:
            raise ValueError(f"--blink {only}: no registry to find that board in: pass --registry FILE "
                             "(the station's, default workshop.db here)")
        rec = registry.by_hostname(only) or (registry.by_sticker(int(only)) if only.isdigit() else None)
        if rec is None:
            raise ValueError(f"--blink {only}: no such board in {registry.path}")
    cancel = cancel or threading.Event()
    with ThreadPoolExecutor(max_workers=max(1, len(ports))) as pool:
        shown = list(results([pool.submit(_show_one, p, registry, only, baudrate, rounds, cancel, connect_timeout)
                              for p in ports], cancel))
    if cancel.is_set():
        return shown
    if only is not None and all(s.ok for s in shown) and not any(_is(s, only) for s in shown):
        raise ValueError(f"--blink {only}: that board is on none of the {len(ports)} port(s) asked "
                         f"({', '.join(ports)})")
    return shown


def _is(r: Shown, only: str) -> bool:
    # A hostname in any case, as the registry finds it (LAB-02 is lab-02).
    return only.lower() in ((r.hostname or "").lower(), str(r.sticker))


def _show_one(port: str, registry: Registry | None, only: str | None, baudrate: int, rounds: int,
              cancel: threading.Event, connect_timeout: float) -> Shown:
    if only is None:
        return show(port, registry, baudrate=baudrate, rounds=rounds, cancel=cancel, connect_timeout=connect_timeout)
    # Find which port has it first (MAC only), then blink just that one.
    r = show(port, registry, baudrate=baudrate, display=False, cancel=cancel, connect_timeout=connect_timeout)
    if not _is(r, only) or r.interrupted:
        return r
    return show(port, registry, baudrate=baudrate, rounds=rounds, cancel=cancel, connect_timeout=connect_timeout)


__all__ = ["Shown", "digits", "identify_boards", "show"]
