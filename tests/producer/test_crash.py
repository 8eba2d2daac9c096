"""Crash capture end to end: a real worker process dies of an uncaught exception (in the
main thread, a thread, an asyncio task) or of a fatal error (a segfault, an abort), and a
real agent started after it has exited delivers the ERROR record into the real store,
where ``fastbuf logs`` shows it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf import paths
from emp_fastbuf.cli.render import one_line
from emp_fastbuf.producer import _codec, api, crash
from emp_fastbuf.records import fatal
from emp_fastbuf.store import Store, StoredRecord, StoreError
from support.agent import AgentProc
from support.api import records

# The hooks the user had before fastbuf attached print a line, so the test sees them run.
WORKER = r"""
import asyncio, ctypes, gc, os, resource, sys, threading
import emp_fastbuf as fastbuf
ring, mode = sys.argv[1], sys.argv[2]
job_id = "job-" + mode
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a fatal error leaves no core file

_prev_sys = sys.excepthook
def user_excepthook(t, e, tb):
    print("user excepthook:", t.__name__, flush=True)
    _prev_sys(t, e, tb)
sys.excepthook = user_excepthook

_prev_thread = threading.excepthook
def user_thread_hook(args):
    print("user thread hook:", args.exc_type.__name__, flush=True)
    _prev_thread(args)
threading.excepthook = user_thread_hook

fastbuf.configure(service="crash-svc", machine_id="m-1", worker_id="w-" + mode, ring=ring,
                  agent="external")

def load_model(path):
    raise RuntimeError("CUDA out of memory: tried to allocate 2.00 GiB")  # the raise

def job():
    with fastbuf.context(job_id=job_id):
        with fastbuf.span("job"):
            with fastbuf.span("load") as inner:
                print("ids", inner.trace_id, inner.span_id, flush=True)
                load_model("model.bin")

async def ajob():
    with fastbuf.context(job_id=job_id):
        with fastbuf.span("job"):
            with fastbuf.span("load") as inner:
                print("ids", inner.trace_id, inner.span_id, flush=True)
                await asyncio.sleep(0)
                load_model("model.bin")

async def amain():
    loop = asyncio.get_running_loop()
    def user_loop_handler(loop, context):
        print("user loop handler:", type(context.get("exception")).__name__, flush=True)
    loop.set_exception_handler(user_loop_handler)
    task = loop.create_task(ajob())
    await asyncio.sleep(0.05)
    del task  # never awaited: its exception reaches the loop's handler
    gc.collect()

if mode in ("main", "optout"):
    job()
elif mode == "thread":
    t = threading.Thread(target=job, name="trainer-thread")
    t.start()
    t.join()
    fastbuf.log.info("main thread goes on")
elif mode == "asyncio":
    asyncio.run(amain())
elif mode == "nospan":
    with fastbuf.context(job_id=job_id):
        load_model("model.bin")
elif mode == "long":
    def chain(n):
        try:
            if n == 0:
                raise KeyError("bottom")
            chain(n - 1)
        except KeyError as exc:
            raise KeyError(f"level {n}") from exc
    with fastbuf.context(job_id=job_id):
        chain(20)
elif mode == "handled":
    try:
        job()
    except RuntimeError:
        fastbuf.log.info("handled it")
elif mode in ("segv", "abort"):
    def die():
        ctypes.string_at(0) if mode == "segv" else os.abort()  # the fatal error
    with fastbuf.context(job_id=job_id):
        with fastbuf.context(job_id="job-done-before"):
            fastbuf.log.info("a job that ended")
        with fastbuf.span("job"):
            fastbuf.log.info("about to die")
            die()
elif mode == "fork":
    pid = os.fork()
    if pid == 0:
        with fastbuf.context(job_id="job-child"):
            fastbuf.log.info("about to die")
            ctypes.string_at(0)
    os.waitpid(pid, 0)
    print("child", pid, flush=True)
    with fastbuf.context(job_id=job_id):
        fastbuf.log.info("the parent goes on")
