"""The hex dumps in docs/record-format.md ("## Examples") are exactly what the reference
encoder writes for the record shown above each of them, so the doc cannot drift."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from emp_fastbuf import records
from emp_fastbuf.records import COUNTER, HISTOGRAM, METRIC, Record, Resource, reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "record-format.md"
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
