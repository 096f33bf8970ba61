"""The station: one pipeline owns one board from plug-in to "ready"; hot-plug mode feeds it boards.

A board's journey (`run_board`): appear -> flash (esptool connects: chip, MAC; the registry gives
its sticker and says whether it is already ready with this image; write, verify; every stage
time-boxed, see workshop.flash) -> boot (the board's port, or the port it re-enumerated as,
found by USB serial number) -> provision (identity, lesson files) -> smoke -> ready. A failure
ends the journey with the stage and the reason. Library code never prints: every step is a
`StationEvent` to `on_event`, and the journey returns a `BoardResult`.

- `run_boards(ports, plan)`: the pipeline on given ports in parallel (`invoke flash --provision`).
- `watch(plan, source)`: hot-plug. Boards that appear in `source` (a folder of device links such
  as /dev/serial/by-id, or pyserial's port list) start a pipeline at once; a board unplugged
  mid-run is reported and the others go on; a board that comes back under another name after its
  reset is followed by its USB serial number; until Ctrl-C or `stop_after` boards are done.

Ctrl-C: `cancel` is set, every flash attempt is aborted at once, every REPL session (provision,
smoke) fails its next read or write, and the run returns within ~2 s with each board's state in
words (`BoardResult.left_as`).

Every port that appears gets a journey or is handed to the journey of the board it is (its
re-enumeration after a reset); none is dropped.
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypedDict

from . import devconfig
from . import flash as _flash
from .devices import SerialPort, bridge_from_link, list_board_ports, log_name, usb_ports
from .flash import FlashEvent, FlashImage, FlashOptions, ImageChoice, Refused, Runner, Stage, State
from .registry import Registry, RegistryError, mac_or_id, normalize_mac

DEFAULT_BOOT_TIMEOUT = 20.0      # a freshly flashed board formats its filesystem on first boot
RESET_WAIT = 120.0               # how long a "press RESET" board is waited for
POLL_S = 0.2                     # hot-plug scan period (detection within ~0.2 s)


class StationError(RuntimeError):
    """A station run cannot start (bad plan or source); the message says what to fix."""


class DuplicateMac(Refused):
    """Another board in this run reports the same MAC (a clone or an emulator)."""

    kind = "duplicate-mac"


# --- ports: where boards appear ---------------------------------------------------------------

_BY_ID = re.compile(r"^usb-(?P<name>.+)_(?P<serial>[^_]+?)-if\d+(-port\d+)?$")


def serial_from_link(name: str) -> str | None:
    """The USB serial number in a /dev/serial/by-id name (usb-<vendor>_<product>_<serial>-if00)."""
    m = _BY_ID.match(name)
    return m.group("serial") if m else None


class PortSource(Protocol):
    def scan(self) -> list[SerialPort]: ...


@dataclass(frozen=True)
class FolderSource:
    """A folder of device nodes or symlinks to them (/dev/serial/by-id; tests use PTY links).

    Known ESP bridges only, as the system's list (unless `all_ports`): a device pyserial can
    describe is judged by its USB VID:PID, any other (a link to an emulator, a PTY) by the
    link's by-id name (`usb-Silicon_Labs_CP2102...`, `usb-Espressif_USB_JTAG...`)."""

    folder: Path
    all_ports: bool = False

    def scan(self) -> list[SerialPort]:
        ports = []
        try:
            entries = sorted(self.folder.iterdir())
        except OSError:
            return []
        usb: dict[str, SerialPort] | None = None
        for entry in entries:
            if entry.name.startswith(".") or entry.name.endswith((".new", ".tmp")):
                continue
            # Link or node first, then its target: the other order raced an unplug. A link removed
            # between resolve() and is_symlink() looked like a device node named after the link,
            # a new "board" whose journey failed as unplugged (and counted towards --stop-after).
            try:
                link = stat.S_ISLNK(os.lstat(entry).st_mode)
                target = entry.resolve(strict=True)
            except OSError:
                continue                  # gone, or a dangling link: the device is gone
            if target.is_dir():
                continue
            if usb is None:
                usb = usb_ports()         # once per scan, only when there is something to judge
            known = usb.get(str(target))
            serial = (known.serial_number if known else None) or (serial_from_link(entry.name) if link else None)
            if known is not None:
                bridge, vid, pid = known.bridge, known.vid, known.pid
            else:
                bridge, vid, pid = bridge_from_link(entry.name), None, None
            if bridge is None and not self.all_ports:
                continue                  # not a known ESP bridge (a modem, a GPS, a random link)
            ports.append(SerialPort(device=str(target) if link else str(entry), by_id=str(entry) if link else None,
                                    vid=vid, pid=pid, serial_number=serial, bridge=bridge,
                                    description=known.description if known else None))
        return ports


@dataclass(frozen=True)
class SystemSource:
    """pyserial's port list: USB bridges known to carry ESP boards (all USB ports with all_ports)."""

    all_ports: bool = False

    def scan(self) -> list[SerialPort]:
        return list_board_ports(include_unknown=self.all_ports)


@dataclass(frozen=True)
class FixedSource:
    """Explicit --ports (present while their path exists), plus the system's list for successors."""

    ports: tuple[SerialPort, ...]

    def scan(self) -> list[SerialPort]:
        present = [p for p in self.ports if p.is_url or os.path.exists(p.device)]
        known = {p.device for p in present}
        return present + [p for p in list_board_ports() if p.device not in known]


def default_source(ports_dir: Path | None = None, all_ports: bool = False) -> PortSource:
    if ports_dir is not None:
        if not ports_dir.is_dir():
            raise StationError(f"{ports_dir}: no such folder to watch for boards")
        return FolderSource(ports_dir, all_ports)
    return SystemSource(all_ports)


def _port_key(p: SerialPort) -> tuple[str, str | None]:
    return (p.device, p.by_id)


