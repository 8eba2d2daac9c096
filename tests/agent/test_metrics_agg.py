"""emp_fastbuf.agent.otlp.metrics: cumulative aggregation of METRIC records, checked through
the official opentelemetry-proto classes and against the OpenTelemetry SDK's aggregation."""

from __future__ import annotations

import math
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource as SdkResource

from emp_fastbuf.agent.otlp.metrics import MetricsAggregator, metric_point
from emp_fastbuf.records import (
    COUNTER,
    DEFAULT_HISTOGRAM_BOUNDS,
    GAUGE,
    HISTOGRAM,
    LOG,
    METRIC,
    SPAN,
    UPDOWNCOUNTER,
    Record,
    Resource,
)

T0 = 1_700_000_000_000_000_000
CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
RES = Resource(attributes={"service.name": "worker", "service.instance.id": "w-1"})


def metric(instrument: int, name: str, t: int, value: Any = 0, **kw: Any) -> Record:
    return Record(
        kind=METRIC, time_unix_nano=T0 + t, instrument=instrument, name=name, value=value, **kw
    )


def hist(name: str, t: int, values: list[Any], bounds: list[float] | None = None, **kw: Any):
    return Record(
        kind=METRIC,
        time_unix_nano=T0 + t,
        instrument=HISTOGRAM,
        name=name,
        values=values,
        bounds=bounds or [],
        **kw,
    )


def collect(agg: MetricsAggregator, now: int = 10_000) -> ExportMetricsServiceRequest:
    req = agg.collect(T0 + now)
    assert req is not None
    out = ExportMetricsServiceRequest()
    out.ParseFromString(req.SerializeToString())
    return out


def metrics_by_name(req: ExportMetricsServiceRequest) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                assert m.name not in out
                out[m.name] = m
    return out


def attrs(kvs: Any) -> dict[str, tuple[str | None, Any]]:
    return {kv.key: (kv.value.WhichOneof("value"), _val(kv.value)) for kv in kvs}


def _val(v: Any) -> Any:
    which = v.WhichOneof("value")
    return None if which is None else getattr(v, which)


def number(dp: Any) -> tuple[str | None, Any]:
    which = dp.WhichOneof("value")
    return which, getattr(dp, which) if which else None


# --- sums -------------------------------------------------------------------------------


def test_counter_is_cumulative_across_collects() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(COUNTER, "jobs", 10, 3, unit="{job}", description="jobs done"))
    req = collect(agg, 100)
    m = metrics_by_name(req)["jobs"]
    assert (m.unit, m.description) == ("{job}", "jobs done")
    assert m.WhichOneof("data") == "sum"
    assert m.sum.is_monotonic is True
    assert m.sum.aggregation_temporality == CUMULATIVE
    (dp,) = m.sum.data_points
    assert number(dp) == ("as_int", 3)
    assert (dp.start_time_unix_nano, dp.time_unix_nano) == (T0 + 10, T0 + 10)

    agg.feed(RES, metric(COUNTER, "jobs", 20, 4, unit="{job}"))
    agg.feed(RES, metric(COUNTER, "jobs", 15, 1, unit="{job}"))  # late: counted, time stays 20
    m = metrics_by_name(collect(agg, 200))["jobs"]
    assert m.description == "jobs done"  # records without a description do not clear it
    (dp,) = m.sum.data_points
    assert number(dp) == ("as_int", 8)
    assert (dp.start_time_unix_nano, dp.time_unix_nano) == (T0 + 10, T0 + 20)
    assert agg.last_collect_unix_nano == T0 + 200

    # not updated: still reported, unchanged (cumulative)
    (dp,) = metrics_by_name(collect(agg, 300))["jobs"].sum.data_points
    assert number(dp) == ("as_int", 8)
    assert dp.time_unix_nano == T0 + 20


def test_a_counter_that_sees_a_float_becomes_double() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(COUNTER, "bytes", 1, 10))
    assert number(metrics_by_name(collect(agg))["bytes"].sum.data_points[0]) == ("as_int", 10)
    agg.feed(RES, metric(COUNTER, "bytes", 2, 0.5))
    agg.feed(RES, metric(COUNTER, "bytes", 3, 2))
    dp = metrics_by_name(collect(agg))["bytes"].sum.data_points[0]
    assert number(dp) == ("as_double", 12.5)
    # ints stay exact next to floats: 2**60 + 1 would be lost in a float running sum
    agg2 = MetricsAggregator()
    agg2.feed(RES, metric(UPDOWNCOUNTER, "big", 1, 2**60))
    agg2.feed(RES, metric(UPDOWNCOUNTER, "big", 2, 1))
    agg2.feed(RES, metric(UPDOWNCOUNTER, "big", 3, -(2**60)))
    agg2.feed(RES, metric(UPDOWNCOUNTER, "big", 4, 0.25))
    assert number(metrics_by_name(collect(agg2))["big"].sum.data_points[0]) == ("as_double", 1.25)


