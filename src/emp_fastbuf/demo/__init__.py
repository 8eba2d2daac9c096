"""``fastbuf demo``: simulated GPU workers run image-generation jobs through the whole
pipeline (api -> ring -> agent -> spool -> local store), then a summary of what was
emitted, delivered and dropped, the workers' own emit latency, the failed jobs with the
first line of their cause (as ``fastbuf jobs --failed`` has them), and query commands to
try with real ids from the run, starting with ``fastbuf jobs --failed`` and ``fastbuf why``.

The parent process is the scheduler: it creates a private ring, starts a real
``fastbuf agent`` (local store only), enqueues the jobs, each inside a ``job.enqueue``
span whose ``traceparent`` travels with the job, and starts the workers (spawn start
method). Each worker continues the job's trace and records spans, logs, metrics and
events as a real worker would; two jobs in ten fail, one of them with an exception
nobody catches. The ids the run used go to
``<home>/demo-<ring>.json`` for scripts and tests.

The workers' side is in ``worker`` (public API only), the reading back and the summary
in ``report``.

``--seconds S`` (S > 0) scales the simulated work so that the whole run, setup and
teardown included, ends within S seconds; a run cannot be shorter than its setup and
teardown (about two seconds), which is what ``--seconds 0`` (no scaling) takes.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

import emp_fastbuf as fastbuf
from emp_fastbuf import paths
from emp_fastbuf.agent.status import read_status
from emp_fastbuf.demo.report import RunState, print_summary, read_back, wire_bytes, write_side_file
from emp_fastbuf.demo.worker import KINDS, SERVICE, DemoSettings, JobSpec, worker_main
from emp_fastbuf.errors import HomeError, RingError
from emp_fastbuf.paths import STORE_FILE
from emp_fastbuf.store import Store, StoreError

__all__ = ["run"]

MODELS = ("sdxl-base-1.0", "sdxl-turbo")
MAX_WORKERS = 32
MAX_JOBS = 100_000
# Nominal simulated work at --seconds 0, in seconds.
STEP_S = (0.001, 0.005)
LOAD_S = 0.04
UPLOAD_S = 0.01
# Time kept aside at the end of a --seconds run: the agent cuts a batch every second,
# then stops, then the store is read back.
TEARDOWN_RESERVE_S = 2.0
AGENT_START_TIMEOUT_S = 30.0
DELIVERY_TIMEOUT_S = 60.0
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# ---- the scheduler ---------------------------------------------------------------------


def _plan_jobs(
    run_id: str, n: int, rng: random.Random
) -> list[tuple[str, int, str, str, int, int | None, bool]]:
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
        # Two jobs in ten fail: the 4th of every ten logs its error (a handled one), the
        # 6th raises an exception nobody catches (crash capture records it). Even a
        # 4-job run shows a failure, a 6-job run both kinds.
        crash = i % 10 == 5
        fail_at = rng.randint(steps // 3, steps - 1) if i % 10 == 3 or crash else None
        model = MODELS[1] if i % 7 == 6 else MODELS[0]
        plan.append(
            (f"job-{run_id}-{i:04d}", i, model, prompts[i % len(prompts)], steps, fail_at, crash)
        )
    return plan


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


def _start_agent(run: RunState, ring: fastbuf.Ring) -> subprocess.Popen[bytes] | None:
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


def _settings(args: Any, run: RunState, seed: int) -> DemoSettings:
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


def _enqueue(run: RunState, jobs_q: Any, rng: random.Random) -> None:
    for job_id, index, model, prompt, steps, fail_at, crash in _plan_jobs(
        run.run_id, run.jobs_total, rng
    ):
        with (
            fastbuf.context(job_id=job_id),
            fastbuf.span("job.enqueue", queue="gpu", model=model) as s,
        ):
            tp = fastbuf.traceparent()
            assert tp is not None and s.trace_id is not None
            jobs_q.put(
                JobSpec(
                    job_id,
                    index,
                    model,
                    prompt,
                    steps,
                    fail_at,
                    crash,
                    tp,
                    s.trace_id,
                    time.time_ns(),
                )
            )


def _collect(run: RunState, procs: list[Any], results_q: Any) -> None:
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
    run = RunState(
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
    args: Any, run: RunState, ring: fastbuf.Ring, size_before: int, home_flag: str
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
    run: RunState,
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
            delivered = read_back(store, run)
            store_bytes = max(0, store.size_bytes() - size_before)
    except StoreError as exc:
        _err(str(exc))
        return EXIT_FAILED
    wire = wire_bytes(delivered)
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
    write_side_file(
        run,
        {
            "emitted": {k: emitted[k] for k in KINDS},
            "scheduler_emitted": run.scheduler_emitted,
            "delivered": {k: delivered.by_kind[k] for k in KINDS},
            "agent_records": {k: delivered.agent[k] for k in KINDS},
            "dropped": ring_stats.get("dropped", 0),
            # The failed jobs as `fastbuf jobs --failed` lists them, with their causes.
            "failed_in_store": {j.job_id: j.first_error for j in delivered.failed},
            "complete": not run.problems,
            "problems": run.problems,
        },
    )
    print_summary(run, emitted, delivered, ring_stats, status, store_bytes, wire, home_flag)
    for problem in run.problems:
        _err(problem)
    return EXIT_OK if not run.problems else EXIT_FAILED
