"""The telemetry API end to end through the native encoder, the ring and the reference
decoder: what a worker records is what the drainer reads."""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import _codec, api, crash
from emp_fastbuf.records import (
    COUNTER,
    DEFAULT_HISTOGRAM_BOUNDS,
    EVENT,
    GAUGE,
    HISTOGRAM,
    METRIC,
    SPAN,
    STATUS_ERROR,
    UPDOWNCOUNTER,
)
from support.api import drain, records

pytestmark = pytest.mark.native


def test_emit_round_trip_every_attribute_type(ring: fastbuf.Ring) -> None:
    fastbuf.emit(
        "job.step",
        s="text é✓",
        i=-(2**63),
        big=2**80,
        f=0.12,
        inf=math.inf,
        b=True,
        n=None,
        raw=b"\x00\xff",
        arr=[1, "a", 2.5, False, None, b"x"],
        tup=(1, 2),
        np_i=np.int32(7),
        np_f=np.float32(1.5),
        np_b=np.bool_(True),
    )
    (rec,) = records(ring)
    assert rec.kind == EVENT and rec.name == "job.step"
    a = rec.attributes
    assert a["s"] == "text é✓"
    assert a["i"] == -(2**63)
    assert a["big"] == str(2**80)  # beyond 64 bits: stored as its decimal string
    assert a["f"] == 0.12 and a["inf"] == math.inf
    assert a["b"] is True and a["n"] is None and a["raw"] == b"\x00\xff"
    assert a["arr"] == [1, "a", 2.5, False, None, b"x"]
    assert a["tup"] == [1, 2]
    assert a["np_i"] == 7 and type(a["np_i"]) is int
    assert a["np_f"] == 1.5 and a["np_b"] is True
    assert rec.trace_id is None and rec.context == {}


def test_event_is_emit(ring: fastbuf.Ring) -> None:
    fastbuf.event("user.action", type="click")
    (rec,) = records(ring)
    assert rec.kind == EVENT and rec.name == "user.action" and rec.attributes == {"type": "click"}


def test_resource_is_published_once_per_producer(ring: fastbuf.Ring) -> None:
    fastbuf.emit("a")
    fastbuf.emit("b")
    got = drain(ring)
    assert len(got) == 2
    res = got[0][0]
    assert res.attributes["service.name"] == "test-svc"
    assert res.attributes["emp.machine_id"] == "m1"
    assert res.attributes["emp.worker_id"] == "w1"
    assert res.attributes["process.pid"] == os.getpid()
    assert len(str(res.attributes["service.instance.id"])) == 32
    assert "host.name" in res.attributes
    # The resource is not repeated in each record.
    raw = ring.consumer()
    raw.close()


def test_log_levels_and_exception(ring: fastbuf.Ring) -> None:
    fastbuf.log.debug("d")
    fastbuf.log.info("model loaded", model="sdxl", ms=812)
    fastbuf.log.warning("w")
    fastbuf.log.error("e")
    fastbuf.log.critical("c")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        fastbuf.log.exception("failed", step=3)
    recs = records(ring)
    assert [(r.severity_number, r.severity_text) for r in recs] == [
        (5, "DEBUG"),
        (9, "INFO"),
        (13, "WARN"),
        (17, "ERROR"),
        (21, "FATAL"),
        (17, "ERROR"),
    ]
    assert recs[1].body == "model loaded" and recs[1].attributes == {"model": "sdxl", "ms": 812}
    exc = recs[-1].attributes
    assert exc["exception.type"] == "RuntimeError"
    assert exc["exception.message"] == "boom"
    assert "Traceback" in str(exc["exception.stacktrace"])
    assert "raise RuntimeError" in str(exc["exception.stacktrace"])
    assert exc["step"] == 3


def test_spans_nest_and_carry_ids(ring: fastbuf.Ring) -> None:
    with fastbuf.span("outer", steps=30) as outer:
        fastbuf.log.info("inside outer")
        with fastbuf.span("inner") as inner:
            inner.set(scheduler="ddim")
            fastbuf.emit("tick")
    fastbuf.emit("after")
    recs = records(ring)
    by_name = {r.name or r.body: r for r in recs}
    o, i = by_name["outer"], by_name["inner"]
    assert o.kind == SPAN and i.kind == SPAN
    assert outer.trace_id == inner.trace_id
    assert len(outer.trace_id) == 32 and outer.trace_id == outer.trace_id.lower()
    assert o.trace_id is not None and o.trace_id.hex() == outer.trace_id
    assert o.span_id is not None and o.span_id.hex() == outer.span_id
    assert o.parent_span_id is None
    assert i.parent_span_id == o.span_id
    assert i.attributes == {"scheduler": "ddim"}
    assert o.attributes == {"steps": 30}
    assert o.start_unix_nano <= i.start_unix_nano <= i.time_unix_nano <= o.time_unix_nano
    assert by_name["inside outer"].span_id == o.span_id
    assert by_name["tick"].span_id == i.span_id and by_name["tick"].trace_id == o.trace_id
    assert by_name["after"].trace_id is None