class PortTracker:
    """What is plugged in now; hands re-enumerated boards to the pipeline waiting for them."""

    def __init__(self, source: PortSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self.present: dict[tuple[str, str | None], SerialPort] = {}
        self._waiting: dict[str, tuple[str | None, threading.Event, list[SerialPort]]] = {}
        self._claims: dict[str, str] = {}             # mac -> the port of the board that has it
        self._owned: dict[str, str] = {}              # USB serial -> the journey (key) that has that board
        self._parked: dict[str, SerialPort] = {}      # its board's new port, before the journey asked
        self._returned: list[SerialPort] = []         # taken for a board it turned out not to be
        self._lingering: dict[str, float] = {}        # USB serial -> until when it is a finished board's
        self._hostnames: dict[str, str] = {}          # hostname -> the MAC it was given to in this run

    # Serial "" stands for "a board without a serial number, just reset": the next port without
    # one that appears is taken to be it (such boards cannot be told apart by their port).
    def own(self, serial: str | None, key: str) -> None:
        if serial is not None:
            with self._lock:
                self._owned[serial] = key

    def disown(self, serial: str | None, key: str, linger: float = 0.0,
               its_port: tuple[str, str | None] | None = None) -> None:
        """The journey no longer waits for its board: a port parked for it (a board it did not need)
        is handed back, to get its own journey.

        `linger`: the journey ended right after resetting its board, and a native-USB board
        re-enumerates after that: its next appearance under `serial` within `linger` s is that
        board, finished, not a new board (else each journey's reset would start the next one).
        `its_port`: the (node, link) its board ended ready on; a port parked that is that one is
        its board, back there after a reset (a lone native-USB board gets the same ttyACM0),
        not a new board (each such journey started the next, flashing the board again and again).
        """
        if serial is not None:
            with self._lock:
                if self._owned.get(serial) == key:
                    del self._owned[serial]
                    parked = self._parked.pop(serial, None)
                    if parked is not None and its_port is not None and _port_key(parked) == its_port:
                        return
                    if linger > 0 and serial:
                        if parked is None:                    # (a parked port is that re-enumeration)
                            self._lingering[serial] = time.monotonic() + linger
                    elif parked is not None:
                        self._returned.append(parked)

    def refresh(self) -> tuple[list[SerialPort], list[SerialPort]]:
        """Scan once: (appeared, vanished)."""
        now = {_port_key(p): p for p in self.source.scan()}
        with self._lock:
            # udev makes a node's by-id link a moment after the node: the same node and USB serial
            # seen first without its link is the same port, named now (not an unplug and a new board).
            named = {k for k, p in now.items() if k not in self.present and p.by_id is not None
                     and (old := self.present.get((p.device, None))) is not None
                     and (p.device, None) not in now and old.serial_number == p.serial_number}
            appeared = [p for k, p in now.items() if k not in self.present and k not in named]
            vanished = [p for k, p in self.present.items() if k not in now
                        and not (k[1] is None and any(n[0] == k[0] for n in named))]
            self.present = now
            # A port parked for a journey and gone again is no port of its board any more (one
            # named meanwhile is kept, under its name); a MAC's claim ends when its node goes (the
            # node number may be another board's next).
            renamed: dict[tuple[str, str | None], SerialPort] = {(p.device, None): p for k, p in now.items()
                                                                 if k in named}
            for serial, p in list(self._parked.items()):
                if _port_key(p) in renamed:
                    self._parked[serial] = renamed[_port_key(p)]
                elif _port_key(p) not in now:
                    del self._parked[serial]
            nodes = {p.device for p in now.values()}
            for mac, device in list(self._claims.items()):
                if any(p.device == device for p in vanished) and device not in nodes:
                    del self._claims[mac]
        return appeared, vanished

    def _another_board(self, port: SerialPort) -> bool:
        """Another port with this USB serial is plugged in: `port` is a second board sharing the
        serial (CP2102 clones all say 0001), not the re-enumeration of the first. (Lock held.)"""
        return bool(port.serial_number) and any(
            q.serial_number == port.serial_number and _port_key(q) != _port_key(port) for q in self.present.values())

    def is_present(self, port: SerialPort) -> bool:
        if port.is_url:
            return True
        if port.by_id is not None:
            # The link must still lead to that device: a re-enumerated board's link is moved to its
            # new node, and the old node's name may already be another device's (pts numbers are reused).
            return os.path.realpath(port.by_id) == os.path.realpath(port.device) and os.path.exists(port.device)
        return os.path.exists(port.device)

    def offer(self, port: SerialPort) -> str | None:
        """A port appeared: how a journey takes it ("waited": its board, back after a reset;
        "parked": its journey will ask for it; "finished": a finished board back after its last
        reset), or None: it is a new board."""
        with self._lock:
            if self._another_board(port):
                return None
            until = self._lingering.pop(port.serial_number, None) if port.serial_number else None
            if until is not None and time.monotonic() < until:
                return "finished"
            for key, (serial, event, box) in self._waiting.items():
                if event.is_set():
                    continue
                if (serial and port.serial_number == serial) or (not serial and port.serial_number is None):
                    box.append(port)
                    event.set()
                    return "waited"
            owner = port.serial_number or ""
            if owner in self._owned and owner not in self._parked:
                self._parked[owner] = port
                return "parked"
        return None

    def wait_for(self, key: str, serial: str | None, timeout: float, cancel: threading.Event,
                 poll: Callable[[], None] | None = None) -> SerialPort | None:
        event, box = threading.Event(), list[SerialPort]()
        with self._lock:
            parked = self._parked.pop(serial or "", None)
            if parked is not None:
                return parked
            self._waiting[key] = (serial, event, box)
        try:
            deadline = time.monotonic() + timeout
            while not event.is_set() and time.monotonic() < deadline and not cancel.is_set():
                if poll is not None:
                    poll()
                event.wait(POLL_S)
        finally:
            with self._lock:
                self._waiting.pop(key, None)
        return box[0] if box else None          # read once the waiter is gone: offer() can no longer fill it

    def hand_back(self, port: SerialPort) -> None:
        """A port a journey took for its board held another board: that board gets its own journey."""
        with self._lock:
            self._returned.append(port)

    def has_returned(self) -> bool:
        with self._lock:
            return bool(self._returned)

    def take_returned(self) -> list[SerialPort]:
        with self._lock:
            out, self._returned = self._returned, []
        return out

    def claim(self, mac: str, port: str) -> str | None:
        """Note that `mac` is on `port`; the other port if another board in the run has it there.

        A claim lasts as long as its port exists, not as long as its journey: a board that finished
        first (ready, still plugged in) keeps its MAC, so a clone on another port is refused however
        late it gets this far; the same board plugged in again elsewhere is itself (its old port is gone).
        """
        with self._lock:
            other = self._claims.get(mac)
            if other is not None and other != port and self.is_present(SerialPort(other)):
                return other
            self._claims[mac] = port
            return None

    def reserve_hostname(self, hostname: str, mac: str) -> str | None:
        """Give `hostname` to `mac` for this run; the other board's MAC if one already has it.

        One lock for every journey: checking the registry alone raced, because a name is only
        recorded there after its board was provisioned (two {mac4} twins got the same name).
        """
        mac = _mac_key(mac)
        with self._lock:
            holder = self._hostnames.setdefault(hostname.lower(), mac)
        return None if holder == mac else holder

    def free_hostname(self, hostname: str, mac: str) -> None:
        """A board that failed provisioning gives its name back (its replacement may take it)."""
        with self._lock:
            if self._hostnames.get(hostname.lower()) == _mac_key(mac):
                del self._hostnames[hostname.lower()]


# --- plan, events, results ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What the station does to every board."""

    images: ImageChoice
    flash_options: FlashOptions = FlashOptions()
    provision: Any = None                   # workshop.provision.ProvisionConfig, or None: no provisioning
    files: Path | None = None               # lesson files (provision --files)
    prune: bool = False                     # with files: remove an earlier lesson's files (provision --prune)
    smoke: bool = False
    network: Any = None                     # workshop.smoke.NetworkOptions for smoke --network
    registry: Registry | None = None
    reflash: bool = False                   # flash even a board the registry knows as ready with this image
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT
    settle: float = 0.2                     # after the reset: a native-USB board has vanished by then
    repl_baud: int = 115200
    repl_timeout: float = 10.0
    reset_probe: float = 2.0                # a board that may stay in download mode: its REPL's time to answer
    reset_wait: float = RESET_WAIT          # how long a board that needs RESET pressed is waited for
    log_dir: Path | None = None
    expected: Callable[[FlashImage], Any] | None = None   # smoke expectations for an image (default: its build)


class Budgets(TypedDict, total=False):
    """The Plan's time budgets a person may set (a slow REPL, a board that needs RESET), in seconds."""

    boot_timeout: float
    repl_timeout: float
    reset_probe: float
    reset_wait: float


BUDGETS = tuple(Budgets.__annotations__)


def budgets(**given: str | float | None) -> Budgets:
    """The Plan fields for the budgets given (None: Plan's default), each a number of seconds > 0;
    raises StationError naming the option otherwise."""
    out = Budgets()
    for name, value in given.items():
        if name not in BUDGETS:
            raise TypeError(f"no such budget: {name}")
        if value is None:
            continue
        try:
            seconds = devconfig.seconds(value, "--" + name.replace("_", "-"))
        except devconfig.DevConfigError as e:
            raise StationError(str(e)) from None
        out[name] = seconds  # type: ignore[literal-required]  # name is one of BUDGETS, checked above
    return out


def _mac_key(mac: str) -> str:
    """One spelling per board id: a MAC normalized, anything else lowercased."""
    return mac_or_id(mac).lower()


@dataclass(frozen=True)
class StationEvent:
    key: str                      # the board in this run: the port it first appeared on
    port: str                     # the port it is on now
    stage: str                    # appeared, flash stages (connecting, stub, writing...), booting, provisioning...
    message: str = ""
    percent: float | None = None
    chip: str | None = None
    mac: str | None = None
    hostname: str | None = None
    sticker: int | None = None
    elapsed: float = 0.0
    final: bool = False           # the journey ended (ready, failed, interrupted, unplugged)
    ok: bool | None = None

    @property
    def state(self) -> str:
        """The journey's state as its BoardResult will say it: "in progress" until its last event,
        whose stage is how it ended (ready, failed, interrupted, unplugged)."""
        return self.stage if self.final else "in progress"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class BoardResult:
    key: str
    port: str
    state: str = "in progress"     # ready, failed, interrupted, unplugged
    stage: str = "appeared"        # where the journey ended
    reason: str | None = None
    chip: str | None = None
    mac: str | None = None
    usb_serial: str | None = None
    hostname: str | None = None
    sticker: int | None = None
    board: str | None = None
    recognized: str | None = None  # "lab-07, already ready with this image"
    seconds: float = 0.0
    flash: _flash.DeviceResult | None = None
    provision: Any = None          # workshop.provision.ProvisionResult
    smoke: Any = None              # workshop.smoke.DeviceReport

    @property
    def ok(self) -> bool:
        return self.state == "ready"

    @property
    def left_as(self) -> str:
        """The board's state in words, for the person at the table."""
        if self.ok:
            return "ready: unplug me"
        written = self.flash is not None and self.flash.left_as == "partially written: flash again"
        if self.flash is not None and self.flash.verified:
            return f"{self.state} during {self.stage}: flashed and verified, run it again to finish"
        if written:
            return f"{self.state} during {self.stage}: reflash before use"
        return f"{self.state} during {self.stage}: untouched"

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("key", "port", "state", "stage", "reason", "chip", "mac", "usb_serial",
                                           "hostname", "sticker", "board", "recognized")}
        d.update(ok=self.ok, left_as=self.left_as, seconds=round(self.seconds, 3),
                 flash=self.flash.to_dict() if self.flash else None,
                 provision=self.provision.to_dict() if self.provision is not None else None,
                 smoke=self.smoke.to_dict() if self.smoke is not None else None)
        return d


