"""Scenarios of the drainer side: the agent's export path, the store's ingest and a query.

- ``agent.export`` / ``agent.export.zstd``: one batch of ``BATCH`` LOG records (4 attributes,
  ``job_id`` in context), from a ring that the fastbuf API filled beforehand, through what
  the agent does with every batch: read the lanes, spool the batch (fsynced) and
  acknowledge it, read the spool file back, transcode it to OTLP with the native
  ``_transcode`` (logs and spans), compress (gzip or zstd, level 1) and POST it with the
  agent's ``OTLPHttpExporter`` to an OTLP receiver on 127.0.0.1 that runs in another
  process (``tests/otlp_receiver.py``), scan for metric records, delete the spool file.
  Throughput is in records per second. The process CPU time of every call and the
  exporter's wire bytes are kept (``pipeline_measurements()``) for the cost per million
  events.
- ``agent.export.py``: the same with the Python encoder (``decode_batch`` +
  ``agent.otlp``), the agent's path before the transcoder.
- ``otel.export``: the OpenTelemetry SDK's own encoder (``encode_logs`` + serialize) and
  gzip level 1 on the same logical records (same resource, body, attributes), same batch.
- ``otel.export.http``: the SDK's ``OTLPLogExporter.export`` (its gzip, then HTTP) to the
  same kind of receiver: what the SDK's batch processor pays per batch.
- ``agent.store``: the whole agent path into the store for a batch: drain, spool (fsynced),
  spool read, native rows, ``Store.ingest_rows``, spool file done.
- ``store.ingest``: the agent's store path, 5,000 raw LOG records per call (rows built
  natively, then ``Store.ingest_rows``) into a fresh store.
- ``store.ingest.mixed``: the same with spans, logs, histogram and counter updates.
- ``store.ingest.py``: ``Store.ingest`` of 5,000 records decoded in Python (decoding not timed).
- ``store.query.logs_job``: ``Store.logs(job=..., limit=1000)`` (what ``fastbuf logs --job``
  runs) on a store of ``STORE_RECORDS`` records, built once and cached under
  ``bench/results/.cache/`` (see ``ensure_query_store``).

``python -m bench.ours_pipeline breakdown [BATCHES] [gzip|zstd]`` times each stage of the
export path on its own. ``register_all()`` registers the scenarios; ``bench/ours.py``
calls it.
"""

from __future__ import annotations

import gzip
import itertools
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.harness import Call, Skip, Teardown
from bench.scenarios import register, scenarios

__all__ = [
    "BATCH",
    "STORE_RECORDS",
    "breakdown",
    "ensure_query_store",
    "pipeline_measurements",
    "register_all",
]

Scenario = tuple[Call, Teardown | None]

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO / "bench" / "results" / ".cache"

BATCH = 4096  # records per export call (the agent reads READ_CHUNK = 8192 at most)
JOB_ID = "job-bench-42"
# One lane, so that one producer can stage ~100 batches (~130 B per record) before a run.
RING_SIZE = 128 << 20
PREFILL_BATCHES = 100
EXPORT_CALLS = 60
INGEST_BATCH = 5000
INGEST_CALLS = 100
INGEST_WARMUP = 2
INGEST_STAGED = INGEST_CALLS + INGEST_WARMUP  # ~66 MB of records in the 128 MiB ring
STORE_RECORDS = 10_000_000
QUERY_CALLS = 200
QUERY_LIMIT = 1000  # the CLI's default --limit
_RECEIVER_TIMEOUT_S = 60.0


# ---- measurements kept for the cost per million events ---------------------------------------


@dataclass
class ExportMeter:
    """What the export calls of one scenario consumed, warm-up calls included."""

    compression: str
    calls: int = 0
    records: int = 0
    cpu_s: float = 0.0  # process CPU time inside the calls, refills excluded
    refills: int = 0
    refill_cpu_s: float = 0.0
    wire_bytes: int = 0
    uncompressed_bytes: int = 0
    requests: int = 0

    def to_json(self) -> dict[str, float | int | str]:
        """The fields, JSON-ready."""
        return {
            "compression": self.compression,
            "calls": self.calls,
            "records": self.records,
            "cpu_s": self.cpu_s,
            "refills": self.refills,
            "refill_cpu_s": self.refill_cpu_s,
            "wire_bytes": self.wire_bytes,
            "uncompressed_bytes": self.uncompressed_bytes,
            "requests": self.requests,
        }


_measured: dict[str, ExportMeter] = {}


def pipeline_measurements() -> dict[str, dict[str, float | int | str]]:
    """Per export scenario that ran in this process: records, CPU seconds, wire bytes."""
    return {name: m.to_json() for name, m in _measured.items() if m.records}


# ---- a ring the fastbuf API fills ---------------------------------------------------------


def _import_fastbuf() -> Any:
    try:
        import emp_fastbuf
    except ImportError as exc:
        raise Skip(f"emp_fastbuf is not importable ({exc})") from exc
    return emp_fastbuf


