"""The package metadata follows the ecosystem's habits: a build floor that can read it,
the Python versions CI tests, links to the project, and the Makefile installing what each
command needs."""

from __future__ import annotations

import re
import tomllib
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
