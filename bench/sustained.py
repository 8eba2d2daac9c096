"""Sustained load: records per second offered for seconds on end, and what arrives.

Producers are separate processes that pace themselves: every ~1 ms tick (monotonic clock)
each emits the records that are due, in one small burst, for ``duration`` seconds. Every
record is a LOG record with 4 attributes (``seq`` int, ``model`` str, ``loss`` float,
``ok`` bool) inside ``fastbuf.context(job_id=...)``; ``seq`` is unique per record
(``producer << 40 | i``), so the receiving end counts distinct records and duplicates
apart. The offered rate is what a producer actually emitted over the time it ran.

Three systems, each at every load of ``loads()`` (one producer at 10k, 50k, 100k, 200k and
400k records/s; four producers at 50k/s each):

- ``fastbuf.otlp``: ``fastbuf.log.info`` into the default ring of a real agent
  (``python -m emp_fastbuf agent``, its own home and ring, ``OTEL_EXPORTER_OTLP_ENDPOINT``
  and ``OTEL_EXPORTER_OTLP_COMPRESSION=gzip``) exporting to a loopback OTLP/HTTP receiver
  in a process of its own;
- ``fastbuf.store``: the same agent without an endpoint, into its embedded store
  (``<home>/store.sqlite``; rows counted after the agent stopped);
- ``otel``: the OpenTelemetry SDK in the producer: ``LoggerProvider`` with
  ``BatchLogRecordProcessor`` and the OTLP/HTTP log exporter at their defaults, the same
  records, the same receiver, the same environment (gzip).

The receiver (``emp_fastbuf.testing.receiver``, the tests' own, in a process of its own with
``decode=False``) answers every request at once and keeps the bodies; they are decoded with
opentelemetry-proto after each run (off the clock, so its decoding takes no CPU from the
agent on a small machine); an undecodable body fails the run.

Per run: offered, delivered (distinct), duplicates, lost, drops by reason (the producers'
``fastbuf.stats()`` and the ring's), the agent's CPU seconds per million delivered records
(utime + stime from ``/proc/<pid>/stat``, from the producers' start until delivery
settled), its peak RSS (``VmHWM``), the ring's shared memory and the producers' own CPU.
``python -m bench.sustained [--quick] [--duration S]`` prints the Markdown table;
``bench.run`` runs it as the ``sustained`` scenario (``--only sustained``).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emp_fastbuf.testing.receiver import Body, OTLPReceiver, ReceiverProcess

__all__ = [
    "DURATION_S",
    "QUICK_DURATION_S",
    "SYSTEMS",
    "Load",
    "budget_rows",
    "count_log_bodies",
    "count_received",
    "loads",
    "markdown_lines",
    "register_budgets",
    "run_all",
    "run_one",
    "start_receiver",
    "write_chart",
    "zero_loss_rate",
]

REPO = Path(__file__).resolve().parent.parent
SINGLE_RATES = (10_000, 50_000, 100_000, 200_000, 400_000)
# The SDK already loses records at 10k/s with its defaults: lower rates for it alone, so
# that its highest zero-loss rate (and the ratio budget) is a number, not "none".
PEER_PROBE_RATES = (1_000, 2_000, 5_000)
MULTI_PRODUCERS = 4
MULTI_RATE = 50_000
DURATION_S = 10.0
QUICK_DURATION_S = 3.0
TICK_S = 0.001
SYSTEMS = ("fastbuf.otlp", "fastbuf.store", "otel")
JOB_ID = "job-sustained-1"
SEQ_SHIFT = 40  # seq = producer << 40 | i: unique across the producers of a run
BUDGET_RATE = 200_000  # the issue: no loss at 200k records/s from one producer
BUDGET_OFFERED = 0.95  # the producer must really have offered 95% of that rate
BUDGET_RATIO = 10.0  # highest zero-loss rate at least 10x the SDK's
_BODY = "step done"

# Every wait is bounded.
_START_TIMEOUT_S = 120.0  # an agent or a producer importing on a busy machine
_FLUSH_TIMEOUT_S = 30.0  # fastbuf.flush() in a producer after its last record
_PRODUCER_SLACK_S = 120.0  # beyond the duration: flush, the SDK's shutdown export
_DRAIN_TIMEOUT_S = 60.0  # the ring's in-flight records reaching the spool
_SETTLE_S = 2.5  # delivery has not moved for this long: done (1 s batches + an export)
_SETTLE_MAX_S = 120.0
_AGENT_STOP_TIMEOUT_S = 30.0
_RECEIVER_TIMEOUT_S = 300.0  # decoding millions of records after a run
_KILL_WAIT_S = 10.0

_runs = itertools.count(1)


@dataclass(frozen=True)
class Load:
    """``producers`` processes offering ``rate`` records/s each."""

    producers: int
    rate: int

    @property
    def total(self) -> int:
        """The offered rate of all producers together."""
        return self.producers * self.rate

    @property
    def label(self) -> str:
        """``1x200k``: producers x the rate of each."""
        return f"{self.producers}x{_k(self.rate)}"


def _k(rate: int) -> str:
    return f"{rate // 1000}k" if rate % 1000 == 0 else str(rate)


def loads() -> list[Load]:
    """What the issue asks for: one producer at each of ``SINGLE_RATES``, then four at 50k/s."""
    return [Load(1, r) for r in SINGLE_RATES] + [Load(MULTI_PRODUCERS, MULTI_RATE)]


# ---- producers (separate processes) -----------------------------------------------------


def pace(burst: Callable[[int, int], None], rate: int, duration: float) -> tuple[int, float]:
    """Call ``burst(first, n)`` once per ~``TICK_S`` tick with the records due by then
    (``rate`` per second against the monotonic clock) for ``duration`` seconds.

    A producer that falls behind catches up at most 4 ticks' worth per burst, so it checks
    the clock often and stops on time; it then offered less than ``rate``. Returns
    ``(records emitted, seconds elapsed)``, the elapsed time at least ``duration``.
    """
    total = round(rate * duration)
    most = max(1, 4 * round(rate * TICK_S))
    clock = time.monotonic
    start = clock()
    end = start + duration
    sent = 0
    next_tick = start
    while sent < total:
        now = clock()
        if now >= end:
            # The records due by the end: the rest of the last tick, or one more burst
            # from a producer that fell behind (it offered less).
            n = min(total - sent, most)
            burst(sent, n)
            sent += n
            break
        due = min(total, math.ceil((now - start) * rate))
        if due > sent:
            n = min(due - sent, most)
            burst(sent, n)
            sent += n
            if sent < due:
                continue  # behind: no sleep
        next_tick += TICK_S
        if next_tick > now:
            time.sleep(next_tick - now)
        else:
            next_tick = now
    now = clock()
    if now < end:
        time.sleep(end - now)
    return sent, clock() - start


def _producer_fastbuf(ring: str, index: int, rate: int, duration: float) -> dict[str, Any]:
    import emp_fastbuf as fastbuf

    fastbuf.configure(
        service="bench-sustained",
        worker_id=f"producer-{index}",
        ring=ring,
        agent="external",
        create=False,
    )
    info = fastbuf.log.info
    base = index << SEQ_SHIFT
    body = _BODY

    def burst(first: int, n: int) -> None:
        for i in range(base + first, base + first + n):
            info(body, seq=i, model="m-8b", loss=2.5, ok=True)

    with fastbuf.context(job_id=JOB_ID):
        _ready()
        cpu0 = time.process_time()
        sent, elapsed = pace(burst, rate, duration)
        cpu = time.process_time() - cpu0
    flushed = fastbuf.flush(timeout=_FLUSH_TIMEOUT_S)
    stats = fastbuf.stats()
    fastbuf.shutdown()
    return {
        "sent": sent,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "emitted": stats["emitted"],
        "dropped_by_reason": stats["dropped_by_reason"],
        "flushed": flushed,
    }


def _producer_otel(index: int, rate: int, duration: float) -> dict[str, Any]:
    from opentelemetry._logs import SeverityNumber
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    # Defaults throughout, as an application gets them (endpoint and gzip from the
    # environment, as the agent's): queue 2048, batches of 512, 1 s delay.
    provider = LoggerProvider(
        resource=Resource.create({"service.name": "bench-sustained"}), shutdown_on_exit=False
    )
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    emit = provider.get_logger("bench.sustained").emit
    base = index << SEQ_SHIFT
    body = _BODY
    info = SeverityNumber.INFO
    now_ns = time.time_ns

    def burst(first: int, n: int) -> None:
        for i in range(base + first, base + first + n):
            emit(
                timestamp=now_ns(),
                severity_number=info,
                severity_text="INFO",
                body=body,
                attributes={
                    "emp.job_id": JOB_ID,
                    "seq": i,
                    "model": "m-8b",
                    "loss": 2.5,
                    "ok": True,
                },
            )

    _ready()
    cpu0 = time.process_time()
    sent, elapsed = pace(burst, rate, duration)
    cpu = time.process_time() - cpu0
    t0 = time.monotonic()
    provider.shutdown()  # exports what the queue still holds
    return {
        "sent": sent,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "shutdown_s": time.monotonic() - t0,
    }


def _ready() -> None:
    """Say ``ready`` and wait for ``go`` on stdin (the parent starts all producers at once)."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("no go from the parent")


