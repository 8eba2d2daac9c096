"""The bridges (stdlib logging, the OpenTelemetry SDK, structlog) through the native encoder
and the ring to the reference decoder: what the other API recorded is what the drainer
reads, with its ids and attributes."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from structlog.testing import LogCapture

import emp_fastbuf as fastbuf
from emp_fastbuf.integrations import clip_trace
from emp_fastbuf.integrations.otel import (
    FastbufLogRecordProcessor,
    FastbufRuntimeContext,
    FastbufSpanProcessor,
    install_context_bridge,
)
from emp_fastbuf.integrations.stdlib import FastbufHandler, instrument_logging, severity_number
from emp_fastbuf.integrations.structlog import FastbufProcessor
from emp_fastbuf.producer import _codec, api
from emp_fastbuf.records import LOG, SPAN, STATUS_ERROR, Record, reference, severity_name
from support.api import drain, records
from support.integrations import (
    SPAN_WORKER,
    check_sample,
    emit_sample,
    ids,
    private_logger,
    sdk_logging,
    tracer_provider,
)

pytestmark = pytest.mark.native


def test_sample_through_every_bridge(ring: fastbuf.Ring) -> None:
    sample = emit_sample("job-7")
    got = drain(ring)
    check_sample([r for _res, r in got], sample)
    # The SDK resource's attributes were merged into the resource the SDK span was
    # published with (lanes are read in lane order, not time order: look it up by name).
    res = next(res for res, r in got if r.name == "sample.request").attributes
    assert res["deployment.environment"] == "sample"
    assert res["service.name"] == "test-svc"


# ---- stdlib logging -------------------------------------------------------------------


def test_handler_keeps_message_ids_and_attributes(ring: fastbuf.Ring) -> None:
    logger = private_logger("tests.stdlib", FastbufHandler())
    with fastbuf.context(job_id="j1"), fastbuf.span("work") as s:
        logger.info("loaded %s in %d ms", "sdxl", 812, extra={"gpu": 3, "model": "m"})
        line = sys._getframe().f_lineno - 1
    (rec, span) = records(ring)
    assert rec.kind == LOG and span.kind == SPAN
    assert rec.body == "loaded sdxl in 812 ms"
    assert (rec.severity_number, rec.severity_text) == (9, "INFO")
    assert rec.trace_id == span.trace_id and rec.span_id == span.span_id
    assert s.span_id is not None and rec.span_id == bytes.fromhex(s.span_id)
    assert rec.context == {"job_id": "j1"} and rec.job_id == "j1"
    a = rec.attributes
    assert a["logger.name"] == "tests.stdlib"
    assert a["code.file.path"] == __file__
    assert a["code.line.number"] == line
    assert a["code.function.name"] == "test_handler_keeps_message_ids_and_attributes"
    assert not {"code.filepath", "code.lineno", "code.function"} & a.keys()
    assert a["thread.id"] == threading.get_ident()
    assert a["thread.name"] == threading.current_thread().name
    assert a["process.pid"] == os.getpid()
    assert a["gpu"] == 3 and a["model"] == "m"
    assert "exception.type" not in a and "args" not in a and "msg" not in a


@pytest.mark.parametrize(
    ("level", "number"),
    [
        (1, 1),
        (9, 1),
        (10, 5),
        (15, 5),
        (20, 9),
        (25, 9),
        (30, 13),
        (39, 13),
        (40, 17),
        (45, 17),
        (50, 21),
        (55, 21),
        (70, 21),
    ],
)
def test_level_mapping(ring: fastbuf.Ring, level: int, number: int) -> None:
    logger = private_logger("tests.levels", FastbufHandler(), level=1)
    logger.log(level, "x")
    (rec,) = records(ring)
    assert rec.severity_number == number == severity_number(level)
    assert rec.severity_text == severity_name(number)  # fastbuf's text, not logging's


def test_severity_text_is_the_same_on_every_path(ring: fastbuf.Ring) -> None:
    """Native, stdlib, the SDK's logging handler and structlog write one text per level:
    fastbuf's (WARN, FATAL), whatever the other library calls it."""
    std_logger = private_logger("tests.sev.stdlib", FastbufHandler())
    otel_logger, log_provider, _ = sdk_logging("tests.sev.otel")
    slog = structlog.wrap_logger(structlog.ReturnLogger(), processors=[FastbufProcessor(drop=True)])
    methods = ("debug", "info", "warning", "error", "critical")
    try:
        for method in methods:
            getattr(fastbuf.log, method)(f"native {method}")
            getattr(std_logger, method)(f"stdlib {method}")
            getattr(otel_logger, method)(f"otel {method}")
            getattr(slog, method)(f"structlog {method}")
    finally:
        otel_logger.handlers.clear()
        log_provider.shutdown()
    seen: dict[str, set[tuple[str, int, str]]] = {}
    for rec in records(ring):
        if rec.kind == LOG:
            path, method = rec.body.split()
            seen.setdefault(method, set()).add((path, rec.severity_number, rec.severity_text))
    paths = ("native", "stdlib", "otel", "structlog")
    expected = {"debug": (5, "DEBUG"), "info": (9, "INFO"), "warning": (13, "WARN")}
    expected.update(error=(17, "ERROR"), critical=(21, "FATAL"))
    assert seen == {m: {(p, *expected[m]) for p in paths} for m in methods}


