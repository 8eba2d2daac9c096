"""The bridges' test kit: private stdlib and SDK loggers and tracer providers into fastbuf,
and one sample recorded through every bridge, checked wherever its records are read back
(the ring, the receiver, the store)."""

from __future__ import annotations

import logging
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk.resources import Resource as SdkResource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import emp_fastbuf as fastbuf
from emp_fastbuf.integrations.otel import FastbufLogRecordProcessor, FastbufSpanProcessor
from emp_fastbuf.integrations.stdlib import FastbufHandler
from emp_fastbuf.integrations.structlog import FastbufProcessor
from emp_fastbuf.records import LOG, SPAN, Record


def private_logger(name: str, handler: logging.Handler, level: int = logging.DEBUG) -> Any:
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(level)
    logger.addHandler(handler)
    return logger


def tracer_provider(**resource: Any) -> TracerProvider:
    provider = TracerProvider(resource=SdkResource.create(resource), shutdown_on_exit=False)
    provider.add_span_processor(FastbufSpanProcessor(flush_timeout=0.1))
    return provider


def sdk_logging(name: str) -> tuple[Any, LoggerProvider, LoggingHandler]:
    """A private stdlib logger into the SDK's LoggingHandler and our log processor."""
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(FastbufLogRecordProcessor(flush_timeout=0.1))
    with warnings.catch_warnings():  # the SDK's handler is deprecated, still shipped
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
    return private_logger(name, handler), provider, handler


def ids(span: Any) -> tuple[bytes, bytes]:
    """(trace id, span id) bytes of an SDK span."""
    ctx = span.get_span_context()
    return ctx.trace_id.to_bytes(16, "big"), ctx.span_id.to_bytes(8, "big")


# ---- a sample through every bridge ----------------------------------------------------


@dataclass
class Sample:
    """What ``emit_sample`` recorded, to check against records read back anywhere."""

    job_id: str
    trace_id: bytes
    sdk_span_id: bytes
    fastbuf_span_id: bytes
    stdlib_body: str
    sdk_log_body: str
    structlog_body: str


def emit_sample(job_id: str = "job-sample") -> Sample:
    """Record one trace through every bridge inside ``fastbuf.context(job_id=...)``: an SDK
    span (server) around a ``fastbuf.span``, a stdlib log, an SDK log and a structlog event
    inside. Needs fastbuf configured; flushes nothing."""
    provider = tracer_provider(**{"deployment.environment": "sample"})
    std_logger = private_logger("sample.stdlib", FastbufHandler())
    otel_logger, log_provider, _otel_handler = sdk_logging("sample.otel")
    slog = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.add_log_level, FastbufProcessor(drop=True)],
    )
    tracer = provider.get_tracer("sample")
    try:
        with (
            fastbuf.context(job_id=job_id),
            tracer.start_as_current_span("sample.request", kind=SpanKind.SERVER) as outer,
            fastbuf.span("sample.step", step=1) as inner,
        ):
            std_logger.info("stdlib %s", "line", extra={"gpu": 0})
            otel_logger.warning("sdk line", extra={"gpu": 1})
            slog.error("structlog line", gpu=2)
        trace_id, sdk_span_id = ids(outer)
        assert inner.span_id is not None
        return Sample(
            job_id=job_id,
            trace_id=trace_id,
            sdk_span_id=sdk_span_id,
            fastbuf_span_id=bytes.fromhex(inner.span_id),
            stdlib_body="stdlib line",
            sdk_log_body="sdk line",
            structlog_body="structlog line",
        )
    finally:
        std_logger.handlers.clear()
        otel_logger.handlers.clear()
        log_provider.shutdown()


def check_sample(recs: list[Record], sample: Sample) -> None:
    """The records of ``emit_sample`` are all there, in one trace, with the job id."""
    spans = {r.name: r for r in recs if r.kind == SPAN}
    logs = {r.body: r for r in recs if r.kind == LOG}
    assert set(spans) >= {"sample.request", "sample.step"}
    assert set(logs) >= {sample.stdlib_body, sample.sdk_log_body, sample.structlog_body}
    outer, step = spans["sample.request"], spans["sample.step"]
    assert outer.span_id == sample.sdk_span_id and outer.parent_span_id is None
    assert outer.span_kind == 2  # SERVER, OTLP numbering
    assert step.span_id == sample.fastbuf_span_id and step.parent_span_id == sample.sdk_span_id
    for rec in [outer, step, *(logs[b] for b in logs)]:
        assert rec.trace_id == sample.trace_id
        assert rec.job_id == sample.job_id
    for body, sev, gpu in (
        (sample.stdlib_body, 9, 0),
        (sample.sdk_log_body, 13, 1),
        (sample.structlog_body, 17, 2),
    ):
        assert logs[body].span_id == sample.fastbuf_span_id
        assert logs[body].severity_number == sev
        assert logs[body].attributes["gpu"] == gpu


# A worker that ends 1,000 SDK spans, says "done", then waits to be killed.
SPAN_WORKER = textwrap.dedent(
    """
    import sys, time
    import emp_fastbuf as fastbuf
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from emp_fastbuf.integrations.otel import FastbufSpanProcessor

    fastbuf.configure(service="crash-worker", ring=sys.argv[1])
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(FastbufSpanProcessor())
    tracer = provider.get_tracer("worker")
    for i in range(1000):
        with tracer.start_as_current_span(f"step-{i}", attributes={"i": i}):
            pass
    print("done", flush=True)
    time.sleep(60)
    """
)
