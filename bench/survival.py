"""Survival: how many finished spans reach their destination when the worker is SIGKILLed.

A worker process ends ``n`` spans, says so on stdout, and is killed with SIGKILL 100 ms
later, as an OOM kill or a preempted GPU job would end it. Then we count what arrived:

- ``fastbuf``: spans from ``fastbuf.span`` go into a shared-memory ring that outlives the
  worker; an agent (``python -m emp_fastbuf agent``, started before the worker) drains it
  and exports over OTLP/HTTP to a receiver on 127.0.0.1, which counts the distinct spans
  it gets.
- ``otel``: OpenTelemetry SDK spans with the default ``BatchSpanProcessor`` and the OTLP/HTTP
  exporter pointed at the same kind of receiver, which counts the spans in the
  ``ExportTraceServiceRequest`` bodies it gets.

``python -m bench.survival [N]`` prints both results as JSON.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["KILL_AFTER_S", "run_all", "survival"]

KILL_AFTER_S = 0.1
_REPO = Path(__file__).resolve().parent.parent
_WORKER_START_TIMEOUT_S = 120.0
_SETTLE_S = 1.0  # the receiver count must stay still this long after the kill
_SETTLE_MAX_S = 10.0
_AGENT_SETTLE_S = 3.0  # more than the agent's 1 s batch interval plus an export
_AGENT_WAIT_S = 30.0
_AGENT_STOP_TIMEOUT_S = 30.0


# ---- worker side ----------------------------------------------------------------------------


def _worker_fastbuf(ring: str, n: int) -> None:
    import emp_fastbuf as fastbuf

    fastbuf.configure(service="survival", ring=ring, agent="external", create=False)
    span = fastbuf.span
    for i in range(n):
        with span("survival.step", step=i):
            pass


def _worker_otel(endpoint: str, n: int) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "survival"}))
    # Defaults throughout, as an application gets them: queue 2048, batches of 512, 5 s delay.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    start = provider.get_tracer("survival").start_as_current_span
    for i in range(n):
        with start("survival.step", attributes={"step": i}):
            pass


def _worker_main(kind: str, target: str, n: int) -> None:
    """Worker process: end ``n`` spans, say ``done``, then keep running until killed."""
    if kind == "fastbuf":
        _worker_fastbuf(target, n)
    elif kind == "otel":
        _worker_otel(target, n)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    sys.stdout.write("done\n")
    sys.stdout.flush()
    while True:  # the application goes on with its work until the kill
        time.sleep(1.0)


# ---- parent side ----------------------------------------------------------------------------


def _worker_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EMP_FASTBUF_"))}
    env["EMP_FASTBUF_AGENT"] = "external"
    # Never let a proxy setting route the loopback export elsewhere.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _run_and_kill(kind: str, target: str, n: int) -> dict[str, Any]:
    """Start the worker, wait for ``done``, SIGKILL it ``KILL_AFTER_S`` later."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.survival", "--worker", kind, target, str(n)],
        cwd=_REPO,
        env=_worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], _WORKER_START_TIMEOUT_S)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"done":
            proc.kill()
            proc.wait(timeout=10)
            err = proc.stderr.read().decode(errors="replace")[-2000:]
            raise RuntimeError(f"{kind} survival worker did not finish its spans:\n{err}")
        done_at = time.monotonic()
        time.sleep(KILL_AFTER_S)
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    return {
        "kill_after_s": round(killed_at - done_at, 4),
        "exit_signal": -proc.returncode if proc.returncode < 0 else None,
    }


def _ring_size_for(n: int) -> int:
    size = 1 << 20
    while size < n * 512:  # a span record is ~100 bytes; leave ample room
        size <<= 1
    return size


def _agent_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EMP_FASTBUF_"))}
    env["EMP_FASTBUF_HOME"] = str(home)
    env["EMP_FASTBUF_LOG_LEVEL"] = "WARNING"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _start_agent(ring: Any, url: str, home: Path) -> subprocess.Popen[bytes]:
    """``python -m emp_fastbuf agent`` on ``ring``, exporting to ``url``; returns once it
    holds the ring's consumer role."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "emp_fastbuf", "agent",
            "--ring", ring.name, "--endpoint", url, "--home", str(home),
        ],
        cwd=_REPO,
        env=_agent_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + _WORKER_START_TIMEOUT_S
    while ring.stats()["consumer"]["pid"] != proc.pid:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_agent(proc)
            raise RuntimeError(f"the agent did not take the ring: {_agent_error(proc)}")
        time.sleep(0.02)
    return proc


def _agent_error(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stderr is not None
    if proc.poll() is None:
        return "still running"
    return proc.stderr.read().decode(errors="replace")[-2000:] or f"exit {proc.returncode}"


def _stop_agent(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM (the agent drains, spools and delivers what is left), then wait."""
    assert proc.stderr is not None
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_AGENT_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    finally:
        proc.stderr.close()
    return proc.returncode


