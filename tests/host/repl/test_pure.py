"""Pure parts of repl/provision/smoke: no device needed."""

from __future__ import annotations

import json
import time

import pytest

from workshop import smoke
from workshop.provision import ProvisionConfig, ProvisionError, Secret, expand_hostname, masked, merge, with_boot_hook
from workshop.repl import ReplSession, guard, mask


def test_secret_never_shows():
    cfg = ProvisionConfig(wifi_ssid="W", wifi_password="pw-123456")
    assert "pw-123456" not in repr(cfg) and "pw-123456" not in str(cfg.wifi_password)
    assert cfg.updates(None)["wifi"]["password"] == "pw-123456"
    assert masked(cfg.updates(None))["wifi"]["password"] == "***"
    assert Secret("a") == Secret("a") and mask("x pw-123456 y", ["pw-123456"]) == "x *** y"


def test_hostname_patterns():
    assert expand_hostname("ws-{mac4}", mac="a0b1c2d3e4f5", port="/dev/ttyUSB0", index=3) == "ws-e4f5"
    assert expand_hostname("{port}-{index:02d}", mac="0" * 12, port="/dev/ttyUSB0", index=3) == "ttyusb0-03"
    with pytest.raises(ProvisionError, match=r"unknown \{serial\}"):
        ProvisionConfig(hostname="ws-{serial}")
    with pytest.raises(ProvisionError, match="not a valid host name"):
        expand_hostname("ws {mac4}", mac="a0b1c2d3e4f5", port="p", index=1)
    with pytest.raises(ProvisionError, match="unknown service"):
        ProvisionConfig(start=("wifi", "ftp"))
    # A board's network.hostname() takes 32 characters: a 33-character name stopped its Wi-Fi at boot.
    assert expand_hostname("w" * 28 + "{mac4}", mac="a0b1c2d3e4f5", port="p", index=1) == "w" * 28 + "e4f5"
    with pytest.raises(ProvisionError, match=r"at most 32 \(what a board's network.hostname\(\) takes\)"):
        expand_hostname("w" * 29 + "{mac4}", mac="a0b1c2d3e4f5", port="p", index=1)


def test_merge_keeps_unknown_keys_and_boot_hook_is_idempotent():
    assert merge({"a": 1, "wifi": {"ssid": "o", "ch": 6}}, {"wifi": {"ssid": "n"}}) == {"a": 1, "wifi": {"ssid": "n", "ch": 6}}
    assert with_boot_hook(None) == "import workshop_boot\n"
    assert with_boot_hook("x = 1") == "x = 1\nimport workshop_boot\n"
    assert with_boot_hook("x = 1\nimport workshop_boot\n") is None


def test_config_file(tmp_path):
    f = tmp_path / "workshop.toml"
    f.write_text('hostname = "ws-{mac4}"\nstart = ["wifi"]\nled = 2\n[wifi]\nssid = "W"\npassword = "pw"\nchannel = 6\n')
    cfg = ProvisionConfig.from_file(f, wifi_ssid="Other")
    assert cfg.wifi_ssid == "Other" and cfg.wifi_password == Secret("pw") and cfg.extra == {"led": 2, "wifi": {"channel": 6}}
    assert merge({}, cfg.updates("h"))["wifi"] == {"channel": 6, "ssid": "Other", "password": "pw"}
    f.write_text("[wifi\n")
    with pytest.raises(ProvisionError, match="workshop.toml: not valid TOML"):
        ProvisionConfig.from_file(f)


def test_guard_carries_length_and_sum():
    g = guard("print(1)")
    assert b"len(_c)!=8" in g and b"sum(_c)!=%d" % sum(b"print(1)") in g


def test_stack_modules_come_from_the_manifest():
    names = smoke.stack_module_names(smoke.manifest_modules())
    for n in ("umqtt.simple", "umqtt.robust", "urequests", "requests", "base64", "ntptime", "wifi", "mdns",
              "telnet", "webserver", "workshop_boot"):
        assert n in names
    assert smoke.module_name("umqtt/__init__.py") == "umqtt"


