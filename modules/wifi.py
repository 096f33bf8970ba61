# wifi: station and access-point mode with errors that name the reason.
#
#   import wifi
#   wifi.connect()                        # ssid/password/hostname from /workshop.json
#   wifi.connect("Workshop", "secret", timeout_ms=15000, hostname="ws-3fa2")  # -> "10.0.0.23"
#   wifi.status()  -> "GOT_IP", "CONNECTING", "WRONG_PASSWORD", ...  (network.STAT_* names)
#   wifi.ap("ws-3fa2", "password"); wifi.scan(); wifi.ifconfig()
#
# Status codes differ per port (ESP32: STAT_GOT_IP=1010 and ESP-IDF reason codes; ESP8266:
# STAT_GOT_IP=5), so everything here compares against the network.STAT_* constants.
# ESP32 keeps retrying after a failed attempt and reports the last reason while it does, so its
# reasons (no AP, ...) are reported when the time is up, and a wrong password (AUTH_FAIL) once it
# has stood for 5 s (a busy AP gives one on the way to a connection). A wrong WPA2 key is a 4-way
# handshake timeout, which ESP32's status() reports as CONNECTING while it retries
# (ports/esp32/network_wlan.c): that ends at the timeout, and the message says what it may be.
# ESP8266 reports the live state: its WRONG_PASSWORD fails at once.
import time
import wsconfig

try:
    import network
except ImportError:  # unix port: no radio
    network = None

_NAMES = ("GOT_IP", "CONNECTING", "IDLE", "WRONG_PASSWORD", "NO_AP_FOUND", "CONNECT_FAIL",
          "BEACON_TIMEOUT", "ASSOC_FAIL", "HANDSHAKE_TIMEOUT", "NO_AP_FOUND_IN_RSSI_THRESHOLD",
          "NO_AP_FOUND_IN_AUTHMODE_THRESHOLD", "NO_AP_FOUND_W_COMPATIBLE_SECURITY")
_WHY = {"WRONG_PASSWORD": "wrong password", "NO_AP_FOUND": "no access point with that name",
        "CONNECT_FAIL": "connection failed", "ASSOC_FAIL": "association failed",
        "BEACON_TIMEOUT": "access point stopped answering", "HANDSHAKE_TIMEOUT": "handshake timeout"}


class WifiError(OSError):
    pass


def _sta():
    if network is None:
        raise WifiError("wifi: this port has no network module")
    return network.WLAN(network.STA_IF)


def _name(st):
    for n in _NAMES:
        if getattr(network, "STAT_" + n, None) == st:
            return n
    return "STATUS_%d" % st


def status():
    return _name(_sta().status())


def ifconfig():
    return _sta().ifconfig()


def isconnected():
    return _sta().isconnected()


def disconnect():
    _sta().disconnect()


def _ssid(b):
    # SSIDs are bytes, not always UTF-8: one odd network nearby must not break scan().
    try:
        return b.decode()
    except UnicodeError:
        return repr(b)[2:-1]


def scan():
    # [(ssid, rssi, channel, authmode)], strongest first.
    r = [(_ssid(s[0]), s[3], s[2], s[4]) for s in _sta().scan()]
    r.sort(key=lambda s: -s[1])
    return r