def test_updowncounter_is_a_non_monotonic_sum() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(UPDOWNCOUNTER, "queue", 1, 5))
    agg.feed(RES, metric(UPDOWNCOUNTER, "queue", 2, -7))
    m = metrics_by_name(collect(agg))["queue"]
    assert m.WhichOneof("data") == "sum"
    assert m.sum.is_monotonic is False
    assert m.sum.aggregation_temporality == CUMULATIVE
    assert number(m.sum.data_points[0]) == ("as_int", -2)


def test_int_sum_beyond_int64_is_reported_as_double() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(COUNTER, "huge", 1, 2**63 - 1))
    assert number(metrics_by_name(collect(agg))["huge"].sum.data_points[0]) == (
        "as_int",
        2**63 - 1,
    )
    agg.feed(RES, metric(COUNTER, "huge", 2, 1))
    assert number(metrics_by_name(collect(agg))["huge"].sum.data_points[0]) == (
        "as_double",
        float(2**63),
    )


def test_nan_inf_and_negative_counter_increments_are_ignored_and_counted() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(COUNTER, "c", 1, 2))
    agg.feed(RES, metric(COUNTER, "c", 2, math.nan))
    agg.feed(RES, metric(COUNTER, "c", 3, math.inf))
    agg.feed(RES, metric(COUNTER, "c", 4, -1))
    agg.feed(RES, metric(UPDOWNCOUNTER, "u", 5, -math.inf))
    agg.feed(RES, metric(UPDOWNCOUNTER, "u", 6, -1.5))
    agg.feed(RES, metric(COUNTER, "only_nan", 7, math.nan))  # creates no series
    req = collect(agg)
    ms = metrics_by_name(req)
    assert set(ms) == {"c", "u"}
    c = ms["c"].sum.data_points[0]
    assert number(c) == ("as_int", 2)
    assert c.time_unix_nano == T0 + 1  # ignored records do not move the time
    assert number(ms["u"].sum.data_points[0]) == ("as_double", -1.5)
    assert agg.stats() == {"series": 2, "ignored_non_finite": 4, "ignored_negative": 1}


# --- gauges -----------------------------------------------------------------------------


def test_gauge_keeps_the_last_value_by_time() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(GAUGE, "temp", 10, 70))
    agg.feed(RES, metric(GAUGE, "temp", 30, 75.5))
    agg.feed(RES, metric(GAUGE, "temp", 20, 99))  # older than the current value: ignored
    m = metrics_by_name(collect(agg))["temp"]
    assert m.WhichOneof("data") == "gauge"
    (dp,) = m.gauge.data_points
    assert number(dp) == ("as_double", 75.5)
    assert (dp.start_time_unix_nano, dp.time_unix_nano) == (T0 + 10, T0 + 30)
    agg.feed(RES, metric(GAUGE, "temp", 30, 80))  # same time, fed later: wins
    assert number(metrics_by_name(collect(agg))["temp"].gauge.data_points[0]) == ("as_int", 80)
    agg.feed(RES, metric(GAUGE, "temp", 40, math.nan))  # gauges keep what they are given
    kind, value = number(metrics_by_name(collect(agg))["temp"].gauge.data_points[0])
    assert kind == "as_double" and math.isnan(value)
    assert agg.stats()["ignored_non_finite"] == 0


# --- histograms -------------------------------------------------------------------------


