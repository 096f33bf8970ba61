"""The raw-REPL session against real MicroPython REPLs on PTYs (pyserial, like a board)."""

from __future__ import annotations

import threading
import time

import pytest
from support import cancel_while_running

from workshop.repl import Pacing, RemoteError, ReplError, ReplSession, ReplTimeout, TransferError

BLOB = bytes(range(256)) * 6 + b"\r\n\x03\x04\x01 end"      # control bytes the REPL would act on


def test_exec_separates_stdout_and_exception(make_peer):
    peer = make_peer()
    with ReplSession(peer.port) as s:
        r = s.exec("print('out')\nraise ValueError('boom')")
        assert r.text == "out\n"
        assert "ValueError: boom" in r.error
        with pytest.raises(RemoteError) as e:
            s.run("import sys\nprint('before')\nsys.exit_code_nope")
        assert e.value.exc_type == "AttributeError" and e.value.stdout == "before\n"
        assert s.eval("{'a': [1, 2.5, None]}") == {"a": [1, 2.5, None]}
        assert s.stats["raw_paste"] is True          # the unix port offers raw paste


def test_put_get_is_atomic_and_exact(make_peer):
    peer = make_peer()
    (peer.root / "data.bin").write_bytes(b"old content")
    with ReplSession(peer.port) as s:
        s.put("data.bin", BLOB)
        assert s.get("data.bin") == BLOB
        assert not s.exists("data.bin.tmp")
    assert (peer.root / "data.bin").read_bytes() == BLOB


@pytest.mark.parametrize("raw_paste", [True, False], ids=["raw-paste", "paced-raw"])
def test_dropping_uart_still_gets_every_byte(make_peer, drop, raw_paste):
    """A relay that keeps 270 bytes per 100 ms (like an ESP32 UART) and discards the rest."""
    peer = make_peer(drop=drop)
    code = "x = [" + ",".join(str(i) for i in range(400)) + "]\nprint(sum(x))"
    assert len(code) > 1500
    with ReplSession(peer.port, raw_paste=raw_paste) as s:
        assert s.run(code).strip() == str(sum(range(400)))
        s.put("blob.bin", BLOB)
        assert s.stats["raw_paste"] is raw_paste
    assert (peer.root / "blob.bin").read_bytes() == BLOB
    assert drop.passed > 3000 and drop.dropped == 0


def test_unpaced_burst_is_really_dropped_and_never_half_run(make_peer, drop):
    """Control: without pacing the relay does drop bytes; the session refuses to run what arrived."""
    peer = make_peer(drop=drop)
    code = "open('ran.txt','w').write('x')\n" + "y = [" + ",".join(str(i) for i in range(400)) + "]\n"
    with ReplSession(peer.port, pacing=Pacing.unpaced(), raw_paste=False, retries=0) as s:
        with pytest.raises(TransferError):
            s.run(code)
    assert drop.dropped > 0
    assert not (peer.root / "ran.txt").exists()


def test_unpaced_burst_recovers_by_slowing_down(make_peer, drop):
    peer = make_peer(drop=drop)
    events = []
    code = "y = [" + ",".join(str(i) for i in range(300)) + "]\nprint(len(y))"
    with ReplSession(peer.port, pacing=Pacing.unpaced(), retries=4, on_event=events.append) as s:
        assert s.run(code).strip() == "300"
    assert drop.dropped > 0
    assert any(e.kind == "retry" for e in events)


BUSY_MAIN = """\
import time
n = caught = 0
while True:
    try:
        n += 1
        print('busy', n)
        time.sleep_ms(1)
    except KeyboardInterrupt:
        caught += 1
        if caught > 1:
            raise
        print('caught one, carrying on')
"""


def test_busy_main_py_is_interrupted(make_peer):
    """main.py prints in a loop and swallows the first KeyboardInterrupt: we still get in."""
    peer = make_peer(files={"main.py": BUSY_MAIN})
    time.sleep(0.3)
    with ReplSession(peer.port) as s:
        assert s.eval("n > 10 and caught == 2") is True   # main.py ran, swallowed one Ctrl-C, then stopped
        assert s.run("print('hello')") == "hello\n"


def test_soft_reset_runs_boot_py(make_peer):
    peer = make_peer()
    (peer.root / "boot.py").write_text("print('booted')\nBOOTED = 1\n")
    with ReplSession(peer.port) as s:
        s.run("x = 1")
        out = s.soft_reset()
        assert "booted" in out
        assert s.eval("'x' in globals()") is False       # a fresh VM


