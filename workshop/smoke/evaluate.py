"""The rules: a device's facts against the expectation -> checks. Pure, testable without a board."""

from __future__ import annotations

import re
from typing import Any

from ..check import module_name
from ..devconfig import DevConfigError, port_number
from .expect import Expected
from .model import FAIL, PASS, SKIP, Check, SmokeError

FLASH_UNITS = {"KB": 1 << 10, "MB": 1 << 20}

MQTT_STAGES = {"import": "cannot import umqtt.simple", "connect": "cannot connect to the broker",
               "subscribe": "subscribe failed", "publish": "publish failed", "wait": "no round trip"}
HTTP_STAGES = {"import": "cannot import urequests", "request": "request failed", "read": "reading the answer failed"}
# Hints for the errors a person meets first (errno names as MicroPython prints them).
_HINTS = {"ECONNREFUSED": "nothing listens there", "ETIMEDOUT": "no answer", "EHOSTUNREACH": "host unreachable"}


def _reason(error: str) -> str:
    hint = next((h for code, h in _HINTS.items() if code in error), None)
    return f"{error} ({hint})" if hint else error


def parse_broker(value: str | None, check_host: bool = True) -> tuple[str | None, int | None]:
    """'--mqtt' as given: 'HOST', 'HOST:PORT', '[v6]:PORT' or a bare IPv6 address -> (host, port).

    The one parser of a broker address (smoke, station, provision, roster): the host must be a
    host name or an IP address (provision.valid_host), checked before any board is touched;
    `check_host=False` leaves that to a caller with its own message for it."""
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
    number = None if port is None else mqtt_port(port, f"--mqtt {value!r}")
    if check_host:
        from ..provision import valid_host

        if not valid_host(host):
            raise SmokeError(f"--mqtt {value!r}: expected a host name or IP address, optionally with :PORT "
                             "(e.g. 10.0.0.2:1884)")
    return host, number


def parse_http_url(value: str) -> str:
    """'--http-url' as given, checked before any board is touched: http:// or https://, a host
    name or IP address ([v6] too), an optional port; the board's requests takes nothing else."""
    import urllib.parse

    from ..provision import valid_host

    example = "expected http://HOST[:PORT]/PATH or https://..., e.g. http://10.0.0.2:8000/ok"
    try:
        url = urllib.parse.urlsplit(value.strip())
        port = url.port
    except ValueError as e:           # a port that is no number, or out of range; a bad [v6]
        raise SmokeError(f"--http-url {value!r}: {e}: {example}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SmokeError(f"--http-url {value!r}: {example}")
    if url.netloc.startswith("["):
        raise SmokeError(f"--http-url {value!r}: the board's requests takes a host name or IPv4 address, not "
                         f"[IPv6]: {example}")
    if not valid_host(url.hostname) or url.username is not None or port == 0:
        raise SmokeError(f"--http-url {value!r}: no host name or IP address with an optional port: {example}")
    return value.strip()


def mqtt_port(value: Any, what: str = "mqtt port") -> int:
    """A port number from an int or a string of digits; SmokeError naming `what` otherwise."""
    try:
        return port_number(value, what)
    except DevConfigError as e:
        raise SmokeError(str(e)) from None


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
    want_bytes = _flash_bytes(expected.flash_size)
    got = facts.get("flash")
    if want_bytes is None:
        checks.append(Check("flash", SKIP, "no flash size for this board (host)" if expected.chip == "host"
                            else "no flash size expected"))
    elif got is None:
        checks.append(Check("flash", FAIL, "the firmware does not report its flash size (esp.flash_size())"))
    else:
        ok = int(got) == want_bytes
        checks.append(Check("flash", PASS if ok else FAIL,
                            (f"{int(got) >> 20} MB" if int(got) >= 1 << 20 else f"{int(got) >> 10} KB") + ("" if ok else f", expected {expected.flash_size}")))

    # config
    cfg = facts.get("config", {})
    if cfg.get("missing"):
        checks.append(Check("config", FAIL, f"no {cfg.get('path')} (run invoke provision)"))
    elif cfg.get("error"):
        checks.append(Check("config", FAIL, f"{cfg.get('path')}: unreadable: {cfg['error']}"))
    elif shape := config_shape_error(cfg):
        checks.append(Check("config", FAIL, shape))
    else:
        checks.append(Check("config", PASS, f"{cfg.get('path')}: hostname {cfg.get('hostname')!r}, "
                                            f"keys {', '.join(cfg.get('keys', []))}"))
    return checks
