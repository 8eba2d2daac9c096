"""``fastbuf demo``: simulated GPU workers run image-generation jobs through the whole
pipeline (api -> ring -> agent -> spool -> local store), then a summary of what was
emitted, delivered and dropped, the workers' own emit latency, and query commands to try
with real ids from the run.

The parent process is the scheduler: it creates a private ring, starts a real
``fastbuf agent`` (local store only), enqueues the jobs, each inside a ``job.enqueue``
span whose ``traceparent`` travels with the job, and starts the workers (spawn start
method). Each worker continues the job's trace and records spans, logs, metrics and
events as a real worker would; one job in ten fails. The ids the run used go to
``<home>/demo-<ring>.json`` for scripts and tests.

``--seconds S`` (S > 0) scales the simulated work so that the whole run, setup and
teardown included, ends within S seconds; a run cannot be shorter than its setup and
teardown (about two seconds), which is what ``--seconds 0`` (no scaling) takes.
"""

from __future__ import annotations

import array
import gzip
import math
import multiprocessing
import os
import queue
import random
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import emp_fastbuf as fastbuf
from emp_fastbuf import paths
from emp_fastbuf.agent.status import read_status
from emp_fastbuf.errors import HomeError, RingError
from emp_fastbuf.paths import STORE_FILE
from emp_fastbuf.producer import _codec
from emp_fastbuf.records import (
    EVENT,
    LOG,
    SPAN,
    Record,
    Resource,
    SpanEvent,
)
from emp_fastbuf.store import Store, StoredRecord, StoreError

__all__ = ["DemoSettings", "JobSpec", "percentile_ns", "run", "worker_main"]

SERVICE = "image-gen"
MODELS = ("sdxl-base-1.0", "sdxl-turbo")
KINDS = ("log", "event", "span", "metric")
MAX_WORKERS = 32
MAX_JOBS = 100_000
# Histogram bounds for step durations in ms: the default OpenTelemetry bounds are too
# coarse below 5 ms, where the demo's simulated steps are.
STEP_BOUNDS_MS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
# Nominal simulated work at --seconds 0, in seconds.
STEP_S = (0.001, 0.005)
LOAD_S = 0.04
UPLOAD_S = 0.01
# Time kept aside at the end of a --seconds run: the agent cuts a batch every second,
# then stops, then the store is read back.
TEARDOWN_RESERVE_S = 2.0
AGENT_START_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_S = 60.0
GPU_MEMORY_BASE = 7_340_032_000  # bytes a loaded model keeps on the GPU
GPU_MEMORY_ACTIVATIONS = 2_684_354_560
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class SimulatedGpuError(RuntimeError):
    """The failure one job in ten runs into."""


@dataclass(frozen=True)
class JobSpec:
    """One job as the scheduler hands it to a worker."""

    job_id: str
    index: int
    model: str
    prompt: str
    steps: int
    fail_at: int | None  # the step that raises, or None
    traceparent: str
    trace_id: str
    enqueued_ns: int


@dataclass(frozen=True)
class DemoSettings:
    """What every worker needs to know (picklable: passed to spawned processes)."""

    ring: str
    run_id: str
    machine_id: str
    step_s: tuple[float, float]
    load_s: float
    upload_s: float
    deadline: float | None  # time.time() after which simulated work is skipped
    seed: int


# ---- the worker ------------------------------------------------------------------------


class _Timer:
    """Measures each fastbuf call of the worker (perf_counter_ns around the call)."""

    def __init__(self) -> None:
        self.samples = array.array("q")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        t0 = time.perf_counter_ns()
        fn(*args, **kwargs)
        self.samples.append(time.perf_counter_ns() - t0)

    @contextmanager
    def span(self, name: str, **attrs: Any) -> Iterator[Any]:
        """``fastbuf.span`` with its start and its end (the write) measured."""
        t0 = time.perf_counter_ns()
        s = fastbuf.span(name, **attrs)
        s.__enter__()
        self.samples.append(time.perf_counter_ns() - t0)
        try:
            yield s
        except BaseException as exc:
            t0 = time.perf_counter_ns()
            s.__exit__(type(exc), exc, exc.__traceback__)
            self.samples.append(time.perf_counter_ns() - t0)
            raise
        t0 = time.perf_counter_ns()
        s.__exit__(None, None, None)
        self.samples.append(time.perf_counter_ns() - t0)


