# telnet: a password-protected telnet REPL, in the spirit of network.telnet.start().
#
#   import telnet
#   telnet.start(user="micro", password="secret")   # or from /workshop.json "telnet"
#   telnet.stop()
#
# One REPL session at a time, and one login beside it: whoever logs in while a session is open
# takes it over (the old one is told and closed), so a laptop that vanished (lid shut, Wi-Fi
# gone: a half-open connection nothing ever detects) never holds the board. The server offers
# WILL ECHO + WILL SGA (character mode) and refuses every other option. Login: "login:" then
# "Password:"; 3 tries per connection, and after 3 failed logins in a row from one host (IP
# address) that host's logins are refused for lockout_ms, doubling with each further failure
# (capped at 64x); a good login resets its count. Other hosts are not locked out by it: a student
# guessing does not lock the teacher out. At most 8 hosts are counted apart; past that, a host
# whose last failure or lockout ended over lockout_ms ago gives its place up, else the newcomers
# share one count (many addresses still meet a lockout). On a board the logged-in session is
# attached to the REPL with os.dupterm (which takes only native streams and io.IOBase
# subclasses) and runs in the background (socket callbacks).
# The unix port has no socket callbacks: there the session gets a small line evaluator instead
# (_Session._shell) and the raw REPL protocol (_Session._raw, what ./kit fleet speaks), and
# wsconfig.serve() drives the sockets.
import io
import os
import socket
import sys
import time
from micropython import const
import wsconfig

_IAC = const(255)
_DONT = const(254)
_DO = const(253)
_WONT = const(252)
_WILL = const(251)
_SB = const(250)
_SE = const(240)
_ECHO = const(1)
_SGA = const(3)
_MAX_FAILS = const(3)
_HOSTS = const(8)
_TRIES = const(3)
_LOGIN_MS = const(60000)
_LINE = const(64)
_STALL_MS = const(3000)  # output waiting this long with none of it taken: the client is detached
_TICK_MS = const(100)  # the session's flush of what waits in its output buffer
# What the socket cannot take at once waits here (lwIP's send buffer is ~2.9 KB on ESP8266).
_OUT = 512 if sys.platform == "esp8266" else 1024

_srv = None
_cl = None  # the logged-in session
_lg = None  # the session logging in
_cfg = None
_bad = {}  # host -> [failed logins in a row, ticks_ms the last failure (or its lockout) ends, lockout ms]
_quiet = False  # while logging: the console's copy for the attached session is dropped


def _log(*a):
    # To the board's console only: with dupterm attached, print() would also reach the session.
    global _quiet
    _quiet = True
    try:
        print("telnet:", *a)
    finally:
        _quiet = False


def _peer(a):
    if isinstance(a, tuple):
        return "%s:%d" % a[:2]
    try:
        a = socket.sockaddr(a)
        return "%d.%d.%d.%d:%d" % (a[1][0], a[1][1], a[1][2], a[1][3], a[2])
    except Exception:
        return "?"


def _eq(a, b):
    # Compare without an early exit on the first differing byte.
    r = len(a) ^ len(b)
    n = len(b)
    for i in range(len(a)):
        r |= a[i] ^ (b[i % n] if n else 0)
    return r == 0


def _entry(peer):
    # The failure count of peer's host ("a.b.c.d:port" -> "a.b.c.d"), made on first use.
    h = peer[: peer.rfind(":")]
    f = _bad.get(h)
    if f is None:
        now = time.ticks_ms()
        if len(_bad) >= _HOSTS:
            for k in _bad:
                f = _bad[k]
                d = time.ticks_diff(now, f[1])
                # Idle for a lockout's length; or further ahead than its own lockout, which only
                # a moment 2**29 ms back reads as (the ticks wrapped: long idle).
                if d > _cfg[2] or d < -f[2]:
                    del _bad[k]  # (the loop ends here: no next step over the changed dict)
                    break
            else:
                h = "*"  # every host is busy failing: the newcomers share one count
        f = _bad.get(h)
        if f is None:
            f = _bad[h] = [0, now, 0]
    return f