def test_span_exception_sets_error_and_propagates(ring: fastbuf.Ring) -> None:
    with pytest.raises(ValueError, match="bad"), fastbuf.span("failing"):
        raise ValueError("bad")
    # The ERROR record, written on the way out, then the span.
    log, rec = records(ring)
    assert rec.kind == SPAN and rec.status_code == STATUS_ERROR
    assert "ValueError: bad" in rec.status_message
    assert rec.events and rec.events[0].name == "exception"
    assert rec.events[0].attributes["exception.type"] == "ValueError"
    assert log.severity_text == "ERROR" and log.body == "ValueError: bad"
    assert (log.trace_id, log.span_id) == (rec.trace_id, rec.span_id)
    event = rec.events[0].attributes
    for key in ("exception.type", "exception.message"):
        assert event[key] == log.attributes[key]
    stack = str(log.attributes["exception.stacktrace"])
    assert event["exception.stacktrace"] == crash.clip(stack)
    # The whole stack: the callers of this test (pytest's frames), then the raise.
    assert stack.startswith("Traceback (most recent call last):\n")
    assert "_pytest" in stack and "in test_span_exception_sets_error_and_propagates" in stack
    assert stack.rstrip().endswith("ValueError: bad")


def test_span_events_links_status(ring: fastbuf.Ring) -> None:
    link_trace, link_span = os.urandom(16), os.urandom(8)
    with fastbuf.span("s") as s:
        s.add_event("checkpoint", step=5)
        s.add_link(link_trace, link_span, why="batch")
        s.set_status("ok")
    (rec,) = records(ring)
    assert rec.status_code == 1
    assert rec.events[0].name == "checkpoint" and rec.events[0].attributes == {"step": 5}
    assert rec.links[0].trace_id == link_trace and rec.links[0].span_id == link_span
    assert rec.links[0].attributes == {"why": "batch"}
    with pytest.raises(ValueError):
        s.set_status("bogus")


def test_record_span_has_exactly_its_times_and_the_current_parent(ring: fastbuf.Ring) -> None:
    start, end = 1_700_000_000_000_000_001, 1_700_000_000_250_000_002
    with fastbuf.context(job_id="job-7"), fastbuf.span("job") as job:
        span_id = fastbuf.record_span(
            "queue.wait",
            start,
            end,
            attributes={"queue": "gpu", "wait_ms": 250.0},
            kind="consumer",
            status="error",
            message="waited too long",
        )
    root_id = fastbuf.record_span("cold.start", start_unix_nano=start, end_unix_nano=end)
    recs = {r.name: r for r in records(ring)}
    wait, parent, root = recs["queue.wait"], recs["job"], recs["cold.start"]
    assert wait.kind == SPAN
    assert (wait.start_unix_nano, wait.time_unix_nano) == (start, end)
    assert wait.span_id is not None and wait.span_id.hex() == span_id
    assert wait.trace_id == parent.trace_id and wait.parent_span_id == parent.span_id
    assert job.span_id is not None and wait.parent_span_id.hex() == job.span_id
    assert wait.context == {"job_id": "job-7"}
    assert wait.attributes == {"queue": "gpu", "wait_ms": 250.0}
    assert (wait.span_kind, wait.status_code) == (5, STATUS_ERROR)
    assert wait.status_message == "waited too long"
    assert wait.trace_flags == 1
    # Outside any span: the root of a new trace, internal, status unset.
    assert root.span_id is not None and root.span_id.hex() == root_id
    assert root.parent_span_id is None and root.trace_id not in (None, parent.trace_id)
    assert (root.start_unix_nano, root.time_unix_nano) == (start, end)
    assert (root.span_kind, root.status_code, root.attributes) == (1, 0, {})
    assert fastbuf.stats()["coerced_values"] == 0


