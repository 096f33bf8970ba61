# umqtt.robust: umqtt.simple that reconnects on network errors, the micropython-lib API.
#
# Beyond micropython-lib's: the delay between attempts doubles from DELAY up to MAX_DELAY
# seconds; subscriptions are made again when the broker lost the session (a restarted broker);
# an operation cut by a reconnect is retried whole: a QoS 1 publish is sent again with its packet
# id and the DUP flag until the broker acknowledges it (none lost across a broker restart), rather
# than waiting forever for an ack of the old connection; an idle wait_msg() that times out pings
# instead of reconnecting (one timed out mid-packet, simple closed the socket: the ping fails, and
# it reconnects).
# (Heap: every operation is retried in one _send override, not a method each, and the base is
# called by name, not super(): each class attribute and each closure is heap in every image.)
import time
from . import simple


class MQTTClient(simple.MQTTClient):
    DELAY = 2
    MAX_DELAY = 30
    DEBUG = False

    def delay(self, n):  # the n-th attempt in a row
        time.sleep(min(self.DELAY * (1 << min(n - 1, 10)), self.MAX_DELAY))

    def log(self, in_reconnect, e):
        if self.DEBUG:
            print("mqtt%s: %r" % (" reconnect" * in_reconnect, e))  # (True: 1 copy, False: none)

    def reconnect(self):
        i = 0
        while 1:
            try:
                present = simple.MQTTClient.connect(self, False, self.timeout)
                if not present:  # the broker lost the session: subscribe again (topic -> qos)
                    s = getattr(self, "subs", {})
                    for t in s:
                        self.pid = p = self.pid % 65535 + 1
                        simple.MQTTClient._send(self, 0x82, (p, t), bytes((s[t],)), p)
                return present
            except OSError as e:
                self.log(True, e)
                i += 1
                self.delay(i)

    def _send(self, code, args, msg, pid):
        # Each operation (publish, subscribe, unsubscribe) passes here: cut by a network error, it
        # is made again whole on a new connection, a QoS 1 PUBLISH with the same packet id and
        # DUP (sent, perhaps delivered, not acknowledged). CONNECT (reconnect retries it),
        # DISCONNECT, PINGREQ and PUBACK fail to their caller, which reconnects where it should.
        while 1:
            try:
                simple.MQTTClient._send(self, code, args, msg, pid)
                break
            except OSError as e:
                if code & 6 != 2 and code & 0xF0 != 0x30:  # no ack waited for, no PUBLISH
                    raise
                self.log(False, e)
            self.reconnect()
            if code & 0xF6 == 0x32:
                code |= 8
        if code == 0x82 and not self.buf[2] & 0x80 or code == 0xA2:  # granted, or unsubscribed
            t = args[1]
            t = t.encode() if isinstance(t, str) else t
            if not hasattr(self, "subs"):
                self.subs = {}
            if code == 0x82:
                self.subs[t] = msg[0]
            else:
                self.subs.pop(t, None)

    def wait_msg(self):
        # With connect(timeout=...) an idle wait ends in ETIMEDOUT, which alone is no failure:
        # ping once; a second timeout with the ping unanswered means the connection is gone.
        pinged = False
        while 1:
            try:
                return simple.MQTTClient.wait_msg(self)
            except OSError as e:
                if e.errno == simple.errno.ETIMEDOUT and not pinged:  # no errno global of our own
                    try:
                        self.ping()
                        pinged = True
                        continue
                    except OSError as e2:
                        e = e2
                self.log(False, e)
            self.reconnect()
            pinged = False

    def check_msg(self, attempts=2):
        while attempts:
            try:
                return simple.MQTTClient.check_msg(self)
            except OSError as e:
                self.log(False, e)
            self.reconnect()
            attempts -= 1
