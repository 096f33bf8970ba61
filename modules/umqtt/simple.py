# umqtt.simple: a small MQTT 3.1.1 client (QoS 0 and 1), the micropython-lib API.
#
# Same calls as micropython-lib's umqtt.simple (tutorial code runs unchanged), plus: str topics and
# messages are sent as UTF-8 with their byte length; remaining lengths of any size; packet ids wrap
# at 65535; protocol errors raise MQTTException, not assert; a peer sending garbage gets
# MQTTException or OSError, never a hang beyond the timeout (a wait cut mid-packet closes the
# socket: the rest is never parsed as a packet); connect() and each ack wait end
# after the connect() timeout, 10 s without one (wait_msg() then blocks, as tutorials expect);
# check_msg() keeps that timeout (TLS sockets too) and pings when half the keepalive has passed;
# server=None takes "mqtt": {"broker", "port"} from /workshop.json. Each packet leaves in one
# write (its payload apart when large), with TCP_NODELAY: small writes in a row stall ~40 ms on
# Nagle + delayed ACK (every QoS 1 publish, a reply from the callback). A QoS 1 publish (or
# subscribe) made in the callback while another waits for its ack leaves that ack to it.
import errno
import socket
import time

# (errno by module, and the 10 s default wait as a literal: every module global is heap. As
# .mpy every distinct name is a qstr on the heap: arguments and attributes reuse the runtime's
# built-in names where one fits (code, args, buf, timeout).)


class MQTTException(Exception):
    pass


