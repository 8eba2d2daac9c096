"""What runs in each simulated GPU worker process of ``fastbuf demo``: a job loop that
records spans, logs, metrics and events as a real image-generation worker would.

It uses the public ``emp_fastbuf`` API only, as code copied from it should.
"""

from __future__ import annotations

import array
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import emp_fastbuf as fastbuf

__all__ = ["KINDS", "SERVICE", "STEP_BOUNDS_MS", "DemoSettings", "JobSpec", "worker_main"]

SERVICE = "image-gen"
KINDS = ("log", "event", "span", "metric")
# Histogram bounds for step durations in ms: the default OpenTelemetry bounds are too
# coarse below 5 ms, where the demo's simulated steps are.
STEP_BOUNDS_MS = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0)
GPU_MEMORY_BASE = 7_340_032_000  # bytes a loaded model keeps on the GPU
GPU_MEMORY_ACTIVATIONS = 2_684_354_560


class SimulatedGpuError(RuntimeError):
    """The failure one job in ten runs into, which the job catches and logs."""


class SimulatedGpuCrash(RuntimeError):
    """The failure another job in ten runs into, which nothing catches: it leaves the
    job's spans and ends the job's thread, and only crash capture records it."""


@dataclass(frozen=True)
class JobSpec:
    """One job as the scheduler hands it to a worker."""

    job_id: str
    index: int
    model: str
    prompt: str
    steps: int
    fail_at: int | None  # the step that raises, or None
    crash: bool  # what raises at fail_at: SimulatedGpuCrash (uncaught), else SimulatedGpuError
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
        """Run one job on a job thread, as a worker that keeps a job off its main loop
        would; returns what it did (for the side file). A job whose exception nobody
        catches ends its thread; the worker goes on with the next job."""
        before = fastbuf.stats()["by_kind"]
        result: dict[str, Any] = {
            "job_id": job.job_id,
            "trace_id": job.trace_id,
            "worker_id": self.worker_id,
            "machine_id": self.settings.machine_id,
            "model": job.model,
            "status": "completed",
            "steps_run": 0,
            "model_loaded": False,
            "error": None,  # the class of the exception that failed it
            "message": None,  # and its message
        }
        spans = ["job.enqueue", "queue.wait", "job"]
        thread = threading.Thread(
            target=self._job, args=(job, result, spans), name=f"job-{job.index}"
        )
        thread.start()
        thread.join()
        if result["status"] == "running":  # the job's exception ended the thread
            result["status"] = "failed"
            with fastbuf.continue_trace(job.traceparent), fastbuf.context(job_id=job.job_id):
                self.timer.call(
                    fastbuf.event, "job.failed", step=result["steps_run"] - 1, reason="crash"
                )
            self.timer.call(self.failed.inc, 1, model=job.model, reason="crash")
            # The CUDA context is gone with the crash: reload on the next job.
            self.loaded = None
            self.timer.call(self.gpu_memory.set, 0, gpu=self.index)
        after = fastbuf.stats()["by_kind"]
        result["spans"] = dict(Counter(spans))
        result["emitted"] = {k: after[k] - before[k] for k in KINDS}
        return result

    def _failure(self, job: JobSpec, result: dict[str, Any]) -> Exception:
        """The exception job ``job`` fails with (noted in its result)."""
        if job.crash:
            exc: Exception = SimulatedGpuCrash(
                f"CUDA error: an illegal memory access was encountered on gpu {self.index}"
                " (simulated)"
            )
        else:
            exc = SimulatedGpuError(
                f"CUDA out of memory: tried to allocate 2.50 GiB on gpu {self.index} (simulated)"
            )
        result["error"], result["message"] = type(exc).__name__, str(exc)
        return exc

    def _job(self, job: JobSpec, result: dict[str, Any], spans: list[str]) -> None:
        picked_ns = time.time_ns()
        t = self.timer
        result["status"] = "running"
        with fastbuf.continue_trace(job.traceparent), fastbuf.context(job_id=job.job_id):
            # The wait happened before this worker ran anything: a span with the
            # enqueue time as its start, a sibling of the job span under job.enqueue.
            wait_ms = round((picked_ns - job.enqueued_ns) / 1e6, 3)
            t.call(
                fastbuf.record_span,
                "queue.wait",
                job.enqueued_ns,
                picked_ns,
                attributes={"queue": "gpu", "wait_ms": wait_ms},
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
                                    raise self._failure(job, result)
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
                    result["status"] = "completed"
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


def worker_main(index: int, settings: DemoSettings, jobs: Any, results: Any) -> None:
    """Entry point of a worker process: take jobs off ``jobs`` until ``None``, report
    each to ``results``, flush, then report the totals and the emit latencies."""
    # The demo always writes to its own ring, whatever the environment says.
    for var in ("OTEL_SDK_DISABLED", "EMP_FASTBUF_RING", "OTEL_RESOURCE_ATTRIBUTES"):
        os.environ.pop(var, None)
    worker_id = f"{settings.machine_id}-gpu{index}"
    # A job thread's uncaught exception reaches the store as an ERROR record with its
    # stack trace (crash capture, installed by configure, runs before this hook); the
    # demo's terminal shows the summary, not the traceback too.
    threading.excepthook = lambda _args: None
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
