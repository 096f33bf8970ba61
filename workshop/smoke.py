"""Prove each board works: checks over the raw REPL -> structured results -> table, JSON, JUnit XML.

Per device (in parallel): the firmware is the expected one (MicroPython version, port/chip,
build name, and the build identity frozen into the image: board and inputs hash against
build.json's or index.json's); every stack module imports and is frozen (a file on the device
filesystem that shadows a frozen module fails the check); free heap after importing the stack is at least the
board's threshold; flash size; the workshop config is present and parseable. With `network`:
Wi-Fi connects with the provisioned config, an MQTT round trip through a broker, an HTTP GET.

What to expect comes from an `Expected`: built from dist/<BOARD>/build.json, from a release's
index.json, or from the board file alone. The stack's module list comes from manifest.py.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .buildinfo import IDENTITY_MODULE
from .check import module_name
from .config import PROJECT_ROOT, Board
from .provision import CONFIG_PATH_CODE, HOST_PLATFORMS, masked
from .repl import Pacing, ReplError, ReplEvent, ReplSession, ReplTimeout

PASS, FAIL, SKIP = "pass", "fail", "skip"
# Stack modules that start things when imported: checked only if boot.py already imported them.
RUNS_ON_IMPORT = ("workshop_boot",)
FLASH_UNITS = {"KB": 1 << 10, "MB": 1 << 20}


class SmokeError(ValueError):
    """The expectation could not be built (missing build.json, unknown board in an index...)."""


# --- what to expect -----------------------------------------------------------------------------


def manifest_modules(manifest: Path = PROJECT_ROOT / "manifest.py") -> tuple[str, ...]:
    """The frozen paths our manifest.py adds ('umqtt/simple.py', 'wifi.py', ...), in its order.

    Evaluates the manifest with `module()`/`package()` stand-ins (MicroPython's manifestfile
    semantics for those two); anything else in it is ignored. The build identity module is not
    part of the stack (the firmware check reads it), even when WORKSHOP_BUILD_IDENTITY is set here.
    """
    base = manifest.parent
    found: list[str] = []

    def module(path: str, base_path: str = ".", opt: Any = None) -> None:
        found.append(Path(path).as_posix())

    def package(name: str, files: Any = None, base_path: str = ".", opt: Any = None) -> None:
        root = base / base_path
        for f in sorted((root / name).rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if files is None or rel.split("/", 1)[-1] in files:
                found.append(rel)

    def ignore(*a: Any, **k: Any) -> None:
        return None

    env = {"module": module, "package": package, "require": ignore, "include": ignore, "freeze": ignore,
           "metadata": ignore, "options": type("O", (), {"__getattr__": lambda s, k: None})()}
    try:
        exec(compile(manifest.read_text(), str(manifest), "exec"), env)
    except OSError as e:
        raise SmokeError(f"{manifest}: cannot read the manifest: {e.strerror}") from None
    return tuple(p for p in dict.fromkeys(found) if p != IDENTITY_MODULE)


def stack_module_names(frozen: Sequence[str]) -> tuple[str, ...]:
    """Importable names for the stack's frozen paths, packages' __init__ folded in."""
    names = [module_name(p) for p in frozen]
    return tuple(n for n in dict.fromkeys(names))


def _version(v: str | None) -> str | None:
    if not v:
        return None
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", v)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}" if m else v


@dataclass(frozen=True)
class Expected:
    """What a device should run. None means: not checked."""

    source: str                                   # "dist/ESP32_GENERIC/build.json", "release/1.0/index.json", ...
    board: str | None = None
    chip: str | None = None                       # esptool chip name or "host"
    chip_name: str | None = None                  # "ESP32-S3"
    build_name: str | None = None                 # sys.implementation._build: "ESP32_GENERIC", "standard"
    micropython_version: str | None = None        # "1.28.0"
    frozen_modules: tuple[str, ...] = ()          # every frozen path in the image (when known)
    inputs_sha256: str | None = None              # the build's inputs hash, as its frozen identity must say
    stack_modules: tuple[str, ...] = ()           # module names the smoke imports
    min_free_heap: int | None = None
    flash_size: str | None = None                 # "4MB"

    @classmethod
    def for_board(cls, board: Board, *, manifest: Path = PROJECT_ROOT / "manifest.py", **changes: Any) -> Expected:
        build = board.mp_board or board.variant
        if board.mp_board and board.variant:
            build = f"{board.mp_board}-{board.variant}"
        values: dict[str, Any] = dict(
            source=f"boards/{board.name}.toml", board=board.name, chip=board.chip, chip_name=board.chip_name,
            build_name=build, stack_modules=stack_module_names(manifest_modules(manifest)),
            min_free_heap=board.min_free_heap, flash_size=board.flash_size)
        values.update(changes)
        return cls(**values)

    @classmethod
    def from_build(cls, board_dir: Path, board: Board | None = None, *,
                   manifest: Path = PROJECT_ROOT / "manifest.py") -> Expected:
        """dist/<BOARD>/ (build.json) + boards/<BOARD>.toml thresholds."""
        from .buildinfo import BuildInfoError, read_build_info
        from .config import ConfigError, get_board

        try:
            info = read_build_info(board_dir, verify=False)
        except BuildInfoError as e:
            raise SmokeError(str(e)) from None
        if board is None:
            try:
                board = get_board(info.board)
            except ConfigError as e:
                raise SmokeError(str(e)) from None
        # The stack modules checked are the manifest's own, all of them (for_board's default): one
        # missing from the image is a failure the device check reports, not something to leave out.
        expected = cls.for_board(board, manifest=manifest, source=str(board_dir / "build.json"),
                                 micropython_version=_version(info.micropython_version), chip=info.chip,
                                 chip_name=info.chip_name, frozen_modules=tuple(info.frozen_modules),
                                 flash_size=info.flash_size or board.flash_size,
                                 inputs_sha256=info.inputs_sha256)
        # The image's identity names the board it was built for: build.json's.
        return replace(expected, board=info.board)

    @classmethod
    def from_release_index(cls, index: Path, board_name: str, *,
                           manifest: Path = PROJECT_ROOT / "manifest.py") -> Expected:
        """A release's index.json (release/<V>/ or a download cache), read by workshop.release."""
        from .config import ConfigError, get_board
        from .release import ReleaseError, read_index

        try:
            _, boards = read_index(index.read_bytes(), str(index))
        except OSError as e:
            raise SmokeError(f"{index}: cannot read the release index: {e.strerror or e}") from None
        except ReleaseError as e:
            raise SmokeError(str(e)) from None
        entry = next((b for b in boards if b.board == board_name), None)
        if entry is None:
            raise SmokeError(f"{index}: no board {board_name!r} in this release "
                             f"(it has: {', '.join(b.board for b in boards) or 'none'})")
        try:
            board = get_board(board_name)
        except ConfigError as e:
            raise SmokeError(str(e)) from None
        return cls.for_board(board, manifest=manifest, source=str(index),
                             micropython_version=_version(entry.micropython_version), chip=entry.chip,
                             chip_name=entry.chip_family, frozen_modules=entry.frozen_modules,
                             flash_size=entry.flash_size or board.flash_size,
                             inputs_sha256=entry.inputs_sha256)   # None in indexes made before identities


