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
# ESP32 keeps retrying after a failed attempt and reports the last reason while it does, so a
# wrong password it names (AUTH_FAIL) fails at once and other reasons (no AP, ...) are reported
# when the time is up. A wrong WPA2 key is a 4-way handshake timeout, which ESP32's status()
# reports as CONNECTING while it retries (ports/esp32/network_wlan.c): that ends at the timeout,
# and the message says what it may be.
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
    sta = _sta()
    if hostname:
        network.hostname(hostname)  # before the interface comes up: DHCP and mDNS use it
    if not sta.active():
        sta.active(True)
    st = sta.status()
    same = sta.config("ssid") == ssid
    if st == network.STAT_GOT_IP and same:
        return sta.ifconfig()[0]
    if st != network.STAT_CONNECTING or not same:
        if st == network.STAT_GOT_IP or st == network.STAT_CONNECTING:
            sta.disconnect()
        if password:
            sta.connect(ssid, password)
        else:
            sta.connect(ssid)
    t0 = time.ticks_ms()
    last = None
    while True:
        st = sta.status()
        if st == network.STAT_GOT_IP:
            return sta.ifconfig()[0]
        if st != network.STAT_CONNECTING and st != network.STAT_IDLE:
            last = _name(st)
            if st == network.STAT_WRONG_PASSWORD:
                break
        if time.ticks_diff(time.ticks_ms(), t0) >= timeout_ms:
            break
        time.sleep_ms(100)
    sta.disconnect()
    why = _WHY.get(last) or ("no access point with that name" if last and "NO_AP" in last else last)
    if not why:
        why = "timeout after %d ms" % timeout_ms
        if hasattr(network, "STAT_HANDSHAKE_TIMEOUT"):  # ESP32: a wrong WPA2 password looks like this
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