class _StagedRing:
    """A one-lane ring this process writes LOG records into with ``fastbuf.log.info`` (4
    attributes, inside ``fastbuf.context(job_id=...)``) and reads back as the agent does."""

    def __init__(self, tag: str) -> None:
        self.fastbuf = _import_fastbuf()
        from emp_fastbuf import Ring
        from emp_fastbuf.producer import api

        os.environ["EMP_FASTBUF_AGENT"] = "external"
        # Short: macOS limits shared-memory names to 31 characters.
        self.name = f"bench-{os.getpid()}-{uuid.uuid4().hex[:6]}-{tag[:6]}"
        Ring.create(self.name, RING_SIZE, lanes=1).close()
        self.written = 0
        self.consumed = 0
        self._scope: Any = None
        self._consumer_ring: Any = None
        self.consumer: Any = None
        try:
            self.fastbuf.configure(service="bench", ring=self.name, agent="external")
            ring = api.ring()
            if ring is None:
                raise RuntimeError("fastbuf.configure attached no ring")
            self.ring = ring
            self._scope = self.fastbuf.context(job_id=JOB_ID)
            self._scope.__enter__()
            self._consumer_ring = Ring.open(self.name)
            self.consumer = self._consumer_ring.consumer()
        except BaseException:
            self.close()
            raise

    def fill(self, records: int) -> None:
        """Write ``records`` more LOG records; raises if the ring dropped any."""
        info = self.fastbuf.log.info
        before = self.ring.stats()["dropped"]
        start = self.written
        for i in range(start, start + records):
            info("step done", gpu_id=i % 8, batch_size=128, model="m-8b", step=i)
        self.written += records
        dropped = self.ring.stats()["dropped"] - before
        if dropped:
            raise RuntimeError(f"ring {self.name} dropped {dropped} of {records} staged records")

    def fill_mixed(self, records: int) -> None:
        """Write at least ``records`` more records as a GPU worker's steps do: per step a
        span, a log inside it, a histogram update and a counter increment; a job span (a
        trace) around every 1,000 steps."""
        fb = self.fastbuf
        step_ms = fb.metrics.histogram("step.duration", unit="ms")
        steps = fb.metrics.counter("steps")
        info = fb.log.info
        before = self.ring.stats()["dropped"]
        target = self.written + records
        while self.written < target:
            with fb.span("job", job=self.written):
                for i in range(1000):
                    with fb.span("denoise", step=i):
                        info("step done", step=i, loss=0.5 / (i + 1))
                        step_ms.record(12.5 + i % 7)
                        steps.inc()
            self.written += 4 * 1000 + 1
        dropped = self.ring.stats()["dropped"] - before
        if dropped:
            raise RuntimeError(f"ring {self.name} dropped {dropped} staged records")

    def available(self) -> int:
        """Staged records not read yet."""
        return self.written - self.consumed

    def read_batch(self, n: int) -> list[Any]:
        """Up to ``n`` records as the agent's drain loop takes them: ``LaneChunk``s."""
        from emp_fastbuf.records import LaneChunk

        chunks = [LaneChunk(meta, recs) for _lane, meta, recs in self.consumer.read_lanes(n)]
        self.consumed += sum(len(c.records) for c in chunks)
        return chunks

    def decoded_batch(self, n: int) -> list[Any]:
        """``n`` freshly staged records, decoded: ``(Resource, [Record])`` groups."""
        from emp_fastbuf.agent.batch import decode_batch

        self.fill(n)
        groups = decode_batch(self.read_batch(n))
        self.consumer.ack()
        got = sum(len(recs) for _, recs in groups)
        if got != n:
            raise RuntimeError(f"decoded {got} records, expected {n}")
        return groups

    def close(self) -> None:
        """Detach the producer and the consumer, remove the ring."""
        from emp_fastbuf import Ring

        try:
            if self._scope is not None:
                self._scope.__exit__(None, None, None)
                self._scope = None
            if self.consumer is not None:
                self.consumer.close()
                self.consumer = None
            if self._consumer_ring is not None:
                self._consumer_ring.close()
                self._consumer_ring = None
        finally:
            self.fastbuf.shutdown()
            Ring.unlink(self.name)


# ---- the loopback receiver, in a process of its own ----------------------------------------------


def _receiver_main(conn: Connection) -> None:
    """Receiver process: serve until told to stop, then report what was received."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from emp_fastbuf.testing.receiver import OTLPReceiver

    with OTLPReceiver() as rx:
        conn.send(rx.url)
        conn.recv()  # the stop message
        counts = {
            "log_records": len(rx.logs()),
            "attempts": rx.attempt_count(),
            "failed": sum(1 for a in rx.attempts if a.error is not None),
        }
    conn.send(counts)
    conn.close()


class _Receiver:
    """``tests/otlp_receiver.OTLPReceiver`` in a spawned process: its decoding runs on the
    other core and its CPU time is not counted as the exporter's."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_receiver_main, args=(child,), name="bench-receiver")
        self._proc.start()
        child.close()
        if not self._conn.poll(_RECEIVER_TIMEOUT_S):
            self._kill()
            raise RuntimeError("the OTLP receiver process did not start")
        self.url: str = self._conn.recv()

    def _kill(self) -> None:
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=10)

    def stop(self) -> dict[str, int]:
        """Stop the receiver; returns what it decoded (``log_records``, ``attempts``...)."""
        try:
            self._conn.send("stop")
            if not self._conn.poll(_RECEIVER_TIMEOUT_S):
                raise RuntimeError("the OTLP receiver did not report its counts")
            counts: dict[str, int] = self._conn.recv()
        finally:
            self._conn.close()
            self._proc.join(timeout=10)
            self._kill()
        return counts


def _agent_config(url: str, compression: str, home: Path) -> Any:
    from emp_fastbuf.agent.config import AgentConfig

    # An empty environment: the run's own OTEL_* variables must not redirect the export.
    return AgentConfig.from_env({}, {"endpoint": url, "compression": compression, "home": home})


# ---- agent.export -----------------------------------------------------------------------------