def release_index(version: str, root: Path = PROJECT_ROOT, cache: Path | None = None) -> Path:
    """index.json of release `version`: the one made here (release/<V>/), else a downloaded one
    (what `invoke flash --release V` wrote). SmokeError when there is neither."""
    from .download import release_cache
    from .release import INDEX, ReleaseError, normalize_version

    try:
        v = normalize_version(version)
    except ReleaseError as e:
        raise SmokeError(str(e)) from None
    candidates = [root / "release" / v / INDEX, release_cache(v, cache) / INDEX]
    for index in candidates:
        if index.is_file():
            return index
    raise SmokeError(f"release {v}: no index.json in {' or '.join(str(c.parent) for c in candidates)} "
                     f"(invoke release --version {v}, or invoke download --version {v})")


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str            # "firmware", "module umqtt.simple", "heap", "flash", "config", "wifi", "mqtt", "http"
    status: str          # pass | fail | skip
    detail: str
    duration_s: float = 0.0

    @property
    def group(self) -> str:
        return self.name.split(" ", 1)[0]


@dataclass
class DeviceReport:
    port: str
    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    duration_s: float = 0.0
    expected: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != FAIL for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "ok": self.ok, "duration_s": self.duration_s, "expected": self.expected,
                "facts": self.facts, "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class NetworkOptions:
    mqtt_host: str | None = None       # default: the device config's mqtt.broker
    mqtt_port: int | None = None
    http_url: str | None = "http://micropython.org/ks/test.html"
    wifi_timeout: float = 20.0
    mqtt_timeout: float = 5.0          # each of connect, subscribe, the message coming back (on the device)
    http_timeout: float = 10.0         # socket timeout of the GET (on the device)


