"""dist/ -> release/<version>/: versioned images, SHA256SUMS, index.json, ESP Web Tools manifests,
and a static flasher page.

A release is all-or-nothing: it is assembled in a temporary folder beside its destination,
checked (checksums, secret scan), and only then renamed into place. It refuses boards whose
dist/<BOARD>/ is missing or stale against its inputs, builds from a dirty tree (unless
`allow_dirty`), and any output file that contains a configured secret.

An image flashed at the chip's bootloader offset carries in its header the flash size `invoke
flash` would write there (the port's write_flash_size: for esp8266 the board's size; esp32 images
are kept as built), as ESP Web Tools writes images as they are; the checksums in index.json and
SHA256SUMS are those of the released bytes, and the image's identity (the build's inputs hash)
is unchanged.

Names follow MicroPython's download page: `<BOARD>-<YYYYMMDD>-v<micropython>-<tag><ext>`, the date
being the build's. Chip families come from esptool's chip definitions (`CHIP_NAME`), which are
the strings ESP Web Tools matches against the chip it detects.

ESP Web Tools is fetched from the npm registry (`npm pack`) into the user cache once, checked
against its pinned integrity, and copied into each release: the page works offline from the
same origin and nothing is fetched from a CDN.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from . import source
from .buildinfo import Artifact, BuildInfo, BuildInfoError, dist_dir, read_build_info, sha256_file, write_atomic
from .devconfig import SECRET_ENV, DevConfigError, load_file, secret_items
from .config import HOST_CHIP, Board, ConfigError, cache_dir, chip_definition, load_boards, project_root

INDEX = "index.json"
SUMS = "SHA256SUMS"
PAGE = "index.html"
WEB_TOOLS_DIR = "esp-web-tools"
FORMAT = 1

# ESP Web Tools, pinned: version and the npm registry's integrity of its tarball.
ESP_WEB_TOOLS_VERSION = "10.4.0"
ESP_WEB_TOOLS_INTEGRITY = (
    "sha512-3pwkeFFm5Fj7UQo8SJNYK5RXrtNCpq6X9QoI6bMT4GBZWgrJqjn0YvM9ihG74BtMoSFYXfmDtkehuxe50PTMPQ=="
)
ENV_WEB_TOOLS = "WORKSHOP_ESP_WEB_TOOLS"   # a folder holding install-button.js (offline override)

# Modes of everything released (and cached by download), whatever the umask and the temporary
# files' 600/700: world-readable, so a web server (or a copy made by one) serves them.
FILE_MODE = 0o644
EXEC_MODE = 0o755         # folders, and a host board's program

# A version tag: v + semver (MAJOR.MINOR.PATCH, optional -pre.release and +build identifiers):
# always a valid git tag (git check-ref-format: no '..', no trailing '.', no '.lock') and folder name.
_IDENT = r"[0-9A-Za-z-]+"
VERSION_RE = re.compile(rf"^v\d+\.\d+\.\d+(?:-{_IDENT}(?:\.{_IDENT})*)?(?:\+{_IDENT}(?:\.{_IDENT})*)?$")


class ReleaseError(RuntimeError):
    """The release cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class ReleaseEvent:
    kind: str                 # "check" | "warning" | "board" | "file" | "header" | "web-tools" | "scan" | "done"
    message: str
    board: str | None = None


@dataclass(frozen=True)
class ReleaseFile:
    name: str                 # file name inside release/<version>/
    source: str               # the artifact's name in dist/<BOARD>/
    sha256: str
    size: int
    offset: int | None        # flash offset; None = not written to a device
    flash: bool
    role: str                 # "image" (flash or run it) | "debug" (.elf, .map)


