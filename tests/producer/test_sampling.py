"""Sampling in the producer (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``): every
sampler, the ratio sampler against the specification's trace-id algorithm, incoming
``traceparent`` headers, and what an unsampled span leaves: ids and flags for its
children and ``traceparent()``, its logs and events, a count, and no record."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import _codec
from emp_fastbuf.records import EVENT, LOG, SPAN, Record
from support.api import records

pytestmark = pytest.mark.native

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(autouse=True)
def default_sampler() -> Iterator[None]:
    """The default sampler again after each test (the variables are monkeypatched)."""
    yield
    _codec.set_sampler("parentbased_always_on")


def use_sampler(monkeypatch: pytest.MonkeyPatch, name: str, arg: str | None = None) -> None:
    """Set the variables and configure again (as a worker started with them would be)."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", name)
    if arg is None:
        monkeypatch.delenv("OTEL_TRACES_SAMPLER_ARG", raising=False)
    else:
        monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", arg)
    fastbuf.configure()


def spec_keeps(trace_id_hex: str, ratio: float) -> bool:
    """The specification's TraceIdRatioBased, as the OpenTelemetry Python SDK has it: kept
    when the trace id's lower 64 bits are below round(ratio * 2**64)."""
    return int(trace_id_hex, 16) & 0xFFFFFFFFFFFFFFFF < round(ratio * 2**64)


def fixed_trace_ids(n: int) -> list[str]:
    rnd = random.Random(20240501)  # the same ids on every run
    return [f"{rnd.getrandbits(128) | 1:032x}" for _ in range(n)]


def spans(ring: fastbuf.Ring) -> list[Record]:
    return [r for r in records(ring) if r.kind == SPAN]