def test_evaluate_rules():
    exp = smoke.Expected(source="t", chip="esp32s3", chip_name="ESP32-S3", build_name="ESP32_GENERIC_S3",
                         micropython_version="1.28.0", stack_modules=("wifi",), min_free_heap=80000, flash_size="8MB")
    facts = {"platform": "esp32", "version": "1.28.0", "build": "ESP32_GENERIC_S3",
             "machine": "Generic ESP32S3 module with ESP32S3", "modules": {"wifi": ["frozen", "wifi.py"]},
             "free": 90000, "flash": 8 << 20, "config": {"path": "/workshop.json", "keys": []}}
    assert all(c.status == "pass" for c in smoke.evaluate(facts, exp))
    bad = dict(facts, machine="Generic ESP32 module with ESP32", free=1000, flash=4 << 20,
               modules={"wifi": ["file", "/lib/wifi.py"]}, config={"path": "/workshop.json", "missing": True})
    failed = {c.name for c in smoke.evaluate(bad, exp) if c.status == "fail"}
    assert failed == {"firmware", "module wifi", "heap", "flash", "config"}



def test_a_flash_under_1_mb_is_said_in_kb_and_a_mac_not_read_says_why_in_the_json():
    """An ESP-01's 512 KB flash was reported '0 MB'; smoke --registry's JSON said "mac": null
    without the reason its table printed."""
    exp = smoke.Expected(source="t", flash_size="1MB")
    [flash] = [c for c in smoke.evaluate({"flash": 512 << 10}, exp) if c.name == "flash"]
    assert (flash.status, flash.detail) == ("fail", "512 KB, expected 1MB")
    report = smoke.DeviceReport("/dev/ttyUSB0", mac_error="no MicroPython REPL answered")
    assert report.to_dict()["mac"] is None and report.to_dict()["mac_error"] == "no MicroPython REPL answered"
    assert "mac_error" not in smoke.DeviceReport("/dev/ttyUSB1", mac="24:0a:c4:00:00:01").to_dict()


def test_identity_module_is_not_a_stack_module(monkeypatch, tmp_path):
    """A build sets WORKSHOP_BUILD_IDENTITY; the stack the smoke imports is the same either way."""
    plain = smoke.manifest_modules()
    monkeypatch.setenv("WORKSHOP_BUILD_IDENTITY", str(tmp_path))
    assert smoke.manifest_modules() == plain and "_workshop_build.py" not in plain


A, B = "a" * 12 + "1" * 52, "b" * 12 + "2" * 52


def test_firmware_check_compares_the_frozen_build_identity():
    exp = smoke.Expected(source="dist/UNIX/build.json", board="UNIX", chip="host", build_name="standard",
                         micropython_version="1.28.0", inputs_sha256=A)
    facts = {"platform": "linux", "version": "1.28.0", "build": "standard", "config": {}}

    def firmware(identity, expected=exp):
        return smoke.evaluate(dict(facts, identity=identity), expected)[0]

    same = firmware({"board": "UNIX", "inputs": A, "project": "0.1.0", "shadow": None})
    assert same.status == "pass" and same.detail == "MicroPython 1.28.0, build standard, identity UNIX inputs aaaaaaaaaaaa"
    other = firmware({"board": "UNIX", "inputs": B, "project": "0.1.0", "shadow": None})
    assert other.status == "fail" and other.detail == (
        "image built from inputs bbbbbbbbbbbb, expected aaaaaaaaaaaa per dist/UNIX/build.json "
        "(another build of the stack: flash the expected image)")
    board = firmware({"board": "ESP32_GENERIC", "inputs": A, "project": "0.1.0", "shadow": None})
    assert board.status == "fail" and board.detail == "image built for board ESP32_GENERIC, expected UNIX"
    old = firmware(None)                              # an image built before identities existed
    assert old.status == "fail" and old.detail.startswith("no build identity in the image: rebuild")
    assert "aaaaaaaaaaaa" in old.detail
    shadow = firmware({"board": "UNIX", "inputs": A, "project": "0", "shadow": "_workshop_build.py"})
    assert shadow.status == "fail" and "shadows the image's build identity" in shadow.detail
    broken = firmware({"error": "SyntaxError: invalid syntax"})
    assert broken.status == "fail" and "SyntaxError" in broken.detail
    # Without an inputs hash to compare (boards/<BOARD>.toml, an index from before identities):
    # an image without identity passes as before; one with an identity still names its board.
    loose = smoke.Expected(source="boards/UNIX.toml", board="UNIX", chip="host")
    assert firmware(None, loose).status == "pass"
    assert firmware({"board": "UNIX", "inputs": B, "shadow": None}, loose).status == "pass"
    assert firmware({"board": "ESP32_GENERIC", "inputs": B, "shadow": None}, loose).status == "fail"


