"""Real peers for the flashing tests: esp32-mock-bootloader devices on PTYs, images in a dist/-like folder.

Helpers only; the fixtures are in conftest.py.

Each mock runs the package's own PTY server (`server.run_pty_server`, exactly what
`esp32-mock-bootloader run --pty` runs) in its own process, with one addition: on SIGTERM it
writes its emulated 4 MB SPI flash to a file before exiting. The mock keeps flash in memory and
has no command to read it out-of-band; this dump lets a test compare the device's flash byte for
byte with the image without going back through esptool.

A PTY has no baud rate: bytes cross it as fast as the two processes run. `MockFarm.uart_links`
puts a relay in front of the mocks that paces every link like a UART (see `_RELAY`), so a
flash spends its time waiting on the line, as with a real board.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from workshop.buildinfo import Artifact, BuildInfo, sha256_file, write_atomic
from workshop.config import chip_definition

from support import MOCK_FLASH_SIZE, FlashDumpingPeer, free_port

_MOCK = r"""
import os, signal, sys
from esp32_mock_bootloader import server
chip, port_file, dump, fast_slip, garbled_detects = sys.argv[1:6]
if int(garbled_detects):
    # Noise on the line while esptool detects the chip: the chip-detect magic register reads as
    # garbage the first N times (esptool: "Unexpected chip magic value"), then as the chip's.
    left = [int(garbled_detects)]
    _read = server._read_reg_value_for_chip
    def _noisy(addr, chip):
        if addr == 0x40001000 and left[0] > 0:
            left[0] -= 1
            return 0xDEADBEEF
        return _read(addr, chip)
    server._read_reg_value_for_chip = _noisy
if fast_slip == "1":
    # The package re-decodes its whole receive buffer, byte by byte in Python, on every read: fine
    # for a PTY's 4 KB reads, quadratic for a UART's trickle. Same frames (for valid SLIP), in C.
    def _frames(raw):
        return [f.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
                for f in raw.split(b"\xc0")[1:-1] if f]
    server.slip_decode_frames = _frames
def _dump(*_):
    data = bytes(server.get_flash_image().data)
    with open(dump + ".tmp", "wb") as f:
        f.write(data)
    os.replace(dump + ".tmp", dump)
    os._exit(0)
signal.signal(signal.SIGTERM, _dump)
server.run_pty_server(None, port_file, chip)
"""


# One process, one select() loop, serving every link: each mock's PTY <-> a new PTY for the flasher.
# Each direction is paced like an 8N1 UART at `baud` (baud / 10 bytes per second): a byte read from
# one side is written to the other once the line would have carried it, in chunks of at most one
# time slice (default 2 ms, ~92 bytes at 460800 baud; a short reply goes as soon as its last byte is
# "on the wire"). At most 4 KB waits per direction (a USB-serial bridge's buffer); past that the
# relay stops reading and the writer blocks, as on a real link. DTR/RTS and baud changes on the
# flasher's PTY are not seen by the relay: the line stays at `baud` throughout.
_RELAY = r"""
import errno, os, select, signal, sys, time, tty
baud, slice_s = float(sys.argv[1]), float(sys.argv[2])
rate = baud / 10.0
chunk = max(1, int(rate * slice_s))
BUF = 4096
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

def raw_fd(path=None):
    if path is None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        return master, slave
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    tty.setraw(fd)
    return fd, None

class Pipe:
    def __init__(self, src, dst, link):
        self.src, self.dst, self.link, self.buf, self.t = src, dst, link, bytearray(), 0.0

links, pipes, out = [], [], []
for path in sys.argv[3:]:
    dev, _ = raw_fd(path)
    master, slave = raw_fd()
    link = {"fds": [dev, master, slave], "open": True}
    links.append(link)
    pipes += [Pipe(master, dev, link), Pipe(dev, master, link)]
    out.append(os.ttyname(slave))
print("\n".join(out), flush=True)

