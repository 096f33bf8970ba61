"""Heap budgets of the device stack on the 64-bit unix MicroPython runtime.

1. Heap held with every stack module imported (goal <= 24 KB): gc.mem_alloc() after importing
   wifi, mdns, telnet, webserver, workshop_boot's helpers, umqtt.simple, urequests/requests,
   base64, ntptime, minus the bare interpreter's.
2. The smallest `-X heapsize` in which one process does an MQTT publish/subscribe round trip
   through a real mosquitto, an HTTP GET (urequests) from a local CPython server, and serves a
   web request (webserver) to curl. Found by bisection, 1 KB resolution.

    .venv/bin/python bench/min_heapsize.py
"""

from __future__ import annotations

import argparse
import http.server
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MP = Path(sys.executable).parent / "micropython"
PATH = f"{REPO / 'modules'}:.frozen"

HELD = """
import gc
gc.collect()
a = gc.mem_alloc()
import wsconfig, wifi, mdns, telnet, webserver
import umqtt.simple, requests, urequests, base64, ntptime
urequests.get  # resolve the lazy alias
gc.collect()
print(gc.mem_alloc() - a)
"""

ALL = """
import gc, asyncio
from umqtt.simple import MQTTClient
import urequests
from webserver import App
got = []
c = MQTTClient("heapbench", "127.0.0.1", {mqtt})
c.set_callback(lambda t, m: got.append(m))
c.connect()
c.subscribe(b"bench/t")
c.publish(b"bench/t", b"ping")
c.wait_msg()
assert got == [b"ping"], got
c.disconnect()
r = urequests.get("http://127.0.0.1:{http}/")
assert r.status_code == 200 and r.text == "peer", r.text
r.close()
app = App()
done = asyncio.Event()
@app.route("/")
def hello(req):
    done.set()
    return "served"
async def main():
    await app.start("127.0.0.1", {web})
    print("READY")
    await done.wait()
    await asyncio.sleep_ms(50)
asyncio.run(main())
print("ALL OK")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Peer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"peer")

    def log_message(self, *a):
        pass


def attempt(binary: Path, path: str, heap_kb: int, mqtt: int, http_port: int) -> bool:
    web = free_port()
    code = ALL.format(mqtt=mqtt, http=http_port, web=web)
    p = subprocess.Popen([str(binary), "-X", f"heapsize={heap_kb}K", "-c", code], env=dict(os.environ, MICROPYPATH=path),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if "READY" not in line:
            p.wait(10)
            return False
        subprocess.run(["curl", "-s", "-m", "5", f"http://127.0.0.1:{web}/"], capture_output=True, timeout=10)
        out = p.communicate(timeout=10)[0]
        return "ALL OK" in out
    except subprocess.TimeoutExpired:
        return False
    finally:
        p.kill()
        p.wait()


def held(binary: Path, path: str, label: str) -> None:
    r = subprocess.run([str(binary), "-c", HELD], env=dict(os.environ, MICROPYPATH=path), capture_output=True,
                       text=True)
    if r.returncode:
        print(f"{label}: stack import failed:", r.stdout, r.stderr)
        return
    n = int(r.stdout.split()[-1])
    print(f"heap held with every stack module imported, {label}: {n} B = {n / 1024:.1f} KB "
          f"(goal <= 24 KB: {'met' if n <= 24 * 1024 else 'NOT met'})")


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help; no options
    # Source modules put their bytecode on the heap; frozen ones (what a board runs) keep it in
    # flash, so the budget is judged on the frozen UNIX firmware when it is built.
    runtimes = [(MP, PATH, "source modules/ on the PyPI runtime (bytecode on the heap)")]
    frozen = REPO / "dist" / "UNIX" / "micropython"
    if frozen.exists():
        runtimes.append((frozen, ".frozen", "frozen UNIX firmware (bytecode in the image)"))
    else:
        print("frozen UNIX firmware not built (invoke build --board UNIX): frozen figures not measured")
    for binary, path, label in runtimes:
        held(binary, path, label)
    tmp = Path(tempfile.mkdtemp())
    mport = free_port()
    (tmp / "m.conf").write_text(f"listener {mport} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp / "m.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Peer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    time.sleep(0.3)
    try:
        for binary, path, label in runtimes:
            if not attempt(binary, path, 1024, mport, srv.server_port):
                raise SystemExit(f"{label}: the scenario fails even with 1 MB of heap")
            lo, hi = 4, 1024  # lo fails (assumed), hi works
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if attempt(binary, path, mid, mport, srv.server_port):
                    hi = mid
                else:
                    lo = mid
            print(f"smallest -X heapsize for MQTT pub/sub + HTTP GET + a served web request in one process, "
                  f"{label}: {hi} KB")
    finally:
        broker.kill()
        srv.shutdown()


if __name__ == "__main__":
    main()
