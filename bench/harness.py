"""Per-call latency harness.

pytest-benchmark reports means and rounds, not tails, so this harness times every call on its
own: ``time.perf_counter_ns()`` before and after, the delta stored in a preallocated
``array('q')``. From the deltas it derives P50/P99/P99.9/max/mean; throughput is calls over the
wall time of the whole timed loop. The timer's own cost (an empty lambda timed the same way)
is measured once per process and reported next to each result, so a reader can tell how much
of a small number is the clock.

Scenarios that need several producer processes use ``measure_processes``: K processes from
the spawn context each run the same loop on their own, start together behind a barrier, and
send their deltas back; the parent merges them.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import time
import traceback
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import numpy.typing as npt

Call = Callable[[], object]
Teardown = Callable[[], object]
Factory = Callable[..., tuple[Call, Teardown | None]]

# Quantiles kept for the CDF plot: dense in the body, log-spaced into the tail.
_CDF_QUANTILES: tuple[float, ...] = tuple(
    [i / 100 for i in range(100)] + [1.0 - 10.0 ** (-2 - k / 10) for k in range(1, 41)] + [1.0]
)


class Skip(Exception):
    """Raised by a scenario factory when the scenario cannot run here (missing library...)."""


@dataclass(frozen=True)
class GcState:
    """The garbage collector around a timed loop."""

    enabled: bool
    thresholds: tuple[int, ...]
    counts_before: tuple[int, ...]
    counts_after: tuple[int, ...]
    collections: tuple[int, ...]  # per generation, during the timed loop


@dataclass(frozen=True)
class Result:
    """Latency distribution and throughput of one scenario.

    Latencies are per call and include the timer (see ``floor_p50_ns``). ``ops_per_s`` counts
    items: calls times ``items_per_call`` (e.g. records per encoded batch) over the loop's wall
    time; with several processes it is the aggregate over the common wall-clock window.
    """

    name: str
    peer: str | None
    calls: int
    processes: int
    items_per_call: int
    p50_ns: int
    p99_ns: int
    p999_ns: int
    max_ns: int
    mean_ns: float
    ops_per_s: float
    wall_ns: int
    floor_p50_ns: int | None
    floor_mean_ns: float | None
    gc: GcState
    notes: tuple[str, ...] = ()
    cdf: tuple[tuple[float, int], ...] = field(default=(), repr=False)

    def to_json(self) -> dict[str, Any]:
        """Everything but the CDF points, as JSON-ready types."""
        data = asdict(self)
        del data["cdf"]
        return data

    def row(self) -> dict[str, Any]:
        """The summary row written to ``latest.json``."""
        return {
            "name": self.name,
            "p50_ns": self.p50_ns,
            "p99_ns": self.p99_ns,
            "p999_ns": self.p999_ns,
            "ops_per_s": round(self.ops_per_s, 1),
            "peer": self.peer,
        }


def _timed_loop(fn: Call, out: array[int]) -> int:
    """Time each call of ``fn`` into ``out``; return the loop's wall time in ns."""
    # Locals only inside the loop: a global or attribute lookup would land in every delta.
    clock = time.perf_counter_ns
    start = clock()
    for i in range(len(out)):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return clock() - start


def _new_deltas(n: int) -> array[int]:
    return array("q", bytes(8 * n))


def _gc_collections() -> tuple[int, ...]:
    return tuple(int(s["collections"]) for s in gc.get_stats())


def _rank(sorted_ns: npt.NDArray[np.int64], q: float) -> int:
    """Nearest-rank percentile of an ascending array (q in [0, 1])."""
    n = len(sorted_ns)
    i = min(n - 1, max(0, math.ceil(q * n) - 1))
    return int(sorted_ns[i])


@dataclass(frozen=True)
class _Run:
    deltas: npt.NDArray[np.int64]
    wall_ns: int
    gc: GcState


def _run_loop(fn: Call, calls: int, warmup: int) -> _Run:
    if warmup > 0:
        _timed_loop(fn, _new_deltas(warmup))
    deltas = _new_deltas(calls)
    enabled = gc.isenabled()
    thresholds = tuple(gc.get_threshold())
    counts_before = tuple(gc.get_count())
    collections_before = _gc_collections()
    wall = _timed_loop(fn, deltas)
    counts_after = tuple(gc.get_count())
    collected = tuple(a - b for a, b in zip(_gc_collections(), collections_before, strict=True))
    state = GcState(enabled, thresholds, counts_before, counts_after, collected)
    return _Run(np.frombuffer(deltas, dtype=np.int64).copy(), wall, state)


_floor_cache: dict[int, Result] = {}


def timer_floor(calls: int = 200_000) -> Result:
    """The harness measuring an empty lambda: what every delta includes. Cached per process."""
    cached = _floor_cache.get(calls)
    if cached is None:
        run = _run_loop(lambda: None, calls, min(calls, 20_000))
        cached = _summarize("timer.floor", "baseline", [run.deltas], run.wall_ns, run.gc, 1, 1)
        _floor_cache[calls] = cached
    return cached


