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
    made = 0
    def __init__(self, i):
        if i not in Timer.ids:
            raise ValueError("invalid Timer number")
        self.id = i
        self.period = None
        Timer.made += 1
    def init(self, period, mode, callback):
        self.period = period
        self.callback = callback
    def deinit(self):
        self.period = None

class machine:
    pass
machine.Timer = Timer
sys.modules["machine"] = machine
import wsconfig
try:
    t = wsconfig.every(250, lambda _: None)
    print("TIMER", wsconfig._hw.id, wsconfig._hw.period)
except OSError as e:
    print("ERROR", e)
%s
"""


@pytest.mark.parametrize("port, ids, chosen", [
    ("esp8266", [-1, 0, 1], -1),     # a virtual timer: no hardware timer taken
    ("esp32", [0, 1, 2, 3], 3),      # ESP32/S2/S3: the highest, never the tutorials' Timer(0)
    ("esp32c3", [0, 1], 1),
])
def test_the_background_tick_never_takes_timer_0(micropython, tmp_path, port, ids, chosen):
    p = tmp_path / "probe.py"
    p.write_text(PROBE % (ids, ""))
    out = micropython.run(p).stdout
    assert f"TIMER {chosen} 250\n" in out, out


def test_a_port_with_only_timer_0_is_a_named_error(micropython, tmp_path):
    p = tmp_path / "probe.py"
    p.write_text(PROBE % ([0], ""))
    out = micropython.run(p).stdout
    assert "ERROR wsconfig: no machine.Timer(-1), Timer(3) or Timer(1)" in out, out


def test_every_service_shares_one_timer_at_the_shortest_period(micropython, tmp_path):
    # announce (250 ms) and a telnet session (100 ms) on an ESP32: one Timer(3), not two inits of it.
    body = """
import time, micropython
ran = []
s = wsconfig.every(100, lambda _: ran.append("telnet"))
print("SHARED", Timer.made, wsconfig._hw.id, wsconfig._hw.period)
# Both ports schedule a soft Timer's callback themselves: it must be the work, not a second
# micropython.schedule() (each tick would take two of the 4 slots socket callbacks share).
print("DIRECT", wsconfig._hw.callback is wsconfig._due)
t0 = time.ticks_ms()
while time.ticks_diff(time.ticks_ms(), t0) < 1050:  # the timer firing, 20 times a second, as the port does
    micropython.schedule(wsconfig._hw.callback, wsconfig._hw)
    time.sleep_ms(50)
print("RAN", ran.count("telnet"))
wsconfig.cancel(s)
print("AFTER", wsconfig._hw.period)
wsconfig.cancel(t)
print("NONE", wsconfig._hw.period, len(wsconfig._timers))
"""
    p = tmp_path / "probe.py"
    p.write_text(PROBE % ([0, 1, 2, 3], body))
    out = micropython.run(p).stdout
    assert "SHARED 1 3 100\n" in out and "DIRECT True\n" in out, out
    ran = int(out.split("RAN ")[1].split()[0])
    assert 8 <= ran <= 11, out  # every 100 ms for 1 s, run from the scheduled callback
    assert "AFTER 250\n" in out and "NONE None 0\n" in out, out


def test_a_background_task_that_raises_is_stopped_and_named_and_the_others_run_on(micropython, tmp_path):
    """A timer callback that raised (a MemoryError in telnet's flush, a bug in announce) ended
    each tick where it stood: the tasks after it never ran, its traceback came every period, and
    on unix it ended serve() and every service with it."""
    p = tmp_path / "probe.py"
    p.write_text("""
import wsconfig
ran = []
def announce(_):
    ran.append(1)
def broken(_):
    raise MemoryError("memory allocation failed")
wsconfig.every(50, announce)
b = wsconfig.every(50, broken)   # after announce in the list: _due runs it first
wsconfig.serve(600)              # returns, not raises
print("RAN", len(ran), "LEFT", len(wsconfig._timers), b in wsconfig._timers)
""")
    out = micropython.run(p).stdout
    assert out.count("workshop: background task stopped: <function broken") == 1, out
    assert "MemoryError('memory allocation failed'" in out, out
    ran = int(out.split("RAN ")[1].split()[0])
    assert ran >= 8 and "LEFT 1 False" in out, out
