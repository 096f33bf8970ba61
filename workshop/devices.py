"""Find serial ports that look like boards and identify each one (chip, MAC, flash size).

Discovery uses pyserial's port list (USB VID:PID of the usual bridges) and the stable
/dev/serial/by-id links; explicit ports may be device paths or pyserial URLs (socket://,
rfc2217://). Identification talks to the ROM bootloader through esptool's Python API, one
thread per port. Nothing here prints: esptool's own output goes to a per-port log file through
`esptool_session`, and callers get dataclasses back and optional events.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import serial
from serial.tools import list_ports

# USB-serial bridges found on ESP boards: (VID, PID) -> name. Data, not code.
USB_BRIDGES: dict[tuple[int, int], str] = {
    (0x10C4, 0xEA60): "CP210x",
    (0x10C4, 0xEA70): "CP2105",
    (0x10C4, 0xEA71): "CP2108",
    (0x1A86, 0x7523): "CH340",
    (0x1A86, 0x7522): "CH340K",
    (0x1A86, 0x5523): "CH341",
    (0x1A86, 0x55D3): "CH343",
    (0x1A86, 0x55D4): "CH9102",
    (0x0403, 0x6001): "FT232R",
    (0x0403, 0x6010): "FT2232",
    (0x0403, 0x6011): "FT4232",
    (0x0403, 0x6014): "FT232H",
    (0x0403, 0x6015): "FT231X",
    (0x303A, 0x1001): "Espressif USB-JTAG/serial",
    (0x303A, 0x0002): "Espressif USB-OTG (ROM)",
    (0x303A, 0x4001): "Espressif USB CDC",
}
BY_ID_DIR = Path("/dev/serial/by-id")
ROM_BAUD = 115200
# Sync attempts before a port counts as "no answer" (each ~0.75 s with esptool's resets).
DEFAULT_CONNECT_ATTEMPTS = 3


class DeviceError(RuntimeError):
    """A device could not be reached or identified; `kind` is a short stable name."""

    kind = "error"


class NoAnswer(DeviceError):
    """Nothing answered the bootloader sync: wrong port, no board, or held in reset."""

    kind = "no-answer"


class PortUnavailable(DeviceError):
    """The port could not be opened (missing, busy, no permission, bad URL)."""

    kind = "port-unavailable"


@dataclass(frozen=True)
class SerialPort:
    """One serial endpoint: a device path or a pyserial URL, with what USB says about it."""

    device: str                      # what to open: /dev/ttyUSB0, socket://host:port, rfc2217://...
    by_id: str | None = None         # stable /dev/serial/by-id/... link, when there is one
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    bridge: str | None = None        # "CP210x", "CH9102", ... from USB_BRIDGES
    description: str | None = None

    @property
    def is_url(self) -> bool:
        return "://" in self.device

    @property
    def usb_id(self) -> str | None:
        return f"{self.vid:04x}:{self.pid:04x}" if self.vid is not None and self.pid is not None else None

    @property
    def name(self) -> str:
        """Short display name: the device path or URL."""
        return self.device

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "usb_id": self.usb_id}


@dataclass(frozen=True)
class Identity:
    """What the bootloader told us about the chip on a port."""

    chip: str                # esptool chip key, e.g. "esp32c3" (CHIP_DEFS key)
    chip_name: str           # esptool display name, e.g. "ESP32-C3"
    description: str         # e.g. "ESP32-C3 (QFN32) (revision v0.4)"
    mac: str                 # aa:bb:cc:dd:ee:ff
    flash_size: str | None   # "4MB", or None when the flash chip ID is unknown
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Device:
    port: SerialPort
    identity: Identity | None = None
    error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.identity is not None

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port.to_dict(), "identity": asdict(self.identity) if self.identity else None,
                "error": self.error, "error_kind": self.error_kind, "seconds": round(self.seconds, 3)}


# --- discovery ------------------------------------------------------------------------------


def _by_id_links(by_id_dir: Path = BY_ID_DIR) -> dict[str, str]:
    """Resolved device path -> its /dev/serial/by-id link."""
    links: dict[str, str] = {}
    if by_id_dir.is_dir():
        for link in sorted(by_id_dir.iterdir()):
            with contextlib.suppress(OSError):
                links[str(link.resolve())] = str(link)
    return links


def _from_port_info(info: Any, links: dict[str, str]) -> SerialPort:
    vid, pid = info.vid, info.pid
    bridge = USB_BRIDGES.get((vid, pid)) if vid is not None and pid is not None else None
    device = info.device
    resolved = str(Path(device).resolve()) if device.startswith("/") else device
    return SerialPort(device=device, by_id=links.get(resolved), vid=vid, pid=pid,
                      serial_number=info.serial_number or None, bridge=bridge,
                      description=info.description if info.description not in (None, "n/a") else None)


def list_board_ports(include_unknown: bool = False) -> list[SerialPort]:
    """Serial ports whose USB VID:PID is a known ESP bridge (all USB serial ports with include_unknown)."""
    links = _by_id_links()
    ports = []
    for info in sorted(list_ports.comports(), key=lambda i: i.device):
        port = _from_port_info(info, links)
        if port.bridge or (include_unknown and port.vid is not None):
            ports.append(port)
    return ports


def resolve_ports(specs: Sequence[str]) -> list[SerialPort]:
    """Explicit --ports: device paths (by-id links too) and pyserial URLs, checked without opening."""
    known = {p.device: p for p in list_board_ports(include_unknown=True)}
    links = _by_id_links()
    ports: list[SerialPort] = []
    seen: set[str] = set()
    for spec in (s.strip() for s in specs):
        if not spec:
            continue
        if "://" in spec:
            try:
                serial.serial_for_url(spec, do_not_open=True)
            except (ValueError, serial.SerialException) as e:
                raise PortUnavailable(f"{spec}: not a usable pyserial URL: {e}") from None
            port = SerialPort(device=spec, description="pyserial URL")
        else:
            path = Path(spec)
            if not path.exists():
                raise PortUnavailable(f"{spec}: no such serial device")
            device = str(path.resolve()) if path.is_symlink() else spec
            port = known.get(device) or SerialPort(device=device, by_id=links.get(str(path.resolve())))
            if path.is_symlink() and port.by_id is None:
                port = SerialPort(**{**asdict(port), "by_id": spec})
        if port.device not in seen:
            seen.add(port.device)
            ports.append(port)
    return ports


def select_ports(specs: Sequence[str] | None = None) -> list[SerialPort]:
    """The ports to work on: the explicit ones, or every port that looks like a board."""
    return resolve_ports(specs) if specs else list_board_ports()


# --- esptool plumbing: per-thread output capture --------------------------------------------


class Cancelled(BaseException):
    """Raised inside a worker (from esptool's logging hooks) when the run was cancelled.

    A BaseException so esptool's `except Exception` retry paths cannot swallow it.
    """


@dataclass
class _Sink:
    log: TextIO
    on_progress: Callable[[int, int, str], None] | None = None
    cancel: threading.Event | None = None

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
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
    """Route esptool's process-wide logger per thread. Idempotent; other threads keep the old one."""
    global _installed
    with _install_lock:
        if _installed:
            return
        import esptool  # noqa: F401  (installs esptool's logger first)
        from esp_pylib.logger import EspLog, log
        from esptool import cmds, reset

        EspLog.instance = _routing_logger(EspLog.instance)
        _skip_untraced_hex_dumps()
        # Two one-shot warnings bind `log.warn` at import time; send them through the proxy.
        for once in (reset.ResetStrategy.print_once, cmds._warn_nand_experimental):
            once.print_callback = lambda text: log.warn(text)
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
                    cancel: threading.Event | None = None, append: bool = True) -> Iterator[TextIO]:
    """Within this block, esptool output of the current thread goes to log_path (nowhere if None)."""
    _install_logger()
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        stream: TextIO = log_path.open("a" if append else "w", encoding="utf-8")
    else:
        import io

        stream = io.StringIO()
    previous = _current()
    _local.sink = _Sink(stream, on_progress, cancel)
    try:
        yield stream
    finally:
        _local.sink = previous
        stream.close()


