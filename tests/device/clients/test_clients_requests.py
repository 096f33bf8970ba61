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
        (200, b"OK", "application/json", {"ok": True, "unit": "°C"}),  # reason: bytes, as micropython-lib's
        (404, b"Not Found", "nope"),
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
    yield "°é"                                     # a str piece: its chunk's size is its bytes'
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
        ("POST", "/echo", (b"abc" + "°é".encode()).hex(), None, None, host, None, None),
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
    request (its head, and its body: Content-Length or chunked) goes to answer(request), whose bytes
    are sent back; the connection is then closed, or held open until the peer stops (keep_open).
    Yields the base URL."""
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
            lower = head.split(b"\r\n\r\n", 1)[0].lower()
            if b"transfer-encoding: chunked" in lower:
                done = lambda: head.endswith(b"\r\n0\r\n\r\n")
            else:
                n = lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0] if b"content-length:" in lower else b"0"
                done = lambda: len(head.split(b"\r\n\r\n", 1)[1]) >= int(n)
            while not done():
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


def test_r_raw_is_a_stream_for_json_load_and_readline(micropython):
    """r.raw is a stream, as upstream's socket is: json.load() reads it (a C stream reader calling
    readinto), and readline() gives the body's lines, within its Content-Length (on a server that
    keeps the connection open) and across chunk boundaries."""
    def answer(req):
        if b"/chunked" in req:
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"4\r\nli;n\r\n5\r\ne1\nli\r\n3\r\nne2\r\n2\r\n\nx\r\n0\r\n\r\n")
        if b"/lines" in req:
            return b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nline1\nline2\n"
        body = b'{"a": [1, 2], "t": "\xc2\xb0C"}'
        if b"/cjson" in req:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + body[:5] + \
                   b"\r\n%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body

    with raw_peer(answer, keep_open=True) as base:
        out = run(micropython, """
print(repr(json.load(requests.get(BASE + "/json", stream=True, timeout=3).raw)))
print(repr(json.load(requests.get(BASE + "/cjson", stream=True, timeout=3).raw)))
for p in ("/lines", "/chunked"):
    r = requests.get(BASE + p, stream=True, timeout=3)
    print(repr([r.raw.readline() for i in range(4)]))
    r.close()
""", base)
    assert out == [{"a": [1, 2], "t": "°C"}] * 2 + [
        [b"line1\n", b"line2\n", b"", b""],
        [b"li;ne1\n", b"line2\n", b"x", b""],
    ]


def test_a_head_with_bare_lf_line_ends_keeps_its_body(micropython):
    """Tutorial device servers send 'HTTP/1.1 200 OK\\n' and close: the blank line is a bare LF,
    in the head and in chunk framing alike."""
    def answer(req):
        if b"/chunked" in req:
            return b"HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n2\nok\n3\n!!!\n0\n\n"
        if b"/length" in req:
            return b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"
        return b"HTTP/1.1 200 OK\nContent-Type: text/html\nConnection: close\n\n<p>LED is ON</p>"

    with raw_peer(answer) as base:
        out = run(micropython, """
r = requests.get(BASE + "/")
print(repr((r.status_code, r.headers, r.text)))
print(repr(requests.get(BASE + "/length").content))
print(repr(bytes(requests.get(BASE + "/chunked").content)))
""", base)
    assert out == [(200, {"Content-Type": "text/html", "Connection": "close"}, "<p>LED is ON</p>"),
                   b"ok", b"ok!!!"]


def test_redirects_with_a_query_only_location_and_generator_bodies(micropython):
    """`Location: ?page=2` keeps the path (RFC 3986); a 303 after a chunked POST is a GET without
    Transfer-Encoding; a 307/308 cannot send a spent generator again: a clear error, no empty body."""
    seen = []

    def answer(req):
        seen.append(req)
        line = req.split(b"\r\n", 1)[0]
        if line.startswith(b"GET /dir/qredir "):
            return b"HTTP/1.1 302 Found\r\nLocation: ?page=2\r\nContent-Length: 0\r\n\r\n"
        for code in (b"303", b"307", b"308"):
            if line.startswith(b"POST /" + code):
                return b"HTTP/1.1 %s X\r\nLocation: /done\r\nContent-Length: 0\r\n\r\n" % code
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(line) + line

    with raw_peer(answer) as base:
        out = run(micropython, """
