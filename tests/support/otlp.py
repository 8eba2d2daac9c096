"""Small OTLP/HTTP request bodies, one per signal, for the exporter's tests."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span


def resource() -> Resource:
    return Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value="worker"))]
    )


def logs_payload(*bodies: str) -> bytes:
    records = [LogRecord(body=AnyValue(string_value=b), severity_number=9) for b in bodies]
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(resource=resource(), scope_logs=[ScopeLogs(log_records=records)])
        ]
    )
    return request.SerializeToString()


def spans_payload(name: str) -> bytes:
    span = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=name)
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource(), scope_spans=[ScopeSpans(spans=[span])])]
    )
    return request.SerializeToString()


def metrics_payload(name: str) -> bytes:
    metric = Metric(name=name, gauge=Gauge(data_points=[NumberDataPoint(as_double=0.5)]))
    request = ExportMetricsServiceRequest(
        resource_metrics=[
            ResourceMetrics(resource=resource(), scope_metrics=[ScopeMetrics(metrics=[metric])])
        ]
    )
    return request.SerializeToString()
