"""Every variable of the OTLP exporter specification, general and per signal, seen where it
shows: in the request a real receiver on 127.0.0.1 gets (its path, headers, compression,
content type, TLS client certificate) or in what the exporter does with the answer.
The gRPC forms are in test_otlp_grpc.py. Each test sets a signal's own variable against
the general one, for each signal: the signal's form wins, the others keep the general.

Also here: OTEL_<SIGNAL>_EXPORTER=none and OTEL_METRIC_EXPORT_INTERVAL with a real agent,
the http/json protocol end to end, and bad values of every new variable refused at agent
start with exit 2."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AggregationTemporality,
    Exemplar,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from emp_fastbuf.agent.config import SIGNALS, AgentConfig, ConfigError, Signal
from emp_fastbuf.agent.otlp.http import ExportResult, OTLPExporter, RetryPolicy
from emp_fastbuf.cli import main
from emp_fastbuf.testing.receiver import OTLPReceiver, Response, decode_body
from support.agent import AgentProc, run_worker
from support.otlp import logs_payload, metrics_payload, resource, spans_payload
from support.tls import CertAuthority

TOKEN = "auth_0tlpV4rsS3cretToken"
PAYLOADS: dict[Signal, bytes] = {
    "logs": logs_payload("x"),
    "traces": spans_payload("s"),
    "metrics": metrics_payload("m"),
}
# Exports that give up fast: a signal meant to fail costs a fraction of a second.
QUICK = RetryPolicy(
    initial_backoff_s=0.01, max_backoff_s=0.05, max_elapsed_s=0.3, breaker_threshold=100
)


def var(signal: Signal | None, setting: str) -> str:
    """The variable's name, spelled as the specification does (not taken from the code)."""
    middle = "" if signal is None else f"{signal.upper()}_"
    return f"OTEL_EXPORTER_OTLP_{middle}{setting}"


def exporter(home: Path, env: dict[str, str], policy: RetryPolicy = QUICK) -> OTLPExporter:
    config = AgentConfig.from_env({"HOME": str(home), "EMP_FASTBUF_HOME": str(home / "fb"), **env})
    return OTLPExporter(config, policy)


def send_all(ex: OTLPExporter, last: Signal | None = None) -> dict[Signal, ExportResult]:
    """One request per signal (``last`` sent after the others)."""
    order = [s for s in SIGNALS if s != last] + ([last] if last else [])
    return {s: ex.export(s, PAYLOADS[s]) for s in order}


def by_signal(rx: OTLPReceiver) -> dict[str, dict[str, str]]:
    """The headers of the one request of each signal, by signal name."""
    out: dict[str, dict[str, str]] = {}
    for attempt in rx.attempts:
        signal = attempt.path.rsplit("/", 1)[-1]
        assert signal not in out, f"two requests for {signal}"
        out[signal] = attempt.headers
    return out


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


# -- ENDPOINT ------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_endpoint_variables(signal: Signal, home: Path) -> None:
    """The general endpoint is a base (``v1/<signal>`` appended after its path); a
    signal's own endpoint is used as it is."""
    paths = {f"/base/v1/{s}": f"/v1/{s}" for s in SIGNALS} | {f"/ingest/{signal}": f"/v1/{signal}"}
    with OTLPReceiver(paths=paths) as rx:
        env = {
            var(None, "ENDPOINT"): f"{rx.url}/base/",
            var(signal, "ENDPOINT"): f"{rx.url}/ingest/{signal}",
        }
        with exporter(home, env) as ex:
            assert all(r.ok for r in send_all(ex).values())
        expected = {f"/base/v1/{s}" for s in SIGNALS if s != signal} | {f"/ingest/{signal}"}
        assert {a.path for a in rx.attempts} == expected
        assert (len(rx.logs()), len(rx.spans()), len(rx.metrics())) == (1, 1, 1)