def gen():
    yield b"abc"
    yield b"def"
print(repr(requests.get(BASE + "/dir/qredir").content))
print(repr(requests.post(BASE + "/303", data=gen()).content))
for code in (307, 308):
    try:
        requests.post(BASE + "/%d" % code, data=gen())
        print(repr("followed"))
    except ValueError as e:
        print(repr(str(e)))
""", base)
    assert out == [b"GET /dir/qredir?page=2 HTTP/1.1", b"GET /done HTTP/1.1",
                   "307 redirect: generator body spent",
                   "308 redirect: generator body spent"]
    after_303 = seen[3].lower()
    assert after_303.startswith(b"get /done ") and b"transfer-encoding" not in after_303, after_303
    assert not any(r.startswith(b"POST /done") for r in seen), seen


def test_relative_redirects_lose_their_dot_segments(micropython):
    """`Location: ../index.html` from /s/sub/old is /s/index.html (RFC 3986 5.2.4): it was asked as
    /s/sub/../index.html, which the kit's own webserver answers 404 (it refuses any `..`). A `..`
    above the root stays at it; the query is left as it is. The path each request asked for, as
    the server got it."""
    def answer(req):
        line = req.split(b"\r\n", 1)[0]
        if line.startswith(b"GET /s/sub/old?to="):
            to = line.split(b"?to=", 1)[1].rsplit(b" ", 1)[0]
            return b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % to
        path = line.split(b" ")[1]
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(path) + path

    tos = ["../x", "./x", "a/../b", "../../../x", "..", ".", "a/..", "/p/./q/../r", "../q?a=../b&c=./d"]
    with raw_peer(answer) as base:
        out = run(micropython, f"""
for to in {tos!r}:
    print(repr(requests.get(BASE + "/s/sub/old?to=" + to).content))
""", base)
    assert out == [b"/s/x", b"/s/sub/x", b"/s/sub/b", b"/x", b"/s/", b"/s/sub/", b"/s/sub/", b"/p/r",
                   b"/s/q?a=../b&c=./d"]


def test_a_reason_in_another_charset_is_kept_as_bytes(micropython):
    """r.reason is bytes, as micropython-lib's (r.reason.decode(), r.reason == b"OK"): ours was a
    str, and a status line that is no UTF-8 failed the whole request with UnicodeError."""
    with raw_peer(lambda req: b"HTTP/1.1 200 \xc3\x28bad\r\nContent-Length: 2\r\n\r\nok") as base:
        out = run(micropython, """
r = requests.get(BASE + "/")
print(repr((r.status_code, r.reason, r.content)))
""", base)
    assert out == [(200, b"\xc3(bad", b"ok")]


def test_a_body_cut_short_is_an_oserror(micropython):
    """A server that closes before the body it announced is a network failure: OSError
    (ECONNRESET), which the tutorials' `except OSError` catches (it was a ValueError), for a
    Content-Length body, a chunked one, and a stream read piecewise."""
    def answer(req):
        if b"/chunked" in req:
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"

    with raw_peer(answer) as base:
        out = run(micropython, """
for path, how in (("/", "content"), ("/chunked", "content"), ("/", "read"), ("/", "readline"), ("/chunked", "readinto")):
    r = requests.get(BASE + path)
    try:
        if how == "content":
            r.content
        elif how == "readinto":
            while r.raw.readinto(bytearray(2)):
                pass
        else:
            while getattr(r.raw, how)():
                pass
        print(repr((path, how, "no error")))
    except OSError as e:
        print(repr((path, how, e.errno)))
    r.close()
""", base)
    assert out == [("/", "content", 104), ("/chunked", "content", 104), ("/", "read", 104), ("/", "readline", 104),
                   ("/chunked", "readinto", 104)]


def test_a_chunked_body_cut_short_at_a_chunk_end_is_an_oserror(micropython):
    """A chunked body whose server closes after a whole chunk, before the next size line: the
    missing size line was int(b"", 16), a ValueError; it is the same OSError 104 as a body cut
    short anywhere else, for r.content and r.raw.read() alike."""
    with raw_peer(lambda req: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n") as base:
        out = run(micropython, """
for how in ("content", "read"):
    r = requests.get(BASE + "/")
    try:
        print(repr((how, r.content if how == "content" else r.raw.read())))
    except OSError as e:
        print(repr((how, e.errno, e.args[1])))
    r.close()