def chip_key(esp: Any) -> str:
    """esptool's CHIP_DEFS key for a connected loader (ROM or stub class), from esptool's data."""
    from esptool.targets import CHIP_DEFS

    for key, cls in CHIP_DEFS.items():   # by name: ROM classes subclass each other (C3 is an ESP32ROM)
        if cls.CHIP_NAME == esp.CHIP_NAME:
            return key
    raise DeviceError(f"esptool has no chip definition for {esp.CHIP_NAME}")


def connect(port: str, connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS, before: str = "default-reset") -> Any:
    """Open the port, sync with the ROM bootloader and detect the chip (esptool.cmds.detect_chip)."""
    from esptool.util import FatalError

    started = time.monotonic()
    try:
        return _detect(port, connect_attempts, before)
    except FatalError as e:
        text = str(e)
        if "Could not open" in text:
            reason = text.split("\n(", 1)[-1].split(")\n", 1)[0] if "\n(" in text else text
            raise PortUnavailable(f"cannot open {port}: {reason.strip()}") from None
        if "Failed to connect" in text or "No serial data" in text or "Invalid head of packet" in text:
            first = text.splitlines()[0]
            raise NoAnswer(f"no answer from a bootloader on {port} after {connect_attempts} attempt(s) "
                           f"({time.monotonic() - started:.1f} s): wrong port, no board, or board held in reset "
                           f"[{first}]") from None
        raise DeviceError(f"{port}: {text.splitlines()[0]}") from None
    except (serial.SerialException, OSError) as e:
        raise PortUnavailable(f"cannot open {port}: {e}") from None


