# announce: the board's status for the room view (./kit roster, the /room page).
#
#   import announce
#   announce.start()          # broker, interval, hostname from /workshop.json; workshop_boot does this
#   announce.status()         # the status as a dict (what is published)
#   announce.stop()
#
# MQTT: a retained JSON status on workshop/<hostname>/status (hostname, ip, mac, board,
# micropython, inputs, project, heap_free, rssi, uptime_s, interval_s, telnet, state "online"),
# republished every announce.interval_s (default 30) and at once when the IP changes; the
# retained last will says state "offline". mDNS: a _workshop._tcp service (TXT board, inputs,
# project; port = telnet's) beside <hostname>.local when mdns runs.
#
# It never blocks: a tick (4 times a second, in the background) does a few non-blocking steps
# of a small publish-only MQTT 3.1.1 client (connect, CONNACK, PUBLISH; no subscriptions), so the
# REPL and the attendee's code keep running while the broker is away. Reconnects back off
# 1, 2, 4 .. 60 s. Give mqtt.broker as an IP address: resolving a name is the one call that waits.
import socket
import sys
import time
from micropython import const
import wsconfig

_TICK_MS = const(250)  # a quick connect; when up, a tick is a poll(0) and two clock reads
_STEP_MS = const(5000)  # connect + CONNACK must finish within this, else back off
_MAX_BACKOFF = const(60)

_cfg = None  # (topic, client id, addr tuple, user, password, interval ms, keepalive s)
_info = None  # the dict published (fields that change are updated in place)
_sock = None
_poll = None
_state = 0  # 0 waiting to (re)connect, 1 TCP connecting, 2 waiting for CONNACK, 3 up
_t = 0  # ticks_ms of the current state's start / of the last publish when up
_due = 0  # ticks_ms of the next connect attempt
_chk = 0  # ticks_ms of the last IP check (once a second)
_backoff = 1
_timer = None
_ipfn = None
last_error = None  # why the last connection failed (for a person at the REPL)
_T0 = time.time()  # unix: the process is the board, its start the boot


def _ident():
    try:
        import _workshop_build as b
        return b.board, b.inputs, b.project
    except ImportError:
        return None, None, None


_w = None  # the station interface (None: no radio, the unix port)


def _wlan():
    try:
        import network
        return network.WLAN(network.STA_IF)
    except Exception:
        return None


def _ip():
    if _ipfn:
        return _ipfn()
    try:
        return _w.ifconfig()[0]
    except Exception:
        return None


def _rssi():
    try:
        return _w.status("rssi")
    except Exception:
        return None  # no radio (unix) or not connected


def _mac():
    try:
        import binascii
        return binascii.hexlify(_w.config("mac"), ":").decode()
    except Exception:
        return None


def status():
    import gc
    _info["heap_free"] = gc.mem_free()
    _info["rssi"] = _rssi()
    _info["uptime_s"] = time.ticks_ms() // 1000 if sys.platform != "linux" else int(time.time() - _T0)
    return _info


def _str(out, b):
    out.append(len(b) >> 8)
    out.append(len(b) & 0xFF)
    out.extend(b)


def _packet(kind, body):
    # Fixed header + remaining length (MQTT's 7-bit varint) + body, as one bytes object.
    h = bytearray((kind,))
    n = len(body)
    while True:
        b = n & 0x7F
        n >>= 7
        h.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(h + body)


def _connect_packet():
    topic, cid, _, user, pw, _, keep = _cfg
    flags = 0x02 | 0x04 | 0x20  # clean session, will, will retained (QoS 0)
    if user:
        flags |= 0x80
        if pw:
            flags |= 0x40
    body = bytearray(b"\x00\x04MQTT\x04")
    body.append(flags)
    body.append(keep >> 8)
    body.append(keep & 0xFF)
    _str(body, cid)
    _str(body, topic)
    _str(body, _offline())
    if user:
        _str(body, user)
        if pw:
            _str(body, pw)
    return _packet(0x10, body)


def _offline():
    import json
    return json.dumps({"hostname": _info["hostname"], "ip": _info["ip"], "board": _info["board"],
                       "inputs": _info["inputs"], "interval_s": _info["interval_s"],
                       "state": "offline"}).encode()


def _publish():
    import json
    body = bytearray()
    _str(body, _cfg[0])
    body.extend(json.dumps(status()).encode())
    _send(_packet(0x31, body))  # PUBLISH, QoS 0, retained


def _send(b):
    # Status packets are small: the socket's send buffer takes them whole, or we start over.
    n = _sock.write(b)
    if n != len(b):
        raise OSError(11)


def _close(why=None):
    global _sock, _state, _due, _backoff, last_error
    if _sock:
        try:
            _sock.close()
        except OSError:
            pass
        _sock = None
    if why is not None:
        last_error = why
        _due = time.ticks_add(time.ticks_ms(), _backoff * 1000)
        _backoff = min(_backoff * 2, _MAX_BACKOFF)
    _state = 0


def _events():
    # ipoll: the result tuple is reused, so an idle tick allocates nothing (poll() builds a list).
    for ev in _poll.ipoll(0):
        return ev[1]
    return 0


def _tick(_):
    # Up to three non-blocking steps while each completes at once (connect, CONNECT, CONNACK on
    # a LAN): a board is on the roster within a tick of its network coming up.
    for _ in range(3):
        s = _state
        _step()
        if _state == s or _state == 0:
            return


