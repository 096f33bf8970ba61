"""Station figures, one run: boards from "appears" to "ready", against the same steps run by hand.

    .venv/bin/python bench/station.py [--size KB] [--link-baud B] [--ns 1,4,8]

Each board is a tests/host/station peer: esp32-mock-bootloader (real esptool drives it) until its
flash ends, then the frozen UNIX firmware (dist/UNIX/micropython) as its MicroPython REPL. Every
link is UART-paced at --link-baud (the relay of bench/flash.py, tests/host/flash/flash_peers.py),
so a flash waits on the line as with a USB-serial bridge. Boards appear as links in a folder
that `station.watch` polls (what `invoke station --ports-dir` does). The pipeline per board:
flash (verify) -> provision (hostname from the registry's sticker) -> smoke -> ready.

Figures (goal in brackets):
  * N/1      wall time from N boards appearing together to the last one ready, over N = 1 [<= 1.3 at N = 8]
  * by hand  station on 1 board / flash_all + provision_all + smoke_all called one after the other on
             1 board (same image, same kind of peer, fresh peers each) [<= 1.1]
  * detect   plug -> the station's "appeared" event, per board [<= 1 s]
  * hung     a default stub that never greets: its stub stage starting -> the retry with the legacy
             stub [<= 5 s]
The machine is shared: the N = 8 run has 8 mocks, 8 MicroPython processes, the relay and esptool
on its cores. Numbers are one run each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "host" / "flash"),
                str(REPO / "tests" / "host" / "station")]

from flash_peers import MockFarm, make_dist  # noqa: E402
from station_peers import FROZEN_UNIX, BoardFarm, HotPlug  # noqa: E402

from workshop import flash, smoke, station  # noqa: E402
from workshop.provision import ProvisionConfig, provision_all  # noqa: E402
from workshop.registry import Registry  # noqa: E402


def unix_expected(_image: flash.FlashImage) -> smoke.Expected:
    return smoke.Expected.from_build(REPO / "dist" / "UNIX")


def plan(root: Path, image: flash.FlashImage) -> station.Plan:
    return station.Plan(images=image, provision=ProvisionConfig(hostname="lab-{index:02d}"), smoke=True,
                        registry=Registry(root / "workshop.db"), log_dir=root / "logs", expected=unix_expected)


def boards(root: Path, n: int, baud: int, **kw) -> tuple[BoardFarm, MockFarm, list[str], list]:
    farm = BoardFarm(root / "boards")
    farm.root.mkdir(parents=True)
    peers = [farm.start("esp32", fast_slip=True, **kw) for _ in range(n)]
    relay = MockFarm(root / "relay")
    relay.root.mkdir()
    links = relay.uart_links(peers, baud)      # MockDevice-like: .port is all the relay reads
    return farm, relay, links, peers


def run_station(root: Path, image: flash.FlashImage, n: int, baud: int) -> tuple[float, list[float], list[str]]:
    farm, relay, links, _ = boards(root, n, baud)
    hub = HotPlug(root / "by-id")
    appeared: dict[str, float] = {}
    ready: dict[str, float] = {}

    def on_event(e: station.StationEvent) -> None:
        if e.stage == "appeared":
            appeared[e.key] = time.monotonic()
        if e.final:
            ready[e.key] = time.monotonic()

    try:
        result: dict[str, station.StationReport] = {}
        t = threading.Thread(target=lambda: result.setdefault("r", station.watch(
            plan(root, image), station.FolderSource(hub.folder), on_event=on_event, stop_after=n)), daemon=True)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        plugged = {}
        for i, link in enumerate(links):
            dest = hub.folder / f"usb-Silicon_Labs_CP2102_{i:04d}-if00-port0"
            dest.symlink_to(link)
            plugged[str(dest)] = time.monotonic()
        t.join(timeout=600)
        report = result["r"]
        bad = [f"{r.key}: {r.state} {r.reason}" for r in report.results if not r.ok]
        wall = max(ready.values()) - t0
        detect = [appeared[k] - plugged[k] for k in appeared]
        return wall, detect, bad
    finally:
        relay.close()
        farm.close()


def run_by_hand(root: Path, image: flash.FlashImage, baud: int) -> tuple[float, list[str]]:
    farm, relay, links, _ = boards(root, 1, baud)
    try:
        t0 = time.monotonic()
        rep = flash.flash_all(links, image, log_dir=root / "logs")
        prov = provision_all(links, ProvisionConfig(hostname="lab-{index:02d}"), connect_timeout=20.0)
        smk = smoke.smoke_all(links, unix_expected(image))
        wall = time.monotonic() - t0
        bad = [x for x in ([rep.results[0].error] if not rep.ok else []) +
               ([prov[0].error] if not prov[0].ok else []) + (["smoke failed"] if not smk[0].ok else []) if x]
        return wall, bad
    finally:
        relay.close()
        farm.close()


def run_hung(root: Path, image: flash.FlashImage) -> float:
    farm = BoardFarm(root / "boards")
    farm.root.mkdir(parents=True)
    peer = farm.start("esp32", runtime=None, hang_stub=True)
    marks: dict[str, float] = {}

    def on_event(e: flash.FlashEvent) -> None:
        if e.stage is flash.Stage.STUB and "stub" not in marks:
            marks["stub"] = time.monotonic()
        if e.stage is flash.Stage.RETRYING and "retry" not in marks:
            marks["retry"] = time.monotonic()

    try:
        rep = flash.flash_all([peer.port], image, on_event=on_event, log_dir=root / "logs")
        if not rep.ok:
            raise SystemExit(f"hung-stub board not flashed: {rep.results[0].error}")
        return marks["retry"] - marks["stub"]
    finally:
        farm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="image size in KB (default 256)")
    ap.add_argument("--link-baud", type=int, default=460800, help="UART pacing of every link (default 460800)")
    ap.add_argument("--ns", default="1,4,8", help="board counts (default 1,4,8)")
    args = ap.parse_args()
    if not FROZEN_UNIX.exists():
        raise SystemExit("dist/UNIX/micropython is not built: .venv/bin/invoke build --board UNIX")
    ns = [int(x) for x in args.ns.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-station-") as tmp:
        base = Path(tmp)
        image = flash.FlashImage.from_dist(make_dist(base / "dist", "ESP32_GENERIC", "esp32", size=args.size * 1024))
        print(f"image {args.size} KB, links paced at {args.link_baud} baud, pipeline flash -> provision -> smoke")
        walls: dict[int, float] = {}
        detects: list[float] = []
        for n in ns:
            wall, detect, bad = run_station(base / f"station{n}", image, n, args.link_baud)
            walls[n] = wall
            detects += detect
            print(f"  N={n}: {wall:6.2f} s appear -> last ready" + (f"  FAILED: {bad}" if bad else ""))
        one = walls[min(ns)]
        for n in ns:
            print(f"  N={n}/N={min(ns)} = {walls[n] / one:.2f}")
        hand, bad = run_by_hand(base / "hand", image, args.link_baud)
        single, _, bad1 = run_station(base / "station-again", image, 1, args.link_baud)
        print(f"by hand (flash_all + provision_all + smoke_all, 1 board): {hand:.2f} s" + (f" FAILED {bad}" if bad else ""))
        print(f"station, 1 board (again, fresh peer): {single:.2f} s -> station / by hand = {single / hand:.2f}")
        print(f"detect: plug -> appeared, {len(detects)} boards: median {statistics.median(detects):.2f} s, "
              f"max {max(detects):.2f} s")
        hung = run_hung(base / "hung", image)
        print(f"hung default stub -> legacy-stub retry: {hung:.2f} s")


if __name__ == "__main__":
    main()