def test_sdk_log_records_get_the_current_code_attribute_names(ring: fastbuf.Ring) -> None:
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(FastbufLogRecordProcessor(flush_timeout=0.1))
    try:
        old = {"code.filepath": "/app/x.py", "code.lineno": 7, "code.function": "f", "k": 1}
        provider.get_logger("tests.code").emit(
            body="old names", severity_number=SeverityNumber.INFO, attributes=old
        )
    finally:
        provider.shutdown()
    (rec,) = [r for r in records(ring) if r.kind == LOG]
    a = rec.attributes
    assert (a["code.file.path"], a["code.line.number"], a["code.function.name"]) == (
        "/app/x.py",
        7,
        "f",
    )
    assert a["k"] == 1 and not {"code.filepath", "code.lineno", "code.function"} & a.keys()


def test_handler_level_and_lazy_message(ring: fastbuf.Ring) -> None:
    formatted: list[int] = []

    class Costly:
        def __str__(self) -> str:
            formatted.append(1)
            return "costly"

    logger = private_logger("tests.lazy", FastbufHandler(logging.INFO))
    logger.debug("value %s", Costly())  # below the handler's level: never formatted
    assert formatted == []
    logger.info("value %s", Costly())
    assert formatted == [1]
    (rec,) = records(ring)
    assert rec.body == "value costly"


def test_exception_and_stack_info_kept(ring: fastbuf.Ring) -> None:
    logger = private_logger("tests.exc", FastbufHandler())
    try:
        raise ValueError("bad input 42")
    except ValueError:
        logger.exception("step failed", extra={"step": 7})
    logger.warning("where", stack_info=True)
    exc, where = records(ring)
    assert (exc.severity_number, exc.severity_text, exc.body) == (17, "ERROR", "step failed")
    a = exc.attributes
    assert a["exception.type"] == "ValueError"
    assert a["exception.message"] == "bad input 42"
    trace_text = str(a["exception.stacktrace"])
    assert trace_text.startswith("Traceback") and 'raise ValueError("bad input 42")' in trace_text
    assert a["step"] == 7
    assert "exception.type" not in where.attributes
    assert "test_exception_and_stack_info_kept" in str(where.attributes["code.stacktrace"])


def test_deep_traceback_keeps_its_end(ring: fastbuf.Ring) -> None:
    # Two functions in turn: Python folds a run of one repeated frame, not this.
    def ping(n: int) -> None:
        if n == 0:
            raise RuntimeError("at the bottom")
        pong(n - 1)

    def pong(n: int) -> None:
        ping(n - 1)

    logger = private_logger("tests.deep", FastbufHandler())
    try:
        ping(200)
    except RuntimeError:
        logger.exception("deep")
    (rec,) = records(ring)
    text = str(rec.attributes["exception.stacktrace"])
    assert len(text) <= _codec.get_limits()["max_value_length"]
    assert text.startswith("Traceback (most recent call last):\n  ...\n")
    assert text.endswith("RuntimeError: at the bottom\n")
    assert rec.truncated_values == 0
    assert clip_trace("short") == "short"
    assert clip_trace("x" * 5000) == "x" * 4096  # no line to keep: the end