def _unique_spans(rx: Any) -> tuple[int, int]:
    """(distinct spans, spans received) at the receiver: the agent delivers at least once."""
    spans = [(s.trace_id, s.span_id) for _, s in rx.spans()]
    return len(set(spans)), len(spans)


def _arrived(rx: Any, n: int) -> int:
    """Distinct spans once all ``n`` arrived, or once the count has not moved for
    ``_AGENT_SETTLE_S`` (the agent cuts batches every second), within ``_AGENT_WAIT_S``."""
    deadline = time.monotonic() + _AGENT_WAIT_S
    last = _unique_spans(rx)[0]
    still_since = time.monotonic()
    while last < n and time.monotonic() < deadline:
        time.sleep(0.1)
        now = _unique_spans(rx)[0]
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= _AGENT_SETTLE_S:
            break
    return last


def _survival_fastbuf(n: int) -> dict[str, Any]:
    from emp_fastbuf import Ring
    from emp_fastbuf.testing.receiver import OTLPReceiver

    name = f"bench-sv-{os.getpid()}-{time.monotonic_ns() % 10**9}"  # <= 31 chars (macOS)
    home = Path(tempfile.mkdtemp(prefix="bench-survival-"))
    os.chmod(home, 0o700)
    ring = Ring.create(name, _ring_size_for(n), lanes=1)
    try:
        with OTLPReceiver() as rx:
            agent = _start_agent(ring, rx.url, home)
            try:
                killed = _run_and_kill("fastbuf", name, n)
                received = _arrived(rx, n)
            finally:
                agent_exit = _stop_agent(agent)
            after_stop, with_duplicates = _unique_spans(rx)
            requests = rx.attempt_count()
        stats = ring.stats()
    finally:
        ring.close()
        Ring.unlink(name)
        shutil.rmtree(home, ignore_errors=True)
    dropped = stats["dropped_full"] + stats["dropped_no_lane"] + stats["dropped_too_large"]
    return {
        **killed,
        "ended": n,
        "received": received,
        "fraction": round(received / n, 4) if n else None,
        "received_after_agent_stop": after_stop,
        "duplicates": with_duplicates - after_stop,
        "export_requests": requests,
        "dropped_in_worker": dropped,
        "agent_exit": agent_exit,
        "method": (
            "fastbuf.span into a shared-memory ring drained by a running agent "
            "(python -m emp_fastbuf agent, defaults: 1 s batches, gzip, OTLP/HTTP) exporting "
            "to a loopback OTLP receiver that counts the distinct spans it received"
        ),
    }


def _settled_count(rx: Any) -> int:
    """The span count once it has not moved for ``_SETTLE_S`` (in-flight requests landed)."""
    deadline = time.monotonic() + _SETTLE_MAX_S
    last = len(rx.spans())
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = len(rx.spans())
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= _SETTLE_S:
            break
    return last


def _survival_otel(n: int) -> dict[str, Any]:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError as exc:
        return {"ended": n, "skipped": f"OpenTelemetry SDK/exporter not importable: {exc}"}
    from emp_fastbuf.testing.receiver import OTLPReceiver

    with OTLPReceiver() as rx:
        killed = _run_and_kill("otel", f"{rx.url}/v1/traces", n)
        received = _settled_count(rx)
        requests = rx.attempt_count()
    return {
        **killed,
        "ended": n,
        "received": received,
        "fraction": round(received / n, 4) if n else None,
        "export_requests": requests,
        "method": (
            "OpenTelemetry SDK defaults (BatchSpanProcessor: queue 2048, batch 512, "
            "delay 5 s; OTLP/HTTP protobuf exporter) to a loopback OTLP receiver that counts "
            "the spans in the ExportTraceServiceRequest bodies it received"
        ),
    }


def survival(kind: str, n: int = 10_000) -> dict[str, Any]:
    """End ``n`` spans in a worker, SIGKILL it 100 ms later, count the spans that arrived.

    ``kind`` is ``"fastbuf"`` or ``"otel"``. Returns ``ended``, ``received``, ``fraction``,
    ``method`` and details (``kill_after_s``: the measured delay before the kill).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if kind == "fastbuf":
        return _survival_fastbuf(n)
    if kind == "otel":
        return _survival_otel(n)
    raise ValueError(f"kind must be 'fastbuf' or 'otel', got {kind!r}")


def run_all(n: int = 10_000) -> dict[str, Any]:
    """Both kinds, as the ``survival`` object of ``latest.json``."""
    return {
        "spans": n,
        "kill_after_s": KILL_AFTER_S,
        "fastbuf": survival("fastbuf", n),
        "otel": survival("otel", n),
    }


def main(argv: list[str]) -> int:
    """``--worker KIND TARGET N`` runs a worker; otherwise ``[N]`` runs both and prints JSON."""
    if argv[:1] == ["--worker"] and len(argv) == 4:
        _worker_main(argv[1], argv[2], int(argv[3]))
        return 0
    n = int(argv[0]) if argv else 10_000
    print(json.dumps(run_all(n), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
