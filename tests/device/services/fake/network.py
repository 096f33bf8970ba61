# A scripted double of MicroPython's `network` module for the unix port: NO RADIO. It replays
# each port's real status codes (MicroPython v1.28.0: ports/esp32/modnetwork_globals.h with
# ESP-IDF's wifi reason codes; ports/esp8266/modnetwork_globals.h with the ESP8266 SDK's
# STATION_* values). FAKE_PORT=esp32|esp8266 picks the constants, FAKE_SCRIPT the sequence
# that status() walks through after connect() (its last code repeats). `calls` logs the API use.
import os

PORT = os.getenv("FAKE_PORT") or "esp32"
STA_IF = 0
AP_IF = 1
AUTH_OPEN = 0
AUTH_WPA2_PSK = 3
if PORT == "esp32":
    STAT_IDLE = 1000
    STAT_CONNECTING = 1001
    STAT_GOT_IP = 1010
    STAT_BEACON_TIMEOUT = 200
    STAT_NO_AP_FOUND = 201
    STAT_WRONG_PASSWORD = 202
    STAT_ASSOC_FAIL = 203
    STAT_CONNECT_FAIL = 203
    STAT_HANDSHAKE_TIMEOUT = 204
    STAT_NO_AP_FOUND_W_COMPATIBLE_SECURITY = 210
    STAT_NO_AP_FOUND_IN_AUTHMODE_THRESHOLD = 211
    STAT_NO_AP_FOUND_IN_RSSI_THRESHOLD = 212
else:
    STAT_IDLE = 0
    STAT_CONNECTING = 1
    STAT_WRONG_PASSWORD = 2
    STAT_NO_AP_FOUND = 3
    STAT_CONNECT_FAIL = 4
    STAT_GOT_IP = 5

C, G = STAT_CONNECTING, STAT_GOT_IP
SCRIPTS = {
    "ok": [C, C, C, G],
    "wrong_password": [C, C, STAT_WRONG_PASSWORD],
    # ESP32 keeps retrying and reports the reason; ESP8266 flips between retry and reason
    "no_ap": [C, C, STAT_NO_AP_FOUND] if PORT == "esp32" else [C, C, STAT_NO_AP_FOUND, C, STAT_NO_AP_FOUND],
    "connect_fail": [C, STAT_CONNECT_FAIL, C, STAT_CONNECT_FAIL],
    # ESP32 reports a handshake timeout as CONNECTING while it retries (network_wlan_status())
    "silent": [C],
}
if PORT == "esp32":
    # A busy AP on the way to a connection (MicroPython PR #4842's log, in 100 ms polls): AUTH_FAIL
    # for 2.4 s, then NO_AP_FOUND while it rescans, then connected. Not a wrong password.
    SCRIPTS["busy_ap"] = [C] * 10 + [STAT_WRONG_PASSWORD] * 24 + [STAT_NO_AP_FOUND] * 2 + [G]
# FAKE_KEY: the access point's password; a connect() with another key walks "wrong_password".
KEY = os.getenv("FAKE_KEY")


def _str(v):
    # what mp_obj_str_get_data() accepts (objstr.c, bad_implicit_conversion)
    if not isinstance(v, (str, bytes)):
        raise TypeError("can't convert '%s' object to str implicitly" % type(v).__name__)


calls = []
_host = ["mpy-unix"]
_state = {"script": None, "i": 0, "active": [False, False], "ssid": "", "cfg": {}}


def hostname(name=None):
    if name is None:
        return _host[0]
    _str(name)
    if len(name) > 32:  # extmod/modnetwork.c: MICROPY_PY_NETWORK_HOSTNAME_MAX_LEN, a bare ValueError
        raise ValueError()
    calls.append(("hostname", name))
    _host[0] = name


class WLAN:
    def __init__(self, i=STA_IF):
        self.i = i

    def active(self, on=None):
        if on is None:
            return _state["active"][self.i]
        calls.append(("active", self.i, on))
        _state["active"][self.i] = bool(on)

    def connect(self, ssid, key=None):
        assert _state["active"][0], "connect() on an inactive interface"
        _str(ssid)
        if key is not None:
            _str(key)
        calls.append(("connect", ssid, key))
        _state["ssid"] = ssid
        script = os.getenv("FAKE_SCRIPT") or "ok"
        _state["script"] = SCRIPTS["wrong_password" if KEY is not None and key != KEY else script]
        _state["i"] = 0

    def disconnect(self):
        calls.append(("disconnect",))
        _state["script"] = None

    def status(self):
        s = _state["script"]
        if s is None:
            return STAT_IDLE
        st = s[min(_state["i"], len(s) - 1)]
        _state["i"] += 1
        return st

    def isconnected(self):
        return self.status() == STAT_GOT_IP

    def config(self, key=None, **kw):
        if kw:
            calls.append(("config", self.i, sorted(kw.items())))
            _state["cfg"].update(kw)
            return
        if key in ("ssid", "essid"):
            return _state["ssid"] if self.i == STA_IF else _state["cfg"].get("essid", "")
        return _state["cfg"].get(key)

    def ifconfig(self):
        return ("10.0.0.23", "255.255.255.0", "10.0.0.1", "10.0.0.1") if self.i == STA_IF else \
            ("192.168.4.1", "255.255.255.0", "192.168.4.1", "0.0.0.0")

    def scan(self):
        return [(b"Weak", b"\x01" * 6, 6, -80, 3, False), (b"Workshop", b"\x02" * 6, 1, -40, 3, False)]