def test_formatter_is_used_when_set(ring: fastbuf.Ring) -> None:
    handler = FastbufHandler()
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    private_logger("tests.fmt", handler).info("hi %d", 5)
    (rec,) = records(ring)
    assert rec.body == "[tests.fmt] hi 5"


def test_handler_never_raises(ring: fastbuf.Ring, capsys: pytest.CaptureFixture[str]) -> None:
    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        __repr__ = __str__

    logger = private_logger("tests.bad", FastbufHandler())
    logger.info("%d items", "not a number")  # formatting fails inside the handler
    assert "Logging error" in capsys.readouterr().err
    logger.info("odd extras", extra={"obj": Unprintable(), "d": {"a": 1}, "s": {1}})
    (rec,) = records(ring)
    assert rec.body == "odd extras"
    assert rec.attributes["obj"] == "<unprintable Unprintable>"
    assert rec.attributes["d"] == "{'a': 1}" and rec.attributes["s"] == "{1}"


def test_instrument_logging_is_idempotent(ring: fastbuf.Ring) -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    root.setLevel(logging.WARNING)
    try:
        first = instrument_logging()
        second = instrument_logging(logging.DEBUG)
        assert first is second
        assert [h for h in root.handlers if isinstance(h, FastbufHandler)] == [first]
        assert first.level == logging.DEBUG and root.level == logging.DEBUG
        logging.getLogger("tests.root.child").debug("through root")
        (rec,) = records(ring)
        assert rec.body == "through root" and rec.attributes["logger.name"] == "tests.root.child"
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_instrument_logging_rejects_a_bad_level() -> None:
    root = logging.getLogger()
    before = list(root.handlers)
    with pytest.raises(ValueError):
        instrument_logging("NOT_A_LEVEL")
    with pytest.raises(TypeError):
        instrument_logging(2.5)  # type: ignore[arg-type]
    assert root.handlers == before


# ---- OpenTelemetry SDK spans ------------------------------------------------------------


def test_sdk_spans_round_trip(ring: fastbuf.Ring) -> None:
    provider = tracer_provider(**{"service.name": "sdk-svc", "deployment.environment": "t"})
    tracer = provider.get_tracer("tests.tracer", "1.2")
    linked = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1))
    with (
        fastbuf.context(job_id="j2"),
        tracer.start_as_current_span(
            "parent", kind=SpanKind.SERVER, attributes={"http.route": "/x", "tags": ("a", "b")}
        ) as parent,
    ):
        with tracer.start_as_current_span(
            "child", kind=SpanKind.CLIENT, links=[Link(linked, {"why": "batch"})]
        ) as child:
            child.add_event("loaded", {"n": 3}, timestamp=1_700_000_000_000_000_000)
            child.set_status(Status(StatusCode.ERROR, "gpu lost"))
        with pytest.raises(KeyError), tracer.start_as_current_span("fails"):
            raise KeyError("k")
    got = drain(ring)
    by_name = {r.name: r for _res, r in got}
    assert set(by_name) == {"parent", "child", "fails"}
    p, c, f = by_name["parent"], by_name["child"], by_name["fails"]
    tid, pid = ids(parent)
    assert (p.trace_id, p.span_id, p.parent_span_id) == (tid, pid, None)
    assert (c.trace_id, c.span_id, c.parent_span_id) == (tid, ids(child)[1], pid)
    assert f.trace_id == tid and f.parent_span_id == pid
    assert (p.span_kind, c.span_kind, f.span_kind) == (2, 3, 1)
    sdk_parent: ReadableSpan = parent  # type: ignore[assignment]
    assert p.start_unix_nano == sdk_parent.start_time
    assert p.time_unix_nano == sdk_parent.end_time
    assert p.attributes["http.route"] == "/x" and p.attributes["tags"] == ["a", "b"]
    assert p.attributes["otel.scope.name"] == "tests.tracer"
    assert p.attributes["otel.scope.version"] == "1.2"
    assert (c.status_code, c.status_message) == (STATUS_ERROR, "gpu lost")
    assert [(e.name, e.time_unix_nano, e.attributes) for e in c.events] == [
        ("loaded", 1_700_000_000_000_000_000, {"n": 3})
    ]
    (link,) = c.links
    assert link.trace_id == (0xABC).to_bytes(16, "big")
    assert link.span_id == (0xDEF).to_bytes(8, "big")
    assert link.attributes == {"why": "batch"}
    assert f.status_code == STATUS_ERROR and f.events[0].name == "exception"
    assert f.events[0].attributes["exception.type"] == "KeyError"
    flags = int(parent.get_span_context().trace_flags)  # sampled (and random in newer SDKs)
    assert flags & 1
    assert [(r.job_id, r.trace_flags) for r in (p, c, f)] == [("j2", flags)] * 3
    res = next(res for res, r in got if r.name == "fails").attributes
    assert res["deployment.environment"] == "t"
    assert res["service.name"] == "test-svc"  # fastbuf's configured name wins
    assert res["telemetry.sdk.name"] == "emp-fastbuf"
    assert fastbuf.stats()["by_kind"]["span"] == 3


