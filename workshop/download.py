"""Release binaries -> a verified local cache.

Sources: the project's GitHub Releases (default), any base URL (a mirror, the organizer's laptop
running `invoke serve`), or a local folder. A base URL or folder may contain `{version}`;
without it the files are taken from the base itself, and its index.json must be for the version
asked for.

Every file is checked against the release's SHA256SUMS while it streams into a temporary file in
the cache; only a verified file is renamed into place. A mismatch deletes the file and fails.
Verified cached files are never fetched again; only the small SHA256SUMS is re-read (and when the
source cannot be reached, a complete cache is used as it is).
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .buildinfo import sha256_file
from .config import HOST_CHIP, cache_dir
from .release import (EXEC_MODE, FILE_MODE, INDEX, SUMS, ReleaseBoard, ReleaseError, normalize_version, parse_sums,
                      process_alive, read_index)

# The one place naming the project on GitHub (owner/name); $WORKSHOP_REPOSITORY overrides it.
DEFAULT_REPOSITORY = "micropython-workshop/workshop-kit"
ENV_REPOSITORY = "WORKSHOP_REPOSITORY"
GITHUB_RELEASE_URL = "https://github.com/{repository}/releases/download/{version}/"
CHUNK = 64 * 1024
# The most a file whose size index.json does not give (SHA256SUMS, index.json, the manifests) may
# have: a source that sends more is refused rather than filling the cache.
SMALL_LIMIT = 4 * 1024 * 1024
# What a broken transfer raises: OSError (reset, timeout) or http.client's IncompleteRead & co.
TRANSFER_ERRORS = (OSError, socket.timeout, http.client.HTTPException)


class DownloadError(RuntimeError):
    """A release could not be fetched or verified; the message says what to do."""


class NotFound(DownloadError):
    pass


@dataclass(frozen=True)
class DownloadEvent:
    kind: str                 # "start" | "progress" | "done" | "cached" | "offline"
    file: str
    done: int = 0
    total: int | None = None


@dataclass(frozen=True)
class DownloadedBoard:
    board: ReleaseBoard
    paths: dict[str, Path]    # release file name -> verified file in the cache

    @property
    def flash_regions(self) -> tuple[tuple[int, Path], ...]:
        """(offset, file) for every image written to a device, in offset order."""
        return tuple(sorted((f.offset, self.paths[f.name]) for f in self.board.files
                            if f.flash and f.offset is not None and f.name in self.paths))

    def flash_image(self, version: str | None = None):
        """This board as workshop.flash.FlashImage (what `invoke flash --release V` writes)."""
        from .flash import FlashImage

        return FlashImage.from_release(self.board.board, self.board.chip, self.board.port, self.board.flash_size,
                                       [(path, offset) for offset, path in self.flash_regions], version,
                                       self.board.micropython_version, self.board.inputs_sha256)


@dataclass(frozen=True)
class DownloadResult:
    version: str
    source: str
    directory: Path
    boards: tuple[DownloadedBoard, ...]
    fetched: tuple[str, ...]
    cached: tuple[str, ...]

    def board(self, name: str) -> DownloadedBoard:
        for b in self.boards:
            if b.board.board == name:
                return b
        raise KeyError(name)

    def to_dict(self) -> dict:
        """`download --json`: each board's index entry with, per file fetched, its cached path."""
        return {"version": self.version, "source": self.source, "directory": str(self.directory),
                "fetched": list(self.fetched), "cached": list(self.cached),
                "boards": [{**b.board.to_dict(), "paths": {n: str(p) for n, p in b.paths.items()}}
                           for b in self.boards]}


_REPOSITORY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


def repository() -> str:
    return os.environ.get(ENV_REPOSITORY) or DEFAULT_REPOSITORY


def checked_repository(repo: str | None = None) -> str:
    """`repo` (default: $WORKSHOP_REPOSITORY's), refused (DownloadError) when it is no owner/name:
    it becomes a GitHub URL path, in downloads and in a release's links."""
    repo = repo or repository()
    if not _REPOSITORY.fullmatch(repo):
        raise DownloadError(f"${ENV_REPOSITORY}={repo!r}: expected a GitHub owner/name, e.g. {DEFAULT_REPOSITORY} "
                            "(or pass --from URL|DIR)")
    return repo


