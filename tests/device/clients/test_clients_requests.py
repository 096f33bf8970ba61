"""requests / urequests under MicroPython against a real local HTTP(S) server (http.server)."""

from __future__ import annotations

import json
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from clienttools import BIG, CHUNKS, DeviceProcess, device_lines, free_port

PRELUDE = """
import sys, json
import urequests as requests
BASE = sys.argv[1]
"""


def run(micropython, code: str, base: str, **kw):
    return device_lines(micropython.run(PRELUDE + code, base, **kw).stdout)


def test_get_json_status_headers(micropython, http_peer):
    out = run(micropython, """
r = requests.get(BASE + "/json")
print(repr((r.status_code, r.reason, r.headers["Content-Type"], r.json())))
with requests.get(BASE + "/missing") as r:
    print(repr((r.status_code, r.reason, r.text)))
print(repr(requests.head(BASE + "/json").status_code))
""", http_peer.url)
    assert out == [
        (200, "OK", "application/json", {"ok": True, "unit": "°C"}),
        (404, "Not Found", "nope"),
        200,
    ]


def test_requests_are_http_1_1_with_host_and_one_connection_each(micropython, http_peer):
    """A chunked request body is only valid in HTTP/1.1; Connection: close ends each exchange
    even on a keep-alive server, so no request waits for a server timeout."""
    out = run(micropython, """
import time
t = time.ticks_ms()
for i in range(3):
    r = requests.post(BASE + "/echo", data=iter((b"a", b"bc")))
    print(repr((r.status_code, r.json()["body"])))
print(repr(time.ticks_diff(time.ticks_ms(), t) < 2000))
""", http_peer.url)
    assert out == [(200, "616263")] * 3 + [True]
    mine = http_peer.seen[-3:]   # the peer serves the whole session
    assert [(s["version"], s["headers"].get("Connection"), s["headers"].get("Transfer-Encoding"))
            for s in mine] == [("HTTP/1.1", "close", "chunked")] * 3
    assert all(s["headers"]["Host"] == http_peer.url.split("//")[1].split("/")[0] for s in mine)


def test_bodies_are_sent_byte_exact_with_their_byte_length(micropython, http_peer):
    out = run(micropython, """
def show(r):
    d = r.json()
    h = d["headers"]
    print(repr((d["method"], d["path"], d["body"], h.get("Content-Length"), h.get("Content-Type"),
                h.get("Host"), h.get("Authorization"), h.get("X-Ws"))))
show(requests.post(BASE + "/echo?x=1", json={"t": "23.5°C"}))
show(requests.put(BASE + "/echo", data="ünïcode"))
show(requests.patch(BASE + "/echo", data=bytes(range(256)), headers={"X-Ws": "1"}))
show(requests.delete(BASE + "/echo", auth=("micro", "pässword")))
def gen():
    yield b"abc"
    yield "°".encode()
show(requests.post(BASE + "/echo", data=gen()))
""", http_peer.url)
    host = http_peer.url.split("//")[1]
    # MicroPython's json.dumps keeps non-ASCII as UTF-8 (16 bytes, 15 characters)
    body = json.dumps({"t": "23.5°C"}, ensure_ascii=False).encode()
    basic = "Basic " + __import__("base64").b64encode("micro:pässword".encode()).decode()
    assert out == [
        ("POST", "/echo?x=1", body.hex(), str(len(body)), "application/json", host, None, None),
        ("PUT", "/echo", "ünïcode".encode().hex(), str(len("ünïcode".encode())), None, host, None, None),
        ("PATCH", "/echo", bytes(range(256)).hex(), "256", None, host, None, "1"),
        ("DELETE", "/echo", "", None, None, host, basic, None),
        ("POST", "/echo", (b"abc" + "°".encode()).hex(), None, None, host, None, None),
    ]
    assert http_peer.seen[-1]["headers"]["Transfer-Encoding"] == "chunked"


