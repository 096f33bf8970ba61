"""Flash many boards in parallel: one worker per port, progress as events, verify, retry.

`flash_all(ports, images, on_event=...)` is the library behind `invoke flash`. For every port it
connects through esptool's Python API, detects the chip, refuses an image built for another chip
before writing anything, writes, verifies with esptool (MD5 of the flash against the image) and
hard-resets. A failed attempt is retried at a lower baud, then with the legacy stub, then with no
stub. Nothing is reported OK unless esptool's verification of every region succeeded. esptool's
output goes to one log file per port; nothing here prints.

Threads, not processes: each worker owns its ESPLoader and serial port; esptool's shared state is
its logger (routed per thread, see devices.esptool_session) and the stub choice (made per attempt
with a StubFlasher subclass instead of the process-wide ESPTOOL_STUB_VERSION). The heavy lifting
(serial I/O, zlib, md5) releases the GIL.

Every esptool stage is time-boxed (`Budgets`): connect, stub start, baud change, flash attach,
erase, each region's write (from its bytes and the baud), verify, reset. esptool runs each
attempt in a daemon thread; the device's worker watches the stage's deadline and, on overrun or
cancel, aborts the attempt by unblocking and closing the port it handed esptool (an esptool
thread that still does not stop is abandoned, never waited for). A hang is then an ordinary
failure the retry ladder handles: a stub that never starts is retried with the next stub at
once (a lower baud cannot help a stub that never answered). Ctrl-C ends a run within ~1 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from . import devconfig, devices
from . import esptool_adapter as esptool
from .buildinfo import BuildInfoError, dist_dir, read_build_info, write_atomic
from .config import HOST_CHIP, ConfigError, chip_definition, load_port, project_root
from .devices import Cancelled, DeviceError, SerialPort
from .esptool_adapter import VerifyFailed
from .parallel import Runner, wait_threads

DEFAULT_BAUD = 460800
SAFE_BAUD = 115200


class FlashError(RuntimeError):
    """A flash run cannot start (bad image, no ports); the message says what to do."""


class HostBuild(FlashError):
    """The build is for the host (the unix port): there is nothing to flash."""


class Refused(DeviceError):
    """The board was refused before anything was written (no retry can change that)."""

    kind = "refused"


class WrongChip(Refused):
    """The detected chip is not the one the image was built for: nothing was written."""

    kind = "wrong-chip"


class TooBig(Refused):
    """The image does not fit the board's flash (as its flash chip reports it): nothing was written."""

    kind = "too-big"


# The command-line option that stretches every stage's time box (Budgets.scale), for messages.
TIMEOUT_SCALE_OPTION = "--timeout-scale"


def timeout_scale(value: Any) -> float:
    """--timeout-scale: a finite number > 0 (or such a string, from a command line); FlashError else."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = -1.0
    if not 0 < scale < float("inf"):
        raise FlashError(f"{TIMEOUT_SCALE_OPTION}: expected a number > 0 (2 doubles every stage's time box), "
                         f"got {value!r}")
    return scale


class StageTimeout(DeviceError):
    """An esptool stage overran its time box: the attempt was aborted (its port closed)."""

    kind = "timeout"

    def __init__(self, stage: str, budget: float, doing: str) -> None:
        super().__init__(f"{stage}: no answer within its {budget:.1f} s budget ({doing}); attempt aborted "
                         f"(a slow hub or an emulated board: {TIMEOUT_SCALE_OPTION} stretches every stage)")
        self.stage = stage


# --- images ---------------------------------------------------------------------------------


def port_write_flash_size(port: str) -> str:
    """The port's esptool --flash-size ("detect" for esp8266); "keep" for a port we do not know."""
    try:
        return load_port(port).write_flash_size
    except ConfigError:
        return "keep"


# What a board whose flash was verified, then stopped before its reset, holds.
VERIFIED_NOT_RESET = "flashed and verified, not reset: press RESET"


def chip_write_flash_size(chip: str) -> str:
    """The esptool --flash-size of the port that builds for `chip` (its port.toml `chips`), for
    an image that names no port (a bare --image file); "keep" when no port builds for it."""
    try:
        folders = sorted((project_root() / "ports").glob("*/port.toml"))
    except ConfigError:
        return "keep"
    for toml in folders:
        try:
            port = load_port(toml.parent.name)
        except ConfigError:
            continue
        if chip in port.chips:
            return port.write_flash_size
    return "keep"