def test_silent_port_times_out_fast_while_others_finish(make_peer):
    silent = make_peer("silent", silent=True)
    good = [make_peer(f"d{i}") for i in range(3)]
    results: dict[str, object] = {}

    def work(port: str) -> None:
        t = time.monotonic()
        try:
            with ReplSession(port, connect_timeout=1.5) as s:
                results[port] = s.eval("1 + 1")
        except ReplTimeout as e:
            results[port] = (e, time.monotonic() - t)

    threads = [threading.Thread(target=work, args=(p.port,)) for p in [silent, *good]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    err, took = results[silent.port]
    assert isinstance(err, ReplTimeout) and silent.port in str(err) and "no raw REPL" in str(err)
    assert took < 4
    assert all(results[p.port] == 2 for p in good)


HOLDER = ("import serial, sys, time\n"
          "s = serial.Serial(sys.argv[1], exclusive=True)\n"
          "print('held', flush=True)\n"
          "sys.stdin.read()\n")


def test_a_port_held_by_another_program_is_port_busy(make_peer):
    """Another program (here a separate process, as Thonny or mpremote would) holds the board's
    port exclusively: the session refuses it by name instead of interleaving bytes with it."""
    import subprocess
    import sys

    from workshop import smoke
    from workshop.repl import PortBusy

    peer = make_peer()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, peer.port], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PortBusy) as e:
            ReplSession(peer.port, connect_timeout=2).open()
        assert str(e.value) == f"{peer.port}: port busy: held by another program " \
                               "(Thonny, a serial terminal, mpremote, another invoke run?): close it and try again"
        report = smoke.smoke_device(peer.port, smoke.Expected(source="test"), connect_timeout=2)
        assert report.checks[0].name == "connect" and report.checks[0].status == smoke.FAIL
        assert "port busy: held by another program" in report.checks[0].detail
        # One type for a busy port whichever layer opened it (esptool sessions catch this one too).
        from workshop import serialport

        assert isinstance(e.value, serialport.PortBusy) and str(e.value).count(peer.port) == 1
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    with ReplSession(peer.port) as s:                 # released: ours, and exclusively so
        with pytest.raises(PortBusy):
            ReplSession(peer.port, connect_timeout=2).open()
        assert s.eval("1 + 1") == 2


def test_a_bad_port_name_is_that_boards_error_not_a_crash():
    """A typo in --ports (an unknown URL scheme, a missing device) fails that one board by name."""
    from workshop import smoke

    with pytest.raises(ReplError, match=r"^foo://bar: not a usable port: "):
        ReplSession("foo://bar", connect_timeout=1).open()
    with pytest.raises(ReplError, match=r"^/dev/ttyNOSUCH9: cannot open: no such device \(unplugged\?\)$"):
        ReplSession("/dev/ttyNOSUCH9", connect_timeout=1).open()
    report = smoke.smoke_device("foo://bar", smoke.Expected(source="test"), connect_timeout=1)
    assert report.checks[0].name == "connect" and report.checks[0].status == smoke.FAIL
    assert "not a usable port" in report.checks[0].detail


def test_a_command_that_prints_the_raw_repls_own_end_byte_is_not_cut_there(make_peer):
    """The raw REPL ends stdout with \\x04: a command that printed one (binary data, a lesson
    printing bytes) had the rest of its output taken for a traceback: "the board raised ...",
    for a command that succeeded."""
    peer = make_peer()
    with ReplSession(peer.port) as s:
        assert s.run("print('before\\x04after'); print('more')") == "before\x04after\nmore\n"
        assert s.run("print(6 * 7)") == "42\n"                  # and the session goes on in step


def test_re_sends_after_lost_bytes_stay_within_the_commands_one_budget(make_peer, drop):
    """Each re-send after lost bytes got a fresh timeout: with 4 retries a 2 s command could take
    several times that. Now the command has one budget, its re-sends included, and says so."""
    import time

    peer = make_peer(drop=drop)
    code = "y = [" + ",".join(str(i) for i in range(900)) + "]\nprint(len(y))"
    with ReplSession(peer.port, pacing=Pacing.unpaced(), raw_paste=False, retries=4) as s:
        t = time.monotonic()
        with pytest.raises(ReplTimeout, match=r"within the command's 2 s \(sending it included\)"):
            s.run(code, timeout=2.0)
        assert time.monotonic() - t < 2.0 + 1.0, time.monotonic() - t
        assert s.stats["retries"] >= 1


class Cut:
    """A link that goes dead mid-command (a cable pulled, a board frozen): after `after` bytes
    nothing more reaches the board until `restore()`. The relay's filter, as Drop is."""

    def __init__(self, after: int) -> None:
        self.after, self.cut = after, True

    def filter(self, data: bytes) -> bytes:
        if not self.cut:
            return data
        keep = data[:max(0, self.after)]
        self.after -= len(keep)
        return keep

    def restore(self) -> None:
        self.cut, self.after = False, 0


