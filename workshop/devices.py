"""Find serial ports that look like boards and identify each one (chip, MAC, flash size).

Discovery uses pyserial's port list (USB VID:PID of the usual bridges) and the stable
/dev/serial/by-id links; explicit ports may be device paths or pyserial URLs (socket://,
rfc2217://). Identification talks to the ROM bootloader through esptool's Python API, one
thread per port. Nothing here prints: esptool's own output goes to a per-port log file through
`esptool_session`, and callers get dataclasses back and optional events. esptool itself is
reached only through `workshop.esptool_adapter` (its errors are re-exported here).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import serial
from serial.tools import list_ports

from . import esptool_adapter
from .parallel import results
from .esptool_adapter import (DEFAULT_CONNECT_ATTEMPTS, ROM_BAUD, Cancelled, DeviceError, NoAnswer, PortBusy,
                              PortUnavailable, chip_key, connect, esptool_session, format_mac)

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
# The same bridges as /dev/serial/by-id names them (udev: usb-<vendor>_<model>[_<serial>]-ifNN,
# vendor and model as the chip reports them, or as hex ids): for links whose device pyserial
# cannot describe (a --ports-dir of links to emulators, PTYs). Data, not code.
BY_ID_BRIDGES: tuple[tuple[str, str], ...] = (
    (r"Silicon_Labs|CP210\d|10c4", "CP210x"),
    (r"QinHeng|CH34\d|CH910\d|1a86", "CH34x"),
    (r"FTDI|FT232|FT2232|FT4232|FT231|0403", "FTDI"),
    (r"Espressif|303a", "Espressif USB"),
)


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
    note: str | None = None        # found, but not all of it: why (the flash size, without a stub)

    @property
    def ok(self) -> bool:
        return self.identity is not None

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port.to_dict(), "identity": asdict(self.identity) if self.identity else None,
                "error": self.error, "error_kind": self.error_kind, "note": self.note,
                "seconds": round(self.seconds, 3)}


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


def bridge_from_link(name: str) -> str | None:
    """The known ESP bridge a /dev/serial/by-id style name names ("usb-Silicon_Labs_CP2102..."), or None."""
    if not name.startswith("usb-"):
        return None
    return next((bridge for pattern, bridge in BY_ID_BRIDGES if re.search(pattern, name, re.IGNORECASE)), None)


def usb_ports() -> dict[str, SerialPort]:
    """Every serial port pyserial can describe, by its resolved device path (USB ids, bridge)."""
    links = _by_id_links()
    found = {}
    for info in list_ports.comports():
        port = _from_port_info(info, links)
        found[str(Path(port.device).resolve()) if port.device.startswith("/") else port.device] = port
    return found


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


# --- esptool: through the adapter (workshop.esptool_adapter knows esptool's internals) --------


def read_identity(esp: Any, flash: bool = True) -> Identity:
    """Chip, MAC (and flash size: needs the stub and attached flash) of a connected loader."""
    return Identity(**esptool_adapter.read_identity_fields(esp, flash))


# Time boxes of identify: connect (per sync attempt), then stub start + flash ID together.
IDENTIFY_CONNECT_S = 2.5
IDENTIFY_STUB_S = 4.0


def stub_did_not_start(seconds: float) -> str:
    return (f"flash size unknown: esptool's stub did not start within {seconds:g} s "
            "(flash falls back to the legacy stub)")


def identify(port: SerialPort, log_dir: Path | None = None, connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
             reset_after: bool = True, cancel: threading.Event | None = None, timeout_scale: float = 1.0) -> Device:
    """Connect, read chip/MAC (ROM), then flash size (stub), hard-reset the board into its firmware.

    Time-boxed like a flash (`timeout_scale` stretches both boxes, as flash's --timeout-scale):
    a port that stops answering, or a stub that never starts, is aborted (its port closed);
    chip and MAC read from the ROM before the stub are kept. A set `cancel` (threading.Event:
    Ctrl-C) aborts it the same way, at once.
    """

    from esptool.cmds import attach_flash, reset_chip

    started = time.monotonic()
    log_path = log_dir / f"{log_name(port.device)}.log" if log_dir else None
    found: dict[str, Any] = {}
    abort = threading.Event()
    done = threading.Event()
    ser_box: list[Any] = []
    stub_s = IDENTIFY_STUB_S * timeout_scale
    deadline = [started + (1.0 + IDENTIFY_CONNECT_S * max(1, connect_attempts)) * timeout_scale]

    def body() -> None:
        esp = None
        try:
            with esptool_session(log_path, abort=abort):
                ser = esptool_adapter.open_port(port.device)
                ser_box.append(ser)
                esp = connect(ser, connect_attempts)
                found["identity"] = read_identity(esp, flash=False)
                deadline[0] = time.monotonic() + stub_s
                try:
                    esp = esptool_adapter.run_stub(esp, "2")
                    attach_flash(esp)
                    found["identity"] = read_identity(esp)
                except Exception as e:  # noqa: BLE001 - no stub/flash access: chip and MAC came from the ROM
                    found["note"] = (stub_did_not_start(stub_s) if abort.is_set()
                                     else f"flash size unknown: {type(e).__name__}: {e}")
                if reset_after:
                    with contextlib.suppress(Exception):
                        reset_chip(esp, "hard-reset")
        except BaseException as e:  # noqa: BLE001 - reported below
            found["error"] = e
        finally:
            if ser_box:
                esptool_adapter.abort_port(ser_box[0])
            done.set()

    threading.Thread(target=body, name=f"identify {port.device}", daemon=True).start()
    while not done.wait(0.05):
        if cancel is not None and cancel.is_set():
            found.setdefault("interrupted", True)
        if time.monotonic() > deadline[0] or "interrupted" in found:
            abort.set()
            if ser_box:
                esptool_adapter.abort_port(ser_box[0])
            done.wait(1.0)
            found.setdefault("timeout", True)
            break
    seconds = time.monotonic() - started
    if found.get("interrupted"):      # (before the ROM's chip and MAC: Ctrl-C also aborts the stub)
        return Device(port, error=f"{port.device}: interrupted", error_kind="interrupted", seconds=seconds)
    if "identity" in found:
        note = found.get("note") or (stub_did_not_start(stub_s) if found.get("timeout") else None)
        return Device(port, identity=found["identity"], seconds=seconds, note=note)
    error = found.get("error")
    if isinstance(error, DeviceError):
        return Device(port, error=str(error), error_kind=error.kind, seconds=seconds)
    if found.get("timeout"):
        return Device(port, error=f"{port.device}: no answer within {deadline[0] - started:.1f} s: aborted "
                                  "(a slow hub or an emulated board: --timeout-scale stretches it)",
                      error_kind="timeout", seconds=seconds)
    return Device(port, error=f"{port.device}: {error}", error_kind=DeviceError.kind, seconds=seconds)


def identify_all(ports: Sequence[SerialPort], log_dir: Path | None = None,
                 connect_attempts: int = DEFAULT_CONNECT_ATTEMPTS,
                 on_result: Callable[[Device], None] | None = None,
                 cancel: threading.Event | None = None, timeout_scale: float = 1.0) -> list[Device]:
    """identify() on every port in parallel (one thread per port); results in the ports' order.

    Ctrl-C (KeyboardInterrupt) sets `cancel`: every identify is aborted at once and the results
    come back, the unfinished ones "interrupted"; a caller that passed `cancel` sees it set."""
    if not ports:
        return []
    cancel = cancel or threading.Event()
    with ThreadPoolExecutor(max_workers=len(ports), thread_name_prefix="identify") as pool:
        futures = [pool.submit(identify, p, log_dir, connect_attempts, True, cancel, timeout_scale) for p in ports]
        devices = []
        for device in results(futures, cancel):
            devices.append(device)
            if on_result:
                on_result(device)
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


__all__ = ["BY_ID_BRIDGES", "BY_ID_DIR", "bridge_from_link", "usb_ports", "Cancelled", "DEFAULT_CONNECT_ATTEMPTS", "Device", "DeviceError", "Identity", "NoAnswer",
           "PortBusy", "PortUnavailable", "ROM_BAUD", "SerialPort", "USB_BRIDGES", "chip_key", "connect",
           "discover", "esptool_session", "format_mac", "identify", "identify_all", "list_board_ports",
           "log_name", "read_identity", "resolve_ports", "select_ports"]