class _Worker:
    """One simulated GPU worker: a model cache, instruments, and the job loop."""

    def __init__(self, index: int, settings: DemoSettings) -> None:
        self.index = index
        self.settings = settings
        self.worker_id = f"{settings.machine_id}-gpu{index}"
        self.rng = random.Random(settings.seed * 1000 + index)
        self.timer = _Timer()
        self.loaded: str | None = None
        m = fastbuf.metrics
        self.step_hist = m.histogram(
            "step.duration", unit="ms", description="denoise step", bounds=STEP_BOUNDS_MS
        )
        self.gpu_memory = m.gauge("gpu.memory.used", unit="By", description="GPU memory")
        self.completed = m.counter("jobs.completed", unit="{job}")
        self.failed = m.counter("jobs.failed", unit="{job}")

    def work(self, seconds: float) -> None:
        """Simulated GPU work; nothing past the run's deadline."""
        deadline = self.settings.deadline
        if deadline is not None:
            seconds = min(seconds, deadline - time.time())
        if seconds > 0:
            time.sleep(seconds)

    def run_job(self, job: JobSpec) -> dict[str, Any]:
        """Run one job; returns what it did (for the side file)."""
        before = fastbuf.stats()["by_kind"]
        picked_ns = time.time_ns()
        t = self.timer
        result: dict[str, Any] = {
            "job_id": job.job_id,
            "trace_id": job.trace_id,
            "worker_id": self.worker_id,
            "machine_id": self.settings.machine_id,
            "model": job.model,
            "status": "completed",
            "steps_run": 0,
            "model_loaded": False,
        }
        spans = ["job.enqueue", "queue.wait", "job"]
        with fastbuf.continue_trace(job.traceparent), fastbuf.context(job_id=job.job_id):
            # The wait happened before this worker ran anything: a span with the
            # enqueue time as its start, a sibling of the job span under job.enqueue.
            scope = _codec.current()
            assert scope.trace_id is not None
            t.call(
                _codec.write_span,
                "queue.wait",
                scope.trace_id,
                _codec.new_span_id(),
                scope.span_id,
                job.enqueued_ns,
                picked_ns,
                0,
                1,
                "",
                {"queue": "gpu", "wait_ms": round((picked_ns - job.enqueued_ns) / 1e6, 3)},
            )
            with t.span("job", model=job.model, steps=job.steps, prompt=job.prompt) as job_span:
                durations: list[float] = []
                step = 0
                try:
                    if self.loaded != job.model:
                        result["model_loaded"] = True
                        spans.append("model.load")
                        with t.span("model.load", model=job.model, cache="miss"):
                            self.work(self.settings.load_s)
                            self.loaded = job.model
                        t.call(self.gpu_memory.set, GPU_MEMORY_BASE, gpu=self.index)
                        t.call(fastbuf.log.info, "model loaded", model=job.model)
                    spans.append("denoise")
                    with t.span("denoise", steps=job.steps, sampler="euler-a"):
                        for step in range(job.steps):
                            spans.append("denoise.step")
                            with t.span("denoise.step", step=step):
                                t0 = time.perf_counter()
                                self.work(self.rng.uniform(*self.settings.step_s))
                                durations.append((time.perf_counter() - t0) * 1e3)
                                result["steps_run"] = step + 1
                                loss = round(1.0 / (1 + step) + self.rng.uniform(0, 0.05), 4)
                                t.call(fastbuf.log.info, "denoise step", step=step, loss=loss)
                                if step == job.fail_at:
                                    raise SimulatedGpuError(
                                        "CUDA out of memory: tried to allocate 2.50 GiB"
                                        f" on gpu {self.index} (simulated)"
                                    )
                            if step % 5 == 0:
                                used = GPU_MEMORY_BASE + int(
                                    GPU_MEMORY_ACTIVATIONS * self.rng.uniform(0.6, 1.0)
                                )
                                t.call(self.gpu_memory.set, used, gpu=self.index)
                    t.call(self.step_hist.record_many, durations, model=job.model)
                    durations = []
                    spans.append("upload")
                    size = self.rng.randint(1_200_000, 2_400_000)
                    with t.span("upload", bucket="generated-images", bytes=size):
                        self.work(self.settings.upload_s)
                    t.call(self.completed.inc, 1, model=job.model)
                    t.call(fastbuf.event, "job.completed", steps=job.steps, image_bytes=size)
                except SimulatedGpuError as exc:
                    result["status"] = "failed"
                    job_span.set_status("error", str(exc))
                    if durations:
                        t.call(self.step_hist.record_many, durations, model=job.model)
                    t.call(fastbuf.log.exception, "job failed", step=step)
                    t.call(self.failed.inc, 1, model=job.model, reason="oom")
                    t.call(fastbuf.event, "job.failed", step=step, reason="oom")
                    # The model's memory is gone with the error: reload on the next job.
                    self.loaded = None
                    t.call(self.gpu_memory.set, 0, gpu=self.index)
        after = fastbuf.stats()["by_kind"]
        result["spans"] = dict(Counter(spans))
        result["emitted"] = {k: after[k] - before[k] for k in KINDS}
        return result


