# requests: a small HTTP/1.1 client (one request per connection) with the micropython-lib `requests` API.
#
# Beyond micropython-lib's: str and json bodies are sent as UTF-8 with their byte length; the Host
# header carries a non-default port; header names match in any case (a header the caller gives in
# any case replaces our default); relative redirects work (`?q` too), and at most 5 are followed;
# an interim 1xx (100 Continue) is skipped; a head ending lines in a bare LF is read; `r.raw` is
# the body without its framing (Content-Length or chunked), a stream (read, readinto, readline;
# json.load(r.raw)), so stream=True reads it piecewise; the request head (and a small body) leaves
# in one write; https verifies the server when given `cadata=` (a CA, DER; a clear
# NotImplementedError where the port's TLS cannot verify, ESP8266's axTLS), else it is unauthenticated;
# the socket is closed on any error; Response is a context manager (`with requests.get(url) as r:`);
# a body cut short (the server closed early) is OSError(104 ECONNRESET, ...), as a network error,
# where micropython-lib returns what came. Unlike it: request() makes the Response (no Response(f)).
# (Heap: as .mpy every code byte, function and constant is heap, and a str constant longer than
# 10 characters or any bytes constant is an object of its own (shorter strs are shared qstrs). So
# socket is imported in request(), headers are compared as str, and each constant appears once.)


class Response(__import__("io").IOBase):  # (no global for the base: each global is heap)
    # The response and, as r.raw, its body as a stream without the framing: an IOBase, so C stream
    # readers (json.load(r.raw)) call readinto(). _s: the socket; _n:
    # bytes left (of the body, or of the current chunk), -1 up to EOF; _c: chunked, a size line
    # is due at _n 0. request() sets them (no __init__), read() takes its size as *sz (no
    # defaults tuple), __exit__ is close, from __getattr__: each method, default and class
    # attribute is heap (frozen too: the class dict).
    def __enter__(self):
        return self

    def close(self, *exc):
        if self.raw:
            self.raw = None
            self._s.close()

    def _left(self):
        # Bytes left of this chunk or body (-1: up to EOF). At the end of a chunk, the CRLF after
        # its data and the next size line are read now, not when the chunk ends: a stream gets
        # each chunk as soon as it is in.
        if not self._n and self._c:
            s = self._s
            l = s.readline()
            if l in b"\r\n":  # the line ending the chunk before (CRLF or a bare LF)
                l = s.readline()
            self._n = int(l.split(b";", 1)[0], 16)
            if not self._n:  # the last chunk: skip trailers up to the blank line
                self._c = False
                while len(s.readline()) > 2:
                    pass
        return self._n

    def readinto(self, buf):
        n = self._left()
        if not n:
            return 0
        k = self._s.readinto(memoryview(buf)[:n] if 0 < n < len(buf) else buf) or 0
        if n > 0:
            if not k:
                raise OSError(104, "HTTP body cut short")
            self._n -= k
        return k

    def readline(self):
        # One line of the body (up to b"\n"), within its Content-Length and across chunks: the
        # socket's own readline, bounded by what is left of the chunk or body.
        b = b""
        while b[-1:] != b"\n" and self._left():
            n = self._n
            l = self._s.readline() if n < 0 else self._s.readline(n)
            if not l:
                if n > 0:
                    raise OSError(104, "HTTP body cut short")
                break
            if n > 0:
                self._n -= len(l)
            b += l
        return b

    def read(self, *sz):
        # At most sz bytes (at most the rest of a chunk), else the whole body: a Content-Length
        # body in one allocation, a chunked one in one bytearray grown chunk by chunk.
        sz = sz[0] if sz else -1
        n = self._left()
        if n < 0:
            return self._s.read() if sz < 0 else self._s.read(sz)
        if sz < 0 and self._c:
            b = bytearray()
            while self._left():
                b += self.read(self._n)
            return b
        if 0 <= sz < n:
            n = sz
        b = self._s.read(n)
        if len(b) < n:
            raise OSError(104, "HTTP body cut short")
        self._n -= n
        return b

    def __getattr__(self, name):
        # content and text, read on first use: content then stays as an instance attribute (one
        # method instead of two properties, and no _cached: each is heap in every image).
        if name == "content":
            try:
                c = self.read()
            finally:
                self.close()
            self.content = c
            return c
        if name == "text":
            return str(self.content, self.encoding)
        if name == "__exit__":  # `with ... as r:` ends in close()
            return self.close
        raise AttributeError(name)

    def json(self):
        import json

        return json.loads(self.content)


