# Test responder: mdns on PORT (5353 = multicast on loopback too) for "ws-test" at 127.0.0.1,
# advertising _http._tcp and _telnet._tcp, driven by the unix stand-in loop. Further arguments:
# ports _http._tcp is added again on, each replacing the one before (as announce.start() re-adds).
import sys
import mdns
import wsconfig

port = int(sys.argv[1])
mdns.start("ws-test", "127.0.0.1", [("_http._tcp", 80, {"path": "/", "board": "unix"})], port=port)
mdns.add_service("_telnet._tcp", 23)
for p in sys.argv[2:]:
    mdns.add_service("_http._tcp", int(p), {"path": "/", "board": "unix"})
print("ready")
wsconfig.serve()