# --- on the device ------------------------------------------------------------------------------

DEVICE_CHECK = """
import sys, os, gc, json
A = json.loads(%(args)r)
R = {'platform': sys.platform, 'version': '%%d.%%d.%%d' %% sys.implementation.version[:3],
     'build': getattr(sys.implementation, '_build', None)}
try:
    u = os.uname()
    R['machine'] = u.machine
    R['release'] = u.version
except Exception:
    pass
def isfile(f):
    try:
        return os.stat(f)[0] & 0x8000 != 0
    except OSError:
        return False
try:
    import _workshop_build as W
    f = getattr(W, '__file__', None) or ''
    R['identity'] = {'board': getattr(W, 'board', None), 'inputs': getattr(W, 'inputs', None),
                     'project': getattr(W, 'project', None),
                     'shadow': f if f and not f.startswith('.frozen/') and isfile(f) else None}
    del W
except ImportError:
    R['identity'] = None
except Exception as e:
    R['identity'] = {'error': '%%s: %%s' %% (type(e).__name__, e)}
M = {}
for n in A['mods']:
    if n in A['lazy'] and n not in sys.modules:
        M[n] = ['lazy', None]
        continue
    try:
        __import__(n)
        f = getattr(sys.modules[n], '__file__', None)
        if f is None:
            k = 'builtin'
        elif f.startswith('.frozen/') or not isfile(f):
            k = 'frozen'
        else:
            k = 'file'
        M[n] = [k, f]
    except BaseException as e:
        M[n] = ['error', '%%s: %%s' %% (type(e).__name__, e)]
R['modules'] = M
sh = {}
for n in A['lazy']:
    if M.get(n, [''])[0] == 'lazy':
        p = n.replace('.', '/')
        for d in sys.path:
            if d == '.frozen':
                break
            for ext in ('.py', '.mpy', '/__init__.py'):
                f = (d + '/' if d else '') + p + ext
                if isfile(f):
                    sh[n] = f
R['lazy_shadow'] = sh
gc.collect()
R['free'] = gc.mem_free()
R['alloc'] = gc.mem_alloc()
R['flash'] = None
try:
    import esp
    R['flash'] = esp.flash_size()
except Exception:
    pass
""" + CONFIG_PATH_CODE + """
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
R['config'] = C
print(json.dumps(R))
"""

# The network checks catch their own errors and report them as {'error': ..., 'stage': ...}: a
# failure names the step that failed (connect, subscribe, ...) and never leaves the board stuck.
# Every socket has a timeout (below the host's), so a silent broker or server is a named failure.

WIFI_CHECK = """
import json, time
A = json.loads(%(args)r)
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
        R['error'] = 'no usable config %%s: %%s: %%s' %% (A['path'], type(e).__name__, e)
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
            R['error'] = 'not connected to %%r after %%d ms (status %%r)' %% (w['ssid'], A['timeout_ms'], s.status())
print(json.dumps(R))
"""

MQTT_CHECK = """
import json, time
A = json.loads(%(args)r)
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
        R['error'] = 'no message back within %%d ms' %% R['ms']
    elif got[0][1] != A['payload'].encode():
        R['error'] = 'another message came back: %%r' %% (got[0][1][:40],)
except Exception as e:
    R['error'] = '%%s: %%s' %% (type(e).__name__, e)
if 'error' in R:
    R['stage'] = st
if c is not None and c.sock:
    try:
        c.disconnect()
    except Exception:
        pass
print(json.dumps(R))
"""

HTTP_CHECK = """
import json
A = json.loads(%(args)r)
R = {}
st = 'import'
try:
    import urequests
    st = 'request'
    r = urequests.get(A['url'], timeout=A['timeout_s'])
    try:
        st = 'read'
        R['status'] = r.status_code
        R['reason'] = str(getattr(r, 'reason', '') or '')
        R['bytes'] = len(r.content)
    finally:
        r.close()
except Exception as e:
    R['error'] = '%%s: %%s' %% (type(e).__name__, e)
    R['stage'] = st
print(json.dumps(R))
"""

