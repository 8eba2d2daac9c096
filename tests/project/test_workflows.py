"""The GitHub workflows are valid and do what the project relies on them for.

Schema validation uses the linter ``make lint`` uses (check-jsonschema with its vendored
GitHub workflow schema), so it runs offline. A deliberately broken workflow must be rejected,
which shows the check can fail.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from support import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
EXPECTED = ("ci.yml", "wheels.yml", "bench.yml")
CHECKER = Path(sys.executable).parent / "check-jsonschema"

# Wheel tests run the suite from an unpacked project that may lack .github; a git checkout
# always has it, so there a missing workflow folder fails instead of skipping.
pytestmark = pytest.mark.skipif(
    not WORKFLOWS.is_dir() and not (ROOT / ".git").exists(),
    reason="not a source checkout: no .github/workflows",
)


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    if not CHECKER.exists():
        pytest.skip("check-jsonschema is not installed (it comes with the 'lint' extra)")
    return subprocess.run(
        [str(CHECKER), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _load(name: str) -> dict[str, Any]:
    yaml = pytest.importorskip("ruamel.yaml")
    # The safe loader reads YAML 1.2, where the key `on` stays the string "on".
    data = yaml.YAML(typ="safe").load((WORKFLOWS / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{name} is not a mapping"
    return data


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _runs(workflow: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in _steps(workflow))


def _uses(workflow: dict[str, Any]) -> list[str]:
    return [str(step["uses"]) for step in _steps(workflow) if "uses" in step]


def test_expected_workflows_exist() -> None:
    present = {p.name for p in WORKFLOWS.glob("*.yml")}
    assert set(EXPECTED) <= present


@pytest.mark.parametrize("name", EXPECTED)
def test_workflow_passes_schema(name: str) -> None:
    proc = _check(WORKFLOWS / name)
    assert proc.returncode == 0, proc.stdout + proc.stderr


VALID = """\
name: ok
on: push
permissions:
  contents: read
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: "true"
"""

BROKEN = {
    "job without runs-on": VALID.replace("    runs-on: ubuntu-latest\n", ""),
    "unknown permission level": VALID.replace("contents: read", "contents: readwrite"),
    "step with both run and uses": VALID.replace(
        '      - run: "true"\n', '      - run: "true"\n        uses: actions/checkout@v4\n'
    ),
    "not YAML at all": "jobs: [unclosed\n",
}


def test_minimal_workflow_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.yml"
    path.write_text(VALID, encoding="utf-8")
    proc = _check(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("breakage", sorted(BROKEN))
def test_broken_workflow_is_rejected(tmp_path: Path, breakage: str) -> None:
    text = BROKEN[breakage]
    assert text != VALID
    path = tmp_path / "broken.yml"
    path.write_text(text, encoding="utf-8")
    proc = _check(path)
    assert proc.returncode != 0, f"{breakage!r} was accepted:\n{proc.stdout}"


@pytest.mark.parametrize("name", EXPECTED)
def test_least_privilege_and_pinned_actions(name: str) -> None:
    workflow = _load(name)
    assert workflow.get("permissions") == {"contents": "read"}
    for job_name, job in workflow["jobs"].items():
        perms = job.get("permissions", {})
        assert perms != "write-all", f"{name}:{job_name} asks for write-all"
        assert not any(v == "write" for v in dict(perms).values()), f"{name}:{job_name}"
    for uses in _uses(workflow):
        # Major version (or major.minor where the action publishes no major tag); never a branch.
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@v\d+(\.\d+)?", uses), f"{name}: unpinned {uses}"


def test_ci_matrix_and_jobs() -> None:
    ci = _load("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    matrices = [j["strategy"]["matrix"] for j in ci["jobs"].values() if "strategy" in j]
    assert any(
        set(m.get("os", [])) == {"ubuntu-latest", "macos-latest"}
        and m.get("python") == ["3.11", "3.12", "3.13", "3.14"]
        for m in matrices
    ), matrices
    runs = _runs(ci)
    assert "make test" in runs
    assert "make lint" in runs
    sanitize = [
        j
        for j in ci["jobs"].values()
        if any(s.get("env", {}).get("EMP_FASTBUF_SANITIZE") == "1" for s in j.get("steps", []))
    ]
    assert sanitize, "no job builds with EMP_FASTBUF_SANITIZE=1"
    sanitize_runs = "\n".join(str(s.get("run", "")) for s in sanitize[0]["steps"])
    assert "libasan" in sanitize_runs
    # The native tests by their marker, wherever they live, not by file name.
    assert '-m "native and not stress"' in sanitize_runs


def test_wheels_use_cibuildwheel_and_build_sdist() -> None:
    wheels = _load("wheels.yml")
    uses = _uses(wheels)
    assert any(u.startswith("pypa/cibuildwheel@") for u in uses)
    assert any(u.startswith("docker/setup-qemu-action@") for u in uses)
    assert sum(u.startswith("actions/upload-artifact@v4") for u in uses) >= 2
    assert "python -m build --sdist" in _runs(wheels)
    oses = {
        inc["os"]
        for job in wheels["jobs"].values()
        for inc in job.get("strategy", {}).get("matrix", {}).get("include", [])
    }
    assert "ubuntu-latest" in oses
    assert any(o.startswith("macos") and "intel" in o for o in oses), oses
    assert "macos-14" in oses


def test_bench_runs_uploads_and_compares() -> None:
    bench = _load("bench.yml")
    assert "pull_request" in bench["on"]
    assert bench["on"]["push"]["branches"] == ["main"]
    assert "make bench" in _runs(bench)
    uploads = [s for s in _steps(bench) if str(s.get("uses", "")).startswith("actions/upload-")]
    assert uploads and "bench/results/latest.json" in uploads[0]["with"]["path"]
    assert "--compare" in _runs(bench)


def test_cibuildwheel_config_covers_supported_pythons() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    cibw = config["tool"]["cibuildwheel"]
    selectors = cibw["build"].split() if isinstance(cibw["build"], str) else list(cibw["build"])
    for minor in range(11, 15):
        ident = f"cp3{minor}-manylinux_x86_64"
        assert any(fnmatch.fnmatch(ident, sel) for sel in selectors), ident
    assert not any(fnmatch.fnmatch("cp310-manylinux_x86_64", sel) for sel in selectors)
    assert "pytest" in cibw["test-command"]
