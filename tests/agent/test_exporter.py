"""OTLPExporter against a real OTLP/HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from emp_fastbuf._version import __version__
from emp_fastbuf.agent.config import AgentConfig
from emp_fastbuf.agent.otlp.http import (
    ExportResult,
    OTLPExporter,
    RetryPolicy,
    parse_retry_after,
)
from emp_fastbuf.testing.receiver import OTLPReceiver, Response
from support.otlp import logs_payload, metrics_payload, spans_payload

TOKEN = "auth_T0pS3cretTokenForTests"
FAST = RetryPolicy(
    initial_backoff_s=0.02,
    max_backoff_s=0.1,
    max_elapsed_s=5.0,
    breaker_threshold=50,
    breaker_cooldown_s=0.3,
)


@pytest.fixture
def rx(receiver: OTLPReceiver) -> OTLPReceiver:
    """The shared ``receiver`` fixture, by this module's short name."""
    return receiver


def make_config(rx: OTLPReceiver, home: Path, **env: str) -> AgentConfig:
    return AgentConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url, "EMP_FASTBUF_HOME": str(home), **env}
    )


class Factory(Protocol):
    def __call__(self, policy: RetryPolicy = ..., **env: str) -> OTLPExporter: ...


@pytest.fixture
def exporter_factory(tmp_path: Path, rx: OTLPReceiver) -> Iterator[Factory]:
    made: list[OTLPExporter] = []

    def factory(policy: RetryPolicy = FAST, **env: str) -> OTLPExporter:
        exporter = OTLPExporter(make_config(rx, tmp_path / "home", **env), policy)
        made.append(exporter)
        return exporter

    yield factory
    for exporter in made:
        exporter.close()


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


# -- what goes on the wire ---------------------------------------------------------------


