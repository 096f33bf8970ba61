# requests: a small HTTP/1.1 client (one request per connection) with the micropython-lib `requests` API.
#
# Beyond micropython-lib's: str and json bodies are sent as UTF-8 with their byte length; the Host
# header carries a non-default port; header names match in any case (a header the caller gives in
# any case replaces our default); relative redirects work (`?q`, `../x` too), at most 5 followed;
# an interim 1xx (100 Continue) is skipped; a head ending lines in a bare LF is read; `r.raw` is
# the body without its framing (Content-Length or chunked), a stream (read, readinto, readline;
# json.load(r.raw)), so stream=True reads it piecewise; the request head (and a small body) leaves
# in one write; https verifies the server when given `cadata=` (a CA, DER; a clear
# NotImplementedError where the port's TLS cannot verify, ESP8266's axTLS), else it is unauthenticated;
# the socket is closed on any error; Response is a context manager (`with requests.get(url) as r:`);
# a body cut short (the server closed early) is OSError(104 ECONNRESET, ...), as a network error,
# where micropython-lib returns what came. Unlike it: request() makes the Response (no Response(f)).
# (Heap: as .mpy every code byte, function and constant is heap: a bytes constant, or a str one
# longer than 10 characters, is an object of its own (~74 B) unless the firmware already holds
# that str, and each name new to the firmware is interned. So byte strings are made from strs
# ("\r\n".encode(): short ones are shared qstrs), names are ones the firmware has (sock, n,
# chunked, key, ...), socket is imported in request(), and each constant appears once.)


