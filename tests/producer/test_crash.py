"""Crash capture end to end: a real worker process dies of an uncaught exception (in the
main thread, a thread, an asyncio task), and a real agent started after it has exited
delivers the ERROR record into the real store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import _codec, api, crash
from emp_fastbuf.store import Store, StoredRecord, StoreError
from support.agent import AgentProc
from support.api import records

# The hooks the user had before fastbuf attached print a line, so the test sees them run.
WORKER = r"""
import asyncio, gc, sys, threading
import emp_fastbuf as fastbuf
ring, mode = sys.argv[1], sys.argv[2]
job_id = "job-" + mode

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
"""

RAISE_LINE = next(i for i, line in enumerate(WORKER.splitlines(), 1) if "# the raise" in line)


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


def assert_span_event(store: Store, trace_id: str, span_id: str) -> None:
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
        # It left two spans and reached sys.excepthook: one record, not three.
        (err,) = errors(store.logs())
        assert_crash_record(err, trace_id, span_id)
        assert err.job_id == "job-main"
        # The main thread's whole stack: the module level, job() and the raise.
        assert "in <module>" in err.attributes["exception.stacktrace"]
        assert "in job" in err.attributes["exception.stacktrace"]
        assert_span_event(store, trace_id, span_id)


def test_uncaught_exception_in_a_thread(env_clean: Path, agent_ring: str, tmp_path: Path) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "thread")
    assert out.returncode == 0, out.stderr
    assert "user thread hook: RuntimeError" in out.stdout
    trace_id, span_id = ids_of(out.stdout)
    with deliver(env_clean, agent_ring, has_job_error("job-thread", trace_id)) as store:
        (err,) = errors(store.logs())
        assert_crash_record(err, trace_id, span_id)
        assert err.job_id == "job-thread"
        assert err.attributes["thread.name"] == "trainer-thread"
        assert_span_event(store, trace_id, span_id)


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
        assert "in ajob" in err.attributes["exception.stacktrace"]
        assert_span_event(store, trace_id, span_id)


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


def test_an_exception_handled_after_leaving_spans_is_no_error_record(
    env_clean: Path, agent_ring: str, tmp_path: Path
) -> None:
    out = run_crashing_worker(tmp_path, agent_ring, "handled")
    assert out.returncode == 0, out.stderr
    trace_id, span_id = ids_of(out.stdout)
    ready = has_spans(trace_id)
    with deliver(
        env_clean, agent_ring, lambda s: ready(s) and bool(s.logs(grep="handled it"))
    ) as store:
        assert errors(store.logs()) == []
        # The span still says what happened, with the whole exception.
        assert_span_event(store, trace_id, span_id)


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


def test_nothing_is_written_after_shutdown(ring: fastbuf.Ring) -> None:
    fastbuf.shutdown()
    assert not crash.record(_raised(RuntimeError("late")))
    assert api.ring() is None  # it did not attach again