# -- HEADERS -------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_headers_variables(signal: Signal, home: Path) -> None:
    """A signal's HEADERS replace the general list for that signal (as the SDKs do); the
    Dash0 variables stay under both. Values are URL-decoded."""
    with OTLPReceiver() as rx:
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(None, "HEADERS"): "x-general=g,x-both=general",
            var(signal, "HEADERS"): "x-own=o%20wn,x-both=own",
            "DASH0_DATASET": "ds-1",
        }
        with exporter(home, env) as ex:
            assert all(r.ok for r in send_all(ex).values())
        for name, headers in by_signal(rx).items():
            assert headers["dash0-dataset"] == "ds-1"
            assert headers["content-type"] == "application/x-protobuf"  # the default protocol
            if name == signal:
                assert (headers["x-own"], headers["x-both"]) == ("o wn", "own")
                assert "x-general" not in headers
            else:
                assert (headers["x-general"], headers["x-both"]) == ("g", "general")
                assert "x-own" not in headers


def test_per_signal_credentials_stay_secret(home: Path) -> None:
    """A token in a signal's own HEADERS is redacted like the general one, and refused over
    plain http to another machine."""
    env = {
        var(None, "ENDPOINT"): "https://collector.example",
        var("logs", "HEADERS"): f"Authorization=Bearer%20{TOKEN}",
    }
    config = AgentConfig.from_env({"HOME": str(home), **env})
    assert config.headers_for("logs") == {"Authorization": f"Bearer {TOKEN}"}
    assert config.headers_for("traces") == {}
    for text in (repr(config), str(config), json.dumps(config.describe())):
        assert TOKEN not in text
    assert TOKEN in config.secrets()
    with pytest.raises(ConfigError, match="plain http") as info:
        AgentConfig.from_env(
            {"HOME": str(home), **env, var("logs", "ENDPOINT"): "http://10.1.2.3:4318/v1/logs"}
        )
    assert TOKEN not in str(info.value)


# -- COMPRESSION ---------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
@pytest.mark.parametrize(("general", "own"), [("zstd", "gzip"), ("gzip", "none")])
def test_compression_variables(signal: Signal, general: str, own: str, home: Path) -> None:
    with OTLPReceiver() as rx:
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(None, "COMPRESSION"): general,
            var(signal, "COMPRESSION"): own,
        }
        with exporter(home, env) as ex:
            assert all(r.ok for r in send_all(ex).values())
        for name, headers in by_signal(rx).items():
            expected = own if name == signal else general
            assert headers.get("content-encoding", "none") == expected
        assert (len(rx.logs()), len(rx.spans()), len(rx.metrics())) == (1, 1, 1)


def test_the_compression_flag_beats_every_variable(home: Path) -> None:
    with OTLPReceiver() as rx:
        env = {var(None, "ENDPOINT"): rx.url, var("logs", "COMPRESSION"): "none"}
        config = AgentConfig.from_env({"HOME": str(home), **env}, {"compression": "zstd"})
        with OTLPExporter(config, QUICK) as ex:
            assert ex.export("logs", PAYLOADS["logs"]).ok
        assert rx.attempts[0].headers["content-encoding"] == "zstd"


# -- TIMEOUT -------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_timeout_variables(signal: Signal, home: Path) -> None:
    """Every answer comes after 0.6 s: the signal whose own TIMEOUT is 100 ms gives up on
    it (a timeout), the others wait under the general 10 s and succeed."""
    with OTLPReceiver() as rx:
        rx.default = Response(delay_s=0.6)
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(None, "TIMEOUT"): "10000",
            var(signal, "TIMEOUT"): "100",
        }
        # One failure opens the breaker: the timed-out signal answers at once (sent last).
        policy = RetryPolicy(max_elapsed_s=30.0, breaker_threshold=1, breaker_cooldown_s=60)
        with exporter(home, env, policy) as ex:
            results = send_all(ex, last=signal)
            assert ex.config.timeout_for(signal) == 0.1
        assert results[signal].status == "retry_later"
        assert "timeout" in results[signal].message
        assert all(r.ok for s, r in results.items() if s != signal)
        # The request did arrive: the client cut it off while the receiver sat on it.
        assert f"/v1/{signal}" in {a.path for a in rx.attempts}


# -- PROTOCOL ------------------------------------------------------------------------------