def worker_main(index: int, settings: DemoSettings, jobs: Any, results: Any) -> None:
    """Entry point of a worker process: take jobs off ``jobs`` until ``None``, report
    each to ``results``, flush, then report the totals and the emit latencies."""
    # The demo always writes to its own ring, whatever the environment says.
    for var in ("OTEL_SDK_DISABLED", "EMP_FASTBUF_RING", "OTEL_RESOURCE_ATTRIBUTES"):
        os.environ.pop(var, None)
    worker_id = f"{settings.machine_id}-gpu{index}"
    fastbuf.configure(
        service=SERVICE,
        machine_id=settings.machine_id,
        worker_id=worker_id,
        ring=settings.ring,
        agent="external",
        resource_attributes={"emp.demo.run": settings.run_id, "gpu.index": index},
    )
    worker = _Worker(index, settings)
    while True:
        job = jobs.get()
        if job is None:
            break
        results.put(("done", index, worker.run_job(job)))
    flushed = fastbuf.flush(30.0)
    st = fastbuf.stats()
    results.put(
        (
            "report",
            index,
            {
                "worker_id": worker_id,
                "flushed": flushed,
                "emitted": st["by_kind"],
                "dropped": st["dropped"],
                "latency_ns": worker.timer.samples.tobytes(),
            },
        )
    )
    fastbuf.shutdown()


# ---- the scheduler ---------------------------------------------------------------------


def percentile_ns(sorted_values: Sequence[int], p: float) -> int:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _plan_jobs(
    run_id: str, n: int, rng: random.Random
) -> list[tuple[str, int, str, str, int, int | None]]:
    prompts = (
        "a lighthouse in a storm, oil painting",
        "isometric city at night, neon",
        "a red fox in fresh snow, photo",
        "watercolor map of an island",
        "macro shot of a dragonfly wing",
    )
    plan = []
    for i in range(n):
        steps = rng.randint(20, 30)
        # One job in ten fails, the 4th of every ten: even a 4-job run shows a failure.
        fail_at = rng.randint(steps // 3, steps - 1) if i % 10 == 3 else None
        model = MODELS[1] if i % 7 == 6 else MODELS[0]
        plan.append((f"job-{run_id}-{i:04d}", i, model, prompts[i % len(prompts)], steps, fail_at))
    return plan


@dataclass
class _Run:
    """The scheduler's state, for the summary and the side file."""

    home: Path
    ring: str
    run_id: str
    machine_id: str
    workers: int
    jobs_total: int
    agent_log: Path
    side_file: Path
    started: float = field(default_factory=time.monotonic)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)
    scheduler_emitted: dict[str, int] = field(default_factory=dict)
    work_seconds: float = 0.0
    last_job_done: float = 0.0
    problems: list[str] = field(default_factory=list)