def test_secrets_in_extra_config_keys_are_masked_too(tmp_path):
    """An [mqtt] password from workshop.toml rides along in `extra`: masked like the Wi-Fi password."""
    f = tmp_path / "workshop.toml"
    f.write_text('[wifi]\nssid = "W"\npassword = "wifi-pw-1"\n[mqtt]\nbroker = "10.0.0.2"\npassword = "mqtt-pw-2"\n')
    cfg = ProvisionConfig.from_file(f)
    assert "mqtt-pw-2" not in repr(cfg) and "wifi-pw-1" not in repr(cfg) and "10.0.0.2" in repr(cfg)
    assert set(cfg.secrets()) == {"wifi-pw-1", "mqtt-pw-2"}
    assert cfg.updates(None)["mqtt"] == {"broker": "10.0.0.2", "password": "mqtt-pw-2"}


def test_a_secret_option_falls_back_to_its_environment_variable():
    from workshop.devconfig import secret_option

    env = {"WORKSHOP_WIFI_PASSWORD": "from-env", "WORKSHOP_MQTT_PASSWORD": ""}
    assert secret_option(None, "wifi.password", env) == "from-env"
    assert secret_option("given", "wifi.password", env) == "given"
    assert secret_option(None, "mqtt.password", env) is None and secret_option(None, "telnet.password", env) is None


def test_a_secret_is_masked_wherever_it_occurs():
    # Next to an escape, URL-encoded or inside a word: a whole-word rule left these bare.
    from workshop.repl import mask

    assert mask(repr("line1\nlab"), ["lab"]) == "'line1\\n***'"
    assert mask("password%3Dlab user=microlab", ["lab"]) == "password%3D*** user=micro***"
    assert mask("key: pw-long", ["pw", "pw-long"]) == "key: ***"         # the longer secret whole, first


def test_a_password_that_is_not_a_string_is_a_config_error_without_its_value(tmp_path):
    f = tmp_path / "workshop.toml"
    f.write_text("[wifi]\nssid = \"W\"\npassword = 12345678\n")
    with pytest.raises(ProvisionError, match="workshop.toml: wifi password: expected a string") as err:
        ProvisionConfig.from_file(f)
    assert "12345678" not in str(err.value)


def test_chip_check_compares_the_mcu_exactly():
    """'Generic ESP32S3 module with ESP32S3' contains 'ESP32' but is not an ESP32."""
    exp = smoke.Expected(source="t", chip="esp32", chip_name="ESP32")
    s3 = {"platform": "esp32", "version": "1.28.0", "machine": "Generic ESP32S3 module with ESP32S3", "config": {}}
    assert smoke.evaluate(s3, exp)[0].status == "fail"
    plain = dict(s3, machine="Generic ESP32 module with ESP32")
    assert smoke.evaluate(plain, exp)[0].status == "pass"
    exp8266 = smoke.Expected(source="t", chip="esp8266", chip_name="ESP8266")
    assert smoke.evaluate(dict(s3, platform="esp8266", machine="ESP module with ESP8266"), exp8266)[0].status == "pass"


