"""Board and port data: boards/*.toml and ports/*/port.toml -> frozen dataclasses.

Every error names the file and the key, so a person can fix the data without reading code.
Chip facts (names, bootloader offsets) come from esptool's own chip definitions.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

HOST_CHIP = "host"
# esptool's accepted --flash-size values (the "detect"/"keep" pseudo-sizes are not board facts).
FLASH_SIZES = ("256KB", "512KB", "1MB", "2MB", "4MB", "8MB", "16MB", "32MB", "64MB", "128MB")


class ConfigError(ValueError):
    """Board or port data is missing or malformed; the message names file and key."""


# --- the project: where boards/, ports/, modules/ and manifest.py live, and outputs go -------

PROJECT_ENV = "WORKSHOP_PROJECT"
PROJECT_MARKERS = ("boards", "ports", "modules", "manifest.py")


class NoProjectError(ConfigError):
    """No kit checkout to work in: the message says where we looked and what to do."""


def is_project(path: Path) -> bool:
    """A kit checkout: boards/, ports/ and modules/ folders and a manifest.py."""
    return all((path / m).is_file() if m.endswith(".py") else (path / m).is_dir() for m in PROJECT_MARKERS)


def project_root(root: Path | None = None) -> Path:
    """The kit checkout to read board data from and write dist/, logs/, release/ into.

    `root` when given; else $WORKSHOP_PROJECT; else the current folder or its nearest parent
    that is a checkout; else the checkout this package is running from (an editable install).
    An installed package (site-packages) is never a project: outputs never go there. With no
    checkout anywhere, NoProjectError says what to do.
    """
    if root is not None:
        return root
    override = os.environ.get(PROJECT_ENV)
    if override:
        path = Path(override).expanduser().resolve()
        if not is_project(path):
            raise NoProjectError(f"${PROJECT_ENV}={override}: not a workshop kit checkout (it needs "
                                 f"{', '.join(PROJECT_MARKERS)})")
        return path
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if is_project(folder):
            return folder
    source = Path(__file__).resolve().parent.parent
    if is_project(source):
        return source
    raise NoProjectError(f"no workshop kit checkout in {cwd} or any folder above it: run this inside the "
                         f"kit's checkout (the folder holding {', '.join(PROJECT_MARKERS)}), or set "
                         f"{PROJECT_ENV}=/path/to/the/checkout")


def __getattr__(name: str) -> Any:
    # PROJECT_ROOT, found when asked for (not at import): `from workshop.config import PROJECT_ROOT`
    # keeps working inside a checkout and fails with NoProjectError's advice outside one.
    if name == "PROJECT_ROOT":
        return project_root()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cache_dir() -> Path:
    """Where fetched sources and build trees live: outside the repository, shared by CI runs.

    Always absolute and resolved: a relative $WORKSHOP_CACHE is read from the current folder
    (make -C and docker -v would read it elsewhere), and a symlinked cache home gives one
    spelling of every path (cache keys, mounts, messages)."""
    override = os.environ.get("WORKSHOP_CACHE")
    path = Path(override).expanduser() if override else Path(platformdirs.user_cache_dir("workshop-kit"))
    return path.resolve()


@dataclass(frozen=True)
class PortOutput:
    """One file the port's build leaves in its build directory."""

    file: str
    # "bootloader" = the chip's bootloader offset from esptool; an int = fixed; None = not flashed.
    offset: str | int | None
    flash: bool = True


@dataclass(frozen=True)
class NativeSource:
    """One pinned source repository a native toolchain is prepared from."""

    name: str
    owner: str
    repo: str
    commit: str
    exclude: tuple[str, ...] = ()      # sparse-checkout patterns left out of the checkout


@dataclass(frozen=True)
class NativeSpec:
    """How a port's native toolchain is prepared ([native] in port.toml; empty = tools on PATH only)."""

    compiler: str | None = None        # the compiler whose --version build.json records
    # What to do when that compiler gives no version (not on PATH, not set up), for the message.
    install: str = "install it"
    prepare: str | None = None         # recipe name in workshop.source.RECIPES, run by `invoke setup`
    python: tuple[str, ...] = ()       # pip requirements for the prepared folder's own venv
    make_args: tuple[str, ...] = ()    # with {sdk}, {python}, {port} filled in by the plan
    sources: tuple[NativeSource, ...] = ()


@dataclass(frozen=True)
class BudgetSpec:
    """Where an image's size budget is read after linking ([budget] in port.toml)."""

    map: str                               # the linker map in the build tree (its memory regions)
    regions: tuple[tuple[str, str], ...]   # (our name, the linker's MEMORY region), e.g. ("iram", "iram1_0_seg")


