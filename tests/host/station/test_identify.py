"""identify: a board shows its sticker (LED blinks, or its name on its console), on real MicroPython
REPL peers. The unix port has no GPIO: for the LED path the board's boot.py installs a recording
`machine.Pin` (a double for the LED, the one thing with no peer here), and the test reads what
the real MicroPython runtime did with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from station_peers import E2E
from support import interrupt, wait_while_running
from workshop import identify
from workshop.registry import Registry, normalize_mac

REPO = Path(__file__).resolve().parents[3]
FROZEN_UNIX = REPO / "dist" / "UNIX" / "micropython"

RECORDING_PIN = """
import sys
class Pin:
    OUT = 1
    def __init__(self, n, mode=None):
        self.n = n
    def value(self, v):
        with open('pin.log', 'a') as f:
            f.write('%d=%d\\n' % (self.n, v))
class machine:
    pass
machine.Pin = Pin
sys.modules['machine'] = machine
"""


def mac_of(peer) -> str:
    from workshop.provision import identify as repl_identify
    from workshop.repl import ReplSession

    with ReplSession(peer.port) as s:
        return repl_identify(s).mac


def test_the_led_blinks_the_sticker_digit_by_digit_with_the_boards_polarity(tmp_path):
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi")
    (peer.root / "boot.py").write_text(RECORDING_PIN)
    with peer:
        reg = Registry(tmp_path / "w.db")
        mac = mac_of(peer)
        for n in range(11):                    # this board gets sticker 12
            reg.see(f"02:00:00:00:00:{n:02x}")
        reg.see(mac)
        reg.record_flash(mac, ok=True, board="ESP8266_GENERIC")   # GPIO2, active low
        reg.record_provision(mac, ok=True, hostname="lab-12")
        [shown] = identify.identify_boards([peer.port], reg, baudrate=115200, rounds=1)
    assert shown.ok, shown.error
    assert (shown.sticker, shown.hostname, shown.how) == (12, "lab-12", "LED GPIO2 (active low)")
    log = (peer.root / "pin.log").read_text().split()
    assert set(log) == {"2=0", "2=1"}
    assert log.count("2=0") == 3               # 1 + 2 blinks: lit is low on this board
    assert log[0] == "2=0" and log[-1] == "2=1"


@pytest.mark.parametrize("runtime", ["pypi", "frozen"])
def test_a_board_without_a_known_led_prints_its_name_on_its_console(tmp_path, runtime):
    """Also on the UNIX firmware we build (its REPL, not its stack, is what matters here: a stale
    build will do), where the line sent before its friendly prompt came back was lost."""
    if runtime == "frozen" and not FROZEN_UNIX.exists():
        pytest.skip("dist/UNIX/micropython not built (invoke build --board UNIX)")
    peer = E2E.PtyPeer(tmp_path / "dev", runtime=runtime)
    with peer:
        reg = Registry(tmp_path / "w.db")
        mac = mac_of(peer)
        reg.see(mac)
        reg.record_flash(mac, ok=True, board="ESP32_GENERIC_S3")  # an RGB LED only
        reg.record_provision(mac, ok=True, hostname="lab-01")
        shown = identify.show(peer.port, reg)      # it waits for the board's own output line
    assert shown.ok and shown.how == "console", shown.error
    assert (shown.sticker, shown.hostname) == (1, "lab-01")


def test_blink_one_board_by_name_among_several(tmp_path):
    peers = [E2E.PtyPeer(tmp_path / f"dev{i}", runtime="pypi") for i in range(3)]
    for p in peers:
        (p.root / "boot.py").write_text(RECORDING_PIN)
    for p in peers:
        p.start()
    try:
        reg = Registry(tmp_path / "w.db")
        for i, p in enumerate(peers):
            mac = mac_of(p)
            reg.see(mac)
            reg.record_flash(mac, ok=True, board="ESP32_GENERIC")
            reg.record_provision(mac, ok=True, hostname=f"lab-0{i + 1}")
        shown = identify.identify_boards([p.port for p in peers], reg, only="LAB-02", rounds=1)  # any case
    finally:
        for p in peers:
            p.stop()
    assert [s.hostname for s in shown] == ["lab-01", "lab-02", "lab-03"]
    assert [s.how for s in shown] == [None, "LED GPIO2", None]
    assert [(p.root / "pin.log").exists() for p in peers] == [False, True, False]
    assert json.dumps([s.to_dict() for s in shown])


def test_a_port_held_by_another_program_is_named_busy(tmp_path):
    import serial

    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi")
    with peer:
        holder = serial.Serial(peer.port, exclusive=True)        # Thonny, screen, mpremote...
        try:
            shown = identify.show(peer.port, None)
        finally:
            holder.close()
    assert not shown.ok and "port busy: held by another program" in shown.error


def test_ctrl_c_during_identify_ends_it_within_2_s_with_the_table(tmp_path):
    """A board mid-blink (its LED double takes a minute per change): Ctrl-C ended identify only
    after its sessions gave up (~5 s, exit 1, no output). Now within 2 s: exit 130, the table."""
    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi")
    (peer.root / "boot.py").write_text(RECORDING_PIN +
                                       "import time\n_value = Pin.value\n"
                                       "def _slow(self, v):\n    _value(self, v)\n    time.sleep(60)\n"
                                       "Pin.value = _slow\n")
    with peer:
        reg = Registry(tmp_path / "w.db")
        mac = mac_of(peer)
        reg.see(mac)
        reg.record_flash(mac, ok=True, board="ESP32_GENERIC")
        reg.record_provision(mac, ok=True, hostname="lab-01")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSHOP_")}
        proc = subprocess.Popen([str(Path(sys.executable).parent / "invoke"), "-r", str(REPO), "identify", "--ports",
                                 peer.port, "--registry", str(tmp_path / "w.db")], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_while_running(proc, lambda: (peer.root / "pin.log").exists(), "the board never started blinking", 60)
            out, err, elapsed = interrupt(proc)
        finally:
            proc.kill()
    assert elapsed < 2.0, (elapsed, out[-500:], err[-500:])
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err, err
    row = next(line.split() for line in out.splitlines() if line.startswith(peer.port))
    assert row[:5] == [peer.port, "lab-01", "1", normalize_mac(mac), "interrupted"], out


def test_a_registry_that_fails_mid_identify_is_that_boards_error_not_a_crash(tmp_path, monkeypatch):
    """A registry another program locked after it opened (RegistryLocked from get()) escaped the
    worker: the whole identify ended in a traceback, the table of the other boards lost."""
    from workshop import registry

    peer = E2E.PtyPeer(tmp_path / "dev", runtime="pypi")
    with peer:
        reg = Registry(tmp_path / "w.db")

        def locked(mac: str):
            raise registry.RegistryLocked(f"{reg.path}: locked by another program for 30 s")

        monkeypatch.setattr(reg, "get", locked)
        [shown] = identify.identify_boards([peer.port], reg, rounds=1)
    assert not shown.ok and shown.error == f"{reg.path}: locked by another program for 30 s" and shown.mac