def _summarize(
    name: str,
    peer: str | None,
    parts: Sequence[npt.NDArray[np.int64]],
    wall_ns: int,
    gc_state: GcState,
    processes: int,
    items_per_call: int,
    floor: Result | None = None,
    notes: tuple[str, ...] = (),
) -> Result:
    deltas = np.sort(np.concatenate(parts)) if len(parts) > 1 else np.sort(parts[0])
    calls = len(deltas)
    return Result(
        name=name,
        peer=peer,
        calls=calls,
        processes=processes,
        items_per_call=items_per_call,
        p50_ns=_rank(deltas, 0.50),
        p99_ns=_rank(deltas, 0.99),
        p999_ns=_rank(deltas, 0.999),
        max_ns=int(deltas[-1]),
        mean_ns=float(deltas.mean()),
        ops_per_s=calls * items_per_call * 1e9 / max(wall_ns, 1),
        wall_ns=wall_ns,
        floor_p50_ns=floor.p50_ns if floor else None,
        floor_mean_ns=floor.mean_ns if floor else None,
        gc=gc_state,
        notes=notes,
        cdf=tuple((q, _rank(deltas, q)) for q in _CDF_QUANTILES),
    )


def _check_counts(calls: int, warmup: int) -> None:
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
        raise ValueError(f"calls must be a positive int, got {calls!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")


def measure(
    name: str,
    fn: Call,
    *,
    calls: int = 1_000_000,
    warmup: int = 20_000,
    peer: str | None = None,
    setup: Callable[[], object] | None = None,
    teardown: Teardown | None = None,
    items_per_call: int = 1,
    notes: tuple[str, ...] = (),
) -> Result:
    """Time ``calls`` calls of ``fn`` one by one, after ``warmup`` untimed-for-results calls.

    ``setup`` runs before the warm-up; ``teardown`` runs after the loop, also on error; a
    non-empty string it returns (e.g. a drop count) is added to the result's notes.
    """
    _check_counts(calls, warmup)
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if setup is not None:
        setup()
    try:
        run = _run_loop(fn, calls, warmup)
    finally:
        said = teardown() if teardown is not None else None
    if isinstance(said, str) and said:
        notes = (*notes, said)
    floor = timer_floor()
    return _summarize(
        name, peer, [run.deltas], run.wall_ns, run.gc, 1, items_per_call, floor, notes
    )


def _child_main(
    conn: Connection,
    barrier: Any,
    factory: Factory,
    args: tuple[object, ...],
    calls: int,
    warmup: int,
) -> None:
    """One producer process: build the call, warm up, wait for the others, time, report."""
    try:
        fn, teardown = factory(*args)
        try:
            if warmup > 0:
                _timed_loop(fn, _new_deltas(warmup))
            barrier.wait(timeout=120)
            start = time.monotonic_ns()
            run = _run_loop(fn, calls, 0)
            end = time.monotonic_ns()
        finally:
            if teardown is not None:
                teardown()
        conn.send(("ok", run.deltas.tobytes(), start, end, run.gc))
    except BaseException:
        # Break the barrier so the siblings fail fast instead of waiting out the timeout.
        barrier.abort()
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def measure_processes(
    name: str,
    factory: Factory,
    *,
    processes: int,
    calls: int = 200_000,
    warmup: int = 20_000,
    peer: str | None = None,
    args: tuple[object, ...] = (),
    items_per_call: int = 1,
    timeout_s: float = 600.0,
) -> Result:
    """Run the per-call loop in ``processes`` spawned producers at once and merge the deltas.

    ``factory(*args)`` runs in each child and returns ``(fn, teardown)``; it and ``args`` must
    be picklable (a module-level function; a ring name rather than a mapped object).
    ``calls`` is per process. Throughput is all calls over the window from the first start to
    the last end, so it is the aggregate rate the producers reached together.
    """
    _check_counts(calls, warmup)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes must be a positive int, got {processes!r}")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    children = []
    for _ in range(processes):
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child_main,
            args=(child_end, barrier, factory, args, calls, warmup),
            name=f"bench-producer-{name}",
        )
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    deadline = time.monotonic() + timeout_s
    replies: list[tuple[Any, ...]] = []
    errors: list[str] = []
    try:
        for proc, conn in children:
            remaining = max(0.0, deadline - time.monotonic())
            if not conn.poll(remaining):
                errors.append(f"{proc.name} sent nothing within {timeout_s:.0f} s")
                continue
            try:
                reply = conn.recv()
            except EOFError:
                errors.append(f"{proc.name} exited without a result")
                continue
            if reply[0] == "ok":
                replies.append(reply)
            else:
                errors.append(str(reply[1]))
    finally:
        for proc, conn in children:
            conn.close()
            proc.join(timeout=max(1.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
    if errors:
        raise RuntimeError(f"{name}: producer failed:\n" + "\n".join(errors))
    parts = [np.frombuffer(r[1], dtype=np.int64) for r in replies]
    window = max(r[3] for r in replies) - min(r[2] for r in replies)
    states: list[GcState] = [r[4] for r in replies]
    merged = GcState(
        enabled=all(s.enabled for s in states),
        thresholds=states[0].thresholds,
        counts_before=states[0].counts_before,
        counts_after=states[0].counts_after,
        collections=tuple(int(sum(c)) for c in zip(*(s.collections for s in states), strict=True)),
    )
    return _summarize(name, peer, parts, window, merged, processes, items_per_call, timer_floor())