@pytest.mark.parametrize("signal", SIGNALS)
def test_protocol_variables(signal: Signal, home: Path) -> None:
    """http/json for one signal, http/protobuf for the others; the receiver decodes both
    (JSON held to the OTLP rules) and answers a JSON request in JSON."""
    with OTLPReceiver() as rx:
        rx.default = Response(rejected=1, error_message="one refused")
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(None, "PROTOCOL"): "http/protobuf",
            var(signal, "PROTOCOL"): "http/json",
        }
        with exporter(home, env) as ex:
            results = send_all(ex)
        # The partial success is read from the JSON answer as from the protobuf one.
        assert all(r.ok and r.rejected == 1 for r in results.values())
        for name, headers in by_signal(rx).items():
            json_request = name == signal
            expected = "application/json" if json_request else "application/x-protobuf"
            assert headers["content-type"] == expected
        assert all(a.error is None for a in rx.attempts)
        assert (len(rx.logs()), len(rx.spans()), len(rx.metrics())) == (1, 1, 1)


def test_unknown_protocol_values_are_not_guessed() -> None:
    for value in ("http", "json", "grpc/json", "HTTP/PROTOBUF "):
        env = {
            "HOME": "/h",
            var(None, "ENDPOINT"): "http://127.0.0.1:1",
            var(None, "PROTOCOL"): value,
        }
        if value.strip().lower() == "http/protobuf":
            assert AgentConfig.from_env(env).protocol == "http/protobuf"  # case and spaces
        else:
            with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol"):
                AgentConfig.from_env(env)


@pytest.mark.parametrize(
    ("setting", "good", "bad"),
    [
        ("PROTOCOL", "http/json", "http/xml"),
        ("COMPRESSION", "none", "brotli"),
        ("TIMEOUT", "100", "soon"),
        ("INSECURE", "true", "maybe"),
        ("HEADERS", "a=b", "novalue"),
    ],
)
def test_a_bad_general_value_is_refused_even_where_every_signal_has_its_own(
    setting: str, good: str, bad: str
) -> None:
    env = {"HOME": "/h", var(None, "ENDPOINT"): "http://127.0.0.1:1", var(None, setting): bad}
    env.update({var(s, setting): good for s in SIGNALS})
    with pytest.raises(ConfigError, match=f"^{var(None, setting)}: "):
        AgentConfig.from_env(env)


TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN, PARENT, LINKED = bytes.fromhex("eee19b7ec3c1b174"), b"\x01" * 8, b"\xfe" * 8


def _rich_requests() -> dict[Signal, bytes]:
    """Requests with every id field and a 64-bit value where JSON must write them apart."""
    span = Span(
        trace_id=TRACE,
        span_id=SPAN,
        parent_span_id=PARENT,
        name="s",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_123_456_789,
        end_time_unix_nano=1_700_000_001_000_000_000,
        links=[Span.Link(trace_id=TRACE, span_id=LINKED)],
        attributes=[KeyValue(key="blob", value=AnyValue(bytes_value=b"\x00\xff"))],
    )
    log = LogRecord(
        time_unix_nano=1_700_000_000_000_000_001,
        severity_number=17,
        trace_id=TRACE,
        span_id=SPAN,
        body=AnyValue(string_value="boom"),
        attributes=[KeyValue(key="big", value=AnyValue(int_value=2**62 + 1))],
    )
    point = NumberDataPoint(
        as_int=2**53 + 1,
        time_unix_nano=1_700_000_000_000_000_002,
        exemplars=[Exemplar(as_double=0.5, trace_id=TRACE, span_id=SPAN)],
    )
    metric = Metric(
        name="m",
        sum=Sum(
            data_points=[point],
            aggregation_temporality=AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE,
            is_monotonic=True,
        ),
    )
    return {
        "traces": ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(resource=resource(), scope_spans=[ScopeSpans(spans=[span])])
            ]
        ).SerializeToString(),
        "logs": ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(resource=resource(), scope_logs=[ScopeLogs(log_records=[log])])
            ]
        ).SerializeToString(),
        "metrics": ExportMetricsServiceRequest(
            resource_metrics=[
                ResourceMetrics(resource=resource(), scope_metrics=[ScopeMetrics(metrics=[metric])])
            ]
        ).SerializeToString(),
    }


