# umqtt.simple: a small MQTT 3.1.1 client (QoS 0 and 1), the micropython-lib API.
#
# Same calls as micropython-lib's umqtt.simple (tutorial code runs unchanged), plus:
# str topics/messages are sent as UTF-8 with their byte length; remaining lengths of any size in
# every packet; packet ids wrap at 65535; protocol errors raise MQTTException, not assert;
# check_msg() keeps the connect() timeout (TLS sockets too) and pings when half the keepalive has
# passed; a peer sending garbage gets MQTTException or OSError, never a hang beyond the timeout;
# server=None takes "mqtt": {"broker", "port"} from /workshop.json (wsconfig). A packet is staged in one
# preallocated buffer and sent with one write (its payload apart when it does not fit): small
# writes in a row stall ~40 ms each on Nagle + delayed ACK, which made every QoS 1 publish slow.
import socket
import time
from errno import EAGAIN, ECONNRESET, ETIMEDOUT
from micropython import const

_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)
_SUBACK = const(0x90)
_UNSUBSCRIBE = const(0xA2)
_UNSUBACK = const(0xB0)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)
_STAGE = const(128)
_WAIT = const(10)  # s: connect() and each ack wait, when connect() was given no timeout

class MQTTException(Exception):
    pass


def _b(s):
    return s.encode() if isinstance(s, str) else s