def _locked(f):
    # Seconds left of entry f's lockout, 0 when there is none. ticks wrap (2**30 ms on a board):
    # once the lockout has passed, a late look could see it in the future again, so a lockout is
    # only a wait of at most its own length.
    if f[0] < _MAX_FAILS:
        return 0
    d = time.ticks_diff(f[1], time.ticks_ms())
    return (d + 999) // 1000 if 0 < d <= f[2] else 0


class _Session(io.IOBase):  # os.dupterm wants a stream: io.IOBase gives a Python class one
    def __init__(self, s, peer):
        self.s = s
        self.peer = peer
        self.state = 0  # 0 user, 1 password, 2 REPL
        self.line = bytearray()
        self.user = b""
        self.tries = 0
        self.t0 = time.ticks_ms()
        self.iac = 0  # parser: 0 data, 1 after IAC, 2 option byte of cmd self.cmd, 3 in SB, 4 IAC in SB
        self.cmd = 0
        self.cr = False
        self.nego = 0  # options we turned off on request (bit per option)
        self.raw = 0  # unix raw REPL: 0 off, 1 on, 2/3 inside a raw-paste request (Ctrl-E A Ctrl-A)
        self.ibuf = bytearray(_LINE)  # on_data's receive buffer: one per session, not per packet
        self.pend = b""  # what came after the password in its packet: the REPL's first input
        self.pi = 0  # how much of it the REPL has read
        self.imv = memoryview(self.ibuf)
        self.out = bytearray(_OUT)  # ring of output the socket could not take yet
        self.oh = 0  # its head
        self.on = 0  # bytes waiting
        self.stall = 0  # ticks_ms of the last progress while output waits
        self.tk = wsconfig.every(_TICK_MS, self._flush)  # flush when the REPL is quiet

    # -- telnet protocol -----------------------------------------------------------------
    def _filter(self, mv, n):
        # Strip telnet commands from mv[:n] in place, answer option requests; returns data length.
        j = 0
        for i in range(n):
            c = mv[i]
            st = self.iac
            if st == 0:
                if c == _IAC:
                    self.iac = 1
                    continue
                if self.cr and (c == 0 or c == 10):  # CR NUL / CR LF -> CR
                    self.cr = False
                    continue
                self.cr = c == 13
                mv[j] = c
                j += 1
            elif st == 1:
                if c == _IAC:
                    mv[j] = c
                    j += 1
                    self.iac = 0
                elif c == _SB:
                    self.iac = 3
                elif _WILL <= c <= _DONT:
                    self.cmd = c
                    self.iac = 2
                else:
                    self.iac = 0
            elif st == 2:
                self.iac = 0
                self._option(self.cmd, c)
            elif st == 3:
                if c == _IAC:
                    self.iac = 4
            else:
                self.iac = 0 if c == _SE else 3
        return j

    def _option(self, cmd, opt):
        ours = opt == _ECHO or opt == _SGA
        if cmd == _WILL and opt != _SGA:
            self._send(bytes((_IAC, _DONT, opt)))  # we do not want the client to do anything else
        elif cmd == _DO and not ours:
            self._send(bytes((_IAC, _WONT, opt)))
        elif cmd == _DONT and ours and not self.nego & (1 << opt):
            self.nego |= 1 << opt
            self._send(bytes((_IAC, _WONT, opt)))

    def _send(self, b):
        # Never a wait: every REPL write (UART echo included) passes here through dupterm. What
        # the socket cannot take now waits in the ring (after what already waits), flushed by
        # later writes and the session's tick; only what does not fit there is dropped.
        if self.on:
            self._flush()
        if self is not _cl and self is not _lg:
            return
        n = 0
        if not self.on:
            try:
                n = self.s.write(b) or 0  # None: would block
            except OSError as e:
                if e.args[0] != 11:  # not EAGAIN: the client is gone (reset, broken pipe)
                    self.close("gone")
                    return
        m = min(len(b) - n, _OUT - self.on)  # b[n:] into the ring, what fits
        if m:
            if not self.on:
                self.stall = time.ticks_ms()
            t = (self.oh + self.on) % _OUT
            k = min(m, _OUT - t)
            mb = memoryview(b)  # only on this slow path
            self.out[t:t + k] = mb[n:n + k]
            if k < m:
                self.out[0:m - k] = mb[n + k:n + m]
            self.on += m

    def _flush(self, _=None):
        # Also the session's tick. With output waiting and none of it taken for _STALL_MS the
        # client is detached.
        while self.on and (self is _cl or self is _lg):
            k = min(self.on, _OUT - self.oh)
            try:
                w = self.s.write(self.out, self.oh, k) or 0
            except OSError as e:
                if e.args[0] != 11:
                    self.close()
                    return
                w = 0
            if not w:
                if time.ticks_diff(time.ticks_ms(), self.stall) > _STALL_MS:
                    self.close("not reading")
                return
            self.stall = time.ticks_ms()  # the client is draining
            self.on -= w
            self.oh = 0 if not self.on else (self.oh + w) % _OUT
            if w < k:
                return

    # -- stream protocol for os.dupterm --------------------------------------------------
    def readinto(self, buf):
        # Until data or nothing is left: on ESP8266 a socket callback fires once per packet, so a
        # None after swallowing a telnet command would leave the rest unread until the next one.
        p = self.pend
        if p:  # typed ahead of the login, filtered already (dupterm reads a byte at a time: by index)
            i = self.pi
            n = min(len(p) - i, len(buf))
            for k in range(n):
                buf[k] = p[i + k]
            self.pi = i + n
            if self.pi >= len(p):
                self.pend = b""
            return n
        while True:
            try:
                n = self.s.readinto(buf)
            except OSError:
                n = 0
            if n is None:
                return None
            if n == 0:
                return 0  # EOF: dupterm detaches and calls close()
            n = self._filter(memoryview(buf), n)
            if n:
                return n

    def write(self, b):
        n = len(b)
        if _quiet:
            return n
        # dupterm hands us a bytearray, where `255 in b` is not implemented in MicroPython;
        # a bytes needle is (and allocates nothing).
        if b"\xff" in b:
            b = bytes(b).replace(b"\xff", b"\xff\xff")
        try:
            self._send(b)
        except OSError:
            pass
        return n

    def ioctl(self, op, arg):
        # The stream protocol's third call: dupterm closes a stream it gives up on (EOF, an error
        # in readinto or write) with MP_STREAM_CLOSE (4); a poll of the console (3) finds nothing
        # ready here (input comes through dupterm_notify).
        if op == 4:
            self.close()
        return 0

    def close(self, why="closed"):
        global _cl, _lg
        if self.tk is None:  # closed already (a write found the client gone)
            return
        wsconfig.cancel(self.tk)
        self.tk = None
        if _cl is self:
            _cl = None
            if wsconfig._CB:
                os.dupterm(None)
        elif _lg is self:
            _lg = None
        wsconfig.watch(self.s, None)
        try:
            self.s.close()
        except OSError:
            pass
        _log(self.peer, why)

    # -- login -----------------------------------------------------------------------------
    def on_data(self, _):
        # Drain the socket: on ESP8266 the callback fires once per packet, not while data is left.
        buf = self.ibuf
        while (self is _lg or self is _cl and not wsconfig._CB):  # attached: dupterm reads
            try:
                n = self.s.readinto(buf)
            except OSError:
                n = 0
            if n is None:
                return
            if not n:
                self.close()
                return
            self._input(buf, self._filter(self.imv, n))

    def _input(self, buf, n):
        for i in range(n):
            c = buf[i]
            if self.raw:
                self._raw(c)
                continue
            if c == 1 and self.state == 2:  # Ctrl-A: the raw REPL host tools speak
                self.raw = 1
                self.line = bytearray()
                self._send(b"raw REPL; CTRL-B to exit\r\n>")
            elif c == 13 or c == 10:
                if self.state == 2:
                    self._shell()
                else:
                    self._enter()
                if self is not _lg and (self is not _cl or wsconfig._CB):
                    if self is _cl and i + 1 < n:  # typed ahead (a paste, a script): the REPL's,
                        self.pend = bytes(self.imv[i + 1 : n])  # which reads it once told to
                        self.pi = 0
                        os.dupterm_notify(None)
                    return
            elif c == 8 or c == 127:
                l = self.line
                if l:
                    k = len(l) - 1
                    while k and l[k] & 0xC0 == 0x80:  # a whole UTF-8 character, not one byte of it
                        k -= 1
                    self.line = l[:k]
                    if self.state != 1:
                        self._send(b"\b \b")
            elif c == 4 and self.state == 2:
                self.close()
                return
            elif c >= 32 and len(self.line) < _LINE:
                self.line.append(c)
                if self.state != 1:
                    self._send(bytes((c,)))

    def _enter(self):
        global _cl, _lg
        line = bytes(self.line)
        self.line = bytearray()
        if self.state == 0:
            if line:
                self.user = line
                self.state = 1
                self._send(b"\r\nPassword: ")
            else:
                self._send(b"\r\nlogin: ")
            return
        f = _entry(self.peer)
        w = _locked(f)
        if w:
            self._send(b"\r\nLocked: too many failed logins, try again in %d s\r\n" % w)
            _log(self.peer, "login refused (locked)")
            self.close()
            return
        if _eq(self.user, _cfg[0]) & _eq(line, _cfg[1]):
            if f is not _bad.get("*"):  # (the shared count is others' failures too: it stays)
                f[0] = 0
            self.state = 2
            _log(self.peer, "logged in as", self.user.decode())
            old = _cl
            if old:  # (a dead old socket closes in _send: the takeover goes on)
                old._send(b"\r\nSession taken over by %s\r\n" % self.peer)
            _cl = self
            _lg = None
            if old:
                old.close("taken over by " + self.peer)
            self._send(b"\r\nLogged in: MicroPython REPL. Close telnet to end the session.\r\n")
            if _cl is self:  # not gone already (_send closed it): a closed socket never attached
                self._attach()
            return
        n = f[0] = f[0] + 1
        self.tries += 1
        _log(self.peer, "login failed (%d in a row)" % n)
        f[2] = 0 if n < _MAX_FAILS else _cfg[2] << min(n - _MAX_FAILS, 6)
        f[1] = time.ticks_add(time.ticks_ms(), f[2])
        if f[2]:
            self._send(b"\r\nLogin incorrect. Locked for %d s\r\n" % _locked(f))
            self.close()
        elif self.tries >= _TRIES:
            self._send(b"\r\nLogin incorrect\r\n")
            self.close()
        else:
            self.state = 0
            self._send(b"\r\nLogin incorrect\r\nlogin: ")

    def _attach(self):
        if wsconfig._CB:
            self.s.setblocking(False)
            wsconfig.watch(self.s, os.dupterm_notify)
            os.dupterm(self)
        else:
            self._send(b">>> ")

    def _shell(self):
        # Unix stand-in for the dupterm'd REPL: evaluate one line, answer repr or the error.
        line = bytes(self.line)
        self.line = bytearray()
        self._send(b"\r\n")
        if line.strip():
            try:
                line = line.decode()  # (in the try: a line cut at _LINE may end mid-character)
                try:
                    r = eval(line, _ns)
                    if r is not None:
                        self._send(repr(r).encode() + b"\r\n")
                except SyntaxError:
                    exec(line, _ns)
            except Exception as e:
                self._send(("%s: %s\r\n" % (type(e).__name__, e)).encode())
        self._send(b">>> ")


    def _raw(self, c):
        # Unix stand-in for the board's raw REPL (pyexec's protocol): code until Ctrl-D, then
        # "OK", its output, Ctrl-D, its traceback, Ctrl-D, ">". Raw paste is declined (R\x00), as
        # firmware with it switched off does. print() in the sent code is what reaches the client.
        if self.raw > 1:
            self.raw = self.raw + 1 if self.raw == 2 and c == 65 else 1
            if self.raw == 3:
                return
            if c == 1:
                self._send(b"R\x00")
                return
        if c == 5:
            self.raw = 2
        elif c == 2:  # Ctrl-B: back to the friendly REPL
            self.raw = 0
            self.line = bytearray()
            self._send(b"\r\n>>> ")
        elif c == 1:
            self.line = bytearray()
            self._send(b"raw REPL; CTRL-B to exit\r\n>")
        elif c == 3:
            self.line = bytearray()
        elif c == 4:
            code = bytes(self.line)
            self.line = bytearray()
            self._send(b"OK")
            if not code:  # soft reset: on the unix port the process is the board, it ends
                self._send(b"\r\n")
                raise SystemExit
            out = bytearray()

            def prn(*a, sep=" ", end="\n", file=None):
                t = sep.join([str(x) for x in a]) + end
                if file is None:
                    out.extend(t.encode())
                else:
                    file.write(t)

            err = b""
            _ns["print"] = prn
            try:
                exec(code, _ns)
            except SystemExit:  # machine.soft_reset(): the unix "board" restarts
                self.write(out)
                self._send(b"\x04\x04>")
                raise
            except Exception as e:
                import io
                import sys
                f = io.StringIO()
                sys.print_exception(e, f)
                err = f.getvalue().encode()
            out.extend(b"\x04")
            out.extend(err)
            out.extend(b"\x04>")
            self.write(out)  # one write: one packet back per command
        else:
            self.line.append(c)


