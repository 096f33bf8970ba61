"""Tables for the command line: one way to show rows, so every listing behaves the same.

No policy here, only presentation. The rules every table follows:
- a column is never truncated: board names, ports, hostnames, results keep every character;
  only columns marked `wrap` (long details: errors, offsets, reasons) fold onto more lines,
  and when even that does not fit the terminal the table is drawn wider than the terminal
  rather than cut;
- cells are plain text (never parsed as markup: a port named `[x]` stays `[x]`; a control
  character is shown as `\\x1b`, never sent to the terminal); a cell's colour comes from its
  `status` (ok, fail, skip...), never from parsing its text;
- piped or redirected (stdout not a terminal), a table is printed without boxes or colour, one
  line per row at its natural width, so `grep` and `cut` see whole rows;
- a live view (rich `Live`, redrawn in place) follows the same width rule: `LiveTable`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

# A cell's status -> its colour. Statuses are what results carry ("ok", "failed", "pass"...).
STATUS_STYLES = {
    "ok": "green", "pass": "green", "passed": "green", "built": "green", "up to date": "green", "verified": "green",
    "fail": "red", "failed": "red", "error": "red", "none": "red",
    "skip": "dim", "skipped": "yellow", "interrupted": "yellow", "not started": "yellow", "warn": "yellow",
}


@dataclass(frozen=True)
class Column:
    header: str
    wrap: bool = False           # a long detail column: folds onto more lines instead of widening the table
    justify: Literal["left", "right"] = "left"


@dataclass(frozen=True)
class Cell:
    text: str
    status: str | None = None    # colours the cell (STATUS_STYLES); None = plain


CellLike = str | Cell | None


# C0 controls but tab and newline, DEL, and C1: an escape sequence in a board's hostname, a
# status message or a board's output could clear the screen, retitle the window or set the
# clipboard of the terminal showing it (anyone on the LAN may publish a status).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Text from boards and the network as it may reach a terminal: each control character shown
    as \\xNN instead of being sent to the terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _cell(value: CellLike) -> Cell:
    if isinstance(value, Cell):
        return Cell(visible(value.text), value.status)
    return Cell("-" if value is None or value == "" else visible(str(value)))


def _columns(columns: Sequence[str | Column]) -> list[Column]:
    return [c if isinstance(c, Column) else Column(c) for c in columns]


def _longest(header: str, texts: Iterable[str]) -> int:
    return max([len(header), *(len(line) for t in texts for line in (t.splitlines() or [""]))])


# A wrapped column is squeezed to no less than WRAP_MIN to fit a terminal; when the unwrapped
# columns alone are too wide for it, the table is drawn wider and wrapped columns get WRAP_WIDE.
WRAP_MIN = 6
WRAP_WIDE = 32


def build_table(title: str | None, columns: Sequence[str | Column], rows: Iterable[Sequence[CellLike]], *,
                plain: bool = False) -> Table:
    """A rich Table following the rules above (`plain`: no box, no colour, as for a pipe)."""
    cols = _columns(columns)
    cells = [[_cell(v) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(cols):
            raise ValueError(f"a row of {len(row)} cells in a table of {len(cols)} columns: {row}")
    table = Table(title=None if plain else title, box=None if plain else box.HEAVY_HEAD, show_edge=not plain,
                  pad_edge=not plain, header_style="" if plain else "bold", title_style="italic")
    for i, col in enumerate(cols):
        justify = col.justify
        if col.wrap:
            table.add_column(col.header, overflow="fold", justify=justify)
        else:
            # Never narrower than its longest cell: rich would otherwise cut it with an ellipsis.
            table.add_column(col.header, no_wrap=True, min_width=_longest(col.header, (r[i].text for r in cells)),
                             justify=justify)
    for row in cells:
        table.add_row(*(Text(c.text, style="" if plain or not c.status else STATUS_STYLES.get(c.status, ""))
                        for c in row))
    return table


def minimum_width(columns: Sequence[str | Column], rows: Sequence[Sequence[CellLike]], plain: bool = False,
                  wrap_min: int = WRAP_MIN) -> int:
    """The narrowest drawing that cuts nothing: unwrapped columns whole, wrapped ones at `wrap_min`."""
    cols = _columns(columns)
    cells = [[_cell(v) for v in row] for row in rows]
    width = 0
    for i, col in enumerate(cols):
        longest = _longest(col.header, (r[i].text for r in cells))
        width += (min(longest, wrap_min) if col.wrap else longest) + 2      # 1 space of padding each side
    return width + (0 if plain else len(cols) + 1)                           # the box's vertical lines


def fit_width(width: int, columns: Sequence[str | Column], rows: Sequence[Sequence[CellLike]],
              plain: bool = False) -> int:
    """The width to draw a table at on a terminal `width` wide: that width, or wider when even
    the narrowest drawing that cuts nothing needs more (wrapped columns then get WRAP_WIDE)."""
    if minimum_width(columns, rows, plain) > width:
        return minimum_width(columns, rows, plain, WRAP_WIDE)
    return width


class LiveTable:
    """A table for a live view on a terminal (rich `Live`): drawn at `fit_width`, as print_table
    draws it, so nothing is cut. A table wider than the terminal has each line folded at the
    terminal's width, which is what the terminal shows of print_table's lines too; folded here,
    every screen line is a line to Live, which then moves the cursor back over all of them."""

    def __init__(self, title: str | None, columns: Sequence[str | Column], rows: Iterable[Sequence[CellLike]]) -> None:
        self.columns = columns
        self.rows = [list(r) for r in rows]
        self.table = build_table(title, columns, self.rows)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        screen = options.max_width
        width = fit_width(screen, self.columns, self.rows)
        for line in console.render_lines(self.table, options.update_width(width), pad=False):
            length = Segment.get_line_length(line)
            for piece in Segment.divide(line, range(screen, length + screen, screen)) if length > screen else [line]:
                yield from piece
                yield Segment.line()


def print_table(console: Console, title: str | None, columns: Sequence[str | Column],
                rows: Iterable[Sequence[CellLike]], *, plain: bool | None = None) -> None:
    """Print a table on `console`; `plain` defaults to "not a terminal"."""
    plain = (not console.is_terminal) if plain is None else plain
    rows = [list(r) for r in rows]
    table = build_table(title, columns, rows, plain=plain)
    if plain:
        # Natural width, one line per row, no padding after the last column.
        measure = Measurement.get(console, console.options.update_width(1 << 16), table)
        sink = Console(width=max(1, measure.maximum), color_system=None, force_terminal=False, emoji=False,
                       highlight=False, record=False, file=io.StringIO())
        with sink.capture() as captured:
            sink.print(table, crop=False)
        text = "\n".join(line.rstrip() for line in captured.get().splitlines())
        console.out((title + "\n" if title else "") + text, highlight=False)
        return
    width = fit_width(console.width, columns, rows, plain)
    # Console.print never draws wider than the console: widen it for this table only.
    saved = console.width
    console.width = width
    try:
        console.print(table, crop=False)
    finally:
        console.width = saved
