"""The record parsers the agent runs natively (``agent.transcode._transcode``) beside their
reference implementations (the reference decoder, then what the Python path builds from
its records), for the tests that check both through the ``implementation`` fixture
(tests/agent/conftest.py); and hand-built METRIC records, good and malformed, that the
encoders cannot write."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from emp_fastbuf.agent.otlp.metrics import MetricPoint, metric_point
from emp_fastbuf.agent.transcode import _transcode
from emp_fastbuf.records import COUNTER, HISTOGRAM, METRIC, CorruptRecord, reference
from emp_fastbuf.store import store_row

Points = tuple[list[MetricPoint], int]
Rows = tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]
T0 = 1_700_000_000_000_000_000


def reference_metric_points(records: Iterable[bytes]) -> Points:
    """``metric_points`` through the reference decoder: the points of the METRIC records
    it decodes, and how many METRIC records it rejects."""
    points: list[MetricPoint] = []
    rejected = 0
    for raw in records:
        if type(raw) is not bytes:
            raise TypeError(f"records must be bytes, not {type(raw).__name__}")
        if len(raw) < 2 or raw[1] != METRIC:
            continue
        try:
            points.append(metric_point(reference.decode_record(raw)))
        except CorruptRecord:
            rejected += 1
    return points, rejected


def reference_store_rows(records: Iterable[bytes]) -> Rows:
    """``store_rows`` of bytes records through the reference decoder and ``store.store_row``."""
    tables: Rows = ([], [], [], [], [])
    for raw in records:
        if type(raw) is not bytes:
            raise TypeError(f"records must be bytes, not {type(raw).__name__}")
        try:
            built = store_row(reference.decode_record(raw))
        except CorruptRecord:
            tables[4].append(raw)
            continue
        assert built is not None  # every kind the decoder accepts has a table
        tables[built[0]].append(built[1])
    return tables


class Implementation(NamedTuple):
    """One implementation of the record parsers the agent runs natively."""

    name: str
    metric_points: Callable[[Iterable[bytes]], Points]
    store_rows: Callable[[Iterable[bytes]], Rows]


IMPLEMENTATIONS = [
    Implementation("native", _transcode.metric_points, _transcode.store_rows),
    Implementation("reference", reference_metric_points, reference_store_rows),
]


def same_value(a: Any, b: Any) -> bool:
    """Equal with equal types and dicts in the same order; floats by repr (NaN equals
    NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_value(a[k], b[k]) for k in a)
    return bool(a == b)


# ---- METRIC records by hand ---------------------------------------------------------------


def _s16(b: bytes) -> bytes:
    return struct.pack("<H", len(b)) + b


def metric_record(
    body: bytes, tail: bytes = b"\x00\x00\x00\x00", version: int = 1, flags: int = 0
) -> bytes:
    """A METRIC record: header, ``body`` (instrument on), context and attributes."""
    return struct.pack("<BBBBQ", version, METRIC, flags, 0, T0) + body + tail


def metric_body(
    instrument: int = COUNTER,
    name: bytes = b"m",
    unit: bytes = b"",
    desc: bytes = b"",
    value: bytes = b"\x02" + struct.pack("<q", 1),
) -> bytes:
    return bytes([instrument]) + _s16(name) + bytes([len(unit)]) + unit + _s16(desc) + value


def histogram_value(
    values: Sequence[float], bounds: Sequence[float], count: int | None = None
) -> bytes:
    n = len(values) if count is None else count
    return struct.pack(f"<I{len(values)}d", n, *values) + struct.pack(
        f"<H{len(bounds)}d", len(bounds), *bounds
    )


# A counter named "m", value 1, at T0, without attributes.
GOOD_METRIC = metric_record(metric_body())
# Each rejected by the reference decoder (tests/agent/test_transcode.py checks that).
MALFORMED_METRICS = {
    "instrument 0": metric_record(metric_body(instrument=0)),
    "instrument 5": metric_record(metric_body(instrument=5)),
    "name not UTF-8": metric_record(metric_body(name=b"\xc0\x80")),
    "unit not UTF-8": metric_record(metric_body(unit=b"\xff")),
    "unit past the end": metric_record(bytes([COUNTER]) + _s16(b"m") + b"\x09ab", b""),
    "description past the end": metric_record(bytes([COUNTER]) + _s16(b"m") + b"\x00\xff\xff", b""),
    "value tag str": metric_record(metric_body(value=b"\x01" + bytes(8))),
    "value tag bool": metric_record(metric_body(value=b"\x04" + bytes(8))),
    "value cut": GOOD_METRIC[:-7],
    "no values": metric_record(metric_body(HISTOGRAM, value=histogram_value([], []))),
    "too many values": metric_record(
        metric_body(HISTOGRAM, value=histogram_value([1.0], [], count=1_048_577))
    ),
    "values past the end": metric_record(
        metric_body(HISTOGRAM, value=histogram_value([1.0], [], count=3))
    ),
    "bounds decreasing": metric_record(
        metric_body(HISTOGRAM, value=histogram_value([1.0], [2.0, 1.0]))
    ),
    "bounds equal": metric_record(metric_body(HISTOGRAM, value=histogram_value([1.0], [1.0, 1.0]))),
    "bound NaN": metric_record(metric_body(HISTOGRAM, value=histogram_value([1.0], [math.nan]))),
    "zero bounds equal": metric_record(
        metric_body(HISTOGRAM, value=histogram_value([1.0], [-0.0, 0.0]))
    ),
    "trailing byte": GOOD_METRIC + b"\x00",
    "context cut": metric_record(metric_body(), b"\x01\x00\x01\x00"),
    "version 2": metric_record(metric_body(), version=2),
    "unknown flag": metric_record(metric_body(), flags=4),
    "all-zero trace id": metric_record(bytes(24) + metric_body(), flags=1),
}
