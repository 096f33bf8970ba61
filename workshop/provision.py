"""Give each board its identity: write the workshop config and the boot hook, on many boards at once.

Per device, over one raw-REPL session: identify (platform, MAC), merge the new settings into an
existing config (unknown keys are kept), write `/workshop.json` atomically (temporary file +
rename), read it back and compare, copy the lesson files, make sure boot.py imports
`workshop_boot` (other content kept; a lesson's own boot.py gets the line too). Hostname patterns (`ws-{mac4}`) are expanded per board and must come out unique.

Secrets (Wi-Fi and telnet passwords, and whatever else `devconfig.is_secret_key` calls secret)
are masked in reprs, results, events and error messages. Library code never prints: progress
goes to `on_event`, results are returned.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import project_root
from .devconfig import MASK, DevConfigError, is_secret_key, load_file, masked, port_number, secret_values
from .registry import mac_or_id, normalize_mac
from .repl import Pacing, RemoteError, ReplError, ReplEvent, ReplSession, ReplTimeout, mask



@functools.cache
def device_services() -> tuple[str, ...]:
    """What the board's start-up can start: `SERVICES` in the project's modules/workshop_boot.py,
    the one list (read when first needed: a wheel finds its project at run time, not import)."""
    import ast

    boot = project_root() / "modules" / "workshop_boot.py"
    for node in ast.parse(boot.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SERVICES" for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise RuntimeError(f"{boot}: no SERVICES tuple")  # pragma: no cover - the repo ships it


BOOT_LINE = "import workshop_boot"
HOST_PLATFORMS = ("linux", "darwin")
# At most 32 characters: what a board's network.hostname() takes (MicroPython's
# MICROPY_PY_NETWORK_HOSTNAME_MAX_LEN); a longer name would stop its Wi-Fi at boot.
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
_BOOT_HOOK = re.compile(r"^\s*import\s+workshop_boot\b", re.M)
PATTERN_KEYS = ("mac", "mac4", "mac6", "port", "index")


class ProvisionError(ValueError):
    """The provisioning settings are unusable; the message says which and why."""


class Secret:
    """A string that never shows itself in a repr, str, log or traceback; `.reveal()` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def _secret(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value)


