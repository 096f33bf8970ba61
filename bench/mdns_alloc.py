"""Heap allocated by mdns per packet that is not for us (target 0 B), on the real MicroPython runtime.

One MicroPython process per runtime starts `mdns` on a free loopback port, queues N packets of
one kind on its socket from a second socket, then hands them to mdns' packet handler with the
GC disabled and reads gc.mem_alloc() before and after. Kinds: queries for another host, for
another service type, a response (another host's announcement) and, for comparison, a query
that is ours (answered). The floor is the same packets read by a bare `recvfrom(512)`: the copy
of the packet and of its sender that MicroPython's socket API makes (it has no recvfrom_into);
`ours` = handler - floor is what mdns itself allocates (target 0 B).

    .venv/bin/python bench/mdns_alloc.py [--count N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.rrset

from benchlib import EMPTY_CWD, frozen_note

REPO = Path(__file__).resolve().parent.parent
PYPI = Path(sys.executable).parent / "micropython"
FROZEN = REPO / "dist" / "UNIX" / "micropython"


def packets() -> dict[str, bytes]:
    other = dns.message.make_query("laptop-7.local.", "A")
    other.id = 0
    svc = dns.message.make_query("_airplay._tcp.local.", "PTR")
    svc.id = 0
    resp = dns.message.Message(id=0)
    resp.flags = 0x8400
    resp.answer.append(dns.rrset.from_text("laptop-7.local.", 120, "IN", "A", "10.0.0.7"))
    resp.answer.append(dns.rrset.from_text("_airplay._tcp.local.", 4500, "IN", "PTR", "laptop-7._airplay._tcp.local."))
    ours = dns.message.make_query("ws-bench.local.", "A")
    ours.id = 0
    return {"query, another host": other.to_wire(), "query, another service": svc.to_wire(),
            "response from another host": resp.to_wire(), "query for us (answered)": ours.to_wire()}


DEVICE = r"""
import sys, gc, socket, binascii
import mdns
port = int(sys.argv[1])
n = int(sys.argv[2])
kinds = [binascii.unhexlify(h) for h in sys.argv[3:]]
mdns.start("ws-bench", "127.0.0.1", [("_http._tcp", 80, {"path": "/"}), ("_telnet._tcp", 23, None)], port=port)
s = mdns._sock
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = socket.getaddrinfo("127.0.0.1", port)[0][-1]

def per_packet(pkt, handle):
    for i in range(n):
        c.sendto(pkt, dst)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(n):
        handle(s)
    b = gc.mem_alloc()
    gc.enable()
    return (b - a) // n

def floor(sock):
    sock.recvfrom(512)

for pkt in kinds:
    print("ALLOC", per_packet(pkt, mdns._on_packet), per_packet(pkt, floor))
"""


def measure(binary: Path, path: str, count: int, kinds: list[bytes]) -> list[tuple[int, int]] | str:
    sys.path.insert(0, str(REPO / "tests"))
    from support import free_port

    port = free_port(2)  # SOCK_DGRAM
    env = dict(os.environ, MICROPYPATH=path, WORKSHOP_CONFIG="/nonexistent/workshop.json")
    proc = subprocess.run([str(binary), "-c", DEVICE, str(port), str(count), *(k.hex() for k in kinds)],
                          capture_output=True, text=True, env=env, cwd=EMPTY_CWD, timeout=120)
    rows = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("ALLOC ")]
    if len(rows) != len(kinds):
        return "failed: " + ((proc.stderr or proc.stdout).strip().splitlines() or ["?"])[-1]
    return [(int(a), int(b)) for a, b in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=200, help="packets of each kind (default 200)")
    args = ap.parse_args(argv)
    kinds = packets()
    runtimes = [("py", PYPI, f"{REPO / 'modules'}:.frozen")]
    if FROZEN.exists():
        runtimes.append(("frozen", FROZEN, ".frozen"))
        if frozen_note():
            print(frozen_note())
    else:
        print("note: frozen runtime skipped: dist/UNIX/micropython not built (invoke build --board UNIX)")
    print(f"{'runtime':8} {'packet':28} {'handler B':>10} {'floor B':>8} {'ours B':>7}  (per packet; target: ours 0 B "
          "when not for us)")
    for name, binary, path in runtimes:
        got = measure(binary, path, args.count, list(kinds.values()))
        if isinstance(got, str):
            print(f"{name:8} {got}")
            continue
        for kind, (total, base) in zip(kinds, got):
            print(f"{name:8} {kind:28} {total:>10} {base:>8} {total - base:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