@dataclass(frozen=True)
class ReleaseBoard:
    board: str
    description: str
    port: str
    chip: str
    chip_family: str          # esptool CHIP_NAME, e.g. "ESP32-S3"; "host" for host builds
    flash_size: str | None
    micropython_version: str
    micropython_commit: str
    project_commit: str | None
    project_dirty: bool
    frozen_modules: tuple[str, ...]
    built_at: str
    manifest: str | None      # ESP Web Tools manifest file name, None when nothing is flashed
    files: tuple[ReleaseFile, ...]
    # build.json's inputs hash, which the image's frozen build identity carries (smoke --release
    # compares them). None in indexes made before images carried an identity: still readable.
    inputs_sha256: str | None = None
    project_version: str | None = None   # what the image announces (pyproject.toml's at the build)
    # boards/*.toml: its ROM stays in download mode after a flash, so the page says to press RESET
    manual_reset_after_flash: bool = False

    @property
    def images(self) -> tuple[ReleaseFile, ...]:
        return tuple(f for f in self.files if f.role == "image")

    def executable(self, file: ReleaseFile) -> bool:
        """A host board's program (the unix `micropython`): released and cached with mode 755."""
        return self.chip == HOST_CHIP and file.role == "image"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["frozen_modules"] = list(self.frozen_modules)
        data["files"] = [{k: v for k, v in asdict(f).items()} for f in self.files]
        return data

    @classmethod
    def from_dict(cls, data: Mapping) -> ReleaseBoard:
        # Keys a newer kit added are ignored, so an older kit still reads a newer index.json.
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data["files"] = tuple(ReleaseFile(**f) for f in data["files"])
        data["frozen_modules"] = tuple(data["frozen_modules"])
        return cls(**data)


@dataclass(frozen=True)
class Release:
    version: str
    directory: Path
    boards: tuple[ReleaseBoard, ...]
    files: tuple[str, ...]    # every file in the release, relative, sorted (SHA256SUMS lists these)
    web_tools_version: str | None = None

    def board(self, name: str) -> ReleaseBoard:
        for b in self.boards:
            if b.board == name:
                return b
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"version": self.version, "directory": str(self.directory), "web_tools_version": self.web_tools_version,
                "boards": [b.to_dict() for b in self.boards], "files": list(self.files)}


# --- names -----------------------------------------------------------------------------------


def normalize_version(version: str) -> str:
    """'0.1.0' -> 'v0.1.0'; anything that is not a version tag is refused."""
    v = version.strip()
    if v and v[0].isdigit():
        v = "v" + v
    if not VERSION_RE.match(v) or v.endswith(".lock"):
        raise ReleaseError(f"release version {version!r}: expected a tag like v0.1.0 (or 0.1.0)")
    return v


def _v(version: str) -> str:
    return version if version.startswith("v") else "v" + version


def build_date(built_at: str) -> str:
    """'2026-11-21T10:00:00Z' -> '20261121' (UTC)."""
    try:
        when = datetime.fromisoformat(built_at.replace("Z", "+00:00"))
    except ValueError:
        raise ReleaseError(f"build.json: built_at: expected an ISO 8601 time, got {built_at!r}") from None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    return when.strftime("%Y%m%d")


def release_base_name(board: str, built_at: str, micropython_version: str, version: str) -> str:
    """MicroPython style: ESP32_GENERIC-20261121-v1.28.0-v0.1.0."""
    return f"{board}-{build_date(built_at)}-{_v(micropython_version)}-{normalize_version(version)}"


def release_file_names(info: BuildInfo, version: str) -> dict[str, str]:
    """Artifact name in dist/ -> name in the release. The artifact's extension is kept
    (firmware.bin -> .bin, micropython.elf -> .elf, the unix `micropython` has none); when two
    artifacts share an extension, the ones after the first flash image also keep their stem."""
    base = release_base_name(info.board, info.built_at, info.micropython_version, version)
    ordered = sorted(info.artifacts, key=lambda a: (not (a.flash and a.offset is not None), info.artifacts.index(a)))
    names: dict[str, str] = {}
    taken: set[str] = set()
    for art in ordered:
        suffix = Path(art.file).suffix
        name = base + suffix
        if name in taken:
            name = f"{base}-{Path(art.file).stem}{suffix}"
        if name in taken:
            raise ReleaseError(f"{info.board}: two artifacts would both be released as {name}")
        taken.add(name)
        names[art.file] = name
    return names