def test_record_span_end_defaults_to_now(ring: fastbuf.Ring) -> None:
    start = time.time_ns() - 5_000_000
    before = time.time_ns()
    fastbuf.record_span("wait", start, attributes=MappingProxyType({"k": 1}))
    after = time.time_ns()
    (rec,) = records(ring)
    assert rec.start_unix_nano == start and before <= rec.time_unix_nano <= after
    assert rec.attributes == {"k": 1}


def test_record_span_joins_a_continued_trace(ring: fastbuf.Ring) -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
    with fastbuf.continue_trace(header):
        fastbuf.record_span("remote.child", 10, 20)
    (rec,) = records(ring)
    assert rec.trace_id == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert rec.parent_span_id == bytes.fromhex("00f067aa0ba902b7")
    assert rec.trace_flags == 3  # the caller's flags: sampled, and the random bit kept


def test_record_span_wrong_types_raise(ring: fastbuf.Ring) -> None:
    now = time.time_ns()
    bad: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
        ((b"name", now, now), {}),
        (("s", now / 1, now), {}),  # a float time: ns are ints
        (("s", now, str(now)), {}),
        (("s", True, now), {}),
        (("s", None, now), {}),
        (("s", now, now), {"attributes": [("k", 1)]}),
        (("s", now, now), {"kind": 2}),
        (("s", now, now), {"status": None}),
        (("s", now, now), {"message": 3}),
    ]
    for args, kwargs in bad:
        with pytest.raises(TypeError):
            fastbuf.record_span(*args, **kwargs)
    with pytest.raises(ValueError, match="kind"):
        fastbuf.record_span("s", now, now, kind="sideways")
    with pytest.raises(ValueError, match="status"):
        fastbuf.record_span("s", now, now, status="bogus")
    with pytest.raises(TypeError):
        fastbuf.record_span("s")  # type: ignore[call-arg]
    assert records(ring) == []


def test_record_span_nonsense_times_are_coerced_and_counted(ring: fastbuf.Ring) -> None:
    fastbuf.record_span("backwards", 2_000, 1_000)  # ends before it starts
    fastbuf.record_span("negative", -5, 1_000)
    fastbuf.record_span("huge", 1_000, 1 << 70)
    fastbuf.record_span("numpy", np.int64(1_000), np.uint64(3_000))  # integer types are fine
    recs = {r.name: r for r in records(ring)}
    assert (recs["backwards"].start_unix_nano, recs["backwards"].time_unix_nano) == (2_000, 2_000)
    assert (recs["negative"].start_unix_nano, recs["negative"].time_unix_nano) == (0, 1_000)
    assert recs["huge"].time_unix_nano == (1 << 64) - 1
    assert (recs["numpy"].start_unix_nano, recs["numpy"].time_unix_nano) == (1_000, 3_000)
    st = fastbuf.stats()
    assert st["coerced_values"] == 3 and st["errors"] == 0
    assert st["by_kind"]["span"] == 4 and st["by_kind"]["metric"] == 0


def test_traced_sync_and_async(ring: fastbuf.Ring) -> None:
    @fastbuf.traced
    def bare() -> int:
        return 1

    @fastbuf.traced("load_model", model="sdxl")
    def named() -> int:
        return bare() + 1

    @fastbuf.traced("async_op")
    async def coro() -> int:
        await asyncio.sleep(0)
        return named()

    assert asyncio.run(coro()) == 2
    recs = {r.name: r for r in records(ring)}
    assert set(recs) == {"async_op", "load_model", "test_traced_sync_and_async.<locals>.bare"}
    top, mid = recs["async_op"], recs["load_model"]
    low = recs["test_traced_sync_and_async.<locals>.bare"]
    assert mid.parent_span_id == top.span_id and low.parent_span_id == mid.span_id
    assert mid.attributes == {"model": "sdxl"}
    with pytest.raises(TypeError):
        fastbuf.traced(3)  # type: ignore[call-overload]


