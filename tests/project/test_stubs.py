"""The .pyi stubs of the native modules match what the built modules really export."""

from __future__ import annotations

import subprocess
import sys

from support import ROOT


def test_stubs_match_the_native_modules() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "--allowlist",
            str(ROOT / "stubtest-allowlist.txt"),
            "emp_fastbuf.ring._ring",
            "emp_fastbuf.producer._codec",
            "emp_fastbuf.agent.transcode._transcode",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_package_is_typed() -> None:
    pkg = ROOT / "src" / "emp_fastbuf"
    assert (pkg / "py.typed").exists()
    native = sorted(pkg.rglob("_*.pyx"))  # in their stages' folders
    assert native, "no native module found"
    for pyx in native:
        assert pyx.with_suffix(".pyi").exists(), f"{pyx.name} has no stub"