class _FakeSession:
    """Answers the device check with canned facts (the e2e tests use real REPLs)."""

    def __init__(self, facts):
        self.facts = facts

    def __call__(self, port, **kwargs):
        return self

    def open(self):
        return self

    def enter_raw(self):
        pass

    def eval_json(self, code, timeout=None):
        return self.facts if "lazy_shadow" in code else {"skip": "no network here"}

    def close(self):
        pass


def _facts(**config):
    return {"platform": "linux", "version": "1.28.0", "modules": {}, "free": 1, "flash": None,
            "config": {"path": "workshop.json", "keys": sorted(config), **config}}


def test_smoke_reports_never_carry_a_config_secret():
    facts = _facts(mqtt={"broker": "10.0.0.2", "user": "u", "password": "mqtt-pw-2"})
    [r] = smoke.smoke_all(["p0"], smoke.Expected(source="t"), session_factory=_FakeSession(facts))
    assert r.ok and r.facts["config"]["mqtt"] == {"broker": "10.0.0.2", "user": "u", "password": "***"}
    assert "mqtt-pw-2" not in smoke.to_json([r]) + smoke.to_junit([r])


def test_one_odd_board_fails_its_own_report_not_the_run():
    odd = _FakeSession(_facts(mqtt="not-a-table"))           # a hand-edited config
    good = _FakeSession(_facts(mqtt={"broker": "10.0.0.2"}))
    sessions = {"odd": odd, "good": good}
    reports = smoke.smoke_all(["odd", "good"], smoke.Expected(source="t"),
                              network=smoke.NetworkOptions(http_url=None),
                              session_factory=lambda port, **kw: sessions[port])
    assert [r.port for r in reports] == ["odd", "good"]
    odd_failed = {c.name: c.detail for c in reports[0].failed}
    assert odd_failed == {"config": "workshop.json: \"mqtt\" must be an object, got 'not-a-table'",
                          "mqtt": "no broker: workshop.json: \"mqtt\" must be an object, got 'not-a-table'"}
    assert reports[1].check("config").status == "pass"


def test_junit_stays_valid_xml_when_a_detail_has_control_characters():
    import xml.etree.ElementTree as ET

    bad = "import failed: \x1b[31mred\x1b[0m and a NUL \x00 here \x7f\ufffe"
    r = smoke.DeviceReport("/dev/tty\x01USB0", [smoke.Check("module x\x1b", smoke.FAIL, bad),
                                                  smoke.Check("heap", smoke.SKIP, "skip \x00"),
                                                  smoke.Check("flash", smoke.PASS, "ok \x08")])
    root = ET.fromstring(smoke.to_junit([r]))                 # raises ParseError on invalid XML
    failure = root.find(".//testcase/failure")
    assert failure.text == failure.get("message") == ("import failed: \\x1b[31mred\\x1b[0m and a NUL \\x00 here "
                                                      "\x7f\\ufffe")
    assert root.find("testsuite").get("name") == "/dev/tty\\x01USB0"
    assert root.find(".//testcase/skipped").get("message") == "skip \\x00"
    assert root.find(".//testcase[@name='flash']/system-out").text == "ok \\x08"
    assert "\tkept\nas is\r" == smoke.xml_safe("\tkept\nas is\r")


