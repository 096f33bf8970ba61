"""telnet: a real telnet client (Debian netkit telnet under pexpect) and raw sockets against the
server running in the MicroPython unix runtime. The unix port has no os.dupterm, so a logged-in
session gets the module's small line evaluator instead of the REPL; the login, negotiation and
lockout around it are the code a board runs."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pexpect
import pytest

from support import free_port, require_tool

HERE = Path(__file__).resolve().parent

IAC, DONT, DO, WONT, WILL = 255, 254, 253, 252, 251
ECHO, SGA, TTYPE, NAWS = 1, 3, 24, 31


def recv_until(s: socket.socket, marker: bytes, timeout: float = 5) -> bytes:
    s.settimeout(timeout)
    data = b""
    while marker not in data:
        d = s.recv(1024)
        if not d:
            break
        data += d
    return data


def recv_quiet(s: socket.socket, wait: float = 0.4) -> bytes:
    s.settimeout(wait)
    data = b""
    try:
        while True:
            d = s.recv(1024)
            if not d:
                break
            data += d
    except socket.timeout:
        pass
    return data


@pytest.fixture
def tn(serve):
    return serve("serve_telnet.py", ready="listening")


def login(port: int, user: bytes = b"micro", password: bytes = b"s3cret", source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
    recv_until(s, b"login: ")
    s.sendall(user + b"\r\n")
    recv_until(s, b"Password: ")
    s.sendall(password + b"\r\n")
    return s, (recv_until(s, b">>> ") if b"wrong" not in password else recv_quiet(s))


def test_option_negotiation_bytes(tn):
    with socket.create_connection(("127.0.0.1", tn.port)) as s:
        greeting = recv_until(s, b"login: ")
        # character mode: WILL ECHO, WILL SUPPRESS-GO-AHEAD, DO SUPPRESS-GO-AHEAD, then the prompt
        assert greeting.startswith(bytes([IAC, WILL, ECHO, IAC, WILL, SGA, IAC, DO, SGA]))
        assert greeting.endswith(b"login: ")
        # acks of our offers get no reply; anything else the client offers or asks for is refused
        s.sendall(bytes([IAC, DO, ECHO, IAC, DO, SGA, IAC, WILL, SGA, IAC, WILL, NAWS, IAC, DO, TTYPE]))
        assert recv_quiet(s) == bytes([IAC, DONT, NAWS, IAC, WONT, TTYPE])
        # a subnegotiation and an escaped 0xFF are not taken as typed text
        s.sendall(bytes([IAC, 250, NAWS, 0, 80, 0, 24, IAC, 240]) + b"mi" + bytes([IAC, IAC]) + b"\x7fcro\r\n")
        out = recv_until(s, b"Password: ")
        assert out == b"mi\xff\b \bcro\r\nPassword: "  # echoed while typing the user name
        s.sendall(b"s3cret\r\x00")  # CR NUL, as telnet sends Enter in character mode
        out = recv_until(s, b">>> ")
        assert b"s3cret" not in out and b"Logged in" in out
        s.sendall(b"[1, 2] * 2\r\n")
        assert b"[1, 2, 1, 2]" in recv_until(s, b">>> ")


def test_backspace_removes_a_whole_character_and_a_bad_line_is_an_error_not_the_end(tn):
    """Backspace after a non-ASCII character removed one of its UTF-8 bytes, and a line cut at the
    64-byte limit can end mid-character: the half character ended the whole service (UnicodeError
    out of its loop), not just that line."""
    s, _ = login(tn.port)
    with s:
        s.sendall("'é'".encode() + b"\x7f\x7fa'\r\n")  # 'é' then two backspaces, a': 'a'
        assert recv_until(s, b">>> ").endswith(b"\r\n'a'\r\n>>> ")  # (the echo aside: the answer)
        s.sendall(b"'" + "é".encode() * 40 + b"\r\n")  # 81 bytes, cut at 64: mid-character
        assert b"UnicodeError" in recv_until(s, b">>> ")
        s.sendall(b"6*7\r\n")
        assert b"42" in recv_until(s, b">>> ")
    assert tn.proc.poll() is None


def test_no_repl_without_login(tn):
    with socket.create_connection(("127.0.0.1", tn.port)) as s:
        recv_until(s, b"login: ")
        s.sendall(b"6*7\r\n")
        out = recv_until(s, b"Password: ")
        s.sendall(b"6*7\r\n")
        out += recv_until(s, b"login: ")
        s.sendall(b"import os\r\n6*7\r\n")
        out += recv_quiet(s)
        assert b"42" not in out and b">>>" not in out and b"Logged in" not in out
        assert out.count(b"Login incorrect") == 2


def test_real_telnet_client_login_and_repl(tn):
    child = pexpect.spawn(require_tool("telnet", "telnet"), ["127.0.0.1", str(tn.port)], timeout=5)
    try:
        child.expect("login: ")
        child.sendline("micro")
        child.expect("Password: ")
        child.sendline("s3cret")
        child.expect("Logged in")
        assert b"s3cret" not in child.before  # the password is not echoed
        child.expect(">>> ")
        child.sendline("6*7")
        child.expect("42")
        child.expect(">>> ")
        child.sendline("1/0")
        child.expect("ZeroDivisionError")
        # a second client meanwhile gets a login of its own (the session stays until it logs in);
        # while that login is open, a third is turned away
        with socket.create_connection(("127.0.0.1", tn.port)) as other:
            assert recv_until(other, b"login: ").endswith(b"login: ")
            with socket.create_connection(("127.0.0.1", tn.port)) as third:
                assert b"Busy" in recv_until(third, b"\r\n")
        child.sendline("'still' + ' here'")
        child.expect("still here")
    finally:
        child.close(force=True)
    log = tn.stop()
    assert "logged in as micro" in log
    assert log.count("connected") >= 2 and "refused (busy)" in log  # one log line per connection


def test_a_new_login_takes_the_session_over_from_a_vanished_laptop(tn):
    # A laptop whose lid was shut leaves a half-open connection that nothing detects on an idle
    # REPL: the board must not stay taken until reset. A wrong password changes nothing; the next
    # good login gets the REPL, the old session is told and closed.
    old, out = login(tn.port)
    assert b"Logged in" in out
    intruder, out = login(tn.port, password=b"wrong")
    assert b"Login incorrect" in out
    intruder.close()
    old.sendall(b"6*7\r\n")
    assert b"42" in recv_until(old, b">>> ")
    new, out = login(tn.port)
    assert b"Logged in" in out
    told = recv_until(old, b"(the end)")                 # up to EOF: raises if old is left open
    assert b"Session taken over by 127.0.0.1:" in told
    new.sendall(b"6*7\r\n")
    assert b"42" in recv_until(new, b">>> ")
    new.close()
    assert "taken over by 127.0.0.1:" in tn.stop()


def reset(s: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a client that crashed or gave up does."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


def test_a_client_that_resets_mid_answer_never_stops_the_server(tn):
    # A fleet command that timed out, a Ctrl-C'd tool: the board's next write to that client
    # fails (ECONNRESET / EPIPE). Before, that error came out of the socket callback and ended
    # the server (on a board: left the session attached or the login slot taken).
    s, out = login(tn.port)
    assert b"Logged in" in out
    s.sendall(b"__import__('time').sleep(0.5) or 7\r\n")
    assert b"or 7" in recv_until(s, b"\r\n")            # echoed: the line is in, its answer comes after the reset
    reset(s)
    time.sleep(1)
    s, out = login(tn.port)                               # the server still serves
    assert b"Logged in" in out
    s.sendall(b"6*7\r\n")
    assert b"42" in recv_until(s, b">>> ")
    s.close()
    assert "gone" in tn.stop()


def test_a_lockout_long_past_does_not_come_back_when_ticks_wrap(micropython, tmp_path):
    # A board's ticks_ms wraps every 2**30 ms (12.4 days): 6 days after a lockout ended,
    # ticks_diff(until, now) is positive again. A lockout is a wait of at most its own length.
    p = tmp_path / "wrap.py"
    p.write_text("""