@dataclass(frozen=True)
class ProvisionConfig:
    """What to write. Every field is optional; None leaves that part of the device config alone."""

    hostname: str | None = None               # a pattern: "ws-{mac4}", "{index:02d}-lab"
    wifi_ssid: str | None = None
    wifi_password: Secret | None = None
    telnet_user: str | None = None
    telnet_password: Secret | None = None
    mqtt_broker: str | None = None
    mqtt_port: int | str | None = None         # "1883" is taken as 1883
    start: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # other keys from a config file, kept as given

    def __post_init__(self) -> None:
        # Named by their place in workshop.toml / workshop.json; a number or a table there would
        # be written to the board (or crash the hostname check) otherwise.
        for name, key in (("hostname", "hostname"), ("wifi_ssid", "wifi.ssid"), ("telnet_user", "telnet.user"),
                          ("mqtt_broker", "mqtt.broker")):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ProvisionError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        given: Any = self.start            # typed as a tuple; from a caller it may be anything
        if given is not None and (isinstance(given, str) or not all(isinstance(x, str) for x in given)):
            raise ProvisionError(f"start: expected a list of service names, got {given!r}")
        for name in ("wifi_password", "telnet_password"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | Secret):
                # Never the value in the message: it is a password.
                raise ProvisionError(f"{name.replace('_', ' ')}: expected a string, not {type(value).__name__}")
            object.__setattr__(self, name, _secret(value))
        if self.start is not None:
            start = tuple(s.strip() for s in self.start if s.strip())
            services = device_services()
            unknown = [s for s in start if s not in services]
            if unknown:
                raise ProvisionError(f"start: unknown service {unknown[0]!r} (services: {', '.join(services)})")
            object.__setattr__(self, "start", start)
        if self.mqtt_broker is not None:
            self._split_broker()
        if self.mqtt_port is not None:
            # From TOML or the command line a port may come as "1883": written as the number 1883.
            try:
                object.__setattr__(self, "mqtt_port", port_number(self.mqtt_port, "mqtt port"))
            except DevConfigError as e:
                raise ProvisionError(str(e)) from None
        if self.hostname is not None:
            check_pattern(self.hostname)
        self._check_wifi()
        problem = unwritable(self.updates("x"))       # (first: NaN or a date is named as such)
        if problem:
            raise ProvisionError(problem)
        self._check_device_keys()

    def _check_wifi(self) -> None:
        """What a board's Wi-Fi driver would cut short without a word (ESP-IDF and the ESP8266 SDK
        copy at most 32 bytes of SSID and 64 of password), refused before any board is touched:
        such a board never finds its network."""
        if self.wifi_ssid is not None:
            n = len(self.wifi_ssid.encode("utf-8", "surrogatepass"))
            if not n or n > 32:
                raise ProvisionError(f"wifi.ssid {self.wifi_ssid!r}: a Wi-Fi network name is 1 to 32 bytes, "
                                     f"this one is {n}" + (" (in UTF-8)" if n != len(self.wifi_ssid) else ""))
        if self.wifi_password:
            pw = self.wifi_password.reveal()
            n = len(pw.encode("utf-8", "surrogatepass"))
            if n > 64 or n == 64 and not re.fullmatch(r"[0-9A-Fa-f]{64}", pw):
                # (never the value: it is a password)
                why = ("more than the 64 a board takes" if n > 64 else
                       "not 64 hex digits (a board takes 64 characters as a hex key)")
                raise ProvisionError(f"wifi password: {n} bytes, {why}: a WPA2 passphrase is 8 to 63 characters")

    def _check_device_keys(self) -> None:
        """The other keys the stack reads (from a config file's `extra`), refused before any board
        is touched when a board could not use them: it would fail at boot (wifi.py, announce.py,
        telnet.py raise on them) after provisioning said `written + verified`. Unknown keys are
        kept as given."""
        extra = self.extra
        for section in ("wifi", "telnet", "mqtt", "announce"):
            table = extra.get(section)
            if table is not None and not isinstance(table, dict):
                raise ProvisionError(f"{section}: expected a table, got {type(table).__name__} {table!r}")

        def given(section: str, key: str) -> Any:
            return (extra.get(section) or {}).get(key)

        timeout = given("wifi", "timeout_ms")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1):
            raise ProvisionError(f"wifi.timeout_ms: expected a whole number of milliseconds >= 1, got {timeout!r}")
        interval = given("announce", "interval_s")
        if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int | float)
                                     or not 1 <= interval < float("inf")):
            raise ProvisionError(f"announce.interval_s: expected a number of seconds >= 1, got {interval!r}")
        port = given("telnet", "port")
        if port is not None:
            try:
                number = port_number(port, "telnet.port")
            except DevConfigError as e:
                raise ProvisionError(str(e)) from None
            if not isinstance(port, int):          # the board binds what it is given: "23" fails there
                raise ProvisionError(f"telnet.port: expected a number, got {port!r} (write {number}, without quotes)")
        for key in ("user", "password"):
            v = given("mqtt", key)
            if v is not None and not isinstance(v, str):
                shown = "" if key == "password" else f" {v!r}"       # never a password's value
                raise ProvisionError(f"mqtt.{key}: expected a string, got {type(v).__name__}{shown}")

    def _split_broker(self) -> None:
        """--mqtt HOST:PORT (or [v6]:PORT, as smoke and roster take it): the host into mqtt.broker,
        the port into mqtt.port; a board cannot resolve "10.0.0.2:1884" as a host name."""
        from .smoke import SmokeError, parse_broker

        value = self.mqtt_broker
        if not isinstance(value, str):
            return                       # named by the type checks
        try:
            host, port = parse_broker(value, check_host=False)    # the host is checked here, in its words
        except SmokeError as e:
            raise ProvisionError("mqtt broker: " + str(e).replace("--mqtt ", "", 1)) from None
        if not host or not valid_host(host):
            raise ProvisionError(f"mqtt broker {value!r}: expected a host name or IP address, "
                                 "optionally with :PORT (e.g. 10.0.0.2:1884)")
        if port is not None and self.mqtt_port is not None:
            try:
                other = port_number(self.mqtt_port, "mqtt port")
            except DevConfigError as e:
                raise ProvisionError(str(e)) from None
            if other != port:
                raise ProvisionError(f"mqtt broker {value!r} names port {port} but the mqtt port is {other}: "
                                     "give the port once")
        object.__setattr__(self, "mqtt_broker", host)
        if port is not None:
            object.__setattr__(self, "mqtt_port", port)

    def secrets(self) -> list[str]:
        """Every secret this run writes: the passwords, and secret-looking keys of `extra`
        (an [mqtt] password in workshop.toml, say), so that all of them are masked."""
        return [s.reveal() for s in (self.wifi_password, self.telnet_password) if s] + secret_values(self.extra)

    def __repr__(self) -> str:
        shown = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__dataclass_fields__ if f != "extra")
        return f"ProvisionConfig({shown}, extra={masked(self.extra)!r})"

    def updates(self, hostname: str | None) -> dict[str, Any]:
        """The config keys this run sets (secrets revealed: only for the device)."""
        doc: dict[str, Any] = dict(self.extra)
        if hostname is not None:
            doc["hostname"] = hostname
        wifi = {k: v for k, v in (("ssid", self.wifi_ssid),
                                  ("password", self.wifi_password.reveal() if self.wifi_password else None))
                if v is not None}
        if wifi:
            doc["wifi"] = {**doc.get("wifi", {}), **wifi}
        telnet = {k: v for k, v in (("user", self.telnet_user),
                                    ("password", self.telnet_password.reveal() if self.telnet_password else None))
                  if v is not None}
        if telnet:
            doc["telnet"] = {**doc.get("telnet", {}), **telnet}
        mqtt = {k: v for k, v in (("broker", self.mqtt_broker), ("port", self.mqtt_port)) if v is not None}
        if mqtt:
            doc["mqtt"] = {**doc.get("mqtt", {}), **mqtt}
        if self.start is not None:
            doc["start"] = list(self.start)
        return doc

    @classmethod
    def from_file(cls, path: Path, **overrides: Any) -> ProvisionConfig:
        """A workshop.toml (or .json) in the device config's shape; keyword overrides win over it."""
        try:
            data = load_file(path)
        except DevConfigError as e:
            raise ProvisionError(str(e)) from None

        def table(key: str) -> dict[str, Any]:
            value = data.pop(key, {})
            if not isinstance(value, dict):
                raise ProvisionError(f"{path}: {key}: expected a table, got {type(value).__name__}")
            return value

        wifi, telnet, mqtt = table("wifi"), table("telnet"), table("mqtt")
        start = data.pop("start", None)
        if start is not None and not (isinstance(start, list) and all(isinstance(s, str) for s in start)):
            raise ProvisionError(f"{path}: start: expected a list of service names")
        values: dict[str, Any] = dict(
            hostname=data.pop("hostname", None),
            wifi_ssid=wifi.pop("ssid", None), wifi_password=wifi.pop("password", None),
            telnet_user=telnet.pop("user", None), telnet_password=telnet.pop("password", None),
            mqtt_broker=mqtt.pop("broker", None), mqtt_port=mqtt.pop("port", None),
            start=tuple(start) if start is not None else None,
        )
        extra = dict(data)
        for key, rest in (("wifi", wifi), ("telnet", telnet), ("mqtt", mqtt)):
            if rest:
                extra[key] = rest           # unknown sub-keys are kept (merged on the device)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(extra=extra, **values)
        except ProvisionError as e:
            raise ProvisionError(f"{path}: {e}") from None


