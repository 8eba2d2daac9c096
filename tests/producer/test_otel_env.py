"""The OpenTelemetry variables the producer reads besides the sampler's effect: the
attribute limits and their span and log record forms, and what a bad value in any of
them (the sampler's too) does: one warning, the default, never an exception."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import _codec, otelenv
from emp_fastbuf.records import EVENT, LOG, METRIC, SPAN
from support.api import records

pytestmark = pytest.mark.native

LIMIT_VARS = [name for name, _arg, _largest in otelenv.LIMIT_VARIABLES]
ALL_VARS = [otelenv.SAMPLER_ENV, otelenv.SAMPLER_ARG_ENV, *LIMIT_VARS]


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """None of the variables set, the once-only warnings not given yet; the default
    sampler again after the test."""
    for name in ALL_VARS:
        monkeypatch.delenv(name, raising=False)
    otelenv._warned.clear()
    yield
    otelenv._warned.clear()
    _codec.set_sampler("parentbased_always_on")


def warnings_about(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "emp_fastbuf" and r.levelno == logging.WARNING and name in r.getMessage()
    ]


def test_span_log_and_general_limits_apply_to_their_records(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "3")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "8")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    fastbuf.configure()
    attrs = {f"k{i}": "abcdefghij" for i in range(4)}
    with fastbuf.span("s", **attrs):
        pass
    fastbuf.log.info("m", **attrs)
    fastbuf.emit("e", **attrs)
    fastbuf.metrics.gauge("g").set(1, **attrs)
    got = {r.kind: r for r in records(ring)}
    span, log, event, metric = got[SPAN], got[LOG], got[EVENT], got[METRIC]
    # SPAN: its own count (2), the general value length (8).
    assert span.attributes == {"k0": "abcdefgh", "k1": "abcdefgh"}
    assert (span.dropped_attributes, span.truncated_values) == (2, 2)
    # LOG and EVENT (events are log records): the general count (3), their own length (5).
    for rec in (log, event):
        assert rec.attributes == {"k0": "abcde", "k1": "abcde", "k2": "abcde"}
        assert (rec.dropped_attributes, rec.truncated_values) == (1, 3)
    # METRIC: the general forms.
    assert metric.attributes == {"k0": "abcdefgh", "k1": "abcdefgh", "k2": "abcdefgh"}
    limits = _codec.get_limits()
    assert (limits["span_max_attributes"], limits["span_max_value_length"]) == (2, 8)
    assert (limits["log_max_attributes"], limits["log_max_value_length"]) == (3, 5)
    assert (limits["max_attributes"], limits["max_value_length"]) == (3, 8)


def test_configure_arguments_beat_the_variables(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "2")
    monkeypatch.setenv("OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT", "5")
    fastbuf.configure(max_attributes=10, max_value_length=100)
    limits = _codec.get_limits()
    assert (limits["span_max_attributes"], limits["log_max_value_length"]) == (10, 100)


def test_the_span_value_limit_cuts_the_status_message(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4")
    fastbuf.configure()
    with fastbuf.span("s") as s:
        s.set_status("error", "a long message")
    (rec,) = records(ring)
    assert rec.status_message == "a lo" and rec.truncated_values == 1


BAD_VALUES = [
    (otelenv.SAMPLER_ENV, "bogus"),
    (otelenv.SAMPLER_ENV, "jaeger_remote"),
    *[(name, value) for name in LIMIT_VARS for value in ("abc", "0", "-3", "1e3", "70000000")],
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_a_bad_value_gives_one_warning_and_the_default(
    ring: fastbuf.Ring,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    value: str,
) -> None:
    monkeypatch.setenv(name, value)
    with caplog.at_level(logging.WARNING, logger="emp_fastbuf"):
        fastbuf.configure()  # never raises
        fastbuf.configure()  # read again: no second warning
    (message,) = warnings_about(caplog, name)
    assert repr(value) in message and "ignored" in message
    assert _codec.get_sampler() == ("on", True, 0)  # parentbased_always_on
    limits = _codec.get_limits()
    for key in ("max_attributes", "span_max_attributes", "log_max_attributes"):
        assert limits[key] == 128
    for key in ("max_value_length", "span_max_value_length", "log_max_value_length"):
        assert limits[key] == 4096
    with fastbuf.span("still works"):
        fastbuf.log.info("x")
    assert len(records(ring)) == 2


@pytest.mark.parametrize("arg", ["half", "1.5", "-0.1", "nan", "inf"])
def test_a_bad_sampler_argument_gives_one_warning_and_ratio_one(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, arg: str
) -> None:
    monkeypatch.setenv(otelenv.SAMPLER_ENV, "traceidratio")
    monkeypatch.setenv(otelenv.SAMPLER_ARG_ENV, arg)
    with caplog.at_level(logging.WARNING, logger="emp_fastbuf"):
        fastbuf.configure()
        fastbuf.configure()
    (message,) = warnings_about(caplog, otelenv.SAMPLER_ARG_ENV)
    assert repr(arg) in message
    assert _codec.get_sampler() == ("on", False, 0)  # traceidratio at 1.0 keeps everything


def test_the_argument_of_a_sampler_without_one_is_not_read(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(otelenv.SAMPLER_ENV, "ALWAYS_OFF")  # names are case-insensitive
    monkeypatch.setenv(otelenv.SAMPLER_ARG_ENV, "not a number")
    with caplog.at_level(logging.WARNING, logger="emp_fastbuf"):
        fastbuf.configure()
    assert warnings_about(caplog, "OTEL_") == []
    assert _codec.get_sampler() == ("off", False, 0)


def test_bad_values_at_import_warn_once_each_and_never_raise(ring_name: str) -> None:
    """A worker started with every variable wrong: it imports, records and exits 0, with
    one warning per variable on stderr, however often it configures."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({name: "wrong" for name in ALL_VARS})
    env.update(OTEL_TRACES_SAMPLER="traceidratio", EMP_FASTBUF_AGENT="external")
    code = (
        "import emp_fastbuf as fastbuf\n"
        f"fastbuf.configure(ring={ring_name!r})\n"
        "fastbuf.configure()\n"
        "with fastbuf.span('s') as s:\n"
        "    fastbuf.log.info('x', k='v')\n"
        "print(s.sampled)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
    lines = [line for line in out.stderr.splitlines() if "ignored" in line]
    assert sorted(line.split("=", 1)[0].split()[-1] for line in lines) == sorted(
        name for name in ALL_VARS if name != otelenv.SAMPLER_ENV
    )
