"""Decoded records: the shape the drainer side works with.

The binary format is described in ``docs/record-format.md``; ``reference`` turns bytes
into these objects (and back, for tests and tools).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from emp_fastbuf.errors import CorruptRecord as CorruptRecord

AttrScalar = None | str | int | float | bool | bytes
AttrValue = AttrScalar | list[AttrScalar]
Attributes = dict[str, AttrValue]

# The format's numbers (docs/record-format.md). The native modules cimport the same values
# from _format.pxd; tests/records/test_record_format_doc.py checks that file, these names and the
# doc agree.
FORMAT_VERSION = 1  # record byte 0

# Kinds (record byte 1). RESOURCE is the lane's resource blob, never a ring record.
LOG = 1
EVENT = 2
SPAN = 3
METRIC = 4
RESOURCE = 5
KIND_NAMES = {LOG: "log", EVENT: "event", SPAN: "span", METRIC: "metric"}

# Flags (record byte 2); any other bit is malformed.
FLAG_HAS_TRACE = 0x01
FLAG_HAS_LIMITS = 0x02
FLAG_HAS_TRACE_FLAGS = 0x04
KNOWN_FLAGS = FLAG_HAS_TRACE | FLAG_HAS_LIMITS | FLAG_HAS_TRACE_FLAGS

# Attribute value tags.
T_NONE = 0
T_STR = 1
T_INT = 2
T_DOUBLE = 3
T_BOOL = 4
T_BYTES = 5
T_ARRAY = 6

# What the format itself bounds (the decoder enforces these; the encoder's limits are
# settings, not format).
MAX_SEVERITY = 24
MAX_STATUS_CODE = 2
MAX_SPAN_KIND = 5
MAX_HISTOGRAM_VALUES = 1_048_576

# Metric instruments.
COUNTER = 1
UPDOWNCOUNTER = 2
GAUGE = 3
HISTOGRAM = 4
INSTRUMENT_NAMES = {
    COUNTER: "counter",
    UPDOWNCOUNTER: "updowncounter",
    GAUGE: "gauge",
    HISTOGRAM: "histogram",
}

# Severity: OpenTelemetry numbers and the one text each is written with, on every path
# (native, the logging bridge, structlog, the OpenTelemetry bridge) and in every view.
SEVERITY_TRACE = 1
SEVERITY_DEBUG = 5
SEVERITY_INFO = 9
SEVERITY_WARN = 13
SEVERITY_ERROR = 17
SEVERITY_FATAL = 21
SEVERITY_TEXT = {
    SEVERITY_TRACE: "TRACE",
    SEVERITY_DEBUG: "DEBUG",
    SEVERITY_INFO: "INFO",
    SEVERITY_WARN: "WARN",
    SEVERITY_ERROR: "ERROR",
    SEVERITY_FATAL: "FATAL",
}


def severity_name(number: int) -> str:
    """OpenTelemetry severity number -> the short name of its range ('' for 0): 1-4
    TRACE, 5-8 DEBUG, 9-12 INFO, 13-16 WARN, 17-20 ERROR, 21-24 FATAL."""
    if number < SEVERITY_TRACE:
        return ""
    return SEVERITY_TEXT[min(number, SEVERITY_FATAL) - (min(number, SEVERITY_FATAL) - 1) % 4]


# Span status codes (OTLP numbering).
STATUS_UNSET = 0
STATUS_OK = 1
STATUS_ERROR = 2

# Span kinds (OTLP numbering).
SPAN_KIND_UNSPECIFIED = 0
SPAN_KIND_INTERNAL = 1
SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
SPAN_KIND_PRODUCER = 4
SPAN_KIND_CONSUMER = 5

DEFAULT_HISTOGRAM_BOUNDS: tuple[float, ...] = (
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0,
    1000.0, 2500.0, 5000.0, 7500.0, 10000.0,
)  # fmt: skip


@dataclass(frozen=True)
class LaneChunk:
    """Raw bytes of one lane: the producer's resource blob and its record payloads (the
    unit the agent spools and hands to its sinks)."""

    meta: bytes
    records: list[bytes]


@dataclass(slots=True)
class SpanEvent:
    name: str
    time_unix_nano: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class SpanLink:
    trace_id: bytes
    span_id: bytes
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Record:
    """One decoded record. Fields that do not apply to ``kind`` keep their defaults."""

    kind: int
    time_unix_nano: int
    trace_id: bytes | None = None  # 16 bytes
    span_id: bytes | None = None  # 8 bytes
    dropped_attributes: int = 0
    truncated_values: int = 0
    context: Attributes = field(default_factory=dict)
    attributes: Attributes = field(default_factory=dict)
    # LOG
    severity_number: int = 0
    severity_text: str = ""
    body: str = ""
    # EVENT, SPAN, METRIC
    name: str = ""
    # SPAN
    parent_span_id: bytes | None = None  # None for a root span
    start_unix_nano: int = 0
    status_code: int = STATUS_UNSET
    span_kind: int = 0
    trace_flags: int = 1  # W3C flags of the record's trace (any kind with a trace_id)
    status_message: str = ""
    events: list[SpanEvent] = field(default_factory=list)
    links: list[SpanLink] = field(default_factory=list)
    # METRIC
    instrument: int = 0
    unit: str = ""
    description: str = ""
    value: int | float = 0  # COUNTER, UPDOWNCOUNTER, GAUGE
    values: list[float] = field(default_factory=list)  # HISTOGRAM
    bounds: list[float] = field(default_factory=list)  # HISTOGRAM; empty = default bounds

    @property
    def job_id(self) -> str | None:
        value = self.context.get("job_id")
        return None if value is None else str(value)


@dataclass(slots=True)
class Resource:
    """Per-producer data, published once in the producer's lane metadata."""

    attributes: Attributes = field(default_factory=dict)
    scope_name: str = "emp_fastbuf"
    scope_version: str = ""


def value_sum(values: Iterable[float]) -> float:
    """The exact sum of histogram values (``math.fsum``), or plain float addition where
    fsum refuses: an overflowing sum gives an infinity, inf + -inf gives NaN. The values
    come from untrusted bytes: summing them must never raise."""
    values = list(values)
    try:
        return math.fsum(values)
    except (OverflowError, ValueError):
        return float(sum(values, 0.0))
