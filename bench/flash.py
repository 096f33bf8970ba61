"""Bulk flashing figures, one run: parallel scaling and overhead against plain esptool.

    .venv/bin/python bench/flash.py [--size KB] [--repeat R] [--link-baud B] [--slice-ms MS]

Anchors, measured in the same run on the same machine with the same image:
  * N/1   wall time of flash_all() on N = 1, 2, 4, 8 mock devices / on 1 device (goal: <= 1.3 at N = 8),
          for two kinds of link (below)
  * CLI   `invoke flash` on 1 device / `python -m esptool write-flash` on 1 device (both fresh processes)
  * API   flash_all() in-process on 1 device / `python -m esptool write-flash` on 1 device
Devices are esp32-mock-bootloader processes on PTYs (tests/host/flash/flash_peers.py), fresh for every
run: the mock ends its session 3 s after a write, so a reused one could drop the next run mid-way.

Links:
  * raw PTY: no baud limit. Time is connection set-up, protocol round trips and CPU (esptool's zlib,
    the mock's Python SLIP decoder), so the mocks compete with esptool for the same cores.
  * UART-paced: one relay process (MockFarm.uart_links) sits between each mock's PTY and a new PTY
    the flasher opens and carries bytes both ways at --link-baud (8N1), like a USB-serial bridge to
    a real board: a flash mostly waits on the line. The relay paces the whole session at that baud
    (the PTYs ignore esptool's change_baud; a real board syncs and loads the stub at 115200 first).
    The mocks here use a C SLIP decoder: the package's re-decodes its buffer in Python on every read,
    which a UART's small reads make quadratic (a cost of the mock, not of a board).
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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "host" / "flash")]

from flash_peers import MockFarm, make_dist  # noqa: E402

from workshop import flash  # noqa: E402

CHIP, BOARD, OFFSET = "esp32", "ESP32_GENERIC", 0x1000
NS = (1, 2, 4, 8)


@dataclass(frozen=True)
class Link:
    """How the flasher reaches the mocks: straight to their PTYs, or through the UART-paced relay."""

    label: str
    baud: int | None = None          # None = raw PTY
    slice_s: float = 0.002
    fast_slip: bool = False          # the mock's SLIP decoder in C (see the module doc)

    def ports(self, farm: MockFarm, n: int) -> list[str]:
        devices = farm.start_many([CHIP] * n, fast_slip=self.fast_slip)
        if self.baud is None:
            return [d.port for d in devices]
        return farm.uart_links(devices, self.baud, self.slice_s)


@dataclass(frozen=True)
class Cpu:
    ours: float      # the flasher process (flash_all's threads: esptool, zlib, md5)
    mocks: float
    relay: float


CPU: dict[tuple[str, int], list[Cpu]] = {}


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a live process from /proc (Linux), 0 if unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def run_flash_all(root: Path, image: flash.FlashImage, link: Link, n: int, tag: str) -> float:
    farm = MockFarm(root / f"mocks-{tag}")
    farm.root.mkdir()
    try:
        ports = link.ports(farm, n)
        mocks0 = sum(_proc_cpu(d.proc.pid) for d in farm.devices)
        relay0 = sum(_proc_cpu(r.pid) for r in farm.relays)
        ours0, t = _cpu(resource.RUSAGE_SELF), time.perf_counter()
        report = flash.flash_all(ports, image, log_dir=root / f"logs-{tag}")
        wall, ours = time.perf_counter() - t, _cpu(resource.RUSAGE_SELF) - ours0
        mocks = sum(_proc_cpu(d.proc.pid) for d in farm.devices) - mocks0
        relay = sum(_proc_cpu(r.pid) for r in farm.relays) - relay0
        CPU.setdefault((link.label, n), []).append(Cpu(ours, mocks, relay))
        if not report.ok:
            raise SystemExit(f"bench run {tag} failed: {[(r.port, r.error) for r in report.failed]}")
        return wall
    finally:
        farm.close()


def run_cli(root: Path, argv_for: Callable[[str], list[str]], link: Link, tag: str) -> float:
    farm = MockFarm(root / f"mocks-{tag}")
    farm.root.mkdir()
    try:
        argv = argv_for(link.ports(farm, 1)[0])
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"{argv[:4]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return wall
    finally:
        farm.close()


def print_table(link: Link, walls: dict[int, float], note: str) -> None:
    cores = os.cpu_count() or 1
    print(f"\n{link.label}: {note}")
    print("     N   wall s    N/1   flasher CPU s (per device)   mocks CPU s   relay CPU s   CPU sum / cores / wall")
    for n, w in walls.items():
        runs = CPU[(link.label, n)]
        ours, mocks, relay = (statistics.median(getattr(c, f) for c in runs) for f in ("ours", "mocks", "relay"))
        print(f"  N={n:<2} {w:7.2f}  {w / walls[min(walls)]:5.2f}   {ours:5.2f} ({ours / n:5.3f})"
              f"{'':15}{mocks:6.2f}   {relay:11.2f}   {(ours + mocks + relay) / cores / w:10.2f}"
              + ("   (goal N/1 <= 1.3)" if n == 8 else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image size in KB (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--link-baud", type=int, default=460800, help="baud rate of the UART-paced links (default 460800)")
    ap.add_argument("--slice-ms", type=float, default=2.0, help="the relay's time slice in ms (default 2)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-flash-"))
    image_dir = make_dist(root / "dist", BOARD, CHIP, size=args.size * 1024)
    image = flash.FlashImage.from_dist(image_dir)
    fw = image_dir / "firmware.bin"
    invoke = Path(sys.executable).parent / "invoke"
    raw = Link("raw PTY")
    uart = Link("UART-paced", args.link_baud, args.slice_ms / 1000, fast_slip=True)
    stock = Link("UART-paced, stock mock", args.link_baud, args.slice_ms / 1000)

    def median(fn, *a) -> float:
        *head, tag = a
        return statistics.median(fn(*head, f"{tag}-{i}") for i in range(args.repeat))

    print(f"bench/flash.py: {args.size} KB image, {CHIP} mock devices, {os.cpu_count()} CPU(s), "
          f"median of {args.repeat}; CPU figures are for the whole flash_all() call")
    walls = {link: {n: median(run_flash_all, root, image, link, n, f"{i}-n{n}") for n in ns}
             for i, (link, ns) in enumerate(((raw, NS), (uart, NS), (stock, (1, 8))))}
    print_table(raw, walls[raw], "no baud limit, each flash is pure CPU (flasher and mocks share the cores)")
    print_table(uart, walls[uart],
                f"{args.link_baud} baud 8N1 = {args.link_baud / 10 / 1000:.1f} kB/s each way, "
                f"relay time slice {args.slice_ms:g} ms, mocks with a C SLIP decoder")
    wire = len(zlib.compress(fw.read_bytes(), 9))      # what esptool sends for the image
    print(f"  the image alone is {wire} bytes compressed = {wire / (args.link_baud / 10):.2f} s on this line; "
          "the rest is sync, stub, round trips, resets")
    print("  simplification: the relay holds every link at this baud for the whole session. A real board syncs and\n"
          "  receives the stub at 115200 (ROM) until esptool's change_baud, which PTYs ignore; so connect + stub\n"
          "  are faster here than on a board (by the same amount for every N). A board's flash erase/program time\n"
          "  is not modelled either (the mock writes instantly): real boards wait longer, in parallel.")
    print_table(stock, walls[stock], f"the same {args.link_baud} baud links, the mocks' own Python SLIP decoder (quadratic on small reads)")

    esptool_argv = lambda port: [sys.executable, "-m", "esptool", "--port", port, "--baud", "460800",  # noqa: E731
                                 "write-flash", hex(OFFSET), str(fw)]
    invoke_argv = lambda port: [str(invoke), "-r", str(REPO), "flash", "--board", BOARD, "--dist",  # noqa: E731
                                str(root / "dist"), "--ports", port, "--logs", str(root / "logs-cli"),
                                "--report", str(root / "cli.json")]
    plain = median(run_cli, root, esptool_argv, raw, "esptool")
    ours_cli = median(run_cli, root, invoke_argv, raw, "invoke")
    plain_uart = median(run_cli, root, esptool_argv, uart, "esptool-uart")
    print("\noverhead against plain esptool, 1 device, same image:")
    print(f"  raw PTY      plain esptool CLI: {plain:6.2f} s   (anchor)")
    print(f"  raw PTY      invoke flash:      {ours_cli:6.2f} s   CLI/esptool = {ours_cli / plain:.2f}")
    print(f"  raw PTY      flash_all() API:   {walls[raw][1]:6.2f} s   API/esptool = {walls[raw][1] / plain:.2f}"
          "   (no interpreter start-up; adds a second md5 verify)")
    print(f"  {uart.label}   plain esptool CLI: {plain_uart:6.2f} s   (anchor)")
    print(f"  {uart.label}   flash_all() API:   {walls[uart][1]:6.2f} s   API/esptool = "
          f"{walls[uart][1] / plain_uart:.2f}")


if __name__ == "__main__":
    main()