@dataclass(frozen=True)
class FlashImage:
    """What to write to one kind of board: files at offsets, for one chip.

    `source` says where it came from (dist/<BOARD>, a release, a file) for the report.
    """

    board: str
    chip: str | None               # esptool CHIP_DEFS key; None = unknown (a raw --image file)
    flash_size: str | None
    regions: tuple[tuple[Path, int], ...]
    source: str
    version: str | None = None
    write_flash_size: str = "keep"       # esptool --flash-size for the header (the port's data)
    inputs_sha256: str | None = None     # the build's inputs hash (build.json / index.json)
    build_dir: Path | None = None        # dist/<BOARD>/ it came from (smoke expectations)
    release: str | None = None           # the release version it came from
    stale: str | None = None             # why dist/<BOARD>/ is not the current sources' build (None: it is)
    from_build: bool = True              # False: a bare --image file, no build record vouches for its bytes

    @property
    def identity(self) -> str:
        """What makes two images the same for the registry: the inputs hash, else the bytes' sha256."""
        if self.inputs_sha256:
            return self.inputs_sha256
        digest = hashlib.sha256()
        for path, offset in self.regions:
            digest.update(f"{offset}:".encode())
            digest.update(path.read_bytes())
        return "sha256:" + digest.hexdigest()

    @property
    def chip_name(self) -> str:
        return chip_definition(self.chip).CHIP_NAME if self.chip else "unknown chip"

    @property
    def size(self) -> int:
        return sum(path.stat().st_size for path, _ in self.regions)

    def load(self) -> list[tuple[int, bytes]]:
        return [(offset, path.read_bytes()) for path, offset in self.regions]

    def header_flash_size(self, chip: str) -> str:
        """esptool's --flash-size for writing this image to a `chip`: its port's data; for a bare
        --image file, that of the port that builds for the chip found (an ESP8266 image's header
        says 1MB until esptool writes the size it detects)."""
        return self.write_flash_size if self.from_build else chip_write_flash_size(chip)

    @classmethod
    def from_dist(cls, board_dir: Path) -> FlashImage:
        """dist/<BOARD>/: build.json names chip, files, offsets; every sha256 is checked."""
        try:
            info = read_build_info(board_dir, verify=True)
        except BuildInfoError as e:
            raise FlashError(str(e)) from None
        if info.board != board_dir.name:
            raise FlashError(f"{board_dir / 'build.json'}: describes board {info.board}, not {board_dir.name} "
                             "(copied from another build?): rebuild it")
        if info.chip == HOST_CHIP:
            raise HostBuild(f"{board_dir}: {info.board} is a host build, there is nothing to flash")
        regions = tuple((board_dir / a.file, int(a.offset)) for a in info.flash_images if a.offset is not None)
        if not regions:
            raise FlashError(f"{board_dir / 'build.json'}: lists no file to flash")
        try:
            chip_definition(info.chip)
        except ConfigError as e:
            raise FlashError(f"{board_dir / 'build.json'}: chip: {e}") from None
        from .build import stale_reason

        return cls(board=info.board, chip=info.chip, flash_size=info.flash_size, regions=regions,
                   write_flash_size=port_write_flash_size(info.port),
                   source=f"{board_dir} (build.json)", version=info.micropython_version,
                   inputs_sha256=info.inputs_sha256, build_dir=board_dir,
                   stale=stale_reason(info.board, dist=board_dir.parent))

    @classmethod
    def from_release(cls, board: str, chip: str, port: str, flash_size: str | None,
                     regions: Sequence[tuple[Path, int]], version: str | None, micropython_version: str | None,
                     inputs_sha256: str | None = None) -> FlashImage:
        """A downloaded, verified release board (workshop.download.DownloadedBoard.flash_image)."""
        if chip == HOST_CHIP:
            raise HostBuild(f"{board} is a host build: there is nothing to flash")
        if not regions:
            raise FlashError(f"{board}: the release lists no file to flash")
        return cls(board=board, chip=chip, flash_size=flash_size, write_flash_size=port_write_flash_size(port),
                   regions=tuple(regions),
                   source=" ".join(x for x in ("release", version, f"({regions[0][0].parent})") if x),
                   version=micropython_version, inputs_sha256=inputs_sha256, release=version)

    @classmethod
    def from_file(cls, path: Path, offset: int, chip: str | None = None) -> FlashImage:
        """A single binary (--image FILE --offset N). With `chip`, its bytes are checked against
        it here, before any board is touched (else against each board's chip, before writing)."""
        if not path.is_file():
            raise FlashError(f"{path}: no such image file")
        # (its header's flash size: the port's data for the chip found, see header_flash_size)
        image = cls(board=path.stem, chip=chip, flash_size=None, regions=((path, offset),), source=str(path),
                    from_build=False)
        if chip is not None:
            try:
                chip_definition(chip)
            except ConfigError as e:
                raise FlashError(str(e)) from None
            foreign = _foreign_image(chip, image.load()) if path.stat().st_size else None  # (empty: refused as such)
            if foreign is not None:
                offset_found, blob, found = foreign
                name = chip_definition(chip).CHIP_NAME
                if found is not None:
                    raise FlashError(f"--image {path}: an image for {chip_definition(found).CHIP_NAME} (its header "
                                     f"says so), not for {name} (--chip {chip}): nothing written")
                raise FlashError(f"--image {path}: {_no_image(name, offset_found, blob)}")
        return image


def dist_images(root: Path | None = None) -> list[FlashImage]:
    """Every finished, flashable build under dist/ (host builds and unfinished folders skipped)."""
    base = root if root is not None else dist_dir()
    images = []
    for board_dir in sorted(p for p in base.glob("*") if (p / "build.json").is_file()):
        try:
            images.append(FlashImage.from_dist(board_dir))
        except HostBuild:
            continue            # the unix build sits in dist/ too; anything else wrong is raised
    return images


def images_by_chip(images: Sequence[FlashImage], where: str = "dist/ (invoke build --board ...)") -> dict[str, FlashImage]:
    """--auto: chip -> image. Two images for one chip is ambiguous: name them and stop. `where`:
    where the images came from, for the error when none is flashable."""
    by_chip: dict[str, FlashImage] = {}
    for image in images:
        if image.chip is None:
            raise FlashError(f"{image.source}: unknown chip, cannot be picked by --auto")
        if image.chip in by_chip:
            raise FlashError(f"--auto: two images for {image.chip_name}: {by_chip[image.chip].board} and "
                             f"{image.board}; pass --board to choose")
        by_chip[image.chip] = image
    if not by_chip:
        raise FlashError(f"--auto: no flashable image in {where}")
    return by_chip