def test_mqtt_port_from_a_config_file_or_the_command_line(tmp_path):
    f = tmp_path / "workshop.toml"
    f.write_text('[mqtt]\nbroker = "10.0.0.2"\nport = "1883"\n')
    cfg = ProvisionConfig.from_file(f)
    assert cfg.mqtt_port == 1883 and cfg.updates(None)["mqtt"] == {"broker": "10.0.0.2", "port": 1883}
    assert ProvisionConfig(mqtt_port=" 8883 ").mqtt_port == 8883
    f.write_text('[mqtt]\nport = "abc"\n')
    with pytest.raises(ProvisionError, match=r"workshop.toml: mqtt port: expected a port number 1..65535, got 'abc'"):
        ProvisionConfig.from_file(f)
    for bad in ("abc", "", "70000", 0, 1.5, True, "-1"):
        with pytest.raises(ProvisionError, match="mqtt port: expected a port number"):
            ProvisionConfig(mqtt_port=bad)


def test_broker_option_parsing():
    assert smoke.parse_broker(None) == (None, None) and smoke.parse_broker("") == (None, None)
    assert smoke.parse_broker("10.0.0.2") == ("10.0.0.2", None)
    assert smoke.parse_broker("broker.lan:1884") == ("broker.lan", 1884)
    assert smoke.parse_broker("[::1]:1884") == ("::1", 1884) and smoke.parse_broker("fe80::1") == ("fe80::1", None)
    for bad in ("host:abc", "host:", ":1883", "host:99999"):
        with pytest.raises(smoke.SmokeError, match="--mqtt"):
            smoke.parse_broker(bad)


def test_a_device_config_mqtt_port_that_is_no_number_fails_the_mqtt_check_by_name():
    facts = _facts(mqtt={"broker": "10.0.0.2", "port": "abc"})
    [r] = smoke.smoke_all(["p0"], smoke.Expected(source="t"), network=smoke.NetworkOptions(http_url=None),
                          session_factory=_FakeSession(facts))
    [failed] = r.failed
    assert failed.name == "mqtt" and failed.detail == "workshop.json: mqtt.port: expected a port number 1..65535, got 'abc'"


def test_one_definition_of_a_secret_for_provision_smoke_and_release(tmp_path):
    """devconfig decides what is secret; provisioning, smoke reports and the release scan agree."""
    from workshop import devconfig, release

    doc = {"hostname": "ws-1", "wifi": {"ssid": "W", "password": "p1"}, "mqtt": {"broker": "b", "password": "p2"},
           "announce": {"api_token": "p3", "interval_s": 30}, "psk": "p4", "keyboard": "de"}
    assert [k for k, _ in devconfig.secret_items(doc)] == ["wifi.password", "mqtt.password", "announce.api_token", "psk"]
    shown = devconfig.masked(doc)
    assert shown["mqtt"] == {"broker": "b", "password": "***"} and shown["keyboard"] == "de"
    f = tmp_path / "workshop.json"
    f.write_text(json.dumps(doc))
    assert sorted(ProvisionConfig.from_file(f).secrets()) == ["p1", "p2", "p3", "p4"]
    assert sorted(release.load_secrets(f, env={}).values()) == ["p1", "p2", "p3", "p4"]
    [r] = smoke.smoke_all(["p0"], smoke.Expected(source="t"), session_factory=_FakeSession(_facts(**doc)))
    assert r.facts["config"]["announce"]["api_token"] == "***" and r.facts["config"]["psk"] == "***"


def test_one_port_number_rule_and_one_config_file_reader(tmp_path):
    """Provisioning and smoke validate ports, provisioning and release read files, the same way."""
    from workshop import devconfig, release

    for bad in ("abc", "", "70000", 0, 1.5, True):
        with pytest.raises(ProvisionError) as p:
            ProvisionConfig(mqtt_port=bad)
        with pytest.raises(smoke.SmokeError) as s:
            smoke.mqtt_port(bad)
        assert str(p.value) == str(s.value) == f"mqtt port: expected a port number 1..65535, got {bad!r}"
    bad_file = tmp_path / "workshop.toml"
    bad_file.write_text("[wifi\n")
    for call, error in ((ProvisionConfig.from_file, ProvisionError), (release.load_secrets, release.ReleaseError)):
        with pytest.raises(error, match=r"workshop.toml: not valid TOML: "):
            call(bad_file)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(devconfig.DevConfigError, match="list.json: expected a JSON object at the top, got list"):
        devconfig.load_file(tmp_path / "list.json")


