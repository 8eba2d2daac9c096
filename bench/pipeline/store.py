"""The store scenarios: the agent's path into its embedded store, and the store's ingest.

- ``agent.store``: the whole agent path into the store for a batch: the drain (read the
  lanes, spool the batch fsynced, acknowledge it), then the delivery through the agent's
  own ``StoreSink`` (the spool file read back into a ``Batch``, rows built natively,
  ``Store.ingest_rows``, the file marked done and deleted).
- ``store.ingest``: the agent's store path, 5,000 raw LOG records per call, without the
  spool: ``StoreSink.deliver`` of a ``Batch`` of the lane chunks as the ring handed them
  over (rows built natively, then ``Store.ingest_rows``) into a fresh store.
- ``store.ingest.mixed``: the same with spans, logs, histogram and counter updates.
- ``store.ingest.py``: ``Store.ingest`` of 5,000 records decoded in Python (decoding not
  timed): the Python row builder, for comparison.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.pipeline.common import (
    BATCH,
    PREFILL_BATCHES,
    Scenario,
    StagedRing,
    agent_config,
    deliver,
    spool_for,
)
from bench.scenarios import register

AGENT_STORE_CALLS = 60
INGEST_BATCH = 5000
INGEST_CALLS = 100
INGEST_WARMUP = 2
INGEST_STAGED = INGEST_CALLS + INGEST_WARMUP  # ~66 MB of records in the 128 MiB ring


def agent_store() -> Scenario:
    """``agent.store``: everything an agent without an endpoint does with one batch of
    ``BATCH`` LOG records: the drain (read the lanes, spool the batch fsynced, acknowledge)
    and the delivery (``StoreSink``: the spool file read back, rows built natively,
    ``Store.ingest_rows``, the file marked done and deleted), as ``Agent`` runs them, minus
    its threads."""
    from emp_fastbuf.agent.sinks.store import StoreSink

    home = Path(tempfile.mkdtemp(prefix="bench-agent-store-"))
    staged = StagedRing("astore")
    try:
        staged.fill(PREFILL_BATCHES * BATCH)
        config = agent_config(home)
        sink = StoreSink.for_agent(config)
        spool = spool_for(config, sink)
    except BaseException:
        staged.close()
        shutil.rmtree(home, ignore_errors=True)
        raise
    refills = [0]

    def call() -> None:
        if staged.available() < BATCH:
            staged.fill(PREFILL_BATCHES * BATCH)  # only when a run asks for more calls
            refills[0] += 1
        n = deliver(sink, spool, staged.drain(spool, BATCH)).records
        if n != BATCH:
            raise RuntimeError(f"the store took {n} records, expected {BATCH}")

    def teardown() -> str:
        try:
            left = len(spool.pending())
            sink.close()
        finally:
            staged.close()
            shutil.rmtree(home, ignore_errors=True)
        if left:
            raise RuntimeError(f"{left} spool files were left")
        note = f"; the ring was refilled {refills[0]} times inside calls" if refills[0] else ""
        return f"every spool file delivered and deleted{note}"

    return call, teardown


def store_ingest() -> Scenario:
    """``store.ingest``: the agent's store path for ``INGEST_BATCH`` LOG records per call:
    raw lane chunks as the ring hands them over, in a ``Batch``, through ``StoreSink``
    (rows built natively by ``Batch.store_rows``, then ``Store.ingest_rows``, one
    transaction), fresh store. Every call takes records it has not seen (all staged
    before the run), so the store and its chunk index grow as they do under a live
    agent."""
    return _sink_ingest_scenario("ingest", mixed=False)


def store_ingest_mixed() -> Scenario:
    """``store.ingest.mixed``: as ``store.ingest``, with a worker's mix of records: per step
    a span, a log in it, a histogram update and a counter increment (a quarter each)."""
    return _sink_ingest_scenario("ingmix", mixed=True)


def _sink_ingest_scenario(tag: str, *, mixed: bool) -> Scenario:
    from emp_fastbuf.agent.batch import Batch
    from emp_fastbuf.agent.sinks.store import StoreSink

    staged = StagedRing(tag)
    try:
        if mixed:
            staged.fill_mixed(INGEST_STAGED * INGEST_BATCH)
        else:
            staged.fill(INGEST_STAGED * INGEST_BATCH)
        batches = [staged.read_batch(INGEST_BATCH) for _ in range(INGEST_STAGED)]
    finally:
        staged.close()
    batches.reverse()  # popped from the end: oldest first
    home = Path(tempfile.mkdtemp(prefix="bench-store-"))
    sink = StoreSink.for_agent(agent_config(home))
    numbers = itertools.count()
    stored = [0]

    def call() -> None:
        if not batches:
            raise RuntimeError(f"all {INGEST_STAGED} staged batches were used")
        delivery = sink.deliver(Batch(f"bench-{next(numbers)}", batches.pop()))
        if delivery.records != INGEST_BATCH or delivery.later or delivery.corrupt:
            raise RuntimeError(f"the store took {delivery}, expected {INGEST_BATCH} records")
        stored[0] += delivery.records

    return call, _store_teardown(sink.store, home, stored)


def store_ingest_python() -> Scenario:
    """``store.ingest.py``: ``Store.ingest`` of ``INGEST_BATCH`` LOG records already decoded
    by the Python decoder (decoding not timed): the Python row builder, for comparison.

    Every call moves the batch's timestamps past the previous call's, as a live agent's
    batches come: the same timestamps again and again would insert into the middle of the
    chunk index (and not what happens)."""
    from emp_fastbuf.store import Store

    staged = StagedRing("ingpy")
    try:
        groups = staged.decoded_batch(INGEST_BATCH)
    finally:
        staged.close()
    recs = [rec for _res, group in groups for rec in group]
    span = max(r.time_unix_nano for r in recs) - min(r.time_unix_nano for r in recs) + 1
    home = Path(tempfile.mkdtemp(prefix="bench-store-"))
    store = Store(home / "store.sqlite")
    ingest: Callable[[Any], int] = store.ingest
    stored = [0]

    def call() -> None:
        for rec in recs:
            rec.time_unix_nano += span
        n = ingest(groups)
        if n != INGEST_BATCH:
            raise RuntimeError(f"the store took {n} records, expected {INGEST_BATCH}")
        stored[0] += n

    return call, _store_teardown(store, home, stored)


def _store_teardown(store: Any, home: Path, stored: list[int]) -> Callable[[], str]:
    def teardown() -> str:
        try:
            size = store.size_bytes()
            store.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return f"{stored[0]:,} records stored, {size / max(stored[0], 1):.0f} bytes per record"

    return teardown


def register_store() -> None:
    """Register ``agent.store`` and the ingest scenarios."""
    register(
        "agent.store",
        agent_store,
        calls=AGENT_STORE_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        description=f"the agent's path into the store: drain, spool, store, {BATCH} records",
    )
    ingest: dict[str, Any] = {
        "calls": INGEST_CALLS,
        "quick_calls": 5,
        "warmup": INGEST_WARMUP,
        "items_per_call": INGEST_BATCH,
    }
    register(
        "store.ingest",
        store_ingest,
        budget="ops_per_s >= 200000",
        description=f"the agent's store path: {INGEST_BATCH} raw log records per call, fresh store",
        **ingest,
    )
    register(
        "store.ingest.mixed",
        store_ingest_mixed,
        budget="ops_per_s >= 200000",
        description=f"the agent's store path: {INGEST_BATCH} raw records per call, a worker's mix",
        **ingest,
    )
    register(
        "store.ingest.py",
        store_ingest_python,
        description=f"Store.ingest of {INGEST_BATCH} log records decoded in Python",
        **ingest,
    )
