"""Seconds per device for provision and for smoke (no network), N = 1 and N = 4 in parallel, one run.

Peers: the unix MicroPython on PTYs through pyserial (tests/e2e/repl/peers.py), default pacing
(~2.4 KB/s, safe for a real ESP32 UART); the frozen UNIX firmware when dist/UNIX is built, else
the PyPI runtime (smoke then reports the stack 'not frozen': the timing is the same work).
Run: .venv/bin/python bench/smoke.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "e2e" / "repl")]

import peers  # noqa: E402

from workshop import smoke  # noqa: E402
from workshop.config import get_board  # noqa: E402
from workshop.provision import ProvisionConfig, Secret, provision_all  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)  # --help; no options
    runtime = "frozen" if peers.FROZEN_UNIX.exists() else "pypi"
    expected = (smoke.Expected.from_build(REPO / "dist" / "UNIX") if runtime == "frozen"
                else smoke.Expected.for_board(get_board("UNIX")))
    cfg = ProvisionConfig(hostname="ws-{mac4}", wifi_ssid="Workshop", wifi_password=Secret("bench-pw"),
                          mqtt_broker="127.0.0.1", start=("wifi", "telnet"))
    print(f"runtime: {runtime}; expected: {expected.source}; {len(expected.stack_modules)} stack modules")
    print(f"{'N':>3} {'provision s/device':>20} {'provision wall s':>17} {'smoke s/device':>16} {'smoke wall s':>13}")
    for n in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            ps = [peers.PtyPeer(Path(tmp) / f"d{i}", runtime=runtime).start() for i in range(n)]
            try:
                time.sleep(0.3)
                ports = [p.port for p in ps]
                t = time.monotonic()
                results = provision_all(ports, cfg)
                prov_wall = time.monotonic() - t
                assert all(r.ok for r in results), [r.error for r in results]
                t = time.monotonic()
                reports = smoke.smoke_all(ports, expected)
                smoke_wall = time.monotonic() - t
                assert all((c := r.check("config")) is not None and c.status == "pass" for r in reports), reports
                prov = sum(r.duration_s for r in results) / n
                sm = sum(r.duration_s for r in reports) / n
                print(f"{n:>3} {prov:>20.2f} {prov_wall:>17.2f} {sm:>16.2f} {smoke_wall:>13.2f}")
            finally:
                for p in ps:
                    p.stop()


if __name__ == "__main__":
    main()