def stale_warnings(images: ImageChoice) -> list[str]:
    """One line per chosen dist/ image that is not the current sources' build (edited modules,
    another MicroPython...): it is written all the same, and the line says how to get the current one."""
    chosen = [images] if isinstance(images, FlashImage) else list(images.values())
    return [f"{i.build_dir} is stale ({i.stale}): writing it anyway; 'invoke build --board {i.board}' builds "
            "the current sources" for i in chosen if i.stale]


SECTOR = 0x1000                       # esptool's FLASH_SECTOR_SIZE: what an offset is aligned to


def _flash_sizes() -> tuple[str, ...]:
    """What esptool --flash-size takes, from its own chip definitions (plus detect, keep)."""
    from esptool.targets import CHIP_DEFS

    sizes = {s for c in CHIP_DEFS.values() for s in getattr(c, "FLASH_SIZES", {})}
    return ("detect", "keep", *sorted(sizes, key=lambda s: (_size_bytes(s), s)))


def _size_bytes(size: str) -> int:
    number = size.split("-")[0]
    return int(number[:-2]) * (2**20 if number.endswith("MB") else 2**10)


MAX_FLASH_BYTES = 128 * 2**20          # the largest in esptool's FLASH_SIZES


def _flash_offset(offset: int | str) -> int:
    """--offset: a number (0x1000, 4096), not negative, on a flash sector boundary, inside the flash."""
    try:
        number = offset if isinstance(offset, int) and not isinstance(offset, bool) else int(str(offset).strip(), 0)
    except ValueError:
        raise FlashError(f"--offset: expected a number like 0x1000, got {offset!r}") from None
    if number < 0 or number >= MAX_FLASH_BYTES:
        raise FlashError(f"--offset {offset}: expected 0x0 .. {MAX_FLASH_BYTES - 1:#x} (the flash is at most "
                         f"{MAX_FLASH_BYTES // 2**20} MB)")
    if number % SECTOR:
        raise FlashError(f"--offset {offset}: not on a flash sector boundary (a multiple of {SECTOR:#x}, "
                         "e.g. 0x1000, 0x10000)")
    return number


def choose_images(*, board: str | None = None, auto: bool = False, image: Path | None = None,
                  offset: int | str | None = None, chip: str | None = None, release: str | None = None,
                  dist: Path | None = None) -> ImageChoice:
    """--board / --auto / --image / --release -> one FlashImage, or chip -> FlashImage (--auto).

    The one place that decides what `flash` and `station` write; FlashError says what to fix.
    """
    given = [name for name, value in (("--board", board), ("--auto", auto), ("--image", image)) if value]
    if len(given) > 1:
        raise FlashError(f"{' and '.join(given)}: give only one of them (--board NAME, --auto, or --image FILE "
                         "--offset N)")
    if not given:
        raise FlashError("choose what to write: --board NAME, --auto (each board's chip picks its image), "
                         "or --image FILE --offset N")
    base = dist if dist is not None else dist_dir()
    if image:
        if offset is None:
            raise FlashError("--image needs --offset (e.g. --offset 0x1000)")
        number = _flash_offset(offset)
        chosen = FlashImage.from_file(Path(image), number, chip)
        size = Path(image).stat().st_size
        if size == 0:
            raise FlashError(f"--image {image}: the file is empty: nothing to write")
        if number + size > MAX_FLASH_BYTES:
            raise FlashError(f"--image {image}: {size:,} bytes at --offset {number:#x} end past "
                             f"{MAX_FLASH_BYTES // 2**20} MB, the largest flash an ESP chip has")
        return chosen
    if release:
        from .download import DownloadError, release_images

        try:
            images = release_images(release, [board] if board else None)
        except DownloadError as e:
            raise FlashError(str(e)) from None
        if not auto:
            return images[0]
        return images_by_chip(images, f"release {release} (only its ESP boards' images are flashed, not UNIX)")
    if auto:
        return images_by_chip(dist_images(base))
    assert board is not None
    from .config import get_board

    try:
        get_board(board)
    except ConfigError as e:
        raise FlashError(str(e)) from None
    return FlashImage.from_dist(base / board)


# --- options, events, results ---------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try: the baud rate after the stub is up, and which stub ("2", legacy "1", None = ROM only)."""

    baud: int
    stub: str | None = "2"

    @property
    def label(self) -> str:
        stub = {"2": "stub", "1": "legacy stub", None: "no stub"}[self.stub]
        return f"{self.baud} baud, {stub}"


def retry_ladder(baud: int) -> tuple[Attempt, ...]:
    """Requested baud with the default stub; then slower; then the legacy stub; then ROM only."""
    slow = min(baud, SAFE_BAUD)
    ladder = [Attempt(baud, "2"), Attempt(slow, "2"), Attempt(slow, "1"), Attempt(slow, None)]
    out: list[Attempt] = []
    for a in ladder:
        if a not in out:
            out.append(a)
    return tuple(out)


