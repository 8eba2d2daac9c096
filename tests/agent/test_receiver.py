"""The agent's OTLP receiver, end to end: real agents, real senders (the OpenTelemetry
SDK's OTLP/HTTP exporters, plain HTTP clients, grpcio), a real downstream receiver and
the real store."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from emp_fastbuf.testing.receiver import OTLPReceiver, Response, attrs_dict
from support.agent import AgentProc

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {"EMP_FASTBUF_HOME": str(home), "EMP_FASTBUF_OTLP_GRPC_LISTEN": "off", **extra}


def _listen(agent: AgentProc, key: str = "otlp_listen", timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert agent.proc.poll() is None, agent.output()
        try:
            status = json.loads(agent.status_path.read_text())
        except (OSError, ValueError):
            status = {}
        value = status.get("agent", {}).get(key)
        if value:
            return str(value)
        time.sleep(0.05)
    raise AssertionError(f"no {key} in the status:\n{agent.output()}")


def _port(agent: AgentProc) -> int:
    return int(_listen(agent).rsplit(":", 1)[1])


def _logs_request(n: int, tag: str = "t", service: str = "sender-svc") -> bytes:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = service
    sl = rl.scope_logs.add()
    sl.scope.name = "sender"
    for i in range(n):
        rec = sl.log_records.add(time_unix_nano=time.time_ns(), severity_number=9)
        rec.body.string_value = f"line {i}"
        rec.attributes.add(key="seq").value.int_value = i
        rec.attributes.add(key="tag").value.string_value = tag
    return req.SerializeToString()


def _post(
    port: int, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def _tags(rx: OTLPReceiver, tag: str) -> list[int]:
    return sorted(
        int(attrs_dict(rec.attributes)["seq"])
        for _res, rec in rx.logs()
        if attrs_dict(rec.attributes).get("tag") == tag
    )


def _fastbuf(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_HOME": str(home)},
    )


SDK_SENDER = r"""
import sys, time
from opentelemetry import trace, propagate
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
base, traceparent = sys.argv[1], sys.argv[2]
res = Resource.create({"service.name": "sdk-svc"})
tp = TracerProvider(resource=res)
tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=base + "/v1/traces")))
lp = LoggerProvider(resource=res)
lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=base + "/v1/logs")))
reader = PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=base + "/v1/metrics"),
                                       export_interval_millis=3600_000)
mp = MeterProvider(resource=res, metric_readers=[reader])
ctx = propagate.extract({"traceparent": traceparent}) if traceparent != "-" else None
tracer = tp.get_tracer("sdk-test")
with tracer.start_as_current_span("sdk.handle", context=ctx, kind=trace.SpanKind.SERVER):
    from opentelemetry._logs import SeverityNumber
    lp.get_logger("sdk-test").emit(
        timestamp=time.time_ns(), severity_number=SeverityNumber.WARN,
        severity_text="WARN", body="sdk log line", attributes={"k": "v"})
mp.get_meter("sdk-test").create_counter("sdk.requests").add(7, {"route": "/x"})
reader.force_flush()
tp.shutdown(); lp.shutdown(); mp.shutdown()
print("ok", flush=True)
"""

NATIVE_WORKER = r"""
import sys
import emp_fastbuf as fastbuf
fastbuf.configure(service="native-svc", ring=sys.argv[1], agent="external")
with fastbuf.span("native.job") as s:
    fastbuf.log.info("native step")
