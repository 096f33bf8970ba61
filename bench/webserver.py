"""Requests per second: our webserver vs microdot 2.7 (PyPI), same "hello" route, same MicroPython
runtime, measured with wrk (keep-alive) and ab (no keep-alive and -k), one run each, as ratios.

    .venv/bin/python bench/webserver.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MP = Path(sys.executable).parent / "micropython"

OURS = """
from webserver import App
app = App()
@app.route("/")
def hello(req):
    return "hello"
app.run("127.0.0.1", {port})
"""
MICRODOT = """
from microdot import Microdot
app = Microdot()
@app.route("/")
async def hello(req):
    return "hello"
app.run(host="127.0.0.1", port={port})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(code: str, path: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = subprocess.Popen([str(MP), "-c", code.format(port=port)], env=dict(os.environ, MICROPYPATH=path),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise SystemExit("server did not start")


def wrk(port: int, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m is None:
        raise SystemExit(f"wrk printed no Requests/sec:\n{out}")
    return float(m.group(1))


def ab(port: int, seconds: int, keep: bool) -> float:
    args = ["ab", "-q", "-c", "4", "-t", str(seconds), "-n", "1000000"] + (["-k"] if keep else [])
    out = subprocess.run(args + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    m = re.search(r"Requests per second:\s+([\d.]+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if not m:
        raise SystemExit(out)
    return float(m.group(1)) if not failed or failed.group(1) == "0" else -float(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=5)
    a = ap.parse_args()
    for tool in ("wrk", "ab"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} missing: apt-get install {'wrk' if tool == 'wrk' else 'apache2-utils'}")
    import microdot
    mdir = tempfile.mkdtemp()
    Path(mdir, "microdot").symlink_to(Path(microdot.__file__).parent)  # the PyPI package, used as is
    servers = {"webserver": (OURS, f"{REPO / 'modules'}:.frozen"), "microdot 2.7": (MICRODOT, f"{mdir}:.frozen")}
    rows = {}
    for name, (code, path) in servers.items():
        p, port = start(code, path)
        try:
            rows[name] = (wrk(port, a.seconds), ab(port, a.seconds, True), ab(port, a.seconds, False))
        finally:
            p.kill()
            p.wait()
    print(f"MicroPython unix runtime {MP}, 4 concurrent clients, {a.seconds} s per run (negative = had failures)")
    print(f"{'server':14} {'wrk keep-alive':>15} {'ab -k':>10} {'ab (close)':>11}")
    for name, r in rows.items():
        print(f"{name:14} {r[0]:15.0f} {r[1]:10.0f} {r[2]:11.0f}")
    o, m = rows["webserver"], rows["microdot 2.7"]
    print("ratio webserver/microdot: wrk keep-alive %.2f, ab -k %.2f, ab without keep-alive %.2f"
          % (o[0] / m[0], o[1] / m[1], o[2] / m[2]))


if __name__ == "__main__":
    main()
