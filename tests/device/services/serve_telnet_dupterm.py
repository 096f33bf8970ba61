# Test server: telnet attached to a board-style console, on the unix port.
#
# The unix port has neither os.dupterm nor socket callbacks, so this script replays the C layer
# a board has (extmod/os_dupterm.c): every console write goes to the UART (stdout here) and then
# to the attached stream's write(); an exception there deactivates the stream; a readable socket
# makes the REPL read the attached stream (dupterm_notify). telnet.py itself is the board's code,
# taking its board path (wsconfig._CB). Lines arriving on stdin are the UART REPL's input.
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


def _dupterm(stream, idx=0):
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


def burst(n):
    # The UART is the pace of a board's console: 10 bits a byte at 115200 baud.
    sent = 0
    t0 = time.ticks_us()
    for i in range(n):
        print(i)
        sent += len(str(i)) + 1
        while time.ticks_diff(time.ticks_us(), t0) < sent * 87:
            pass
    _print("BURST", sent)


def sndbuf(n):
    telnet._cl.s.setsockopt(1, 7, n)  # SOL_SOCKET, SO_SNDBUF (Linux)
    _print("SNDBUF", n)


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
_print("ready")
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
