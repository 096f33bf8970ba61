"""The room on the network: which boards are online, which run an old image.

Boards running `announce` (modules/announce.py) keep a retained JSON status on
`workshop/<hostname>/status` (last will: `"state": "offline"`) and advertise `_workshop._tcp` over
mDNS. `Roster` joins what arrives from both with the expected build identities (the inputs hash
in `dist/<BOARD>/build.json`, or a release's `index.json`) and, when given, registry lookups
(hostname -> {mac, sticker, ...}, and MAC -> the same; `registry_lookups`). A status that reports
its MAC is joined by that MAC: a registry record for its hostname with another MAC (another
board's sticker) is a warning, never shown as this board's. `RoomWatcher` feeds a roster from a live MQTT
subscription (paho-mqtt) and an mDNS browser (python-zeroconf), in background threads.

Row states: `online`; `stale` when no status arrived within 2 announce intervals (a board that
hangs, or lost power before the broker's keepalive ran out) or, for a board known from mDNS
alone, when it has not answered for its records' TTL (the watcher asks again from half of it);
`offline` (its last will, it left cleanly, or mDNS removed it: a goodbye). A retained status
seen when the watcher starts is as old as the broker keeps it: `retained` says so until the
board publishes again. An empty retained message on a board's topic (the MQTT way to clear a
status) removes its row.

Two boards given one hostname share a topic: their statuses alternate in one row. A live status
from another MAC than the last one heard within 2 intervals (or, from boards that report no MAC,
an IP coming back after another) is a warning naming both.

Library code never prints: malformed messages become warnings (`Roster.warnings`, `on_warning`),
one per topic (the latest; a repeat is not passed to `on_warning` again), at most MAX_WARNINGS.
The callbacks that feed a roster from paho's and zeroconf's threads never let an exception out:
one would end paho's network loop, and every later message would be lost. It becomes a warning.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


STATUS_TOPIC = "workshop/+/status"
SERVICE_TYPE = "_workshop._tcp.local."
DEFAULT_INTERVAL_S = 30
STALE_INTERVALS = 2
STATES = ("online", "stale", "offline")
MDNS_TTL_S = 120        # the TTL of a board's mDNS records (modules/mdns.py), when an answer gave none
MDNS_CHECK_S = 5.0      # how often the watcher looks at each mDNS board's records (and asks when due)
MAX_WARNINGS = 100      # distinct warnings kept (one per topic: the latest); beyond, the oldest go

Lookup = Callable[[str], Mapping[str, Any] | None]


class RosterError(RuntimeError):
    """The roster cannot be assembled (broker unreachable, unreadable release index...)."""


def parse_address(value: str, default_port: int = 1883) -> tuple[str, int]:
    """'HOST', 'HOST:PORT', '[v6]:PORT' or a bare IPv6 address -> (host, port)."""
    from .smoke import SmokeError, parse_broker

    try:
        host, port = parse_broker(value)
    except SmokeError as e:
        raise RosterError(str(e)) from None
    if not host:
        raise RosterError("--mqtt: no broker address (HOST or HOST:PORT)")
    return host, port or default_port


# --- what boards should run ---------------------------------------------------------------------

@dataclass(frozen=True)
class Expected:
    """Board name -> the inputs hash its current image has; `source` says where that came from."""

    inputs: Mapping[str, str]
    source: str


def expected_from_dist(root: Path | None = None) -> Expected:
    """Every dist/<BOARD>/build.json (unreadable ones are left out: that board shows 'unknown')."""
    from .buildinfo import BuildInfoError, dist_dir, read_build_info

    found: dict[str, str] = {}
    d = dist_dir(root)
    for board_dir in sorted(d.glob("*/")) if d.is_dir() else ():
        try:
            info = read_build_info(board_dir, verify=False)
        except (BuildInfoError, OSError, ValueError, KeyError, TypeError):
            continue
        found[info.board] = info.inputs_sha256
    return Expected(found, f"{d}/*/build.json")


def expected_from_release(version: str, root: Path | None = None) -> Expected:
    """The inputs hashes in release `version`'s index.json (made here, or downloaded)."""
    from .release import ReleaseError, read_index
    from .smoke import SmokeError, release_index

    try:
        index = release_index(version, root)
        _, boards = read_index(index.read_bytes(), str(index))
    except (SmokeError, ReleaseError) as e:
        raise RosterError(str(e)) from None
    except OSError as e:
        raise RosterError(f"cannot read the release index: {e.strerror or e}") from None
    return Expected({b.board: b.inputs_sha256 for b in boards if b.inputs_sha256}, str(index))