@dataclass
class StationReport:
    results: list[BoardResult]
    started_at: str
    seconds: float
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.interrupted and all(r.ok for r in self.results)

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.state] = out.get(r.state, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "interrupted": self.interrupted, "started_at": self.started_at,
                "seconds": round(self.seconds, 3), "boards": [r.to_dict() for r in self.results]}


EventHandler = Callable[[StationEvent], None]


def expected_for(image: FlashImage) -> Any:
    """Smoke expectations for what was flashed: its build.json, its release index, or its board file."""
    from . import smoke
    from .config import ConfigError, get_board

    if image.build_dir is not None:
        return smoke.Expected.from_build(image.build_dir)
    if image.release is not None:
        return smoke.Expected.from_release_index(smoke.release_index(image.release), image.board)
    try:
        return smoke.Expected.for_board(get_board(image.board))
    except ConfigError:
        raise smoke.SmokeError(f"{image.source}: a raw image has no build facts to smoke against "
                               "(use --board or --release)") from None


# --- one board ---------------------------------------------------------------------------------


class _Journey:
    def __init__(self, port: SerialPort, plan: Plan, tracker: PortTracker, emit: EventHandler,
                 cancel: threading.Event, log_dir: Path) -> None:
        self.port, self.plan, self.tracker, self.emit_cb, self.cancel = port, plan, tracker, emit, cancel
        self.log_dir = log_dir
        self.t0 = time.monotonic()
        self.result = BoardResult(key=port.by_id or port.device, port=port.device, usb_serial=port.serial_number)
        self.followed: SerialPort | None = None    # the port follow() took to be this board's
        self.stranger = False                      # ...and another board (another MAC) answered there
        self.linger = 0.0                          # ended right after its reset: see PortTracker.disown

    def emit(self, stage: str, message: str = "", percent: float | None = None, final: bool = False,
             ok: bool | None = None) -> None:
        r = self.result
        if not final:
            r.stage = stage
        self.emit_cb(StationEvent(r.key, r.port, stage, message, percent, r.chip, r.mac, r.hostname, r.sticker,
                                  round(time.monotonic() - self.t0, 3), final, ok))

    def finish(self, state: str, reason: str | None = None) -> BoardResult:
        r = self.result
        r.state, r.reason, r.seconds = state, reason, time.monotonic() - self.t0
        if state != "ready" and self.plan.registry is not None and r.mac and state != "duplicate":
            try:
                self.plan.registry.record_event(r.mac, r.stage, False, reason, r.port)
            except Exception:  # noqa: BLE001 - the journey's result stands without its history line
                pass
        words = {"ready": f"ready{': ' + r.recognized if r.recognized else ''}: unplug me"}.get(state) or \
            f"{state} at {r.stage}: {reason}"
        self.emit(state, words, final=True, ok=state == "ready")
        return r

    def session(self, port: str, **options: Any) -> Any:
        """A ReplSession on `port` that Ctrl-C (`cancel`) ends within one read (a session_factory)."""
        from .repl import ReplSession

        options.setdefault("baudrate", self.plan.repl_baud)
        options.setdefault("connect_option", "--boot-timeout")    # the station's name for that budget
        return ReplSession(port, cancel=self.cancel, **options)

    def _gone(self) -> bool:
        return not self.tracker.is_present(SerialPort(self.result.port, by_id=self.port.by_id
                                                      if self.result.port == self.port.device else None))

    def gate(self, flashed: _flash.DeviceResult) -> str | None:
        r, plan = self.result, self.plan
        r.chip, r.mac, r.board = flashed.chip, flashed.mac, flashed.board
        if r.mac is None:
            return None
        other = self.tracker.claim(r.mac, self.port.device)
        if other is not None:
            if plan.registry is not None:
                # The MAC's record may not exist yet: the board that claimed it first records
                # itself only after its claim (see() is idempotent, so either order is one record).
                plan.registry.see(r.mac, chip=r.chip)
                plan.registry.record_event(r.mac, "duplicate", False, f"also on {self.port.device}", other)
            raise DuplicateMac(f"MAC {r.mac} already seen on {other} (a clone or an emulator?): not flashed, "
                               "not merged with that board")
        if plan.registry is None:
            return None
        rec = plan.registry.see(r.mac, chip=r.chip, port=self.port.device,
                                usb_serial=self.port.serial_number, usb_id=self.port.usb_id)
        r.sticker, r.hostname = rec.sticker, rec.hostname
        image = _flash._pick(plan.images, flashed.chip) if flashed.chip else None
        if (not plan.reflash and image is not None and rec.ready and rec.board == image.board
                and rec.inputs == image.identity):
            r.recognized = f"{rec.hostname or 'sticker ' + str(rec.sticker)}, already ready with this image"
            return r.recognized
        plan.registry.record_flash_started(r.mac)
        return None

    def on_flash(self, e: FlashEvent) -> None:
        self.result.chip = e.chip or self.result.chip
        self.result.mac = e.mac or self.result.mac
        if e.stage in (Stage.DONE, Stage.FAILED, Stage.INTERRUPTED):
            return
        self.emit(e.stage.value, e.message, e.percent if e.bytes_total else None)

    def run(self) -> BoardResult:
        try:
            return self._run()
        except Exception as e:  # noqa: BLE001 - one board's surprise is its failure, never the run's
            return self.finish("failed", f"{type(e).__name__}: {e}")

    def _run(self) -> BoardResult:
        r = self.result
        self.tracker.own(self.port.serial_number, r.key)
        try:
            return self._journey()
        finally:
            # A ready board answered on its port to the end: a port parked for it that is that
            # same port (a native-USB board back on the same node after a reset) is this board.
            here = _port_key(self.followed or self.port) if r.state == "ready" else None
            self.tracker.disown(self.port.serial_number, r.key, self.linger, here)
            self.tracker.disown("", r.key)

    def _journey(self) -> BoardResult:
        plan, r = self.plan, self.result
        self.emit("appeared", self.port.by_id or self.port.device)
        log = self.log_dir / f"{log_name(self.port.device)}.log"
        flashed = _flash.flash_device(self.port, plan.images, plan.flash_options, self.on_flash, log, self.cancel,
                                      self.gate)
        r.flash = flashed
        r.chip, r.mac = flashed.chip or r.chip, flashed.mac or r.mac
        if flashed.error_kind == DuplicateMac.kind:
            return self.finish("failed", flashed.error)      # (that MAC's record is the other board's)
        if flashed.state is not State.SKIPPED and plan.registry is not None and r.mac:
            # Interrupted too: a half-written board must not stay "ready" in the registry.
            image = _flash._pick(plan.images, flashed.chip) if flashed.chip and flashed.board else None
            plan.registry.record_flash(r.mac, ok=flashed.ok, board=flashed.board,
                                       image=image.source if image else None,
                                       release=image.release if image else None,
                                       inputs=image.identity if image and flashed.ok else None,
                                       detail=flashed.error or "verified", port=r.port,
                                       flash_size=flashed.flash_size)
        if flashed.state is State.INTERRUPTED or (self.cancel.is_set() and not flashed.ok):
            return self.finish("interrupted", flashed.error or "interrupted")
        if flashed.state is not State.SKIPPED:
            if not flashed.ok:
                if flashed.error_kind == "unplugged" or self._gone():
                    return self.finish("unplugged", f"unplugged during {flashed.stage.value} ({flashed.error})")
                stage, error = flashed.stage.value, flashed.error or ""
                # (a retried flash's error names its first attempt's stage: said once when it is this one)
                return self.finish("failed", error if error.startswith(f"{stage}: ") else f"{stage}: {error}")
        else:
            r.recognized = r.recognized or flashed.error
        if r.recognized:
            self.emit("recognized", r.recognized)
            self.linger = plan.boot_timeout           # (the flash's hard reset was its last)
            return self.finish("ready")
        if plan.provision is None and plan.files is None and not plan.smoke:
            if plan.registry is not None and r.mac:
                plan.registry.record_ready(r.mac, "flashed and verified", r.port)
            self.linger = plan.boot_timeout
            return self.finish("ready")
        if not self.port.serial_number:
            self.tracker.own("", r.key)          # from its reset on, a new serial-less port may be it
        port = self.boot()
        if port is not None and port == self.port.device and self._needs_manual_reset():
            port = self.await_reset(port)
            if port is None and not self.cancel.is_set():
                return self.finish("failed", f"RESET was not pressed within {plan.reset_wait:g} s: the board is "
                                   "still in download mode (flashed and verified)")
        if self.cancel.is_set():
            return self.finish("interrupted", "interrupted")
        self.tracker.disown("", r.key)           # its board is found (or lost): a new serial-less port is not it
        if port is None:
            return self.finish("failed", f"the board did not come back after its reset within "
                               f"{plan.boot_timeout if self.port.serial_number else plan.reset_wait:g} s")
        if plan.provision is not None or plan.files is not None:
            ok = self.provision(port)
            if self.cancel.is_set():
                return self.finish("interrupted", "interrupted")
            if self.stranger:
                result = self.finish("failed", self.result.reason)
                if self.followed is not None:
                    self.tracker.hand_back(self.followed)     # after finish: its port is free now
                return result
            if not ok and self._vanishing():
                # It re-enumerated after we looked (late USB reset): follow it and try once more.
                port = self.follow(late=True) or ""
                if not port:
                    self.result.stage = "provisioning"    # not back: it was unplugged while provisioning
                ok = bool(port) and self.provision(port)
            if not ok:
                return self.finish("unplugged" if self._gone() else "failed", self.result.reason)
        if plan.smoke:
            ok = self.smoke(port)
            if self.cancel.is_set():
                return self.finish("interrupted", "interrupted")
            if not ok:
                return self.finish("unplugged" if self._gone() else "failed", self.result.reason)
        if self.cancel.is_set():
            return self.finish("interrupted", "interrupted")
        if plan.registry is not None and r.mac:
            plan.registry.record_ready(r.mac, "ready", r.port)
        return self.finish("ready")

    def _vanishing(self, within: float = 1.0) -> bool:
        """After a lost connection: is the board's port going away (a late re-enumeration)?"""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self.cancel.is_set():
            if not self.tracker.is_present(self.port):
                return True
            time.sleep(0.05)
        return False

    def boot(self) -> str | None:
        """The port MicroPython answers on after the reset: the same one, or its re-enumerated successor."""
        plan = self.plan
        self.emit("booting", "waiting for MicroPython")
        settle_by = time.monotonic() + plan.settle
        while time.monotonic() < settle_by and not self.cancel.is_set():
            time.sleep(0.05)
        if self.cancel.is_set():
            return None
        if self.tracker.is_present(self.port):
            return self.port.device
        return self.follow()

    def _needs_manual_reset(self) -> bool:
        """Board data (boards/*.toml manual_reset_after_flash): does its ROM stay in download mode?"""
        from .config import ConfigError, get_board

        try:
            image = _flash._pick(self.plan.images, self.result.chip) if self.result.chip else None
            return image is not None and get_board(image.board).manual_reset_after_flash
        except (ConfigError, _flash.DeviceError, _flash.FlashError):
            return False                          # a raw --image: no board facts, nothing to ask for

    def _answers(self, port: str) -> bool:
        """Does MicroPython's raw REPL answer on `port` within plan.reset_probe?"""
        from .repl import ReplError

        try:
            with self.session(port, baudrate=self.plan.repl_baud, connect_timeout=self.plan.reset_probe):
                return True                       # (entering the raw REPL is what `with` does)
        except (ReplError, OSError):
            return False

    def await_reset(self, port: str) -> str | None:
        """A board still on its port whose ROM may have stayed in download mode: if its REPL does not
        answer, ask for RESET and wait until it answers there, or vanishes and comes back."""
        if self._answers(port):
            return port
        name = self.port.by_id or self.port.device
        self.emit("booting", f"press RESET on {name}")
        deadline = time.monotonic() + self.plan.reset_wait
        while time.monotonic() < deadline and not self.cancel.is_set():
            if not self.tracker.is_present(self.port):
                return self.follow()              # RESET re-enumerates a native-USB board
            if self._answers(port):
                self.emit("booting", f"MicroPython answers on {name}")
                return port
            time.sleep(0.1)
        return None

    def follow(self, late: bool = False) -> str | None:
        """Wait for the board's new port (same USB serial), or for a manual reset when it has none.

        `late`: it vanished after MicroPython had answered, so its reset is behind it: a board
        without a serial number is waited for as long as a re-enumeration takes, not reset_wait.
        """
        plan, r = self.plan, self.result
        serial = self.port.serial_number
        wait = plan.boot_timeout if serial or late else plan.reset_wait
        if serial:
            self.emit("booting", f"re-enumerating: following USB serial {serial}")
        elif late:
            self.emit("booting", f"the port vanished: waiting up to {wait:g} s for it to come back")
        else:
            self.emit("booting", f"press RESET on {self.port.by_id or self.port.device}")
        found = self.tracker.wait_for(r.key, serial, wait, self.cancel)
        if found is None:
            return None
        r.port = found.device
        self.followed = found
        self.emit("booting", f"back on {found.by_id or found.device}")
        return found.device

    def provision(self, port: str) -> bool:
        from .provision import DeviceIdentity, ProvisionConfig, ProvisionError, pattern_fields, provision_all

        plan, r = self.plan, self.result
        self.emit("provisioning", "identity" + (" and lesson files" if plan.files else ""))
        sticker = r.sticker

        def index_of(_port: str, _mac: str) -> int:
            if sticker is not None:
                return sticker
            pattern = getattr(plan.provision, "hostname", None) or ""
            if "index" in pattern_fields(pattern):    # (_check_plan refuses it without a registry)
                raise ProvisionError("{index} is the registry's sticker number: this board has none")
            return 0                                    # unused: the pattern has no {index}

        def vet(port: str, ident: DeviceIdentity, hostname: str | None) -> None:
            """Before anything is written: the right board, and a name no other board holds."""
            if r.mac and ident.mac_source != "cwd" and len(ident.mac) == 12 and normalize_mac(ident.mac) != r.mac:
                # (The unix port has no MAC, and an ESP8266's unique_id is its chip id, not a MAC.)
                self.stranger = True
                raise ProvisionError(f"another board answered on {port}: MAC {normalize_mac(ident.mac)}, "
                                     f"expected {r.mac}: not provisioned with this board's identity")
            if plan.registry is not None and r.mac:
                check_hostname_free(plan.registry, hostname, r.mac)
            holder = self.tracker.reserve_hostname(hostname, r.mac or ident.mac) if hostname else None
            if holder is not None:
                raise ProvisionError(f"hostname {hostname!r} is already board {holder}'s in this run: use "
                                     "{mac6}, {mac} or {index} in the pattern")
            if hostname:
                reserved.append((hostname, r.mac or ident.mac))

        reserved: list[tuple[str, str]] = []

        [p] = provision_all([port], plan.provision or ProvisionConfig(), files=plan.files, prune=plan.prune,
                            index_of=index_of,
                            connect_timeout=plan.boot_timeout, timeout=plan.repl_timeout, baudrate=plan.repl_baud,
                            vet=vet, cancel=self.cancel, session_factory=self.session)   # (names --boot-timeout)
        r.provision = p
        if not p.ok:
            for name, mac in reserved:
                self.tracker.free_hostname(name, mac)
        if self.cancel.is_set():
            return False                                # interrupted: nothing to record, the journey says so
        r.hostname = p.hostname or r.hostname
        if plan.registry is not None and r.mac:
            plan.registry.record_provision(r.mac, ok=p.ok, hostname=p.hostname,
                                           detail=p.error or "written and verified", port=port)
        if not p.ok:
            r.reason = f"provision {p.stage}: {p.error}"
        return bool(p.ok)

    def smoke(self, port: str) -> bool:
        from . import smoke as _smoke

        plan, r = self.plan, self.result
        self.emit("smoking", "firmware, frozen stack, heap, flash, config")
        try:
            image = _flash._pick(plan.images, r.chip) if r.chip else None
            if image is None:
                raise _smoke.SmokeError("no image known for this board")
            expected = (plan.expected or expected_for)(image)
        except _smoke.SmokeError as e:
            r.reason = f"smoke: {e}"
            return False
        # --boot-timeout, as its message says: a slow board that just answered provisioning can
        # still take longer than a fixed 3 s to give its REPL again.
        report = _smoke.smoke_device(port, expected, network=plan.network, timeout=plan.repl_timeout,
                                     connect_timeout=plan.boot_timeout, baudrate=plan.repl_baud,
                                     session_factory=self.session,
                                     timeout_option="--repl-timeout")
        r.smoke = report
        if self.cancel.is_set():
            return False
        detail = "all checks passed" if report.ok else "; ".join(f"{c.name}: {c.detail}" for c in report.failed)
        if plan.registry is not None and r.mac:
            plan.registry.record_smoke(r.mac, ok=report.ok, detail=detail, port=port)
        if not report.ok:
            r.reason = f"smoke: {detail}"
        return bool(report.ok)


