"""MQTT and HTTP throughput of our clients against micropython-lib's, same runtime and peers, one run.

Figures: MQTT QoS 0 and QoS 1 messages per second (umqtt.simple publishing to a mosquitto the
script starts on a free loopback port), HTTP requests per second (requests.get + .json() against a
local CPython HTTP server), and heap allocated per operation; each printed next to micropython-lib's
(umqtt.simple, requests at the commit MicroPython v1.28.0 pins) with the ratio ours/anchor. Both
stacks are compiled with the same mpy-cross and run on the same MicroPython binary (the PyPI
runtime), and frozen: ours in dist/UNIX/micropython (`invoke build --board UNIX`), micropython-lib's
in a second UNIX firmware built from the same checkout, make command and base manifest (bench/heap.py
builds the same one; it is kept in ~/.cache/workshop-kit/bench/, built once per checkout and anchor).

    .venv/bin/python bench/throughput.py [MICROPYTHON_LIB_DIR] [--no-frozen-anchor]

MICROPYTHON_LIB_DIR defaults to ~/.cache/workshop-kit/micropython-v1.28.0/lib/micropython-lib
(made by `invoke setup`); it is read, never copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchlib import anchor_firmware, anchor_lib, frozen_note

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

FROZEN = REPO / "dist" / "UNIX" / "micropython"
ANCHOR_FILES = {  # module path -> micropython-lib path
    "umqtt/simple.py": "micropython/umqtt.simple/umqtt/simple.py",
    "requests/__init__.py": "python-ecosys/requests/requests/__init__.py",
}
OURS = ["umqtt/simple.py", "requests.py"]
QOS0_N, QOS1_N, HTTP_N = 5000, 1000, 300

DEVICE = r"""
import sys, gc, time, json
from umqtt.simple import MQTTClient
import requests
HOST = "127.0.0.1"
MQTT = int(sys.argv[1])
HTTP = "http://127.0.0.1:%s/json" % sys.argv[2]
QOS0_N, QOS1_N, HTTP_N = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
r = {}

def rate(n, f):
    gc.collect()
    t = time.ticks_us()
    f(n)
    return n * 1000000 / time.ticks_diff(time.ticks_us(), t)

def alloc(n, f):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    f(n)
    a = gc.mem_alloc() - a
    gc.enable()
    return a / n

c = MQTTClient("bench", HOST, MQTT)
c.connect()
def q0(n):
    for i in range(n):
        c.publish(b"bench/t", b"21.5")
def q1(n):
    for i in range(n):
        c.publish(b"bench/t", b"21.5", qos=1)
q1(5)  # warm up: connection settled, first allocations done
r["mqtt_qos0_msg_per_s"] = rate(QOS0_N, q0)
r["mqtt_qos1_msg_per_s"] = rate(QOS1_N, q1)
r["mqtt_qos0_alloc_B_per_msg"] = alloc(200, q0)
r["mqtt_qos1_alloc_B_per_msg"] = alloc(min(QOS1_N, 20), q1)
c.disconnect()

def get(n):
    for i in range(n):
        x = requests.get(HTTP)
        x.json()
get(3)
r["http_req_per_s"] = rate(HTTP_N, get)
r["http_alloc_B_per_req"] = alloc(20, get)
print(json.dumps(r))
"""


class _JSON(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"temperature": 21.5, "unit": "C"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stack(out: Path, files: dict[str, Path]) -> Path:
    """Source and .mpy trees of one stack under out/: returns the .mpy tree (what runs)."""
    for rel, src in files.items():
        dst = out / "mpy" / Path(rel).with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(BIN / "mpy-cross"), "-o", str(dst), str(src)], check=True, capture_output=True)
    return out / "mpy"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("lib", nargs="?", help="micropython-lib checkout (default: the pinned checkout's lib/micropython-lib)")
    ap.add_argument("--no-frozen-anchor", action="store_true", help="skip the frozen pair (no anchor firmware build)")
    args = ap.parse_args(argv)
    lib = anchor_lib([sys.argv[0]] + ([args.lib] if args.lib else []), ANCHOR_FILES.values())
    if lib is None:
        return 2
    # The frozen pair: ours frozen against micropython-lib's frozen, or no pair at all (ours frozen
    # against the anchor as .mpy is not like for like: .mpy bytecode runs from the heap).
    anchor_fz: Path | str = ("skipped (--no-frozen-anchor)" if args.no_frozen_anchor else
                             "skipped: dist/UNIX not built (invoke build --board UNIX)" if not FROZEN.exists() else
                             anchor_firmware(lib))
    if isinstance(anchor_fz, str):
        print(f"note: frozen pair: {anchor_fz}")
    mosquitto = shutil.which("mosquitto")
    if not mosquitto:
        print("mosquitto not found: apt-get install mosquitto", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        anchor = _stack(tmpd / "anchor", {k: lib / v for k, v in ANCHOR_FILES.items()})
        ours = _stack(tmpd / "ours", {k: REPO / "modules" / k for k in OURS})

        mqtt_port = _free_port()
        conf = tmpd / "mosquitto.conf"
        conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        http = ThreadingHTTPServer(("127.0.0.1", 0), _JSON)
        http.daemon_threads = True
        threading.Thread(target=http.serve_forever, daemon=True).start()
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", mqtt_port), 0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            results = {}
            runs = [("anchor", BIN / "micropython", f"{anchor}:.frozen", "PyPI runtime, micropython-lib .mpy"),
                    ("ours", BIN / "micropython", f"{ours}:.frozen", "PyPI runtime, ours .mpy")]
            if isinstance(anchor_fz, Path):
                if frozen_note():
                    print(frozen_note())
                runs += [("anchor@frozen", anchor_fz, ".frozen", "anchor UNIX firmware, micropython-lib frozen"),
                         ("ours@frozen", FROZEN, ".frozen", "UNIX firmware, ours frozen")]
            for name, binary, path, _ in runs:
                # micropython-lib's QoS 1 publish stalls on Nagle + delayed ACK (~40 ms): fewer messages
                qos1_n = QOS1_N // 20 if name.startswith("anchor") else QOS1_N
                proc = subprocess.run([str(binary), "-c", DEVICE, str(mqtt_port), str(http.server_address[1]),
                                       str(QOS0_N), str(qos1_n), str(HTTP_N)],
                                      env={"MICROPYPATH": path, "PATH": "/usr/bin:/bin"},
                                      capture_output=True, text=True, timeout=600)
                if proc.returncode:
                    print(f"{name} stack failed:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
                    return 1
                results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            broker.kill()
            broker.wait()
            http.shutdown()

    print(f"anchor: micropython-lib at {lib}")
    for name, binary, path, what in runs:
        print(f"  {name:14} {what} ({binary})")
    keys = ("mqtt_qos0_msg_per_s", "mqtt_qos1_msg_per_s", "http_req_per_s", "mqtt_qos0_alloc_B_per_msg",
            "mqtt_qos1_alloc_B_per_msg", "http_alloc_B_per_req")
    pairs = [("anchor", "ours")] + ([("anchor@frozen", "ours@frozen")] if "ours@frozen" in results else [])
    for a_name, o_name in pairs:
        a, o = results[a_name], results[o_name]
        print(f"{'figure (' + o_name + ')':30} {'anchor':>12} {'ours':>12} {'ours/anchor':>12}")
        for key in keys:
            ratio = o[key] / a[key] if a[key] else float("nan")
            print(f"{key:30} {a[key]:12.1f} {o[key]:12.1f} {ratio:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
