"""The package metadata follows the ecosystem's habits: a build floor that can read it,
the Python versions CI tests, links to the project, and the Makefile installing what each
command needs."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from support import ROOT


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor(requirement: str) -> tuple[int, ...]:
    m = re.fullmatch(r"setuptools>=([\d.]+)", requirement.replace(" ", ""))
    assert m, f"setuptools needs a plain floor: {requirement!r}"
    return tuple(int(p) for p in m.group(1).split("."))


def test_the_setuptools_floor_reads_an_spdx_license() -> None:
    meta = _pyproject()
    # A string `license` is an SPDX expression (PEP 639): setuptools reads it from 77.0.
    assert isinstance(meta["project"]["license"], str)
    (setuptools,) = [r for r in meta["build-system"]["requires"] if r.startswith("setuptools")]
    assert _floor(setuptools) >= (77, 0)
    # The Makefile installs the same floor for its builds without isolation.
    makefile = (ROOT / "Makefile").read_text()
    assert f'"{setuptools}"' in makefile


def test_classifiers_name_the_python_versions_ci_tests() -> None:
    yaml = pytest.importorskip("ruamel.yaml")
    ci = yaml.YAML(typ="safe").load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    matrix = {
        str(v)
        for job in ci["jobs"].values()
        for v in job.get("strategy", {}).get("matrix", {}).get("python", [])
    }
    meta = _pyproject()
    prefix = "Programming Language :: Python :: 3."
    listed = {
        c.removeprefix("Programming Language :: Python :: ")
        for c in meta["project"]["classifiers"]
        if c.startswith(prefix)
    }
    assert listed == matrix
    floor = min(matrix, key=lambda v: tuple(map(int, v.split("."))))
    assert meta["project"]["requires-python"] == f">={floor}"


def test_project_urls() -> None:
    urls = _pyproject()["project"]["urls"]
    assert {"Homepage", "Repository", "Issues", "Documentation"} <= set(urls)
    assert all(u.startswith("https://") for u in urls.values())


def test_make_demo_installs_no_extra_and_make_test_the_test_ones() -> None:
    makefile = (ROOT / "Makefile").read_text()
    rules = dict(re.findall(r"^([\w$().-]+):(.*)$", makefile, re.M))
    # demo -> build -> the base install, which names no extra.
    assert rules["demo"].split() == ["build"]
    assert rules["build"].split() == ["$(BASE_STAMP)"]
    base = makefile.split("$(BASE_STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "-e ." in base and "[" not in base.replace("$(BUILD_REQUIRES)", "")
    assert "$(STAMP)" in rules["test"].split()
    extras = re.search(r"^EXTRAS \?= (\S+)$", makefile, re.M)
    assert extras and "test" in extras.group(1).split(",")


def _dist_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _imported_modules() -> set[str]:
    """Every absolute import of a module outside the package and the standard library, in
    the package's Python sources (``.pyi`` stubs excluded: they are not run)."""
    found: set[str] = set()
    for path in (ROOT / "src" / "emp_fastbuf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.partition(".")[0]
                if top != "emp_fastbuf" and top not in sys.stdlib_module_names:
                    found.add(name)
    return found


def _with_requirements(names: set[str]) -> set[str]:
    """``names`` and, transitively, what their installed distributions require (markers
    aside: an extra's feature may use what the extra's library brings)."""
    out: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_dist_name(r) for r in requires if "extra ==" not in r]
    return out


def _owner(module: str, owners: dict[str, str]) -> str | None:
    """The distribution that installed ``module``: its file's, or for a namespace package
    (``google.rpc``), that of a file inside it."""
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        return None
    if spec is None:
        return None
    if spec.origin is not None:
        files = [Path(spec.origin)]
    else:
        files = [
            f for loc in spec.submodule_search_locations or () for f in Path(loc).rglob("*.py")
        ]
    for file in files:
        parts = file.parts
        for i in range(len(parts)):
            owner = owners.get(str(Path(*parts[i:])))
            if owner is not None:
                return owner
    return None


def test_every_library_the_code_imports_is_a_declared_dependency() -> None:
    """A module the package imports comes from a distribution that ``dependencies`` names,
    or from an optional extra (those are imported only where their feature is used,
    tests/project/test_extras.py). Otherwise ``make demo``, which installs no extra, breaks
    on a fresh machine (as it did when the receiver imported ``google.rpc``)."""
    project = _pyproject()["project"]
    base = {_dist_name(r) for r in project["dependencies"]}
    extras = _with_requirements(
        {
            _dist_name(r)
            for name, reqs in project["optional-dependencies"].items()
            if name not in ("test", "bench", "lint")
            for r in reqs
        }
    )
    owners: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        for file in dist.files or ():
            if file.suffix == ".py":
                owners[str(file)] = _dist_name(dist.metadata["Name"])
    undeclared = {}
    for module in sorted(_imported_modules()):
        owner = _owner(module, owners)
        if owner is None or owner not in base | extras:
            undeclared[module] = owner or "not installed here"
    assert undeclared == {}, f"imported but not declared in pyproject.toml: {undeclared}"
