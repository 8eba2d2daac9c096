"""docs/record-format.md cannot drift from the code:

- its hex dumps ("## Examples") are exactly what the reference encoder writes for the
  record shown above each of them;
- its tables of numbers ("## Numbers", the tags) name the same values as the Python
  constants in ``emp_fastbuf.records`` and the constants both native modules cimport from
  ``records/_format.pxd`` (read as text: no build needed), and no module defines its own
  copy;
- its table of the encoder's default limits is what the native encoder starts with.

Each check is also run on a tampered copy, to show that it can fail.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from emp_fastbuf import records
from emp_fastbuf.records import COUNTER, HISTOGRAM, METRIC, Record, Resource, reference
from support import ROOT
from support.docs import cells, enum_members, swap

DOC = ROOT / "docs" / "record-format.md"
PXD = Path(records.__file__).with_name("_format.pxd")
ROW = re.compile(r"^\| (\d+) \| `([0-9a-f]{2}(?: [0-9a-f]{2})*)` \| (.+) \|$")
TOTAL = re.compile(r"^(\d+) bytes in all\.$", re.MULTILINE)
CODE = re.compile(r"```python\n(.*?)\n```", re.DOTALL)


@dataclass
class Example:
    title: str
    code: str
    offsets: list[int]
    chunks: list[bytes]
    total: int


def parse_examples(text: str) -> list[Example]:
    """The "### " subsections of the "## Examples" section."""
    _, sep, section = text.partition("\n## Examples\n")
    assert sep, "docs/record-format.md has no '## Examples' section"
    assert "\n## " not in section, "'## Examples' must be the last section"
    out = []
    for block in section.split("\n### ")[1:]:
        title = block.split("\n", 1)[0].strip()
        codes = CODE.findall(block)
        assert len(codes) == 1, f"{title}: expected one python block"
        offsets: list[int] = []
        chunks: list[bytes] = []
        for line in block.splitlines():
            m = ROW.match(line)
            if m:
                offsets.append(int(m.group(1)))
                chunks.append(bytes.fromhex(m.group(2)))
            elif line.startswith("| ") and not line.startswith("| offset"):
                pytest.fail(f"{title}: unparsable table row {line!r}")
        totals = TOTAL.findall(block)
        assert len(totals) == 1, f"{title}: expected one 'N bytes in all.' line"
        out.append(Example(title, codes[0], offsets, chunks, int(totals[0])))
    return out


def build(code: str) -> Record | Resource:
    names = {k: v for k, v in vars(records).items() if not k.startswith("_")}
    obj = eval(compile(code, str(DOC), "eval"), {"__builtins__": {"bytes": bytes}}, names)
    assert isinstance(obj, (Record, Resource))
    return obj


EXAMPLES = parse_examples(DOC.read_text(encoding="utf-8"))


def test_examples_cover_every_kind_and_the_resource() -> None:
    objs = [build(ex.code) for ex in EXAMPLES]
    kinds = {o.kind for o in objs if isinstance(o, Record)}
    assert kinds == {records.LOG, records.EVENT, records.SPAN, records.METRIC}
    instruments = {o.instrument for o in objs if isinstance(o, Record) and o.kind == METRIC}
    assert {COUNTER, HISTOGRAM} <= instruments
    assert any(isinstance(o, Resource) for o in objs)
    assert [ex.title for ex in EXAMPLES] == [
        "LOG",
        "EVENT",
        "SPAN",
        "METRIC counter",
        "METRIC histogram",
        "Resource blob",
    ]


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda ex: ex.title)
def test_example_hex_dump_is_the_encoding(ex: Example) -> None:
    obj = build(ex.code)
    dumped = b"".join(ex.chunks)
    # Each row's offset is where the previous row ended.
    expected_offsets = [sum(len(c) for c in ex.chunks[:i]) for i in range(len(ex.chunks))]
    assert ex.offsets == expected_offsets
    assert ex.total == len(dumped)
    if isinstance(obj, Resource):
        assert dumped == reference.encode_resource(obj)
        assert reference.decode_resource(dumped) == obj
    else:
        assert dumped == reference.encode_record(obj)
        assert reference.decode_record(dumped) == obj


def test_parser_notices_a_wrong_byte() -> None:
    """A one-byte change in a dump is caught (the check above can fail)."""
    text = DOC.read_text(encoding="utf-8")
    tampered = text.replace(
        "| 12 | `09` | severity_number 9 |", "| 12 | `0d` | severity_number 9 |"
    )
    assert tampered != text
    ex = next(e for e in parse_examples(tampered) if e.title == "LOG")
    obj = build(ex.code)
    assert isinstance(obj, Record)
    assert b"".join(ex.chunks) != reference.encode_record(obj)


# ---- the numbers: records, _format.pxd and the doc agree ----------------------------------


def same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


# Every constant of the format: its name in emp_fastbuf.records -> its name in _format.pxd.
KINDS = {n: f"K_{n}" for n in ("LOG", "EVENT", "SPAN", "METRIC", "RESOURCE")}
FLAGS = {
    "FLAG_HAS_TRACE": "F_HAS_TRACE",
    "FLAG_HAS_LIMITS": "F_HAS_LIMITS",
    "FLAG_HAS_TRACE_FLAGS": "F_HAS_TRACE_FLAGS",
    "KNOWN_FLAGS": "F_KNOWN",
}
TAGS = same("T_NONE", "T_STR", "T_INT", "T_DOUBLE", "T_BOOL", "T_BYTES", "T_ARRAY")
INSTRUMENTS = {n: f"I_{n}" for n in ("COUNTER", "UPDOWNCOUNTER", "GAUGE", "HISTOGRAM")}
SEVERITIES = same(*(f"SEVERITY_{n}" for n in ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")))
STATUSES = same("STATUS_UNSET", "STATUS_OK", "STATUS_ERROR")
SPAN_KIND_NAMES = ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
SPAN_KINDS = same(*(f"SPAN_KIND_{n}" for n in SPAN_KIND_NAMES))
BOUNDS = same(
    "FORMAT_VERSION", "MAX_SEVERITY", "MAX_STATUS_CODE", "MAX_SPAN_KIND", "MAX_HISTOGRAM_VALUES"
)
PXD_NAME = {
    **KINDS,
    **FLAGS,
    **TAGS,
    **INSTRUMENTS,
    **SEVERITIES,
    **STATUSES,
    **SPAN_KINDS,
    **BOUNDS,
}

# The doc's third column, where it is a name: the table that name comes from.
NAMES: dict[tuple[str, str], Mapping[int, str]] = {
    **{("name", k): records.KIND_NAMES for k in KINDS},
    **{("name", i): records.INSTRUMENT_NAMES for i in INSTRUMENTS},
    **{("text", s): records.SEVERITY_TEXT for s in SEVERITIES},
}

# Modules that use the format's numbers and must take them from records or _format.pxd.
USERS = [
    ROOT / "src" / "emp_fastbuf" / "records" / "reference.py",
    ROOT / "src" / "emp_fastbuf" / "producer" / "_codec.pyx",
    *sorted(
        p
        for p in (ROOT / "src" / "emp_fastbuf" / "agent" / "transcode").iterdir()
        if p.suffix in (".pyx", ".pxi")
    ),
]


def pxd_constants(text: str) -> dict[str, int]:
    """The members of the ``cdef enum:`` blocks of _format.pxd."""
    return enum_members(text, "_format.pxd")


@dataclass
class Row:
    value: int
    constant: str
    column: str  # the header of the third column
    cell: str  # the third column


def doc_number_rows(text: str) -> list[Row]:
    """The rows of every table whose second column is ``constant``."""
    rows: list[Row] = []
    header: list[str] | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
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
        assert m, f"record-format.md line {i + 1}: constant not in backticks: {line!r}"
        value = int(row[0].replace(",", ""), 0)
        rows.append(Row(value, m.group(1), header[2], row[2]))
    return rows


def python_constants() -> dict[str, int]:
    return {name: getattr(records, name) for name in PXD_NAME if hasattr(records, name)}


def disagreements(pxd_text: str, doc_text: str, py: Mapping[str, int]) -> list[str]:
    """Every way in which _format.pxd, the records constants ``py`` and the doc differ."""
    problems = []
    pxd = pxd_constants(pxd_text)
    for name, pxd_name in PXD_NAME.items():
        if name not in py:
            problems.append(f"emp_fastbuf.records has no {name}")
        elif pxd_name not in pxd:
            problems.append(f"_format.pxd has no {pxd_name} (records.{name} = {py[name]})")
        elif pxd[pxd_name] != py[name]:
            problems.append(
                f"_format.pxd {pxd_name} = {pxd[pxd_name]}, records.{name} = {py[name]}"
            )
    for extra in sorted(set(pxd) - set(PXD_NAME.values())):
        problems.append(f"_format.pxd {extra} is in no table here (add it to records and the doc)")
    seen: set[str] = set()
    for row in doc_number_rows(doc_text):
        if row.constant in seen:
            problems.append(f"the doc lists {row.constant} twice")
        seen.add(row.constant)
        if row.constant not in PXD_NAME:
            problems.append(f"the doc lists {row.constant}, which is no format constant")
        elif py.get(row.constant) != row.value:
            problems.append(
                f"the doc says {row.constant} = {row.value}, records: {py.get(row.constant)}"
            )
        names = NAMES.get((row.column, row.constant))
        if names is not None:
            if row.value in names:
                named_right = row.cell == f"`{names[row.value]}`"
            else:
                named_right = not row.cell.startswith("`")  # RESOURCE: described in words
            if not named_right:
                problems.append(
                    f"the doc names {row.constant} {row.cell}, records: {names.get(row.value)!r}"
                )
    for name in PXD_NAME:
        if name not in seen:
            problems.append(f"the doc has no row for {name}")
    return problems


def test_pxd_records_and_doc_agree() -> None:
    assert disagreements(PXD.read_text(), DOC.read_text(encoding="utf-8"), python_constants()) == []


def test_the_tables_are_whole() -> None:
    """The name tables cover exactly their constants; the known flags are all the flags."""
    assert set(records.KIND_NAMES) == {getattr(records, k) for k in KINDS} - {records.RESOURCE}
    assert set(records.INSTRUMENT_NAMES) == {getattr(records, i) for i in INSTRUMENTS}
    assert set(records.SEVERITY_TEXT) == {getattr(records, s) for s in SEVERITIES}
    assert records.KNOWN_FLAGS == (
        records.FLAG_HAS_TRACE | records.FLAG_HAS_LIMITS | records.FLAG_HAS_TRACE_FLAGS
    )


@pytest.mark.parametrize(
    ("where", "old", "new", "caught"),
    [
        ("pxd", "    K_SPAN = 3\n", "    K_SPAN = 6\n", "K_SPAN = 6"),
        ("pxd", "    T_BYTES = 5\n", "", "no T_BYTES"),
        ("pxd", "    I_GAUGE = 3\n", "    I_GAUGE = 3\n    I_SUMMARY = 5\n", "I_SUMMARY"),
        ("doc", "| 3 | `SPAN` |", "| 6 | `SPAN` |", "SPAN = 6"),
        (
            "doc",
            "| 1,048,576 | `MAX_HISTOGRAM_VALUES` |",
            "| 1,048,575 | `MAX_HISTOGRAM_VALUES` |",
            "1048575",
        ),
        ("doc", "| 3 | `GAUGE` | `gauge` |\n", "", "no row for GAUGE"),
        (
            "doc",
            "| 9 | `SEVERITY_INFO` | `INFO` |",
            "| 9 | `SEVERITY_INFO` | `INFORMATION` |",
            "INFORMATION",
        ),
        ("doc", "| 4 | `T_BOOL` |", "| 4 | `T_BOOLEAN` |", "T_BOOLEAN"),
        ("py", "MAX_SPAN_KIND", "6", "MAX_SPAN_KIND = 5, records.MAX_SPAN_KIND = 6"),
    ],
)
def test_a_tampered_copy_is_caught(where: str, old: str, new: str, caught: str) -> None:
    pxd, doc, py = PXD.read_text(), DOC.read_text(encoding="utf-8"), python_constants()
    if where == "pxd":
        pxd = swap(pxd, old, new)
    elif where == "doc":
        doc = swap(doc, old, new)
    else:
        py[old] = int(new)
    problems = disagreements(pxd, doc, py)
    assert any(caught in p for p in problems), problems


def own_copies(path: Path, text: str) -> list[str]:
    """Lines of ``text`` that define one of the format's constants (by either name)."""
    names = "|".join(sorted(set(PXD_NAME) | set(PXD_NAME.values())))
    pattern = re.compile(rf"^\s*(?:cdef\s+\w+\s+)?({names})\s*=", re.MULTILINE)
    return [f"{path.name}: {m.group(0).strip()}" for m in pattern.finditer(text)]


