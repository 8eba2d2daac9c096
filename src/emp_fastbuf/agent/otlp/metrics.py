"""Cumulative aggregation of METRIC records into OTLP data points.

The aggregator takes metric points (:data:`MetricPoint`): the agent has them parsed
natively from raw records (``agent.transcode._transcode.metric_points``), and
:func:`metric_point` makes the same point from a decoded :class:`~emp_fastbuf.records.Record`.

A series is identified by its resource (attributes and scope), metric name, instrument,
unit and attribute set (context attributes included, ``job_id`` exported as
``emp.job_id``, see :func:`emp_fastbuf.agent.otlp.reference.record_attributes`). Every series keeps
reporting its cumulative state on each :meth:`MetricsAggregator.collect` until
:meth:`MetricsAggregator.forget_idle` drops it.

Choices worth knowing:

- ``start_time_unix_nano`` is the time of the first record of the series this aggregator
  saw; ``time_unix_nano`` is the time of the latest record.
- COUNTER and UPDOWNCOUNTER values that are NaN or infinite are ignored and counted
  (one such value would poison the cumulative sum for good); so are negative COUNTER
  increments (a monotonic sum cannot go down). Histogram values that are NaN or infinite
  are ignored and counted the same way. GAUGE values are kept as given, NaN included.
- A histogram that has recorded a negative value exports no ``sum`` (opentelemetry-proto:
  ``sum`` is assumed monotonic and must be left out then); :meth:`snapshot` still has it.
- A sum stays an integer (``as_int``) until it sees a float, then it is a double for
  good; an integer sum outside the int64 range is reported as a double.
- When the explicit bounds of a histogram series change, the series restarts: its
  counts are dropped and its start time becomes the time of the record with the new
  bounds. Cumulative consumers read that as a reset, which is what it is; keeping two
  series with the same identity and different bounds would make the points ambiguous.

Not thread-safe: one agent loop feeds and collects.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, TypeAlias

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality

from emp_fastbuf.agent.otlp.reference import fill_attributes, freeze_attributes, record_attributes
from emp_fastbuf.records import (
    COUNTER,
    DEFAULT_HISTOGRAM_BOUNDS,
    GAUGE,
    HISTOGRAM,
    INSTRUMENT_NAMES,
    METRIC,
    UPDOWNCOUNTER,
    Attributes,
    Record,
    Resource,
    value_sum,
)

__all__ = ["MetricPoint", "MetricsAggregator", "metric_point"]

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1

_SeriesKey = tuple[object, ...]

MetricPoint: TypeAlias = tuple[
    int,
    int,
    str,
    str,
    str,
    Attributes,
    tuple[tuple[str, object], ...],
    int | float | list[float],
    tuple[float, ...] | None,
]
"""One METRIC record: ``(time_unix_nano, instrument, name, unit, description, attributes,
attributes_key, value, bounds)``. ``attributes`` are the exported ones
(``record_attributes``) and ``attributes_key`` their ``freeze_attributes``, the series
key's part; ``value`` is a sum's or a gauge's number or a histogram's list of values;
``bounds`` is a histogram's explicit bounds (empty for the default ones), None for the
other instruments."""


def metric_point(record: Record) -> MetricPoint:
    """The point of a decoded METRIC record: what ``_transcode.metric_points`` parses
    from its bytes."""
    attributes = record_attributes(record)
    histogram = record.instrument == HISTOGRAM
    return (
        record.time_unix_nano,
        record.instrument,
        record.name,
        record.unit,
        record.description,
        attributes,
        freeze_attributes(attributes),
        record.values if histogram else record.value,
        tuple(record.bounds) if histogram else None,
    )


@dataclass(slots=True)
class _Series:
    key: _SeriesKey
    resource_attributes: Attributes
    scope_name: str
    scope_version: str
    name: str
    instrument: int
    unit: str
    description: str
    attributes: Attributes
    start_ns: int
    time_ns: int
    # COUNTER / UPDOWNCOUNTER: ints are summed exactly, floats apart
    int_total: int = 0
    float_total: float = 0.0
    saw_float: bool = False
    # GAUGE
    gauge_value: int | float = 0
    # HISTOGRAM
    bounds: tuple[float, ...] = ()
    bucket_counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    saw_negative: bool = False

    def number(self) -> int | float:
        """The value of a sum or gauge series, as it is exported."""
        if self.instrument == GAUGE:
            value = self.gauge_value
            if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
                return float(value)
            return value
        if self.saw_float:
            return float(self.int_total) + self.float_total
        if _INT64_MIN <= self.int_total <= _INT64_MAX:
            return self.int_total
        return float(self.int_total)


def _number(value: object, what: str) -> int | float:
    if type(value) is bool or not isinstance(value, int | float):
        raise TypeError(f"{what} must be an int or a float, got {type(value).__name__}")
    return value


def _histogram_bounds(given: Sequence[object] | None) -> tuple[float, ...]:
    if not given:
        return DEFAULT_HISTOGRAM_BOUNDS
    bounds = tuple(float(_number(b, "a histogram bound")) for b in given)
    if not all(math.isfinite(b) for b in bounds) or any(a >= b for a, b in pairwise(bounds)):
        raise ValueError(f"histogram bounds must be finite and strictly increasing: {bounds}")
    return bounds


class MetricsAggregator:
    """Cumulative state of every metric series fed to it; see the module docstring."""

    def __init__(self) -> None:
        self._series: dict[_SeriesKey, _Series] = {}
        self._ignored_non_finite = 0
        self._ignored_negative = 0
        self._last_collect_ns: int | None = None

    def __len__(self) -> int:
        return len(self._series)

    @property
    def last_collect_unix_nano(self) -> int | None:
        """The ``now_ns`` of the latest :meth:`collect` (``None`` before the first)."""
        return self._last_collect_ns

    def stats(self) -> dict[str, int]:
        """Counters: live series, and values ignored (non-finite, negative increments)."""
        return {
            "series": len(self._series),
            "ignored_non_finite": self._ignored_non_finite,
            "ignored_negative": self._ignored_negative,
        }

    # --- feeding ------------------------------------------------------------------------

    def feed_groups(self, groups: Iterable[tuple[Resource, Sequence[Record]]]) -> int:
        """Feed every METRIC record of ``groups`` (other kinds are skipped); returns how
        many METRIC records were fed."""
        fed = 0
        for resource, records in groups:
            for record in records:
                if record.kind == METRIC:
                    self.feed(resource, record)
                    fed += 1
        return fed

    def feed(self, resource: Resource, record: Record) -> None:
        """Add one METRIC record of the producer described by ``resource``.

        Raises ``ValueError`` for a record that is not a METRIC, has an unknown instrument
        or invalid histogram bounds, and ``TypeError`` for a value that is not a number.
        """
        if record.kind != METRIC:
            raise ValueError(f"not a METRIC record: kind {record.kind}")
        self._feed(_resource_key(resource), resource, metric_point(record))

    def feed_points(self, resource: Resource, points: Iterable[MetricPoint]) -> int:
        """Add the METRIC records of one producer, as points (``_transcode.metric_points``
        of its raw records); returns how many were skipped as ``feed`` would refuse them
        (histogram bounds that are not finite, say)."""
        rkey = _resource_key(resource)
        skipped = 0
        for point in points:
            try:
                self._feed(rkey, resource, point)
            except (TypeError, ValueError):
                skipped += 1
        return skipped

    def _feed(self, rkey: _SeriesKey, resource: Resource, point: MetricPoint) -> None:
        t, instrument, value = point[0], point[1], point[7]
        if instrument == HISTOGRAM:
            self._feed_histogram(rkey, resource, point)
            return
        if instrument not in (COUNTER, UPDOWNCOUNTER, GAUGE):
            raise ValueError(f"unknown metric instrument {instrument}")
        number = _number(value, "a metric value")
        if instrument != GAUGE:
            if type(number) is float and not math.isfinite(number):
                self._ignored_non_finite += 1
                return
            if instrument == COUNTER and number < 0:
                self._ignored_negative += 1
                return
        series = self._series_for(rkey, resource, point)
        if instrument == GAUGE:
            if t >= series.time_ns:  # last value by time; ties go to the later record
                series.gauge_value = number
                series.time_ns = t
            return
        if isinstance(number, float):
            series.float_total += number
            series.saw_float = True
        else:
            series.int_total += number
        if t > series.time_ns:
            series.time_ns = t

    def _feed_histogram(self, rkey: _SeriesKey, resource: Resource, point: MetricPoint) -> None:
        t, given = point[0], point[7]
        bounds = _histogram_bounds(point[8])
        if not isinstance(given, list | tuple):
            raise TypeError(f"histogram values must be a list, got {type(given).__name__}")
        values: list[float] = []
        for v in given:
            x = v if type(v) is float else float(_number(v, "a histogram value"))
            if math.isfinite(x):
                values.append(x)
            else:
                self._ignored_non_finite += 1
        if not values:
            return
        series = self._series_for(rkey, resource, point, bounds)
        if series.bounds != bounds:
            series = self._restart(series, t, bounds)
        counts = series.bucket_counts
        for x in values:
            # OTLP: bucket i holds (bounds[i-1], bounds[i]], so a value equal to a bound
            # belongs to the bucket that bound closes: the first i with x <= bounds[i].
            counts[bisect_left(bounds, x)] += 1
            if x < series.min:
                series.min = x
                if x < 0:
                    series.saw_negative = True
            if x > series.max:
                series.max = x
        series.count += len(values)
        series.total += value_sum(values)
        if t > series.time_ns:
            series.time_ns = t

    def _series_for(
        self,
        rkey: _SeriesKey,
        resource: Resource,
        point: MetricPoint,
        bounds: tuple[float, ...] = (),
    ) -> _Series:
        t, instrument, name, unit, description, attributes, attributes_key = point[:7]
        key = (*rkey, name, instrument, unit, attributes_key)
        series = self._series.get(key)
        if series is None:
            series = _Series(
                key=key,
                resource_attributes=dict(resource.attributes),
                scope_name=resource.scope_name,
                scope_version=resource.scope_version,
                name=name,
                instrument=instrument,
                unit=unit,
                description=description,
                attributes=dict(attributes),
                start_ns=t,
                time_ns=t,
                bounds=bounds,
                bucket_counts=[0] * (len(bounds) + 1) if bounds else [],
            )
            self._series[key] = series
        elif description:
            series.description = description
        return series

    def _restart(self, old: _Series, t: int, bounds: tuple[float, ...]) -> _Series:
        new = _Series(
            key=old.key,
            resource_attributes=old.resource_attributes,
            scope_name=old.scope_name,
            scope_version=old.scope_version,
            name=old.name,
            instrument=old.instrument,
            unit=old.unit,
            description=old.description,
            attributes=old.attributes,
            start_ns=t,
            time_ns=t,
            bounds=bounds,
            bucket_counts=[0] * (len(bounds) + 1),
        )
        self._series[old.key] = new  # same key: keeps its place in the order
        return new

    # --- reading ------------------------------------------------------------------------

    def collect(self, now_ns: int) -> ExportMetricsServiceRequest | None:
        """An ``ExportMetricsServiceRequest`` with the cumulative state of every series,
        including series not updated since the previous collect; ``None`` when there is
        no series. ``now_ns`` is the collection time, kept as
        :attr:`last_collect_unix_nano`; data points carry the times of their records."""
        if type(now_ns) is not int:
            raise TypeError("now_ns must be an int (nanoseconds since the epoch)")
        self._last_collect_ns = now_ns
        if not self._series:
            return None
        request = ExportMetricsServiceRequest()
        resources: dict[object, Any] = {}
        scopes: dict[tuple[int, str, str], Any] = {}
        metrics: dict[tuple[int, str, int, str], Any] = {}
        for s in self._series.values():
            rkey = s.key[0]
            rm = resources.get(rkey)
            if rm is None:
                rm = request.resource_metrics.add()
                rm.resource.SetInParent()
                fill_attributes(rm.resource.attributes, s.resource_attributes)
                resources[rkey] = rm
            skey = (id(rm), s.scope_name, s.scope_version)
            sm = scopes.get(skey)
            if sm is None:
                sm = rm.scope_metrics.add()
                sm.scope.name = s.scope_name
                sm.scope.version = s.scope_version
                scopes[skey] = sm
            mkey = (id(sm), s.name, s.instrument, s.unit)
            metric = metrics.get(mkey)
            if metric is None:
                metric = sm.metrics.add(name=s.name, unit=s.unit, description=s.description)
                if s.instrument == GAUGE:
                    metric.gauge.SetInParent()
                elif s.instrument == HISTOGRAM:
                    metric.histogram.aggregation_temporality = _CUMULATIVE
                else:
                    metric.sum.aggregation_temporality = _CUMULATIVE
                    metric.sum.is_monotonic = s.instrument == COUNTER
                metrics[mkey] = metric
            elif s.description and not metric.description:
                metric.description = s.description
            self._add_point(metric, s)
        return request

    @staticmethod
    def _add_point(metric: Any, s: _Series) -> None:
        times = {"start_time_unix_nano": s.start_ns, "time_unix_nano": s.time_ns}
        if s.instrument == HISTOGRAM:
            dp = metric.histogram.data_points.add(
                count=s.count, bucket_counts=s.bucket_counts, explicit_bounds=s.bounds, **times
            )
            if not s.saw_negative:
                dp.sum = s.total  # the proto: no sum once negative values were recorded
            if s.count:
                dp.min = s.min
                dp.max = s.max
        else:
            data = metric.gauge if s.instrument == GAUGE else metric.sum
            dp = data.data_points.add(**times)
            value = s.number()
            if type(value) is int:
                dp.as_int = value
            else:
                dp.as_double = value
        fill_attributes(dp.attributes, s.attributes)

    def snapshot(self) -> list[dict[str, Any]]:
        """The state of every series as plain dicts (copies, safe to keep), in first-seen
        order. Keys: ``name``, ``kind`` (``counter``, ``updowncounter``, ``gauge``,
        ``histogram``), ``unit``, ``description``, ``resource`` (attributes),
        ``scope_name``, ``scope_version``, ``attributes``, ``start_time_unix_nano``,
        ``time_unix_nano``, then ``value`` for sums and gauges, or ``count``, ``sum``,
        ``min``, ``max`` (``None`` while empty), ``bounds`` and ``bucket_counts`` for
        histograms."""
        out: list[dict[str, Any]] = []
        for s in self._series.values():
            item: dict[str, Any] = {
                "name": s.name,
                "kind": INSTRUMENT_NAMES[s.instrument],
                "unit": s.unit,
                "description": s.description,
                "resource": _copy_attributes(s.resource_attributes),
                "scope_name": s.scope_name,
                "scope_version": s.scope_version,
                "attributes": _copy_attributes(s.attributes),
                "start_time_unix_nano": s.start_ns,
                "time_unix_nano": s.time_ns,
            }
            if s.instrument == HISTOGRAM:
                item["count"] = s.count
                item["sum"] = s.total
                item["min"] = s.min if s.count else None
                item["max"] = s.max if s.count else None
                item["bounds"] = list(s.bounds)
                item["bucket_counts"] = list(s.bucket_counts)
            else:
                item["value"] = s.number()
            out.append(item)
        return out

    def forget_idle(self, older_than_ns: int) -> int:
        """Drop the series whose latest update is older than ``older_than_ns``; returns
        how many were dropped. A dropped series that is fed again starts afresh (new
        start time), which cumulative consumers read as a reset."""
        idle = [k for k, s in self._series.items() if s.time_ns < older_than_ns]
        for key in idle:
            del self._series[key]
        return len(idle)


def _resource_key(resource: Resource) -> _SeriesKey:
    """The resource's part of a series key (the first three items)."""
    return (freeze_attributes(resource.attributes), resource.scope_name, resource.scope_version)


def _copy_attributes(attributes: Attributes) -> Attributes:
    return {k: list(v) if isinstance(v, list) else v for k, v in attributes.items()}