def test_redirects_absolute_relative_and_bounded(micropython, http_peer):
    out = run(micropython, """
def show(r):
    d = r.json()
    print(repr((r.status_code, d["method"], d["path"], d["body"])))
show(requests.get(BASE + "/redirect/302?to=/echo?a=1"))
show(requests.get(BASE + "/redirect/301?to=" + BASE + "/echo?b=2"))
show(requests.get(BASE + "/redirect/302?to=echo?c=3"))                   # relative to the directory
show(requests.post(BASE + "/redirect/303?to=/echo", data=b"form"))      # 303: GET, body dropped
show(requests.post(BASE + "/redirect/307?to=/echo", data=b"kept"))      # 307: same method and body
r = requests.get(BASE + "/lowercase")                                  # `location:` in lower case
print(repr((r.status_code, r.json())))
try:
    requests.get(BASE + "/loop")
except ValueError as e:
    print(repr(str(e)))
""", http_peer.url)
    assert out == [
        (200, "GET", "/echo?a=1", ""),
        (200, "GET", "/echo?b=2", ""),
        (200, "GET", "/redirect/echo?c=3", ""),
        (200, "GET", "/echo", ""),
        (200, "POST", "/echo", b"kept".hex()),
        (200, {"ok": True, "unit": "°C"}),
        "too many redirects",
    ]


def test_chunked_and_streamed_responses(micropython, http_peer):
    out = run(micropython, """
r = requests.get(BASE + "/chunked")
c = r.content
print(repr((type(c).__name__, bytes(c))))  # the chunks joined in place: a bytearray, not copied again
r = requests.get(BASE + "/big", stream=True)
n = 0
h = 0
while 1:
    b = r.raw.read(1000)
    if not b:
        break
    for x in b:
        h = (h * 31 + x) & 0xFFFFFFFF
    n += len(b)
r.close()
print(repr((r.headers["Content-Length"], n, h)))
""", http_peer.url)
    h = 0
    for x in BIG:
        h = (h * 31 + x) & 0xFFFFFFFF
    assert out == [("bytearray", b"".join(CHUNKS)), (str(len(BIG)), len(BIG), h)]


def test_stream_true_reads_a_chunked_body_without_its_framing(micropython, http_peer):
    out = run(micropython, """
r = requests.get(BASE + "/chunked", stream=True)
parts = []
while 1:
    b = r.raw.read(7)                      # pieces across chunk boundaries
    if not b:
        break
    parts.append(bytes(b))
r.close()
print(repr(b"".join(parts)))
print(repr(max(len(p) for p in parts)))
r = requests.get(BASE + "/chunked", stream=True)
buf = bytearray(64)
got = b""
while 1:
    n = r.raw.readinto(buf)
    if not n:
        break
    got += buf[:n]
print(repr(got))
print(repr(r.raw.read()))                  # at the end: empty, not a hang
r.close()
with requests.get(BASE + "/big", stream=True) as r:
    buf = bytearray(1000)
    n = 0
    while 1:
        k = r.raw.readinto(buf)
        if not k:
            break
        n += k
    print(repr(n))
""", http_peer.url)
    assert out == [b"".join(CHUNKS), 7, b"".join(CHUNKS), b"", len(BIG)]


def test_a_query_right_after_the_host_is_split_off(micropython, http_peer):
    """The host ends at the first "/" or "?": a query holding slashes (?next=/a/b) stays whole."""
    out = run(micropython, """
for q in ("?x=1&y=2", "?next=/a/b", "?x=/"):
    r = requests.get(BASE + q)
    print(repr(r.status_code))
""", http_peer.url)
    assert out == [400, 400, 400]  # the peer's "unknown route", reached with the right request line
    assert [s["path"] for s in http_peer.seen[-3:]] == ["/?x=1&y=2", "/?next=/a/b", "/?x=/"]
    assert http_peer.seen[-1]["headers"]["Host"] == http_peer.url.split("//")[1]


def _writes_per_connection(trace: str, port: int) -> list[int]:
    """From `strace -e trace=connect,write,sendto,close`: how many writes each connection to port made."""
    import re

    counts, open_fds = [], {}
    for line in trace.splitlines():
        m = re.search(r"connect\((\d+), .*htons\(%d\)" % port, line)
        if m:
            open_fds[m.group(1)] = len(counts)
            counts.append(0)
            continue
        m = re.search(r"(?:write|sendto)\((\d+),", line)
        if m and m.group(1) in open_fds:
            counts[open_fds[m.group(1)]] += 1
        m = re.search(r"close\((\d+)\)", line)
        if m:
            open_fds.pop(m.group(1), None)
    return counts


