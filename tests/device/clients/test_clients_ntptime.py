"""ntptime under MicroPython against a real NTP server (chronyd on a loopback port)."""

from __future__ import annotations

import socket
import struct
import threading
import time

from clienttools import device_lines

PRELUDE = """
import sys, ntptime
ntptime.host = sys.argv[1]
ntptime.port = int(sys.argv[2])
"""
# ntptime.time() with a 0.5 s timeout: prints ("OSError", ms taken) when it gives up
GIVES_UP = """
import time
ntptime.timeout = 0.5
t = time.ticks_ms()
try:
    ntptime.time()
except OSError:
    print(repr(("OSError", time.ticks_diff(time.ticks_ms(), t))))
"""


def test_time_from_a_real_ntp_server(micropython, chrony):
    """...also with `ntptime.timeout = None` (no deadline, as micropython-lib's; it was a TypeError)."""
    before = time.time()
    out = micropython.run(PRELUDE + """
import time
t = ntptime.time()
ntptime.timeout = None
print(repr((t, time.gmtime(0)[0], abs(ntptime.time() - t) < 5)))
""", chrony.host, str(chrony.port))
    t, epoch, again = device_lines(out.stdout)[0]
    assert epoch == 1970  # the unix port; ntptime also handles 2000 (ESP boards)
    assert before - 1 <= t <= time.time() + 1 and again


def test_no_answer_is_an_oserror_after_the_timeout(micropython):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        out = micropython.run(PRELUDE + GIVES_UP, "127.0.0.1", str(silent.getsockname()[1]))
    kind, ms = device_lines(out.stdout)[0]
    assert kind == "OSError" and 400 <= ms < 2000


def _responder(sock: socket.socket, replies: int, kiss: bool, stratum: int = 2) -> None:
    """A hostile server: first a stale reply (wrong origin), then a kiss-of-death or one of
    `stratum` (16: unsynchronised, RFC 5905) that answers the query."""
    for _ in range(replies):
        q, addr = sock.recvfrom(48)
        now = int(time.time()) + 2208988800
        stale = bytearray(48)
        stale[0], stale[1] = 0x24, 2  # server, stratum 2
        struct.pack_into("!II", stale, 40, now - 3600, 0)  # an hour off, answering someone else
        sock.sendto(stale, addr)
        good = bytearray(stale)
        good[1] = stratum
        good[24:32] = q[40:48]  # origin = the client's transmit timestamp
        struct.pack_into("!II", good, 40, now, 0)
        if kiss:
            good[1] = 0
        sock.sendto(good, addr)


def test_replies_that_do_not_answer_us_are_rejected(micropython):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        port = str(srv.getsockname()[1])
        code = PRELUDE + """
try:
    print(ntptime.time())
except OSError as e:
    print(repr("OSError"))
"""
        for kiss, stratum, check in ((False, 2, lambda v: abs(v - time.time()) < 5),
                                     (True, 2, lambda v: v == "OSError"), (False, 16, lambda v: v == "OSError")):
            t = threading.Thread(target=_responder, args=(srv, 1, kiss, stratum), daemon=True)
            t.start()
            value = device_lines(micropython.run(code, "127.0.0.1", port).stdout)[0]
            t.join(5)
            assert check(value), (kiss, stratum, value)


def _flood(sock: socket.socket, seconds: float) -> None:
    """Answer the query with a stream of replies to someone else (wrong origin), 200 a second."""
    q, addr = sock.recvfrom(48)
    stale = bytearray(48)
    stale[0], stale[1] = 0x24, 2
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        struct.pack_into("!II", stale, 40, int(time.time()) + 2208988800, 0)
        try:
            sock.sendto(stale, addr)
        except OSError:
            return
        time.sleep(0.005)


def test_a_flood_of_other_datagrams_does_not_extend_the_timeout(micropython):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        t = threading.Thread(target=_flood, args=(srv, 6), daemon=True)
        t.start()
        out = micropython.run(PRELUDE + GIVES_UP, "127.0.0.1", str(srv.getsockname()[1]), timeout=30)
        t.join(10)
    kind, ms = device_lines(out.stdout)[0]
    assert kind == "OSError" and 400 <= ms < 1000
