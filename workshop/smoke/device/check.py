# Smoke check on the board, run over the raw REPL: firmware, build identity, the stack's modules
# (imported, and frozen rather than shadowed by a file), free heap, flash size, the config.
# Sent as text by workshop.smoke after a prelude that sets A (arguments: 'mods', 'lazy'),
# `host` and `p` (the config path, as provisioning computes it).
#
# Each step announces itself ('@step NAME') and prints what it found ('@fact {...}', '@mod [...]')
# as it goes: a host that runs out of time can say which step the board was in and what it had
# found. The last line is every fact as one JSON object.
import sys, os, gc, json

R = {}


def step(name):
    print('@step', name)


def fact(key, value):
    R[key] = value
    print('@fact', json.dumps({key: value}))


def isfile(f):
    try:
        return os.stat(f)[0] & 0x8000 != 0
    except OSError:
        return False


def found(n):
    # The file `import n` takes before the image's module (sys.path up to '.frozen'), or None:
    # how a shadow shows where modules have no __file__ (the ESP8266's firmware keeps none).
    q = n.replace('.', '/')
    for d in sys.path:
        if d == '.frozen':
            break
        for ext in ('.py', '.mpy', '/__init__.py'):
            f = (d + '/' if d else '') + q + ext
            if isfile(f):
                return f


step('firmware')
fact('platform', sys.platform)
fact('version', '%d.%d.%d' % sys.implementation.version[:3])
fact('build', getattr(sys.implementation, '_build', None))
try:
    u = os.uname()
    fact('machine', u.machine)
    fact('release', u.version)
except Exception:
    pass

step('identity')
try:
    import _workshop_build as W
    f = getattr(W, '__file__', None)
    ident = {'board': getattr(W, 'board', None), 'inputs': getattr(W, 'inputs', None),
             'project': getattr(W, 'project', None),
             'shadow': (f if not f.startswith('.frozen/') and isfile(f) else None) if f else found('_workshop_build')}
    del W
except ImportError:
    ident = None
except Exception as e:
    ident = {'error': '%s: %s' % (type(e).__name__, e)}
fact('identity', ident)

M = {}
R['modules'] = M
for n in A['mods']:
    if n in A['lazy'] and n not in sys.modules:
        M[n] = ['lazy', None]
        continue
    step('import ' + n)
    try:
        __import__(n)
        f = getattr(sys.modules[n], '__file__', None)
        if f is None:
            f = found(n)
            k = 'file' if f else 'builtin'
        elif f.startswith('.frozen/') or not isfile(f):
            k = 'frozen'
        else:
            k = 'file'
        M[n] = [k, f]
    except KeyboardInterrupt:
        raise                       # the host interrupting a check that ran out of time
    except BaseException as e:
        M[n] = ['error', '%s: %s' % (type(e).__name__, e)]
    print('@mod', json.dumps([n] + M[n]))

step('shadows')
sh = {}
for n in A['lazy']:
    if M.get(n, [''])[0] == 'lazy':
        f = found(n)
        if f:
            sh[n] = f
R['lazy_shadow'] = sh

step('heap')
gc.collect()
fact('free', gc.mem_free())
fact('alloc', gc.mem_alloc())

step('flash')
size = None
try:
    import esp
    size = esp.flash_size()
except Exception:
    pass
fact('flash', size)

step('config')
C = {'path': p}
try:
    with open(p) as fh:
        cfg = json.load(fh)
    if isinstance(cfg, dict):
        C['keys'] = sorted(cfg)
        C['hostname'] = cfg.get('hostname')
        C['start'] = cfg.get('start')
        C['mqtt'] = cfg.get('mqtt')
        w = cfg.get('wifi')
        C['ssid'] = w.get('ssid') if isinstance(w, dict) else None
    else:
        C['error'] = 'not a JSON object'
except OSError:
    C['missing'] = True
except ValueError as e:
    C['error'] = str(e)
fact('config', C)
print(json.dumps(R))