def test_seconds_and_counts_from_a_command_line():
    from workshop import devconfig

    assert devconfig.seconds("2.5", "--wait") == 2.5 and devconfig.seconds(0, "--wait", zero=True) == 0.0
    for bad in ("soon", "", "0", "-1", "nan", "inf", None):
        with pytest.raises(devconfig.DevConfigError, match=r"^--timeout: expected seconds > 0, got "):
            devconfig.seconds(bad, "--timeout")
    assert devconfig.count("16", "--jobs") == 16 and devconfig.count(3, "--jobs") == 3
    for bad in ("x", "0", "-2", "1.5", 0, True):
        with pytest.raises(devconfig.DevConfigError, match=r"^--jobs: expected a whole number >= 1, got "):
            devconfig.count(bad, "--jobs")
    assert devconfig.baud("115200", "--baud") == 115200 and devconfig.baud(300, "--baud") == 300
    for bad in ("fast", "299", "11.5", 0, True):  # the same bound for flash, provision, smoke, identify
        with pytest.raises(devconfig.DevConfigError, match=r"^--baud: expected a baud rate such as 115200 \(>= 300\), got "):
            devconfig.baud(bad, "--baud")


@pytest.mark.parametrize("toml, message", [
    ("hostname = 5\n", "hostname: expected a string, got int 5"),
    ('[wifi]\nssid = 42\n', "wifi.ssid: expected a string, got int 42"),
    ('[telnet]\nuser = ["a"]\n', "telnet.user: expected a string, got list ['a']"),
    ('[mqtt]\nbroker = 10\n', "mqtt.broker: expected a string, got int 10"),
    ('[wifi]\npassword = 7\n', "wifi password: expected a string, not int"),
])
def test_a_config_value_of_the_wrong_type_is_a_named_error(tmp_path, toml, message):
    """Not a TypeError traceback (hostname) nor a number written to the board as its SSID."""
    f = tmp_path / "workshop.toml"
    f.write_text(toml)
    with pytest.raises(ProvisionError) as e:
        ProvisionConfig.from_file(f)
    assert str(e.value) == f"{f}: {message}"


def test_a_failed_write_says_write_failed_once():
    # pyserial's SerialException for a vanished port already reads "write failed: [Errno 5] ...".
    import serial

    from workshop.repl import ReplError, ReplSession

    class Gone:
        def write(self, data):
            raise serial.SerialException("write failed: [Errno 5] Input/output error")

        def close(self):
            pass

    s = ReplSession("/dev/ttyUSB9", serial_factory=lambda port: Gone())
    s.open()
    with pytest.raises(ReplError) as e:
        s._write(b"x")
    assert str(e.value).count("write failed") == 1, str(e.value)
    assert str(e.value).endswith("write failed: [Errno 5] Input/output error")


def test_an_error_s_reason_is_its_message_without_the_port_and_masked():
    # Tables (smoke, fleet, provision) name the board in its own column and show only `reason`:
    # a telnet "port" holds a colon ("10.0.0.5:23"), and a board's own text may hold ": " too.
    from workshop.repl import RemoteError, ReplSession

    e = RemoteError("10.0.0.5:23", "Traceback:\nOSError: [Errno 2] ENOENT: x")
    assert str(e) == "10.0.0.5:23: the board raised OSError: [Errno 2] ENOENT: x"
    assert e.reason == "the board raised OSError: [Errno 2] ENOENT: x"
    s = ReplSession("/dev/ttyUSB9", secrets=["hunter2"])  # (never opened)
    err = s._error(RemoteError, "Traceback:\nValueError: hunter2")
    assert err.reason == "the board raised ValueError: ***" and "hunter2" not in str(err)