# --- rows ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    hostname: str
    state: str                      # online | stale | offline
    ip: str | None = None
    telnet: int | None = None       # the board's telnet port (None: telnet not started)
    board: str | None = None
    micropython: str | None = None
    inputs: str | None = None       # the image's build identity (inputs hash)
    project: str | None = None
    outdated: bool | None = None    # None: unknown (no identity in the image, or no build to compare)
    outdated_reason: str = ""
    heap_free: int | None = None
    rssi: int | None = None
    uptime_s: int | None = None
    interval_s: float = DEFAULT_INTERVAL_S     # (a board may say 12.5)
    last_seen: float | None = None  # when the last status (or mDNS answer) arrived, epoch s
    age_s: float | None = None
    retained: bool = False          # only the broker's retained copy has been seen so far
    sources: tuple[str, ...] = ()   # "mqtt", "mdns"
    mac: str | None = None
    sticker: str | None = None
    registry: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return d


_INT_FIELDS = ("heap_free", "rssi", "uptime_s", "telnet")
_STR_FIELDS = ("ip", "board", "micropython", "inputs", "project", "mac")


class Roster:
    """What is known about each board, by hostname; `rows()` adds the derived columns."""

    def __init__(self, expected: Expected | None = None, lookup: Lookup | None = None,
                 clock: Callable[[], float] = time.time, on_warning: Callable[[str], None] | None = None,
                 lookup_mac: Lookup | None = None) -> None:
        self.expected = expected
        self.lookup = lookup            # hostname -> registry record
        self.lookup_mac = lookup_mac    # MAC -> registry record
        self.clock = clock
        self.on_warning = on_warning
        self._warnings: dict[str, str] = {}     # key (a topic...) -> its latest warning, oldest first
        self.warnings_dropped = 0               # warnings pushed out by MAX_WARNINGS newer ones
        self._boards: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            return list(self._warnings.values())

    def _warn(self, message: str, key: str | None = None) -> None:
        """Keep one warning per `key` (a topic, a hostname...: junk on the broker cannot grow the
        roster without bound): the latest, moved to the end; `on_warning` hears it when it is new."""
        key = key or message
        with self._lock:
            repeat = self._warnings.pop(key, None) == message
            self._warnings[key] = message
            while len(self._warnings) > MAX_WARNINGS:
                del self._warnings[next(iter(self._warnings))]
                self.warnings_dropped += 1
        if self.on_warning and not repeat:
            try:
                self.on_warning(message)
            except Exception:  # noqa: BLE001 - the warning is kept in .warnings; a failing printer must not stop the room
                pass

    def ingest_mqtt(self, topic: str, payload: bytes, retained: bool = False) -> bool:
        """One message from `workshop/<hostname>/status`; False (and a warning) if unusable."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != "workshop" or parts[2] != "status" or not parts[1]:
            self._warn(f"{topic}: not a workshop/<hostname>/status topic, skipped", topic)
            return False
        name = parts[1]
        if not payload:
            self._clear(name)
            return True
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            self._warn(f"{topic}: not a JSON status ({e}), skipped", topic)
            return False
        if not isinstance(doc, dict):
            self._warn(f"{topic}: status is not a JSON object, skipped", topic)
            return False
        state = doc.get("state")
        if state not in ("online", "offline"):
            self._warn(f"{topic}: state {state!r} is neither 'online' nor 'offline', skipped", topic)
            return False
        if doc.get("hostname") not in (None, name):
            self._warn(f"{topic}: says hostname {doc.get('hostname')!r}, skipped", topic)
            return False
        clean: dict[str, Any] = {"state": state}
        odd: list[str] = []
        for k in _STR_FIELDS:
            v = doc.get(k)
            if v is not None and not isinstance(v, str):
                odd.append(f"{k}: expected a string, got {v!r}")
                v = None
            clean[k] = v
        for k in _INT_FIELDS:
            v = doc.get(k)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                odd.append(f"{k}: expected a number, got {v!r}")
                v = None
            clean[k] = v
        iv = doc.get("interval_s")
        if isinstance(iv, float) and iv.is_integer():
            iv = int(iv)
        if iv is not None and (isinstance(iv, bool) or not isinstance(iv, int | float) or not 0 < iv < float("inf")):
            # (its staleness then counts from the default interval: said, not silently)
            odd.append(f"interval_s: expected a number of seconds > 0, got {iv!r} "
                       f"(stale after {STALE_INTERVALS} x {DEFAULT_INTERVAL_S} s instead)")
            iv = None
        clean["interval_s"] = iv
        if odd:
            self._warn(f"{topic}: {'; '.join(odd)}; {'field' if len(odd) == 1 else 'fields'} ignored", topic)
        twins = None
        with self._lock:
            b = self._boards.setdefault(name, {"sources": set()})
            if state == "online" and not retained:     # a retained copy may be a board long gone
                twins = self._speakers(b, clean)
            if state == "offline":
                # The last will carries less: keep what the board said while it was online.
                clean = {k: v for k, v in clean.items() if v is not None}
            b.update(clean)
            b["sources"].add("mqtt")
            b["last_seen"] = self.clock()
            b["retained"] = retained
        if twins:
            self._warn(f"{topic}: two boards say they are {name}: {' and '.join(twins)}; the row shows whichever "
                       "spoke last (give each board its own hostname: provision --hostname)", f"{topic} twins")
        self.changed.set()
        return True

    def _clear(self, name: str) -> None:
        """An empty message on the board's topic: its status is cleared. A board mDNS still
        knows stays, as an mDNS board; otherwise the row goes."""
        with self._lock:
            b = self._boards.get(name)
            if b is None:
                return
            b["sources"].discard("mqtt")
            if b["sources"]:
                b.update(state="online", retained=False, speakers={})
            else:
                del self._boards[name]
        self.changed.set()

    def _speakers(self, b: dict[str, Any], status: Mapping[str, Any]) -> list[str] | None:
        """Who spoke on this topic within 2 intervals (by MAC, else IP); with the lock held.
        Two MACs, or a MAC-less IP heard again after another one, are two boards: their names."""
        mac, ip = status.get("mac"), status.get("ip")
        me = _mac_key(mac) or ip
        if not me:
            return None
        now = self.clock()
        window = STALE_INTERVALS * (status.get("interval_s") or DEFAULT_INTERVAL_S)
        heard: dict[str, tuple[str | None, str | None, float]] = b.setdefault("speakers", {})
        for k in [k for k, (_, _, t) in heard.items() if now - t > window]:
            del heard[k]
        back = me in heard and b.get("speaker") != me
        others = [k for k in heard if k != me]
        heard[me] = (mac, ip, now)
        b["speaker"] = me
        if not others or not (back or (mac and any(heard[k][0] for k in others))):
            return None
        return [f"MAC {m} at {i or '?'}" if m else f"{i} (no MAC)" for m, i, _ in (heard[k] for k in sorted(heard))]

    def ingest_mdns(self, hostname: str, ip: str | None, port: int | None, txt: Mapping[str, str],
                    ttl: int | None = None) -> None:
        """A `_workshop._tcp` answer: fills in boards that do not reach the broker (a board known
        from mDNS alone takes what it says now: a new IP, a reflashed image)."""
        with self._lock:
            b = self._boards.setdefault(hostname, {"sources": set()})
            b["sources"].add("mdns")
            b["mdns_ttl"] = ttl or b.get("mdns_ttl") or MDNS_TTL_S
            if "mqtt" not in b["sources"]:
                b.update(state="online", last_seen=self.clock(), retained=False)
                if ip:
                    b["ip"] = ip
                b["telnet"] = port or None          # announce advertises port 0 when telnet is not running
                b.update({k: txt[k] for k in ("board", "inputs", "project") if txt.get(k)})
            elif b.get("state") != "online":
                b.setdefault("ip", ip)
                if port:
                    b.setdefault("telnet", port)
                for k in ("board", "inputs", "project"):
                    if txt.get(k) and not b.get(k):
                        b[k] = txt[k]
        self.changed.set()

    def seen_mdns(self, hostname: str, when: float, ttl: int | None = None) -> None:
        """The board's mDNS records were last answered at `when` (epoch s): liveness of a board
        known from mDNS alone (MQTT boards are judged by their statuses)."""
        with self._lock:
            b = self._boards.get(hostname)
            if b is None or "mqtt" in b["sources"] or b.get("state") == "offline":
                return
            b["last_seen"] = max(when, b.get("last_seen") or 0.0)
            if ttl:
                b["mdns_ttl"] = ttl

    def leave_mdns(self, hostname: str) -> None:
        """mDNS removed the board's service (a goodbye, or its records expired): offline, unless
        its MQTT status says otherwise."""
        with self._lock:
            b = self._boards.get(hostname)
            if b is None or "mqtt" in b["sources"]:
                return
            b["state"] = "offline"
        self.changed.set()

    def _outdated(self, board: str | None, inputs: str | None) -> tuple[bool | None, str]:
        if self.expected is None:
            return None, "not compared"
        if not inputs:
            return None, "no build identity in the image"
        want = self.expected.inputs.get(board or "")
        if not want:
            return None, f"no build of {board or 'an unnamed board'} in {self.expected.source}"
        if want == inputs:
            return False, ""
        return True, f"image {inputs[:12]}, current build {want[:12]}"

    def rows(self, now: float | None = None) -> list[Row]:
        now = self.clock() if now is None else now
        with self._lock:
            boards = {k: dict(v, sources=set(v["sources"])) for k, v in self._boards.items()}
        rows = []
        for name, b in sorted(boards.items()):
            interval = b.get("interval_s") or DEFAULT_INTERVAL_S
            age = now - b["last_seen"] if b.get("last_seen") is not None else None
            state = b.get("state") or "online"
            # MQTT boards: 2 announce intervals; boards known from mDNS alone: their records' TTL.
            limit = STALE_INTERVALS * interval if "mqtt" in b["sources"] else b.get("mdns_ttl") or MDNS_TTL_S
            if state == "online" and age is not None and age > limit:
                state = "stale"
            outdated, why = self._outdated(b.get("board"), b.get("inputs"))
            reg = self._registry(name, b.get("mac"))
            rows.append(Row(
                hostname=name, state=state, ip=b.get("ip"), telnet=b.get("telnet"), board=b.get("board"),
                micropython=b.get("micropython"), inputs=b.get("inputs"), project=b.get("project"),
                outdated=outdated, outdated_reason=why, heap_free=b.get("heap_free"), rssi=b.get("rssi"),
                uptime_s=b.get("uptime_s"), interval_s=interval, last_seen=b.get("last_seen"),
                age_s=None if age is None else round(age, 1), retained=bool(b.get("retained")),
                sources=tuple(sorted(b["sources"])), mac=b.get("mac") or reg.get("mac"),
                sticker=None if reg.get("sticker") is None else str(reg["sticker"]), registry={k: v for k, v in reg.items() if _jsonable(v)}))
        return rows

    def _registry(self, name: str, mac: str | None) -> dict[str, Any]:
        """The registry's record of this board: by the MAC its status reports, else by hostname."""
        if not (self.lookup or self.lookup_mac):
            return {}
        try:
            by_name = dict(self.lookup(name) or {}) if self.lookup else {}
            by_mac = dict(self.lookup_mac(mac) or {}) if mac and self.lookup_mac else {}
        except Exception as e:  # noqa: BLE001 - a broken registry must not hide the room
            self._warn(f"registry lookup of {name} failed: {e}", f"registry {name}")
            return {}
        if not mac:
            return by_name
        theirs = by_name.get("mac")
        if theirs and _mac_key(theirs) != _mac_key(mac):
            sticker = f", sticker {by_name['sticker']}" if by_name.get("sticker") is not None else ""
            mine = (f"shown with its own MAC's sticker {by_mac['sticker']}" if by_mac.get("sticker") is not None
                    else "no sticker shown (the registry does not know its MAC)")
            self._warn(f"{name}: its status says MAC {mac}, but the registry has {name} as another board "
                       f"(MAC {theirs}{sticker}): {mine}", f"registry {name}")
            return by_mac
        return by_mac or by_name

    def updates(self, poll: float = 1.0) -> Iterator[list[Row]]:
        """The rows now, then again each time the room changes: a status arriving, or a board
        turning stale by the clock alone, which no message announces (checked every `poll` s)."""
        while True:
            self.changed.clear()
            rows = self.rows()
            yield rows
            states = [(r.hostname, r.state) for r in rows]
            while not self.changed.wait(poll) and [(r.hostname, r.state) for r in self.rows()] == states:
                pass

    def report(self, now: float | None = None) -> dict[str, Any]:
        rows = self.rows(now)
        counts = {s: sum(r.state == s for r in rows) for s in STATES}
        counts["outdated"] = sum(bool(r.outdated) for r in rows)
        return {"boards": [r.to_json() for r in rows], "counts": counts,
                "expected": self.expected.source if self.expected else None,
                "warnings": self.warnings, "warnings_dropped": self.warnings_dropped,
                "time": self.clock() if now is None else now}


