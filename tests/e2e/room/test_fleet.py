"""fleet and identify against the telnet REPLs of several unix "boards" (real telnet servers,
real logins, the guarded raw REPL), found through a real mosquitto: the CLI end to end."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roomtools import PASSWORD
from support import wait_while_running

REPO = Path(__file__).resolve().parents[3]


def kit(room, *args: str, report: Path, timeout: float = 120, popen: bool = False):
    argv = [sys.executable, "-m", "invoke", *args, "--mqtt", f"{room.broker.host}:{room.broker.port}", "--no-mdns",
            "--wait", "1.5", "--report", str(report), "--json"]
    env = dict(os.environ, WORKSHOP_TELNET_PASSWORD=PASSWORD)
    if popen:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def results(proc) -> dict[str, dict]:
    doc = json.loads(proc.stdout)
    return {r["hostname"]: r for r in doc["results"]}


@pytest.fixture
def three(room):
    boards = [room("fl-01", "pypi"), room("fl-02", "pypi"), room("fl-03", "frozen")]
    time.sleep(1.2)
    return boards


def test_exec_and_run_on_every_board(room, three, tmp_path):
    proc = kit(room, "fleet", "exec", "import sys; print(sys.platform, 6 * 7)", "--all", report=tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    res = results(proc)
    assert set(res) == {"fl-01", "fl-02", "fl-03"}
    assert all(r["ok"] and r["result"].strip() == "linux 42" for r in res.values()), res
    script = tmp_path / "lesson.py"
    script.write_text("import os\nprint('cwd', os.getcwd())\nfor i in range(3):\n    print('step', i)\n")
    proc = kit(room, "fleet", "run", str(script), "--hosts", "fl-01,fl-03", report=tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    res = results(proc)
    assert set(res) == {"fl-01", "fl-03"}
    assert res["fl-03"]["result"].split("\n")[0] == f"cwd {three[2].root}"
    assert res["fl-01"]["result"].strip().endswith("step 2")


def test_put_lands_intact_and_a_remote_error_is_a_failure(room, three, tmp_path):
    src = tmp_path / "data.bin"
    payload = os.urandom(20 * 1024)
    src.write_bytes(payload)
    proc = kit(room, "fleet", "put", str(src), "--dest", "copy.bin", "--all", report=tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    for b in three:
        assert (b.root / "copy.bin").read_bytes() == payload
        assert not (b.root / "copy.bin.tmp").exists()
    assert all(hashlib.sha256(payload).hexdigest()[:16] in r["result"] for r in results(proc).values())
    proc = kit(room, "fleet", "exec", "print('step 1')\nx = 1\n1/0", "--hosts", "fl-02", report=tmp_path / "r.json")
    assert proc.returncode == 1
    # The line it raised at, and what it printed before: both were dropped.
    failed = results(proc)["fl-02"]
    assert failed["error"] == "the board raised ZeroDivisionError: divide by zero (line 3)", failed
    assert failed["result"] == "step 1\n", failed


def test_wrong_password_and_unknown_board_fail_alone(room, tmp_path):
    room("pw-01", "pypi")
    odd = room("pw-02", "pypi")
    odd.kill()
    odd.config["telnet"]["password"] = "another-one"
    odd.start()
    time.sleep(1.2)
    proc = kit(room, "fleet", "exec", "print('hi')", "--hosts", "pw-01,pw-02,nosuch", report=tmp_path / "r.json")
    assert proc.returncode == 1
    res = results(proc)
    assert res["pw-01"]["ok"] and res["pw-01"]["result"].strip() == "hi"
    assert not res["pw-02"]["ok"] and "Login incorrect" in res["pw-02"]["error"]
    assert not res["nosuch"]["ok"] and "never announced" in res["nosuch"]["error"]
    assert PASSWORD not in proc.stdout + proc.stderr


def test_a_board_dropping_mid_transfer_fails_alone_and_resume_finishes_the_rest(room, three, tmp_path):
    src = tmp_path / "big.bin"
    payload = os.urandom(1536 * 1024)   # long enough to cut the power half-way
    src.write_bytes(payload)
    report = tmp_path / "r.json"
    victim = three[1]
    proc = kit(room, "fleet", "put", str(src), "--all", report=report, popen=True)
    wait_while_running(proc, lambda: (victim.root / "big.bin.tmp").exists(), "the transfer never started", 60, poll=0.01)
    victim.kill()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    res = {r["hostname"]: r for r in json.loads(out)["results"]}
    assert res["fl-01"]["ok"] and res["fl-03"]["ok"]
    assert not res["fl-02"]["ok"] and "telnet connection" in res["fl-02"]["error"], res["fl-02"]
    assert not (victim.root / "big.bin").exists()          # never a half file under the real name
    assert (three[0].root / "big.bin").read_bytes() == payload
    # Power back on; --resume sends to fl-02 only.
    victim.start()
    time.sleep(1.2)
    proc = kit(room, "fleet", "put", str(src), "--all", "--resume", report=report)
    assert proc.returncode == 0, proc.stderr
    res = results(proc)
    assert res["fl-01"]["resumed"] and res["fl-03"]["resumed"] and not res["fl-02"]["resumed"]
    assert (victim.root / "big.bin").read_bytes() == payload


def test_reset_restarts_the_board_and_identify_reaches_it(room, three, tmp_path):
    proc = kit(room, "identify", "--hosts", "fl-01", report=tmp_path / "i.json")
    assert proc.returncode == 0, proc.stderr
    assert "no LED pin known" in results(proc)["fl-01"]["result"]  # unix: no machine.Pin, the console banner
    first = [three[0].reboot_on_reset(), three[2].reboot_on_reset(boot_s=3.0)]
    pids = [b.proc.pid for b in first]
    proc = kit(room, "fleet-reset", "--hosts", "fl-01,fl-03", report=tmp_path / "r.json")
    assert proc.returncode == 0, results(proc)
    res = results(proc)
    assert all(r["ok"] and r["result"].startswith("reset; back on telnet after ") for r in res.values()), res
    assert res["fl-03"]["seconds"] >= 3.0, res        # waited for the board that boots slowly
    assert [b.boots for b in first] == [1, 1] and [b.proc.pid for b in first] != pids
    assert three[1].proc.poll() is None and three[1].boots == 0
    # Seeing it back is a telnet login, never the raw REPL's Ctrl-C: that would stop the main.py
    # (or the start-up) the reset began. Before the reset, fleet's own session did send one.
    for b in first:
        assert b"\x03" in b.input_log(0).read_bytes()
        after = b.input_log(1).read_bytes()
        assert b"micro" in after and not set(after) & {1, 2, 3, 4, 5}, after


def test_a_reset_board_that_never_comes_back_fails_after_back_within(room, three, tmp_path):
    """fleet-reset said "ok: reset" for a board that went silent and never booted again (stuck in
    its boot, or no longer on Wi-Fi): it only knew the old board had stopped answering."""
    three[0].reboot_on_reset()
    t = time.monotonic()
    proc = kit(room, "fleet-reset", "--hosts", "fl-01,fl-03", "--back-within", "3", report=tmp_path / "r.json")
    took = time.monotonic() - t
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(proc)
    assert res["fl-01"]["ok"], res
    assert not res["fl-03"]["ok"] and three[2].wait_exit(10) == 0, res
    assert res["fl-03"]["error"].startswith("reset, but not back on telnet within 3 s (last try: cannot connect"), res
    assert "--back-within" in res["fl-03"]["error"] and took < 30, (took, res)


def test_back_within_is_checked_before_any_board_is_reached(mosquitto, tmp_path):
    class Room:
        broker = mosquitto
    proc = kit(Room, "fleet-reset", "--all", "--back-within", "soon", report=tmp_path / "r.json", timeout=60)
    assert proc.returncode == 1 and "--back-within: expected seconds >= 0, got 'soon'" in proc.stderr, proc.stderr


def test_ctrl_c_ends_a_fleet_run_within_two_seconds_and_keeps_the_report(room, three, tmp_path):
    import signal

    report = tmp_path / "r.json"
    proc = kit(room, "fleet", "exec", "import time\nwhile True:\n    time.sleep(1)\n", "--all", report=report, popen=True)
    time.sleep(4)  # roster wait + logins: every board is inside the endless loop now
    assert proc.poll() is None
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert time.monotonic() - t < 2.0 and proc.returncode == 130
    doc = json.loads(report.read_text())
    assert doc["cancelled"] and {r["error"] for r in doc["results"]} == {"cancelled"}


@pytest.mark.parametrize("args", [("fleet", "exec", "print(1)", "--all"), ("fleet-reset", "--all"), ("identify", "--all")])
def test_an_empty_room_is_a_clear_error_not_a_traceback(mosquitto, tmp_path, args):
    """No board announced itself: --all names that in one line (no FleetError traceback) and writes no report."""
    class Room:
        broker = mosquitto
    report = tmp_path / "r.json"
    proc = kit(Room, *args, report=report, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "FleetError" not in proc.stderr, proc.stderr
    assert "error: no boards in the roster" in " ".join(proc.stderr.split())
    assert not report.exists()


def test_a_board_without_telnet_is_said_to_have_none_not_tried_on_port_23(room, tmp_path):
    """A status with "telnet": null once sent fleet to port 23: 'Connection refused'."""
    room("nt-01", "pypi", start=("wifi", "announce"))
    time.sleep(1.2)
    proc = kit(room, "fleet", "exec", "print(1)", "--hosts", "nt-01", report=tmp_path / "r.json")
    assert proc.returncode == 1, proc.stderr
    got = results(proc)["nt-01"]
    assert got["error"].startswith("telnet is not running on this board") and "refused" not in got["error"], got
    assert got["address"] == "127.0.0.1", got  # no ':None'


def test_ctrl_c_while_listening_for_the_boards_exits_130_and_says_so(mosquitto, tmp_path):
    """Ctrl-C during fleet's --wait once ended with exit 1 and no output; README promises 130."""
    import signal

    argv = [sys.executable, "-m", "invoke", "fleet", "exec", "print(1)", "--all", "--mqtt",
            f"{mosquitto.host}:{mosquitto.port}", "--no-mdns", "--wait", "30", "--report", str(tmp_path / "r.json")]
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, WORKSHOP_TELNET_PASSWORD=PASSWORD),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t < 2 and proc.returncode == 130, (proc.returncode, out, err)
    assert "error: interrupted while listening for the boards" in err and "Traceback" not in err, err
    assert not (tmp_path / "r.json").exists()


