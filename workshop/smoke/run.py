"""Running the checks on boards: the device-side programs (real .py files in device/, sent as
text), one raw-REPL session per board, all boards in parallel.

The device check reports its progress line by line ('@step', '@fact', '@mod'): when a board
runs out of time (`timeout`, `--timeout`), its report says which step was running and carries
the facts gathered so far, instead of a bare timeout.
"""

from __future__ import annotations

import functools
import io
import json
import threading
import time
import tokenize
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..devconfig import masked
from ..parallel import results
from ..provision import CONFIG_PATH_CODE, HOST_PLATFORMS
from ..repl import Pacing, ReplError, ReplEvent, ReplSession, ReplTimeout
from .evaluate import HTTP_STAGES, MQTT_STAGES, _reason, config_shape_error, evaluate, mqtt_port
from .expect import RUNS_ON_IMPORT, Expected
from .model import FAIL, PASS, SKIP, Check, DeviceReport, NetworkOptions, SmokeError

# The programs run on the board, by name: device/<name>.py.
DEVICE_SCRIPTS = ("check", "wifi", "mqtt", "http")


def device_source(name: str) -> str:
    """The text of device/<name>.py, as shipped with the package."""
    if name not in DEVICE_SCRIPTS:
        raise ValueError(f"no device script {name!r} (scripts: {', '.join(DEVICE_SCRIPTS)})")
    return resources.files(__package__).joinpath("device", f"{name}.py").read_text(encoding="utf-8")


# Around every program: the names it binds in the board's REPL globals and the modules it
# imports are removed when it ends (printed its result, raised, or was interrupted). Left there,
# the stack the check imports and its facts (the config, passwords included) held ~22 KB of
# the heap until the board's next reset: more than half of what an ESP8266 has for the lesson.
# A name the person had bound before (their own R or sys) gets its value back: the globals are
# a copy put back whole (the copy is taken, as an argument, before the dict is cleared).
_KEEP = "_g=dict(globals())\nimport sys\n_m=list(sys.modules)\ntry:\n"
_CLEAN = ("finally:\n"
          " list(map(sys.modules.pop,[k for k in sys.modules if k not in _m]))\n"
          " (lambda d,g:(d.clear(),d.update(g)))(globals(),_g)\n")


def device_program(name: str, args: dict[str, Any]) -> str:
    """What is sent to the board: a prelude (sys, json, A = the arguments; for the main check
    also the config path, computed as provisioning does) and device/<name>.py without its
    comments, blank lines and most of its indentation (`compact`), inside a try whose finally
    leaves the board's globals and sys.modules as they were (`_KEEP`, `_CLEAN`)."""
    prelude = f"import sys, json\nA = json.loads({json.dumps(args)!r})\n"
    if name == "check":
        prelude += CONFIG_PATH_CODE
    body = compact(prelude + device_source(name))
    return _KEEP + "".join(f" {line}\n" for line in body.splitlines()) + _CLEAN