@pytest.mark.parametrize("budget", [2.0, 7.0])   # 7: time left for a re-send after the recovery
def test_a_paste_that_stalls_on_a_dead_link_ends_within_the_commands_budget(make_peer, budget):
    """The recovery after a stalled raw paste waited 2 s for the board, 2 s more, then a whole
    fresh raw REPL (its connect timeout): a 2 s command took several times its budget and ended
    in a message about the raw REPL. Now the recovery has what is left of the budget, and the
    next command, once the link is back, enters the raw REPL anew (Ctrl-C ends the old paste)."""
    cut = Cut(after=400)
    peer = make_peer(drop=cut)
    code = "y = [" + ",".join(str(i) for i in range(900)) + "]\nprint(len(y))"
    with ReplSession(peer.port, connect_timeout=5) as s:
        cut.after = 400                                     # (counted from the command on)
        t = time.monotonic()
        with pytest.raises(ReplTimeout, match=rf"within the command's {budget:g} s \(sending it included\)"):
            s.run(code, timeout=budget)
        assert time.monotonic() - t < budget + 1.0, time.monotonic() - t
        cut.restore()
        assert s.run("print(6 * 7)") == "42\n"


def test_a_command_leaves_nothing_of_itself_in_the_boards_globals(make_peer):
    """The guarded literal stayed in the board's globals (`_c`) until the next command: up to the
    3 KB of a smoke check held on a board whose heap is 38 KB."""
    peer = make_peer()
    with ReplSession(peer.port) as s:
        s.run("big = 1\n" + "# padding\n" * 300)
        assert s.eval("[k for k in globals() if k.startswith('_c')]") == []
        assert s.eval("big") == 1                         # what the command itself defined stays


def test_a_board_that_restarts_mid_command_is_said_to_have_restarted(make_peer):
    """A board reset (or crashing) during a command: the timeout said only 'no end of the
    command's output within 3 s', as for a board that was slow."""
    peer = make_peer()
    with ReplSession(peer.port) as s:
        with pytest.raises(ReplTimeout, match=r"no end of the command's output within the command's 3 s \(sending it "
                                              r"included\): the board restarted during the command"):
            s.run("import machine\nmachine.soft_reset()\n", timeout=3.0)


def test_a_command_whose_sending_outlasts_its_budget_is_stopped_and_never_half_run(make_peer):
    """Over a slow link the raw paste went on past the command's budget (the overrun noticed only
    at the end); now sending stops at the budget, and what arrived never runs (the guard)."""
    import time

    peer = make_peer()
    code = "open('ran.txt', 'w').write('x')\n" + "y = [" + ",".join(str(i) for i in range(400)) + "]\n"
    with ReplSession(peer.port, pacing=Pacing(chunk=32, delay=0.05)) as s:
        t = time.monotonic()
        with pytest.raises(ReplTimeout, match=r"sending the command \(\d+ of \d+ bytes sent\) took the command's "
                                              r"1 s \(sending it included\): nothing of it ran"):
            s.run(code, timeout=1.0)
        assert time.monotonic() - t < 1.0 + 2.5
        assert s.eval("1 + 2") == 3                     # the session goes on
    assert not (peer.root / "ran.txt").exists()


def test_eval_json_passes_over_a_line_printed_after_the_result(make_peer):
    """A result line followed by something else the board printed (a lesson's timer, a log line)
    was "unreadable result from the board": the last line was taken, whatever it was."""
    peer = make_peer()
    with ReplSession(peer.port) as s:
        got = s.eval_json("import json\nprint(json.dumps({'free': 123}))\nprint('tick')\nprint(7)\n")
        assert got == {"free": 123}
        with pytest.raises(ReplError, match="unreadable result from the board: 'no json here'"):
            s.eval_json("print('{not json')\nprint('no json here')\n")


def test_ctrl_c_ends_a_long_paced_write_within_2_s_and_leaves_the_old_file(make_peer):
    # Without raw paste every byte goes in paced chunks (96 B per 40 ms): a 48 KB file is ~20 s
    # of writes. Ctrl-C (cancel set) in the middle must end the session within 2 s, and the file
    # on the board stays the old one (put writes a .tmp and renames it only when all arrived).
    peer = make_peer()
    (peer.root / "lesson.py").write_text("old = 1\n")
    cancel = threading.Event()
    outcome: list[BaseException | None] = []

    def put() -> None:
        try:
            with ReplSession(peer.port, raw_paste=False, cancel=cancel) as s:
                s.put("lesson.py", b"x = 1\n" * 8000)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001 - asserted below
            outcome.append(e)

    elapsed = cancel_while_running(put, cancel, running_for=2.0)
    assert elapsed is not None, "the paced write outlived Ctrl-C by 5 s"
    assert elapsed < 2.0, elapsed
    assert isinstance(outcome[0], ReplError), outcome
    assert (peer.root / "lesson.py").read_text() == "old = 1\n"