"""

RAISE_LINE = next(i for i, line in enumerate(WORKER.splitlines(), 1) if "# the raise" in line)
FATAL_LINE = next(i for i, line in enumerate(WORKER.splitlines(), 1) if "# the fatal" in line)


def run_crashing_worker(
    tmp_path: Path, ring: str, mode: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "crashing_worker.py"
    script.write_text(WORKER)
    return subprocess.run(
        [sys.executable, str(script), ring, mode],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "EMP_FASTBUF_AGENT": "external", **(env or {})},
    )


def ids_of(out: str) -> tuple[str, str]:
    line = next(line for line in out.splitlines() if line.startswith("ids "))
    _, trace_id, span_id = line.split()
    return trace_id, span_id


def deliver(home: Path, ring: str, ready: Callable[[Store], bool]) -> Store:
    """Start an agent now (the worker has exited), wait until ``ready(store)``, stop it;
    the store, open."""
    path = home / "store.sqlite"
    agent = AgentProc(ring, home)
    deadline = time.monotonic() + 60
    try:
        while True:
            if path.exists():
                try:
                    with Store(path, readonly=True) as store:
                        if ready(store):
                            break
                except StoreError:
                    pass  # the agent is still creating the store
            assert time.monotonic() < deadline, agent.output()[-3000:]
            time.sleep(0.1)
    finally:
        assert agent.stop() == 0
    return Store(path)


def has_job_error(job: str, trace_id: str | None = None) -> Callable[[Store], bool]:
    """Ready when the job's ERROR record and, with ``trace_id``, both spans are stored."""

    def ready(store: Store) -> bool:
        if not errors(store.logs(job=job)):
            return False
        return trace_id is None or has_spans(trace_id)(store)

    return ready


def has_spans(trace_id: str) -> Callable[[Store], bool]:
    def ready(store: Store) -> bool:
        view = store.trace(trace_id)
        return view is not None and len(view.spans) == 2

    return ready


def errors(recs: list[StoredRecord]) -> list[StoredRecord]:
    return [r for r in recs if r.severity_number == 17]


def assert_crash_record(rec: StoredRecord, trace_id: str | None, span_id: str | None) -> None:
    assert rec.severity_number == 17 and rec.severity_text == "ERROR"
    a = rec.attributes
    assert a["exception.type"] == "RuntimeError"
    assert a["exception.message"] == "CUDA out of memory: tried to allocate 2.00 GiB"
    stack = a["exception.stacktrace"]
    assert stack.startswith("Traceback (most recent call last):")
    assert f"line {RAISE_LINE}, in load_model" in stack
    assert 'raise RuntimeError("CUDA out of memory' in stack
    assert stack.rstrip().endswith("RuntimeError: CUDA out of memory: tried to allocate 2.00 GiB")
    assert rec.body == "RuntimeError: CUDA out of memory: tried to allocate 2.00 GiB"
    assert rec.trace_id == trace_id and rec.span_id == span_id
    assert rec.service == "crash-svc"


def assert_span_event(
    store: Store, trace_id: str, span_id: str, err: StoredRecord | None = None
) -> None:
    """The inner span ended with status error and one exception event, whose three
    attributes are the record's (its stack trace at the value limit)."""
    view = store.trace(trace_id)
    assert view is not None
    spans = {n.span.span_id: n.span for n in view.spans}
    inner = spans[span_id]
    assert inner.name == "load" and inner.status_code == 2
    (event,) = inner.events
    assert event["name"] == "exception"
    ea = event["attributes"]
    assert ea["exception.type"] == "RuntimeError"
    assert ea["exception.message"] == "CUDA out of memory: tried to allocate 2.00 GiB"
    assert f"line {RAISE_LINE}, in load_model" in ea["exception.stacktrace"]
    if err is not None:
        for key in ("exception.type", "exception.message"):
            assert ea[key] == err.attributes[key]
        assert ea["exception.stacktrace"] == crash.clip(err.attributes["exception.stacktrace"])


def assert_cli_shows(home: Path, job: str, err: StoredRecord) -> None:
    """``fastbuf logs --job JOB --level error``, piped: the one record, its type, message
    and the raise's function and line, and the whole stack trace, uncut."""
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--job", job, "--level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_HOME": str(home)},
    )
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    assert f"[{job}] trace:{err.trace_id[:8]} ERROR RuntimeError: CUDA out of memory:" in line
    assert "tried to allocate 2.00 GiB" in line
    assert "exception.type=RuntimeError" in line
    assert f'line {RAISE_LINE}, in load_model\\n    raise RuntimeError("CUDA out of memory' in line
    stack = str(err.attributes["exception.stacktrace"])
    assert len(stack) > 120  # longer than a terminal view's attribute column
    assert one_line(stack) in line


