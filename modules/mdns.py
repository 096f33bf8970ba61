# mdns: answers <hostname>.local (A) and advertises services (PTR/SRV/TXT, DNS-SD) over
# multicast and legacy unicast (RFC 6762 section 6.7: a query from a port other than 5353 gets
# a unicast answer with its id and question, TTL <= 10 s).
#
#   import mdns
#   mdns.start()                                  # hostname from /workshop.json, IP from wifi
#   mdns.add_service("_http._tcp", 80, {"path": "/"})
#
# Stock ESP32 firmware runs ESP-IDF's own responder on 5353: there start() leaves it alone, the
# name answered is network.hostname() (wifi.connect() sets it from /workshop.json), and services
# cannot be advertised (MicroPython v1.28 has no Python API for that responder).
# No probing or conflict resolution: the workshop's hostnames are unique by construction.
# Known answers are honoured (RFC 6762 7.1): a record the query lists is not sent again.
import socket
import struct
import sys
from micropython import const
import wsconfig

_A = const(1)
_PTR = const(12)
_TXT = const(16)
_SRV = const(33)
_ANY = const(255)
_TTL = const(120)
_META = b"\x09_services\x07_dns-sd\x04_udp\x05local\x00"

_sock = None
_host = None  # wire-format "<hostname>.local"
_ip = b"\0\0\0\0"
_svcs = {}  # {type wire: (instance wire, port, txt rdata)}: one per type (add_service)
_group = None
_poll = None  # select.poll with _sock: is a packet waiting?


def _wire(name):
    # "a.b.local" -> b"\x01a\x01b\x05local\x00" (lower case)
    out = bytearray()
    for l in name.lower().encode().split(b"."):
        if l:
            out.append(len(l))
            out.extend(l)
    out.append(0)
    return bytes(out)


def _ip4(s):
    return bytes(int(x) for x in s.split("."))


def _txt(d):
    out = bytearray()
    for k in d or ():
        kv = ("%s=%s" % (k, d[k])).encode()
        out.append(len(kv))
        out.extend(kv)
    return bytes(out) or b"\x00"


def _is(p, off, name):
    # Is the (possibly compressed) name at p[off] our wire-format `name`? No allocation: it runs
    # for every packet on the LAN. Labels compare case-insensitively (our names are lower case).
    j = 0
    for _ in range(40):
        n = p[off]
        if n >= 0xC0:
            off = ((n & 0x3F) << 8) | p[off + 1]
            continue
        if n != name[j]:
            return False
        if not n:
            return True
        for i in range(1, n + 1):
            c = p[off + i]
            if 65 <= c <= 90:
                c |= 0x20
            if c != name[j + i]:
                return False
        off += n + 1
        j += n + 1
    return False


def _ours(p, n):
    # Does any question in p[:n] ask for one of our names? Allocation-free, so a LAN full of
    # other hosts' traffic costs no garbage; answers are built only after this says yes.
    if n < 12 or p[2] & 0x80:  # short, or a response
        return False
    off = 12
    for _ in range((p[4] << 8) | p[5]):
        if _is(p, off, _host) or _svcs and _is(p, off, _META):
            return True
        for t in _svcs:
            if _is(p, off, t) or _is(p, off, _svcs[t][0]):
                return True
        while p[off] and p[off] < 0xC0:  # to the end of this name, then past type and class
            off += p[off] + 1
        off += 6 if p[off] else 5
        if off > n:
            return False
    return False


def _name_at(p, off):
    # Read a (possibly compressed) name; returns (lower-case wire bytes, offset after it).
    out = bytearray()
    end = -1
    for _ in range(20):
        n = p[off]
        if n >= 0xC0:
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | p[off + 1]
            continue
        if n == 0:
            out.append(0)
            return bytes(out).lower(), end if end >= 0 else off + 1
        out.extend(memoryview(p)[off:off + n + 1])
        off += n + 1
    raise ValueError


def _rr(out, name, typ, flush, ttl, rdata):
    out.extend(name)
    out.extend(struct.pack("!HHIH", typ, 0x8001 if flush else 1, ttl, len(rdata)))
    out.extend(rdata)


def _records(qname, qtype):
    # Matching records as (name, type, rdata, unique) plus additional records.
    an = []
    ad = []
    if qname == _host and qtype in (_A, _ANY):
        an.append((_host, _A, _ip, 1))
    for t in _svcs:
        inst, port, txt = _svcs[t]
        srv = (inst, _SRV, struct.pack("!HHH", 0, 0, port) + _host, 1)
        tx = (inst, _TXT, txt, 1)
        if qname == _META and qtype in (_PTR, _ANY):
            an.append((_META, _PTR, t, 0))
        elif qname == t and qtype in (_PTR, _ANY):
            an.append((t, _PTR, inst, 0))
            ad.extend((srv, tx, (_host, _A, _ip, 1)))
        elif qname == inst:
            if qtype in (_SRV, _ANY):
                an.append(srv)
                ad.append((_host, _A, _ip, 1))
            if qtype in (_TXT, _ANY):
                an.append(tx)
    return an, ad


