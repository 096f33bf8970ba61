# webserver: a small asyncio HTTP/1.1 server for MicroPython (ESP8266, ESP32, unix).
#
#   from webserver import App, redirect
#   app = App()
#   @app.route("/led/<name>", methods=("GET", "POST"))
#   def led(req, name):
#       return {"led": name, "on": req.args.get("on")}   # dict/list -> JSON
#   app.static("/s", "/www")                              # files from the filesystem
#   app.run(port=80)                                      # or: await app.start(port=80)
#
# Handlers get a Request (method, path, args, headers, body, form, json()) plus the path
# parameters, may be async, and return a Response, str/bytes (HTML), dict/list (JSON), None
# (204) or a tuple (body, status[, headers]). Raise HTTPError(status) to answer an error.
# Limits: request line and each header line <= max_line bytes (414/431), head <= max_head
# bytes and 24 headers (431), body <= max_body (413); a request must arrive within timeout_ms
# (408) and an idle keep-alive connection is closed after idle_ms, so slow clients cannot hold
# the server (a file being sent gets timeout_ms per piece the client takes, not for all of it);
# a connection beyond max_clients closes one idle between requests, or gets 503 when none is,
# and so does a new connection or request while other connections leave less than min_free
# bytes of heap (a server out of memory closes connections, never stops). A handler's own
# Content-Type header replaces ctype; a 204 has no body headers; a static directory path ending
# in "/" serves its index.html, one without it is redirected there (301).
import gc
import json
import os
import sys
import time
from micropython import const

_MAX_HEADERS = const(24)
_IDLE = const(0)
_READ = const(1)
_WRITE = const(2)
_HANDLE = const(3)

_REASON = {
    200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently", 302: "Found",
    303: "See Other", 307: "Temporary Redirect", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}
_TYPES = {
    "html": "text/html; charset=utf-8", "htm": "text/html; charset=utf-8", "css": "text/css",
    "js": "application/javascript", "json": "application/json", "txt": "text/plain",
    "png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "svg": "image/svg+xml",
    "ico": "image/x-icon",
}
HTML = "text/html; charset=utf-8"


class HTTPError(Exception):
    def __init__(self, status, headers=None):
        self.status = status
        self.headers = headers


class Response:
    def __init__(self, body=b"", status=200, headers=None, ctype=HTML, file=None):
        self.body = body
        self.status = status
        self.headers = headers
        self.ctype = ctype
        self.file = file


def redirect(url, status=302):
    return Response(b"", status, {"Location": url})


def send_file(path, ctype=None):
    if ctype is None:
        ctype = _TYPES.get(path[path.rfind(".") + 1 :].lower(), "application/octet-stream")
    return Response(None, 200, None, ctype, path)


def unquote(b):
    # URL-decode bytes (%XX and +) to str; ValueError on invalid UTF-8.
    if b"%" not in b and b"+" not in b:
        return b.decode()
    parts = b.replace(b"+", b" ").split(b"%")
    out = bytearray(parts[0])
    for p in parts[1:]:
        try:
            if len(p) < 2 or p[0] in b"+-_ " or p[1] in b"+-_ ":
                raise ValueError
            out.append(int(p[:2], 16))
            out.extend(memoryview(p)[2:])
        except ValueError:
            out.append(37)
            out.extend(p)
    return out.decode()


def _part(b, sep):
    # As bytes' partition method, for a one-byte sep: the ESP8266's MicroPython leaves it out.
    i = b.find(sep)
    return (b, b"", b"") if i < 0 else (b[:i], sep, b[i + 1 :])


def parse_qs(b):
    # b"a=1&b=x+y" -> {"a": "1", "b": "x y"}; a repeated key keeps its last value.
    d = {}
    if b:
        for kv in b.split(b"&"):
            if kv:
                k, _, v = _part(kv, b"=")
                d[unquote(k)] = unquote(v)
    return d


