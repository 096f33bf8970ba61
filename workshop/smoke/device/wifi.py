# Smoke check on the board: Wi-Fi connects with the provisioned config, bounded by A['timeout_ms'].
# Sent as text by workshop.smoke after a prelude that sets A (its arguments: path, host, timeout_ms).
# Errors are results ({'error': ...}), never exceptions: the host names the step that failed.
import json, time
R = {}
try:
    import network
except ImportError:
    network = None
if network is None:
    if A['host']:
        R['skip'] = 'no radio: the unix port has no network module (it uses the host network)'
    else:
        R['error'] = 'this firmware has no network module'
else:
    try:
        with open(A['path']) as fh:
            w = json.load(fh).get('wifi') or {}
    except Exception as e:
        w = None
        R['error'] = 'no usable config %s: %s: %s' % (A['path'], type(e).__name__, e)
    if w is None:
        pass
    elif not w.get('ssid'):
        R['error'] = 'no wifi.ssid in the config'
    else:
        s = network.WLAN(network.STA_IF)
        s.active(True)
        if not s.isconnected():
            s.connect(w['ssid'], w.get('password', ''))
        t = time.ticks_ms()
        while not s.isconnected() and time.ticks_diff(time.ticks_ms(), t) < A['timeout_ms']:
            time.sleep_ms(100)
        if s.isconnected():
            R['ip'] = s.ifconfig()[0]
            R['ms'] = time.ticks_diff(time.ticks_ms(), t)
        else:
            R['error'] = 'not connected to %r after %d ms (status %r)' % (w['ssid'], A['timeout_ms'], s.status())
print(json.dumps(R))
