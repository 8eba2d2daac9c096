"""``fastbuf jobs`` and ``fastbuf why`` end to end: real worker processes run ok and failed
jobs (an uncaught exception in the main thread inside nested spans, one in a thread, a
logged error, a span exited by an exception the code then handled) into a real agent that
writes the real store, and ``python -m emp_fastbuf`` reads it back as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.store import Store, StoreError
from support.agent import AgentProc

WORKER = r"""
import sys, threading
import emp_fastbuf as fastbuf
ring, mode, worker = sys.argv[1], sys.argv[2], sys.argv[3]
fastbuf.configure(service="gen-svc", machine_id="m-1", worker_id=worker, ring=ring,
                  agent="external")

def load_weights(path):
    raise RuntimeError(f"CUDA out of memory: tried to allocate 2.00 GiB for {path}")  # the raise

def ok_job(job_id):
    with fastbuf.context(job_id=job_id):
        with fastbuf.span("job"):
            with fastbuf.span("step"):
                fastbuf.log.info("step done")
            fastbuf.log.warning("slow disk")  # a warning is no failure

def logged_error_job(job_id):
    with fastbuf.context(job_id=job_id):
        with fastbuf.span("job"):
            fastbuf.log.info("uploading")
            fastbuf.log.error("upload failed: 503 from storage")

def handled_job(job_id):
    with fastbuf.context(job_id=job_id):
        try:
            with fastbuf.span("job"):
                with fastbuf.span("fetch"):
                    raise TimeoutError("fetch timed out")
        except TimeoutError:
            fastbuf.log.info("will retry later")

def crashing_job(job_id):
    with fastbuf.context(job_id=job_id):
        with fastbuf.span("job"):
            with fastbuf.span("generate"):
                for i in range(25):
                    fastbuf.log.info("denoise step", step=i)
                with fastbuf.span("load_model"):
                    load_weights("unet.bin")

if mode == "batch":
    for i in range(3):
        ok_job(f"ok-{i}")
    logged_error_job("logged-1")
    handled_job("handled-1")
    t = threading.Thread(target=crashing_job, args=("thread-1",), name="gen-thread")
    t.start()
    t.join()
else:
    ok_job("ok-3")
    crashing_job("crash-1")  # the process dies of it
