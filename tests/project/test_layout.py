"""The tree shows the pipeline, and the imports follow it: every module under
``src/emp_fastbuf`` belongs to one stage, and a stage imports only the stages it may know
(docs/architecture.md, "Stages and the import rule"). Cython ``cimport``s count too."""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import ROOT

SRC = ROOT / "src"
PKG = SRC / "emp_fastbuf"

# The stage of a module is its first package under emp_fastbuf; top-level modules that
# every stage shares form the "shared" stage.
SHARED = {"errors", "paths", "values", "records", "_version"}
# stage -> the stages it may import (besides itself and the shared vocabulary).
ALLOWED: dict[str, set[str]] = {
    "shared": set(),
    "ring": set(),
    "producer": {"ring"},
    "integrations": {"producer", "top"},
    "agent": {"ring", "store"},
    "store": set(),
    "cli": {"agent", "ring", "store"},
    "demo": {"top", "agent", "store"},
    "testing": set(),
    # the package's own face: the public API, `python -m emp_fastbuf`, `import emp_fastbuf.auto`
    "top": {"ring", "producer", "integrations", "cli"},
}
# What another stage may import from a stage: its public modules and names only (no
# underscore module, no underscore name), except these deliberate native contracts.
PRIVATE_OK = {
    # the encoder writes straight into the lanes: it cimports the ring's lane protocol
    ("producer/_codec.pyx", "emp_fastbuf.ring._ring"),
    # the demo's agent writes only the store; the demo estimates the bytes the exporter
    # would have sent by building those OTLP requests from the stored records
    ("demo/report.py", "emp_fastbuf.agent.otlp.reference"),
}
# Between the agent's own sub-packages, and from the CLI to the agent, only these agent
# modules are public: the status file (the CLI reads it) and what the demo reads, and the
# dead letters (fastbuf deadletter lists and replays them, fastbuf status counts them).
AGENT_PUBLIC = {"emp_fastbuf.agent.status", "emp_fastbuf.agent.deadletter"}

FROM_CIMPORT = re.compile(r"^\s*from\s+(emp_fastbuf[\w.]*)\s+cimport\b", re.M)


@dataclass(frozen=True)
class Import:
    source: str  # path relative to src/emp_fastbuf
    module: str  # the imported module, dotted
    names: tuple[str, ...]  # names taken from it (from X import a, b)
    line: int