def test_ratio_sampler_keeps_the_traces_the_spec_algorithm_predicts(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sampler(monkeypatch, "traceidratio", "0.25")
    ids = fixed_trace_ids(4000)
    decided = {}
    for tid in ids:
        # traceidratio decides on the trace id alone, even under a (sampled) parent.
        with fastbuf.continue_trace(f"00-{tid}-{PARENT}-01"), fastbuf.span("step") as s:
            decided[tid] = s.sampled
    predicted = {tid for tid in ids if spec_keeps(tid, 0.25)}
    assert {tid for tid, kept in decided.items() if kept} == predicted
    assert 900 < len(predicted) < 1100  # about a quarter of 4000: the bound is right
    written = spans(ring)
    assert {r.trace_id.hex() for r in written if r.trace_id} == predicted
    assert len(written) == len(predicted)
    assert fastbuf.stats()["unsampled_spans"] == len(ids) - len(predicted)


def test_ratio_sampler_agrees_with_the_opentelemetry_sdk(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another service on the OpenTelemetry SDK keeps and drops the same traces."""
    sampling = pytest.importorskip("opentelemetry.sdk.trace.sampling")
    use_sampler(monkeypatch, "traceidratio", "0.3")
    sdk = sampling.TraceIdRatioBased(0.3)
    for tid in fixed_trace_ids(2000):
        with fastbuf.continue_trace(f"00-{tid}-{PARENT}-01"), fastbuf.span("step") as s:
            pass
        sdk_keeps = sdk.should_sample(None, int(tid, 16), "step").decision.is_sampled()
        assert s.sampled == sdk_keeps, tid


def test_parentbased_ratio_decides_root_spans_on_their_own_trace_id(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sampler(monkeypatch, "parentbased_traceidratio", "0.5")
    outcomes = set()
    for _ in range(400):
        with fastbuf.span("root") as root, fastbuf.span("child") as child:
            pass
        assert root.trace_id is not None
        assert root.sampled == spec_keeps(root.trace_id, 0.5)
        assert child.sampled == root.sampled  # a child follows its parent
        outcomes.add(root.sampled)
    assert outcomes == {True, False}


ROOT, SAMPLED_PARENT, UNSAMPLED_PARENT = "root", "parent -01", "parent -00"


@pytest.mark.parametrize(
    ("sampler", "arg", "expected"),
    [
        ("always_on", None, {ROOT: True, SAMPLED_PARENT: True, UNSAMPLED_PARENT: True}),
        ("always_off", None, {ROOT: False, SAMPLED_PARENT: False, UNSAMPLED_PARENT: False}),
        ("traceidratio", "1", {ROOT: True, SAMPLED_PARENT: True, UNSAMPLED_PARENT: True}),
        ("traceidratio", "0", {ROOT: False, SAMPLED_PARENT: False, UNSAMPLED_PARENT: False}),
        (
            "parentbased_always_on",
            None,
            {ROOT: True, SAMPLED_PARENT: True, UNSAMPLED_PARENT: False},
        ),
        (
            "parentbased_always_off",
            None,
            {ROOT: False, SAMPLED_PARENT: True, UNSAMPLED_PARENT: False},
        ),
        (
            "parentbased_traceidratio",
            "1",
            {ROOT: True, SAMPLED_PARENT: True, UNSAMPLED_PARENT: False},
        ),
        (
            "parentbased_traceidratio",
            "0",
            {ROOT: False, SAMPLED_PARENT: True, UNSAMPLED_PARENT: False},
        ),
        ("", None, {ROOT: True, SAMPLED_PARENT: True, UNSAMPLED_PARENT: False}),  # the default
    ],
)
def test_every_sampler_for_roots_and_remote_parents(
    ring: fastbuf.Ring,
    monkeypatch: pytest.MonkeyPatch,
    sampler: str,
    arg: str | None,
    expected: dict[str, bool],
) -> None:
    use_sampler(monkeypatch, sampler, arg)
    got = {}
    with fastbuf.span("root") as s:
        got[ROOT] = s.sampled
    for case, flags in ((SAMPLED_PARENT, "01"), (UNSAMPLED_PARENT, "00")):
        with fastbuf.continue_trace(f"00-{TRACE}-{PARENT}-{flags}"), fastbuf.span("c") as s:
            got[case] = s.sampled
    assert got == expected
    assert len(spans(ring)) == sum(expected.values())
    assert fastbuf.stats()["unsampled_spans"] == 3 - sum(expected.values())


def test_a_sampled_traceparent_is_continued_and_carried_on(ring: fastbuf.Ring) -> None:
    with fastbuf.continue_trace(f"00-{TRACE}-{PARENT}-01"), fastbuf.span("handle") as s:
        outgoing = fastbuf.traceparent()
    assert s.sampled is True
    assert outgoing == f"00-{TRACE}-{s.span_id}-01"
    (rec,) = spans(ring)
    assert rec.trace_id == bytes.fromhex(TRACE) and rec.parent_span_id == bytes.fromhex(PARENT)
    assert rec.trace_flags == 1


def test_an_unsampled_traceparent_is_followed_and_carried_on(ring: fastbuf.Ring) -> None:
    """The caller dropped the trace: the span and its children are not recorded, but have
    ids, and ``traceparent()`` passes the decision (flags 00) to the next service. Logs
    and events inside are recorded, with the trace, the span and the flags."""
    with fastbuf.continue_trace(f"00-{TRACE}-{PARENT}-00"), fastbuf.span("handle") as s:
        outgoing = fastbuf.traceparent()
        fastbuf.log.info("inside", n=1)
        with fastbuf.span("child") as child:
            fastbuf.emit("checkpoint")
            inner = fastbuf.traceparent()
    assert s.sampled is False and child.sampled is False
    assert s.trace_id == TRACE and s.parent_span_id == PARENT and s.span_id is not None
    assert child.parent_span_id == s.span_id
    assert outgoing == f"00-{TRACE}-{s.span_id}-00"
    assert inner == f"00-{TRACE}-{child.span_id}-00"
    got = records(ring)
    assert [r.kind for r in got] == [LOG, EVENT]  # no SPAN record
    log, event = got
    assert (log.body, log.attributes) == ("inside", {"n": 1})
    assert log.trace_id == bytes.fromhex(TRACE) and log.span_id == bytes.fromhex(s.span_id)
    assert event.span_id == bytes.fromhex(child.span_id)
    assert log.trace_flags == 0 and event.trace_flags == 0
    stats = fastbuf.stats()
    assert stats["unsampled_spans"] == 2
    assert stats["by_kind"]["span"] == 0 and stats["dropped"] == 0


def test_logs_in_a_sampled_span_carry_flags_01(ring: fastbuf.Ring) -> None:
    with fastbuf.span("work"):
        fastbuf.log.warning("w")
    log = next(r for r in records(ring) if r.kind == LOG)
    assert log.trace_id is not None and log.trace_flags == 1


def test_other_trace_flag_bits_are_kept(ring: fastbuf.Ring) -> None:
    """W3C flags beyond the sampled bit (0x02, "random", in Trace Context level 2) pass
    through to children, logs and ``traceparent()``."""
    with fastbuf.continue_trace(f"00-{TRACE}-{PARENT}-02"), fastbuf.span("s") as s:
        fastbuf.log.info("x")
        outgoing = fastbuf.traceparent()
    assert s.sampled is False and outgoing is not None and outgoing.endswith("-02")
    (log,) = records(ring)
    assert log.trace_flags == 2


def test_record_span_follows_the_sampler(ring: fastbuf.Ring) -> None:
    with fastbuf.continue_trace(f"00-{TRACE}-{PARENT}-00"):
        span_id = fastbuf.record_span("queued", 10, 20)
    assert len(span_id) == 16
    with fastbuf.continue_trace(f"00-{TRACE}-{PARENT}-01"):
        fastbuf.record_span("queued", 10, 20)
    (rec,) = spans(ring)
    assert rec.parent_span_id == bytes.fromhex(PARENT) and rec.trace_flags == 1
    assert fastbuf.stats()["unsampled_spans"] == 1


def test_an_unsampled_span_ended_by_an_exception_is_still_not_written(
    ring: fastbuf.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_sampler(monkeypatch, "always_off")
    with pytest.raises(ValueError), fastbuf.span("failing"):
        raise ValueError("boom")
    with fastbuf.span("ended") as s:
        s.end()
    assert spans(ring) == []
    assert fastbuf.stats()["unsampled_spans"] == 2


def test_the_sampler_holds_from_the_first_span_without_configure(ring_name: str) -> None:
    """A process that never calls configure(): its first span, before anything attached,
    is already decided by the variable (the producer reads it at import)."""
    code = (
        "import emp_fastbuf as fastbuf\n"
        "with fastbuf.span('first') as s:\n"
        "    fastbuf.log.info('x')\n"
        "print(s.sampled, fastbuf.stats()['unsampled_spans'], fastbuf.stats()['by_kind']['span'])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        OTEL_TRACES_SAMPLER="always_off", EMP_FASTBUF_RING=ring_name, EMP_FASTBUF_AGENT="external"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "1", "0"]


def test_set_sampler_rejects_what_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="sampler must be one of"):
        _codec.set_sampler("jaeger_remote")
    with pytest.raises(ValueError, match="between 0 and 1"):
        _codec.set_sampler("traceidratio", 1.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        _codec.set_sampler("traceidratio", float("nan"))
    _codec.set_sampler("parentbased_traceidratio", 0.25)
    assert _codec.get_sampler() == ("ratio", True, round(0.25 * 2**64))
    _codec.set_sampler("traceidratio", 1.0)  # keeps every trace id: as always_on
    assert _codec.get_sampler() == ("on", False, 0)