_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def valid_host(host: str) -> bool:
    """A host name (dot-separated labels) or an IPv4/IPv6 address."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    return len(host) <= 253 and all(_HOST_LABEL.match(label) for label in labels)


def pattern_fields(pattern: str) -> set[str]:
    """The {keys} a hostname pattern uses ('lab-{index:02d}' -> {'index'})."""
    try:
        return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(pattern) if f}
    except ValueError as e:
        raise ProvisionError(f"hostname pattern {pattern!r}: {e}") from None


def check_pattern(pattern: str) -> None:
    """Reject a hostname pattern with unknown {keys} before any device is touched."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as e:
        raise ProvisionError(f"hostname pattern {pattern!r}: {e}") from None
    for f in fields:
        if f not in PATTERN_KEYS:
            raise ProvisionError(f"hostname pattern {pattern!r}: unknown {{{f}}} (known: "
                                 + ", ".join("{" + k + "}" for k in PATTERN_KEYS) + ")")
    # What it makes of a board, checked now: a name no board could get (Bad_Name!) is refused
    # before any board is touched, not once per board after connecting to every one.
    _expand(pattern, mac="0" * 12, port="ttyUSB0", index=1)


def check_hostnames(pattern: str | None, boards: int) -> None:
    """A fixed hostname (no {key}) for more than one board is refused up front: names must be unique."""
    if pattern is None or boards < 2:
        return
    check_pattern(pattern)
    if not pattern_fields(pattern):
        raise ProvisionError(f"hostname {pattern!r} would be the name of all {boards} boards: give a pattern "
                             "with {mac4}, {mac6}, {mac}, {port} or {index} (e.g. ws-{mac4}), or one board")