def default_log_dir() -> Path:
    from .config import PROJECT_ROOT

    return PROJECT_ROOT / "logs" / "station" / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_board(port: SerialPort | str, plan: Plan, *, on_event: EventHandler | None = None,
              cancel: threading.Event | None = None, tracker: PortTracker | None = None,
              log_dir: Path | None = None) -> BoardResult:
    """One board's whole journey in the calling thread; its result (never raises for the board's faults)."""
    target = port if isinstance(port, SerialPort) else SerialPort(port)
    _check_plan(plan)
    tracker = tracker or PortTracker(FixedSource((target,)))
    return _Journey(target, plan, tracker, on_event or (lambda e: None), cancel or threading.Event(),
                    log_dir or plan.log_dir or default_log_dir()).run()


def _check_plan(plan: Plan) -> None:
    """Refuse a plan that would go wrong on every board, before any board is touched."""
    from .provision import pattern_fields

    pattern = getattr(plan.provision, "hostname", None)
    if pattern and plan.registry is None and "index" in pattern_fields(pattern):
        raise StationError(f"hostname pattern {pattern!r} uses {{index}}, each board's sticker number, which "
                           "only the registry assigns: pass --registry workshop.db (or use {mac4} / {mac6})")


def _locked(on_event: EventHandler | None) -> EventHandler:
    lock = threading.Lock()

    def emit(e: StationEvent) -> None:
        if on_event is not None:
            with lock:
                on_event(e)
    return emit


