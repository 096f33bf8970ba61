# Test server: telnet attached to a board-style console, on the unix port.
#
# The unix port has neither os.dupterm nor socket callbacks, so this script replays the C layer
# a board has (extmod/os_dupterm.c): every console write goes to the UART (stdout here) and then
# to the attached stream's write(); an exception there deactivates the stream; a readable socket
# makes the REPL read the attached stream (dupterm_notify). telnet.py itself is the board's code,
# taking its board path (wsconfig._CB). Lines arriving on stdin are the UART REPL's input.
#   flood(ms)  prints console lines for ms milliseconds; reports how many, the slowest print (ms)
import builtins
import sys
import time
import os as _real_os


class _OS:
    pass


term = [None]
notified = []


def _dupterm(stream, idx=0):
    prev = term[0]
    term[0] = stream
    return prev


os = _OS()
os.getenv = _real_os.getenv
os.dupterm = _dupterm
os.dupterm_notify = lambda s: notified.append(s)
sys.modules["os"] = os

import wsconfig  # noqa: E402  (after the console is in place: it sees a board)

assert wsconfig._CB
callbacks = {}


def _watch(sock, handler):
    if handler is None:
        callbacks.pop(id(sock), None)
    else:
        callbacks[id(sock)] = (sock, handler)


wsconfig.watch = _watch
_print = builtins.print


def console(*args, sep=" ", end="\n"):
    text = sep.join(str(a) for a in args) + end
    sys.stdout.write(text)  # the UART
    t = term[0]
    if t is not None:
        try:
            t.write(text.replace("\n", "\r\n").encode())
        except Exception as e:  # dupterm: "Exception in write() method, deactivating"
            term[0] = None
            sys.stdout.write("dupterm: deactivated: %r\n" % e)
            t.close()


builtins.print = console


def flood(ms):
    # Console lines for ms milliseconds: how many, the slowest print, still attached at the end.
    line = "x" * 72
    worst = 0
    n = 0
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < ms:
        t = time.ticks_us()
        print(line, n)
        worst = max(worst, time.ticks_diff(time.ticks_us(), t))
        n += 1
    _print("FLOOD", n, worst // 1000, term[0] is not None)


def repl_line(line, ns={"flood": flood}):
    try:
        try:
            r = eval(line, ns)
            if r is not None:
                print(repr(r))
        except SyntaxError:
            exec(line, ns)
    except Exception as e:
        print("%s: %s" % (type(e).__name__, e))


import select  # noqa: E402
import telnet  # noqa: E402

telnet.start("micro", "s3cret", port=int(sys.argv[1]), host="127.0.0.1")
_print("ready")
buf = bytearray(64)
typed = bytearray()
while True:
    p = select.poll()
    p.register(sys.stdin, select.POLLIN)
    for s, _ in callbacks.values():
        p.register(s, select.POLLIN)
    for ev in p.poll(200):
        if ev[0] is sys.stdin or ev[0] == sys.stdin.fileno():
            line = sys.stdin.readline()
            if not line:
                sys.exit(0)
            repl_line(line.strip())
            continue
        w = callbacks.get(id(ev[0]))
        if w:
            w[1](w[0])
    while notified and term[0] is not None:  # the REPL reads what the session typed
        notified.pop()
        while term[0] is not None:
            n = term[0].readinto(buf)
            if n is None:
                break
            if n == 0:
                t = term[0]
                term[0] = None
                t.close()
                break
            for c in buf[:n]:
                if c == 13:
                    repl_line(typed.decode())
                    typed = bytearray()
                elif c != 10:
                    typed.append(c)
    notified.clear()
