"""Our scenarios and their budgets: the ring and the telemetry API, per call.

Every scenario gets a ring of its own (a unique name, unlinked in the teardown) and, except
the drop-path one, a drainer in another process (``bench.drainer``) that takes what the
producers write, so the ring never fills and the numbers are those of the normal path.
The API scenarios attach with ``fastbuf.configure(..., agent="external")``: no agent is
spawned, the drainer stands in for it.

Budgets come from the issues: the ring write within 150 ns P50 / 500 ns P99 on a 2-core
machine (issue 2), the API calls within their P50 targets, every API call within the
original 1 ms P99, and the ratios against OpenTelemetry and the stdlib queue handler.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from bench.drainer import Drainer, start_drainer
from bench.harness import Call, Skip, Teardown
from bench.scenarios import add_budget, register, set_cost_scenario

# Producers (and the spawned children that import this module) never start an agent.
os.environ["EMP_FASTBUF_AGENT"] = "external"

PAYLOAD_64 = bytes(range(64))
FAST = 1_000_000
PER_PRODUCER = 250_000  # x 4 producers: a million calls merged
API_P99_NS = 1_000_000  # the original budget: no telemetry call may stall for 1 ms
# The default ring's 64 MiB, in 8 lanes instead of 64: a producer flooding at full speed
# (~500 MB/s) has ~16 ms of headroom across a drainer's scheduling gap instead of ~2 ms.
RING_SIZE = 64 << 20
RING_LANES = 8
# 4 producers and the drainer share 2 cores, so the drainer gets a fraction of one: with
# 8 MiB lanes the producers dropped ~12% of their records. Lanes of 64 MiB hold a whole run
# (250k records of ~130 bytes per producer) even when the drainer falls far behind, so the
# producers are timed on the write path, not the drop path; drops still show in the notes.
SHARED_RING_SIZE = 512 << 20
FULL_RING_SIZE = 64 << 10  # one 64 KiB lane: fills after a few hundred records
FULL_RING_MAX_RECORD = 1024

Scenario = tuple[Call, Teardown | None]

_names = itertools.count(1)


def ring_name(tag: str) -> str:
    """A ring name no other run or scenario uses (pid and a counter)."""
    return f"bench-{os.getpid()}-{next(_names)}-{tag}"


def _import_fastbuf() -> Any:
    try:
        import emp_fastbuf
    except ImportError as exc:
        raise Skip(f"emp_fastbuf is not importable ({exc})") from exc
    return emp_fastbuf


def _current_ring() -> Any:
    """The ring ``configure`` attached this process to (None when detached)."""
    from emp_fastbuf.producer import api

    return api.ring()


def _ring_counts(stats: dict[str, Any]) -> str:
    dropped = stats["dropped_full"] + stats["dropped_too_large"] + stats["dropped_no_lane"]
    return (
        f"{stats['accepted']:,} accepted, {dropped:,} dropped "
        f"(full {stats['dropped_full']:,}, no lane {stats['dropped_no_lane']:,}, "
        f"too large {stats['dropped_too_large']:,})"
    )


class _ApiSession:
    """``configure`` on a fresh ring plus a drainer; ``close`` undoes both and reports."""

    def __init__(self, tag: str, *, drain: bool = True, scope: bool = False) -> None:
        self.fastbuf = _import_fastbuf()
        self.name = ring_name(tag)
        self.drainer: Drainer | None = None
        self.scope: AbstractContextManager[None] | None = None
        from emp_fastbuf import Ring

        Ring.create(self.name, RING_SIZE, lanes=RING_LANES).close()
        try:
            self.fastbuf.configure(service="bench", ring=self.name, agent="external")
            if drain:
                self.drainer = start_drainer(self.name)
            if scope:
                # Entered here, outside the timed loop, as a job would around its steps.
                self.scope = self.fastbuf.context(job_id="job-bench-42")
                self.scope.__enter__()
        except BaseException:
            self._release()
            raise

    def _release(self) -> tuple[int | None, dict[str, Any] | None]:
        from emp_fastbuf import Ring

        stats = None
        taken = None
        try:
            if self.scope is not None:
                self.scope.__exit__(None, None, None)
                self.scope = None
            if self.drainer is not None:
                taken = self.drainer.stop()
            ring = _current_ring()
            if ring is not None:
                stats = ring.stats()
        finally:
            self.fastbuf.shutdown()
            Ring.unlink(self.name)
        return taken, stats

    def close(self) -> str:
        """Detach, stop the drainer, unlink the ring; returns the drop/drain note."""
        taken, stats = self._release()
        parts = []
        if stats is not None:
            parts.append(_ring_counts(stats))
        if taken is not None:
            parts.append(f"drainer took {taken:,} records")
        return "; ".join(parts)


def _api(
    tag: str, build: Callable[[Any], Call], *, scope: bool = False, drain: bool = True
) -> Scenario:
    session = _ApiSession(tag, scope=scope, drain=drain)
    try:
        call = build(session.fastbuf)
    except BaseException:
        session.close()
        raise
    return call, session.close


# ---- the scenarios --------------------------------------------------------------------


def ring_write() -> Scenario:
    """``Ring.write`` of a 64-byte bytes record into our own lane; a drainer consumes."""
    from emp_fastbuf import Ring

    name = ring_name("write")
    ring = Ring.create(name, RING_SIZE, lanes=RING_LANES)
    try:
        drainer = start_drainer(name)
    except BaseException:
        ring.close()
        Ring.unlink(name)
        raise
    write = ring.write
    payload = PAYLOAD_64

    def teardown() -> str:
        try:
            taken = drainer.stop()
            stats = ring.stats()
        finally:
            ring.close()
            Ring.unlink(name)
        return f"{_ring_counts(stats)}; drainer took {taken:,} records"

    return (lambda: write(payload)), teardown


def emit_0() -> Scenario:
    """``fastbuf.emit`` of a bare event name."""

    def build(fb: Any) -> Call:
        emit = fb.emit
        return lambda: emit("train.step")

    return _api("emit0", build)


def _emit_4(fb: Any) -> Call:
    emit = fb.emit
    return lambda: emit("train.step", gpu=3, batch=128, model="m-8b", step=42)


def emit_4_in_context() -> Scenario:
    """``fastbuf.emit`` with 4 attributes inside ``fastbuf.context(job_id=...)``."""
    return _api("emit4", _emit_4, scope=True)


def emit_16() -> Scenario:
    """``fastbuf.emit`` with 16 attributes of mixed types."""

    def build(fb: Any) -> Call:
        emit = fb.emit

        def call() -> None:
            emit(
                "train.step",
                gpu=3,
                batch=128,
                model="m-8b",
                step=42,
                loss=0.125,
                lr=3e-4,
                epoch=7,
                rank=0,
                world=8,
                node="node-17",
                phase="fwd",
                tokens=524288,
                ok=True,
                grad_norm=1.5,
                seq_len=4096,
                dtype="bf16",
            )

        return call

    return _api("emit16", build)


def log_info_4() -> Scenario:
    """``fastbuf.log.info`` with a message and 4 attributes (the peers' logging call)."""

    def build(fb: Any) -> Call:
        info = fb.log.info
        return lambda: info("step done", gpu_id=3, batch_size=128, model="m-8b", step=42)

    return _api("log", build)


def span_2() -> Scenario:
    """``with fastbuf.span(...)`` enter and exit with 2 attributes (as ``otel.span``)."""

    def build(fb: Any) -> Call:
        span = fb.span

        def call() -> None:
            with span("train.step", gpu_id=3, batch_size=128):
                pass

        return call

    return _api("span", build)


def counter_inc() -> Scenario:
    """``counter.inc()`` on a cached instrument, no attributes."""

    def build(fb: Any) -> Call:
        inc = fb.metrics.counter("bench.steps", unit="1").inc
        return lambda: inc()

    return _api("counter", build)


def emit_full_ring() -> Scenario:
    """The drop path: a one-lane 64 KiB ring, no drainer, filled before the timed loop."""
    from emp_fastbuf import Ring

    fb = _import_fastbuf()
    name = ring_name("full")
    Ring.create(name, FULL_RING_SIZE, lanes=1, max_record=FULL_RING_MAX_RECORD).close()
    try:
        fb.configure(service="bench", ring=name, agent="external")
        ring = _current_ring()
        ring.block_ns = 0  # drop at once, never wait for room
        call = _emit_4(fb)
        for _ in range(FULL_RING_SIZE):  # far more records than fit
            call()
            if ring.stats()["dropped_full"]:
                break
        else:
            raise RuntimeError(f"ring {name} never filled")
        before = ring.stats()
    except BaseException:
        fb.shutdown()
        Ring.unlink(name)
        raise

    def teardown() -> str:
        try:
            after = ring.stats()
        finally:
            fb.shutdown()
            Ring.unlink(name)
        dropped = after["dropped_full"] - before["dropped_full"]
        offered = after["written"] - before["written"]
        return f"{dropped:,} of {offered:,} calls (warm-up included) took the drop path (full)"

    return call, teardown


# ---- several producers --------------------------------------------------------------------


def shared_ring() -> tuple[tuple[object, ...], Teardown]:
    """Parent side of the 4-producer scenarios: one ring, one drainer."""
    from emp_fastbuf import Ring

    name = ring_name("4p")
    ring = Ring.create(name, SHARED_RING_SIZE, lanes=RING_LANES)
    try:
        drainer = start_drainer(name)
    except BaseException:
        ring.close()
        Ring.unlink(name)
        raise

    def teardown() -> str:
        try:
            taken = drainer.stop()
            stats = ring.stats()
        finally:
            ring.close()
            Ring.unlink(name)
        return f"{_ring_counts(stats)}; drainer took {taken:,} records"

    return (name,), teardown


def emit_producer(name: str) -> Scenario:
    """One of the 4 producers of ``fastbuf.emit.4p`` (runs in a spawned process)."""
    fb = _import_fastbuf()
    fb.configure(service="bench", ring=name, agent="external", create=False)
    scope = fb.context(job_id="job-bench-42")
    scope.__enter__()

    def teardown() -> None:
        scope.__exit__(None, None, None)
        fb.shutdown()

    return _emit_4(fb), teardown


def ring_write_producer(name: str) -> Scenario:
    """One of the 4 producers of ``ring.write.4p`` (runs in a spawned process)."""
    from emp_fastbuf import Ring

    ring = Ring.open(name)
    write = ring.write
    payload = PAYLOAD_64
    return (lambda: write(payload)), ring.close


# ---- registration ---------------------------------------------------------------------------

LOG_PEERS = ("otel.log", "logging.queue_handler", "picologging", "structlog")

register(
    "ring.write",
    ring_write,
    calls=FAST,
    budget=["p50_ns <= 150", "p99_ns <= 500"],
    versus=("faster_fifo",),
    description="Ring.write 64 B bytes, drainer process consuming",
)
register(
    "fastbuf.emit",
    emit_4_in_context,
    calls=FAST,
    budget=["p50_ns <= 250", "p99_ns <= 1000", "p999_ns <= 5000", f"p99_ns <= {API_P99_NS}"],
    versus=LOG_PEERS,
    description="emit, 4 attributes, inside fastbuf.context(job_id=...)",
)
register(
    "fastbuf.emit[0]",
    emit_0,
    calls=FAST,
    budget=f"p99_ns <= {API_P99_NS}",
    description="emit, no attributes",
)
register(
    "fastbuf.emit[16]",
    emit_16,
    calls=FAST,
    budget=f"p99_ns <= {API_P99_NS}",
    description="emit, 16 attributes",
)
register(
    "fastbuf.log.info",
    log_info_4,
    calls=FAST,
    budget=["p50_ns <= 400", f"p99_ns <= {API_P99_NS}"],
    versus=LOG_PEERS,
    description="log.info, message + 4 attributes",
)
register(
    "fastbuf.span",
    span_2,
    calls=FAST,
    budget=["p50_ns <= 1000", f"p99_ns <= {API_P99_NS}"],
    versus=("otel.span",),
    description="span enter+exit, 2 attributes",
)
register(
    "fastbuf.counter.inc",
    counter_inc,
    calls=FAST,
    budget=["p50_ns <= 150", f"p99_ns <= {API_P99_NS}"],
    description="metrics.counter(...).inc(), no attributes",
)
register(
    "fastbuf.emit.full",
    emit_full_ring,
    calls=FAST,
    budget=["p99_ns <= 1000", f"p99_ns <= {API_P99_NS}"],
    description="emit 4 attributes into a full ring (no drainer): the drop path",
)
register(
    "fastbuf.emit.4p",
    emit_producer,
    calls=PER_PRODUCER,
    quick_calls=5_000,
    processes=4,
    shared=shared_ring,
    budget=f"p99_ns <= {API_P99_NS}",
    description="emit 4 attributes in context from 4 producer processes, one drainer",
)
register(
    "ring.write.4p",
    ring_write_producer,
    calls=PER_PRODUCER,
    quick_calls=5_000,
    processes=4,
    shared=shared_ring,
    description="Ring.write 64 B from 4 producer processes, one drainer",
)

add_budget("p99_ns(otel.span) / p99_ns(fastbuf.emit) >= 20")
add_budget("p50_ns(logging.queue_handler) / p50_ns(fastbuf.log.info) >= 10")
set_cost_scenario("fastbuf.emit")

import bench.ours_integrations as ours_integrations  # noqa: E402 - after our own rows
import bench.pipeline as pipeline  # noqa: E402

ours_integrations.register_all()
pipeline.register_all()
