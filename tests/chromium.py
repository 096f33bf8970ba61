"""Headless Chromium driven over the DevTools protocol: load a page, record console messages,
exceptions and every network response, evaluate JavaScript, click, take a screenshot.

Shared by every test that shows a page to a real browser (`from chromium import Browser`)."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--window-size=1280,1500", "--remote-debugging-port=0"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLog:
    console: list[tuple[str, str]] = field(default_factory=list)     # (level, text)
    exceptions: list[str] = field(default_factory=list)
    responses: dict[str, int] = field(default_factory=dict)          # url -> status
    failures: list[tuple[str, str]] = field(default_factory=list)    # (url, error)
    _requests: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return ([f"console.{lvl}: {text}" for lvl, text in self.console if lvl in ("error", "assert")]
                + [f"exception: {e}" for e in self.exceptions]
                + [f"load failed: {u}: {e}" for u, e in self.failures])


class Browser:
    def __init__(self, binary: str, profile: Path, log_file: Path) -> None:
        self._log = log_file.open("wb")
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=self._log, stderr=subprocess.STDOUT)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start; see {log_file}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024))
        self._id = 0
        self.log = PageLog()
        for domain in ("Runtime", "Log", "Network", "Page"):
            self.call(f"{domain}.enable")

    def _event(self, msg: dict) -> None:
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            self.log.console.append((p["type"], text))
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.log.exceptions.append(d.get("exception", {}).get("description") or d.get("text", "?"))
        elif method == "Log.entryAdded":
            e = p["entry"]
            self.log.console.append((e["level"], f"{e.get('text')} {e.get('url', '')}".strip()))
        elif method == "Network.requestWillBeSent":
            self.log._requests[p["requestId"]] = p["request"]["url"]
        elif method == "Network.responseReceived":
            self.log.responses[p["response"]["url"]] = p["response"]["status"]
        elif method == "Network.loadingFailed":
            self.log.failures.append((self.log._requests.get(p["requestId"], "?"), p.get("errorText", "?")))

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self._id += 1
        my_id = self._id
        self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def pump(self, seconds: float) -> None:
        """Keep recording events for a while (late console errors, lazy loads)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self._event(json.loads(self.ws.recv(timeout=max(0.05, deadline - time.monotonic()))))
            except TimeoutError:
                break

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 30) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for(ready, timeout, url)

    def wait_for(self, ready: str, timeout: float = 30, what: str = "page") -> None:
        """Until the expression is true; a navigation in between (a submitted form) is fine."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(ready):
                    return
            except RuntimeError:  # the old document went away while evaluating
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {ready} not true after {timeout} s; errors: {self.log.errors}")
            self.pump(0.1)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