def default_source(repo: str | None = None) -> str:
    """The GitHub Releases URL template of `repo` (default: $WORKSHOP_REPOSITORY's)."""
    return GITHUB_RELEASE_URL.replace("{repository}", checked_repository(repo))


def release_cache(version: str, cache: Path | None = None) -> Path:
    return (cache or cache_dir()) / "releases" / normalize_version(version)


# --- sources ---------------------------------------------------------------------------------


class _Connected:
    """Whether the last connection attempt of one request reached the server (its TCP connect
    succeeded): a failure after that is the server's, not the network's."""

    def __init__(self) -> None:
        self.yes = False
        self.host: str | None = None      # host:port of the last attempt (a redirect's target too)

    def track(self, connection_class: Any) -> Any:
        state = self

        class Tracked(connection_class):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                create: Callable[..., Any] = getattr(self, "_create_connection")

                def create_connection(*a: Any, **kw: Any) -> Any:
                    address = a[0] if a else kw.get("address")
                    host = f"[{address[0]}]" if address and ":" in str(address[0]) else address and address[0]
                    state.yes, state.host = False, f"{host}:{address[1]}" if address else None
                    sock = create(*a, **kw)
                    state.yes = True
                    return sock

                self._create_connection = create_connection

        return Tracked

    def opener(self) -> urllib.request.OpenerDirector:
        state = self

        class HTTP(urllib.request.HTTPHandler):
            def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
                return super().do_open(state.track(http_class), req, **kw)

        class HTTPS(urllib.request.HTTPSHandler):
            def do_open(self, http_class: Any, req: Any, **kw: Any) -> Any:
                return super().do_open(state.track(http_class), req, **kw)

        return urllib.request.build_opener(HTTP, HTTPS)


USE_FROM = "Use --from with a mirror, the organizer's laptop or a local folder."


