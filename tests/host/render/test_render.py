"""Tables never cut the column a person needs: at 80 columns, piped, and from the real CLI."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from support import Terminal

from workshop import render, smoke
from workshop.render import Cell, Column

REPO = Path(__file__).resolve().parents[3]
INVOKE = str(Path(sys.executable).parent / "invoke")
BOARDS = sorted(p.stem for p in (REPO / "boards").glob("*.toml"))
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")

LONG_PORT = "/dev/serial/by-id/usb-Silicon_Labs_CP2102N_USB_to_UART_Bridge_Controller_3c61e2f1-if00-port0"
ROWS = [[LONG_PORT, "ws-3fa2", Cell("failed at config", "failed"),
         "the board raised OSError: [Errno 28] ENOSPC while writing /workshop.json.tmp (filesystem full?)"],
        ["/dev/ttyUSB1", "lab-workshop-room-b-12", Cell("written + verified", "ok"), ""]]
COLUMNS = ["port", "hostname", "result", Column("error", wrap=True)]


def draw(width: int, terminal: bool) -> str:
    out = io.StringIO()
    render.print_table(Console(file=out, width=width, force_terminal=terminal, color_system=None), "Provisioning",
                       COLUMNS, ROWS)
    return out.getvalue()


def test_key_columns_are_whole_at_80_columns_and_details_wrap():
    text = draw(80, terminal=True)
    lines = text.splitlines()
    for whole in ("ws-3fa2", "lab-workshop-room-b-12", "failed at config", "written + verified", "/dev/ttyUSB1"):
        assert any(whole in line for line in lines), whole
    # A port longer than the terminal is drawn whole (the table widens) rather than cut.
    assert any(LONG_PORT in line for line in lines)
    assert "…" not in text
    assert "ENOSPC" in text and "(filesystem full?)" not in text.replace("\n", "")  # the detail wrapped...
    assert "(filesystem" in text and "full?)" in text                                # ...not lost


def test_a_table_that_fits_stays_within_80_columns():
    rows = [["ESP32_GENERIC_S3", "esp32", "firmware.bin@0x0, partition-table.bin@0x8000, micropython.bin@0x10000",
             Cell("none: no docker engine running; no idf.py on PATH", "none")]]
    out = io.StringIO()
    render.print_table(Console(file=out, width=80, force_terminal=True, color_system=None), "Boards",
                       ["board", "port", Column("offsets", wrap=True), Column("toolchain here", wrap=True)], rows)
    lines = out.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    assert any("ESP32_GENERIC_S3" in line for line in lines) and "…" not in out.getvalue()


def test_piped_tables_are_plain_lines_one_per_row():
    text = draw(80, terminal=False)
    lines = text.splitlines()
    assert lines[0] == "Provisioning"
    assert lines[1].split() == ["port", "hostname", "result", "error"]
    assert re.match(re.escape(LONG_PORT) + r"  ws-3fa2 +failed at config +the board raised OSError", lines[2])
    assert lines[2].endswith("(filesystem full?)") and lines[3].startswith("/dev/ttyUSB1")
    assert not set("┏┃━│└") & set(text) and "\x1b" not in text
    assert all(line == line.rstrip() for line in lines)


def test_cells_are_text_not_markup_and_colour_comes_from_status():
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system="standard")
    render.print_table(console, None, ["port", "result"], [["/dev/tty[red]0[/]", Cell("ok", "ok")],
                                                            ["p1", Cell("FAILED", "failed")]])
    text = out.getvalue()
    assert "/dev/tty[red]0[/]" in ANSI.sub("", text)
    assert "\x1b[32mok" in text and "\x1b[31mFAILED" in text


def test_smoke_summary_carries_a_status_instead_of_being_parsed():
    r = smoke.DeviceReport("p", [smoke.Check("connect", smoke.PASS, ""),
                                 smoke.Check("module wifi", smoke.PASS, ""),
                                 smoke.Check("module mdns", smoke.FAIL, "import failed"),
                                 smoke.Check("heap", smoke.SKIP, "")])
    cells = smoke.summary(r)
    assert cells["modules"] == smoke.GroupSummary("1/2", smoke.FAIL)
    assert cells["heap"] == smoke.GroupSummary("skip", smoke.SKIP) and list(cells) == ["connect", "modules", "heap"]
    # A skipped module was counted as passed: "2/2" for a board whose workshop_boot was not checked.
    r.checks[2] = smoke.Check("module workshop_boot", smoke.SKIP, "no device config: not imported")
    assert smoke.summary(r)["modules"] == smoke.GroupSummary("1/2, 1 skipped", smoke.PASS)


def run_tty(*argv: str, columns: int = 80) -> str:
    term = Terminal(list(argv), columns, cwd=REPO)
    try:
        assert term.read(120), f"{argv} did not end: {term.text[-2000:]}"
    finally:
        term.close()
    return term.text


def boards_said_to_have_no_toolchain(text: str) -> set[str]:
    """The names in 'no toolchain here for A, B: why' lines."""
    prefix = "no toolchain here for "
    return {name for line in text.splitlines() if line.startswith(prefix)
            for name in line[len(prefix):].split(": ", 1)[0].split(", ")}


def test_invoke_boards_in_an_80_column_terminal():
    """At 80 columns every board name and MicroPython BOARD/VARIANT is whole on its line (they
    were folded mid-name: ESP32_G / ENERIC_C3), and why a board has no toolchain is said below."""
    text = run_tty(INVOKE, "boards")
    lines = text.splitlines()
    assert "┃ board" in text                                    # a terminal: boxes
    assert max(len(line) for line in lines) <= 80 and "…" not in text
    for name in BOARDS:
        row = next(line for line in lines if f"│ {name} " in line)
        target = "standard" if name == "UNIX" else name
        assert f"│ {target} " in row.split("│", 2)[2], row
    without = {line.split("│")[1].strip() for line in lines if line.rstrip().endswith("│ none      │")}
    if not without:
        pytest.skip("every board has a toolchain here: no line below the table to check")
    below = " ".join(lines[lines.index(next(line for line in lines if line.startswith("└"))) + 1:])
    assert boards_said_to_have_no_toolchain(" ".join(below.split())) == without, below


def test_invoke_boards_piped():
    proc = subprocess.run([INVOKE, "boards"], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    lines = proc.stdout.splitlines()
    assert lines[0] == "Boards" and lines[1].split() == ["board", "chip", "BOARD/VARIANT", "flash", "offset",
                                                          "toolchain"]
    rows = lines[2:2 + len(BOARDS)]
    assert [line.split()[0] for line in rows] == BOARDS          # one whole line per board
    esp32 = next(line for line in rows if line.startswith("ESP32_GENERIC "))
    assert esp32.split()[:5] == ["ESP32_GENERIC", "ESP32", "ESP32_GENERIC", "4MB", "0x1000"], esp32
    assert "…" not in proc.stdout and "━" not in proc.stdout
    # Each board without a toolchain is named, whole, on a line that says why.
    without = {line.split()[0] for line in rows if line.split()[-1] == "none"}
    if not without:
        pytest.skip("every board has a toolchain here: no line below the table to check")
    assert boards_said_to_have_no_toolchain("\n".join(lines[2 + len(BOARDS):])) == without, proc.stdout


def test_a_live_table_follows_the_width_rule_folded_at_the_terminal():
    """roster --watch drew its wrapped columns zero-wide at 100 columns and pushed the rest off the
    edge: a live table is drawn as print_table draws it, each line folded at the terminal's width."""
    columns = ["hostname", "IP", "board", Column("firmware", wrap=True), "outdated", Column("heap", justify="right"),
               "RSSI", "uptime", Column("last seen", wrap=True), "state"]
    rows = [["classroom-lab-board-0042", "10.0.0.42", "ESP32_GENERIC", "v1.28.0 abababababab", Cell("?", "skip"),
             "123,456", "-60", "12345 s", "3 s ago (retained)", Cell("online", "ok")]]
    wide = io.StringIO()
    render.print_table(Console(file=wide, width=100, force_terminal=True, color_system=None), "Room", columns, rows)
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=True, color_system=None).print(render.LiveTable("Room", columns, rows))
    printed, live = wide.getvalue().splitlines(), out.getvalue().splitlines()
    width = max(len(line) for line in printed)
    assert width > 100 and max(len(line) for line in live) <= 100
    folds = -(-width // 100)
    unfolded = ["".join(live[i:i + folds]) for i in range(0, len(live), folds)]
    assert [line.rstrip() for line in unfolded] == [line.rstrip() for line in printed]
    assert any("firmware" in line and "last seen" in line and "state" in line for line in unfolded)
    # A table that fits is drawn as print_table draws it, unfolded.
    narrow = [["lab-01", "10.0.0.1", "-", "-", "?", "-", "-", "-", "-", "online"]]
    out, wide = io.StringIO(), io.StringIO()
    Console(file=out, width=160, force_terminal=True, color_system=None).print(render.LiveTable("Room", columns, narrow))
    render.print_table(Console(file=wide, width=160, force_terminal=True, color_system=None), "Room", columns, narrow)
    assert out.getvalue() == wide.getvalue()
