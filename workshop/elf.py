"""Facts read from a linked image's ELF (and its linker map): the size budget per memory region,
and the frozen module names the image really carries.

pyelftools reads the ELF; the memory regions come from the "Memory Configuration" table that GNU ld
writes into the map file, so no port's sizes are written down here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

FROZEN_NAMES_SYMBOL = "mp_frozen_names"


class ElfError(ValueError):
    """The ELF or map does not hold what was asked for; the message names the file."""


@dataclass(frozen=True)
class Region:
    name: str                 # our name, e.g. "iram"
    region: str               # the linker's, e.g. "iram1_0_seg"
    used: int
    size: int
    margin: int = 0           # bytes that must stay free (the board's setting)

    @property
    def free(self) -> int:
        return self.size - self.used

    @property
    def ok(self) -> bool:
        return self.free >= self.margin

    def to_dict(self) -> dict[str, int | str]:
        return {"region": self.region, "used": self.used, "size": self.size, "free": self.free,
                "margin": self.margin}

    def describe(self) -> str:
        return f"{self.name} {self.used:,} / {self.size:,} B ({self.free:,} B free, margin {self.margin:,} B)"


_MEMORY_LINE = re.compile(r"^(\S+)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)")


def memory_regions(map_file: Path) -> dict[str, tuple[int, int]]:
    """The linker's MEMORY regions from a GNU ld map file: name -> (origin, length)."""
    try:
        text = map_file.read_text(errors="replace")
    except FileNotFoundError:
        raise ElfError(f"{map_file}: missing: no linker map to read the memory regions from") from None
    start = text.find("Memory Configuration")
    end = text.find("Linker script and memory map", start)
    if start < 0 or end < 0:
        raise ElfError(f"{map_file}: no 'Memory Configuration' table (not a GNU ld map file?)")
    regions = {}
    for line in text[start:end].splitlines():
        m = _MEMORY_LINE.match(line)
        if m and m.group(1) != "*default*":
            regions[m.group(1)] = (int(m.group(2), 16), int(m.group(3), 16))
    return regions


def budget(elf_file: Path, map_file: Path, regions: tuple[tuple[str, str], ...],
           margins: dict[str, int] | None = None) -> tuple[Region, ...]:
    """Bytes used per region: the allocated sections (SHF_ALLOC, .bss included) whose address
    lies in the region, as `size -A` lists them."""
    memory = memory_regions(map_file)
    used = dict.fromkeys(memory, 0)
    with _open(elf_file) as elf:
        for section in elf.iter_sections():
            if not section["sh_flags"] & SH_FLAGS.SHF_ALLOC or not section["sh_size"]:
                continue
            addr = section["sh_addr"]
            for name, (origin, length) in memory.items():
                if origin <= addr < origin + length:
                    used[name] += section["sh_size"]
                    break
    out = []
    for ours, linker in regions:
        if linker not in memory:
            raise ElfError(f"{map_file}: no memory region {linker!r} (regions: {', '.join(memory)})")
        out.append(Region(ours, linker, used[linker], memory[linker][1], (margins or {}).get(ours, 0)))
    return tuple(out)


def frozen_names(elf_file: Path) -> tuple[str, ...]:
    """The frozen module paths in the linked image: MicroPython's mp_frozen_names table
    ("a.py\\0b.py\\0\\0"), read from the section that holds the symbol."""
    with _open(elf_file) as elf:
        symtab = elf.get_section_by_name(".symtab")
        if not isinstance(symtab, SymbolTableSection):
            raise ElfError(f"{elf_file}: no symbol table (stripped?): cannot read the frozen module names")
        symbols = symtab.get_symbol_by_name(FROZEN_NAMES_SYMBOL)
        if not symbols:
            raise ElfError(f"{elf_file}: no {FROZEN_NAMES_SYMBOL}: the image freezes nothing")
        sym = symbols[0]
        addr, size = sym["st_value"], sym["st_size"]
        for section in elf.iter_sections():
            start = section["sh_addr"]
            if section["sh_type"] != "SHT_NOBITS" and start <= addr < start + section["sh_size"]:
                raw = section.data()[addr - start: addr - start + size]
                break
        else:
            raise ElfError(f"{elf_file}: {FROZEN_NAMES_SYMBOL} at 0x{addr:x} is in no section with contents")
    names = raw.split(b"\0")
    # The table ends with an empty name.
    return tuple(n.decode("utf-8", "replace") for n in names if n)


@contextmanager
def _open(path: Path) -> Iterator[ELFFile]:
    try:
        f = path.open("rb")
    except FileNotFoundError:
        raise ElfError(f"{path}: missing: the build left no ELF") from None
    with f:
        try:
            elf = ELFFile(f)
        except Exception as e:  # pyelftools raises its own ELFError, and struct errors on garbage
            raise ElfError(f"{path}: not an ELF file ({e})") from None
        yield elf