class _AgentPath:
    """What the agent does with every batch, minus its threads: the drain (read the lanes,
    spool the batch durably, acknowledge it) and the delivery (read the spool file back,
    encode OTLP, compress and POST through ``OTLPHttpExporter``, scan for metric records,
    mark the file done). ``encoder`` is ``"native"`` (``_transcode``, what ``Agent._deliver``
    runs) or ``"python"`` (``decode_batch`` + ``agent.otlp``, its path before)."""

    def __init__(self, staged: _StagedRing, url: str, compression: str, home: Path) -> None:
        from emp_fastbuf.agent.otlp.http import OTLPHttpExporter
        from emp_fastbuf.agent.spool import Spool

        self.staged = staged
        self.config = _agent_config(url, compression, home)
        self.exporter = OTLPHttpExporter(self.config)
        self.spool = Spool(home / "spool", destinations=("export",))

    def drain(self) -> str:
        """Read a batch, spool it (fsynced), acknowledge it; returns the spool file id."""
        file_id: str = self.spool.write(self.staged.read_batch(BATCH))
        self.staged.consumer.ack()
        return file_id

    def send(self, signal: str, payloads: Sequence[bytes]) -> None:
        """POST request bodies; any outcome but ``ok`` fails the scenario."""
        for payload in payloads:
            result = self.exporter.export(signal, payload)  # type: ignore[arg-type]
            if not result.ok:
                raise RuntimeError(f"{signal} export failed: {result.status} {result.message}")

    def deliver_native(self, file_id: str) -> int:
        """``Agent._deliver`` for an export-only agent; returns the log records sent."""
        from emp_fastbuf.agent.batch import decode_batch
        from emp_fastbuf.agent.transcode import _transcode
        from emp_fastbuf.records import METRIC, LaneChunk

        batch = self.spool.read(file_id)
        max_bytes = self.config.request_max_bytes
        payloads, n, bad = _transcode.logs_requests(batch, time.time_ns(), max_bytes)
        self.send("logs", payloads)
        spans, n_spans, bad_spans = _transcode.spans_requests(batch, max_bytes)
        self.send("traces", spans)
        if bad or bad_spans or n_spans:
            raise RuntimeError(f"transcoder: {bad + bad_spans} rejected, {n_spans} spans")
        # As the agent does: only the metric records are decoded, for the aggregator.
        metric_chunks = [
            LaneChunk(c.meta, [r for r in c.records if len(r) > 1 and r[1] == METRIC])
            for c in batch
        ]
        if any(recs for _res, recs in decode_batch(metric_chunks)):
            raise RuntimeError("a batch of LOG records held a metric record")
        self.spool.mark_done(file_id, "export")
        return int(n)

    def deliver_python(self, file_id: str) -> int:
        """The same with the Python encoder: decode every record, build, serialize."""
        from emp_fastbuf.agent.batch import decode_batch
        from emp_fastbuf.agent.otlp.reference import iter_logs_requests, iter_traces_requests
        from emp_fastbuf.records import METRIC

        groups = decode_batch(self.spool.read(file_id))
        max_bytes = self.config.request_max_bytes
        self.send("logs", list(iter_logs_requests(groups, max_bytes)))
        if list(iter_traces_requests(groups, max_bytes)):
            raise RuntimeError("a batch of LOG records produced a traces request")
        n = 0
        for _res, recs in groups:
            n += len(recs)
            for rec in recs:
                if rec.kind == METRIC:
                    raise RuntimeError("a batch of LOG records held a metric record")
        self.spool.mark_done(file_id, "export")
        return n

    def close(self) -> dict[str, Any]:
        """Close the exporter; returns its final counters."""
        stats: dict[str, Any] = self.exporter.stats()
        self.exporter.close()
        return stats


def _export_scenario(name: str, compression: str, encoder: str) -> Scenario:
    """The timed call: one batch through ``_AgentPath`` (drain, then delivery)."""
    home = Path(tempfile.mkdtemp(prefix="bench-export-"))
    staged = _StagedRing("export")
    receiver: _Receiver | None = None
    try:
        staged.fill(PREFILL_BATCHES * BATCH)
        receiver = _Receiver()
        path = _AgentPath(staged, receiver.url, compression, home)
    except BaseException:
        if receiver is not None:
            receiver.stop()
        staged.close()
        shutil.rmtree(home, ignore_errors=True)
        raise
    meter = ExportMeter(compression)
    _measured[name] = meter
    clock = time.process_time
    drain = path.drain
    deliver = path.deliver_native if encoder == "native" else path.deliver_python

    def call() -> None:
        c0 = clock()
        if staged.available() < BATCH:
            # Only when a run asks for more calls than were staged: counted in this call's
            # latency (and noted), left out of the CPU per record.
            staged.fill(PREFILL_BATCHES * BATCH)
            meter.refills += 1
            meter.refill_cpu_s += clock() - c0
        c1 = clock()
        n = deliver(drain())
        if n != BATCH:
            raise RuntimeError(f"exported {n} records, expected {BATCH}")
        meter.cpu_s += clock() - c1
        meter.calls += 1
        meter.records += n

    def teardown() -> str:
        assert receiver is not None
        try:
            stats = path.close()
            counts = receiver.stop()
        finally:
            staged.close()
            shutil.rmtree(home, ignore_errors=True)
        meter.wire_bytes = int(stats["bytes_on_wire"])
        meter.uncompressed_bytes = int(stats["bytes_uncompressed"])
        meter.requests = int(stats["requests"])
        if counts["log_records"] != meter.records:
            raise RuntimeError(
                f"the receiver decoded {counts['log_records']:,} log records, "
                f"{meter.records:,} were exported"
            )
        records = max(meter.records, 1)
        refills = (
            f"; the ring was refilled {meter.refills} times inside timed calls"
            if meter.refills
            else ""
        )
        return (
            f"{encoder} encoder, {compression}: {meter.wire_bytes / records:.2f} wire bytes "
            f"per record ({meter.uncompressed_bytes / records:.1f} before compression); "
            f"{1e6 * meter.cpu_s / records:.2f} us CPU per record; the receiver decoded "
            f"{counts['log_records']:,} records in {counts['attempts']} requests{refills}"
        )

    return call, teardown