def expand_hostname(pattern: str, *, mac: str, port: str, index: int) -> str:
    check_pattern(pattern)
    return _expand(pattern, mac=mac, port=port, index=index)


def _expand(pattern: str, *, mac: str, port: str, index: int) -> str:
    try:
        name = pattern.format(mac=mac, mac4=mac[-4:], mac6=mac[-6:], port=Path(port).name, index=index)
    except (ValueError, IndexError, KeyError) as e:
        raise ProvisionError(f"hostname pattern {pattern!r}: {e}") from None
    name = name.lower().replace("_", "-")
    if not _HOSTNAME.match(name):
        raise ProvisionError(f"hostname {name!r} (from {pattern!r}) is not a valid host name: "
                             "letters, digits and '-', at most 32 (what a board's network.hostname() takes), "
                             "not starting or ending with '-'")
    return name


# --- on the device ------------------------------------------------------------------------------

# Device code that sets `host` (unix port?) and `p`: where the stack reads its config
# (wsconfig.path()). On the unix port the device root is the current directory: relative paths
# there. Shared with the smoke check, which must look where provisioning wrote. No '%' in it.
CONFIG_PATH_CODE = """
host = sys.platform in ('linux', 'darwin')
try:
    import wsconfig
    p = wsconfig.path()
except Exception:
    p = '/workshop.json'
if host and p.startswith('/'):
    p = 'workshop.json'
"""

# The config path, the boot.py to hook, and a MAC for {mac4}.
IDENTIFY = """
import sys, os, json
r = {'platform': sys.platform, 'version': '%d.%d.%d' % sys.implementation.version[:3]}
""" + CONFIG_PATH_CODE + """
r['config_path'] = p
r['boot_path'] = 'boot.py' if host else '/boot.py'
mac = None
try:
    import network
    mac = network.WLAN(network.STA_IF).config('mac')
except Exception:
    try:
        import machine
        mac = machine.unique_id()
    except Exception:
        pass
if mac:
    r['mac'] = ''.join('%02x' % b for b in mac)
if host:
    r['cwd'] = os.getcwd()
print(json.dumps(r))
"""


@dataclass(frozen=True)
class DeviceIdentity:
    port: str
    platform: str
    version: str
    mac: str                 # 12 hex digits
    mac_source: str          # "wlan" | "unique_id" | "cwd" (unix port: hash of the device folder)
    config_path: str
    boot_path: str