def _err(message: str) -> None:
    print(f"fastbuf demo: {message}", file=sys.stderr)


def _agent_env(home: Path, machine_id: str) -> dict[str, str]:
    """The caller's environment without any exporter setting: the demo's agent writes
    the local store only."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_EXPORTER_", "DASH0_"))
        and k not in ("EMP_FASTBUF_LOCAL_COPY", "EMP_FASTBUF_RING")
    }
    env.update(
        EMP_FASTBUF_HOME=str(home),
        EMP_MACHINE_ID=machine_id,
        EMP_FASTBUF_AGENT="external",
        EMP_FASTBUF_LOG_LEVEL=env.get("EMP_FASTBUF_LOG_LEVEL", "INFO"),
    )
    return env


def _start_agent(run: _Run, ring: fastbuf.Ring) -> subprocess.Popen[bytes] | None:
    fd = os.open(run.agent_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", run.ring],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_agent_env(run.home, run.machine_id),
        )
    deadline = time.monotonic() + AGENT_START_TIMEOUT_S
    while time.monotonic() < deadline:
        consumer = ring.stats()["consumer"]
        if consumer.get("pid") == proc.pid and consumer.get("alive"):
            return proc
        if proc.poll() is not None:
            _err(f"the agent exited with code {proc.returncode}: {_last_line(run.agent_log)}")
            return None
        time.sleep(0.02)
    _err(f"the agent did not attach to ring {run.ring!r} within {AGENT_START_TIMEOUT_S:.0f} s")
    _stop_agent(proc)
    return None


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return lines[-1] if lines else "(no output)"


def _stop_agent(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=DELIVERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _settings(args: Any, run: _Run, seed: int) -> DemoSettings:
    seconds = float(args.seconds)
    if seconds <= 0:
        return DemoSettings(
            run.ring, run.run_id, run.machine_id, STEP_S, LOAD_S, UPLOAD_S, None, seed
        )
    # Scale the simulated work so that the run ends within S seconds: what is left after
    # the setup so far, less the teardown, spread over each worker's share of the jobs.
    budget = max(0.0, seconds - (time.monotonic() - run.started) - TEARDOWN_RESERVE_S)
    per_worker = math.ceil(run.jobs_total / run.workers)
    # A worker loads a model for its first job, after a failure and on a model switch
    # (about one job in four); every job has 25 steps on average and an upload.
    nominal = per_worker * (25 * sum(STEP_S) / 2 + UPLOAD_S) + LOAD_S * (1 + per_worker / 4)
    scale = budget / nominal
    return DemoSettings(
        run.ring,
        run.run_id,
        run.machine_id,
        (STEP_S[0] * scale, STEP_S[1] * scale),
        LOAD_S * scale,
        UPLOAD_S * scale,
        time.time() + budget,
        seed,
    )


def _enqueue(run: _Run, jobs_q: Any, rng: random.Random) -> None:
    for job_id, index, model, prompt, steps, fail_at in _plan_jobs(run.run_id, run.jobs_total, rng):
        with (
            fastbuf.context(job_id=job_id),
            fastbuf.span("job.enqueue", queue="gpu", model=model) as s,
        ):
            tp = fastbuf.traceparent()
            assert tp is not None and s.trace_id is not None
            jobs_q.put(
                JobSpec(
                    job_id, index, model, prompt, steps, fail_at, tp, s.trace_id, time.time_ns()
                )
            )


def _collect(run: _Run, procs: list[Any], results_q: Any) -> None:
    """Progress bar over the jobs until every worker reported (or died)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]jobs"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    with progress:
        task = progress.add_task("jobs", total=run.jobs_total, failed=0)

        def handle(kind: str, index: int, payload: dict[str, Any]) -> None:
            if kind == "done":
                run.jobs[payload["job_id"]] = payload
                run.last_job_done = time.monotonic()
                failed = sum(j["status"] == "failed" for j in run.jobs.values())
                progress.update(task, completed=len(run.jobs), failed=failed)
            elif kind == "report":
                run.reports[index] = payload

        while len(run.reports) < len(procs):
            try:
                handle(*results_q.get(timeout=0.25))
                continue
            except queue.Empty:
                pass
            for i, p in enumerate(procs):
                if p.exitcode is None or i in run.reports:
                    continue
                # A last look: the report may have arrived just before the exit.
                try:
                    while True:
                        handle(*results_q.get_nowait())
                except queue.Empty:
                    pass
                if i not in run.reports:
                    run.problems.append(f"worker {i} exited with code {p.exitcode}")
                    run.reports[i] = {}