def test_the_request_head_leaves_in_one_write(micropython, http_peer, tmp_path):
    # Counted at the system call (strace), on the real socket: each write is a TCP segment (a TLS
    # record under https); small ones in a row stall on Nagle + delayed ACK.
    import shutil
    import subprocess

    strace = shutil.which("strace")
    assert strace, "strace not found: apt-get install strace"
    trace = tmp_path / "trace"
    script = PRELUDE + """
requests.get(BASE + "/echo?a=1", headers={"X-One": "1", "X-Two": b"2"}, auth=("micro", "pw")).close()
requests.post(BASE + "/echo", json={"t": 23.5}).close()
requests.put(BASE + "/echo", data=b"x" * 3000).close()
print(repr("done"))
"""
    proc = subprocess.run([strace, "-f", "-e", "trace=connect,write,sendto,close", "-o", str(trace),
                           *micropython.command("-c", script, http_peer.url)], env=micropython.environ(),
                          capture_output=True, text=True, timeout=60)
    assert device_lines(proc.stdout) == ["done"], proc.stderr
    port = int(http_peer.url.rsplit(":", 1)[1])
    assert _writes_per_connection(trace.read_text(), port) == [1, 1, 2]  # head (+ small body); big body apart
    assert [s["body"] for s in http_peer.seen[-3:]] == [b"", b'{"t": 23.5}', b"x" * 3000]


def test_https_verifies_the_server_against_a_given_ca(micropython, pki_https_peer, pki):
    code = PRELUDE + """
ca = open(sys.argv[2], "rb").read()
other = open(sys.argv[3], "rb").read()
print(repr(requests.get(BASE + "/json", cadata=ca).json()))
try:
    requests.get(BASE + "/json", cadata=other)
    print(repr("accepted an unknown CA"))
except (OSError, ValueError) as e:
    print(repr("refused"))
print(repr(requests.get(BASE + "/json").status_code))   # no CA: encrypted, not authenticated
"""
    out = device_lines(micropython.run(code, pki_https_peer.url, str(pki.ca_der), str(pki.other_ca_der)).stdout)
    assert out == [{"ok": True, "unit": "°C"}, "refused", 200]


def test_network_errors_are_oserrors(micropython, http_peer):
    out = run(micropython, f"""
import time
try:
    requests.get("http://127.0.0.1:{free_port()}/")
except OSError:
    print(repr("refused"))
t = time.ticks_ms()
try:
    requests.get(BASE + "/slow", timeout=0.5)
except OSError:
    print(repr(("timeout", time.ticks_diff(time.ticks_ms(), t) < 2500)))
try:
    requests.get("ftp://127.0.0.1/")
except ValueError as e:
    print(repr(str(e)))
""", http_peer.url)
    assert out == ["refused", ("timeout", True), "Unsupported protocol: ftp:"]


def test_https_get(micropython, https_peer):
    out = run(micropython, """
r = requests.get(BASE + "/json")
print(repr((r.status_code, r.json())))
""", https_peer.url)
    assert out == [(200, {"ok": True, "unit": "°C"})]


def test_requests_leak_no_memory_in_an_esp8266_sized_heap(micropython, http_peer, device_env):
    out = run(micropython, """
import gc
r = requests.get(BASE + "/json")
r.json()
gc.collect()
before = gc.mem_alloc()
for i in range(100):
    with requests.post(BASE + "/echo", json={"i": i}) as r:
        assert r.json()["method"] == "POST"
gc.collect()
print(gc.mem_alloc() - before)
""", http_peer.url, heapsize="38k", env=device_env)
    assert out[0] < 512, f"{out[0]} bytes still held after 100 requests"


def test_form_and_json_posts_with_basic_auth_from_our_base64(micropython, http_peer):
    out = run(micropython, """
from base64 import b64encode
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
def show(r):
    d = r.json()
    print(repr((d["method"], d["form"], d["basic"], d["headers"].get("Content-Type"), d["body"])))
show(requests.post(BASE + "/echo", data="temp=23.5&unit=%C2%B0C", headers=FORM, auth=("micro", "s3cret")))
hdr = {"Content-Type": "application/x-www-form-urlencoded",
       "Authorization": b"Basic " + b64encode("ünï:pä:ss".encode())}        # built by hand with base64
show(requests.post(BASE + "/echo", data=b"a=1&b=%20x", headers=hdr))
show(requests.post(BASE + "/echo", json={"n": [1, 2]}, auth=("micro", "")))
""", http_peer.url)
    assert out == [
        ("POST", {"temp": "23.5", "unit": "°C"}, "micro:s3cret", "application/x-www-form-urlencoded",
         b"temp=23.5&unit=%C2%B0C".hex()),
        ("POST", {"a": "1", "b": " x"}, "ünï:pä:ss", "application/x-www-form-urlencoded", b"a=1&b=%20x".hex()),
        ("POST", None, "micro:", "application/json", b'{"n": [1, 2]}'.hex()),
    ]