MQTT_STAGES = {"import": "cannot import umqtt.simple", "connect": "cannot connect to the broker",
               "subscribe": "subscribe failed", "publish": "publish failed", "wait": "no round trip"}
HTTP_STAGES = {"import": "cannot import urequests", "request": "request failed", "read": "reading the answer failed"}
# Hints for the errors a person meets first (errno names as MicroPython prints them).
_HINTS = {"ECONNREFUSED": "nothing listens there", "ETIMEDOUT": "no answer", "EHOSTUNREACH": "host unreachable"}


def _reason(error: str) -> str:
    hint = next((h for code, h in _HINTS.items() if code in error), None)
    return f"{error} ({hint})" if hint else error


def parse_broker(value: str | None) -> tuple[str | None, int | None]:
    """'--mqtt' as given: 'HOST', 'HOST:PORT', '[v6]:PORT' or a bare IPv6 address -> (host, port)."""
    value = (value or "").strip()
    if not value:
        return None, None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else rest)
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    else:
        host, port = value, None
    if not host:
        raise SmokeError(f"--mqtt {value!r}: no host (HOST or HOST:PORT)")
    return host, None if port is None else mqtt_port(port, f"--mqtt {value!r}")


def mqtt_port(value: Any, what: str = "mqtt port") -> int:
    """A port number from an int or a string of digits; SmokeError naming `what` otherwise."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise SmokeError(f"{what}: expected a port number 1..65535, got {value!r}")
    return value


def _flash_bytes(size: str | None) -> int | None:
    if not size:
        return None
    m = re.fullmatch(r"(\d+)(KB|MB)", size)
    return int(m.group(1)) * FLASH_UNITS[m.group(2)] if m else None


def short_hash(value: Any) -> str:
    return str(value)[:12] if value else "none"


def _identity_problems(identity: Any, expected: Expected, seen: list[str]) -> list[str]:
    """The image's frozen _workshop_build (board, inputs hash) against the expectation."""
    want = expected.inputs_sha256
    if not isinstance(identity, dict):
        if want:
            return [f"no build identity in the image: rebuild and flash (expected inputs {short_hash(want)} "
                    f"per {expected.source}; the image predates build identities or is not this kit's)"]
        return []
    if identity.get("error"):
        return [f"build identity unreadable: {identity['error']}"]
    if identity.get("shadow"):
        return [f"the file {identity['shadow']} on the device shadows the image's build identity (delete it)"]
    board, inputs = identity.get("board"), identity.get("inputs")
    seen.append(f"identity {board} inputs {short_hash(inputs)}")
    problems = []
    if expected.board and board != expected.board:
        problems.append(f"image built for board {board}, expected {expected.board}")
    if want and inputs != want:
        problems.append(f"image built from inputs {short_hash(inputs)}, expected {short_hash(want)} per "
                        f"{expected.source} (another build of the stack: flash the expected image)")
    return problems


def config_shape_error(cfg: dict[str, Any]) -> str | None:
    """The device config's "mqtt" section as read back when it is not an object (a hand edit), named."""
    mqtt = cfg.get("mqtt")
    if mqtt is None or isinstance(mqtt, dict):
        return None
    return f"{cfg.get('path')}: \"mqtt\" must be an object, got {mqtt!r}"