def _wait_in_flight(ring: fastbuf.Ring, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ring.stats()["in_flight"] == 0:
            return True
        time.sleep(0.05)
    return bool(ring.stats()["in_flight"] == 0)


# ---- reading the run back from the store -----------------------------------------------


@dataclass
class _Delivered:
    by_kind: Counter[str] = field(default_factory=Counter)  # the producers' records
    agent: Counter[str] = field(default_factory=Counter)  # the agent's own metric updates
    logs: list[StoredRecord] = field(default_factory=list)
    spans: list[StoredRecord] = field(default_factory=list)


def _read_back(store: Store, run: _Run) -> _Delivered:
    out = _Delivered()
    out.logs = store.logs(machine=run.machine_id, limit=None)
    for r in out.logs:
        (out.by_kind if r.worker_id else out.agent)[r.kind] += 1
    for job in run.jobs.values():
        view = store.trace(job["trace_id"])
        if view is not None:
            out.spans.extend(n.span for n in view.spans if n.span.machine_id == run.machine_id)
    out.by_kind["span"] += len(out.spans)
    for s in store.metrics(machine=run.machine_id):
        (out.by_kind if s.worker_id else out.agent)["metric"] += s.updates
    return out


def _wire_bytes(delivered: _Delivered) -> int:
    """gzip size of OTLP/protobuf logs and traces requests rebuilt from the stored records."""
    from emp_fastbuf.agent.otlp.reference import build_logs_request, build_traces_request

    groups: dict[tuple[str | None, str | None, str | None], list[Record]] = {}
    for r in [*delivered.logs, *delivered.spans]:
        groups.setdefault((r.service, r.machine_id, r.worker_id), []).append(_as_record(r))
    resources = [
        (
            Resource(
                attributes={
                    k: v
                    for k, v in (
                        ("service.name", svc),
                        ("emp.machine_id", machine),
                        ("emp.worker_id", worker),
                    )
                    if v is not None
                }
            ),
            recs,
        )
        for (svc, machine, worker), recs in groups.items()
    ]
    total = 0
    for req in (build_logs_request(resources), build_traces_request(resources)):
        if req is not None:
            total += len(gzip.compress(req.SerializeToString(), compresslevel=6))
    return total


def _as_record(r: StoredRecord) -> Record:
    kind = {"log": LOG, "event": EVENT, "span": SPAN}[r.kind]
    rec = Record(
        kind=kind,
        time_unix_nano=r.time_unix_nano,
        trace_id=bytes.fromhex(r.trace_id) if r.trace_id else None,
        span_id=bytes.fromhex(r.span_id) if r.span_id else None,
        context={"job_id": r.job_id} if r.job_id is not None else {},
        attributes=dict(r.attributes),
        severity_number=r.severity_number or 0,
        severity_text=r.severity_text or "",
        body=r.body or "",
        name=r.name or "",
    )
    if kind == SPAN:
        rec.parent_span_id = bytes.fromhex(r.parent_span_id) if r.parent_span_id else None
        rec.start_unix_nano = r.start_unix_nano or r.time_unix_nano
        rec.status_code = r.status_code or 0
        rec.status_message = r.status_message or ""
        rec.span_kind = r.span_kind or 0
        rec.events = [
            SpanEvent(
                str(e.get("name", "")), int(e.get("time_unix_nano", 0)), e.get("attributes") or {}
            )
            for e in r.events
        ]
    return rec


# ---- the summary -----------------------------------------------------------------------


def _fmt_ns(ns: int) -> str:
    if ns < 10_000:
        return f"{ns / 1e3:.2f} us"
    if ns < 10**6:
        return f"{ns / 1e3:.1f} us"
    return f"{ns / 1e6:.2f} ms"


def _print_summary(
    run: _Run,
    emitted: Counter[str],
    delivered: _Delivered,
    ring_stats: dict[str, Any],
    status: dict[str, Any] | None,
    store_bytes: int,
    wire_bytes: int,
    home_flag: str,
) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, soft_wrap=True)
    failed = sorted(j for j, r in run.jobs.items() if r["status"] == "failed")
    con.print(
        f"\n[bold]fastbuf demo[/]: {len(run.jobs)} jobs ({len(failed)} failed) on"
        f" {run.workers} workers, machine {run.machine_id}, ring {run.ring}"
    )
    table = Table("records", *KINDS, "total", box=None, pad_edge=False)
    row = [emitted[k] for k in KINDS]
    table.add_row("emitted by the workers", *map(str, row), str(sum(row)))
    row = [delivered.by_kind[k] for k in KINDS]
    table.add_row("delivered to the store", *map(str, row), str(sum(row)))
    row = [delivered.agent[k] for k in KINDS]
    table.add_row("agent's own (machine metrics)", *map(str, row), str(sum(row)))
    con.print(table)
    con.print(
        f"dropped: {ring_stats.get('dropped', 0)} (ring full {ring_stats.get('dropped_full', 0)},"
        f" no lane {ring_stats.get('dropped_no_lane', 0)},"
        f" too large {ring_stats.get('dropped_too_large', 0)})"
    )
    if status is not None:
        spool = status.get("spool") or {}
        con.print(
            f"agent: drained {status['drained']['records']} records in"
            f" {status['drained']['batches']} batches, {spool.get('files', 0)} spool files left"
        )

    lat = Table(
        "emit latency",
        "calls",
        "p50",
        "p99",
        "p99.9",
        "max",
        box=None,
        pad_edge=False,
        caption="perf_counter_ns around each fastbuf call in the workers (a span's start and"
        " end count as two calls), the measuring included; the calls come between sleeps,"
        " with cold caches",
        caption_justify="left",
    )
    merged: list[int] = []
    for i in sorted(run.reports):
        samples = sorted(array.array("q", run.reports[i].get("latency_ns", b"")))
        merged.extend(samples)
        if samples:
            lat.add_row(
                run.reports[i]["worker_id"],
                str(len(samples)),
                *(_fmt_ns(percentile_ns(samples, p)) for p in (50, 99, 99.9)),
                _fmt_ns(samples[-1]),
            )
    merged.sort()
    if merged:
        lat.add_row(
            "[bold]all workers",
            str(len(merged)),
            *(_fmt_ns(percentile_ns(merged, p)) for p in (50, 99, 99.9)),
            _fmt_ns(merged[-1]),
        )
    con.print(lat)

    total = sum(emitted.values())
    rows = sum(delivered.by_kind.values()) + sum(delivered.agent.values())
    if run.work_seconds > 0:
        emit_s = sum(merged) / 1e9
        con.print(
            f"throughput: {total / run.work_seconds:,.0f} records/s over {run.work_seconds:.2f} s"
            f" of simulated GPU work; emitting took {emit_s * 1e3:.1f} ms of the workers' time"
            f" ({emit_s / (run.work_seconds * run.workers):.2%})"
        )
    if status is not None and status["drained"]["records"]:
        d = status["drained"]
        con.print(f"in the ring: {d['bytes'] / d['records']:.0f} B/record (native encoding)")
    if rows and store_bytes > 0:
        con.print(
            f"stored: ~{store_bytes / rows:.0f} B/record (approximate: growth of the"
            " database pages, indexes included, over this run's rows)"
        )
    n_wire = len(delivered.logs) + len(delivered.spans)
    if n_wire and wire_bytes:
        con.print(
            f"on the wire: ~{wire_bytes / n_wire:.0f} B/record (gzip of OTLP/protobuf logs and"
            " traces requests rebuilt from this run's stored logs, events and spans)"
        )

    job = failed[0] if failed else next(iter(sorted(run.jobs)), None)
    if job is not None:
        trace_id = run.jobs[job]["trace_id"]
        con.print("\n[bold]try[/]:")
        for cmd in (
            f"fastbuf logs --job {job}",
            f"fastbuf trace {trace_id}",
            f"fastbuf correlate --job {job}",
            f"fastbuf metrics --machine {run.machine_id}",
        ):
            con.print(f"  {cmd}{home_flag}", markup=False)


