# requests: a small HTTP/1.1 client (one request per connection) with the micropython-lib `requests` API.
#
# Beyond micropython-lib's: str and json bodies are sent as UTF-8 with their byte length; the Host
# header carries a non-default port; header names match in any case; relative redirects work,
# and at most 5 are followed; `r.raw` is the body without its framing (Content-Length
# or chunked), so stream=True reads it piecewise; the request head (and a small body) leaves in one
# write; https verifies the server when given `cadata=` (a CA, DER), else it is unauthenticated;
# the socket is closed on any error; Response is a context manager (`with requests.get(url) as r:`).
# (socket is imported in request(): a module global is heap.)


class Response:
    # The response and, as r.raw, its body as a stream without the framing. _s: the socket; _n:
    # bytes left (of the body, or of the current chunk), -1 up to EOF; _c: chunked, a size line
    # is due at _n 0. request() sets them (no __init__), read() takes its size as *sz (no
    # defaults tuple), __exit__ is close: each method, default and class attribute is heap.
    def __enter__(self):
        return self

    def close(self, *exc):
        if self.raw:
            self.raw = None
            self._s.close()

    __exit__ = close

    # (The chunk bookkeeping is written out in both readers: a shared method would cost heap in
    # every image, the copy costs only flash.)
    def readinto(self, buf):
        s = self._s
        if not self._n and self._c:
            self._n = int(s.readline().split(b";", 1)[0], 16)
            if not self._n:  # the last chunk: skip trailers up to the blank line
                self._c = False
                while len(s.readline()) > 2:
                    pass
        n = self._n
        if not n:
            return 0
        k = s.readinto(memoryview(buf)[:n] if 0 < n < len(buf) else buf) or 0
        if n > 0:
            if not k:
                raise ValueError("HTTP body cut short")
            self._n -= k
            if not self._n and self._c:
                s.readline()
        return k

    def read(self, *sz):
        # A Content-Length body or a sized read: one allocation. A whole chunked body: one
        # bytearray grown chunk by chunk, returned as it is (no second copy of the body).
        sz = sz[0] if sz else -1
        s = self._s
        out = None
        while sz:
            if not self._n and self._c:
                self._n = int(s.readline().split(b";", 1)[0], 16)
                if not self._n:
                    self._c = False
                    while len(s.readline()) > 2:
                        pass
            n = self._n
            if n < 0:
                return s.read() if sz < 0 else s.read(sz)
            if not n:
                break
            if 0 < sz < n:
                n = sz
            d = s.read(n)
            if len(d) < n:
                raise ValueError("HTTP body cut short")
            self._n -= n
            if not self._n and self._c:
                s.readline()
            if sz > 0 or not self._c and out is None:
                return d
            if out is None:
                out = bytearray()
            out += d
        return out or b""

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
        raise AttributeError(name)

    def json(self):
        import json

        return json.loads(self.content)