def identify(session: ReplSession) -> DeviceIdentity:
    r = session.eval_json(IDENTIFY)
    mac = r.get("mac")
    source = "wlan"
    if not mac:
        # The unix port has no radio: a stable stand-in from the device folder.
        mac = hashlib.sha256(str(r.get("cwd", session.port)).encode()).hexdigest()[:12]
        source = "cwd"
    return DeviceIdentity(session.port, r["platform"], r["version"], mac.lower(), source,
                          r["config_path"], r["boot_path"])


def unwritable(doc: Any, key: str = "") -> str | None:
    """Why `doc` cannot go into a board's /workshop.json, naming the key, or None. MicroPython's
    json reader takes no NaN or Infinity (the whole file would be unreadable at boot), JSON has
    no dates (a TOML `2025-03-01`), and text must be UTF-8. A secret's value is never shown."""
    import math

    shown = key if is_secret_key(key.rsplit(".", 1)[-1]) else f"{key}: {doc!r}"
    if isinstance(doc, dict):
        for k, v in doc.items():
            if not isinstance(k, str):
                return f"{key or 'the config'}: key {k!r} is not a string"
            name = f"{key}.{k}" if key else k
            problem = unwritable(k, f"{name} (the key)") or unwritable(v, name)
            if problem:
                return problem
        return None
    if isinstance(doc, list | tuple):
        return next((p for i, v in enumerate(doc) if (p := unwritable(v, f"{key}[{i}]"))), None)
    if isinstance(doc, str):
        try:
            doc.encode("utf-8")
        except UnicodeEncodeError:
            return f"{key}: not valid text (a character that is no UTF-8, from a terminal in another encoding?)"
        return None
    if isinstance(doc, float) and not math.isfinite(doc):
        return f"{shown}: a board's JSON reader takes no NaN or Infinity (the whole config would be unreadable): give a number"
    if doc is None or isinstance(doc, bool | int | float):
        return None
    return (f"{shown}: a {type(doc).__name__} cannot be written to a board's JSON config: "
            "give it as a string (quoted in workshop.toml)")


