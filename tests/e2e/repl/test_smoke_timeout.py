"""A slow board (an import that takes seconds, as on an emulated ESP32) against a smoke budget:
the timeout says which step was running and what had been found, and the board stays usable.

The PTY peer cannot be interrupted inside a running command (MicroPython's unix port clears
ISIG in raw mode, where a board's UART turns Ctrl-C into an interrupt at once), so its slow
import ends by itself a little after the budget; the session then gets the prompt back.
"""

from __future__ import annotations

from workshop import smoke
from workshop.repl import Pacing, ReplSession

SLOW_S = 4
SLOW = f"import time\ntime.sleep({SLOW_S})\n"     # a module whose import takes 4 s


def expected() -> smoke.Expected:
    # asyncio is frozen into the PyPI runtime; slowmod is a file on the device.
    return smoke.Expected(source="test", stack_modules=("asyncio", "slowmod", "mip"))


def test_a_timeout_names_the_step_and_keeps_the_facts(make_peer):
    peer = make_peer(stack_on_path=False, files={"slowmod.py": SLOW, "workshop.json": '{"hostname": "x"}'})
    [report] = smoke.smoke_all([peer.port], expected(), timeout=2.5, connect_timeout=8)
    [failed] = report.failed
    assert failed.name == "device"
    assert failed.duration_s < SLOW_S                 # the budget decided, not the board
    version = report.facts["version"]
    assert failed.detail.startswith("the device check did not finish within 2.5 s, during step 'import slowmod'; "
                                    f"found so far: MicroPython {version} on linux")
    assert "1 of 3 stack modules checked: asyncio (frozen)" in failed.detail and "raise --timeout" in failed.detail
    assert report.facts["platform"] == "linux" and version.count(".") == 2
    assert report.facts["incomplete"]["step"] == "import slowmod"
    assert report.facts["incomplete"]["modules"]["asyncio"][0] == "frozen"
    with ReplSession(peer.port) as s:                   # left at a usable prompt
        assert s.eval("1 + 2") == 3


def test_a_larger_budget_lets_the_slow_board_finish(make_peer):
    peer = make_peer(stack_on_path=False, files={"slowmod.py": SLOW, "workshop.json": '{"hostname": "x"}'})
    [report] = smoke.smoke_all([peer.port], expected(), timeout=15.0)
    assert report.check("device") is None
    assert report.check("module asyncio").status == smoke.PASS
    slow = report.check("module slowmod")
    assert slow.status == smoke.FAIL and "not frozen" in slow.detail       # a file on the device: correct verdict
    assert report.check("config").status == smoke.PASS and "incomplete" not in report.facts


def test_the_time_spent_sending_the_check_counts_against_the_budget(make_peer):
    """Over a slow link (here: the session's pacing slowed to ~640 B/s, as after lost bytes on a
    cheap bridge) sending the check takes longer than --timeout: the check reports that it did
    not finish within the budget the user set, instead of passing after twice that."""
    peer = make_peer(stack_on_path=False, files={"workshop.json": '{"hostname": "x"}'})
    slow_link = Pacing(chunk=32, delay=0.05)
    [report] = smoke.smoke_all([peer.port], expected(), timeout=2.0, connect_timeout=8, pacing=slow_link)
    [failed] = report.failed
    assert failed.name == "device" and failed.detail.startswith("the device check did not finish within 2 s"), \
        failed.detail
    assert failed.duration_s < 2.0 + 2.5, failed.duration_s   # sending stopped at the budget (it takes ~5 s here)
    with ReplSession(peer.port) as s:                   # left at a usable prompt
        assert s.eval("1 + 2") == 3
    # The same link with a budget that covers the sending passes.
    [report] = smoke.smoke_all([peer.port], expected(), timeout=30.0, connect_timeout=8, pacing=slow_link)
    assert report.check("device") is None and report.check("config").status == smoke.PASS