def test_json_bodies_follow_the_otlp_json_rules(home: Path) -> None:
    """Hex ids (not base64), 64-bit integers as strings, enums as integers, lowerCamelCase
    names; other bytes stay base64; and the body decodes to the very request."""
    requests = _rich_requests()
    with OTLPReceiver(decode=False) as rx:
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(None, "PROTOCOL"): "http/json",
            var(None, "COMPRESSION"): "none",
        }
        with exporter(home, env) as ex:
            assert all(ex.export(s, requests[s]).ok for s in SIGNALS)
        bodies = {b.path.rsplit("/", 1)[-1]: b for b in rx.bodies}
    trees = {s: json.loads(bodies[s].raw) for s in SIGNALS}
    span = trees["traces"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert (span["traceId"], span["spanId"], span["parentSpanId"]) == (
        TRACE.hex(),
        SPAN.hex(),
        PARENT.hex(),
    )
    assert span["links"][0] == {"traceId": TRACE.hex(), "spanId": LINKED.hex()}
    assert span["kind"] == 2 and span["startTimeUnixNano"] == "1700000000123456789"
    assert span["attributes"][0]["value"] == {"bytesValue": base64.b64encode(b"\x00\xff").decode()}
    log = trees["logs"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert (log["traceId"], log["spanId"], log["severityNumber"]) == (TRACE.hex(), SPAN.hex(), 17)
    assert log["attributes"][0]["value"] == {"intValue": str(2**62 + 1)}
    point = trees["metrics"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]
    assert point["aggregationTemporality"] == 2
    assert point["dataPoints"][0]["asInt"] == str(2**53 + 1)
    assert point["dataPoints"][0]["exemplars"][0]["traceId"] == TRACE.hex()
    types = {
        "traces": ExportTraceServiceRequest,
        "logs": ExportLogsServiceRequest,
        "metrics": ExportMetricsServiceRequest,
    }
    for s in SIGNALS:
        assert bodies[s].content_type == "application/json"
        original = types[s]()
        original.ParseFromString(requests[s])
        assert decode_body(*bodies[s]) == original


def test_the_receiver_refuses_json_that_breaks_the_otlp_rules() -> None:
    """The oracle above can fail: base64 ids, snake_case names, enum names, numbers for
    timestamps are each refused."""
    good = {
        "resourceSpans": [
            {
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE.hex(),
                                "spanId": SPAN.hex(),
                                "name": "s",
                                "kind": 2,
                                "startTimeUnixNano": "1",
                            }
                        ]
                    }
                ]
            }
        ]
    }
    decode_body("/v1/traces", "identity", json.dumps(good).encode(), "application/json")
    span = good["resourceSpans"][0]["scopeSpans"][0]["spans"][0]  # type: ignore[index]
    for key, value, why in [
        ("traceId", base64.b64encode(TRACE).decode(), "hex"),
        ("kind", "SPAN_KIND_SERVER", "enums"),
        ("startTimeUnixNano", 1, "strings"),
        ("parent_span_id", PARENT.hex(), "lowerCamelCase"),
    ]:
        bad = json.loads(json.dumps(good))
        bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0] = {**span, key: value}
        with pytest.raises(ValueError, match=why):
            decode_body("/v1/traces", "identity", json.dumps(bad).encode(), "application/json")


# -- CERTIFICATE, CLIENT_CERTIFICATE, CLIENT_KEY -------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("other-ca"), "other-ca")


@pytest.mark.parametrize("signal", SIGNALS)
def test_certificate_variables(
    signal: Signal, ca: CertAuthority, other_ca: CertAuthority, home: Path
) -> None:
    """The general CERTIFICATE is another CA's: those signals fail the handshake and never
    reach the receiver; the signal whose own CERTIFICATE is the server's CA gets through."""
    with OTLPReceiver(tls=ca.server().files) as rx:
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(None, "CERTIFICATE"): str(other_ca.cert),
            var(signal, "CERTIFICATE"): str(ca.cert),
        }
        with exporter(home, env) as ex:
            results = send_all(ex)
            last_error = ex.stats()["last_error"]
        assert results[signal].ok
        assert all(r.status == "retry_later" for s, r in results.items() if s != signal)
        assert "TLS failed" in last_error
        assert {a.path for a in rx.attempts} == {f"/v1/{signal}"}


