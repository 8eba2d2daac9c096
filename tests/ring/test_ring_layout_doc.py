"""docs/ring-layout.md cannot drift from the code:

- its tables of constants, header offsets and lane descriptor offsets name the values in
  ``ring/_ring.pxd`` (read as text: no build needed), with the types ``_ring.pyx`` reads
  them with, and fields that neither overlap nor leave their region;
- the raw segment view the ring tests use (``ring_workers.py``) has the same offsets;
- its Python-level constants and its sizing table are what the built module has and makes.

Each check is also run on a tampered copy, to show that it can fail.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import ROOT, TESTS
from support.docs import cells, enum_members, swap

DOC = ROOT / "docs" / "ring-layout.md"
RING = ROOT / "src" / "emp_fastbuf" / "ring"
PXD = RING / "_ring.pxd"
PYX = RING / "_ring.pyx"
WORKERS = TESTS / "support" / "ring_workers.py"

# The .pxd's constants that are not part of the shared segment: a process's own indexes.
PROCESS_LOCAL = {"DROP_FULL", "DROP_TOO_LARGE", "DROP_NO_LANE", "AT_HEAD", "AT_START", "NEW_LANE"}
# Constants the doc lists that are Python values of the module, not in the .pxd.
PYTHON_LEVEL = {"DEFAULT_META_SIZE", "MAX_LANES"}
SIZES = {"u32": 4, "u64": 8}

DEFINE = re.compile(r"^ *#define (\w+) (0x[0-9A-Fa-f]+|\d+)[uUlL]*$", re.MULTILINE)
EXTERN_CONST = re.compile(r'^ +const \w+ ([A-Z][A-Z0-9_]*) "(\w+)"$', re.MULTILINE)
ACCESS = re.compile(r"\bU(32|64)\([^,()]+, *([HL]_[A-Z_]+)\b")


def pxd_constants(text: str) -> dict[str, int]:
    """The members of the ``cdef enum:`` blocks and the macro constants of a .pxd."""
    out = enum_members(text, "_ring.pxd")
    macros = {name: int(value, 0) for name, value in DEFINE.findall(text)}
    for name, cname in EXTERN_CONST.findall(text):
        assert cname in macros, f"_ring.pxd: {name} names {cname}, which it does not define"
        assert name not in out, f"_ring.pxd: {name} defined twice"
        out[name] = macros[cname]
    return out


def access_widths(pyx_text: str) -> dict[str, set[int]]:
    """Offset constant -> the widths (bytes) the ring reads and writes it with."""
    out: dict[str, set[int]] = {}
    for bits, name in ACCESS.findall(pyx_text):
        out.setdefault(name, set()).add(int(bits) // 8)
    return out


@dataclass
class Row:
    section: str
    value: int
    constant: str
    type: str  # "" where the table has no type column


def doc_rows(text: str) -> list[Row]:
    """The rows of every table whose second column is ``constant``, with their section."""
    rows: list[Row] = []
    section = ""
    header: list[str] | None = None
    for i, line in enumerate(text.splitlines()):
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = cells(line)
            continue
        if line.startswith("|---") or header[1] != "constant":
            continue
        row = cells(line)
        m = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", row[1])
        assert m, f"ring-layout.md line {i + 1}: constant not in backticks: {line!r}"
        typ = row[header.index("type")] if "type" in header else ""
        rows.append(Row(section, int(row[0].replace(",", ""), 0), m.group(1), typ))
    return rows


def _type(typ: str) -> tuple[int, int]:
    m = re.fullmatch(r"(?:(\d+) x )?(u32|u64)", typ)
    assert m, f"unknown type {typ!r}"
    return int(m.group(1) or 1), SIZES[m.group(2)]


def width(typ: str) -> int:
    """Bytes of a doc type: ``u32``, ``u64`` or ``N x u64``."""
    n, size = _type(typ)
    return n * size


def element(typ: str) -> int:
    """Bytes of one element of a doc type (the ring reads an array element by element)."""
    return _type(typ)[1]


def region(row: Row) -> str:
    if row.section.startswith("Header"):
        return "H_"
    if row.section.startswith("Lane descriptor"):
        return "L_"
    return ""


def disagreements(doc_text: str, pxd_text: str, pyx_text: str) -> list[str]:
    """Every way in which the doc's tables and _ring.pxd / _ring.pyx differ."""
    problems = []
    pxd = pxd_constants(pxd_text)
    widths = access_widths(pyx_text)
    rows = doc_rows(doc_text)
    by_name = {r.constant: r for r in rows}
    if len(by_name) != len(rows):
        problems.append("the doc lists a constant twice")
    for r in rows:
        if r.constant in PYTHON_LEVEL:
            continue  # checked against the built module below
        if r.constant not in pxd:
            problems.append(f"the doc lists {r.constant}, which _ring.pxd does not define")
        elif pxd[r.constant] != r.value:
            problems.append(f"the doc says {r.constant} = {r.value}, _ring.pxd {pxd[r.constant]}")
        prefix = region(r)
        if prefix and not r.constant.startswith(prefix):
            problems.append(f"{r.constant} is listed under {r.section!r}")
        if r.type and r.constant in widths and widths[r.constant] != {element(r.type)}:
            got = sorted(8 * w for w in widths[r.constant])
            problems.append(f"the doc says {r.constant} is {r.type}, _ring.pyx accesses {got} bits")
    for name in sorted(set(pxd) - PROCESS_LOCAL - set(by_name)):
        problems.append(f"_ring.pxd {name} is in no table of the doc")
    # Within each region, fields follow each other without overlap and stay inside it.
    end = {"H_": pxd.get("HEADER_SIZE", 0), "L_": pxd.get("DESC_SIZE", 0)}
    for prefix, limit in end.items():
        fields = sorted((r for r in rows if region(r) == prefix), key=lambda r: r.value)
        for a, b in itertools.pairwise(fields):
            if a.value + width(a.type) > b.value:
                problems.append(f"{a.constant} ({a.type} at {a.value}) overlaps {b.constant}")
        if fields and fields[-1].value + width(fields[-1].type) > limit:
            problems.append(f"{fields[-1].constant} runs past the region's {limit} bytes")
    return problems


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_doc_tables_agree_with_the_pxd() -> None:
    assert disagreements(read(DOC), read(PXD), read(PYX)) == []


