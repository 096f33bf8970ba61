"""wsconfig.every() on a board: which machine.Timer the stack's background tick takes. Run on the
real MicroPython runtimes with a fake `machine` (the unix port has no Timer) whose ids behave as
each port's do in v1.28: ESP8266 has virtual Timer(-1); esp32 raises ValueError for an id >= its
timer count (4 on ESP32/S2/S3, 2 on C3), and -1 is such an id."""

from __future__ import annotations

import pytest

PROBE = """
import sys
class _OS:
    pass
import os as _os
os = _OS()
os.getenv = _os.getenv
os.dupterm_notify = lambda s: None  # a board: wsconfig takes its machine.Timer path
sys.modules["os"] = os

class Timer:
    PERIODIC = 1
    ids = %r
    def __init__(self, i):
        if i not in Timer.ids:
            raise ValueError("invalid Timer number")
        self.id = i
    def init(self, period, mode, callback):
        self.period = period
    def deinit(self):
        pass

class machine:
    pass
machine.Timer = Timer
sys.modules["machine"] = machine
import wsconfig
try:
    t = wsconfig.every(250, lambda _: None)
    print("TIMER", t.id, t.period)
except OSError as e:
    print("ERROR", e)
"""


@pytest.mark.parametrize("port, ids, chosen", [
    ("esp8266", [-1, 0, 1], -1),     # a virtual timer: no hardware timer taken
    ("esp32", [0, 1, 2, 3], 3),      # ESP32/S2/S3: the highest, never the tutorials' Timer(0)
    ("esp32c3", [0, 1], 1),
])
def test_the_background_tick_never_takes_timer_0(micropython, tmp_path, port, ids, chosen):
    p = tmp_path / "probe.py"
    p.write_text(PROBE % (ids,))
    out = micropython.run(p).stdout
    assert f"TIMER {chosen} 250\n" in out, out


def test_a_port_with_only_timer_0_is_a_named_error(micropython, tmp_path):
    p = tmp_path / "probe.py"
    p.write_text(PROBE % ([0],))
    out = micropython.run(p).stdout
    assert "ERROR wsconfig: no machine.Timer(-1), Timer(3) or Timer(1)" in out, out