def request(method, url, data=None, json=None, headers=None, stream=None, auth=None,
            timeout=None, parse_headers=True, cadata=None, _hops=5):  # at most 5 redirects
    def _key(h, k):
        # The name the headers h hold k under, in any case, else k: a name the caller gave in
        # any case is theirs (no second Host), and stays as they spelt it. (Made per request, not
        # held as a global.)
        l = k.lower()
        for x in h:
            if x.lower() == l:
                return x
        return k

    headers = {} if headers is None else headers.copy()
    if auth is not None:
        from binascii import b2a_base64

        headers[_key(headers, "Authorization")] = "Basic " + str(b2a_base64(b"%s:%s" % auth, newline=False),
                                                                  "utf-8")

    proto, _, host = url.split("/", 2)
    path = ""
    if "/" in host:
        host, path = host.split("/", 1)
        path = "/" + path
    if "?" in host:  # http://host?x=1: the query, with any "/" in it (?next=/a), starts the path
        host, _ = host.split("?", 1)
        path = "?" + _ + path
    if path[:1] != "/":
        path = "/" + path
    if proto == "http:":
        port = 80
    elif proto == "https:":
        port = 443
    else:
        raise ValueError("Unsupported protocol: " + proto)
    headers.setdefault(_key(headers, "Host"), host)
    netloc = host
    if ":" in host:
        host, port = host.split(":", 1)
        port = int(port)

    if json is not None:
        from json import dumps

        data = dumps(json)
        headers.setdefault(_key(headers, "Content-Type"), "application/json")
    gen = data and getattr(data, "__next__", None) and not getattr(data, "__len__", None)
    if data and not gen:
        data = data.encode() if isinstance(data, str) else data
        headers.setdefault(_key(headers, "Content-Length"), str(len(data)))
    # te: the generator's pieces go as chunks (unless the caller gave a Content-Length)
    te = gen and _key(headers, "Content-Length") not in headers
    if te:  # the caller's own Transfer-Encoding (identity) sends the pieces as they are
        te = headers.setdefault(_key(headers, "Transfer-Encoding"), "chunked") == "chunked"
    headers.setdefault(_key(headers, "Connection"), "close")

    import socket

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        if timeout is not None:
            s.settimeout(timeout)
        s.connect(ai[-1])
        if proto == "https:":
            import tls

            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            if cadata:
                if not hasattr(tls, "CERT_REQUIRED"):  # axTLS (ESP8266): CERT_NONE only
                    raise NotImplementedError("cadata: this port's TLS cannot verify")
                ctx.verify_mode = tls.CERT_REQUIRED
                ctx.load_verify_locations(cadata)  # tls takes it positionally
            else:
                ctx.verify_mode = tls.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=host)
        # The head in one buffer, one write (each write is a TCP segment, under TLS a record; small
        # ones in a row stall on Nagle + delayed ACK); a small body rides along.
        h = bytearray(b"%s %s HTTP/1.1\r\n" % (method, path))
        for k in headers:  # keys, not items(): no tuple per header
            h += b"%s: %s\r\n" % (k, headers[k])
        h += b"\r\n"
        small = data and not gen and len(data) <= 1024
        if small:
            h += data
        s.write(h)
        h = None
        if gen:
            for h in data:
                if isinstance(h, str):  # a chunk's size is its bytes'
                    h = h.encode()
                s.write(b"%x\r\n%s\r\n" % (len(h), h) if te else h)
            if te:
                s.write(b"%x\r\n%s\r\n" % (0, bytes()))  # the last, empty chunk
        elif data and not small:
            s.write(data)

        while 1:
            h = s.readline().split(None, 2)
            if len(h) < 2:
                raise ValueError("HTTP error: BadStatusLine: %r" % h)
            status = int(h[1])
            if not 99 < status < 200 or status == 101:
                break
            while s.readline() not in b"\r\n":  # an interim 1xx (100 Continue): skip its head
                pass
        reason = h[2].rstrip() if len(h) > 2 else b""  # bytes, as micropython-lib's
        resp_d = None if parse_headers is False else {}
        location = None
        chunked = False
        clen = 0 if method == "HEAD" or status == 204 or status == 304 or status < 200 else -1
        while 1:
            l = s.readline()
            if l in b"\r\n":  # the blank line (CRLF or a bare LF), or EOF
                break
            # Names are ASCII tokens, matched in any case; values may be any bytes (decoded only
            # where a str is made of them). A line without a name is skipped.
            i = l.find(b":")
            k = str(l[:i], "utf-8").lower() if i > 0 else ""
            v = l[i + 1 :].strip()
            if k == "transfer-encoding":
                chunked = b"chunked" in v.lower()
            elif k == "content-length" and clen < 0:
                clen = int(v)
            elif k == "location" and 300 <= status <= 399:
                location = str(v, "utf-8")
            if parse_headers is True:
                if k:
                    resp_d[str(l[:i], "utf-8")] = str(v, "utf-8")
            elif parse_headers:
                parse_headers(l, resp_d)
    except:
        s.close()
        raise

    if location and (300 < status < 304 or 306 < status < 309):
        s.close()
        if not _hops:
            raise ValueError("too many redirects")
        if gen and status > 303:  # 307/308 send the body again, and a generator's is spent
            raise ValueError("%d redirect: generator body spent" % status)
        headers.pop(_key(headers, "Host"), None)  # the next hop's own (the caller's named this one)
        if location[:2] == "//":  # scheme-relative
            location = proto + location
        elif ":" not in location.split("/", 1)[0]:  # no scheme: on this host (/a?next=http://x too)
            if location[0] != "/":  # relative to the current directory, not to a "/" in the query
                path = path.split("?", 1)[0]
                if location[0] != "?":  # "?q": this path, another query (RFC 3986 5.2.2)
                    path = path[: path.rfind("/") + 1]
                location = path + location
            location = proto + "//" + netloc + location  # the URL's server, whatever Host said
        if location.split("/", 3)[2] != netloc or proto == "https:" and location[:6] != proto:
            headers.pop(_key(headers, "Authorization"), None)  # credentials stay with their host
        headers.pop(_key(headers, "Content-Length"), None)  # the next request frames its own body
        headers.pop(_key(headers, "Transfer-Encoding"), None)
        if status < 304 and method != "HEAD":  # 301/302/303: the browser rule, GET without body
            headers.pop(_key(headers, "Content-Type"), None)
            method = "GET"
            data = None
        return request(method, location, data, None, headers, stream, None, timeout, parse_headers,
                       cadata, _hops - 1)
    r = Response()
    r.raw = r
    r._s = s
    r._n = 0 if chunked else clen
    r._c = chunked and clen != 0
    r.encoding = "utf-8"
    r.status_code = status
    r.reason = reason
    if resp_d is not None:
        r.headers = resp_d
    return r


def head(url, **kw):
    return request("HEAD", url, **kw)


def get(url, **kw):
    return request("GET", url, **kw)


def post(url, **kw):
    return request("POST", url, **kw)


def put(url, **kw):
    return request("PUT", url, **kw)


def patch(url, **kw):
    return request("PATCH", url, **kw)


def delete(url, **kw):
    return request("DELETE", url, **kw)
