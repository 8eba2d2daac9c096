"""Request bodies -> ring-format chunks: decompression with a bound, protobuf or OTLP/JSON,
then ``convert`` (logs natively through ``_logs``).

Every failure a sender can cause is a ``BadRequest`` with the HTTP status it gets: 400
for a body that does not parse, 413 for one over the size limit (after decompression:
a decompression bomb stops at the limit, it is never inflated whole), 415 for a content
type or encoding the receiver does not take.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from typing import Any, Literal

import zstandard
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from emp_fastbuf.agent.receiver import _logs
from emp_fastbuf.agent.receiver.convert import (
    Converted,
    Cumulative,
    Reject,
    convert_metrics,
    convert_traces,
    log_record,
    resource_blob,
)
from emp_fastbuf.records import LaneChunk

__all__ = ["BadRequest", "Signal", "convert_request", "decompress", "parse_body"]

Signal = Literal["logs", "traces", "metrics"]
REQUESTS: dict[str, type[Any]] = {
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_READ = 1 << 16


class BadRequest(Exception):
    """A request the receiver answers with ``status`` and ``message`` (never fatal)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _too_large(limit: int) -> BadRequest:
    return BadRequest(413, f"the body is larger than {limit} bytes after decompression")


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """``body`` decoded per its Content-Encoding (gzip, zstd, identity), at most
    ``limit`` bytes out: a larger result is a 413, found before it is all inflated."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(body) > limit:
            raise _too_large(limit)
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = inflater.decompress(body, limit + 1)
            if len(out) > limit:
                raise _too_large(limit)
            if not inflater.eof or inflater.unused_data:
                raise BadRequest(400, "the gzip body is truncated or has data after its end")
            return out
        if encoding == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
            parts: list[bytes] = []
            total = 0
            while chunk := reader.read(_READ):
                total += len(chunk)
                if total > limit:
                    raise _too_large(limit)
                parts.append(chunk)
            return b"".join(parts)
    except (zlib.error, zstandard.ZstdError, gzip.BadGzipFile, EOFError) as exc:
        raise BadRequest(400, f"the {encoding} body does not decompress: {exc}") from None
    raise BadRequest(415, f"unsupported Content-Encoding {encoding!r} (gzip, zstd or none)")


def _hex_to_base64(node: Any) -> None:
    """OTLP/JSON writes traceId, spanId and parentSpanId as hex; protobuf's JSON mapping
    reads bytes as base64: rewrite them in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError:
                    raise BadRequest(400, f"{key} is not hex: {value[:40]!r}") from None
            else:
                _hex_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_to_base64(item)


def parse_body(signal: Signal, data: bytes, content_type: str) -> Any:
    """The ``Export*ServiceRequest`` of ``data``: protobuf or JSON per ``content_type``."""
    kind = content_type.split(";", 1)[0].strip().lower()
    cls = REQUESTS[signal]
    if kind == "application/x-protobuf" or kind == "application/protobuf":
        try:
            return cls.FromString(data)
        except DecodeError as exc:
            raise BadRequest(400, f"the body is not a valid {cls.__name__}: {exc}") from None
    if kind == "application/json":
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(400, f"the body is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise BadRequest(400, "the JSON body is not an object")
        try:
            _hex_to_base64(document)
            return json_format.ParseDict(document, cls(), ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
            raise BadRequest(400, f"the JSON body is not a valid {cls.__name__}: {exc}") from None
    raise BadRequest(
        415, f"unsupported Content-Type {kind!r} (application/x-protobuf or application/json)"
    )


def convert_request(signal: Signal, data: bytes, content_type: str, state: Cumulative) -> Converted:
    """Decompressed body -> chunks. Logs in protobuf take the native path whole; JSON
    bodies are parsed, re-serialized and take it too."""
    if signal == "logs":
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == "application/json":
            data = parse_body(signal, data, content_type).SerializeToString()
        elif kind not in ("application/x-protobuf", "application/protobuf"):
            parse_body(signal, data, content_type)  # raises the 415
        return _native_logs(data)
    message = parse_body(signal, data, content_type)
    if signal == "traces":
        return convert_traces(message)
    return convert_metrics(message, state)


def _native_logs(data: bytes) -> Converted:
    now = time.time_ns()
    try:
        groups, bad_severity, bad_ids = _logs.decode_logs(data, now)
    except ValueError as exc:
        raise BadRequest(400, f"the body is not a valid ExportLogsServiceRequest: {exc}") from None
    out = Converted()
    if bad_severity:
        out.reject("log records with a severity_number above 24", bad_severity)
    if bad_ids:
        out.reject("log records with an id of the wrong length", bad_ids)
    blobs: dict[tuple[bytes, bytes], bytes] = {}
    for resource_bytes, scope_bytes, records in groups:
        if not records:
            continue
        key = (resource_bytes, scope_bytes)
        blob = blobs.get(key)
        if blob is None:
            try:
                blob = resource_blob(
                    Resource.FromString(resource_bytes),
                    InstrumentationScope.FromString(scope_bytes),
                )
            except DecodeError as exc:
                raise BadRequest(400, f"a resource or scope does not parse: {exc}") from None
            blobs[key] = blob
        kept: list[bytes] = []
        for record in records:
            if type(record) is bytes:
                kept.append(record)
                continue
            try:
                kept.append(log_record(LogRecord.FromString(record[0]), now))
            except DecodeError as exc:
                raise BadRequest(400, f"a log record does not parse: {exc}") from None
            except Reject as exc:
                out.reject(f"log records {exc}")
        if kept:
            out.chunks.append(LaneChunk(blob, kept))
            out.accepted += len(kept)
    return out