def run_boards(ports: Sequence[SerialPort | str], plan: Plan, *, on_event: EventHandler | None = None,
               cancel: threading.Event | None = None) -> StationReport:
    """The pipeline on every given port in parallel (`flash --provision`); one result per port, in order."""
    targets = [p if isinstance(p, SerialPort) else SerialPort(p) for p in ports]
    if not targets:
        raise StationError("no serial ports: plug boards in, or pass --ports")
    if len({t.device for t in targets}) != len(targets):
        raise StationError("a port is listed twice")
    _check_plan(plan)
    if plan.provision is not None:
        from .provision import ProvisionError, check_hostnames

        try:
            check_hostnames(plan.provision.hostname, len(targets))
        except ProvisionError as e:
            raise StationError(str(e)) from None
    cancel = cancel or threading.Event()
    emit = _locked(on_event)
    tracker = PortTracker(FixedSource(tuple(targets)))
    tracker.refresh()
    log_dir = plan.log_dir or default_log_dir()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    journeys = [_Journey(t, plan, tracker, emit, cancel, log_dir) for t in targets]
    stop = threading.Event()

    def scan() -> None:     # successors of re-enumerating boards
        while not stop.is_set():
            appeared, _ = tracker.refresh()
            for p in appeared:
                tracker.offer(p)
            stop.wait(POLL_S)

    Runner(scan, "station scan")       # ends when `stop` is set below
    runners = [Runner(j.run, f"station {j.port.device}") for j in journeys]
    interrupted = _flash.wait_threads(runners, cancel)
    stop.set()              # the scanner ends within one poll (a daemon thread: never joined, see Runner)
    return StationReport([_settled(j) for j in journeys], started_at, time.monotonic() - t0,
                         interrupted or cancel.is_set())