def _write_side_file(run: _Run, extra: dict[str, Any]) -> None:
    import json

    jobs = [run.jobs[j] for j in sorted(run.jobs)]
    workers = [
        {k: v for k, v in run.reports[i].items() if k != "latency_ns"} for i in sorted(run.reports)
    ]
    data = {
        "run_id": run.run_id,
        "ring": run.ring,
        "home": str(run.home),
        "service": SERVICE,
        "machine_id": run.machine_id,
        "scheduler_worker_id": f"{run.machine_id}-scheduler",
        "workers": workers,
        "jobs": jobs,
        "completed_jobs": [j["job_id"] for j in jobs if j["status"] == "completed"],
        "failed_jobs": [j["job_id"] for j in jobs if j["status"] == "failed"],
        **extra,
    }
    tmp = run.side_file.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, run.side_file)


# ---- run -------------------------------------------------------------------------------


def _check_args(args: Any) -> str | None:
    if not 1 <= args.workers <= MAX_WORKERS:
        return f"--workers: {args.workers} is not in 1..{MAX_WORKERS}"
    if not 1 <= args.jobs <= MAX_JOBS:
        return f"--jobs: {args.jobs} is not in 1..{MAX_JOBS}"
    if not (math.isfinite(args.seconds) and args.seconds >= 0):
        return f"--seconds: {args.seconds} is not a number >= 0"
    return None