_ns = {}


def _refuse(s, peer, msg, why):
    try:
        s.write(msg)
    except OSError:  # a client that reset at once
        pass
    s.close()
    _log(peer, "refused (%s)" % why)


def _accept(srv):
    # Every connection waiting, not one per call: a board loses a socket callback when its
    # scheduler queue (4 deep, shared) is full, and a connection left in lwIP's one-slot accept
    # queue would turn every later one away (no REPL over the network until a reset).
    global _lg
    while True:
        try:
            s, a = srv.accept()
        except OSError:  # none (left)
            return
        try:
            # REPL answers are small and interactive. The names, not 6, 1: lwIP (ESP8266) takes the
            # option number alone, where TCP_NODELAY is 0x40, and prints a warning for any other. At
            # once: lwIP runs between bytecodes at loops and returns, and a client's reset in between
            # leaves a pcb that setsockopt(TCP_NODELAY) would use unchecked.
            s.setsockopt(getattr(socket, "IPPROTO_TCP", 6), getattr(socket, "TCP_NODELAY", 1), 1)
        except (OSError, AttributeError):
            pass
        peer = _peer(a)
        _log(peer, "connected")
        if _lg is not None:  # still there? lwIP calls back for data and a close, never for a
            _lg.on_data(None)  # reset: a client that reset mid-login is found gone here
        w = _locked(_entry(peer))
        if w:
            _refuse(s, peer, b"Locked: too many failed logins, try again in %d s\r\n" % w, "locked")
            continue
        if _lg is not None:
            # (t0 is past: a negative age is one of 2**29 ms or more, a board's ticks wrapped)
            if 0 <= time.ticks_diff(time.ticks_ms(), _lg.t0) < _LOGIN_MS:
                _refuse(s, peer, b"Busy: another telnet login is in progress\r\n", "busy")
                continue
            _lg.close()  # a login left hanging for too long gives way
        c = _lg = _Session(s, peer)
        s.setblocking(False)
        c._send(b"\xff\xfb\x01\xff\xfb\x03\xff\xfd\x03MicroPython telnet\r\nlogin: ")
        if c is _lg:  # not gone already (_send closed it)
            wsconfig.watch(s, c.on_data)


def start(user=None, password=None, port=23, lockout_ms=30000, host="0.0.0.0"):
    global _srv, _cfg
    if user is None or password is None:
        c = wsconfig.section(wsconfig.load(), "telnet")
        user = user or c.get("user") or "micro"
        password = password or c.get("password")
    if not password:
        raise ValueError("telnet: a password is required (telnet.start(password=...) or /workshop.json)")
    stop()
    _cfg = (user.encode(), password.encode(), lockout_ms)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(socket.getaddrinfo(host, port)[0][-1])
    s.listen(1)
    # Non-blocking: a client that connects and resets before _accept runs leaves nothing to take,
    # and a blocking accept() would then wait (lwIP: for ever, with the REPL stuck) for the next.
    s.setblocking(False)
    _srv = s
    wsconfig.watch(s, _accept)
    _log("listening on port", port)


def stop():
    global _srv
    if _lg:
        _lg.close()
    if _cl:
        _cl.close()
    if _srv:
        wsconfig.watch(_srv, None)
        _srv.close()
        _srv = None
