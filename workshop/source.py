"""The pinned MicroPython checkout: where it is, whether it is the right one, how to make it.

`setup()` clones MicroPython v1.28.0 into the user cache directory with only the submodules
the chosen ports need, at the commits MicroPython pins. Sources come from GitHub, or from any
mirror named by a URL template (`WORKSHOP_GIT_URL`, e.g. `/srv/mirror/{owner}+{name}/repo`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import cache_dir, load_port

MICROPYTHON_VERSION = "v1.28.0"
MICROPYTHON_COMMIT = "e0e9fbb17ed6fd06bb76e266ae554784c9c80804"
MICROPYTHON_REPO = ("micropython", "micropython")
DEFAULT_GIT_URL = "https://github.com/{owner}/{name}.git"
ENV_CHECKOUT = "WORKSHOP_MICROPYTHON"
ENV_GIT_URL = "WORKSHOP_GIT_URL"
ALL_PORTS = ("unix", "esp32", "esp8266")


class SourceError(RuntimeError):
    """No usable MicroPython checkout; the message says what to run."""


@dataclass(frozen=True)
class Checkout:
    path: Path
    commit: str
    version: str         # `git describe`, e.g. "v1.28.0"
    dirty: bool          # tracked files modified
    pinned: bool         # exactly the commit this project pins

    @property
    def label(self) -> str:
        return self.version + ("-dirty" if self.dirty else "")


def default_path() -> Path:
    return cache_dir() / f"micropython-{MICROPYTHON_VERSION}"


def _git(path: Path | None, *args: str, check: bool = True, timeout: float = 600) -> str:
    argv = ["git", *(["-C", str(path)] if path else []), *args]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SourceError("git is not installed: it is needed to fetch MicroPython") from None
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc.stdout.strip()


def resolve_path(path: str | Path | None = None) -> tuple[Path, bool]:
    """(checkout path, whether it was chosen explicitly by option or environment)."""
    if path:
        return Path(path).expanduser().resolve(), True
    if os.environ.get(ENV_CHECKOUT):
        return Path(os.environ[ENV_CHECKOUT]).expanduser().resolve(), True
    return default_path(), False


def submodule_commit(path: Path, submodule: str) -> str:
    """The commit the superproject pins for a submodule (its gitlink)."""
    out = _git(path, "ls-tree", "HEAD", submodule)
    if not out or "commit" not in out.split()[1]:
        raise SourceError(f"{path}: {submodule} is not a submodule of this checkout")
    return out.split()[2]


def _submodule_head(path: Path, submodule: str) -> str | None:
    sub = path / submodule
    if not (sub / ".git").exists():
        return None
    try:
        return _git(sub, "rev-parse", "HEAD")
    except subprocess.CalledProcessError:
        return None


def locate(path: str | Path | None = None, ports: Iterable[str] = ("unix",),
           submodules: Iterable[str] | None = None) -> Checkout:
    """The checkout to build from, verified: raises SourceError saying what to do when unusable.

    The default (cache) checkout must be exactly MicroPython v1.28.0 with its pinned submodules;
    a checkout chosen explicitly may be any version, but its submodules must match its gitlinks.
    `submodules` narrows the check (e.g. manifest checks need only micropython-lib).
    """
    where, explicit = resolve_path(path)
    how = "pass --micropython PATH or set " + ENV_CHECKOUT if not explicit else "fix the path"
    if not (where / "py" / "mpconfig.h").is_file():
        raise SourceError(f"no MicroPython checkout at {where}: run 'invoke setup' (needs network) or {how}")
    try:
        commit = _git(where, "rev-parse", "HEAD")
        version = _git(where, "describe", "--tags", "--always")
        dirty = bool(_git(where, "status", "--porcelain", "--untracked-files=no", "--ignore-submodules=all"))
    except subprocess.CalledProcessError as e:
        raise SourceError(f"{where}: not a git checkout ({e.stderr.strip()}): run 'invoke setup'") from None
    pinned = commit == MICROPYTHON_COMMIT
    if not explicit and not pinned:
        raise SourceError(f"{where} is MicroPython {version} ({commit[:10]}), expected {MICROPYTHON_VERSION}: "
                          "delete it and run 'invoke setup'")
    for port in ports:
        for sub in load_port(port).submodules:
            if submodules is not None and sub not in submodules:
                continue
            want = submodule_commit(where, sub)
            have = _submodule_head(where, sub)
            if have is None:
                raise SourceError(f"{where}: submodule {sub} (needed by {port}) is missing: run 'invoke setup --ports {port}'")
            if have != want:
                raise SourceError(f"{where}: submodule {sub} is at {have[:10]}, MicroPython pins {want[:10]}: "
                                  f"run 'invoke setup --ports {port}'")
    return Checkout(where, commit, version, dirty, pinned)


def git_url(owner: str, name: str, template: str | None = None) -> str:
    template = template or os.environ.get(ENV_GIT_URL) or DEFAULT_GIT_URL
    return template.format(owner=owner, name=name)


def _owner_name(url: str) -> tuple[str, str]:
    m = re.search(r"github\.com[/:]([^/]+)/([^/]+?)(?:\.git)?/?$", url)
    if not m:
        raise SourceError(f"cannot map submodule URL {url!r} to a GitHub owner/name")
    owner, name = m.groups()
    # .gitmodules still names mbedtls by its old organisation.
    return ("Mbed-TLS" if owner == "ARMmbed" else owner), name


def _network_error(url: str, err: subprocess.CalledProcessError) -> SourceError:
    detail = (err.stderr or "").strip().splitlines()
    last = detail[-1] if detail else f"git exited {err.returncode}"
    return SourceError(f"cannot fetch {url} ({last}): check the network, or set {ENV_GIT_URL} to a mirror that has it "
                       "(e.g. '/srv/git/{owner}+{name}/repo')")


# Building MicroPython never needs a submodule's own test suite; leaving it out keeps the
# cache small and works with mirrors that omit large generated test data.
SPARSE_PATTERNS = "/*\n!/tests/\n"


def _checkout_submodule(subdir: Path, url: str, commit: str) -> None:
    if not (subdir / ".git").exists():
        if subdir.exists():
            shutil.rmtree(subdir)  # git leaves an empty folder for a submodule not yet fetched
        _git(None, "-c", "protocol.file.allow=always", "clone", "--quiet", "--filter=blob:none",
             "--no-checkout", url, str(subdir))
    _git(subdir, "config", "core.sparseCheckout", "true")
    (Path(_git(subdir, "rev-parse", "--absolute-git-dir")) / "info").mkdir(exist_ok=True)
    (Path(_git(subdir, "rev-parse", "--absolute-git-dir")) / "info" / "sparse-checkout").write_text(SPARSE_PATTERNS)
    if _git(subdir, "cat-file", "-t", commit, check=False) != "commit":
        # From the URL asked for now, not the one the submodule was first cloned from.
        _git(subdir, "-c", "protocol.file.allow=always", "fetch", "--quiet", "--filter=blob:none", url, commit)
    _git(subdir, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit)


def setup(ports: Iterable[str] = ALL_PORTS, path: str | Path | None = None, url_template: str | None = None,
          on_event: Callable[[str], None] = lambda msg: None) -> Checkout:
    """Make (or complete) the checkout: MicroPython v1.28.0 plus the ports' submodules."""
    ports = tuple(ports)
    where, explicit = resolve_path(path)
    if not (where / ".git").exists():
        if explicit and where.exists() and any(where.iterdir()):
            raise SourceError(f"{where} exists and is not a git checkout: choose an empty or new folder")
        url = git_url(*MICROPYTHON_REPO, template=url_template)
        on_event(f"cloning MicroPython {MICROPYTHON_VERSION} from {url}")
        staging = where.with_name(where.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            _git(None, "-c", "protocol.file.allow=always", "clone", "--quiet", "--filter=blob:none",
                 "--no-checkout", url, str(staging))
            _git(staging, "-c", "advice.detachedHead=false", "checkout", "--quiet", MICROPYTHON_COMMIT)
        except subprocess.CalledProcessError as e:
            shutil.rmtree(staging, ignore_errors=True)
            raise _network_error(url, e) from None
        # Only a finished clone gets the real name: an interrupted setup never looks complete.
        staging.rename(where)
    head = _git(where, "rev-parse", "HEAD")
    if head != MICROPYTHON_COMMIT and not explicit:
        raise SourceError(f"{where} is at {head[:10]}, not {MICROPYTHON_VERSION}: delete it and run 'invoke setup' again")
    wanted: list[str] = []
    for port in ports:
        for sub in load_port(port).submodules:
            if sub not in wanted:
                wanted.append(sub)
    for sub in wanted:
        want = submodule_commit(where, sub)
        if _submodule_head(where, sub) == want:
            continue
        upstream = _git(where, "config", "-f", ".gitmodules", f"submodule.{sub}.url")
        url = git_url(*_owner_name(upstream), template=url_template)
        on_event(f"fetching {sub} at {want[:10]} from {url}")
        try:
            _checkout_submodule(where / sub, url, want)
        except subprocess.CalledProcessError as e:
            raise _network_error(url, e) from None
    return locate(where, ports)