def evaluate(facts: dict[str, Any], expected: Expected) -> list[Check]:
    """The device's facts against the expectation: pure, so the rules are testable without a board."""
    checks: list[Check] = []
    # firmware
    problems, seen = [], []
    version = facts.get("version")
    seen.append(f"MicroPython {version}")
    if expected.micropython_version and version != expected.micropython_version:
        problems.append(f"MicroPython {version}, expected {expected.micropython_version}")
    platform = facts.get("platform")
    if expected.chip == "host":
        if platform not in ("linux", "darwin"):
            problems.append(f"platform {platform}, expected the unix port")
    elif expected.chip:
        family = "esp8266" if expected.chip == "esp8266" else "esp32"
        if platform != family:
            problems.append(f"platform {platform}, expected {family}")
        # os.uname().machine is "<board> with <MCU>": compare the MCU exactly (ESP32 is not ESP32S3);
        # a machine string of another shape is only searched for the chip name.
        board_part, with_, mcu = str(facts.get("machine", "")).rpartition(" with ")
        machine = re.sub(r"[^A-Z0-9]", "", (mcu if with_ else board_part + mcu).upper())
        want = re.sub(r"[^A-Z0-9]", "", (expected.chip_name or expected.chip).upper())
        if machine and want and (want != machine if with_ else want not in machine):
            problems.append(f"chip {facts.get('machine')!r}, expected {expected.chip_name or expected.chip}")
    build = facts.get("build")
    if build:
        seen.append(f"build {build}")
    if expected.build_name and build and build != expected.build_name:
        problems.append(f"build {build}, expected {expected.build_name}")
    problems += _identity_problems(facts.get("identity"), expected, seen)
    checks.append(Check("firmware", FAIL if problems else PASS, "; ".join(problems) if problems else ", ".join(seen)))

    # stack modules: import and frozen
    modules = facts.get("modules", {})
    shadows = facts.get("lazy_shadow", {})
    frozen_set = {module_name(p) for p in expected.frozen_modules}
    for name in expected.stack_modules:
        kind, info = modules.get(name, ["error", "not checked"])
        check = f"module {name}"
        if kind == "frozen":
            checks.append(Check(check, PASS, f"frozen ({info})"))
        elif kind == "builtin":
            checks.append(Check(check, PASS, "built into the firmware"))
        elif kind == "file":
            checks.append(Check(check, FAIL, f"not frozen: imported from the file {info} on the device "
                                            f"(a file shadows the frozen module, or the firmware lacks it: delete the file)"))
        elif kind == "lazy":
            if name in shadows:
                checks.append(Check(check, FAIL, f"shadowed by the file {shadows[name]} on the device (delete it)"))
            elif frozen_set and name not in frozen_set:
                checks.append(Check(check, FAIL, f"not in the image per {expected.source}"))
            else:
                checks.append(Check(check, SKIP, "not imported (it starts services; boot.py has not run it) "
                                                 "and no file shadows it"))
        else:
            checks.append(Check(check, FAIL, f"import failed: {info}"))

    # heap
    free = facts.get("free")
    if expected.min_free_heap is None:
        checks.append(Check("heap", SKIP, f"{free} bytes free (no threshold)"))
    elif free is None:
        checks.append(Check("heap", FAIL, "could not read free heap"))
    else:
        ok = free >= expected.min_free_heap
        checks.append(Check("heap", PASS if ok else FAIL,
                            f"{free} bytes free after importing the stack, "
                            f"{'≥' if ok else 'below the'} {expected.min_free_heap} required"))

    # flash
    want = _flash_bytes(expected.flash_size)
    got = facts.get("flash")
    if want is None:
        checks.append(Check("flash", SKIP, "no flash size for this board (host)" if expected.chip == "host"
                            else "no flash size expected"))
    elif got is None:
        checks.append(Check("flash", FAIL, "the firmware does not report its flash size (esp.flash_size())"))
    else:
        ok = int(got) == want
        checks.append(Check("flash", PASS if ok else FAIL,
                            f"{int(got) >> 20} MB" + ("" if ok else f", expected {expected.flash_size}")))

    # config
    cfg = facts.get("config", {})
    if cfg.get("missing"):
        checks.append(Check("config", FAIL, f"no {cfg.get('path')} (run invoke provision)"))
    elif cfg.get("error"):
        checks.append(Check("config", FAIL, f"{cfg.get('path')}: unreadable: {cfg['error']}"))
    elif config_shape_error(cfg):
        checks.append(Check("config", FAIL, config_shape_error(cfg)))
    else:
        checks.append(Check("config", PASS, f"{cfg.get('path')}: hostname {cfg.get('hostname')!r}, "
                                            f"keys {', '.join(cfg.get('keys', []))}"))
    return checks


