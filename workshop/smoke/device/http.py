# Smoke check on the board: an HTTP GET of A['url'] with urequests (socket timeout A['timeout_s']).
# Sent as text by workshop.smoke after a prelude that sets A; a failure is {'error': ..., 'stage': ...}.
# Each stage is announced ('@step NAME') as it starts: a host that runs out of time names it.
import json
R = {}
st = 'import'
try:
    import urequests
    st = 'request'
    print('@step', st)
    r = urequests.get(A['url'], timeout=A['timeout_s'])
    try:
        st = 'read'
        print('@step', st)
        R['status'] = r.status_code
        x = getattr(r, 'reason', '') or ''
        R['reason'] = str(x, 'utf-8') if isinstance(x, bytes) else str(x)  # bytes: micropython-lib's too
        R['bytes'] = len(r.content)
    finally:
        r.close()
except Exception as e:
    R['error'] = '%s: %s' % (type(e).__name__, e)
    R['stage'] = st
print(json.dumps(R))
