"""What a smoke run produces: per device, a list of checks (pass, fail, skip) and the facts read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PASS, FAIL, SKIP = "pass", "fail", "skip"


class SmokeError(ValueError):
    """The expectation could not be built (missing build.json, unknown board in an index...)."""


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
    interrupted: bool = False       # Ctrl-C cut the board's checks short (or they never started)
    mac: str | None = None          # asked for (smoke --registry): the MAC its firmware reports
    mac_error: str | None = None    # ...and why it is None when it could not be read

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.interrupted and all(c.status != FAIL for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "ok": self.ok, "interrupted": self.interrupted, "duration_s": self.duration_s,
                "expected": self.expected, "mac": self.mac, **({"mac_error": self.mac_error} if self.mac_error else {}),
                "facts": self.facts, "checks": [asdict(c) for c in self.checks]}


@dataclass(frozen=True)
class NetworkOptions:
    mqtt_host: str | None = None       # default: the device config's mqtt.broker
    mqtt_port: int | None = None
    http_url: str | None = "http://micropython.org/ks/test.html"
    wifi_timeout: float = 20.0
    mqtt_timeout: float = 5.0          # each of connect, subscribe, the message coming back (on the device)
    http_timeout: float = 10.0         # socket timeout of the GET (on the device)