def test_every_redirect_kind(micropython, http_peer):
    # 301/302/303: the browser rule, the next request is a GET without body or Content-Type;
    # 307/308: the same method, body and Content-Type. Relative and absolute Locations alike.
    out = run(micropython, """
for code in (301, 302, 303, 307, 308):
    for to in ("/echo", "echo", BASE + "/echo"):
        r = requests.post(BASE + "/redirect/%d?to=%s" % (code, to), data="x=°",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        d = r.json()
        print(repr((code, r.status_code, d["method"], d["path"], d["body"], d["headers"].get("Content-Type"))))
    d = requests.put(BASE + "/redirect/%d?to=/echo" % code, data=b"put").json()
    print(repr((code, d["method"], d["body"])))
""", http_peer.url)
    form = "application/x-www-form-urlencoded"
    body = "x=°".encode().hex()
    expected = []
    for code in (301, 302, 303, 307, 308):
        keep = code in (307, 308)
        for path in ("/echo", "/redirect/echo", "/echo"):
            expected.append((code, 200, "POST" if keep else "GET", path, body if keep else "", form if keep else None))
        expected.append((code, "PUT" if keep else "GET", b"put".hex() if keep else ""))
    assert out == expected


def test_connect_and_read_timeouts_are_separate_oserrors(micropython, http_peer):
    # A listener whose accept queue is full: the kernel drops the SYN, connect() waits (on
    # loopback, nothing else makes a connect hang). Then a server that accepts and never answers.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fill = []
    for _ in range(3):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(srv.getsockname())
        fill.append(c)
    try:
        out = run(micropython, f"""
import time
from errno import ETIMEDOUT
for url in ("http://127.0.0.1:{srv.getsockname()[1]}/", BASE + "/slow"):
    t = time.ticks_ms()
    try:
        requests.get(url, timeout=0.6)
        print(repr("answered"))
    except OSError as e:
        print(repr((e.errno == ETIMEDOUT, 500 <= time.ticks_diff(time.ticks_ms(), t) < 2000)))
""", http_peer.url)
    finally:
        for c in fill:
            c.close()
        srv.close()
    assert out == [(True, True), (True, True)]


def test_1000_sequential_requests_hold_no_sockets_and_no_heap(micropython, http_peer, device_env, tmp_path):
    dev = DeviceProcess(micropython, PRELUDE + """
import gc
for i in range(1000):
    k = i % 5
    if k == 0:
        requests.get(BASE + "/json").json()
    elif k == 1:
        with requests.post(BASE + "/echo", data=b"x" * 100) as r:
            r.content
    elif k == 2:
        requests.get(BASE + "/redirect/302?to=/missing").text
    elif k == 3:
        requests.head(BASE + "/json").close()
    else:
        r = requests.get(BASE + "/big", stream=True)      # streamed, half read, then closed
        r.raw.read(1000)
        r.close()
    if i % 100 == 99:
        gc.collect()
        print(repr((i + 1, gc.mem_free())))
""", tmp_path, http_peer.url, heapsize="38k", env=device_env)
    fds = Path(f"/proc/{dev.proc.pid}/fd")
    try:
        base = len(list(fds.iterdir()))
        seen = []
        for n in range(100, 1001, 100):
            done, free = dev.expect(..., timeout=60)
            assert done == n
            seen.append((free, len(list(fds.iterdir()))))
        dev.finish()
    finally:
        dev.kill()
    assert max(fd for _, fd in seen) <= base + 2, f"open fds {[fd for _, fd in seen]}, {base} at start"
    frees = [free for free, _ in seen]
    assert max(frees) - min(frees[1:]) < 512, f"gc.mem_free() after each 100 requests: {frees}"