def test_histogram_buckets_at_the_boundaries_with_default_bounds() -> None:
    agg = MetricsAggregator()
    values = [-0.0, 0, 0.0001, 5, 5.5, 10, 9999.9, 10000, 10000.5, 1e9]
    agg.feed(RES, hist("lat", 1, values, unit="ms"))
    m = metrics_by_name(collect(agg))["lat"]
    assert m.WhichOneof("data") == "histogram"
    assert m.histogram.aggregation_temporality == CUMULATIVE
    assert m.unit == "ms"
    (dp,) = m.histogram.data_points
    assert list(dp.explicit_bounds) == list(DEFAULT_HISTOGRAM_BOUNDS)
    assert len(dp.bucket_counts) == len(DEFAULT_HISTOGRAM_BOUNDS) + 1
    expected = [0] * 16
    expected[0] = 2  # -0.0 and 0: (-inf, 0]
    expected[1] = 2  # 0.0001 and 5: (0, 5]
    expected[2] = 2  # 5.5 and 10: (5, 10]
    expected[14] = 2  # 9999.9 and 10000: (7500, 10000]
    expected[15] = 2  # 10000.5 and 1e9: (10000, +inf)
    assert list(dp.bucket_counts) == expected
    assert dp.count == len(values)
    assert dp.sum == pytest.approx(math.fsum(values))
    assert dp.HasField("min") and dp.HasField("max")
    assert (dp.min, dp.max) == (0.0, 1e9)


def test_histogram_custom_bounds_are_cumulative_and_restart_when_bounds_change() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, hist("size", 1, [1, 2, 3], bounds=[1.0, 2.0]))
    agg.feed(RES, hist("size", 2, [2.0, 0.5], bounds=[1.0, 2.0]))
    (dp,) = metrics_by_name(collect(agg))["size"].histogram.data_points
    assert list(dp.explicit_bounds) == [1.0, 2.0]
    assert list(dp.bucket_counts) == [2, 2, 1]
    assert (dp.count, dp.sum, dp.min, dp.max) == (5, 8.5, 0.5, 3.0)
    assert (dp.start_time_unix_nano, dp.time_unix_nano) == (T0 + 1, T0 + 2)

    agg.feed(RES, hist("size", 3, [4, 1], bounds=[3.0]))  # new bounds: the series restarts
    (dp,) = metrics_by_name(collect(agg))["size"].histogram.data_points
    assert list(dp.explicit_bounds) == [3.0]
    assert list(dp.bucket_counts) == [1, 1]
    assert (dp.count, dp.sum, dp.min, dp.max) == (2, 5.0, 1.0, 4.0)
    assert (dp.start_time_unix_nano, dp.time_unix_nano) == (T0 + 3, T0 + 3)
    assert agg.stats()["series"] == 1


def test_histogram_with_negative_values_has_no_sum() -> None:
    """opentelemetry-proto: negative values can be recorded, but then ``sum`` must not be
    filled in (it is assumed monotonic)."""
    agg = MetricsAggregator()
    agg.feed(RES, hist("delta", 1, [2.0, 3.0], bounds=[0.0]))
    (dp,) = metrics_by_name(collect(agg))["delta"].histogram.data_points
    assert dp.HasField("sum") and dp.sum == 5.0
    agg.feed(RES, hist("delta", 2, [-4.0], bounds=[0.0]))
    (dp,) = metrics_by_name(collect(agg))["delta"].histogram.data_points
    assert not dp.HasField("sum")
    assert (dp.count, dp.min, dp.max) == (3, -4.0, 3.0)
    assert list(dp.bucket_counts) == [1, 2]
    assert agg.snapshot()[0]["sum"] == 1.0  # the local view keeps it


def test_histogram_ignores_non_finite_values() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, hist("h", 1, [1.0, math.nan, math.inf, -math.inf, 2.0], bounds=[1.5]))
    agg.feed(RES, hist("all_nan", 1, [math.nan]))
    (dp,) = metrics_by_name(collect(agg))["h"].histogram.data_points
    assert list(dp.bucket_counts) == [1, 1]
    assert (dp.count, dp.sum) == (2, 3.0)
    assert agg.stats() == {"series": 1, "ignored_non_finite": 4, "ignored_negative": 0}


# --- series identity and layout ---------------------------------------------------------


