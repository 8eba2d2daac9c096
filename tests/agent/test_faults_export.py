"""Export faults and configuration mistakes, each against the real thing: a real agent
process, the loopback OTLP receiver, and raw loopback servers that misbehave on purpose
(trickle a response, answer with a huge body). No test sends anything off this machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from emp_fastbuf.agent.config import AgentConfig
from emp_fastbuf.agent.otlp.http import OTLPExporter, RetryPolicy
from emp_fastbuf.testing.receiver import OTLPReceiver, Response
from support.agent import AgentProc, run_worker, seqs
from support.otlp import logs_payload

TOKEN = "auth_faults-T0ken-value-4242"


@pytest.fixture
def home(env_clean: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private home and an environment without OTLP, Dash0 or log-level variables."""
    monkeypatch.delenv("EMP_FASTBUF_LOG_LEVEL", raising=False)
    return env_clean


def fastbuf_cli(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "emp_fastbuf", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "EMP_FASTBUF_HOME": str(home), **(env or {})},
        timeout=60,
    )


# -- Retry-After that is not ASCII digits --------------------------------------------------


def test_retry_after_superscript_digit_is_ignored(receiver: OTLPReceiver, tmp_path: Path) -> None:
    # The receiver sends the header as latin-1: the byte 0xB2, read back as "²".
    receiver.script(Response(503, headers={"Retry-After": "\u00b2"}))
    config = AgentConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "EMP_FASTBUF_HOME": str(tmp_path)}
    )
    with OTLPExporter(config, RetryPolicy(initial_backoff_s=0.01)) as exporter:
        result = exporter.export("logs", logs_payload("after a bad Retry-After"))
    assert result.ok and result.attempts == 2
    assert [r.body.string_value for _, r in receiver.logs()] == ["after a bad Retry-After"]


def test_agent_keeps_delivering_after_a_malformed_retry_after(
    home: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    receiver.script(Response(503, headers={"Retry-After": "\u00b2"}))
    run_worker(agent_ring, 10, "ra")
    agent = AgentProc(agent_ring, home, "--endpoint", receiver.url)
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "ra")) == 10, 30), agent.output()
        run_worker(agent_ring, 5, "ra2")
        assert receiver.wait_for(lambda r: len(seqs(r, "ra2")) == 5, 30), agent.output()
    finally:
        assert agent.stop() == 0
    assert "Traceback" not in agent.output()


# -- configuration mistakes: one line, exit 2, at start --------------------------------------


@dataclass
class BadConfig:
    env: dict[str, str]
    needle: str
    hidden: tuple[str, ...] = ()


def bad_configs(tmp: Path) -> dict[str, BadConfig]:
    not_pem = tmp / "not-pem.crt"
    not_pem.write_text("this is not a certificate\n")
    return {
        "log level": BadConfig({"EMP_FASTBUF_LOG_LEVEL": "LOUD"}, "EMP_FASTBUF_LOG_LEVEL"),
        "certificate": BadConfig(
            {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(not_pem)}, "OTEL_EXPORTER_OTLP_CERTIFICATE"
        ),
        "non-latin-1 header": BadConfig(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-team=%E2%82%AC",
            },
            "'x-team'",
            ("\u20ac", "%E2%82%AC"),
        ),
        "backslash endpoint": BadConfig(
            {"DASH0_ENDPOINT": "http://10.1.2.3:4318\\@localhost", "DASH0_AUTH_TOKEN": TOKEN},
            "DASH0_ENDPOINT",
            (TOKEN,),
        ),
        "team key over http": BadConfig(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.1.2.3:4318",
                "OTEL_EXPORTER_OTLP_HEADERS": f"x-honeycomb-team={TOKEN}",
            },
            "x-honeycomb-team",
            (TOKEN,),
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["log level", "certificate", "non-latin-1 header", "backslash endpoint", "team key over http"],
)
def test_bad_configuration_is_one_line_and_exit_2(
    home: Path, agent_ring: str, tmp_path: Path, case: str
) -> None:
    bad = bad_configs(tmp_path)[case]
    # --idle-exit: an agent that wrongly starts ends by itself instead of running on.
    out = fastbuf_cli(home, "agent", "--ring", agent_ring, "--idle-exit", "1", env=bad.env)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastbuf agent: "), out.stderr[-2000:]
    assert bad.needle in lines[0]
    for secret in bad.hidden:
        assert secret not in out.stderr + out.stdout


# -- endpoint query strings stay out of DEBUG logs -------------------------------------------


def test_debug_log_never_prints_the_endpoint_query(
    home: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    run_worker(agent_ring, 5, "q")
    agent = AgentProc(
        agent_ring,
        home,
        "--endpoint",
        f"{receiver.url}/?api_key=qs3cretvalue",
        env={"EMP_FASTBUF_LOG_LEVEL": "DEBUG"},
    )
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "q")) == 5, 30), agent.output()
    finally:
        assert agent.stop() == 0
    output = agent.output()
    assert "qs3cretvalue" not in output
    # DEBUG was on: urllib3's request lines are there, their query redacted.
    assert '"POST /v1/logs?<redacted> HTTP/1.1" 200' in output


# -- a signal without an endpoint goes to the store ------------------------------------------