def _settled(j: _Journey) -> BoardResult:
    """A journey still running after Ctrl-C's grace: interrupted where it was."""
    r = j.result
    if r.state == "in progress":
        r.state, r.reason, r.seconds = "interrupted", f"interrupted during {r.stage}", time.monotonic() - j.t0
    return r


def watch(plan: Plan, source: PortSource, *, on_event: EventHandler | None = None,
          cancel: threading.Event | None = None, stop_after: int | None = None,
          poll: float = POLL_S) -> StationReport:
    """Hot-plug: every board that appears in `source` goes through the pipeline, until Ctrl-C
    (or until `stop_after` boards have finished, ready or not)."""
    _check_plan(plan)
    cancel = cancel or threading.Event()
    emit = _locked(on_event)
    tracker = PortTracker(source)
    log_dir = plan.log_dir or default_log_dir()
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    journeys: list[_Journey] = []
    runners: list[Runner] = []
    active: dict[str, _Journey] = {}
    deferred: list[SerialPort] = []        # new ports on a device node a running journey still has
    interrupted = False

    def finished() -> int:
        return sum(1 for j in journeys if j.result.state != "in progress")

    try:
        while not cancel.is_set():
            if (stop_after is not None and finished() >= stop_after and all(not r.is_alive() for r in runners)
                    and not tracker.has_returned() and not deferred):
                break
            appeared, vanished = tracker.refresh()
            returned = tracker.take_returned()
            for p in vanished:
                j = active.get(p.device)
                if j is not None and j.result.state == "in progress":
                    emit(StationEvent(j.result.key, p.device, "vanished", "the port vanished (unplugged, or re-enumerating after its reset)", elapsed=round(
                        time.monotonic() - j.t0, 3)))
            waiting, deferred = deferred, []
            for p in appeared + waiting + returned:
                taken = tracker.offer(p) if p not in returned else None
                if taken == "finished":                # said, not silent: a board with the same USB
                    emit(StationEvent(p.device, p.device, "ignored", "taken for a finished board back after "
                                      f"its last reset (USB serial {p.serial_number}); replug it to take it again"))
                if taken:
                    continue
                if p not in appeared and not tracker.is_present(p):
                    continue
                if any(j.result.port == p.device and j.result.state == "in progress" for j in journeys):
                    # A device node reused by a new board (pts and ttyACM numbers are) while the
                    # old board's journey still ends: its journey starts once that one is over.
                    deferred.append(p)
                    continue
                j = _Journey(p, plan, tracker, emit, cancel, log_dir)
                journeys.append(j)
                active[p.device] = j
                runners.append(Runner(j.run, f"station {p.device}"))
            time.sleep(poll)
    except KeyboardInterrupt:
        interrupted = True
        cancel.set()
    interrupted = _flash.wait_threads(runners, cancel) or interrupted
    return StationReport([_settled(j) for j in journeys], started_at, time.monotonic() - t0,
                         interrupted or cancel.is_set())