@pytest.mark.parametrize("signal", SIGNALS)
def test_client_certificate_and_key_variables(
    signal: Signal, ca: CertAuthority, home: Path
) -> None:
    """A receiver that asks for a client certificate sees the general one on every signal
    but the one with its own CLIENT_CERTIFICATE and CLIENT_KEY; without any, the
    handshake fails."""
    general, own = ca.client("general-client"), ca.client(f"{signal}-client")
    with OTLPReceiver(tls=ca.server().files, client_ca=str(ca.cert)) as rx:
        base = {var(None, "ENDPOINT"): rx.url, var(None, "CERTIFICATE"): str(ca.cert)}
        with exporter(home, base) as ex:
            assert ex.export(signal, PAYLOADS[signal]).status == "retry_later"
        assert rx.attempts == []
        env = {
            **base,
            var(None, "CLIENT_CERTIFICATE"): str(general.cert),
            var(None, "CLIENT_KEY"): str(general.key),
            var(signal, "CLIENT_CERTIFICATE"): str(own.cert),
            var(signal, "CLIENT_KEY"): str(own.key),
        }
        with exporter(home, env) as ex:
            assert all(r.ok for r in send_all(ex).values())
        subjects = {a.path: a.client_subject for a in rx.attempts}
        assert subjects == {
            f"/v1/{s}": (f"{signal}-client" if s == signal else "general-client") for s in SIGNALS
        }


# -- OTEL_<SIGNAL>_EXPORTER and OTEL_METRIC_EXPORT_INTERVAL, with a real agent -------------


@pytest.fixture
def ring(agent_ring: str) -> str:
    return agent_ring


def _fastbuf(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "EMP_FASTBUF_HOME": str(home)},
    )


def _in_store(home: Path, signal: Signal, trace_id: str) -> bool:
    if signal == "logs":
        out = _fastbuf(home, "logs", "--job", "job-N")
        return out.returncode == 0 and '"step"' in out.stdout
    if signal == "traces":
        return _fastbuf(home, "trace", trace_id).returncode == 0
    out = _fastbuf(home, "metrics", "--name", "jobs.completed")
    return out.returncode == 0 and "jobs.completed" in out.stdout


def _at_receiver(rx: OTLPReceiver, signal: Signal) -> bool:
    if signal == "logs":
        return any(r.body.string_value == "step" for _, r in rx.logs())
    if signal == "traces":
        return any(s.name == "job" for _, s in rx.spans())
    return any(m.name == "jobs.completed" for _, m in rx.metrics())


@pytest.mark.parametrize("signal", SIGNALS)
def test_exporter_none_keeps_a_signal_off_otlp(
    signal: Signal, env_clean: Path, receiver: OTLPReceiver, ring: str
) -> None:
    """OTEL_<SIGNAL>_EXPORTER=none: that signal never reaches the endpoint; like any
    signal without one it goes to the local store (nothing emitted is lost), and the spool
    keeps nothing for it."""
    trace_id = run_worker(ring, 5, "N")
    env = {var(None, "ENDPOINT"): receiver.url, f"OTEL_{signal.upper()}_EXPORTER": "none"}
    agent = AgentProc(ring, env_clean, env=env)
    others = [s for s in SIGNALS if s != signal]
    try:
        # Logs and spans go out as soon as they are delivered; metrics at the latest at stop.
        first = next(s for s in others if s != "metrics")
        assert receiver.wait_for(lambda r: _at_receiver(r, first), timeout=30), agent.output()
    finally:
        assert agent.stop() == 0, agent.output()
    assert all(_at_receiver(receiver, s) for s in others)
    assert not _at_receiver(receiver, signal)
    assert _in_store(env_clean, signal, trace_id), agent.output()
    status = json.loads((env_clean / f"status-{ring}.json").read_text())
    assert status["agent"]["config"]["signals"][signal]["exporter"] == "none"
    assert status["agent"]["config"]["routes"][signal] == ["store"]
    assert status["spool"]["files"] == 0