def smoke_device(port: str, expected: Expected, *, network: NetworkOptions | None = None,
                 on_event: Callable[[ReplEvent], None] | None = None, pacing: Pacing = Pacing(),
                 timeout: float = 10.0, connect_timeout: float = 3.0, baudrate: int = 115200,
                 session_factory: Callable[..., ReplSession] | None = None) -> DeviceReport:
    report = DeviceReport(port=port, expected=expected.source)
    t0 = time.monotonic()
    make = session_factory or ReplSession
    session = make(port, baudrate=baudrate, timeout=timeout, connect_timeout=connect_timeout, pacing=pacing,
                   on_event=on_event)
    try:
        try:
            session.open()
            session.enter_raw()
        except ReplError as e:
            report.checks.append(Check("connect", FAIL, str(e), round(time.monotonic() - t0, 3)))
            return report
        report.checks.append(Check("connect", PASS, "raw REPL", round(time.monotonic() - t0, 3)))
        t = time.monotonic()
        args = {"mods": list(expected.stack_modules), "lazy": list(RUNS_ON_IMPORT)}
        try:
            facts = session.eval_json(DEVICE_CHECK % {"args": json.dumps(args)})
        except ReplError as e:
            report.checks.append(Check("device", FAIL, str(e), round(time.monotonic() - t, 3)))
            return report
        # Reports are published (JSON, JUnit): the config's secret-looking keys are masked.
        report.facts = masked({k: v for k, v in facts.items() if k not in ("modules", "lazy_shadow")})
        report.checks += evaluate(facts, expected)
        if network is not None:
            report.checks += _network_checks(session, facts, network, port)
        return report
    except Exception as e:  # noqa: BLE001 - an odd answer from one board is its failure, not the run's
        report.checks.append(Check("device", FAIL, f"unexpected {type(e).__name__}: {e}",
                                   round(time.monotonic() - t0, 3)))
        return report
    finally:
        session.close()
        report.duration_s = round(time.monotonic() - t0, 3)
        if on_event:
            on_event(ReplEvent(port, "smoked", "all checks passed" if report.ok else
                               "failed: " + ", ".join(c.name for c in report.failed)))


def _run_check(session: ReplSession, name: str, script: str, args: dict[str, Any], timeout: float,
               judge: Callable[[dict[str, Any]], Check]) -> Check:
    t = time.monotonic()
    try:
        result = session.eval_json(script % {"args": json.dumps(args)}, timeout=timeout)
        check = judge(result)
    except ReplTimeout as e:
        # The board is still inside the check: interrupt it, so that the next check can run.
        check = Check(name, FAIL, f"{e} (the check did not finish; interrupted)")
        try:
            session.enter_raw()
        except ReplError:
            pass
    except ReplError as e:
        check = Check(name, FAIL, str(e))
    return Check(check.name, check.status, check.detail, round(time.monotonic() - t, 3))


def _network_checks(session: ReplSession, facts: dict[str, Any], opts: NetworkOptions, port: str) -> list[Check]:
    cfg = facts.get("config", {})
    checks: list[Check] = []
    host_port = facts.get("platform") in HOST_PLATFORMS

    def wifi(r: dict[str, Any]) -> Check:
        if "skip" in r:
            return Check("wifi", SKIP, r["skip"])
        if "error" in r:
            return Check("wifi", FAIL, r["error"])
        return Check("wifi", PASS, f"connected to {cfg.get('ssid')!r} as {r['ip']} in {r['ms']} ms")

    # Run on the device even without a usable config: the unix port skips (no radio) either way,
    # a board says that it has no config to connect with.
    checks.append(_run_check(session, "wifi", WIFI_CHECK,
                             {"path": cfg.get("path") or "/workshop.json", "host": host_port,
                              "timeout_ms": int(opts.wifi_timeout * 1000)},
                             opts.wifi_timeout + 10, wifi))
    shape = config_shape_error(cfg)
    mqtt_cfg = {} if shape else cfg.get("mqtt") or {}
    host = opts.mqtt_host or mqtt_cfg.get("broker")
    if shape and not host:
        checks.append(Check("mqtt", FAIL, f"no broker: {shape}"))
    elif not host:
        checks.append(Check("mqtt", FAIL, "no broker: pass --mqtt HOST or provision with --mqtt"))
    else:
        try:
            if opts.mqtt_port:
                mport = mqtt_port(opts.mqtt_port)
            elif opts.mqtt_host and opts.mqtt_host != mqtt_cfg.get("broker"):
                mport = 1883                   # another broker than the config's: not the config's port
            else:
                mport = mqtt_port(mqtt_cfg.get("port") or 1883, f"{cfg.get('path')}: mqtt.port")
        except SmokeError as e:
            mport = None
            checks.append(Check("mqtt", FAIL, str(e)))
        if mport is not None:
            tag = f"{abs(hash((port, time.time()))) & 0xFFFFFF:06x}"
            wait_ms = int(opts.mqtt_timeout * 1000)
            args = {"client": f"smoke-{tag}", "host": host, "port": mport, "topic": f"workshop/smoke/{tag}",
                    "payload": f"ping {tag}", "timeout_ms": wait_ms, "timeout_s": opts.mqtt_timeout}

            def mqtt(r: dict[str, Any]) -> Check:
                if "error" in r:
                    stage = MQTT_STAGES.get(r.get("stage"), r.get("stage"))
                    return Check("mqtt", FAIL, f"broker {host}:{mport}: {stage}: {_reason(r['error'])}")
                return Check("mqtt", PASS, f"round trip through {host}:{mport} in {r.get('ms')} ms")
            # connect + subscribe + wait, each bounded on the device by mqtt_timeout
            checks.append(_run_check(session, "mqtt", MQTT_CHECK, args, 3 * opts.mqtt_timeout + 5, mqtt))
    if opts.http_url:
        url = opts.http_url

        def http(r: dict[str, Any]) -> Check:
            if "error" in r:
                stage = HTTP_STAGES.get(r.get("stage"), r.get("stage"))
                return Check("http", FAIL, f"GET {url}: {stage}: {_reason(r['error'])}")
            status = r.get("status")
            ok = isinstance(status, int) and 200 <= status < 300
            said = f"HTTP {status}" + (f" {r['reason']}" if r.get("reason") else "")
            return Check("http", PASS if ok else FAIL, f"GET {url}: {said}, {r.get('bytes')} bytes"
                         + ("" if ok else " (expected a 2xx status)"))
        checks.append(_run_check(session, "http", HTTP_CHECK, {"url": url, "timeout_s": opts.http_timeout},
                                 2 * opts.http_timeout + 5, http))
    return checks


