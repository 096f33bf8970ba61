"""Prove each board works: checks over the raw REPL -> structured results -> table, JSON, JUnit XML.

Per device (in parallel): the firmware is the expected one (MicroPython version, port/chip,
build name, and the build identity frozen into the image: board and inputs hash against
build.json's or index.json's); every stack module imports and is frozen (a file on the device
filesystem that shadows a frozen module fails the check); free heap after importing the stack
is at least the board's threshold; flash size; the workshop config is present and parseable.
With `network`: Wi-Fi connects with the provisioned config, an MQTT round trip through a broker,
an HTTP GET.

The parts, one job each:
  expect.py    what a board should run (`Expected`: build.json, a release's index.json, a board file)
  device/*.py  the programs run on the board (real MicroPython source, sent as text)
  run.py       sessions, the device programs, timeouts that say how far a board got
  evaluate.py  the rules: facts against the expectation -> checks (pure)
  model.py     checks and reports;  report.py  JSON, JUnit XML, the summary a table shows
Every public name is importable from `workshop.smoke`.
"""

from ..check import module_name
from .evaluate import (FLASH_UNITS, HTTP_STAGES, MQTT_STAGES, evaluate, mqtt_port, parse_broker, parse_http_url,
                       short_hash)
from .expect import (RUNS_ON_IMPORT, Expected, choose_expected, manifest_modules, release_index,
                     stack_module_names)
from .model import FAIL, PASS, SKIP, Check, DeviceReport, NetworkOptions, SmokeError
from .report import (NETWORK_GROUPS, SUMMARY_GROUPS, GroupSummary, summary, summary_rows, to_json, to_junit,
                     xml_safe)
from .run import DEVICE_SCRIPTS, Progress, device_program, device_source, read_progress, smoke_all, smoke_device

__all__ = [
    "DEVICE_SCRIPTS", "FAIL", "FLASH_UNITS", "HTTP_STAGES", "MQTT_STAGES", "NETWORK_GROUPS", "PASS",
    "RUNS_ON_IMPORT", "SKIP", "SUMMARY_GROUPS", "Check", "DeviceReport", "Expected", "GroupSummary",
    "NetworkOptions", "Progress", "SmokeError", "choose_expected", "device_program", "device_source", "evaluate",
    "manifest_modules", "module_name", "mqtt_port", "parse_broker", "parse_http_url", "read_progress", "release_index",
    "short_hash", "smoke_all", "smoke_device", "stack_module_names", "summary", "summary_rows", "to_json",
    "to_junit", "xml_safe",
]