def manifest_name(board: str) -> str:
    return f"{board}.manifest.json"


def chip_family(chip: str) -> str:
    """The chip family string ESP Web Tools matches: esptool's CHIP_NAME ('host' for host builds)."""
    return HOST_CHIP if chip == HOST_CHIP else chip_definition(chip).CHIP_NAME


def _role(art: Artifact, board: Board) -> str:
    """'image': what a person flashes, or for a host board runs (the port's outputs not marked
    `flash = false`: the unix `micropython`); 'debug': the rest (.elf, .map)."""
    if art.flash:
        return "image"
    if board.is_host and any(o.file == art.file and o.flash for o in board.port.outputs):
        return "image"
    return "debug"


def with_flash_size(data: bytes, chip: str, flash_size: str | None, offset: int | None) -> bytes:
    """The image with the board's flash size in its header (byte 3, high nibble, in esptool's code
    for the chip: its chip definition's FLASH_SIZES), flash mode and frequency kept; the SHA-256 an
    image may carry after its data (ESP32 family) is recomputed. Only an image at the chip's
    bootloader offset has this header (what esptool's write-flash --flash-size changes); anything
    else, or bytes that are no valid image of the chip, come back unchanged.

    ESP Web Tools writes images as they are (flashSize "keep"): the esp8266 port's elf2image leaves
    its default, 1MB, in the header, and MicroPython's flashbdev then finds no room for a
    filesystem on a 2 MB board."""
    if chip == HOST_CHIP or flash_size is None or offset is None or len(data) < 8:
        return data
    rom = chip_definition(chip)
    if offset != rom.BOOTLOADER_FLASH_OFFSET or data[0] != rom.ESP_IMAGE_MAGIC:
        return data
    try:
        code = int(rom.FLASH_SIZES[flash_size])
    except KeyError:
        raise ReleaseError(f"flash size {flash_size!r}: esptool knows {', '.join(rom.FLASH_SIZES)} "
                           f"for {rom.CHIP_NAME}") from None
    if data[3] & 0xF0 == code:
        return data
    from .esptool_adapter import with_header_flash_size

    return with_header_flash_size(data, rom, code)


def header_flash_size(board: Board, built: str | None) -> str | None:
    """The flash size a released image's header must say, as `invoke flash` writes it: the port's
    write_flash_size, where "detect" (esp8266: modules vary, and its MicroPython reads the
    header) is the board's size, as no browser detects it; None for "keep" (the esp32 ports,
    whose MicroPython reads the chip's real size, and whose images say the size they were
    built for)."""
    mode = board.port.write_flash_size
    return None if mode == "keep" else built if mode == "detect" else mode


def flash_size_name(chip: str, header: bytes) -> str:
    """The flash size an image header says, in esptool's names for the chip ('1MB'); '?' unknown."""
    names = {int(v): k for k, v in chip_definition(chip).FLASH_SIZES.items()}
    return names.get(header[3] & 0xF0, "?") if len(header) > 3 else "?"


def esp_web_tools_manifest(board: ReleaseBoard, version: str) -> dict | None:
    """The ESP Web Tools manifest for one board, or None when the board has nothing to flash."""
    parts = [{"path": f.name, "offset": f.offset} for f in board.files if f.flash and f.offset is not None]
    if not parts or board.chip == HOST_CHIP:
        return None
    return {
        "name": f"MicroPython workshop firmware for {board.board}",
        "version": f"{version} (MicroPython {_v(board.micropython_version)})",
        "new_install_prompt_erase": True,
        # MicroPython speaks no Improv: don't wait for it after flashing.
        "new_install_improv_wait_time": 0,
        "builds": [{"chipFamily": board.chip_family, "parts": parts}],
    }


# --- checks ----------------------------------------------------------------------------------