def hang_up(link):
    # the board went away: close our side, the flasher's PTY reports it like an unplugged adapter
    link["open"] = False
    for fd in link["fds"]:
        try:
            os.close(fd)
        except OSError:
            pass

while True:
    now = time.monotonic()
    wait = None
    for p in pipes:
        if not p.buf or not p.link["open"]:
            continue
        p.t = max(p.t, now - 5 * slice_s)          # no catch-up burst after a stall
        due = min(len(p.buf), chunk)
        if (now - p.t) * rate >= due:
            try:
                n = os.write(p.dst, p.buf[:due])
            except BlockingIOError:
                n = 0
            except OSError:
                hang_up(p.link)
                continue
            del p.buf[:n]
            p.t += n / rate
        if p.buf:
            left = p.t + min(len(p.buf), chunk) / rate - now
            wait = max(left, 0.0002) if wait is None else min(wait, max(left, 0.0002))
    readers = [p.src for p in pipes if p.link["open"] and len(p.buf) < BUF]
    try:
        ready, _, _ = select.select(readers, [], [], wait)
    except InterruptedError:
        continue
    now = time.monotonic()
    for p in pipes:
        if p.src in ready and p.link["open"]:
            try:
                data = os.read(p.src, BUF - len(p.buf))
            except BlockingIOError:
                continue
            except OSError as e:
                data = b"" if e.errno == errno.EIO else None
                if data is None:
                    raise
            if not data:
                hang_up(p.link)
                continue
            if not p.buf:
                p.t = max(p.t, now)                # an idle line starts now
            p.buf += data
