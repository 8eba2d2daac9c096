"""Every optional extra, installed and absent: with its library the feature works, and
without it the rest of emp-fastbuf works and the feature says which extra to install.

"Absent" runs in a fresh interpreter whose imports of the extra's library fail, as they
do where it is not installed; "installed" runs here, where ``make test`` installed it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib

import pytest

from support import ROOT

# extra -> the module its library provides. Extras that are not features (what the tests,
# the benchmarks and the linters need) are not listed.
FEATURE_EXTRAS = {
    "gpu": "pynvml",
    "grpc": "grpc",
    "otel": "opentelemetry",
    "structlog": "structlog",
}
TOOLING_EXTRAS = {"test", "bench", "lint"}

# Makes ``import <blocked>`` (and its submodules) fail as for a library not installed.
_BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
for _name in [m for m in sys.modules if m == BLOCKED or m.startswith(BLOCKED + ".")]:
    del sys.modules[_name]
"""


def run_without(blocked: str, code: str) -> subprocess.CompletedProcess[str]:
    source = _BLOCKER.format(blocked=blocked) + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", source], capture_output=True, text=True, timeout=60
    )


def test_the_list_names_every_extra_of_pyproject() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = set(meta["project"]["optional-dependencies"])
    assert extras - TOOLING_EXTRAS == set(FEATURE_EXTRAS), "a new extra needs its tests here"


# ---- absent -----------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "module"), [("otel", "otel"), ("structlog", "structlog")])
def test_an_integration_without_its_library_names_the_extra(extra: str, module: str) -> None:
    out = run_without(
        FEATURE_EXTRAS[extra],
        f"""
        import os
        import emp_fastbuf as fastbuf
        # The core still works: a record reaches the ring.
        name = f"emp-fastbuf-test-extras-{{os.getpid()}}"
        ring = fastbuf.Ring.create(name, 1 << 20)
        try:
            fastbuf.configure(service="extras", ring=name, agent="external")
            fastbuf.log.info("without {extra}")
            assert fastbuf.stats()["by_kind"]["log"] == 1, fastbuf.stats()
            fastbuf.shutdown()
        finally:
            ring.close()
            fastbuf.Ring.unlink(name)
        try:
            import emp_fastbuf.integrations.{module}
        except ImportError as exc:
            print("refused:", exc)
        """,
    )
    assert out.returncode == 0, out.stderr
    assert f"pip install 'emp-fastbuf[{extra}]'" in out.stdout, out.stdout


def test_machine_metrics_without_nvml_are_the_cpu_and_memory_ones() -> None:
    out = run_without(
        "pynvml",
        """
        from emp_fastbuf.agent.machine import collect_machine_metrics
        names = {r.name for r in collect_machine_metrics()}
        print(sorted(names))
        assert "system.cpu.utilization" in names and "system.memory.usage" in names, names
        assert not any(n.startswith("hw.gpu.") for n in names), names
        """,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_grpc_without_its_library_is_covered_by_the_agent_test() -> None:
    """The grpc extra absent: a real agent told to export over gRPC exits 2 naming the
    extra; that test lives with the gRPC transport."""
    source = (ROOT / "tests" / "agent" / "test_otlp_grpc.py").read_text()
    assert "def test_grpc_without_the_extra_exits_2_naming_it(" in source


# ---- installed --------------------------------------------------------------------------


def test_grpc_installed_gives_the_grpc_transport() -> None:
    pytest.importorskip("grpc", reason="the grpc extra is not installed")
    out = subprocess.run(
        [sys.executable, "-c", "import emp_fastbuf.agent.otlp.grpc as g; print(g.GrpcTransport)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "GrpcTransport" in out.stdout, out.stderr


def test_nvml_installed_gives_gpu_metrics_or_none_without_a_gpu() -> None:
    pynvml = pytest.importorskip("pynvml", reason="the gpu extra is not installed")
    from emp_fastbuf.agent.machine import collect_machine_metrics

    names = {r.name for r in collect_machine_metrics()}
    assert "system.cpu.utilization" in names
    try:
        pynvml.nvmlInit()
        gpus = pynvml.nvmlDeviceGetCount()
    except Exception:  # no driver here: the GPU metrics are off, nothing else is
        gpus = 0
    has_gpu_metrics = any(n.startswith("hw.gpu.") for n in names)
    assert has_gpu_metrics == (gpus > 0)


@pytest.mark.parametrize("module", ["otel", "structlog"])
def test_an_integration_imports_with_its_library(module: str) -> None:
    extra = module
    pytest.importorskip(FEATURE_EXTRAS[extra], reason=f"the {extra} extra is not installed")
    # Their behaviour is tested in tests/integrations/; here: the import needs nothing else.
    out = subprocess.run(
        [sys.executable, "-c", f"import emp_fastbuf.integrations.{module}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