@dataclass(frozen=True)
class Port:
    name: str
    directory: Path
    make_dir: str
    board_var: str | None
    variant_var: str
    make_args: tuple[str, ...]
    submodules: tuple[str, ...]
    docker_images: dict[str, str]
    native_tools: tuple[str, ...]
    chips: tuple[str, ...]                   # the chips its boards may name (esptool chip names, or 'host')
    outputs: tuple[PortOutput, ...]
    mpy_cross_args: tuple[str, ...]
    # Stock manifest entries that our stack replaces (checked by `invoke check`).
    replaces: tuple[str, ...] = ()
    # esptool's --flash-size when writing this port's images ("detect" where modules vary).
    write_flash_size: str = "keep"
    btree_submodule: str | None = None       # needed only by boards with btree = true
    btree_off: tuple[str, ...] = ()          # make arguments that build without btree
    native: NativeSpec = NativeSpec()
    budget: BudgetSpec | None = None
    elf: str | None = None                   # the linked image with symbols, in the build tree

    @property
    def manifest(self) -> Path:
        return self.directory / "manifest.py"

    def docker_image(self, micropython_version: str) -> str | None:
        return self.docker_images.get(micropython_version) or self.docker_images.get("default")


@dataclass(frozen=True)
class FlashRegion:
    file: str
    offset: int


@dataclass(frozen=True)
class Board:
    name: str
    port: Port
    mp_board: str | None
    variant: str | None
    chip: str
    flash_size: str | None
    min_free_heap: int
    description: str
    source: Path
    extra: dict[str, Any] = field(default_factory=dict)
    btree: bool = True                 # MicroPython's default; the workshop boards set false
    # Bytes that must stay free per budget region after linking (e.g. {"iram": 1024}).
    margins: dict[str, int] = field(default_factory=dict)
    led_pin: int | None = None           # a plain GPIO LED `identify` blinks; None = none known
    led_active_low: bool = False         # lit when the pin is low (ESP8266 modules)
    # The ROM cannot leave download mode by itself after a flash over the chip's own USB (the
    # ESP32-S2's USB-OTG: esptool says "reset the chip manually"): the station asks for RESET.
    manual_reset_after_flash: bool = False

    @property
    def is_host(self) -> bool:
        return self.chip == HOST_CHIP

    @property
    def chip_name(self) -> str:
        """esptool's display name (e.g. 'ESP32-S3'), or 'host'."""
        if self.is_host:
            return HOST_CHIP
        return chip_definition(self.chip).CHIP_NAME

    def flash_regions(self) -> tuple[FlashRegion, ...]:
        """Files to write and where, resolved from port data and esptool's chip facts."""
        regions = []
        for out in self.port.outputs:
            if not out.flash or out.offset is None:
                continue
            if out.offset == "bootloader":
                offset = int(chip_definition(self.chip).BOOTLOADER_FLASH_OFFSET)
            else:
                offset = int(out.offset)
            regions.append(FlashRegion(out.file, offset))
        return tuple(regions)

    @property
    def image_files(self) -> tuple[str, ...]:
        return tuple(o.file for o in self.port.outputs)


def chip_definition(chip: str) -> Any:
    from esptool.targets import CHIP_DEFS

    try:
        return CHIP_DEFS[chip]
    except KeyError:
        raise ConfigError(f"unknown chip {chip!r}: esptool knows {', '.join(CHIP_DEFS)}") from None


def known_chips() -> tuple[str, ...]:
    from esptool.targets import CHIP_DEFS

    return (*CHIP_DEFS, HOST_CHIP)


# --- loading -------------------------------------------------------------------------------