def config_bytes(doc: dict[str, Any]) -> bytes:
    """/workshop.json as written: UTF-8, non-ASCII as itself. Not \\u escapes: MicroPython's json
    reads an escaped pair (an emoji in an SSID or password: \\ud83c\\udf93) as two lone
    surrogates, so the board would look for another network name and take another password."""
    return (json.dumps(doc, separators=(", ", ": "), ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def merge(existing: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    """Existing config with the updates applied; nested tables merged key by key, unknown keys kept."""
    out = dict(existing)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def with_boot_hook(boot: str | None) -> str | None:
    """boot.py content that imports workshop_boot, or None when it already does."""
    if boot is not None and _BOOT_HOOK.search(boot):
        return None
    text = boot or ""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + BOOT_LINE + "\n"


def hook_lesson_boot(files: list[Any]) -> tuple[list[Any], str | None]:
    """A lesson's own boot.py keeps the boot hook: the lesson files with `import workshop_boot`
    appended to a root boot.py that lacks it, and "added" | "present" (None: no boot.py there).
    Copying the lesson's boot.py as it is would silently remove the hook provisioning wrote."""
    from .lessons import LessonFile

    out, hook = [], None
    for f in files:
        if f.relative == "boot.py":
            new = with_boot_hook(f.data.decode("utf-8", "surrogateescape"))
            hook = "present" if new is None else "added"
            if new is not None:
                f = LessonFile(f.relative, new.encode("utf-8", "surrogateescape"))
        out.append(f)
    return out, hook


@dataclass
class ProvisionResult:
    port: str
    ok: bool
    hostname: str | None = None
    mac: str | None = None
    config_path: str | None = None
    config: dict[str, Any] = field(default_factory=dict)   # as written, secrets masked
    boot_hook: str | None = None          # "added" | "present"
    reset: bool = False
    error: str | None = None
    stage: str = "connect"                # where it stopped: connect, identify, name, config, files, boot, reset, done
    duration_s: float = 0.0
    files: dict[str, Any] | None = None   # lesson files: {"written": [...], "unchanged": [...]}
    boot: list[str] | None = None         # after --reset: the start-up's own lines ("workshop: wifi up, ...")
    interrupted: bool = False             # Ctrl-C ended it where `stage` says

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("port", "ok", "hostname", "mac", "config_path", "config",
                                                "boot_hook", "files", "reset", "boot", "error", "stage",
                                                "interrupted", "duration_s")}


def _unreadable_constant(name: str) -> Any:
    """NaN/Infinity in a board's config: CPython reads them, the board's json does not."""
    raise ValueError(f"{name} is no JSON a board reads")


def write_config(session: ReplSession, ident: DeviceIdentity, updates: dict[str, Any],
                 replace: bool = False) -> dict[str, Any]:
    """Merge `updates` into the device config and write it atomically; returns what was written."""
    existing: dict[str, Any] = {}
    if not replace and session.exists(ident.config_path):
        try:
            old = json.loads(session.get(ident.config_path), parse_constant=_unreadable_constant)
            if isinstance(old, dict):
                existing = old
        except ValueError:
            existing = {}                      # unreadable (on the board too): replaced by a good one
    for s in secret_values(existing):
        session.add_secret(s)
    doc = merge(existing, updates)
    problem = unwritable(doc)              # (a key the board's old config had, say)
    if problem:
        raise ProvisionError(f"{ident.config_path} on the board: {problem} (--replace writes a new config)")
    _put(session, ident.config_path, config_bytes(doc))
    return doc


def _put(session: ReplSession, path: str, data: bytes) -> None:
    """session.put, atomic and verified; what the board raised said in words, naming the file."""
    from .lessons import board_error

    try:
        session.put(path, data, atomic=True, verify=True)
    except RemoteError as e:
        raise ProvisionError(f"{session.port}: {path} not written: {board_error(e)}") from None


def ensure_boot_hook(session: ReplSession, ident: DeviceIdentity) -> str:
    # surrogateescape: bytes of a boot.py that are no UTF-8 (a Latin-1 comment) are written back as they were.
    boot = (session.get(ident.boot_path).decode("utf-8", "surrogateescape") if session.exists(ident.boot_path)
            else None)
    new = with_boot_hook(boot)
    if new is None:
        return "present"
    _put(session, ident.boot_path, new.encode("utf-8", "surrogateescape"))
    return "added"


# `--reset`: boot.py runs the start-up (workshop_boot), whose Wi-Fi is bounded by 15 s by
# default: a board needs that and the services after it before it is back at its prompt.
RESET_TIMEOUT_S = 30.0


def started_lines(boot_output: str) -> list[str]:
    """The start-up's own lines in what a board printed while it restarted (workshop_boot says
    each service it started, or why not, on a line of its own)."""
    return [line.strip() for line in boot_output.splitlines() if line.strip().startswith("workshop:")]


def raised(output: str) -> str:
    """The exception line of the last traceback in a board's output ("ImportError: ...")."""
    lines = output.splitlines()
    start = max((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), default=-1)
    return next((line.strip() for line in lines[start + 1:] if line.strip() and not line.startswith(" ")),
                "a traceback")


def start_failed(line: str) -> bool:
    """A start-up line saying something did not start (workshop_boot's words)."""
    return any(words in line for words in (" not started", "start-up interrupted", "unknown service",
                                           "must be a list", "no config at", "bad config"))


def provision_all(ports: Sequence[str], config: ProvisionConfig, *,
                  on_event: Callable[[ReplEvent], None] | None = None, replace: bool = False,
                  reset: bool = False, reset_timeout: float = RESET_TIMEOUT_S, pacing: Pacing = Pacing(),
                  timeout: float = 10.0,
                  connect_timeout: float = 3.0, baudrate: int = 115200, workers: int | None = None,
                  session_factory: Callable[..., ReplSession] | None = None,
                  index_of: Callable[[str, str], int] | None = None,
                  files: Path | None = None, prune: bool = False,
                  vet: Callable[[str, DeviceIdentity, str | None], None] | None = None,
                  cancel: threading.Event | None = None) -> list[ProvisionResult]:
    """Provision every port in parallel; one result per port, in the order given.

    Two phases: identify all boards (so that hostnames can be checked for uniqueness across the
    run), then write. A board that fails never stops the others. `index_of(port, mac)` gives a
    board's `{index}` (the registry's sticker; default: its position in `ports`, from 1).
    `files`: a folder of lesson files copied onto every board (workshop.lessons); `prune`: the
    files earlier runs put there that this folder no longer has are removed (unless edited there).
    `vet(port, identity, hostname)` is called for each board once it is named, before anything is
    written: a ProvisionError from it fails that board (stage "name"), e.g. the station's "another
    board answered on this port" or "that hostname is another board's in the registry".
    Ctrl-C (KeyboardInterrupt) sets `cancel`: every session's port refuses I/O from then on, so
    the workers end within one read and the results come back at once, the unfinished ones
    failed ("interrupted"); a caller that passed `cancel` sees it set. A `session_factory` of the
    caller's must make sessions that end on that event itself (ReplSession(cancel=...)).
    """
    from . import lessons

    check_hostnames(config.hostname, len(ports))
    if prune and files is None:
        raise ProvisionError("prune goes with files (it removes what an earlier lesson folder put there)")
    lesson_files = lessons.collect(files, config.secrets()) if files is not None else None
    lesson_hook = None
    if lesson_files is not None:
        lesson_files, lesson_hook = hook_lesson_boot(lesson_files)
    secrets = config.secrets()
    results = [ProvisionResult(port=p, ok=False) for p in ports]
    sessions: list[ReplSession | None] = [None] * len(ports)
    idents: list[DeviceIdentity | None] = [None] * len(ports)
    started = time.monotonic()
    t0 = [started] * len(ports)

    def event(port: str, kind: str, message: str) -> None:
        if on_event:
            on_event(ReplEvent(port, kind, mask(message, secrets)))

    cancel = cancel or threading.Event()

    def fail(i: int, e: BaseException) -> None:
        results[i].error = mask(str(e) if isinstance(e, (ReplError, ProvisionError, lessons.LessonError))
                                else f"{type(e).__name__}: {e}", secrets)
        results[i].duration_s = round(time.monotonic() - t0[i], 3)
        results[i].interrupted = cancel.is_set()
        event(ports[i], "failed", results[i].error or "")

    def phase1(i: int) -> None:
        t0[i] = time.monotonic()
        make = session_factory or functools.partial(ReplSession, cancel=cancel)
        try:
            s = make(ports[i], baudrate=baudrate, timeout=timeout, connect_timeout=connect_timeout,
                     pacing=pacing, on_event=on_event, secrets=secrets)
            s.open()
            sessions[i] = s
            s.enter_raw()
            results[i].stage = "identify"
            ident = idents[i] = identify(s)
            results[i].mac = mac_or_id(ident.mac)     # shown as everywhere else: aa:bb:cc:dd:ee:ff
            results[i].config_path = ident.config_path
        except Exception as e:  # noqa: BLE001 - one board's failure is its result
            fail(i, e)

    def phase2(i: int, hostname: str | None) -> None:
        s, ident = sessions[i], idents[i]
        assert s is not None and ident is not None
        r = results[i]
        try:
            r.stage = "config"
            doc = write_config(s, ident, config.updates(hostname), replace=replace)
            r.config = masked(doc)
            r.hostname = doc.get("hostname")
            if lesson_files is not None:
                # Lesson files first, then the hook is checked on the board: a lesson boot.py
                # (given the hook by hook_lesson_boot) never leaves a board without it.
                r.stage = "files"
                try:
                    copied = lessons.copy_files(s, lesson_files, root="/" if ident.config_path.startswith("/") else "",
                                                prune=prune)
                except lessons.LessonError as e:
                    if e.result is not None:
                        r.files = e.result.to_dict()      # what did reach the board before it stopped
                    raise
                r.files = copied.to_dict()
                event(ports[i], "files", copied.summary)
            r.stage = "boot"
            hook = ensure_boot_hook(s, ident)
            added = lesson_hook == "added" and r.files is not None and "boot.py" in r.files["written"]
            r.boot_hook = "added" if added and hook == "present" else hook
            if reset:
                r.stage = "reset"
                try:
                    out = s.soft_reset(timeout=reset_timeout)
                except ReplTimeout as e:
                    raise ProvisionError(f"{e} (allow it longer: --reset-timeout, now {reset_timeout:g} s)") from None
                r.reset = True
                r.boot = [mask(line, secrets) for line in started_lines(out)]
                failed = [line for line in r.boot if start_failed(line)]
                if "Traceback (most recent call last)" in out:    # boot.py itself raised
                    failed.append("boot.py raised " + raised(out))
                elif doc.get("start") and not r.boot:
                    failed.append("boot.py started none of " + ", ".join(map(str, doc["start"])) +
                                  " and said nothing of them (is workshop_boot in this firmware?)")
                if failed:   # the config is written; what --reset was for did not happen
                    raise ProvisionError("after the reset: " + "; ".join(failed))
            r.stage = "done"
            r.ok = True
            r.duration_s = round(time.monotonic() - t0[i], 3)
            event(ports[i], "provisioned", f"{r.hostname or '(no hostname)'}: {ident.config_path} written and "
                                           f"verified, boot hook {r.boot_hook}")
        except Exception as e:  # noqa: BLE001
            fail(i, e)

    n = max(1, workers or len(ports))
    try:
        with ThreadPoolExecutor(max_workers=n) as pool:
            try:
                list(pool.map(phase1, range(len(ports))))
                names: dict[int, str | None] = {}
                for i, ident in enumerate(idents):
                    if ident is None:
                        continue
                    try:
                        index = index_of(ports[i], ident.mac) if index_of is not None else i + 1
                        name = (expand_hostname(config.hostname, mac=ident.mac, port=ports[i], index=index)
                                if config.hostname else None)
                        if vet is not None:
                            vet(ports[i], ident, name)
                        names[i] = name             # only a vetted board is written to
                    except ProvisionError as e:
                        results[i].stage = "name"
                        fail(i, e)
                seen: dict[str, int] = {}
                for i, name in list(names.items()):
                    if name is None:
                        continue
                    if name in seen:
                        first = seen[name]
                        a, b = idents[first], idents[i]
                        # Two boards that report one MAC (a clone) get one name from any pattern.
                        fix = (f"both report MAC {normalize_mac(b.mac)} (a clone): no pattern tells them apart; "
                               "provision them one at a time" if a is not None and b is not None and
                               normalize_mac(a.mac) == normalize_mac(b.mac) else
                               "use {mac6}, {mac} or {index} in the pattern")
                        for j in (first, i):
                            results[j].stage = "name"
                            fail(j, ProvisionError(f"hostname {name!r} would be on both {ports[first]} and "
                                                   f"{ports[i]}: {fix}"))
                            names.pop(j, None)
                    else:
                        seen[name] = i
                list(pool.map(lambda i: phase2(i, names[i]), list(names)))
            except KeyboardInterrupt:
                cancel.set()                    # before the pool's exit waits for its workers
    finally:
        for s in sessions:
            if s is not None:
                s.close()
    if cancel.is_set():
        for r in results:
            if not r.ok and not r.error:
                r.error = "interrupted before it was provisioned"
                r.interrupted = True
    return results


def parse_ports(value: str | Iterable[str] | None) -> list[str]:
    """'a,b c' or a list -> ['a', 'b', 'c']."""
    if value is None:
        return []
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value)
    return [p for p in items if p]