def _producer_main(kind: str, target: str, index: int, rate: int, duration: float) -> None:
    if kind == "fastbuf":
        out = _producer_fastbuf(target, index, rate, duration)
    elif kind == "otel":
        out = _producer_otel(index, rate, duration)
    else:
        raise ValueError(f"unknown producer kind {kind!r}")
    out["peak_rss_bytes"] = _proc_hwm(os.getpid())
    sys.stdout.write("result " + json.dumps(out) + "\n")
    sys.stdout.flush()


# ---- the loopback receiver (a process of its own) ----------------------------------------


def count_log_bodies(bodies: Iterable[Body]) -> dict[str, int]:
    """Decode the ``/v1/logs`` bodies (gzip, zstd or none) as ``ExportLogsServiceRequest``
    and count the log records: in all, distinct by ``seq``, duplicates, without a ``seq``,
    without ``emp.job_id`` = ``JOB_ID``; plus undecodable bodies and other requests."""
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from emp_fastbuf.testing.receiver import decode_body

    seen: dict[int, bytearray] = {}
    out = dict.fromkeys(
        (
            "requests",
            "wire_bytes",
            "log_records",
            "unique",
            "duplicates",
            "without_seq",
            "wrong_job",
            "undecodable",
            "other_requests",
        ),
        0,
    )
    mask = (1 << SEQ_SHIFT) - 1
    for path, encoding, raw, content_type in bodies:
        if path != "/v1/logs":
            out["other_requests"] += 1
            continue
        out["requests"] += 1
        out["wire_bytes"] += len(raw)
        try:
            request = decode_body(path, encoding, raw, content_type)
        except ValueError:
            out["undecodable"] += 1
            continue
        assert isinstance(request, ExportLogsServiceRequest)
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    out["log_records"] += 1
                    seq = job = None
                    for kv in rec.attributes:
                        if kv.key == "seq":
                            seq = kv.value.int_value
                        elif kv.key == "emp.job_id":
                            job = kv.value.string_value
                    if job != JOB_ID:
                        out["wrong_job"] += 1
                    if seq is None:
                        out["without_seq"] += 1
                        continue
                    producer, i = seq >> SEQ_SHIFT, seq & mask
                    bits = seen.get(producer)
                    if bits is None:
                        bits = seen[producer] = bytearray(1 << 16)
                    if i >= len(bits):
                        bits.extend(bytes(max(i + 1 - len(bits), len(bits))))
                    if bits[i]:
                        out["duplicates"] += 1
                    else:
                        bits[i] = 1
                        out["unique"] += 1
    return out


