"""Real agent processes and real worker processes for the tests that run the agent end to
end (agent, faults, integrations, capacity, volume)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict

# A worker process: ``n`` numbered log records in a span and a job context, one event and
# one counter increment; prints the span's trace id.
WORKER = r"""
import os, sys, time
import emp_fastbuf as fastbuf
ring, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
fastbuf.configure(service="worker-svc", machine_id="m-1", worker_id=tag, ring=ring,
                  agent="external")
with fastbuf.context(job_id="job-" + tag):
    with fastbuf.span("job", tag=tag) as s:
        for i in range(n):
            fastbuf.log.info("step", seq=i, tag=tag)
            if pause:
                time.sleep(pause)
        fastbuf.emit("job.completed", tag=tag)
        fastbuf.metrics.counter("jobs.completed").inc(1, tag=tag)
print(s.trace_id, flush=True)
"""


def run_script(script: str, *args: str, env: Mapping[str, str | None] | None = None) -> str:
    """Run a producer ``script`` (``python -c``) with ``args`` to the end, its agent
    external; ``env`` over this process's environment (None removes a variable). Its
    stdout; a failure fails the test with its stderr."""
    full = {**os.environ, "EMP_FASTBUF_AGENT": "external"}
    for name, value in (env or {}).items():
        if value is None:
            full.pop(name, None)
        else:
            full[name] = value
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def run_worker(ring: str, n: int, tag: str, pause: float = 0.0) -> str:
    """Run ``WORKER`` on ``ring`` to the end; its trace id."""
    return run_script(WORKER, ring, str(n), tag, str(pause))


def fastbuf_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m emp_fastbuf ARGS`` on ``home``, wide enough that no line is cut."""
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EMP_FASTBUF_HOME": str(home), "COLUMNS": "250"},
        timeout=60,
    )


class AgentProc:
    """``python -m emp_fastbuf agent --ring RING ARGS`` with its own home, its output in a
    log file there."""

    def __init__(self, ring: str, home: Path, *args: str, env: dict[str, str] | None = None):
        self.log_path = home / f"agent-test-{time.monotonic_ns()}.log"
        self.status_path = home / f"status-{ring}.json"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, "EMP_FASTBUF_HOME": str(home), "EMP_FASTBUF_AGENT": "external"}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring, *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the agent has attached (its status file exists): a signal sent before
        Python installed the handlers would kill it instead of stopping it cleanly."""
        deadline = time.monotonic() + timeout
        while not self.status_path.exists() and self.proc.poll() is None:
            assert time.monotonic() < deadline, "agent did not start"
            time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if sig == signal.SIGTERM:
            self.wait_ready()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # Its log ends with every thread's stack (the agent's shutdown watchdog).
            self.proc.kill()
            self.proc.wait()
            tail = self.output()[-6000:]
            raise AssertionError(f"the agent did not stop within {timeout} s:\n{tail}") from None
        finally:
            self.log.close()

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")


def seqs(rx: OTLPReceiver, tag: str | None = None) -> Counter[int]:
    """How often each ``seq`` attribute arrived at ``rx`` (of worker ``tag``, or all)."""
    out: Counter[int] = Counter()
    for _res, rec in rx.logs():
        a = attrs_dict(rec.attributes)
        if "seq" in a and (tag is None or a.get("tag") == tag):
            out[int(a["seq"])] += 1
    return out