class Request:
    def __init__(self, method, path, qs, version, headers, addr):
        self.method = method
        self.path = path
        self.qs = qs
        self._args = None
        self.version = version
        self.headers = headers
        self.addr = addr
        self.body = b""
        self._form = None

    @property
    def args(self):
        # Parsed when a route reads it: a query that is not UTF-8 once decoded (%e9, Latin-1) is
        # a 400 there, not for a route or file that ignores its query (?v=%e9 on a static file).
        if self._args is None:
            try:
                self._args = parse_qs(self.qs)
            except ValueError:
                raise HTTPError(400)
        return self._args

    @property
    def form(self):
        if self._form is None:
            ct = self.headers.get("content-type", "")
            try:
                self._form = parse_qs(self.body) if ct.startswith("application/x-www-form-urlencoded") else {}
            except ValueError:
                raise HTTPError(400)
        return self._form

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            raise HTTPError(400)


class _Reader:
    # Reads lines from a stream into one fixed buffer: a line longer than it is refused.
    def __init__(self, s, size):
        self.s = s
        self.buf = bytearray(size)
        self.mv = memoryview(self.buf)
        self.a = 0
        self.b = 0

    def pending(self):
        return self.b > self.a

    async def _fill(self):
        if self.a == self.b:
            self.a = self.b = 0
        elif self.b == len(self.buf) and self.a:
            n = self.b - self.a
            self.buf[:n] = bytes(self.mv[self.a:self.b])
            self.a, self.b = 0, n
        n = await self.s.readinto(self.mv[self.b:])
        if n is None:
            return
        if not n:
            raise EOFError
        self.b += n

    async def line(self, status):
        while True:
            i = self.buf.find(b"\n", self.a, self.b)
            if i >= 0:
                j = i - 1 if i > self.a and self.buf[i - 1] == 13 else i
                l = bytes(self.mv[self.a:j])
                self.a = i + 1
                return l
            if self.b - self.a >= len(self.buf):
                raise HTTPError(status)
            await self._fill()

    async def read(self, n):
        have = self.b - self.a
        k = have if have < n else n
        data = bytes(self.mv[self.a:self.a + k])
        self.a += k
        if k < n:
            data += await self.s.readexactly(n - k)
        return data