def test_sdk_service_name_fills_in_when_fastbuf_has_none(
    ring_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMP_FASTBUF_AGENT", "external")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    fastbuf.configure(ring=ring_name)
    try:
        r = api.ring()
        assert r is not None
        provider = tracer_provider(**{"service.name": "from-sdk"})
        provider.get_tracer("t").start_span("s").end()
        ((res, rec),) = drain(r)
        assert rec.name == "s" and res.attributes["service.name"] == "from-sdk"
    finally:
        api.shutdown()


def test_processors_never_raise(ring: fastbuf.Ring) -> None:
    FastbufSpanProcessor().on_end(object())  # type: ignore[arg-type]
    FastbufLogRecordProcessor().on_emit(object())
    FastbufLogRecordProcessor().on_emit(None)
    assert records(ring) == []


# ---- OpenTelemetry SDK logs -------------------------------------------------------------


def test_sdk_log_records_keep_ids(ring: fastbuf.Ring) -> None:
    provider = tracer_provider()
    tracer = provider.get_tracer("tests")
    logger, log_provider, _ = sdk_logging("tests.sdk.logs")
    try:
        with tracer.start_as_current_span("sdk.outer") as outer:
            logger.info("inside sdk span %d", 1, extra={"k": "v"})
        with fastbuf.span("fb.outer") as fb:
            logger.warning("inside fastbuf span")
        logger.error("outside")
        log_provider.get_logger("direct", "0.1").emit(
            body={"structured": [1, 2]},
            severity_number=SeverityNumber.WARN2,
            severity_text="WARN2",
            event_name="my.event",
            attributes={"a": 1},
        )
    finally:
        logger.handlers.clear()
        log_provider.shutdown()
    recs = [r for r in records(ring) if r.kind == LOG]
    by_body = {r.body: r for r in recs}
    first = by_body["inside sdk span 1"]
    assert (first.trace_id, first.span_id) == ids(outer)
    assert (first.severity_number, first.severity_text) == (9, "INFO")
    assert first.attributes["k"] == "v"
    assert first.attributes["otel.scope.name"] == "tests.sdk.logs"
    second = by_body["inside fastbuf span"]
    assert fb.span_id is not None and fb.trace_id is not None
    assert second.span_id == bytes.fromhex(fb.span_id)
    assert second.trace_id == bytes.fromhex(fb.trace_id)
    assert (second.severity_number, second.severity_text) == (13, "WARN")
    third = by_body["outside"]
    assert third.trace_id is None and third.severity_number == 17
    direct = by_body['{"structured": [1, 2]}']
    assert direct.severity_number == 14 and direct.severity_text == "WARN"  # fastbuf's text
    assert direct.attributes["event.name"] == "my.event" and direct.attributes["a"] == 1
    assert direct.trace_id is None


def test_sdk_log_record_under_a_foreign_span_uses_its_ids(ring: fastbuf.Ring) -> None:
    other = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
    foreign = trace.set_span_in_context(trace.NonRecordingSpan(other))
    log_provider = LoggerProvider(shutdown_on_exit=False)
    log_provider.add_log_record_processor(FastbufLogRecordProcessor(flush_timeout=0.1))
    with fastbuf.span("mine"):
        log_provider.get_logger("x").emit(body="foreign", context=foreign)
    log_provider.shutdown()
    rec = next(r for r in records(ring) if r.kind == LOG)
    assert rec.trace_id == (0x1234).to_bytes(16, "big")
    assert rec.span_id == (0x5678).to_bytes(8, "big")
    assert _codec.current().span_id is None


# ---- one trace across both APIs ---------------------------------------------------------


def test_sdk_span_inside_fastbuf_span_shares_the_trace(ring: fastbuf.Ring) -> None:
    tracer = tracer_provider().get_tracer("tests")
    with (
        fastbuf.span("fb.outer") as outer,
        tracer.start_as_current_span("sdk.inner") as inner,
        tracer.start_as_current_span("sdk.innermost"),
    ):
        pass
    assert outer.trace_id is not None and outer.span_id is not None
    by_name = {r.name: r for r in records(ring)}
    assert by_name["sdk.inner"].trace_id == bytes.fromhex(outer.trace_id)
    assert by_name["sdk.inner"].parent_span_id == bytes.fromhex(outer.span_id)
    assert by_name["sdk.innermost"].parent_span_id == ids(inner)[1]
    assert by_name["fb.outer"].parent_span_id is None
    assert len({r.trace_id for r in by_name.values()}) == 1


def test_fastbuf_span_inside_sdk_span_shares_the_trace(ring: fastbuf.Ring) -> None:
    tracer = tracer_provider().get_tracer("tests")
    logger = private_logger("tests.nest", FastbufHandler())
    with tracer.start_as_current_span("sdk.outer") as outer:
        logger.info("in sdk span")
        with (
            fastbuf.span("fb.mid") as mid,
            tracer.start_as_current_span("sdk.inner"),
            fastbuf.span("fb.leaf"),
        ):
            pass
        assert _codec.current().span_id == ids(outer)[1]
    assert _codec.current().span_id is None  # the scope is restored on the way out
    recs = records(ring)
    by_name = {r.name: r for r in recs if r.kind == SPAN}
    tid, outer_id = ids(outer)
    assert {r.trace_id for r in recs} == {tid}
    assert mid.span_id is not None
    assert by_name["fb.mid"].parent_span_id == outer_id
    assert by_name["sdk.inner"].parent_span_id == bytes.fromhex(mid.span_id)
    assert by_name["fb.leaf"].parent_span_id == by_name["sdk.inner"].span_id
    (log,) = [r for r in recs if r.kind == LOG]
    assert log.span_id == outer_id


def test_sdk_span_continues_a_remote_fastbuf_trace(ring: fastbuf.Ring) -> None:
    tracer = tracer_provider().get_tracer("tests")
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    with fastbuf.continue_trace(header), tracer.start_as_current_span("handler") as span:
        assert span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    (rec,) = records(ring)
    assert rec.trace_id == bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert rec.parent_span_id == bytes.fromhex("b7ad6b7169203331")


def test_spans_in_threads_do_not_leak_into_each_other(ring: fastbuf.Ring) -> None:
    tracer = tracer_provider().get_tracer("tests")
    seen: dict[str, bytes | None] = {}

    def other() -> None:
        seen["other"] = _codec.current().span_id

    with tracer.start_as_current_span("main"):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen == {"other": None}
    assert len(records(ring)) == 1


def test_bridge_install_is_idempotent() -> None:
    from opentelemetry import context as otel_context

    install_context_bridge()
    first = otel_context._RUNTIME_CONTEXT
    install_context_bridge()
    assert otel_context._RUNTIME_CONTEXT is first
    assert isinstance(first, FastbufRuntimeContext)
    token = otel_context.attach(otel_context.set_value("k", "v"))
    assert otel_context.get_value("k") == "v"
    otel_context.detach(token)
    assert otel_context.get_value("k") is None


# ---- flush ----------------------------------------------------------------------------


def test_force_flush_without_a_drainer_is_false(ring: fastbuf.Ring) -> None:
    provider = tracer_provider()
    provider.get_tracer("t").start_span("s").end()
    assert FastbufSpanProcessor().force_flush(100) is False
    assert FastbufLogRecordProcessor().force_flush(100) is False
    assert len(records(ring)) == 1


def test_force_flush_and_shutdown_wait_for_the_drainer(ring: fastbuf.Ring) -> None:
    taken: list[Record] = []
    stop = threading.Event()
    consumer = ring.consumer()

    def drainer() -> None:
        while not stop.is_set():
            got = consumer.read_lanes(10_000)
            for _lane, _meta, recs in got:
                taken.extend(reference.decode_record(r) for r in recs)
            if got:
                consumer.ack()
            else:
                stop.wait(0.002)

    thread = threading.Thread(target=drainer, daemon=True)
    thread.start()
    try:
        provider = TracerProvider(shutdown_on_exit=False)
        processor = FastbufSpanProcessor(flush_timeout=10)
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("t")
        for i in range(50):
            tracer.start_span(f"s{i}").end()
        assert processor.force_flush(10_000) is True
        assert len(taken) == 50
        tracer.start_span("last").end()
        provider.shutdown()  # the processor's shutdown waits for the drainer
        assert [r.name for r in taken][-1] == "last"
        log_processor = FastbufLogRecordProcessor()
        log_provider = LoggerProvider(shutdown_on_exit=False)
        log_provider.add_log_record_processor(log_processor)
        log_provider.get_logger("t").emit(body="flushed")
        assert log_processor.force_flush(10_000) is True
        assert taken[-1].body == "flushed"
        log_provider.shutdown()
    finally:
        stop.set()
        thread.join(timeout=10)
        consumer.close()


# ---- structlog ------------------------------------------------------------------------


def test_structlog_pass_through(ring: fastbuf.Ring) -> None:
    cap = LogCapture()
    log = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.add_log_level, FastbufProcessor(), cap],
    )
    with fastbuf.context(job_id="j3"), fastbuf.span("s") as s:
        log.info("user signed in", user="ada", attempts=2, meta={"x": 1})
    assert cap.entries == [
        {
            "event": "user signed in",
            "user": "ada",
            "attempts": 2,
            "meta": {"x": 1},
            "level": "info",
            "log_level": "info",
        }
    ]
    rec = next(r for r in records(ring) if r.kind == LOG)
    assert (rec.body, rec.severity_number, rec.severity_text) == ("user signed in", 9, "INFO")
    assert rec.attributes == {
        "user": "ada",
        "attempts": 2,
        "meta": "{'x': 1}",
    }
    assert rec.job_id == "j3" and s.span_id is not None
    assert rec.span_id == bytes.fromhex(s.span_id)