class _Source:
    """Where a release's files come from: an http(s) base URL or a local folder."""

    def __init__(self, spec: str, version: str, timeout: float, elsewhere: str | None = None) -> None:
        self.timeout = timeout
        self.elsewhere = elsewhere or USE_FROM    # what to do when this source cannot be reached
        spec = spec.replace("{version}", version)
        parsed = urllib.parse.urlparse(spec)
        if parsed.scheme in ("http", "https"):
            self.url: str | None = spec if spec.endswith("/") else spec + "/"
            self.folder: Path | None = None
            self.host = parsed.netloc
        elif parsed.scheme == "file":
            self.url, self.folder = None, Path(urllib.request.url2pathname(parsed.path))
        elif parsed.scheme and len(parsed.scheme) > 1:
            raise DownloadError(f"--from {spec}: expected an http(s) URL or a local folder")
        else:
            self.url, self.folder = None, Path(spec).expanduser()
        if self.folder is not None and not self.folder.is_dir():
            raise DownloadError(f"--from {self.folder}: no such folder")
        self.description = self.url or str(self.folder)

    def where(self, name: str) -> str:
        return (self.url + urllib.parse.quote(name)) if self.url else str(self.folder / name)  # type: ignore[operator]

    def open(self, name: str) -> tuple[IO[bytes], int | None]:
        if self.folder is not None:
            path = self.folder / name
            try:
                f = path.open("rb")
            except (FileNotFoundError, IsADirectoryError):
                raise NotFound(f"{path}: not found") from None
            return f, path.stat().st_size
        url = self.where(name)
        request = urllib.request.Request(url, headers={"User-Agent": "workshop-kit"})
        connected = _Connected()
        try:
            response = connected.opener().open(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise NotFound(f"{url}: 404 Not Found") from None
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            host = connected.host or self.host
            if connected.yes:
                if isinstance(reason, TimeoutError):
                    what = f"sent no answer within {self.timeout:g} s"
                else:
                    what = f"did not answer: {reason or type(reason).__name__}"
                raise DownloadError(f"{host} accepted the connection but {what} (for {url}): the server is "
                                    f"not serving; try again, or another source (--from).") from None
            if isinstance(reason, ConnectionRefusedError):
                # The host answered: nothing listens on that port (a server not started, or stopped).
                raise DownloadError(f"cannot reach {host}: {reason}: no server runs there (is 'invoke serve' "
                                    f"running on that machine, with that port?). {self.elsewhere}") from None
            raise DownloadError(f"cannot reach {host}: {reason}. Is the network up? {self.elsewhere}") from None
        length = response.headers.get("Content-Length")
        return response, int(length) if length and length.isdigit() else None


def _too_large(source: _Source, name: str, limit: int, size_known: bool) -> DownloadError:
    why = f"the {limit:,} bytes {INDEX} gives for it" if size_known else f"{limit:,} bytes, more than any {name} has"
    return DownloadError(f"{source.where(name)}: more than {why} arrived: stopped, nothing was kept. "
                         f"The source is broken or not a release server; try another (--from).")


def _read(stream: IO[bytes]) -> bytes:
    """What has arrived, up to CHUNK bytes (read1: a stalled transfer still counts the bytes it
    got, which a read(CHUNK) waiting for a whole chunk would lose with its timeout)."""
    read1 = getattr(stream, "read1", None)
    return read1(CHUNK) if read1 is not None else stream.read(CHUNK)


def _read_small(source: _Source, name: str, limit: int = SMALL_LIMIT) -> bytes:
    stream, total = source.open(name)
    data = b""
    with stream:
        if total is not None and total > limit:
            raise _too_large(source, name, limit, False)
        try:
            # In chunks: a whole-body read() raises IncompleteRead instead of returning what came.
            while chunk := _read(stream):
                data += chunk
                if len(data) > limit:
                    raise _too_large(source, name, limit, False)
        except TRANSFER_ERRORS as e:
            raise DownloadError(f"{source.where(name)}: transfer failed after {len(data):,} bytes: {e}") from None
    if total is not None and len(data) != total:
        raise DownloadError(f"{source.where(name)}: transfer interrupted ({len(data)} of {total} bytes)")
    return data


# --- fetching --------------------------------------------------------------------------------


def _part_prefix(name: str) -> str:
    """The partial file of `name` is .<name>.<pid>-<random>.part: a later run can tell whose it is."""
    return f".{name}.{os.getpid()}-"


def remove_stale_parts(directory: Path, name: str) -> list[Path]:
    """Remove the partial files of `name` that no running download owns (one killed by SIGKILL, a
    power cut, or a kit from before part files named their process). Returns what was removed."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:(\d+)-)?[^/]*\.part")
    removed = []
    for path in directory.glob(f".{glob.escape(name)}.*.part"):
        m = pattern.fullmatch(path.name)
        if m and not (m.group(1) and process_alive(int(m.group(1)))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _fetch_verified(source: _Source, name: str, sha256: str, size: int | None, dest: Path,
                    emit: Callable[[DownloadEvent], None], mode: int = FILE_MODE) -> None:
    """Stream `name` into a temporary file beside `dest`, hashing as it goes; rename when it matches
    (with `mode`: 644, or 755 for a host board's program, as in the release). More bytes than
    `size` (index.json's; SMALL_LIMIT when it gives none) fail the transfer as soon as they arrive."""
    stream, announced = source.open(name)
    limit = size if size is not None else SMALL_LIMIT
    if announced is not None and (announced > limit or size is not None and announced != size):
        stream.close()
        if size is None:
            raise _too_large(source, name, limit, False)
        raise DownloadError(f"{source.where(name)}: the source announces {announced:,} bytes, {INDEX} gives "
                            f"{size:,}: not this release's file. Nothing was kept; try another source.")
    total = announced if announced is not None else size
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_part_prefix(name), suffix=".part", dir=dest.parent)
    except BaseException:
        stream.close()  # e.g. a full or read-only cache: do not leave the connection open
        raise
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        emit(DownloadEvent("start", name, 0, total))
        with stream, os.fdopen(fd, "wb") as out:
            while True:
                try:
                    chunk = _read(stream)
                except TRANSFER_ERRORS as e:
                    raise DownloadError(f"{source.where(name)}: transfer failed after {done:,} bytes: {e}") from None
                if not chunk:
                    break
                done += len(chunk)
                if done > limit:
                    raise _too_large(source, name, limit, size is not None)
                out.write(chunk)
                digest.update(chunk)
                emit(DownloadEvent("progress", name, done, total))
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise DownloadError(f"{source.where(name)}: transfer interrupted ({done} of {total} bytes); nothing was kept, run again")
        got = digest.hexdigest()
        if got != sha256:
            raise DownloadError(f"{source.where(name)}: SHA-256 MISMATCH: expected {sha256}, got {got}. "
                                f"The file is corrupt or was tampered with; it was deleted. Try again, or another source.")
        tmp.chmod(mode)
        os.replace(tmp, dest)
        emit(DownloadEvent("done", name, done, total))
    finally:
        tmp.unlink(missing_ok=True)


def _cached_ok(path: Path, sha256: str) -> bool:
    return path.is_file() and sha256_file(path) == sha256


def download_release(
    version: str,
    boards: Iterable[str] | None = None,
    *,
    source: str | Path | None = None,
    cache: Path | None = None,
    include_debug: bool = False,
    timeout: float = 30.0,
    on_event: Callable[[DownloadEvent], None] | None = None,
    elsewhere: str | None = None,
) -> DownloadResult:
    """Fetch release `version` (default: every board's images) into the cache, verified.

    `source`: None = the project's GitHub Releases; an http(s) base URL; or a local folder.
    `include_debug`: also the .elf/.map files. `elsewhere`: what an unreachable source's error
    tells to do (default: use --from). Returns the verified local paths per board."""
    emit = on_event or (lambda e: None)
    try:
        version = normalize_version(version)
    except ReleaseError as e:
        raise DownloadError(str(e)) from None
    spec = str(source) if source is not None else default_source()
    src = _Source(spec, version, timeout, elsewhere)
    directory = release_cache(version, cache)
    fetched: list[str] = []
    cached: list[str] = []

    # SHA256SUMS: the root of trust, re-read every run (it is small); a complete cache works offline.
    sums_path = directory / SUMS
    offline_reason: str | None = None
    try:
        sums_raw = _read_small(src, SUMS)
        sums = parse_sums(sums_raw.decode("utf-8", "replace"), src.where(SUMS))
    except NotFound:
        hint = f" (releases: https://github.com/{repository()}/releases)" if source is None else ""
        if src.folder is not None and (src.folder / version / SUMS).is_file() and "{version}" not in spec:
            hint = (f": {src.folder} holds one folder per release, so name it with --from {src.folder / version} "
                    f"(or --from '{src.folder / '{version}'}')")
        raise DownloadError(f"release {version} not found: {src.where(SUMS)} does not exist. "
                            f"Check the version{hint}.") from None
    except (DownloadError, ReleaseError) as e:
        # Unreachable, or answering with no checksum list (a venue's captive portal, a server's
        # error page answering 200): with the release cached, the cache answers either way.
        no_sums = isinstance(e, ReleaseError)
        if not sums_path.is_file():
            if no_sums:
                raise DownloadError(f"{e}: {src.where(SUMS)} is no release's checksum list (a captive portal, "
                                    "or a server's error page?): check the network, or try another --from") from None
            raise
        emit(DownloadEvent("offline", SUMS))
        offline_reason = f"{e} (not a release: a captive portal?)" if no_sums else str(e)
        sums_raw = sums_path.read_bytes()
        try:
            sums = parse_sums(sums_raw.decode("utf-8", "replace"), str(sums_path))
        except ReleaseError as cached_too:
            raise DownloadError(str(cached_too)) from None

    # index.json: verified against SHA256SUMS and checked to be this version's before anything is
    # written to the cache (a source serving another release must not leave its files there).
    if INDEX not in sums:
        raise DownloadError(f"{src.where(SUMS)} does not list {INDEX}: the release is incomplete")
    index_path = directory / INDEX
    index_cached = _cached_ok(index_path, sums[INDEX])
    if index_cached:
        index_raw = index_path.read_bytes()
    elif offline_reason:
        raise DownloadError(f"{INDEX} is not in the cache and the source is unreachable: {offline_reason}")
    else:
        emit(DownloadEvent("start", INDEX, 0, None))
        try:
            index_raw = _read_small(src, INDEX)
        except NotFound:
            raise DownloadError(f"{src.where(INDEX)}: 404 Not Found, although the release's {SUMS} lists it: "
                                f"the release is incomplete at this source") from None
        got = hashlib.sha256(index_raw).hexdigest()
        if got != sums[INDEX]:
            raise DownloadError(f"{src.where(INDEX)}: SHA-256 MISMATCH: expected {sums[INDEX]}, got {got}. "
                                f"The file is corrupt or was tampered with; nothing was kept. Try again, or another source.")
    try:
        index_version, all_boards = read_index(index_raw, src.where(INDEX) if not index_cached else str(index_path))
    except ReleaseError as e:
        raise DownloadError(str(e)) from None
    if index_version != version:
        raise DownloadError(f"{src.description} serves release {index_version}, not {version} "
                            f"(nothing was written to the cache)")
    by_name = {b.board: b for b in all_boards}
    wanted = list(dict.fromkeys(boards)) if boards else sorted(by_name)   # each board once
    for name in wanted:
        if name not in by_name:
            raise DownloadError(f"release {version} has no board {name!r} (it has: {', '.join(sorted(by_name))})")

    from .buildinfo import write_atomic

    directory.mkdir(parents=True, exist_ok=True)
    if offline_reason is None and (not sums_path.is_file() or sums_path.read_bytes() != sums_raw):
        write_atomic(sums_path, sums_raw, mode=FILE_MODE)
    if index_cached:
        if index_path.stat().st_mode & 0o777 != FILE_MODE:
            index_path.chmod(FILE_MODE)
        cached.append(INDEX)
        emit(DownloadEvent("cached", INDEX, len(index_raw), len(index_raw)))
    else:
        write_atomic(index_path, index_raw, mode=FILE_MODE)
        fetched.append(INDEX)
        emit(DownloadEvent("done", INDEX, len(index_raw), len(index_raw)))

    def get(name: str, size: int | None = None, mode: int = FILE_MODE) -> Path:
        if not name or name != Path(name).name or name.startswith("."):
            raise DownloadError(f"{INDEX} names an unsafe file {name!r}: refusing to write it")
        if name not in sums:
            raise DownloadError(f"{src.where(SUMS)} does not list {name}: the release is incomplete")
        dest = directory / name
        if _cached_ok(dest, sums[name]):
            remove_stale_parts(directory, name)   # a killed run's part of a file another run completed
            if dest.stat().st_mode & 0o777 != mode:
                dest.chmod(mode)      # cached by a kit that left it 600
            cached.append(name)
            emit(DownloadEvent("cached", name, dest.stat().st_size, dest.stat().st_size))
            return dest
        if offline_reason:
            raise DownloadError(f"{name} is not in the cache and the source is unreachable: {offline_reason}")
        dest.unlink(missing_ok=True)
        remove_stale_parts(directory, name)
        try:
            _fetch_verified(src, name, sums[name], size, dest, emit, mode)
        except NotFound:
            raise DownloadError(f"{src.where(name)}: 404 Not Found, although the release's {SUMS} lists it: "
                                f"the release is incomplete at this source") from None
        fetched.append(name)
        return dest

    result = []
    for name in wanted:
        entry = by_name[name]
        files = [f for f in entry.files if include_debug or f.role == "image"]
        if entry.manifest:
            get(entry.manifest)
        paths = {}
        for f in files:
            if sums.get(f.name) not in (None, f.sha256):
                raise DownloadError(f"{INDEX} and {SUMS} disagree about {f.name}: the release is inconsistent")
            paths[f.name] = get(f.name, f.size, EXEC_MODE if entry.executable(f) else FILE_MODE)
        result.append(DownloadedBoard(entry, paths))
    return DownloadResult(version, src.description, directory, tuple(result), tuple(fetched), tuple(cached))


def release_images(version: str, boards: Iterable[str] | None = None, *, source: str | Path | None = None,
                   cache: Path | None = None, on_event: Callable[[DownloadEvent], None] | None = None) -> list:
    """The flashable boards of release `version` as workshop.flash.FlashImage, downloaded and
    verified first (a no-op for files already in the cache). Host builds are left out."""
    wanted = list(boards) if boards else None
    # The callers (flash, station) have no --from: a release the cache lacks is fetched first.
    later = (f"Download the release first, from wherever it is: invoke download --version {version} "
             "--from URL|DIR (a mirror, the organizer's laptop, a local folder), then run this again.")
    result = download_release(version, wanted, source=source, cache=cache, on_event=on_event, elsewhere=later)
    hosts = [b.board.board for b in result.boards if b.board.chip == HOST_CHIP]
    if wanted and hosts:
        raise DownloadError(f"{', '.join(hosts)}: a host build, nothing to flash (release {result.version})")
    return [b.flash_image(result.version) for b in result.boards if b.board.chip != HOST_CHIP]


def clear_cache(version: str, cache: Path | None = None) -> None:
    shutil.rmtree(release_cache(version, cache), ignore_errors=True)
