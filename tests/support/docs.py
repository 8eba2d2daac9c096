"""Reading the docs and the .pxd files the doc tests compare: enum members of a .pxd,
the cells of a Markdown table row, and a one-place edit for the tampered-copy checks."""

from __future__ import annotations

import re

ENUM_MEMBER = re.compile(r"^ +([A-Z][A-Z0-9_]*) = (0x[0-9A-Fa-f]+|\d+)(?: +#.*)?$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def enum_members(text: str, label: str) -> dict[str, int]:
    """The members of the ``cdef enum:`` blocks of a .pxd (``label`` names it in errors)."""
    out: dict[str, int] = {}
    in_enum = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("cdef enum"):
            in_enum = True
            continue
        if line and not line[0].isspace():
            in_enum = False
        if not in_enum or not line.strip() or line.strip().startswith("#"):
            continue
        m = ENUM_MEMBER.match(line)
        assert m, f"{label} line {n}: unparsable enum member {line!r}"
        assert m.group(1) not in out, f"{label}: {m.group(1)} defined twice"
        out[m.group(1)] = int(m.group(2), 0)
    return out


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row (``\\|`` inside a cell is not a separator)."""
    return [c.strip() for c in CELL_SPLIT.split(line.strip().strip("|"))]


def swap(text: str, old: str, new: str) -> str:
    """``text`` with its one ``old`` replaced (a tampered copy for a can-fail check)."""
    assert text.count(old) == 1, old
    return text.replace(old, new)
