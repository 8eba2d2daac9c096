"""OTLP/JSON: the ``http/json`` protocol's bodies, from the protobuf requests the agent builds.

The OTLP specification's JSON is protobuf's JSON mapping with three rules of its own, and
``json_format`` with the right options gives all but one:

* field names in lowerCamelCase (``json_format``'s default);
* enums as integers (``use_integers_for_enums``), 64-bit integers as strings (the mapping);
* ``traceId``, ``spanId`` and ``parentSpanId`` as hex strings, where the mapping writes
  base64 for bytes: :func:`_hex_ids` rewrites them. Other bytes (a ``bytesValue``
  attribute) stay base64, as the specification says.

Some proxies pass JSON only: this path is for them, and costs a parse and a conversion
per request over the protobuf path.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from emp_fastbuf.agent.config import Signal

CONTENT_TYPE = "application/json"

_REQUESTS: dict[Signal, Callable[[], Message]] = {
    "logs": ExportLogsServiceRequest,
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_RESPONSES: dict[Signal, Callable[[], Message]] = {
    "logs": ExportLogsServiceResponse,
    "traces": ExportTraceServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
# Field names (never user data: attribute keys are values of a "key" field) whose bytes
# are ids, written in hex. Spans, links, log records and exemplars carry them.
_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})


def request_json(signal: Signal, payload: bytes) -> bytes:
    """The OTLP/JSON body of a serialized ``Export*ServiceRequest`` for ``signal``."""
    message = _REQUESTS[signal]()
    message.ParseFromString(payload)
    tree = json_format.MessageToDict(message, use_integers_for_enums=True)
    _hex_ids(tree)
    return json.dumps(tree, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_response(signal: Signal, body: bytes) -> Message:
    """An ``Export*ServiceResponse`` from its JSON; raises ``ValueError`` when it is not
    one (unknown fields are ignored: a newer server may add some)."""
    response = _RESPONSES[signal]()
    try:
        json_format.Parse(body.decode("utf-8"), response, ignore_unknown_fields=True)
    except (json_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(str(exc)) from None
    return response


def _hex_ids(node: Any) -> None:
    """Rewrite every id field under ``node`` from base64 to lowercase hex, in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)
