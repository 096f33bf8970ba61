"""The one place that knows esptool's internals: its logger, its stub choice, its errors, its port.

Everything else in `workshop` talks to boards through these functions and gets our own
exceptions back (`NoAnswer`, `PortBusy`, `PortUnavailable`, `VerifyFailed`, ...). Each assumption
about esptool made here has a test in tests/host/flash/test_esptool_adapter.py, so an esptool
upgrade that breaks one fails there, by name, instead of somewhere in a flash run.

What we rely on, and how:
- Output: esptool's public `log.set_logger()` installs a logger that routes each thread's output
  to that thread's log file (`esptool_session`), so parallel workers never print and each board
  has its own log. Its progress hooks are also where a cancelled run is stopped (`Cancelled`).
  One esptool internal remains: `reset.ResetStrategy.print_once` is bound to the logger that
  existed at import time, so it is re-pointed at the proxy (else its warning reaches stdout).
- Ports: we open the serial port ourselves (pyserial, `exclusive=True`, DTR/RTS low) and hand the
  open port to esptool (`ESPLoader` accepts a port object). Open errors are then pyserial's
  errno codes, not esptool's message text; a port held by another program is `PortBusy`; and
  the port object is ours to unblock (`abort_port`) when a stage overruns its time box.
- Stubs: the stub version is chosen per attempt with a `StubFlasher` subclass (`stub_flasher`)
  instead of the process-wide `ESPTOOL_STUB_VERSION`.
- Errors: esptool raises one type, `FatalError`, for nearly everything. Where it has a finer
  type we use it (`NotImplementedInROMError` for ROM-only loaders); two message matches remain,
  each tested: "Failed to connect" (sync never answered) and "Verification failed" (verify_flash).
- Writes: esptool's write_flash reconnects on a lost link by itself, `WRITE_FLASH_ATTEMPTS`
  times; `single_write_attempt` sets it to one (our ladder retries, each stage time-boxed).
- Speed: esptool 5.6 formats a hex dump of every packet even with tracing off; the formatter is
  replaced by one that prints the length (`_skip_untraced_hex_dumps`).
- Images, read and checked with esptool's image classes: which chip an image is for
  (`image_chip`, before anything is written); a released image's header gets the board's flash
  size (`with_header_flash_size`), the ESP32 family's appended digest redone.

Tested range: esptool 5.6 (pyproject pins >=5.6,<5.7). 5.3.1 crashes on import of `esp_pylib`.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import serial

# Ports are opened the kit's one way (exclusive, DTR/RTS low, errors by errno): re-exported here.
from .serialport import PORT_BUSY, ROM_BAUD, DeviceError, PortBusy, PortUnavailable, open_port, port_error

# Sync attempts before a port counts as "no answer" (each ~0.75 s with esptool's resets).
DEFAULT_CONNECT_ATTEMPTS = 3


class NoAnswer(DeviceError):
    """Nothing answered the bootloader sync: wrong port, no board, or held in reset."""

    kind = "no-answer"


class VerifyFailed(DeviceError):
    """esptool could not confirm the flash content (mismatch, or verification unsupported)."""

    kind = "verify-failed"


class Cancelled(BaseException):
    """Raised inside a worker (from esptool's logging hooks) when the run was cancelled.

    A BaseException so esptool's `except Exception` retry paths cannot swallow it.
    """


# --- ports ----------------------------------------------------------------------------------


def abort_port(ser: Any) -> None:
    """Unblock whatever a thread is waiting for on this port, then close it. Never raises.

    pyserial's POSIX port wakes a blocked read/write through its abort pipes (cancel_read /
    cancel_write); a socket:// port is woken by shutting the socket down. Closing alone does not
    wake a select() on Linux.
    """
    for name in ("cancel_read", "cancel_write"):
        with contextlib.suppress(Exception):
            getattr(ser, name)()
    sock = getattr(ser, "_socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(Exception):
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        ser.close()


# --- esptool output: per-thread routing -------------------------------------------------------


@dataclass
class _Sink:
    log: TextIO
    on_progress: Callable[[int, int, str], None] | None = None
    cancel: threading.Event | None = None
    abort: threading.Event | None = None      # this attempt overran its time box

    def check(self) -> None:
        if (self.cancel is not None and self.cancel.is_set()) or (self.abort is not None and self.abort.is_set()):
            raise Cancelled()


_local = threading.local()
_install_lock = threading.Lock()
_installed = False

_MARKUP = re.compile(r"\[/?[a-z #]+\]")


def _text(args: tuple[Any, ...], sep: str = " ") -> str:
    return _MARKUP.sub("", sep.join(str(a) for a in args))


def _current() -> _Sink | None:
    return getattr(_local, "sink", None)


class _Progress:
    def __init__(self, sink: _Sink | None, total: int) -> None:
        self.sink, self.total, self.done = sink, total, 0

    def update(self, advance: int = 1, description: str | None = None, **_: Any) -> None:
        self.done += advance
        if self.sink is not None:
            self.sink.check()
            if self.sink.on_progress is not None:
                self.sink.on_progress(self.done, self.total, description or "")


def _routing_logger(fallback: Any) -> Any:
    """An esp-pylib logger that writes to the calling thread's log file (or the fallback)."""
    from esp_pylib.logger import EspLogBase

    class RoutingLogger(EspLogBase):
        def _write(self, prefix: str, args: tuple[Any, ...], end: str = "\n", sep: str = " ") -> None:
            sink = _current()
            if sink is None:
                return
            sink.check()
            sink.log.write(prefix + _text(args, sep) + end)
            sink.log.flush()

        def print(self, *args: Any, **kwargs: Any) -> None:
            if _current() is None:
                return fallback.print(*args, **kwargs)
            self._write("", args, end=kwargs.get("end", "\n"), sep=kwargs.get("sep", " "))

        def err(self, *args: Any, suggestion: str | None = None) -> None:
            self._write("ERROR: ", args) if _current() else fallback.err(*args, suggestion=suggestion)

        def warn(self, *args: Any, suggestion: str | None = None) -> None:
            self._write("WARNING: ", args) if _current() else fallback.warn(*args, suggestion=suggestion)

        warning, error = warn, err

        def note(self, *args: Any) -> None:
            self._write("NOTE: ", args) if _current() else fallback.note(*args)

        def hint(self, *args: Any) -> None:
            self._write("HINT: ", args) if _current() else fallback.hint(*args)

        def debug(self, *args: Any) -> None:
            self._write("DEBUG: ", args) if _current() else fallback.debug(*args)

        def stage(self, finish: bool = False) -> None:
            sink = _current()
            if sink is not None:
                sink.check()
            else:
                fallback.stage(finish=finish)

        def set_verbosity(self, mode: int | str) -> None:
            fallback.set_verbosity(mode)

        def progress_bar(self, cur_iter: int, total_iters: int, prefix: str = "", suffix: str = "",
                         bar_length: int = 30) -> None:
            if _current() is None:
                fallback.progress_bar(cur_iter, total_iters, prefix, suffix, bar_length)

        @contextlib.contextmanager
        def progress(self, total: int, description: str = "", bar_length: int = 30, *, file: Any = None,
                     disable: bool = False, unit: str | None = None) -> Iterator[Any]:
            sink = _current()
            if sink is None:
                with fallback.progress(total, description, bar_length, file=file, disable=disable, unit=unit) as p:
                    yield p
                return
            yield _Progress(sink, total)

    return RoutingLogger()