def connect(ssid=None, password=None, timeout_ms=15000, hostname=None):
    if ssid is None or hostname is None:
        cfg = wsconfig.load(ssid is None)
        if ssid is None:
            w = wsconfig.section(cfg, "wifi")
            ssid = w.get("ssid")
            if password is None:
                password = w.get("password")
        hostname = hostname or cfg.get("hostname")
    if not ssid:
        raise WifiError("wifi: no ssid (wifi.connect(ssid, password) or \"wifi\" in /workshop.json)")
    # A hand-edited /workshop.json ("password": 12345678, "timeout_ms": "15000") is named here,
    # before anything starts: the driver's own TypeError names no key, and a bad timeout raised
    # inside the wait, leaving the station connecting. No value shown: a password never is.
    for k, v, kind in (("ssid", ssid, (str, bytes)), ("password", password or "", (str, bytes)),
                       ("hostname", hostname or "", str), ("timeout_ms", timeout_ms, (int, float))):
        if not isinstance(v, kind):
            raise WifiError("wifi: %s must be %s, got %s" % (
                k, "a number of milliseconds" if k == "timeout_ms" else "a string", type(v).__name__))
    sta = _sta()
    if hostname:
        try:
            network.hostname(hostname)  # before the interface comes up: DHCP and mDNS use it
        except ValueError:  # MicroPython's limit (MICROPY_PY_NETWORK_HOSTNAME_MAX_LEN), no message
            raise WifiError("wifi: hostname %r is too long for network.hostname() (at most 32 characters)"
                            % hostname)
    if not sta.active():
        sta.active(True)
    st = sta.status()
    same = sta.config("ssid") == ssid
    if st == network.STAT_GOT_IP and same:
        return sta.ifconfig()[0]
    # An attempt already under way to this network is joined (ESP8266 auto-connects at power-on
    # with the credentials it stored; ESP32 retries after its AP dropped out), but it may carry
    # another password: the first failure it reports starts ours instead (below).
    joined = st == network.STAT_CONNECTING and same
    if not joined:
        if st == network.STAT_GOT_IP or st == network.STAT_CONNECTING:
            sta.disconnect()
        if password:
            sta.connect(ssid, password)
        else:
            sta.connect(ssid)
    # ESP32 reports the reason of its last failed try while it retries: an AUTH_FAIL there is also
    # a busy or slow AP (MicroPython PR #4842: 202, then 201, then connected), and it outlives the
    # next connect() until a new event. So there, a wrong password ends the wait only once it has
    # stood for 5 s; ESP8266 reports the live state, and its WRONG_PASSWORD ends it at once.
    hold = 5000 if hasattr(network, "STAT_HANDSHAKE_TIMEOUT") else 0  # ms (a literal: no global)
    t0 = time.ticks_ms()
    last = None
    wp = None  # ticks_ms since when the status has been WRONG_PASSWORD
    try:
        while True:
            st = sta.status()
            if st == network.STAT_GOT_IP:
                return sta.ifconfig()[0]
            now = time.ticks_ms()
            if st != network.STAT_CONNECTING and st != network.STAT_IDLE:
                if joined:  # the attempt we joined failed: ours now, with our password
                    joined = False
                    sta.disconnect()
                    if password:
                        sta.connect(ssid, password)
                    else:
                        sta.connect(ssid)
                    continue
                last = _name(st)
                if st == network.STAT_WRONG_PASSWORD:
                    if wp is None:
                        wp = now
                    if time.ticks_diff(now, wp) >= hold:
                        break
                else:
                    wp = None
            else:
                wp = None
            if time.ticks_diff(now, t0) >= timeout_ms:
                break
            time.sleep_ms(100)
    finally:
        if st != network.STAT_GOT_IP:
            # failed, timed out or interrupted (Ctrl-C, an exception): no driver left retrying
            # in the background, unseen
            sta.disconnect()
    why = _WHY.get(last) or ("no access point with that name" if last and "NO_AP" in last else last)
    if not why:
        why = "timeout after %d ms" % timeout_ms
        if hold:  # ESP32: a wrong WPA2 password looks like this
            why += " (still connecting: a wrong password, or a weak signal)"
    raise WifiError("wifi: cannot connect to %r: %s" % (ssid, why))


def ap(ssid, password=None):
    # Access-point mode; WPA2 needs a password of 8+ characters, None makes an open network.
    if password is not None and len(password) < 8:
        raise ValueError("wifi: an access-point password needs 8 characters or more")
    a = network.WLAN(network.AP_IF)
    a.active(True)
    if password:
        a.config(essid=ssid, password=password, authmode=network.AUTH_WPA2_PSK)
    else:
        a.config(essid=ssid, authmode=network.AUTH_OPEN)
    return a.ifconfig()[0]