def registry_lookups(registry: Any) -> tuple[Lookup, Lookup]:
    """A `workshop.registry.Registry` -> (by hostname, by MAC) lookups for `Roster`."""
    from .registry import RegistryError, normalize_mac

    def by_hostname(hostname: str) -> Mapping[str, Any] | None:
        record = registry.by_hostname(hostname)
        return record.to_dict() if record else None

    def by_mac(mac: str) -> Mapping[str, Any] | None:
        try:
            normalize_mac(mac)
        except RegistryError:           # not a MAC at all: nothing to find
            return None
        record = registry.get(mac)      # a locked or damaged registry: the roster's warning says so
        return record.to_dict() if record else None

    return by_hostname, by_mac


def _mac_key(mac: str | None) -> str:
    """A MAC in any spelling (AA-BB-..., aa:bb:...) -> its 12 hex digits, '' if none."""
    return "".join(c for c in (mac or "").lower() if c in "0123456789abcdef")


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


# --- live sources --------------------------------------------------------------------------------

def check_interfaces(values: Iterable[str]) -> list[str]:
    """--interface: IPv4 addresses of this machine's interfaces (mDNS is browsed over IPv4)."""
    import ipaddress

    out = []
    for value in values:
        try:
            address = ipaddress.ip_address(str(value).strip())
        except ValueError:
            address = None
        if address is None or address.version != 4:
            raise RosterError(f"--interface {value!r}: expected the IPv4 address of one of this machine's "
                              "interfaces, e.g. 192.168.1.20 (see 'ip -4 addr')")
        out.append(str(address))
    return out