@pytest.mark.parametrize("path", USERS, ids=lambda p: p.name)
def test_no_module_keeps_its_own_copy(path: Path) -> None:
    assert own_copies(path, path.read_text()) == []


def test_an_own_copy_is_caught() -> None:
    text = (ROOT / "src" / "emp_fastbuf" / "producer" / "_codec.pyx").read_text()
    tampered = text + "\ncdef enum:\n    K_LOG = 1\n"
    assert own_copies(Path("_codec.pyx"), tampered) == ["_codec.pyx: K_LOG ="]


# ---- the encoder's default limits -----------------------------------------------------

# "## Limits" rows whose default is a setting of the native encoder (``_codec.get_limits``).
LIMIT_ROWS = {
    "attributes per record (context + own)": "max_attributes",
    "attributes per SPAN record": "span_max_attributes",
    "attributes per LOG or EVENT record": "log_max_attributes",
    "key length": "max_key_length",
    "string / bytes value length": "max_value_length",
    "string / bytes value length in a SPAN record": "span_max_value_length",
    "string / bytes value length in a LOG or EVENT record": "log_max_value_length",
    "array length": "max_array_length",
    "log body": "max_body_length",
}


def limit_disagreements(doc_text: str, limits: Mapping[str, int]) -> list[str]:
    _, sep, section = doc_text.partition("\n## Limits")
    assert sep, "docs/record-format.md has no '## Limits' section"
    section = section.split("\n## ", 1)[0]
    found = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| limit"):
            label, default = cells(line)[:2]
            if label in LIMIT_ROWS:
                m = re.match(r"[\d,]+", default)
                assert m, f"no number in {default!r}"
                found[LIMIT_ROWS[label]] = int(m.group(0).replace(",", ""))
    problems = [f"the doc has no row for {k}" for k in LIMIT_ROWS.values() if k not in found]
    problems += [
        f"the doc says {k} defaults to {v}, the encoder to {limits.get(k)}"
        for k, v in found.items()
        if limits.get(k) != v
    ]
    return problems


def encoder_defaults() -> dict[str, int]:
    # A fresh interpreter: tests in this one may have configured other limits.
    code = "from emp_fastbuf.producer import _codec; print(repr(_codec.get_limits()))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    limits = eval(out.stdout)
    assert isinstance(limits, dict)
    return limits


@pytest.mark.native
def test_limits_table_is_the_encoders_defaults() -> None:
    limits = encoder_defaults()
    assert set(limits) == set(LIMIT_ROWS.values())
    assert limit_disagreements(DOC.read_text(encoding="utf-8"), limits) == []
    tampered = swap(
        DOC.read_text(encoding="utf-8"), "| array length | 128 ", "| array length | 256 "
    )
    assert limit_disagreements(tampered, limits) == [
        "the doc says max_array_length defaults to 256, the encoder to 128"
    ]