def compact(source: str) -> str:
    """Python source without comments and blank lines, indented one space per level (the device
    scripts indent by 4): fewer bytes over a paced UART, the same code."""
    continued: set[int] = set()          # lines inside brackets: their indentation means nothing
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.NL and depth:
            continued.add(tok.start[0] + 1)
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        body = line.lstrip(" ")
        if not body or body.startswith("#"):
            continue
        indent = len(line) - len(body)
        if number in continued:
            lines.append(" " + body)
            continue
        if indent % 4:
            raise ValueError(f"device script line {number} not indented by fours: {line!r}")
        lines.append(" " * (indent // 4) + body)
    return "\n".join(lines) + "\n"


@dataclass
class Progress:
    """How far the device check got, read from its output so far."""

    step: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    modules: dict[str, list[Any]] = field(default_factory=dict)


def read_progress(output: bytes | str) -> Progress:
    """The '@step' / '@fact' / '@mod' lines of the device check's (partial) output."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    progress = Progress()
    for line in text.replace("\r\n", "\n").split("\n"):
        kind, _, rest = line.partition(" ")
        try:
            if kind == "@step":
                progress.step = rest.strip()
            elif kind == "@fact":
                value = json.loads(rest)
                if isinstance(value, dict):
                    progress.facts.update(value)
            elif kind == "@mod":
                name, *info = json.loads(rest)
                progress.modules[str(name)] = info
        except (ValueError, TypeError):
            continue                          # the line being written when time ran out
    return progress


def _timeout_detail(progress: Progress, timeout: float, expected: Expected, option: str,
                    error: ReplError) -> str:
    facts = progress.facts
    known = []
    if facts.get("version"):
        known.append(f"MicroPython {facts['version']} on {facts.get('platform')}"
                     + (f" ({facts['machine']})" if facts.get("machine") else ""))
    if progress.modules:
        done = ", ".join(f"{n} ({info[0]})" for n, info in progress.modules.items())
        known.append(f"{len(progress.modules)} of {len(expected.stack_modules)} stack modules checked: {done}")
    if "free" in facts:
        known.append(f"{facts['free']} bytes free")
    where = f"during step {progress.step!r}" if progress.step else f"before the check started ({error.reason})"
    return (f"the device check did not finish within {timeout:g} s, {where}; "
            + (f"found so far: {'; '.join(known)}" if known else "nothing reported yet")
            + f" (a slow or emulated board: raise {option})")


def smoke_device(port: str, expected: Expected, *, network: NetworkOptions | None = None,
                 on_event: Callable[[ReplEvent], None] | None = None, pacing: Pacing = Pacing(),
                 timeout: float = 10.0, connect_timeout: float = 3.0, baudrate: int = 115200,
                 session_factory: Callable[..., ReplSession] | None = None,
                 timeout_option: str = "--timeout",
                 read_mac: Callable[[ReplSession], str] | None = None) -> DeviceReport:
    """One board's smoke test; `timeout_option` is the caller's name for `timeout`, which a
    timeout's message tells the user to raise. `read_mac` (smoke --registry): the board's MAC
    is read first, in the same session as its checks (one interrupt of what the board runs, and
    the result is the MAC's whatever the port is by then), into `report.mac`."""
    report = DeviceReport(port=port, expected=expected.source)
    t0 = time.monotonic()
    make = session_factory or ReplSession
    session = make(port, baudrate=baudrate, timeout=timeout, connect_timeout=connect_timeout, pacing=pacing,
                   on_event=on_event)
    try:
        try:
            session.open()
            session.enter_raw()
        except ReplError as e:
            report.checks.append(Check("connect", FAIL, str(e), round(time.monotonic() - t0, 3)))
            if read_mac is not None:
                report.mac_error = str(e)         # no REPL, no MAC: the same reason
            return report
        report.checks.append(Check("connect", PASS, "raw REPL", round(time.monotonic() - t0, 3)))
        if read_mac is not None:
            try:
                report.mac = read_mac(session)
            except ReplError as e:
                # Not a check of the board's: its result is not recorded, and the caller says why.
                report.mac_error = str(e)
                again = _interrupt(session) if isinstance(e, ReplTimeout) else None
                if again is not None:
                    report.checks.append(Check("device", FAIL, str(again), round(time.monotonic() - t0, 3)))
                    return report
        t = time.monotonic()
        args = {"mods": list(expected.stack_modules), "lazy": list(RUNS_ON_IMPORT)}
        try:
            facts = session.eval_json(device_program("check", args))
        except ReplTimeout as e:
            progress = read_progress(e.partial)
            report.facts = masked({**progress.facts, "incomplete": {"step": progress.step,
                                                                    "modules": progress.modules}})
            report.checks.append(Check("device", FAIL, _timeout_detail(progress, session.timeout, expected,
                                                                       timeout_option, e),
                                       round(time.monotonic() - t, 3)))
            _interrupt(session)               # the board is left at a usable prompt (or said why not above)
            return report
        except ReplError as e:
            report.checks.append(Check("device", FAIL, str(e), round(time.monotonic() - t, 3)))
            return report
        # Reports are published (JSON, JUnit): the config's secret-looking keys are masked.
        report.facts = masked({k: v for k, v in facts.items() if k not in ("modules", "lazy_shadow")})
        report.checks += evaluate(facts, expected)
        if network is not None:
            report.checks += _network_checks(session, facts, network, port)
        return report
    except Exception as e:  # noqa: BLE001 - an odd answer from one board is its failure, not the run's
        report.checks.append(Check("device", FAIL, f"unexpected {type(e).__name__}: {e}",
                                   round(time.monotonic() - t0, 3)))
        return report
    finally:
        session.close()
        report.duration_s = round(time.monotonic() - t0, 3)
        if on_event:
            on_event(ReplEvent(port, "smoked", "all checks passed" if report.ok else
                               "failed: " + ", ".join(c.name for c in report.failed)))


def _interrupt(session: ReplSession) -> ReplError | None:
    """A board still inside what timed out: Ctrl-C it back to the raw prompt, for what comes next;
    the error when it does not come back."""
    try:
        session.enter_raw()
    except ReplError as e:
        return e
    return None


def _run_check(session: ReplSession, name: str, script: str, args: dict[str, Any], timeout: float,
               judge: Callable[[dict[str, Any]], Check], what: Callable[[str | None], str] | None = None) -> Check:
    """One network check; `what(stage)` names what timed out ("GET URL: reading the answer
    failed"), from the last stage the board announced ('@step', None before the first)."""
    t = time.monotonic()
    try:
        result = session.eval_json(device_program(script, args), timeout=timeout)
        check = judge(result)
    except ReplTimeout as e:
        # The board is still inside the check: interrupt it, so that the next check can run.
        stage = read_progress(e.partial).step
        said = what(stage) if what else (f"during stage {stage!r}" if stage else "")
        why = f"did not finish within {timeout:g} s" if stage else e.reason
        check = Check(name, FAIL, (f"{said}: " if said else "") + f"{why}; the board was interrupted")
        again = _interrupt(session)
        if again is not None:
            check = Check(name, FAIL, f"{check.detail}, and did not come back: {again.reason}")
    except ReplError as e:
        check = Check(name, FAIL, e.reason)
    return Check(check.name, check.status, check.detail, round(time.monotonic() - t, 3))


def _network_checks(session: ReplSession, facts: dict[str, Any], opts: NetworkOptions, port: str) -> list[Check]:
    cfg = facts.get("config", {})
    checks: list[Check] = []
    host_port = facts.get("platform") in HOST_PLATFORMS

    def wifi(r: dict[str, Any]) -> Check:
        if "skip" in r:
            return Check("wifi", SKIP, r["skip"])
        if "error" in r:
            return Check("wifi", FAIL, r["error"])
        return Check("wifi", PASS, f"connected to {cfg.get('ssid')!r} as {r['ip']} in {r['ms']} ms")

    # Run on the device even without a usable config: the unix port skips (no radio) either way,
    # a board says that it has no config to connect with.
    checks.append(_run_check(session, "wifi", "wifi",
                             {"path": cfg.get("path") or "/workshop.json", "host": host_port,
                              "timeout_ms": int(opts.wifi_timeout * 1000)},
                             opts.wifi_timeout + 10, wifi))
    shape = config_shape_error(cfg)
    mqtt_cfg = {} if shape else cfg.get("mqtt") or {}
    host = opts.mqtt_host or mqtt_cfg.get("broker")
    if shape and not host:
        checks.append(Check("mqtt", FAIL, f"no broker: {shape}"))
    elif not host:
        checks.append(Check("mqtt", FAIL, "no broker: pass --mqtt HOST or provision with --mqtt"))
    else:
        try:
            if opts.mqtt_port:
                mport = mqtt_port(opts.mqtt_port)
            elif opts.mqtt_host and opts.mqtt_host != mqtt_cfg.get("broker"):
                mport = 1883                   # another broker than the config's: not the config's port
            else:
                mport = mqtt_port(mqtt_cfg.get("port") or 1883, f"{cfg.get('path')}: mqtt.port")
        except SmokeError as e:
            mport = None
            checks.append(Check("mqtt", FAIL, str(e)))
        if mport is not None:
            tag = f"{abs(hash((port, time.time()))) & 0xFFFFFF:06x}"
            wait_ms = int(opts.mqtt_timeout * 1000)
            args = {"client": f"smoke-{tag}", "host": host, "port": mport, "topic": f"workshop/smoke/{tag}",
                    "payload": f"ping {tag}", "timeout_ms": wait_ms, "timeout_s": opts.mqtt_timeout}

            def mqtt(r: dict[str, Any]) -> Check:
                if "error" in r:
                    stage = MQTT_STAGES.get(str(r.get("stage")), r.get("stage"))
                    return Check("mqtt", FAIL, f"broker {host}:{mport}: {stage}: {_reason(r['error'])}")
                return Check("mqtt", PASS, f"round trip through {host}:{mport} in {r.get('ms')} ms")
            def mqtt_stage(stage: str | None) -> str:
                return f"broker {host}:{mport}" + (f": {MQTT_STAGES.get(stage, stage)}" if stage else "")
            # connect + subscribe + wait, each bounded on the device by mqtt_timeout (not the
            # name lookup: a host name the board cannot resolve may take longer)
            checks.append(_run_check(session, "mqtt", "mqtt", args, 3 * opts.mqtt_timeout + 5, mqtt, mqtt_stage))
    if opts.http_url:
        url = opts.http_url

        def http(r: dict[str, Any]) -> Check:
            if "error" in r:
                stage = HTTP_STAGES.get(str(r.get("stage")), r.get("stage"))
                return Check("http", FAIL, f"GET {url}: {stage}: {_reason(r['error'])}")
            status = r.get("status")
            ok = isinstance(status, int) and 200 <= status < 300
            said = f"HTTP {status}" + (f" {r['reason']}" if r.get("reason") else "")
            return Check("http", PASS if ok else FAIL, f"GET {url}: {said}, {r.get('bytes')} bytes"
                         + ("" if ok else " (expected a 2xx status)"))
        def http_stage(stage: str | None) -> str:
            return f"GET {url}" + (f": {HTTP_STAGES.get(stage, stage)}" if stage else "")
        checks.append(_run_check(session, "http", "http", {"url": url, "timeout_s": opts.http_timeout},
                                 2 * opts.http_timeout + 5, http, http_stage))
    return checks


def smoke_all(ports: Sequence[str], expected: Expected | Callable[[str], Expected], *,
              workers: int | None = None, cancel: threading.Event | None = None, **kwargs: Any) -> list[DeviceReport]:
    """Smoke every port in parallel; one report per port, in the order given.

    Ctrl-C (KeyboardInterrupt) sets `cancel`: every session's port refuses I/O from then on, so
    each board's check ends within one read and the reports come back at once, those cut short
    `interrupted`; a caller that passed `cancel` sees it set. A `session_factory` of the
    caller's must make sessions that end on that event itself (ReplSession(cancel=...))."""
    cancel = cancel or threading.Event()
    if kwargs.get("session_factory") is None:
        kwargs["session_factory"] = functools.partial(ReplSession, cancel=cancel)

    def one(port: str) -> DeviceReport:
        if cancel.is_set():
            return DeviceReport(port, interrupted=True)
        try:
            exp = expected(port) if callable(expected) else expected
        except SmokeError as e:
            return DeviceReport(port, [Check("expected", FAIL, str(e))])
        report = smoke_device(port, exp, **kwargs)
        report.interrupted = cancel.is_set()       # finished after Ctrl-C: cut short
        return report

    with ThreadPoolExecutor(max_workers=max(1, workers or len(ports))) as pool:
        return list(results([pool.submit(one, p) for p in ports], cancel))
