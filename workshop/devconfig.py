"""The workshop config in its one shape (/workshop.json on a device; workshop.toml or .json on
the host): reading a file, what in it is secret, how it may be shown, port numbers, and the
numbers a command line gives (seconds, counts).

One definition of a secret serves every caller: provisioning masks what it writes and every
event it emits, smoke reports mask the device config they quote, and a release refuses any
output that contains one. A key is secret when its name says so (`password`, `secret`,
`passphrase`, `token`, or exactly `key`/`psk`), at any depth: `[wifi] password`,
`[telnet] password`, `[mqtt] password` alike.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MASK = "***"
_SECRET_PARTS = ("password", "secret", "passphrase", "token")
_SECRET_NAMES = ("key", "psk")


class DevConfigError(ValueError):
    """The config file or a value in it is unusable; the message names the file or key."""


MIN_BAUD = 300  # esptool's and a UART's floor: a smaller --baud is a typo, not a rate


def is_secret_key(key: str) -> bool:
    """True for a key whose value must never be shown or published."""
    k = key.lower()
    return k in _SECRET_NAMES or any(part in k for part in _SECRET_PARTS)


# Secrets a command line may leave to the environment (kept out of shell history): the
# workshop.toml key -> its variable. The release scan looks for each of them too.
SECRET_ENV: dict[str, str] = {
    "wifi.password": "WORKSHOP_WIFI_PASSWORD",
    "telnet.password": "WORKSHOP_TELNET_PASSWORD",
    "mqtt.password": "WORKSHOP_MQTT_PASSWORD",
}


def secret_option(value: str | None, key: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret option as given, else its environment variable's value (SECRET_ENV), else None."""
    return value or (os.environ if env is None else env).get(SECRET_ENV[key]) or None


def secret_items(doc: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every secret key in `doc`, nested tables included: ('mqtt.password', 'x')."""
    found: list[tuple[str, Any]] = []
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            found += secret_items(value, name + ".")
        elif is_secret_key(str(key)):
            found.append((name, value))
    return found


def secret_values(doc: Mapping[str, Any]) -> list[str]:
    """The non-empty string secrets in `doc` (what to mask in text)."""
    return [v for _, v in secret_items(doc) if isinstance(v, str) and v]


def masked(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it may be shown: every secret value replaced by ***."""
    return {key: masked(value) if isinstance(value, Mapping) else MASK if is_secret_key(str(key)) else value
            for key, value in doc.items()}


def load_file(path: Path) -> dict[str, Any]:
    """A workshop config file: JSON when it ends in .json, else TOML; a table at the top."""
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DevConfigError(f"{path}: not found") from None
    except OSError as e:
        raise DevConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        data = json.loads(raw) if kind == "JSON" else tomllib.loads(raw.decode())
    except (ValueError, tomllib.TOMLDecodeError) as e:   # UnicodeDecodeError is a ValueError
        raise DevConfigError(f"{path}: not valid {kind}: {e}") from None
    if not isinstance(data, dict):
        raise DevConfigError(f"{path}: expected a {kind} object at the top, got {type(data).__name__}")
    return data


def seconds(value: Any, what: str, *, zero: bool = False) -> float:
    """A time budget from a number or a string ("2.5" from a command line): finite, above 0 (or 0
    itself when `zero`); DevConfigError naming `what` otherwise."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        s = -1.0
    if not (s > 0 or zero and s == 0) or s == float("inf"):
        raise DevConfigError(f"{what}: expected seconds {'>= 0' if zero else '> 0'}, got {value!r}")
    return s


def _whole(value: Any) -> int | None:
    """An int, or a string of digits ("8" from a command line or TOML) as one; None for anything
    else (a bool too)."""
    n = int(value.strip()) if isinstance(value, str) and value.strip().isdigit() else value
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def count(value: Any, what: str) -> int:
    """A number of things (workers, boards) from an int or a string of digits: 1 or more."""
    n = _whole(value)
    if n is None or n < 1:
        raise DevConfigError(f"{what}: expected a whole number >= 1, got {value!r}")
    return n


def baud(value: Any, what: str) -> int:
    """A serial baud rate from an int or a string of digits: MIN_BAUD or more."""
    n = _whole(value)
    if n is None or n < MIN_BAUD:
        raise DevConfigError(f"{what}: expected a baud rate such as 115200 (>= {MIN_BAUD}), got {value!r}")
    return n


def port_number(value: Any, what: str) -> int:
    """A TCP/UDP port from an int or a string of digits ("1883" from TOML or a command line)."""
    port = _whole(value)
    if port is None or not 0 < port < 65536:
        raise DevConfigError(f"{what}: expected a port number 1..65535, got {value!r}")   # as it was given
    return port


def _makeable_folder(folder: Path, value: Any, what: str) -> None:
    """`folder` is one, or can be made: the nearest existing folder it names is a writable folder."""
    import os

    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise DevConfigError(f"{what} {value}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DevConfigError(f"{what} {value}: not writable here")


def output_folder(value: Any, what: str) -> Path:
    """A folder the run will write files into (per-board logs), checked before the work starts:
    a folder, or one that can be made (the nearest existing folder it names is writable)."""
    if not str(value).strip():
        raise DevConfigError(f"{what}: expected a folder path, got {value!r}")
    path = Path(str(value)).expanduser()
    _makeable_folder(path, value, what)
    return path


def output_file(value: Any, what: str) -> Path:
    """A file the run will write its report or results to, checked before the work starts (a run
    must not end in a traceback, with its results lost, because the path was a folder): not a
    folder itself; folders it names that do not exist yet are made when it is written, so the
    nearest existing one must be a writable folder."""
    import os

    if not str(value).strip():
        raise DevConfigError(f"{what}: expected a file path, got {value!r}")
    path = Path(str(value)).expanduser()
    if path.is_dir():
        raise DevConfigError(f"{what} {value}: is a folder: give a file path (e.g. {path / 'report.json'})")
    _makeable_folder(path.parent, value, what)
    if path.exists() and not os.access(path, os.W_OK):
        raise DevConfigError(f"{what} {value}: not writable here")
    return path
