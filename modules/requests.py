# requests: a small HTTP/1.1 client (one request per connection) with the micropython-lib `requests` API.
#
# Beyond micropython-lib's: str and json bodies are sent as UTF-8 with their byte length; the Host
# header carries a non-default port; header names match in any case; relative redirects work,
# and at most MAX_REDIRECTS are followed; chunked responses are decoded by .content; the socket
# is closed on any error; Response is a context manager (`with requests.get(url) as r:`).
import socket

MAX_REDIRECTS = 5


class Response:
    def __init__(self, f):
        self.raw = f
        self.encoding = "utf-8"
        self._cached = None
        self._chunked = False
        self._len = None  # Content-Length: the body is read in one allocation, not up to EOF

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.raw:
            self.raw.close()
            self.raw = None
        self._cached = None

    @property
    def content(self):
        if self._cached is None:
            try:
                if self._chunked:
                    self._cached = self._dechunk()
                else:
                    self._cached = self.raw.read() if self._len is None else self.raw.read(self._len)
            finally:
                self.raw.close()
                self.raw = None
        return self._cached

    def _dechunk(self):
        s = self.raw
        out = bytearray()
        while 1:
            n = int(s.readline().split(b";", 1)[0], 16)
            if not n:
                return bytes(out)
            out.extend(s.read(n))
            s.readline()

    @property
    def text(self):
        return str(self.content, self.encoding)

    def json(self):
        import json

        return json.loads(self.content)


def _b(s):
    return s.encode() if isinstance(s, str) else s


def request(method, url, data=None, json=None, headers=None, stream=None, auth=None,
            timeout=None, parse_headers=True, _hops=MAX_REDIRECTS):
    headers = {} if headers is None else headers.copy()
    if auth is not None:
        from binascii import b2a_base64

        headers["Authorization"] = b"Basic " + b2a_base64(b"%s:%s" % auth, newline=False)

    try:
        proto, _, host, path = url.split("/", 3)
    except ValueError:
        proto, _, host = url.split("/", 2)
        path = ""
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
        data = _b(data)
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(data))
    elif chunked and "Content-Length" not in headers:
        headers["Transfer-Encoding"] = "chunked"
    if "Connection" not in headers:
        headers["Connection"] = "close"

    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    try:
        if timeout is not None:
            s.settimeout(timeout)
        s.connect(ai[-1])
        if proto == "https:":
            ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = tls.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=host)
        s.write(method)
        s.write(b" /")
        s.write(path)
        s.write(b" HTTP/1.1\r\n")
        for k in headers:  # keys, not items(): no tuple per header
            s.write(k)
            s.write(b": ")
            s.write(headers[k])
            s.write(b"\r\n")
        s.write(b"\r\n")
        if chunked:
            te = headers.get("Transfer-Encoding") == "chunked"
            for chunk in data:
                if te:
                    s.write(b"%x\r\n" % len(chunk))
                s.write(chunk)
                if te:
                    s.write(b"\r\n")
            if te:
                s.write(b"0\r\n\r\n")
        elif data:
            s.write(data)

        l = s.readline().split(None, 2)
        if len(l) < 2:
            raise ValueError("HTTP error: BadStatusLine: %r" % l)
        status = int(l[1])
        reason = str(l[2].rstrip(), "utf-8") if len(l) > 2 else ""
        resp_d = None if parse_headers is False else {}
        location = None
        dechunk = False
        clen = 0 if method == "HEAD" or status in (204, 304) or status < 200 else None
        while 1:
            l = s.readline()
            if not l or l == b"\r\n":
                break
            c = l[0] | 0x20  # names in any case; lower() only the two that matter
            if c == 116 and l[:18].lower() == b"transfer-encoding:":
                dechunk = b"chunked" in l.lower()
            elif c == 99 and clen is None and l[:15].lower() == b"content-length:":
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
            return request("GET", location, None, None, headers, stream, None, timeout, parse_headers, _hops - 1)
        return request(method, location, data, None, headers, stream, None, timeout, parse_headers, _hops - 1)
    resp = Response(s)
    resp.status_code = status
    resp.reason = reason
    resp._chunked = dechunk
    resp._len = clen
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
