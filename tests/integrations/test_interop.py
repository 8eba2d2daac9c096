"""Interop: the OpenTelemetry Python SDK's own OTLP/HTTP exporter and our agent send the
same logical spans and logs to the same receiver; both decode to the same structure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import api
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc

OURS_ONLY = ("emp.", "telemetry.sdk.", "service.instance.id", "host.name", "process.")


def normalize_attrs(attrs: Any) -> dict[str, Any]:
    return {k: v for k, v in attrs_dict(attrs).items() if not k.startswith(OURS_ONLY)}


def span_shape(res: dict[str, Any], span: Any) -> dict[str, Any]:
    return {
        "service": res["service.name"],
        "name": span.name,
        "kind": span.kind,
        "attributes": normalize_attrs(span.attributes),
        "events": [(e.name, attrs_dict(e.attributes)) for e in span.events],
        "status": (span.status.code, span.status.message),
        "root": span.parent_span_id == b"",
        "ids": (len(span.trace_id), len(span.span_id)),
        "timed": span.end_time_unix_nano >= span.start_time_unix_nano > 0,
    }


def log_shape(res: dict[str, Any], rec: Any) -> dict[str, Any]:
    attrs = normalize_attrs(rec.attributes)
    return {
        "service": res["service.name"],
        "body": rec.body.string_value,
        "severity": rec.severity_number,
        "k": attrs.get("k"),
        "in_span": (len(rec.trace_id), len(rec.span_id)),
        "timed": rec.time_unix_nano > 0,
    }


def sdk_side(url: str) -> None:
    resource = Resource.create({"service.name": "interop"})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{url}/v1/traces")))
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=f"{url}/v1/logs"))
    )
    logger = logging.getLogger("interop.sdk")
    logger.propagate = False
    handler = LoggingHandler(logger_provider=lp)
    logger.addHandler(handler)
    try:
        tracer = tp.get_tracer("interop")
        with tracer.start_as_current_span("op", kind=SpanKind.CLIENT) as s:
            s.set_attribute("a", 1)
            s.set_attribute("b", "x")
            s.add_event("ev", {"k": 1})
            s.set_status(Status(StatusCode.ERROR, "boom"))
            logger.warning("hello", extra={"k": "v"})
    finally:
        logger.removeHandler(handler)
        tp.shutdown()
        lp.shutdown()


def ours_side(ring_name: str) -> None:
    fastbuf.configure(service="interop", ring=ring_name)
    try:
        with fastbuf.span("op", a=1, b="x") as s:
            s.kind = 3  # CLIENT
            s.add_event("ev", k=1)
            s.set_status("error", "boom")
            fastbuf.log.warning("hello", k="v")
    finally:
        api.shutdown()


# The SDK deprecated its own LoggingHandler in favour of a separate package; it is still
# what its OTLP log exporter is used with here.
@pytest.mark.filterwarnings("ignore:.*LoggingHandler.*:DeprecationWarning")
def test_sdk_exporter_and_agent_agree_at_the_receiver(
    receiver: OTLPReceiver, ring_name: str, env_clean: Path
) -> None:
    sdk_side(receiver.url)
    sdk_spans = [span_shape(r, s) for r, s in receiver.spans()]
    sdk_logs = [log_shape(r, rec) for r, rec in receiver.logs()]
    assert len(sdk_spans) == 1 and len(sdk_logs) == 1
    fastbuf.Ring.create(ring_name, 4 << 20, lanes=4).close()
    ours_side(ring_name)
    agent = AgentProc(ring_name, env_clean, "--endpoint", receiver.url)
    assert agent.stop() == 0
    ours_spans = [span_shape(r, s) for r, s in receiver.spans()][1:]
    ours_logs = [log_shape(r, rec) for r, rec in receiver.logs()][1:]
    assert ours_spans == sdk_spans
    assert ours_logs == sdk_logs
