# Smoke check on the board: an MQTT round trip (connect, subscribe, publish, the message back).
# Sent as text by workshop.smoke after a prelude that sets A (client, host, port, topic, payload,
# timeout_ms, timeout_s). Every socket has a timeout; a failure is {'error': ..., 'stage': ...}.
# Each stage is announced ('@step NAME') as it starts: a host that runs out of time (a host
# name that never resolves) names it.
import json, time
R = {}
st = 'import'
c = None


def stage(name):
    global st
    st = name
    print('@step', name)


try:
    from umqtt.simple import MQTTClient
    got = []
    c = MQTTClient(A['client'], A['host'], port=A['port'], keepalive=30)
    c.set_callback(lambda t, m: got.append((t, m)))
    stage('connect')
    c.connect(timeout=A['timeout_s'])
    stage('subscribe')
    c.subscribe(A['topic'].encode())
    stage('publish')
    t = time.ticks_ms()
    c.publish(A['topic'].encode(), A['payload'].encode())
    stage('wait')
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