@dataclass(frozen=True)
class Budgets:
    """Time boxes for each esptool stage, in seconds; `scale` stretches all (emulators, slow hubs).

    Budgets from bytes assume 10 bits per byte on the line at the attempt's baud, times
    `line_margin`, plus the flash's own erase time (`erase_s_per_mb`, before each write; esptool's
    region-erase allowance is 40 s/MB, real chips need ~3-10 s/MB).
    """

    connect_per_try: float = 2.5       # reset + sync, per connect attempt
    stub_base: float = 1.5             # a started stub greets within milliseconds
    baud_change: float = 2.0
    attach: float = 3.0
    erase_s_per_mb: float = 10.0
    chip_erase: float = 120.0          # esptool's CHIP_ERASE_TIMEOUT
    write_base: float = 3.0
    line_margin: float = 2.0
    verify_base: float = 3.0
    verify_s_per_mb: float = 8.0       # esptool's MD5_TIMEOUT_PER_MB
    reset: float = 3.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", timeout_scale(self.scale))

    def line(self, nbytes: int, baud: int) -> float:
        return nbytes * 10 / max(1, baud) * self.line_margin

    def connect(self, tries: int) -> float:
        return self.scale * (1.0 + self.connect_per_try * max(1, tries))

    def stub(self, nbytes: int) -> float:
        return self.scale * (self.stub_base + self.line(nbytes, devices.ROM_BAUD))

    def write(self, nbytes: int, baud: int) -> float:
        return self.scale * (self.write_base + self.line(nbytes, baud) + self.erase_s_per_mb * nbytes / 2**20)

    def verify(self, nbytes: int) -> float:
        return self.scale * (self.verify_base + self.verify_s_per_mb * nbytes / 2**20)

    def fixed(self, seconds: float) -> float:
        return self.scale * seconds


@dataclass(frozen=True)
class FlashOptions:
    baud: int = DEFAULT_BAUD
    erase: bool = False                     # erase the whole flash before writing
    flash_size: str | None = None           # override esptool's --flash-size; None = the image's port data
    connect_attempts: int = devices.DEFAULT_CONNECT_ATTEMPTS
    attempts: tuple[Attempt, ...] | None = None   # None = retry_ladder(baud)
    reset_after: bool = True
    budgets: Budgets = Budgets()
    abort_grace: float = 1.0                # after an abort, how long an esptool thread may take to stop

    def __post_init__(self) -> None:
        """Checked before any board is touched: a value esptool refuses would fail every board
        after connecting (and be retried as if the board were at fault)."""
        try:
            object.__setattr__(self, "baud", devconfig.baud(self.baud, "--baud"))  # "921600" -> 921600
        except devconfig.DevConfigError as e:
            raise FlashError(str(e)) from None
        if self.flash_size is not None:
            choices = _flash_sizes()
            if self.flash_size not in choices:
                raise FlashError(f"--flash-size: expected one of {', '.join(choices)}, got {self.flash_size!r}")

    def ladder(self) -> tuple[Attempt, ...]:
        return self.attempts or retry_ladder(self.baud)


class Stage(str, Enum):
    QUEUED = "queued"
    CONNECTING = "connecting"
    STUB = "stub"
    BAUD = "baud change"
    ATTACH = "flash attach"
    ERASING = "erasing"
    WRITING = "writing"
    VERIFYING = "verifying"
    RESETTING = "resetting"
    DONE = "done"
    RETRYING = "retrying"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class State(str, Enum):
    OK = "ok"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"
    SKIPPED = "skipped"            # a gate (the station) decided the board needs nothing


@dataclass(frozen=True)
class FlashEvent:
    """Progress of one device; `bytes_done/bytes_total` during WRITING (image bytes, all regions)."""

    port: str
    stage: Stage
    attempt: int = 1
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""
    chip: str | None = None
    mac: str | None = None

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 0.0


@dataclass
class AttemptResult:
    attempt: str
    stage: str
    error: str | None = None


@dataclass
class DeviceResult:
    port: str
    state: State = State.NOT_STARTED
    stage: Stage = Stage.QUEUED          # the last stage reached
    chip: str | None = None
    chip_name: str | None = None
    mac: str | None = None
    flash_size: str | None = None        # as the flash chip reports it ("4MB")
    board: str | None = None             # the image written (or that would have been)
    verified: bool = False
    error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0
    attempts: list[AttemptResult] = field(default_factory=list)
    bytes_written: int = 0
    log_file: str | None = None

    @property
    def ok(self) -> bool:
        return self.state is State.OK and self.verified

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    @property
    def left_as(self) -> str:
        """In words, what the board holds now (the furthest any attempt got decides)."""
        if self.ok:
            return "flashed and verified"
        if self.verified:                   # stopped (Ctrl-C) during the reset after verify
            return VERIFIED_NOT_RESET
        reached = {a.stage for a in self.attempts} | {self.stage.value}
        if reached & {Stage.ERASING.value, Stage.WRITING.value, Stage.VERIFYING.value, Stage.RESETTING.value,
                      Stage.DONE.value}:
            return "partially written: flash again"
        if self.state is State.SKIPPED:
            return "untouched (nothing to do)"
        if Stage.STUB.value in reached:
            return "untouched (stub in RAM only)"
        return "untouched"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(state=self.state.value, stage=self.stage.value, ok=self.ok, retries=self.retries,
                 left_as=self.left_as, seconds=round(self.seconds, 3))
        return d