def count_received(rx: OTLPReceiver) -> dict[str, int]:
    """``count_log_bodies`` of what the receiver kept: the summary the receiver process
    runs after each run (``ReceiverProcess(count_received, decode=False)``)."""
    return count_log_bodies(rx.bodies)


def start_receiver() -> ReceiverProcess:
    """The shared OTLP receiver in a process of its own, keeping the bodies undecoded while
    a load runs (decoding them during the run would take CPU from the agent on a small
    machine), counted by ``count_received`` after each run."""
    from emp_fastbuf.testing.receiver import ReceiverProcess

    return ReceiverProcess(count_received, decode=False, timeout_s=_RECEIVER_TIMEOUT_S)


# ---- processes: CPU, memory, stopping ------------------------------------------------------


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (``/proc/<pid>/stat``; psutil elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        pass
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:
        return None


def _proc_hwm(pid: int) -> int | None:
    """Peak resident memory of ``pid`` in bytes (``VmHWM``); None where /proc is absent."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM, wait ``timeout``, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_KILL_WAIT_S)
    return proc.returncode


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EMP_FASTBUF_"))}
    # A proxy setting must never route the loopback export elsewhere.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def _stderr_tail(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None or proc.poll() is None:
        return ""
    with contextlib.suppress(OSError, ValueError):
        return proc.stderr.read().decode(errors="replace")[-1500:]
    return ""


class _Agent:
    """``python -m emp_fastbuf agent`` with its own home and ring; the agent creates the
    ring (default size and lanes) and holds its consumer role."""

    def __init__(
        self, home: Path, ring: str, endpoint: str | None, spool_codec: str | None = None
    ) -> None:
        from emp_fastbuf import Ring
        from emp_fastbuf.errors import RingError

        env = _clean_env()
        env["EMP_FASTBUF_HOME"] = str(home)
        env["EMP_FASTBUF_RING"] = ring
        env["EMP_FASTBUF_LOG_LEVEL"] = "WARNING"
        if spool_codec is not None:
            env["EMP_FASTBUF_SPOOL_CODEC"] = spool_codec
        if endpoint is not None:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
            env["OTEL_EXPORTER_OTLP_COMPRESSION"] = "gzip"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "emp_fastbuf", "agent"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        self.ring: Any = None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited {self.proc.returncode}: {self.error()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the agent did not take its ring in time")
            if self.ring is None:
                with contextlib.suppress(RingError):
                    self.ring = Ring.open(ring)
            if self.ring is not None and self.ring.stats()["consumer"]["pid"] == self.pid:
                return
            time.sleep(0.02)

    def error(self) -> str:
        return _stderr_tail(self.proc) or "no message"

    def stop(self) -> int | None:
        try:
            return _stop(self.proc, _AGENT_STOP_TIMEOUT_S)
        finally:
            if self.proc.stderr is not None:
                self.proc.stderr.close()

    def close_ring(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None


def _shm_bytes(ring: Any) -> int:
    """The ring segment's size: ``/dev/shm/<name>`` where it exists, else the lane data plus
    the descriptors and header rounded to pages (what ``Ring.create`` maps)."""
    stats = ring.stats()
    path = Path("/dev/shm") / str(stats["name"])
    try:
        return path.stat().st_size
    except OSError:
        header = 4096 + 4096 * math.ceil(int(stats["lane_count"]) * 256 / 4096)
        return int(stats["size"]) + header


def _start_producers(
    kind: str, target: str, load: Load, duration: float
) -> list[subprocess.Popen[bytes]]:
    env = _clean_env()
    env["EMP_FASTBUF_AGENT"] = "external"
    if kind == "otel":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = target
        env["OTEL_EXPORTER_OTLP_COMPRESSION"] = "gzip"
    procs = []
    for index in range(load.producers):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable, "-m", "bench.sustained", "--producer", kind, target,
                    str(index), str(load.rate), repr(duration),
                ],
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )  # fmt: skip
    return procs


def _read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    assert proc.stdout is not None
    left = deadline - time.monotonic()
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
    line = proc.stdout.readline().decode(errors="replace").strip() if ready else ""
    if not line:
        proc.kill()
        proc.wait(timeout=_KILL_WAIT_S)
        raise RuntimeError(f"a producer stopped talking: {_stderr_tail(proc) or 'timeout'}")
    return line


def _run_producers(procs: Sequence[subprocess.Popen[bytes]], duration: float) -> list[Any]:
    """Wait until every producer is ready, start them together, collect their results."""
    deadline = time.monotonic() + _START_TIMEOUT_S
    for p in procs:
        if _read_line(p, deadline) != "ready":
            raise RuntimeError("a producer did not say ready")
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(b"go\n")
        p.stdin.flush()
    deadline = time.monotonic() + duration + _PRODUCER_SLACK_S
    results = []
    for p in procs:
        line = _read_line(p, deadline)
        if not line.startswith("result "):
            raise RuntimeError(f"a producer said {line[:200]!r}")
        results.append(json.loads(line.removeprefix("result ")))
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
    return results


def _settle(progress: Callable[[], object], limit_s: float) -> float:
    """Wait until ``progress()`` has not changed for ``_SETTLE_S`` (at most ``limit_s``);
    returns the seconds waited."""
    started = time.monotonic()
    last = progress()
    still = started
    while time.monotonic() - started < limit_s:
        time.sleep(0.1)
        now = progress()
        if now != last:
            last, still = now, time.monotonic()
        elif time.monotonic() - still >= _SETTLE_S:
            break
    return time.monotonic() - started


def _store_progress(path: Path) -> int:
    """The highest record id in the store (-1 while it cannot be read)."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return -1
    try:
        row = conn.execute("SELECT max(id) FROM records").fetchone()
        return int(row[0] or 0)
    except sqlite3.Error:
        return -1
    finally:
        conn.close()


def _store_counts(path: Path) -> dict[str, int]:
    """Rows of our records in the store: in all, distinct ``seq``, without our job id."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        rows, unique, wrong_job = conn.execute(
            "SELECT count(*), count(DISTINCT s), coalesce(sum(job_id IS NOT ?), 0) FROM"
            " (SELECT json_extract(attributes, '$.seq') AS s, job_id FROM records"
            "  WHERE kind = 1 AND body = ?) WHERE s IS NOT NULL",
            (JOB_ID, _BODY),
        ).fetchone()
    finally:
        conn.close()
    return {
        "log_records": int(rows),
        "unique": int(unique),
        "duplicates": int(rows) - int(unique),
        "wrong_job": int(wrong_job),
    }


def _sum_reasons(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    out = {"full": 0, "no_lane": 0, "too_large": 0}
    for r in results:
        for reason, n in (r.get("dropped_by_reason") or {}).items():
            out[reason] = out.get(reason, 0) + int(n)
    return out


def _per_million(value: float | None, records: int) -> float | None:
    if value is None or records <= 0:
        return None
    return round(value / records * 1e6, 3)


def run_one(
    system: str,
    load: Load,
    duration: float,
    receiver: ReceiverProcess | None = None,
    spool_codec: str | None = None,
) -> dict[str, Any]:
    """One run of ``system`` at ``load`` for ``duration`` seconds; everything it started is
    stopped and removed before it returns (also on failure). ``receiver`` is needed by
    ``fastbuf.otlp`` and ``otel``."""
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; use one of {', '.join(SYSTEMS)}")
    if system != "fastbuf.store" and receiver is None:
        raise ValueError(f"{system} needs a receiver")
    row: dict[str, Any] = {
        "system": system,
        "load": load.label,
        "producers": load.producers,
        "rate_per_producer": load.rate,
        "target_per_s": load.total,
        "duration_s": duration,
        "spool_codec": spool_codec or "zstd",
    }
    home = Path(tempfile.mkdtemp(prefix="bench-sustained-"))
    os.chmod(home, 0o700)
    # <= 31 characters: macOS limits shared-memory names.
    ring_name = f"bench-su-{os.getpid()}-{next(_runs)}"
    agent: _Agent | None = None
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if receiver is not None:
            receiver.collect()  # forget what a failed run may have left
        if system == "otel":
            assert receiver is not None
            procs = _start_producers("otel", receiver.url, load, duration)
            # The SDK's shutdown returned after its last export: nothing is on its way.
            results = _run_producers(procs, duration)
            counts = receiver.collect()
        else:
            endpoint = receiver.url if receiver is not None else None
            agent = _Agent(home, ring_name, endpoint, spool_codec)
            row["ring_shm_bytes"] = _shm_bytes(agent.ring)
            procs = _start_producers("fastbuf", ring_name, load, duration)
            cpu0 = _proc_cpu_s(agent.pid)
            results = _run_producers(procs, duration)
            ring = agent.ring
            deadline = time.monotonic() + _DRAIN_TIMEOUT_S
            while ring.stats()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.05)
            store = home / "store.sqlite"
            progress: Callable[[], object] = (
                receiver.received if receiver is not None else lambda: _store_progress(store)
            )
            row["settle_s"] = round(_settle(progress, max(_SETTLE_MAX_S, 3 * duration)), 2)
            cpu1 = _proc_cpu_s(agent.pid)
            agent_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
            row["agent"] = {
                "pid": agent.pid,
                "cpu_s": agent_cpu,
                "peak_rss_bytes": _proc_hwm(agent.pid),
            }
            row["agent"]["exit"] = agent.stop()
            ring_stats = ring.stats()
            row["ring_dropped"] = {
                "full": ring_stats["dropped_full"],
                "no_lane": ring_stats["dropped_no_lane"],
                "too_large": ring_stats["dropped_too_large"],
            }
            row["ring_accepted"] = ring_stats["accepted"]
            row["ring_in_flight"] = ring_stats["in_flight"]
            counts = receiver.collect() if receiver is not None else _store_counts(store)
        offered = sum(int(r["sent"]) for r in results)
        elapsed = max(float(r["elapsed_s"]) for r in results)
        delivered = int(counts["unique"])
        row.update(
            offered=offered,
            offered_per_s=round(offered / elapsed, 1) if elapsed > 0 else 0.0,
            delivered=delivered,
            delivered_fraction=round(delivered / offered, 6) if offered else 0.0,
            lost=offered - delivered,
            duplicates=int(counts["duplicates"]),
            wrong_job=int(counts.get("wrong_job", 0)),
            received=counts,
            producer_cpu_s_per_million=_per_million(
                sum(float(r["cpu_s"]) for r in results), offered
            ),
            producer_peak_rss_bytes=max((r.get("peak_rss_bytes") or 0) for r in results) or None,
        )
        if system != "otel":
            dropped = _sum_reasons(results)
            row["dropped_by_reason"] = dropped
            # Accepted into the ring but never delivered (spool eviction, a corrupt file,
            # still on its way when the run ended): what the drop counters do not explain.
            row["unaccounted"] = row["lost"] - sum(dropped.values())
            row["flushed"] = all(r.get("flushed") for r in results)
            agent_cpu = row["agent"]["cpu_s"]
            row["agent"]["cpu_s_per_million"] = _per_million(agent_cpu, delivered)
        else:
            row["shutdown_s"] = round(max(float(r.get("shutdown_s", 0.0)) for r in results), 2)
        if counts.get("undecodable"):
            raise RuntimeError(f"{counts['undecodable']} request bodies did not decode")
        if offered <= 0:
            raise RuntimeError("the producers emitted nothing")
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=4)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=_KILL_WAIT_S)
            for stream in (p.stdin, p.stdout, p.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if agent is not None:
            agent.stop()
            agent.close_ring()
        _unlink_ring(ring_name)
        shutil.rmtree(home, ignore_errors=True)
    return row


def _unlink_ring(name: str) -> None:
    from emp_fastbuf import Ring

    with contextlib.suppress(Exception):
        Ring.unlink(name)


# ---- the whole sweep and its summary ------------------------------------------------------------


def zero_loss_rate(rows: Sequence[Mapping[str, Any]], system: str) -> float:
    """The highest offered rate of a one-producer run of ``system`` that lost nothing, every
    lower rate losing nothing either (0.0 when the lowest rate already lost records)."""
    runs = sorted(
        (r for r in rows if r["system"] == system and r["producers"] == 1),
        key=lambda r: r["target_per_s"],
    )
    best = 0.0
    for r in runs:
        if "error" in r or r.get("lost", 1) != 0:
            break
        best = float(r["offered_per_s"])
    return best


def _ratio(ours: float, peer: float) -> float:
    if ours <= 0:
        return 0.0
    return math.inf if peer <= 0 else ours / peer


def run_all(
    quick: bool = False,
    duration: float | None = None,
    systems: Sequence[str] = SYSTEMS,
    chosen: Sequence[Load] | None = None,
    log: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Every load of ``loads()`` (or ``chosen``) for every system; the ``sustained`` object
    of ``latest.json``. A run that fails is kept with its ``error``; the sweep goes on."""
    if duration is None:
        duration = QUICK_DURATION_S if quick else DURATION_S
    rows: list[dict[str, Any]] = []
    receiver = start_receiver() if any(s != "fastbuf.store" for s in systems) else None
    codec_rows: list[dict[str, Any]] = []
    try:
        for system in systems:
            probes = [Load(1, r) for r in PEER_PROBE_RATES] if system == "otel" else []
            for load in chosen or probes + loads():
                t0 = time.monotonic()
                row = run_one(
                    system, load, duration, None if system == "fastbuf.store" else receiver
                )
                rows.append(row)
                log(f"    {_progress_line(row)} ({time.monotonic() - t0:.0f} s)")
        # The agent's CPU with the other spool codec (lz4), at the budget's load.
        if "fastbuf.otlp" in systems and receiver is not None and chosen is None:
            codec_rows.append(
                run_one("fastbuf.otlp", Load(1, BUDGET_RATE), duration, receiver, "lz4")
            )
            log(f"    {_progress_line(codec_rows[-1])} (spool codec lz4)")
    finally:
        if receiver is not None:
            receiver.close()
    zero = {s: zero_loss_rate(rows, s) for s in systems}
    ratio = _ratio(zero.get("fastbuf.otlp", 0.0), zero.get("otel", 0.0))
    return {
        "duration_s": duration,
        "quick": quick,
        "runs": rows,
        "spool_codec_runs": codec_rows,
        "zero_loss_rate": zero,
        "zero_loss_x_otel": ratio if math.isfinite(ratio) else None,
        "otel_lost_at_every_rate": "otel" in zero and zero["otel"] == 0.0,
        "errors": [f"{r['system']} {r['load']}: {r['error']}" for r in rows if "error" in r],
        "method": (
            "paced producer processes (bursts per 1 ms tick, monotonic clock), LOG records "
            "with 4 attributes in fastbuf.context(job_id); fastbuf through a real agent "
            "(default ring) to a loopback OTLP/HTTP receiver (gzip) and to its store; the "
            "OpenTelemetry SDK (BatchLogRecordProcessor + OTLP/HTTP exporter, defaults, "
            "gzip) to the same receiver; distinct records counted by their seq attribute"
        ),
    }


def _progress_line(row: Mapping[str, Any]) -> str:
    head = f"{row['system']:13} {row['load']:7}"
    if "error" in row:
        return f"{head} FAILED: {row['error']}"
    return (
        f"{head} offered {row['offered_per_s']:>10,.0f}/s, delivered "
        f"{row['delivered_fraction']:.2%}, lost {row['lost']:,}, duplicates {row['duplicates']:,}"
    )


def _run_name(row: Mapping[str, Any]) -> str:
    return f"sustained.{row['system']}[{row['load']}]"


def budget_rows(document: Mapping[str, Any] | None) -> dict[str, dict[str, float]]:
    """Rows for ``bench.scenarios`` budgets: ``sustained.SYSTEM[LOAD]`` (``offered_per_s``,
    ``delivered_fraction``, ``lost``) per run that did not fail, and ``sustained.SYSTEM``
    (``zero_loss_rate``; ``zero_loss_x_otel`` on ``fastbuf.otlp``, inf when the SDK lost
    records at every rate)."""
    if not document:
        return {}
    rows: dict[str, dict[str, float]] = {}
    for r in document.get("runs", []):
        if "error" not in r:
            rows[_run_name(r)] = {
                "offered_per_s": float(r["offered_per_s"]),
                "delivered_fraction": float(r["delivered_fraction"]),
                "lost": float(r["lost"]),
            }
    zero: Mapping[str, float] = document.get("zero_loss_rate", {})
    for system, rate in zero.items():
        rows[f"sustained.{system}"] = {"zero_loss_rate": float(rate)}
    if "fastbuf.otlp" in zero and "otel" in zero:
        rows["sustained.fastbuf.otlp"]["zero_loss_x_otel"] = _ratio(
            float(zero["fastbuf.otlp"]), float(zero["otel"])
        )
    return rows


_BUDGETS = (
    (
        f"lost(sustained.fastbuf.otlp[1x{_k(BUDGET_RATE)}]) <= 0",
        f"sustained: no record lost at {_k(BUDGET_RATE)}/s from one producer, agent to OTLP",
    ),
    (
        f"offered_per_s(sustained.fastbuf.otlp[1x{_k(BUDGET_RATE)}]) >= "
        f"{BUDGET_OFFERED * BUDGET_RATE:.0f}",
        f"sustained: the producer really offered {_k(BUDGET_RATE)}/s (OTLP run)",
    ),
    (
        f"lost(sustained.fastbuf.store[1x{_k(BUDGET_RATE)}]) <= 0",
        f"sustained: no record lost at {_k(BUDGET_RATE)}/s from one producer, agent to store",
    ),
    (
        f"offered_per_s(sustained.fastbuf.store[1x{_k(BUDGET_RATE)}]) >= "
        f"{BUDGET_OFFERED * BUDGET_RATE:.0f}",
        f"sustained: the producer really offered {_k(BUDGET_RATE)}/s (store run)",
    ),
    (
        f"zero_loss_x_otel(sustained.fastbuf.otlp) >= {BUDGET_RATIO:g}",
        f"sustained: highest zero-loss rate >= {BUDGET_RATIO:g}x the OpenTelemetry SDK's",
    ),
)


def register_budgets() -> None:
    """Add the sustained budgets to ``bench.scenarios`` (a second call does nothing)."""
    from bench.scenarios import add_budget, budgets

    have = {b.name for b in budgets()}
    for expr, name in _BUDGETS:
        if name not in have:
            add_budget(expr, name=name)


# ---- reporting ----------------------------------------------------------------------------------

_SYSTEM_LABELS = {
    "fastbuf.otlp": "fastbuf -> agent -> OTLP",
    "fastbuf.store": "fastbuf -> agent -> store",
    "otel": "OpenTelemetry SDK -> OTLP",
}


def _fmt_rate(rate: float) -> str:
    return f"{rate / 1000:,.1f}k" if rate >= 1000 else f"{rate:,.0f}"


def _fmt_mib(n: int | None) -> str:
    return "" if not n else f"{n / (1 << 20):.0f} MiB"


def markdown_lines(document: Mapping[str, Any]) -> list[str]:
    """The ``Sustained load`` section of ``latest.md``."""
    runs = document.get("runs", [])
    lines = [
        "## Sustained load",
        "",
        f"Each load offered for {document['duration_s']:g} s by paced producer processes; "
        "distinct records that arrived (by their `seq` attribute).",
        "",
        "| system | load | offered/s | delivered | lost | dropped full / no lane / too large "
        "| dup | agent CPU-s per M | agent peak RSS | ring shm | producer CPU-s per M |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        label = _SYSTEM_LABELS.get(r["system"], r["system"])
        if "error" in r:
            lines.append(f"| {label} | {r['load']} | failed: {r['error'][:120]} |||||||||")
            continue
        d = r.get("dropped_by_reason")
        drops = (
            "n/a (not counted)"
            if d is None
            else f"{d['full']:,} / {d['no_lane']:,} / " + (f"{d['too_large']:,}")
        )
        agent = r.get("agent") or {}
        cpu = agent.get("cpu_s_per_million")
        pcpu = r.get("producer_cpu_s_per_million")
        lines.append(
            f"| {label} | {r['load']} | {_fmt_rate(r['offered_per_s'])} | "
            f"{r['delivered_fraction']:.2%} | {r['lost']:,} | {drops} | {r['duplicates']:,} | "
            f"{'' if cpu is None else f'{cpu:.3g}'} | {_fmt_mib(agent.get('peak_rss_bytes'))} | "
            f"{_fmt_mib(r.get('ring_shm_bytes'))} | {'' if pcpu is None else f'{pcpu:.3g}'} |"
        )
    zero = document.get("zero_loss_rate", {})
    lines.append("")
    for system, rate in zero.items():
        shown = f"{_fmt_rate(rate)}/s" if rate else "none (records lost at the lowest rate)"
        lines.append(f"- Highest zero-loss rate, one producer, {_SYSTEM_LABELS[system]}: {shown}")
    ratio = document.get("zero_loss_x_otel")
    if ratio:
        lines.append(f"- Highest zero-loss rate, fastbuf (OTLP) over the SDK: {ratio:.3g}x")
    elif zero.get("fastbuf.otlp") and document.get("otel_lost_at_every_rate"):
        lines.append("- fastbuf (OTLP) over the SDK: unbounded (the SDK lost at every rate)")
    for lz4 in document.get("spool_codec_runs", []):
        zstd = next(
            (
                r
                for r in document.get("runs", [])
                if r["system"] == lz4["system"] and r["load"] == lz4["load"]
            ),
            None,
        )
        cpu_lz4 = (lz4.get("agent") or {}).get("cpu_s_per_million")
        cpu_zstd = ((zstd or {}).get("agent") or {}).get("cpu_s_per_million")
        if cpu_lz4 is not None and cpu_zstd is not None:
            lines.append(
                f"- Agent CPU per million records by spool codec, {_SYSTEM_LABELS[lz4['system']]} "
                f"{lz4['load']}: zstd {cpu_zstd:.3g} s, lz4 {cpu_lz4:.3g} s "
                f"(lz4 run: delivered {lz4.get('delivered_fraction', 0):.2%})"
            )
    for err in document.get("errors", []):
        lines.append(f"- Failed: {err}")
    return lines


def write_chart(path: Path, document: Mapping[str, Any]) -> None:
    """Delivered fraction against offered rate (log axis), one line per system; the
    4-producer load as a separate marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    runs = [r for r in document.get("runs", []) if "error" not in r]
    for system in SYSTEMS:
        single = sorted(
            (r for r in runs if r["system"] == system and r["producers"] == 1),
            key=lambda r: r["offered_per_s"],
        )
        multi = [r for r in runs if r["system"] == system and r["producers"] > 1]
        if not single and not multi:
            continue
        (line,) = ax.plot(
            [r["offered_per_s"] for r in single],
            [r["delivered_fraction"] for r in single],
            marker="o",
            label=f"{_SYSTEM_LABELS[system]}, 1 producer",
        )
        if multi:
            ax.scatter(
                [r["offered_per_s"] for r in multi],
                [r["delivered_fraction"] for r in multi],
                marker="s",
                color=line.get_color(),
                label=f"{_SYSTEM_LABELS[system]}, {multi[0]['producers']} producers",
            )
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("offered records/s (log)")
    ax.set_ylabel("delivered fraction (distinct records)")
    ax.set_title(f"Sustained load, {document['duration_s']:g} s per rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_load(text: str, parser: Any) -> Load:
    producers, sep, rate = text.lower().partition("x")
    scale = 1000 if rate.endswith("k") else 1
    try:
        load = Load(int(producers), int(rate.rstrip("k")) * scale)
    except ValueError:
        parser.error(f"--load {text!r}: expected PRODUCERSxRATE, e.g. 1x200k")
    if not sep or load.producers < 1 or load.rate < 1:
        parser.error(f"--load {text!r}: expected PRODUCERSxRATE, e.g. 1x200k")
    return load


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--producer"] and len(argv) == 6:
        _producer_main(argv[1], argv[2], int(argv[3]), int(argv[4]), float(argv[5]))
        return 0
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m bench.sustained", description=__doc__.split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_DURATION_S:g} s per load")
    p.add_argument("--duration", type=float, help="seconds per load")
    p.add_argument("--chart", type=Path, help="write the chart to this PNG")
    p.add_argument(
        "--load",
        action="append",
        metavar="PxRATE",
        help="only this load, e.g. 1x200k or 4x50k (repeatable; default: the sweep)",
    )
    p.add_argument("--system", action="append", choices=SYSTEMS, help="only this system")
    args = p.parse_args(argv)
    chosen = [_parse_load(text, p) for text in args.load] if args.load else None
    doc = run_all(
        args.quick,
        args.duration,
        systems=args.system or SYSTEMS,
        chosen=chosen,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print("\n".join(markdown_lines(doc)))
    if args.chart is not None:
        write_chart(args.chart, doc)
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