class MQTTClient:
    def __init__(self, client_id, server=None, port=0, user=None, password=None, keepalive=0,
                 ssl=None, ssl_params={}):
        if server is None:
            import wsconfig

            c = wsconfig.section(wsconfig.load(False), "mqtt")
            server = c.get("broker")
            port = port or c.get("port", 0)
            if not server:
                raise ValueError("no MQTT broker: pass server or set mqtt.broker in " + wsconfig.path())
        if port == 0:
            port = 8883 if ssl else 1883
        if not 0 <= keepalive < 65536:
            raise ValueError("keepalive")
        self.client_id = client_id
        self.sock = None
        self._raw = None  # the TCP socket under TLS: timeouts are set on it
        self.server = server
        self.port = port
        self.ssl = ssl
        self.ssl_params = ssl_params
        self.pid = 0
        self.cb = None
        self.user = user
        self.pswd = password
        self.keepalive = keepalive
        self.lw_topic = None
        self.lw_msg = None
        self.lw_qos = 0
        self.lw_retain = False
        self._buf = bytearray(7)  # received: type, length bytes, packet id + return code
        self._pkt = bytearray(_STAGE)  # sent: one packet staged for a single write
        self._n = 0
        self._timeout = None
        self._sent = 0
        self._dup = 0  # umqtt.robust: the packet id of a QoS 1 publish sent again (DUP)

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not topic or not 0 <= qos <= 1:
            raise ValueError("last will")
        self.lw_topic = _b(topic)
        self.lw_msg = _b(msg)
        self.lw_qos = qos
        self.lw_retain = retain

    # -- wire helpers: nothing allocated per byte or per packet
    def _start(self, op, sz):
        if sz > 268435455:
            raise ValueError("packet too large")
        b = self._pkt
        b[0] = op
        i = 1
        while sz > 0x7F:
            b[i] = (sz & 0x7F) | 0x80
            sz >>= 7
            i += 1
        b[i] = sz
        self._n = i + 1

    def _w(self, data):
        n = len(data)
        i = self._n
        if i + n > _STAGE:
            self._flush()
            if n > _STAGE // 2:
                self.sock.write(data)
                return
            i = 0
        self._pkt[i : i + n] = data
        self._n = i + n

    def _u8(self, v):
        if self._n == _STAGE:
            self._flush()
        self._pkt[self._n] = v
        self._n += 1

    def _u16(self, v):
        self._u8(v >> 8)
        self._u8(v & 0xFF)

    def _send_str(self, s):
        self._u16(len(s))
        self._w(s)

    def _flush(self):
        if self._n:
            self.sock.write(self._pkt, self._n)
            self._n = 0
            self._sent = time.ticks_ms()

    def _rx(self, n):
        # n (<= 7) bytes into self._buf; a short read means the peer closed.
        if self.sock.readinto(self._buf, n) != n:
            raise OSError(ECONNRESET)

    def _read(self, n):
        try:
            d = self.sock.read(n) if n else b""
        except MemoryError:  # a length no heap holds: garbage, or a message too big for the device
            self.sock.close()  # the stream is out of step: later calls get OSError (robust reconnects)
            raise MQTTException("too large")
        if d is None or len(d) != n:
            raise OSError(ECONNRESET)
        return d

    def _recv_len(self):
        n = 0
        sh = 0
        while 1:
            self._rx(1)
            b = self._buf[0]
            n |= (b & 0x7F) << sh
            if not b & 0x80:
                return n
            sh += 7
            if sh > 21:
                raise MQTTException("bad length")

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    # -- MQTT operations
    def connect(self, clean_session=True, timeout=None):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self._timeout = timeout
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        s = self._raw = socket.socket()
        try:
            s.settimeout(_WAIT if timeout is None else timeout)  # a silent broker is no hang
            s.connect(addr)
            if self.ssl is True:
                import ssl

                s = ssl.wrap_socket(s, **self.ssl_params)
            elif self.ssl:
                s = self.ssl.wrap_socket(s, server_hostname=self.server)
            self.sock = s
            cid = _b(self.client_id)
            user = _b(self.user)
            pswd = _b(self.pswd)
            sz = 10 + 2 + len(cid)
            flags = 2 if clean_session else 0
            if user:
                sz += 2 + len(user)
                flags |= 0x80
                if pswd is not None:
                    sz += 2 + len(pswd)
                    flags |= 0x40
            if self.lw_topic:
                sz += 2 + len(self.lw_topic) + 2 + len(self.lw_msg)
                flags |= 0x4 | self.lw_qos << 3 | (0x20 if self.lw_retain else 0)
            self._start(_CONNECT, sz)
            self._w(b"\0\x04MQTT\x04")
            self._u8(flags)
            self._u16(self.keepalive)
            self._send_str(cid)
            if self.lw_topic:
                self._send_str(self.lw_topic)
                self._send_str(self.lw_msg)
            if flags & 0x80:
                self._send_str(user)
            if flags & 0x40:
                self._send_str(pswd)
            self._flush()
            self._rx(4)
            b = self._buf
            if b[0] != _CONNACK or b[1] != 2:
                raise MQTTException("bad CONNACK")
            if b[3]:
                raise MQTTException(b[3])
            self._raw.settimeout(timeout)  # None: wait_msg() blocks, as tutorials expect
            return b[2] & 1
        except:
            s.close()
            self.sock = self._raw = None
            raise

    def disconnect(self):
        try:
            self._start(_DISCONNECT, 0)
            self._flush()
        finally:
            self.sock.close()
            self.sock = self._raw = None

    def ping(self):
        self._start(_PINGREQ, 0)
        self._flush()

    def publish(self, topic, msg, retain=False, qos=0):
        if not 0 <= qos <= 1:
            raise ValueError("qos")
        topic = _b(topic)
        msg = _b(msg)
        sz = 2 + len(topic) + len(msg)
        if qos:
            sz += 2
        pid = self._dup if qos else 0
        self._start(_PUBLISH | qos << 1 | (1 if retain else 0) | (8 if pid else 0), sz)
        self._send_str(topic)
        if qos:
            pid = pid or self._next_pid()
            self._u16(pid)
        self._w(msg)
        self._flush()
        if qos:
            self._wait_ack(_PUBACK, pid)

    def subscribe(self, topic, qos=0):
        if self.cb is None:
            raise MQTTException("set_callback() before subscribe()")
        if not 0 <= qos <= 1:
            raise ValueError("qos")
        topic = _b(topic)
        pid = self._next_pid()
        self._start(_SUBSCRIBE, 2 + 2 + len(topic) + 1)
        self._u16(pid)
        self._send_str(topic)
        self._u8(qos)
        self._flush()
        self._wait_ack(_SUBACK, pid)
        if self._buf[2] & 0x80:
            raise MQTTException(self._buf[2])
        return self._buf[2]

    def unsubscribe(self, topic):
        topic = _b(topic)
        pid = self._next_pid()
        self._start(_UNSUBSCRIBE, 2 + 2 + len(topic))
        self._u16(pid)
        self._send_str(topic)
        self._flush()
        self._wait_ack(_UNSUBACK, pid)

    def _wait_ack(self, op, pid):
        # Messages arriving meanwhile go to the callback. Not through wait_msg(): a subclass that
        # reconnects there (umqtt.robust) would wait forever for an ack of the lost connection.
        # Bounded by the connect() timeout, or _WAIT s without one: an unanswered ack is OSError.
        to = self._timeout
        if to is None:
            self._raw.settimeout(_WAIT)
        # (After a failed wait the stream may be mid-packet: reconnect, as umqtt.robust does.)
        t = time.ticks_ms()
        while 1:
            if time.ticks_diff(time.ticks_ms(), t) > (_WAIT if to is None else to) * 1000:
                raise OSError(ETIMEDOUT)
            self._rx(1)
            if self._packet() == op and (self._buf[0] << 8 | self._buf[1]) == pid:
                if to is None:
                    self._raw.settimeout(None)
                return

    def _ping_due(self):
        if self.keepalive and time.ticks_diff(time.ticks_ms(), self._sent) >= self.keepalive * 500:
            self.ping()

    # Wait for a single incoming MQTT message and process it: subscribed messages go to the
    # callback set with set_callback(), others are handled here. Returns the packet type.
    def wait_msg(self):
        self._ping_due()
        self._rx(1)
        return self._packet()

    # As wait_msg(), but returns None at once when nothing is pending.
    def check_msg(self):
        self._ping_due()
        s = self._raw
        s.setblocking(False)
        try:
            n = self.sock.readinto(self._buf, 1)
        except OSError as e:
            if e.errno != EAGAIN:
                raise
            n = None
        finally:
            s.settimeout(self._timeout)
        if n is None:
            return None
        if not n:
            raise OSError(ECONNRESET)
        return self._packet()

    def _packet(self):
        # self._buf[0] holds the packet type byte just read.
        op = self._buf[0]
        sz = self._recv_len()
        if op & 0xF0 != _PUBLISH:
            if sz > 7 or op < 0x20 or op >= 0xE0:  # reserved, or a client's packet type
                raise MQTTException("bad packet")
            if sz:
                self._rx(sz)  # PUBACK/UNSUBACK: pid; SUBACK: pid + code
            return None if op == _PINGRESP else op
        sz -= 2
        self._rx(2)
        n = self._buf[0] << 8 | self._buf[1]
        if op & 6:
            sz -= 2
        sz -= n
        if sz < 0 or op & 6 == 6:
            raise MQTTException("bad packet")
        topic = self._read(n)
        if op & 6:
            self._rx(2)
            pid = self._buf[0] << 8 | self._buf[1]
        msg = self._read(sz)
        if self.cb:
            self.cb(topic, msg)
        if op & 6 == 2:
            self._start(_PUBACK, 2)
            self._u16(pid)
            self._flush()
        elif op & 6:
            raise MQTTException("QoS 2 not supported")
        return op