def test_series_identity_attributes_context_resource_unit() -> None:
    other = Resource(attributes={"service.name": "worker", "service.instance.id": "w-2"})
    reordered = Resource(attributes={"service.instance.id": "w-1", "service.name": "worker"})
    plugin = Resource(attributes=dict(RES.attributes), scope_name="plugin", scope_version="3")
    agg = MetricsAggregator()
    agg.feed(RES, metric(COUNTER, "req", 1, 1, context={"job_id": "j1"}, attributes={"a": 1}))
    agg.feed(RES, metric(COUNTER, "req", 2, 1, context={"job_id": "j1"}, attributes={"a": 1}))
    agg.feed(reordered, metric(COUNTER, "req", 3, 1, attributes={"a": 1}, context={"job_id": "j1"}))
    agg.feed(RES, metric(COUNTER, "req", 4, 10, context={"job_id": "j2"}, attributes={"a": 1}))
    agg.feed(RES, metric(COUNTER, "req", 5, 100, context={"job_id": "j1"}, attributes={"a": True}))
    agg.feed(RES, metric(COUNTER, "req", 6, 1000, unit="s"))
    agg.feed(other, metric(COUNTER, "req", 7, 7))
    agg.feed(plugin, metric(COUNTER, "req", 8, 8))
    req = collect(agg)
    assert len(req.resource_metrics) == 2
    rm1, rm2 = req.resource_metrics
    assert attrs(rm1.resource.attributes) == {
        "service.name": ("string_value", "worker"),
        "service.instance.id": ("string_value", "w-1"),
    }
    assert attrs(rm2.resource.attributes)["service.instance.id"] == ("string_value", "w-2")
    assert [(s.scope.name, s.scope.version) for s in rm1.scope_metrics] == [
        ("emp_fastbuf", ""),
        ("plugin", "3"),
    ]
    ms = rm1.scope_metrics[0].metrics
    assert [(m.name, m.unit) for m in ms] == [("req", ""), ("req", "s")]
    points = [(attrs(dp.attributes), number(dp)) for dp in ms[0].sum.data_points]
    assert points == [
        ({"emp.job_id": ("string_value", "j1"), "a": ("int_value", 1)}, ("as_int", 3)),
        ({"emp.job_id": ("string_value", "j2"), "a": ("int_value", 1)}, ("as_int", 10)),
        ({"emp.job_id": ("string_value", "j1"), "a": ("bool_value", True)}, ("as_int", 100)),
    ]
    assert number(ms[1].sum.data_points[0]) == ("as_int", 1000)
    assert number(rm1.scope_metrics[1].metrics[0].sum.data_points[0]) == ("as_int", 8)
    assert number(rm2.scope_metrics[0].metrics[0].sum.data_points[0]) == ("as_int", 7)
    assert len(agg) == 6


def test_same_name_with_another_instrument_is_another_metric() -> None:
    agg = MetricsAggregator()
    agg.feed(RES, metric(COUNTER, "x", 1, 1))
    agg.feed(RES, metric(GAUGE, "x", 2, 5, description="later description"))
    ms = collect(agg).resource_metrics[0].scope_metrics[0].metrics
    assert [m.WhichOneof("data") for m in ms] == ["sum", "gauge"]
    assert ms[1].description == "later description"


# --- idle series ------------------------------------------------------------------------


def test_idle_series_keep_reporting_until_forgotten() -> None:
    agg = MetricsAggregator()
    assert agg.collect(T0) is None
    agg.feed(RES, metric(COUNTER, "old", 10, 1))
    agg.feed(RES, metric(COUNTER, "new", 500, 2))
    for now in (1000, 2000):
        assert set(metrics_by_name(collect(agg, now))) == {"old", "new"}
    assert agg.forget_idle(T0 + 100) == 1
    assert set(metrics_by_name(collect(agg))) == {"new"}
    assert agg.forget_idle(T0 + 100) == 0
    # fed again after being forgotten: a new series with a new start
    agg.feed(RES, metric(COUNTER, "old", 3000, 5))
    dp = metrics_by_name(collect(agg))["old"].sum.data_points[0]
    assert number(dp) == ("as_int", 5)
    assert dp.start_time_unix_nano == T0 + 3000
    assert agg.forget_idle(T0 + 10_000) == 2
    assert agg.collect(T0 + 20_000) is None
    assert len(agg) == 0


# --- snapshot ---------------------------------------------------------------------------


