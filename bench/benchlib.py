"""What several bench scripts share (the scripts' own folder is on sys.path when they run)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# MicroPython looks in the current folder before .frozen: a stray wifi.py in /tmp was measured
# instead of the frozen module (2.3 KB more, compiled from source). Every runtime a bench starts
# runs in this empty folder of its own.
_EMPTY = tempfile.TemporaryDirectory(prefix="bench-cwd-")
EMPTY_CWD = _EMPTY.name

REPO = Path(__file__).resolve().parent.parent
FROZEN_UNIX = REPO / "dist" / "UNIX" / "micropython"


def frozen_note() -> str:
    """Why the frozen figures may not describe the current modules/, or ''."""
    sys.path.insert(0, str(REPO))
    try:
        from workshop import build

        stale = build.stale_reason("UNIX")
    except Exception as e:  # the figures are still printed; the note says what they are worth
        stale = f"staleness not checked ({e})"
    return f"note: dist/UNIX is stale ({stale}): its figures are those of the last build" if stale else ""


def anchor_lib(argv: list[str], files) -> Path | None:
    """micropython-lib to compare against: argv[1], else the pinned checkout's submodule.
    None (after saying why on stderr) when it lacks one of `files`."""
    sys.path.insert(0, str(REPO))
    from workshop import source

    lib = Path(argv[1]) if len(argv) > 1 else source.default_path() / "lib" / "micropython-lib"
    missing = [p for p in files if not (lib / p).exists()]
    if missing:
        print(f"no micropython-lib at {lib} (missing {missing[0]}): run 'invoke setup' or pass its path",
              file=sys.stderr)
        return None
    return lib


# micropython-lib's clients, the anchors the benches compare ours with.
# module -> (micropython-lib file, its path as imported)
ANCHORS = {"umqtt.simple": ("micropython/umqtt.simple/umqtt/simple.py", "umqtt/simple.py"),
           "umqtt.robust": ("micropython/umqtt.robust/umqtt/robust.py", "umqtt/robust.py"),
           "requests": ("python-ecosys/requests/requests/__init__.py", "requests/__init__.py"),
           "base64": ("python-stdlib/base64/base64.py", "base64.py")}

# The anchor firmware's manifest: ports/unix/manifest.py's stock part, then micropython-lib's clients.
ANCHOR_MANIFEST = """
add_library("unix-ffi", "$(MPY_LIB_DIR)/unix-ffi")
package("mip", base_path="$(MPY_LIB_DIR)/micropython/mip", opt=3)
require("ssl")
include("$(MPY_DIR)/extmod/asyncio")
package("umqtt", base_path="{umqtt}")
package("requests", base_path="$(MPY_LIB_DIR)/python-ecosys/requests")
module("base64.py", base_path="$(MPY_LIB_DIR)/python-stdlib/base64")
"""


def anchor_firmware(lib: Path) -> Path | str:
    """micropython-lib's clients frozen into UNIX firmware built like dist/UNIX (same checkout, make
    command and base manifest, its own build tree): the binary, or why there is none."""
    sys.path.insert(0, str(REPO))
    from workshop import build, config, source

    try:
        checkout = source.locate(None, ["unix"])
        board = config.get_board("UNIX")
        plan = build.plan(board, checkout, "native")
    except Exception as e:  # the other figures are still printed
        return f"no anchor firmware: {e}"
    *_, mpy_cross_step, port_step = plan.steps
    command = [a for a in build.image_argv(port_step) if not a.startswith(("FROZEN_MANIFEST=", "BUILD="))]
    # The make command is in the key: dist/UNIX built with other flags (ports/unix/port.toml)
    # needs an anchor built with them too, or the two are not like for like.
    key = hashlib.sha256(checkout.commit.encode() + ANCHOR_MANIFEST.encode() + "\0".join(command).encode() +
                         b"".join((lib / f).read_bytes() for f, _ in ANCHORS.values())).hexdigest()[:12]
    home = config.cache_dir() / "bench" / f"unix-anchor-frozen-{key}"
    binary = home / "micropython"
    if binary.exists():
        return binary
    umqtt = home / "src"
    (umqtt / "umqtt").mkdir(parents=True, exist_ok=True)
    for mod in ("umqtt.simple", "umqtt.robust"):
        shutil.copy(lib / ANCHORS[mod][0], umqtt / ANCHORS[mod][1])
    manifest = home / "manifest.py"
    manifest.write_text(ANCHOR_MANIFEST.format(umqtt=umqtt))
    argv = [a for a in port_step.argv if not a.startswith(("FROZEN_MANIFEST=", "BUILD="))]
    argv += [f"FROZEN_MANIFEST={manifest}", f"BUILD={home / 'build'}"]
    env = dict(os.environ, **{k: v for k, v in port_step.env if k != build.IDENTITY_ENV})
    print(f"building the anchor firmware (once) in {home} ...", flush=True)
    for step in (mpy_cross_step.argv, argv):
        proc = subprocess.run(step, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"anchor firmware build failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    shutil.copy(home / "build" / "micropython", binary)
    return binary


# announce's cost on a device: heap held once it runs (connected, first status out) and the CPU
# time of its ticks, measured inside one MicroPython process against a real mosquitto.
ANNOUNCE_PROBE = """
import gc, time, json
import wsconfig, announce, select, socket
gc.collect(); gc.collect()
a = gc.mem_free()
announce.start(json.loads({cfg!r}), ip=lambda: "127.0.0.1")
for _ in range(40):
    wsconfig.serve(50)
    if announce._state == 3:
        break