def test_uncaught_exception_in_nested_spans_is_one_error_record_of_the_innermost_span(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "main")
    assert out.returncode == 1
    # The previous hook still ran: the user's line and Python's own traceback.
    assert "user excepthook: RuntimeError" in out.stdout
    assert "Traceback (most recent call last):" in out.stderr
    trace_id, span_id = ids_of(out.stdout)
    with deliver(env_clean, agent_ring, has_job_error("job-main", trace_id)) as store:
        # Written where it left the inner span; the outer span and sys.excepthook wrote
        # no other: one record, not three.
        (err,) = errors(store.logs())
        assert_crash_record(err, trace_id, span_id)
        assert err.job_id == "job-main"
        # The whole stack, the callers of the span's frame too (the module level): what
        # Python printed when the exception reached the top.
        assert err.attributes["exception.stacktrace"] == out.stderr
        assert "in <module>" in out.stderr and "in job" in out.stderr
        assert_span_event(store, trace_id, span_id, err)
    assert_cli_shows(env_clean, "job-main", err)


def test_uncaught_exception_in_a_thread(env_clean: Path, agent_ring: str, tmp_path: Path) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "thread")
    assert out.returncode == 0, out.stderr
    assert "user thread hook: RuntimeError" in out.stdout
    trace_id, span_id = ids_of(out.stdout)
    with deliver(env_clean, agent_ring, has_job_error("job-thread", trace_id)) as store:
        (err,) = errors(store.logs())
        assert_crash_record(err, trace_id, span_id)
        assert err.job_id == "job-thread"
        # Written at the span, before the thread hook ran: it names the thread too.
        assert err.attributes["thread.name"] == "trainer-thread"
        stack = str(err.attributes["exception.stacktrace"])
        # What Python printed from the thread's run() down, with the thread's callers above.
        printed = out.stderr.split("Traceback (most recent call last):\n", 1)[1]
        assert stack.endswith(printed)
        assert "in _bootstrap\n" in stack and "in run\n" in printed
        assert_span_event(store, trace_id, span_id, err)
    assert_cli_shows(env_clean, "job-thread", err)


def test_unhandled_exception_of_an_asyncio_task(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "asyncio")
    assert out.returncode == 0, out.stderr
    # The handler the user set on the loop still runs.
    assert "user loop handler: RuntimeError" in out.stdout
    trace_id, span_id = ids_of(out.stdout)
    with deliver(env_clean, agent_ring, has_job_error("job-asyncio", trace_id)) as store:
        (err,) = errors(store.logs())
        assert_crash_record(err, trace_id, span_id)
        assert err.job_id == "job-asyncio"
        stack = str(err.attributes["exception.stacktrace"])
        # The task's coroutine and what ran it: the event loop, asyncio.run, the module.
        assert "in ajob" in stack and "in run_until_complete" in stack
        assert "asyncio.run(amain())" in stack
        assert_span_event(store, trace_id, span_id, err)
    assert_cli_shows(env_clean, "job-asyncio", err)


def test_uncaught_exception_outside_spans_keeps_the_job_context(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "nospan")
    assert out.returncode == 1
    assert "user excepthook: RuntimeError" in out.stdout
    with deliver(env_clean, agent_ring, has_job_error("job-nospan")) as store:
        (err,) = errors(store.logs())
        assert_crash_record(err, None, None)
        assert err.job_id == "job-nospan"


def test_a_long_stack_trace_arrives_whole_in_the_store(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "long")
    assert out.returncode == 1
    with deliver(env_clean, agent_ring, has_job_error("job-long")) as store:
        (err,) = errors(store.logs())
    stack = err.attributes["exception.stacktrace"]
    # Python's own output on stderr, after the user's hook printed its line.
    assert stack == out.stderr
    assert len(stack) > 4096
    assert stack.count("The above exception was the direct cause") == 21
    assert "KeyError: 'bottom'" in stack and stack.rstrip().endswith("KeyError: 'level 20'")


def test_an_exception_that_left_spans_is_one_error_record_even_if_handled_after(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "handled")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    trace_id, span_id = ids_of(out.stdout)
    ready = has_spans(trace_id)
    with deliver(
        env_clean, agent_ring, lambda s: ready(s) and bool(s.logs(grep="handled it"))
    ) as store:
        # The inner span wrote it, the outer one did not write another.
        (err,) = errors(store.logs())
        assert_crash_record(err, trace_id, span_id)
        assert err.job_id == "job-handled"
        # From the module level (the caller of job()) down to the raise.
        stack = str(err.attributes["exception.stacktrace"])
        assert "in <module>\n    job()\n" in stack and "in job\n" in stack
        assert_span_event(store, trace_id, span_id, err)