def _step():
    global _sock, _poll, _state, _t, _backoff, _chk
    try:
        now = time.ticks_ms()
        if _state == 0:
            # Waiting out a backoff (at most _MAX_BACKOFF s ahead). A _due further off is stale (an
            # IP change closes without one: set at start, 2**29 ms back it reads as the future).
            if 0 < time.ticks_diff(_due, now) <= _MAX_BACKOFF * 1000:
                return
            import select
            _sock = socket.socket()
            _sock.setblocking(False)
            try:
                _sock.connect(_cfg[2])
            except OSError as e:
                if e.args[0] not in (115, 119):  # EINPROGRESS (lwIP, Linux)
                    raise
            _poll = select.poll()
            _poll.register(_sock, select.POLLOUT)
            _state = 1
            _t = now
        elif _state == 1:
            ev = _events()
            if ev & 0x18:  # POLLERR | POLLHUP: refused
                raise OSError("connection refused")
            if ev & 4:  # POLLOUT: connected
                _send(_connect_packet())
                _poll.modify(_sock, 1)  # POLLIN
                _state = 2
            elif time.ticks_diff(now, _t) > _STEP_MS:
                raise OSError("connect timed out")
        elif _state == 2:
            if _events() & 0x19:  # POLLIN | POLLERR | POLLHUP
                a = _sock.read(4)
                if not a:
                    raise OSError("broker closed the connection")
                if len(a) < 4 or a[0] != 0x20:
                    raise OSError("not an MQTT broker")
                if a[3]:
                    raise OSError("broker refused: " + ("bad user or password" if a[3] in (4, 5) else "code %d" % a[3]))
                _state = 3
                _backoff = 1
                _publish()
                _t = now
            elif time.ticks_diff(now, _t) > _STEP_MS:
                raise OSError("no CONNACK")
        else:
            ev = _events()
            if ev & 0x18:
                raise OSError("connection lost")
            # Nothing is expected from the broker (no subscriptions, QoS 0): b"" is its EOF.
            if ev & 1 and _sock.read(64) == b"":
                raise OSError("broker closed the connection")
            if not 0 <= time.ticks_diff(now, _chk) < 1000:  # (a _chk from 2**29 ms back reads as ahead)
                _chk = now
                ip = _ip()
                # 0.0.0.0 (or none): the link is down, not a new address; the room keeps the last
                # one (the will carries it) until the board has an address again.
                if ip and ip[0] != "0" and ip != _info["ip"]:
                    _info["ip"] = ip
                    _publish()  # the new address at once,
                    _close()  # then reconnect: the will must carry it too
                    return
            if time.ticks_diff(now, _t) >= _cfg[5]:
                _publish()
                _t = now
    except Exception as e:
        _close(str(e) or repr(e))


def start(cfg=None, ip=None, telnet_port=None):
    # cfg: the loaded /workshop.json (workshop_boot passes it); ip: a function returning the IP
    # (default: the station interface's).
    global _cfg, _info, _timer, _due, _backoff, _ipfn, _state, _w
    stop()
    _w = _wlan()
    if cfg is None:
        cfg = wsconfig.load()
    broker, port = wsconfig.broker(cfg)
    port = port or 1883
    m = cfg["mqtt"]
    host = cfg.get("hostname")
    if not host:
        raise ValueError("announce: no hostname in the config")
    a = wsconfig.section(cfg, "announce")
    interval = int(a.get("interval_s") or 30)
    if interval < 1:
        raise ValueError("announce: interval_s must be >= 1")
    _ipfn = ip
    try:
        addr = socket.getaddrinfo(broker, port)[0][-1]
    except OSError as e:  # a name no DNS knows: ESP32 says "-202", unix "[addrinfo error -2]"
        raise OSError("announce: cannot resolve mqtt.broker %r (%s): give its IP address" % (broker, e))
    topic = ("workshop/%s/status" % host).encode()
    user = m.get("user")
    pw = m.get("password")
    mac = _mac()
    # The client id is the broker's key for a connection: two boards given one hostname must not
    # take turns throwing each other off, so it carries the MAC (unix, without one: 3 random bytes;
    # two processes started together read the same ticks_us).
    if mac:
        tail = mac.replace(":", "")[-6:]
    else:
        import os
        tail = "%02x%02x%02x" % tuple(os.urandom(3))
    cid = "ws-%s-%s" % (host, tail)
    _cfg = (topic, cid.encode(), addr, user.encode() if user else None,
            pw.encode() if pw else None, interval * 1000, min(interval * 2, 0xFFFF))
    board, inputs, project = _ident()
    _info = {"hostname": host, "ip": _ip(), "mac": mac, "board": board,
             "micropython": "%d.%d.%d" % sys.implementation.version[:3], "inputs": inputs,
             "project": project, "heap_free": 0, "rssi": None, "uptime_s": 0,
             "interval_s": interval, "telnet": telnet_port, "state": "online"}
    _state = 0
    _due = time.ticks_ms()
    _backoff = 1
    mdns = sys.modules.get("mdns")  # only when mdns runs: importing it here would cost its heap
    if mdns and mdns._sock:
        mdns.add_service("_workshop._tcp", telnet_port or 0,
                         {"board": board or "", "inputs": inputs or "", "project": project or ""})
    _tick(None)
    _timer = wsconfig.every(_TICK_MS, _tick)
    print("announce: %s via %s:%d every %d s" % (topic.decode(), broker, port, interval))


def stop():
    # Leave cleanly: publish "offline" ourselves (a DISCONNECT suppresses the will).
    global _timer
    if _timer is not None:
        wsconfig.cancel(_timer)
        _timer = None
    if _sock and _state == 3:
        try:
            body = bytearray()
            _str(body, _cfg[0])
            body.extend(_offline())
            _send(_packet(0x31, body))
            _send(b"\xe0\x00")
        except OSError:
            pass
    _close()
