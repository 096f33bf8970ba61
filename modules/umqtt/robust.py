# umqtt.robust: umqtt.simple that reconnects on network errors, the micropython-lib API.
#
# Beyond micropython-lib's: the delay between attempts doubles from DELAY up to MAX_DELAY
# seconds; subscriptions are made again when the broker lost the session (a restarted broker);
# an operation cut by a reconnect is retried whole: a QoS 1 publish is sent again with its packet
# id and the DUP flag until the broker acknowledges it (none lost across a broker restart), rather
# than waiting forever for an ack of the old connection; an idle wait_msg() that times out pings
# instead of reconnecting.
import time
from . import simple


class MQTTClient(simple.MQTTClient):
    DELAY = 2
    MAX_DELAY = 30
    DEBUG = False

    def delay(self, i):
        time.sleep(min(self.DELAY * (1 << min(i - 1, 10)), self.MAX_DELAY))

    def log(self, in_reconnect, e):
        if self.DEBUG:
            print("mqtt reconnect: %r" % e if in_reconnect else "mqtt: %r" % e)

    def reconnect(self):
        i = 0
        while 1:
            try:
                present = super().connect(False, self._timeout)
                if not present:
                    s = getattr(self, "subs", {})  # topic (bytes) -> qos, made again without session
                    for t in s:
                        super().subscribe(t, s[t])
                return present
            except OSError as e:
                self.log(True, e)
                i += 1
                self.delay(i)

    def publish(self, topic, msg, retain=False, qos=0):
        try:
            while 1:
                try:
                    return super().publish(topic, msg, retain, qos)
                except OSError as e:
                    self.log(False, e)
                if qos and not self._dup:
                    self._dup = self.pid  # sent (perhaps delivered), not acknowledged
                self.reconnect()
        finally:
            self._dup = 0

    def subscribe(self, topic, qos=0):
        while 1:  # an operation cut by a reconnect is made again whole
            try:
                r = super().subscribe(topic, qos)
                break
            except OSError as e:
                self.log(False, e)
            self.reconnect()
        if not hasattr(self, "subs"):
            self.subs = {}
        self.subs[topic.encode() if isinstance(topic, str) else topic] = qos
        return r

    def unsubscribe(self, topic):
        getattr(self, "subs", {}).pop(topic.encode() if isinstance(topic, str) else topic, None)
        while 1:
            try:
                return super().unsubscribe(topic)
            except OSError as e:
                self.log(False, e)
            self.reconnect()

    def wait_msg(self):
        # With connect(timeout=...) an idle wait ends in ETIMEDOUT, which alone is no failure:
        # ping once; a second timeout with the ping unanswered means the connection is gone.
        pinged = False
        while 1:
            try:
                return super().wait_msg()
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
                return super().check_msg()
            except OSError as e:
                self.log(False, e)
            self.reconnect()
            attempts -= 1