def request(method, url, data=None, json=None, headers=None, stream=None, auth=None,
            timeout=None, parse_headers=True, cadata=None, _hops=5):  # at most 5 redirects
    headers = {} if headers is None else headers.copy()
    if auth is not None:
        from binascii import b2a_base64

        headers["Authorization"] = b"Basic " + b2a_base64(b"%s:%s" % auth, newline=False)

    try:
        proto, _, host, path = url.split("/", 3)
    except ValueError:
        proto, _, host = url.split("/", 2)
        path = ""
    if "?" in host:  # http://host?x=1
        host, q = host.split("?", 1)
        path = "?" + q
    if proto == "http:":
        port = 80
    elif proto == "https:":
        import tls

        port = 443
    else:
        raise ValueError("Unsupported protocol: " + proto)
    if "Host" not in headers:
        headers["Host"] = host
    netloc = host
    if ":" in host:
        host, port = host.split(":", 1)
        port = int(port)

    if json is not None:
        from json import dumps

        data = dumps(json)
        if "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
    chunked = data and getattr(data, "__next__", None) and not getattr(data, "__len__", None)
    if data and not chunked:
        data = data.encode() if isinstance(data, str) else data
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(data))
    elif chunked and "Content-Length" not in headers:
        headers["Transfer-Encoding"] = "chunked"
    if "Connection" not in headers:
        headers["Connection"] = "close"

    import socket

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        if timeout is not None:
            s.settimeout(timeout)
        s.connect(ai[-1])
        if proto == "https:":
            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            if cadata:
                ctx.verify_mode = tls.CERT_REQUIRED
                ctx.load_verify_locations(cadata)  # tls takes it positionally
            else:
                ctx.verify_mode = tls.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=host)
        # The head in one buffer, one write (each write is a TCP segment, under TLS a record; small
        # ones in a row stall on Nagle + delayed ACK); a small body rides along.
        h = bytearray(b"%s /%s HTTP/1.1\r\n" % (method, path))
        for k in headers:  # keys, not items(): no tuple per header
            h += k
            h += b": "
            h += headers[k]
            h += b"\r\n"
        h += b"\r\n"
        small = data and not chunked and len(data) <= 1024
        if small:
            h += data
        s.write(h)
        h = None
        if chunked:
            te = headers.get("Transfer-Encoding") == "chunked"
            for chunk in data:
                if te:
                    chunk = b"%x\r\n%s\r\n" % (len(chunk), chunk)
                s.write(chunk)
            if te:
                s.write(b"0\r\n\r\n")
        elif data and not small:
            s.write(data)

        l = s.readline().split(None, 2)
        if len(l) < 2:
            raise ValueError("HTTP error: BadStatusLine: %r" % l)
        status = int(l[1])
        reason = str(l[2].rstrip(), "utf-8") if len(l) > 2 else ""
        resp_d = None if parse_headers is False else {}
        location = None
        dechunk = False
        clen = 0 if method == "HEAD" or status in (204, 304) or status < 200 else -1
        while 1:
            l = s.readline()
            if not l or l == b"\r\n":
                break
            c = l[0] | 0x20  # names in any case; lower() only the two that matter
            if c == 116 and l[:18].lower() == b"transfer-encoding:":
                dechunk = b"chunked" in l.lower()
            elif c == 99 and clen < 0 and l[:15].lower() == b"content-length:":
                clen = int(l[15:])
            elif c == 108 and 300 <= status <= 399 and l[:9].lower() == b"location:":
                location = str(l[9:].strip(), "utf-8")
            if parse_headers is True:
                k, v = str(l, "utf-8").split(":", 1)
                resp_d[k] = v.strip()
            elif parse_headers:
                parse_headers(l, resp_d)
    except:
        s.close()
        raise

    if location and status in (301, 302, 303, 307, 308):
        s.close()
        if not _hops:
            raise ValueError("too many redirects")
        if location[:2] == "//":  # scheme-relative
            location = proto + location
        elif location[0] == "/":
            location = proto + "//" + headers["Host"] + location
        elif "//" not in location:  # relative to the current directory
            d = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
            location = proto + "//" + headers["Host"] + "/" + d + location
        headers.pop("Host", None)
        to = location.split("/", 3)
        if to[2] != netloc or proto == "https:" and to[0] != proto:
            headers.pop("Authorization", None)  # credentials stay with the host they were for
        headers.pop("Content-Length", None)
        if status < 304 and method != "HEAD":  # 301/302/303: the browser rule, GET without body
            headers.pop("Content-Type", None)
            method = "GET"
            data = None
        return request(method, location, data, None, headers, stream, None, timeout, parse_headers,
                       cadata, _hops - 1)
    resp = Response()
    resp.raw = resp
    resp._s = s
    resp._n = 0 if dechunk else clen
    resp._c = dechunk and clen != 0
    resp.encoding = "utf-8"
    resp.status_code = status
    resp.reason = reason
    if resp_d is not None:
        resp.headers = resp_d
    return resp


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