def agent_export_gzip() -> Scenario:
    """``agent.export``: the agent's path (native encoder) with gzip, its default."""
    return _export_scenario("agent.export", "gzip", "native")


def agent_export_zstd() -> Scenario:
    """``agent.export.zstd``: the agent's path with zstd."""
    return _export_scenario("agent.export.zstd", "zstd", "native")


def agent_export_python() -> Scenario:
    """``agent.export.py``: the agent's path with the Python encoder, gzip."""
    return _export_scenario("agent.export.py", "gzip", "python")


# ---- the OpenTelemetry SDK on the same records --------------------------------------------------


def _sdk_batch(n: int) -> list[Any]:
    """``n`` SDK log records with the content of our staged records: same resource
    attributes and scope, time, body, severity, and the attributes OTLP gets from us
    (``emp.job_id`` and the 4 attributes)."""
    try:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
        from opentelemetry.sdk.resources import Resource as SdkResource
    except ImportError as exc:
        raise Skip(f"opentelemetry-sdk is not importable ({exc})") from exc
    from emp_fastbuf.agent.otlp.reference import record_attributes

    staged = _StagedRing("sdk")
    try:
        groups = staged.decoded_batch(n)
    finally:
        staged.close()
    resource, recs = groups[0]
    provider = LoggerProvider(
        resource=SdkResource(dict(resource.attributes)), shutdown_on_exit=False
    )
    memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger(resource.scope_name, resource.scope_version)
    for rec in recs:
        logger.emit(
            timestamp=rec.time_unix_nano,
            observed_timestamp=rec.time_unix_nano,
            severity_number=SeverityNumber(rec.severity_number),
            severity_text=rec.severity_text,
            body=rec.body,
            attributes=dict(record_attributes(rec)),
        )
    batch = list(memory.get_finished_logs())
    provider.shutdown()
    if len(batch) != n:
        raise RuntimeError(f"expected {n} SDK log records, the SDK kept {len(batch)}")
    return batch


def otel_export() -> Scenario:
    """``otel.export``: ``encode_logs`` + ``SerializeToString`` + gzip level 1, per batch."""
    try:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    except ImportError as exc:
        raise Skip(f"opentelemetry-exporter-otlp-proto-common is not importable ({exc})") from exc
    batch = _sdk_batch(BATCH)
    sizes: list[int] = []

    def call() -> None:
        body = gzip.compress(encode_logs(batch).SerializeToString(), compresslevel=1, mtime=0)
        if not sizes:
            sizes.append(len(body))

    def teardown() -> str:
        return f"gzip level 1: {sizes[0] / BATCH:.2f} bytes per record" if sizes else ""

    return call, teardown


def otel_export_http() -> Scenario:
    """``otel.export.http``: the SDK's ``OTLPLogExporter.export`` (gzip) to the receiver."""
    try:
        import requests
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.sdk._logs.export import LogRecordExportResult
    except ImportError as exc:
        raise Skip(f"opentelemetry-exporter-otlp-proto-http is not importable ({exc})") from exc
    batch = _sdk_batch(BATCH)
    receiver = _Receiver()
    session = requests.Session()
    session.trust_env = False  # no proxy from the environment for a loopback receiver
    exporter = OTLPLogExporter(
        endpoint=f"{receiver.url}/v1/logs",
        compression=Compression.Gzip,
        session=session,
        timeout=30,
    )
    sent = [0]

    def call() -> None:
        if exporter.export(batch) is not LogRecordExportResult.SUCCESS:
            raise RuntimeError("the SDK's OTLPLogExporter did not deliver the batch")
        sent[0] += len(batch)

    def teardown() -> str:
        try:
            exporter.shutdown()  # type: ignore[no-untyped-call]
        finally:
            counts = receiver.stop()
        if counts["log_records"] != sent[0]:
            raise RuntimeError(
                f"the receiver decoded {counts['log_records']:,} log records, "
                f"{sent[0]:,} were exported"
            )
        return f"the receiver decoded {counts['log_records']:,} records"

    return call, teardown


# ---- store.ingest -------------------------------------------------------------------------------