gc.collect(); gc.collect()
print("HELD", a - gc.mem_free(), announce._state)
ts = []
for i in range(200):
    t = time.ticks_us()
    announce._tick(None)
    ts.append(time.ticks_diff(time.ticks_us(), t))
    time.sleep_ms(2)
ts.sort()
print("TICK", ts[len(ts) // 2], ts[-1])
a = b = i = 0  # globals created before measuring (a new one can grow the module dict)
gc.collect()
gc.disable()
a = gc.mem_alloc()
while i < 1000:
    announce._tick(None)
    i += 1
b = gc.mem_alloc()
gc.enable()
print("ALLOC", b - a, i)
pub = []
for i in range(20):
    announce._t = time.ticks_add(time.ticks_ms(), -10 ** 6)   # due: this tick publishes
    t = time.ticks_us()
    announce._tick(None)
    pub.append(time.ticks_diff(time.ticks_us(), t))
pub.sort()
print("PUBLISH", pub[len(pub) // 2], pub[-1])
announce.stop()
"""


def mosquitto(port: int, directory: Path):
    """A throw-away mosquitto on 127.0.0.1:port (the caller kills it)."""
    import shutil
    import socket
    import subprocess
    import time

    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.3).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("mosquitto did not start")
            time.sleep(0.05)


def announce_cost(binary: Path, path: str, broker_port: int) -> dict[str, int | str]:
    """{'held': B, 'tick_median_us', 'tick_max_us', 'idle_tick_alloc_b', 'publish_median_us', 'publish_max_us'} or {'error': ...}."""
    import json
    import os
    import subprocess

    cfg = json.dumps({"hostname": "bench-1", "mqtt": {"broker": "127.0.0.1", "port": broker_port},
                      "announce": {"interval_s": 30}})
    env = dict(os.environ, MICROPYPATH=path, WORKSHOP_CONFIG="/nonexistent/workshop.json")
    proc = subprocess.run([str(binary), "-c", ANNOUNCE_PROBE.format(cfg=cfg)], capture_output=True, text=True,
                          env=env, cwd=EMPTY_CWD, timeout=60)
    out: dict[str, int | str] = {}
    for line in proc.stdout.splitlines():
        w = line.split()
        if w[0] == "HELD":
            out["held"] = int(w[1])
            if w[2] != "3":
                out["error"] = "announce did not connect"
        elif w[0] == "TICK":
            out["tick_median_us"], out["tick_max_us"] = int(w[1]), int(w[2])
        elif w[0] == "ALLOC":
            out["idle_tick_alloc_b"] = int(w[1]) // int(w[2])
        elif w[0] == "PUBLISH":
            out["publish_median_us"], out["publish_max_us"] = int(w[1]), int(w[2])
    if "held" not in out:
        out["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
    return out
