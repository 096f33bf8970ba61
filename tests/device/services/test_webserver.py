"""webserver + the two example apps, served by the real MicroPython runtime to real clients
(curl, CPython http.client and raw sockets, headless Chromium over the DevTools protocol)."""

from __future__ import annotations

import asyncio
import http.client
import json
import random
import socket
import subprocess
import time

import pytest

from support import require_tool


def curl(port: int, path: str, *args: str) -> subprocess.CompletedProcess:
    """curl -i; stdout is the decoded response with its CRLFs kept."""
    r = subprocess.run([require_tool("curl", "curl"), "-s", "-i", "--path-as-is", "-m", "10", *args,
                        f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=20)
    r.stdout = r.stdout.decode()
    return r


def status_of(text: str) -> int:
    return int(text.split(" ", 2)[1])


def body_of(text: str) -> str:
    return text.split("\r\n\r\n", 1)[1]


def raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    """Send bytes, read one response (head + Content-Length body) or until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_response(s.makefile("rb"))


def read_response(f) -> bytes:
    """One response from a buffered socket file: the head, then Content-Length bytes of body."""
    head = b""
    n = 0
    while True:
        line = f.readline()
        if not line:
            return head
        head += line
        if line == b"\r\n":
            break
        k, _, v = line.partition(b":")
        if k.lower() == b"content-length":
            n = int(v)
    return head + f.read(n)


@pytest.fixture
def web(serve, tmp_path):
    (tmp_path / "index.html").write_text("<h1>static index</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 40)
    return serve("serve_web.py", str(tmp_path))


def test_routes_json_query_path_params_and_form(web):
    r = curl(web.port, "/items/7?a=1&b=x+y%21&c=%C3%A9")
    assert status_of(r.stdout) == 200 and "Content-Type: application/json" in r.stdout
    assert json.loads(body_of(r.stdout)) == {"id": "7", "q": {"a": "1", "b": "x y!", "c": "é"}}
    r = curl(web.port, "/items/9", "-X", "PUT", "-H", "Content-Type: application/json", "-d", '{"on": [1, 2]}')
    assert status_of(r.stdout) == 201 and json.loads(body_of(r.stdout)) == {"id": "9", "got": {"on": [1, 2]}}
    r = curl(web.port, "/items/9", "-X", "PUT", "-d", "{not json")
    assert status_of(r.stdout) == 400
    assert status_of(curl(web.port, "/items/9", "-X", "DELETE").stdout) == 204
    r = curl(web.port, "/form", "-d", "name=Ada+L&x=%26%3D")
    assert json.loads(body_of(r.stdout)) == {"form": {"name": "Ada L", "x": "&="}}
    assert body_of(curl(web.port, "/files/a/b/c.txt").stdout) == "a/b/c.txt"
    # A query that is no UTF-8 once decoded (%e9: Latin-1) is the 400 of a route that reads it,
    # not of one (or a static file) that ignores it.
    assert status_of(curl(web.port, "/items/7?c=caf%e9").stdout) == 400
    r = curl(web.port, "/hello?c=caf%e9")
    assert status_of(r.stdout) == 200 and body_of(r.stdout) == "hello"
    r = curl(web.port, "/static/app.js?v=%e9")
    assert status_of(r.stdout) == 200 and body_of(r.stdout) == "console.log(1)"


def test_errors_redirect_and_head(web):
    assert status_of(curl(web.port, "/nope").stdout) == 404
    r = curl(web.port, "/hello", "-X", "POST", "-d", "x")
    assert status_of(r.stdout) == 405 and "Allow: GET" in r.stdout
    r = curl(web.port, "/boom")
    assert status_of(r.stdout) == 500
    assert status_of(curl(web.port, "/teapot").stdout) == 403
    r = curl(web.port, "/old", "-L")
    assert "301 Moved Permanently" in r.stdout and "Location: /hello" in r.stdout and r.stdout.endswith("hello")
    r = curl(web.port, "/hello", "-I")
    assert status_of(r.stdout) == 200 and "Content-Length: 5" in r.stdout and body_of(r.stdout) == ""
    # the 500 left a traceback in the log, and the server still serves
    assert body_of(curl(web.port, "/hello").stdout) == "hello"
    assert "RuntimeError: boom" in web.stop()


def test_static_files(web, tmp_path):
    r = curl(web.port, "/static/")
    assert status_of(r.stdout) == 200 and body_of(r.stdout) == "<h1>static index</h1>"
    r = curl(web.port, "/static/app.js")
    assert "Content-Type: application/javascript" in r.stdout and body_of(r.stdout) == "console.log(1)"
    big = subprocess.run(["curl", "-s", "-m", "10", f"http://127.0.0.1:{web.port}/static/big.bin"],
                         capture_output=True, timeout=20).stdout
    assert big == (tmp_path / "big.bin").read_bytes()
    assert status_of(curl(web.port, "/static/missing.txt").stdout) == 404
    assert status_of(curl(web.port, "/static/../conftest.py").stdout) == 404
    assert status_of(curl(web.port, "/static/app.js", "-X", "POST", "-d", "1").stdout) == 405


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /hello HTTP/1.1\r\nX-Big: " + b"a" * 700 + b"\r\n\r\n", 431),
    (b"GET /hello HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(40)) + b"\r\n", 431),
    (b"GET /" + b"a" * 700 + b" HTTP/1.1\r\n\r\n", 414),
    (b"POST /form HTTP/1.1\r\nContent-Length: 100000\r\n\r\n" + b"x" * 3000, 413),
    (b"garbage\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nno colon here\r\n\r\n", 400),
    (b"GET /hello HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
    (b"GET /hello HTTP/2.0\r\n\r\n", 505),
    (b"POST /form HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
])
def test_malformed_and_oversized_requests_get_their_status(web, request_bytes, status):
    resp = raw(web.port, request_bytes)
    assert resp.startswith(b"HTTP/1.1 %d " % status), resp[:80]
    assert b"Connection: close" in resp


def test_keep_alive_reuses_one_connection(web):
    conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)
    conn.connect()
    sock = conn.sock
    for i in range(20):
        conn.request("GET", f"/items/{i}?n={i}")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["id"] == str(i)
        assert r.getheader("Connection") is None  # HTTP/1.1: persistent unless told otherwise
    conn.request("POST", "/form", body="a=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert json.loads(conn.getresponse().read()) == {"form": {"a": "1"}}
    assert conn.sock is sock  # never reconnected
    # pipelined requests on one socket, and HTTP/1.0 keep-alive (what ab -k sends)
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\n\r\nGET /items/2 HTTP/1.1\r\n\r\n")
        f = s.makefile("rb")
        assert read_response(f).endswith(b"hello")
        assert read_response(f).endswith(b'"q": {}}')
        s.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = read_response(f)
        assert b"Connection: keep-alive" in resp and resp.endswith(b"hello")
        s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        assert read_response(f).endswith(b"hello")
        assert f.read(10) == b""  # HTTP/1.0 without keep-alive: closed after the answer
    r = subprocess.run(["curl", "-sv", "-m", "10", f"http://127.0.0.1:{web.port}/hello",
                        f"http://127.0.0.1:{web.port}/pins.json"], capture_output=True, text=True, timeout=20)
    assert "Re-using existing connection" in r.stderr or "Reusing existing" in r.stderr, r.stderr


def test_idle_and_slow_clients_do_not_block_others(web):
    idle = socket.create_connection(("127.0.0.1", web.port))
    slow = socket.create_connection(("127.0.0.1", web.port))
    slow.sendall(b"GET /hello HTTP/1.1\r\nHost: x")  # never finishes its head
    t = time.monotonic()
    for _ in range(3):
        assert body_of(curl(web.port, "/hello").stdout) == "hello"
    assert time.monotonic() - t < 1.0  # served while both sockets stay open (well below the 1.5 s timeout)
    slow.settimeout(5)
    assert read_response(slow.makefile("rb")).startswith(b"HTTP/1.1 408 ")  # the read timeout answers the slow one
    idle.settimeout(6)
    assert idle.recv(10) == b""  # and the idle keep-alive connection is closed, not kept forever
    # a handler awaiting something does not hold up other clients either
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", web.port), timeout=5) as s1:
        s1.sendall(b"GET /slow HTTP/1.1\r\n\r\n")
        time.sleep(0.05)
        assert body_of(curl(web.port, "/hello").stdout) == "hello"
        fast = time.monotonic() - t
        assert read_response(s1.makefile("rb")).endswith(b"slow done")
    assert fast < 0.3


def test_several_clients_at_once(web):
    async def one(i):
        r, w = await asyncio.open_connection("127.0.0.1", web.port)
        w.write(f"GET /items/{i} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
        data = await r.read()
        w.close()
        return json.loads(data.split(b"\r\n\r\n", 1)[1])["id"]

    async def main():
        got = []
        for batch in range(10):
            got += await asyncio.gather(*(one(batch * 5 + i) for i in range(5)))
        return got

    assert asyncio.run(main()) == [str(i) for i in range(50)]


def test_led_page_and_pin_table_in_headless_chromium(web, tmp_path):
    from chromium import Browser

    loaded = "document.readyState === 'complete'"
    with Browser(require_tool("chromium", "chromium"), tmp_path / "profile", tmp_path / "chromium.log") as browser:
        browser.goto(f"http://127.0.0.1:{web.port}/?LED=OFF")
        assert browser.evaluate("document.getElementById('state').textContent") == "OFF"
        browser.evaluate("document.getElementById('on').click()")        # the form submits GET /?LED=ON
        browser.wait_for(f"location.search === '?LED=ON' && {loaded}")
        assert browser.evaluate("document.getElementById('state').textContent") == "ON"
        browser.evaluate("document.getElementById('off').click()")
        browser.wait_for(f"location.search === '?LED=OFF' && {loaded}")
        assert browser.evaluate("document.getElementById('state').textContent") == "OFF"
        browser.goto(f"http://127.0.0.1:{web.port}/pins")
        rows = browser.evaluate("Array.from(document.querySelectorAll('tr')).map(r => r.innerText.replace(/\\s+/g, ' ').trim())")
        # pin 2 is the LED (switched OFF above), pin 4 was set high by the serving script
        assert rows == ["Pin Value", "2 0", "4 1", "5 0"]


FUZZ_TOTAL = 10_000


def fuzz_cases(rng: random.Random):
    """Malformed, oversized and truncated requests, with the statuses they must get."""
    junk = bytes(range(1, 256))
    while True:
        k = rng.randrange(12)
        if k == 0:
            yield bytes(rng.choice(junk) for _ in range(rng.randrange(1, 80))) + b"\r\n\r\n", None
        elif k == 1:
            yield b"GET /" + b"x" * rng.randrange(520, 3000) + b" HTTP/1.1\r\n\r\n", {414}
        elif k == 2:
            yield b"GET /hello HTTP/1.1\r\nX: " + b"y" * rng.randrange(520, 4000) + b"\r\n\r\n", {431}
        elif k == 3:
            yield b"POST /form HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % rng.randrange(1025, 10**9), {413}
        elif k == 4:
            yield b"GET /hello HTTP/1.1\r\nContent-Length: " + rng.choice([b"x", b"1e3", b"-1", b" "]) + b"\r\n\r\n", {400}
        elif k == 5:
            yield rng.choice([b"GET", b"get", b"G\x00T", b"PUT"]) + b" /items/%d HTTP/1.1\r\n\r\n" % rng.randrange(9), {200, 400, 405}
        elif k == 6:
            yield b"GET /hello HTTP/" + rng.choice([b"0.9", b"2", b"1.1x", b"9.9"]) + b"\r\n\r\n", {400, 505}
        elif k == 7:
            yield b"GET /" + bytes(rng.choice(b"%/?&=+ab.<>") for _ in range(rng.randrange(1, 60))) + b" HTTP/1.1\r\n\r\n", {200, 400, 404}
        elif k == 8:
            yield b"POST /form HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\na=%zz&b", {200, 400}
        elif k == 9:
            yield b"PUT /items/1 HTTP/1.1\r\nContent-Length: 5\r\n\r\n{bad}", {400}
        elif k == 10:
            yield b"GET /hello HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(rng.randrange(25, 60))) + b"\r\n", {431}
        else:
            yield b"GET /hello HTTP/1.1\r\n \tfolded: x\r\n\r\n", {400}


def test_fuzz_10k_bad_requests_leave_it_serving_with_bounded_heap(web):
    """10k malformed/oversized requests plus slow (truncated) clients, 4 at a time; every one gets
    a well-formed answer, and afterwards the heap in use is where it was after warm-up."""
    rng = random.Random(4)
    cases = fuzz_cases(rng)

    def mem():
        return json.loads(body_of(curl(web.port, "/mem").stdout))["alloc"]

    for _ in range(50):
        raw(web.port, next(cases)[0])
    before = mem()
    bad = []

    async def worker(n):
        for _ in range(n):
            data, ok = next(cases)
            r, w = await asyncio.open_connection("127.0.0.1", web.port)
            w.write(data)
            try:
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                bad.append((data[:60], repr(e)))
                w.close()
                continue
            st = int(head.split(b" ", 2)[1])
            if not head.startswith(b"HTTP/1.1 ") or (ok is not None and st not in ok) or not 200 <= st < 600:
                bad.append((data[:60], head[:60]))
            w.close()

    async def slow(n):
        for _ in range(n):
            r, w = await asyncio.open_connection("127.0.0.1", web.port)
            w.write(b"POST /form HTTP/1.1\r\nContent-Length: 100\r\n\r\npartial")
            head = await asyncio.wait_for(r.read(), 10)
            if not head.startswith(b"HTTP/1.1 408 "):
                bad.append(("slow", head[:60]))
            w.close()

    async def main():
        await asyncio.gather(*(worker(FUZZ_TOTAL // 4 - 3) for _ in range(4)), slow(6), slow(6))

    asyncio.run(main())
    assert not bad, bad[:5]
    after = mem()
    assert after - before < 16 * 1024, (before, after)
    assert body_of(curl(web.port, "/hello").stdout) == "hello"


def header_lines(resp: bytes) -> list[bytes]:
    return resp.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]


def test_one_content_type_and_a_bodyless_204(web):
    """A handler's own Content-Type (a tuple's headers, a Response's, any case) replaces ours, it
    is not sent twice; a 204 carries no Content-Type or Content-Length (RFC 9110 8.6)."""
    for path, ctype in (("/plain", b"text/plain"), ("/plain?lower=1", b"text/plain; charset=utf-8")):
        resp = raw(web.port, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % path.encode())
        types = [l.split(b":", 1)[1].strip() for l in header_lines(resp) if l.lower().startswith(b"content-type:")]
        assert types == [ctype] and resp.endswith(b"\r\n\r\nplain"), resp
    resp = raw(web.port, b"DELETE /items/3 HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 204 "), resp
    names = [l.split(b":")[0].lower() for l in header_lines(resp)]
    assert b"content-type" not in names and b"content-length" not in names, resp


def test_static_directories_and_nul_in_paths(web, tmp_path):
    """A directory path ending in "/" serves its index.html; one named without the "/" (the
    prefix too) is a 301 to it, so its page's relative links resolve inside it; a directory
    without an index.html is 404 (never a 200 with a directory's size and no body); %00 is 400."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "index.html").write_text("<p>sub index</p>")
    (tmp_path / "empty").mkdir()
    r = curl(web.port, "/static/sub/")
    assert status_of(r.stdout) == 200 and body_of(r.stdout) == "<p>sub index</p>", r.stdout
    for path in ("/static/sub", "/static"):
        r = curl(web.port, path)
        assert status_of(r.stdout) == 301 and f"Location: {path}/\r\n" in r.stdout, (path, r.stdout)
    r = curl(web.port, "/static/sub", "-L")  # followed: the last answer is the index
    assert r.stdout.rsplit("\r\n\r\n", 1)[1] == "<p>sub index</p>", r.stdout
    assert status_of(curl(web.port, "/static/empty/").stdout) == 404
    assert status_of(curl(web.port, "/static/empty").stdout) == 301
    for path in ("/static/%00x", "/static/sub%00", "/hello%00"):
        assert status_of(curl(web.port, path).stdout) == 400, path
    assert body_of(curl(web.port, "/static/").stdout) == "<h1>static index</h1>"  # still serving


def _keep_alive_clients(port: int, n: int, k: int) -> list[list]:
    """n clients at once, each sending k requests on one keep-alive connection (stopping at the
    first answer that is not 200, or a closed connection): the statuses each got."""
    async def one(i):
        got = []
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            return [type(e).__name__]
        try:
            for _ in range(k):
                w.write(b"GET /page?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % (200 + 100 * i))
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                got.append(int(head.split(b" ", 2)[1]))
                n_ = [l for l in head.lower().split(b"\r\n") if l.startswith(b"content-length:")]
                await r.readexactly(int(n_[0].split(b":")[1]) if n_ else 0)
                if got[-1] != 200:
                    break
        except (OSError, asyncio.IncompleteReadError) as e:
            got.append(type(e).__name__)
        w.close()
        return got

    async def main():
        return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(main())


def test_memory_pressure_costs_connections_not_the_server(serve, micropython):
    """About 10 KB of heap left, 7 keep-alive clients at once (max_clients is 6): below min_free
    (4 KB) a new connection or request is answered 503 and closed, a connection that finds no
    memory all the same (its stream, task, reader, answer) likewise, and the server keeps
    serving; asyncio's own accept loop would end with the MemoryError, and the server with it
    (or select.poll, failing to allocate, would crash the VM)."""
    srv = serve("serve_web_tight.py", "10000", heapsize="40k" if micropython.name == "frozen" else "256k",
                ready="ready")
    def get(path):
        return raw(srv.port, b"GET %s HTTP/1.1\r\nConnection: close\r\n\r\n" % path)

    start = json.loads(body_of(get(b"/mem").decode()))["free"]
    seen = []
    for _ in range(3):
        seen += _keep_alive_clients(srv.port, 7, 20)
        assert srv.proc.poll() is None, srv.stop()
        assert get(b"/hello").endswith(b"\r\n\r\nhello")
    statuses = {s for got in seen for s in got}
    assert statuses <= {200, 500, 503, "IncompleteReadError", "ConnectionResetError"}, seen
    assert any(got[:20] == [200] * 20 for got in seen), seen          # some were served throughout
    assert statuses - {200}, seen                                       # and some were refused
    time.sleep(0.3)
    after = json.loads(body_of(get(b"/mem").decode()))["free"]
    assert after > start - 1024, (start, after)  # the refused connections left nothing behind
    out = srv.stop()
    assert "Task exception" not in out, out  # every failure was handled in the connection it hit


def test_start_stop_and_start_again_on_the_same_port(micropython):
    """await app.start() serves, app.stop() closes the listening socket (a second start on the
    same port binds again), and the accept loop ends instead of waiting for ever."""
    from support import free_port

    port = free_port()
    code = f"""
import asyncio
from webserver import App
app = App()
@app.route("/x")
def x(req):
    return "x"
async def get():
    r, w = await asyncio.open_connection("127.0.0.1", {port})
    w.write(b"GET /x HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n")
    await w.drain()
    data = await r.read(-1)
    w.close()
    return data.split(b"\\r\\n")[0] + b" " + data.split(b"\\r\\n\\r\\n")[1]
async def main():
    for i in range(2):
        srv = await app.start("127.0.0.1", {port})
        print(repr(await get()))
        app.stop()
        await srv.wait_closed()
        print(repr(srv.task.done()))
asyncio.run(main())
"""
    out = [l for l in micropython.run(code, timeout=20).stdout.splitlines() if l.strip()]
    assert out == ["b'HTTP/1.1 200 OK x'", "True"] * 2


def test_pins_app_defaults_to_the_pins_the_chip_has(micropython):
    """pins_app.run() with its default pins on a chip without some of them (an ESP32-C3 has no
    GPIO 14 or 15: machine.Pin raises ValueError("invalid pin")) shows the others; pins the
    caller names must each exist."""
    code = """
import sys
class Pin:
    IN = 1
    def __init__(self, n, mode):
        if n in (14, 15):
            raise ValueError("invalid pin")
        self.n = n
    def value(self):
        return self.n % 2
class machine:
    Pin = Pin
sys.modules["machine"] = machine
import pins_app
app = pins_app.make()
[show] = [f for m, p, f in app.routes if "/".join(p) == "/pins.json"]
print(repr(sorted(int(k) for k in show(None))))
try:
    pins_app.make(pins=(2, 14))
except ValueError as e:
    print(repr(str(e)))
"""
    out = [line for line in micropython.run(code).stdout.splitlines() if line]
    assert out == [repr([0, 2, 4, 5, 12, 13]), repr("invalid pin")], out


def test_a_big_file_reaches_a_slow_reader_whole_and_a_stalled_one_is_let_go(serve, tmp_path):
    """A 300 KB picture over slow Wi-Fi takes longer than the read timeout (1.5 s here) to send
    through a board's small send buffer: it arrives whole, as long as the client keeps taking
    it (before, the answer was cut off when the timeout passed, whatever the progress); a client
    that stops reading is still closed after the timeout, and others are served meanwhile."""
    data = random.Random(7).randbytes(300_000)
    (tmp_path / "photo.jpg").write_bytes(data)
    srv = serve("serve_web.py", str(tmp_path), env={"SNDBUF": "4096"})

    def fetch(stall: float = 0) -> tuple[bytes, float]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", srv.port))
        s.sendall(b"GET /static/photo.jpg HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        got, t0 = b"", time.monotonic()
        time.sleep(stall)
        while True:
            try:
                d = s.recv(2048)
            except ConnectionResetError:
                break
            if not d:
                break
            got += d
            time.sleep(0.015)  # ~130 KB/s: the whole file takes ~2.3 s
        s.close()
        return got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else b"", time.monotonic() - t0

    body, took = fetch()
    assert took > 1.5 and len(body) == len(data), (took, len(body))
    assert body == data
    body, took = fetch(stall=3)
    assert len(body) < len(data), len(body)  # let go of while it took nothing
    assert body_of(curl(srv.port, "/hello").stdout) == "hello"


def test_a_browsers_idle_keep_alive_connections_do_not_lock_others_out(serve, tmp_path):
    """Chromium loads a page with a dozen images over 6 parallel connections and keeps them
    open, idle, for minutes; with max_clients 6 (App's default) every other client (the phone,
    curl, a classmate) got 503 until they timed out. An idle connection now gives way to a new
    one, and the browser still loads the page again (it reconnects what was closed)."""
    from chromium import Browser

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("".join(f'<img src="i{i}.svg">' for i in range(12)))
    for i in range(12):
        (site / f"i{i}.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9">'
                                        '<rect width="9" height="9"/></svg>' + " " * 20000)
    srv = serve("serve_web.py", str(site), env={"MAX_CLIENTS": "6"})
    shown = "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length"
    with Browser(require_tool("chromium", "chromium"), tmp_path / "profile", tmp_path / "chromium.log") as browser:
        browser.goto(f"http://127.0.0.1:{srv.port}/static/")
        assert browser.evaluate(shown) == 12, browser.log.failures
        for _ in range(3):
            r = curl(srv.port, "/hello")
            assert status_of(r.stdout) == 200 and body_of(r.stdout) == "hello", r.stdout
        browser.goto(f"http://127.0.0.1:{srv.port}/static/?again")
        assert browser.evaluate(shown) == 12, browser.log.failures

    def alloc() -> int:
        return json.loads(body_of(curl(srv.port, "/mem").stdout))["alloc"]

    def keep_open(n: int) -> int:
        """n clients in turn, each one request and then idle, at most 8 open at a time; the heap
        in use with the last 8 still open."""
        held: list[socket.socket] = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s.makefile("rb")).endswith(b"\r\n\r\nhello")
            held.append(s)
            if len(held) > 8:
                held.pop(0).close()
        used = alloc()
        for s in held:
            s.close()
        return used

    before = keep_open(20)
    after = keep_open(300)  # each new one closes an idle one: what that one held goes with it
    assert after - before < 8 * 1024, (before, after)


def test_a_body_sent_after_expect_100_continue_is_not_held_up(web):
    """curl sends a body over 1 KB only once the server says "100 Continue", else after waiting
    its --expect100-timeout (1 s): every such upload to a board took a second longer."""
    t = time.monotonic()
    r = curl(web.port, "/items/9", "-X", "PUT", "-H", "Expect: 100-continue", "-H", "Content-Type: application/json",
             "-d", '{"on": 1}', "--expect100-timeout", "5")
    took = time.monotonic() - t
    assert "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 " in r.stdout, r.stdout
    assert json.loads(body_of(r.stdout.split("\r\n\r\n", 1)[1])) == {"id": "9", "got": {"on": 1}}
    assert took < 4, took                                       # not curl's 5 s wait
    r = curl(web.port, "/items/9", "-X", "PUT", "-H", "Expect: 100-continue", "-d", "x" * 2000)
    assert status_of(r.stdout) == 413 and "100 Continue" not in r.stdout, r.stdout   # too large: no body asked for
