"""The provision and smoke command lines refuse bad options with one clear line, not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).parent / "invoke"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (("provision", "--ports", "/dev/null", "--mqtt", "10.0.0.2", "--mqtt-port", "abc"),
     "mqtt port: expected a port number 1..65535, got 'abc'"),
    (("smoke", "--ports", "/dev/null", "--board", "UNIX", "--network", "--mqtt", "10.0.0.2:abc"),
     "--mqtt '10.0.0.2:abc': expected a port number 1..65535, got 'abc'"),
    (("provision", "--ports", "/dev/null", "--mqtt", "10.0.0.2:abc"),
     "mqtt broker: '10.0.0.2:abc': expected a port number 1..65535, got 'abc'"),
    (("provision", "--ports", "/dev/null", "--mqtt", "no such host"),
     "mqtt broker 'no such host': expected a host name or IP address"),
])
def test_a_bad_mqtt_port_is_a_clear_error(args, message):
    proc = invoke(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "ValueError" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr and message in " ".join(proc.stderr.split())


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_smoke_timeout_is_a_clear_error(value):
    proc = invoke("smoke", "--ports", "/dev/null", "--board", "UNIX", "--timeout", value)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"--timeout: expected seconds > 0, got '{value}'" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("task", ["provision", "station"])
def test_a_config_value_of_the_wrong_type_is_one_line(tmp_path, task):
    cfg = tmp_path / "ws.toml"
    cfg.write_text("hostname = 5\n")
    args = ("provision", "--ports", "/dev/null", "--config", str(cfg)) if task == "provision" else \
        ("station", "--image", str(cfg), "--offset", "0x1000", "--ports-dir", str(tmp_path), "--provision", str(cfg))
    proc = invoke(*args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{cfg}: hostname: expected a string, got int 5" in " ".join(proc.stderr.split())


@pytest.mark.parametrize("toml, message", [
    ('[wifi]\ntimeout_ms = "x"\n', "wifi.timeout_ms: expected a whole number of milliseconds >= 1, got 'x'"),
    ('[announce]\ninterval_s = "fast"\n', "announce.interval_s: expected a number of seconds >= 1, got 'fast'"),
    ("[announce]\ninterval_s = -1\n", "announce.interval_s: expected a number of seconds >= 1, got -1"),
    ("announce = 3\n", "announce: expected a table, got int 3"),
    ('[telnet]\nport = "23"\n', "telnet.port: expected a number, got '23' (write 23, without quotes)"),
    ("[telnet]\nport = 0\n", "telnet.port: expected a port number 1..65535, got 0"),
    ("[mqtt]\nuser = 5\n", "mqtt.user: expected a string, got int 5"),
    ("[mqtt]\npassword = 12345678\n", "mqtt.password: expected a string, got int"),
], ids=["timeout_ms", "interval-word", "interval-negative", "announce-not-a-table", "telnet-port-string",
        "telnet-port-0", "mqtt-user", "mqtt-password"])
def test_a_value_the_board_would_fail_on_at_boot_is_refused_before_any_board(tmp_path, toml, message):
    """Keys beyond the ones provision names (wifi.timeout_ms, announce.interval_s, telnet.port, the
    MQTT login) were written as given and reported `written + verified`; the board then failed at
    boot (wifi.py, announce.py, telnet.py raise on them)."""
    cfg = tmp_path / "ws.toml"
    cfg.write_text(toml)
    proc = invoke("provision", "--ports", "/dev/null", "--config", str(cfg))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    text = " ".join(proc.stderr.split())
    assert f"{cfg}: {message}" in text, text
    assert "12345678" not in text                                       # a password's value is never shown


@pytest.mark.parametrize("args, message", [
    (("fleet", "run", "no-such-lesson.py", "--telnet-password", "pw"), "run: cannot read no-such-lesson.py"),
    (("fleet", "put", "no-such-file.py", "--telnet-password", "pw"), "put: cannot read no-such-file.py"),
    (("fleet", "exec", "print(1)"), "no telnet password: --telnet-password or $WORKSHOP_TELNET_PASSWORD"),
], ids=["run", "put", "password"])
def test_fleet_refuses_what_it_cannot_send_before_it_listens_for_boards(args, message):
    """A missing file or password was named only after connecting to the broker and listening
    --wait seconds (and behind the broker's error when that was unreachable)."""
    import os
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKSHOP_")}
    t = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "invoke"), *args, "--all", "--mqtt", "127.0.0.1:9",
                           "--no-mdns", "--wait", "30"], cwd=REPO, capture_output=True, text=True, timeout=60, env=env)
    took = time.monotonic() - t
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    text = " ".join(proc.stderr.split())
    assert message in text and "broker" not in text, text                 # not the broker's error first
    assert took < 30, f"it listened first ({took:.0f} s)"
