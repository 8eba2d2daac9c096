"""The semantic conventions and the sampling decision as they arrive on the wire: a worker
process records through the native API and the stdlib bridge, a real agent delivers to a
real OTLP receiver (official protobufs), and the attributes are the OpenTelemetry ones."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import emp_fastbuf as fastbuf
from emp_fastbuf._version import __version__
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc

TRACE = "0af7651916cd43dd8448eb211c80319c"

# No service name anywhere (env_clean removes the OTEL_ variables).
WORKER = r"""
import logging, sys
import emp_fastbuf as fastbuf
from emp_fastbuf.integrations.stdlib import FastbufHandler

fastbuf.configure(ring=sys.argv[1], agent="external")
logger = logging.getLogger("semconv")
logger.addHandler(FastbufHandler())
logger.setLevel(logging.DEBUG)
logger.propagate = False

def handler():
    logger.warning("from stdlib")

handler()
try:
    raise KeyError("missing")
except KeyError:
    logger.exception("stdlib failed")
    fastbuf.log.exception("native failed")
with fastbuf.span("kept") as kept:
    fastbuf.log.info("in kept")
with fastbuf.continue_trace(f"00-{sys.argv[2]}-b7ad6b7169203331-00"):
    with fastbuf.span("dropped") as dropped:
        fastbuf.log.info("in dropped")
        fastbuf.emit("dropped.event")
assert fastbuf.flush(30)
print(kept.trace_id, dropped.span_id, fastbuf.stats()["unsampled_spans"])
"""


def test_conventions_and_sampling_on_the_wire(env_clean: Path, ring_name: str) -> None:
    fastbuf.Ring.create(ring_name, 8 << 20, lanes=8).close()
    with OTLPReceiver() as rx:
        agent = AgentProc(ring_name, env_clean, "--endpoint", rx.url)
        try:
            out = subprocess.run(
                [sys.executable, "-c", WORKER, ring_name, TRACE],
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
            )
            assert out.returncode == 0, out.stderr
        finally:
            assert agent.stop() == 0
        kept_trace, dropped_span, unsampled = out.stdout.split()
        logs = {rec.body.string_value: (res, rec) for res, rec in rx.logs()}
        events = [rec for _res, rec in rx.logs() if rec.event_name == "dropped.event"]
        spans = {s.name: (res, s) for res, s in rx.spans()}

    # The resource: the SDK and runtime conventions, and the unnamed service.
    res, _ = logs["from stdlib"]
    assert res["service.name"] == "unknown_service:python"
    assert res["telemetry.sdk.name"] == "emp-fastbuf"
    assert res["telemetry.sdk.language"] == "python"
    assert res["telemetry.sdk.version"] == __version__
    assert res["process.runtime.name"] == sys.implementation.name
    assert res["process.runtime.version"] == platform.python_version()
    assert res["process.runtime.description"] == sys.version

    # Code locations and severity text from the stdlib bridge.
    _, rec = logs["from stdlib"]
    a = attrs_dict(rec.attributes)
    assert a["code.function.name"] == "handler"
    assert a["code.file.path"] == "<string>" and isinstance(a["code.line.number"], int)
    assert not {"code.filepath", "code.lineno", "code.function"} & a.keys()
    assert (rec.severity_number, rec.severity_text) == (13, "WARN")

    # Exceptions, from the bridge and the native API alike.
    for body in ("stdlib failed", "native failed"):
        _, rec = logs[body]
        a = attrs_dict(rec.attributes)
        assert (a["exception.type"], a["exception.message"]) == ("KeyError", "'missing'")
        stack = a["exception.stacktrace"]
        assert stack.startswith("Traceback") and stack.endswith("KeyError: 'missing'\n")
        assert (rec.severity_number, rec.severity_text) == (17, "ERROR")

    # Sampling: the kept span and its log carry flags 01; the dropped span never arrives,
    # its log and event do, in its trace, with flags 00.
    assert "dropped" not in spans and int(unsampled) == 1
    _, kept = spans["kept"]
    assert kept.trace_id.hex() == kept_trace and kept.flags & 0xFF == 1
    _, in_kept = logs["in kept"]
    assert in_kept.trace_id == kept.trace_id and in_kept.flags == 1
    _, in_dropped = logs["in dropped"]
    assert in_dropped.trace_id.hex() == TRACE and in_dropped.span_id.hex() == dropped_span
    assert in_dropped.flags == 0
    (event,) = events
    assert event.trace_id.hex() == TRACE and event.flags == 0
