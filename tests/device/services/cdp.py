"""A minimal Chrome DevTools Protocol driver for headless Chromium (navigate, evaluate, click)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from websockets.sync.client import connect

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Chromium:
    def __init__(self, binary: str, profile: Path):
        self.binary, self.profile = binary, profile
        self.n = 0

    def __enter__(self) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.profile}",
                                      "--remote-debugging-port=0", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        import urllib.request
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self._ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ws = self._ws.__enter__()
        self.call("Page.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._ws.__exit__(None, None, None)
        finally:
            self.proc.kill()
            self.proc.wait()

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=20))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                return msg["result"]

    def eval(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def _wait_load(self) -> None:
        deadline = time.monotonic() + 20
        while True:
            msg = json.loads(self.ws.recv(timeout=20))
            if msg.get("method") == "Page.loadEventFired":
                return
            if time.monotonic() > deadline:
                raise TimeoutError("page did not load")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self._wait_load()

    def click_and_wait(self, element_expr: str) -> None:
        self.eval(f"{element_expr}.click()")
        self._wait_load()
