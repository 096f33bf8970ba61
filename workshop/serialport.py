"""Opening a serial port: the one way every part of the kit does it (esptool sessions, the raw REPL).

Exclusively (flock on POSIX, as mpremote does), so a port that Thonny, a terminal or another run
holds is refused as `PortBusy` instead of two programs reading each other's bytes; DTR/RTS low
before opening, because ESP boards wire them to EN/IO0 (no reset, no bootloader on open); errors
by errno, each with what to do.
"""

from __future__ import annotations

import contextlib
import errno

import serial

ROM_BAUD = 115200
PORT_BUSY = ("port busy: held by another program (Thonny, a serial terminal, mpremote, another "
             "invoke run?): close it and try again")


class DeviceError(RuntimeError):
    """A device could not be reached or identified; `kind` is a short stable name."""

    kind = "error"


class PortUnavailable(DeviceError):
    """The port could not be opened (missing, no permission, bad URL)."""

    kind = "port-unavailable"


class PortBusy(PortUnavailable):
    """Another program (a terminal, Thonny, mpremote, another kit) holds the port open."""

    kind = "port-busy"


def open_port(port: str, baudrate: int = ROM_BAUD, timeout: float | None = None,
              write_timeout: float | None = None) -> serial.Serial:
    """Open a device path or pyserial URL exclusively, DTR/RTS low; our errors, by errno.

    Exclusive (flock on POSIX, as mpremote does): a second opener gets `PortBusy` instead of
    reading half of the other program's bytes.
    """
    try:
        ser = serial.serial_for_url(port, do_not_open=True, exclusive=True, baudrate=baudrate, timeout=timeout,
                                    write_timeout=write_timeout)
    except ValueError:
        # URL handlers (socket://, rfc2217://) have no exclusive option: a socket is ours anyway.
        try:
            ser = serial.serial_for_url(port, do_not_open=True, baudrate=baudrate, timeout=timeout,
                                        write_timeout=write_timeout)
        except (ValueError, serial.SerialException) as e:
            raise PortUnavailable(f"{port}: not a usable port: {e}") from None
    except serial.SerialException as e:
        raise PortUnavailable(f"{port}: not a usable port: {e}") from None
    # ESP boards wire DTR/RTS to IO0/EN: both low before open = no reset on open.
    with contextlib.suppress(Exception):
        ser.dtr = False
        ser.rts = False
    try:
        ser.open()
    except serial.SerialException as e:
        raise port_error(port, e) from None
    except OSError as e:
        raise port_error(port, serial.SerialException(e.errno, str(e))) from None
    return ser


def port_error(port: str, e: serial.SerialException) -> PortUnavailable:
    """A pyserial open failure as our exception: busy, missing, forbidden, by errno. Every message
    starts with "<port>: "."""
    code = e.args[0] if e.args and isinstance(e.args[0], int) else getattr(e, "errno", None)
    if code in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EBUSY):
        return PortBusy(f"{port}: {PORT_BUSY}")
    if code == errno.ENOENT:
        return PortUnavailable(f"{port}: cannot open: no such device (unplugged?)")
    if code == errno.EACCES:
        return PortUnavailable(f"{port}: cannot open: permission denied (on Linux: add yourself to the "
                               "dialout group, then log in again)")
    return PortUnavailable(f"{port}: cannot open: {e}")