def stage_of_module(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "emp_fastbuf":
        raise ValueError(module)
    if len(parts) == 1:
        return "top"
    head = parts[1]
    if head in SHARED:
        return "shared"
    if head in ALLOWED:
        return head
    if head in {"auto", "__main__", "__init__"}:
        return "top"
    raise AssertionError(f"{module}: no stage for {head!r}: add it to ALLOWED")


def stage_of_file(rel: str) -> str:
    parts = rel.split("/")
    if len(parts) == 1:
        name = parts[0].split(".")[0]
        return "shared" if name in SHARED else "top"
    return stage_of_module("emp_fastbuf." + parts[0])


def module_of_file(rel: str) -> str:
    dotted = rel.rsplit(".", 1)[0].replace("/", ".")
    dotted = dotted.removesuffix(".__init__")
    return "emp_fastbuf" if dotted == "__init__" else f"emp_fastbuf.{dotted}"


def imports_of(path: Path) -> list[Import]:
    rel = path.relative_to(PKG).as_posix()
    text = path.read_text(encoding="utf-8")
    out: list[Import] = []
    if path.suffix == ".py" or path.suffix == ".pyi":
        tree = ast.parse(text, filename=str(path))
        here = module_of_file(rel)
        package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("emp_fastbuf"):
                        out.append(Import(rel, alias.name, (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    module = f"{base}.{node.module}" if node.module else base
                else:
                    module = node.module or ""
                if module == "emp_fastbuf":
                    # `from emp_fastbuf import paths` imports a module, not the top stage
                    for alias in node.names:
                        sub = PKG / alias.name
                        if sub.is_dir() or sub.with_suffix(".py").exists():
                            out.append(Import(rel, f"emp_fastbuf.{alias.name}", (), node.lineno))
                        else:
                            out.append(Import(rel, module, (alias.name,), node.lineno))
                elif module.startswith("emp_fastbuf"):
                    names = tuple(a.name for a in node.names)
                    out.append(Import(rel, module, names, node.lineno))
    else:  # .pyx / .pxd: Python imports and cimports, by line
        for m in re.finditer(
            r"^\s*(?:from\s+(emp_fastbuf[\w.]*)\s+c?import\b|c?import\s+(emp_fastbuf[\w.]*))",
            text,
            re.M,
        ):
            line = text.count("\n", 0, m.start()) + 1
            out.append(Import(rel, m.group(1) or m.group(2), (), line))
    return out


def all_sources() -> list[Path]:
    return sorted(
        p
        for p in PKG.rglob("*")
        if p.suffix in {".py", ".pyi", ".pyx", ".pxd"} and "__pycache__" not in p.parts
    )


def violations() -> list[str]:
    bad: list[str] = []
    for path in all_sources():
        rel = path.relative_to(PKG).as_posix()
        mine = stage_of_file(rel)
        for imp in imports_of(path):
            theirs = stage_of_module(imp.module)
            where = f"{rel}:{imp.line}: {imp.module}"
            if theirs == mine or theirs == "shared":
                continue
            if theirs not in ALLOWED[mine]:
                bad.append(f"{where}: the {mine} stage may not import the {theirs} stage")
                continue
            private = [p for p in imp.module.split(".")[1:] if p.startswith("_")]
            if private and (rel, imp.module) not in PRIVATE_OK:
                bad.append(f"{where}: a private module of the {theirs} stage")
            taken = [n for n in imp.names if n.startswith("_")]
            if taken:
                bad.append(f"{where}: private names {taken} of the {theirs} stage")
            if (
                theirs == "agent"
                and imp.module not in AGENT_PUBLIC
                and mine != "top"
                and (rel, imp.module) not in PRIVATE_OK
            ):
                bad.append(f"{where}: the agent's internals (only {sorted(AGENT_PUBLIC)})")
    return bad


def test_every_module_has_a_stage() -> None:
    for path in all_sources():
        stage_of_file(path.relative_to(PKG).as_posix())  # raises for an unknown folder


def test_imports_follow_the_pipeline() -> None:
    assert violations() == []


def test_the_rule_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A producer module that imports the agent, an integration that takes a private name
    from the producer, and a store module that imports the ring are all caught."""
    fake = tmp_path / "emp_fastbuf"
    for rel, text in {
        "producer/x.py": "from emp_fastbuf.agent import runner\n",
        "integrations/y.py": "from emp_fastbuf.producer.api import _state\n",
        "store/z.py": "import emp_fastbuf.ring.shm\n",
        "records/w.py": "from emp_fastbuf.producer import api\n",
        "agent/v.pyx": "from emp_fastbuf.producer._codec cimport x\n",
    }.items():
        (fake / rel).parent.mkdir(parents=True, exist_ok=True)
        (fake / rel).write_text(text)
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    found = violations()
    assert len(found) == 5, found
    assert any("producer stage may not import the agent" in v for v in found)
    assert any("private names ['_state']" in v for v in found)
    assert any("store stage may not import the ring" in v for v in found)
    assert any("shared stage may not import the producer" in v for v in found)
    assert any("agent stage may not import the producer" in v for v in found)


def test_architecture_doc_lists_every_module() -> None:
    """docs/architecture.md shows the tree with one line per module, and lists no module
    that does not exist."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    _, sep, rest = doc.partition("\n## The tree\n")
    assert sep, "docs/architecture.md has no '## The tree' section"
    src_tree = rest.split("\n## ", 1)[0].split("\ntests/", 1)[0]
    listed = set(re.findall(r"([\w.]+\.(?:py|pyx|pxd|pxi|pyi|h))\b", src_tree))
    on_disk = {
        path.relative_to(PKG).as_posix(): path
        for path in PKG.rglob("*")
        if path.suffix in {".py", ".pyx", ".pxd", ".pxi", ".pyi", ".h"}
        and "__pycache__" not in path.parts
    }
    missing = [
        rel
        for rel, path in sorted(on_disk.items())
        if path.name not in listed
        and path.suffix != ".pyi"  # stubs sit next to their module
        and not (path.name == "__init__.py" and path.stat().st_size < 600)  # a docstring
    ]
    assert missing == [], f"not in docs/architecture.md '## The tree': {missing}"
    names = {path.name for path in on_disk.values()}
    assert sorted(listed - names) == [], "listed in the tree but not in src/emp_fastbuf"
