"""The pinned MicroPython checkout: where it is, whether it is the right one, how to make it.

`setup()` clones MicroPython v1.28.0 into the user cache directory with only the submodules
the chosen ports need, at the commits MicroPython pins. Sources come from GitHub, or from any
mirror named by a URL template (`WORKSHOP_GIT_URL`, e.g. `/srv/mirror/{owner}+{name}/repo`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import Port, cache_dir, load_boards, load_port

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
    dirty: bool          # tracked files modified (in the checkout or a submodule it was checked with)
    pinned: bool         # exactly the commit this project pins
    changes: str | None = None   # sha256 of those modifications (None: clean): what a build is of

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


def port_submodules(port: str, root: Path | None = None) -> tuple[str, ...]:
    """The checkout's submodules a port's boards need: the port's own, plus berkeley-db only when
    one of its boards builds btree (the workshop boards do not: an image does not change with
    what the machine could fetch)."""
    p = load_port(port, root)
    subs = list(p.submodules)
    if p.btree_submodule and any(b.btree for b in load_boards(root).values() if b.port.name == port):
        subs.append(p.btree_submodule)
    return tuple(subs)


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
    except subprocess.CalledProcessError as e:
        raise SourceError(f"{where}: not a git checkout ({e.stderr.strip()}): run 'invoke setup'") from None
    pinned = commit == MICROPYTHON_COMMIT
    if not explicit and not pinned:
        raise SourceError(f"{where} is MicroPython {version} ({commit[:10]}), expected {MICROPYTHON_VERSION}: "
                          "delete it and run 'invoke setup'")
    checked: list[str] = []
    for port in ports:
        for sub in port_submodules(port):
            if submodules is not None and sub not in submodules:
                continue
            checked.append(sub)
            want = submodule_commit(where, sub)
            have = _submodule_head(where, sub)
            if have is None:
                raise SourceError(f"{where}: submodule {sub} (needed by {port}) is missing: run 'invoke setup --ports {port}'")
            if have != want:
                raise SourceError(f"{where}: submodule {sub} is at {have[:10]}, MicroPython pins {want[:10]}: "
                                  f"run 'invoke setup --ports {port}'")
    changes = changes_sha256(where, dict.fromkeys(checked))
    return Checkout(where, commit, version, changes is not None, pinned, changes)


def changes_sha256(where: Path, submodules: Iterable[str] = ()) -> str | None:
    """sha256 of the uncommitted changes to tracked files of the checkout at `where` and of its
    `submodules` (their `git diff HEAD`), None when there are none: a second edit of an already
    modified checkout, or one inside lib/micropython-lib, is another build, not "up to date".
    (Untracked files are not counted: MicroPython's manifests freeze tracked folders.)"""
    h = hashlib.sha256()
    found = False
    for sub in ("", *submodules):
        tree = where / sub if sub else where
        if sub and not (tree / ".git").exists():
            continue
        try:
            diff = subprocess.run(["git", "-C", str(tree), "diff", "HEAD", "--binary", "--ignore-submodules=all"],
                                  capture_output=True, timeout=60)
        except FileNotFoundError:
            raise SourceError("git is not installed, so the checkout cannot be checked") from None
        if diff.returncode != 0:
            raise SourceError(f"{tree}: git diff failed ({diff.stderr.decode(errors='replace').strip()})")
        if diff.stdout:
            found = True
            h.update(f"{sub or '.'} {len(diff.stdout)}\n".encode() + diff.stdout)
    return h.hexdigest() if found else None


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


# What git says when the source is there but lacks the commit asked for (a mirror without a pin).
_NO_SUCH_COMMIT = ("not our ref", "couldn't find remote ref", "no such remote ref", "unadvertised object",
                   "upload-pack: not our", "did not send all necessary objects", "reference is not a tree")


def _is_local(url: str) -> bool:
    return "://" not in url and not re.match(r"^[\w.-]+@[\w.-]+:", url)


def _network_error(url: str, err: subprocess.CalledProcessError, commit: str | None = None,
                   what: str | None = None) -> SourceError:
    """One line saying why `url` gave nothing: a source lacking the pinned commit, a mirror path
    that is not there, or (otherwise) the network."""
    detail = (err.stderr or "").strip().splitlines()
    last = detail[-1] if detail else f"git exited {err.returncode}"
    text = (err.stderr or "").lower()
    mirror = f"set {ENV_GIT_URL} to a mirror that has it (or pass --git-url; e.g. '/srv/git/{{owner}}+{{name}}/repo')"
    if commit and any(s in text for s in _NO_SUCH_COMMIT):
        pin = f"commit {commit[:10]}" + (f", the one MicroPython {MICROPYTHON_VERSION} pins for {what}" if what else "")
        return SourceError(f"cannot fetch {url}: it has no {pin} ({last}): a mirror without that commit cannot "
                           f"provide it; {mirror}")
    if _is_local(url) and not Path(url).exists():
        return SourceError(f"cannot fetch {url}: no such mirror folder ({last}): {mirror}, or fix the path")
    return SourceError(f"cannot fetch {url} ({last}): check the network, or {mirror}")


# Building MicroPython never needs a submodule's own test suite; leaving it out keeps the
# cache small and works with mirrors that omit large generated test data.
SPARSE_PATTERNS = "/*\n!/tests/\n"


def _checkout_submodule(subdir: Path, url: str, commit: str) -> None:
    fresh = not (subdir / ".git").exists()
    if fresh:
        if subdir.exists():
            shutil.rmtree(subdir)  # git leaves an empty folder for a submodule not yet fetched
        _git(None, "-c", "protocol.file.allow=always", "clone", "--quiet", "--filter=blob:none",
             "--no-checkout", url, str(subdir))
    try:
        _git(subdir, "config", "core.sparseCheckout", "true")
        (Path(_git(subdir, "rev-parse", "--absolute-git-dir")) / "info").mkdir(exist_ok=True)
        (Path(_git(subdir, "rev-parse", "--absolute-git-dir")) / "info" / "sparse-checkout").write_text(SPARSE_PATTERNS)
        if _git(subdir, "cat-file", "-t", commit, check=False) != "commit":
            # From the URL asked for now, not the one the submodule was first cloned from.
            _git(subdir, "-c", "protocol.file.allow=always", "fetch", "--quiet", "--filter=blob:none", url, commit)
        _git(subdir, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit)
    except BaseException:
        if fresh:
            # A clone made here whose pin could not be checked out would look like a submodule
            # "at" the source's default branch: leave the empty folder git leaves instead (missing).
            shutil.rmtree(subdir, ignore_errors=True)
            subdir.mkdir(exist_ok=True)
        raise


def setup(ports: Iterable[str] = ALL_PORTS, path: str | Path | None = None, url_template: str | None = None,
          on_event: Callable[[str], None] = lambda msg: None) -> Checkout:
    """Make (or complete) the checkout: MicroPython v1.28.0 plus the ports' submodules."""
    ports = tuple(ports)
    for port in ports:
        load_port(port)            # a misspelt port is refused before a clone of hundreds of MB
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
            raise _network_error(url, e, MICROPYTHON_COMMIT, f"MicroPython {MICROPYTHON_VERSION}") from None
        # Only a finished clone gets the real name: an interrupted setup never looks complete.
        staging.rename(where)
    head = _git(where, "rev-parse", "HEAD")
    if head != MICROPYTHON_COMMIT and not explicit:
        raise SourceError(f"{where} is at {head[:10]}, not {MICROPYTHON_VERSION}: delete it and run 'invoke setup' again")
    # Port by port: a source one port lacks (e.g. a pin the mirror does not have) does not stop
    # the others; the error names every port that is not ready, after the rest is done.
    failed: dict[str, str] = {}
    fetched: dict[str, str | None] = {}          # submodule -> None (ok) or the error
    for port in ports:
        for sub in port_submodules(port):
            if sub not in fetched:
                fetched[sub] = _fetch_submodule(where, sub, url_template, on_event)
            if fetched[sub] and port not in failed:
                failed[port] = str(fetched[sub])
    ready = [p for p in ports if p not in failed]
    for port in ready:
        try:
            prepare_toolchains([port], url_template, on_event)
        except SourceError as e:
            failed[port] = str(e)
    if failed:
        raise SourceError("; ".join(f"{port}: {error}" if len(failed) > 1 or len(ports) > 1 else error
                                    for port, error in failed.items()))
    return locate(where, ports)


def _fetch_submodule(where: Path, sub: str, url_template: str | None, on_event: Callable[[str], None]) -> str | None:
    """Check out one submodule at its pin; None when done, else the error (one line)."""
    want = submodule_commit(where, sub)
    if _submodule_head(where, sub) == want:
        return None
    upstream = _git(where, "config", "-f", ".gitmodules", f"submodule.{sub}.url")
    url = git_url(*_owner_name(upstream), template=url_template)
    on_event(f"fetching {sub} at {want[:10]} from {url}")
    try:
        _checkout_submodule(where / sub, url, want)
    except subprocess.CalledProcessError as e:
        return str(_network_error(url, e, want, sub))
    return None


def verify(ports: Iterable[str] = ALL_PORTS, path: str | Path | None = None,
           on_event: Callable[[str], None] = lambda msg: None) -> Checkout:
    """`setup --check`: the checkout as locate() verifies it, and each native toolchain that this
    machine could prepare is prepared. Raises SourceError saying what to run."""
    ports = tuple(ports)
    checkout = locate(path, ports)
    prepare_toolchains(ports, on_event=on_event, check=True)
    return checkout


def prepare_toolchains(ports: Iterable[str], url_template: str | None = None,
                       on_event: Callable[[str], None] = lambda msg: None, check: bool = False) -> None:
    """Prepare each port's native toolchain whose compiler is on PATH (others are named, not
    failed: those boards build in Docker). `check`: only verify, raising when one is missing."""
    for name in ports:
        port = load_port(name)
        spec = port.native
        if not spec.prepare:
            continue
        if spec.compiler and not shutil.which(spec.compiler):
            on_event(f"{name}: no {spec.compiler} on PATH, so no native toolchain to prepare (Docker builds still work)")
            continue
        if check:
            native_toolchain(port)
            continue
        tc = prepare_toolchain(port, url_template, on_event)
        if tc:
            on_event(f"{name}: native toolchain ready at {tc.path}")


# --- the working tree's state ----------------------------------------------------------------


def tree_changes(path: Path, *, untracked: bool = False, submodules: bool = True) -> list[str]:
    """What is uncommitted in the git tree at `path`, one `git status --porcelain` line each
    ([] = clean): the one probe build (project commit), release (refuse a dirty tree) and
    locate (a modified checkout) share. Raises SourceError when `path` is not a git tree."""
    args = ["status", "--porcelain", f"--untracked-files={'normal' if untracked else 'no'}"]
    if not submodules:
        args.append("--ignore-submodules=all")
    try:
        out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SourceError("git is not installed, so the tree cannot be checked") from None
    if out.returncode != 0:
        raise SourceError(f"{path} is not a git work tree ({out.stderr.strip() or 'git status failed'})")
    return [line for line in out.stdout.splitlines() if line.strip()]


# --- native toolchains (ESP8266: the SDK folder esp-open-sdk would assemble) -----------------

TOOLCHAIN_STAMP = "toolchain.json"
RECIPE_VERSION = 1        # bump when a recipe changes what it makes: a new folder is prepared


@dataclass(frozen=True)
class NativeToolchain:
    """A prepared native toolchain folder in the cache (complete: its stamp is written last)."""

    port: str
    path: Path
    stamp: dict[str, object]

    @property
    def sdk(self) -> Path:
        return self.path / "sdk"

    @property
    def python_bin(self) -> Path:
        return self.path / "venv" / "bin"

    @property
    def identity(self) -> str:
        """What the prepared folder is made of (pins, recipe, compiler), as the cache key sees it."""
        return json.dumps(self.stamp, sort_keys=True)


def _spec_key(port: Port) -> str:
    spec = port.native
    text = json.dumps([RECIPE_VERSION, spec.prepare, list(spec.python),
                       [[s.name, s.owner, s.repo, s.commit, list(s.exclude)] for s in spec.sources]])
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def toolchain_path(port: Port) -> Path:
    """Where `setup` prepares the port's native toolchain: the cache, named by its pins."""
    return cache_dir() / f"{port.name}-toolchain-{_spec_key(port)}"


def compiler_version(compiler: str, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """The compiler's `--version` first line (e.g. 'xtensa-lx106-elf-gcc (GCC) 12.2.0'), or None."""
    exe = which(compiler)
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def native_toolchain(port: Port) -> NativeToolchain | None:
    """The prepared toolchain for `port` when complete; None when the port needs none prepared."""
    if not port.native.prepare:
        return None
    path = toolchain_path(port)
    try:
        stamp = json.loads((path / TOOLCHAIN_STAMP).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise SourceError(f"no prepared {port.name} toolchain at {path}: run 'invoke setup --ports {port.name}' "
                          f"(needs {port.native.compiler or 'its compiler'} on PATH and the pinned sources)") from None
    return NativeToolchain(port.name, path, stamp)


def _run(argv: list[str], cwd: Path | None = None, log: Path | None = None, env: dict[str, str] | None = None) -> None:
    with (log.open("a") if log else open(os.devnull, "w")) as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SourceError(f"{' '.join(argv[:3])} ... failed (exit {proc.returncode})" + (f"; see {log}" if log else ""))


def _clone_at(url: str, commit: str, into: Path, exclude: Iterable[str] = ()) -> None:
    try:
        if not (into / ".git").exists():
            shutil.rmtree(into, ignore_errors=True)
            _git(None, "-c", "protocol.file.allow=always", "clone", "--quiet", "--filter=blob:none",
                 "--no-checkout", url, str(into))
        _git(into, "config", "core.sparseCheckout", "true")
        info = Path(_git(into, "rev-parse", "--absolute-git-dir")) / "info"
        info.mkdir(exist_ok=True)
        (info / "sparse-checkout").write_text("/*\n" + "".join(f"!{p}\n" for p in exclude))
        if _git(into, "cat-file", "-t", commit, check=False) != "commit":
            _git(into, "-c", "protocol.file.allow=always", "fetch", "--quiet", "--filter=blob:none", url, commit)
        _git(into, "-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", commit)
        _git(into, "clean", "-q", "-f", "-d", "-x")
    except subprocess.CalledProcessError as e:
        raise _network_error(url, e, commit) from None


def _prepare_esp_open_sdk(port: Port, src: dict[str, Path], out: Path, log: Path) -> None:
    """esp-open-sdk's Makefile (targets sdk, sdk_patch, lwip, libhal headers) for its pinned
    VENDOR_SDK 2.1.0-18-g61248df, with Debian's lx106 gcc instead of a crosstool-NG build.
    Everything is read from the fetched trees at setup time; nothing is vendored here."""
    compiler = shutil.which(port.native.compiler or "xtensa-lx106-elf-gcc")
    if not compiler:
        raise SourceError(f"{port.native.compiler} is not on PATH: install Debian's gcc-xtensa-lx106 "
                          "binutils-xtensa-lx106 picolibc-xtensa-lx106-elf (./kit build does)")
    prefix = compiler[: -len("gcc")]
    ar = prefix + "ar"
    sdk_src, open_sdk, lwip, hal = (src[n] for n in ("ESP8266_NONOS_SDK", "esp-open-sdk", "esp-open-lwip", "lx106-hal"))
    sdk = out / "sdk"
    sdk.mkdir(parents=True)
    # sdk: the vendor SDK's headers and libraries.
    shutil.copytree(sdk_src / "include", sdk / "include")
    shutil.copytree(sdk_src / "lib", sdk / "lib")
    # sdk_patch (.sdk_patch_2.1.0-18-g61248df): version define, C99 types patch, libcrypto's
    # objects into libwpa, user_rf_cal_sector_set.o into libmain.
    with (sdk / "include" / "esp_sdk_ver.h").open("a") as f:
        f.write("#undef ESP_SDK_VERSION\n#define ESP_SDK_VERSION 020100\n")
    _run(["patch", "-s", "-N", "-p1", "-d", str(sdk), "-i", str(open_sdk / "c_types-c99_sdk_2.patch")], log=log)
    tmp = sdk / "lib" / "tmp"
    tmp.mkdir()
    _run([ar, "x", "../libcrypto.a"], cwd=tmp, log=log)
    _run([ar, "rs", "libwpa.a", *sorted(f"tmp/{p.name}" for p in tmp.glob("*.o"))], cwd=sdk / "lib", log=log)
    shutil.rmtree(tmp)
    obj = out / "user_rf_cal_sector_set.o"
    _run([compiler, "-O2", "-isystem", str(sdk / "include"), "-c", str(open_sdk / "user_rf_cal_sector_set.c"),
          "-o", str(obj)], log=log)
    _run([ar, "r", str(sdk / "lib" / "libmain.a"), str(obj)], log=log)
    # lwip: esp-open-lwip's liblwip_open.a with the lx106 gcc, and its headers beside the SDK's.
    _run(["make", "-C", str(lwip), "-f", "Makefile.open", f"-j{os.cpu_count() or 1}", f"CC={compiler}", f"AR={ar}",
          f"CFLAGS_EXTRA=-isystem {sdk / 'include'} -fcommon"], log=log)
    shutil.copy2(lwip / "liblwip_open.a", sdk / "lib" / "liblwip_open.a")
    for name in ("arch", "lwip", "netif"):
        shutil.copytree(lwip / "include" / name, sdk / "include" / name, dirs_exist_ok=True)
    shutil.copy2(lwip / "include" / "lwipopts.h", sdk / "include" / "lwipopts.h")
    # libhal's headers (xtensa/config/core-isa.h and friends), as esp-open-sdk installs them.
    shutil.copytree(hal / "include" / "xtensa", sdk / "include" / "xtensa", dirs_exist_ok=True)


RECIPES: dict[str, Callable[[Port, dict[str, Path], Path, Path], None]] = {
    "esp-open-sdk": _prepare_esp_open_sdk,
}


def prepare_toolchain(port: Port, url_template: str | None = None,
                      on_event: Callable[[str], None] = lambda msg: None) -> NativeToolchain | None:
    """Prepare (or verify) the port's native toolchain folder in the cache, from its pinned sources.

    None when the port has nothing to prepare. The folder is assembled under a temporary name
    and renamed when complete, so an interrupted setup never looks prepared."""
    spec = port.native
    if not spec.prepare:
        return None
    try:
        return native_toolchain(port)
    except SourceError:
        pass
    recipe = RECIPES.get(spec.prepare)
    if recipe is None:
        raise SourceError(f"ports/{port.name}/port.toml: native.prepare: unknown recipe {spec.prepare!r} "
                          f"(known: {', '.join(RECIPES)})")
    compiler = compiler_version(spec.compiler) if spec.compiler else None
    if spec.compiler and not compiler:
        raise SourceError(f"{spec.compiler} is not on PATH: install Debian's gcc-xtensa-lx106 binutils-xtensa-lx106 "
                          "picolibc-xtensa-lx106-elf (./kit build does), then run 'invoke setup --ports "
                          f"{port.name}' again")
    final = toolchain_path(port)
    sources = final.with_name(final.name + ".src")        # clones, kept for the next prepare
    staging = final.with_name(final.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    log = staging / "prepare.log"
    try:
        src: dict[str, Path] = {}
        for s in spec.sources:
            url = git_url(s.owner, s.repo, url_template)
            on_event(f"fetching {s.name} at {s.commit[:10]} from {url}")
            _clone_at(url, s.commit, sources / s.name, s.exclude)
            src[s.name] = sources / s.name
        on_event(f"assembling the {port.name} SDK ({spec.prepare}) in {final}")
        recipe(port, src, staging, log)
        if spec.python:
            on_event(f"installing {', '.join(spec.python)} into its own venv")
            _run([sys.executable, "-m", "venv", str(staging / "venv")], log=log)
            _run([str(staging / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", *spec.python], log=log)
        stamp = {"port": port.name, "recipe": spec.prepare, "recipe_version": RECIPE_VERSION, "compiler": compiler,
                 "python": list(spec.python), "sources": {s.name: f"{s.owner}/{s.repo}@{s.commit}" for s in spec.sources}}
        (staging / TOOLCHAIN_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
    except SourceError as e:
        kept = final.with_name(final.name + ".failed.log")
        if log.is_file():
            shutil.copy2(log, kept)
        shutil.rmtree(staging, ignore_errors=True)
        raise SourceError(f"preparing the {port.name} toolchain failed: {e}".replace(str(log), str(kept))) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return native_toolchain(port)