class App:
    def __init__(self, max_body=4096, max_head=2048, max_line=512, max_clients=6,
                 timeout_ms=5000, idle_ms=15000, min_free=4096):
        self.routes = []
        self.statics = []
        self.max_body = max_body
        self.max_head = max_head
        self.max_line = max_line
        self.max_clients = max_clients
        self.timeout_ms = timeout_ms
        self.idle_ms = idle_ms
        self.min_free = min_free
        self._conns = []
        self.server = None

    def route(self, path, methods=("GET",)):
        pat = path.split("/")

        def deco(f):
            self.routes.append((methods, pat, f))
            return f
        return deco

    def static(self, prefix, directory):
        self.statics.append((prefix.rstrip("/") + "/", directory.rstrip("/")))

    def _find(self, req):
        parts = req.path.split("/")
        allowed = []
        get = req.method == "HEAD"
        for methods, pat, f in self.routes:
            params = _match(pat, parts)
            if params is not None:
                if req.method in methods or (get and "GET" in methods):
                    return f, params
                allowed.extend(methods)
        for prefix, d in self.statics:
            if req.path.startswith(prefix) or req.path + "/" == prefix:
                if req.method != "GET" and not get:
                    raise HTTPError(405, {"Allow": "GET, HEAD"})
                rel = req.path[len(prefix):]
                if ".." in rel.split("/"):
                    raise HTTPError(404)
                if req.path[-1:] == "/":  # a directory's (or the prefix's) index.html
                    rel += "index.html"
                return _static, {"path": d + "/" + rel if rel else d}
        if allowed:
            raise HTTPError(405, {"Allow": ", ".join(allowed)})
        raise HTTPError(404)

    async def _head(self, rd, w, addr):
        line = await rd.line(414)
        while not line:
            line = await rd.line(414)
        parts = line.split(b" ")
        if len(parts) != 3:
            raise HTTPError(400)
        method, target, ver = parts
        if ver != b"HTTP/1.1" and ver != b"HTTP/1.0":
            raise HTTPError(505 if ver.startswith(b"HTTP/") else 400)
        if not method.isalpha() or not method.isupper() or target[:1] != b"/":
            raise HTTPError(400)
        headers = {}
        total = len(line)
        while True:
            l = await rd.line(431)
            if not l:
                break
            total += len(l)
            if total > self.max_head or len(headers) >= _MAX_HEADERS:
                raise HTTPError(431)
            k, sep, v = _part(l, b":")
            if not sep or not k or l[0] in b" \t" or k[-1] in b" \t":
                raise HTTPError(400)
            k = k.lower().decode()
            v = v.strip().decode()
            if k in headers and k == "content-length" and headers[k] != v:
                raise HTTPError(400)
            headers[k] = v
        path, _, qs = _part(target, b"?")
        path = unquote(path)
        if "\x00" in path:  # %00: no file or route has one (and a C path would end there)
            raise HTTPError(400)
        req = Request(method.decode(), path, qs, ver, headers, addr)
        if "transfer-encoding" in headers:
            raise HTTPError(501)
        n = headers.get("content-length")
        if n is not None:
            if not n.isdigit():
                raise HTTPError(400)
            n = int(n)
            if n > self.max_body:
                raise HTTPError(413)
            if n:
                # curl sends a body over 1 KB only after "100 Continue", or after waiting 1 s for it
                if ver == b"HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
                    w.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                    await w.drain()
                req.body = await rd.read(n)
        return req

    async def _send(self, w, resp, keep, head_only, c):
        # keep: 0 close, 1 HTTP/1.1 keep-alive, 2 HTTP/1.0 keep-alive. c[1] turns _WRITE with the
        # first byte written: until then running out of memory can still be answered 503.
        body = resp.body
        if isinstance(body, str):
            body = body.encode()
        f = None
        if resp.file is not None:
            try:
                st = os.stat(resp.file)
                if st[0] & 0x4000:  # a directory (S_IFDIR): not a file to send
                    raise OSError
                size = st[6]
                f = open(resp.file, "rb")
            except OSError:
                resp = Response("Not Found", 404)
                body = b"Not Found"
        n = size if f else len(body)
        h = ["HTTP/1.1 %d %s\r\n" % (resp.status, _REASON.get(resp.status, "-"))]
        if resp.status == 204:  # No Content: no body, and no headers about one
            body = b""
        else:
            ct = resp.ctype
            for k in resp.headers or ():
                if k.lower() == "content-type":  # the handler's own wins
                    ct = None
            if ct:
                h.append("Content-Type: %s\r\n" % ct)
            h.append("Content-Length: %d\r\n" % n)
        if keep != 1:
            h.append("Connection: keep-alive\r\n" if keep else "Connection: close\r\n")
        if resp.headers:
            for k in resp.headers:
                h.append("%s: %s\r\n" % (k, resp.headers[k]))
        h.append("\r\n")
        h = "".join(h).encode()
        if f:
            try:
                c[1] = _WRITE  # from the first write on, the answer has begun: no 503 after it
                w.write(h)
                if not head_only:
                    buf = bytearray(512)
                    mv = memoryview(buf)
                    while True:
                        k = f.readinto(buf)
                        if not k:
                            break
                        await w.drain()
                        # The client took the last piece: a deadline per piece, not for the whole
                        # file (a big file over slow Wi-Fi is not cut off; a stalled client still is).
                        self._due(c, _WRITE, self.timeout_ms)
                        w.write(mv[:k])
            finally:
                f.close()
        else:
            h = h if head_only or not body else h + body
            c[1] = _WRITE
            w.write(h)
        await w.drain()

    async def _call(self, req):
        try:
            f, params = self._find(req)
            r = f(req, **params)
            if hasattr(r, "send"):
                r = await r
        except HTTPError as e:
            return Response(_REASON.get(e.status, "Error"), e.status, e.headers)
        except Exception as e:
            sys.print_exception(e)
            return Response("Internal Server Error", 500)
        if isinstance(r, Response):
            return r
        st, hd = 200, None
        if isinstance(r, tuple):
            if len(r) > 2:
                hd = r[2]
            st = r[1]
            r = r[0]
        if isinstance(r, (dict, list)):
            return Response(json.dumps(r), st, hd, "application/json")
        if r is None:
            return Response(b"", 204 if st == 200 else st, hd)
        return Response(r, st, hd)

    def _low(self):
        # Less heap free than min_free, even after a collection: no new connection or request now
        # (asked only with other connections open: gc.mem_free() walks the heap, ~0.1 ms per 2 MB).
        # Load is shed while there is room, because running out is worse than a MemoryError: a
        # failed allocation inside select.poll's register (every asyncio wait on a socket) leaves
        # the poller corrupt, and the next poll crashes the VM (MicroPython's modselect.c).
        if gc.mem_free() < self.min_free:
            gc.collect()
            return gc.mem_free() < self.min_free

    def _due(self, c, state, ms):
        c[1] = state
        c[2] = time.ticks_add(time.ticks_ms(), ms)

    async def _conn(self, r, w):
        import asyncio  # here, not at import: importing webserver alone does not load asyncio (~4 KB)
        s = r.s
        c = None
        try:
            c = [asyncio.current_task(), _IDLE, 0]
            if len(self._conns) >= self.max_clients:
                # A connection idle between requests gives way (a browser keeps 6 open for
                # minutes: they would lock out every other client); none idle: 503, as when
                # memory runs out. _HANDLE: closed without an answer, and given up only once.
                for o in self._conns:
                    if o[1] == _IDLE:
                        o[1] = _HANDLE
                        o[0].cancel()
                        o = None  # a coroutine's frame outlives it: no chain of closed connections
                        break
                else:
                    raise MemoryError
            self._conns.append(c)
            rd = _Reader(r, self.max_line)
            addr = r.get_extra_info("peername")
            keep = 1
            while keep:
                self._due(c, _READ if rd.pending() else _IDLE, self.timeout_ms if rd.pending() else self.idle_ms)
                try:
                    if not rd.pending():
                        await rd._fill()
                        self._due(c, _READ, self.timeout_ms)
                    if len(self._conns) > 1 and self._low():  # (a lone client sheds nothing)
                        raise MemoryError  # 503, and this connection's memory is freed
                    req = await self._head(rd, w, addr)
                except (HTTPError, ValueError) as e:
                    st = e.status if isinstance(e, HTTPError) else 400
                    self._due(c, _HANDLE, self.timeout_ms)
                    e = Response(_REASON.get(st, "Error"), st, getattr(e, "headers", None))
                    await self._send(w, e, 0, 0, c)
                    # Lingering close: drop what the client still sends (briefly, bounded) so that
                    # closing with unread data does not reset the connection before it reads the answer.
                    self._due(c, _WRITE, 1000)
                    n = 0
                    while n < 16384:
                        k = await r.readinto(rd.mv)
                        if not k and k is not None:
                            break
                        n += k or 0
                    break
                conn = req.headers.get("connection", "").lower()
                if req.version == b"HTTP/1.1":
                    keep = 0 if "close" in conn else 1
                else:
                    keep = 2 if "keep-alive" in conn else 0
                c[1] = _HANDLE
                resp = await self._call(req)
                self._due(c, _HANDLE, self.timeout_ms)
                await self._send(w, resp, keep, req.method == "HEAD", c)
                req = resp = None  # not held while the connection waits for its next request
        except EOFError:
            pass
        except asyncio.CancelledError:
            if c[1] == _READ:
                _direct(s, 408)
        except MemoryError:
            if not c or c[1] != _WRITE:  # no answer begun
                _direct(s, 503)
        except OSError:
            pass
        except Exception as e:
            sys.print_exception(e)
        finally:
            if c in self._conns:
                self._conns.remove(c)
            s.close()  # what w.wait_closed() does, without a coroutine to allocate

    async def _reap(self):
        import asyncio
        # Cancel connections past their deadline (one task for all: no timer per read).
        while True:
            await asyncio.sleep_ms(200)
            now = time.ticks_ms()
            for c in self._conns:
                if c[1] != _HANDLE and time.ticks_diff(now, c[2]) > 0:
                    c[2] = time.ticks_add(now, 1 << 20)
                    c[0].cancel()

    async def start(self, host="0.0.0.0", port=80):
        # asyncio.start_server's steps, with our own accept loop (_accept)
        import asyncio
        import socket
        from asyncio.stream import Server

        ai = socket.getaddrinfo(host, port)[0]
        s = socket.socket(ai[0])
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(ai[-1])
        s.listen(8)
        self.server = srv = Server()
        srv.task = asyncio.create_task(self._accept(srv, s))
        self._reaper = asyncio.create_task(self._reap())
        await asyncio.sleep_ms(0)  # _accept has started: close() may cancel it from now on
        return srv

    async def _accept(self, srv, s):
        # asyncio's Server._serve, except that a connection whose stream or task finds no memory
        # gets 503 and is closed, where asyncio's loop would end with the MemoryError (no server).
        from asyncio import core
        from asyncio.stream import Stream

        srv.state = False
        try:
            while True:
                try:
                    yield core._io_queue.queue_read(s)  # as asyncio's own server waits for a client
                except MemoryError:  # no room to wait in: a little later, without the half-made
                    core._io_queue.map.pop(id(s), None)  # entry (a retry would trip on it)
                    await core.sleep_ms(20)
                    continue
                try:
                    c, addr = s.accept()
                except OSError:
                    continue
                except MemoryError:  # no room for the new socket: it waits in the backlog
                    await core.sleep_ms(20)
                    continue
                try:
                    c.setblocking(False)  # also for the 503: never a wait in the accept loop
                    if self._conns and self._low():
                        raise MemoryError
                    st = Stream(c, {"peername": addr})
                    core.create_task(self._conn(st, st))
                except MemoryError:
                    _direct(c, 503)
                    c.close()
        except core.CancelledError:
            s.close()
            if not srv.state:  # not srv.close(): the caller was cancelled, so are we
                raise

    def stop(self):
        if self.server:
            self.server.close()
            self._reaper.cancel()
            self.server = None

    async def serve(self, host="0.0.0.0", port=80):
        await self.start(host, port)
        await self.server.wait_closed()

    def run(self, host="0.0.0.0", port=80):
        import asyncio
        print("webserver: http://%s:%d/" % (host, port))
        try:
            asyncio.run(self.serve(host, port))
        finally:
            asyncio.new_event_loop()


def _direct(s, status):
    # Best-effort answer on a non-blocking socket, without waiting (timeouts, overload).
    try:
        s.write(b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (status, _REASON[status]))
    except Exception:
        pass


def _match(pat, parts):
    n = len(pat)
    params = {}
    for i in range(n):
        p = pat[i]
        if p[:1] == "<":
            name = p[1:-1]
            if name.startswith("path:"):
                params[name[5:]] = "/".join(parts[i:])
                return params
            if i >= len(parts) or not parts[i]:
                return None
            params[name] = parts[i]
        elif i >= len(parts) or p != parts[i]:
            return None
    return params if len(parts) == n else None


def _static(req, path):
    # A directory named without its "/" (the prefix too) is redirected to it, as web servers do:
    # the relative links of its index.html then resolve inside it. Only a name without an
    # extension is looked at here: a file's stat is the one _send makes.
    if "." not in path[path.rfind("/") + 1 :]:
        try:
            if os.stat(path)[0] & 0x4000:
                return redirect(req.path + "/", 301)
        except OSError:
            pass
    return send_file(path)
