"""``fastbuf demo`` end to end: real worker processes, a real agent, the real store, and
every query command checked against the ids the workers wrote to the side file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf import cli, demo
from emp_fastbuf.demo.worker import STEP_BOUNDS_MS


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DASH0_"))}
    env["EMP_FASTBUF_HOME"] = str(home)
    env["EMP_FASTBUF_AGENT"] = "external"
    return env


def fastbuf_cmd(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        capture_output=True,
        text=True,
        env=_env(home),
        timeout=timeout,
    )


def json_lines(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def unique_ring() -> str:
    return f"emp-fastbuf-test-demo-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class DemoRun:
    def __init__(self, home: Path, ring: str, out: subprocess.CompletedProcess[str]) -> None:
        self.home = home
        self.ring = ring
        self.out = out
        self.side: dict[str, Any] = json.loads((home / f"demo-{ring}.json").read_text())
        self.jobs = {j["job_id"]: j for j in self.side["jobs"]}

    def q(self, *args: str) -> subprocess.CompletedProcess[str]:
        return fastbuf_cmd(self.home, *args)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    home = tmp_path_factory.mktemp("demo") / "home"
    ring = unique_ring()
    out = fastbuf_cmd(home, "demo", "--workers", "2", "--jobs", "6", "--ring", ring, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    yield DemoRun(home, ring, out)


def test_demo_delivers_everything_and_prints_a_summary(run: DemoRun) -> None:
    side = run.side
    assert len(side["jobs"]) == 6 and len(side["workers"]) == 2
    assert side["complete"] is True and side["problems"] == []
    # Two in ten fail, the 4th (its error logged) and the 6th (uncaught): both here.
    assert len(side["failed_jobs"]) == 2
    assert len(side["completed_jobs"]) + len(side["failed_jobs"]) == 6
    assert side["delivered"] == side["emitted"]
    assert side["emitted"]["log"] > 0 and side["emitted"]["metric"] > 0
    assert side["dropped"] == 0
    assert all(w["flushed"] for w in side["workers"])
    # What the workers counted per job adds up to what they counted per process.
    per_job: Counter[str] = Counter()
    for job in side["jobs"]:
        per_job.update(job["emitted"])
    per_worker: Counter[str] = Counter()
    for w in side["workers"]:
        per_worker.update(w["emitted"])
    assert per_worker == per_job + Counter()  # a worker emits only inside its jobs
    sched = Counter(side["scheduler_emitted"])
    assert sched == Counter(span=6)  # one job.enqueue span per job
    assert Counter(side["emitted"]) == per_worker + sched
    # The summary: counts, latency percentiles, and commands with this run's ids.
    text = run.out.stdout
    failed = side["failed_jobs"][0]
    assert "delivered to the store" in text and "p99.9" in text
    # The failed jobs as the store has them, each with its cause, then what to try first.
    oom, crash = side["failed_jobs"]
    assert side["failed_in_store"] == {
        oom: f"SimulatedGpuError: {run.jobs[oom]['message']}",
        crash: f"SimulatedGpuCrash: {run.jobs[crash]['message']}",
    }
    lines = text.splitlines()
    listed = lines.index("failed jobs (2):")
    assert lines[listed + 1 : listed + 3] == [
        f"  {oom}  SimulatedGpuError: {run.jobs[oom]['message']}",
        f"  {crash}  SimulatedGpuCrash: {run.jobs[crash]['message']}",
    ]
    tries = lines[lines.index("try:") + 1 :]
    assert tries[:2] == ["  fastbuf jobs --failed", f"  fastbuf why --job {failed}"]
    assert f"fastbuf logs --job {failed}" in text
    assert f"fastbuf trace {run.jobs[failed]['trace_id']}" in text
    assert f"fastbuf correlate --job {failed}" in text
    assert f"fastbuf metrics --machine {side['machine_id']}" in text
    assert "--home" not in text  # the home came from EMP_FASTBUF_HOME
    assert (run.home / "store.sqlite").stat().st_mode & 0o777 == 0o600
    assert (run.home / f"demo-{run.ring}.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(fastbuf.RingNotFound):
        fastbuf.Ring.open(run.ring)  # the private ring is gone


def test_logs_of_each_job_are_exactly_its_records(run: DemoRun) -> None:
    for job_id, job in run.jobs.items():
        recs = json_lines(run.q("logs", "--job", job_id, "--json", "--limit", "0"))
        assert {r["job_id"] for r in recs} == {job_id}
        assert {r["worker_id"] for r in recs} == {job["worker_id"]}
        kinds = Counter(r["kind"] for r in recs)
        assert kinds == Counter(log=job["emitted"]["log"], event=job["emitted"]["event"])
        steps = [r["attributes"]["step"] for r in recs if r["body"] == "denoise step"]
        assert steps == list(range(job["steps_run"]))
        assert all(r["severity"] == "INFO" for r in recs if r["body"] == "denoise step")
        assert all(r["trace_id"] == job["trace_id"] for r in recs)
        times = [r["time_unix_nano"] for r in recs]
        assert times == sorted(times)
        event = "job.completed" if job["status"] == "completed" else "job.failed"
        assert [r["name"] for r in recs if r["kind"] == "event"] == [event]


def test_trace_tree_and_parentage(run: DemoRun) -> None:
    for job_id, job in run.jobs.items():
        lines = json_lines(run.q("trace", job["trace_id"], "--json"))
        spans = [r for r in lines if r["kind"] == "span"]
        rest = lines[len(spans) :]
        assert lines[: len(spans)] == spans, "spans come first"
        assert Counter(s["name"] for s in spans) == Counter(job["spans"])
        root = spans[0]
        assert root["name"] == "job.enqueue" and root["depth"] == 0
        assert root["parent_span_id"] is None
        assert root["worker_id"] == run.side["scheduler_worker_id"]
        # Tree order: each span's parent is the last span seen one level up.
        stack: list[dict[str, Any]] = []
        for s in spans:
            assert s["trace_id"] == job["trace_id"] and s["job_id"] == job_id
            del stack[s["depth"] :]
            assert len(stack) == s["depth"], "depth grows one level at a time"
            if stack:
                assert s["parent_span_id"] == stack[-1]["span_id"]
            stack.append(s)
        by_name = {s["name"]: s for s in spans}
        assert by_name["queue.wait"]["depth"] == 1 and by_name["job"]["depth"] == 1
        assert by_name["denoise"]["parent_span_id"] == by_name["job"]["span_id"]
        assert all(s["depth"] == 3 for s in spans if s["name"] == "denoise.step")
        wait = by_name["queue.wait"]
        assert wait["start_unix_nano"] >= root["start_unix_nano"]
        assert wait["end_unix_nano"] <= by_name["job"]["start_unix_nano"]
        span_ids = {s["span_id"] for s in spans}
        assert all(r["span_id"] in span_ids for r in rest)
        times = [r["time_unix_nano"] for r in rest]
        assert times == sorted(times)


def test_a_failed_job_has_an_error_span_and_a_stacktrace(run: DemoRun) -> None:
    job_id = run.side["failed_jobs"][0]
    job = run.jobs[job_id]
    spans = [
        r for r in json_lines(run.q("trace", job["trace_id"], "--json")) if r["kind"] == "span"
    ]
    errors = {s["name"] for s in spans if s["status"] == "error"}
    assert errors == {"job", "denoise", "denoise.step"}
    assert "upload" not in {s["name"] for s in spans}
    failed_step = [s for s in spans if s["name"] == "denoise.step" and s["status"] == "error"]
    assert [s["attributes"]["step"] for s in failed_step] == [job["steps_run"] - 1]
    logs = json_lines(run.q("logs", "--job", job_id, "--level", "error", "--json"))
    # The exception's own record, written as it left the failed step's span (the spans
    # above it write no other), then the worker's log of the failure it handled.
    assert [r["severity"] for r in logs] == ["ERROR", "ERROR"]
    crash, handled = logs
    assert crash["body"].startswith("SimulatedGpuError: CUDA out of memory")
    assert crash["span_id"] == failed_step[0]["span_id"]
    assert ", in _job\n" in crash["attributes"]["exception.stacktrace"]
    attrs = handled["attributes"]
    assert handled["body"] == "job failed"
    assert attrs["exception.type"] == "SimulatedGpuError"
    assert "Traceback (most recent call last)" in attrs["exception.stacktrace"]
    assert "CUDA out of memory" in attrs["exception.message"]
    job_span = next(s for s in spans if s["name"] == "job")
    assert handled["span_id"] == job_span["span_id"]


def test_a_crashed_job_is_captured_with_its_stack_trace(run: DemoRun) -> None:
    """The 6th job raises an exception nobody catches: crash capture, not the job's code,
    writes its ERROR record, inside the step span it left."""
    crashed = [j for j in run.side["jobs"] if j["error"] == "SimulatedGpuCrash"]
    assert [j["job_id"] for j in crashed] == [run.side["failed_jobs"][1]]
    job = crashed[0]
    assert job["status"] == "failed"
    spans = [
        r for r in json_lines(run.q("trace", job["trace_id"], "--json")) if r["kind"] == "span"
    ]
    assert {s["name"] for s in spans if s["status"] == "error"} == {
        "job",
        "denoise",
        "denoise.step",
    }
    failed_step = next(s for s in spans if s["name"] == "denoise.step" and s["status"] == "error")
    logs = json_lines(run.q("logs", "--job", job["job_id"], "--level", "error", "--json"))
    assert len(logs) == 1
    attrs = logs[0]["attributes"]
    assert attrs["exception.type"] == "SimulatedGpuCrash"
    assert "illegal memory access" in attrs["exception.message"]
    assert logs[0]["body"].startswith("SimulatedGpuCrash: CUDA error")
    # The raise, in the function that raised it.
    assert "raise self._failure(job, result)" in attrs["exception.stacktrace"]
    assert ", in _job\n" in attrs["exception.stacktrace"]
    assert logs[0]["span_id"] == failed_step["span_id"]
    assert logs[0]["worker_id"] == job["worker_id"]
    assert "Traceback" not in run.out.stderr  # the demo's terminal shows the summary only


def test_metrics_by_machine(run: DemoRun) -> None:
    machine = run.side["machine_id"]
    series = json_lines(run.q("metrics", "--machine", machine, "--json"))
    assert {s["machine_id"] for s in series} == {machine}

    def total(name: str, field: str = "value") -> Any:
        return sum(s[field] for s in series if s["name"] == name)

    assert total("jobs.completed") == len(run.side["completed_jobs"])
    assert total("jobs.failed") == len(run.side["failed_jobs"])
    # A crashed job's step durations were still in its hands: they die with its thread.
    recorded = [j for j in run.side["jobs"] if j["error"] != "SimulatedGpuCrash"]
    assert total("step.duration", "count") == sum(j["steps_run"] for j in recorded)
    hist = [s for s in series if s["name"] == "step.duration"]
    assert all(s["kind"] == "histogram" and s["unit"] == "ms" for s in hist)
    assert all(s["bounds"] == list(STEP_BOUNDS_MS) for s in hist)
    assert all(sum(s["bucket_counts"]) == s["count"] for s in hist)
    gauges = [s for s in series if s["name"] == "gpu.memory.used"]
    assert {s["worker_id"] for s in gauges} == {w["worker_id"] for w in run.side["workers"]}
    assert all(
        s["kind"] == "gauge" and s["unit"] == "By" and "gpu" in s["attributes"] for s in gauges
    )
    # The agent's machine-level series carry the demo machine id and no worker id.
    assert any(s["worker_id"] is None and s["name"].startswith("fastbuf.") for s in series)
    workers = json_lines(run.q("metrics", "--worker", gauges[0]["worker_id"], "--json"))
    assert {s["worker_id"] for s in workers} == {gauges[0]["worker_id"]}


def test_correlate_puts_the_job_on_one_timeline(run: DemoRun) -> None:
    for job_id in (run.side["completed_jobs"][0], run.side["failed_jobs"][0]):
        job = run.jobs[job_id]
        recs = json_lines(run.q("correlate", "--job", job_id, "--json"))
        keys = [r["start_unix_nano"] if r["kind"] == "span" else r["time_unix_nano"] for r in recs]
        assert keys == sorted(keys)
        assert {"span", "log", "event", "metric"} <= {r["kind"] for r in recs}
        own = [r for r in recs if r["kind"] != "metric"]
        assert {r["job_id"] for r in own} == {job_id}
        metrics = [r for r in recs if r["kind"] == "metric"]
        worker_metrics = {r["name"] for r in metrics if r["worker_id"] == job["worker_id"]}
        assert {"gpu.memory.used", "step.duration"} <= worker_metrics
        logs = [r for r in recs if r["kind"] == "log" and r["body"] == "denoise step"]
        assert len(logs) == job["steps_run"]


def test_query_errors_are_one_line_with_the_right_exit_code(run: DemoRun) -> None:
    unknown = "0" * 31 + "1"
    out = run.q("trace", unknown)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"fastbuf trace: no trace {unknown} in the store"]
    out = run.q("logs", "--since", "bogus")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("fastbuf logs: --since: 'bogus'")
    out = run.q("correlate", "job-that-never-ran")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    out = run.q("logs", "--job", run.side["failed_jobs"][0], "--grep", "no such text")
    assert out.returncode == 1 and out.stderr.strip() == "fastbuf logs: no matching logs or events"


@pytest.mark.parametrize(
    "argv",
    [
        ["--workers", "0"],
        ["--workers", str(demo.MAX_WORKERS + 1)],
        ["--jobs", "0"],
        ["--seconds", "-1"],
        ["--seconds", "nan"],
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], fastbuf_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastbuf demo: --")
    assert not list(fastbuf_home.iterdir())  # nothing was started or created


def test_a_foreign_store_file_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    garbage = b"this is not a database\n" * 100
    (home / "store.sqlite").write_bytes(garbage)
    out = fastbuf_cmd(home, "logs")
    assert out.returncode == 2  # damaged: the query commands exit 2 (docs/cli.md)
    foreign = f"{home / 'store.sqlite'} is not an emp-fastbuf store (not an SQLite database)"
    assert out.stderr.strip().splitlines() == [f"fastbuf logs: {foreign}"]
    ring = unique_ring()
    out = fastbuf_cmd(home, "demo", "--workers", "1", "--jobs", "2", "--ring", ring)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [f"fastbuf demo: {foreign}"]
    assert (home / "store.sqlite").read_bytes() == garbage  # never touched
    with pytest.raises(fastbuf.RingNotFound):
        fastbuf.Ring.open(ring)


def test_queries_run_while_the_agent_writes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ring = unique_ring()
    argv = ["demo", "--workers", "1", "--jobs", "40", "--seconds", "8", "--ring", ring]
    proc = subprocess.Popen(
        [sys.executable, "-m", "emp_fastbuf", *argv, "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path / "elsewhere"),
    )
    counts: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            out = fastbuf_cmd(home, "logs", "--json", "--limit", "0")
            if counts:
                assert out.returncode == 0, out.stderr
            if out.returncode == 0:
                counts.append(len(out.stdout.splitlines()))
            else:  # before the first batch: no store yet, or nothing in it
                assert out.returncode == 1, out.stderr
                time.sleep(0.1)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout + stderr
    assert len(counts) >= 2, "the reads overlapped the writes"
    assert counts == sorted(counts)
    final = json_lines(fastbuf_cmd(home, "logs", "--json", "--limit", "0"))
    side = json.loads((home / f"demo-{ring}.json").read_text())
    assert len(final) == side["emitted"]["log"] + side["emitted"]["event"] >= counts[-1]
    assert f"--home {home}" in stdout  # a home other than the default is printed