@pytest.mark.parametrize("value", ["otlp", "OTLP", "otlp,otlp"])
def test_exporter_otlp_is_the_default(value: str) -> None:
    env = {"HOME": "/h", var(None, "ENDPOINT"): "http://127.0.0.1:1", "OTEL_LOGS_EXPORTER": value}
    config = AgentConfig.from_env(env)
    assert config.endpoint("logs") == "http://127.0.0.1:1/v1/logs"
    assert config.stored_signals() == ()


def test_metric_export_interval(env_clean: Path, receiver: OTLPReceiver, ring: str) -> None:
    """An hour: the metrics wait for the stop while the logs of the same batch are long
    out. 200 ms: they go out while the agent runs."""
    run_worker(ring, 3, "I")
    env = {var(None, "ENDPOINT"): receiver.url, "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    agent = AgentProc(ring, env_clean, env=env)
    try:
        assert receiver.wait_for(lambda r: _at_receiver(r, "logs"), timeout=30), agent.output()
        assert not _at_receiver(receiver, "metrics")
    finally:
        assert agent.stop() == 0, agent.output()
    assert _at_receiver(receiver, "metrics")  # the aggregate goes out at the stop

    receiver.clear()
    run_worker(ring, 3, "J")
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "200"
    agent = AgentProc(ring, env_clean, env=env)
    try:
        assert receiver.wait_for(lambda r: _at_receiver(r, "metrics"), timeout=30), agent.output()
    finally:
        assert agent.stop() == 0, agent.output()


def test_agent_exports_over_http_json(env_clean: Path, receiver: OTLPReceiver, ring: str) -> None:
    trace_id = run_worker(ring, 10, "H")
    env = {var(None, "ENDPOINT"): receiver.url, var(None, "PROTOCOL"): "http/json"}
    agent = AgentProc(ring, env_clean, env=env)
    try:
        assert receiver.wait_for(
            lambda r: len([1 for _, x in r.logs() if x.body.string_value == "step"]) == 10,
            timeout=30,
        ), agent.output()
    finally:
        assert agent.stop() == 0, agent.output()
    assert {a.headers["content-type"] for a in receiver.attempts} == {"application/json"}
    assert all(a.error is None for a in receiver.attempts)
    spans = [s for _, s in receiver.spans() if s.name == "job"]
    assert [s.trace_id.hex() for s in spans] == [trace_id]
    assert _at_receiver(receiver, "metrics")


# -- bad values: exit 2 at agent start ----------------------------------------------------


def _bad_values(tmp: Path) -> Iterator[tuple[str, dict[str, str], str]]:
    """(case, environment, what the message must name) for every new variable."""
    not_pem = tmp / "not-pem.txt"  # the test writes it
    missing = str(tmp / "missing.pem")
    for signal in (None, *SIGNALS):
        tag = signal or "general"
        yield f"{tag}-protocol", {var(signal, "PROTOCOL"): "http/xml"}, var(signal, "PROTOCOL")
        yield (
            f"{tag}-headers",
            {var(signal, "HEADERS"): f"novalue,x={TOKEN}"},
            var(signal, "HEADERS"),
        )
        yield (
            f"{tag}-compression",
            {var(signal, "COMPRESSION"): "brotli"},
            var(signal, "COMPRESSION"),
        )
        yield f"{tag}-timeout", {var(signal, "TIMEOUT"): "soon"}, var(signal, "TIMEOUT")
        yield (
            f"{tag}-certificate",
            {var(signal, "CERTIFICATE"): str(not_pem)},
            var(signal, "CERTIFICATE"),
        )
        yield (
            f"{tag}-client-certificate",
            {var(signal, "CLIENT_CERTIFICATE"): missing},
            var(signal, "CLIENT_CERTIFICATE"),
        )
        yield f"{tag}-client-key", {var(signal, "CLIENT_KEY"): missing}, var(signal, "CLIENT_KEY")
        yield f"{tag}-insecure", {var(signal, "INSECURE"): "maybe"}, var(signal, "INSECURE")
        if signal is not None:
            name = f"OTEL_{signal.upper()}_EXPORTER"
            yield f"{signal}-exporter", {name: "console"}, name
            yield (
                f"{signal}-endpoint",
                {var(signal, "ENDPOINT"): "ftp://x/v1"},
                var(signal, "ENDPOINT"),
            )
    yield "interval-negative", {"OTEL_METRIC_EXPORT_INTERVAL": "-5"}, "OTEL_METRIC_EXPORT_INTERVAL"
    yield "interval-word", {"OTEL_METRIC_EXPORT_INTERVAL": "1m"}, "OTEL_METRIC_EXPORT_INTERVAL"


BAD_CASES = [case for case, _, _ in _bad_values(Path("/nonexistent"))]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_values_exit_2_at_agent_start(
    case: str,
    env_clean: Path,
    ring_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The ``fastbuf agent`` entry point, in this process: the agent never starts."""
    ((_, env, named),) = [c for c in _bad_values(env_clean.parent) if c[0] == case]
    (env_clean.parent / "not-pem.txt").write_text("not a certificate\n")
    monkeypatch.setenv(var(None, "ENDPOINT"), "http://127.0.0.1:9")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # --idle-exit: were the value taken, the agent would stop on its own, and the test fail.
    assert main(["agent", "--ring", ring_name, "--idle-exit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbuf agent: ") and named in err, err
    assert TOKEN not in err
    assert not (env_clean / f"status-{ring_name}.json").exists()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({var("logs", "CLIENT_CERTIFICATE"): "CERT"}, "needs its private key"),
        ({var(None, "CLIENT_KEY"): "KEY"}, "needs its certificate"),
        ({var(None, "CLIENT_CERTIFICATE"): "OTHER", var(None, "CLIENT_KEY"): "KEY"}, "private key"),
        ({var(None, "CLIENT_CERTIFICATE"): "CERT", var(None, "CLIENT_KEY"): "NOTPEM"}, "PEM"),
        ({var(None, "PROTOCOL"): "grpc", var(None, "COMPRESSION"): "zstd"}, "zstd"),
        (
            {
                var("traces", "PROTOCOL"): "grpc",
                var("traces", "ENDPOINT"): "http://h:4317/v1/traces",
            },
            "path",
        ),
        ({var(None, "PROTOCOL"): "grpc", var(None, "HEADERS"): "x-team=caf%C3%A9"}, "ASCII"),
    ],
)
def test_bad_combinations_exit_2_in_a_real_agent_process(
    env: dict[str, str], named: str, ca: CertAuthority, env_clean: Path, ring_name: str
) -> None:
    """A client certificate without its key (or a key of another certificate, or not
    PEM), zstd or a path or non-ASCII metadata over grpc: the agent process exits 2."""
    if any(v == "grpc" for v in env.values()):
        pytest.importorskip("grpc")  # without the extra, the missing extra is the error
    client, other = ca.client("pair-client"), ca.client("other-client")
    files = {
        "CERT": str(client.cert),
        "KEY": str(client.key),
        "OTHER": str(other.cert),
        "NOTPEM": str(ca.directory / "not-a-key.txt"),
    }
    (ca.directory / "not-a-key.txt").write_text("not a key\n")
    full = {k: files.get(v, v) for k, v in env.items()}
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring_name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, var(None, "ENDPOINT"): "https://127.0.0.1:9", **full},
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("fastbuf agent: ") and named in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_a_bad_value_in_a_real_agent_process_exits_2(env_clean: Path, ring_name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", "agent", "--ring", ring_name],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, var("metrics", "INSECURE"): "perhaps", "OTEL_LOGS_EXPORTER": "otlp"},
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "fastbuf agent: OTEL_EXPORTER_OTLP_METRICS_INSECURE: 'perhaps' is not a boolean "
        "(use true/false or 1/0)"
    )