def _load_toml(path: Path, root: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{_rel(path, root)}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{_rel(path, root)}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{_rel(path, root)}: not UTF-8 text") from None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


class _Reader:
    """Typed access to one TOML table, with errors that name file and key."""

    def __init__(self, path: Path, data: dict[str, Any], root: Path, prefix: str = "") -> None:
        self.path, self.data, self.root, self.prefix = path, data, root, prefix
        self.used: set[str] = set()

    def fail(self, key: str, expected: str, got: Any) -> ConfigError:
        return ConfigError(f"{_rel(self.path, self.root)}: {self.prefix}{key}: expected {expected}, got {got!r}")

    def get(self, key: str, kind: type | tuple[type, ...], expected: str, default: Any = ..., ) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise ConfigError(f"{_rel(self.path, self.root)}: {self.prefix}{key}: missing (expected {expected})")
            return default
        value = self.data[key]
        # bool is an int subclass: a `true` where a number belongs is a mistake, not a 1.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(key, expected, value)
        if not isinstance(value, kind):
            raise self.fail(key, expected, value)
        return value

    def str_list(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        value = self.get(key, list, "a list of strings", list(default))
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of strings", value)
        return tuple(value)

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(f"{_rel(self.path, self.root)}: {self.prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(self.used))})")


def load_port(name: str, root: Path | None = None) -> Port:
    root = project_root(root)
    directory = root / "ports" / name
    path = directory / "port.toml"
    if not path.is_file():
        available = sorted(p.name for p in (root / "ports").iterdir() if (p / "port.toml").is_file())
        raise ConfigError(f"{_rel(path, root)}: no such port {name!r} (ports: {', '.join(available)})")
    r = _Reader(path, _load_toml(path, root), root)
    make = _Reader(path, r.get("make", dict, "a [make] table"), root, "make.")
    docker = r.get("docker", dict, "a [docker] table of MicroPython version -> image", {})
    if not all(isinstance(k, str) and isinstance(v, str) and v for k, v in docker.items()):
        raise r.fail("docker", "a table of MicroPython version -> image name", docker)
    outputs = []
    for i, raw in enumerate(r.get("outputs", list, "a list of [[outputs]] tables")):
        if not isinstance(raw, dict):
            raise r.fail(f"outputs[{i}]", "a table", raw)
        o = _Reader(path, raw, root, f"outputs[{i}].")
        offset = o.get("offset", (str, int), '"bootloader" or a number', None)
        if isinstance(offset, str) and offset != "bootloader":
            raise o.fail("offset", '"bootloader" or a number', offset)
        outputs.append(PortOutput(o.get("file", str, "a file name"), offset, o.get("flash", bool, "true/false", True)))
        o.reject_unknown()
    if not outputs:
        raise r.fail("outputs", "at least one [[outputs]] table", [])
    port = Port(
        name=r.get("name", str, "the port name"),
        directory=directory,
        make_dir=make.get("dir", str, "a path inside the MicroPython checkout"),
        board_var=make.get("board_var", str, "a make variable name", None),
        variant_var=make.get("variant_var", str, "a make variable name", "BOARD_VARIANT"),
        make_args=make.str_list("args"),
        submodules=r.str_list("submodules"),
        docker_images=dict(docker),
        native_tools=r.str_list("native_tools"),
        chips=_port_chips(r),
        outputs=tuple(outputs),
        mpy_cross_args=r.str_list("mpy_cross_args"),
        replaces=r.str_list("replaces"),
        write_flash_size=r.get("write_flash_size", str, '"keep", "detect" or a size', "keep"),
        btree_submodule=r.get("btree_submodule", str, "a submodule path", None),
        btree_off=r.str_list("btree_off"),
        native=_native_spec(path, r.get("native", dict, "a [native] table", {}), root),
        budget=_budget_spec(path, r.get("budget", dict, "a [budget] table", None), root),
        elf=r.get("elf", str, "a file in the build tree", None),
    )
    make.reject_unknown()
    r.reject_unknown()
    if port.write_flash_size not in ("keep", "detect", *FLASH_SIZES):
        raise r.fail("write_flash_size", '"keep", "detect" or one of ' + ", ".join(FLASH_SIZES), port.write_flash_size)
    if port.name != name:
        raise r.fail("name", repr(name) + " (the folder's name)", port.name)
    for i, out in enumerate(port.outputs):   # the bootloader offset is a fact of an esptool chip
        if out.offset == "bootloader" and HOST_CHIP in port.chips:
            raise r.fail(f"outputs[{i}].offset", f"a number (chips has {HOST_CHIP!r}, which has no bootloader)",
                         out.offset)
    return port


def _port_chips(r: _Reader) -> tuple[str, ...]:
    """The chips a port's boards may name: data in its port.toml, each one esptool knows (or 'host')."""
    expected = "esptool chip names or 'host'"
    r.get("chips", list, f"a list of {expected}")    # required: a missing key is named as every one is
    chips = r.str_list("chips")
    if not chips:
        raise r.fail("chips", f"at least one of the {expected}", [])
    for chip in chips:
        if chip not in known_chips():
            raise r.fail("chips", f"{expected} (esptool knows {', '.join(known_chips())})", chip)
    if len(set(chips)) != len(chips):
        raise r.fail("chips", "each chip once", list(chips))
    return chips


def _native_spec(path: Path, data: dict[str, Any], root: Path) -> NativeSpec:
    n = _Reader(path, data, root, "native.")
    sources = []
    for i, raw in enumerate(n.get("sources", list, "a list of [[native.sources]] tables", [])):
        if not isinstance(raw, dict):
            raise n.fail(f"sources[{i}]", "a table", raw)
        s = _Reader(path, raw, root, f"native.sources[{i}].")
        repo = s.get("repo", str, "'owner/name'")
        commit = s.get("commit", str, "a full 40-digit commit")
        if repo.count("/") != 1:
            raise s.fail("repo", "'owner/name'", repo)
        if len(commit) != 40 or any(c not in "0123456789abcdef" for c in commit):
            raise s.fail("commit", "a full 40-digit commit", commit)
        owner, name = repo.split("/")
        sources.append(NativeSource(s.get("name", str, "a folder name"), owner, name, commit, s.str_list("exclude")))
        s.reject_unknown()
    spec = NativeSpec(
        compiler=n.get("compiler", str, "a compiler command", None),
        install=n.get("install", str, "what to do when the compiler gives no version", "install it"),
        prepare=n.get("prepare", str, "a recipe name", None),
        python=n.str_list("python"),
        make_args=n.str_list("make_args"),
        sources=tuple(sources),
    )
    n.reject_unknown()
    return spec


def _budget_spec(path: Path, data: dict[str, Any] | None, root: Path) -> BudgetSpec | None:
    if data is None:
        return None
    b = _Reader(path, data, root, "budget.")
    regions = b.get("regions", dict, "a table of name -> linker memory region")
    if not regions or not all(isinstance(v, str) for v in regions.values()):
        raise b.fail("regions", "a table of name -> linker memory region", regions)
    spec = BudgetSpec(b.get("map", str, "a file in the build tree"), tuple(regions.items()))
    b.reject_unknown()
    return spec


def load_board(path: Path, root: Path | None = None) -> Board:
    root = project_root(root)
    r = _Reader(path, _load_toml(path, root), root)
    name = path.stem
    port_name = r.get("port", str, "a folder name under ports/")
    try:
        port = load_port(port_name, root)
    except ConfigError as e:
        raise ConfigError(f"{_rel(path, root)}: port: {e}") from None
    chip = r.get("chip", str, "an esptool chip name or 'host'")
    if chip not in known_chips():
        raise r.fail("chip", f"one of {', '.join(known_chips())}", chip)
    if chip not in port.chips:
        raise ConfigError(f"{_rel(path, root)}: chip: {chip!r} is not a chip of port {port.name} "
                          f"({', '.join(port.chips)})")
    flash_size = r.get("flash_size", str, "'4MB' and the like", None)
    if chip == HOST_CHIP:
        if flash_size is not None:
            raise r.fail("flash_size", "nothing for a host board", flash_size)
    elif flash_size not in FLASH_SIZES:
        raise r.fail("flash_size", f"one of {', '.join(repr(s) for s in FLASH_SIZES)}", flash_size)
    mp_board = r.get("board", str, "a MicroPython BOARD name", None)
    if port.board_var and not mp_board:
        raise ConfigError(f"{_rel(path, root)}: board: missing (port {port.name} builds with {port.board_var}=...)")
    min_heap = r.get("min_free_heap", int, "a number of bytes")
    if min_heap <= 0:
        raise r.fail("min_free_heap", "a positive number of bytes", min_heap)
    board = Board(
        name=name,
        port=port,
        mp_board=mp_board,
        variant=r.get("variant", str, "a MicroPython variant name", None) or None,
        chip=chip,
        flash_size=flash_size,
        min_free_heap=min_heap,
        description=r.get("description", str, "a short text", ""),
        source=path,
        btree=r.get("btree", bool, "true/false", True),
        margins=_margins(r, port),
        led_pin=r.get("led_pin", int, "a GPIO number", None),
        led_active_low=r.get("led_active_low", bool, "true or false", False),
        manual_reset_after_flash=r.get("manual_reset_after_flash", bool, "true or false", False),
    )
    if not board.btree and not port.btree_off:
        raise r.fail("btree", f"true (port {port.name} has no btree_off in its port.toml)", False)
    r.reject_unknown()
    return board


def _margins(r: _Reader, port: Port) -> dict[str, int]:
    margins = r.get("margins", dict, "a table of budget region -> bytes", {})
    known = tuple(name for name, _ in port.budget.regions) if port.budget else ()
    for key, value in margins.items():
        if key not in known:
            raise r.fail(f"margins.{key}", f"a budget region of port {port.name} ({', '.join(known) or 'none'})", key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise r.fail(f"margins.{key}", "a number of bytes >= 0", value)
    return dict(margins)


def load_boards(root: Path | None = None) -> dict[str, Board]:
    root = project_root(root)
    boards = {}
    for path in sorted((root / "boards").glob("*.toml")):
        board = load_board(path, root)
        boards[board.name] = board
    return boards


def get_board(name: str, root: Path | None = None) -> Board:
    root = project_root(root)
    path = root / "boards" / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in (root / "boards").glob("*.toml")))
        raise ConfigError(f"unknown board {name!r} (boards: {known})")
    return load_board(path, root)