def _answer(p, legacy):
    qid, flags, qd, ka = struct.unpack_from("!HHHH", p)
    if flags & 0x8000:
        return None, False  # a response, not a query
    off = 12
    an = []
    ad = []
    qu = False
    for _ in range(qd):
        name, off = _name_at(p, off)
        qtype, qclass = struct.unpack_from("!HH", p, off)
        off += 4
        a, b = _records(name, qtype)
        if a:
            qu = qu or bool(qclass & 0x8000)
            an.extend(a)
            ad.extend(b)
    end = off
    try:
        # Known answers (RFC 6762 7.1): a record the querier lists with at least half our TTL is
        # not sent again (a browser's every re-query lists what it has). A list cut off at our
        # 512 bytes counts as far as it was read.
        for _ in range(ka):
            name, off = _name_at(p, off)
            typ, cls, ttl, n = struct.unpack_from("!HHIH", p, off)
            off += 10
            rd = _name_at(p, off)[0] if typ == _PTR else p[off:off + n]
            off += n
            if ttl >= _TTL // 2:
                an = [r for r in an if r[1] != typ or r[0] != name or r[2] != rd]
    except (IndexError, ValueError):
        pass
    if not an:
        return None, False
    ad = [r for r in ad if r not in an]
    out = bytearray(struct.pack("!HHHHHH", qid if legacy else 0, 0x8400, qd if legacy else 0,
                                len(an), 0, len(ad)))
    if legacy:
        out.extend(memoryview(p)[12:end])  # the questions, as asked
    ttl = 10 if legacy else _TTL
    for r in an + ad:
        _rr(out, r[0], r[1], r[3] and not legacy, ttl, r[2])
    return out, qu


def _port(addr):
    return addr[1] if isinstance(addr, tuple) else socket.sockaddr(addr)[2]


def _on_packet(s):
    # Every packet waiting (lwIP queues 4), not one per call: a board loses a socket callback
    # when its scheduler queue (4 deep, shared) is full, and the packet it was for waited for the
    # next one (each answer a query late); four such and lwIP, its queue full, dropped all later
    # packets without a callback (no answers until a reset). Polled first, without allocating:
    # a callback whose packet an earlier one took finds none (recvfrom would wait for ever).
    for _ in range(4):
        for _ in _poll.ipoll(0):
            break
        else:
            return
        try:
            # recvfrom's own copy of the packet and of the sender is the one allocation left for a
            # packet that is not for us: MicroPython sockets have no recvfrom_into, and readinto
            # would lose the sender (legacy unicast answers go back to it) and datagram boundaries.
            p, addr = s.recvfrom(512)
            if _ours(p, len(p)):
                legacy = _port(addr) != 5353
                out, qu = _answer(p, legacy)
                if out:
                    s.sendto(out, addr if legacy or qu else _group)
        except Exception:
            pass  # malformed packets and send errors are dropped


def _announce(ttl):
    # ttl 0: the goodbye (RFC 6762 10.1), so browsers drop us now rather than after _TTL s.
    # (No default for ttl: a default is a tuple held on the heap for as long as the module.)
    out = bytearray(struct.pack("!HHHHHH", 0, 0x8400, 0, 0, 0, 0))
    n = 1
    _rr(out, _host, _A, 1, ttl, _ip)
    for t in _svcs:
        _rr(out, t, _PTR, 0, ttl, _svcs[t][0])
        n += 1
    struct.pack_into("!H", out, 6, n)
    try:
        _sock.sendto(out, _group)
    except OSError:
        pass


def add_service(stype, port, txt=None):
    # stype like "_http._tcp"; the instance is named after the host, so one per type: a type added
    # again replaces the one before (announce.start() re-adds its own at every run, maybe on a new
    # port; appended, each run was another record set held and answered, two SRVs for one name).
    host = _host[1:1 + _host[0]].decode() if _host else "device"
    t = _wire(stype + ".local")
    _svcs[t] = (_wire(host)[:-1] + t, port, _txt(txt))
    if _sock:
        _announce(_TTL)


def start(hostname=None, ip=None, services=(), port=5353):
    # services: [(type, port, txt dict)]. Returns False when the port's own responder serves.
    global _sock, _host, _ip, _group, _poll
    stop()
    if hostname is None:
        hostname = wsconfig.load().get("hostname")
    if sys.platform == "esp32" and port == 5353:
        import network
        if hostname and hostname != network.hostname():
            network.hostname(hostname)
            if network.WLAN(network.STA_IF).isconnected():  # it took its name at the first GOT_IP
                print("mdns: %s.local after a reset: the ESP32's own responder keeps the name it"
                      " started with" % hostname)
                return False
        print("mdns: %s.local served by the ESP32's own responder; services not advertised" %
              network.hostname())
        return False
    if ip is None:
        import network
        ip = network.WLAN(network.STA_IF).ifconfig()[0]
    if not hostname:
        raise ValueError("mdns: no hostname (mdns.start(hostname) or /workshop.json)")
    _host = _wire(hostname + ".local")
    _ip = _ip4(ip)
    _svcs.clear()
    _group = socket.getaddrinfo("224.0.0.251", 5353)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(socket.getaddrinfo("0.0.0.0", port)[0][-1])
    try:
        s.setsockopt(0, socket.IP_ADD_MEMBERSHIP, _ip4("224.0.0.251") + _ip)
        if sys.platform == "linux":
            s.setsockopt(0, 32, _ip)  # IP_MULTICAST_IF: answer on the interface we serve
    except OSError as e:
        print("mdns: no multicast (%s): legacy unicast only" % e)
    _sock = s
    import select
    _poll = select.poll()
    _poll.register(s, select.POLLIN)
    _poll.ipoll(0)  # its first call makes the tuple it reuses: not in the first packet's cost
    for sv in services:
        add_service(*sv)
    wsconfig.watch(s, _on_packet)
    _announce(_TTL)
    print("mdns: %s.local -> %s" % (hostname, ip))
    return True


def stop():
    global _sock, _poll
    _poll = None
    if _sock:
        wsconfig.watch(_sock, None)
        try:
            _announce(0)
        finally:  # (a MemoryError building the goodbye must not leave the socket open)
            _sock.close()
            _sock = None