def test_ctrl_c_ends_a_write_already_blocked_on_a_board_that_stopped_reading():
    # A PTY nobody reads takes a few KB, then a write blocks until its write timeout (20 s here):
    # setting cancel must end it at once (pyserial's cancel_write), not after the timeout.
    import os
    import pty
    import threading

    from support import cancel_while_running

    from workshop import serialport
    from workshop.repl import CancellablePort

    master, slave = pty.openpty()
    ser = serialport.open_port(os.ttyname(slave), 115200, timeout=0.05, write_timeout=20)
    cancel = threading.Event()
    port = CancellablePort(ser, cancel)

    def write() -> None:
        try:
            port.write(b"x" * 1_000_000)
        except Exception:  # noqa: BLE001 - how it ends is not the point; when it ends is
            pass

    # (the write must still be blocked at the cancel: a PTY nobody reads takes only a few KB)
    elapsed = cancel_while_running(write, cancel, running_for=0.5, wait=3)
    port.close()
    os.close(master)
    os.close(slave)
    assert elapsed is not None and elapsed < 0.5, "a blocked write outlived Ctrl-C"


class _BoardAfterCtrlD:
    """The bytes a real board (ESP32) sends in the raw REPL: the banner on Ctrl-A; on Ctrl-D a soft
    reboot, boot.py's lines `boot_s` later, the raw banner and prompt, and in the same read an
    ESP-IDF log line (a unix peer cannot show this: it restarts into the friendly REPL)."""

    def __init__(self, port: str, boot_s: float = 1.5) -> None:
        self.out = bytearray()
        self.timeout = 0.05
        self.boot_s = boot_s
        self.pending: list[tuple[float, bytes]] = []

    def _tick(self) -> None:
        now = time.monotonic()
        for due, data in list(self.pending):
            if due <= now:
                self.out += data
                self.pending.remove((due, data))

    @property
    def in_waiting(self) -> int:
        self._tick()
        return len(self.out)

    def read(self, n: int = 1) -> bytes:
        end = time.monotonic() + self.timeout
        while True:
            self._tick()
            if self.out or time.monotonic() >= end:
                break
            time.sleep(0.005)
        data = bytes(self.out[:n])
        del self.out[:n]
        return data

    def write(self, b: bytes) -> int:
        now = time.monotonic()
        if b"\x01" in b:
            self.pending.append((now, b"raw REPL; CTRL-B to exit\r\n>"))
        if b == b"\x04":
            self.pending += [(now, b"OK\r\nMPY: soft reboot\r\n"),
                             (now + self.boot_s, b"workshop: wifi up, 10.0.0.5\r\nraw REPL; CTRL-B to exit\r\n>"
                                                 b"I (5123) wifi: station ip lost\r\n")]
        return len(b)

    def flush(self) -> None:
        pass

    def reset_input_buffer(self) -> None:
        self.out.clear()

    def close(self) -> None:
        pass

    @property
    def is_open(self) -> bool:
        return True


def test_soft_reset_waits_out_a_silent_boot_and_ends_at_the_raw_prompt_whatever_follows_it():
    """boot.py connecting to Wi-Fi is silent for seconds: that silence is not the end (0.5 s of it
    was, and boot.py was interrupted); the raw prompt is, even when a log line comes after it in
    the same read (the soft reset then waited its whole timeout and failed the board)."""
    s = ReplSession("fake", serial_factory=_BoardAfterCtrlD, timeout=8)
    s.open()
    s.enter_raw()
    t0 = time.monotonic()
    out = s.soft_reset(timeout=8)
    assert 1.4 < time.monotonic() - t0 < 4, time.monotonic() - t0
    assert out == "workshop: wifi up, 10.0.0.5" and s.in_raw