import socket, time, telnet, wsconfig
telnet.start("micro", "s3cret", port=%d, host="127.0.0.1", lockout_ms=1500)
def greeting():
    c = socket.socket()
    c.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
    wsconfig.serve(300)
    g = c.recv(200)
    c.close()
    wsconfig.serve(100)
    return g
f = telnet._bad["127.0.0.1"] = [3, time.ticks_add(time.ticks_ms(), 1500), 1500]  # 3 failed logins: locked for 1.5 s
print("LOCKED", b"Locked" in greeting())
f[1] = time.ticks_add(time.ticks_ms(), 1 << 28)             # how a long-past lockout looks after a wrap
print("WRAPPED", b"login: " in greeting())
telnet.stop()
""" % ((port := free_port()), port))
    out = micropython.run(p, timeout=30).stdout
    assert "LOCKED True\n" in out and "WRAPPED True\n" in out, out


def test_failed_logins_lock_out_then_recover(tn):
    s, out = login(tn.port, password=b"wrong1")
    assert b"Login incorrect" in out
    assert out.endswith(b"login: ")
    for pw in (b"wrong2", b"wrong3"):
        s.sendall(b"micro\r\n")
        recv_until(s, b"Password: ")
        s.sendall(pw + b"\r\n")
        out = recv_until(s, b"login: " if pw == b"wrong2" else b"s\r\n")
    assert b"Locked for 2 s" in out  # 1.5 s lockout, rounded up
    assert recv_quiet(s) == b""  # and the connection is closed
    s.close()
    # during the lockout even the right password gets nowhere
    with socket.create_connection(("127.0.0.1", tn.port)) as s2:
        assert b"Locked" in recv_until(s2, b"\r\n") and recv_quiet(s2) == b""
    time.sleep(1.6)
    # the next failure locks again, for twice as long (backoff)
    s3, out = login(tn.port, password=b"wrong4")
    assert b"Locked for 3 s" in out
    s3.close()
    time.sleep(3.1)
    s4, out = login(tn.port)
    assert b"Logged in" in out
    s4.sendall(b"2**10\r\n")
    assert b"1024" in recv_until(s4, b">>> ")
    s4.close()
    log = tn.stop()
    assert "login failed (3 in a row)" in log and "refused (locked)" in log and "logged in as micro" in log


def fail_three_times(port: int, source: str) -> bytes:
    s, out = login(port, password=b"wrong1", source=source)
    for pw in (b"wrong2", b"wrong3"):
        s.sendall(b"micro\r\n")
        recv_until(s, b"Password: ")
        s.sendall(pw + b"\r\n")
        out = recv_until(s, b"login: " if pw == b"wrong2" else b"s\r\n")
    s.close()
    return out


def greeting(port: int, source: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
        return recv_until(s, b"\r\n") + recv_quiet(s, 0.2)


def test_one_hosts_failed_logins_lock_that_host_out_not_everyone(tn):
    """A lockout used to be for every host: a student guessing the password locked the teacher
    out of every board it was tried on, for longer at each further guess."""
    assert b"Locked for 2 s" in fail_three_times(tn.port, "127.0.0.2")
    assert b"Locked" in greeting(tn.port, "127.0.0.2")     # the guessing host is locked out
    s, out = login(tn.port, source="127.0.0.1")             # another host logs in at once
    assert b"Logged in" in out
    s.sendall(b"6*7\r\n")
    assert b"42" in recv_until(s, b">>> ")
    s.close()
    assert b"Locked" in greeting(tn.port, "127.0.0.2")     # and the lockout still stands
    log = tn.stop()
    assert "127.0.0.2:" in log and "login failed (3 in a row)" in log and "logged in as micro" in log


def test_past_eight_failing_hosts_newcomers_share_one_lockout(serve):
    """The count is kept apart for at most 8 hosts (a board's heap): a flood of addresses, each
    failing, does not get unlimited guesses, and a host that had failed stays counted."""
    tn = serve("serve_telnet.py", "20000", ready="listening")  # each lockout lasts the test
    for i in range(2, 10):                                  # 8 hosts, each locked out
        assert b"Locked for" in fail_three_times(tn.port, "127.0.1.%d" % i)
    assert b"login: " in greeting(tn.port, "127.0.2.1")     # a ninth host may still try ...
    assert b"Locked for" in fail_three_times(tn.port, "127.0.2.1")
    assert b"Locked" in greeting(tn.port, "127.0.2.2")     # ... but it shares its count with the tenth
    assert b"Locked" in greeting(tn.port, "127.0.1.5")     # the first eight are still locked out


def test_a_good_login_from_a_host_sharing_the_count_does_not_reset_it(serve):
    """Past 8 hosts the newcomers share one count: a student logging in among them must not give
    a guessing newcomer its tries again."""
    tn = serve("serve_telnet.py", "20000", ready="listening")
    for i in range(2, 10):
        assert b"Locked for" in fail_three_times(tn.port, "127.0.1.%d" % i)
    s, _ = login(tn.port, password=b"wrong1", source="127.0.2.1")    # the shared count: 1
    s.sendall(b"micro\r\n")
    recv_until(s, b"Password: ")
    s.sendall(b"wrong2\r\n")                                          # 2
    recv_until(s, b"login: ")
    s.close()
    s, out = login(tn.port, source="127.0.2.2")                        # a good login among them
    assert b"Logged in" in out
    s.close()
    s, out = login(tn.port, password=b"wrong3", source="127.0.2.3")   # 3: locked, not 1 again
    assert b"Locked for" in out, out
    s.close()


def test_a_host_idle_for_a_lockouts_length_gives_its_place_to_a_newcomer(tn):
    for i in range(2, 10):
        assert b"Locked for 2 s" in fail_three_times(tn.port, "127.0.1.%d" % i)
    time.sleep(1.6 + 1.6)                                   # the lockouts over, then idle as long
    assert b"Locked for 2 s" in fail_three_times(tn.port, "127.0.2.1")
    s, out = login(tn.port, source="127.0.2.2")             # a place of its own: not locked by .2.1
    assert b"Logged in" in out
    s.close()


def test_a_login_left_hanging_gives_way_after_the_ticks_wrap(micropython):
    """A laptop that vanished at the login prompt (half-open: nothing closes it) left the login
    pending; the next connection 6.2 days later (2**29 ms, on a board's 30-bit ticks) saw its age
    as negative, "fresh", and every login was refused as busy for 6 more days."""
    port = free_port()
    out = micropython.run(f"""
import sys, socket
sys.path.insert(0, {str(HERE)!r})
import ticks30, telnet, wsconfig
telnet.time = ticks30
telnet.start("micro", "s3cret", port={port}, host="127.0.0.1")
def client():
    c = socket.socket()
    c.connect(socket.getaddrinfo("127.0.0.1", {port})[0][-1])
    return c
a = client()                     # at the login prompt, then silent for good
wsconfig.serve(300)
ticks30.jump((1 << 29) + 1000)   # nobody comes for 6.2 days
b = client()
wsconfig.serve(300)
b.settimeout(2)
print("SECOND", b.recv(300))
telnet.stop()
""", timeout=30).stdout
    line = next(x for x in out.splitlines() if x.startswith("SECOND"))
    assert line.endswith("login: '") and "Busy" not in line, out


def test_a_host_idle_past_the_ticks_wrap_gives_its_place_to_a_newcomer(micropython):
    """8 hosts failed once, then 6.2 days passed (2**29 ms on a board's 30-bit ticks): their last
    failures read as the future, no place was ever free again, and every newcomer shared one
    count (one guessing student locked out all of them)."""
    out = micropython.run(f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import ticks30, telnet
telnet.time = ticks30
telnet.start("micro", "s3cret", port=0, host="127.0.0.1")
for i in range(8):
    f = telnet._entry("127.0.1.%d:5000" % i)
    f[0], f[1], f[2] = 3, ticks30.ticks_add(ticks30.ticks_ms(), -1000), 2000   # locked out, the lockout over
print("SHARED NOW", telnet._entry("127.0.2.1:5000") is telnet._bad.get("*"))
ticks30.jump((1 << 29) + 1000)
print("SHARED LATER", telnet._entry("127.0.2.2:5000") is telnet._bad.get("*"))
telnet.stop()
""", timeout=30).stdout
    assert "SHARED NOW True" in out and "SHARED LATER False" in out, out


def test_refuses_to_start_without_password_and_reads_the_config(micropython, serve, tmp_path):
    cfg = tmp_path / "workshop.json"
    cfg.write_text(json.dumps({"telnet": {"user": "micro"}}))
    r = micropython.run("import telnet\ntelnet.start(port=0)", env={"WORKSHOP_CONFIG": str(cfg)}, check=False)
    assert r.returncode != 0 and "a password is required" in r.stdout + r.stderr
    assert "listening" not in r.stdout
    cfg.write_text(json.dumps({"telnet": {"user": "ada", "password": "lovelace"}, "other": 1}))
    srv = serve("serve_telnet.py", env={"WORKSHOP_CONFIG": str(cfg)}, ready="listening")
    s, out = login(srv.port, b"ada", b"lovelace")
    assert b"Logged in" in out
    s.close()


class Console:
    """serve_telnet_dupterm.py: telnet on a board-style console (os.dupterm replayed on unix);
    its stdin is the UART REPL's input, its stdout the UART."""

    def __init__(self, micropython) -> None:
        self.port = free_port()
        self.proc = micropython.popen(HERE / "serve_telnet_dupterm.py", str(self.port), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()  # the UART never backs up
        # the frozen UNIX firmware has the real os.dupterm: the session must pass its checks
        assert self.wait_for("ready").split()[1] == ("dupterm" if micropython.name == "frozen" else "replayed")

    def _drain(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()

    def wait_for(self, text: str, timeout: float = 60) -> str:
        """The last UART line containing text, waiting for one."""
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = [x for x in self.lines if text in x]
                if hit:
                    return hit[-1]
                if not self.cond.wait(max(0.0, end - time.monotonic())):
                    raise AssertionError(f"no {text!r} on the UART: {self.lines[-20:]}")

    def type(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_a_stalled_client_never_slows_the_uart_and_is_detached(micropython):
    con = Console(micropython)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a laptop that stops reading
        s.connect(("127.0.0.1", con.port))
        recv_until(s, b"login: ")
        s.sendall(b"micro\r\ns3cret\r\n")
        assert b"Logged in" in recv_until(s, b"session.\r\n")
        s.sendall(b"6*7\r")
        assert b"42\r\n" in recv_until(s, b"42\r\n")  # the session is the console
        # the log lines of a second connection go to the UART, not into the logged-in session
        with socket.create_connection(("127.0.0.1", con.port)) as other:
            assert recv_until(other, b"login: ").endswith(b"login: ")
        assert con.wait_for(" connected", 5).startswith("telnet: 127.0.0.1:")
        assert con.wait_for(" closed", 5).startswith("telnet: 127.0.0.1:")
        assert recv_quiet(s) == b"", "telnet's log reached the logged-in session"
        # now the client stops reading while the UART REPL prints for 7 s (buffers fill, then 3 s stalled)
        con.type("flood(7000)")
        _, n, worst_ms, attached = con.wait_for("FLOOD", 30).split()
        # The defect was ~1 s per print (a busy-wait on EAGAIN); 250 ms leaves room for a loaded CI
        # machine (63 ms seen there, under 10 ms alone) and still fails on any such wait.
        assert int(worst_ms) < 250, f"a console print took {worst_ms} ms while the client stalled"
        assert int(n) > 7000 and attached == "False"  # full speed; the stalled client detached
        assert con.wait_for("not reading", 5).startswith("telnet: 127.0.0.1:")
        s.close()
    finally:
        con.stop()


def test_a_reading_client_gets_a_burst_larger_than_the_send_buffer_byte_exact(micropython):
    # `for i in range(2000): print(i)` (~8.9 KB) at the UART's pace through the smallest send
    # buffer Linux gives (4.6 KB, which holds ~35 B of 5-byte writes: far less than the
    # ESP8266's 2.9 KB), to a client that reads what has arrived every 20 ms (a laptop's Wi-Fi
    # and delayed ACKs): what the socket cannot take at once must wait, not vanish.
    con = Console(micropython)
    try:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's smallest
        s.connect(("127.0.0.1", con.port))
        recv_until(s, b"login: ")
        s.sendall(b"micro\r\ns3cret\r\n")
        assert b"Logged in" in recv_until(s, b"session.\r\n")
        con.type("sndbuf(1)")
        con.wait_for("SNDBUF", 5)
        assert recv_quiet(s) == b""
        want = b"".join(b"%d\r\n" % i for i in range(2000))
        con.type("burst(2000)")
        got = b""
        s.setblocking(False)
        end = time.monotonic() + 20
        while len(got) < len(want) and time.monotonic() < end:
            time.sleep(0.02)
            try:
                while True:
                    d = s.recv(65536)
                    if not d:
                        break
                    got += d
            except BlockingIOError:
                pass
        assert con.wait_for("BURST", 10) == "BURST %d" % (len(want) - 2000)  # UART bytes (LF only)
        assert len(got) == len(want) and got == want, f"{len(got)} of {len(want)} bytes, first loss at " \
            f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}"
        s.setblocking(True)
        s.sendall(b"6*7\r")
        assert b"42\r\n" in recv_until(s, b"42\r\n")  # still attached
        s.close()
    finally:
        con.stop()


def test_a_socket_callback_allocates_nothing_of_its_own(micropython, tmp_path):
    # On a board on_data runs once per received packet: a buffer allocated there is GC churn.
    p = tmp_path / "cb.py"
    p.write_text("""
import gc, socket, telnet, wsconfig
telnet.start("micro", "s3cret", port=%d, host="127.0.0.1")
c = socket.socket()
c.connect(socket.getaddrinfo("127.0.0.1", %d)[0][-1])
wsconfig.serve(300)
s = telnet._lg  # the session logging in
assert s is not None
s.on_data(None)
a = b = i = 0  # the globals exist before measuring: a new one can grow the module's dict
gc.collect()
gc.disable()
a = gc.mem_alloc()
while i < 100:
    s.on_data(None)  # a callback with nothing (more) to read
    i += 1
b = gc.mem_alloc()
gc.enable()
print("ALLOC", b - a)
telnet.stop()
""" % ((port := free_port()), port))
    out = micropython.run(p, timeout=30).stdout
    assert "ALLOC 0\n" in out, out  # bytes over 100 callbacks


def test_connections_that_arrive_together_are_all_answered_from_one_callback(micropython, tmp_path):
    # A board runs _accept from a socket callback, one per connection, through a scheduler queue
    # 4 deep that telnet, mdns and the tick share: when it is full, a callback is lost. The
    # connection it was for waited, unanswered, in lwIP's accept queue (one slot: listen(1)),
    # and every later connection was turned away there: no REPL over the network until a reset.
    # Here two laptops connect while the board is busy and only one callback comes: both answered.
    p = tmp_path / "lost.py"
    p.write_text("""
import socket, time, telnet, wsconfig
telnet.start("micro", "s3cret", port=%d, host="127.0.0.1")
dst = socket.getaddrinfo("127.0.0.1", %d)[0][-1]
cs = []
for i in range(2):
    c = socket.socket()
    c.connect(dst)
    cs.append(c)
time.sleep_ms(100)
telnet._accept(telnet._srv)  # the one callback that came
time.sleep_ms(100)
for c in cs:
    c.setblocking(False)
    try:
        print("GOT", repr(c.recv(200)))
    except OSError:
        print("GOT nothing")
telnet.stop()
""" % ((port := free_port()), port))
    out = micropython.run(p, timeout=30).stdout
    got = [line for line in out.splitlines() if line.startswith("GOT")]
    assert len(got) == 2 and got[0].endswith("login: '") and "Busy" in got[1], out


def test_a_client_that_resets_mid_login_does_not_keep_the_next_one_out(micropython, tmp_path):
    # A fleet run Ctrl-C'd at the password prompt, a laptop's telnet killed with the prompt
    # unread: the client resets. lwIP (ESP8266) calls a socket back for data and for a close,
    # never for a reset, so nothing told telnet, and for a minute every login was refused as
    # "Busy: another telnet login is in progress". Here, as on that board, the reset brings no
    # callback: the next client still gets its login.
    p = tmp_path / "rst.py"
    p.write_text("""
import socket, time, telnet
telnet.start("micro", "s3cret", port=%d, host="127.0.0.1")
dst = socket.getaddrinfo("127.0.0.1", %d)[0][-1]
def client():
    c = socket.socket()
    c.connect(dst)
    time.sleep_ms(50)
    telnet._accept(telnet._srv)  # its callback
    time.sleep_ms(50)
    return c
old = client()
old.send(b"micro\\r\\n")
time.sleep_ms(50)
telnet._lg.on_data(None)  # the data's callback: "Password: " is sent, and not read
old.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, bytes([1, 0, 0, 0, 0, 0, 0, 0]))
old.close()  # a reset (unread data, linger 0); lwIP calls nothing back for it
time.sleep_ms(50)
new = client()
print("GOT", repr(new.recv(200)))
telnet.stop()
""" % ((port := free_port()), port))
    out = micropython.run(p, timeout=30).stdout
    got = [line for line in out.splitlines() if line.startswith("GOT")]
    assert got and got[0].endswith("login: '") and "Busy" not in got[0], out


def test_what_is_typed_with_the_password_reaches_the_repl_on_a_board(micropython):
    """A paste or a script sends `micro\\r\\npw\\r\\n6*7\\r` in one packet: on the board path the
    bytes after the password were dropped (the session attached to dupterm and returned)."""
    con = Console(micropython)
    try:
        with socket.create_connection(("127.0.0.1", con.port)) as s:
            recv_until(s, b"login: ")
            s.sendall(b"micro\r\ns3cret\r\n6*7\r")
            got = recv_until(s, b"42\r\n")
            assert b"Logged in" in got and got.endswith(b"42\r\n"), got
            s.sendall(b"7*6\r")                       # and the session goes on as usual
            assert recv_until(s, b"42\r\n").endswith(b"42\r\n")
    finally:
        con.stop()