@dataclass
class FlashReport:
    results: list[DeviceResult]
    started_at: str
    seconds: float
    interrupted: bool = False
    images: dict[str, str] = field(default_factory=dict)    # board -> source

    @property
    def ok(self) -> bool:
        return bool(self.results) and not self.interrupted and all(r.ok for r in self.results)

    @property
    def failed(self) -> list[DeviceResult]:
        return [r for r in self.results if not r.ok]

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, "interrupted": self.interrupted, "started_at": self.started_at,
                           "seconds": round(self.seconds, 3), "images": self.images,
                           "devices": [r.to_dict() for r in self.results]}, indent=2) + "\n"

    def write_json(self, path: Path) -> Path:
        write_atomic(path, self.to_json())
        return path


ImageChoice = FlashImage | Mapping[str, FlashImage]
EventHandler = Callable[[FlashEvent], None]


# --- one device -----------------------------------------------------------------------------


class NotAnImage(Refused):
    """A bare --image file holds no firmware image where the chip's ROM looks for one: nothing written."""

    kind = "not-an-image"


def _foreign_image(chip: str, data: Sequence[tuple[int, bytes]]) -> tuple[int, bytes, str | None] | None:
    """What a region puts at the chip's bootloader offset that its ROM would not boot as its own
    image: (the bootloader offset, the bytes from there, the chip their header names, or None when
    they are no image at all); None: nothing wrong there, or no region covers it. A region that
    starts below it and covers it (a merged image at 0x0 on an ESP32, boot 0x1000) is judged by
    the bytes it puts there."""
    boot = int(chip_definition(chip).BOOTLOADER_FLASH_OFFSET)
    for offset, blob in data:
        if offset <= boot < offset + len(blob):
            there = blob[boot - offset:]
            found = esptool.image_chip(there, chip)
            if found != chip:
                return boot, there, found
    return None


def _no_image(chip_name: str, offset: int, blob: bytes) -> str:
    return (f"no {chip_name} firmware image at {offset:#x}, where its ROM bootloader looks for one (a download "
            f"cut short, or not firmware: it starts {blob[:12]!r}); nothing written")


def check_image_chip(image: FlashImage, chip: str, data: Sequence[tuple[int, bytes]]) -> None:
    """Refuse, before anything is written, what the chip's ROM bootloader would not boot: at its
    bootloader offset, an image whose header names another chip (WrongChip: esptool itself
    refuses it at write time, which looked like a failed write and was retried), and, in a bare
    --image file, bytes that are no image at all (NotAnImage: esptool writes them, and the
    board's working firmware is gone for a download that went wrong). A build's bytes are
    vouched for by its record (and tests flash synthetic ones): only another chip is refused."""
    foreign = _foreign_image(chip, data)
    if foreign is None:
        return
    offset, blob, found = foreign
    name = chip_definition(chip).CHIP_NAME
    if found is not None:
        what = image.board if image.from_build else image.source
        raise WrongChip(f"found {name}, but {what} is an image for {chip_definition(found).CHIP_NAME} "
                        "(its header says so): nothing written")
    if not image.from_build:
        raise NotAnImage(f"{image.source}: {_no_image(name, offset, blob)}")


def _pick(images: ImageChoice, chip: str) -> FlashImage:
    """The image for a detected chip; WrongChip (before anything is written) when there is none."""
    if isinstance(images, FlashImage):
        if images.chip is not None and images.chip != chip:
            raise WrongChip(f"found {chip_definition(chip).CHIP_NAME}, but {images.board} is built for "
                            f"{images.chip_name}: nothing written")
        return images
    image = images.get(chip)
    if image is None:
        known = ", ".join(f"{i.chip_name} ({i.board})" for i in images.values()) or "none"
        raise WrongChip(f"found {chip_definition(chip).CHIP_NAME}: no image for it (have: {known}); nothing written")
    return image


Gate = Callable[["DeviceResult"], "str | None"]


class _Aborted(Exception):
    """Internal: the attempt thread was stopped from outside (timeout, cancel)."""