def _install_logger() -> None:
    """Route esptool's process-wide logger per thread (public set_logger). Idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        import esptool  # noqa: F401  (installs esptool's own logger first: our fallback)
        from esp_pylib.logger import EspLog
        from esptool import reset
        from esptool.logger import log

        current = EspLog.instance if EspLog.instance is not None else EspLog()
        log.set_logger(_routing_logger(current))
        _skip_untraced_hex_dumps()
        # The reset strategy's one-shot warning is bound to the logger of import time.
        reset.ResetStrategy.print_once.print_callback = lambda text: log.warn(text)
        _installed = True


def _skip_untraced_hex_dumps() -> None:
    """esptool 5.6 formats a hex dump of every packet even with tracing off.

    ESPLoader.write() and the SLIP reader call `self.trace(f"... {HexFormatter(buf)}")`: the
    f-string renders the "lazy" formatter before trace() checks `_trace_enabled`. That is about
    two thirds of esptool's CPU time per flash, all under the GIL, so it decides how well
    parallel workers scale. We never enable tracing, so the dump is replaced by its length.
    """
    from esptool import loader

    original = getattr(loader, "HexFormatter", None)
    if original is None or getattr(original, "_workshop_short", False):
        return

    class ShortHex(original):  # type: ignore[misc, valid-type]
        _workshop_short = True

        def __str__(self) -> str:
            return f"<{len(self._s)} bytes>"

    loader.HexFormatter = ShortHex


@contextlib.contextmanager
def esptool_session(log_path: Path | None, on_progress: Callable[[int, int, str], None] | None = None,
                    cancel: threading.Event | None = None, append: bool = True,
                    abort: threading.Event | None = None) -> Iterator[TextIO]:
    """Within this block, esptool output of the current thread goes to log_path (nowhere if None).

    esptool's logging and progress hooks raise `Cancelled` once `cancel` or `abort` is set.
    """
    _install_logger()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stream: TextIO = log_path.open("a" if append else "w", encoding="utf-8")
    else:
        stream = io.StringIO()
    previous = _current()
    _local.sink = _Sink(stream, on_progress, cancel, abort)
    try:
        yield stream
    finally:
        _local.sink = previous
        stream.close()


# --- chips, connecting, identity ------------------------------------------------------------


def chip_key(esp: Any) -> str:
    """esptool's CHIP_DEFS key for a connected loader (ROM or stub class), from esptool's data."""
    from esptool.targets import CHIP_DEFS

    for key, cls in CHIP_DEFS.items():   # by name: ROM classes subclass each other (C3 is an ESP32ROM)
        if cls.CHIP_NAME == esp.CHIP_NAME:
            return key
    raise DeviceError(f"esptool has no chip definition for {esp.CHIP_NAME}")


def connect(port: str | serial.Serial, connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
            before: str = "default-reset") -> Any:
    """Sync with the ROM bootloader and detect the chip (esptool.cmds.detect_chip).

    `port` is a name (opened here, exclusively) or a port from `open_port` (the caller keeps
    it, e.g. to abort it from another thread). Raises NoAnswer, PortBusy, PortUnavailable.
    """
    from esptool.cmds import detect_chip
    from esptool.util import FatalError

    ser = open_port(port) if isinstance(port, str) else port
    name = port if isinstance(port, str) else ser.name or ser.port
    started = time.monotonic()
    try:
        return detect_chip(ser, ROM_BAUD, before, False, connect_attempts)
    except FatalError as e:
        if isinstance(port, str):
            abort_port(ser)
        text = str(e)
        first = text.splitlines()[0] if text else type(e).__name__
        # esptool's only signal that sync never answered is its message (tested).
        if "Failed to connect" in text:
            raise NoAnswer(f"no answer from a bootloader on {name} after {connect_attempts} attempt(s) "
                           f"({time.monotonic() - started:.1f} s): wrong port, no board, or board held in reset "
                           f"[{first}]") from None
        raise DeviceError(f"{name}: {first}") from None
    except (serial.SerialException, OSError) as e:
        if isinstance(port, str):
            abort_port(ser)
        raise PortUnavailable(f"lost {name} while connecting: {e}") from None
    except BaseException:
        if isinstance(port, str):
            abort_port(ser)
        raise


def format_mac(raw: Sequence[int]) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def read_mac(esp: Any) -> str | None:
    try:
        return format_mac(esp.read_mac())
    except Exception:  # noqa: BLE001 - secure download mode refuses; the MAC is then unknown
        return None


def close(esp: Any) -> None:
    """Close a loader's port (the one we handed it, or its own)."""
    with contextlib.suppress(Exception):
        esp._port.close()