class Response(__import__("io").IOBase):  # (no global for the base: each global is heap)
    # The response and, as r.raw, its body as a stream without the framing: an IOBase, so C stream
    # readers (json.load(r.raw)) call readinto(). sock: the socket; n: bytes left (of the body,
    # or of the current chunk), -1 up to EOF; chunked: a size line is due at n 0; left (from
    # __getattr__): n, once the next size line is read. request() sets them (no __init__), read()
    # takes its size as *sz (no defaults tuple), __exit__ is close, from __getattr__: each method,
    # default and class attribute is heap (frozen too: the class dict).
    def __enter__(self):
        return self

    def close(self, *exc):
        if self.raw:
            self.raw = None
            self.sock.close()

    def readinto(self, buf):
        n = self.left
        k = n and self.sock.readinto(buf, n) or 0  # at most n bytes (n -1: the size of buf)
        if n > 0:
            if not k:
                raise OSError(104, "HTTP body cut short")
            self.n -= k
        return k

    def readline(self):
        # One line of the body (up to b"\n"), within its Content-Length and across chunks: the
        # socket's own readline, bounded by what is left of the chunk or body.
        b = b""
        while 10 not in b[-1:] and self.left:
            n = self.n
            l = self.sock.readline(n)  # (-1: no bound)
            if not l:
                if n > 0:
                    raise OSError(104, "HTTP body cut short")
                break
            if n > 0:
                self.n -= len(l)
            b += l
        return b

    def read(self, *sz):
        # At most sz bytes (at most the rest of a chunk), else the whole body: a Content-Length
        # body in one allocation, a chunked one in one bytearray grown chunk by chunk.
        sz = sz[0] if sz else -1
        n = self.left
        if n < 0:
            return self.sock.read(sz)  # (-1: up to EOF)
        if sz < 0 and self.chunked:
            b = bytearray()
            while self.left:
                b += self.read(self.n)
            return b
        if 0 <= sz < n:
            n = sz
        b = self.sock.read(n)
        if len(b) < n:
            raise OSError(104, "HTTP body cut short")
        self.n -= n
        return b

    def __getattr__(self, name):
        # left, content and text, computed on use: content then stays as an instance attribute
        # (one method instead of a method and two properties, and no _cached: each is heap).
        if name == "left":
            # Bytes left of this chunk or body (-1: up to EOF). At the end of a chunk, the CRLF
            # after its data and the next size line are read now, not when the chunk ends: a
            # stream gets each chunk as soon as it is in.
            if not self.n and self.chunked:
                s = self.sock
                l = s.readline()
                if l in "\r\n".encode():  # the line ending the chunk before (CRLF or a bare LF)
                    l = s.readline()
                # EOF where a size line is due: 1 byte left, which no read gets, so each says cut
                # short (OSError 104), not int(b"")'s ValueError.
                self.n = int(l.split(";".encode(), 1)[0], 16) if l else 1
                if not self.n:  # the last chunk: skip trailers up to the blank line
                    self.chunked = False
                    while len(s.readline()) > 2:
                        pass
            return self.n
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
            timeout=None, parse_headers=True, cadata=None):
    def key(headers, name):
        # The name the headers hold name under, in any case, else name: a name the caller gave
        # in any case is theirs (no second Host), and stays as they spelt it. (Made per request,
        # not held as a global.)
        for k in headers:
            if k.lower() == name.lower():
                return k
        return name

    s = h = l = location = None  # (the most used locals first: each of the first 16 is a byte shorter)
    headers = {} if headers is None else headers.copy()
    if auth is not None:
        import binascii

        headers[key(headers, "Authorization")] = "Basic {}".format(
            str(binascii.b2a_base64("%s:%s".encode() % auth, newline=False), "utf-8"))

    for hops in range(6):  # at most 5 redirects
        proto, _, host = url.split("/", 2)
        path = ""
        if "/" in host:  # (split, not partition: str.partition is not in every port's build)
            host, path = host.split("/", 1)
            path = "/" + path
        if "?" in host:  # http://host?x=1: the query, with any "/" in it (?next=/a), starts the path
            host, l = host.split("?", 1)
            path = "?" + l + path
        if path[:1] != "/":
            path = "/" + path
        if proto == "http:":
            port = 80
        elif proto == "https:":
            port = 443
        else:
            raise ValueError("Unsupported protocol: " + proto)
        headers.setdefault(key(headers, "Host"), host)
        netloc = host
        if ":" in host:
            host, port = host.split(":", 1)
            port = int(port)
        if json is not None:
            data = __import__("json").dumps(json)
            json = None
            headers.setdefault(key(headers, "Content-Type"), "application/json")
        gen = data and getattr(data, "__next__", None) and not getattr(data, "__len__", None)
        if data and not gen:
            if isinstance(data, str):
                data = data.encode()
            headers.setdefault(key(headers, "Content-Length"), str(len(data)))
        # te: the generator's pieces go as chunks (unless the caller gave a Content-Length)
        te = gen and key(headers, "Content-Length") not in headers
        if te:  # the caller's own Transfer-Encoding (identity) sends the pieces as they are
            te = headers.setdefault(key(headers, "Transfer-Encoding"), "chunked") == "chunked"
        headers.setdefault(key(headers, "Connection"), "close")

        import socket

        l = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(l[0], socket.SOCK_STREAM, l[2])
        try:
            if timeout is not None:
                s.settimeout(timeout)
            s.connect(l[-1])
            if proto == "https:":
                import tls

                l = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
                if cadata:
                    if not hasattr(tls, "CERT_REQUIRED"):  # axTLS (ESP8266): CERT_NONE only
                        raise NotImplementedError("cadata: this port's TLS cannot verify")
                    l.verify_mode = tls.CERT_REQUIRED
                    l.load_verify_locations(cadata)  # tls takes it positionally
                else:
                    l.verify_mode = tls.CERT_NONE
                s = l.wrap_socket(s, server_hostname=host)
            # The head in one buffer, one write (each write is a TCP segment, under TLS a record;
            # small ones in a row stall on Nagle + delayed ACK); a small body rides along.
            h = bytearray("%s %s ".encode() % (method, path))
            h += "HTTP/1.1\r\n"
            for l in headers:  # keys, not items(): no tuple per header
                h += "%s: %s\r\n".encode() % (l, headers[l])
            h += "\r\n"
            if data and not gen:
                if len(data) > 1024:  # a big body apart
                    s.write(h)
                    h = data
                else:
                    h += data
            s.write(h)
            if gen:
                for h in data:
                    if isinstance(h, str):  # a chunk's size is its bytes'
                        h = h.encode()
                    s.write("%x\r\n%s\r\n".encode() % (len(h), h) if te else h)
                if te:
                    s.write("0\r\n\r\n")  # the last, empty chunk

            e, c = "\r\n".encode(), ":".encode()  # (made once, not per line)
            while 1:
                h = s.readline().split(None, 2)
                if len(h) < 2:
                    raise ValueError("HTTP error: BadStatusLine: %r" % h)
                status = int(h[1])
                if status // 100 != 1 or status == 101:
                    break
                while s.readline() not in e:  # an interim 1xx (100 Continue): skip its head
                    pass
            h.append(b"")
            reason = h[2].rstrip()  # bytes, as micropython-lib's (b"" if the line has none)
            h = None if parse_headers is False else {}  # the response's headers
            location = None
            chunked = False
            clen = 0 if method == "HEAD" or status == 204 or status == 304 or status < 200 else -1
            while 1:
                l = s.readline()
                if l in e:  # the blank line (CRLF or a bare LF), or EOF
                    break
                # Names are ASCII tokens, matched in any case; values may be any bytes (decoded
                # only where a str is made of them). A line without a name is skipped.
                i = l.find(c)
                n = str(l[:i], "utf-8") if i > 0 else ""
                k = n.lower()
                v = l[i + 1 :].strip()
                if k == "Transfer-Encoding".lower():
                    chunked = "chunked".encode() in v.lower()
                elif k == "Content-Length".lower() and clen < 0:
                    clen = int(v)
                elif k == "location" and status // 100 == 3 and 398 >> status % 100 & 1:
                    location = str(v, "utf-8")  # a redirect we follow: 301-303, 307, 308 (398: those bits)
                if parse_headers is True:
                    if n:
                        h[n] = str(v, "utf-8")
                elif parse_headers:
                    parse_headers(l, h)
        except:
            s.close()
            raise
        if not location:
            r = Response()
            r.raw = r
            r.sock = s
            r.n = 0 if chunked else clen
            r.chunked = chunked and clen != 0
            r.encoding = "utf-8"
            r.status_code = status
            r.reason = reason
            if h is not None:
                r.headers = h
            return r

        s.close()
        if hops > 4:
            raise ValueError("too many redirects")
        if gen and status > 303:  # 307/308 send the body again, and a generator's is spent
            raise ValueError("%d redirect: generator body spent" % status)
        headers.pop(key(headers, "Host"), None)  # the next hop's own (the caller's named this one)
        if location[:2] == "/" * 2:  # scheme-relative
            location = proto + location
        elif ":" not in location.split("/", 1)[0]:  # no scheme: on this host (/a?next=http://x too)
            if location[0] != "/":  # relative to the current directory, not to a "/" in the query
                path = path.split("?", 1)[0]
                if location[0] != "?":  # "?q": this path, another query (RFC 3986 5.2.2)
                    path = path[: path.rfind("/") + 1]
                location = path + location
            # Dot segments out of the path (RFC 3986 5.2.4: ../x from /a/b/c is /a/x), not the query
            # (in s, h, l: locals done with, not new ones).
            l = location.split("?", 1)
            s = ""
            for h in l[0].split("/")[1:]:
                if h == "..":
                    s = s[: s.rfind("/")]  # (above the root stays at it)
                elif h != ".":
                    s += "/" + h
            if h and h in "..":  # a/.. and a/. end in "/"
                s += "/"
            l[0] = s
            location = proto + "/" * 2 + netloc + "?".join(l)  # the URL's server, whatever Host said
        if location.split("/", 3)[2] != netloc or proto == "https:" and location[:6] != proto:
            headers.pop(key(headers, "Authorization"), None)  # credentials stay with their host
        headers.pop(key(headers, "Content-Length"), None)  # the next request frames its own body
        headers.pop(key(headers, "Transfer-Encoding"), None)
        if status < 304 and method != "HEAD":  # 301/302/303: the browser rule, GET without body
            headers.pop(key(headers, "Content-Type"), None)
            method = "GET"
            data = None
        url = location


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