class _Worker:
    """One device: the retry ladder, each attempt in a watched daemon thread."""

    def __init__(self, port: SerialPort, images: ImageChoice, options: FlashOptions, emit: EventHandler,
                 cancel: threading.Event, log_path: Path, gate: Gate | None = None) -> None:
        self.port, self.images, self.options, self.emit_cb = port, images, options, emit
        self.cancel, self.log_path, self.gate = cancel, log_path, gate
        self.result = DeviceResult(port=port.device, log_file=str(log_path),
                                   board=images.board if isinstance(images, FlashImage) else None)
        self.attempt_no = 1
        self.total = 0
        self.done_before = 0       # bytes of earlier regions in this attempt
        self.region_size = 0
        self.skipped: str | None = None
        self.gated = False         # the gate ran (once: on the first attempt that read a MAC)
        # the time box of the stage running now (set by the attempt thread, read by the watcher)
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._budget = 0.0
        self._doing = ""
        self._ser: Any = None
        self._abort = threading.Event()

    def emit(self, stage: Stage, message: str = "", done: int = 0, total: int = 0) -> None:
        if stage not in (Stage.RETRYING, Stage.FAILED, Stage.INTERRUPTED):
            self.result.stage = stage      # the last working stage: where a failure happened
        self.emit_cb(FlashEvent(self.port.device, stage, self.attempt_no, done, total, message,
                                self.result.chip, self.result.mac))

    def box(self, stage: Stage, budget: float, doing: str, message: str = "", done: int = 0, total: int = 0) -> None:
        """Enter a stage with its time box (from now)."""
        with self._lock:
            self._deadline, self._budget, self._doing = time.monotonic() + budget, budget, doing
        self.emit(stage, message, done, total)

    def on_progress(self, done: int, total: int, description: str) -> None:
        # esptool reports bytes sent on the wire (compressed); scale to this region's share.
        if self.result.stage is Stage.WRITING and total:
            region = self.region_size
            self.emit(Stage.WRITING, description, self.done_before + min(region, done * region // total), self.total)

    def run(self) -> DeviceResult:
        started = time.monotonic()
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text("", encoding="utf-8")
            ladder = list(self.options.ladder())
            number = 0
            while number < len(ladder):
                attempt = ladder[number]
                number += 1
                self.attempt_no = number
                if self.cancel.is_set():
                    raise Cancelled()
                self._log(f"\n=== attempt {number}/{len(ladder)}: {attempt.label} ===\n")
                record = AttemptResult(attempt.label, Stage.CONNECTING.value)
                self.result.attempts.append(record)
                error = self._watch(attempt)
                if error is None:
                    record.stage = Stage.DONE.value
                    if self.skipped is not None:
                        self.result.state = State.SKIPPED
                        self.emit(Stage.DONE, self.skipped)
                    else:
                        self.result.state = State.OK
                        self.emit(Stage.DONE, "verified")
                    break
                if isinstance(error, Cancelled):
                    raise error
                text = str(error) if isinstance(error, DeviceError) else _describe(error)
                record.stage, record.error = self.result.stage.value, text
                self._log(f"=== failed in {record.stage}: {text}\n")
                # A wrong chip, a silent, busy or vanished port: another baud or stub cannot help.
                final = isinstance(error, Refused | devices.NoAnswer | devices.PortUnavailable)
                if not self.port.is_url and not os.path.exists(self.port.device):
                    self._fail("unplugged", f"{self.result.stage.value}: the port vanished (unplugged?): {text}")
                    break
                if self.result.stage is Stage.STUB:
                    # The stub never started: a lower baud does not change the stub; take the next one.
                    while number < len(ladder) and ladder[number].stub == attempt.stub:
                        number += 1
                if final or number >= len(ladder):
                    kind = error.kind if isinstance(error, DeviceError) else "esptool"
                    self._fail(kind, self._reason(error))
                    break
                self.emit(Stage.RETRYING, f"retrying at {ladder[number].label}: {record.error}")
        except Cancelled:
            self.result.state = State.INTERRUPTED if self.result.stage is not Stage.QUEUED else State.NOT_STARTED
            self.result.error = f"interrupted during {self.result.stage.value}"
            self.result.error_kind = "interrupted"
            if self.result.attempts:
                self.result.attempts[-1].stage = self.result.stage.value
                self.result.attempts[-1].error = "interrupted"
            self.emit_cb(FlashEvent(self.port.device, Stage.INTERRUPTED, self.attempt_no, message=self.result.error))
        except Exception as e:  # noqa: BLE001 - outside any attempt (e.g. the log file): still this device's result
            self.result.verified = False
            with contextlib.suppress(Exception):       # _fail records first, then emits
                self._fail("error", f"{self.result.stage.value}: {_describe(e)}")
        finally:
            self.result.seconds = time.monotonic() - started
        return self.result

    def _log(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(text)

    def _watch(self, attempt: Attempt) -> BaseException | None:
        """Run one attempt in a daemon thread; abort it on overrun or cancel. Its error, or None."""
        outcome: list[BaseException | None] = []
        self._abort = threading.Event()
        with self._lock:
            self._deadline, self._ser = None, None

        def body() -> None:
            try:
                with esptool.esptool_session(self.log_path, self.on_progress, self.cancel, append=True,
                                             abort=self._abort):
                    self._attempt(attempt)
                outcome.append(None)
            except BaseException as e:  # noqa: BLE001 - handed to the watcher
                outcome.append(e)

        thread = Runner(body, f"esptool {self.port.device}")
        timed_out: StageTimeout | None = None
        aborted_at: float | None = None
        while thread.is_alive():
            if thread.done.wait(0.05):
                break
            now = time.monotonic()
            if aborted_at is None:
                with self._lock:   # (set by the worker thread: not the None assigned above)
                    deadline: float | None = self._deadline
                    budget, doing = self._budget, self._doing
                if self.cancel.is_set():
                    aborted_at = now
                elif deadline is not None and now > deadline:
                    timed_out = StageTimeout(self.result.stage.value, budget, doing)
                    self._log(f"=== {self.result.stage.value} overran its {budget:.1f} s budget ({doing}): "
                              "aborting the attempt\n")
                    aborted_at = now
                if aborted_at is not None:
                    self._abort.set()
                    with self._lock:
                        ser = self._ser
                    if ser is not None:
                        esptool.abort_port(ser)
            elif now - aborted_at > self.options.abort_grace:
                self._log("=== esptool did not stop after its port was closed: thread abandoned\n")
                break
        with self._lock:
            ser, self._ser, self._deadline = self._ser, None, None
        if ser is not None and thread.is_alive():
            esptool.abort_port(ser)
        if self.cancel.is_set():
            return Cancelled()
        if timed_out is not None:
            return timed_out
        if not outcome:
            return DeviceError("esptool thread did not finish")
        error = outcome[0]
        if isinstance(error, Cancelled):       # raised by our logger hooks after an abort
            return Cancelled() if self.cancel.is_set() else DeviceError("attempt aborted")
        return error

    def _reason(self, e: BaseException) -> str:
        """The last error, and the first one when it differs (often the real cause)."""
        last = str(e) if isinstance(e, DeviceError) else _describe(e)
        first = self.result.attempts[0]
        if len(self.result.attempts) > 1 and first.error and first.error != last:
            # (a stage timeout's text names its stage already: "stub: no answer within ...")
            where = "" if first.error.startswith(f"{first.stage}: ") else f"{first.stage}: "
            return f"{where}{first.error}; after {self.result.retries} retr{'y' if self.result.retries == 1 else 'ies'}: {last}"
        if isinstance(e, StageTimeout):
            return last
        return last if isinstance(e, DeviceError) else f"{self.result.stage.value}: {last}"

    def _fail(self, kind: str, message: str) -> None:
        self.result.state, self.result.error, self.result.error_kind = State.FAILED, message, kind
        self.emit(Stage.FAILED, message)

    def _attempt(self, attempt: Attempt) -> None:
        budgets = self.options.budgets
        self.result.verified = False
        tries = self.options.connect_attempts
        self.box(Stage.CONNECTING, budgets.connect(tries), f"syncing with the ROM bootloader, {tries} tries",
                 f"attempt {self.attempt_no}: {attempt.label}")
        ser = esptool.open_port(self.port.device)
        with self._lock:
            self._ser = ser
        try:
            if self._abort.is_set():
                raise Cancelled()
            self._flash(esptool.connect(ser, tries), attempt)
        finally:
            # Closed whatever failed, the connect included: a port left open keeps its exclusive
            # lock, and the next attempt would find the board "busy: held by another program".
            with self._lock:
                ser, self._ser, self._deadline = self._ser, None, None
            if ser is not None:
                esptool.abort_port(ser)

    def _flash(self, esp: Any, attempt: Attempt) -> None:
        """One attempt on a connected loader: identify, refuse or write, verify, reset."""
        from esptool.cmds import attach_flash, erase_flash, reset_chip, write_flash

        budgets = self.options.budgets
        chip = esptool.chip_key(esp)
        self.result.chip, self.result.chip_name = chip, esp.CHIP_NAME
        self.result.mac = esptool.read_mac(esp)
        image = _pick(self.images, chip)          # refuses a wrong-chip image before any write
        self.result.board = image.board
        data = image.load()
        check_image_chip(image, chip, data)       # and one whose bytes say so (before the gate records a flash)
        if self.gate is not None and not self.gated:
            # Not "attempt 1": an attempt that failed before reading the MAC never got here.
            # Marked once it has run: a gate that raised runs again on the retry, never skipped
            # (a clone's refusal was lost that way, and the clone flashed on attempt 2).
            self.skipped = self.gate(self.result)
            self.gated = True
            if self.skipped is not None:
                if self.options.reset_after:        # back into its firmware, as after a flash
                    self.box(Stage.RESETTING, budgets.fixed(budgets.reset), "hard reset", "hard reset")
                    with contextlib.suppress(Exception):
                        reset_chip(esp, "hard-reset")
                return
        self.total = sum(len(d) for _, d in data)
        baud = devices.ROM_BAUD
        if attempt.stub is not None:
            size = esptool.stub_size(esp, attempt.stub)
            self.box(Stage.STUB, budgets.stub(size), f"uploading and starting the {attempt.label.split(', ')[1]} "
                     f"({size} bytes)", attempt.label)
            esp = esptool.run_stub(esp, attempt.stub)
        if attempt.baud > devices.ROM_BAUD:
            self.box(Stage.BAUD, budgets.fixed(budgets.baud_change), f"switching to {attempt.baud} baud")
            if esptool.change_baud(esp, attempt.baud):
                baud = attempt.baud
        self.box(Stage.ATTACH, budgets.fixed(budgets.attach), "attaching the SPI flash")
        attach_flash(esp)
        self.result.flash_size = esptool.flash_size(esp) or self.result.flash_size
        flash_size = self.options.flash_size or image.header_flash_size(chip)
        where = "--flash-size" if self.options.flash_size else "the port's write_flash_size"
        _check_fits(data, self.result.flash_size, flash_size, where)     # before anything is written
        esptool.single_write_attempt(esp)   # our ladder retries, not esptool's reconnect loop
        if self.options.erase:
            self.box(Stage.ERASING, budgets.fixed(budgets.chip_erase), "erasing the whole flash",
                     "erasing the whole flash")
            erase_flash(esp)
        self.done_before = 0
        for offset, blob in data:
            self.region_size = len(blob)
            budget = budgets.write(len(blob), baud)
            self.box(Stage.WRITING, budget, f"writing {len(blob)} bytes at {offset:#x} at {baud} baud",
                     f"{offset:#x}", self.done_before, self.total)
            write_flash(esp, [(offset, blob)], flash_size=flash_size)
            self.done_before += len(blob)
            self.result.bytes_written = self.done_before
            self.emit(Stage.WRITING, f"{offset:#x} written", self.done_before, self.total)
        self.box(Stage.VERIFYING, budgets.verify(self.total), f"checksumming {self.total} bytes of flash",
                 "md5 of flash vs image", self.total, self.total)
        esptool.verify(esp, data, flash_size, image.board)
        self.result.verified = True
        if self.options.reset_after:
            self.box(Stage.RESETTING, budgets.fixed(budgets.reset), "hard reset", "hard reset")
            with contextlib.suppress(Exception):
                reset_chip(esp, "hard-reset")


def _check_fits(data: Sequence[tuple[int, bytes]], flash_size: str | None, header: str = "keep",
                where: str = "--flash-size") -> None:
    """TooBig when a region ends past the flash the chip reports, or when the header would claim
    more flash than that (`header`, esptool's --flash-size, from `where`): esptool only warns and
    writes it, verify passes, and the firmware trusts the header (ESP-IDF stops at boot: "Detected
    size smaller than the size in the binary image header"; ESP8266 MicroPython sizes its
    filesystem past the chip's end). An unknown chip size is not checked."""
    try:
        size = _size_bytes(flash_size) if flash_size else None
    except ValueError:
        size = None
    if size is None:
        return
    for offset, blob in data:
        if offset + len(blob) > size:
            raise TooBig(f"the image does not fit: {len(blob):,} bytes at {offset:#x} end at {offset + len(blob):#x}, "
                         f"past this board's {flash_size} flash ({size:#x}); nothing written")
    if header not in ("keep", "detect") and _size_bytes(header) > size:
        raise TooBig(f"{where} {header}: more than this board's {flash_size} flash, and a header claiming more "
                     "flash than the chip has breaks the firmware at boot; nothing written")


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


# --- many devices ---------------------------------------------------------------------------


def default_log_dir(root: Path | None = None) -> Path:
    return project_root(root) / "logs" / "flash" / datetime.now().strftime("%Y%m%d-%H%M%S")


def flash_device(port: SerialPort | str, images: ImageChoice, options: FlashOptions = FlashOptions(),
                 on_event: EventHandler | None = None, log_path: Path | None = None,
                 cancel: threading.Event | None = None, gate: Gate | None = None) -> DeviceResult:
    """One board through the retry ladder, in the calling thread (the station's flash stage).

    `gate(result)` is called once chip and MAC are known, before anything is written: a string
    return skips the flash (state SKIPPED, the string says why).
    """
    target = port if isinstance(port, SerialPort) else SerialPort(port)
    path = log_path or default_log_dir() / f"{devices.log_name(target.device)}.log"
    return _Worker(target, images, options, on_event or (lambda e: None), cancel or threading.Event(), path,
                   gate).run()


def flash_all(ports: Sequence[SerialPort | str], images: ImageChoice, options: FlashOptions = FlashOptions(),
              on_event: EventHandler | None = None, log_dir: Path | None = None,
              cancel: threading.Event | None = None) -> FlashReport:
    """Flash every port in parallel (one thread per port) and return one result per port.

    `images` is one FlashImage (every device must have its chip) or chip -> FlashImage (--auto).
    Ctrl-C (KeyboardInterrupt in the calling thread) or `cancel.set()` aborts every attempt
    (its port is closed under esptool); the report, back within ~2 s, says what each device
    was left as. Workers are daemon threads: a stuck one never keeps the process alive.
    """
    targets = [p if isinstance(p, SerialPort) else SerialPort(p) for p in ports]
    if not targets:
        raise FlashError("no serial ports to flash: plug boards in, or pass --ports")
    if len({t.device for t in targets}) != len(targets):
        raise FlashError("a port is listed twice")
    log_dir = log_dir or default_log_dir()
    cancel = cancel or threading.Event()
    emit_lock = threading.Lock()

    def emit(event: FlashEvent) -> None:
        if on_event is not None:
            with emit_lock:
                on_event(event)

    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    workers = [_Worker(t, images, options, emit, cancel, log_dir / f"{devices.log_name(t.device)}.log")
               for t in targets]
    for w in workers:
        emit(FlashEvent(w.port.device, Stage.QUEUED))
    threads = [Runner(w.run, f"flash {w.port.device}") for w in workers]
    interrupted = wait_threads(threads, cancel)
    interrupted = interrupted or cancel.is_set()
    for w, t in zip(workers, threads):
        if t.is_alive() and w.result.state not in (State.OK, State.FAILED):
            w.result.state = State.INTERRUPTED if w.result.stage is not Stage.QUEUED else State.NOT_STARTED
            w.result.error = w.result.error or f"interrupted during {w.result.stage.value}"
            w.result.error_kind = "interrupted"
    chosen = [images] if isinstance(images, FlashImage) else list(images.values())
    return FlashReport(results=[w.result for w in workers], started_at=started_at, seconds=time.monotonic() - t0,
                       interrupted=interrupted, images={i.board: i.source for i in chosen})


__all__ = ["Attempt", "Budgets", "DeviceResult", "FlashError", "FlashEvent", "FlashImage", "FlashOptions",
           "FlashReport", "HostBuild", "NotAnImage", "Refused", "Stage", "StageTimeout", "State", "TooBig", "VerifyFailed", "WrongChip", "choose_images", "dist_images",
           "flash_all",
           "flash_device", "stale_warnings", "images_by_chip", "retry_ladder", "Runner", "wait_threads"]