print(s.trace_id, s.span_id, flush=True)
fastbuf.flush()
"""


def test_sdk_exporters_and_a_native_worker_share_one_trace(
    ring_name: str, fastbuf_home: Path
) -> None:
    """The SDK's OTLP/HTTP exporters (traces, logs, metrics) point at the agent: all of it
    reaches the downstream receiver and the store, with the sender's resource; the SDK's
    span, a child of a native worker's span through traceparent, is one tree in
    ``fastbuf trace``."""
    with OTLPReceiver() as rx:
        agent = AgentProc(
            ring_name, fastbuf_home, "--endpoint", rx.url, "--local-copy",
            "--otlp-listen", "127.0.0.1:0", env=_env(fastbuf_home),
        )  # fmt: skip
        try:
            port = _port(agent)
            native = subprocess.run(
                [sys.executable, "-c", NATIVE_WORKER, ring_name],
                capture_output=True, text=True, timeout=60,
                env={**os.environ, "EMP_FASTBUF_AGENT": "external"},
            )  # fmt: skip
            assert native.returncode == 0, native.stderr
            trace_id, span_id = native.stdout.split()
            sdk = subprocess.run(
                [sys.executable, "-c", SDK_SENDER, f"http://127.0.0.1:{port}",
                 f"00-{trace_id}-{span_id}-01"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert sdk.returncode == 0 and "ok" in sdk.stdout, sdk.stderr
            assert rx.wait_for(
                lambda r: (
                    any(s.name == "sdk.handle" for _res, s in r.spans())
                    and any(m.name == "sdk.requests" for _res, m in r.metrics())
                    and any(rec.body.string_value == "sdk log line" for _res, rec in r.logs())
                ),
                timeout=60,
            ), agent.output()
        finally:
            assert agent.stop() == 0, agent.output()
    (res, span) = next((res, s) for res, s in rx.spans() if s.name == "sdk.handle")
    assert res["service.name"] == "sdk-svc"
    assert span.trace_id.hex() == trace_id and span.parent_span_id.hex() == span_id
    (res, rec) = next((res, r) for res, r in rx.logs() if r.body.string_value == "sdk log line")
    assert res["service.name"] == "sdk-svc" and rec.trace_id.hex() == trace_id
    assert rec.severity_number == 13 and attrs_dict(rec.attributes) == {"k": "v"}
    metric = next(m for _res, m in rx.metrics() if m.name == "sdk.requests")
    assert metric.sum.data_points[-1].as_int == 7

    tree = _fastbuf(fastbuf_home, "trace", trace_id, "--json")
    assert tree.returncode == 0, tree.stderr
    spans = [json.loads(line) for line in tree.stdout.splitlines()]
    by_name = {s["name"]: s for s in spans if s["kind"] == "span"}
    assert by_name["sdk.handle"]["parent_span_id"] == by_name["native.job"]["span_id"]
    assert by_name["sdk.handle"]["service"] == "sdk-svc"
    assert by_name["native.job"]["service"] == "native-svc"
    logs = _fastbuf(fastbuf_home, "logs", "--json")
    assert logs.returncode == 0, logs.stderr
    bodies = {json.loads(line)["body"]: json.loads(line) for line in logs.stdout.splitlines()}
    assert bodies["sdk log line"]["service"] == "sdk-svc"
    assert bodies["sdk log line"]["trace_id"] == trace_id


def test_a_batch_answered_200_survives_sigkill(ring_name: str, fastbuf_home: Path) -> None:
    """200 means durable: the agent is killed right after answering, the downstream
    being down; the next agent delivers the batch."""
    with OTLPReceiver() as rx:
        rx.default = Response(503)
        agent = AgentProc(
            ring_name, fastbuf_home, "--endpoint", rx.url, "--otlp-listen", "127.0.0.1:0",
            env=_env(fastbuf_home),
        )  # fmt: skip
        status, _h, _b = _post(_port(agent), "/v1/logs", _logs_request(50, "kill"), PROTOBUF)
        assert status == 200
        agent.stop(signal.SIGKILL)
        assert _tags(rx, "kill") == []
        rx.default = Response(200)
        agent = AgentProc(ring_name, fastbuf_home, "--endpoint", rx.url, env=_env(fastbuf_home))
        try:
            assert rx.wait_for(lambda r: len(set(_tags(r, "kill"))) == 50, timeout=60)
        finally:
            assert agent.stop() == 0, agent.output()
    assert sorted(set(_tags(rx, "kill"))) == list(range(50))


SDK_RETRY = r"""
import sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
memory = InMemorySpanExporter()
tp = TracerProvider()
tp.add_span_processor(SimpleSpanProcessor(memory))
with tp.get_tracer("retry").start_as_current_span("retried.span"):
    pass
