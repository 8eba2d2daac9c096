"""Scenarios for the libraries emp-fastbuf is compared with.

Each factory sets its library up the way a careful user would (batching processors,
exporters and sinks that discard, so only the in-process cost is timed) and returns
``(fn, teardown)``: ``fn`` is one telemetry call as an application makes it. A library that
cannot be imported here raises ``Skip`` with the reason.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import queue
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from bench.harness import Call, Skip, Teardown
from bench.scenarios import register

PAYLOAD_64 = bytes(range(64))
ENCODER_BATCH = 512

Scenario = tuple[Call, Teardown | None]


def _import_error(lib: str, exc: ImportError) -> Skip:
    return Skip(f"{lib} is not importable on this Python ({exc})")


def baseline_builtin() -> Scenario:
    """A builtin C call, ``max(i, 3)``: the cheapest real call, for scale."""
    i = 7
    return (lambda: max(i, 3)), None


def otel_span() -> Scenario:
    """OpenTelemetry SDK: ``start_as_current_span`` enter and exit with two attributes."""
    try:
        from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError as exc:
        raise _import_error("opentelemetry-sdk", exc) from exc

    class DiscardSpans(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(DiscardSpans()))
    start = provider.get_tracer("bench.peers").start_as_current_span

    def call() -> None:
        with start("train.step", attributes={"gpu.id": 3, "batch.size": 128}):
            pass

    return call, provider.shutdown


def otel_log() -> Scenario:
    """OpenTelemetry SDK logs: stdlib ``logger.info`` with 4 extras through ``LoggingHandler``."""
    try:
        from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, ReadableLogRecord
        from opentelemetry.sdk._logs.export import (
            BatchLogRecordProcessor,
            LogRecordExporter,
            LogRecordExportResult,
        )
    except ImportError as exc:
        raise _import_error("opentelemetry-sdk logs", exc) from exc

    class DiscardLogs(LogRecordExporter):
        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(DiscardLogs()))
    # The SDK's handler is deprecated in favour of a separate instrumentation package, but
    # it is what the SDK ships and what most deployments still use.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger = _private_logger("bench.peers.otel", handler)
    info = logger.info

    def call() -> None:
        info("step done", extra={"gpu_id": 3, "batch_size": 128, "model": "m-8b", "step": 42})

    def teardown() -> None:
        logger.removeHandler(handler)
        handler.close()
        provider.shutdown()

    return call, teardown


def _private_logger(name: str, handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def logging_queue_handler() -> Scenario:
    """stdlib ``logger.info`` with 4 extras into a ``QueueHandler``; a listener drains it."""
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(q)
    listener = logging.handlers.QueueListener(q, logging.NullHandler())
    listener.start()
    logger = _private_logger("bench.peers.queue", handler)
    info = logger.info

    def call() -> None:
        info("step done", extra={"gpu_id": 3, "batch_size": 128, "model": "m-8b", "step": 42})

    def teardown() -> None:
        logger.removeHandler(handler)
        listener.stop()

    return call, teardown


def picologging_null() -> Scenario:
    """picologging ``logger.info`` with 4 extras into a ``NullHandler``."""
    try:
        import picologging
    except ImportError as exc:
        raise _import_error("picologging", exc) from exc
    logger = picologging.getLogger("bench.peers.pico")
    handler = picologging.NullHandler()
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(picologging.INFO)
    logger.addHandler(handler)
    info = logger.info

    def call() -> None:
        info("step done", extra={"gpu_id": 3, "batch_size": 128, "model": "m-8b", "step": 42})

    return call, lambda: logger.removeHandler(handler)


class _NullWriter:
    """A file-like sink that drops what it is given (structlog's PrintLogger writes here)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


def structlog_json() -> Scenario:
    """structlog: a bound logger, level filter, timestamp, JSON rendering into a null writer."""
    try:
        import structlog
    except ImportError as exc:
        raise _import_error("structlog", exc) from exc
    # wrap_logger keeps the configuration local: nothing global to restore afterwards.
    logger = structlog.wrap_logger(
        structlog.PrintLogger(file=_NullWriter()),  # type: ignore[arg-type]
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    info = logger.info

    def call() -> None:
        info("step done", gpu_id=3, batch_size=128, model="m-8b", step=42)

    return call, None


def _drain_fifo(q: Any) -> None:
    """Consumer process: take batches until the ``None`` sentinel (or the parent is gone)."""
    from queue import Empty

    parent = multiprocessing.parent_process()
    while True:
        try:
            msgs = q.get_many(timeout=0.2)
        except Empty:
            if parent is not None and not parent.is_alive():
                return
            continue
        if msgs and msgs[-1] is None:
            return


def _fifo_with_consumer() -> tuple[Any, multiprocessing.process.BaseProcess]:
    try:
        import faster_fifo
    except ImportError as exc:
        raise _import_error("faster-fifo", exc) from exc
    q = faster_fifo.Queue(max_size_bytes=32 << 20)
    consumer = multiprocessing.get_context("spawn").Process(
        target=_drain_fifo, args=(q,), name="bench-fifo-consumer", daemon=True
    )
    consumer.start()
    return q, consumer


def _stop_consumer(q: Any, consumer: multiprocessing.process.BaseProcess) -> None:
    try:
        q.put(None, timeout=10)
    finally:
        consumer.join(timeout=10)
        if consumer.is_alive():
            consumer.terminate()
            consumer.join(timeout=5)


def _fifo_put(q: Any) -> tuple[Call, Callable[[], str]]:
    put = q.put_nowait
    payload = PAYLOAD_64
    full = [0]

    def call() -> None:
        try:
            put(payload)
        except queue.Full:
            full[0] += 1

    def report() -> str:
        return f"{full[0]} put_nowait calls found the queue full" if full[0] else ""

    return call, report


def faster_fifo_put() -> Scenario:
    """faster-fifo ``put_nowait`` of a 64-byte payload; a spawned consumer drains with get_many."""
    q, consumer = _fifo_with_consumer()
    call, report = _fifo_put(q)

    def teardown() -> str:
        _stop_consumer(q, consumer)
        return report()

    return call, teardown


def faster_fifo_shared() -> tuple[tuple[object, ...], Teardown]:
    """Parent side of the multi-producer faster-fifo scenario: one queue, one consumer."""
    q, consumer = _fifo_with_consumer()
    return (q,), lambda: _stop_consumer(q, consumer)


def faster_fifo_producer(q: Any) -> Scenario:
    """Producer side of the multi-producer faster-fifo scenario (runs in each producer)."""
    return _fifo_put(q)


def otel_encoder() -> Scenario:
    """OTLP protobuf encoding of a batch of ``ENCODER_BATCH`` SDK log records, 4 attributes each.

    The call is what the SDK's OTLP exporter does per batch (``encode_logs`` and serialise);
    throughput is reported in records per second.
    """
    try:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import (
            InMemoryLogRecordExporter,
            SimpleLogRecordProcessor,
        )
    except ImportError as exc:
        raise _import_error("opentelemetry-exporter-otlp-proto-common", exc) from exc

    provider = LoggerProvider(shutdown_on_exit=False)
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("bench.peers.encoder")
    for i in range(ENCODER_BATCH):
        logger.emit(
            body=f"step {i} done",
            severity_number=SeverityNumber.INFO,
            severity_text="INFO",
            attributes={"gpu.id": i % 8, "batch.size": 128, "model": "m-8b", "loss": i / 1000},
        )
    batch = exporter.get_finished_logs()
    provider.shutdown()
    if len(batch) != ENCODER_BATCH:
        raise RuntimeError(f"expected {ENCODER_BATCH} log records, the SDK kept {len(batch)}")

    def call() -> None:
        encode_logs(batch).SerializeToString()

    return call, None


FAST = 1_000_000
SLOW = 200_000

register(
    "baseline.max",
    baseline_builtin,
    peer="baseline",
    calls=FAST,
    description="builtin C call max(i, 3), for scale",
)
register(
    "otel.span",
    otel_span,
    peer="opentelemetry-sdk",
    calls=SLOW,
    warmup=5_000,
    description="start_as_current_span enter+exit, 2 attributes, BatchSpanProcessor",
)
register(
    "otel.log",
    otel_log,
    peer="opentelemetry-sdk",
    calls=SLOW,
    warmup=5_000,
    description="logging.info, 4 extras, LoggingHandler + BatchLogRecordProcessor",
)
register(
    "logging.queue_handler",
    logging_queue_handler,
    peer="stdlib-logging",
    calls=SLOW,
    warmup=5_000,
    description="logging.info, 4 extras, QueueHandler + QueueListener",
)
register(
    "picologging",
    picologging_null,
    peer="picologging",
    calls=FAST,
    description="picologging info, 4 extras, NullHandler",
)
register(
    "structlog",
    structlog_json,
    peer="structlog",
    calls=SLOW,
    warmup=5_000,
    description="bound logger info, 4 key-values, JSONRenderer to a null writer",
)
register(
    "faster_fifo",
    faster_fifo_put,
    peer="faster-fifo",
    calls=SLOW,
    warmup=5_000,
    description="put_nowait 64 B, one consumer process draining",
)
register(
    "faster_fifo.2p",
    faster_fifo_producer,
    peer="faster-fifo",
    calls=100_000,
    quick_calls=10_000,
    warmup=5_000,
    processes=2,
    shared=faster_fifo_shared,
    description="put_nowait 64 B from 2 producer processes, one consumer",
)
register(
    "otel.encoder",
    otel_encoder,
    peer="opentelemetry-exporter-otlp",
    calls=400,
    quick_calls=40,
    warmup=20,
    items_per_call=ENCODER_BATCH,
    description=f"encode_logs + SerializeToString of {ENCODER_BATCH} records; records/s",
)