def run(args: Any) -> int:
    """``fastbuf demo``: exit 0 when every record reached the store, 1 when delivery is
    incomplete or the pipeline could not run, 2 for bad arguments."""
    problem = _check_args(args)
    if problem is not None:
        _err(problem)
        return EXIT_USAGE
    explicit_home = getattr(args, "home", None)
    try:
        home = paths.home(explicit_home or None)
        default = paths.home()
    except HomeError as exc:
        _err(str(exc))
        return EXIT_USAGE
    home_flag = ""
    if explicit_home and home.resolve() != default.resolve():
        home_flag = f" --home {shlex.quote(str(home))}"
    ring_name = getattr(args, "ring", None) or f"emp-fastbuf-demo-{os.getpid()}"
    run_id = secrets.token_hex(3)
    run = _Run(
        home=home,
        ring=ring_name,
        run_id=run_id,
        machine_id=f"demo-{run_id}",
        workers=args.workers,
        jobs_total=args.jobs,
        agent_log=home / f"demo-{ring_name}.agent.log",
        side_file=home / f"demo-{ring_name}.json",
    )
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Open the store as its writer once before the agent does: a foreign or corrupt
        # file is reported here in one line, and its size before the run is known.
        with Store(home / STORE_FILE) as store:
            size_before = store.size_bytes()
    except StoreError as exc:
        _err(str(exc))
        return EXIT_FAILED
    except OSError as exc:
        _err(f"cannot use {home}: {exc.strerror or exc}")
        return EXIT_FAILED
    try:
        ring = fastbuf.Ring.create(ring_name, 16 << 20, lanes=min(64, max(8, args.workers + 4)))
    except RingError as exc:
        _err(f"cannot create ring {ring_name!r}: {exc}")
        return EXIT_FAILED
    try:
        return _run_with_ring(args, run, ring, size_before, home_flag)
    finally:
        ring.close()
        try:
            fastbuf.Ring.unlink(ring_name)
        except RingError:
            pass


