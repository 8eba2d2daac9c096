"""Each bridge end to end: stdlib logging, the OpenTelemetry SDK and structlog write
into the ring, a real agent process delivers to a real OTLP receiver and to the local
store, and what arrives keeps its ids, attributes and job id."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import emp_fastbuf as fastbuf
from emp_fastbuf.producer import api
from emp_fastbuf.testing.receiver import OTLPReceiver, attrs_dict
from support.agent import AgentProc
from support.integrations import SPAN_WORKER, emit_sample


@pytest.fixture
def attached(ring_name: str, env_clean: Path) -> Iterator[str]:
    """This process configured on a new 8-lane ring, for an agent the test starts."""
    fastbuf.Ring.create(ring_name, 8 << 20, lanes=8).close()
    fastbuf.configure(service="e2e-svc", ring=ring_name)
    yield ring_name
    api.shutdown()


def test_every_bridge_through_the_agent_to_the_receiver(attached: str, fastbuf_home: Path) -> None:
    sample = emit_sample("job-e2e")
    with OTLPReceiver() as rx:
        agent = AgentProc(attached, fastbuf_home, "--endpoint", rx.url)
        assert agent.stop() == 0  # SIGTERM: drain, deliver, exit
        spans = {s.name: (res, s) for res, s in rx.spans()}
        logs = {rec.body.string_value: (res, rec) for res, rec in rx.logs()}
    assert {"sample.request", "sample.step"} <= set(spans)
    _res, outer = spans["sample.request"]
    _res, step = spans["sample.step"]
    assert outer.trace_id == step.trace_id == sample.trace_id
    assert outer.span_id == sample.sdk_span_id and outer.parent_span_id == b""
    assert step.span_id == sample.fastbuf_span_id and step.parent_span_id == sample.sdk_span_id
    assert outer.kind == 2  # SPAN_KIND_SERVER
    for body, severity in (
        (sample.stdlib_body, 9),
        (sample.sdk_log_body, 13),
        (sample.structlog_body, 17),
    ):
        res, rec = logs[body]
        assert rec.trace_id == sample.trace_id and rec.span_id == sample.fastbuf_span_id
        assert rec.severity_number == severity
        assert attrs_dict(rec.attributes)["emp.job_id"] == "job-e2e"
        assert res["service.name"] == "e2e-svc"
    # The SDK's resource attributes are merged into the producer's resource from the first
    # SDK record on (records written before keep the resource they were written with).
    assert spans["sample.request"][0]["deployment.environment"] == "sample"
    assert attrs_dict(logs[sample.stdlib_body][1].attributes)["logger.name"] == "sample.stdlib"


def test_every_bridge_through_the_agent_into_the_store(attached: str, fastbuf_home: Path) -> None:
    sample = emit_sample("job-store")
    agent = AgentProc(attached, fastbuf_home)
    assert agent.stop() == 0
    env = {**os.environ, "EMP_FASTBUF_HOME": str(fastbuf_home)}
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "trace", sample.trace_id.hex(), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    spans = [x for x in lines if x["kind"] == "span"]
    assert [(s["name"], s["depth"]) for s in spans] == [("sample.request", 0), ("sample.step", 1)]
    assert spans[1]["parent_span_id"] == sample.sdk_span_id.hex()
    logs = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "logs", "--job", "job-store", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert logs.returncode == 0, logs.stderr
    bodies = {json.loads(line)["body"] for line in logs.stdout.splitlines()}
    assert {sample.stdlib_body, sample.sdk_log_body, sample.structlog_body} <= bodies


@pytest.mark.stress
def test_sigkilled_sdk_worker_has_all_1000_spans_delivered(
    attached: str, fastbuf_home: Path
) -> None:
    with OTLPReceiver() as rx:
        agent = AgentProc(attached, fastbuf_home, "--endpoint", rx.url)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", SPAN_WORKER, attached],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
            )
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "done"
            os.kill(proc.pid, signal.SIGKILL)  # no flush, no shutdown
            assert proc.wait(timeout=30) == -signal.SIGKILL
            proc.stdout.close()
            assert rx.wait_for(lambda r: len(r.spans()) >= 1000, 60)
        finally:
            assert agent.stop() == 0
        names = sorted(s.name for _res, s in rx.spans())
    assert names == sorted(f"step-{i}" for i in range(1000))
