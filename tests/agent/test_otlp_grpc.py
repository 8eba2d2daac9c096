"""OTEL_EXPORTER_OTLP_PROTOCOL=grpc against a real OTLP/gRPC receiver on 127.0.0.1 (grpcio's
server, the official protobufs): every setting shows in the call (its method, metadata,
deadline, compression, TLS and client certificate), the retryable status codes are the
OTLP specification's, and without the grpc extra the agent refuses to start (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from emp_fastbuf.agent.config import SIGNALS, AgentConfig, ConfigError, Signal, grpc_url
from emp_fastbuf.agent.otlp.http import ExportResult, OTLPExporter, RetryPolicy
from emp_fastbuf.testing.receiver import OTLPReceiver
from support.agent import AgentProc, run_worker
from support.otlp import logs_payload, metrics_payload, spans_payload
from support.tls import CertAuthority

TOKEN = "auth_gRpcS3cretTokenValue"
METHODS: dict[Signal, str] = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}
SIGNAL_OF = {method: signal for signal, method in METHODS.items()}
PAYLOADS: dict[Signal, bytes] = {
    "logs": logs_payload("x"),
    "traces": spans_payload("s"),
    "metrics": metrics_payload("m"),
}
QUICK = RetryPolicy(
    initial_backoff_s=0.01, max_backoff_s=0.05, max_elapsed_s=0.5, breaker_threshold=100
)


def var(signal: Signal | None, setting: str) -> str:
    middle = "" if signal is None else f"{signal.upper()}_"
    return f"OTEL_EXPORTER_OTLP_{middle}{setting}"


def exporter(home: Path, env: dict[str, str], policy: RetryPolicy = QUICK) -> OTLPExporter:
    config = AgentConfig.from_env({"HOME": str(home), "EMP_FASTBUF_HOME": str(home / "fb"), **env})
    return OTLPExporter(config, policy)


def send_all(ex: OTLPExporter) -> dict[Signal, ExportResult]:
    return {s: ex.export(s, PAYLOADS[s]) for s in SIGNALS}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertAuthority:
    return CertAuthority(tmp_path_factory.mktemp("grpc-ca"))


def test_grpc_without_the_extra_exits_2_naming_it(tmp_path: Path, ring_name: str) -> None:
    """grpcio hidden from a real agent process (an import blocker first on sys.meta_path):
    exit 2 at start, naming the extra; no silent fall back to OTLP/HTTP."""
    code = textwrap.dedent(
        f"""
        import sys

        class NoGrpc:
            def find_spec(self, name, path=None, target=None):
                if name == "grpc" or name.startswith("grpc."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
                return None

        sys.meta_path.insert(0, NoGrpc())
        from emp_fastbuf.cli import main
        raise SystemExit(main(["agent", "--ring", {ring_name!r}]))
        """
    )
    env = {
        **os.environ,
        "EMP_FASTBUF_HOME": str(tmp_path / "home"),
        var(None, "ENDPOINT"): "http://127.0.0.1:4317",
        var("logs", "PROTOCOL"): "grpc",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("fastbuf agent: logs (OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"), (
        out.stderr
    )
    assert "grpc extra" in out.stderr and "pip install 'emp-fastbuf[grpc]'" in out.stderr
    assert not (tmp_path / "home" / f"status-{ring_name}.json").exists()


def test_grpc_not_needed_when_no_signal_is_exported_over_it(tmp_path: Path) -> None:
    """PROTOCOL=grpc with no endpoint (local store mode), or only on a signal whose
    exporter is none: nothing would use grpcio, so nothing asks for it."""
    env = {"HOME": str(tmp_path), var(None, "PROTOCOL"): "grpc"}
    assert AgentConfig.from_env(env).mode == "local"
    env2 = {
        "HOME": str(tmp_path),
        var(None, "ENDPOINT"): "http://127.0.0.1:4318",
        var("logs", "PROTOCOL"): "grpc",
        "OTEL_LOGS_EXPORTER": "none",
    }
    config = AgentConfig.from_env(env2)
    assert config.endpoint("logs") is None and config.stored_signals() == ("logs",)


@pytest.fixture(scope="module")
def g() -> Any:
    """emp_fastbuf.testing.grpc_receiver; the tests that take it need grpcio (the grpc
    extra, which `make test` installs) and are skipped without it."""
    pytest.importorskip("grpc")
    from emp_fastbuf.testing import grpc_receiver

    return grpc_receiver


def _calls(rx: Any) -> dict[Signal, Any]:
    out: dict[Signal, Any] = {}
    for call in rx.calls:
        signal = SIGNAL_OF[call.method]
        assert signal not in out, f"two calls for {signal}"
        out[signal] = call
    return out


@pytest.mark.parametrize("signal", SIGNALS)
def test_grpc_protocol_carries_every_setting(
    signal: Signal, ca: CertAuthority, home: Path, g: Any
) -> None:
    """All three signals over grpc to a TLS receiver that asks for a client certificate:
    the signal's own HEADERS, TIMEOUT, CERTIFICATE, CLIENT_CERTIFICATE and CLIENT_KEY win
    over the general ones, which the other signals carry."""
    general, own = ca.client("general-client"), ca.client(f"{signal}-client")
    with g.GrpcReceiver(tls=ca.server().files, client_ca=str(ca.cert)) as rx:
        env = {
            var(None, "PROTOCOL"): "grpc",
            var(None, "ENDPOINT"): rx.url,
            var(None, "HEADERS"): f"x-general=g,Authorization=Bearer%20{TOKEN}",
            var(None, "TIMEOUT"): "8000",
            var(None, "CERTIFICATE"): str(ca.cert),
            var(None, "CLIENT_CERTIFICATE"): str(general.cert),
            var(None, "CLIENT_KEY"): str(general.key),
            var(signal, "HEADERS"): "X-Own=o%20wn",
            var(signal, "TIMEOUT"): "3000",
            var(signal, "CERTIFICATE"): str(ca.cert),
            var(signal, "CLIENT_CERTIFICATE"): str(own.cert),
            var(signal, "CLIENT_KEY"): str(own.key),
        }
        # A retry deadline longer than both timeouts: each call gets its signal's.
        with exporter(home, env, RetryPolicy(max_elapsed_s=30.0)) as ex:
            results = send_all(ex)
        assert all(r.ok and r.http_status is None for r in results.values()), results
        calls = _calls(rx)
        assert set(calls) == set(SIGNALS)
        for name, call in calls.items():
            assert call.secure
            md = call.metadata
            assert str(md["user-agent"]).startswith("emp-fastbuf/")
            deadline = call.deadline_s
            if name == signal:
                assert md["x-own"] == "o wn" and "x-general" not in md
                assert "authorization" not in md
                assert call.client_subject == f"{signal}-client"
                assert 0 < deadline <= 3.1  # grpc-timeout rounds up a little
            else:
                assert md["x-general"] == "g" and md["authorization"] == f"Bearer {TOKEN}"
                assert call.client_subject == "general-client"
                assert 3.1 < deadline <= 8.1
        assert (len(rx.logs()), len(rx.spans()), len(rx.metrics())) == (1, 1, 1)


@pytest.mark.parametrize("signal", SIGNALS)
def test_grpc_per_signal_protocol_and_endpoint(signal: Signal, home: Path, g: Any) -> None:
    """One signal over grpc (its own PROTOCOL and ENDPOINT, used as is), the others over
    OTLP/HTTP to the general base URL."""
    with g.GrpcReceiver() as g, OTLPReceiver() as rx:
        env = {
            var(None, "ENDPOINT"): rx.url,
            var(signal, "PROTOCOL"): "grpc",
            var(signal, "ENDPOINT"): g.url,
        }
        with exporter(home, env) as ex:
            assert all(r.ok for r in send_all(ex).values())
        assert [c.method for c in g.calls] == [METHODS[signal]]
        assert {a.path for a in rx.attempts} == {f"/v1/{s}" for s in SIGNALS if s != signal}


@pytest.mark.parametrize("signal", SIGNALS)
def test_insecure_variables(signal: Signal, home: Path, g: Any) -> None:
    """A scheme-less endpoint is TLS unless INSECURE is true: against a plaintext
    receiver, only the insecure signals get through. The signal's own INSECURE wins."""
    with g.GrpcReceiver() as rx:
        for general, own in (("false", "true"), ("true", "false")):
            rx.calls.clear()
            env = {
                var(None, "PROTOCOL"): "grpc",
                var(None, "ENDPOINT"): rx.target,
                var(None, "INSECURE"): general,
                var(signal, "INSECURE"): own,
            }
            with exporter(home, env) as ex:
                results = send_all(ex)
            through = {s for s, r in results.items() if r.ok}
            expected = {signal} if own == "true" else set(SIGNALS) - {signal}
            assert through == expected
            assert {SIGNAL_OF[c.method] for c in rx.calls} == expected
            assert not any(c.secure for c in rx.calls)
            failed = [r for r in results.values() if not r.ok]
            assert all(r.status == "retry_later" and "UNAVAILABLE" in r.message for r in failed)


def test_a_scheme_wins_over_insecure(home: Path, g: Any) -> None:
    with g.GrpcReceiver() as rx:
        env = {
            var(None, "PROTOCOL"): "grpc",
            var(None, "ENDPOINT"): rx.url,  # http://
            var(None, "INSECURE"): "false",
        }
        with exporter(home, env) as ex:
            assert ex.config.endpoint("logs") == f"http://127.0.0.1:{rx.port}"
            assert ex.export("logs", PAYLOADS["logs"]).ok


@pytest.mark.parametrize("signal", SIGNALS)
def test_grpc_compression(signal: Signal, home: Path, g: Any) -> None:
    """A receiver that takes identity only: a gzip call fails UNIMPLEMENTED ('gzip is
    disabled'), which is how the compression of a call shows. The signal's own
    COMPRESSION wins."""
    with g.GrpcReceiver(accept_gzip=False) as rx:
        for general, own in (("none", "gzip"), ("gzip", "none")):
            env = {
                var(None, "PROTOCOL"): "grpc",
                var(None, "ENDPOINT"): rx.url,
                var(None, "COMPRESSION"): general,
                var(signal, "COMPRESSION"): own,
            }
            with exporter(home, env) as ex:
                results = send_all(ex)
            for name, result in results.items():
                if (own if name == signal else general) == "gzip":
                    assert result.status == "dead_letter", result
                    assert "UNIMPLEMENTED" in result.message and "gzip" in result.message
                else:
                    assert result.ok, result
    with g.GrpcReceiver() as rx:
        env = {var(None, "PROTOCOL"): "grpc", var(None, "ENDPOINT"): rx.url}
        with exporter(home, env) as ex:  # gzip, the default, where the receiver takes it
            assert all(r.ok for r in send_all(ex).values())


def _status_with_retry_info(seconds: int, nanos: int) -> bytes:
    status_pb2 = pytest.importorskip("google.rpc.status_pb2")
    error_details_pb2 = pytest.importorskip("google.rpc.error_details_pb2")
    from google.protobuf import any_pb2, duration_pb2

    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=seconds, nanos=nanos)
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=8, message="slow down", details=[detail])
    return bytes(status.SerializeToString())


