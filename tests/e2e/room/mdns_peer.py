"""A board's mDNS side played by python-zeroconf, with short TTLs: `_workshop._tcp` for HOSTNAME on
127.0.0.1, as announce advertises it. Prints "registered"; a line "bye" on stdin unregisters it
(mDNS goodbye packets) and exits; SIGKILL is a power cut (no goodbye).

    python mdns_peer.py HOSTNAME TTL
"""
import socket
import sys

from zeroconf import IPVersion, ServiceInfo, Zeroconf

host, ttl = sys.argv[1], int(sys.argv[2])
zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
info = ServiceInfo("_workshop._tcp.local.", f"{host}._workshop._tcp.local.", port=2323,
                   addresses=[socket.inet_aton("127.0.0.1")], server=f"{host}.local.",
                   properties={"board": "ESP32_GENERIC", "inputs": "cd" * 32, "project": "0.1.0"},
                   host_ttl=ttl, other_ttl=ttl)
zc.register_service(info, allow_name_change=False)
print("registered", flush=True)
if sys.stdin.readline().strip() == "bye":
    zc.unregister_service(info)
zc.close()
