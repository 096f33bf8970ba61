"""Bulk flashing figures, one run: parallel scaling and overhead against plain esptool.

    .venv/bin/python bench/flash.py [--size KB] [--repeat R]

Anchors, measured in the same run on the same machine with the same image:
  * N/1   wall time of flash_all() on N = 1, 2, 4, 8 mock devices / on 1 device (goal: <= 1.3 at N = 8)
  * CLI   `invoke flash` on 1 device / `python -m esptool write-flash` on 1 device (both fresh processes)
  * API   flash_all() in-process on 1 device / `python -m esptool write-flash` on 1 device
Devices are esp32-mock-bootloader processes on PTYs (tests/host/flash/flash_peers.py), fresh for every
run: the mock ends its session 3 s after a write, so a reused one could drop the next run mid-way.
The PTY has no baud limit: time is connection set-up, protocol round trips and CPU (esptool's zlib,
the mock's Python SLIP decoder), so the mocks compete with esptool for the same cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "host" / "flash")]

from flash_peers import MockFarm, make_dist  # noqa: E402

from workshop import flash  # noqa: E402

CHIP, BOARD, OFFSET = "esp32", "ESP32_GENERIC", 0x1000


CPU: dict[int, list[tuple[float, float]]] = {}     # N -> [(our CPU s, mocks' CPU s)] per run


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def run_flash_all(root: Path, image: flash.FlashImage, n: int, tag: str) -> float:
    farm = MockFarm(root / f"mocks-{tag}")
    farm.root.mkdir()
    try:
        ports = [d.port for d in farm.start_many([CHIP] * n)]
        mocks_before = sum(_proc_cpu(d.proc.pid) for d in farm.devices)
        ours0, t = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        report = flash.flash_all(ports, image, log_dir=root / f"logs-{tag}")
        wall, ours = time.perf_counter() - t, _cpu(resource.RUSAGE_SELF) - ours0
        mocks = sum(_proc_cpu(d.proc.pid) for d in farm.devices) - mocks_before
        CPU.setdefault(n, []).append((ours, mocks))
        if not report.ok:
            raise SystemExit(f"bench run {tag} failed: {[(r.port, r.error) for r in report.failed]}")
        return wall
    finally:
        farm.close()


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a live process from /proc (Linux), 0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_cli(root: Path, argv_for: callable, tag: str) -> float:
    farm = MockFarm(root / f"mocks-{tag}")
    farm.root.mkdir()
    try:
        port = farm.start(CHIP).port
        argv = argv_for(port)
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"{argv[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return wall
    finally:
        farm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image size in KB (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-flash-"))
    image_dir = make_dist(root / "dist", BOARD, CHIP, size=args.size * 1024)
    image = flash.FlashImage.from_dist(image_dir)
    fw = image_dir / "firmware.bin"
    invoke = Path(sys.executable).parent / "invoke"

    def median(fn, *a) -> float:
        *head, tag = a
        return statistics.median(fn(*head, f"{tag}-{i}") for i in range(args.repeat))

    print(f"bench/flash.py: {args.size} KB image, {CHIP} mock devices on PTYs, {os.cpu_count()} CPU(s), "
          f"median of {args.repeat}")
    walls = {n: median(run_flash_all, root, image, n, f"n{n}") for n in (1, 2, 4, 8)}
    for n, w in walls.items():
        ours = statistics.median(c[0] for c in CPU[n])
        mocks = statistics.median(c[1] for c in CPU[n])
        print(f"  flash_all N={n}: {w:6.2f} s   N/1 = {w / walls[1]:.2f}   CPU: flasher {ours:5.2f} s, "
              f"mocks {mocks:5.2f} s, (sum / cores) / wall = {(ours + mocks) / (os.cpu_count() or 1) / w:.2f}"
              + ("   (goal N/1 <= 1.3)" if n == 8 else ""))

    esptool_argv = lambda port: [sys.executable, "-m", "esptool", "--port", port, "--baud", "460800",  # noqa: E731
                                 "write-flash", hex(OFFSET), str(fw)]
    invoke_argv = lambda port: [str(invoke), "-r", str(REPO), "flash", "--board", BOARD, "--dist",  # noqa: E731
                                str(root / "dist"), "--ports", port, "--logs", str(root / "logs-cli"),
                                "--report", str(root / "cli.json")]
    plain = median(run_cli, root, esptool_argv, "esptool")
    ours_cli = median(run_cli, root, invoke_argv, "invoke")
    print(f"  plain esptool CLI, 1 device: {plain:6.2f} s   (anchor)")
    print(f"  invoke flash,     1 device: {ours_cli:6.2f} s   CLI/esptool = {ours_cli / plain:.2f}")
    print(f"  flash_all() API,  1 device: {walls[1]:6.2f} s   API/esptool = {walls[1] / plain:.2f}"
          "   (no interpreter start-up; adds a second md5 verify)")


if __name__ == "__main__":
    main()
