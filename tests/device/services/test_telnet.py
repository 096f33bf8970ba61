"""telnet: a real telnet client (Debian netkit telnet under pexpect) and raw sockets against the
server running in the MicroPython unix runtime. The unix port has no os.dupterm, so a logged-in
session gets the module's small line evaluator instead of the REPL; the login, negotiation and
lockout around it are the code a board runs."""

from __future__ import annotations

import json
import socket
import time

import pexpect
import pytest

from support import require_tool

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


def login(port: int, user: bytes = b"micro", password: bytes = b"s3cret") -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port))
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
        # a second client meanwhile is turned away, the session stays
        with socket.create_connection(("127.0.0.1", tn.port)) as other:
            assert b"Busy" in recv_until(other, b"\r\n")
        child.sendline("'still' + ' here'")
        child.expect("still here")
    finally:
        child.close(force=True)
    log = tn.stop()
    assert "logged in as micro" in log
    assert log.count("connected") >= 2 and "refused (busy)" in log  # one log line per connection


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
