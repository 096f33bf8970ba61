# The device config (/workshop.json) and the background-socket seam shared by the services.
# On a board, telnet and mdns run in the background through socket callbacks
# (setsockopt(SOL_SOCKET, 20, handler), as webrepl does) while the REPL stays free.
# The unix port has no such callbacks: there watch() records the socket and serve() polls.
# Periodic work (announce, telnet's flush) goes through every(): on a board one shared
# machine.Timer (never Timer(0), see every()) whose callback schedules the due functions (they
# run between bytecodes, never inside an interrupt); serve() on unix.
import os

import sys

# A board's filesystem root. The unix port is a "board" whose root is the current folder: it
# never reads or writes the host's /workshop.json.
PATH = "workshop.json" if sys.platform in ("linux", "darwin") else "/workshop.json"
_CB = hasattr(os, "dupterm_notify")  # esp32/esp8266: socket callbacks + dupterm
_watched = {}
_timers = []  # [period ms, next due ticks_ms, fn]
_hw = None  # board: the one machine.Timer behind every()


def path():
    # Unix seam: WORKSHOP_CONFIG points the stack at another file (boards have no getenv).
    try:
        return os.getenv("WORKSHOP_CONFIG") or PATH
    except AttributeError:
        return PATH


def load(report=True):
    # The config as a dict; {} when missing or broken (reported in one line). Broken is anything
    # json raises: a config too big or too deeply nested for the heap is a MemoryError, and must
    # not end boot.py (the rest of it, and the services, would not run).
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
    except Exception as e:
        if report:  # (no p + ":": after a MemoryError the heap may still be full)
            print("workshop: bad config", p, end=": ")
            print(e)
    return {}


def section(cfg, key):
    # cfg[key] as a dict ({} when absent); a hand-edited "mqtt": "x" is a named error.
    v = cfg.get(key) or {}
    if not isinstance(v, dict):
        raise ValueError('%s: "%s" must be an object, got %r' % (path(), key, v))
    return v


def broker(cfg=None, port=0):
    # The MQTT broker (host, port) from cfg, default the config file: the one reading of
    # mqtt.broker, for umqtt (server=None) and announce. A port given wins over mqtt.port; 0 when
    # neither is set. No broker set is a named error.
    m = section(load(False) if cfg is None else cfg, "mqtt")
    if not m.get("broker"):
        raise ValueError("no MQTT broker: set mqtt.broker in " + path())
    return m["broker"], port or int(m.get("port") or 0)


def watch(sock, handler):
    # Call handler(sock) whenever sock is readable; None stops watching.
    if _CB:
        import socket
        sock.setsockopt(socket.SOL_SOCKET, 20, handler)
    elif handler is None:
        _watched.pop(id(sock), None)
    else:
        _watched[id(sock)] = (sock, handler)


def every(ms, fn):
    # Call fn(None) every ms milliseconds in the background; returns a handle for cancel().
    # On a board all of them share ONE machine.Timer ticking at the shortest period (a second
    # Timer(3) would be the same singleton, re-initialised); _due() runs what is due. That timer
    # is a virtual one where the port has it (ESP8266: Timer(-1)), else the highest hardware
    # timer (ESP32/S2/S3 have 0-3, C3 0-1; esp32 has no Timer(-1)), never Timer(0): ids are
    # singletons, and Timer(0) is the one tutorials give students.
    global _hw
    import time
    if _CB and _hw is None:
        import machine
        for i in (-1, 3, 1):
            try:
                _hw = machine.Timer(i)
                break
            except Exception:  # esp32: ValueError("invalid Timer number")
                pass
        else:
            raise OSError("wsconfig: no machine.Timer(-1), Timer(3) or Timer(1) for the background tick")
    t = [ms, time.ticks_add(time.ticks_ms(), ms), fn]
    _timers.append(t)
    _arm()
    return t


def _arm():
    # Board: the timer at the shortest period, or off. Both ports already run a (soft) Timer's
    # callback through micropython.schedule, between bytecodes: _due goes in as it is (scheduling
    # it again would take a second slot of the 4-deep queue socket callbacks share).
    if _CB:
        if _timers:
            import machine
            _hw.init(period=min([t[0] for t in _timers]), mode=machine.Timer.PERIODIC, callback=_due)
        else:
            _hw.deinit()


def cancel(t):
    if t in _timers:
        _timers.remove(t)
        _arm()


def _due(_=None):
    # Run the timers that are due; returns ms until the next one (200 when none). Backwards by
    # index: a callback may cancel its own timer (telnet detaching a client) while this runs.
    # A callback that raises is stopped, named on the console once: it must not keep the others
    # from running (each tick would end at it) nor print its traceback every period, and on unix
    # it must not end serve() and with it every service.
    import time
    wait = 200
    i = len(_timers)
    while i:
        i -= 1
        if i >= len(_timers):
            continue
        t = _timers[i]
        d = time.ticks_diff(t[1], time.ticks_ms())
        if d <= 0:
            t[1] = time.ticks_add(time.ticks_ms(), t[0])
            try:
                t[2](None)
            except Exception as e:
                cancel(t)
                print("workshop: background task stopped:", t[2], end=": ")
                print(repr(e))  # (apart: after a MemoryError the heap may still be full)
                continue
            d = t[0]
        wait = min(wait, d)
    return wait


def serve(ms=-1):
    # Unix: dispatch readable watched sockets and due timers until none is left or ms ran out.
    import select
    import time
    t0 = time.ticks_ms()
    while _watched or _timers:
        wait = _due()
        p = select.poll()
        for s, _ in _watched.values():
            p.register(s, select.POLLIN)
        left = -1 if ms < 0 else max(0, ms - time.ticks_diff(time.ticks_ms(), t0))
        for ev in p.poll(wait if ms < 0 or left > wait else left):
            w = _watched.get(id(ev[0]))
            if w:
                w[1](w[0])
        if ms >= 0 and time.ticks_diff(time.ticks_ms(), t0) >= ms:
            break