def stub_flasher(esp: Any, version: str) -> Any:
    """esptool's StubFlasher preferring stub `version`, without touching the process-wide choice."""
    from esptool.loader import StubFlasher

    class Chosen(StubFlasher):
        STUB_SUBDIRS = [version] + [s for s in StubFlasher.STUB_SUBDIRS if s != version]
        STUB_VERSION_EXPLICIT = True

    return Chosen(esp)


def stub_size(esp: Any, version: str) -> int:
    """Bytes the stub upload sends (text + data), for its time budget; 0 when unknown."""
    try:
        stub = stub_flasher(esp, version)
        return len(stub.text or b"") + len(stub.data or b"")
    except Exception:  # noqa: BLE001 - budget only
        return 0


def run_stub(esp: Any, version: str) -> Any:
    return esp if esp.IS_STUB else esp.run_stub(stub_flasher(esp, version))


def single_write_attempt(esp: Any) -> None:
    """A lost connection during write_flash raises at once. esptool's own answer is to close the
    port we handed it, sleep, reopen it and upload the stub again, `WRITE_FLASH_ATTEMPTS` (an
    ESPLoader attribute write_flash reads) times, inside our write stage's time box; our retry
    ladder does that, with each stage time-boxed."""
    esp.WRITE_FLASH_ATTEMPTS = 1


def change_baud(esp: Any, baud: int) -> bool:
    """Switch to `baud`; False when the loader cannot (ROM without stub on ESP8266)."""
    from esptool.util import NotImplementedInROMError

    try:
        esp.change_baud(baud)
        return True
    except NotImplementedInROMError:
        return False


def verify(esp: Any, data: list[tuple[int, bytes]], flash_size: str, what: str) -> None:
    """esptool's verify_flash (it applies the same header edits as the write); VerifyFailed if not."""
    from esptool.cmds import verify_flash
    from esptool.util import FatalError, NotImplementedInROMError

    try:
        verify_flash(esp, data, flash_size=flash_size)
    except NotImplementedInROMError:
        raise VerifyFailed(f"{esp.CHIP_NAME} ROM without a stub cannot checksum flash: "
                           "written but not verified") from None
    except FatalError as e:
        if "Verification failed" in str(e):      # esptool's only signal of a mismatch (tested)
            raise VerifyFailed(f"flash content differs from {what} after writing") from None
        raise