def test_context_scopes_records_and_nothing_outside(ring: fastbuf.Ring) -> None:
    with fastbuf.context(job_id="job-123", user_id="u9"):
        fastbuf.emit("inside")
        with fastbuf.context(step=2):
            fastbuf.log.info("nested")
        with fastbuf.span("sp"):
            fastbuf.metrics.counter("c").inc()
    fastbuf.emit("outside")
    recs = {r.name or r.body: r for r in records(ring)}
    assert recs["inside"].context == {"job_id": "job-123", "user_id": "u9"}
    assert recs["inside"].job_id == "job-123"
    assert recs["nested"].context == {"job_id": "job-123", "user_id": "u9", "step": 2}
    assert recs["sp"].context == {"job_id": "job-123", "user_id": "u9"}
    assert recs["c"].context["job_id"] == "job-123"
    assert recs["outside"].context == {}


def test_context_across_threads_and_tasks(ring: fastbuf.Ring) -> None:
    def worker(job: str) -> None:
        with fastbuf.context(job_id=job), fastbuf.span(f"span-{job}"):
            fastbuf.emit(f"ev-{job}")

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    async def task(job: str) -> None:
        with fastbuf.context(job_id=job), fastbuf.span(f"span-{job}"):
            await asyncio.sleep(0.01)
            fastbuf.emit(f"ev-{job}")

    async def main() -> None:
        await asyncio.gather(*(task(f"a{i}") for i in range(4)))

    asyncio.run(main())
    recs = {r.name: r for r in records(ring)}
    for job in [f"t{i}" for i in range(4)] + [f"a{i}" for i in range(4)]:
        ev, sp = recs[f"ev-{job}"], recs[f"span-{job}"]
        assert ev.context == {"job_id": job}
        assert ev.trace_id == sp.trace_id and ev.span_id == sp.span_id
    traces = {recs[f"span-{j}"].trace_id for j in ("t0", "t1", "a0", "a1")}
    assert len(traces) == 4  # each job its own trace


def test_traceparent_generation_and_continue(ring: fastbuf.Ring) -> None:
    assert fastbuf.traceparent() is None
    with fastbuf.span("producer") as s:
        header = fastbuf.traceparent()
    assert header == f"00-{s.trace_id}-{s.span_id}-01"
    with fastbuf.continue_trace(header), fastbuf.span("consumer") as c:
        pass
    assert c.trace_id == s.trace_id and c.parent_span_id == s.span_id
    recs = {r.name: r for r in records(ring)}
    assert recs["consumer"].parent_span_id == recs["producer"].span_id


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",  # short trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",  # short span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # v00 + extra
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",  # short flags
        12345,
    ],
)
def test_invalid_traceparent_is_ignored(ring: fastbuf.Ring, header: object) -> None:
    assert api.parse_traceparent(header) is None
    with fastbuf.continue_trace(header), fastbuf.span("s") as s:  # type: ignore[arg-type]
        pass
    assert s.parent_span_id is None


def test_traceparent_future_version_and_flags() -> None:
    tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    assert api.parse_traceparent(f"00-{tid}-{sid}-00") == (
        bytes.fromhex(tid),
        bytes.fromhex(sid),
        0,
    )
    # A higher version may carry more fields after a dash.
    parsed = api.parse_traceparent(f"01-{tid}-{sid}-01-more")
    assert parsed is not None and parsed[2] == 1


def test_metrics_records(ring: fastbuf.Ring) -> None:
    fastbuf.metrics.counter("jobs.completed").inc(1, model="sdxl")
    fastbuf.metrics.counter("jobs.completed").inc(2.5)
    fastbuf.metrics.updowncounter("queue.depth").add(-3)
    fastbuf.metrics.gauge("gpu.memory.used", unit="By").set(7.5e9, gpu="0")
    fastbuf.metrics.histogram("step.duration", unit="ms").record(41.7)
    fastbuf.metrics.histogram("step.duration", unit="ms").record_many(np.array([1.0, 2.0, 3.0]))
    fastbuf.metrics.histogram("custom", bounds=[1, 10, 100]).record_many([5, 50])
    recs = records(ring)
    assert all(r.kind == METRIC for r in recs)
    assert (recs[0].instrument, recs[0].name, recs[0].value) == (COUNTER, "jobs.completed", 1)
    assert recs[0].attributes == {"model": "sdxl"}
    assert recs[1].value == 2.5
    assert (recs[2].instrument, recs[2].value) == (UPDOWNCOUNTER, -3)
    assert (recs[3].instrument, recs[3].unit, recs[3].value) == (GAUGE, "By", 7.5e9)
    assert (recs[4].instrument, recs[4].values, recs[4].bounds) == (HISTOGRAM, [41.7], [])
    assert recs[5].values == [1.0, 2.0, 3.0]
    assert recs[6].bounds == [1.0, 10.0, 100.0]