def smoke_all(ports: Sequence[str], expected: Expected | Callable[[str], Expected], *,
              workers: int | None = None, **kwargs: Any) -> list[DeviceReport]:
    """Smoke every port in parallel; one report per port, in the order given."""
    def one(port: str) -> DeviceReport:
        try:
            exp = expected(port) if callable(expected) else expected
        except SmokeError as e:
            return DeviceReport(port, [Check("expected", FAIL, str(e))])
        return smoke_device(port, exp, **kwargs)

    with ThreadPoolExecutor(max_workers=max(1, workers or len(ports))) as pool:
        return list(pool.map(one, ports))


# --- renderings ---------------------------------------------------------------------------------


def to_json(reports: Sequence[DeviceReport]) -> str:
    return json.dumps({"ok": all(r.ok for r in reports), "devices": [r.to_dict() for r in reports]}, indent=2) + "\n"


# XML 1.0 cannot carry most control characters (not even escaped): a check detail with an ANSI
# colour code or a NUL from a board would make the whole report unreadable.
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 cannot hold written as an escape: '\\x1b', '\\x00'."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


def to_junit(reports: Sequence[DeviceReport], suite: str = "workshop-smoke") -> str:
    """JUnit XML: one testsuite per device, one testcase per check (fail -> <failure>, skip -> <skipped>)."""
    x = xml_safe
    root = ET.Element("testsuites", name=x(suite))
    for r in reports:
        ts = ET.SubElement(root, "testsuite", name=x(r.port), tests=str(len(r.checks)),
                           failures=str(len(r.failed)), errors="0",
                           skipped=str(sum(c.status == SKIP for c in r.checks)), time=f"{r.duration_s:.3f}")
        for c in r.checks:
            tc = ET.SubElement(ts, "testcase", classname=x(f"smoke.{Path(r.port).name}"), name=x(c.name),
                               time=f"{c.duration_s:.3f}")
            detail = x(c.detail)
            if c.status == FAIL:
                ET.SubElement(tc, "failure", message=detail).text = detail
            elif c.status == SKIP:
                ET.SubElement(tc, "skipped", message=detail)
            else:
                ET.SubElement(tc, "system-out").text = detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def summary_rows(report: DeviceReport) -> dict[str, str]:
    """Per check group: 'pass', 'fail' or 'skip' (modules folded into one cell: '11/11')."""
    row: dict[str, str] = {}
    mods = [c for c in report.checks if c.group == "module"]
    if mods:
        ok = sum(c.status != FAIL for c in mods)
        row["modules"] = f"{ok}/{len(mods)}"
    for c in report.checks:
        if c.group != "module":
            row[c.name] = c.status
    return row
