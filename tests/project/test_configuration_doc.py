"""docs/configuration.md, "## Every variable": one row for every environment variable the
package reads, each naming a test that exists. The variables the code reads are the
string literals that are a whole variable name (``"OTEL_..."``, ``"DASH0_..."``,
``"EMP_..."``) anywhere under src/emp_fastbuf: the code spells every name out, per-signal
ones included (``agent.config``'s ``OTLPVariable`` table), so a new variable is found
without a list to keep in step here. Adding a variable takes one row in the doc."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from support import ROOT
from support.docs import cells, swap

PKG = ROOT / "src" / "emp_fastbuf"
DOC = ROOT / "docs" / "configuration.md"
NAME = re.compile(r"(?:OTEL|DASH0|EMP)_[A-Z0-9_]*[A-Z0-9]")
QUOTED = re.compile(r"""["']((?:OTEL|DASH0|EMP)_[A-Z0-9_]*[A-Z0-9])["']""")
TEST_REF = re.compile(r"^`(tests/[\w/]+\.py)::(test_\w+)`$")


def variables_in_code(pkg: Path) -> dict[str, str]:
    """Every variable name spelled as a string literal, with the first file it is in."""
    found: dict[str, str] = {}
    for path in sorted(pkg.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(pkg).as_posix()
        if path.suffix == ".py":
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            names = [
                node.value
                for node in ast.walk(tree)
                if isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and NAME.fullmatch(node.value)
            ]
        elif path.suffix in (".pyx", ".pxi"):
            names = QUOTED.findall(path.read_text(encoding="utf-8"))
        else:
            continue
        for name in names:
            found.setdefault(name, rel)
    return found


def table_rows(doc: str) -> list[list[str]]:
    _, sep, rest = doc.partition("\n## Every variable\n")
    assert sep, "docs/configuration.md has no '## Every variable' section"
    section = rest.split("\n## ", 1)[0]
    return [cells(line) for line in section.splitlines() if line.startswith("| `")]


def problems(doc: str, pkg: Path, root: Path) -> list[str]:
    """What is wrong between the doc's table and the code (empty when they agree)."""
    out: list[str] = []
    table: dict[str, list[str]] = {}
    for row in table_rows(doc):
        name = row[0].strip("`")
        if len(row) != 4 or not all(row):
            out.append(f"{name}: a row has four cells (variable, what, default, test): {row}")
            continue
        if name in table:
            out.append(f"{name}: two rows")
        table[name] = row
        ref = TEST_REF.match(row[3])
        if ref is None:
            out.append(f"{name}: the test cell is not `tests/...py::test_name`: {row[3]}")
            continue
        test_file = root / ref.group(1)
        if not test_file.is_file() or not re.search(
            rf"^def {ref.group(2)}\(", test_file.read_text(encoding="utf-8"), re.M
        ):
            out.append(f"{name}: {ref.group(1)}::{ref.group(2)} does not exist")
    code = variables_in_code(pkg)
    for name in sorted(set(code) - set(table)):
        out.append(f"{name} (read in {code[name]}) has no row in '## Every variable'")
    for name in sorted(set(table) - set(code)):
        out.append(f"{name} has a row in '## Every variable' but the code never reads it")
    return out


def test_every_variable_the_code_reads_has_a_row_and_no_row_is_stale() -> None:
    assert problems(DOC.read_text(encoding="utf-8"), PKG, ROOT) == []


def test_the_table_covers_the_otlp_exporter_specification() -> None:
    """Each setting of the specification, general and per signal, is in the table."""
    names = {row[0].strip("`") for row in table_rows(DOC.read_text(encoding="utf-8"))}
    for setting in (
        "ENDPOINT", "HEADERS", "COMPRESSION", "TIMEOUT", "PROTOCOL", "CERTIFICATE",
        "CLIENT_KEY", "CLIENT_CERTIFICATE", "INSECURE",
    ):  # fmt: skip
        for middle in ("", "TRACES_", "METRICS_", "LOGS_"):
            assert f"OTEL_EXPORTER_OTLP_{middle}{setting}" in names
    for signal in ("TRACES", "METRICS", "LOGS"):
        assert f"OTEL_{signal}_EXPORTER" in names
    assert "OTEL_METRIC_EXPORT_INTERVAL" in names


def test_the_check_can_fail(tmp_path: Path) -> None:
    """A variable read without a row, a row the code does not read, and a row naming a
    missing test are each caught."""
    doc = DOC.read_text(encoding="utf-8")
    fake = tmp_path / "emp_fastbuf"
    fake.mkdir()
    real = variables_in_code(PKG)
    # A package reading every documented variable, plus one more.
    (fake / "all.py").write_text("NAMES = " + repr(sorted(real)) + "\nNEW = 'EMP_FASTBUF_NEW'\n")
    (fake / "c.pyx").write_text('x = os.environ.get("EMP_FASTBUF_FROM_CYTHON")\n')
    found = problems(doc, fake, ROOT)
    assert any(p.startswith("EMP_FASTBUF_NEW (read in all.py)") for p in found), found
    assert any(p.startswith("EMP_FASTBUF_FROM_CYTHON (read in c.pyx)") for p in found), found
    assert len(found) == 2, found
    row = next(line for line in doc.splitlines() if line.startswith("| `EMP_WORKER_ID`"))
    without = swap(doc, row + "\n", "")
    assert problems(without, PKG, ROOT) == [
        "EMP_WORKER_ID (read in producer/api.py) has no row in '## Every variable'"
    ]
    stale = swap(doc, row, row.replace("EMP_WORKER_ID", "EMP_WORKER_NAME"))
    assert set(problems(stale, PKG, ROOT)) == {
        "EMP_WORKER_ID (read in producer/api.py) has no row in '## Every variable'",
        "EMP_WORKER_NAME has a row in '## Every variable' but the code never reads it",
    }
    missing_test = swap(doc, row, row.replace("test_worker_id_from", "test_no_such"))
    assert problems(missing_test, PKG, ROOT) == [
        "EMP_WORKER_ID: tests/producer/test_api.py::test_no_such_the_environment does not exist"
    ]
