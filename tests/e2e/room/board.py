# A "board" on the unix port: the real start-up (workshop_boot) with this folder as its
# filesystem root and workshop.json as its config. No radio: Wi-Fi is the scripted WLAN double
# (tests/device/services/fake/network.py) with the address BOARD_IP (default 127.0.0.1);
# telnet listens on loopback only. Then the unix stand-in loop drives telnet, mdns and announce.
import os
import sys

sys.path.append(os.getenv("FAKE_NETWORK_DIR"))
import network

_ip = os.getenv("BOARD_IP") or "127.0.0.1"
network.WLAN.ifconfig = lambda self: (_ip, "255.0.0.0", _ip, _ip)
import telnet

_ts = telnet.start
telnet.start = lambda **kw: _ts(host="127.0.0.1", **kw)
# INPUT_LOG: every byte the telnet server receives is appended there (what a host sent the board).
_log = os.getenv("INPUT_LOG")
if _log:
    _in = telnet._Session._input

    def _logged(self, buf, n):
        with open(_log, "ab") as f:
            f.write(bytes(buf[:n]))
        return _in(self, buf, n)

    telnet._Session._input = _logged
import workshop_boot
import wsconfig

print("board ready")
wsconfig.serve()