exporter = OTLPSpanExporter(endpoint=sys.argv[1] + "/v1/traces", timeout=60)
print(exporter.export(memory.get_finished_spans()).name, flush=True)
"""


def test_a_full_spool_answers_503_and_the_sdk_retries(ring_name: str, fastbuf_home: Path) -> None:
    """With the spool at its limit (the downstream down), requests get 503 and
    Retry-After; the SDK's exporter retries and succeeds once the spool has room."""
    with OTLPReceiver() as rx:
        rx.default = Response(503)
        agent = AgentProc(
            ring_name, fastbuf_home, "--endpoint", rx.url, "--otlp-listen", "127.0.0.1:0",
            "--spool-max", "1M", env=_env(fastbuf_home),
        )  # fmt: skip
        try:
            port = _port(agent)
            # Incompressible bodies fill the 1 MiB spool in a few requests, then smaller
            # ones fill it to the brim (past the 90% at which it refuses any request).
            for size in (150_000, 10_000):
                answers = []
                for i in range(200):
                    req = ExportLogsServiceRequest()
                    sl = req.resource_logs.add().scope_logs.add()
                    rec = sl.log_records.add(severity_number=9)
                    rec.body.string_value = os.urandom(size).hex()
                    rec.attributes.add(key="tag").value.string_value = f"fill{i}"
                    body = req.SerializeToString()
                    status, headers, _b = _post(port, "/v1/logs", body, PROTOBUF)
                    answers.append(status)
                    if status == 503:
                        assert int(headers["Retry-After"]) > 0
                        break
                assert answers[-1] == 503 and set(answers[:-1]) <= {200}
            sender = subprocess.Popen(
                [sys.executable, "-c", SDK_RETRY, f"http://127.0.0.1:{port}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while json.loads(agent.status_path.read_text())["receiver"]["refused"] < 2:
                assert time.monotonic() < deadline, agent.output()
                assert sender.poll() is None, sender.communicate()
                time.sleep(0.05)
            rx.default = Response(200)  # the spool drains; the SDK's next try gets in
            out, err = sender.communicate(timeout=120)
            assert out.strip() == "SUCCESS" and "retrying" in err, err
            assert rx.wait_for(
                lambda r: any(s.name == "retried.span" for _res, s in r.spans()), timeout=60
            )
        finally:
            assert agent.stop() == 0, agent.output()


def _status_body(body: bytes) -> str:
    """The message of an error answer: a google.rpc.Status, in protobuf or JSON."""
    from google.rpc import status_pb2

    if body.startswith(b"{"):
        return str(json.loads(body)["message"])
    return str(status_pb2.Status.FromString(body).message)


def test_bad_requests_get_their_answer_and_the_agent_keeps_running(
    ring_name: str, fastbuf_home: Path
) -> None:
    env = _env(fastbuf_home, EMP_FASTBUF_RECEIVER_MAX_BYTES="64K")
    agent = AgentProc(ring_name, fastbuf_home, "--otlp-listen", "127.0.0.1:0", env=env)
    try:
        port = _port(agent)
        good = _logs_request(3, "good")
        cases: list[tuple[str, bytes, dict[str, str], int]] = [
            ("/v1/logs", b"\x00" * (65 << 10), PROTOBUF, 413),
            # A gzip bomb: 100 KiB deflated into a few hundred bytes.
            ("/v1/logs", gzip.compress(b"\x00" * (100 << 10)),
             {**PROTOBUF, "Content-Encoding": "gzip"}, 413),
            ("/v1/logs", good[: len(good) - 5], PROTOBUF, 400),
            ("/v1/logs", b"{not json", {"Content-Type": "application/json"}, 400),
            ("/v1/logs", good, {"Content-Type": "text/plain"}, 415),
            ("/v1/logs", good, {**PROTOBUF, "Content-Encoding": "br"}, 415),
            ("/v1/nothing", good, PROTOBUF, 404),
        ]  # fmt: skip
        for path, body, headers, expected in cases:
            status, _h, answer = _post(port, path, body, headers)
            assert status == expected, (path, headers, status, answer)
            assert _status_body(answer)
            assert agent.proc.poll() is None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v1/logs")
        assert conn.getresponse().status == 405
        conn.close()
        # Good records next to a malformed one: OTLP partial success.
        req = ExportLogsServiceRequest.FromString(_logs_request(2, "partial"))
        req.resource_logs[0].scope_logs[0].log_records.add(trace_id=b"short")
        status, _h, answer = _post(port, "/v1/logs", req.SerializeToString(), PROTOBUF)
        assert status == 200
        partial = ExportLogsServiceResponse.FromString(answer).partial_success
        assert partial.rejected_log_records == 1 and "wrong length" in partial.error_message
        # JSON, zstd: taken.
        import zstandard

        doc = {"resourceLogs": [{"scopeLogs": [{"logRecords": [
            {"body": {"stringValue": "json line"}, "traceId": "ab" * 16, "spanId": "cd" * 8}
        ]}]}]}  # fmt: skip
        status, _h, answer = _post(
            port, "/v1/logs", json.dumps(doc).encode(), {"Content-Type": "application/json"}
        )
        assert status == 200 and json.loads(answer) == {}
        status, _h, _b = _post(
            port, "/v1/logs", zstandard.ZstdCompressor().compress(good),
            {**PROTOBUF, "Content-Encoding": "zstd"},
        )  # fmt: skip
        assert status == 200
        # `fastbuf status` names where the receiver listens.
        shown = _fastbuf(fastbuf_home, "status", "--ring", ring_name)
        assert f"OTLP receiver: http on 127.0.0.1:{port}" in shown.stdout, shown.stdout
    finally:
        assert agent.stop() == 0, agent.output()
    logs = _fastbuf(fastbuf_home, "logs", "--json")
    rows = [json.loads(line) for line in logs.stdout.splitlines()]
    json_row = next(r for r in rows if r["body"] == "json line")
    assert json_row["trace_id"] == "ab" * 16 and json_row["span_id"] == "cd" * 8
    assert sum(1 for r in rows if r["attributes"].get("tag") == "good") == 3  # the zstd one


def test_slow_clients_are_cut_off(ring_name: str, fastbuf_home: Path) -> None:
    env = _env(fastbuf_home, EMP_FASTBUF_RECEIVER_TIMEOUT="1")
    agent = AgentProc(ring_name, fastbuf_home, "--otlp-listen", "127.0.0.1:0", env=env)
    try:
        port = _port(agent)
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(b"POST /v1/logs HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
            slow.settimeout(60)
            assert slow.recv(100) == b""  # the server closed it
        status, _h, _b = _post(port, "/v1/logs", _logs_request(1), PROTOBUF)
        assert status == 200
    finally:
        assert agent.stop() == 0, agent.output()


def test_a_non_loopback_bind_needs_a_token(ring_name: str, fastbuf_home: Path) -> None:
    env = {**os.environ, **_env(fastbuf_home)}
    env.pop("EMP_FASTBUF_RECEIVER_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring_name,
         "--otlp-listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode == 2
    assert "EMP_FASTBUF_RECEIVER_TOKEN" in out.stderr and len(out.stderr.splitlines()) == 1
    token = "s3cret-token-value"
    agent = AgentProc(
        ring_name, fastbuf_home, "--otlp-listen", "0.0.0.0:0",
        env=_env(fastbuf_home, EMP_FASTBUF_RECEIVER_TOKEN=token),
    )  # fmt: skip
    try:
        port = _port(agent)
        status, _h, _b = _post(port, "/v1/logs", _logs_request(1), PROTOBUF)
        assert status == 401
        auth = {**PROTOBUF, "Authorization": f"Bearer {token}"}
        status, _h, _b = _post(port, "/v1/logs", _logs_request(1), auth)
        assert status == 200
        status_json = agent.status_path.read_text()
    finally:
        assert agent.stop() == 0, agent.output()
    assert token not in status_json and token not in agent.output()


def test_a_taken_port_costs_one_warning(ring_name: str, fastbuf_home: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        agent = AgentProc(
            ring_name, fastbuf_home, "--otlp-listen", f"127.0.0.1:{port}", env=_env(fastbuf_home)
        )
        try:
            agent.wait_ready()
            deadline = time.monotonic() + 30
            while "runs without it" not in agent.output():
                assert time.monotonic() < deadline, agent.output()
                time.sleep(0.05)
            assert agent.proc.poll() is None
            status = json.loads(agent.status_path.read_text())
            assert status["agent"]["otlp_listen"] is None
        finally:
            assert agent.stop() == 0, agent.output()
    assert agent.output().count("runs without it") == 1


def test_grpc_receiver(ring_name: str, fastbuf_home: Path) -> None:
    grpc = pytest.importorskip("grpc")
    with OTLPReceiver() as rx:
        agent = AgentProc(
            ring_name, fastbuf_home, "--endpoint", rx.url, "--otlp-listen", "off",
            "--otlp-grpc-listen", "127.0.0.1:0", env=_env(fastbuf_home),
        )  # fmt: skip
        try:
            address = _listen(agent, "otlp_grpc_listen")
            with grpc.insecure_channel(address) as channel:
                export: Any = channel.unary_unary(
                    "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                    request_serializer=None,
                    response_deserializer=ExportLogsServiceResponse.FromString,
                )
                export(_logs_request(5, "grpc"), timeout=30)
                with pytest.raises(grpc.RpcError) as bad:
                    export(b"\xff\xff\xff", timeout=30)
                assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert rx.wait_for(lambda r: len(_tags(r, "grpc")) == 5, timeout=60)
        finally:
            assert agent.stop() == 0, agent.output()