@pytest.mark.parametrize("value", ["false", "0", "OFF"])
def test_opt_out_writes_no_record_and_keeps_the_previous_hook(
    env_clean: Path, agent_ring: str, tmp_path: Path, value: str
) -> None:
    out = run_crashing_worker(
        tmp_path, agent_ring, "optout", env={"EMP_FASTBUF_CAPTURE_EXCEPTIONS": value}
    )
    assert out.returncode == 1
    assert "user excepthook: RuntimeError" in out.stdout
    assert "Traceback (most recent call last):" in out.stderr
    trace_id, span_id = ids_of(out.stdout)
    with deliver(env_clean, agent_ring, has_spans(trace_id)) as store:
        assert errors(store.logs()) == []
        view = store.trace(trace_id)
    assert view is not None
    # The spans still arrive, with the exception event they always had.
    inner = next(n.span for n in view.spans if n.span.span_id == span_id)
    assert inner.status_code == 2
    (event,) = inner.events
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert "exception.stacktrace" not in event["attributes"]


# ---- fatal errors: faulthandler's dump, which the agent delivers -----------------------


def crash_files(home: Path) -> list[Path]:
    directory = home / paths.CRASH_DIR
    return sorted(directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize(
    ("mode", "kind", "signum"),
    [("segv", "Segmentation fault", signal.SIGSEGV), ("abort", "Aborted", signal.SIGABRT)],
)
def test_a_fatal_error_is_one_error_record_of_the_process_and_its_job(
    env_clean: Path, agent_ring: str, tmp_path: Path, mode: str, kind: str, signum: int
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, mode)
    assert out.returncode == -signum
    assert "Fatal Python error" not in out.stderr  # the dump went to the process's file
    (dump,) = crash_files(env_clean)
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600
    assert stat.S_IMODE(dump.parent.stat().st_mode) == 0o700
    assert dump.stat().st_size > fatal.HEADER_SIZE
    with deliver(env_clean, agent_ring, has_job_error(f"job-{mode}")) as store:
        (err,) = errors(store.logs())
    # The job of the context open when it died, not of one that had closed.
    assert err.job_id == f"job-{mode}"
    assert (err.service, err.machine_id, err.worker_id) == ("crash-svc", "m-1", f"w-{mode}")
    assert err.severity_text == "ERROR" and err.trace_id is None
    a = err.attributes
    assert a["exception.type"] == kind
    assert a["exception.message"] == err.body == f"Fatal Python error: {kind}"
    stack = str(a["exception.stacktrace"])
    assert stack.startswith(f"Fatal Python error: {kind}\n")
    # faulthandler's frames: the function that died and its callers.
    assert f"line {FATAL_LINE} in die" in stack and "in <module>" in stack
    # Spooled, so removed.
    assert crash_files(env_clean) == []


def test_a_forked_child_dumps_into_a_file_of_its_own(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "fork")
    assert out.returncode == 0, out.stderr
    child = int(next(ln for ln in out.stdout.splitlines() if ln.startswith("child ")).split()[1])
    files = crash_files(env_clean)
    assert len(files) == 2
    (child_file,) = [f for f in files if f.name.startswith(f"{child}-")]
    (parent_file,) = [f for f in files if f is not child_file]
    assert parent_file.stat().st_size == fatal.HEADER_SIZE  # the parent's stayed empty

    def ready(store: Store) -> bool:
        return has_job_error("job-child")(store) and bool(store.logs(grep="the parent goes on"))

    with deliver(env_clean, agent_ring, ready) as store:
        (err,) = errors(store.logs())
    assert err.job_id == "job-child"
    assert err.attributes["exception.type"] == "Segmentation fault"
    assert crash_files(env_clean) == []  # the dump spooled, the parent's empty file too


def test_opt_out_enables_no_fatal_error_file(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(
        tmp_path, agent_ring, "segv", env={"EMP_FASTBUF_CAPTURE_EXCEPTIONS": "false"}
    )
    assert out.returncode == -signal.SIGSEGV
    assert crash_files(env_clean) == []
    with deliver(env_clean, agent_ring, lambda s: bool(s.logs(grep="about to die"))) as store:
        assert errors(store.logs()) == []


# What faulthandler and the process's file are before and after shutdown().
PROBE = r"""
import faulthandler, json, os, sys
if sys.argv[2] == "own":
    faulthandler.enable()
import emp_fastbuf as fastbuf
directory = os.path.join(os.environ["EMP_FASTBUF_HOME"], "crashes")
def files():
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []
fastbuf.configure(service="probe", ring=sys.argv[1], agent="external")
before, on = files(), faulthandler.is_enabled()
fastbuf.shutdown()
print(json.dumps({"pid": os.getpid(), "before": before, "on": on, "after": files(),
                  "still_on": faulthandler.is_enabled()}))
"""


def probe(ring: str, mode: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, ring, mode],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_shutdown_turns_faulthandler_off_and_removes_the_empty_file(
    env_clean: Path, agent_ring: str
) -> None:
    got = probe(agent_ring, "ours")
    (name,) = got["before"]
    assert name.startswith(f"{got['pid']}-") and name.endswith(".fatal")
    assert got["on"] and not got["still_on"]
    assert got["after"] == []


def test_a_faulthandler_the_process_enabled_is_left_alone(env_clean: Path, agent_ring: str) -> None:
    got = probe(agent_ring, "own")
    assert got["before"] == [] and got["after"] == []
    assert got["on"] and got["still_on"]


def test_the_empty_file_of_a_process_that_exited_is_removed_by_the_agent(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "thread")  # exits 0, after the hook
    assert out.returncode == 0, out.stderr
    (left,) = crash_files(env_clean)
    assert left.stat().st_size == fatal.HEADER_SIZE  # faulthandler stayed on to the end
    with deliver(env_clean, agent_ring, has_job_error("job-thread")):
        pass
    assert crash_files(env_clean) == []


FIRST = r"""
import emp_fastbuf as fastbuf
try:
    with fastbuf.span("first"):
        raise ValueError("before any record")
except ValueError:
    pass
"""


def test_a_span_exception_that_is_the_first_record_attaches_and_is_written(
    env_clean: Path, agent_ring: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FIRST],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_RING": agent_ring},
    )
    assert out.returncode == 0, out.stderr
    with fastbuf.Ring.open(agent_ring) as r:
        log, span = records(r)
    assert log.severity_number == 17 and log.body == "ValueError: before any record"
    assert (log.trace_id, log.span_id) == (span.trace_id, span.span_id)


# ---- asyncio is wrapped whenever it is imported, and not imported for it ----------------

LOOPS = r"""
import gc, sys
ring, order = sys.argv[1], sys.argv[2]
if order == "asyncio-first":
    import asyncio
import emp_fastbuf as fastbuf
fastbuf.configure(service="loops", ring=ring, agent="external")
print("asyncio after configure:", "asyncio" in sys.modules, flush=True)
import asyncio
print("watching:", any(type(f).__name__ == "_LoopWatch" for f in sys.meta_path), flush=True)
print("wrapped:", hasattr(asyncio.BaseEventLoop.call_exception_handler, "__wrapped__"))
print("loader:", type(sys.modules["asyncio.base_events"].__loader__).__name__, flush=True)

async def lost():
    raise KeyError("a task nobody awaited")

async def main():
    task = asyncio.get_running_loop().create_task(lost())
    await asyncio.sleep(0.01)
    del task
    gc.collect()

asyncio.run(main())
"""


@pytest.mark.parametrize("order", ["asyncio-first", "asyncio-later"])
def test_asyncio_loops_are_covered_whether_imported_before_or_after(
    env_clean: Path, agent_ring: str, order: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-c", LOOPS, agent_ring, order],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Attaching does not import asyncio; the finder took itself off once it wrapped.
    assert f"asyncio after configure: {order == 'asyncio-first'}" in lines
    assert "watching: False" in lines and "wrapped: True" in lines
    assert "loader: SourceFileLoader" in lines
    with fastbuf.Ring.open(agent_ring) as r:
        recs = records(r)
    (err,) = [rec for rec in recs if rec.severity_number == 17]
    assert err.attributes["exception.type"] == "KeyError"
    assert err.attributes["exception.message"] == "'a task nobody awaited'"
    assert "in lost" in str(err.attributes["exception.stacktrace"])


# ---- in this process: the hooks never raise and never block the previous one ----------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_a_hook_survives_an_unprintable_exception_and_runs_the_previous_one(
    ring: fastbuf.Ring,
) -> None:
    seen: list[object] = []
    hook = crash._sys_hook(lambda t, e, tb: seen.append(t))
    exc = _raised(Unprintable())
    hook(type(exc), exc, exc.__traceback__)
    assert seen == [Unprintable]
    (rec,) = records(ring)
    assert rec.severity_number == 17 and rec.severity_text == "ERROR"
    assert rec.attributes["exception.type"] == "Unprintable"
    assert rec.attributes["exception.message"] == "<unprintable Unprintable>"
    assert "Traceback" in str(rec.attributes["exception.stacktrace"])


def test_one_exception_is_one_record_whichever_hooks_see_it(ring: fastbuf.Ring) -> None:
    exc = _raised(RuntimeError("once"))
    thread_args = type(
        "Args",
        (),
        {
            "exc_type": RuntimeError,
            "exc_value": exc,
            "exc_traceback": exc.__traceback__,
            "thread": None,
        },
    )()
    crash._sys_hook(lambda *a: None)(RuntimeError, exc, exc.__traceback__)
    crash._thread_hook(lambda a: None)(thread_args)
    assert len(records(ring)) == 1


def _chained(levels: int) -> KeyError:
    """A KeyError with ``levels`` causes: a long traceback of distinct frames."""

    def chain(n: int) -> None:
        try:
            if n == 0:
                raise KeyError("bottom")
            chain(n - 1)
        except KeyError as exc:
            raise KeyError(f"level {n}") from exc

    try:
        chain(levels)
    except KeyError as exc:
        return exc
    raise AssertionError("unreachable")


def test_a_crash_record_keeps_a_stack_trace_longer_than_the_value_limit(
    ring: fastbuf.Ring,
) -> None:
    exc = _chained(40)
    full = "".join(traceback.format_exception(exc))
    assert 4096 < len(full) < crash.STACKTRACE_MAX_CHARS
    assert crash.record(exc)
    (rec,) = records(ring)
    assert rec.attributes["exception.stacktrace"] == full
    assert _codec.get_limits()["max_value_length"] == 4096  # back after the record
    assert rec.attributes["exception.message"] == "'level 40'"


def test_a_lower_log_record_limit_still_keeps_the_whole_stack_trace(ring: fastbuf.Ring) -> None:
    """OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT below the general limit: the crash
    record's stack trace is raised over the log limit, not cut at its end by it."""
    exc = _chained(10)
    full = "".join(traceback.format_exception(exc))
    assert 200 < len(full) < 4096
    _codec.set_limits(log_value_length=200)
    try:
        assert crash.record(exc)
    finally:
        _codec.set_limits(log_value_length=4096)
    (rec,) = records(ring)
    assert rec.attributes["exception.stacktrace"] == full


def test_a_longer_stack_trace_is_cut_in_the_middle(ring: fastbuf.Ring) -> None:
    exc = _chained(300)
    assert crash.record(exc)
    (rec,) = records(ring)
    stack = str(rec.attributes["exception.stacktrace"])
    assert len(stack) == crash.STACKTRACE_MAX_CHARS
    assert stack.startswith("Traceback (most recent call last):\n  ...\n")
    assert stack.rstrip().endswith("KeyError: 'level 300'")


def test_a_ring_with_small_records_gets_a_shorter_stack_trace(
    ring: fastbuf.Ring, ring_name: str
) -> None:
    small = ring_name + "-small"
    fastbuf.Ring.create(small, 4 << 20, lanes=4, max_record=8192).close()
    try:
        fastbuf.configure(ring=small)
        exc = _chained(300)
        assert crash.record(exc)
        r = api.ring()
        assert r is not None
        (rec,) = records(r)
        stack = str(rec.attributes["exception.stacktrace"])
        assert len(stack) == 4096  # half of 8 KiB is below the value limit: the limit
        assert stack.rstrip().endswith("KeyError: 'level 300'")
        assert fastbuf.stats()["dropped"] == 0
    finally:
        fastbuf.configure(ring=ring_name)
        fastbuf.Ring.unlink(small)


def _fail(message: str) -> None:
    raise RuntimeError(message)


def test_a_span_writes_the_record_once_at_the_innermost_span(ring: fastbuf.Ring) -> None:
    with pytest.raises(RuntimeError), fastbuf.span("outer"), fastbuf.span("inner") as inner:
        _fail("deep down")
    log, inner_rec, outer_rec = records(ring)
    assert log.severity_number == 17 and log.span_id is not None
    assert log.span_id.hex() == inner.span_id
    assert (inner_rec.name, outer_rec.name) == ("inner", "outer")
    # Both spans have the event; only the inner one wrote a record, and the hooks skip it.
    assert [e.name for r in (inner_rec, outer_rec) for e in r.events] == ["exception"] * 2
    exc = _raised_in_spans()
    assert not crash.record(exc)
    stack = str(log.attributes["exception.stacktrace"])
    assert "in _fail\n    raise RuntimeError(message)\n" in stack
    assert "in test_a_span_writes_the_record_once_at_the_innermost_span\n" in stack


def _raised_in_spans() -> BaseException:
    try:
        with fastbuf.span("s"):
            _fail("inside")
    except RuntimeError as exc:
        return exc
    raise AssertionError("unreachable")


@fastbuf.traced
def _descend(n: int) -> None:
    if n == 0:
        _fail("at the bottom")
    _descend(n - 1)


def test_a_recursive_traced_function_is_one_record_and_one_stack_for_every_span(
    ring: fastbuf.Ring,
) -> None:
    with pytest.raises(RuntimeError):
        _descend(40)
    recs = records(ring)
    (log,) = [r for r in recs if r.severity_number == 17]
    spans = [r for r in recs if r.kind == 3]
    assert len(spans) == 41
    stack = str(log.attributes["exception.stacktrace"])
    assert stack.count("in _descend\n") == 41
    # Each span's event has the whole stack, which is the same for all of them.
    assert {str(s.events[0].attributes["exception.stacktrace"]) for s in spans} == {
        crash.clip(stack)
    }


def test_an_exception_raised_again_elsewhere_gets_the_stack_of_there(ring: fastbuf.Ring) -> None:
    try:
        with fastbuf.span("first"):
            _fail("once")
    except RuntimeError as exc:
        saved = exc

    def again() -> None:
        with fastbuf.span("second"):
            raise saved

    with pytest.raises(RuntimeError):
        again()
    log, first, second = records(ring)
    assert log.severity_number == 17 and (first.name, second.name) == ("first", "second")
    assert "in again" not in str(first.events[0].attributes["exception.stacktrace"])
    assert "in again\n    raise saved\n" in str(second.events[0].attributes["exception.stacktrace"])


def test_a_context_left_inside_the_span_gives_the_record_its_job(ring: fastbuf.Ring) -> None:
    with pytest.raises(RuntimeError), fastbuf.span("job") as s, fastbuf.context(job_id="job-9"):
        _fail("in the job")
    log, span = records(ring)
    assert log.severity_number == 17 and log.context == {"job_id": "job-9"}
    assert log.span_id is not None and log.span_id.hex() == s.span_id
    assert span.context == {}


@pytest.mark.parametrize("exc", [SystemExit(3), asyncio.CancelledError(), GeneratorExit()])
def test_control_flow_leaving_a_span_writes_no_record(
    ring: fastbuf.Ring, exc: BaseException
) -> None:
    with pytest.raises(type(exc)), fastbuf.span("s"):
        raise exc
    (span,) = records(ring)
    assert span.status_code == 2 and span.events[0].name == "exception"


def test_a_span_whose_status_is_ok_writes_no_record(ring: fastbuf.Ring) -> None:
    with pytest.raises(RuntimeError), fastbuf.span("outer") as outer, fastbuf.span("inner") as s:
        s.set_status("ok")
        _fail("expected")
    inner, log, _outer = records(ring)
    # The span that says it is fine has no event; the one above it records the exception.
    assert inner.status_code == 1 and inner.events == []
    assert log.severity_number == 17
    assert log.span_id is not None and log.span_id.hex() == outer.span_id


def test_opt_out_leaves_spans_their_plain_event(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(crash.ENV, "false")
    with pytest.raises(RuntimeError), fastbuf.span("s"):
        _fail("quiet")
    (span,) = records(ring)
    assert span.events[0].attributes == {
        "exception.type": "RuntimeError",
        "exception.message": "RuntimeError: quiet",
    }


def test_nothing_is_written_after_shutdown(ring: fastbuf.Ring) -> None:
    fastbuf.shutdown()
    assert not crash.record(_raised(RuntimeError("late")))
    assert api.ring() is None  # it did not attach again