def test_metric_values_keep_their_type_and_range(ring: fastbuf.Ring) -> None:
    fastbuf.metrics.updowncounter("ud").inc()  # an up-down counter may use inc too
    fastbuf.metrics.counter("c").inc(2**70)  # beyond 64 bits: a double
    fastbuf.metrics.counter("c").inc(np.int64(3))
    fastbuf.metrics.gauge("g").set(True)
    fastbuf.metrics.gauge("g").set(np.float32(0.5))
    fastbuf.metrics.counter("c").inc(float("nan"))  # not >= 0: ignored, counted
    recs = records(ring)
    assert [(r.value, type(r.value)) for r in recs] == [
        (1, int),
        (float(2**70), float),
        (3, int),
        (1, int),
        (0.5, float),
    ]
    assert len(DEFAULT_HISTOGRAM_BOUNDS) == 15


def test_metrics_bad_input(ring: fastbuf.Ring) -> None:
    c = fastbuf.metrics.counter("c")
    c.inc(-1)  # ignored and counted, never raised
    assert fastbuf.stats()["coerced_values"] == 1
    with pytest.raises(TypeError):
        c.inc("x")
    with pytest.raises(TypeError):
        c.inc("3")  # a numeric string is still not a number
    # Each instrument has its own update method; another one is a malformed call.
    with pytest.raises(TypeError, match="use record"):
        fastbuf.metrics.histogram("hh").inc(1)
    with pytest.raises(TypeError, match="use inc"):
        c.record(1.0)
    with pytest.raises(TypeError, match="use set"):
        fastbuf.metrics.gauge("gg").add(1)
    with pytest.raises(TypeError):
        c.record_many([1.0])
    with pytest.raises(TypeError):
        fastbuf.metrics.gauge("gg").set()
    with pytest.raises(TypeError):
        fastbuf.metrics.counter(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fastbuf.metrics.histogram("h", bounds=[3, 2])
    with pytest.raises(ValueError):
        fastbuf.metrics.histogram("h", bounds=[float("nan")])
    with pytest.raises(TypeError):
        fastbuf.metrics.histogram("h").record_many(["a"])
    assert records(ring) == []


def test_record_many_splits_large_arrays(ring: fastbuf.Ring) -> None:
    values = np.arange(20_000, dtype=np.float64)
    fastbuf.metrics.histogram("big").record_many(values)
    recs = records(ring)
    assert len(recs) > 1
    assert [v for r in recs for v in r.values] == values.tolist()


def test_bad_calls_raise_type_error(ring: fastbuf.Ring) -> None:
    with pytest.raises(TypeError):
        fastbuf.emit(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastbuf.emit(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastbuf.emit()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fastbuf.emit("a", "b")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fastbuf.span(b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastbuf.log.info()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fastbuf.configure(service=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fastbuf.flush("soon")  # type: ignore[arg-type]
    assert records(ring) == []


def test_bad_values_are_coerced_never_raised(ring: fastbuf.Ring) -> None:
    class Weird:
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    class Fine:
        def __str__(self) -> str:
            return "fine!"

    fastbuf.emit("e", weird=Weird(), fine=Fine(), nested=[[1, 2]], obj={"a": 1})
    fastbuf.log.info(Weird())
    (ev, lg) = records(ring)
    assert ev.attributes["weird"] == "<unprintable Weird>"
    assert ev.attributes["fine"] == "fine!"
    assert ev.attributes["nested"] == ["[1, 2]"]
    assert ev.attributes["obj"] == "{'a': 1}"
    assert lg.body == "<unprintable Weird>"
    assert fastbuf.stats()["coerced_values"] >= 4


def test_limits_truncate_and_count(ring: fastbuf.Ring) -> None:
    many = {f"k{i}": i for i in range(200)}
    fastbuf.emit("many", **many)
    fastbuf.emit("long", v="x" * 10_000, **{"k" * 300: 1})
    fastbuf.emit("arr", a=list(range(1000)))
    many_rec, long_rec, arr_rec = records(ring)
    assert len(many_rec.attributes) == 128 and many_rec.dropped_attributes == 72
    assert long_rec.attributes["v"] == "x" * 4096
    assert "k" * 128 in long_rec.attributes
    assert long_rec.truncated_values == 2
    assert len(arr_rec.attributes["a"]) == 128 and arr_rec.truncated_values == 1
    st = fastbuf.stats()
    assert st["dropped_attributes"] == 72 and st["truncated_values"] == 3


def test_limits_are_configurable(ring: fastbuf.Ring, ring_name: str) -> None:
    fastbuf.configure(ring=ring_name, max_attributes=2, max_value_length=5, max_key_length=3)
    fastbuf.emit("e", alpha="abcdefgh", b=1, c=2)
    (rec,) = records(ring)
    assert rec.attributes == {"alp": "abcde", "b": 1}
    assert rec.dropped_attributes == 1 and rec.truncated_values == 2
    with pytest.raises(ValueError):
        fastbuf.configure(ring=ring_name, max_attributes=0)


def test_oversized_record_is_reduced_not_lost(ring: fastbuf.Ring) -> None:
    # A log body and attributes far beyond the 64 KiB record maximum.
    fastbuf.configure(max_value_length=60_000)
    fastbuf.log.info("b" * 200_000, **{f"k{i}": "v" * 50_000 for i in range(8)})
    (rec,) = records(ring)
    assert rec.body.startswith("bbbb") and len(rec.body) < 200_000
    assert rec.truncated_values >= 1 or rec.dropped_attributes >= 1
    assert fastbuf.stats()["dropped"] == 0


def test_flush(ring: fastbuf.Ring) -> None:
    fastbuf.emit("x")
    assert fastbuf.flush(timeout=0.05) is False  # nobody drains yet
    c = ring.consumer()
    try:
        stop = threading.Event()

        def consume() -> None:
            while not stop.is_set():
                c.read(1000)
                c.ack()
                stop.wait(0.005)

        t = threading.Thread(target=consume)
        t.start()
        for _ in range(100):
            fastbuf.emit("y")
        assert fastbuf.flush(timeout=5.0) is True
        stop.set()
        t.join()
    finally:
        c.close()


def test_stats_counts_by_kind_and_drops(ring_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMP_FASTBUF_AGENT", "external")
    fastbuf.Ring.create(ring_name, 1 << 20, lanes=4, max_record=4096).close()
    fastbuf.configure(ring=ring_name)
    _codec.reset_counters()
    try:
        sent = 0
        while fastbuf.stats()["dropped"] == 0:
            fastbuf.emit("fill", payload="x" * 100)
            sent += 1
        for _ in range(3):  # the lane stays full: each of these is dropped too
            fastbuf.emit("fill", payload="x" * 100)
        st = fastbuf.stats()
        assert st["by_kind"]["event"] == sent - 1
        assert st["dropped_by_reason"]["full"] == 4
        assert st["dropped"] == 4 and st["emitted"] == sent - 1
        ring_stats = fastbuf.Ring.open(ring_name).stats()
        assert (
            ring_stats["written"]
            == ring_stats["acked"] + ring_stats["dropped"] + ring_stats["in_flight"]
        )
    finally:
        api.shutdown()


def _child_emit(ring_name: str, q: mp.Queue) -> None:  # type: ignore[type-arg]
    os.environ["EMP_FASTBUF_AGENT"] = "external"
    fastbuf.configure(service="child", ring=ring_name)
    with fastbuf.context(job_id="job-x"), fastbuf.span("child-span") as s:
        fastbuf.log.info("from child", n=1)
    q.put((os.getpid(), s.trace_id))


def test_cross_process_round_trip(ring: fastbuf.Ring, ring_name: str) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child_emit, args=(ring_name, q))
    p.start()
    pid, trace_id = q.get(timeout=60)
    p.join(timeout=60)
    assert p.exitcode == 0
    got = drain(ring)
    assert {r.body or r.name for _res, r in got} == {"from child", "child-span"}
    for res, rec in got:
        assert res.attributes["process.pid"] == pid
        assert res.attributes["service.name"] == "child"
        assert rec.context == {"job_id": "job-x"}
        assert rec.trace_id is not None and rec.trace_id.hex() == trace_id


@pytest.mark.stress
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_gets_its_own_lane_and_resource(ring: fastbuf.Ring) -> None:
    fastbuf.emit("parent-before")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            with fastbuf.span("child-span") as s:
                fastbuf.emit("child-ev")
            os.write(w, s.trace_id.encode())
        finally:
            os._exit(0)
    os.close(w)
    child_trace = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    fastbuf.emit("parent-after")
    got = drain(ring)
    pids = {rec.name: res.attributes["process.pid"] for res, rec in got}
    assert pids["parent-before"] == pids["parent-after"] == os.getpid()
    assert pids["child-ev"] == pids["child-span"] == pid
    instance = {rec.name: res.attributes["service.instance.id"] for res, rec in got}
    assert instance["child-ev"] != instance["parent-after"]
    span_rec = next(rec for _res, rec in got if rec.name == "child-span")
    assert span_rec.trace_id is not None and span_rec.trace_id.hex() == child_trace


def test_otel_sdk_disabled_makes_calls_no_ops(ring_name: str) -> None:
    code = f"""
import os
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["EMP_FASTBUF_RING"] = {ring_name!r}
import emp_fastbuf as fastbuf
fastbuf.emit("x", a=1)
fastbuf.log.info("y")
with fastbuf.span("s"):
    fastbuf.metrics.counter("c").inc()
fastbuf.record_span("r", 1, 2)
assert fastbuf.stats()["emitted"] == 0 and fastbuf.stats()["disabled"] is True
assert fastbuf.flush(0.1) is True
try:
    fastbuf.Ring.open({ring_name!r})
except fastbuf.RingNotFound:
    print("no ring")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "no ring" in out.stdout


def test_zero_config_attaches_from_environment(ring_name: str) -> None:
    code = f"""
import os
os.environ.update(EMP_FASTBUF_RING={ring_name!r}, EMP_FASTBUF_AGENT="external",
                  OTEL_SERVICE_NAME="zero", EMP_MACHINE_ID="mach-7",
                  OTEL_RESOURCE_ATTRIBUTES="deployment.environment=prod,team=gpu%20infra,bad")
import emp_fastbuf.auto
import emp_fastbuf as fastbuf
from emp_fastbuf.records import reference
fastbuf.emit("hello")
ring = fastbuf.Ring.open({ring_name!r})
c = ring.consumer()
(lane, meta, recs), = c.read_lanes(10)
res = reference.decode_resource(meta)
a = res.attributes
assert a["service.name"] == "zero", a
assert a["emp.machine_id"] == "mach-7", a
assert a["deployment.environment"] == "prod" and a["team"] == "gpu infra", a
assert a["emp.worker_id"].endswith(str(os.getpid())), a
print("ok", len(recs))
"""
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "ok 1" in out.stdout
    finally:
        fastbuf.Ring.unlink(ring_name)


def test_worker_id_from_the_environment(ring_name: str) -> None:
    """EMP_WORKER_ID names the worker (emp.worker_id); an argument still wins."""
    code = f"""
import os
os.environ.update(EMP_FASTBUF_RING={ring_name!r}, EMP_FASTBUF_AGENT="external",
                  EMP_WORKER_ID="gpu-worker-7")
import emp_fastbuf as fastbuf
from emp_fastbuf.records import reference
fastbuf.configure(service="w")
fastbuf.emit("hello")
fastbuf.configure(service="w", worker_id="from-argument")
fastbuf.emit("again")
c = fastbuf.Ring.open({ring_name!r}).consumer()
ids = [reference.decode_resource(meta).attributes["emp.worker_id"]
       for _lane, meta, _recs in c.read_lanes(10)]
print(sorted(ids))
"""
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "['from-argument', 'gpu-worker-7']"
    finally:
        fastbuf.Ring.unlink(ring_name)


def test_unattachable_ring_turns_telemetry_off_without_raising(tmp_path: object) -> None:
    code = """
import os
os.environ.update(EMP_FASTBUF_RING="bad/name", EMP_FASTBUF_AGENT="external")
import emp_fastbuf as fastbuf
fastbuf.emit("x")
fastbuf.log.info("y")
assert fastbuf.stats()["disabled"] is True
print("survived")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "survived" in out.stdout
    assert "telemetry is off" in out.stderr


def test_log_record_keeps_an_explicit_time(ring: fastbuf.Ring) -> None:
    _codec.log_record(13, "WARNING", "from a bridge", {"k": 1}, 1_700_000_000_123_456_789)
    _codec.log_record(9, "INFO", "now", {})
    then, now = records(ring)
    assert then.time_unix_nano == 1_700_000_000_123_456_789
    assert (then.severity_number, then.severity_text, then.body) == (13, "WARNING", "from a bridge")
    assert abs(now.time_unix_nano - __import__("time").time_ns()) < 60 * 10**9
    with pytest.raises(ValueError):
        _codec.log_record(99, "X", "bad severity", {})
