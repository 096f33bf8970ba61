"""`start` is one list for host and board: provision accepts exactly what workshop_boot starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workshop.provision import ProvisionConfig, ProvisionError, device_services

REPO = Path(__file__).resolve().parents[3]


def test_the_host_list_is_the_boards_list(tmp_path):
    mp = Path(sys.executable).parent / "micropython"
    env = dict(os.environ, MICROPYPATH=f"{REPO / 'modules'}:.frozen", WORKSHOP_CONFIG=str(tmp_path / "none.json"))
    out = subprocess.run([str(mp), "-c", "import json, workshop_boot; print(json.dumps(workshop_boot.SERVICES))"],
                         env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path).stdout
    assert tuple(json.loads(out.splitlines()[-1])) == device_services()
    assert "announce" in device_services()


def test_provision_refuses_what_the_board_cannot_start():
    # webserver runs an asyncio loop that would hold the REPL: the board does not start it at boot
    with pytest.raises(ProvisionError, match=r"start: unknown service 'webserver' \(services: wifi, mdns, telnet, announce\)"):
        ProvisionConfig(start=("wifi", "webserver"))
    assert ProvisionConfig(start=("wifi", "mdns", "telnet", "announce")).start == ("wifi", "mdns", "telnet", "announce")


def test_provision_help_names_exactly_what_the_board_starts():
    out = subprocess.run([sys.executable, "-m", "invoke", "--help", "provision"], cwd=REPO, capture_output=True,
                         text=True, timeout=60).stdout
    listed = " ".join(out.split("--start=STRING", 1)[1].split("\n  -", 1)[0].split())
    assert listed.endswith("from: " + ",".join(device_services())), listed
