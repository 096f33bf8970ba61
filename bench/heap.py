"""Heap held after importing each module of the device stack, next to micropython-lib's, in one run.

Each figure is gc.mem_free() before minus after `import <module>` (gc.collect() before each read)
in a fresh MicroPython process, so nothing imported earlier is shared or counted twice:
  py      our modules/ as .py on the PyPI runtime (MICROPYPATH=<repo>/modules:.frozen)
  frozen  the stack frozen into dist/UNIX/micropython (MICROPYPATH=.frozen), when it is built
  anchor  micropython-lib's umqtt.simple, requests, base64 as .py on the PyPI runtime
plus the whole stack imported together in one process (goal: <= 24 KB on 64-bit unix, frozen),
and what announce holds once it runs (connected to a real mosquitto; goal: <= 2 KB, frozen).

    .venv/bin/python bench/heap.py [MICROPYTHON_LIB_DIR]

MICROPYTHON_LIB_DIR defaults to ~/.cache/workshop-kit/micropython-v1.28.0/lib/micropython-lib
(made by `invoke setup`); it is read, never copied into the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import announce_cost, anchor_lib, frozen_note, mosquitto

REPO = Path(__file__).resolve().parent.parent
PYPI = Path(sys.executable).parent / "micropython"
FROZEN = REPO / "dist" / "UNIX" / "micropython"
GOAL = 24 * 1024

# (module, our file): the clients, then the services (their engineer's files; absent ones are noted)
STACK = [("umqtt.simple", "umqtt/simple.py"), ("umqtt.robust", "umqtt/robust.py"), ("urequests", "urequests.py"),
         ("requests", "requests.py"), ("base64", "base64.py"), ("ntptime", "ntptime.py"), ("wifi", "wifi.py"),
         ("mdns", "mdns.py"), ("telnet", "telnet.py"), ("webserver", "webserver.py"), ("announce", "announce.py"),
         ("workshop_boot", "workshop_boot.py")]
ANCHORS = {"umqtt.simple": "micropython/umqtt.simple/umqtt/simple.py",
           "requests": "python-ecosys/requests/requests/__init__.py",
           "base64": "python-stdlib/base64/base64.py"}

# urequests resolves its attributes from requests on first use: touch one, or the figure is a stub's.
PROBE = """
import gc
gc.collect()
gc.collect()
a = gc.mem_free()
{imports}
gc.collect()
gc.collect()
print("HELD", a - gc.mem_free())
"""


def _imports(mods: list[str]) -> str:
    lines = []
    for m in mods:
        lines.append(f"import {m}")
        if m == "urequests":
            lines.append("urequests.get")
    return "\n".join(lines)


def held(binary: Path, path: str, mods: list[str]) -> int | str:
    """Bytes held after importing mods in a fresh process, or why it could not be measured."""
    env = dict(os.environ, MICROPYPATH=path, WORKSHOP_CONFIG="/nonexistent/workshop.json")  # boot starts nothing
    proc = subprocess.run([str(binary), "-c", PROBE.format(imports=_imports(mods))], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir(), timeout=60)
    for line in proc.stdout.splitlines():
        if line.startswith("HELD "):
            return int(line.split()[1])
    return "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]


def main(argv: list[str]) -> int:
    lib = anchor_lib(argv, ANCHORS.values())
    if lib is None:
        return 2
    present = [(m, f) for m, f in STACK if (REPO / "modules" / f).exists()]
    for m, f in STACK:
        if (m, f) not in present:
            print(f"note: {m} skipped: modules/{f} not present yet")
    frozen = FROZEN if FROZEN.exists() else None
    if frozen and frozen_note():
        print(frozen_note())
    if not frozen:
        print(f"note: frozen column skipped: {FROZEN.relative_to(REPO)} not built (invoke build --board UNIX)")

    ours_py = f"{REPO / 'modules'}:.frozen"
    with tempfile.TemporaryDirectory() as tmp:
        anchor_dir = Path(tmp)
        for m, rel in ANCHORS.items():
            dst = anchor_dir / (m.replace(".", "/") + ".py")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(lib / rel, dst)
        anchor_py = f"{anchor_dir}:.frozen"

        print(f"runtime: {PYPI} (py, anchor); frozen: {frozen or '-'}; anchor: micropython-lib at {lib}")
        print(f"{'module':16} {'py B':>8} {'frozen B':>9} {'anchor B':>9} {'py/anchor':>10} {'frozen/anchor':>14}")
        rows = {}
        for m, _ in present:
            py = held(PYPI, ours_py, [m])
            fz = held(frozen, ".frozen", [m]) if frozen else "-"
            an = held(PYPI, anchor_py, [m]) if m in ANCHORS else "-"
            rows[m] = (py, fz, an)

            def ratio(x, y):
                return f"{x / y:.2f}" if isinstance(x, int) and isinstance(y, int) and y else "-"

            print(f"{m:16} {py!s:>8} {fz!s:>9} {an!s:>9} {ratio(py, an):>10} {ratio(fz, an):>14}")

        mods = [m for m, _ in present]
        whole_py = held(PYPI, ours_py, mods)
        whole_fz = held(frozen, ".frozen", mods) if frozen else "-"
        anchor_sum = held(PYPI, anchor_py, list(ANCHORS))
        print(f"{'whole stack':16} {whole_py!s:>8} {whole_fz!s:>9} {'-':>9}   ({len(mods)} modules in one process; "
              f"goal <= {GOAL} B)")
        print(f"{'3 anchored':16} {held(PYPI, ours_py, list(ANCHORS))!s:>8} "
              f"{(held(frozen, '.frozen', list(ANCHORS)) if frozen else '-')!s:>9} {anchor_sum!s:>9}"
              "   (umqtt.simple + requests + base64 together)")
        best = whole_fz if isinstance(whole_fz, int) else whole_py
        if isinstance(best, int):
            kind = "frozen" if best is whole_fz else "py (frozen not built)"
            print(f"whole stack {kind}: {best} B = {best / GOAL:.0%} of the {GOAL} B goal")
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
    sys.exit(main(sys.argv))