def test_credentials_stay_with_their_host_across_redirects(micropython, http_peer, other_http_peer):
    """Basic auth follows a redirect on the same host:port, never to another one (CPython requests'
    rule; micropython-lib forwards it). A scheme-relative Location (//host/path) keeps the scheme."""
    out = run(micropython, f"""
OTHER = "{other_http_peer.url}"
def show(r):
    d = r.json()
    print(repr((d["path"], d["basic"])))
show(requests.get(BASE + "/redirect/302?to=/echo?same=1", auth=("micro", "s3cret")))
show(requests.get(BASE + "/redirect/307?to=" + OTHER + "/echo?other=1", auth=("micro", "s3cret")))
show(requests.get(BASE + "/redirect/302?to=" + OTHER[5:] + "/echo?rel=1",
                  headers={{"Authorization": "Basic bWljcm86czNjcmV0"}}))
show(requests.get(BASE + "/redirect/302?to=/echo?bytes=1", auth=(b"micro", b"s3cret")))
# the URL's host decides, not a Host header the caller set (here naming the other server)
show(requests.get(BASE + "/redirect/307?to=" + OTHER + "/echo?host=1", auth=("micro", "s3cret"),
                  headers={{"Host": OTHER[7:]}}))
""", http_peer.url)
    assert out == [("/echo?same=1", "micro:s3cret"), ("/echo?other=1", None), ("/echo?rel=1", None),
                   ("/echo?bytes=1", "micro:s3cret"), ("/echo?host=1", None)]
    assert "Authorization" not in other_http_peer.seen[-1]["headers"]


def test_a_location_on_this_host_may_hold_a_url_in_its_query(micropython, http_peer):
    """Login-style redirects (/login?next=http://…) stay on this host, and a relative Location is
    resolved against the path, not against a "/" in the current URL's query."""
    out = run(micropython, """
for to in ("/echo?next=http://x/y", "/x//echo", "echo?rel=2&pad=/x/y"):
    print(repr(requests.get(BASE + "/redirect/302?to=" + to).json()["path"]))
# a Host header the caller set (a virtual host) does not move a relative redirect to that name
print(repr(requests.get(BASE + "/redirect/302?to=/echo?vhost=1", headers={"Host": "example.invalid"}).json()["path"]))
""", http_peer.url)
    assert out == ["/echo?next=http://x/y", "/x//echo", "/redirect/echo?rel=2", "/echo?vhost=1"]


@contextmanager
def raw_peer(answer, keep_open=False):
    """A bare socket server on loopback for answers http.server will not write: each connection's
    request head goes to answer(head), whose bytes are sent back; the connection is then closed, or
    held open until the peer stops (keep_open). Yields the base URL."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            held.append(c)
            head = b""
            while b"\r\n\r\n" not in head:
                d = c.recv(1024)
                if not d:
                    break
                head += d
            c.sendall(answer(head))
            if not keep_open:
                c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()
        for c in held:
            c.close()


def test_header_lines_a_server_gets_wrong(micropython):
    """A value in another charset is fine when headers are not parsed (or a callable gets the raw
    line); a line without a name is left out of r.headers, not stored as a junk key."""
    def answer(head):
        odd = b"X-Bin: \xff\xfe\r\n" if b"/bin" in head else b"Garbage line\r\n"
        return b"HTTP/1.1 200 OK\r\nX-A: 1\r\n" + odd + b"Content-Length: 2\r\n\r\nok"

    with raw_peer(answer) as base:
        out = run(micropython, """
print(repr(requests.get(BASE + "/bin", parse_headers=False).content))
seen = []
print(repr(requests.get(BASE + "/bin", parse_headers=lambda l, d: seen.append(l)).content))
print(repr(seen[1]))
r = requests.get(BASE + "/garbage")
print(repr((r.headers, r.content)))
""", base)
    assert out == [b"ok", b"ok", b"X-Bin: \xff\xfe\r\n", ({"X-A": "1", "Content-Length": "2"}, b"ok")]


def test_bodies_end_at_content_length_on_a_server_that_keeps_the_connection(micropython):
    """Content-Length frames the body (read in one allocation): a server that keeps the
    connection open despite `Connection: close` does not make .content wait for the timeout,
    and a HEAD answer (Content-Length, no body) is empty at once."""
    def answer(head):
        body = b"" if head.startswith(b"HEAD") else b"hello"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body  # and never closes

    with raw_peer(answer, keep_open=True) as base:
        out = run(micropython, """
import time
t = time.ticks_ms()
print(repr(requests.get(BASE + "/", timeout=3).content))
print(repr(requests.head(BASE + "/", timeout=3).content))
print(repr(requests.get(BASE + "/", timeout=3).text))
print(repr(time.ticks_diff(time.ticks_ms(), t) < 2000))
""", base)
    assert out == [b"hello", b"", "hello", True]