def test_every_offset_the_ring_uses_is_in_the_pxd_and_the_doc() -> None:
    names = {r.constant for r in doc_rows(read(DOC))}
    used = set(access_widths(read(PYX)))
    assert used <= set(pxd_constants(read(PXD)))
    assert used <= names


@pytest.mark.parametrize(
    ("where", "old", "new", "caught"),
    [
        ("doc", "| 8 | `H_VERSION` |", "| 12 | `H_VERSION` |", "H_VERSION = 12"),
        ("doc", "| 2 | `VERSION` |", "| 1 | `VERSION` |", "VERSION = 1"),
        ("doc", "| 0x80000000 | `PAD_BIT` |", "| 0x40000000 | `PAD_BIT` |", "PAD_BIT"),
        ("doc", "| max record | u32 |", "| max record | u64 |", "overlaps H_FLAGS"),
        ("doc", "| lane size | u64 |", "| lane size | u32 |", "accesses [64] bits"),
        ("doc", "| 128 | `L_TAIL` |", "| 248 | `L_TAIL` |", "L_TAIL = 248"),
        ("doc", "no lane | 3 x u64 |", "no lane | 8 x u64 |", "L_OWN_DROPS runs past"),
        ("doc", "| 44 | `H_FLAGS` |", "| 44 | `L_FLAGS` |", "L_FLAGS, which _ring.pxd"),
        ("pxd", "    L_READ = 152", "    L_READ = 160", "L_READ = 152, _ring.pxd 160"),
        ("pxd", "    H_REREAD = 216\n", "    H_REREAD = 216\n    H_SPARE = 224\n", "H_SPARE"),
        ("pxd", "0x474E5242465F4D45ULL", "0x474E5242465F4D46ULL", "MAGIC"),
    ],
)
def test_a_tampered_copy_is_caught(where: str, old: str, new: str, caught: str) -> None:
    doc, pxd, pyx = read(DOC), read(PXD), read(PYX)
    if where == "doc":
        doc = swap(doc, old, new)
    else:
        pxd = swap(pxd, old, new)
    problems = disagreements(doc, pxd, pyx)
    assert any(caught in p for p in problems), problems