def test_snapshot_gives_plain_copies() -> None:
    agg = MetricsAggregator()
    agg.feed(
        RES,
        metric(
            COUNTER,
            "jobs",
            1,
            2,
            unit="{job}",
            description="d",
            context={"job_id": "j"},
            attributes={"tags": ["a"]},
        ),
    )
    agg.feed(RES, metric(GAUGE, "temp", 2, 1.5))
    agg.feed(RES, hist("lat", 3, [1, 7], bounds=[5.0]))
    agg.feed(RES, hist("empty", 4, [math.nan, 1.0], bounds=[5.0]))
    snap = agg.snapshot()
    assert snap[0] == {
        "name": "jobs",
        "kind": "counter",
        "unit": "{job}",
        "description": "d",
        "resource": {"service.name": "worker", "service.instance.id": "w-1"},
        "scope_name": "emp_fastbuf",
        "scope_version": "",
        "attributes": {"emp.job_id": "j", "tags": ["a"]},
        "start_time_unix_nano": T0 + 1,
        "time_unix_nano": T0 + 1,
        "value": 2,
    }
    assert snap[1]["kind"] == "gauge" and snap[1]["value"] == 1.5
    assert {k: snap[2][k] for k in ("kind", "count", "sum", "min", "max", "bounds")} == {
        "kind": "histogram",
        "count": 2,
        "sum": 8.0,
        "min": 1.0,
        "max": 7.0,
        "bounds": [5.0],
    }
    assert snap[2]["bucket_counts"] == [1, 1]
    assert "value" not in snap[2]
    assert [s["name"] for s in snap] == ["jobs", "temp", "lat", "empty"]
    # copies: changing them changes nothing inside
    snap[0]["attributes"]["tags"].append("b")
    snap[0]["resource"]["x"] = 1
    snap[2]["bucket_counts"][0] = 99
    again = agg.snapshot()
    assert again[0]["attributes"] == {"emp.job_id": "j", "tags": ["a"]}
    assert "x" not in again[0]["resource"]
    assert again[2]["bucket_counts"] == [1, 1]
    assert MetricsAggregator().snapshot() == []


# --- bad input --------------------------------------------------------------------------


def test_bad_records_are_rejected() -> None:
    agg = MetricsAggregator()
    with pytest.raises(ValueError, match="not a METRIC"):
        agg.feed(RES, Record(kind=LOG, time_unix_nano=T0))
    with pytest.raises(ValueError, match="instrument"):
        agg.feed(RES, metric(9, "x", 1, 1))
    with pytest.raises(TypeError, match="str"):
        agg.feed(RES, metric(COUNTER, "x", 1, "3"))
    with pytest.raises(TypeError, match="bool"):
        agg.feed(RES, metric(GAUGE, "x", 1, True))
    with pytest.raises(TypeError, match="NoneType"):
        agg.feed(RES, hist("h", 1, [1.0, None]))
    with pytest.raises(ValueError, match="strictly increasing"):
        agg.feed(RES, hist("h", 1, [1.0], bounds=[2.0, 1.0]))
    with pytest.raises(ValueError, match="strictly increasing"):
        agg.feed(RES, hist("h", 1, [1.0], bounds=[1.0, 1.0]))
    with pytest.raises(ValueError, match="finite"):
        agg.feed(RES, hist("h", 1, [1.0], bounds=[1.0, math.nan]))
    with pytest.raises(TypeError, match="now_ns"):
        agg.collect(1.5)  # type: ignore[arg-type]
    assert len(agg) == 0