# --- recording plain verbs (flash, provision, smoke --registry) ---------------------------------


MAC_UNKNOWN = "MAC unknown"


def _record_each(items: Sequence[Any], record: Callable[[Any], bool]) -> dict[str, str]:
    """Record each item (each has `.port`; `record` returns False when its MAC is unknown); the
    ports not recorded, each with why. A registry that fails (locked by another program past its
    wait, the disk full) fails the rest with the same reason, not one 30 s wait per board: the
    results are in the caller's report, and the user is told which boards the registry lacks."""
    missing: dict[str, str] = {}
    failed: str | None = None
    for item in items:
        if failed is None:
            try:
                if record(item):
                    continue
                missing[item.port] = MAC_UNKNOWN
                continue
            except RegistryError as e:
                failed = str(e)
        missing[item.port] = failed if item.mac else MAC_UNKNOWN   # no MAC: never recordable, whatever the registry
    return missing


def record_flash_report(registry: Registry, report: _flash.FlashReport, images: ImageChoice) -> dict[str, str]:
    """`flash --registry`: every board that answered, with what it holds now. Returns the ports
    not recorded (no MAC was read there, or the registry failed), with why: the caller says so."""
    def record(r: _flash.DeviceResult) -> bool:
        if not r.mac:
            return False
        registry.see(r.mac, chip=r.chip, port=r.port)
        image = _flash._pick(images, r.chip) if r.chip and r.board else None
        registry.record_flash(r.mac, ok=r.ok, board=r.board, image=image.source if image else None,
                              release=image.release if image else None,
                              inputs=image.identity if image and r.ok else None,
                              detail=r.error or "verified", port=r.port, flash_size=r.flash_size)
        return True
    return _record_each(report.results, record)