def _run_with_ring(
    args: Any, run: _Run, ring: fastbuf.Ring, size_before: int, home_flag: str
) -> int:
    agent = _start_agent(run, ring)
    if agent is None:
        return EXIT_FAILED
    procs: list[Any] = []
    # The demo is telemetry: a global "SDK disabled" switch would leave it nothing to
    # show. The spawned workers inherit this environment.
    os.environ.pop("OTEL_SDK_DISABLED", None)
    try:
        fastbuf.configure(
            service=SERVICE,
            machine_id=run.machine_id,
            worker_id=f"{run.machine_id}-scheduler",
            ring=run.ring,
            agent="external",
            resource_attributes={"emp.demo.run": run.run_id},
        )
        before = fastbuf.stats()["by_kind"]
        ctx = multiprocessing.get_context("spawn")
        jobs_q: Any = ctx.Queue()
        results_q: Any = ctx.Queue()
        seed = random.SystemRandom().randrange(1 << 30)
        settings = _settings(args, run, seed)
        work_started = time.monotonic()
        _enqueue(run, jobs_q, random.Random(seed))
        for _ in range(run.workers):
            jobs_q.put(None)
        for i in range(run.workers):
            p = ctx.Process(
                target=worker_main,
                args=(i, settings, jobs_q, results_q),
                name=f"fastbuf-demo-gpu{i}",
                daemon=True,
            )
            p.start()
            procs.append(p)
        _collect(run, procs, results_q)
        # From the first enqueue to the last job done (the flushes come after).
        run.work_seconds = max(0.0, run.last_job_done - work_started)
        for p in procs:
            p.join(timeout=30)
        after = fastbuf.stats()["by_kind"]
        run.scheduler_emitted = {k: after[k] - before[k] for k in KINDS}
        flushed = fastbuf.flush(30.0)
        if not flushed or not all(r.get("flushed") for r in run.reports.values()):
            run.problems.append("some records were not taken by the agent within 30 s")
        if not _wait_in_flight(ring, DELIVERY_TIMEOUT_S):
            run.problems.append(f"{ring.stats()['in_flight']} records still in the ring")
    finally:
        fastbuf.shutdown()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        code = _stop_agent(agent)
    if code != 0:
        run.problems.append(f"the agent exited with code {code}: {_last_line(run.agent_log)}")
    ring_stats = ring.stats()
    status = read_status(run.home, run.ring)
    if status is None:
        run.problems.append(f"the agent left no status file in {run.home}")
    else:
        if (status.get("spool") or {}).get("files"):
            run.problems.append(f"{status['spool']['files']} spool files were not delivered")
        taken = ring_stats["written"] - ring_stats["dropped"]
        if status["drained"]["records"] < taken:
            run.problems.append(
                f"the agent drained {status['drained']['records']} of {taken} records"
            )
    return _finish(run, ring_stats, status, size_before, home_flag)


def _finish(
    run: _Run,
    ring_stats: dict[str, Any],
    status: dict[str, Any] | None,
    size_before: int,
    home_flag: str,
) -> int:
    emitted: Counter[str] = Counter(run.scheduler_emitted)
    for rep in run.reports.values():
        emitted.update(rep.get("emitted", {}))
    try:
        with Store(run.home / STORE_FILE, readonly=True) as store:
            delivered = _read_back(store, run)
            store_bytes = max(0, store.size_bytes() - size_before)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_FAILED
    wire = _wire_bytes(delivered)
    missing = {k: emitted[k] - delivered.by_kind[k] for k in KINDS}
    if len(run.jobs) < run.jobs_total:
        run.problems.append(
            f"{run.jobs_total - len(run.jobs)} of {run.jobs_total} jobs did not run"
        )
    if any(v > 0 for v in missing.values()):
        run.problems.append(
            "delivery incomplete: missing "
            + ", ".join(f"{v} {k} records" for k, v in missing.items() if v > 0)
        )
    _write_side_file(
        run,
        {
            "emitted": {k: emitted[k] for k in KINDS},
            "scheduler_emitted": run.scheduler_emitted,
            "delivered": {k: delivered.by_kind[k] for k in KINDS},
            "agent_records": {k: delivered.agent[k] for k in KINDS},
            "dropped": ring_stats.get("dropped", 0),
            "complete": not run.problems,
            "problems": run.problems,
        },
    )
    _print_summary(run, emitted, delivered, ring_stats, status, store_bytes, wire, home_flag)
    for problem in run.problems:
        _err(problem)
    return EXIT_OK if not run.problems else EXIT_FAILED