def test_structlog_drop_mode_and_levels(ring: fastbuf.Ring) -> None:
    cap = LogCapture()
    log = structlog.wrap_logger(
        structlog.ReturnLogger(), processors=[FastbufProcessor(drop=True), cap]
    )
    log.debug("d")
    log.warning("w")
    log.critical("c")
    log.msg(12345)  # a non-str event
    assert cap.entries == []
    recs = records(ring)
    assert [(r.body, r.severity_number, r.severity_text) for r in recs] == [
        ("d", 5, "DEBUG"),
        ("w", 13, "WARN"),
        ("c", 21, "FATAL"),
        ("12345", 9, "INFO"),
    ]


def test_structlog_exceptions(ring: fastbuf.Ring) -> None:
    raw = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.add_log_level, FastbufProcessor(drop=True)],
    )
    rendered = structlog.wrap_logger(
        structlog.ReturnLogger(),
        processors=[structlog.processors.format_exc_info, FastbufProcessor(drop=True)],
    )
    try:
        raise OSError("disk full")
    except OSError as exc:
        raw.exception("save failed")
        raw.error("given", exc_info=exc)
        rendered.error("rendered", exc_info=True)
    a, b, c = records(ring)
    assert (a.body, a.severity_number) == ("save failed", 17)
    for rec in (a, b):
        assert rec.attributes["exception.type"] == "OSError"
        assert rec.attributes["exception.message"] == "disk full"
        assert 'raise OSError("disk full")' in str(rec.attributes["exception.stacktrace"])
    assert "exception.type" not in c.attributes
    assert "OSError: disk full" in str(c.attributes["exception.stacktrace"])