""", base)
    assert out == [("content", 104, "HTTP body cut short"), ("read", 104, "HTTP body cut short")]


def test_an_interim_100_continue_is_skipped(micropython):
    def answer(req):
        return (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX-A: 1\r\n\r\n"
                b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")

    with raw_peer(answer) as base:
        out = run(micropython, """
r = requests.post(BASE + "/", data=b"x")
print(repr((r.status_code, r.reason, r.headers, r.content)))
""", base)
    assert out == [(201, b"Created", {"Content-Length": "2"}, b"ok")]


def test_caller_headers_in_any_case_replace_our_defaults(micropython):
    """headers={"host": ..., "content-type": ...}: sent once, as the caller spelt them."""
    seen = []

    def answer(req):
        seen.append(req.split(b"\r\n\r\n", 1)[0])
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    with raw_peer(answer) as base:
        out = run(micropython, """
print(repr(requests.post(BASE + "/", json={"x": 1}, auth=("a", "b"), headers={
    "host": "example", "content-type": "application/vnd+json", "CONNECTION": "close",
    "content-length": "8", "authorization": "Basic old"}).content))
def gen():
    yield b"ab"
print(repr(requests.post(BASE + "/", data=gen(), headers={"transfer-encoding": "chunked"}).content))
""", base)
    assert out == [b"ok", b"ok"]
    names = [l.split(b":")[0].lower() for l in seen[0].split(b"\r\n")[1:]]
    assert sorted(names) == [b"authorization", b"connection", b"content-length", b"content-type", b"host"], seen[0]
    assert b"\r\nhost: example" in seen[0] and b"\r\ncontent-type: application/vnd+json" in seen[0]
    assert b"\r\nauthorization: Basic YTpi" in seen[0]  # auth= wins over the caller's header
    names = [l.split(b":")[0].lower() for l in seen[1].split(b"\r\n")[1:]]
    assert names.count(b"transfer-encoding") == 1, seen[1]


AXTLS = """
import tls as _tls
class Ctx:   # what ESP8266's axTLS offers: CERT_NONE only, no load_verify_locations
    def __init__(self, proto):
        self.c = _tls.SSLContext(proto)
        self.c.verify_mode = _tls.CERT_NONE
        self.verify_mode = 0
    def wrap_socket(self, s, server_hostname=None):
        return self.c.wrap_socket(s, server_hostname=server_hostname)
class Axtls:
    SSLContext = Ctx
    PROTOCOL_TLS_CLIENT = _tls.PROTOCOL_TLS_CLIENT
    CERT_NONE = _tls.CERT_NONE
sys.modules["tls"] = Axtls
"""


def test_cadata_on_a_port_whose_tls_cannot_verify_is_a_clear_error(micropython, pki_https_peer, pki):
    out = device_lines(micropython.run(PRELUDE + AXTLS + """
ca = open(sys.argv[2], "rb").read()
try:
    requests.get(BASE + "/json", cadata=ca)
    print(repr("accepted"))
except NotImplementedError as e:
    print(repr(str(e)))
print(repr(requests.get(BASE + "/json").json()))   # without cadata: encrypted, unauthenticated
""", pki_https_peer.url, str(pki.ca_der)).stdout)
    assert out == ["cadata: this port's TLS cannot verify", {"ok": True, "unit": "°C"}]


def test_a_generator_body_with_the_callers_identity_encoding_goes_unframed(micropython):
    # Transfer-Encoding: identity from the caller: the pieces go as they are, not in chunks.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = []

    def serve():
        c, _ = srv.accept()
        c.settimeout(0.5)                    # the body has no length: all that comes in 0.5 s
        data = b""
        try:
            while d := c.recv(1024):
                data += d
        except socket.timeout:
            pass
        got.append(data)
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        c.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        out = run(micropython, """
def gen():
    yield b"ab"
    yield b"cd"
print(repr(requests.post(BASE + "/", data=gen(), headers={"Transfer-Encoding": "identity"}).content))
""", f"http://127.0.0.1:{srv.getsockname()[1]}")
    finally:
        srv.close()
    assert out == [b"ok"]
    head, body = got[0].split(b"\r\n\r\n", 1)
    assert b"\r\nTransfer-Encoding: identity" in head and body == b"abcd", got[0]