def test_only_the_logs_endpoint_spans_and_metrics_land_in_the_store(
    home: Path, receiver: OTLPReceiver, agent_ring: str
) -> None:
    trace_id = run_worker(agent_ring, 20, "P")
    agent = AgentProc(
        agent_ring, home, env={"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": f"{receiver.url}/v1/logs"}
    )
    try:
        assert receiver.wait_for(lambda r: len(seqs(r, "P")) == 20, 30), agent.output()
    finally:
        assert agent.stop() == 0
    # Logs went to the receiver, and nothing else did.
    assert {a.path for a in receiver.attempts} == {"/v1/logs"}
    assert receiver.spans() == [] and receiver.metrics() == []
    output = agent.output()
    assert f"signals: traces, metrics -> store; logs -> {receiver.url}/v1/logs" in output
    # Spans and metrics are in the store.
    trace = fastbuf_cli(home, "trace", trace_id, "--json")
    assert trace.returncode == 0, trace.stderr
    rows = [json.loads(line) for line in trace.stdout.splitlines()]
    assert [(r["kind"], r["name"]) for r in rows if r["kind"] == "span"] == [("span", "job")]
    assert not [r for r in rows if r["kind"] == "log"]  # the logs are not kept twice
    metrics = fastbuf_cli(home, "metrics", "--name", "jobs.completed", "--json")
    assert metrics.returncode == 0, metrics.stderr
    (series,) = [json.loads(line) for line in metrics.stdout.splitlines()]
    assert series["value"] == 1 and series["worker_id"] == "P"


# -- a receiver that trickles or floods its answer -------------------------------------------


@dataclass
class Plan:
    """How the raw server answers one request: a 200 whose body of ``size`` bytes comes in
    pieces of ``piece`` bytes, ``pause`` seconds apart."""

    size: int = 0
    piece: int = 1 << 16
    pause: float = 0.0


class MisbehavingServer:
    """A raw HTTP/1.1 server on 127.0.0.1 answering each request by the next plan (then
    a plain 200). Bounded: every plan ends by itself, and close() stops what is left."""

    def __init__(self, *plans: Plan) -> None:
        self._plans = deque(plans)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.requests = 0
        self._finished: dict[int, bool] = {}  # request number -> was the whole body sent
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def finished(self, count: int, timeout: float = 30.0) -> list[bool]:
        """Whether each of the first ``count`` answers was sent whole, once all ended."""
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                if len(self._finished) >= count or time.monotonic() > end:
                    return [self._finished.get(n) is True for n in range(1, count + 1)]
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    while b"\r\n\r\n" not in buffer:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buffer) < length:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        buffer += chunk
                    buffer = buffer[length:]
                except TimeoutError:
                    continue
                except OSError:
                    return
                with self._lock:
                    self.requests += 1
                    number = self.requests
                    plan = self._plans.popleft() if self._plans else Plan()
                finished = self._answer(conn, plan)
                with self._lock:
                    self._finished[number] = finished
                if not finished:
                    return

    def _answer(self, conn: socket.socket, plan: Plan) -> bool:
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
            f"Content-Length: {plan.size}\r\n\r\n"
        )
        conn.settimeout(10)
        try:
            conn.sendall(head.encode())
            sent = 0
            piece = b"\0" * plan.piece
            while sent < plan.size:
                if plan.pause and self._stop.wait(plan.pause):
                    return False
                n = min(plan.piece, plan.size - sent)
                conn.sendall(piece[:n])
                sent += n
        except OSError:
            return False
        return True


@pytest.fixture
def server_factory() -> Iterator[type[MisbehavingServer]]:
    made: list[MisbehavingServer] = []

    class Tracked(MisbehavingServer):
        def __init__(self, *plans: Plan) -> None:
            super().__init__(*plans)
            made.append(self)

    yield Tracked
    for server in made:
        server.close()


def exporter_for(url: str, home: Path, policy: RetryPolicy) -> OTLPExporter:
    # A 1 s timeout per request.
    config = AgentConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": url,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
            "EMP_FASTBUF_HOME": str(home),
        }
    )
    return OTLPExporter(config, policy)


def test_trickling_response_is_cut_off_and_the_next_request_goes_out(
    server_factory: type[MisbehavingServer], tmp_path: Path
) -> None:
    # One byte every 0.5 s for 40 bytes: each read stays under the 1 s timeout; the whole
    # answer would take 20 s.
    server = server_factory(Plan(size=40, piece=1, pause=0.5))
    policy = RetryPolicy(initial_backoff_s=0.01, breaker_threshold=1, breaker_cooldown_s=0.05)
    with exporter_for(server.url, tmp_path, policy) as exporter:
        first = exporter.export("logs", logs_payload("held"))
        assert first.status == "retry_later" and first.attempts == 1
        assert "timeout" in first.message
        while exporter.breaker_state == "open":
            time.sleep(0.01)
        second = exporter.export("logs", logs_payload("next"))
    assert second.ok
    assert server.requests == 2
    assert server.finished(2) == [False, True]


def test_response_body_is_read_up_to_a_bound(
    server_factory: type[MisbehavingServer], tmp_path: Path
) -> None:
    huge = 64 << 20
    server = server_factory(Plan(size=huge))
    with exporter_for(server.url, tmp_path, RetryPolicy(initial_backoff_s=0.01)) as exporter:
        assert exporter.export("logs", logs_payload("a")).ok
        assert exporter.export("logs", logs_payload("b")).ok  # on a new connection
    assert server.requests == 2
    # The exporter hung up instead of reading 64 MiB: the server could not send it all.
    assert server.finished(2) == [False, True]
