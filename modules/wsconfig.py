# The device config (/workshop.json) and the background-socket seam shared by the services.
# On a board, telnet and mdns run in the background through socket callbacks
# (setsockopt(SOL_SOCKET, 20, handler), as webrepl does) while the REPL stays free.
# The unix port has no such callbacks: there watch() records the socket and serve() polls.
import os

import sys

# A board's filesystem root. The unix port is a "board" whose root is the current folder: it
# never reads or writes the host's /workshop.json.
PATH = "workshop.json" if sys.platform in ("linux", "darwin") else "/workshop.json"
_CB = hasattr(os, "dupterm_notify")  # esp32/esp8266: socket callbacks + dupterm
_watched = {}


def path():
    # Unix seam: WORKSHOP_CONFIG points the stack at another file (boards have no getenv).
    try:
        return os.getenv("WORKSHOP_CONFIG") or PATH
    except AttributeError:
        return PATH


def load(report=True):
    # The config as a dict; {} when missing or broken (reported in one line).
    p = path()
    try:
        import json
        with open(p) as f:
            cfg = json.load(f)
        if not isinstance(cfg, dict):
            raise ValueError("not an object")
        return cfg
    except OSError:
        if report:
            print("workshop: no config at", p)
    except ValueError as e:
        if report:
            print("workshop: bad config", p + ":", e)
    return {}


def section(cfg, key):
    # cfg[key] as a dict ({} when absent); a hand-edited "mqtt": "x" is a named error.
    v = cfg.get(key) or {}
    if not isinstance(v, dict):
        raise ValueError('%s: "%s" must be an object, got %r' % (path(), key, v))
    return v


def watch(sock, handler):
    # Call handler(sock) whenever sock is readable; None stops watching.
    if _CB:
        import socket
        sock.setsockopt(socket.SOL_SOCKET, 20, handler)
    elif handler is None:
        _watched.pop(id(sock), None)
    else:
        _watched[id(sock)] = (sock, handler)


def serve(ms=-1):
    # Unix: dispatch readable watched sockets until none is left or ms ran out (one pass if 0).
    import select
    import time
    t0 = time.ticks_ms()
    while _watched:
        p = select.poll()
        for s, _ in _watched.values():
            p.register(s, select.POLLIN)
        left = -1 if ms < 0 else max(0, ms - time.ticks_diff(time.ticks_ms(), t0))
        for ev in p.poll(left if ms < 0 or left < 200 else 200):
            w = _watched.get(id(ev[0]))
            if w:
                w[1](w[0])
        if ms >= 0 and time.ticks_diff(time.ticks_ms(), t0) >= ms:
            break