def check_hostname_free(registry: Registry, hostname: str | None, mac: str) -> None:
    """ProvisionError if the registry holds `hostname` for another board than `mac`."""
    from .provision import ProvisionError

    holder = registry.by_hostname(hostname) if hostname else None
    if holder is not None and holder.mac != normalize_mac(mac):
        raise ProvisionError(f"hostname {hostname!r} is already board {holder.mac}'s (sticker "
                             f"{holder.sticker}) in the registry: change the pattern, or use {{index}}")


def registry_vet(registry: Registry) -> Callable[[str, Any, str | None], None]:
    """`provision --registry`: a provision_all `vet` refusing a hostname another board holds."""
    def vet(_port: str, ident: Any, hostname: str | None) -> None:
        check_hostname_free(registry, hostname, ident.mac)
    return vet


def sticker_index(registry: Registry) -> Callable[[str, str], int]:
    """`provision --registry`: {index} is the board's sticker (assigned on first sight of its MAC)."""
    def index_of(port: str, mac: str) -> int:
        return registry.see(mac, port=port).sticker
    return index_of


def record_provision_results(registry: Registry, results: Sequence[Any]) -> dict[str, str]:
    """`provision --registry`; returns the ports not recorded, with why (as record_flash_report)."""
    def record(r: Any) -> bool:
        if not r.mac:
            return False
        registry.see(r.mac, port=r.port)
        registry.record_provision(r.mac, ok=r.ok, hostname=r.hostname,
                                  detail=r.error or "written and verified", port=r.port)
        return True
    return _record_each(results, record)


def record_smoke_reports(registry: Registry, reports: Sequence[Any]) -> dict[str, str]:
    """`smoke --registry` (each report's `mac`, read in its session); returns the ports not
    recorded, with why (as record_flash_report). A board whose checks Ctrl-C cut short has no
    result to record."""
    def record(r: Any) -> bool:
        if not r.mac:
            return False
        registry.see(r.mac, port=r.port)
        detail = "all checks passed" if r.ok else "; ".join(f"{c.name}: {c.detail}" for c in r.failed)
        registry.record_smoke(r.mac, ok=r.ok, detail=detail, port=r.port)
        return True
    done = [r for r in reports if not getattr(r, "interrupted", False)]
    # Two ports whose firmware reports one MAC (clones) would be one registry row, the last
    # result overwriting the first without a word: neither is recorded, and each is named.
    ports_of: dict[str, list[str]] = {}
    for r in done:
        if r.mac:
            ports_of.setdefault(normalize_mac(r.mac), []).append(r.port)
    clones = {port: f"MAC {mac} is reported on {', '.join(ports)} (clones?): one registry row per MAC, so none "
                    "of them is recorded"
              for mac, ports in ports_of.items() if len(ports) > 1 for port in ports}
    missing = _record_each([r for r in done if r.port not in clones], record)
    return {**missing, **clones}


@dataclass
class SmokeRun:
    """`smoke`: one report per port, in the order given; `not_recorded`: the ports a registry was
    given for that are not in it, each with why ("MAC unknown: ...", or the registry's error)."""
    reports: list[Any]                 # workshop.smoke.DeviceReport
    not_recorded: dict[str, str]
    interrupted: bool = False          # Ctrl-C: the reports cut short say so


def smoke_boards(ports: Sequence[str], expected: Any, *, registry: Registry | None = None,
                 baudrate: int = 115200, cancel: threading.Event | None = None, **smoke_options: Any) -> SmokeRun:
    """`smoke` from start to end: every board's checks in parallel (with a registry, each board's
    MAC first, in the same session: its firmware's, as the port name says nothing), then each
    result recorded by MAC.

    Ctrl-C sets `cancel` (every session stops within one read) and returns at once: the boards
    not finished are reported `interrupted` and not recorded."""
    from .provision import identify as repl_identify
    from .smoke import DeviceReport, smoke_all

    cancel = cancel or threading.Event()
    reports: list[Any] | None = None
    if registry is not None:
        smoke_options["read_mac"] = lambda session: repl_identify(session).mac
    try:
        reports = smoke_all(ports, expected, baudrate=baudrate, cancel=cancel, **smoke_options)
    except KeyboardInterrupt:
        cancel.set()
    if reports is None:
        reports = [DeviceReport(port, interrupted=True) for port in ports]
    missing = record_smoke_reports(registry, reports) if registry is not None else {}
    for r in reports:           # why the MAC is unknown, where the session knew
        if missing.get(r.port) == MAC_UNKNOWN and r.mac_error:
            missing[r.port] = f"{MAC_UNKNOWN}: {r.mac_error}"
    return SmokeRun(reports, missing, cancel.is_set())


__all__ = ["BoardResult", "DuplicateMac", "FixedSource", "FolderSource", "Plan", "PortSource", "PortTracker",
           "SmokeRun", "StationError", "StationEvent", "StationReport", "SystemSource",
           "check_hostname_free", "default_source", "expected_for", "record_flash_report",
           "record_provision_results", "record_smoke_reports", "registry_vet", "run_board", "run_boards",
           "serial_from_link", "smoke_boards", "sticker_index", "watch"]