class MQTTClient:
    def __init__(self, client_id, server=None, port=0, user=None, password=None, keepalive=0,
                 ssl=None, ssl_params={}):
        if server is None:
            import wsconfig

            server, port = wsconfig.broker(None, port)
        if not 0 <= keepalive < 65536:
            raise ValueError("keepalive")
        self.client_id = client_id
        self.sock = None
        self._raw = None  # the TCP socket under TLS: timeouts are set on it
        self.server = server
        self.port = port or (8883 if ssl else 1883)
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
        # received: type, length bytes, packet id + return code; buf[7] is 1 when check_msg()
        # read the first byte of a packet into buf[0]; buf[8:12] an ack kept for a waiting call
        self.buf = bytearray(12)
        self.timeout = None  # connect()'s
        self._sent = 0

    def set_callback(self, f):
        self.cb = f

    def set_last_will(self, topic, msg, retain=False, qos=0):
        if not topic or not 0 <= qos <= 2:  # the broker delivers the will: any QoS
            raise ValueError("last will")
        self.lw_topic = topic
        self.lw_msg = msg
        self.lw_qos = qos
        self.lw_retain = retain

    def _send(self, code, args, msg, pid):
        # One packet (code: its first byte) in one write: args are 2-byte numbers (int) or
        # strings sent with their 2-byte length, msg goes last as it is (str is UTF-8); a large
        # msg is written apart. A QoS 1 PUBLISH, SUBSCRIBE and UNSUBSCRIBE (code & 6 == 2) wait
        # for their ack (PUBACK, SUBACK, UNSUBACK: (code & 0xF6) + 14) carrying pid: messages
        # arriving meanwhile go to the callback. Not through wait_msg(): a subclass that
        # reconnects there (umqtt.robust) would wait forever for an ack of the lost connection.
        # Bounded by the connect() timeout, 10 s without one; after a failed wait the stream may
        # be mid-packet: reconnect.
        # One allocation: the packet, sized first (a str part is encoded twice rather than kept).
        if isinstance(msg, str):
            msg = msg.encode()
        n = m = len(msg)
        for p in args:
            n += 2 if isinstance(p, int) else 2 + len(p.encode() if isinstance(p, str) else p)
        if n > 268435455:
            raise ValueError("too large")  # the same words as a received one
        big = m > 512
        b = bytearray(n + 5 - (m if big else 0))
        b[0] = code
        i = 1
        while 1:  # the remaining length, 7 bits a byte, least significant first
            b[i] = n & 127 | (n > 127) << 7
            i += 1
            n >>= 7
            if not n:
                break
        for p in args:
            if isinstance(p, str):
                p = p.encode()
            n = isinstance(p, int)
            k = p if n else len(p)
            b[i] = k >> 8
            b[i + 1] = k & 255
            i += 2
            if not n:
                b[i : i + k] = p
                i += k
        if not big:
            b[i : i + m] = msg
            i += m
        self.sock.write(b, 0, i)
        if big:
            self.sock.write(msg)
        t = self._sent = time.ticks_ms()
        if code & 6 != 2:
            return
        to = self.timeout
        w = to or 10  # (0 is no timeout: connect() cannot have succeeded on it)
        code = (code & 0xF6) + 14  # now the ack's type
        b = self.buf
        # A call made in the callback (an echo's QoS 1 publish) may have read this ack first: it
        # kept it in buf[8:12] (type, pid, SUBACK code) rather than drop it.
        while b[8] != code or b[9] << 8 | b[10] != pid:
            n = w - time.ticks_diff(time.ticks_ms(), t) / 1000  # s left: the wait is w in all
            if n <= 0:
                raise OSError(errno.ETIMEDOUT)
            self._raw.settimeout(n)  # (each time: a call in the callback ends with its caller's)
            n = MQTTClient.wait_msg(self)
            if n == code and self._rx(0) == pid:
                break
            if n and n >> 4 != 3:  # an ack (not a PUBLISH) of a call this one runs inside
                b[8] = n
                b[9:12] = b[:3]
        else:  # it was kept
            b[8] = 0
            b[2] = b[11]
        self._raw.settimeout(to)  # None: wait_msg() blocks, as tutorials expect

    def _rx(self, n):
        # n (<= 7) bytes into self.buf, returning the first two as a number (a packet id or a
        # length); a short read means the peer closed. _rx(0) reads nothing.
        if n and self.sock.readinto(self.buf, n) != n:
            raise OSError(errno.ECONNRESET)
        return self.buf[0] << 8 | self.buf[1]

    def connect(self, clean_session=True, timeout=None):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.timeout = timeout
        addr = socket.getaddrinfo(self.server, self.port)[0][-1]
        s = self._raw = self.sock = socket.socket()
        try:
            # TCP_NODELAY: an ack and the callback's reply (or the next publish) leave at once,
            # not ~40 ms apart on Nagle + delayed ACK. Before connect(): the pcb is surely there.
            # Raw lwIP (ESP8266) takes the option alone, TF_NODELAY 0x40, and is told by its
            # IP_ADD_MEMBERSHIP 0x400; ESP32 and unix take 6, 1 (the unix port names neither,
            # and a name of our own would be a qstr on the heap).
            s.setsockopt(6, 64 if socket.IP_ADD_MEMBERSHIP > 255 else 1, 1)
            s.settimeout(10 if timeout is None else timeout)  # a silent broker is no hang
            s.connect(addr)
            if self.ssl is True:
                import ssl

                self.sock = ssl.wrap_socket(s, **self.ssl_params)
            elif self.ssl:
                self.sock = self.ssl.wrap_socket(s, server_hostname=self.server)
            f = clean_session << 1  # (as micropython-lib's: True or False)
            p = ["MQTT", 0, self.keepalive, self.client_id]  # "MQTT", level 4 + flags
            if self.lw_topic:
                f |= 4 | self.lw_qos << 3 | (32 if self.lw_retain else 0)
                p += (self.lw_topic, self.lw_msg)
            if self.user:
                f |= 128
                p.append(self.user)
                if self.pswd is not None:
                    f |= 64
                    p.append(self.pswd)
            p[1] = 1024 | f
            self._send(0x10, p, b"", 0)
            b = self.buf
            b[8] = 0  # no ack kept from another connection
            self._rx(4)
            if b[0] != 0x20 or b[1] != 2:
                raise MQTTException("bad packet")
            if b[3]:
                raise MQTTException(b[3])
            s.settimeout(timeout)  # None: wait_msg() blocks, as tutorials expect
            return b[2] & 1
        except:
            # Kept, closed (TLS: with the socket under it): a later call raises OSError, as
            # micropython-lib's does, so `except OSError` (and umqtt.robust) reconnects.
            self.sock.close()
            raise

    def disconnect(self):
        try:
            self._send(0xE0, (), b"", 0)
        finally:
            self.sock.close()  # kept, closed: a later call raises OSError (robust reconnects)

    def ping(self):
        self._send(0xC0, (), b"", 0)

    def publish(self, topic, msg, retain=False, qos=0):
        if not 0 <= qos <= 1:
            raise ValueError("qos")
        pid = 0
        if qos:
            self.pid = pid = self.pid % 65535 + 1
        self._send(0x30 | qos << 1 | (1 if retain else 0), (topic, pid) if qos else (topic,), msg, pid)

    def subscribe(self, topic, qos=0):
        if self.cb is None:
            raise MQTTException("set_callback() before subscribe")
        if not 0 <= qos <= 1:
            raise ValueError("qos")
        self.pid = pid = self.pid % 65535 + 1
        self._send(0x82, (pid, topic), bytes((qos,)), pid)
        if self.buf[2] & 0x80:
            raise MQTTException(self.buf[2])
        return self.buf[2]

    def unsubscribe(self, topic):
        self.pid = pid = self.pid % 65535 + 1
        self._send(0xA2, (pid, topic), b"", pid)

    # Wait for a single incoming MQTT message and process it: subscribed messages go to the
    # callback set with set_callback(), others are handled here. Returns the packet type.
    def wait_msg(self):
        if self.buf[7]:  # check_msg() read the first byte, and pinged when due
            self.buf[7] = 0
        else:
            if self.keepalive and time.ticks_diff(time.ticks_ms(), self._sent) >= self.keepalive * 500:
                self.ping()
            self._rx(1)
        op = self.buf[0]  # the packet type; then the remaining length
        try:
            sz = sh = 0
            while 1:
                n = self._rx(1) >> 8  # (buf[0])
                sz |= (n & 0x7F) << sh
                if not n & 0x80:
                    break
                sh += 7
                if sh > 21:
                    raise MQTTException("bad packet")
            if op & 0xF0 != 0x30:
                if sz > 7 or op < 0x20 or op >= 0xE0:  # reserved, or a client's packet type
                    raise MQTTException("bad packet")
                if sz:
                    self._rx(sz)  # PUBACK/UNSUBACK: pid; SUBACK: pid + code
                return None if op == 0xD0 else op
            n = self._rx(2)
            sz -= n + (4 if op & 6 else 2)
            if sz < 0 or op & 6 == 6:
                raise MQTTException("bad packet")
            topic = self.sock.read(n) if n else b""
            if op & 6:
                pid = self._rx(2)
            msg = self.sock.read(sz) if sz else b""
        except MemoryError:  # a length no heap holds: garbage, or a message too big for the device
            self.sock.close()  # the stream is out of step: later calls get OSError (robust reconnects)
            raise MQTTException("too large")
        except OSError:  # cut mid-packet (a timeout too): out of step as well, never read on
            self.sock.close()
            raise
        if len(topic or b"") != n or len(msg or b"") != sz:
            raise OSError(errno.ECONNRESET)
        if self.cb:
            self.cb(topic, msg)
        if op & 6 == 2:
            self._send(0x40, (pid,), b"", 0)
        elif op & 6:  # read whole, so the stream stays in step; QoS 2's handshake is not ours
            raise MQTTException("got QoS 2")
        return op

    # As wait_msg(), but returns None at once when nothing is pending.
    def check_msg(self):
        if self.keepalive and time.ticks_diff(time.ticks_ms(), self._sent) >= self.keepalive * 500:
            self.ping()
        s = self._raw
        s.setblocking(False)
        try:
            n = self.sock.readinto(self.buf, 1)
        except OSError as e:
            if e.errno != errno.EAGAIN:
                raise
            n = None
        finally:
            s.settimeout(self.timeout)
        if n is None:
            return None
        if not n:
            raise OSError(errno.ECONNRESET)
        self.buf[7] = 1
        return MQTTClient.wait_msg(self)  # this class's: a subclass's would reconnect mid-packet
