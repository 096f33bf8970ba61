"""Helpers for the client-library device tests (imported by the test modules beside it)."""

from __future__ import annotations

import ast
import queue
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from support import free_port  # noqa: F401 (re-exported for the tests)

BIG = bytes(range(256)) * 200  # /big on the test HTTP server: 51,200 bytes
CHUNKS = [b"hello", b" ", "chunked °world".encode(), b"!" * 300]  # /chunked, one chunk each


def device_lines(stdout: str) -> list:
    """Each line a device script printed, read back as the Python literal it printed."""
    return [ast.literal_eval(line) for line in stdout.splitlines() if line.strip()]


class DeviceProcess:
    """A MicroPython script running in the background; its printed lines arrive in order."""

    def __init__(self, micropython, code: str, tmp_path: Path, *args: str, **kw) -> None:
        script = tmp_path / f"device_{time.monotonic_ns()}.py"
        script.write_text(code)
        self.proc = micropython.popen(script, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, wanted, timeout: float = 10):
        """Wait for the next printed line and return it as a literal; fail if it is not `wanted`."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"device printed nothing for {timeout} s; so far {self.seen}") from None
        if line is None:
            raise AssertionError(f"device exited {self.proc.wait()} before {wanted!r}; printed {self.seen}\n"
                                 f"{self.proc.stderr.read()}")
        self.seen.append(line)
        value = ast.literal_eval(line)
        if wanted is not ... and value != wanted:
            raise AssertionError(f"device printed {value!r}, expected {wanted!r}")
        return value

    def finish(self, timeout: float = 20) -> None:
        """Wait for a clean exit."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"device did not exit; printed {self.seen}") from None
        if rc != 0:
            raise AssertionError(f"device exited {rc}; printed {self.seen}\n{self.proc.stderr.read()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Subscriber:
    """A paho-mqtt client on the host: what the broker really delivered."""

    def __init__(self, host: str, port: int, *topics: str, client_id: str = "", clean_session: bool = True,
                 user: str | None = None, password: str | None = None, ca: Path | None = None) -> None:
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)  # back soon after a broker restart
        if user:
            self.client.username_pw_set(user, password)
        if ca:
            self.client.tls_set(ca_certs=str(ca))
        self.client.connect(host, port)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert self._subscribed.wait(5), "paho subscriber got no SUBACK"

    def _on_message(self, client, userdata, msg) -> None:
        with self._cond:
            self.messages.append(Message(msg.topic, msg.payload, msg.qos, bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 10) -> list[Message]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos, retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