def test_structlog_odd_event_dicts(ring: fastbuf.Ring) -> None:
    processor = FastbufProcessor()
    odd: dict[Any, Any] = {1: "int key", "level": 30, "exc_info": "not an exception"}
    assert processor(None, "warning", odd) is odd  # passed on untouched
    assert processor(None, "", {"event": None}) == {"event": None}
    assert processor(None, "nonsense", {"event": "e"}) == {"event": "e"}
    a, b, c = records(ring)
    assert (a.body, a.severity_number, a.severity_text) == ("", 13, "WARN")
    assert a.attributes == {"1": "int key"}
    assert (b.body, b.severity_number) == ("None", 9)
    assert (c.severity_number, c.severity_text) == (9, "INFO")


# ---- crash: what was ended is in the ring ---------------------------------------------


@pytest.mark.stress
def test_sigkilled_worker_keeps_every_ended_span(ring: fastbuf.Ring, ring_name: str) -> None:
    env = dict(os.environ, EMP_FASTBUF_AGENT="external")
    proc = subprocess.Popen(
        [sys.executable, "-c", SPAN_WORKER, ring_name],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "done"
        os.kill(proc.pid, signal.SIGKILL)  # no flush, no shutdown, no atexit
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    got = drain(ring)
    spans = [r for _res, r in got if r.kind == SPAN]
    assert sorted(r.attributes["i"] for r in spans) == list(range(1000))  # type: ignore[type-var]
    assert {r.name for r in spans} == {f"step-{i}" for i in range(1000)}
    assert {res.attributes["service.name"] for res, _ in got} == {"crash-worker"}


# ---- the import rule ---------------------------------------------------------------------


def _imports(path: Any) -> list[tuple[str, list[str]]]:
    """(module, names) of every absolute import in ``path``, nested ones included."""
    import ast

    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def test_integrations_use_only_the_bridge_and_the_public_api() -> None:
    from pathlib import Path

    import emp_fastbuf.integrations as integrations

    folder = Path(integrations.__file__).parent
    checked = 0
    for path in sorted(folder.glob("*.py")):
        for module, names in _imports(path):
            if not module.startswith("emp_fastbuf.producer"):
                continue
            checked += 1
            assert module == "emp_fastbuf.producer.bridge" or (
                module == "emp_fastbuf.producer" and names == ["bridge"]
            ), f"{path.name} imports {module}"
            assert not [n for n in names if n.startswith("_")], f"{path.name}: {names}"
    assert checked >= 4  # every bridge module imports the bridge


def test_the_producer_does_not_import_the_agent() -> None:
    import re
    from pathlib import Path

    import emp_fastbuf.producer as producer

    folder = Path(producer.__file__).parent
    for path in sorted(folder.glob("*.py")):
        modules = [module for module, _names in _imports(path)]
        assert not [m for m in modules if m.startswith("emp_fastbuf.agent")], path.name
    native_import = re.compile(r"^\s*(from|import|cimport)\s+emp_fastbuf\.agent", re.M)
    for path in sorted(folder.glob("*.pyx")):
        assert not native_import.search(path.read_text()), path.name


def test_sdk_spans_recorded_but_not_sampled_are_counted_not_written(ring: fastbuf.Ring) -> None:
    """A sampler that says RECORD_ONLY: the span reaches the processor with flags 00,
    and is skipped as an exporter would skip it; a fastbuf span inside follows it."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class RecordOnly(Sampler):
        def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
            return SamplingResult(Decision.RECORD_ONLY)

        def get_description(self) -> str:
            return "RecordOnly"

    provider = TracerProvider(sampler=RecordOnly(), shutdown_on_exit=False)
    provider.add_span_processor(FastbufSpanProcessor(flush_timeout=0.1))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("sdk.recorded") as sdk_span, fastbuf.span("inside") as inside:
        fastbuf.log.info("kept")
    assert sdk_span.is_recording() is False  # ended
    assert inside.sampled is False
    (log,) = records(ring)
    flags = int(sdk_span.get_span_context().trace_flags)  # not sampled; random in newer SDKs
    assert log.kind == LOG and log.trace_flags == flags and not flags & 1
    assert log.trace_id == ids(sdk_span)[0]
    assert fastbuf.stats()["unsampled_spans"] == 2
