"""Agent start-up faults with real processes: several agents started at the same moment on
a ring that does not exist yet, and an agent start while another process has a ring of a
dead creator mapped but has not written to it yet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from support.segments import WRITTEN_LATE, mapped_by_another_process

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /dev/shm and /proc")

# Imports everything first, then waits for the start file, so that the agents reach
# `Ring.open` / `Ring.create` within a few milliseconds of each other; then it is exactly
# `python -m emp_fastbuf agent ...`.
AGENT_AT_SIGNAL = r"""
import os, runpy, sys, time
import emp_fastbuf.agent.runner, emp_fastbuf.cli
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.001)
sys.argv = ["fastbuf", *sys.argv[2:]]
runpy.run_module("emp_fastbuf", run_name="__main__", alter_sys=True)
"""


def _agent_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DASH0_"))}
    env.update(EMP_FASTBUF_HOME=str(home), EMP_FASTBUF_AGENT="external")
    return env


@pytest.mark.stress
@pytest.mark.parametrize("agents", [2, 5])
def test_agents_started_together_on_a_new_ring_one_wins_the_others_exit_0(
    tmp_path: Path, ring_name: str, agents: int
) -> None:
    go = tmp_path / "go"
    procs: list[subprocess.Popen[str]] = []
    for i in range(agents):
        home = tmp_path / f"home{i}"
        home.mkdir(mode=0o700)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", AGENT_AT_SIGNAL, str(go), "agent", "--ring", ring_name],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=_agent_env(home),
            )
        )
    try:
        time.sleep(3.0)  # every interpreter has imported the package and waits
        go.touch()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if sum(p.poll() is not None for p in procs) >= agents - 1:
                break
            time.sleep(0.05)
        time.sleep(1.0)  # a winner that was going to fail late has had time to
        running = [p for p in procs if p.poll() is None]
        assert len(running) == 1, [p.returncode for p in procs]
        ring = fastbuf.Ring.open(ring_name)
        try:
            assert ring.stats()["consumer"]["pid"] == running[0].pid
        finally:
            ring.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert "Traceback" not in out, out
        if p is running[0]:
            assert p.returncode == 0, out  # stopped by SIGTERM: a clean exit
            continue
        assert p.returncode == 0, out
        assert "another agent" in out and ring_name in out, out
        assert "wrong magic" not in out, out


def test_agent_start_leaves_a_ring_that_a_live_process_maps(tmp_path: Path, ring_name: str) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    own = f"{ring_name}-a"
    with mapped_by_another_process(ring_name, write=True):
        agent = subprocess.Popen(
            [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", own],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**_agent_env(home), "EMP_FASTBUF_RING_SIZE": str(1 << 20)},
        )
        try:
            # The status file is written after the start-up sweep.
            status = home / f"status-{own}.json"
            deadline = time.monotonic() + 60
            while not status.exists() and agent.poll() is None:
                assert time.monotonic() < deadline, "agent did not start"
                time.sleep(0.02)
        finally:
            agent.terminate()
            out = agent.communicate(timeout=60)[0]
            fastbuf.Ring.unlink(own)
        assert agent.returncode == 0, out
        assert Path(f"/dev/shm/{ring_name}").exists(), out
    # What the process wrote after the agent started is in the segment, not lost.
    ring = fastbuf.Ring.open(ring_name)
    try:
        consumer = ring.consumer()
        assert consumer.read(10) == [WRITTEN_LATE]
        consumer.ack()
        consumer.close()
    finally:
        ring.close()
