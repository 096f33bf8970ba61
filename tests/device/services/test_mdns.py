"""mdns answered to real resolvers: dnspython over legacy unicast (RFC 6762 6.7) to a free port on
127.0.0.1, and python-zeroconf over multicast 224.0.0.251:5353 on the loopback interface."""

from __future__ import annotations

import socket

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
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