class RoomWatcher:
    """Feeds a `Roster` from MQTT (paho-mqtt) and mDNS (python-zeroconf) until `stop()`.

    `mqtt`: (host, port) of the broker, or None. `mdns`: browse `_workshop._tcp`;
    `interfaces`: zeroconf's interface list (None: all). A broker that cannot be reached is a
    `RosterError` from `start()`; a broker that goes away later is a warning, and paho reconnects.

    mDNS: zeroconf reports a service added, updated or removed (a goodbye; a silent board's PTR
    lingers for zeroconf's minimum of ~19 min). So every `mdns_check` s a thread reads when each
    board last answered (its SRV record in zeroconf's cache) and asks it again (an SRV query) once
    half of the record's TTL has passed: a board that stops answering turns stale after its TTL.
    """

    def __init__(self, roster: Roster, mqtt: tuple[str, int] | None = None, *, mdns: bool = True,
                 interfaces: Iterable[str] | None = None, user: str | None = None, password: str | None = None,
                 connect_timeout: float = 5.0, mdns_check: float = MDNS_CHECK_S) -> None:
        self.roster = roster
        self.mqtt = mqtt
        self.mdns = mdns
        self.interfaces = check_interfaces(interfaces) if interfaces is not None else None
        self.user = user
        self.password = password
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._zc: Any = None
        self._browser: Any = None
        self.mdns_check = mdns_check
        self._services: dict[str, str] = {}          # mDNS instance name -> hostname
        self._stopping = threading.Event()
        self._liveness: threading.Thread | None = None
        self.subscribed = threading.Event()

    def start(self) -> RoomWatcher:
        try:
            if self.mqtt:
                self._start_mqtt()
            if self.mdns:
                self._start_mdns()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_mqtt(self) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        assert self.mqtt
        host, port = self.mqtt
        connected = threading.Event()
        failure: list[str] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"workshop-roster-{time.time_ns() % 10**9}")
        if self.user:
            client.username_pw_set(self.user, self.password)

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
            if reason.is_failure:
                failure.append(str(reason))
                connected.set()
                return
            c.subscribe(STATUS_TOPIC, qos=0)
            connected.set()

        def on_subscribe(*_: Any) -> None:
            self.subscribed.set()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            # An exception here would end paho's loop: every later message lost, for ever (retained).
            try:
                self.roster.ingest_mqtt(msg.topic, msg.payload, bool(msg.retain))
            except Exception as e:  # noqa: BLE001
                self.roster._warn(f"{msg.topic}: message not handled ({type(e).__name__}: {e}), skipped", msg.topic)

        def on_disconnect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
            if connected.is_set() and not failure and reason.is_failure:
                self.roster._warn(f"lost the broker at {host}:{port} ({reason}); reconnecting", "broker")

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        try:
            client.connect(host, port, keepalive=30)
        except OSError as e:
            raise RosterError(f"cannot reach the MQTT broker at {host}:{port}: {e.strerror or e} "
                              "(is it running? ./kit broker)") from None
        client.loop_start()
        self._client = client
        if not connected.wait(self.connect_timeout):
            raise RosterError(f"the MQTT broker at {host}:{port} did not answer within {self.connect_timeout:g} s")
        if failure:
            raise RosterError(f"the MQTT broker at {host}:{port} refused us: {failure[0]}")

    def _start_mdns(self) -> None:
        from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

        kw: dict[str, Any] = {"ip_version": IPVersion.V4Only}
        if self.interfaces is not None:
            kw["interfaces"] = self.interfaces
        try:
            self._zc = Zeroconf(**kw)
        except (OSError, ValueError) as e:
            where = f" on --interface {','.join(self.interfaces)}" if self.interfaces else ""
            raise RosterError(f"mDNS cannot listen{where}: {getattr(e, 'strerror', None) or e} "
                              "(give an IPv4 address this machine has, see 'ip -4 addr')") from None
        roster = self.roster

        def on_change(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            # zeroconf's thread: an exception here must not end the browsing.
            try:
                changed(zeroconf, service_type, name, state_change)
            except Exception as e:  # noqa: BLE001
                roster._warn(f"mDNS {name}: answer not handled ({type(e).__name__}: {e}), skipped", f"mdns {name}")

        def changed(zeroconf: Any, service_type: str, name: str, state_change: Any) -> None:
            if state_change is ServiceStateChange.Removed:  # a goodbye: no more asking after it
                roster.leave_mdns(self._services.pop(name, "") or name.split(".")[0])
                return
            info = zeroconf.get_service_info(service_type, name, timeout=1500)
            if info is None:
                return
            host = (info.server or name).split(".")[0]
            self._services[name] = host
            addrs = info.parsed_addresses()
            txt = {}
            for k, v in (info.properties or {}).items():
                try:
                    txt[k.decode()] = (v or b"").decode()
                except (UnicodeDecodeError, AttributeError):
                    continue
            roster.ingest_mdns(host, addrs[0] if addrs else None, info.port or None, txt)

        self._browser = ServiceBrowser(self._zc, SERVICE_TYPE, handlers=[on_change])
        self._liveness = threading.Thread(target=self._check_mdns, name="roster-mdns", daemon=True)
        self._liveness.start()

    def _check_mdns(self) -> None:
        """When each mDNS board last answered; ask again once half its records' TTL has passed."""
        from zeroconf import DNSOutgoing, DNSQuestion, current_time_millis

        srv, class_in, query = 33, 1, 0              # DNS: type SRV, class IN, flags of a query
        while not self._stopping.wait(self.mdns_check):
            zc = self._zc
            if zc is None:
                return
            for name, host in list(self._services.items()):
                try:
                    now = current_time_millis()
                    records = zc.cache.get_all_by_details(name, srv, class_in)
                    newest = max(records, key=lambda r: r.created, default=None)
                    if newest is None:  # silent past its TTL (stale by now): asked enough; the
                        self._services.pop(name, "")  # browser adds it again when it answers
                        continue
                    age = (now - newest.created) / 1000
                    self.roster.seen_mdns(host, self.roster.clock() - age, newest.ttl)
                    if age > newest.ttl / 2:
                        out = DNSOutgoing(query)
                        out.add_question(DNSQuestion(name, srv, class_in))
                        zc.send(out)
                except Exception as e:  # noqa: BLE001 - one board's records must not end the checks
                    self.roster._warn(f"mDNS {name}: cannot check it ({type(e).__name__}: {e})", f"mdns {name}")

    def forget(self, hostnames: Iterable[str], timeout: float = 5.0) -> dict[str, str]:
        """Clear each board's retained status on the broker (an empty retained message, the MQTT
        way), so a board renamed or gone no longer haunts the roster as "offline"; each name the
        roster does not know is left alone. Returns {hostname: what was done}, in the order given.
        A board still running announces itself again on its next tick. RosterError when there is
        no broker, or it does not confirm within `timeout`."""
        if self._client is None:
            raise RosterError("--forget needs the broker: give --mqtt HOST[:PORT] (statuses are kept there)")
        # In any case, as select() matches; cleared under the spelling its topic has (MQTT topics
        # are case-sensitive: a board provisioned before hostnames were lowercased keeps its own).
        known = {r.hostname.lower(): r for r in self.roster.rows()}
        done: dict[str, str] = {}
        for asked in dict.fromkeys(h.strip() for h in hostnames if h.strip()):
            row = known.get(asked.lower())
            if row is None:
                done.setdefault(asked, "not in the roster: nothing to forget")
                continue
            name = row.hostname
            if name in done:
                continue
            if any(c in name for c in "+#/"):
                done[name] = "not a hostname (MQTT wildcard or level): left alone"
                continue
            info = self._client.publish(f"workshop/{name}/status", b"", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as e:      # paho: not connected, queue full
                raise RosterError(f"--forget {name}: the broker did not take it: {e}") from None
            if not info.is_published():
                raise RosterError(f"--forget {name}: the broker did not confirm within {timeout:g} s")
            done[name] = f"forgotten (was {row.state})"
        return done

    def stop(self) -> None:
        self._stopping.set()
        if self._client is not None:
            try:
                self._client.disconnect()
                self._client.loop_stop()
            except Exception:  # noqa: BLE001 - stopping must not fail
                pass
            self._client = None
        if self._browser is not None:
            self._browser.cancel()
            self._browser = None
        if self._liveness is not None:
            self._liveness.join(2)
            self._liveness = None
        if self._zc is not None:
            self._zc.close()
            self._zc = None

    def __enter__(self) -> RoomWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def snapshot(mqtt: tuple[str, int] | None, *, wait: float = 2.0, expected: Expected | None = None,
             lookup: Lookup | None = None, mdns: bool = True, interfaces: Iterable[str] | None = None,
             user: str | None = None, password: str | None = None) -> Roster:
    """Listen for `wait` seconds (retained statuses arrive at once; mDNS answers take a moment)."""
    if not mqtt and not mdns:
        raise RosterError("nothing to listen to: give --mqtt HOST or allow mDNS")
    roster = Roster(expected, lookup)
    with RoomWatcher(roster, mqtt, mdns=mdns, interfaces=interfaces, user=user, password=password):
        time.sleep(wait)
    return roster


def select(rows: Iterable[Row], *, hosts: Iterable[str] = (), outdated: bool = False) -> list[Row]:
    """Rows by hostname (in the order asked; a host name's case does not matter, as in DNS and
    mDNS: LAB-07 is lab-07), or the outdated ones, or all."""
    rows = list(rows)
    names = [h for h in hosts if h]
    if names:
        by = {r.hostname: r for r in rows}
        folded: dict[str, Row] = {}
        for r in rows:
            folded.setdefault(r.hostname.lower(), r)
        return [by.get(h) or folded.get(h.lower()) or Row(hostname=h, state="unknown") for h in names]
    if outdated:
        return [r for r in rows if r.outdated]
    return rows