def test_grpc_retryable_codes_are_the_specification_s(home: Path, g: Any) -> None:
    with g.GrpcReceiver() as rx:
        env = {var(None, "PROTOCOL"): "grpc", var(None, "ENDPOINT"): rx.url}
        for code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "DATA_LOSS"):
            rx.script(g.GrpcResponse(code, "try again"), g.GrpcResponse())
            with exporter(home, env) as ex:
                result = ex.export("logs", PAYLOADS["logs"])
                assert result.ok and result.attempts == 2, (code, result)
                assert ex.stats()["retries"] == 1
        for code in ("INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "INTERNAL"):
            rx.script(g.GrpcResponse(code, f"no: {TOKEN}"))
            with exporter(home, {**env, var(None, "HEADERS"): f"api-key={TOKEN}"}) as ex:
                result = ex.export("logs", PAYLOADS["logs"])
            assert result.status == "dead_letter" and result.attempts == 1, (code, result)
            assert f"gRPC {code}" in result.message and TOKEN not in result.message
        assert len(rx.calls) == 5 * 2 + 4


def test_resource_exhausted_is_retried_only_with_retry_info(home: Path, g: Any) -> None:
    with g.GrpcReceiver() as rx:
        env = {var(None, "PROTOCOL"): "grpc", var(None, "ENDPOINT"): rx.url}
        rx.script(g.GrpcResponse("RESOURCE_EXHAUSTED", "quota"))
        with exporter(home, env) as ex:
            result = ex.export("traces", PAYLOADS["traces"])
        assert result.status == "dead_letter" and "RESOURCE_EXHAUSTED" in result.message
        details = (("grpc-status-details-bin", _status_with_retry_info(0, 50_000_000)),)
        rx.script(g.GrpcResponse("RESOURCE_EXHAUSTED", "quota", details), g.GrpcResponse())
        with exporter(home, env, RetryPolicy(max_elapsed_s=10.0)) as ex:
            result = ex.export("traces", PAYLOADS["traces"])
        assert result.ok and result.attempts == 2, result


def test_grpc_partial_success_is_counted(home: Path, g: Any) -> None:
    with g.GrpcReceiver() as rx:
        rx.script(g.GrpcResponse(rejected=2, error_message="two were bad"))
        env = {var(None, "PROTOCOL"): "grpc", var(None, "ENDPOINT"): rx.url}
        with exporter(home, env) as ex:
            result = ex.export("metrics", PAYLOADS["metrics"])
            assert ex.stats()["partial_rejected"] == 2
        assert result.ok and result.rejected == 2 and "two were bad" in result.message


def test_grpc_endpoint_forms() -> None:
    """What the exporter dials: the scheme as given, else https (http with INSECURE); the
    scheme's port when none is given; never a path."""
    assert grpc_url("collector:4317", "S") == "https://collector:4317"
    assert grpc_url("collector:4317", "S", insecure=True) == "http://collector:4317"
    assert grpc_url("https://collector", "S", insecure=True) == "https://collector:443"
    assert grpc_url("http://[::1]:4317/", "S") == "http://[::1]:4317"
    env = {
        "HOME": "/h",
        var(None, "PROTOCOL"): "grpc",
        var("logs", "ENDPOINT"): "https://collector:4317/v1/logs",
    }
    with pytest.raises(ConfigError, match=r"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT: .* has a path"):
        AgentConfig.from_env(env)


def test_agent_exports_over_grpc(env_clean: Path, agent_ring: str, g: Any) -> None:
    trace_id = run_worker(agent_ring, 10, "G")
    with g.GrpcReceiver() as rx:
        env = {var(None, "PROTOCOL"): "grpc", var(None, "ENDPOINT"): rx.url}
        agent = AgentProc(agent_ring, env_clean, env=env)
        try:

            def steps(r: Any) -> int:
                return sum(1 for _, x in r.logs() if x.body.string_value == "step")

            assert rx.wait_for(lambda r: steps(r) == 10, timeout=30), agent.output()
        finally:
            assert agent.stop() == 0, agent.output()
        assert [s.trace_id.hex() for _, s in rx.spans() if s.name == "job"] == [trace_id]
        assert any(m.name == "jobs.completed" for _, m in rx.metrics())
        assert "(grpc)" in agent.output()  # the start line names the protocol