def git_tree_dirty(root: Path | None = None) -> str | None:
    """What is uncommitted in the project tree (None = clean). Not a git tree counts as dirty."""
    root = project_root(root)
    try:
        lines = source.tree_changes(root, untracked=True)
    except source.SourceError as e:
        return str(e)
    if not lines:
        return None
    shown = ", ".join(line[3:] for line in lines[:5]) + (f" and {len(lines) - 5} more" if len(lines) > 5 else "")
    return f"uncommitted changes: {shown}"


def toolchain_mix(infos: Iterable[BuildInfo]) -> str | None:
    """A warning when the device images of one release were built by different toolchains
    (e.g. ESP8266 natively with Debian's gcc, ESP32 in Espressif's Docker image); None when one
    toolchain built them all. The host (UNIX) board is not a device image."""
    by: dict[str, list[str]] = {}
    for info in infos:
        if info.chip == HOST_CHIP:
            continue
        label = f"{info.toolchain} ({info.compiler or info.toolchain_image or 'compiler not recorded'})"
        by.setdefault(label, []).append(info.board)
    if len(by) < 2:
        return None
    return "this release mixes toolchains: " + "; ".join(f"{', '.join(sorted(b))} by {t}" for t, b in sorted(by.items()))


def load_secrets(config: Path | None = None, env: Mapping[str, str] | None = None,
                 extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Secrets to scan for, by name ('wifi.password', 'mqtt.password', ...): every secret key of
    workshop.toml (devconfig's definition), the environment (devconfig.SECRET_ENV: the Wi-Fi,
    telnet and MQTT passwords' variables) and `extra` (options). Every value from every source is
    scanned for: a key that another source gives with another value is kept under that source's name too
    ('wifi.password ($WORKSHOP_WIFI_PASSWORD)', 'wifi.password (option)')."""
    env = os.environ if env is None else env
    found: dict[str, str] = {}

    def add(key: str, value: str, source: str) -> None:
        if not value or found.get(key) == value:
            return
        found[key if key not in found else f"{key} ({source})"] = value
    if config is not None:
        config = Path(config)
        try:
            data = load_file(config)
        except DevConfigError as e:
            hint = " (the workshop config whose secrets the release must not contain)" if "not found" in str(e) else ""
            raise ReleaseError(f"{e}{hint}") from None
        for key, value in secret_items(data):
            if not isinstance(value, str):
                # Never the value itself in the message: it is a secret.
                raise ReleaseError(f"{config}: {key}: expected a string (in quotes), not {type(value).__name__}")
            add(key, value, str(config))
    for key, var in SECRET_ENV.items():
        add(key, env.get(var) or "", f"${var}")
    for key, value in (extra or {}).items():
        add(key, value or "", "option")
    return found


def scan_for_secrets(directory: Path, secrets: Mapping[str, str]) -> list[tuple[str, str]]:
    """(relative file, secret name) for every secret found in any file under `directory`.

    Each secret is looked for as UTF-8 and as a JSON string body (index.json and the manifests
    escape quotes, backslashes and non-ASCII characters), anywhere: not as a whole word, which an
    image cannot promise (the linker stores a short string as the tail of a longer one, a .mpy
    puts a length byte before it)."""
    needles = {name: {value.encode(), json.dumps(value)[1:-1].encode()} for name, value in secrets.items() if value}
    hits = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        data = path.read_bytes()
        for name, forms in needles.items():
            if any(form in data for form in forms):
                hits.append((path.relative_to(directory).as_posix(), name))
    return hits


def _default_stale(board: str, root: Path, dist: Path) -> str | None:
    from .build import stale_reason

    return stale_reason(board, root, dist=dist)


# --- ESP Web Tools ---------------------------------------------------------------------------


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def ensure_web_tools(version: str = ESP_WEB_TOOLS_VERSION, integrity: str | None = ESP_WEB_TOOLS_INTEGRITY,
                     cache: Path | None = None, npm: str = "npm") -> Path:
    """The folder holding ESP Web Tools' browser bundle (install-button.js and its chunks).

    `$WORKSHOP_ESP_WEB_TOOLS` names a ready folder (offline); otherwise the pinned package is
    fetched once with `npm pack` into the user cache and its tarball checked against `integrity`."""
    override = os.environ.get(ENV_WEB_TOOLS)
    if override:
        folder = Path(override)
        if not (folder / "install-button.js").is_file():
            raise ReleaseError(f"${ENV_WEB_TOOLS}={override}: no install-button.js there (expected esp-web-tools' dist/web folder)")
        return folder
    root = (cache or cache_dir()) / "esp-web-tools" / version
    web = root / "web"

    def complete() -> bool:   # VERSION is written last: a folder without it was damaged by hand
        return (web / "install-button.js").is_file() and (web / "VERSION").is_file()

    if complete():
        return web
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            proc = subprocess.run([npm, "pack", f"esp-web-tools@{version}", "--pack-destination", tmp],
                                  capture_output=True, text=True, timeout=300, cwd=tmp)
        except FileNotFoundError:
            raise ReleaseError(f"npm not found: install Node.js/npm to fetch ESP Web Tools {version}, "
                               f"or set ${ENV_WEB_TOOLS} to a folder with its dist/web files") from None
        if proc.returncode != 0:
            raise ReleaseError(f"npm pack esp-web-tools@{version} failed (the npm registry must be reachable, "
                               f"or set ${ENV_WEB_TOOLS}): {proc.stderr.strip()[-500:]}")
        tarballs = list(Path(tmp).glob("esp-web-tools-*.tgz"))
        if len(tarballs) != 1:
            raise ReleaseError(f"npm pack esp-web-tools@{version} left no tarball in {tmp}")
        got = _integrity(tarballs[0])
        if integrity and got != integrity:
            raise ReleaseError(f"esp-web-tools@{version}: integrity {got} does not match the pinned {integrity}")
        staging = Path(tmp) / "web"
        with tarfile.open(tarballs[0]) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                if member.name.startswith("package/dist/web/") or member.name == "package/LICENSE":
                    rel = Path(member.name).relative_to("package/dist/web") if member.name != "package/LICENSE" else Path("LICENSE")
                    if ".." in rel.parts:
                        raise ReleaseError(f"esp-web-tools tarball: unsafe path {member.name}")
                    dest = staging / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(member) as src, dest.open("wb") as out:  # type: ignore[union-attr]
                        shutil.copyfileobj(src, out)
        if not (staging / "install-button.js").is_file():
            raise ReleaseError(f"esp-web-tools@{version}: no dist/web/install-button.js in the package")
        (staging / "VERSION").write_text(version + "\n")
        if complete():  # another run got there first
            return web
        if web.exists():  # damaged (files deleted): replaced, not re-fetched and discarded on every run
            shutil.rmtree(web)
        os.replace(staging, web)
    return web


def flasher_page() -> str:
    """The static flasher page (it reads index.json at run time)."""
    return resources.files("workshop").joinpath("flasher", "index.html").read_text(encoding="utf-8")


# --- the release -----------------------------------------------------------------------------


def _board_entry(info: BuildInfo, board: Board, version: str) -> ReleaseBoard:
    names = release_file_names(info, version)
    files = tuple(
        ReleaseFile(name=names[a.file], source=a.file, sha256=a.sha256, size=a.size, offset=a.offset,
                    flash=a.flash, role=_role(a, board))
        for a in info.artifacts
    )
    has_flash = any(f.flash and f.offset is not None for f in files)
    return ReleaseBoard(
        board=info.board,
        description=board.description,
        port=info.port,
        chip=info.chip,
        chip_family=chip_family(info.chip),
        flash_size=info.flash_size,
        micropython_version=info.micropython_version,
        micropython_commit=info.micropython_commit,
        project_commit=info.project_commit,
        project_dirty=info.project_dirty,
        project_version=info.project_version,
        manual_reset_after_flash=board.manual_reset_after_flash,
        frozen_modules=tuple(info.frozen_modules),
        built_at=info.built_at,
        manifest=manifest_name(info.board) if has_flash and info.chip != HOST_CHIP else None,
        files=files,
        inputs_sha256=info.inputs_sha256,
    )


def _publishable(directory: Path, executables: set[str]) -> None:
    """Folders and `executables` (file names at the top) 755, every other file 644."""
    directory.chmod(EXEC_MODE)
    for path in directory.rglob("*"):
        if path.is_dir():
            path.chmod(EXEC_MODE)
        else:
            path.chmod(EXEC_MODE if path.parent == directory and path.name in executables else FILE_MODE)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (this one included: another thread of it may own the file)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True                 # exists, another user's
    return True


def _leftover_prefix(out: Path, kind: str) -> str:
    """A release of `out` stages in .<name>.partial-<pid>-<random> beside it, and moves the release
    it replaces (--force) to .<name>.old-<pid>-<random>: a later run can tell whose they are."""
    return f".{out.name}.{kind}-{os.getpid()}-"


def recover_leftovers(out: Path) -> list[str]:
    """Clear what a release of `out` killed mid-way (SIGKILL, a power cut) left beside it, and say
    what was done. A staging folder is incomplete by definition: removed. An .old- folder holds
    the release a --force run was replacing: if it was killed between the two renames, `out` is
    missing and that release is moved back, not deleted. Folders of a running release are kept."""
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(partial|old)-(?:(\d+)-)?[^/]*")
    notes = []
    for path in sorted(out.parent.glob(f".{glob.escape(out.name)}.*-*")):
        m = pattern.fullmatch(path.name)
        if not m or not path.is_dir() or (m.group(2) and process_alive(int(m.group(2)))):
            continue
        kept = path / out.name
        try:
            if m.group(1) == "old" and kept.is_dir() and not out.exists():
                os.replace(kept, out)
                notes.append(f"{out}: restored the release an interrupted --force run had moved aside "
                             f"({path.name})")
            else:
                notes.append(f"{path}: removed, left by an interrupted release")
            shutil.rmtree(path)
        except OSError as e:
            raise ReleaseError(f"{path}: left by an interrupted release, and cannot be cleared: "
                               f"{e.strerror or e}; remove it by hand") from None
    return notes


def _cannot_write(version: str, out: Path, e: OSError) -> str:
    where = e.filename or out.parent
    return (f"cannot release {version}: {where}: {e.strerror or e}; nothing was released "
            f"({out} is as it was): free some space or fix the folder, and run it again")


def make_release(
    version: str,
    *,
    boards: Iterable[str] | None = None,
    root: Path | None = None,
    dist: Path | None = None,
    out: Path | None = None,
    allow_dirty: bool = False,
    force: bool = False,
    secrets: Mapping[str, str] | None = None,
    web_tools: Path | None = None,
    stale: Callable[[str], str | None] | None = None,
    tree_dirty: Callable[[], str | None] | None = None,
    repository: str | None = None,
    now: datetime | None = None,
    on_event: Callable[[ReleaseEvent], None] | None = None,
) -> Release:
    """Turn dist/ into `out` (default release/<version>/) and return what was released.

    `boards`: names (default: every board in boards/). `stale(board)` -> reason or None and
    `tree_dirty()` -> reason or None default to the build's staleness check and `git status`.
    `web_tools`: ESP Web Tools' dist/web folder (default: `ensure_web_tools()`).
    """
    root = project_root(root)
    emit = on_event or (lambda e: None)
    version = normalize_version(version)
    dist = dist or dist_dir(root)
    out = out or (root / "release" / version)
    stale = stale or (lambda b: _default_stale(b, root, dist))
    tree_dirty = tree_dirty or (lambda: git_tree_dirty(root))
    try:
        known = load_boards(root)
    except ConfigError as e:
        raise ReleaseError(str(e)) from None
    names = list(dict.fromkeys(boards)) if boards else sorted(known)    # each board once, in the order given
    unknown = [b for b in names if b not in known]
    if unknown:
        raise ReleaseError(f"unknown board {unknown[0]!r} (boards: {', '.join(sorted(known))})")
    if not names:
        raise ReleaseError(f"no boards to release: {root / 'boards'} has no *.toml")

    problems: list[str] = []
    emit(ReleaseEvent("check", "checking the project tree"))
    dirty = tree_dirty()
    if dirty and not allow_dirty:
        problems.append(f"the project tree is dirty ({dirty}): commit first, or pass --allow-dirty for a test release")
    infos: dict[str, BuildInfo] = {}
    for name in names:
        emit(ReleaseEvent("check", f"checking dist/{name}", name))
        try:
            info = read_build_info(dist / name)
        except BuildInfoError as e:
            problems.append(f"{name}: {e}")
            continue
        if info.board != name:
            problems.append(f"{name}: {dist / name / 'build.json'} is for board {info.board!r}")
            continue
        reason = stale(name)
        if reason:
            problems.append(f"{name}: dist/{name} is stale ({reason}): run invoke build --board {name}")
            continue
        if info.project_dirty and not allow_dirty:
            problems.append(f"{name}: built from a dirty tree: commit, rebuild (invoke build --board {name}), "
                            f"or pass --allow-dirty")
            continue
        infos[name] = info
    if problems:
        raise ReleaseError("refusing to release " + version + ":\n  - " + "\n  - ".join(problems))
    mixed = toolchain_mix(infos.values())
    if mixed:
        emit(ReleaseEvent("warning", mixed))
    # The images say the project version they were built as (announce, roster): a release of
    # another version is allowed (a re-release) but said, and index.json records both.
    for name, info in infos.items():
        if info.project_version and normalize_version(info.project_version) != version:
            emit(ReleaseEvent("warning", f"{name}: built as project version {info.project_version} (pyproject.toml), "
                                         f"released as {version}: its board will announce {info.project_version} "
                                         "(set the version in pyproject.toml and rebuild to match)", name))

    for note in recover_leftovers(out):
        emit(ReleaseEvent("warning", note))
    if out.exists() and not force:
        raise ReleaseError(f"{out} already exists: releases are immutable; remove it or pass --force to replace it")
    web = web_tools or ensure_web_tools()
    if not (web / "install-button.js").is_file():
        raise ReleaseError(f"{web}: no install-button.js (expected ESP Web Tools' dist/web folder)")
    page = flasher_page()

    entries = [_board_entry(infos[n], known[n], version) for n in names]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=_leftover_prefix(out, "partial"), dir=out.parent))
    except OSError as e:
        raise ReleaseError(_cannot_write(version, out, e)) from None
    trash: Path | None = None          # --force: where the release being replaced waits, mid-swap
    try:
        for i, entry in enumerate(entries):
            emit(ReleaseEvent("board", f"{entry.board}: {len(entry.files)} file(s)", entry.board))
            released_files = []
            for f in entry.files:
                dest, built = staging / f.name, dist / entry.board / f.source
                data = built.read_bytes()
                if hashlib.sha256(data).hexdigest() != f.sha256:
                    raise ReleaseError(f"{built}: changed while being released; rebuild")
                # The flash size `invoke flash` would write into the image header, set here for
                # ESP Web Tools, which writes images as they are: index.json and SHA256SUMS
                # describe the released bytes (the build's identity, its inputs hash, is unchanged).
                size = header_flash_size(known[entry.board], entry.flash_size)
                released = with_flash_size(data, entry.chip, size, f.offset) if f.flash else data
                if released != data:
                    f = replace(f, sha256=hashlib.sha256(released).hexdigest(), size=len(released))
                    emit(ReleaseEvent("header", f"{f.name}: flash size in the image header "
                                                f"{flash_size_name(entry.chip, data)} -> {size} "
                                                f"(the board's)", entry.board))
                dest.write_bytes(released)
                released_files.append(f)
                emit(ReleaseEvent("file", f.name, entry.board))
            entry = entries[i] = replace(entry, files=tuple(released_files))
            manifest = esp_web_tools_manifest(entry, version)
            if manifest is not None and entry.manifest:
                write_atomic(staging / entry.manifest, json.dumps(manifest, indent=2) + "\n")
        web_version = (web / "VERSION").read_text().strip() if (web / "VERSION").is_file() else None
        shutil.copytree(web, staging / WEB_TOOLS_DIR)
        emit(ReleaseEvent("web-tools", f"ESP Web Tools {web_version or '(local folder)'}"))
        created = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(microsecond=0)
        index = {
            "format": FORMAT,
            "version": version,
            "repository": repository,
            "created_at": created.isoformat().replace("+00:00", "Z"),
            "esp_web_tools": web_version,
            "boards": [e.to_dict() for e in entries],
        }
        write_atomic(staging / INDEX, json.dumps(index, indent=2) + "\n")
        write_atomic(staging / PAGE, page)

        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        sums = "".join(f"{sha256_file(staging / f)}  {f}\n" for f in files)
        write_atomic(staging / SUMS, sums)
        _publishable(staging, {f.name for e in entries for f in e.files if e.executable(f)})

        emit(ReleaseEvent("scan", "scanning every output file for configured secrets"))
        hits = scan_for_secrets(staging, secrets or {})
        if hits:
            listed = "\n  - ".join(f"{f} contains the {name}" for f, name in hits)
            raise ReleaseError(f"refusing to release {version}: a configured secret occurs in the output:\n  - {listed}\n"
                               f"Nothing was written. Remove the secret from the sources (it belongs only in "
                               f"/workshop.json on the device), rebuild, and release again. If no source of yours "
                               f"holds it, it is (part of) a word the firmware holds anyway ('micro', the default "
                               f"telnet user, is in every image, as in 'micropython'): choose a longer secret of "
                               f"its own.")

        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=_leftover_prefix(out, "old"), dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        # Stopped between the two renames of a --force run: the release it was replacing goes back.
        if trash is not None and (trash / out.name).is_dir() and not out.exists():
            os.replace(trash / out.name, out)
            shutil.rmtree(trash, ignore_errors=True)
        if isinstance(e, OSError):     # a full disk, a read-only folder: said, with nothing half-written
            raise ReleaseError(_cannot_write(version, out, e)) from None
        raise
    release = Release(version, out, tuple(entries), tuple([*files, SUMS]), web_version)
    emit(ReleaseEvent("done", f"{out}: {len(entries)} board(s), {len(release.files)} files"))
    return release


# --- reading a release (from a folder or a download cache) ----------------------------------


def parse_sums(text: str, source: str = SUMS) -> dict[str, str]:
    """SHA256SUMS text -> {file: sha256}; malformed lines are an error."""
    sums = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        if not m:
            raise ReleaseError(f"{source}:{n}: not a sha256sum line: {line!r}")
        sums[m.group(2)] = m.group(1)
    return sums


def read_index(data: str | bytes, source: str = INDEX) -> tuple[str, tuple[ReleaseBoard, ...]]:
    """index.json -> (version, boards)."""
    try:
        index = json.loads(data)
        if not isinstance(index, dict) or "format" not in index:
            raise ReleaseError(f"{source}: not a release index (no 'format'): made by invoke release?")
        if index.get("format") != FORMAT:
            raise ReleaseError(f"{source}: format {index.get('format')!r}, this tool reads format {FORMAT}: update the kit")
        return index["version"], tuple(ReleaseBoard.from_dict(b) for b in index["boards"])
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError(f"{source}: not a release index: {e}") from None


def read_release(directory: Path) -> Release:
    """A release folder (made by make_release, or a complete download) -> Release."""
    index = directory / INDEX
    if not index.is_file():
        raise ReleaseError(f"{directory}: no {INDEX}: not a release folder")
    version, boards = read_index(index.read_text(), str(index))
    files = tuple(parse_sums((directory / SUMS).read_text(), str(directory / SUMS))) if (directory / SUMS).is_file() else ()
    return Release(version, directory, boards, files)