def test_a_wrong_access_width_is_caught() -> None:
    pyx = swap(
        read(PYX),
        "U32(b, H_MAX_RECORD)[0] = plan.max_record",
        "U64(b, H_MAX_RECORD)[0] = plan.max_record",
    )
    problems = disagreements(read(DOC), read(PXD), pyx)
    assert any("H_MAX_RECORD is u32, _ring.pyx accesses [32, 64] bits" in p for p in problems)


def worker_offsets(text: str) -> dict[str, int]:
    return {k: int(v, 0) for k, v in re.findall(r"^([HL]_[A-Z_]+) = (\w+)$", text, re.MULTILINE)}


def copy_disagreements(copy: Mapping[str, int], pxd: Mapping[str, int]) -> list[str]:
    return [
        f"ring_workers.{k} = {v}, _ring.pxd {pxd.get(k)}"
        for k, v in copy.items()
        if pxd.get(k) != v
    ]


def test_the_ring_tests_raw_view_uses_the_same_offsets() -> None:
    copy = worker_offsets(read(WORKERS))
    assert copy, "ring_workers.py defines no offsets"
    pxd = pxd_constants(read(PXD))
    assert copy_disagreements(copy, pxd) == []
    assert copy_disagreements({**copy, "L_HEAD": 72}, pxd) == [
        "ring_workers.L_HEAD = 72, _ring.pxd 64"
    ]


@pytest.mark.native
def test_python_level_constants_are_the_modules() -> None:
    """The doc's constants that are Python values, and LAYOUT_VERSION, as built."""
    from emp_fastbuf.ring import _ring

    rows = {r.constant: r.value for r in doc_rows(read(DOC))}
    assert {name: rows[name] for name in PYTHON_LEVEL} == {
        name: getattr(_ring, name) for name in PYTHON_LEVEL
    }
    assert rows["VERSION"] == _ring.LAYOUT_VERSION


def sizing_rows(text: str) -> list[tuple[str, list[str]]]:
    """The rows of the "## Sizing rule" table: (size cell, [lanes, lane size, segment])."""
    _, sep, section = text.partition("\n## Sizing rule\n")
    assert sep, "docs/ring-layout.md has no '## Sizing rule' section"
    section = section.split("\n## ", 1)[0]
    return [
        (row[0], row[1:4])
        for row in (cells(line) for line in section.splitlines() if line.startswith("| "))
        if row[0] != "size"
    ]


def mib_or_kib(cell: str) -> int:
    m = re.match(r"(\d+) (KiB|MiB)\b", cell)
    assert m, f"not a size: {cell!r}"
    return int(m.group(1)) << (10 if m.group(2) == "KiB" else 20)


def sizing_disagreements(text: str, layout_for: Callable[[int], dict[str, int]]) -> list[str]:
    problems = []
    for size_cell, (lanes, lane_size, segment) in sizing_rows(text):
        lay = layout_for(mib_or_kib(size_cell))
        digits = len(segment.split(" ")[0].partition(".")[2])
        shown = f"{lay['segment_size'] / (1 << 20):.{digits}f} MiB"
        if (int(lanes), mib_or_kib(lane_size), segment) != (lay["lanes"], lay["lane_size"], shown):
            problems.append(f"{size_cell}: the doc says {lanes}, {lane_size}, {segment}; {lay}")
    return problems


@pytest.mark.native
def test_sizing_table_is_what_layout_for_makes() -> None:
    from emp_fastbuf.ring._ring import layout_for

    text = read(DOC)
    assert len(sizing_rows(text)) >= 5
    assert sizing_disagreements(text, layout_for) == []
    tampered = swap(
        text, "| 64 MiB | 256 | 256 KiB | 66.1 MiB |", "| 64 MiB | 256 | 256 KiB | 66.2 MiB |"
    )
    assert [p.split(":")[0] for p in sizing_disagreements(tampered, layout_for)] == ["64 MiB"]