def test_feed_groups_takes_only_metric_records() -> None:
    agg = MetricsAggregator()
    span = Record(kind=SPAN, time_unix_nano=T0, trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    groups = [
        (RES, [Record(kind=LOG, time_unix_nano=T0), metric(COUNTER, "a", 1, 1), span]),
        (RES, [metric(COUNTER, "a", 2, 2)]),
    ]
    assert agg.feed_groups(groups) == 2
    assert number(metrics_by_name(collect(agg))["a"].sum.data_points[0]) == ("as_int", 3)


# --- points -----------------------------------------------------------------------------


def test_points_aggregate_as_records() -> None:
    """``feed_points`` (the agent's path: points parsed from raw records) and ``feed``
    (decoded records) build the same series."""
    recs = [
        metric(COUNTER, "jobs", 1, 2, context={"job_id": "j"}, attributes={"a": 1}),
        metric(COUNTER, "jobs", 2, 0.5, attributes={"a": 1}, context={"job_id": "j"}),
        metric(GAUGE, "temp", 3, 70, description="degrees"),
        hist("lat", 4, [1.0, 7.0, math.nan], bounds=[5.0], unit="ms"),
        hist("lat", 5, [3.0], bounds=[5.0], unit="ms"),
        hist("default", 6, [0.5]),
    ]
    by_record, by_points = MetricsAggregator(), MetricsAggregator()
    for rec in recs:
        by_record.feed(RES, rec)
    assert by_points.feed_points(RES, [metric_point(r) for r in recs]) == 0
    assert by_points.snapshot() == by_record.snapshot()
    assert by_points.stats() == by_record.stats()
    assert collect(by_points) == collect(by_record)
    assert [s["name"] for s in by_points.snapshot()] == ["jobs", "temp", "lat", "default"]


def test_feed_points_skips_and_counts_what_feed_refuses() -> None:
    good = metric(COUNTER, "c", 1, 1)
    refused = [
        hist("h", 2, [1.0], bounds=[1.0, math.inf]),  # decodes: a bound may be infinite
        metric(9, "x", 3, 1),
        metric(COUNTER, "x", 4, "3"),
    ]
    for rec in refused:
        with pytest.raises((TypeError, ValueError)):
            MetricsAggregator().feed(RES, rec)
    agg = MetricsAggregator()
    assert agg.feed_points(RES, [metric_point(r) for r in [good, *refused, good]]) == 3
    assert [(s["name"], s["value"]) for s in agg.snapshot()] == [("c", 2)]


# --- against the OpenTelemetry SDK --------------------------------------------------------


def _sdk_points(values: list[float], boundaries: list[float] | None) -> Any:
    reader = InMemoryMetricReader()
    views = []
    if boundaries is not None:
        views.append(
            View(
                instrument_name="lat",
                aggregation=ExplicitBucketHistogramAggregation(boundaries=boundaries),
            )
        )
    provider = MeterProvider(
        metric_readers=[reader],
        resource=SdkResource.create({"service.name": "worker"}),
        views=views,
        shutdown_on_exit=False,
    )
    try:
        meter = provider.get_meter("emp_fastbuf")
        histogram = meter.create_histogram("lat", unit="ms")
        counter = meter.create_counter("jobs")
        for v in values:
            histogram.record(v, attributes={"emp.job_id": "j1"})
            counter.add(2, attributes={"emp.job_id": "j1"})
        data = reader.get_metrics_data()
        assert data is not None
        return metrics_by_name(encode_metrics(data))
    finally:
        provider.shutdown()


@pytest.mark.parametrize("bounds", [None, [0.0, 1.0, 2.5, 10.0]])
def test_histograms_and_sums_match_the_sdk_aggregation(bounds: list[float] | None) -> None:
    # no negative values: the SDK's histogram refuses them
    values = [0.0, 1.0, 2.5, 2.4999, 10.0, 10.5, 1e-9, 5.0, 5.0, 7500.0, 99999.0, 0.5]
    sdk = _sdk_points(values, bounds)
    agg = MetricsAggregator()
    for i, v in enumerate(values):
        agg.feed(RES, hist("lat", i, [v], bounds=bounds, unit="ms", context={"job_id": "j1"}))
        agg.feed(RES, metric(COUNTER, "jobs", i, 2, context={"job_id": "j1"}))
    ours = metrics_by_name(collect(agg))

    s_dp, o_dp = sdk["lat"].histogram.data_points[0], ours["lat"].histogram.data_points[0]
    assert list(o_dp.explicit_bounds) == list(s_dp.explicit_bounds)
    assert list(o_dp.bucket_counts) == list(s_dp.bucket_counts)
    assert (o_dp.count, o_dp.sum, o_dp.min, o_dp.max) == (
        s_dp.count,
        s_dp.sum,
        s_dp.min,
        s_dp.max,
    )
    assert attrs(o_dp.attributes) == attrs(s_dp.attributes)
    assert ours["lat"].unit == sdk["lat"].unit
    assert ours["lat"].histogram.aggregation_temporality == (
        sdk["lat"].histogram.aggregation_temporality
    )
    s_sum, o_sum = sdk["jobs"].sum, ours["jobs"].sum
    assert (o_sum.is_monotonic, o_sum.aggregation_temporality) == (
        s_sum.is_monotonic,
        s_sum.aggregation_temporality,
    )
    assert number(o_sum.data_points[0]) == number(s_sum.data_points[0]) == ("as_int", 24)


def test_histogram_whose_exact_sum_overflows_does_not_raise() -> None:
    """math.fsum raises OverflowError for [1e308, 1e308]: the aggregator must go on (the
    record comes from untrusted bytes) with the float sum, an infinity."""
    agg = MetricsAggregator()
    agg.feed(RES, hist("big", 1, [1e308, 1e308]))
    (dp,) = metrics_by_name(collect(agg))["big"].histogram.data_points
    assert (dp.count, dp.sum, dp.max) == (2, math.inf, 1e308)
