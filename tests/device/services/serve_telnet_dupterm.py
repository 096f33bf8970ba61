# Test server: telnet attached to a board-style console, on the unix port.
#
# The unix port has no socket callbacks, so this script replays what a board has around
# telnet.py: a readable socket makes the REPL read the attached stream (dupterm_notify), and an
# EOF there closes it as extmod/os_dupterm.c does (MP_STREAM_CLOSE through the stream's ioctl).
# Console writes: on the frozen UNIX firmware (built with os.dupterm) the real C layer copies
# every console write to the attached stream, checks at attach that it is a stream, and
# deactivates it on an exception in write(); on the PyPI runtime (no os.dupterm) this script
# replays that. The console cooks "\n" to "\r\n" as a board's does. telnet.py itself is the
# board's code, taking its board path (wsconfig._CB). Lines on stdin are the UART REPL's input;
# the script's own reports (ready, FLOOD, ...) go to the UART only.
# machine.Timer is an ESP32's (ids 0-3, singletons; the callback fires from the loop below when
# its period is due, as a board's timer interrupt would).
#   flood(ms)  prints console lines for ms milliseconds; reports how many, the slowest print (ms)
#   burst(n)   `for i in range(n): print(i)` at the pace of a 115200-baud UART (a board's console
#              writes the UART first); reports the bytes printed
#   sndbuf(n)  SO_SNDBUF of the session's socket (the board's small lwIP send buffer)
import builtins
import sys
import time
import os as _real_os


class _OS:
    pass


term = [None]
notified = []


REAL = hasattr(_real_os, "dupterm")


def _dupterm(stream, idx=0):
    if REAL:
        _real_os.dupterm(stream, idx)  # raises for what is not a stream, as on a board
    prev = term[0]
    term[0] = stream
    return prev


os = _OS()
os.getenv = _real_os.getenv
os.dupterm = _dupterm
os.dupterm_notify = lambda s: notified.append(s)
sys.modules["os"] = os



class Timer:
    PERIODIC = 1
    made = {}

    def __new__(cls, i):
        if not 0 <= i <= 3:
            raise ValueError("invalid Timer number")
        if i not in Timer.made:
            t = object.__new__(cls)
            t.id, t.period, t.callback, t.due = i, None, None, 0
            Timer.made[i] = t
        return Timer.made[i]

    def init(self, period, mode, callback):
        self.period, self.callback = period, callback
        self.due = time.ticks_add(time.ticks_ms(), period)

    def deinit(self):
        self.period = None


class _Machine:
    pass


machine = _Machine()
machine.Timer = Timer
sys.modules["machine"] = machine


def fire_timers():
    # Fire the due timers; ms until the next one (200 when none).
    wait = 200
    for t in list(Timer.made.values()):
        if t.period is None:
            continue
        d = time.ticks_diff(t.due, time.ticks_ms())
        if d <= 0:
            t.due = time.ticks_add(time.ticks_ms(), t.period)
            t.callback(t)
            d = t.period
        wait = min(wait, d)
    return wait


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
    if REAL:  # the UART, and through the real dupterm the attached stream
        sys.stdout.write(text.replace("\n", "\r\n"))  # a deactivated stream is closed: telnet detaches
        return
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


def report(*args):
    # The script's own lines: to the UART only (telnet keeps its log lines out of the session the
    # same way).
    telnet._quiet = True
    try:
        _print(*args)
    finally:
        telnet._quiet = False


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
    report("FLOOD", n, worst // 1000, term[0] is not None)


def burst(n):
    # The UART is the pace of a board's console: 10 bits a byte at 115200 baud.
    sent = 0
    t0 = time.ticks_us()
    for i in range(n):
        print(i)
        sent += len(str(i)) + 1
        while time.ticks_diff(time.ticks_us(), t0) < sent * 87:
            pass
    report("BURST", sent)


def sndbuf(n):
    telnet._cl.s.setsockopt(1, 7, n)  # SOL_SOCKET, SO_SNDBUF (Linux)
    report("SNDBUF", n)


def repl_line(line, ns={"flood": flood, "burst": burst, "sndbuf": sndbuf}):
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
report("ready", "dupterm" if REAL else "replayed")
buf = bytearray(64)
typed = bytearray()
while True:
    p = select.poll()
    p.register(sys.stdin, select.POLLIN)
    for s, _ in callbacks.values():
        p.register(s, select.POLLIN)
    for ev in p.poll(fire_timers()):
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
                t = term[0]  # EOF: the C layer detaches the stream and closes it (MP_STREAM_CLOSE)
                term[0] = None
                if REAL:
                    _real_os.dupterm(None)
                t.ioctl(4, 0)
                break
            for c in buf[:n]:
                if c == 13:
                    repl_line(typed.decode())
                    typed = bytearray()
                elif c != 10:
                    typed.append(c)
    notified.clear()