def _detect(port: str, connect_attempts: int, before: str) -> Any:
    from esptool.cmds import detect_chip

    return detect_chip(port, ROM_BAUD, before, False, connect_attempts)


def format_mac(raw: Sequence[int]) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def read_identity(esp: Any, flash: bool = True) -> Identity:
    """Chip, MAC (and flash size: needs the stub and attached flash) of a connected loader."""
    from esptool.cmds import detect_flash_size

    features: tuple[str, ...] = ()
    with contextlib.suppress(Exception):
        features = tuple(esp.get_chip_features())
    try:
        description = esp.get_chip_description()
    except Exception:  # some ROMs in secure download mode refuse; the name is enough
        description = esp.CHIP_NAME
    size = None
    if flash and not esp.secure_download_mode:
        with contextlib.suppress(Exception):
            size = detect_flash_size(esp)
    return Identity(chip=chip_key(esp), chip_name=esp.CHIP_NAME, description=description,
                    mac=format_mac(esp.read_mac()), flash_size=size, features=features)


def _close(esp: Any) -> None:
    with contextlib.suppress(Exception):
        esp._port.close()


def identify(port: SerialPort, log_dir: Path | None = None, connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
             reset_after: bool = True) -> Device:
    """Connect, read chip/MAC/flash size, hard-reset the board back into its firmware."""
    from esptool.cmds import attach_flash, reset_chip, run_stub

    started = time.monotonic()
    log_path = log_dir / f"{log_name(port.device)}.log" if log_dir else None
    with esptool_session(log_path):
        try:
            esp = connect(port.device, connect_attempts)
        except DeviceError as e:
            return Device(port, error=str(e), error_kind=e.kind, seconds=time.monotonic() - started)
        try:
            try:
                esp = run_stub(esp)
                attach_flash(esp)
                identity = read_identity(esp)
            except Exception:  # no stub/flash access: chip and MAC still come from the ROM
                identity = read_identity(esp, flash=False)
            if reset_after:
                with contextlib.suppress(Exception):
                    reset_chip(esp, "hard-reset")
            return Device(port, identity=identity, seconds=time.monotonic() - started)
        except Exception as e:
            return Device(port, error=f"{port.device}: {e}", error_kind=DeviceError.kind,
                          seconds=time.monotonic() - started)
        finally:
            _close(esp)


def identify_all(ports: Sequence[SerialPort], log_dir: Path | None = None,
                 connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
                 on_result: Callable[[Device], None] | None = None) -> list[Device]:
    """identify() on every port in parallel (one thread per port); results in the ports' order."""
    if not ports:
        return []
    with ThreadPoolExecutor(max_workers=len(ports), thread_name_prefix="identify") as pool:
        futures = [pool.submit(identify, p, log_dir, connect_attempts) for p in ports]
        devices = []
        for f in futures:
            devices.append(f.result())
            if on_result:
                on_result(devices[-1])
    return devices


def discover(specs: Sequence[str] | None = None, identify_chips: bool = False, log_dir: Path | None = None,
             connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS) -> list[Device]:
    """The classroom's first step: every board-like port, optionally identified."""
    ports = select_ports(specs)
    if not identify_chips:
        return [Device(p) for p in ports]
    return identify_all(ports, log_dir, connect_attempts)


def log_name(device: str) -> str:
    """A file name for a port: /dev/ttyUSB0 -> dev_ttyUSB0, socket://127.0.0.1:4000 -> socket_127.0.0.1_4000."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", device).strip("_") or "port"
