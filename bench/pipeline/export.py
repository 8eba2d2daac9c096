"""The export scenarios: the agent's OTLP path for a batch, and the OpenTelemetry SDK's
export of the same records.

- ``agent.export`` / ``agent.export.zstd``: one batch of ``BATCH`` LOG records (4
  attributes, ``job_id`` in context), from a ring the fastbuf API filled beforehand, through
  what the agent does with every batch: the drain (read the lanes, spool the batch fsynced,
  acknowledge it), then the delivery through the agent's own ``OTLPSink``: the spool file
  read back into a ``Batch``, its logs and spans transcoded natively, compressed (gzip or
  zstd, level 1) and POSTed by ``OTLPExporter`` to a receiver on 127.0.0.1 that runs in
  another process, its metric records looked for, the file marked done for ``export`` and
  ``metrics`` (deleted). The process CPU time of every call and the exporter's wire bytes
  are kept (``pipeline_measurements()``) for the cost per million events.
- ``agent.export.noredact``: ``agent.export`` with redaction off, to show what redaction
  (on by default) costs: the budget holds ``agent.export`` within 10% of it.
- ``agent.export.py``: the same with the Python encoder, the agent's path before the
  transcoder (``ReferenceOTLPSink`` of ``bench.pipeline.sinks``).
- ``otel.export``: the SDK's own encoder (``encode_logs`` + serialize) and gzip level 1 on
  the same logical records (same resource, body, attributes), same batch.
- ``otel.export.http``: the SDK's ``OTLPLogExporter.export`` (its gzip, then HTTP) to the
  same kind of receiver: what the SDK's batch processor pays per batch.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import Skip
from bench.pipeline.common import (
    BATCH,
    PREFILL_BATCHES,
    Scenario,
    StagedRing,
    agent_config,
    deliver,
    spool_for,
    start_receiver,
)
from bench.scenarios import add_budget, register

if TYPE_CHECKING:
    from emp_fastbuf.agent.spool import Spool
    from emp_fastbuf.testing.receiver import ReceiverProcess

EXPORT_CALLS = 60


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


# ---- agent.export -----------------------------------------------------------------------------


def _export_scenario(name: str, compression: str, encoder: str, redact: bool = True) -> Scenario:
    """The timed call: one batch drained into the spool, then delivered by the sink."""
    home = Path(tempfile.mkdtemp(prefix="bench-export-"))
    staged = StagedRing("export")
    receiver: ReceiverProcess | None = None
    try:
        staged.fill(PREFILL_BATCHES * BATCH)
        receiver = start_receiver()
        from bench.pipeline.sinks import otlp_sink

        config = agent_config(home, receiver.url, compression, redact)
        sink = otlp_sink(config, encoder)
        spool: Spool = spool_for(config, sink)
    except BaseException:
        if receiver is not None:
            receiver.close()
        staged.close()
        shutil.rmtree(home, ignore_errors=True)
        raise
    meter = ExportMeter(compression)
    _measured[name] = meter
    clock = time.process_time

    def call() -> None:
        c0 = clock()
        if staged.available() < BATCH:
            # Only when a run asks for more calls than were staged: counted in this call's
            # latency (and noted), left out of the CPU per record.
            staged.fill(PREFILL_BATCHES * BATCH)
            meter.refills += 1
            meter.refill_cpu_s += clock() - c0
        c1 = clock()
        n = deliver(sink, spool, staged.drain(spool, BATCH)).records
        if n != BATCH:
            raise RuntimeError(f"exported {n} records, expected {BATCH}")
        meter.cpu_s += clock() - c1
        meter.calls += 1
        meter.records += n

    def teardown() -> str:
        assert receiver is not None
        try:
            stats = sink.status()
            sink.close()
            left = len(spool.pending())
            counts = receiver.stop()
        finally:
            staged.close()
            shutil.rmtree(home, ignore_errors=True)
        meter.wire_bytes = int(stats["bytes_on_wire"])
        meter.uncompressed_bytes = int(stats["bytes_uncompressed"])
        meter.requests = int(stats["requests"])
        if left:
            raise RuntimeError(f"{left} spool files were left")
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
            f"{encoder} encoder, {compression}, redaction {'on' if redact else 'off'}: "
            f"{meter.wire_bytes / records:.2f} wire bytes "
            f"per record ({meter.uncompressed_bytes / records:.1f} before compression); "
            f"{1e6 * meter.cpu_s / records:.2f} us CPU per record; the receiver decoded "
            f"{counts['log_records']:,} records in {counts['attempts']} requests{refills}"
        )

    return call, teardown


def agent_export_gzip() -> Scenario:
    """``agent.export``: the agent's path (native encoder) with gzip, its default."""
    return _export_scenario("agent.export", "gzip", "native")


def agent_export_noredact() -> Scenario:
    """``agent.export.noredact``: ``agent.export`` with redaction off, its cost's peer."""
    return _export_scenario("agent.export.noredact", "gzip", "native", redact=False)


def agent_export_zstd() -> Scenario:
    """``agent.export.zstd``: the agent's path with zstd."""
    return _export_scenario("agent.export.zstd", "zstd", "native")


def agent_export_python() -> Scenario:
    """``agent.export.py``: the agent's path with the Python encoder, gzip."""
    return _export_scenario("agent.export.py", "gzip", "python")


# ---- the OpenTelemetry SDK on the same records --------------------------------------------------


def sdk_batch(n: int) -> list[Any]:
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

    staged = StagedRing("sdk")
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
    batch = sdk_batch(BATCH)
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
    batch = sdk_batch(BATCH)
    receiver = start_receiver()
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


# ---- registration ----------------------------------------------------------------------------


def register_export() -> None:
    """Register the SDK's export scenarios, then the agent's."""
    common: dict[str, Any] = {
        "calls": EXPORT_CALLS,
        "quick_calls": 5,
        "warmup": 2,
        "items_per_call": BATCH,
    }
    register(
        "otel.export",
        otel_export,
        peer="opentelemetry-sdk",
        description=f"SDK encode_logs + serialize + gzip 1 of {BATCH} log records",
        **common,
    )
    register(
        "otel.export.http",
        otel_export_http,
        peer="opentelemetry-sdk",
        description=f"SDK OTLPLogExporter.export (gzip) of {BATCH} records to a loopback receiver",
        **common,
    )
    versus = ("otel.export", "otel.export.http")
    register(
        "agent.export",
        agent_export_gzip,
        versus=versus,
        description=(
            f"ring read + spool + native OTLP transcode + gzip 1 + POST, {BATCH} log records"
        ),
        **common,
    )
    register(
        "agent.export.noredact",
        agent_export_noredact,
        versus=versus,
        description=f"agent.export with redaction off (EMP_FASTBUF_REDACT=off), {BATCH} records",
        **common,
    )
    # Redaction (on by default) costs under 10% of the agent's time per record.
    add_budget(
        "p50_ns(agent.export) / p50_ns(agent.export.noredact) <= 1.10",
        name="redaction costs agent.export under 10%",
    )
    register(
        "agent.export.zstd",
        agent_export_zstd,
        versus=versus,
        description=f"the agent's path with zstd 1, {BATCH} log records per call",
        **common,
    )
    register(
        "agent.export.py",
        agent_export_python,
        versus=versus,
        description=f"the agent's path with the Python encoder, gzip 1, {BATCH} records",
        **common,
    )