def agent_store() -> Scenario:
    """``agent.store``: everything an agent without an endpoint does with one batch of
    ``BATCH`` LOG records: the drain (read the lanes, spool the batch fsynced, acknowledge)
    and the delivery (read the spool file back, rows built natively, ``Store.ingest_rows``,
    the file marked done and deleted), as ``Agent`` runs them, minus its threads."""
    from emp_fastbuf.agent.batch import store_groups
    from emp_fastbuf.agent.spool import Spool
    from emp_fastbuf.store import Store

    home = Path(tempfile.mkdtemp(prefix="bench-agent-store-"))
    staged = _StagedRing("astore")
    try:
        staged.fill(PREFILL_BATCHES * BATCH)
        spool = Spool(home / "spool", destinations=("store",))
        store = Store(home / "store.sqlite")
    except BaseException:
        staged.close()
        shutil.rmtree(home, ignore_errors=True)
        raise
    refills = [0]

    def call() -> None:
        if staged.available() < BATCH:
            staged.fill(PREFILL_BATCHES * BATCH)  # only when a run asks for more calls
            refills[0] += 1
        file_id = spool.write(staged.read_batch(BATCH))
        staged.consumer.ack()
        n = store.ingest_rows(store_groups(spool.read(file_id)))
        spool.mark_done(file_id, "store")
        if n != BATCH:
            raise RuntimeError(f"the store took {n} records, expected {BATCH}")

    def teardown() -> str:
        try:
            left = len(spool.pending())
            store.close()
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
    raw lane chunks as the ring hands them over -> rows, built natively
    (``agent.main.store_groups``) -> ``Store.ingest_rows``, one transaction, fresh store.
    Every call takes records it has not seen (all staged before the run), so the store and
    its chunk index grow as they do under a live agent."""
    return _agent_rows_scenario("ingest", mixed=False)


def store_ingest_mixed() -> Scenario:
    """``store.ingest.mixed``: as ``store.ingest``, with a worker's mix of records: per step
    a span, a log in it, a histogram update and a counter increment (a quarter each)."""
    return _agent_rows_scenario("ingmix", mixed=True)


def _agent_rows_scenario(tag: str, *, mixed: bool) -> Scenario:
    from emp_fastbuf.agent.batch import store_groups

    staged = _StagedRing(tag)
    try:
        if mixed:
            staged.fill_mixed(INGEST_STAGED * INGEST_BATCH)
        else:
            staged.fill(INGEST_STAGED * INGEST_BATCH)
        batches = [staged.read_batch(INGEST_BATCH) for _ in range(INGEST_STAGED)]
    finally:
        staged.close()
    batches.reverse()  # popped from the end: oldest first

    def rows() -> Any:
        if not batches:
            raise RuntimeError(f"all {INGEST_STAGED} staged batches were used")
        return store_groups(batches.pop())

    return _ingest_scenario(rows, "ingest_rows")


def store_ingest_python() -> Scenario:
    """``store.ingest.py``: ``Store.ingest`` of ``INGEST_BATCH`` LOG records already decoded
    by the Python decoder (decoding not timed): the Python row builder, for comparison.

    Every call moves the batch's timestamps past the previous call's, as a live agent's
    batches come: the same timestamps again and again would insert into the middle of the
    chunk index (and not what happens)."""
    staged = _StagedRing("ingpy")
    try:
        groups = staged.decoded_batch(INGEST_BATCH)
    finally:
        staged.close()
    recs = [rec for _res, group in groups for rec in group]
    span = max(r.time_unix_nano for r in recs) - min(r.time_unix_nano for r in recs) + 1

    def moved() -> Any:
        for rec in recs:
            rec.time_unix_nano += span
        return groups

    return _ingest_scenario(moved, "ingest")


def _ingest_scenario(next_batch: Callable[[], Any], method: str) -> Scenario:
    from emp_fastbuf.store import Store

    home = Path(tempfile.mkdtemp(prefix="bench-store-"))
    store = Store(home / "store.sqlite")
    ingest = getattr(store, method)
    stored = [0]

    def call() -> None:
        n = ingest(next_batch())
        if n != INGEST_BATCH:
            raise RuntimeError(f"the store took {n} records, expected {INGEST_BATCH}")
        stored[0] += n

    def teardown() -> str:
        try:
            size = store.size_bytes()
            store.close()
        finally:
            shutil.rmtree(home, ignore_errors=True)
        return f"{stored[0]:,} records stored, {size / max(stored[0], 1):.0f} bytes per record"

    return call, teardown


# ---- the 10M-record store for the query ---------------------------------------------------------

# Bump when the rows the builder writes change: a cached store of another version is rebuilt.
_GENERATOR_VERSION = 3
_SOURCES = 64  # 8 machines x 8 GPUs
_CONCURRENT_JOBS = 16  # jobs running at any time; each on 4 of the 64 workers
_JOBS = 1024
_T0_NS = 1_700_000_000_000_000_000
_STEP_NS = 60_000_000  # 10M records span ~7 days
_QUERY_JOBS = 64


def _job_block(records: int) -> int:
    """Records per block of ``_CONCURRENT_JOBS`` jobs that run at the same time."""
    return max(1, records // (_JOBS // _CONCURRENT_JOBS))


def _row_values(i: int, records: int) -> tuple[Any, ...]:
    """Row ``i`` of the query store, as Python values (the SQL below computes the same)."""
    job = (i // _job_block(records)) * _CONCURRENT_JOBS + i % _CONCURRENT_JOBS
    return (
        _T0_NS + i * _STEP_NS,
        1 + i % _SOURCES,
        f"job-{job:05d}",
        {"gpu_id": i % 8, "batch_size": 128, "model": "m-8b", "step": i},
    )


def _row_sql(records: int) -> str:
    """``INSERT ... SELECT`` over a recursive counter: the rows of ``_row_values`` from
    ``_SOURCES`` to ``records - 1``, generated inside SQLite (no Python per row)."""
    block = _job_block(records)
    return f"""
        WITH RECURSIVE g(i) AS (SELECT {_SOURCES} UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?)
        INSERT INTO records (time_unix_nano, kind, source_id, job_id, body, severity_number,
                             severity_text, attributes)
        SELECT {_T0_NS} + i * {_STEP_NS}, 1, 1 + i % {_SOURCES},
               printf('job-%05d', (i / {block}) * {_CONCURRENT_JOBS} + i % {_CONCURRENT_JOBS}),
               'step done', 9, 'INFO',
               printf('{{"gpu_id":%d,"batch_size":128,"model":"m-8b","step":%d}}', i % 8, i)
        FROM g
    """


def _store_signature(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return sorted(
        conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name != ?", ("",))
    )


def _build_query_store(path: Path, records: int) -> None:
    """Build the store at ``path``: the schema from ``Store``, one record per source through
    ``Store.ingest`` (the real path, which also creates the sources), then the rest in one
    transaction with the indexes dropped and re-created from their own SQL afterwards."""
    from emp_fastbuf.records import LOG, Record, Resource
    from emp_fastbuf.store import Store

    first = []
    for i in range(_SOURCES):
        t, _sid, job, attrs = _row_values(i, records)
        machine = f"node-{i // 8:02d}"
        res = Resource(
            {"service.name": "train", "emp.machine_id": machine, "emp.worker_id": f"{machine}-{i}"}
        )
        rec = Record(
            kind=LOG,
            time_unix_nano=t,
            context={"job_id": job},
            attributes=attrs,
            severity_number=9,
            severity_text="INFO",
            body="step done",
        )
        first.append((res, [rec]))
    with Store(path) as store:
        if store.ingest(first) != _SOURCES:
            raise RuntimeError("Store.ingest did not take the first records")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        reference = _store_signature(conn)
        # The generated rows must be what Store.ingest writes: compare the SQL's rows for
        # the ingested indexes with the ingested rows, every column but the id.
        columns = (
            "time_unix_nano, kind, source_id, job_id, name, body, severity_number, "
            "severity_text, trace_id, span_id, parent_span_id, start_unix_nano, status_code, "
            "status_message, span_kind, attributes, events, links"
        )
        ingested = conn.execute(f"SELECT {columns} FROM records ORDER BY id").fetchall()
        check = _row_sql(records).replace(f"SELECT {_SOURCES} UNION", "SELECT 0 UNION")
        conn.execute("CREATE TEMP TABLE check_rows AS SELECT * FROM main.records WHERE 0")
        conn.execute(check.replace("INSERT INTO records", "INSERT INTO check_rows"), (_SOURCES,))
        generated = conn.execute(
            f"SELECT {columns} FROM check_rows ORDER BY time_unix_nano"
        ).fetchall()
        conn.execute("DROP TABLE check_rows")
        if generated != ingested:
            raise RuntimeError(
                "the bulk rows differ from what Store.ingest writes: "
                f"{generated[:1]!r} != {ingested[:1]!r}"
            )
        conn.execute("PRAGMA journal_mode = OFF")  # a failed build is thrown away whole
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            " AND tbl_name IN ('records', 'chunks') AND sql IS NOT NULL"
        ).fetchall()
        conn.execute("BEGIN")
        for name, _sql in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute(_row_sql(records), (records,))
        # The chunk index as the agent writes it at this store's rate (16 records a second,
        # each from another worker, batches of one second): one chunk per record, the
        # least favourable case for the query.
        conn.execute(
            "INSERT INTO chunks (tbl, first_id, last_id, min_time, max_time, source_id, job_id,"
            " max_severity) SELECT 0, id, id, time_unix_nano, time_unix_nano, source_id, job_id,"
            " severity_number FROM records WHERE id > ?",
            (_SOURCES,),
        )
        conn.execute("UPDATE sequences SET next_id = ? WHERE tbl = 0", (records + 1,))
        for _name, sql in indexes:
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode = WAL")  # as Store leaves it
        if _store_signature(conn) != reference:
            raise RuntimeError("the rebuilt indexes differ from the store's schema")
        count = conn.execute("SELECT max(id), count(*) FROM records").fetchone()
        if tuple(count) != (records, records):
            raise RuntimeError(f"built {count!r} records, expected {records}")
    finally:
        conn.close()


def _cache_meta(records: int) -> dict[str, int]:
    from emp_fastbuf.store import SCHEMA_VERSION

    return {
        "generator": _GENERATOR_VERSION,
        "schema_version": SCHEMA_VERSION,
        "records": records,
        "jobs": _JOBS,
    }


def _cached_store_ok(home: Path, records: int) -> bool:
    from emp_fastbuf.store import Store, StoreError

    try:
        meta = json.loads((home / "build.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict) or meta.get("layout") != _cache_meta(records):
        return False
    try:
        with Store(home / "store.sqlite", readonly=True) as store:  # checks the schema version
            return store.last_id() == records
    except StoreError:
        return False


def ensure_query_store(records: int = STORE_RECORDS) -> tuple[Path, str]:
    """The home folder of a store of ``records`` LOG records, built if the cache has none
    of this size, generator and schema version. Returns ``(home, how)``, ``how`` saying
    whether it was reused or built and in how many seconds."""
    home = CACHE_DIR / f"store-{records}"
    if _cached_store_ok(home, records):
        return home, "reused from the cache"
    CACHE_DIR.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.rmtree(home, ignore_errors=True)
    tmp = CACHE_DIR / f".build-{records}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    try:
        _build_query_store(tmp / "store.sqlite", records)
        took = time.monotonic() - started
        meta = {"layout": _cache_meta(records), "build_s": round(took, 1)}
        (tmp / "build.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
        os.rename(tmp, home)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return home, f"built in {took:.0f} s"


def _query_jobs(records: int) -> list[str]:
    """Jobs spread over the whole store (every one has about records/_JOBS records)."""
    step = _JOBS // _QUERY_JOBS
    return [f"job-{j:05d}" for j in range(step // 2, _JOBS, step)]


def _cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EMP_FASTBUF_")}


def _cli_logs(home: Path, job: str) -> str:
    """One ``fastbuf logs --job JOB`` in a subprocess, output to a pipe; what it took."""
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--job", job, "--home", str(home)],
        capture_output=True,
        env=_cli_env(),
        timeout=120,
        check=False,
    )
    took = time.monotonic() - started
    if out.returncode != 0:
        raise RuntimeError(
            f"fastbuf logs --job {job} exited {out.returncode}: {out.stderr[-500:]!r}"
        )
    lines = out.stdout.count(b"\n")
    return f"`fastbuf logs --job {job}` as a subprocess: {took:.2f} s wall, {lines:,} lines"


def _query_name(records: int) -> str:
    return (
        "store.query.logs_job" if records == STORE_RECORDS else f"store.query.logs_job[{records}]"
    )


def store_query_logs_job(records: int = STORE_RECORDS) -> Scenario:
    """``Store.logs(job=..., limit=1000)`` on the cached store, a different job each call."""
    from emp_fastbuf.store import Store

    home, how = ensure_query_store(records)
    store = Store(home / "store.sqlite", readonly=True)
    jobs = itertools.cycle(_query_jobs(records))
    logs = store.logs

    def call() -> None:
        found = logs(job=next(jobs), limit=QUERY_LIMIT)
        if len(found) != QUERY_LIMIT:
            raise RuntimeError(f"the query found {len(found)} records, expected {QUERY_LIMIT}")

    def teardown() -> str:
        job = _query_jobs(records)[0]
        try:
            started = time.perf_counter()
            whole = len(logs(job=job))  # ``--limit 0``: every record of the job
            took = time.perf_counter() - started
        finally:
            store.close()
        cli = _cli_logs(home, job)
        return (
            f"store of {records:,} records {how}; all {whole:,} records of {job} "
            f"(--limit 0) in {1e3 * took:.0f} ms; {cli}"
        )

    return call, teardown


# ---- the stage breakdown ------------------------------------------------------------------------


@dataclass
class _Stage:
    wall_ns: list[int] = field(default_factory=list)
    cpu_ns: list[int] = field(default_factory=list)


def breakdown(batches: int = 20, compression: str = "gzip") -> dict[str, dict[str, float]]:
    """Each stage of the export path timed on its own over ``batches`` batches of ``BATCH``
    records: median wall and CPU nanoseconds per record. The native path: read, spool
    write (fsync) and read, transcode (logs, spans), metric scan, compress, send (export
    minus compress), done (spool file deleted). The Python encoder's stages (decode, build,
    serialize) on the same batches, and the SDK's encode_logs/serialize on the same records.
    """
    import zstandard

    from emp_fastbuf.agent.batch import decode_batch
    from emp_fastbuf.agent.otlp.reference import build_logs_request
    from emp_fastbuf.agent.transcode import _transcode
    from emp_fastbuf.records import METRIC, LaneChunk

    home = Path(tempfile.mkdtemp(prefix="bench-breakdown-"))
    staged = _StagedRing("breakdown")
    receiver = _Receiver()
    stages: dict[str, _Stage] = {}
    try:
        staged.fill((batches + 1) * BATCH)
        path = _AgentPath(staged, receiver.url, compression, home)
        spool = path.spool
        max_bytes = path.config.request_max_bytes

        def timed(stage: str, fn: Callable[[], Any]) -> Any:
            w0, c0 = time.perf_counter_ns(), time.process_time_ns()
            out = fn()
            w1, c1 = time.perf_counter_ns(), time.process_time_ns()
            s = stages.setdefault(stage, _Stage())
            s.wall_ns.append(w1 - w0)
            s.cpu_ns.append(c1 - c0)
            return out

        def compress(data: bytes) -> bytes:
            if compression == "zstd":
                return zstandard.ZstdCompressor(level=1).compress(data)
            return gzip.compress(data, compresslevel=1, mtime=0)

        def metric_scan(batch: list[Any]) -> object:
            chunks = [
                LaneChunk(c.meta, [r for r in c.records if len(r) > 1 and r[1] == METRIC])
                for c in batch
            ]
            return decode_batch(chunks)

        for b in range(batches + 1):
            chunks = timed("read", partial(staged.read_batch, BATCH))
            file_id = timed("spool write (fsync)", partial(spool.write, chunks))
            staged.consumer.ack()
            batch = timed("spool read", partial(spool.read, file_id))
            payloads, _n, _bad = timed(
                "transcode logs (native)",
                partial(_transcode.logs_requests, batch, time.time_ns(), max_bytes),
            )
            timed("transcode spans (native)", partial(_transcode.spans_requests, batch))
            timed("metric scan", partial(metric_scan, batch))
            data = payloads[0]
            timed("compress", partial(compress, data))
            timed("compress + send", partial(path.send, "logs", [data]))
            timed("done (spool delete)", partial(spool.mark_done, file_id, "export"))
            groups = timed("decode (python)", partial(decode_batch, batch))
            request = timed("build (python)", partial(build_logs_request, groups))
            timed("serialize (python)", request.SerializeToString)
            if b == 0:  # the first batch warms caches up: not counted
                for s in stages.values():
                    s.wall_ns.clear()
                    s.cpu_ns.clear()
        path.close()
    finally:
        receiver.stop()
        staged.close()
        shutil.rmtree(home, ignore_errors=True)

    def median(values: Sequence[int]) -> float:
        ordered = sorted(values)
        return float(ordered[len(ordered) // 2]) / BATCH

    out = {
        name: {"wall_ns": median(s.wall_ns), "cpu_ns": median(s.cpu_ns)}
        for name, s in stages.items()
    }
    both = out.pop("compress + send")
    out["send"] = {
        "wall_ns": max(0.0, both["wall_ns"] - out["compress"]["wall_ns"]),
        "cpu_ns": max(0.0, both["cpu_ns"] - out["compress"]["cpu_ns"]),
    }
    out.update(_sdk_breakdown(batches))
    return out


def _sdk_breakdown(batches: int) -> dict[str, dict[str, float]]:
    try:
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    except ImportError:
        return {}
    batch = _sdk_batch(BATCH)
    encode = _Stage()
    serialize = _Stage()
    for b in range(batches + 1):
        w0, c0 = time.perf_counter_ns(), time.process_time_ns()
        request = encode_logs(batch)
        w1, c1 = time.perf_counter_ns(), time.process_time_ns()
        request.SerializeToString()
        w2, c2 = time.perf_counter_ns(), time.process_time_ns()
        if b:
            encode.wall_ns.append(w1 - w0)
            encode.cpu_ns.append(c1 - c0)
            serialize.wall_ns.append(w2 - w1)
            serialize.cpu_ns.append(c2 - c1)

    def median(values: list[int]) -> float:
        return float(sorted(values)[len(values) // 2]) / BATCH

    return {
        "sdk encode_logs": {"wall_ns": median(encode.wall_ns), "cpu_ns": median(encode.cpu_ns)},
        "sdk serialize": {
            "wall_ns": median(serialize.wall_ns),
            "cpu_ns": median(serialize.cpu_ns),
        },
    }


_COMMON = (
    "read",
    "spool write (fsync)",
    "spool read",
    "compress",
    "send",
    "done (spool delete)",
)
_NATIVE_PATH = (*_COMMON, "transcode logs (native)", "transcode spans (native)", "metric scan")
_PYTHON_PATH = (*_COMMON, "decode (python)", "build (python)", "serialize (python)")


def _breakdown_markdown(rows: dict[str, dict[str, float]], compression: str) -> str:
    native = sum(rows[s]["cpu_ns"] for s in _NATIVE_PATH)
    python = sum(rows[s]["cpu_ns"] for s in _PYTHON_PATH)
    lines = [
        f"Per record, median over batches of {BATCH:,} ({compression}):",
        "",
        "| stage | wall ns/record | CPU ns/record | share of the agent's CPU (native) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        share = f"{row['cpu_ns'] / native:.0%}" if name in _NATIVE_PATH else ""
        lines.append(f"| {name} | {row['wall_ns']:.0f} | {row['cpu_ns']:.0f} | {share} |")
    lines += [
        "",
        f"Agent CPU per record, native encoder: {native:.0f} ns = "
        f"{1e9 / native:,.0f} records/s/core; Python encoder: {python:.0f} ns = "
        f"{1e9 / python:,.0f} records/s/core.",
    ]
    return "\n".join(lines)


# ---- registration ----------------------------------------------------------------------------


def register_all() -> None:
    """Register the scenarios of this module (a second call does nothing)."""
    have = {s.name for s in scenarios()}
    if "agent.export" in have:
        return
    register(
        "otel.export",
        otel_export,
        peer="opentelemetry-sdk",
        calls=EXPORT_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        description=f"SDK encode_logs + serialize + gzip 1 of {BATCH} log records",
    )
    register(
        "otel.export.http",
        otel_export_http,
        peer="opentelemetry-sdk",
        calls=EXPORT_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        description=f"SDK OTLPLogExporter.export (gzip) of {BATCH} records to a loopback receiver",
    )
    register(
        "agent.export",
        agent_export_gzip,
        calls=EXPORT_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        versus=("otel.export", "otel.export.http"),
        description=(
            f"ring read + spool + native OTLP transcode + gzip 1 + POST, {BATCH} log records"
        ),
    )
    register(
        "agent.export.zstd",
        agent_export_zstd,
        calls=EXPORT_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        versus=("otel.export", "otel.export.http"),
        description=f"the agent's path with zstd 1, {BATCH} log records per call",
    )
    register(
        "agent.export.py",
        agent_export_python,
        calls=EXPORT_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        versus=("otel.export", "otel.export.http"),
        description=f"the agent's path with the Python encoder, gzip 1, {BATCH} records",
    )
    register(
        "agent.store",
        agent_store,
        calls=EXPORT_CALLS,
        quick_calls=5,
        warmup=2,
        items_per_call=BATCH,
        description=f"the agent's path into the store: drain, spool, store, {BATCH} records",
    )
    register(
        "store.ingest",
        store_ingest,
        calls=INGEST_CALLS,
        quick_calls=5,
        warmup=INGEST_WARMUP,
        items_per_call=INGEST_BATCH,
        budget="ops_per_s >= 200000",
        description=f"the agent's store path: {INGEST_BATCH} raw log records per call, fresh store",
    )
    register(
        "store.ingest.mixed",
        store_ingest_mixed,
        calls=INGEST_CALLS,
        quick_calls=5,
        warmup=INGEST_WARMUP,
        items_per_call=INGEST_BATCH,
        budget="ops_per_s >= 200000",
        description=f"the agent's store path: {INGEST_BATCH} raw records per call, a worker's mix",
    )
    register(
        "store.ingest.py",
        store_ingest_python,
        calls=INGEST_CALLS,
        quick_calls=5,
        warmup=INGEST_WARMUP,
        items_per_call=INGEST_BATCH,
        description=f"Store.ingest of {INGEST_BATCH} log records decoded in Python",
    )
    name = _query_name(STORE_RECORDS)
    register(
        name,
        store_query_logs_job,
        calls=QUERY_CALLS,
        quick_calls=20,
        warmup=5,
        budget="p50_ns < 100000000",
        description=f"Store.logs(job=..., limit={QUERY_LIMIT}) on {STORE_RECORDS:,} records",
    )


def _main(argv: list[str]) -> int:
    """``breakdown [BATCHES] [gzip|zstd]``: print the stage table; ``build-store [N]``."""
    if argv[:1] == ["breakdown"]:
        batches = int(argv[1]) if len(argv) > 1 else 20
        compression = argv[2] if len(argv) > 2 else "gzip"
        print(_breakdown_markdown(breakdown(batches, compression), compression))
        return 0
    if argv[:1] == ["build-store"]:
        records = int(argv[1]) if len(argv) > 1 else STORE_RECORDS
        home, how = ensure_query_store(records)
        print(f"{home}: {how}")
        return 0
    print("usage: python -m bench.ours_pipeline breakdown [BATCHES] [gzip|zstd]")
    print("       python -m bench.ours_pipeline build-store [RECORDS]")
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