def flash_size(esp: Any) -> str | None:
    """The flash chip's size from its JEDEC ID ("4MB"); None when unknown or not attached."""
    from esptool.cmds import detect_flash_size

    try:
        return detect_flash_size(esp)
    except Exception:  # noqa: BLE001 - informative only
        return None


def with_header_flash_size(data: bytes, rom: Any, code: int) -> bytes:
    """data, an image for the chip whose esptool chip class is rom, with the flash size code in
    its header (byte 3, high nibble), as write-flash --flash-size sets it; the SHA-256 the ESP32
    family appends after the image data is recomputed. Bytes that esptool does not read as a valid
    image of the chip come back unchanged. Relies on esptool's image classes (the chip class's
    BOOTLOADER_IMAGE, its verify(), append_digest, data_length, SHA256_DIGEST_LEN)."""
    try:
        with esptool_session(None):     # esptool's warnings about odd segments go nowhere
            image = rom.BOOTLOADER_IMAGE(io.BytesIO(data))
            image.verify()
    except Exception:   # esptool's FatalError, or struct/IO errors: not an image of this chip
        return data
    patched = data[:3] + bytes([(data[3] & 0x0F) | code]) + data[4:]
    if getattr(image, "append_digest", False):
        end = int(image.data_length)
        patched = patched[:end] + hashlib.sha256(patched[:end]).digest() + patched[end + int(image.SHA256_DIGEST_LEN):]
    return patched


def image_chip(data: bytes, expected: str) -> str | None:
    """The chip (CHIP_DEFS key) the image at the start of `data` is built for, as the ROM
    bootloader would read it at its offset: `expected` when it reads as an image of that chip;
    else the chip whose image it reads as; None when esptool reads no image there (not firmware,
    or cut short). Relies on esptool's image classes (`bin_image.LoadFirmwareImage`, the ESP32
    family's extended-header `chip_id`) and each chip class's `IMAGE_CHIP_ID`. An ESP8266 image
    has no chip id (its chip class has none), so an ESP32-family header naming a known chip is the
    stronger evidence: an ESP32-S2 bootloader also happens to read as an ESP8266 image."""
    from esptool.bin_image import LoadFirmwareImage
    from esptool.targets import CHIP_DEFS

    def read(chip: str) -> Any:
        try:
            with esptool_session(None):     # esptool's warnings about odd segments go nowhere
                return LoadFirmwareImage(CHIP_DEFS[chip].CHIP_NAME, data)
        except Exception:   # FatalError, struct/IO errors, RuntimeError (a bad header field)
            return None

    def chip_id(chip: str) -> int | None:
        return getattr(CHIP_DEFS[chip], "IMAGE_CHIP_ID", None)

    with_ids = [chip for chip in CHIP_DEFS if chip_id(chip) is not None]
    # The ESP32 family has one header layout: read as any of its chips, chip_id says which.
    family = read(expected if chip_id(expected) is not None else with_ids[0])
    named = next((chip for chip in with_ids if family is not None and chip_id(chip) == family.chip_id), None)
    if named is not None:
        return named
    return next((chip for chip in (expected, *CHIP_DEFS) if chip_id(chip) is None and read(chip) is not None), None)


def read_identity_fields(esp: Any, flash: bool = True) -> dict[str, Any]:
    """Chip, MAC, description, features (and flash size: needs the stub and attached flash)."""
    from esptool.cmds import detect_flash_size

    features: tuple[str, ...] = ()
    with contextlib.suppress(Exception):
        features = tuple(esp.get_chip_features())
    try:
        description = esp.get_chip_description()
    except Exception:  # noqa: BLE001 - some ROMs in secure download mode refuse; the name is enough
        description = esp.CHIP_NAME
    size = None
    if flash and not esp.secure_download_mode:
        with contextlib.suppress(Exception):
            size = detect_flash_size(esp)
    return dict(chip=chip_key(esp), chip_name=esp.CHIP_NAME, description=description,
                mac=format_mac(esp.read_mac()), flash_size=size, features=features)


__all__ = ["Cancelled", "DeviceError", "NoAnswer", "PORT_BUSY", "PortBusy", "PortUnavailable", "VerifyFailed",
           "abort_port", "change_baud", "chip_key", "close", "connect", "esptool_session", "flash_size", "format_mac",
           "image_chip", "open_port", "port_error", "read_mac", "run_stub", "single_write_attempt", "stub_flasher",
           "stub_size", "verify"]