"""


@dataclass
class MockDevice(FlashDumpingPeer):
    chip: str
    proc: subprocess.Popen
    port: str                 # the PTY path esptool opens
    dump_path: Path
    log_path: Path


@dataclass
class MockFarm:
    root: Path
    devices: list[MockDevice] = field(default_factory=list)
    bridges: list[subprocess.Popen] = field(default_factory=list)
    relays: list[subprocess.Popen] = field(default_factory=list)

    def start(self, chip: str, fast_slip: bool = False, garbled_detects: int = 0) -> MockDevice:
        """A mock on a fresh PTY; `fast_slip` swaps the mock's Python SLIP decoder for one in C (for paced links);
        `garbled_detects`: that many chip detections read noise (ESP32's detect register) before the real answer."""
        n = len(self.devices)
        port_file, dump, log = (self.root / f"mock{n}.{ext}" for ext in ("port", "flash", "log"))
        proc = subprocess.Popen([sys.executable, "-c", _MOCK, chip, str(port_file), str(dump), str(int(fast_slip)),
                                 str(garbled_detects)],
                                stdout=log.open("wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"mock bootloader ({chip}) did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.02)
        device = MockDevice(chip, proc, port_file.read_text().strip(), dump, log)
        self.devices.append(device)
        return device

    def start_many(self, chips: list[str], fast_slip: bool = False) -> list[MockDevice]:
        return [self.start(chip, fast_slip) for chip in chips]

    def tcp_bridge(self, device: MockDevice, port: int | None = None) -> str:
        """Expose a mock's PTY on 127.0.0.1 through socat (one connection); returns the socket:// URL."""
        socat = shutil.which("socat")
        if not socat:
            pytest.fail("socat not found: apt-get install socat")
        port = port or free_port()
        log = self.root / f"socat{len(self.bridges)}.log"
        proc = subprocess.Popen([socat, "-d", "-d", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                                 f"FILE:{device.port},raw,echo=0"], stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        self.bridges.append(proc)
        deadline = time.monotonic() + 10
        while "listening on" not in log.read_text(errors="replace"):   # a probe connection would end it
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"socat did not listen:\n{log.read_text(errors='replace')}")
            time.sleep(0.02)
        return f"socket://127.0.0.1:{port}"

    def uart_links(self, devices: Sequence[FlashDumpingPeer], baud: int = 460800, slice_s: float = 0.002) -> list[str]:
        """A UART-paced PTY in front of each device (one relay process for all); returns the paths to open."""
        proc = subprocess.Popen([sys.executable, "-c", _RELAY, str(baud), str(slice_s), *(d.port for d in devices)],
                                stdout=subprocess.PIPE, stderr=(self.root / f"relay{len(self.relays)}.log").open("wb"),
                                text=True)
        self.relays.append(proc)
        assert proc.stdout is not None
        paths = [proc.stdout.readline().strip() for _ in devices]
        if not all(paths):
            raise AssertionError(f"baud relay did not start (exit {proc.poll()})")
        return paths

    def close(self) -> None:
        for proc in self.relays + self.bridges:
            proc.kill()
            proc.wait()
        for d in self.devices:
            if d.alive:
                d.proc.kill()
                d.proc.wait()


def image_bytes(size: int, seed: int) -> bytes:
    """Firmware-like bytes: random runs mixed with repetitive ones, so esptool compresses (its default path)."""
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += rnd.randbytes(512) if rnd.random() < 0.6 else bytes([rnd.randrange(256)]) * 512
    return bytes(out[:size])


def make_dist(root: Path, board: str, chip: str, size: int = 96 * 1024, seed: int = 1,
              offset: int | None = None, flash_size: str = "4MB") -> Path:
    """A finished dist/<BOARD>/ for an ESP board: firmware.bin + build.json (as workshop.build writes it).

    Real ESP builds need Docker + ESP-IDF, which this machine lacks: the bytes are synthetic, the
    offset is the chip's bootloader offset from esptool's chip definitions, like Board.flash_regions().
    The inputs hash is one per image's bytes, as a real build's would be: two different images
    never look the same to the registry ("already ready with this image").
    """
    board_dir = root / board
    board_dir.mkdir(parents=True, exist_ok=True)
    firmware = board_dir / "firmware.bin"
    firmware.write_bytes(image_bytes(size, seed))
    mapfile = board_dir / "micropython.map"
    mapfile.write_bytes(b"not flashed")
    if offset is None:
        offset = int(chip_definition(chip).BOOTLOADER_FLASH_OFFSET)
    info = BuildInfo(
        board=board, port="esp8266" if chip == "esp8266" else "esp32", chip=chip,
        chip_name=chip_definition(chip).CHIP_NAME, flash_size=flash_size, mp_board=board, variant=None,
        micropython_version="v1.28.0", micropython_commit="0" * 40, project_version="0.1.0",
        project_commit=None, project_dirty=False, manifest_sha256="0" * 64,
        inputs_sha256=hashlib.sha256(firmware.read_bytes()).hexdigest(),
        frozen_modules=(), toolchain="docker", toolchain_image="espressif/idf:v5.5.1",
        built_at="2026-01-01T00:00:00+00:00", duration_s=1.0,
        artifacts=(Artifact("firmware.bin", sha256_file(firmware), firmware.stat().st_size, offset, True),
                   Artifact(mapfile.name, sha256_file(mapfile), mapfile.stat().st_size, None, False)),
    )
    write_atomic(board_dir / "build.json", info.to_json())
    return board_dir


def assert_flashed(device: MockDevice, image_dir: Path, offset: int) -> None:
    """The device's flash holds the image at its offset, byte for byte, and nothing before it."""
    want = (image_dir / "firmware.bin").read_bytes()
    flash = device.flash()
    got = flash[offset:offset + len(want)]
    if got != want:
        first = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
        raise AssertionError(f"{device.port} ({device.chip}): flash differs from {image_dir.name} "
                             f"first at {offset + first:#x}")
    assert flash[:offset] == b"\xff" * offset, "bytes before the image offset were written"


def assert_untouched(device: MockDevice) -> None:
    assert device.flash() == b"\xff" * MOCK_FLASH_SIZE, f"{device.port}: flash was written"