"""
RAISE_LINE = next(i for i, line in enumerate(WORKER.splitlines(), 1) if "# the raise" in line)
OK = {"ok-0", "ok-1", "ok-2", "ok-3"}
FAILED = {"logged-1", "handled-1", "thread-1", "crash-1"}
MESSAGE = "CUDA out of memory: tried to allocate 2.00 GiB for unet.bin"


@dataclass(frozen=True)
class Run:
    home: Path
    ring: str
    script: Path


def _delivered(store: Store) -> bool:
    found = {j.job_id: j for j in store.jobs()}
    if set(found) != OK | FAILED or {j for j, s in found.items() if s.failed} != FAILED:
        return False
    # The crash record arrives with (or after) the spans it left.
    crash = store.job_failure("crash-1")
    thread = store.job_failure("thread-1")
    return all(
        r is not None and r.exception is not None and len(r.span_path) == 3 for r in (crash, thread)
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run: an agent (local store, reporting its machine as m-1, the workers' machine
    id), then the two workers, until every job is in the store; the agent stopped."""
    base = tmp_path_factory.mktemp("jobs-e2e")
    home = base / "home"
    home.mkdir(mode=0o700)
    script = base / "gen_worker.py"
    script.write_text(WORKER)
    ring = f"emp-fastbuf-jobs-{os.getpid()}"
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith(("OTEL_", "DASH0_")):
                mp.delenv(var)
        mp.setenv("EMP_FASTBUF_AGENT", "external")
        fastbuf.Ring.create(ring, 16 << 20, lanes=16).close()
        try:
            agent = AgentProc(ring, home, env={"EMP_MACHINE_ID": "m-1"})
            try:
                agent.wait_ready()
                for mode, worker, code in (("batch", "w-batch", 0), ("crash", "w-crash", 1)):
                    out = subprocess.run(
                        [sys.executable, str(script), ring, mode, worker],
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    assert out.returncode == code, out.stderr
                deadline = time.monotonic() + 60
                while True:
                    try:
                        with Store(home / "store.sqlite", readonly=True) as store:
                            if _delivered(store):
                                break
                    except StoreError:
                        pass  # not created yet, or being created
                    assert time.monotonic() < deadline, agent.output()[-3000:]
                    time.sleep(0.1)
            finally:
                assert agent.stop() == 0
            yield Run(home, ring, script)
        finally:
            fastbuf.Ring.unlink(ring)


def fastbuf_cli(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        env={**os.environ, "EMP_FASTBUF_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_jobs_failed_lists_exactly_the_failed_jobs(run: Run) -> None:
    out = fastbuf_cli(["jobs", "--failed"], run.home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert {line.split("  ")[0] for line in lines} == FAILED and len(lines) == len(FAILED)
    assert all(line.split("  ")[1] == "failed" for line in lines)
    every = fastbuf_cli(["jobs"], run.home)
    assert every.returncode == 0, every.stderr
    rows = {line.split("  ")[0]: line.split("  ") for line in every.stdout.splitlines()}
    assert set(rows) == OK | FAILED
    assert {j for j, row in rows.items() if row[1] == "ok"} == OK
    # job status start duration machine worker records first-error
    assert rows["crash-1"][4:6] == ["m-1", "w-crash"] and rows["ok-0"][5] == "w-batch"
    # 3 spans, 25 logs and the crash record.
    assert rows["crash-1"][6] == "29 records"


def test_jobs_json_first_error_lines(run: Run) -> None:
    out = fastbuf_cli(["jobs", "--failed", "--json"], run.home)
    assert out.returncode == 0, out.stderr
    objs = {o["job_id"]: o for o in map(json.loads, out.stdout.splitlines())}
    assert set(objs) == FAILED
    assert objs["crash-1"]["first_error"] == f"RuntimeError: {MESSAGE}"
    assert objs["thread-1"]["first_error"] == f"RuntimeError: {MESSAGE}"
    assert objs["logged-1"]["first_error"] == "upload failed: 503 from storage"
    # No ERROR log (the code handled the exception): the span's status message.
    assert objs["handled-1"]["first_error"] == "TimeoutError: fetch timed out"
    starts = [o["start_unix_nano"] for o in map(json.loads, out.stdout.splitlines())]
    assert starts == sorted(starts, reverse=True)  # newest first
    for o in objs.values():
        assert o["machines"] == ["m-1"] and o["duration_ns"] > 0 and o["records"] > 0


def test_why_shows_the_exception_its_raise_and_the_failing_span(run: Run) -> None:
    out = fastbuf_cli(["why", "--job", "crash-1"], run.home)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    lines = text.splitlines()
    assert lines[0] == f"job crash-1 failed: RuntimeError: {MESSAGE}"
    # The failing span's path from the root, with durations.
    at = lines.index(next(x for x in lines if x.startswith("failing span, from the root")))
    path = lines[at + 1 : at + 4]
    assert [x.split()[0] for x in path] == ["job", "generate", "load_model"]
    assert path[2].endswith("error  <- the failing span")
    assert all(" ms  error" in x or " us  error" in x or " s  error" in x for x in path)
    # The exception: type, message, the function and line of the raise, the stack trace.
    assert "exception (from the ERROR log)" in lines
    assert f"  RuntimeError: {MESSAGE}" in lines
    assert f"  raised in load_weights at {run.script}:{RAISE_LINE}" in lines
    assert f'  File "{run.script}", line {RAISE_LINE}, in load_weights' in text
    assert "in crashing_job" in text and "Traceback (most recent call last):" in text
    # The last 20 logs before the failure: the denoise steps 5 to 24.
    logs = [x for x in lines if "denoise step" in x]
    assert len(logs) == 20 and "step=5" in logs[0] and "step=24" in logs[-1]
    # The agent read its machine (m-1) while the job ran.
    assert any(x.startswith("  system.cpu.utilization  min ") for x in lines), text
    assert any(x.startswith("  system.memory.utilization  min ") for x in lines), text
    # The agent's status file: it stopped, nothing was dropped or is waiting.
    assert f"  agent of ring {run.ring!r} (not running, status of " in text
    assert "    drops: none by w-crash" in lines
    assert "    spool: 0 files (0 B) not yet delivered" in lines
    assert "    export: none (the agent writes the local store only)" in lines


def test_why_of_a_thread_crash_and_of_a_handled_exception(run: Run) -> None:
    out = fastbuf_cli(["why", "--job", "thread-1", "--json"], run.home)
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["exception"]["raised_at"] == {
        "file": str(run.script),
        "line": RAISE_LINE,
        "function": "load_weights",
    }
    assert obj["failure"]["record"]["attributes"]["thread.name"] == "gen-thread"
    handled = json.loads(fastbuf_cli(["why", "--job", "handled-1", "--json"], run.home).stdout)
    assert handled["status"] == "failed"
    assert [s["name"] for s in handled["span_path"]] == ["job", "fetch"]
    assert handled["exception"]["type"] == "TimeoutError"
    assert handled["exception"]["message"] == "fetch timed out"


def test_why_json_has_every_section(run: Run) -> None:
    out = fastbuf_cli(["why", "--job", "crash-1", "--json"], run.home)
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert list(obj) == [
        "job",
        "status",
        "failure",
        "span_path",
        "exception",
        "logs",
        "machine_metrics",
        "evidence",
    ]
    assert obj["job"]["job_id"] == "crash-1" and obj["status"] == "failed"
    assert obj["failure"]["kind"] == "log"
    assert [(s["name"], s["depth"], s["status"]) for s in obj["span_path"]] == [
        ("job", 0, "error"),
        ("generate", 1, "error"),
        ("load_model", 2, "error"),
    ]
    exc = obj["exception"]
    assert (exc["type"], exc["message"], exc["source"]) == ("RuntimeError", MESSAGE, "log")
    assert exc["raised_at"]["function"] == "load_weights"
    assert exc["raised_at"]["line"] == RAISE_LINE
    assert [r["attributes"]["step"] for r in obj["logs"]] == list(range(5, 25))
    names = {s["name"] for s in obj["machine_metrics"]["series"]}
    assert {"system.cpu.utilization", "system.memory.utilization"} <= names
    for s in obj["machine_metrics"]["series"]:
        assert s["machine_id"] == "m-1" and s["min"] <= s["last"] <= s["max"]
        assert obj["machine_metrics"]["since_unix_nano"] <= s["times_unix_nano"][0]
    (agent,) = obj["evidence"]["agents"]
    assert (agent["ring"], agent["alive"], agent["drops"]) == (run.ring, False, [])
    assert obj["evidence"]["dead_letter_files"] == 0


def test_why_with_a_gpu_shows_its_memory_and_utilization(run: Run) -> None:
    """On a machine with an NVIDIA GPU (NVML), the agent's GPU readings are in the
    report."""
    from emp_fastbuf.agent.machine import collect_machine_metrics

    if not any(r.name.startswith("hw.gpu.") for r in collect_machine_metrics()):
        pytest.skip("no NVIDIA GPU (or no NVML) on this machine")
    out = fastbuf_cli(["why", "--job", "crash-1"], run.home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(x.startswith("  hw.gpu.memory.usage ") and " GiB" in x for x in lines), out.stdout
    assert any(x.startswith("  hw.gpu.utilization ") and "%" in x for x in lines), out.stdout


def test_why_of_an_ok_job_and_bad_arguments(run: Run) -> None:
    ok = fastbuf_cli(["why", "--job", "ok-1"], run.home)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "the job succeeded"
    assert ok.stdout.splitlines()[1].startswith("job ok-1: started ")
    for args, code, message in (
        (["why", "--job", "no-such-job"], 1, "fastbuf why: no records for job 'no-such-job'\n"),
        (["why"], 2, "fastbuf why: which job? give it as --job ID\n"),
        (
            ["jobs", "--since", "yesterday"],
            2,
            "fastbuf jobs: --since: 'yesterday' is neither a duration (30s, 10m, 2h, 7d)"
            " nor an RFC 3339 time\n",
        ),
    ):
        out = fastbuf_cli(args, run.home)
        assert (out.returncode, out.stdout, out.stderr) == (code, "", message)