def test_headers_as_configured(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    exporter = exporter_factory(
        DASH0_AUTH_TOKEN=TOKEN,
        DASH0_DATASET="gpu-workers",
        OTEL_EXPORTER_OTLP_HEADERS="X-Extra=a%20b,Content-Type=text/plain",
    )
    result = exporter.export("logs", logs_payload("hello"))
    assert result == ExportResult("ok", 200, 0, "", 1)
    path, headers, _ = rx.requests[0]
    assert path == "/v1/logs"
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["dash0-dataset"] == "gpu-workers"
    assert headers["x-extra"] == "a b"
    # A configured Content-Type cannot break the protocol.
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["content-encoding"] == "gzip"
    assert headers["user-agent"] == f"emp-fastbuf/{__version__}"
    assert [(res["service.name"], rec.body.string_value) for res, rec in rx.logs()] == [
        ("worker", "hello")
    ]


def test_default_dataset_header_omitted(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    exporter = exporter_factory(DASH0_AUTH_TOKEN=TOKEN, DASH0_DATASET="default")
    assert exporter.export("logs", logs_payload("x")).ok
    assert "dash0-dataset" not in rx.requests[0][1]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_every_compression_decodes(
    rx: OTLPReceiver,
    exporter_factory: Factory,
    compression: str,
) -> None:
    exporter = exporter_factory(OTEL_EXPORTER_OTLP_COMPRESSION=compression)
    payload = logs_payload(*(f"line {i} " * 20 for i in range(50)))
    assert exporter.export("logs", payload).ok
    assert exporter.export("traces", spans_payload("step")).ok
    assert exporter.export("metrics", metrics_payload("gpu.util")).ok
    headers = rx.requests[0][1]
    expected = None if compression == "none" else compression
    assert headers.get("content-encoding") == expected
    assert len(rx.logs()) == 50 and rx.logs()[7][1].body.string_value == "line 7 " * 20
    assert [s.name for _, s in rx.spans()] == ["step"]
    assert [m.name for _, m in rx.metrics()] == ["gpu.util"]
    stats = exporter.stats()
    logs = stats["per_signal"]["logs"]
    assert logs["bytes_uncompressed"] == len(payload)
    if compression == "none":
        assert logs["bytes_on_wire"] == len(payload)
    else:
        assert logs["bytes_on_wire"] < len(payload)
    assert stats["requests"] == 3 and logs["requests"] == 1 and logs["exported"] == 1
    assert stats["latency_s"]["samples"] == 3 and stats["latency_s"]["p99"] is not None


def test_keep_alive_reuses_one_connection(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    exporter = exporter_factory()
    for i in range(5):
        assert exporter.export("logs", logs_payload(str(i))).ok
    assert len(rx.logs()) == 5
    assert rx.connections_seen == 1


# -- retries -----------------------------------------------------------------------------


def test_retry_after_seconds_is_honoured(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.script(Response(503, headers={"Retry-After": "2"}))
    exporter = exporter_factory()
    result = exporter.export("logs", logs_payload("a"))
    assert result.ok and result.attempts == 2
    times = rx.attempt_times()
    assert len(times) == 2
    assert gaps(times)[0] >= 2.0
    assert exporter.stats()["per_signal"]["logs"]["retries"] == 1


def test_retry_after_http_date_is_honoured(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    # HTTP dates have one-second resolution: 3 s ahead means at least 2 s of waiting.
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    rx.script(Response(429, headers={"Retry-After": when}))
    exporter = exporter_factory()
    assert exporter.export("metrics", metrics_payload("m")).ok
    times = rx.attempt_times()
    assert len(times) == 2 and gaps(times)[0] >= 1.0


def test_retry_after_beyond_deadline_gives_retry_later(
    rx: OTLPReceiver, exporter_factory: Factory
) -> None:
    rx.script(Response(503, headers={"Retry-After": "30"}))
    exporter = exporter_factory(policy=RetryPolicy(initial_backoff_s=0.01, max_elapsed_s=1.0))
    first = exporter.export("logs", logs_payload("a"))
    assert first.status == "retry_later" and rx.attempt_count() == 1
    # The server's pause applies to the next call too: nothing is sent meanwhile.
    second = exporter.export("logs", logs_payload("b"))
    assert second.status == "retry_later" and "Retry-After" in second.message
    assert rx.attempt_count() == 1


def test_burst_of_429_then_success(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.script(*(Response(429) for _ in range(4)))
    exporter = exporter_factory()
    result = exporter.export("traces", spans_payload("s"))
    assert result.ok and result.attempts == 5
    assert [a.status for a in rx.attempts] == [429, 429, 429, 429, 200]
    stats = exporter.stats()
    traces = stats["per_signal"]["traces"]
    assert traces["retries"] == 4 and traces["failures"] == 4 and stats["retries"] == 4
    assert [s.name for _, s in rx.spans()] == ["s"]  # accepted once
    assert len(rx.requests) == 5  # each attempt carried the request


@pytest.mark.parametrize("status", [502, 504])
def test_other_retryable_statuses(rx: OTLPReceiver, exporter_factory: Factory, status: int) -> None:
    rx.script(Response(status))
    assert exporter_factory().export("logs", logs_payload("x")).ok
    assert rx.attempt_count() == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 500])
def test_non_retryable_status_dead_letters(
    rx: OTLPReceiver,
    exporter_factory: Factory,
    tmp_path: Path,
    status: int,
) -> None:
    rx.script(Response(status, body=b"bad request: field 7"))
    exporter = exporter_factory()
    payload = logs_payload("doomed")
    result = exporter.export("logs", payload)
    assert result.status == "dead_letter" and result.http_status == status
    assert "bad request: field 7" in result.message
    assert rx.attempt_count() == 1
    assert exporter.stats()["per_signal"]["logs"]["dead_lettered"] == 1
    dead = tmp_path / "home" / "dead-letter"
    assert stat.S_IMODE(dead.stat().st_mode) == 0o700
    sidecars = list(dead.glob("*.json"))
    assert len(sidecars) == 1
    meta = json.loads(sidecars[0].read_text())
    assert meta["signal"] == "logs" and meta["status"] == status
    assert meta["body"] == "bad request: field 7"
    assert "time" in meta and meta["time_unix_nano"] > 0
    assert meta["records"] == 1 and meta["replays"] == 0  # what fastbuf deadletter shows
    data_file = dead / meta["payload"]
    assert data_file.read_bytes() == payload
    for f in (sidecars[0], data_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert not list(dead.glob("*.tmp"))


def test_without_dead_letters_a_refusal_is_only_answered(
    rx: OTLPReceiver, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A replay's exporter: the refused request stays where it came from; the answer
    carries the status and the body, with the token replaced."""
    rx.script(Response(401, body=f"token {TOKEN} revoked".encode()))
    config = make_config(rx, tmp_path / "home", DASH0_AUTH_TOKEN=TOKEN)
    with (
        caplog.at_level(logging.INFO),
        OTLPExporter(config, FAST, dead_letter=False) as exporter,
    ):
        result = exporter.export("logs", logs_payload("doomed"))
    assert (result.status, result.http_status) == ("dead_letter", 401)
    assert result.body == b"token <redacted> revoked" and TOKEN not in result.message
    assert not (tmp_path / "home" / "dead-letter").exists()
    assert not [r for r in caplog.records if "refused" in r.getMessage()]


def test_retry_later_carries_the_last_answer(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.default = Response(503, body=b"overloaded")
    result = exporter_factory(policy=RetryPolicy(max_elapsed_s=0.3, initial_backoff_s=0.05)).export(
        "logs", logs_payload("x")
    )
    assert (result.status, result.http_status, result.body) == ("retry_later", 503, b"overloaded")
    rx.down()
    result = exporter_factory(policy=RetryPolicy(max_elapsed_s=0.3, initial_backoff_s=0.05)).export(
        "logs", logs_payload("x")
    )
    assert (result.status, result.http_status, result.body) == ("retry_later", None, b"")


def test_corrupt_payload_is_refused_by_the_receiver(
    rx: OTLPReceiver,
    exporter_factory: Factory,
) -> None:
    result = exporter_factory().export("logs", b"\xff\xff\xff\xff not protobuf")
    assert result.status == "dead_letter" and result.http_status == 400
    assert rx.attempt_count() == 1 and rx.requests == []


def test_receiver_down_then_up(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    exporter = exporter_factory()
    assert exporter.export("logs", logs_payload("before")).ok
    rx.down()
    results: list[ExportResult] = []
    worker = threading.Thread(
        target=lambda: results.append(exporter.export("logs", logs_payload("during")))
    )
    worker.start()
    deadline = time.monotonic() + 5
    while exporter.stats()["per_signal"]["logs"]["failures"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exporter.stats()["per_signal"]["logs"]["failures"] >= 2
    rx.up()
    worker.join(timeout=10)
    assert results and results[0].ok and results[0].attempts >= 3
    assert [r.body.string_value for _, r in rx.logs()] == ["before", "during"]
    assert "connection failed" in (exporter.stats()["last_error"] or "")


def test_connection_refused_until_deadline(exporter_factory: Factory, rx: OTLPReceiver) -> None:
    rx.down()
    policy = RetryPolicy(initial_backoff_s=0.01, max_elapsed_s=0.5, breaker_threshold=1000)
    exporter = exporter_factory(policy=policy)
    result = exporter.export("logs", logs_payload("x"))
    assert result.status == "retry_later" and result.attempts >= 2
    assert "deadline" in result.message and "connection failed" in result.message


def test_slow_receiver_times_out_then_succeeds(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.script(Response(delay_s=2.0))
    exporter = exporter_factory(OTEL_EXPORTER_OTLP_TIMEOUT="300")
    result = exporter.export("logs", logs_payload("slow"))
    assert result.ok and result.attempts == 2
    assert rx.attempt_count() == 2
    assert "timeout" in (exporter.stats()["last_error"] or "")


def test_always_slow_receiver_gives_retry_later(
    rx: OTLPReceiver, exporter_factory: Factory
) -> None:
    rx.default = Response(delay_s=2.0)
    exporter = exporter_factory(
        policy=RetryPolicy(initial_backoff_s=0.01, max_elapsed_s=0.8),
        OTEL_EXPORTER_OTLP_TIMEOUT="200",
    )
    result = exporter.export("logs", logs_payload("slow"))
    assert result.status == "retry_later"
    assert rx.attempt_count() >= 2


# -- partial success, breaker, bad input -------------------------------------------------


def test_partial_success_counted_not_retried(
    rx: OTLPReceiver,
    exporter_factory: Factory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rx.script(Response(rejected=3, error_message="timestamp too old"))
    exporter = exporter_factory()
    with caplog.at_level(logging.WARNING, logger="emp_fastbuf.agent"):
        result = exporter.export("logs", logs_payload("a", "b", "c", "d"))
    assert result.ok and result.rejected == 3 and "timestamp too old" in result.message
    assert rx.attempt_count() == 1
    stats = exporter.stats()
    assert stats["partial_rejected"] == 3
    assert [stats["per_signal"][s]["partial_rejected"] for s in ("logs", "traces", "metrics")] == [
        3,
        0,
        0,
    ]
    assert any("timestamp too old" in r.getMessage() for r in caplog.records)


def test_partial_success_for_spans_and_metrics(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.script(Response(rejected=1), Response(rejected=2, error_message="too many"))
    exporter = exporter_factory()
    assert exporter.export("traces", spans_payload("s")).rejected == 1
    assert exporter.export("metrics", metrics_payload("m")).rejected == 2
    assert exporter.stats()["partial_rejected"] == 3


def test_unparseable_success_body_is_still_ok(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.script(Response(body=b"\xff\xfe garbage"))
    result = exporter_factory().export("logs", logs_payload("a"))
    assert result.ok and result.rejected == 0


def test_circuit_breaker_opens_and_recovers(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.default = Response(503)
    policy = RetryPolicy(
        initial_backoff_s=0.01,
        max_backoff_s=0.02,
        max_elapsed_s=5.0,
        breaker_threshold=3,
        breaker_cooldown_s=0.4,
    )
    exporter = exporter_factory(policy=policy)
    first = exporter.export("logs", logs_payload("a"))
    assert first.status == "retry_later" and "circuit breaker" in first.message
    assert rx.attempt_count() == 3
    assert exporter.breaker_state == "open"
    # While open, nothing reaches the endpoint.
    for _ in range(5):
        assert exporter.export("logs", logs_payload("b")).status == "retry_later"
    assert rx.attempt_count() == 3
    # The half-open probe fails: open again, for longer.
    assert rx.wait_for(lambda _: exporter.breaker_state == "half_open", timeout=3)
    assert exporter.export("logs", logs_payload("c")).status == "retry_later"
    assert rx.attempt_count() == 4 and exporter.breaker_state == "open"
    rx.default = Response()
    assert rx.wait_for(lambda _: exporter.breaker_state == "half_open", timeout=3)
    result = exporter.export("logs", logs_payload("d"))
    assert result.ok and exporter.breaker_state == "closed"
    assert exporter.stats()["breaker_opened"] == 2
    assert exporter.export("logs", logs_payload("e")).ok


def test_bad_input(rx: OTLPReceiver, exporter_factory: Factory, tmp_path: Path) -> None:
    exporter = exporter_factory()
    with pytest.raises(ValueError, match="unknown signal"):
        exporter.export("spans", b"x")
    with pytest.raises(TypeError, match="payload must be bytes"):
        exporter.export("logs", "text")
    empty = exporter.export("logs", b"")
    assert empty.ok and empty.attempts == 0
    assert rx.attempt_count() == 0
    local = OTLPExporter(AgentConfig(home=tmp_path))
    with pytest.raises(ValueError, match="no OTLP endpoint"):
        local.export("logs", logs_payload("x"))
    local.close()
    with pytest.raises(ValueError, match="breaker_threshold"):
        RetryPolicy(breaker_threshold=0)
    with pytest.raises(ValueError, match="max_elapsed_s"):
        RetryPolicy(max_elapsed_s=-1)


def test_oversized_request_dead_lettered_without_sending(rx: OTLPReceiver, tmp_path: Path) -> None:
    config = AgentConfig(logs_endpoint=f"{rx.url}/v1/logs", home=tmp_path, request_max_bytes=64)
    with OTLPExporter(config, FAST) as exporter:
        result = exporter.export("logs", logs_payload("x" * 100))
    assert result.status == "dead_letter" and "request_max_bytes" in result.message
    assert rx.attempt_count() == 0
    assert len(list((tmp_path / "dead-letter").glob("*.pb"))) == 1


def test_close_stops_a_retry_wait(rx: OTLPReceiver, exporter_factory: Factory) -> None:
    rx.script(Response(503, headers={"Retry-After": "20"}))
    exporter = exporter_factory(policy=RetryPolicy(max_elapsed_s=60))
    results: list[ExportResult] = []
    worker = threading.Thread(
        target=lambda: results.append(exporter.export("logs", logs_payload("a")))
    )
    worker.start()
    assert rx.wait_for(lambda r: r.attempt_count() == 1)
    exporter.close()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert results[0].status == "retry_later" and "closed" in results[0].message
    assert exporter.export("logs", logs_payload("b")).status == "retry_later"
    assert rx.attempt_count() == 1


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") is None
    # Not ASCII digits: str.isdigit() accepts them, float() does not. Ignored, never raised.
    for value in ("\u00b2", "1\u00b2", "\u0663", "\uff17", "1.5", "1e3", "0x10", "7 s"):
        assert parse_retry_after(value) is None
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("9" * 5000) == float("inf")  # clamped by the exporter
    assert parse_retry_after("Fri, 31 Dec 99999 23:59:59 GMT") is None
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 10, usegmt=True), now) == 10.0
    assert parse_retry_after(email.utils.formatdate(now - 10, usegmt=True), now) == 0.0


# -- secrets -----------------------------------------------------------------------------


def test_token_never_logged_or_raised(
    rx: OTLPReceiver,
    exporter_factory: Factory,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    exporter = exporter_factory(
        policy=RetryPolicy(initial_backoff_s=0.01, max_elapsed_s=0.5, breaker_threshold=3),
        DASH0_AUTH_TOKEN=TOKEN,
    )
    echo = f"invalid token Bearer {TOKEN}".encode()
    rx.script(
        Response(503, body=echo),
        Response(rejected=1, error_message=f"token {TOKEN} is rate limited"),
        Response(401, body=echo),
    )
    with caplog.at_level(logging.DEBUG):
        results = [exporter.export("logs", logs_payload("x")) for _ in range(2)]
        rx.down()
        results += [exporter.export("logs", logs_payload("y")) for _ in range(2)]
        try:
            exporter.export("nope", b"x")  # type: ignore[arg-type]
        except ValueError as exc:
            results.append(ExportResult("ok", message=str(exc)))
    assert [r.status for r in results[:2]] == ["ok", "dead_letter"]
    texts = [r.getMessage() for r in caplog.records]
    texts += [str(r.exc_text) for r in caplog.records]
    texts += [repr(r) for r in results]
    texts.append(json.dumps(exporter.stats()))
    texts += [p.read_text() for p in (tmp_path / "home" / "dead-letter").glob("*.json")]
    assert any("<redacted>" in t for t in texts)
    for text in texts:
        assert TOKEN not in text


def test_connections_seen_counter_is_real(rx: OTLPReceiver) -> None:
    # Guards test_keep_alive_reuses_one_connection: two raw connections count as two.
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", rx.port)) as s:
            s.sendall(b"GET /v1/logs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.recv(1024)
    assert rx.wait_for(lambda r: r.connections_seen == 2)


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    args = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    args += ["-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1"]
    args += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    proc = subprocess.run(
        args,
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {proc.stderr[-200:]!r}")
    return str(cert), str(key)


def test_tls_verification_is_on(self_signed: tuple[str, str], tmp_path: Path) -> None:
    with OTLPReceiver(tls=self_signed) as tls_rx:
        config = AgentConfig.from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": tls_rx.url,
                "EMP_FASTBUF_HOME": str(tmp_path),
                "DASH0_AUTH_TOKEN": TOKEN,
            }
        )
        policy = RetryPolicy(initial_backoff_s=0.01, max_elapsed_s=0.3, breaker_threshold=100)
        with OTLPExporter(config, policy) as exporter:
            result = exporter.export("logs", logs_payload("x"))
            last_error = exporter.stats()["last_error"]
        assert result.status == "retry_later"
        assert "TLS failed" in last_error and "certificate" in last_error
        assert tls_rx.attempt_count() == 0


def test_tls_with_trusted_certificate(self_signed: tuple[str, str], tmp_path: Path) -> None:
    with OTLPReceiver(tls=self_signed) as tls_rx:
        config = AgentConfig.from_env(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": tls_rx.url,
                "OTEL_EXPORTER_OTLP_CERTIFICATE": self_signed[0],
                "EMP_FASTBUF_HOME": str(tmp_path),
                "DASH0_AUTH_TOKEN": TOKEN,
            }
        )
        with OTLPExporter(config, FAST) as exporter:
            assert exporter.export("logs", logs_payload("secure")).ok
        assert [r.body.string_value for _, r in tls_rx.logs()] == ["secure"]
        assert tls_rx.requests[0][1]["authorization"] == f"Bearer {TOKEN}"
