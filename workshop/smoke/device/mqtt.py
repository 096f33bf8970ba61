# Smoke check on the board: an MQTT round trip (connect, subscribe, publish, the message back).
# Sent as text by workshop.smoke after a prelude that sets A (client, host, port, topic, payload,
# timeout_ms, timeout_s). Every socket has a timeout; a failure is {'error': ..., 'stage': ...}.
import json, time
R = {}
st = 'import'
c = None
try:
    from umqtt.simple import MQTTClient
    got = []
    c = MQTTClient(A['client'], A['host'], port=A['port'], keepalive=30)
    c.set_callback(lambda t, m: got.append((t, m)))
    st = 'connect'
    c.connect(timeout=A['timeout_s'])
    st = 'subscribe'
    c.subscribe(A['topic'].encode())
    st = 'publish'
    t = time.ticks_ms()
    c.publish(A['topic'].encode(), A['payload'].encode())
    st = 'wait'
    while not got and time.ticks_diff(time.ticks_ms(), t) < A['timeout_ms']:
        c.check_msg()
        time.sleep_ms(20)
    R['ms'] = time.ticks_diff(time.ticks_ms(), t)
    if not got:
        R['error'] = 'no message back within %d ms' % R['ms']
    elif got[0][1] != A['payload'].encode():
        R['error'] = 'another message came back: %r' % (got[0][1][:40],)
except Exception as e:
    R['error'] = '%s: %s' % (type(e).__name__, e)
if 'error' in R:
    R['stage'] = st
if c is not None and c.sock:
    try:
        c.disconnect()
    except Exception:
        pass
print(json.dumps(R))
