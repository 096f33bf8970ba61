"""mdns answered to real resolvers: dnspython over legacy unicast (RFC 6762 6.7) to a free port on
127.0.0.1, and python-zeroconf over multicast 224.0.0.251:5353 on the loopback interface."""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.name
import pytest

from support import free_port


def ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=2)
    assert r.id == q.id and r.question == q.question and r.flags & dns.flags.AA
    return r


def records(section) -> set[str]:
    return {f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {item}" for rr in section for item in rr}


def test_legacy_unicast_a_ptr_srv_txt(serve):
    srv = serve("serve_mdns.py", port=free_port(socket.SOCK_DGRAM), ready="ready")
    assert records(ask(srv.port, "ws-test.local.", "A").answer) == {"ws-test.local. 10 A 127.0.0.1"}
    assert records(ask(srv.port, "WS-Test.LOCAL.", "A").answer) == {"ws-test.local. 10 A 127.0.0.1"}
    assert records(ask(srv.port, "_services._dns-sd._udp.local.", "PTR").answer) == {
        "_services._dns-sd._udp.local. 10 PTR _http._tcp.local.",
        "_services._dns-sd._udp.local. 10 PTR _telnet._tcp.local."}
    r = ask(srv.port, "_http._tcp.local.", "PTR")
    assert records(r.answer) == {"_http._tcp.local. 10 PTR ws-test._http._tcp.local."}
    assert records(r.additional) == {"ws-test._http._tcp.local. 10 SRV 0 0 80 ws-test.local.",
                                     'ws-test._http._tcp.local. 10 TXT "path=/" "board=unix"',
                                     "ws-test.local. 10 A 127.0.0.1"}
    assert records(ask(srv.port, "ws-test._telnet._tcp.local.", "SRV").answer) == {
        "ws-test._telnet._tcp.local. 10 SRV 0 0 23 ws-test.local."}
    assert records(ask(srv.port, "ws-test._telnet._tcp.local.", "TXT").answer) == {
        'ws-test._telnet._tcp.local. 10 TXT ""'}
    # names that are not ours get no answer at all (mDNS responders stay silent)
    with pytest.raises(dns.exception.Timeout):
        dns.query.udp(dns.message.make_query("other.local.", "A"), "127.0.0.1", port=srv.port, timeout=0.5)
    # garbage does not stop it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00" * 5, b"\x00\x01\x00\x00\x00\x05" + b"\xff" * 20, b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"):
            s.sendto(junk, ("127.0.0.1", srv.port))
    assert records(ask(srv.port, "ws-test.local.", "A").answer) == {"ws-test.local. 10 A 127.0.0.1"}


def test_a_service_added_again_replaces_the_one_before(serve):
    """announce.start() re-adds _workshop._tcp at every run (and a lesson may add a service again
    on a new port): each add appended another record set, held on the heap and sent in every
    answer, a changed port leaving two SRVs for one instance. Added four times here (80 at start,
    80 twice, then 8080): one of each record, the latest port. Counted on the wire: dnspython
    merges identical records into one."""
    srv = serve("serve_mdns.py", "80", "80", "8080", port=free_port(socket.SOCK_DGRAM), ready="ready")

    def ask_counted(name: str, rdtype: str) -> tuple[int, int, dns.message.Message]:
        q = dns.message.make_query(name, rdtype)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(q.to_wire(), ("127.0.0.1", srv.port))
            wire = s.recv(9000)
        an, ns, ar = struct.unpack_from("!HHH", wire, 6)
        return an, ar, dns.message.from_wire(wire)

    an, ar, r = ask_counted("_http._tcp.local.", "PTR")
    assert (an, ar) == (1, 3), records(r.answer) | records(r.additional)
    assert records(r.answer) == {"_http._tcp.local. 10 PTR ws-test._http._tcp.local."}
    assert records(r.additional) == {"ws-test._http._tcp.local. 10 SRV 0 0 8080 ws-test.local.",
                                     'ws-test._http._tcp.local. 10 TXT "path=/" "board=unix"',
                                     "ws-test.local. 10 A 127.0.0.1"}
    an, ar, r = ask_counted("ws-test._http._tcp.local.", "SRV")
    assert an == 1 and records(r.answer) == {"ws-test._http._tcp.local. 10 SRV 0 0 8080 ws-test.local."}
    an, ar, r = ask_counted("_services._dns-sd._udp.local.", "PTR")
    assert an == 2 and records(r.answer) == {"_services._dns-sd._udp.local. 10 PTR _http._tcp.local.",
                                             "_services._dns-sd._udp.local. 10 PTR _telnet._tcp.local."}


def test_multicast_on_loopback_with_python_zeroconf(serve):
    from zeroconf import AddressResolver, IPVersion, Zeroconf, ZeroconfServiceTypes

    serve("serve_mdns.py", port=5353, ready="ready")
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        info = zc.get_service_info("_http._tcp.local.", "ws-test._http._tcp.local.", timeout=3000)
        assert info is not None
        assert (info.port, info.server, info.parsed_addresses()) == (80, "ws-test.local.", ["127.0.0.1"])
        assert info.properties == {b"path": b"/", b"board": b"unix"}
        assert set(ZeroconfServiceTypes.find(zc=zc, timeout=1.5)) == {"_http._tcp.local.", "_telnet._tcp.local."}
        host = AddressResolver("ws-test.local.")
        assert host.request(zc, 3000) and host.parsed_addresses() == ["127.0.0.1"]
    finally:
        zc.close()


IGNORED = r"""
import sys, gc, socket, binascii
import mdns
port = int(sys.argv[1])
mdns.start("ws-test", "127.0.0.1", [("_http._tcp", 80, {"path": "/"})], port=port)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = socket.getaddrinfo("127.0.0.1", port)[0][-1]
def cost(pkt, handle):
    for i in range(20):
        c.sendto(pkt, dst)
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(20):
        handle(mdns._sock)
    b = gc.mem_alloc()
    gc.enable()
    return b - a
for h in sys.argv[2:]:
    pkt = binascii.unhexlify(h)
    print(repr((cost(pkt, mdns._on_packet), cost(pkt, lambda s: s.recvfrom(512)))))
"""


def test_a_packet_that_is_not_for_us_costs_nothing_beyond_the_socket_read(micropython):
    # A LAN full of laptops: every query for another name and every response is matched without
    # allocating; what remains is recvfrom's own copy (measured alongside: bench/mdns_alloc.py).
    other = dns.message.make_query("laptop.local.", "A")
    svc = dns.message.make_query("_airplay._tcp.local.", "PTR")
    two = dns.message.make_query("laptop.local.", "A")
    two.question.append(dns.rrset.RRset(dns.name.from_text("printer.local."), dns.rdataclass.IN, dns.rdatatype.AAAA))
    resp = dns.message.make_response(other)
    resp.answer.append(dns.rrset.from_text("laptop.local.", 120, "IN", "A", "10.0.0.7"))
    port = free_port(socket.SOCK_DGRAM)
    out = micropython.run(IGNORED, str(port), *(m.to_wire().hex() for m in (other, svc, two, resp)))
    costs = [eval(line) for line in out.stdout.splitlines() if line.startswith("(")]
    assert costs and all(handler == floor for handler, floor in costs), costs


def test_a_question_for_us_after_others_and_compressed_is_answered(serve):
    srv = serve("serve_mdns.py", port=free_port(socket.SOCK_DGRAM), ready="ready")
    q = dns.message.make_query("laptop.local.", "A")
    q.question.append(dns.rrset.RRset(dns.name.from_text("WS-TEST.Local."), dns.rdataclass.IN, dns.rdatatype.A))
    wire = q.to_wire()  # dnspython compresses the second "local" into a pointer to the first
    assert b"\xc0" in wire[12 + len(b"\x06laptop\x05local\x00") + 4:]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(wire, ("127.0.0.1", srv.port))
        r = dns.message.from_wire(s.recv(512))
    assert records(r.answer) == {"ws-test.local. 10 A 127.0.0.1"}


@pytest.mark.parametrize("connected, said", [
    (False, "mdns: ws-new.local served by the ESP32's own responder; services not advertised"),
    (True, "mdns: ws-new.local after a reset: the ESP32's own responder keeps the name it started with"),
])
def test_on_an_esp32_a_new_name_after_wi_fi_is_up_is_not_claimed_as_served(micropython, connected, said):
    # The ESP32 port gives its ESP-IDF responder network.hostname() once, at the first GOT_IP
    # (ports/esp32/network_wlan.c): a name set later is only a buffer until a reset. A fake sys
    # (platform "esp32") and network stand in for the board.
    code = f"""
import sys as _sys
class sys:
    platform = "esp32"
    modules = _sys.modules
_sys.modules["sys"] = sys
class WLAN:
    def __init__(self, i):
        pass
    def isconnected(self):
        return {connected}
class network:
    STA_IF = 0
    WLAN = WLAN
    name = "ws-old"
    @staticmethod
    def hostname(n=None):
        if n is None:
            return network.name
        network.name = n
_sys.modules["network"] = network
import mdns
print(repr(mdns.start("ws-new")), repr(network.name))
"""
    out = micropython.run(code).stdout.splitlines()
    assert out == [said, "False 'ws-new'"], out


GOODBYE = r"""
import mdns, wsconfig
mdns.start("ws-bye", "127.0.0.1", [("_http._tcp", 80, {"path": "/"})])
wsconfig.serve(2500)
mdns.stop()
print("stopped")
"""


def test_stop_says_goodbye_so_a_browser_drops_the_board_at_once(micropython):
    """A board that stops its responder (a lesson's mdns.stop(), a restart under a new name) sends
    its records again with TTL 0: python-zeroconf's browser removes it within about a second,
    instead of listing it for the records' 120 s."""
    import threading

    from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

    events: list[tuple[str, str, float]] = []
    removed = threading.Event()

    def on_change(zeroconf, service_type, name, state_change):
        events.append((name, state_change.name, time.monotonic()))
        if state_change is ServiceStateChange.Removed and name == "ws-bye._http._tcp.local.":
            removed.set()

    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    try:
        ServiceBrowser(zc, "_http._tcp.local.", handlers=[on_change])
        out = micropython.run(GOODBYE).stdout
        stopped = time.monotonic()
        assert "stopped" in out, out
        assert ("ws-bye._http._tcp.local.", "Added") in [(n, s) for n, s, _ in events], events
        assert removed.wait(5), events
        assert max(t for n, s, t in events if s == "Removed") - stopped < 3, events
    finally:
        zc.close()


LOST = r"""
import sys, socket, binascii, time
import mdns
port = int(sys.argv[1])
mdns.start("ws-test", "127.0.0.1", [("_http._tcp", 80, {"path": "/"})], port=port)
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.bind(socket.getaddrinfo("127.0.0.1", 0)[0][-1])
dst = socket.getaddrinfo("127.0.0.1", port)[0][-1]
for h in sys.argv[2:]:
    c.sendto(binascii.unhexlify(h), dst)
time.sleep_ms(100)
mdns._on_packet(mdns._sock)  # the one callback that came for them
mdns._on_packet(mdns._sock)  # and one whose packet an earlier call took: nothing to read
print("RETURNED")
c.setblocking(False)
while True:
    try:
        print("ANSWER", binascii.hexlify(c.recv(512)).decode())
    except OSError:
        break
"""


def test_queries_that_arrive_together_are_all_answered_from_one_callback(micropython):
    """A board runs mdns from a socket callback, one per packet, through a scheduler queue 4
    deep that telnet and the tick share: when it is full, a callback is lost. Its packet then
    waited in lwIP's queue (4 packets) for the next one's callback, each answer a query late, and
    once four were stuck lwIP dropped every later packet: the board was deaf until a reset. Here
    three queries arrive while the board is busy and only one callback comes: all three are
    answered, and a callback with nothing left to read returns (a blocking read would hang the
    REPL)."""
    queries = [dns.message.make_query(n, t) for n, t in (
        ("ws-test.local.", "A"), ("_http._tcp.local.", "PTR"), ("ws-test._http._tcp.local.", "SRV"))]
    out = micropython.run(LOST, str(free_port(socket.SOCK_DGRAM)), *(q.to_wire().hex() for q in queries),
                          timeout=20).stdout
    assert "RETURNED" in out, out
    answers = [dns.message.from_wire(bytes.fromhex(l.split()[1])) for l in out.splitlines() if l.startswith("ANSWER")]
    assert sorted(a.id for a in answers) == sorted(q.id for q in queries), out
    got = set().union(*(records(a.answer) for a in answers))
    assert got == {"ws-test.local. 10 A 127.0.0.1", "_http._tcp.local. 10 PTR ws-test._http._tcp.local.",
                   "ws-test._http._tcp.local. 10 SRV 0 0 80 ws-test.local."}, got


def test_a_browser_asking_again_with_what_it_knows_is_not_answered_again(serve):
    """A browser's every re-query lists the answers it already has (python-zeroconf's
    ServiceBrowser: at 1 s, 5 s, ... listing our PTR, which it keeps for 1125 s); RFC 6762 7.1:
    a responder MUST NOT answer with a record listed there with at least half its TTL. Before,
    every board answered every re-query of every laptop in the room. The queries here are
    python-zeroconf's own packets (DNSOutgoing), multicast on the loopback interface."""
    from zeroconf import DNSOutgoing, DNSPointer, DNSQuestion, const

    serve("serve_mdns.py", port=5353, ready="ready")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("", 5353))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton("224.0.0.251") + socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))

    def ask(*known: tuple[str, int]) -> set[str]:
        """Browse _http._tcp listing known PTR answers (instance, ttl); our answers within 0.5 s."""
        out = DNSOutgoing(const._FLAGS_QR_QUERY, multicast=True)
        out.add_question(DNSQuestion("_http._tcp.local.", const._TYPE_PTR, const._CLASS_IN))
        for instance, ttl in known:
            out.add_answer_at_time(DNSPointer("_http._tcp.local.", const._TYPE_PTR, const._CLASS_IN, ttl, instance), 0)
        [packet] = out.packets()
        s.sendto(packet, ("224.0.0.251", 5353))
        got: set[str] = set()
        end = time.monotonic() + 0.5
        while (left := end - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                m = dns.message.from_wire(s.recv(9000))
            except (socket.timeout, dns.exception.DNSException):
                continue
            if m.flags & dns.flags.QR:
                got |= {r for r in records(m.answer) if "ws-test" in r}
        return got

    ours = {"_http._tcp.local. 120 PTR ws-test._http._tcp.local."}
    try:
        assert ask() == ours                                               # a first query
        assert ask(("ws-test._http._tcp.local.", 1125)) == set()          # what zeroconf lists
        assert ask(("ws-test._http._tcp.local.", 60)) == set()            # half our TTL
        assert ask(("ws-test._http._tcp.local.", 59)) == ours             # about to expire: sent
        assert ask(("printer._http._tcp.local.", 4500)) == ours           # another's: ours sent
    finally:
        s.close()