def test_a_reset_that_returns_is_a_failure_and_a_name_given_twice_is_one_board(room, three, tmp_path):
    """fleet-reset reported "ok: reset" for a board whose reset() returned (it never reset), and
    --hosts fl-01,fl-01 ran the command twice on one board at once (the second login took the
    first one over) and reported 2/2 ok."""
    patch = "import sys\nclass M:\n    def reset(self):\n        pass\nsys.modules['machine'] = M()\nprint('patched')"
    proc = kit(room, "fleet", "exec", patch, "--hosts", "fl-01", report=tmp_path / "p.json")
    assert proc.returncode == 0 and results(proc)["fl-01"]["result"].strip() == "patched", proc.stdout + proc.stderr
    proc = kit(room, "fleet-reset", "--hosts", "fl-01,fl-03", "--back-within", "0", report=tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = results(proc)
    assert not res["fl-01"]["ok"] and res["fl-01"]["error"] == "machine.reset() returned: the board did not reset", res
    assert res["fl-03"]["ok"] and res["fl-03"]["result"] == "reset" and three[2].wait_exit(10) == 0  # not waited for
    assert three[0].proc.poll() is None                              # fl-01 still runs
    proc = kit(room, "fleet", "exec", "print('once')", "--hosts", "fl-02,fl-02", report=tmp_path / "d.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [r["hostname"] for r in json.loads(proc.stdout)["results"]] == ["fl-02"]


def test_ctrl_c_ends_a_fleet_run_within_two_seconds_even_with_a_frozen_board(room, three, tmp_path):
    """A board frozen in the roster (its TCP still connects, no login prompt ever comes) held
    Ctrl-C for its whole connect timeout: the worker in its login had no session to close, and
    the pool's threads were joined at exit (3.8 s)."""
    import signal

    frozen = three[1].proc
    report = tmp_path / "r.json"
    frozen.send_signal(signal.SIGSTOP)
    try:
        proc = kit(room, "fleet", "exec", "import time\nwhile True:\n    time.sleep(1)\n", "--all", report=report,
                   popen=True)
        time.sleep(3.2)  # roster wait + logins: the others are in the endless loop, fl-02's login hangs
        assert proc.poll() is None
        t = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
        elapsed = time.monotonic() - t
    finally:
        frozen.send_signal(signal.SIGCONT)
    assert elapsed < 2.0 and proc.returncode == 130, elapsed
    doc = json.loads(report.read_text())
    assert doc["cancelled"] and {r["hostname"]: r["error"] for r in doc["results"]} == {
        "fl-01": "cancelled", "fl-02": "cancelled", "fl-03": "cancelled"}


FAKE_PIN = """import sys
class Pin:
    OUT = 1
    log = []
    def __init__(self, n, mode):
        self.n = n
    def value(self, v):
        Pin.log.append((self.n, v))
class Machine:
    pass
m = Machine()
m.Pin = Pin
sys.modules['machine'] = m
print('an LED on pin 2')"""


def test_identify_blinking_longer_than_the_timeout_is_not_a_failure(room, tmp_path):
    """`identify --hosts ... --seconds 25` failed every board at the 20 s command timeout ("no end
    of the command's output") while their LEDs were still blinking: the blink is the command."""
    room("id-01", "pypi", identity={"board": "ESP32_GENERIC", "inputs": "ab" * 32, "project": "0.1.0"})
    time.sleep(1.2)
    proc = kit(room, "fleet", "exec", FAKE_PIN, "--hosts", "id-01", report=tmp_path / "p.json")
    assert proc.returncode == 0 and results(proc)["id-01"]["result"].strip() == "an LED on pin 2", proc.stdout
    t = time.monotonic()
    proc = kit(room, "identify", "--hosts", "id-01", "--seconds", "3", "--timeout", "2", report=tmp_path / "i.json")
    took = time.monotonic() - t
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = results(proc)["id-01"]
    assert got["ok"] and got["result"].strip() == "blinked LED pin 2", got           # ESP32_GENERIC's led_pin
    assert got["seconds"] >= 3 and took < 30, (got, took)
    proc = kit(room, "fleet", "exec", "import machine\nprint(len(machine.Pin.log), machine.Pin.log[-1])",
               "--hosts", "id-01", report=tmp_path / "l.json")
    assert results(proc)["id-01"]["result"].strip() == "13 (2, 0)", proc.stdout   # 12 blinks, then off


def test_a_hostname_typed_in_capitals_is_the_board_not_one_that_never_announced(room, tmp_path):
    """Host names are case-blind (DNS, mDNS, the registry); `--hosts LAB-01` failed a board that
    was online as lab-01 with "not in the roster: it never announced itself", and `--hosts
    Lab-02,lab-02` would have been two sessions on one board."""
    room("cs-01", "pypi")
    room("cs-02", "pypi")
    time.sleep(1.2)
    proc = kit(room, "fleet", "exec", "print('here')", "--hosts", "CS-01,Cs-02,cs-02,NOSUCH", report=tmp_path / "r.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    res = json.loads(proc.stdout)["results"]
    assert [r["hostname"] for r in res] == ["cs-01", "cs-02", "NOSUCH"], res
    assert res[0]["ok"] and res[1]["ok"] and res[0]["result"].strip() == res[1]["result"].strip() == "here", res
    assert not res[2]["ok"] and "never announced" in res[2]["error"]


def test_outdated_names_the_boards_it_could_not_compare_instead_of_leaving_them_out_silently(room, tmp_path):
    """--outdated ran on the outdated boards and said nothing of the boards whose image it could
    not judge (no build identity, no build of that board here), which may be outdated too."""
    room("od-01", "pypi", identity={"board": "UNIX", "inputs": "0" * 64, "project": "0.0.9"})     # outdated
    room("od-02", "pypi")                                                                      # no identity
    room("od-03", "pypi", identity={"board": "ESP32_GENERIC_S2", "inputs": "1" * 64, "project": "0.1.0"})
    time.sleep(1.2)
    proc = kit(room, "fleet", "exec", "print(6 * 7)", "--outdated", report=tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(r["hostname"], r["ok"], r["result"].strip()) for r in doc["results"]] == [("od-01", True, "42")]
    assert doc["left_out"] == [{"hostname": "od-02", "why": "no build identity in the image"},
                               {"hostname": "od-03", "why": f"no build of ESP32_GENERIC_S2 in {REPO}/dist/*/build.json"}], \
        doc["left_out"]
    assert json.loads((tmp_path / "r.json").read_text())["left_out"] == doc["left_out"]
    argv = [sys.executable, "-m", "invoke", "fleet", "exec", "print(1)", "--outdated", "--mqtt",
            f"{room.broker.host}:{room.broker.port}", "--no-mdns", "--wait", "1.5", "--report", str(tmp_path / "t.json")]
    text = subprocess.run(argv, cwd=REPO, env=dict(os.environ, WORKSHOP_TELNET_PASSWORD=PASSWORD), capture_output=True,
                          text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    assert "od-02: left out of --outdated, not compared (no build identity in the image): name it with --hosts" \
        in " ".join(text.stdout.split()), text.stdout


def test_outdated_with_none_to_run_on_names_what_it_could_not_compare(room, tmp_path):
    room("nc-01", "pypi")
    time.sleep(1.2)
    proc = kit(room, "fleet", "exec", "print(1)", "--outdated", report=tmp_path / "r.json")
    assert proc.returncode == 1
    assert ("no outdated board in the roster: 0 match the current images; not compared: nc-01 (no build identity "
            "in the image)") in " ".join(proc.stderr.split()), proc.stderr


def test_ctrl_c_during_a_roster_listing_exits_130_with_nothing_on_stdout(mosquitto, tmp_path):
    """`roster --wait 30 --json > room.json`, stopped: it exited 0 with nothing printed, so a
    script took the empty file for the room."""
    import signal

    argv = [sys.executable, "-m", "invoke", "roster", "--json", "--mqtt", f"{mosquitto.host}:{mosquitto.port}",
            "--no-mdns", "--wait", "30"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t < 2 and proc.returncode == 130, (proc.returncode, out, err)
    assert out == "" and "interrupted while listening for the boards (--wait 30): no listing printed" in err, err
