"""Reports of a smoke run: JSON, JUnit XML, and the per-group summary a table shows."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .model import FAIL, PASS, SKIP, DeviceReport

def to_json(reports: Sequence[DeviceReport]) -> str:
    return json.dumps({"ok": all(r.ok for r in reports), "devices": [r.to_dict() for r in reports]}, indent=2) + "\n"


# XML 1.0 cannot carry most control characters (not even escaped): a check detail with an ANSI
# colour code or a NUL from a board would make the whole report unreadable.
_XML_INVALID = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """`text` with every character XML 1.0 cannot hold written as an escape: '\\x1b', '\\x00'."""
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


def to_junit(reports: Sequence[DeviceReport], suite: str = "workshop-smoke") -> str:
    """JUnit XML: one testsuite per device, one testcase per check (fail -> <failure>, skip -> <skipped>)."""
    x = xml_safe
    root = ET.Element("testsuites", name=x(suite))
    for r in reports:
        ts = ET.SubElement(root, "testsuite", name=x(r.port), tests=str(len(r.checks)),
                           failures=str(len(r.failed)), errors="0",
                           skipped=str(sum(c.status == SKIP for c in r.checks)), time=f"{r.duration_s:.3f}")
        for c in r.checks:
            tc = ET.SubElement(ts, "testcase", classname=x(f"smoke.{Path(r.port).name}"), name=x(c.name),
                               time=f"{c.duration_s:.3f}")
            detail = x(c.detail)
            if c.status == FAIL:
                ET.SubElement(tc, "failure", message=detail).text = detail
            elif c.status == SKIP:
                ET.SubElement(tc, "skipped", message=detail)
            else:
                ET.SubElement(tc, "system-out").text = detail
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


@dataclass(frozen=True)
class GroupSummary:
    """One cell of the summary table: what to show, and the status that colours it."""

    text: str            # "pass", "fail", "skip", or for the modules "11/11" ("10/11, 1 skipped")
    status: str          # pass | fail | skip


def summary(report: DeviceReport) -> dict[str, GroupSummary]:
    """Per check group, in check order (the modules folded into one cell: '10/11' fails)."""
    row: dict[str, GroupSummary] = {}
    mods = [c for c in report.checks if c.group == "module"]
    for c in report.checks:
        if c.group == "module":
            if "modules" not in row:
                # A skipped module (workshop_boot on a board without its config) is no pass: said.
                ok = sum(m.status == PASS for m in mods)
                skipped = sum(m.status == SKIP for m in mods)
                row["modules"] = GroupSummary(f"{ok}/{len(mods)}" + (f", {skipped} skipped" if skipped else ""),
                                              FAIL if any(m.status == FAIL for m in mods) else PASS)
        else:
            row[c.name] = GroupSummary(c.status, c.status)
    return row


def summary_rows(report: DeviceReport) -> dict[str, str]:
    """Per check group: 'pass', 'fail' or 'skip' (modules folded into one cell: '11/11')."""
    return {group: cell.text for group, cell in summary(report).items()}


SUMMARY_GROUPS = ("connect", "firmware", "modules", "heap", "flash", "config")
NETWORK_GROUPS = ("wifi", "mqtt", "http")
